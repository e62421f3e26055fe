//! Building the storage key from the caller's key, the prefix and the version.

use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The longest storage key any backend accepts, in bytes (memcached's limit,
/// which Django also warns about).
pub const MAX_KEY_BYTES: usize = 250;

/// A custom key function: `(key, prefix, version) -> storage key`, as Django's
/// `KEY_FUNCTION`. The result is still validated (length, characters).
pub type KeyFn = Arc<dyn Fn(&str, &str, u64) -> String + Send + Sync>;

/// How a [`Cache`](crate::Cache) turns the caller's key into the key a backend stores.
///
/// The default form is Django's: `prefix:version:key`. Because a prefix may
/// not contain `:` and the version is a number, two different
/// `(prefix, version, key)` triples never produce the same storage key.
#[derive(Clone)]
pub struct KeyPolicy {
    prefix: Arc<str>,
    key_fn: Option<KeyFn>,
    hash_long_keys: bool,
}

impl std::fmt::Debug for KeyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPolicy")
            .field("prefix", &self.prefix)
            .field("key_fn", &self.key_fn.as_ref().map(|_| "<fn>"))
            .field("hash_long_keys", &self.hash_long_keys)
            .finish()
    }
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy {
            prefix: Arc::from(""),
            key_fn: None,
            hash_long_keys: false,
        }
    }
}

impl KeyPolicy {
    /// Sets the prefix. A prefix may not contain `:` (it separates prefix,
    /// version and key, and allowing it would let two caches collide) nor
    /// characters that are invalid in keys.
    pub fn with_prefix(mut self, prefix: &str) -> Result<Self> {
        if prefix.contains(':') {
            return Err(Error::config(format!(
                "key prefix {prefix:?} contains ':'; ':' separates prefix, version and key, use '.', '/' or '_' instead"
            )));
        }
        if let Some(c) = prefix.chars().find(|c| is_forbidden(*c)) {
            return Err(Error::config(format!(
                "key prefix {prefix:?} contains the character {c:?}; spaces and control characters are not allowed"
            )));
        }
        self.prefix = Arc::from(prefix);
        Ok(self)
    }

    /// Sets a custom key function (Django's `KEY_FUNCTION`).
    pub fn with_key_fn(mut self, f: KeyFn) -> Self {
        self.key_fn = Some(f);
        self
    }

    /// When true, keys whose storage form is longer than [`MAX_KEY_BYTES`]
    /// are replaced by `prefix:version:#` and the SHA-256 of the full key
    /// instead of being rejected.
    pub fn with_hash_long_keys(mut self, on: bool) -> Self {
        self.hash_long_keys = on;
        self
    }

    /// The configured prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// True when a custom key function is set. Then `clear` cannot know which
    /// storage keys belong to this cache.
    pub fn has_key_fn(&self) -> bool {
        self.key_fn.is_some()
    }

    /// The storage-key prefix every key of this cache starts with
    /// (`"prefix:"`), or `None` when a custom key function makes it unknown or
    /// the prefix is empty (then the cache owns the whole keyspace).
    pub fn clear_scope(&self) -> Option<String> {
        if self.key_fn.is_some() || self.prefix.is_empty() {
            None
        } else {
            Some(format!("{}:", self.prefix))
        }
    }

    /// The part of every storage key before the caller's key at `version`
    /// (`"prefix:version:"`), or `None` with a custom key function.
    pub fn head(&self, version: u64) -> Option<Arc<str>> {
        if self.key_fn.is_some() {
            return None;
        }
        let mut s = String::with_capacity(self.prefix.len() + 22);
        s.push_str(&self.prefix);
        s.push(':');
        push_u64(&mut s, version);
        s.push(':');
        Some(Arc::from(s))
    }

    /// Builds and validates the storage key and hands it to `f`, given the
    /// precomputed [`head`](Self::head). On the hot path (printable ASCII
    /// key, default key form) the key is assembled in a reused thread-local
    /// buffer: no allocation and no UTF-8 re-validation. Anything unusual
    /// (non-ASCII keys, hashing, custom key functions, re-entrant use) goes
    /// through [`make_key`](Self::make_key).
    #[inline]
    pub fn with_key<R>(
        &self,
        head: Option<&str>,
        key: &str,
        version: u64,
        f: impl FnOnce(&str) -> R,
    ) -> Result<R> {
        thread_local! {
            static KEY_BUF: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        if let Some(head) = head {
            if head.len() + key.len() <= MAX_KEY_BYTES && key_is_plain_ascii(key) {
                return KEY_BUF.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buf) => {
                        buf.clear();
                        buf.push_str(head);
                        buf.push_str(key);
                        Ok(f(&buf))
                    }
                    // Re-entered from inside `f` (a backend calling a cache).
                    Err(_) => Ok(f(&self.make_key(key, version)?)),
                });
            }
        }
        Ok(f(&self.make_key(key, version)?))
    }

    /// Builds and validates the storage key for `key` at `version`.
    pub fn make_key(&self, key: &str, version: u64) -> Result<String> {
        let full = match &self.key_fn {
            Some(f) => f(key, &self.prefix, version),
            None => {
                let mut s = String::with_capacity(self.prefix.len() + key.len() + 8);
                s.push_str(&self.prefix);
                s.push(':');
                push_u64(&mut s, version);
                s.push(':');
                s.push_str(key);
                s
            }
        };
        if let Some(c) = full.chars().find(|c| is_forbidden(*c)) {
            return Err(Error::InvalidKey {
                key: truncate(key),
                reason: format!(
                    "contains {c:?}; spaces and control characters cannot be stored by memcached-compatible backends"
                ),
            });
        }
        if full.len() > MAX_KEY_BYTES {
            if self.hash_long_keys {
                let digest = Sha256::digest(full.as_bytes());
                let mut s = String::with_capacity(self.prefix.len() + 90);
                s.push_str(&self.prefix);
                s.push(':');
                push_u64(&mut s, version);
                s.push_str(":#");
                for b in digest {
                    let _ = write!(s, "{b:02x}");
                }
                return Ok(s);
            }
            return Err(Error::InvalidKey {
                key: truncate(key),
                reason: format!(
                    "the storage key is {} bytes, over the limit of {MAX_KEY_BYTES}; shorten it or enable hash_long_keys",
                    full.len()
                ),
            });
        }
        Ok(full)
    }
}

