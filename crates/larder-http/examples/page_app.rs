//! A small axum site like the Django benchmark app: one page of about 2 KB
//! of HTML built from an SQLite query, with or without the larder cache
//! layer for the whole site, and the same page at `/private` marked
//! `Cache-Control: private` (what a shared cache must pass through). Used
//! by `scripts/bench-http-vs-django`.
//!
//! ```text
//! cargo run --release -p larder-http --example page_app -- --port 8091 --cache mem
//! cargo run --release -p larder-http --example page_app -- --port 8092 --cache off
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use larder_core::Cache;
use larder_http::HttpCache;

type Db = Arc<Mutex<rusqlite::Connection>>;

fn seed() -> rusqlite::Connection {
    let db = rusqlite::Connection::open_in_memory().expect("sqlite");
    db.execute_batch(
        "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price_cents INTEGER);",
    )
    .expect("schema");
    for i in 1..=100 {
        db.execute(
            "INSERT INTO item (id, name, category, price_cents) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                i,
                format!("Item number {i}"),
                format!("category-{}", i % 7),
                i * 137 % 10_000
            ],
        )
        .expect("seed");
    }
    db
}

async fn items(State(db): State<Db>) -> Response {
    let rows: Vec<(i64, String, String, i64)> = {
        let db = db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = db
            .prepare_cached("SELECT id, name, category, price_cents FROM item ORDER BY id LIMIT 22")
            .expect("query");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("rows")
            .filter_map(Result::ok)
            .collect()
    };
    let mut html = String::with_capacity(2400);
    html.push_str(
        "<!doctype html><html><head><title>Items</title></head><body><h1>Items</h1><table>\n",
    );
    html.push_str("<tr><th>id</th><th>name</th><th>category</th><th>price</th></tr>\n");
    for (id, name, cat, cents) in rows {
        html.push_str(&format!(
            "<tr><td>{id}</td><td>{name}</td><td>{cat}</td><td>{}.{:02}</td></tr>\n",
            cents / 100,
            cents % 100
        ));
    }
    html.push_str("</table></body></html>\n");
    let rendered = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut r = Html(html).into_response();
    r.headers_mut().insert(
        "x-rendered",
        format!("{}-{rendered}", std::process::id())
            .parse()
            .expect("header"),
    );
    r
}

/// The page, for this user only: shared caches pass it through.
async fn private_items(state: State<Db>) -> Response {
    let mut r = items(state).await;
    r.headers_mut().insert(
        "cache-control",
        axum::http::HeaderValue::from_static("private"),
    );
    r
}

#[tokio::main]
async fn main() {
    let mut port = 8091u16;
    let mut cache = "mem".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port N"),
            "--cache" => cache = args.next().expect("--cache mem|off|URL"),
            other => panic!("unknown argument {other}"),
        }
    }
    let db: Db = Arc::new(Mutex::new(seed()));
    let mut app = Router::new()
        .route("/", get(items))
        .route("/private", get(private_items))
        .with_state(db);
    if cache != "off" {
        let url = if cache == "mem" {
            "mem://"
        } else {
            cache.as_str()
        };
        let store: Cache = larder::open(url).await.expect("cache URL");
        // Like Django's per-site cache: CACHE_MIDDLEWARE_SECONDS = 60.
        let http = HttpCache::builder(store)
            .default_ttl(Some(Duration::from_secs(60)))
            .build();
        app = app.layer(http.layer());
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    eprintln!("page_app on http://127.0.0.1:{port}/ (cache: {cache})");
    axum::serve(listener, app).await.expect("serve");
}
