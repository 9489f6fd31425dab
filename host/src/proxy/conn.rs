//! One client connection: protocol detection (HTTP/1.1 or h2c prior
//! knowledge), request-head and keep-alive timeouts, graceful shutdown.
//!
//! hyper's own `header_read_timeout` also fires on idle keep-alive
//! connections and closes without a response, so the timeouts live in
//! [`TimedIo`]: it knows whether the connection is idle, mid-head or busy,
//! closes idle connections silently after `keep_alive`, and answers 408 when a
//! started request head is not complete within `http_request` (HAProxy's
//! `timeout http-request` / `timeout http-keep-alive`).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::worker::{FrontendRef, ShutdownSignal, Worker};
use crate::config::Timeouts;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/1 connection idle this long gives its buffers back: hyper's
/// connection (read and write buffers, about 16 KiB) is dropped and the
/// socket waits for readability on its own, costing only its task.
/// Short enough that idle keep-alive clients cost little; long enough that a
/// client sending its next request at once never pays for a rebuild.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// After shutdown begins, an idle HTTP/1 connection stays open this long for
/// a request already on its way (answered with `Connection: close`).
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// Lingering close (HAProxy, nginx): after answering a request whose body
/// was not read to its end, the socket is half-closed and what the client
/// still sends is read and dropped for at most this long, so the close does
/// not reset the connection under the response before the client read it.
pub const LINGER_MAX: Duration = Duration::from_secs(2);

/// How long an HTTP/2 client gets to finish after our GOAWAY for an idle or
/// head timeout before the socket is closed under it.
const H2_GOAWAY_GRACE: Duration = Duration::from_secs(2);

/// What one HTTP/2 response stream may hold in hyper's send buffer: a
/// client that stops reading holds at most this much per stream.
const H2_SEND_BUF: usize = 64 << 10;

/// HTTP/1: response body bytes handed to hyper and not yet written to the
/// socket beyond which the body stops reading from the server. With it, a
/// client that stops reading holds this much plus one chunk in hyper's write
/// buffer, whatever hyper's own buffer limits (sized for request heads) allow.
pub const MAX_UNSENT: usize = 8 << 10;

/// Where a client connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnPhase {
    /// Waiting for the first byte of a request.
    Idle,
    /// Some bytes of a request head arrived, the head is not complete yet.
    Head,
    /// A request is being handled; its response body is not over yet.
    Busy,
    /// The response body is over; hyper has yet to flush the last bytes.
    Flushing,
}

/// Per-connection state shared by the IO wrapper and the request handler.
pub struct ConnState {
    /// HTTP/2: many requests at once, so no per-request phase tracking.
    multiplexed: bool,
    phase: Cell<ConnPhase>,
    /// When `phase` began (HTTP/1); when the last stream ended (HTTP/2).
    since: Cell<Instant>,
    /// Requests served so far on this connection.
    pub requests: Cell<u64>,
    /// HTTP/2: requests whose response is not over yet.
    active: Cell<u32>,
    /// HTTP/2: response bodies that handed hyper data and have not been
    /// asked for more since (hyper waits for the client's flow-control window).
    owed: Cell<u32>,
    /// HTTP/2: since when `owed` has been above zero.
    owed_since: Cell<Instant>,
    /// HTTP/1: response body bytes handed to hyper, less bytes written since.
    unsent: Cell<usize>,
    /// HTTP/1: the response body waiting for `unsent` to fall below [`MAX_UNSENT`].
    unsent_waiter: Cell<Option<std::task::Waker>>,
    /// A 408 was sent because the request head did not arrive in time.
    pub sent_408: Cell<bool>,
    /// When the worker began shutting down, once it has.
    draining: Cell<Option<Instant>>,
    /// Idle past [`PARK_AFTER`]: the serve loop takes the socket back from hyper.
    park: Cell<bool>,
    /// hyper is being stopped to park: its shutdown of the socket is skipped.
    parking: Cell<bool>,
    /// HTTP/1: a request on this connection came with a body (which may be
    /// unread when the connection closes: see [`LINGER_MAX`]).
    body_seen: Cell<bool>,
    /// The frontend's `errorfiles` that replace the pages written below
    /// hyper (a copy per generation and worker: an idle connection must not
    /// keep a replaced runtime alive); `None` when the frontend replaces none.
    pages: Option<Rc<crate::error::ErrorPages>>,
    /// HTTP/1: a tunnel answered (`101`, or `200` to a CONNECT), run on the
    /// socket once hyper wrote the answer (`proxy/upgraded.rs`).
    tunnel: Cell<Option<super::upgraded::Tunnel>>,
}

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnState")
            .field("multiplexed", &self.multiplexed)
            .field("phase", &self.phase.get())
            .field("requests", &self.requests.get())
            .field("active", &self.active.get())
            .field("unsent", &self.unsent.get())
            .finish_non_exhaustive()
    }
}

impl ConnState {
    fn new(multiplexed: bool, phase: ConnPhase, since: Instant) -> ConnState {
        ConnState {
            multiplexed,
            phase: Cell::new(phase),
            since: Cell::new(since),
            requests: Cell::new(0),
            active: Cell::new(0),
            owed: Cell::new(0),
            owed_since: Cell::new(since),
            unsent: Cell::new(0),
            unsent_waiter: Cell::new(None),
            sent_408: Cell::new(false),
            draining: Cell::new(None),
            park: Cell::new(false),
            parking: Cell::new(false),
            body_seen: Cell::new(false),
            pages: None,
            tunnel: Cell::new(None),
        }
    }

