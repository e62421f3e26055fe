//! The conformance cases for backends that store. Each takes a [`Ctx`] and
//! panics with a message naming the broken behaviour.
//!
//! Expiry cases use TTLs of whole seconds ([`SHORT`], 2 s) and wait a little
//! over three seconds, because memcached counts lifetimes in whole seconds of
//! a clock that ticks once a second.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use larder_core::{Bytes, Cache, Codec, ComputeOptions, Error, Expiry, LeaseGrant, Ttl};
use serde::{Deserialize, Serialize};

use crate::Ctx;

/// A TTL short enough to wait out in a test. Two seconds, not one: on
/// memcached, whose clock ticks once a second, an entry stored for N s lives
/// between N - 1 and N s, so a 1 s entry may be gone at the next tick, a
/// millisecond after it was written, and a check that it is present right
/// after the write would race that tick.
pub const SHORT: Ttl = Ttl::secs(2);
/// Longer than [`SHORT`] on every backend, including second-granular ones.
pub const WAIT_OUT_SHORT: Duration = Duration::from_millis(3100);
const LONG: Ttl = Ttl::secs(3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Post {
    id: u64,
    title: String,
    tags: Vec<String>,
    score: f64,
    author: Option<String>,
}

fn post() -> Post {
    Post {
        id: 42,
        title: "Caching and Django: a primer".into(),
        tags: vec!["cache".into(), "django".into()],
        score: 4.5,
        author: None,
    }
}

async fn wait_out_short() {
    tokio::time::sleep(WAIT_OUT_SHORT).await;
}

// ---------------------------------------------------------------- basics

/// A value set is read back.
pub async fn set_then_get(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v"));
}

/// A key never set reads as `None`.
pub async fn get_missing_is_none(ctx: &Ctx) {
    let c = ctx.cache();
    assert_eq!(c.get::<String>("never-set").await.unwrap(), None);
}

/// A second set replaces the first.
pub async fn set_overwrites(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "one", LONG).await.unwrap();
    c.set("k", "two", LONG).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("two"));
}

/// A stored `None` is a hit, distinct from a miss.
pub async fn stored_none_is_a_hit(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", &None::<u32>, LONG).await.unwrap();
    assert_eq!(c.get::<Option<u32>>("k").await.unwrap(), Some(None));
    assert!(c.has_key("k").await.unwrap());
    assert_eq!(c.get::<Option<u32>>("absent").await.unwrap(), None);
}

/// The unit value and empty containers are hits.
pub async fn empty_values_are_hits(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("unit", &(), LONG).await.unwrap();
    c.set("s", "", LONG).await.unwrap();
    c.set("v", &Vec::<u8>::new(), LONG).await.unwrap();
    assert_eq!(c.get::<()>("unit").await.unwrap(), Some(()));
    assert_eq!(c.get::<String>("s").await.unwrap().as_deref(), Some(""));
    assert_eq!(c.get::<Vec<u8>>("v").await.unwrap(), Some(vec![]));
}

/// A struct with nested fields round-trips.
pub async fn struct_round_trip(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("post", &post(), LONG).await.unwrap();
    assert_eq!(c.get::<Post>("post").await.unwrap(), Some(post()));
}

/// Integers of every width and sign, including the extremes, round-trip.
pub async fn integers_round_trip(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("min", &i64::MIN, LONG).await.unwrap();
    c.set("max", &i64::MAX, LONG).await.unwrap();
    c.set("umax", &u64::MAX, LONG).await.unwrap();
    c.set("neg", &-7i8, LONG).await.unwrap();
    c.set("zero", &0u16, LONG).await.unwrap();
    assert_eq!(c.get::<i64>("min").await.unwrap(), Some(i64::MIN));
    assert_eq!(c.get::<i64>("max").await.unwrap(), Some(i64::MAX));
    assert_eq!(c.get::<u64>("umax").await.unwrap(), Some(u64::MAX));
    assert_eq!(c.get::<i8>("neg").await.unwrap(), Some(-7));
    assert_eq!(c.get::<u16>("zero").await.unwrap(), Some(0));
}

/// Floats, booleans and chars round-trip exactly.
pub async fn scalars_round_trip(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("f", &std::f64::consts::PI, LONG).await.unwrap();
    c.set("b", &true, LONG).await.unwrap();
    c.set("c", &'ß', LONG).await.unwrap();
    assert_eq!(c.get::<f64>("f").await.unwrap(), Some(std::f64::consts::PI));
    assert_eq!(c.get::<bool>("b").await.unwrap(), Some(true));
    assert_eq!(c.get::<char>("c").await.unwrap(), Some('ß'));
}

/// Maps, vectors and tuples round-trip.
pub async fn collections_round_trip(ctx: &Ctx) {
    let c = ctx.cache();
    let map: BTreeMap<String, Vec<(u8, String)>> = [
        ("a".to_string(), vec![(1, "x".to_string())]),
        ("b".to_string(), vec![]),
    ]
    .into();
    c.set("m", &map, LONG).await.unwrap();
    assert_eq!(
        c.get::<BTreeMap<String, Vec<(u8, String)>>>("m")
            .await
            .unwrap(),
        Some(map)
    );
}

/// Unicode text of every plane round-trips.
pub async fn unicode_values(ctx: &Ctx) {
    let c = ctx.cache();
    let text = "Ünïcödé — 日本語 — עברית — 🦀🚀 — \u{0}\u{7f}";
    c.set("u", text, LONG).await.unwrap();
    assert_eq!(c.get::<String>("u").await.unwrap().as_deref(), Some(text));
}

/// Every byte value round-trips.
pub async fn binary_values(ctx: &Ctx) {
    let c = ctx.cache();
    let bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    c.set("bin", &bytes, LONG).await.unwrap();
    assert_eq!(c.get::<Vec<u8>>("bin").await.unwrap(), Some(bytes));
}

/// A 1 MiB incompressible value round-trips.
pub async fn one_mib_value(ctx: &Ctx) {
    let c = ctx.cache();
    let mut rng = fastrand::Rng::with_seed(7);
    let bytes: Vec<u8> = (0..(1 << 20)).map(|_| rng.u8(..)).collect();
    c.set("big", &bytes, LONG).await.unwrap();
    assert_eq!(c.get::<Vec<u8>>("big").await.unwrap(), Some(bytes));
}

/// A 4 MiB compressible value round-trips.
pub async fn four_mib_compressible_value(ctx: &Ctx) {
    let c = ctx.cache();
    let text = "larder ".repeat((4 << 20) / 7);
    c.set("big", &text, LONG).await.unwrap();
    assert_eq!(c.get::<String>("big").await.unwrap(), Some(text));
}

/// Reading a value as the wrong type is a miss, not an error or a panic.
pub async fn wrong_type_is_a_miss(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "not a post", LONG).await.unwrap();
    assert_eq!(c.get::<Post>("k").await.unwrap(), None);
    // The entry is still there for a reader of the right type.
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("not a post")
    );
}

/// Keys may contain any non-space, non-control Unicode.
pub async fn unicode_keys(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("ключ:ü/日本#?&%", &1u8, LONG).await.unwrap();
    assert_eq!(c.get::<u8>("ключ:ü/日本#?&%").await.unwrap(), Some(1));
    assert_eq!(c.get::<u8>("ключ:u/日本#?&%").await.unwrap(), None);
}

/// The empty key is a valid key.
pub async fn empty_key(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("", "empty", LONG).await.unwrap();
    assert_eq!(c.get::<String>("").await.unwrap().as_deref(), Some("empty"));
}

/// The JSON codec round-trips.
pub async fn json_codec(ctx: &Ctx) {
    let c = ctx.builder().codec(Codec::Json).build().unwrap();
    c.set("post", &post(), LONG).await.unwrap();
    assert_eq!(c.get::<Post>("post").await.unwrap(), Some(post()));
}

/// A value written with one codec is read by a cache configured with another.
pub async fn codecs_read_each_other(ctx: &Ctx) {
    let json = ctx.builder().codec(Codec::Json).build().unwrap();
    let postcard = ctx.builder().codec(Codec::Postcard).build().unwrap();
    json.set("a", &post(), LONG).await.unwrap();
    postcard.set("b", &post(), LONG).await.unwrap();
    assert_eq!(postcard.get::<Post>("a").await.unwrap(), Some(post()));
    assert_eq!(json.get::<Post>("b").await.unwrap(), Some(post()));
}

/// With compression off, large values still round-trip.
pub async fn compression_off(ctx: &Ctx) {
    let c = ctx.builder().compress_above(None).build().unwrap();
    let text = "z".repeat(100_000);
    c.set("k", &text, LONG).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap(), Some(text));
}

// ---------------------------------------------------------------- add

/// `add` stores when the key is absent and says so.
pub async fn add_when_absent(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(c.add("k", "first", LONG).await.unwrap());
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("first")
    );
}

/// `add` leaves a present key alone and says so.
pub async fn add_when_present(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "first", LONG).await.unwrap();
    assert!(!c.add("k", "second", LONG).await.unwrap());
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("first")
    );
}

/// `add` treats an expired key as absent.
pub async fn add_after_expiry(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "old", SHORT).await.unwrap();
    wait_out_short().await;
    assert!(c.add("k", "new", LONG).await.unwrap());
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("new"));
}

