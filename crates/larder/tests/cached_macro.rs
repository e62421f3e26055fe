//! `#[larder::cached]`: one computation per key, keys from the template,
//! errors passed through and not cached, stale windows.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use larder::prelude::*;

static CACHE: LazyLock<Cache> = LazyLock::new(|| {
    Cache::builder(larder::mem::MemBackend::default())
        .key_prefix("macro")
        .build()
        .unwrap()
});

#[derive(Debug)]
struct NotFound(i64);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no user {}", self.0)
    }
}

/// `calls` is not in the key: it counts runs without varying the key.
#[larder::cached(cache = CACHE, key = "user:{id}", ttl = 60)]
async fn user_name(calls: &AtomicU32, id: i64) -> Result<String, NotFound> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    if id < 0 {
        return Err(NotFound(id));
    }
    Ok(format!("user {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_per_key_and_the_template_names_the_key() {
    let calls = AtomicU32::new(0);
    assert_eq!(user_name(&calls, 1).await.unwrap(), "user 1");
    assert_eq!(user_name(&calls, 1).await.unwrap(), "user 1");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second call was cached"
    );
    assert_eq!(user_name(&calls, 2).await.unwrap(), "user 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "another id is another key");
    assert_eq!(
        CACHE.get::<String>("user:1").await.unwrap().as_deref(),
        Some("user 1"),
        "stored under the template's key"
    );
    // Concurrent callers of a cold key share one run.
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let calls = calls.clone();
        tasks.push(tokio::spawn(
            async move { user_name(&calls, 3).await.unwrap() },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "user 3");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_functions_error_comes_back_and_is_not_cached() {
    let calls = AtomicU32::new(0);
    for n in 1..=2 {
        match user_name(&calls, -7).await {
            Err(ComputeError::Loader(e)) => assert_eq!(e.0, -7),
            other => panic!("{other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), n, "a failure is not cached");
    }
}

static SQUARES: AtomicU32 = AtomicU32::new(0);

/// No key template: the function's path and its arguments' Debug.
#[larder::cached(cache = &*CACHE, ttl = Duration::from_secs(60))]
async fn square(n: u64, label: &str) -> Result<u64, std::io::Error> {
    SQUARES.fetch_add(1, Ordering::SeqCst);
    let _ = label;
    Ok(n * n)
}

/// Stale-while-revalidate: owned arguments, refreshed in the background.
/// (Text, not an integer: integers are stored bare, without stale windows.)
#[larder::cached(cache = CACHE, key = "clock:{name}", ttl = 1, stale_while_revalidate = 30)]
async fn tick(calls: Arc<AtomicU32>, name: String) -> Result<String, std::io::Error> {
    Ok(format!(
        "{name} {}",
        calls.fetch_add(1, Ordering::SeqCst) + 1
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_keys_and_stale_windows() {
    assert_eq!(square(9, "a b").await.unwrap(), 81);
    assert_eq!(square(9, "a b").await.unwrap(), 81);
    assert_eq!(square(10, "a b").await.unwrap(), 100);
    assert_eq!(square(10, "a  b").await.unwrap(), 100);
    assert_eq!(
        SQUARES.load(Ordering::SeqCst),
        3,
        "every argument varies the default key"
    );
    assert!(CACHE
        .has_key("cached_macro::square:(9,%20\"a%20b\")")
        .await
        .unwrap());

    let calls = Arc::new(AtomicU32::new(0));
    assert_eq!(tick(calls.clone(), "a".into()).await.unwrap(), "a 1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale: served at once while one refresh runs in the background.
    assert_eq!(tick(calls.clone(), "a".into()).await.unwrap(), "a 1");
    for _ in 0..100 {
        if calls.load(Ordering::SeqCst) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(tick(calls.clone(), "a".into()).await.unwrap(), "a 2");
}
