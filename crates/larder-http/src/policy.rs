//! RFC 9111 rules for a shared cache: Cache-Control parsing, what may be
//! stored, how long it is fresh, and which stored response a request may use.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};

/// The Cache-Control directives a shared cache acts on (RFC 9111 §5.2,
/// RFC 5861). Directive names are case-insensitive; several Cache-Control
/// headers combine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (also with field names: treated as unqualified).
    pub no_cache: bool,
    /// `private` (also with field names: a shared cache stores nothing).
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `max-age`, seconds (an unparsable value reads as 0: stale).
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds.
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate`, seconds (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error`, seconds (RFC 5861).
    pub stale_if_error: Option<u64>,
    /// `only-if-cached` (requests).
    pub only_if_cached: bool,
    /// `min-fresh` (requests).
    pub min_fresh: Option<u64>,
}

/// RFC 9111 §1.2.2: delta-seconds above 2^31 are 2^31.
const MAX_DELTA: u64 = 1 << 31;

fn delta(v: Option<&str>) -> u64 {
    v.map(|s| s.trim().trim_matches('"'))
        .and_then(|s| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(s.parse::<u64>().unwrap_or(MAX_DELTA).min(MAX_DELTA))
        })
        .unwrap_or(0)
}

impl CacheControl {
    /// Parses every Cache-Control header of `headers`. Unknown directives
    /// are ignored; a header that is not text counts as `no-store`, the
    /// safe reading of something we cannot read.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else {
                cc.no_store = true;
                continue;
            };
            for directive in split_directives(text) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim())),
                    None => (directive.trim(), None),
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "max-age" => cc.max_age = Some(delta(arg)),
                    "s-maxage" => cc.s_maxage = Some(delta(arg)),
                    "stale-while-revalidate" => cc.stale_while_revalidate = Some(delta(arg)),
                    "stale-if-error" => cc.stale_if_error = Some(delta(arg)),
                    "only-if-cached" => cc.only_if_cached = true,
                    "min-fresh" => cc.min_fresh = Some(delta(arg)),
                    _ => {}
                }
            }
        }
        cc
    }

    /// Stale responses may not be served without revalidation
    /// (`must-revalidate`, `proxy-revalidate`, or `s-maxage` in a shared
    /// cache, RFC 9111 §5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// The value of the targeted field `name` (RFC 9213) as a `Cache-Control`
/// value, if the response has the field and it is valid: its field lines
/// joined form a structured-field dictionary (RFC 8941 §3.2). `None` when
/// absent or invalid (an invalid targeted field is ignored).
pub fn targeted_value(h: &HeaderMap, name: &HeaderName) -> Option<http::HeaderValue> {
    let mut joined = String::new();
    for v in h.get_all(name) {
        let text = v.to_str().ok()?;
        if !joined.is_empty() {
            joined.push_str(", ");
        }
        joined.push_str(text);
    }
    if joined.trim().is_empty() || !is_sf_dictionary(&joined) {
        return None;
    }
    http::HeaderValue::from_str(&joined).ok()
}

/// RFC 8941 §3.2, simplified to what cache directives use: members
/// `key`, `key=item` with `;key=item` parameters, where a key is a
/// lowercase sf-key and an item an integer, decimal, string, token,
/// boolean or byte sequence. Inner lists are not accepted.
fn is_sf_dictionary(text: &str) -> bool {
    fn is_key(k: &str) -> bool {
        let mut b = k.bytes();
        matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c == b'*')
            && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c))
    }
    fn is_item(v: &str) -> bool {
        let b = v.as_bytes();
        match b.first() {
            None => false,
            Some(b'"') => {
                b.len() >= 2
                    && b[b.len() - 1] == b'"'
                    && b[1..b.len() - 1].iter().all(|&c| (0x20..0x7f).contains(&c))
            }
            Some(b'?') => v == "?0" || v == "?1",
            Some(b':') => b.len() >= 2 && b[b.len() - 1] == b':',
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let digits = v.strip_prefix('-').unwrap_or(v);
                let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
                !int.is_empty()
                    && int.len() <= 15
                    && int.bytes().all(|c| c.is_ascii_digit())
                    && frac.len() <= 3
                    && frac.bytes().all(|c| c.is_ascii_digit())
                    && (frac.is_empty() != digits.contains('.'))
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'*' => v
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c)),
            _ => false,
        }
    }
    fn is_key_maybe_item(m: &str) -> bool {
        match m.split_once('=') {
            Some((k, v)) => is_key(k) && is_item(v),
            None => is_key(m),
        }
    }
    split_directives(text).into_iter().all(|member| {
        // Members are separated by `,` with optional whitespace; no
        // whitespace inside a member.
        let member = member.trim_matches([' ', '\t']);
        let mut parts = member.split(';');
        let first = parts.next().unwrap_or("");
        !first.is_empty()
            && is_key_maybe_item(first)
            && parts.all(|p| is_key_maybe_item(p.trim_start_matches(' ')))
    })
}

