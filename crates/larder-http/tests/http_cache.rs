//! Behaviour of the cache layer around a real axum router, per RFC 9111
//! section, plus the privacy regressions Django's middleware had.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use larder_core::Cache;
use larder_http::{cache_page, HttpCache};
use tower::ServiceExt;

fn store() -> Cache {
    Cache::builder(larder_mem::MemBackend::default())
        .build()
        .unwrap()
}

/// A router whose one route answers with `headers`, counting calls.
fn app(
    http: &HttpCache,
    calls: Arc<AtomicU32>,
    headers: &'static [(&'static str, &'static str)],
) -> Router {
    Router::new()
        .route(
            "/page",
            get(move || {
                let calls = calls.clone();
                async move {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut r = format!("body {n}").into_response();
                    for (k, v) in headers {
                        r.headers_mut().append(*k, HeaderValue::from_static(v));
                    }
                    r
                }
            })
            .post(|| async { "posted" }),
        )
        .layer(http.layer())
}

/// `/slow`: 200 ms per origin request, fresh for 60 s, counting calls.
fn slow_app(http: &HttpCache, calls: Arc<AtomicU32>, body: &'static str) -> Router {
    Router::new()
        .route(
            "/slow",
            get(move || {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    ([("cache-control", "max-age=60")], body)
                }
            }),
        )
        .layer(http.layer())
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let res: Response = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn get_req(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap()
}

fn with(path: &str, k: &str, v: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "example.com")
        .header(k, v)
        .body(Body::empty())
        .unwrap()
}

