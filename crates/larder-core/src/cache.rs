//! The typed `Cache` handle.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::value::CacheValue;
use bytes::Bytes;
use metrics::Counter;
use serde::de::DeserializeOwned;

use crate::backend::{Backend, Capabilities, ClearScope, LeaseGrant};
use crate::breaker::{Admit, Breaker, BreakerState};
use crate::envelope::{self, EnvelopeConfig};
use crate::error::{Error, Result};
use crate::flight::Flights;
use crate::key::KeyPolicy;
use crate::ttl::{Expiry, Resolved, Ttl};

/// Django's default timeout: 300 seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Default deadline of one backend call to a network cache (Redis,
/// memcached): 100 ms. Persistent stores (file, SQL), whose calls queue for
/// the disk, a blocking thread or a row lock, get
/// [`DEFAULT_STORE_DEADLINE`]; in-process backends (memory, dummy) none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(100);
/// Default deadline of one call to a persistent store (file, SQL): 1 s.
pub const DEFAULT_STORE_DEADLINE: Duration = Duration::from_secs(1);
/// Default limit on one encoded value: 128 MiB. A guard against accidents;
/// raise it with [`CacheBuilder::max_value_bytes`](crate::CacheBuilder::max_value_bytes).
pub const DEFAULT_MAX_VALUE_BYTES: usize = 128 << 20;

/// A cache: typed values over any [`Backend`].
///
/// Cheap to clone (one `Arc`); clones share the backend. Values are any serde
/// type; they are stored in a small [envelope](crate::envelope) (postcard by
/// default), integers as bare decimals so `incr` works natively on every
/// backend.
///
/// Semantics follow Django's cache API, with its weak spots fixed:
/// a stored `None`/`null` is a hit (`get::<Option<T>>` returns `Some(None)`);
/// `add` stores only when the key is absent; `incr` on a missing key is
/// [`Error::NotFound`], is atomic and keeps the TTL; `delete` says whether
/// something was deleted; `get_many` returns only the hits; `clear` removes
/// only this cache's prefix.
///
/// A corrupt, truncated or foreign entry reads as a miss with a warning, never
/// an error. Backend failures *are* errors on this raw API; see
/// [`Cache::get_or_compute`] for the call that keeps working when the cache is
/// down.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use larder_core::{Cache, DummyBackend, Ttl};
/// let cache = Cache::builder(DummyBackend).key_prefix("app").build()?;
/// cache.set("answer", &42, Ttl::secs(60)).await?;
/// // The dummy backend stores nothing.
/// assert_eq!(cache.get::<i64>("answer").await?, None);
/// # Ok::<(), larder_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
    pub(crate) version: u64,
    /// `"prefix:version:"`, precomputed so building a key is one copy.
    pub(crate) head: Option<Arc<str>>,
}

pub(crate) struct Inner {
    /// Computations in progress in this process, by storage key.
    pub(crate) flights: Flights,
    /// Stale-set protection without leases: the backend's generations
    /// when it shares them between caches, else this cache's own.
    pub(crate) gens: Arc<crate::backend::WriteGenerations>,
    pub(crate) breaker: Breaker,
    /// Degradations (fail-open reads, writes not done) of this cache,
    /// logged once per outage and summarised while it lasts.
    pub(crate) degraded: crate::FailureLog,
    pub(crate) deadline: Option<Duration>,
    pub(crate) fail_open: bool,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) keys: KeyPolicy,
    pub(crate) default_ttl: Expiry,
    pub(crate) envelope: EnvelopeConfig,
    pub(crate) max_value_bytes: usize,
    pub(crate) name: Arc<str>,
    pub(crate) default_version: u64,
    pub(crate) counters: Counters,
}

pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    corrupt: Counter,
    errors: Counter,
    timeouts: Counter,
    pub(crate) fail_open: Counter,
    pub(crate) merged: Counter,
    pub(crate) stale_swr: Counter,
    pub(crate) stale_lease: Counter,
    pub(crate) stale_error: Counter,
    pub(crate) early_refresh: Counter,
    pub(crate) stale_sets_prevented: Counter,
    pub(crate) lease_waits: Counter,
    /// Writes refused (too large, not encodable) or failed, after which
    /// the old value was removed.
    failed_writes: Counter,
}

