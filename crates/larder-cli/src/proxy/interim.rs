//! 1xx interim responses (103 Early Hints, 102 Processing) forwarded from
//! the origin to the client, as RFC 9110 §15.2 asks of a proxy.
//!
//! hyper's server cannot send a 1xx response, so the proxy writes them
//! itself, onto the client's socket ([`super::server`]'s `Watched`),
//! between hyper's writes. The bytes must land between two complete
//! messages, before the final response of the request they belong to:
//!
//! - The origin's client connection hands each interim response to
//!   [`InterimQueue::forward`] while the request is in flight; it is
//!   rendered and queued, and the client connection's task is woken.
//! - The socket starts writing queued bytes only in `poll_flush`, which
//!   hyper calls only once its own buffer is empty, and only while the
//!   request in flight is the connection's only unfinished one (`busy ==
//!   1`): a previous response's body is dropped by hyper only after its
//!   last bytes are in hyper's buffer, so with that buffer empty they are
//!   on the wire. (hyper 1.x does not read a pipelined request before the
//!   previous response is written; the check keeps the boundary if it
//!   ever does.)
//! - The final response waits ([`InterimQueue::poll_written`]) until the
//!   queued bytes are written, so hyper cannot encode its head before
//!   them; a write hyper makes while interim bytes are half written (a
//!   `100 Continue` of its own) waits for them to finish.
//!
//! Not forwarded: to HTTP/1.0 clients (RFC 9110 §15.2 forbids it), `100
//! Continue` (hyper answers the client's `Expect` itself) and `101`
//! (upgrades are not proxied); more than [`MAX_INTERIM`] responses or
//! [`MAX_INTERIM_BYTES`] for one request (an origin flooding 1xx must not
//! grow memory).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use http::{HeaderMap, StatusCode, Version};

/// Interim responses forwarded for one request, at most.
pub const MAX_INTERIM: u32 = 8;
/// Bytes of interim responses queued for one request, at most.
pub const MAX_INTERIM_BYTES: usize = 16 * 1024;

/// The interim responses of a connection's request in flight.
#[derive(Default)]
pub struct InterimQueue {
    /// The request in flight that has a sink, until its final response
    /// is let go (0: none; a cached hit never makes one, so its response
    /// waits for nothing). A 1xx for any other request (one that timed
    /// out, whose origin connection lives on) is dropped: it could
    /// otherwise land in the middle of a later response.
    current: AtomicU64,
    generations: AtomicU64,
    /// Something is queued or being written (the final response waits).
    pending: AtomicBool,
    /// Interim responses taken for the request in flight.
    count: AtomicU32,
    queued: Mutex<Queued>,
    /// The client connection's task, to write a 1xx as soon as it comes.
    connection: AtomicWaker,
}

#[derive(Default)]
struct Queued {
    bytes: Vec<u8>,
    /// The final response, waiting for the queue to be written.
    response: Option<Waker>,
}

/// Where the origin's interim responses for one request go.
#[derive(Clone)]
pub struct InterimSink<Q> {
    conn: Q,
    generation: u64,
}

impl InterimQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sink for the connection's request in flight, which came as
    /// `version`: none when its client may not get 1xx responses
    /// (HTTP/1.0). `conn` is how the sink reaches this queue (an `Arc`).
    /// Called from the request's own task, before its response.
    pub fn sink<Q: std::ops::Deref<Target = Self>>(
        conn: Q,
        version: Version,
    ) -> Option<InterimSink<Q>> {
        if version != Version::HTTP_11 {
            return None;
        }
        let generation = conn.generations.fetch_add(1, Ordering::Relaxed) + 1;
        conn.count.store(0, Ordering::Relaxed);
        conn.current.store(generation, Ordering::Release);
        Some(InterimSink { conn, generation })
    }

    /// Whether bytes are queued or being written.
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// The writer finished what it took (`buf` is empty): takes what was
    /// queued since into `buf` when `may_take`, and returns whether it
    /// did. With nothing left, the final response may go.
    pub fn next(&self, buf: &mut Vec<u8>, may_take: bool) -> bool {
        let mut q = self.lock();
        if q.bytes.is_empty() {
            self.pending.store(false, Ordering::Release);
            if let Some(w) = q.response.take() {
                w.wake();
            }
            return false;
        }
        if may_take {
            std::mem::swap(buf, &mut q.bytes);
            return true;
        }
        false
    }

    /// Ready once every queued interim response is written: the final
    /// response of the request waits for this, and from then on no 1xx is
    /// taken for the request.
    pub fn poll_written(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Only this request's task makes a sink and only this clears
        // `current`, so 0 here means no 1xx can be taken for it.
        if self.current.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        let mut q = self.lock();
        if self.pending.load(Ordering::Acquire) {
            q.response = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.current.store(0, Ordering::Release);
        Poll::Ready(())
    }
}

