//! Where view documents live: nothing expires, and a document is only ever
//! replaced by one computed from a newer change (a version per key), so
//! retries and reordered work never move a view backwards.

use std::path::Path;
use std::sync::Arc;

use larder_core::{async_trait, Error, Result};
use redb::{Database, ReadableTable, TableDefinition};

/// A stored document and the version it was computed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The change version the document reflects (monotonic per key).
    pub version: u64,
    /// The serialized document.
    pub doc: Vec<u8>,
}

/// A store of view documents.
#[async_trait]
pub trait DocStore: Send + Sync + 'static {
    /// Stores `doc` for `(view, key)` unless a document of the same or a
    /// newer version is there; returns whether it stored.
    async fn put_if_newer(&self, view: &str, key: &str, version: u64, doc: Vec<u8>)
        -> Result<bool>;
    /// The document for `(view, key)`, if any.
    async fn get(&self, view: &str, key: &str) -> Result<Option<Versioned>>;
}

const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("larder_view_docs");

fn err(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::backend("redb", e)
}

/// One key for a view's document: the view name length-prefixed, so
/// `("ab", "c")` and `("a", "bc")` differ.
fn doc_key(view: &str, key: &str) -> String {
    format!("{}:{view}:{key}", view.len())
}

fn encode(version: u64, doc: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + doc.len());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(doc);
    v
}

fn decode(bytes: &[u8]) -> Option<Versioned> {
    let version = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    Some(Versioned {
        version,
        doc: bytes[8..].to_vec(),
    })
}

/// The embedded default: one redb file, crash-safe (redb commits are
/// durable and atomic), in process.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let db = Database::create(path.as_ref()).map_err(err)?;
        let w = db.begin_write().map_err(err)?;
        w.open_table(DOCS).map_err(err)?;
        w.commit().map_err(err)?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| Error::backend("redb", e))?
    }
}

#[async_trait]
impl DocStore for RedbStore {
    async fn put_if_newer(
        &self,
        view: &str,
        key: &str,
        version: u64,
        doc: Vec<u8>,
    ) -> Result<bool> {
        let k = doc_key(view, key);
        self.blocking(move |db| {
            // redb serializes write transactions: the check and the write
            // are atomic.
            let w = db.begin_write().map_err(err)?;
            let stored = {
                let mut t = w.open_table(DOCS).map_err(err)?;
                let current = t
                    .get(k.as_str())
                    .map_err(err)?
                    .and_then(|v| decode(v.value()).map(|d| d.version));
                if current.is_some_and(|c| c >= version) {
                    false
                } else {
                    t.insert(k.as_str(), encode(version, &doc).as_slice())
                        .map_err(err)?;
                    true
                }
            };
            w.commit().map_err(err)?;
            Ok(stored)
        })
        .await
    }

    async fn get(&self, view: &str, key: &str) -> Result<Option<Versioned>> {
        let k = doc_key(view, key);
        self.blocking(move |db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(DOCS).map_err(err)?;
            let v = t.get(k.as_str()).map_err(err)?;
            Ok(v.and_then(|v| decode(v.value())))
        })
        .await
    }
}
