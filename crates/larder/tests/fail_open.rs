//! Fail-open: deadlines, the circuit breaker, reads that treat a failing
//! cache as a miss, and get_or_compute surviving real servers being killed
//! and restarted (on ports of their own) in the middle of a run.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder::backend::{async_trait, Backend, Bytes, Capabilities, ClearScope, Expiry};
use larder::prelude::*;
use larder::{BreakerConfig, BreakerState};

/// A map that can be switched to failing or slow.
#[derive(Default)]
struct Flaky {
    map: Mutex<HashMap<String, Bytes>>,
    down: AtomicBool,
    delay_ms: AtomicU64,
    calls: AtomicU32,
}

impl Flaky {
    async fn enter(&self) -> larder::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let d = self.delay_ms.load(Ordering::SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::backend("flaky", "connection refused"));
        }
        Ok(())
    }
}

/// The backend face of a shared [`Flaky`].
struct FlakyBackend(Arc<Flaky>);

#[async_trait]
impl Backend for FlakyBackend {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_shared(true)
    }
    async fn get(&self, key: &str) -> larder::Result<Option<Bytes>> {
        self.0.enter().await?;
        Ok(self.0.map.lock().unwrap().get(key).cloned())
    }
    async fn set(&self, key: &str, value: Bytes, _ttl: Expiry) -> larder::Result<()> {
        self.0.enter().await?;
        self.0.map.lock().unwrap().insert(key.to_owned(), value);
        Ok(())
    }
    async fn add(&self, key: &str, value: Bytes, _ttl: Expiry) -> larder::Result<bool> {
        self.0.enter().await?;
        let mut m = self.0.map.lock().unwrap();
        if m.contains_key(key) {
            return Ok(false);
        }
        m.insert(key.to_owned(), value);
        Ok(true)
    }
    async fn delete(&self, key: &str) -> larder::Result<bool> {
        self.0.enter().await?;
        Ok(self.0.map.lock().unwrap().remove(key).is_some())
    }
    async fn incr(&self, key: &str, _delta: i64) -> larder::Result<i64> {
        self.0.enter().await?;
        Err(Error::NotFound { key: key.into() })
    }
    async fn touch(&self, key: &str, _ttl: Expiry) -> larder::Result<bool> {
        self.0.enter().await?;
        Ok(self.0.map.lock().unwrap().contains_key(key))
    }
    async fn clear(&self, _scope: ClearScope<'_>) -> larder::Result<()> {
        self.0.enter().await?;
        self.0.map.lock().unwrap().clear();
        Ok(())
    }
}

fn flaky_cache(flaky: &Arc<Flaky>, fail_open: bool) -> Cache {
    Cache::builder(FlakyBackend(flaky.clone()))
        .fail_open(fail_open)
        .breaker(BreakerConfig::disabled())
        .build()
        .unwrap()
}

#[tokio::test]
async fn raw_api_reports_failures_and_fail_open_reads_miss() {
    let flaky = Arc::new(Flaky::default());
    let strict = flaky_cache(&flaky, false);
    let lenient = flaky_cache(&flaky, true);
    strict.set("k", "v", Ttl::secs(60)).await.unwrap();
    flaky.down.store(true, Ordering::SeqCst);
    assert!(strict
        .get::<String>("k")
        .await
        .unwrap_err()
        .is_backend_failure());
    assert!(strict.set("k", "v", Ttl::secs(60)).await.is_err());
    assert_eq!(lenient.get::<String>("k").await.unwrap(), None);
    assert!(!lenient.has_key("k").await.unwrap());
    assert!(lenient
        .get_many::<String, _>(&["k"])
        .await
        .unwrap()
        .is_empty());
    // Writes still report the failure under fail-open.
    assert!(lenient.set("k", "v", Ttl::secs(60)).await.is_err());
}

