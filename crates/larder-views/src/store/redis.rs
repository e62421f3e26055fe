//! View documents in Redis or a Redis Cluster. A view's documents are
//! spread over [`BUCKETS`] buckets by a hash of the document key; each
//! bucket is one hash of versions (tombstones included) and one of live
//! documents under the bucket's own hash tag, so the compare-and-write
//! script touches keys of one slot, and a view's reads and writes spread
//! over every node of a cluster. Counting and listing a view reads every
//! bucket (one command each, concurrently), with no index to keep in step.

use futures_util::future::try_join_all;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use super::{DocStore, Put, Versioned};
use crate::error::{Error, Result};

/// Buckets per view: enough to spread a view evenly over the masters of
/// a large cluster (16,384 slots), few enough that counting a view is a
/// handful of round trips.
pub const BUCKETS: u32 = 256;

fn err(e: impl Into<crate::error::BoxError>) -> Error {
    Error::store("redis", e)
}

/// The bucket of document `key` (stored data depends on it).
fn bucket(key: &str) -> u32 {
    larder_core::stable_hash32(key.as_bytes()) % BUCKETS
}

/// One server, or a cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Writes each (field, version, is_tombstone, doc) whose version is newer
/// than the stored one, atomically; returns how many landed.
const PUT_SCRIPT: &str = r"
local n = 0
for i = 1, #ARGV, 4 do
  local field = ARGV[i]
  local ver = tonumber(ARGV[i + 1])
  local cur = tonumber(redis.call('HGET', KEYS[1], field) or '-1')
  if ver > cur then
    redis.call('HSET', KEYS[1], field, ARGV[i + 1])
    if ARGV[i + 2] == '1' then
      redis.call('HDEL', KEYS[2], field)
    else
      redis.call('HSET', KEYS[2], field, ARGV[i + 3])
    end
    n = n + 1
  end
end
return n
";

/// A view store on Redis or a Redis Cluster. Documents are persistent
/// only as far as the servers persist (RDB/AOF): configure them to keep
/// data.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    script: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("cluster", &matches!(self.conn, Conn::Cluster(_)))
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url`: `redis://host:port/db` (or `rediss://`), or a
    /// cluster as `redis+cluster://h1:p1,h2:p2` (any of its nodes). Keys
    /// are `{<prefix>:<view>:<bucket>}:v` (versions) and `…:d`
    /// (documents), `bucket` in `0..`[`REDIS_BUCKETS`](crate::REDIS_BUCKETS).
    ///
    /// A dead server or cluster is an error at once.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore> {
        if prefix.contains(['{', '}']) {
            return Err(Error::Config(format!(
                "Redis store prefix {prefix:?}: braces would break the buckets' hash tags"
            )));
        }
        let conn = if let Some(hosts) = url.strip_prefix("redis+cluster://") {
            let hosts = hosts.trim_end_matches('/').trim_end_matches("/0");
            if hosts.is_empty() || hosts.contains('/') {
                return Err(Error::Config(format!(
                    "Redis Cluster store {url:?}: write redis+cluster://h1:p1,h2:p2 (database 0 only)"
                )));
            }
            let nodes: Vec<String> = hosts
                .split(',')
                .map(|h| format!("redis://{}", h.trim()))
                .collect();
            let client = redis::cluster::ClusterClient::new(nodes).map_err(err)?;
            Conn::Cluster(client.get_async_connection().await.map_err(err)?)
        } else {
            let client = redis::Client::open(url).map_err(err)?;
            // A plain connection first: a dead server is an error at once,
            // not after the connection manager's retries.
            client
                .get_multiplexed_async_connection()
                .await
                .map_err(err)?;
            Conn::Single(ConnectionManager::new(client).await.map_err(err)?)
        };
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            script: redis::Script::new(PUT_SCRIPT),
        })
    }

    /// The versions and documents hashes of `view`'s bucket `b`.
    fn hashes(&self, view: &str, b: u32) -> (String, String) {
        let tag = format!("{{{}:{}:{b}}}", self.prefix, view);
        (format!("{tag}:v"), format!("{tag}:d"))
    }

    /// `items` grouped by the bucket of their key, in first-seen order.
    fn by_bucket<T>(items: impl IntoIterator<Item = (String, T)>) -> Vec<(u32, Vec<(String, T)>)> {
        let mut groups: Vec<(u32, Vec<(String, T)>)> = Vec::new();
        for (key, item) in items {
            let b = bucket(&key);
            match groups.iter_mut().find(|(g, _)| *g == b) {
                Some((_, list)) => list.push((key, item)),
                None => groups.push((b, vec![(key, item)])),
            }
        }
        groups
    }
}

