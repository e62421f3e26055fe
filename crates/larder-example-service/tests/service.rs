//! The service of docs/guide-service.md against the real PostgreSQL (5432)
//! and Redis (6379): pages cached and purged when their view document
//! changes, row-level query caching, database errors mapped, the dashboard
//! behind its token, and the service working with Redis down.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use larder_example_service::{build, Service, Settings};
use tower::ServiceExt;

const PG: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of its own (through the connection's search_path), so the
/// example's `posts` and `comments` never meet other tests' tables.
async fn schema() -> (String, sqlx::PgPool) {
    let name = format!("svc_{}", std::process::id());
    let admin = sqlx::PgPool::connect(PG).await.expect("PostgreSQL on 5432");
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
    ))
    .execute(&admin)
    .await
    .unwrap();
    let url = format!("{PG}?options=-c%20search_path%3D{name}");
    (url, admin)
}

async fn call(
    s: &Service,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    // A real client sends Host; without it the HTTP layer bypasses the cache.
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "svc.test");
    if !body.is_empty() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = s
        .router
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let (parts, b) = r.into_parts();
    let bytes = b.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn settle(s: &Service) {
    let started = Instant::now();
    while s.views.status().await.unwrap().backlog > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the view worker never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_service_works_end_to_end() {
    let (url, admin) = schema().await;
    let name = format!("svc_{}", std::process::id());
    // Rows that exist before the service starts: backfilled by rebuild.
    sqlx::raw_sql(&format!(
        "SET search_path = {name}; {} INSERT INTO posts VALUES (1, 'caching'), (2, 'herds');",
        larder_example_service::SCHEMA
    ))
    .execute(&admin)
    .await
    .unwrap();
    let s = build(Settings {
        database_url: url.clone(),
        redis_url: "redis://127.0.0.1:6379/0".into(),
        admin_token: "s3cret".into(),
    })
    .await
    .expect("Redis on 6379, PostgreSQL on 5432");

    // The page: from the view, cached by the HTTP layer.
    let (st, h, body) = call(&s, "GET", "/posts/1", "", None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.contains("\"comments\":0"), "{body}");
    assert_eq!(h["cache-control"], "s-maxage=60, max-age=0");
    let (_, h, _) = call(&s, "GET", "/posts/1", "", None).await;
    assert_eq!(h["x-larder-cache"], "HIT");

    // A comment: through the query cache; the view worker rewrites the
    // document and purges the cached page.
    let (_, _, before2) = call(&s, "GET", "/posts/2/comments", "", None).await;
    let (st, _, _) = call(&s, "POST", "/posts/1/comments", "body=great+talk", None).await;
    assert_eq!(st, StatusCode::CREATED);
    settle(&s).await;
    let started = Instant::now();
    loop {
        let (_, _, body) = call(&s, "GET", "/posts/1", "", None).await;
        if body.contains("\"comments\":1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the page was never purged: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, _, c1) = call(&s, "GET", "/posts/1/comments", "", None).await;
    assert!(c1.contains("great talk"), "{c1}");
    let (_, _, after2) = call(&s, "GET", "/posts/2/comments", "", None).await;
    assert_eq!(before2, after2);

    // A comment on a post that does not exist: the foreign key says 404.
    let (st, _, _) = call(&s, "POST", "/posts/99/comments", "body=x", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _, top) = call(&s, "GET", "/top", "", None).await;
    assert_eq!((st, top.as_str()), (StatusCode::OK, "[[1,1]]"));

    // The dashboard: the page is open, its data needs the token.
    let (st, _, _) = call(&s, "GET", "/_larder", "", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = call(&s, "GET", "/_larder/stats.json", "", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, json) = call(&s, "GET", "/_larder/stats.json", "", Some("s3cret")).await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["query"]["cached_reads"].as_u64().unwrap() >= 3, "{v}");
    assert_eq!(v["views"]["dead_letters"], 0);
    let _ = s.stop_worker.send(true);

    // Redis down from the start: every request still answers.
    let down = build(Settings {
        database_url: url,
        redis_url: "redis://127.0.0.1:1/0".into(),
        admin_token: "s3cret".into(),
    })
    .await
    .expect("the service starts with its cache down");
    for path in ["/posts/1", "/posts/1/comments", "/top"] {
        let (st, _, body) = call(&down, "GET", path, "", None).await;
        assert_eq!(st, StatusCode::OK, "{path}: {body}");
    }
    let _ = down.stop_worker.send(true);
    sqlx::raw_sql(&format!("DROP SCHEMA {name} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
