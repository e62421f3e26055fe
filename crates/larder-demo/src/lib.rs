//! `larder demo`: a small forum (users, posts, comments, likes) that uses
//! every part of larder, on embedded defaults (an SQLite file, the memory
//! cache, redb views) or on PostgreSQL with Redis or memcached:
//!
//! - the per-site HTTP cache for anonymous pages, purged by tag on writes
//!   (and again when a view document the page shows is rewritten);
//! - the query cache for lists (latest posts, a post's comments, a user's
//!   posts), invalidated by the writes;
//! - denormalized views for post pages and user cards (counters included),
//!   kept by a worker, with read-through for brand-new posts;
//! - `get_or_compute` (stale-while-revalidate) for the expensive "trending"
//!   aggregate, through a near cache (an in-process L1 before the shared
//!   cache, invalidated over Redis pub/sub or PostgreSQL NOTIFY);
//! - the dashboard at `/_larder` and Prometheus text at `/metrics`.

//! # larder-demo
//!
//! A small forum (users, posts, comments, likes) that uses every part of
//! larder, as a library: [`Demo::build`] seeds the data and wires the
//! caches, [`Demo::router`] is the axum app, [`Demo::serve`] runs it.
//! `larder demo` is this crate behind a command line; read its source as
//! an application that adopts larder. It runs on embedded defaults (an
//! SQLite file, the memory cache, redb views) or on PostgreSQL with Redis
//! or memcached:
//!
//! - the per-site HTTP cache for anonymous pages, purged by tag on writes
//!   (and again when a view document the page shows is rewritten);
//! - the query cache for lists (latest posts, a post's comments, a user's
//!   posts), invalidated by the writes;
//! - denormalized views for post pages and user cards (counters included),
//!   kept by a worker, with read-through for brand-new posts;
//! - `get_or_compute` (stale-while-revalidate) for the expensive "trending"
//!   aggregate, through a near cache (an in-process L1 before the shared
//!   cache, invalidated over Redis pub/sub or PostgreSQL NOTIFY);
//! - the dashboard at `/_larder` and Prometheus text at `/metrics`.
//!
//! ```no_run
//! # async fn run() -> Result<(), larder_demo::DemoError> {
//! use larder_demo::{Demo, DemoConfig};
//!
//! let mut config = DemoConfig::new("larder-demo"); // SQLite, mem://, redb
//! config.posts = 1_000;
//! let demo = Demo::build(config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await.unwrap();
//! demo.serve(listener, std::future::pending()).await
//! # }
//! ```
//!
//! On PostgreSQL give the demo a database of its own: it creates, and
//! with [`DemoConfig::reseed`] drops, its `users`, `posts`, `comments` and
//! `likes` tables.

#![warn(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use larder::dashboard::Dashboard;
use larder::http::HttpCache;
use larder::mem::MemBackend;
use larder::prelude::*;
use larder::query::{Param, QueryCache, QueryError, SqlDialect};
use larder::views::{Dialect, Source, SqlView, ViewDef, Views, WorkerConfig};
use larder::{ComputeOptions, NearBackend};
use serde::Deserialize;

/// Reports long work (seeding, view builds): called with what is being
/// done, the steps done and the steps in all; `done == total` ends it.
pub type Progress = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// What the demo runs on and how much data it seeds. `DemoConfig::new`
/// gives the embedded defaults; set the fields to change them.
#[derive(Clone)]
#[non_exhaustive]
pub struct DemoConfig {
    /// Where the embedded defaults keep their files (created if missing).
    pub data_dir: PathBuf,
    /// The source database: `sqlite://…` or `postgres://…` (default: an
    /// SQLite file in `data_dir`).
    pub database: Option<String>,
    /// The cache URL for every layer, told apart by key prefix (default
    /// `mem://?max_entries=200000`).
    pub cache_url: Option<String>,
    /// The views store: `redb:PATH`, `redis://…` or `sql` (default: a redb
    /// file in `data_dir`).
    pub store: Option<String>,
    /// Users to seed.
    pub users: u64,
    /// Posts to seed.
    pub posts: u64,
    /// Comments to seed.
    pub comments: u64,
    /// Likes to seed.
    pub likes: u64,
    /// Drop the demo's tables and seed again even when they hold data.
    pub reseed: bool,
    /// Requests per second the demo sends itself once serving, so the
    /// dashboard moves (0: none).
    pub traffic: u32,
    /// Told about seeding and view builds (default: nothing).
    pub progress: Option<Progress>,
}