#[async_trait::async_trait]
impl DocStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn put_many(&self, view: &str, puts: Vec<Put>) -> Result<usize> {
        if puts.is_empty() {
            return Ok(0);
        }
        let groups = Self::by_bucket(puts.into_iter().map(|p| (p.key.clone(), p)));
        let writes = groups.into_iter().map(|(b, puts)| {
            let (v, d) = self.hashes(view, b);
            let mut inv = self.script.prepare_invoke();
            inv.key(v).key(d);
            for (_, p) in &puts {
                inv.arg(&p.key)
                    .arg(p.version)
                    .arg(if p.doc.is_none() { "1" } else { "0" })
                    .arg(p.doc.as_deref().unwrap_or_default());
            }
            let mut conn = self.conn.clone();
            async move { inv.invoke_async::<usize>(&mut conn).await.map_err(err) }
        });
        Ok(try_join_all(writes).await?.into_iter().sum())
    }

    async fn get_many(&self, view: &str, keys: &[String]) -> Result<Vec<Option<Versioned>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let groups = Self::by_bucket(keys.iter().cloned().enumerate().map(|(i, k)| (k, i)));
        let reads = groups.into_iter().map(|(b, keys)| {
            let (v, d) = self.hashes(view, b);
            let names: Vec<&String> = keys.iter().map(|(k, _)| k).collect();
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET").arg(&v).arg(&names);
            pipe.cmd("HMGET").arg(&d).arg(&names);
            let mut conn = self.conn.clone();
            async move {
                let (versions, docs): (Vec<Option<u64>>, Vec<Option<Vec<u8>>>) =
                    pipe.query_async(&mut conn).await.map_err(err)?;
                let at: Vec<usize> = keys.iter().map(|(_, i)| *i).collect();
                Ok::<_, Error>((at, versions, docs))
            }
        });
        let mut out: Vec<Option<Versioned>> = vec![None; keys.len()];
        for (at, versions, docs) in try_join_all(reads).await? {
            for ((i, ver), doc) in at.into_iter().zip(versions).zip(docs) {
                out[i] = ver.map(|version| Versioned { version, doc });
            }
        }
        Ok(out)
    }

    async fn keys(&self, view: &str) -> Result<Vec<String>> {
        let lists = (0..BUCKETS).map(|b| {
            let (_, d) = self.hashes(view, b);
            let mut conn = self.conn.clone();
            async move {
                redis::cmd("HKEYS")
                    .arg(&d)
                    .query_async::<Vec<String>>(&mut conn)
                    .await
                    .map_err(err)
            }
        });
        let mut keys: Vec<String> = try_join_all(lists).await?.into_iter().flatten().collect();
        keys.sort();
        Ok(keys)
    }

    async fn count(&self, view: &str) -> Result<u64> {
        let counts = (0..BUCKETS).map(|b| {
            let (_, d) = self.hashes(view, b);
            let mut conn = self.conn.clone();
            async move {
                redis::cmd("HLEN")
                    .arg(&d)
                    .query_async::<u64>(&mut conn)
                    .await
                    .map_err(err)
            }
        });
        Ok(try_join_all(counts).await?.into_iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        // Stable: stored data depends on it.
        assert_eq!(bucket(""), 0x811c_9dc5 % BUCKETS);
        assert_eq!(bucket("42"), bucket("42"));
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            seen.insert(bucket(&i.to_string()));
        }
        assert_eq!(seen.len(), BUCKETS as usize, "every bucket in use");
    }
}
