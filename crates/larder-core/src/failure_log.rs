//! Logging a failure that repeats: once when it starts, a summary at most
//! every interval while it lasts, once when it ends. A dead server behind a
//! busy service must not write a log line per request.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a failure that goes on is summarised: every 10 s.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// One kind of failure (`what`, e.g. "cache read" or "upstream request"),
/// logged per state change. Cheap to call on every success: one atomic load
/// while nothing is failing.
///
/// ```
/// let log = larder_core::FailureLog::new("upstream request");
/// log.failure(&"connection refused"); // warn: upstream request failing
/// log.failure(&"connection refused"); // counted, not logged
/// log.success();                      // info: recovered after 2 failures
/// ```
#[derive(Debug)]
pub struct FailureLog {
    what: &'static str,
    interval: Duration,
    failing: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    since: Instant,
    last_summary: Instant,
    /// Failures since the last line written.
    unlogged: u64,
    /// Failures since it started.
    total: u64,
}

impl FailureLog {
    /// A log for failures of `what`, summarised every [`SUMMARY_INTERVAL`].
    pub fn new(what: &'static str) -> Self {
        Self::with_interval(what, SUMMARY_INTERVAL)
    }

    /// A log for failures of `what`, summarised every `interval`.
    pub fn with_interval(what: &'static str, interval: Duration) -> Self {
        let now = Instant::now();
        FailureLog {
            what,
            interval,
            failing: AtomicBool::new(false),
            state: Mutex::new(State {
                since: now,
                last_summary: now,
                unlogged: 0,
                total: 0,
            }),
        }
    }

    /// Records one failure; returns whether it wrote a log line.
    pub fn failure(&self, error: &dyn Display) -> bool {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !self.failing.swap(true, Ordering::AcqRel) {
            *st = State {
                since: now,
                last_summary: now,
                unlogged: 0,
                total: 1,
            };
            tracing::warn!(what = self.what, error = %error, "{} failing", self.what);
            return true;
        }
        st.total += 1;
        st.unlogged += 1;
        if now.duration_since(st.last_summary) < self.interval {
            return false;
        }
        tracing::warn!(
            what = self.what,
            failures = st.unlogged,
            for_s = now.duration_since(st.since).as_secs(),
            last_error = %error,
            "{} still failing: {} more failures",
            self.what,
            st.unlogged
        );
        st.unlogged = 0;
        st.last_summary = now;
        true
    }

    /// Records a success; logs the recovery if it was failing.
    pub fn success(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!(
                what = self.what,
                failures = st.total,
                after_s = st.since.elapsed().as_secs(),
                "{} recovered after {} failures",
                self.what,
                st.total
            );
        }
    }

    /// Whether the last thing recorded was a failure.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_failure_is_logged_once_per_state_change_and_per_interval() {
        let log = FailureLog::with_interval("test", Duration::from_millis(50));
        assert!(log.failure(&"down"));
        let written = (0..10_000).filter(|_| log.failure(&"down")).count();
        assert!(
            written <= 1,
            "{written} lines for 10,000 failures in a burst"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(log.failure(&"down"), "a summary after the interval");
        assert!(log.is_failing());
        log.success();
        assert!(!log.is_failing());
        assert!(log.failure(&"down again"), "a new outage is logged at once");
    }
}
