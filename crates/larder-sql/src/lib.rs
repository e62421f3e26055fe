//! # larder-sql
//!
//! A cache table in a SQL database, for [larder](https://docs.rs/larder): SQLite,
//! PostgreSQL and MySQL/MariaDB through [sqlx](https://docs.rs/sqlx).
//!
//! | URL | database | type |
//! |-----|----------|------|
//! | `sqlite:///path/to/cache.db`, `sqlite://relative.db` | SQLite (created if missing), in process on rusqlite | [`SqliteBackend`] |
//! | `postgres://user@host:5432/db` | PostgreSQL, on sqlx | [`SqlBackend`] |
//! | `mysql://user:pass@host:3306/db` | MySQL / MariaDB, on sqlx | [`SqlBackend`] |
//!
//! [`open`] picks the right one for a URL. Each database is a feature
//! (`postgres`, `mysql`, `sqlite`; all on by default): leave out the
//! drivers you do not use.
//!
//! Options: `table` (default `larder_cache`), `create_table` (default true:
//! the table is created if missing, idempotently), `cull_every` (default
//! 1000: expired rows are deleted every that many writes, using the index on
//! the expiry column, never a `COUNT(*)` per write as Django does),
//! `deadline_ms` (default 2000), `max_connections` (default 8). Other options
//! are passed to sqlx.
//!
//! Operations and why they are shaped so:
//!
//! - `set` is one upsert; `get_many` one `IN (…)` query; `delete` uses
//!   `RETURNING` to tell a live row from an expired one in one statement.
//! - `add` deletes the row if it expired, then inserts if absent
//!   (`ON CONFLICT DO NOTHING` / `INSERT IGNORE`): each statement is atomic,
//!   so of concurrent `add`s exactly one wins.
//! - `incr` is one atomic statement on PostgreSQL (`UPDATE … RETURNING`,
//!   the value checked by a regex and added as `bigint`, which raises on
//!   overflow) and on MySQL/MariaDB (an `UPDATE` that assigns a session
//!   variable, read back on the same connection); see [`SqliteBackend`] for
//!   SQLite. Exact signed 64-bit semantics and the expiry untouched.
//! - Keys are `VARBINARY(250)` on MySQL/MariaDB so they compare byte for
//!   byte; the default collations there would make `"a"` and `"A"` one key.
#![warn(missing_docs)]

#[cfg(feature = "postgres")]
mod pg_bus;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "postgres")]
pub use pg_bus::PgBus;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteBackend, SqliteConfig};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use larder_core::envelope::parse_integer;
use larder_core::{
    async_trait, lease_key, Backend, Bytes, CacheUrl, Capabilities, ClearScope, Error, Expiry,
    LeaseGrant, LeaseToken, Result,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

const NAME: &str = "sql";

/// The SQL dialect of a database (one type shared with larder-query and
/// larder-views).
pub use larder_changes::Dialect;

/// Settings of a [`SqlBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqlConfig {
    /// Cache table name (letters, digits and `_`).
    pub table: String,
    /// Create the table if it is missing when connecting.
    pub create_table: bool,
    /// Delete expired rows every this many writes (0: never).
    pub cull_every: u64,
    /// Longest one operation may take.
    pub deadline: Duration,
    /// Pool size.
    pub max_connections: u32,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            table: "larder_cache".into(),
            create_table: true,
            cull_every: 1000,
            deadline: Duration::from_secs(2),
            max_connections: 8,
        }
    }
}

/// The DDL that creates a cache table, as statements (idempotent).
pub fn create_table_sql(dialect: Dialect, table: &str) -> Vec<String> {
    let (key, value) = match dialect {
        Dialect::Sqlite => ("TEXT NOT NULL PRIMARY KEY", "BLOB NOT NULL"),
        Dialect::Postgres => ("TEXT NOT NULL PRIMARY KEY", "BYTEA NOT NULL"),
        Dialect::MySql => ("VARBINARY(250) NOT NULL PRIMARY KEY", "LONGBLOB NOT NULL"),
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (cache_key {key}, value {value}, expires_ms BIGINT NULL)"
        ),
        format!("CREATE INDEX IF NOT EXISTS {table}_expires ON {table} (expires_ms)"),
    ]
}

