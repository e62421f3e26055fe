//! Writes from outside the application: triggers that count changes per
//! table in a `larder_generations` table, and a watcher that turns those
//! counts into cache generation bumps.
//!
//! On PostgreSQL the trigger is per statement and also sends
//! `NOTIFY larder_generations` with the table name, so a listener can react
//! at once ([`listen_postgres`]); on MySQL/MariaDB (no statement triggers)
//! and SQLite the triggers are per row and the application polls
//! ([`QueryCache::watch_outside_writes`]). After a listener reconnects it
//! polls once, since notifications sent while it was away are lost.
//!
//! Bound: a write from outside is seen after at most one poll interval
//! (plus, on PostgreSQL with a listener, one notification delivery).
//! `TRUNCATE` fires no trigger on MySQL/MariaDB and SQLite.

use std::collections::HashMap;

use crate::analyze::{normalize, SqlDialect};
use crate::generations::Generations;

/// The table the triggers write.
pub const GENERATIONS_TABLE: &str = "larder_generations";
/// The PostgreSQL NOTIFY channel.
pub const CHANNEL: &str = "larder_generations";

use larder_changes::is_identifier as valid_identifier;

/// The statements that install the change-counting triggers on `tables`
/// (idempotent: run them again after adding a table). Table names must be
/// plain identifiers.
pub fn install_sql(
    dialect: SqlDialect,
    tables: &[&str],
) -> Result<Vec<String>, larder_core::Error> {
    let g = GENERATIONS_TABLE;
    let mut out = Vec::new();
    match dialect {
        SqlDialect::Postgres => {
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {g} (table_name TEXT PRIMARY KEY, generation BIGINT NOT NULL DEFAULT 0)"
            ));
            out.push(format!(
                "CREATE OR REPLACE FUNCTION larder_bump() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN \
                   INSERT INTO {g} (table_name, generation) VALUES (TG_ARGV[0], 1) \
                     ON CONFLICT (table_name) DO UPDATE SET generation = {g}.generation + 1; \
                   PERFORM pg_notify('{CHANNEL}', TG_ARGV[0]); \
                   RETURN NULL; \
                 END $$"
            ));
        }
        SqlDialect::MySql => out.push(format!(
            "CREATE TABLE IF NOT EXISTS {g} (table_name VARCHAR(64) PRIMARY KEY, generation BIGINT NOT NULL DEFAULT 0)"
        )),
        SqlDialect::Sqlite => out.push(format!(
            "CREATE TABLE IF NOT EXISTS {g} (table_name TEXT PRIMARY KEY, generation INTEGER NOT NULL DEFAULT 0)"
        )),
    }
    for t in tables {
        if !valid_identifier(t) {
            return Err(larder_core::Error::config(format!(
                "{t:?} is not a plain table name (letters, digits, _)"
            )));
        }
        let name = normalize(t);
        match dialect {
            SqlDialect::Postgres => {
                out.push(format!("DROP TRIGGER IF EXISTS larder_bump_{name} ON {t}"));
                out.push(format!(
                    "CREATE TRIGGER larder_bump_{name} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t} \
                     FOR EACH STATEMENT EXECUTE FUNCTION larder_bump('{name}')"
                ));
            }
            SqlDialect::MySql => {
                for (ev, short) in [("INSERT", "ins"), ("UPDATE", "upd"), ("DELETE", "del")] {
                    out.push(format!("DROP TRIGGER IF EXISTS larder_bump_{name}_{short}"));
                    out.push(format!(
                        "CREATE TRIGGER larder_bump_{name}_{short} AFTER {ev} ON {t} FOR EACH ROW \
                         INSERT INTO {g} (table_name, generation) VALUES ('{name}', 1) \
                         ON DUPLICATE KEY UPDATE generation = generation + 1"
                    ));
                }
            }
            SqlDialect::Sqlite => {
                // IF NOT EXISTS rather than DROP + CREATE: run through sqlx a
                // second time, the CREATE reported the dropped trigger as
                // still existing (cause not found).
                for (ev, short) in [("INSERT", "ins"), ("UPDATE", "upd"), ("DELETE", "del")] {
                    out.push(format!(
                        "CREATE TRIGGER IF NOT EXISTS larder_bump_{name}_{short} AFTER {ev} ON {t} BEGIN \
                         INSERT INTO {g} (table_name, generation) VALUES ('{name}', 1) \
                         ON CONFLICT (table_name) DO UPDATE SET generation = generation + 1; END"
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// What the watcher last saw, to tell which tables changed.
#[derive(Debug, Default)]
pub(crate) struct Seen(HashMap<String, i64>);

impl Seen {
    /// Tables whose counts moved (all of them the first time: the cache may
    /// hold results from before the watcher started).
    pub(crate) fn changed(&mut self, rows: Vec<(String, i64)>) -> Vec<String> {
        let first = self.0.is_empty();
        let mut out = Vec::new();
        for (t, g) in rows {
            let t = normalize(&t);
            if first || self.0.get(&t) != Some(&g) {
                out.push(t.clone());
            }
            self.0.insert(t, g);
        }
        out
    }
}

/// Bumps cache generations when PostgreSQL notifies a trigger's change;
/// resyncs by `poll` after every (re)connection. Runs until the task is
/// dropped.
pub async fn listen_postgres<F, Fut>(url: String, generations: Generations, mut poll: F)
where
    F: FnMut() -> Fut + Send,
    Fut: std::future::Future<Output = ()> + Send,
{
    larder_changes::listen_postgres(&url, CHANNEL, "query cache", |event| {
        let generations = generations.clone();
        let resync = matches!(event, larder_changes::ListenEvent::Connected).then(&mut poll);
        async move {
            match (event, resync) {
                (_, Some(poll)) => poll.await,
                (larder_changes::ListenEvent::Notification(payload), None) => {
                    let table = normalize(&payload);
                    if let Err(e) = generations.bump(&[table.as_str()]).await {
                        tracing::error!(error = %e, table, "query cache: could not bump after an outside write");
                    }
                }
                _ => {}
            }
            std::ops::ControlFlow::Continue(())
        }
    })
    .await;
}

/// Runs [`install_sql`] on `pool`: on PostgreSQL as one transaction under
/// an advisory lock (two installs at once would otherwise race on
/// `CREATE OR REPLACE FUNCTION`: "tuple concurrently updated"), elsewhere
/// statement by statement on one connection.
pub async fn install<DB>(
    pool: &sqlx::Pool<DB>,
    dialect: SqlDialect,
    tables: &[&str],
) -> Result<(), larder_core::Error>
where
    DB: sqlx::Database,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
{
    let statements = install_sql(dialect, tables)?;
    let err = |e: sqlx::Error| larder_core::Error::backend("sql", e);
    let mut conn = pool.acquire().await.map_err(err)?;
    if matches!(dialect, SqlDialect::Postgres) {
        let script = format!(
            "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('{GENERATIONS_TABLE}'));\n{};\nCOMMIT;",
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

    #[test]
    fn install_sql_checks_names_and_covers_every_event() {
        assert!(install_sql(SqlDialect::Postgres, &["post; DROP TABLE x"]).is_err());
        let pg = install_sql(SqlDialect::Postgres, &["post"])
            .unwrap()
            .join("\n");
        assert!(
            pg.contains("FOR EACH STATEMENT")
                && pg.contains("TRUNCATE")
                && pg.contains("pg_notify")
        );
        let my = install_sql(SqlDialect::MySql, &["post"])
            .unwrap()
            .join("\n");
        assert_eq!(my.matches("CREATE TRIGGER").count(), 3);
        let lite = install_sql(SqlDialect::Sqlite, &["post"])
            .unwrap()
            .join("\n");
        assert!(lite.contains("ON CONFLICT"));
    }

    #[test]
    fn seen_reports_moves_and_everything_at_first() {
        let mut s = Seen::default();
        assert_eq!(
            s.changed(vec![("post".into(), 3), ("comment".into(), 1)]),
            ["post", "comment"]
        );
        assert!(s
            .changed(vec![("post".into(), 3), ("comment".into(), 1)])
            .is_empty());
        assert_eq!(
            s.changed(vec![("post".into(), 4), ("comment".into(), 1)]),
            ["post"]
        );
    }
}
