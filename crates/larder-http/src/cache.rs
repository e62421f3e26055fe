//! `HttpCache`: the state shared by every route's layer (the store, the
//! rules, the in-flight requests), and the request handling itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use larder_core::{Cache, Ttl};
use metrics::Counter;

use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::body::{BoxError, CacheBody};
use crate::entry::{ByteBuf, Entry, Stored};
use crate::key;
use crate::policy::{self, CacheControl, NotStored, Rules};

/// The response header saying what the cache did: `HIT`, `MISS`, `STALE`,
/// `REVALIDATED`, `BYPASS`.
pub const STATUS_HEADER: &str = "x-larder-cache";

/// Default largest body stored: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Headers never stored nor forwarded from a stored response.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "age",
];

/// Configures an [`HttpCache`].
#[must_use]
pub struct HttpCacheBuilder {
    cache: Cache,
    rules: Rules,
    max_body: usize,
    tag_headers: Vec<HeaderName>,
    status_header: bool,
}

impl HttpCacheBuilder {
    /// Freshness for responses that carry none but may be stored
    /// heuristically (Django's `CACHE_MIDDLEWARE_SECONDS`); default none:
    /// only responses with explicit freshness (or `Last-Modified`) are stored.
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.rules.default_ttl = ttl;
        self
    }
    /// Store responses that set cookies (default no: one user's cookie must
    /// not reach another).
    pub fn cache_set_cookie(mut self, on: bool) -> Self {
        self.rules.cache_set_cookie = on;
        self
    }
    /// Serve a stale response for this long past its freshness while one
    /// background request revalidates it, and when the origin fails, unless
    /// the response forbids it (`must-revalidate`, `s-maxage`). Responses'
    /// own `stale-while-revalidate` / `stale-if-error` take precedence.
    /// Default zero.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.rules.grace = grace;
        self
    }
    /// Largest body stored (default 1 MiB). Larger bodies, and bodies
    /// whose length is unknown (streams), pass through uncached.
    pub fn max_body_bytes(mut self, n: usize) -> Self {
        self.max_body = n;
        self
    }
    /// Response headers that carry purge tags (default `cache-tag` and
    /// `surrogate-key`; space- or comma-separated). They are removed before
    /// the response leaves.
    pub fn tag_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.tag_headers = names.into_iter().collect();
        self
    }
    /// Add the `x-larder-cache` header to responses (default on).
    pub fn status_header(mut self, on: bool) -> Self {
        self.status_header = on;
        self
    }
    /// Builds the shared state.
    pub fn build(self) -> HttpCache {
        let label = self.cache.name().to_owned();
        let c = |name: &'static str| Count::new(metrics::counter!(name, "cache" => label.clone()));
        HttpCache {
            shared: Arc::new(Shared {
                cache: self.cache,
                rules: self.rules,
                max_body: self.max_body,
                tag_headers: self.tag_headers,
                status_header: self.status_header,
                flights: Mutex::new(HashMap::new()),
                counters: Counters {
                    hit: c("larder_http_hits_total"),
                    miss: c("larder_http_misses_total"),
                    stale: c("larder_http_stale_total"),
                    revalidated: c("larder_http_revalidated_total"),
                    bypass: c("larder_http_bypass_total"),
                    stored: c("larder_http_stored_total"),
                    merged: c("larder_http_merged_total"),
                    invalidated: c("larder_http_invalidations_total"),
                },
            }),
        }
    }
}

/// One event counter: a `metrics` counter and an in-process tally for
/// [`HttpCache::stats`].
struct Count {
    metric: Counter,
    local: AtomicU64,
}

impl Count {
    fn new(metric: Counter) -> Self {
        Count {
            metric,
            local: AtomicU64::new(0),
        }
    }
    fn increment(&self, n: u64) {
        self.metric.increment(n);
        self.local.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }
}

struct Counters {
    hit: Count,
    miss: Count,
    stale: Count,
    revalidated: Count,
    bypass: Count,
    stored: Count,
    merged: Count,
    invalidated: Count,
}

