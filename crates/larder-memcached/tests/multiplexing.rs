//! Many callers on one connection per server: every response reaches the
//! caller that asked, an abandoned request never shifts the answers of the
//! next ones, and a silent server fails what is in flight and is replaced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use larder_core::{Backend, Expiry};
use larder_memcached::{MemcachedBackend, MemcachedConfig};
use larder_testkit::server::Server;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// memcached's `total_connections`, which counts every accepted connection.
async fn total_connections(addr: &str) -> u64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"stats\r\n").await.unwrap();
    let mut lines = BufReader::new(s).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        if let Some(n) = l.strip_prefix("STAT total_connections ") {
            return n.trim().parse().unwrap();
        }
        assert_ne!(l, "END", "no total_connections in stats");
    }
    panic!("stats ended early")
}

/// 64 concurrent callers doing 50 operations each open one connection, not
/// one per caller in flight (the pool this replaced opened up to 64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_connection() {
    let port = 21293;
    // One worker thread: connections are counted in the order they were
    // accepted (with several, start()'s probe may be counted after a later
    // connection).
    let _server = Server::memcached(port, &["-t", "1"]);
    let addr = format!("127.0.0.1:{port}");
    let mut config = MemcachedConfig::new([addr.clone()]);
    // Sizes are checked against a known limit: no `stats settings` call.
    config.max_value_bytes = Some(1 << 20);
    let backend = MemcachedBackend::new(config).unwrap();
    // memcached counts a connection when a worker thread takes it, which
    // may be after start()'s probe has gone: wait until only our own
    // stats connections add to the count.
    let mut before = total_connections(&addr).await;
    loop {
        let now = total_connections(&addr).await;
        if now == before + 1 {
            before = now;
            break;
        }
        before = now;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let b = backend.clone();
            tokio::spawn(async move {
                for n in 0..50 {
                    let k = format!("share:{t}:{n}");
                    b.set(&k, k.clone().into_bytes().into(), Expiry::Never)
                        .await
                        .unwrap();
                    assert_eq!(b.get(&k).await.unwrap().as_deref(), Some(k.as_bytes()));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = total_connections(&addr).await;
    // `after` counts our second stats connection too.
    assert_eq!(
        after - before,
        2,
        "6,400 operations from 64 callers took {} connections",
        after - before - 1
    );
}

/// Every kind of request, from 64 callers at once on one connection: each
/// gets its own answers (counts, quiet batches ended by `mn`, values).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_reach_their_callers_under_load() {
    let mut config = MemcachedConfig::new(["127.0.0.1:21211"]);
    config.max_value_bytes = Some(1 << 20);
    let backend = MemcachedBackend::new(config).unwrap();
    let run = fastrand::u64(..);
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let b = backend.clone();
            tokio::spawn(async move {
                let ttl = Expiry::After(Duration::from_secs(60));
                for n in 0..40 {
                    let k = |i: usize| format!("mux:{run}:{t}:{n}:{i}");
                    // Values of varied sizes, some over one TCP segment.
                    let v = |i: usize| {
                        let mut v = k(i).into_bytes();
                        v.resize(v.len() + (t * 97 + n * 31 + i) % 3000, b'x');
                        v
                    };
                    let keys: Vec<String> = (0..5).map(k).collect();
                    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                    let entries: Vec<(&str, larder_core::Bytes)> =
                        (0..4).map(|i| (refs[i], v(i).into())).collect();
                    assert!(b.set_many(&entries, ttl).await.unwrap().is_empty());
                    let got = b.get_many(&refs).await.unwrap();
                    for (i, g) in got.iter().take(4).enumerate() {
                        assert_eq!(g.as_deref(), Some(&v(i)[..]), "task {t} op {n}");
                    }
                    assert_eq!(got[4], None);
                    assert!(b.add(refs[4], v(4).into(), ttl).await.unwrap());
                    assert!(!b.add(refs[4], v(0).into(), ttl).await.unwrap());
                    assert_eq!(b.get(refs[4]).await.unwrap().as_deref(), Some(&v(4)[..]));
                    b.set(refs[0], b"41"[..].into(), ttl).await.unwrap();
                    assert_eq!(b.incr(refs[0], 1).await.unwrap(), 42);
                    assert_eq!(b.delete_many(&refs[1..3]).await.unwrap(), 2);
                    assert!(!b.delete(refs[1]).await.unwrap());
                    assert!(b.delete(refs[3]).await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A memcached stand-in that answers every `mg <key> v` in order with the
/// key as the value, holding back the answer to a key that starts with
/// `slow` for 300 ms (and so everything after it, as memcached would).
async fn in_order_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let Some(key) = line.strip_prefix("mg ").and_then(|r| r.split(' ').next())
                    else {
                        return;
                    };
                    if key.starts_with("slow") {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let answer = format!("VA {}\r\n{key}\r\n", key.len());
                    if write.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A caller that gives up on a request already written (its future is
/// dropped) leaves the response to be read and discarded: the next caller
/// gets its own value, not the abandoned one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_does_not_shift_the_answers() {
    let addr = in_order_server().await;
    let mut config = MemcachedConfig::new([addr]);
    config.deadline = Duration::from_secs(2);
    let backend = MemcachedBackend::new(config).unwrap();
    assert_eq!(
        backend.get("warm").await.unwrap().as_deref(),
        Some(&b"warm"[..])
    );
    let abandoned = tokio::time::timeout(Duration::from_millis(50), backend.get("slow-1")).await;
    assert!(
        abandoned.is_err(),
        "the slow answer came early: {abandoned:?}"
    );
    for key in ["fast-1", "fast-2", "fast-3"] {
        assert_eq!(
            backend.get(key).await.unwrap().as_deref(),
            Some(key.as_bytes()),
            "an answer was shifted onto the wrong caller"
        );
    }
}

/// A listener on a free port that runs `conn` on every connection it
/// accepts (with its ordinal, from 0) and counts them.
async fn counting_server<F, Fut>(conn: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let nth = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(conn(sock, nth));
        }
    });
    (addr, accepted)
}

/// A backend on `addr` with a 300 ms deadline that never ejects the server
/// (so every call below goes to it).
fn never_ejecting(addr: String) -> MemcachedBackend {
    let mut config = MemcachedConfig::new([addr]);
    config.deadline = Duration::from_millis(300);
    config.failure_limit = 1000;
    MemcachedBackend::new(config).unwrap()
}

/// A server that accepts and then says nothing: every caller in flight
/// fails within the deadline (none waits forever), and the next call opens
/// a new connection, which here answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_fails_what_is_in_flight_and_is_replaced() {
    let (addr, accepted) = counting_server(|mut sock, nth| async move {
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // The first connection swallows everything; later ones
                // answer each read with a miss.
                Ok(_) if nth == 0 => {}
                Ok(_) => {
                    if sock.write_all(b"EN\r\n").await.is_err() {
                        return;
                    }
                }
            }
        }
    })
    .await;
    let backend = never_ejecting(addr);
    let started = Instant::now();
    let calls: Vec<_> = (0..16)
        .map(|i| {
            let b = backend.clone();
            tokio::spawn(async move { b.get(&format!("k{i}")).await })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        assert!(r.is_err(), "a silent server answered: {r:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "callers waited {:?}",
        started.elapsed()
    );
    // The connection ends at its own stall bound (the deadline) at most.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(backend.get("k").await.unwrap(), None);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A server that trickles a byte every 50 ms and never completes a
/// response: every call fails within its deadline, and the connection is
/// replaced once its oldest request is a deadline old, instead of living on
/// (with a queue of abandoned requests that grows) as long as bytes come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_server_does_not_keep_its_connection() {
    let (addr, accepted) = counting_server(|sock, _| async move {
        let (mut read, mut write) = sock.into_split();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if write.write_all(b"V").await.is_err() {
                return;
            }
        }
    })
    .await;
    let backend = never_ejecting(addr);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let call = Instant::now();
        let r = backend.get("k").await;
        assert!(r.is_err(), "a trickle answered: {r:?}");
        assert!(
            call.elapsed() < Duration::from_secs(1),
            "{:?}",
            call.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 3,
        "the trickling connection was kept: {} accepted in 1.5 s",
        accepted.load(Ordering::SeqCst)
    );
}
