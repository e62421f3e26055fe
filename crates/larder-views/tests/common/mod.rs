//! Shared test setup: a fresh database per test (PostgreSQL and MariaDB on
//! the machine's servers, SQLite in a temporary file), a small forum schema
//! and the post-page view over it.
#![allow(dead_code)]

use std::sync::Arc;

use larder_views::{DocStore, Source, SqlView, ViewDef, Views, WorkerConfig};
use sqlx::Row;

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const MY_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
    MySql,
}

pub const ALL: [Db; 3] = [Db::Sqlite, Db::Postgres, Db::MySql];

/// A database of its own for one test; the temp dir (SQLite) lives as long
/// as this.
pub struct TestDb {
    pub url: String,
    pub dir: tempfile::TempDir,
}

fn tag() -> String {
    format!("lv_{}_{}", std::process::id(), fastrand_u64())
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() % 1_000_000_000
}

/// Drops databases left by test processes that are gone.
async fn drop_leftovers(admin: &sqlx::AnyPool, list: &str, quote: char) {
    let names: Vec<String> = sqlx::query(list)
        .fetch_all(admin)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.try_get::<String, _>(0)
                .or_else(|_| {
                    r.try_get::<Vec<u8>, _>(0)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                })
                .unwrap()
        })
        .collect();
    for name in names {
        let pid = name.split('_').nth(1).unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {quote}{name}{quote}"))
                .execute(admin)
                .await;
        }
    }
}

pub async fn fresh_db(db: Db) -> TestDb {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = match db {
        Db::Sqlite => format!("sqlite://{}?mode=rwc", dir.path().join("src.db").display()),
        Db::Postgres => {
            let name = tag();
            let admin = sqlx::AnyPool::connect(PG_ADMIN)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 (see scripts/services)");
            drop_leftovers(
                &admin,
                "SELECT datname::text FROM pg_database WHERE datname LIKE 'lv\\_%'",
                '"',
            )
            .await;
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .unwrap();
            format!("postgres://postgres@127.0.0.1:5432/{name}")
        }
        Db::MySql => {
            let name = tag();
            let admin = sqlx::AnyPool::connect(MY_ADMIN)
                .await
                .expect("MariaDB on 127.0.0.1:3306 (see scripts/services)");
            drop_leftovers(&admin, "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'lv\\_%'", '`').await;
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .unwrap();
            format!("mysql://root@127.0.0.1:3306/{name}")
        }
    };
    TestDb { url, dir }
}

/// users, posts, comments.
pub async fn create_forum(source: &Source) {
    let text = if source.dialect() == larder_views::Dialect::MySql {
        "VARCHAR(200)"
    } else {
        "TEXT"
    };
    for ddl in [
        format!("CREATE TABLE users (id BIGINT PRIMARY KEY, name {text} NOT NULL)"),
        format!(
            "CREATE TABLE posts (id BIGINT PRIMARY KEY, author_id BIGINT NOT NULL, title {text} NOT NULL)"
        ),
        "CREATE INDEX posts_author ON posts (author_id)".to_owned(),
        "CREATE TABLE comments (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL, body TEXT NOT NULL)"
            .to_owned(),
        "CREATE INDEX comments_post ON comments (post_id)".to_owned(),
    ] {
        sqlx::query(&ddl).execute(source.pool()).await.unwrap();
    }
}

pub const POST_PAGE_SQL: &str = "SELECT p.id, p.title, u.name AS author, \
     (SELECT COUNT(*) FROM comments c WHERE c.post_id = p.id) AS comments \
     FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1";

/// A post page: its title, its author's name and its comment count: two
/// tables besides its own, one reached through a lookup.
pub fn post_page() -> ViewDef {
    SqlView::new(POST_PAGE_SQL, "SELECT id FROM posts")
        .depends_on("posts", "id")
        .depends_on("comments", "post_id")
        .depends_via("users", "id", "SELECT id FROM posts WHERE author_id = $1")
        .named("post_page")
}

pub async fn views_on(url: &str, store: Arc<dyn DocStore>) -> Views {
    let source = Source::connect(url, 8).await.unwrap();
    Views::builder(source, store)
        .view(post_page())
        .build()
        .unwrap()
}

pub fn redb(db: &TestDb) -> Arc<dyn DocStore> {
    Arc::new(larder_views::RedbStore::open(db.dir.path().join("views.redb")).unwrap())
}

pub fn fast_worker() -> WorkerConfig {
    WorkerConfig::default()
        .lease(std::time::Duration::from_secs(2))
        .backoff(
            std::time::Duration::from_millis(20),
            std::time::Duration::from_millis(100),
        )
        .poll_interval(std::time::Duration::from_millis(20))
}

pub async fn exec(views: &Views, sql: &str) {
    let sql = views.source().dialect().adapt(sql);
    sqlx::query(&sql)
        .execute(views.source().pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub async fn count(views: &Views, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(views.source().pool())
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

/// Drains the outbox, then requires the store to equal a full
/// recomputation.
pub async fn assert_no_drift(views: &Views) {
    views.worker(fast_worker()).run_until_idle().await.unwrap();
    let status = views.status().await.unwrap();
    assert_eq!(status.backlog, 0, "{status:?}");
    assert_eq!(status.dead_letters, 0, "{status:?}");
    for name in views.names() {
        let r = views.verify(&name, None, None).await.unwrap();
        assert_eq!(r.drifted, 0, "drift in {name}: {:?}", r.drift);
        assert!(r.checked > 0);
    }
}
