//! The outbox protocol: record, claim (leased, `SKIP LOCKED` where the
//! database has it), acknowledge, retry with backoff, dead-letter; and the
//! version ticket.
//!
//! Why a ticket and not the outbox id as the document version: ids are
//! handed out at insert, not at commit, so change 11 can commit after
//! change 12 and a document versioned 12 would then refuse the one
//! computed for 11, losing it. A ticket is drawn after the entries are
//! claimed and before the compute reads, from a counter that increases in
//! real time; so the document with the highest ticket was computed from a
//! read that started after every change whose processing drew a lower one
//! had committed. Last ticket wins is then also last state wins.

use std::time::Duration;

use sqlx::{Acquire, AnyConnection, Row};

use crate::error::Result;
use crate::schema::{CHANNEL, DEAD_TABLE, OUTBOX_TABLE, TICKET};
use crate::source::{Dialect, Source};

/// One claimed outbox entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub id: i64,
    pub view_name: Option<String>,
    pub view_key: Option<String>,
    pub table_name: Option<String>,
    pub old_row: Option<String>,
    pub new_row: Option<String>,
    pub created_ms: i64,
    pub attempts: i64,
}

const COLUMNS: &str = "id, view_name, view_key, table_name, old_row, new_row, created_ms, attempts";

/// A text column; MySQL `TEXT` reaches sqlx `Any` as bytes.
pub(crate) fn text(r: &sqlx::any::AnyRow, i: usize) -> Result<Option<String>> {
    match r.try_get::<Option<String>, _>(i) {
        Ok(s) => Ok(s),
        Err(_) => Ok(r
            .try_get::<Option<Vec<u8>>, _>(i)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())),
    }
}

fn entry(r: &sqlx::any::AnyRow) -> Result<Entry> {
    Ok(Entry {
        id: r.try_get(0)?,
        view_name: text(r, 1)?,
        view_key: text(r, 2)?,
        table_name: text(r, 3)?,
        old_row: text(r, 4)?,
        new_row: text(r, 5)?,
        created_ms: r.try_get(6)?,
        attempts: r.try_get(7)?,
    })
}

fn ids_list(ids: &[i64]) -> String {
    // Integers from our own table: safe to inline, and one statement for
    // any batch size.
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// Records that `keys` of `view` must be recomputed, on `conn` — pass the
/// application's transaction (`&mut *tx`) so the entry commits or rolls
/// back with the write it describes.
pub async fn record_keys(
    conn: &mut AnyConnection,
    dialect: Dialect,
    view: &str,
    keys: &[String],
) -> Result<()> {
    for k in keys {
        crate::error::check_key(k)?;
    }
    let sql = enqueue_sql(dialect);
    for k in keys {
        sqlx::query(&sql)
            .bind(view)
            .bind(k)
            .execute(&mut *conn)
            .await?;
    }
    if dialect == Dialect::Postgres && !keys.is_empty() {
        sqlx::query(&format!("SELECT pg_notify('{CHANNEL}', '')"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// The statement that enqueues one view key, with the view name and key
/// as its two parameters, for applications that write through their own
/// typed sqlx pool: run it in the write's transaction. (On PostgreSQL also
/// run `SELECT pg_notify('larder_outbox', '')` to wake workers at once.)
pub fn enqueue_sql(dialect: Dialect) -> String {
    format!(
        "INSERT INTO {OUTBOX_TABLE} (view_name, view_key, created_ms) VALUES ({}, {}, {})",
        dialect.placeholder(1),
        dialect.placeholder(2),
        dialect.now_ms()
    )
}

/// Claims up to `limit` due entries for `lease`; another worker may take
/// them once the lease passes (a crashed worker's entries come back then).
pub(crate) async fn claim(source: &Source, limit: usize, lease: Duration) -> Result<Vec<Entry>> {
    let now = source.dialect.now_ms();
    let lease_ms = lease.as_millis() as i64;
    let limit = limit.max(1) as i64;
    let mut entries = match source.dialect {
        Dialect::Postgres | Dialect::Sqlite => {
            let lock = if source.dialect == Dialect::Postgres {
                "FOR UPDATE SKIP LOCKED"
            } else {
                ""
            };
            let (p1, p2) = (source.dialect.placeholder(1), source.dialect.placeholder(2));
            let sql = format!(
                "UPDATE {OUTBOX_TABLE} SET claimed_until = {now} + {p1} WHERE id IN \
                 (SELECT id FROM {OUTBOX_TABLE} WHERE claimed_until < {now} ORDER BY id LIMIT {p2} {lock}) \
                 RETURNING {COLUMNS}"
            );
            let rows = sqlx::query(&sql)
                .bind(lease_ms)
                .bind(limit)
                .fetch_all(&source.pool)
                .await?;
            rows.iter().map(entry).collect::<Result<Vec<_>>>()?
        }
        Dialect::MySql => {
            let mut conn = source.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM {OUTBOX_TABLE} WHERE claimed_until < {now} ORDER BY id LIMIT ? \
                 FOR UPDATE SKIP LOCKED"
            ))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let entries = rows.iter().map(entry).collect::<Result<Vec<_>>>()?;
            if !entries.is_empty() {
                let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
                sqlx::query(&format!(
                    "UPDATE {OUTBOX_TABLE} SET claimed_until = {now} + ? WHERE id IN ({})",
                    ids_list(&ids)
                ))
                .bind(lease_ms)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            entries
        }
    };
    entries.sort_by_key(|e| e.id);
    Ok(entries)
}

/// Acknowledges processed entries.
pub(crate) async fn ack(source: &Source, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "DELETE FROM {OUTBOX_TABLE} WHERE id IN ({})",
        ids_list(ids)
    ))
    .execute(&source.pool)
    .await?;
    Ok(())
}

/// Makes entries due again after `delay` without counting an attempt (the
/// store, not the entry, failed), or extends a live batch's claims.
pub(crate) async fn release(source: &Source, ids: &[i64], delay: Duration) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "UPDATE {OUTBOX_TABLE} SET claimed_until = {} + {} WHERE id IN ({})",
        source.dialect.now_ms(),
        delay.as_millis() as i64,
        ids_list(ids)
    ))
    .execute(&source.pool)
    .await?;
    Ok(())
}

