//! Serving HTTP/1.1 connections from hostile clients: every connection has
//! a deadline for whatever it is waiting for, the number of connections is
//! bounded, and at the bound the oldest connection that is not in the
//! middle of a request makes room (nginx's reusable connections) so idle
//! or slow sockets cannot lock legitimate clients out.
//!
//! What a connection waits for, and its deadline:
//! - the first byte of a request, after accept or after the previous
//!   response: `idle_timeout` (the first request: `header_timeout`);
//! - the rest of the request head, from its first byte: `header_timeout`;
//! - the client reading the response, while a write is blocked:
//!   `send_timeout`.
//!
//! The service runs with the client's connection in the task-local
//! [`CLIENT`] (no allocation per request, unlike request extensions): its
//! address, and where the origin's 1xx interim responses for it go
//! ([`super::interim`]); work it spawns elsewhere does not see it (so a
//! background revalidation never writes a 1xx to a client).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use larder::backend::MonotonicMs;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower::Service;

use super::interim::{InterimQueue, InterimSink};

tokio::task_local! {
    /// The client connection whose request is being served.
    pub static CLIENT: ClientConn;
}

/// The client connection a request came in on.
pub struct ClientConn {
    /// The client's address.
    pub addr: std::net::SocketAddr,
    version: http::Version,
    conn: Arc<ConnState>,
}

impl ClientConn {
    /// Where the origin's interim responses to this request go: `None`
    /// when its client may not get any (HTTP/1.0).
    pub fn interim(&self) -> Option<InterimSink<ConnInterim>> {
        InterimQueue::sink(ConnInterim(self.conn.clone()), self.version)
    }
}

/// A connection's interim-response queue, shared with the origin's
/// client connection while a request is in flight.
#[derive(Clone)]
pub struct ConnInterim(Arc<ConnState>);

impl std::ops::Deref for ConnInterim {
    type Target = InterimQueue;
    fn deref(&self) -> &InterimQueue {
        &self.0.interim
    }
}

/// Connection limits; see the module docs for what each bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    /// Largest request head (request line and headers), bytes; larger: 431.
    pub max_header_bytes: usize,
    /// Open client connections at most (further capped by the file
    /// descriptor limit, see [`effective_max_connections`]).
    pub max_connections: usize,
}

/// Raises the soft open-files limit to the hard one (as nginx's
/// `worker_rlimit_nofile` and Go's runtime do) and returns the number of
/// client connections that fit: half of what is left after a reserve, the
/// other half for upstream and cache connections.
pub fn effective_max_connections(wanted: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    let nofile = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
    let fit = nofile.saturating_sub(64) / 2;
    wanted.min(fit).max(1)
}

/// What one connection is doing, shared by its I/O, its requests and the
/// watchdog.
struct ConnState {
    // Never 0: 0 means "not set" in the fields below, and a connection
    // accepted in the server's first millisecond must still expire.
    origin: MonotonicMs,
    /// Requests whose response is not fully written yet.
    busy: AtomicU32,
    /// When the connection last became idle (accept, or a response done).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived (0: none yet).
    head_since: AtomicU64,
    /// When a write to the client started to block (0: not blocked).
    blocked_since: AtomicU64,
    served_any: AtomicBool,
    /// Asked to close to make room (so it is not asked twice).
    shedding: AtomicBool,
    shed: Notify,
    /// The origin's 1xx responses to the request in flight.
    interim: InterimQueue,
}

impl ConnState {
    fn new(origin: MonotonicMs) -> Self {
        ConnState {
            origin,
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(origin.now()),
            head_since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(0),
            served_any: AtomicBool::new(false),
            shedding: AtomicBool::new(false),
            shed: Notify::new(),
            interim: InterimQueue::default(),
        }
    }

    fn now(&self) -> u64 {
        self.origin.now()
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        let now = self.now();
        let over = |since: u64, limit: Duration| {
            since != 0 && now.saturating_sub(since) > limit.as_millis() as u64
        };
        if !self.is_idle() {
            let blocked = self.blocked_since.load(Ordering::Acquire);
            return over(blocked, limits.send_timeout).then_some("client not reading the response");
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != 0 {
            return over(head, limits.header_timeout).then_some("request head too slow");
        }
        let idle = if self.served_any.load(Ordering::Acquire) {
            limits.idle_timeout
        } else {
            limits.header_timeout
        };
        over(self.idle_since.load(Ordering::Acquire), idle).then_some("idle")
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        Busy(self.clone())
    }
}

/// Held by a response body until it is written (or dropped).
struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        let s = &self.0;
        s.served_any.store(true, Ordering::Release);
        s.idle_since.store(s.now(), Ordering::Release);
        s.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its connection counted as busy.
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when request bytes arrive and when writes block,
/// and writing the origin's interim responses between hyper's writes.
struct Watched {
    io: TcpStream,
    state: Arc<ConnState>,
    /// Interim-response bytes being written, and how many are.
    interim: Vec<u8>,
    interim_at: usize,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && self.state.is_idle() {
            let now = self.state.now();
            let _ =
                self.state
                    .head_since
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        }
        r
    }
}

