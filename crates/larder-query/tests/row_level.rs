//! Row-level dependencies on SQLite, PostgreSQL and MariaDB.
//!
//! 1. A write to some rows leaves cached reads of other rows cached, and
//!    invalidates every read of the rows it touched (old and new values:
//!    a comment moved from post 2 to post 3 invalidates both), also
//!    through a join and an `IN` list; with `row_level(false)` every write
//!    invalidates the table.
//! 2. A seeded model in precise mode: autocommit writes, transactions
//!    committed and rolled back, outside writes followed by one poll of the
//!    trigger counts (the documented bound), updates that move rows between
//!    key values (by parameter and by expression), multi-row deletes,
//!    whole-table deletes or TRUNCATE; after every step every cached read
//!    equals a direct read.

use larder_core::{Cache, Ttl};
use larder_query::{OutsideWrites, Param, QueryCache, SqlDialect};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct R {
    id: i64,
    n: i64,
}

impl<'r, Rw> sqlx::FromRow<'r, Rw> for R
where
    Rw: Row,
    &'r str: sqlx::ColumnIndex<Rw>,
    i64: sqlx::Decode<'r, Rw::Database> + sqlx::Type<Rw::Database>,
{
    fn from_row(row: &'r Rw) -> Result<Self, sqlx::Error> {
        Ok(R {
            id: row.try_get("id")?,
            n: row.try_get("n")?,
        })
    }
}

const POSTS: i64 = 6;

fn mem() -> Cache {
    Cache::builder(larder_mem::MemBackend::default())
        .build()
        .unwrap()
}

/// Names and SQL for one database.
struct Sql {
    posts: String,
    comments: String,
    by_post: String,
    join: String,
    in_list: String,
    literal: String,
    count: String,
    insert: String,
    mv: String,
    mv_expr: String,
    incr: String,
    del: String,
    del_post: String,
    rename: String,
    truncate: String,
}

fn sql(tag: &str, dollar: bool, int: &str, truncate: bool) -> Sql {
    let ph = |n: usize| -> String {
        if dollar {
            format!("${n}")
        } else {
            "?".to_owned()
        }
    };
    let pid = std::process::id();
    let posts = format!("rl_posts_{tag}_{pid}");
    let comments = format!("rl_comments_{tag}_{pid}");
    Sql {
        by_post: format!(
            "SELECT id, n FROM {comments} WHERE post_id = {} ORDER BY id",
            ph(1)
        ),
        join: format!(
            "SELECT c.id AS id, c.n AS n FROM {comments} c JOIN {posts} p ON c.post_id = p.id \
             WHERE p.id = {} AND p.title <> 'hidden' ORDER BY c.id",
            ph(1)
        ),
        in_list: format!(
            "SELECT id, n FROM {comments} WHERE post_id IN ({}, {}) ORDER BY id",
            ph(1),
            ph(2)
        ),
        literal: format!("SELECT id, n FROM {comments} WHERE post_id = 3 ORDER BY id"),
        count: format!(
            "SELECT CAST(COUNT(*) AS {int}) AS id, CAST(COALESCE(MAX(n), 0) AS {int}) AS n FROM {comments}"
        ),
        insert: format!(
            "INSERT INTO {comments} (id, post_id, n) VALUES ({}, {}, {})",
            ph(1),
            ph(2),
            ph(3)
        ),
        mv: format!(
            "UPDATE {comments} SET post_id = {} WHERE id = {}",
            ph(1),
            ph(2)
        ),
        mv_expr: format!(
            "UPDATE {comments} SET post_id = post_id % {POSTS} + 1 WHERE id = {}",
            ph(1)
        ),
        incr: format!("UPDATE {comments} SET n = n + 1 WHERE post_id = {}", ph(1)),
        del: format!("DELETE FROM {comments} WHERE id = {}", ph(1)),
        del_post: format!("DELETE FROM {comments} WHERE post_id = {}", ph(1)),
        rename: format!(
            "UPDATE {posts} SET title = {} WHERE id = {}",
            ph(1),
            ph(2)
        ),
        truncate: if truncate {
            format!("TRUNCATE TABLE {comments}")
        } else {
            format!("DELETE FROM {comments}")
        },
        posts,
        comments,
    }
}