struct Sql {
    get: String,
    has: String,
    upsert: String,
    delete_expired_one: String,
    insert_absent: String,
    delete_returning: String,
    read_for_cas: String,
    touch: String,
    cull: String,
    clear_prefix: String,
    clear_all: String,
    delete_lease: String,
    lease_take: String,
    read_for_update: String,
}

impl Sql {
    fn new(d: Dialect, t: &str) -> Sql {
        let p = |n| d.placeholder(n);
        let live = |n: usize| format!("(expires_ms IS NULL OR expires_ms > {})", p(n));
        Sql {
            get: format!("SELECT value FROM {t} WHERE cache_key = {} AND {}", p(1), live(2)),
            has: format!("SELECT 1 FROM {t} WHERE cache_key = {} AND {}", p(1), live(2)),
            upsert: match d {
                Dialect::MySql => format!(
                    "INSERT INTO {t} (cache_key, value, expires_ms) VALUES (?, ?, ?) \
                     ON DUPLICATE KEY UPDATE value = VALUES(value), expires_ms = VALUES(expires_ms)"
                ),
                _ => format!(
                    "INSERT INTO {t} (cache_key, value, expires_ms) VALUES ({}, {}, {}) \
                     ON CONFLICT (cache_key) DO UPDATE SET value = excluded.value, expires_ms = excluded.expires_ms",
                    p(1), p(2), p(3)
                ),
            },
            delete_expired_one: format!(
                "DELETE FROM {t} WHERE cache_key = {} AND expires_ms IS NOT NULL AND expires_ms <= {}",
                p(1),
                p(2)
            ),
            insert_absent: match d {
                Dialect::MySql => format!("INSERT IGNORE INTO {t} (cache_key, value, expires_ms) VALUES (?, ?, ?)"),
                _ => format!(
                    "INSERT INTO {t} (cache_key, value, expires_ms) VALUES ({}, {}, {}) ON CONFLICT (cache_key) DO NOTHING",
                    p(1), p(2), p(3)
                ),
            },
            delete_returning: format!("DELETE FROM {t} WHERE cache_key = {} RETURNING expires_ms", p(1)),
            read_for_cas: format!("SELECT value FROM {t} WHERE cache_key = {} AND {}", p(1), live(2)),
            touch: format!(
                "UPDATE {t} SET expires_ms = {} WHERE cache_key = {} AND {}",
                p(1),
                p(2),
                live(3)
            ),
            cull: format!("DELETE FROM {t} WHERE expires_ms IS NOT NULL AND expires_ms <= {}", p(1)),
            clear_prefix: format!("DELETE FROM {t} WHERE cache_key LIKE {} ESCAPE '!'", p(1)),
            clear_all: format!("DELETE FROM {t}"),
            delete_lease: format!("DELETE FROM {t} WHERE cache_key = {}", p(1)),
            lease_take: format!(
                "DELETE FROM {t} WHERE cache_key = {} AND value = {} AND {}",
                p(1),
                p(2),
                live(3)
            ),
            read_for_update: format!(
                "SELECT value FROM {t} WHERE cache_key = {} AND {} FOR UPDATE",
                p(1),
                live(2)
            ),
        }
    }
}

/// A cache backend on a table of a SQL database.
#[derive(Clone)]
pub struct SqlBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced by a fresh lazy pool on `close`, so a closed cache stays
    /// usable (sqlx pools cannot reopen).
    pool: std::sync::RwLock<AnyPool>,
    url: String,
    /// False while the configured table creation has not happened yet (the
    /// database was unreachable at start): the next call tries it.
    table_ready: std::sync::atomic::AtomicBool,
    dialect: Dialect,
    config: SqlConfig,
    sql: Sql,
    writes: AtomicU64,
}

impl std::fmt::Debug for SqlBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlBackend")
            .field("dialect", &self.inner.dialect)
            .field("config", &self.inner.config)
            .finish()
    }
}

/// A database this build has no driver for.
fn not_built(dialect: Dialect) -> Error {
    Error::config(
        larder_changes::Error::NotBuilt {
            krate: "larder-sql",
            dialect,
        }
        .to_string(),
    )
}

fn db_err(e: sqlx::Error) -> Error {
    Error::backend(NAME, e)
}

