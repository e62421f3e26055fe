//! The tower middleware: [`CacheLayer`] wraps a service in a
//! [`CacheService`]; its calls return a [`ResponseFuture`].

mod future;
mod service;

use std::time::Duration;

use tower_layer::Layer;

pub use future::ResponseFuture;
pub use service::CacheService;

use crate::cache::{HttpCache, Overrides};

/// Caches the responses of the service it wraps in an [`HttpCache`]:
/// around a whole axum `Router` (per site) or on one route
/// (`route_layer`, or [`cache_page`]).
#[derive(Clone, Debug)]
pub struct CacheLayer {
    http: HttpCache,
    over: Overrides,
}

impl CacheLayer {
    pub(crate) fn new(http: HttpCache, over: Overrides) -> Self {
        CacheLayer { http, over }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService::new(inner, self.http.clone(), self.over)
    }
}

/// Django's `cache_page(ttl)`: a layer for one route that stores its
/// successful responses for `ttl` whatever freshness they carry (unless
/// they may not be stored at all: `private`, `no-store`, cookies,
/// `Vary: *`), and adds `Cache-Control: max-age=ttl` when they have none.
///
/// ```
/// # fn app(http: larder_http::HttpCache) {
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// let router: Router = Router::new()
///     .route("/news", get(|| async { "today's news" }))
///     .route_layer(larder_http::cache_page(&http, Duration::from_secs(60)));
/// # }
/// ```
pub fn cache_page(http: &HttpCache, ttl: Duration) -> CacheLayer {
    CacheLayer::new(http.clone(), Overrides { ttl: Some(ttl) })
}
