//! `larder bench`: single-threaded cache operations, measured and reported
//! exactly like `peers/django/cache_ops.py` so that the JSON files compare
//! one to one.

pub mod scenario;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use larder::{Cache, Error, Ttl};
use serde::Serialize;

use crate::CliError;

pub const EXAMPLES: &str = "\
Examples:
  larder bench --out results/larder_cache_ops.json
  larder bench --scenario herd --backends mem,redis --url redis=redis://127.0.0.1:6379 --out herd.json
  larder bench --scenario multi-process-herd --processes 4 --clients 25 --backends redis \\
      --url redis=redis://127.0.0.1:6379 --out mp.json
  larder bench --scenario hot-key --backends mem,redis --url redis=redis://127.0.0.1:6379 --out hot.json
  larder bench --scenario cache-down --backends redis --url redis=redis://127.0.0.1:27400 --out down.json
  taskset -c 0 larder bench --backends mem,file --repeat 3 --out pinned.json
  larder bench --url big=mem://?max_bytes=1000000000 --backends big --out x.json";

const OPS: [&str; 6] = [
    "set",
    "get_hit",
    "get_miss",
    "get_many10",
    "incr",
    "get_or_set",
];

/// The operations, as an enum so the timed loop does not compare strings.
#[derive(Clone, Copy)]
enum Op {
    Set,
    GetHit,
    GetMiss,
    GetMany10,
    Incr,
    GetOrSet,
}

impl Op {
    fn parse(name: &str) -> Op {
        match name {
            "set" => Op::Set,
            "get_hit" => Op::GetHit,
            "get_miss" => Op::GetMiss,
            "get_many10" => Op::GetMany10,
            "incr" => Op::Incr,
            _ => Op::GetOrSet,
        }
    }
}
const POOL: usize = 1000;
const VALUE_BYTES: usize = 100;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Where to write the JSON results.
    #[arg(long)]
    pub out: PathBuf,
    /// Comma-separated backends: mem, file, dummy, or names given with --url.
    #[arg(long, default_value = "mem,file")]
    backends: String,
    /// Extra backend as NAME=URL (repeatable), e.g. big=mem://?max_entries=10.
    #[arg(long = "url", value_name = "NAME=URL")]
    pub urls: Vec<String>,
    /// Operations per run (default per backend: mem/dummy 2,000,000; file 20,000).
    #[arg(long)]
    n: Option<usize>,
    /// Runs per operation; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Time cap per run, in seconds.
    #[arg(long, default_value_t = 2.0)]
    max_seconds: f64,
    /// Directory for the file backend (default: a fresh directory in the
    /// system temp dir, removed afterwards).
    #[arg(long)]
    pub file_dir: Option<PathBuf>,
    /// Name written into the JSON's "benchmark" field.
    #[arg(long, default_value = "larder_cache_ops")]
    name: String,
    /// Requests in flight at once (one runtime thread; >1 measures throughput
    /// with that many concurrent callers, like redis-benchmark -c).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Comma-separated subset of the operations to run.
    #[arg(
        long,
        default_value = "set,get_hit,get_miss,get_many10,incr,get_or_set"
    )]
    ops: String,
    /// Run a stampede or outage scenario instead of the operations:
    /// herd, multi-process-herd, hot-key, cache-down. cache-down starts its
    /// own redis-server or memcached on the port of the --url it is given.
    #[arg(long, value_enum)]
    pub scenario: Option<scenario::Scenario>,
    /// Scenarios: concurrent callers (per process).
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Scenarios: expiries measured (herd, multi-process-herd).
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// multi-process-herd: processes sharing the cache.
    #[arg(long, default_value_t = 4)]
    pub processes: usize,
    /// hot-key, cache-down: seconds of steady load.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Scenarios: TTL of the value, in seconds.
    #[arg(long, default_value_t = 1)]
    pub ttl_secs: u64,
    /// Scenarios: how long the origin takes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub origin_ms: u64,
    /// hot-key: XFetch's β for the early-refresh configuration.
    #[arg(long, default_value_t = 1.0)]
    pub beta: f64,
}

#[derive(Serialize)]
struct RunResult {
    ops: usize,
    seconds: f64,
    ops_per_sec: f64,
}

#[derive(Serialize)]
struct OpResult {
    ops_per_sec: f64,
    us_per_op: f64,
    ns_per_op: f64,
    ops_per_sec_min: f64,
    ops_per_sec_max: f64,
    runs: Vec<RunResult>,
}

