//! Cache keys: collision-free (every part length-prefixed, then hashed),
//! host-aware, with the query string normalized.

use http::header::HeaderMap;
use http::Uri;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of length-prefixed parts: `("ab", "c")` and `("a", "bc")`
/// differ, and the key length is fixed (fits every backend).
fn digest(tag: &str, parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let out = h.finalize();
    let mut s = String::with_capacity(tag.len() + 64);
    s.push_str(tag);
    for b in out {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

/// The query string with its pairs sorted by name (values of one name keep
/// their order, which applications may rely on), so `?b=2&a=1` and
/// `?a=1&b=2` share an entry.
///
/// Lossless: nothing is decoded into text, so two queries share an entry
/// only when they are the same bytes up to the order of names and the
/// RFC 3986 §6.2.2 normalizations that cannot change meaning (the case of
/// percent-encoding hex digits, and percent-encoded unreserved characters).
/// `?q=caf%E9` and `?q=caf%E8` differ, `?x` and `?x=` differ, and `+` stays
/// apart from `%20` (an application may read either way).
pub fn normalized_query(q: Option<&str>) -> String {
    let Some(q) = q.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<String> = q.split('&').map(normalize_percent).collect();
    // A stable sort: the values of one name keep their order.
    pairs.sort_by(|a, b| pair_name(a).cmp(pair_name(b)));
    pairs.join("&")
}

fn pair_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(n, _)| n)
}

/// `%7e` → `~`, `%2f` → `%2F`: one spelling per octet, decoding only the
/// unreserved characters, whose encoded and plain forms mean the same.
fn normalize_percent(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let octet = h * 16 + l;
                if octet.is_ascii_alphanumeric() || matches!(octet, b'-' | b'.' | b'_' | b'~') {
                    out.push(octet);
                } else {
                    out.extend_from_slice(&[
                        b'%',
                        b[i + 1].to_ascii_uppercase(),
                        b[i + 2].to_ascii_uppercase(),
                    ]);
                }
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // Only ASCII was rewritten, so the bytes are still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Why a request's target host cannot be trusted (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// An HTTP/1.1 request without `Host` (and without an absolute-form target).
    #[error("the request has no Host header")]
    Missing,
    /// More than one `Host` header line.
    #[error("the request has more than one Host header")]
    Repeated,
    /// A `Host` (or target authority) that is not `host[:port]`.
    #[error("the request's Host is not a valid host[:port]")]
    Invalid,
}

/// The host a request is for, lowercased, as RFC 9112 §3.2 defines it: the
/// authority of an absolute-form target (whatever `Host` says), else the
/// one `Host` header. A request whose host is ambiguous is an error, so a
/// cache never keys a response under one host that was produced for
/// another: callers answer 400 (the proxy) or bypass the cache (the layer).
pub fn request_host(
    version: http::Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<String, HostError> {
    if let Some(a) = uri.authority() {
        return valid_authority(a.as_str().as_bytes());
    }
    let mut hosts = headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(HostError::Repeated),
        (Some(h), None) => valid_authority(h.as_bytes()),
        (None, _) if version == http::Version::HTTP_11 => Err(HostError::Missing),
        (None, _) => Ok(String::new()),
    }
}

