//! Row-level capture triggers, per dialect: one home for the DDL that
//! larder-views (into its outbox) and larder-query (into its change log)
//! install on source tables.
//!
//! Every trigger appends one row per changed row to a *sink* table with
//! the columns `(table_name, old_row, new_row, created_ms)`: `old_row` and
//! `new_row` are JSON objects of the captured columns (`NULL` for the side
//! an INSERT or DELETE does not have). Appending to a table of its own
//! takes no lock another writer waits for, unlike a shared counter row.

use std::collections::BTreeSet;

use crate::{check_identifier, Dialect, Error};

/// Where a trigger writes, and what it is called.
#[derive(Debug, Clone, Copy)]
pub struct Sink<'a> {
    /// Prefix of the trigger (and PostgreSQL function) names: each
    /// consumer owns its triggers, so installing one never replaces the
    /// other's.
    pub prefix: &'a str,
    /// The table the trigger appends to (`table_name`, `old_row`,
    /// `new_row`, `created_ms` columns).
    pub table: &'a str,
    /// PostgreSQL: a NOTIFY channel signalled by each write (delivered at
    /// commit, once per transaction). `None`: consumers poll. A NOTIFY
    /// serializes committing transactions on the server's notification
    /// queue, so it costs writers throughput.
    pub notify: Option<&'a str>,
}

/// How a consumer's readers learn that a trigger logged a write
/// (PostgreSQL; the other databases have no notifications: readers poll).
///
/// A `NOTIFY` is cheap for a reader and costs writers: PostgreSQL queues
/// every notifying transaction's commit behind one server-wide lock, so
/// under concurrent writes the notification, not the logged row, is the
/// larger part of what capture costs (docs/BENCHMARKS.md, "write cost of
/// change capture": 0.36x of no capture with NOTIFY, 0.78x without, 4
/// writers). Without it a reader learns of a write only when it next
/// polls: the visibility bound becomes the polling interval, and every
/// polling process sends the database one indexed read per interval.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wakeup {
    /// Each transaction that writes a captured table also sends a
    /// `NOTIFY` on the consumer's channel: a listening reader reads at once.
    #[default]
    Notify,
    /// No notification: readers poll, and writers do not queue on the
    /// notification lock.
    Poll,
}

impl Wakeup {
    /// The channel a sink notifies on under this wakeup: `channel`, or
    /// none.
    pub fn channel(self, channel: &str) -> Option<&str> {
        match self {
            Wakeup::Notify => Some(channel),
            Wakeup::Poll => None,
        }
    }
}

/// Which columns of a row the trigger captures.
#[derive(Debug, Clone, Copy)]
pub enum Columns<'a> {
    /// Every column, whatever the table gains later (PostgreSQL only: the
    /// other dialects need the names in the trigger body).
    All,
    /// These columns.
    Only(&'a BTreeSet<String>),
}

/// The JSON object (as text) of `row` (`OLD` or `NEW`) for `cols`.
///
/// SQLite's `json_object` refuses BLOB arguments (the writer's statement
/// would fail), so a blob is captured as `null`: a blob equals no integer
/// and no text, which is what consumers compare captured values with.
pub fn json_row(dialect: Dialect, row: &str, cols: Columns<'_>) -> Result<String, Error> {
    let list = match cols {
        Columns::All if dialect == Dialect::Postgres => {
            return Ok(format!("row_to_json({row})::text"))
        }
        Columns::All => return Err(Error::ColumnsRequired { dialect }),
        Columns::Only(list) => list,
    };
    for c in list {
        check_identifier("column", c)?;
    }
    let args: Vec<String> = list
        .iter()
        .map(|c| match dialect {
            Dialect::Sqlite => {
                format!("'{c}', CASE WHEN typeof({row}.{c}) = 'blob' THEN NULL ELSE {row}.{c} END")
            }
            _ => format!("'{c}', {row}.{c}"),
        })
        .collect();
    Ok(match dialect {
        Dialect::Postgres => format!("json_build_object({})::text", args.join(", ")),
        Dialect::MySql => format!("JSON_OBJECT({})", args.join(", ")),
        Dialect::Sqlite => format!("json_object({})", args.join(", ")),
    })
}

