//! # larder-memcached
//!
//! The memcached backend for [larder](https://docs.rs/larder): larder's own
//! async client on the memcached **meta protocol** (`mg`, `ms`, `md`, `ma`,
//! `mn`), over a pool of servers with ketama consistent hashing.
//!
//! Why our own client: stampede control (leases: `mg` with `N`/`R`, the
//! win/stale flags, `ms` with CAS) needs the meta protocol, which no Rust
//! crate offers stably.
//!
//! ```text
//! memcached://h1:11211,h2:11212?deadline_ms=1000&retry_delay_ms=2000&failure_limit=2&pool_size=8&max_value_bytes=N
//! ```
//!
//! - **Hashing**: ketama, compatible with libketama and libmemcached (see
//!   [`ketama`]), so other ketama clients find the same server for a key.
//! - **One connection per server, shared**: concurrent callers' requests
//!   are written back to back on it and the responses matched to them in
//!   order (see [`mux`]), as redis-rs multiplexes Redis. 64 callers cost a
//!   few syscalls, not 64 round trips on 64 connections. A caller that
//!   gives up does not disturb the others; a server silent for the deadline
//!   ends the connection and the next request opens a new one.
//! - **Batches**: `get_many`, `set_many` and `delete_many` are one pipeline of
//!   quiet commands per server, the servers in parallel.
//! - **Counters**: `ma` when the delta is positive (one round trip; a result
//!   beyond `i64` is undone and reported as `Overflow`); otherwise, and for
//!   negative stored values, which memcached's unsigned counters refuse, a
//!   CAS loop (`mg` with `c`/`t`, then `ms` with `C`) that keeps the TTL and
//!   retries with jittered backoff until the deadline.
//! - **Dead servers**: after `failure_limit` consecutive failures a server is
//!   ejected from the ring (its keys go to the others) for `retry_delay`,
//!   then tried again. While all servers are down, every call fails fast.
//! - **Large values**: a value that does not fit the server's
//!   `item_size_max` (read from `stats settings`, default 1 MiB) is refused
//!   with `Error::ValueTooLarge` before it is sent. Values are not split into
//!   chunks; raise memcached's `-I` for larger items.
//! - **Clearing a prefix**: memcached cannot list keys by prefix, so `clear`
//!   walks `lru_crawler metadump all` on every server and deletes the
//!   matching keys. It costs a pass over every item; `Cache::clear_all` is a
//!   plain `flush_all`.
//! - **TTLs** are whole seconds (rounded up); lifetimes over 30 days are sent
//!   as absolute timestamps, since memcached reads larger numbers that way.
//!   memcached's clock ticks once a second and an item expires when the tick
//!   reaches its time, so an item stored for N s lives between N - 1 and N s:
//!   a 1 s TTL may lapse a moment after the write. Use 2 s or more where
//!   that matters. (Never longer than asked: a late expiry would serve a
//!   value past its TTL.)
#![warn(missing_docs)]

pub mod conn;
pub mod ketama;
pub mod mux;
pub mod proto;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use larder_core::envelope::parse_integer;
use larder_core::{
    async_trait, Backend, Bytes, CacheUrl, Capabilities, ClearScope, Error, Expiry, LeaseGrant,
    LeaseToken, MonotonicMs, Result,
};

use conn::{Conn, ConnError, Until};
use ketama::Ring;
use mux::Mux;
use proto::{Requests, Response};

const NAME: &str = "memcached";
const THIRTY_DAYS: u64 = 30 * 24 * 3600;
/// Bytes memcached needs per item beyond key and value (header, CAS, suffix).
const ITEM_OVERHEAD: usize = 64;

/// Settings of a [`MemcachedBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemcachedConfig {
    /// `host:port` of every server.
    pub servers: Vec<String>,
    /// Longest one operation may take (default 1 s).
    pub deadline: Duration,
    /// How long an ejected server stays out of the ring (default 2 s).
    pub retry_delay: Duration,
    /// Consecutive failures that eject a server (default 2).
    pub failure_limit: u32,
    /// Idle connections kept per server for the classic text commands
    /// (`stats settings`, `flush_all`, `lru_crawler metadump`; default 8).
    /// Meta requests share one multiplexed connection per server.
    pub pool_size: usize,
    /// Largest value accepted; `None` asks each server (`item_size_max`).
    pub max_value_bytes: Option<usize>,
}