/// Starts the change source of the model: nothing for triggers (polled),
/// the replication stream for `logical` (its handle is returned).
macro_rules! model_source {
    (triggers, $qc:expr, $s:expr) => {
        ()
    };
    (logical, $qc:expr, $s:expr) => {{
        let name = format!("larder_rlm_{}", std::process::id());
        let config = larder_query::LogicalConfig::new(
            LOGICAL_URL,
            &name,
            &name,
            [$s.comments.clone(), $s.posts.clone()],
        )
        .unwrap();
        WatchGuard($qc.watch_replication(config.clone()), config)
    }};
}

const LOGICAL_URL: &str = "postgres://postgres@127.0.0.1:25432/test";

/// Stops the stream and drops its slot, so the server keeps no WAL for a
/// finished test.
struct WatchGuard(tokio::task::JoinHandle<()>, larder_query::LogicalConfig);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.abort();
        let config = self.1.clone();
        // The walsender may hold the slot for a moment after the abort.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                for _ in 0..100 {
                    if larder_changes::logical::drop_slot(&config).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

macro_rules! setup {
    ($pool:expr, $dialect:expr, $s:expr, $bigint:expr) => {{
        let s: &Sql = $s;
        for ddl in [
            format!("DROP TABLE IF EXISTS {}", s.comments),
            format!("DROP TABLE IF EXISTS {}", s.posts),
            format!(
                "CREATE TABLE {} (id {b} PRIMARY KEY, title VARCHAR(40) NOT NULL)",
                s.posts,
                b = $bigint
            ),
            format!(
                "CREATE TABLE {} (id {b} PRIMARY KEY, post_id {b} NOT NULL, n {b} NOT NULL)",
                s.comments,
                b = $bigint
            ),
        ] {
            sqlx::raw_sql(&ddl).execute(&$pool).await.unwrap();
        }
        for p in 1..=POSTS {
            sqlx::raw_sql(&format!(
                "INSERT INTO {} (id, title) VALUES ({p}, 'p{p}')",
                s.posts
            ))
            .execute(&$pool)
            .await
            .unwrap();
        }
        larder_query::install(&$pool, $dialect, &[s.posts.as_str(), s.comments.as_str()])
            .await
            .unwrap();
    }};
}

macro_rules! direct {
    ($pool:expr, $sql:expr, $($p:expr),*) => {{
        let q = sqlx::query_as::<_, R>($sql);
        $(let q = q.bind($p as i64);)*
        q.fetch_all(&$pool).await.unwrap()
    }};
}

