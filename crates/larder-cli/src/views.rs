//! `larder views …`: run and operate denormalized views declared in SQL (a
//! views file), without Rust code: install the outbox and triggers, run
//! workers, and status / rebuild / verify / repair.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use larder_views::{DocStore, Source, SqlView, Views, WorkerConfig};

use crate::CliError;

pub const EXAMPLES: &str = "\
Examples:
  larder views install --database postgres://app@127.0.0.1/app --views views.toml
  larder views work    --database postgres://app@127.0.0.1/app --store redb:/var/lib/app/views.redb
  larder views status  --json
  larder views rebuild --view post_page
  larder views verify  --sample 1000      # exit code 3 when documents drifted
  larder views repair

The views file declares each view in SQL:
  [views.post_page]
  query = \"SELECT p.id, p.title, u.name AS author FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1\"
  keys = \"SELECT id FROM posts\"
  depends = [
    { table = \"posts\", column = \"id\" },
    { table = \"users\", column = \"id\", lookup = \"SELECT id FROM posts WHERE author_id = $1\" },
  ]

Stores: redb:PATH (embedded, the default: redb:larder-views.redb; one process at a time),
redis://HOST:PORT/DB, sql (a table in the source database) or sql:URL.
Environment: LARDER_DATABASE_URL, LARDER_VIEWS_STORE, LARDER_VIEWS_FILE.";

#[derive(Args, Debug)]
pub struct ViewsArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: ViewsCommand,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// The source database (postgres://, mysql://, sqlite://; default:
    /// larder.toml's `[database]` url).
    #[arg(long, global = true, env = "LARDER_DATABASE_URL")]
    database: Option<String>,
    /// Where documents live: redb:PATH, redis://…, sql or sql:URL (default:
    /// larder.toml's `[store]` url, else redb:larder-views.redb).
    #[arg(long, global = true, env = "LARDER_VIEWS_STORE")]
    store: Option<String>,
    /// The views file (TOML, `[views.<name>]` tables; default:
    /// larder-views.toml, else larder.toml).
    #[arg(long = "views", global = true, env = "LARDER_VIEWS_FILE")]
    views_file: Option<String>,
    /// Whether `--views` / LARDER_VIEWS_FILE named the file (not a default).
    #[arg(skip)]
    views_named: bool,
    /// How writes to the source tables are captured: `triggers` (every
    /// database; on PostgreSQL each writing transaction also NOTIFYs the
    /// workers), `polled-triggers` (the same triggers without NOTIFY, for
    /// write-heavy PostgreSQL sources: workers poll every 50 ms) or
    /// `logical` (PostgreSQL logical replication, no triggers; the server
    /// needs wal_level=logical). `install` and `work` must agree.
    #[arg(
        long,
        global = true,
        env = "LARDER_VIEWS_CAPTURE",
        default_value = "triggers"
    )]
    capture: Capture,
    /// The replication slot for `--capture logical` (default:
    /// `larder_views_<database name>`; a slot belongs to one database).
    #[arg(long, global = true, env = "LARDER_VIEWS_SLOT")]
    slot: Option<String>,
}

/// How writes are captured (see `--capture`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    /// Triggers write every row change into the outbox.
    Triggers,
    /// Triggers without NOTIFY; workers poll.
    PolledTriggers,
    /// A feeder in `work` copies the replication stream into the outbox.
    Logical,
}

/// The slot `--capture logical` uses.
fn slot_name(common: &Common) -> String {
    if let Some(s) = &common.slot {
        return s.clone();
    }
    let db = common
        .database
        .as_deref()
        .and_then(|u| u.rsplit('/').next())
        .map(|d| d.split('?').next().unwrap_or(d))
        .unwrap_or("source");
    let clean: String = db
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("larder_views_{clean}")
}

