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
/// - `redis://…`, `rediss://…`: a Redis server, `redis+cluster://h1:p1,h2:p2`:
///   a Redis Cluster (keys under [`REDIS_STORE_PREFIX`], or the spec's
///   `?prefix=NAME`, so several deployments can share one server);
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
    if spec.starts_with("redis://")
        || spec.starts_with("rediss://")
        || spec.starts_with("redis+cluster://")
    {
        return open_redis(spec).await;
    }
    if spec == "sql" {
        return Ok(Arc::new(SqlStore::on(source.clone()).await?));
    }
    if let Some(url) = spec.strip_prefix("sql:") {
        return Ok(Arc::new(SqlStore::connect(url).await?));
    }
    Err(Error::Config(format!(
        "document store {spec:?}: use redb:PATH, redis://HOST:PORT/DB, redis+cluster://H1:P1,H2:P2, sql or sql:URL"
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
    let (url, prefix) = take_prefix(spec)?;
    Ok(Arc::new(
        crate::store::RedisStore::connect(&url, prefix.as_deref().unwrap_or(REDIS_STORE_PREFIX))
            .await?,
    ))
}

/// `spec` without its `prefix=` query parameter, and that parameter.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
fn take_prefix(spec: &str) -> Result<(String, Option<String>)> {
    let Some((base, query)) = spec.split_once('?') else {
        return Ok((spec.to_owned(), None));
    };
    let mut prefix = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("prefix=") {
            Some(p) => {
                let ok = !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-:.".contains(&b));
                if !ok {
                    return Err(Error::Config(format!(
                        "document store prefix {p:?}: use letters, digits and _ - : ."
                    )));
                }
                prefix = Some(p.to_owned());
            }
            None => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, prefix))
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

#[cfg(test)]
mod tests {
    use super::take_prefix;

    #[test]
    fn the_prefix_comes_out_of_the_spec() {
        assert_eq!(
            take_prefix("redis://h:1/0").unwrap(),
            ("redis://h:1/0".to_owned(), None)
        );
        assert_eq!(
            take_prefix("redis+cluster://a:1,b:2?prefix=site1:views").unwrap(),
            (
                "redis+cluster://a:1,b:2".to_owned(),
                Some("site1:views".to_owned())
            )
        );
        assert_eq!(
            take_prefix("rediss://h:1/0?protocol=resp3&prefix=x").unwrap(),
            (
                "rediss://h:1/0?protocol=resp3".to_owned(),
                Some("x".to_owned())
            )
        );
        assert!(
            take_prefix("redis://h:1/0?prefix=a}b").is_err(),
            "a brace breaks the hash tag"
        );
        assert!(take_prefix("redis://h:1/0?prefix=").is_err());
    }
}
