//! The whole conformance suite against real servers: the machine's Redis on
//! 6379 (database 3) and the 6-node Redis Cluster that `scripts/services`
//! starts on 27001-27006. A missing server fails the tests loudly.

use std::sync::Arc;

use larder_core::{Backend, CacheUrl};
use larder_redis::RedisBackend;

async fn connect(url: &str) -> Arc<dyn Backend> {
    let mut u = CacheUrl::parse(url).unwrap();
    let backend = RedisBackend::from_url(&mut u)
        .await
        .unwrap_or_else(|e| panic!("cannot reach {url} (run scripts/services): {e}"));
    u.finish().unwrap();
    Arc::new(backend)
}

pub fn single_url() -> String {
    std::env::var("LARDER_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/3".into())
}

pub fn cluster_url() -> String {
    std::env::var("LARDER_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
        "redis+cluster://127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003".into()
    })
}

mod single {
    use super::*;
    larder_testkit::conformance_suite!(|| async { connect(&single_url()).await });
}

mod cluster {
    use super::*;
    larder_testkit::conformance_suite!(|| async { connect(&cluster_url()).await });
}
