//! The typed `Cache` handle.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics::Counter;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{Backend, Capabilities, ClearScope};
use crate::envelope::{self, Codec, EnvelopeConfig};
use crate::error::{Error, Result};
use crate::key::{KeyFn, KeyPolicy};
use crate::ttl::{Expiry, Resolved, Ttl};
use crate::url::CacheUrl;

/// Django's default timeout: 300 seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Default limit on one encoded value: 128 MiB. A guard against accidents;
/// raise it with [`CacheBuilder::max_value_bytes`].
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
    inner: Arc<Inner>,
    version: u64,
    /// `"prefix:version:"`, precomputed so building a key is one copy.
    head: Option<Arc<str>>,
}

struct Inner {
    /// Computations in progress in this process, by storage key.
    flights: std::sync::Mutex<HashMap<String, Arc<Flight>>>,
    backend: Arc<dyn Backend>,
    keys: KeyPolicy,
    default_ttl: Expiry,
    envelope: EnvelopeConfig,
    max_value_bytes: usize,
    name: Arc<str>,
    default_version: u64,
    counters: Counters,
}

struct Counters {
    hits: Counter,
    misses: Counter,
    corrupt: Counter,
    errors: Counter,
    merged: Counter,
}

/// One computation shared by concurrent `get_or_compute` callers.
struct Flight {
    done: tokio::sync::watch::Sender<Option<Outcome>>,
}

#[derive(Clone)]
enum Outcome {
    /// The encoded value.
    Value(Bytes),
    /// The leader's loader failed.
    Failed(String),
    /// The leader was dropped before finishing: someone else must compute.
    Abandoned,
}

/// Publishes the leader's outcome and retires the flight, also when the
/// leader's future is dropped half way.
struct FlightGuard<'a> {
    cache: &'a Cache,
    key: String,
    flight: Arc<Flight>,
    published: bool,
}

impl FlightGuard<'_> {
    fn publish(&mut self, outcome: Outcome) {
        self.retire();
        let _ = self.flight.done.send(Some(outcome));
        self.published = true;
    }

    fn retire(&self) {
        let mut flights = self
            .cache
            .inner
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if !self.published {
            self.retire();
            let _ = self.flight.done.send(Some(Outcome::Abandoned));
        }
    }
}

impl Counters {
    fn new(name: &Arc<str>) -> Self {
        let label = name.to_string();
        Counters {
            hits: metrics::counter!("larder_cache_hits_total", "cache" => label.clone()),
            misses: metrics::counter!("larder_cache_misses_total", "cache" => label.clone()),
            corrupt: metrics::counter!("larder_cache_corrupt_entries_total", "cache" => label.clone()),
            errors: metrics::counter!("larder_cache_backend_errors_total", "cache" => label.clone()),
            merged: metrics::counter!("larder_cache_single_flight_merged_total", "cache" => label),
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

/// Configures and builds a [`Cache`].
#[must_use]
pub struct CacheBuilder {
    backend: Arc<dyn Backend>,
    name: Option<String>,
    prefix: String,
    key_fn: Option<KeyFn>,
    hash_long_keys: bool,
    version: u64,
    default_ttl: Ttl,
    envelope: EnvelopeConfig,
    max_value_bytes: usize,
}

impl CacheBuilder {
    /// Names the cache in logs and metrics (default: the backend's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Prefix of every storage key (Django's `KEY_PREFIX`). May not contain `:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// Default version of keys (Django's `VERSION`, default 1).
    pub fn version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }
    /// Custom key function `(key, prefix, version) -> storage key`.
    pub fn key_fn(mut self, f: impl Fn(&str, &str, u64) -> String + Send + Sync + 'static) -> Self {
        self.key_fn = Some(Arc::new(f));
        self
    }
    /// Hash storage keys longer than 250 bytes instead of rejecting them.
    pub fn hash_long_keys(mut self, on: bool) -> Self {
        self.hash_long_keys = on;
        self
    }
    /// TTL used for [`Ttl::Default`] (default 300 s). `Ttl::Never` makes
    /// entries live until evicted; a zero TTL is refused.
    pub fn default_ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        self.default_ttl = ttl.into();
        self
    }
    /// Codec for new values (default postcard).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.envelope.codec = codec;
        self
    }
    /// Compress payloads larger than this with lz4 (default 4096; `None` never).
    pub fn compress_above(mut self, bytes: Option<usize>) -> Self {
        self.envelope.compress_above = bytes;
        self
    }
    /// Largest encoded value accepted (default 128 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Applies the cache-level options taken from a URL.
    pub fn url_options(mut self, o: UrlOptions) -> Self {
        if let Some(p) = o.key_prefix {
            self.prefix = p;
        }
        if let Some(v) = o.version {
            self.version = v;
        }
        if let Some(t) = o.timeout {
            self.default_ttl = t;
        }
        if let Some(c) = o.codec {
            self.envelope.codec = c;
        }
        if let Some(c) = o.compress_above {
            self.envelope.compress_above = c;
        }
        if let Some(h) = o.hash_long_keys {
            self.hash_long_keys = h;
        }
        if let Some(m) = o.max_value_bytes {
            self.max_value_bytes = m;
        }
        if let Some(n) = o.name {
            self.name = Some(n);
        }
        self
    }

