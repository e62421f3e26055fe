//! memcached-specific behaviour, against real servers and deliberately broken
//! ones.

use std::time::{Duration, Instant};

use larder_core::{Backend, Cache, CacheUrl, Error, Expiry, Ttl};
use larder_memcached::{MemcachedBackend, MemcachedConfig};
use larder_testkit::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn backend(url: &str) -> MemcachedBackend {
    let mut u = CacheUrl::parse(url).unwrap();
    let b = MemcachedBackend::from_url(&mut u).unwrap();
    u.finish().unwrap();
    b
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(n as u64);
    (0..n).map(|_| rng.u8(..)).collect()
}

/// A server with the stock 1 MiB item limit refuses a larger value with a
/// clear error before sending it, and the value it was to replace is gone
/// (a failed write never leaves a superseded value readable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_item_limit_are_refused() {
    let cache = Cache::builder(backend("memcached://127.0.0.1:21214"))
        .deadline(Some(larder_testkit::TEST_DEADLINE))
        .key_prefix(format!("big{}", std::process::id()))
        .build()
        .unwrap();
    cache.set("k", "small", Ttl::secs(60)).await.unwrap();
    let err = cache
        .set("k", &random_bytes(2 << 20), Ttl::secs(60))
        .await
        .unwrap_err();
    match err {
        Error::ValueTooLarge { size, limit } => {
            assert!(size > 2 << 20);
            assert!(limit < 1 << 20 && limit > 1_000_000, "limit {limit}");
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    // Just under the limit still works.
    let fits = random_bytes(1_000_000);
    cache.set("fits", &fits, Ttl::secs(60)).await.unwrap();
    assert_eq!(cache.get::<Vec<u8>>("fits").await.unwrap(), Some(fits));
    cache.clear().await.unwrap();
}

/// Keys land on the server ketama names: another client asking that server
/// directly finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_live_where_ketama_says() {
    let b = backend("memcached://127.0.0.1:21211,127.0.0.1:21212,127.0.0.1:21213");
    let mut used = std::collections::BTreeSet::new();
    for i in 0..30 {
        let key = format!("ketama:{}:{i}", std::process::id());
        b.set(
            &key,
            b"x"[..].into(),
            Expiry::After(Duration::from_secs(30)),
        )
        .await
        .unwrap();
        let server = b.server_for(&key).unwrap().to_owned();
        let direct = backend(&format!("memcached://{server}"));
        assert!(direct.has_key(&key).await.unwrap(), "{key} not on {server}");
        used.insert(server);
        b.delete(&key).await.unwrap();
    }
    assert_eq!(used.len(), 3, "30 keys should spread over all 3 servers");
}

/// Killing a server ejects it (its keys move to the others, nothing hangs);
/// after the retry delay a restarted server is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_is_ejected_and_retried() {
    let (pa, pb) = (21291, 21292);
    let a = Server::memcached(pa, &[]);
    let mut b_server = Some(Server::memcached(pb, &[]));
    let mut config = MemcachedConfig::new([format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}")]);
    config.failure_limit = 1;
    config.retry_delay = Duration::from_millis(700);
    config.deadline = Duration::from_millis(300);
    let backend = MemcachedBackend::new(config).unwrap();
    let b_addr = format!("127.0.0.1:{pb}");
    let key_on_b = (0..1000)
        .map(|i| format!("k{i}"))
        .find(|k| backend.server_for(k) == Some(b_addr.as_str()))
        .unwrap();
    let ttl = Expiry::After(Duration::from_secs(60));
    backend.set(&key_on_b, b"v"[..].into(), ttl).await.unwrap();

    drop(b_server.take());
    // The first call to the dead server fails fast, with a backend error.
    let started = Instant::now();
    let err = backend.get(&key_on_b).await.unwrap_err();
    assert!(err.is_backend_failure(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Then the key maps to the live server and calls succeed.
    assert_eq!(
        backend.server_for(&key_on_b),
        Some(format!("127.0.0.1:{pa}").as_str())
    );
    backend.set(&key_on_b, b"w"[..].into(), ttl).await.unwrap();
    assert_eq!(
        backend.get(&key_on_b).await.unwrap().as_deref(),
        Some(&b"w"[..])
    );

    // Restart B; after the retry delay it is back in the ring.
    let _b = Server::memcached(pb, &[]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(backend.server_for(&key_on_b), Some(b_addr.as_str()));
    assert_eq!(
        backend.get(&key_on_b).await.unwrap(),
        None,
        "a restarted server is empty"
    );
    backend.set(&key_on_b, b"x"[..].into(), ttl).await.unwrap();
    assert_eq!(
        backend.get(&key_on_b).await.unwrap().as_deref(),
        Some(&b"x"[..])
    );
    drop(a);
}

/// With every server down, calls fail fast with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_fails_fast() {
    let b = backend(
        "memcached://127.0.0.1:1,127.0.0.1:2?failure_limit=1&retry_delay_ms=60000&deadline_ms=200",
    );
    for _ in 0..3 {
        let _ = b.get("k").await;
    }
    let started = Instant::now();
    let err = b.get("k").await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().contains("all memcached servers are down"),
        "{err}"
    );
}

/// A fake server that answers every request with `reply` (or nothing).
async fn fake_server(reply: &'static [u8], close: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if !reply.is_empty() && sock.write_all(reply).await.is_err() {
                        return;
                    }
                    if close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Garbage, a hang, a half answer or a closed connection from a server is an
/// error within the deadline: never a panic, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_servers_give_errors_not_hangs() {
    let cases: [(&[u8], bool); 6] = [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", false),
        (b"", false),
        (b"VA 100\r\nshort", false),
        (b"VA 99999999999\r\n", false),
        (b"", true),
        (b"\x00\xff\xfe garbage without newline", false),
    ];
    for (reply, close) in cases {
        let addr = fake_server(reply, close).await;
        let b = backend(&format!(
            "memcached://{addr}?deadline_ms=300&max_value_bytes=1000000"
        ));
        let started = Instant::now();
        let r = b.get("k").await;
        assert!(r.is_err(), "{reply:?} gave {r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{reply:?} took {:?}",
            started.elapsed()
        );
        let r = b.set("k", b"v"[..].into(), Expiry::Never).await;
        assert!(r.is_err(), "{reply:?} set gave {r:?}");
    }
}

