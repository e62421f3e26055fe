//! View documents in an SQL table (`larder_view_docs`), on PostgreSQL,
//! MySQL/MariaDB or SQLite: useful when the documents should live beside
//! the source data, be backed up with it, or be read by several processes.

use sqlx::{Acquire, Row};

use super::{DocStore, Put, Versioned};
use crate::error::{Error, Result};
use crate::source::{Dialect, Source};

/// The table documents are kept in.
pub const DOCS_TABLE: &str = "larder_view_docs";

fn err(e: impl Into<crate::error::BoxError>) -> Error {
    Error::store("sql", e)
}

/// A view store in an SQL table. It may share the source database (the
/// usual case) or live in another.
#[derive(Clone, Debug)]
pub struct SqlStore {
    source: Source,
}

impl SqlStore {
    /// Connects to `url` and creates the table if needed.
    pub async fn connect(url: &str) -> Result<SqlStore> {
        let source = Source::connect(url, 5).await?;
        Self::on(source).await
    }

    /// Uses an existing connection pool; creates the table if needed.
    pub async fn on(source: Source) -> Result<SqlStore> {
        let ddl = match source.dialect {
            Dialect::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {DOCS_TABLE} (view_name TEXT NOT NULL, view_key TEXT NOT NULL, \
                 version BIGINT NOT NULL, doc BYTEA, PRIMARY KEY (view_name, view_key))"
            ),
            Dialect::MySql => format!(
                "CREATE TABLE IF NOT EXISTS {DOCS_TABLE} (view_name VARCHAR(191) NOT NULL, view_key VARCHAR(191) NOT NULL, \
                 version BIGINT NOT NULL, doc LONGBLOB, PRIMARY KEY (view_name, view_key))"
            ),
            Dialect::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS {DOCS_TABLE} (view_name TEXT NOT NULL, view_key TEXT NOT NULL, \
                 version INTEGER NOT NULL, doc BLOB, PRIMARY KEY (view_name, view_key))"
            ),
        };
        sqlx::query(&ddl).execute(&source.pool).await.map_err(err)?;
        Ok(SqlStore { source })
    }
}

/// A deadlock or serialization failure: the transaction rolled back and
/// may simply run again.
fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("40001" | "40P01" | "23505"))
                || db.message().contains("Deadlock")
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

impl SqlStore {
    async fn try_put_many(
        &self,
        view: &str,
        puts: &[Put],
    ) -> std::result::Result<usize, sqlx::Error> {
        let d = self.source.dialect;
        let p = |n| d.placeholder(n);
        let mut conn = self.source.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let mut stored = 0;
        for put in puts {
            let version = i64::try_from(put.version).unwrap_or(i64::MAX);
            let landed = match d {
                Dialect::Postgres | Dialect::Sqlite => {
                    let sql = format!(
                        "INSERT INTO {DOCS_TABLE} (view_name, view_key, version, doc) VALUES ({}, {}, {}, {}) \
                         ON CONFLICT (view_name, view_key) DO UPDATE SET version = excluded.version, doc = excluded.doc \
                         WHERE {DOCS_TABLE}.version < excluded.version",
                        p(1), p(2), p(3), p(4)
                    );
                    sqlx::query(&sql)
                        .bind(view)
                        .bind(&put.key)
                        .bind(version)
                        .bind(put.doc.clone())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1
                }
                Dialect::MySql => {
                    // No conditional upsert whose row count tells "stored"
                    // apart from "kept": read under a row lock, then write.
                    let cur: Option<i64> = sqlx::query(&format!(
                        "SELECT version FROM {DOCS_TABLE} WHERE view_name = ? AND view_key = ? FOR UPDATE"
                    ))
                    .bind(view)
                    .bind(&put.key)
                    .fetch_optional(&mut *tx)
                    .await
                    ?
                    .map(|r| r.try_get(0))
                    .transpose()
                    ?;
                    match cur {
                        Some(c) if c >= version => false,
                        _ => {
                            sqlx::query(&format!(
                                "INSERT INTO {DOCS_TABLE} (view_name, view_key, version, doc) VALUES (?, ?, ?, ?) \
                                 ON DUPLICATE KEY UPDATE version = VALUES(version), doc = VALUES(doc)"
                            ))
                            .bind(view)
                            .bind(&put.key)
                            .bind(version)
                            .bind(put.doc.clone())
                            .execute(&mut *tx)
                            .await
                            ?;
                            true
                        }
                    }
                }
            };
            stored += usize::from(landed);
        }
        tx.commit().await?;
        Ok(stored)
    }
}

