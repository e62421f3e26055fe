//! The service of `docs/guide-service.md`: an axum + sqlx (PostgreSQL)
//! application using every part of larder, wired the way the guide says.
//!
//! - `GET /posts/{id}`: the post page, read from the `post_page` view
//!   (kept by a worker from the outbox), cached by the HTTP layer for 60 s
//!   (browsers revalidate), tagged so the worker's rewrite purges it.
//! - `GET /posts/{id}/comments`: a query through the query cache
//!   (row-level: a comment on another post leaves it cached).
//! - `POST /posts/{id}/comments` (form `body=`): a write through the query
//!   cache; `404` when the post does not exist (a foreign-key violation).
//! - `GET /top`: an aggregate through `get_or_compute`, stale for up to
//!   10 minutes while one refresh runs.
//! - `/_larder`: the dashboard, behind a bearer token.
//!
//! Every cache is Redis with fail-open reads: with Redis down the service
//! answers from PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use larder::http::{cache_page, HttpCache};
use larder::query::{Param, QueryCache, QueryError, SqlDialect};
use larder::views::{Source, SqlStore, SqlView, Views, WorkerConfig};
use larder::{Cache, ComputeError, ComputeOptions, Ttl};
use serde::{Deserialize, Serialize};

/// What the service needs from its environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// PostgreSQL (`DATABASE_URL`).
    pub database_url: String,
    /// Redis (`REDIS_URL`), e.g. `redis://127.0.0.1:6379/0`.
    pub redis_url: String,
    /// The dashboard's bearer token (`ADMIN_TOKEN`).
    pub admin_token: String,
}

/// The running service: its router and the handles its tests use.
pub struct Service {
    /// The application.
    pub router: Router,
    /// The views (for `status()`, `rebuild`).
    pub views: Views,
    /// Stops the view worker when dropped.
    pub stop_worker: tokio::sync::watch::Sender<bool>,
}

#[derive(Clone)]
struct AppState {
    qc: QueryCache<sqlx::Postgres>,
    views: Views,
    cache: Cache,
    pool: sqlx::PgPool,
}

/// The schema this example owns (a real service runs migrations).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS posts (id BIGINT PRIMARY KEY, title TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS comments (id BIGSERIAL PRIMARY KEY, post_id BIGINT NOT NULL REFERENCES posts (id), body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS comments_post_id ON comments (post_id);";

/// One cache per part, each with its own key prefix, all fail-open.
async fn redis_cache(settings: &Settings, prefix: &str) -> larder::Result<Cache> {
    let sep = if settings.redis_url.contains('?') {
        '&'
    } else {
        '?'
    };
    larder::open(&format!(
        "{}{sep}key_prefix={prefix}&fail_open=true",
        settings.redis_url
    ))
    .await
}

/// Builds the service: caches, HTTP layer, query cache, views (installed
/// and backfilled), the worker that purges pages, the dashboard.
pub async fn build(
    settings: Settings,
) -> Result<Service, Box<dyn std::error::Error + Send + Sync>> {
    // First: the caches built next register their counters with it.
    let dashboard = larder::dashboard::Dashboard::new();

    let pool = sqlx::PgPool::connect(&settings.database_url).await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;

    let http = HttpCache::builder(redis_cache(&settings, "svc-http").await?).build();
    let qc = QueryCache::new(
        pool.clone(),
        redis_cache(&settings, "svc-query").await?,
        SqlDialect::Postgres,
        Ttl::secs(600),
    );
    let cache = redis_cache(&settings, "svc-app").await?;

    let source = Source::connect(&settings.database_url, 4).await?;
    let store = Arc::new(SqlStore::on(source.clone()).await?);
    let post_page = SqlView::new(
        "SELECT p.id, p.title, (SELECT COUNT(*) FROM comments c WHERE c.post_id = p.id) AS comments \
         FROM posts p WHERE p.id = $1",
        "SELECT id FROM posts",
    )
    .depends_on("posts", "id")
    .depends_on("comments", "post_id")
    .named("post_page");
    let views = Views::builder(source, store).view(post_page).build()?;
    views.install().await?;
    // Rows that existed before the triggers have no documents yet.
    views.rebuild("post_page", None).await?;

    // The worker: a rewritten document purges the page showing it.
    let (stop_worker, mut stopped) = tokio::sync::watch::channel(false);
    {
        let http = http.clone();
        let worker = views.worker(WorkerConfig::default().poll_interval(Duration::from_millis(50)));
        tokio::spawn(worker.run_with(
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
            move |report| {
                let tags: Vec<String> = report
                    .written
                    .iter()
                    .map(|(view, key)| format!("{view}-{key}"))
                    .collect();
                let http = http.clone();
                tokio::spawn(async move {
                    for t in tags {
                        if let Err(e) = http.purge_tag(&t).await {
                            tracing::warn!(error = %e, tag = t, "purge failed; the page expires with its TTL");
                        }
                    }
                });
            },
        ));
    }

    let dashboard = dashboard.http_cache(&http).views(&views).section("query", {
        let qc = qc.clone();
        move || serde_json::to_value(qc.stats()).unwrap_or_default()
    });
    let token: Arc<str> = settings.admin_token.into();
    let admin = Router::new()
        .fallback_service(dashboard.service())
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let token = token.clone();
            async move { require_token(&token, req, next).await }
        }));

    let state = AppState {
        qc,
        views: views.clone(),
        cache,
        pool,
    };
    let pages = Router::new()
        .route("/posts/{id}", get(post_page_handler))
        .route_layer(cache_page(&http, Duration::from_secs(60)).browser_ttl(Duration::ZERO));
    let router = Router::new()
        .route("/posts/{id}/comments", get(comments).post(add_comment))
        .route("/top", get(top))
        .merge(pages)
        .with_state(state)
        .nest("/_larder", admin);
    Ok(Service {
        router,
        views,
        stop_worker,
    })
}