    /// The whole response for an error written below hyper (408, 400, 414, 431):
    /// the frontend's page if it replaces it, else HAProxy's.
    pub(super) fn raw_error(&self, status: http::StatusCode) -> Bytes {
        self.pages
            .as_ref()
            .and_then(|p| p.get(status))
            .map_or_else(|| crate::error::raw_response(status), |o| o.raw.clone())
    }

    /// Whether the worker began shutting down (seen by this connection).
    pub(super) fn is_draining(&self) -> bool {
        self.draining.get().is_some()
    }

    /// Native HTTP/1: bytes of a request head are at hand.
    pub(super) fn head_begun(&self) {
        if self.phase.get() == ConnPhase::Idle {
            self.phase.set(ConnPhase::Head);
            self.since.set(Instant::now());
        }
    }

    /// Native HTTP/1: the response is written and flushed; the connection
    /// is idle (the keep-alive timeout starts).
    pub(super) fn response_sent(&self) {
        self.phase.set(ConnPhase::Idle);
        self.since.set(Instant::now());
    }

    /// Native HTTP/1: the read deadline found the connection idle past [`PARK_AFTER`].
    pub(super) fn wants_park(&self) -> bool {
        self.park.get()
    }

    /// Native HTTP/1: the connection parked; its next cycle starts afresh.
    pub(super) fn unpark(&self) {
        self.park.set(false);
        self.parking.set(false);
    }

    /// HTTP/1: whether an answer opened a tunnel.
    pub(super) fn has_tunnel(&self) -> bool {
        let t = self.tunnel.take();
        let has = t.is_some();
        self.tunnel.set(t);
        has
    }

    /// HTTP/1: the tunnel an answer opened, to run on the socket.
    pub(super) fn take_tunnel(&self) -> Option<super::upgraded::Tunnel> {
        self.tunnel.take()
    }

    /// HTTP/1: a request on this connection came with a body.
    pub(super) fn had_body(&self) -> bool {
        self.body_seen.get()
    }

    /// HTTP/1: runs `tunnel` on this connection's socket once the answer
    /// now being returned to hyper is written.
    pub fn set_tunnel(&self, tunnel: super::upgraded::Tunnel) {
        self.tunnel.set(Some(tunnel));
    }

    /// The current request comes with a body.
    pub fn request_has_body(&self) {
        self.body_seen.set(true);
    }

    /// A request head was parsed: no head timeout until its response is sent.
    pub fn request_started(&self) {
        if self.multiplexed {
            self.active.set(self.active.get() + 1);
        } else {
            self.phase.set(ConnPhase::Busy);
        }
        self.requests.set(self.requests.get() + 1);
    }

    /// The response body is over; once hyper flushes it the keep-alive timeout starts.
    pub fn request_finished(&self) {
        if self.multiplexed {
            let left = self.active.get().saturating_sub(1);
            self.active.set(left);
            if left == 0 {
                self.since.set(Instant::now());
            }
        } else if self.phase.get() == ConnPhase::Busy {
            self.phase.set(ConnPhase::Flushing);
        }
    }

    /// Whether response bodies should report flow-control stalls
    /// ([`body_waiting`](Self::body_waiting)): HTTP/2, where a client that
    /// grants no window stalls a stream without the socket filling up.
    pub fn watches_stalls(&self) -> bool {
        self.multiplexed
    }

    /// A response body handed data to hyper and waits to be asked again.
    pub fn body_waiting(&self) {
        let n = self.owed.get();
        if n == 0 {
            self.owed_since.set(Instant::now());
        }
        self.owed.set(n + 1);
    }

    /// A waiting response body was asked again (or dropped).
    pub fn body_resumed(&self) {
        self.owed.set(self.owed.get().saturating_sub(1));
    }

