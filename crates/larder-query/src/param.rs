//! [`Param`]: the values a cached query binds, and how each database binds
//! them.

use sqlx::Database;

/// A bound parameter. Parameters are part of the cache key, so they are
/// values we can hash, not arbitrary `Encode` types.
///
/// Beyond the plain SQL types, cargo features add: `json`
/// ([`Param::Json`]), `uuid` ([`Param::Uuid`]), `chrono`
/// ([`Param::Timestamp`], [`Param::Date`]), which bind natively on
/// PostgreSQL, MySQL/MariaDB and SQLite, and `decimal`
/// ([`Param::Decimal`]), native on PostgreSQL and MySQL/MariaDB and text
/// on SQLite (see its pitfall).
///
/// ```
/// use larder_query::Param;
/// let params = [Param::from(7i64), Param::from("draft"), Param::from(None::<i64>)];
/// assert_eq!(params[0], Param::Int(7));
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub enum Param {
    /// SQL NULL (bound as a nullable BIGINT).
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A JSON document (PostgreSQL `json`/`jsonb`, MySQL `JSON`, SQLite
    /// text). Feature `json`.
    #[cfg(feature = "json")]
    Json(serde_json::Value),
    /// A UUID (PostgreSQL `uuid`, MySQL `BINARY(16)`, SQLite blob).
    /// Feature `uuid`.
    #[cfg(feature = "uuid")]
    Uuid(uuid::Uuid),
    /// A point in time (PostgreSQL `timestamptz`, MySQL `TIMESTAMP`, SQLite
    /// text). Feature `chrono`.
    #[cfg(feature = "chrono")]
    Timestamp(chrono::DateTime<chrono::Utc>),
    /// A calendar date (`DATE`). Feature `chrono`.
    #[cfg(feature = "chrono")]
    Date(chrono::NaiveDate),
    /// An exact decimal (PostgreSQL `NUMERIC`, MySQL `DECIMAL`). Feature
    /// `decimal`.
    ///
    /// Its scale is part of the cache key (`1.50` and `1.5` are two keys:
    /// `SELECT $1` answers them differently).
    ///
    /// Pitfall: SQLite has no decimal type, so there it is bound as its
    /// text (`"1.50"`), as sqlx advises. Keep exact decimals in a `TEXT`
    /// column there and compare them as written; a `NUMERIC` column
    /// converts both sides to a float of 15 significant digits.
    #[cfg(feature = "decimal")]
    Decimal(rust_decimal::Decimal),
}

macro_rules! from_param {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Param {
            fn from(x: $t) -> Param { Param::$v(x.into()) }
        }
    )*};
}
from_param!(bool => Bool, i64 => Int, i32 => Int, u32 => Int, f64 => Float, String => Text, &str => Text, Vec<u8> => Bytes);
#[cfg(feature = "json")]
from_param!(serde_json::Value => Json);
#[cfg(feature = "uuid")]
from_param!(uuid::Uuid => Uuid);
#[cfg(feature = "chrono")]
from_param!(chrono::DateTime<chrono::Utc> => Timestamp, chrono::NaiveDate => Date);
#[cfg(feature = "decimal")]
from_param!(rust_decimal::Decimal => Decimal);

impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(x: Option<T>) -> Param {
        x.map_or(Param::Null, Into::into)
    }
}

impl Param {
    /// The parameter's part of a cache key: a tag per kind, then an exact
    /// encoding (floats by their bits, so NaN and infinity never share a
    /// key with each other or with NULL).
    pub(crate) fn key_bytes(&self) -> Vec<u8> {
        let (tag, body): (u8, Vec<u8>) = match self {
            Param::Null => (0, Vec::new()),
            Param::Bool(b) => (1, vec![u8::from(*b)]),
            Param::Int(n) => (2, n.to_le_bytes().to_vec()),
            Param::Float(f) => (3, f.to_bits().to_le_bytes().to_vec()),
            Param::Text(t) => (4, t.as_bytes().to_vec()),
            Param::Bytes(b) => (5, b.clone()),
            // serde_json's maps are sorted: one text per document.
            #[cfg(feature = "json")]
            Param::Json(v) => (6, v.to_string().into_bytes()),
            #[cfg(feature = "uuid")]
            Param::Uuid(u) => (7, u.as_bytes().to_vec()),
            #[cfg(feature = "chrono")]
            Param::Timestamp(t) => (
                8,
                t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
                    .into_bytes(),
            ),
            #[cfg(feature = "chrono")]
            Param::Date(d) => (9, d.to_string().into_bytes()),
            // Display keeps the scale: "1.50" and "1.5" stay apart.
            #[cfg(feature = "decimal")]
            Param::Decimal(d) => (10, d.to_string().into_bytes()),
        };
        let mut out = Vec::with_capacity(1 + body.len());
        out.push(tag);
        out.extend(body);
        out
    }
}

