//! Writes from outside the application: row-level triggers append the old
//! and new values of each changed row to the change log
//! (`larder_changes`), and the query cache follows the log, bumping the
//! generations those values name, as an in-app write does. So a write
//! from psql or another service invalidates only the cached reads of the
//! rows it touched.
//!
//! The trigger DDL is larder-changes' ([`larder_changes::triggers`]), the
//! same larder-views installs into its outbox; following the log without
//! ever skipping a transaction that commits late is
//! [`larder_changes::changelog::LogCursor`].
//!
//! On PostgreSQL each write also sends `NOTIFY larder_changes` by default
//! ([`Wakeup::Notify`]), so a listener reads the log at once
//! ([`QueryCache::watch_postgres`]); elsewhere, or installed with
//! [`Wakeup::Poll`], the application polls
//! ([`QueryCache::watch_outside_writes`]).
//!
//! Bound: a committed write from outside is seen after at most one poll
//! interval (with a listener, one notification delivery). `TRUNCATE` fires
//! no row trigger: on PostgreSQL a statement trigger logs it as a change
//! of the whole table; MySQL/MariaDB and SQLite cannot see it.
//!
//! [`QueryCache::watch_postgres`]: crate::QueryCache::watch_postgres
//! [`QueryCache::watch_outside_writes`]: crate::QueryCache::watch_outside_writes

use std::collections::BTreeSet;

use larder_changes::changelog::{self, LogRow};
use larder_changes::triggers::{self, Columns, Sink};

use crate::analyze::{normalize, SqlDialect};
use crate::capture::TouchedKeys;
use crate::rows::canon_json;

/// The change log the triggers append to.
pub const CHANGE_LOG: &str = changelog::CHANGE_LOG;
/// The PostgreSQL NOTIFY channel.
pub const CHANNEL: &str = "larder_changes";
/// Rows older than this are pruned from the change log (by any reader, at
/// most every [`PRUNE_EVERY`]). A reader that falls further behind than
/// this resyncs.
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(600);
/// How often a reader prunes the change log.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

pub use larder_changes::triggers::Wakeup;

/// How the query cache's triggers write.
fn sink(wakeup: Wakeup) -> Sink<'static> {
    Sink {
        prefix: "larder_qc",
        table: CHANGE_LOG,
        notify: wakeup.channel(CHANNEL),
    }
}
/// The statement-level counting triggers of earlier versions, removed by
/// [`install_sql`] (they took a lock every writer of the table queued on).
const LEGACY_PREFIX: &str = "larder_bump";

/// The statements that create the change log and install the capture
/// triggers on `tables` (idempotent: run them again after adding a table
/// or a column). Each table comes with its columns; PostgreSQL captures
/// every column whatever is given (`row_to_json`), the other dialects
/// need the names ([`install`] reads them from the catalog). Names must be
/// plain identifiers. `wakeup` says whether PostgreSQL's triggers also
/// notify readers (installing again with the other value replaces the
/// trigger functions).
pub fn install_sql(
    dialect: SqlDialect,
    tables: &[(&str, Vec<String>)],
    wakeup: Wakeup,
) -> Result<Vec<String>, larder_core::Error> {
    let config = |e: larder_changes::Error| larder_core::Error::config(e.to_string());
    let mut out = vec![changelog::log_table_sql(dialect, CHANGE_LOG)];
    let truncate_fn = match wakeup.channel(CHANNEL) {
        Some(_) => "larder_qc_truncate",
        None => "larder_qc_truncate_quiet",
    };
    if dialect == SqlDialect::Postgres {
        // TRUNCATE fires no row trigger: log it as a whole-table change
        // (no old and no new row). One function per wakeup, as it is
        // shared by every table: installing some tables with the other
        // wakeup must not change how these notify.
        let notify = wakeup
            .channel(CHANNEL)
            .map(|c| format!("PERFORM pg_notify('{c}', ''); "))
            .unwrap_or_default();
        out.push(format!(
            "CREATE OR REPLACE FUNCTION {truncate_fn}() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               INSERT INTO {CHANGE_LOG} (table_name, old_row, new_row, created_ms) VALUES (TG_ARGV[0], NULL, NULL, {}); \
               {notify}RETURN NULL; \
             END $$",
            dialect.now_ms()
        ));
    }
    for (t, cols) in tables {
        let name = normalize(t);
        larder_changes::check_identifier("table", &name).map_err(config)?;
        out.extend(triggers::drop_trigger_sql(dialect, LEGACY_PREFIX, &name).map_err(config)?);
        if dialect == SqlDialect::Postgres {
            out.extend(
                triggers::row_trigger_sql(dialect, sink(wakeup), &name, Columns::All)
                    .map_err(config)?,
            );
            out.push(format!(
                "DROP TRIGGER IF EXISTS larder_qc_truncate_{name} ON {name}"
            ));
            out.push(format!(
                "CREATE TRIGGER larder_qc_truncate_{name} AFTER TRUNCATE ON {name} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {truncate_fn}('{name}')"
            ));
        } else {
            if cols.is_empty() {
                return Err(larder_core::Error::config(format!(
                    "table {t:?} has no columns to capture (does it exist?)"
                )));
            }
            let cols: BTreeSet<String> = cols.iter().map(|c| normalize(c)).collect();
            out.extend(
                triggers::row_trigger_sql(dialect, sink(wakeup), &name, Columns::Only(&cols))
                    .map_err(config)?,
            );
        }
    }
    Ok(out)
}