/// Splits on commas outside quoted strings.
fn split_directives(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

/// Statuses a cache may store with heuristic freshness (RFC 9110 §15.1).
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Safe methods (RFC 9110 §9.2.1); any other method invalidates (RFC 9111 §4.4).
pub fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Why a response is not stored (for logs and the `x-cache` debug header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotStored {
    /// Only GET responses are stored.
    Method,
    /// The status is not cacheable without explicit freshness.
    Status,
    /// `Cache-Control: no-store` on the response.
    NoStore,
    /// `Cache-Control: no-store` on the request.
    RequestNoStore,
    /// The request carried `Cookie` and the response no explicit freshness:
    /// heuristic freshness (a default TTL, `Last-Modified`) is never applied
    /// to a response that may be personalised (Varnish's builtin rule).
    Cookie,
    /// `Cache-Control: private`.
    Private,
    /// The request carried `Authorization`.
    Authorization,
    /// The response sets a cookie (allowed with `cache_set_cookie`).
    SetCookie,
    /// `Vary: *`: no later request can match.
    VaryStar,
    /// No freshness information and no default TTL.
    NoFreshness,
    /// The body is streamed or larger than the limit.
    Body,
}

/// The layer's settings that the rules depend on.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Freshness for responses that give none (and may be stored
    /// heuristically); `None`: only explicit freshness.
    pub default_ttl: Option<Duration>,
    /// Store responses that set cookies.
    pub cache_set_cookie: bool,
    /// Serve stale for this long past freshness while revalidating, when
    /// the response does not forbid it.
    pub grace: Duration,
}

/// RFC 9111 §3: may a shared cache store this response to this request?
/// Returns the freshness lifetime when it may.
pub fn storable(
    rules: &Rules,
    method: &Method,
    req_headers: &HeaderMap,
    status: StatusCode,
    res_headers: &HeaderMap,
) -> Result<Duration, NotStored> {
    if *method != Method::GET {
        return Err(NotStored::Method);
    }
    let req_cc = CacheControl::parse(req_headers);
    let cc = CacheControl::parse(res_headers);
    if req_cc.no_store {
        return Err(NotStored::RequestNoStore);
    }
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if req_headers.contains_key(header::AUTHORIZATION) {
        return Err(NotStored::Authorization);
    }
    if !rules.cache_set_cookie && res_headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if vary_names(res_headers).is_none() {
        return Err(NotStored::VaryStar);
    }
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStored::Status);
    }
    if let Some(lifetime) = explicit_lifetime(&cc, res_headers) {
        return Ok(lifetime);
    }
    if !(heuristically_cacheable(status) || cc.public) {
        return Err(NotStored::Status);
    }
    if req_headers.contains_key(header::COOKIE) {
        return Err(NotStored::Cookie);
    }
    if let Some(ttl) = rules.default_ttl {
        return Ok(ttl);
    }
    // RFC 9111 §4.2.2: a fraction of the time since Last-Modified.
    if let (Some(date), Some(modified)) = (
        header_date(res_headers, &header::DATE).or(Some(SystemTime::now())),
        header_date(res_headers, &header::LAST_MODIFIED),
    ) {
        if let Ok(age) = date.duration_since(modified) {
            let h = (age / 10).min(Duration::from_secs(86_400));
            if !h.is_zero() {
                return Ok(h);
            }
        }
    }
    if cc.public || cc.no_cache {
        // Storable, but stale at once: it is revalidated on every use.
        return Ok(Duration::ZERO);
    }
    Err(NotStored::NoFreshness)
}

