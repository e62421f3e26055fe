//! `QueryCache`: sqlx queries whose results are cached under the
//! generations of the tables they read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_core::{Cache, Error, Ttl};

use crate::error::QueryError;
use crate::param::BindParam;
pub use crate::param::Param;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::analyze::{analyze, Analysis, Schema, SqlDialect};
use crate::capture::{self, CaptureRow, SetValue, WritePlan};
use crate::generations::{self, Generations};
use crate::rows::{Canon, Const, RowDeps};

/// The sqlx bounds a database needs for [`QueryCache`].
pub trait CacheableDb: Database + BindParam
where
    for<'q> <Self as Database>::Arguments<'q>: IntoArguments<'q, Self>,
    for<'c> &'c mut <Self as Database>::Connection: Executor<'c, Database = Self>,
{
}

impl<DB> CacheableDb for DB
where
    DB: Database + BindParam,
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
/// [`Cache::get_or_compute_after_miss`] (single-flight, leases, fail-open:
/// with the cache down the query still runs). A write through [`QueryCache::execute`]
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
    /// Whether reads depend on row-level generations where they can and
    /// writes report the rows they touched (see [`QueryCache::row_level`]).
    row_level: bool,
    /// Plans by SQL text: parsing is most of a hit's CPU otherwise.
    analyses: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Plan>>>>,
    /// Whether the server takes `RETURNING` on INSERT and DELETE (probed
    /// once: MySQL does not, MariaDB from 10.5, SQLite from 3.35).
    returning: Arc<std::sync::OnceLock<bool>>,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    cached_reads: AtomicU64,
    computed: AtomicU64,
    uncached_reads: AtomicU64,
    row_writes: AtomicU64,
    table_writes: AtomicU64,
}

/// What a [`QueryCache`] (and its clones) has done since it was built
/// (serializes as a JSON object, e.g. for a dashboard section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct QueryStats {
    /// Cacheable reads answered (from the cache or by running the query).
    pub cached_reads: u64,
    /// Of those, the ones that ran the query (misses).
    pub computed: u64,
    /// Reads run uncached: not cacheable (locking, volatile functions,
    /// not understood) or the store was unreachable.
    pub uncached_reads: u64,
    /// Writes that invalidated only the values of the rows they touched.
    pub row_level_writes: u64,
    /// Writes that invalidated whole tables (or everything).
    pub table_level_writes: u64,
}

impl QueryStats {
    /// Cacheable reads answered from the cache.
    pub fn hits(&self) -> u64 {
        self.cached_reads.saturating_sub(self.computed)
    }

    /// Hits over cacheable reads (0 when there were none).
    pub fn hit_ratio(&self) -> f64 {
        if self.cached_reads == 0 {
            0.0
        } else {
            self.hits() as f64 / self.cached_reads as f64
        }
    }
}