/// What an [`HttpCache`] has done since it was built (also exported as
/// `larder_http_*_total` metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct HttpCacheStats {
    /// Fresh responses served from the cache.
    pub hits: u64,
    /// Requests forwarded because nothing usable was stored.
    pub misses: u64,
    /// Stale responses served (while revalidating, or on origin errors).
    pub stale: u64,
    /// Stale responses refreshed by a 304 from the origin.
    pub revalidated: u64,
    /// Requests that bypass the cache (unsafe methods, Authorization, no-store).
    pub bypassed: u64,
    /// Responses stored.
    pub stored: u64,
    /// Requests that waited for another request to the same URL.
    pub merged: u64,
    /// URLs and tags invalidated or purged.
    pub invalidations: u64,
}

/// What one in-flight miss produced for the requests that waited on it.
#[derive(Clone)]
enum Flight {
    Stored(Arc<Entry>),
    /// Not shareable (private, too large, an error): everyone asks itself.
    NotShared,
}

struct Shared {
    cache: Cache,
    rules: Rules,
    max_body: usize,
    tag_headers: Vec<HeaderName>,
    status_header: bool,
    flights: Mutex<HashMap<String, watch::Sender<Option<Flight>>>>,
    counters: Counters,
}

/// An HTTP response cache over a larder [`Cache`]: make one per
/// application, then its [`layer`](HttpCache::layer) for the whole site and
/// [`cache_page`](crate::cache_page) for single routes. Cheap to clone.
///
/// ```
/// # async fn run() -> larder_core::Result<()> {
/// use std::time::Duration;
/// use larder_core::Cache;
/// use larder_http::HttpCache;
/// let store = Cache::new(larder_core::DummyBackend);
/// let http = HttpCache::builder(store)
///     .default_ttl(Some(Duration::from_secs(60)))
///     .grace(Duration::from_secs(30))
///     .build();
/// let layer = http.layer(); // axum: Router::new()….layer(layer)
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCache")
            .field("cache", &self.shared.cache)
            .field("rules", &self.shared.rules)
            .finish()
    }
}

/// Per-layer settings (a route's `cache_page(ttl)`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Overrides {
    /// Fresh for this long whatever the response says (unless it is not
    /// storable at all), and `Cache-Control: max-age` added when absent.
    pub ttl: Option<Duration>,
}

enum Lookup {
    Found(Entry),
    Miss,
}

impl HttpCache {
    /// Starts configuring a cache storing into `cache`.
    pub fn builder(cache: Cache) -> HttpCacheBuilder {
        HttpCacheBuilder {
            cache,
            rules: Rules {
                default_ttl: None,
                cache_set_cookie: false,
                grace: Duration::ZERO,
            },
            max_body: DEFAULT_MAX_BODY,
            tag_headers: vec![
                HeaderName::from_static("cache-tag"),
                HeaderName::from_static("surrogate-key"),
            ],
            status_header: true,
        }
    }

    /// The store.
    pub fn store(&self) -> &Cache {
        &self.shared.cache
    }

    /// Counts of what the cache has done, for status pages.
    pub fn stats(&self) -> HttpCacheStats {
        let c = &self.shared.counters;
        HttpCacheStats {
            hits: c.hit.get(),
            misses: c.miss.get(),
            stale: c.stale.get(),
            revalidated: c.revalidated.get(),
            bypassed: c.bypass.get(),
            stored: c.stored.get(),
            merged: c.merged.get(),
            invalidations: c.invalidated.get(),
        }
    }

    /// Removes every stored response for `uri` on `host` (all variants).
    pub async fn purge_url(&self, host: &str, uri: &Uri) -> larder_core::Result<()> {
        self.shared.counters.invalidated.increment(1);
        self.shared
            .cache
            .delete(&key::primary(&host.to_ascii_lowercase(), uri))
            .await
            .map(|_| ())
    }

