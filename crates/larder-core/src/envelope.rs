//! The value envelope: how a typed value becomes the bytes a backend stores.
//!
//! ```text
//! byte 0      0xA7 magic (never an ASCII digit or '-', see "integers" below)
//! byte 1      format version (1)
//! byte 2      flags: bits 0-1 codec (0 postcard, 1 JSON), bit 2 lz4, bit 3 meta
//! [12 bytes]  meta, when bit 3 is set: soft expiry (unix ms, u64 LE, 0 = none),
//!             last compute duration (µs, u32 LE); used by stampede control
//! [4 bytes]   uncompressed length (u32 LE), when bit 2 is set
//! payload     the value in the codec, lz4-compressed when bit 2 is set
//! ```
//!
//! **Integers** are stored bare, as ASCII decimal (`"42"`), so that every
//! backend can increment them natively and atomically (Redis `INCRBY`,
//! memcached `ma`, SQL `UPDATE … + n`), and so that other clients of the same
//! server read them as numbers. A value without the magic byte that is a
//! decimal integer decodes as that integer; anything else without the magic
//! byte is a *foreign* entry and reads as a miss.
//!
//! Nothing here can run code on load (unlike Django's pickle): a corrupt,
//! truncated or foreign entry is a [`DecodeError`], which the
//! [`Cache`](crate::Cache) turns into a logged miss.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// First byte of every enveloped value.
pub const MAGIC: u8 = 0xA7;
/// The envelope format this version writes.
pub const FORMAT_VERSION: u8 = 1;

const FLAG_CODEC_MASK: u8 = 0b11;
const FLAG_LZ4: u8 = 0b100;
const FLAG_META: u8 = 0b1000;
/// lz4 cannot expand data more than ~255x; a larger claimed size is corruption.
const LZ4_MAX_RATIO: usize = 255;

/// How values are serialized inside the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Codec {
    /// Compact binary ([postcard](https://docs.rs/postcard)); the default.
    #[default]
    Postcard,
    /// JSON: larger and slower, but readable by humans and other languages.
    Json,
}

impl Codec {
    fn bits(self) -> u8 {
        match self {
            Codec::Postcard => 0,
            Codec::Json => 1,
        }
    }

    /// Parses `postcard` or `json`.
    pub fn parse(s: &str) -> Result<Codec> {
        match s {
            "postcard" => Ok(Codec::Postcard),
            "json" => Ok(Codec::Json),
            other => Err(Error::config(format!(
                "unknown codec {other:?}; expected \"postcard\" or \"json\""
            ))),
        }
    }
}

/// Envelope settings of one cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvelopeConfig {
    /// Codec for new values. Reads accept every codec.
    pub codec: Codec,
    /// Payloads larger than this many bytes are lz4-compressed (kept only if
    /// smaller). `None` disables compression.
    pub compress_above: Option<usize>,
}

impl Default for EnvelopeConfig {
    fn default() -> Self {
        EnvelopeConfig {
            codec: Codec::Postcard,
            compress_above: Some(4096),
        }
    }
}

/// Metadata carried next to a value for stampede control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// When the value should be refreshed, in unix milliseconds (0: never).
    pub soft_expiry_unix_ms: u64,
    /// How long the value took to compute, in microseconds.
    pub compute_us: u32,
}

/// Why stored bytes could not be read as a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Zero bytes.
    #[error("empty entry")]
    Empty,
    /// Neither an envelope nor a bare integer: written by someone else.
    #[error("foreign entry (no larder envelope)")]
    Foreign,
    /// An envelope from a newer larder.
    #[error("envelope format {0} is newer than this larder understands")]
    UnknownFormat(u8),
    /// Shorter than its header says.
    #[error("truncated entry")]
    Truncated,
    /// The payload does not decode as the requested type.
    #[error("payload does not decode as the requested type: {0}")]
    Payload(String),
    /// The requested type can never be read back with the codec the entry
    /// was written in (postcard is not self-describing: `serde_json::Value`,
    /// untagged enums, `#[serde(flatten)]` and other types that deserialize
    /// "any" need the JSON codec). A property of the type, not of the entry.
    #[error("the type cannot be read back with the postcard codec (it needs a self-describing format): {0}")]
    NeedsSelfDescribing(String),
}