impl Watched {
    /// Writes queued interim responses: finishes what was started, and
    /// starts more only when `may_start` (in `poll_flush`: hyper's buffer
    /// is empty) and the request they belong to is the connection's only
    /// unfinished one (see [`super::interim`] for why that is a message
    /// boundary).
    fn poll_interim(&mut self, cx: &mut Context<'_>, may_start: bool) -> Poll<io::Result<()>> {
        loop {
            if self.interim_at < self.interim.len() {
                let r = Pin::new(&mut self.io).poll_write(cx, &self.interim[self.interim_at..]);
                self.note_write(&r);
                match ready!(r)? {
                    0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    n => self.interim_at += n,
                }
                continue;
            }
            self.interim.clear();
            self.interim_at = 0;
            let may_take = may_start && self.state.busy.load(Ordering::Acquire) == 1;
            if !self.state.interim.next(&mut self.interim, may_take) {
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn note_write<T>(&self, r: &Poll<io::Result<T>>) {
        match r {
            Poll::Pending => {
                let now = self.state.now();
                let _ = self.state.blocked_since.compare_exchange(
                    0,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            Poll::Ready(_) => self.state.blocked_since.store(0, Ordering::Release),
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.interim.is_empty() {
            ready!(self.poll_interim(cx, false))?;
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(&r);
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !self.interim.is_empty() {
            ready!(self.poll_interim(cx, false))?;
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.interim.is_empty() || self.state.interim.is_pending() {
            ready!(self.poll_interim(cx, true))?;
        }
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.note_write(&r);
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The open connections, oldest first.
#[derive(Default)]
struct Registry {
    conns: Mutex<BTreeMap<u64, Arc<ConnState>>>,
}

impl Registry {
    /// Makes room for one more connection: `false` when every connection
    /// is busy with a request.
    fn make_room(&self, max: usize) -> bool {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() < max {
            return true;
        }
        // Shedding is asynchronous: ask enough that the count will fit.
        let candidate = conns
            .values()
            .find(|c| c.is_idle() && !c.shedding.load(Ordering::Acquire));
        match candidate {
            Some(c) => {
                c.shedding.store(true, Ordering::Release);
                c.shed.notify_one();
                metrics::counter!("larder_proxy_connections_shed_total").increment(1);
                true
            }
            None => false,
        }
    }
}

/// Counts of what the server did, for the status page.
#[derive(Default)]
pub struct ServerStats {
    pub open: AtomicU64,
    pub refused: AtomicU64,
    pub timed_out: AtomicU64,
    /// The workers, once [`serve_on_workers`] started them.
    workers: std::sync::OnceLock<Arc<[Peer]>>,
}

impl ServerStats {
    /// How many connections each worker serves now (empty before the
    /// workers start, and for a listener served in place).
    pub fn open_per_worker(&self) -> Vec<usize> {
        self.workers.get().map_or_else(Vec::new, |w| {
            w.iter().map(|p| p.open.load(Ordering::Acquire)).collect()
        })
    }
}

/// The service a connection's requests go to.
pub trait ConnService:
    Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> ConnService for S where
    S: Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Accepts the next connection; a failure (out of file descriptors,
/// mostly) is logged and waited out.
async fn accept(
    listener: &TcpListener,
    failures: &larder::backend::FailureLog,
) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => {
                failures.success();
                return x;
            }
            Err(e) => {
                // Wait for some descriptors to close.
                failures.failure(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection accepted and counted by one worker, handed to another
/// that serves fewer.
struct Accepted {
    stream: std::net::TcpStream,
    peer: std::net::SocketAddr,
    id: u64,
    state: Arc<ConnState>,
}

/// One worker thread as the others see it: where connections handed to
/// it go, and how many it serves now.
struct Peer {
    tx: tokio::sync::mpsc::UnboundedSender<Accepted>,
    open: AtomicUsize,
}

/// Serves `listener` on `workers` threads, each a current-thread runtime
/// with its own copy of the service (built by `make` on that thread, so
/// whatever it spawns, such as an upstream client's connections, lives
/// there), until `shutdown` completes; then lets open connections finish
/// for up to 5 s.
///
/// This is nginx's worker model: a connection's task, the upstream
/// connection its request goes out on and the timers of both stay on one
/// thread, so a request wakes no other thread (on two cores a cross-thread
/// wakeup per request cost about 30 µs at one connection). Every worker
/// accepts on the shared listener and serves what it accepts, unless it
/// already serves more than one connection above the least busy worker:
/// then it hands the connection over, so a burst of long-lived
/// connections taken by whichever thread woke first still spreads evenly.
pub async fn serve_on_workers<S, F>(
    listener: TcpListener,
    workers: usize,
    limits: Limits,
    make: F,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    F: Fn() -> S + Send + Clone + 'static,
    S: ConnService,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = ConnContext::new(limits, stats, stop_rx);
    let listener = listener.into_std()?;
    let n = workers.max(1);
    let mut inboxes = Vec::with_capacity(n);
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        inboxes.push(rx);
        peers.push(Peer {
            tx,
            open: AtomicUsize::new(0),
        });
    }
    let peers: Arc<[Peer]> = peers.into();
    let _ = ctx.stats.workers.set(peers.clone());
    for (i, inbox) in inboxes.into_iter().enumerate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = listener.try_clone()?;
        let (ctx, peers, make) = (ctx.clone(), peers.clone(), make.clone());
        std::thread::Builder::new()
            .name(format!("larder-proxy-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => worker(i, listener, inbox, ctx, peers, make()).await,
                        Err(e) => tracing::error!(error = %e, "a proxy worker cannot listen"),
                    }
                })
            })?;
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    ctx.drain().await;
    Ok(())
}

/// One worker: accepts, takes connections handed to it, serves them.
async fn worker<S>(
    me: usize,
    listener: TcpListener,
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    ctx: ConnContext,
    peers: Arc<[Peer]>,
    service: S,
) where
    S: ConnService,
{
    let accept_failures = larder::backend::FailureLog::new("proxy accept");
    let mut stop = ctx.stop.clone();
    let serve_here = |stream, peer, id, state| {
        peers[me].open.fetch_add(1, Ordering::AcqRel);
        let peers = peers.clone();
        ctx.spawn_conn(service.clone(), stream, peer, id, state, move || {
            peers[me].open.fetch_sub(1, Ordering::AcqRel);
        });
    };
    loop {
        tokio::select! {
            (stream, peer) = accept(&listener, &accept_failures) => {
                let Some((id, state)) = ctx.admit(&stream) else {
                    tokio::spawn(refuse(stream));
                    continue;
                };
                let mine = peers[me].open.load(Ordering::Acquire);
                let least = peers
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, p)| p.open.load(Ordering::Acquire))
                    .filter(|(_, p)| p.open.load(Ordering::Acquire) + 1 < mine);
                let Some((other, _)) = least else {
                    serve_here(stream, peer, id, state);
                    continue;
                };
                // Counted there before it arrives, so a burst spreads.
                peers[other].open.fetch_add(1, Ordering::AcqRel);
                let handed = stream.into_std().map(|stream| Accepted { stream, peer, id, state });
                match handed {
                    Ok(a) => {
                        if let Err(back) = peers[other].tx.send(a) {
                            // That worker is gone (it can only have
                            // panicked): serve it here after all.
                            peers[other].open.fetch_sub(1, Ordering::AcqRel);
                            let a = back.0;
                            match TcpStream::from_std(a.stream) {
                                Ok(s) => serve_here(s, a.peer, a.id, a.state),
                                Err(_) => ctx.forget(a.id),
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot hand a connection over");
                        peers[other].open.fetch_sub(1, Ordering::AcqRel);
                        ctx.forget(id);
                    }
                }
            }
            Some(a) = inbox.recv() => {
                // Counted here by the worker that handed it over.
                peers[me].open.fetch_sub(1, Ordering::AcqRel);
                match TcpStream::from_std(a.stream) {
                    Ok(stream) => serve_here(stream, a.peer, a.id, a.state),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot take over a connection");
                        ctx.forget(a.id);
                    }
                }
            }
            _ = stop.changed() => break,
        }
    }
    // Told to stop: the connections here were told to finish; serve them
    // until they have (the process waits at most 5 s for them).
    while peers[me].open.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What serving any connection needs, shared by every thread that
/// accepts or serves connections.
#[derive(Clone)]
struct ConnContext {
    registry: Arc<Registry>,
    stats: Arc<ServerStats>,
    limits: Limits,
    stop: watch::Receiver<bool>,
    builder: hyper::server::conn::http1::Builder,
    origin: MonotonicMs,
    next_id: Arc<AtomicU64>,
}

impl ConnContext {
    fn new(limits: Limits, stats: Arc<ServerStats>, stop: watch::Receiver<bool>) -> Self {
        // No hyper timer: the watchdog bounds every wait, and hyper's
        // header timer is re-armed for every request head. No
        // `max_headers` either: hyper's default (100) parses into an
        // inline array, a configured count into a heap allocation per
        // request (1.8% of a hit).
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .max_buf_size(limits.max_header_bytes.max(16 * 1024))
            .max_header_size(limits.max_header_bytes);
        ConnContext {
            registry: Arc::default(),
            stats,
            limits,
            stop,
            builder,
            origin: MonotonicMs::new(),
            next_id: Arc::default(),
        }
    }

    /// Counts a new connection: `None` when it must be refused (every
    /// connection is busy), else its id and state.
    fn admit(&self, stream: &TcpStream) -> Option<(u64, Arc<ConnState>)> {
        let _ = stream.set_nodelay(true);
        if !self.registry.make_room(self.limits.max_connections) {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let state = Arc::new(ConnState::new(self.origin));
        self.registry
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, state.clone());
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Some((id, state))
    }

    /// Waits up to 5 s for the open connections to finish.
    async fn drain(&self) {
        let until = Instant::now() + Duration::from_secs(5);
        while !self
            .registry
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The connection is gone: it no longer counts.
    fn forget(&self, id: u64) {
        self.registry
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Serves one connection in a task of the current runtime; `closed`
    /// runs when it is gone.
    fn spawn_conn<S>(
        &self,
        service: S,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        id: u64,
        state: Arc<ConnState>,
        closed: impl FnOnce() + Send + 'static,
    ) where
        S: ConnService,
    {
        let conn_state = state.clone();
        let hyper_svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = conn_state.begin();
            let mut svc = service.clone();
            let client = ClientConn {
                addr: peer,
                version: req.version(),
                conn: conn_state.clone(),
            };
            CLIENT.scope(client, async move {
                let res = match svc.call(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                // The origin's 1xx responses go out before this one.
                std::future::poll_fn(|cx| CLIENT.with(|c| c.conn.interim.poll_written(cx))).await;
                Ok::<_, Infallible>(res.map(|inner| TrackedBody { inner, _busy: busy }))
            })
        });
        let io = TokioIo::new(Watched {
            io: stream,
            state: state.clone(),
            interim: Vec::new(),
            interim_at: 0,
        });
        let conn = self.builder.serve_connection(io, hyper_svc);
        let ctx = self.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let mut stop = ctx.stop.clone();
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = conn.as_mut() => break,
                    _ = state.shed.notified() => {
                        if state.is_idle() { break }
                        // Busy after all: it finishes; others are asked next.
                        state.shedding.store(false, Ordering::Release);
                    }
                    _ = tick.tick() => {
                        if let Some(why) = state.expired(&ctx.limits) {
                            tracing::debug!(%peer, why, "closing connection");
                            ctx.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    _ = stop.changed(), if !stopping => {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            ctx.forget(id);
            closed();
        });
    }
}

/// Accepts connections on `listener` and serves each with `service` in
/// tasks of the current runtime until `shutdown` completes; then lets
/// open connections finish for up to 5 s. (The admin listener; traffic
/// goes through [`serve_on_workers`].)
pub async fn serve<S>(
    listener: TcpListener,
    limits: Limits,
    service: S,
    stats: Arc<ServerStats>,
    shutdown: impl Future<Output = ()>,
) where
    S: ConnService,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = ConnContext::new(limits, stats, stop_rx);
    let accept_failures = larder::backend::FailureLog::new("proxy accept");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            conn = accept(&listener, &accept_failures) => conn,
            _ = &mut shutdown => break,
        };
        match ctx.admit(&stream) {
            Some((id, state)) => ctx.spawn_conn(service.clone(), stream, peer, id, state, || {}),
            None => {
                tokio::spawn(refuse(stream));
            }
        }
    }
    let _ = stop_tx.send(true);
    ctx.drain().await;
}

/// Every connection is busy with a request: say so and close.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::AsyncWriteExt;
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
content-length: 36\r\nretry-after: 1\r\nconnection: close\r\n\r\nlarder proxy: too many connections\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ms: u64) -> Limits {
        let d = Duration::from_millis(ms);
        Limits {
            header_timeout: d,
            idle_timeout: d,
            send_timeout: d,
            max_header_bytes: 32 * 1024,
            max_connections: 8,
        }
    }

    #[test]
    fn a_connection_accepted_at_once_still_expires() {
        // Accepted in the server's first millisecond.
        let state = Arc::new(ConnState::new(MonotonicMs::new()));
        assert_eq!(state.expired(&limits(1_000)), None);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(state.expired(&limits(5)), Some("idle"));
    }

    #[test]
    fn a_busy_connection_expires_only_when_its_client_stops_reading() {
        let state = Arc::new(ConnState::new(MonotonicMs::new()));
        let busy = state.begin();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(state.expired(&limits(5)), None, "a request in progress");
        state.blocked_since.store(state.now(), Ordering::Release);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            state.expired(&limits(5)),
            Some("client not reading the response")
        );
        drop(busy);
        state.blocked_since.store(0, Ordering::Release);
        state.head_since.store(state.now(), Ordering::Release);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(state.expired(&limits(5)), Some("request head too slow"));
    }
}