/// Scenario 1: what stays cached and what does not.
macro_rules! other_rows_stay_cached {
    ($pool:expr, $dialect:expr, $s:expr) => {{
        let s: &Sql = $s;
        let pool = $pool;
        let qc = QueryCache::new(pool.clone(), mem(), $dialect, Ttl::secs(600));
        let p = |v: i64| Param::from(v);
        for (id, post) in [(1, 1), (2, 2), (3, 2), (4, 3)] {
            qc.execute(&s.insert, &[p(id), p(post), p(0)])
                .await
                .unwrap();
        }
        let read = |post: i64| {
            let qc = qc.clone();
            let q = s.by_post.clone();
            async move { qc.fetch_all::<R>(&q, &[Param::from(post)]).await.unwrap() }
        };
        assert_eq!(read(2).await.len(), 2);
        let join2: Vec<R> = qc.fetch_all(&s.join, &[p(2)]).await.unwrap();
        assert_eq!(join2.len(), 2);
        let in23: Vec<R> = qc.fetch_all(&s.in_list, &[p(2), p(3)]).await.unwrap();
        assert_eq!(in23.len(), 3);
        // Behind the cache's back, so a fresh read would show n = 9 on
        // post 2's comments: a read that still says 0 came from the cache.
        sqlx::query(&format!(
            "UPDATE {} SET n = 9 WHERE post_id = 2",
            s.comments
        ))
        .execute(&pool)
        .await
        .unwrap();
        let before = qc.stats();
        // A comment on post 1 and on post 5: post 2's reads stay cached.
        qc.execute(&s.insert, &[p(10), p(1), p(0)]).await.unwrap();
        qc.execute(&s.insert, &[p(11), p(5), p(0)]).await.unwrap();
        assert!(
            read(2).await.iter().all(|r| r.n == 0),
            "post 2 was invalidated by a write to post 1"
        );
        let join2: Vec<R> = qc.fetch_all(&s.join, &[p(2)]).await.unwrap();
        assert!(
            join2.iter().all(|r| r.n == 0),
            "the join of post 2 was invalidated"
        );
        let in23: Vec<R> = qc.fetch_all(&s.in_list, &[p(2), p(3)]).await.unwrap();
        assert!(in23.iter().all(|r| r.n == 0), "IN (2, 3) was invalidated");
        let after = qc.stats();
        assert_eq!(after.row_level_writes - before.row_level_writes, 2);
        assert_eq!(
            after.computed, before.computed,
            "every read above was a hit"
        );
        // Post 1's read is fresh (it was never cached with the old rows).
        assert_eq!(read(1).await.len(), 2);
        // Moving comment 4 from post 3 to post 2 invalidates both.
        qc.execute(&s.mv, &[p(2), p(4)]).await.unwrap();
        let two = read(2).await;
        assert_eq!(two.len(), 3, "post 2 did not see the comment moved in");
        assert!(
            two.iter().filter(|r| r.id != 4).all(|r| r.n == 9),
            "fresh rows"
        );
        let in23: Vec<R> = qc.fetch_all(&s.in_list, &[p(2), p(3)]).await.unwrap();
        assert_eq!(in23.len(), 3);
        assert!(
            read(3).await.is_empty(),
            "post 3 still shows the comment moved out"
        );
        // A rename of post 2 invalidates the join (it reads posts by id).
        let join2: Vec<R> = qc.fetch_all(&s.join, &[p(2)]).await.unwrap();
        assert_eq!(join2.len(), 3);
        qc.execute(&s.rename, &[Param::from("hidden"), p(2)])
            .await
            .unwrap();
        let join2: Vec<R> = qc.fetch_all(&s.join, &[p(2)]).await.unwrap();
        assert!(join2.is_empty(), "the join missed a rename of its post");
        qc.execute(&s.rename, &[Param::from("p2"), p(2)])
            .await
            .unwrap();

        // Table generations: every write invalidates every read.
        let coarse =
            QueryCache::new(pool.clone(), mem(), $dialect, Ttl::secs(600)).row_level(false);
        let q = s.by_post.clone();
        let first: Vec<R> = coarse.fetch_all(&q, &[p(2)]).await.unwrap();
        sqlx::query(&format!(
            "UPDATE {} SET n = 7 WHERE post_id = 2",
            s.comments
        ))
        .execute(&pool)
        .await
        .unwrap();
        coarse
            .execute(&s.insert, &[p(12), p(1), p(0)])
            .await
            .unwrap();
        let second: Vec<R> = coarse.fetch_all(&q, &[p(2)]).await.unwrap();
        assert_eq!(first.len(), second.len());
        assert!(
            second.iter().all(|r| r.n == 7),
            "table-level: a write to post 1 invalidates post 2"
        );
        assert_eq!(coarse.stats().table_level_writes, 1);
        sqlx::raw_sql(&format!("DELETE FROM {}", s.comments))
            .execute(&pool)
            .await
            .unwrap();
    }};
}

/// Scenario 2: the seeded model.
/// How outside writes reach the cache in the model: one poll of the
/// trigger counts, or (PostgreSQL) the logical replication stream, drained.
macro_rules! outside_sync {
    (triggers, $qc:expr, $seen:expr, $pool:expr, $s:expr) => {
        $qc.sync_outside_writes(&mut $seen).await.unwrap();
    };
    (logical, $qc:expr, $seen:expr, $pool:expr, $s:expr) => {
        let _ = &mut $seen; // the trigger counts are not used here
        drain(&$qc, &$pool, $s).await;
    };
}

