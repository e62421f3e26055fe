//! PostgreSQL logical replication (`pgoutput`) as a change source: every
//! committed row change of the published tables, old and new values
//! included, with nothing added to the writers' transactions.
//!
//! - The publication and the slot are created on first use; the tables get
//!   `REPLICA IDENTITY FULL`, so updates and deletes carry the old values
//!   of every column (a consumer invalidating by value needs them).
//! - Position: the slot's `confirmed_flush_lsn`, advanced only after the
//!   consumer has handled a transaction, so a restart resumes without loss
//!   (a transaction may be seen twice, never missed).
//! - A slot that is missing when the stream (re)connects was dropped (or is
//!   new): changes since the last position are unknown, so the consumer gets
//!   [`StreamEvent::Resync`] before anything else and must treat everything
//!   as changed.
//!
//! The transport is [`pgwire_replication`]; this module decodes the
//! `pgoutput` messages (protocol version 1, text values).

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use bytes::Buf;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig};

use crate::{check_identifier, Error};

/// Where and what to replicate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LogicalConfig {
    /// The database, as a `postgres://user[:password]@host[:port]/db` URL
    /// (the user needs the REPLICATION attribute or superuser).
    pub url: String,
    /// The replication slot (created if missing).
    pub slot: String,
    /// The publication (created if missing; the tables are added).
    pub publication: String,
    /// The tables whose changes to stream.
    pub tables: Vec<String>,
}

impl LogicalConfig {
    /// A stream of `tables` of the database at `url`, through `slot` and
    /// `publication` (plain identifiers).
    pub fn new<I, S>(url: &str, slot: &str, publication: &str, tables: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        check_identifier("replication slot", slot)?;
        check_identifier("publication", publication)?;
        let tables: Vec<String> = tables.into_iter().map(Into::into).collect();
        for t in &tables {
            check_identifier("table", t)?;
        }
        Ok(LogicalConfig {
            url: url.to_owned(),
            slot: slot.to_owned(),
            publication: publication.to_owned(),
            tables,
        })
    }
}

/// One column of a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column's name.
    pub name: String,
    /// Its type's OID (`pg_type.oid`).
    pub type_oid: u32,
    /// Its value.
    pub value: Value,
}

/// A column value as `pgoutput` sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A TOASTed value the update did not change (not sent).
    Unchanged,
    /// The value in PostgreSQL's text output format.
    Text(String),
}

/// A committed row change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowChange {
    /// A row was inserted.
    Insert {
        /// The table.
        table: String,
        /// The new row.
        new: Vec<Column>,
    },
    /// A row was updated.
    Update {
        /// The table.
        table: String,
        /// The old row (all columns under REPLICA IDENTITY FULL; `None` if
        /// the table's identity was changed back).
        old: Option<Vec<Column>>,
        /// The new row.
        new: Vec<Column>,
    },
    /// A row was deleted.
    Delete {
        /// The table.
        table: String,
        /// The old row (its identity columns, all under FULL).
        old: Vec<Column>,
    },
    /// Tables were truncated.
    Truncate {
        /// The tables.
        tables: Vec<String>,
    },
}

/// What [`stream_changes`] hands its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The slot was missing (new, or dropped): changes made since the last
    /// position are unknown; treat everything as changed.
    Resync,
    /// The row changes of one committed transaction, in order.
    Transaction(Vec<RowChange>),
}

/// Errors from setting up or decoding the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogicalError {
    /// The control connection (publication, slot) failed.
    #[error("logical replication setup: {0}")]
    Setup(#[from] sqlx::Error),
    /// The replication connection failed.
    #[error("logical replication stream: {0}")]
    Stream(#[from] pgwire_replication::PgWireError),
    /// A `pgoutput` message we could not decode.
    #[error("pgoutput message not understood: {0}")]
    Protocol(String),
    /// A bad URL or name.
    #[error(transparent)]
    Config(#[from] Error),
}

/// Creates the publication (adding missing tables), sets `REPLICA IDENTITY
/// FULL` on the tables, and creates the slot if it is missing. Returns
/// whether the slot was created (so changes before now are unknown).
pub async fn ensure_slot(config: &LogicalConfig) -> Result<bool, LogicalError> {
    let conn = control(&config.url).await?;
    let out = ensure_slot_on(config, &conn).await;
    conn.close().await;
    out
}

/// A one-connection pool for control statements (a pool, not a
/// connection: its futures are `Send` for any lifetime, so the stream can
/// run in a spawned task).
async fn control(url: &str) -> Result<sqlx::PgPool, LogicalError> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?)
}

