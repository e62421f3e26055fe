//! Template fragments: Django's `{% cache %}` tag as a call.

use std::fmt::Display;
use std::future::Future;

use sha2::{Digest, Sha256};

use crate::compute::ComputeError;
use crate::{Cache, Ttl};

/// The key of fragment `name` varied on `vary`: `fragment:NAME:HASH`, the
/// hash over every value (length-prefixed, so `("a:b", "c")` and `("a",
/// "b:c")` differ), as Django's `make_template_fragment_key`.
pub fn fragment_key(name: &str, vary: &[&dyn Display]) -> String {
    let mut h = Sha256::new();
    for v in vary {
        let text = v.to_string();
        h.update((text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    let digest = h.finalize();
    let mut key = format!("fragment:{name}:");
    for b in &digest[..16] {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

impl Cache {
    /// A rendered piece of a page, cached under `name` and the values it
    /// varies on (Django's `{% cache 500 sidebar request.user.username %}`):
    /// `render` runs only on a miss, once per key across concurrent callers
    /// ([`Cache::get_or_compute`]'s guarantees), and a failing cache just
    /// renders.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// use larder_core::{Cache, DummyBackend, Ttl};
    /// let cache = Cache::new(DummyBackend);
    /// let user = "ada";
    /// let html = cache
    ///     .fragment("sidebar", &[&user], Ttl::secs(500), || async move {
    ///         Ok::<_, std::fmt::Error>(format!("<aside>hello {user}</aside>"))
    ///     })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(html, "<aside>hello ada</aside>");
    /// # })
    /// ```
    ///
    /// Invalidate one with `cache.delete(&fragment_key(name, vary))`.
    pub async fn fragment<E, F, Fut>(
        &self,
        name: &str,
        vary: &[&dyn Display],
        ttl: impl Into<Ttl>,
        render: F,
    ) -> Result<String, ComputeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
        E: Display + Send + Sync + 'static,
    {
        self.get_or_compute(&fragment_key(name, vary), ttl, render)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_values_and_names() {
        assert_ne!(
            fragment_key("s", &[&"a:b", &"c"]),
            fragment_key("s", &[&"a", &"b:c"])
        );
        assert_ne!(fragment_key("s", &[&1]), fragment_key("t", &[&1]));
        assert_eq!(
            fragment_key("s", &[&1, &"x"]),
            fragment_key("s", &[&"1", &"x"])
        );
        assert!(fragment_key("sidebar", &[]).starts_with("fragment:sidebar:"));
    }
}
