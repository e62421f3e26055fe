//! The configured deadline is the one that bounds a call: no shorter limit
//! inside the client cuts a slow answer off, and a longer wait still ends at
//! the deadline. Against a private redis-server (port 26391), since the test
//! makes it busy on purpose.

use std::time::{Duration, Instant};

use larder_core::{Backend, CacheUrl, Error, Expiry};
use larder_redis::RedisBackend;
use larder_testkit::server::Server;

async fn backend(url: &str) -> RedisBackend {
    let mut u = CacheUrl::parse(url).unwrap();
    let b = RedisBackend::from_url(&mut u).await.unwrap();
    u.finish().unwrap();
    b
}

/// Keeps the server busy for `ms` (a Lua script blocks every client).
fn busy(port: u16, ms: u64) -> std::thread::JoinHandle<()> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_connection().unwrap();
    std::thread::spawn(move || {
        let script = "local t = redis.call('TIME'); \
             local stop = t[1] * 1000000 + t[2] + tonumber(ARGV[1]) * 1000; \
             repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop; \
             return 1";
        let _: i64 = redis::cmd("EVAL")
            .arg(script)
            .arg(0)
            .arg(ms)
            .query(&mut conn)
            .unwrap();
    })
}

/// With the default deadline (1 s), a call answered after 700 ms succeeds:
/// redis-rs's own 500 ms response timeout, on by default, used to fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_within_the_deadline_is_an_answer() {
    let port = 26391;
    let _server = Server::redis(port);
    let b = backend(&format!("redis://127.0.0.1:{port}/0")).await;
    b.set("k", b"v"[..].into(), Expiry::Never).await.unwrap();
    let script = busy(port, 700);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let got = b.get("k").await;
    let waited = started.elapsed();
    script.join().unwrap();
    assert_eq!(got.unwrap().as_deref(), Some(&b"v"[..]), "after {waited:?}");
    assert!(waited >= Duration::from_millis(500), "{waited:?}");
}

/// A wait longer than the deadline ends at the deadline with a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_the_deadline_is_a_timeout_at_the_deadline() {
    let port = 26392;
    let _server = Server::redis(port);
    let b = backend(&format!("redis://127.0.0.1:{port}/0?deadline_ms=300")).await;
    let script = busy(port, 1200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let got = b.get("k").await;
    let waited = started.elapsed();
    script.join().unwrap();
    assert!(
        matches!(got, Err(Error::Timeout { .. })),
        "{got:?} after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
}
