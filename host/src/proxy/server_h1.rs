//! HTTP/1 for clients on the worker's own task (`[global] http1_server =
//! "native"`): the request head is read into a reused, capped buffer and
//! parsed with `httparse`, the request body is decoded straight from that
//! buffer and the socket by the body the handler reads ([`ReqBody`]), and
//! the response head and body are encoded into one reused write buffer. It
//! replaces hyper's server dispatch (its dispatcher, role and buffered IO,
//! and the channel behind `Incoming`), keeping every behaviour of that path:
//! the deadlines of [`TimedIo`] (head timeout → 408, idle close, write
//! stall), parking, pipelining, `Expect: 100-continue`, keep-alive rules for
//! HTTP/1.0 and 1.1, tunnels, and the same answers to malformed input
//! (RFC 9112 §6: CL + TE, differing lengths, a last coding other than
//! chunked, obs-fold, bad names and values).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::body::{BoxError, PeerBody, ResponseBody};
use super::conn::{ClientStream, ConnState, H1End, TimedIo};
use super::h1codec::{
    Chunked, HeadLimits, Out, decode_chunked, last_token_is, parse_content_length, push_hex,
};
use super::worker::ShutdownSignal;
use crate::config::Timeouts;

/// Bytes read from the client per read call.
const READ_CHUNK: usize = 8 << 10;
/// Longest request target accepted (hyper's limit: longer ones get 414).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// Buffered response bytes beyond which they are written before more are encoded.
const FLUSH_AT: usize = 16 << 10;
/// Write buffer capacity kept between requests (a usual response head and a small body).
const KEEP_WBUF: usize = 16 << 10;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why a request head was refused: the status answered and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadError {
    pub status: StatusCode,
    pub reason: String,
}

impl HeadError {
    fn bad(reason: impl Into<String>) -> HeadError {
        HeadError {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
        }
    }
}

/// How a request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReqFraming {
    /// No body.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` (its last coding).
    Chunked,
}

/// A parsed request head with what the connection needs to know of it.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: ReqFraming,
    /// The client allows another request on this connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue` with a body to come.
    pub expect_continue: bool,
}

/// One header found by the parser: its name and where its value lies in the head.
type RawField = (HeaderName, Range<usize>);