/// A query that takes bound values: sqlx's `Query` and `QueryAs`.
pub trait Bind<'q, DB: Database>: Sized {
    /// Binds the next value.
    fn bind_value<T: 'q + sqlx::Encode<'q, DB> + sqlx::Type<DB>>(self, v: T) -> Self;
}

impl<'q, DB: Database> Bind<'q, DB>
    for sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>
{
    fn bind_value<T: 'q + sqlx::Encode<'q, DB> + sqlx::Type<DB>>(self, v: T) -> Self {
        self.bind(v)
    }
}

impl<'q, DB: Database, O> Bind<'q, DB>
    for sqlx::query::QueryAs<'q, DB, O, <DB as Database>::Arguments<'q>>
{
    fn bind_value<T: 'q + sqlx::Encode<'q, DB> + sqlx::Type<DB>>(self, v: T) -> Self {
        self.bind(v)
    }
}

/// How a database binds each [`Param`]: implemented for sqlx's
/// PostgreSQL, MySQL/MariaDB and SQLite drivers.
pub trait BindParam: Database {
    /// Binds `p` to `q`.
    fn bind_param<'q, B: Bind<'q, Self>>(q: B, p: &Param) -> B;
}

/// How a database binds a decimal: natively, or as its text where the
/// database has no decimal type (SQLite).
#[cfg(feature = "decimal")]
macro_rules! bind_decimal {
    (native, $q:expr, $v:expr) => {
        $q.bind_value(*$v)
    };
    (text, $q:expr, $v:expr) => {
        $q.bind_value($v.to_string())
    };
}

macro_rules! bind_param_for {
    ($($db:ty => decimal $how:ident),*) => {$(
        impl BindParam for $db {
            fn bind_param<'q, B: Bind<'q, Self>>(q: B, p: &Param) -> B {
                match p {
                    Param::Null => q.bind_value(None::<i64>),
                    Param::Bool(v) => q.bind_value(*v),
                    Param::Int(v) => q.bind_value(*v),
                    Param::Float(v) => q.bind_value(*v),
                    Param::Text(v) => q.bind_value(v.clone()),
                    Param::Bytes(v) => q.bind_value(v.clone()),
                    #[cfg(feature = "json")]
                    Param::Json(v) => q.bind_value(sqlx::types::Json(v.clone())),
                    #[cfg(feature = "uuid")]
                    Param::Uuid(v) => q.bind_value(*v),
                    #[cfg(feature = "chrono")]
                    Param::Timestamp(v) => q.bind_value(*v),
                    #[cfg(feature = "chrono")]
                    Param::Date(v) => q.bind_value(*v),
                    #[cfg(feature = "decimal")]
                    Param::Decimal(v) => bind_decimal!($how, q, v),
                }
            }
        }
    )*};
}
#[cfg(feature = "postgres")]
bind_param_for!(sqlx::Postgres => decimal native);
#[cfg(feature = "mysql")]
bind_param_for!(sqlx::MySql => decimal native);
#[cfg(feature = "sqlite")]
bind_param_for!(sqlx::Sqlite => decimal text);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_bytes_never_collide_across_kinds_or_special_floats() {
        let all = [
            Param::Null,
            Param::Bool(false),
            Param::Int(0),
            Param::Float(0.0),
            Param::Float(-0.0),
            Param::Float(f64::NAN),
            Param::Float(f64::INFINITY),
            Param::Text(String::new()),
            Param::Text("0".into()),
            Param::Bytes(Vec::new()),
        ];
        let keys: std::collections::HashSet<Vec<u8>> = all.iter().map(Param::key_bytes).collect();
        assert_eq!(keys.len(), all.len());
    }
}
