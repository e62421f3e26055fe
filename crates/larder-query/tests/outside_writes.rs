//! Writes from outside the application (a plain connection, as psql or
//! another service would) reach the query cache through the installed
//! triggers: by polling on every database, by NOTIFY on PostgreSQL.

use std::time::{Duration, Instant};

use larder_core::{Cache, Ttl};
use larder_query::{Param, QueryCache, SqlDialect};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Title {
    title: String,
}

impl<'r, R> sqlx::FromRow<'r, R> for Title
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Title {
            title: row.try_get("title")?,
        })
    }
}

fn cache() -> Cache {
    Cache::builder(larder_mem::MemBackend::default())
        .build()
        .unwrap()
}

macro_rules! outside_scenario {
    ($pool:expr, $dialect:expr, $table:expr, $watch:expr) => {{
        let pool = $pool;
        let table: &str = $table;
        larder_query::install(&pool, $dialect, &[table])
            .await
            .unwrap();
        sqlx::raw_sql(&format!(
            "INSERT INTO {table} (id, title) VALUES (1, 'before')"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let qc = QueryCache::new(pool.clone(), cache(), $dialect, Ttl::secs(600));
        let watcher = $watch(&qc);
        let list = format!("SELECT title FROM {table} WHERE id = 1");
        let wait_for = |want: &'static str| {
            let (qc, list) = (qc.clone(), list.clone());
            async move {
                let until = Instant::now() + Duration::from_secs(5);
                loop {
                    let t: Title = qc.fetch_one(&list, &[]).await.unwrap();
                    if t.title == want {
                        break;
                    }
                    assert!(
                        Instant::now() < until,
                        "an outside write was not seen: still {:?}",
                        t.title
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        wait_for("before").await;
        // psql, another service: a plain connection, no wrapper.
        sqlx::raw_sql(&format!("UPDATE {table} SET title = 'after' WHERE id = 1"))
            .execute(&pool)
            .await
            .unwrap();
        wait_for("after").await;
        watcher.abort();
        sqlx::raw_sql(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await
            .unwrap();
    }};
}

fn name(tag: &str) -> String {
    format!("qc_outside_{}_{tag}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_polling() {
    let dir = std::env::temp_dir().join(format!("larder-qco-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect(&format!("sqlite://{}/o.db?mode=rwc", dir.display()))
        .await
        .unwrap();
    let t = name("lite");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY, title TEXT)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    outside_scenario!(pool.clone(), SqlDialect::Sqlite, &t, |qc: &QueryCache<
        sqlx::Sqlite,
    >| qc
        .watch_outside_writes(Duration::from_millis(50)));
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_polling() {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 3306");
    let t = name("my");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, title VARCHAR(50))"
    ))
    .execute(&pool)
    .await
    .unwrap();
    outside_scenario!(pool, SqlDialect::MySql, &t, |qc: &QueryCache<
        sqlx::MySql,
    >| qc
        .watch_outside_writes(Duration::from_millis(50)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify() {
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("PostgreSQL on 5432");
    let t = name("pg");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, title TEXT)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    // No polling: the NOTIFY from the statement trigger (and one resync
    // when the listener connects).
    outside_scenario!(pool, SqlDialect::Postgres, &t, |qc: &QueryCache<
        sqlx::Postgres,
    >| qc
        .watch_postgres(url));
}

/// Installed without NOTIFY (`Wakeup::Poll`, `larder query install
/// --no-notify`): PostgreSQL's trigger functions send nothing, writes and
/// TRUNCATE are still logged, and a polling reader sees them. Installing
/// again with NOTIFY puts the notification back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_polled_triggers_send_no_notify() {
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("PostgreSQL on 5432");
    let t = name("pgpoll");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, title TEXT)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let sources = |pool: sqlx::PgPool, t: String| async move {
        // The row function, and the TRUNCATE function the table's
        // statement trigger calls.
        let row: String = sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE proname = $1")
            .bind(format!("larder_qc_{t}"))
            .fetch_one(&pool)
            .await
            .unwrap();
        let truncate: String = sqlx::query_scalar(
            "SELECT p.prosrc FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid \
             WHERE g.tgname = $1",
        )
        .bind(format!("larder_qc_truncate_{t}"))
        .fetch_one(&pool)
        .await
        .unwrap();
        (row, truncate)
    };
    larder_query::install_with(
        &pool,
        SqlDialect::Postgres,
        &[&t],
        larder_query::Wakeup::Poll,
    )
    .await
    .unwrap();
    let (row, truncate) = sources(pool.clone(), t.clone()).await;
    assert!(
        !row.contains("pg_notify") && row.contains("larder_changes"),
        "{row}"
    );
    assert!(
        !truncate.contains("pg_notify") && truncate.contains("larder_changes"),
        "{truncate}"
    );
    sqlx::raw_sql(&format!("INSERT INTO {t} (id, title) VALUES (1, 'before')"))
        .execute(&pool)
        .await
        .unwrap();
    let qc = QueryCache::new(pool.clone(), cache(), SqlDialect::Postgres, Ttl::secs(600));
    let watcher = qc.watch_outside_writes(Duration::from_millis(20));
    let list = format!("SELECT title FROM {t} WHERE id = 1");
    let titles = |qc: QueryCache<sqlx::Postgres>, list: String| async move {
        let got: Vec<Title> = qc.fetch_all(&list, &[]).await.unwrap();
        got.into_iter().map(|t| t.title).collect::<Vec<_>>()
    };
    let wait_for = |want: Vec<&'static str>| {
        let (qc, list) = (qc.clone(), list.clone());
        async move {
            let until = Instant::now() + Duration::from_secs(5);
            while titles(qc.clone(), list.clone()).await != want {
                assert!(Instant::now() < until, "not seen by polling: {want:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(vec!["before"]).await;
    sqlx::raw_sql(&format!("UPDATE {t} SET title = 'after' WHERE id = 1"))
        .execute(&pool)
        .await
        .unwrap();
    wait_for(vec!["after"]).await;
    sqlx::raw_sql(&format!("TRUNCATE {t}"))
        .execute(&pool)
        .await
        .unwrap();
    wait_for(vec![]).await;
    watcher.abort();
    larder_query::install(&pool, SqlDialect::Postgres, &[&t])
        .await
        .unwrap();
    let (row, truncate) = sources(pool.clone(), t.clone()).await;
    assert!(row.contains("pg_notify") && truncate.contains("pg_notify"));
    sqlx::raw_sql(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .unwrap();
}

/// Outside writes are row-level, and a transaction that commits after a
/// later one is never skipped: the change log's ids are handed out in
/// write order, not commit order, so a reader that moved past the later
/// one must still come back for it. Also: a rollback leaves nothing to
/// wait for.
macro_rules! late_commit_scenario {
    ($pool:expr, $dialect:expr, $table:expr) => {{
        let pool = $pool;
        let t: &str = $table;
        sqlx::raw_sql(&format!(
            "INSERT INTO {t} (id, post_id, title) VALUES (1, 1, 'a'), (2, 2, 'b')"
        ))
        .execute(&pool)
        .await
        .unwrap();
        larder_query::install(&pool, $dialect, &[t]).await.unwrap();
        let qc = QueryCache::new(pool.clone(), cache(), $dialect, Ttl::secs(600));
        let mut seen = larder_query::OutsideWrites::default();
        // The first read starts (and bumps everything); the next ones end
        // the start's wait for writes in flight (one more resync).
        for _ in 0..3 {
            qc.sync_outside_writes(&mut seen).await.unwrap();
        }
        let ph = if $dialect == SqlDialect::Postgres {
            "$1"
        } else {
            "?"
        };
        let of_post = format!("SELECT title FROM {t} WHERE post_id = {ph}");
        let read = |post: i64| {
            let (qc, sql) = (qc.clone(), of_post.clone());
            async move {
                let got: Title = qc.fetch_one(&sql, &[Param::Int(post)]).await.unwrap();
                got.title
            }
        };
        assert_eq!(read(1).await, "a");
        assert_eq!(read(2).await, "b");
        // A transaction writes post 1 and stays open...
        let mut slow = pool.begin().await.unwrap();
        sqlx::raw_sql(&format!("UPDATE {t} SET title = 'a2' WHERE id = 1"))
            .execute(&mut *slow)
            .await
            .unwrap();
        // ...while a later write to post 2 commits.
        sqlx::raw_sql(&format!("UPDATE {t} SET title = 'b2' WHERE id = 2"))
            .execute(&pool)
            .await
            .unwrap();
        let computed = qc.stats().computed;
        for _ in 0..3 {
            qc.sync_outside_writes(&mut seen).await.unwrap();
        }
        assert_eq!(read(2).await, "b2");
        assert_eq!(read(1).await, "a", "not committed yet");
        assert_eq!(
            qc.stats().computed,
            computed + 1,
            "the write to post 2 invalidated post 1's read too"
        );
        slow.commit().await.unwrap();
        qc.sync_outside_writes(&mut seen).await.unwrap();
        assert_eq!(read(1).await, "a2", "the late commit was skipped");
        // A rolled-back write, then a committed one: both are behind us.
        let mut undone = pool.begin().await.unwrap();
        sqlx::raw_sql(&format!("UPDATE {t} SET title = 'never' WHERE id = 1"))
            .execute(&mut *undone)
            .await
            .unwrap();
        undone.rollback().await.unwrap();
        sqlx::raw_sql(&format!("UPDATE {t} SET title = 'a3' WHERE id = 1"))
            .execute(&pool)
            .await
            .unwrap();
        qc.sync_outside_writes(&mut seen).await.unwrap();
        assert_eq!(read(1).await, "a3");
        sqlx::raw_sql(&format!("DROP TABLE {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_late_commits_are_never_skipped() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    let t = name("pglate");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, post_id BIGINT, title TEXT)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    late_commit_scenario!(pool, SqlDialect::Postgres, &t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_late_commits_are_never_skipped() {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 3306");
    let t = name("mylate");
    sqlx::raw_sql(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, post_id BIGINT, title VARCHAR(50))"
    ))
    .execute(&pool)
    .await
    .unwrap();
    late_commit_scenario!(pool, SqlDialect::MySql, &t);
}
