//! What can go wrong with views, said so that an operator knows what to do.

/// A boxed error from a user's compute or mapping function.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors from larder-views.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The source database failed (connect, query, outbox).
    #[error("source database: {0}")]
    Source(#[from] sqlx::Error),
    /// The document store failed.
    #[error("view store ({store}): {source}")]
    Store {
        /// Which store.
        store: &'static str,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// A view's compute function failed for a key.
    #[error("view {view:?}, key {key:?}: compute failed: {source}")]
    Compute {
        /// The view.
        view: String,
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: BoxError,
    },
    /// No view of that name is declared.
    #[error("no view named {0:?} is declared")]
    UnknownView(String),
    /// A key that cannot be stored (empty, or longer than 190 bytes).
    #[error("invalid view key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// A stored document does not decode as the requested type.
    #[error("view {view:?}, key {key:?}: stored document does not decode: {source}")]
    Decode {
        /// The view.
        view: String,
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A declaration or configuration that cannot work.
    #[error("view configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn store(store: &'static str, e: impl Into<BoxError>) -> Error {
        Error::Store {
            store,
            source: e.into(),
        }
    }
}

impl From<larder_changes::Error> for Error {
    fn from(e: larder_changes::Error) -> Error {
        Error::Config(e.to_string())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Longest view key, in bytes (fits an indexed VARCHAR(191) on MySQL).
pub const MAX_KEY_LEN: usize = 190;

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            key: key.to_owned(),
            reason: "empty",
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            key: key.chars().take(40).collect::<String>() + "…",
            reason: "longer than 190 bytes",
        });
    }
    Ok(())
}