/// Waits until the replication stream has handled every change committed
/// so far: changes arrive in commit order, so once a new write to a
/// sentinel post has invalidated its cached read, all earlier ones have
/// been handled.
async fn drain(qc: &QueryCache<sqlx::Postgres>, pool: &sqlx::PgPool, s: &Sql) {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_000_000);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let sentinel = 1_000_000i64;
    let before: Vec<R> = qc
        .fetch_all(&s.by_post, &[Param::from(sentinel)])
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO {} (id, post_id, n) VALUES ($1, $2, 0)",
        s.comments
    ))
    .bind(id)
    .bind(sentinel)
    .execute(pool)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    loop {
        let now: Vec<R> = qc
            .fetch_all(&s.by_post, &[Param::from(sentinel)])
            .await
            .unwrap();
        if now.iter().any(|r| r.id == id) {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the replication stream did not deliver within 20 s (had {} rows)",
            before.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

macro_rules! model {
    ($pool:expr, $dialect:expr, $s:expr) => {
        model!($pool, $dialect, $s, triggers)
    };
    ($pool:expr, $dialect:expr, $s:expr, $source:ident) => {{
        let s: &Sql = $s;
        let pool = $pool;
        let qc = QueryCache::new(pool.clone(), mem(), $dialect, Ttl::secs(600));
        let mut seen = OutsideWrites::default();
        let _watch = model_source!($source, qc, s);
        outside_sync!($source, qc, seen, pool, s);
        let p = |v: i64| Param::from(v);
        let seed: u64 = std::env::var("MODEL_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(7);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut next_id = 100i64;
        for step in 0..250 {
            let post = rng.i64(1..=POSTS);
            let id = rng.i64(100..next_id.max(101) + 2);
            let what = rng.u8(0..20);
            match what {
                0..=4 => {
                    next_id += 1;
                    qc.execute(&s.insert, &[p(next_id), p(post), p(rng.i64(0..5))])
                        .await
                        .unwrap();
                }
                5..=7 => {
                    qc.execute(&s.mv, &[p(post), p(id)]).await.unwrap();
                }
                8 => {
                    qc.execute(&s.mv_expr, &[p(id)]).await.unwrap();
                }
                9 | 10 => {
                    qc.execute(&s.incr, &[p(post)]).await.unwrap();
                }
                11 => {
                    qc.execute(&s.del, &[p(id)]).await.unwrap();
                }
                12 => {
                    qc.execute(&s.del_post, &[p(post)]).await.unwrap();
                }
                13..=15 => {
                    let mut tx = qc.begin().await.unwrap();
                    for _ in 0..rng.usize(1..4) {
                        let post = rng.i64(1..=POSTS);
                        match rng.u8(0..3) {
                            0 => {
                                next_id += 1;
                                tx.execute(&s.insert, &[p(next_id), p(post), p(1)])
                                    .await
                                    .unwrap();
                            }
                            1 => {
                                tx.execute(&s.mv, &[p(post), p(id)]).await.unwrap();
                            }
                            _ => {
                                tx.execute(&s.incr, &[p(post)]).await.unwrap();
                            }
                        }
                        // The transaction sees its own writes.
                        let inside: Vec<R> = tx.fetch_all(&s.by_post, &[p(post)]).await.unwrap();
                        let ids: Vec<i64> = inside.iter().map(|r| r.id).collect();
                        let mut sorted = ids.clone();
                        sorted.sort_unstable();
                        assert_eq!(ids, sorted);
                    }
                    if rng.bool() {
                        tx.commit().await.unwrap();
                    } else {
                        tx.rollback().await.unwrap();
                    }
                }
                16 | 17 => {
                    // Outside the application, then one poll (the bound).
                    sqlx::query(&s.mv)
                        .bind(post)
                        .bind(id)
                        .execute(&pool)
                        .await
                        .unwrap();
                    outside_sync!($source, qc, seen, pool, s);
                }
                18 => {
                    let title = if rng.bool() { "hidden" } else { "shown" };
                    qc.execute(&s.rename, &[Param::from(title), p(post)])
                        .await
                        .unwrap();
                }
                _ => {
                    if rng.u8(0..4) == 0 {
                        qc.execute(&s.truncate, &[]).await.unwrap();
                    }
                }
            }
            for post in 1..=POSTS {
                let cached: Vec<R> = qc.fetch_all(&s.by_post, &[p(post)]).await.unwrap();
                assert_eq!(
                    cached,
                    direct!(pool, &s.by_post, post),
                    "step {step} ({what}): post {post}"
                );
                let cached: Vec<R> = qc.fetch_all(&s.join, &[p(post)]).await.unwrap();
                assert_eq!(
                    cached,
                    direct!(pool, &s.join, post),
                    "step {step} ({what}): join of {post}"
                );
                let other = post % POSTS + 1;
                let cached: Vec<R> = qc
                    .fetch_all(&s.in_list, &[p(post), p(other)])
                    .await
                    .unwrap();
                assert_eq!(
                    cached,
                    direct!(pool, &s.in_list, post, other),
                    "step {step} ({what}): IN ({post}, {other})"
                );
            }
            let cached: Vec<R> = qc.fetch_all(&s.literal, &[]).await.unwrap();
            assert_eq!(
                cached,
                direct!(pool, &s.literal,),
                "step {step} ({what}): post_id = 3"
            );
            let cached: Vec<R> = qc.fetch_all(&s.count, &[]).await.unwrap();
            assert_eq!(
                cached,
                direct!(pool, &s.count,),
                "step {step} ({what}): count"
            );
        }
        let stats = qc.stats();
        assert!(stats.row_level_writes > 50, "{stats:?}");
        assert!(
            stats.hits() > stats.cached_reads / 4,
            "row-level reads mostly hit: {stats:?}"
        );
        for t in [&s.comments, &s.posts] {
            sqlx::raw_sql(&format!("DROP TABLE {t}"))
                .execute(&pool)
                .await
                .unwrap();
        }
    }};
}

async fn sqlite_pool(tag: &str) -> sqlx::SqlitePool {
    let dir = std::env::temp_dir().join(format!("larder-rl-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect(&format!("sqlite://{}/r.db?mode=rwc", dir.display()))
        .await
        .unwrap()
}

async fn pg_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432")
}

async fn my_pool() -> sqlx::MySqlPool {
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 3306")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_other_rows_stay_cached() {
    let pool = sqlite_pool("a").await;
    let s = sql("la", false, "INTEGER", false);
    setup!(pool, SqlDialect::Sqlite, &s, "INTEGER");
    other_rows_stay_cached!(pool.clone(), SqlDialect::Sqlite, &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_other_rows_stay_cached() {
    let pool = pg_pool().await;
    let s = sql("pa", true, "BIGINT", true);
    setup!(pool, SqlDialect::Postgres, &s, "BIGINT");
    other_rows_stay_cached!(pool.clone(), SqlDialect::Postgres, &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_other_rows_stay_cached() {
    let pool = my_pool().await;
    let s = sql("ma", false, "SIGNED", true);
    setup!(pool, SqlDialect::MySql, &s, "BIGINT");
    other_rows_stay_cached!(pool.clone(), SqlDialect::MySql, &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_row_level_model() {
    let pool = sqlite_pool("m").await;
    let s = sql("lm", false, "INTEGER", false);
    setup!(pool, SqlDialect::Sqlite, &s, "INTEGER");
    model!(pool.clone(), SqlDialect::Sqlite, &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_level_model() {
    let pool = pg_pool().await;
    let s = sql("pm", true, "BIGINT", true);
    setup!(pool, SqlDialect::Postgres, &s, "BIGINT");
    model!(pool.clone(), SqlDialect::Postgres, &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_row_level_model() {
    let pool = my_pool().await;
    let s = sql("mm", false, "SIGNED", true);
    setup!(pool, SqlDialect::MySql, &s, "BIGINT");
    model!(pool.clone(), SqlDialect::MySql, &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_logical_row_level_model() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(LOGICAL_URL)
        .await
        .expect("the logical-replication PostgreSQL of scripts/services on 127.0.0.1:25432");
    let s = sql("pl", true, "BIGINT", true);
    setup!(pool, SqlDialect::Postgres, &s, "BIGINT");
    model!(pool.clone(), SqlDialect::Postgres, &s, logical);
}