impl DemoConfig {
    /// The embedded defaults, keeping files in `data_dir`: 1,000 users,
    /// 10,000 posts, 100,000 comments, 50,000 likes, 10 requests/s of
    /// self-traffic.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        DemoConfig {
            data_dir: data_dir.into(),
            database: None,
            cache_url: None,
            store: None,
            users: 1_000,
            posts: 10_000,
            comments: 100_000,
            likes: 50_000,
            reseed: false,
            traffic: 10,
            progress: None,
        }
    }

    fn report(&self, what: &str, done: u64, total: u64) {
        if let Some(p) = &self.progress {
            p(what, done, total);
        }
    }
}

impl std::fmt::Debug for DemoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoConfig")
            .field("data_dir", &self.data_dir)
            .field("database", &self.database.as_deref().map(redact))
            .field("cache_url", &self.cache_url.as_deref().map(redact))
            .field("store", &self.store)
            .field("users", &self.users)
            .field("posts", &self.posts)
            .field("comments", &self.comments)
            .field("likes", &self.likes)
            .field("reseed", &self.reseed)
            .field("traffic", &self.traffic)
            .finish_non_exhaustive()
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// The configuration cannot work (a MySQL URL, a directory that cannot
    /// be created, an unparsable database URL).
    #[error("{0}")]
    Config(String),
    /// Something it needs failed: the database, the cache, the views
    /// store, the listener.
    #[error("{what}: {source}")]
    Failed {
        /// What the demo was doing.
        what: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn failed<E>(what: impl Into<String>) -> impl FnOnce(E) -> DemoError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = what.into();
    move |e| DemoError::Failed {
        what,
        source: e.into(),
    }
}

/// The typed pool and query cache, per database.
#[derive(Clone)]
enum Db {
    Sqlite(QueryCache<sqlx::Sqlite>),
    Postgres(QueryCache<sqlx::Postgres>),
}

macro_rules! with_qc {
    ($db:expr, $qc:ident => $body:expr) => {
        match $db {
            Db::Sqlite($qc) => $body,
            Db::Postgres($qc) => $body,
        }
    };
}

#[derive(Clone)]
struct App {
    db: Db,
    dialect: Dialect,
    views: Views,
    http: HttpCache,
    trending: Cache,
}

fn with_params(url: &str, params: &[(&str, &str)]) -> String {
    let mut out = url.to_owned();
    for (k, v) in params {
        if out.contains(&format!("{k}=")) {
            continue;
        }
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&format!("{k}={v}"));
    }
    out
}

/// The demo, built: data seeded, views built, caches open, the worker
/// running on the current tokio runtime.
pub struct Demo {
    router: Router,
    database: String,
    cache_url: String,
    store: String,
    seeded: bool,
    worker: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    traffic: u32,
    posts: u64,
    users: u64,
}

