//! The error of the query cache's reads and writes.

use std::sync::Arc;

/// Why a query through the [`crate::QueryCache`] failed: the database's
/// own answer, an empty `fetch_one`, or the cache, apart.
///
/// ```
/// # async fn demo(qc: &larder_query::QueryCache<sqlx::Sqlite>) {
/// use larder_query::{Param, QueryError};
/// match qc.fetch_one::<(i64,)>("SELECT id FROM users WHERE id = ?", &[Param::from(7i64)]).await {
///     Ok((id,)) => println!("user {id}"),
///     Err(QueryError::RowNotFound) => println!("no user 7"),
///     Err(e) if e.database_error().is_some_and(|d| d.is_unique_violation()) => println!("taken"),
///     Err(e) => eprintln!("query failed: {e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The database refused or failed the statement (a constraint
    /// violation, bad SQL, a lost connection): sqlx's own error. In an
    /// [`Arc`] because concurrent identical reads share one run of the
    /// query, and every one of them gets this same error.
    #[error("the database failed the statement: {0}")]
    Database(Arc<sqlx::Error>),
    /// `fetch_one` found no row.
    #[error("the query returned no row")]
    RowNotFound,
    /// The cache failed in a way that fail-open cannot hide (an invalid
    /// key, a result type that cannot be stored). A cache that is down is
    /// not an error: reads run uncached.
    #[error(transparent)]
    Cache(#[from] larder_core::Error),
}

impl QueryError {
    /// The database's error, when the database refused the statement
    /// (`is_unique_violation()`, `is_foreign_key_violation()`, `code()`…).
    pub fn database_error(&self) -> Option<&(dyn sqlx::error::DatabaseError + 'static)> {
        match self {
            QueryError::Database(e) => match &**e {
                sqlx::Error::Database(d) => Some(&**d),
                _ => None,
            },
            _ => None,
        }
    }

    /// sqlx's error, for any failure of the database or the connection.
    pub fn sqlx_error(&self) -> Option<&sqlx::Error> {
        match self {
            QueryError::Database(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for QueryError {
    fn from(e: sqlx::Error) -> Self {
        QueryError::Database(Arc::new(e))
    }
}

impl From<larder_core::ComputeError<sqlx::Error>> for QueryError {
    fn from(e: larder_core::ComputeError<sqlx::Error>) -> Self {
        match e {
            larder_core::ComputeError::Loader(e) => QueryError::Database(e),
            larder_core::ComputeError::Cache(e) => QueryError::Cache(e),
            // A future kind of failure: as the cache's.
            other => QueryError::Cache(other.into()),
        }
    }
}