async fn ensure_slot_on(config: &LogicalConfig, conn: &sqlx::PgPool) -> Result<bool, LogicalError> {
    let publication_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&config.publication)
            .fetch_one(conn)
            .await?;
    if !publication_exists {
        let sql = if config.tables.is_empty() {
            format!("CREATE PUBLICATION {}", config.publication)
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                config.publication,
                config.tables.join(", ")
            )
        };
        sqlx::raw_sql(&sql).execute(conn).await?;
    } else {
        let published: Vec<String> = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
        )
        .bind(&config.publication)
        .fetch_all(conn)
        .await?;
        for t in config.tables.iter().filter(|t| !published.contains(t)) {
            sqlx::raw_sql(&format!(
                "ALTER PUBLICATION {} ADD TABLE {t}",
                config.publication
            ))
            .execute(conn)
            .await?;
        }
    }
    for t in &config.tables {
        sqlx::raw_sql(&format!("ALTER TABLE {t} REPLICA IDENTITY FULL"))
            .execute(conn)
            .await?;
    }
    let slot_exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(&config.slot)
    .fetch_one(conn)
    .await?;
    if !slot_exists {
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&config.slot)
            .execute(conn)
            .await?;
    }
    Ok(!slot_exists)
}

/// Drops the slot (and the publication): the server stops keeping WAL for
/// it. For tests and uninstalls.
pub async fn drop_slot(config: &LogicalConfig) -> Result<(), LogicalError> {
    let conn = control(&config.url).await?;
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&config.slot)
    .execute(&conn)
    .await?;
    sqlx::raw_sql(&format!(
        "DROP PUBLICATION IF EXISTS {}",
        config.publication
    ))
    .execute(&conn)
    .await?;
    conn.close().await;
    Ok(())
}

fn replication_config(config: &LogicalConfig) -> Result<ReplicationConfig, LogicalError> {
    let opts: sqlx::postgres::PgConnectOptions = config.url.parse()?;
    let mut c = ReplicationConfig::default();
    c.host = opts.get_host().to_owned();
    c.port = opts.get_port();
    c.user = opts.get_username().to_owned();
    // sqlx does not give the password back; take it from the URL.
    c.password = url_password(&config.url).unwrap_or_default();
    c.database = opts.get_database().unwrap_or("postgres").to_owned();
    c.tls = TlsConfig::disabled();
    c.slot = config.slot.clone();
    c.publication = config.publication.as_str().into();
    // From the slot's confirmed position.
    c.start_lsn = Lsn(0);
    c.status_interval = Duration::from_secs(1);
    c.idle_wakeup_interval = Duration::from_secs(5);
    Ok(c)
}

fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let (_, pw) = userinfo.split_once(':')?;
    Some(pw.to_owned())
}