impl Demo {
    /// Opens the database (creating and seeding the tables on first run or
    /// with `reseed`), the caches and the views store, builds the views'
    /// documents when they are missing, starts the views worker (whose
    /// reports purge the pages showing a rewritten document) and assembles
    /// the router. Call it inside a tokio runtime.
    pub async fn build(config: DemoConfig) -> Result<Demo, DemoError> {
        // Before the caches: their counters register with its recorder.
        let dashboard = Dashboard::new();
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            DemoError::Config(format!(
                "cannot create the data directory {:?}: {e}",
                config.data_dir
            ))
        })?;
        let data_dir = config
            .data_dir
            .canonicalize()
            .unwrap_or(config.data_dir.clone());
        let database = config
            .database
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join("demo.db").display()));
        let dialect = Dialect::from_url(&database).map_err(|e| DemoError::Config(e.to_string()))?;
        if dialect == Dialect::MySql {
            return Err(DemoError::Config(
                "the demo runs on SQLite or PostgreSQL; use --database sqlite://… or postgres://…"
                    .into(),
            ));
        }
        let cache_url = config
            .cache_url
            .clone()
            .unwrap_or_else(|| "mem://?max_entries=200000".to_owned());

        // Caches: one per layer, on the same backend URL, told apart by prefix.
        let open = |name: &'static str| {
            let url = with_params(
                &cache_url,
                &[("name", name), ("key_prefix", &format!("demo{name}"))],
            );
            async move {
                Cache::from_url(&url)
                    .await
                    .map_err(failed(format!("cache {}", redact(&url))))
            }
        };
        let http_store = open("http").await?;
        let query_store = open("query").await?;
        let app_store = open("app").await?;
        let mut near = NearBackend::builder(
            Arc::new(MemBackend::with_max_entries(10_000)),
            app_store.backend().clone(),
        )
        .l1_ttl(Duration::from_secs(2))
        .name("trending");
        if cache_url.starts_with("redis://") {
            let bus_url = cache_url.split('?').next().unwrap_or(&cache_url);
            near = near.bus(Arc::new(
                larder::redis::RedisBus::new(bus_url, "larder_demo")
                    .map_err(failed("the near cache's Redis bus"))?,
            ));
        } else if dialect == Dialect::Postgres {
            near = near.bus(Arc::new(
                larder::sql::PgBus::new(&database, "larder_demo")
                    .map_err(failed("the near cache's PostgreSQL bus"))?,
            ));
        }
        let near = near.build().await.map_err(failed("the near cache"))?;
        let trending = Cache::builder_arc(Arc::new(near))
            .key_prefix("demotrending")
            .name("trending")
            .build()
            .map_err(failed("the trending cache"))?;

        // The database, seeded on first run.
        let db = match dialect {
            Dialect::Postgres => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .connect(&database)
                    .await
                    .map_err(failed(redact(&database)))?;
                Db::Postgres(QueryCache::new(
                    pool,
                    query_store,
                    SqlDialect::Postgres,
                    Ttl::secs(300),
                ))
            }
            _ => {
                let opts: sqlx::sqlite::SqliteConnectOptions = database
                    .parse()
                    .map_err(|e| DemoError::Config(format!("{database}: {e}")))?;
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(opts.busy_timeout(Duration::from_secs(10)))
                    .await
                    .map_err(failed(redact(&database)))?;
                Db::Sqlite(QueryCache::new(
                    pool,
                    query_store,
                    SqlDialect::Sqlite,
                    Ttl::secs(300),
                ))
            }
        };
        let seeded = seed(&db, dialect, &config).await?;

        // Views over the same database.
        let source = Source::connect(&database, 8)
            .await
            .map_err(failed("the views' source"))?;
        let store_spec = config
            .store
            .clone()
            .unwrap_or_else(|| format!("redb:{}", data_dir.join("views.redb").display()));
        let store = larder::views::open_store(&store_spec, &source, Duration::ZERO)
            .await
            .map_err(|e| match e {
                larder::views::Error::Config(m) => DemoError::Config(format!("views store: {m}")),
                other => failed(format!("views store {}", redact(&store_spec)))(other),
            })?;
        let views = Views::builder(source, store)
            .view(post_page_view())
            .view(user_card_view())
            .build()
            .map_err(failed("the views"))?;
        views
            .install()
            .await
            .map_err(failed("installing the views"))?;
        for name in ["post_page", "user_card"] {
            let docs = views
                .store()
                .count(name)
                .await
                .map_err(failed(format!("counting view {name}")))?;
            if seeded || docs == 0 {
                let what = format!("building view {name}");
                let progress = |done: u64, total: u64| config.report(&what, done, total);
                views
                    .rebuild(name, Some(&progress))
                    .await
                    .map_err(failed(format!("building view {name}")))?;
            }
        }

        let http = HttpCache::builder(http_store)
            .grace(Duration::from_secs(30))
            .build();
        let app = App {
            db,
            dialect,
            views: views.clone(),
            http: http.clone(),
            trending,
        };
        // The same service an application mounts.
        let dashboard = dashboard
            .http_cache(&http)
            .views(&views)
            .section("metrics_path", || "/metrics".into());

        // The worker: documents rewritten → the pages showing them purged.
        // It runs until the demo is shut down or dropped.
        let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = {
            let http = http.clone();
            let worker =
                views.worker(WorkerConfig::default().poll_interval(Duration::from_millis(50)));
            let stop = async move {
                let _ = stopped.await;
            };
            tokio::spawn(worker.run_with(stop, move |report| {
                let tags: Vec<String> = report
                    .written
                    .iter()
                    .map(|(view, key)| match view.as_str() {
                        "user_card" => format!("user-{key}"),
                        _ => format!("post-{key}"),
                    })
                    .collect();
                let http = http.clone();
                tokio::spawn(async move {
                    for t in tags {
                        if let Err(e) = http.purge_tag(&t).await {
                            tracing::warn!(error = %e, tag = t, "demo: purge failed");
                        }
                    }
                });
            }))
        };

        let cached_pages = Router::new()
            .route("/", get(front))
            .route("/posts/{id}", get(post_page))
            .route("/users/{id}", get(user_page))
            .layer(http.layer());
        let router = Router::new()
            .route("/posts", post(new_post))
            .route("/posts/{id}/comments", post(new_comment))
            .route("/posts/{id}/like", post(like))
            .route("/users/{id}/rename", post(rename))
            .merge(cached_pages)
            // The site's routes only: the dashboard's own polling is not
            // the site's latency.
            .layer(dashboard.latency_layer())
            .nest_service("/_larder", dashboard.service())
            .route_service("/metrics", dashboard.service())
            .with_state(app);

        Ok(Demo {
            router,
            database,
            cache_url,
            store: store_spec,
            seeded,
            worker: Some((stop_worker, worker)),
            traffic: config.traffic,
            posts: config.posts.max(1),
            users: config.users.max(1),
        })
    }

    /// The forum as an axum router: `/`, `/posts/{id}`, `/users/{id}`
    /// (cached pages), the form posts that write, `/_larder` and
    /// `/metrics`.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Whether [`build`](Self::build) seeded the tables (first run or
    /// `reseed`).
    pub fn seeded(&self) -> bool {
        self.seeded
    }

    /// One line naming the database, the cache and the views store, with
    /// passwords hidden.
    pub fn describe(&self) -> String {
        format!(
            "database {}, cache {}, views {}",
            redact(&self.database),
            redact(&self.cache_url),
            redact(&self.store)
        )
    }

    /// Stops the views worker and waits for it, so that the views store
    /// is free for the next user (a redb file admits one process, and one
    /// open handle). Dropping the demo stops the worker without waiting.
    pub async fn shutdown(mut self) {
        if let Some((stop, worker)) = self.worker.take() {
            let _ = stop.send(());
            if let Err(e) = worker.await {
                tracing::warn!(error = %e, "demo: the views worker ended abnormally");
            }
        }
    }

    /// Serves the router on `listener` until `shutdown` completes, sending
    /// itself the configured self-traffic, then stops the views worker.
    pub async fn serve(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), DemoError> {
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(failed("the listener's address"))?;
        let traffic = (self.traffic > 0)
            .then(|| tokio::spawn(self_traffic(addr, self.traffic, self.posts, self.users)));
        let router = std::mem::replace(&mut self.router, Router::new());
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(failed(format!("serving on {addr}")));
        if let Some(t) = traffic {
            t.abort();
        }
        self.shutdown().await;
        served
    }
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(a)) if a > s => {
            let creds = &url[s + 3..a];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[a..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

const POST_PAGE_SQL: &str = "SELECT p.id, p.title, p.body, p.author_id, u.name AS author, \
     (SELECT COUNT(*) FROM comments c WHERE c.post_id = p.id) AS comments, \
     (SELECT COUNT(*) FROM likes l WHERE l.post_id = p.id) AS likes \
     FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1";

fn post_page_view() -> ViewDef {
    SqlView::new(POST_PAGE_SQL, "SELECT id FROM posts")
        .depends_on("posts", "id")
        .depends_on("comments", "post_id")
        .depends_on("likes", "post_id")
        .depends_via("users", "id", "SELECT id FROM posts WHERE author_id = $1")
        .read_through(true)
        .named("post_page")
}

fn user_card_view() -> ViewDef {
    SqlView::new(
        "SELECT u.id, u.name, \
         (SELECT COUNT(*) FROM posts p WHERE p.author_id = u.id) AS posts, \
         (SELECT COUNT(*) FROM comments c WHERE c.author_id = u.id) AS comments \
         FROM users u WHERE u.id = $1",
        "SELECT id FROM users",
    )
    .depends_on("users", "id")
    .depends_on("posts", "author_id")
    .depends_on("comments", "author_id")
    .read_through(true)
    .named("user_card")
}

/// Creates and seeds the tables unless they hold data; returns whether it
/// seeded.
async fn seed(db: &Db, dialect: Dialect, args: &DemoConfig) -> Result<bool, DemoError> {
    let tables = ["likes", "comments", "posts", "users"];
    let exists = with_qc!(db, qc => sqlx::query("SELECT COUNT(*) FROM posts").fetch_one(qc.pool()).await.is_ok());
    if exists && !args.reseed {
        return Ok(false);
    }
    let id = if dialect == Dialect::Postgres {
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    } else {
        "INTEGER PRIMARY KEY"
    };
    let mut ddl: Vec<String> = tables
        .iter()
        .map(|t| format!("DROP TABLE IF EXISTS {t}"))
        .collect();
    ddl.extend([
        format!("CREATE TABLE users (id {id}, name TEXT NOT NULL)"),
        format!("CREATE TABLE posts (id {id}, author_id BIGINT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL)"),
        format!("CREATE TABLE comments (id {id}, post_id BIGINT NOT NULL, author_id BIGINT NOT NULL, body TEXT NOT NULL)"),
        format!("CREATE TABLE likes (id {id}, post_id BIGINT NOT NULL, user_id BIGINT NOT NULL)"),
        "CREATE INDEX posts_author ON posts (author_id)".to_owned(),
        "CREATE INDEX comments_post ON comments (post_id)".to_owned(),
        "CREATE INDEX comments_author ON comments (author_id)".to_owned(),
        "CREATE INDEX likes_post ON likes (post_id)".to_owned(),
    ]);
    for s in &ddl {
        with_qc!(db, qc => sqlx::query(s).execute(qc.pool()).await.map(|_| ()))
            .map_err(failed(s.clone()))?;
    }
    let (u, p, c, l) = (
        args.users.max(1),
        args.posts.max(1),
        args.comments,
        args.likes,
    );
    let total = u + p + c + l;
    const SEEDING: &str = "seeding users, posts, comments, likes";
    let mut done = 0;
    args.report(SEEDING, done, total);
    let range = |a: u64, b: u64, select: &str, table: &str| {
        match dialect {
        Dialect::Postgres => format!(
            "INSERT INTO {table} {select} FROM generate_series({a}::bigint, {b}::bigint) AS s(i)"
        ),
        _ => format!(
            "WITH RECURSIVE s(i) AS (SELECT {a} UNION ALL SELECT i + 1 FROM s WHERE i < {b}) INSERT INTO {table} {select} FROM s"
        ),
    }
    };
    let steps: [(&str, u64, String); 4] = [
        ("users", u, "SELECT i, 'user' || i".to_owned()),
        (
            "posts",
            p,
            format!(
                "SELECT i, 1 + (i * 7) % {u}, 'Post ' || i || ': ' || CASE i % 4 WHEN 0 THEN 'caching at scale' \
                 WHEN 1 THEN 'the thundering herd' WHEN 2 THEN 'denormalize it' ELSE 'cache invalidation' END, \
                 'What you want is probably not caching but denormalized data. (post ' || i || ')'"
            ),
        ),
        (
            "comments",
            c,
            format!("SELECT i, 1 + (i * 7919) % {p}, 1 + (i * 31) % {u}, 'Comment ' || i"),
        ),
        ("likes", l, format!("SELECT i, 1 + (i * i) % {p}, 1 + i % {u}")),
    ];
    for (table, n, select) in steps {
        let chunk = 20_000;
        let mut a = 1;
        while a <= n {
            let b = (a + chunk - 1).min(n);
            let sql = range(a, b, &select, table);
            with_qc!(db, qc => sqlx::query(&sql).execute(qc.pool()).await.map(|_| ()))
                .map_err(failed(format!("seeding {table}")))?;
            done += b - a + 1;
            args.report(SEEDING, done.min(total - 1), total);
            a = b + 1;
        }
    }
    if dialect == Dialect::Postgres {
        for t in tables {
            let s = format!(
                "SELECT setval(pg_get_serial_sequence('{t}', 'id'), GREATEST(1, (SELECT COALESCE(MAX(id), 0) FROM {t})))"
            );
            with_qc!(db, qc => sqlx::query(&s).execute(qc.pool()).await.map(|_| ()))
                .map_err(failed(format!("setting the id sequence of {t}")))?;
        }
    }
    with_qc!(db, qc => qc.generations().bump(&tables).await)
        .map_err(failed("invalidating the cached queries"))?;
    args.report(SEEDING, total, total);
    tracing::info!(
        users = u,
        posts = p,
        comments = c,
        likes = l,
        "demo: seeded"
    );
    Ok(true)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, body: &str, max_age: u32, tags: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{t} · larder demo</title>\
         <style>body{{font:15px/1.5 system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em}}\
         a{{color:#1f5fa8}} .meta{{color:#777}} form{{margin:.6em 0}} li{{margin:.2em 0}}</style></head>\
         <body><p><a href=\"/\">larder demo</a> · <a href=\"/_larder\">dashboard</a></p><h1>{t}</h1>{body}\
         <p class=meta>rendered at {now} (a cached page keeps its time; see the x-larder-cache header)</p></body></html>",
        t = esc(title),
        now = chrono_like_now(),
    );
    let mut r = Html(html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!(
            "public, max-age={max_age}, stale-while-revalidate=30"
        ))
        .expect("ascii"),
    );
    if let Ok(v) = HeaderValue::from_str(tags) {
        h.insert("cache-tag", v);
    }
    r
}

fn chrono_like_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

fn oops(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "demo request failed");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("error: {e}\n")).into_response()
}

