//! The `Backend` trait: what a storage engine must do to serve a [`Cache`](crate::Cache).
//!
//! A backend stores opaque bytes under storage keys. Everything typed
//! (serde, the envelope), key building (prefix, version), TTL defaults and
//! "expire at once" are done by the [`Cache`](crate::Cache) above it, so a
//! backend stays small.
//!
//! # Writing your own backend
//!
//! Implement the required methods; the batch methods (`get_many`,
//! `set_many`, `delete_many`) have correct default implementations that loop,
//! which a backend overrides when it can do a batch in one round trip.
//! Then check it with the conformance suite in `larder-testkit`, which every
//! built-in backend passes.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Mutex;
//! use larder_core::{async_trait, Backend, Bytes, Cache, Capabilities, ClearScope, Error, Expiry, Result};
//!
//! /// A toy backend without expiry, to show the shape.
//! #[derive(Default)]
//! struct MapBackend(Mutex<HashMap<String, Bytes>>);
//!
//! #[async_trait]
//! impl Backend for MapBackend {
//!     fn name(&self) -> &'static str { "map" }
//!     fn capabilities(&self) -> Capabilities { Capabilities::default() }
//!     async fn get(&self, key: &str) -> Result<Option<Bytes>> {
//!         Ok(self.0.lock().unwrap().get(key).cloned())
//!     }
//!     async fn set(&self, key: &str, value: Bytes, _ttl: Expiry) -> Result<()> {
//!         self.0.lock().unwrap().insert(key.to_owned(), value);
//!         Ok(())
//!     }
//!     async fn add(&self, key: &str, value: Bytes, _ttl: Expiry) -> Result<bool> {
//!         let mut map = self.0.lock().unwrap();
//!         if map.contains_key(key) { return Ok(false) }
//!         map.insert(key.to_owned(), value);
//!         Ok(true)
//!     }
//!     async fn delete(&self, key: &str) -> Result<bool> {
//!         Ok(self.0.lock().unwrap().remove(key).is_some())
//!     }
//!     async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
//!         let mut map = self.0.lock().unwrap();
//!         let v = map.get_mut(key).ok_or_else(|| Error::NotFound { key: key.into() })?;
//!         let n = larder_core::envelope::parse_integer(v)
//!             .ok_or_else(|| Error::NotANumber { key: key.into() })?;
//!         let n = n.checked_add(delta).ok_or_else(|| Error::Overflow { key: key.into() })?;
//!         *v = Bytes::from(n.to_string());
//!         Ok(n)
//!     }
//!     async fn touch(&self, key: &str, _ttl: Expiry) -> Result<bool> {
//!         Ok(self.0.lock().unwrap().contains_key(key))
//!     }
//!     async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
//!         let mut map = self.0.lock().unwrap();
//!         match scope {
//!             ClearScope::All => map.clear(),
//!             ClearScope::Prefix(p) => map.retain(|k, _| !k.starts_with(p)),
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let cache = Cache::builder(MapBackend::default()).build().unwrap();
//! cache.set("greeting", "hello", larder_core::Ttl::Default).await?;
//! assert_eq!(cache.get::<String>("greeting").await?, Some("hello".to_owned()));
//! # Ok::<(), Error>(()) }).unwrap();
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::ttl::Expiry;

/// Optional abilities of a backend, which later layers (stampede control,
/// `clear`) consult before relying on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// `clear(ClearScope::Prefix(..))` removes only keys with that prefix.
    /// Without it, [`Cache::clear`](crate::Cache::clear) refuses to clear a
    /// prefixed cache rather than wipe other caches' data.
    pub prefix_clear: bool,
    /// The backend grants leases ([`Backend::lease_acquire`]): one
    /// computation per key across processes, and fills that lose to an
    /// invalidation are dropped.
    pub leases: bool,
    /// The backend supports compare-and-set.
    pub compare_and_set: bool,
    /// `get_many`/`set_many` are one round trip rather than a loop.
    pub batch: bool,
    /// Data survives a restart of the process (file, SQL, Redis with persistence).
    pub persistent: bool,
    /// Several processes can share this backend's data.
    pub shared: bool,
}

