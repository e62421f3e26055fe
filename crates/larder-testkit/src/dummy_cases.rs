//! The cases that apply to a backend that stores nothing (Django's
//! `DummyCache` semantics): writes succeed, reads miss, validation still
//! happens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use larder_core::{Error, Ttl};

use crate::Ctx;

const LONG: Ttl = Ttl::secs(3600);

/// `set` succeeds and `get` misses.
pub async fn dummy_set_then_get_misses(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
}

/// `add` reports that it stored, every time.
pub async fn dummy_add_reports_stored(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(c.add("k", "v", LONG).await.unwrap());
    assert!(c.add("k", "v", LONG).await.unwrap());
}

/// `delete` reports nothing deleted.
pub async fn dummy_delete_reports_nothing(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert!(!c.delete("k").await.unwrap());
    assert_eq!(c.delete_many(&["k", "j"]).await.unwrap(), 0);
}

/// `has_key` is always false.
pub async fn dummy_has_key_false(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert!(!c.has_key("k").await.unwrap());
}

/// `incr`/`decr` are `NotFound`, as in Django's `DummyCache`.
pub async fn dummy_incr_not_found(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &1i64, LONG).await.unwrap();
    assert!(matches!(c.incr("n", 1).await, Err(Error::NotFound { .. })));
    assert!(matches!(c.decr("n", 1).await, Err(Error::NotFound { .. })));
}

/// `touch` reports nothing touched.
pub async fn dummy_touch_false(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(!c.touch("k", LONG).await.unwrap());
}

/// `get_many` is empty; `set_many` reports no failures.
pub async fn dummy_batches(ctx: &Ctx) {
    let c = ctx.cache();
    let failed = c
        .set_many::<u8, _, _>(&[("a", 1u8), ("b", 2)], LONG)
        .await
        .unwrap();
    assert!(failed.is_empty());
    let got: HashMap<String, u8> = c.get_many(&["a", "b"]).await.unwrap();
    assert!(got.is_empty());
}

/// `clear` succeeds.
pub async fn dummy_clear_ok(ctx: &Ctx) {
    ctx.cache().clear().await.unwrap();
}

/// `incr_version` is `NotFound`.
pub async fn dummy_incr_version_not_found(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert!(matches!(
        c.incr_version("k", 1).await,
        Err(Error::NotFound { .. })
    ));
}

/// Keys are still validated.
pub async fn dummy_validates_keys(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(matches!(
        c.set("a b", "v", LONG).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        c.get::<u8>(&"k".repeat(300)).await,
        Err(Error::InvalidKey { .. })
    ));
}

/// Value size limits still apply.
pub async fn dummy_validates_value_size(ctx: &Ctx) {
    let c = ctx.builder().max_value_bytes(10).build().unwrap();
    assert!(matches!(
        c.set("k", &vec![0u8; 100], LONG).await,
        Err(Error::ValueTooLarge { .. })
    ));
}

/// `get_or_compute` runs the loader every time.
pub async fn dummy_get_or_compute_always_computes(ctx: &Ctx) {
    let c = ctx.cache();
    let calls = Arc::new(AtomicU32::new(0));
    for _ in 0..3 {
        let calls = calls.clone();
        let v: u32 = c
            .get_or_compute("k", LONG, || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(5)
            })
            .await
            .unwrap();
        assert_eq!(v, 5);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Lists every dummy case, for the suite macro.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_dummy_case {
    ($gen:path, $module:ident, $make:expr) => {
        $gen!($module, $make;
            dummy_set_then_get_misses, dummy_add_reports_stored, dummy_delete_reports_nothing,
            dummy_has_key_false, dummy_incr_not_found, dummy_touch_false, dummy_batches,
            dummy_clear_ok, dummy_incr_version_not_found, dummy_validates_keys,
            dummy_validates_value_size, dummy_get_or_compute_always_computes,
        );
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn case_list_is_complete() {
        crate::assert_case_list_complete(include_str!("dummy_cases.rs"), "__for_each_dummy_case");
    }
}
