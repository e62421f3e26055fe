//! Runs the query cache's reader of the trigger change log on one table
//! for a while: the consumer side of the `triggers` modes of
//! `scripts/bench-capture`, and a minimal example of choosing how outside
//! writes wake the cache (issue 15).
//!
//! ```text
//! # triggers with NOTIFY, read on every notification (watch_postgres)
//! cargo run --release -p larder-query --example outside_watch -- notify postgres://postgres@127.0.0.1:25432/test comments 60
//! # triggers without NOTIFY, the log polled every 20 ms (watch_outside_writes)
//! cargo run --release -p larder-query --example outside_watch -- poll=20 postgres://postgres@127.0.0.1:25432/test comments 60
//! ```
//!
//! Installs the triggers on the table (`larder_query::install_with`) and
//! reads the change log until the time is up.

use std::time::Duration;

use larder_core::{Cache, Ttl};
use larder_query::{QueryCache, SqlDialect, Wakeup};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "notify".into());
    let url = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let table = args.next().unwrap_or_else(|| "comments".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(60);
    let pool = sqlx::PgPool::connect(&url).await?;
    let store = Cache::builder(larder_mem::MemBackend::default()).build()?;
    let qc = QueryCache::new(pool.clone(), store, SqlDialect::Postgres, Ttl::secs(600));
    let watch = match mode.split_once('=') {
        None if mode == "notify" => {
            larder_query::install_with(&pool, SqlDialect::Postgres, &[&table], Wakeup::Notify)
                .await?;
            qc.watch_postgres(&url)
        }
        Some(("poll", ms)) => {
            let ms: u64 = ms.parse().map_err(|_| format!("poll={ms}: milliseconds"))?;
            larder_query::install_with(&pool, SqlDialect::Postgres, &[&table], Wakeup::Poll)
                .await?;
            qc.watch_outside_writes(Duration::from_millis(ms))
        }
        _ => return Err(format!("mode {mode:?}: use notify or poll=MS").into()),
    };
    println!("reading {table}'s outside writes ({mode}) for {secs} s");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    watch.abort();
    let _ = watch.await;
    Ok(())
}
