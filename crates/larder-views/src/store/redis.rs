//! View documents in Redis: per view, one hash of versions (tombstones
//! included) and one of live documents, under one hash tag so a Redis
//! Cluster keeps them on one node and the compare-and-write script can
//! touch both.

use redis::aio::ConnectionManager;

use super::{DocStore, Put, Versioned};
use crate::error::{Error, Result};

fn err(e: impl Into<crate::error::BoxError>) -> Error {
    Error::store("redis", e)
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

/// A view store on Redis (single node; one view lives on one node of a
/// cluster). Documents are persistent only as far as the server persists
/// (RDB/AOF): configure it to keep data.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`); keys are
    /// `{<prefix>:<view>}:v` (versions) and `{<prefix>:<view>}:d` (documents).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore> {
        let client = redis::Client::open(url).map_err(err)?;
        // A plain connection first: a dead server is an error at once, not
        // after the connection manager's retries.
        client
            .get_multiplexed_async_connection()
            .await
            .map_err(err)?;
        let conn = ConnectionManager::new(client).await.map_err(err)?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_owned(),
            script: redis::Script::new(PUT_SCRIPT),
        })
    }

    fn hashes(&self, view: &str) -> (String, String) {
        let tag = format!("{{{}:{}}}", self.prefix, view);
        (format!("{tag}:v"), format!("{tag}:d"))
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
        let (v, d) = self.hashes(view);
        let mut inv = self.script.prepare_invoke();
        inv.key(v).key(d);
        for p in &puts {
            inv.arg(&p.key)
                .arg(p.version)
                .arg(if p.doc.is_none() { "1" } else { "0" })
                .arg(p.doc.as_deref().unwrap_or_default());
        }
        let mut conn = self.conn.clone();
        let n: usize = inv.invoke_async(&mut conn).await.map_err(err)?;
        Ok(n)
    }

    async fn get_many(&self, view: &str, keys: &[String]) -> Result<Vec<Option<Versioned>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (v, d) = self.hashes(view);
        let mut conn = self.conn.clone();
        let (versions, docs): (Vec<Option<u64>>, Vec<Option<Vec<u8>>>) = redis::pipe()
            .cmd("HMGET")
            .arg(&v)
            .arg(keys)
            .cmd("HMGET")
            .arg(&d)
            .arg(keys)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(versions
            .into_iter()
            .zip(docs)
            .map(|(ver, doc)| ver.map(|version| Versioned { version, doc }))
            .collect())
    }

    async fn keys(&self, view: &str) -> Result<Vec<String>> {
        let (_, d) = self.hashes(view);
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = redis::cmd("HKEYS")
            .arg(&d)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        keys.sort();
        Ok(keys)
    }

    async fn count(&self, view: &str) -> Result<u64> {
        let (_, d) = self.hashes(view);
        let mut conn = self.conn.clone();
        redis::cmd("HLEN")
            .arg(&d)
            .query_async(&mut conn)
            .await
            .map_err(err)
    }
}