/// `add` with a zero TTL stores nothing, and reports whether it would have.
pub async fn add_zero_ttl(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(c.add("absent", "v", Ttl::secs(0)).await.unwrap());
    assert_eq!(c.get::<String>("absent").await.unwrap(), None);
    c.set("present", "kept", LONG).await.unwrap();
    assert!(!c.add("present", "v", Ttl::secs(0)).await.unwrap());
    assert_eq!(
        c.get::<String>("present").await.unwrap().as_deref(),
        Some("kept")
    );
}

/// Of many concurrent `add`s of one key, exactly one wins.
pub async fn add_is_atomic(ctx: &Ctx) {
    let c = ctx.cache();
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            (i, c.add("k", &i, LONG).await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, won) = t.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(c.get::<u32>("k").await.unwrap(), Some(winners[0]));
}

// ---------------------------------------------------------------- get_many / set_many

/// `get_many` returns only the hits, under the caller's keys.
pub async fn get_many_only_hits(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("a", &1u32, LONG).await.unwrap();
    c.set("c", &3u32, LONG).await.unwrap();
    let got: HashMap<String, u32> = c.get_many(&["a", "b", "c"]).await.unwrap();
    assert_eq!(got, HashMap::from([("a".into(), 1), ("c".into(), 3)]));
}

/// `get_many` of nothing is empty.
pub async fn get_many_empty(ctx: &Ctx) {
    let c = ctx.cache();
    let keys: [&str; 0] = [];
    assert!(c.get_many::<u32, _>(&keys).await.unwrap().is_empty());
}

/// `get_many` skips expired entries.
pub async fn get_many_skips_expired(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("short", &1u32, SHORT).await.unwrap();
    c.set("long", &2u32, LONG).await.unwrap();
    wait_out_short().await;
    let got: HashMap<String, u32> = c.get_many(&["short", "long"]).await.unwrap();
    assert_eq!(got, HashMap::from([("long".into(), 2)]));
}

/// `get_many` skips entries that do not decode as the type.
pub async fn get_many_skips_wrong_type(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &1u32, LONG).await.unwrap();
    c.set("s", "text", LONG).await.unwrap();
    let got: HashMap<String, u32> = c.get_many(&["n", "s"]).await.unwrap();
    assert_eq!(got, HashMap::from([("n".into(), 1)]));
}

/// `set_many` stores everything and reports no failures.
pub async fn set_many_then_get_many(ctx: &Ctx) {
    let c = ctx.cache();
    let items: Vec<(String, u32)> = (0..50).map(|i| (format!("k{i}"), i)).collect();
    let failed = c.set_many::<u32, _, _>(&items, LONG).await.unwrap();
    assert!(failed.is_empty(), "failed: {failed:?}");
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    let got: HashMap<String, u32> = c.get_many(&keys).await.unwrap();
    assert_eq!(got.len(), 50);
    for (k, v) in &items {
        assert_eq!(got.get(k), Some(v));
    }
}

/// `set_many` applies the TTL to every entry.
pub async fn set_many_ttl(ctx: &Ctx) {
    let c = ctx.cache();
    c.set_many::<u32, _, _>(&[("a", 1u32), ("b", 2)], SHORT)
        .await
        .unwrap();
    assert!(c.has_key("a").await.unwrap());
    wait_out_short().await;
    assert!(!c.has_key("a").await.unwrap());
    assert!(!c.has_key("b").await.unwrap());
}

/// `set_many` with a zero TTL removes the keys.
pub async fn set_many_zero_ttl_removes(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("a", &1u32, LONG).await.unwrap();
    let failed = c
        .set_many::<u32, _, _>(&[("a", 5u32), ("b", 6)], Ttl::secs(0))
        .await
        .unwrap();
    assert!(failed.is_empty());
    assert_eq!(c.get::<u32>("a").await.unwrap(), None);
    assert_eq!(c.get::<u32>("b").await.unwrap(), None);
}

/// `set_many` of structs, read back one by one.
pub async fn set_many_structs(ctx: &Ctx) {
    let c = ctx.cache();
    let mut p2 = post();
    p2.id = 43;
    c.set_many::<Post, _, _>(&[("p1", post()), ("p2", p2.clone())], LONG)
        .await
        .unwrap();
    assert_eq!(c.get::<Post>("p1").await.unwrap(), Some(post()));
    assert_eq!(c.get::<Post>("p2").await.unwrap(), Some(p2));
}

// ---------------------------------------------------------------- delete / has_key

/// `delete` of a present key returns true and removes it.
pub async fn delete_present(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert!(c.delete("k").await.unwrap());
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
}

/// `delete` of an absent key returns false.
pub async fn delete_absent(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(!c.delete("never").await.unwrap());
}

/// `delete` of an expired key returns false.
pub async fn delete_expired(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", SHORT).await.unwrap();
    wait_out_short().await;
    assert!(!c.delete("k").await.unwrap());
}

/// `delete_many` removes every key and counts those that existed.
pub async fn delete_many_counts(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("a", &1u8, LONG).await.unwrap();
    c.set("b", &2u8, LONG).await.unwrap();
    assert_eq!(c.delete_many(&["a", "b", "c"]).await.unwrap(), 2);
    assert!(!c.has_key("a").await.unwrap());
    assert!(!c.has_key("b").await.unwrap());
}

/// `has_key` tells present from absent.
pub async fn has_key_present_absent(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", &1u8, LONG).await.unwrap();
    assert!(c.has_key("k").await.unwrap());
    assert!(!c.has_key("other").await.unwrap());
}

/// `has_key` is false once the entry expired.
pub async fn has_key_expired(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", &1u8, SHORT).await.unwrap();
    wait_out_short().await;
    assert!(!c.has_key("k").await.unwrap());
}

// ---------------------------------------------------------------- incr / decr

/// `incr` adds to a stored integer and returns the result.
pub async fn incr_existing(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &10i64, LONG).await.unwrap();
    assert_eq!(c.incr("n", 1).await.unwrap(), 11);
    assert_eq!(c.incr("n", 5).await.unwrap(), 16);
    assert_eq!(c.get::<i64>("n").await.unwrap(), Some(16));
}

/// `decr` subtracts.
pub async fn decr_existing(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &10u32, LONG).await.unwrap();
    assert_eq!(c.decr("n", 3).await.unwrap(), 7);
    assert_eq!(c.get::<u32>("n").await.unwrap(), Some(7));
}

/// `incr` with a negative delta subtracts; `decr` with one adds.
pub async fn incr_negative_delta(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &10i64, LONG).await.unwrap();
    assert_eq!(c.incr("n", -4).await.unwrap(), 6);
    assert_eq!(c.decr("n", -4).await.unwrap(), 10);
}

/// Counters may go below zero.
pub async fn decr_below_zero(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &1i64, LONG).await.unwrap();
    assert_eq!(c.decr("n", 3).await.unwrap(), -2);
    assert_eq!(c.incr("n", -1).await.unwrap(), -3);
    assert_eq!(c.get::<i64>("n").await.unwrap(), Some(-3));
}

/// `incr`/`decr` on a missing key is `NotFound` naming the caller's key, and
/// creates nothing.
pub async fn incr_missing_not_found(ctx: &Ctx) {
    let c = ctx.cache();
    match c.incr("missing", 1).await {
        Err(Error::NotFound { key }) => assert_eq!(key, "missing"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(matches!(
        c.decr("missing", 1).await,
        Err(Error::NotFound { .. })
    ));
    assert!(!c.has_key("missing").await.unwrap());
}

/// `incr` on an expired key is `NotFound`.
pub async fn incr_expired_not_found(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &1i64, SHORT).await.unwrap();
    wait_out_short().await;
    assert!(matches!(c.incr("n", 1).await, Err(Error::NotFound { .. })));
}

/// `incr` on text is `NotANumber` and leaves the value alone.
pub async fn incr_text_not_a_number(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("s", "abc", LONG).await.unwrap();
    match c.incr("s", 1).await {
        Err(Error::NotANumber { key }) => assert_eq!(key, "s"),
        other => panic!("expected NotANumber, got {other:?}"),
    }
    assert_eq!(c.get::<String>("s").await.unwrap().as_deref(), Some("abc"));
}

/// `incr` on a float or a struct is `NotANumber`.
pub async fn incr_float_not_a_number(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("f", &1.5f64, LONG).await.unwrap();
    c.set("p", &post(), LONG).await.unwrap();
    assert!(matches!(
        c.incr("f", 1).await,
        Err(Error::NotANumber { .. })
    ));
    assert!(matches!(
        c.incr("p", 1).await,
        Err(Error::NotANumber { .. })
    ));
    assert_eq!(c.get::<f64>("f").await.unwrap(), Some(1.5));
}

/// `incr` past the 64-bit range is `Overflow` and leaves the value alone.
pub async fn incr_overflow(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &(i64::MAX - 1), LONG).await.unwrap();
    assert_eq!(c.incr("n", 1).await.unwrap(), i64::MAX);
    assert!(matches!(c.incr("n", 1).await, Err(Error::Overflow { .. })));
    assert_eq!(c.get::<i64>("n").await.unwrap(), Some(i64::MAX));
    c.set("m", &(i64::MIN + 1), LONG).await.unwrap();
    assert!(matches!(c.decr("m", 2).await, Err(Error::Overflow { .. })));
}

/// `incr` keeps the entry's TTL (Django's locmem and db backends reset it).
pub async fn incr_keeps_ttl(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &1i64, SHORT).await.unwrap();
    assert_eq!(c.incr("n", 1).await.unwrap(), 2);
    wait_out_short().await;
    assert_eq!(c.get::<i64>("n").await.unwrap(), None);
}