/// Parses a request head at the start of `buf`: `Ok(None)` while it is
/// incomplete, else its length and the head (values copied). For tests and
/// fuzzing; connections parse with the same code into their buffer.
pub fn parse_request_head(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(usize, RequestHead)>, HeadError> {
    let mut b = BytesMut::from(buf);
    let mut fields = Vec::new();
    let before = b.len();
    match take_head(&mut b, limits, &mut fields)? {
        Some(head) => Ok(Some((before - b.len(), head))),
        None => Ok(None),
    }
}

/// What the scan found before the head's bytes are frozen.
struct Scanned {
    len: usize,
    method: Method,
    path: Range<usize>,
    minor: u8,
}

/// Finds a complete request head at the start of `buf` within `limits`,
/// its fields (names, value ranges) in `fields`.
fn scan(
    buf: &[u8],
    limits: HeadLimits,
    fields: &mut Vec<RawField>,
) -> Result<Option<Scanned>, HeadError> {
    const STACK: usize = 128;
    let too_large = || HeadError {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        reason: format!(
            "request head larger than max_header_size ({} bytes)",
            limits.max_size
        ),
    };
    let mut on_stack = [httparse::EMPTY_HEADER; STACK];
    let mut on_heap;
    // One more slot than allowed, to tell "too many" from "exactly the cap".
    let want = limits.max_headers.saturating_add(1);
    let slots: &mut [httparse::Header<'_>] = if want <= STACK {
        &mut on_stack[..want]
    } else {
        on_heap = vec![httparse::EMPTY_HEADER; want];
        &mut on_heap[..]
    };
    let mut req = httparse::Request::new(slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.max_size {
                return Err(too_large());
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                reason: format!(
                    "more than max_headers ({}) header fields in the request head",
                    limits.max_headers
                ),
            });
        }
        Err(e) => {
            let what = match e {
                httparse::Error::Token if req.method.is_none() => "invalid method",
                httparse::Error::Token => "invalid request target",
                httparse::Error::HeaderName => "invalid header name",
                httparse::Error::HeaderValue => "invalid header value",
                httparse::Error::NewLine => "invalid line ending",
                httparse::Error::Version => "invalid HTTP version",
                _ => "malformed request head",
            };
            return Err(HeadError::bad(format!(
                "{what} ({e}) in the request head's first {} bytes",
                buf.len().min(limits.max_size)
            )));
        }
    };
    if len > limits.max_size {
        return Err(too_large());
    }
    if req.headers.len() > limits.max_headers {
        return Err(HeadError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason: format!(
                "more than max_headers ({}) header fields in the request head",
                limits.max_headers
            ),
        });
    }
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| {
        let start = (s.as_ptr() as usize).wrapping_sub(base);
        start..start.wrapping_add(s.len())
    };
    let path = req.path.unwrap_or("/");
    if path.len() > MAX_URI_LEN {
        return Err(HeadError {
            status: StatusCode::URI_TOO_LONG,
            reason: format!("request target longer than {MAX_URI_LEN} bytes"),
        });
    }
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::bad("invalid method"))?;
    let path = offset(path.as_bytes());
    if path.end > len {
        return Err(HeadError::bad("request target outside the head"));
    }
    fields.clear();
    fields.reserve(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::bad(format!("invalid header name {:?}", h.name)))?;
        // An empty value need not point into `buf`.
        let range = if h.value.is_empty() {
            0..0
        } else {
            offset(h.value)
        };
        if range.end > len {
            return Err(HeadError::bad("header value outside the head"));
        }
        fields.push((name, range));
    }
    Ok(Some(Scanned {
        len,
        method,
        path,
        minor: req.version.unwrap_or(1),
    }))
}

