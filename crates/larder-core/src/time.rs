//! The one wall-clock helper every larder crate uses.

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Now, in Unix microseconds (0 if the clock is before 1970): for
/// ordering events that can fall in one millisecond (a purge and the
/// request right after it).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// [`unix_ms`] as the `i64` SQL columns hold.
pub fn unix_ms_i64() -> i64 {
    i64::try_from(unix_ms()).unwrap_or(i64::MAX)
}

/// A monotonic millisecond clock counted from its creation, for deadlines
/// kept in atomics where 0 means "not set": [`now`](Self::now) is never 0,
/// so a deadline taken in the clock's first millisecond is still a
/// deadline. Copy it; every copy reads the same clock.
///
/// ```
/// let clock = larder_core::MonotonicMs::new();
/// assert!(clock.now() >= 1);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MonotonicMs {
    origin: std::time::Instant,
}

impl MonotonicMs {
    /// A clock starting now.
    pub fn new() -> Self {
        MonotonicMs {
            origin: std::time::Instant::now(),
        }
    }

    /// Milliseconds since the clock's creation, at least 1.
    pub fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

impl Default for MonotonicMs {
    fn default() -> Self {
        Self::new()
    }
}