    /// HTTP/1: whether a response body may hand hyper more data now; if
    /// not, `cx` is woken once writes make room.
    pub fn poll_room(&self, cx: &Context<'_>) -> Poll<()> {
        if self.unsent.get() <= MAX_UNSENT {
            return Poll::Ready(());
        }
        self.unsent_waiter.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// HTTP/1: a response body handed `n` bytes to hyper.
    pub fn handed(&self, n: usize) {
        self.unsent.set(self.unsent.get() + n);
    }

    /// `n` bytes went to the socket (head and framing bytes included, so the
    /// count can only err towards more room).
    fn written(&self, n: usize) {
        let left = self.unsent.get().saturating_sub(n);
        self.unsent.set(left);
        if left <= MAX_UNSENT
            && let Some(w) = self.unsent_waiter.take()
        {
            w.wake();
        }
    }

    /// HTTP/2: when the client has accepted nothing for `timeout.client`
    /// while response data waits for it.
    fn h2_stalled_at(&self, client: Duration) -> Option<Instant> {
        (self.owed.get() > 0).then(|| self.owed_since.get() + client)
    }

    /// Whether a response must carry `Connection: close`: an HTTP/1
    /// connection of a worker that is shutting down closes after its
    /// response, so that a keep-alive client learns it before its next request.
    pub fn close_after_response(&self) -> bool {
        !self.multiplexed && self.draining.get().is_some()
    }

    pub(super) fn start_drain(&self) {
        if self.draining.get().is_none() {
            self.draining.set(Some(Instant::now()));
        }
    }

    /// When an idle HTTP/1 connection is closed: the keep-alive timeout, or
    /// the drain linger once shutdown began.
    fn idle_close_at(&self, keep_alive: Duration) -> Instant {
        let since = self.since.get();
        let at = since + keep_alive;
        match self.draining.get() {
            Some(d) => at.min(d.max(since) + DRAIN_LINGER),
            None => at,
        }
    }

    /// When an HTTP/2 connection with no stream in flight is closed: the
    /// request-head timeout before its first request, then the keep-alive
    /// timeout. `None` while streams are in flight.
    fn h2_idle_close_at(&self, t: &Timeouts) -> Option<Instant> {
        if self.active.get() > 0 {
            return None;
        }
        let wait = if self.requests.get() == 0 {
            t.http_request
        } else {
            t.keep_alive
        };
        Some(self.since.get() + wait)
    }
}

/// What a fired read deadline means.
enum Fired {
    /// Close (EOF to hyper), answering 408 first if a head was under way.
    Expire,
    /// Idle long enough to give hyper's buffers back.
    Park,
    /// Not due yet (the deadline moved): arm again.
    Rearm,
}

/// A client connection's byte stream: the TCP socket itself, or TLS over it
/// (`proxy/tls.rs`). The socket underneath is what idle waits watch.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + 'static {
    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;
    /// Gives the TCP socket back (for the lingering close).
    fn into_tcp(self) -> TcpStream;
    /// Best effort, without waiting: sends `buf` (a 408 before closing).
    fn send_now(&mut self, buf: &[u8]);
}

impl ClientStream for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn into_tcp(self) -> TcpStream {
        self
    }
    fn send_now(&mut self, buf: &[u8]) {
        let _ = self.try_write(buf);
    }
}

/// The client socket with request-head, keep-alive and send deadlines.
pub struct TimedIo<S = TcpStream> {
    stream: S,
    /// Bytes read before hyper took over (protocol detection, or what a
    /// parked hyper connection had buffered), served before the socket.
    prefix: Bytes,
    state: Rc<ConnState>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    http_request: Duration,
    keep_alive: Duration,
    /// `timeout.client`: a write that makes no progress this long fails.
    send: Duration,
    /// Park an idle connection no earlier than this plus [`PARK_AFTER`]
    /// (`None`: never park, HTTP/2).
    park_base: Option<Instant>,
    expired: bool,
    /// Since a write first found the socket full, its deadline.
    write_stall: Option<Pin<Box<Sleep>>>,
    /// Our replacement for an error response hyper wrote, still to be sent.
    replacement: Option<Bytes>,
    /// Hyper's error response was replaced: swallow whatever else it writes.
    replaced: bool,
}

impl<S: ClientStream> TimedIo<S> {
    /// The stream and what of `prefix` was not read yet.
    pub(super) fn into_parts(self) -> (S, Bytes) {
        (self.stream, self.prefix)
    }

    pub(super) fn new(
        stream: S,
        prefix: Bytes,
        state: Rc<ConnState>,
        t: &Timeouts,
        park_base: Option<Instant>,
    ) -> TimedIo<S> {
        let first = state.since.get() + t.http_request;
        TimedIo {
            stream,
            prefix,
            state,
            sleep: Box::pin(tokio::time::sleep_until(first)),
            armed: None,
            http_request: t.http_request,
            keep_alive: t.keep_alive,
            send: t.client,
            park_base,
            expired: false,
            write_stall: None,
            replacement: None,
            replaced: false,
        }
    }

    /// The next instant at which a read deadline must be looked at.
    fn deadline(&self) -> Option<Instant> {
        match self.state.phase.get() {
            ConnPhase::Idle => {
                let close = self.state.idle_close_at(self.keep_alive);
                Some(match self.park_at() {
                    Some(p) => close.min(p),
                    None => close,
                })
            }
            ConnPhase::Head => Some(self.state.since.get() + self.http_request),
            ConnPhase::Busy | ConnPhase::Flushing => None,
        }
    }

    fn park_at(&self) -> Option<Instant> {
        let base = self.park_base?;
        (!self.state.park.get()).then(|| self.state.since.get().max(base) + PARK_AFTER)
    }

    fn on_deadline(&self, now: Instant) -> Fired {
        match self.state.phase.get() {
            ConnPhase::Head if now >= self.state.since.get() + self.http_request => Fired::Expire,
            ConnPhase::Idle if now >= self.state.idle_close_at(self.keep_alive) => Fired::Expire,
            ConnPhase::Idle if self.park_at().is_some_and(|p| now >= p) => Fired::Park,
            _ => Fired::Rearm,
        }
    }

    fn saw_bytes(&self) {
        if self.state.phase.get() == ConnPhase::Idle {
            self.state.phase.set(ConnPhase::Head);
            self.state.since.set(Instant::now());
        }
    }