/// `host[:port]` where host is a name (letters, digits, `-._~`) or an IP
/// literal in brackets, lowercased. A check of the bytes rather than the
/// `http` crate's authority parser, which cost 2,000 instructions a hit.
fn valid_authority(a: &[u8]) -> Result<String, HostError> {
    let port = match a.first() {
        Some(b'[') => {
            let end = a
                .iter()
                .position(|&b| b == b']')
                .ok_or(HostError::Invalid)?;
            let literal = &a[1..end];
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
            {
                return Err(HostError::Invalid);
            }
            &a[end + 1..]
        }
        _ => {
            let end = a.iter().position(|&b| b == b':').unwrap_or(a.len());
            let name = &a[..end];
            if name.is_empty()
                || !name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
            {
                return Err(HostError::Invalid);
            }
            &a[end..]
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if !port_ok {
        return Err(HostError::Invalid);
    }
    // Only ASCII passed the checks above.
    Ok(String::from_utf8_lossy(a).to_ascii_lowercase())
}

/// The key of everything stored for one URL.
pub fn primary(host: &str, uri: &Uri) -> String {
    let query = normalized_query(uri.query());
    digest(
        "h:",
        &[host.as_bytes(), uri.path().as_bytes(), query.as_bytes()],
    )
}

/// The key of one variant (one set of Vary'd request header values).
pub fn variant(primary: &str, generation: u64, values: &[Option<Vec<u8>>]) -> String {
    let gen = generation.to_le_bytes();
    let mut parts: Vec<Vec<u8>> = vec![primary.as_bytes().to_vec(), gen.to_vec()];
    for v in values {
        match v {
            // Absent and empty differ: a presence byte first.
            None => parts.push(vec![0]),
            Some(v) => {
                let mut p = vec![1];
                p.extend_from_slice(v);
                parts.push(p);
            }
        }
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    digest("v:", &refs)
}

/// The key holding when a tag was last purged.
pub fn tag(tag: &str) -> String {
    digest("t:", &[tag.as_bytes()])
}

/// The key holding when the URL of primary key `pkey` was last purged.
pub fn url_purge(pkey: &str) -> String {
    digest("p:", &[pkey.as_bytes()])
}

/// The key holding until when a stored response carries a tag.
pub fn tag_seen(tag: &str) -> String {
    digest("s:", &[tag.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_do_not_collide_on_concatenation() {
        let a: Uri = "/ab?c=1".parse().unwrap();
        let b: Uri = "/a?bc=1".parse().unwrap();
        assert_ne!(primary("h", &a), primary("h", &b));
        assert_ne!(
            primary("a/b", &"/c".parse().unwrap()),
            primary("a", &"/b/c".parse().unwrap())
        );
        assert_ne!(
            variant("p", 1, &[None]),
            variant("p", 1, &[Some(Vec::new())])
        );
        assert_ne!(
            variant("p", 1, &[Some(b"a".to_vec()), None]),
            variant("p", 1, &[None, Some(b"a".to_vec())])
        );
        assert_ne!(variant("p", 1, &[None]), variant("p", 2, &[None]));
    }

    #[test]
    fn queries_are_normalized_by_name_only() {
        assert_eq!(
            normalized_query(Some("b=2&a=1")),
            normalized_query(Some("a=1&b=2"))
        );
        assert_ne!(
            normalized_query(Some("a=2&a=1")),
            normalized_query(Some("a=1&a=2"))
        );
        assert_eq!(normalized_query(None), "");
    }

    #[test]
    fn the_host_is_the_target_authority_else_the_one_host_header() {
        use http::{HeaderValue, Version};
        let mut one = HeaderMap::new();
        one.insert(http::header::HOST, HeaderValue::from_static("Evil"));
        let abs: Uri = "http://Victim/x".parse().unwrap();
        let origin: Uri = "/x".parse().unwrap();
        assert_eq!(
            request_host(Version::HTTP_11, &abs, &one).as_deref(),
            Ok("victim")
        );
        assert_eq!(
            request_host(Version::HTTP_11, &origin, &one).as_deref(),
            Ok("evil")
        );
        assert_eq!(
            request_host(Version::HTTP_11, &origin, &HeaderMap::new()),
            Err(HostError::Missing)
        );
        assert_eq!(
            request_host(Version::HTTP_10, &origin, &HeaderMap::new()).as_deref(),
            Ok("")
        );
        let mut two = one.clone();
        two.append(http::header::HOST, HeaderValue::from_static("victim"));
        assert_eq!(
            request_host(Version::HTTP_11, &origin, &two),
            Err(HostError::Repeated)
        );
        for good in [
            "victim:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
            "a-b.c_d~e",
            "x:",
        ] {
            let mut h = HeaderMap::new();
            h.insert(http::header::HOST, HeaderValue::from_str(good).unwrap());
            assert!(
                request_host(Version::HTTP_11, &origin, &h).is_ok(),
                "{good:?}"
            );
        }
        for bad in [
            "", "a b", "u@victim", "victim/x", ":80", "a,b", "a:80:90", "a:123456", "[::1", "[]",
            "[zz]", "a:8o", "a?b", "a#b", "[::1]x",
        ] {
            let mut h = HeaderMap::new();
            h.insert(http::header::HOST, HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                request_host(Version::HTTP_11, &origin, &h),
                Err(HostError::Invalid),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn queries_are_keyed_losslessly() {
        // Two different Latin-1 bytes must never share an entry.
        assert_ne!(
            normalized_query(Some("q=caf%E9")),
            normalized_query(Some("q=caf%E8"))
        );
        assert_ne!(normalized_query(Some("x")), normalized_query(Some("x=")));
        assert_ne!(
            normalized_query(Some("q=a%20b")),
            normalized_query(Some("q=a+b"))
        );
        assert_ne!(
            normalized_query(Some("a=1&&b=2")),
            normalized_query(Some("a=1&b=2"))
        );
        // Spellings of one octet agree.
        assert_eq!(
            normalized_query(Some("q=%7e%2f")),
            normalized_query(Some("q=~%2F"))
        );
        assert_eq!(normalized_query(Some("q=%zz%4")), "q=%zz%4");
        let (a, b): (Uri, Uri) = (
            "/p?q=caf%E9".parse().unwrap(),
            "/p?q=caf%E8".parse().unwrap(),
        );
        assert_ne!(primary("h", &a), primary("h", &b));
    }
}