/// Opens the SQL backend for a cache URL: [`SqliteBackend`] for `sqlite://`,
/// [`SqlBackend`] for `postgres://` and `mysql://`.
pub async fn open(url: &mut CacheUrl) -> Result<Arc<dyn Backend>> {
    match url.scheme() {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(SqliteBackend::from_url(url)?)),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(not_built(Dialect::Sqlite)),
        _ => Ok(Arc::new(SqlBackend::from_url(url).await?)),
    }
}

use larder_core::unix_ms_i64 as now_ms;

fn expires(ttl: Expiry) -> Option<i64> {
    match ttl {
        Expiry::Never => None,
        Expiry::After(d) => Some(
            now_ms()
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64)
                .max(1),
        ),
    }
}

/// Escapes `%`, `_` and the escape character itself for `LIKE … ESCAPE '!'`.
fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn valid_table(name: &str) -> bool {
    larder_changes::is_identifier(name)
}

/// A pool that connects on first use.
fn lazy_pool(url: &str, config: &SqlConfig) -> Result<AnyPool> {
    AnyPoolOptions::new()
        .max_connections(config.max_connections.max(1))
        .acquire_timeout(config.deadline)
        .connect_lazy(url)
        .map_err(db_err)
}

/// Whether a failed connection means "database unreachable" (the
/// network's kinds of I/O error, or no connection within the deadline)
/// rather than a configuration it refused.
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        // Not TLS errors: a refused certificate is a configuration error.
        sqlx::Error::Io(io) => larder_core::io_kind_means_unreachable(io.kind()),
        _ => false,
    }
}

