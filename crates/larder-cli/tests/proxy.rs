//! `larder proxy` in front of a real upstream (an axum server in this
//! test), spoken to over plain TCP as a browser would.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing;
use axum::Router;
use common::{header, raw, start_proxy};

fn req(port: u16, text: &str) -> (u16, Vec<(String, String)>, String) {
    raw(port, text.as_bytes(), Duration::from_secs(10))
}

fn get(port: u16, path: &str) -> (u16, Vec<(String, String)>, String) {
    req(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n"),
    )
}

fn post(port: u16, path: &str) -> (u16, Vec<(String, String)>, String) {
    req(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ),
    )
}

async fn serve(upstream: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_caches_forwards_unchanged_and_serves_its_own_paths_apart() {
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
                let xff = headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let via = headers
                    .get("via")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let proto = headers
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                format!(
                    "got {body:?} custom={custom} dropped-header-seen={dropped} xff={xff} proto={proto} via={via}"
                )
            }),
        )
        .route(
            "/_larder/secret",
            routing::get(|| async { "forwarded: wrong" }),
        );
    let up_port = serve(upstream).await;
    let proxy = start_proxy(up_port, "mem://", &[]);
    let (port, admin) = (proxy.port, proxy.admin);

    tokio::task::spawn_blocking(move || {
        let (s, h, b) = get(port, "/page");
        assert_eq!((s, b.as_str()), (200, "page 1"));
        assert_eq!(header(&h, "x-larder-cache"), Some("MISS"));
        let (_, h, b) = get(port, "/page");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("HIT"), "page 1"));

        // Method, body and end-to-end headers go through; hop-by-hop do not;
        // X-Forwarded-For gets the client's address appended, and
        // X-Forwarded-Proto says what the client really used.
        let (s, _, b) = req(
            port,
            "POST /page HTTP/1.1\r\nHost: site.test\r\nConnection: close, x-drop-me\r\nx-drop-me: 1\r\nx-custom: kept\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(s, 200);
        assert_eq!(
            b,
            "got \"hello\" custom=kept dropped-header-seen=false xff=203.0.113.9, 127.0.0.1 proto=http via=1.1 larder"
        );
        // ... and the POST invalidated the page.
        let (_, h, b) = get(port, "/page");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("MISS"), "page 2"));

        // Own paths are on the admin listener only, never forwarded.
        for path in ["/_larder/status", "/_larder/metrics", "/_larder", "/_larder/secret"] {
            let (s, _, b) = get(port, path);
            assert_eq!(s, 404, "{path} on the traffic port: {b}");
        }
        let (s, _, _) = post(port, "/_larder/purge?url=/page&host=site.test");
        assert_eq!(s, 404, "no purge on the traffic port");
        let (s, h, b) = get(admin, "/_larder/status");
        assert_eq!(s, 200);
        assert_eq!(header(&h, "content-type"), Some("application/json"));
        assert!(b.contains("\"hits\": 1"), "{b}");
        let (_, _, b) = get(admin, "/_larder/metrics");
        assert!(b.contains("larder_proxy_requests_total{cache=\"hit\"} 1"), "{b}");
        // Purge by URL says what it did.
        let (s, _, b) = post(admin, "/_larder/purge?url=/page&host=site.test");
        assert_eq!(s, 200);
        assert!(b.contains("\"matched\":true"), "{b}");
        let (_, h, b) = get(port, "/page");
        assert_eq!((header(&h, "x-larder-cache"), b.as_str()), (Some("MISS"), "page 3"));
        let (s, _, b) = post(admin, "/_larder/purge?url=http://site.test/page");
        assert!(s == 200 && b.contains("\"matched\":true"), "an absolute url names its host: {b}");
        let (s, _, b) = post(admin, "/_larder/purge?url=/page&host=site.test");
        assert!(s == 200 && b.contains("\"matched\":false"), "{b}");
        for bad in ["", "?url=/page", "?tag=", "?tag=a&url=/p&host=h", "?what=1"] {
            let (s, _, b) = post(admin, &format!("/_larder/purge{bad}"));
            assert_eq!(s, 400, "{bad}: {b}");
        }
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

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["proxy", "--upstream", "http://127.0.0.1:1"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .env_remove("LARDER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin token"));
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["proxy", "--upstream", "http://127.0.0.1:1"])
        .args(["--listen", "127.0.0.1:0", "--admin-on-traffic"])
        .env_remove("LARDER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
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
    let up_port = serve(upstream).await;
    let prefix = format!("proxytest{}", std::process::id());
    let cache = format!("redis://127.0.0.1:6379/0?key_prefix={prefix}");
    let a = start_proxy(up_port, &cache, &[]);
    let b = start_proxy(up_port, &cache, &[]);
    let (pa, pb, admin_b) = (a.port, b.port, b.admin);
    tokio::task::spawn_blocking(move || {
        let (_, h, body) = get(pa, "/post/42");
        assert_eq!(
            (header(&h, "x-larder-cache"), body.as_str()),
            (Some("MISS"), "post 42, render 1")
        );
        assert_eq!(header(&h, "cache-tag"), None, "tags are stripped");
        let (_, h, body) = get(pb, "/post/42");
        assert_eq!(
            (header(&h, "x-larder-cache"), body.as_str()),
            (Some("HIT"), "post 42, render 1")
        );
        let (s, _, body) = post(admin_b, "/_larder/purge?tag=author:7");
        assert_eq!(s, 200);
        assert!(body.contains("\"matched\":true"), "{body}");
        std::thread::sleep(Duration::from_millis(5));
        let (_, h, body) = get(pa, "/post/42");
        assert_eq!(
            (header(&h, "x-larder-cache"), body.as_str()),
            (Some("MISS"), "post 42, render 2")
        );
        let (_, h, _) = get(pb, "/post/42");
        assert_eq!(header(&h, "x-larder-cache"), Some("HIT"));
        let (s, _, body) = post(admin_b, "/_larder/purge?tag=never-used");
        assert!(s == 200 && body.contains("\"matched\":false"), "{body}");
    })
    .await
    .unwrap();
    // Purge records expire: none is kept forever.
    let redis = redis::Client::open("redis://127.0.0.1:6379/0").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{k} has no expiry ({ttl})");
    }
    let cleanup = larder::open(&cache).await.unwrap();
    cleanup.clear().await.unwrap();
}

