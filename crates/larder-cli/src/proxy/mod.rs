//! `larder proxy`: a caching reverse proxy built on larder-http's layer,
//! meant to face the internet.
//!
//! Every method, path, header and body goes to the upstream unchanged,
//! except hop-by-hop headers (RFC 9110 §7.6.1), `Host` for absolute-form
//! targets (RFC 9112 §3.2.2), and the forwarding headers it adds
//! (`X-Forwarded-For`, `X-Forwarded-Proto`, `Via`). The operator's
//! endpoints (dashboard, status, stats, metrics, purge) live on a separate
//! admin listener, loopback by default, and need a bearer token when one is
//! configured; the traffic listener answers `/_larder/…` with 404 unless
//! told to serve them there (which requires the token).
//!
//! - `server`: connections, limits, timeouts, shedding;
//! - `upstream`: forwarding, origin timeouts, client body errors;
//! - `interim`: the origin's 1xx responses on their way to the client;
//! - this file: flags, the edge checks, the admin routes.

mod interim;
mod server;
mod upstream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use clap::Args;
use futures_util::FutureExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use larder_http::{CacheService, HttpCache};
use tower::Layer;

use crate::CliError;
use server::{Limits, ServerStats};
use upstream::{error_response, ClientBody, ClientBodyState, Stats, Timeouts, Upstream};

pub const EXAMPLES: &str = "\
Examples:
  larder proxy --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000 --cache mem://
  LARDER_ADMIN_TOKEN=$(cat /etc/larder/token) larder proxy --listen 0.0.0.0:80 \\
      --upstream http://app:8000 --cache redis://127.0.0.1:6379/0 --default-ttl 60 --grace 30 \\
      --admin-listen 10.0.0.5:9080
Admin paths, on --admin-listen (default 127.0.0.1:9080; a bearer token when configured):
  /_larder (dashboard; with a token open /_larder#token=…), /_larder/stats.json, /_larder/status,
  /_larder/metrics, POST /_larder/purge?tag=post:42, POST /_larder/purge?url=/news&host=example.com";

/// Where the admin endpoints listen: an address, or `off`.
#[derive(Debug, Clone, Copy)]
pub enum AdminListen {
    Off,
    At(SocketAddr),
}

fn parse_admin_listen(s: &str) -> Result<AdminListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(AdminListen::Off);
    }
    s.parse()
        .map(AdminListen::At)
        .map_err(|e| format!("{s:?}: {e} (give host:port, or off)"))
}

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to listen on for traffic.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The upstream origin, http://host:port (plain HTTP/1.1).
    #[arg(long)]
    upstream: String,
    /// Where to store responses (any larder cache URL; default:
    /// $LARDER_CACHE_URL, else larder.toml's [caches.default], else
    /// mem://?max_bytes=268435456).
    #[arg(long)]
    cache: Option<String>,
    /// Freshness, in seconds, for responses that carry none but may be
    /// stored (like Django's CACHE_MIDDLEWARE_SECONDS); never applied to
    /// requests with Cookie or Authorization. Default: only responses with
    /// explicit freshness are stored.
    #[arg(long)]
    default_ttl: Option<u64>,
    /// Serve stale responses this many seconds past freshness while
    /// revalidating, and when the upstream fails.
    #[arg(long, default_value_t = 0)]
    grace: u64,
    /// Largest response body stored, in bytes.
    #[arg(long, default_value_t = larder_http::DEFAULT_MAX_BODY)]
    max_body: usize,
    /// Seconds the upstream has to answer with a response head.
    #[arg(long, default_value_t = 30)]
    upstream_timeout: u64,
    /// Seconds to connect to the upstream.
    #[arg(long, default_value_t = 5)]
    connect_timeout: u64,
    /// Longest gap, in seconds, between two pieces of an upstream response
    /// body; past it the response breaks off (the client sees an
    /// incomplete response, never a short one that looks whole).
    #[arg(long, default_value_t = 30)]
    upstream_body_timeout: u64,
    /// Where the admin endpoints (/_larder/…) listen, or `off`. Without a
    /// token it must be a loopback address.
    #[arg(long, default_value = "127.0.0.1:9080", value_parser = parse_admin_listen)]
    admin_listen: AdminListen,
    /// A file holding the admin bearer token (or set $LARDER_ADMIN_TOKEN).
    /// With a token every admin endpoint but the dashboard page needs
    /// `Authorization: Bearer TOKEN`.
    #[arg(long)]
    admin_token_file: Option<std::path::PathBuf>,
    /// Also serve the admin endpoints on the traffic listener (needs a token).
    #[arg(long)]
    admin_on_traffic: bool,
    /// Seconds a client has to send a complete request head (from its first
    /// byte, or from accepting the connection for the first request).
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, default_value_t = 30)]
    idle_timeout: u64,
    /// Seconds a client may leave a response unread before the connection
    /// is closed.
    #[arg(long, default_value_t = 30)]
    send_timeout: u64,
    /// Largest request head (request line and headers), bytes; larger: 431.
    #[arg(long, default_value_t = 32 * 1024)]
    max_header_bytes: usize,
    /// Open client connections at most; at the limit the oldest idle one
    /// is closed to make room, and when all are busy new ones get 503.
    /// Also capped by the open-files limit.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Largest request body, bytes; larger: 413. Default: no limit (bodies
    /// are streamed to the upstream, not buffered).
    #[arg(long)]
    max_request_body: Option<u64>,
    /// Act on clients' Cache-Control / Pragma request directives (no-cache,
    /// max-age=0, …). Off by default: any client could otherwise make every
    /// request go to the upstream.
    #[arg(long)]
    honor_client_cache_control: bool,
    /// A request header to include in every cache key (repeatable), for
    /// headers the upstream reads that its responses do not name in Vary.
    #[arg(long = "key-header", value_name = "NAME")]
    key_headers: Vec<String>,
    /// A response header that speaks to this proxy alone (RFC 9213
    /// targeted cache control, e.g. Larder-Cache-Control): when present
    /// and valid it decides over Cache-Control here, and it is removed
    /// before the response leaves.
    #[arg(long = "target-field", value_name = "NAME")]
    target_field: Option<String>,
    /// Act as a CDN: honour CDN-Cache-Control (RFC 9213) over
    /// Cache-Control (after --target-field, if given).
    #[arg(long)]
    cdn: bool,
    /// Seconds a URL whose response could not be stored is remembered as
    /// uncacheable, so its requests go to the upstream in parallel (0: off).
    #[arg(long, default_value_t = 60)]
    uncacheable_for: u64,
    /// Threads serving traffic, each with its own event loop and its own
    /// upstream connections (like nginx's worker_processes). Default: one
    /// per CPU.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

