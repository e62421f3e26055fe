//! [`LatencyLayer`]: a tower middleware that reports each request's
//! latency to a [`Dashboard`] (p50/p99 on the page, `larder_request_seconds`
//! in Prometheus text). Layer, service and future apart, as tower does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower_layer::Layer;
use tower_service::Service;

use crate::telemetry::Telemetry;
#[cfg(doc)]
use crate::Dashboard;

/// Wraps a service so that every request it answers is recorded with
/// [`Dashboard::record_latency`]: the time from the call until the
/// response head is ready (streaming bodies are not waited for), errors
/// included. Made by [`Dashboard::latency_layer`].
///
/// Wrap only the routes you want measured: put the layer on your
/// application's routes before nesting the dashboard, so its own polling
/// does not count.
#[derive(Clone, Debug)]
pub struct LatencyLayer {
    // The telemetry alone, not the whole dashboard: a request clones it,
    // and the dashboard's sections are a list of named closures.
    telemetry: Arc<Telemetry>,
}

impl LatencyLayer {
    pub(crate) fn new(telemetry: Arc<Telemetry>) -> Self {
        LatencyLayer { telemetry }
    }
}

impl<S> Layer<S> for LatencyLayer {
    type Service = Latency<S>;

    fn layer(&self, inner: S) -> Latency<S> {
        Latency {
            inner,
            telemetry: self.telemetry.clone(),
        }
    }
}

/// The service made by [`LatencyLayer`].
#[derive(Clone, Debug)]
pub struct Latency<S> {
    inner: S,
    telemetry: Arc<Telemetry>,
}

impl<S, R> Service<R> for Latency<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = LatencyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        LatencyFuture {
            inner: self.inner.call(req),
            started: Instant::now(),
            telemetry: Some(self.telemetry.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Latency`].
    pub struct LatencyFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        // Taken when the latency is recorded, so a future polled after
        // completion records nothing twice.
        telemetry: Option<Arc<Telemetry>>,
    }
}

impl<F: Future> Future for LatencyFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let Some(t) = this.telemetry.take() {
            t.record_latency(this.started.elapsed());
        }
        Poll::Ready(out)
    }
}
