//! `larder proxy`: a caching reverse proxy built on larder-http's layer.
//!
//! Every method, path, header and body goes to the upstream unchanged,
//! except hop-by-hop headers (RFC 9110 §7.6.1). Paths under `/_larder/` are
//! the proxy's own (status, metrics, purge) and are never forwarded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use larder_http::HttpCache;
use tower::{Layer, Service};

use crate::CliError;

pub const EXAMPLES: &str = "\
Examples:
  larder proxy --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000 --cache mem://
  larder proxy --listen 0.0.0.0:8080 --upstream http://app:8000 \\
      --cache redis://127.0.0.1:6379/0 --default-ttl 60 --grace 30
Own paths (never forwarded): /_larder/status, /_larder/metrics,
  POST /_larder/purge?tag=post:42, POST /_larder/purge?url=/news&host=example.com";

/// The reserved path prefix.
pub const PREFIX: &str = "/_larder/";

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The upstream origin, http://host:port (plain HTTP/1.1).
    #[arg(long)]
    upstream: String,
    /// Where to store responses (any larder cache URL).
    #[arg(
        long,
        default_value = "mem://?max_bytes=268435456",
        env = "LARDER_CACHE_URL"
    )]
    cache: String,
    /// Freshness, in seconds, for responses that carry none but may be
    /// stored (like Django's CACHE_MIDDLEWARE_SECONDS); default: only
    /// responses with explicit freshness are stored.
    #[arg(long)]
    default_ttl: Option<u64>,
    /// Serve stale responses this many seconds past freshness while
    /// revalidating, and when the upstream fails.
    #[arg(long, default_value_t = 0)]
    grace: u64,
    /// Largest response body stored, in bytes.
    #[arg(long, default_value_t = larder_http::DEFAULT_MAX_BODY)]
    max_body: usize,
    /// Deadline for one upstream request, in seconds.
    #[arg(long, default_value_t = 30)]
    upstream_timeout: u64,
}

/// Counters for /_larder/status and /_larder/metrics.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    hit: AtomicU64,
    miss: AtomicU64,
    stale: AtomicU64,
    revalidated: AtomicU64,
    bypass: AtomicU64,
    upstream_errors: AtomicU64,
    latency_us_total: AtomicU64,
}

#[derive(Clone)]
struct AppState {
    http: HttpCache,
    stats: Arc<Stats>,
    upstream: Uri,
    started: Instant,
}

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// Forwards a request to the upstream; failures become 502/504 responses.
#[derive(Clone)]
struct Upstream {
    client: Client<HttpConnector, Body>,
    base: Uri,
    timeout: Duration,
    stats: Arc<Stats>,
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let pq = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let mut parts = this.base.clone().into_parts();
            parts.path_and_query = pq.parse().ok();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            strip_hop_by_hop(req.headers_mut());
            match tokio::time::timeout(this.timeout, this.client.request(req)).await {
                Ok(Ok(mut res)) => {
                    strip_hop_by_hop(res.headers_mut());
                    Ok(res.map(Body::new))
                }
                Ok(Err(e)) => {
                    this.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "upstream request failed");
                    Ok(error_response(StatusCode::BAD_GATEWAY))
                }
                Err(_) => {
                    this.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    Ok(error_response(StatusCode::GATEWAY_TIMEOUT))
                }
            }
        })
    }
}

/// What the proxy answers when the upstream does not.
fn error_response(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("larder proxy: upstream {status}\n")));
    *r.status_mut() = status;
    r
}

pub fn run(args: ProxyArgs) -> Result<(), CliError> {
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(serve(args, upstream))
}

async fn serve(args: ProxyArgs, upstream: Uri) -> Result<(), CliError> {
    let store = larder::open(&args.cache).await?;
    let http = HttpCache::builder(store)
        .default_ttl(args.default_ttl.map(Duration::from_secs))
        .grace(Duration::from_secs(args.grace))
        .max_body_bytes(args.max_body)
        .build();
    let stats = Arc::new(Stats::default());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector);
    let cached = http.layer().layer(Upstream {
        client,
        base: upstream.clone(),
        timeout: Duration::from_secs(args.upstream_timeout),
        stats: stats.clone(),
    });
    let state = AppState {
        http,
        stats: stats.clone(),
        upstream,
        started: Instant::now(),
    };
    let counted = axum::middleware::from_fn_with_state(state.clone(), count);
    let app = Router::new()
        .route("/_larder/status", get(status))
        .route("/_larder/metrics", get(metrics))
        .route("/_larder/purge", post(purge))
        .route("/_larder/{*rest}", get(not_found).post(not_found))
        .with_state(state)
        .fallback_service(cached)
        .layer(counted);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!(
        "larder proxy: http://{} -> {} (cache {}); status at http://{}/_larder/status",
        args.listen, args.upstream, args.cache, args.listen
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CliError::failed(format!("server error: {e}")))
}

