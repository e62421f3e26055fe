//! The whole conformance suite on the three databases, against the real
//! servers of the machine (PostgreSQL 5432 and MariaDB 3306, database
//! `test`) and a SQLite file. A missing server fails loudly.

use std::sync::Arc;

use larder_core::{Backend, CacheUrl};
async fn connect(url: &str) -> Arc<dyn Backend> {
    let mut u = CacheUrl::parse(url).unwrap();
    let b = larder_sql::open(&mut u)
        .await
        .unwrap_or_else(|e| panic!("cannot use {url}: {e}"));
    u.finish().unwrap();
    b
}

/// A database file per case: SQLite has one writer per file, and 95 test
/// processes sharing one file measure lock waits, not the backend.
fn sqlite_url() -> String {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "sqlite://{}/sql-conformance-{}-{}.db",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

pub fn postgres_url() -> String {
    std::env::var("LARDER_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?max_connections=2".into())
}

pub fn mysql_url() -> String {
    std::env::var("LARDER_TEST_MYSQL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test?max_connections=2".into())
}

mod sqlite {
    use super::*;
    larder_testkit::conformance_suite!(|| async { connect(&sqlite_url()).await });
}

mod sqlite_inline {
    use super::*;
    larder_testkit::conformance_suite!(|| async {
        connect(&format!("{}?io=inline", sqlite_url())).await
    });
}

mod postgres {
    use super::*;
    larder_testkit::conformance_suite!(|| async { connect(&postgres_url()).await });
}

mod mysql {
    use super::*;
    larder_testkit::conformance_suite!(|| async { connect(&mysql_url()).await });
}

/// SQLite URLs go to the in-process backend; asking the sqlx one for them is
/// a clear configuration error, not a second, untested SQLite path.
#[tokio::test]
async fn sqlx_backend_refuses_sqlite_and_open_routes_it() {
    let dir = env!("CARGO_TARGET_TMPDIR");
    let e = larder_sql::SqlBackend::connect(&format!("sqlite://{dir}/x.db"), Default::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("SqliteBackend"), "{e}");
    let mut u = CacheUrl::parse(&format!("sqlite://{dir}/routed.db")).unwrap();
    assert_eq!(larder_sql::open(&mut u).await.unwrap().name(), "sqlite");
}