    /// Makes every stored response tagged `tag` (by a `Cache-Tag` or
    /// `Surrogate-Key` response header) invalid, in every process sharing
    /// the store. A response whose request started before the purge is
    /// invalid even if it is stored after it, so a purge racing with a
    /// store wins. Relies on the processes' clocks agreeing to within the
    /// time between a write and its purge.
    pub async fn purge_tag(&self, tag: &str) -> larder_core::Result<()> {
        self.shared.counters.invalidated.increment(1);
        self.shared
            .cache
            .set(&key::tag(tag), &unix_ms(), Ttl::Never)
            .await
    }

    /// The tower layer for this cache (whole site, or `route_layer`).
    pub fn layer(&self) -> crate::CacheLayer {
        crate::CacheLayer::new(self.clone(), Overrides::default())
    }

    fn mark<B>(&self, r: &mut Response<B>, what: &'static str) {
        if self.shared.status_header {
            r.headers_mut().insert(
                HeaderName::from_static(STATUS_HEADER),
                HeaderValue::from_static(what),
            );
        }
    }

    fn strip_tags(&self, h: &mut HeaderMap) -> Vec<String> {
        let mut tags = Vec::new();
        for name in &self.shared.tag_headers {
            for v in h.get_all(name) {
                if let Ok(s) = v.to_str() {
                    tags.extend(
                        s.split([' ', ','])
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(str::to_owned),
                    );
                }
            }
            h.remove(name);
        }
        tags.sort();
        tags.dedup();
        tags
    }