/// s-maxage, then max-age, then Expires − Date (RFC 9111 §4.2.1). A
/// response with `no-cache` is stale at once.
fn explicit_lifetime(cc: &CacheControl, h: &HeaderMap) -> Option<Duration> {
    if cc.no_cache {
        return Some(Duration::ZERO);
    }
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(s));
    }
    let expires = h.get(header::EXPIRES)?;
    // An invalid Expires (e.g. "0") means already expired (RFC 9111
    // §5.3); a valid date in an obsolete format or the wrong case is not
    // invalid (RFC 9110 §5.6.7).
    let Some(expires) = expires.to_str().ok().and_then(parse_http_date) else {
        return Some(Duration::ZERO);
    };
    let date = header_date(h, &header::DATE).unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// A date header, if present and valid (in any of the three formats of
/// [`parse_http_date`]).
pub fn header_date(h: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
}

/// An HTTP date, read as RFC 9110 §5.6.7 asks of recipients: the
/// preferred IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the two
/// obsolete formats, RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and ANSI C
/// asctime (`Sun Nov  6 08:49:37 1994`), with day and month names and the
/// zone in any case, runs of spaces, and a one-digit day. `None` for
/// anything else.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    // Field values are short; a long one is not a date (and is not worth
    // normalising).
    if s.len() > 64 {
        return None;
    }
    let words: Vec<String> = s.split_ascii_whitespace().map(canonical_word).collect();
    let candidate = match words.as_slice() {
        // asctime: the day is padded to two characters with a space.
        [wd, mon, day, time, year] if !wd.ends_with(',') => {
            format!("{wd} {mon} {day:>2} {time} {year}")
        }
        // IMF-fixdate with a one-digit day.
        [wd, day, mon, year, time, zone] if day.len() == 1 => {
            format!("{wd} 0{day} {mon} {year} {time} {zone}")
        }
        _ => words.join(" "),
    };
    httpdate::parse_http_date(&candidate).ok()
}

