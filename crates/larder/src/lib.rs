//! # larder
//!
//! Caching and denormalized data for Rust services: one typed [`Cache`] API
//! over pluggable backends, built on the ideas of the talk *Caching and
//! Django: A Primer* and fixing the places where Django's cache framework is
//! weak (atomic `incr` that keeps the TTL, prefix-scoped `clear`, batched
//! multi-key operations, collision-free keys, no pickle).
//!
//! ```
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! use larder::prelude::*;
//!
//! let cache = Cache::from_url("mem://?max_entries=10000&key_prefix=app").await?;
//! cache.set("user:1:name", "Ada", Ttl::secs(300)).await?;
//! let name: Option<String> = cache.get("user:1:name").await?;
//! assert_eq!(name.as_deref(), Some("Ada"));
//!
//! // Cache-aside in one call.
//! let total: u64 = cache
//!     .get_or_compute("stats:total", Ttl::secs(60), || async { Ok::<_, larder::Error>(42) })
//!     .await?;
//! assert_eq!(total, 42);
//! # Ok::<(), larder::Error>(()) }).unwrap();
//! ```
//!
//! ## Backends and URLs
//!
//! | URL | backend | cargo feature |
//! |-----|---------|---------------|
//! | `mem://?max_entries=N` or `mem://?max_bytes=N` | in-process (`larder::mem`) | `mem` (default) |
//! | `file:///path?max_entries=N&cull_frequency=N` | filesystem (`larder::file`) | `file` (default) |
//! | `redis://[user:pass@]host:port[/db]` | Redis (`larder::redis`) | `redis` |
//! | `redis+cluster://h1:p1,h2:p2` | Redis Cluster (`larder::redis`) | `redis` |
//! | `memcached://h1:p1,h2:p2` | memcached pool (`larder::memcached`) | `memcached` |
//! | `sqlite:///path.db`, `postgres://…`, `mysql://…` | SQL table (`larder::sql`) | `sql` with `sqlite`, `postgres`, `mysql` |
//! | `dummy://` | stores nothing ([`DummyBackend`]) | always |
//!
//! Every URL also takes the cache options `key_prefix`, `version`, `timeout`
//! (seconds or `none`), `codec` (`postcard` or `json`), `compress_above`,
//! `hash_long_keys`, `max_value_bytes`, `name` and `deadline_ms`. An
//! unknown scheme or option is an error that names it.
//!
//! ## Contents
//!
//! | path | what | cargo feature |
//! |------|------|---------------|
//! | [`Cache`], [`Ttl`], [`Error`], [`ComputeOptions`], [`ComputeError`], [`prelude`] | the cache API | always |
//! | [`NearBackend`], [`InvalidationBus`] | an in-process L1 in front of a shared cache | always |
//! | `larder::mem`, `larder::file`, `larder::redis`, `larder::memcached`, `larder::sql` | the backends, for building a cache by hand ([`Cache::builder`]) | `mem`, `file`, `redis`, `memcached`, `sql` |
//! | `larder::http` | HTTP caching for tower/axum, per site and per route | `http` |
//! | `larder::query` | query-result caching for sqlx | `query` |
//! | `larder::views` | denormalized views kept by workers | `views` |
//! | `larder::dashboard` | the dashboard, stats.json, Prometheus text, to mount | `dashboard` |
//! | `#[larder::cached]` | memoize an async fn by its arguments | `macros` |
//! | [`backend`] | writing your own backend: the [`backend::Backend`] trait and what it exchanges | always |
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(all(
    any(feature = "sql", feature = "query", feature = "views"),
    not(any(feature = "postgres", feature = "mysql", feature = "sqlite"))
))]
compile_error!(
    "larder's `sql`, `query` and `views` need a database: enable `postgres`, `mysql` or `sqlite` as well"
);

pub use larder_core::{
    fragment_key, BreakerConfig, BreakerState, Cache, CacheBuilder, CacheValue, Codec,
    ComputeError, ComputeOptions, DummyBackend, Error, InvalidationBus, KeyFn, NearBackend, Result,
    Ttl, DEFAULT_DEADLINE, DEFAULT_LEASE_TTL, DEFAULT_MAX_VALUE_BYTES, DEFAULT_STORE_DEADLINE,
    DEFAULT_TTL, MAX_KEY_BYTES,
};

/// Writing your own backend (see [`Backend`] for a
/// complete example) or invalidation bus: the trait, what it exchanges,
/// and the helpers the built-in backends share.
pub mod backend {
    pub use larder_core::{
        acquire_lease_by_add, async_trait, io_kind_means_unreachable, lease_key, unix_ms,
        unix_ms_i64, Backend, BlockingIo, BusEvent, BusMessage, Bytes, CacheUrl, Capabilities,
        ClearScope, DecodedMemo, Expiry, FailureLog, Invalidation, KeyPolicy, LeaseGrant,
        LeaseToken, MonotonicMs, Resolved, UrlOptions, WriteGenerations, SUMMARY_INTERVAL,
    };
}

