//! The per-cache circuit breaker: after repeated backend failures, skip the
//! backend for a cool-down instead of making every request wait for its
//! deadline, then let one probe through to see whether it is back.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::time::MonotonicMs;
use metrics::{Counter, Gauge};

/// When the circuit breaker opens and how long it stays open.
///
/// ```
/// use std::time::Duration;
/// use larder_core::BreakerConfig;
/// let b = BreakerConfig::default()
///     .failure_threshold(3)
///     .cool_down(Duration::from_millis(500));
/// assert_eq!(b.threshold(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    failure_threshold: u32,
    cool_down: Duration,
}

impl Default for BreakerConfig {
    /// Opens after 5 consecutive failures, for 2 seconds.
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            cool_down: Duration::from_secs(2),
        }
    }
}

impl BreakerConfig {
    /// Consecutive failures (errors or timeouts) that open the breaker.
    /// Zero turns the breaker off.
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }
    /// How long an open breaker skips the backend before one probe is let
    /// through.
    pub fn cool_down(mut self, d: Duration) -> Self {
        self.cool_down = d;
        self
    }
    /// A breaker that never opens.
    pub fn disabled() -> Self {
        Self::default().failure_threshold(0)
    }
    /// The failure threshold (0: disabled).
    pub fn threshold(&self) -> u32 {
        self.failure_threshold
    }
    /// The cool-down.
    pub fn cool_down_time(&self) -> Duration {
        self.cool_down
    }
}

/// What the breaker currently does with calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to the backend.
    Closed,
    /// Calls are refused with [`Error::CircuitOpen`](crate::Error::CircuitOpen)
    /// until the cool-down ends.
    Open,
    /// The cool-down ended: the next call probes the backend; its success
    /// closes the breaker, its failure opens it again.
    HalfOpen,
}

pub(crate) struct Breaker {
    config: BreakerConfig,
    clock: MonotonicMs,
    failures: AtomicU32,
    /// Milliseconds on `clock` until which the breaker is open; 0 = closed.
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    opened: Counter,
    rejected: Counter,
    open_gauge: Gauge,
}

/// Whether a call may go to the backend, and if so whether it is the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Yes,
    Probe,
    No,
}

impl Breaker {
    pub(crate) fn new(config: BreakerConfig, cache: &str) -> Self {
        let label = cache.to_owned();
        Breaker {
            config,
            clock: MonotonicMs::new(),
            failures: AtomicU32::new(0),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: metrics::counter!("larder_cache_breaker_opened_total", "cache" => label.clone()),
            rejected: metrics::counter!("larder_cache_breaker_rejected_total", "cache" => label.clone()),
            open_gauge: metrics::gauge!("larder_cache_breaker_open", "cache" => label),
        }
    }

    fn now_ms(&self) -> u64 {
        // Never 0, so that 0 keeps meaning "closed".
        self.clock.now()
    }

    pub(crate) fn state(&self) -> BreakerState {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            BreakerState::Closed
        } else if self.now_ms() < until {
            BreakerState::Open
        } else {
            BreakerState::HalfOpen
        }
    }

    /// The hot path when closed: one atomic load.
    pub(crate) fn admit(&self) -> Admit {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Admit::Yes;
        }
        if self.now_ms() >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Admit::Probe;
        }
        self.rejected.increment(1);
        Admit::No
    }

    pub(crate) fn success(&self, admit: Admit, cache: &str) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until_ms.load(Ordering::Acquire) != 0 {
            self.open_until_ms.store(0, Ordering::Release);
            self.open_gauge.set(0.0);
            tracing::warn!(cache, "cache backend answers again: circuit breaker closed");
        }
        if admit == Admit::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Records a backend failure (an error or a timeout, not a refusal).
    pub(crate) fn failure(&self, admit: Admit, cache: &str, error: &dyn std::fmt::Display) {
        let threshold = self.config.failure_threshold;
        if threshold == 0 {
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if admit == Admit::Probe || n >= threshold {
            let was_open = self.open_until_ms.load(Ordering::Acquire) != 0;
            let until = self.now_ms() + self.config.cool_down.as_millis() as u64;
            self.open_until_ms.store(until, Ordering::Release);
            if admit == Admit::Probe {
                self.probing.store(false, Ordering::Release);
            }
            if !was_open {
                self.opened.increment(1);
                self.open_gauge.set(1.0);
                tracing::warn!(
                    cache,
                    failures = n,
                    cool_down = ?self.config.cool_down,
                    %error,
                    "cache backend failing: circuit breaker opened"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cool_down() {
        let b = Breaker::new(
            BreakerConfig::default()
                .failure_threshold(2)
                .cool_down(Duration::from_millis(30)),
            "t",
        );
        assert_eq!(b.admit(), Admit::Yes);
        b.failure(Admit::Yes, "t", &"boom");
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(Admit::Yes, "t", &"boom");
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admit::No);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // One probe at a time.
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::No);
        // A failed probe opens it again at once.
        b.failure(Admit::Probe, "t", &"still down");
        assert_eq!(b.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.admit(), Admit::Probe);
        b.success(Admit::Probe, "t");
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admit::Yes);
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(BreakerConfig::default().failure_threshold(2), "t");
        b.failure(Admit::Yes, "t", &"x");
        b.success(Admit::Yes, "t");
        b.failure(Admit::Yes, "t", &"x");
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn disabled_never_opens() {
        let b = Breaker::new(BreakerConfig::disabled(), "t");
        for _ in 0..100 {
            b.failure(Admit::Yes, "t", &"x");
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
