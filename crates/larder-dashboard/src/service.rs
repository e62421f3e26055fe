//! [`DashboardService`]: the tower service behind [`Dashboard::service`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use crate::{Dashboard, DASHBOARD_HTML};

/// Answers, under wherever it is mounted: `GET /` (and the empty path)
/// with the page, `GET /stats.json`, `GET /metrics` (Prometheus text);
/// `HEAD` alike; `405` to other methods; `404` to other paths. Never
/// cached (`no-store`). It does no authentication: mount it behind yours.
#[derive(Clone, Debug)]
pub struct DashboardService {
    dashboard: Dashboard,
}

impl DashboardService {
    pub(crate) fn new(dashboard: Dashboard) -> Self {
        DashboardService { dashboard }
    }
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Which page a path under the mount point names (the last segment, so
/// that a service mounted without prefix stripping still answers).
#[derive(Debug, PartialEq, Eq)]
enum Page {
    Html,
    Stats,
    Metrics,
}

fn page_of(path: &str) -> Option<Page> {
    match path.trim_end_matches('/').rsplit('/').next().unwrap_or("") {
        "" | "_larder" => Some(Page::Html),
        "stats.json" => Some(Page::Stats),
        "metrics" => Some(Page::Metrics),
        _ => None,
    }
}

impl<B> Service<Request<B>> for DashboardService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let dashboard = self.dashboard.clone();
        let method = req.method().clone();
        let page = page_of(req.uri().path());
        Box::pin(async move {
            if method != Method::GET && method != Method::HEAD {
                let mut r = answer(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "text/plain; charset=utf-8",
                    "GET only\n",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return Ok(r);
            }
            let r = match page {
                Some(Page::Html) => {
                    answer(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD_HTML)
                }
                Some(Page::Stats) => answer(
                    StatusCode::OK,
                    "application/json",
                    dashboard.snapshot().await.to_string(),
                ),
                Some(Page::Metrics) => answer(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    dashboard.prometheus_text().await,
                ),
                None => answer(
                    StatusCode::NOT_FOUND,
                    "text/plain; charset=utf-8",
                    "not found\n",
                ),
            };
            Ok(r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_by_last_segment() {
        assert_eq!(page_of("/"), Some(Page::Html));
        assert_eq!(page_of(""), Some(Page::Html));
        assert_eq!(page_of("/_larder/"), Some(Page::Html));
        assert_eq!(page_of("/stats.json"), Some(Page::Stats));
        assert_eq!(page_of("/_larder/metrics"), Some(Page::Metrics));
        assert_eq!(page_of("/secret"), None);
        assert_eq!(page_of("/../etc/passwd"), None);
    }
}