/// The page itself holds no data; its JSON and the metrics need the token.
async fn require_token(token: &str, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let page = path == "/" || path.is_empty();
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if page || given == Some(token) {
        next.run(req).await
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PostPage {
    id: i64,
    title: String,
    comments: i64,
}

async fn post_page_handler(State(app): State<AppState>, Path(id): Path<i64>) -> Response {
    match app.views.get::<PostPage>("post_page", id).await {
        Ok(Some(page)) => {
            let mut r = Json(page).into_response();
            // The worker purges this tag when it rewrites the document.
            if let Ok(tag) = HeaderValue::from_str(&format!("post_page-{id}")) {
                r.headers_mut().insert("cache-tag", tag);
            }
            r
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Debug, Serialize)]
struct Comment {
    id: i64,
    body: String,
}

async fn comments(State(app): State<AppState>, Path(id): Path<i64>) -> Response {
    let read = "SELECT id, body FROM comments WHERE post_id = $1 ORDER BY id";
    // Tuples are FromRow without sqlx's derive feature.
    match app
        .qc
        .fetch_all::<(i64, String)>(read, &[Param::from(id)])
        .await
    {
        Ok(rows) => {
            let rows: Vec<Comment> = rows
                .into_iter()
                .map(|(id, body)| Comment { id, body })
                .collect();
            Json(rows).into_response()
        }
        Err(e) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
struct NewComment {
    body: String,
}

async fn add_comment(
    State(app): State<AppState>,
    Path(id): Path<i64>,
    Form(c): Form<NewComment>,
) -> Response {
    let insert = "INSERT INTO comments (post_id, body) VALUES ($1, $2)";
    match app
        .qc
        .execute(insert, &[Param::from(id), Param::from(c.body)])
        .await
    {
        Ok(_) => StatusCode::CREATED.into_response(),
        Err(e)
            if e.database_error()
                .is_some_and(|d| d.is_foreign_key_violation()) =>
        {
            StatusCode::NOT_FOUND.into_response()
        }
        Err(QueryError::Database(e)) if matches!(*e, sqlx::Error::PoolTimedOut) => {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Err(e) => internal(e),
    }
}

async fn top(State(app): State<AppState>) -> Response {
    let opts = ComputeOptions::new(Ttl::secs(30)).stale_while_revalidate(Duration::from_secs(600));
    let pool = app.pool.clone();
    let top: Result<Vec<(i64, i64)>, ComputeError<sqlx::Error>> = app
        .cache
        .get_or_compute_with("top", &opts, move || async move {
            sqlx::query_as(
                "SELECT post_id, COUNT(*) FROM comments GROUP BY post_id ORDER BY COUNT(*) DESC, post_id LIMIT 5",
            )
            .fetch_all(&pool)
            .await
        })
        .await;
    match top {
        Ok(t) => Json(t).into_response(),
        Err(e) => internal(e),
    }
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "request failed");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}
