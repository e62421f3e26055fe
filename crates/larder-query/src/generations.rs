//! Table generations in a larder cache.

use std::collections::BTreeSet;

use larder_core::{Cache, Result, Ttl};

/// The pseudo-table every read depends on: bumped by statements that
/// cannot be analysed, and by resyncs of outside writes.
pub(crate) const EVERYTHING: &str = "*";

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
    /// How long row-level generations are kept (the longest result TTL):
    /// a record that expired means "changed", so memory stays bounded by
    /// the values written or read within one TTL.
    row_ttl: Ttl,
}

/// The generation of a whole table: bumped by writes that are not
/// understood row by row (and by outside writes seen as table counts);
/// every cached read of the table depends on it.
pub(crate) fn table_key(table: &str) -> String {
    format!("qgen.{table}")
}

fn key(table: &str) -> String {
    table_key(table)
}

/// Bumped by every row-level write to `table`: reads of the table that
/// are not constrained to some rows depend on it.
pub(crate) fn rows_key(table: &str) -> String {
    format!("qrow.{table}")
}

/// Bumped when a write could not tell a value of `column` (a type that
/// might equal an integer in ways not mirrored here): every row-level
/// read on that column depends on it.
pub(crate) fn column_key(table: &str, column: &str) -> String {
    format!("qcol.{table}.{column}")
}

/// The generation of the rows of `table` whose `column` equals `value`.
pub(crate) fn value_key(table: &str, column: &str, value: i64) -> String {
    format!("qval.{table}.{column}.{value}")
}

/// Row-level records expire; table records are few and kept.
fn is_row_level(key: &str) -> bool {
    key.starts_with("qval.") || key.starts_with("qcol.")
}

impl Generations {
    /// Generations kept in `cache` (give it a prefix of its own).
    pub fn new(cache: Cache) -> Self {
        Generations {
            cache,
            row_ttl: Ttl::Never,
        }
    }

    /// The store the generations are kept in.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Row-level generations expire after `ttl` (set it to the longest
    /// TTL of the results that depend on them).
    pub(crate) fn with_row_ttl(mut self, ttl: Ttl) -> Self {
        self.row_ttl = ttl;
        self
    }

    fn ttl_of(&self, key: &str) -> Ttl {
        if is_row_level(key) {
            self.row_ttl
        } else {
            Ttl::Never
        }
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
        self.current_keys(&keys).await
    }

    /// The current generations under `keys` (see the `*_key` functions).
    pub(crate) async fn current_keys(&self, keys: &[String]) -> Result<Vec<u64>> {
        let found = self.cache.get_many_raw(keys).await?;
        let mut out = Vec::with_capacity(keys.len());
        for (k, raw) in keys.iter().zip(found) {
            let readable = match raw.as_deref().map(decode_generation) {
                Some(Some(g)) => Some(g),
                None => None,
                Some(None) => {
                    tracing::warn!(key = %k, "query cache: unreadable table generation; replacing it");
                    let g = fastrand_gen();
                    self.cache.set(k, &g, self.ttl_of(k)).await?;
                    out.push(g);
                    continue;
                }
            };
            match readable {
                Some(g) => out.push(g),
                None => {
                    let g = fastrand_gen();
                    // Another process may have set one first: use theirs.
                    if self.cache.add(k, &g, self.ttl_of(k)).await? {
                        out.push(g);
                    } else {
                        match self.cache.get::<u64>(k).await? {
                            Some(theirs) => out.push(theirs),
                            None => {
                                self.cache.set(k, &g, self.ttl_of(k)).await?;
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
        let keys: BTreeSet<String> = tables.iter().map(|t| key(t.as_ref())).collect();
        self.bump_keys(&keys).await
    }

    /// Gives every key in `keys` a new generation, in one batch per TTL.
    pub(crate) async fn bump_keys(&self, keys: &BTreeSet<String>) -> Result<()> {
        let (rows, tables): (Vec<&String>, Vec<&String>) =
            keys.iter().partition(|k| is_row_level(k));
        let mut failed = Vec::new();
        for (group, ttl) in [(tables, Ttl::Never), (rows, self.row_ttl)] {
            if group.is_empty() {
                continue;
            }
            let items: Vec<(&str, u64)> = group
                .into_iter()
                .map(|k| (k.as_str(), fastrand_gen()))
                .collect();
            failed.extend(self.cache.set_many(&items, ttl).await?);
        }
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

/// A stored generation's value; `None` when the bytes are not one
/// (garbage, another type, or 0, which no generation is).
pub(crate) fn decode_generation(bytes: &[u8]) -> Option<u64> {
    match larder_core::envelope::decode::<u64>(bytes) {
        Ok((g, _)) if g != 0 => Some(g),
        _ => None,
    }
}

fn fastrand_gen() -> u64 {
    // Never 0, so "no generation" and a generation cannot be confused.
    fastrand::u64(1..)
}
