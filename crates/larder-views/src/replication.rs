//! Capture through PostgreSQL logical replication instead of triggers: a
//! feeder reads the committed row changes of the source tables from the
//! replication stream and writes them into the outbox, where the workers
//! take them as they take trigger-captured ones. Nothing is added to the
//! writers' transactions.
//!
//! Crash safety: a transaction's outbox rows are committed before its
//! position is confirmed to the server, so a feeder killed at any point
//! resumes from the slot and loses nothing (a transaction may be written
//! twice; documents are recomputed from the source and versioned, so a
//! duplicate only costs a recomputation). Several processes may run a
//! feeder on one slot: one streams, the others retry until it stops.
//! `TRUNCATE` of a source table and a slot found missing (dropped, changes
//! lost) rebuild the views concerned.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::time::Duration;

use larder_changes::logical::{self, Column, LogicalConfig, RowChange, StreamEvent, Value};
use larder_changes::triggers::Wakeup;

use crate::error::{Error, Result};
use crate::schema::{self, CHANNEL, OUTBOX_TABLE};
use crate::source::Dialect;
use crate::views::Views;

/// A column value from `pgoutput` (text format) as the JSON the capture
/// triggers would have written (`json_build_object`): numbers as numbers,
/// booleans as booleans, the rest as strings.
fn json_of(c: &Column) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match &c.value {
        Value::Null => J::Null,
        Value::Text(t) => match c.type_oid {
            20 | 21 | 23 => t
                .parse::<i64>()
                .map(J::from)
                .unwrap_or_else(|_| J::String(t.clone())),
            700 | 701 | 1700 => serde_json::from_str::<serde_json::Number>(t)
                .map(J::Number)
                .unwrap_or_else(|_| J::String(t.clone())),
            16 => J::Bool(t == "t"),
            _ => J::String(t.clone()),
        },
        // An unchanged TOASTed value: not sent; the caller takes the old one.
        _ => return None,
    })
}

/// The captured columns of `row` as a JSON object; `fallback` supplies
/// values the stream did not send (unchanged TOAST).
fn captured(row: &[Column], cols: &BTreeSet<String>, fallback: Option<&[Column]>) -> String {
    let mut m = serde_json::Map::new();
    for c in row
        .iter()
        .filter(|c| cols.contains(&c.name.to_ascii_lowercase()))
    {
        let v = json_of(c).or_else(|| {
            fallback
                .and_then(|old| old.iter().find(|o| o.name == c.name))
                .and_then(json_of)
        });
        m.insert(
            c.name.to_ascii_lowercase(),
            v.unwrap_or(serde_json::Value::Null),
        );
    }
    serde_json::Value::Object(m).to_string()
}

impl Views {
    /// Creates the outbox tables for capture through logical replication
    /// and removes the capture triggers [`Views::install`] would have
    /// installed (PostgreSQL only; the server needs `wal_level =
    /// logical`). Run [`Views::feed_from_replication`] next to the workers.
    pub async fn install_for_replication(&self) -> Result<()> {
        let source = self.source();
        if source.dialect() != Dialect::Postgres {
            return Err(Error::Config(
                "capture through logical replication needs PostgreSQL".into(),
            ));
        }
        let mut statements = schema::tables_sql(Dialect::Postgres);
        for table in self.captured_columns()?.keys() {
            statements.extend(larder_changes::triggers::drop_trigger_sql(
                Dialect::Postgres,
                schema::sink(Wakeup::Notify).prefix,
                table,
            )?);
        }
        let script = format!(
            "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('{OUTBOX_TABLE}'));\n{};\nCOMMIT;",
            statements.join(";\n")
        );
        sqlx::raw_sql(&script).execute(&source.pool).await?;
        Ok(())
    }

    /// The replication settings for these views' source tables through
    /// `slot` (the publication is named after it). A slot belongs to one
    /// database: give each source database its own.
    pub fn replication_config(&self, slot: &str) -> Result<LogicalConfig> {
        let tables: Vec<String> = self.captured_columns()?.into_keys().collect();
        Ok(LogicalConfig::new(&self.source().url, slot, slot, tables)?)
    }

    fn captured_columns(&self) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let names = self.names();
        let defs: Vec<&crate::view::ViewDef> = names
            .iter()
            .filter_map(|n| self.def(n).map(|d| &**d))
            .collect();
        schema::captured_columns(&defs)
    }

    /// Feeds the outbox from the replication stream of `config` until the
    /// handle is aborted (see the module docs for the guarantees).
    pub fn feed_from_replication(&self, config: LogicalConfig) -> tokio::task::JoinHandle<()> {
        let views = self.clone();
        tokio::spawn(async move {
            let columns = match views.captured_columns() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "view feeder: cannot start");
                    return;
                }
            };
            logical::stream_changes(config, |event| {
                let (views, columns) = (views.clone(), columns.clone());
                async move {
                    // Not confirmed until handled: retry rather than skip.
                    let mut wait = Duration::from_millis(50);
                    while let Err(e) = views.feed(&event, &columns).await {
                        tracing::error!(error = %e, "view feeder: could not record a replicated transaction; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(2));
                    }
                    ControlFlow::Continue(())
                }
            })
            .await;
        })
    }

    async fn feed(
        &self,
        event: &StreamEvent,
        columns: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<()> {
        let changes = match event {
            StreamEvent::Transaction(changes) => changes,
            // Changes were lost: every view is recomputed.
            _ => {
                for v in self.names() {
                    self.rebuild(&v, None).await?;
                }
                return Ok(());
            }
        };
        let mut rows: Vec<(String, Option<String>, Option<String>)> = Vec::new();
        let mut truncated: BTreeSet<String> = BTreeSet::new();
        for change in changes {
            match change {
                RowChange::Insert { table, new } => {
                    if let Some(cols) = columns.get(&table.to_ascii_lowercase()) {
                        rows.push((table.clone(), None, Some(captured(new, cols, None))));
                    }
                }
                RowChange::Update { table, old, new } => {
                    if let Some(cols) = columns.get(&table.to_ascii_lowercase()) {
                        rows.push((
                            table.clone(),
                            old.as_deref().map(|o| captured(o, cols, None)),
                            Some(captured(new, cols, old.as_deref())),
                        ));
                    }
                }
                RowChange::Delete { table, old } => {
                    if let Some(cols) = columns.get(&table.to_ascii_lowercase()) {
                        rows.push((table.clone(), Some(captured(old, cols, None)), None));
                    }
                }
                RowChange::Truncate { tables } => {
                    truncated.extend(tables.iter().map(|t| t.to_ascii_lowercase()));
                }
                _ => truncated.extend(columns.keys().cloned()),
            }
        }
        if !rows.is_empty() {
            let source = self.source();
            let mut tx = source.pool.begin().await?;
            let sql = format!(
                "INSERT INTO {OUTBOX_TABLE} (table_name, old_row, new_row, created_ms) VALUES ($1, $2, $3, {})",
                Dialect::Postgres.now_ms()
            );
            for (table, old, new) in rows {
                sqlx::query(&sql)
                    .bind(table.to_ascii_lowercase())
                    .bind(old)
                    .bind(new)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(&format!("SELECT pg_notify('{CHANNEL}', '')"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        if !truncated.is_empty() {
            for v in self.names() {
                let reads_truncated = self
                    .def(&v)
                    .is_some_and(|d| d.deps.iter().any(|dep| truncated.contains(&dep.table)));
                if reads_truncated {
                    self.rebuild(&v, None).await?;
                }
            }
        }
        Ok(())
    }
}
