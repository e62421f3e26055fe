//! Django's view decorators as response helpers: call them in a handler
//! (or in tower's `MapResponseLayer`) before the response reaches the cache.

use http::header::{self, HeaderValue};
use http::Response;

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