impl Capabilities {
    /// All abilities off.
    pub const NONE: Capabilities = Capabilities {
        prefix_clear: false,
        leases: false,
        compare_and_set: false,
        batch: false,
        persistent: false,
        shared: false,
    };

    /// Sets [`prefix_clear`](Self::prefix_clear).
    pub const fn with_prefix_clear(mut self, on: bool) -> Self {
        self.prefix_clear = on;
        self
    }
    /// Sets [`leases`](Self::leases).
    pub const fn with_leases(mut self, on: bool) -> Self {
        self.leases = on;
        self
    }
    /// Sets [`compare_and_set`](Self::compare_and_set).
    pub const fn with_compare_and_set(mut self, on: bool) -> Self {
        self.compare_and_set = on;
        self
    }
    /// Sets [`batch`](Self::batch).
    pub const fn with_batch(mut self, on: bool) -> Self {
        self.batch = on;
        self
    }
    /// Sets [`persistent`](Self::persistent).
    pub const fn with_persistent(mut self, on: bool) -> Self {
        self.persistent = on;
        self
    }
    /// Sets [`shared`](Self::shared).
    pub const fn with_shared(mut self, on: bool) -> Self {
        self.shared = on;
        self
    }
}

/// Proof that a caller holds the computation lease on a key, handed back to
/// [`Backend::lease_fill`] or [`Backend::lease_release`].
///
/// `id` is random and unique per grant; `cas` is the backend's own
/// compare-and-set token where it has one (memcached); `seen` is the entry
/// the caller saw when it asked for the lease (`None`: absent). A fill stores
/// only if the lease is still held *and* the entry is still what was seen, so
/// a `set` or `delete` that raced with the computation wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseToken {
    id: u64,
    cas: u64,
    seen: Option<Bytes>,
}

impl LeaseToken {
    /// A token with a fresh random id.
    pub fn new(seen: Option<Bytes>) -> Self {
        LeaseToken {
            id: fastrand::u64(1..),
            cas: 0,
            seen,
        }
    }
    /// Attaches the backend's compare-and-set token.
    pub fn with_cas(mut self, cas: u64) -> Self {
        self.cas = cas;
        self
    }
    /// The random id of this grant.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The id as 16 hex digits, the form stored in lease entries.
    pub fn id_hex(&self) -> String {
        format!("{:016x}", self.id)
    }
    /// The backend's compare-and-set token (0 when it has none).
    pub fn cas(&self) -> u64 {
        self.cas
    }
    /// The entry seen when the lease was asked for.
    pub fn seen(&self) -> Option<&Bytes> {
        self.seen.as_ref()
    }
    /// Whether a fill may replace `current` (the live entry now, `None`
    /// when absent): it is the entry that was seen, or the seen entry has
    /// gone. Call it only while the lease is still held: every `delete`
    /// breaks the lease, so an entry that is gone while the lease holds
    /// merely expired (or was evicted), and the refresh that outlived it
    /// must be stored. A different entry means someone wrote since: the
    /// fill loses.
    pub fn still_seen(&self, current: Option<&[u8]>) -> bool {
        match current {
            None => true,
            Some(now) => self.seen.as_deref() == Some(now),
        }
    }
}

/// The answer to [`Backend::lease_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// This caller holds the lease until it fills, releases, or the lease
    /// time passes.
    Won(LeaseToken),
    /// Another caller holds a live lease.
    Held,
}

/// The storage key of the lease on `key` for backends that keep leases as
/// entries of their own: `"<key> lease"`. Validated keys never contain a
/// space, so it cannot collide with a user's key, and it starts with `key`,
/// so clearing a prefix clears its leases too.
pub fn lease_key(key: &str) -> String {
    let mut k = String::with_capacity(key.len() + 6);
    k.push_str(key);
    k.push_str(" lease");
    k
}