#[derive(Clone)]
struct AppState {
    http: HttpCache,
    stats: Arc<Stats>,
    server: Arc<ServerStats>,
    upstream: Uri,
    started: Instant,
    dashboard: larder_dashboard::Dashboard,
}

pub fn run(mut args: ProxyArgs, config: Option<&str>) -> Result<(), CliError> {
    if args.cache.is_none() {
        let config = crate::config::Config::load(config)?;
        let configured = config.caches.contains_key("default")
            || std::env::var("LARDER_CACHE_URL").is_ok_and(|u| !u.is_empty());
        args.cache = Some(if configured {
            config.cache_url("default")?
        } else {
            "mem://?max_bytes=268435456".to_owned()
        });
    }
    let upstream: Uri = args
        .upstream
        .parse()
        .map_err(|e| CliError::usage(format!("--upstream {:?}: {e}", args.upstream)))?;
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        return Err(CliError::usage(format!(
            "--upstream {:?} must be http://host:port (HTTPS upstreams are not supported yet)",
            args.upstream
        )));
    }
    let token = admin_token(&args)?;
    if let AdminListen::At(addr) = args.admin_listen {
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(CliError::usage(format!(
                "--admin-listen {addr} is not a loopback address: give an admin token \
                 (--admin-token-file or $LARDER_ADMIN_TOKEN) so that purges need it"
            )));
        }
    }
    if args.admin_on_traffic && token.is_none() {
        return Err(CliError::usage(
            "--admin-on-traffic needs an admin token (--admin-token-file or $LARDER_ADMIN_TOKEN)",
        ));
    }
    if args.max_header_bytes < 1024 {
        return Err(CliError::usage("--max-header-bytes must be at least 1024"));
    }
    let key_headers = args
        .key_headers
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| CliError::usage(format!("--key-header {n:?} is not a header name")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut target_fields = Vec::new();
    if let Some(n) = &args.target_field {
        target_fields.push(
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                CliError::usage(format!("--target-field {n:?} is not a header name"))
            })?,
        );
    }
    if args.cdn {
        target_fields.push(larder_http::CDN_CACHE_CONTROL);
    }
    // The admin listener, signals and the cache store's own connections
    // run here; traffic is accepted and served on the worker threads
    // (`server::serve_on_workers`), each with a runtime of its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(serve(args, upstream, token, key_headers, target_fields))
}

