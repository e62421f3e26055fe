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