/// Printable ASCII without spaces: valid without a closer look.
#[inline]
fn key_is_plain_ascii(key: &str) -> bool {
    key.bytes().all(|b| b > b' ' && b < 0x7f)
}

/// Writes `n` in decimal at the end of `buf`, returning the digits.
fn write_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

fn is_forbidden(c: char) -> bool {
    c == ' ' || c.is_control()
}

fn truncate(key: &str) -> String {
    if key.len() <= 300 {
        return key.to_owned();
    }
    let mut end = 300;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &key[..end])
}

/// Appends a decimal number without going through `fmt` (this is on every
/// operation's path).
fn push_u64(s: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    // The buffer holds only ASCII digits.
    s.push_str(std::str::from_utf8(write_u64(&mut buf, n)).unwrap_or("0"));
}

/// A 32-bit hash of `bytes` that is the same in every process, build and
/// version (FNV-1a; std's hasher is seeded per process): for spreading
/// keys over buckets or channels that several processes must agree on,
/// and that stored data may depend on. Not for anything adversarial.
pub fn stable_hash32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stable_hash_never_changes() {
        // FNV-1a reference values: buckets of stored data depend on them.
        assert_eq!(super::stable_hash32(b""), 0x811c_9dc5);
        assert_eq!(super::stable_hash32(b"a"), 0xe40c_292c);
        assert_eq!(super::stable_hash32(b"foobar"), 0xbf9c_f968);
    }

    use super::*;

    #[test]
    fn default_form_is_djangos() {
        let p = KeyPolicy::default().with_prefix("app").unwrap();
        assert_eq!(p.make_key("user:1", 3).unwrap(), "app:3:user:1");
        assert_eq!(KeyPolicy::default().make_key("k", 1).unwrap(), ":1:k");
    }

    #[test]
    fn prefix_with_colon_is_refused() {
        let err = KeyPolicy::default().with_prefix("a:1").unwrap_err();
        assert!(err.to_string().contains("':'"), "{err}");
    }

    #[test]
    fn length_is_counted_in_bytes() {
        let p = KeyPolicy::default();
        // ":1:" is 3 bytes; 'é' is 2 bytes.
        let ok = "é".repeat(123);
        assert!(p.make_key(&ok, 1).is_ok());
        let too_long = "é".repeat(124);
        assert!(matches!(
            p.make_key(&too_long, 1),
            Err(Error::InvalidKey { .. })
        ));
    }

    #[test]
    fn hashing_is_stable_and_distinct() {
        let p = KeyPolicy::default().with_hash_long_keys(true);
        let a = p.make_key(&"a".repeat(400), 1).unwrap();
        let b = p.make_key(&"b".repeat(400), 1).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, p.make_key(&"a".repeat(400), 1).unwrap());
        assert!(a.len() <= MAX_KEY_BYTES);
        assert!(a.starts_with(":1:#"));
    }

    #[test]
    fn stack_and_heap_keys_agree() {
        let p = KeyPolicy::default().with_prefix("app").unwrap();
        for key in [
            "user:1",
            "",
            "ключ",
            &"k".repeat(240),
            &"k".repeat(300),
            "a b",
        ] {
            for version in [0, 1, 12345, u64::MAX] {
                let head = p.head(version);
                let fast = p.with_key(head.as_deref(), key, version, str::to_owned);
                let slow = p.make_key(key, version);
                assert_eq!(fast.is_ok(), slow.is_ok(), "{key:?} v{version}");
                if let (Ok(a), Ok(b)) = (fast, slow) {
                    assert_eq!(a, b);
                }
            }
        }
    }

    #[test]
    fn numbers_are_written_exactly() {
        let mut s = String::new();
        push_u64(&mut s, 0);
        s.push(',');
        push_u64(&mut s, u64::MAX);
        assert_eq!(s, "0,18446744073709551615");
    }
}
