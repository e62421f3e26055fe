//! The source database: where the data, the outbox and the version ticket
//! live. One sqlx `Any` pool, so one code path serves PostgreSQL,
//! MySQL/MariaDB and SQLite; the few statements that differ are built per
//! [`Dialect`].

use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Arguments, Column, Row};

use crate::error::{Error, Result};

/// The SQL dialect of the source database (one type shared with
/// larder-query and larder-sql).
pub use larder_changes::Dialect;

/// The source database connection.
#[derive(Clone)]
pub struct Source {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
    pub(crate) url: String,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl Source {
    /// Connects to `url` (PostgreSQL, MySQL/MariaDB or SQLite) with a pool
    /// of up to `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Source> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::from_url(url)?;
        let built = match dialect {
            Dialect::Postgres => cfg!(feature = "postgres"),
            Dialect::MySql => cfg!(feature = "mysql"),
            Dialect::Sqlite => cfg!(feature = "sqlite"),
        };
        let dialect = dialect.require_built("larder-views", built)?;
        // One plain connection first: a dead or misnamed database is an
        // error at once, not after the pool's acquire timeout of retries.
        {
            use sqlx::Connection;
            sqlx::AnyConnection::connect(url).await?.close().await?;
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Source {
            pool,
            dialect,
            url: url.to_owned(),
        })
    }

    /// The pool (sqlx `Any`), for the application's own queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// Binds a JSON scalar with its natural SQL type.
pub(crate) fn bind_json(args: &mut AnyArguments<'_>, v: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    let r = match v {
        Value::Null => args.add(Option::<i64>::None),
        Value::Bool(b) => args.add(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => args.add(i),
            None => args.add(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => args.add(s.clone()),
        other => args.add(other.to_string()),
    };
    r.map_err(|e| Error::Config(format!("cannot bind {v}: {e}")))
}

/// A view key as text, from a JSON scalar (`null` has none).
pub(crate) fn json_key(v: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// One column of a row as JSON: the first of the SQL types `Any` carries
/// that decodes.
pub(crate) fn column_json(row: &AnyRow, i: usize) -> serde_json::Value {
    use serde_json::Value;
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    if let Ok(v) = row.try_get::<Option<i32>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    if let Ok(v) = row.try_get::<Option<i16>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    if let Ok(v) = row.try_get::<Option<f32>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(i) {
        return v
            .map(|b| Value::from(String::from_utf8_lossy(&b).into_owned()))
            .unwrap_or(Value::Null);
    }
    Value::Null
}

/// A row as a JSON object keyed by column name.
pub(crate) fn row_json(row: &AnyRow) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (i, c) in row.columns().iter().enumerate() {
        m.insert(c.name().to_owned(), column_json(row, i));
    }
    serde_json::Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapt_rewrites_numbered_placeholders_outside_quotes() {
        assert_eq!(
            Dialect::Sqlite.adapt("SELECT '$1', x FROM t WHERE a = $1 AND b = $12"),
            "SELECT '$1', x FROM t WHERE a = ? AND b = ?"
        );
        assert_eq!(Dialect::Postgres.adapt("a = $1"), "a = $1");
    }

    #[test]
    fn urls_pick_dialects() {
        assert_eq!(
            Dialect::from_url("postgres://x/y").unwrap(),
            Dialect::Postgres
        );
        assert_eq!(Dialect::from_url("mariadb://x/y").unwrap(), Dialect::MySql);
        assert_eq!(Dialect::from_url("sqlite:a.db").unwrap(), Dialect::Sqlite);
        assert!(Dialect::from_url("redis://x").is_err());
    }
}
