//! The near cache: a small in-process L1 with a short TTL in front of a
//! shared L2, kept coherent across processes by an invalidation bus.
//!
//! Every write through a [`NearBackend`] (set, add, delete, incr, clear, a
//! lease fill) goes to L2 first, then updates this process's L1 and
//! publishes an [`Invalidation`] on the bus; the other processes drop the
//! key from their L1 when it arrives. So once a write has returned in
//! process A and its message has been delivered to process B, B no longer
//! reads the old value. When the bus is down (or drops messages), the L1
//! TTL bounds how long B may serve it; a subscriber that reconnects clears
//! its whole L1, since it cannot know what it missed.
//!
//! A read that fills L1 from L2 while an invalidation of the same key
//! arrives does not store what it read (each key has an epoch, bumped by
//! every invalidation, checked before the fill).
//!
//! Buses: `larder_redis::RedisBus` (Redis pub/sub) and
//! `larder_sql::PgBus` (PostgreSQL LISTEN/NOTIFY); any [`InvalidationBus`]
//! works.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use larder_core::{Cache, DummyBackend, NearBackend, Ttl};
//! // L1 is normally a `larder_mem::MemBackend`, L2 Redis, memcached or SQL.
//! let near = NearBackend::builder(Arc::new(DummyBackend), Arc::new(DummyBackend))
//!     .l1_ttl(Duration::from_secs(2))
//!     .build()
//!     .await?;
//! let cache = Cache::new(near);
//! cache.set("k", "v", Ttl::secs(60)).await?;
//! # Ok::<(), larder_core::Error>(()) }).unwrap();
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use metrics::Counter;
use tokio::sync::mpsc;

use crate::backend::{Backend, Capabilities, ClearScope, LeaseGrant, LeaseToken};
use crate::error::{Error, Result};
use crate::ttl::Expiry;

/// What an invalidation message removes from the other processes' L1.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// One storage key.
    Key(String),
    /// Every key starting with this prefix.
    Prefix(String),
    /// Everything.
    All,
}

/// A message on the bus: an invalidation and the process that sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// Random id of the sending [`NearBackend`]; it ignores its own messages.
    pub origin: u64,
    /// What to drop.
    pub invalidation: Invalidation,
}

impl BusMessage {
    /// The wire form: `v1 <origin hex> k <key>` / `p <prefix>` / `a`. Keys
    /// never contain spaces or newlines, so it needs no escaping.
    pub fn encode(&self) -> String {
        match &self.invalidation {
            Invalidation::Key(k) => format!("v1 {:016x} k {k}", self.origin),
            Invalidation::Prefix(p) => format!("v1 {:016x} p {p}", self.origin),
            Invalidation::All => format!("v1 {:016x} a", self.origin),
        }
    }

    /// Parses the wire form; `None` for anything else (logged by callers).
    pub fn decode(s: &str) -> Option<BusMessage> {
        let rest = s.strip_prefix("v1 ")?;
        let (origin, rest) = rest.split_once(' ')?;
        let origin = u64::from_str_radix(origin, 16).ok()?;
        let invalidation = match rest.split_once(' ') {
            Some(("k", key)) if !key.is_empty() => Invalidation::Key(key.to_owned()),
            Some(("p", prefix)) => Invalidation::Prefix(prefix.to_owned()),
            None if rest == "a" => Invalidation::All,
            _ => return None,
        };
        Some(BusMessage {
            origin,
            invalidation,
        })
    }
}

/// What a bus delivers to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// A message from some process (possibly this one).
    Message(BusMessage),
    /// The subscription was (re)established: messages may have been lost
    /// before it, so the subscriber clears its L1.
    Resubscribed,
}

