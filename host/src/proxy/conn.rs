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
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::worker::{ShutdownSignal, Worker};

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
#[derive(Debug)]
pub struct ConnState {
    /// HTTP/2: many requests at once, so no per-request phase tracking.
    multiplexed: bool,
    phase: Cell<ConnPhase>,
    since: Cell<Instant>,
    /// Requests served so far on this connection.
    pub requests: Cell<u64>,
    /// A 408 was sent because the request head did not arrive in time.
    pub sent_408: Cell<bool>,
}

impl ConnState {
    fn new(multiplexed: bool, phase: ConnPhase, since: Instant) -> ConnState {
        ConnState {
            multiplexed,
            phase: Cell::new(phase),
            since: Cell::new(since),
            requests: Cell::new(0),
            sent_408: Cell::new(false),
        }
    }

    /// A request head was parsed: no head timeout until its response is sent.
    pub fn request_started(&self) {
        if !self.multiplexed {
            self.phase.set(ConnPhase::Busy);
        }
        self.requests.set(self.requests.get() + 1);
    }

    /// The response body is over; once hyper flushes it the keep-alive timeout starts.
    pub fn request_finished(&self) {
        if !self.multiplexed && self.phase.get() == ConnPhase::Busy {
            self.phase.set(ConnPhase::Flushing);
        }
    }
}

/// The client socket with request-head and keep-alive deadlines.
pub struct TimedIo {
    stream: TcpStream,
    /// Bytes read during protocol detection, served before the socket.
    prefix: Bytes,
    state: Rc<ConnState>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    http_request: Duration,
    keep_alive: Duration,
    expired: bool,
    /// Our replacement for an error response hyper wrote, still to be sent.
    replacement: Option<Bytes>,
    /// Hyper's error response was replaced: swallow whatever else it writes.
    replaced: bool,
}

impl TimedIo {
    fn deadline(&self) -> Option<Instant> {
        match self.state.phase.get() {
            ConnPhase::Idle => Some(self.state.since.get() + self.keep_alive),
            ConnPhase::Head => Some(self.state.since.get() + self.http_request),
            ConnPhase::Busy | ConnPhase::Flushing => None,
        }
    }

    fn saw_bytes(&self) {
        if self.state.phase.get() == ConnPhase::Idle {
            self.state.phase.set(ConnPhase::Head);
            self.state.since.set(Instant::now());
        }
    }
}

impl AsyncRead for TimedIo {
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
            Poll::Pending => {
                let Some(deadline) = this.deadline() else {
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.sleep.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.expired = true;
                        if this.state.phase.get() == ConnPhase::Head {
                            // Best effort: the socket buffer is empty at this point, so
                            // a short response fits; a client that is gone loses nothing.
                            let _ = this.stream.try_write(&super::error::raw_error_response(
                                http::StatusCode::REQUEST_TIMEOUT,
                            ));
                            this.state.sent_408.set(true);
                        }
                        // End of stream: hyper closes the connection.
                        Poll::Ready(Ok(()))
                    }
                }
            }
        }
    }
}

/// The status of an HTTP/1.1 response head at the start of `buf`, if it is one.
fn response_status(buf: &[u8]) -> Option<http::StatusCode> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    http::StatusCode::from_bytes(rest.get(..3)?).ok()
}

impl TimedIo {
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

impl AsyncWrite for TimedIo {
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
            this.replacement = Some(super::error::raw_error_response(status));
            return this.poll_replacement(cx).map(|r| r.map(|()| buf.len()));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
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
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_replacement(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.stream).poll_shutdown(cx),
            other => other,
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
        tokio::task::spawn_local(fut);
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
async fn detect(stream: &mut TcpStream, deadline: Instant) -> io::Result<Detected> {
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

/// Runs `conn` to completion; on shutdown, asks it to finish its in-flight
/// requests and close (idle connections close at once).
async fn until_shutdown<C>(conn: C, shutdown: &mut ShutdownSignal) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Serves one accepted client connection until it closes or the worker shuts down.
pub async fn serve(worker: Rc<Worker>, frontend: usize, mut stream: TcpStream, client: SocketAddr) {
    let local = stream.local_addr().unwrap_or(client);
    let timeouts = worker.shared.config.global.timeouts;
    let accepted = Instant::now();
    let detected = match detect(&mut stream, accepted + timeouts.http_request).await {
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
    let state = Rc::new(ConnState::new(
        h2,
        if h2 { ConnPhase::Busy } else { ConnPhase::Head },
        accepted,
    ));
    let io = TimedIo {
        stream,
        prefix,
        state: Rc::clone(&state),
        sleep: Box::pin(tokio::time::sleep_until(accepted + timeouts.http_request)),
        armed: None,
        http_request: timeouts.http_request,
        keep_alive: timeouts.keep_alive,
        expired: false,
        replacement: None,
        replaced: false,
    };
    let ctx = Rc::new(super::handler::ConnCtx::new(
        Rc::clone(&worker),
        frontend,
        client,
        local,
        Rc::clone(&state),
    ));
    let svc = service_fn(move |req| super::handler::handle(req, Rc::clone(&ctx)));
    let mut shutdown = worker.shutdown_signal();
    let global = &worker.shared.config.global;
    let result = if h2 {
        let conn = http2::Builder::new(LocalExec)
            .max_header_list_size(u32::try_from(global.max_header_size).unwrap_or(u32::MAX))
            .serve_connection(TokioIo::new(io), svc);
        until_shutdown(conn, &mut shutdown).await
    } else {
        let conn = http1::Builder::new()
            .writev(false)
            .max_headers(global.max_headers)
            .max_header_size(global.max_header_size)
            .max_buf_size(global.max_header_size.max(64 << 10) + 8192)
            .serve_connection(TokioIo::new(io), svc);
        until_shutdown(conn, &mut shutdown).await
    };
    if state.sent_408.get() {
        worker.record_local_error(frontend, client, 408, "request head timeout");
    }
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            let status = if e.is_parse_too_large() { 431 } else { 400 };
            worker.record_local_error(frontend, client, status, &e.to_string());
        } else {
            tracing::debug!(%client, error = %e, "client connection ended with an error");
        }
    }
}
