//! `Cache::from_url` for every built-in scheme, and its errors.

use larder::prelude::*;
use std::time::Duration;

#[tokio::test]
async fn mem_url_with_options() {
    let cache =
        Cache::from_url("mem://?max_entries=100&key_prefix=app&version=3&timeout=1&name=pages")
            .await
            .unwrap();
    assert_eq!(cache.make_key("k").unwrap(), "app:3:k");
    assert_eq!(cache.name(), "pages");
    assert_eq!(cache.backend().name(), "mem");
    cache.set("k", "v", Ttl::Default).await.unwrap();
    assert!(cache.has_key("k").await.unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !cache.has_key("k").await.unwrap(),
        "timeout=1 is the default TTL"
    );
}

#[tokio::test]
async fn mem_url_by_bytes_refuses_a_value_larger_than_its_shard() {
    let cache = Cache::from_url("mem://?max_bytes=100000&compress_above=none")
        .await
        .unwrap();
    let big = vec![1u8; 200_000];
    assert!(matches!(
        cache.set("k", &big, Ttl::Default).await,
        Err(Error::ValueTooLarge { .. })
    ));
}

#[tokio::test]
async fn file_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}?max_entries=10&codec=json", dir.path().display());
    let cache = Cache::from_url(&url).await.unwrap();
    assert_eq!(cache.backend().name(), "file");
    cache.set("k", &[1, 2, 3], Ttl::Default).await.unwrap();
    assert_eq!(
        cache.get::<Vec<i32>>("k").await.unwrap(),
        Some(vec![1, 2, 3])
    );
}

#[tokio::test]
async fn dummy_url() {
    let cache = Cache::from_url("dummy://").await.unwrap();
    cache.set("k", "v", Ttl::Default).await.unwrap();
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
}

#[tokio::test]
async fn timeout_none_means_never() {
    let cache = Cache::from_url("mem://?timeout=none").await.unwrap();
    cache.set("k", "v", Ttl::Default).await.unwrap();
    assert!(cache.has_key("k").await.unwrap());
}

async fn err(url: &str) -> String {
    Cache::from_url(url).await.unwrap_err().to_string()
}

#[tokio::test]
async fn errors_name_what_is_wrong() {
    let e = err("nosuch://x").await;
    assert!(e.contains("\"nosuch\"") && e.contains("mem://"), "{e}");
    let e = err("mem://?max_entires=10").await;
    assert!(e.contains("max_entires"), "{e}");
    let e = err("mem://?max_entries=ten").await;
    assert!(e.contains("max_entries"), "{e}");
    let e = err("mem://?max_entries=1&max_bytes=1").await;
    assert!(e.contains("not both"), "{e}");
    let e = err("mem://?codec=pickle").await;
    assert!(e.contains("pickle"), "{e}");
    let e = err("mem://?key_prefix=a:b").await;
    assert!(e.contains("':'"), "{e}");
    let e = err("mem://?timeout=0").await;
    assert!(e.contains("zero"), "{e}");
    let e = err("mem://?hash_long_keys=maybe").await;
    assert!(e.contains("hash_long_keys"), "{e}");
    let e = err("dummy://host").await;
    assert!(e.contains("dummy://"), "{e}");
    let e = err("just-a-string").await;
    assert!(e.contains("no scheme"), "{e}");
    let e = err("mem://somehost").await;
    assert!(e.contains("no host"), "{e}");
}

