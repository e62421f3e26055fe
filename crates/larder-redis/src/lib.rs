//! # larder-redis
//!
//! The Redis backend for [larder](https://docs.rs/larder), on
//! [redis-rs](https://docs.rs/redis): one multiplexed connection with
//! automatic reconnection (`ConnectionManager`) for a single server, and the
//! cluster-aware async connection for Redis Cluster.
//!
//! | URL | meaning |
//! |-----|---------|
//! | `redis://[user:pass@]host:port[/db]` | one server |
//! | `redis+cluster://[user:pass@]h1:p1,h2:p2` | a Redis Cluster, from any of its nodes |
//!
//! | `rediss://…`, `rediss+cluster://…` | the same over TLS (cargo feature `tls`) |
//!
//! Options (query parameters): `deadline_ms` (the cache's one deadline, see
//! guide-herd; here also the limit of the connection's own waits, default
//! 1000 when absent), the longest any
//! single operation may take before it fails with `Error::Timeout`; clearing
//! gets 30 times that, since it scans. With TLS, `tls_ca=/path/ca.pem`
//! trusts that CA instead of the system's certificate store.
//!
//! How operations map to Redis, and why:
//!
//! - `get_many` is one `MGET` (on a cluster redis-rs splits it by slot and
//!   runs the parts in parallel); `set_many` is one pipeline of `SET … PX`.
//! - `add` is `SET NX PX`: atomic.
//! - `incr` is a small Lua script: `INCRBY` would create a missing key, and
//!   Django semantics (and the conformance suite) require `NotFound`; `INCRBY`
//!   keeps the TTL and fails on non-integers and overflow on its own.
//! - `touch` with "never" is `PERSIST` inside a script, because `PERSIST`
//!   alone cannot tell a missing key from one without a TTL.
//! - `clear` of a prefix is `SCAN MATCH prefix*` + `UNLINK` on every master,
//!   never `FLUSHDB`; only `ClearScope::All` (`Cache::clear_all`) flushes.
//!
//! ```no_run
//! # async fn run() -> larder_core::Result<()> {
//! use larder_core::{Cache, CacheUrl, LeaseGrant, LeaseToken, Ttl, lease_key};
//! let mut url = CacheUrl::parse("redis://127.0.0.1:6379/0")?;
//! let cache = Cache::new(larder_redis::RedisBackend::from_url(&mut url).await?);
//! cache.set("k", "v", Ttl::secs(60)).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{try_join_all, BoxFuture};
use larder_core::{
    async_trait, lease_key, Backend, Bytes, CacheUrl, Capabilities, ClearScope, Error, Expiry,
    LeaseGrant, LeaseToken, Result,
};
mod bus;
pub use bus::{RedisBus, CLUSTER_CHANNELS};

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, Script};

const NAME: &str = "redis";
/// Default deadline of one operation.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);

// Returns the new value as the stored string: a Lua number is a double, so
// returning INCRBY's integer through Lua corrupts values near 2^63.
const INCR_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('LARDER_NOTFOUND no such key')
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
"#;

const PERSIST_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('PERSIST', KEYS[1])
return 1
"#;

