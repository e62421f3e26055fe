//! # larder-changes
//!
//! Change capture shared by the crates that react to database writes:
//! larder-query (invalidating cached query results), larder-views
//! (rebuilding denormalized documents) and larder-sql (the PostgreSQL
//! invalidation bus of near caches). One home for what they had each
//! written for themselves:
//!
//! - [`Dialect`]: which database a URL names, its bind placeholders and
//!   its clock as SQL;
//! - [`is_identifier`] / [`check_identifier`]: the rule for names spliced
//!   into DDL and trigger bodies (they cannot be bound as parameters);
//! - [`triggers`]: the row-level capture triggers per dialect, which
//!   append old and new values to a sink table (larder-views' outbox,
//!   larder-query's change log);
//! - [`changelog`]: following an append-only change log at a position
//!   that never skips a transaction that commits late;
//! - [`listen_postgres`] (feature `postgres`): the one reconnecting `LISTEN` loop, which says
//!   when it (re)connected, because PostgreSQL does not queue
//!   notifications for a listener that is away: a consumer resyncs then;
//! - [`logical`] (feature `logical`): PostgreSQL logical replication
//!   (`pgoutput`) as a source of committed row changes, old and new values
//!   included, with nothing added to the writers' transactions.
//!
//! ```
//! use larder_changes::{check_identifier, Dialect};
//! let d = Dialect::from_url("postgres://app@127.0.0.1/app")?;
//! assert_eq!(d.placeholders(1, 3), "$1, $2, $3");
//! assert!(check_identifier("table", "comments").is_ok());
//! assert!(check_identifier("table", "comments; DROP TABLE x").is_err());
//! # Ok::<(), larder_changes::Error>(())
//! ```
#![warn(missing_docs)]

pub mod changelog;
#[cfg(feature = "postgres")]
mod listen;
#[cfg(feature = "logical")]
pub mod logical;
pub mod triggers;

#[cfg(feature = "postgres")]
pub use listen::{listen_postgres, ListenEvent};

/// Errors of this crate: configuration mistakes, caught before any SQL
/// runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A database URL whose scheme is not one of ours.
    #[error("unsupported database URL scheme {scheme:?} (use postgres://, mysql:// or sqlite:)")]
    UnsupportedUrl {
        /// The scheme found.
        scheme: String,
    },
    /// A name that would be spliced into SQL but is not a plain
    /// identifier.
    #[error("{what} {name:?} is not a plain identifier (letters, digits, _; at most 60; not starting with a digit)")]
    NotAnIdentifier {
        /// What the name is for ("table", "column", …).
        what: String,
        /// The name refused.
        name: String,
    },
    /// A database this build of a crate has no driver for.
    #[error("{krate} was built without {dialect:?} support: enable the `{feature}` feature of larder (or of {krate})", feature = dialect.feature())]
    NotBuilt {
        /// The crate that lacks the driver.
        krate: &'static str,
        /// The database asked for.
        dialect: Dialect,
    },
    /// A capture trigger of this dialect needs its columns by name.
    #[error("{dialect:?} capture triggers need the columns by name")]
    ColumnsRequired {
        /// The dialect.
        dialect: Dialect,
    },
}