    /// Polls the read deadlines after the socket had nothing to read.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some(deadline) = self.deadline() else {
                return Poll::Pending;
            };
            if self.armed != Some(deadline) {
                self.sleep.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.armed = None;
            match self.on_deadline(Instant::now()) {
                Fired::Rearm => {}
                Fired::Park => {
                    // The serve loop, polled next, stops hyper and keeps the socket.
                    self.state.park.set(true);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Fired::Expire => {
                    tracing::trace!(phase = ?self.state.phase.get(), "client connection deadline passed");
                    self.expired = true;
                    if self.state.phase.get() == ConnPhase::Head {
                        // Best effort: the socket buffer is empty at this point, so
                        // a short response fits; a client that is gone loses nothing.
                        let page = self.state.raw_error(http::StatusCode::REQUEST_TIMEOUT);
                        self.stream.send_now(&page);
                        self.state.sent_408.set(true);
                    }
                    // End of stream: hyper closes the connection.
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    /// A write found the socket full: fails once it stays full for `timeout.client`.
    fn poll_write_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let send = self.send;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("client read nothing for {send:?} (timeout.client)"),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: ClientStream> AsyncRead for TimedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Ok(()));
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            this.saw_bytes();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.saw_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadlines(cx),
        }
    }
}

/// The status of an HTTP/1.1 response head at the start of `buf`, if it is one.
fn response_status(buf: &[u8]) -> Option<http::StatusCode> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    http::StatusCode::from_bytes(rest.get(..3)?).ok()
}

impl<S: ClientStream> TimedIo<S> {
    /// Sends what is left of the replacement response.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.replacement.as_mut() {
            match Pin::new(&mut self.stream).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    rest.advance(n);
                    if rest.is_empty() {
                        self.replacement = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: ClientStream> AsyncWrite for TimedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replaced {
            // hyper closes after its error response; nothing else of it goes out.
            return this.poll_replacement(cx).map(|r| r.map(|()| buf.len()));
        }
        // While no request is in the handler and no response is being flushed,
        // the only thing hyper writes is its automatic error response
        // (400/414/431), which has an empty body. Send ours instead, with a
        // text body like every other error.
        if matches!(this.state.phase.get(), ConnPhase::Idle | ConnPhase::Head)
            && let Some(status) = response_status(buf)
            && status.is_client_error()
        {
            this.replaced = true;
            this.replacement = Some(this.state.raw_error(status));
            return this.poll_replacement(cx).map(|r| r.map(|()| buf.len()));
        }
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.poll_write_stall(cx).map(Err),
            done => {
                if let Poll::Ready(Ok(n)) = done
                    && n > 0
                {
                    this.write_stall = None;
                    this.state.written(n);
                }
                done
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_replacement(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let flushed = Pin::new(&mut this.stream).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) && this.state.phase.get() == ConnPhase::Flushing {
            // hyper flushes after writing a response's last bytes: the
            // connection is now idle and the keep-alive timeout starts.
            this.state.phase.set(ConnPhase::Idle);
            this.state.since.set(Instant::now());
            // hyper polled its read before this flush and will not poll it
            // again until woken: arm the idle deadlines here, or they would
            // wait for the client's next bytes.
            if let Poll::Ready(Err(e)) = this.poll_deadlines(cx) {
                return Poll::Ready(Err(e));
            }
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_replacement(cx) {
            // Parking: hyper is done with the socket, the connection is not.
            Poll::Ready(Ok(())) if this.state.parking.get() => Poll::Ready(Ok(())),
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_shutdown(cx),
            other => other,
        }
    }
}

/// Reads and drops what the client still sends, until it closes or
/// [`LINGER_MAX`] passes, then closes the socket (see [`LINGER_MAX`]).
pub(super) async fn linger(stream: TcpStream) {
    let deadline = Instant::now() + LINGER_MAX;
    let mut sink = [0u8; 4096];
    loop {
        match stream.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        match tokio::time::timeout_at(deadline, stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Spawns hyper tasks (HTTP/2 streams) on this worker's `LocalSet`.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        // Boxed first: tokio moves a task's future through several frames
        // and copies it whole when the task ends; a pointer is cheaper to
        // move than the future (see `upstream_h2::LocalExec`).
        tokio::task::spawn_local(Box::pin(fut));
    }
}

/// What the protocol sniffer found.
enum Detected {
    Http1(Bytes),
    Http2(Bytes),
    /// Closed or silent until the deadline.
    Nothing,
}

/// Reads until the bytes either diverge from the HTTP/2 preface or complete it.
async fn detect<S: ClientStream>(stream: &mut S, deadline: Instant) -> io::Result<Detected> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        match read {
            Err(_) | Ok(Ok(0)) if buf.is_empty() => return Ok(Detected::Nothing),
            Err(_) | Ok(Ok(0)) => return Ok(Detected::Http1(buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {}
        }
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Detected::Http1(buf.freeze()));
        }
        if buf.len() >= H2_PREFACE.len() {
            return Ok(Detected::Http2(buf.freeze()));
        }
    }
}

/// Why a connection that holds no request stopped waiting.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Wake {
    /// Bytes (or the client's close) arrived.
    Readable,
    /// Timed out, shed under connection pressure, or shutting down: close.
    Close,
}

