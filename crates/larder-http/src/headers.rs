//! Django's view decorators as response helpers: call them in a handler
//! (or in tower's `MapResponseLayer`) before the response reaches the cache.

use http::header::{self, HeaderValue};
use http::Response;

/// Headers that describe one connection, not the message (RFC 9110
/// §7.6.1): a proxy or cache never forwards nor stores them.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the [`HOP_BY_HOP`] headers and those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    let named: Vec<http::HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// `Cache-Control: max-age=0, no-cache, no-store, must-revalidate, private`
/// (Django's `never_cache`): nothing stores it, anywhere.
pub fn never_cache<B>(res: &mut Response<B>) {
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=0, no-cache, no-store, must-revalidate, private"),
    );
    res.headers_mut()
        .insert(header::EXPIRES, HeaderValue::from_static("0"));
}

/// Sets `Cache-Control` to `directives` (Django's `cache_control`), e.g.
/// `"public, max-age=60, stale-while-revalidate=30"`. Invalid header text is
/// ignored.
pub fn cache_control<B>(res: &mut Response<B>, directives: &str) {
    if let Ok(v) = HeaderValue::from_str(directives) {
        res.headers_mut().insert(header::CACHE_CONTROL, v);
    }
}

/// Adds request headers the response depends on to `Vary` (Django's
/// `vary_on_headers`), without duplicates.
pub fn vary_on_headers<B>(res: &mut Response<B>, names: &[&str]) {
    let mut current: Vec<String> = res
        .headers()
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    for n in names {
        if !current.iter().any(|c| c.eq_ignore_ascii_case(n)) {
            current.push((*n).to_owned());
        }
    }
    if let Ok(v) = HeaderValue::from_str(&current.join(", ")) {
        res.headers_mut().insert(header::VARY, v);
    }
}

/// `vary_on_headers(res, &["Cookie"])` (Django's `vary_on_cookie`).
pub fn vary_on_cookie<B>(res: &mut Response<B>) {
    vary_on_headers(res, &["Cookie"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn vary_is_merged_without_duplicates() {
        let mut r = Response::new(());
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        vary_on_headers(&mut r, &["Accept-Encoding", "Accept-Language"]);
        vary_on_cookie(&mut r);
        assert_eq!(
            r.headers()[header::VARY],
            "accept-encoding, Accept-Language, Cookie"
        );
        never_cache(&mut r);
        assert!(r.headers()[header::CACHE_CONTROL]
            .to_str()
            .unwrap()
            .contains("no-store"));
    }
}