async fn count(
    State(state): State<AppState>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response {
    let own = req.uri().path().starts_with(PREFIX);
    let started = Instant::now();
    let res = next.run(req).await;
    if !own {
        let s = &state.stats;
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.latency_us_total
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let counter = match res
            .headers()
            .get(larder_http::STATUS_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some("HIT") => &s.hit,
            Some("STALE") => &s.stale,
            Some("REVALIDATED") => &s.revalidated,
            Some("MISS") => &s.miss,
            _ => &s.bypass,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    res
}

fn snapshot(s: &Stats) -> [(&'static str, u64); 8] {
    [
        ("requests", s.requests.load(Ordering::Relaxed)),
        ("hit", s.hit.load(Ordering::Relaxed)),
        ("miss", s.miss.load(Ordering::Relaxed)),
        ("stale", s.stale.load(Ordering::Relaxed)),
        ("revalidated", s.revalidated.load(Ordering::Relaxed)),
        ("bypass", s.bypass.load(Ordering::Relaxed)),
        ("upstream_errors", s.upstream_errors.load(Ordering::Relaxed)),
        (
            "latency_us_total",
            s.latency_us_total.load(Ordering::Relaxed),
        ),
    ]
}

async fn status(State(state): State<AppState>) -> Response {
    let snap = snapshot(&state.stats);
    let get = |k: &str| snap.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v);
    let served = get("hit") + get("stale") + get("revalidated");
    let body = serde_json::json!({
        "upstream": state.upstream.to_string(),
        "cache": state.http.store().backend().name(),
        "uptime_s": state.started.elapsed().as_secs(),
        "counters": snap.iter().map(|(k, v)| (k.to_string(), v)).collect::<std::collections::BTreeMap<_, _>>(),
        "hit_ratio": if get("requests") == 0 { 0.0 } else { served as f64 / get("requests") as f64 },
        "breaker": format!("{:?}", state.http.store().breaker_state()),
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        serde_json::to_string_pretty(&body).unwrap_or_default() + "\n",
    )
        .into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP larder_proxy_requests_total Requests proxied, by what the cache did.\n");
    out.push_str("# TYPE larder_proxy_requests_total counter\n");
    for (k, v) in snapshot(&state.stats) {
        match k {
            "requests" | "latency_us_total" | "upstream_errors" => {}
            _ => out.push_str(&format!(
                "larder_proxy_requests_total{{cache=\"{k}\"}} {v}\n"
            )),
        }
    }
    let s = &state.stats;
    out.push_str("# TYPE larder_proxy_upstream_errors_total counter\n");
    out.push_str(&format!(
        "larder_proxy_upstream_errors_total {}\n",
        s.upstream_errors.load(Ordering::Relaxed)
    ));
    out.push_str("# TYPE larder_proxy_latency_seconds_sum counter\n");
    out.push_str(&format!(
        "larder_proxy_latency_seconds_sum {}\n",
        s.latency_us_total.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str("# TYPE larder_proxy_breaker_open gauge\n");
    let open = matches!(
        state.http.store().breaker_state(),
        larder::BreakerState::Open
    );
    out.push_str(&format!("larder_proxy_breaker_open {}\n", u8::from(open)));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct PurgeQuery {
    tag: Option<String>,
    url: Option<String>,
    host: Option<String>,
}

async fn purge(State(state): State<AppState>, Query(q): Query<PurgeQuery>) -> Response {
    let result = match (&q.tag, &q.url) {
        (Some(tag), None) => state.http.purge_tag(tag).await,
        (None, Some(url)) => match url.parse::<Uri>() {
            Ok(uri) => {
                let host = q.host.clone().unwrap_or_default();
                state.http.purge_url(&host, &uri).await
            }
            Err(e) => return (StatusCode::BAD_REQUEST, format!("url: {e}\n")).into_response(),
        },
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "give exactly one of ?tag=… or ?url=…(&host=…)\n",
            )
                .into_response()
        }
    };
    match result {
        Ok(()) => (StatusCode::OK, "purged\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("purge failed: {e}\n"),
        )
            .into_response(),
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "unknown /_larder/ path\n").into_response()
}
