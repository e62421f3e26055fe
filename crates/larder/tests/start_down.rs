//! Starting with the cache down ("works even if your cache is offline"):
//! `Cache::from_url` succeeds for network backends whose server is
//! unreachable, calls fail fast until it comes up, then work; `close()`
//! leaves every backend usable.
//!
//! "The server comes up" is a TCP forwarder started later on the port the
//! cache was given, in front of the real server.

use std::time::{Duration, Instant};

use larder::prelude::*;
use tokio::net::{TcpListener, TcpStream};

/// A port nothing listens on (yet).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Forwards connections on `port` to `target` from now on, counting them.
async fn bring_up(
    port: u16,
    target: &'static str,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    })
}

async fn starts_down_then_works(
    name: &str,
    url: String,
    target: &'static str,
    port: u16,
    connects_by_itself: bool,
) {
    let t = Instant::now();
    let cache = Cache::from_url(&url)
        .await
        .unwrap_or_else(|e| panic!("{name}: a cache whose server is down must still build: {e}"));
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "{name}: from_url took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let r = cache.get::<String>("k").await;
    assert!(r.is_err(), "{name}: a read while down: {r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "{name}: a read while down took {:?}",
        t.elapsed()
    );
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let forwarder = bring_up(port, target, accepted.clone()).await;
    if connects_by_itself {
        // No call meanwhile: the cache reconnects in the background.
        let until = Instant::now() + Duration::from_secs(15);
        while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            accepted.load(std::sync::atomic::Ordering::SeqCst) > 0,
            "{name}: did not reconnect in the background"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match cache.set("k", "v", Ttl::secs(60)).await {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{name}: still failing after the server came up: {e}"),
        }
    }
    assert_eq!(
        cache.get::<String>("k").await.unwrap().as_deref(),
        Some("v"),
        "{name}"
    );
    // close() leaves it usable, as on every backend.
    cache.close().await.unwrap();
    assert_eq!(
        cache.get::<String>("k").await.unwrap().as_deref(),
        Some("v"),
        "{name}: unusable after close()"
    );
    cache.delete("k").await.unwrap();
    forwarder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_backends_start_with_their_server_down() {
    let id = std::process::id();
    let p = free_port().await;
    starts_down_then_works(
        "redis",
        format!("redis://127.0.0.1:{p}?key_prefix=down{id}"),
        "127.0.0.1:6379",
        p,
        true,
    )
    .await;
    let p = free_port().await;
    starts_down_then_works(
        "postgres",
        format!(
            "postgres://postgres@127.0.0.1:{p}/test?key_prefix=down{id}&table=larder_down_{id}"
        ),
        "127.0.0.1:5432",
        p,
        true,
    )
    .await;
    let p = free_port().await;
    starts_down_then_works(
        "mariadb",
        format!("mysql://root@127.0.0.1:{p}/test?key_prefix=down{id}&table=larder_down_{id}"),
        "127.0.0.1:3306",
        p,
        true,
    )
    .await;
    let p = free_port().await;
    starts_down_then_works(
        "memcached",
        format!("memcached://127.0.0.1:{p}?key_prefix=down{id}"),
        "127.0.0.1:21211",
        p,
        false,
    )
    .await;
}

/// A server that answers but refuses us is a configuration error at once,
/// not "down".
#[tokio::test]
async fn a_refusing_server_is_an_error_at_once() {
    let e = Cache::from_url("postgres://nosuchuser@127.0.0.1:5432/test")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("nosuchuser") || e.to_string().contains("role"),
        "{e}"
    );
    let e = Cache::from_url("mysql://nosuchuser:pw@127.0.0.1:3306/test")
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("denied"), "{e}");
}
