//! Workers: claim a batch of outbox entries, map them to view keys,
//! coalesce, recompute each key once, write the documents at a fresh
//! ticket, acknowledge. At least once; idempotent and versioned writes make
//! the repeats harmless.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use crate::error::Result;
use crate::outbox::{self, Entry};
use crate::source::Dialect;
use crate::store::Put;
use crate::view::RowChange;
use crate::views::Views;

// Views are the registry; the worker is their operations front. The
// constructor lives here so the registry does not depend on the worker.
impl Views {
    /// A worker with `config`.
    pub fn worker(&self, config: WorkerConfig) -> Worker {
        Worker::new(self.clone(), config)
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Entries claimed per batch (default 256).
    pub batch_size: usize,
    /// How long a claim lasts without renewal: a live worker renews its
    /// batch's claims every third of it, so a killed worker's entries are
    /// taken by another after at most this (default 10 s).
    pub lease: Duration,
    /// Attempts before an entry moves to the dead-letter table (default 5).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per attempt (default 200 ms).
    pub backoff: Duration,
    /// Longest retry delay (default 30 s).
    pub max_backoff: Duration,
    /// How often an idle worker looks for work (default 100 ms; 1 s on
    /// PostgreSQL, where NOTIFY wakes it at once; 50 ms on PostgreSQL when
    /// the triggers do not notify, [`crate::ViewsBuilder::wakeup`]).
    pub poll_interval: Option<Duration>,
    /// Keys computed at once (default 8).
    pub concurrency: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_size: 256,
            lease: Duration::from_secs(10),
            max_attempts: 5,
            backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            poll_interval: None,
            concurrency: 8,
        }
    }
}