// Leases: the lease on a key is a key of its own holding the grant's id,
// set with SET NX PX. A fill stores only while the lease is ours and the
// entry is still what the holder saw; delete drops the lease first.
const FILL_SCRIPT: &str = r#"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local cur = redis.call('GET', KEYS[1])
-- Gone while the lease held: it expired (delete drops the lease), so the
-- refresh that outlived it is stored. Another entry: someone wrote.
if cur and (ARGV[2] ~= '1' or cur ~= ARGV[3]) then return 0 end
if ARGV[5] == '0' then
  redis.call('SET', KEYS[1], ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
end
return 1
"#;

const RELEASE_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

const DELETE_SCRIPT: &str = r#"
redis.call('DEL', KEYS[2])
return redis.call('DEL', KEYS[1])
"#;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// How often a backend whose server is unreachable tries to connect;
/// calls in between fail at once.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

type Connector = Box<dyn Fn() -> BoxFuture<'static, Result<Conn>> + Send + Sync>;

/// The connection, made on first use when the server was unreachable at
/// start (so a service restarted during an outage can build its cache),
/// and again after [`close`](larder_core::Backend::close). At most one
/// attempt at a time, and at most one per [`RECONNECT_EVERY`]: meanwhile
/// calls fail fast with the last attempt's error.
struct Link {
    cluster: bool,
    conn: std::sync::RwLock<Option<Conn>>,
    connecting: tokio::sync::Mutex<()>,
    last_failure: std::sync::Mutex<Option<(Instant, String)>>,
    connect: Connector,
}

impl Link {
    fn current(&self) -> Option<Conn> {
        self.conn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn get(&self) -> Result<Conn> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let recent = |l: &Self| {
            l.last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|(at, _)| at.elapsed() < RECONNECT_EVERY)
                .map(|(_, why)| why.clone())
        };
        if let Some(why) = recent(self) {
            return Err(Error::backend(NAME, format!("not connected: {why}")));
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some(why) = recent(self) {
            return Err(Error::backend(NAME, format!("not connected: {why}")));
        }
        match (self.connect)().await {
            Ok(c) => {
                *self.conn.write().unwrap_or_else(|p| p.into_inner()) = Some(c.clone());
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!("redis: connected");
                Ok(c)
            }
            Err(e) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }
}

/// Retries the first connection in the background, with a backoff from
/// [`RECONNECT_EVERY`] to 10 s, until it is made (by this task or by a
/// call) or the backend is dropped: so the cache is connected when traffic
/// comes, not at its first request.
fn reconnect_in_background(link: std::sync::Weak<Link>) {
    tokio::spawn(async move {
        let mut delay = RECONNECT_EVERY;
        loop {
            tokio::time::sleep(delay).await;
            let Some(link) = link.upgrade() else { return };
            if link.current().is_some() || link.get().await.is_ok() {
                return;
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    });
}

/// Whether a failed first connection means "server unreachable" (connect
/// later) rather than a configuration the server refused (an error now).
fn unreachable(e: &Error) -> bool {
    match e {
        Error::Timeout { .. } => true,
        Error::Backend { source, .. } => {
            let Some(r) = source.downcast_ref::<RedisError>() else {
                return false;
            };
            if r.is_connection_refusal() || r.is_timeout() {
                return true;
            }
            // An I/O error is "unreachable" only for the network's kinds: a
            // TLS handshake refusing the server's certificate is an I/O
            // error too, and a configuration error.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(r);
            while let Some(c) = cause {
                if let Some(io) = c.downcast_ref::<std::io::Error>() {
                    return larder_core::io_kind_means_unreachable(io.kind());
                }
                cause = c.source();
            }
            false
        }
        _ => false,
    }
}

/// A cache backend on one Redis server or a Redis Cluster.
#[derive(Clone)]
pub struct RedisBackend {
    link: Arc<Link>,
    deadline: Duration,
    /// Node URLs to scan for `clear` (every master of a cluster, or the server).
    credentials: Credentials,
    incr: Script,
    persist: Script,
    fill: Script,
    release: Script,
    delete: Script,
}

#[derive(Clone, Default)]
struct Credentials {
    userinfo: String,
    /// `redis` or `rediss`, for connections to single cluster nodes.
    scheme: &'static str,
    tls_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field(
                "mode",
                &if self.link.cluster {
                    "cluster"
                } else {
                    "single"
                },
            )
            .field("connected", &self.link.current().is_some())
            .field("deadline", &self.deadline)
            .finish()
    }
}

fn redis_err(e: RedisError) -> Error {
    Error::backend(NAME, e)
}

fn millis(d: Duration) -> u64 {
    (d.as_millis().min(u64::MAX as u128) as u64).max(1)
}

/// Escapes glob characters so a prefix matches only itself in `SCAN MATCH`.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisBackend {
    /// Connects from `redis://…` or `redis+cluster://…`, taking the
    /// `deadline_ms` option out of the URL.
    pub async fn from_url(url: &mut CacheUrl) -> Result<Self> {
        let deadline = url
            .take_parsed::<u64>("deadline_ms")?
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_DEADLINE);
        if deadline.is_zero() {
            return Err(Error::config("deadline_ms must be greater than 0"));
        }
        let (userinfo, hosts) = match url.authority().rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h.to_owned()),
            None => (String::new(), url.authority().to_owned()),
        };
        if hosts.is_empty() {
            return Err(Error::config(format!(
                "{} names no host; write e.g. redis://127.0.0.1:6379",
                url.as_str()
            )));
        }
        let mut credentials = Credentials {
            userinfo,
            ..Credentials::default()
        };
        let tls = url.scheme().starts_with("rediss");
        let tls_ca = match url.take("tls_ca") {
            Some(path) => Some(std::fs::read(&path).map_err(|e| {
                Error::config(format!("cannot read the TLS CA file {path:?}: {e}"))
            })?),
            None => None,
        };
        if tls_ca.is_some() && !tls {
            return Err(Error::config(
                "tls_ca is only meaningful with rediss:// or rediss+cluster://",
            ));
        }
        if tls {
            tls_support::check()?;
        }
        credentials.scheme = if tls { "rediss" } else { "redis" };
        credentials.tls_ca = tls_ca.clone();
        match url.scheme() {
            "redis" | "rediss" => {
                if hosts.contains(',') {
                    return Err(Error::config(format!(
                        "{} lists several hosts; for a cluster write redis+cluster://h1:p1,h2:p2",
                        url.as_str()
                    )));
                }
                let target = format!(
                    "{}://{}{}{}",
                    url.scheme(),
                    credentials.userinfo,
                    hosts,
                    url.path()
                );
                let client = tls_support::client(&target, tls_ca).map_err(|e| {
                    Error::config(format!("invalid Redis URL {:?}: {e}", url.as_str()))
                })?;
                // One plain connection first: the manager retries a failed
                // handshake until the deadline, which would turn a wrong
                // password into a timeout instead of the server's answer.
                let probe =
                    with_deadline(deadline, client.get_multiplexed_async_connection()).await;
                let connect: Connector = Box::new(move || {
                    let client = client.clone();
                    Box::pin(async move {
                        let conn = with_deadline(
                            deadline,
                            client.get_connection_manager_with_config(manager_config()),
                        )
                        .await?;
                        Ok(Conn::Single(conn))
                    })
                });
                Self::start(probe.map(|_| ()), connect, false, deadline, credentials).await
            }
            "redis+cluster" | "rediss+cluster" => {
                if !url.path().is_empty() && url.path() != "/" && url.path() != "/0" {
                    return Err(Error::config(
                        "Redis Cluster has only database 0; remove the /db from the URL",
                    ));
                }
                let scheme = if url.scheme() == "rediss+cluster" {
                    "rediss"
                } else {
                    "redis"
                };
                let nodes: Vec<String> = hosts
                    .split(',')
                    .map(|h| format!("{scheme}://{}{}", credentials.userinfo, h.trim()))
                    .collect();
                let client = tls_support::cluster_client(nodes, tls_ca).map_err(|e| {
                    Error::config(format!("invalid Redis Cluster URL {:?}: {e}", url.as_str()))
                })?;
                let client = Arc::new(client);
                let connect: Connector = Box::new(move || {
                    let client = client.clone();
                    Box::pin(async move {
                        let conn = with_deadline(deadline, client.get_async_connection()).await?;
                        Ok(Conn::Cluster(conn))
                    })
                });
                Self::start(Ok(()), connect, true, deadline, credentials).await
            }
            other => Err(Error::config(format!("not a Redis URL scheme: {other}"))),
        }
    }

    /// Connects now, or, when the server is unreachable, on first use.
    async fn start(
        probe: Result<()>,
        connect: Connector,
        cluster: bool,
        deadline: Duration,
        credentials: Credentials,
    ) -> Result<Self> {
        let link = Arc::new(Link {
            cluster,
            conn: std::sync::RwLock::new(None),
            connecting: tokio::sync::Mutex::new(()),
            last_failure: std::sync::Mutex::new(None),
            connect,
        });
        let first = match probe {
            Ok(()) => link.get().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match first {
            Ok(()) => {}
            Err(e) if unreachable(&e) => {
                tracing::warn!(error = %e, "redis: server unreachable; the cache starts disconnected and connects when it can");
                *link.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), e.to_string()));
                reconnect_in_background(Arc::downgrade(&link));
            }
            Err(e) => return Err(e),
        }
        Ok(Self::new(link, deadline, credentials))
    }

    fn new(link: Arc<Link>, deadline: Duration, credentials: Credentials) -> Self {
        RedisBackend {
            link,
            deadline,
            credentials,
            incr: Script::new(INCR_SCRIPT),
            persist: Script::new(PERSIST_SCRIPT),
            fill: Script::new(FILL_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            delete: Script::new(DELETE_SCRIPT),
        }
    }

    /// True when connected to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.link.cluster
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let conn = self.link.get().await?;
        let fut = async {
            match conn {
                Conn::Single(mut c) => cmd.query_async(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
            }
        };
        with_deadline(self.deadline, fut).await
    }

    async fn script<T: FromRedisValue>(&self, script: &Script, key: &str, arg: i64) -> Result<T> {
        let mut inv = script.key(key);
        inv.arg(arg);
        self.invoke(&inv).await
    }

    async fn invoke<T: FromRedisValue>(&self, inv: &redis::ScriptInvocation<'_>) -> Result<T> {
        let conn = self.link.get().await?;
        let fut = async {
            match conn {
                Conn::Single(mut c) => inv.invoke_async(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
            }
        };
        with_deadline(self.deadline, fut).await
    }

    /// The connections `clear` scans: the server, or every cluster master.
    async fn scan_targets(&self) -> Result<Vec<ConnectionManager>> {
        match self.link.get().await? {
            Conn::Single(c) => Ok(vec![c]),
            Conn::Cluster(_) => {
                let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
                let mut out = Vec::new();
                for line in nodes.lines() {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    if fields.len() < 3 || !fields[2].split(',').any(|f| f == "master") {
                        continue;
                    }
                    if fields[2].contains("fail") {
                        continue;
                    }
                    let addr = fields[1].split('@').next().unwrap_or_default();
                    let client = tls_support::client(
                        &format!(
                            "{}://{}{addr}",
                            self.credentials.scheme, self.credentials.userinfo
                        ),
                        self.credentials.tls_ca.clone(),
                    )
                    .map_err(redis_err)?;
                    out.push(
                        with_deadline(
                            self.deadline,
                            client.get_connection_manager_with_config(manager_config()),
                        )
                        .await?,
                    );
                }
                Ok(out)
            }
        }
    }
}

/// Building clients with or without TLS support compiled in.
#[cfg(feature = "tls")]
mod tls_support {
    use super::*;

    pub fn check() -> Result<()> {
        // redis-rs brings rustls without a crypto provider; install ring once
        // (an error only means another part of the program installed one).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(())
    }

    fn certs(ca: Option<Vec<u8>>) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: ca,
        }
    }

    pub fn client(url: &str, ca: Option<Vec<u8>>) -> redis::RedisResult<redis::Client> {
        match ca {
            Some(_) => redis::Client::build_with_tls(url, certs(ca)),
            None => redis::Client::open(url),
        }
    }

    pub fn cluster_client(
        nodes: Vec<String>,
        ca: Option<Vec<u8>>,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let mut b = redis::cluster::ClusterClientBuilder::new(nodes);
        if ca.is_some() {
            b = b.certs(certs(ca));
        }
        b.build()
    }
}

