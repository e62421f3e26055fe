//! A cached read costs one round trip to the store on a hit: the
//! generations it depends on and its stamped result are read together
//! (one MGET on Redis). Counted with a store that counts the operations
//! it is asked for; correctness across writes and overwritten stamps is
//! checked beside it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use larder_core::{
    async_trait, Backend, Bytes, Cache, Capabilities, ClearScope, Expiry, LeaseGrant, LeaseToken,
    Result, Ttl,
};
use larder_query::{Param, QueryCache, SqlDialect};

/// A backend behind a counter of the operations asked of it (each one a
/// round trip on a remote store).
struct Counting<B> {
    inner: B,
    ops: Arc<AtomicUsize>,
}

impl<B> Counting<B> {
    fn tick(&self) {
        self.ops.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl<B: Backend> Backend for Counting<B> {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        self.tick();
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()> {
        self.tick();
        self.inner.set(key, value, ttl).await
    }
    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
        self.tick();
        self.inner.add(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.tick();
        self.inner.delete(key).await
    }
    async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        self.tick();
        self.inner.incr(key, delta).await
    }
    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool> {
        self.tick();
        self.inner.touch(key, ttl).await
    }
    async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
        self.tick();
        self.inner.clear(scope).await
    }
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        self.tick();
        self.inner.get_many(keys).await
    }
    async fn set_many(&self, entries: &[(&str, Bytes)], ttl: Expiry) -> Result<Vec<String>> {
        self.tick();
        self.inner.set_many(entries, ttl).await
    }
    async fn lease_acquire(
        &self,
        key: &str,
        ttl: std::time::Duration,
        seen: Option<Bytes>,
    ) -> Result<LeaseGrant> {
        self.tick();
        self.inner.lease_acquire(key, ttl, seen).await
    }
    async fn lease_fill(
        &self,
        key: &str,
        value: Bytes,
        ttl: Expiry,
        lease: &LeaseToken,
    ) -> Result<bool> {
        self.tick();
        self.inner.lease_fill(key, value, ttl, lease).await
    }
    async fn lease_release(&self, key: &str, lease: &LeaseToken) -> Result<()> {
        self.tick();
        self.inner.lease_release(key, lease).await
    }
}