    /// Handles one request (the layer's service calls this).
    pub(crate) async fn handle<S, ReqB, ResB>(
        &self,
        inner: S,
        req: Request<ReqB>,
        over: Overrides,
    ) -> Result<Response<CacheBody<ResB>>, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Send + 'static,
        ReqB: Default + Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let method = req.method().clone();
        let host = key::host_of(req.uri(), req.headers());
        if !policy::is_safe(&method) {
            let uri = req.uri().clone();
            let res = inner.oneshot(req).await?;
            if res.status().is_success() || res.status().is_redirection() {
                self.invalidate_after_write(&host, &uri, res.headers())
                    .await;
            }
            return Ok(self.pass(res, "BYPASS"));
        }
        let req_cc = request_cache_control(req.headers());
        if !(method == Method::GET || method == Method::HEAD)
            || req.headers().contains_key(header::AUTHORIZATION)
            || req_cc.no_store
        {
            self.shared.counters.bypass.increment(1);
            let res = inner.oneshot(req).await?;
            return Ok(self.pass(res, "BYPASS"));
        }
        let pkey = key::primary(&host, req.uri());
        let now = unix_ms();
        match self.lookup(&pkey, req.headers()).await {
            Lookup::Found(entry) => {
                let age = entry.age(now);
                let fresh_enough = age + Duration::from_secs(req_cc.min_fresh.unwrap_or(0))
                    < entry.lifetime()
                    && req_cc.max_age.is_none_or(|m| age <= Duration::from_secs(m));
                if fresh_enough && !req_cc.no_cache {
                    self.shared.counters.hit.increment(1);
                    return Ok(self.serve(&entry, req.headers(), &method, now, "HIT"));
                }
                let swr_end = entry.lifetime() + Duration::from_millis(entry.swr_ms);
                if !req_cc.no_cache && age < swr_end {
                    // RFC 5861: stale now, one background revalidation.
                    self.shared.counters.stale.increment(1);
                    self.spawn_revalidation(inner, &req, pkey, entry.clone(), over);
                    return Ok(self.serve(&entry, req.headers(), &method, now, "STALE"));
                }
                self.revalidate(inner, req, pkey, entry, over).await
            }
            Lookup::Miss => {
                if req_cc.only_if_cached {
                    let mut r = Response::new(CacheBody::full(Bytes::new()));
                    *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                    self.mark(&mut r, "MISS");
                    return Ok(r);
                }
                self.shared.counters.miss.increment(1);
                self.miss(inner, req, pkey, over).await
            }
        }
    }

    /// Reads the entry for this URL and these request headers; a failing
    /// store is a miss.
    async fn lookup(&self, pkey: &str, req: &HeaderMap) -> Lookup {
        let cache = &self.shared.cache;
        let entry = match cache.get::<Stored>(pkey).await {
            Ok(Some(Stored::Response(e))) => e,
            Ok(Some(Stored::Vary { names, generation })) => {
                let values = policy::vary_values(&names, req);
                match cache
                    .get::<Stored>(&key::variant(pkey, generation, &values))
                    .await
                {
                    Ok(Some(Stored::Response(e))) if e.vary == names && e.vary_values == values => {
                        e
                    }
                    _ => return Lookup::Miss,
                }
            }
            Ok(None) => return Lookup::Miss,
            Err(e) => {
                tracing::debug!(error = %e, "http cache read failed; forwarding");
                return Lookup::Miss;
            }
        };
        if !entry.tags.is_empty() {
            let keys: Vec<String> = entry.tags.iter().map(|t| key::tag(t)).collect();
            match cache.get_many::<u64, _>(&keys).await {
                Ok(purged) => {
                    if purged.values().any(|&at| at >= entry.requested_at_ms) {
                        return Lookup::Miss;
                    }
                }
                // Cannot tell whether it was purged: do not serve it.
                Err(_) => return Lookup::Miss,
            }
        }
        Lookup::Found(entry)
    }

    /// A stored response to a client, answering its conditional request.
    fn serve<B>(
        &self,
        entry: &Entry,
        req: &HeaderMap,
        method: &Method,
        now: u64,
        what: &'static str,
    ) -> Response<CacheBody<B>> {
        if not_modified(req, entry) {
            let mut r = Response::new(CacheBody::full(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            for name in [
                "cache-control",
                "content-location",
                "date",
                "etag",
                "expires",
                "vary",
                "last-modified",
            ] {
                if let Some(v) = entry
                    .header(name)
                    .and_then(|v| HeaderValue::from_bytes(v).ok())
                {
                    r.headers_mut().insert(HeaderName::from_static(name), v);
                }
            }
            r.headers_mut()
                .insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
            self.mark(&mut r, what);
            return r;
        }
        let (parts, body) = entry.response(now, *method != Method::HEAD).into_parts();
        let mut r = Response::from_parts(parts, CacheBody::full(body));
        self.mark(&mut r, what);
        r
    }

    fn pass<B>(&self, res: Response<B>, what: &'static str) -> Response<CacheBody<B>> {
        let (mut parts, body) = res.into_parts();
        self.strip_tags(&mut parts.headers);
        let mut r = Response::from_parts(parts, CacheBody::inner(body));
        self.mark(&mut r, what);
        r
    }

    /// A miss: one request to the origin per URL at a time in this
    /// process; the others use its response when it is shareable with them.
    async fn miss<S, ReqB, ResB>(
        &self,
        inner: S,
        req: Request<ReqB>,
        pkey: String,
        over: Overrides,
    ) -> Result<Response<CacheBody<ResB>>, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Send + 'static,
        ReqB: Default + Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let joined = {
            let mut flights = self
                .shared
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match flights.get(&pkey) {
                Some(tx) => Err(tx.subscribe()),
                None => {
                    let (tx, _) = watch::channel(None);
                    flights.insert(pkey.clone(), tx);
                    Ok(())
                }
            }
        };
        if let Err(mut rx) = joined {
            self.shared.counters.merged.increment(1);
            let outcome = rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|o| o.clone());
            if let Some(Flight::Stored(entry)) = outcome {
                let names = &entry.vary;
                if policy::vary_values(names, req.headers()) == entry.vary_values {
                    let method = req.method().clone();
                    return Ok(self.serve(&entry, req.headers(), &method, unix_ms(), "HIT"));
                }
            }
            let res = inner.oneshot(req).await?;
            return self
                .store_response(&pkey, None, res, over, unix_ms())
                .await
                .map(|(r, _)| r);
        }
        // Leader: the guard publishes NotShared if this future is dropped.
        let mut guard = FlightGuard {
            http: self,
            pkey: pkey.clone(),
            outcome: Some(Flight::NotShared),
        };
        let requested_at = unix_ms();
        let req_headers = req.headers().clone();
        let method = req.method().clone();
        let res = match inner.oneshot(req).await {
            Ok(r) => r,
            Err(e) => return Err(e),
        };
        if method == Method::HEAD {
            return Ok(self.pass(res, "MISS"));
        }
        let (r, stored) = self
            .store_response(&pkey, Some(&req_headers), res, over, requested_at)
            .await?;
        if let Some(entry) = stored {
            guard.outcome = Some(Flight::Stored(Arc::new(entry)));
        }
        Ok(r)
    }

    /// Stores a response from the origin if it may, and returns it to the
    /// client (buffered when stored, passed through otherwise).
    async fn store_response<ResB, E>(
        &self,
        pkey: &str,
        req_headers: Option<&HeaderMap>,
        res: Response<ResB>,
        over: Overrides,
        requested_at: u64,
    ) -> Result<(Response<CacheBody<ResB>>, Option<Entry>), E>
    where
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let Some(req_headers) = req_headers else {
            return Ok((self.pass(res, "MISS"), None));
        };
        let (mut parts, body) = res.into_parts();
        let tags = self.strip_tags(&mut parts.headers);
        let lifetime = match policy::storable(
            &self.shared.rules,
            &Method::GET,
            req_headers,
            parts.status,
            &parts.headers,
        ) {
            Ok(l) => Ok(over.ttl.unwrap_or(l)),
            Err(NotStored::NoFreshness | NotStored::Status)
                if over.ttl.is_some() && parts.status.is_success() =>
            {
                Ok(over.ttl.unwrap_or_default())
            }
            Err(why) => Err(why),
        };
        if let (Some(ttl), true) = (over.ttl, lifetime.is_ok()) {
            if !parts.headers.contains_key(header::CACHE_CONTROL) {
                if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", ttl.as_secs())) {
                    parts.headers.insert(header::CACHE_CONTROL, v);
                }
            }
        }
        let lifetime = match lifetime {
            Ok(l) => l,
            Err(why) => {
                tracing::trace!(?why, "response not stored");
                let mut r = Response::from_parts(parts, CacheBody::inner(body));
                self.mark(&mut r, "MISS");
                return Ok((r, None));
            }
        };
        // Only bodies of known, small enough length are buffered.
        let len = body.size_hint().exact().or_else(|| {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse().ok())
        });
        if len.is_none_or(|n| n > self.shared.max_body as u64) {
            let mut r = Response::from_parts(parts, CacheBody::inner(body));
            self.mark(&mut r, "MISS");
            return Ok((r, None));
        }
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let e: BoxError = e.into();
                tracing::warn!(error = %e, "origin body failed while buffering; 502");
                let mut r = Response::new(CacheBody::full(Bytes::new()));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                self.mark(&mut r, "MISS");
                return Ok((r, None));
            }
        };
        let entry = self.entry(
            &parts.status,
            &parts.headers,
            req_headers,
            bytes.clone(),
            lifetime,
            requested_at,
            tags,
        );
        if let Some(entry) = &entry {
            self.put(pkey, entry).await;
        }
        let mut r = Response::from_parts(parts, CacheBody::full(bytes));
        self.mark(&mut r, "MISS");
        Ok((r, entry))
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        status: &StatusCode,
        headers: &HeaderMap,
        req_headers: &HeaderMap,
        body: Bytes,
        lifetime: Duration,
        requested_at: u64,
        tags: Vec<String>,
    ) -> Option<Entry> {
        let cc = CacheControl::parse(headers);
        let grace = millis(self.shared.rules.grace);
        let (swr_ms, sie_ms) = if cc.forbids_stale() {
            (0, 0)
        } else {
            (
                cc.stale_while_revalidate.map_or(grace, |s| s * 1000),
                cc.stale_if_error.map_or(grace, |s| s * 1000),
            )
        };
        let vary = policy::vary_names(headers)?;
        let vary_values = policy::vary_values(&vary, req_headers);
        let initial_age = headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let stored: Vec<(String, ByteBuf)> = headers
            .iter()
            .filter(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()) && n.as_str() != STATUS_HEADER)
            .map(|(n, v)| (n.as_str().to_owned(), ByteBuf(v.as_bytes().to_vec())))
            .collect();
        let entry = Entry {
            status: status.as_u16(),
            headers: stored,
            body: ByteBuf(body.to_vec()),
            stored_at_ms: unix_ms(),
            requested_at_ms: requested_at,
            initial_age,
            lifetime_ms: millis(lifetime),
            swr_ms,
            sie_ms,
            vary,
            vary_values,
            tags,
        };
        // Stale responses without validators are useless once stale.
        (entry.lifetime_ms > 0 || entry.has_validators()).then_some(entry)
    }

    /// How long the store keeps an entry: its freshness, its stale windows,
    /// and time to revalidate it when it has validators.
    fn keep_for(entry: &Entry) -> Duration {
        let stale = entry.swr_ms.max(entry.sie_ms);
        let revalidate = if entry.has_validators() {
            entry.lifetime_ms.max(60_000)
        } else {
            0
        };
        Duration::from_millis((entry.lifetime_ms + stale + revalidate).max(1000))
    }

    async fn put(&self, pkey: &str, entry: &Entry) {
        let cache = &self.shared.cache;
        let keep = Ttl::After(Self::keep_for(entry));
        let r = if entry.vary.is_empty() {
            cache
                .set(pkey, &Stored::Response(entry.clone()), keep)
                .await
        } else {
            let generation = match cache.get::<Stored>(pkey).await {
                Ok(Some(Stored::Vary { names, generation })) if names == entry.vary => {
                    Some(generation)
                }
                _ => None,
            };
            let generation = match generation {
                Some(g) => Ok(g),
                None => {
                    let g = fastrand::u64(..);
                    cache
                        .set(
                            pkey,
                            &Stored::Vary {
                                names: entry.vary.clone(),
                                generation: g,
                            },
                            keep,
                        )
                        .await
                        .map(|_| g)
                }
            };
            match generation {
                Ok(g) => {
                    cache
                        .set(
                            &key::variant(pkey, g, &entry.vary_values),
                            &Stored::Response(entry.clone()),
                            keep,
                        )
                        .await
                }
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(()) => self.shared.counters.stored.increment(1),
            Err(e) => {
                tracing::warn!(error = %e, "http cache write failed; response served uncached")
            }
        }
    }

    /// Forwards a request for a stale entry with its validators; a 304
    /// refreshes the entry.
    async fn revalidate<S, ReqB, ResB>(
        &self,
        inner: S,
        mut req: Request<ReqB>,
        pkey: String,
        mut entry: Entry,
        over: Overrides,
    ) -> Result<Response<CacheBody<ResB>>, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Send + 'static,
        ReqB: Default + Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let client_headers = req.headers().clone();
        let method = req.method().clone();
        add_validators(req.headers_mut(), &entry);
        let requested_at = unix_ms();
        let now = unix_ms();
        let within_sie = entry.age(now) < entry.lifetime() + Duration::from_millis(entry.sie_ms);
        let res = match inner.oneshot(req).await {
            Ok(r) => r,
            Err(e) if within_sie => {
                tracing::warn!("origin failed; serving the stale response (stale-if-error)");
                self.shared.counters.stale.increment(1);
                let _ = &e;
                return Ok(self.serve(&entry, &client_headers, &method, now, "STALE"));
            }
            Err(e) => return Err(e),
        };
        if res.status() == StatusCode::NOT_MODIFIED {
            entry.update_from_304(res.headers());
            entry.stored_at_ms = unix_ms();
            entry.initial_age = 0;
            self.put(&pkey, &entry).await;
            self.shared.counters.revalidated.increment(1);
            return Ok(self.serve(&entry, &client_headers, &method, unix_ms(), "REVALIDATED"));
        }
        if res.status().is_server_error() && within_sie {
            self.shared.counters.stale.increment(1);
            return Ok(self.serve(&entry, &client_headers, &method, now, "STALE"));
        }
        if method == Method::HEAD {
            return Ok(self.pass(res, "MISS"));
        }
        self.store_response(&pkey, Some(&client_headers), res, over, requested_at)
            .await
            .map(|(r, _)| r)
    }

    /// One background revalidation per URL at a time.
    fn spawn_revalidation<S, ReqB, ResB>(
        &self,
        inner: S,
        req: &Request<ReqB>,
        pkey: String,
        entry: Entry,
        over: Overrides,
    ) where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Send + 'static,
        ReqB: Default + Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        {
            let mut flights = self
                .shared
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if flights.contains_key(&pkey) {
                return;
            }
            let (tx, _) = watch::channel(None);
            flights.insert(pkey.clone(), tx);
        }
        let mut background = Request::new(ReqB::default());
        *background.method_mut() = Method::GET;
        *background.uri_mut() = req.uri().clone();
        *background.headers_mut() = req.headers().clone();
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
        ] {
            background.headers_mut().remove(h);
        }
        let http = self.clone();
        tokio::spawn(async move {
            let _guard = FlightGuard {
                http: &http,
                pkey: pkey.clone(),
                outcome: Some(Flight::NotShared),
            };
            match http
                .revalidate(inner, background, pkey.clone(), entry, over)
                .await
            {
                Ok(res) => {
                    // Drain what was stored so the origin's body is consumed.
                    let _ = res.into_body().collect().await;
                }
                Err(_) => {
                    tracing::warn!("background revalidation failed; the stale response stays")
                }
            }
        });
    }

    /// RFC 9111 §4.4: a successful unsafe request invalidates its target,
    /// and its Location / Content-Location on the same host.
    async fn invalidate_after_write(&self, host: &str, uri: &Uri, res: &HeaderMap) {
        let mut targets = vec![uri.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(u) = res
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse::<Uri>().ok())
            {
                let same_host = u
                    .authority()
                    .is_none_or(|a| a.as_str().eq_ignore_ascii_case(host));
                if same_host {
                    if let Ok(path_only) = Uri::builder()
                        .path_and_query(u.path_and_query().map_or("/", |p| p.as_str()))
                        .build()
                    {
                        targets.push(path_only);
                    }
                }
            }
        }
        for t in targets {
            if let Err(e) = self.purge_url(host, &t).await {
                tracing::warn!(error = %e, "http cache: invalidation after a write failed");
            }
        }
    }
}