impl App {
    fn sql(&self, s: &str) -> String {
        self.dialect.adapt(s)
    }

    async fn rows<T>(&self, sql: &str, params: &[Param]) -> Result<Vec<T>, QueryError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + serde::Serialize
            + serde::de::DeserializeOwned
            + Send
            + Unpin
            + 'static,
    {
        let sql = self.sql(sql);
        with_qc!(&self.db, qc => qc.fetch_all::<T>(&sql, params).await)
    }

    async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64, QueryError> {
        let sql = self.sql(sql);
        with_qc!(&self.db, qc => qc.execute(&sql, params).await)
    }

    async fn purge(&self, tags: &[String]) {
        for t in tags {
            if let Err(e) = self.http.purge_tag(t).await {
                tracing::warn!(error = %e, tag = t, "demo: purge failed");
            }
        }
    }
}

type Trending = Vec<(i64, String, i64)>;

async fn front(State(app): State<App>) -> Response {
    let latest: Vec<(i64, String, String)> = match app
        .rows(
            "SELECT p.id, p.title, u.name FROM posts p JOIN users u ON u.id = p.author_id ORDER BY p.id DESC LIMIT 15",
            &[],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return oops(e),
    };
    // The expensive aggregate: one computation per expiry across
    // processes, served stale while it refreshes.
    let db = app.db.clone();
    let started = Instant::now();
    let opts = ComputeOptions::new(Ttl::secs(15)).stale_while_revalidate(Duration::from_secs(60));
    // The loader returns sqlx's own error; a failure reaches every waiter.
    let trending: Result<Trending, larder::ComputeError<sqlx::Error>> = app
        .trending
        .get_or_compute_with("trending", &opts, move || async move {
            let sql = "SELECT p.id, p.title, COUNT(l.id) AS n FROM likes l JOIN posts p ON p.id = l.post_id \
                       GROUP BY p.id, p.title ORDER BY n DESC, p.id LIMIT 8";
            with_qc!(&db, qc => sqlx::query_as::<_, (i64, String, i64)>(sql).fetch_all(qc.pool()).await)
        })
        .await;
    let trending = match trending {
        Ok(t) => t,
        Err(e) => return oops(e),
    };
    let took = started.elapsed();
    let mut body = String::from("<h2>Trending</h2><ol>");
    for (id, title, n) in &trending {
        body += &format!(
            "<li><a href=\"/posts/{id}\">{}</a> <span class=meta>{n} likes</span></li>",
            esc(title)
        );
    }
    body += &format!(
        "</ol><p class=meta>trending: get_or_compute with stale-while-revalidate through a near cache ({:.1} ms)</p>",
        took.as_secs_f64() * 1000.0
    );
    body += "<h2>Latest posts</h2><ul>";
    for (id, title, author) in &latest {
        body += &format!(
            "<li><a href=\"/posts/{id}\">{}</a> <span class=meta>by {}</span></li>",
            esc(title),
            esc(author)
        );
    }
    body += "</ul><h2>Write a post</h2><form method=post action=/posts>\
             <input name=author_id value=1 size=4 title='user id'> \
             <input name=title placeholder=title required> \
             <input name=body placeholder=text required> <button>Post</button></form>";
    page("Forum", &body, 10, "front")
}

