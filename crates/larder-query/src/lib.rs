//! # larder-query
//!
//! Query-result caching with automatic invalidation (what Cache Machine and
//! Johnny-Cache did for Django's ORM), for sqlx. This crate is being built
//! in steps (issue 6); this step holds the SQL analysis and the table
//! generation store.
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
mod generations;
mod query_cache;

pub use analyze::{analyze, normalize, Analysis, Schema, SqlDialect};
pub use generations::Generations;
pub use query_cache::{CacheableDb, CachedTransaction, Param, QueryCache, RowsAffected};