/// Encodes `value` with the given settings.
pub fn encode<T: Serialize + ?Sized>(
    value: &T,
    cfg: &EnvelopeConfig,
    meta: Option<Meta>,
) -> Result<Bytes> {
    if meta.is_none() {
        if let Some(n) = as_integer(value) {
            return Ok(Bytes::from(n.to_string()));
        }
    }
    let mut out = Vec::with_capacity(64);
    let mut flags = cfg.codec.bits();
    out.extend_from_slice(&[MAGIC, FORMAT_VERSION, 0]);
    if let Some(m) = meta {
        flags |= FLAG_META;
        out.extend_from_slice(&m.soft_expiry_unix_ms.to_le_bytes());
        out.extend_from_slice(&m.compute_us.to_le_bytes());
    }
    let header_len = out.len();
    match cfg.codec {
        Codec::Postcard => {
            out = postcard::to_extend(value, out).map_err(|e| Error::Encode(e.to_string()))?;
        }
        Codec::Json => {
            serde_json::to_writer(&mut out, value).map_err(|e| Error::Encode(e.to_string()))?;
        }
    }
    let payload_len = out.len() - header_len;
    if let Some(limit) = cfg.compress_above {
        if payload_len > limit && payload_len <= u32::MAX as usize {
            let compressed = lz4_flex::block::compress(&out[header_len..]);
            if compressed.len() + 4 < payload_len {
                out.truncate(header_len);
                out.extend_from_slice(&(payload_len as u32).to_le_bytes());
                out.extend_from_slice(&compressed);
                flags |= FLAG_LZ4;
            }
        }
    }
    out[2] = flags;
    Ok(Bytes::from(out))
}

/// The soft expiry (unix ms; 0: none) in the envelope's metadata, read
/// from the header alone: `None` for bare integers, foreign or truncated
/// bytes and envelopes without metadata.
pub fn soft_expiry(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < 3 + 12 || bytes[0] != MAGIC || bytes[1] != FORMAT_VERSION {
        return None;
    }
    if bytes[2] & FLAG_META == 0 {
        return None;
    }
    bytes[3..11].try_into().ok().map(u64::from_le_bytes)
}

/// Whether stored bytes are past the soft expiry in their metadata at
/// `now_ms`: kept only for stale serving, absent to every plain call.
pub fn is_soft_expired(bytes: &[u8], now_ms: u64) -> bool {
    soft_expiry(bytes).is_some_and(|soft| soft != 0 && now_ms >= soft)
}

/// The same envelope with a new soft expiry (0: none); `None` when the
/// bytes carry no metadata.
pub fn with_soft_expiry(bytes: &[u8], soft_expiry_unix_ms: u64) -> Option<Bytes> {
    soft_expiry(bytes)?;
    let mut out = bytes.to_vec();
    out[3..11].copy_from_slice(&soft_expiry_unix_ms.to_le_bytes());
    Some(Bytes::from(out))
}