/// Waits, holding no buffer, until `stream` is readable or `deadline`
/// passes. The worker sheds such connections when it runs out of
/// connection slots (nginx does the same with idle keep-alive connections).
/// A start of the drain shortens the wait to [`DRAIN_LINGER`]: a request may
/// already be on its way (a keep-alive client's next one, or the first one
/// of a connection accepted just before the drain), and closing under it
/// would fail it; once it comes it is answered with `Connection: close`.
pub(super) async fn wait_readable(
    stream: &TcpStream,
    worker: &Worker,
    state: Option<&ConnState>,
    deadline: Instant,
    shutdown: &mut ShutdownSignal,
) -> Wake {
    let shed = worker.shed.notified();
    tokio::pin!(shed);
    let mut deadline = deadline;
    let mut draining = state.is_some_and(|s| s.draining.get().is_some());
    loop {
        tokio::select! {
            // Bytes that came win over a deadline, a shed or the drain due at the same time.
            biased;
            r = stream.readable() => return if r.is_ok() { Wake::Readable } else { Wake::Close },
            () = tokio::time::sleep_until(deadline) => return Wake::Close,
            () = &mut shed => return Wake::Close,
            () = shutdown.wait(), if !draining => {
                if let Some(s) = state {
                    s.start_drain();
                }
                draining = true;
                deadline = deadline.min(Instant::now() + DRAIN_LINGER);
            }
        }
    }
}

/// Runs an HTTP/1 connection until it ends or asks to park: on shutdown it
/// marks the connection draining (responses then carry `Connection: close`);
/// once hyper's read found the connection idle past [`PARK_AFTER`] it stops
/// hyper without shutting the socket down.
async fn drive_h1<C>(conn: &mut C, state: &ConnState, shutdown: &mut ShutdownSignal) -> C::Output
where
    C: Future + hyper_util::server::graceful::GracefulConnection + Unpin,
{
    let draining = state.draining.get().is_some();
    let wait = shutdown.wait();
    tokio::pin!(wait);
    let mut shutdown_seen = draining;
    std::future::poll_fn(|cx| {
        if !shutdown_seen && wait.as_mut().poll(cx).is_ready() {
            shutdown_seen = true;
            state.start_drain();
        }
        if state.park.get() && !state.parking.get() {
            state.parking.set(true);
            Pin::new(&mut *conn).graceful_shutdown();
        }
        Pin::new(&mut *conn).poll(cx)
    })
    .await
}

/// Runs an HTTP/2 connection with the timeouts HTTP/1 has: the request-head
/// timeout until the first stream, the keep-alive timeout whenever no stream
/// is in flight (bytes such as PINGs do not extend it), a GOAWAY when either
/// passes or shutdown begins, and a bounded wait for the client after it
/// (`None`: the client overstayed it and the connection is dropped).
async fn drive_h2<C>(
    conn: Pin<&mut C>,
    state: &ConnState,
    t: &Timeouts,
    shutdown: &mut ShutdownSignal,
) -> Option<C::Output>
where
    C: Future + hyper_util::server::graceful::GracefulConnection,
{
    let mut conn = conn;
    let wait = shutdown.wait();
    tokio::pin!(wait);
    let mut shutdown_seen = false;
    let mut sleep = Box::pin(tokio::time::sleep_until(state.since.get() + t.http_request));
    let mut armed: Option<Instant> = None;
    // Set once a GOAWAY went out for a timeout: the socket closes then.
    let mut hard_close: Option<Instant> = None;
    std::future::poll_fn(|cx| {
        if !shutdown_seen && wait.as_mut().poll(cx).is_ready() {
            shutdown_seen = true;
            state.start_drain();
            // GOAWAY; the worker's grace bounds the streams still in flight.
            conn.as_mut().graceful_shutdown();
        }
        loop {
            let due = match (hard_close, state.h2_idle_close_at(t)) {
                (Some(at), _) => at,
                (None, Some(at)) => at,
                (None, None) => match (state.h2_stalled_at(t.client), armed) {
                    (Some(at), _) => at,
                    // Streams in flight: look again later (they may end, or stall).
                    (None, Some(at)) => at,
                    (None, None) => Instant::now() + t.keep_alive.min(t.client),
                },
            };
            if armed != Some(due) {
                sleep.as_mut().reset(due);
                armed = Some(due);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                break;
            }
            armed = None;
            if hard_close.is_some() {
                tracing::debug!("HTTP/2 client did not close after GOAWAY; closing");
                return Poll::Ready(None);
            }
            let now = Instant::now();
            if state.h2_idle_close_at(t).is_some_and(|at| now >= at) {
                conn.as_mut().graceful_shutdown();
                hard_close = Some(now + H2_GOAWAY_GRACE);
            } else if state.h2_stalled_at(t.client).is_some_and(|at| now >= at) {
                // The client reads nothing of what waits for it: as a stalled
                // HTTP/1 write, the connection goes (its streams cannot finish).
                tracing::debug!(
                    "HTTP/2 client accepted no response data for timeout.client; closing"
                );
                return Poll::Ready(None);
            }
        }
        conn.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Serves one accepted client connection until it closes or the worker shuts down.
pub async fn serve(
    worker: Rc<Worker>,
    frontend: FrontendRef,
    mut stream: TcpStream,
    client: SocketAddr,
) {
    let local = stream.local_addr().unwrap_or(client);
    // The generation in force at accept sets the connection's timeouts and
    // limits; each request then runs on the generation in force when it starts.
    let timeouts = worker.current().shared.config.global.timeouts;
    let accepted = Instant::now();
    let mut shutdown = worker.shutdown_signal();
    // Until its first byte a connection holds no buffer: a flood of silent
    // connections costs sockets, not memory, and is shed under pressure.
    let first_deadline = accepted + timeouts.http_request;
    if wait_readable(&stream, &worker, None, first_deadline, &mut shutdown).await == Wake::Close {
        return;
    }
    let detected = match detect(&mut stream, first_deadline).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%client, error = %e, "client connection failed before its first request");
            return;
        }
    };
    let (prefix, h2) = match detected {
        Detected::Nothing => return,
        Detected::Http1(p) => (p, false),
        Detected::Http2(p) => (p, true),
    };
    serve_stream(
        worker,
        Opened {
            frontend,
            client,
            local,
            accepted,
            tls: None,
        },
        stream,
        prefix,
        h2,
    )
    .await;
}

