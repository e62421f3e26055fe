//! Benchmark: hit ratio and read throughput of "comments of post X" under
//! write load, with table generations, row-level dependencies and no
//! cache (issue 15).
//!
//! 10,000 posts x 10 comments on PostgreSQL; one reader fetches the
//! comments of random posts (`WHERE post_id = $1`) while a writer inserts
//! comments on random posts at a fixed rate through the query cache.
//!
//! ```text
//! cargo run --release -p larder-query --example row_level_bench -- \
//!     [postgres://postgres@127.0.0.1:5432/test] [mem://|redis://127.0.0.1:6379/3] \
//!     [seconds per phase, default 20] [write rates, default 0,1,10,100,1000]
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_core::{Cache, Ttl};
use larder_query::{Param, QueryCache, SqlDialect};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Comment {
    id: i64,
    post_id: i64,
    body: String,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for Comment {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Comment {
            id: row.try_get("id")?,
            post_id: row.try_get("post_id")?,
            body: row.try_get("body")?,
        })
    }
}

const POSTS: i64 = 10_000;
const READ: &str = "SELECT id, post_id, body FROM rlb_comments WHERE post_id = $1 ORDER BY id";
const WRITE: &str = "INSERT INTO rlb_comments (post_id, body) VALUES ($1, $2)";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Uncached,
    Table,
    Row,
}

async fn setup(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS rlb_comments; DROP TABLE IF EXISTS rlb_posts;
         CREATE TABLE rlb_posts (id BIGINT PRIMARY KEY, title TEXT NOT NULL);
         CREATE TABLE rlb_comments (id BIGSERIAL PRIMARY KEY, post_id BIGINT NOT NULL, body TEXT NOT NULL);
         INSERT INTO rlb_posts SELECT g, 'post ' || g FROM generate_series(1, 10000) g;
         INSERT INTO rlb_comments (post_id, body)
             SELECT 1 + (g % 10000), 'comment number ' || g FROM generate_series(1, 100000) g;
         CREATE INDEX rlb_comments_post ON rlb_comments (post_id);
         ANALYZE rlb_comments;",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn store(url: &str, run: &str) -> Result<Cache, larder_core::Error> {
    let mut u = larder_core::CacheUrl::parse(url)?;
    let backend: Arc<dyn larder_core::Backend> = match u.scheme() {
        "redis" => Arc::new(larder_redis::RedisBackend::from_url(&mut u).await?),
        _ => Arc::new(larder_mem::MemBackend::default()),
    };
    // A prefix of its own per phase: no phase sees another's entries.
    Cache::builder_arc(backend)
        .key_prefix(format!("rlb{run}"))
        .build()
}

struct Phase {
    reads: u64,
    wall: Duration,
    hit_ratio: Option<f64>,
    writes: u64,
    /// Microseconds of the reads that were hits and of those that computed.
    hit_us: Vec<u64>,
    miss_us: Vec<u64>,
}