/// The admin token from --admin-token-file or $LARDER_ADMIN_TOKEN.
fn admin_token(args: &ProxyArgs) -> Result<Option<Arc<str>>, CliError> {
    let raw =
        match &args.admin_token_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                CliError::usage(format!("--admin-token-file {}: {e}", path.display()))
            })?),
            None => std::env::var("LARDER_ADMIN_TOKEN").ok(),
        };
    match raw.map(|t| t.trim().to_owned()) {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.len() < 16 || t.bytes().any(|b| !b.is_ascii_graphic()) => Err(
            CliError::usage("the admin token must be at least 16 printable characters, no spaces"),
        ),
        Some(t) => Ok(Some(t.into())),
    }
}

async fn serve(
    args: ProxyArgs,
    upstream: Uri,
    token: Option<Arc<str>>,
    key_headers: Vec<HeaderName>,
    target_fields: Vec<HeaderName>,
) -> Result<(), CliError> {
    // Before the cache is built: its counters register with the recorder.
    let dashboard = larder_dashboard::Dashboard::new();
    let cache_url = args.cache.clone().unwrap_or_default();
    let store = larder::open(&cache_url).await?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(args.connect_timeout),
        response_head: Duration::from_secs(args.upstream_timeout),
        body_gap: Duration::from_secs(args.upstream_body_timeout),
    };
    let http = HttpCache::builder(store)
        .default_ttl(args.default_ttl.map(Duration::from_secs))
        .grace(Duration::from_secs(args.grace))
        .max_body_bytes(args.max_body)
        .honor_request_cache_control(args.honor_client_cache_control)
        .uncacheable_for(Duration::from_secs(args.uncacheable_for))
        .key_headers(key_headers)
        .target_fields(target_fields)
        .refuse_ambiguous_host(true)
        // A waiting request never waits longer than the one it waits for
        // can take to get its head and one body gap.
        .merge_timeout(timeouts.connect + timeouts.response_head + timeouts.body_gap)
        .build();
    let stats = Arc::new(Stats::default());
    let server_stats = Arc::new(ServerStats::default());
    let dashboard = {
        let (errors, upstream) = (stats.clone(), upstream.to_string());
        dashboard
            .http_cache(&http)
            .section("metrics_path", || "/_larder/metrics".into())
            .section("upstream", move || upstream.clone().into())
            .section("upstream_errors", move || {
                errors.upstream_errors.load(Ordering::Relaxed).into()
            })
    };
    let state = AppState {
        http: http.clone(),
        stats: stats.clone(),
        server: server_stats.clone(),
        upstream: upstream.clone(),
        started: Instant::now(),
        dashboard: dashboard.clone(),
    };
    let admin = admin_router(state.clone(), token.clone());
    let own_paths = if args.admin_on_traffic {
        admin.clone()
    } else {
        Router::new().fallback(not_found)
    };
    // Each worker builds its own stack on its own thread, so the upstream
    // client's pooled connections live where its requests are served.
    let max_request_body = args.max_request_body;
    let latency = dashboard.latency_layer();
    let traffic = move || {
        let cached = http
            .layer()
            .layer(Upstream::new(upstream.clone(), timeouts, stats.clone()));
        Traffic {
            own: own_paths.clone(),
            // Latency of the traffic only, not of the admin paths beside it.
            edge: tower::Layer::layer(
                &latency,
                Edge {
                    cached,
                    max_request_body,
                },
            ),
        }
    };
    let workers = match args.workers {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let limits = Limits {
        header_timeout: Duration::from_secs(args.header_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        send_timeout: Duration::from_secs(args.send_timeout),
        max_header_bytes: args.max_header_bytes,
        max_connections: server::effective_max_connections(args.max_connections),
    };
    if limits.max_connections < args.max_connections {
        tracing::warn!(
            wanted = args.max_connections,
            allowed = limits.max_connections,
            "--max-connections lowered to what the open-files limit allows"
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", args.listen)))?;
    let admin_addr = match args.admin_listen {
        AdminListen::Off => None,
        AdminListen::At(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                CliError::failed(format!(
                    "cannot listen on the admin address {addr}: {e} (give --admin-listen ADDR, or off)"
                ))
            })?;
            let bound = l.local_addr().unwrap_or(addr);
            let admin_limits = Limits {
                max_connections: 64,
                ..limits
            };
            tokio::spawn(server::serve(
                l,
                admin_limits,
                admin,
                Arc::new(ServerStats::default()),
                std::future::pending::<()>(),
            ));
            Some(bound)
        }
    };
    // The bound addresses, not the requested ones: with port 0 this line is
    // how a supervisor (or a test) learns where the proxy listens. Stdout,
    // like `larder demo: URL`, so logs on stderr never interleave with it.
    let bound = listener.local_addr().unwrap_or(args.listen);
    println!(
        "larder proxy: http://{} -> {} (cache {}); admin {}",
        bound,
        args.upstream,
        cache_url,
        admin_addr.map_or("off".to_owned(), |a| format!("http://{a}/_larder")),
    );
    server::serve_on_workers(listener, workers, limits, traffic, server_stats, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .map_err(|e| CliError::failed(format!("cannot start the proxy's workers: {e}")))
}

/// The traffic listener's service: the proxy's own paths (`/_larder` and
/// below: 404, or the admin routes with `--admin-on-traffic`) apart from
/// everything else, which goes to the edge. Chosen by a prefix test rather
/// than a router, whose per-request clone of a boxed service a hit would
/// pay for nothing.
#[derive(Clone)]
struct Traffic {
    own: Router,
    edge: larder_dashboard::Latency<Edge>,
}

/// Whether `path` is one of the proxy's own (`/_larder`, `/_larder/…`).
fn is_own_path(path: &str) -> bool {
    path.strip_prefix("/_larder")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_paths_are_larder_and_below_only() {
        for own in ["/_larder", "/_larder/", "/_larder/status", "/_larder/a/b"] {
            assert!(super::is_own_path(own), "{own}");
        }
        for theirs in ["/", "/_larderx", "/_larder.json", "/x/_larder", "//_larder"] {
            assert!(!super::is_own_path(theirs), "{theirs}");
        }
    }
}

impl tower::Service<http::Request<hyper::body::Incoming>> for Traffic {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        axum::routing::future::RouteFuture<std::convert::Infallible>,
        larder_dashboard::LatencyFuture<EdgeFuture>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        // A router is always ready.
        tower::Service::poll_ready(&mut self.edge, cx)
    }

    fn call(&mut self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        use futures_util::future::Either;
        let req = req.map(Body::new);
        if is_own_path(req.uri().path()) {
            Either::Left(tower::Service::call(&mut self.own, req))
        } else {
            Either::Right(tower::Service::call(&mut self.edge, req))
        }
    }
}

/// The traffic path: request checks, then the cache and the upstream.
#[derive(Clone)]
struct Edge {
    cached: CacheService<Upstream>,
    max_request_body: Option<u64>,
}

type CachedFuture = larder_http::ResponseFuture<Body, std::convert::Infallible>;
type EdgeFuture = futures_util::future::Either<
    std::future::Ready<Result<Response, std::convert::Infallible>>,
    futures_util::future::Map<
        CachedFuture,
        fn(
            <CachedFuture as std::future::Future>::Output,
        ) -> Result<Response, std::convert::Infallible>,
    >,
>;

fn into_axum(
    r: Result<http::Response<larder_http::CacheBody<Body>>, std::convert::Infallible>,
) -> Result<Response, std::convert::Infallible> {
    match r {
        Ok(res) => Ok(res.map(Body::new)),
        Err(never) => match never {},
    }
}

/// A tower service rather than an axum handler, and its checks done in
/// `call`: no clone of the stack, no extra boxed future per request.
impl tower::Service<Request> for Edge {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = EdgeFuture;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.cached, cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures_util::future::Either;
        match self.check(req) {
            Err(refused) => Either::Left(std::future::ready(Ok(refused))),
            Ok(req) => Either::Right(
                tower::Service::call(&mut self.cached, req).map(into_axum as fn(_) -> _),
            ),
        }
    }
}

