//! # larder-http
//!
//! HTTP response caching for tower and axum, in any larder [`Cache`]
//! (memory, Redis, memcached, SQL, …), with the semantics of a *shared*
//! cache (RFC 9111): Django's per-site and per-view caching, done without
//! its privacy failures.
//!
//! - **What is stored**: GET responses with explicit freshness
//!   (`s-maxage`, `max-age`, `Expires`), or heuristically cacheable ones
//!   with a configured default TTL or `Last-Modified`. Never: `no-store`,
//!   `private` (any case), responses to requests with `Authorization`,
//!   responses setting cookies (unless allowed), `Vary: *`, streamed or
//!   large bodies.
//! - **What is served**: a stored response only to requests whose Vary'd
//!   headers match (an absent header differs from an empty one), with
//!   `Age`; HEAD from a stored GET; `304` to conditional requests; stale
//!   responses are revalidated with their validators (a `304` refreshes
//!   them), served while revalidating in the background
//!   (`stale-while-revalidate`) or when the origin fails
//!   (`stale-if-error`).
//! - **Herd control**: one request to the origin per URL at a time in a
//!   process; one background revalidation per stale URL.
//! - **Invalidation**: unsafe methods (POST, PUT, DELETE, …) that succeed
//!   invalidate their URL and `Location`; [`HttpCache::purge_url`];
//!   [`HttpCache::purge_tag`] for responses tagged with `Cache-Tag` /
//!   `Surrogate-Key` (stripped before they leave), across processes
//!   sharing the store.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use larder_core::Cache;
//! use larder_http::HttpCache;
//! # async fn run(store: Cache) {
//! let http = HttpCache::builder(store).default_ttl(Some(Duration::from_secs(60))).build();
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "home" }))
//!     .layer(http.layer());
//! # }
//! ```
//!
//! [`Cache`]: larder_core::Cache
#![warn(missing_docs)]

pub mod admin;
mod body;
mod cache;
mod entry;
pub mod headers;
mod key;
mod layer;
pub mod policy;
mod range;

pub use admin::AdminService;
pub use body::{BoxError, CacheBody};
pub use cache::{
    HttpCache, HttpCacheBuilder, HttpCacheStats, CDN_CACHE_CONTROL, DEFAULT_MAX_BODY,
    DEFAULT_MERGE_TIMEOUT, DEFAULT_UNCACHEABLE_FOR, STATUS_HEADER,
};
pub use headers::{cache_control, never_cache, vary_on_cookie, vary_on_headers};
pub use key::{request_host, HostError};
pub use layer::{cache_page, CacheLayer, CacheService, ResponseFuture};
