//! # larder-query
//!
//! Query-result caching with automatic invalidation (what Cache Machine and
//! Johnny-Cache did for Django's ORM), for sqlx on SQLite, PostgreSQL and
//! MySQL/MariaDB: [`QueryCache`] (reads cached under the generations of the
//! tables they read, writes and transactions bumping them after commit),
//! and triggers ([`install`]) through which writes from outside the
//! application invalidate too.
//!
//! - [`analyze`] reads a statement's parse tree (sqlparser) and says which
//!   tables it reads (joins, subqueries, CTEs excluded, declared views
//!   expanded) or writes, or that it cannot tell.
//! - [`Generations`] keeps one generation per table in a larder [`Cache`]:
//!   a query's key includes the generations of the tables it reads (read in
//!   one round trip), and a write bumps the generations of the tables it
//!   writes, so every result computed before the write stops matching.
//!
//! [`Cache`]: larder_core::Cache
#![warn(missing_docs)]

mod analyze;
mod capture;
mod error;
mod generations;
mod outside;
mod param;
mod query_cache;
#[cfg(feature = "logical")]
mod replication;
mod rows;

pub use analyze::{analyze, normalize, Analysis, Schema, SqlDialect, PURE_FUNCTIONS};
pub use capture::CaptureRow;
pub use error::QueryError;
pub use generations::Generations;
#[cfg(feature = "logical")]
pub use larder_changes::logical::LogicalConfig;
#[cfg(feature = "postgres")]
pub use outside::listen_postgres;
pub use outside::{install, install_plan, install_sql, install_with, Wakeup, CHANGE_LOG, CHANNEL};
pub use param::{Bind, BindParam};
pub use query_cache::{
    CacheableDb, CachedTransaction, OutsideWrites, Param, QueryCache, QueryStats, RowsAffected,
};
pub use rows::Canon;
