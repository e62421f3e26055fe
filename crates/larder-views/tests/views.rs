//! Views end to end on SQLite, PostgreSQL and MariaDB: triggers capture raw
//! SQL, the two-table dependency (a user's rename reaches every post of
//! theirs), the app-side outbox in a transaction, read-through, retries and
//! dead letters, status, online rebuild, verify and repair.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use larder_views::{Dependency, DriftKind, Put, Source, View, Views, WorkerConfig};
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize, PartialEq)]
struct PostPage {
    id: i64,
    title: String,
    author: String,
    comments: i64,
}

async fn page(views: &Views, id: i64) -> Option<PostPage> {
    views.get("post_page", id).await.unwrap()
}

async fn two_table_dependency(db: Db) {
    let t = fresh_db(db).await;
    let views = views_on(&t.url, redb(&t)).await;
    create_forum(views.source()).await;
    views.install().await.unwrap();
    // Installing again is harmless (and replaces the triggers).
    views.install().await.unwrap();
    exec(
        &views,
        "INSERT INTO users (id, name) VALUES (1, 'ann'), (2, 'bob')",
    )
    .await;
    exec(
        &views,
        "INSERT INTO posts (id, author_id, title) VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 2, 'c')",
    )
    .await;
    exec(&views, "INSERT INTO comments (id, post_id, body) VALUES (100, 10, 'x'), (101, 10, 'y'), (102, 12, 'z')").await;
    assert_eq!(page(&views, 10).await, None, "nothing before a worker ran");
    let w = views.worker(fast_worker());
    w.run_until_idle().await.unwrap();
    assert_eq!(
        page(&views, 10).await,
        Some(PostPage {
            id: 10,
            title: "a".into(),
            author: "ann".into(),
            comments: 2
        })
    );
    assert_eq!(page(&views, 12).await.unwrap().comments, 1);

    // Renaming a user reaches every post of theirs, through the lookup.
    exec(&views, "UPDATE users SET name = 'anne' WHERE id = 1").await;
    w.run_until_idle().await.unwrap();
    assert_eq!(page(&views, 10).await.unwrap().author, "anne");
    assert_eq!(page(&views, 11).await.unwrap().author, "anne");
    assert_eq!(page(&views, 12).await.unwrap().author, "bob");

    // A comment moving between posts updates both; a delete counts down.
    exec(&views, "UPDATE comments SET post_id = 11 WHERE id = 101").await;
    exec(&views, "DELETE FROM comments WHERE id = 102").await;
    w.run_until_idle().await.unwrap();
    assert_eq!(page(&views, 10).await.unwrap().comments, 1);
    assert_eq!(page(&views, 11).await.unwrap().comments, 1);
    assert_eq!(page(&views, 12).await.unwrap().comments, 0);

    // A post reassigned to another author, then that author renamed.
    exec(&views, "UPDATE posts SET author_id = 2 WHERE id = 11").await;
    exec(&views, "UPDATE users SET name = 'bobby' WHERE id = 2").await;
    w.run_until_idle().await.unwrap();
    assert_eq!(page(&views, 11).await.unwrap().author, "bobby");

    // Deleting a post leaves no document (a versioned tombstone).
    exec(&views, "DELETE FROM posts WHERE id = 12").await;
    w.run_until_idle().await.unwrap();
    assert_eq!(page(&views, 12).await, None);
    let tomb = views
        .get_versioned("post_page", "12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tomb.doc, None);

    let status = views.status().await.unwrap();
    assert_eq!(status.backlog, 0);
    assert_eq!(status.documents["post_page"], 2);
    assert_no_drift(&views).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_table_dependency_sqlite() {
    two_table_dependency(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_table_dependency_postgres() {
    two_table_dependency(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_table_dependency_mysql() {
    two_table_dependency(Db::MySql).await;
}

/// A Rust view whose changes are recorded by the application in its own
/// transaction: a rollback records nothing.
async fn app_outbox_in_transaction(db: Db) {
    let t = fresh_db(db).await;
    let source = Source::connect(&t.url, 4).await.unwrap();
    let pool = source.pool().clone();
    let counter = View::<String, serde_json::Value>::new("counter", move |name: String| {
        let pool = pool.clone();
        async move {
            use sqlx::Row;
            let row = sqlx::query(match db {
                Db::Postgres => "SELECT n FROM counters WHERE name = $1",
                _ => "SELECT n FROM counters WHERE name = ?",
            })
            .bind(name.clone())
            .fetch_optional(&pool)
            .await?;
            Ok(row.map(|r| json!({ "name": name, "n": r.get::<i64, _>(0) })))
        }
    });
    let views = Views::builder(source, redb(&t))
        .view(counter)
        .build()
        .unwrap();
    views.install().await.unwrap();
    let text = if db == Db::MySql {
        "VARCHAR(100)"
    } else {
        "TEXT"
    };
    exec(
        &views,
        &format!("CREATE TABLE counters (name {text} PRIMARY KEY, n BIGINT NOT NULL)"),
    )
    .await;

    let upd = views
        .source()
        .dialect()
        .adapt("INSERT INTO counters (name, n) VALUES ($1, $2)");
    // Committed: recorded.
    let mut tx = views.source().pool().begin().await.unwrap();
    sqlx::query(&upd)
        .bind("likes")
        .bind(5i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    views
        .record(&mut tx, "counter", &["likes".to_owned()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Rolled back: neither the write nor its outbox entry.
    let mut tx = views.source().pool().begin().await.unwrap();
    sqlx::query(&upd)
        .bind("views")
        .bind(9i64)
        .execute(&mut *tx)
        .await
        .unwrap();
    views
        .record(&mut tx, "counter", &["views".to_owned()])
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(views.status().await.unwrap().backlog, 1);
    let r = views.worker(fast_worker()).run_once().await.unwrap();
    assert_eq!((r.entries, r.acked, r.stored), (1, 1, 1));
    assert_eq!(
        views
            .get::<serde_json::Value>("counter", "likes")
            .await
            .unwrap(),
        Some(json!({"name": "likes", "n": 5}))
    );
    assert_eq!(
        views
            .get::<serde_json::Value>("counter", "views")
            .await
            .unwrap(),
        None
    );
    // Unknown views and bad keys are clear errors, and record nothing.
    let mut conn = views.source().pool().acquire().await.unwrap();
    assert!(matches!(
        views.record(&mut conn, "nope", &["k".into()]).await,
        Err(larder_views::Error::UnknownView(_))
    ));
    assert!(matches!(
        views.record(&mut conn, "counter", &["x".repeat(300)]).await,
        Err(larder_views::Error::InvalidKey { .. })
    ));
    assert!(matches!(
        views.get::<serde_json::Value>("counter", "").await,
        Err(larder_views::Error::InvalidKey { .. })
    ));
    assert_eq!(views.status().await.unwrap().backlog, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_outbox_in_transaction_sqlite() {
    app_outbox_in_transaction(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_outbox_in_transaction_postgres() {
    app_outbox_in_transaction(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_outbox_in_transaction_mysql() {
    app_outbox_in_transaction(Db::MySql).await;
}

/// A compute that fails is retried with backoff, then dead-lettered; a
/// requeue after the fault is fixed brings the view up to date. Reads with
/// read-through compute, store and return a missing document.
async fn retries_dead_letters_and_read_through(db: Db) {
    let t = fresh_db(db).await;
    let source = Source::connect(&t.url, 4).await.unwrap();
    let failing = Arc::new(AtomicU32::new(u32::MAX));
    let calls = Arc::new(AtomicU32::new(0));
    let (f, c) = (failing.clone(), calls.clone());
    let flaky = View::<i64, serde_json::Value>::new("flaky", move |k: i64| {
        let (f, c) = (f.clone(), c.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            if f.load(Ordering::SeqCst) > 0 {
                f.fetch_sub(1, Ordering::SeqCst);
                return Err("origin unavailable".into());
            }
            Ok(Some(json!({ "k": k })))
        }
    })
    .read_through(true)
    .depends_on(Dependency::column("things", "id"));
    let views = Views::builder(source, redb(&t))
        .view(flaky)
        .build()
        .unwrap();
    exec(&views, "CREATE TABLE things (id BIGINT PRIMARY KEY)").await;
    views.install().await.unwrap();
    exec(&views, "INSERT INTO things (id) VALUES (1)").await;

    let w = views.worker(fast_worker().max_attempts(3));
    let mut retried = 0;
    let mut dead = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while dead == 0 {
        assert!(std::time::Instant::now() < deadline, "never dead-lettered");
        let r = w.run_once().await.unwrap();
        retried += r.retried;
        dead += r.dead;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!((retried, dead), (2, 1), "two retries, then the dead letter");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let s = views.status().await.unwrap();
    assert_eq!((s.backlog, s.dead_letters), (0, 1));

    failing.store(0, Ordering::SeqCst);
    assert_eq!(views.requeue_dead_letters().await.unwrap(), 1);
    w.run_until_idle().await.unwrap();
    assert_eq!(
        views
            .get_versioned("flaky", "1")
            .await
            .unwrap()
            .unwrap()
            .doc
            .as_deref(),
        Some(&br#"{"k":1}"#[..])
    );
    let s = views.status().await.unwrap();
    assert_eq!((s.backlog, s.dead_letters), (0, 0));

    // Read-through: key 7 was never written; the read computes and stores.
    let before = calls.load(Ordering::SeqCst);
    assert_eq!(
        views.get::<serde_json::Value>("flaky", 7).await.unwrap(),
        Some(json!({"k": 7}))
    );
    assert_eq!(
        views.get::<serde_json::Value>("flaky", 7).await.unwrap(),
        Some(json!({"k": 7}))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 1,
        "stored, not recomputed"
    );
    // A failing read-through is the compute's error, not a silent None.
    failing.store(1, Ordering::SeqCst);
    assert!(matches!(
        views.get::<serde_json::Value>("flaky", 8).await,
        Err(larder_views::Error::Compute { .. })
    ));
    // A document that does not decode as the asked type is a Decode error.
    assert!(matches!(
        views.get::<Vec<String>>("flaky", 7).await,
        Err(larder_views::Error::Decode { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_read_through_sqlite() {
    retries_dead_letters_and_read_through(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_read_through_postgres() {
    retries_dead_letters_and_read_through(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_read_through_mysql() {
    retries_dead_letters_and_read_through(Db::MySql).await;
}

/// Rebuild while writers go on, then verify finds no drift; drift injected
/// behind the views' back is found by verify and fixed by repair.
async fn rebuild_verify_repair(db: Db) {
    let t = fresh_db(db).await;
    let views = views_on(&t.url, redb(&t)).await;
    create_forum(views.source()).await;
    // Data first, triggers after: the views start empty and need a rebuild.
    exec(&views, "INSERT INTO users (id, name) VALUES (1, 'ann')").await;
    for p in 0..300 {
        exec(
            &views,
            &format!("INSERT INTO posts (id, author_id, title) VALUES ({p}, 1, 't{p}')"),
        )
        .await;
    }
    views.install().await.unwrap();
    let r = views.verify("post_page", None, None).await.unwrap();
    assert_eq!(r.drifted, 300);
    assert!(r.drift.iter().all(|d| d.kind == DriftKind::Missing));

    // Online rebuild, with a writer adding comments meanwhile.
    let writer = {
        let views = views.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                exec(
                    &views,
                    &format!(
                        "INSERT INTO comments (id, post_id, body) VALUES ({i}, {}, 'c')",
                        i * 3
                    ),
                )
                .await;
            }
        })
    };
    let seen = Arc::new(AtomicU32::new(0));
    let s2 = seen.clone();
    let progress = move |done: u64, total: u64| {
        assert!(done <= total);
        s2.store(done as u32, Ordering::SeqCst);
    };
    let rb = views.rebuild("post_page", Some(&progress)).await.unwrap();
    assert_eq!(rb.keys, 300);
    assert_eq!(seen.load(Ordering::SeqCst), 300);
    writer.await.unwrap();
    assert_no_drift(&views).await;

    // Drift behind the views' back: a doc changed, one removed, one extra.
    let store = views.store();
    store
        .put_many(
            "post_page",
            vec![
                Put {
                    key: "5".into(),
                    version: u64::MAX - 1,
                    doc: Some(br#"{"id":5,"title":"wrong","author":"x","comments":0}"#.to_vec()),
                },
                Put {
                    key: "6".into(),
                    version: u64::MAX - 1,
                    doc: None,
                },
                Put {
                    key: "9999".into(),
                    version: 1,
                    doc: Some(b"{}".to_vec()),
                },
            ],
        )
        .await
        .unwrap();
    let r = views.verify("post_page", None, None).await.unwrap();
    assert_eq!(r.drifted, 3, "{:?}", r.drift);
    let kinds: Vec<_> = r.drift.iter().map(|d| (d.key.as_str(), d.kind)).collect();
    assert!(kinds.contains(&("5", DriftKind::Different)));
    assert!(kinds.contains(&("6", DriftKind::Missing)));
    assert!(kinds.contains(&("9999", DriftKind::Extra)));
    // A sample checks only that many keys.
    assert_eq!(
        views
            .verify("post_page", Some(10), None)
            .await
            .unwrap()
            .checked,
        10
    );
    // Repair fixes what it can out-version: 9999 (v1) now; 5 and 6 were
    // written at a version no ticket reaches, so they stay (and say so).
    let fixed = views.repair("post_page", None, None).await.unwrap();
    assert_eq!(fixed.drifted, 3);
    assert_eq!(fixed.repaired, 1);
    let r = views.verify("post_page", None, None).await.unwrap();
    assert_eq!(r.drifted, 2);
    assert!(matches!(
        views.rebuild("nope", None).await,
        Err(larder_views::Error::UnknownView(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_verify_repair_sqlite() {
    rebuild_verify_repair(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_verify_repair_postgres() {
    rebuild_verify_repair(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_verify_repair_mysql() {
    rebuild_verify_repair(Db::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_wakes_on_notify_and_stops_on_shutdown() {
    let t = fresh_db(Db::Postgres).await;
    let views = views_on(&t.url, redb(&t)).await;
    create_forum(views.source()).await;
    views.install().await.unwrap();
    // Poll only every 10 s: a fast update must come from NOTIFY.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker =
        views.worker(WorkerConfig::default().poll_interval(std::time::Duration::from_secs(10)));
    let handle = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    exec(&views, "INSERT INTO users (id, name) VALUES (1, 'ann')").await;
    exec(
        &views,
        "INSERT INTO posts (id, author_id, title) VALUES (1, 1, 't')",
    )
    .await;
    let start = std::time::Instant::now();
    while page(&views, 1).await.is_none() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "NOTIFY did not wake the worker"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), handle)
        .await
        .expect("the worker stops on shutdown")
        .unwrap();
}

/// A live worker whose compute outlasts the lease keeps its claims (they
/// are renewed); a second worker finds nothing to take meanwhile, and the
/// change is processed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_batch_keeps_its_claims() {
    let t = fresh_db(Db::Sqlite).await;
    let source = Source::connect(&t.url, 4).await.unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let slow = View::<i64, serde_json::Value>::new("slow", move |k: i64| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
            Ok(Some(json!({ "k": k })))
        }
    })
    .depends_on(Dependency::column("things", "id"));
    let views = Views::builder(source, redb(&t)).view(slow).build().unwrap();
    exec(&views, "CREATE TABLE things (id BIGINT PRIMARY KEY)").await;
    views.install().await.unwrap();
    exec(&views, "INSERT INTO things (id) VALUES (1)").await;

    let lease = std::time::Duration::from_millis(300);
    let first = views.worker(WorkerConfig::default().lease(lease));
    let busy = tokio::spawn(async move { first.run_once().await.unwrap() });
    // Well past the lease, while the first worker still computes.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let second = views.worker(WorkerConfig::default().lease(lease));
    let r = second.run_once().await.unwrap();
    assert_eq!(r.entries, 0, "a live worker's claims were taken");
    let r = busy.await.unwrap();
    assert_eq!((r.entries, r.acked), (1, 1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(views.status().await.unwrap().backlog, 0);
}
