//! A cache table in a SQL database: SQLite in process, or PostgreSQL /
//! MySQL / MariaDB through sqlx. The table is created on first use (or with
//! `larder createcachetable`).
//!
//! Run:
//! `cargo run -p larder --features sql --example sql`                              (SQLite file in the temp dir)
//! `cargo run -p larder --features sql --example sql -- postgres://postgres@127.0.0.1:5432/test`

use std::time::Duration;

use larder::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let default = format!(
        "sqlite://{}/larder-example.db?io=inline",
        std::env::temp_dir().display()
    );
    let url = std::env::args().nth(1).unwrap_or(default);
    let sep = if url.contains('?') { "&" } else { "?" };
    let cache = Cache::from_url(&format!("{url}{sep}key_prefix=example")).await?;
    println!("backend: {}", cache.backend().name());
    cache
        .set("greeting", "hello from a table", Ttl::secs(2))
        .await?;
    println!("now: {:?}", cache.get::<String>("greeting").await?);
    // Expired rows read as misses at once and are deleted in bulk later.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    println!(
        "after the TTL: {:?}",
        cache.get::<String>("greeting").await?
    );
    // add is atomic: only the first of two writers wins.
    println!(
        "first add: {}",
        cache.add("lock", "a", Ttl::secs(30)).await?
    );
    println!(
        "second add: {}",
        cache.add("lock", "b", Ttl::secs(30)).await?
    );
    cache.clear().await?;
    Ok(())
}
