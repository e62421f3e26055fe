//! Opening a document store from a URL-like spec, for applications and
//! the CLI alike.

use std::sync::Arc;
use std::time::Duration;
#[cfg(feature = "redb")]
use std::time::Instant;

use crate::error::{Error, Result};
use crate::source::Source;
use crate::store::{DocStore, SqlStore};

/// The key prefix of documents in a Redis store opened by [`open_store`].
pub const REDIS_STORE_PREFIX: &str = "larder:views";

/// Opens the store `spec` names:
///
/// - `redb:PATH`: an embedded redb file (one process at a time: a file
///   held by another process is retried for up to `wait`);
/// - `redis://…`, `rediss://…`: a Redis server (keys under
///   [`REDIS_STORE_PREFIX`]);
/// - `sql`: a table in the `source` database itself;
/// - `sql:URL`: a table in another database.
///
/// An unknown spec is [`Error::Config`] naming the accepted forms; a store
/// this build left out (feature `redb` or `redis` off) is
/// [`Error::Config`] naming the feature.
///
/// ```no_run
/// # async fn demo(source: larder_views::Source) -> larder_views::Result<()> {
/// let store = larder_views::open_store("sql", &source, std::time::Duration::ZERO).await?;
/// let views = larder_views::Views::builder(source, store).build()?;
/// # Ok(()) }
/// ```
pub async fn open_store(spec: &str, source: &Source, wait: Duration) -> Result<Arc<dyn DocStore>> {
    if let Some(path) = spec.strip_prefix("redb:") {
        return open_redb(path, wait).await;
    }
    if spec.starts_with("redis://") || spec.starts_with("rediss://") {
        return open_redis(spec).await;
    }
    if spec == "sql" {
        return Ok(Arc::new(SqlStore::on(source.clone()).await?));
    }
    if let Some(url) = spec.strip_prefix("sql:") {
        return Ok(Arc::new(SqlStore::connect(url).await?));
    }
    Err(Error::Config(format!(
        "document store {spec:?}: use redb:PATH, redis://HOST:PORT/DB, sql or sql:URL"
    )))
}

#[cfg(feature = "redb")]
async fn open_redb(path: &str, wait: Duration) -> Result<Arc<dyn DocStore>> {
    use crate::store::RedbStore;
    let deadline = Instant::now() + wait;
    let mut delay = Duration::from_millis(20);
    loop {
        match RedbStore::open(path) {
            Ok(s) => return Ok(Arc::new(s)),
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Store {
                    store: "redb",
                    source: format!(
                        "{e} (redb allows one process at a time: is another process using {path}?)"
                    )
                    .into(),
                })
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
        }
    }
}

#[cfg(feature = "redis")]
async fn open_redis(spec: &str) -> Result<Arc<dyn DocStore>> {
    Ok(Arc::new(
        crate::store::RedisStore::connect(spec, REDIS_STORE_PREFIX).await?,
    ))
}

#[cfg(not(feature = "redb"))]
async fn open_redb(_: &str, _: Duration) -> Result<Arc<dyn DocStore>> {
    Err(missing("redb:PATH", "redb"))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_: &str) -> Result<Arc<dyn DocStore>> {
    Err(missing("redis://", "redis"))
}

/// A store this build left out.
#[allow(dead_code)] // unused when every store is compiled in
fn missing(form: &str, feature: &str) -> Error {
    Error::Config(format!(
        "document store {form}: this build has no {feature} store; enable the `{feature}` feature of larder (or of larder-views)"
    ))
}
