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
//! | `mem://?max_entries=N` or `mem://?max_bytes=N` | in-process ([`larder_mem`]) | `mem` (default) |
//! | `file:///path?max_entries=N&cull_frequency=N` | filesystem ([`larder_file`]) | `file` (default) |
//! | `redis://[user:pass@]host:port[/db]` | Redis ([`larder_redis`]) | `redis` |
//! | `redis+cluster://h1:p1,h2:p2` | Redis Cluster ([`larder_redis`]) | `redis` |
//! | `memcached://h1:p1,h2:p2` | memcached pool ([`larder_memcached`]) | `memcached` |
//! | `sqlite:///path.db`, `postgres://…`, `mysql://…` | SQL table ([`larder_sql`]) | `sql` |
//! | `dummy://` | stores nothing ([`DummyBackend`]) | always |
//!
//! Every URL also takes the cache options `key_prefix`, `version`, `timeout`
//! (seconds or `none`), `codec` (`postcard` or `json`), `compress_above`,
//! `hash_long_keys`, `max_value_bytes` and `name`. An unknown scheme or
//! option is an error that names it.
//!
//! Your own backend: implement [`Backend`] (see its documentation for a
//! complete example) and wrap it with [`Cache::builder`].
#![warn(missing_docs)]

pub use larder_core::*;
/// The dashboard, its JSON and Prometheus text as a tower service to mount
/// in your application (feature `dashboard`).
#[cfg(feature = "dashboard")]
pub use larder_dashboard as dashboard;
#[cfg(feature = "file")]
pub use larder_file;
/// HTTP response caching for tower and axum (feature `http`).
#[cfg(feature = "http")]
pub use larder_http as http;
#[cfg(feature = "mem")]
pub use larder_mem;
#[cfg(feature = "memcached")]
pub use larder_memcached;
/// Query-result caching for sqlx with automatic invalidation (feature `query`).
#[cfg(feature = "query")]
pub use larder_query as query;
#[cfg(feature = "redis")]
pub use larder_redis;
#[cfg(feature = "sql")]
pub use larder_sql;
/// Denormalized views: documents set by workers into persistent storage
/// (feature `views`).
#[cfg(feature = "views")]
pub use larder_views as views;

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
    if cfg!(feature = "sql") {
        v.extend(["sqlite", "postgres", "mysql"]);
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
