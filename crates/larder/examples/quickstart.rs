//! The cache API in one page: open a cache from a URL, set and get typed
//! values, count with `incr`, and cache-aside with `get_or_compute`.
//!
//! Run: `cargo run -p larder --example quickstart`
//! Another backend: `cargo run -p larder --example quickstart -- file:///tmp/larder-demo`

use std::time::{Duration, Instant};

use larder::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    karma: i64,
}

/// Stands in for a slow database query.
async fn load_profile(id: u64) -> Result<Profile, Error> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Profile {
        id,
        name: format!("user{id}"),
        karma: 42,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mem://?max_entries=10000&key_prefix=quickstart".into());
    let cache = Cache::from_url(&url).await?;
    println!(
        "cache: {} backend, keys look like {:?}",
        cache.backend().name(),
        cache.make_key("profile:1")?
    );

    // Typed values: anything serde can serialize.
    cache
        .set("greeting", "hello, larder", Ttl::secs(60))
        .await?;
    let greeting: Option<String> = cache.get("greeting").await?;
    println!("get greeting -> {greeting:?}");

    // Counters are atomic and keep their TTL.
    cache.set("page_views", &0, Ttl::secs(3600)).await?;
    for _ in 0..3 {
        cache.incr("page_views", 1).await?;
    }
    println!(
        "page_views -> {}",
        cache.get::<i64>("page_views").await?.unwrap_or_default()
    );

    // Cache-aside in one call: the first call computes, the second is a hit.
    for attempt in 1..=2 {
        let started = Instant::now();
        let profile: Profile = cache
            .get_or_compute("profile:1", Ttl::secs(300), || load_profile(1))
            .await?;
        println!(
            "get_or_compute #{attempt}: {} (karma {}) in {:?}",
            profile.name,
            profile.karma,
            started.elapsed()
        );
    }

    // Invalidate on data change.
    cache.delete("profile:1").await?;
    println!(
        "after delete, has_key -> {}",
        cache.has_key("profile:1").await?
    );

    // Bad input gets a clear error.
    if let Err(e) = cache.set("has a space", &1, Ttl::Default).await {
        println!("invalid key -> {e}");
    }
    cache.clear().await?;
    Ok(())
}