/// The keys one read of the change log bumps. A row with neither side
/// (a logged TRUNCATE) or with a side that does not parse as a JSON object
/// bumps its whole table.
pub(crate) fn keys_of(dialect: SqlDialect, rows: &[LogRow]) -> BTreeSet<String> {
    let mut touched = TouchedKeys::default();
    for r in rows {
        let table = normalize(&r.table);
        if r.old_row.is_none() && r.new_row.is_none() {
            touched.table(&table);
            continue;
        }
        for side in [&r.old_row, &r.new_row].into_iter().flatten() {
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(side) {
                Ok(obj) => {
                    let values: Vec<(String, crate::rows::Canon)> = obj
                        .iter()
                        .map(|(c, v)| (c.to_ascii_lowercase(), canon_json(dialect, v)))
                        .collect();
                    touched.row(&table, &values);
                }
                Err(e) => {
                    tracing::warn!(table, error = %e, "query cache: unreadable change-log row; invalidating the table");
                    touched.table(&table);
                }
            }
        }
    }
    touched.into_keys()
}

/// Wakes `wake` whenever PostgreSQL notifies a captured write, and after
/// every (re)connection (notifications sent while disconnected are lost,
/// so the reader reads the log then). The reader coalesces: many
/// notifications while it reads make one more read. Runs until the task
/// is dropped.
#[cfg(feature = "postgres")]
pub async fn listen_postgres(url: String, wake: std::sync::Arc<tokio::sync::Notify>) {
    larder_changes::listen_postgres(&url, CHANNEL, "query cache", |_event| {
        wake.notify_one();
        std::future::ready(std::ops::ControlFlow::Continue(()))
    })
    .await;
}

/// The columns of `table` by name, from the catalog (not needed on
/// PostgreSQL, whose triggers capture the whole row).
async fn columns_of<DB>(
    pool: &sqlx::Pool<DB>,
    dialect: SqlDialect,
    table: &str,
) -> Result<Vec<String>, larder_core::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    use sqlx::Row;
    let name = normalize(table);
    larder_changes::check_identifier("table", &name)
        .map_err(|e| larder_core::Error::config(e.to_string()))?;
    let sql = match dialect {
        SqlDialect::Postgres => return Ok(Vec::new()),
        SqlDialect::MySql => format!(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{name}' ORDER BY ORDINAL_POSITION"
        ),
        SqlDialect::Sqlite => format!("SELECT name FROM pragma_table_info('{name}')"),
    };
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| larder_core::Error::backend("sql", e))?;
    let rows = sqlx::query::<DB>(&sql)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| larder_core::Error::backend("sql", e))?;
    rows.iter()
        .map(|r| {
            r.try_get::<String, _>(0usize)
                .map_err(|e| larder_core::Error::backend("sql", e))
        })
        .collect()
}

/// [`install_sql`] for `tables` as they are in the database at `pool`
/// (their columns read from the catalog): for review, or to run by hand.
pub async fn install_plan<DB>(
    pool: &sqlx::Pool<DB>,
    dialect: SqlDialect,
    tables: &[&str],
    wakeup: Wakeup,
) -> Result<Vec<String>, larder_core::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let mut with_columns = Vec::with_capacity(tables.len());
    for t in tables {
        with_columns.push((*t, columns_of(pool, dialect, t).await?));
    }
    install_sql(dialect, &with_columns, wakeup)
}

/// Installs the change log and the capture triggers on `tables`
/// ([`install_plan`]): on PostgreSQL as one transaction under an advisory
/// lock (two installs at once would otherwise race on `CREATE OR REPLACE
/// FUNCTION`: "tuple concurrently updated"), elsewhere statement by
/// statement on one connection. Run it again after adding a column.
///
/// On PostgreSQL each writing transaction also notifies readers
/// ([`Wakeup::Notify`]); [`install_with`] chooses.
pub async fn install<DB>(
    pool: &sqlx::Pool<DB>,
    dialect: SqlDialect,
    tables: &[&str],
) -> Result<(), larder_core::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    install_with(pool, dialect, tables, Wakeup::default()).await
}

