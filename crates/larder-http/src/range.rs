//! Byte ranges (RFC 9110 §14) answered from a stored complete response:
//! one range as a `206` with `Content-Range`, several as
//! `multipart/byteranges`, none satisfiable as `416`, and `If-Range`
//! deciding whether the ranges or the whole response go out.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::policy;

/// Most ranges one request may ask for; past it the whole response is
/// sent (RFC 9110 §14.2 lets a server ignore a Range it will not serve:
/// many small ranges are an amplification attack, CVE-2011-3192).
pub const MAX_RANGES: usize = 16;

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ranges {
    /// Ignore it: send the whole response (not a byte range, invalid, too
    /// many ranges).
    Whole,
    /// These ranges, inclusive, sorted and coalesced.
    Parts(Vec<(u64, u64)>),
    /// None of them overlaps the representation: 416.
    Unsatisfiable,
}

/// Reads a `Range` field value against a representation of `len` bytes.
pub(crate) fn parse(value: &str, len: u64) -> Ranges {
    let Some((unit, specs)) = value.split_once('=') else {
        return Ranges::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ranges::Whole;
    }
    let mut parts = Vec::new();
    let mut count = 0;
    for spec in specs.split(',') {
        let spec = spec.trim_matches([' ', '\t']);
        if spec.is_empty() {
            continue; // empty list members are allowed
        }
        count += 1;
        if count > MAX_RANGES {
            return Ranges::Whole;
        }
        let Some((first, last)) = spec.split_once('-') else {
            return Ranges::Whole;
        };
        let num = |s: &str| -> Option<u64> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
        };
        match (first, last) {
            ("", suffix) => {
                let Some(n) = num(suffix) else {
                    return Ranges::Whole;
                };
                if n > 0 && len > 0 {
                    parts.push((len - n.min(len), len - 1));
                }
            }
            (first, "") => {
                let Some(a) = num(first) else {
                    return Ranges::Whole;
                };
                if a < len {
                    parts.push((a, len - 1));
                }
            }
            (first, last) => {
                let (Some(a), Some(b)) = (num(first), num(last)) else {
                    return Ranges::Whole;
                };
                if a > b {
                    return Ranges::Whole; // invalid: the field is ignored
                }
                if a < len {
                    parts.push((a, b.min(len - 1)));
                }
            }
        }
    }
    if count == 0 {
        return Ranges::Whole;
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    // Coalesce what overlaps or touches (RFC 9110 §14.6 allows it, in
    // any order): no byte goes out twice.
    parts.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(parts.len());
    for (a, b) in parts {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ranges::Parts(merged)
}

/// RFC 9110 §13.1.5: may the ranges be sent? Without `If-Range`, yes;
/// with one, only if it names the stored representation by a strong
/// entity tag or by its exact `Last-Modified` date.
pub(crate) fn if_range_allows(
    req: &HeaderMap,
    etag: Option<&str>,
    last_modified: Option<&str>,
) -> bool {
    let Some(v) = req.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(v) = v.to_str() else { return false };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        // A weak tag never matches here: ranges need byte identity.
        return !v.starts_with("W/") && etag.is_some_and(|e| !e.starts_with("W/") && e.trim() == v);
    }
    match (
        policy::parse_http_date(v),
        last_modified.and_then(policy::parse_http_date),
    ) {
        (Some(asked), Some(stored)) => asked == stored,
        _ => false,
    }
}

