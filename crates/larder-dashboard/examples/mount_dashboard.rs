//! An axum application with a cached page and the larder dashboard mounted
//! at `/_larder` behind a (toy) bearer token.
//!
//! ```text
//! cargo run -p larder-dashboard --example mount_dashboard
//! curl -s http://127.0.0.1:3000/news                           # cached page
//! curl -s -H 'authorization: Bearer s3cret' http://127.0.0.1:3000/_larder/stats.json
//! # the page: http://127.0.0.1:3000/_larder#token=s3cret
//! ```

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::StatusCode;
use larder_dashboard::Dashboard;

/// Your own authentication: the dashboard has none. The page itself holds
/// no data; its JSON requests carry the token from the URL fragment.
async fn require_token(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let page = path == "/" || path.is_empty();
    let ok = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v == "Bearer s3cret");
    if page || ok {
        next.run(req).await
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First, so the caches built next register their counters with it.
    let dashboard = Dashboard::new();
    let store = larder_core::Cache::builder(larder_mem::MemBackend::default())
        .name("http")
        .build()?;
    let http = larder_http::HttpCache::builder(store).build();
    let dashboard = dashboard.http_cache(&http);
    let ops = Router::new()
        .fallback_service(dashboard.service())
        .layer(middleware::from_fn(require_token));
    let app = Router::new()
        .route("/news", get(|| async { "today's news" }))
        .route_layer(larder_http::cache_page(&http, Duration::from_secs(60)))
        .nest("/_larder", ops);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("http://127.0.0.1:3000/news, dashboard http://127.0.0.1:3000/_larder#token=s3cret");
    axum::serve(listener, app).await?;
    Ok(())
}