/// Carries invalidations between processes.
#[async_trait]
pub trait InvalidationBus: Send + Sync + 'static {
    /// A short name for logs (`"redis"`, `"postgres"`).
    fn name(&self) -> &'static str;
    /// Sends a message to every subscriber (this process's included).
    async fn publish(&self, message: &BusMessage) -> Result<()>;
    /// Starts delivering events to `events` until it is closed, reconnecting
    /// after failures and sending [`BusEvent::Resubscribed`] after each
    /// (re)subscription.
    async fn subscribe(&self, events: mpsc::UnboundedSender<BusEvent>) -> Result<()>;
}

struct Shared {
    l1: Arc<dyn Backend>,
    /// Epochs by hash of the key: bumped by every local write and every
    /// invalidation, so a read that raced with one does not fill L1.
    epochs: crate::backend::WriteGenerations,
    origin: u64,
    applied: AtomicU64,
    l1_hits: Counter,
    l1_misses: Counter,
    invalidations: Counter,
    publish_failures: Counter,
}

impl Shared {
    fn bump(&self, key: &str) {
        self.epochs.bump(key);
    }

    fn bump_all(&self) {
        self.epochs.bump_all();
    }

    async fn drop_local(&self, inv: &Invalidation) {
        let r = match inv {
            Invalidation::Key(k) => {
                self.bump(k);
                self.l1.delete(k).await.map(|_| ())
            }
            Invalidation::Prefix(p) => {
                self.bump_all();
                self.l1.clear(ClearScope::Prefix(p)).await
            }
            Invalidation::All => {
                self.bump_all();
                self.l1.clear(ClearScope::All).await
            }
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "near cache: L1 invalidation failed");
        }
    }

    async fn apply(&self, event: BusEvent) {
        match event {
            BusEvent::Message(m) if m.origin == self.origin => {}
            BusEvent::Message(m) => {
                self.invalidations.increment(1);
                self.drop_local(&m.invalidation).await;
            }
            BusEvent::Resubscribed => {
                tracing::info!("near cache: bus (re)subscribed; L1 cleared");
                self.drop_local(&Invalidation::All).await;
            }
        }
        self.applied.fetch_add(1, Ordering::Release);
    }
}

/// Configures a [`NearBackend`].
#[must_use]
pub struct NearBuilder {
    l1: Arc<dyn Backend>,
    l2: Arc<dyn Backend>,
    l1_ttl: Duration,
    bus: Option<Arc<dyn InvalidationBus>>,
    name: String,
}

impl NearBuilder {
    /// How long a value may live in L1 (default 5 s): the bound on
    /// staleness when the bus is down.
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }
    /// The invalidation bus (none: L1s expire by TTL only).
    pub fn bus(mut self, bus: Arc<dyn InvalidationBus>) -> Self {
        self.bus = Some(bus);
        self
    }
    /// Names the near cache in metrics (default `"near"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Subscribes to the bus and builds the backend. Needs a tokio runtime.
    pub async fn build(self) -> Result<NearBackend> {
        if self.l1_ttl.is_zero() {
            return Err(Error::config("a near cache needs a positive L1 TTL"));
        }
        let label = self.name;
        let shared = Arc::new(Shared {
            l1: self.l1,
            epochs: crate::backend::WriteGenerations::new(),
            origin: fastrand::u64(..),
            applied: AtomicU64::new(0),
            l1_hits: metrics::counter!("larder_near_l1_hits_total", "cache" => label.clone()),
            l1_misses: metrics::counter!("larder_near_l1_misses_total", "cache" => label.clone()),
            invalidations: metrics::counter!("larder_near_invalidations_received_total", "cache" => label.clone()),
            publish_failures: metrics::counter!("larder_near_publish_failures_total", "cache" => label),
        });
        if let Some(bus) = &self.bus {
            let (tx, mut rx) = mpsc::unbounded_channel();
            bus.subscribe(tx).await?;
            let weak = Arc::downgrade(&shared);
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let Some(shared) = weak.upgrade() else { break };
                    shared.apply(event).await;
                }
            });
        }
        Ok(NearBackend {
            shared,
            l2: self.l2,
            l1_ttl: self.l1_ttl,
            bus: self.bus,
        })
    }
}