/// stale-if-error covers an origin that fails at the transport level, not
/// only one that answers 5xx: a connection closed before any response,
/// then a connection refused, both get the stored stale response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_covers_closed_and_refused_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().port();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failing.clone();
    let origin = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            if f.load(Ordering::SeqCst) {
                drop(conn); // closed before any byte of a response
                continue;
            }
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let body = "the stored page";
            let _ = conn
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncache-control: max-age=1, stale-if-error=60\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let proxy = start_proxy(upstream, "mem://", &[]);
    let (s, h, b) = tokio::task::spawn_blocking(move || get(proxy.port, "/page"))
        .await
        .unwrap();
    assert_eq!((s, b.as_str()), (200, "the stored page"));
    assert_eq!(header(&h, "x-larder-cache"), Some("MISS"));
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    failing.store(true, Ordering::SeqCst);
    let port = proxy.port;
    let (s, h, b) = tokio::task::spawn_blocking(move || get(port, "/page"))
        .await
        .unwrap();
    assert_eq!((s, b.as_str()), (200, "the stored page"), "{h:?}");
    assert_eq!(header(&h, "x-larder-cache"), Some("STALE"));

    origin.abort();
    let _ = origin.await;
    // The listener is gone with the task: connections are refused now.
    assert!(std::net::TcpStream::connect(("127.0.0.1", upstream)).is_err());
    let (s, h, b) = tokio::task::spawn_blocking(move || get(port, "/page"))
        .await
        .unwrap();
    assert_eq!((s, b.as_str()), (200, "the stored page"), "{h:?}");
    assert_eq!(header(&h, "x-larder-cache"), Some("STALE"));
    drop(proxy);
}

