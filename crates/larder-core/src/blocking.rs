//! Where a backend runs blocking calls (file I/O, an embedded database).

use std::sync::Arc;

use crate::error::{Error, Result};

/// Where a backend runs its blocking calls.
///
/// The trade-off, measured on the project's machine: a call on a file or
/// database page in the page cache takes ~3-10 µs; handing it to tokio's
/// blocking pool and back costs another ~10 µs. Inline is therefore 2-5x
/// faster for small operations, but a slow disk (or a SQLite checkpoint)
/// then stalls the async worker thread for as long as it lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BlockingIo {
    /// On tokio's blocking pool (`spawn_blocking`): never stalls the async
    /// worker, at the price of a thread hand-off per operation. The default.
    #[default]
    BlockingPool,
    /// On the calling task, within tokio's guidance for work between awaits
    /// on fast local storage.
    Inline,
}

impl BlockingIo {
    /// Parses the `io` option of a URL: `pool` or `inline`.
    pub fn parse(scheme: &str, value: &str) -> Result<BlockingIo> {
        match value {
            "pool" => Ok(BlockingIo::BlockingPool),
            "inline" => Ok(BlockingIo::Inline),
            other => Err(Error::config(format!(
                "option io={other:?} of {scheme}:// is not \"pool\" or \"inline\""
            ))),
        }
    }

    /// Runs `f` on `state` here or on the blocking pool.
    pub async fn run<S, T>(
        self,
        backend: &'static str,
        state: &Arc<S>,
        f: impl FnOnce(&S) -> Result<T> + Send + 'static,
    ) -> Result<T>
    where
        S: Send + Sync + 'static,
        T: Send + 'static,
    {
        if self == BlockingIo::Inline {
            return f(state);
        }
        let state = state.clone();
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(|e| Error::backend(backend, e))?
    }
}
