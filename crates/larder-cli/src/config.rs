//! `larder.toml`: caches by name, as Django's `CACHES`, plus the database
//! and the views store; environment variables override the file.
//!
//! ```toml
//! [caches.default]
//! url = "redis://127.0.0.1:6379/0"
//! timeout = 300            # default TTL in seconds ("none": never expire)
//! key_prefix = "app"
//! version = 1
//! [caches.default.options] # any URL option of the backend or the cache
//! deadline_ms = 100
//!
//! [database]
//! url = "postgres://app@127.0.0.1/app"
//!
//! [store]                  # where `larder views` keeps documents
//! url = "redb:larder-views.redb"
//!
//! [views.post_page]        # SQL views, see `larder views --help`
//! query = "…"
//! keys = "…"
//! ```
//!
//! Overrides: `LARDER_CACHE_URL` (the `default` cache's URL),
//! `LARDER_DATABASE_URL`, `LARDER_VIEWS_STORE`. The file is `--config`,
//! else `$LARDER_CONFIG`, else `./larder.toml` when it exists.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::CliError;

/// One cache, as in Django's `CACHES`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// The backend URL.
    pub url: Option<String>,
    /// Default TTL in seconds, or "none".
    pub timeout: Option<toml::Value>,
    /// Key prefix.
    pub key_prefix: Option<String>,
    /// Key version.
    pub version: Option<u64>,
    /// More URL options.
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlSection {
    pub url: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub caches: BTreeMap<String, CacheConfig>,
    #[serde(default)]
    pub database: UrlSection,
    #[serde(default)]
    pub store: UrlSection,
    /// Where it was read from, if anywhere.
    #[serde(skip)]
    pub path: Option<String>,
}

fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl Config {
    /// Reads `explicit`, else `$LARDER_CONFIG`, else `./larder.toml` if it
    /// exists, else an empty configuration.
    pub fn load(explicit: Option<&str>) -> Result<Config, CliError> {
        let env = std::env::var("LARDER_CONFIG").ok();
        let (path, required) = match (explicit, env.as_deref()) {
            (Some(p), _) => (p.to_owned(), true),
            (None, Some(p)) if !p.is_empty() => (p.to_owned(), true),
            _ => ("larder.toml".to_owned(), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(CliError::usage(format!(
                    "cannot read the configuration {path:?}: {e}"
                )))
            }
        };
        let mut c: Config =
            toml::from_str(&text).map_err(|e| CliError::usage(format!("{path}: {e}")))?;
        c.path = Some(path);
        Ok(c)
    }

    /// The full URL of cache `name`: its `url` (or `$LARDER_CACHE_URL` for
    /// `default`) with timeout, key_prefix, version and options appended.
    pub fn cache_url(&self, name: &str) -> Result<String, CliError> {
        let env = (name == "default")
            .then(|| std::env::var("LARDER_CACHE_URL").ok())
            .flatten()
            .filter(|u| !u.is_empty());
        let cfg = self.caches.get(name).cloned().unwrap_or_default();
        let url = env.or(cfg.url.clone()).ok_or_else(|| {
            let known: Vec<&str> = self.caches.keys().map(String::as_str).collect();
            CliError::usage(format!(
                "no URL for cache {name:?}: set [caches.{name}] url in larder.toml{}{}",
                if name == "default" {
                    " or LARDER_CACHE_URL"
                } else {
                    ""
                },
                if known.is_empty() {
                    String::new()
                } else {
                    format!(" (configured: {})", known.join(", "))
                }
            ))
        })?;
        let mut params: Vec<(String, String)> = Vec::new();
        if let Some(t) = &cfg.timeout {
            params.push(("timeout".into(), scalar(t)));
        }
        if let Some(p) = &cfg.key_prefix {
            params.push(("key_prefix".into(), p.clone()));
        }
        if let Some(v) = cfg.version {
            params.push(("version".into(), v.to_string()));
        }
        for (k, v) in &cfg.options {
            params.push((k.clone(), scalar(v)));
        }
        if params.is_empty() {
            return Ok(url);
        }
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{sep}{}", query.join("&")))
    }

    /// `$LARDER_DATABASE_URL`, else `[database] url`.
    pub fn database_url(&self) -> Option<String> {
        std::env::var("LARDER_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| self.database.url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_urls_carry_the_django_style_settings() {
        let c: Config = toml::from_str(
            r#"
            [caches.default]
            url = "mem://"
            timeout = 300
            key_prefix = "my app"
            version = 2
            [caches.default.options]
            max_entries = 10
            [caches.sessions]
            url = "redis://127.0.0.1:6379/1?deadline_ms=50"
            timeout = "none"
            "#,
        )
        .unwrap();
        let d = c.cache_url("default").unwrap();
        // LARDER_CACHE_URL may be set by the environment running the tests.
        if std::env::var("LARDER_CACHE_URL").is_err() {
            assert_eq!(
                d,
                "mem://?timeout=300&key_prefix=my+app&version=2&max_entries=10"
            );
        }
        assert_eq!(
            c.cache_url("sessions").unwrap(),
            "redis://127.0.0.1:6379/1?deadline_ms=50&timeout=none"
        );
        let e = c.cache_url("nope").unwrap_err().to_string();
        assert!(
            e.contains("[caches.nope]") && e.contains("default, sessions"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let r: Result<Config, _> = toml::from_str("[caches.default]\nurll = \"mem://\"\n");
        assert!(r.is_err());
    }
}
