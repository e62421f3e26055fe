//! The one error type every larder operation returns.

use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a cache operation.
///
/// Reads never return an error for a *corrupt or foreign entry*: such an entry
/// reads as a miss and is logged. Errors are reserved for things the caller
/// can act on: a bad key, a value that cannot be stored, a missing counter, a
/// backend that is down or misconfigured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key cannot be stored by this cache: too long, or it contains
    /// characters (spaces, control characters) that backends cannot carry.
    #[error("invalid cache key {key:?}: {reason}")]
    InvalidKey {
        /// The key as the caller gave it (truncated to 300 bytes).
        key: String,
        /// Why it was rejected.
        reason: String,
    },
    /// `incr`, `decr`, `incr_version`, … on a key that is not in the cache.
    #[error("cache key {key:?} not found")]
    NotFound {
        /// The key as the caller gave it.
        key: String,
    },
    /// `incr`/`decr` on a value that is not a stored integer.
    #[error("cache value at {key:?} is not an integer")]
    NotANumber {
        /// The key as the caller gave it.
        key: String,
    },
    /// `incr`/`decr` would leave the range of a 64-bit signed integer.
    #[error("incrementing {key:?} would overflow a 64-bit integer")]
    Overflow {
        /// The key as the caller gave it.
        key: String,
    },
    /// The encoded value is larger than the cache or backend accepts.
    #[error("value of {size} bytes is larger than the limit of {limit} bytes")]
    ValueTooLarge {
        /// Encoded size of the value.
        size: usize,
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The value could not be serialized.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// A URL or option was not understood. The message names the offending part.
    #[error("invalid cache configuration: {0}")]
    Config(String),

    /// Values of this type cannot be read back with the cache's codec:
    /// postcard is not self-describing, and the type (`serde_json::Value`,
    /// an untagged enum, a struct with `#[serde(flatten)]`, …) asks its
    /// format to describe itself. Build the cache with the JSON codec
    /// (`CacheBuilder::codec(Codec::Json)`, or `?codec=json` in its URL).
    #[error("values of type {type_name} cannot be read back with the postcard codec; build the cache with codec=json")]
    CodecCannotRead {
        /// The Rust type asked for.
        type_name: &'static str,
    },
    /// The backend does not implement this operation.
    #[error("the {backend} backend does not support {operation}")]
    Unsupported {
        /// Backend name, e.g. `"mem"`.
        backend: &'static str,
        /// The operation, e.g. `"leases"`.
        operation: &'static str,
    },
    /// The backend did not answer within its deadline.
    #[error("the {backend} backend did not answer within {after:?}")]
    Timeout {
        /// Backend name.
        backend: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// A computation failed: a [`crate::ComputeError::Loader`] converted
    /// into this type, or a run of the same key by a loader of another
    /// error type that this caller waited for. The message is that
    /// loader's error.
    #[error("the computation of {key:?} failed: {message}")]
    Computation {
        /// The key as the caller gave it (empty when converted from a
        /// [`crate::ComputeError`], which does not carry it).
        key: String,
        /// The leader's loader error, as text.
        message: String,
    },
    /// The cache's circuit breaker is open: the backend failed repeatedly
    /// and is skipped until its cool-down ends (see
    /// [`CacheBuilder::breaker`](crate::CacheBuilder::breaker)).
    #[error("the {backend} backend is skipped after repeated failures (circuit breaker open)")]
    CircuitOpen {
        /// Backend name.
        backend: &'static str,
    },
    /// The backend failed (I/O, connection, protocol).
    #[error("the {backend} backend failed: {source}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    /// Wraps any error from a backend's transport or storage.
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }

    /// A configuration error with the given message.
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    /// True when the error says the backend is unreachable or failing (as
    /// opposed to a problem with the caller's key or value). Fail-open policies
    /// treat exactly these errors as misses.
    pub fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            Error::Backend { .. } | Error::Timeout { .. } | Error::CircuitOpen { .. }
        )
    }

    /// Replaces the storage key named in a key-carrying error with the key the
    /// caller used, so errors speak the caller's language.
    pub(crate) fn with_user_key(self, user_key: &str) -> Self {
        match self {
            Error::NotFound { .. } => Error::NotFound {
                key: user_key.to_owned(),
            },
            Error::NotANumber { .. } => Error::NotANumber {
                key: user_key.to_owned(),
            },
            Error::Overflow { .. } => Error::Overflow {
                key: user_key.to_owned(),
            },
            other => other,
        }
    }
}

/// Whether an I/O error of this kind means the server is unreachable (the
/// network's failures: refused, reset, unreachable, timed out, …), as
/// opposed to one it answered in a way we refuse (a TLS certificate, a
/// protocol error). Backends use it to start disconnected rather than fail
/// when their server is down at start.
pub fn io_kind_means_unreachable(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | AddrNotAvailable
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
            | TimedOut
            | BrokenPipe
            | UnexpectedEof
    )
}