/// The statements installing `sink`'s capture triggers on `table`
/// (replacing earlier ones of the same sink, so a changed column set
/// takes effect).
pub fn row_trigger_sql(
    dialect: Dialect,
    sink: Sink<'_>,
    table: &str,
    cols: Columns<'_>,
) -> Result<Vec<String>, Error> {
    check_identifier("table", table)?;
    check_identifier("sink table", sink.table)?;
    check_identifier("trigger prefix", sink.prefix)?;
    if let Some(channel) = sink.notify {
        check_identifier("channel", channel)?;
    }
    let now = dialect.now_ms();
    let (log, prefix) = (sink.table, sink.prefix);
    let old = json_row(dialect, "OLD", cols)?;
    let new = json_row(dialect, "NEW", cols)?;
    let mut out = Vec::new();
    match dialect {
        Dialect::Postgres => {
            let notify = sink
                .notify
                .map(|c| format!("PERFORM pg_notify('{c}', ''); "))
                .unwrap_or_default();
            out.push(format!(
                "CREATE OR REPLACE FUNCTION {prefix}_{table}() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 DECLARE o TEXT; n TEXT; \
                 BEGIN \
                   IF TG_OP <> 'INSERT' THEN o := {old}; END IF; \
                   IF TG_OP <> 'DELETE' THEN n := {new}; END IF; \
                   INSERT INTO {log} (table_name, old_row, new_row, created_ms) VALUES ('{table}', o, n, {now}); \
                   {notify}RETURN NULL; \
                 END $$"
            ));
            out.push(format!(
                "DROP TRIGGER IF EXISTS {prefix}_{table} ON {table}"
            ));
            out.push(format!(
                "CREATE TRIGGER {prefix}_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION {prefix}_{table}()"
            ));
        }
        Dialect::MySql | Dialect::Sqlite => {
            for (ev, short, o_expr, n_expr) in [
                ("INSERT", "ins", "NULL", new.as_str()),
                ("UPDATE", "upd", old.as_str(), new.as_str()),
                ("DELETE", "del", old.as_str(), "NULL"),
            ] {
                let insert = format!(
                    "INSERT INTO {log} (table_name, old_row, new_row, created_ms) VALUES ('{table}', {o_expr}, {n_expr}, {now})"
                );
                out.push(format!("DROP TRIGGER IF EXISTS {prefix}_{table}_{short}"));
                out.push(if dialect == Dialect::MySql {
                    format!(
                        "CREATE TRIGGER {prefix}_{table}_{short} AFTER {ev} ON {table} FOR EACH ROW {insert}"
                    )
                } else {
                    format!(
                        "CREATE TRIGGER {prefix}_{table}_{short} AFTER {ev} ON {table} BEGIN {insert}; END"
                    )
                });
            }
        }
    }
    Ok(out)
}

/// The statements removing `prefix`'s capture triggers from `table`
/// (and the PostgreSQL function behind them), whichever were installed.
pub fn drop_trigger_sql(dialect: Dialect, prefix: &str, table: &str) -> Result<Vec<String>, Error> {
    check_identifier("table", table)?;
    check_identifier("trigger prefix", prefix)?;
    Ok(match dialect {
        Dialect::Postgres => vec![
            format!("DROP TRIGGER IF EXISTS {prefix}_{table} ON {table}"),
            format!("DROP FUNCTION IF EXISTS {prefix}_{table}()"),
        ],
        Dialect::MySql | Dialect::Sqlite => ["ins", "upd", "del"]
            .iter()
            .map(|short| format!("DROP TRIGGER IF EXISTS {prefix}_{table}_{short}"))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINK: Sink<'static> = Sink {
        prefix: "larder_capture",
        table: "larder_outbox",
        notify: Some("larder_outbox"),
    };

    #[test]
    fn every_dialect_captures_insert_update_delete() {
        let cols: BTreeSet<String> = ["id".to_owned(), "post_id".to_owned()].into();
        let pg = row_trigger_sql(Dialect::Postgres, SINK, "comment", Columns::Only(&cols))
            .unwrap()
            .join("\n");
        assert!(pg.contains("FOR EACH ROW") && pg.contains("pg_notify('larder_outbox'"));
        assert!(pg.contains("json_build_object('id', OLD.id, 'post_id', OLD.post_id)"));
        let all = row_trigger_sql(Dialect::Postgres, SINK, "comment", Columns::All)
            .unwrap()
            .join("\n");
        assert!(all.contains("row_to_json(OLD)::text"));
        for d in [Dialect::MySql, Dialect::Sqlite] {
            let s = row_trigger_sql(d, SINK, "comment", Columns::Only(&cols)).unwrap();
            assert_eq!(
                s.iter().filter(|s| s.starts_with("CREATE TRIGGER")).count(),
                3
            );
            assert!(row_trigger_sql(d, SINK, "comment", Columns::All).is_err());
        }
        let lite = row_trigger_sql(Dialect::Sqlite, SINK, "comment", Columns::Only(&cols))
            .unwrap()
            .join("\n");
        assert!(lite.contains("typeof(NEW.id) = 'blob'"));
    }

    #[test]
    fn names_are_checked() {
        let bad: BTreeSet<String> = ["id); DROP TABLE x; --".to_owned()].into();
        assert!(row_trigger_sql(Dialect::MySql, SINK, "comment", Columns::Only(&bad)).is_err());
        assert!(row_trigger_sql(Dialect::Postgres, SINK, "a b", Columns::All).is_err());
        let quiet = Sink {
            notify: Some("x'; DROP"),
            ..SINK
        };
        assert!(row_trigger_sql(Dialect::Postgres, quiet, "comment", Columns::All).is_err());
    }
}