/// A connection ready for HTTP: where it came from, when, and its TLS facts.
pub struct Opened {
    /// The frontend that accepted it (found by name in later generations).
    pub frontend: FrontendRef,
    pub client: SocketAddr,
    pub local: SocketAddr,
    pub accepted: Instant,
    pub tls: Option<Rc<crate::tls::TlsFacts>>,
}

/// Serves a TLS connection after its handshake: HTTP/2 when ALPN chose it,
/// HTTP/1.1 when ALPN chose that, else the protocol the first bytes show.
pub(super) async fn serve_tls<S: ClientStream>(worker: Rc<Worker>, opened: Opened, mut stream: S) {
    let alpn = opened
        .tls
        .as_ref()
        .and_then(|t| t.alpn.as_deref().map(str::to_owned));
    let (prefix, h2) = match alpn.as_deref() {
        Some("h2") => (Bytes::new(), true),
        Some(_) => (Bytes::new(), false),
        None => {
            let deadline =
                opened.accepted + worker.current().shared.config.global.timeouts.http_request;
            match detect(&mut stream, deadline).await {
                Ok(Detected::Http1(p)) => (p, false),
                Ok(Detected::Http2(p)) => (p, true),
                Ok(Detected::Nothing) => return,
                Err(e) => {
                    tracing::debug!(client = %opened.client, error = %e, "client connection failed before its first request");
                    return;
                }
            }
        }
    };
    serve_stream(worker, opened, stream, prefix, h2).await;
}

