//! `get_or_compute`: cache-aside without stampedes, stale sets or outages.
//!
//! How one call proceeds:
//!
//! 1. Read the entry (a failing cache reads as a miss). A fresh value is
//!    returned, unless XFetch draws an early refresh.
//! 2. A value past its soft expiry but inside the stale-while-revalidate
//!    window is returned at once, and one background task refreshes it.
//! 3. Otherwise one caller per process leads (single-flight); the others
//!    wait for it, or take the stale value if there is one.
//! 4. The leader asks the backend for the key's lease (one computation
//!    across processes). Losing, it serves the stale value if there is one,
//!    otherwise polls with backoff until the value appears or the lease time
//!    has passed, then computes itself.
//! 5. The leader runs the loader and stores the result only if no write or
//!    invalidation of the key happened meanwhile (the lease, or this
//!    process's write generations). If the loader fails, the stale value is
//!    served inside the stale-if-error window.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{LeaseGrant, LeaseToken};
use crate::cache::Cache;
use crate::envelope::{self, Meta};
use crate::error::Error;
use crate::flight::{Flight, FlightGuard, Outcome};
use crate::time::unix_ms;
use crate::ttl::{Expiry, Resolved, Ttl};

/// Default lease time: how long one computation may hold a key before
/// others stop waiting for it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// Why [`Cache::get_or_compute`] returned no value.
///
/// The loader's error comes back as it was, in an [`Arc`]: concurrent
/// callers of one key share one run of the loader, so when it fails they
/// all get the same error (as moka's `try_get_with` does). A loader may
/// return any error type: `sqlx::Error`, `std::io::Error`, an
/// `anyhow::Error`, your own.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use larder_core::{Cache, ComputeError, DummyBackend, Ttl};
/// let cache = Cache::new(DummyBackend);
/// let r: Result<u32, _> = cache
///     .get_or_compute("user:7", Ttl::secs(60), || async {
///         Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no user 7"))
///     })
///     .await;
/// match r {
///     Err(ComputeError::Loader(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
///     other => panic!("{other:?}"),
/// }
/// # })
/// ```
///
/// In a function returning [`Error`], `?` converts it (the loader's error
/// becomes [`Error::Computation`] with its message).
#[derive(Debug)]
#[non_exhaustive]
pub enum ComputeError<E> {
    /// The loader failed (this caller's run, or the run it waited for);
    /// nothing was cached.
    Loader(Arc<E>),
    /// larder failed before a value could be had: an invalid key, a value
    /// type the codec cannot encode, or a failed run of the same key by a
    /// loader of another error type (whose message this carries).
    Cache(Error),
}

impl<E> ComputeError<E> {
    /// The loader's error, if that is what failed.
    pub fn loader_error(&self) -> Option<&E> {
        match self {
            ComputeError::Loader(e) => Some(e),
            ComputeError::Cache(_) => None,
        }
    }

    /// larder's own error, if that is what failed.
    pub fn cache_error(&self) -> Option<&Error> {
        match self {
            ComputeError::Loader(_) => None,
            ComputeError::Cache(e) => Some(e),
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for ComputeError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComputeError::Loader(e) => write!(f, "the computation failed: {e}"),
            ComputeError::Cache(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for ComputeError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ComputeError::Loader(e) => Some(&**e),
            ComputeError::Cache(e) => Some(e),
        }
    }
}

impl<E> From<Error> for ComputeError<E> {
    fn from(e: Error) -> Self {
        ComputeError::Cache(e)
    }
}

/// A loader's [`Error`] comes back as itself when no other caller still
/// holds it; any other loader error becomes [`Error::Computation`].
impl<E: std::fmt::Display + Send + Sync + 'static> From<ComputeError<E>> for Error {
    fn from(e: ComputeError<E>) -> Self {
        match e {
            ComputeError::Cache(e) => e,
            ComputeError::Loader(e) => {
                let message = e.to_string();
                let any: Arc<dyn std::any::Any + Send + Sync> = e;
                any.downcast::<Error>()
                    .ok()
                    .and_then(|own| Arc::try_unwrap(own).ok())
                    .unwrap_or(Error::Computation {
                        key: String::new(),
                        message,
                    })
            }
        }
    }
}

