//! The operations front of [`Views`]: status, dead letters, rebuild,
//! verify and repair. The registry (declaring, installing, reading) is
//! `views.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::StreamExt;
use sqlx::Row;

use crate::error::{Error, Result};
use crate::outbox;
use crate::schema::{DEAD_TABLE, OUTBOX_TABLE};
use crate::source::Source;
use crate::store::Put;
use crate::view::ViewDef;
use crate::views::{Progress, Views};

/// Outbox and store figures, for `larder views status` and dashboards.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct Status {
    /// Entries waiting in the outbox (claimed ones included).
    pub backlog: u64,
    /// Entries currently claimed by a worker.
    pub in_flight: u64,
    /// Age of the oldest waiting entry (the views' lag), in milliseconds.
    pub lag_ms: Option<u64>,
    /// Entries in the dead-letter table.
    pub dead_letters: u64,
    /// Waiting entries per origin (a table, or `view:<name>` for enqueued keys).
    pub backlog_by_origin: BTreeMap<String, u64>,
    /// Documents per view.
    pub documents: BTreeMap<String, u64>,
}

/// How a stored document differs from a fresh computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub enum DriftKind {
    /// The source has a document for the key; the store has none.
    Missing,
    /// The store has a document for a key the source has none for.
    Extra,
    /// Both have one, and they differ.
    Different,
}

/// One drifted key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// The key.
    pub key: String,
    /// How it differs.
    pub kind: DriftKind,
}

/// What [`Views::verify`] and [`Views::repair`] found (and fixed).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// The view.
    pub view: String,
    /// Keys checked.
    pub checked: u64,
    /// Drifted keys (up to 100 listed; see `drifted`).
    pub drift: Vec<Drift>,
    /// How many keys drifted.
    pub drifted: u64,
    /// Keys rewritten (repair only).
    pub repaired: u64,
}

/// What [`Views::rebuild`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[non_exhaustive]
pub struct RebuildReport {
    /// The view.
    pub view: String,
    /// Keys computed.
    pub keys: u64,
    /// Documents (and tombstones) that landed (a newer one written by a
    /// worker meanwhile wins).
    pub stored: u64,
    /// Time taken.
    pub elapsed: Duration,
}

const CHUNK: usize = 256;

/// The outbox part of [`Views::status`] (documents left empty): needs only
/// the source database, so it works while another process holds the store
/// (an embedded redb file).
pub async fn outbox_status(s: &Source) -> Result<Status> {
    let now = s.dialect.now_ms();
    let row = sqlx::query(&format!(
        "SELECT COUNT(*), COUNT(CASE WHEN claimed_until > {now} AND attempts = 0 THEN 1 END), \
             COALESCE({now} - MIN(created_ms), -1) FROM {OUTBOX_TABLE}"
    ))
    .fetch_one(&s.pool)
    .await?;
    let backlog: i64 = row.try_get(0)?;
    let in_flight: i64 = row.try_get(1)?;
    let lag: i64 = row.try_get(2)?;
    let dead: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {DEAD_TABLE}"))
        .fetch_one(&s.pool)
        .await?
        .try_get(0)?;
    let mut by_origin = BTreeMap::new();
    let rows = sqlx::query(&format!(
        "SELECT COALESCE(table_name, view_name), COUNT(*), COUNT(table_name) \
             FROM {OUTBOX_TABLE} GROUP BY COALESCE(table_name, view_name)"
    ))
    .fetch_all(&s.pool)
    .await?;
    for r in rows {
        let name = crate::outbox::text(&r, 0)?.unwrap_or_default();
        let n: i64 = r.try_get(1)?;
        let from_tables: i64 = r.try_get(2)?;
        let name = if from_tables == 0 {
            format!("view:{name}")
        } else {
            name
        };
        by_origin.insert(name, n as u64);
    }
    Ok(Status {
        backlog: backlog as u64,
        in_flight: in_flight as u64,
        lag_ms: (backlog > 0 && lag >= 0).then_some(lag as u64),
        dead_letters: dead as u64,
        backlog_by_origin: by_origin,
        documents: BTreeMap::new(),
    })
}

impl Views {
    /// Outbox backlog, lag, dead letters and documents per view.
    pub async fn status(&self) -> Result<Status> {
        let mut status = outbox_status(&self.inner.source).await?;
        for name in self.inner.defs.keys() {
            status
                .documents
                .insert(name.clone(), self.inner.store.count(name).await?);
        }
        Ok(status)
    }

    /// Moves every dead letter back into the outbox; returns how many.
    pub async fn requeue_dead_letters(&self) -> Result<u64> {
        outbox::requeue_dead(&self.inner.source).await
    }