/// What a statement does and how to cache or capture it, parsed once.
#[derive(Debug)]
struct Plan {
    analysis: Analysis,
    /// For reads: the tables seen only through an equality.
    deps: RowDeps,
    /// For writes: how to learn the rows touched.
    write: WritePlan,
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
            row_level: self.row_level,
            analyses: self.analyses.clone(),
            returning: self.returning.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<DB: Database> QueryCache<DB> {
    /// The plan of `sql`, parsed once.
    fn plan(&self, sql: &str) -> Arc<Plan> {
        let mut map = self.analyses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = map.get(sql) {
            return a.clone();
        }
        let analysis = analyze(sql, self.dialect, &self.schema);
        let (deps, write) = match &analysis {
            Analysis::Read(_) if self.row_level => (
                read_deps(sql, self.dialect, &self.schema),
                WritePlan::Tables,
            ),
            Analysis::Write { writes } if self.row_level && writes.len() == 1 => {
                let write = capture::plan(sql, self.dialect);
                // The plan's table is the one the analysis says is written.
                let agrees = match &write {
                    WritePlan::Returning { table, .. } | WritePlan::Update { table, .. } => {
                        writes.contains(table)
                    }
                    WritePlan::Tables => true,
                };
                (
                    RowDeps::new(),
                    if agrees { write } else { WritePlan::Tables },
                )
            }
            _ => (RowDeps::new(), WritePlan::Tables),
        };
        let a = Arc::new(Plan {
            analysis,
            deps,
            write,
        });
        if map.len() >= ANALYSES_KEPT {
            map.clear();
        }
        map.insert(sql.to_owned(), a.clone());
        a
    }

    /// The generation keys a read of `tables` depends on: row-level ones
    /// for the tables `deps` constrains to integer values, the table's
    /// otherwise, and the global one.
    fn read_keys(
        &self,
        tables: &std::collections::BTreeSet<String>,
        deps: &RowDeps,
        params: &[Param],
    ) -> Vec<String> {
        let mut keys = Vec::with_capacity(tables.len() * 2 + 1);
        for t in tables {
            keys.push(generations::table_key(t));
            let values: Option<Vec<i64>> = deps.get(t).and_then(|(_, consts)| {
                consts
                    .iter()
                    .map(|c| match c {
                        Const::Int(n) => Some(*n),
                        Const::Param(i) => match params.get(*i) {
                            Some(Param::Int(n)) => Some(*n),
                            _ => None,
                        },
                    })
                    .collect()
            });
            match (deps.get(t), values) {
                (Some((column, _)), Some(values)) => {
                    keys.push(generations::column_key(t, column));
                    for v in values {
                        keys.push(generations::value_key(t, column, v));
                    }
                }
                _ => keys.push(generations::rows_key(t)),
            }
        }
        keys.push(generations::table_key(generations::EVERYTHING));
        keys
    }
}

/// The row-level dependencies of the read `sql`.
fn read_deps(sql: &str, dialect: SqlDialect, schema: &Schema) -> RowDeps {
    let Ok(mut statements) =
        sqlparser::parser::Parser::parse_sql(&*crate::analyze::parser_of(dialect), sql)
    else {
        return RowDeps::new();
    };
    if statements.len() != 1 {
        return RowDeps::new();
    }
    let stmt = statements.remove(0);
    let mut appearances = std::collections::BTreeMap::new();
    let _ = sqlparser::ast::visit_relations(&stmt, |r| {
        *appearances
            .entry(crate::analyze::normalize(&r.to_string()))
            .or_insert(0usize) += 1;
        std::ops::ControlFlow::<()>::Continue(())
    });
    // Tables read through a view or a declared function are read whole.
    let mut whole: Vec<String> = Vec::new();
    for (name, _) in appearances.iter() {
        if let Some(tables) = schema.views.get(name) {
            whole.extend(tables.iter().cloned());
        }
    }
    for tables in schema.functions.values() {
        whole.extend(tables.iter().cloned());
    }
    for t in whole {
        *appearances.entry(t).or_insert(0) += 2;
    }
    crate::rows::row_deps(&stmt, &appearances, &schema.views)
}

/// How long the generation-keyed copy of a result is kept: it serves
/// single-flight and leases while a result is computed, and the readers
/// whose stamped copy was just overwritten; the stamped copy carries the
/// result's TTL.
const COMPUTE_COPY_TTL: Duration = Duration::from_secs(30);

/// A result stored with the generations it was computed under, under a
/// key that does not contain them: a hit reads the generations and the
/// result in one round trip and answers only if the two agree.
#[derive(Serialize, serde::Deserialize)]
struct Stamped<T> {
    gens: Vec<u64>,
    rows: T,
}

/// The first step of a cached read.
enum Lookup<T> {
    /// The stamped result, computed under the current generations.
    Hit(T),
    /// Compute (or find the generation-keyed copy) under these.
    Miss(Vec<u64>),
    /// The store cannot be read: run uncached.
    Down,
}

fn fingerprint(sql: &str, params: &[Param], tables: &[String], gens: &[u64]) -> String {
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    part(sql.as_bytes());
    for p in params {
        part(&p.key_bytes());
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

/// The key of a read's stamped result: the statement, its parameters and
/// the generation keys it depends on, without their values.
fn stamp_key(sql: &str, params: &[Param], keys: &[String]) -> String {
    // Zeros for the values: no generation is 0, so this never equals a
    // generation-keyed fingerprint (the prefix differs as well).
    let mut k = fingerprint(sql, params, keys, &vec![0; keys.len()]);
    k.replace_range(..2, "qs.");
    k
}

macro_rules! bind_all {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for p in $params {
            q = <DB as crate::param::BindParam>::bind_param(q, p);
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
    DB::Row: CaptureRow,
    for<'r> String: sqlx::Decode<'r, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// Query results of `pool`, cached in `cache` (give it a prefix of its
    /// own) for at most `ttl`; `dialect` parses the SQL.
    pub fn new(pool: Pool<DB>, cache: Cache, dialect: SqlDialect, ttl: Ttl) -> Self {
        QueryCache {
            pool,
            generations: Generations::new(cache.clone()).with_row_ttl(ttl),
            cache,
            schema: Arc::new(Schema::default()),
            dialect,
            ttl,
            row_level: true,
            analyses: Default::default(),
            returning: Default::default(),
            counters: Default::default(),
        }
    }

    /// Counts of reads, misses and writes since this cache was built
    /// (shared by its clones).
    pub fn stats(&self) -> QueryStats {
        let c = &self.counters;
        QueryStats {
            cached_reads: c.cached_reads.load(Ordering::Relaxed),
            computed: c.computed.load(Ordering::Relaxed),
            uncached_reads: c.uncached_reads.load(Ordering::Relaxed),
            row_level_writes: c.row_writes.load(Ordering::Relaxed),
            table_level_writes: c.table_writes.load(Ordering::Relaxed),
        }
    }

    /// Row-level dependencies, on by default. A read that sees a table only
    /// through an integer equality (`WHERE post_id = $1`, `IN (…)`, or
    /// carried through a join) depends on the rows with those values, and
    /// an in-app write invalidates only the values its rows had and have,
    /// so writes to other rows leave it cached. Off: every write to a table
    /// invalidates every cached read of it (table generations, as
    /// Johnny-Cache did). See the guide for the shapes covered.
    pub fn row_level(mut self, on: bool) -> Self {
        self.row_level = on;
        self.analyses = Default::default();
        self
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

    /// The TTL of the generation-keyed copy: [`COMPUTE_COPY_TTL`], never
    /// longer than the result's own.
    fn compute_copy_ttl(&self) -> Ttl {
        match self.ttl {
            Ttl::After(d) => Ttl::After(d.min(COMPUTE_COPY_TTL)),
            Ttl::Never => Ttl::After(COMPUTE_COPY_TTL),
            // The cache's default, unknown here: the result's own.
            other => other,
        }
    }

    /// Reads the generations under `keys` and the stamped result under
    /// `stamp` in one round trip (one MGET on Redis, one multi-get on
    /// memcached).
    async fn lookup<T: DeserializeOwned>(&self, keys: &[String], stamp: &str) -> Lookup<T> {
        let mut all: Vec<&str> = keys.iter().map(String::as_str).collect();
        all.push(stamp);
        let mut raw = match self.cache.get_many_raw(&all).await {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(error = %e, "query cache: store unreadable; query runs uncached");
                return Lookup::Down;
            }
        };
        let stamped = raw.pop().flatten();
        let gens: Option<Vec<u64>> = raw
            .iter()
            .map(|r| r.as_deref().and_then(generations::decode_generation))
            .collect();
        let gens = match gens {
            Some(g) => g,
            // A generation missing or unreadable: create or replace it (a
            // conservative miss), as every read of it does.
            None => match self.generations.current_keys(keys).await {
                Ok(g) => {
                    self.cache.record_lookup(false);
                    return Lookup::Miss(g);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "query cache: generations unreadable; query runs uncached");
                    return Lookup::Down;
                }
            },
        };
        if let Some(bytes) = stamped {
            match larder_core::envelope::decode::<Stamped<T>>(&bytes) {
                Ok((s, _)) if s.gens == gens => {
                    self.cache.record_lookup(true);
                    return Lookup::Hit(s.rows);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(key = stamp, error = %e, "query cache: unreadable result treated as a miss");
                }
            }
        }
        self.cache.record_lookup(false);
        Lookup::Miss(gens)
    }

    /// Every row of a query, cached when the query is a plain read.
    ///
    /// A hit is one round trip to the store: the generations the query
    /// depends on and its result stamped with the generations it was
    /// computed under, read together; the result answers only if they
    /// agree. A miss computes through [`Cache::get_or_compute_after_miss`]
    /// under a key made of those generations (single-flight, leases;
    /// without reading that key first, since the stamp just read stands
    /// for it), then stamps the result: on Redis a miss is four round
    /// trips besides the query (the lookup, the lease, its fill, the
    /// stamp).
    pub async fn fetch_all<T>(&self, sql: &str, params: &[Param]) -> Result<Vec<T>, QueryError>
    where
        T: for<'r> FromRow<'r, DB::Row> + Serialize + DeserializeOwned + Send + Unpin,
    {
        let plan = self.plan(sql);
        match &plan.analysis {
            Analysis::Read(tables) => {
                let keys = self.read_keys(tables, &plan.deps, params);
                let stamp = stamp_key(sql, params, &keys);
                let gens = match self.lookup::<Vec<T>>(&keys, &stamp).await {
                    Lookup::Hit(rows) => {
                        self.counters.cached_reads.fetch_add(1, Ordering::Relaxed);
                        return Ok(rows);
                    }
                    Lookup::Miss(gens) => gens,
                    Lookup::Down => {
                        self.counters.uncached_reads.fetch_add(1, Ordering::Relaxed);
                        return Ok(self.run_all(sql, params).await?);
                    }
                };
                let key = fingerprint(sql, params, &keys, &gens);
                let rows = self
                    .cache
                    .get_or_compute_after_miss(&key, self.compute_copy_ttl(), || {
                        self.counters.computed.fetch_add(1, Ordering::Relaxed);
                        self.run_all::<T>(sql, params)
                    })
                    .await;
                self.counters.cached_reads.fetch_add(1, Ordering::Relaxed);
                let rows = rows.map_err(QueryError::from)?;
                // Computed (here or by another process) under `gens`: a
                // later write changes them, so the stamp stops matching.
                let stamped = Stamped { gens, rows };
                if let Err(e) = self.cache.set(&stamp, &stamped, self.ttl).await {
                    tracing::debug!(error = %e, "query cache: could not store a stamped result");
                }
                Ok(stamped.rows)
            }
            other => {
                self.counters.uncached_reads.fetch_add(1, Ordering::Relaxed);
                let rows = self.run_all(sql, params).await?;
                self.after_write(other).await;
                Ok(rows)
            }
        }
    }

    /// The first row, if any.
    pub async fn fetch_optional<T>(
        &self,
        sql: &str,
        params: &[Param],
    ) -> Result<Option<T>, QueryError>
    where
        T: for<'r> FromRow<'r, DB::Row> + Serialize + DeserializeOwned + Send + Unpin,
    {
        Ok(self.fetch_all::<T>(sql, params).await?.into_iter().next())
    }

    /// Exactly one row; [`QueryError::RowNotFound`] when there is none.
    pub async fn fetch_one<T>(&self, sql: &str, params: &[Param]) -> Result<T, QueryError>
    where
        T: for<'r> FromRow<'r, DB::Row> + Serialize + DeserializeOwned + Send + Unpin,
    {
        self.fetch_optional(sql, params)
            .await?
            .ok_or(QueryError::RowNotFound)
    }

    /// Runs a statement (a write): afterwards the tables it wrote have new
    /// generations, so no cached result computed before it matches again.
    /// A statement that cannot be analyzed invalidates every table.
    /// Returns the rows affected.
    pub async fn execute(&self, sql: &str, params: &[Param]) -> Result<u64, QueryError> {
        let plan = self.plan(sql);
        let write = self.usable(&plan.write).await;
        if let WritePlan::Tables = write {
            let q = bind_all!(sqlx::query::<DB>(sql), params);
            let done = q.execute(&self.pool).await.map_err(sql_error)?;
            self.after_write(&plan.analysis).await;
            return Ok(RowsAffected::rows_affected_of(&done));
        }
        let sqlite = self.dialect == SqlDialect::Sqlite;
        let (n, touched) = if matches!(write, WritePlan::Returning { .. }) {
            // One statement: atomic on its own.
            let mut conn = self.pool.acquire().await.map_err(sql_error)?;
            self.captured_write(&mut conn, write, sql, params).await?
        } else {
            // Read, then update: in one transaction (SQLite: taking the
            // write lock first, so no other writer comes in between).
            let mut tx = if sqlite {
                self.pool.begin_with("BEGIN IMMEDIATE").await
            } else {
                self.pool.begin().await
            }
            .map_err(sql_error)?;
            let out = self.captured_write(&mut tx, write, sql, params).await?;
            tx.commit().await.map_err(sql_error)?;
            out
        };
        self.after_rows(touched).await;
        Ok(n)
    }

    /// `write`, or [`WritePlan::Tables`] when it needs `RETURNING` on a
    /// server without it.
    async fn usable<'p>(&self, write: &'p WritePlan) -> &'p WritePlan {
        let needs_returning = match write {
            WritePlan::Tables => return write,
            WritePlan::Returning { .. } => true,
            WritePlan::Update { returning, .. } => returning.is_some(),
        };
        if !needs_returning || self.dialect == SqlDialect::Postgres {
            return write;
        }
        if self.returning.get().is_none() {
            let probe = match self.dialect {
                SqlDialect::Sqlite => "SELECT sqlite_version()",
                _ => "SELECT VERSION()",
            };
            let version: Option<String> = match sqlx::query(probe).fetch_one(&self.pool).await {
                Ok(row) => sqlx::Row::try_get::<String, _>(&row, 0usize).ok(),
                Err(_) => None,
            };
            let Some(version) = version else {
                return &WritePlan::Tables; // ask again next time
            };
            let _ = self
                .returning
                .set(returning_supported(self.dialect, &version));
        }
        if self.returning.get() == Some(&true) {
            write
        } else {
            &WritePlan::Tables
        }
    }

    /// Runs a captured write on `conn` and says which rows it touched:
    /// `Ok((rows affected, Touched))`.
    async fn captured_write(
        &self,
        conn: &mut DB::Connection,
        write: &WritePlan,
        sql: &str,
        params: &[Param],
    ) -> Result<(u64, Touched), QueryError> {
        let dialect = self.dialect;
        let mut keys = std::collections::BTreeSet::new();
        match write {
            WritePlan::Tables => unreachable!("handled by the caller"),
            WritePlan::Returning { table, sql: rsql } => {
                let rows = bind_all!(sqlx::query::<DB>(rsql), params)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                for r in &rows {
                    capture::row_keys(table, &r.captured(dialect), &mut keys);
                }
                let n = rows.len() as u64;
                Ok((n, Touched::rows(table, keys, n)))
            }
            WritePlan::Update {
                table,
                preread,
                preread_params,
                returning,
                set,
            } => {
                let pre: Vec<Param> = preread_params
                    .iter()
                    .map(|&i| params.get(i).cloned().unwrap_or(Param::Null))
                    .collect();
                let old = bind_all!(sqlx::query::<DB>(preread), &pre)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                let old: Vec<Vec<(String, Canon)>> =
                    old.iter().map(|r| r.captured(dialect)).collect();
                for r in &old {
                    capture::row_keys(table, r, &mut keys);
                }
                let n = match returning {
                    Some(rsql) => {
                        let new = bind_all!(sqlx::query::<DB>(rsql), params)
                            .fetch_all(&mut *conn)
                            .await
                            .map_err(sql_error)?;
                        for r in &new {
                            capture::row_keys(table, &r.captured(dialect), &mut keys);
                        }
                        new.len() as u64
                    }
                    None => {
                        let done = bind_all!(sqlx::query::<DB>(sql), params)
                            .execute(&mut *conn)
                            .await
                            .map_err(sql_error)?;
                        // The new values: what SET assigns (the other
                        // columns keep the values read above).
                        let assigned: Vec<(String, Canon)> = set
                            .iter()
                            .map(|(c, v)| {
                                let canon = match v {
                                    SetValue::Canon(c) => *c,
                                    SetValue::Param(i) => params
                                        .get(*i)
                                        .map_or(Canon::Unknown, capture::canon_written_param),
                                };
                                (c.clone(), canon)
                            })
                            .collect();
                        if !old.is_empty() {
                            capture::row_keys(table, &assigned, &mut keys);
                        }
                        RowsAffected::rows_affected_of(&done)
                    }
                };
                if n > old.len() as u64 {
                    // Rows we did not read first (inserted meanwhile by
                    // another transaction): their old values are unknown.
                    return Ok((n, Touched::Table(table.clone())));
                }
                Ok((n, Touched::rows(table, keys, n)))
            }
        }
    }

    /// Bumps what a captured write touched, after it committed.
    async fn after_rows(&self, touched: Touched) {
        let counter = match touched {
            Touched::Table(_) => &self.counters.table_writes,
            _ => &self.counters.row_writes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let keys = touched.keys();
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.generations.bump_keys(&keys).await {
            tracing::error!(error = %e, keys = keys.len(), "query cache: could not invalidate after a write");
        }
    }

    /// Runs a read uncached.
    async fn run_all<T>(&self, sql: &str, params: &[Param]) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, DB::Row> + Send + Unpin,
    {
        let q = bind_all!(sqlx::query_as::<DB, T>(sql), params);
        q.fetch_all(&self.pool).await
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
                vec![generations::EVERYTHING.to_owned()]
            }
        };
        self.counters.table_writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.generations.bump(&bump).await {
            // The write happened but its tables keep their generations:
            // cached results may be stale until their TTL. Loud, because
            // this is the one failure that can serve stale data.
            tracing::error!(error = %e, tables = ?bump, "query cache: could not invalidate after a write");
        }
    }
}

