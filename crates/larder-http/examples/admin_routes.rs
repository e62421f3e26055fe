//! Purge and status endpoints in your own axum service, behind your own
//! authentication (here a bearer token from the environment).
//!
//! ```text
//! ADMIN_TOKEN=change-me-please-0123 cargo run -p larder-http --example admin_routes
//! curl -s http://127.0.0.1:8095/news                      # MISS, then HIT
//! curl -s -XPOST -H 'Authorization: Bearer change-me-please-0123' \
//!      'http://127.0.0.1:8095/ops/cache/purge?tag=news'   # {"purged":"tag",…,"matched":true}
//! curl -s -H 'Authorization: Bearer change-me-please-0123' http://127.0.0.1:8095/ops/cache/status
//! ```

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use larder_http::HttpCache;

async fn news() -> Response {
    (
        [("cache-control", "max-age=300"), ("cache-tag", "news")],
        "today's news\n",
    )
        .into_response()
}

async fn require_token(req: Request, next: Next) -> Response {
    let want = std::env::var("ADMIN_TOKEN").unwrap_or_default();
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if want.len() < 16 || given != Some(want.as_str()) {
        return (StatusCode::UNAUTHORIZED, "admin token required\n").into_response();
    }
    next.run(req).await
}

#[tokio::main]
async fn main() {
    let store = larder::open("mem://").await.expect("cache URL");
    let http = HttpCache::builder(store).build();
    let site = Router::new().route("/news", get(news)).layer(http.layer());
    // The admin service answers …/purge and …/status under any prefix.
    let ops = Router::new()
        .nest_service("/ops/cache", http.admin())
        .layer(middleware::from_fn(require_token));
    let app = site.merge(ops);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8095")
        .await
        .expect("bind");
    eprintln!("admin_routes on http://127.0.0.1:8095/ (purge at /ops/cache/purge)");
    axum::serve(listener, app).await.expect("serve");
}