pub struct Target {
    pub name: String,
    pub url: String,
    default_n: usize,
}

pub fn targets_for(args: &BenchArgs, file_dir: &std::path::Path) -> Result<Vec<Target>, CliError> {
    let mut extra = BTreeMap::new();
    for u in &args.urls {
        let (name, url) = u
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--url {u:?} is not NAME=URL")))?;
        extra.insert(name.to_owned(), url.to_owned());
    }
    let mut out = Vec::new();
    for name in args
        .backends
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (url, default_n) = match (name, extra.get(name)) {
            (_, Some(url)) => (url.clone(), 200_000),
            // Bounds high enough that nothing is evicted, as in the Django run
            // (MAX_ENTRIES 1e6).
            ("mem", None) => ("mem://?max_entries=1000000".to_owned(), 2_000_000),
            ("file", None) => (
                format!("file://{}?max_entries=1000000", file_dir.display()),
                20_000,
            ),
            ("dummy", None) => ("dummy://".to_owned(), 2_000_000),
            (other, None) => {
                return Err(CliError::usage(format!(
                    "unknown backend {other:?}: use mem, file, dummy, or give it with --url {other}=URL"
                )))
            }
        };
        out.push(Target {
            name: name.to_owned(),
            url,
            default_n,
        });
    }
    Ok(out)
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    if let Some(scenario) = args.scenario {
        if args.clients == 0 || args.rounds == 0 || args.processes == 0 || args.ttl_secs == 0 {
            return Err(CliError::usage(
                "--clients, --rounds, --processes and --ttl-secs must be at least 1",
            ));
        }
        return scenario::run(&args, scenario);
    }
    if args.repeat == 0 {
        return Err(CliError::usage("--repeat must be at least 1"));
    }
    if args.concurrency == 0 {
        return Err(CliError::usage("--concurrency must be at least 1"));
    }
    let ops: Vec<&'static str> = args
        .ops
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|o| {
            OPS.iter().find(|k| **k == o).copied().ok_or_else(|| {
                CliError::usage(format!("unknown op {o:?}; choose from {}", OPS.join(", ")))
            })
        })
        .collect::<Result<_, _>>()?;
    let temp_dir = std::env::temp_dir().join(format!("larder-bench-{}", std::process::id()));
    let file_dir = args.file_dir.clone().unwrap_or_else(|| temp_dir.clone());
    let targets = targets_for(&args, &file_dir)?;
    // One thread, like the Django harness; blocking file I/O still goes to
    // tokio's blocking pool, as it does in an application.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    let started = SystemTime::now();
    let wall = Instant::now();
    let mut results = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let pb = crate::progress::bar(targets.len() as u64, "bench");
    for t in &targets {
        pb.set_message(format!("bench {}", t.name));
        let n = args.n.unwrap_or(t.default_n);
        counts.insert(t.name.clone(), n);
        let began = Instant::now();
        let r = rt.block_on(bench_backend(
            &t.url,
            n,
            args.max_seconds,
            args.repeat,
            args.concurrency,
            &ops,
        ));
        let line = format!(
            "# {}: done in {:.1}s",
            t.name,
            began.elapsed().as_secs_f64()
        );
        if pb.is_hidden() {
            eprintln!("{line}");
        } else {
            pb.println(line);
        }
        pb.inc(1);
        let value = match r {
            Ok(ops) => serde_json::to_value(ops).unwrap_or_default(),
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        results.insert(t.name.clone(), value);
    }
    pb.finish_and_clear();
    if args.file_dir.is_none() {
        let _ = std::fs::remove_dir_all(&temp_dir);
    }
    print_table(&targets, &results, &ops, args.concurrency);
    let doc = serde_json::json!({
        "benchmark": args.name,
        "date_utc": utc(started),
        "wall_seconds": (wall.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "machine": machine(),
        "versions": { "larder": env!("CARGO_PKG_VERSION"), "rustc": option_env!("RUSTC_VERSION").unwrap_or("see rustc --version") },
        "config": {
            "value_bytes": VALUE_BYTES, "key_pool": POOL, "repeat": args.repeat,
            "max_seconds_per_run": args.max_seconds, "pin_cpu": pinned_cpu(),
            "counts": counts,
            "urls": targets.iter().map(|t| (t.name.clone(), t.url.clone())).collect::<BTreeMap<_, _>>(),
            "value_type": "String of 100 bytes (typed API, postcard envelope)",
            "runtime": "tokio current_thread",
            "concurrency": args.concurrency,
        },
        "ops": ops,
        "results": results,
    });
    write_json(&args.out, &doc)
}

/// Writes a results document, creating its directory.
pub fn write_json(out: &std::path::Path, doc: &serde_json::Value) -> Result<(), CliError> {
    if let Some(parent) = out.parent() {
        if !parent.as_os_str().is_empty() {
            std::fs::create_dir_all(parent).map_err(|e| {
                CliError::failed(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
    }
    let text = serde_json::to_string_pretty(doc).unwrap_or_default();
    std::fs::write(out, text + "\n")
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", out.display())))?;
    eprintln!("# wrote {}", out.display());
    Ok(())
}

async fn bench_backend(
    url: &str,
    n: usize,
    max_seconds: f64,
    repeat: usize,
    concurrency: usize,
    ops: &[&'static str],
) -> Result<BTreeMap<&'static str, OpResult>, Error> {
    let cache = larder::open(url).await?;
    cache.clear().await?;
    let keys: Vec<String> = (0..POOL).map(|i| format!("djb:k:{i}")).collect();
    let miss_keys: Vec<String> = (0..n.clamp(1, 1_000_000))
        .map(|i| format!("djb:miss:{i}"))
        .collect();
    let groups: Vec<Vec<&str>> = keys
        .chunks(10)
        .map(|g| g.iter().map(String::as_str).collect())
        .collect();
    let value = "v".repeat(VALUE_BYTES);
    let ttl = Ttl::secs(3600);
    for k in &keys {
        cache.set(k, &value, ttl).await?;
    }
    cache.set("djb:ctr", &0, ttl).await?;
    // Sanity checks, as the Django harness does.
    if cache.get::<String>(&keys[0]).await?.as_deref() != Some(value.as_str())
        && cache.backend().name() != "dummy"
    {
        return Err(Error::config("get_hit returned the wrong value"));
    }
    let warmup = (n / 10).min(200);
    let mut out = BTreeMap::new();
    for &op in ops {
        let mut runs = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let fixture = Fixture {
                keys: &keys,
                miss_keys: &miss_keys,
                groups: &groups,
                value: &value,
                ttl,
            };
            let (count, secs) = if concurrency == 1 {
                run_op(&cache, Op::parse(op), n, max_seconds, warmup, &fixture).await?
            } else {
                run_concurrent(&cache, Op::parse(op), n, max_seconds, concurrency, &fixture).await?
            };
            runs.push(RunResult {
                ops: count,
                seconds: (secs * 1e6).round() / 1e6,
                ops_per_sec: ((count as f64 / secs) * 10.0).round() / 10.0,
            });
        }
        let mut rates: Vec<f64> = runs.iter().map(|r| r.ops_per_sec).collect();
        rates.sort_by(f64::total_cmp);
        let med = median(&rates);
        out.insert(
            op,
            OpResult {
                ops_per_sec: med,
                us_per_op: (1e6 / med * 1000.0).round() / 1000.0,
                ns_per_op: (1e9 / med * 10.0).round() / 10.0,
                ops_per_sec_min: rates[0],
                ops_per_sec_max: rates[rates.len() - 1],
                runs,
            },
        );
    }
    cache.clear().await?;
    Ok(out)
}

fn median(sorted: &[f64]) -> f64 {
    let m = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[m]
    } else {
        (sorted[m - 1] + sorted[m]) / 2.0
    }
}

/// What the operations work on.
struct Fixture<'a> {
    keys: &'a [String],
    miss_keys: &'a [String],
    groups: &'a [Vec<&'a str>],
    value: &'a String,
    ttl: Ttl,
}

async fn run_op(
    cache: &Cache,
    op: Op,
    n: usize,
    max_seconds: f64,
    warmup: usize,
    f: &Fixture<'_>,
) -> Result<(usize, f64), Error> {
    for i in 0..warmup {
        one(cache, op, i, f).await?;
    }
    let deadline = Duration::from_secs_f64(max_seconds);
    let t0 = Instant::now();
    let mut i = 0;
    // Check the clock every 128 ops so the loop costs nothing measurable.
    while i < n {
        let end = n.min(i + 128);
        for j in i..end {
            one(cache, op, j, f).await?;
        }
        i = end;
        if t0.elapsed() > deadline {
            break;
        }
    }
    Ok((i, t0.elapsed().as_secs_f64()))
}

/// `concurrency` callers on one runtime thread, each looping until the
/// shared budget of `n` operations or the time cap runs out.
async fn run_concurrent(
    cache: &Cache,
    op: Op,
    n: usize,
    max_seconds: f64,
    concurrency: usize,
    f: &Fixture<'_>,
) -> Result<(usize, f64), Error> {
    use std::cell::Cell;
    let next = Cell::new(0usize);
    let deadline = Duration::from_secs_f64(max_seconds);
    // Warm up every caller's connection path.
    let warm: Vec<_> = (0..concurrency).map(|i| one(cache, op, i, f)).collect();
    for r in futures_util::future::join_all(warm).await {
        r?;
    }
    let t0 = Instant::now();
    let callers = (0..concurrency).map(|_| async {
        loop {
            let i = next.get();
            if i >= n || (i.is_multiple_of(128) && t0.elapsed() > deadline) {
                return Ok::<(), Error>(());
            }
            next.set(i + 1);
            one(cache, op, i, f).await?;
        }
    });
    for r in futures_util::future::join_all(callers).await {
        r?;
    }
    Ok((next.get().min(n), t0.elapsed().as_secs_f64()))
}

#[inline(always)]
async fn one(cache: &Cache, op: Op, i: usize, f: &Fixture<'_>) -> Result<(), Error> {
    match op {
        Op::Set => cache.set(&f.keys[i % POOL], f.value, f.ttl).await?,
        Op::GetHit => {
            black_box(cache.get::<String>(&f.keys[i % POOL]).await?);
        }
        Op::GetMiss => {
            black_box(
                cache
                    .get::<String>(&f.miss_keys[i % f.miss_keys.len()])
                    .await?,
            );
        }
        Op::GetMany10 => {
            black_box(
                cache
                    .get_many::<String, _>(&f.groups[i % f.groups.len()])
                    .await?,
            );
        }
        Op::Incr => match cache.incr("djb:ctr", 1).await {
            Ok(v) => {
                black_box(v);
            }
            // The dummy backend stores nothing to increment.
            Err(Error::NotFound { .. }) if cache.backend().name() == "dummy" => {}
            Err(e) => return Err(e),
        },
        Op::GetOrSet => {
            let v: String = cache
                .get_or_compute(&f.keys[i % POOL], f.ttl, || async {
                    Ok::<_, Error>(f.value.clone())
                })
                .await?;
            black_box(v);
        }
    }
    Ok(())
}

fn print_table(
    targets: &[Target],
    results: &BTreeMap<String, serde_json::Value>,
    ops: &[&str],
    concurrency: usize,
) {
    let header = format!(
        "{:<11}{}",
        "backend",
        ops.iter().map(|o| format!("{o:>13}")).collect::<String>()
    );
    let in_flight = if concurrency == 1 {
        "one request in flight".to_owned()
    } else {
        format!("{concurrency} requests in flight on one thread")
    };
    let tables = [
        (
            "ops_per_sec",
            format!(
                "ops/second, median of repeats ({in_flight}; get_many10 = calls/s, 10 keys each)"
            ),
            0,
        ),
        (
            "ns_per_op",
            "nanoseconds per op (from the median)".to_owned(),
            1,
        ),
    ];
    for (n, (field, title, decimals)) in tables.iter().enumerate() {
        if n > 0 {
            println!();
        }
        println!("{title}");
        println!("{header}");
        println!("{}", "-".repeat(header.len()));
        for t in targets {
            let r = &results[&t.name];
            if let Some(e) = r.get("error") {
                // Errors are listed once, in the first table.
                if n == 0 {
                    println!("{:<11} ERROR {e}", t.name);
                }
                continue;
            }
            let row: String = ops
                .iter()
                .map(|o| format!("{:>13.*}", decimals, r[*o][field].as_f64().unwrap_or(0.0)))
                .collect();
            println!("{:<11}{row}", t.name);
        }
    }
}

pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "platform": format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
        "cpu_model": cpu,
    })
}

/// The CPU this process is pinned to, when its affinity is one CPU
/// (`taskset -c N larder bench …`).
fn pinned_cpu() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))?
        .split_once(':')?
        .1
        .trim()
        .to_owned();
    list.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_795_740_576)),
            "2026-11-27T00:49:36Z"
        );
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
    }
}