impl Counters {
    pub(crate) fn new(name: &Arc<str>) -> Self {
        let label = name.to_string();
        let stale = |reason: &'static str| metrics::counter!("larder_cache_stale_served_total", "cache" => label.clone(), "reason" => reason);
        Counters {
            hits: metrics::counter!("larder_cache_hits_total", "cache" => label.clone()),
            misses: metrics::counter!("larder_cache_misses_total", "cache" => label.clone()),
            corrupt: metrics::counter!("larder_cache_corrupt_entries_total", "cache" => label.clone()),
            errors: metrics::counter!("larder_cache_backend_errors_total", "cache" => label.clone()),
            timeouts: metrics::counter!("larder_cache_backend_timeouts_total", "cache" => label.clone()),
            fail_open: metrics::counter!("larder_cache_fail_open_total", "cache" => label.clone()),
            merged: metrics::counter!("larder_cache_single_flight_merged_total", "cache" => label.clone()),
            stale_swr: stale("stale_while_revalidate"),
            stale_lease: stale("lease_held"),
            stale_error: stale("stale_if_error"),
            early_refresh: metrics::counter!("larder_cache_early_refresh_total", "cache" => label.clone()),
            stale_sets_prevented: metrics::counter!("larder_cache_stale_sets_prevented_total", "cache" => label.clone()),
            lease_waits: metrics::counter!("larder_cache_lease_waits_total", "cache" => label.clone()),
            failed_writes: metrics::counter!("larder_cache_failed_writes_total", "cache" => label),
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("backend", &self.inner.backend.name())
            .field("keys", &self.inner.keys)
            .field("version", &self.version)
            .field("default_ttl", &self.inner.default_ttl)
            .finish()
    }
}

impl Cache {
    /// A cache over `backend` with every default.
    pub fn new(backend: impl Backend) -> Cache {
        Self::builder(backend)
            .build()
            .expect("the default configuration is valid")
    }

    /// The same cache, using `version` for keys instead of the default
    /// (Django's `version=` argument): `cache.version(2).get("k")`.
    pub fn version(&self, version: u64) -> Cache {
        Cache {
            inner: self.inner.clone(),
            version,
            head: self.inner.keys.head(version),
        }
    }

    /// The key version this handle uses.
    pub fn current_version(&self) -> u64 {
        self.version
    }

    /// The cache's name in logs and metrics.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The backend this cache stores in.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The backend's abilities.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.backend.capabilities()
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        self.inner.keys.prefix()
    }

    /// The storage key for `key` at this handle's version (Django's `make_key`).
    pub fn make_key(&self, key: &str) -> Result<String> {
        self.inner.keys.make_key(key, self.version)
    }

    pub(crate) fn resolve(&self, ttl: Ttl) -> Resolved {
        ttl.resolve(self.inner.default_ttl)
    }

    fn encode<T: CacheValue + ?Sized>(&self, value: &T) -> Result<Bytes> {
        let bytes = envelope::encode(value, &self.inner.envelope, None)?;
        // Before the size check: an unreadable type is the clearer error.
        T::check_reads_back(&bytes)?;
        self.check_size(&bytes)?;
        Ok(bytes)
    }

