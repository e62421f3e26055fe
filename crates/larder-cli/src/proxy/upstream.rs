//! Forwarding to the origin: every wait is bounded (connect, response
//! head, each gap between body bytes), a body that stalls breaks off as an
//! error (never as a short body that looks complete), and a request whose
//! own body is malformed or too large is the client's fault (400 / 413),
//! not an upstream error.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use larder_http::headers::strip_hop_by_hop;
use tokio::time::{Instant, Sleep};
use tower::Service;

/// What this proxy adds to `Via` (RFC 9110 §7.6.3).
const VIA: &str = "1.1 larder";

fn append_via(h: &mut HeaderMap) {
    h.append(header::VIA, HeaderValue::from_static(VIA));
}

/// The origin's timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// From sending the request to the end of the response head.
    pub response_head: Duration,
    /// Longest gap between two pieces of the response body.
    pub body_gap: Duration,
}

/// The proxy's own counters (the cache's are in `HttpCache::stats`).
#[derive(Default, Debug)]
pub struct Stats {
    pub upstream_errors: AtomicU64,
    pub client_errors: AtomicU64,
}

/// How a request's body ended, as far as the client is concerned.
const BODY_OK: u8 = 0;
const BODY_MALFORMED: u8 = 1;
const BODY_TOO_LARGE: u8 = 2;

/// Set on a request by the edge: how its body went.
#[derive(Clone, Default)]
pub struct ClientBodyState(Arc<AtomicU8>);

/// The client's request body, counted against the limit; its failures
/// are recorded so they are not blamed on the origin.
pub struct ClientBody<B> {
    inner: B,
    state: ClientBodyState,
    left: u64,
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, limit: Option<u64>, state: ClientBodyState) -> Self {
        ClientBody {
            inner,
            state,
            left: limit.unwrap_or(u64::MAX),
        }
    }
}

impl<B> http_body::Body for ClientBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<larder_http::BoxError>,
{
    type Data = Bytes;
    type Error = larder_http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                if n > self.left {
                    self.state.0.store(BODY_TOO_LARGE, Ordering::Release);
                    return Poll::Ready(Some(Err("request body over the limit".into())));
                }
                self.left -= n;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.state.0.store(BODY_MALFORMED, Ordering::Release);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that fails when the origin sends nothing for too long.
struct GapTimeout<B> {
    inner: B,
    gap: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<B> http_body::Body for GapTimeout<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<larder_http::BoxError>,
{
    type Data = Bytes;
    type Error = larder_http::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                let next = Instant::now() + this.gap;
                this.sleep.as_mut().reset(next);
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err("the origin's response body stalled".into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Forwards a request to the origin; failures become 502/504 responses.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    base: Uri,
    timeouts: Timeouts,
    stats: Arc<Stats>,
    failures: Arc<larder::backend::FailureLog>,
}

impl Upstream {
    pub fn new(base: Uri, timeouts: Timeouts, stats: Arc<Stats>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeouts.connect));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Upstream {
            client,
            base,
            timeouts,
            stats,
            failures: Arc::new(larder::backend::FailureLog::new("upstream request")),
        }
    }

    fn prepare(&self, req: &mut Request<Body>) {
        // The request's own path and query, moved (not copied and parsed
        // again) onto the origin's scheme and authority.
        let path_and_query = std::mem::take(req.uri_mut()).into_parts().path_and_query;
        let mut parts = self.base.clone().into_parts();
        parts.path_and_query =
            Some(path_and_query.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")));
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        let peer = super::server::CLIENT.try_with(|c| c.addr.ip()).ok();
        let h = req.headers_mut();
        strip_hop_by_hop(h);
        // X-Forwarded-For: the chain so far (untrusted, kept as sent) and
        // the address this proxy saw; X-Forwarded-Proto: what the client
        // used here, whatever it claimed.
        if let Some(ip) = peer {
            let value = if h.contains_key("x-forwarded-for") {
                let chain = h
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .collect::<Vec<_>>()
                    .join(", ");
                if chain.is_empty() {
                    ip.to_string()
                } else {
                    format!("{chain}, {ip}")
                }
            } else {
                ip.to_string()
            };
            if let Ok(v) = HeaderValue::try_from(value) {
                h.insert("x-forwarded-for", v);
            }
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        append_via(h);
    }
}

/// What the proxy answers when it cannot forward.
pub fn error_response(status: StatusCode, what: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("larder proxy: {what}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
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
            this.prepare(&mut req);
            let body_state = req.extensions().get::<ClientBodyState>().cloned();
            // 1xx interim responses (103 Early Hints) go on to the client
            // as they come; only for a request served in the client's own
            // task (not a background revalidation), see proxy::interim.
            let interim = super::server::CLIENT
                .try_with(|c| c.interim())
                .ok()
                .flatten();
            if let Some(sink) = &interim {
                let sink = sink.clone();
                hyper::ext::on_informational(&mut req, move |res| {
                    sink.forward(res.status(), res.headers())
                });
            }
            let mut send = std::pin::pin!(this.client.request(req));
            let send = std::future::poll_fn(|cx| {
                // The client connection's task, woken when a 1xx comes.
                if let Some(sink) = &interim {
                    sink.register(cx.waker());
                }
                send.as_mut().poll(cx)
            });
            let result = tokio::time::timeout(this.timeouts.response_head, send).await;
            let client_fault = body_state.map_or(BODY_OK, |s| s.0.load(Ordering::Acquire));
            match (result, client_fault) {
                (Ok(Ok(mut res)), _) => {
                    this.failures.success();
                    // No Via on responses (nginx adds none either): it would
                    // be stored with every entry and decoded on every hit.
                    strip_hop_by_hop(res.headers_mut());
                    let gap = this.timeouts.body_gap;
                    Ok(res.map(|b| {
                        Body::new(GapTimeout {
                            inner: b,
                            gap,
                            sleep: Box::pin(tokio::time::sleep(gap)),
                        })
                    }))
                }
                (_, BODY_TOO_LARGE) => {
                    this.stats.client_errors.fetch_add(1, Ordering::Relaxed);
                    Ok(error_response(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body too large",
                    ))
                }
                (_, BODY_MALFORMED) => {
                    this.stats.client_errors.fetch_add(1, Ordering::Relaxed);
                    Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        "malformed request body",
                    ))
                }
                (Ok(Err(e)), _) => {
                    this.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "upstream request failed");
                    this.failures.failure(&e);
                    Ok(error_response(StatusCode::BAD_GATEWAY, "upstream failed"))
                }
                (Err(_), _) => {
                    this.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    this.failures
                        .failure(&"no response head within the upstream timeout");
                    Ok(error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream timed out",
                    ))
                }
            }
        })
    }
}
