//! Outside writes from PostgreSQL logical replication: every committed row
//! change of the watched tables bumps the generations of the values its old
//! and new rows hold, as an in-app write does, so writes from psql or other
//! services keep row-level reads of other rows cached.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use larder_changes::logical::{self, Column, LogicalConfig, RowChange, StreamEvent, Value};

use crate::capture::TouchedKeys;
use crate::generations::{table_key, Generations};
use crate::rows::{canon_f64, Canon};

/// A column value from `pgoutput` (text format), as an integer constant
/// compared with it would see it (the same rules as rows read back
/// through sqlx: see `CaptureRow for PgRow`).
fn canon(c: &Column) -> Canon {
    let Value::Text(t) = &c.value else {
        return match c.value {
            Value::Null => Canon::NoInt,
            _ => Canon::Unknown,
        };
    };
    match c.type_oid {
        // int8, int2, int4
        20 | 21 | 23 => t.parse::<i64>().map_or(Canon::Unknown, Canon::Int),
        // float4, float8
        700 | 701 => t.parse::<f64>().map_or(Canon::Unknown, canon_f64),
        // text-like, bool, bytea, uuid, json(b), dates and times, network:
        // PostgreSQL refuses to compare them with an integer.
        16 | 17 | 18 | 19 | 25 | 114 | 650 | 869 | 1042 | 1043 | 1082 | 1083 | 1114 | 1184
        | 1186 | 1266 | 2950 | 3802 => Canon::NoInt,
        _ => Canon::Unknown,
    }
}

fn values(row: &[Column]) -> Vec<(String, Canon)> {
    row.iter()
        .map(|c| (c.name.to_ascii_lowercase(), canon(c)))
        .collect()
}

/// The generation keys one committed transaction bumps.
pub(crate) fn keys_of(changes: &[RowChange]) -> BTreeSet<String> {
    let mut touched = TouchedKeys::default();
    for change in changes {
        match change {
            RowChange::Insert { table, new } => {
                touched.row(&table.to_ascii_lowercase(), &values(new));
            }
            RowChange::Update { table, old, new } => {
                let t = table.to_ascii_lowercase();
                touched.row(&t, &values(new));
                match old {
                    Some(old) => touched.row(&t, &values(old)),
                    // No old values: the rows it left are unknown.
                    None => touched.table(&t),
                }
            }
            RowChange::Delete { table, old } => {
                touched.row(&table.to_ascii_lowercase(), &values(old));
            }
            RowChange::Truncate { tables } => {
                for t in tables {
                    touched.table(&t.to_ascii_lowercase());
                }
            }
            _ => {
                // A kind of change this version does not know: be coarse.
                tracing::warn!("query cache: unknown replicated change; invalidating everything");
                touched.table(crate::generations::EVERYTHING);
            }
        }
    }
    touched.into_keys()
}

/// Streams `config`'s changes into `generations` until the task is dropped
/// or aborted.
pub(crate) async fn watch(config: LogicalConfig, generations: Generations) {
    let tables = config.tables.clone();
    logical::stream_changes(config, |event| {
        let generations = generations.clone();
        let keys = match &event {
            StreamEvent::Resync => tables.iter().map(|t| table_key(&t.to_ascii_lowercase())).collect(),
            StreamEvent::Transaction(changes) => keys_of(changes),
            _ => [table_key(crate::generations::EVERYTHING)].into(),
        };
        async move {
            // The transaction is confirmed to the server only after this
            // returns, so keep trying (the stream waits meanwhile): a
            // replicated write is never dropped while the store is down.
            let mut wait = std::time::Duration::from_millis(50);
            while let Err(e) = generations.bump_keys(&keys).await {
                tracing::error!(error = %e, keys = keys.len(), "query cache: could not invalidate after a replicated write; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(2));
            }
            ControlFlow::Continue(())
        }
    })
    .await;
}