/// The hyper service of one connection: each request goes to the handler
/// with the connection's context.
fn service(
    ctx: Rc<super::handler::ConnCtx>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<super::body::ResponseBody>,
    Error = std::convert::Infallible,
> + Clone {
    service_fn(move |req: http::Request<hyper::body::Incoming>| {
        super::handler::handle(req.map(super::body::PeerBody::Hyper), Rc::clone(&ctx))
    })
}

/// How an HTTP/1 connection's serving (hyper's or the native one) ended.
pub(super) enum H1End<S> {
    /// Idle past [`PARK_AFTER`]: the socket and the bytes read of a next
    /// request, the buffers gone.
    Parked(S, Bytes),
    /// The connection is over (a tunnel and a lingering close included);
    /// with the status and reason of a request refused below the handler.
    Done(Option<(u16, String)>),
}

/// The local error a hyper connection's end reports, if any.
fn local_error(result: hyper::Result<()>) -> Option<(u16, String)> {
    match result {
        Ok(()) => None,
        Err(e) if e.is_parse() || e.is_parse_too_large() => {
            let status = if e.is_parse_too_large() { 431 } else { 400 };
            Some((status, e.to_string()))
        }
        Err(e) => {
            tracing::debug!(error = %e, "client connection ended with an error");
            None
        }
    }
}

/// Runs hyper's HTTP/1 connection on `stream` until the connection ends or
/// parks (see [`drive_h1`]).
#[allow(clippy::too_many_arguments)]
async fn run_h1<S: ClientStream>(
    stream: S,
    prefix: Bytes,
    state: &Rc<ConnState>,
    ctx: &Rc<super::handler::ConnCtx>,
    builder: &http1::Builder,
    timeouts: &Timeouts,
    park_base: Instant,
    shutdown: &mut ShutdownSignal,
) -> H1End<S> {
    let io = TimedIo::new(stream, prefix, Rc::clone(state), timeouts, Some(park_base));
    let mut conn = builder.serve_connection(TokioIo::new(io), service(Rc::clone(ctx)));
    let result = drive_h1(&mut conn, state, shutdown).await;
    tracing::trace!(?result, phase = ?state.phase.get(), parking = state.parking.get(), "hyper connection ended");
    if let Some(tunnel) = state.tunnel.take() {
        // hyper wrote the 101 (or the 200 to a CONNECT) and stopped
        // without shutting the socket: it is the tunnel's now, with
        // whatever the client sent past the request head.
        if result.is_ok() {
            let parts = conn.into_parts();
            let io = parts.io.into_inner();
            let client = super::upgraded::Rewound::new(parts.read_buf, io.prefix, io.stream);
            // Boxed: rare, and larger than the rest of this future.
            Box::pin(tunnel.run(Box::new(client))).await;
        } else {
            tunnel.abandon();
        }
        return H1End::Done(local_error(result));
    }
    if result.is_err() || !state.parking.get() {
        if state.body_seen.get() {
            // hyper half-closed the socket after the last response.
            // Boxed: its 4 KiB sink would otherwise be part of this future.
            Box::pin(linger(conn.into_parts().io.into_inner().stream.into_tcp())).await;
        }
        return H1End::Done(local_error(result));
    }
    // Parked: hyper's buffers go; what it had read of a next request stays.
    // Everything of hyper's is dropped here, before the wait; the buffered
    // bytes are copied, since hyper's (even empty) read buffer would keep
    // its whole allocation alive while parked.
    let parts = conn.into_parts();
    let prefix = Bytes::copy_from_slice(&parts.read_buf);
    let stream = parts.io.into_inner().stream;
    state.park.set(false);
    state.parking.set(false);
    H1End::Parked(stream, prefix)
}

/// Serves an HTTP/2 connection (see [`drive_h2`]).
async fn serve_h2<S: ClientStream>(
    stream: S,
    prefix: Bytes,
    state: &Rc<ConnState>,
    timeouts: &Timeouts,
    svc: impl hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<super::body::ResponseBody>,
        Error = std::convert::Infallible,
        Future: 'static,
    > + 'static,
    max_header_size: usize,
    shutdown: &mut ShutdownSignal,
) -> hyper::Result<()> {
    let io = TimedIo::new(stream, prefix, Rc::clone(state), timeouts, None);
    let svc = BoxedCalls(svc);
    let conn = http2::Builder::new(LocalExec)
        .max_header_list_size(u32::try_from(max_header_size).unwrap_or(u32::MAX))
        // RFC 8441: WebSockets over HTTP/2 (`proxy/upgraded.rs`).
        .enable_connect_protocol()
        .max_send_buf_size(H2_SEND_BUF)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    drive_h2(conn.as_mut(), state, timeouts, shutdown)
        .await
        .unwrap_or(Ok(()))
}

/// A service whose calls' futures are boxed. hyper's HTTP/2 server spawns
/// a task per stream holding the call's future: the handler's future is
/// many KiB and hyper and tokio move a task's future several times on the
/// way to its heap cell (and copy it whole when it ends); a boxed one is a
/// pointer to move. The box is the one copy of it left.
struct BoxedCalls<S>(S);

impl<S, Req> hyper::service::Service<Req> for BoxedCalls<S>
where
    S: hyper::service::Service<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<S::Future>>;

    fn call(&self, req: Req) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}

/// Serves HTTP on a connection whose protocol is known.
async fn serve_stream<S: ClientStream>(
    worker: Rc<Worker>,
    opened: Opened,
    stream: S,
    prefix: Bytes,
    h2: bool,
) {
    let Opened {
        frontend,
        client,
        local,
        accepted,
        tls,
    } = opened;
    let epoch = worker.current();
    let timeouts = epoch.shared.config.global.timeouts;
    let mut shutdown = worker.shutdown_signal();
    let state = Rc::new({
        let mut state = ConnState::new(
            h2,
            if h2 { ConnPhase::Busy } else { ConnPhase::Head },
            accepted,
        );
        state.pages = frontend
            .index_in(&epoch.shared)
            .and_then(|i| epoch.error_pages.get(i)?.clone());
        state
    });
    let ctx = Rc::new(super::handler::ConnCtx::new(
        Rc::clone(&worker),
        frontend.clone(),
        client,
        local,
        Rc::clone(&state),
        tls,
    ));
    let (max_header_size, max_headers) = (
        epoch.shared.config.global.max_header_size,
        epoch.shared.config.global.max_headers,
    );
    let native = epoch.shared.config.global.http1_server == crate::config::Http1Server::Native;
    // Not held while the connection lives: an idle connection must not keep
    // a replaced runtime alive.
    drop(epoch);
    let result: Option<(u16, String)> = if h2 {
        // Boxed: an HTTP/1 connection's task, idle ones included, must not
        // be as large as this path's state.
        let result = Box::pin(serve_h2(
            stream,
            prefix,
            &state,
            &timeouts,
            service(Rc::clone(&ctx)),
            max_header_size,
            &mut shutdown,
        ))
        .await;
        local_error(result)
    } else {
        let mut builder = http1::Builder::new();
        builder
            .writev(false)
            .max_headers(max_headers)
            .max_header_size(max_header_size)
            .max_buf_size(max_header_size.max(64 << 10) + 8192);
        let mut stream = stream;
        let mut prefix = prefix;
        let mut park_base = accepted;
        loop {
            // Boxed: hyper's connection and its driving live on the heap
            // only while a request may be under way; a parked connection's
            // task holds no room for them.
            let end = if native {
                let limits = super::h1codec::HeadLimits {
                    max_size: max_header_size,
                    max_headers,
                };
                Box::pin(super::server_h1::run(
                    stream,
                    prefix,
                    &state,
                    &ctx,
                    limits,
                    &timeouts,
                    park_base,
                    &mut shutdown,
                ))
                .await
            } else {
                Box::pin(run_h1(
                    stream,
                    prefix,
                    &state,
                    &ctx,
                    &builder,
                    &timeouts,
                    park_base,
                    &mut shutdown,
                ))
                .await
            };
            match end {
                H1End::Done(result) => break result,
                H1End::Parked(s, p) => (stream, prefix) = (s, p),
            }
            if prefix.is_empty() {
                let close_at = state.idle_close_at(timeouts.keep_alive);
                let woke =
                    wait_readable(stream.tcp(), &worker, Some(&state), close_at, &mut shutdown)
                        .await;
                if woke == Wake::Close {
                    break None;
                }
            }
            park_base = Instant::now();
        }
    };
    if state.sent_408.get() {
        worker.record_local_error(&frontend, client, 408, "request head timeout");
    }
    if let Some((status, reason)) = result {
        worker.record_local_error(&frontend, client, status, &reason);
    }
}

