//! The whole conformance suite against a real pool of 3 memcached servers
//! (started by `scripts/services` on 21211-21213 with `-I 8m`, so the suite's
//! 1 MiB values fit). A missing server fails the tests loudly.

use std::sync::Arc;

use larder_core::{Backend, CacheUrl};
use larder_memcached::MemcachedBackend;

pub fn pool_url() -> String {
    std::env::var("LARDER_TEST_MEMCACHED")
        .unwrap_or_else(|_| "memcached://127.0.0.1:21211,127.0.0.1:21212,127.0.0.1:21213".into())
}

async fn pool() -> Arc<dyn Backend> {
    let mut u = CacheUrl::parse(&pool_url()).unwrap();
    let b = MemcachedBackend::from_url(&mut u).unwrap();
    u.finish().unwrap();
    // Fail loudly, and early, when the servers are not running.
    b.get("larder:probe")
        .await
        .unwrap_or_else(|e| panic!("memcached pool unreachable (run scripts/services): {e}"));
    Arc::new(b)
}

larder_testkit::conformance_suite!(|| async { pool().await });
