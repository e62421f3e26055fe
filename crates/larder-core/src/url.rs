//! Cache URLs: `scheme://authority/path?option=value&…`.
//!
//! A small parser rather than the `url` crate because cache URLs are not
//! always RFC 3986 URLs: `memcached://h1:11211,h2:11212` lists several hosts.
//! Every option must be consumed by someone; [`CacheUrl::finish`] reports
//! the ones nobody understood, by name.

use std::str::FromStr;

use std::time::Duration;

use crate::envelope::Codec;
use crate::error::{Error, Result};
use crate::ttl::Ttl;

/// A parsed cache URL whose options are taken one by one.
#[derive(Debug, Clone)]
pub struct CacheUrl {
    original: String,
    scheme: String,
    authority: String,
    path: String,
    params: Vec<(String, String)>,
    /// Options the cache read and left for the backend
    /// ([`CacheUrl::read_shared`]): not reported by `finish`.
    shared: Vec<String>,
}

impl CacheUrl {
    /// Parses `scheme://authority/path?k=v&…`. Percent-escapes in option
    /// values are decoded; the authority and path are kept as written (with
    /// percent-escapes decoded in the path).
    pub fn parse(url: &str) -> Result<CacheUrl> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            Error::config(format!(
                "cache URL {url:?} has no scheme; expected e.g. \"mem://\", \"file:///var/cache/app\" or \"dummy://\""
            ))
        })?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        {
            return Err(Error::config(format!(
                "cache URL {url:?} has an invalid scheme {scheme:?}"
            )));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, q),
            None => (rest, ""),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], &before_query[i..]),
            None => (before_query, ""),
        };
        let path: String =
            form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
        let params = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(CacheUrl {
            original: url.to_owned(),
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_owned(),
            path,
            params,
            shared: Vec::new(),
        })
    }

    /// The scheme, lower-cased (`"mem"`, `"file"`, …).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Everything between `://` and the path: `host:port`, `user:pass@host`,
    /// or a comma-separated host list.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path, starting with `/`, or empty.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// Removes and returns an option (the last one when repeated).
    pub fn take(&mut self, name: &str) -> Option<String> {
        let mut found = None;
        self.params.retain(|(k, v)| {
            if k == name {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Removes an option and parses it, naming the option on failure.
    pub fn take_parsed<T: FromStr>(&mut self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| {
                Error::config(format!(
                    "option {name}={v:?} in {:?} is not valid: {e}",
                    self.original
                ))
            }),
        }
    }

    /// Removes a boolean option (`true/false`, `1/0`, `yes/no`, `on/off`).
    pub fn take_bool(&mut self, name: &str) -> Result<Option<bool>> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(Error::config(format!(
                    "option {name}={v:?} in {:?} is not a boolean (true/false)",
                    self.original
                ))),
            },
        }
    }

    /// Returns an option that the cache and its backend both read
    /// (`deadline_ms`), leaving it in place for the backend; a backend that
    /// does not use it is not failed for it by [`CacheUrl::finish`].
    pub fn read_shared(&mut self, name: &str) -> Option<String> {
        let v = self
            .params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        if v.is_some() && !self.shared.iter().any(|s| s == name) {
            self.shared.push(name.to_owned());
        }
        v
    }

    /// Removes and returns every option left, in order. A backend whose
    /// driver has options of its own (SQL) passes these on to it.
    pub fn take_rest(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.params)
    }

    /// Fails naming every option nobody took.
    pub fn finish(self) -> Result<()> {
        let names: Vec<&str> = self
            .params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !self.shared.iter().any(|s| s == k))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        Err(Error::config(format!(
            "unknown option{} {} in cache URL {:?}",
            if names.len() > 1 { "s" } else { "" },
            names.join(", "),
            self.original
        )))
    }
}

