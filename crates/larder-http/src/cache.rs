//! `HttpCache`: the state shared by every route's layer (the store, the
//! rules, the in-flight requests), and the request handling itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
use crate::entry::{ByteBuf, Decoded, Entry, Ready, Stored};
use crate::key;
use crate::policy::{self, CacheControl, NotStored, Rules};
use crate::range;

/// The response header saying what the cache did: `HIT`, `MISS`, `STALE`,
/// `REVALIDATED`, `BYPASS`.
pub const STATUS_HEADER: &str = "x-larder-cache";

/// Default largest body stored: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// Default time a URL whose response could not be stored is remembered as
/// uncacheable (Varnish's hit-for-miss): 60 s.
pub const DEFAULT_UNCACHEABLE_FOR: Duration = Duration::from_secs(60);

/// Default longest wait of a request for another request to the same URL:
/// 30 s.
pub const DEFAULT_MERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many URLs the uncacheable memory holds at most (then it forgets the
/// expired ones, or all): bounded memory under any number of URLs.
const UNCACHEABLE_CAP: usize = 65_536;

/// How long a tag purge is remembered when no stored response carries the
/// tag: long enough for a response requested before the purge to be stored
/// after it and still be refused.
const PURGE_RACE_WINDOW: Duration = Duration::from_secs(120);

use larder_core::{unix_ms, unix_us};

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Configures an [`HttpCache`].
#[must_use]
pub struct HttpCacheBuilder {
    cache: Cache,
    rules: Rules,
    max_body: usize,
    tag_headers: Vec<HeaderName>,
    status_header: bool,
    honor_request_cache_control: bool,
    uncacheable_for: Duration,
    merge_timeout: Duration,
    key_headers: Vec<String>,
    refuse_ambiguous_host: bool,
    target_fields: Vec<HeaderName>,
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
    /// Largest body stored (default 1 MiB). Larger bodies pass through
    /// uncached. A body of unknown length (chunked, a stream) is streamed
    /// to the client as it comes while a copy is kept; it is stored if the
    /// stream ends whole within this limit, and the copy is dropped (the
    /// response goes on) once it passes it, on an error or on trailers.
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
    /// Act on the request's own `Cache-Control` (`no-cache`, `max-age`,
    /// `min-fresh`, `no-store`) and `Pragma: no-cache` (default **off**, as
    /// nginx and Varnish do): with it on, any client can make the cache go
    /// to the origin, though such requests are still merged per URL. Off,
    /// those directives are ignored for lookups (`no-store` still keeps the
    /// response to that request out of the store); `only-if-cached` is
    /// always honoured.
    pub fn honor_request_cache_control(mut self, on: bool) -> Self {
        self.honor_request_cache_control = on;
        self
    }
    /// Remember for this long that a URL's response could not be stored
    /// (`private`, `Set-Cookie`, `no-store`, no freshness, too large), so
    /// that its concurrent requests go to the origin at once and in
    /// parallel instead of queueing behind one another (Varnish's
    /// hit-for-miss). A later storable response ends it early. Default
    /// [`DEFAULT_UNCACHEABLE_FOR`]; zero turns it off.
    pub fn uncacheable_for(mut self, d: Duration) -> Self {
        self.uncacheable_for = d;
        self
    }
    /// The longest a request waits for another request to the same URL
    /// before it is answered `504 Gateway Timeout` (default
    /// [`DEFAULT_MERGE_TIMEOUT`]). Set it to what bounds one origin request
    /// (the proxy uses its upstream timeouts), so that a waiting request
    /// never waits longer than the one it waits for.
    pub fn merge_timeout(mut self, d: Duration) -> Self {
        self.merge_timeout = d;
        self
    }
    /// Answer `400 Bad Request` to requests whose host is ambiguous (an
    /// HTTP/1.1 request without `Host`, two `Host` lines, an invalid one)
    /// instead of passing them to the inner service uncached (the default,
    /// for applications that decide themselves). `larder proxy` sets it.
    pub fn refuse_ambiguous_host(mut self, on: bool) -> Self {
        self.refuse_ambiguous_host = on;
        self
    }
    /// Request headers that are part of every cache key, as if every
    /// response named them in `Vary` (e.g. `X-Forwarded-Host`, or a header
    /// your application reads to choose a tenant or a language). A request
    /// header the application uses but the key does not include lets one
    /// client's request decide what others are served: key on it here, or
    /// have the response say `Vary`.
    pub fn key_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.key_headers = names.into_iter().map(|n| n.as_str().to_owned()).collect();
        self.key_headers.sort();
        self.key_headers.dedup();
        self
    }
    /// Targeted cache control (RFC 9213): this cache's target list, in
    /// order of precedence (default empty: `Cache-Control` only). When a
    /// response carries a field of the list with a valid value (a
    /// structured-field dictionary, such as `max-age=600,
    /// stale-while-revalidate=30`), the first such field decides how this
    /// cache stores and serves it, and the response's `Cache-Control` and
    /// `Expires` are ignored here (they still reach the client unchanged);
    /// an invalid one is skipped.
    ///
    /// Put your own field first to speak to this cache apart from browsers
    /// and CDNs (`Larder-Cache-Control`), and [`CDN_CACHE_CONTROL`] when it
    /// acts as a CDN. The fields of the list are removed before responses
    /// leave, except `CDN-Cache-Control`, which other CDNs downstream may
    /// need.
    ///
    /// ```
    /// use http::HeaderName;
    /// use larder_http::{HttpCache, CDN_CACHE_CONTROL};
    /// # let store = larder_core::Cache::new(larder_core::DummyBackend);
    /// let http = HttpCache::builder(store)
    ///     .target_fields([HeaderName::from_static("larder-cache-control"), CDN_CACHE_CONTROL])
    ///     .build();
    /// # let _ = http;
    /// ```
    pub fn target_fields(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.target_fields = Vec::new();
        for n in names {
            if !self.target_fields.contains(&n) {
                self.target_fields.push(n);
            }
        }
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
                honor_request_cache_control: self.honor_request_cache_control,
                uncacheable_for: self.uncacheable_for,
                merge_timeout: self.merge_timeout,
                key_headers: self.key_headers,
                refuse_ambiguous_host: self.refuse_ambiguous_host,
                target_fields: self.target_fields,
                flights: Mutex::new(HashMap::new()),
                uncacheable: Mutex::new(HashMap::new()),
                decoded: larder_core::DecodedMemo::new(MEMO_SLOTS, MEMO_ENTRY_BYTES),
                write_failures: larder_core::FailureLog::new("http cache write"),
                counters: Counters {
                    hit: c("larder_http_hits_total"),
                    miss: c("larder_http_misses_total"),
                    stale: c("larder_http_stale_total"),
                    revalidated: c("larder_http_revalidated_total"),
                    bypass: c("larder_http_bypass_total"),
                    stored: c("larder_http_stored_total"),
                    merged: c("larder_http_merged_total"),
                    invalidated: c("larder_http_invalidations_total"),
                    hit_for_miss: c("larder_http_hit_for_miss_total"),
                },
            }),
        }
    }
}

