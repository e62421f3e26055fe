//! The registry: declared views over one source and one store, installing
//! them, reads, and the app-side outbox. The operations (status, rebuild,
//! verify, repair) are `ops.rs`; the worker is `worker.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use sqlx::AnyConnection;

use crate::error::{check_key, Error, Result};
use crate::outbox;
use crate::schema;
use crate::source::Source;
use crate::store::{DocStore, Versioned};
use crate::view::{Dependency, ViewDef};
pub use larder_changes::triggers::Wakeup;

/// A progress callback: `(done, total)`.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// Declared views over one source database and one document store.
/// Cheap to clone.
#[derive(Clone)]
pub struct Views {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) source: Source,
    pub(crate) store: Arc<dyn DocStore>,
    pub(crate) defs: BTreeMap<String, Arc<ViewDef>>,
    by_table: HashMap<String, Vec<(String, Dependency)>>,
    pub(crate) wakeup: Wakeup,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views")
            .field("source", &self.inner.source)
            .field("store", &self.inner.store.name())
            .field("views", &self.inner.defs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds a [`Views`].
pub struct ViewsBuilder {
    source: Source,
    store: Arc<dyn DocStore>,
    defs: Vec<ViewDef>,
    wakeup: Wakeup,
}

impl std::fmt::Debug for ViewsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewsBuilder").finish_non_exhaustive()
    }
}

impl ViewsBuilder {
    /// Declares a view (a [`crate::View`], or a [`crate::SqlView`] through
    /// [`crate::SqlView::named`]).
    pub fn view(mut self, def: impl Into<ViewDef>) -> Self {
        self.defs.push(def.into());
        self
    }

    /// How workers learn of captured writes on PostgreSQL (default
    /// [`Wakeup::Notify`]). [`Wakeup::Poll`] installs the triggers without
    /// their `NOTIFY` (writers then do not queue on PostgreSQL's
    /// notification lock, which halved their throughput in the issue-15
    /// measurements), and workers poll the outbox every 50 ms unless
    /// [`WorkerConfig::poll_interval`](crate::WorkerConfig::poll_interval)
    /// says otherwise. `install` and the workers must agree; elsewhere
    /// than PostgreSQL workers always poll.
    pub fn wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = wakeup;
        self
    }

    /// Checks the declarations (names unique and usable as keys).
    pub fn build(self) -> Result<Views> {
        let mut defs = BTreeMap::new();
        let mut by_table: HashMap<String, Vec<(String, Dependency)>> = HashMap::new();
        for d in self.defs {
            check_key(&d.name)?;
            for dep in &d.deps {
                by_table
                    .entry(dep.table.clone())
                    .or_default()
                    .push((d.name.clone(), dep.clone()));
            }
            let name = d.name.clone();
            if defs.insert(name.clone(), Arc::new(d)).is_some() {
                return Err(Error::Config(format!("view {name:?} is declared twice")));
            }
        }
        Ok(Views {
            inner: Arc::new(Inner {
                source: self.source,
                store: self.store,
                defs,
                by_table,
                wakeup: self.wakeup,
            }),
        })
    }
}

impl Views {
    /// Starts declaring views over `source`, stored in `store`.
    pub fn builder(source: Source, store: Arc<dyn DocStore>) -> ViewsBuilder {
        ViewsBuilder {
            source,
            store,
            defs: Vec::new(),
            wakeup: Wakeup::default(),
        }
    }

    /// The source database.
    pub fn source(&self) -> &Source {
        &self.inner.source
    }

    /// The document store.
    pub fn store(&self) -> &Arc<dyn DocStore> {
        &self.inner.store
    }

    /// Declared view names.
    pub fn names(&self) -> Vec<String> {
        self.inner.defs.keys().cloned().collect()
    }

    pub(crate) fn def(&self, view: &str) -> Option<&Arc<ViewDef>> {
        self.inner.defs.get(view)
    }

    pub(crate) fn def_or_err(&self, view: &str) -> Result<&Arc<ViewDef>> {
        self.def(view)
            .ok_or_else(|| Error::UnknownView(view.to_owned()))
    }