/// Streams the committed changes of `config.tables` to `on_event`, one
/// transaction at a time, until it returns [`ControlFlow::Break`].
/// Reconnects with backoff (50 ms doubling to 2 s) on any failure; after
/// each (re)connection a missing slot is recreated and reported as
/// [`StreamEvent::Resync`]. A transaction's position is confirmed to the
/// server only after `on_event` returned for it.
pub async fn stream_changes<F, Fut>(config: LogicalConfig, mut on_event: F)
where
    F: FnMut(StreamEvent) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        match stream_once(&config, &mut on_event, &mut backoff).await {
            Ok(ControlFlow::Break(())) => return,
            Ok(ControlFlow::Continue(())) => {
                tracing::warn!(slot = %config.slot, "logical replication: stream ended; reconnecting")
            }
            Err(e) => {
                tracing::warn!(error = %e, slot = %config.slot, "logical replication: reconnecting")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn stream_once<F, Fut>(
    config: &LogicalConfig,
    on_event: &mut F,
    backoff: &mut Duration,
) -> Result<ControlFlow<()>, LogicalError>
where
    F: FnMut(StreamEvent) -> Fut,
    Fut: Future<Output = ControlFlow<()>>,
{
    let created = ensure_slot(config).await?;
    let mut client = ReplicationClient::connect(replication_config(config)?).await?;
    *backoff = Duration::from_millis(50);
    if created && on_event(StreamEvent::Resync).await.is_break() {
        return Ok(ControlFlow::Break(()));
    }
    let mut decoder = Decoder::default();
    let mut pending = Vec::new();
    while let Some(ev) = client.recv().await? {
        match ev {
            ReplicationEvent::Begin { .. } => pending.clear(),
            ReplicationEvent::XLogData { data, .. } => decoder.decode(data, &mut pending)?,
            ReplicationEvent::Commit { end_lsn, .. } => {
                let changes = std::mem::take(&mut pending);
                if !changes.is_empty()
                    && on_event(StreamEvent::Transaction(changes)).await.is_break()
                {
                    client.update_applied_lsn(end_lsn);
                    return Ok(ControlFlow::Break(()));
                }
                client.update_applied_lsn(end_lsn);
            }
            _ => {}
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// A relation as its last `Relation` message described it.
#[derive(Debug, Clone)]
struct Relation {
    name: String,
    columns: Vec<(String, u32)>,
}

/// Decodes `pgoutput` (protocol 1) messages into row changes.
#[derive(Debug, Default)]
struct Decoder {
    relations: HashMap<u32, Relation>,
}

fn bad(what: &str) -> LogicalError {
    LogicalError::Protocol(what.to_owned())
}

fn cstr(b: &mut bytes::Bytes) -> Result<String, LogicalError> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| bad("unterminated string"))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

fn need(b: &bytes::Bytes, n: usize) -> Result<(), LogicalError> {
    if b.remaining() < n {
        Err(bad("truncated message"))
    } else {
        Ok(())
    }
}

impl Decoder {
    fn decode(
        &mut self,
        mut b: bytes::Bytes,
        out: &mut Vec<RowChange>,
    ) -> Result<(), LogicalError> {
        need(&b, 1)?;
        match b.get_u8() {
            b'R' => {
                need(&b, 4)?;
                let id = b.get_u32();
                let _namespace = cstr(&mut b)?;
                let name = cstr(&mut b)?;
                need(&b, 3)?;
                let _identity = b.get_u8();
                let n = b.get_i16().max(0) as usize;
                let mut columns = Vec::with_capacity(n);
                for _ in 0..n {
                    need(&b, 1)?;
                    let _flags = b.get_u8();
                    let col = cstr(&mut b)?;
                    need(&b, 8)?;
                    let oid = b.get_u32();
                    let _typmod = b.get_i32();
                    columns.push((col, oid));
                }
                self.relations.insert(id, Relation { name, columns });
            }
            b'I' => {
                let rel = self.relation(&mut b)?;
                need(&b, 1)?;
                if b.get_u8() != b'N' {
                    return Err(bad("insert without a new tuple"));
                }
                let new = tuple(&mut b, &rel)?;
                out.push(RowChange::Insert {
                    table: rel.name.clone(),
                    new,
                });
            }
            b'U' => {
                let rel = self.relation(&mut b)?;
                need(&b, 1)?;
                let mut kind = b.get_u8();
                let mut old = None;
                if kind == b'K' || kind == b'O' {
                    old = Some(tuple(&mut b, &rel)?);
                    need(&b, 1)?;
                    kind = b.get_u8();
                }
                if kind != b'N' {
                    return Err(bad("update without a new tuple"));
                }
                let new = tuple(&mut b, &rel)?;
                out.push(RowChange::Update {
                    table: rel.name.clone(),
                    old,
                    new,
                });
            }
            b'D' => {
                let rel = self.relation(&mut b)?;
                need(&b, 1)?;
                let kind = b.get_u8();
                if kind != b'K' && kind != b'O' {
                    return Err(bad("delete without an old tuple"));
                }
                let old = tuple(&mut b, &rel)?;
                out.push(RowChange::Delete {
                    table: rel.name.clone(),
                    old,
                });
            }
            b'T' => {
                need(&b, 5)?;
                let n = b.get_u32() as usize;
                let _options = b.get_u8();
                let mut tables = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    need(&b, 4)?;
                    let id = b.get_u32();
                    let rel = self
                        .relations
                        .get(&id)
                        .ok_or_else(|| bad("truncate of an unknown relation"))?;
                    tables.push(rel.name.clone());
                }
                out.push(RowChange::Truncate { tables });
            }
            // Type, origin and message records carry no row change.
            _ => {}
        }
        Ok(())
    }

    fn relation(&self, b: &mut bytes::Bytes) -> Result<Relation, LogicalError> {
        need(b, 4)?;
        let id = b.get_u32();
        self.relations
            .get(&id)
            .cloned()
            .ok_or_else(|| bad("a change before its relation"))
    }
}

fn tuple(b: &mut bytes::Bytes, rel: &Relation) -> Result<Vec<Column>, LogicalError> {
    need(b, 2)?;
    let n = b.get_i16().max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        need(b, 1)?;
        let value = match b.get_u8() {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' | b'b' => {
                need(b, 4)?;
                let len = b.get_i32().max(0) as usize;
                need(b, len)?;
                let v = String::from_utf8_lossy(&b[..len]).into_owned();
                b.advance(len);
                Value::Text(v)
            }
            _ => return Err(bad("unknown tuple value kind")),
        };
        let (name, type_oid) = rel
            .columns
            .get(i)
            .cloned()
            .unwrap_or_else(|| (format!("column{i}"), 0));
        out.push(Column {
            name,
            type_oid,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for bytes in [
            &b"I"[..],
            b"R\0\0",
            b"U\0\0\0\x01",
            b"T\0\0\0\x05\0\0\0\0\x09",
            b"",
        ] {
            assert!(
                d.decode(bytes::Bytes::copy_from_slice(bytes), &mut out)
                    .is_err(),
                "{bytes:?}"
            );
        }
        assert!(out.is_empty());
    }

    #[test]
    fn passwords_come_from_the_url() {
        assert_eq!(
            url_password("postgres://u:s3cret@h:5/db").as_deref(),
            Some("s3cret")
        );
        assert_eq!(url_password("postgres://u@h/db"), None);
    }
}
