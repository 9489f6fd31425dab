//! Body types: the client's request body on its way upstream and the
//! response body on its way to the client, both streamed frame by frame.
//!
//! Each applies an inactivity timeout and counts bytes; the response body
//! also runs the exchange's end-of-stream work (return the upstream
//! connection to the pool, release leastconn load, write the access log)
//! exactly once, when the body ends or is dropped.

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Error type of both bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Every byte was delivered.
    Complete,
    /// The client went away (the body was dropped before its end).
    Aborted,
    /// The server failed or timed out mid-body.
    UpstreamError,
}

/// Work to run once when a response body is over.
pub trait BodyEnd {
    /// Called exactly once with how the body ended and how many body bytes went out.
    fn finish(self: Box<Self>, outcome: BodyOutcome, bytes: u64);
}

/// Shared view of a request body's progress, read by the handler after the exchange.
#[derive(Debug, Default)]
pub struct RequestBodyState {
    /// The client stopped sending for longer than the client timeout.
    pub timed_out: Cell<bool>,
    /// The client's body stream failed (reset, malformed chunking).
    pub failed: Cell<bool>,
    /// Body bytes received from the client.
    pub bytes: Cell<u64>,
}

/// An inactivity timer armed only when a stream has to wait, so a body whose
/// data is already at hand costs no timer at all.
pub struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl IdleTimer {
    fn new(timeout: Duration) -> IdleTimer {
        IdleTimer {
            timeout,
            sleep: None,
            progressed: false,
        }
    }

    /// Data moved: the idle period starts again at the next wait.
    fn progress(&mut self) {
        self.progressed = true;
    }

    /// The stream is waiting: ready once it has waited `timeout` without progress.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if self.progressed {
                    sleep.as_mut().reset(Instant::now() + timeout);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(timeout))),
        };
        self.progressed = false;
        sleep.as_mut().poll(cx)
    }
}

/// The body sent upstream: nothing, or the client's body streamed through.
pub enum RequestBody {
    Empty,
    Stream {
        inner: Incoming,
        timer: IdleTimer,
        state: Rc<RequestBodyState>,
    },
}

impl RequestBody {
    /// Streams `inner` with a client inactivity `timeout`; progress lands in `state`.
    pub fn stream(inner: Incoming, timeout: Duration, state: Rc<RequestBodyState>) -> RequestBody {
        RequestBody::Stream {
            inner,
            timer: IdleTimer::new(timeout),
            state,
        }
    }
}

#[derive(Debug)]
struct TimeoutError(&'static str);

impl std::fmt::Display for TimeoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for TimeoutError {}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Stream {
                inner,
                timer,
                state,
            } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        state.bytes.set(state.bytes.get() + d.len() as u64);
                    }
                    timer.progress();
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    state.failed.set(true);
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match timer.poll_expired(cx) {
                    Poll::Ready(()) => {
                        state.timed_out.set(true);
                        Poll::Ready(Some(Err(Box::new(TimeoutError(
                            "client timeout while sending the request body",
                        )))))
                    }
                    Poll::Pending => Poll::Pending,
                },
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream { inner: Incoming, timer: IdleTimer },
}

/// The body sent to the client.
pub struct ResponseBody {
    kind: Kind,
    bytes: u64,
    end: Option<Box<dyn BodyEnd>>,
}

impl ResponseBody {
    /// A complete in-memory body.
    pub fn full(data: Bytes) -> ResponseBody {
        ResponseBody {
            kind: Kind::Full((!data.is_empty()).then_some(data)),
            bytes: 0,
            end: None,
        }
    }

    /// An empty body.
    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    /// The server's body streamed through with a server inactivity `timeout`.
    pub fn upstream(inner: Incoming, timeout: Duration) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream {
                inner,
                timer: IdleTimer::new(timeout),
            },
            bytes: 0,
            end: None,
        }
    }

    /// Runs `end` once this body is over.
    pub fn on_end(mut self, end: Box<dyn BodyEnd>) -> ResponseBody {
        self.end = Some(end);
        self
    }

    fn finish(&mut self, outcome: BodyOutcome) {
        if let Some(end) = self.end.take() {
            end.finish(outcome, self.bytes);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        let outcome = if self.is_end_stream() {
            BodyOutcome::Complete
        } else {
            BodyOutcome::Aborted
        };
        self.finish(outcome);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream { inner, timer } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    timer.progress();
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BoxError::from(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => match timer.poll_expired(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(TimeoutError(
                        "server timeout while sending the response body",
                    )) as BoxError))),
                    Poll::Pending => Poll::Pending,
                },
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(BodyOutcome::Complete);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(BodyOutcome::UpstreamError),
            Poll::Ready(None) => this.finish(BodyOutcome::Complete),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