/// "avg / p50 / p99 µs (n)" of `v`, sorted here.
fn latency(v: &mut [u64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let avg = v.iter().sum::<u64>() / v.len() as u64;
    format!(
        "{avg} / {} / {} us ({})",
        v[v.len() / 2],
        v[v.len() * 99 / 100],
        v.len()
    )
}

async fn phase(
    pool: &sqlx::PgPool,
    store_url: &str,
    mode: Mode,
    rate: u32,
    secs: u64,
    run: &str,
) -> Result<Phase, Box<dyn std::error::Error>> {
    let qc = match mode {
        Mode::Uncached => None,
        m => Some(
            QueryCache::new(
                pool.clone(),
                store(store_url, run).await?,
                SqlDialect::Postgres,
                Ttl::secs(600),
            )
            .row_level(m == Mode::Row),
        ),
    };
    // Warm the cache: every post read once, not counted.
    if let Some(qc) = &qc {
        for p in 1..=POSTS {
            let _: Vec<Comment> = qc.fetch_all(READ, &[Param::from(p)]).await?;
        }
    }
    let before = qc.as_ref().map(QueryCache::stats);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, qc, stop) = (pool.clone(), qc.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            if rate == 0 {
                return n;
            }
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut rng = fastrand::Rng::with_seed(7);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let post = rng.i64(1..=POSTS);
                let params = [Param::from(post), Param::from("a new comment")];
                let done = match &qc {
                    Some(qc) => qc.execute(WRITE, &params).await.map(|_| ()),
                    None => sqlx::query(WRITE)
                        .bind(post)
                        .bind("a new comment")
                        .execute(&pool)
                        .await
                        .map(|_| ())
                        .map_err(larder_query::QueryError::from),
                };
                if let Err(e) = done {
                    eprintln!("write failed: {e}");
                }
                n += 1;
            }
            n
        })
    };
    let mut rng = fastrand::Rng::with_seed(11);
    let started = Instant::now();
    let mut reads = 0u64;
    let (mut hit_us, mut miss_us) = (Vec::new(), Vec::new());
    while started.elapsed() < Duration::from_secs(secs) {
        let post = rng.i64(1..=POSTS);
        let computed = qc.as_ref().map(|q| q.stats().computed);
        let t = Instant::now();
        let rows: Vec<Comment> = match &qc {
            Some(qc) => qc.fetch_all(READ, &[Param::from(post)]).await?,
            None => sqlx::query_as(READ).bind(post).fetch_all(pool).await?,
        };
        let us = t.elapsed().as_micros() as u64;
        match (qc.as_ref().map(|q| q.stats().computed), computed) {
            (Some(after), Some(before)) if after > before => miss_us.push(us),
            _ => hit_us.push(us),
        }
        debug_assert!(rows
            .iter()
            .all(|c| c.post_id == post && c.id > 0 && !c.body.is_empty()));
        reads += 1;
        if reads.is_multiple_of(64) {
            // Let the writer in on a current-thread runtime.
            tokio::task::yield_now().await;
        }
    }
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await?;
    let hit_ratio = qc.as_ref().zip(before).map(|(qc, b)| {
        let a = qc.stats();
        let reads = a.cached_reads - b.cached_reads;
        let computed = a.computed - b.computed;
        (reads - computed.min(reads)) as f64 / reads.max(1) as f64
    });
    if let Some(qc) = &qc {
        // Leave the store as it was (a prefixed clear scans: best effort).
        let store = qc.generations().cache().clone();
        if let Err(e) = store.clear().await {
            eprintln!("could not clear the phase's entries: {e}");
        }
    }
    Ok(Phase {
        reads,
        wall,
        hit_ratio,
        writes,
        hit_us,
        miss_us,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let store_url = args.next().unwrap_or_else(|| "mem://".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20);
    let rates: Vec<u32> = args
        .next()
        .unwrap_or_else(|| "0,1,10,100,1000".into())
        .split(',')
        .filter_map(|r| r.parse().ok())
        .collect();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db)
        .await?;
    println!("store {store_url}, {secs} s per phase, {POSTS} posts x 10 comments");
    println!(
        "{:>9} | {:>11} {:>8} | {:>11} {:>8} {:>8} | {:>11} {:>8} {:>8}",
        "writes/s", "uncached", "", "table", "hits", "x", "row", "hits", "x"
    );
    let run_id = std::process::id();
    for rate in rates {
        // Fresh data per rate: every phase starts from 100,000 comments.
        let mut results = Vec::new();
        for mode in [Mode::Uncached, Mode::Table, Mode::Row] {
            setup(&pool).await?;
            let run = format!("{run_id}_{rate}_{mode:?}");
            let p = phase(&pool, &store_url, mode, rate, secs, &run).await?;
            results.push(p);
        }
        let per_sec = |p: &Phase| p.reads as f64 / p.wall.as_secs_f64();
        let base = per_sec(&results[0]);
        let cell = |p: &Phase| {
            format!(
                "{:>11.0} {:>7.1}% {:>7.2}x",
                per_sec(p),
                p.hit_ratio.unwrap_or(0.0) * 100.0,
                per_sec(p) / base
            )
        };
        println!(
            "{:>9} | {:>11.0} {:>8} | {} | {}   (writes done: {} / {} / {})",
            rate,
            base,
            "",
            cell(&results[1]),
            cell(&results[2]),
            results[0].writes,
            results[1].writes,
            results[2].writes
        );
        // Read latency (avg / p50 / p99): uncached; row-level hits; row-level
        // reads that computed.
        let (u, r) = (&mut results[0].hit_us.clone(), &mut results[2]);
        eprintln!(
            "{:>9}   latency: uncached {}; row hits {}; row misses {}",
            rate,
            latency(u),
            latency(&mut r.hit_us),
            latency(&mut r.miss_us)
        );
    }
    sqlx::raw_sql("DROP TABLE IF EXISTS rlb_comments; DROP TABLE IF EXISTS rlb_posts")
        .execute(&pool)
        .await?;
    Ok(())
}
