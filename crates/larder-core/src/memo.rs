//! Decoded values kept beside the bytes they were decoded from, so a hot
//! entry is decoded once rather than on every read.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A small, bounded memo of decoded values for
/// [`Cache::get_memoized`](crate::Cache::get_memoized).
///
/// It is *content-addressed*: a slot (chosen by a hash of the storage key)
/// holds the stored bytes and the value decoded from them, and a read
/// reuses the value only when the bytes the backend returns now are
/// byte-for-byte the ones it was decoded from. The backend is still asked
/// on every read, so the memo never serves anything the backend would not
/// (a write, delete or purge elsewhere is seen at once); it only saves the
/// decoding and the allocations that come with it. Memory is bounded by
/// `slots` entries of at most `max_entry_bytes` stored bytes each (larger
/// values are decoded on every read); a collision replaces the slot.
pub struct DecodedMemo<T> {
    slots: Box<[Mutex<Option<Slot<T>>>]>,
    max_entry_bytes: usize,
}

struct Slot<T> {
    raw: Bytes,
    soft_expiry_unix_ms: u64,
    value: Arc<T>,
}

impl<T> std::fmt::Debug for DecodedMemo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedMemo")
            .field("slots", &self.slots.len())
            .field("max_entry_bytes", &self.max_entry_bytes)
            .finish()
    }
}

impl<T> DecodedMemo<T> {
    /// A memo of `slots` entries (at least 1), each of at most
    /// `max_entry_bytes` stored bytes.
    pub fn new(slots: usize, max_entry_bytes: usize) -> Self {
        DecodedMemo {
            slots: (0..slots.max(1)).map(|_| Mutex::new(None)).collect(),
            max_entry_bytes,
        }
    }

    fn slot(&self, skey: &str) -> &Mutex<Option<Slot<T>>> {
        &self.slots[crate::backend::slot_of(skey, self.slots.len())]
    }

    /// The value decoded from exactly `raw`, and its soft expiry.
    pub(crate) fn find(&self, skey: &str, raw: &Bytes) -> Option<(Arc<T>, u64)> {
        let slot = self.slot(skey).lock().unwrap_or_else(|p| p.into_inner());
        let s = slot.as_ref()?;
        // The same allocation (in-process backends hand out their Bytes),
        // else the same content.
        let same = (s.raw.as_ptr() == raw.as_ptr() && s.raw.len() == raw.len()) || s.raw == *raw;
        same.then(|| (s.value.clone(), s.soft_expiry_unix_ms))
    }

    pub(crate) fn keep(&self, skey: &str, raw: Bytes, soft_expiry_unix_ms: u64, value: Arc<T>) {
        if raw.len() > self.max_entry_bytes {
            return;
        }
        *self.slot(skey).lock().unwrap_or_else(|p| p.into_inner()) = Some(Slot {
            raw,
            soft_expiry_unix_ms,
            value,
        });
    }
}