/// A two-tier backend: an in-process L1 in front of a shared L2, with an
/// invalidation bus. See the [module docs](self).
pub struct NearBackend {
    shared: Arc<Shared>,
    l2: Arc<dyn Backend>,
    l1_ttl: Duration,
    bus: Option<Arc<dyn InvalidationBus>>,
}

impl std::fmt::Debug for NearBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearBackend")
            .field("l1", &self.shared.l1.name())
            .field("l2", &self.l2.name())
            .field("l1_ttl", &self.l1_ttl)
            .field("bus", &self.bus.as_ref().map(|b| b.name()))
            .finish()
    }
}

impl NearBackend {
    /// A near cache of `l1` (an in-process backend such as
    /// `larder_mem::MemBackend`) in front of `l2`.
    pub fn builder(l1: Arc<dyn Backend>, l2: Arc<dyn Backend>) -> NearBuilder {
        NearBuilder {
            l1,
            l2,
            l1_ttl: Duration::from_secs(5),
            bus: None,
            name: "near".to_owned(),
        }
    }

    /// Bus events this process has applied (messages from others, its own,
    /// resubscriptions): lets tests and operators see delivery.
    pub fn bus_events_applied(&self) -> u64 {
        self.shared.applied.load(Ordering::Acquire)
    }

    /// The shared tier.
    pub fn l2(&self) -> &Arc<dyn Backend> {
        &self.l2
    }

    fn l1_expiry(&self, ttl: Expiry) -> Expiry {
        match ttl {
            Expiry::Never => Expiry::After(self.l1_ttl),
            Expiry::After(d) => Expiry::After(d.min(self.l1_ttl)),
        }
    }

    /// After a write to L2: fence concurrent L1 fills, update L1, tell the
    /// other processes. A failed publish is logged, not an error: the write
    /// happened, and L1 TTLs bound the staleness.
    async fn after_write(&self, key: &str, l1_value: Option<(Bytes, Expiry)>) {
        self.shared.bump(key);
        let r = match l1_value {
            Some((v, ttl)) => self.shared.l1.set(key, v, self.l1_expiry(ttl)).await,
            None => self.shared.l1.delete(key).await.map(|_| ()),
        };
        if let Err(e) = r {
            tracing::error!(key, error = %e, "near cache: L1 update failed");
        }
        self.publish(Invalidation::Key(key.to_owned())).await;
    }

    async fn publish(&self, invalidation: Invalidation) {
        let Some(bus) = &self.bus else { return };
        let message = BusMessage {
            origin: self.shared.origin,
            invalidation,
        };
        if let Err(e) = bus.publish(&message).await {
            self.shared.publish_failures.increment(1);
            tracing::warn!(bus = bus.name(), error = %e, "near cache: invalidation not published; other processes may serve the old value until their L1 TTL");
        }
    }

    async fn fill_l1(&self, key: &str, epoch: u64, value: &Bytes) {
        // An invalidation that arrived while we read L2 wins.
        if self.shared.epochs.get(key) != epoch {
            return;
        }
        let exp = Expiry::After(self.l1_ttl);
        if let Err(e) = self.shared.l1.set(key, value.clone(), exp).await {
            tracing::error!(key, error = %e, "near cache: L1 fill failed");
        }
    }

    async fn l1_get(&self, key: &str) -> Option<Bytes> {
        let l1 = &self.shared.l1;
        let r = match l1.get_immediate(key) {
            Some(r) => r,
            None => l1.get(key).await,
        };
        r.ok().flatten()
    }
}

