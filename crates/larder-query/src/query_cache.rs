//! `QueryCache`: sqlx queries whose results are cached under the
//! generations of the tables they read.

use std::sync::Arc;

use larder_core::{Cache, Error, Ttl};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::analyze::{analyze, Analysis, Schema, SqlDialect};
use crate::generations::Generations;

/// The pseudo-table every cached query depends on: bumped when a statement
/// we could not analyze may have written anything.
const EVERYTHING: &str = "*";

/// A bound parameter. Parameters are part of the cache key, so they are
/// values we can hash, not arbitrary `Encode` types.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub enum Param {
    /// SQL NULL (bound as a nullable BIGINT).
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

macro_rules! from_param {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Param {
            fn from(x: $t) -> Param { Param::$v(x.into()) }
        }
    )*};
}
from_param!(bool => Bool, i64 => Int, i32 => Int, u32 => Int, f64 => Float, String => Text, &str => Text, Vec<u8> => Bytes);

impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(x: Option<T>) -> Param {
        x.map_or(Param::Null, Into::into)
    }
}

/// The sqlx bounds a database needs for [`QueryCache`].
pub trait CacheableDb: Database
where
    for<'q> <Self as Database>::Arguments<'q>: IntoArguments<'q, Self>,
    for<'c> &'c mut <Self as Database>::Connection: Executor<'c, Database = Self>,
{
}

impl<DB> CacheableDb for DB
where
    DB: Database,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut <DB as Database>::Connection: Executor<'c, Database = DB>,
{
}

/// Caches the results of queries run on a sqlx pool; writes through it
/// invalidate them.
///
/// The key of a read is a fingerprint of its SQL, its parameters and the
/// current generation of every table it reads (plus a global one bumped by
/// statements that cannot be analyzed); the result is computed with
/// [`Cache::get_or_compute`] (single-flight, leases, fail-open: with the
/// cache down the query still runs). A write through [`QueryCache::execute`]
/// bumps the generations of the tables it wrote once it has run (in
/// autocommit: once it has committed), so no result computed before it
/// matches again.
///
/// Transactions: [`QueryCache::begin`]. Writes from outside the
/// application: [`crate::install`], then [`QueryCache::watch_outside_writes`]
/// or [`QueryCache::watch_postgres`].
pub struct QueryCache<DB: Database> {
    pool: Pool<DB>,
    cache: Cache,
    generations: Generations,
    schema: Arc<Schema>,
    dialect: SqlDialect,
    ttl: Ttl,
    /// Analyses by SQL text: parsing is most of a hit's CPU otherwise.
    analyses: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Analysis>>>>,
}

/// Distinct SQL texts whose analysis is kept (the set is cleared when full;
/// applications have a bounded set of statements).
const ANALYSES_KEPT: usize = 4096;

impl<DB: Database> Clone for QueryCache<DB> {
    fn clone(&self) -> Self {
        QueryCache {
            pool: self.pool.clone(),
            cache: self.cache.clone(),
            generations: self.generations.clone(),
            schema: self.schema.clone(),
            dialect: self.dialect,
            ttl: self.ttl,
            analyses: self.analyses.clone(),
        }
    }
}

impl<DB: Database> QueryCache<DB> {
    /// The analysis of `sql`, parsed once.
    fn analysis(&self, sql: &str) -> Arc<Analysis> {
        let mut map = self.analyses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = map.get(sql) {
            return a.clone();
        }
        let a = Arc::new(analyze(sql, self.dialect, &self.schema));
        if map.len() >= ANALYSES_KEPT {
            map.clear();
        }
        map.insert(sql.to_owned(), a.clone());
        a
    }
}

