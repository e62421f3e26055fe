//! # larder-mem
//!
//! The in-process memory backend for [larder](https://docs.rs/larder), on
//! [quick_cache](https://docs.rs/quick_cache) (S3-FIFO eviction).
//!
//! quick_cache was chosen by measurement: a single-threaded get hit of a
//! 100-byte value over 10k keys costs ~36 ns there against ~200 ns for moka
//! (see `docs/BENCHMARKS.md`). It has no per-entry TTL, so each entry carries
//! its own deadline, checked on read against a coarse monotonic clock
//! (precision: the kernel tick, 1-4 ms); expired entries are dropped when
//! read or evicted by the size bound.
//!
//! Bounded either by a number of entries (default 100,000) or by bytes
//! (key + value + ~64 bytes of bookkeeping per entry). `add`, `incr` and
//! `touch` run under quick_cache's shard lock, so they are atomic.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! use larder_core::{Cache, Ttl};
//! use larder_mem::MemBackend;
//!
//! let cache = Cache::new(MemBackend::with_max_entries(10_000));
//! cache.set("hits", &0, Ttl::secs(60)).await?;
//! assert_eq!(cache.incr("hits", 1).await?, 1);
//! # Ok::<(), larder_core::Error>(()) }).unwrap();
//! ```
#![warn(missing_docs)]

use std::sync::Arc;

use coarsetime::Instant;

use larder_core::envelope::parse_integer;
use larder_core::{
    async_trait, Backend, Bytes, CacheUrl, Capabilities, ClearScope, Error, Expiry, Result,
    WriteGenerations,
};
use quick_cache::sync::{Cache as QuickCache, EntryAction, EntryResult};
use quick_cache::Weighter;

/// Default bound when none is given.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// Bookkeeping bytes counted per entry when bounding by bytes.
const ENTRY_OVERHEAD: u64 = 64;

/// How a [`MemBackend`] is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemBound {
    /// At most this many entries.
    Entries(u64),
    /// At most this many bytes of keys, values and bookkeeping.
    Bytes(u64),
}

#[derive(Clone)]
struct Entry {
    value: Bytes,
    /// Clock ticks since the backend's epoch; 0 means never.
    expires_at: u64,
}

impl Entry {
    #[inline]
    fn expired(&self, clock: &Clock) -> bool {
        self.expires_at != 0 && self.expires_at <= clock.now()
    }
}

/// The clock for expiry: `CLOCK_MONOTONIC_COARSE`, which costs a few
/// nanoseconds where `Instant::now()` costs ~25 ns on a VM — that was a
/// quarter of a get hit. Its resolution is the kernel tick (1-4 ms), so
/// entries expire within a few milliseconds of their TTL.
#[derive(Clone, Copy)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            epoch: Instant::now_without_cache_update(),
        }
    }

    /// Clock ticks (coarsetime's 32.32 fixed-point seconds) since the
    /// backend was made; never 0, so 0 can mean "no deadline". Ticks are
    /// compared as they are, without converting to nanoseconds.
    #[inline]
    fn now(&self) -> u64 {
        Instant::now_without_cache_update()
            .duration_since(self.epoch)
            .as_ticks()
            .max(1)
    }

    fn deadline(&self, ttl: Expiry) -> u64 {
        match ttl {
            Expiry::Never => 0,
            Expiry::After(d) => self
                .now()
                .saturating_add(coarsetime::Duration::from(d).as_ticks()),
        }
    }
}

#[derive(Clone, Copy)]
struct MemWeighter {
    by_bytes: bool,
}

impl Weighter<String, Entry> for MemWeighter {
    fn weight(&self, key: &String, val: &Entry) -> u64 {
        if self.by_bytes {
            key.len() as u64 + val.value.len() as u64 + ENTRY_OVERHEAD
        } else {
            1
        }
    }
}

/// An in-process cache backend. Not shared between processes.
pub struct MemBackend {
    map: QuickCache<String, Entry, MemWeighter>,
    bound: MemBound,
    clock: Clock,
    /// Shared by every `Cache` over this backend: stale-set protection
    /// covers them all, not only one `Cache` and its clones.
    generations: Arc<WriteGenerations>,
}

impl std::fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBackend")
            .field("bound", &self.bound)
            .field("len", &self.map.len())
            .finish()
    }
}

impl Default for MemBackend {
    fn default() -> Self {
        Self::new(MemBound::Entries(DEFAULT_MAX_ENTRIES))
    }
}

impl MemBackend {
    /// A backend with the given bound.
    pub fn new(bound: MemBound) -> Self {
        let map = match bound {
            MemBound::Entries(n) => {
                let n = n.max(1);
                QuickCache::with_weighter(n as usize, n, MemWeighter { by_bytes: false })
            }
            MemBound::Bytes(b) => {
                let b = b.max(ENTRY_OVERHEAD);
                let est = (b / 256).max(16) as usize;
                QuickCache::with_weighter(est, b, MemWeighter { by_bytes: true })
            }
        };
        MemBackend {
            map,
            bound,
            clock: Clock::new(),
            generations: Arc::default(),
        }
    }

    /// Bounded to `n` entries.
    pub fn with_max_entries(n: u64) -> Self {
        Self::new(MemBound::Entries(n))
    }

    /// Bounded to `bytes` bytes.
    pub fn with_max_bytes(bytes: u64) -> Self {
        Self::new(MemBound::Bytes(bytes))
    }