/// A date's word in the case httpdate expects: day and month names
/// capitalised (`sunday,` → `Sunday,`, `06-NOV-94` → `06-Nov-94`), `GMT`
/// in capitals.
fn canonical_word(w: &str) -> String {
    if w.eq_ignore_ascii_case("gmt") {
        return "GMT".to_owned();
    }
    let mut out = String::with_capacity(w.len());
    let mut at_word_start = true;
    for c in w.chars() {
        if c.is_ascii_alphabetic() {
            out.push(if at_word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            at_word_start = false;
        } else {
            out.push(c);
            at_word_start = true;
        }
    }
    out
}

/// A response's Age in seconds (RFC 9111 §5.1): the first member of a
/// list (`7200, 0` is 7200), several field lines read as one list; a
/// value that is not a non-negative integer is ignored (0); a huge one is
/// 2^31 (RFC 9111 §1.2.2).
pub fn age_seconds(h: &HeaderMap) -> u64 {
    const MAX_DELTA: u64 = 1 << 31;
    let Some(first) = h
        .get_all(header::AGE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .find(|m| !m.is_empty())
    else {
        return 0;
    };
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    first.parse::<u64>().map_or(MAX_DELTA, |n| n.min(MAX_DELTA))
}

/// The Vary header's field names, lowercased and sorted; `None` for `*`
/// (or a header that is not text), which no request can match.
pub fn vary_names(h: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for v in h.get_all(header::VARY) {
        let Ok(text) = v.to_str() else { return None };
        for name in text.split(',') {
            let name = name.trim();
            if name == "*" {
                return None;
            }
            if !name.is_empty() {
                names.push(name.to_ascii_lowercase());
            }
        }
    }
    names.sort();
    names.dedup();
    Some(names)
}

/// The request's values of the Vary'd headers: `None` for an absent header
/// (distinct from an empty one), several values joined in order.
///
/// Values are normalised by [`normalize_vary_value`], so requests that say
/// the same thing in different spacing (or letter case, where the field is
/// case-insensitive) share a variant.
pub fn vary_values(names: &[String], req: &HeaderMap) -> Vec<Option<Vec<u8>>> {
    names
        .iter()
        .map(|n| {
            let mut values = req.get_all(n.as_str()).iter().peekable();
            values.peek()?;
            let mut joined = Vec::new();
            for (i, v) in values.enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(v.as_bytes());
            }
            Some(normalize_vary_value(n, joined))
        })
        .collect()
}

/// How a Vary'd request header's value (its field lines joined with
/// `", "`) is compared. Only what the field's definition says cannot
/// matter is removed, so two values that an origin could answer
/// differently never share a variant:
///
/// - List fields whose members are case-insensitive tokens
///   (`Accept-Encoding`, `Accept-Language`, `Accept-Charset`, `TE`): split
///   at commas outside quoted strings, whitespace around members and
///   around `;` and `=` removed, empty members dropped (RFC 9110 §5.6.1),
///   lowercased. Order is kept: an origin may prefer the first of equal
///   weights. `gzip, br` and ` GZIP ,br` are one variant; `br, gzip` is
///   another.
/// - `Accept`: the same, without lowercasing (a parameter's value may be
///   case-sensitive).
/// - Every other field (`Cookie`, `Authorization`, `User-Agent`, custom
///   ones): whitespace at the ends only; the rest byte for byte.
/// - A value that is not visible ASCII is compared byte for byte.
pub fn normalize_vary_value(name: &str, value: Vec<u8>) -> Vec<u8> {
    let lowercase = match name {
        "accept-encoding" | "accept-language" | "accept-charset" | "te" => true,
        "accept" => false,
        _ => return trim_ows(value),
    };
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return value;
    }
    let mut out = Vec::with_capacity(value.len());
    let mut member: Vec<u8> = Vec::new();
    let mut quoted = false;
    let mut escaped = false;
    let flush = |member: &mut Vec<u8>, out: &mut Vec<u8>| {
        let m = trim_ows(std::mem::take(member));
        if !m.is_empty() {
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(&m);
        }
    };
    for &b in &value {
        if quoted {
            member.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
            continue;
        }
        match b {
            b'"' => {
                quoted = true;
                member.push(b);
            }
            b',' => flush(&mut member, &mut out),
            // Whitespace: one space at most, none after a separator (or
            // at the start; the end is trimmed at the flush).
            b' ' | b'\t' => {
                if !matches!(member.last(), None | Some(b' ' | b';' | b'=')) {
                    member.push(b' ');
                }
            }
            // None before a separator either.
            b';' | b'=' => {
                while member.last() == Some(&b' ') {
                    member.pop();
                }
                member.push(b);
            }
            _ => member.push(if lowercase { b.to_ascii_lowercase() } else { b }),
        }
    }
    flush(&mut member, &mut out);
    out
}

/// `value` without the spaces and tabs at its ends.
fn trim_ows(mut value: Vec<u8>) -> Vec<u8> {
    while matches!(value.last(), Some(b' ' | b'\t')) {
        value.pop();
    }
    let start = value
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(value.len());
    value.drain(..start);
    value
}