/// `--target-field` and `--cdn` reach the cache: the proxy's own field
/// decides over `private` and never reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_target_field_decides_and_is_stripped() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let upstream = Router::new().route(
        "/page",
        routing::get(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                (
                    [
                        ("cache-control", "private"),
                        ("larder-cache-control", "max-age=60"),
                        ("cdn-cache-control", "max-age=5"),
                    ],
                    "for the proxy",
                )
            }
        }),
    );
    let upstream = serve(upstream).await;
    let proxy = start_proxy(
        upstream,
        "mem://",
        &["--target-field", "Larder-Cache-Control", "--cdn"],
    );
    let port = proxy.port;
    let (first, second) =
        tokio::task::spawn_blocking(move || (get(port, "/page"), get(port, "/page")))
            .await
            .unwrap();
    assert_eq!(header(&second.1, "x-larder-cache"), Some("HIT"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for (_, h, _) in [&first, &second] {
        assert_eq!(header(h, "cache-control"), Some("private"));
        assert_eq!(header(h, "larder-cache-control"), None);
        assert_eq!(header(h, "cdn-cache-control"), Some("max-age=5"));
    }
    drop(proxy);
}

/// One response read off a connection: status, headers, body.
type Parsed = (u16, Vec<(String, String)>, Vec<u8>);

/// Responses read in order off one connection's bytes, 1xx included.
/// Bodies by Content-Length or chunked.
fn responses(mut bytes: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let (status, headers, _) = common::parse_reply(&bytes[..end + 4]);
        bytes = &bytes[end + 4..];
        let mut body = Vec::new();
        if status >= 200 {
            if let Some(n) = header(&headers, "content-length") {
                let n: usize = n.parse().unwrap();
                assert!(bytes.len() >= n, "a body cut short");
                body = bytes[..n].to_vec();
                bytes = &bytes[n..];
            } else if header(&headers, "transfer-encoding") == Some("chunked") {
                loop {
                    let line = bytes.windows(2).position(|w| w == b"\r\n").unwrap();
                    let size = std::str::from_utf8(&bytes[..line]).unwrap();
                    let size = usize::from_str_radix(size.trim(), 16)
                        .unwrap_or_else(|_| panic!("not a chunk size: {size:?}"));
                    bytes = &bytes[line + 2..];
                    if size == 0 {
                        bytes = &bytes[2..];
                        break;
                    }
                    body.extend_from_slice(&bytes[..size]);
                    assert_eq!(&bytes[size..size + 2], b"\r\n", "chunk framing broken");
                    bytes = &bytes[size + 2..];
                }
            }
        }
        out.push((status, headers, body));
    }
    assert!(bytes.is_empty(), "bytes after the last response: {bytes:?}");
    out
}

