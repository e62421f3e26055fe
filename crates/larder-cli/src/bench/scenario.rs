//! `larder bench --scenario …`: stampede and outage scenarios, reported like
//! `peers/django/stampede.py` so the JSON files compare one to one.
//!
//! - `herd`: N callers in one process right after expiry, a slow origin.
//! - `multi-process-herd`: P processes × N callers on one shared cache.
//! - `hot-key`: steady load on one key whose value expires every TTL, with
//!   and without early refresh + stale-while-revalidate.
//! - `cache-down`: steady load while the cache server is killed and
//!   restarted.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use larder::{BreakerConfig, Cache, ComputeOptions, Error, Ttl};

use super::{machine, targets_for, utc, BenchArgs};
use crate::CliError;

/// The scenarios of `--scenario`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// N concurrent callers right after expiry (Django's stampede.py).
    Herd,
    /// P processes × N callers on one shared cache.
    MultiProcessHerd,
    /// Steady load on a hot key that expires every TTL.
    HotKey,
    /// Steady load while the cache server is killed and restarted.
    CacheDown,
    /// One process of `multi-process-herd` (started by it).
    #[value(hide = true)]
    HerdWorker,
}

const KEY: &str = "djb:stampede:value";
const PAYLOAD_BYTES: usize = 1024;

fn payload() -> Vec<u8> {
    vec![b'x'; PAYLOAD_BYTES]
}

/// Linear-interpolated percentile, as stampede.py computes it.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = (sorted.len() - 1) as f64 * p / 100.0;
    let lo = k as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64)
}

/// Seconds to milliseconds, kept to the microsecond (memory-cache hits
/// are a few µs).
fn ms(x: f64) -> f64 {
    (x * 1e6).round() / 1000.0
}

fn latency_json(mut lat: Vec<f64>) -> serde_json::Value {
    lat.sort_by(f64::total_cmp);
    serde_json::json!({
        "p50": ms(pct(&lat, 50.0)),
        "p90": ms(pct(&lat, 90.0)),
        "p99": ms(pct(&lat, 99.0)),
        "max": ms(lat.last().copied().unwrap_or(f64::NAN)),
        "samples": lat.len(),
    })
}

/// The slow origin: sleeps, counts its calls.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicU64>,
    /// When each computation started (seconds since the scenario began).
    starts: Arc<Mutex<Vec<f64>>>,
}

impl Origin {
    async fn compute(&self, sleep: Duration, epoch: Instant) -> Result<Vec<u8>, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(epoch.elapsed().as_secs_f64());
        tokio::time::sleep(sleep).await;
        Ok(payload())
    }
    fn take(&self) -> u64 {
        self.calls.swap(0, Ordering::SeqCst)
    }
}

pub fn run(args: &BenchArgs, scenario: Scenario) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    if scenario == Scenario::HerdWorker {
        return rt.block_on(herd_worker(args));
    }
    let started = SystemTime::now();
    let wall = Instant::now();
    let temp_dir = std::env::temp_dir().join(format!("larder-scenario-{}", std::process::id()));
    let file_dir = args.file_dir.clone().unwrap_or_else(|| temp_dir.clone());
    let targets = targets_for(args, &file_dir)?;
    let mut results = Vec::new();
    for t in &targets {
        let r = match scenario {
            Scenario::Herd => rt.block_on(herd(args, &t.name, &t.url)),
            Scenario::MultiProcessHerd => rt.block_on(multi_process_herd(args, &t.name, &t.url)),
            Scenario::HotKey => rt.block_on(hot_key(args, &t.name, &t.url)),
            Scenario::CacheDown => rt.block_on(cache_down(args, &t.name, &t.url)),
            Scenario::HerdWorker => unreachable!("handled above"),
        };
        match r {
            Ok(v) => results.extend(v),
            Err(e) => {
                eprintln!("# {}: {e}", t.name);
                results.push(serde_json::json!({ "backend": t.name, "error": e.to_string() }));
            }
        }
    }
    if args.file_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp_dir);
    }
    print_summary(scenario, &results);
    let doc = serde_json::json!({
        "benchmark": format!("larder_{}", scenario_name(scenario)),
        "date_utc": utc(started),
        "wall_seconds": (wall.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "machine": machine(),
        "versions": { "larder": env!("CARGO_PKG_VERSION") },
        "urls": targets.iter().map(|t| (t.name.clone(), t.url.clone())).collect::<std::collections::BTreeMap<_, _>>(),
        "results": results,
    });
    super::write_json(&args.out, &doc)
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Herd => "stampede",
        Scenario::MultiProcessHerd => "multi_process_stampede",
        Scenario::HotKey => "hot_key",
        Scenario::CacheDown => "cache_down",
        Scenario::HerdWorker => "herd_worker",
    }
}