/// The SQL dialect of a database.
///
/// Deliberately exhaustive: every crate that builds SQL per dialect
/// matches on it, and a new dialect must fail to compile in each of them
/// until its DDL and queries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// The dialect of a URL scheme (`postgres`, `postgresql`, `mysql`,
    /// `mariadb`, `sqlite`).
    pub fn from_scheme(scheme: &str) -> Option<Dialect> {
        match scheme {
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            "sqlite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    /// The dialect of a database URL (`postgres://`, `mysql://` /
    /// `mariadb://`, `sqlite:`).
    pub fn from_url(url: &str) -> Result<Dialect, Error> {
        let scheme = url.split(':').next().unwrap_or_default();
        Dialect::from_scheme(scheme).ok_or_else(|| Error::UnsupportedUrl {
            scheme: scheme.to_owned(),
        })
    }

    /// The cargo feature that brings this dialect's driver into larder's
    /// crates (and the facade): `postgres`, `mysql` or `sqlite`.
    pub fn feature(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }

    /// `Ok(self)` if `built` (the calling crate's own feature for this
    /// dialect is on, e.g. `cfg!(feature = "mysql")`), else
    /// [`Error::NotBuilt`] naming the feature to enable.
    pub fn require_built(self, krate: &'static str, built: bool) -> Result<Dialect, Error> {
        if built {
            Ok(self)
        } else {
            Err(Error::NotBuilt {
                krate,
                dialect: self,
            })
        }
    }

    /// The `n`th (1-based) bind placeholder: `$n` on PostgreSQL, `?`
    /// elsewhere.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }

    /// `count` placeholders from the `first`, comma-separated.
    pub fn placeholders(self, first: usize, count: usize) -> String {
        (first..first + count)
            .map(|n| self.placeholder(n))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Rewrites `$1`-style placeholders to `?` for MySQL and SQLite, so a
    /// view's SQL can be written once. (Only outside quotes.)
    pub fn adapt(self, sql: &str) -> String {
        if self == Dialect::Postgres {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len());
        let mut chars = sql.chars().peekable();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match quote {
                Some(q) => {
                    out.push(c);
                    if c == q {
                        quote = None;
                    }
                }
                None if c == '\'' || c == '"' || c == '`' => {
                    quote = Some(c);
                    out.push(c);
                }
                None if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) => {
                    while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                        chars.next();
                    }
                    out.push('?');
                }
                None => out.push(c),
            }
        }
        out
    }

    /// An SQL expression for the database's wall clock in Unix
    /// milliseconds.
    pub fn now_ms(self) -> &'static str {
        match self {
            Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
            Dialect::MySql => "CAST(ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)",
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        }
    }
}

/// Whether `name` may be spliced into SQL as it is: ASCII letters, digits
/// and `_`, not starting with a digit, at most 60 bytes (trigger and
/// function names built from it stay under PostgreSQL's 63 and MySQL's 64).
pub fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 60
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

/// [`is_identifier`], as an error naming `what` the name is for.
pub fn check_identifier(what: &str, name: &str) -> Result<(), Error> {
    if is_identifier(name) {
        Ok(())
    } else {
        Err(Error::NotAnIdentifier {
            what: what.to_owned(),
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialect_left_out_of_a_build_names_the_feature_to_enable() {
        assert_eq!(
            Dialect::MySql.require_built("larder-x", true),
            Ok(Dialect::MySql)
        );
        let e = Dialect::MySql.require_built("larder-x", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "larder-x was built without MySql support: enable the `mysql` feature of larder (or of larder-x)"
        );
        assert_eq!(Dialect::Sqlite.feature(), "sqlite");
        assert_eq!(Dialect::Postgres.feature(), "postgres");
    }

    #[test]
    fn identifiers() {
        for ok in ["comments", "_x", "a1", &"a".repeat(60)] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "1a", "a-b", "a b", "a;", "\"a\"", "é", &"a".repeat(61)] {
            assert!(!is_identifier(bad), "{bad}");
        }
        assert_eq!(
            check_identifier("column", "x y").unwrap_err().to_string(),
            "column \"x y\" is not a plain identifier (letters, digits, _; at most 60; not starting with a digit)"
        );
    }

    #[test]
    fn dialects() {
        assert_eq!(Dialect::from_url("mariadb://root@h/db"), Ok(Dialect::MySql));
        assert_eq!(Dialect::from_url("sqlite:x.db"), Ok(Dialect::Sqlite));
        assert!(matches!(
            Dialect::from_url("oracle://x"),
            Err(Error::UnsupportedUrl { scheme }) if scheme == "oracle"
        ));
        assert_eq!(Dialect::MySql.placeholders(2, 2), "?, ?");
    }
}