/// `CDN-Cache-Control` (RFC 9213 §3): the targeted field for CDN caches,
/// for [`HttpCacheBuilder::target_fields`].
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

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
    hit_for_miss: Count,
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
    /// Requests sent straight to the origin because their URL was recently
    /// found uncacheable (see [`HttpCacheBuilder::uncacheable_for`]).
    pub hit_for_miss: u64,
}

/// What one in-flight miss produced for the requests that waited on it.
#[derive(Clone)]
enum Flight {
    Stored(Arc<Entry>),
    /// Not shareable (private, too large, for this request only): everyone
    /// asks itself.
    NotShared,
    /// The origin failed (transport error, timeout, 502/503/504, a body
    /// that broke off): those who waited get this status at once rather
    /// than waiting out the same failure again.
    Failed(StatusCode),
}

/// What became of a response from the origin.
enum Outcome {
    Stored(Entry),
    /// Not storable whoever asks: remember the URL (hit-for-miss).
    Uncacheable,
    /// Not stored for reasons of this request only.
    NotShared,
    Failed(StatusCode),
}

impl Outcome {
    fn of_refusal(why: NotStored, status: StatusCode) -> Outcome {
        if matches!(status.as_u16(), 502..=504) {
            return Outcome::Failed(status);
        }
        // A partial response answers this request's Range only: not a
        // reason to treat the URL as uncacheable.
        if status == StatusCode::PARTIAL_CONTENT {
            return Outcome::NotShared;
        }
        match why {
            NotStored::Method
            | NotStored::Authorization
            | NotStored::RequestNoStore
            | NotStored::Cookie => Outcome::NotShared,
            _ => Outcome::Uncacheable,
        }
    }
}

/// Entries whose decoded form a hit reuses: at most this many…
const MEMO_SLOTS: usize = 512;
/// …of at most this size each (larger entries are decoded per hit), which
/// bounds the memo at about 2 × 512 × 64 KiB.
const MEMO_ENTRY_BYTES: usize = 64 * 1024;

struct Shared {
    cache: Cache,
    rules: Rules,
    max_body: usize,
    tag_headers: Vec<HeaderName>,
    status_header: bool,
    honor_request_cache_control: bool,
    uncacheable_for: Duration,
    merge_timeout: Duration,
    key_headers: Vec<String>,
    refuse_ambiguous_host: bool,
    target_fields: Vec<HeaderName>,
    flights: Mutex<HashMap<String, watch::Sender<Option<Flight>>>>,
    /// URL key → until when (unix ms) it is known uncacheable.
    uncacheable: Mutex<HashMap<String, u64>>,
    /// Hot entries decoded once (see `Decoded`); the store is still read
    /// on every request, so this never answers what the store would not.
    decoded: larder_core::DecodedMemo<Decoded>,
    write_failures: larder_core::FailureLog,
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
    /// Browsers' lifetime, when it should differ from `ttl`: the added
    /// header is then `s-maxage=ttl, max-age=browser_ttl`.
    pub browser_ttl: Option<Duration>,
}