/// A database error from running the application's statement.
fn sql_error(e: sqlx::Error) -> QueryError {
    QueryError::from(e)
}

/// Whether a server whose `VERSION()` / `sqlite_version()` is `version`
/// takes `INSERT … RETURNING` and `DELETE … RETURNING`.
fn returning_supported(dialect: SqlDialect, version: &str) -> bool {
    let numbers: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    let at_least = |major: u32, minor: u32| match numbers.as_slice() {
        [a, b, ..] => (*a, *b) >= (major, minor),
        _ => false,
    };
    match dialect {
        SqlDialect::Sqlite => at_least(3, 35),
        SqlDialect::MySql => version.contains("MariaDB") && at_least(10, 5),
        SqlDialect::Postgres => true,
    }
}

/// What a captured write touched.
#[derive(Debug)]
enum Touched {
    /// Nothing (no row matched).
    Nothing,
    /// Too much to say row by row: the whole table.
    Table(String),
    /// Rows of `table`, whose values bump `keys`.
    Rows {
        table: String,
        keys: std::collections::BTreeSet<String>,
    },
}

impl Touched {
    fn rows(table: &str, keys: std::collections::BTreeSet<String>, n: u64) -> Self {
        if n == 0 && keys.is_empty() {
            Touched::Nothing
        } else if keys.len() > capture::MAX_ROW_KEYS {
            // (counted as a table-level write; `table_keys` says the same)
            Touched::Table(table.to_owned())
        } else {
            Touched::Rows {
                table: table.to_owned(),
                keys,
            }
        }
    }