/// `incr` keeps a "never" TTL.
pub async fn incr_keeps_no_expiry(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &1i64, Ttl::Never).await.unwrap();
    c.incr("n", 1).await.unwrap();
    wait_out_short().await;
    assert_eq!(c.get::<i64>("n").await.unwrap(), Some(2));
}

/// Many tasks incrementing one key end at the exact sum.
pub async fn incr_concurrent_exact_sum(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &0i64, LONG).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                c.incr("n", 1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(c.get::<i64>("n").await.unwrap(), Some(800));
}

/// Concurrent increments and decrements net out exactly.
pub async fn incr_decr_concurrent_net(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("n", &1000i64, LONG).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..40 {
                if t % 2 == 0 {
                    c.incr("n", 3).await.unwrap();
                } else {
                    c.decr("n", 2).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 4 tasks × 40 × 3 − 4 tasks × 40 × 2
    assert_eq!(c.get::<i64>("n").await.unwrap(), Some(1000 + 480 - 320));
}

/// An integer written by another client as bare decimal is readable and
/// incrementable.
pub async fn foreign_integer_is_readable(ctx: &Ctx) {
    let c = ctx.cache();
    let skey = c.make_key("n").unwrap();
    ctx.backend
        .set(
            &skey,
            Bytes::from_static(b"41"),
            Expiry::After(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(c.get::<i64>("n").await.unwrap(), Some(41));
    assert_eq!(c.incr("n", 1).await.unwrap(), 42);
}

// ---------------------------------------------------------------- expiry

/// An entry is gone after its TTL.
pub async fn expires_after_ttl(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", SHORT).await.unwrap();
    assert!(c.has_key("k").await.unwrap());
    wait_out_short().await;
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
}

/// A zero TTL stores nothing and removes what was there.
pub async fn zero_ttl_not_retrievable(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "old", LONG).await.unwrap();
    c.set("k", "new", Ttl::secs(0)).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
    c.set("fresh", "v", Ttl::After(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(c.get::<String>("fresh").await.unwrap(), None);
}

/// A negative TTL behaves as zero.
pub async fn negative_ttl_not_retrievable(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "old", LONG).await.unwrap();
    c.set("k", "new", Ttl::secs(-10)).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
}

/// `Ttl::Never` keeps the entry past any short TTL.
pub async fn never_ttl_persists(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", Ttl::Never).await.unwrap();
    c.set("s", "v", SHORT).await.unwrap();
    wait_out_short().await;
    assert!(c.has_key("k").await.unwrap());
    assert!(!c.has_key("s").await.unwrap());
}

/// `Ttl::Default` uses the cache's configured default.
pub async fn default_ttl_applies(ctx: &Ctx) {
    let c = ctx
        .builder()
        .default_ttl(Duration::from_secs(2))
        .build()
        .unwrap();
    c.set("k", "v", Ttl::Default).await.unwrap();
    assert!(c.has_key("k").await.unwrap());
    wait_out_short().await;
    assert!(!c.has_key("k").await.unwrap());
}

/// A default of `Ttl::Never` keeps entries.
pub async fn default_ttl_never(ctx: &Ctx) {
    let c = ctx.builder().default_ttl(Ttl::Never).build().unwrap();
    c.set("k", "v", Ttl::Default).await.unwrap();
    wait_out_short().await;
    assert!(c.has_key("k").await.unwrap());
}

/// A TTL below one second is not rounded down to "expire now" nor up to
/// "never".
pub async fn sub_second_ttl(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", Ttl::After(Duration::from_millis(500)))
        .await
        .unwrap();
    assert!(c.has_key("k").await.unwrap());
    wait_out_short().await;
    assert!(!c.has_key("k").await.unwrap());
}

/// A TTL over 30 days is a lifetime, not a timestamp (memcached's trap).
pub async fn ttl_over_thirty_days(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", Ttl::secs(60 * 60 * 24 * 45)).await.unwrap();
    assert!(c.has_key("k").await.unwrap());
}

/// Re-setting an entry replaces its TTL.
pub async fn set_replaces_ttl(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", SHORT).await.unwrap();
    c.set("k", "v2", LONG).await.unwrap();
    wait_out_short().await;
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v2"));
}

// ---------------------------------------------------------------- touch

/// `touch` extends a live entry's lifetime.
pub async fn touch_extends(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", SHORT).await.unwrap();
    assert!(c.touch("k", LONG).await.unwrap());
    wait_out_short().await;
    assert!(c.has_key("k").await.unwrap());
}

/// `touch` shortens a live entry's lifetime.
pub async fn touch_shortens(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", Ttl::Never).await.unwrap();
    assert!(c.touch("k", SHORT).await.unwrap());
    wait_out_short().await;
    assert!(!c.has_key("k").await.unwrap());
}

/// `touch` of an absent key is false and creates nothing.
pub async fn touch_missing(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(!c.touch("absent", LONG).await.unwrap());
    assert!(!c.has_key("absent").await.unwrap());
}

/// `touch` with a zero TTL expires the entry.
pub async fn touch_zero_expires(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert!(c.touch("k", Ttl::secs(0)).await.unwrap());
    assert!(!c.has_key("k").await.unwrap());
}

/// `touch` with `Never` removes the expiry.
pub async fn touch_never(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", SHORT).await.unwrap();
    assert!(c.touch("k", Ttl::Never).await.unwrap());
    wait_out_short().await;
    assert!(c.has_key("k").await.unwrap());
}

/// `touch` leaves the value unchanged.
pub async fn touch_keeps_value(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", &post(), LONG).await.unwrap();
    c.touch("k", LONG).await.unwrap();
    assert_eq!(c.get::<Post>("k").await.unwrap(), Some(post()));
}

// ---------------------------------------------------------------- versions

/// Versions of one key are separate entries.
pub async fn versions_are_isolated(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v1", LONG).await.unwrap();
    c.version(2).set("k", "v2", LONG).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(
        c.version(2).get::<String>("k").await.unwrap().as_deref(),
        Some("v2")
    );
}

/// The builder's version is the default for every call.
pub async fn builder_version(ctx: &Ctx) {
    let v3 = ctx.builder().version(3).build().unwrap();
    let v1 = ctx.cache();
    v3.set("k", "three", LONG).await.unwrap();
    assert_eq!(v1.get::<String>("k").await.unwrap(), None);
    assert_eq!(
        v1.version(3).get::<String>("k").await.unwrap().as_deref(),
        Some("three")
    );
    assert_eq!(v3.current_version(), 3);
}

/// `incr_version` moves the value to the next version.
pub async fn incr_version_moves(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert_eq!(c.incr_version("k", 1).await.unwrap(), 2);
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
    assert_eq!(
        c.version(2).get::<String>("k").await.unwrap().as_deref(),
        Some("v")
    );
    assert_eq!(c.version(2).incr_version("k", 10).await.unwrap(), 12);
    assert!(c.version(12).has_key("k").await.unwrap());
}

/// `decr_version` moves the value to an earlier version.
pub async fn decr_version_moves(ctx: &Ctx) {
    let c = ctx.cache().version(5);
    c.set("k", "v", LONG).await.unwrap();
    assert_eq!(c.decr_version("k", 2).await.unwrap(), 3);
    assert!(!c.has_key("k").await.unwrap());
    assert_eq!(
        c.version(3).get::<String>("k").await.unwrap().as_deref(),
        Some("v")
    );
}

/// `incr_version` of a missing key is `NotFound`.
pub async fn incr_version_missing(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(matches!(
        c.incr_version("missing", 1).await,
        Err(Error::NotFound { .. })
    ));
}

/// `decr_version` below version 0 is refused and moves nothing.
pub async fn decr_version_below_zero(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    assert!(c.decr_version("k", 2).await.is_err());
    assert!(c.has_key("k").await.unwrap());
}

// ---------------------------------------------------------------- prefixes and keys

/// Two caches with different prefixes on one backend do not see each other.
pub async fn prefixes_isolate(ctx: &Ctx) {
    let a = ctx.cache();
    let b = ctx
        .builder()
        .key_prefix(ctx.other_prefix())
        .build()
        .unwrap();
    a.set("k", "a", LONG).await.unwrap();
    b.set("k", "b", LONG).await.unwrap();
    assert_eq!(a.get::<String>("k").await.unwrap().as_deref(), Some("a"));
    assert_eq!(b.get::<String>("k").await.unwrap().as_deref(), Some("b"));
    a.delete("k").await.unwrap();
    assert_eq!(b.get::<String>("k").await.unwrap().as_deref(), Some("b"));
}

/// `clear` removes this cache's entries, all versions, and nothing else.
pub async fn clear_only_own_prefix(ctx: &Ctx) {
    let a = ctx.cache();
    let b = ctx
        .builder()
        .key_prefix(ctx.other_prefix())
        .build()
        .unwrap();
    for i in 0..20 {
        a.set(&format!("k{i}"), &i, LONG).await.unwrap();
    }
    a.version(7).set("v7", "x", LONG).await.unwrap();
    b.set("k0", "survives", LONG).await.unwrap();
    a.clear().await.unwrap();
    for i in 0..20 {
        assert!(!a.has_key(&format!("k{i}")).await.unwrap());
    }
    assert!(!a.version(7).has_key("v7").await.unwrap());
    assert_eq!(
        b.get::<String>("k0").await.unwrap().as_deref(),
        Some("survives")
    );
}

/// A cache is usable after `clear`.
pub async fn usable_after_clear(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    c.clear().await.unwrap();
    c.set("k", "again", LONG).await.unwrap();
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("again")
    );
}

/// The storage key is `prefix:version:key`.
pub async fn storage_key_form(ctx: &Ctx) {
    let c = ctx.cache();
    assert_eq!(
        c.make_key("user:1").unwrap(),
        format!("{}:1:user:1", ctx.prefix)
    );
    assert_eq!(
        c.version(9).make_key("x").unwrap(),
        format!("{}:9:x", ctx.prefix)
    );
}

/// A custom key function decides the storage key.
pub async fn custom_key_fn(ctx: &Ctx) {
    let prefix = ctx.prefix.clone();
    let c = ctx
        .builder()
        .key_fn(move |key, p, v| format!("{p}|v{v}|{}", key.to_uppercase()))
        .build()
        .unwrap();
    assert_eq!(c.make_key("abc").unwrap(), format!("{prefix}|v1|ABC"));
    c.set("abc", &1u8, LONG).await.unwrap();
    // "ABC" maps to the same storage key under this function.
    assert_eq!(c.get::<u8>("ABC").await.unwrap(), Some(1));
    let raw = ctx.backend.get(&format!("{prefix}|v1|ABC")).await.unwrap();
    assert!(raw.is_some());
    c.delete("abc").await.unwrap();
}

/// A prefix containing ':' is refused with a clear error.
pub async fn prefix_with_colon_refused(ctx: &Ctx) {
    let err = ctx.builder().key_prefix("a:b").build().unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

// ---------------------------------------------------------------- invalid keys and values

/// A key with a space is `InvalidKey`.
pub async fn key_with_space_invalid(ctx: &Ctx) {
    let c = ctx.cache();
    assert!(matches!(
        c.set("a b", "v", LONG).await,
        Err(Error::InvalidKey { .. })
    ));
}

/// A key with a control character is `InvalidKey`.
pub async fn key_with_control_char_invalid(ctx: &Ctx) {
    let c = ctx.cache();
    for key in ["a\nb", "a\rb", "tab\t", "nul\0", "del\u{7f}", "c1\u{85}"] {
        assert!(
            matches!(c.get::<String>(key).await, Err(Error::InvalidKey { .. })),
            "{key:?} accepted"
        );
    }
}

/// A key whose storage form exceeds 250 bytes is `InvalidKey`; exactly 250 is fine.
pub async fn key_too_long_invalid(ctx: &Ctx) {
    let c = ctx.cache();
    let overhead = c.make_key("").unwrap().len();
    let fits = "k".repeat(250 - overhead);
    c.set(&fits, "v", LONG).await.unwrap();
    assert_eq!(c.get::<String>(&fits).await.unwrap().as_deref(), Some("v"));
    let too_long = "k".repeat(251 - overhead);
    let err = c.set(&too_long, "v", LONG).await.unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err:?}");
    assert!(err.to_string().contains("250"), "{err}");
}

/// Key length is counted in bytes, not characters.
pub async fn key_length_in_bytes(ctx: &Ctx) {
    let c = ctx.cache();
    let overhead = c.make_key("").unwrap().len();
    // 'é' is two bytes: this is under 250 characters but over 250 bytes.
    let key = "é".repeat((251 - overhead).div_ceil(2));
    assert!(key.chars().count() < 250);
    assert!(matches!(
        c.set(&key, "v", LONG).await,
        Err(Error::InvalidKey { .. })
    ));
}

/// With `hash_long_keys`, long keys are stored under a hash and stay distinct.
pub async fn long_keys_hashed(ctx: &Ctx) {
    let c = ctx.builder().hash_long_keys(true).build().unwrap();
    let a = "a".repeat(1000);
    let b = format!("{}b", "a".repeat(999));
    c.set(&a, "A", LONG).await.unwrap();
    c.set(&b, "B", LONG).await.unwrap();
    assert_eq!(c.get::<String>(&a).await.unwrap().as_deref(), Some("A"));
    assert_eq!(c.get::<String>(&b).await.unwrap().as_deref(), Some("B"));
    assert!(c.make_key(&a).unwrap().len() <= 250);
    // Spaces are still refused: hashing is for length only.
    assert!(c.set("a b", "v", LONG).await.is_err());
}

/// Every operation validates its key.
pub async fn invalid_key_on_every_operation(ctx: &Ctx) {
    let c = ctx.cache();
    let bad = "bad key";
    let is_invalid = |r: Result<(), Error>| matches!(r, Err(Error::InvalidKey { .. }));
    assert!(is_invalid(c.get::<u8>(bad).await.map(|_| ())));
    assert!(is_invalid(c.set(bad, &1u8, LONG).await));
    assert!(is_invalid(c.add(bad, &1u8, LONG).await.map(|_| ())));
    assert!(is_invalid(c.delete(bad).await.map(|_| ())));
    assert!(is_invalid(c.has_key(bad).await.map(|_| ())));
    assert!(is_invalid(c.incr(bad, 1).await.map(|_| ())));
    assert!(is_invalid(c.touch(bad, LONG).await.map(|_| ())));
    assert!(is_invalid(
        c.get_many::<u8, _>(&["ok", bad]).await.map(|_| ())
    ));
    assert!(is_invalid(
        c.set_many::<u8, _, _>(&[("ok", 1u8), (bad, 2)], LONG)
            .await
            .map(|_| ())
    ));
    assert!(is_invalid(c.delete_many(&[bad]).await.map(|_| ())));
    // Nothing from the batch was stored.
    assert!(!c.has_key("ok").await.unwrap());
}

/// A value over `max_value_bytes` is refused, and the value it was to
/// replace is removed: a failed write never leaves a superseded value
/// readable (Django's memcached backend deletes it too).
pub async fn oversized_value_refused(ctx: &Ctx) {
    let c = ctx.builder().max_value_bytes(1000).build().unwrap();
    c.set("k", "small", LONG).await.unwrap();
    // Incompressible, so compression cannot bring it under the limit.
    let mut rng = fastrand::Rng::with_seed(1);
    let big: Vec<u8> = (0..5000).map(|_| rng.u8(..)).collect();
    let err = c.set("k", &big, LONG).await.unwrap_err();
    match err {
        Error::ValueTooLarge { size, limit } => {
            assert!(size > 1000);
            assert_eq!(limit, 1000);
        }
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert_eq!(
        c.get::<String>("k").await.unwrap(),
        None,
        "the value a refused set was to replace is still readable"
    );
    assert!(c.add("new", &big, LONG).await.is_err());
    assert!(!c.has_key("new").await.unwrap());
    // The same for a batch: the refused key's old value goes, nothing of
    // the batch is stored.
    c.set("a", "old a", LONG).await.unwrap();
    c.set("b", "old b", LONG).await.unwrap();
    let batch: Vec<(&str, Vec<u8>)> = vec![("a", b"fits".to_vec()), ("b", big.clone())];
    assert!(matches!(
        c.set_many::<Vec<u8>, _, _>(&batch, LONG).await,
        Err(Error::ValueTooLarge { .. })
    ));
    assert_eq!(c.get::<String>("b").await.unwrap(), None, "old b survived");
    assert_ne!(
        c.get::<Vec<u8>>("a").await.unwrap().as_deref(),
        Some(&b"fits"[..])
    );
}

/// Empty batches are no-ops on every backend, and caller errors (invalid
/// keys, values too large, empty batches) never count against the circuit
/// breaker: only transport, timeout and server failures do.
pub async fn caller_errors_do_not_open_the_breaker(ctx: &Ctx) {
    let c = ctx
        .builder()
        .max_value_bytes(1000)
        .breaker(larder_core::BreakerConfig::default().failure_threshold(2))
        .build()
        .unwrap();
    let none: [&str; 0] = [];
    let no_items: [(&str, &str); 0] = [];
    let big = vec![7u8; 4000];
    let mut rng = fastrand::Rng::with_seed(2);
    let noise: Vec<u8> = (0..4000).map(|_| rng.u8(..)).collect();
    for _ in 0..6 {
        assert_eq!(
            c.set_many::<str, _, _>(&no_items, LONG).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(c.delete_many(&none).await.unwrap(), 0);
        assert!(c.get_many::<String, _>(&none).await.unwrap().is_empty());
        assert!(matches!(
            c.get::<String>("bad key").await,
            Err(Error::InvalidKey { .. })
        ));
        assert!(matches!(
            c.set("k", &noise, LONG).await,
            Err(Error::ValueTooLarge { .. })
        ));
        let _ = big.len();
    }
    assert_eq!(c.breaker_state(), larder_core::BreakerState::Closed);
    c.set("k", "v", LONG).await.unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v"));
}

// ---------------------------------------------------------------- corrupt entries

/// Bytes written by a foreign client read as a miss.
pub async fn foreign_entry_is_a_miss(ctx: &Ctx) {
    let c = ctx.cache();
    let skey = c.make_key("k").unwrap();
    ctx.backend
        .set(&skey, Bytes::from_static(b"\x80\x04pickle"), Expiry::Never)
        .await
        .unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
    let got: HashMap<String, String> = c.get_many(&["k"]).await.unwrap();
    assert!(got.is_empty());
}

/// A truncated envelope reads as a miss.
pub async fn truncated_entry_is_a_miss(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", &post(), LONG).await.unwrap();
    let skey = c.make_key("k").unwrap();
    let full = ctx.backend.get(&skey).await.unwrap().unwrap();
    ctx.backend
        .set(&skey, full.slice(..full.len() / 2), Expiry::Never)
        .await
        .unwrap();
    assert_eq!(c.get::<Post>("k").await.unwrap(), None);
}

/// An empty stored value reads as a miss.
pub async fn empty_entry_is_a_miss(ctx: &Ctx) {
    let c = ctx.cache();
    let skey = c.make_key("k").unwrap();
    ctx.backend
        .set(&skey, Bytes::new(), Expiry::Never)
        .await
        .unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
}

/// A corrupt entry can be overwritten.
pub async fn corrupt_entry_overwritten(ctx: &Ctx) {
    let c = ctx.cache();
    let skey = c.make_key("k").unwrap();
    ctx.backend
        .set(
            &skey,
            Bytes::from_static(&[0xA7, 1, 3, 9, 9]),
            Expiry::Never,
        )
        .await
        .unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
    c.set("k", "fixed", LONG).await.unwrap();
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("fixed")
    );
}

// ---------------------------------------------------------------- concurrency

/// Many tasks reading and writing distinct keys see their own values.
pub async fn concurrent_distinct_keys(ctx: &Ctx) {
    let c = ctx.cache();
    let mut tasks = Vec::new();
    for t in 0..16u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25u32 {
                let key = format!("t{t}:{i}");
                c.set(&key, &(t * 1000 + i), LONG).await.unwrap();
                assert_eq!(c.get::<u32>(&key).await.unwrap(), Some(t * 1000 + i));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Readers racing a writer only ever see a whole value, never a torn one.
pub async fn concurrent_readers_see_whole_values(ctx: &Ctx) {
    let c = ctx.cache();
    let a = "a".repeat(50_000);
    let b = "b".repeat(60_000);
    c.set("k", &a, LONG).await.unwrap();
    let writer = {
        let (c, a, b) = (c.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..40 {
                c.set("k", if i % 2 == 0 { &b } else { &a }, LONG)
                    .await
                    .unwrap();
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (c, a, b) = (c.clone(), a.clone(), b.clone());
        readers.push(tokio::spawn(async move {
            for _ in 0..40 {
                let v = c.get::<String>("k").await.unwrap().expect("key present");
                assert!(v == a || v == b, "torn value of {} bytes", v.len());
            }
        }));
    }
    writer.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
}

// ---------------------------------------------------------------- get_or_compute

/// On a miss the loader runs once and its value is stored.
pub async fn get_or_compute_miss(ctx: &Ctx) {
    let c = ctx.cache();
    let calls = Arc::new(AtomicU32::new(0));
    let calls2 = calls.clone();
    let v: String = c
        .get_or_compute("k", LONG, || async move {
            calls2.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>("computed".to_string())
        })
        .await
        .unwrap();
    assert_eq!(v, "computed");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("computed")
    );
}

/// On a hit the loader does not run.
pub async fn get_or_compute_hit(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "cached", LONG).await.unwrap();
    let v: String = c
        .get_or_compute("k", LONG, || async {
            panic!("loader must not run on a hit");
            #[allow(unreachable_code)]
            Ok::<_, Error>(String::new())
        })
        .await
        .unwrap();
    assert_eq!(v, "cached");
}

/// A failing loader's error reaches the caller as it was (any error type)
/// and nothing is cached.
pub async fn get_or_compute_error_not_cached(ctx: &Ctx) {
    let c = ctx.cache();
    let r: Result<String, _> = c
        .get_or_compute("k", LONG, || async {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "origin down",
            ))
        })
        .await;
    match r {
        Err(larder_core::ComputeError::Loader(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
            assert_eq!(e.to_string(), "origin down");
        }
        other => panic!("expected the loader's error, got {other:?}"),
    }
    assert!(!c.has_key("k").await.unwrap());
}

/// Concurrent callers of one cold key share one loader run (single-flight).
pub async fn get_or_compute_single_flight(ctx: &Ctx) {
    let c = ctx.cache();
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (c, calls) = (c.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_compute("herd", LONG, || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(150)).await;
                Ok::<_, Error>(post())
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), post());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "callers recomputed");
}

// ------------------------------------------- leases, stale sets, stale serving

/// Options for a value that goes stale after one second and is kept 30 s
/// for stale serving.
fn stale_opts() -> ComputeOptions {
    ComputeOptions::new(Ttl::secs(1))
        .stale_if_error(Duration::from_secs(30))
        .no_early_refresh()
}

/// A second cache over the same backend with its own single-flight table,
/// as another process (or another `Cache` in this one) has. Backends with
/// leases coordinate processes; in-process backends share their write
/// generations between caches; otherwise the "other" cache is this one.
fn other_process(ctx: &Ctx, c: &Cache) -> Cache {
    // In-process backends share their write generations between caches.
    if c.capabilities().leases || c.backend().write_generations().is_some() {
        ctx.cache()
    } else {
        c.clone()
    }
}

async fn slow_value(
    delay_ms: u64,
    v: &'static str,
    calls: Arc<AtomicU32>,
) -> Result<String, Error> {
    calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    Ok(v.to_owned())
}

/// A loader that says when it has started, so a test can invalidate
/// *during* the computation however loaded the machine is.
async fn signalled_value(
    delay_ms: u64,
    v: &'static str,
    started: Arc<tokio::sync::Notify>,
) -> Result<String, Error> {
    started.notify_one();
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    Ok(v.to_owned())
}

/// A delete that lands while a computation runs wins: the computation's
/// result reaches its caller but is not stored (the classic stale set).
pub async fn stale_set_after_delete_is_dropped(ctx: &Ctx) {
    let a = ctx.cache();
    let b = other_process(ctx, &a);
    let started = Arc::new(tokio::sync::Notify::new());
    let computing = {
        let (a, started) = (a.clone(), started.clone());
        tokio::spawn(async move {
            a.get_or_compute("k", LONG, move || signalled_value(400, "old", started))
                .await
                .unwrap()
        })
    };
    started.notified().await;
    b.delete("k").await.unwrap();
    assert_eq!(computing.await.unwrap(), "old", "the caller gets its value");
    assert_eq!(
        a.get::<String>("k").await.unwrap(),
        None,
        "a result computed before the delete was stored after it"
    );
}

/// A write that lands while a computation runs wins over its result.
pub async fn stale_set_after_write_is_dropped(ctx: &Ctx) {
    let a = ctx.cache();
    let b = other_process(ctx, &a);
    let started = Arc::new(tokio::sync::Notify::new());
    let computing = {
        let (a, started) = (a.clone(), started.clone());
        tokio::spawn(async move {
            a.get_or_compute("k", LONG, move || signalled_value(400, "old", started))
                .await
                .unwrap()
        })
    };
    started.notified().await;
    b.set("k", "new", LONG).await.unwrap();
    assert_eq!(computing.await.unwrap(), "old");
    assert_eq!(a.get::<String>("k").await.unwrap().as_deref(), Some("new"));
}

/// The same when a stale value was present: the refresh loses to a delete.
pub async fn stale_refresh_after_delete_is_dropped(ctx: &Ctx) {
    let a = ctx.cache();
    let b = other_process(ctx, &a);
    let opts = stale_opts();
    let calls = Arc::new(AtomicU32::new(0));
    let first = calls.clone();
    let v: String = a
        .get_or_compute_with("k", &opts, move || slow_value(0, "v1", first))
        .await
        .unwrap();
    assert_eq!(v, "v1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Arc::new(tokio::sync::Notify::new());
    let computing = {
        let (a, started) = (a.clone(), started.clone());
        tokio::spawn(async move {
            a.get_or_compute_with("k", &opts, move || signalled_value(400, "v2", started))
                .await
                .unwrap()
        })
    };
    started.notified().await;
    b.delete("k").await.unwrap();
    assert_eq!(computing.await.unwrap(), "v2");
    assert_eq!(a.get::<String>("k").await.unwrap(), None);
}

/// A refresh that outlives the stale entry it replaces is stored: the
/// entry merely expired while the lease was held, nobody wrote or deleted
/// it, so the next caller must not compute again.
pub async fn refresh_outliving_its_stale_entry_is_stored(ctx: &Ctx) {
    let c = ctx.cache();
    // Fresh for 1 s, then kept 2 s more for stale serving; a stale read
    // answers at once and refreshes in the background. The stale window is
    // 2 s, not 1 s, because memcached counts expiry in whole seconds of its
    // own coarse clock: an entry stored for 2 s may be gone after 1.1 s.
    let opts = ComputeOptions::new(Ttl::secs(1))
        .stale_while_revalidate(Duration::from_secs(2))
        .lease_ttl(Duration::from_secs(10))
        .no_early_refresh();
    let calls = Arc::new(AtomicU32::new(0));
    let first = calls.clone();
    let _: String = c
        .get_or_compute_with("k", &opts, move || slow_value(0, "v1", first))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Stale now; the refresh outlasts the rest of the stale window (also
    // on second-granular backends, where it may last up to 4 s), but not
    // its lease.
    let second = calls.clone();
    let v: String = c
        .get_or_compute_with("k", &opts, move || slow_value(5000, "v2", second))
        .await
        .unwrap();
    assert_eq!(v, "v1", "served stale while refreshing");
    let deadline = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < deadline {
        if c.get::<String>("k").await.unwrap().as_deref() == Some("v2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("v2"),
        "a refresh whose stale entry expired meanwhile was thrown away"
    );
    let third = calls.clone();
    let v: String = c
        .get_or_compute_with("k", &opts, move || slow_value(0, "v3", third))
        .await
        .unwrap();
    assert_eq!(v, "v2");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "computed again");
}

/// One rule for "present", shared by every plain call: an entry that
/// `get_or_compute` wrote and that is past its TTL but inside its stale
/// window is absent to `get`, `has_key`, `add`, `touch` and `get_many`
/// (only `get_or_compute`, which asks for stale data, sees it); `touch`
/// moves the soft expiry too; integers it wrote stay incrementable.
pub async fn stale_window_is_absent_to_plain_calls(ctx: &Ctx) {
    let c = ctx.cache();
    let opts = ComputeOptions::new(Ttl::secs(1))
        .stale_while_revalidate(Duration::from_secs(60))
        .no_early_refresh();
    for k in ["stale", "added", "touched", "moved"] {
        let _: String = c
            .get_or_compute_with(k, &opts, || async { Ok::<_, Error>("old".to_owned()) })
            .await
            .unwrap();
    }
    let n: i64 = c
        .get_or_compute_with("n", &opts, || async { Ok::<_, Error>(10) })
        .await
        .unwrap();
    assert_eq!(n, 10);
    assert_eq!(
        c.incr("n", 1).await.unwrap(),
        11,
        "an integer from get_or_compute"
    );
    assert!(c.touch("moved", LONG).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Past the TTL, inside the stale window.
    assert_eq!(c.get::<String>("stale").await.unwrap(), None);
    assert!(
        !c.has_key("stale").await.unwrap(),
        "has_key sees a stale-window entry"
    );
    assert!(
        c.get_many::<String, _>(&["stale"])
            .await
            .unwrap()
            .is_empty(),
        "get_many sees a stale-window entry"
    );
    assert!(
        !c.touch("touched", LONG).await.unwrap(),
        "touch revived a stale-window entry"
    );
    assert_eq!(c.get::<String>("touched").await.unwrap(), None);
    assert!(
        c.add("added", "new", LONG).await.unwrap(),
        "add refused over a stale-window entry"
    );
    assert_eq!(
        c.get::<String>("added").await.unwrap().as_deref(),
        Some("new")
    );
    assert!(
        !c.add("added", "newer", LONG).await.unwrap(),
        "add over a live entry"
    );
    assert_eq!(
        c.get::<String>("moved").await.unwrap().as_deref(),
        Some("old"),
        "touch did not move the soft expiry"
    );
    assert!(c.has_key("moved").await.unwrap());
    // get_or_compute still serves the stale entry while it refreshes.
    let v: String = c
        .get_or_compute_with("stale", &opts, || async {
            Ok::<_, Error>("fresh".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(v, "old", "the stale window is for get_or_compute");
}

/// A type postcard cannot read back (it deserializes "any", like
/// `serde_json::Value` or this untagged enum), except as a bare integer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Loose {
    Number(i64),
    Text(String),
}

/// Codec honesty: a type the codec cannot read back is never a silent miss
/// forever. `set`, `add` and `set_many` refuse it (`CodecCannotRead`,
/// naming the type) and leave nothing readable behind; `get` of such an
/// entry written by someone else says the same; `get_or_compute` returns
/// the loader's value uncached (and warns once); with the JSON codec the
/// same type caches.
pub async fn unreadable_types_fail_loudly(ctx: &Ctx) {
    let c = ctx.cache();
    let v = Loose::Text("hello".into());
    let refused = |r: Result<(), Error>, call: &str| match r {
        Err(Error::CodecCannotRead { type_name }) => {
            assert!(type_name.contains("Loose"), "{call}: {type_name}")
        }
        other => panic!("{call}: expected CodecCannotRead, got {other:?}"),
    };
    c.set("loose", "an older value", LONG).await.unwrap();
    refused(c.set("loose", &v, LONG).await, "set");
    assert!(
        !c.has_key("loose").await.unwrap(),
        "a refused set left the superseded value"
    );
    refused(c.add("loose", &v, LONG).await.map(|_| ()), "add");
    refused(
        c.set_many::<Loose, _, _>(&[("loose", v.clone())], LONG)
            .await
            .map(|_| ()),
        "set_many",
    );
    assert!(!c.has_key("loose").await.unwrap(), "a refused write stored");
    // An entry of that type in postcard, as another writer (an older
    // build, another language) could leave it.
    let bytes = larder_core::envelope::encode(&v, &Default::default(), None).unwrap();
    let skey = c.make_key("loose").unwrap();
    c.backend()
        .set(&skey, bytes, Expiry::After(Duration::from_secs(3600)))
        .await
        .unwrap();
    match c.get::<Loose>("loose").await {
        Err(Error::CodecCannotRead { type_name }) => assert!(type_name.contains("Loose")),
        other => panic!("expected CodecCannotRead, got {other:?}"),
    }
    let calls = Arc::new(AtomicU32::new(0));
    for _ in 0..3 {
        let counting = calls.clone();
        let got: Loose = c
            .get_or_compute("computed", LONG, move || async move {
                counting.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(Loose::Text("computed".into()))
            })
            .await
            .unwrap();
        assert_eq!(got, Loose::Text("computed".into()));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "returned uncached each time"
    );
    assert!(
        !c.has_key("computed").await.unwrap(),
        "an entry nobody can read was stored"
    );
    let json = ctx.builder().codec(Codec::Json).build().unwrap();
    json.set("loose", &v, LONG).await.unwrap();
    assert_eq!(json.get::<Loose>("loose").await.unwrap(), Some(v));
}

/// What the model knows of one key.
#[derive(Clone, Debug, Default)]
struct Modeled {
    /// The value a plain `get` returns while present (decimal for counters).
    value: Option<String>,
    /// When the entry leaves the backend (`None`: never).
    hard: Option<std::time::Instant>,
    /// When a `get_or_compute` entry stops being present (`None`: none).
    soft: Option<std::time::Instant>,
    /// Before this, a background refresh may still land: not checked.
    settled: Option<std::time::Instant>,
    /// What the key holds is not known (a call whose effect depended on a
    /// boundary the model could not place): not checked until rewritten.
    unknown: bool,
}

impl Modeled {
    fn written(
        value: String,
        hard: Option<std::time::Instant>,
        soft: Option<std::time::Instant>,
    ) -> Self {
        Modeled {
            value: Some(value),
            hard,
            soft,
            settled: None,
            unknown: false,
        }
    }

    /// Present at `t`, or `None` when `t` is too close to a boundary (or
    /// to a refresh) for the backend's clock granularity to tell.
    fn present_at(&self, t: std::time::Instant, margin: Duration) -> Option<bool> {
        if self.unknown || self.settled.is_some_and(|s| t < s) {
            return None;
        }
        if self.value.is_none() {
            return Some(false);
        }
        let mut alive = true;
        for b in [self.hard, self.soft].into_iter().flatten() {
            let d = if t > b { t - b } else { b - t };
            if d < margin {
                return None;
            }
            alive &= t < b;
        }
        Some(alive)
    }

    /// Past its soft expiry but still in the backend: in the stale window.
    fn stale_window_at(&self, t: std::time::Instant, margin: Duration) -> bool {
        self.value.is_some()
            && self.soft.is_some_and(|s| s + margin < t)
            && self.hard.is_none_or(|h| t + margin < h)
    }
}

/// A randomized model test of the one rule for "present": a seeded mix of
/// `get_or_compute` (with a stale window), `get`, `get_many`, `has_key`,
/// `set`, `add`, `touch`, `incr`, `delete` and expiry, checked after every
/// step against a model of that rule (keys near an expiry boundary, where
/// clock granularity decides, are skipped). `MODEL_SEED` picks the seed.
pub async fn model_of_presence_agrees(ctx: &Ctx) {
    use std::time::Instant;
    let c = ctx.cache();
    let seed = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut rng = fastrand::Rng::with_seed(seed);
    // memcached and Redis count some lifetimes in whole seconds.
    let margin = if ctx.backend.name() == "memcached" {
        Duration::from_millis(1200)
    } else {
        Duration::from_millis(300)
    };
    let gc_opts = ComputeOptions::new(Ttl::secs(1))
        .stale_while_revalidate(Duration::from_secs(2))
        .no_early_refresh();
    // k0, k1 hold counters, k2, k3 text: each key keeps one type. Few
    // keys and long sleeps, so entries live into their stale windows.
    let keys = ["k0", "k1", "k2", "k3"];
    let mut model: Vec<Modeled> = vec![Modeled::default(); keys.len()];
    let mut checked = 0u32;
    let mut next = 0u64;
    for step in 0..100 {
        let i = rng.usize(..keys.len());
        let (k, counter) = (keys[i], i < 2);
        next += 1;
        let fresh = if counter {
            next.to_string()
        } else {
            format!("v{next}")
        };
        let ttl_s = if rng.bool() { 1 } else { 3600 };
        let t0 = Instant::now();
        let m = &mut model[i];
        let before = m.present_at(t0, margin);
        let op = rng.u8(..8);
        let what = match op {
            0 => {
                if counter {
                    c.set(k, &fresh.parse::<i64>().unwrap(), Ttl::secs(ttl_s))
                        .await
                        .unwrap();
                } else {
                    c.set(k, &fresh, Ttl::secs(ttl_s)).await.unwrap();
                }
                *m = Modeled::written(
                    fresh.clone(),
                    (ttl_s == 1).then(|| t0 + Duration::from_secs(1)),
                    None,
                );
                "set"
            }
            1 => {
                let added = if counter {
                    c.add(k, &fresh.parse::<i64>().unwrap(), Ttl::secs(ttl_s))
                        .await
                        .unwrap()
                } else {
                    c.add(k, &fresh, Ttl::secs(ttl_s)).await.unwrap()
                };
                if let Some(p) = before {
                    assert_eq!(
                        added, !p,
                        "step {step} (seed {seed}): add({k}) with present={p}"
                    );
                }
                if added {
                    *m = Modeled::written(
                        fresh.clone(),
                        (ttl_s == 1).then(|| t0 + Duration::from_secs(1)),
                        None,
                    );
                }
                "add"
            }
            2 => {
                // delete removes a stale-window entry too (an invalidation
                // must) and reports that it removed something: asserted only
                // away from every boundary of the entry.
                let gone = m.value.is_none()
                    || [m.soft, m.hard]
                        .into_iter()
                        .flatten()
                        .all(|b| t0 > b + margin);
                let existed = c.delete(k).await.unwrap();
                match before {
                    Some(true) => assert!(
                        existed,
                        "step {step} (seed {seed}): delete({k}) of a present entry"
                    ),
                    Some(false)
                        if gone && m.hard.is_some() || m.value.is_none() && before.is_some() =>
                    {
                        assert!(
                            !existed,
                            "step {step} (seed {seed}): delete({k}) of an absent entry"
                        )
                    }
                    _ => {}
                }
                *m = Modeled::default();
                "delete"
            }
            3 => {
                let touched = c.touch(k, Ttl::secs(ttl_s)).await.unwrap();
                if let Some(p) = before {
                    assert_eq!(touched, p, "step {step} (seed {seed}): touch({k})");
                }
                if touched {
                    let until = (ttl_s == 1).then(|| t0 + Duration::from_secs(1));
                    m.hard = until;
                    m.soft = m.soft.and(until);
                }
                "touch"
            }
            4 if counter => {
                let r = c.incr(k, 1).await;
                match (before, r) {
                    (Some(true), Ok(n)) => {
                        let want: i64 = m.value.as_deref().unwrap().parse::<i64>().unwrap() + 1;
                        assert_eq!(n, want, "step {step} (seed {seed}): incr({k})");
                        m.value = Some(n.to_string());
                    }
                    (Some(false), Err(Error::NotFound { .. })) => {}
                    (None, Ok(n)) => m.value = Some(n.to_string()),
                    (None, Err(Error::NotFound { .. })) => *m = Modeled::default(),
                    (p, r) => {
                        panic!("step {step} (seed {seed}): incr({k}) with present={p:?}: {r:?}")
                    }
                }
                "incr"
            }
            4 | 5 => {
                let f = fresh.clone();
                let got: String = if counter {
                    c.get_or_compute_with(k, &gc_opts, move || async move {
                        Ok::<_, Error>(f.parse::<i64>().unwrap())
                    })
                    .await
                    .unwrap()
                    .to_string()
                } else {
                    c.get_or_compute_with(k, &gc_opts, move || async move { Ok::<_, Error>(f) })
                        .await
                        .unwrap()
                };
                let stale = m.stale_window_at(t0, margin);
                let now = Instant::now();
                let computed = if counter {
                    // Integers are stored bare, with the fresh TTL.
                    Modeled::written(fresh.clone(), Some(now + Duration::from_secs(1)), None)
                } else {
                    Modeled::written(
                        fresh.clone(),
                        Some(now + Duration::from_secs(3)),
                        Some(now + Duration::from_secs(1)),
                    )
                };
                match before {
                    Some(true) => assert_eq!(
                        Some(&got),
                        m.value.as_ref(),
                        "step {step} (seed {seed}): get_or_compute({k}) of a present entry"
                    ),
                    Some(false) if stale => {
                        assert_eq!(
                            Some(&got),
                            m.value.as_ref(),
                            "step {step} (seed {seed}): get_or_compute({k}) in the stale window serves stale"
                        );
                        // Refreshed in the background, landing soon.
                        *m = computed;
                        m.settled = Some(now + margin + Duration::from_millis(300));
                    }
                    Some(false) => {
                        assert_eq!(
                            got, fresh,
                            "step {step} (seed {seed}): get_or_compute({k}) of an absent entry"
                        );
                        *m = computed;
                        m.settled = Some(now + Duration::from_millis(50));
                    }
                    None if got == fresh => {
                        *m = computed;
                        m.settled = Some(now + Duration::from_millis(50));
                    }
                    // Served what was there; perhaps refreshing it.
                    None => m.unknown = true,
                }
                "get_or_compute"
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(rng.u64(300..900))).await;
                "sleep"
            }
        };
        // The rule, after every step, for every key the model is sure of.
        let t = Instant::now();
        for (j, key) in keys.iter().enumerate() {
            let Some(present) = model[j].present_at(t, margin) else {
                continue;
            };
            let got: Option<String> = if j < 2 {
                c.get::<i64>(key).await.unwrap().map(|n| n.to_string())
            } else {
                c.get::<String>(key).await.unwrap()
            };
            let has = c.has_key(key).await.unwrap();
            if model[j].present_at(Instant::now(), margin) != Some(present) {
                continue;
            }
            let want = present.then(|| model[j].value.clone()).flatten();
            assert_eq!(
                got, want,
                "step {step} ({what} on {k}, seed {seed}): get({key})"
            );
            assert_eq!(
                has, present,
                "step {step} ({what} on {k}, seed {seed}): has_key({key}) disagrees with get"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 100,
        "only {checked} checks were certain enough to make"
    );
}

/// `close()` releases connections and leaves the cache usable, the same
/// on every backend (PostgreSQL and MariaDB caches used to fail forever).
pub async fn usable_after_close(ctx: &Ctx) {
    let c = ctx.cache();
    c.set("k", "v", LONG).await.unwrap();
    c.close().await.unwrap();
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("v"),
        "unusable after close()"
    );
    c.set("k2", "w", LONG).await.unwrap();
    c.close().await.unwrap();
    c.close().await.unwrap();
    assert_eq!(c.get::<String>("k2").await.unwrap().as_deref(), Some("w"));
}

/// Callers in two "processes" (caches with their own single-flight) share
/// one computation through the backend's lease; without leases, one per
/// process.
pub async fn lease_one_computation_across_caches(ctx: &Ctx) {
    let caches = [ctx.cache(), ctx.cache()];
    let leases = caches[0].capabilities().leases;
    let calls = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for c in &caches {
        for _ in 0..8 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_compute("herd", LONG, move || slow_value(300, "v", calls))
                    .await
                    .unwrap()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "v");
    }
    let n = calls.load(Ordering::SeqCst);
    if leases {
        assert_eq!(n, 1, "the lease did not stop the second process computing");
    } else {
        assert!(n <= 2, "{n} computations for two processes");
    }
}

/// A caller that loses the lease while a stale value exists gets the stale
/// value at once instead of waiting.
pub async fn lease_loser_serves_stale(ctx: &Ctx) {
    let c = ctx.cache();
    let opts = stale_opts();
    let calls = Arc::new(AtomicU32::new(0));
    let first = calls.clone();
    let _: String = c
        .get_or_compute_with("k", &opts, move || slow_value(0, "old", first))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let skey = c.make_key("k").unwrap();
    if !c.capabilities().leases {
        assert!(matches!(
            c.backend()
                .lease_acquire(&skey, Duration::from_secs(5), None)
                .await,
            Err(Error::Unsupported { .. })
        ));
        return;
    }
    let seen = c.backend().get(&skey).await.unwrap();
    assert!(
        seen.is_some(),
        "the stale entry is kept for the grace period"
    );
    let held = c
        .backend()
        .lease_acquire(&skey, Duration::from_secs(5), seen)
        .await
        .unwrap();
    assert!(matches!(held, LeaseGrant::Won(_)));
    let counting = calls.clone();
    let v: String = c
        .get_or_compute_with("k", &opts, move || slow_value(0, "new", counting))
        .await
        .unwrap();
    assert_eq!(v, "old", "the loser serves the stale value");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the loser computed anyway");
}

/// A lease holder that never finishes (a crashed process) delays the others
/// by at most the lease time: then one of them computes.
pub async fn lease_holder_crash_is_bounded(ctx: &Ctx) {
    let c = ctx.cache();
    if !c.capabilities().leases {
        return lease_one_computation_across_caches(ctx).await;
    }
    let skey = c.make_key("k").unwrap();
    let grant = c
        .backend()
        .lease_acquire(&skey, Duration::from_secs(1), None)
        .await
        .unwrap();
    assert!(matches!(grant, LeaseGrant::Won(_)));
    // ...and the holder "crashes": never fills, never releases.
    let opts = ComputeOptions::new(LONG).lease_ttl(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let calls = Arc::new(AtomicU32::new(0));
    let counting = calls.clone();
    let v: String = c
        .get_or_compute_with("k", &opts, move || slow_value(0, "v", counting))
        .await
        .unwrap();
    assert_eq!(v, "v");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Generous bound (a loaded test machine); the point is "not forever".
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "waited {:?}",
        started.elapsed()
    );
}

/// The raw lease protocol: one holder at a time; a fill stores only while
/// its lease holds and the entry is what it saw; delete breaks the lease.
pub async fn lease_protocol(ctx: &Ctx) {
    let c = ctx.cache();
    let b = c.backend();
    let skey = c.make_key("k").unwrap();
    let ttl = Duration::from_secs(30);
    let exp = Expiry::After(Duration::from_secs(60));
    if !c.capabilities().leases {
        assert!(matches!(
            b.lease_acquire(&skey, ttl, None).await,
            Err(Error::Unsupported { .. })
        ));
        return;
    }
    let v = |s: &str| Bytes::from(s.to_owned());
    // Fill while held: stored; the lease is gone afterwards.
    let LeaseGrant::Won(l1) = b.lease_acquire(&skey, ttl, None).await.unwrap() else {
        panic!("a free key's lease was refused")
    };
    assert_eq!(
        b.lease_acquire(&skey, ttl, None).await.unwrap(),
        LeaseGrant::Held
    );
    assert!(b.lease_fill(&skey, v("one"), exp, &l1).await.unwrap());
    assert_eq!(b.get(&skey).await.unwrap(), Some(v("one")));
    assert!(
        !b.lease_fill(&skey, v("again"), exp, &l1).await.unwrap(),
        "a lease filled twice"
    );
    // A delete breaks the lease, also on an absent key.
    b.delete(&skey).await.unwrap();
    let LeaseGrant::Won(l2) = b.lease_acquire(&skey, ttl, None).await.unwrap() else {
        panic!("lease refused after fill")
    };
    b.delete(&skey).await.unwrap();
    assert!(!b.lease_fill(&skey, v("stale"), exp, &l2).await.unwrap());
    assert_eq!(b.get(&skey).await.unwrap(), None, "a fill beat a delete");
    // A write between grant and fill wins.
    let LeaseGrant::Won(l3) = b.lease_acquire(&skey, ttl, None).await.unwrap() else {
        panic!("lease refused after a broken one")
    };
    b.set(&skey, v("written"), exp).await.unwrap();
    assert!(!b.lease_fill(&skey, v("stale"), exp, &l3).await.unwrap());
    assert_eq!(b.get(&skey).await.unwrap(), Some(v("written")));
    // Release hands the key to the next caller at once.
    b.delete(&skey).await.unwrap();
    let LeaseGrant::Won(l4) = b.lease_acquire(&skey, ttl, None).await.unwrap() else {
        panic!("lease refused")
    };
    b.lease_release(&skey, &l4).await.unwrap();
    assert!(matches!(
        b.lease_acquire(&skey, ttl, None).await.unwrap(),
        LeaseGrant::Won(_)
    ));
    // Asking for the lease on an entry that was filled since the caller
    // read it (a lost race), then giving it back, leaves the entry alone.
    b.set(&skey, v("fresh"), exp).await.unwrap();
    if let LeaseGrant::Won(l5) = b.lease_acquire(&skey, ttl, None).await.unwrap() {
        b.lease_release(&skey, &l5).await.unwrap();
    }
    assert_eq!(
        b.get(&skey).await.unwrap(),
        Some(v("fresh")),
        "a lease took a filled entry away"
    );
    // Leases are cleared with their prefix.
    c.clear().await.unwrap();
    assert!(matches!(
        b.lease_acquire(&skey, ttl, None).await.unwrap(),
        LeaseGrant::Won(_)
    ));
}

/// Inside the stale-while-revalidate window callers get the stale value at
/// once and one background refresh replaces it.
pub async fn stale_while_revalidate_refreshes_once(ctx: &Ctx) {
    let c = ctx.cache();
    let opts = ComputeOptions::new(Ttl::secs(1))
        .stale_while_revalidate(Duration::from_secs(30))
        .no_early_refresh();
    let calls = Arc::new(AtomicU32::new(0));
    let first = calls.clone();
    let _: String = c
        .get_or_compute_with("k", &opts, move || slow_value(0, "v1", first))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (c, calls) = (c.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_compute_with("k", &opts, move || slow_value(300, "v2", calls))
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "v1", "stale served at once");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        if c.get::<String>("k").await.unwrap().as_deref() == Some("v2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the background refresh never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one refresh for all stale readers"
    );
}

/// A failing loader inside the stale-if-error window yields the stale
/// value; outside it, the error.
pub async fn stale_if_error_serves_stale(ctx: &Ctx) {
    let c = ctx.cache();
    let _: String = c
        .get_or_compute_with("k", &stale_opts(), || async {
            Ok::<_, Error>("v1".to_owned())
        })
        .await
        .unwrap();
    let strict = ComputeOptions::new(Ttl::secs(1)).no_early_refresh();
    let _: String = c
        .get_or_compute_with("strict", &strict, || async {
            Ok::<_, Error>("v1".to_owned())
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let failing = || async { Err::<String, Error>(Error::config("origin down")) };
    let v = c.get_or_compute_with("k", &stale_opts(), failing).await;
    assert_eq!(v.unwrap(), "v1", "stale value served on error");
    let e = c.get_or_compute_with("strict", &strict, failing).await;
    assert!(e.is_err(), "no stale window, so the error");
}

/// XFetch: with a large β a value is recomputed before it expires, while
/// callers keep getting the current value.
pub async fn early_refresh_recomputes_before_expiry(ctx: &Ctx) {
    let c = ctx.cache();
    let opts = ComputeOptions::new(Ttl::secs(2)).early_refresh(50.0);
    let calls = Arc::new(AtomicU32::new(0));
    for _ in 0..15 {
        let counting = calls.clone();
        let v: String = c
            .get_or_compute_with("k", &opts, move || slow_value(100, "v", counting))
            .await
            .unwrap();
        assert_eq!(v, "v");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // 15 reads in ~1 s of a 2 s TTL: only early refreshes recompute.
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "no early refresh happened"
    );
}

/// A value written by get_or_compute is a miss for plain `get` once past
/// its freshness, though it is kept for stale serving.
pub async fn plain_get_respects_freshness(ctx: &Ctx) {
    let c = ctx.cache();
    let _: String = c
        .get_or_compute_with("k", &stale_opts(), || async {
            Ok::<_, Error>("v".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.get::<String>("k").await.unwrap(), None);
    let raw = c.backend().get(&c.make_key("k").unwrap()).await.unwrap();
    assert!(
        raw.is_some(),
        "the stale entry is kept for the grace period"
    );
}

/// Lists every case, for the suite macro; a unit test checks it is complete.
#[doc(hidden)]
#[macro_export]
macro_rules! __for_each_storing_case {
    ($gen:path, $module:ident, $make:expr) => {
        $gen!($module, $make;
            set_then_get, get_missing_is_none, set_overwrites, stored_none_is_a_hit,
            empty_values_are_hits, struct_round_trip, integers_round_trip, scalars_round_trip,
            collections_round_trip, unicode_values, binary_values, one_mib_value,
            four_mib_compressible_value, wrong_type_is_a_miss, unicode_keys, empty_key,
            json_codec, codecs_read_each_other, compression_off,
            add_when_absent, add_when_present, add_after_expiry, add_zero_ttl, add_is_atomic,
            get_many_only_hits, get_many_empty, get_many_skips_expired, get_many_skips_wrong_type,
            set_many_then_get_many, set_many_ttl, set_many_zero_ttl_removes, set_many_structs,
            delete_present, delete_absent, delete_expired, delete_many_counts,
            has_key_present_absent, has_key_expired,
            incr_existing, decr_existing, incr_negative_delta, decr_below_zero,
            incr_missing_not_found, incr_expired_not_found, incr_text_not_a_number,
            incr_float_not_a_number, incr_overflow, incr_keeps_ttl, incr_keeps_no_expiry,
            incr_concurrent_exact_sum, incr_decr_concurrent_net, foreign_integer_is_readable,
            expires_after_ttl, zero_ttl_not_retrievable, negative_ttl_not_retrievable,
            never_ttl_persists, default_ttl_applies, default_ttl_never, sub_second_ttl,
            ttl_over_thirty_days, set_replaces_ttl,
            touch_extends, touch_shortens, touch_missing, touch_zero_expires, touch_never,
            touch_keeps_value,
            versions_are_isolated, builder_version, incr_version_moves, decr_version_moves,
            incr_version_missing, decr_version_below_zero,
            prefixes_isolate, clear_only_own_prefix, usable_after_clear, storage_key_form,
            custom_key_fn, prefix_with_colon_refused,
            key_with_space_invalid, key_with_control_char_invalid, key_too_long_invalid,
            key_length_in_bytes, long_keys_hashed, invalid_key_on_every_operation,
            oversized_value_refused, caller_errors_do_not_open_the_breaker,
            foreign_entry_is_a_miss, truncated_entry_is_a_miss, empty_entry_is_a_miss,
            corrupt_entry_overwritten,
            concurrent_distinct_keys, concurrent_readers_see_whole_values,
            get_or_compute_miss, get_or_compute_hit, get_or_compute_error_not_cached,
            get_or_compute_single_flight,
            stale_set_after_delete_is_dropped, stale_set_after_write_is_dropped,
            stale_refresh_after_delete_is_dropped, refresh_outliving_its_stale_entry_is_stored,
            stale_window_is_absent_to_plain_calls, unreadable_types_fail_loudly,
            model_of_presence_agrees, usable_after_close,
            lease_one_computation_across_caches,
            lease_loser_serves_stale, lease_holder_crash_is_bounded, lease_protocol,
            stale_while_revalidate_refreshes_once, stale_if_error_serves_stale,
            early_refresh_recomputes_before_expiry, plain_get_respects_freshness,
        );
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` in this file is listed in the macro, and nothing else.
    #[test]
    fn case_list_is_complete() {
        crate::assert_case_list_complete(include_str!("cases.rs"), "__for_each_storing_case");
    }
}