fn status(h: &HeaderMap) -> &str {
    h.get("x-larder-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_age() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    let (_, h1, b1) = send(&app, get_req("/page")).await;
    let (s2, h2, b2) = send(&app, get_req("/page")).await;
    assert_eq!((status(&h1), status(&h2)), ("MISS", "HIT"));
    assert_eq!(
        (b1.as_str(), b2.as_str(), s2),
        ("body 1", "body 1", StatusCode::OK)
    );
    assert!(h2.contains_key("age"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn privacy_regressions_are_never_shared() {
    for headers in [
        &[
            ("cache-control", "max-age=60"),
            ("set-cookie", "session=alice"),
        ][..],
        &[("cache-control", "max-age=60"), ("vary", "*")][..],
        &[("cache-control", "PRIVATE, max-age=60")][..],
        &[("cache-control", "no-store, max-age=60")][..],
    ] {
        let http = HttpCache::builder(store())
            .default_ttl(Some(Duration::from_secs(60)))
            .build();
        let calls = Arc::new(AtomicU32::new(0));
        let headers: &'static [(&'static str, &'static str)] =
            Box::leak(headers.to_vec().into_boxed_slice());
        let app = app(&http, calls.clone(), headers);
        send(&app, get_req("/page")).await;
        let (_, _, b) = send(&app, get_req("/page")).await;
        assert_eq!(b, "body 2", "{headers:?} was served from the cache");
    }
    // A request with Authorization neither reads nor fills the cache.
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    send(&app, get_req("/page")).await;
    let (_, h, b) = send(&app, with("/page", "authorization", "Bearer bob")).await;
    assert_eq!((status(&h), b.as_str()), ("BYPASS", "body 2"));
}

#[tokio::test]
async fn vary_matches_only_equal_headers_and_absent_differs_from_empty() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(
        &http,
        calls.clone(),
        &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
    );
    let (_, _, absent) = send(&app, get_req("/page")).await;
    let (_, _, empty) = send(&app, with("/page", "accept-language", "")).await;
    let (_, _, fr) = send(&app, with("/page", "accept-language", "fr")).await;
    assert_eq!(
        (absent.as_str(), empty.as_str(), fr.as_str()),
        ("body 1", "body 2", "body 3")
    );
    let (_, h, again) = send(&app, get_req("/page")).await;
    assert_eq!((status(&h), again.as_str()), ("HIT", "body 1"));
    let (_, _, fr2) = send(&app, with("/page", "accept-language", "fr")).await;
    assert_eq!(fr2, "body 3");
}

#[tokio::test]
async fn head_is_answered_from_a_stored_get() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    send(&app, get_req("/page")).await;
    let head = Request::builder()
        .method("HEAD")
        .uri("/page")
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    let (s, h, b) = send(&app, head).await;
    assert_eq!((s, status(&h), b.as_str()), (StatusCode::OK, "HIT", ""));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn conditional_requests_get_304_from_the_cache() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(
        &http,
        calls.clone(),
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("last-modified", "Thu, 26 Nov 2026 10:00:00 GMT"),
        ],
    );
    send(&app, get_req("/page")).await;
    let (s, h, b) = send(&app, with("/page", "if-none-match", "W/\"v1\"")).await;
    assert_eq!((s, b.as_str()), (StatusCode::NOT_MODIFIED, ""));
    assert_eq!(h["etag"], "\"v1\"");
    let (s, _, _) = send(
        &app,
        with(
            "/page",
            "if-modified-since",
            "Thu, 26 Nov 2026 11:00:00 GMT",
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    let (s, _, b) = send(&app, with("/page", "if-none-match", "\"other\"")).await;
    assert_eq!((s, b.as_str()), (StatusCode::OK, "body 1"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_stale_response_is_revalidated_and_a_304_refreshes_it() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/page",
            get(move |headers: HeaderMap| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
                        return (
                            StatusCode::NOT_MODIFIED,
                            [("cache-control", "max-age=1"), ("etag", "\"v1\"")],
                        )
                            .into_response();
                    }
                    (
                        [("cache-control", "max-age=1"), ("etag", "\"v1\"")],
                        "original",
                    )
                        .into_response()
                }
            }),
        )
        .layer(http.layer());
    send(&app, get_req("/page")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, h, b) = send(&app, get_req("/page")).await;
    assert_eq!(
        (s, status(&h), b.as_str()),
        (StatusCode::OK, "REVALIDATED", "original")
    );
    let (_, h, _) = send(&app, get_req("/page")).await;
    assert_eq!(status(&h), "HIT", "the 304 refreshed the entry");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unsafe_methods_invalidate_their_url() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    send(&app, get_req("/page")).await;
    let post = Request::builder()
        .method("POST")
        .uri("/page")
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    let (s, _, _) = send(&app, post).await;
    assert_eq!(s, StatusCode::OK);
    let (_, h, b) = send(&app, get_req("/page")).await;
    assert_eq!((status(&h), b.as_str()), ("MISS", "body 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_origin_request() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = slow_app(&http, calls.clone(), "slow page");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let app = app.clone();
        tasks.push(tokio::spawn(
            async move { send(&app, get_req("/slow")).await.2 },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "slow page");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(
        &http,
        calls.clone(),
        &[("cache-control", "max-age=1, stale-while-revalidate=30")],
    );
    send(&app, get_req("/page")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, h, b) = send(&app, get_req("/page")).await;
    assert_eq!((status(&h), b.as_str()), ("STALE", "body 1"));
    let mut refreshed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (_, h, b) = send(&app, get_req("/page")).await;
        if status(&h) == "HIT" && b == "body 2" {
            refreshed = true;
            break;
        }
    }
    assert!(
        refreshed,
        "the background revalidation never stored the new response"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn stale_if_error_hides_a_failing_origin() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/page",
            get(move || {
                let c = c.clone();
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) == 0 {
                        ([("cache-control", "max-age=1, stale-if-error=60")], "good")
                            .into_response()
                    } else {
                        (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
                    }
                }
            }),
        )
        .layer(http.layer());
    send(&app, get_req("/page")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (s, h, b) = send(&app, get_req("/page")).await;
    assert_eq!(
        (s, status(&h), b.as_str()),
        (StatusCode::OK, "STALE", "good")
    );
}

#[tokio::test]
async fn tags_are_stripped_and_purge_removes_tagged_responses() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(
        &http,
        calls.clone(),
        &[
            ("cache-control", "max-age=60"),
            ("cache-tag", "post:42 user:7"),
        ],
    );
    let (_, h, _) = send(&app, get_req("/page")).await;
    assert!(!h.contains_key("cache-tag"), "tags leave the server");
    let (_, h, _) = send(&app, get_req("/page")).await;
    assert_eq!(status(&h), "HIT");
    http.purge_tag("user:7").await.unwrap();
    // Purges are by time, to the millisecond: a request in the purge's own
    // millisecond counts as before it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, h, b) = send(&app, get_req("/page")).await;
    assert_eq!((status(&h), b.as_str()), ("MISS", "body 2"));
    let (_, h, _) = send(&app, get_req("/page")).await;
    assert_eq!(status(&h), "HIT", "stored again after the purge");
}

#[tokio::test]
async fn streamed_bodies_are_stored_within_the_limit_and_passed_whole_past_it() {
    let http = HttpCache::builder(store()).max_body_bytes(10).build();
    let calls = Arc::new(AtomicU32::new(0));
    let stream_of = |parts: Vec<&'static str>| {
        Body::from_stream(futures_util::stream::iter(
            parts.into_iter().map(Ok::<_, std::io::Error>),
        ))
    };
    let counted = calls.clone();
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    (
                        [("cache-control", "max-age=60")],
                        stream_of(vec!["ab", "cd"]),
                    )
                }
            }),
        )
        .route(
            "/long-stream",
            get(move || async move {
                (
                    [("cache-control", "max-age=60")],
                    stream_of(vec!["0123456", "789abcdef"]),
                )
            }),
        )
        .route(
            "/broken-stream",
            get(|| async {
                let chunks = futures_util::stream::iter(vec![
                    Ok::<_, std::io::Error>("ab"),
                    Err(std::io::Error::other("origin went away")),
                ]);
                ([("cache-control", "max-age=60")], Body::from_stream(chunks))
            }),
        )
        .route(
            "/big",
            get(|| async { ([("cache-control", "max-age=60")], "x".repeat(100)) }),
        )
        .layer(http.layer());

    // Chunked and small: streamed to the first client, stored, then hits.
    let (_, h, b) = send(&app, get_req("/stream")).await;
    assert_eq!((status(&h), b.as_str()), ("MISS", "abcd"));
    let mut hit = false;
    for _ in 0..50 {
        let (_, h, b) = send(&app, get_req("/stream")).await;
        assert_eq!(b, "abcd");
        if status(&h) == "HIT" {
            hit = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hit, "the streamed copy was stored");
    let origin_calls = calls.load(Ordering::SeqCst);
    let (_, h, _) = send(&app, get_req("/stream")).await;
    assert_eq!(status(&h), "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), origin_calls);

    // Past the limit: the client gets all of it, nothing is stored.
    for _ in 0..2 {
        let (_, h, b) = send(&app, get_req("/long-stream")).await;
        assert_eq!((status(&h), b.as_str()), ("MISS", "0123456789abcdef"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A stream that breaks off is never stored (the client sees the error).
    for _ in 0..2 {
        let res: Response = app
            .clone()
            .oneshot(get_req("/broken-stream"))
            .await
            .unwrap();
        assert_eq!(status(res.headers()), "MISS");
        assert!(res.into_body().collect().await.is_err());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A known length over the limit: passed through, not stored.
    for _ in 0..2 {
        let (_, h, b) = send(&app, get_req("/big")).await;
        assert_eq!((status(&h), b.len()), ("MISS", 100));
    }
}

/// `/news` answers "news N" (N counting the handler's runs), with no
/// freshness of its own; `/own` sets its own `Cache-Control`.
fn news_routes() -> Router {
    let calls = Arc::new(AtomicU32::new(0));
    Router::new()
        .route(
            "/news",
            get(move || {
                let c = calls.clone();
                async move { format!("news {}", c.fetch_add(1, Ordering::SeqCst) + 1) }
            }),
        )
        .route(
            "/own",
            get(|| async { ([("cache-control", "public, max-age=5")], "own") }),
        )
}

#[tokio::test]
async fn cache_page_stores_a_route_without_freshness_and_says_so() {
    let http = HttpCache::builder(store()).build();
    let app = news_routes().route_layer(cache_page(&http, Duration::from_secs(30)));
    let (_, h, _) = send(&app, get_req("/news")).await;
    assert_eq!(h["cache-control"], "max-age=30");
    let (_, h, b) = send(&app, get_req("/news")).await;
    assert_eq!((status(&h), b.as_str()), ("HIT", "news 1"));
}

/// `browser_ttl`: shared caches get the TTL (`s-maxage`), browsers a
/// short life they revalidate after, so a purge is not undone by them;
/// this cache still keeps the page for the full TTL, and a handler's own
/// `Cache-Control` is left alone.
#[tokio::test]
async fn cache_page_browser_ttl_sends_s_maxage_and_a_short_max_age() {
    let http = HttpCache::builder(store()).build();
    let app = news_routes()
        .route_layer(cache_page(&http, Duration::from_secs(600)).browser_ttl(Duration::ZERO));
    let (_, h, _) = send(&app, get_req("/news")).await;
    assert_eq!(h["cache-control"], "s-maxage=600, max-age=0");
    let (_, h, b) = send(&app, get_req("/news")).await;
    assert_eq!((status(&h), b.as_str()), ("HIT", "news 1"));
    assert_eq!(h["cache-control"], "s-maxage=600, max-age=0");
    let (_, h, _) = send(&app, get_req("/own")).await;
    assert_eq!(h["cache-control"], "public, max-age=5");
}

#[tokio::test]
async fn keys_normalize_the_query_and_include_the_host() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    send(&app, get_req("/page?b=2&a=1")).await;
    let (_, h, _) = send(&app, get_req("/page?a=1&b=2")).await;
    assert_eq!(status(&h), "HIT");
    let other_host = Request::builder()
        .uri("/page?a=1&b=2")
        .header("host", "other.example")
        .body(Body::empty())
        .unwrap();
    let (_, h, _) = send(&app, other_host).await;
    assert_eq!(status(&h), "MISS");
}

#[tokio::test]
async fn request_no_cache_is_ignored_by_default_and_only_if_cached_answers_504() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    let (s, _, _) = send(&app, with("/page", "cache-control", "only-if-cached")).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    send(&app, get_req("/page")).await;
    // Any client could otherwise send the origin one request per request.
    for (k, v) in [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("cache-control", "no-store"),
        ("cache-control", "min-fresh=999"),
        ("pragma", "no-cache"),
    ] {
        let (_, h, b) = send(&app, with("/page", k, v)).await;
        assert_eq!((status(&h), b.as_str()), ("HIT", "body 1"), "{k}: {v}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn request_no_cache_when_honoured_revalidates() {
    let http = HttpCache::builder(store())
        .honor_request_cache_control(true)
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    send(&app, get_req("/page")).await;
    let (_, _, b) = send(&app, with("/page", "cache-control", "no-cache")).await;
    assert_eq!(b, "body 2", "no-cache went to the origin");
    let (_, h, _) = send(&app, with("/page", "pragma", "no-cache")).await;
    assert_ne!(status(&h), "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honoured_no_cache_requests_are_merged() {
    let http = HttpCache::builder(store())
        .honor_request_cache_control(true)
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = slow_app(&http, calls.clone(), "slow");
    send(&app, get_req("/slow")).await;
    let all = (0..10).map(|_| send(&app, with("/slow", "cache-control", "no-cache")));
    for (s, _, b) in futures_util::future::join_all(all).await {
        assert_eq!((s, b.as_str()), (StatusCode::OK, "slow"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "ten no-cache requests, one revalidation"
    );
}

#[tokio::test]
async fn head_from_a_stored_get_carries_the_get_length() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    let (_, h, b) = send(&app, get_req("/page")).await;
    assert_eq!(b, "body 1");
    let head = Request::builder()
        .method("HEAD")
        .uri("/page")
        .header("host", "example.com")
        .body(Body::empty())
        .unwrap();
    let (_, hh, hb) = send(&app, head).await;
    assert_eq!((status(&hh), hb.as_str()), ("HIT", ""));
    assert_eq!(
        hh.get("content-length").map(|v| v.to_str().unwrap()),
        Some("6")
    );
    let (_, h2, _) = send(&app, get_req("/page")).await;
    assert_eq!(h2.get("content-length"), hh.get("content-length"));
    let _ = h;
}

/// A router answering with the Host header it saw, cacheable.
fn host_echo(http: &HttpCache, calls: Arc<AtomicU32>) -> Router {
    Router::new()
        .route(
            "/x",
            get(move |headers: HeaderMap| {
                let calls = calls.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let host = headers
                        .get_all("host")
                        .iter()
                        .map(|v| v.to_str().unwrap_or("?").to_owned())
                        .collect::<Vec<_>>()
                        .join("+");
                    (
                        [("cache-control", "max-age=60")],
                        format!("page for {host}"),
                    )
                }
            }),
        )
        .layer(http.layer())
}

#[tokio::test]
async fn an_absolute_target_sets_the_host_that_is_keyed_and_seen() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = host_echo(&http, calls.clone());
    // The attack: keyed under victim, rendered for evil.
    let attack = Request::builder()
        .uri("http://victim/x")
        .header("host", "evil")
        .body(Body::empty())
        .unwrap();
    let (_, _, b) = send(&app, attack).await;
    assert_eq!(
        b, "page for victim",
        "the application sees the target's host"
    );
    let visitor = Request::builder()
        .uri("/x")
        .header("host", "victim")
        .body(Body::empty())
        .unwrap();
    let (_, h, b) = send(&app, visitor).await;
    assert_eq!((status(&h), b.as_str()), ("HIT", "page for victim"));
}

#[tokio::test]
async fn requests_with_no_or_two_hosts_bypass_the_cache() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = host_echo(&http, calls.clone());
    let two = || {
        Request::builder()
            .uri("/x")
            .header("host", "victim")
            .header("host", "evil")
            .body(Body::empty())
            .unwrap()
    };
    let (_, h, _) = send(&app, two()).await;
    assert_eq!(status(&h), "BYPASS");
    let (_, h, _) = send(&app, two()).await;
    assert_eq!(status(&h), "BYPASS", "nothing was stored for it");
    let none = Request::builder().uri("/x").body(Body::empty()).unwrap();
    let (_, h, _) = send(&app, none).await;
    assert_eq!(status(&h), "BYPASS");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn refuse_ambiguous_host_answers_400_without_calling_the_app() {
    let http = HttpCache::builder(store())
        .refuse_ambiguous_host(true)
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = host_echo(&http, calls.clone());
    let two = Request::builder()
        .uri("/x")
        .header("host", "victim")
        .header("host", "evil")
        .body(Body::empty())
        .unwrap();
    let (s, _, _) = send(&app, two).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn query_strings_are_keyed_byte_for_byte() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    for (first, second) in [
        ("/page?q=caf%E9", "/page?q=caf%E8"),
        ("/page?x", "/page?x="),
    ] {
        send(&app, get_req(first)).await;
        let (_, h, _) = send(&app, get_req(second)).await;
        assert_eq!(
            status(&h),
            "MISS",
            "{first} and {second} must not share an entry"
        );
    }
}

#[tokio::test]
async fn key_headers_keep_their_values_apart_and_purge_removes_all() {
    let http = HttpCache::builder(store())
        .key_headers([axum::http::HeaderName::from_static("x-forwarded-host")])
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[("cache-control", "max-age=60")]);
    let (_, _, a) = send(&app, with("/page", "x-forwarded-host", "a.example")).await;
    let (_, h, b) = send(&app, with("/page", "x-forwarded-host", "b.example")).await;
    assert_eq!(
        (status(&h), a.as_str(), b.as_str()),
        ("MISS", "body 1", "body 2")
    );
    let (_, h, b) = send(&app, with("/page", "x-forwarded-host", "a.example")).await;
    assert_eq!((status(&h), b.as_str()), ("HIT", "body 1"));
    assert!(http
        .purge_url("example.com", &"/page".parse().unwrap())
        .await
        .unwrap());
    let (_, h, _) = send(&app, with("/page", "x-forwarded-host", "b.example")).await;
    assert_eq!(status(&h), "MISS");
}

#[tokio::test]
async fn with_a_default_ttl_a_request_with_a_cookie_is_not_stored() {
    let http = HttpCache::builder(store())
        .default_ttl(Some(Duration::from_secs(60)))
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(&http, calls.clone(), &[]);
    let (_, _, b) = send(&app, with("/page", "cookie", "sessionid=alice")).await;
    assert_eq!(b, "body 1");
    let (_, h, b) = send(&app, get_req("/page")).await;
    assert_eq!(
        (status(&h), b.as_str()),
        ("MISS", "body 2"),
        "alice's page must not reach an anonymous visitor"
    );
    let (_, h, _) = send(&app, get_req("/page")).await;
    assert_eq!(status(&h), "HIT", "anonymous responses are stored");
    let (_, h, b) = send(&app, with("/page", "cookie", "sessionid=bob")).await;
    assert_eq!((status(&h), b.as_str()), ("HIT", "body 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncacheable_urls_are_remembered_so_requests_do_not_queue() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let in_flight = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let (c, f, m) = (calls.clone(), in_flight.clone(), most.clone());
    let app = Router::new()
        .route(
            "/private",
            get(move || {
                let (c, f, m) = (c.clone(), f.clone(), m.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    f.fetch_sub(1, Ordering::SeqCst);
                    ([("cache-control", "private, max-age=60")], "mine")
                }
            }),
        )
        .layer(http.layer());
    // The first request finds out.
    send(&app, get_req("/private")).await;
    let all = (0..10).map(|_| send(&app, get_req("/private")));
    for (_, _, b) in futures_util::future::join_all(all).await {
        assert_eq!(b, "mine");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 11);
    assert_eq!(
        most.load(Ordering::SeqCst),
        10,
        "all ten went to the origin at once"
    );
    assert_eq!(http.stats().hit_for_miss, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_on_a_failed_origin_request_fail_at_once() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/down",
            get(move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    (StatusCode::GATEWAY_TIMEOUT, "origin timed out")
                }
            }),
        )
        .layer(http.layer());
    let all = (0..8).map(|_| send(&app, get_req("/down")));
    for (s, _, _) in futures_util::future::join_all(all).await {
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the others did not try again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_waits_no_longer_than_the_merge_timeout() {
    let http = HttpCache::builder(store())
        .merge_timeout(Duration::from_millis(100))
        .build();
    // The origin answers only when the test says so: however late the
    // machine runs the timers, the waiter's must fire first.
    let release = Arc::new(tokio::sync::Notify::new());
    let app = Router::new()
        .route(
            "/stuck",
            get({
                let release = release.clone();
                move || async move {
                    release.notified().await;
                    ([("cache-control", "max-age=60")], "late")
                }
            }),
        )
        .layer(http.layer());
    let leader = tokio::spawn({
        let app = app.clone();
        async move { send(&app, get_req("/stuck")).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (s, h, _) = send(&app, get_req("/stuck")).await;
    assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(h.get("cache-control").unwrap(), "no-store");
    release.notify_one();
    let (s, _, b) = leader.await.unwrap();
    assert_eq!((s, b.as_str()), (StatusCode::OK, "late"));
}

#[tokio::test]
async fn purges_say_whether_anything_matched() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let app = app(
        &http,
        calls.clone(),
        &[("cache-control", "max-age=60"), ("cache-tag", "post:1")],
    );
    send(&app, get_req("/page")).await;
    assert!(http.purge_tag("post:1").await.unwrap());
    assert!(!http.purge_tag("post:2").await.unwrap());
    let uri = "/page".parse().unwrap();
    assert!(http.purge_url("example.com", &uri).await.unwrap());
    assert!(!http.purge_url("example.com", &uri).await.unwrap());
}

#[tokio::test]
async fn vary_accept_encoding_keeps_encodings_apart() {
    let http = HttpCache::builder(store()).build();
    let app = Router::new()
        .route(
            "/page",
            get(|headers: HeaderMap| async move {
                let gzip = headers
                    .get("accept-encoding")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("gzip"));
                let mut r = if gzip { "GZIPPED-BYTES" } else { "plain text" }.into_response();
                r.headers_mut()
                    .insert("cache-control", HeaderValue::from_static("max-age=60"));
                r.headers_mut()
                    .insert("vary", HeaderValue::from_static("Accept-Encoding"));
                if gzip {
                    r.headers_mut()
                        .insert("content-encoding", HeaderValue::from_static("gzip"));
                }
                r
            }),
        )
        .layer(http.layer());
    let (_, _, b) = send(&app, with("/page", "accept-encoding", "gzip, br")).await;
    assert_eq!(b, "GZIPPED-BYTES");
    let (_, h, b) = send(&app, get_req("/page")).await;
    assert_eq!(
        (status(&h), b.as_str()),
        ("MISS", "plain text"),
        "an identity client got the gzip body"
    );
    let (_, h, b) = send(&app, with("/page", "accept-encoding", "gzip, br")).await;
    assert_eq!((status(&h), b.as_str()), ("HIT", "GZIPPED-BYTES"));
    assert_eq!(h["content-encoding"], "gzip");
    let (_, h, b) = send(&app, get_req("/page")).await;
    assert_eq!((status(&h), b.as_str()), ("HIT", "plain text"));
}

/// `Age: 7200, 0` is a list whose first member counts (RFC 9111 §5.1):
/// a response two hours old with one hour of freshness is stale on
/// arrival and must not be served from the cache as fresh.
#[tokio::test]
async fn an_age_list_counts_its_first_member() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let router = app(
        &http,
        calls.clone(),
        &[("cache-control", "max-age=3600"), ("age", "7200, 0")],
    );
    send(&router, get_req("/page")).await;
    let (_, h, body) = send(&router, get_req("/page")).await;
    assert_ne!(status(&h), "HIT", "served stale as fresh");
    assert_eq!((body.as_str(), calls.load(Ordering::SeqCst)), ("body 2", 2));

    // Two Age lines: the first one counts too.
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let router = app(
        &http,
        calls.clone(),
        &[
            ("cache-control", "max-age=3600"),
            ("age", "7200"),
            ("age", "0"),
        ],
    );
    send(&router, get_req("/page")).await;
    send(&router, get_req("/page")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// An hour from now as IMF-fixdate, asctime and lower-case RFC 850 (RFC
/// 9110 §5.6.7: recipients accept all three).
fn an_hour_from_now() -> [String; 3] {
    let imf = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    let w: Vec<&str> = imf.split(' ').collect(); // Sun, 06 Nov 1994 08:49:37 GMT
    let (wd, day, mon, year, time) = (w[0].trim_end_matches(','), w[1], w[2], w[3], w[4]);
    let long = match wd {
        "Mon" => "monday",
        "Tue" => "tuesday",
        "Wed" => "wednesday",
        "Thu" => "thursday",
        "Fri" => "friday",
        "Sat" => "saturday",
        _ => "sunday",
    };
    [
        imf.clone(),
        format!(
            "{wd} {mon} {:>2} {time} {year}",
            day.trim_start_matches('0')
        ),
        format!(
            "{long}, {day}-{}-{} {time} gmt",
            mon.to_lowercase(),
            &year[2..]
        ),
    ]
}

#[tokio::test]
async fn expires_in_the_obsolete_formats_and_any_case_is_a_lifetime() {
    for expires in an_hour_from_now() {
        let http = HttpCache::builder(store()).build();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        let value = expires.clone();
        let router = Router::new()
            .route(
                "/page",
                get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let value = value.clone();
                    async move { ([("expires", value)], "dated") }
                }),
            )
            .layer(http.layer());
        send(&router, get_req("/page")).await;
        let (_, h, _) = send(&router, get_req("/page")).await;
        assert_eq!(status(&h), "HIT", "Expires: {expires}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "Expires: {expires}");
    }
}

/// Requests that say the same thing in other spacing or case share a
/// variant; a Vary'd Cookie stays byte for byte (privacy).
#[tokio::test]
async fn vary_normalises_list_headers_and_keeps_cookies_exact() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let router = app(
        &http,
        calls.clone(),
        &[
            ("cache-control", "max-age=60"),
            ("vary", "Accept-Language, Accept-Encoding"),
        ],
    );
    let req = |lang: &str, enc: &str| {
        Request::builder()
            .uri("/page")
            .header("host", "example.com")
            .header("accept-language", lang)
            .header("accept-encoding", enc)
            .body(Body::empty())
            .unwrap()
    };
    let (_, _, first) = send(&router, req("en, de", "gzip, br")).await;
    let (_, h, same) = send(&router, req("  EN ,   de ", "GZIP,br")).await;
    assert_eq!((status(&h), same.as_str()), ("HIT", first.as_str()));
    let (_, _, other) = send(&router, req("en, de", "br, gzip")).await;
    assert_eq!(other, "body 2", "another order is another variant");

    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let router = app(
        &http,
        calls.clone(),
        &[("cache-control", "max-age=60"), ("vary", "Cookie")],
    );
    let (_, _, a) = send(&router, with("/page", "cookie", "session=abc; theme=dark")).await;
    let (_, _, b) = send(&router, with("/page", "cookie", "session=abc;theme=dark")).await;
    let (_, h, a2) = send(&router, with("/page", "cookie", "session=abc; theme=dark")).await;
    assert_eq!((a.as_str(), b.as_str()), ("body 1", "body 2"));
    assert_eq!((status(&h), a2.as_str()), ("HIT", "body 1"));
}

/// RFC 9213: the first valid field of the target list decides, over
/// Cache-Control and Expires; the cache's own field never leaves it,
/// CDN-Cache-Control does; without a target list both are ignored.
#[tokio::test]
async fn targeted_cache_control_decides_for_this_cache_only() {
    use axum::http::HeaderName;
    use larder_http::CDN_CACHE_CONTROL;
    let own = HeaderName::from_static("larder-cache-control");
    let cache_with =
        |list: Vec<HeaderName>| HttpCache::builder(store()).target_fields(list).build();
    let run = |http: HttpCache, headers: &'static [(&'static str, &'static str)]| async move {
        let calls = Arc::new(AtomicU32::new(0));
        let router = app(&http, calls.clone(), headers);
        let (_, first, _) = send(&router, get_req("/page")).await;
        let (_, second, _) = send(&router, get_req("/page")).await;
        (
            first,
            status(&second).to_owned(),
            calls.load(Ordering::SeqCst),
        )
    };

    // Browsers get `private`; this cache keeps it for a minute.
    let (h, second, calls) = run(
        cache_with(vec![own.clone(), CDN_CACHE_CONTROL]),
        &[
            ("cache-control", "private, max-age=0"),
            ("larder-cache-control", "max-age=60"),
            ("cdn-cache-control", "no-store"),
            ("expires", "0"),
        ],
    )
    .await;
    assert_eq!((second.as_str(), calls), ("HIT", 1));
    assert_eq!(
        h["cache-control"], "private, max-age=0",
        "the client's field is untouched"
    );
    assert!(
        !h.contains_key("larder-cache-control"),
        "the own field is stripped"
    );
    assert_eq!(
        h["cdn-cache-control"], "no-store",
        "CDN-Cache-Control goes on"
    );

    // The first valid field wins: the own field says no-store.
    let (_, second, calls) = run(
        cache_with(vec![own.clone(), CDN_CACHE_CONTROL]),
        &[
            ("cache-control", "max-age=60"),
            ("larder-cache-control", "no-store"),
            ("cdn-cache-control", "max-age=60"),
        ],
    )
    .await;
    assert_eq!((second.as_str(), calls), ("MISS", 2));

    // An invalid targeted field (not a structured dictionary: upper case)
    // is skipped, so CDN-Cache-Control and then Cache-Control decide.
    let (_, second, calls) = run(
        cache_with(vec![own.clone(), CDN_CACHE_CONTROL]),
        &[
            ("cache-control", "private"),
            ("larder-cache-control", "Max-Age=60"),
            ("cdn-cache-control", "max-age=60"),
        ],
    )
    .await;
    assert_eq!((second.as_str(), calls), ("HIT", 1));
    let (_, second, calls) = run(
        cache_with(vec![own.clone()]),
        &[
            ("cache-control", "private"),
            ("larder-cache-control", "max-age=60;"),
        ],
    )
    .await;
    assert_eq!(
        (second.as_str(), calls),
        ("MISS", 2),
        "invalid: Cache-Control's private applies"
    );

    // Not configured: the targeted fields are ordinary headers.
    let (h, second, calls) = run(
        HttpCache::builder(store()).build(),
        &[
            ("cache-control", "private"),
            ("cdn-cache-control", "max-age=60"),
        ],
    )
    .await;
    assert_eq!((second.as_str(), calls), ("MISS", 2));
    assert_eq!(h["cdn-cache-control"], "max-age=60");

    // A request with Authorization is still never stored.
    let http = cache_with(vec![CDN_CACHE_CONTROL]);
    let calls = Arc::new(AtomicU32::new(0));
    let router = app(&http, calls.clone(), &[("cdn-cache-control", "max-age=60")]);
    send(&router, with("/page", "authorization", "Bearer a")).await;
    send(&router, with("/page", "authorization", "Bearer b")).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Byte ranges from a stored complete response (RFC 9110 §14): one range,
/// several (multipart/byteranges), suffix and open ranges, 416, If-Range;
/// a 206 from the origin passes through without making the URL
/// uncacheable; a private response is never ranged from the cache.
#[tokio::test]
async fn byte_ranges_are_answered_from_a_stored_response() {
    let http = HttpCache::builder(store()).build();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let private_calls = Arc::new(AtomicU32::new(0));
    let pc = private_calls.clone();
    let router = Router::new()
        .route(
            "/file",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    (
                        [
                            ("cache-control", "max-age=60"),
                            ("etag", "\"v1\""),
                            ("content-type", "text/plain"),
                        ],
                        "0123456789abcdefghij",
                    )
                }
            }),
        )
        .route(
            "/partial",
            get(|headers: HeaderMap| async move {
                if headers.contains_key("range") {
                    (
                        StatusCode::PARTIAL_CONTENT,
                        [
                            ("cache-control", "max-age=60"),
                            ("content-range", "bytes 0-1/4"),
                        ],
                        "ab",
                    )
                        .into_response()
                } else {
                    ([("cache-control", "max-age=60")], "abcd").into_response()
                }
            }),
        )
        .route(
            "/private",
            get(move || {
                pc.fetch_add(1, Ordering::SeqCst);
                async move { ([("cache-control", "private, max-age=60")], "secret-data") }
            }),
        )
        .layer(http.layer());
    let ranged = |path: &str, range: &str| with(path, "range", range);

    assert_eq!(send(&router, get_req("/file")).await.0, StatusCode::OK);
    let (s, h, b) = send(&router, ranged("/file", "bytes=0-3")).await;
    assert_eq!(
        (s, b.as_str(), status(&h)),
        (StatusCode::PARTIAL_CONTENT, "0123", "HIT")
    );
    assert_eq!(h["content-range"], "bytes 0-3/20");
    assert_eq!(h["content-length"], "4");
    let (s, h, b) = send(&router, ranged("/file", "bytes=-5")).await;
    assert_eq!((s, b.as_str()), (StatusCode::PARTIAL_CONTENT, "fghij"));
    assert_eq!(h["content-range"], "bytes 15-19/20");
    let (_, _, b) = send(&router, ranged("/file", "bytes=18-")).await;
    assert_eq!(b, "ij");

    let (s, h, b) = send(&router, ranged("/file", "bytes=0-1, 10-11")).await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    let ct = h["content-type"].to_str().unwrap().to_owned();
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .expect(&ct);
    assert_eq!(h["content-length"].to_str().unwrap(), b.len().to_string());
    assert!(
        b.contains("content-range: bytes 0-1/20\r\n\r\n01\r\n"),
        "{b}"
    );
    assert!(
        b.contains("content-range: bytes 10-11/20\r\n\r\nab\r\n"),
        "{b}"
    );
    assert!(b.contains("content-type: text/plain"), "{b}");
    assert!(b.ends_with(&format!("\r\n--{boundary}--\r\n")), "{b}");

    let (s, h, b) = send(&router, ranged("/file", "bytes=20-")).await;
    assert_eq!((s, b.as_str()), (StatusCode::RANGE_NOT_SATISFIABLE, ""));
    assert_eq!(h["content-range"], "bytes */20");

    // Invalid or not bytes: the whole response.
    for r in ["bytes=5-1", "lines=0-1", "bytes=x"] {
        let (s, _, b) = send(&router, ranged("/file", r)).await;
        assert_eq!((s, b.len()), (StatusCode::OK, 20), "{r}");
    }
    // If-Range: the ranges only for the representation named.
    let if_range = |tag: &str| {
        Request::builder()
            .uri("/file")
            .header("host", "example.com")
            .header("range", "bytes=0-1")
            .header("if-range", tag)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&router, if_range("\"v1\"")).await.2, "01");
    let (s, _, b) = send(&router, if_range("\"v0\"")).await;
    assert_eq!((s, b.len()), (StatusCode::OK, 20));
    // HEAD ignores Range.
    let head = Request::builder()
        .method("HEAD")
        .uri("/file")
        .header("host", "example.com")
        .header("range", "bytes=0-1")
        .body(Body::empty())
        .unwrap();
    let (s, h, _) = send(&router, head).await;
    assert_eq!(
        (s, &h["content-length"]),
        (StatusCode::OK, &HeaderValue::from_static("20"))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "all from the one stored response"
    );

    // The origin's own 206 passes through and does not make the URL
    // uncacheable: the next plain GET is stored.
    let (s, h, b) = send(&router, ranged("/partial", "bytes=0-1")).await;
    assert_eq!(
        (s, b.as_str(), status(&h)),
        (StatusCode::PARTIAL_CONTENT, "ab", "MISS")
    );
    send(&router, get_req("/partial")).await;
    let (_, h, b) = send(&router, get_req("/partial")).await;
    assert_eq!((status(&h), b.as_str()), ("HIT", "abcd"));

    // Private: never stored, so never ranged from the cache.
    for _ in 0..2 {
        let (s, h, b) = send(&router, ranged("/private", "bytes=0-1")).await;
        assert_eq!((s, b.as_str()), (StatusCode::OK, "secret-data"));
        assert_ne!(status(&h), "HIT");
    }
    assert_eq!(private_calls.load(Ordering::SeqCst), 2);
}

/// A URL purge that lands while a response for that URL is still being
/// fetched (here a streamed body, stored when it ends) wins: the late
/// store removes itself, and the next request gets the origin's new page.
#[tokio::test]
async fn a_url_purge_during_a_streamed_fetch_wins_over_its_store() {
    let http = HttpCache::builder(store()).build();
    let (tx, rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    let first = Arc::new(std::sync::Mutex::new(Some(rx)));
    let router = Router::new()
        .route(
            "/page",
            get(move || {
                let first = first.clone();
                async move {
                    let headers = [("cache-control", "max-age=60")];
                    match first.lock().unwrap().take() {
                        Some(rx) => {
                            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                                rx.recv().await.map(|c| (Ok::<_, std::io::Error>(c), rx))
                            });
                            (headers, Body::from_stream(stream)).into_response()
                        }
                        None => (headers, "new page").into_response(),
                    }
                }
            }),
        )
        .layer(http.layer());
    let res: Response = router.clone().oneshot(get_req("/page")).await.unwrap();
    assert_eq!(status(res.headers()), "MISS");
    let body = tokio::spawn(async move { res.into_body().collect().await.unwrap().to_bytes() });
    tx.send("old page").await.unwrap();
    // The page changed: the application purges while the old one streams.
    let uri: axum::http::Uri = "/page".parse().unwrap();
    http.purge_url("example.com", &uri).await.unwrap();
    drop(tx);
    assert_eq!(body.await.unwrap(), "old page");
    tokio::time::sleep(Duration::from_millis(100)).await; // the copy's store
    let (_, h, b) = send(&router, get_req("/page")).await;
    assert_eq!((status(&h), b.as_str()), ("MISS", "new page"));
}

/// A request that starts right after a purge (in the same millisecond,
/// as in-process requests do) is not one that raced it: its response is
/// kept, for URL and for tag purges alike.
#[tokio::test]
async fn a_response_fetched_right_after_a_purge_is_kept() {
    let http = HttpCache::builder(store()).build();
    let router = Router::new()
        .route(
            "/page",
            get(|| async {
                (
                    [("cache-control", "max-age=60"), ("cache-tag", "t1")],
                    "page",
                )
            }),
        )
        .layer(http.layer());
    let uri: axum::http::Uri = "/page".parse().unwrap();
    for round in 0..20 {
        if round % 2 == 0 {
            http.purge_url("example.com", &uri).await.unwrap();
        } else {
            http.purge_tag("t1").await.unwrap();
        }
        let (_, h, _) = send(&router, get_req("/page")).await;
        assert_eq!(status(&h), "MISS", "round {round}");
        let (_, h, _) = send(&router, get_req("/page")).await;
        assert_eq!(
            status(&h),
            "HIT",
            "round {round}: the store after the purge was undone"
        );
    }
}