fn print_summary(s: Scenario, results: &[serde_json::Value]) {
    println!("\n{} ({} rows)", scenario_name(s), results.len());
    for r in results {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
    }
}

async fn open(url: &str, prefix: &str) -> Result<Cache, Error> {
    let base = larder::open(url).await?;
    Cache::builder_arc(base.backend().clone())
        .key_prefix(prefix)
        .build()
}

/// Sets the key with a 1 s TTL and waits until it has expired, as
/// stampede.py does before each round.
async fn set_and_wait_expiry(cache: &Cache, ttl: Ttl) -> Result<f64, Error> {
    cache.set(KEY, &payload(), ttl).await?;
    let t = Instant::now();
    while cache.get::<Vec<u8>>(KEY).await?.is_some() {
        if t.elapsed() > Duration::from_secs(5) {
            return Err(Error::config("value did not expire"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(t.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------- herd

/// Releases `clients` callers of the expired key at once; returns each
/// one's latency (s) and the length of the value it got.
async fn release_herd(
    cache: &Cache,
    clients: usize,
    ttl: Ttl,
    origin: &Origin,
    sleep: Duration,
    epoch: Instant,
) -> Vec<(f64, Result<usize, Error>)> {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (cache, origin, barrier) = (cache.clone(), origin.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let t0 = Instant::now();
            let v = cache
                .get_or_compute(KEY, ttl, || origin.compute(sleep, epoch))
                .await
                .map_err(Error::from);
            (t0.elapsed().as_secs_f64(), v.map(|v: Vec<u8>| v.len()))
        }));
    }
    barrier.wait().await;
    let mut out = Vec::with_capacity(clients);
    for t in tasks {
        out.push(match t.await {
            Ok(r) => r,
            Err(e) => (
                f64::NAN,
                Err(Error::config(format!("caller task failed: {e}"))),
            ),
        });
    }
    out
}

async fn herd(args: &BenchArgs, name: &str, url: &str) -> Result<Vec<serde_json::Value>, Error> {
    let cache = open(url, "herd").await?;
    let ttl = Ttl::After(Duration::from_secs(args.ttl_secs));
    let origin = Origin::default();
    let sleep = Duration::from_millis(args.origin_ms);
    let epoch = Instant::now();
    let mut per_round = Vec::new();
    let mut all_lat = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    // Connect before the measured rounds, as stampede.py does.
    let _ = cache.get::<Vec<u8>>("djb:stampede:warmup").await;
    for r in 0..args.rounds {
        let expired_after = set_and_wait_expiry(&cache, ttl).await?;
        origin.take();
        let t_herd = Instant::now();
        let mut lat = Vec::new();
        for (l, v) in release_herd(&cache, args.clients, ttl, &origin, sleep, epoch).await {
            match v {
                Ok(n) if n == PAYLOAD_BYTES => {}
                Ok(n) => errors.push(format!("bad value of {n} bytes")),
                Err(e) => errors.push(e.to_string()),
            }
            lat.push(l);
        }
        let herd_wall = t_herd.elapsed().as_secs_f64();
        let calls = origin.take();
        lat.sort_by(f64::total_cmp);
        eprintln!(
            "  {name:<10} herd round {}/{}: origin calls={calls:3} p50={:.0}ms max={:.0}ms",
            r + 1,
            args.rounds,
            pct(&lat, 50.0) * 1e3,
            lat.last().copied().unwrap_or(0.0) * 1e3
        );
        per_round.push(serde_json::json!({
            "origin_calls": calls,
            "expired_after_s": (expired_after * 1000.0).round() / 1000.0,
            "herd_wall_ms": ms(herd_wall),
            "p50_ms": ms(pct(&lat, 50.0)),
            "max_ms": ms(lat.last().copied().unwrap_or(f64::NAN)),
        }));
        all_lat.extend(lat);
    }
    let _ = cache.clear().await;
    Ok(vec![herd_result(
        name,
        "get_or_compute",
        args.clients,
        1,
        args,
        &per_round,
        all_lat,
        errors,
    )])
}

#[allow(clippy::too_many_arguments)]
fn herd_result(
    name: &str,
    pattern: &str,
    clients: usize,
    processes: usize,
    args: &BenchArgs,
    per_round: &[serde_json::Value],
    lat: Vec<f64>,
    errors: Vec<String>,
) -> serde_json::Value {
    let calls: Vec<u64> = per_round
        .iter()
        .map(|r| r["origin_calls"].as_u64().unwrap_or(0))
        .collect();
    let mean = calls.iter().sum::<u64>() as f64 / calls.len().max(1) as f64;
    serde_json::json!({
        "backend": name,
        "pattern": pattern,
        "clients": clients,
        "processes": processes,
        "rounds": per_round.len(),
        "origin_sleep_ms": args.origin_ms,
        "ttl_s": args.ttl_secs,
        "origin_calls_per_expiry_mean": (mean * 100.0).round() / 100.0,
        "origin_calls_per_expiry_min": calls.iter().min().copied().unwrap_or(0),
        "origin_calls_per_expiry_max": calls.iter().max().copied().unwrap_or(0),
        "latency_ms": latency_json(lat),
        "errors": errors.into_iter().take(10).collect::<Vec<_>>(),
        "per_round": per_round,
    })
}

// ---------------------------------------------------- multi-process herd

/// Started by `multi-process-herd`: waits for `go` lines on stdin, releases
/// its callers at once, answers `done CALLS LAT,LAT,…` (seconds).
async fn herd_worker(args: &BenchArgs) -> Result<(), CliError> {
    let url = args
        .urls
        .first()
        .and_then(|u| u.split_once('='))
        .map(|(_, u)| u.to_owned())
        .ok_or_else(|| CliError::usage("herd-worker needs --url NAME=URL"))?;
    let cache = open(&url, "mpherd").await?;
    let ttl = Ttl::After(Duration::from_secs(args.ttl_secs));
    let sleep = Duration::from_millis(args.origin_ms);
    let origin = Origin::default();
    let epoch = Instant::now();
    let _ = cache.get::<Vec<u8>>("djb:stampede:warmup").await;
    println!("ready");
    let mut lines = BufReader::new(std::io::stdin()).lines();
    while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
        if line != "go" {
            break;
        }
        let mut lat = Vec::new();
        let mut failed = 0;
        for (l, v) in release_herd(&cache, args.clients, ttl, &origin, sleep, epoch).await {
            failed += u32::from(!v.is_ok_and(|n| n == PAYLOAD_BYTES));
            lat.push(format!("{l:.6}"));
        }
        println!("done {} {failed} {}", origin.take(), lat.join(","));
        std::io::stdout().flush().ok();
    }
    Ok(())
}

struct Worker {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn line(&mut self) -> Result<String, Error> {
        let mut s = String::new();
        let n = self
            .stdout
            .read_line(&mut s)
            .map_err(|e| Error::config(e.to_string()))?;
        if n == 0 {
            return Err(Error::config("a herd worker exited"));
        }
        Ok(s.trim_end().to_owned())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn multi_process_herd(
    args: &BenchArgs,
    name: &str,
    url: &str,
) -> Result<Vec<serde_json::Value>, Error> {
    let cache = open(url, "mpherd").await?;
    if !cache.capabilities().shared {
        return Err(Error::config(format!(
            "{name}: multi-process-herd needs a cache shared between processes"
        )));
    }
    let ttl = Ttl::After(Duration::from_secs(args.ttl_secs));
    let exe = std::env::current_exe().map_err(|e| Error::config(e.to_string()))?;
    let mut workers = Vec::new();
    for _ in 0..args.processes {
        let mut child = Command::new(&exe)
            .args(["bench", "--scenario", "herd-worker", "--out", "-"])
            .arg("--url")
            .arg(format!("{name}={url}"))
            .args(["--clients", &args.clients.to_string()])
            .args(["--ttl-secs", &args.ttl_secs.to_string()])
            .args(["--origin-ms", &args.origin_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::config(format!("cannot start a worker: {e}")))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::config("no stdin"))?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| Error::config("no stdout"))?,
        );
        let mut w = Worker {
            child,
            stdin,
            stdout,
        };
        let ready = tokio::task::block_in_place(|| w.line())?;
        if ready != "ready" {
            return Err(Error::config(format!("worker said {ready:?}")));
        }
        workers.push(w);
    }
    let mut per_round = Vec::new();
    let mut all_lat = Vec::new();
    let mut errors = Vec::new();
    for r in 0..args.rounds {
        let expired_after = set_and_wait_expiry(&cache, ttl).await?;
        let t_herd = Instant::now();
        for w in &mut workers {
            writeln!(w.stdin, "go").map_err(|e| Error::config(e.to_string()))?;
            w.stdin.flush().map_err(|e| Error::config(e.to_string()))?;
        }
        let mut calls = 0;
        let mut lat = Vec::new();
        for w in &mut workers {
            let line = tokio::task::block_in_place(|| w.line())?;
            let mut parts = line.splitn(4, ' ');
            let (Some("done"), Some(c), Some(f), Some(l)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::config(format!("worker said {line:?}")));
            };
            calls += c.parse::<u64>().unwrap_or(0);
            let failed: u32 = f.parse().unwrap_or(0);
            if failed > 0 {
                errors.push(format!("{failed} failed calls in a worker"));
            }
            lat.extend(l.split(',').filter_map(|x| x.parse::<f64>().ok()));
        }
        let herd_wall = t_herd.elapsed().as_secs_f64();
        lat.sort_by(f64::total_cmp);
        eprintln!(
            "  {name:<10} {}x{} round {}/{}: origin calls={calls:3} p50={:.0}ms max={:.0}ms",
            args.processes,
            args.clients,
            r + 1,
            args.rounds,
            pct(&lat, 50.0) * 1e3,
            lat.last().copied().unwrap_or(0.0) * 1e3
        );
        per_round.push(serde_json::json!({
            "origin_calls": calls,
            "expired_after_s": (expired_after * 1000.0).round() / 1000.0,
            "herd_wall_ms": ms(herd_wall),
            "p50_ms": ms(pct(&lat, 50.0)),
            "max_ms": ms(lat.last().copied().unwrap_or(f64::NAN)),
        }));
        all_lat.extend(lat);
    }
    drop(workers);
    let _ = cache.clear().await;
    Ok(vec![herd_result(
        name,
        "get_or_compute",
        args.clients * args.processes,
        args.processes,
        args,
        &per_round,
        all_lat,
        errors,
    )])
}

// ---------------------------------------------------------------- hot key

/// One timed request: when it started (s since the scenario began), how long.
type Sample = (f64, f64);

async fn steady_load(
    cache: &Cache,
    opts: ComputeOptions,
    args: &BenchArgs,
    origin: &Origin,
    epoch: Instant,
    keys: usize,
    run: Duration,
) -> (Vec<Sample>, u64) {
    let sleep = Duration::from_millis(args.origin_ms);
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..args.clients {
        let (cache, origin, failures) = (cache.clone(), origin.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut i = w;
            while epoch.elapsed() < run {
                i = (i + 7) % keys;
                let key = if keys == 1 {
                    KEY.to_owned()
                } else {
                    format!("k{i}")
                };
                let at = epoch.elapsed().as_secs_f64();
                let t0 = Instant::now();
                let origin = origin.clone();
                let r: Result<Vec<u8>, Error> = cache
                    .get_or_compute_with(&key, &opts, move || async move {
                        origin.compute(sleep, epoch).await
                    })
                    .await
                    .map_err(Error::from);
                samples.push((at, t0.elapsed().as_secs_f64()));
                if r.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                // A steady rate per caller: ~1 request per ms.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            all.extend(s);
        }
    }
    (all, failures.load(Ordering::Relaxed))
}

async fn hot_key(args: &BenchArgs, name: &str, url: &str) -> Result<Vec<serde_json::Value>, Error> {
    let run = Duration::from_secs_f64(args.seconds);
    let mut out = Vec::new();
    let ttl = Duration::from_secs(args.ttl_secs);
    let configs = [
        (
            "plain_hits",
            ComputeOptions::new(Ttl::secs(3600)).no_early_refresh(),
        ),
        (
            "expiring",
            ComputeOptions::new(Ttl::After(ttl)).no_early_refresh(),
        ),
        (
            "expiring_swr",
            ComputeOptions::new(Ttl::After(ttl))
                .no_early_refresh()
                .stale_while_revalidate(ttl),
        ),
        (
            "expiring_xfetch_swr",
            ComputeOptions::new(Ttl::After(ttl))
                .early_refresh(args.beta)
                .stale_while_revalidate(ttl),
        ),
    ];
    let mut plain_p99 = f64::NAN;
    for (label, opts) in configs {
        let cache = open(url, &format!("hot{label}")).await?;
        let _ = cache.clear().await;
        let origin = Origin::default();
        let epoch = Instant::now();
        // Warm: the first computation is not part of the steady state.
        let sleep = Duration::from_millis(args.origin_ms);
        let _: Vec<u8> = cache
            .get_or_compute_with(KEY, &opts, {
                let origin = origin.clone();
                move || async move { origin.compute(sleep, epoch).await }
            })
            .await?;
        origin.take();
        origin
            .starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let load_epoch = Instant::now();
        let (samples, failures) =
            steady_load(&cache, opts, args, &origin, load_epoch, 1, run).await;
        let recomputes = origin.take();
        let starts: Vec<f64> = origin
            .starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .into_iter()
            .map(|s| s - load_epoch.duration_since(epoch).as_secs_f64())
            .collect();
        // Requests that overlap a recomputation (from its start to its end,
        // plus 100 ms either side) are "during expiry".
        let origin_s = args.origin_ms as f64 / 1000.0;
        let during: Vec<f64> = samples
            .iter()
            .filter(|(at, l)| {
                starts
                    .iter()
                    .any(|s| at + l >= s - 0.1 && *at <= s + origin_s + 0.1)
            })
            .map(|(_, l)| *l)
            .collect();
        let all: Vec<f64> = samples.iter().map(|(_, l)| *l).collect();
        let mut sorted = all.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = pct(&sorted, 99.0);
        if label == "plain_hits" {
            plain_p99 = p99;
        }
        let mut during_sorted = during.clone();
        during_sorted.sort_by(f64::total_cmp);
        let cycles = args.seconds / args.ttl_secs as f64;
        eprintln!(
            "  {name:<10} hot-key {label:<20} recomputes={recomputes} ({:.2}/cycle) p99={:.2}ms during-expiry p99={:.2}ms",
            if label == "plain_hits" { 0.0 } else { recomputes as f64 / cycles },
            p99 * 1e3,
            pct(&during_sorted, 99.0) * 1e3
        );
        out.push(serde_json::json!({
            "backend": name,
            "config": label,
            "clients": args.clients,
            "seconds": args.seconds,
            "ttl_s": if label == "plain_hits" { 3600 } else { args.ttl_secs },
            "xfetch_beta": if label == "expiring_xfetch_swr" { serde_json::json!(args.beta) } else { serde_json::Value::Null },
            "origin_sleep_ms": args.origin_ms,
            "requests": samples.len(),
            "failures": failures,
            "recomputes": recomputes,
            "recomputes_per_ttl_cycle": if label == "plain_hits" { serde_json::Value::Null } else { serde_json::json!((recomputes as f64 / cycles * 100.0).round() / 100.0) },
            "latency_ms": latency_json(all),
            "during_expiry_latency_ms": latency_json(during),
            "p99_during_expiry_over_plain_p99": if label == "plain_hits" { serde_json::Value::Null } else { serde_json::json!(((pct(&during_sorted, 99.0) / plain_p99) * 100.0).round() / 100.0) },
        }));
        let _ = cache.clear().await;
    }
    Ok(out)
}

// -------------------------------------------------------------- cache down

/// A cache server of our own, to kill and restart.
struct OwnServer {
    program: &'static str,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl OwnServer {
    fn start(&mut self) -> Result<(), Error> {
        let child = Command::new(self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::config(format!("cannot start {}: {e}", self.program)))?;
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > until {
                return Err(Error::config(format!("{} did not start", self.program)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn cache_down(
    args: &BenchArgs,
    name: &str,
    url: &str,
) -> Result<Vec<serde_json::Value>, Error> {
    // The server is ours: the URL only says which kind and which port.
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|p| p.split(['/', '?']).next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::config(format!("{url}: cache-down needs a URL with a port")))?;
    let mut server = if url.starts_with("redis://") {
        OwnServer {
            program: "redis-server",
            args: [
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
            .to_vec(),
            port,
            child: None,
        }
    } else if url.starts_with("memcached://") {
        OwnServer {
            program: "memcached",
            args: [
                "-p",
                &port.to_string(),
                "-l",
                "127.0.0.1",
                "-U",
                "0",
                "-u",
                "root",
            ]
            .map(String::from)
            .to_vec(),
            port,
            child: None,
        }
    } else {
        return Err(Error::config(format!(
            "{name}: cache-down runs its own redis-server or memcached; give a redis:// or memcached:// URL on a free port"
        )));
    };
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        return Err(Error::config(format!(
            "port {port} is taken: cache-down kills the server it starts, so it needs a free port"
        )));
    }
    server.start()?;
    let base = larder::open(url).await?;
    let cache = Cache::builder_arc(base.backend().clone())
        .key_prefix("down")
        .breaker(BreakerConfig::default())
        .build()?;
    let run = Duration::from_secs_f64(args.seconds);
    let kill_at = run.mul_f64(1.0 / 3.0);
    let restart_at = run.mul_f64(2.0 / 3.0);
    let opts = ComputeOptions::new(Ttl::secs(60));
    let origin = Origin::default();
    let epoch = Instant::now();
    let label = name.to_owned();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(kill_at).await;
        server.kill();
        eprintln!(
            "  {label:<10} cache-down: server killed at {:.1}s",
            epoch.elapsed().as_secs_f64()
        );
        tokio::time::sleep(restart_at.saturating_sub(epoch.elapsed())).await;
        let restarted = tokio::task::block_in_place(|| server.start());
        eprintln!(
            "  {label:<10} cache-down: server restarted at {:.1}s",
            epoch.elapsed().as_secs_f64()
        );
        restarted.map(|()| server)
    });
    let (samples, failures) = steady_load(&cache, opts, args, &origin, epoch, 100, run).await;
    let _server = killer.await.map_err(|e| Error::config(e.to_string()))??;
    let phase = |from: Duration, to: Duration| -> Vec<f64> {
        samples
            .iter()
            .filter(|(at, _)| *at >= from.as_secs_f64() && *at < to.as_secs_f64())
            .map(|(_, l)| *l)
            .collect()
    };
    let before = phase(Duration::ZERO, kill_at);
    let down = phase(kill_at, restart_at);
    let after = phase(restart_at, run);
    let p99 = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        pct(&s, 99.0)
    };
    let total = samples.len() as u64;
    let success = if total == 0 {
        0.0
    } else {
        (total - failures) as f64 / total as f64
    };
    eprintln!(
        "  {name:<10} cache-down: {total} requests, success {:.4}%, p99 before {:.2}ms, down {:.2}ms, after {:.2}ms",
        success * 100.0,
        p99(&before) * 1e3,
        p99(&down) * 1e3,
        p99(&after) * 1e3
    );
    let result = serde_json::json!({
        "backend": name,
        "clients": args.clients,
        "seconds": args.seconds,
        "killed_at_s": kill_at.as_secs_f64(),
        "restarted_at_s": restart_at.as_secs_f64(),
        "origin_sleep_ms": args.origin_ms,
        "requests": total,
        "failures": failures,
        "success_rate": success,
        "origin_calls": origin.take(),
        "breaker_state_at_end": format!("{:?}", cache.breaker_state()),
        "latency_ms_before": latency_json(before.clone()),
        "latency_ms_down": latency_json(down.clone()),
        "latency_ms_after": latency_json(after),
        "added_p99_ms_while_down": ms(p99(&down) - p99(&before)),
    });
    Ok(vec![result])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_stampede_py() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pct(&v, 50.0), 2.5);
        assert_eq!(pct(&v, 100.0), 4.0);
        assert_eq!(pct(&v, 0.0), 1.0);
        assert!(pct(&[], 50.0).is_nan());
    }
}