#[async_trait]
impl Backend for NearBackend {
    fn name(&self) -> &'static str {
        "near"
    }

    fn capabilities(&self) -> Capabilities {
        self.l2.capabilities()
    }

    fn get_immediate(&self, key: &str) -> Option<Result<Option<Bytes>>> {
        match self.shared.l1.get_immediate(key) {
            Some(Ok(Some(v))) => {
                self.shared.l1_hits.increment(1);
                Some(Ok(Some(v)))
            }
            _ => None,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        if let Some(v) = self.l1_get(key).await {
            self.shared.l1_hits.increment(1);
            return Ok(Some(v));
        }
        self.shared.l1_misses.increment(1);
        let epoch = self.shared.epochs.get(key);
        let v = self.l2.get(key).await?;
        if let Some(v) = &v {
            self.fill_l1(key, epoch, v).await;
        }
        Ok(v)
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let v = self.l1_get(k).await;
            if v.is_none() {
                missing.push(i);
            }
            out.push(v);
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let epochs: Vec<u64> = missing
            .iter()
            .map(|&i| self.shared.epochs.get(keys[i]))
            .collect();
        let wanted: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
        let got = self.l2.get_many(&wanted).await?;
        for ((&i, epoch), v) in missing.iter().zip(epochs).zip(got) {
            if let Some(v) = &v {
                self.fill_l1(keys[i], epoch, v).await;
            }
            out[i] = v;
        }
        Ok(out)
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()> {
        self.l2.set(key, value.clone(), ttl).await?;
        self.after_write(key, Some((value, ttl))).await;
        Ok(())
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
        let added = self.l2.add(key, value.clone(), ttl).await?;
        if added {
            self.after_write(key, Some((value, ttl))).await;
        }
        Ok(added)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let deleted = self.l2.delete(key).await?;
        self.after_write(key, None).await;
        Ok(deleted)
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let n = self.l2.delete_many(keys).await?;
        for k in keys {
            self.after_write(k, None).await;
        }
        Ok(n)
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        let n = self.l2.incr(key, delta).await?;
        self.after_write(key, None).await;
        Ok(n)
    }

    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool> {
        self.l2.touch(key, ttl).await
    }

    async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
        self.l2.clear(scope).await?;
        let inv = match scope {
            ClearScope::All => Invalidation::All,
            ClearScope::Prefix(p) => Invalidation::Prefix(p.to_owned()),
        };
        self.shared.drop_local(&inv).await;
        self.publish(inv).await;
        Ok(())
    }

    async fn lease_acquire(
        &self,
        key: &str,
        ttl: Duration,
        seen: Option<Bytes>,
    ) -> Result<LeaseGrant> {
        self.l2.lease_acquire(key, ttl, seen).await
    }

    async fn lease_fill(
        &self,
        key: &str,
        value: Bytes,
        ttl: Expiry,
        lease: &LeaseToken,
    ) -> Result<bool> {
        let stored = self.l2.lease_fill(key, value.clone(), ttl, lease).await?;
        if stored {
            self.after_write(key, Some((value, ttl))).await;
        }
        Ok(stored)
    }

    async fn lease_release(&self, key: &str, lease: &LeaseToken) -> Result<()> {
        self.l2.lease_release(key, lease).await
    }

    fn write_generations(&self) -> Option<Arc<crate::backend::WriteGenerations>> {
        self.l2.write_generations()
    }

    async fn close(&self) -> Result<()> {
        self.l2.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A map whose reads can be held back, to interleave them with
    /// invalidations.
    #[derive(Default)]
    struct SlowMap {
        map: Mutex<HashMap<String, Bytes>>,
        read_delay_ms: AtomicU64,
    }

    #[async_trait]
    impl Backend for SlowMap {
        fn name(&self) -> &'static str {
            "slowmap"
        }
        fn capabilities(&self) -> Capabilities {
            Capabilities::NONE.with_prefix_clear(true)
        }
        async fn get(&self, key: &str) -> Result<Option<Bytes>> {
            let v = self.map.lock().unwrap().get(key).cloned();
            let d = self.read_delay_ms.load(Ordering::SeqCst);
            if d > 0 {
                tokio::time::sleep(Duration::from_millis(d)).await;
            }
            Ok(v)
        }
        async fn set(&self, key: &str, value: Bytes, _ttl: Expiry) -> Result<()> {
            self.map.lock().unwrap().insert(key.to_owned(), value);
            Ok(())
        }
        async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
            if self.map.lock().unwrap().contains_key(key) {
                return Ok(false);
            }
            self.set(key, value, ttl).await.map(|_| true)
        }
        async fn delete(&self, key: &str) -> Result<bool> {
            Ok(self.map.lock().unwrap().remove(key).is_some())
        }
        async fn incr(&self, key: &str, _delta: i64) -> Result<i64> {
            Err(Error::NotFound { key: key.into() })
        }
        async fn touch(&self, key: &str, _ttl: Expiry) -> Result<bool> {
            Ok(self.map.lock().unwrap().contains_key(key))
        }
        async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
            let mut m = self.map.lock().unwrap();
            match scope {
                ClearScope::All => m.clear(),
                ClearScope::Prefix(p) => m.retain(|k, _| !k.starts_with(p)),
            }
            Ok(())
        }
    }

    /// An invalidation that arrives while a read is fetching from L2 keeps
    /// the (old) value it fetched out of L1.
    #[tokio::test]
    async fn an_invalidation_during_an_l2_read_wins() {
        let l1 = Arc::new(SlowMap::default());
        let l2 = Arc::new(SlowMap::default());
        let near = Arc::new(
            NearBackend::builder(l1.clone(), l2.clone())
                .l1_ttl(Duration::from_secs(60))
                .build()
                .await
                .unwrap(),
        );
        l2.set("k", Bytes::from_static(b"old"), Expiry::Never)
            .await
            .unwrap();
        l2.read_delay_ms.store(100, Ordering::SeqCst);
        let reader = {
            let near = near.clone();
            tokio::spawn(async move { near.get("k").await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Another process changed the key: its message arrives mid-read.
        l2.map
            .lock()
            .unwrap()
            .insert("k".into(), Bytes::from_static(b"new"));
        near.shared
            .apply(BusEvent::Message(BusMessage {
                origin: near.shared.origin.wrapping_add(1),
                invalidation: Invalidation::Key("k".into()),
            }))
            .await;
        assert_eq!(reader.await.unwrap().as_deref(), Some(&b"old"[..]));
        assert_eq!(
            l1.map.lock().unwrap().get("k"),
            None,
            "the old value was put in L1"
        );
        l2.read_delay_ms.store(0, Ordering::SeqCst);
        assert_eq!(near.get("k").await.unwrap().as_deref(), Some(&b"new"[..]));
    }

    /// A resubscription (messages may have been lost) empties L1.
    #[tokio::test]
    async fn a_resubscription_clears_l1() {
        let l1 = Arc::new(SlowMap::default());
        let near = NearBackend::builder(l1.clone(), Arc::new(SlowMap::default()))
            .build()
            .await
            .unwrap();
        near.set("a", Bytes::from_static(b"1"), Expiry::Never)
            .await
            .unwrap();
        assert!(l1.map.lock().unwrap().contains_key("a"));
        near.shared.apply(BusEvent::Resubscribed).await;
        assert!(l1.map.lock().unwrap().is_empty());
        assert_eq!(near.bus_events_applied(), 1);
    }

    #[test]
    fn messages_round_trip() {
        for inv in [
            Invalidation::Key("app:1:user:7".into()),
            Invalidation::Prefix("app:".into()),
            Invalidation::All,
        ] {
            let m = BusMessage {
                origin: 0xdead_beef,
                invalidation: inv,
            };
            assert_eq!(BusMessage::decode(&m.encode()), Some(m));
        }
        for bad in [
            "",
            "v1",
            "v2 00 a",
            "v1 zz a",
            "v1 00 k ",
            "v1 00 x y",
            "v1 00 a b",
        ] {
            assert_eq!(BusMessage::decode(bad), None, "{bad:?}");
        }
    }
}