/// Takes a lease kept as an entry of its own (`lease_key(key)` holding the
/// grant's id), using the backend's atomic `add`: the way backends without
/// native leases (SQL tables) implement [`Backend::lease_acquire`].
pub async fn acquire_lease_by_add<B: Backend + ?Sized>(
    backend: &B,
    key: &str,
    ttl: Duration,
    seen: Option<Bytes>,
) -> Result<LeaseGrant> {
    let lease = LeaseToken::new(seen);
    let won = backend
        .add(
            &lease_key(key),
            Bytes::from(lease.id_hex()),
            Expiry::After(ttl.max(Duration::from_millis(1))),
        )
        .await?;
    Ok(if won {
        LeaseGrant::Won(lease)
    } else {
        LeaseGrant::Held
    })
}

/// Which keys [`Backend::clear`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearScope<'a> {
    /// Every key the backend holds (Django's `clear`).
    All,
    /// Only storage keys starting with this string (e.g. `"myapp:"`).
    Prefix(&'a str),
}

/// The slot of `key` among `slots` (at least 1): FNV-1a, for short keys,
/// no allocation and a good enough spread. The one hash behind every
/// by-key slot table here (write generations, near-cache epochs, the
/// decoded memo).
pub(crate) fn slot_of(key: &str, slots: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % slots.max(1) as u64) as usize
}

/// Write generations by hash of the storage key: stale-set protection for
/// backends without leases.
///
/// Every write through a [`Cache`](crate::Cache) bumps its key's slot, and
/// a computation stores its result only if the slot did not move while it
/// ran, so an invalidation racing with a computation is not overwritten by
/// the stale result. An in-process backend hands out its own
/// ([`Backend::write_generations`]) so that *every* `Cache` built over it
/// shares them; otherwise each `Cache` keeps one (covering its clones).
/// Slots are shared by hash: a collision only ever makes a store more
/// cautious.
pub struct WriteGenerations {
    slots: Box<[std::sync::atomic::AtomicU64]>,
}