#[derive(Deserialize, serde::Serialize)]
struct PostDoc {
    id: i64,
    title: String,
    body: String,
    author_id: i64,
    author: String,
    comments: i64,
    likes: i64,
}

#[derive(Deserialize, serde::Serialize)]
struct UserDoc {
    id: i64,
    name: String,
    posts: i64,
    comments: i64,
}

async fn post_page(State(app): State<App>, Path(id): Path<i64>) -> Response {
    let doc: Option<PostDoc> = match app.views.get("post_page", id).await {
        Ok(d) => d,
        Err(e) => return oops(e),
    };
    let Some(doc) = doc else {
        return (StatusCode::NOT_FOUND, "no such post\n").into_response();
    };
    let comments: Vec<(i64, String, String)> = match app
        .rows(
            "SELECT c.id, u.name, c.body FROM comments c JOIN users u ON u.id = c.author_id \
             WHERE c.post_id = $1 ORDER BY c.id DESC LIMIT 20",
            &[Param::Int(id)],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return oops(e),
    };
    let mut body = format!(
        "<p class=meta>by <a href=\"/users/{}\">{}</a> · {} comments · {} likes \
         <span>(counts from the post_page view)</span></p><p>{}</p>\
         <form method=post action=/posts/{id}/like><input type=hidden name=user_id value=1><button>Like</button></form>\
         <h2>Comments</h2><form method=post action=/posts/{id}/comments>\
         <input name=author_id value=1 size=4 title='user id'> <input name=body placeholder=comment required> \
         <button>Comment</button></form><ul>",
        doc.author_id,
        esc(&doc.author),
        doc.comments,
        doc.likes,
        esc(&doc.body)
    );
    for (_, who, text) in &comments {
        body += &format!("<li><b>{}</b>: {}</li>", esc(who), esc(text));
    }
    body += "</ul>";
    page(
        &doc.title,
        &body,
        60,
        &format!("post-{id} user-{}", doc.author_id),
    )
}