/// Decodes stored bytes as a `T`, with the envelope's metadata if present.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, Option<Meta>), DecodeError> {
    let Some(&first) = bytes.first() else {
        return Err(DecodeError::Empty);
    };
    if first != MAGIC {
        let n = parse_integer(bytes).ok_or(DecodeError::Foreign)?;
        let value =
            T::deserialize(serde::de::value::I64Deserializer::<serde::de::value::Error>::new(n))
                .map_err(|e| DecodeError::Payload(e.to_string()))?;
        return Ok((value, None));
    }
    if bytes.len() < 3 {
        return Err(DecodeError::Truncated);
    }
    if bytes[1] != FORMAT_VERSION {
        return Err(DecodeError::UnknownFormat(bytes[1]));
    }
    let flags = bytes[2];
    let mut rest = &bytes[3..];
    let meta = if flags & FLAG_META != 0 {
        if rest.len() < 12 {
            return Err(DecodeError::Truncated);
        }
        let soft = u64::from_le_bytes(rest[..8].try_into().map_err(|_| DecodeError::Truncated)?);
        let compute =
            u32::from_le_bytes(rest[8..12].try_into().map_err(|_| DecodeError::Truncated)?);
        rest = &rest[12..];
        Some(Meta {
            soft_expiry_unix_ms: soft,
            compute_us: compute,
        })
    } else {
        None
    };
    let decompressed;
    let payload: &[u8] = if flags & FLAG_LZ4 != 0 {
        if rest.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        let raw_len =
            u32::from_le_bytes(rest[..4].try_into().map_err(|_| DecodeError::Truncated)?) as usize;
        let compressed = &rest[4..];
        if raw_len > compressed.len().saturating_mul(LZ4_MAX_RATIO) + 16 {
            return Err(DecodeError::Payload(format!(
                "claimed size {raw_len} is impossible for {} compressed bytes",
                compressed.len()
            )));
        }
        decompressed = lz4_flex::block::decompress(compressed, raw_len)
            .map_err(|e| DecodeError::Payload(format!("lz4: {e}")))?;
        &decompressed
    } else {
        rest
    };
    let value = match flags & FLAG_CODEC_MASK {
        0 => {
            // postcard is not self-describing: a value of another type can
            // decode from a prefix of the payload. Requiring every byte to be
            // consumed turns most type mismatches into misses.
            let (v, rest) = postcard::take_from_bytes(payload).map_err(|e| match e {
                postcard::Error::WontImplement => DecodeError::NeedsSelfDescribing(e.to_string()),
                other => DecodeError::Payload(other.to_string()),
            })?;
            if !rest.is_empty() {
                return Err(DecodeError::Payload(format!(
                    "{} bytes left over: the entry holds another type",
                    rest.len()
                )));
            }
            v
        }
        1 => serde_json::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()))?,
        other => return Err(DecodeError::Payload(format!("unknown codec {other}"))),
    };
    Ok((value, meta))
}

/// Parses a bare stored integer (`-?[0-9]+`), as written for integers and by
/// `incr`. Leading `+`, spaces or an empty string are not integers.
pub fn parse_integer(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Returns `Some(n)` when `value` serializes as a plain integer that fits an
/// `i64`. Costs one failed call for everything else.
pub fn as_integer<T: Serialize + ?Sized>(value: &T) -> Option<i64> {
    value.serialize(IntegerProbe).ok()
}

/// A serializer that accepts exactly one integer and refuses everything else.
struct IntegerProbe;

#[derive(Debug)]
struct NotInteger;

impl std::fmt::Display for NotInteger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not an integer")
    }
}
impl std::error::Error for NotInteger {}
impl serde::ser::Error for NotInteger {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        NotInteger
    }
}

macro_rules! refuse {
    ($($name:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<$ret, NotInteger> { Err(NotInteger) })*
    };
}

impl serde::Serializer for IntegerProbe {
    type Ok = i64;
    type Error = NotInteger;
    type SerializeSeq = serde::ser::Impossible<i64, NotInteger>;
    type SerializeTuple = serde::ser::Impossible<i64, NotInteger>;
    type SerializeTupleStruct = serde::ser::Impossible<i64, NotInteger>;
    type SerializeTupleVariant = serde::ser::Impossible<i64, NotInteger>;
    type SerializeMap = serde::ser::Impossible<i64, NotInteger>;
    type SerializeStruct = serde::ser::Impossible<i64, NotInteger>;
    type SerializeStructVariant = serde::ser::Impossible<i64, NotInteger>;