/// [`install`], choosing how readers learn of a write: [`Wakeup::Poll`]
/// installs PostgreSQL triggers without the `NOTIFY`, for sources whose
/// write throughput matters more than a visibility bound below the
/// polling interval.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), larder_core::Error> {
/// use larder_query::{SqlDialect, Wakeup};
/// larder_query::install_with(&pool, SqlDialect::Postgres, &["post", "comment"], Wakeup::Poll).await?;
/// # Ok(()) }
/// ```
pub async fn install_with<DB>(
    pool: &sqlx::Pool<DB>,
    dialect: SqlDialect,
    tables: &[&str],
    wakeup: Wakeup,
) -> Result<(), larder_core::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'r> String: sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let statements = install_plan(pool, dialect, tables, wakeup).await?;
    let err = |e: sqlx::Error| larder_core::Error::backend("sql", e);
    let mut conn = pool.acquire().await.map_err(err)?;
    if matches!(dialect, SqlDialect::Postgres) {
        let script = format!(
            "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('{CHANGE_LOG}'));\n{};\nCOMMIT;",
            statements.join(";\n")
        );
        sqlx::raw_sql(&script)
            .execute(&mut *conn)
            .await
            .map_err(err)?;
    } else {
        for s in &statements {
            sqlx::raw_sql(s).execute(&mut *conn).await.map_err(err)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn install_sql_checks_names_and_covers_every_event() {
        assert!(install_sql(
            SqlDialect::Postgres,
            &[("post; DROP TABLE x", vec![])],
            Wakeup::Notify
        )
        .is_err());
        assert!(install_sql(
            SqlDialect::MySql,
            &[("post", cols(&["id); --"]))],
            Wakeup::Notify
        )
        .is_err());
        assert!(install_sql(SqlDialect::Sqlite, &[("post", vec![])], Wakeup::Notify).is_err());
        let pg = install_sql(SqlDialect::Postgres, &[("post", vec![])], Wakeup::Notify)
            .unwrap()
            .join("\n");
        assert!(pg.contains("FOR EACH ROW") && pg.contains("row_to_json(OLD)"));
        assert!(pg.contains("AFTER TRUNCATE") && pg.contains("pg_notify"));
        assert!(pg.contains("DROP TRIGGER IF EXISTS larder_bump_post ON post"));
        let my = install_sql(
            SqlDialect::MySql,
            &[("post", cols(&["id", "author_id"]))],
            Wakeup::Notify,
        )
        .unwrap()
        .join("\n");
        assert_eq!(my.matches("CREATE TRIGGER").count(), 3);
        assert!(my.contains("JSON_OBJECT('author_id', NEW.author_id, 'id', NEW.id)"));
        let lite = install_sql(
            SqlDialect::Sqlite,
            &[("post", cols(&["id"]))],
            Wakeup::Notify,
        )
        .unwrap()
        .join("\n");
        assert!(lite.contains("json_object"));
    }

    #[test]
    fn polled_triggers_send_no_notification() {
        let pg = install_sql(SqlDialect::Postgres, &[("post", vec![])], Wakeup::Poll)
            .unwrap()
            .join("\n");
        // Still logs rows and TRUNCATE, replaces the notifying functions.
        assert!(pg.contains("CREATE OR REPLACE FUNCTION larder_qc_post()"));
        assert!(pg.contains("AFTER TRUNCATE") && pg.contains("INSERT INTO larder_changes"));
        assert!(!pg.contains("pg_notify"), "{pg}");
        // Elsewhere there is no notification to leave out.
        for d in [SqlDialect::MySql, SqlDialect::Sqlite] {
            let t = [("post", cols(&["id"]))];
            assert_eq!(
                install_sql(d, &t, Wakeup::Poll).unwrap(),
                install_sql(d, &t, Wakeup::Notify).unwrap()
            );
        }
    }

    fn row(table: &str, old: Option<&str>, new: Option<&str>) -> LogRow {
        LogRow {
            id: 1,
            table: table.into(),
            old_row: old.map(str::to_owned),
            new_row: new.map(str::to_owned),
        }
    }

    #[test]
    fn log_rows_bump_the_values_they_hold() {
        use crate::generations::{column_key, rows_key, table_key, value_key};
        let keys = keys_of(
            SqlDialect::Postgres,
            &[row(
                "comment",
                Some(r#"{"id": 7, "post_id": 3, "body": "x"}"#),
                Some(r#"{"id": 7, "post_id": 4, "body": "y"}"#),
            )],
        );
        for k in [
            value_key("comment", "id", 7),
            value_key("comment", "post_id", 3),
            value_key("comment", "post_id", 4),
            rows_key("comment"),
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(!keys.contains(&table_key("comment")));
        // MySQL text may be a date or an ENUM: the column, not a value.
        let keys = keys_of(
            SqlDialect::MySql,
            &[row("c", None, Some(r#"{"d": "2026-01-01"}"#))],
        );
        assert!(keys.contains(&column_key("c", "d")));
        // A TRUNCATE, and a row that does not parse: the whole table.
        let keys = keys_of(
            SqlDialect::Postgres,
            &[row("c", None, None), row("d", Some("{"), None)],
        );
        assert!(keys.contains(&table_key("c")) && keys.contains(&table_key("d")));
    }
}
