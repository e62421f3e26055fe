//! Benchmark of denormalized views on PostgreSQL (issue 7): rebuild time,
//! view reads against the equivalent JOIN + COUNT query, write-to-visible
//! lag under a steady write rate, and worker throughput with and without
//! coalescing. Prints one JSON object.
//!
//! ```text
//! cargo run --release -p larder-views --example views_bench -- \
//!     [--database postgres://postgres@127.0.0.1:5432/test] [--store redb|redis|sql] \
//!     [--posts 100000] [--rate 1000] [--seconds 10] [--reads 20000]
//! ```
//!
//! It creates (and drops) a database of its own next to `--database`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_views::{
    DocStore, RedbStore, RedisStore, Source, SqlStore, SqlView, Views, WorkerConfig,
};

const POST_PAGE: &str = "SELECT p.id, p.title, u.name AS author, \
    (SELECT COUNT(*) FROM comments c WHERE c.post_id = p.id) AS comments \
    FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1";

/// The same page as one JOIN + GROUP BY, the way an application would
/// query it without a view.
const JOIN_QUERY: &str = "SELECT p.id, p.title, u.name, COUNT(c.id) FROM posts p \
    JOIN users u ON u.id = p.author_id LEFT JOIN comments c ON c.post_id = p.id \
    WHERE p.id = $1 GROUP BY p.id, p.title, u.name";

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(|a, b| a.total_cmp(b));
    serde_json::json!({
        "n": v.len(),
        "p50": pct(&v, 0.5),
        "p90": pct(&v, 0.9),
        "p99": pct(&v, 0.99),
        "max": v.last().copied().unwrap_or(f64::NAN),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let admin_url = arg("--database", "postgres://postgres@127.0.0.1:5432/test");
    let store_kind = arg("--store", "redb");
    let posts: i64 = arg("--posts", "100000").parse()?;
    let rate: u64 = arg("--rate", "1000").parse()?;
    let seconds: u64 = arg("--seconds", "10").parse()?;
    let reads: usize = arg("--reads", "20000").parse()?;

    let name = format!("lvbench_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin_url);
    let url = format!("{base}/{name}");
    let result = run(&url, &store_kind, posts, rate, seconds, reads).await;
    admin.close().await;
    let admin = sqlx::PgPool::connect(&admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}

async fn run(
    url: &str,
    store_kind: &str,
    posts: i64,
    rate: u64,
    seconds: u64,
    reads: usize,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await?;
    let users = 1000;
    let comments = posts * 5;
    eprintln!("seeding {posts} posts, {comments} comments, {users} users");
    sqlx::raw_sql(&format!(
        "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE posts (id BIGINT PRIMARY KEY, author_id BIGINT NOT NULL, title TEXT NOT NULL);
         CREATE TABLE comments (id BIGSERIAL PRIMARY KEY, post_id BIGINT NOT NULL, body TEXT NOT NULL);
         INSERT INTO users SELECT i, 'user' || i FROM generate_series(1, {users}) i;
         INSERT INTO posts SELECT i, 1 + i % {users}, 'post ' || i FROM generate_series(1, {posts}) i;
         INSERT INTO comments (post_id, body) SELECT 1 + i % {posts}, 'comment' FROM generate_series(1, {comments}) i;
         CREATE INDEX posts_author ON posts (author_id);
         CREATE INDEX comments_post ON comments (post_id);
         ANALYZE;"
    ))
    .execute(&pg)
    .await?;

    let dir = tempfile::tempdir()?;
    let source = Source::connect(url, 12).await?;
    let store: Arc<dyn DocStore> = match store_kind {
        "redis" => Arc::new(
            RedisStore::connect(
                "redis://127.0.0.1:6379/0",
                &format!("lvbench{}", std::process::id()),
            )
            .await?,
        ),
        "sql" => Arc::new(SqlStore::on(source.clone()).await?),
        _ => Arc::new(RedbStore::open(dir.path().join("views.redb"))?),
    };
    let views = Views::builder(source, store)
        .view(
            SqlView::new(POST_PAGE, "SELECT id FROM posts")
                .depends_on("posts", "id")
                .depends_on("comments", "post_id")
                .depends_via("users", "id", "SELECT id FROM posts WHERE author_id = $1")
                .named("post_page"),
        )
        .build()?;
    views.install().await?;

    // 1. Rebuild every document.
    eprintln!("rebuilding {posts} documents");
    let rb = views.rebuild("post_page", None).await?;
    let rebuild_s = rb.elapsed.as_secs_f64();

    // 2. Reads: the view against the JOIN query, same random keys.
    eprintln!("reading");
    let keys: Vec<i64> = (0..reads).map(|_| fastrand::i64(1..=posts)).collect();
    for &k in keys.iter().take(500) {
        let _: Option<serde_json::Value> = views.get("post_page", k).await?;
        let _ = sqlx::query(JOIN_QUERY).bind(k).fetch_optional(&pg).await?;
    }
    let mut view_us = Vec::with_capacity(reads);
    let mut join_us = Vec::with_capacity(reads);
    for &k in &keys {
        let t = Instant::now();
        let doc: Option<serde_json::Value> = views.get("post_page", k).await?;
        view_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(doc.is_some());
        let t = Instant::now();
        let row = sqlx::query(JOIN_QUERY).bind(k).fetch_optional(&pg).await?;
        join_us.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(row.is_some());
    }
    let view_reads = summary(view_us);
    let join_reads = summary(join_us);

    // 3. Lag under a steady write rate: writers insert comments (each its
    //    own transaction) while one worker, woken by NOTIFY, keeps up.
    eprintln!("lag at {rate} writes/s for {seconds} s");
    let lags = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let batches = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let (lags, batches) = (lags.clone(), batches.clone());
        let w = views.worker(WorkerConfig::default());
        tokio::spawn(w.run_with(
            async move {
                let _ = stop_rx.await;
            },
            move |r| {
                lags.lock()
                    .unwrap()
                    .extend(r.lag_ms.iter().map(|&l| l as f64));
                batches.lock().unwrap().push(r.entries);
            },
        ))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writers = 4u64;
    let per_writer = Duration::from_secs_f64(writers as f64 / rate as f64);
    let write_start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let pg = pg.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_writer);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            while write_start.elapsed() < Duration::from_secs(seconds) {
                tick.tick().await;
                let post = fastrand::i64(1..=posts);
                sqlx::query("INSERT INTO comments (post_id, body) VALUES ($1, 'new')")
                    .bind(post)
                    .execute(&pg)
                    .await
                    .expect("insert");
                n += 1;
            }
            n
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await?;
    }
    let write_secs = write_start.elapsed().as_secs_f64();
    // Let the worker finish what is pending.
    let drain = Instant::now();
    while views.status().await?.backlog > 0 && drain.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    worker.await?;
    let lag = summary(std::mem::take(&mut *lags.lock().unwrap()));
    let mut b = std::mem::take(&mut *batches.lock().unwrap());
    b.sort_unstable();
    let batch_p50 = b.get(b.len() / 2).copied().unwrap_or(0);

    // 4. Throughput from a backlog: 20k changes on 100 hot posts
    //    (coalescing) and on 20k distinct posts.
    let mut throughput = serde_json::Map::new();
    for (label, distinct) in [("hot_100_keys", 100i64), ("distinct_keys", 20_000i64)] {
        let n = 20_000i64;
        sqlx::query(&format!(
            "INSERT INTO comments (post_id, body) SELECT 1 + (i % {distinct}), 'bulk' FROM generate_series(1, {n}) i"
        ))
        .execute(&pg)
        .await?;
        let w = views.worker(WorkerConfig::default().batch_size(1000));
        let t = Instant::now();
        let mut docs = 0;
        let mut entries = 0;
        loop {
            let r = w.run_once().await?;
            if r.entries == 0 {
                break;
            }
            entries += r.entries;
            docs += r.keys;
        }
        let s = t.elapsed().as_secs_f64();
        throughput.insert(
            label.to_owned(),
            serde_json::json!({
                "changes": entries,
                "documents_computed": docs,
                "seconds": s,
                "changes_per_s": entries as f64 / s,
                "documents_per_s": docs as f64 / s,
            }),
        );
    }

    let drift = views.verify("post_page", Some(2000), None).await?;
    Ok(serde_json::json!({
        "store": store_kind,
        "posts": posts,
        "comments": comments,
        "rebuild": { "documents": rb.keys, "seconds": rebuild_s, "documents_per_s": rb.keys as f64 / rebuild_s },
        "reads_us": { "view": view_reads, "join_count_query": join_reads },
        "lag_ms": {
            "target_rate": rate,
            "achieved_rate": written as f64 / write_secs,
            "writes": written,
            "worker_batch_p50": batch_p50,
            "capture_to_stored": lag,
        },
        "throughput": throughput,
        "verify_sample_drift": drift.drifted,
    }))
}
