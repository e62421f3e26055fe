//! `#[larder::cached]`: memoize an async function by its arguments.
//!
//! ```text
//! cargo run -p larder --example memoize
//! ```

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use larder::prelude::*;

static CACHE: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder(larder::mem::MemBackend::default())
        .key_prefix("app")
        .build()
        .expect("a memory cache")
});

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Report {
    day: String,
    orders: u64,
}

/// One computation per day's key across concurrent callers, cached 60 s,
/// served stale for up to 10 minutes while one refresh runs.
#[larder::cached(cache = CACHE, key = "report:{day}", ttl = 60, stale_while_revalidate = 600)]
async fn daily_report(day: String) -> Result<Report, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(200)).await; // the slow query
    Ok(Report { day, orders: 42 })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    for attempt in 1..=3 {
        let started = Instant::now();
        let r = daily_report("2026-12-02".into()).await?;
        println!(
            "#{attempt}: {} orders on {} in {:?}",
            r.orders,
            r.day,
            started.elapsed()
        );
    }
    Ok(())
}
