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

pub use crate::filter::{BodyTap, BoxError};

/// Taps applied in order to a streamed body (see [`BodyTap`]).
#[derive(Default)]
pub struct Taps {
    taps: Vec<Box<dyn BodyTap>>,
    /// The end of the body was given to the taps.
    ended: bool,
}

impl Taps {
    /// Taps applied in the order given.
    pub fn new(taps: Vec<Box<dyn BodyTap>>) -> Taps {
        Taps { taps, ended: false }
    }

    fn is_empty(&self) -> bool {
        self.taps.is_empty()
    }

    /// Runs a frame through the taps (trailers pass untouched and end the body).
    fn frame(&mut self, frame: Frame<Bytes>, eos: bool) -> Result<Frame<Bytes>, BoxError> {
        if self.ended {
            return Ok(frame);
        }
        match frame.into_data() {
            Ok(mut d) => {
                self.ended = eos;
                for t in &mut self.taps {
                    d = t.data(d, eos)?;
                }
                Ok(Frame::data(d))
            }
            Err(frame) => {
                self.ended = true;
                Ok(frame)
            }
        }
    }

    /// The body ended without a frame saying so: the taps see the end, and
    /// a non-empty result goes out as one last frame.
    fn end(&mut self) -> Result<Option<Bytes>, BoxError> {
        if self.ended || self.taps.is_empty() {
            self.ended = true;
            return Ok(None);
        }
        self.ended = true;
        let mut d = Bytes::new();
        for t in &mut self.taps {
            d = t.data(d, true)?;
        }
        Ok((!d.is_empty()).then_some(d))
    }
}

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

    /// The body's trailers, as they go out (before [`BodyEnd::finish`]).
    fn trailers(&mut self, _trailers: &http::HeaderMap) {}
}

/// A peer's body as it arrives: from hyper (the client's request body, and
/// responses read through hyper's client), or read by this worker's own
/// HTTP/1 client ([`super::upstream_h1`]).
pub enum PeerBody {
    Hyper(Incoming),
    H1(super::upstream_h1::H1Body),
    /// A client's request body read by the native HTTP/1 server ([`super::server_h1`]).
    Client(super::server_h1::ReqBody),
}

impl std::fmt::Debug for PeerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerBody::Hyper(b) => b.fmt(f),
            PeerBody::H1(b) => f
                .debug_struct("H1Body")
                .field("end", &b.is_end_stream())
                .finish(),
            PeerBody::Client(b) => f
                .debug_struct("ReqBody")
                .field("end", &b.is_end_stream())
                .finish(),
        }
    }
}

impl From<Incoming> for PeerBody {
    fn from(b: Incoming) -> PeerBody {
        PeerBody::Hyper(b)
    }
}

impl Body for PeerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            PeerBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            PeerBody::H1(b) => Pin::new(b).poll_frame(cx),
            PeerBody::Client(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PeerBody::Hyper(b) => b.is_end_stream(),
            PeerBody::H1(b) => b.is_end_stream(),
            PeerBody::Client(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            PeerBody::Hyper(b) => b.size_hint(),
            PeerBody::H1(b) => b.size_hint(),
            PeerBody::Client(b) => b.size_hint(),
        }
    }
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

/// The body sent upstream: nothing, the client's body streamed through, or
/// a body a filter read in full (and perhaps rewrote) with its trailers.
pub enum RequestBody {
    Empty,
    Full {
        data: Option<Bytes>,
        trailers: Option<http::HeaderMap>,
        state: Rc<RequestBodyState>,
    },
    Stream {
        inner: PeerBody,
        timer: IdleTimer,
        state: Rc<RequestBodyState>,
    },
    /// Bytes a filter read (and let go on mid-stream), then the rest of the body.
    Prefixed {
        prefix: Option<Bytes>,
        state: Rc<RequestBodyState>,
        rest: Box<RequestBody>,
    },
    /// A body whose frames pass through filters' taps.
    Tapped {
        inner: Box<RequestBody>,
        taps: Taps,
    },
}

