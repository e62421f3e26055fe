//! The filesystem backend: entries survive restarts and are shared by every
//! process (or handle) that opens the same directory; `incr` stays atomic
//! across them.
//!
//! Run: `cargo run -p larder --example file_cache`

use larder::file::{FileBackend, FileConfig};
use larder::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("larder-file-example-{}", std::process::id()));
    let config = FileConfig::default().max_entries(1_000);

    // Two independent handles stand in for two processes.
    let a = Cache::builder(FileBackend::open(&dir, config.clone())?)
        .key_prefix("shop")
        .build()?;
    let b = Cache::builder(FileBackend::open(&dir, config.clone())?)
        .key_prefix("shop")
        .build()?;

    a.set("orders", &0, Ttl::Never).await?;
    let mut tasks = Vec::new();
    for cache in [a.clone(), b.clone()] {
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                cache.incr("orders", 1).await?;
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "orders after 2 x 50 concurrent increments: {:?}",
        b.get::<i64>("orders").await?
    );

    // Reopen: the data is still there.
    drop((a, b));
    let reopened = Cache::builder(FileBackend::open(&dir, config)?)
        .key_prefix("shop")
        .build()?;
    println!(
        "after reopening: orders = {:?}",
        reopened.get::<i64>("orders").await?
    );

    reopened.clear().await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