    fn serialize_i8(self, v: i8) -> Result<i64, NotInteger> {
        Ok(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<i64, NotInteger> {
        Ok(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<i64, NotInteger> {
        Ok(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<i64, NotInteger> {
        Ok(v)
    }
    fn serialize_u8(self, v: u8) -> Result<i64, NotInteger> {
        Ok(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<i64, NotInteger> {
        Ok(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<i64, NotInteger> {
        Ok(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<i64, NotInteger> {
        i64::try_from(v).map_err(|_| NotInteger)
    }

    refuse! {
        serialize_bool(bool) -> i64;
        serialize_f32(f32) -> i64;
        serialize_f64(f64) -> i64;
        serialize_char(char) -> i64;
        serialize_str(&str) -> i64;
        serialize_bytes(&[u8]) -> i64;
        serialize_none() -> i64;
        serialize_unit() -> i64;
        serialize_unit_struct(&'static str) -> i64;
        serialize_unit_variant(&'static str, u32, &'static str) -> i64;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<i64, NotInteger> {
        Err(NotInteger)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<i64, NotInteger> {
        Err(NotInteger)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<i64, NotInteger> {
        Err(NotInteger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Post {
        id: u64,
        title: String,
        tags: Vec<String>,
    }

    fn post() -> Post {
        Post {
            id: 7,
            title: "héllo".into(),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn round_trips_each_codec() {
        for codec in [Codec::Postcard, Codec::Json] {
            let cfg = EnvelopeConfig {
                codec,
                compress_above: None,
            };
            let bytes = encode(&post(), &cfg, None).unwrap();
            assert_eq!(bytes[0], MAGIC);
            let (back, meta): (Post, _) = decode(&bytes).unwrap();
            assert_eq!(back, post());
            assert_eq!(meta, None);
        }
    }

    #[test]
    fn integers_are_bare_decimal() {
        let cfg = EnvelopeConfig::default();
        assert_eq!(&encode(&42u32, &cfg, None).unwrap()[..], b"42");
        assert_eq!(&encode(&-5i64, &cfg, None).unwrap()[..], b"-5");
        let (n, _): (i64, _) = decode(b"-17").unwrap();
        assert_eq!(n, -17);
        // u64 beyond i64 goes through the envelope and still round-trips.
        let big = encode(&u64::MAX, &cfg, None).unwrap();
        assert_eq!(big[0], MAGIC);
        assert_eq!(decode::<u64>(&big).unwrap().0, u64::MAX);
        // Option<i64> is not a bare integer.
        assert_eq!(encode(&Some(3i64), &cfg, None).unwrap()[0], MAGIC);
    }

    #[test]
    fn large_values_compress_and_round_trip() {
        let cfg = EnvelopeConfig::default();
        let text = "abc".repeat(100_000);
        let bytes = encode(&text, &cfg, None).unwrap();
        assert!(bytes[2] & FLAG_LZ4 != 0);
        assert!(bytes.len() < text.len() / 10);
        assert_eq!(decode::<String>(&bytes).unwrap().0, text);
    }

    #[test]
    fn meta_round_trips() {
        let meta = Meta {
            soft_expiry_unix_ms: 1_700_000_000_123,
            compute_us: 250_000,
        };
        let bytes = encode(&5u8, &EnvelopeConfig::default(), Some(meta)).unwrap();
        assert_eq!(decode::<u8>(&bytes).unwrap(), (5, Some(meta)));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let good = encode(&post(), &EnvelopeConfig::default(), None).unwrap();
        for cut in 0..good.len() {
            let _ = decode::<Post>(&good[..cut]);
        }
        assert_eq!(decode::<Post>(b""), Err(DecodeError::Empty));
        assert_eq!(decode::<Post>(b"hello"), Err(DecodeError::Foreign));
        assert_eq!(
            decode::<Post>(&[MAGIC, 9, 0]),
            Err(DecodeError::UnknownFormat(9))
        );
        // A compressed entry claiming 4 GiB from 3 bytes must not allocate it.
        let bomb = [
            MAGIC,
            FORMAT_VERSION,
            FLAG_LZ4,
            0xff,
            0xff,
            0xff,
            0xff,
            1,
            2,
            3,
        ];
        assert!(matches!(
            decode::<String>(&bomb),
            Err(DecodeError::Payload(_))
        ));
        // Every single-byte corruption decodes to something or errors.
        for i in 0..good.len() {
            let mut bad = good.to_vec();
            bad[i] ^= 0x5a;
            let _ = decode::<Post>(&bad);
        }
    }

    #[test]
    fn integer_parsing_is_strict() {
        assert_eq!(parse_integer(b"0"), Some(0));
        assert_eq!(parse_integer(b"-0"), Some(0));
        assert_eq!(parse_integer(b"+1"), None);
        assert_eq!(parse_integer(b" 1"), None);
        assert_eq!(parse_integer(b"-"), None);
        assert_eq!(parse_integer(b"99999999999999999999"), None);
    }
}