impl std::fmt::Debug for WriteGenerations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGenerations")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Default for WriteGenerations {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteGenerations {
    /// Slots kept: enough that unrelated keys rarely share one.
    pub const SLOTS: usize = 1024;

    /// A fresh set of generations, all zero.
    pub fn new() -> Self {
        WriteGenerations {
            slots: (0..Self::SLOTS)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
        }
    }

    fn slot(&self, skey: &str) -> &std::sync::atomic::AtomicU64 {
        &self.slots[slot_of(skey, self.slots.len())]
    }

    /// Marks a write to `skey`.
    pub fn bump(&self, skey: &str) {
        self.slot(skey)
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// The generation of `skey` now.
    pub fn get(&self, skey: &str) -> u64 {
        self.slot(skey).load(std::sync::atomic::Ordering::Acquire)
    }

    /// Marks a write to `skey` only if its generation is still `seen`;
    /// returns whether it did. Of several callers that read the same
    /// generation, exactly one claims it, and any write since makes it
    /// fail: an in-process compare-and-set for backends without leases.
    pub fn claim(&self, skey: &str, seen: u64) -> bool {
        self.slot(skey)
            .compare_exchange(
                seen,
                seen.wrapping_add(1),
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .is_ok()
    }

    /// Marks a write to every key (a clear).
    pub fn bump_all(&self) {
        for g in self.slots.iter() {
            g.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// A storage engine: opaque bytes in and out under storage keys.
///
/// Object-safe, so a [`Cache`](crate::Cache) holds it as `Arc<dyn Backend>`.
/// Keys arrive already validated (at most 250 bytes, no spaces or control
/// characters). Expiries are never zero.
///
/// Semantics every backend follows (the conformance suite checks them):
/// - an expired entry is absent for every operation;
/// - `add` stores only when the key is absent (or expired) and says whether it did;
/// - `incr` works on values that are ASCII decimal integers, is atomic, keeps
///   the entry's expiry, and fails with `NotFound`, `NotANumber` or `Overflow`;
/// - `delete` says whether something was deleted;
/// - `touch` sets a new expiry on a live entry and says whether there was one.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for errors, logs and metrics (`"mem"`, `"redis"`, …).
    fn name(&self) -> &'static str;

    /// What this backend can do beyond the required operations.
    fn capabilities(&self) -> Capabilities;

    /// Reads one entry.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Reads one entry without waiting, for backends that can always answer
    /// at once (in-process ones). `None` means "use [`get`](Self::get)";
    /// that is the default and what every backend doing I/O returns.
    ///
    /// Why it exists: an `async fn` in an object-safe trait returns a boxed
    /// future, an allocation that was ~20% of a memory-backend hit. The
    /// [`Cache`](crate::Cache) tries this first.
    fn get_immediate(&self, key: &str) -> Option<Result<Option<Bytes>>> {
        let _ = key;
        None
    }

    /// Stores an entry, replacing any previous one.
    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()>;

    /// Stores an entry only if the key is absent; returns whether it stored.
    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool>;

    /// Removes an entry; returns whether there was one.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Adds `delta` (which may be negative) to a stored integer and returns
    /// the new value. Atomic; keeps the entry's expiry.
    async fn incr(&self, key: &str, delta: i64) -> Result<i64>;

    /// Gives a live entry a new expiry; returns whether there was one.
    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool>;

    /// Removes the entries in `scope`.
    async fn clear(&self, scope: ClearScope<'_>) -> Result<()>;

    /// Reads several entries; the result has one slot per key, in order.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Stores several entries with one expiry; returns the keys that failed.
    async fn set_many(&self, entries: &[(&str, Bytes)], ttl: Expiry) -> Result<Vec<String>> {
        let mut failed = Vec::new();
        for (key, value) in entries {
            if let Err(e) = self.set(key, value.clone(), ttl).await {
                tracing::warn!(backend = self.name(), key, error = %e, "set_many: entry not stored");
                failed.push((*key).to_owned());
            }
        }
        Ok(failed)
    }

    /// Removes several entries; returns how many existed.
    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let mut n = 0;
        for key in keys {
            n += u64::from(self.delete(key).await?);
        }
        Ok(n)
    }

    /// Whether a live entry exists.
    async fn has_key(&self, key: &str) -> Result<bool> {
        Ok(self.get(key).await?.is_some())
    }

    /// Asks for the computation lease on `key` for `ttl`: at most one caller
    /// across all processes holds a live lease on a key. `seen` is the entry
    /// the caller read just before (`None`: absent); it goes into the token.
    ///
    /// Backends with [`Capabilities::leases`] implement the three lease
    /// methods and make every `delete` (and `clear`) of a key break its lease,
    /// so a computation that started before an invalidation cannot store its
    /// result after it. The default refuses with [`Error::Unsupported`].
    async fn lease_acquire(
        &self,
        key: &str,
        ttl: Duration,
        seen: Option<Bytes>,
    ) -> Result<LeaseGrant> {
        let _ = (key, ttl, seen);
        Err(Error::Unsupported {
            backend: self.name(),
            operation: "leases",
        })
    }

    /// Stores `value` if `lease` is still held and the entry is still the one
    /// it saw, and releases the lease; returns whether it stored. `false`
    /// means an invalidation, a write or a newer lease won: the value is
    /// stale and must not be stored.
    async fn lease_fill(
        &self,
        key: &str,
        value: Bytes,
        ttl: Expiry,
        lease: &LeaseToken,
    ) -> Result<bool> {
        let _ = (key, value, ttl, lease);
        Err(Error::Unsupported {
            backend: self.name(),
            operation: "leases",
        })
    }

    /// Gives a lease up without storing (the computation failed), so the
    /// next caller may compute at once. Releasing a lease that is no longer
    /// held does nothing.
    async fn lease_release(&self, key: &str, lease: &LeaseToken) -> Result<()> {
        let _ = (key, lease);
        Err(Error::Unsupported {
            backend: self.name(),
            operation: "leases",
        })
    }

    /// The write generations every [`Cache`](crate::Cache) over this
    /// backend shares, for backends without leases whose caches all live
    /// in this process (the memory backend). `None` (the default): each
    /// `Cache` keeps its own. See [`WriteGenerations`].
    fn write_generations(&self) -> Option<Arc<WriteGenerations>> {
        None
    }

    /// Releases connections and files. The backend stays usable: the next
    /// call opens what it needs again (the same on every backend, as
    /// Django's `close()` between requests).
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
