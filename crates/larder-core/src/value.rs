//! What a cache stores: values it can read back.
//!
//! A value that encodes but never decodes again makes a cache that never
//! hits: every `get` a miss, every `get_or_compute` a computation. The
//! default codec (postcard) is not self-describing, so a whole family of
//! ordinary serde types are like that with it: `serde_json::Value`,
//! untagged and internally tagged enums, `#[serde(flatten)]`. Only the
//! type's `Deserialize` knows, so [`Cache::set`](crate::Cache::set) and
//! friends take a [`CacheValue`]: `Serialize` plus a way back to an owned
//! type, and check once per type that the way back works.

use std::cell::RefCell;
use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::{self, DecodeError};
use crate::{Error, Result};

/// A value `set`, `add` and `set_many` accept: it serializes, and the owned
/// type a later `get` asks for deserializes from what it wrote.
///
/// Implemented for every `T: Serialize + DeserializeOwned` (what `get`
/// returns), for `str` (read back as `String`) and for slices `[T]` (read
/// back as `Vec<T>`). Borrowed views (`struct Row<'a> { name: &'a str }`,
/// or `&&str` as in `set(k, &"text", ttl)`) are not: they cannot be read
/// back as themselves. Store the owned type, or pass `"text"` itself.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// use larder_core::{Cache, DummyBackend, Error, Ttl};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// #[serde(untagged)]
/// enum Loose { Number(u32), Text(String) }
///
/// let cache = Cache::new(DummyBackend);
/// cache.set("greeting", "hello", Ttl::secs(60)).await?;
/// cache.set("ids", &[1u32, 2, 3][..], Ttl::secs(60)).await?;
/// // postcard (the default codec) cannot read an untagged enum back:
/// // refused at once, rather than stored and missed on every read.
/// let r = cache.set("loose", &Loose::Text("x".into()), Ttl::secs(60)).await;
/// assert!(matches!(r, Err(Error::CodecCannotRead { .. })));
/// # Ok::<(), Error>(()) }).unwrap();
/// ```
///
/// The check costs one decode of the first value of each type, per thread
/// and codec; later writes of the type skip it. It is a check of the
/// type: a type whose readability depends on the value (an `f64` NaN under
/// the JSON codec, which writes `null`) can still write an unreadable
/// entry after a readable one, and `get` then logs it as a miss.
pub trait CacheValue: Serialize {
    /// Whether `bytes` (an envelope this value was just encoded to) decodes
    /// again as the owned type. `Err` says why not.
    #[doc(hidden)]
    fn check_reads_back(bytes: &[u8]) -> Result<()>;
}

impl<T: Serialize + DeserializeOwned> CacheValue for T {
    fn check_reads_back(bytes: &[u8]) -> Result<()> {
        reads_back::<T>(bytes)
    }
}

impl CacheValue for str {
    fn check_reads_back(bytes: &[u8]) -> Result<()> {
        reads_back::<String>(bytes)
    }
}

impl<T: Serialize + DeserializeOwned> CacheValue for [T] {
    fn check_reads_back(bytes: &[u8]) -> Result<()> {
        reads_back::<Vec<T>>(bytes)
    }
}

/// Most distinct types one thread remembers as readable; past it, every
/// write of a new type decodes once more (correct, just slower).
const MAX_KNOWN_TYPES: usize = 1024;

thread_local! {
    /// Types (by the address and length of their name, and the codec tag
    /// in the envelope) whose encoding was seen to decode again. Per
    /// thread, so the hot path takes no lock.
    static KNOWN_READABLE: RefCell<HashSet<(usize, usize, u8)>> = RefCell::new(HashSet::new());
}

