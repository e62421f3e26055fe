//! `larder views` as an operator runs it, and the crash-safety guarantee:
//! worker processes SIGKILLed at random points during a stream of writes,
//! restarted, and afterwards the views equal a full recomputation, on
//! SQLite (embedded redb store), and on PostgreSQL and MariaDB (two worker
//! processes sharing the outbox and an SQL store).

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Row;

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The wal_level=logical server of scripts/services.
const PG_LOGICAL_ADMIN: &str = "postgres://postgres@127.0.0.1:25432/test";
const MY_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

const VIEWS_TOML: &str = r#"
[views.post_page]
query = "SELECT p.id, p.title, u.name AS author, (SELECT COUNT(*) FROM comments c WHERE c.post_id = p.id) AS comments FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = $1"
keys = "SELECT id FROM posts"
depends = [
  { table = "posts", column = "id" },
  { table = "comments", column = "post_id" },
  { table = "users", column = "id", lookup = "SELECT id FROM posts WHERE author_id = $1" },
]

[views.user_card]
query = "SELECT u.id, u.name, (SELECT COUNT(*) FROM posts p WHERE p.author_id = u.id) AS posts FROM users u WHERE u.id = $1"
keys = "SELECT id FROM users"
depends = [
  { table = "users", column = "id" },
  { table = "posts", column = "author_id" },
]
"#;