fn fingerprint(sql: &str, params: &[Param], tables: &[String], gens: &[u64]) -> String {
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    part(sql.as_bytes());
    for p in params {
        let encoded = serde_json::to_vec(p).unwrap_or_default();
        part(&encoded);
    }
    for (t, g) in tables.iter().zip(gens) {
        part(t.as_bytes());
        part(&g.to_le_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let out = h.finalize();
    let mut s = String::with_capacity(66);
    s.push_str("q.");
    for b in out {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

macro_rules! bind_all {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for p in $params {
            q = match p {
                Param::Null => q.bind(None::<i64>),
                Param::Bool(v) => q.bind(*v),
                Param::Int(v) => q.bind(*v),
                Param::Float(v) => q.bind(*v),
                Param::Text(v) => q.bind(v.clone()),
                Param::Bytes(v) => q.bind(v.clone()),
            };
        }
        q
    }};
}

impl<DB> QueryCache<DB>
where
    DB: CacheableDb,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut <DB as Database>::Connection: Executor<'c, Database = DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    /// Query results of `pool`, cached in `cache` (give it a prefix of its
    /// own) for at most `ttl`; `dialect` parses the SQL.
    pub fn new(pool: Pool<DB>, cache: Cache, dialect: SqlDialect, ttl: Ttl) -> Self {
        QueryCache {
            pool,
            generations: Generations::new(cache.clone()),
            cache,
            schema: Arc::new(Schema::default()),
            dialect,
            ttl,
            analyses: Default::default(),
        }
    }

    /// Declares views and the tables they read.
    pub fn with_schema(mut self, schema: Schema) -> Self {
        self.schema = Arc::new(schema);
        self.analyses = Default::default();
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The table generations.
    pub fn generations(&self) -> &Generations {
        &self.generations
    }

    /// The cache key for a read of `tables`, or `None` when the store is
    /// down (the query then runs uncached).
    async fn key(&self, sql: &str, params: &[Param], tables: &[String]) -> Option<String> {
        let mut all: Vec<String> = tables.to_vec();
        all.push(EVERYTHING.to_owned());
        match self.generations.current(&all).await {
            Ok(gens) => Some(fingerprint(sql, params, &all, &gens)),
            Err(e) => {
                tracing::warn!(error = %e, "query cache: generations unreadable; query runs uncached");
                None
            }
        }
    }

    /// Every row of a query, cached when the query is a plain read.
    pub async fn fetch_all<T>(&self, sql: &str, params: &[Param]) -> Result<Vec<T>, Error>
    where
        T: for<'r> FromRow<'r, DB::Row> + Serialize + DeserializeOwned + Send + Unpin,
    {
        let analysis = self.analysis(sql);
        match &*analysis {
            Analysis::Read(tables) => {
                let tables: Vec<String> = tables.iter().cloned().collect();
                let Some(key) = self.key(sql, params, &tables).await else {
                    return self.run_all(sql, params).await;
                };
                self.cache
                    .get_or_compute(&key, self.ttl, || self.run_all::<T>(sql, params))
                    .await
            }
            other => {
                let rows = self.run_all(sql, params).await?;
                self.after_write(other).await;
                Ok(rows)
            }
        }
    }

    /// The first row, if any.
    pub async fn fetch_optional<T>(&self, sql: &str, params: &[Param]) -> Result<Option<T>, Error>
    where
        T: for<'r> FromRow<'r, DB::Row> + Serialize + DeserializeOwned + Send + Unpin,
    {
        Ok(self.fetch_all::<T>(sql, params).await?.into_iter().next())
    }

    /// Exactly one row; [`Error::NotFound`] when there is none.
    pub async fn fetch_one<T>(&self, sql: &str, params: &[Param]) -> Result<T, Error>
    where
        T: for<'r> FromRow<'r, DB::Row> + Serialize + DeserializeOwned + Send + Unpin,
    {
        self.fetch_optional(sql, params)
            .await?
            .ok_or_else(|| Error::NotFound {
                key: sql.chars().take(80).collect(),
            })
    }

    /// Runs a statement (a write): afterwards the tables it wrote have new
    /// generations, so no cached result computed before it matches again.
    /// A statement that cannot be analyzed invalidates every table.
    /// Returns the rows affected.
    pub async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64, Error> {
        let analysis = self.analysis(sql);
        let q = bind_all!(sqlx::query::<DB>(sql), params);
        let done = q
            .execute(&self.pool)
            .await
            .map_err(|e| Error::backend("sql", e))?;
        self.after_write(&analysis).await;
        Ok(RowsAffected::rows_affected_of(&done))
    }

    async fn run_all<T>(&self, sql: &str, params: &[Param]) -> Result<Vec<T>, Error>
    where
        T: for<'r> FromRow<'r, DB::Row> + Send + Unpin,
    {
        let q = bind_all!(sqlx::query_as::<DB, T>(sql), params);
        q.fetch_all(&self.pool)
            .await
            .map_err(|e| Error::backend("sql", e))
    }

    async fn after_write(&self, analysis: &Analysis) {
        let bump: Vec<String> = match analysis {
            Analysis::Read(_) => return,
            Analysis::Unknown {
                may_write: false, ..
            } => return,
            Analysis::Write { writes } => writes.iter().cloned().collect(),
            Analysis::Unknown {
                may_write: true,
                reason,
            } => {
                tracing::info!(
                    reason,
                    "query cache: unanalyzable statement; invalidating every table"
                );
                vec![EVERYTHING.to_owned()]
            }
        };
        if let Err(e) = self.generations.bump(&bump).await {
            // The write happened but its tables keep their generations:
            // cached results may be stale until their TTL. Loud, because
            // this is the one failure that can serve stale data.
            tracing::error!(error = %e, tables = ?bump, "query cache: could not invalidate after a write");
        }
    }
}

/// Rows affected, for every sqlx database (sqlx has no common trait).
pub trait RowsAffected {
    /// Rows affected by the statement.
    fn rows_affected_of(r: &Self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected_of(r: &Self) -> u64 {
        r.rows_affected()
    }
}

impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows_affected_of(r: &Self) -> u64 {
        r.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected_of(r: &Self) -> u64 {
        r.rows_affected()
    }
}

/// A transaction through a [`QueryCache`]: the generations of the tables
/// it writes are bumped only when it commits (nothing on rollback or drop),
/// and reads of tables it has written go to the database, never to the
/// cache, so it sees its own writes.
pub struct CachedTransaction<DB: Database> {
    qc: QueryCache<DB>,
    tx: sqlx::Transaction<'static, DB>,
    written: std::collections::BTreeSet<String>,
    wrote_unknown: bool,
}

impl<DB> QueryCache<DB>
where
    DB: CacheableDb,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut <DB as Database>::Connection: Executor<'c, Database = DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    /// Starts a transaction.
    pub async fn begin(&self) -> Result<CachedTransaction<DB>, Error> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| Error::backend("sql", e))?;
        Ok(CachedTransaction {
            qc: self.clone(),
            tx,
            written: Default::default(),
            wrote_unknown: false,
        })
    }
}

