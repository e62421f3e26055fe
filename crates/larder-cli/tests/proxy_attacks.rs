//! `larder proxy` attacked as a hostile client would, over raw TCP:
//! request smuggling shapes, Host games, slow and idle connections (also
//! with a lowered open-files limit), oversized heads and bodies, stalled
//! upstream bodies, purges without credentials, no-cache floods and bursts
//! to uncacheable URLs. Each test names the defect it guards against.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use common::{header, raw, start_proxy, start_proxy_with, ProxyProcess};

/// What the origin saw.
#[derive(Default)]
struct Origin {
    paths: Mutex<HashMap<String, u32>>,
    in_flight: AtomicU32,
    most_in_flight: AtomicU32,
}

impl Origin {
    fn hit(&self, path: &str) {
        *self
            .paths
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default() += 1;
    }
    fn count(&self, path: &str) -> u32 {
        self.paths.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn stalled_body(private: bool) -> Response {
    use futures_util::StreamExt;
    let first = futures_util::stream::once(async {
        Ok::<_, std::convert::Infallible>(Bytes::from_static(b"0123456789"))
    });
    let body = Body::from_stream(first.chain(futures_util::stream::pending()));
    let cc = if private { "private" } else { "max-age=60" };
    ([("cache-control", cc), ("content-length", "100")], body).into_response()
}

/// The origin: counts every request by path.
async fn origin() -> (u16, Arc<Origin>) {
    let o = Arc::new(Origin::default());
    let seen = o.clone();
    let app = Router::new()
        .route(
            "/page",
            get(|headers: HeaderMap| async move {
                let host = headers
                    .get("host")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                (
                    [("cache-control", "max-age=60")],
                    format!("page for {host}"),
                )
            }),
        )
        .route("/anon", get(|| async { "no freshness given" }))
        .route(
            "/private",
            get({
                let o = o.clone();
                move || {
                    let o = o.clone();
                    async move {
                        let now = o.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        o.most_in_flight.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        o.in_flight.fetch_sub(1, Ordering::SeqCst);
                        ([("cache-control", "private")], "yours")
                    }
                }
            }),
        )
        .route("/stall", get(|| async { stalled_body(false) }))
        .route("/stall-private", get(|| async { stalled_body(true) }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "slow"
            }),
        )
        .route(
            "/echo",
            post(|body: Bytes| async move { format!("{} bytes", body.len()) }),
        )
        .fallback(any(|| async { (StatusCode::NOT_FOUND, "no such page") }))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let seen = seen.clone();
                async move {
                    seen.hit(req.uri().path());
                    next.run(req).await
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, o)
}

fn send(port: u16, text: &str) -> (u16, Vec<(String, String)>, String) {
    raw(port, text.as_bytes(), Duration::from_secs(10))
}

fn get_page(port: u16, path: &str, extra: &str) -> (u16, Vec<(String, String)>, String) {
    send(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn status_json(p: &ProxyProcess) -> serde_json::Value {
    let (_, _, b) = get_page(p.admin, "/_larder/status", "");
    serde_json::from_str(&b).unwrap_or_else(|e| panic!("{e}: {b}"))
}

/// Runs blocking client code beside the async origin.
async fn client<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_games_cannot_poison_another_host() {
    let (up, _origin) = origin().await;
    let p = start_proxy(up, "mem://", &[]);
    let port = p.port;
    client(move || {
        // Keyed under victim but forwarded with Host: evil, before.
        let (s, _, b) = send(
            port,
            "GET http://victim/page HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n",
        );
        assert_eq!((s, b.as_str()), (200, "page for victim"));
        let (_, h, b) = send(
            port,
            "GET /page HTTP/1.1\r\nHost: victim\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            (header(&h, "x-larder-cache"), b.as_str()),
            (Some("HIT"), "page for victim")
        );
        for bad in [
            "GET /page HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /page HTTP/1.1\r\nHost: victim\r\nHost: evil\r\nConnection: close\r\n\r\n",
            "GET /page HTTP/1.1\r\nHost: victim/x\r\nConnection: close\r\n\r\n",
            "GET /page HTTP/1.1\r\nHost: user@victim\r\nConnection: close\r\n\r\n",
        ] {
            let (s, _, _) = send(port, bad);
            assert_eq!(s, 400, "{bad:?}");
        }
        // HTTP/1.0 may omit Host.
        let (s, _, _) = send(port, "GET /page HTTP/1.0\r\n\r\n");
        assert_eq!(s, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_and_never_reach_the_origin() {
    let (up, origin) = origin().await;
    let p = start_proxy(up, "mem://", &[]);
    let port = p.port;
    client(move || {
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: site.test\r\n\r\n";
        let answers = |attack: &str| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(attack.as_bytes()).unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            let text = String::from_utf8_lossy(&buf).into_owned();
            let first: u16 = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            (first, text.matches("HTTP/1.1 ").count())
        };
        // Both framings: the proxy frames by Transfer-Encoding alone and
        // closes the connection after it (RFC 9112 §6.1), so what follows
        // is never read as a request.
        for attack in [
            format!("POST /echo HTTP/1.1\r\nHost: site.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            format!("POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{smuggled}"),
        ] {
            let (_, responses) = answers(&attack);
            assert_eq!(responses, 1, "a second request was answered: {attack:?}");
        }
        // Two lengths, an obfuscated coding, a coding that is not chunked
        // last, a signed length: refused outright.
        for attack in [
            format!("POST /echo HTTP/1.1\r\nHost: site.test\r\nContent-Length: 0\r\nContent-Length: 45\r\n\r\n{smuggled}"),
            format!("POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
            format!("POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
            format!("POST /echo HTTP/1.1\r\nHost: site.test\r\nContent-Length: +4\r\n\r\n0\r\n\r\n{smuggled}"),
            format!("POST /echo HTTP/1.0\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ] {
            let (s, responses) = answers(&attack);
            assert!((400..500).contains(&s) || s == 501, "{s} for {attack:?}");
            assert_eq!(responses, 1, "{attack:?}");
        }
        // CONNECT is not proxied.
        let (s, h, _) = send(port, "CONNECT site.test:443 HTTP/1.1\r\nHost: site.test:443\r\n\r\n");
        assert_eq!(s, 405);
        assert!(header(&h, "allow").is_some());
    })
    .await;
    assert_eq!(origin.count("/smuggled"), 0);
    assert_eq!(
        origin.count("/echo"),
        2,
        "only the two chunked requests were forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_is_the_clients_fault_and_oversized_parts_are_refused() {
    let (up, _origin) = origin().await;
    let p = start_proxy(
        up,
        "mem://",
        &["--max-request-body", "64", "--max-header-bytes", "4096"],
    );
    let port = p.port;
    let status = client(move || {
        let (s, _, _) = send(
            port,
            "POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\nzz\r\n",
        );
        assert_eq!(s, 400, "a broken chunked body");
        let (s, _, _) = send(
            port,
            "POST /echo HTTP/1.1\r\nHost: site.test\r\nContent-Length: 100\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(s, 413, "declared too large");
        let chunk = "x".repeat(80);
        let (s, _, _) = send(
            port,
            &format!("POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n50\r\n{chunk}\r\n0\r\n\r\n"),
        );
        assert_eq!(s, 413, "streamed too large");
        let (s, _, b) = send(
            port,
            "POST /echo HTTP/1.1\r\nHost: site.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        );
        assert_eq!((s, b.as_str()), (200, "5 bytes"));
        let big = format!("X-Big: {}\r\n", "a".repeat(8000));
        let (s, _, _) = get_page(port, "/page", &big);
        assert_eq!(s, 431);
        let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
        let (s, _, _) = get_page(port, "/page", &many);
        assert!(s == 431 || s == 400, "{s}");
        status_json(&p)
    })
    .await;
    assert_eq!(status["upstream_errors"], 0, "{status}");
    assert!(status["client_errors"].as_u64().unwrap() >= 2, "{status}");
}

/// Reads until the server closes; how long that took (None: still open
/// after `limit`).
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let (up, _origin) = origin().await;
    let p = start_proxy(
        up,
        "mem://",
        &["--header-timeout", "1", "--idle-timeout", "2"],
    );
    let port = p.port;
    client(move || {
        // Nothing sent at all.
        let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // A head trickled one line every 300 ms (slowloris).
        let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let trickle = std::thread::spawn({
            let mut w = slow.try_clone().unwrap();
            move || {
                let _ = w.write_all(b"GET /page HTTP/1.1\r\nHost: site.test\r\n");
                for i in 0..30 {
                    std::thread::sleep(Duration::from_millis(300));
                    if w.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err() {
                        return;
                    }
                }
            }
        });
        assert!(
            closed_within(&mut silent, Duration::from_secs(6)).is_some(),
            "an idle socket stayed open"
        );
        assert!(
            closed_within(&mut slow, Duration::from_secs(6)).is_some(),
            "a trickled head stayed open"
        );
        trickle.join().unwrap();
        // Keep-alive: open after a response, closed after the idle timeout.
        let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
        kept.write_all(b"GET /page HTTP/1.1\r\nHost: site.test\r\n\r\n")
            .unwrap();
        let took =
            closed_within(&mut kept, Duration::from_secs(8)).expect("keep-alive idle forever");
        assert!(
            took >= Duration::from_millis(1500),
            "closed before the idle timeout: {took:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_under_a_low_file_limit_does_not_lock_clients_out() {
    let (up, _origin) = origin().await;
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=256:256", "--", env!("CARGO_BIN_EXE_larder")]);
    let p = start_proxy_with(cmd, up, "mem://", &["--header-timeout", "60"]);
    let port = p.port;
    client(move || {
        // More idle sockets than the proxy has file descriptors.
        let mut idle = Vec::new();
        for _ in 0..400 {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => idle.push(s),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..5 {
            let (s, _, b) = get_page(port, "/page", "");
            assert_eq!(
                (s, b.as_str()),
                (200, "page for site.test"),
                "request {i} under the flood"
            );
        }
        // The oldest idle sockets made room: the server closed them.
        let closed = idle
            .iter_mut()
            .take(50)
            .map(|s| closed_within(s, Duration::from_millis(300)).is_some())
            .filter(|&closed| closed)
            .count();
        assert!(closed > 0, "no idle socket was shed");
        let (_, _, b) = get_page(p.admin, "/_larder/status", "");
        assert!(b.contains("\"open\""), "{b}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_connection_is_busy_new_ones_get_503() {
    let (up, _origin) = origin().await;
    let p = start_proxy(up, "mem://", &["--max-connections", "2"]);
    let port = p.port;
    client(move || {
        let busy: Vec<_> = (0..2)
            .map(|_| std::thread::spawn(move || get_page(port, "/slow", "")))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let (s, h, _) = get_page(port, "/page", "");
        assert_eq!(s, 503);
        assert_eq!(header(&h, "retry-after"), Some("1"));
        for b in busy {
            assert_eq!(b.join().unwrap().0, 200, "busy requests are not cut");
        }
        let (s, _, _) = get_page(port, "/page", "");
        assert_eq!(s, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_spread_over_the_workers() {
    let (up, _origin) = origin().await;
    let p = start_proxy(up, "mem://", &["--workers", "3"]);
    let port = p.port;
    let status = client(move || {
        // A burst of keep-alive connections, each served once and kept
        // open: whichever worker woke first must not keep them all.
        let conns: Vec<TcpStream> = (0..12)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        for mut c in &conns {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"GET /page HTTP/1.1\r\nHost: site.test\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        }
        let status = status_json(&p);
        drop(conns);
        status
    })
    .await;
    let per_worker: Vec<u64> = status["connections"]["per_worker"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"))
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_worker.len(), 3, "{status}");
    assert_eq!(per_worker.iter().sum::<u64>(), 12, "{status}");
    let (min, max) = (
        per_worker.iter().min().unwrap(),
        per_worker.iter().max().unwrap(),
    );
    assert!(max - min <= 2, "connections not spread: {per_worker:?}");
}

#[test]
fn the_worker_count_is_checked() {
    for bad in ["0", "1025", "many"] {
        let out = Command::new(env!("CARGO_BIN_EXE_larder"))
            .args([
                "proxy",
                "--upstream",
                "http://127.0.0.1:1",
                "--workers",
                bad,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--workers {bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--workers"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_body_fails_everyone_once_and_is_never_a_short_200() {
    let (up, origin) = origin().await;
    let p = start_proxy(up, "mem://", &["--upstream-body-timeout", "1"]);
    let port = p.port;
    client(move || {
        // Storable: buffered, so the leader gets a 502 and its followers
        // the same failure at once, with no second stall.
        let all: Vec<_> = (0..6)
            .map(|_| std::thread::spawn(move || get_page(port, "/stall", "")))
            .collect();
        for t in all {
            let (s, _, b) = t.join().unwrap();
            assert_eq!(s, 502, "{b}");
        }
        // Streamed (private): the response breaks off short of its length
        // and the connection closes; it is never presented as complete.
        let (s, h, b) = get_page(port, "/stall-private", "");
        assert_eq!(s, 200);
        let declared: usize = header(&h, "content-length").unwrap().parse().unwrap();
        assert!(b.len() < declared, "{} of {declared} bytes", b.len());
    })
    .await;
    assert_eq!(
        origin.count("/stall"),
        1,
        "followers did not wait out a second stall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_status_need_the_token() {
    let (up, _origin) = origin().await;
    let token = "s3cret-token-0123456789";
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.env("LARDER_ADMIN_TOKEN", token);
    let p = start_proxy_with(cmd, up, "mem://", &["--admin-on-traffic"]);
    let (port, admin) = (p.port, p.admin);
    client(move || {
        let purge = |port: u16, auth: &str| {
            send(
                port,
                &format!("POST /_larder/purge?tag=x HTTP/1.1\r\nHost: site.test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"),
            )
        };
        for p in [port, admin] {
            let (s, h, _) = purge(p, "");
            assert_eq!(s, 401);
            assert!(header(&h, "www-authenticate").is_some());
            assert_eq!(purge(p, "Authorization: Bearer wrong-token-0123456789\r\n").0, 401);
            assert_eq!(purge(p, &format!("Authorization: bearer{token}\r\n")).0, 401);
            assert_eq!(get_page(p, "/_larder/status", "").0, 401, "status shows the upstream");
            assert_eq!(get_page(p, "/_larder/metrics", "").0, 401);
            assert_eq!(get_page(p, "/_larder/stats.json", "").0, 401);
            let (s, _, b) = purge(p, &format!("Authorization: Bearer {token}\r\n"));
            assert_eq!(s, 200, "{b}");
            // The page itself holds no data.
            assert_eq!(get_page(p, "/_larder", "").0, 200);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_cache_flood_costs_the_origin_nothing() {
    let (up, origin) = origin().await;
    let p = start_proxy(up, "mem://", &[]);
    let port = p.port;
    client(move || {
        get_page(port, "/page", "");
        let floods: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || {
                    let extra = [
                        "Cache-Control: no-cache\r\n",
                        "Pragma: no-cache\r\n",
                        "Cache-Control: max-age=0\r\n",
                        "Cache-Control: no-store\r\n",
                    ][i];
                    for _ in 0..50 {
                        let (_, h, _) = get_page(port, "/page", extra);
                        assert_eq!(header(&h, "x-larder-cache"), Some("HIT"), "{extra}");
                    }
                })
            })
            .collect();
        for f in floods {
            f.join().unwrap();
        }
    })
    .await;
    assert_eq!(origin.count("/page"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_an_uncacheable_url_go_in_parallel() {
    let (up, origin) = origin().await;
    let p = start_proxy(up, "mem://", &[]);
    let port = p.port;
    client(move || {
        get_page(port, "/private", "");
        let burst: Vec<_> = (0..20)
            .map(|_| std::thread::spawn(move || get_page(port, "/private", "")))
            .collect();
        for b in burst {
            assert_eq!(b.join().unwrap().2, "yours");
        }
    })
    .await;
    assert_eq!(origin.count("/private"), 21);
    assert!(
        origin.most_in_flight.load(Ordering::SeqCst) >= 15,
        "the burst queued: at most {} at once",
        origin.most_in_flight.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_lossless_cookies_are_private_and_head_has_the_length() {
    let (up, origin) = origin().await;
    let p = start_proxy(up, "mem://", &["--default-ttl", "60"]);
    let port = p.port;
    client(move || {
        get_page(port, "/page?q=caf%E9", "");
        let (_, h, _) = get_page(port, "/page?q=caf%E8", "");
        assert_eq!(header(&h, "x-larder-cache"), Some("MISS"));
        get_page(port, "/page?x", "");
        let (_, h, _) = get_page(port, "/page?x=", "");
        assert_eq!(header(&h, "x-larder-cache"), Some("MISS"));

        get_page(port, "/anon", "Cookie: sessionid=alice\r\n");
        let (_, h, _) = get_page(port, "/anon", "");
        assert_eq!(
            header(&h, "x-larder-cache"),
            Some("MISS"),
            "alice's response was stored"
        );
        let (_, h, _) = get_page(port, "/anon", "");
        assert_eq!(header(&h, "x-larder-cache"), Some("HIT"));

        let (_, g, body) = get_page(port, "/page", "");
        let (s, h, b) = send(
            port,
            "HEAD /page HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        );
        assert_eq!((s, b.as_str()), (200, ""));
        assert_eq!(header(&h, "x-larder-cache"), Some("HIT"));
        assert_eq!(
            header(&h, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(header(&g, "content-length"), header(&h, "content-length"));
    })
    .await;
    assert_eq!(origin.count("/anon"), 2);
}

/// A Redis outage behind a busy proxy logs the outage, not every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_outage_is_logged_once_not_per_request() {
    let (up, _origin) = origin().await;
    let redis_port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = common::Running(
        Command::new("redis-server")
            .args([
                "--port",
                &redis_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    common::wait_until("redis", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", redis_port)).is_ok()
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    cmd.stderr(Stdio::piped()).env("RUST_LOG", "info");
    let mut p = start_proxy_with(cmd, up, &format!("redis://127.0.0.1:{redis_port}/0"), &[]);
    let stderr = p.child.0.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = std::thread::spawn({
        let lines = lines.clone();
        move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                lines.lock().unwrap().push(l);
            }
        }
    });
    let port = p.port;
    client(move || {
        assert_eq!(get_page(port, "/page", "").0, 200);
        let _ = redis.0.kill();
        let _ = redis.0.wait();
        let start = Instant::now();
        let mut n = 0;
        while start.elapsed() < Duration::from_secs(3) {
            let (s, _, _) = get_page(port, &format!("/page?n={n}"), "");
            assert_eq!(s, 200, "requests are served while the cache is down");
            n += 1;
        }
        assert!(n > 50, "only {n} requests");
    })
    .await;
    drop(p);
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let warnings = lines.iter().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings <= 10,
        "{warnings} warnings for one outage:\n{}",
        lines.join("\n")
    );
}