#[tokio::test]
async fn get_or_compute_returns_the_loader_value_when_the_cache_is_down() {
    let flaky = Arc::new(Flaky::default());
    let cache = flaky_cache(&flaky, false);
    flaky.down.store(true, Ordering::SeqCst);
    for i in 0..5 {
        let v: u32 = cache
            .get_or_compute("k", Ttl::secs(60), || async move { Ok::<_, Error>(i) })
            .await
            .unwrap();
        assert_eq!(v, i, "computed every time while the cache is down");
    }
    flaky.down.store(false, Ordering::SeqCst);
    let v: u32 = cache
        .get_or_compute("k", Ttl::secs(60), || async { Ok::<_, Error>(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(
        cache.get::<u32>("k").await.unwrap(),
        Some(7),
        "stored once back"
    );
}

#[tokio::test]
async fn the_deadline_turns_a_slow_call_into_a_timeout() {
    let flaky = Arc::new(Flaky::default());
    let cache = Cache::builder(FlakyBackend(flaky.clone()))
        .deadline(Some(Duration::from_millis(50)))
        .breaker(BreakerConfig::disabled())
        .build()
        .unwrap();
    flaky.delay_ms.store(2_000, Ordering::SeqCst);
    let started = Instant::now();
    let e = cache.get::<String>("k").await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(1_500));
    // get_or_compute does not wait for the slow cache either.
    let v: u8 = cache
        .get_or_compute("k", Ttl::secs(60), || async { Ok::<_, Error>(1) })
        .await
        .unwrap();
    assert_eq!(v, 1);
}

#[tokio::test]
async fn the_breaker_opens_skips_the_backend_then_closes_after_a_probe() {
    let flaky = Arc::new(Flaky::default());
    let cache = Cache::builder(FlakyBackend(flaky.clone()))
        .breaker(
            BreakerConfig::default()
                .failure_threshold(3)
                .cool_down(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    flaky.down.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(cache.get::<String>("k").await.is_err());
    }
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let before = flaky.calls.load(Ordering::SeqCst);
    let e = cache.get::<String>("k").await.unwrap_err();
    assert!(matches!(e, Error::CircuitOpen { .. }), "{e:?}");
    assert_eq!(
        flaky.calls.load(Ordering::SeqCst),
        before,
        "an open breaker skips the backend"
    );
    flaky.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(cache.breaker_state(), BreakerState::HalfOpen);
    assert_eq!(cache.get::<String>("k").await.unwrap(), None);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
}

// ------------------------------------------------ real servers, killed

/// A server process of our own on its own port, killed and restarted at will.
struct Server {
    program: &'static str,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn redis(port: u16) -> Server {
        let args = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .map(String::from)
        .to_vec();
        Server::start("redis-server", args, port)
    }

    fn memcached(port: u16) -> Server {
        let mut args = ["-p", &port.to_string(), "-l", "127.0.0.1", "-U", "0"]
            .map(String::from)
            .to_vec();
        // memcached refuses to run as root without -u.
        if running_as_root() {
            args.extend(["-u".to_owned(), "root".to_owned()]);
        }
        Server::start("memcached", args, port)
    }

    fn start(program: &'static str, args: Vec<String>, port: u16) -> Server {
        let mut s = Server {
            program,
            args,
            port,
            child: None,
        };
        s.restart();
        s
    }

    fn restart(&mut self) {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (run ./scripts/services to install it): {e}",
                    self.program
                )
            });
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < until,
                "{} did not start on {}",
                self.program,
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Eight workers call get_or_compute on 20 keys for `run`; the server is
/// killed at `kill_at` and restarted at `restart_at`. No call may fail, and
/// afterwards the breaker closes and values are cached again.
async fn survive_a_killed_server(
    url: &str,
    mut server: Server,
    run: Duration,
    kill_at: Duration,
    restart_at: Duration,
) {
    let cache = Cache::from_url(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let cache = Cache::builder_arc(cache.backend().clone())
        .key_prefix(format!("failopen{}", std::process::id()))
        .breaker(
            BreakerConfig::default()
                .failure_threshold(3)
                .cool_down(Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let calls = Arc::new(AtomicU32::new(0));
    let computed = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for w in 0..8u32 {
        let (cache, calls, computed) = (cache.clone(), calls.clone(), computed.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while started.elapsed() < run {
                i = (i + 7) % 20;
                let key = format!("k{i}");
                let computed = computed.clone();
                let v: String = cache
                    .get_or_compute(&key, Ttl::secs(60), move || async move {
                        computed.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Error>(format!("value {i}"))
                    })
                    .await
                    .expect("get_or_compute failed while the cache was down");
                assert_eq!(v, format!("value {i}"));
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(kill_at).await;
    server.kill();
    let mut saw_open = false;
    while started.elapsed() < restart_at {
        saw_open |= cache.breaker_state() != BreakerState::Closed;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart();
    for w in workers {
        w.await.expect("a worker failed");
    }
    assert!(
        saw_open,
        "the breaker never opened while the server was dead"
    );
    // The breaker closes again and the cache stores again.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let stored = cache.set("probe", "x", Ttl::secs(60)).await.is_ok();
        if stored
            && cache.breaker_state() == BreakerState::Closed
            && cache.get::<String>("probe").await.ok().flatten().as_deref() == Some("x")
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "the cache did not come back after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n = calls.load(Ordering::SeqCst);
    assert!(n > 100, "only {n} calls ran");
    let c = computed.load(Ordering::SeqCst);
    assert!(
        c < n,
        "nothing was ever served from the cache ({c} computations for {n} calls)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_run() {
    let server = Server::redis(27301);
    survive_a_killed_server(
        "redis://127.0.0.1:27301/0",
        server,
        Duration::from_secs(4),
        Duration::from_millis(1000),
        Duration::from_millis(2200),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_killed_and_restarted_mid_run() {
    let server = Server::memcached(21301);
    survive_a_killed_server(
        "memcached://127.0.0.1:21301",
        server,
        Duration::from_secs(4),
        Duration::from_millis(1000),
        Duration::from_millis(2200),
    )
    .await;
}