impl SqlBackend {
    /// Connects to `database_url` (any sqlx URL of the three databases).
    pub async fn connect(database_url: &str, config: SqlConfig) -> Result<Self> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let scheme = database_url.split(':').next().unwrap_or_default();
        let dialect = Dialect::from_scheme(scheme).ok_or_else(|| {
            Error::config(format!(
                "{scheme:?} is not a SQL cache URL scheme; use sqlite://, postgres:// or mysql://"
            ))
        })?;
        let built = match dialect {
            Dialect::Postgres => cfg!(feature = "postgres"),
            Dialect::MySql => cfg!(feature = "mysql"),
            Dialect::Sqlite => true, // refused below, with the reason
        };
        if !built {
            return Err(not_built(dialect));
        }
        if dialect == Dialect::Sqlite {
            return Err(Error::config(
                "SqlBackend serves PostgreSQL and MySQL/MariaDB; SQLite is served in process by SqliteBackend (larder_sql::open picks it for sqlite:// URLs)",
            ));
        }
        if !valid_table(&config.table) {
            return Err(Error::config(format!(
                "cache table name {:?} must be letters, digits and '_' (and not start with a digit)",
                config.table
            )));
        }
        let url = database_url.to_owned();
        let pool = lazy_pool(&url, &config)?;
        // One connection now: a database that refuses us (password, unknown
        // database) is an error at once; one that is unreachable is not, so
        // a service restarted during an outage can still build its cache.
        let probe =
            match tokio::time::timeout(config.deadline.max(Duration::from_secs(5)), pool.acquire())
                .await
            {
                Ok(Ok(_conn)) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            };
        let backend = SqlBackend {
            inner: Arc::new(Inner {
                sql: Sql::new(dialect, &config.table),
                pool: std::sync::RwLock::new(pool),
                url,
                table_ready: std::sync::atomic::AtomicBool::new(!config.create_table),
                dialect,
                config,
                writes: AtomicU64::new(0),
            }),
        };
        match probe {
            Ok(()) => backend.ensure_table().await?,
            Err(e) if unreachable(&e) => {
                tracing::warn!(error = %e, "sql cache: database unreachable; the cache starts disconnected and connects when it can");
                backend.connect_in_background();
            }
            Err(e) => return Err(db_err(e)),
        }
        Ok(backend)
    }

    fn pool(&self) -> AnyPool {
        self.inner
            .pool
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Retries connecting (and creating the table) in the background, with
    /// a backoff from 500 ms to 10 s, until it works or the backend is
    /// dropped: the pool then holds a connection when traffic comes.
    fn connect_in_background(&self) {
        let inner = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                tokio::time::sleep(delay).await;
                let Some(inner) = inner.upgrade() else { return };
                let backend = SqlBackend { inner };
                let pool = backend.pool();
                if let Ok(Ok(_conn)) =
                    tokio::time::timeout(backend.inner.config.deadline, pool.acquire()).await
                {
                    if backend.ensure_table().await.is_ok() {
                        tracing::info!("sql cache: connected");
                        return;
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
    }

    /// Creates the table if that is configured and has not happened yet.
    async fn ensure_table(&self) -> Result<()> {
        if self.inner.table_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.create_table().await?;
        self.inner.table_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// From a cache URL: takes `table`, `create_table`, `cull_every`,
    /// `deadline_ms` and `max_connections`, and passes the rest to sqlx.
    pub async fn from_url(url: &mut CacheUrl) -> Result<Self> {
        let mut config = SqlConfig::default();
        if let Some(t) = url.take("table") {
            config.table = t;
        }
        if let Some(b) = url.take_bool("create_table")? {
            config.create_table = b;
        }
        if let Some(n) = url.take_parsed("cull_every")? {
            config.cull_every = n;
        }
        if let Some(ms) = url.take_parsed::<u64>("deadline_ms")? {
            config.deadline = Duration::from_millis(ms.max(1));
        }
        if let Some(n) = url.take_parsed("max_connections")? {
            config.max_connections = n;
        }
        let rest = url.take_rest();
        let mut target = format!("{}://{}{}", url.scheme(), url.authority(), url.path());
        if !rest.is_empty() {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(rest)
                .finish();
            target.push('?');
            target.push_str(&query);
        }
        Self::connect(&target, config).await
    }

    /// Creates the cache table and its index if missing (Django's
    /// `createcachetable`; idempotent).
    pub async fn create_table(&self) -> Result<()> {
        for stmt in create_table_sql(self.inner.dialect, &self.inner.config.table) {
            if let Err(first) = self.run_raw(sqlx::query(&stmt).execute(&self.pool())).await {
                // Two processes creating the table at once can make
                // PostgreSQL's IF NOT EXISTS fail on its catalog; if the
                // statement now succeeds, the other one won.
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.run_raw(sqlx::query(&stmt).execute(&self.pool()))
                    .await
                    .map_err(|_| first)?;
            }
        }
        Ok(())
    }

    /// The database's dialect.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// Deletes every expired row now; returns how many.
    pub async fn cull_expired(&self) -> Result<u64> {
        let r = self
            .run(
                sqlx::query(&self.inner.sql.cull)
                    .bind(now_ms())
                    .execute(&self.pool()),
            )
            .await?;
        Ok(r.rows_affected())
    }

    async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        if !self.inner.table_ready.load(Ordering::Acquire) {
            Box::pin(self.ensure_table()).await?;
        }
        self.run_raw(fut).await
    }

    async fn run_raw<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.inner.config.deadline, fut).await {
            Ok(r) => r.map_err(db_err),
            Err(_) => Err(Error::Timeout {
                backend: NAME,
                after: self.inner.config.deadline,
            }),
        }
    }

    async fn after_write(&self, n: u64) {
        let every = self.inner.config.cull_every;
        if every == 0 {
            return;
        }
        let before = self.inner.writes.fetch_add(n, Ordering::Relaxed);
        if before / every != (before + n) / every {
            if let Err(e) = self.cull_expired().await {
                tracing::warn!(error = %e, "sql cache: culling expired rows failed");
            }
        }
    }

    /// Why an atomic increment matched no row: absent, or not an integer
    /// (or, with delta 0 on MySQL, which counts changed rows, unchanged).
    async fn incr_miss(&self, key: &str, delta: i64) -> Result<i64> {
        let row = self
            .run(
                sqlx::query(&self.inner.sql.read_for_cas)
                    .bind(key)
                    .bind(now_ms())
                    .fetch_optional(&self.pool()),
            )
            .await?;
        let Some(row) = row else {
            return Err(Error::NotFound {
                key: key.to_owned(),
            });
        };
        match parse_integer(&Self::bytes(&row)?) {
            Some(n) if delta == 0 => Ok(n),
            Some(_) => Err(Error::backend(
                NAME,
                format!("increment of {key:?} matched no row though the row holds an integer"),
            )),
            None => Err(Error::NotANumber {
                key: key.to_owned(),
            }),
        }
    }

    fn overflow_or(key: &str, e: Error) -> Error {
        // SQLSTATE 22003: numeric value out of range.
        if let Error::Backend { source, .. } = &e {
            if let Some(sqlx::Error::Database(db)) = source.downcast_ref::<sqlx::Error>() {
                if db.code().as_deref() == Some("22003") {
                    return Error::Overflow {
                        key: key.to_owned(),
                    };
                }
            }
        }
        e
    }

    /// One statement: validated in SQL, computed in bigint (which raises on
    /// overflow), the new value returned.
    async fn incr_postgres(&self, key: &str, delta: i64) -> Result<i64> {
        let sql = format!(
            "UPDATE {} SET value = convert_to((encode(value, 'escape')::bigint + $1)::text, 'UTF8') \
             WHERE cache_key = $2 AND (expires_ms IS NULL OR expires_ms > $3) \
             AND encode(value, 'escape') ~ '^-?[0-9]{{1,19}}$' RETURNING value",
            self.inner.config.table
        );
        let row = self
            .run(
                sqlx::query(&sql)
                    .bind(delta)
                    .bind(key)
                    .bind(now_ms())
                    .fetch_optional(&self.pool()),
            )
            .await
            .map_err(|e| Self::overflow_or(key, e))?;
        match row {
            Some(r) => parse_integer(&Self::bytes(&r)?)
                .ok_or_else(|| Error::backend(NAME, "increment stored a non-integer")),
            None => self.incr_miss(key, delta).await,
        }
    }

    /// MySQL/MariaDB have no `UPDATE … RETURNING`: the statement assigns the
    /// new value to a session variable, read back on the same connection.
    async fn incr_mysql(&self, key: &str, delta: i64) -> Result<i64> {
        let update = format!(
            "UPDATE {} SET value = (@larder_incr := CAST(value AS SIGNED) + ?) \
             WHERE cache_key = ? AND (expires_ms IS NULL OR expires_ms > ?) \
             AND value REGEXP '^-?[0-9]{{1,19}}$'",
            self.inner.config.table
        );
        let work = async {
            let mut conn = self.pool().acquire().await?;
            let r = sqlx::query(&update)
                .bind(delta)
                .bind(key)
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
            if r.rows_affected() == 0 {
                return Ok(None);
            }
            let row = sqlx::query("SELECT CAST(@larder_incr AS SIGNED)")
                .fetch_one(&mut *conn)
                .await?;
            Ok(Some(row.try_get::<i64, _>(0)?))
        };
        match self
            .run(work)
            .await
            .map_err(|e| Self::overflow_or(key, e))?
        {
            Some(n) => Ok(n),
            None => self.incr_miss(key, delta).await,
        }
    }

    fn bytes(row: &AnyRow) -> Result<Bytes> {
        let v: Vec<u8> = row.try_get(0).map_err(db_err)?;
        Ok(Bytes::from(v))
    }
}

