//! Runs the query cache's logical-replication consumer on one table for a
//! while: the consumer side of `scripts/bench-capture` (the write cost of
//! change capture), and a minimal example of `watch_replication`.
//!
//! ```text
//! cargo run --release -p larder-query --example replication_watch -- \
//!     postgres://postgres@127.0.0.1:25432/test comments 60
//! ```
//!
//! The server needs `wal_level = logical` (`scripts/services` starts one
//! on 127.0.0.1:25432). The slot and publication are named
//! `larder_watch_<table>` and dropped at the end.

use std::time::Duration;

use larder_core::{Cache, Ttl};
use larder_query::{LogicalConfig, QueryCache, SqlDialect};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:25432/test".into());
    let table = args.next().unwrap_or_else(|| "comments".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let pool = sqlx::PgPool::connect(&url).await?;
    let store = Cache::builder(larder_mem::MemBackend::default()).build()?;
    let qc = QueryCache::new(pool, store, SqlDialect::Postgres, Ttl::secs(600));
    let name = format!("larder_watch_{table}");
    let config = LogicalConfig::new(&url, &name, &name, [table.clone()])?;
    // Create the slot first, so a writer started after "watching" is seen.
    larder_changes::logical::ensure_slot(&config).await?;
    let watch = qc.watch_replication(config.clone());
    println!("watching {table} for {secs} s");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    watch.abort();
    let _ = watch.await;
    for _ in 0..50 {
        if larder_changes::logical::drop_slot(&config).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
