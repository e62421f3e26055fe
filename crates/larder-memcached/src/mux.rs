//! One connection to a memcached server shared by every caller: requests
//! from concurrent callers are written back to back (one `write` for all
//! that are waiting), and responses are matched to them in order.
//!
//! memcached answers the requests of a connection in the order it read
//! them, so a first-in first-out queue of the requests in flight is enough
//! to route every response; a request knows how many responses it expects
//! ([`Until`]). This is what redis-rs's multiplexed connection does for
//! Redis, and what makes 64 callers cost a few syscalls instead of 64 round
//! trips on 64 pooled connections.
//!
//! The connection is driven by two tasks: a writer (owns the write half and
//! the request channel) and a reader (owns the read half). They are apart so
//! that a large request being written never stops the responses already due
//! from being read: with one task, a pipeline bigger than both socket
//! buffers would deadlock.
//!
//! Failure: any I/O or protocol error, or the oldest request in flight
//! unanswered `stall` after it was written, ends the connection. Every request in flight gets
//! the error; the next request opens a new connection. A caller that gives
//! up (its deadline) does not disturb the stream: its response is read and
//! dropped when it comes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::conn::{ConnError, Until};
use crate::proto::{self, Response};

/// Requests queued for the writer before callers wait for room.
const QUEUE: usize = 1024;
/// Requests in flight at most; past it new requests fail at once (bounded
/// memory whatever the server does; at the deadline bound this is far above
/// any real rate on one connection).
const MAX_IN_FLIGHT: usize = 65_536;
/// The writer sends at most this many bytes of queued requests per write.
const BATCH_BYTES: usize = 64 * 1024;

type Reply = oneshot::Sender<Result<Vec<Response>, ConnError>>;

struct Job {
    request: Vec<u8>,
    until: Until,
    reply: Reply,
}

struct InFlight {
    until: Until,
    /// When it was handed to the socket (for the stall bound).
    sent_at: Instant,
    got: Vec<Response>,
    reply: Reply,
}

/// What the writer and the reader share.
struct Shared {
    /// Requests written (or being written), oldest first.
    in_flight: VecDeque<InFlight>,
    /// Why the connection ended, once it has.
    ended: Option<(std::io::ErrorKind, String)>,
    /// Every handle is gone: the reader ends once nothing is in flight.
    writer_done: bool,
}

fn to_error(kind: std::io::ErrorKind, msg: &str) -> ConnError {
    ConnError::Io(std::io::Error::new(kind, msg.to_owned()))
}

/// Answers each of `jobs` with the same error.
fn fail(jobs: impl IntoIterator<Item = Job>, kind: std::io::ErrorKind, msg: &str) {
    for job in jobs {
        let _ = job.reply.send(Err(to_error(kind, msg)));
    }
}

/// Closes the queue and fails what is in it: later senders see it closed.
fn fail_queued(rx: &mut mpsc::Receiver<Job>, kind: std::io::ErrorKind, msg: &str) {
    rx.close();
    fail(std::iter::from_fn(|| rx.try_recv().ok()), kind, msg);
}

impl Shared {
    /// Ends the connection: every request in flight fails with `why`.
    fn end(&mut self, why: &ConnError) {
        let (kind, msg) = match why {
            ConnError::Io(e) => (e.kind(), e.to_string()),
            other => (std::io::ErrorKind::InvalidData, other.to_string()),
        };
        for f in self.in_flight.drain(..) {
            let _ = f.reply.send(Err(to_error(kind, &msg)));
        }
        self.ended.get_or_insert((kind, msg));
    }
}

/// A handle on a multiplexed connection; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Mutex<Shared>>,
}

impl Mux {
    /// Starts the connection's tasks; connecting happens in the writer, so
    /// requests sent meanwhile wait in the queue. Must be called inside a
    /// tokio runtime.
    pub fn start(addr: String, max_value: usize, stall: Duration) -> Mux {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Mutex::new(Shared {
            in_flight: VecDeque::new(),
            ended: None,
            writer_done: false,
        }));
        tokio::spawn(drive(addr, rx, shared.clone(), max_value, stall));
        Mux { jobs, shared }
    }

    /// Whether the connection has ended (a new one is needed).
    pub fn is_ended(&self) -> bool {
        self.jobs.is_closed() || lock(&self.shared).ended.is_some()
    }

    /// Sends one request and waits for its responses. The caller bounds the
    /// wait (its deadline covers the queue as well).
    pub async fn exchange(
        &self,
        request: Vec<u8>,
        until: Until,
    ) -> Result<Vec<Response>, ConnError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            until,
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return Err(self.ended_error());
        }
        match answer.await {
            Ok(r) => r,
            Err(_) => Err(self.ended_error()),
        }
    }

    fn ended_error(&self) -> ConnError {
        match &lock(&self.shared).ended {
            Some((kind, msg)) => to_error(*kind, msg),
            None => to_error(
                std::io::ErrorKind::BrokenPipe,
                "memcached connection closed",
            ),
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

async fn drive(
    addr: String,
    mut rx: mpsc::Receiver<Job>,
    shared: Arc<Mutex<Shared>>,
    max_value: usize,
    stall: Duration,
) {
    let connected = match tokio::time::timeout(stall, TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s.set_nodelay(true).map(|()| s),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {addr} took over {stall:?}"),
        )),
    };
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            fail_queued(&mut rx, e.kind(), &e.to_string());
            lock(&shared).end(&ConnError::Io(e));
            return;
        }
    };
    let (read, write) = stream.into_split();
    let reader = tokio::spawn(read_responses(read, shared.clone(), max_value, stall));
    write_requests(write, &mut rx, &shared).await;
    // The writer stops when every handle is gone or the connection ended.
    // Either way nothing new can be queued; what is in flight is still
    // answered (the reader ends on EOF, a stall, or once it is empty).
    fail_queued(
        &mut rx,
        std::io::ErrorKind::BrokenPipe,
        "memcached connection closed",
    );
    let idle = {
        let mut s = lock(&shared);
        s.writer_done = true;
        s.ended.is_some() || s.in_flight.is_empty()
    };
    if idle {
        reader.abort();
    }
}