    /// Builds from `mem://?max_entries=N` or `mem://?max_bytes=N`, taking
    /// those options out of the URL.
    pub fn from_url(url: &mut CacheUrl) -> Result<Self> {
        if !url.authority().is_empty() || !url.path().is_empty() {
            return Err(Error::config(format!(
                "mem:// takes no host or path, got {:?}; write options as mem://?max_entries=N",
                url.as_str()
            )));
        }
        let entries = url.take_parsed::<u64>("max_entries")?;
        let bytes = url.take_parsed::<u64>("max_bytes")?;
        let bound = match (entries, bytes) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "mem:// takes max_entries or max_bytes, not both",
                ))
            }
            (Some(0), _) | (_, Some(0)) => {
                return Err(Error::config("mem:// bound must be greater than 0"))
            }
            (Some(n), None) => MemBound::Entries(n),
            (None, Some(b)) => MemBound::Bytes(b),
            (None, None) => MemBound::Entries(DEFAULT_MAX_ENTRIES),
        };
        Ok(Self::new(bound))
    }

    /// The bound.
    pub fn bound(&self) -> MemBound {
        self.bound
    }

    /// Entries held now, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn check_fits(&self, key: &str, value: &Bytes) -> Result<()> {
        if let MemBound::Bytes(_) = self.bound {
            // quick_cache silently drops an item heavier than one shard.
            let limit = self.map.shard_capacity();
            let weight = key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD;
            if weight > limit {
                return Err(Error::ValueTooLarge {
                    size: value.len(),
                    limit: limit.saturating_sub(key.len() as u64 + ENTRY_OVERHEAD) as usize,
                });
            }
        }
        Ok(())
    }

    fn live(&self, key: &str) -> Option<Entry> {
        let entry = self.map.get(key)?;
        if entry.expired(&self.clock) {
            self.map.remove_if(key, |e| e.expired(&self.clock));
            return None;
        }
        Some(entry)
    }
}

#[async_trait]
impl Backend for MemBackend {
    fn name(&self) -> &'static str {
        "mem"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_prefix_clear(true).with_batch(true)
    }

    fn get_immediate(&self, key: &str) -> Option<Result<Option<Bytes>>> {
        Some(Ok(self.live(key).map(|e| e.value)))
    }

    fn write_generations(&self) -> Option<Arc<WriteGenerations>> {
        Some(self.generations.clone())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.live(key).map(|e| e.value))
    }

    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        Ok(keys.iter().map(|k| self.live(k).map(|e| e.value)).collect())
    }

    async fn has_key(&self, key: &str) -> Result<bool> {
        Ok(self.live(key).is_some())
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<()> {
        self.check_fits(key, &value)?;
        self.map.insert(
            key.to_owned(),
            Entry {
                value,
                expires_at: self.clock.deadline(ttl),
            },
        );
        Ok(())
    }

    async fn set_many(&self, entries: &[(&str, Bytes)], ttl: Expiry) -> Result<Vec<String>> {
        let expires_at = self.clock.deadline(ttl);
        let mut failed = Vec::new();
        for (key, value) in entries {
            if self.check_fits(key, value).is_err() {
                failed.push((*key).to_owned());
                continue;
            }
            self.map.insert(
                (*key).to_owned(),
                Entry {
                    value: value.clone(),
                    expires_at,
                },
            );
        }
        Ok(failed)
    }

    async fn add(&self, key: &str, value: Bytes, ttl: Expiry) -> Result<bool> {
        self.check_fits(key, &value)?;
        let result = self.map.entry(key, None, |_, e| {
            if e.expired(&self.clock) {
                EntryAction::ReplaceWithGuard
            } else {
                EntryAction::Retain(())
            }
        });
        let guard = match result {
            EntryResult::Vacant(g) | EntryResult::Replaced(g, _) => g,
            EntryResult::Retained(()) | EntryResult::Removed(..) | EntryResult::Timeout => {
                return Ok(false)
            }
        };
        // Err means a concurrent set won the slot: it happened after our
        // check, so the key is present and add did not store.
        Ok(guard
            .insert(Entry {
                value,
                expires_at: self.clock.deadline(ttl),
            })
            .is_ok())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self
            .map
            .remove(key)
            .is_some_and(|(_, e)| !e.expired(&self.clock)))
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64> {
        let result = self.map.entry(key, None, |_, e| {
            if e.expired(&self.clock) {
                return EntryAction::Remove;
            }
            let outcome = match parse_integer(&e.value) {
                None => Err(Error::NotANumber {
                    key: key.to_owned(),
                }),
                Some(n) => match n.checked_add(delta) {
                    None => Err(Error::Overflow {
                        key: key.to_owned(),
                    }),
                    Some(m) => {
                        e.value = Bytes::from(m.to_string());
                        Ok(m)
                    }
                },
            };
            EntryAction::Retain(outcome)
        });
        match result {
            EntryResult::Retained(outcome) => outcome,
            // Dropping a vacant guard releases the slot without storing.
            _ => Err(Error::NotFound {
                key: key.to_owned(),
            }),
        }
    }

    async fn touch(&self, key: &str, ttl: Expiry) -> Result<bool> {
        let result = self.map.entry(key, None, |_, e| {
            if e.expired(&self.clock) {
                return EntryAction::Remove;
            }
            e.expires_at = self.clock.deadline(ttl);
            EntryAction::Retain(())
        });
        Ok(matches!(result, EntryResult::Retained(())))
    }

    async fn clear(&self, scope: ClearScope<'_>) -> Result<()> {
        match scope {
            ClearScope::All => self.map.clear(),
            ClearScope::Prefix(p) => self.map.retain(|k, _| !k.starts_with(p)),
        }
        Ok(())
    }
}
