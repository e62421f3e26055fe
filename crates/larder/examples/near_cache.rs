//! A near cache: an in-process L1 in front of Redis, kept coherent across
//! processes by Redis pub/sub. Two near caches in one program stand for two
//! processes here; the tests (`tests/near_cache.rs`) use two real ones.
//!
//! ```text
//! cargo run -p larder --features redis --example near_cache [-- redis://127.0.0.1:6379]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use larder::mem::MemBackend;
use larder::prelude::*;
use larder::redis::RedisBus;
use larder::NearBackend;

async fn node(url: &str) -> Result<(Cache, Arc<NearBackend>), Error> {
    let l2 = Cache::from_url(url).await?;
    let bus = Arc::new(RedisBus::new(url, "larder:near-example")?);
    let near = NearBackend::builder(
        Arc::new(MemBackend::with_max_entries(10_000)),
        l2.backend().clone(),
    )
    .l1_ttl(Duration::from_secs(5))
    .bus(bus)
    .build()
    .await?;
    let near = Arc::new(near);
    let cache = Cache::builder_arc(near.clone())
        .key_prefix("near-example")
        .build()?;
    Ok((cache, near))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let (a, _) = node(&url).await?;
    let (b, b_near) = node(&url).await?;
    tokio::time::sleep(Duration::from_millis(200)).await; // subscriptions settle

    a.set("greeting", "hello", Ttl::secs(60)).await?;
    println!(
        "B reads (from Redis, now in its L1): {:?}",
        b.get::<String>("greeting").await?
    );
    let t = Instant::now();
    for _ in 0..10_000 {
        b.get::<String>("greeting").await?;
    }
    println!("10,000 L1 hits in B: {:?}", t.elapsed());

    let seen = b_near.bus_events_applied();
    a.set("greeting", "bonjour", Ttl::secs(60)).await?;
    while b_near.bus_events_applied() == seen {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "after A's write reached B: {:?}",
        b.get::<String>("greeting").await?
    );
    a.clear().await?;
    Ok(())
}
