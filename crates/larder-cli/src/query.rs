//! `larder query install`: the triggers that let writes from outside the
//! application (psql, other services, raw SQL) invalidate the query cache.

use clap::{Args, Subcommand};
use larder_query::SqlDialect;

use crate::CliError;

pub const EXAMPLES: &str = "\
Examples:
  larder query install --database postgres://app@127.0.0.1/app --tables post,comment,users
  larder query install --database sqlite:///var/lib/app/app.db --tables post --dry-run
  larder query install --database mysql://root@127.0.0.1/app --tables post
  larder query install --database postgres://app@127.0.0.1/app --tables comment --no-notify";

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(subcommand)]
    command: QueryCommand,
}

#[derive(Subcommand, Debug)]
enum QueryCommand {
    /// Create the larder_changes log and the capture triggers on the given
    /// tables (idempotent; run again after adding a column): row triggers
    /// logging each changed row's old and new values, which the query
    /// cache reads (polled; on PostgreSQL also NOTIFY).
    #[command(after_help = EXAMPLES)]
    Install(InstallArgs),
}

#[derive(Args, Debug)]
struct InstallArgs {
    /// The application's database (postgres://, mysql://, sqlite://).
    #[arg(long, env = "LARDER_DATABASE_URL")]
    database: String,
    /// Comma-separated tables to watch.
    #[arg(long, value_delimiter = ',', required = true)]
    tables: Vec<String>,
    /// Print the SQL instead of running it (still connects: the triggers
    /// name the columns, read from the catalog).
    #[arg(long)]
    dry_run: bool,
    /// PostgreSQL: leave out the NOTIFY each writing transaction sends.
    /// Writers then do not queue on the server's notification lock (more
    /// write throughput under concurrency), and the application must poll
    /// (`watch_outside_writes`): outside writes are seen within one
    /// polling interval.
    #[arg(long)]
    no_notify: bool,
}

fn dialect_of(url: &str) -> Result<SqlDialect, CliError> {
    let scheme = url.split(':').next().unwrap_or("");
    match scheme {
        "postgres" | "postgresql" => Ok(SqlDialect::Postgres),
        "mysql" | "mariadb" => Ok(SqlDialect::MySql),
        "sqlite" => Ok(SqlDialect::Sqlite),
        _ => Err(CliError::usage(format!(
            "--database {url:?}: use a postgres://, mysql:// or sqlite:// URL"
        ))),
    }
}

pub fn run(args: QueryArgs) -> Result<(), CliError> {
    let QueryCommand::Install(a) = args.command;
    let dialect = dialect_of(&a.database)?;
    let wakeup = if a.no_notify {
        larder_query::Wakeup::Poll
    } else {
        larder_query::Wakeup::Notify
    };
    let tables: Vec<&str> = a
        .tables
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    for t in &tables {
        larder_changes::check_identifier("table", t).map_err(|e| CliError::usage(e.to_string()))?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let failed = |e: sqlx::Error| CliError::failed(format!("{}: {e}", a.database));
        // The columns come from the catalog (MySQL and SQLite triggers
        // name them), so even --dry-run connects.
        macro_rules! install_on {
            ($pool:expr) => {{
                let pool = $pool;
                if a.dry_run {
                    larder_query::install_plan(&pool, dialect, &tables, wakeup)
                        .await
                        .map(|statements| {
                            for s in &statements {
                                println!("{s};");
                            }
                        })
                } else {
                    larder_query::install_with(&pool, dialect, &tables, wakeup).await
                }
            }};
        }
        let done = match dialect {
            SqlDialect::Postgres => {
                install_on!(sqlx::PgPool::connect(&a.database).await.map_err(failed)?)
            }
            SqlDialect::MySql => {
                install_on!(sqlx::MySqlPool::connect(&a.database)
                    .await
                    .map_err(failed)?)
            }
            SqlDialect::Sqlite => {
                install_on!(sqlx::SqlitePool::connect(&a.database)
                    .await
                    .map_err(failed)?)
            }
        };
        done.map_err(|e| CliError::failed(format!("{}: {e}", a.database)))?;
        if a.dry_run {
            return Ok(());
        }
        eprintln!(
            "installed change triggers on {} table(s): {}",
            tables.len(),
            tables.join(", ")
        );
        Ok(())
    })
}