/// The cache-level options of a cache URL: `key_prefix`, `version`,
/// `timeout` (seconds, or `none` for never), `codec` (`postcard`/`json`),
/// `compress_above` (bytes, or `none`), `hash_long_keys`,
/// `max_value_bytes`, `name`, `deadline_ms` (ms, or `none`; also read by
/// the backend),
/// `breaker_failures`, `breaker_cool_down_ms`, `fail_open`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UrlOptions {
    /// `key_prefix`.
    pub key_prefix: Option<String>,
    /// `version`.
    pub version: Option<u64>,
    /// `timeout`: the default TTL.
    pub timeout: Option<Ttl>,
    /// `codec`.
    pub codec: Option<Codec>,
    /// `compress_above`; `Some(None)` turns compression off.
    pub compress_above: Option<Option<usize>>,
    /// `hash_long_keys`.
    pub hash_long_keys: Option<bool>,
    /// `max_value_bytes`.
    pub max_value_bytes: Option<usize>,
    /// `name`.
    pub name: Option<String>,
    /// `deadline_ms`: the deadline of one cache call; `Some(None)` = none.
    pub deadline: Option<Option<Duration>>,
    /// `breaker_failures`: consecutive failures that open the breaker (0: off).
    pub breaker_failures: Option<u32>,
    /// `breaker_cool_down_ms`.
    pub breaker_cool_down: Option<Duration>,
    /// `fail_open`: reads treat a failing backend as a miss.
    pub fail_open: Option<bool>,
}

impl UrlOptions {
    /// Takes the cache-level options out of a URL, leaving the backend's.
    pub fn take(url: &mut CacheUrl) -> Result<UrlOptions> {
        let mut o = UrlOptions {
            key_prefix: url.take("key_prefix"),
            version: url.take_parsed::<u64>("version")?,
            ..UrlOptions::default()
        };
        if let Some(t) = url.take("timeout") {
            o.timeout = Some(if t.eq_ignore_ascii_case("none") {
                Ttl::Never
            } else {
                let secs: u64 = t.parse().map_err(|_| {
                    Error::config(format!(
                        "option timeout={t:?} is not a number of seconds or \"none\""
                    ))
                })?;
                Ttl::After(Duration::from_secs(secs))
            });
        }
        if let Some(c) = url.take("codec") {
            o.codec = Some(Codec::parse(&c)?);
        }
        if let Some(c) = url.take("compress_above") {
            o.compress_above = Some(if c.eq_ignore_ascii_case("none") {
                None
            } else {
                Some(c.parse().map_err(|_| {
                    Error::config(format!(
                        "option compress_above={c:?} is not a number of bytes or \"none\""
                    ))
                })?)
            });
        }
        o.hash_long_keys = url.take_bool("hash_long_keys")?;
        o.max_value_bytes = url.take_parsed::<usize>("max_value_bytes")?;
        o.name = url.take("name");
        if url.take("op_deadline_ms").is_some() {
            return Err(Error::config(
                "option op_deadline_ms is now deadline_ms: one deadline for every call of the cache, \
                 which the backend uses for its own timeouts too",
            ));
        }
        // Read here and left for the backend, which bounds its own
        // connection and response waits by it too.
        if let Some(d) = url.read_shared("deadline_ms") {
            o.deadline = Some(if d.eq_ignore_ascii_case("none") {
                // The backend keeps its own limits; calls get none.
                url.take("deadline_ms");
                None
            } else {
                let ms: u64 = d.parse().map_err(|_| {
                    Error::config(format!(
                        "option deadline_ms={d:?} is not a number of milliseconds or \"none\""
                    ))
                })?;
                Some(Duration::from_millis(ms))
            });
        }
        o.breaker_failures = url.take_parsed::<u32>("breaker_failures")?;
        o.breaker_cool_down = url
            .take_parsed::<u64>("breaker_cool_down_ms")?
            .map(Duration::from_millis);
        o.fail_open = url.take_bool("fail_open")?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let mut u =
            CacheUrl::parse("file:///var/cache/my%20app?max_entries=10&key_prefix=a").unwrap();
        assert_eq!(u.scheme(), "file");
        assert_eq!(u.authority(), "");
        assert_eq!(u.path(), "/var/cache/my app");
        assert_eq!(u.take_parsed::<u64>("max_entries").unwrap(), Some(10));
        assert_eq!(u.take("key_prefix").as_deref(), Some("a"));
        u.finish().unwrap();
    }

    #[test]
    fn host_lists_survive() {
        let u = CacheUrl::parse("memcached://h1:11211,h2:11212?x=1").unwrap();
        assert_eq!(u.authority(), "h1:11211,h2:11212");
    }

    #[test]
    fn unknown_options_are_named() {
        let u = CacheUrl::parse("mem://?max_entires=5&bogus=1").unwrap();
        let err = u.finish().unwrap_err().to_string();
        assert!(
            err.contains("max_entires") && err.contains("bogus"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let mut u = CacheUrl::parse("mem://?max_entries=lots").unwrap();
        let err = u.take_parsed::<u64>("max_entries").unwrap_err().to_string();
        assert!(err.contains("max_entries"), "{err}");
        assert!(CacheUrl::parse("no-scheme").is_err());
    }
}
