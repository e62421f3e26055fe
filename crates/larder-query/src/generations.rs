//! Table generations in a larder cache.

use std::collections::BTreeSet;

use larder_core::{Cache, Result, Ttl};

/// One generation per table, stored in a larder [`Cache`] (shared by every
/// process using the same store).
///
/// A generation is a random `u64` replaced on every bump, not a counter:
/// a bump is one write, and a table whose generation was evicted simply
/// gets a new one (its cached results stop matching, which is safe).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use larder_core::Cache;
/// use larder_query::Generations;
/// let gens = Generations::new(Cache::new(larder_mem::MemBackend::default()));
/// let before = gens.current(&["post", "users"]).await?;
/// assert_eq!(gens.current(&["post", "users"]).await?, before, "stable until a write");
/// gens.bump(&["post"]).await?;
/// let after = gens.current(&["post", "users"]).await?;
/// assert_ne!(after[0], before[0]);
/// assert_eq!(after[1], before[1], "other tables keep theirs");
/// # Ok::<(), larder_core::Error>(()) }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct Generations {
    cache: Cache,
}

fn key(table: &str) -> String {
    format!("qgen.{table}")
}

impl Generations {
    /// Generations kept in `cache` (give it a prefix of its own).
    pub fn new(cache: Cache) -> Self {
        Generations { cache }
    }

    /// The current generations of `tables`, in order, in one round trip.
    /// A table without one gets one now (so two readers agree on it).
    ///
    /// An unreadable generation (garbage, another type) means "changed":
    /// it is overwritten with a fresh one, so the table's cached results
    /// stop matching once and then cache again (rather than every query
    /// getting a new, never-read key for good).
    pub async fn current<S: AsRef<str>>(&self, tables: &[S]) -> Result<Vec<u64>> {
        let keys: Vec<String> = tables.iter().map(|t| key(t.as_ref())).collect();
        let found = self.cache.get_many_raw(&keys).await?;
        let mut out = Vec::with_capacity(keys.len());
        for (k, raw) in keys.iter().zip(found) {
            let readable = match raw.as_deref().map(larder_core::envelope::decode::<u64>) {
                Some(Ok((g, _))) if g != 0 => Some(g),
                None => None,
                Some(_) => {
                    tracing::warn!(key = %k, "query cache: unreadable table generation; replacing it");
                    let g = fastrand_gen();
                    self.cache.set(k, &g, Ttl::Never).await?;
                    out.push(g);
                    continue;
                }
            };
            match readable {
                Some(g) => out.push(g),
                None => {
                    let g = fastrand_gen();
                    // Another process may have set one first: use theirs.
                    if self.cache.add(k, &g, Ttl::Never).await? {
                        out.push(g);
                    } else {
                        match self.cache.get::<u64>(k).await? {
                            Some(theirs) => out.push(theirs),
                            None => {
                                self.cache.set(k, &g, Ttl::Never).await?;
                                out.push(g);
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Gives `tables` new generations (after the write that changed them
    /// committed), in one batch.
    pub async fn bump<S: AsRef<str>>(&self, tables: &[S]) -> Result<()> {
        let unique: BTreeSet<&str> = tables.iter().map(AsRef::as_ref).collect();
        let items: Vec<(String, u64)> = unique
            .into_iter()
            .map(|t| (key(t), fastrand_gen()))
            .collect();
        let failed = self.cache.set_many(&items, Ttl::Never).await?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(larder_core::Error::backend(
                "generations",
                format!("could not bump {failed:?}"),
            ))
        }
    }
}

fn fastrand_gen() -> u64 {
    // Never 0, so "no generation" and a generation cannot be confused.
    fastrand::u64(1..)
}