enum Lookup {
    Found(Arc<Ready>),
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
            honor_request_cache_control: false,
            uncacheable_for: DEFAULT_UNCACHEABLE_FOR,
            merge_timeout: DEFAULT_MERGE_TIMEOUT,
            key_headers: Vec::new(),
            refuse_ambiguous_host: false,
            target_fields: Vec::new(),
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
            hit_for_miss: c.hit_for_miss.get(),
        }
    }

    /// Removes every stored response for `uri` on `host` (all variants);
    /// returns whether anything was stored.
    pub async fn purge_url(&self, host: &str, uri: &Uri) -> larder_core::Result<bool> {
        self.shared.counters.invalidated.increment(1);
        let pkey = key::primary(&host.to_ascii_lowercase(), uri);
        self.forget_uncacheable(&pkey);
        // Recorded before the delete: a response whose request started
        // before this purge and that is stored after it (a slow or
        // streamed body) sees the record once written and removes itself
        // (see `put`), so the purge wins the race.
        if let Err(e) = self
            .shared
            .cache
            .set(
                &key::url_purge(&pkey),
                &unix_us(),
                Ttl::After(PURGE_RACE_WINDOW),
            )
            .await
        {
            tracing::debug!(error = %e, "http cache: URL purge record not written");
        }
        self.shared.cache.delete(&pkey).await
    }

    /// Makes every stored response tagged `tag` (by a `Cache-Tag` or
    /// `Surrogate-Key` response header) invalid, in every process sharing
    /// the store. A response whose request started before the purge is
    /// invalid even if it is stored after it, so a purge racing with a
    /// store wins. Relies on the processes' clocks agreeing to within the
    /// time between a write and its purge.
    ///
    /// Returns whether a stored response carries the tag. The purge record
    /// lives as long as the longest-kept response with that tag (or two
    /// minutes when there is none, for responses being stored right now),
    /// so purging random tags cannot grow the store without bound.
    pub async fn purge_tag(&self, tag: &str) -> larder_core::Result<bool> {
        self.shared.counters.invalidated.increment(1);
        let cache = &self.shared.cache;
        let now = unix_ms();
        // Unreadable or missing: nothing known to carry the tag.
        let until = cache
            .get::<u64>(&key::tag_seen(tag))
            .await?
            .filter(|&until| until > now);
        let keep = until.map_or(PURGE_RACE_WINDOW, |u| {
            Duration::from_millis(u - now).max(PURGE_RACE_WINDOW)
        });
        // The record is in µs, as the entries' request times are.
        cache
            .set(&key::tag(tag), &unix_us(), Ttl::After(keep))
            .await?;
        Ok(until.is_some())
    }

    /// Records that a response tagged `tags` is kept until `until` (unix
    /// ms), for [`purge_tag`](Self::purge_tag)'s answer and record lifetime.
    async fn note_tags(&self, tags: &[String], keep: Duration) {
        let cache = &self.shared.cache;
        let until = unix_ms() + millis(keep);
        let keys: Vec<String> = tags.iter().map(|t| key::tag_seen(t)).collect();
        let known = cache.get_many::<u64, _>(&keys).await.unwrap_or_default();
        for k in keys {
            if known.get(&k).is_some_and(|&u| u >= until) {
                continue;
            }
            if let Err(e) = cache.set(&k, &until, Ttl::After(keep)).await {
                tracing::debug!(error = %e, "http cache: tag record not written");
            }
        }
    }

    fn is_uncacheable(&self, pkey: &str) -> bool {
        let map = self
            .shared
            .uncacheable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(pkey).is_some_and(|&until| until > unix_ms())
    }

    fn remember_uncacheable(&self, pkey: &str) {
        if self.shared.uncacheable_for.is_zero() {
            return;
        }
        let now = unix_ms();
        let until = now + millis(self.shared.uncacheable_for);
        let mut map = self
            .shared
            .uncacheable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Every pass-through of a known URL lands here: renew in place,
        // without allocating its key again.
        if let Some(known) = map.get_mut(pkey) {
            *known = until;
            return;
        }
        if map.len() >= UNCACHEABLE_CAP {
            map.retain(|_, until| *until > now);
            if map.len() >= UNCACHEABLE_CAP {
                map.clear();
            }
        }
        map.insert(pkey.to_owned(), until);
    }

    fn forget_uncacheable(&self, pkey: &str) {
        let mut map = self
            .shared
            .uncacheable
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.remove(pkey);
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

    /// The headers this cache's policy is read from when a field of its
    /// target list is present and valid (RFC 9213): the response's with
    /// that field's value as `Cache-Control` and no `Expires`. Removes the
    /// list's own fields (all but `CDN-Cache-Control`) from `h`.
    fn take_targeted(&self, h: &mut HeaderMap) -> Option<HeaderMap> {
        if self.shared.target_fields.is_empty() {
            return None;
        }
        let mut policy = None;
        for name in &self.shared.target_fields {
            if policy.is_none() {
                if let Some(value) = policy::targeted_value(h, name) {
                    let mut view = h.clone();
                    view.remove(header::EXPIRES);
                    view.insert(header::CACHE_CONTROL, value);
                    policy = Some(view);
                }
            }
            if *name != CDN_CACHE_CONTROL {
                h.remove(name);
            }
        }
        if let Some(view) = &mut policy {
            for name in &self.shared.target_fields {
                view.remove(name);
            }
        }
        policy
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
        mut req: Request<ReqB>,
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
        let host = match key::request_host(req.version(), req.uri(), req.headers()) {
            Ok(host) => host,
            Err(why) if self.shared.refuse_ambiguous_host => {
                let mut r = Response::new(CacheBody::full(Bytes::from(format!("larder: {why}\n"))));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                self.mark(&mut r, "BYPASS");
                return Ok(r);
            }
            Err(why) => {
                // Which host the application acts on is not certain: never
                // store or serve for such a request.
                tracing::debug!(%why, "http cache: ambiguous host; bypassing the cache");
                self.shared.counters.bypass.increment(1);
                let res = inner.oneshot(req).await?;
                return Ok(self.pass(res, "BYPASS"));
            }
        };
        // RFC 9112 §3.2.2: an absolute-form target's authority replaces
        // Host, so the application sees the host the response is keyed on.
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, v);
        }
        if !policy::is_safe(&method) {
            let uri = req.uri().clone();
            let res = inner.oneshot(req).await?;
            if res.status().is_success() || res.status().is_redirection() {
                self.invalidate_after_write(&host, &uri, res.headers())
                    .await;
            }
            return Ok(self.pass(res, "BYPASS"));
        }
        let req_cc = self.request_directives(req.headers());
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
            Lookup::Found(ready) => {
                let entry = &ready.entry;
                let age = entry.age(now);
                let fresh_enough = age + Duration::from_secs(req_cc.min_fresh.unwrap_or(0))
                    < entry.lifetime()
                    && req_cc.max_age.is_none_or(|m| age <= Duration::from_secs(m));
                if fresh_enough && !req_cc.no_cache {
                    self.shared.counters.hit.increment(1);
                    return Ok(self.serve_ready(&ready, req.headers(), &method, now, "HIT"));
                }
                let swr_end = entry.lifetime() + Duration::from_millis(entry.swr_ms);
                if !req_cc.no_cache && age < swr_end {
                    // RFC 5861: stale now, one background revalidation.
                    self.shared.counters.stale.increment(1);
                    self.spawn_revalidation(inner, &req, pkey, entry.clone(), over);
                    return Ok(self.serve_ready(&ready, req.headers(), &method, now, "STALE"));
                }
                self.revalidate_merged(inner, req, pkey, entry.clone(), over)
                    .await
            }
            Lookup::Miss => {
                if req_cc.only_if_cached {
                    let mut r = Response::new(CacheBody::full(Bytes::new()));
                    *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                    self.mark(&mut r, "MISS");
                    return Ok(r);
                }
                self.shared.counters.miss.increment(1);
                if self.is_uncacheable(&pkey) {
                    // Hit-for-miss: nobody could share the answer, so
                    // nobody waits for anybody.
                    self.shared.counters.hit_for_miss.increment(1);
                    return self.fetch_alone(inner, req, &pkey, over).await;
                }
                self.miss(inner, req, pkey, over).await
            }
        }
    }

    /// The request directives the cache acts on: all of them when
    /// configured to, else only `only-if-cached` (which never costs the
    /// origin a request).
    fn request_directives(&self, h: &HeaderMap) -> CacheControl {
        let cc = request_cache_control(h);
        if self.shared.honor_request_cache_control {
            cc
        } else {
            CacheControl {
                only_if_cached: cc.only_if_cached,
                ..CacheControl::default()
            }
        }
    }

    /// Reads the entry for this URL and these request headers; a failing
    /// store is a miss.
    async fn lookup(&self, pkey: &str, req: &HeaderMap) -> Lookup {
        let cache = &self.shared.cache;
        let memo = &self.shared.decoded;
        let top = cache.get_memoized(pkey, memo).await;
        let ready = match top.as_ref().map(|d| d.as_deref()) {
            Ok(Some(Decoded::Response(ready))) => ready.clone(),
            Ok(Some(Decoded::Vary { names, generation })) => {
                let values = policy::vary_values(names, req);
                let variant = cache
                    .get_memoized(&key::variant(pkey, *generation, &values), memo)
                    .await;
                match variant.as_ref().map(|d| d.as_deref()) {
                    Ok(Some(Decoded::Response(ready)))
                        if ready.entry.vary == *names && ready.entry.vary_values == values =>
                    {
                        ready.clone()
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
        let entry = &ready.entry;
        if !entry.tags.is_empty() {
            let keys: Vec<String> = entry.tags.iter().map(|t| key::tag(t)).collect();
            let records = match cache.get_many_raw(&keys).await {
                Ok(records) => records,
                // Cannot tell whether it was purged: do not serve it.
                Err(_) => return Lookup::Miss,
            };
            let mut purged = false;
            for (tag, record) in entry.tags.iter().zip(records) {
                let Some(bytes) = record else { continue };
                match larder_core::envelope::decode::<u64>(&bytes) {
                    Ok((at, _)) => purged |= at >= entry.requested_at_us,
                    Err(e) => {
                        // An unreadable purge record means "purged": never
                        // serve what it may have removed; and it is
                        // rewritten with a valid one so it heals.
                        tracing::warn!(tag, error = %e, "http cache: unreadable tag purge record; treating the tag as purged now");
                        purged = true;
                        if let Err(e) = self.purge_tag(tag).await {
                            tracing::debug!(tag, error = %e, "http cache: tag purge record not rewritten");
                        }
                    }
                }
            }
            if purged {
                return Lookup::Miss;
            }
        }
        Lookup::Found(ready)
    }

    /// [`serve`](Self::serve) from a looked-up entry's built parts.
    fn serve_ready<B>(
        &self,
        ready: &Ready,
        req: &HeaderMap,
        method: &Method,
        now: u64,
        what: &'static str,
    ) -> Response<CacheBody<B>> {
        self.serve_with(&ready.entry, Some(ready), req, method, now, what)
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
        self.serve_with(entry, None, req, method, now, what)
    }

    fn serve_with<B>(
        &self,
        entry: &Entry,
        ready: Option<&Ready>,
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
        let with_body = *method != Method::HEAD;
        let response = match ready {
            Some(ready) => ready.response(now, with_body),
            None => entry.response(now, with_body),
        };
        let response = match self.ranges_asked(entry, req, method) {
            Some(ranges) => range::answer(response, &ranges),
            None => response,
        };
        let (parts, body) = response.into_parts();
        let mut r = Response::from_parts(parts, CacheBody::full(body));
        self.mark(&mut r, what);
        r
    }

    /// The byte ranges a GET asks of a stored complete (200) response,
    /// when it asks for some and `If-Range` lets them go out.
    fn ranges_asked(
        &self,
        entry: &Entry,
        req: &HeaderMap,
        method: &Method,
    ) -> Option<range::Ranges> {
        let value = req.get(header::RANGE)?;
        if *method != Method::GET || entry.status != 200 {
            return None;
        }
        let ranges = range::parse(value.to_str().ok()?, entry.body.0.len() as u64);
        if ranges == range::Ranges::Whole
            || !range::if_range_allows(
                req,
                entry.header_str("etag"),
                entry.header_str("last-modified"),
            )
        {
            return None;
        }
        Some(ranges)
    }

    fn pass<B>(&self, res: Response<B>, what: &'static str) -> Response<CacheBody<B>> {
        let (mut parts, body) = res.into_parts();
        self.strip_tags(&mut parts.headers);
        self.take_targeted(&mut parts.headers);
        let mut r = Response::from_parts(parts, CacheBody::inner(body));
        self.mark(&mut r, what);
        r
    }

    /// Joins the in-flight request for `pkey`, or becomes it (`Ok`).
    fn join_flight(&self, pkey: &str) -> Result<(), watch::Receiver<Option<Flight>>> {
        let mut flights = self
            .shared
            .flights
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match flights.get(pkey) {
            Some(tx) => Err(tx.subscribe()),
            None => {
                let (tx, _) = watch::channel(None);
                flights.insert(pkey.to_owned(), tx);
                Ok(())
            }
        }
    }

    /// Waits for the request being waited on, at most the merge timeout;
    /// `None` when it took longer.
    async fn wait_flight(&self, mut rx: watch::Receiver<Option<Flight>>) -> Option<Flight> {
        self.shared.counters.merged.increment(1);
        match tokio::time::timeout(self.shared.merge_timeout, rx.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => Some((*outcome).clone().unwrap_or(Flight::NotShared)),
            Ok(Err(_)) => Some(Flight::NotShared),
            Err(_) => None,
        }
    }

    /// What a waiting request is answered when the origin failed for the
    /// request it waited on: that status, at once, never a body that
    /// could pass for the page.
    fn failed_response<B>(&self, status: StatusCode) -> Response<CacheBody<B>> {
        let mut r = Response::new(CacheBody::full(Bytes::from(format!(
            "larder: the origin failed or timed out ({status}) for the request this one waited on\n"
        ))));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.mark(&mut r, "MISS");
        r
    }

    /// What the requests waiting on this one learn from its outcome.
    fn publish(&self, pkey: &str, outcome: Outcome) -> Flight {
        match outcome {
            Outcome::Stored(e) => {
                self.forget_uncacheable(pkey);
                Flight::Stored(Arc::new(e))
            }
            Outcome::Uncacheable => {
                self.remember_uncacheable(pkey);
                Flight::NotShared
            }
            Outcome::NotShared => Flight::NotShared,
            Outcome::Failed(s) => Flight::Failed(s),
        }
    }

    /// One request to the origin, merged with nobody; stores what it may.
    async fn fetch_alone<S, ReqB, ResB>(
        &self,
        inner: S,
        req: Request<ReqB>,
        pkey: &str,
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
        let requested_at = unix_us();
        let req_headers = req.headers().clone();
        let head = req.method() == Method::HEAD;
        let res = inner.oneshot(req).await?;
        if head {
            return Ok(self.pass(res, "MISS"));
        }
        let (r, outcome) = self
            .store_response(pkey, &req_headers, res, over, requested_at)
            .await;
        // Nobody waits on it; the memory of uncacheable URLs still learns.
        self.publish(pkey, outcome);
        Ok(r)
    }

    /// A miss: one request to the origin per URL at a time in this
    /// process; the others use its response when it is shareable with
    /// them, its failure when it failed, and go themselves otherwise.
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
        if let Err(rx) = self.join_flight(&pkey) {
            match self.wait_flight(rx).await {
                Some(Flight::Stored(entry))
                    if policy::vary_values(&entry.vary, req.headers()) == entry.vary_values =>
                {
                    let method = req.method().clone();
                    return Ok(self.serve(&entry, req.headers(), &method, unix_ms(), "HIT"));
                }
                Some(Flight::Failed(status)) => return Ok(self.failed_response(status)),
                None => return Ok(self.failed_response(StatusCode::GATEWAY_TIMEOUT)),
                Some(_) => {}
            }
            return self.fetch_alone(inner, req, &pkey, over).await;
        }
        // Leader: the guard publishes NotShared if this future is dropped.
        let mut guard = FlightGuard {
            http: self,
            pkey: pkey.clone(),
            outcome: Some(Flight::NotShared),
        };
        let requested_at = unix_us();
        let req_headers = req.headers().clone();
        let method = req.method().clone();
        let res = match inner.oneshot(req).await {
            Ok(r) => r,
            Err(e) => {
                guard.outcome = Some(Flight::Failed(StatusCode::BAD_GATEWAY));
                return Err(e);
            }
        };
        if method == Method::HEAD {
            return Ok(self.pass(res, "MISS"));
        }
        let (r, outcome) = self
            .store_response(&pkey, &req_headers, res, over, requested_at)
            .await;
        guard.outcome = Some(self.publish(&pkey, outcome));
        Ok(r)
    }

    /// Stores a response from the origin if it may, and returns it to the
    /// client (buffered when stored, passed through otherwise).
    async fn store_response<ResB>(
        &self,
        pkey: &str,
        req_headers: &HeaderMap,
        res: Response<ResB>,
        over: Overrides,
        requested_at: u64,
    ) -> (Response<CacheBody<ResB>>, Outcome)
    where
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let (mut parts, body) = res.into_parts();
        let tags = self.strip_tags(&mut parts.headers);
        let targeted = self.take_targeted(&mut parts.headers);
        let lifetime = match policy::storable(
            &self.shared.rules,
            &Method::GET,
            req_headers,
            parts.status,
            targeted.as_ref().unwrap_or(&parts.headers),
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
                let value = match over.browser_ttl {
                    // Shared caches (this one, a CDN) keep it for `ttl` and
                    // are purged by tag; browsers cannot be purged.
                    Some(browser) => {
                        format!("s-maxage={}, max-age={}", ttl.as_secs(), browser.as_secs())
                    }
                    None => format!("max-age={}", ttl.as_secs()),
                };
                if let Ok(v) = HeaderValue::from_str(&value) {
                    parts.headers.insert(header::CACHE_CONTROL, v);
                }
            }
        }
        let lifetime = match lifetime {
            Ok(l) => l,
            Err(why) => {
                tracing::trace!(?why, "response not stored");
                let outcome = Outcome::of_refusal(why, parts.status);
                let mut r = Response::from_parts(parts, CacheBody::inner(body));
                self.mark(&mut r, "MISS");
                return (r, outcome);
            }
        };
        // Bodies of known, small enough length are buffered; bodies of
        // unknown length (chunked, streamed) are streamed to the client
        // while a copy is kept, stored if the stream ends within the limit.
        let len = body.size_hint().exact().or_else(|| {
            parts
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| s.parse().ok())
        });
        if len.is_none() {
            let this = self.clone();
            let (status, headers) = (parts.status, parts.headers.clone());
            let policy_headers = targeted;
            let req_headers = req_headers.clone();
            let pkey = pkey.to_owned();
            let on_complete = Box::new(move |bytes: Bytes| {
                let policy = policy_headers.as_ref().unwrap_or(&headers);
                let entry = this.entry(
                    &status,
                    &headers,
                    policy,
                    &req_headers,
                    bytes,
                    lifetime,
                    requested_at,
                    tags,
                );
                if let Some(entry) = entry {
                    tokio::spawn(async move { this.put(&pkey, &entry).await });
                }
            });
            let body = CacheBody::tee(body, self.shared.max_body, on_complete);
            let mut r = Response::from_parts(parts, body);
            self.mark(&mut r, "MISS");
            // Not shared with waiting requests: they go themselves, and
            // hit once the copy is stored.
            return (r, Outcome::NotShared);
        }
        if len.is_some_and(|n| n > self.shared.max_body as u64) {
            let mut r = Response::from_parts(parts, CacheBody::inner(body));
            self.mark(&mut r, "MISS");
            return (r, Outcome::Uncacheable);
        }
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                // Never a truncated body that could pass for the page.
                let e: BoxError = e.into();
                tracing::debug!(error = %e, "origin body failed while buffering; 502");
                return (
                    self.failed_response(StatusCode::BAD_GATEWAY),
                    Outcome::Failed(StatusCode::BAD_GATEWAY),
                );
            }
        };
        let entry = self.entry(
            &parts.status,
            &parts.headers,
            targeted.as_ref().unwrap_or(&parts.headers),
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
        (r, entry.map_or(Outcome::Uncacheable, Outcome::Stored))
    }
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &self,
        status: &StatusCode,
        headers: &HeaderMap,
        policy_headers: &HeaderMap,
        req_headers: &HeaderMap,
        body: Bytes,
        lifetime: Duration,
        requested_at: u64,
        tags: Vec<String>,
    ) -> Option<Entry> {
        let cc = CacheControl::parse(policy_headers);
        let grace = millis(self.shared.rules.grace);
        let (swr_ms, sie_ms) = if cc.forbids_stale() {
            (0, 0)
        } else {
            (
                cc.stale_while_revalidate.map_or(grace, |s| s * 1000),
                cc.stale_if_error.map_or(grace, |s| s * 1000),
            )
        };
        let mut vary = policy::vary_names(headers)?;
        if !self.shared.key_headers.is_empty() {
            vary.extend(self.shared.key_headers.iter().cloned());
            vary.sort();
            vary.dedup();
        }
        let vary_values = policy::vary_values(&vary, req_headers);
        let initial_age = policy::age_seconds(headers);
        let mut stored: Vec<(String, ByteBuf)> = headers
            .iter()
            .filter(|(n, _)| {
                // Never stored: what describes one connection, and the
                // Age and status this cache sets itself on the way out.
                !crate::headers::HOP_BY_HOP.contains(&n.as_str())
                    && *n != header::AGE
                    && n.as_str() != STATUS_HEADER
                    && *n != header::CONTENT_LENGTH
            })
            .map(|(n, v)| (n.as_str().to_owned(), ByteBuf(v.as_bytes().to_vec())))
            .collect();
        // The length of the body actually stored, whatever the origin
        // said: HEAD answered from this entry must carry the GET's length
        // (RFC 9110 §8.6), and a hit must never announce a different one.
        if !(status.is_informational()
            || *status == StatusCode::NO_CONTENT
            || *status == StatusCode::NOT_MODIFIED)
        {
            stored.push((
                "content-length".to_owned(),
                ByteBuf(body.len().to_string().into_bytes()),
            ));
        }
        let entry = Entry {
            status: status.as_u16(),
            headers: stored,
            body: ByteBuf(body.to_vec()),
            stored_at_ms: unix_ms(),
            requested_at_us: requested_at,
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
        // A purge of this URL since the request started wins: it wrote its
        // record before deleting, so either its delete came after our
        // write or we see the record now.
        if r.is_ok() {
            if let Ok(Some(at)) = cache.get::<u64>(&key::url_purge(pkey)).await {
                if at >= entry.requested_at_us {
                    tracing::debug!(
                        "http cache: URL purged while the response was fetched; not kept"
                    );
                    if let Err(e) = cache.delete(pkey).await {
                        tracing::warn!(error = %e, "http cache: could not undo a store that raced a purge");
                    }
                    return;
                }
            }
        }
        if r.is_ok() && !entry.tags.is_empty() {
            self.note_tags(&entry.tags, Self::keep_for(entry)).await;
        }
        match r {
            Ok(()) => {
                self.shared.counters.stored.increment(1);
                self.shared.write_failures.success();
            }
            Err(e) => {
                tracing::debug!(error = %e, "http cache write failed; response served uncached");
                self.shared.write_failures.failure(&e);
            }
        }
    }

    /// A stale entry that must be revalidated before use: one request to
    /// the origin per URL at a time, as for misses.
    async fn revalidate_merged<S, ReqB, ResB>(
        &self,
        inner: S,
        req: Request<ReqB>,
        pkey: String,
        entry: Entry,
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
        if let Err(rx) = self.join_flight(&pkey) {
            let method = req.method().clone();
            let failed = match self.wait_flight(rx).await {
                Some(Flight::Stored(fresh))
                    if policy::vary_values(&fresh.vary, req.headers()) == fresh.vary_values =>
                {
                    return Ok(self.serve(&fresh, req.headers(), &method, unix_ms(), "HIT"));
                }
                Some(Flight::Failed(status)) => Some(status),
                None => Some(StatusCode::GATEWAY_TIMEOUT),
                Some(_) => None,
            };
            if let Some(status) = failed {
                let now = unix_ms();
                if entry.age(now) < entry.lifetime() + Duration::from_millis(entry.sie_ms) {
                    self.shared.counters.stale.increment(1);
                    return Ok(self.serve(&entry, req.headers(), &method, now, "STALE"));
                }
                return Ok(self.failed_response(status));
            }
            return self
                .revalidate(inner, req, pkey, entry, over)
                .await
                .map(|(r, _)| r);
        }
        let mut guard = FlightGuard {
            http: self,
            pkey: pkey.clone(),
            outcome: Some(Flight::NotShared),
        };
        match self.revalidate(inner, req, pkey, entry, over).await {
            Ok((r, flight)) => {
                guard.outcome = Some(flight);
                Ok(r)
            }
            Err(e) => {
                guard.outcome = Some(Flight::Failed(StatusCode::BAD_GATEWAY));
                Err(e)
            }
        }
    }

    /// Forwards a request for a stale entry with its validators; a 304
    /// refreshes the entry. Also says what requests waiting on this one
    /// may use.
    async fn revalidate<S, ReqB, ResB>(
        &self,
        inner: S,
        mut req: Request<ReqB>,
        pkey: String,
        mut entry: Entry,
        over: Overrides,
    ) -> Result<(Response<CacheBody<ResB>>, Flight), S::Error>
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
        let requested_at = unix_us();
        let now = unix_ms();
        let within_sie = entry.age(now) < entry.lifetime() + Duration::from_millis(entry.sie_ms);
        let res = match inner.oneshot(req).await {
            Ok(r) => r,
            Err(_) if within_sie => {
                tracing::debug!("origin failed; serving the stale response (stale-if-error)");
                self.shared.counters.stale.increment(1);
                return Ok((
                    self.serve(&entry, &client_headers, &method, now, "STALE"),
                    Flight::Failed(StatusCode::BAD_GATEWAY),
                ));
            }
            Err(e) => return Err(e),
        };
        if res.status() == StatusCode::NOT_MODIFIED {
            entry.update_from_304(res.headers());
            entry.stored_at_ms = unix_ms();
            entry.initial_age = 0;
            self.put(&pkey, &entry).await;
            self.shared.counters.revalidated.increment(1);
            let r = self.serve(&entry, &client_headers, &method, unix_ms(), "REVALIDATED");
            return Ok((r, Flight::Stored(Arc::new(entry))));
        }
        if res.status().is_server_error() && within_sie {
            self.shared.counters.stale.increment(1);
            return Ok((
                self.serve(&entry, &client_headers, &method, now, "STALE"),
                Flight::Failed(res.status()),
            ));
        }
        if method == Method::HEAD {
            return Ok((self.pass(res, "MISS"), Flight::NotShared));
        }
        let (r, outcome) = self
            .store_response(&pkey, &client_headers, res, over, requested_at)
            .await;
        Ok((r, self.publish(&pkey, outcome)))
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
        if self.join_flight(&pkey).is_err() {
            return; // a request for this URL is already under way
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
            let mut guard = FlightGuard {
                http: &http,
                pkey: pkey.clone(),
                outcome: Some(Flight::NotShared),
            };
            match http
                .revalidate(inner, background, pkey.clone(), entry, over)
                .await
            {
                Ok((res, flight)) => {
                    guard.outcome = Some(flight);
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
        .and_then(policy::parse_http_date);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use http_body_util::BodyExt;
    use tower::{Service, ServiceExt};

    use super::*;

    /// An unreadable tag purge record means "purged": the tagged page is
    /// not served from the store, and the record is rewritten so that the
    /// page caches again afterwards (it used to read as "never purged").
    #[tokio::test]
    async fn an_unreadable_tag_record_means_purged_and_heals() {
        let store = Cache::builder(larder_mem::MemBackend::default())
            .build()
            .unwrap();
        let http = HttpCache::builder(store.clone()).build();
        let calls = Arc::new(AtomicU32::new(0));
        let origin = {
            let calls = calls.clone();
            tower::service_fn(move |_req: Request<String>| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    let mut r =
                        Response::new(http_body_util::Full::new(Bytes::from(format!("body {n}"))));
                    r.headers_mut()
                        .insert("cache-control", HeaderValue::from_static("max-age=60"));
                    r.headers_mut()
                        .insert("cache-tag", HeaderValue::from_static("post:1"));
                    Ok::<_, std::convert::Infallible>(r)
                }
            })
        };
        let mut svc = tower::Layer::layer(&http.layer(), origin);
        let mut get = async || {
            let req = Request::builder()
                .uri("/p")
                .header("host", "site.test")
                .body(String::new())
                .unwrap();
            let res = svc.ready().await.unwrap().call(req).await.unwrap();
            String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        };
        assert_eq!(get().await, "body 1");
        assert_eq!(get().await, "body 1", "cached");
        let record = store.make_key(&key::tag("post:1")).unwrap();
        for garbage in [&b"\xa7\x01\x00\xff\xff"[..], b"purged!", b""] {
            store
                .backend()
                .set(
                    &record,
                    Bytes::copy_from_slice(garbage),
                    larder_core::Expiry::Never,
                )
                .await
                .unwrap();
            let before = calls.load(Ordering::SeqCst);
            get().await;
            assert_eq!(
                calls.load(Ordering::SeqCst),
                before + 1,
                "a page behind an unreadable purge record was served from the store"
            );
            // The rewritten record says "purged now", which may also cover
            // the response fetched meanwhile: at most one more miss.
            tokio::time::sleep(Duration::from_millis(5)).await;
            for _ in 0..3 {
                get().await;
            }
            let settled = calls.load(Ordering::SeqCst);
            assert!(
                settled <= before + 2,
                "{} misses after the repair",
                settled - before
            );
            get().await;
            assert_eq!(
                calls.load(Ordering::SeqCst),
                settled,
                "the record did not heal: the page never caches again"
            );
        }
    }
}