    /// Validates the configuration and builds the cache.
    pub fn build(self) -> Result<Cache> {
        let mut keys = KeyPolicy::default()
            .with_prefix(&self.prefix)?
            .with_hash_long_keys(self.hash_long_keys);
        if let Some(f) = self.key_fn {
            keys = keys.with_key_fn(f);
        }
        let default_ttl = match self.default_ttl {
            Ttl::Default => Expiry::After(DEFAULT_TTL),
            Ttl::Never => Expiry::Never,
            Ttl::After(d) if d.is_zero() => {
                return Err(Error::config(
                    "a default TTL of zero would expire every entry at once; use a positive TTL or Ttl::Never",
                ))
            }
            Ttl::After(d) => Expiry::After(d),
        };
        let name: Arc<str> = Arc::from(self.name.as_deref().unwrap_or(self.backend.name()));
        let counters = Counters::new(&name);
        Ok(Cache {
            version: self.version,
            head: keys.head(self.version),
            inner: Arc::new(Inner {
                flights: std::sync::Mutex::new(HashMap::new()),
                backend: self.backend,
                keys,
                default_ttl,
                envelope: self.envelope,
                max_value_bytes: self.max_value_bytes,
                name,
                default_version: self.version,
                counters,
            }),
        })
    }
}

/// The cache-level options of a cache URL: `key_prefix`, `version`,
/// `timeout` (seconds, or `none` for never), `codec` (`postcard`/`json`),
/// `compress_above` (bytes, or `none`), `hash_long_keys`,
/// `max_value_bytes`, `name`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UrlOptions {
    /// `key_prefix`.
    pub key_prefix: Option<String>,
    /// `version`.
    pub version: Option<u64>,
    /// `timeout`: the default TTL.
    pub timeout: Option<Ttl>,
    /// `codec`.
    pub codec: Option<Codec>,
    /// `compress_above`; `Some(None)` turns compression off.
    pub compress_above: Option<Option<usize>>,
    /// `hash_long_keys`.
    pub hash_long_keys: Option<bool>,
    /// `max_value_bytes`.
    pub max_value_bytes: Option<usize>,
    /// `name`.
    pub name: Option<String>,
}

impl UrlOptions {
    /// Takes the cache-level options out of a URL, leaving the backend's.
    pub fn take(url: &mut CacheUrl) -> Result<UrlOptions> {
        let mut o = UrlOptions {
            key_prefix: url.take("key_prefix"),
            version: url.take_parsed::<u64>("version")?,
            ..UrlOptions::default()
        };
        if let Some(t) = url.take("timeout") {
            o.timeout = Some(if t.eq_ignore_ascii_case("none") {
                Ttl::Never
            } else {
                let secs: u64 = t.parse().map_err(|_| {
                    Error::config(format!(
                        "option timeout={t:?} is not a number of seconds or \"none\""
                    ))
                })?;
                Ttl::After(Duration::from_secs(secs))
            });
        }
        if let Some(c) = url.take("codec") {
            o.codec = Some(Codec::parse(&c)?);
        }
        if let Some(c) = url.take("compress_above") {
            o.compress_above = Some(if c.eq_ignore_ascii_case("none") {
                None
            } else {
                Some(c.parse().map_err(|_| {
                    Error::config(format!(
                        "option compress_above={c:?} is not a number of bytes or \"none\""
                    ))
                })?)
            });
        }
        o.hash_long_keys = url.take_bool("hash_long_keys")?;
        o.max_value_bytes = url.take_parsed::<usize>("max_value_bytes")?;
        o.name = url.take("name");
        Ok(o)
    }
}

