//! Helpers for tests that run `larder demo` / `larder proxy` and talk to
//! them over plain HTTP/1.1.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http(method: &str, url: &str, content_type: &str, body: &str) -> Reply {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read the head, then exactly the body: not every server closes on
    // `Connection: close` (ChromeDriver keeps the socket open).
    let mut reader = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(n) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        let mut b = vec![0; n];
        reader.read_exact(&mut b).unwrap();
        String::from_utf8_lossy(&b).into_owned()
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut out = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut b = vec![0; n + 2];
            reader.read_exact(&mut b).unwrap();
            out.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    } else {
        let mut b = Vec::new();
        reader.read_to_end(&mut b).unwrap();
        String::from_utf8_lossy(&b).into_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str) -> Reply {
    http("GET", url, "text/plain", "")
}

pub fn post_form(url: &str, form: &str) -> Reply {
    http("POST", url, "application/x-www-form-urlencoded", form)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `larder demo` on a small data set in `dir`; returns it and its
/// base URL (read from the line it prints).
pub fn start_demo(dir: &std::path::Path, extra: &[&str]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--users",
            "50",
            "--posts",
            "300",
        ])
        .args(["--comments", "3000", "--likes", "2000"])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env_remove("LARDER_CACHE_URL")
        .env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG")
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn larder demo");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("larder demo exited before printing its URL")
            .unwrap();
        if let Some(rest) = line.strip_prefix("larder demo: ") {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('/')
                .to_owned();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (running, url)
}

/// A running `larder proxy`: its traffic and admin ports.
pub struct ProxyProcess {
    pub child: Running,
    pub port: u16,
    pub admin: u16,
}

/// Starts `larder proxy` in front of `upstream` (a port on 127.0.0.1) with
/// the cache `cache`, an admin listener on a free loopback port, and
/// `extra` flags; waits until both listeners accept.
pub fn start_proxy(upstream: u16, cache: &str, extra: &[&str]) -> ProxyProcess {
    start_proxy_with(
        Command::new(env!("CARGO_BIN_EXE_larder")),
        upstream,
        cache,
        extra,
    )
}

/// [`start_proxy`] with a prepared command (environment, a wrapper such
/// as `prlimit`, …); the proxy's own arguments are appended to it.
pub fn start_proxy_with(
    mut cmd: Command,
    upstream: u16,
    cache: &str,
    extra: &[&str],
) -> ProxyProcess {
    // Port 0 everywhere: the proxy binds and prints what it got. Picking a
    // free port here and passing it on races every other test binding ports
    // in between (CI saw "Address already in use" on the admin port).
    let mut child = cmd
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &format!("http://127.0.0.1:{upstream}"),
            "--cache",
            cache,
        ])
        .args(extra)
        .env_remove("LARDER_CACHE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn larder proxy");
    let stdout = child.stdout.take().unwrap();
    let child = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.starts_with("larder proxy: ") {
                sent = tx.send(line).is_ok();
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("larder proxy exited or stayed silent instead of printing its addresses");
    let port_of = |url: &str| -> u16 {
        let rest = url.trim_start_matches("http://");
        let hostport = rest.split('/').next().unwrap();
        hostport.rsplit(':').next().unwrap().parse().unwrap()
    };
    // "larder proxy: http://A -> UP (cache C); admin http://B/_larder"
    let port = port_of(line.split_whitespace().nth(2).unwrap());
    let admin_url = line.rsplit("admin ").next().unwrap();
    let admin = if admin_url == "off" {
        0
    } else {
        port_of(admin_url)
    };
    wait_until("the proxy", Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    ProxyProcess { child, port, admin }
}

/// Sends `raw` bytes as they are on a new connection and reads the reply
/// until the server closes or `wait` passes with nothing more: (status,
/// headers lowercased, body). Status 0: no response at all.
pub fn raw(port: u16, raw: &[u8], wait: Duration) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    parse_reply(&buf)
}

/// Reads one response out of raw bytes (see [`raw`]).
pub fn parse_reply(buf: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
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

/// The value of header `name` in headers from [`raw`].
pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}
