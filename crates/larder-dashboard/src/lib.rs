//! # larder-dashboard
//!
//! The operator's view of larder inside your own application: the live
//! HTML dashboard (hit ratios per layer, latency, herd merges, stale
//! serving, breakers, the views' backlog and lag), its JSON
//! (`stats.json`, also what `larder stats --server` reads) and every
//! `larder_*` metric as Prometheus text, as one tower service to mount
//! under a path of your choice **behind your own authentication**. `larder
//! demo` and `larder proxy` serve theirs with it.
//!
//! ```no_run
//! # fn app(http: larder_http::HttpCache) {
//! use axum::Router;
//! use larder_dashboard::Dashboard;
//!
//! // Before building caches: their counters register with the recorder
//! // this installs.
//! let dashboard = Dashboard::new().http_cache(&http);
//! let app: Router = Router::new()
//!     // …your routes…
//!     .nest_service("/_larder", dashboard.service()); // add your auth layer
//! # }
//! ```
//!
//! Under the mount point the service answers `GET /` (the page),
//! `GET /stats.json` and `GET /metrics`; anything else is a `404`, and
//! every answer is `Cache-Control: no-store`.
//!
//! Pitfalls:
//!
//! - Metrics come from the process's global `metrics` recorder. The first
//!   [`Dashboard::new`] installs a Prometheus recorder; if your
//!   application installed another one first, the dashboard's figures
//!   that come from metrics stay at zero (the HTTP cache's and the views'
//!   own figures still show). Export with your recorder then, and use the
//!   page for the rest.
//! - Request latency is what [`Dashboard::latency_layer`] measures around
//!   the routes you wrap with it (or what you report yourself with
//!   [`Dashboard::record_latency`]). Wrap your routes, not the dashboard:
//!   its own polling would count.

#![warn(missing_docs)]

mod latency;
mod service;
mod telemetry;

use std::sync::Arc;
use std::time::Duration;

pub use latency::{Latency, LatencyFuture, LatencyLayer};
pub use service::DashboardService;
pub use telemetry::{parse_prometheus, Sample};

use telemetry::Telemetry;

/// The page, self-contained (no external scripts): it polls `stats.json`
/// next to where it is served.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// A custom section of `stats.json`.
type Section = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// What the dashboard shows, and the service that serves it (cheap to
/// clone).
#[derive(Clone)]
pub struct Dashboard {
    telemetry: Arc<Telemetry>,
    #[cfg(feature = "http")]
    http: Option<larder_http::HttpCache>,
    #[cfg(feature = "views")]
    views: Option<larder_views::Views>,
    sections: Vec<(String, Section)>,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field(
                "sections",
                &self.sections.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Default for Dashboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Dashboard {
    /// A dashboard of this process's `larder_*` metrics. The first call
    /// installs the Prometheus recorder (see the pitfalls above), so call
    /// it before building caches.
    pub fn new() -> Self {
        Dashboard {
            telemetry: Telemetry::global(),
            #[cfg(feature = "http")]
            http: None,
            #[cfg(feature = "views")]
            views: None,
            sections: Vec::new(),
        }
    }

    /// Shows this HTTP cache as the `http` layer, with its counters.
    #[cfg(feature = "http")]
    pub fn http_cache(mut self, http: &larder_http::HttpCache) -> Self {
        self.http = Some(http.clone());
        self
    }

    /// Shows these views' outbox: backlog, lag, dead letters, documents.
    #[cfg(feature = "views")]
    pub fn views(mut self, views: &larder_views::Views) -> Self {
        self.views = Some(views.clone());
        self
    }

    /// Adds `name` to `stats.json`, computed by `f` at each request
    /// (a query cache's `stats()`, your own figures).
    pub fn section(
        mut self,
        name: &str,
        f: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> Self {
        self.sections.push((name.to_owned(), Arc::new(f)));
        self
    }

    /// Records one request's latency (shown as p50/p99 over the last 10 s,
    /// and exported as `larder_request_seconds`).
    pub fn record_latency(&self, d: Duration) {
        self.telemetry.record_latency(d);
    }

    /// A tower layer that records the latency of every request through
    /// the services it wraps ([`record_latency`](Self::record_latency)
    /// done for you).
    ///
    /// ```no_run
    /// # fn app(dashboard: larder_dashboard::Dashboard) {
    /// use axum::{routing::get, Router};
    ///
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .layer(dashboard.latency_layer()) // the routes above only
    ///     .nest_service("/_larder", dashboard.service());
    /// # }
    /// ```
    pub fn latency_layer(&self) -> LatencyLayer {
        LatencyLayer::new(self.telemetry.clone())
    }

    /// What `stats.json` answers now.
    pub async fn snapshot(&self) -> serde_json::Value {
        #[cfg(feature = "http")]
        let http = self
            .http
            .as_ref()
            .and_then(|h| serde_json::to_value(h.stats()).ok());
        #[cfg(not(feature = "http"))]
        let http: Option<serde_json::Value> = None;
        #[cfg(feature = "views")]
        let views = self
            .views_status()
            .await
            .and_then(|s| serde_json::to_value(s).ok());
        #[cfg(not(feature = "views"))]
        let views: Option<serde_json::Value> = None;
        let mut snap = self.telemetry.snapshot(http.as_ref(), views.as_ref());
        for (name, f) in &self.sections {
            snap[name.as_str()] = f();
        }
        snap
    }

    /// Every metric as Prometheus text, with the HTTP cache's counters
    /// (`larder_http_*_total`) and the views' gauges
    /// (`larder_views_backlog`, `_lag_ms`, `_dead_letters`) read now.
    pub async fn prometheus_text(&self) -> String {
        #[cfg(feature = "views")]
        if let Some(s) = self.views_status().await {
            metrics::gauge!("larder_views_backlog").set(s.backlog as f64);
            metrics::gauge!("larder_views_lag_ms").set(s.lag_ms.unwrap_or(0) as f64);
            metrics::gauge!("larder_views_dead_letters").set(s.dead_letters as f64);
        }
        #[allow(unused_mut)]
        let mut text = self.telemetry.prometheus_text();
        #[cfg(feature = "http")]
        if let Some(h) = &self.http {
            let h = h.stats();
            for (name, v) in [
                ("hits", h.hits),
                ("misses", h.misses),
                ("stale", h.stale),
                ("revalidated", h.revalidated),
                ("bypassed", h.bypassed),
                ("stored", h.stored),
                ("merged", h.merged),
            ] {
                text += &format!(
                    "# TYPE larder_http_{name}_total counter\nlarder_http_{name}_total {v}\n"
                );
            }
        }
        text
    }

    #[cfg(feature = "views")]
    async fn views_status(&self) -> Option<larder_views::Status> {
        let views = self.views.as_ref()?;
        match views.status().await {
            Ok(s) => Some(s),
            Err(e) => {
                // The page shows the views as absent rather than failing.
                tracing::warn!(error = %e, "larder dashboard: views status failed");
                None
            }
        }
    }

    /// The tower service answering `/`, `/stats.json` and `/metrics` under
    /// wherever it is mounted.
    pub fn service(&self) -> DashboardService {
        DashboardService::new(self.clone())
    }
}