#[async_trait::async_trait]
impl DocStore for SqlStore {
    fn name(&self) -> &'static str {
        "sql"
    }

    async fn put_many(&self, view: &str, mut puts: Vec<Put>) -> Result<usize> {
        if puts.is_empty() {
            return Ok(0);
        }
        // One lock order for every batch keeps concurrent batches from
        // deadlocking each other; what deadlocks remain (gap locks on
        // MySQL) roll back and are retried.
        puts.sort_by(|a, b| a.key.cmp(&b.key));
        let mut attempt = 0;
        loop {
            match self.try_put_many(view, &puts).await {
                Err(e) if attempt < 8 && retryable(&e) => {
                    attempt += 1;
                    let ms = fastrand::u64(1..=5u64 << attempt.min(5));
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                r => return r.map_err(err),
            }
        }
    }
    async fn get_many(&self, view: &str, keys: &[String]) -> Result<Vec<Option<Versioned>>> {
        let mut out = vec![None; keys.len()];
        let d = self.source.dialect;
        for chunk_start in (0..keys.len()).step_by(500) {
            let chunk = &keys[chunk_start..keys.len().min(chunk_start + 500)];
            let sql = format!(
                "SELECT view_key, version, doc FROM {DOCS_TABLE} WHERE view_name = {} AND view_key IN ({})",
                d.placeholder(1),
                d.placeholders(2, chunk.len())
            );
            let index: std::collections::HashMap<&str, usize> = chunk
                .iter()
                .enumerate()
                .map(|(i, k)| (k.as_str(), i))
                .collect();
            let mut q = sqlx::query(&sql).bind(view);
            for k in chunk {
                q = q.bind(k);
            }
            for row in q.fetch_all(&self.source.pool).await.map_err(err)? {
                let key = crate::outbox::text(&row, 0)?.unwrap_or_default();
                let version: i64 = row.try_get(1).map_err(err)?;
                let doc: Option<Vec<u8>> = row.try_get(2).map_err(err)?;
                if let Some(&i) = index.get(key.as_str()) {
                    out[chunk_start + i] = Some(Versioned {
                        version: version as u64,
                        doc,
                    });
                }
            }
        }
        Ok(out)
    }

    async fn keys(&self, view: &str) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT view_key FROM {DOCS_TABLE} WHERE view_name = {} AND doc IS NOT NULL ORDER BY view_key",
            self.source.dialect.placeholder(1)
        );
        let rows = sqlx::query(&sql)
            .bind(view)
            .fetch_all(&self.source.pool)
            .await
            .map_err(err)?;
        rows.iter()
            .map(|r| Ok(crate::outbox::text(r, 0)?.unwrap_or_default()))
            .collect()
    }

    async fn count(&self, view: &str) -> Result<u64> {
        let sql = format!(
            "SELECT COUNT(*) FROM {DOCS_TABLE} WHERE view_name = {} AND doc IS NOT NULL",
            self.source.dialect.placeholder(1)
        );
        let n: i64 = sqlx::query(&sql)
            .bind(view)
            .fetch_one(&self.source.pool)
            .await
            .map_err(err)?
            .try_get(0)
            .map_err(err)?;
        Ok(n as u64)
    }
}
