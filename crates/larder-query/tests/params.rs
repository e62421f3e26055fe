//! Parameters beyond the plain SQL types (features `json`, `uuid`,
//! `chrono`, `decimal`) bind on SQLite, PostgreSQL and MariaDB (natively,
//! decimals as text on SQLite), and two reads that differ only in such a
//! parameter never share a cached result.

use larder_core::{Cache, Ttl};
use larder_query::{Param, QueryCache, SqlDialect};
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Id {
    id: i64,
}

impl<'r, R> sqlx::FromRow<'r, R> for Id
where
    R: Row,
    &'r str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Id {
            id: row.try_get("id")?,
        })
    }
}

macro_rules! scenario {
    ($pool:expr, $dialect:expr, $ddl:expr, $ph:expr) => {{
        let pool = $pool;
        let ph = |n: usize| if $ph { format!("${n}") } else { "?".to_owned() };
        let t = format!("qc_params_{}", std::process::id());
        sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {t}"))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::raw_sql(&format!("CREATE TABLE {t} ({})", $ddl))
            .execute(&pool)
            .await
            .unwrap();
        let store = Cache::builder(larder_mem::MemBackend::default()).build().unwrap();
        let qc = QueryCache::new(pool.clone(), store, $dialect, Ttl::secs(600));
        let (u1, u2) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        use chrono::TimeZone;
        let t1 = chrono::Utc.with_ymd_and_hms(2026, 12, 1, 8, 30, 0).unwrap();
        let t2 = t1 + chrono::Duration::microseconds(1);
        let (d1, d2) = (t1.date_naive(), t1.date_naive().succ_opt().unwrap());
        // p2 has 20 significant digits: a float would lose the last ones.
        let p1 = rust_decimal::Decimal::new(150, 2);
        let p2: rust_decimal::Decimal = "1234567890123456.7891".parse().unwrap();
        let insert = format!(
            "INSERT INTO {t} (id, ext, at, day, doc, price) VALUES ({}, {}, {}, {}, {}, {})",
            ph(1), ph(2), ph(3), ph(4), ph(5), ph(6)
        );
        for (id, u, at, day, price) in [(1i64, u1, t1, d1, p1), (2, u2, t2, d2, p2)] {
            let doc = serde_json::json!({"id": id, "tags": ["a", "b"]});
            qc.execute(
                &insert,
                &[Param::from(id), Param::from(u), Param::from(at), Param::from(day), Param::from(doc), Param::from(price)],
            )
            .await
            .unwrap();
        }
        for (col, a, b) in [
            ("ext", Param::from(u1), Param::from(u2)),
            ("at", Param::from(t1), Param::from(t2)),
            ("day", Param::from(d1), Param::from(d2)),
            ("price", Param::from(p1), Param::from(p2)),
        ] {
            let read = format!("SELECT id FROM {t} WHERE {col} = {} ORDER BY id", ph(1));
            // Twice each, alternating: the second round is served cached,
            // and a key shared by the two values would answer wrongly.
            for _ in 0..2 {
                let one: Vec<Id> = qc.fetch_all(&read, std::slice::from_ref(&a)).await.unwrap();
                let two: Vec<Id> = qc.fetch_all(&read, std::slice::from_ref(&b)).await.unwrap();
                assert_eq!((one, two), (vec![Id { id: 1 }], vec![Id { id: 2 }]), "{col}");
            }
        }
        // A write changing such a column invalidates the reads of it.
        qc.execute(
            &format!("UPDATE {t} SET at = {} WHERE id = {}", ph(1), ph(2)),
            &[Param::from(t2), Param::from(1i64)],
        )
        .await
        .unwrap();
        let read = format!("SELECT id FROM {t} WHERE at = {} ORDER BY id", ph(1));
        let both: Vec<Id> = qc.fetch_all(&read, &[Param::from(t2)]).await.unwrap();
        assert_eq!(both, vec![Id { id: 1 }, Id { id: 2 }]);
        // The JSON document went in as JSON.
        let doc: String = sqlx::query(&format!("SELECT CAST(doc AS {}) FROM {t} WHERE id = 2", dialect_text($dialect)))
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(doc["tags"][1], "b");
        // The decimal went in exactly, and its scale is part of the key:
        // 1.50 and 1.5 answer `CAST(? AS TEXT)` differently, twice each.
        let price: String = sqlx::query(&format!("SELECT CAST(price AS {}) FROM {t} WHERE id = 2", dialect_text($dialect)))
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(price, "1234567890123456.7891");
        let echo = format!("SELECT CAST({} AS {}) AS v", ph(1), dialect_text($dialect));
        for _ in 0..2 {
            for (d, text) in [(rust_decimal::Decimal::new(150, 2), "1.50"), (rust_decimal::Decimal::new(15, 1), "1.5")] {
                let got: Vec<(String,)> = qc.fetch_all(&echo, &[Param::from(d)]).await.unwrap();
                assert_eq!(got, vec![(text.to_owned(),)]);
            }
        }
        sqlx::raw_sql(&format!("DROP TABLE {t}")).execute(&pool).await.unwrap();
    }};
}

fn dialect_text(d: SqlDialect) -> &'static str {
    match d {
        SqlDialect::MySql => "CHAR",
        _ => "TEXT",
    }
}

#[tokio::test]
async fn sqlite_binds_json_uuid_time_and_decimals() {
    let dir = std::env::temp_dir().join(format!("larder-params-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect(&format!("sqlite://{}/p.db?mode=rwc", dir.display()))
        .await
        .unwrap();
    scenario!(
        pool.clone(),
        SqlDialect::Sqlite,
        "id INTEGER PRIMARY KEY, ext BLOB NOT NULL, at TEXT NOT NULL, day TEXT NOT NULL, doc TEXT NOT NULL, price TEXT NOT NULL",
        false
    );
    pool.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_binds_json_uuid_time_and_decimals() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    scenario!(
        pool,
        SqlDialect::Postgres,
        "id BIGINT PRIMARY KEY, ext UUID NOT NULL, at TIMESTAMPTZ NOT NULL, day DATE NOT NULL, doc JSONB NOT NULL, price NUMERIC(24, 4) NOT NULL",
        true
    );
}

#[tokio::test]
async fn mariadb_binds_json_uuid_time_and_decimals() {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 3306");
    scenario!(
        pool,
        SqlDialect::MySql,
        "id BIGINT PRIMARY KEY, ext BINARY(16) NOT NULL, at TIMESTAMP(6) NOT NULL, day DATE NOT NULL, doc JSON NOT NULL, price DECIMAL(24, 4) NOT NULL",
        false
    );
}