async fn user_page(State(app): State<App>, Path(id): Path<i64>) -> Response {
    let doc: Option<UserDoc> = match app.views.get("user_card", id).await {
        Ok(d) => d,
        Err(e) => return oops(e),
    };
    let Some(doc) = doc else {
        return (StatusCode::NOT_FOUND, "no such user\n").into_response();
    };
    let posts: Vec<(i64, String)> = match app
        .rows(
            "SELECT id, title FROM posts WHERE author_id = $1 ORDER BY id DESC LIMIT 20",
            &[Param::Int(id)],
        )
        .await
    {
        Ok(r) => r,
        Err(e) => return oops(e),
    };
    let mut body = format!(
        "<p class=meta>{} posts · {} comments (from the user_card view)</p>\
         <form method=post action=/users/{id}/rename><input name=name value=\"{}\" required> \
         <button>Rename</button> <span class=meta>(reaches every post page of theirs)</span></form><ul>",
        doc.posts,
        doc.comments,
        esc(&doc.name)
    );
    for (pid, title) in &posts {
        body += &format!("<li><a href=\"/posts/{pid}\">{}</a></li>", esc(title));
    }
    body += "</ul>";
    page(&doc.name, &body, 60, &format!("user-{id}"))
}

#[derive(Deserialize)]
struct NewPost {
    author_id: i64,
    title: String,
    body: String,
}

