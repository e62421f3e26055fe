//! QueryCache on SQLite, PostgreSQL and MariaDB: results are cached, an
//! in-app write invalidates them at once, a write from outside is not seen
//! (until the trigger-based invalidation of a later step).

use larder_core::{Cache, Ttl};
use larder_query::{Param, QueryCache, SqlDialect};
use serde::{Deserialize, Serialize};
use sqlx::{Database, Row};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PostRow {
    id: i64,
    title: String,
    comments: i64,
}

impl<'r, R> sqlx::FromRow<'r, R> for PostRow
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(PostRow {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            comments: row.try_get("comments")?,
        })
    }
}

fn mem_cache(prefix: &str) -> Cache {
    Cache::builder(larder_mem::MemBackend::default())
        .key_prefix(prefix)
        .build()
        .unwrap()
}

macro_rules! scenario {
    ($qc:expr, $pool:expr, $t:expr) => {{
        let qc = $qc;
        let (post, comment) = ($t.0.as_str(), $t.1.as_str());
        let list = format!(
            "SELECT p.id, p.title, (SELECT count(*) FROM {comment} c WHERE c.post_id = p.id) AS comments \
             FROM {post} p ORDER BY p.id"
        );
        qc.execute(&format!("INSERT INTO {post} (id, title) VALUES (1, 'first'), (2, 'second')"), &[])
            .await
            .unwrap();
        let rows: Vec<PostRow> = qc.fetch_all(&list, &[]).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.comments).collect::<Vec<_>>(), [0, 0]);
        // A write behind the wrapper's back is not seen: the result is cached.
        sqlx::query(&format!("UPDATE {post} SET title = 'renamed' WHERE id = 1"))
            .execute($pool)
            .await
            .unwrap();
        let rows: Vec<PostRow> = qc.fetch_all(&list, &[]).await.unwrap();
        assert_eq!(rows[0].title, "first", "the second read came from the cache");
        // A write through the wrapper to a table the query reads (in a
        // subquery) invalidates it at once.
        let n = qc
            .execute(&format!("INSERT INTO {comment} (id, post_id) VALUES (10, 1), (11, 1)"), &[])
            .await
            .unwrap();
        assert_eq!(n, 2);
        let rows: Vec<PostRow> = qc.fetch_all(&list, &[]).await.unwrap();
        assert_eq!((rows[0].title.as_str(), rows[0].comments), ("renamed", 2));
        // Parameters are part of the key.
        let by_id = format!(
            "SELECT id, title, (SELECT count(*) FROM {comment} WHERE post_id = -1) AS comments FROM {post} WHERE id = $1"
        );
        let by_id = if matches!(qc_dialect(&qc), SqlDialect::MySql) { by_id.replace("$1", "?") } else { by_id };
        let one: PostRow = qc.fetch_one(&by_id, &[Param::from(2i64)]).await.unwrap();
        let other: PostRow = qc.fetch_one(&by_id, &[Param::from(1i64)]).await.unwrap();
        assert_eq!((one.title.as_str(), other.title.as_str()), ("second", "renamed"));
        let none: Option<PostRow> = qc.fetch_optional(&by_id, &[Param::from(99i64)]).await.unwrap();
        assert_eq!(none, None);
    }};
}

macro_rules! tx_scenario {
    ($qc:expr, $t:expr) => {{
        let qc = $qc;
        let (post, comment) = ($t.0.as_str(), $t.1.as_str());
        let list = format!(
            "SELECT p.id, p.title, (SELECT count(*) FROM {comment} c WHERE c.post_id = p.id) AS comments \
             FROM {post} p ORDER BY p.id"
        );
        let counts = |rows: Vec<PostRow>| rows.iter().map(|r| r.comments).collect::<Vec<_>>();
        let before = counts(qc.fetch_all(&list, &[]).await.unwrap());
        let mut tx = qc.begin().await.unwrap();
        tx.execute(&format!("INSERT INTO {comment} (id, post_id) VALUES (20, 2)"), &[])
            .await
            .unwrap();
        let inside = counts(tx.fetch_all(&list, &[]).await.unwrap());
        assert_eq!(inside[1], before[1] + 1, "the transaction reads its own write from the database");
        assert_eq!(counts(qc.fetch_all(&list, &[]).await.unwrap()), before, "not visible before commit");
        tx.commit().await.unwrap();
        let after = counts(qc.fetch_all(&list, &[]).await.unwrap());
        assert_eq!(after[1], before[1] + 1, "stale read after commit");
        let mut tx = qc.begin().await.unwrap();
        tx.execute(&format!("INSERT INTO {comment} (id, post_id) VALUES (21, 2)"), &[])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(counts(qc.fetch_all(&list, &[]).await.unwrap()), after, "a rollback changed the result");
    }};
}

fn qc_dialect<DB: Database>(_: &QueryCache<DB>) -> SqlDialect {
    match DB::NAME {
        "MySQL" => SqlDialect::MySql,
        "SQLite" => SqlDialect::Sqlite,
        _ => SqlDialect::Postgres,
    }
}

fn tables(tag: &str) -> (String, String) {
    let id = format!("{}_{}", std::process::id(), tag);
    (format!("qc_post_{id}"), format!("qc_comment_{id}"))
}