/// Options of [`Cache::get_or_compute_with`].
///
/// ```
/// use std::time::Duration;
/// use larder_core::{ComputeOptions, Ttl};
/// let opts = ComputeOptions::new(Ttl::secs(60))
///     .stale_while_revalidate(Duration::from_secs(30))
///     .stale_if_error(Duration::from_secs(600))
///     .early_refresh(1.0)
///     .lease_ttl(Duration::from_secs(2));
/// assert_eq!(opts.grace(), Duration::from_secs(600));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct ComputeOptions {
    ttl: Ttl,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    early_refresh: Option<f64>,
    lease_ttl: Duration,
    leases: bool,
    /// The caller has just read the key and found nothing: no read of it
    /// before computing (see [`Cache::get_or_compute_after_miss`]).
    after_miss: bool,
}

impl ComputeOptions {
    /// Fresh for `ttl`; XFetch early refresh with β = 1; leases where the
    /// backend has them; no stale serving.
    pub fn new(ttl: impl Into<Ttl>) -> Self {
        ComputeOptions {
            ttl: ttl.into(),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            early_refresh: Some(1.0),
            lease_ttl: DEFAULT_LEASE_TTL,
            leases: true,
            after_miss: false,
        }
    }
    /// How long values stay fresh.
    pub fn ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        self.ttl = ttl.into();
        self
    }
    /// For this long after a value stops being fresh, return it at once and
    /// refresh it in the background, once (RFC 5861's stale-while-revalidate).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }
    /// For this long after a value stops being fresh, return it when the
    /// loader fails instead of the error (counted in
    /// `larder_cache_stale_served_total{reason="stale_if_error"}`).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }
    /// XFetch ("optimal probabilistic cache stampede prevention"): a caller
    /// refreshes early when `now − Δ·β·ln(rand()) ≥ expiry`, Δ being how long
    /// the last computation took (kept with the value). β > 1 refreshes
    /// earlier, β < 1 later. Default 1.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = (beta > 0.0 && beta.is_finite()).then_some(beta);
        self
    }
    /// Never refresh before expiry.
    pub fn no_early_refresh(mut self) -> Self {
        self.early_refresh = None;
        self
    }
    /// How long a computation holds the key's lease (default 5 s): callers
    /// in other processes wait at most this long for it. Set it above the
    /// loader's usual run time. memcached rounds it up to whole seconds.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(1));
        self
    }
    /// Use the backend's leases for one computation across processes
    /// (default on; without them, one computation per process).
    pub fn leases(mut self, on: bool) -> Self {
        self.leases = on;
        self
    }
    /// How long entries are kept past freshness for stale serving: the
    /// larger of the two stale windows.
    pub fn grace(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }
    /// The lease time.
    pub fn lease_time(&self) -> Duration {
        self.lease_ttl
    }
}

/// A value the caller may get instead of a fresh one.
struct Fallback<T> {
    value: T,
    raw: Bytes,
    /// Serve it while someone else computes.
    while_computing: bool,
    /// Serve it when the loader fails.
    on_error: bool,
}

enum Lookup<T> {
    Fresh(T),
    /// Serve `fallback` now and refresh (in the background when possible).
    Refresh {
        fallback: Fallback<T>,
        early: bool,
    },
    Compute {
        seen: Option<Bytes>,
        fallback: Option<Fallback<T>>,
    },
}

/// What waiting for another process's lease produced.
enum LeaseWait<T> {
    /// Compute, with the lease if we got one.
    Compute(Option<LeaseToken>),
    /// A value to return (fresh from the holder, or stale).
    Done(T, Bytes),
}