/// Publishes a flight's outcome and removes it, also when the leader's
/// future is dropped.
struct FlightGuard<'a> {
    http: &'a HttpCache,
    pkey: String,
    outcome: Option<Flight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let tx = self
            .http
            .shared
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pkey);
        if let (Some(tx), Some(o)) = (tx, self.outcome.take()) {
            let _ = tx.send(Some(o));
        }
    }
}

/// The request's Cache-Control; `Pragma: no-cache` counts as `no-cache`
/// when there is no Cache-Control (RFC 9111 §5.4).
fn request_cache_control(h: &HeaderMap) -> CacheControl {
    let mut cc = CacheControl::parse(h);
    if !h.contains_key(header::CACHE_CONTROL)
        && h.get(header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|p| p.to_ascii_lowercase().contains("no-cache"))
    {
        cc.no_cache = true;
    }
    cc
}

/// RFC 9110 §13.1: does the client's conditional request match the entry?
fn not_modified(req: &HeaderMap, entry: &Entry) -> bool {
    if !(200..300).contains(&entry.status) {
        return false;
    }
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return entry
            .header_str("etag")
            .is_some_and(|e| policy::etag_matches(inm, e));
    }
    let ims = policy::header_date(req, &header::IF_MODIFIED_SINCE);
    let lm = entry
        .header_str("last-modified")
        .and_then(|s| httpdate::parse_http_date(s).ok());
    matches!((ims, lm), (Some(ims), Some(lm)) if lm <= ims)
}

fn add_validators(h: &mut HeaderMap, entry: &Entry) {
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ] {
        h.remove(name);
    }
    if let Some(v) = entry
        .header("etag")
        .and_then(|v| HeaderValue::from_bytes(v).ok())
    {
        h.insert(header::IF_NONE_MATCH, v);
    }
    if let Some(v) = entry
        .header("last-modified")
        .and_then(|v| HeaderValue::from_bytes(v).ok())
    {
        h.insert(header::IF_MODIFIED_SINCE, v);
    }
}
