//! The one PostgreSQL listener against the real server: it reports each
//! (re)connection, delivers payloads, comes back after its connection is
//! killed, and stops when the consumer says so.

use std::ops::ControlFlow;
use std::time::Duration;

use larder_changes::{listen_postgres, ListenEvent};

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ListenEvent>) -> ListenEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("the listener is running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_reports_it() {
    let channel = format!("larder_changes_test_{}", std::process::id());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listener = {
        let channel = channel.clone();
        tokio::spawn(async move {
            listen_postgres(URL, &channel, "test", |e| {
                let stop = e == ListenEvent::Notification("stop".into());
                let _ = tx.send(e);
                async move {
                    if stop {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                }
            })
            .await;
        })
    };
    assert_eq!(next(&mut rx).await, ListenEvent::Connected);
    let pool = sqlx::PgPool::connect(URL)
        .await
        .expect("PostgreSQL on 5432");
    sqlx::query("SELECT pg_notify($1, 'hello')")
        .bind(&channel)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        ListenEvent::Notification("hello".into())
    );
    // Kill the listener's connection: it must come back and say so.
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query ILIKE 'LISTEN%' AND query ILIKE '%' || $1 || '%'",
    )
    .bind(&channel)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one listening connection");
    assert_eq!(next(&mut rx).await, ListenEvent::Connected, "reconnected");
    sqlx::query("SELECT pg_notify($1, 'stop')")
        .bind(&channel)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        ListenEvent::Notification("stop".into())
    );
    tokio::time::timeout(Duration::from_secs(5), listener)
        .await
        .expect("stops when told")
        .unwrap();
}
