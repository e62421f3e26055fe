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
Own paths (never forwarded): /_larder (dashboard), /_larder/stats.json, /_larder/status, /_larder/metrics,
  POST /_larder/purge?tag=post:42, POST /_larder/purge?url=/news&host=example.com";

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Address to listen on.
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

/// The proxy's own counters (the cache's are in `HttpCache::stats`).
#[derive(Default)]
struct Stats {
    upstream_errors: AtomicU64,
}

#[derive(Clone)]
struct AppState {
    http: HttpCache,
    stats: Arc<Stats>,
    upstream: Uri,
    started: Instant,
    telemetry: Arc<crate::telemetry::Telemetry>,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(serve(args, upstream))
}

async fn serve(args: ProxyArgs, upstream: Uri) -> Result<(), CliError> {
    // Before the cache is built: its counters register with the recorder.
    let telemetry = crate::telemetry::Telemetry::global();
    let cache_url = args.cache.clone().unwrap_or_default();
    let store = larder::open(&cache_url).await?;
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
        telemetry: telemetry.clone(),
    };
    let app = Router::new()
        .route("/_larder/status", get(status))
        .route("/_larder/metrics", get(metrics))
        .route("/_larder/purge", post(purge))
        .route("/_larder", get(crate::telemetry::dashboard_page))
        .route("/_larder/", get(crate::telemetry::dashboard_page))
        .route("/_larder/stats.json", get(stats_json))
        .route("/_larder/{*rest}", get(not_found).post(not_found))
        .with_state(state)
        .fallback_service(cached)
        .layer(axum::middleware::from_fn_with_state(
            telemetry,
            crate::telemetry::measure,
        ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::failed(format!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!(
        "larder proxy: http://{} -> {} (cache {}); status at http://{}/_larder/status",
        args.listen, args.upstream, cache_url, args.listen
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| CliError::failed(format!("server error: {e}")))
}

async fn stats_json(State(state): State<AppState>) -> Response {
    let mut snap = state.telemetry.snapshot(Some(&state.http.stats()), None);
    snap["metrics_path"] = "/_larder/metrics".into();
    snap["upstream"] = state.upstream.to_string().into();
    snap["upstream_errors"] = state.stats.upstream_errors.load(Ordering::Relaxed).into();
    crate::telemetry::stats_response(&snap)
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
        "hit_ratio": if requests == 0 { 0.0 } else { served as f64 / requests as f64 },
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
    out.push_str("# TYPE larder_proxy_breaker_open gauge\n");
    let open = matches!(
        state.http.store().breaker_state(),
        larder::BreakerState::Open
    );
    out.push_str(&format!("larder_proxy_breaker_open {}\n", u8::from(open)));
    // Everything else larder counts in this process (cache hits, misses,
    // timeouts, breaker, request latency histogram).
    out.push_str(&state.telemetry.prometheus_text());
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
