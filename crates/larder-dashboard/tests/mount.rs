//! The dashboard mounted in an application's own router, under a prefix
//! of its choosing: the page, its JSON and the Prometheus text answer
//! there, and nothing else does.

use axum::body::Body;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use larder_dashboard::Dashboard;
use tower::ServiceExt;

async fn send(app: &Router, method: &str, path: &str) -> (StatusCode, http::HeaderMap, String) {
    let r = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (parts, body) = r.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn mounted_under_a_prefix_of_the_applications_choice() {
    let dashboard = Dashboard::new();
    let store = larder_core::Cache::builder(larder_mem::MemBackend::default())
        .name("http")
        .build()
        .unwrap();
    let http = larder_http::HttpCache::builder(store).build();
    let dashboard = dashboard
        .http_cache(&http)
        .section("release", || "2026.12".into());
    let app = Router::new()
        .route("/", axum::routing::get(|| async { "home" }))
        .nest_service("/ops/cache", dashboard.service());

    let (s, h, page) = send(&app, "GET", "/ops/cache").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["cache-control"], "no-store");
    assert!(page.contains("<html") && page.contains("stats.json"));
    assert!(
        !page.contains("\"/_larder/stats.json\""),
        "the page must fetch its JSON relative to where it is mounted"
    );
    let (s, _, _) = send(&app, "GET", "/ops/cache/").await;
    assert_eq!(s, StatusCode::OK);

    let (s, h, json) = send(&app, "GET", "/ops/cache/stats.json").await;
    assert_eq!(
        (s, &h["content-type"]),
        (
            StatusCode::OK,
            &"application/json".parse::<http::HeaderValue>().unwrap()
        )
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["release"], "2026.12");
    assert!(v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "http"));
    assert!(v["latency_ms"]["p99"].is_number());

    dashboard.record_latency(std::time::Duration::from_millis(3));
    let (s, _, text) = send(&app, "GET", "/ops/cache/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("larder_http_hits_total 0"), "{text}");
    assert!(text.contains("larder_request_seconds"), "{text}");

    let (s, h, _) = send(&app, "POST", "/ops/cache/stats.json").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h["allow"], "GET, HEAD");
    for path in [
        "/ops/cache/secret",
        "/ops/cache/stats.json/x",
        "/ops/cache/../etc/passwd",
    ] {
        let (s, _, _) = send(&app, "GET", path).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
}

/// The latency layer counts the requests of the routes it wraps, and not
/// the dashboard's own polling nested after it.
#[tokio::test]
async fn the_latency_layer_measures_the_wrapped_routes_only() {
    let dashboard = Dashboard::new();
    let app = Router::new()
        .route("/", axum::routing::get(|| async { "home" }))
        .layer(dashboard.latency_layer())
        .nest_service("/_larder", dashboard.service());
    let total = |v: &serde_json::Value| v["latency_ms"]["total"].as_u64().unwrap();
    let before = total(&dashboard.snapshot().await);
    for _ in 0..3 {
        assert_eq!(send(&app, "GET", "/").await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(
            send(&app, "GET", "/_larder/stats.json").await.0,
            StatusCode::OK
        );
    }
    assert_eq!(total(&dashboard.snapshot().await), before + 3);
}