impl Cache {
    /// Starts configuring a cache over `backend`.
    pub fn builder(backend: impl Backend) -> CacheBuilder {
        Self::builder_arc(Arc::new(backend))
    }

    /// Starts configuring a cache over a shared backend.
    pub fn builder_arc(backend: Arc<dyn Backend>) -> CacheBuilder {
        CacheBuilder {
            backend,
            name: None,
            prefix: String::new(),
            key_fn: None,
            hash_long_keys: false,
            version: 1,
            default_ttl: Ttl::Default,
            envelope: EnvelopeConfig::default(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }

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

    fn resolve(&self, ttl: Ttl) -> Resolved {
        ttl.resolve(self.inner.default_ttl)
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Bytes> {
        let bytes = envelope::encode(value, &self.inner.envelope, None)?;
        self.check_size(&bytes)?;
        Ok(bytes)
    }

    fn check_size(&self, bytes: &Bytes) -> Result<()> {
        if bytes.len() > self.inner.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size: bytes.len(),
                limit: self.inner.max_value_bytes,
            });
        }
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Option<T> {
        match envelope::decode::<T>(bytes) {
            Ok((v, _)) => {
                self.inner.counters.hits.increment(1);
                Some(v)
            }
            Err(e) => {
                self.inner.counters.corrupt.increment(1);
                self.inner.counters.misses.increment(1);
                tracing::warn!(cache = %self.inner.name, key, error = %e, "unreadable cache entry treated as a miss");
                None
            }
        }
    }

    fn note<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if e.is_backend_failure() {
                self.inner.counters.errors.increment(1);
            }
        }
        r
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
        let raw = self.note(self.inner.backend.get(&skey).await)?;
        Ok(self.finish_get(key, raw))
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
            Ok(Some(Ok(raw))) => Some(Ok(self.finish_get(key, raw))),
        }
    }

    fn finish_get<T: DeserializeOwned>(&self, key: &str, raw: Option<Bytes>) -> Option<T> {
        match raw {
            Some(bytes) => self.decode(key, &bytes),
            None => {
                self.inner.counters.misses.increment(1);
                None
            }
        }
    }

    /// Stores a value. A zero TTL removes the key instead (Django semantics).
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl>,
    ) -> Result<()> {
        let skey = self.make_key(key)?;
        match self.resolve(ttl.into()) {
            Resolved::ExpireNow => {
                self.note(self.inner.backend.delete(&skey).await)?;
                Ok(())
            }
            Resolved::Store(exp) => {
                let bytes = self.encode(value)?;
                self.note(self.inner.backend.set(&skey, bytes, exp).await)
            }
        }
    }

    /// Stores a value only if the key is absent or expired; returns whether
    /// it stored. With a zero TTL nothing is stored, and the result says
    /// whether it *would* have been.
    pub async fn add<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: impl Into<Ttl>,
    ) -> Result<bool> {
        let skey = self.make_key(key)?;
        match self.resolve(ttl.into()) {
            Resolved::ExpireNow => Ok(!self.note(self.inner.backend.has_key(&skey).await)?),
            Resolved::Store(exp) => {
                let bytes = self.encode(value)?;
                self.note(self.inner.backend.add(&skey, bytes, exp).await)
            }
        }
    }

    /// Reads several values in one backend operation where the backend can;
    /// the map holds only the hits, under the caller's keys.
    pub async fn get_many<T: DeserializeOwned, K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<HashMap<String, T>> {
        let skeys = keys
            .iter()
            .map(|k| self.make_key(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&str> = skeys.iter().map(String::as_str).collect();
        let raw = self.note(self.inner.backend.get_many(&refs).await)?;
        let mut out = HashMap::with_capacity(raw.len());
        for (key, slot) in keys.iter().zip(raw) {
            match slot {
                Some(bytes) => {
                    if let Some(v) = self.decode(key.as_ref(), &bytes) {
                        out.insert(key.as_ref().to_owned(), v);
                    }
                }
                None => self.inner.counters.misses.increment(1),
            }
        }
        Ok(out)
    }

    /// Stores several values with one TTL, in one backend operation where the
    /// backend can. Returns the caller's keys the backend failed to store.
    pub async fn set_many<T, K, V>(
        &self,
        items: &[(K, V)],
        ttl: impl Into<Ttl>,
    ) -> Result<Vec<String>>
    where
        T: Serialize + ?Sized,
        K: AsRef<str>,
        V: Borrow<T>,
    {
        let skeys = items
            .iter()
            .map(|(k, _)| self.make_key(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        match self.resolve(ttl.into()) {
            Resolved::ExpireNow => {
                let refs: Vec<&str> = skeys.iter().map(String::as_str).collect();
                self.note(self.inner.backend.delete_many(&refs).await)?;
                Ok(Vec::new())
            }
            Resolved::Store(exp) => {
                let mut entries = Vec::with_capacity(items.len());
                for (skey, (_, v)) in skeys.iter().zip(items) {
                    entries.push((skey.as_str(), self.encode(v.borrow())?));
                }
                let failed = self.note(self.inner.backend.set_many(&entries, exp).await)?;
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
        self.note(self.inner.backend.delete(&skey).await)
    }

    /// Removes several keys; returns how many were there.
    pub async fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<u64> {
        let skeys = keys
            .iter()
            .map(|k| self.make_key(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&str> = skeys.iter().map(String::as_str).collect();
        self.note(self.inner.backend.delete_many(&refs).await)
    }

    /// Whether a live entry exists for the key.
    pub async fn has_key(&self, key: &str) -> Result<bool> {
        let skey = self.make_key(key)?;
        self.note(self.inner.backend.has_key(&skey).await)
    }

    /// Adds `delta` to a stored integer atomically, keeping its TTL; returns
    /// the new value. [`Error::NotFound`] when the key is absent,
    /// [`Error::NotANumber`] when the value is not an integer.
    pub async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        let skey = self.make_key(key)?;
        self.note(self.inner.backend.incr(&skey, delta).await)
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
        match self.resolve(ttl.into()) {
            Resolved::ExpireNow => self.note(self.inner.backend.delete(&skey).await),
            Resolved::Store(exp) => self.note(self.inner.backend.touch(&skey, exp).await),
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
        match keys.clear_scope() {
            None => self.note(self.inner.backend.clear(ClearScope::All).await),
            Some(prefix) => {
                if !self.capabilities().prefix_clear {
                    return Err(Error::Unsupported {
                        backend: self.inner.backend.name(),
                        operation: "clearing one prefix",
                    });
                }
                self.note(self.inner.backend.clear(ClearScope::Prefix(&prefix)).await)
            }
        }
    }

    /// Removes everything in the backend, whatever cache wrote it.
    pub async fn clear_all(&self) -> Result<()> {
        self.note(self.inner.backend.clear(ClearScope::All).await)
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
            .note(backend.get(&old_key).await)?
            .ok_or_else(|| Error::NotFound {
                key: key.to_owned(),
            })?;
        self.note(backend.set(&new_key, value, self.inner.default_ttl).await)?;
        self.note(backend.delete(&old_key).await)?;
        Ok(new_version)
    }

    /// Moves a key to version `current - delta`; see [`Cache::incr_version`].
    pub async fn decr_version(&self, key: &str, delta: i64) -> Result<u64> {
        let neg = delta
            .checked_neg()
            .ok_or_else(|| Error::Config(format!("version delta {delta} is out of range")))?;
        self.incr_version(key, neg).await
    }

    /// Returns the cached value, or runs `loader`, stores its value and
    /// returns it (cache-aside in one call; Django's `get_or_set`).
    ///
    /// **Single-flight**: concurrent callers of one key in this process
    /// share one run of a loader (Django runs it once per caller). The
    /// others wait for it and get its value; if it fails, they get
    /// [`Error::Computation`] with its message and nothing is cached. If the
    /// computing caller is dropped half way, a waiter takes over.
    ///
    /// Keeps working when the cache does not: a backend failure on the read
    /// is treated as a miss and on the write is logged, so the loader's value
    /// always reaches the caller. Only the loader's own error is returned.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use larder_core::{Cache, DummyBackend, Error, Ttl};
    /// let cache = Cache::new(DummyBackend);
    /// let v: u32 = cache
    ///     .get_or_compute("answer", Ttl::secs(60), || async { Ok::<_, Error>(42) })
    ///     .await?;
    /// assert_eq!(v, 42);
    /// # Ok::<(), Error>(()) }).unwrap();
    /// ```
    pub async fn get_or_compute<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error> + std::fmt::Display,
    {
        let ttl = ttl.into();
        if let Some(v) = self.read_fail_open::<T>(key).await.map_err(E::from)? {
            return Ok(v);
        }
        let skey = self.make_key(key).map_err(E::from)?;
        let mut loader = Some(loader);
        loop {
            // Join the computation in flight, or lead a new one.
            let joined = {
                let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
                match flights.get(&skey) {
                    Some(f) => Err(f.done.subscribe()),
                    None => {
                        let (tx, _) = tokio::sync::watch::channel(None);
                        let flight = Arc::new(Flight { done: tx });
                        flights.insert(skey.clone(), flight.clone());
                        Ok(flight)
                    }
                }
            };
            match joined {
                Err(mut rx) => {
                    self.inner.counters.merged.increment(1);
                    let outcome = match rx.wait_for(Option::is_some).await {
                        Ok(o) => o.clone(),
                        Err(_) => Some(Outcome::Abandoned),
                    };
                    match outcome {
                        Some(Outcome::Value(bytes)) => match envelope::decode::<T>(&bytes) {
                            Ok((v, _)) => return Ok(v),
                            Err(e) => {
                                return Err(E::from(Error::Computation {
                                    key: key.to_owned(),
                                    message: format!("the shared value does not decode: {e}"),
                                }))
                            }
                        },
                        Some(Outcome::Failed(message)) => {
                            return Err(E::from(Error::Computation {
                                key: key.to_owned(),
                                message,
                            }))
                        }
                        // The leader went away: try again (maybe lead).
                        Some(Outcome::Abandoned) | None => continue,
                    }
                }
                Ok(flight) => {
                    let mut guard = FlightGuard {
                        cache: self,
                        key: skey.clone(),
                        flight,
                        published: false,
                    };
                    // A flight that just ended may have stored the value
                    // between our miss and our taking the lead.
                    if let Some(v) = self.read_fail_open::<T>(key).await.map_err(E::from)? {
                        if let Ok(bytes) = envelope::encode(&v, &self.inner.envelope, None) {
                            guard.publish(Outcome::Value(bytes));
                        }
                        return Ok(v);
                    }
                    let Some(load) = loader.take() else {
                        // Unreachable: only a leader runs the loader, once.
                        return Err(E::from(Error::config("loader already used")));
                    };
                    let value = match load().await {
                        Ok(v) => v,
                        Err(e) => {
                            guard.publish(Outcome::Failed(e.to_string()));
                            return Err(e);
                        }
                    };
                    match envelope::encode(&value, &self.inner.envelope, None) {
                        Ok(bytes) => {
                            self.store_fail_open(key, &skey, bytes.clone(), ttl)
                                .await
                                .map_err(E::from)?;
                            guard.publish(Outcome::Value(bytes));
                        }
                        Err(e) => {
                            guard.publish(Outcome::Failed(e.to_string()));
                            return Err(E::from(e));
                        }
                    }
                    return Ok(value);
                }
            }
        }
    }

    /// A read that treats a failing backend as a miss (logged).
    async fn read_fail_open<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.get::<T>(key).await {
            Ok(v) => Ok(v),
            Err(e) if e.is_backend_failure() => {
                tracing::warn!(cache = %self.inner.name, key, error = %e, "cache read failed; computing the value");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Stores an encoded value; a failing backend is logged, not an error.
    async fn store_fail_open(&self, key: &str, skey: &str, bytes: Bytes, ttl: Ttl) -> Result<()> {
        let result = match self.resolve(ttl) {
            Resolved::ExpireNow => self.inner.backend.delete(skey).await.map(|_| ()),
            Resolved::Store(exp) => {
                self.check_size(&bytes)?;
                self.inner.backend.set(skey, bytes, exp).await
            }
        };
        match self.note(result) {
            Err(e) if e.is_backend_failure() => {
                tracing::warn!(cache = %self.inner.name, key, error = %e, "cache write failed; value returned uncached");
                Ok(())
            }
            other => other,
        }
    }

    /// Closes the backend.
    pub async fn close(&self) -> Result<()> {
        self.inner.backend.close().await
    }

    /// The version new handles use when none is given.
    pub fn default_version(&self) -> u64 {
        self.inner.default_version
    }
}
