//! [`CacheBuilder`]: configuring and building a [`Cache`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::Backend;
use crate::breaker::{Breaker, BreakerConfig};
use crate::cache::{
    Cache, Counters, Inner, DEFAULT_DEADLINE, DEFAULT_MAX_VALUE_BYTES, DEFAULT_STORE_DEADLINE,
    DEFAULT_TTL,
};
use crate::envelope::{Codec, EnvelopeConfig};
use crate::error::{Error, Result};
use crate::key::{KeyFn, KeyPolicy};
use crate::ttl::{Expiry, Ttl};
use crate::url::UrlOptions;

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
            deadline: None,
            breaker: BreakerConfig::default(),
            fail_open: false,
        }
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
    deadline: Option<Option<Duration>>,
    breaker: BreakerConfig,
    fail_open: bool,
}

impl CacheBuilder {
    /// Deadline of one backend call; a call that takes longer fails with
    /// [`Error::Timeout`] (and counts as a failure for the circuit breaker).
    /// Default: [`DEFAULT_DEADLINE`] (100 ms) for network caches,
    /// [`DEFAULT_STORE_DEADLINE`] (1 s) for persistent stores, none for
    /// in-process backends. `None` turns it off. `clear` and `close` are
    /// never cut short.
    ///
    /// Pitfall: the deadline uses tokio's timer, so the runtime needs it
    /// (`#[tokio::main]` enables it; a hand-built runtime needs
    /// `enable_time()`).
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = Some(deadline);
        self
    }
    /// Circuit breaker settings (default: open after 5 consecutive failures,
    /// for 2 s). While open, backend calls fail at once with
    /// [`Error::CircuitOpen`] instead of waiting for a dead server.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }
    /// Under a fail-open policy, reads (`get`, `get_many`, `has_key`) treat
    /// a failing backend as a miss (logged and counted in
    /// `larder_cache_fail_open_total`) instead of returning the error.
    /// Writes still return errors. Default off: the raw API reports
    /// failures. [`Cache::get_or_compute`] is always fail-open.
    pub fn fail_open(mut self, on: bool) -> Self {
        self.fail_open = on;
        self
    }
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
        if let Some(d) = o.deadline {
            self.deadline = Some(d);
        }
        if let Some(n) = o.breaker_failures {
            self.breaker = self.breaker.failure_threshold(n);
        }
        if let Some(d) = o.breaker_cool_down {
            self.breaker = self.breaker.cool_down(d);
        }
        if let Some(f) = o.fail_open {
            self.fail_open = f;
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
        let caps = self.backend.capabilities();
        let deadline = match self.deadline {
            Some(d) => d,
            None if caps.persistent => Some(DEFAULT_STORE_DEADLINE),
            None if caps.shared => Some(DEFAULT_DEADLINE),
            None => None,
        };
        if deadline.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "a deadline of zero would fail every call; use a positive deadline or none",
            ));
        }
        let breaker = Breaker::new(self.breaker, &name);
        Ok(Cache {
            version: self.version,
            head: keys.head(self.version),
            inner: Arc::new(Inner {
                flights: std::sync::Mutex::new(HashMap::new()),
                gens: self.backend.write_generations().unwrap_or_default(),
                breaker,
                degraded: crate::FailureLog::new("cache"),
                deadline,
                fail_open: self.fail_open,
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