/// Whether `T` decodes from `bytes`, its own encoding. Decodes once per
/// type, thread and codec; later calls look the type up.
pub(crate) fn reads_back<T: DeserializeOwned>(bytes: &[u8]) -> Result<()> {
    let name = std::any::type_name::<T>();
    // The envelope's flags byte carries the codec (bare integers have no
    // envelope; any byte will do for them, they always decode).
    let codec = bytes.get(2).copied().unwrap_or(0);
    let id = (name.as_ptr() as usize, name.len(), codec);
    if KNOWN_READABLE.with(|k| k.borrow().contains(&id)) {
        return Ok(());
    }
    match envelope::decode::<T>(bytes) {
        Ok(_) => {
            KNOWN_READABLE.with(|k| {
                let mut k = k.borrow_mut();
                if k.len() < MAX_KNOWN_TYPES {
                    k.insert(id);
                }
            });
            Ok(())
        }
        Err(DecodeError::NeedsSelfDescribing(_)) => {
            Err(Error::CodecCannotRead { type_name: name })
        }
        Err(e) => Err(Error::Encode(format!(
            "a value of type {name} does not read back from its own encoding ({e}); it would never be a hit"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Codec, EnvelopeConfig};
    use serde::Deserialize;

    fn encoded<T: Serialize + ?Sized>(v: &T, codec: Codec) -> Vec<u8> {
        let cfg = EnvelopeConfig {
            codec,
            ..EnvelopeConfig::default()
        };
        envelope::encode(v, &cfg, None).unwrap().to_vec()
    }

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Number(u32),
        Text(String),
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind")]
    enum Tagged {
        A { x: u32 },
    }

    #[test]
    fn self_describing_types_are_refused_under_postcard_only() {
        for codec in [Codec::Postcard, Codec::Json] {
            let loose = encoded(&Loose::Text("t".into()), codec);
            let tagged = encoded(&Tagged::A { x: 1 }, codec);
            let r1 = <Loose as CacheValue>::check_reads_back(&loose);
            let r2 = <Tagged as CacheValue>::check_reads_back(&tagged);
            if codec == Codec::Postcard {
                assert!(matches!(r1, Err(Error::CodecCannotRead { .. })), "{r1:?}");
                assert!(matches!(r2, Err(Error::CodecCannotRead { .. })), "{r2:?}");
            } else {
                r1.unwrap();
                r2.unwrap();
            }
        }
    }

    #[test]
    fn unsized_values_are_checked_as_their_owned_form() {
        let s = encoded("text", Codec::Postcard);
        <str as CacheValue>::check_reads_back(&s).unwrap();
        let v = encoded(&[1u16, 2, 3][..], Codec::Postcard);
        <[u16] as CacheValue>::check_reads_back(&v).unwrap();
        let loose = encoded(&[Loose::Text("a".into())][..], Codec::Postcard);
        assert!(<[Loose] as CacheValue>::check_reads_back(&loose).is_err());
    }

    #[test]
    fn a_type_that_does_not_decode_its_own_encoding_is_an_encode_error() {
        // NaN under JSON is written as `null`, which is no f64.
        let nan = encoded(&f64::NAN, Codec::Json);
        let r = <f64 as CacheValue>::check_reads_back(&nan);
        assert!(matches!(r, Err(Error::Encode(_))), "{r:?}");
    }

    /// `serde_json::Value` and other dynamic values are refused at `set`
    /// under postcard (they could never be read back), with a message that
    /// names the type and the fix; the JSON codec stores them.
    #[tokio::test]
    async fn dynamic_values_are_refused_at_set_under_postcard() {
        use crate::envelope::Codec;
        use crate::{Cache, DummyBackend, Ttl};
        let c = Cache::new(DummyBackend);
        let v = serde_json::json!({"a": [1, 2]});
        for r in [
            c.set("k", &v, Ttl::secs(60)).await,
            c.set("k", &vec![v.clone()], Ttl::secs(60)).await,
            c.add("k", &v, Ttl::secs(60)).await.map(|_| ()),
            c.set_many::<serde_json::Value, _, _>(&[("k", v.clone())], Ttl::secs(60))
                .await
                .map(|_| ()),
        ] {
            match r {
                Err(Error::CodecCannotRead { type_name }) => {
                    assert!(
                        type_name.contains("serde_json::value::Value"),
                        "{type_name}"
                    );
                    let msg = Error::CodecCannotRead { type_name }.to_string();
                    assert!(msg.contains("codec=json"), "{msg}");
                }
                other => panic!("expected CodecCannotRead, got {other:?}"),
            }
        }
        let json = Cache::builder(DummyBackend)
            .codec(Codec::Json)
            .build()
            .unwrap();
        json.set("k", &v, Ttl::secs(60)).await.unwrap();
        c.set("k", "plain text is fine", Ttl::secs(60))
            .await
            .unwrap();
    }

    /// The general case: any type whose `Deserialize` needs a
    /// self-describing format is refused at `set`, not only the known
    /// dynamic ones, and nothing is stored.
    #[tokio::test]
    async fn any_unreadable_type_is_refused_at_set_and_stores_nothing() {
        use crate::{Cache, Ttl};
        #[derive(Serialize, Deserialize)]
        struct Inner {
            y: u32,
        }
        #[derive(Serialize, Deserialize)]
        struct Flat {
            x: u32,
            #[serde(flatten)]
            inner: Inner,
        }
        let c = Cache::new(crate::DummyBackend);
        let r = c.set("k", &Loose::Text("t".into()), Ttl::secs(60)).await;
        assert!(
            matches!(r, Err(Error::CodecCannotRead { type_name }) if type_name.contains("Loose")),
            "{r:?}"
        );
        let r = c.add("k", &Tagged::A { x: 1 }, Ttl::secs(60)).await;
        assert!(matches!(r, Err(Error::CodecCannotRead { .. })), "{r:?}");
        // postcard cannot even encode a flattened struct (a map of unknown
        // length): also an error at `set`.
        let r = c
            .set(
                "k",
                &Flat {
                    x: 1,
                    inner: Inner { y: 2 },
                },
                Ttl::secs(60),
            )
            .await;
        assert!(r.is_err(), "{r:?}");
        let json = Cache::builder(crate::DummyBackend)
            .codec(Codec::Json)
            .build()
            .unwrap();
        json.set("k", &Loose::Text("a".into()), Ttl::secs(60))
            .await
            .unwrap();
        json.set(
            "k",
            &Flat {
                x: 1,
                inner: Inner { y: 2 },
            },
            Ttl::secs(60),
        )
        .await
        .unwrap();
    }
}