#[tokio::test]
async fn hash_long_keys_option() {
    let cache = Cache::from_url("mem://?hash_long_keys=true").await.unwrap();
    let long = "x".repeat(500);
    cache.set(&long, "v", Ttl::Default).await.unwrap();
    assert_eq!(
        cache.get::<String>(&long).await.unwrap().as_deref(),
        Some("v")
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_urls() {
    let cache = Cache::from_url("redis://127.0.0.1:6379/4?key_prefix=fromurl&deadline_ms=500")
        .await
        .expect("Redis on 6379 (run scripts/services)");
    assert_eq!(cache.backend().name(), "redis");
    cache.set("k", "v", Ttl::secs(5)).await.unwrap();
    assert_eq!(
        cache.get::<String>("k").await.unwrap().as_deref(),
        Some("v")
    );
    cache.clear().await.unwrap();
    let cluster =
        // A generous per-call deadline: this test is about the URL, and a
        // cluster just formed under a 16-wide test run can take more than
        // the default 100 ms for its first call (seen once in CI).
        Cache::from_url(
            "redis+cluster://127.0.0.1:27001,127.0.0.1:27002?key_prefix=fromurl&deadline_ms=2000",
        )
            .await
            .expect("Redis Cluster on 27001 (run scripts/services)");
    cluster.set("k", "v", Ttl::secs(5)).await.unwrap();
    assert!(cluster.has_key("k").await.unwrap());
    cluster.clear().await.unwrap();
    let e = err("redis://127.0.0.1:6379?deadline_ms=0").await;
    assert!(e.contains("deadline_ms"), "{e}");
    let e = err("redis://h1:1,h2:2").await;
    assert!(e.contains("redis+cluster"), "{e}");
    let e = err("redis+cluster://127.0.0.1:27001/2").await;
    assert!(e.contains("database 0"), "{e}");
    // A server that is not there: the cache builds (it connects when it
    // can, tests/start_down.rs), and a call is a clear error within the
    // deadline.
    let started = std::time::Instant::now();
    let down = Cache::from_url("redis://127.0.0.1:1?deadline_ms=300")
        .await
        .expect("a cache whose server is down still builds");
    let e = down.get::<String>("k").await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(e.contains("redis"), "{e}");
}

#[cfg(feature = "memcached")]
#[tokio::test]
async fn memcached_urls() {
    let cache = Cache::from_url(
        "memcached://127.0.0.1:21211,127.0.0.1:21212?key_prefix=fromurl&deadline_ms=500",
    )
    .await
    .unwrap();
    assert_eq!(cache.backend().name(), "memcached");
    cache.set("k", &41, Ttl::secs(5)).await.unwrap();
    assert_eq!(cache.incr("k", 1).await.unwrap(), 42);
    cache.clear().await.unwrap();
    assert!(!cache.has_key("k").await.unwrap());
    let e = err("memcached://127.0.0.1:21211?pool_size=lots").await;
    assert!(e.contains("pool_size"), "{e}");
}

/// One deadline option, `deadline_ms`, read by the cache (the deadline of
/// every call) and left for the backend's own waits; a backend that has
/// none (memory) is not failed for it; the old name is refused by name.
#[cfg(feature = "redis")]
#[tokio::test]
async fn deadline_ms_is_the_one_deadline() {
    let mem = Cache::from_url("mem://?deadline_ms=50").await.unwrap();
    assert_eq!(mem.deadline(), Some(Duration::from_millis(50)));
    let mem = Cache::from_url("mem://").await.unwrap();
    assert_eq!(mem.deadline(), None, "in-process backends have none");
    let redis = Cache::from_url("redis://127.0.0.1:6379?deadline_ms=250")
        .await
        .expect("Redis on 6379");
    assert_eq!(redis.deadline(), Some(Duration::from_millis(250)));
    let redis = Cache::from_url("redis://127.0.0.1:6379").await.unwrap();
    assert_eq!(redis.deadline(), Some(larder::DEFAULT_DEADLINE));
    let none = Cache::from_url("redis://127.0.0.1:6379?deadline_ms=none")
        .await
        .unwrap();
    assert_eq!(none.deadline(), None);
    let file = Cache::from_url(&format!(
        "file://{}?deadline_ms=3000",
        std::env::temp_dir().join("larder-deadline-url").display()
    ))
    .await
    .unwrap();
    assert_eq!(file.deadline(), Some(Duration::from_secs(3)));
    let e = err("mem://?op_deadline_ms=50").await;
    assert!(e.contains("now deadline_ms"), "{e}");
    let e = err("mem://?deadline_ms=soon").await;
    assert!(e.contains("deadline_ms"), "{e}");
}