impl Edge {
    /// Refuses what must not reach the cache or the upstream; wraps a
    /// request body so its failures are the client's.
    #[allow(clippy::result_large_err)]
    fn check(&self, req: Request) -> Result<Request, Response> {
        if req.method() == Method::CONNECT {
            let mut r = error_response(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied");
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return Err(r);
        }
        // Host is checked once, by the cache layer (refuse_ambiguous_host).
        // Framing needs no check here: hyper refuses two different
        // Content-Lengths and codings other than chunked-last, and frames a
        // request that has both Transfer-Encoding and Content-Length by
        // the former alone, closing the connection after it (RFC 9112 §6.1).
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(limit), Some(n)) = (self.max_request_body, declared) {
            if n > limit {
                return Err(error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body too large",
                ));
            }
        }
        // Most requests have no body: nothing to watch (and no allocation
        // on the hit path).
        if http_body::Body::is_end_stream(req.body()) {
            return Ok(req);
        }
        let body_state = ClientBodyState::default();
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(body_state.clone());
        let body = Body::new(ClientBody::new(body, self.max_request_body, body_state));
        Ok(http::Request::from_parts(parts, body))
    }
}

/// The operator's endpoints, behind the token when there is one.
fn admin_router(state: AppState, token: Option<Arc<str>>) -> Router {
    let purge = state.http.admin();
    let page = state.dashboard.service();
    let protected = Router::new()
        .route("/_larder/status", get(status))
        .route("/_larder/metrics", get(metrics))
        .route_service("/_larder/stats.json", state.dashboard.service())
        .route_service("/_larder/purge", purge)
        .route("/_larder/{*rest}", any(not_found))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(token, require_token));
    // The page holds no data; it sends the token it was given in its URL
    // fragment with each stats request.
    Router::new()
        .route_service("/_larder", page.clone())
        .route_service("/_larder/", page)
        .merge(protected)
        .fallback(not_found)
}

