//! The `larder` binary, run as a user would.

use std::process::Command;

fn larder(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .env_remove("LARDER_CACHE_URL")
        .output()
        .expect("run larder")
}

#[test]
fn createcachetable_dry_run_prints_ddl() {
    let out = larder(&[
        "createcachetable",
        "--url",
        "postgres://x@127.0.0.1/db",
        "--dry-run",
    ]);
    assert!(out.status.success());
    let sql = String::from_utf8(out.stdout).unwrap();
    assert!(
        sql.contains("CREATE TABLE IF NOT EXISTS larder_cache"),
        "{sql}"
    );
    assert!(sql.contains("BYTEA"), "{sql}");
}

#[test]
fn createcachetable_is_idempotent_on_real_databases() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/c.db", dir.path().display());
    for url in [
        sqlite.as_str(),
        "postgres://postgres@127.0.0.1:5432/test",
        "mysql://root@127.0.0.1:3306/test",
    ] {
        for _ in 0..2 {
            let out = larder(&[
                "createcachetable",
                "--url",
                url,
                "--table",
                "larder_cli_test",
            ]);
            assert!(
                out.status.success(),
                "{url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_code_2() {
    let out = larder(&[
        "createcachetable",
        "--url",
        "redis://127.0.0.1",
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a SQL database URL"));
    let out = larder(&[
        "createcachetable",
        "--url",
        "sqlite:///tmp/x.db",
        "--table",
        "bad;name",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("table name"));
    let out = larder(&["bench", "--out", "/tmp/x.json", "--backends", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown backend"));
}

#[test]
fn bench_writes_django_compatible_json() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("b.json");
    let out = larder(&[
        "bench",
        "--backends",
        "mem,dummy",
        "--n",
        "2000",
        "--repeat",
        "1",
        "--max-seconds",
        "0.5",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_path).unwrap()).unwrap();
    for op in [
        "set",
        "get_hit",
        "get_miss",
        "get_many10",
        "incr",
        "get_or_set",
    ] {
        let r = &doc["results"]["mem"][op];
        assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{op}");
        assert!(r["us_per_op"].as_f64().is_some(), "{op}");
        assert_eq!(r["runs"].as_array().unwrap().len(), 1);
    }
    assert_eq!(doc["ops"].as_array().unwrap().len(), 6);
    assert!(doc["config"]["value_bytes"] == 100);
}

/// The herd scenarios report one origin call per expiry, in one process
/// and across processes sharing Redis, in stampede.py's JSON shape.
#[test]
fn herd_scenarios_report_one_origin_call_per_expiry() {
    let dir = tempfile::tempdir().unwrap();
    for (scenario, backends, extra) in [
        ("herd", "mem", vec![]),
        (
            "multi-process-herd",
            "redis",
            vec![
                "--processes",
                "2",
                "--url",
                "redis=redis://127.0.0.1:6379/0",
            ],
        ),
    ] {
        let out_path = dir.path().join(format!("{scenario}.json"));
        let mut args = vec![
            "bench",
            "--scenario",
            scenario,
            "--backends",
            backends,
            "--clients",
            "10",
            "--rounds",
            "2",
            "--origin-ms",
            "100",
            "--out",
            out_path.to_str().unwrap(),
        ];
        args.extend(extra);
        let out = larder(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out_path).unwrap()).unwrap();
        let r = &doc["results"][0];
        assert_eq!(r["backend"], backends, "{doc}");
        assert_eq!(r["origin_calls_per_expiry_max"], 1, "{scenario}: {r}");
        assert_eq!(r["errors"].as_array().map(Vec::len), Some(0));
        assert!(r["latency_ms"]["p99"].as_f64().unwrap() >= 100.0);
    }
}

#[tokio::test]
async fn query_install_creates_triggers_that_count_outside_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE post (id INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let dry = larder(&[
        "query",
        "install",
        "--database",
        &url,
        "--tables",
        "post",
        "--dry-run",
    ]);
    assert!(dry.status.success());
    assert!(String::from_utf8_lossy(&dry.stdout).contains("CREATE TRIGGER"));
    for _ in 0..2 {
        // Idempotent.
        let out = larder(&["query", "install", "--database", &url, "--tables", "post"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    sqlx::raw_sql("INSERT INTO post (id) VALUES (1); INSERT INTO post (id) VALUES (2); DELETE FROM post WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM larder_changes WHERE table_name = 'post'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 3, "one logged change per changed row");
    let bad = larder(&[
        "query",
        "install",
        "--database",
        &url,
        "--tables",
        "post;drop",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let bad = larder(&[
        "query",
        "install",
        "--database",
        "ftp://x",
        "--tables",
        "post",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}

fn larder_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(args)
        .current_dir(dir)
        .env_remove("LARDER_CACHE_URL")
        .env_remove("LARDER_CONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run larder")
}

#[test]
fn larder_toml_drives_stats_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    std::fs::write(
        dir.path().join("larder.toml"),
        format!(
            "[caches.default]\nurl = \"file://{}\"\ntimeout = 60\nkey_prefix = \"app\"\nversion = 3\n\
             [caches.default.options]\nmax_entries = 100\n",
            cache_dir.display()
        ),
    )
    .unwrap();
    // The probe: a set and a get through the configured cache.
    let out = larder_in(dir.path(), &["stats", "--cache", "default"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cache default: file backend, prefix \"app\""),
        "{text}"
    );

    // clear removes what the app stored under the configured prefix and
    // version, and only with --yes when there is no terminal to ask on.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("file://{}?key_prefix=app&version=3", cache_dir.display());
    rt.block_on(async {
        use larder::prelude::*;
        let c = Cache::from_url(&url).await.unwrap();
        c.set("k", &1u32, Ttl::secs(60)).await.unwrap();
    });
    let out = larder_in(dir.path(), &["clear"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    let out = larder_in(dir.path(), &["clear", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rt.block_on(async {
        use larder::prelude::*;
        let c = Cache::from_url(&url).await.unwrap();
        assert!(!c.has_key("k").await.unwrap(), "clear left the key");
    });

    // Errors that say what to do.
    let out = larder_in(dir.path(), &["stats", "--cache", "sessions"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[caches.sessions]"));
    let out = larder_in(dir.path(), &["stats"]);
    assert_eq!(out.status.code(), Some(2));
    let out = larder_in(dir.path(), &["stats", "--server", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is `larder demo` or `larder proxy` running")
    );
    std::fs::write(dir.path().join("bad.toml"), "[caches.default]\nurll = 1\n").unwrap();
    let out = larder_in(
        dir.path(),
        &["--config", "bad.toml", "stats", "--cache", "default"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
    // LARDER_CACHE_URL overrides the file.
    let out = Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["stats", "--cache", "default"])
        .current_dir(dir.path())
        .env("LARDER_CACHE_URL", "mem://")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("mem backend"));
}

#[test]
fn every_command_has_help_with_examples() {
    for cmd in [
        "demo",
        "proxy",
        "bench",
        "stats",
        "clear",
        "createcachetable",
        "views",
        "query",
        "views install",
        "views work",
        "views status",
        "views rebuild",
        "views verify",
        "views repair",
        "query install",
    ] {
        let mut args: Vec<&str> = cmd.split(' ').collect();
        args.push("--help");
        let out = larder(&args);
        assert!(out.status.success(), "{cmd}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:"),
            "{cmd} --help has no examples:\n{text}"
        );
    }
}