impl MemcachedConfig {
    /// Defaults for these servers.
    pub fn new(servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        MemcachedConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            deadline: Duration::from_secs(1),
            retry_delay: Duration::from_secs(2),
            failure_limit: 2,
            pool_size: 8,
            max_value_bytes: None,
        }
    }
}

struct Server {
    addr: String,
    /// The connection every meta request goes through (see [`mux`]).
    mux: Mutex<Option<Mux>>,
    /// Connections for classic text commands (stats, flush_all, metadump),
    /// whose framing is not the meta protocol's.
    idle: Mutex<Vec<Conn>>,
    failures: AtomicU32,
    /// Milliseconds since the backend's epoch until which the server is
    /// ejected; 0 when it is in the ring.
    dead_until_ms: AtomicU64,
    /// `item_size_max`, once known (0 before).
    item_size_max: AtomicUsize,
}

/// A cache backend on a pool of memcached servers.
#[derive(Clone)]
pub struct MemcachedBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: MemcachedConfig,
    servers: Vec<Server>,
    clock: MonotonicMs,
    /// The ring over the servers currently in it, with their bitmask.
    ring: RwLock<(Vec<bool>, Arc<Ring>)>,
}

impl std::fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedBackend")
            .field("config", &self.inner.config)
            .finish()
    }
}

fn conn_error(addr: &str, e: ConnError) -> Error {
    match e {
        ConnError::Timeout(after) => Error::Timeout {
            backend: NAME,
            after,
        },
        other => Error::backend(NAME, format!("{addr}: {other}")),
    }
}

/// An item vivified by `mg … N` for a lease holder: empty, flagged won.
/// It is a miss for every reader.
fn is_placeholder(data: &[u8], f: &proto::Flags) -> bool {
    data.is_empty() && (f.win || f.already_won)
}

/// Lease times are whole seconds in memcached.
fn lease_secs(ttl: Duration) -> u64 {
    (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1)
}

fn unexpected(addr: &str, r: &Response) -> Error {
    Error::backend(NAME, format!("{addr}: unexpected response {r:?}"))
}

fn exptime(ttl: Expiry) -> String {
    let secs = match ttl {
        Expiry::Never => return "T0".into(),
        Expiry::After(d) => (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1),
    };
    if secs > THIRTY_DAYS {
        let now = larder_core::unix_ms() / 1000;
        format!("T{}", now + secs)
    } else {
        format!("T{secs}")
    }
}