impl<DB> CachedTransaction<DB>
where
    DB: CacheableDb,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut <DB as Database>::Connection: Executor<'c, Database = DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
    DB::QueryResult: RowsAffected,
{
    /// Every row of a query: from the database if the query reads a table
    /// this transaction has written (or it wrote something unanalyzable),
    /// otherwise as [`QueryCache::fetch_all`].
    pub async fn fetch_all<T>(&mut self, sql: &str, params: &[Param]) -> Result<Vec<T>, Error>
    where
        T: for<'r> FromRow<'r, DB::Row> + Serialize + DeserializeOwned + Send + Unpin,
    {
        let analysis = self.qc.analysis(sql);
        let from_cache = match &*analysis {
            Analysis::Read(tables) => !self.wrote_unknown && tables.is_disjoint(&self.written),
            _ => false,
        };
        if from_cache {
            return self.qc.fetch_all(sql, params).await;
        }
        let q = bind_all!(sqlx::query_as::<DB, T>(sql), params);
        let rows = q
            .fetch_all(&mut *self.tx)
            .await
            .map_err(|e| Error::backend("sql", e))?;
        self.note(&analysis);
        Ok(rows)
    }

    /// Runs a statement in the transaction, remembering what it writes.
    pub async fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, Error> {
        let analysis = self.qc.analysis(sql);
        let q = bind_all!(sqlx::query::<DB>(sql), params);
        let done = q
            .execute(&mut *self.tx)
            .await
            .map_err(|e| Error::backend("sql", e))?;
        self.note(&analysis);
        Ok(RowsAffected::rows_affected_of(&done))
    }

    fn note(&mut self, analysis: &Analysis) {
        match analysis {
            Analysis::Write { writes } => self.written.extend(writes.iter().cloned()),
            Analysis::Unknown {
                may_write: true, ..
            } => self.wrote_unknown = true,
            _ => {}
        }
    }

    /// Commits, then bumps the generations of every table written: when
    /// this returns, no cached result from before the transaction is used.
    pub async fn commit(self) -> Result<(), Error> {
        let CachedTransaction {
            qc,
            tx,
            written,
            wrote_unknown,
        } = self;
        tx.commit().await.map_err(|e| Error::backend("sql", e))?;
        let analysis = if wrote_unknown {
            Analysis::Unknown {
                may_write: true,
                reason: "an unanalyzable statement in a transaction".into(),
            }
        } else {
            Analysis::Write { writes: written }
        };
        qc.after_write(&analysis).await;
        Ok(())
    }

    /// Rolls back; nothing is invalidated (dropping does the same).
    pub async fn rollback(self) -> Result<(), Error> {
        self.tx
            .rollback()
            .await
            .map_err(|e| Error::backend("sql", e))
    }
}