impl WorkerConfig {
    /// Sets [`WorkerConfig::batch_size`].
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    /// Sets [`WorkerConfig::lease`].
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }
    /// Sets [`WorkerConfig::max_attempts`].
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets [`WorkerConfig::backoff`] and [`WorkerConfig::max_backoff`].
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max.max(first);
        self
    }
    /// Sets [`WorkerConfig::poll_interval`].
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = Some(d);
        self
    }
    /// Sets [`WorkerConfig::concurrency`].
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    fn retry_delay(&self, attempts: i64) -> Duration {
        let factor = 1u32 << attempts.clamp(0, 20);
        (self.backoff * factor).min(self.max_backoff)
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BatchReport {
    /// Entries claimed.
    pub entries: usize,
    /// Distinct (view, key) pairs they mapped to (after coalescing).
    pub keys: usize,
    /// Documents (and tombstones) that landed in the store.
    pub stored: usize,
    /// Entries acknowledged.
    pub acked: usize,
    /// Entries that failed and will be retried.
    pub retried: usize,
    /// Entries moved to the dead-letter table.
    pub dead: usize,
    /// For each acknowledged entry, milliseconds from its capture to its
    /// documents being in the store.
    pub lag_ms: Vec<i64>,
    /// The (view, key) pairs whose documents were recomputed and stored,
    /// e.g. to purge HTTP pages rendered from them.
    pub written: Vec<(String, String)>,
}

/// A (view, key) pair.
type ViewKey = (String, String);
/// A computed document (`None`: the key has none), or why not.
type Computed = std::result::Result<Option<Vec<u8>>, String>;

use larder_core::unix_ms_i64 as now_ms;

/// A view worker. Any number may run, in any number of processes, on one
/// outbox.
#[derive(Debug, Clone)]
pub struct Worker {
    views: Views,
    config: WorkerConfig,
}

impl Worker {
    pub(crate) fn new(views: Views, config: WorkerConfig) -> Worker {
        Worker { views, config }
    }

    /// Claims and processes one batch.
    pub async fn run_once(&self) -> Result<BatchReport> {
        let source = self.views.source();
        let entries = outbox::claim(source, self.config.batch_size, self.config.lease).await?;
        if entries.is_empty() {
            return Ok(BatchReport::default());
        }
        self.process(entries).await
    }

    /// Processes batches until none is due; returns the entries processed.
    pub async fn run_until_idle(&self) -> Result<u64> {
        let mut n = 0;
        loop {
            let r = self.run_once().await?;
            if r.entries == 0 {
                return Ok(n);
            }
            n += r.entries as u64;
        }
    }

    /// Runs until `shutdown` completes: batches back to back while there is
    /// work, then waits for a PostgreSQL NOTIFY or the poll interval.
    /// Errors (database or store down) are logged and retried; `on_batch`
    /// sees every non-empty batch's report.
    pub async fn run_with<S, F>(self, shutdown: S, mut on_batch: F)
    where
        S: Future<Output = ()>,
        F: FnMut(&BatchReport),
    {
        let wake = Arc::new(Notify::new());
        let polled = self.views.wakeup() == larder_changes::triggers::Wakeup::Poll;
        let listener = (self.views.source().dialect == Dialect::Postgres && !polled)
            .then(|| tokio::spawn(listen(self.views.source().url.clone(), wake.clone())));
        // Triggers without NOTIFY: polling is the only wake-up, so often.
        let poll = self.config.poll_interval.unwrap_or(match listener {
            Some(_) => Duration::from_secs(1),
            None if polled => Duration::from_millis(50),
            None => Duration::from_millis(100),
        });
        tokio::pin!(shutdown);
        let mut error_delay = Duration::from_millis(100);
        loop {
            let idle = match self.run_once().await {
                Ok(r) => {
                    error_delay = Duration::from_millis(100);
                    if r.entries > 0 {
                        on_batch(&r);
                    }
                    r.entries < self.config.batch_size
                }
                Err(e) => {
                    tracing::warn!(error = %e, "view worker: batch failed; retrying");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(error_delay) => {}
                    }
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if idle {
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            } else {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = std::future::ready(()) => {}
                }
            }
        }
        if let Some(l) = listener {
            l.abort();
        }
    }

    /// [`Worker::run_with`] without a batch callback.
    pub async fn run<S: Future<Output = ()>>(self, shutdown: S) {
        self.run_with(shutdown, |_| {}).await
    }

    async fn process(&self, entries: Vec<Entry>) -> Result<BatchReport> {
        let views = &self.views;
        let source = views.source();
        // Keep the claims while this batch runs, however slow its computes:
        // another worker may take them only once this one is gone.
        let heartbeat = Heartbeat::start(
            source.clone(),
            entries.iter().map(|e| e.id).collect(),
            self.config.lease,
        );
        let mut report = BatchReport {
            entries: entries.len(),
            ..BatchReport::default()
        };
        // Entry index → the (view, key) pairs it needs, or why it failed.
        let mut needs: Vec<Vec<(String, String)>> = vec![Vec::new(); entries.len()];
        let mut failed: HashMap<usize, String> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            match self.keys_of(e).await {
                Ok(k) => needs[i] = k,
                Err(msg) => {
                    failed.insert(i, msg);
                }
            }
        }
        // Coalesce: each (view, key) once per batch.
        let wanted: BTreeSet<(String, String)> = needs.iter().flatten().cloned().collect();
        report.keys = wanted.len();
        // The ticket comes after the claim (so after the changes committed)
        // and before any compute reads: see outbox.rs.
        let version = outbox::ticket(source).await?;
        let results: Vec<(ViewKey, Computed)> = futures_util::stream::iter(wanted)
            .map(|(view, key)| async move {
                let r = match views.def(&view) {
                    Some(def) => def.compute(source, &key).await.map_err(|e| e.to_string()),
                    None => Err(format!("no view named {view:?} is declared")),
                };
                ((view, key), r)
            })
            .buffer_unordered(self.config.concurrency)
            .collect()
            .await;
        let mut puts: BTreeMap<String, Vec<Put>> = BTreeMap::new();
        let mut compute_errors: HashMap<(String, String), String> = HashMap::new();
        for ((view, key), r) in results {
            match r {
                Ok(doc) => puts
                    .entry(view)
                    .or_default()
                    .push(Put { key, version, doc }),
                Err(msg) => {
                    metrics::counter!("larder_views_compute_errors_total", "view" => view.clone())
                        .increment(1);
                    tracing::warn!(view, key, error = %msg, "view worker: compute failed");
                    compute_errors.insert((view, key), msg);
                }
            }
        }
        for (view, p) in puts {
            let n = p.len();
            let keys: Vec<String> = p.iter().map(|p| p.key.clone()).collect();
            match views.store().put_many(&view, p).await {
                Ok(stored) => {
                    report.stored += stored;
                    report
                        .written
                        .extend(keys.into_iter().map(|k| (view.clone(), k)));
                    metrics::counter!("larder_views_documents_written_total", "view" => view.clone())
                        .increment(stored as u64);
                    metrics::counter!("larder_views_stale_writes_skipped_total", "view" => view)
                        .increment((n - stored) as u64);
                }
                Err(e) => {
                    // The store is down: hand everything back, counting no
                    // attempt (the entries are fine).
                    let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
                    outbox::release(source, &ids, self.config.backoff).await?;
                    return Err(e);
                }
            }
        }
        // From here on the entries are acknowledged or rescheduled: a late
        // renewal must not overwrite a retry's backoff.
        drop(heartbeat);
        let mut acked = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let err = failed.remove(&i).or_else(|| {
                needs[i]
                    .iter()
                    .find_map(|vk| compute_errors.get(vk).cloned())
            });
            match err {
                None => acked.push(i),
                Some(msg) => {
                    let dead = outbox::fail(
                        source,
                        e,
                        &msg,
                        self.config.max_attempts,
                        self.config.retry_delay(e.attempts),
                    )
                    .await?;
                    if dead {
                        report.dead += 1;
                        metrics::counter!("larder_views_dead_letters_total").increment(1);
                        tracing::error!(entry = e.id, error = %msg, "view worker: entry dead-lettered");
                    } else {
                        report.retried += 1;
                    }
                }
            }
        }
        let ids: Vec<i64> = acked.iter().map(|&i| entries[i].id).collect();
        outbox::ack(source, &ids).await?;
        let now = now_ms();
        for &i in &acked {
            let lag = (now - entries[i].created_ms).max(0);
            metrics::histogram!("larder_views_lag_seconds").record(lag as f64 / 1000.0);
            report.lag_ms.push(lag);
        }
        report.acked = acked.len();
        Ok(report)
    }

    /// The (view, key) pairs an entry affects, or why they cannot be known.
    async fn keys_of(&self, e: &Entry) -> std::result::Result<Vec<(String, String)>, String> {
        if let (Some(view), Some(key)) = (&e.view_name, &e.view_key) {
            return Ok(vec![(view.clone(), key.clone())]);
        }
        let Some(table) = &e.table_name else {
            return Err("outbox entry has neither a view key nor a table".to_owned());
        };
        let parse = |s: &Option<String>| -> std::result::Result<_, String> {
            match s {
                None => Ok(None),
                Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
                    Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
                    Ok(_) => Err("captured row is not a JSON object".to_owned()),
                    Err(e) => Err(format!("captured row is not JSON: {e}")),
                },
            }
        };
        let change = RowChange {
            table: table.to_ascii_lowercase(),
            old: parse(&e.old_row)?,
            new: parse(&e.new_row)?,
        };
        let mut out = Vec::new();
        for (view, dep) in self.views.dependents(&change.table) {
            let keys = dep
                .keys(self.views.source(), &change)
                .await
                .map_err(|e| format!("mapping a {} change for view {view:?}: {e}", change.table))?;
            out.extend(keys.into_iter().map(|k| (view.to_owned(), k)));
        }
        Ok(out)
    }
}

/// Renews a batch's claims every third of the lease until dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(source: crate::source::Source, ids: Vec<i64>, lease: Duration) -> Heartbeat {
        let every = (lease / 3).max(Duration::from_millis(50));
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = outbox::release(&source, &ids, lease).await {
                    tracing::warn!(error = %e, "view worker: could not renew claims");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Wakes the worker on every NOTIFY, and once after each (re)connection,
/// since notifications sent meanwhile are lost.
#[cfg(feature = "postgres")]
async fn listen(url: String, wake: Arc<Notify>) {
    larder_changes::listen_postgres(&url, crate::schema::CHANNEL, "view worker", |_| {
        wake.notify_one();
        std::future::ready(std::ops::ControlFlow::Continue(()))
    })
    .await;
}

/// Without the `postgres` feature no source is PostgreSQL
/// ([`Source::connect`](crate::Source::connect) refuses the URL), so
/// nothing ever calls this.
#[cfg(not(feature = "postgres"))]
async fn listen(_: String, _: Arc<Notify>) {}
