//! Redis and Redis Cluster: the same `Cache` API over a shared server, so
//! every process of a service sees the same entries.
//!
//! Needs a Redis server (and the servers of `scripts/services` for the
//! cluster part). Run:
//! `cargo run -p larder --features redis --example redis -- redis://127.0.0.1:6379/0`
//! `cargo run -p larder --features redis --example redis -- redis+cluster://127.0.0.1:27001,127.0.0.1:27002`

use larder::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let cache = Cache::from_url(&format!(
        "{url}{}key_prefix=example&deadline_ms=500",
        if url.contains('?') { "&" } else { "?" }
    ))
    .await?;
    cache.set("visits", &0, Ttl::secs(60)).await?;
    for _ in 0..5 {
        cache.incr("visits", 1).await?;
    }
    println!("visits = {:?}", cache.get::<i64>("visits").await?);
    cache
        .set_many::<String, _, _>(
            &[("a", "one".to_string()), ("b", "two".to_string())],
            Ttl::secs(60),
        )
        .await?;
    println!(
        "get_many = {:?}",
        cache.get_many::<String, _>(&["a", "b", "c"]).await?
    );
    // Only this cache's prefix goes; other applications' keys stay.
    cache.clear().await?;
    println!("after clear: {:?}", cache.get::<i64>("visits").await?);
    Ok(())
}