    pub(crate) fn check_size(&self, bytes: &Bytes) -> Result<()> {
        if bytes.len() > self.inner.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: bytes.len(),
                limit: self.inner.max_value_bytes,
            });
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<Option<T>> {
        match envelope::decode::<T>(bytes) {
            Ok((v, None)) => {
                self.inner.counters.hits.increment(1);
                Ok(Some(v))
            }
            // Written by get_or_compute: past its soft expiry it is kept only
            // for stale serving, and a plain read does not see it.
            Ok((v, Some(meta))) => {
                if meta.soft_expiry_unix_ms != 0 && unix_ms() >= meta.soft_expiry_unix_ms {
                    self.inner.counters.misses.increment(1);
                    Ok(None)
                } else {
                    self.inner.counters.hits.increment(1);
                    Ok(Some(v))
                }
            }
            Err(e) => self.unreadable::<T>(key, &e).map(|()| None),
        }
    }

    /// An entry that does not decode as `T`: a logged miss when the entry
    /// is corrupt, foreign or of another type; an error when `T` itself can
    /// never be read back with the codec (a cache that would silently
    /// never hit).
    pub(crate) fn unreadable<T>(&self, key: &str, e: &envelope::DecodeError) -> Result<()> {
        if matches!(e, envelope::DecodeError::NeedsSelfDescribing(_)) {
            return Err(Error::CodecCannotRead {
                type_name: std::any::type_name::<T>(),
            });
        }
        self.inner.counters.corrupt.increment(1);
        self.inner.counters.misses.increment(1);
        tracing::warn!(cache = %self.inner.name, key, error = %e, "unreadable cache entry treated as a miss");
        Ok(())
    }

    fn note<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_backend_failure() {
                self.inner.counters.errors.increment(1);
            }
        }
        r
    }

    /// Runs one backend call through the circuit breaker and the deadline.
    pub(crate) async fn call<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        let inner = &*self.inner;
        let admit = inner.breaker.admit();
        if admit == Admit::No {
            return Err(Error::CircuitOpen {
                backend: inner.backend.name(),
            });
        }
        let result = match inner.deadline {
            None => fut.await,
            Some(after) => match tokio::time::timeout(after, fut).await {
                Ok(r) => r,
                Err(_) => {
                    inner.counters.timeouts.increment(1);
                    Err(Error::Timeout {
                        backend: inner.backend.name(),
                        after,
                    })
                }
            },
        };
        match &result {
            Err(e) if e.is_backend_failure() => {
                inner.counters.errors.increment(1);
                inner.breaker.failure(admit, &inner.name, e);
            }
            _ => {
                inner.breaker.success(admit, &inner.name);
                if result.is_ok() {
                    inner.degraded.success();
                }
            }
        }
        result
    }

    /// Turns a backend failure on a read into a miss when the cache is
    /// fail-open.
    fn read_result<T>(&self, key: &str, r: Result<T>, miss: impl FnOnce() -> T) -> Result<T> {
        match r {
            Err(e) if self.inner.fail_open && e.is_backend_failure() => {
                self.inner.counters.fail_open.increment(1);
                self.log_fail_open(key, &e, "cache read failed; treated as a miss");
                Ok(miss())
            }
            other => other,
        }
    }

    /// Logs a degradation: at warn level when an outage starts, then a
    /// summary every 10 s while it lasts and a line when it ends (the
    /// detail of each at debug level), so a dead server behind a busy
    /// service does not flood the logs.
    pub(crate) fn log_fail_open(&self, key: &str, e: &Error, what: &str) {
        tracing::debug!(cache = %self.inner.name, key, error = %e, "{what}");
        self.inner
            .degraded
            .failure(&format_args!("{}: {what}: {e}", self.inner.name));
    }

    /// Marks a write to `skey` (see [`WriteGenerations`](crate::backend::WriteGenerations)).
    pub(crate) fn bump(&self, skey: &str) {
        self.inner.gens.bump(skey);
    }

    pub(crate) fn generation(&self, skey: &str) -> u64 {
        self.inner.gens.get(skey)
    }

    fn bump_all(&self) {
        self.inner.gens.bump_all();
    }

    /// What the circuit breaker does with calls now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// The deadline of one backend call, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.inner.deadline
    }

    /// Reads a value. `Ok(None)` on a miss, and also for an entry that cannot
    /// be decoded as `T` (logged and counted as corrupt).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        // In-process backends answer synchronously: no key allocation and no
        // boxed future on that path (it is most of a memory hit's cost).
        if let Some(answer) = self.get_immediate(key) {
            return answer;
        }
        let skey = self.make_key(key)?;
        let raw = self.call(self.inner.backend.get(&skey)).await;
        let raw = self.read_result(key, raw, || None)?;
        self.finish_get(key, raw)
    }

    /// Reads a value like [`get`](Self::get), decoding it only when the
    /// stored bytes differ from those `memo` last decoded for this key (see
    /// [`DecodedMemo`](crate::DecodedMemo): the backend is read every time,
    /// so the answer is always the backend's). For hot entries that are
    /// costly to decode; the HTTP cache keeps its responses this way.
    pub async fn get_memoized<T: DeserializeOwned>(
        &self,
        key: &str,
        memo: &crate::DecodedMemo<T>,
    ) -> Result<Option<Arc<T>>> {
        let backend = &self.inner.backend;
        let immediate =
            self.inner
                .keys
                .with_key(self.head.as_deref(), key, self.version, |skey| {
                    backend
                        .get_immediate(skey)
                        .map(|r| r.and_then(|raw| self.finish_memoized(key, skey, raw, memo)))
                })?;
        if let Some(answer) = immediate {
            return self.note(answer);
        }
        let skey = self.make_key(key)?;
        let raw = self.call(backend.get(&skey)).await;
        let raw = self.read_result(key, raw, || None)?;
        self.finish_memoized(key, &skey, raw, memo)
    }

    fn finish_memoized<T: DeserializeOwned>(
        &self,
        key: &str,
        skey: &str,
        raw: Option<Bytes>,
        memo: &crate::DecodedMemo<T>,
    ) -> Result<Option<Arc<T>>> {
        let Some(raw) = raw else {
            self.inner.counters.misses.increment(1);
            return Ok(None);
        };
        let (value, soft) = match memo.find(skey, &raw) {
            Some(found) => found,
            None => match envelope::decode::<T>(&raw) {
                Ok((v, meta)) => {
                    let soft = meta.map_or(0, |m| m.soft_expiry_unix_ms);
                    let v = Arc::new(v);
                    memo.keep(skey, raw, soft, v.clone());
                    (v, soft)
                }
                Err(e) => return self.unreadable::<T>(key, &e).map(|()| None),
            },
        };
        // Past its soft expiry (get_or_compute's stale window): a miss.
        if soft != 0 && unix_ms() >= soft {
            self.inner.counters.misses.increment(1);
            return Ok(None);
        }
        self.inner.counters.hits.increment(1);
        Ok(Some(value))
    }

    fn get_immediate<T: DeserializeOwned>(&self, key: &str) -> Option<Result<Option<T>>> {
        let backend = &self.inner.backend;
        let answer = self
            .inner
            .keys
            .with_key(self.head.as_deref(), key, self.version, |skey| {
                backend.get_immediate(skey)
            });
        match answer {
            Err(e) => Some(Err(e)),
            Ok(None) => None,
            Ok(Some(Err(e))) => Some(self.note(Err(e))),
            Ok(Some(Ok(raw))) => Some(self.finish_get(key, raw)),
        }
    }

    fn finish_get<T: DeserializeOwned>(&self, key: &str, raw: Option<Bytes>) -> Result<Option<T>> {
        match raw {
            Some(bytes) => self.decode(key, &bytes),
            None => {
                self.inner.counters.misses.increment(1);
                Ok(None)
            }
        }
    }

    /// Stores a value. A zero TTL removes the key instead (Django semantics).
    pub async fn set<T: CacheValue + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl>,
    ) -> Result<()> {
        let skey = self.make_key(key)?;
        self.bump(&skey);
        match self.resolve(ttl.into()) {
            Resolved::ExpireNow => {
                self.call(self.inner.backend.delete(&skey)).await?;
                Ok(())
            }
            Resolved::Store(exp) => {
                let bytes = match self.encode(value) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        self.remove_superseded(&[&skey], &e).await;
                        return Err(e);
                    }
                };
                let r = self.call(self.inner.backend.set(&skey, bytes, exp)).await;
                if let Err(e) = &r {
                    self.remove_superseded(&[&skey], e).await;
                }
                r
            }
        }
    }

    /// After a write that was refused or failed: removes the values it was
    /// meant to replace, so a failed write never leaves a superseded value
    /// readable (Django's memcached backend does the same). Best effort:
    /// one call, bounded by the deadline, and outside the circuit breaker
    /// so that a dead server is not counted twice for one call.
    async fn remove_superseded(&self, skeys: &[&str], why: &Error) {
        if skeys.is_empty() {
            return;
        }
        self.inner
            .counters
            .failed_writes
            .increment(skeys.len() as u64);
        if matches!(why, Error::CircuitOpen { .. }) {
            return;
        }
        let backend = &self.inner.backend;
        let delete = async {
            match skeys {
                [one] => backend.delete(one).await.map(u64::from),
                many => backend.delete_many(many).await,
            }
        };
        let r = match self.inner.deadline {
            None => delete.await,
            Some(after) => {
                tokio::time::timeout(after, delete)
                    .await
                    .unwrap_or(Err(Error::Timeout {
                        backend: backend.name(),
                        after,
                    }))
            }
        };
        if let Err(e) = r {
            tracing::debug!(cache = %self.inner.name, keys = skeys.len(), error = %e, "could not remove the values a failed write was to replace");
        }
    }

    /// Stores a value only if the key is absent or expired; returns whether
    /// it stored. With a zero TTL nothing is stored, and the result says
    /// whether it *would* have been.
    pub async fn add<T: CacheValue + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl>,
    ) -> Result<bool> {
        let skey = self.make_key(key)?;
        self.bump(&skey);
        match self.resolve(ttl.into()) {
            Resolved::ExpireNow => Ok(!self.present(&skey).await?),
            Resolved::Store(exp) => {
                let bytes = self.encode(value)?;
                if self
                    .call(self.inner.backend.add(&skey, bytes.clone(), exp))
                    .await?
                {
                    return Ok(true);
                }
                // Taken, but perhaps only by an entry in its stale window,
                // which is absent to `add` as to `get`: replace that one.
                let generation = self.generation(&skey);
                let Some(raw) = self.call(self.inner.backend.get(&skey)).await? else {
                    return self.call(self.inner.backend.add(&skey, bytes, exp)).await;
                };
                if !envelope::is_soft_expired(&raw, unix_ms()) {
                    return Ok(false);
                }
                self.replace_if_unchanged(&skey, raw, generation, bytes, exp)
                    .await
            }
        }
    }

    /// Whether a live entry is under `skey` by the one rule every plain
    /// call shares: in the backend and not past the soft expiry that
    /// `get_or_compute` wrote (its stale window is for stale readers).
    async fn present(&self, skey: &str) -> Result<bool> {
        let raw = self.call(self.inner.backend.get(skey)).await?;
        Ok(raw.is_some_and(|raw| !envelope::is_soft_expired(&raw, unix_ms())))
    }

    /// Replaces the entry `seen` under `skey` with `bytes` unless someone
    /// wrote or deleted it since; returns whether it did. With leases, a
    /// lease taken on the seen entry makes it a compare-and-set across
    /// processes (a lease held by someone else means a refresh is about to
    /// write: we lose); without, the write generation read before `seen`
    /// is claimed (an in-process compare-and-set).
    async fn replace_if_unchanged(
        &self,
        skey: &str,
        seen: Bytes,
        generation: u64,
        bytes: Bytes,
        exp: Expiry,
    ) -> Result<bool> {
        let backend = &self.inner.backend;
        if self.capabilities().leases {
            let lease_time = Duration::from_secs(5);
            return match self
                .call(backend.lease_acquire(skey, lease_time, Some(seen)))
                .await?
            {
                LeaseGrant::Won(lease) => {
                    self.call(backend.lease_fill(skey, bytes, exp, &lease))
                        .await
                }
                LeaseGrant::Held => Ok(false),
            };
        }
        if !self.inner.gens.claim(skey, generation) {
            return Ok(false);
        }
        self.call(backend.set(skey, bytes, exp)).await?;
        Ok(true)
    }

    /// Reads several values in one backend operation where the backend can;
    /// the map holds only the hits, under the caller's keys.
    pub async fn get_many<T: DeserializeOwned, K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<HashMap<String, T>> {
        let raw = self.get_many_raw(keys).await?;
        let mut out = HashMap::with_capacity(raw.len());
        for (key, slot) in keys.iter().zip(raw) {
            match slot {
                Some(bytes) => {
                    if let Some(v) = self.decode(key.as_ref(), &bytes)? {
                        out.insert(key.as_ref().to_owned(), v);
                    }
                }
                None => self.inner.counters.misses.increment(1),
            }
        }
        Ok(out)
    }

    /// Counts one lookup in this cache's hit and miss counters
    /// (`larder_cache_hits_total` / `larder_cache_misses_total`), for a
    /// layer that reads entries with [`get_many_raw`](Self::get_many_raw)
    /// and decides itself whether one answers (larder-query's stamped
    /// results, read in one round trip with their generations).
    pub fn record_lookup(&self, hit: bool) {
        if hit {
            self.inner.counters.hits.increment(1);
        } else {
            self.inner.counters.misses.increment(1);
        }
    }

    /// The stored bytes of several keys, undecoded, one slot per key in
    /// order (`None`: absent). For metadata that must fail safe, where an
    /// entry that is there but unreadable means something else than one
    /// that is absent (decode with [`envelope::decode`](crate::envelope::decode)).
    /// Entries in a `get_or_compute` stale window are included.
    pub async fn get_many_raw<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let skeys = keys
            .iter()
            .map(|k| self.make_key(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&str> = skeys.iter().map(String::as_str).collect();
        let raw = self.call(self.inner.backend.get_many(&refs)).await;
        self.read_result("(get_many)", raw, || vec![None; refs.len()])
    }

    /// Stores several values with one TTL, in one backend operation where the
    /// backend can. Returns the caller's keys the backend failed to store.
    pub async fn set_many<T, K, V>(
        &self,
        items: &[(K, V)],
        ttl: impl Into<Ttl>,
    ) -> Result<Vec<String>>
    where
        T: CacheValue + ?Sized,
        K: AsRef<str>,
        V: Borrow<T>,
    {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let skeys = items
            .iter()
            .map(|(k, _)| self.make_key(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        for skey in &skeys {
            self.bump(skey);
        }
        match self.resolve(ttl.into()) {
            Resolved::ExpireNow => {
                let refs: Vec<&str> = skeys.iter().map(String::as_str).collect();
                self.call(self.inner.backend.delete_many(&refs)).await?;
                Ok(Vec::new())
            }
            Resolved::Store(exp) => {
                let mut entries = Vec::with_capacity(items.len());
                for ((_, v), skey) in items.iter().zip(&skeys) {
                    match self.encode(v.borrow()) {
                        Ok(bytes) => entries.push((skey.as_str(), bytes)),
                        Err(e) => {
                            // Nothing of the batch is written; the refused
                            // key's old value must not stay readable.
                            self.remove_superseded(&[skey], &e).await;
                            return Err(e);
                        }
                    }
                }
                let failed = match self.call(self.inner.backend.set_many(&entries, exp)).await {
                    Ok(failed) => failed,
                    Err(e) => {
                        let all: Vec<&str> = skeys.iter().map(String::as_str).collect();
                        self.remove_superseded(&all, &e).await;
                        return Err(e);
                    }
                };
                let not_stored: Vec<&str> = failed.iter().map(String::as_str).collect();
                let e = Error::backend(self.inner.backend.name(), "not stored");
                self.remove_superseded(&not_stored, &e).await;
                // Map storage keys back to the caller's keys.
                Ok(items
                    .iter()
                    .zip(&skeys)
                    .filter(|(_, s)| failed.iter().any(|f| f == *s))
                    .map(|((k, _), _)| k.as_ref().to_owned())
                    .collect())
            }
        }
    }

    /// Removes a key; returns whether it was there.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let skey = self.make_key(key)?;
        self.bump(&skey);
        self.call(self.inner.backend.delete(&skey)).await
    }

    /// Removes several keys; returns how many were there.
    pub async fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let skeys = keys
            .iter()
            .map(|k| self.make_key(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        for skey in &skeys {
            self.bump(skey);
        }
        let refs: Vec<&str> = skeys.iter().map(String::as_str).collect();
        self.call(self.inner.backend.delete_many(&refs)).await
    }

    /// Whether a live entry exists for the key.
    pub async fn has_key(&self, key: &str) -> Result<bool> {
        let skey = self.make_key(key)?;
        let r = self.present(&skey).await;
        self.read_result(key, r, || false)
    }

    /// Adds `delta` to a stored integer atomically, keeping its TTL; returns
    /// the new value. [`Error::NotFound`] when the key is absent,
    /// [`Error::NotANumber`] when the value is not an integer.
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        let skey = self.make_key(key)?;
        self.bump(&skey);
        self.call(self.inner.backend.incr(&skey, delta))
            .await
            .map_err(|e| e.with_user_key(key))
    }

    /// Subtracts `delta`; see [`Cache::incr`].
    pub async fn decr(&self, key: &str, delta: i64) -> Result<i64> {
        let neg = delta.checked_neg().ok_or_else(|| Error::Overflow {
            key: key.to_owned(),
        })?;
        self.incr(key, neg).await
    }

    /// Gives a live entry a new TTL; returns whether there was one. A zero
    /// TTL expires it at once.
    pub async fn touch(&self, key: &str, ttl: impl Into<Ttl>) -> Result<bool> {
        let skey = self.make_key(key)?;
        let backend = &self.inner.backend;
        let exp = match self.resolve(ttl.into()) {
            Resolved::ExpireNow => {
                self.bump(&skey);
                return self.call(backend.delete(&skey)).await;
            }
            Resolved::Store(exp) => exp,
        };
        // An entry written by get_or_compute carries its soft expiry: touch
        // moves it (and the stale window ends with the new TTL), and one
        // already past it is absent, as for every plain call.
        let generation = self.generation(&skey);
        let Some(raw) = self.call(backend.get(&skey)).await? else {
            return Ok(false);
        };
        let now = unix_ms();
        if envelope::is_soft_expired(&raw, now) {
            return Ok(false);
        }
        let soft = match exp {
            Expiry::Never => 0,
            Expiry::After(d) => {
                now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }
        };
        match envelope::with_soft_expiry(&raw, soft) {
            None => self.call(backend.touch(&skey, exp)).await,
            Some(moved) => {
                // Lost to a write or delete in between: the entry was
                // present when touched, and what replaced it stands.
                self.replace_if_unchanged(&skey, raw, generation, moved, exp)
                    .await?;
                Ok(true)
            }
        }
    }

    /// Removes this cache's entries: only keys under its prefix when it has
    /// one, everything in the backend when the prefix is empty (Django's
    /// behaviour). Refuses with [`Error::Unsupported`] rather than wiping
    /// other caches' data when the backend cannot clear by prefix, and with
    /// [`Error::Config`] when a custom key function hides which keys are ours
    /// and a prefix is set.
    pub async fn clear(&self) -> Result<()> {
        let keys = &self.inner.keys;
        if keys.has_key_fn() && !keys.prefix().is_empty() {
            return Err(Error::config(
                "clear() cannot tell this cache's keys apart when a custom key function is set; clear the backend with clear_all()",
            ));
        }
        self.bump_all();
        match keys.clear_scope() {
            None => self.call(self.inner.backend.clear(ClearScope::All)).await,
            Some(prefix) => {
                if !self.capabilities().prefix_clear {
                    return Err(Error::Unsupported {
                        backend: self.inner.backend.name(),
                        operation: "clearing one prefix",
                    });
                }
                self.call(self.inner.backend.clear(ClearScope::Prefix(&prefix)))
                    .await
            }
        }
    }

    /// Removes everything in the backend, whatever cache wrote it.
    pub async fn clear_all(&self) -> Result<()> {
        self.bump_all();
        self.call(self.inner.backend.clear(ClearScope::All)).await
    }

    /// Moves a key to version `current + delta` and returns the new version
    /// (Django's `incr_version`). The moved entry gets the default TTL, as in
    /// Django, because backends do not report remaining lifetimes.
    pub async fn incr_version(&self, key: &str, delta: i64) -> Result<u64> {
        let new_version = if delta >= 0 {
            self.version.checked_add(delta as u64)
        } else {
            self.version.checked_sub(delta.unsigned_abs())
        }
        .ok_or_else(|| {
            Error::Config(format!(
                "version {} + {delta} is out of range",
                self.version
            ))
        })?;
        let old_key = self.make_key(key)?;
        let new_key = self.inner.keys.make_key(key, new_version)?;
        let backend = &self.inner.backend;
        let value = self
            .call(backend.get(&old_key))
            .await?
            .ok_or_else(|| Error::NotFound {
                key: key.to_owned(),
            })?;
        self.bump(&new_key);
        self.call(backend.set(&new_key, value, self.inner.default_ttl))
            .await?;
        self.bump(&old_key);
        self.call(backend.delete(&old_key)).await?;
        Ok(new_version)
    }

    /// Moves a key to version `current - delta`; see [`Cache::incr_version`].
    pub async fn decr_version(&self, key: &str, delta: i64) -> Result<u64> {
        let neg = delta
            .checked_neg()
            .ok_or_else(|| Error::Config(format!("version delta {delta} is out of range")))?;
        self.incr_version(key, neg).await
    }

    /// Releases the backend's connections and files; the cache stays
    /// usable and reconnects on its next call, on every backend.
    pub async fn close(&self) -> Result<()> {
        self.inner.backend.close().await
    }

    /// The version new handles use when none is given.
    pub fn default_version(&self) -> u64 {
        self.inner.default_version
    }
}

use crate::time::unix_ms;
