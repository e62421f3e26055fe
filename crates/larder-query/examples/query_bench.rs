//! Benchmark: a JOIN + aggregate on PostgreSQL, cached by larder-query
//! against uncached, and the cost added to writes.
//!
//! ```text
//! cargo run --release -p larder-query --example query_bench -- \
//!     [postgres://postgres@127.0.0.1:5432/test] [mem://|redis://127.0.0.1:6379/0] \
//!     [postgres://postgres@127.0.0.1:9999/test]    # optional: pgpool-II with its query cache
//! ```

use std::time::{Duration, Instant};

use larder_core::Ttl;
use larder_query::{Param, QueryCache, SqlDialect};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PostCount {
    id: i64,
    title: String,
    comments: i64,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for PostCount {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(PostCount {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            comments: row.try_get("comments")?,
        })
    }
}

const QUERY: &str = "SELECT p.id, p.title, count(c.id) AS comments \
     FROM qb_post p LEFT JOIN qb_comment c ON c.post_id = p.id \
     WHERE p.author_id = $1 GROUP BY p.id, p.title ORDER BY p.id";

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

fn report(name: &str, mut v: Vec<Duration>, wall: Duration) -> Duration {
    let n = v.len();
    let p50 = pct(&mut v, 50.0);
    let p99 = pct(&mut v, 99.0);
    println!(
        "{name:<28} n={n:<6} p50={:>9.1}µs p99={:>9.1}µs  {:>9.0} ops/s",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        n as f64 / wall.as_secs_f64()
    );
    p50
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let db = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let store = args.next().unwrap_or_else(|| "mem://".into());
    let pgpool = args.next();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&db)
        .await?;
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS qb_comment; DROP TABLE IF EXISTS qb_post;
         CREATE TABLE qb_post (id BIGINT PRIMARY KEY, author_id BIGINT NOT NULL, title TEXT NOT NULL);
         CREATE TABLE qb_comment (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL, body TEXT NOT NULL);
         INSERT INTO qb_post SELECT g, g % 500, 'post ' || g FROM generate_series(1, 10000) g;
         INSERT INTO qb_comment SELECT g, 1 + g % 10000, 'comment ' || g FROM generate_series(1, 100000) g;
         CREATE INDEX ON qb_post (author_id); CREATE INDEX ON qb_comment (post_id); ANALYZE;",
    )
    .execute(&pool)
    .await?;
    let cache = larder_core::Cache::builder_arc(open(&store).await?)
        .key_prefix("qb")
        .build()?;
    cache.clear().await?;
    let qc = QueryCache::new(pool.clone(), cache, SqlDialect::Postgres, Ttl::secs(3600));
    println!(
        "# {QUERY}\n# store: {store}; 20 posts x ~10 comments per author, 10k posts, 100k comments"
    );
    let authors: Vec<i64> = (0..50).collect();
    // Warm both paths.
    for a in &authors {
        let _: Vec<PostCount> = qc.fetch_all(QUERY, &[Param::from(*a)]).await?;
    }
    let n = 3000;
    let mut t = Vec::with_capacity(n);
    let wall = Instant::now();
    for i in 0..n {
        let a = authors[i % authors.len()];
        let s = Instant::now();
        let rows: Vec<PostCount> = sqlx::query_as(QUERY).bind(a).fetch_all(&pool).await?;
        std::hint::black_box(rows);
        t.push(s.elapsed());
    }
    let uncached = report("uncached (sqlx)", t, wall.elapsed());
    let mut t = Vec::with_capacity(n);
    let wall = Instant::now();
    for i in 0..n {
        let a = authors[i % authors.len()];
        let s = Instant::now();
        let rows: Vec<PostCount> = qc.fetch_all(QUERY, &[Param::from(a)]).await?;
        std::hint::black_box(rows);
        t.push(s.elapsed());
    }
    let cached = report("cached (larder-query)", t, wall.elapsed());
    println!(
        "cached p50 is {:.1}x faster",
        uncached.as_secs_f64() / cached.as_secs_f64()
    );
    if let Some(url) = &pgpool {
        let pp = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await?;
        for a in &authors {
            let _: Vec<PostCount> = sqlx::query_as(QUERY).bind(*a).fetch_all(&pp).await?;
        }
        let mut t = Vec::with_capacity(n);
        let wall = Instant::now();
        for i in 0..n {
            let a = authors[i % authors.len()];
            let s = Instant::now();
            let rows: Vec<PostCount> = sqlx::query_as(QUERY).bind(a).fetch_all(&pp).await?;
            std::hint::black_box(rows);
            t.push(s.elapsed());
        }
        let p = report("pgpool-II query cache", t, wall.elapsed());
        println!(
            "pgpool-II p50 is {:.1}x faster than uncached",
            uncached.as_secs_f64() / p.as_secs_f64()
        );
        let write = "UPDATE qb_post SET title = $1 WHERE id = $2";
        let mut t = Vec::with_capacity(1000);
        let wall = Instant::now();
        for i in 0..1000 {
            let s = Instant::now();
            sqlx::query(write)
                .bind(format!("p{i}"))
                .bind(1 + (i as i64 % 10000))
                .execute(&pp)
                .await?;
            t.push(s.elapsed());
        }
        report("write through pgpool-II", t, wall.elapsed());
        pp.close().await;
    }

    let write = "UPDATE qb_post SET title = $1 WHERE id = $2";
    let m = 1000;
    let mut t = Vec::with_capacity(m);
    let wall = Instant::now();
    for i in 0..m {
        let s = Instant::now();
        sqlx::query(write)
            .bind(format!("t{i}"))
            .bind(1 + (i as i64 % 10000))
            .execute(&pool)
            .await?;
        t.push(s.elapsed());
    }
    let plain = report("write, plain sqlx", t, wall.elapsed());
    let mut t = Vec::with_capacity(m);
    let wall = Instant::now();
    for i in 0..m {
        let s = Instant::now();
        qc.execute(
            write,
            &[
                Param::from(format!("t{i}")),
                Param::from(1 + (i as i64 % 10000)),
            ],
        )
        .await?;
        t.push(s.elapsed());
    }
    let through = report("write, through the cache", t, wall.elapsed());
    println!(
        "added to a write (p50): {:.1}µs (one generation bump: a set_many on the store)",
        (through.as_secs_f64() - plain.as_secs_f64()) * 1e6
    );
    sqlx::raw_sql("DROP TABLE qb_comment; DROP TABLE qb_post")
        .execute(&pool)
        .await?;
    Ok(())
}

async fn open(url: &str) -> Result<std::sync::Arc<dyn larder_core::Backend>, larder_core::Error> {
    let mut u = larder_core::CacheUrl::parse(url)?;
    Ok(match u.scheme() {
        "redis" => std::sync::Arc::new(larder_redis::RedisBackend::from_url(&mut u).await?),
        _ => std::sync::Arc::new(larder_mem::MemBackend::default()),
    })
}
