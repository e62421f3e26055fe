//! The CLI's servers (demo, proxy) report request latency to their
//! [`Dashboard`]; the dashboard itself is larder-dashboard.

use std::time::Instant;

use larder_dashboard::Dashboard;

/// Middleware: records every request's latency except the dashboard's and
/// the metrics endpoints' own.
pub async fn measure(
    axum::extract::State(dashboard): axum::extract::State<Dashboard>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path();
    let own = path.starts_with("/_larder") || path == "/metrics";
    let start = Instant::now();
    let resp = next.run(req).await;
    if !own {
        dashboard.record_latency(start.elapsed());
    }
    resp
}