impl MemcachedBackend {
    /// Connects lazily: servers are contacted on first use.
    pub fn new(config: MemcachedConfig) -> Result<Self> {
        if config.servers.is_empty() {
            return Err(Error::config("memcached needs at least one server"));
        }
        if config.deadline.is_zero() {
            return Err(Error::config("memcached deadline must be greater than 0"));
        }
        for s in &config.servers {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(Error::config(format!(
                    "memcached server {s:?} is not host:port"
                )));
            }
        }
        let servers: Vec<Server> = config
            .servers
            .iter()
            .map(|addr| Server {
                addr: addr.clone(),
                mux: Mutex::new(None),
                idle: Mutex::new(Vec::new()),
                failures: AtomicU32::new(0),
                dead_until_ms: AtomicU64::new(0),
                item_size_max: AtomicUsize::new(0),
            })
            .collect();
        let live = vec![true; servers.len()];
        let ring = Arc::new(Ring::new(
            servers
                .iter()
                .enumerate()
                .map(|(i, s)| (s.addr.as_str(), i)),
        ));
        Ok(MemcachedBackend {
            inner: Arc::new(Inner {
                config,
                servers,
                clock: MonotonicMs::new(),
                ring: RwLock::new((live, ring)),
            }),
        })
    }

    /// From `memcached://h1:p1,h2:p2?deadline_ms=…&retry_delay_ms=…&failure_limit=…&pool_size=…&max_value_bytes=…`.
    pub fn from_url(url: &mut CacheUrl) -> Result<Self> {
        if !url.path().is_empty() && url.path() != "/" {
            return Err(Error::config(format!(
                "memcached URLs take no path, got {:?}",
                url.as_str()
            )));
        }
        let servers: Vec<String> = url
            .authority()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains(':') {
                    s.to_owned()
                } else {
                    format!("{s}:11211")
                }
            })
            .collect();
        let mut config = MemcachedConfig::new(servers);
        if let Some(ms) = url.take_parsed::<u64>("deadline_ms")? {
            config.deadline = Duration::from_millis(ms);
        }
        if let Some(ms) = url.take_parsed::<u64>("retry_delay_ms")? {
            config.retry_delay = Duration::from_millis(ms);
        }
        if let Some(n) = url.take_parsed::<u32>("failure_limit")? {
            config.failure_limit = n.max(1);
        }
        if let Some(n) = url.take_parsed::<usize>("pool_size")? {
            config.pool_size = n;
        }
        if let Some(n) = url.take_parsed::<usize>("max_value_bytes")? {
            config.max_value_bytes = Some(n);
        }
        Self::new(config)
    }

    /// The configuration.
    pub fn config(&self) -> &MemcachedConfig {
        &self.inner.config
    }

    /// The `host:port` that holds `key` now (ejected servers excluded).
    pub fn server_for(&self, key: &str) -> Option<&str> {
        self.inner
            .pick(key)
            .ok()
            .map(|i| self.inner.servers[i].addr.as_str())
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.clock.now()
    }

    fn is_live(&self, i: usize, now: u64) -> bool {
        let until = self.servers[i].dead_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now
    }

    fn current_ring(&self) -> Arc<Ring> {
        let now = self.now_ms();
        {
            let guard = self.ring.read().unwrap_or_else(|p| p.into_inner());
            if guard
                .0
                .iter()
                .enumerate()
                .all(|(i, &l)| l == self.is_live(i, now))
            {
                return guard.1.clone();
            }
        }
        let live: Vec<bool> = (0..self.servers.len())
            .map(|i| self.is_live(i, now))
            .collect();
        let ring = Arc::new(Ring::new(
            self.servers
                .iter()
                .enumerate()
                .filter(|(i, _)| live[*i])
                .map(|(i, s)| (s.addr.as_str(), i)),
        ));
        let mut guard = self.ring.write().unwrap_or_else(|p| p.into_inner());
        *guard = (live, ring.clone());
        ring
    }

    fn pick(&self, key: &str) -> Result<usize> {
        self.current_ring()
            .server_for(key.as_bytes())
            .ok_or_else(|| {
                Error::backend(
                    NAME,
                    format!(
                        "all memcached servers are down ({}); retrying every {:?}",
                        self.config.servers.join(", "),
                        self.config.retry_delay
                    ),
                )
            })
    }

    fn record_failure(&self, i: usize, e: &ConnError) {
        let s = &self.servers[i];
        let n = s.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.failure_limit {
            s.failures.store(0, Ordering::Relaxed);
            let until = self.now_ms() + self.config.retry_delay.as_millis() as u64;
            s.dead_until_ms.store(until, Ordering::Relaxed);
            s.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
            s.mux.lock().unwrap_or_else(|p| p.into_inner()).take();
            tracing::warn!(server = %s.addr, error = %e, retry_in = ?self.config.retry_delay, "memcached server ejected");
            metrics::counter!("larder_memcached_ejections_total", "server" => s.addr.clone())
                .increment(1);
        }
    }

    fn record_success(&self, i: usize) {
        let s = &self.servers[i];
        s.failures.store(0, Ordering::Relaxed);
        if s.dead_until_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(server = %s.addr, "memcached server back in the ring");
        }
    }

    async fn checkout(&self, i: usize) -> std::result::Result<Conn, ConnError> {
        let idle = self.servers[i]
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        match idle {
            Some(c) => Ok(c),
            None => Conn::connect(&self.servers[i].addr).await,
        }
    }

    fn checkin(&self, i: usize, conn: Conn) {
        let mut idle = self.servers[i]
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.config.pool_size {
            idle.push(conn);
        }
    }

    fn max_value(&self) -> usize {
        self.config.max_value_bytes.unwrap_or(1 << 30)
    }

    /// The live multiplexed connection to server `i`, started if needed.
    fn mux(&self, i: usize) -> Mux {
        let mut slot = self.servers[i]
            .mux
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &*slot {
            Some(m) if !m.is_ended() => m.clone(),
            _ => {
                let m = Mux::start(
                    self.servers[i].addr.clone(),
                    self.max_value(),
                    self.config.deadline,
                );
                *slot = Some(m.clone());
                m
            }
        }
    }

    /// One request/response exchange with server `i`, under the deadline.
    async fn exchange(&self, i: usize, req: Requests, until: Until) -> Result<Vec<Response>> {
        let deadline = self.config.deadline;
        let mux = self.mux(i);
        let result =
            match tokio::time::timeout(deadline, mux.exchange(req.into_bytes(), until)).await {
                Ok(r) => r,
                Err(_) => Err(ConnError::Timeout(deadline)),
            };
        match result {
            Ok(responses) => {
                self.record_success(i);
                Ok(responses)
            }
            Err(e) => {
                self.record_failure(i, &e);
                Err(conn_error(&self.servers[i].addr, e))
            }
        }
    }

    async fn one(&self, i: usize, req: Requests) -> Result<Response> {
        let mut r = self.exchange(i, req, Until::Count(1)).await?;
        r.pop().ok_or_else(|| Error::backend(NAME, "no response"))
    }

    /// A classic text command on server `i` (stats, flush_all, metadump).
    async fn text(&self, i: usize, line: &str, deadline: Duration) -> Result<Vec<String>> {
        let work = async {
            let mut conn = self.checkout(i).await?;
            let lines = conn.text_command(line).await?;
            Ok::<_, ConnError>((conn, lines))
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok((conn, lines))) => {
                self.checkin(i, conn);
                if let Some(last) = lines.last() {
                    if last.starts_with("ERROR")
                        || last.contains("_ERROR")
                        || last.starts_with("BUSY")
                    {
                        return Err(Error::backend(
                            NAME,
                            format!("{}: {line:?} failed: {last}", self.servers[i].addr),
                        ));
                    }
                }
                Ok(lines)
            }
            Ok(Err(e)) => {
                self.record_failure(i, &e);
                Err(conn_error(&self.servers[i].addr, e))
            }
            Err(_) => Err(Error::Timeout {
                backend: NAME,
                after: deadline,
            }),
        }
    }

    /// The largest item server `i` stores, asked once.
    async fn item_limit(&self, i: usize) -> Result<usize> {
        if let Some(n) = self.config.max_value_bytes {
            return Ok(n);
        }
        let known = self.servers[i].item_size_max.load(Ordering::Relaxed);
        if known != 0 {
            return Ok(known);
        }
        let lines = self.text(i, "stats settings", self.config.deadline).await?;
        let n = lines
            .iter()
            .find_map(|l| l.strip_prefix("STAT item_size_max "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1 << 20);
        self.servers[i].item_size_max.store(n, Ordering::Relaxed);
        Ok(n)
    }

    async fn check_size(&self, i: usize, key: &str, value: &[u8]) -> Result<()> {
        let limit = self.item_limit(i).await?;
        let room = limit.saturating_sub(key.len() + ITEM_OVERHEAD);
        if value.len() > room {
            return Err(Error::ValueTooLarge {
                size: value.len(),
                limit: room,
            });
        }
        Ok(())
    }

    /// Groups key indices by server.
    fn by_server<'k>(
        &self,
        keys: impl Iterator<Item = &'k str>,
    ) -> Result<Vec<(usize, Vec<usize>)>> {
        let ring = self.current_ring();
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (n, key) in keys.enumerate() {
            let i = ring
                .server_for(key.as_bytes())
                .ok_or_else(|| Error::backend(NAME, "all memcached servers are down"))?;
            match groups.iter_mut().find(|(s, _)| *s == i) {
                Some((_, v)) => v.push(n),
                None => groups.push((i, vec![n])),
            }
        }
        Ok(groups)
    }

    /// Read, compute, compare-and-set, until it sticks or the deadline
    /// passes. Concurrent `ma` increments change the CAS value on every call,
    /// so losing a race is expected under load: back off with jitter rather
    /// than give up after a fixed number of tries.
    /// Takes back an increment that went past `i64::MAX`, checking the
    /// reply. An undo whose outcome is unknown (a timeout, a dropped
    /// connection) is not retried, since it may have landed and a second
    /// would make the counter wrong: the key is deleted instead (an
    /// idempotent call, retried), so a counter is never left above
    /// `i64::MAX`, where it would read as a miss and refuse every `incr`.
    async fn undo_overflow(&self, i: usize, key: &str, delta_flag: &str) {
        let mut undo = Requests::new();
        undo.ma(key, &["v", "MD", delta_flag]);
        match self.one(i, undo).await {
            // Back below, or still over because another increment landed
            // meanwhile (its own caller undoes it).
            Ok(Response::Va(data, _))
                if std::str::from_utf8(&data).is_ok_and(|t| t.trim().parse::<u64>().is_ok()) =>
            {
                return
            }
            // Deleted or expired meanwhile: nothing left to fix.
            Ok(Response::Nf) => return,
            _ => {}
        }
        tracing::warn!(
            key,
            "memcached: an overflowing incr could not be undone; deleting the counter"
        );
        for _ in 0..3 {
            let mut del = Requests::new();
            del.md(key, &[]);
            if matches!(self.one(i, del).await, Ok(Response::Hd(_) | Response::Nf)) {
                return;
            }
        }
    }

    async fn incr_cas(&self, i: usize, key: &str, delta: i64) -> Result<i64> {
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            if attempt > 0 {
                if started.elapsed() > self.config.deadline {
                    break;
                }
                let cap_us = 50u64 << attempt.min(6);
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=cap_us))).await;
            }
            attempt += 1;
            let mut req = Requests::new();
            req.mg(key, &["v", "c", "t"]);
            let (data, flags) = match self.one(i, req).await? {
                Response::Va(d, f) => (d, f),
                Response::En => {
                    return Err(Error::NotFound {
                        key: key.to_owned(),
                    })
                }
                other => return Err(unexpected(&self.servers[i].addr, &other)),
            };
            let n = parse_integer(&data).ok_or_else(|| Error::NotANumber {
                key: key.to_owned(),
            })?;
            let m = n.checked_add(delta).ok_or_else(|| Error::Overflow {
                key: key.to_owned(),
            })?;
            let cas = flags
                .cas
                .ok_or_else(|| Error::backend(NAME, "mg with c returned no CAS"))?;
            let ttl = match flags.ttl {
                None | Some(-1) => "T0".to_owned(),
                Some(t) => format!("T{}", t.max(1)),
            };
            let cas_flag = format!("C{cas}");
            let mut req = Requests::new();
            req.ms(key, m.to_string().as_bytes(), &[&ttl, &cas_flag]);
            match self.one(i, req).await? {
                Response::Hd(_) => return Ok(m),
                Response::Nf => {
                    return Err(Error::NotFound {
                        key: key.to_owned(),
                    })
                }
                Response::Ex | Response::Ns => continue,
                other => return Err(unexpected(&self.servers[i].addr, &other)),
            }
        }
        Err(Error::Timeout {
            backend: NAME,
            after: self.config.deadline,
        })
    }
}

