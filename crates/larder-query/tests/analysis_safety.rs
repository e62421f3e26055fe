//! The analyser never calls a write a read, checked against the real
//! databases: every statement of a generated corpus runs on SQLite,
//! PostgreSQL and MariaDB with write-counting triggers on every table, and
//! a statement that changed anything (a row, or the set of tables) must
//! not have been analysed as `Read`. Plus the query-cache behaviours that
//! depend on it: a job-queue pop through a data-modifying CTE, functions
//! that read tables, MySQL `REPLACE` and SQLite `INSERT OR REPLACE`.

use larder_core::{Cache, Ttl};
use larder_query::{analyze, Analysis, Param, QueryCache, Schema, SqlDialect};
use sqlx::{Any, AnyPool, Row};

fn mem_cache(prefix: &str) -> Cache {
    Cache::builder(larder_mem::MemBackend::default())
        .key_prefix(prefix)
        .build()
        .unwrap()
}

/// Statement templates; `{a}`, `{b}` are the two tables, `{f}` a function
/// of the database that writes, `{n}` a fresh name.
const CORPUS: &[&str] = &[
    "SELECT * FROM {a}",
    "SELECT count(*) FROM {a} WHERE v > 1",
    "SELECT max(v), min(v), sum(v), avg(v) FROM {a}",
    "SELECT lower(t), upper(t), length(t), coalesce(t, 'x') FROM {a}",
    "SELECT a.id FROM {a} a JOIN {b} b ON b.id = a.id",
    "SELECT * FROM {a} WHERE id IN (SELECT id FROM {b})",
    "WITH x AS (SELECT id FROM {a}) SELECT count(*) FROM x",
    "SELECT (SELECT count(*) FROM {b}) AS n FROM {a}",
    "SELECT {f}()",
    "SELECT {f}() FROM {a}",
    "SELECT id FROM {a} WHERE v < {f}()",
    "INSERT INTO {a} (id, v, t) VALUES ({id}, 1, 'i')",
    "INSERT INTO {a} (id, v, t) SELECT id + {id}, v, t FROM {b}",
    "UPDATE {a} SET v = v + 1 WHERE id = 1",
    "UPDATE {a} SET v = v + 1",
    "DELETE FROM {a} WHERE id = {id}",
    "DELETE FROM {a} WHERE v > 100000",
    "UPDATE {a} SET v = v WHERE id < 0",
    // Per dialect: only where it parses and runs.
    "pg: WITH d AS (DELETE FROM {a} WHERE id = 2 RETURNING id) SELECT count(*) FROM d",
    "pg: WITH u AS (UPDATE {a} SET v = v + 1 RETURNING id) SELECT id FROM u",
    "pg: WITH i AS (INSERT INTO {b} (id, v, t) VALUES ({id}, 2, 'c') RETURNING id) SELECT * FROM i",
    "pg: WITH d AS (DELETE FROM {b} WHERE id = {id} RETURNING *) INSERT INTO {a} SELECT * FROM d",
    "pg: SELECT * INTO {n} FROM {a}",
    "pg: SELECT setval('{a}_seq', 5)",
    "pg: SELECT nextval('{a}_seq')",
    "pg: SELECT * FROM {a} TABLESAMPLE BERNOULLI (50)",
    "pg: INSERT INTO {a} (id, v, t) VALUES (1, 9, 'u') ON CONFLICT (id) DO UPDATE SET v = 9",
    "pg: CALL {f}_proc()",
    "my: REPLACE INTO {a} (id, v, t) VALUES (1, 7, 'r')",
    "my: INSERT INTO {a} (id, v, t) VALUES (1, 8, 'd') ON DUPLICATE KEY UPDATE v = 8",
    "my: CALL {f}_proc()",
    "lite: INSERT OR REPLACE INTO {a} (id, v, t) VALUES (1, 6, 'o')",
    "lite: REPLACE INTO {a} (id, v, t) VALUES (1, 5, 'q')",
    "lite: INSERT INTO {a} (id, v, t) VALUES (1, 4, 'x') ON CONFLICT (id) DO UPDATE SET v = 4",
];

struct Db {
    pool: AnyPool,
    dialect: SqlDialect,
    tag: &'static str,
    a: String,
    b: String,
    f: String,
    counter: String,
}

