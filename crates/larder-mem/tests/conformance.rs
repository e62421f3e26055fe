//! The whole conformance suite against the memory backend.

use std::sync::Arc;

use larder_core::Backend;
use larder_mem::MemBackend;

mod by_entries {
    use super::*;
    larder_testkit::conformance_suite!(|| async {
        Arc::new(MemBackend::default()) as Arc<dyn Backend>
    });
}

mod by_bytes {
    use super::*;
    larder_testkit::conformance_suite!(|| async {
        Arc::new(MemBackend::with_max_bytes(256 << 20)) as Arc<dyn Backend>
    });
}

/// Stale-set protection covers every `Cache` built over one memory backend,
/// not only one `Cache` and its clones: a delete through the second cache,
/// landing while the first computes, wins over the computed result.
#[tokio::test]
async fn stale_set_protection_spans_caches_over_one_backend() {
    use std::time::Duration;
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let a = larder_core::Cache::builder_arc(backend.clone())
        .build()
        .unwrap();
    let b = larder_core::Cache::builder_arc(backend).build().unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let computing = {
        let (a, started) = (a.clone(), started.clone());
        tokio::spawn(async move {
            a.get_or_compute("k", Duration::from_secs(60), move || async move {
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, larder_core::Error>("old".to_owned())
            })
            .await
            .unwrap()
        })
    };
    started.notified().await;
    b.delete("k").await.unwrap();
    assert_eq!(computing.await.unwrap(), "old");
    assert_eq!(
        a.get::<String>("k").await.unwrap(),
        None,
        "a result computed before another cache's delete was stored after it"
    );
    assert_eq!(b.get::<String>("k").await.unwrap(), None);
}

/// `get_memoized` answers what the backend holds now: a memoized value is
/// reused only for the very bytes it was decoded from.
#[tokio::test]
async fn memoized_reads_follow_every_write() {
    use larder_core::{Cache, DecodedMemo};
    use std::time::Duration;
    let backend: Arc<dyn Backend> = Arc::new(MemBackend::default());
    let a = Cache::builder_arc(backend.clone()).build().unwrap();
    let b = Cache::builder_arc(backend).build().unwrap();
    let memo = DecodedMemo::<String>::new(4, 1024);
    assert_eq!(a.get_memoized("k", &memo).await.unwrap(), None);
    a.set("k", "one", Duration::from_secs(60)).await.unwrap();
    let first = a.get_memoized("k", &memo).await.unwrap().unwrap();
    assert_eq!(*first, "one");
    let again = a.get_memoized("k", &memo).await.unwrap().unwrap();
    assert!(
        Arc::ptr_eq(&first, &again),
        "the same bytes are decoded once"
    );
    // Another cache over the same store writes, deletes, writes again.
    b.set("k", "two", Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        a.get_memoized("k", &memo)
            .await
            .unwrap()
            .as_deref()
            .map(String::as_str),
        Some("two")
    );
    b.delete("k").await.unwrap();
    assert_eq!(a.get_memoized("k", &memo).await.unwrap(), None);
    // Keys sharing a slot (4 slots, many keys) never see each other's values.
    for i in 0..32 {
        a.set(&format!("s{i}"), &format!("v{i}"), Duration::from_secs(60))
            .await
            .unwrap();
    }
    for round in 0..2 {
        for i in 0..32 {
            let v = a
                .get_memoized::<String>(&format!("s{i}"), &memo)
                .await
                .unwrap();
            assert_eq!(
                v.as_deref().map(String::as_str),
                Some(format!("v{i}").as_str()),
                "round {round}"
            );
        }
    }
    // A get_or_compute entry past its soft expiry is a miss here too.
    let opts = larder_core::ComputeOptions::new(Duration::from_millis(200))
        .stale_while_revalidate(Duration::from_secs(30))
        .no_early_refresh();
    let _: String = a
        .get_or_compute_with("soft", &opts, || async {
            Ok::<_, larder_core::Error>("x".to_owned())
        })
        .await
        .unwrap();
    assert!(a
        .get_memoized::<String>("soft", &memo)
        .await
        .unwrap()
        .is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.get_memoized::<String>("soft", &memo).await.unwrap(), None);
}
