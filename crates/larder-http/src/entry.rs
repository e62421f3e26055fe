//! What is stored: a response with what its freshness and matching need.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};

/// The value under a URL's primary key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Stored {
    /// The response, when it has no Vary.
    Response(Entry),
    /// The response varies on these request headers; variants are stored
    /// under keys that include `generation`, which changes on every new
    /// index so an invalidated URL's old variants can never match again.
    Vary { names: Vec<String>, generation: u64 },
}

/// A [`Stored`] value as lookups use it: decoded once per distinct stored
/// bytes (the cache keeps it in a `DecodedMemo`), with the response parts a
/// hit sends already built, so a hit clones shared buffers instead of
/// decoding the entry and parsing its headers again.
pub(crate) enum Decoded {
    Response(Arc<Ready>),
    Vary { names: Vec<String>, generation: u64 },
}

impl<'de> Deserialize<'de> for Decoded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Stored::deserialize(d)? {
            Stored::Response(entry) => Decoded::Response(Arc::new(Ready::new(entry))),
            Stored::Vary { names, generation } => Decoded::Vary { names, generation },
        })
    }
}

/// A stored response and the parts of the response it becomes.
pub(crate) struct Ready {
    pub entry: Entry,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Ready {
    pub fn new(entry: Entry) -> Self {
        Ready {
            status: StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK),
            headers: entry.header_map(),
            body: Bytes::copy_from_slice(&entry.body.0),
            entry,
        }
    }

    /// As [`Entry::response`], from the parts built once.
    pub fn response(&self, now_ms: u64, with_body: bool) -> Response<Bytes> {
        let mut r = Response::new(if with_body {
            self.body.clone()
        } else {
            Bytes::new()
        });
        *r.status_mut() = self.status;
        let mut headers = self.headers.clone();
        headers.insert(
            http::header::AGE,
            HeaderValue::from(self.entry.age(now_ms).as_secs()),
        );
        *r.headers_mut() = headers;
        r
    }
}

/// One stored response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub status: u16,
    pub headers: Vec<(String, ByteBuf)>,
    pub body: ByteBuf,
    /// When it was received, unix ms.
    pub stored_at_ms: u64,
    /// When the request that produced it started, unix µs (URL and tag
    /// purges at or after that instant make it invalid; µs, not ms, so a
    /// request right after a purge is not taken for one it raced).
    pub requested_at_us: u64,
    /// Age the origin or an upstream cache reported, seconds.
    pub initial_age: u64,
    pub lifetime_ms: u64,
    /// May be served stale while revalidating, for this long.
    pub swr_ms: u64,
    /// May be served stale when the origin fails, for this long.
    pub sie_ms: u64,
    pub vary: Vec<String>,
    pub vary_values: Vec<Option<Vec<u8>>>,
    pub tags: Vec<String>,
}

/// Bytes serialized as one byte string (postcard: length + raw bytes),
/// not as a sequence of numbers: decoding a 2 KB body element by element
/// was a tenth of a cache hit's CPU.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ByteBuf(pub Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ByteBuf, A::Error> {
                let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = a.next_element()? {
                    v.push(b);
                }
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

impl Entry {
    /// Current age in seconds (RFC 9111 §4.2.3, simplified: the upstream's
    /// Age plus the time it has been stored here).
    pub fn age(&self, now_ms: u64) -> Duration {
        Duration::from_secs(self.initial_age)
            + Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms))
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_millis(self.lifetime_ms)
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.0.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn has_validators(&self) -> bool {
        self.header("etag").is_some() || self.header("last-modified").is_some()
    }

    pub fn header_map(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(self.headers.len() + 1);
        for (n, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(&v.0),
            ) {
                h.append(n, v);
            }
        }
        h
    }

    /// The stored response, with `Age` set; without a body for HEAD.
    pub fn response(&self, now_ms: u64, with_body: bool) -> Response<Bytes> {
        let mut r = Response::new(if with_body {
            Bytes::copy_from_slice(&self.body.0)
        } else {
            Bytes::new()
        });
        *r.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        *r.headers_mut() = self.header_map();
        r.headers_mut().insert(
            http::header::AGE,
            HeaderValue::from(self.age(now_ms).as_secs()),
        );
        r
    }

    /// RFC 9111 §4.3.4: a 304 from the origin refreshes the stored headers.
    pub fn update_from_304(&mut self, headers: &HeaderMap) {
        for name in headers.keys() {
            let n = name.as_str();
            if matches!(
                n,
                "content-length" | "content-encoding" | "transfer-encoding" | "content-range"
            ) {
                continue;
            }
            self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(n));
        }
        for (name, value) in headers {
            let n = name.as_str();
            if matches!(
                n,
                "content-length" | "content-encoding" | "transfer-encoding" | "content-range"
            ) {
                continue;
            }
            self.headers
                .push((n.to_owned(), ByteBuf(value.as_bytes().to_vec())));
        }
    }
}