impl Db {
    async fn exec(&self, sql: &str) {
        sqlx::query::<Any>(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{}: {sql}: {e}", self.tag));
    }

    async fn writes_seen(&self) -> i64 {
        let row = sqlx::query::<Any>(&format!("SELECT n FROM {} WHERE id = 1", self.counter))
            .fetch_one(&self.pool)
            .await
            .unwrap();
        row.get::<i64, _>(0)
    }

    /// Tables of this test (its own names only: other tests create and
    /// drop tables in the same database meanwhile).
    async fn tables(&self) -> i64 {
        let sql = match self.dialect {
            SqlDialect::Postgres => format!(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE '{}%'",
                self.a
            ),
            SqlDialect::MySql => format!(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE '{}%'",
                self.a
            ),
            _ => format!(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name LIKE '{}%'",
                self.a
            ),
        };
        let row = sqlx::query::<Any>(&sql)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        row.get::<i64, _>(0)
    }

    /// Two tables with a counter of row changes, and a function that writes.
    async fn setup(&self) {
        let (a, b, f, c) = (&self.a, &self.b, &self.f, &self.counter);
        for t in [a, b] {
            self.exec(&format!(
                "CREATE TABLE {t} (id BIGINT PRIMARY KEY, v BIGINT NOT NULL, t VARCHAR(20))"
            ))
            .await;
        }
        self.exec(&format!(
            "CREATE TABLE {c} (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)"
        ))
        .await;
        self.exec(&format!("INSERT INTO {c} (id, n) VALUES (1, 0)"))
            .await;
        for (t, v) in [(a, 10), (b, 20)] {
            for id in 1..=3 {
                self.exec(&format!(
                    "INSERT INTO {t} (id, v, t) VALUES ({id}, {v}, 's')"
                ))
                .await;
            }
        }
        match self.dialect {
            SqlDialect::Postgres => {
                self.exec(&format!(
                    "CREATE FUNCTION {c}_bump() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN UPDATE {c} SET n = n + 1 WHERE id = 1; RETURN NULL; END $$"
                ))
                .await;
                for t in [a, b] {
                    self.exec(&format!(
                        "CREATE TRIGGER {t}_count AFTER INSERT OR UPDATE OR DELETE ON {t} \
                         FOR EACH ROW EXECUTE FUNCTION {c}_bump()"
                    ))
                    .await;
                }
                self.exec(&format!("CREATE SEQUENCE {a}_seq")).await;
                self.exec(&format!(
                    "CREATE FUNCTION {f}() RETURNS bigint LANGUAGE plpgsql AS \
                     $$ BEGIN INSERT INTO {b} (id, v, t) VALUES ((SELECT coalesce(max(id), 0) + 1 FROM {b}), 0, 'f'); RETURN 1; END $$"
                ))
                .await;
                self.exec(&format!(
                    "CREATE PROCEDURE {f}_proc() LANGUAGE sql AS $$ UPDATE {a} SET v = v + 1 $$"
                ))
                .await;
            }
            SqlDialect::MySql => {
                for t in [a, b] {
                    for (ev, suffix) in [("INSERT", "i"), ("UPDATE", "u"), ("DELETE", "d")] {
                        self.exec(&format!(
                            "CREATE TRIGGER {t}_{suffix} AFTER {ev} ON {t} FOR EACH ROW \
                             UPDATE {c} SET n = n + 1 WHERE id = 1"
                        ))
                        .await;
                    }
                }
                self.exec(&format!(
                    "CREATE FUNCTION {f}() RETURNS BIGINT MODIFIES SQL DATA BEGIN \
                     INSERT INTO {b} (id, v, t) SELECT coalesce(max(id), 0) + 1, 0, 'f' FROM {b} x; RETURN 1; END"
                ))
                .await;
                self.exec(&format!(
                    "CREATE PROCEDURE {f}_proc() UPDATE {a} SET v = v + 1"
                ))
                .await;
            }
            _ => {
                for t in [a, b] {
                    for ev in ["INSERT", "UPDATE", "DELETE"] {
                        self.exec(&format!(
                            "CREATE TRIGGER {t}_{} AFTER {ev} ON {t} BEGIN \
                             UPDATE {c} SET n = n + 1 WHERE id = 1; END",
                            ev.to_lowercase()
                        ))
                        .await;
                    }
                }
            }
        }
    }

    async fn teardown(&self) {
        let (a, b, f, c) = (&self.a, &self.b, &self.f, &self.counter);
        let mut drops = vec![
            format!("DROP TABLE IF EXISTS {a}"),
            format!("DROP TABLE IF EXISTS {b}"),
            format!("DROP TABLE IF EXISTS {c}"),
        ];
        match self.dialect {
            SqlDialect::Postgres => drops.extend([
                format!("DROP FUNCTION IF EXISTS {f}()"),
                format!("DROP PROCEDURE IF EXISTS {f}_proc()"),
                format!("DROP FUNCTION IF EXISTS {c}_bump() CASCADE"),
                format!("DROP SEQUENCE IF EXISTS {a}_seq"),
            ]),
            SqlDialect::MySql => drops.extend([
                format!("DROP FUNCTION IF EXISTS {f}"),
                format!("DROP PROCEDURE IF EXISTS {f}_proc"),
            ]),
            _ => {}
        }
        for d in drops {
            let _ = sqlx::query::<Any>(&d).execute(&self.pool).await;
        }
    }
}

async fn differential(db: Db, prefix: &str) {
    db.teardown().await;
    db.setup().await;
    let mut rng = fastrand::Rng::with_seed(
        std::env::var("ANALYSIS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(14),
    );
    let mut ran = 0;
    let mut wrote = 0;
    let mut names = Vec::new();
    for round in 0..200 {
        let template = CORPUS[rng.usize(..CORPUS.len())];
        let template = match template.split_once(": ") {
            Some((p, rest)) if p == prefix => rest,
            Some((p, _)) if ["pg", "my", "lite"].contains(&p) => continue,
            _ => template,
        };
        let n = format!("{}_n{round}", db.a);
        let sql = template
            .replace("{a}", &db.a)
            .replace("{b}", &db.b)
            .replace("{f}", &db.f)
            .replace("{n}", &n)
            .replace("{id}", &(1000 + round).to_string());
        if sql.contains(&n) {
            names.push(n.clone());
        }
        let analysis = analyze(&sql, db.dialect, &Schema::default());
        let (before, tables_before) = (db.writes_seen().await, db.tables().await);
        let result = sqlx::query::<Any>(&sql).fetch_all(&db.pool).await;
        let changed = db.writes_seen().await != before || db.tables().await != tables_before;
        if result.is_ok() {
            ran += 1;
        }
        if changed {
            wrote += 1;
            assert!(
                !matches!(analysis, Analysis::Read(_)),
                "{}: analysed as a read, but it wrote: {sql}",
                db.tag
            );
        }
    }
    for n in names {
        let _ = sqlx::query::<Any>(&format!("DROP TABLE IF EXISTS {n}"))
            .execute(&db.pool)
            .await;
    }
    db.teardown().await;
    assert!(ran >= 100, "{}: only {ran} statements ran", db.tag);
    assert!(wrote >= 30, "{}: only {wrote} statements wrote", db.tag);
}

fn names(tag: &str) -> (String, String, String, String) {
    let id = format!("{}_{}", tag, std::process::id());
    (
        format!("an_a_{id}"),
        format!("an_b_{id}"),
        format!("an_f_{id}"),
        format!("an_c_{id}"),
    )
}

async fn any_pool(url: &str) -> AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[tokio::test]
async fn differential_postgres() {
    let (a, b, f, counter) = names("pg");
    let db = Db {
        pool: any_pool("postgres://postgres@127.0.0.1:5432/test").await,
        dialect: SqlDialect::Postgres,
        tag: "PostgreSQL",
        a,
        b,
        f,
        counter,
    };
    differential(db, "pg").await;
}

#[tokio::test]
async fn differential_mariadb() {
    let (a, b, f, counter) = names("my");
    let db = Db {
        pool: any_pool("mysql://root@127.0.0.1:3306/test").await,
        dialect: SqlDialect::MySql,
        tag: "MariaDB",
        a,
        b,
        f,
        counter,
    };
    differential(db, "my").await;
}

#[tokio::test]
async fn differential_sqlite() {
    let (a, b, f, counter) = names("lite");
    let db = Db {
        pool: any_pool("sqlite::memory:").await,
        dialect: SqlDialect::Sqlite,
        tag: "SQLite",
        a,
        b,
        f,
        counter,
    };
    differential(db, "lite").await;
}

/// One integer column, named `$col`, for rows of every database.
macro_rules! int_row {
    ($name:ident, $col:ident) => {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct $name {
            $col: i64,
        }

        impl<'r, R> sqlx::FromRow<'r, R> for $name
        where
            R: Row,
            &'r str: sqlx::ColumnIndex<R>,
            i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        {
            fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
                Ok($name {
                    $col: row.try_get(stringify!($col))?,
                })
            }
        }
    };
}

int_row!(Job, id);
int_row!(Count, n);

/// A job-queue pop through a data-modifying CTE is a write: each call gets
/// the next job (never a cached one), and it invalidates a cached count.
#[tokio::test]
async fn a_queue_pop_through_a_cte_is_never_cached() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    let jobs = format!("an_jobs_{}", std::process::id());
    sqlx::query(&format!("DROP TABLE IF EXISTS {jobs}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE TABLE {jobs} (id BIGINT PRIMARY KEY)"))
        .execute(&pool)
        .await
        .unwrap();
    let qc = QueryCache::new(
        pool.clone(),
        mem_cache("pop"),
        SqlDialect::Postgres,
        Ttl::secs(60),
    );
    qc.execute(
        &format!("INSERT INTO {jobs} (id) VALUES (1), (2), (3)"),
        &[],
    )
    .await
    .unwrap();
    let count = format!("SELECT count(*) AS n FROM {jobs}");
    assert_eq!(qc.fetch_one::<Count>(&count, &[]).await.unwrap().n, 3);
    let pop = format!(
        "WITH j AS (DELETE FROM {jobs} WHERE id = (SELECT min(id) FROM {jobs}) RETURNING id) SELECT id FROM j"
    );
    let mut popped = Vec::new();
    for _ in 0..3 {
        popped.push(qc.fetch_one::<Job>(&pop, &[]).await.unwrap().id);
    }
    assert_eq!(popped, [1, 2, 3], "the same job popped twice");
    assert_eq!(
        qc.fetch_one::<Count>(&count, &[]).await.unwrap().n,
        0,
        "the cached count survived the pops"
    );
    qc.execute(&format!("INSERT INTO {jobs} (id) VALUES (4)"), &[])
        .await
        .unwrap();
    let n = qc.execute(&pop, &[]).await.unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        qc.fetch_one::<Count>(&count, &[]).await.unwrap().n,
        0,
        "execute of the pop invalidated nothing"
    );
    sqlx::query(&format!("DROP TABLE {jobs}"))
        .execute(&pool)
        .await
        .unwrap();
}