/// Records a failed attempt: due again after `delay`, or moved to the
/// dead-letter table when this was attempt `max_attempts`. Returns whether
/// it was dead-lettered.
pub(crate) async fn fail(
    source: &Source,
    e: &Entry,
    error: &str,
    max_attempts: u32,
    delay: Duration,
) -> Result<bool> {
    let d = source.dialect;
    let now = d.now_ms();
    let error: String = error.chars().take(2000).collect();
    if e.attempts + 1 >= i64::from(max_attempts) {
        let mut conn = source.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {DEAD_TABLE} (id, view_name, view_key, table_name, old_row, new_row, created_ms, attempts, last_error, failed_ms) \
             SELECT id, view_name, view_key, table_name, old_row, new_row, created_ms, attempts + 1, {}, {now} \
             FROM {OUTBOX_TABLE} WHERE id = {}",
            d.placeholder(1),
            d.placeholder(2)
        ))
        .bind(error)
        .bind(e.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "DELETE FROM {OUTBOX_TABLE} WHERE id = {}",
            d.placeholder(1)
        ))
        .bind(e.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    } else {
        sqlx::query(&format!(
            "UPDATE {OUTBOX_TABLE} SET attempts = attempts + 1, last_error = {}, claimed_until = {now} + {} \
             WHERE id = {}",
            d.placeholder(1),
            d.placeholder(2),
            d.placeholder(3)
        ))
        .bind(error)
        .bind(delay.as_millis() as i64)
        .bind(e.id)
        .execute(&source.pool)
        .await?;
        Ok(false)
    }
}

/// Draws a version ticket: strictly greater than every ticket drawn before
/// this call started, in any process.
pub(crate) async fn ticket(source: &Source) -> Result<u64> {
    let v: i64 = match source.dialect {
        Dialect::Postgres => sqlx::query(&format!("SELECT nextval('{TICKET}')"))
            .fetch_one(&source.pool)
            .await?
            .try_get(0)?,
        Dialect::Sqlite => sqlx::query(&format!(
            "UPDATE {TICKET} SET v = v + 1 WHERE id = 1 RETURNING v"
        ))
        .fetch_one(&source.pool)
        .await?
        .try_get(0)?,
        Dialect::MySql => {
            // LAST_INSERT_ID(expr) is per connection: both statements on
            // one.
            let mut conn = source.pool.acquire().await?;
            sqlx::query(&format!(
                "UPDATE {TICKET} SET v = LAST_INSERT_ID(v + 1) WHERE id = 1"
            ))
            .execute(&mut *conn)
            .await?;
            sqlx::query("SELECT CAST(LAST_INSERT_ID() AS SIGNED)")
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?
        }
    };
    Ok(v as u64)
}

/// Moves every dead letter back into the outbox (attempts reset); returns
/// how many.
pub(crate) async fn requeue_dead(source: &Source) -> Result<u64> {
    let mut conn = source.pool.acquire().await?;
    let mut tx = conn.begin().await?;
    let n = sqlx::query(&format!(
        "INSERT INTO {OUTBOX_TABLE} (view_name, view_key, table_name, old_row, new_row, created_ms) \
         SELECT view_name, view_key, table_name, old_row, new_row, created_ms FROM {DEAD_TABLE}"
    ))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(&format!("DELETE FROM {DEAD_TABLE}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}