#[tokio::test]
async fn sqlite() {
    let dir = std::env::temp_dir().join(format!("larder-qc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect(&format!("sqlite://{}/qc.db?mode=rwc", dir.display()))
        .await
        .unwrap();
    let t = tables("sqlite");
    for ddl in [
        format!(
            "CREATE TABLE {} (id INTEGER PRIMARY KEY, title TEXT NOT NULL)",
            t.0
        ),
        format!(
            "CREATE TABLE {} (id INTEGER PRIMARY KEY, post_id INTEGER NOT NULL)",
            t.1
        ),
    ] {
        sqlx::query(&ddl).execute(&pool).await.unwrap();
    }
    let qc = QueryCache::new(
        pool.clone(),
        mem_cache("qc"),
        SqlDialect::Sqlite,
        Ttl::secs(60),
    );
    scenario!(qc.clone(), &pool, t);
    tx_scenario!(qc, t);
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    let t = tables("pg");
    for ddl in [
        format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, title TEXT NOT NULL)",
            t.0
        ),
        format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL)",
            t.1
        ),
    ] {
        sqlx::query(&ddl).execute(&pool).await.unwrap();
    }
    let qc = QueryCache::new(
        pool.clone(),
        mem_cache("qc"),
        SqlDialect::Postgres,
        Ttl::secs(60),
    );
    scenario!(qc.clone(), &pool, t);
    tx_scenario!(qc, t);
    for tbl in [&t.0, &t.1] {
        sqlx::query(&format!("DROP TABLE {tbl}"))
            .execute(&pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn mariadb() {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 3306");
    let t = tables("my");
    for ddl in [
        format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, title VARCHAR(100) NOT NULL)",
            t.0
        ),
        format!(
            "CREATE TABLE {} (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL)",
            t.1
        ),
    ] {
        sqlx::query(&ddl).execute(&pool).await.unwrap();
    }
    let qc = QueryCache::new(
        pool.clone(),
        mem_cache("qc"),
        SqlDialect::MySql,
        Ttl::secs(60),
    );
    scenario!(qc.clone(), &pool, t);
    tx_scenario!(qc, t);
    for tbl in [&t.0, &t.1] {
        sqlx::query(&format!("DROP TABLE {tbl}"))
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// With the cache store dead, queries go to the database and still succeed.
#[tokio::test]
async fn a_dead_cache_store_is_a_miss_not_an_error() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    // Nothing listens on port 1: every cache call fails.
    let dead = larder_memcached::MemcachedBackend::new(larder_memcached::MemcachedConfig::new([
        "127.0.0.1:1",
    ]))
    .unwrap();
    let qc = QueryCache::new(pool, Cache::new(dead), SqlDialect::Postgres, Ttl::secs(60));
    for _ in 0..3 {
        let rows: Vec<PostRow> = qc
            .fetch_all(
                "SELECT 1::bigint AS id, 'x' AS title, 0::bigint AS comments",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
    }
}

/// The database's refusals, an empty `fetch_one` and the cache are told
/// apart: a foreign-key violation is `QueryError::Database` with the
/// server's error inside, not a cache failure, and nothing is counted as
/// cached.
#[tokio::test]
async fn errors_say_who_failed() {
    use larder_query::QueryError;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    let (post, comment) = tables("errors");
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS {comment}; DROP TABLE IF EXISTS {post};
         CREATE TABLE {post} (id BIGINT PRIMARY KEY, title TEXT NOT NULL);
         CREATE TABLE {comment} (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL REFERENCES {post} (id));"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let qc = QueryCache::new(
        pool.clone(),
        mem_cache("qc_err"),
        SqlDialect::Postgres,
        Ttl::secs(60),
    );
    let insert = format!("INSERT INTO {comment} (id, post_id) VALUES ($1, $2)");
    let e = qc
        .execute(&insert, &[Param::from(1i64), Param::from(99i64)])
        .await
        .unwrap_err();
    assert!(
        e.database_error()
            .is_some_and(|d| d.is_foreign_key_violation()),
        "{e:?}"
    );
    // The same inside a transaction.
    let mut tx = qc.begin().await.unwrap();
    let e = tx
        .execute(&insert, &[Param::from(1i64), Param::from(99i64)])
        .await
        .unwrap_err();
    assert!(matches!(e, QueryError::Database(_)), "{e:?}");
    drop(tx);
    // No row: its own variant, not a cache key.
    let one = format!("SELECT id, title FROM {post} WHERE id = $1");
    let e = qc
        .fetch_one::<(i64, String)>(&one, &[Param::from(5i64)])
        .await
        .unwrap_err();
    assert!(matches!(e, QueryError::RowNotFound), "{e:?}");
    // A cached read the database refuses: its error, and nothing stored.
    let bad = format!("SELECT id / (id - id) AS boom FROM {post} WHERE id = $1");
    qc.execute(
        &format!("INSERT INTO {post} (id, title) VALUES (1, 'x')"),
        &[],
    )
    .await
    .unwrap();
    let before = qc.stats().computed;
    for _ in 0..2 {
        let e = qc
            .fetch_all::<(i64,)>(&bad, &[Param::from(1i64)])
            .await
            .unwrap_err();
        assert_eq!(
            e.database_error().and_then(|d| d.code()).as_deref(),
            Some("22012"),
            "division by zero expected, got {e:?}"
        );
    }
    assert_eq!(
        qc.stats().computed - before,
        2,
        "a failed read must not be cached"
    );
    sqlx::raw_sql(&format!("DROP TABLE {comment}; DROP TABLE {post};"))
        .execute(&pool)
        .await
        .unwrap();
}