impl<DB> QueryCache<DB>
where
    DB: CacheableDb,
    for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    for<'c> &'c mut <DB as Database>::Connection: Executor<'c, Database = DB>,
    for<'r> String: sqlx::Decode<'r, DB> + Type<DB>,
    for<'r> i64: sqlx::Decode<'r, DB> + Type<DB>,
    for<'r> &'r str: sqlx::ColumnIndex<DB::Row>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// Reads the trigger counts once and bumps the generations of the
    /// tables that changed since the last read (every table on the first
    /// read). See [`crate::install_sql`].
    pub async fn sync_outside_writes(&self, seen: &mut OutsideWrites) -> Result<usize, Error> {
        use sqlx::Row;
        let rows = sqlx::query(&format!(
            "SELECT table_name, generation FROM {}",
            crate::outside::GENERATIONS_TABLE
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| Error::backend("sql", e))?;
        let mut counts = Vec::with_capacity(rows.len());
        for r in rows {
            let t: String = r.try_get(0usize).map_err(|e| Error::backend("sql", e))?;
            let g: i64 = r.try_get(1usize).map_err(|e| Error::backend("sql", e))?;
            counts.push((t, g));
        }
        let changed = seen.0.changed(counts);
        if !changed.is_empty() {
            self.generations.bump(&changed).await?;
        }
        Ok(changed.len())
    }

    /// Polls the trigger counts every `interval` in a background task and
    /// bumps the generations of tables written from outside the
    /// application: such writes are seen within about one interval. The
    /// task stops when the returned handle is dropped... or aborted.
    pub fn watch_outside_writes(&self, interval: Duration) -> tokio::task::JoinHandle<()>
    where
        DB: 'static,
    {
        let qc = self.clone();
        tokio::spawn(async move {
            let mut seen = OutsideWrites::default();
            loop {
                if let Err(e) = qc.sync_outside_writes(&mut seen).await {
                    tracing::warn!(error = %e, "query cache: polling outside writes failed");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

/// What [`QueryCache::sync_outside_writes`] saw last.
#[derive(Debug, Default)]
pub struct OutsideWrites(crate::outside::Seen);

use std::time::Duration;

impl QueryCache<sqlx::Postgres> {
    /// Reacts to outside writes at once: LISTENs for the triggers'
    /// notifications on the database at `url` and bumps the written tables'
    /// generations, resyncing from the trigger counts after every
    /// (re)connection (notifications sent while disconnected are lost).
    pub fn watch_postgres(&self, url: &str) -> tokio::task::JoinHandle<()> {
        let qc = self.clone();
        let seen = std::sync::Arc::new(tokio::sync::Mutex::new(OutsideWrites::default()));
        let poll = move || {
            let (qc, seen) = (qc.clone(), seen.clone());
            async move {
                let mut seen = seen.lock().await;
                if let Err(e) = qc.sync_outside_writes(&mut seen).await {
                    tracing::warn!(error = %e, "query cache: resync of outside writes failed");
                }
            }
        };
        tokio::spawn(crate::outside::listen_postgres(
            url.to_owned(),
            self.generations.clone(),
            poll,
        ))
    }
}