fn too_long(s: &str) -> bool {
    s.is_empty() || s.len() > 2000
}

async fn new_post(State(app): State<App>, Form(f): Form<NewPost>) -> Response {
    if too_long(&f.title) || too_long(&f.body) {
        return (StatusCode::BAD_REQUEST, "title and body: 1 to 2000 bytes\n").into_response();
    }
    let sql =
        app.sql("INSERT INTO posts (author_id, title, body) VALUES ($1, $2, $3) RETURNING id");
    let id: Result<i64, sqlx::Error> = with_qc!(&app.db, qc => sqlx::query_scalar(&sql)
        .bind(f.author_id).bind(f.title.clone()).bind(f.body.clone())
        .fetch_one(qc.pool()).await);
    let id = match id {
        Ok(id) => id,
        Err(e) => return oops(e),
    };
    if let Err(e) = with_qc!(&app.db, qc => qc.generations().bump(&["posts"]).await) {
        return oops(e);
    }
    app.purge(&["front".to_owned(), format!("user-{}", f.author_id)])
        .await;
    Redirect::to(&format!("/posts/{id}")).into_response()
}

#[derive(Deserialize)]
struct NewComment {
    author_id: i64,
    body: String,
}

async fn new_comment(
    State(app): State<App>,
    Path(id): Path<i64>,
    Form(f): Form<NewComment>,
) -> Response {
    if too_long(&f.body) {
        return (StatusCode::BAD_REQUEST, "comment: 1 to 2000 bytes\n").into_response();
    }
    if let Err(e) = app
        .execute(
            "INSERT INTO comments (post_id, author_id, body) VALUES ($1, $2, $3)",
            &[Param::Int(id), Param::Int(f.author_id), Param::Text(f.body)],
        )
        .await
    {
        return oops(e);
    }
    // The comment list (query cache) is fresh at once; the counts follow
    // when the worker rewrites the view, which purges the page again.
    app.purge(&[format!("post-{id}")]).await;
    Redirect::to(&format!("/posts/{id}")).into_response()
}

