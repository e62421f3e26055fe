//! Single-flight: one computation per key per process. The flights of a
//! cache are a map from storage key to a watch channel that the leader
//! publishes its outcome on; followers wait on it (`compute.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// A cache's computations in progress in this process, by storage key.
pub(crate) type Flights = Mutex<HashMap<String, Arc<Flight>>>;

/// One computation shared by concurrent `get_or_compute` callers.
pub(crate) struct Flight {
    pub(crate) done: tokio::sync::watch::Sender<Option<Outcome>>,
}

#[derive(Clone)]
pub(crate) enum Outcome {
    /// The encoded value.
    Value(Bytes),
    /// The leader's loader failed: its error, shared with every waiter
    /// whose loader has the same error type (others get the message).
    Failed {
        message: String,
        error: Arc<dyn std::any::Any + Send + Sync>,
    },
    /// The leader was dropped before finishing: someone else must compute.
    Abandoned,
}

/// Publishes the leader's outcome and retires the flight, also when the
/// leader's future is dropped half way.
pub(crate) struct FlightGuard<'a> {
    pub(crate) flights: &'a Flights,
    pub(crate) key: String,
    pub(crate) flight: Arc<Flight>,
    pub(crate) published: bool,
}

impl FlightGuard<'_> {
    pub(crate) fn publish(&mut self, outcome: Outcome) {
        self.retire();
        let _ = self.flight.done.send(Some(outcome));
        self.published = true;
    }

    fn retire(&self) {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        if !self.published {
            self.retire();
            let _ = self.flight.done.send(Some(Outcome::Abandoned));
        }
    }
}
