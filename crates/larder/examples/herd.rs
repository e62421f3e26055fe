//! Stampede control with `get_or_compute_with`: 50 concurrent callers of an
//! expired key share one computation; stale-while-revalidate answers at once
//! while one background task refreshes; stale-if-error hides a failing
//! origin; a failing cache never fails the request.
//!
//! ```text
//! cargo run -p larder --example herd                                  # memory
//! cargo run -p larder --features redis --example herd -- redis://127.0.0.1:6379
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::prelude::*;
use larder::ComputeOptions;

/// The expensive origin: 200 ms, and it counts its calls.
async fn origin(calls: Arc<AtomicU32>, fail: bool) -> Result<String, Error> {
    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    if fail {
        return Err(Error::config("origin is down"));
    }
    Ok(format!("report #{n}"))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mem://".to_owned());
    let cache = Cache::from_url(&format!(
        "{url}{}key_prefix=herd-example",
        if url.contains('?') { '&' } else { '?' }
    ))
    .await?;
    cache.clear().await?;
    let calls = Arc::new(AtomicU32::new(0));
    let opts = ComputeOptions::new(Ttl::secs(1))
        .stale_while_revalidate(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(60));

    // 1. A cold key, 50 callers at once: one origin call.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, calls, opts) = (cache.clone(), calls.clone(), opts);
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute_with("report", &opts, move || origin(calls, false))
                .await
        }));
    }
    for t in tasks {
        t.await.expect("task")?;
    }
    println!(
        "50 callers on a cold key: {} origin call(s), {:?}",
        calls.load(Ordering::SeqCst),
        started.elapsed()
    );

    // 2. Past the TTL, inside stale-while-revalidate: the old value at once,
    //    one background refresh.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t = Instant::now();
    let c = calls.clone();
    let v: String = cache
        .get_or_compute_with("report", &opts, move || origin(c, false))
        .await?;
    println!(
        "stale read: {v:?} in {:?} (refreshing in the background)",
        t.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!(
        "after the refresh: {:?}",
        cache.get::<String>("report").await?
    );

    // 3. The origin fails after expiry: stale-if-error serves the last value.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let strict = opts.stale_while_revalidate(Duration::ZERO);
    let c = calls.clone();
    let v: String = cache
        .get_or_compute_with("report", &strict, move || origin(c, true))
        .await?;
    println!("origin down: served {v:?} (stale-if-error)");
    println!("origin calls in all: {}", calls.load(Ordering::SeqCst));
    cache.clear().await?;
    Ok(())
}
