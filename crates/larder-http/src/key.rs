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
pub fn normalized_query(q: Option<&str>) -> String {
    let Some(q) = q.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> =
        form_urlencoded::parse(q.as_bytes()).into_owned().collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The host a request is for: the URI's authority, else the Host header.
pub fn host_of(uri: &Uri, headers: &HeaderMap) -> String {
    uri.authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        })
        .unwrap_or_default()
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
        assert_eq!(
            normalized_query(Some("q=a%20b")),
            normalized_query(Some("q=a+b"))
        );
        assert_eq!(normalized_query(None), "");
    }
}
