//! What the dashboards show: every `larder_*` metric (a Prometheus
//! recorder installed once per process), request latencies over a sliding
//! window, and the figures of whoever serves the page (HTTP cache, views).
//! `/_larder` (the HTML dashboard) polls `/_larder/stats.json`, built here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The dashboard page (self-contained: no external scripts).
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

const WINDOW: Duration = Duration::from_secs(10);

/// How often the metrics recorder is drained when nobody scrapes it.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// `GET /_larder`: the dashboard page, never cached.
pub async fn dashboard_page() -> axum::response::Response {
    no_store("text/html; charset=utf-8", DASHBOARD_HTML.to_owned())
}

/// `GET /_larder/stats.json`'s response for a snapshot.
pub fn stats_response(snapshot: &serde_json::Value) -> axum::response::Response {
    no_store("application/json", snapshot.to_string())
}

fn no_store(content_type: &'static str, body: String) -> axum::response::Response {
    use axum::http::{header, HeaderValue};
    use axum::response::IntoResponse;
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// Middleware: records every request's latency except the dashboard's and
/// the metrics endpoints' own.
pub async fn measure(
    axum::extract::State(telemetry): axum::extract::State<Arc<Telemetry>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path();
    let own = path.starts_with("/_larder") || path == "/metrics";
    let start = Instant::now();
    let resp = next.run(req).await;
    if !own {
        telemetry.record_latency(start.elapsed());
    }
    resp
}

/// Metrics and latencies of this process.
pub struct Telemetry {
    prometheus: PrometheusHandle,
    latencies: Mutex<VecDeque<(Instant, f64)>>,
    requests: std::sync::atomic::AtomicU64,
    started: Instant,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

static TELEMETRY: OnceLock<Arc<Telemetry>> = OnceLock::new();

impl Telemetry {
    /// The process's telemetry; the first call installs the metrics
    /// recorder, so call it before building caches (their counters are
    /// registered when they are built).
    pub fn global() -> Arc<Telemetry> {
        TELEMETRY
            .get_or_init(|| {
                let prometheus = PrometheusBuilder::new()
                    .install_recorder()
                    .unwrap_or_else(|_| {
                        // Another recorder is installed (embedding): ours
                        // then renders only what it sees (nothing).
                        PrometheusBuilder::new().build_recorder().handle()
                    });
                // Histograms keep every sample until upkeep drains them into
                // their summaries; without it memory grows with every
                // request until someone scrapes /metrics.
                let upkeep = prometheus.clone();
                let _ = std::thread::Builder::new()
                    .name("larder-metrics-upkeep".into())
                    .spawn(move || loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    });
                Arc::new(Telemetry {
                    prometheus,
                    latencies: Mutex::new(VecDeque::new()),
                    requests: Default::default(),
                    started: Instant::now(),
                })
            })
            .clone()
    }

    /// Records one request's latency.
    pub fn record_latency(&self, d: Duration) {
        let now = Instant::now();
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::histogram!("larder_request_seconds").record(d.as_secs_f64());
        let mut l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        l.push_back((now, d.as_secs_f64() * 1000.0));
        while l
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
            || l.len() > 100_000
        {
            l.pop_front();
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn prometheus_text(&self) -> String {
        self.prometheus.render()
    }

    fn latency(&self) -> serde_json::Value {
        let now = Instant::now();
        let mut v: Vec<f64> = {
            let l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
            l.iter()
                .filter(|(t, _)| now.duration_since(*t) <= WINDOW)
                .map(|(_, ms)| *ms)
                .collect()
        };
        v.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * p).round() as usize]
            }
        };
        serde_json::json!({
            "p50": pct(0.5),
            "p99": pct(0.99),
            "requests_per_s": v.len() as f64 / WINDOW.as_secs_f64(),
            "total": self.requests.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// The dashboard's JSON: `http` is the HTTP cache's stats if this
    /// process has one, `views` its views status.
    pub fn snapshot(
        &self,
        http: Option<&larder_http::HttpCacheStats>,
        views: Option<&larder_views::Status>,
    ) -> serde_json::Value {
        let metrics = parse_prometheus(&self.prometheus_text());
        let sum = |name: &str| -> f64 {
            metrics
                .iter()
                .filter(|m| m.name == name)
                .map(|m| m.value)
                .sum::<f64>()
                + 0.0 // an empty sum is -0.0
        };
        let by_cache = |name: &str| -> BTreeMap<String, f64> {
            let mut out = BTreeMap::new();
            for m in metrics.iter().filter(|m| m.name == name) {
                let label = m.labels.get("cache").cloned().unwrap_or_default();
                *out.entry(label).or_insert(0.0) += m.value;
            }
            out
        };
        let mut layers = Vec::new();
        if let Some(h) = http {
            layers.push(serde_json::json!({
                "name": "http",
                "hits": h.hits + h.stale + h.revalidated,
                "misses": h.misses,
            }));
        }
        let near_hits = by_cache("larder_near_l1_hits_total");
        let near_misses = by_cache("larder_near_l1_misses_total");
        for (cache, hits) in &near_hits {
            layers.push(serde_json::json!({
                "name": format!("{cache} L1"),
                "hits": hits,
                "misses": near_misses.get(cache).copied().unwrap_or(0.0),
            }));
        }
        let hits = by_cache("larder_cache_hits_total");
        let misses = by_cache("larder_cache_misses_total");
        for (cache, h) in &hits {
            // The HTTP cache's own store is shown as the http layer; a
            // cache nobody reads through (a near cache's L2 handle) is noise.
            let m = misses.get(cache).copied().unwrap_or(0.0);
            if (http.is_some() && cache == "http") || (*h == 0.0 && m == 0.0) {
                continue;
            }
            layers.push(serde_json::json!({
                "name": cache,
                "hits": h,
                "misses": misses.get(cache).copied().unwrap_or(0.0),
            }));
        }
        if views.is_some() {
            let rt = sum("larder_views_read_through_total");
            layers.push(serde_json::json!({
                "name": "views",
                "hits": (sum("larder_demo_view_reads_total") - rt).max(0.0),
                "misses": rt,
            }));
        }
        let breakers: BTreeMap<String, f64> = by_cache("larder_cache_breaker_open");
        serde_json::json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "layers": layers,
            "latency_ms": self.latency(),
            "herd_merges": sum("larder_cache_single_flight_merged_total") + http.map_or(0, |h| h.merged) as f64,
            "stale_served": sum("larder_cache_stale_served_total") + http.map_or(0, |h| h.stale) as f64,
            "stale_sets_prevented": sum("larder_cache_stale_sets_prevented_total"),
            "breakers": breakers.into_iter().map(|(k, v)| (k, if v > 0.0 { "open" } else { "closed" })).collect::<BTreeMap<_, _>>(),
            "views": views.map(|v| serde_json::json!({
                "backlog": v.backlog,
                "lag_ms": v.lag_ms.unwrap_or(0),
                "dead_letters": v.dead_letters,
                "documents": v.documents,
                "written": sum("larder_views_documents_written_total"),
            })),
            "http": http,
        })
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (what our recorder
/// renders: no timestamps, escaped quotes in label values).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or(rest);
                (name.to_owned(), parse_labels(body))
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_parses_with_labels_and_escapes() {
        let text = "# TYPE larder_cache_hits_total counter\n\
                    larder_cache_hits_total{cache=\"query\"} 12\n\
                    larder_cache_stale_served_total{cache=\"a\\\"b\",reason=\"lease_held\"} 3\n\
                    larder_request_seconds_sum 0.5\n";
        let s = parse_prometheus(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "larder_cache_hits_total");
        assert_eq!(s[0].labels["cache"], "query");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].labels["cache"], "a\"b");
        assert_eq!(s[1].labels["reason"], "lease_held");
        assert!(s[2].labels.is_empty());
    }
}