/// The default key of `#[cached]`: `path` and the arguments' `Debug`,
/// with `%`, spaces and control characters percent-encoded (keys must
/// not contain them). Not part of the API.
#[doc(hidden)]
pub fn __cached_key(path: &str, args: &str) -> String {
    let mut out = String::with_capacity(path.len() + args.len() + 1);
    out.push_str(path);
    out.push(':');
    for c in args.chars() {
        if c == '%' || c == ' ' || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The dashboard, its JSON and Prometheus text as a tower service to mount
/// in your application.
#[cfg(feature = "dashboard")]
#[cfg_attr(docsrs, doc(cfg(feature = "dashboard")))]
pub use larder_dashboard as dashboard;
/// The filesystem backend (`file://`).
#[cfg(feature = "file")]
#[cfg_attr(docsrs, doc(cfg(feature = "file")))]
pub use larder_file as file;
/// HTTP response caching for tower and axum.
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub use larder_http as http;
/// Memoizes an async function by its arguments through a [`Cache`]; see
/// [the macro's documentation](larder_macros::cached).
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use larder_macros::cached;
/// The in-process memory backend (`mem://`).
#[cfg(feature = "mem")]
#[cfg_attr(docsrs, doc(cfg(feature = "mem")))]
pub use larder_mem as mem;
/// A memcached pool (`memcached://h1:p1,h2:p2`).
#[cfg(feature = "memcached")]
#[cfg_attr(docsrs, doc(cfg(feature = "memcached")))]
pub use larder_memcached as memcached;
/// Query-result caching for sqlx with automatic invalidation.
#[cfg(feature = "query")]
#[cfg_attr(docsrs, doc(cfg(feature = "query")))]
pub use larder_query as query;
/// Redis and Redis Cluster (`redis://`, `redis+cluster://`), and the Redis
/// invalidation bus of the near cache.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use larder_redis as redis;
/// A cache table in SQLite, PostgreSQL or MySQL/MariaDB, and the
/// PostgreSQL invalidation bus.
#[cfg(feature = "sql")]
#[cfg_attr(docsrs, doc(cfg(feature = "sql")))]
pub use larder_sql as sql;
/// Denormalized views: documents set by workers into persistent storage.
#[cfg(feature = "views")]
#[cfg_attr(docsrs, doc(cfg(feature = "views")))]
pub use larder_views as views;

use larder_core::{Backend, CacheUrl, UrlOptions};

/// The names most programs need: `use larder::prelude::*;`.
pub mod prelude {
    pub use crate::OpenUrl;
    pub use larder_core::{Cache, ComputeError, Error, Ttl};
}

/// Opens a [`Cache`] from a URL; brought into scope by the prelude so that
/// `Cache::from_url(..)` reads naturally.
#[async_trait::async_trait]
pub trait OpenUrl: Sized {
    /// Opens a cache from a URL such as `mem://?max_entries=1000`,
    /// `file:///var/cache/app?key_prefix=app` or `dummy://`.
    async fn from_url(url: &str) -> Result<Self>;
}

#[async_trait::async_trait]
impl OpenUrl for Cache {
    async fn from_url(url: &str) -> Result<Cache> {
        open(url).await
    }
}

/// The URL schemes this build of larder can open.
pub fn supported_schemes() -> Vec<&'static str> {
    let mut v = vec!["dummy"];
    if cfg!(feature = "mem") {
        v.push("mem");
    }
    if cfg!(feature = "file") {
        v.push("file");
    }
    if cfg!(feature = "redis") {
        v.extend(["redis", "redis+cluster", "rediss", "rediss+cluster"]);
    }
    if cfg!(feature = "memcached") {
        v.push("memcached");
    }
    if cfg!(all(feature = "sql", feature = "sqlite")) {
        v.push("sqlite");
    }
    if cfg!(all(feature = "sql", feature = "postgres")) {
        v.push("postgres");
    }
    if cfg!(all(feature = "sql", feature = "mysql")) {
        v.push("mysql");
    }
    v
}

/// Opens a cache from a URL (the function behind [`OpenUrl::from_url`]).
pub async fn open(url: &str) -> Result<Cache> {
    let mut parsed = CacheUrl::parse(url)?;
    // Cache options first: some backends hand what is left to their driver.
    let options = UrlOptions::take(&mut parsed)?;
    let backend: std::sync::Arc<dyn Backend> = match parsed.scheme() {
        "dummy" => {
            if !parsed.authority().is_empty() || !parsed.path().is_empty() {
                return Err(Error::config(format!(
                    "dummy:// takes no host or path, got {url:?}"
                )));
            }
            std::sync::Arc::new(DummyBackend)
        }
        #[cfg(feature = "mem")]
        "mem" => std::sync::Arc::new(larder_mem::MemBackend::from_url(&mut parsed)?),
        #[cfg(feature = "file")]
        "file" => std::sync::Arc::new(larder_file::FileBackend::from_url(&mut parsed)?),
        #[cfg(feature = "sql")]
        "sqlite" | "postgres" | "postgresql" | "mysql" | "mariadb" => {
            larder_sql::open(&mut parsed).await?
        }
        #[cfg(feature = "memcached")]
        "memcached" => std::sync::Arc::new(larder_memcached::MemcachedBackend::from_url(&mut parsed)?),
        #[cfg(feature = "redis")]
        "redis" | "redis+cluster" | "rediss" | "rediss+cluster" => {
            std::sync::Arc::new(larder_redis::RedisBackend::from_url(&mut parsed).await?)
        }
        other => {
            return Err(Error::config(format!(
                "unknown cache URL scheme {other:?} in {url:?}; this build supports {} (other backends are cargo features of the larder crate)",
                supported_schemes()
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    parsed.finish()?;
    Cache::builder_arc(backend).url_options(options).build()
}