#[async_trait]
impl Backend for MemcachedBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
            .with_prefix_clear(true)
            .with_batch(true)
            .with_shared(true)
            .with_leases(true)
            .with_compare_and_set(true)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let inner = &self.inner;
        let i = inner.pick(key)?;
        let mut req = Requests::new();
        req.mg(key, &["v"]);
        match inner.one(i, req).await? {
            Response::Va(d, f) if is_placeholder(&d, &f) => Ok(None),
            Response::Va(d, _) => Ok(Some(d)),
            Response::En => Ok(None),
            other => Err(unexpected(&inner.servers[i].addr, &other)),
        }
    }

    async fn has_key(&self, key: &str) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    /// Native leases: `mg` with `N` (vivify a placeholder on a miss, with the
    /// lease time as its TTL) and `R` (win the recache of a present item);
    /// memcached answers `W` to one caller and `Z` to the others. The winner
    /// of a present item shortens it to the lease time, so a holder that dies
    /// blocks the refresh for at most that long (others serve the stale
    /// value meanwhile). The fill is an `ms` with the CAS seen at the win: a
    /// `delete` or a `set` in between makes it fail.
    async fn lease_acquire(
        &self,
        key: &str,
        ttl: Duration,
        seen: Option<Bytes>,
    ) -> Result<LeaseGrant> {
        let inner = &self.inner;
        let i = inner.pick(key)?;
        let secs = lease_secs(ttl);
        let n = format!("N{secs}");
        let mut req = Requests::new();
        req.mg(key, &["c", "v", "t", &n, "R2000000000"]);
        let (data, flags) = match inner.one(i, req).await? {
            Response::Va(d, f) => (d, f),
            Response::Hd(f) => (Bytes::new(), f),
            Response::En => return Ok(LeaseGrant::Held),
            other => return Err(unexpected(&inner.servers[i].addr, &other)),
        };
        if !flags.win {
            return Ok(LeaseGrant::Held);
        }
        let mut cas = flags
            .cas
            .ok_or_else(|| Error::backend(NAME, "mg with c returned no CAS"))?;
        if !is_placeholder(&data, &flags) && seen.as_deref() != Some(&data[..]) {
            // We won an item that changed since the caller read it: someone
            // just filled it, and the caller will read that value. Give the
            // win back (re-store it unchanged, same TTL, under its CAS) so
            // its own expiry can be won later.
            let t = match flags.ttl {
                None | Some(-1) => "T0".to_owned(),
                Some(t) => format!("T{}", t.max(1)),
            };
            let c = format!("C{cas}");
            let mut unwin = Requests::new();
            unwin.ms(key, &data, &[&t, &c]);
            match inner.one(i, unwin).await? {
                Response::Hd(_) | Response::Ex | Response::Nf | Response::Ns => {}
                other => return Err(unexpected(&inner.servers[i].addr, &other)),
            }
            return Ok(LeaseGrant::Held);
        }
        if !is_placeholder(&data, &flags) {
            let t = format!("T{secs}");
            let mut touch = Requests::new();
            touch.mg(key, &["c", &t]);
            match inner.one(i, touch).await? {
                Response::Hd(f) => cas = f.cas.unwrap_or(cas),
                // Deleted meanwhile: the fill's CAS will fail, as it should.
                Response::En => {}
                other => return Err(unexpected(&inner.servers[i].addr, &other)),
            }
        }
        Ok(LeaseGrant::Won(LeaseToken::new(seen).with_cas(cas)))
    }

    async fn lease_fill(
        &self,
        key: &str,
        value: Bytes,
        ttl: Expiry,
        lease: &LeaseToken,
    ) -> Result<bool> {
        let inner = &self.inner;
        let i = inner.pick(key)?;
        inner.check_size(i, key, &value).await?;
        let c = format!("C{}", lease.cas());
        let mut req = Requests::new();
        req.ms(key, &value, &[&exptime(ttl), &c]);
        match inner.one(i, req).await? {
            Response::Hd(_) => Ok(true),
            Response::Ex | Response::Nf | Response::Ns => Ok(false),
            other => Err(unexpected(&inner.servers[i].addr, &other)),
        }
    }

    async fn lease_release(&self, key: &str, lease: &LeaseToken) -> Result<()> {
        // A placeholder is removed so the next caller computes at once; a
        // won stale item lapses at the end of the lease (it was shortened).
        if lease.seen().is_some() {
            return Ok(());
        }
        let inner = &self.inner;
        let i = inner.pick(key)?;
        let c = format!("C{}", lease.cas());
        let mut req = Requests::new();
        req.md(key, &[&c]);
        match inner.one(i, req).await? {
            Response::Hd(_) | Response::Ex | Response::Nf => Ok(()),
            other => Err(unexpected(&inner.servers[i].addr, &other)),
        }
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let inner = &self.inner;
        let groups = inner.by_server(keys.iter().copied())?;
        let results = join_all(groups.iter().map(|(i, idx)| async move {
            let mut req = Requests::new();
            for &n in idx {
                let opaque = format!("O{n}");
                req.mg(keys[n], &["v", "q", &opaque]);
            }
            req.mn();
            inner.exchange(*i, req, Until::Mn).await.map(|r| (*i, r))
        }))
        .await;
        let mut out = vec![None; keys.len()];
        for r in results {
            let (i, responses) = r?;
            for resp in responses {
                match resp {
                    Response::Va(d, f) if is_placeholder(&d, &f) => {}
                    Response::Va(d, f) => {
                        let n = f.opaque.map(|o| o as usize).filter(|&n| n < keys.len());
                        let n = n.ok_or_else(|| {
                            unexpected(&inner.servers[i].addr, &Response::Va(d.clone(), f))
                        })?;
                        out[n] = Some(d);
                    }
                    Response::Mn => {}
                    other => return Err(unexpected(&inner.servers[i].addr, &other)),
                }
            }
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()> {
        let inner = &self.inner;
        let i = inner.pick(key)?;
        inner.check_size(i, key, &value).await?;
        let mut req = Requests::new();
        req.ms(key, &value, &[&exptime(ttl)]);
        match inner.one(i, req).await? {
            Response::Hd(_) => Ok(()),
            Response::ServerError(m) if m.contains("too large") => Err(Error::ValueTooLarge {
                size: value.len(),
                limit: inner.item_limit(i).await.unwrap_or(0),
            }),
            other => Err(unexpected(&inner.servers[i].addr, &other)),
        }
    }

    async fn set_many(&self, entries: &[(&str, Bytes)], ttl: Expiry) -> Result<Vec<String>> {
        let inner = &self.inner;
        let t = exptime(ttl);
        let groups = inner.by_server(entries.iter().map(|(k, _)| *k))?;
        let t = &t;
        let results = join_all(groups.iter().map(|(i, idx)| async move {
            let mut failed: Vec<usize> = Vec::new();
            let mut sent: Vec<usize> = Vec::new();
            let mut req = Requests::new();
            for &n in idx {
                let (k, v) = &entries[n];
                if inner.check_size(*i, k, v).await.is_err() {
                    failed.push(n);
                    continue;
                }
                req.ms(k, v, &[t]);
                sent.push(n);
            }
            if sent.is_empty() {
                return Ok::<_, Error>(failed);
            }
            // Not quiet: one answer per entry, in order, so every failure
            // is attributed to its key.
            match inner.exchange(*i, req, Until::Count(sent.len())).await {
                Ok(responses) => {
                    for (n, r) in sent.iter().zip(responses) {
                        if !matches!(r, Response::Hd(_)) {
                            tracing::warn!(server = %inner.servers[*i].addr, response = ?r, "set_many: entry not stored");
                            failed.push(*n);
                        }
                    }
                    Ok(failed)
                }
                Err(e) => {
                    tracing::warn!(server = %inner.servers[*i].addr, error = %e, "set_many: server failed");
                    Ok(idx.clone())
                }
            }
        }))
        .await;
        let mut failed = Vec::new();
        for r in results {
            for n in r? {
                failed.push(entries[n].0.to_owned());
            }
        }
        Ok(failed)
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
        let inner = &self.inner;
        let i = inner.pick(key)?;
        inner.check_size(i, key, &value).await?;
        let mut req = Requests::new();
        req.ms(key, &value, &[&exptime(ttl), "ME"]);
        match inner.one(i, req).await? {
            Response::Hd(_) => Ok(true),
            Response::Ns => Ok(false),
            other => Err(unexpected(&inner.servers[i].addr, &other)),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let inner = &self.inner;
        let i = inner.pick(key)?;
        let mut req = Requests::new();
        req.md(key, &[]);
        match inner.one(i, req).await? {
            Response::Hd(_) => Ok(true),
            Response::Nf => Ok(false),
            other => Err(unexpected(&inner.servers[i].addr, &other)),
        }
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let inner = &self.inner;
        let groups = inner.by_server(keys.iter().copied())?;
        let results = join_all(groups.iter().map(|(i, idx)| async move {
            let mut req = Requests::new();
            for &n in idx {
                req.md(keys[n], &["q"]);
            }
            req.mn();
            let responses = inner.exchange(*i, req, Until::Mn).await?;
            // Quiet md reports only misses (NF); everything else was deleted.
            let missing = responses
                .iter()
                .filter(|r| matches!(r, Response::Nf))
                .count();
            if let Some(bad) = responses
                .iter()
                .find(|r| !matches!(r, Response::Nf | Response::Mn | Response::Hd(_)))
            {
                return Err(unexpected(&inner.servers[*i].addr, bad));
            }
            Ok::<_, Error>((idx.len() - missing) as u64)
        }))
        .await;
        let mut n = 0;
        for r in results {
            n += r?;
        }
        Ok(n)
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        let inner = &self.inner;
        let i = inner.pick(key)?;
        if delta < 0 {
            return inner.incr_cas(i, key, delta).await;
        }
        let d = format!("D{delta}");
        let mut req = Requests::new();
        req.ma(key, &["v", &d]);
        match inner.one(i, req).await? {
            Response::Va(data, _) => {
                let text = std::str::from_utf8(&data).unwrap_or("");
                let n: u64 = text.trim().parse().map_err(|_| {
                    Error::backend(NAME, format!("ma returned a non-number {text:?}"))
                })?;
                match i64::try_from(n) {
                    Ok(v) => Ok(v),
                    Err(_) => {
                        // Past i64: undo (exact, since both values are below
                        // 2^64) and report the overflow.
                        inner.undo_overflow(i, key, &d).await;
                        Err(Error::Overflow {
                            key: key.to_owned(),
                        })
                    }
                }
            }
            Response::Nf => Err(Error::NotFound {
                key: key.to_owned(),
            }),
            // Non-numeric to memcached: text, an envelope, or a negative
            // number (memcached counters are unsigned).
            Response::ClientError(_) => inner.incr_cas(i, key, delta).await,
            other => Err(unexpected(&inner.servers[i].addr, &other)),
        }
    }

    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool> {
        let inner = &self.inner;
        let i = inner.pick(key)?;
        let mut req = Requests::new();
        req.mg(key, &[&exptime(ttl)]);
        match inner.one(i, req).await? {
            Response::Hd(_) => Ok(true),
            Response::En => Ok(false),
            other => Err(unexpected(&inner.servers[i].addr, &other)),
        }
    }

    async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
        let inner = &self.inner;
        let long = inner.config.deadline * 30;
        for i in 0..inner.servers.len() {
            match scope {
                ClearScope::All => {
                    inner.text(i, "flush_all", long).await?;
                }
                ClearScope::Prefix(prefix) => {
                    // One crawler per server: a second dump gets "BUSY"
                    // while another client's runs. Wait for it.
                    let started = Instant::now();
                    let lines = loop {
                        match inner.text(i, "lru_crawler metadump all", long).await {
                            Err(e)
                                if e.to_string().contains("BUSY") && started.elapsed() < long =>
                            {
                                tokio::time::sleep(Duration::from_millis(fastrand::u64(5..50)))
                                    .await;
                            }
                            other => break other?,
                        }
                    };
                    let keys: Vec<String> = lines
                        .iter()
                        .filter_map(|l| l.strip_prefix("key="))
                        .filter_map(|rest| rest.split(' ').next())
                        .map(|enc| {
                            form_urlencoded::parse(format!("k={enc}").as_bytes())
                                .next()
                                .map(|(_, v)| v.into_owned())
                                .unwrap_or_default()
                        })
                        .filter(|k| k.starts_with(prefix))
                        .collect();
                    for chunk in keys.chunks(500) {
                        let mut req = Requests::new();
                        for k in chunk {
                            req.md(k, &["q"]);
                        }
                        req.mn();
                        inner.exchange(i, req, Until::Mn).await?;
                    }
                }
            }
        }
        Ok(())
    }
}
