//! Benchmark: how long after an outside write commits until no cached read
//! returns the old result, with PostgreSQL logical replication and with
//! the triggers' NOTIFY, and with triggers polled without NOTIFY
//! (issue 15).
//!
//! ```text
//! cargo run --release -p larder-query --example visibility_bench -- logical postgres://postgres@127.0.0.1:25432/test
//! cargo run --release -p larder-query --example visibility_bench -- notify  postgres://postgres@127.0.0.1:25432/test
//! cargo run --release -p larder-query --example visibility_bench -- poll=20 postgres://postgres@127.0.0.1:25432/test
//! ```
//!
//! Each of 300 rounds: read post X through the cache (cached), update one
//! of its rows from another connection, then poll the cached read until it
//! shows the update; the time from the UPDATE returning to the first fresh
//! read is the visibility delay.

use std::time::{Duration, Instant};

use larder_core::{Cache, Ttl};
use larder_query::{LogicalConfig, Param, QueryCache, SqlDialect};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "logical".into());
    let url = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:25432/test".into());
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS vis_rows;
         CREATE TABLE vis_rows (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL, n BIGINT NOT NULL);
         INSERT INTO vis_rows SELECT g, 1 + g % 100, 0 FROM generate_series(1, 1000) g;
         CREATE INDEX ON vis_rows (post_id);",
    )
    .execute(&pool)
    .await?;
    let store = Cache::builder(larder_mem::MemBackend::default()).build()?;
    let qc = QueryCache::new(pool.clone(), store, SqlDialect::Postgres, Ttl::secs(600));
    let config = LogicalConfig::new(&url, "larder_vis", "larder_vis", ["vis_rows"])?;
    let watch = match mode.as_str() {
        poll if poll.starts_with("poll=") => {
            let ms: u64 = poll["poll=".len()..]
                .parse()
                .map_err(|_| format!("{poll}: poll=MILLISECONDS"))?;
            larder_query::install_with(
                &pool,
                SqlDialect::Postgres,
                &["vis_rows"],
                larder_query::Wakeup::Poll,
            )
            .await?;
            qc.watch_outside_writes(Duration::from_millis(ms))
        }
        "logical" => {
            larder_changes::logical::ensure_slot(&config).await?;
            qc.watch_replication(config.clone())
        }
        "notify" => {
            larder_query::install(&pool, SqlDialect::Postgres, &["vis_rows"]).await?;
            qc.watch_postgres(&url)
        }
        other => return Err(format!("mode {other:?}: use logical, notify or poll=MS").into()),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read = "SELECT CAST(SUM(n) AS BIGINT) FROM vis_rows WHERE post_id = $1";
    let mut delays = Vec::new();
    for round in 0..300i64 {
        let post = 1 + round % 100;
        let before: Vec<(i64,)> = qc.fetch_all(read, &[Param::from(post)]).await?;
        sqlx::query("UPDATE vis_rows SET n = n + 1 WHERE id = $1")
            .bind((post - 1) + 100 * (1 + round % 9))
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        loop {
            let now: Vec<(i64,)> = qc.fetch_all(read, &[Param::from(post)]).await?;
            if now != before {
                delays.push(committed.elapsed());
                break;
            }
            if committed.elapsed() > Duration::from_secs(10) {
                return Err(format!("round {round}: not visible after 10 s").into());
            }
            tokio::task::yield_now().await;
        }
    }
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{mode}: {} writes, visibility p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        delays.len(),
        ms(delays[delays.len() / 2]),
        ms(delays[delays.len() * 99 / 100]),
        ms(delays[delays.len() - 1])
    );
    watch.abort();
    let _ = watch.await;
    if mode == "logical" {
        for _ in 0..50 {
            if larder_changes::logical::drop_slot(&config).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    sqlx::raw_sql("DROP TABLE vis_rows").execute(&pool).await?;
    Ok(())
}