impl<Q: std::ops::Deref<Target = InterimQueue>> InterimSink<Q> {
    /// The task that writes to the client: woken when a 1xx is queued.
    pub fn register(&self, waker: &Waker) {
        self.conn.connection.register(waker);
    }

    /// Queues an interim response from the origin for the client, when it
    /// is one to forward (see the module docs).
    pub fn forward(&self, status: StatusCode, headers: &HeaderMap) {
        let code = status.as_u16();
        if !(102..200).contains(&code) {
            return;
        }
        let mut headers = headers.clone();
        larder_http::headers::strip_hop_by_hop(&mut headers);
        let mut out = format!(
            "HTTP/1.1 {code} {}\r\n",
            status.canonical_reason().unwrap_or("Informational")
        )
        .into_bytes();
        for (name, value) in &headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let queue = &*self.conn;
        {
            let mut q = queue.lock();
            if queue.current.load(Ordering::Acquire) != self.generation {
                tracing::debug!(
                    code,
                    "interim response for a request already answered: dropped"
                );
                return;
            }
            if queue.count.load(Ordering::Relaxed) >= MAX_INTERIM
                || q.bytes.len() + out.len() > MAX_INTERIM_BYTES
            {
                tracing::debug!(
                    code,
                    "interim response not forwarded: over the per-request limit"
                );
                return;
            }
            queue.count.fetch_add(1, Ordering::Relaxed);
            q.bytes.extend_from_slice(&out);
            queue.pending.store(true, Ordering::Release);
        }
        queue.connection.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn early_hints() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            "</style.css>; rel=preload; as=style".parse().unwrap(),
        );
        h.insert("connection", "x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    fn sink(q: &InterimQueue) -> InterimSink<&InterimQueue> {
        InterimQueue::sink(q, Version::HTTP_11).unwrap()
    }

    #[test]
    fn renders_1xx_without_hop_by_hop_fields() {
        let q = InterimQueue::default();
        sink(&q).forward(status(103), &early_hints());
        let mut buf = Vec::new();
        assert!(q.next(&mut buf, true));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\n"
        );
    }

    #[test]
    fn forwards_only_what_the_client_may_get() {
        let q = InterimQueue::default();
        assert!(
            InterimQueue::sink(&q, Version::HTTP_10).is_none(),
            "no 1xx to an HTTP/1.0 client"
        );
        let first = sink(&q);
        for code in [100, 101, 200, 304] {
            first.forward(status(code), &HeaderMap::new());
            assert!(!q.is_pending(), "{code} is not forwarded");
        }
        // A flood: bounded per request.
        for _ in 0..100 {
            first.forward(status(103), &early_hints());
        }
        let mut buf = Vec::new();
        assert!(q.next(&mut buf, true));
        assert_eq!(
            buf.windows(12).filter(|w| w == b"HTTP/1.1 103").count(),
            MAX_INTERIM as usize
        );
        buf.clear();
        assert!(!q.next(&mut buf, true));
        assert!(!q.is_pending());
        // The response goes: a late 1xx of that request is dropped, also
        // while the next request is in flight.
        let waker = futures_util::task::noop_waker();
        assert!(q.poll_written(&mut Context::from_waker(&waker)).is_ready());
        first.forward(status(103), &HeaderMap::new());
        assert!(!q.is_pending(), "a 1xx after the final response was taken");
        let next = sink(&q);
        first.forward(status(103), &HeaderMap::new());
        assert!(!q.is_pending(), "the previous request's sink was heard");
        next.forward(status(102), &HeaderMap::new());
        assert!(q.is_pending());
    }

    #[test]
    fn the_final_response_waits_for_queued_bytes() {
        let q = InterimQueue::default();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            q.poll_written(&mut cx).is_ready(),
            "no sink: nothing to wait for"
        );
        let s = sink(&q);
        assert!(
            q.poll_written(&mut cx).is_ready(),
            "no 1xx: nothing to wait for"
        );
        let s2 = sink(&q);
        s.forward(status(103), &HeaderMap::new());
        assert!(!q.is_pending(), "a superseded sink was heard");
        s2.forward(status(103), &HeaderMap::new());
        assert!(q.poll_written(&mut cx).is_pending());
        let mut buf = Vec::new();
        // Not allowed to start (another response is being written).
        assert!(!q.next(&mut buf, false));
        assert!(q.poll_written(&mut cx).is_pending());
        assert!(q.next(&mut buf, true));
        assert!(
            q.poll_written(&mut cx).is_pending(),
            "taken, not yet written"
        );
        buf.clear();
        assert!(!q.next(&mut buf, true));
        assert!(q.poll_written(&mut cx).is_ready());
        // The response has gone: nothing more for this request.
        s2.forward(status(103), &HeaderMap::new());
        assert!(!q.is_pending());
    }
}
