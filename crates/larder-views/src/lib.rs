//! # larder-views
//!
//! Denormalized views: documents actively *set* by asynchronous workers
//! into persistent storage, so nothing falls out of cache (the talk's
//! closing advice: "what you want is probably not caching but denormalized
//! data").
//!
//! - Declare a view in Rust ([`View`]: a key type, a serde document type,
//!   an async compute function, [`Dependency`]s) or in SQL alone
//!   ([`SqlView`]).
//! - Changes reach the outbox in the application's own transaction
//!   ([`Views::record`]) or through generated triggers on the source tables
//!   ([`Views::install`]) on PostgreSQL, MySQL/MariaDB and SQLite, so raw
//!   SQL from other programs is captured too.
//! - [`Worker`]s claim outbox entries in batches (`FOR UPDATE SKIP LOCKED`
//!   on PostgreSQL and MySQL, LISTEN/NOTIFY wake-ups on PostgreSQL),
//!   coalesce keys, recompute, write versioned documents, acknowledge;
//!   failures retry with backoff and end in a dead-letter table.
//! - Stores: [`RedbStore`] (embedded default, feature `redb`),
//!   [`RedisStore`] (feature `redis`), [`SqlStore`] (always). Nothing expires; a document is only replaced by one
//!   computed at a newer version, so retries, reordering and crashed
//!   workers never move a view backwards.
//! - Operations: [`Views::status`], [`Views::rebuild`] (online),
//!   [`Views::verify`], [`Views::repair`], also as `larder views …`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), larder_views::Error> {
//! use std::sync::Arc;
//! use larder_views::{RedbStore, Source, SqlView, Views, WorkerConfig};
//!
//! let source = Source::connect("postgres://postgres@127.0.0.1/test", 8).await?;
//! let store = Arc::new(RedbStore::open("views.redb")?);
//! let views = Views::builder(source, store)
//!     .view(
//!         SqlView::new(
//!             "SELECT p.id, p.title, u.name AS author, \
//!              (SELECT COUNT(*) FROM comments c WHERE c.post_id = p.id) AS comments \
//!              FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1",
//!             "SELECT id FROM posts",
//!         )
//!         .depends_on("posts", "id")
//!         .depends_on("comments", "post_id")
//!         .depends_via("users", "id", "SELECT id FROM posts WHERE author_id = $1")
//!         .named("post_page"),
//!     )
//!     .build()?;
//! views.install().await?; // outbox tables + triggers
//! tokio::spawn(views.worker(WorkerConfig::default()).run(std::future::pending()));
//! let page: Option<serde_json::Value> = views.get("post_page", 42).await?;
//! # Ok(()) }
//! ```
//!
//! ## Pitfalls
//!
//! - Views are eventually consistent: a read right after a write may see
//!   the previous document (see `larder views status` for the lag).
//! - `TRUNCATE` fires no row trigger: run a rebuild after one.
//! - redb locks its file: one process at a time. Workers in several
//!   processes need [`RedisStore`] or [`SqlStore`].
//! - A lookup dependency runs its query per changed row: index the column
//!   it filters on.
#![warn(missing_docs)]

mod error;
mod open;
mod ops;
mod outbox;
#[cfg(feature = "logical")]
mod replication;
mod schema;
mod source;
mod store;
mod view;
mod views;
mod worker;

pub use error::{BoxError, Error, Result, MAX_KEY_LEN};
#[cfg(feature = "logical")]
pub use larder_changes::logical::{self, LogicalConfig};
pub use open::{open_store, REDIS_STORE_PREFIX};
pub use ops::{outbox_status, Drift, DriftKind, RebuildReport, Status, VerifyReport};
pub use outbox::{enqueue_sql, record_keys};
pub use schema::{install_sql, CHANNEL, DEAD_TABLE, OUTBOX_TABLE, TICKET};
pub use source::{Dialect, Source};
#[cfg(feature = "redb")]
pub use store::RedbStore;
pub use store::{DocStore, Put, SqlStore, Versioned, DOCS_TABLE};
#[cfg(feature = "redis")]
pub use store::{RedisStore, REDIS_BUCKETS};
pub use view::{Dependency, DependencySpec, KeyType, RowChange, SqlView, View, ViewDef};
pub use views::{Progress, Views, ViewsBuilder, Wakeup};
pub use worker::{BatchReport, Worker, WorkerConfig};