/// 1xx interim responses from the origin (103 Early Hints) reach an
/// HTTP/1.1 client before the final response, as soon as the origin sends
/// them; never an HTTP/1.0 client, never a cached hit; and never inside
/// another response on the connection (a pipelined request's 103 waits
/// for the response before it to be written whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_forwarded_between_whole_responses() {
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BIG: usize = 4 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().port();
    // Each /hints request's final response waits for one permit.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let (r, c) = (release.clone(), calls.clone());
    let origin = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let (r, c) = (r.clone(), c.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 4096];
                loop {
                    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&got[..end]).into_owned();
                    got.drain(..end + 4);
                    c.fetch_add(1, Ordering::SeqCst);
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    if path == "/big" {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-length: {BIG}\r\n\r\n"
                        );
                        if conn.write_all(head.as_bytes()).await.is_err()
                            || conn.write_all(&vec![b'x'; BIG]).await.is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    if path == "/burst" {
                        // The 103 and the final response in one write:
                        // they reach the proxy together.
                        let both = "HTTP/1.1 103 Early Hints\r\nlink: </b.js>; rel=preload\r\n\r\n\
                                    HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-length: 5\r\n\r\nburst";
                        if conn.write_all(both.as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let hints =
                        "HTTP/1.1 103 Early Hints\r\nlink: </app.css>; rel=preload; as=style\r\n\
                                 connection: x-hop\r\nx-hop: dropped\r\n\r\n";
                    if conn.write_all(hints.as_bytes()).await.is_err() {
                        return;
                    }
                    r.acquire().await.unwrap().forget();
                    let cc = if path == "/cached" {
                        "max-age=60"
                    } else {
                        "no-store"
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncache-control: {cc}\r\ncontent-length: 5\r\n\r\nfinal"
                    );
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = start_proxy(upstream, "mem://", &[]);
    let port = proxy.port;
    let read_all = |mut s: std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    };

    // HTTP/1.1: the 103 arrives while the origin still holds the final
    // response (it is released only once the client has read the 103).
    let rel = release.clone();
    let all = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /hints HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut first = Vec::new();
        let mut chunk = [0u8; 4096];
        while !first.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s
                .read(&mut chunk)
                .expect("the 103 before the final response");
            assert!(n > 0, "closed before any response");
            first.extend_from_slice(&chunk[..n]);
        }
        rel.add_permits(1);
        first.extend(read_all(s));
        first
    })
    .await
    .unwrap();
    let got = responses(&all);
    assert_eq!(got.len(), 2, "{}", String::from_utf8_lossy(&all));
    assert_eq!(got[0].0, 103);
    assert_eq!(
        header(&got[0].1, "link"),
        Some("</app.css>; rel=preload; as=style")
    );
    assert_eq!(
        header(&got[0].1, "x-hop"),
        None,
        "hop-by-hop field forwarded"
    );
    assert_eq!((got[1].0, got[1].2.as_slice()), (200, &b"final"[..]));

    // A 103 that comes with the final response still goes first.
    for _ in 0..20 {
        let all = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /burst HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
                .unwrap();
            read_all(s)
        })
        .await
        .unwrap();
        let got = responses(&all);
        assert_eq!(
            got.iter().map(|r| r.0).collect::<Vec<_>>(),
            [103, 200],
            "{}",
            String::from_utf8_lossy(&all)
        );
        assert_eq!(got[1].2, b"burst");
    }

    // HTTP/1.0: no 1xx (RFC 9110 §15.2).
    release.add_permits(1);
    let all = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /hints HTTP/1.0\r\nHost: site.test\r\n\r\n")
            .unwrap();
        read_all(s)
    })
    .await
    .unwrap();
    let got = responses(&all);
    assert_eq!(got.len(), 1, "{}", String::from_utf8_lossy(&all));
    assert_eq!((got[0].0, got[0].2.as_slice()), (200, &b"final"[..]));

    // Pipelined behind a 4 MB response the client is slow to read: the
    // second request's 103 comes out after that body, whole, and before
    // its own final response.
    release.add_permits(1);
    let all = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(
            b"GET /big HTTP/1.1\r\nHost: site.test\r\n\r\n\
              GET /hints HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        // Let the 103 come while the big body is stuck in full buffers.
        std::thread::sleep(Duration::from_millis(500));
        read_all(s)
    })
    .await
    .unwrap();
    let got = responses(&all);
    let statuses: Vec<u16> = got.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 103, 200]);
    assert_eq!(got[0].2.len(), BIG);
    assert!(
        got[0].2.iter().all(|&b| b == b'x'),
        "the big body was corrupted"
    );
    assert_eq!(got[2].2, b"final");

    // A cached response: the MISS brings the 103, the HIT none (and no
    // origin request).
    release.add_permits(1);
    let one = move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /cached HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        read_all(s)
    };
    let miss = tokio::task::spawn_blocking(one).await.unwrap();
    let before = calls.load(Ordering::SeqCst);
    let hit = tokio::task::spawn_blocking(one).await.unwrap();
    let (miss, hit) = (responses(&miss), responses(&hit));
    assert_eq!(miss.iter().map(|r| r.0).collect::<Vec<_>>(), [103, 200]);
    assert_eq!(hit.len(), 1);
    assert_eq!(header(&hit[0].1, "x-larder-cache"), Some("HIT"));
    assert_eq!(calls.load(Ordering::SeqCst), before);
    origin.abort();
    drop(proxy);
}
