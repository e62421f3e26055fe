//! `larder proxy` in front of a real upstream (an axum server in this
//! test), spoken to over plain TCP as a browser would.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing;
use axum::Router;

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 exchange; returns (status, headers lowercased, body).
fn http(port: u16, raw: &str) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn get(port: u16, path: &str) -> (u16, Vec<(String, String)>, String) {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_caches_forwards_unchanged_and_serves_its_own_paths() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let upstream = Router::new()
        .route(
            "/page",
            routing::get(move || {
                let c = c.clone();
                async move {
                    let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                    ([("cache-control", "max-age=60")], format!("page {n}"))
                }
            })
            .post(|headers: HeaderMap, body: String| async move {
                let dropped = headers.contains_key("x-drop-me");
                let custom = headers
                    .get("x-custom")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                format!("got {body:?} custom={custom} dropped-header-seen={dropped}")
            }),
        )
        .route(
            "/_larder/secret",
            routing::get(|| async { "forwarded: wrong" }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });

    let port = free_port();
    let _proxy = Proxy(
        Command::new(env!("CARGO_BIN_EXE_larder"))
            .args([
                "proxy",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                &format!("http://127.0.0.1:{up_port}"),
                "--cache",
                "mem://",
            ])
            .env_remove("LARDER_CACHE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "the proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    tokio::task::spawn_blocking(move || {
        let (s, h, b) = get(port, "/page");
        assert_eq!((s, b.as_str()), (200, "page 1"));
        assert_eq!(header(&h, "x-larder-cache"), Some("MISS"));
        let (_, h, b) = get(port, "/page");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("HIT"), "page 1"));

        // Method, body and end-to-end headers go through; hop-by-hop do not.
        let (s, _, b) = http(
            port,
            "POST /page HTTP/1.1\r\nHost: site.test\r\nConnection: close, x-drop-me\r\nx-drop-me: 1\r\nx-custom: kept\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(s, 200);
        assert_eq!(b, "got \"hello\" custom=kept dropped-header-seen=false");
        // ... and the POST invalidated the page.
        let (_, h, b) = get(port, "/page");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("MISS"), "page 2"));

        // Own paths are answered by the proxy, never forwarded.
        let (s, h, b) = get(port, "/_larder/status");
        assert_eq!(s, 200);
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        assert!(b.contains("\"hits\": 1"), "{b}");
        let (_, _, b) = get(port, "/_larder/metrics");
        assert!(b.contains("larder_proxy_requests_total{cache=\"hit\"} 1"), "{b}");
        let (s, _, _) = get(port, "/_larder/secret");
        assert_eq!(s, 404);
        // Purge by URL.
        let (s, _, _) = http(port, "POST /_larder/purge?url=/page&host=site.test HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(s, 200);
        let (_, h, b) = get(port, "/page");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("MISS"), "page 3"));
        let (s, _, _) = http(port, "POST /_larder/purge HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(s, 400, "a purge without tag or url is refused");
    })
    .await
    .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[test]
fn a_bad_upstream_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["proxy", "--upstream", "ftp://x", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be http://host:port"));
}

fn start_proxy(port: u16, upstream: u16, cache: &str) -> Proxy {
    let p = Proxy(
        Command::new(env!("CARGO_BIN_EXE_larder"))
            .args([
                "proxy",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                &format!("http://127.0.0.1:{upstream}"),
                "--cache",
                cache,
            ])
            .env_remove("LARDER_CACHE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "the proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// Two proxy processes share Redis: what one stores the other serves, and
/// a purge by tag through one reaches the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_tag_reaches_another_process_sharing_redis() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let upstream = Router::new().route(
        "/post/42",
        routing::get(move || {
            let c = c.clone();
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    [
                        ("cache-control", "max-age=300"),
                        ("cache-tag", "post:42 author:7"),
                    ],
                    format!("post 42, render {n}"),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let prefix = format!("proxytest{}", std::process::id());
    let cache = format!("redis://127.0.0.1:6379/0?key_prefix={prefix}");
    let (pa, pb) = (free_port(), free_port());
    let _a = start_proxy(pa, up_port, &cache);
    let _b = start_proxy(pb, up_port, &cache);
    tokio::task::spawn_blocking(move || {
        let (_, h, b) = get(pa, "/post/42");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("MISS"), "post 42, render 1"));
        assert_eq!(header(&h, "cache-tag"), None, "tags are stripped");
        let (_, h, b) = get(pb, "/post/42");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("HIT"), "post 42, render 1"));
        let (s, _, _) = http(pb, "POST /_larder/purge?tag=author:7 HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(s, 200);
        std::thread::sleep(Duration::from_millis(5));
        let (_, h, b) = get(pa, "/post/42");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("MISS"), "post 42, render 2"));
        let (_, h, _) = get(pb, "/post/42");
        assert_eq!(header(&h, "x-larder-cache"), Some("HIT"));
    })
    .await
    .unwrap();
    let cleanup = larder::open(&cache).await.unwrap();
    cleanup.clear().await.unwrap();
}