#[derive(Subcommand, Debug)]
enum ViewsCommand {
    /// Create the outbox tables and the capture triggers (idempotent).
    #[command(after_help = EXAMPLES)]
    Install {
        /// Print the SQL instead of running it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run workers until interrupted (Ctrl-C / SIGTERM).
    #[command(after_help = EXAMPLES)]
    Work {
        /// Workers in this process.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Entries claimed per batch.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Claim lease in milliseconds (a killed worker's entries return after it).
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// Attempts before an entry is dead-lettered.
        #[arg(long, default_value_t = 5)]
        max_attempts: u32,
    },
    /// Backlog, lag, dead letters and documents per view.
    #[command(after_help = EXAMPLES)]
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Recompute every document, online (writes may continue).
    #[command(after_help = EXAMPLES)]
    Rebuild {
        /// Only these views (default: all).
        #[arg(long = "view")]
        views: Vec<String>,
    },
    /// Recompute and compare; exit code 3 when documents drifted.
    #[command(after_help = EXAMPLES)]
    Verify {
        /// Only these views (default: all).
        #[arg(long = "view")]
        views: Vec<String>,
        /// Check a random sample of this many keys per view.
        #[arg(long)]
        sample: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify, and rewrite what drifted; optionally requeue dead letters.
    #[command(after_help = EXAMPLES)]
    Repair {
        /// Only these views (default: all).
        #[arg(long = "view")]
        views: Vec<String>,
        /// Move dead letters back into the outbox first.
        #[arg(long)]
        requeue_dead: bool,
    },
}

/// A views file: `[views.<name>]` tables of [`SqlView`]s.
#[derive(serde::Deserialize)]
struct ViewsFile {
    #[serde(default)]
    views: BTreeMap<String, SqlView>,
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::failed(e.to_string())
}

fn load_views_file(path: &str) -> Result<BTreeMap<String, SqlView>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the views file {path:?}: {e} (pass --views FILE or set LARDER_VIEWS_FILE)"
        ))
    })?;
    let file: ViewsFile =
        toml::from_str(&text).map_err(|e| CliError::usage(format!("{path}: {e}")))?;
    if file.views.is_empty() {
        return Err(CliError::usage(format!(
            "{path} declares no [views.<name>] table"
        )));
    }
    Ok(file.views)
}

/// The views store named by `spec`, waiting up to `wait` for a redb file
/// another process holds (a `larder views status` run, or a worker still shutting down).
/// The library opens it; an unknown spec is a usage error here.
pub(crate) async fn open_store_waiting(
    spec: &str,
    source: &Source,
    wait: Duration,
) -> Result<Arc<dyn DocStore>, CliError> {
    larder_views::open_store(spec, source, wait)
        .await
        .map_err(|e| match e {
            larder_views::Error::Config(m) => CliError::usage(format!("--store: {m}")),
            other => failed(other),
        })
}

async fn open(common: &Common, connections: u32) -> Result<Views, CliError> {
    open_waiting(common, connections, Duration::ZERO).await
}

async fn open_waiting(
    common: &Common,
    connections: u32,
    wait: Duration,
) -> Result<Views, CliError> {
    let defs = load_views_file(common.views_file.as_deref().unwrap_or_default())?;
    let database = common.database.as_deref().ok_or_else(|| {
        CliError::usage("no source database: pass --database URL or set LARDER_DATABASE_URL")
    })?;
    let source = Source::connect(database, connections)
        .await
        .map_err(|e| failed(format!("{database}: {e}")))?;
    let store =
        open_store_waiting(common.store.as_deref().unwrap_or_default(), &source, wait).await?;
    let mut b = Views::builder(source, store);
    if common.capture == Capture::PolledTriggers {
        b = b.wakeup(larder_views::Wakeup::Poll);
    }
    for (name, v) in defs {
        b = b.view(v.named(&name));
    }
    b.build().map_err(|e| CliError::usage(e.to_string()))
}

