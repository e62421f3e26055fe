//! A memcached pool: keys spread over servers by ketama consistent hashing
//! (the same placement as libmemcached and other ketama clients).
//!
//! Needs memcached servers (`scripts/services` starts three). Run:
//! `cargo run -p larder --features memcached --example memcached`

use larder::memcached::MemcachedBackend;
use larder::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memcached://127.0.0.1:21211,127.0.0.1:21212,127.0.0.1:21213".into());
    let mut parsed = larder::backend::CacheUrl::parse(&url)?;
    let pool = MemcachedBackend::from_url(&mut parsed)?;
    for key in ["user:1", "user:2", "user:3", "user:4"] {
        println!(
            "{key} lives on {}",
            pool.server_for(&format!("example:1:{key}")).unwrap_or("-")
        );
    }
    let cache = Cache::builder(pool).key_prefix("example").build()?;
    cache.set("user:1", "Ada", Ttl::secs(60)).await?;
    // Counters are signed and keep their TTL, even though memcached's own
    // counters are unsigned.
    cache.set("balance", &5, Ttl::secs(60)).await?;
    println!("balance after -8: {}", cache.decr("balance", 8).await?);
    // Values larger than the servers' item size are refused before sending.
    // (Pseudo-random bytes: a repetitive value would compress below it.)
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let big: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    match cache.set("big", &big, Ttl::secs(60)).await {
        Err(e) => println!("16 MiB value: {e}"),
        Ok(()) => println!("16 MiB value stored (the servers run with -I above 16m)"),
    }
    cache.clear().await?;
    Ok(())
}
