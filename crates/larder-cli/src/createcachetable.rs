//! `larder createcachetable`: creates the SQL cache table (Django's command of
//! the same name). Idempotent; `--dry-run` prints the DDL instead.

use clap::Args;
use larder::sql::{create_table_sql, Dialect, SqlBackend, SqlConfig, SqliteBackend, SqliteConfig};

use crate::CliError;

pub const EXAMPLES: &str = "\
Examples:
  larder createcachetable --url postgres://postgres@127.0.0.1:5432/test
  larder createcachetable --url sqlite:///var/cache/app.db --table page_cache
  LARDER_CACHE_URL=mysql://root@127.0.0.1:3306/test larder createcachetable --dry-run";

#[derive(Args, Debug)]
pub struct CreateCacheTableArgs {
    /// Database URL (sqlite://, postgres://, mysql://); defaults to $LARDER_CACHE_URL.
    #[arg(long, env = "LARDER_CACHE_URL")]
    url: String,
    /// Table name.
    #[arg(long, default_value = "larder_cache")]
    table: String,
    /// Print the SQL instead of running it.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(args: CreateCacheTableArgs) -> Result<(), CliError> {
    let scheme = args.url.split(':').next().unwrap_or_default();
    let dialect = match scheme {
        "sqlite" => Dialect::Sqlite,
        "postgres" | "postgresql" => Dialect::Postgres,
        "mysql" | "mariadb" => Dialect::MySql,
        other => {
            return Err(CliError::usage(format!(
                "{other:?} is not a SQL database URL; createcachetable needs sqlite://, postgres:// or mysql://"
            )))
        }
    };
    if args.dry_run {
        for stmt in create_table_sql(dialect, &args.table) {
            println!("{stmt};");
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))?;
    rt.block_on(async {
        if dialect == Dialect::Sqlite {
            let mut url = larder::backend::CacheUrl::parse(&args.url)?;
            let path = format!("{}{}", url.authority(), url.path());
            url.take_rest();
            let mut config = SqliteConfig::default();
            config.table = args.table.clone();
            config.create_table = false;
            SqliteBackend::open(path, config)?.create_table().await?;
        } else {
            let mut config = SqlConfig::default();
            config.table = args.table.clone();
            config.create_table = false;
            SqlBackend::connect(&args.url, config)
                .await?
                .create_table()
                .await?;
        }
        println!("cache table {:?} is ready", args.table);
        Ok::<_, larder::Error>(())
    })?;
    Ok(())
}
