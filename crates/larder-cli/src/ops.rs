//! `larder stats` and `larder clear`: the operator's view of a cache and of
//! a running demo or proxy.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::Args;
use larder::prelude::*;

use crate::config::Config;
use crate::CliError;

pub const STATS_EXAMPLES: &str = "\
Examples:
  larder stats --server http://127.0.0.1:8000        # a running `larder demo` or `larder proxy`
  larder stats --server http://127.0.0.1:8080 --watch 2
  larder stats --cache default                        # probe the cache configured in larder.toml
  LARDER_CACHE_URL=redis://127.0.0.1:6379/0 larder stats --cache default --json

Exit codes: 0 ok, 1 the server or cache cannot be reached, 2 bad arguments.";

pub const CLEAR_EXAMPLES: &str = "\
Examples:
  larder clear --cache default --yes     # clears only the cache's own key prefix where the backend allows
  LARDER_CACHE_URL=memcached://127.0.0.1:11211 larder clear --yes

Without --yes on a terminal it asks; elsewhere it refuses (exit code 2).";

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// A running demo, proxy or application (larder-dashboard mounted at
    /// /_larder) whose /_larder/stats.json to show.
    #[arg(long, conflicts_with = "cache")]
    server: Option<String>,
    /// The bearer token the dashboard is behind (a proxy's admin token,
    /// your application's).
    #[arg(long, env = "LARDER_ADMIN_TOKEN", requires = "server")]
    token: Option<String>,
    /// Probe this cache from larder.toml (`default` reads LARDER_CACHE_URL too).
    #[arg(long)]
    cache: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Repeat every N seconds until interrupted.
    #[arg(long)]
    watch: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ClearArgs {
    /// The cache from larder.toml (`default` reads LARDER_CACHE_URL too).
    #[arg(long, default_value = "default")]
    cache: String,
    /// Do not ask.
    #[arg(long)]
    yes: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))
}

pub fn stats(args: StatsArgs, config: Option<&str>) -> Result<(), CliError> {
    let config = Config::load(config)?;
    runtime()?.block_on(async {
        loop {
            match (&args.server, &args.cache) {
                (Some(server), _) => server_stats(server, args.token.as_deref(), args.json).await?,
                (None, Some(name)) => probe(&config, name, args.json).await?,
                (None, None) => return Err(CliError::usage(
                    "say what to show: --server http://HOST:PORT (a demo or proxy) or --cache NAME",
                )),
            }
            match args.watch {
                Some(n) => tokio::time::sleep(Duration::from_secs(n.max(1))).await,
                None => return Ok(()),
            }
        }
    })
}

async fn server_stats(server: &str, token: Option<&str>, json: bool) -> Result<(), CliError> {
    use http_body_util::{BodyExt, Empty};
    let url = format!("{}/_larder/stats.json", server.trim_end_matches('/'));
    let uri: http::Uri = url
        .parse()
        .map_err(|e| CliError::usage(format!("--server {server:?}: {e}")))?;
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut req = http::Request::get(uri);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| CliError::usage(format!("--token: {e}")))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| CliError::failed(format!("{url}: no answer in 5 s")))?
        .map_err(|e| {
            CliError::failed(format!(
                "{url}: {e} (is `larder demo` or `larder proxy` running there?)"
            ))
        })?;
    if !resp.status().is_success() {
        return Err(CliError::failed(format!("{url}: HTTP {}", resp.status())));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| CliError::failed(format!("{url}: {e}")))?
        .to_bytes();
    let s: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| CliError::failed(format!("{url}: not larder stats: {e}")))?;
    if json {
        println!("{s}");
        return Ok(());
    }
    println!(
        "uptime           {:.0} s",
        s["uptime_s"].as_f64().unwrap_or(0.0)
    );
    println!(
        "requests         {:.1}/s, p50 {:.2} ms, p99 {:.2} ms (last 10 s)",
        s["latency_ms"]["requests_per_s"].as_f64().unwrap_or(0.0),
        s["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        s["latency_ms"]["p99"].as_f64().unwrap_or(0.0)
    );
    for l in s["layers"].as_array().into_iter().flatten() {
        let (h, m) = (
            l["hits"].as_f64().unwrap_or(0.0),
            l["misses"].as_f64().unwrap_or(0.0),
        );
        let ratio = if h + m > 0.0 {
            100.0 * h / (h + m)
        } else {
            0.0
        };
        println!(
            "layer {:<10} {ratio:5.1}% hits ({h} hits, {m} misses)",
            l["name"].as_str().unwrap_or("?")
        );
    }
    println!("herd merges      {}", s["herd_merges"]);
    println!("stale served     {}", s["stale_served"]);
    for (cache, state) in s["breakers"].as_object().into_iter().flatten() {
        println!("breaker {cache:<8} {}", state.as_str().unwrap_or("?"));
    }
    if s["views"].is_object() {
        println!(
            "views            backlog {}, lag {} ms, dead letters {}",
            s["views"]["backlog"], s["views"]["lag_ms"], s["views"]["dead_letters"]
        );
    }
    Ok(())
}

async fn probe(config: &Config, name: &str, json: bool) -> Result<(), CliError> {
    let url = config.cache_url(name)?;
    let cache = Cache::from_url(&url).await?;
    let key = format!("larder-stats-probe-{}", std::process::id());
    let t = Instant::now();
    cache.set(&key, "probe", Ttl::secs(10)).await?;
    let set = t.elapsed();
    let t = Instant::now();
    let got: Option<String> = cache.get(&key).await?;
    let get = t.elapsed();
    cache.delete(&key).await?;
    if got.as_deref() != Some("probe") {
        return Err(CliError::failed(format!(
            "cache {name}: a value just set was not read back (dummy backend, or evicted at once?)"
        )));
    }
    let out = serde_json::json!({
        "cache": name,
        "backend": cache.backend().name(),
        "key_prefix": cache.key_prefix(),
        "set_ms": set.as_secs_f64() * 1000.0,
        "get_ms": get.as_secs_f64() * 1000.0,
        "breaker": format!("{:?}", cache.breaker_state()),
    });
    if json {
        println!("{out}");
    } else {
        println!(
            "cache {name}: {} backend, prefix {:?}, set {:.2} ms, get {:.2} ms, breaker {:?}",
            cache.backend().name(),
            cache.key_prefix(),
            set.as_secs_f64() * 1000.0,
            get.as_secs_f64() * 1000.0,
            cache.breaker_state()
        );
    }
    Ok(())
}

pub fn clear(args: ClearArgs, config: Option<&str>) -> Result<(), CliError> {
    let config = Config::load(config)?;
    let url = config.cache_url(&args.cache)?;
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(format!(
                "refusing to clear cache {:?} without --yes (not a terminal to ask on)",
                args.cache
            )));
        }
        print!("clear cache {:?} ({url})? [y/N] ", args.cache);
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("not cleared");
            return Ok(());
        }
    }
    runtime()?.block_on(async {
        let cache = Cache::from_url(&url).await?;
        cache.clear().await?;
        println!(
            "cleared cache {:?} ({} backend, prefix {:?})",
            args.cache,
            cache.backend().name(),
            cache.key_prefix()
        );
        Ok(())
    })
}
