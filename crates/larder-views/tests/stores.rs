//! Every store keeps the same promise: a put lands only over an older
//! version (also under concurrent writers), tombstones are versioned, reads
//! keep the order asked, and documents survive a reopen.

mod common;

use std::sync::Arc;

use common::*;
use larder_views::{DocStore, Put, RedbStore, RedisStore, Source, SqlStore, Versioned};

const REDIS: &str = "redis://127.0.0.1:6379/0";

fn put(key: &str, version: u64, doc: Option<&str>) -> Put {
    Put {
        key: key.to_owned(),
        version,
        doc: doc.map(|d| d.as_bytes().to_vec()),
    }
}

async fn store_contract(s: Arc<dyn DocStore>, view: &str) {
    assert!(s
        .put_if_newer(view, "42", 2, Some(b"v2".to_vec()))
        .await
        .unwrap());
    assert!(
        !s.put_if_newer(view, "42", 1, Some(b"v1".to_vec()))
            .await
            .unwrap(),
        "an older version replaced a newer one"
    );
    assert!(!s
        .put_if_newer(view, "42", 2, Some(b"same".to_vec()))
        .await
        .unwrap());
    assert_eq!(
        s.get(view, "42").await.unwrap(),
        Some(Versioned {
            version: 2,
            doc: Some(b"v2".to_vec())
        })
    );
    // A tombstone is versioned like a document: an older document cannot
    // resurrect the key.
    assert!(s.put_if_newer(view, "42", 3, None).await.unwrap());
    assert!(!s
        .put_if_newer(view, "42", 2, Some(b"old".to_vec()))
        .await
        .unwrap());
    assert_eq!(
        s.get(view, "42").await.unwrap(),
        Some(Versioned {
            version: 3,
            doc: None
        })
    );
    assert!(s
        .put_if_newer(view, "42", 4, Some(b"back".to_vec()))
        .await
        .unwrap());

    // Batches: each put judged on its own; order of reads kept.
    let n = s
        .put_many(
            view,
            vec![
                put("a", 5, Some("A")),
                put("b", 5, Some("B")),
                put("42", 1, Some("no")),
            ],
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    let got = s
        .get_many(view, &["b".into(), "missing".into(), "a".into()])
        .await
        .unwrap();
    assert_eq!(got[0].as_ref().unwrap().doc.as_deref(), Some(&b"B"[..]));
    assert_eq!(got[1], None);
    assert_eq!(got[2].as_ref().unwrap().doc.as_deref(), Some(&b"A"[..]));
    assert!(s.get_many(view, &[]).await.unwrap().is_empty());
    assert!(s.put_many(view, vec![]).await.unwrap() == 0);

    // Views do not see each other's keys (also with look-alike names).
    let other = format!("{view}x");
    assert!(s
        .put_if_newer(&other, "a", 1, Some(b"other".to_vec()))
        .await
        .unwrap());
    assert_eq!(
        s.keys(view).await.unwrap(),
        vec!["42".to_owned(), "a".into(), "b".into()]
    );
    assert_eq!(s.count(view).await.unwrap(), 3);
    assert_eq!(s.count(&other).await.unwrap(), 1);
    s.put_if_newer(view, "b", 9, None).await.unwrap();
    assert_eq!(
        s.count(view).await.unwrap(),
        2,
        "tombstones are not documents"
    );

    // Concurrent writers with shuffled versions: the highest wins.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let s = s.clone();
        let view = view.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let v = 100 + ((i * 8 + w) * 7919) % 200;
                s.put_if_newer(&view, "hot", v, Some(v.to_string().into_bytes()))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let hot = s.get(view, "hot").await.unwrap().unwrap();
    assert_eq!(hot.version, 299);
    assert_eq!(hot.doc, Some(b"299".to_vec()));
}

fn view_name() -> String {
    format!("v{}_{}", std::process::id(), fastrand::u32(..))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_keeps_the_contract_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.redb");
    {
        let s: Arc<dyn DocStore> = Arc::new(RedbStore::open(&path).unwrap());
        store_contract(s, "post").await;
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(
        s.get("post", "a").await.unwrap().unwrap().doc.as_deref(),
        Some(&b"A"[..])
    );
    assert_eq!(s.count("post").await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_the_contract() {
    let s = RedisStore::connect(REDIS, &format!("lvtest{}", std::process::id()))
        .await
        .expect("Redis on 6379 (see scripts/services)");
    store_contract(Arc::new(s), &view_name()).await;
}

const CLUSTER: &str = "redis+cluster://127.0.0.1:27001,127.0.0.1:27002,127.0.0.1:27003";

/// On the 6-node Redis Cluster of scripts/services: the same contract, and
/// one view's documents land on every master (a view no longer lives on
/// one node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_store_keeps_the_contract_and_spreads_over_every_master() {
    let prefix = format!("lvtest{}", std::process::id());
    let s = RedisStore::connect(CLUSTER, &prefix)
        .await
        .expect("Redis Cluster on 27001-27006 (see scripts/services)");
    let view = view_name();
    store_contract(Arc::new(s.clone()), &view).await;
    let puts: Vec<Put> = (0..300)
        .map(|i| put(&format!("doc{i}"), 1, Some("d")))
        .collect();
    assert_eq!(s.put_many(&view, puts).await.unwrap(), 300);
    assert_eq!(
        s.count(&view).await.unwrap(),
        303,
        "the contract leaves 42, a and hot"
    );
    let keys: Vec<String> = (0..300).map(|i| format!("doc{i}")).collect();
    let got = s.get_many(&view, &keys).await.unwrap();
    assert!(got
        .iter()
        .all(|g| g.as_ref().unwrap().doc.as_deref() == Some(&b"d"[..])));

    // Every master holds some of the view's buckets.
    let pattern = format!("{{{prefix}:{view}:*");
    let mut masters = 0;
    for port in 27001..=27006 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut c).await.unwrap();
        let is_master = matches!(&role[0], redis::Value::BulkString(b) if b == b"master");
        if !is_master {
            continue;
        }
        masters += 1;
        let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(100_000)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(!found.is_empty(), "master on {port} holds none of the view");
    }
    assert_eq!(masters, 3, "the cluster of scripts/services has 3 masters");

    // Braces in the prefix would break the buckets' hash tags.
    let e = RedisStore::connect(CLUSTER, "a{b}").await.unwrap_err();
    assert!(e.to_string().contains("hash tags"), "{e}");
}

async fn sql_store(db: Db) {
    let t = fresh_db(db).await;
    let s = SqlStore::on(Source::connect(&t.url, 8).await.unwrap())
        .await
        .unwrap();
    // Creating the table again is harmless.
    let s2 = SqlStore::connect(&t.url).await.unwrap();
    store_contract(Arc::new(s), "post").await;
    assert_eq!(
        s2.count("post").await.unwrap(),
        3,
        "a second handle sees the same table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_store_keeps_the_contract_sqlite() {
    sql_store(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_store_keeps_the_contract_postgres() {
    sql_store(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_store_keeps_the_contract_mysql() {
    sql_store(Db::MySql).await;
}

#[tokio::test]
async fn a_dead_store_is_a_clear_error() {
    let e = RedisStore::connect("redis://127.0.0.1:1/0", "x")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("view store (redis)"), "{e}");
    let e = SqlStore::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("source database"), "{e}");
}

/// A store opened from its spec by the library (not only the CLI): each
/// form opens the store it names, an unknown one is a configuration error
/// that lists the forms, and a redb file held by another handle fails
/// after the wait instead of blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_store_from_a_spec() {
    use std::time::{Duration, Instant};
    let db = fresh_db(Db::Sqlite).await;
    let source = Source::connect(&db.url, 2).await.unwrap();
    let sql = larder_views::open_store("sql", &source, Duration::ZERO)
        .await
        .unwrap();
    store_contract(sql, "spec_sql").await;
    let redis = larder_views::open_store(REDIS, &source, Duration::ZERO)
        .await
        .expect("Redis on 6379");
    store_contract(redis, &format!("spec_{}", std::process::id())).await;
    let path = db.dir.path().join("spec.redb");
    let spec = format!("redb:{}", path.display());
    let held = larder_views::open_store(&spec, &source, Duration::ZERO)
        .await
        .unwrap();
    let started = Instant::now();
    let e = larder_views::open_store(&spec, &source, Duration::from_millis(200))
        .await
        .err()
        .expect("a held redb file is refused");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(e.to_string().contains("one process at a time"), "{e}");
    drop(held);
    store_contract(
        larder_views::open_store(&spec, &source, Duration::ZERO)
            .await
            .unwrap(),
        "spec_redb",
    )
    .await;
    let e = larder_views::open_store("bogus", &source, Duration::ZERO)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, larder_views::Error::Config(ref m) if m.contains("redb:PATH")),
        "{e}"
    );
}