#[derive(Deserialize)]
struct Like {
    user_id: i64,
}

async fn like(State(app): State<App>, Path(id): Path<i64>, Form(f): Form<Like>) -> Response {
    if let Err(e) = app
        .execute(
            "INSERT INTO likes (post_id, user_id) VALUES ($1, $2)",
            &[Param::Int(id), Param::Int(f.user_id)],
        )
        .await
    {
        return oops(e);
    }
    Redirect::to(&format!("/posts/{id}")).into_response()
}

#[derive(Deserialize)]
struct Rename {
    name: String,
}

async fn rename(State(app): State<App>, Path(id): Path<i64>, Form(f): Form<Rename>) -> Response {
    if f.name.is_empty() || f.name.len() > 100 {
        return (StatusCode::BAD_REQUEST, "name: 1 to 100 bytes\n").into_response();
    }
    if let Err(e) = app
        .execute(
            "UPDATE users SET name = $1 WHERE id = $2",
            &[Param::Text(f.name), Param::Int(id)],
        )
        .await
    {
        return oops(e);
    }
    app.purge(&["front".to_owned()]).await;
    Redirect::to(&format!("/users/{id}")).into_response()
}

/// Requests the demo sends itself, so the dashboard shows a live site.
async fn self_traffic(addr: SocketAddr, per_second: u32, posts: u64, users: u64) {
    use http_body_util::{BodyExt, Full};
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
    loop {
        tick.tick().await;
        // A skewed popularity: a few posts get most views.
        let post = 1 + (fastrand::f64().powi(3) * posts as f64) as u64;
        let (method, path, body) = match fastrand::u8(0..100) {
            0..=29 => ("GET", "/".to_owned(), String::new()),
            30..=79 => ("GET", format!("/posts/{post}"), String::new()),
            80..=94 => (
                "GET",
                format!("/users/{}", 1 + fastrand::u64(0..users)),
                String::new(),
            ),
            95..=97 => (
                "POST",
                format!("/posts/{post}/like"),
                format!("user_id={}", 1 + fastrand::u64(0..users)),
            ),
            _ => (
                "POST",
                format!("/posts/{post}/comments"),
                "author_id=1&body=auto+comment".to_owned(),
            ),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(bytes::Bytes::from(body)))
            .expect("valid request");
        let client = client.clone();
        tokio::spawn(async move {
            if let Ok(r) = client.request(req).await {
                let _ = r.into_body().collect().await;
            }
        });
    }
}