/// `full` (a complete `200` response and its body) cut to `ranges`.
pub(crate) fn answer(full: Response<Bytes>, ranges: &Ranges) -> Response<Bytes> {
    let (mut parts, body) = full.into_parts();
    let len = body.len() as u64;
    match ranges {
        Ranges::Whole => Response::from_parts(parts, body),
        Ranges::Unsatisfiable => {
            parts.status = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = &mut parts.headers;
            h.remove(header::CONTENT_TYPE);
            h.remove(header::CONTENT_ENCODING);
            set(h, header::CONTENT_RANGE, format!("bytes */{len}"));
            set(h, header::CONTENT_LENGTH, "0".to_owned());
            Response::from_parts(parts, Bytes::new())
        }
        Ranges::Parts(list) if list.len() == 1 => {
            let (a, b) = list[0];
            parts.status = StatusCode::PARTIAL_CONTENT;
            let slice = body.slice(a as usize..=b as usize);
            set(
                &mut parts.headers,
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{len}"),
            );
            set(
                &mut parts.headers,
                header::CONTENT_LENGTH,
                slice.len().to_string(),
            );
            Response::from_parts(parts, slice)
        }
        Ranges::Parts(list) => {
            parts.status = StatusCode::PARTIAL_CONTENT;
            let boundary = format!("larder{:016x}", fastrand::u64(..));
            let content_type = parts.headers.remove(header::CONTENT_TYPE);
            let mut out = BytesMut::new();
            for &(a, b) in list {
                out.put_slice(format!("\r\n--{boundary}\r\n").as_bytes());
                if let Some(ct) = &content_type {
                    out.put_slice(b"content-type: ");
                    out.put_slice(ct.as_bytes());
                    out.put_slice(b"\r\n");
                }
                out.put_slice(format!("content-range: bytes {a}-{b}/{len}\r\n\r\n").as_bytes());
                out.put_slice(&body[a as usize..=b as usize]);
            }
            out.put_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
            let out = out.freeze();
            set(
                &mut parts.headers,
                header::CONTENT_TYPE,
                format!("multipart/byteranges; boundary={boundary}"),
            );
            set(
                &mut parts.headers,
                header::CONTENT_LENGTH,
                out.len().to_string(),
            );
            parts.headers.remove(header::CONTENT_RANGE);
            Response::from_parts(parts, out)
        }
    }
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        use Ranges::*;
        let p = |s: &str| parse(s, 10_000);
        assert_eq!(p("bytes=0-499"), Parts(vec![(0, 499)]));
        assert_eq!(p("bytes=500-999"), Parts(vec![(500, 999)]));
        assert_eq!(p("bytes=-500"), Parts(vec![(9500, 9999)]));
        assert_eq!(p("bytes=9500-"), Parts(vec![(9500, 9999)]));
        assert_eq!(p("bytes=0-0,-1"), Parts(vec![(0, 0), (9999, 9999)]));
        assert_eq!(p("Bytes = 0-9 , 5-20"), Parts(vec![(0, 20)]), "coalesced");
        assert_eq!(
            p("bytes=20-29,0-9,10-19"),
            Parts(vec![(0, 29)]),
            "sorted, touching"
        );
        assert_eq!(p("bytes=9000-99999"), Parts(vec![(9000, 9999)]), "clamped");
        assert_eq!(p("bytes=-99999"), Parts(vec![(0, 9999)]));
        assert_eq!(p("bytes=10000-"), Unsatisfiable);
        assert_eq!(p("bytes=-0"), Unsatisfiable);
        assert_eq!(p("bytes=10000-10001, 20000-"), Unsatisfiable);
        assert_eq!(parse("bytes=0-", 0), Unsatisfiable);
        for ignored in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=",
            "bytes=,",
            "items=0-1",
            "0-1",
            "bytes=1-2-3",
            "bytes=--1",
            "bytes=+1-2",
        ] {
            assert_eq!(p(ignored), Whole, "{ignored:?}");
        }
        let many: Vec<String> = (0..=MAX_RANGES)
            .map(|i| format!("{}-{}", i * 2, i * 2))
            .collect();
        assert_eq!(p(&format!("bytes={}", many.join(","))), Whole, "too many");
        assert_eq!(
            p("bytes=99999999999999999999999-"),
            Unsatisfiable,
            "huge numbers saturate"
        );
    }

    #[test]
    fn if_range_needs_a_strong_tag_or_the_exact_date() {
        let req = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_RANGE, HeaderValue::from_str(v).unwrap());
            h
        };
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert!(if_range_allows(&HeaderMap::new(), None, None));
        assert!(if_range_allows(&req("\"v1\""), Some("\"v1\""), None));
        assert!(!if_range_allows(&req("\"v2\""), Some("\"v1\""), None));
        assert!(
            !if_range_allows(&req("W/\"v1\""), Some("W/\"v1\""), None),
            "weak"
        );
        assert!(
            !if_range_allows(&req("\"v1\""), Some("W/\"v1\""), None),
            "weak stored"
        );
        assert!(if_range_allows(&req(lm), None, Some(lm)));
        assert!(!if_range_allows(
            &req("Sun, 06 Nov 1994 08:49:38 GMT"),
            None,
            Some(lm)
        ));
        assert!(!if_range_allows(&req(lm), None, None));
        assert!(!if_range_allows(&req("garbage"), Some("\"v1\""), Some(lm)));
    }
}