#[test]
fn urls_are_checked() {
    let err = |u: &str| {
        let mut url = CacheUrl::parse(u).unwrap();
        MemcachedBackend::from_url(&mut url)
            .unwrap_err()
            .to_string()
    };
    assert!(err("memcached://").contains("at least one server"));
    assert!(err("memcached://h:notaport").contains("host:port"));
    assert!(err("memcached://h:1/db").contains("no path"));
    assert!(err("memcached://h:1?deadline_ms=x").contains("deadline_ms"));
    // A bare host gets the default port.
    let mut url = CacheUrl::parse("memcached://cachehost").unwrap();
    let b = MemcachedBackend::from_url(&mut url).unwrap();
    assert_eq!(b.config().servers, vec!["cachehost:11211".to_string()]);
}

/// Many caches clearing their prefixes at once on one server: memcached runs
/// one crawler at a time and answers "BUSY" to the others; every clear must
/// still succeed and remove exactly its own keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_prefix_clears_all_succeed() {
    // 20k items make each crawler pass long enough for the clears to overlap
    // (checked by hand: overlapping dumps then answer BUSY).
    let filler = Cache::builder(backend("memcached://127.0.0.1:21214"))
        .deadline(Some(larder_testkit::TEST_DEADLINE))
        .key_prefix(format!("ccfill{}", std::process::id()))
        .build()
        .unwrap();
    let items: Vec<(String, u32)> = (0..20_000).map(|i| (format!("f{i}"), i)).collect();
    for chunk in items.chunks(2000) {
        assert!(filler
            .set_many::<u32, _, _>(chunk, Ttl::secs(60))
            .await
            .unwrap()
            .is_empty());
    }
    let mut tasks = Vec::new();
    for n in 0..12 {
        tasks.push(tokio::spawn(async move {
            let cache = Cache::builder(backend("memcached://127.0.0.1:21214"))
                .deadline(Some(larder_testkit::TEST_DEADLINE))
                .key_prefix(format!("cc{}.{n}", std::process::id()))
                .build()
                .unwrap();
            for i in 0..20 {
                cache
                    .set(&format!("k{i}"), &i, Ttl::secs(60))
                    .await
                    .unwrap();
            }
            cache.clear().await.unwrap();
            for i in 0..20 {
                assert!(!cache.has_key(&format!("k{i}")).await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        filler.has_key("f19999").await.unwrap(),
        "a clear removed another prefix's keys"
    );
    filler.clear().await.unwrap();
}

/// An `incr` past `i64::MAX` is an `Overflow` and leaves the counter as it
/// was, every time (memcached counters are u64: the increment happens on
/// the server and is undone; an undo that did not land must not go
/// unnoticed). Concurrent increments of the same counter near the boundary
/// end at the exact sum of those that succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incr_overflow_never_leaves_a_broken_counter() {
    let c = Cache::builder(backend("memcached://127.0.0.1:21211"))
        .key_prefix(format!("ovf{}", fastrand::u64(..)))
        .build()
        .unwrap();
    for round in 0..300u64 {
        let start = i64::MAX - (round % 5) as i64;
        let delta = 1 + (round % 7) as i64 + (round % 5) as i64;
        c.set("n", &start, Ttl::secs(60)).await.unwrap();
        match c.incr("n", delta).await {
            Err(Error::Overflow { .. }) => {}
            other => panic!("round {round}: {start} + {delta}: {other:?}"),
        }
        assert_eq!(
            c.get::<i64>("n").await.unwrap(),
            Some(start),
            "round {round}: the counter changed after an overflow"
        );
        assert_eq!(c.incr("n", 0).await.unwrap(), start, "round {round}");
    }
    // Racing increments at the boundary: each either succeeds or
    // overflows, and the counter ends at the start plus the successes.
    let start = i64::MAX - 50;
    c.set("r", &start, Ttl::secs(60)).await.unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                match c.incr("r", 3).await {
                    Ok(_) => 3,
                    Err(Error::Overflow { .. }) => 0,
                    Err(e) => panic!("{e:?}"),
                }
            })
        })
        .collect();
    let mut added = 0i64;
    for t in tasks {
        added += t.await.unwrap();
    }
    assert!(
        added > 0 && added <= 48,
        "{added}: at most 16 increments of 3 fit"
    );
    assert_eq!(c.get::<i64>("r").await.unwrap(), Some(start + added));
}
