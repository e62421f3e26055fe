//! Randomized model tests: the query cache against the database itself.
//!
//! 1. Sequential, seeded: in-app writes, transactions committed and rolled
//!    back, writes through a plain connection followed by one poll of the
//!    trigger counts (the documented bound); after every step every cached
//!    read equals a direct read.
//! 2. Concurrent: a writer raises three values, one by autocommit writes,
//!    one by transactions, one through a plain connection followed by one
//!    poll, and publishes each once that has returned; readers must never
//!    see a value older than what was published when their read began
//!    (zero stale reads after an in-app write commits, or after the poll
//!    that bounds outside writes).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use larder_core::{Cache, Ttl};
use larder_query::{OutsideWrites, Param, QueryCache, SqlDialect};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Val {
    v: i64,
}

impl<'r, R> sqlx::FromRow<'r, R> for Val
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Val {
            v: row.try_get("v")?,
        })
    }
}

const ROWS: i64 = 8;

macro_rules! model {
    ($pool:expr, $dialect:expr, $table:expr, $ph:expr) => {{
        let pool = $pool;
        let t: &str = $table;
        let ph = |n: usize| -> String {
            if $ph {
                format!("${n}")
            } else {
                "?".to_owned()
            }
        };
        larder_query::install(&pool, $dialect, &[t]).await.unwrap();
        for id in 0..ROWS {
            sqlx::raw_sql(&format!("INSERT INTO {t} (id, v) VALUES ({id}, 0)"))
                .execute(&pool)
                .await
                .unwrap();
        }
        let cache = Cache::builder(larder_mem::MemBackend::default())
            .build()
            .unwrap();
        let qc = QueryCache::new(pool.clone(), cache, $dialect, Ttl::secs(600));
        let mut seen = OutsideWrites::default();
        qc.sync_outside_writes(&mut seen).await.unwrap();
        let one = format!("SELECT v FROM {t} WHERE id = {}", ph(1));
        let sum = format!(
            "SELECT CAST(SUM(v) AS {}) AS v FROM {t}",
            if $ph { "BIGINT" } else { "SIGNED" }
        );
        let set = format!("UPDATE {t} SET v = {} WHERE id = {}", ph(1), ph(2));
        let mut rng = fastrand::Rng::with_seed(42);
        for step in 0..300 {
            let id = rng.i64(0..ROWS);
            let val = rng.i64(-1000..1000);
            match rng.u8(0..5) {
                0 => {
                    qc.execute(&set, &[Param::from(val), Param::from(id)])
                        .await
                        .unwrap();
                }
                1 | 2 => {
                    let mut tx = qc.begin().await.unwrap();
                    tx.execute(&set, &[Param::from(val), Param::from(id)])
                        .await
                        .unwrap();
                    let inside: Vec<Val> = tx.fetch_all(&one, &[Param::from(id)]).await.unwrap();
                    assert_eq!(
                        inside[0].v, val,
                        "step {step}: a transaction did not see its write"
                    );
                    if rng.bool() {
                        tx.commit().await.unwrap();
                    } else {
                        tx.rollback().await.unwrap();
                    }
                }
                3 => {
                    // Outside the application, then one poll (the bound).
                    sqlx::query(&set)
                        .bind(val)
                        .bind(id)
                        .execute(&pool)
                        .await
                        .unwrap();
                    qc.sync_outside_writes(&mut seen).await.unwrap();
                }
                _ => {}
            }
            for id in 0..ROWS {
                let cached: Val = qc.fetch_one(&one, &[Param::from(id)]).await.unwrap();
                let direct: i64 = sqlx::query(&one)
                    .bind(id)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(cached.v, direct, "step {step}: row {id} is stale");
            }
            let cached: Val = qc.fetch_one(&sum, &[]).await.unwrap();
            let direct: i64 = sqlx::query(&sum).fetch_one(&pool).await.unwrap().get(0);
            assert_eq!(cached.v, direct, "step {step}: the sum is stale");
        }

        // Concurrent: values only grow. Row 0: autocommit writes; row 1:
        // transactions; row 2: a plain connection followed by one poll of
        // the trigger counts. A reader starting after a value was published
        // must see at least it.
        for id in 0..3i64 {
            qc.execute(&set, &[Param::from(0i64), Param::from(id)])
                .await
                .unwrap();
        }
        let published: Arc<[AtomicI64; 3]> = Arc::new(Default::default());
        let seen = Arc::new(tokio::sync::Mutex::new(seen));
        let writer = {
            let (qc, published, set, pool, seen) = (
                qc.clone(),
                published.clone(),
                set.clone(),
                pool.clone(),
                seen.clone(),
            );
            tokio::spawn(async move {
                for n in 1..=40i64 {
                    qc.execute(&set, &[Param::from(n), Param::from(0i64)])
                        .await
                        .unwrap();
                    published[0].store(n, Ordering::SeqCst);
                    let mut tx = qc.begin().await.unwrap();
                    tx.execute(&set, &[Param::from(n), Param::from(1i64)])
                        .await
                        .unwrap();
                    tx.commit().await.unwrap();
                    published[1].store(n, Ordering::SeqCst);
                    sqlx::query(&set)
                        .bind(n)
                        .bind(2i64)
                        .execute(&pool)
                        .await
                        .unwrap();
                    qc.sync_outside_writes(&mut *seen.lock().await)
                        .await
                        .unwrap();
                    published[2].store(n, Ordering::SeqCst);
                }
            })
        };
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (qc, published, one) = (qc.clone(), published.clone(), one.clone());
            readers.push(tokio::spawn(async move {
                let mut reads = 0;
                while published[2].load(Ordering::SeqCst) < 40 {
                    for id in 0..3usize {
                        let floor = published[id].load(Ordering::SeqCst);
                        let got: Val = qc.fetch_one(&one, &[Param::from(id as i64)]).await.unwrap();
                        assert!(
                            got.v >= floor,
                            "row {id}: stale read {} after {} was committed",
                            got.v,
                            floor
                        );
                    }
                    reads += 1;
                    // Hits on the memory store never suspend: let the writer run.
                    tokio::task::yield_now().await;
                }
                reads
            }));
        }
        writer.await.unwrap();
        for r in readers {
            assert!(r.await.unwrap() > 0);
        }
        sqlx::raw_sql(&format!("DROP TABLE {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }};
}

fn table(tag: &str) -> String {
    format!("qc_model_{}_{tag}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_model() {
    let dir = std::env::temp_dir().join(format!("larder-qcm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect(&format!("sqlite://{}/m.db?mode=rwc", dir.display()))
        .await
        .unwrap();
    let t = table("lite");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    model!(pool.clone(), SqlDialect::Sqlite, &t, false);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_model() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    let t = table("pg");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    model!(pool, SqlDialect::Postgres, &t, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_model() {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 3306");
    let t = table("my");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    model!(pool, SqlDialect::MySql, &t, false);
}