/// Sizes in bytes of what each client connection holds inline: its task's
/// future (largest state; for the connection's whole life, idle included)
/// by path, and what a request or a running hyper connection adds. Logged at
/// debug level when a worker starts; bounded by a test.
#[derive(Debug)]
// Outside tests the fields are read only through `Debug` (the log line).
#[allow(dead_code)]
pub(super) struct FutureSizes {
    /// The accepted connection's task (`worker::serve_accepted`).
    pub task: usize,
    /// Plain HTTP/1.1 or h2c, TLS, and TCP-mode paths (the last two boxed).
    pub http: usize,
    pub tls: usize,
    pub tcp: usize,
    /// hyper's HTTP/1 connection with our service (boxed, dropped while parked).
    pub hyper_h1: usize,
    /// The native HTTP/1 server's request loop (boxed, dropped while parked).
    pub native_h1: usize,
    /// hyper's HTTP/2 connection (boxed with the HTTP/2 path).
    pub hyper_h2: usize,
    /// The handler's request future (hyper boxes it per hyper connection).
    pub handler: usize,
    /// An HTTP/1 tunnel's future (boxed).
    pub tunnel: usize,
}

/// See [`FutureSizes`].
pub(super) fn future_sizes() -> FutureSizes {
    /// The size of what `f` returns (an async fn's future), never calling it.
    fn returned2<A, B, R>(_: &impl FnOnce(A, B) -> R) -> usize {
        size_of::<R>()
    }
    fn returned4<A, B, C, D, R>(_: &impl FnOnce(A, B, C, D) -> R) -> usize {
        size_of::<R>()
    }
    fn returned5<A, B, C, D, E, R>(_: &impl FnOnce(A, B, C, D, E) -> R) -> usize {
        size_of::<R>()
    }
    /// hyper's HTTP/1 and HTTP/2 connections with the service `make` returns.
    fn hyper_sizes<V>(_: &impl FnOnce(Rc<super::handler::ConnCtx>) -> V) -> (usize, usize)
    where
        V: hyper::service::HttpService<hyper::body::Incoming> + 'static,
    {
        (
            size_of::<http1::Connection<TokioIo<TimedIo<TcpStream>>, V>>(),
            size_of::<http2::Connection<TokioIo<TimedIo<TcpStream>>, V, LocalExec>>(),
        )
    }
    let (hyper_h1, hyper_h2) = hyper_sizes(&service);
    #[allow(clippy::type_complexity)]
    fn returned8<A, B, C, D, E, F, G, H, R>(_: &impl FnOnce(A, B, C, D, E, F, G, H) -> R) -> usize {
        size_of::<R>()
    }
    let native_h1 = returned8(&super::server_h1::run::<TcpStream>);
    FutureSizes {
        task: returned4(&super::worker::serve_accepted),
        http: returned4(&serve),
        tls: returned5(&super::tls::serve),
        tcp: returned4(&super::tcp::serve),
        hyper_h1,
        native_h1,
        hyper_h2,
        handler: returned2(&super::handler::handle),
        tunnel: returned2(&super::upgraded::Tunnel::run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every client connection's task holds its future's largest state for
    /// its whole life, idle keep-alive connections included. It was 12 KiB
    /// (16.5 KB of RSS per idle keep-alive connection, `bench/run --memory
    /// only`, 2026-12-06), because the TLS path's state (the handshake and
    /// the TLS stream) sat inline in every connection's task; now the TLS
    /// and TCP paths, HTTP/2 and tunnels are boxed (see bench/README.md,
    /// memory). A future over these bounds has an await point holding
    /// something large: box that state, or hold it in a `Box`. Debug builds
    /// lay futures out less tightly than release builds (see the debug log
    /// line at worker start for the release figures).
    #[test]
    fn connection_task_stays_small() {
        let sizes = future_sizes();
        eprintln!("{sizes:?}");
        let bound = if cfg!(debug_assertions) { 3072 } else { 2048 };
        for (what, size) in [
            ("connection task", sizes.task),
            ("plain HTTP path", sizes.http),
            ("TLS path", sizes.tls),
            ("TCP path", sizes.tcp),
        ] {
            assert!(
                size <= bound,
                "the {what}'s future is {size} bytes, over {bound}: {sizes:?}"
            );
        }
    }
}