    /// The generation keys to bump.
    fn keys(self) -> std::collections::BTreeSet<String> {
        match self {
            Touched::Nothing => Default::default(),
            Touched::Table(t) => [generations::table_key(&t)].into(),
            Touched::Rows { table, keys } => capture::table_keys(&table, keys),
        }
    }
}

/// Rows affected, for every sqlx database (sqlx has no common trait).
pub trait RowsAffected {
    /// Rows affected by the statement.
    fn rows_affected_of(r: &Self) -> u64;
}

#[cfg(feature = "postgres")]
impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected_of(r: &Self) -> u64 {
        r.rows_affected()
    }
}

#[cfg(feature = "mysql")]
impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows_affected_of(r: &Self) -> u64 {
        r.rows_affected()
    }
}

#[cfg(feature = "sqlite")]
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
    /// Every table written: reads of them go to the database.
    written: std::collections::BTreeSet<String>,
    /// Generation keys to bump at commit (whole tables and rows).
    bumps: std::collections::BTreeSet<String>,
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
    DB::Row: CaptureRow,
    for<'r> String: sqlx::Decode<'r, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// Starts a transaction.
    pub async fn begin(&self) -> Result<CachedTransaction<DB>, QueryError> {
        let tx = self.pool.begin().await.map_err(sql_error)?;
        Ok(CachedTransaction {
            qc: self.clone(),
            tx,
            written: Default::default(),
            bumps: Default::default(),
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
    DB::Row: CaptureRow,
    for<'r> String: sqlx::Decode<'r, DB> + Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    /// Every row of a query: from the database if the query reads a table
    /// this transaction has written (or it wrote something unanalyzable),
    /// otherwise as [`QueryCache::fetch_all`].
    pub async fn fetch_all<T>(&mut self, sql: &str, params: &[Param]) -> Result<Vec<T>, QueryError>
    where
        T: for<'r> FromRow<'r, DB::Row> + Serialize + DeserializeOwned + Send + Unpin,
    {
        let plan = self.qc.plan(sql);
        let analysis = &plan.analysis;
        let from_cache = match analysis {
            Analysis::Read(tables) => !self.wrote_unknown && tables.is_disjoint(&self.written),
            _ => false,
        };
        if from_cache {
            return self.qc.fetch_all(sql, params).await;
        }
        let q = bind_all!(sqlx::query_as::<DB, T>(sql), params);
        let rows = q.fetch_all(&mut *self.tx).await.map_err(sql_error)?;
        self.note(analysis);
        Ok(rows)
    }

    /// Runs a statement in the transaction, remembering what it writes.
    pub async fn execute(&mut self, sql: &str, params: &[Param]) -> Result<u64, QueryError> {
        let plan = self.qc.plan(sql);
        let write = self.qc.usable(&plan.write).await;
        if !matches!(write, WritePlan::Tables) {
            let (n, touched) = self
                .qc
                .captured_write(&mut self.tx, write, sql, params)
                .await?;
            if let Analysis::Write { writes } = &plan.analysis {
                self.written.extend(writes.iter().cloned());
            }
            self.bumps.extend(touched.keys());
            return Ok(n);
        }
        let q = bind_all!(sqlx::query::<DB>(sql), params);
        let done = q.execute(&mut *self.tx).await.map_err(sql_error)?;
        self.note(&plan.analysis);
        Ok(RowsAffected::rows_affected_of(&done))
    }

    /// Remembers the tables a statement not captured row by row writes.
    fn note(&mut self, analysis: &Analysis) {
        match analysis {
            Analysis::Write { writes } => {
                self.written.extend(writes.iter().cloned());
                self.bumps
                    .extend(writes.iter().map(|t| generations::table_key(t)));
            }
            Analysis::Unknown {
                may_write: true, ..
            } => self.wrote_unknown = true,
            _ => {}
        }
    }

    /// Commits, then bumps the generations of every table written: when
    /// this returns, no cached result from before the transaction is used.
    pub async fn commit(self) -> Result<(), QueryError> {
        let CachedTransaction {
            qc,
            tx,
            bumps,
            wrote_unknown,
            ..
        } = self;
        tx.commit().await.map_err(sql_error)?;
        if wrote_unknown {
            qc.after_write(&Analysis::Unknown {
                may_write: true,
                reason: "an unanalyzable statement in a transaction".into(),
            })
            .await;
        } else if !bumps.is_empty() {
            let whole = bumps.iter().any(|k| k.starts_with("qgen."));
            let counter = if whole {
                &qc.counters.table_writes
            } else {
                &qc.counters.row_writes
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = qc.generations.bump_keys(&bumps).await {
                tracing::error!(error = %e, keys = bumps.len(), "query cache: could not invalidate after a transaction");
            }
        }
        Ok(())
    }

    /// Rolls back; nothing is invalidated (dropping does the same).
    pub async fn rollback(self) -> Result<(), QueryError> {
        self.tx.rollback().await.map_err(sql_error)
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
    /// Reads what the capture triggers appended to the change log since
    /// the last call and bumps the generations the changed rows' old and
    /// new values name (see [`crate::install`]); returns how many changes
    /// it read. The first call bumps everything (the cache may hold
    /// results from before), and so does one call after every write that
    /// was in flight then has ended. Also prunes the log now and then
    /// (rows older than ten minutes below every reader's position).
    pub async fn sync_outside_writes(&self, seen: &mut OutsideWrites) -> Result<usize, QueryError> {
        use larder_changes::changelog::{self, Fence, LogRow};
        use sqlx::Row;
        let dialect = self.dialect;
        let log = crate::outside::CHANGE_LOG;
        let sql_err = sql_error;
        let pool = &self.pool;
        let fence = || async move {
            let Some(sql) = changelog::fence_sql(dialect) else {
                return Ok(match dialect {
                    SqlDialect::MySql => Fence::Probed,
                    _ => Fence::Serial,
                });
            };
            let r = sqlx::query::<DB>(sql)
                .fetch_one(pool)
                .await
                .map_err(sql_err)?;
            let xmin: String = r.try_get(0usize).map_err(sql_err)?;
            let xmax: String = r.try_get(1usize).map_err(sql_err)?;
            Fence::snapshot(&xmin, &xmax).ok_or_else(|| {
                QueryError::Cache(Error::backend(
                    "sql",
                    format!("unreadable snapshot {xmin}:{xmax}"),
                ))
            })
        };
        let log_rows = |rows: Vec<DB::Row>| -> Result<Vec<LogRow>, QueryError> {
            rows.iter()
                .map(|r| {
                    Ok(LogRow {
                        id: r.try_get(0usize).map_err(sql_err)?,
                        table: r.try_get(1usize).map_err(sql_err)?,
                        old_row: r.try_get(2usize).map_err(sql_err)?,
                        new_row: r.try_get(3usize).map_err(sql_err)?,
                    })
                })
                .collect()
        };
        let everything = || {
            [generations::table_key(generations::EVERYTHING)]
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
        };
        let stale = seen
            .last_read
            .is_some_and(|t| t.elapsed() > crate::outside::RETENTION / 2);
        if !seen.cursor.started() || stale {
            let max: Option<i64> =
                sqlx::query_scalar::<DB, Option<i64>>(&changelog::max_id_sql(log))
                    .fetch_one(pool)
                    .await
                    .map_err(sql_err)?;
            let after = fence().await?;
            self.generations.bump_keys(&everything()).await?;
            let max = max.unwrap_or(0);
            if dialect == SqlDialect::MySql {
                let present = sqlx::raw_sql(&changelog::ids_between_sql(
                    log,
                    max - changelog::START_WINDOW,
                    max,
                ))
                .fetch_all(pool)
                .await
                .map_err(sql_err)?
                .iter()
                .map(|r| r.try_get::<i64, _>(0usize).map_err(sql_err))
                .collect::<Result<Vec<i64>, QueryError>>()?;
                seen.cursor.start_probing(max, &present);
            } else {
                seen.cursor.start(max, after);
            }
            seen.resync_owed = false;
            seen.last_read = Some(std::time::Instant::now());
            return Ok(0);
        }
        let now = fence().await?;
        let start_passed = seen.cursor.start_passed_by(&now);
        let plan = seen.cursor.plan(&now);
        let mut rows = log_rows(
            // Literals, not parameters: the statements run unprepared.
            sqlx::raw_sql(&changelog::read_after_sql(log, plan.after))
                .fetch_all(pool)
                .await
                .map_err(sql_err)?,
        )?;
        if !plan.gaps.is_empty() {
            rows.extend(log_rows(
                sqlx::raw_sql(&changelog::read_ids_sql(log, &plan.gaps))
                    .fetch_all(pool)
                    .await
                    .map_err(sql_err)?,
            )?);
        }
        let after = fence().await?;
        let polled = seen.cursor.finish(rows, after, start_passed);
        if dialect == SqlDialect::MySql {
            self.probe_gaps(&mut seen.cursor).await?;
        }
        seen.last_read = Some(std::time::Instant::now());
        let n = polled.rows.len();
        let keys = if polled.resync || seen.resync_owed {
            everything()
        } else {
            crate::outside::keys_of(dialect, &polled.rows)
        };
        if !keys.is_empty() {
            self.counters
                .row_writes
                .fetch_add(n as u64, Ordering::Relaxed);
            // The cursor has moved past these rows: if the bump fails,
            // the next call bumps everything instead.
            match self.generations.bump_keys(&keys).await {
                Ok(()) => seen.resync_owed = false,
                Err(e) => {
                    seen.resync_owed = true;
                    return Err(e.into());
                }
            }
        }
        if seen
            .last_prune
            .is_none_or(|t| t.elapsed() > crate::outside::PRUNE_EVERY)
        {
            seen.last_prune = Some(std::time::Instant::now());
            let cutoff = larder_core::unix_ms_i64()
                .saturating_sub(crate::outside::RETENTION.as_millis() as i64);
            if let Err(e) = sqlx::raw_sql(&changelog::prune_sql(log, seen.cursor.settled(), cutoff))
                .execute(pool)
                .await
            {
                tracing::warn!(error = %e, "query cache: could not prune the change log");
            }
        }
        Ok(n)
    }

    /// MySQL/MariaDB: which open gaps of the change log are rows in
    /// flight (locked) and which are not there (see
    /// [`larder_changes::changelog`]). At most 64 per call.
    async fn probe_gaps(
        &self,
        cursor: &mut larder_changes::changelog::LogCursor,
    ) -> Result<(), QueryError> {
        use larder_changes::changelog;
        let (mut locked, mut absent) = (Vec::new(), Vec::new());
        for id in cursor.gaps_to_probe().into_iter().take(64) {
            let probe = sqlx::raw_sql(&changelog::probe_sql(crate::outside::CHANGE_LOG, id))
                .fetch_all(&self.pool)
                .await;
            match probe {
                Ok(rows) if rows.is_empty() => absent.push(id),
                // Committed since the read: the next read finds it.
                Ok(_) => {}
                // ER_LOCK_WAIT_TIMEOUT (MariaDB's NOWAIT), ER_LOCK_NOWAIT
                // (MySQL 8): an open transaction holds the row.
                Err(sqlx::Error::Database(e)) if is_lock_wait(&*e) => locked.push(id),
                Err(e) => return Err(sql_error(e)),
            }
        }
        cursor.probed(&locked, &absent);
        Ok(())
    }

    /// Reads the change log every `interval` in a background task
    /// ([`QueryCache::sync_outside_writes`]): writes from outside the
    /// application are seen within about one interval. The task stops
    /// when the returned handle is aborted.
    pub fn watch_outside_writes(&self, interval: Duration) -> tokio::task::JoinHandle<()>
    where
        DB: 'static,
    {
        let qc = self.clone();
        tokio::spawn(async move {
            let mut seen = OutsideWrites::default();
            loop {
                if let Err(e) = qc.sync_outside_writes(&mut seen).await {
                    tracing::warn!(error = %e, "query cache: reading outside writes failed");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

#[cfg(feature = "logical")]
impl QueryCache<sqlx::Postgres> {
    /// Reacts to outside writes through PostgreSQL logical replication
    /// (the server needs `wal_level = logical`): every committed row change
    /// of `config.tables` (psql, other services, this application too)
    /// bumps the generations of the values its old and new rows hold, so
    /// row-level reads of other rows stay cached, with nothing added to the
    /// writers' transactions (no triggers). `TRUNCATE` invalidates the
    /// table. The slot keeps the position: after a restart the changes
    /// made meanwhile arrive; a slot found missing (dropped) invalidates
    /// every watched table. Runs until the handle is aborted.
    pub fn watch_replication(
        &self,
        config: larder_changes::logical::LogicalConfig,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(crate::replication::watch(config, self.generations.clone()))
    }
}

/// ER_LOCK_WAIT_TIMEOUT (MariaDB's NOWAIT) or ER_LOCK_NOWAIT (MySQL 8):
/// an open transaction holds the probed row.
fn is_lock_wait(e: &dyn sqlx::error::DatabaseError) -> bool {
    #[cfg(feature = "mysql")]
    if let Some(m) = e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        return matches!(m.number(), 1205 | 3572);
    }
    let _ = e;
    false
}

/// Where [`QueryCache::sync_outside_writes`] is in the change log.
#[derive(Debug, Default)]
pub struct OutsideWrites {
    cursor: larder_changes::changelog::LogCursor,
    /// A bump failed after the cursor moved: bump everything next time.
    resync_owed: bool,
    last_read: Option<std::time::Instant>,
    last_prune: Option<std::time::Instant>,
}

#[cfg(feature = "postgres")]
impl QueryCache<sqlx::Postgres> {
    /// Reacts to outside writes at once: LISTENs for the triggers'
    /// notifications on the database at `url` and reads the change log
    /// whenever one arrives (many at once make one read), after every
    /// (re)connection, and at least once a second.
    pub fn watch_postgres(&self, url: &str) -> tokio::task::JoinHandle<()> {
        let qc = self.clone();
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let listener = tokio::spawn(crate::outside::listen_postgres(
            url.to_owned(),
            wake.clone(),
        ));
        tokio::spawn(async move {
            // Aborting the reader ends the listener too.
            struct StopOnDrop(tokio::task::JoinHandle<()>);
            impl Drop for StopOnDrop {
                fn drop(&mut self) {
                    self.0.abort();
                }
            }
            let _listener = StopOnDrop(listener);
            let mut seen = OutsideWrites::default();
            loop {
                if let Err(e) = qc.sync_outside_writes(&mut seen).await {
                    tracing::warn!(error = %e, "query cache: reading outside writes failed");
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            }
        })
    }
}