/// A function that reads a table is not cached unless declared; declared
/// with the tables it reads, it is cached and invalidated by their writes.
#[tokio::test]
async fn functions_that_read_tables() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    let orders = format!("an_orders_{}", std::process::id());
    let func = format!("{orders}_count");
    for sql in [
        format!("DROP TABLE IF EXISTS {orders}"),
        format!("CREATE TABLE {orders} (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL)"),
        format!(
            "CREATE OR REPLACE FUNCTION {func}(u BIGINT) RETURNS BIGINT LANGUAGE sql STABLE AS \
             $$ SELECT count(*) FROM {orders} WHERE user_id = u $$"
        ),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let sql = format!("SELECT {func}($1) AS n");
    for schema in [
        Schema::default(),
        Schema::default().function_reading(&func, [&orders]),
    ] {
        let declared = !schema.functions.is_empty();
        let qc = QueryCache::new(
            pool.clone(),
            mem_cache("fn"),
            SqlDialect::Postgres,
            Ttl::secs(60),
        )
        .with_schema(schema);
        sqlx::query(&format!("DELETE FROM {orders}"))
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            qc.fetch_one::<Count>(&sql, &[Param::Int(7)])
                .await
                .unwrap()
                .n,
            0
        );
        qc.execute(
            &format!("INSERT INTO {orders} (id, user_id) VALUES (1, 7)"),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(
            qc.fetch_one::<Count>(&sql, &[Param::Int(7)]).await.unwrap().n,
            1,
            "declared: {declared}: a cached result outlived a write to the table the function reads"
        );
    }
    for sql in [
        format!("DROP FUNCTION {func}(BIGINT)"),
        format!("DROP TABLE {orders}"),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
}

/// MySQL `REPLACE` and SQLite `INSERT OR REPLACE` are writes.
#[tokio::test]
async fn replace_statements_invalidate() {
    let t = format!("an_rep_{}", std::process::id());
    // MariaDB
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 3306");
    sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {t} (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let qc = QueryCache::new(
        pool.clone(),
        mem_cache("rep"),
        SqlDialect::MySql,
        Ttl::secs(60),
    );
    let read = format!("SELECT n FROM {t} WHERE id = 1");
    qc.execute(&format!("INSERT INTO {t} (id, n) VALUES (1, 1)"), &[])
        .await
        .unwrap();
    assert_eq!(qc.fetch_one::<Count>(&read, &[]).await.unwrap().n, 1);
    qc.execute(&format!("REPLACE INTO {t} (id, n) VALUES (1, 2)"), &[])
        .await
        .unwrap();
    assert_eq!(qc.fetch_one::<Count>(&read, &[]).await.unwrap().n, 2);
    sqlx::query(&format!("DROP TABLE {t}"))
        .execute(&pool)
        .await
        .unwrap();
    // SQLite
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::query(&format!(
        "CREATE TABLE {t} (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let qc = QueryCache::new(
        pool.clone(),
        mem_cache("rep2"),
        SqlDialect::Sqlite,
        Ttl::secs(60),
    );
    qc.execute(&format!("INSERT INTO {t} (id, n) VALUES (1, 1)"), &[])
        .await
        .unwrap();
    assert_eq!(qc.fetch_one::<Count>(&read, &[]).await.unwrap().n, 1);
    qc.execute(
        &format!("INSERT OR REPLACE INTO {t} (id, n) VALUES (1, 3)"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(qc.fetch_one::<Count>(&read, &[]).await.unwrap().n, 3);
}

/// An unreadable generation (garbage, another type) means "changed": the
/// query runs again once, the generation is rewritten, and the query
/// caches again (no never-read entry per query from then on).
macro_rules! generation_heals {
    ($pool:expr, $dialect:expr, $t:expr) => {{
        let (pool, dialect, t) = ($pool, $dialect, $t);
        let cache = mem_cache("heal");
        let qc = QueryCache::new(pool.clone(), cache.clone(), dialect, Ttl::secs(60));
        let read = format!("SELECT n FROM {t} WHERE id = 1");
        let outside = |n: i64| format!("UPDATE {t} SET n = {n} WHERE id = 1");
        assert_eq!(qc.fetch_one::<Count>(&read, &[]).await.unwrap().n, 1);
        for garbage in [&b"\xa7\x01\x00garbage"[..], b"not a number", b"-"] {
            let skey = cache.make_key(&format!("qgen.{t}")).unwrap();
            cache
                .backend()
                .set(
                    &skey,
                    larder_core::Bytes::copy_from_slice(garbage),
                    larder_core::Expiry::Never,
                )
                .await
                .unwrap();
            sqlx::query(&outside(2)).execute(&pool).await.unwrap();
            assert_eq!(
                qc.fetch_one::<Count>(&read, &[]).await.unwrap().n,
                2,
                "an unreadable generation must mean changed"
            );
            sqlx::query(&outside(1)).execute(&pool).await.unwrap();
            assert_eq!(
                qc.fetch_one::<Count>(&read, &[]).await.unwrap().n,
                2,
                "after the repair the result is cached again"
            );
            sqlx::query(&outside(1)).execute(&pool).await.unwrap();
            qc.execute(&outside(1), &[]).await.unwrap();
            assert_eq!(qc.fetch_one::<Count>(&read, &[]).await.unwrap().n, 1);
        }
    }};
}

#[tokio::test]
async fn unreadable_generations_heal_on_every_database() {
    let t = format!("an_heal_{}", std::process::id());
    let pg = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .expect("PostgreSQL on 5432");
    let my = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect("mysql://root@127.0.0.1:3306/test")
        .await
        .expect("MariaDB on 3306");
    let lite = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let setup = [
        format!("DROP TABLE IF EXISTS {t}"),
        format!("CREATE TABLE {t} (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)"),
        format!("INSERT INTO {t} (id, n) VALUES (1, 1)"),
    ];
    for sql in &setup {
        sqlx::query(sql).execute(&pg).await.unwrap();
        sqlx::query(sql).execute(&my).await.unwrap();
        sqlx::query(sql).execute(&lite).await.unwrap();
    }
    generation_heals!(pg.clone(), SqlDialect::Postgres, &t);
    generation_heals!(my.clone(), SqlDialect::MySql, &t);
    generation_heals!(lite, SqlDialect::Sqlite, &t);
    sqlx::query(&format!("DROP TABLE {t}"))
        .execute(&pg)
        .await
        .unwrap();
    sqlx::query(&format!("DROP TABLE {t}"))
        .execute(&my)
        .await
        .unwrap();
}