/// Weak comparison of entity tags for If-None-Match (RFC 9110 §13.1.2).
pub fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let etag = strip(etag);
    if_none_match.trim() == "*" || if_none_match.split(',').any(|t| strip(t) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn dates_in_the_three_formats_and_any_case() {
        let want = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        for s in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "sun, 06 nov 1994 08:49:37 gmt",
            "SUN, 06 NOV 1994 08:49:37 GMT",
            "Sun,  06  Nov 1994 08:49:37   GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "SUNDAY, 06-NOV-94 08:49:37 gmt",
            "Sun Nov  6 08:49:37 1994",
            "sun nov 6 08:49:37 1994",
            "SUN NOV 06 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(s), Some(want), "{s:?}");
        }
        for s in [
            "0",
            "-1",
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            &"Sun, 06 Nov 1994 08:49:37 GMT ".repeat(10),
        ] {
            assert_eq!(parse_http_date(s), None, "{s:?}");
        }
    }

    #[test]
    fn an_expires_in_an_obsolete_format_is_a_lifetime_not_expired() {
        let h = headers(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun Nov  6 09:49:37 1994"),
        ]);
        let cc = CacheControl::parse(&h);
        assert_eq!(explicit_lifetime(&cc, &h), Some(Duration::from_secs(3600)));
        let h = headers(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "sunday, 06-nov-94 10:49:37 gmt"),
        ]);
        assert_eq!(explicit_lifetime(&cc, &h), Some(Duration::from_secs(7200)));
        let h = headers(&[("expires", "0")]);
        assert_eq!(
            explicit_lifetime(&cc, &h),
            Some(Duration::ZERO),
            "invalid: expired"
        );
    }

    #[test]
    fn age_is_the_first_member_of_a_list() {
        for (lines, want) in [
            (&["7200, 0"][..], 7200),
            (&["7200", "0"][..], 7200),
            (&[" 30 "][..], 30),
            (&[", 12"][..], 12),
            (&["abc, 5"][..], 0),
            (&["-5"][..], 0),
            (&["1.5"][..], 0),
            (&["99999999999999999999999"][..], 1 << 31),
            (&[][..], 0),
        ] {
            let pairs: Vec<(&str, &str)> = lines.iter().map(|v| ("age", *v)).collect();
            assert_eq!(age_seconds(&headers(&pairs)), want, "{lines:?}");
        }
    }

    fn rules() -> Rules {
        Rules {
            default_ttl: None,
            cache_set_cookie: false,
            grace: Duration::ZERO,
        }
    }

    fn store(
        req: &[(&str, &str)],
        status: u16,
        res: &[(&str, &str)],
    ) -> Result<Duration, NotStored> {
        storable(
            &rules(),
            &Method::GET,
            &headers(req),
            StatusCode::from_u16(status).unwrap(),
            &headers(res),
        )
    }

    #[test]
    fn directives_are_case_insensitive_and_combine() {
        let cc = CacheControl::parse(&headers(&[
            ("cache-control", "PRIVATE, Max-Age=60"),
            ("cache-control", "s-maxage=\"30\", no-cache=\"set-cookie\""),
        ]));
        assert!(cc.private && cc.no_cache);
        assert_eq!((cc.max_age, cc.s_maxage), (Some(60), Some(30)));
        assert_eq!(
            CacheControl::parse(&headers(&[("cache-control", "max-age=abc")])).max_age,
            Some(0)
        );
        assert_eq!(
            CacheControl::parse(&headers(&[("cache-control", "max-age=99999999999999")])).max_age,
            Some(MAX_DELTA)
        );
    }

    #[test]
    fn privacy_regressions_are_not_stored() {
        // Django's middleware stored these at one point or another.
        assert_eq!(
            store(&[], 200, &[("cache-control", "PRIVATE, max-age=60")]),
            Err(NotStored::Private)
        );
        assert_eq!(
            store(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "s=1")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            store(&[], 200, &[("cache-control", "max-age=60"), ("vary", "*")]),
            Err(NotStored::VaryStar)
        );
        assert_eq!(
            store(
                &[("authorization", "Bearer x")],
                200,
                &[("cache-control", "max-age=60")]
            ),
            Err(NotStored::Authorization)
        );
        assert_eq!(
            store(
                &[("cache-control", "no-store")],
                200,
                &[("cache-control", "max-age=60")]
            ),
            Err(NotStored::RequestNoStore)
        );
        // A session cookie and no explicit freshness: never heuristically
        // fresh (under a default TTL it would reach anonymous clients).
        let with_default = Rules {
            default_ttl: Some(Duration::from_secs(300)),
            ..rules()
        };
        let req = headers(&[("cookie", "session=abc")]);
        assert_eq!(
            storable(
                &with_default,
                &Method::GET,
                &req,
                StatusCode::OK,
                &HeaderMap::new()
            ),
            Err(NotStored::Cookie)
        );
        assert_eq!(
            storable(
                &with_default,
                &Method::GET,
                &req,
                StatusCode::OK,
                &headers(&[("last-modified", "Thu, 26 Nov 2026 09:00:00 GMT")])
            ),
            Err(NotStored::Cookie)
        );
        assert_eq!(
            store(
                &[("cookie", "session=abc")],
                200,
                &[("cache-control", "max-age=60")]
            ),
            Ok(Duration::from_secs(60)),
            "explicit freshness is the origin's decision"
        );
    }

    #[test]
    fn freshness_comes_from_s_maxage_max_age_expires_then_heuristics() {
        assert_eq!(
            store(&[], 200, &[("cache-control", "max-age=60, s-maxage=5")]),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(
            store(&[], 200, &[("cache-control", "max-age=60")]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            store(
                &[],
                200,
                &[
                    ("date", "Thu, 26 Nov 2026 10:00:00 GMT"),
                    ("expires", "Thu, 26 Nov 2026 10:02:00 GMT")
                ]
            ),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(store(&[], 200, &[("expires", "0")]), Ok(Duration::ZERO));
        assert_eq!(
            store(
                &[],
                200,
                &[
                    ("date", "Thu, 26 Nov 2026 10:00:00 GMT"),
                    ("last-modified", "Thu, 26 Nov 2026 09:00:00 GMT")
                ]
            ),
            Ok(Duration::from_secs(360))
        );
        assert_eq!(store(&[], 200, &[]), Err(NotStored::NoFreshness));
        // Not heuristically cacheable: only with explicit freshness.
        assert_eq!(store(&[], 302, &[]), Err(NotStored::Status));
        assert_eq!(
            store(&[], 302, &[("cache-control", "max-age=10")]),
            Ok(Duration::from_secs(10))
        );
        let with_default = Rules {
            default_ttl: Some(Duration::from_secs(300)),
            ..rules()
        };
        assert_eq!(
            storable(
                &with_default,
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &HeaderMap::new()
            ),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            storable(
                &with_default,
                &Method::POST,
                &HeaderMap::new(),
                StatusCode::OK,
                &HeaderMap::new()
            ),
            Err(NotStored::Method)
        );
    }

    #[test]
    fn vary_values_are_normalised_only_where_the_field_allows() {
        let n = |name: &str, v: &str| {
            String::from_utf8(normalize_vary_value(name, v.as_bytes().to_vec())).unwrap()
        };
        // Lists of case-insensitive tokens: spacing, case, empty members.
        assert_eq!(n("accept-language", "en, de"), "en,de");
        assert_eq!(n("accept-language", "  en ,   de  "), "en,de");
        assert_eq!(
            n("accept-language", "EN-us,, de ; q = 0.5"),
            "en-us,de;q=0.5"
        );
        assert_eq!(n("accept-encoding", " GZIP ,br"), "gzip,br");
        assert_eq!(
            n("accept-encoding", "gzip;q=1.0,\tbr;  q=0.8"),
            "gzip;q=1.0,br;q=0.8"
        );
        // Order is kept: it can decide between equal weights.
        assert_ne!(
            n("accept-encoding", "br, gzip"),
            n("accept-encoding", "gzip, br")
        );
        // Accept keeps case (parameter values may be case-sensitive) and
        // quoted strings whole.
        assert_eq!(
            n("accept", "text/html ; Level=1 , application/x;v=\"A, B\""),
            "text/html;Level=1,application/x;v=\"A, B\""
        );
        // Everything else: ends trimmed, the rest byte for byte.
        assert_eq!(n("cookie", "  a=1;  b=2 "), "a=1;  b=2");
        assert_ne!(n("cookie", "a=1; b=2"), n("cookie", "a=1;b=2"));
        assert_eq!(n("x-tenant", "Acme , Inc"), "Acme , Inc");
        // Not visible ASCII: untouched.
        let raw = b"EN,\xffde".to_vec();
        assert_eq!(normalize_vary_value("accept-language", raw.clone()), raw);
        // Multiple field lines are one list.
        let names = vec!["accept-language".to_owned()];
        assert_eq!(
            vary_values(
                &names,
                &headers(&[("accept-language", "en"), ("accept-language", " DE")])
            ),
            vec![Some(b"en,de".to_vec())]
        );
    }

    #[test]
    fn absent_and_empty_vary_values_differ() {
        let names = vec!["accept-language".to_owned()];
        let absent = vary_values(&names, &HeaderMap::new());
        let empty = vary_values(&names, &headers(&[("accept-language", "")]));
        assert_eq!(absent, vec![None]);
        assert_eq!(empty, vec![Some(Vec::new())]);
        assert_ne!(absent, empty);
        assert_eq!(
            vary_names(&headers(&[("vary", "Accept-Encoding, cookie")])),
            Some(vec!["accept-encoding".into(), "cookie".into()])
        );
    }

    #[test]
    fn etags_compare_weakly() {
        assert!(etag_matches("\"a\", W/\"b\"", "\"b\""));
        assert!(etag_matches("*", "\"x\""));
        assert!(!etag_matches("\"a\"", "\"b\""));
    }
}