#[cfg(not(feature = "tls"))]
mod tls_support {
    use super::*;

    pub fn check() -> Result<()> {
        Err(Error::config(
            "rediss:// needs TLS support: enable the `tls` feature of larder-redis (larder feature `redis-tls`)",
        ))
    }

    pub fn client(url: &str, _ca: Option<Vec<u8>>) -> redis::RedisResult<redis::Client> {
        redis::Client::open(url)
    }

    pub fn cluster_client(
        nodes: Vec<String>,
        _ca: Option<Vec<u8>>,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        redis::cluster::ClusterClient::new(nodes)
    }
}

/// How our connection managers are made. Our deadline bounds every call;
/// redis-rs's own response timeout (500 ms by default) would cut calls short
/// of a longer configured deadline (the default is 1 s), and costs a second
/// timer per command.
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new().set_response_timeout(None)
}

async fn with_deadline<T>(
    deadline: Duration,
    fut: impl Future<Output = std::result::Result<T, RedisError>>,
) -> Result<T> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(r) => r.map_err(redis_err),
        Err(_) => Err(Error::Timeout {
            backend: NAME,
            after: deadline,
        }),
    }
}

/// The key holding the lease on `key`. On a cluster it must hash to the
/// same slot as `key`, so that the fill script may touch both.
fn redis_lease_key(key: &str, cluster: bool) -> String {
    let plain = lease_key(key);
    if !cluster {
        return plain;
    }
    let slot = cluster_slot(key.as_bytes());
    if cluster_slot(plain.as_bytes()) == slot {
        return plain;
    }
    let tag = slot_tag(slot);
    let tagged = format!("{plain} {{{tag}}}");
    if cluster_slot(tagged.as_bytes()) == slot {
        return tagged;
    }
    // `key` has an unmatched `{`: put the tag first.
    format!("{{{tag}}} {plain}")
}

