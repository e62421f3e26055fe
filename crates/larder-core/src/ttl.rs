//! Time-to-live: how long an entry stays readable.

use std::time::Duration;

/// How long a value stays in the cache, as the caller asks for it.
///
/// Follows Django's `timeout` argument:
///
/// | Django            | larder                         |
/// |-------------------|--------------------------------|
/// | `DEFAULT_TIMEOUT` | [`Ttl::Default`]               |
/// | `None`            | [`Ttl::Never`]                 |
/// | `300`             | `Ttl::After(Duration::from_secs(300))` or `Ttl::secs(300)` |
/// | `0` or negative   | `Ttl::After(Duration::ZERO)` or `Ttl::secs(-1)`: expire at once |
///
/// A zero TTL means "expire now": `set` with it removes any stored value and
/// the key is not retrievable afterwards, exactly as in Django.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Ttl {
    /// The cache's configured default (300 seconds unless configured otherwise).
    #[default]
    Default,
    /// Never expires (the entry may still be evicted by a bounded backend).
    Never,
    /// Expires after this duration; zero means "expire at once".
    After(Duration),
}

impl Ttl {
    /// A TTL in whole seconds; zero or negative means "expire at once".
    pub const fn secs(secs: i64) -> Ttl {
        if secs <= 0 {
            Ttl::After(Duration::ZERO)
        } else {
            Ttl::After(Duration::from_secs(secs as u64))
        }
    }

    /// Resolves [`Ttl::Default`] against a cache's default.
    pub fn resolve(self, default: Expiry) -> Resolved {
        match self {
            Ttl::Default => match default {
                Expiry::Never => Resolved::Store(Expiry::Never),
                Expiry::After(d) => Resolved::Store(Expiry::After(d)),
            },
            Ttl::Never => Resolved::Store(Expiry::Never),
            Ttl::After(d) if d.is_zero() => Resolved::ExpireNow,
            Ttl::After(d) => Resolved::Store(Expiry::After(d)),
        }
    }
}

impl From<Duration> for Ttl {
    fn from(d: Duration) -> Self {
        Ttl::After(d)
    }
}

impl From<Option<Duration>> for Ttl {
    /// `None` means never expire, as Django's `timeout=None`.
    fn from(d: Option<Duration>) -> Self {
        match d {
            Some(d) => Ttl::After(d),
            None => Ttl::Never,
        }
    }
}

/// The expiry a backend is asked to apply. Never zero: the [`Cache`](crate::Cache)
/// handles "expire at once" itself, so backends only see real lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expiry {
    /// Keep until deleted or evicted.
    Never,
    /// Keep for this long (always greater than zero).
    After(Duration),
}

/// What a [`Ttl`] means once the cache's default is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Store with this expiry.
    Store(Expiry),
    /// Do not store; remove what is there.
    ExpireNow,
}
