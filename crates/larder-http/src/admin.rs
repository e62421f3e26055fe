//! The operator endpoints of an [`HttpCache`] as a tower service, to mount
//! behind your own authentication (they purge, so never expose them
//! unauthenticated):
//!
//! - `POST …/purge?tag=TAG`: invalidates every response tagged `TAG`;
//! - `POST …/purge?url=/path?query&host=HOST` (or `url=http://HOST/path`):
//!   removes every stored variant of one URL;
//! - `GET …/status`: the cache's counters as JSON.
//!
//! Each answer is JSON that says what was done (`"matched": false` when
//! nothing was stored for it); a malformed request is a `400` that says
//! what is wrong, a failing store a `503`.
//!
//! ```no_run
//! # fn app(http: larder_http::HttpCache) {
//! use axum::Router;
//! // Mount under a prefix of your choice, behind your own auth layer.
//! let admin: Router = Router::new().nest_service("/ops/cache", http.admin());
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use tower_service::Service;

use crate::HttpCache;

/// The service returned by [`HttpCache::admin`]: answers requests whose
/// path ends in `/purge` or `/status`, and `404` to anything else.
#[derive(Clone, Debug)]
pub struct AdminService {
    http: HttpCache,
}

impl HttpCache {
    /// The purge and status endpoints of this cache as a tower service
    /// (see [`admin`](crate::admin)).
    pub fn admin(&self) -> AdminService {
        AdminService { http: self.clone() }
    }
}

/// What a purge request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Purge {
    Tag(String),
    Url { host: String, uri: Uri },
}

/// Reads `tag=…` or `url=…[&host=…]`; the error says what is wrong.
fn parse_purge(query: Option<&str>) -> Result<Purge, String> {
    let (mut tag, mut url, mut host) = (None, None, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match &*k {
            "tag" => &mut tag,
            "url" => &mut url,
            "host" => &mut host,
            other => return Err(format!("unknown parameter {other:?}")),
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(format!("{k:?} given twice"));
        }
    }
    match (tag, url) {
        (Some(t), None) if host.is_none() => {
            if t.is_empty() {
                return Err("tag is empty".into());
            }
            Ok(Purge::Tag(t))
        }
        (None, Some(u)) => {
            let uri: Uri = u.parse().map_err(|e| format!("url {u:?}: {e}"))?;
            let from_url = uri.authority().map(|a| a.host().to_ascii_lowercase());
            let host = match (from_url, host) {
                (Some(a), Some(h)) if !a.eq_ignore_ascii_case(&h) => {
                    return Err(format!("url names host {a:?} but host= says {h:?}"))
                }
                (Some(a), _) => a,
                (None, Some(h)) if !h.is_empty() => h.to_ascii_lowercase(),
                (None, _) => {
                    return Err(
                        "a url without a host needs host=… (or give an absolute url)".into(),
                    )
                }
            };
            let uri = match uri.authority() {
                // Keys hold the path and query only; keep the port in host.
                Some(a) => {
                    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
                    let host = a.as_str().to_ascii_lowercase();
                    let uri = pq.parse().map_err(|e| format!("url {u:?}: {e}"))?;
                    return Ok(Purge::Url { host, uri });
                }
                None if uri.path().starts_with('/') => uri,
                None => return Err(format!("url {u:?} must start with / or http://")),
            };
            Ok(Purge::Url { host, uri })
        }
        _ => Err("give exactly one of ?tag=… or ?url=…(&host=…)".into()),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message }))
}

impl AdminService {
    async fn answer(http: HttpCache, method: Method, uri: Uri) -> Response<Full<Bytes>> {
        let path = uri.path().trim_end_matches('/');
        if path.ends_with("/status") || path == "status" {
            if method != Method::GET && method != Method::HEAD {
                return error(StatusCode::METHOD_NOT_ALLOWED, "status takes GET");
            }
            let store = http.store();
            return json(
                StatusCode::OK,
                serde_json::json!({
                    "cache": store.backend().name(),
                    "breaker": format!("{:?}", store.breaker_state()),
                    "counters": http.stats(),
                }),
            );
        }
        if !(path.ends_with("/purge") || path == "purge") {
            return error(
                StatusCode::NOT_FOUND,
                "unknown path: use …/purge or …/status",
            );
        }
        if method != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "purge takes POST");
        }
        let purge = match parse_purge(uri.query()) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, &e),
        };
        let result = match &purge {
            Purge::Tag(tag) => http.purge_tag(tag).await.map(
                |matched| serde_json::json!({ "purged": "tag", "tag": tag, "matched": matched }),
            ),
            Purge::Url { host, uri } => http.purge_url(host, uri).await.map(|matched| {
                serde_json::json!({
                    "purged": "url",
                    "host": host,
                    "url": uri.to_string(),
                    "matched": matched,
                })
            }),
        };
        match result {
            Ok(body) => json(StatusCode::OK, body),
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("purge failed: {e}"),
            ),
        }
    }
}

impl<B> Service<Request<B>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let http = self.http.clone();
        let (method, uri) = (req.method().clone(), req.uri().clone());
        Box::pin(async move { Ok(Self::answer(http, method, uri).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_requests_are_read_strictly() {
        assert_eq!(
            parse_purge(Some("tag=post%3A1")),
            Ok(Purge::Tag("post:1".into()))
        );
        assert_eq!(
            parse_purge(Some("url=/p%3Fq&host=Site.Test")),
            Ok(Purge::Url {
                host: "site.test".into(),
                uri: "/p?q".parse().unwrap()
            })
        );
        assert_eq!(
            parse_purge(Some("url=http://Site.Test:8080/p?q=1")),
            Ok(Purge::Url {
                host: "site.test:8080".into(),
                uri: "/p?q=1".parse().unwrap()
            })
        );
        for bad in [
            None,
            Some(""),
            Some("url=/p"),
            Some("url=p&host=h"),
            Some("url=http://a/p&host=b"),
            Some("tag="),
            Some("tag=a&tag=b"),
            Some("tag=a&url=/p&host=h"),
            Some("tag=a&host=h"),
            Some("tags=a"),
        ] {
            assert!(parse_purge(bad).is_err(), "{bad:?}");
        }
    }
}
