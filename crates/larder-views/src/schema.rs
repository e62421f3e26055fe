//! The tables larder-views keeps in the source database, and the triggers
//! that capture every write to a source table (raw SQL from other programs
//! included) into the outbox.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Result;
use crate::source::{Dialect, Source};
use crate::view::ViewDef;
use larder_changes::triggers::Wakeup;

/// The outbox: pending changes, one row per captured row change or
/// enqueued view key.
pub const OUTBOX_TABLE: &str = "larder_outbox";
/// Outbox entries that failed `max_attempts` times.
pub const DEAD_TABLE: &str = "larder_outbox_dead";
/// The version ticket (a sequence on PostgreSQL, a one-row table elsewhere).
pub const TICKET: &str = "larder_view_ticket";
/// The PostgreSQL NOTIFY channel that wakes workers.
pub const CHANNEL: &str = "larder_outbox";

fn identifier(what: &str, s: &str) -> Result<()> {
    Ok(larder_changes::check_identifier(what, s)?)
}

/// The columns each source table's trigger captures: the union of what
/// the views' dependencies on it read.
pub fn captured_columns(views: &[&ViewDef]) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for v in views {
        for d in &v.deps {
            identifier("table", &d.table)?;
            let cols = out.entry(d.table.clone()).or_default();
            for c in d.columns() {
                identifier("column", &c)?;
                cols.insert(c);
            }
        }
    }
    Ok(out)
}

/// The statements creating the outbox, dead-letter and ticket tables
/// (idempotent).
pub fn tables_sql(dialect: Dialect) -> Vec<String> {
    let (id, text, int) = match dialect {
        Dialect::Postgres => ("BIGSERIAL PRIMARY KEY", "TEXT", "BIGINT"),
        Dialect::MySql => ("BIGINT AUTO_INCREMENT PRIMARY KEY", "TEXT", "BIGINT"),
        Dialect::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", "INTEGER"),
    };
    let mut out = vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (id {id}, view_name {text}, view_key {text}, \
             table_name {text}, old_row {text}, new_row {text}, created_ms {int} NOT NULL, \
             attempts {int} NOT NULL DEFAULT 0, claimed_until {int} NOT NULL DEFAULT 0, last_error {text})"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {DEAD_TABLE} (id {int} PRIMARY KEY, view_name {text}, view_key {text}, \
             table_name {text}, old_row {text}, new_row {text}, created_ms {int} NOT NULL, \
             attempts {int} NOT NULL, last_error {text}, failed_ms {int} NOT NULL)"
        ),
    ];
    match dialect {
        Dialect::Postgres => out.push(format!("CREATE SEQUENCE IF NOT EXISTS {TICKET}")),
        Dialect::MySql | Dialect::Sqlite => {
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {TICKET} (id INTEGER PRIMARY KEY, v {int} NOT NULL)"
            ));
            let ignore = if dialect == Dialect::MySql {
                "INSERT IGNORE"
            } else {
                "INSERT OR IGNORE"
            };
            out.push(format!("{ignore} INTO {TICKET} (id, v) VALUES (1, 0)"));
        }
    }
    out
}

/// How the views' triggers write: into the outbox, waking workers unless
/// they poll.
pub fn sink(wakeup: Wakeup) -> larder_changes::triggers::Sink<'static> {
    larder_changes::triggers::Sink {
        prefix: "larder_capture",
        table: OUTBOX_TABLE,
        notify: wakeup.channel(CHANNEL),
    }
}

/// The statements installing the capture triggers for one table
/// (replacing earlier ones, so a changed column set takes effect). The
/// DDL is larder-changes' ([`larder_changes::triggers`]), shared with
/// larder-query's change log.
pub fn trigger_sql(
    dialect: Dialect,
    table: &str,
    cols: &BTreeSet<String>,
    wakeup: Wakeup,
) -> Result<Vec<String>> {
    Ok(larder_changes::triggers::row_trigger_sql(
        dialect,
        sink(wakeup),
        table,
        larder_changes::triggers::Columns::Only(cols),
    )?)
}

/// Every statement [`Views::install`](crate::Views::install) runs, in order (for review, or to run by
/// hand: `larder views install --dry-run`). `wakeup`: whether
/// PostgreSQL's triggers also notify workers ([`crate::ViewsBuilder::wakeup`]).
pub fn install_sql(dialect: Dialect, views: &[&ViewDef], wakeup: Wakeup) -> Result<Vec<String>> {
    let mut out = tables_sql(dialect);
    for (table, cols) in captured_columns(views)? {
        out.extend(trigger_sql(dialect, &table, &cols, wakeup)?);
    }
    Ok(out)
}

/// Creates the tables and (re)installs the triggers. On PostgreSQL in one
/// transaction under an advisory lock (concurrent installs would race on
/// `CREATE OR REPLACE FUNCTION`); elsewhere statement by statement on one
/// connection.
pub async fn install(source: &Source, views: &[&ViewDef], wakeup: Wakeup) -> Result<()> {
    let statements = install_sql(source.dialect, views, wakeup)?;
    let mut conn = source.pool.acquire().await?;
    match source.dialect {
        Dialect::Postgres => {
            let script = format!(
                "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('{OUTBOX_TABLE}'));\n{};\nCOMMIT;",
                statements.join(";\n")
            );
            sqlx::raw_sql(&script).execute(&mut *conn).await?;
        }
        Dialect::MySql | Dialect::Sqlite => {
            for s in &statements {
                sqlx::raw_sql(s).execute(&mut *conn).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::SqlView;

    #[test]
    fn columns_are_the_union_per_table_and_names_are_checked() {
        let a = SqlView::new("q", "k")
            .depends_on("posts", "id")
            .depends_via("users", "id", "SELECT id FROM posts WHERE author_id = $1")
            .named("a");
        let b = SqlView::new("q", "k")
            .depends_on("posts", "author_id")
            .named("b");
        let cols = captured_columns(&[&a, &b]).unwrap();
        assert_eq!(
            cols["posts"].iter().cloned().collect::<Vec<_>>(),
            vec!["author_id".to_owned(), "id".to_owned()]
        );
        assert_eq!(cols["users"].len(), 1);
        let bad = SqlView::new("q", "k")
            .depends_on("posts; DROP", "id")
            .named("c");
        assert!(captured_columns(&[&bad]).is_err());
    }

    #[test]
    fn every_dialect_captures_insert_update_delete() {
        let cols: BTreeSet<String> = ["id".to_owned(), "post_id".to_owned()].into();
        for d in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            let sql = trigger_sql(d, "comments", &cols, Wakeup::Notify)
                .unwrap()
                .join("\n");
            assert!(
                sql.contains("'post_id', ") && sql.contains("NEW.post_id"),
                "{sql}"
            );
            assert_eq!(sql.contains("pg_notify"), d == Dialect::Postgres, "{sql}");
            let polled = trigger_sql(d, "comments", &cols, Wakeup::Poll)
                .unwrap()
                .join("\n");
            assert!(!polled.contains("pg_notify"), "{polled}");
            assert!(polled.contains("larder_outbox"), "{polled}");
            assert!(
                sql.contains("OLD.post_id") && sql.contains("larder_outbox"),
                "{sql}"
            );
            assert!(sql.contains("UPDATE") && sql.contains("DELETE") && sql.contains("INSERT"));
        }
    }
}