impl RequestBody {
    /// Streams `inner` with a client inactivity `timeout`; progress lands in `state`.
    pub fn stream(inner: PeerBody, timeout: Duration, state: Rc<RequestBodyState>) -> RequestBody {
        RequestBody::Stream {
            inner,
            timer: IdleTimer::new(timeout),
            state,
        }
    }

    /// A buffered body; its bytes are counted in `state` as they go out.
    pub fn full(
        data: Bytes,
        trailers: http::HeaderMap,
        state: Rc<RequestBodyState>,
    ) -> RequestBody {
        RequestBody::Full {
            data: (!data.is_empty()).then_some(data),
            trailers: (!trailers.is_empty()).then_some(trailers),
            state,
        }
    }
}

impl RequestBody {
    /// The body to send upstream for what the request's filters left
    /// ([`super::chain::Outgoing`]); progress lands in `state` (`None`: no body).
    pub fn outgoing(
        body: super::chain::Outgoing,
        timeout: Duration,
        state: &Rc<RequestBodyState>,
    ) -> (RequestBody, Option<Rc<RequestBodyState>>) {
        use super::chain::Outgoing;
        let counted = Some(Rc::clone(state));
        match body {
            Outgoing::Empty => (RequestBody::Empty, None),
            Outgoing::Buffered(b) => (
                RequestBody::full(b.data.into(), b.trailers, Rc::clone(state)),
                counted,
            ),
            Outgoing::Stream { prefix, rest, taps } => {
                let mut body = RequestBody::stream(rest, timeout, Rc::clone(state));
                if !taps.is_empty() {
                    body = RequestBody::Tapped {
                        inner: Box::new(body),
                        taps: Taps::new(taps),
                    };
                }
                if let Some(p) = prefix {
                    body = RequestBody::Prefixed {
                        prefix: (!p.data.is_empty()).then(|| p.data.into()),
                        state: Rc::clone(state),
                        rest: Box::new(body),
                    };
                }
                (body, counted)
            }
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
            RequestBody::Prefixed {
                prefix,
                state,
                rest,
            } => match prefix.take() {
                Some(d) => {
                    state.bytes.set(state.bytes.get() + d.len() as u64);
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
            RequestBody::Tapped { inner, taps } => {
                if taps.ended && inner.is_end_stream() {
                    return Poll::Ready(None);
                }
                match Pin::new(inner.as_mut()).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let eos = inner.is_end_stream();
                        Poll::Ready(Some(taps.frame(frame, eos)))
                    }
                    Poll::Ready(None) => {
                        Poll::Ready(taps.end().transpose().map(|r| r.map(Frame::data)))
                    }
                    other => other,
                }
            }
            RequestBody::Full {
                data,
                trailers,
                state,
            } => Poll::Ready(match data.take() {
                Some(d) => {
                    state.bytes.set(state.bytes.get() + d.len() as u64);
                    Some(Ok(Frame::data(d)))
                }
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
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
                    Poll::Ready(Some(Err(e)))
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
            RequestBody::Prefixed { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
            RequestBody::Full { data, trailers, .. } => data.is_none() && trailers.is_none(),
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
            RequestBody::Tapped { inner, taps } => taps.ended && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Prefixed { prefix, rest, .. } => {
                let n = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower().saturating_add(n));
                if let Some(u) = r.upper() {
                    h.set_upper(u.saturating_add(n));
                }
                h
            }
            RequestBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Stream { inner, .. } => inner.size_hint(),
            // A tap may change the frames' sizes.
            RequestBody::Tapped { .. } => SizeHint::new(),
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    /// A body a filter read in full, then its trailers.
    Buffered(Option<Bytes>, Option<http::HeaderMap>),
    Upstream {
        inner: PeerBody,
        timer: IdleTimer,
    },
}

/// The body sent to the client.
pub struct ResponseBody {
    /// Bytes a filter read (and let go on mid-stream), sent before `kind`'s.
    prefix: Option<Bytes>,
    kind: Kind,
    /// Filters' taps over the server's frames (not the prefix: they saw it).
    taps: Taps,
    bytes: u64,
    end: Option<Box<dyn BodyEnd>>,
    /// The client connection, told how this body's data moves (see [`ClientWatch`]).
    client: Option<(Rc<super::conn::ConnState>, ClientWatch)>,
    /// HTTP/1: the rest of a server data frame larger than
    /// `conn::MAX_UNSENT`, handed to hyper in pieces of at most that size.
    carry: Option<Bytes>,
    /// The request's `grpc-timeout`: the server's body must end by then
    /// (the whole exchange is bounded, as Envoy's route timeout).
    deadline: Option<Pin<Box<Sleep>>>,
}

/// How a response body keeps its client connection informed.
enum ClientWatch {
    /// HTTP/1: the body waits while more than `conn::MAX_UNSENT` bytes are
    /// handed to hyper and not yet written, bounding what a slow client holds.
    Room,
    /// HTTP/2: the connection learns when this body waits for the client to
    /// ask for more (flow control), to close a client that never does.
    Stall { waiting: bool },
}

impl ResponseBody {
    /// A complete in-memory body.
    pub fn full(data: Bytes) -> ResponseBody {
        ResponseBody {
            prefix: None,
            kind: Kind::Full((!data.is_empty()).then_some(data)),
            taps: Taps::default(),
            bytes: 0,
            end: None,
            client: None,
            carry: None,
            deadline: None,
        }
    }

    /// A body a filter read in full from the server (and perhaps rewrote), with its trailers.
    pub fn buffered(data: Bytes, trailers: http::HeaderMap) -> ResponseBody {
        ResponseBody {
            prefix: None,
            kind: Kind::Buffered(
                (!data.is_empty()).then_some(data),
                (!trailers.is_empty()).then_some(trailers),
            ),
            taps: Taps::default(),
            bytes: 0,
            end: None,
            client: None,
            carry: None,
            deadline: None,
        }
    }

    /// An empty body.
    pub fn empty() -> ResponseBody {
        ResponseBody::full(Bytes::new())
    }

    /// The server's body streamed through with a server inactivity `timeout`.
    pub fn upstream(inner: PeerBody, timeout: Duration) -> ResponseBody {
        ResponseBody {
            prefix: None,
            kind: Kind::Upstream {
                inner,
                timer: IdleTimer::new(timeout),
            },
            taps: Taps::default(),
            bytes: 0,
            end: None,
            client: None,
            carry: None,
            deadline: None,
        }
    }

    /// The body to send the client for what the response's filters left
    /// ([`super::chain::Outgoing`]), with a server inactivity `timeout`.
    pub fn outgoing(body: super::chain::Outgoing, timeout: Duration) -> ResponseBody {
        use super::chain::Outgoing;
        match body {
            Outgoing::Empty => ResponseBody::empty(),
            Outgoing::Buffered(b) => ResponseBody::buffered(b.data.into(), b.trailers),
            Outgoing::Stream { prefix, rest, taps } => {
                let body = ResponseBody::upstream(rest, timeout).with_taps(Taps::new(taps));
                match prefix {
                    Some(p) => body.with_prefix(p.data.into()),
                    None => body,
                }
            }
        }
    }

    /// Sends `prefix` (bytes a filter already read from the server) first.
    pub fn with_prefix(mut self, prefix: Bytes) -> ResponseBody {
        self.prefix = (!prefix.is_empty()).then_some(prefix);
        self
    }

    /// Ends the server's body with an error (a reset for the client) if it
    /// is not over at `at` (the request's `grpc-timeout`).
    pub fn with_deadline(mut self, at: Instant) -> ResponseBody {
        self.deadline = Some(Box::pin(tokio::time::sleep_until(at)));
        self
    }

    /// Runs the server's frames through `taps`.
    pub fn with_taps(mut self, taps: Taps) -> ResponseBody {
        self.taps = taps;
        self
    }

    /// Ties this body to its client connection: on HTTP/2 it reports when
    /// it waits for the client (flow control); on HTTP/1 it stops reading
    /// from the server while the client lags behind.
    pub fn watch_client(mut self, conn: Rc<super::conn::ConnState>) -> ResponseBody {
        let watch = if conn.watches_stalls() {
            ClientWatch::Stall { waiting: false }
        } else {
            ClientWatch::Room
        };
        self.client = Some((conn, watch));
        self
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
        if let Some((conn, ClientWatch::Stall { waiting: true })) = &self.client {
            conn.body_resumed();
        }
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
        match &mut this.client {
            // HTTP/1: no more from the server while the client lags behind.
            Some((conn, ClientWatch::Room))
                if matches!(this.kind, Kind::Upstream { .. })
                    && conn.poll_room(cx).is_pending() =>
            {
                return Poll::Pending;
            }
            Some((conn, ClientWatch::Stall { waiting })) if *waiting => {
                *waiting = false;
                conn.body_resumed();
            }
            _ => {}
        }
        let polled = this.poll_inner(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some((conn, watch))) = (&polled, &mut this.client) {
            match watch {
                ClientWatch::Room => conn.handed(frame.data_ref().map_or(0, Bytes::len)),
                ClientWatch::Stall { waiting } if this.end.is_some() => {
                    *waiting = true;
                    conn.body_waiting();
                }
                ClientWatch::Stall { .. } => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint()
    }
}

impl ResponseBody {
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self;
        if let Some(p) = this.prefix.take() {
            this.bytes += p.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if let Some(mut rest) = this.carry.take() {
            let piece = if rest.len() > super::conn::MAX_UNSENT {
                let piece = rest.split_to(super::conn::MAX_UNSENT);
                this.carry = Some(rest);
                piece
            } else {
                rest
            };
            this.bytes += piece.len() as u64;
            if this.is_end_stream() {
                this.finish(BodyOutcome::Complete);
            }
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if !this.taps.is_empty() && this.taps.ended && this.is_end_stream() {
            // The taps' last frame went out after the server's body ended.
            this.finish(BodyOutcome::Complete);
            return Poll::Ready(None);
        }
        let polled = match &mut this.kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Buffered(data, trailers) => Poll::Ready(match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            Kind::Upstream { .. }
                if this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready()) =>
            {
                Poll::Ready(Some(Err(Box::new(TimeoutError(
                    "the request's grpc-timeout ran out while the response was streaming",
                )) as BoxError)))
            }
            Kind::Upstream { inner, timer } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    timer.progress();
                    if this.taps.is_empty() {
                        // HTTP/1: large server reads go out in bounded pieces, so
                        // hyper's write buffer never holds more than one of them.
                        let frame = match frame.into_data() {
                            Ok(mut data)
                                if data.len() > super::conn::MAX_UNSENT
                                    && matches!(this.client, Some((_, ClientWatch::Room))) =>
                            {
                                let piece = data.split_to(super::conn::MAX_UNSENT);
                                this.carry = Some(data);
                                Frame::data(piece)
                            }
                            Ok(data) => Frame::data(data),
                            Err(frame) => frame,
                        };
                        Poll::Ready(Some(Ok(frame)))
                    } else {
                        let eos = inner.is_end_stream();
                        Poll::Ready(Some(this.taps.frame(frame, eos)))
                    }
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    Poll::Ready(this.taps.end().transpose().map(|r| r.map(Frame::data)))
                }
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
                } else if let (Some(t), Some(end)) = (frame.trailers_ref(), this.end.as_mut()) {
                    end.trailers(t);
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

    fn is_end(&self) -> bool {
        if self.prefix.is_some() || self.carry.is_some() {
            return false;
        }
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Buffered(data, trailers) => data.is_none() && trailers.is_none(),
            Kind::Upstream { inner, .. } => {
                inner.is_end_stream() && (self.taps.is_empty() || self.taps.ended)
            }
        }
    }

    fn hint(&self) -> SizeHint {
        if !self.taps.is_empty() {
            // A tap may change the frames' sizes: no length may be derived.
            return SizeHint::new();
        }
        let h = match &self.kind {
            Kind::Full(data) | Kind::Buffered(data, _) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Upstream { inner, .. } => inner.size_hint(),
        };
        let n = (self.prefix.as_ref().map_or(0, Bytes::len)
            + self.carry.as_ref().map_or(0, Bytes::len)) as u64;
        if n == 0 {
            return h;
        }
        let mut out = SizeHint::new();
        out.set_lower(h.lower().saturating_add(n));
        if let Some(u) = h.upper() {
            out.set_upper(u.saturating_add(n));
        }
        out
    }
}