/// An in-memory SQLite database with a `comments` table.
async fn comments_db() -> sqlx::SqlitePool {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        // One connection: each of `sqlite::memory:` is a database of its own.
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    sqlx::query("CREATE TABLE comments (id INTEGER PRIMARY KEY, post_id INTEGER NOT NULL, body TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

/// Store operations of a read that computes on a store without leases
/// (the memory backend): the lookup, the generation-keyed copy, the stamp.
const MISS_OPS: usize = 3;

#[tokio::test]
async fn a_hit_is_one_round_trip_and_never_older_than_a_write() {
    let pool = comments_db().await;
    let ops = Arc::new(AtomicUsize::new(0));
    let store = Cache::builder(Counting {
        inner: larder_mem::MemBackend::default(),
        ops: ops.clone(),
    })
    .key_prefix("rt")
    .build()
    .unwrap();
    let qc = QueryCache::new(
        pool.clone(),
        store.clone(),
        SqlDialect::Sqlite,
        Ttl::secs(600),
    );
    let read = "SELECT id, body FROM comments WHERE post_id = ? ORDER BY id";
    let insert = "INSERT INTO comments (post_id, body) VALUES (?, ?)";
    let rows = |qc: &QueryCache<sqlx::Sqlite>, post: i64| {
        let qc = qc.clone();
        async move {
            qc.fetch_all::<(i64, String)>(read, &[Param::from(post)])
                .await
                .unwrap()
                .into_iter()
                .map(|(_, b)| b)
                .collect::<Vec<_>>()
        }
    };
    qc.execute(insert, &[Param::from(1i64), Param::from("a")])
        .await
        .unwrap();
    assert_eq!(rows(&qc, 1).await, ["a"]);

    for _ in 0..5 {
        let before = ops.load(Ordering::SeqCst);
        assert_eq!(rows(&qc, 1).await, ["a"]);
        assert_eq!(
            ops.load(Ordering::SeqCst) - before,
            1,
            "a hit is one store operation"
        );
    }
    assert_eq!(qc.stats().computed, 1);

    // A write to the post: the stamp no longer matches; the next read
    // computes, the one after is one round trip again.
    qc.execute(insert, &[Param::from(1i64), Param::from("b")])
        .await
        .unwrap();
    let before = ops.load(Ordering::SeqCst);
    assert_eq!(rows(&qc, 1).await, ["a", "b"]);
    assert_eq!(
        ops.load(Ordering::SeqCst) - before,
        MISS_OPS,
        "a miss reads nothing between its lookup and its computation"
    );
    let before = ops.load(Ordering::SeqCst);
    assert_eq!(rows(&qc, 1).await, ["a", "b"]);
    assert_eq!(ops.load(Ordering::SeqCst) - before, 1);
    assert_eq!(qc.stats().computed, 2);

    sqlx::query("INSERT INTO comments (post_id, body) VALUES (1, 'outside')")
        .execute(&pool)
        .await
        .unwrap();
    // (The outside write is not seen without a change stream: the cached
    // result stands, as documented.)
    assert_eq!(rows(&qc, 1).await, ["a", "b"]);
    qc.generations().bump(&["comments"]).await.unwrap();
    assert_eq!(
        rows(&qc, 1).await,
        ["a", "b", "outside"],
        "a table bump invalidates the stamped result"
    );
}

/// On Redis (leases): a read that computes is the lookup, the lease, its
/// fill and the stamp; nothing is read between the lookup and the query.
/// A concurrent reader of the same query in another process waits for the
/// lease holder instead of running the query too.
#[tokio::test]
async fn a_miss_on_redis_is_four_round_trips_and_one_computation_across_processes() {
    let pool = comments_db().await;
    let prefix = format!("rt{}", fastrand::u64(..));
    let process = |ops: Arc<AtomicUsize>| {
        let (pool, prefix) = (pool.clone(), prefix.clone());
        async move {
            let mut url = larder_core::CacheUrl::parse("redis://127.0.0.1:6379/5").unwrap();
            let redis = larder_redis::RedisBackend::from_url(&mut url)
                .await
                .expect("Redis on 127.0.0.1:6379 (scripts/services)");
            let store = Cache::builder(Counting { inner: redis, ops })
                .key_prefix(prefix)
                .build()
                .unwrap();
            QueryCache::new(pool, store, SqlDialect::Sqlite, Ttl::secs(600))
        }
    };
    let ops = Arc::new(AtomicUsize::new(0));
    let qc = process(ops.clone()).await;
    let read = "SELECT id, body FROM comments WHERE post_id = ? ORDER BY id";
    qc.execute(
        "INSERT INTO comments (post_id, body) VALUES (?, ?)",
        &[Param::from(1i64), Param::from("a")],
    )
    .await
    .unwrap();
    // Creates the generations (a first read of a table does).
    let _ = qc
        .fetch_all::<(i64, String)>(read, &[Param::from(2i64)])
        .await
        .unwrap();
    let before = ops.load(Ordering::SeqCst);
    let rows = qc
        .fetch_all::<(i64, String)>(read, &[Param::from(1i64)])
        .await
        .unwrap();
    assert_eq!(rows, [(1, "a".to_owned())]);
    assert_eq!(
        ops.load(Ordering::SeqCst) - before,
        4,
        "lookup, lease, fill, stamp"
    );

    // Two processes read a query none has cached, at once: one runs it.
    let slow = "SELECT id, body FROM comments WHERE post_id = ? AND (SELECT count(*) FROM \
                (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) \
                SELECT i FROM n)) > 0 ORDER BY id";
    let other = process(Arc::new(AtomicUsize::new(0))).await;
    let post = [Param::from(1i64)];
    let (a, b) = tokio::join!(
        qc.fetch_all::<(i64, String)>(slow, &post),
        other.fetch_all::<(i64, String)>(slow, &post),
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(
        qc.stats().computed + other.stats().computed,
        3,
        "one computation of the slow query (and the two reads before)"
    );
}
