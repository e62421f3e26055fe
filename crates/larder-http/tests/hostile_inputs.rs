//! Randomized hostile requests through the layer (seeded, bounded): Host
//! games, tricky query strings, request directives, Vary'd headers and
//! odd response directives. After every request: it was answered, and a
//! response served from the cache was produced for an equivalent request:
//! the same host, path, query (by an oracle written apart from the
//! implementation) and Vary'd header values.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use larder_core::Cache;
use larder_http::HttpCache;
use tower::ServiceExt;

const HOSTS: [&str; 4] = ["victim", "VICTIM", "evil", "victim:8080"];
const PATHS: [&str; 4] = ["/a", "/b", "/a/", "/%61"];
const QUERIES: [&str; 12] = [
    "", "q=caf%E9", "q=caf%E8", "q=caf%e9", "x", "x=", "q=a+b", "q=a%20b", "b=2&a=1", "a=1&b=2",
    "a=1&a=2", "a=2&a=1",
];
/// Response directives chosen by path, as a real origin's are fixed per URL.
const RESPONSE_CC: [&str; 4] = [
    "max-age=60",
    "public, max-age=60, stale-while-revalidate=30",
    "MAX-AGE=60, s-maxage=\"30\"",
    "max-age=60, no-cache=\"set-cookie\"",
];
const REQUEST_EXTRA: [(&str, &str); 8] = [
    ("cache-control", "no-cache"),
    (
        "cache-control",
        "max-age=0, min-fresh=999999999999999999999",
    ),
    ("pragma", "no-cache"),
    ("cache-control", "no-store"),
    ("x-v", "en"),
    ("x-v", "EN"),
    ("x-v", ""),
    ("cookie", "sessionid=x"),
];

/// The origin: says what it rendered for.
async fn render(req: Request<Body>) -> Response {
    let h = req.headers();
    let host = h.get("host").and_then(|v| v.to_str().ok()).unwrap_or("-");
    let xv: Vec<&str> = h
        .get_all("x-v")
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect();
    let xv = if xv.is_empty() {
        "absent".to_owned()
    } else {
        format!("[{}]", xv.join(", "))
    };
    let path = req.uri().path().to_owned();
    let pick = PATHS.iter().position(|p| *p == path).unwrap_or(0);
    let body = format!(
        "host={}|path={}|query={}|xv={}",
        host.to_ascii_lowercase(),
        path,
        req.uri().query().unwrap_or(""),
        xv
    );
    let mut r = body.into_response();
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static(RESPONSE_CC[pick]));
    if pick % 2 == 1 {
        r.headers_mut()
            .insert("vary", HeaderValue::from_static("X-V"));
    }
    r
}

/// An oracle for query equivalence, apart from the implementation: the
/// same pairs, in the same order within a name, with the same octets.
fn canonical_query(q: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let octets = |s: &str| -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    // Unreserved characters mean the same encoded or not;
                    // every other octet keeps its encoding.
                    if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                        out.push(v);
                    } else {
                        out.extend_from_slice(format!("%{v:02X}").as_bytes());
                    }
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        out
    };
    if q.is_empty() {
        return Vec::new();
    }
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = q
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (octets(n), [b"=".as_slice(), &octets(v)].concat()),
            None => (octets(p), Vec::new()),
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.split('|')
        .find_map(|f| f.strip_prefix(&format!("{name}=")))
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_never_get_another_requests_response() {
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1a2de5);
    let mut rng = fastrand::Rng::with_seed(seed);
    let store = Cache::builder(larder_mem::MemBackend::default())
        .build()
        .unwrap();
    let http = HttpCache::builder(store)
        .default_ttl(Some(Duration::from_secs(60)))
        .build();
    let app = Router::new().fallback(render).layer(http.layer());
    let mut served_from_cache = 0;
    for i in 0..3_000 {
        let host = HOSTS[rng.usize(..HOSTS.len())];
        let path = PATHS[rng.usize(..PATHS.len())];
        let query = QUERIES[rng.usize(..QUERIES.len())];
        let pq = if query.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{query}")
        };
        let shape = rng.u8(..10);
        let uri: Uri = if shape == 0 {
            format!("http://{host}{pq}").parse().unwrap()
        } else {
            pq.parse().unwrap()
        };
        let mut b = Request::builder().uri(uri);
        match shape {
            // absolute-form with a lying Host
            0 => b = b.header("host", HOSTS[rng.usize(..HOSTS.len())]),
            1 => b = b.header("host", host).header("host", "evil"),
            2 => {}
            _ => b = b.header("host", host),
        }
        for _ in 0..rng.usize(..3) {
            let (k, v) = REQUEST_EXTRA[rng.usize(..REQUEST_EXTRA.len())];
            b = b.header(k, v);
        }
        let req = b.body(Body::empty()).unwrap();
        // What this request is, by the rules of RFC 9112 §3.2.
        let req_host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .or_else(|| {
                let hosts: Vec<_> = req.headers().get_all("host").iter().collect();
                (hosts.len() == 1).then(|| hosts[0].to_str().unwrap().to_ascii_lowercase())
            });
        let req_xv = req
            .headers()
            .get_all("x-v")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res
            .headers()
            .get("x-larder-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let headers: HeaderMap = res.headers().clone();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        let ctx =
            format!("request {i} (seed {seed}): {host} {pq} shape {shape} → {status}: {body}");
        assert!(!status.is_empty(), "{ctx}");
        if status != "HIT" && status != "STALE" {
            continue;
        }
        served_from_cache += 1;
        let req_host =
            req_host.unwrap_or_else(|| panic!("served from cache without a host: {ctx}"));
        assert_eq!(field(&body, "host"), req_host, "{ctx}");
        assert_eq!(field(&body, "path"), path, "{ctx}");
        assert_eq!(
            canonical_query(field(&body, "query")),
            canonical_query(query),
            "{ctx}"
        );
        if headers.get("vary").is_some() {
            let expect = match req_xv.as_slice() {
                [] => "absent".to_owned(),
                vs => format!("[{}]", vs.join(", ")),
            };
            assert_eq!(field(&body, "xv"), expect, "{ctx}");
        }
    }
    assert!(
        served_from_cache > 500,
        "only {served_from_cache} hits: the test lost its teeth"
    );
}