fn selected(views: &Views, only: &[String]) -> Result<Vec<String>, CliError> {
    if only.is_empty() {
        return Ok(views.names());
    }
    let names = views.names();
    for v in only {
        if !names.contains(v) {
            return Err(CliError::usage(format!(
                "no view named {v:?} in the views file (declared: {})",
                names.join(", ")
            )));
        }
    }
    Ok(only.to_vec())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Fills what the flags and environment left open from larder.toml.
fn resolve(mut common: Common, config: &crate::config::Config) -> Common {
    if common.database.is_none() {
        common.database = config.database_url();
    }
    if common.store.is_none() {
        common.store = Some(
            config
                .store
                .url
                .clone()
                .unwrap_or_else(|| "redb:larder-views.redb".to_owned()),
        );
    }
    common.views_named = common.views_file.is_some();
    if common.views_file.is_none() {
        let own = std::path::Path::new("larder-views.toml");
        common.views_file = Some(match &config.path {
            Some(p) if !own.exists() => p.clone(),
            _ => "larder-views.toml".to_owned(),
        });
    }
    common
}

pub fn run(args: ViewsArgs, config: Option<&str>) -> Result<(), CliError> {
    let config = crate::config::Config::load(config)?;
    let args = ViewsArgs {
        common: resolve(args.common, &config),
        command: args.command,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(run_async(args))
}

async fn run_async(args: ViewsArgs) -> Result<(), CliError> {
    let common = args.common;
    match args.command {
        ViewsCommand::Install { dry_run } => {
            if dry_run {
                let defs = load_views_file(common.views_file.as_deref().unwrap_or_default())?;
                let dialect = larder_views::Dialect::from_url(
                    common.database.as_deref().unwrap_or("postgres:"),
                )
                .map_err(|e| CliError::usage(e.to_string()))?;
                let defs: Vec<_> = defs.into_iter().map(|(n, v)| v.named(&n)).collect();
                let refs: Vec<_> = defs.iter().collect();
                let wakeup = if common.capture == Capture::PolledTriggers {
                    larder_views::Wakeup::Poll
                } else {
                    larder_views::Wakeup::Notify
                };
                for s in larder_views::install_sql(dialect, &refs, wakeup)
                    .map_err(|e| CliError::usage(e.to_string()))?
                {
                    println!("{s};");
                }
                return Ok(());
            }
            let views = open(&common, 2).await?;
            if common.capture == Capture::Logical {
                views.install_for_replication().await.map_err(failed)?;
                let config = views
                    .replication_config(&slot_name(&common))
                    .map_err(failed)?;
                let created = larder_views::logical::ensure_slot(&config)
                    .await
                    .map_err(failed)?;
                println!(
                    "installed the outbox for {} (capture: logical replication, slot {}{})",
                    views.names().join(", "),
                    config.slot,
                    if created { ", created" } else { "" }
                );
            } else {
                views.install().await.map_err(failed)?;
                println!(
                    "installed the outbox and triggers for {}",
                    views.names().join(", ")
                );
            }
        }
        ViewsCommand::Work {
            workers,
            batch,
            lease_ms,
            max_attempts,
        } => {
            // A worker waits for the store: a short-lived command may hold
            // the redb file at the moment it starts.
            let views =
                open_waiting(&common, (workers as u32) * 4 + 2, Duration::from_secs(30)).await?;
            let config = WorkerConfig::default()
                .batch_size(batch)
                .lease(Duration::from_millis(lease_ms))
                .max_attempts(max_attempts);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let feeder = match common.capture {
                Capture::Logical => {
                    let config = views
                        .replication_config(&slot_name(&common))
                        .map_err(failed)?;
                    Some(views.feed_from_replication(config))
                }
                Capture::Triggers | Capture::PolledTriggers => None,
            };
            let mut handles = Vec::new();
            for _ in 0..workers.max(1) {
                let w = views.worker(config.clone());
                let mut rx = stop_rx.clone();
                handles.push(tokio::spawn(w.run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })));
            }
            eprintln!(
                "larder views: {} worker(s) on {} ({}); Ctrl-C to stop",
                workers.max(1),
                views.names().join(", "),
                views.store().name()
            );
            shutdown_signal().await;
            if let Some(f) = feeder {
                f.abort();
            }
            let _ = stop_tx.send(true);
            for h in handles {
                let _ = h.await;
            }
        }
        ViewsCommand::Status { json } => {
            let declared = common.views_named;
            let s = match open(&common, 2).await {
                // Views declared in the application, not in a file: the
                // outbox figures (backlog, lag, dead letters) come from
                // the database alone.
                Err(_) if !declared && common.database.is_some() => {
                    eprintln!(
                        "larder: no views file (views declared in the application): outbox figures only; \
                         documents per view need --views FILE"
                    );
                    let database = common.database.as_deref().unwrap_or_default();
                    let source = Source::connect(database, 2).await.map_err(failed)?;
                    larder_views::outbox_status(&source).await.map_err(failed)?
                }
                Ok(views) => views.status().await.map_err(failed)?,
                // The embedded store is held by a running worker: the
                // outbox figures still come from the database.
                Err(e)
                    if e.code == 1
                        && common
                            .store
                            .as_deref()
                            .unwrap_or_default()
                            .starts_with("redb:") =>
                {
                    eprintln!("larder: documents per view unavailable: {e}");
                    let database = common.database.as_deref().unwrap_or_default();
                    let source = Source::connect(database, 2).await.map_err(failed)?;
                    larder_views::outbox_status(&source).await.map_err(failed)?
                }
                Err(e) => return Err(e),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&s).map_err(failed)?);
            } else {
                println!("backlog      {} ({} in flight)", s.backlog, s.in_flight);
                match s.lag_ms {
                    Some(ms) => println!("lag          {ms} ms (oldest pending change)"),
                    None => println!("lag          0 (nothing pending)"),
                }
                println!("dead letters {}", s.dead_letters);
                for (origin, n) in &s.backlog_by_origin {
                    println!("pending      {origin}: {n}");
                }
                for (view, n) in &s.documents {
                    println!("documents    {view}: {n}");
                }
            }
        }
        ViewsCommand::Rebuild { views: only } => {
            let views = open(&common, 10).await?;
            for name in selected(&views, &only)? {
                let pb = crate::progress::bar(0, &format!("rebuild {name}"));
                let progress = |done: u64, total: u64| {
                    pb.set_length(total);
                    pb.set_position(done);
                };
                let r = views
                    .rebuild(&name, Some(&progress))
                    .await
                    .map_err(failed)?;
                pb.finish_and_clear();
                println!(
                    "rebuilt {name}: {} keys, {} written, {:.1} s",
                    r.keys,
                    r.stored,
                    r.elapsed.as_secs_f64()
                );
            }
        }
        ViewsCommand::Verify {
            views: only,
            sample,
            json,
        } => {
            let views = open(&common, 10).await?;
            let mut drifted = 0;
            let mut reports = Vec::new();
            for name in selected(&views, &only)? {
                let pb = crate::progress::bar(0, &format!("verify {name}"));
                let progress = |done: u64, total: u64| {
                    pb.set_length(total);
                    pb.set_position(done);
                };
                let r = views
                    .verify(&name, sample, Some(&progress))
                    .await
                    .map_err(failed)?;
                pb.finish_and_clear();
                drifted += r.drifted;
                if !json {
                    println!("{name}: {} checked, {} drifted", r.checked, r.drifted);
                    for d in r.drift.iter().take(10) {
                        println!("  {:?} {}", d.kind, d.key);
                    }
                }
                reports.push(r);
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reports).map_err(failed)?
                );
            }
            if drifted > 0 {
                return Err(CliError::drifted(format!(
                    "{drifted} document(s) drifted; `larder views repair` rewrites them"
                )));
            }
        }
        ViewsCommand::Repair {
            views: only,
            requeue_dead,
        } => {
            let views = open(&common, 10).await?;
            if requeue_dead {
                let n = views.requeue_dead_letters().await.map_err(failed)?;
                println!("requeued {n} dead letter(s)");
            }
            for name in selected(&views, &only)? {
                let r = views.repair(&name, None, None).await.map_err(failed)?;
                println!(
                    "{name}: {} checked, {} drifted, {} rewritten",
                    r.checked, r.drifted, r.repaired
                );
            }
        }
    }
    Ok(())
}
