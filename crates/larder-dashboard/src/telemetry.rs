//! What the dashboard shows: every `larder_*` metric (a Prometheus
//! recorder installed once per process), request latencies over a sliding
//! window, and the figures of whoever serves the page (HTTP cache, views).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const WINDOW: Duration = Duration::from_secs(10);

/// How often the metrics recorder is drained when nobody scrapes it.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Metrics and latencies of this process.
pub(crate) struct Telemetry {
    prometheus: PrometheusHandle,
    latencies: Mutex<VecDeque<(Instant, f64)>>,
    requests: std::sync::atomic::AtomicU64,
    /// `larder_request_seconds`, looked up once: `histogram!` per request
    /// would search the recorder's registry every time.
    request_seconds: metrics::Histogram,
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
    pub(crate) fn global() -> Arc<Telemetry> {
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
                    // After the recorder is installed, so it is registered there.
                    request_seconds: metrics::histogram!("larder_request_seconds"),
                    started: Instant::now(),
                })
            })
            .clone()
    }

    /// Records one request's latency.
    pub(crate) fn record_latency(&self, d: Duration) {
        let now = Instant::now();
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.request_seconds.record(d.as_secs_f64());
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
    pub(crate) fn prometheus_text(&self) -> String {
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

    /// The dashboard's JSON: `http` is the HTTP cache's stats (as JSON) if
    /// this process has one, `views` its views status (as JSON).
    pub(crate) fn snapshot(
        &self,
        http: Option<&serde_json::Value>,
        views: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let num = |v: Option<&serde_json::Value>, field: &str| -> f64 {
            v.and_then(|v| v.get(field))
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        let field = |v: &serde_json::Value, name: &str| -> serde_json::Value {
            match v.get(name) {
                Some(x) if !x.is_null() => x.clone(),
                _ => 0.into(),
            }
        };
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
        if http.is_some() {
            layers.push(serde_json::json!({
                "name": "http",
                "hits": num(http, "hits") + num(http, "stale") + num(http, "revalidated"),
                "misses": num(http, "misses"),
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
                "hits": (sum("larder_views_reads_total") - rt).max(0.0),
                "misses": rt,
            }));
        }
        let breakers: BTreeMap<String, f64> = by_cache("larder_cache_breaker_open");
        serde_json::json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "layers": layers,
            "latency_ms": self.latency(),
            "herd_merges": sum("larder_cache_single_flight_merged_total") + num(http, "merged"),
            "stale_served": sum("larder_cache_stale_served_total") + num(http, "stale"),
            "stale_sets_prevented": sum("larder_cache_stale_sets_prevented_total"),
            "breakers": breakers.into_iter().map(|(k, v)| (k, if v > 0.0 { "open" } else { "closed" })).collect::<BTreeMap<_, _>>(),
            "views": views.map(|v| serde_json::json!({
                // Integers as the views status gave them.
                "backlog": field(v, "backlog"),
                "lag_ms": field(v, "lag_ms"),
                "dead_letters": field(v, "dead_letters"),
                "documents": v.get("documents").cloned().unwrap_or_default(),
                "written": sum("larder_views_documents_written_total"),
            })),
            "http": http,
        })
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
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
