//! Where view documents live. Nothing expires, and a document is only ever
//! replaced by one computed at a newer version (a ticket per key), so
//! retries and reordered work never move a view backwards. A key whose
//! source row is gone keeps a versioned tombstone for the same reason.

//!
//! One file per store, each behind the feature that brings its client:
//! [`RedbStore`] (`redb`), [`RedisStore`] (`redis`); [`SqlStore`] keeps
//! documents in a SQL database and needs nothing more than the source's
//! driver.

#[cfg(feature = "redb")]
mod redb;
#[cfg(feature = "redis")]
mod redis;
mod sql;

#[cfg(feature = "redb")]
pub use self::redb::RedbStore;
#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, BUCKETS as REDIS_BUCKETS};
pub use self::sql::{SqlStore, DOCS_TABLE};

use crate::error::Result;

/// A stored document and the version it was computed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The version the document was computed at (monotonic per key).
    pub version: u64,
    /// The serialized document (JSON); `None` for a tombstone (the key has
    /// no document in the source any more).
    pub doc: Option<Vec<u8>>,
}

/// One write to a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The view key.
    pub key: String,
    /// The version it was computed at.
    pub version: u64,
    /// The document, or `None` to record that the key has none.
    pub doc: Option<Vec<u8>>,
}

/// A store of view documents. Implementations must make each
/// compare-and-write atomic: a put lands only if the stored version is
/// older (or absent).
#[async_trait::async_trait]
pub trait DocStore: Send + Sync + 'static {
    /// A short name for errors and metrics.
    fn name(&self) -> &'static str;
    /// Writes each put whose version is newer than the stored one; returns
    /// how many landed.
    async fn put_many(&self, view: &str, puts: Vec<Put>) -> Result<usize>;
    /// The stored entries for `keys`, in order.
    async fn get_many(&self, view: &str, keys: &[String]) -> Result<Vec<Option<Versioned>>>;
    /// Keys that have a document (tombstones excluded), sorted.
    async fn keys(&self, view: &str) -> Result<Vec<String>>;
    /// How many keys have a document.
    async fn count(&self, view: &str) -> Result<u64> {
        Ok(self.keys(view).await?.len() as u64)
    }

    /// One entry.
    async fn get(&self, view: &str, key: &str) -> Result<Option<Versioned>> {
        Ok(self
            .get_many(view, &[key.to_owned()])
            .await?
            .pop()
            .flatten())
    }
    /// One put; whether it landed.
    async fn put_if_newer(
        &self,
        view: &str,
        key: &str,
        version: u64,
        doc: Option<Vec<u8>>,
    ) -> Result<bool> {
        let put = Put {
            key: key.to_owned(),
            version,
            doc,
        };
        Ok(self.put_many(view, vec![put]).await? == 1)
    }
}
