//! One admin connection with a deadline in every phase, so no client can
//! hold one of the `admin_maxconn` slots for long:
//!
//! - from accept (or a request's first byte) to a complete head: `http_request`
//!   (408 if some bytes came, silent close if none);
//! - idle between requests: `keep_alive` (silent close);
//! - from the head's start to the end of the response: `request` (the
//!   handler is cut off with 408; a response the client does not read ends
//!   the connection).
//!
//! hyper's own `header_read_timeout` cannot tell idle from mid-head, hence
//! [`AdminIo`], a simpler relative of `proxy::conn::TimedIo` that works on
//! TCP and Unix streams alike.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::admin::AdminTimeouts;

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests.
    Idle,
    /// Reading a request head (a new connection starts here).
    Head,
    /// The handler runs.
    Busy,
    /// The handler answered; hyper writes the response.
    Answered,
}

#[derive(Debug)]
struct ClockState {
    phase: Phase,
    /// When the phase started (for `Busy`/`Answered`: when the head started).
    since: Instant,
    /// Bytes of the current head arrived (a timeout then answers 408).
    saw_bytes: bool,
}

/// The phase clock the IO wrapper and the request handler share.
#[derive(Debug)]
pub struct Clock {
    state: Mutex<ClockState>,
    timeouts: AdminTimeouts,
}

impl Clock {
    /// A clock for a connection accepted now.
    pub fn new(timeouts: AdminTimeouts) -> Clock {
        Clock {
            state: Mutex::new(ClockState {
                phase: Phase::Head,
                since: Instant::now(),
                saw_bytes: false,
            }),
            timeouts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request head was parsed; returns the request's deadline.
    pub fn begin_request(&self) -> Instant {
        let mut s = self.lock();
        if s.phase != Phase::Head {
            // A pipelined request: its head was read with the previous one.
            s.since = Instant::now();
        }
        s.phase = Phase::Busy;
        s.since + self.timeouts.request
    }

    /// The handler returned its response.
    pub fn end_request(&self) {
        let mut s = self.lock();
        if s.phase == Phase::Busy {
            s.phase = Phase::Answered;
        }
    }

    fn saw_bytes(&self) {
        let mut s = self.lock();
        match s.phase {
            Phase::Idle => {
                s.phase = Phase::Head;
                s.since = Instant::now();
                s.saw_bytes = true;
            }
            Phase::Head => s.saw_bytes = true,
            Phase::Busy | Phase::Answered => {}
        }
    }

    fn flushed(&self) {
        let mut s = self.lock();
        if s.phase == Phase::Answered {
            s.phase = Phase::Idle;
            s.since = Instant::now();
            s.saw_bytes = false;
        }
    }

    /// Until when a read may wait; `None` while the handler bounds it.
    fn read_deadline(&self) -> Option<Instant> {
        let s = self.lock();
        match s.phase {
            Phase::Idle => Some(s.since + self.timeouts.keep_alive),
            Phase::Head => Some(s.since + self.timeouts.http_request),
            Phase::Busy | Phase::Answered => None,
        }
    }

    /// Until when a write may wait.
    fn write_deadline(&self) -> Instant {
        let s = self.lock();
        s.since
            + match s.phase {
                Phase::Idle => self.timeouts.keep_alive,
                Phase::Head => self.timeouts.http_request,
                Phase::Busy | Phase::Answered => self.timeouts.request,
            }
    }

    fn head_started(&self) -> bool {
        let s = self.lock();
        s.phase == Phase::Head && s.saw_bytes
    }
}

/// What a client whose head did not arrive in time gets before the close.
const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: 59\r\nconnection: close\r\n\r\n{\"error\": \"the request head did not arrive within timeout\"}";

/// An admin stream whose reads and writes end at the [`Clock`]'s deadlines.
pub struct AdminIo<S> {
    stream: S,
    clock: Arc<Clock>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// A read deadline passed: every further read is end-of-stream.
    expired: bool,
}

impl<S> AdminIo<S> {
    /// Wraps an accepted stream.
    pub fn new(stream: S, clock: Arc<Clock>) -> AdminIo<S> {
        AdminIo {
            stream,
            clock,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
            expired: false,
        }
    }

    /// Polls the timer for `deadline` (re-armed when it moved); true once it passed.
    fn passed(&mut self, deadline: Instant, cx: &mut Context<'_>) -> bool {
        if self.armed != Some(deadline) {
            self.sleep.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AdminIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.saw_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.clock.read_deadline() else {
                    return Poll::Pending;
                };
                if !this.passed(deadline, cx) {
                    return Poll::Pending;
                }
                this.expired = true;
                if this.clock.head_started() {
                    // Best effort: the send buffer is empty while a head is
                    // read, so the short answer fits; a gone client loses nothing.
                    let _ = Pin::new(&mut this.stream).poll_write(cx, TIMEOUT_408);
                }
                // End of stream: hyper closes the connection.
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for AdminIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => {
                let deadline = this.clock.write_deadline();
                if this.passed(deadline, cx) {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "admin client did not read the response in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            // hyper flushes once a response is fully written: idle from now.
            this.clock.flushed();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_408_is_well_formed() {
        let text = std::str::from_utf8(TIMEOUT_408).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