async fn write_requests(
    mut write: OwnedWriteHalf,
    rx: &mut mpsc::Receiver<Job>,
    shared: &Mutex<Shared>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut batch = vec![first];
        buf.extend_from_slice(&batch[0].request);
        // Everything already queued goes out in the same write.
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(job) => {
                    buf.extend_from_slice(&job.request);
                    batch.push(job);
                }
                Err(_) => break,
            }
        }
        {
            // In flight before written, so the reader finds every response's
            // request however fast the server answers.
            let mut s = lock(shared);
            if let Some((kind, msg)) = &s.ended {
                fail(batch, *kind, msg);
                return;
            }
            if s.in_flight.len() + batch.len() > MAX_IN_FLIGHT {
                fail(
                    batch,
                    std::io::ErrorKind::WouldBlock,
                    "too many memcached requests in flight on one connection",
                );
                continue;
            }
            let sent_at = Instant::now();
            for job in batch {
                s.in_flight.push_back(InFlight {
                    until: job.until,
                    sent_at,
                    got: Vec::new(),
                    reply: job.reply,
                });
            }
        }
        if let Err(e) = write.write_all(&buf).await {
            lock(shared).end(&ConnError::Io(e));
            return;
        }
    }
}

async fn read_responses(
    mut read: OwnedReadHalf,
    shared: Arc<Mutex<Shared>>,
    max_value: usize,
    stall: Duration,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let failure = loop {
        // Route every complete response in the buffer.
        let mut parse_error = None;
        loop {
            match proto::parse(&buf, max_value) {
                Ok(Some((response, used))) => {
                    let _ = buf.split_to(used);
                    let mut s = lock(&shared);
                    let Some(front) = s.in_flight.front_mut() else {
                        parse_error = Some(ConnError::Proto(proto::ProtoError::Garbage(
                            "a response to no request".into(),
                        )));
                        break;
                    };
                    let done = match front.until {
                        Until::Count(n) => front.got.len() + 1 >= n,
                        Until::Mn => matches!(response, Response::Mn),
                    };
                    front.got.push(response);
                    if done {
                        if let Some(f) = s.in_flight.pop_front() {
                            let _ = f.reply.send(Ok(f.got));
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    parse_error = Some(ConnError::Proto(e));
                    break;
                }
            }
        }
        if let Some(e) = parse_error {
            break e;
        }
        {
            let s = lock(&shared);
            if s.writer_done && s.in_flight.is_empty() {
                return;
            }
        }
        // A stall is the oldest request in flight unanswered `stall` after
        // it was written, whatever bytes came meanwhile: a server that
        // trickles a byte now and then must not keep a connection whose
        // queue of abandoned requests grows without end. Waiting on nothing
        // is not a stall (an idle connection may sit), nor is a request
        // written just before an idle wait ran out: each wait is cut to the
        // time the oldest request has left.
        let wait = {
            let s = lock(&shared);
            match s.in_flight.front() {
                Some(f) => stall.saturating_sub(f.sent_at.elapsed()),
                None => stall,
            }
        };
        let n = match tokio::time::timeout(wait, read.read_buf(&mut buf)).await {
            Ok(r) => r,
            Err(_) => {
                let s = lock(&shared);
                match s.in_flight.front() {
                    None if s.writer_done => return,
                    Some(f) if f.sent_at.elapsed() >= stall => break ConnError::Timeout(stall),
                    _ => continue,
                }
            }
        };
        match n {
            Ok(0) => {
                break ConnError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "memcached closed the connection",
                ))
            }
            Ok(_) => {}
            Err(e) => break ConnError::Io(e),
        }
    };
    lock(&shared).end(&failure);
}
