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

    /// With [`cache_page`]: tell browsers to keep the page only this long
    /// (`Duration::ZERO`: revalidate every time), while shared caches keep
    /// it for the page's TTL. The header added (when the response has no
    /// `Cache-Control` of its own) becomes `s-maxage=TTL, max-age=BROWSER`
    /// instead of `max-age=TTL`.
    ///
    /// Why: a purge (`purge_tag`, `purge_url`) reaches this cache and the
    /// CDNs you purge, never a browser. With `max-age=TTL` a visitor keeps
    /// the old page for up to the TTL after you purged it.
    ///
    /// ```
    /// # fn app(http: larder_http::HttpCache) {
    /// use std::time::Duration;
    /// use axum::{routing::get, Router};
    /// let router: Router = Router::new()
    ///     .route("/news", get(|| async { "today's news" }))
    ///     // Here and at the CDN for 10 minutes, purged by tag; browsers
    ///     // ask again after 30 s.
    ///     .route_layer(
    ///         larder_http::cache_page(&http, Duration::from_secs(600))
    ///             .browser_ttl(Duration::from_secs(30)),
    ///     );
    /// # }
    /// ```
    pub fn browser_ttl(mut self, ttl: Duration) -> Self {
        self.over.browser_ttl = Some(ttl);
        self
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
/// Browsers then keep the page for `ttl` too, and no purge reaches them:
/// where pages are purged on change, add
/// [`browser_ttl`](CacheLayer::browser_ttl) to send `s-maxage=ttl` with a
/// shorter `max-age`.
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
    CacheLayer::new(
        http.clone(),
        Overrides {
            ttl: Some(ttl),
            browser_ttl: None,
        },
    )
}
