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
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<u32, _>(Error::config("origin is down"))
                })
                .await
        }));
    }
    let mut own = 0;
    let mut shared = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(Error::Config(m)) if m.contains("origin is down") => own += 1,
            Err(Error::Computation { message, .. }) if message.contains("origin is down") => {
                shared += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!((own, shared), (1, 19));
    assert!(!cache.has_key("broken").await.unwrap());
    // The next call computes again.
    let v: u32 = cache
        .get_or_compute("broken", Ttl::secs(60), || async { Ok::<_, Error>(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
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
