//! The HTTP cache layer's handling of hostile requests and responses:
//! header parsing (Cache-Control, Vary, Host, dates), keys and query
//! strings, storing and serving. The input is split into a request (its
//! target and headers) and the origin's response (status and headers);
//! each input is sent twice so the second may be served from the cache.
//!
//!   cargo +nightly fuzz run http_layer
//!
//! Without nightly (what was run here: 1.6 M runs in 120 s, no finding):
//!
//!   RUSTC_BOOTSTRAP=1 RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
//!     -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
//!     -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
//!     -Cdebug-assertions -Coverflow-checks" \
//!     cargo build --release --target x86_64-unknown-linux-gnu --bin http_layer
//!   target/x86_64-unknown-linux-gnu/release/http_layer CORPUS_DIR -max_total_time=120
//!
//! Invariants: nothing panics; a response served from the cache carries
//! the body the origin produced for the same target.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use larder_http::policy::{vary_names, vary_values, CacheControl};
use larder_http::HttpCache;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

/// `name: value` lines into headers, skipping what is not a header.
fn headers(text: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let i = line.iter().position(|&b| b == b':')?;
            let name = HeaderName::from_bytes(&line[..i]).ok()?;
            let value = HeaderValue::from_bytes(line[i + 1..].trim_ascii()).ok()?;
            Some((name, value))
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // target \0 request headers \0 status(2 bytes) response headers
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(target), Some(req_h), Some(res)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    let req_headers = headers(req_h);
    let status = res
        .get(..2)
        .map_or(200, |s| 100 + u16::from_le_bytes([s[0], s[1]]) % 500);
    let res_headers = headers(res.get(2..).unwrap_or_default());

    // The pure parts on their own.
    let mut map = http::HeaderMap::new();
    for (n, v) in &res_headers {
        map.append(n.clone(), v.clone());
    }
    let _ = CacheControl::parse(&map);
    if let Some(names) = vary_names(&map) {
        let _ = vary_values(&names, &map);
    }
    let _ = larder_http::request_host(http::Version::HTTP_11, &uri, &map);

    runtime().block_on(async {
        let store = larder_core::Cache::builder(larder_mem::MemBackend::default())
            .build()
            .expect("store");
        let http = HttpCache::builder(store)
            .default_ttl(Some(Duration::from_secs(60)))
            .merge_timeout(Duration::from_millis(50))
            .build();
        let Ok(status) = StatusCode::from_u16(status) else {
            return;
        };
        let origin = tower::service_fn(move |req: Request<Full<Bytes>>| {
            let res_headers = res_headers.clone();
            async move {
                let body = format!("for {}", req.uri());
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = status;
                for (n, v) in res_headers {
                    r.headers_mut().append(n, v);
                }
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let svc = tower::Layer::layer(&http.layer(), origin);
        for _ in 0..2 {
            let mut req = Request::new(Full::new(Bytes::new()));
            *req.uri_mut() = uri.clone();
            for (n, v) in &req_headers {
                req.headers_mut().append(n.clone(), v.clone());
            }
            let res = svc.clone().oneshot(req).await.expect("infallible");
            let hit = res
                .headers()
                .get("x-larder-cache")
                .is_some_and(|v| v == "HIT" || v == "STALE");
            let ok = res.status() == StatusCode::OK;
            let body = res.into_body().collect().await.map(|c| c.to_bytes());
            if let (true, true, Ok(body)) = (hit, ok, body) {
                assert_eq!(body, format!("for {uri}").as_bytes(), "served another target's body");
            }
        }
    });
});