/// Takes a complete request head off the front of `buf` (its values then
/// share the head's bytes), settling framing and keep-alive as hyper's
/// server does (RFC 9112 §6.1-6.3).
fn take_head(
    buf: &mut BytesMut,
    limits: HeadLimits,
    fields: &mut Vec<RawField>,
) -> Result<Option<RequestHead>, HeadError> {
    let Some(s) = scan(buf, limits, fields)? else {
        return Ok(None);
    };
    let head = buf.split_to(s.len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(s.path))
        .map_err(|e| HeadError::bad(format!("invalid request target ({e})")))?;
    let http11 = s.minor == 1;
    let version = if http11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut keep_alive = http11;
    let mut close = false;
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut length: Option<u64> = None;
    let mut te: Option<bool> = None;
    let mut has_cl = false;
    let mut expect_continue = false;
    for (name, range) in fields.drain(..) {
        let value = head.slice(range);
        if name == header::TRANSFER_ENCODING {
            if !http11 {
                return Err(HeadError::bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            // Each line's last coding counts, the last line's in the end.
            te = Some(last_token_is(&value, b"chunked"));
        } else if name == header::CONTENT_LENGTH {
            has_cl = true;
            if te.is_some() {
                continue;
            }
            let n = parse_content_length(&value).map_err(HeadError::bad)?;
            match length {
                Some(m) if m != n => {
                    return Err(HeadError::bad(format!(
                        "different Content-Length values ({m} and {n})"
                    )));
                }
                // The same length again: kept once.
                Some(_) => continue,
                None => length = Some(n),
            }
        } else if name == header::CONNECTION {
            // Once a line asks to close, a later `keep-alive` does not undo it.
            if close || has_token(&value, b"close") {
                close = true;
                keep_alive = false;
            } else if !keep_alive {
                keep_alive = has_token(&value, b"keep-alive");
            }
        } else if name == header::EXPECT {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| HeadError::bad(format!("invalid value of header {name}")))?;
        headers.append(name, value);
    }
    let framing = match te {
        Some(false) => {
            return Err(HeadError::bad(
                "Transfer-Encoding whose last coding is not chunked",
            ));
        }
        Some(true) => {
            if has_cl {
                // Both: chunked wins, the length goes, and the connection
                // closes after this exchange (RFC 9112 §6.3, HAProxy).
                headers.remove(header::CONTENT_LENGTH);
                keep_alive = false;
            }
            ReqFraming::Chunked
        }
        None => match length {
            Some(0) | None => ReqFraming::None,
            Some(n) => ReqFraming::Length(n),
        },
    };
    Ok(Some(RequestHead {
        method: s.method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue: expect_continue && framing != ReqFraming::None,
    }))
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Where the current request body's decoder is.
#[derive(Debug, Clone, Copy)]
enum Decode {
    Done,
    Length(u64),
    Chunked(Chunked),
    /// Malformed or cut short: nothing more is read, the connection closes.
    Failed,
}

/// The connection as the request body sees it (the body's type does not
/// depend on the stream's: TCP or TLS).
trait BodySource {
    fn poll_body(
        &mut self,
        seq: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    fn body_ended(&self, seq: u64) -> bool;
    fn body_hint(&self, seq: u64) -> SizeHint;
}

/// One client connection's socket and buffers, shared by the serve loop
/// and the current request's body (never borrowed across an await).
struct Wire<S> {
    /// `None` once handed to a tunnel.
    io: Option<TimedIo<S>>,
    /// Bytes read and not yet consumed: a head, body bytes, the next request.
    rbuf: BytesMut,
    fields: Vec<RawField>,
    limits: HeadLimits,
    /// The current request's number: a body of an earlier one reads nothing.
    seq: u64,
    decode: Decode,
    /// `100 Continue` bytes still to write before the body is read.
    cont: Option<usize>,
}

#[derive(Debug)]
struct BodyError(String);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BodyError {}

fn body_err(msg: impl Into<String>) -> BoxError {
    Box::new(BodyError(msg.into()))
}

impl<S: ClientStream> Wire<S> {
    /// Reads more bytes into `rbuf`: how many (0: the client closed).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK {
            self.rbuf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.rbuf)
    }

    /// Decodes a frame of the body from what is buffered: `Err(None)` when
    /// more bytes are needed.
    fn decode_buffered(&mut self) -> Result<Option<Frame<Bytes>>, Option<BoxError>> {
        match &mut self.decode {
            Decode::Done | Decode::Failed => Ok(None),
            Decode::Length(_) if self.rbuf.is_empty() => Err(None),
            Decode::Length(left) => {
                let n = (self.rbuf.len() as u64).min(*left);
                *left -= n;
                let data = self.rbuf.split_to(n as usize).freeze();
                if *left == 0 {
                    self.decode = Decode::Done;
                }
                Ok(Some(Frame::data(data)))
            }
            Decode::Chunked(state) => match decode_chunked(&mut self.rbuf, state, self.limits) {
                Err(e) => {
                    self.decode = Decode::Failed;
                    Err(Some(body_err(format!("invalid chunked request body: {e}"))))
                }
                Ok(Out::More) => Err(None),
                Ok(Out::End) => {
                    self.decode = Decode::Done;
                    Ok(None)
                }
                Ok(Out::Trailers(t)) => {
                    self.decode = Decode::Done;
                    Ok(Some(Frame::trailers(t)))
                }
                Ok(Out::Data(d)) => {
                    if *state == Chunked::End {
                        self.decode = Decode::Done;
                    }
                    Ok(Some(Frame::data(d)))
                }
            },
        }
    }

    /// Writes what is left of `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(at) = self.cont {
            let Some(io) = self.io.as_mut() else {
                self.cont = None;
                break;
            };
            let rest = CONTINUE.get(at..).unwrap_or_default();
            if rest.is_empty() {
                self.cont = None;
                break;
            }
            match ready!(Pin::new(&mut *io).poll_write(cx, rest)) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.cont = Some(at + n),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: ClientStream> BodySource for Wire<S> {
    fn poll_body(
        &mut self,
        seq: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if seq != self.seq {
            // An earlier request's body, still held (by an upstream client
            // sending it): its end was never read, so it ends in an error,
            // never in a clean end the server would trust.
            return Poll::Ready(Some(Err(body_err(
                "the request body was abandoned by its connection",
            ))));
        }
        loop {
            match self.decode_buffered() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => return Poll::Ready(None),
                Err(Some(e)) => return Poll::Ready(Some(Err(e))),
                Err(None) => {}
            }
            if let Err(e) = ready!(self.poll_continue(cx)) {
                self.decode = Decode::Failed;
                return Poll::Ready(Some(Err(Box::new(e))));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    self.decode = Decode::Failed;
                    return Poll::Ready(Some(Err(body_err(
                        "the client closed the connection in the middle of the request body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    self.decode = Decode::Failed;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn body_ended(&self, seq: u64) -> bool {
        seq == self.seq && matches!(self.decode, Decode::Done | Decode::Failed)
    }

    fn body_hint(&self, seq: u64) -> SizeHint {
        match self.decode {
            _ if seq != self.seq => SizeHint::default(),
            Decode::Done | Decode::Failed => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Chunked(_) => SizeHint::default(),
        }
    }
}

/// The client's request body, read straight from its connection by
/// whoever polls it (the handler, or the upstream client sending it).
pub struct ReqBody {
    wire: Rc<RefCell<dyn BodySource>>,
    seq: u64,
}

impl ReqBody {
    /// Whether the body is over.
    pub fn ended(&self) -> bool {
        self.wire.try_borrow().is_ok_and(|w| w.body_ended(self.seq))
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.wire.try_borrow_mut() {
            Ok(mut w) => w.poll_body(this.seq, cx),
            Err(_) => Poll::Ready(Some(Err(body_err(
                "the request body was read while its connection was busy",
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        self.wire
            .try_borrow()
            .map_or_else(|_| SizeHint::default(), |w| w.body_hint(self.seq))
    }
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enc {
    /// This many bytes are still due (0: no body is sent, HEAD, 204, 304).
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, or no chunking possible).
    Close,
}

/// What the response head's encoding settled.
struct Encoded {
    enc: Enc,
    /// The connection closes after this response.
    last: bool,
    /// Trailer fields the `Trailer` header declared (only those are sent).
    trailers: Option<Vec<HeaderName>>,
}

/// The response body's length as hyper's server sees it.
#[derive(Debug, Clone, Copy)]
enum BodyLen {
    /// The body is already over.
    None,
    Known(u64),
    Unknown,
}

/// Appends `HTTP/1.x status reason` and the fields as hyper's server writes
/// them (lower-case names; `Connection`, `Transfer-Encoding` and `Trailer`
/// values joined on one line; `content-length` or `transfer-encoding:
/// chunked` added when missing and allowed; a `date`), settling framing and
/// whether the connection closes after.
fn encode_head(
    buf: &mut Vec<u8>,
    resp: &mut http::response::Parts,
    body: BodyLen,
    method: &Method,
    req_version: Version,
    keep_alive: bool,
) -> Encoded {
    let status = resp.status;
    let v10 = req_version == Version::HTTP_10;
    let headers = &mut resp.headers;
    // hyper's `enforce_version`: the client learns whether the connection stays.
    if v10 {
        if keep_alive
            && !headers
                .get_all(header::CONNECTION)
                .iter()
                .any(|v| has_token(v.as_bytes(), b"keep-alive"))
        {
            headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    } else if !keep_alive
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"))
    {
        headers.append(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let connect_ok = *method == Method::CONNECT && status.is_success();
    let head_req = *method == Method::HEAD;
    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let can_chunk = !(head_req || connect_ok || no_content);
    let can_have_length = !(connect_ok || no_content);
    let mut last = !keep_alive || status == StatusCode::SWITCHING_PROTOCOLS || connect_ok;
    let mut wrote_len = connect_ok;

    let reason = resp.extensions.get::<hyper::ext::ReasonPhrase>();
    if !v10 && status == StatusCode::OK && reason.is_none() {
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        buf.extend_from_slice(if v10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        buf.extend_from_slice(status.as_str().as_bytes());
        buf.push(b' ');
        match reason {
            Some(r) => buf.extend_from_slice(r.as_bytes()),
            None => buf.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes()),
        }
        buf.extend_from_slice(b"\r\n");
    }

    let mut enc = Enc::Length(0);
    let mut trailers: Option<Vec<HeaderName>> = None;
    let mut wrote_date = false;
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        if *name == header::CONTENT_LENGTH {
            let Some(first) = values.next() else { continue };
            match body {
                BodyLen::Known(n) => enc = Enc::Length(n),
                BodyLen::Unknown => match parse_content_length(first.as_bytes()) {
                    Ok(n) => enc = Enc::Length(n),
                    // Not a length: the body goes as its own framing says.
                    Err(_) => continue,
                },
                BodyLen::None if head_req => {}
                BodyLen::None => continue,
            }
            wrote_len = true;
            push_field(buf, b"content-length", first.as_bytes());
            continue;
        }
        if *name == header::TRANSFER_ENCODING {
            if v10 || !can_chunk {
                continue;
            }
            wrote_len = true;
            enc = Enc::Chunked;
            buf.extend_from_slice(b"transfer-encoding: ");
            let mut chunked_last = false;
            for (i, v) in values.enumerate() {
                if i > 0 {
                    buf.extend_from_slice(b", ");
                }
                buf.extend_from_slice(v.as_bytes());
                chunked_last = last_token_is(v.as_bytes(), b"chunked");
            }
            if !chunked_last {
                buf.extend_from_slice(b", chunked");
            }
            buf.extend_from_slice(b"\r\n");
            continue;
        }
        if *name == header::CONNECTION || *name == header::TRAILER {
            if *name == header::TRAILER && (v10 || !can_chunk) {
                continue;
            }
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            for (i, v) in values.enumerate() {
                if i > 0 {
                    buf.extend_from_slice(b", ");
                }
                buf.extend_from_slice(v.as_bytes());
                if *name == header::CONNECTION {
                    last |= has_token(v.as_bytes(), b"close");
                } else {
                    let names = trailers.get_or_insert_with(Vec::new);
                    names.extend(
                        v.as_bytes()
                            .split(|b| *b == b',')
                            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok()),
                    );
                }
            }
            buf.extend_from_slice(b"\r\n");
            continue;
        }
        if *name == header::DATE {
            wrote_date = true;
        }
        for v in values {
            push_field(buf, name.as_str().as_bytes(), v.as_bytes());
        }
    }
    if !wrote_len {
        enc = match body {
            BodyLen::Unknown if v10 || !can_chunk => Enc::Close,
            BodyLen::Unknown => {
                buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Enc::Chunked
            }
            BodyLen::None | BodyLen::Known(0) => {
                if can_have_length && !head_req {
                    buf.extend_from_slice(b"content-length: 0\r\n");
                }
                Enc::Length(0)
            }
            BodyLen::Known(n) if can_have_length => {
                buf.extend_from_slice(b"content-length: ");
                push_dec(buf, n);
                buf.extend_from_slice(b"\r\n");
                Enc::Length(n)
            }
            BodyLen::Known(_) => Enc::Length(0),
        };
    }
    if !can_chunk {
        enc = Enc::Length(0);
    }
    if !wrote_date {
        buf.extend_from_slice(b"date: ");
        push_date(buf);
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    if enc == Enc::Close {
        last = true;
    }
    Encoded {
        enc,
        last,
        trailers: if enc == Enc::Chunked { trailers } else { None },
    }
}

/// Appends `n` in decimal, without allocating.
fn push_dec(buf: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

fn push_field(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date, formatted once per second
/// per thread (as hyper caches it).
fn push_date(buf: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let Ok(mut d) = d.try_borrow_mut() else {
            buf.extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            return;
        };
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            } else {
                buf.extend_from_slice(text.as_bytes());
                return;
            }
        }
        buf.extend_from_slice(&d.1);
    });
}

/// Appends `trailers` the response declared in its `Trailer` header.
fn push_trailers(buf: &mut Vec<u8>, trailers: &HeaderMap, allowed: &[HeaderName]) {
    for (name, value) in trailers {
        let forbidden = *name == header::CONTENT_LENGTH
            || *name == header::TRANSFER_ENCODING
            || *name == header::HOST
            || *name == header::TRAILER
            || *name == header::CONTENT_TYPE
            || *name == header::AUTHORIZATION;
        if !forbidden && allowed.contains(name) {
            push_field(buf, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Runs `fut`, marking the connection draining once shutdown begins
/// (responses then carry `Connection: close`).
async fn watching<F: Future>(
    fut: F,
    state: &ConnState,
    shutdown: &mut ShutdownSignal,
) -> F::Output {
    let mut seen = state.is_draining();
    let wait = shutdown.wait();
    tokio::pin!(wait);
    tokio::pin!(fut);
    std::future::poll_fn(|cx| {
        if !seen && wait.as_mut().poll(cx).is_ready() {
            seen = true;
            state.start_drain();
        }
        fut.as_mut().poll(cx)
    })
    .await
}

/// What reading a request head came to.
enum Got {
    Head(RequestHead),
    /// Idle past [`super::conn::PARK_AFTER`]: give the buffers back.
    Park,
    /// The client closed, or a deadline passed (a 408 was sent if a head had begun).
    Closed,
    Refused(HeadError),
    Failed(io::Error),
}

/// Serves requests on `stream` until the connection ends or parks (the
/// native counterpart of hyper's connection in `conn::run_h1`).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<S: ClientStream>(
    stream: S,
    prefix: Bytes,
    state: &Rc<ConnState>,
    ctx: &Rc<super::handler::ConnCtx>,
    limits: HeadLimits,
    timeouts: &Timeouts,
    park_base: Instant,
    shutdown: &mut ShutdownSignal,
) -> H1End<S> {
    let io = TimedIo::new(stream, prefix, Rc::clone(state), timeouts, Some(park_base));
    let wire = Rc::new(RefCell::new(Wire {
        io: Some(io),
        rbuf: BytesMut::new(),
        fields: Vec::new(),
        limits,
        seq: 0,
        decode: Decode::Done,
        cont: None,
    }));
    let mut wbuf: Vec<u8> = Vec::new();
    let outcome = watching(serve(&wire, state, ctx, &mut wbuf), state, shutdown).await;
    // The socket and what was read past the last request, out of the
    // wire (a request body still held elsewhere then reads nothing).
    let taken = wire
        .try_borrow_mut()
        .ok()
        .and_then(|mut w| Some((w.io.take()?, std::mem::take(&mut w.rbuf))));
    let Some((io, rbuf)) = taken else {
        return H1End::Done(None);
    };
    match outcome {
        Ended::Park => {
            // Only what was read of a next request stays, copied: the read
            // buffer's allocation goes.
            let (stream, unread) = io.into_parts();
            let mut prefix = Vec::with_capacity(rbuf.len() + unread.len());
            prefix.extend_from_slice(&rbuf);
            prefix.extend_from_slice(&unread);
            state.unpark();
            H1End::Parked(stream, Bytes::from(prefix))
        }
        Ended::Tunnel => {
            let Some(tunnel) = state.take_tunnel() else {
                return H1End::Done(None);
            };
            let (stream, unread) = io.into_parts();
            let client = super::upgraded::Rewound::new(rbuf.freeze(), unread, stream);
            // Boxed: rare, and larger than the rest of this future.
            Box::pin(tunnel.run(Box::new(client))).await;
            H1End::Done(None)
        }
        Ended::Close(error) => {
            if let Some(tunnel) = state.take_tunnel() {
                tunnel.abandon();
            }
            let mut io = io;
            let _ = tokio::time::timeout(
                timeouts.client,
                std::future::poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)),
            )
            .await;
            if state.had_body() {
                let (stream, _) = io.into_parts();
                // Boxed: its 4 KiB sink would otherwise be part of this future.
                Box::pin(super::conn::linger(stream.into_tcp())).await;
            }
            H1End::Done(error)
        }
        Ended::Silent => H1End::Done(None),
    }
}

/// How the request loop ended.
enum Ended {
    Park,
    /// A tunnel's answer went out: the socket is the tunnel's.
    Tunnel,
    /// Close after what was written (a refused head's error, if any).
    Close(Option<(u16, String)>),
    /// Drop the socket (it failed, or the client is gone).
    Silent,
}

/// Borrows the wire for one synchronous step.
fn with<S, R>(wire: &Rc<RefCell<Wire<S>>>, f: impl FnOnce(&mut Wire<S>) -> R) -> Option<R> {
    wire.try_borrow_mut().ok().map(|mut w| f(&mut w))
}

/// The request loop: head, handler, response; again while keep-alive holds.
async fn serve<S: ClientStream>(
    wire: &Rc<RefCell<Wire<S>>>,
    state: &Rc<ConnState>,
    ctx: &Rc<super::handler::ConnCtx>,
    wbuf: &mut Vec<u8>,
) -> Ended {
    loop {
        let got = std::future::poll_fn(|cx| {
            with(wire, |w| poll_head(w, state, cx)).unwrap_or(Poll::Ready(Got::Closed))
        })
        .await;
        let head = match got {
            Got::Head(h) => h,
            Got::Park => return Ended::Park,
            Got::Closed => return Ended::Close(None),
            Got::Failed(e) => {
                tracing::debug!(error = %e, "client connection failed");
                return Ended::Silent;
            }
            Got::Refused(e) => {
                let page = state.raw_error(e.status);
                wbuf.clear();
                wbuf.extend_from_slice(&page);
                if flush_all(wire, wbuf).await.is_err() {
                    return Ended::Silent;
                }
                return Ended::Close(Some((e.status.as_u16(), e.reason)));
            }
        };
        let RequestHead {
            method,
            uri,
            version,
            headers,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let seq = with(wire, |w| {
            w.seq += 1;
            w.decode = match framing {
                ReqFraming::None => Decode::Done,
                ReqFraming::Length(n) => Decode::Length(n),
                ReqFraming::Chunked => Decode::Chunked(Chunked::Size),
            };
            w.cont = expect_continue.then_some(0);
            w.seq
        })
        .unwrap_or(0);
        let source: Rc<RefCell<dyn BodySource>> = Rc::clone(wire) as Rc<RefCell<dyn BodySource>>;
        let mut req = Request::new(PeerBody::Client(ReqBody { wire: source, seq }));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        let Ok(resp) = super::handler::handle(req, Rc::clone(ctx)).await;
        let (mut parts, body) = resp.into_parts();
        let len = if body.is_end_stream() {
            BodyLen::None
        } else {
            match body.size_hint().exact() {
                Some(n) => BodyLen::Known(n),
                None => BodyLen::Unknown,
            }
        };
        let keep = keep_alive && !state.close_after_response();
        wbuf.clear();
        let encoded = encode_head(wbuf, &mut parts, len, &method, version, keep);
        if state.has_tunnel() {
            drop(body);
            if flush_all(wire, wbuf).await.is_err() {
                return Ended::Silent;
            }
            return Ended::Tunnel;
        }
        let complete = match send_body(wire, wbuf, body, &encoded).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "writing a response to the client failed");
                return Ended::Silent;
            }
        };
        if wbuf.capacity() > KEEP_WBUF {
            *wbuf = Vec::new();
        }
        // A request body the handler left unread: what is buffered is
        // dropped; if more is due, the connection cannot carry another request.
        let body_over = with(wire, |w| {
            loop {
                match w.decode_buffered() {
                    Ok(Some(_)) => {}
                    Ok(None) => break matches!(w.decode, Decode::Done),
                    Err(_) => break false,
                }
            }
        })
        .unwrap_or(false);
        state.response_sent();
        if encoded.last || !complete || !body_over {
            return Ended::Close(None);
        }
    }
}

/// Polls for a complete request head: parses what is buffered, reads more.
fn poll_head<S: ClientStream>(
    w: &mut Wire<S>,
    state: &ConnState,
    cx: &mut Context<'_>,
) -> Poll<Got> {
    loop {
        if !w.rbuf.is_empty() {
            state.head_begun();
            match take_head(&mut w.rbuf, w.limits, &mut w.fields) {
                Ok(Some(head)) => return Poll::Ready(Got::Head(head)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Got::Refused(e)),
            }
        }
        match w.poll_fill(cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Got::Closed),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Got::Failed(e)),
            Poll::Pending if state.wants_park() => return Poll::Ready(Got::Park),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Writes all of `wbuf` to the client, then flushes; `wbuf` is left empty.
async fn flush_all<S: ClientStream>(
    wire: &Rc<RefCell<Wire<S>>>,
    wbuf: &mut Vec<u8>,
) -> io::Result<()> {
    let mut at = 0;
    std::future::poll_fn(|cx| {
        let Ok(mut w) = wire.try_borrow_mut() else {
            return Poll::Ready(Err(io::Error::other("connection busy")));
        };
        let Some(io) = w.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while at < wbuf.len() {
            match ready!(Pin::new(&mut *io).poll_write(cx, &wbuf[at..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => at += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut *io).poll_flush(cx)
    })
    .await?;
    wbuf.clear();
    Ok(())
}

/// Streams the response body after its head (in `wbuf`): `Ok(false)` when
/// the body ended short of its declared length (the connection must close).
async fn send_body<S: ClientStream>(
    wire: &Rc<RefCell<Wire<S>>>,
    wbuf: &mut Vec<u8>,
    body: ResponseBody,
    encoded: &Encoded,
) -> io::Result<bool> {
    let mut enc = encoded.enc;
    if enc == Enc::Length(0) {
        // No body goes out (HEAD, 204, 304, or an empty one): it is dropped unread.
        drop(body);
        flush_all(wire, wbuf).await?;
        return Ok(true);
    }
    let mut body = std::pin::pin!(body);
    loop {
        let frame = match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).now_or_pending() {
            Some(f) => f,
            None => {
                // Nothing at hand: what is encoded goes out while the body waits.
                if !wbuf.is_empty() {
                    flush_all(wire, wbuf).await?;
                }
                std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    match &mut enc {
                        Enc::Length(left) => {
                            let n = (data.len() as u64).min(*left);
                            wbuf.extend_from_slice(&data[..n as usize]);
                            *left -= n;
                        }
                        Enc::Chunked => {
                            push_hex(wbuf, data.len() as u64);
                            wbuf.extend_from_slice(b"\r\n");
                            wbuf.extend_from_slice(&data);
                            wbuf.extend_from_slice(b"\r\n");
                        }
                        Enc::Close => wbuf.extend_from_slice(&data),
                    }
                }
                Err(frame) => {
                    if enc == Enc::Chunked {
                        wbuf.extend_from_slice(b"0\r\n");
                        if let (Ok(t), Some(allowed)) = (frame.into_trailers(), &encoded.trailers) {
                            push_trailers(wbuf, &t, allowed);
                        }
                        wbuf.extend_from_slice(b"\r\n");
                        flush_all(wire, wbuf).await?;
                        return Ok(true);
                    }
                }
            },
            Some(Err(e)) => {
                // The server's body failed: what went out stays, the
                // connection closes (the client sees the body cut short).
                flush_all(wire, wbuf).await?;
                tracing::debug!(error = %e, "response body failed mid-stream");
                return Ok(false);
            }
            None => {
                let complete = match enc {
                    Enc::Chunked => {
                        wbuf.extend_from_slice(b"0\r\n\r\n");
                        true
                    }
                    Enc::Length(left) => left == 0,
                    Enc::Close => true,
                };
                flush_all(wire, wbuf).await?;
                return Ok(complete);
            }
        }
        if wbuf.len() >= FLUSH_AT {
            flush_all(wire, wbuf).await?;
        }
    }
}

/// Polls a future once: its output if it is ready now.
trait NowOrPending: Future + Sized {
    fn now_or_pending(self) -> Option<Self::Output>;
}

impl<F: Future> NowOrPending for F {
    fn now_or_pending(self) -> Option<Self::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let fut = std::pin::pin!(self);
        match fut.poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }
}
