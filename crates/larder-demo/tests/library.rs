//! The demo as a library: built on embedded defaults in a temporary
//! directory and driven through its router, without a listener or the
//! CLI (the CLI's tests run `larder demo` end to end over HTTP).

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use larder_demo::{Demo, DemoConfig, DemoError};
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    cache: Option<String>,
    body: String,
}

async fn send(demo: &Demo, method: &str, path: &str, form: &str) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "demo.test");
    let body = if form.is_empty() {
        Body::empty()
    } else {
        req = req.header("content-type", "application/x-www-form-urlencoded");
        Body::from(form.to_owned())
    };
    let r = demo
        .router()
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = r.status();
    let cache = r
        .headers()
        .get("x-larder-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        cache,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn small(dir: &std::path::Path) -> DemoConfig {
    let mut c = DemoConfig::new(dir);
    c.users = 20;
    c.posts = 100;
    c.comments = 500;
    c.likes = 300;
    c.traffic = 0;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_a_directory_it_serves_cached_pages_and_writes_reach_them() {
    let dir = tempfile::tempdir().unwrap();
    let steps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut config = small(dir.path());
    let seen = steps.clone();
    config.progress = Some(std::sync::Arc::new(move |what: &str, done, total| {
        seen.lock().unwrap().push((what.to_owned(), done, total));
    }));
    let demo = Demo::build(config).await.unwrap();
    assert!(demo.seeded());
    let steps = steps.lock().unwrap().clone();
    assert!(
        steps
            .iter()
            .any(|(w, d, t)| w.starts_with("seeding") && d == t),
        "seeding reported to its end: {steps:?}"
    );
    assert!(steps.iter().any(|(w, _, _)| w == "building view post_page"));

    let front = send(&demo, "GET", "/", "").await;
    assert_eq!(front.status, StatusCode::OK, "{}", front.body);
    assert_eq!(front.cache.as_deref(), Some("MISS"));
    assert_eq!(
        send(&demo, "GET", "/", "").await.cache.as_deref(),
        Some("HIT")
    );

    let page = send(&demo, "GET", "/posts/5", "").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        send(&demo, "GET", "/posts/5", "").await.cache.as_deref(),
        Some("HIT")
    );
    let r = send(
        &demo,
        "POST",
        "/posts/5/comments",
        "author_id=2&body=from+the+library",
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let after = send(&demo, "GET", "/posts/5", "").await;
    assert!(
        after.body.contains("from the library"),
        "the write reaches the cached page"
    );

    // Latency counts the site's five GETs and one POST, not the
    // dashboard's own answers.
    let stats = send(&demo, "GET", "/_larder/stats.json", "").await;
    assert_eq!(stats.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&stats.body).unwrap();
    assert_eq!(v["latency_ms"]["total"], 6, "{v}");

    // A second build over the same directory reuses the data.
    demo.shutdown().await;
    let again = Demo::build(small(dir.path())).await.unwrap();
    assert!(!again.seeded());
    assert_eq!(
        send(&again, "GET", "/posts/5", "").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_configuration_that_cannot_work_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut mysql = small(dir.path());
    mysql.database = Some("mysql://root@127.0.0.1:3306/test".into());
    let e = Demo::build(mysql).await.err().expect("MySQL is refused");
    assert!(matches!(e, DemoError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("SQLite or PostgreSQL"), "{e}");

    let mut store = small(dir.path());
    store.store = Some("floppy:/dev/fd0".into());
    let e = Demo::build(store)
        .await
        .err()
        .expect("an unknown store is refused");
    assert!(matches!(e, DemoError::Config(_)), "{e:?}");
}
