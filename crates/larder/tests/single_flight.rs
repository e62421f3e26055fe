//! get_or_compute merges concurrent computations of one key in a process.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder::prelude::*;

async fn cache() -> Cache {
    Cache::from_url("mem://?key_prefix=sf").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_callers_one_loader_run() {
    let cache = cache().await;
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute("report", Ttl::secs(60), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, Error>(vec![1u32, 2, 3])
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), vec![1, 2, 3]);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the herd recomputed");
    assert_eq!(
        cache.get::<Vec<u32>>("report").await.unwrap(),
        Some(vec![1, 2, 3])
    );
}

/// A loader error of the application's own type: neither `Clone` nor
/// convertible from larder's error.
#[derive(Debug)]
struct OriginDown {
    attempt: u32,
}

impl std::fmt::Display for OriginDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "origin is down (attempt {})", self.attempt)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_reaches_every_waiter_and_nothing_is_cached() {
    let cache = cache().await;
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute("broken", Ttl::secs(60), || async move {
                    let attempt = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<u32, _>(OriginDown { attempt })
                })
                .await
        }));
    }
    // Every caller gets the one error the one run returned: the same Arc.
    let mut errors = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Err(ComputeError::Loader(e)) => errors.push(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(errors[0].attempt, 1);
    assert!(errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])));
    assert!(!cache.has_key("broken").await.unwrap());
    // The next call computes again.
    let v: u32 = cache
        .get_or_compute("broken", Ttl::secs(60), || async { Ok::<_, OriginDown>(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
}

/// A loader returning larder's own error gets it back as itself through
/// `?` when it was alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_callers_own_error_converts_back() {
    let cache = cache().await;
    let r: Result<u32, Error> = async {
        Ok(cache
            .get_or_compute("own", Ttl::secs(60), || async {
                Err(Error::config("origin is down"))
            })
            .await?)
    }
    .await;
    assert!(matches!(r, Err(Error::Config(m)) if m.contains("origin is down")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_leader_hands_over() {
    let cache = cache().await;
    let calls = Arc::new(AtomicU32::new(0));
    let slow = |calls: Arc<AtomicU32>| async move {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, Error>("done".to_string())
    };
    let leader = {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(50),
                cache.get_or_compute("k", Ttl::secs(60), || slow(calls)),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiter = {
        let (cache, calls) = (cache.clone(), calls.clone());
        tokio::spawn(async move {
            cache
                .get_or_compute("k", Ttl::secs(60), || slow(calls))
                .await
        })
    };
    assert!(leader.await.unwrap().is_err(), "the leader timed out");
    assert_eq!(waiter.await.unwrap().unwrap(), "done");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the waiter took over once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_keys_are_not_merged() {
    let cache = cache().await;
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute(&format!("k{i}"), Ttl::secs(60), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    Ok::<_, Error>(i)
                })
                .await
                .unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), i);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10);
}
