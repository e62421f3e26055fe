//! `larder query install`: the triggers that let writes from outside the
//! application (psql, other services, raw SQL) invalidate the query cache.

use clap::{Args, Subcommand};
use larder_query::{install_sql, SqlDialect};

use crate::CliError;

pub const EXAMPLES: &str = "\
Examples:
  larder query install --database postgres://app@127.0.0.1/app --tables post,comment,users
  larder query install --database sqlite:///var/lib/app/app.db --tables post --dry-run
  larder query install --database mysql://root@127.0.0.1/app --tables post";

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(subcommand)]
    command: QueryCommand,
}

#[derive(Subcommand, Debug)]
enum QueryCommand {
    /// Create the larder_generations table and the change-counting triggers
    /// on the given tables (idempotent). PostgreSQL: statement triggers that
    /// also NOTIFY; MySQL/MariaDB and SQLite: row triggers, polled.
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
    /// Print the SQL instead of running it.
    #[arg(long)]
    dry_run: bool,
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
    let tables: Vec<&str> = a
        .tables
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    let statements = install_sql(dialect, &tables).map_err(|e| CliError::usage(e.to_string()))?;
    if a.dry_run {
        for s in &statements {
            println!("{s};");
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        let failed = |e: sqlx::Error| CliError::failed(format!("{}: {e}", a.database));
        let done = match dialect {
            SqlDialect::Postgres => {
                let pool = sqlx::PgPool::connect(&a.database).await.map_err(failed)?;
                larder_query::install(&pool, dialect, &tables).await
            }
            SqlDialect::MySql => {
                let pool = sqlx::MySqlPool::connect(&a.database)
                    .await
                    .map_err(failed)?;
                larder_query::install(&pool, dialect, &tables).await
            }
            _ => {
                let pool = sqlx::SqlitePool::connect(&a.database)
                    .await
                    .map_err(failed)?;
                larder_query::install(&pool, dialect, &tables).await
            }
        };
        done.map_err(|e| CliError::failed(format!("{}: {e}", a.database)))?;
        eprintln!(
            "installed change triggers on {} table(s): {}",
            tables.len(),
            tables.join(", ")
        );
        Ok(())
    })
}