    pub(crate) fn dependents(&self, table: &str) -> impl Iterator<Item = (&str, &Dependency)> {
        self.inner
            .by_table
            .get(table)
            .into_iter()
            .flatten()
            .map(|(v, d)| (v.as_str(), d))
    }

    /// Creates the outbox tables and installs the capture triggers on every
    /// source table a view depends on (idempotent; run again after changing
    /// dependencies).
    pub async fn install(&self) -> Result<()> {
        let defs: Vec<&ViewDef> = self.inner.defs.values().map(|d| &**d).collect();
        schema::install(&self.inner.source, &defs, self.inner.wakeup).await
    }

    /// The statements [`Views::install`] runs.
    pub fn install_sql(&self) -> Result<Vec<String>> {
        let defs: Vec<&ViewDef> = self.inner.defs.values().map(|d| &**d).collect();
        schema::install_sql(self.inner.source.dialect, &defs, self.inner.wakeup)
    }

    /// How workers learn of captured writes ([`ViewsBuilder::wakeup`]).
    pub fn wakeup(&self) -> Wakeup {
        self.inner.wakeup
    }

    /// Records, on `conn` (the application's transaction: `&mut *tx`), that
    /// `keys` of `view` must be recomputed: it commits or rolls back with
    /// the write.
    pub async fn record(
        &self,
        conn: &mut AnyConnection,
        view: &str,
        keys: &[String],
    ) -> Result<()> {
        self.def_or_err(view)?;
        outbox::record_keys(conn, self.inner.source.dialect, view, keys).await
    }

    /// The stored entry for `key`, version included (tombstones too).
    pub async fn get_versioned(&self, view: &str, key: &str) -> Result<Option<Versioned>> {
        self.def_or_err(view)?;
        check_key(key)?;
        self.inner.store.get(view, key).await
    }

    /// The document for `key`, decoded. A missing document is `None`, or
    /// with read-through on, computed, stored and returned.
    pub async fn get<D: DeserializeOwned>(
        &self,
        view: &str,
        key: impl ToString,
    ) -> Result<Option<D>> {
        let key = key.to_string();
        Ok(self
            .get_many(view, std::slice::from_ref(&key))
            .await?
            .pop()
            .flatten())
    }

    /// Documents for `keys`, in order (one store round trip, plus the
    /// read-through computations).
    pub async fn get_many<D: DeserializeOwned>(
        &self,
        view: &str,
        keys: &[String],
    ) -> Result<Vec<Option<D>>> {
        let def = self.def_or_err(view)?.clone();
        for k in keys {
            check_key(k)?;
        }
        // With read_through_total: the dashboard's hit ratio of the views.
        metrics::counter!("larder_views_reads_total", "view" => def.name.clone())
            .increment(keys.len() as u64);
        let stored = self.inner.store.get_many(view, keys).await?;
        let mut out = Vec::with_capacity(keys.len());
        for (key, entry) in keys.iter().zip(stored) {
            let bytes = match entry {
                Some(Versioned { doc, .. }) => doc,
                None if def.read_through => self.read_through(&def, key).await?,
                None => None,
            };
            out.push(match bytes {
                None => None,
                Some(b) => Some(serde_json::from_slice(&b).map_err(|e| Error::Decode {
                    view: view.to_owned(),
                    key: key.clone(),
                    source: e,
                })?),
            });
        }
        Ok(out)
    }

    async fn read_through(&self, def: &ViewDef, key: &str) -> Result<Option<Vec<u8>>> {
        let version = outbox::ticket(&self.inner.source).await?;
        let doc = def
            .compute(&self.inner.source, key)
            .await
            .map_err(|e| Error::Compute {
                view: def.name.clone(),
                key: key.to_owned(),
                source: e,
            })?;
        self.inner
            .store
            .put_if_newer(&def.name, key, version, doc.clone())
            .await?;
        metrics::counter!("larder_views_read_through_total", "view" => def.name.clone())
            .increment(1);
        Ok(doc)
    }
}