#[async_trait]
impl Backend for SqlBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_prefix_clear(true)
            .with_batch(true)
            .with_persistent(true)
            .with_shared(true)
            .with_leases(true)
    }

    /// A lease is a row of its own (`"<key> lease"`) holding the grant's id,
    /// inserted only when absent or expired.
    async fn lease_acquire(
        &self,
        key: &str,
        ttl: Duration,
        seen: Option<Bytes>,
    ) -> Result<LeaseGrant> {
        larder_core::acquire_lease_by_add(self, key, ttl, seen).await
    }

    /// One transaction: take (delete) our live lease row, lock the entry and
    /// check it is what we saw, write. A `delete` removes the lease row
    /// before the entry, in two statements, so it either makes the lease
    /// vanish before we take it or, waiting on our lock, deletes our value
    /// after we commit.
    async fn lease_fill(
        &self,
        key: &str,
        value: Bytes,
        ttl: Expiry,
        lease: &LeaseToken,
    ) -> Result<bool> {
        let sql = &self.inner.sql;
        let lk = lease_key(key);
        let work = async {
            let mut tx = self.pool().begin().await?;
            let now = now_ms();
            let taken = sqlx::query(&sql.lease_take)
                .bind(&lk)
                .bind(lease.id_hex().into_bytes())
                .bind(now)
                .execute(&mut *tx)
                .await?;
            if taken.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            let current = sqlx::query(&sql.read_for_update)
                .bind(key)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let current: Option<Vec<u8>> = match current {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            };
            if !lease.still_seen(current.as_deref()) {
                tx.commit().await?;
                return Ok(false);
            }
            sqlx::query(&sql.upsert)
                .bind(key)
                .bind(value.to_vec())
                .bind(expires(ttl))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        };
        self.run(work).await
    }

    async fn lease_release(&self, key: &str, lease: &LeaseToken) -> Result<()> {
        self.run(
            sqlx::query(&self.inner.sql.lease_take)
                .bind(lease_key(key))
                .bind(lease.id_hex().into_bytes())
                .bind(now_ms())
                .execute(&self.pool()),
        )
        .await?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let row = self
            .run(
                sqlx::query(&self.inner.sql.get)
                    .bind(key)
                    .bind(now_ms())
                    .fetch_optional(&self.pool()),
            )
            .await?;
        row.map(|r| Self::bytes(&r)).transpose()
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.inner.dialect;
        let sql = format!(
            "SELECT cache_key, value FROM {} WHERE cache_key IN ({}) AND (expires_ms IS NULL OR expires_ms > {})",
            self.inner.config.table,
            d.placeholders(1, keys.len()),
            d.placeholder(keys.len() + 1)
        );
        let mut q = sqlx::query(&sql);
        for k in keys {
            q = q.bind(*k);
        }
        let rows = self.run(q.bind(now_ms()).fetch_all(&self.pool())).await?;
        let mut out = vec![None; keys.len()];
        for row in rows {
            // MySQL returns VARBINARY keys as bytes.
            let key: String = match row.try_get::<String, _>(0) {
                Ok(k) => k,
                Err(_) => String::from_utf8_lossy(&row.try_get::<Vec<u8>, _>(0).map_err(db_err)?)
                    .into_owned(),
            };
            let value: Vec<u8> = row.try_get(1).map_err(db_err)?;
            for (i, k) in keys.iter().enumerate() {
                if *k == key {
                    out[i] = Some(Bytes::from(value.clone()));
                }
            }
        }
        Ok(out)
    }

    async fn has_key(&self, key: &str) -> Result<bool> {
        let row = self
            .run(
                sqlx::query(&self.inner.sql.has)
                    .bind(key)
                    .bind(now_ms())
                    .fetch_optional(&self.pool()),
            )
            .await?;
        Ok(row.is_some())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()> {
        self.run(
            sqlx::query(&self.inner.sql.upsert)
                .bind(key)
                .bind(value.to_vec())
                .bind(expires(ttl))
                .execute(&self.pool()),
        )
        .await?;
        self.after_write(1).await;
        Ok(())
    }

    async fn set_many(&self, entries: &[(&str, Bytes)], ttl: Expiry) -> Result<Vec<String>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let e = expires(ttl);
        let d = self.inner.dialect;
        let t = &self.inner.config.table;
        let rows: Vec<String> = (0..entries.len())
            .map(|i| format!("({})", d.placeholders(i * 3 + 1, 3)))
            .collect();
        let sql = match d {
            Dialect::MySql => format!(
                "INSERT INTO {t} (cache_key, value, expires_ms) VALUES {} \
                 ON DUPLICATE KEY UPDATE value = VALUES(value), expires_ms = VALUES(expires_ms)",
                rows.join(", ")
            ),
            _ => format!(
                "INSERT INTO {t} (cache_key, value, expires_ms) VALUES {} \
                 ON CONFLICT (cache_key) DO UPDATE SET value = excluded.value, expires_ms = excluded.expires_ms",
                rows.join(", ")
            ),
        };
        // One statement: the batch lands whole or not at all. Duplicate keys
        // in one batch would make PostgreSQL refuse it, so keep the last.
        let mut seen = std::collections::HashSet::new();
        let mut unique: Vec<&(&str, Bytes)> = entries
            .iter()
            .rev()
            .filter(|(k, _)| seen.insert(*k))
            .collect();
        unique.reverse();
        if unique.len() != entries.len() {
            for (k, v) in unique {
                self.set(k, v.clone(), ttl).await?;
            }
            return Ok(Vec::new());
        }
        let mut q = sqlx::query(&sql);
        for (k, v) in entries {
            q = q.bind(*k).bind(v.to_vec()).bind(e);
        }
        self.run(q.execute(&self.pool())).await?;
        self.after_write(entries.len() as u64).await;
        Ok(Vec::new())
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
        let pool = &self.pool();
        self.run(
            sqlx::query(&self.inner.sql.delete_expired_one)
                .bind(key)
                .bind(now_ms())
                .execute(pool),
        )
        .await?;
        let r = self
            .run(
                sqlx::query(&self.inner.sql.insert_absent)
                    .bind(key)
                    .bind(value.to_vec())
                    .bind(expires(ttl))
                    .execute(pool),
            )
            .await?;
        let stored = r.rows_affected() > 0;
        if stored {
            self.after_write(1).await;
        }
        Ok(stored)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        // The lease first, in its own statement: see `lease_fill`.
        self.run(
            sqlx::query(&self.inner.sql.delete_lease)
                .bind(lease_key(key))
                .execute(&self.pool()),
        )
        .await?;
        let rows = self
            .run(
                sqlx::query(&self.inner.sql.delete_returning)
                    .bind(key)
                    .fetch_all(&self.pool()),
            )
            .await?;
        let now = now_ms();
        Ok(rows.iter().any(|r| {
            r.try_get::<Option<i64>, _>(0)
                .ok()
                .flatten()
                .is_none_or(|e| e > now)
        }))
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let d = self.inner.dialect;
        let in_list = format!(
            "DELETE FROM {} WHERE cache_key IN ({})",
            self.inner.config.table,
            d.placeholders(1, keys.len())
        );
        let mut leases = sqlx::query(&in_list);
        for k in keys {
            leases = leases.bind(lease_key(k));
        }
        self.run(leases.execute(&self.pool())).await?;
        let sql = format!("{in_list} RETURNING expires_ms");
        let mut q = sqlx::query(&sql);
        for k in keys {
            q = q.bind(*k);
        }
        let rows = self.run(q.fetch_all(&self.pool())).await?;
        let now = now_ms();
        Ok(rows
            .iter()
            .filter(|r| {
                r.try_get::<Option<i64>, _>(0)
                    .ok()
                    .flatten()
                    .is_none_or(|e| e > now)
            })
            .count() as u64)
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        // SQLite never reaches this type (see `connect`).
        if self.inner.dialect == Dialect::Postgres {
            self.incr_postgres(key, delta).await
        } else {
            self.incr_mysql(key, delta).await
        }
    }

    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool> {
        let r = self
            .run(
                sqlx::query(&self.inner.sql.touch)
                    .bind(expires(ttl))
                    .bind(key)
                    .bind(now_ms())
                    .execute(&self.pool()),
            )
            .await?;
        if r.rows_affected() > 0 {
            return Ok(true);
        }
        // MySQL counts changed rows, not matched ones: a touch that sets the
        // same expiry reports 0. Ask whether the row is there.
        if self.inner.dialect == Dialect::MySql {
            return self.has_key(key).await;
        }
        Ok(false)
    }

    async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
        let long = self.inner.config.deadline * 30;
        let fut = async {
            match scope {
                ClearScope::All => {
                    sqlx::query(&self.inner.sql.clear_all)
                        .execute(&self.pool())
                        .await
                }
                ClearScope::Prefix(p) => {
                    sqlx::query(&self.inner.sql.clear_prefix)
                        .bind(like_prefix(p))
                        .execute(&self.pool())
                        .await
                }
            }
        };
        match tokio::time::timeout(long, fut).await {
            Ok(r) => r.map(|_| ()).map_err(db_err),
            Err(_) => Err(Error::Timeout {
                backend: NAME,
                after: long,
            }),
        }
    }

    /// Closes the pool's connections; the next call opens new ones (as on
    /// every backend, a closed cache stays usable).
    async fn close(&self) -> Result<()> {
        let fresh = lazy_pool(&self.inner.url, &self.inner.config)?;
        let old = std::mem::replace(
            &mut *self.inner.pool.write().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        old.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_escapes_wildcards() {
        assert_eq!(like_prefix("a_b%c!"), "a!_b!%c!!%");
    }

    #[test]
    fn table_names_are_checked() {
        assert!(valid_table("larder_cache"));
        assert!(!valid_table("x; DROP TABLE users"));
        assert!(!valid_table("1abc"));
        assert!(!valid_table(""));
    }

    #[test]
    fn ddl_is_idempotent_sql() {
        for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql] {
            for stmt in create_table_sql(d, "t") {
                assert!(stmt.contains("IF NOT EXISTS"), "{stmt}");
            }
        }
    }
}