    /// Every key the source has plus every key the store has a document
    /// for (so documents of deleted rows are found too).
    async fn key_universe(&self, def: &ViewDef) -> Result<Vec<String>> {
        let mut keys: BTreeSet<String> = def
            .all_keys(&self.inner.source)
            .await
            .map_err(|e| Error::Compute {
                view: def.name.clone(),
                key: "(all keys)".to_owned(),
                source: e,
            })?
            .into_iter()
            .collect();
        keys.extend(self.inner.store.keys(&def.name).await?);
        Ok(keys.into_iter().collect())
    }

    async fn compute_chunk(
        &self,
        def: &ViewDef,
        keys: &[String],
    ) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let source = &self.inner.source;
        futures_util::stream::iter(keys.iter().cloned())
            .map(|key| async move {
                let doc = def
                    .compute(source, &key)
                    .await
                    .map_err(|e| Error::Compute {
                        view: def.name.clone(),
                        key: key.clone(),
                        source: e,
                    })?;
                Ok((key, doc))
            })
            .buffered(8)
            .collect::<Vec<Result<_>>>()
            .await
            .into_iter()
            .collect()
    }

    /// Recomputes every document of `view` online: writers and workers may
    /// go on meanwhile (versions keep whichever is newer). Documents of
    /// keys the source no longer has become tombstones.
    pub async fn rebuild(
        &self,
        view: &str,
        progress: Option<Progress<'_>>,
    ) -> Result<RebuildReport> {
        let start = std::time::Instant::now();
        let def = self.def_or_err(view)?.clone();
        let keys = self.key_universe(&def).await?;
        let total = keys.len() as u64;
        let mut report = RebuildReport {
            view: view.to_owned(),
            ..RebuildReport::default()
        };
        for chunk in keys.chunks(CHUNK) {
            let version = outbox::ticket(&self.inner.source).await?;
            let docs = self.compute_chunk(&def, chunk).await?;
            let puts = docs
                .into_iter()
                .map(|(key, doc)| Put { key, version, doc })
                .collect();
            report.stored += self.inner.store.put_many(view, puts).await? as u64;
            report.keys += chunk.len() as u64;
            if let Some(p) = progress {
                p(report.keys, total);
            }
        }
        report.elapsed = start.elapsed();
        Ok(report)
    }

    /// Recomputes every key of `view` (or a random `sample` of them) and
    /// compares with the store. Run it while no writes are pending for an
    /// exact answer: a key changed after its comparison shows as drift
    /// until a worker catches up.
    pub async fn verify(
        &self,
        view: &str,
        sample: Option<usize>,
        progress: Option<Progress<'_>>,
    ) -> Result<VerifyReport> {
        self.check(view, sample, false, progress).await
    }

    /// [`Views::verify`], then rewrites every drifted key from a fresh
    /// computation (at a new version, so a concurrent worker's newer write
    /// still wins).
    pub async fn repair(
        &self,
        view: &str,
        sample: Option<usize>,
        progress: Option<Progress<'_>>,
    ) -> Result<VerifyReport> {
        self.check(view, sample, true, progress).await
    }

    async fn check(
        &self,
        view: &str,
        sample: Option<usize>,
        repair: bool,
        progress: Option<Progress<'_>>,
    ) -> Result<VerifyReport> {
        let def = self.def_or_err(view)?.clone();
        let mut keys = self.key_universe(&def).await?;
        if let Some(n) = sample {
            if n < keys.len() {
                fastrand::shuffle(&mut keys);
                keys.truncate(n);
            }
        }
        let total = keys.len() as u64;
        let mut report = VerifyReport {
            view: view.to_owned(),
            ..VerifyReport::default()
        };
        for chunk in keys.chunks(CHUNK) {
            let version = outbox::ticket(&self.inner.source).await?;
            let fresh = self.compute_chunk(&def, chunk).await?;
            let stored = self.inner.store.get_many(view, chunk).await?;
            let mut fixes = Vec::new();
            for ((key, want), have) in fresh.into_iter().zip(stored) {
                let have = have.and_then(|v| v.doc);
                let parse = |b: &Option<Vec<u8>>| {
                    b.as_ref()
                        .map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                };
                let kind = match (parse(&want), parse(&have)) {
                    (None, None) => None,
                    (Some(_), None) => Some(DriftKind::Missing),
                    (None, Some(_)) => Some(DriftKind::Extra),
                    (Some(a), Some(b)) => (a != b).then_some(DriftKind::Different),
                };
                if let Some(kind) = kind {
                    report.drifted += 1;
                    if report.drift.len() < 100 {
                        report.drift.push(Drift {
                            key: key.clone(),
                            kind,
                        });
                    }
                    if repair {
                        fixes.push(Put {
                            key,
                            version,
                            doc: want,
                        });
                    }
                }
            }
            if !fixes.is_empty() {
                report.repaired += self.inner.store.put_many(view, fixes).await? as u64;
            }
            report.checked += chunk.len() as u64;
            if let Some(p) = progress {
                p(report.checked, total);
            }
        }
        metrics::gauge!("larder_views_drift", "view" => view.to_owned()).set(report.drifted as f64);
        Ok(report)
    }
}