struct Env {
    database: String,
    /// `--capture`: triggers or logical.
    capture: &'static str,
    store: String,
    views_file: String,
    _dir: tempfile::TempDir,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_larder"));
        c.arg("views")
            .args(args)
            .env("LARDER_DATABASE_URL", &self.database)
            .env("LARDER_VIEWS_STORE", &self.store)
            .env("LARDER_VIEWS_FILE", &self.views_file)
            .env("LARDER_VIEWS_CAPTURE", self.capture);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run larder")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "larder views {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn spawn_worker(&self, workers: &str) -> Child {
        self.cmd(&[
            "work",
            "--workers",
            workers,
            "--lease-ms",
            "1000",
            "--batch",
            "64",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn larder views work")
    }

    fn backlog(&self) -> u64 {
        let s: serde_json::Value = serde_json::from_str(&self.ok(&["status", "--json"])).unwrap();
        s["backlog"].as_u64().unwrap()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Db {
    Sqlite,
    Postgres,
    /// PostgreSQL, captured through logical replication.
    PostgresLogical,
    /// PostgreSQL, triggers without NOTIFY (`--capture polled-triggers`).
    PostgresPolled,
    MySql,
}

/// Drops databases left by test processes that are gone.
async fn drop_leftovers(admin: &sqlx::AnyPool, list: &str, quote: char) {
    let rows = sqlx::query(list).fetch_all(admin).await.unwrap();
    for r in rows {
        let name: String = r
            .try_get::<String, _>(0)
            .or_else(|_| {
                r.try_get::<Vec<u8>, _>(0)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
            })
            .unwrap();
        let pid = name.split('_').nth(1).unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // A logical slot keeps its database from being dropped.
            if quote == '"' {
                let _ = sqlx::raw_sql(&format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE database = '{name}' AND NOT active"
                ))
                .execute(admin)
                .await;
            }
            let _ = sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {quote}{name}{quote}"))
                .execute(admin)
                .await;
        }
    }
}

/// Where the documents go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    /// An embedded redb file (one process at a time).
    Redb,
    /// A table in the source database.
    Sql,
    /// The Redis Cluster of scripts/services, under a prefix of this test's.
    RedisCluster,
}

async fn setup(db: Db, store: Store) -> (Env, sqlx::AnyPool) {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("lvcli_{}_{}", std::process::id(), fastrand::u32(..));
    let database = match db {
        Db::Postgres | Db::PostgresLogical | Db::PostgresPolled => {
            let admin_url = if db != Db::PostgresLogical {
                PG_ADMIN
            } else {
                PG_LOGICAL_ADMIN
            };
            let admin = sqlx::AnyPool::connect(admin_url)
                .await
                .expect("PostgreSQL on 127.0.0.1:5432 / :25432 (see scripts/services)");
            drop_leftovers(
                &admin,
                "SELECT datname::text FROM pg_database WHERE datname LIKE 'lvcli\\_%'",
                '"',
            )
            .await;
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .unwrap();
            let port = if db == Db::PostgresLogical {
                25432
            } else {
                5432
            };
            format!("postgres://postgres@127.0.0.1:{port}/{name}")
        }
        Db::MySql => {
            let admin = sqlx::AnyPool::connect(MY_ADMIN)
                .await
                .expect("MariaDB on 127.0.0.1:3306 (see scripts/services)");
            drop_leftovers(&admin, "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'lvcli\\_%'", '`').await;
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&admin)
                .await
                .unwrap();
            format!("mysql://root@127.0.0.1:3306/{name}")
        }
        Db::Sqlite => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("forum.db").display()
        ),
    };
    let views_file = dir.path().join("views.toml");
    std::fs::write(&views_file, VIEWS_TOML).unwrap();
    let store = match store {
        Store::Sql => "sql".to_owned(),
        Store::Redb => format!("redb:{}", dir.path().join("views.redb").display()),
        Store::RedisCluster => {
            format!("redis+cluster://127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003?prefix={name}")
        }
    };
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(6)
        .connect(&database)
        .await
        .unwrap();
    for ddl in [
        "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE TABLE posts (id BIGINT PRIMARY KEY, author_id BIGINT NOT NULL, title TEXT NOT NULL)",
        "CREATE INDEX posts_author ON posts (author_id)",
        "CREATE TABLE comments (id BIGINT PRIMARY KEY, post_id BIGINT NOT NULL, body TEXT NOT NULL)",
        "CREATE INDEX comments_post ON comments (post_id)",
    ] {
        sqlx::query(ddl).execute(&pool).await.unwrap();
    }
    for u in 1..=5 {
        sqlx::query(&format!(
            "INSERT INTO users (id, name) VALUES ({u}, 'user{u}')"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    for p in 1..=40 {
        sqlx::query(&format!(
            "INSERT INTO posts (id, author_id, title) VALUES ({p}, {}, 'post{p}')",
            p % 5 + 1
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    let env = Env {
        database,
        capture: match db {
            Db::PostgresLogical => "logical",
            Db::PostgresPolled => "polled-triggers",
            _ => "triggers",
        },
        store,
        views_file: views_file.display().to_string(),
        _dir: dir,
    };
    (env, pool)
}

/// One random write, as its own transaction; returns false when the write
/// lost a race (a duplicate id) and changed nothing.
async fn random_write(pool: &sqlx::AnyPool, next_id: &AtomicU64) -> bool {
    let id = next_id.fetch_add(1, Ordering::SeqCst);
    let post = fastrand::u64(1..=45);
    let user = fastrand::u64(1..=5);
    let sql = match fastrand::u8(0..10) {
        0..=3 => format!("INSERT INTO comments (id, post_id, body) VALUES ({id}, {post}, 'c')"),
        4 => format!("DELETE FROM comments WHERE post_id = {post}"),
        5 => format!("UPDATE users SET name = 'user{user}-{id}' WHERE id = {user}"),
        6 => format!("UPDATE posts SET author_id = {user} WHERE id = {post}"),
        7 => format!("UPDATE posts SET title = 'title{id}' WHERE id = {post}"),
        8 => format!(
            "INSERT INTO posts (id, author_id, title) VALUES ({}, {user}, 'new')",
            40 + fastrand::u64(1..=5)
        ),
        _ => format!("DELETE FROM posts WHERE id = {}", 40 + fastrand::u64(1..=5)),
    };
    sqlx::query(&sql).execute(pool).await.is_ok()
}

async fn crash_safety(db: Db) {
    let store = if db == Db::Sqlite {
        Store::Redb
    } else {
        Store::Sql
    };
    crash_safety_on(db, store).await;
}

async fn crash_safety_on(db: Db, store: Store) {
    let shared = db != Db::Sqlite;
    let (env, pool) = setup(db, store).await;
    let out = env.ok(&["install"]);
    assert!(
        out.contains("post_page") && out.contains("user_card"),
        "{out}"
    );
    if env.capture == "polled-triggers" {
        // The trigger functions log to the outbox and notify nobody.
        let bodies: Vec<String> =
            sqlx::query("SELECT prosrc FROM pg_proc WHERE proname LIKE 'larder\\_capture\\_%'")
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect();
        assert!(!bodies.is_empty(), "no capture functions installed");
        for b in &bodies {
            assert!(
                b.contains("larder_outbox") && !b.contains("pg_notify"),
                "{b}"
            );
        }
    }

    // Writers: three concurrent streams while workers are being killed.
    let stop = Arc::new(AtomicBool::new(false));
    let next_id = Arc::new(AtomicU64::new(1000));
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..3 {
        let (pool, stop, next_id, writes) =
            (pool.clone(), stop.clone(), next_id.clone(), writes.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if random_write(&pool, &next_id).await {
                    writes.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..4))).await;
            }
        }));
    }
    // Workers: killed with SIGKILL at random points and restarted. On
    // PostgreSQL two processes with two workers each share the outbox.
    let processes = if shared { 2 } else { 1 };
    let mut children: Vec<Child> = (0..processes).map(|_| env.spawn_worker("2")).collect();
    let mut kills = 0;
    // At least 5 s, and on until enough writes and kills have happened to
    // mean something (a loaded machine writes slower), for at most 60 s.
    let start = Instant::now();
    let enough = |kills: u32| kills >= 5 && writes.load(Ordering::SeqCst) > 200;
    while start.elapsed() < Duration::from_secs(5)
        || (!enough(kills) && start.elapsed() < Duration::from_secs(60))
    {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..600))).await;
        let victim = fastrand::usize(0..children.len());
        children[victim].kill().unwrap(); // SIGKILL
        children[victim].wait().unwrap();
        kills += 1;
        children[victim] = env.spawn_worker("2");
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    assert!(kills >= 5, "only {kills} kills");
    assert!(
        writes.load(Ordering::SeqCst) > 200,
        "too few writes to mean anything: {} in 60 s with {kills} kills",
        writes.load(Ordering::SeqCst)
    );

    // Let the live workers drain (a killed worker's claims come back after
    // the 1 s lease). With logical replication, changes reach the outbox
    // through the feeder: an empty outbox may only mean the feeder is
    // behind, so also wait for verify to pass (a lost change never heals,
    // so this still fails on one).
    macro_rules! drain {
        () => {{
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let backlog = env.backlog();
                let done = backlog == 0
                    && (env.capture != "logical" || env.run(&["verify"]).status.success());
                if done {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "not drained: {backlog} left in the outbox"
                );
                for c in &mut children {
                    let exited = c.try_wait().unwrap();
                    assert!(exited.is_none(), "a worker exited on its own: {exited:?}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }};
    }
    drain!();
    // Then one write of each kind at a time, each drained before the next:
    // nothing after it can heal a document it failed to update (a later
    // change would recompute the document from the source and hide a lost
    // one).
    for sql in [
        "INSERT INTO comments (id, post_id, body) VALUES (999998, 1, 'last')",
        "DELETE FROM comments WHERE post_id = 1",
        "UPDATE users SET name = 'last' WHERE id = 2",
        "UPDATE posts SET author_id = 4 WHERE id = 3",
        "DELETE FROM posts WHERE id = 4",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
        drain!();
    }
    for mut c in children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let status: serde_json::Value = serde_json::from_str(&env.ok(&["status", "--json"])).unwrap();
    assert_eq!(status["dead_letters"], 0, "{status}");

    // Zero drift against a full recomputation.
    let out = env.run(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drift after {kills} kills: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("post_page: ") && text.contains(" 0 drifted"),
        "{text}"
    );
    let posts: i64 = sqlx::query("SELECT COUNT(*) FROM posts")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(status["documents"]["post_page"], posts, "{status}");
    if env.capture == "logical" {
        // The server keeps WAL for a slot until it is dropped.
        let started = Instant::now();
        while sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = current_database()",
        )
        .execute(&pool)
        .await
        .is_err()
            && started.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_sqlite() {
    crash_safety(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_postgres() {
    crash_safety(Db::Postgres).await;
}

/// The same with triggers that send no NOTIFY: the workers find every
/// change by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_postgres_polled_triggers() {
    crash_safety(Db::PostgresPolled).await;
}

/// The same on the Redis Cluster store: two worker processes write
/// documents spread over the cluster's three masters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_postgres_redis_cluster() {
    crash_safety_on(Db::Postgres, Store::RedisCluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_rebuild_verify_repair_status() {
    let (env, pool) = setup(Db::Sqlite, Store::Redb).await;
    // Before install: the data exists, the views do not.
    env.ok(&["install"]);
    let out = env.run(&["verify", "--view", "post_page"]);
    assert_eq!(out.status.code(), Some(3), "drift is exit code 3");
    assert!(String::from_utf8_lossy(&out.stdout).contains("40 drifted"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larder views repair"));

    let out = env.ok(&["rebuild"]);
    assert!(out.contains("rebuilt post_page: 40 keys"), "{out}");
    assert!(out.contains("rebuilt user_card: 5 keys"), "{out}");
    env.ok(&["verify", "--sample", "10"]);

    // A write leaves a pending change: status shows it, with its lag.
    sqlx::query("UPDATE users SET name = 'renamed' WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    let text = env.ok(&["status"]);
    assert!(text.contains("backlog      1"), "{text}");
    assert!(text.contains("pending      users: 1"), "{text}");
    assert!(text.contains("documents    post_page: 40"), "{text}");
    // Views declared in an application, not in a file: the outbox figures
    // still come from --database alone.
    let out = env
        .cmd(&["status", "--json"])
        .env_remove("LARDER_VIEWS_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["backlog"], 1);
    assert_eq!(s["dead_letters"], 0);
    assert!(s["lag_ms"].as_u64().is_some());
    // The stale document is drift until a worker runs; repair fixes it.
    assert_eq!(env.run(&["verify"]).status.code(), Some(3));
    let out = env.ok(&["repair"]);
    assert!(
        out.contains("post_page: 45 checked, 8 drifted, 8 rewritten") || out.contains("rewritten"),
        "{out}"
    );
    env.ok(&["verify"]);

    // Errors an operator can act on.
    let out = env.run(&["rebuild", "--view", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no view named \"nope\""));
    let out = env
        .cmd(&["status"])
        .env("LARDER_VIEWS_FILE", "/nonexistent.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--views FILE"));
    let out = env
        .cmd(&["status"])
        .env("LARDER_VIEWS_STORE", "bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = env.cmd(&["install", "--dry-run"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("CREATE TRIGGER"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larder_toml_declares_database_store_and_views() {
    let (env, _pool) = setup(Db::Sqlite, Store::Redb).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("larder.toml"),
        format!(
            "[database]\nurl = \"{}\"\n[store]\nurl = \"{}\"\n{VIEWS_TOML}",
            env.database, env.store
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_larder"))
            .arg("views")
            .args(args)
            .current_dir(dir.path())
            .env_remove("LARDER_DATABASE_URL")
            .env_remove("LARDER_VIEWS_STORE")
            .env_remove("LARDER_VIEWS_FILE")
            .env_remove("LARDER_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&["install"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["rebuild", "--view", "user_card"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rebuilt user_card: 5 keys"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Flags still win over the file.
    let out = run(&["status", "--database", "sqlite:///nonexistent/dir/x.db"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_mysql() {
    crash_safety(Db::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_lose_nothing_postgres_logical_replication() {
    crash_safety(Db::PostgresLogical).await;
}
