//! The `larder` command.

mod bench;
mod config;
mod createcachetable;
mod demo;
mod ops;
mod progress;
mod proxy;
mod query;
mod views;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// hyper's buffers and the per-request futures and header maps are many
/// short-lived allocations of mixed sizes, which glibc's allocator serves
/// slowly from several threads (see docs/BENCHMARKS.md, 2026-12-07).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// larder: caching and denormalized data for Rust services.
#[derive(Parser)]
#[command(name = "larder", version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: $LARDER_CONFIG, else ./larder.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo forum: every part of larder at work, with a live
    /// dashboard at /_larder (embedded defaults: no server needed).
    #[command(after_help = demo::EXAMPLES)]
    Demo(demo::DemoArgs),
    /// Show a running demo's or proxy's figures, or probe a configured cache.
    #[command(after_help = ops::STATS_EXAMPLES)]
    Stats(ops::StatsArgs),
    /// Clear a configured cache (its own key prefix where the backend allows).
    #[command(after_help = ops::CLEAR_EXAMPLES)]
    Clear(ops::ClearArgs),
    /// Measure cache operations the way Django's cache_ops.py does, and write
    /// the same JSON, so the two can be compared side by side.
    #[command(after_help = bench::EXAMPLES)]
    Bench(bench::BenchArgs),
    /// A caching reverse proxy (RFC 9111 shared cache) in front of any HTTP
    /// application, with its own status, metrics and purge under /_larder/.
    #[command(after_help = proxy::EXAMPLES)]
    Proxy(proxy::ProxyArgs),
    /// Query cache administration: `larder query install` creates the
    /// triggers through which writes from outside the application
    /// invalidate cached queries.
    #[command(after_help = query::EXAMPLES)]
    Query(query::QueryArgs),
    /// Denormalized views declared in a views file: install the outbox and
    /// triggers, run workers, status, rebuild, verify, repair.
    #[command(after_help = views::EXAMPLES)]
    Views(views::ViewsArgs),
    /// Create the cache table of a SQL cache (idempotent).
    #[command(after_help = createcachetable::EXAMPLES)]
    Createcachetable(createcachetable::CreateCacheTableArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LARDER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args, config),
        Command::Stats(args) => ops::stats(args, config),
        Command::Clear(args) => ops::clear(args, config),
        Command::Bench(args) => bench::run(args),
        Command::Createcachetable(args) => createcachetable::run(args),
        Command::Proxy(args) => proxy::run(args, config),
        Command::Query(args) => query::run(args),
        Command::Views(args) => views::run(args, config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("larder: {}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}

/// An error of the command line, with the exit code it maps to and the
/// error that caused it (printed as "caused by" lines).
#[derive(Debug)]
pub struct CliError {
    pub(crate) message: String,
    pub(crate) code: u8,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl CliError {
    /// Bad arguments or configuration: exit code 2.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 2,
            source: None,
        }
    }
    /// The work failed: exit code 1.
    pub fn failed(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 1,
            source: None,
        }
    }
    /// `larder views verify` found drift: exit code 3.
    pub fn drifted(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: 3,
            source: None,
        }
    }
    /// Keeps `source` as the cause.
    pub fn because(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
    fn exit_code(&self) -> u8 {
        self.code
    }
    /// The message, then each cause not already part of it.
    fn report(&self) -> String {
        let mut out = self.message.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            let text = e.to_string();
            if !out.contains(&text) {
                out.push_str("\n  caused by: ");
                out.push_str(&text);
            }
            next = e.source();
        }
        out
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<larder::Error> for CliError {
    fn from(e: larder::Error) -> Self {
        let message = e.to_string();
        match e {
            larder::Error::Config(_) => CliError::usage(message).because(e),
            other => CliError::failed(message).because(other),
        }
    }
}

impl From<larder_query::QueryError> for CliError {
    fn from(e: larder_query::QueryError) -> Self {
        CliError::failed(e.to_string()).because(e)
    }
}

impl From<larder_views::Error> for CliError {
    fn from(e: larder_views::Error) -> Self {
        CliError::failed(e.to_string()).because(e)
    }
}

#[cfg(test)]
mod cli_error_tests {
    use super::CliError;

    #[test]
    fn keeps_its_source_and_reports_the_chain() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused by 127.0.0.1:6379",
        );
        let e = CliError::failed("cannot reach the cache").because(io);
        let source = std::error::Error::source(&e).expect("the cause is kept");
        let io = source.downcast_ref::<std::io::Error>().expect("as itself");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            e.report(),
            "cannot reach the cache\n  caused by: refused by 127.0.0.1:6379"
        );
        // A larder error converts with its exit code and stays matchable.
        let e = CliError::from(larder::Error::config("bad option x"));
        assert_eq!(e.exit_code(), 2);
        assert!(std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<larder::Error>())
            .is_some_and(|l| matches!(l, larder::Error::Config(_))));
        assert_eq!(
            e.report(),
            "invalid cache configuration: bad option x",
            "a cause already in the message is not repeated"
        );
    }
}
