//! `larder demo`: the command line of the larder-demo crate (the forum
//! itself lives there, as a library an application can read and reuse).
//! This file only resolves the options against larder.toml and the
//! environment, draws progress bars and waits for Ctrl-C.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Args;
use larder_demo::{Demo, DemoConfig, DemoError};

use crate::config::Config;
use crate::CliError;

pub const EXAMPLES: &str = "\
Examples:
  larder demo                                   # SQLite + memory cache + redb views in ./larder-demo
  larder demo --listen 127.0.0.1:9000 --posts 2000 --comments 20000
  larder demo --database postgres://postgres@127.0.0.1:5432/larder_demo --cache redis://127.0.0.1:6379/0
  larder demo --database postgres://postgres@127.0.0.1:5432/larder_demo --cache memcached://127.0.0.1:11211 --store sql
  larder demo --reseed                          # drop and seed the data again

On PostgreSQL give the demo a database of its own (createdb larder_demo): it creates,
and with --reseed drops, its users, posts, comments and likes tables.

Pages: /  /posts/ID  /users/ID   Dashboard: /_larder   Prometheus: /metrics
The cache URL also comes from larder.toml ([caches.default] url) or LARDER_CACHE_URL,
the database from [database] url or LARDER_DATABASE_URL.";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Address to serve on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Where the embedded defaults keep their files.
    #[arg(long, default_value = "larder-demo")]
    data_dir: PathBuf,
    /// Source database (default: sqlite in --data-dir).
    #[arg(long)]
    database: Option<String>,
    /// Cache URL for every layer (default: larder.toml / LARDER_CACHE_URL, else mem://).
    #[arg(long)]
    cache: Option<String>,
    /// Views store: redb:PATH (default, in --data-dir), redis://…, sql.
    #[arg(long)]
    store: Option<String>,
    /// Users to seed.
    #[arg(long, default_value_t = 1_000)]
    users: u64,
    /// Posts to seed.
    #[arg(long, default_value_t = 10_000)]
    posts: u64,
    /// Comments to seed.
    #[arg(long, default_value_t = 100_000)]
    comments: u64,
    /// Likes to seed.
    #[arg(long, default_value_t = 50_000)]
    likes: u64,
    /// Drop the demo tables and seed again.
    #[arg(long)]
    reseed: bool,
    /// Requests per second the demo sends itself so the dashboard moves (0: none).
    #[arg(long, default_value_t = 10)]
    traffic: u32,
}

impl From<DemoError> for CliError {
    fn from(e: DemoError) -> Self {
        match e {
            DemoError::Config(_) => CliError::usage(e.to_string()),
            other => CliError::failed(other.to_string()).because(other),
        }
    }
}

/// One indicatif bar per phase the demo reports.
fn progress_bars() -> larder_demo::Progress {
    let current: Mutex<Option<(String, indicatif::ProgressBar)>> = Mutex::new(None);
    Arc::new(move |what: &str, done: u64, total: u64| {
        let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_none_or(|(w, _)| w != what) {
            if let Some((_, old)) = current.take() {
                old.finish_and_clear();
            }
            *current = Some((what.to_owned(), crate::progress::bar(total, what)));
        }
        if let Some((_, pb)) = current.as_ref() {
            pb.set_length(total);
            pb.set_position(done);
            if done >= total {
                pb.finish_and_clear();
            }
        }
    })
}

pub fn run(args: DemoArgs, config: Option<&str>) -> Result<(), CliError> {
    let config = Config::load(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(run_async(args, config))
}

async fn run_async(args: DemoArgs, config: Config) -> Result<(), CliError> {
    let mut demo = DemoConfig::new(&args.data_dir);
    demo.database = args.database.clone().or_else(|| config.database_url());
    demo.cache_url = match &args.cache {
        Some(u) => Some(u.clone()),
        None if config.caches.contains_key("default")
            || std::env::var("LARDER_CACHE_URL").is_ok() =>
        {
            Some(config.cache_url("default")?)
        }
        None => None,
    };
    demo.store = args.store.clone().or_else(|| config.store.url.clone());
    demo.users = args.users;
    demo.posts = args.posts;
    demo.comments = args.comments;
    demo.likes = args.likes;
    demo.reseed = args.reseed;
    demo.traffic = args.traffic;
    demo.progress = Some(progress_bars());
    let demo = Demo::build(demo).await?;
    if demo.seeded() {
        println!(
            "seeded {} users, {} posts, {} comments, {} likes",
            args.users.max(1),
            args.posts.max(1),
            args.comments,
            args.likes
        );
    }

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| {
            CliError::usage(format!(
                "cannot listen on {}: {e} (try --listen 127.0.0.1:0)",
                args.listen
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::failed(e.to_string()).because(e))?;
    println!("larder demo: http://{addr}/  (dashboard http://{addr}/_larder)");
    println!("  {}", demo.describe());
    demo.serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
