//! The dummy backend: stores nothing, like Django's `DummyCache`.
//!
//! Useful in development and tests to run code paths with caching switched
//! off without changing them.

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{Backend, Capabilities, ClearScope};
use crate::error::{Error, Result};
use crate::ttl::Expiry;

/// A backend that accepts every write and never returns anything.
///
/// Follows Django's `DummyCache`: `set` succeeds, `add` reports success,
/// `get` misses, `delete` and `touch` report that nothing was there, and
/// `incr` fails with `NotFound`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DummyBackend;

#[async_trait]
impl Backend for DummyBackend {
    fn name(&self) -> &'static str {
        "dummy"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_prefix_clear(true).with_batch(true)
    }
    async fn get(&self, _key: &str) -> Result<Option<Bytes>> {
        Ok(None)
    }
    async fn set(&self, _key: &str, _value: Bytes, _ttl: Expiry) -> Result<()> {
        Ok(())
    }
    async fn add(&self, _key: &str, _value: Bytes, _ttl: Expiry) -> Result<bool> {
        Ok(true)
    }
    async fn delete(&self, _key: &str) -> Result<bool> {
        Ok(false)
    }
    async fn incr(&self, key: &str, _delta: i64) -> Result<i64> {
        Err(Error::NotFound {
            key: key.to_owned(),
        })
    }
    async fn touch(&self, _key: &str, _ttl: Expiry) -> Result<bool> {
        Ok(false)
    }
    async fn clear(&self, _scope: ClearScope<'_>) -> Result<()> {
        Ok(())
    }
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>> {
        Ok(vec![None; keys.len()])
    }
}
