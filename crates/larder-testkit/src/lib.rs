//! # larder-testkit
//!
//! The backend conformance suite: every behaviour a [`Cache`] user relies on,
//! as one test per case, runnable against any [`Backend`].
//!
//! ```
//! // tests/conformance.rs of a backend crate: one test per case.
//! use std::sync::Arc;
//! use larder_core::{Backend, DummyBackend};
//!
//! // For a backend that stores, use `conformance_suite!` the same way.
//! larder_testkit::dummy_suite!(|| async { Arc::new(DummyBackend) as Arc<dyn Backend> });
//! # fn main() {}
//! ```
//!
//! The factory is called once per case. Each case gets its own key prefix,
//! so a backend shared by all cases (one Redis server) works too: cases never
//! see each other's keys, and `clear` is only ever called scoped to the
//! case's prefix.
//!
//! [`dummy_suite!`] runs the cases that apply to a backend that stores
//! nothing.
#![warn(missing_docs)]

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use larder_core::{Backend, Cache, CacheBuilder};

pub mod cases;
pub mod dummy_cases;
pub mod server;

#[doc(hidden)]
pub use tokio as __tokio;

/// The per-call deadline of caches built by [`Ctx::builder`].
pub const TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Makes a backend for one case.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// A backend to run one case against. It may be fresh or shared.
    async fn backend(&self) -> Arc<dyn Backend>;
}

#[async_trait::async_trait]
impl<F, Fut> Harness for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn Backend>> + Send,
{
    async fn backend(&self) -> Arc<dyn Backend> {
        self().await
    }
}

/// What a case runs against: a backend and a prefix of its own.
pub struct Ctx {
    /// The backend under test.
    pub backend: Arc<dyn Backend>,
    /// A key prefix no other case uses.
    pub prefix: String,
}

impl Ctx {
    /// A builder over the backend with this case's prefix, and a deadline
    /// of 10 s: the cases check semantics, on a machine loaded by running
    /// many of them at once, not latency.
    pub fn builder(&self) -> CacheBuilder {
        Cache::builder_arc(self.backend.clone())
            .key_prefix(self.prefix.clone())
            .deadline(Some(TEST_DEADLINE))
    }

    /// A cache with this case's prefix and defaults otherwise.
    pub fn cache(&self) -> Cache {
        self.builder()
            .build()
            .expect("valid test cache configuration")
    }

    /// A second prefix, distinct from this case's and every other case's.
    pub fn other_prefix(&self) -> String {
        format!("{}.other", self.prefix)
    }
}

/// Prepares a context for `case`.
pub async fn ctx_for(harness: &dyn Harness, case: &str) -> Ctx {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let prefix = format!(
        "t.{case}.{}.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        fastrand::u32(..)
    );
    Ctx {
        backend: harness.backend().await,
        prefix,
    }
}

/// Removes what a case left under its prefixes (best effort).
pub async fn cleanup(ctx: &Ctx) {
    for prefix in [ctx.prefix.clone(), ctx.other_prefix()] {
        if let Ok(cache) = Cache::builder_arc(ctx.backend.clone())
            .key_prefix(prefix)
            .build()
        {
            let _ = cache.clear().await;
        }
    }
}

/// Generates one `#[tokio::test]` per conformance case for a backend
/// factory: `conformance_suite!(|| async { Arc::new(B::new()) as Arc<dyn Backend> })`.
///
/// An optional list after the factory (`skip: [case_a, case_b]`) is not
/// supported on purpose: every storing backend runs every case.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::__for_each_storing_case!($crate::__gen_tests, cases, $make);
    };
}

/// Generates one `#[tokio::test]` per case that applies to a backend that
/// stores nothing (like `DummyBackend`).
#[macro_export]
macro_rules! dummy_suite {
    ($make:expr) => {
        $crate::__for_each_dummy_case!($crate::__gen_tests, dummy_cases, $make);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __gen_tests {
    ($module:ident, $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[$crate::__tokio::test(flavor = "multi_thread", worker_threads = 2, crate = "larder_testkit::__tokio")]
            async fn $case() {
                let harness = $make;
                let ctx = $crate::ctx_for(&harness, stringify!($case)).await;
                $crate::$module::$case(&ctx).await;
                $crate::cleanup(&ctx).await;
            }
        )*
    };
}

/// Checks that the case list in `macro_name` names exactly the `pub async fn`s
/// of `source`, so that no case is written and silently never run.
#[doc(hidden)]
pub fn assert_case_list_complete(source: &str, macro_name: &str) {
    let defined: std::collections::BTreeSet<&str> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub async fn "))
        .filter_map(|rest| rest.split('(').next())
        .collect();
    let body = source
        .split(&format!("macro_rules! {macro_name}"))
        .nth(1)
        .expect("macro present");
    let list = body
        .split(';')
        .nth(1)
        .expect("case list after the first ';'")
        .split(')')
        .next()
        .expect("list closes");
    let listed: std::collections::BTreeSet<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let missing: Vec<_> = defined.difference(&listed).collect();
    let unknown: Vec<_> = listed.difference(&defined).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "cases defined but not listed: {missing:?}; listed but not defined: {unknown:?}"
    );
    assert!(defined.len() >= 10);
}
