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

/// Redis over TLS on 27100, trusting the throwaway CA of `scripts/services`.
#[cfg(feature = "tls")]
pub fn tls_url() -> String {
    std::env::var("LARDER_TEST_REDIS_TLS").unwrap_or_else(|_| {
        let run =
            std::env::var("LARDER_SERVICES_DIR").unwrap_or_else(|_| "/tmp/larder-services".into());
        // Handshakes in an unoptimized build, 16 processes at once, need more
        // than the default 1 s deadline.
        format!("rediss://127.0.0.1:27100/0?deadline_ms=10000&tls_ca={run}/tls/ca.crt")
    })
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    larder_testkit::conformance_suite!(|| async { connect(&tls_url()).await });
}

/// Without the CA, the server's self-signed certificate is refused: TLS
/// really verifies.
#[cfg(feature = "tls")]
#[tokio::test]
async fn tls_refuses_an_untrusted_certificate() {
    let mut u = CacheUrl::parse("rediss://127.0.0.1:27100/0?deadline_ms=2000").unwrap();
    let r = RedisBackend::from_url(&mut u).await;
    assert!(r.is_err(), "connected to a server whose CA is not trusted");
}

#[tokio::test]
async fn tls_options_are_checked() {
    let mut u = CacheUrl::parse("redis://127.0.0.1:6379?tls_ca=/nonexistent.pem").unwrap();
    let e = RedisBackend::from_url(&mut u)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls_ca") || e.contains("TLS CA"), "{e}");
}

/// Username and password from the URL reach the server (ACL user on 27101,
/// started by `scripts/services`); a wrong password is a clear error.
#[tokio::test]
async fn credentials_in_the_url() {
    let b = connect("redis://larder:larder-secret@127.0.0.1:27101/0").await;
    let key = format!("acl:{}", std::process::id());
    b.set(
        &key,
        "v".into(),
        larder_core::Expiry::After(std::time::Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&b"v"[..]));
    b.delete(&key).await.unwrap();
    let mut u = CacheUrl::parse("redis://larder:wrong@127.0.0.1:27101/0").unwrap();
    let e = RedisBackend::from_url(&mut u)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("authentication"), "{e}");
    let mut u = CacheUrl::parse("redis://127.0.0.1:27101/0").unwrap();
    let r = RedisBackend::from_url(&mut u).await;
    if let Ok(b) = r {
        // The default user is off: connecting may succeed lazily, but no
        // command does.
        assert!(b.get("k").await.is_err());
    }
}