/// Redis Cluster's hash slot of a key (CRC16/XMODEM of its hash tag or of
/// the whole key, mod 16384).
fn cluster_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

/// A short string whose slot is `slot`: the first decimal number that hashes
/// there (found once for all slots, ~170k CRCs).
fn slot_tag(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); 16384];
        let mut missing = 16384;
        let mut n: u64 = 0;
        while missing > 0 {
            let s = n.to_string();
            let slot = usize::from(cluster_slot(s.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = s;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot)]
}

fn set_cmd(key: &str, value: &[u8], ttl: Expiry) -> Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
    if let Expiry::After(d) = ttl {
        cmd.arg("PX").arg(millis(d));
    }
    cmd
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_prefix_clear(true)
            .with_batch(true)
            .with_shared(true)
            .with_leases(true)
    }

    async fn lease_acquire(
        &self,
        key: &str,
        ttl: Duration,
        seen: Option<Bytes>,
    ) -> Result<LeaseGrant> {
        let lease = LeaseToken::new(seen);
        let lk = redis_lease_key(key, self.is_cluster());
        let r: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(&lk)
                    .arg(lease.id_hex())
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl).max(1)),
            )
            .await?;
        Ok(match r {
            Some(_) => LeaseGrant::Won(lease),
            None => LeaseGrant::Held,
        })
    }

    async fn lease_fill(
        &self,
        key: &str,
        value: Bytes,
        ttl: Expiry,
        lease: &LeaseToken,
    ) -> Result<bool> {
        let lk = redis_lease_key(key, self.is_cluster());
        let px = match ttl {
            Expiry::Never => 0,
            Expiry::After(d) => millis(d).max(1),
        };
        let mut inv = self.fill.key(key);
        inv.key(&lk)
            .arg(lease.id_hex())
            .arg(if lease.seen().is_some() { "1" } else { "0" })
            .arg(lease.seen().map_or(&b""[..], |b| &b[..]))
            .arg(&value[..])
            .arg(px);
        Ok(self.invoke::<i64>(&inv).await? == 1)
    }

    /// Drops the connection; the next call connects again (as on every
    /// backend, a closed cache stays usable).
    async fn close(&self) -> Result<()> {
        *self.link.conn.write().unwrap_or_else(|p| p.into_inner()) = None;
        *self
            .link
            .last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    async fn lease_release(&self, key: &str, lease: &LeaseToken) -> Result<()> {
        let lk = redis_lease_key(key, self.is_cluster());
        let mut inv = self.release.key(&lk);
        inv.arg(lease.id_hex());
        self.invoke::<i64>(&inv).await.map(|_| ())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let v: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(key)).await?;
        Ok(v.map(Bytes::from))
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let v: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(keys)).await?;
        if v.len() != keys.len() {
            return Err(Error::backend(
                NAME,
                format!("MGET of {} keys returned {} values", keys.len(), v.len()),
            ));
        }
        Ok(v.into_iter().map(|o| o.map(Bytes::from)).collect())
    }

    async fn has_key(&self, key: &str) -> Result<bool> {
        let n: i64 = self.query(redis::cmd("EXISTS").arg(key)).await?;
        Ok(n > 0)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()> {
        self.query::<()>(&set_cmd(key, &value, ttl)).await
    }

    async fn set_many(&self, entries: &[(&str, Bytes)], ttl: Expiry) -> Result<Vec<String>> {
        if entries.is_empty() {
            // An empty pipeline is an error on the server ("empty command").
            return Ok(Vec::new());
        }
        match self.link.get().await? {
            Conn::Single(mut c) => {
                let mut pipe = redis::pipe();
                for (k, v) in entries {
                    pipe.add_command(set_cmd(k, v, ttl)).ignore();
                }
                with_deadline(self.deadline, pipe.query_async::<()>(&mut c)).await?;
            }
            // Keys of a batch live in many slots; the cluster connection
            // pipelines concurrent commands per node on its own.
            Conn::Cluster(_) => {
                try_join_all(
                    entries
                        .iter()
                        .map(|(k, v)| async move { self.query::<()>(&set_cmd(k, v, ttl)).await }),
                )
                .await?;
            }
        }
        Ok(Vec::new())
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
        let mut cmd = set_cmd(key, &value, ttl);
        cmd.arg("NX");
        let r: Option<String> = self.query(&cmd).await?;
        Ok(r.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        // Drops the key's lease with it, atomically: a computation that
        // started before this invalidation cannot store after it.
        let lk = redis_lease_key(key, self.is_cluster());
        let mut inv = self.delete.key(key);
        inv.key(&lk);
        let n: i64 = self.invoke(&inv).await?;
        Ok(n > 0)
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        // Leases first: a fill landing between the two commands then finds
        // its lease gone instead of storing behind the delete.
        let cluster = self.is_cluster();
        let leases: Vec<String> = keys.iter().map(|k| redis_lease_key(k, cluster)).collect();
        self.query::<i64>(redis::cmd("DEL").arg(&leases)).await?;
        let n: i64 = self.query(redis::cmd("DEL").arg(keys)).await?;
        Ok(n.max(0) as u64)
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        match self.script::<String>(&self.incr, key, delta).await {
            Ok(n) => n.parse().map_err(|_| {
                Error::backend(NAME, format!("INCRBY left a non-integer {n:?} at {key:?}"))
            }),
            Err(Error::Backend { source, .. }) => {
                let msg = source.to_string();
                let key = key.to_owned();
                Err(if msg.contains("LARDER_NOTFOUND") {
                    Error::NotFound { key }
                } else if msg.contains("overflow") {
                    Error::Overflow { key }
                } else if msg.contains("not an integer") {
                    Error::NotANumber { key }
                } else {
                    Error::Backend {
                        backend: NAME,
                        source,
                    }
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool> {
        match ttl {
            Expiry::After(d) => {
                let n: i64 = self
                    .query(redis::cmd("PEXPIRE").arg(key).arg(millis(d)))
                    .await?;
                Ok(n == 1)
            }
            Expiry::Never => Ok(self.script::<i64>(&self.persist, key, 0).await? == 1),
        }
    }

    async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
        let long = self.deadline * 30;
        for conn in self.scan_targets().await? {
            let mut conn = conn;
            match scope {
                ClearScope::All => {
                    with_deadline(long, redis::cmd("FLUSHDB").query_async::<()>(&mut conn)).await?;
                }
                ClearScope::Prefix(prefix) => {
                    let pattern = format!("{}*", glob_escape(prefix));
                    let mut cursor: u64 = 0;
                    loop {
                        let (next, keys): (u64, Vec<String>) = with_deadline(
                            long,
                            redis::cmd("SCAN")
                                .arg(cursor)
                                .arg("MATCH")
                                .arg(&pattern)
                                .arg("COUNT")
                                .arg(1000)
                                .query_async(&mut conn),
                        )
                        .await?;
                        if !keys.is_empty() {
                            // One UNLINK per key: a cluster node refuses a
                            // multi-key command whose keys are in different
                            // slots, even when it owns them all.
                            let mut pipe = redis::pipe();
                            for k in &keys {
                                pipe.cmd("UNLINK").arg(k).ignore();
                            }
                            with_deadline(long, pipe.query_async::<()>(&mut conn)).await?;
                        }
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_share_the_slot_of_their_key() {
        for key in [
            "app:1:user:7",
            "a{b",
            "{tag}rest",
            "x}y{z",
            "{}",
            "",
            "k{}{v}",
        ] {
            let lk = redis_lease_key(key, true);
            assert_eq!(
                cluster_slot(lk.as_bytes()),
                cluster_slot(key.as_bytes()),
                "{key} → {lk}"
            );
            assert_ne!(lk, key);
        }
        assert_eq!(redis_lease_key("app:1:k", false), "app:1:k lease");
        // Known slots (from CLUSTER KEYSLOT).
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(
            cluster_slot(b"{user1000}.following"),
            cluster_slot(b"user1000")
        );
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(glob_escape("app.v1"), "app.v1");
    }
}
