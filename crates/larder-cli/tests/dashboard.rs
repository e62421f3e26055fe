//! The dashboard in a real browser: headless Chromium driven through
//! ChromeDriver (WebDriver over HTTP), on `larder demo` and on
//! `larder proxy` in front of it. The page must load, draw its charts, and
//! keep updating them. Chromium and ChromeDriver come from Debian
//! (`scripts/services` installs them); without them this test fails.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct WebDriver {
    base: String,
    session: String,
    _driver: Running,
}

impl WebDriver {
    fn start() -> WebDriver {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver; scripts/services does it)");
        let driver = Running(driver);
        let base = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"]}}}});
        let r = http(
            "POST",
            &format!("{base}/session"),
            "application/json",
            &caps.to_string(),
        );
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {}", r.body))
            .to_owned();
        WebDriver {
            base,
            session,
            _driver: driver,
        }
    }

    fn cmd(&self, path: &str, body: Value) -> Value {
        let r = http(
            "POST",
            &format!("{}/session/{}/{path}", self.base, self.session),
            "application/json",
            &body.to_string(),
        );
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.cmd("url", json!({ "url": url }));
    }

    fn eval(&self, script: &str) -> Value {
        self.cmd("execute/sync", json!({ "script": script, "args": [] }))
    }
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let _ = http(
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            "application/json",
            "",
        );
    }
}

const READ: &str = "return {
    updates: Number(document.body.dataset.updates),
    state: document.getElementById('state').textContent,
    charts: [...document.querySelectorAll('canvas')].map(c => ({id: c.id, points: Number(c.dataset.points), ink: Number(c.dataset.ink)})),
    rows: document.querySelectorAll('#counters tr').length,
};";

/// Loads `url`, then requires live updates and drawn charts.
fn check_dashboard(wd: &WebDriver, url: &str, expect_views: bool) {
    wd.goto(url);
    let mut first = Value::Null;
    wait_until("three dashboard updates", Duration::from_secs(20), || {
        first = wd.eval(READ);
        first["updates"].as_u64().unwrap_or(0) >= 3
    });
    assert!(
        first["state"].as_str().unwrap().starts_with("live"),
        "{first}"
    );
    for c in first["charts"].as_array().unwrap() {
        assert!(
            c["points"].as_u64().unwrap() > 0,
            "chart {} has no points: {first}",
            c["id"]
        );
        assert!(
            c["ink"].as_u64().unwrap() > 50,
            "chart {} drew nothing: {first}",
            c["id"]
        );
    }
    assert!(first["rows"].as_u64().unwrap() >= 4, "{first}");
    std::thread::sleep(Duration::from_millis(2500));
    let later = wd.eval(READ);
    assert!(
        later["updates"].as_u64() > first["updates"].as_u64(),
        "the dashboard stopped updating: {first} then {later}"
    );
    let points = |v: &Value, id: &str| {
        v["charts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()["points"]
            .as_u64()
            .unwrap()
    };
    assert!(
        points(&later, "lat") > points(&first, "lat"),
        "latency chart did not grow"
    );
    let text = wd.eval("return document.body.innerText;");
    let text = text.as_str().unwrap();
    assert!(
        text.contains("herd merges") && text.contains("breaker"),
        "{text}"
    );
    assert_eq!(text.contains("view backlog"), expect_views, "{text}");
}

#[test]
fn the_dashboard_renders_and_updates_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_demo, demo_url) = start_demo(dir.path(), &["--traffic", "20"]);
    let demo_port: u16 = demo_url.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = start_proxy(demo_port, "mem://", &[]);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let admin_url = format!("http://127.0.0.1:{}", proxy.admin);
    // Some traffic through the proxy, so its charts have something to say.
    for p in 1..20 {
        get(&format!("{proxy_url}/posts/{}", p % 5 + 1));
    }

    let wd = WebDriver::start();
    check_dashboard(&wd, &format!("{demo_url}/_larder"), true);
    check_dashboard(&wd, &format!("{admin_url}/_larder"), false);
    // A demo page through the browser, with its form.
    wd.goto(&format!("{demo_url}/posts/3"));
    let title = wd.eval("return document.querySelector('h1').textContent;");
    assert!(title.as_str().unwrap().starts_with("Post 3"), "{title}");
}
