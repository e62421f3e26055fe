//! Outside writes through PostgreSQL logical replication (the private
//! server of `scripts/services` on 127.0.0.1:25432, `wal_level=logical`):
//! a write by another connection invalidates the reads of the rows it
//! touched (old and new values) and leaves the others cached; TRUNCATE
//! invalidates the table; a restart resumes from the slot without losing
//! the writes made meanwhile; a dropped slot invalidates everything.

use std::time::{Duration, Instant};

use larder_core::{Cache, Ttl};
use larder_query::{LogicalConfig, Param, QueryCache, SqlDialect};
use serde::{Deserialize, Serialize};
use sqlx::Row;

const URL: &str = "postgres://postgres@127.0.0.1:25432/test";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct C {
    id: i64,
    n: i64,
}

impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for C {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(C {
            id: row.try_get("id")?,
            n: row.try_get("n")?,
        })
    }
}

/// Polls the cached read of `post` until it equals the database's (the
/// outside write has arrived), failing after 20 s; returns how long it
/// took.
async fn converges(
    qc: &QueryCache<sqlx::Postgres>,
    pool: &sqlx::PgPool,
    read: &str,
    post: i64,
) -> Duration {
    let started = Instant::now();
    loop {
        let cached: Vec<C> = qc.fetch_all(read, &[Param::from(post)]).await.unwrap();
        let direct: Vec<C> = sqlx::query_as(read)
            .bind(post)
            .fetch_all(pool)
            .await
            .unwrap();
        if cached == direct {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "post {post}: the outside write never reached the cache: {cached:?} vs {direct:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_writes_arrive_row_by_row() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(URL)
        .await
        .expect("the logical-replication PostgreSQL of scripts/services on 127.0.0.1:25432");
    // Slots left by earlier runs that failed keep WAL on the server.
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE NOT active AND (slot_name LIKE 'larder_test_%' OR slot_name LIKE 'larder_rlm_%')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let pid = std::process::id();
    let t = format!("rp_comments_{pid}");
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL, n BIGINT NOT NULL, body TEXT)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let name = format!("larder_test_{pid}");
    let config = LogicalConfig::new(URL, &name, &name, [t.clone()]).unwrap();
    let cache = Cache::builder(larder_mem::MemBackend::default())
        .build()
        .unwrap();
    let qc = QueryCache::new(pool.clone(), cache, SqlDialect::Postgres, Ttl::secs(600));
    let read = format!("SELECT id, n FROM {t} WHERE post_id = $1 ORDER BY id");
    let outside = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::raw_sql(&sql).execute(&pool).await.unwrap();
        }
    };
    let mut watch = qc.watch_replication(config.clone());
    // Live: a write shows up through the stream.
    let _: Vec<C> = qc.fetch_all(&read, &[Param::from(99i64)]).await.unwrap();
    outside(format!("INSERT INTO {t} VALUES (1, 99, 0, 'x')")).await;
    converges(&qc, &pool, &read, 99).await;

    let mut seen = Vec::new();
    for p in [2, 3, 4, 5, 6] {
        let _: Vec<C> = qc.fetch_all(&read, &[Param::from(p)]).await.unwrap();
    }
    // A write to post 3 leaves post 2 cached.
    outside(format!("INSERT INTO {t} VALUES (2, 3, 0, 'x')")).await;
    seen.push(converges(&qc, &pool, &read, 3).await);
    let before = qc.stats();
    let _: Vec<C> = qc.fetch_all(&read, &[Param::from(2i64)]).await.unwrap();
    assert_eq!(
        qc.stats().computed,
        before.computed,
        "post 2 was invalidated by a write to post 3"
    );
    // Writes to post 2: insert, update in place, move to post 4, delete.
    outside(format!(
        "INSERT INTO {t} VALUES (3, 2, 0, 'x'), (4, 2, 0, 'y')"
    ))
    .await;
    seen.push(converges(&qc, &pool, &read, 2).await);
    outside(format!("UPDATE {t} SET n = n + 5 WHERE post_id = 2")).await;
    seen.push(converges(&qc, &pool, &read, 2).await);
    let _: Vec<C> = qc.fetch_all(&read, &[Param::from(4i64)]).await.unwrap();
    outside(format!("UPDATE {t} SET post_id = 4 WHERE id = 3")).await;
    seen.push(converges(&qc, &pool, &read, 4).await);
    seen.push(converges(&qc, &pool, &read, 2).await);
    outside(format!("DELETE FROM {t} WHERE id = 4")).await;
    seen.push(converges(&qc, &pool, &read, 2).await);
    // A transaction of several statements.
    outside(format!(
        "BEGIN; INSERT INTO {t} VALUES (5, 2, 1, 'z'); UPDATE {t} SET post_id = 2 WHERE id = 3; COMMIT"
    ))
    .await;
    seen.push(converges(&qc, &pool, &read, 2).await);
    seen.push(converges(&qc, &pool, &read, 4).await);

    // A restart resumes from the slot: the write made while no one watched
    // arrives.
    let _: Vec<C> = qc.fetch_all(&read, &[Param::from(5i64)]).await.unwrap();
    watch.abort();
    let _ = (&mut watch).await;
    outside(format!("INSERT INTO {t} VALUES (6, 5, 0, 'x')")).await;
    let cached: Vec<C> = qc.fetch_all(&read, &[Param::from(5i64)]).await.unwrap();
    assert!(cached.is_empty(), "nobody watches: still the cached result");
    let mut watch = qc.watch_replication(config.clone());
    converges(&qc, &pool, &read, 5).await;

    // TRUNCATE invalidates the table.
    outside(format!("TRUNCATE {t}")).await;
    for p in [2, 5, 99] {
        converges(&qc, &pool, &read, p).await;
    }

    // A dropped slot: the changes it held are lost, so everything is
    // invalidated when the stream finds it missing.
    outside(format!("INSERT INTO {t} VALUES (7, 6, 0, 'x')")).await;
    converges(&qc, &pool, &read, 6).await;
    // Drain the stream: the read of post 6 above may have been a miss
    // that saw the insert before the stream did. Changes arrive in commit
    // order, so once a later write to post 77 has invalidated its cached
    // read, the insert on post 6 has been handled too.
    let _: Vec<C> = qc.fetch_all(&read, &[Param::from(77i64)]).await.unwrap();
    outside(format!("INSERT INTO {t} VALUES (9, 77, 0, 'x')")).await;
    converges(&qc, &pool, &read, 77).await;
    let _: Vec<C> = qc.fetch_all(&read, &[Param::from(6i64)]).await.unwrap();
    watch.abort();
    let _ = (&mut watch).await;
    outside(format!("INSERT INTO {t} VALUES (8, 6, 0, 'x')")).await;
    let started = Instant::now();
    loop {
        // The walsender of the aborted stream may still hold the slot.
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&name)
        .execute(&pool)
        .await;
        if dropped.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "could not drop the slot: {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cached: Vec<C> = qc.fetch_all(&read, &[Param::from(6i64)]).await.unwrap();
    assert_eq!(cached.len(), 1, "still the cached result");
    let watch = qc.watch_replication(config.clone());
    converges(&qc, &pool, &read, 6).await;

    seen.sort();
    eprintln!(
        "outside write -> cache converged: median {:?}, max {:?} over {} writes",
        seen[seen.len() / 2],
        seen[seen.len() - 1],
        seen.len()
    );
    watch.abort();
    let _ = watch.await;
    let started = Instant::now();
    while larder_changes_drop(&config).await.is_err() && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::raw_sql(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .unwrap();
}

async fn larder_changes_drop(config: &LogicalConfig) -> Result<(), String> {
    larder_changes::logical::drop_slot(config)
        .await
        .map_err(|e| e.to_string())
}