impl Cache {
    /// Returns the cached value, or runs `loader`, stores its value and
    /// returns it (cache-aside in one call; Django's `get_or_set`), herd-safe
    /// and fail-open.
    ///
    /// - **Single-flight**: concurrent callers of one key in this process
    ///   share one run of the loader; if it fails they all get its error,
    ///   the same one ([`ComputeError::Loader`], shared in an [`Arc`]), and
    ///   nothing is cached. If the computing caller is dropped half way, a
    ///   waiter takes over.
    /// - **Leases**: on backends that have them (Redis, memcached, SQL,
    ///   file), one computation across processes; the others wait with
    ///   backoff, at most the lease time (5 s; see
    ///   [`ComputeOptions::lease_ttl`]).
    /// - **Early refresh** (XFetch, β = 1): shortly before expiry one caller
    ///   recomputes while the others keep the current value.
    /// - **No stale sets**: a `set` or `delete` of the key while the loader
    ///   runs wins; the loader's (now stale) result is returned but not
    ///   stored.
    /// - **Fail-open**: a failing cache is a miss on the read and a logged
    ///   skip on the write: the loader's value always reaches the caller.
    ///   Only the loader's own error is returned, and larder's errors that
    ///   no retry fixes (an invalid key, a type the codec cannot encode) as
    ///   [`ComputeError::Cache`].
    ///
    /// The loader may return any error type (`sqlx::Error`, `io::Error`,
    /// `anyhow::Error`, …); see [`ComputeError`].
    ///
    /// Stale-while-revalidate and stale-if-error need a loader that can run
    /// in the background: see [`Cache::get_or_compute_with`].
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
    ) -> Result<T, ComputeError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let opts = ComputeOptions::new(ttl);
        match self.lookup::<T>(key, &opts).await? {
            Lookup::Fresh(v) => Ok(v),
            // Early refresh, inline: this caller recomputes (the others keep
            // getting the current value meanwhile).
            Lookup::Refresh { fallback, .. } => {
                self.inner.counters.early_refresh.increment(1);
                let seen = Some(fallback.raw.clone());
                self.join_or_lead(key, &opts, loader, seen, Some(fallback))
                    .await
            }
            Lookup::Compute { seen, fallback } => {
                self.join_or_lead(key, &opts, loader, seen, fallback).await
            }
        }
    }

    /// [`Cache::get_or_compute`] for a caller that has just found, in its
    /// own round trip, that `key` holds nothing usable (it read the key, or
    /// a record that stands for it, as the query cache's stamp does): the
    /// value is computed (one computation per key in this process, and
    /// across processes where the backend has leases) without reading the
    /// key again first. On a remote store that saves the round trips that
    /// `get_or_compute` spends looking before it computes (up to three on
    /// Redis); the query cache uses it after its one-round-trip lookup.
    ///
    /// The pitfall it accepts: a value stored by someone else between the
    /// caller's read and the computation is not seen, so it may be
    /// computed twice. Never a stale value: the fill is still refused when
    /// the entry changed (or was invalidated) while computing. No early
    /// refresh, no stale serving.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use larder_core::{Cache, DummyBackend, Error, Ttl};
    /// let cache = Cache::new(DummyBackend);
    /// let found: Option<u32> = cache.get("answer").await?; // the caller's own read
    /// assert_eq!(found, None);
    /// let v: u32 = cache
    ///     .get_or_compute_after_miss("answer", Ttl::secs(60), || async { Ok::<_, Error>(42) })
    ///     .await?;
    /// assert_eq!(v, 42);
    /// # Ok::<(), Error>(()) }).unwrap();
    /// ```
    pub async fn get_or_compute_after_miss<T, E, F, Fut>(
        &self,
        key: &str,
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> Result<T, ComputeError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let opts = ComputeOptions {
            after_miss: true,
            ..ComputeOptions::new(ttl).no_early_refresh()
        };
        // The caller's read was the lookup (and counted by the caller).
        self.join_or_lead(key, &opts, loader, None, None).await
    }

    /// [`Cache::get_or_compute`] with options: stale-while-revalidate,
    /// stale-if-error, XFetch's β, the lease time.
    ///
    /// Refreshes inside the stale-while-revalidate window (and XFetch's
    /// early refreshes) run in a background task, once per key per process,
    /// while callers get the current value at once; hence the `Send +
    /// 'static` bounds. Needs a tokio runtime.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use std::time::Duration;
    /// use larder_core::{Cache, ComputeOptions, DummyBackend, Error, Ttl};
    /// let cache = Cache::new(DummyBackend);
    /// let opts = ComputeOptions::new(Ttl::secs(60))
    ///     .stale_while_revalidate(Duration::from_secs(10))
    ///     .stale_if_error(Duration::from_secs(300));
    /// let page: String = cache
    ///     .get_or_compute_with("home", &opts, || async { Ok::<_, Error>("<h1>hi</h1>".to_owned()) })
    ///     .await?;
    /// assert_eq!(page, "<h1>hi</h1>");
    /// # Ok::<(), Error>(()) }).unwrap();
    /// ```
    pub async fn get_or_compute_with<T, E, F, Fut>(
        &self,
        key: &str,
        opts: &ComputeOptions,
        loader: F,
    ) -> Result<T, ComputeError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        match self.lookup::<T>(key, opts).await? {
            Lookup::Fresh(v) => Ok(v),
            Lookup::Refresh { fallback, early } => {
                if early {
                    self.inner.counters.early_refresh.increment(1);
                } else {
                    self.inner.counters.stale_swr.increment(1);
                }
                let Fallback { value, raw, .. } = fallback;
                self.spawn_refresh(key, opts, loader, raw);
                Ok(value)
            }
            Lookup::Compute { seen, fallback } => {
                self.join_or_lead(key, opts, loader, seen, fallback).await
            }
        }
    }

    /// Reads and classifies the entry; a failing backend reads as a miss.
    async fn lookup<T: DeserializeOwned>(
        &self,
        key: &str,
        opts: &ComputeOptions,
    ) -> crate::Result<Lookup<T>> {
        // In-process backends answer without allocating the storage key.
        let backend = &self.inner.backend;
        let immediate =
            self.inner
                .keys
                .with_key(self.head.as_deref(), key, self.version, |skey| {
                    backend.get_immediate(skey)
                })?;
        let raw = match immediate {
            Some(r) => self.fail_open_read(key, r),
            None => {
                let skey = self.make_key(key)?;
                let r = self.call(self.inner.backend.get(&skey)).await;
                self.fail_open_read(key, r)
            }
        };
        Ok(self.classify(key, raw, opts, unix_ms()))
    }

    fn fail_open_read(&self, key: &str, r: crate::Result<Option<Bytes>>) -> Option<Bytes> {
        match r {
            Ok(raw) => raw,
            Err(e) => {
                self.inner.counters.fail_open.increment(1);
                self.log_fail_open(key, &e, "cache read failed; computing the value");
                None
            }
        }
    }

    async fn read_skey(&self, key: &str, skey: &str) -> Option<Bytes> {
        let r = self.call(self.inner.backend.get(skey)).await;
        self.fail_open_read(key, r)
    }

    fn classify<T: DeserializeOwned>(
        &self,
        key: &str,
        raw: Option<Bytes>,
        opts: &ComputeOptions,
        now: u64,
    ) -> Lookup<T> {
        let counters = &self.inner.counters;
        let Some(raw) = raw else {
            counters.misses.increment(1);
            return Lookup::Compute {
                seen: None,
                fallback: None,
            };
        };
        let (value, meta) = match envelope::decode::<T>(&raw) {
            Ok(d) => d,
            Err(e) => {
                counters.misses.increment(1);
                tracing::warn!(cache = %self.inner.name, key, error = %e, "unreadable cache entry treated as a miss");
                return Lookup::Compute {
                    seen: Some(raw),
                    fallback: None,
                };
            }
        };
        let soft = meta.map_or(0, |m| m.soft_expiry_unix_ms);
        if soft == 0 {
            counters.hits.increment(1);
            return Lookup::Fresh(value);
        }
        if now < soft {
            counters.hits.increment(1);
            let delta_ms = meta.map_or(0, |m| m.compute_us) as f64 / 1000.0;
            let early = match opts.early_refresh {
                Some(beta) if delta_ms > 0.0 => {
                    // -ln(u) for u in (0, 1]: an exponential draw.
                    let u = 1.0 - fastrand::f64();
                    now as f64 - delta_ms * beta * u.ln() >= soft as f64
                }
                _ => false,
            };
            if !early {
                return Lookup::Fresh(value);
            }
            return Lookup::Refresh {
                fallback: Fallback {
                    value,
                    raw,
                    while_computing: true,
                    on_error: true,
                },
                early: true,
            };
        }
        // Past freshness: the entry is still here only for stale serving.
        counters.misses.increment(1);
        let age = Duration::from_millis(now - soft);
        let fallback = Fallback {
            value,
            raw: raw.clone(),
            while_computing: true,
            on_error: age < opts.stale_if_error,
        };
        if age < opts.stale_while_revalidate {
            Lookup::Refresh {
                fallback,
                early: false,
            }
        } else {
            Lookup::Compute {
                seen: Some(raw),
                fallback: Some(fallback),
            }
        }
    }

    /// Starts one background refresh of `key` unless one is running here.
    fn spawn_refresh<T, E, F, Fut>(&self, key: &str, opts: &ComputeOptions, loader: F, seen: Bytes)
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let Ok(skey) = self.make_key(key) else { return };
        let flight = {
            let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
            if flights.contains_key(&skey) {
                return;
            }
            let (tx, _) = tokio::sync::watch::channel(None);
            let flight = Arc::new(Flight { done: tx });
            flights.insert(skey.clone(), flight.clone());
            flight
        };
        let cache = self.clone();
        let key = key.to_owned();
        let opts = *opts;
        tokio::spawn(async move {
            let mut guard = FlightGuard {
                flights: &cache.inner.flights,
                key: skey.clone(),
                flight,
                published: false,
            };
            // The fallback is what a failed refresh leaves in place: the
            // stale entry stays, so nothing to return here.
            let r: Result<T, ComputeError<E>> = cache
                .lead(&mut guard, &key, &skey, &opts, loader, Some(seen), None)
                .await;
            if let Err(e) = r {
                tracing::warn!(cache = %cache.inner.name, key, error = %e, "background refresh failed; the stale value stays");
            }
        });
    }

    async fn join_or_lead<T, E, F, Fut>(
        &self,
        key: &str,
        opts: &ComputeOptions,
        loader: F,
        seen: Option<Bytes>,
        mut fallback: Option<Fallback<T>>,
    ) -> Result<T, ComputeError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let skey = self.make_key(key)?;
        let mut loader = Some(loader);
        let mut seen = Some(seen);
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
                    if let Some(fb) = fallback.take_if(|f| f.while_computing) {
                        self.inner.counters.stale_lease.increment(1);
                        return Ok(fb.value);
                    }
                    let outcome = match rx.wait_for(Option::is_some).await {
                        Ok(o) => o.clone(),
                        Err(_) => Some(Outcome::Abandoned),
                    };
                    match outcome {
                        Some(Outcome::Value(bytes)) => {
                            return envelope::decode::<T>(&bytes).map(|(v, _)| v).map_err(|e| {
                                ComputeError::Cache(Error::Computation {
                                    key: key.to_owned(),
                                    message: format!("the shared value does not decode: {e}"),
                                })
                            })
                        }
                        Some(Outcome::Failed { message, error }) => {
                            // The leader's error itself when its type is ours.
                            return Err(match error.downcast::<E>() {
                                Ok(shared) => ComputeError::Loader(shared),
                                Err(_) => ComputeError::Cache(Error::Computation {
                                    key: key.to_owned(),
                                    message,
                                }),
                            });
                        }
                        // The leader went away: try again (maybe lead).
                        Some(Outcome::Abandoned) | None => continue,
                    }
                }
                Ok(flight) => {
                    let mut guard = FlightGuard {
                        flights: &self.inner.flights,
                        key: skey.clone(),
                        flight,
                        published: false,
                    };
                    let Some(load) = loader.take() else {
                        // Unreachable: only a leader runs the loader, once.
                        return Err(Error::config("loader already used").into());
                    };
                    let seen = seen.take().flatten();
                    return self
                        .lead(&mut guard, key, &skey, opts, load, seen, fallback.take())
                        .await;
                }
            }
        }
    }

    /// The leader's part: lease, compute, store, publish.
    #[allow(clippy::too_many_arguments)]
    async fn lead<T, E, F, Fut>(
        &self,
        guard: &mut FlightGuard<'_>,
        key: &str,
        skey: &str,
        opts: &ComputeOptions,
        loader: F,
        mut seen: Option<Bytes>,
        mut fallback: Option<Fallback<T>>,
    ) -> Result<T, ComputeError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        // A flight that just ended here, or another process, may have
        // stored the value since our read (unless the caller read just now).
        let now_raw = if opts.after_miss {
            seen.clone()
        } else {
            self.read_skey(key, skey).await
        };
        if now_raw != seen {
            match self.classify::<T>(key, now_raw.clone(), &opts.no_early_refresh(), unix_ms()) {
                Lookup::Fresh(v) => {
                    if let Some(raw) = now_raw {
                        guard.publish(Outcome::Value(raw));
                    }
                    return Ok(v);
                }
                Lookup::Refresh { fallback: fb, .. } => fallback = Some(fb),
                Lookup::Compute { fallback: fb, .. } => fallback = fb,
            }
            seen = now_raw;
        }

        let lease = if opts.leases && self.capabilities().leases {
            match self
                .wait_for_lease(key, skey, opts, &mut seen, &mut fallback)
                .await
            {
                LeaseWait::Compute(lease) => lease,
                LeaseWait::Done(v, raw) => {
                    guard.publish(Outcome::Value(raw));
                    return Ok(v);
                }
            }
        } else {
            None
        };

        let generation = self.generation(skey);
        let started = Instant::now();
        let result = loader().await;
        let compute_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);

        let value = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(lease) = &lease {
                    if let Err(re) = self
                        .call(self.inner.backend.lease_release(skey, lease))
                        .await
                    {
                        self.log_fail_open(key, &re, "could not release the lease; it will lapse");
                    }
                }
                if let Some(fb) = fallback.filter(|f| f.on_error) {
                    self.inner.counters.stale_error.increment(1);
                    tracing::warn!(cache = %self.inner.name, key, error = %e, "computation failed; serving the stale value");
                    guard.publish(Outcome::Value(fb.raw));
                    return Ok(fb.value);
                }
                let error = Arc::new(e);
                guard.publish(Outcome::Failed {
                    message: error.to_string(),
                    error: error.clone(),
                });
                return Err(ComputeError::Loader(error));
            }
        };

        let (meta, expiry) = match self.resolve(opts.ttl) {
            Resolved::ExpireNow => (None, None),
            Resolved::Store(Expiry::Never) => (
                Some(Meta {
                    soft_expiry_unix_ms: 0,
                    compute_us,
                }),
                Some(Expiry::Never),
            ),
            Resolved::Store(Expiry::After(ttl)) => (
                Some(Meta {
                    soft_expiry_unix_ms: unix_ms() + ttl.as_millis() as u64,
                    compute_us,
                }),
                Some(Expiry::After(ttl + opts.grace())),
            ),
        };
        // Integers are stored bare, as `set` stores them, so that `incr`
        // works on them natively on every backend: they get no soft expiry
        // (no stale window, no early refresh), their TTL is the fresh one.
        let (meta, expiry) = match (envelope::as_integer(&value), expiry) {
            (Some(_), Some(Expiry::After(_))) => match self.resolve(opts.ttl) {
                Resolved::Store(exp) => (None, Some(exp)),
                Resolved::ExpireNow => (None, None),
            },
            (Some(_), other) => (None, other),
            (None, other) => (meta, other),
        };
        let bytes = match envelope::encode(&value, &self.inner.envelope, meta) {
            Ok(b) => b,
            Err(e) => {
                if let Some(lease) = &lease {
                    let _ = self
                        .call(self.inner.backend.lease_release(skey, lease))
                        .await;
                }
                guard.publish(Outcome::Failed {
                    message: e.to_string(),
                    error: Arc::new(()),
                });
                return Err(ComputeError::Cache(e));
            }
        };
        if matches!(
            crate::value::reads_back::<T>(&bytes),
            Err(Error::CodecCannotRead { .. })
        ) {
            // Storing it would make a cache that never hits (every read a
            // miss, every call a computation): return the value uncached.
            if let Some(lease) = &lease {
                let _ = self
                    .call(self.inner.backend.lease_release(skey, lease))
                    .await;
            }
            warn_unreadable_once::<T>(&self.inner.name);
            // Unpublished, the flight ends as abandoned: followers cannot
            // decode the value either, so they compute themselves.
            return Ok(value);
        }
        match expiry {
            Some(exp) => {
                self.store(key, skey, bytes.clone(), exp, lease, generation)
                    .await
            }
            None => {
                if let Some(lease) = &lease {
                    let _ = self
                        .call(self.inner.backend.lease_release(skey, lease))
                        .await;
                }
            }
        }
        guard.publish(Outcome::Value(bytes));
        Ok(value)
    }

    /// Asks for the lease until granted, until the value appears, or until
    /// the lease time has passed.
    async fn wait_for_lease<T: DeserializeOwned>(
        &self,
        key: &str,
        skey: &str,
        opts: &ComputeOptions,
        seen: &mut Option<Bytes>,
        fallback: &mut Option<Fallback<T>>,
    ) -> LeaseWait<T> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(5);
        let mut waited = false;
        loop {
            let grant = self
                .call(
                    self.inner
                        .backend
                        .lease_acquire(skey, opts.lease_ttl, seen.clone()),
                )
                .await;
            match grant {
                Ok(LeaseGrant::Won(lease)) if opts.after_miss && !waited => {
                    // The caller read the key just before: a value stored
                    // since costs one computation more, never a stale one.
                    return LeaseWait::Compute(Some(lease));
                }
                Ok(LeaseGrant::Won(lease)) => {
                    // The previous holder may have filled and released just
                    // before we asked: then the value is there now.
                    let raw = self.read_skey(key, skey).await;
                    if raw != *seen {
                        let fresh = self.classify::<T>(
                            key,
                            raw.clone(),
                            &opts.no_early_refresh(),
                            unix_ms(),
                        );
                        if let (Lookup::Fresh(v), Some(raw)) = (fresh, raw) {
                            if let Err(e) = self
                                .call(self.inner.backend.lease_release(skey, &lease))
                                .await
                            {
                                self.log_fail_open(
                                    key,
                                    &e,
                                    "could not release the lease; it will lapse",
                                );
                            }
                            return LeaseWait::Done(v, raw);
                        }
                    }
                    return LeaseWait::Compute(Some(lease));
                }
                Err(e) => {
                    self.log_fail_open(key, &e, "could not take the lease; computing without it");
                    return LeaseWait::Compute(None);
                }
                Ok(LeaseGrant::Held) => {}
            }
            if let Some(fb) = fallback.take_if(|f| f.while_computing) {
                self.inner.counters.stale_lease.increment(1);
                return LeaseWait::Done(fb.value, fb.raw);
            }
            if started.elapsed() >= opts.lease_ttl {
                tracing::warn!(cache = %self.inner.name, key, lease = ?opts.lease_ttl, "the lease holder did not finish within the lease time; computing");
                return LeaseWait::Compute(None);
            }
            if !waited {
                waited = true;
                self.inner.counters.lease_waits.increment(1);
            }
            // Jittered exponential backoff, capped, never past the lease end.
            let jitter = Duration::from_micros(fastrand::u64(0..=delay.as_micros() as u64 / 2));
            let left = opts.lease_ttl.saturating_sub(started.elapsed());
            tokio::time::sleep((delay + jitter).min(left)).await;
            // Capped low: waiters should see the holder's value soon after
            // it lands, and a GET every 50 ms per waiting process is cheap.
            delay = (delay * 2).min(Duration::from_millis(50));
            let raw = self.read_skey(key, skey).await;
            if raw != *seen {
                match self.classify::<T>(key, raw.clone(), &opts.no_early_refresh(), unix_ms()) {
                    Lookup::Fresh(v) => {
                        if let Some(raw) = raw {
                            return LeaseWait::Done(v, raw);
                        }
                    }
                    Lookup::Refresh { fallback: fb, .. } => *fallback = Some(fb),
                    Lookup::Compute { fallback: fb, .. } => *fallback = fb,
                }
                *seen = raw;
            }
        }
    }

    /// Stores a computed value unless a write or invalidation of the key
    /// happened while it was computed. A failing cache is logged, not an
    /// error.
    async fn store(
        &self,
        key: &str,
        skey: &str,
        bytes: Bytes,
        expiry: Expiry,
        lease: Option<LeaseToken>,
        generation: u64,
    ) {
        let backend = &self.inner.backend;
        if let Err(e) = self.check_size(&bytes) {
            tracing::warn!(cache = %self.inner.name, key, error = %e, "computed value not cached");
            if let Some(lease) = &lease {
                let _ = self.call(backend.lease_release(skey, lease)).await;
            }
            return;
        }
        let raced_here = self.generation(skey) != generation;
        let stored = match (&lease, raced_here) {
            (Some(lease), true) => self
                .call(backend.lease_release(skey, lease))
                .await
                .map(|_| false),
            (None, true) => Ok(false),
            (Some(lease), false) => {
                self.call(backend.lease_fill(skey, bytes, expiry, lease))
                    .await
            }
            (None, false) => self
                .call(backend.set(skey, bytes, expiry))
                .await
                .map(|_| true),
        };
        match stored {
            Ok(true) => {}
            Ok(false) => {
                self.inner.counters.stale_sets_prevented.increment(1);
                tracing::debug!(cache = %self.inner.name, key, "the key was written or invalidated during the computation; its result is not stored");
            }
            Err(e) => {
                self.inner.counters.fail_open.increment(1);
                self.log_fail_open(key, &e, "cache write failed; value returned uncached");
            }
        }
    }
}

/// Types already warned about.
static WARNED_TYPES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());

fn warn_unreadable_once<T>(cache: &str) {
    let name = std::any::type_name::<T>();
    let mut warned = WARNED_TYPES.lock().unwrap_or_else(|p| p.into_inner());
    if warned.contains(&name) || warned.len() >= 4096 {
        return;
    }
    warned.push(name);
    tracing::warn!(
        cache,
        r#type = name,
        "get_or_compute: values of this type cannot be read back with the postcard codec; they are returned but not cached (build the cache with codec=json)"
    );
}
