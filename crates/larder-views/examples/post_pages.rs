//! Denormalized views end to end on embedded defaults (an SQLite file and a
//! redb store; no server): a post page declared in SQL, a user card
//! declared in Rust, triggers capturing raw SQL writes, a worker keeping
//! both up to date, and the operations.
//!
//! ```text
//! cargo run -p larder-views --example post_pages
//! ```

use std::sync::Arc;
use std::time::Duration;

use larder_views::{BoxError, Dependency, RedbStore, Source, SqlView, View, Views, WorkerConfig};
use serde::{Deserialize, Serialize};
use sqlx::Row;

#[derive(Debug, Serialize, Deserialize)]
struct UserCard {
    id: i64,
    name: String,
    posts: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("forum.db").display()
    );
    let source = Source::connect(&url, 4).await?;
    let pool = source.pool().clone();
    sqlx::raw_sql(
        "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE posts (id BIGINT PRIMARY KEY, author_id BIGINT NOT NULL, title TEXT NOT NULL);
         CREATE TABLE comments (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL, body TEXT NOT NULL);",
    )
    .execute(&pool)
    .await?;

    // A view declared in SQL: the row's columns are the document.
    let post_page = SqlView::new(
        "SELECT p.id, p.title, u.name AS author, \
         (SELECT COUNT(*) FROM comments c WHERE c.post_id = p.id) AS comments \
         FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1",
        "SELECT id FROM posts",
    )
    .depends_on("posts", "id")
    .depends_on("comments", "post_id")
    .depends_via("users", "id", "SELECT id FROM posts WHERE author_id = $1")
    .named("post_page");

    // A view declared in Rust, with a typed document.
    let card_pool = pool.clone();
    let keys_pool = pool.clone();
    let user_card = View::<i64, UserCard>::new("user_card", move |id| {
        let pool = card_pool.clone();
        async move {
            let row = sqlx::query(
                "SELECT u.name, (SELECT COUNT(*) FROM posts p WHERE p.author_id = u.id) FROM users u WHERE u.id = ?",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await?;
            Ok::<_, BoxError>(row.map(|r| UserCard { id, name: r.get(0), posts: r.get(1) }))
        }
    })
    .keys(move || {
        let pool = keys_pool.clone();
        async move {
            let rows = sqlx::query("SELECT id FROM users").fetch_all(&pool).await?;
            Ok::<_, BoxError>(rows.iter().map(|r| r.get::<i64, _>(0)).collect())
        }
    })
    .depends_on(Dependency::column("users", "id"))
    .depends_on(Dependency::column("posts", "author_id"));

    let store = Arc::new(RedbStore::open(dir.path().join("views.redb"))?);
    let views = Views::builder(source, store)
        .view(post_page)
        .view(user_card)
        .build()?;
    views.install().await?;
    println!("installed: outbox tables and triggers on posts, comments, users");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        views
            .worker(WorkerConfig::default().poll_interval(Duration::from_millis(20)))
            .run(async move {
                let _ = stopped.await;
            }),
    );

    // Plain SQL writes: the triggers capture them.
    sqlx::raw_sql(
        "INSERT INTO users VALUES (1, 'ann'), (2, 'bob');
         INSERT INTO posts VALUES (10, 1, 'Caching and Django'), (11, 1, 'Denormalize it');
         INSERT INTO comments VALUES (100, 10, 'great talk'), (101, 10, 'slides?');",
    )
    .execute(&pool)
    .await?;
    settle(&views).await?;
    let page: Option<serde_json::Value> = views.get("post_page", 10).await?;
    println!("post_page 10 -> {}", page.unwrap_or_default());
    let card: Option<UserCard> = views.get("user_card", 1).await?;
    println!("user_card 1  -> {card:?}");

    // Renaming a user reaches every post of theirs.
    sqlx::query("UPDATE users SET name = 'anne' WHERE id = 1")
        .execute(&pool)
        .await?;
    settle(&views).await?;
    for id in [10, 11] {
        let page: Option<serde_json::Value> = views.get("post_page", id).await?;
        println!(
            "after rename, post_page {id} -> author {}",
            page.unwrap_or_default()["author"]
        );
    }

    let status = views.status().await?;
    println!(
        "status: backlog {}, dead letters {}, documents {:?}",
        status.backlog, status.dead_letters, status.documents
    );
    for name in views.names() {
        let r = views.verify(&name, None, None).await?;
        println!(
            "verify {name}: {} checked, {} drifted",
            r.checked, r.drifted
        );
    }
    let _ = stop.send(());
    worker.await?;
    Ok(())
}

/// Waits until the worker has taken everything pending.
async fn settle(views: &Views) -> Result<(), larder_views::Error> {
    for _ in 0..500 {
        if views.status().await?.backlog == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(larder_views::Error::Config(
        "the worker did not catch up in 5 s".into(),
    ))
}