async fn require_token(
    State(token): State<Option<Arc<str>>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_secret(given.as_bytes(), token.as_bytes()) {
            let mut r = error_response(StatusCode::UNAUTHORIZED, "admin token required");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"larder\""),
            );
            return r;
        }
    }
    next.run(req).await
}

/// Compares in time that depends on the length only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(state): State<AppState>) -> Response {
    let s = state.http.stats();
    let served = s.hits + s.stale + s.revalidated;
    let requests = served + s.misses + s.bypassed;
    let body = serde_json::json!({
        "upstream": state.upstream.to_string(),
        "cache": state.http.store().backend().name(),
        "uptime_s": state.started.elapsed().as_secs(),
        "counters": s,
        "upstream_errors": state.stats.upstream_errors.load(Ordering::Relaxed),
        "client_errors": state.stats.client_errors.load(Ordering::Relaxed),
        "connections": {
            "open": state.server.open.load(Ordering::Relaxed),
            "refused": state.server.refused.load(Ordering::Relaxed),
            "timed_out": state.server.timed_out.load(Ordering::Relaxed),
            "per_worker": state.server.open_per_worker(),
        },
        "hit_ratio": if requests == 0 { 0.0 } else { served as f64 / requests as f64 },
        "breaker": format!("{:?}", state.http.store().breaker_state()),
    });
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        serde_json::to_string_pretty(&body).unwrap_or_default() + "\n",
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP larder_proxy_requests_total Requests proxied, by what the cache did.\n");
    out.push_str("# TYPE larder_proxy_requests_total counter\n");
    let s = state.http.stats();
    for (k, v) in [
        ("hit", s.hits),
        ("miss", s.misses),
        ("stale", s.stale),
        ("revalidated", s.revalidated),
        ("bypass", s.bypassed),
    ] {
        out.push_str(&format!(
            "larder_proxy_requests_total{{cache=\"{k}\"}} {v}\n"
        ));
    }
    out.push_str("# TYPE larder_proxy_stored_total counter\n");
    out.push_str(&format!("larder_proxy_stored_total {}\n", s.stored));
    out.push_str("# TYPE larder_proxy_upstream_errors_total counter\n");
    out.push_str(&format!(
        "larder_proxy_upstream_errors_total {}\n",
        state.stats.upstream_errors.load(Ordering::Relaxed)
    ));
    out.push_str("# TYPE larder_proxy_client_errors_total counter\n");
    out.push_str(&format!(
        "larder_proxy_client_errors_total {}\n",
        state.stats.client_errors.load(Ordering::Relaxed)
    ));
    out.push_str("# TYPE larder_proxy_open_connections gauge\n");
    out.push_str(&format!(
        "larder_proxy_open_connections {}\n",
        state.server.open.load(Ordering::Relaxed)
    ));
    out.push_str("# TYPE larder_proxy_breaker_open gauge\n");
    let open = matches!(
        state.http.store().breaker_state(),
        larder::BreakerState::Open
    );
    out.push_str(&format!("larder_proxy_breaker_open {}\n", u8::from(open)));
    // Everything else larder counts in this process (cache hits, misses,
    // timeouts, breaker, request latency histogram).
    out.push_str(&state.dashboard.prometheus_text().await);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "unknown /_larder/ path")
}
