//! HTTP/1.1 to servers on the worker's own task: the request head is encoded
//! into a reused buffer and written, the request body streamed, and the
//! response head parsed (`httparse`) and its body decoded by the task that
//! serves the client, with no channel and no second task in between (the
//! cost hyper's client dispatch adds: bench/README.md).
//!
//! A connection lives in one of three places: idle in the [`NativePool`],
//! owned by the exchange that writes a request and reads its head, then owned
//! by the response body ([`H1Body`]) while it streams. When the body ends
//! cleanly and both sides allow keep-alive, the body leaves the connection in
//! its [`Lease`]'s slot, and the end-of-exchange work checks it in; any other
//! end drops it, which closes the socket. Upgrades (`101`) keep using
//! hyper's connection (`pool.rs`), which hands its socket to the tunnel.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::{BoxError, RequestBody, RequestBodyState};
use super::pool::{ConnectError, Dialed, dial};
use crate::runtime::Runtime;
use crate::tls::client::Target;

/// Bytes read from a server per read call (as hyper's path: `pool.rs`).
const READ_CHUNK: usize = 12 << 10;
/// Write buffer capacity an idle connection may keep (a usual request head).
const IDLE_WBUF: usize = 4096;
/// Interim (1xx) responses skipped before the final one, at most.
const MAX_INTERIM: usize = 16;
/// Request body frames up to this size are copied next to their chunk
/// header, so a small body goes out in the same write as its framing.
const COPY_FRAME: usize = 4096;

pub use super::h1codec::HeadLimits;
use super::h1codec::{Chunked, Out, decode_chunked, last_token_is, parse_content_length, push_hex};

/// Why an exchange with a server failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The server's bytes are not a valid HTTP/1 response (or break a cap).
    #[error("server sent an invalid response: {0}")]
    Invalid(String),
    /// The socket failed while reading or writing.
    #[error("server closed or reset the connection: {0}")]
    Io(#[source] io::Error),
    /// The server closed the connection before its response was complete.
    #[error("server closed or reset the connection: {0}")]
    Closed(&'static str),
    /// The request body failed (the client's stream, or a filter's tap) or
    /// did not match its declared length.
    #[error("request body failed: {0}")]
    Body(BoxError),
}

/// How a message's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, or a request without one).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection (never reused after).
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body's framing as the head declares it (HEAD/204/304 are the
    /// caller's: see [`body_framing`]).
    pub framing: Framing,
    /// The server allows another request on this connection (a body read
    /// until the close still ends it: see [`body_framing`]).
    pub keep_alive: bool,
}

/// The framing of a response to a request with `method`: no body for HEAD,
/// 1xx, 204 and 304 whatever the head says (RFC 9112 §6.3).
pub fn body_framing(method: &Method, head: &ResponseHead) -> Framing {
    let s = head.status.as_u16();
    if *method == Method::HEAD || (100..200).contains(&s) || s == 204 || s == 304 {
        Framing::None
    } else {
        head.framing
    }
}

/// One header found by the parser: its name and where its value lies in the head.
type RawField = (HeaderName, Range<usize>);

/// Parses a response head at the start of `buf`: `Ok(None)` while it is
/// incomplete (more bytes may complete it), else its length and the head.
/// Header values are copied out of `buf` (the connection's path shares them).
pub fn parse_response_head(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(usize, ResponseHead)>, String> {
    let mut fields = Vec::new();
    let Some(raw) = scan_head(buf, limits, &mut fields)? else {
        return Ok(None);
    };
    let head = Bytes::copy_from_slice(&buf[..raw.len]);
    let len = raw.len;
    Ok(Some((len, build_head(raw, &head, &mut fields)?)))
}

/// What [`scan_head`] found before the head's bytes are frozen.
struct RawHead {
    len: usize,
    status: u16,
    minor: u8,
}

/// Finds a complete head at the start of `buf` within `limits`, its fields
/// (names, value ranges) in `fields`.
fn scan_head(
    buf: &[u8],
    limits: HeadLimits,
    fields: &mut Vec<RawField>,
) -> Result<Option<RawHead>, String> {
    const STACK: usize = 128;
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
    let mut resp = httparse::Response::new(slots);
    let status = match resp.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!(
                "more than max_headers ({}) header fields in the response head",
                limits.max_headers
            ));
        }
        Err(e) => {
            let at = buf.len().min(limits.max_size);
            return Err(format!(
                "malformed response head ({e}) in its first {at} bytes"
            ));
        }
    };
    let len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => {
            if buf.len() >= limits.max_size {
                return Err(format!(
                    "response head larger than max_header_size ({} bytes)",
                    limits.max_size
                ));
            }
            return Ok(None);
        }
    };
    if len > limits.max_size {
        return Err(format!(
            "response head of {len} bytes, larger than max_header_size ({} bytes)",
            limits.max_size
        ));
    }
    if resp.headers.len() > limits.max_headers {
        return Err(format!(
            "more than max_headers ({}) header fields in the response head",
            limits.max_headers
        ));
    }
    let base = buf.as_ptr() as usize;
    fields.clear();
    fields.reserve(resp.headers.len());
    /// The usual response fields as servers write them (`Content-Type`, or
    /// all lower case) are known names at once: `HeaderName::from_bytes`
    /// lower-cases every name into a buffer, then matches it against all
    /// the standard names; any other spelling still goes through it.
    fn known(name: &[u8]) -> Option<HeaderName> {
        Some(match name {
            b"Date" | b"date" => header::DATE,
            b"Server" | b"server" => header::SERVER,
            b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
            b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
            b"Connection" | b"connection" => header::CONNECTION,
            b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
            b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
            b"ETag" | b"etag" => header::ETAG,
            b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
            b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
            b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
            b"Vary" | b"vary" => header::VARY,
            b"Expires" | b"expires" => header::EXPIRES,
            b"Location" | b"location" => header::LOCATION,
            b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
            _ => return None,
        })
    }
    for h in resp.headers.iter() {
        let name = match known(h.name.as_bytes()) {
            Some(name) => name,
            None => HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("invalid header name {:?}", h.name))?,
        };
        // The value is a slice of `buf`: kept as its offsets.
        let start = (h.value.as_ptr() as usize).wrapping_sub(base);
        let end = start.wrapping_add(h.value.len());
        if end > len {
            return Err("header value outside the head".into());
        }
        fields.push((name, start..end));
    }
    Ok(Some(RawHead {
        len,
        status: resp.code.unwrap_or(0),
        minor: resp.version.unwrap_or(1),
    }))
}

/// Builds the head from what [`scan_head`] found, its values shared with
/// `head` (the head's bytes); settles framing and keep-alive.
fn build_head(
    raw: RawHead,
    head: &Bytes,
    fields: &mut Vec<RawField>,
) -> Result<ResponseHead, String> {
    let status = StatusCode::from_u16(raw.status)
        .map_err(|_| format!("invalid status code {}", raw.status))?;
    let version = if raw.minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut length: Option<u64> = None;
    let mut te_chunked: Option<bool> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    for (name, range) in fields.drain(..) {
        let value = head.slice(range);
        if name == header::CONTENT_LENGTH {
            let n = parse_content_length(&value)?;
            match length {
                Some(m) if m != n => {
                    return Err(format!("different Content-Length values ({m} and {n})"));
                }
                _ => length = Some(n),
            }
        } else if name == header::TRANSFER_ENCODING {
            // Only the last coding counts: `chunked` must be the final one.
            te_chunked = Some(last_token_is(&value, b"chunked"));
        } else if name == header::CONNECTION {
            for token in value.split(|b| *b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        }
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| format!("invalid value of header {name}"))?;
        headers.append(name, value);
    }
    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let framing = match (te_chunked, length) {
        (Some(_), _) if version == Version::HTTP_10 => {
            return Err("Transfer-Encoding in an HTTP/1.0 response".into());
        }
        (Some(true), cl) => {
            // Both: chunked wins (RFC 9112 §6.3) and the connection is not
            // trusted with another request (HAProxy closes it too).
            if cl.is_some() {
                headers.remove(header::CONTENT_LENGTH);
                keep_alive = false;
            }
            Framing::Chunked
        }
        // Read until the close (unless the status or the request method
        // means no body: then the connection stays usable).
        (Some(false), _) | (None, None) => Framing::Close,
        (None, Some(n)) => Framing::Length(n),
    };
    Ok(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    })
}

/// A socket to a server: TCP, or TLS over TCP.
enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        match self {
            Io::Tcp(s) => tokio_util::io::poll_read_buf(Pin::new(s), cx, buf),
            Io::Tls(s) => tokio_util::io::poll_read_buf(Pin::new(&mut **s), cx, buf),
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, data),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            // TCP has nothing buffered on our side.
            Io::Tcp(_) => Poll::Ready(Ok(())),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    /// Whether an idle connection is still open with nothing unread: the
    /// server's FIN (or unsolicited bytes) makes it unusable. Never waits.
    fn idle_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 8];
        let mut rb = ReadBuf::new(&mut probe);
        let polled = match self {
            Io::Tcp(s) => Pin::new(s).poll_read(&mut cx, &mut rb),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(&mut cx, &mut rb),
        };
        matches!(polled, Poll::Pending)
    }
}

/// One HTTP/1.1 connection to a server, with its reused buffers.
pub struct H1Conn {
    io: Io,
    /// Bytes read and not yet consumed (the head, then body bytes).
    rbuf: BytesMut,
    /// The request head (and small body frames) being written.
    wbuf: Vec<u8>,
    /// Header fields found by the head parser (reused).
    fields: Vec<RawField>,
    limits: HeadLimits,
    backend: usize,
    server: usize,
    name: Option<ServerName<'static>>,
    addr: SocketAddr,
}

/// Where a connection returns once its response body ended cleanly; the
/// end-of-exchange work takes it from there ([`NativePool::checkin`]).
pub struct Lease {
    slot: Rc<Cell<Option<Box<H1Conn>>>>,
    /// The connection already served a request (it came from the pool).
    pub reused: bool,
}

impl Lease {
    /// The connection, if its last response ended cleanly and it may be reused.
    fn take(&self) -> Option<Box<H1Conn>> {
        self.slot.take()
    }
}

struct IdleConn {
    conn: Box<H1Conn>,
    since: Instant,
}

/// One worker's idle native HTTP/1.1 connections, by backend and server
/// (as [`super::pool::UpstreamPool`] keeps hyper's).
pub struct NativePool {
    idle: RefCell<Vec<Vec<Vec<IdleConn>>>>,
    max_idle: Vec<usize>,
    idle_timeout: Duration,
    limits: HeadLimits,
}

impl NativePool {
    /// An empty pool shaped after `config`'s backends.
    pub fn new(config: &Runtime) -> NativePool {
        NativePool {
            idle: RefCell::new(
                config
                    .backends
                    .iter()
                    .map(|b| b.servers.iter().map(|_| Vec::new()).collect())
                    .collect(),
            ),
            max_idle: config
                .backends
                .iter()
                .map(|b| b.max_idle_per_server)
                .collect(),
            idle_timeout: config.global.timeouts.keep_alive,
            limits: HeadLimits {
                max_size: config.global.max_header_size,
                max_headers: config.global.max_headers,
            },
        }
    }

    /// A usable idle connection to `addr` with the same TLS name, if any;
    /// closed or expired ones met on the way are dropped.
    pub fn checkout_idle(
        &self,
        backend: usize,
        server: usize,
        addr: SocketAddr,
        now: Instant,
        tls: Option<&Target>,
    ) -> Option<Box<H1Conn>> {
        let name = tls.map(|t| &t.name);
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(backend)?.get_mut(server)?;
        loop {
            // The most recent connection to the same address for the same TLS name.
            let i = list
                .iter()
                .rposition(|c| c.conn.name.as_ref() == name && c.conn.addr == addr)?;
            let mut c = list.remove(i);
            if now.saturating_duration_since(c.since) <= self.idle_timeout
                && c.conn.io.idle_usable()
            {
                return Some(c.conn);
            }
        }
    }

    /// A new connection to `addr` (connect and TLS handshake within `timeout`).
    pub async fn connect(
        &self,
        (backend, server): (usize, usize),
        addr: SocketAddr,
        timeout: Duration,
        tls: Option<&Target>,
    ) -> Result<Box<H1Conn>, ConnectError> {
        // A backend that keeps no idle connection resets each one after its
        // response (no TIME_WAIT on our side), as `pool.rs` does.
        let reset_on_close = self.max_idle.get(backend) == Some(&0);
        let io = match dial(addr, timeout, reset_on_close, tls).await? {
            Dialed::Tcp(s) => Io::Tcp(s),
            Dialed::Tls(s) => Io::Tls(s),
        };
        Ok(Box::new(H1Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            fields: Vec::new(),
            limits: self.limits,
            backend,
            server,
            name: tls.map(|t| t.name.clone()),
            addr,
        }))
    }

    /// Returns the lease's connection (if its response ended cleanly) at `now`.
    pub fn checkin(&self, lease: Lease, now: Instant) {
        let Some(mut conn) = lease.take() else {
            return;
        };
        // An idle connection holds no read buffer (the last head's bytes
        // share it until that response is sent; the next read allocates
        // anew anyway), and a write buffer only of a usual head's size.
        conn.rbuf = BytesMut::new();
        if conn.wbuf.capacity() > IDLE_WBUF {
            conn.wbuf = Vec::new();
        }
        let max = self.max_idle.get(conn.backend).copied().unwrap_or(0);
        let mut idle = self.idle.borrow_mut();
        if let Some(list) = idle
            .get_mut(conn.backend)
            .and_then(|b| b.get_mut(conn.server))
            && list.len() < max
        {
            list.push(IdleConn { conn, since: now });
        }
    }

    /// Closes idle connections older than the keep-alive timeout or closed by their server.
    pub fn sweep(&self) {
        let timeout = self.idle_timeout;
        for backend in self.idle.borrow_mut().iter_mut() {
            for list in backend.iter_mut() {
                list.retain_mut(|c| c.since.elapsed() <= timeout && c.conn.io.idle_usable());
            }
        }
    }

    /// A reload: takes over `old`'s idle connections to the servers `own`
    /// declares as `old_config` did (same backend, server name and address).
    pub fn adopt(&self, own: &Runtime, old: &NativePool, old_config: &Runtime) {
        let mut mine = self.idle.borrow_mut();
        let mut theirs = old.idle.borrow_mut();
        for k in super::pool::kept_servers(own, old_config) {
            let max = self.max_idle.get(k.b).copied().unwrap_or(0);
            if let (Some(to), Some(from)) = (
                mine.get_mut(k.b).and_then(|v| v.get_mut(k.s)),
                theirs.get_mut(k.old_b).and_then(|v| v.get_mut(k.old_s)),
            ) {
                let room = max.saturating_sub(to.len()).min(from.len());
                for mut c in from.drain(..room) {
                    // Indexes of the new generation.
                    c.conn.backend = k.b;
                    c.conn.server = k.s;
                    c.conn.limits = self.limits;
                    to.push(c);
                }
            }
        }
    }

    /// Number of idle connections held (for tests and stats).
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().iter().flatten().map(Vec::len).sum()
    }
}

/// Why [`send`] gave up.
pub enum Failure {
    /// Nothing was written: the request is handed back (retried on a fresh
    /// connection if this one came from the pool).
    Unsent(Box<Request<RequestBody>>),
    Failed(H1Error),
    /// No response head within the server timeout (counted from the last
    /// request-body progress).
    Timeout(Duration),
}

/// Sends `req` on `conn` (from `sent_at`) and reads the response head; the
/// response's body owns the connection and leaves it in the returned
/// lease's slot when it ends cleanly. The server timeout counts from the
/// last request-body progress, so a long upload is not cut short.
pub async fn send(
    conn: Box<H1Conn>,
    req: Request<RequestBody>,
    reused: bool,
    timeout: Duration,
    body: &RequestBodyState,
    sent_at: Instant,
) -> Result<(Response<H1Body>, Lease), Failure> {
    let mut ex = Exchange::new(conn, req);
    let mut last_bytes = body.bytes.get();
    let mut deadline = sent_at + timeout;
    let sleep = tokio::time::sleep_until(deadline);
    tokio::pin!(sleep);
    let done = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = ex.poll(cx) {
            return Poll::Ready(Some(r));
        }
        while sleep.as_mut().poll(cx).is_ready() {
            let now_bytes = body.bytes.get();
            if now_bytes == last_bytes {
                return Poll::Ready(None);
            }
            last_bytes = now_bytes;
            deadline = Instant::now() + timeout;
            sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;
    match done {
        None => Err(Failure::Timeout(timeout)),
        Some(Ok(())) => ex.finish(reused),
        Some(Err(e)) if ex.written == 0 && reused => match ex.req.take() {
            // A kept-alive connection the server closed: nothing of the request went out.
            Some(req) => Err(Failure::Unsent(Box::new(req))),
            None => Err(Failure::Failed(e)),
        },
        Some(Err(e)) => Err(Failure::Failed(e)),
    }
}

/// How the request body goes out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

/// One request's exchange up to its response head.
struct Exchange {
    conn: Option<Box<H1Conn>>,
    /// The request until its head is encoded (handed back if unsent).
    req: Option<Request<RequestBody>>,
    method: Method,
    body: RequestBody,
    framing: ReqFraming,
    /// Trailer names the request declared (`Trailer`): only those are sent,
    /// as hyper does.
    trailer_names: Option<HeaderValue>,
    /// Bytes of `wbuf` already written.
    wpos: usize,
    /// A large body frame written after `wbuf`, then `tail`.
    data: Option<Bytes>,
    tail: &'static [u8],
    /// Bytes written so far (0: the request may be retried elsewhere).
    written: u64,
    /// Body bytes still to send under a Content-Length.
    remaining: u64,
    body_done: bool,
    flushed: bool,
    interim: usize,
    head: Option<ResponseHead>,
}

impl Exchange {
    fn new(mut conn: Box<H1Conn>, req: Request<RequestBody>) -> Exchange {
        let method = req.method().clone();
        let (framing, trailer_names) = encode_head(&mut conn.wbuf, &req);
        Exchange {
            conn: Some(conn),
            req: Some(req),
            method,
            body: RequestBody::Empty,
            framing,
            trailer_names,
            wpos: 0,
            data: None,
            tail: b"",
            written: 0,
            remaining: match framing {
                ReqFraming::Length(n) => n,
                _ => 0,
            },
            body_done: framing == ReqFraming::None,
            flushed: false,
            interim: 0,
            head: None,
        }
    }

    /// Drives writing and reading until the response head is in: the
    /// server may answer before the request body is over.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        if let Poll::Ready(Err(e)) = self.poll_write_side(cx) {
            return Poll::Ready(Err(e));
        }
        self.poll_read_head(cx)
    }

    /// Writes what is buffered, pulls more of the request body; `Ready(Ok)`
    /// once everything is written and flushed.
    fn poll_write_side(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        let Some(conn) = self.conn.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            while self.wpos < conn.wbuf.len() {
                let n =
                    ready!(conn.io.poll_write(cx, &conn.wbuf[self.wpos..])).map_err(H1Error::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(H1Error::Closed(
                        "the connection closed while the request was written",
                    )));
                }
                if self.written == 0 && self.req.is_some() {
                    // The head is going out: the body is ours from now on.
                    if let Some(req) = self.req.take() {
                        self.body = req.into_body();
                    }
                }
                self.wpos += n;
                self.written += n as u64;
            }
            if let Some(d) = &mut self.data {
                while !d.is_empty() {
                    let n = ready!(conn.io.poll_write(cx, d)).map_err(H1Error::Io)?;
                    if n == 0 {
                        return Poll::Ready(Err(H1Error::Closed(
                            "the connection closed while the request was written",
                        )));
                    }
                    let _ = d.split_to(n);
                    self.written += n as u64;
                }
                self.data = None;
                conn.wbuf.clear();
                conn.wbuf.extend_from_slice(self.tail);
                self.wpos = 0;
                self.tail = b"";
                continue;
            }
            conn.wbuf.clear();
            self.wpos = 0;
            if self.body_done {
                if !self.flushed {
                    ready!(conn.io.poll_flush(cx)).map_err(H1Error::Io)?;
                    self.flushed = true;
                }
                return Poll::Ready(Ok(()));
            }
            // Everything so far is out: flush it before waiting on the client.
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => {
                    ready!(conn.io.poll_flush(cx)).map_err(H1Error::Io)?;
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(H1Error::Body(e))),
                Poll::Ready(None) => {
                    self.body_done = true;
                    match self.framing {
                        ReqFraming::Chunked => conn.wbuf.extend_from_slice(b"0\r\n\r\n"),
                        ReqFraming::Length(n) if self.remaining > 0 => {
                            return Poll::Ready(Err(H1Error::Body(
                                format!(
                                    "the body ended {} bytes short of its Content-Length ({n})",
                                    self.remaining
                                )
                                .into(),
                            )));
                        }
                        _ => {}
                    }
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) if d.is_empty() => {}
                    Ok(d) => match self.framing {
                        ReqFraming::Chunked => {
                            push_hex(&mut conn.wbuf, d.len() as u64);
                            conn.wbuf.extend_from_slice(b"\r\n");
                            if d.len() <= COPY_FRAME {
                                conn.wbuf.extend_from_slice(&d);
                                conn.wbuf.extend_from_slice(b"\r\n");
                            } else {
                                self.data = Some(d);
                                self.tail = b"\r\n";
                            }
                        }
                        ReqFraming::Length(n) => {
                            let len = d.len() as u64;
                            if len > self.remaining {
                                return Poll::Ready(Err(H1Error::Body(
                                    format!("the body is longer than its Content-Length ({n})")
                                        .into(),
                                )));
                            }
                            self.remaining -= len;
                            if d.len() <= COPY_FRAME {
                                conn.wbuf.extend_from_slice(&d);
                            } else {
                                self.data = Some(d);
                            }
                        }
                        ReqFraming::None => {
                            return Poll::Ready(Err(H1Error::Body(
                                "a body for a request declared without one".into(),
                            )));
                        }
                    },
                    Err(frame) => {
                        if let (Ok(trailers), ReqFraming::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            self.body_done = true;
                            conn.wbuf.extend_from_slice(b"0\r\n");
                            encode_trailers(&mut conn.wbuf, &trailers, self.trailer_names.as_ref());
                            conn.wbuf.extend_from_slice(b"\r\n");
                        }
                    }
                },
            }
        }
    }

    /// Reads until a final response head is parsed (1xx skipped).
    fn poll_read_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        let Some(conn) = self.conn.as_deref_mut() else {
            return Poll::Ready(Err(H1Error::Closed("no connection")));
        };
        loop {
            if !conn.rbuf.is_empty() {
                let raw = scan_head(&conn.rbuf, conn.limits, &mut conn.fields)
                    .map_err(H1Error::Invalid)?;
                if let Some(raw) = raw {
                    let bytes = conn.rbuf.split_to(raw.len).freeze();
                    let head =
                        build_head(raw, &bytes, &mut conn.fields).map_err(H1Error::Invalid)?;
                    let s = head.status.as_u16();
                    if (100..200).contains(&s) && s != 101 {
                        // 100 Continue and other interim answers: the final one follows.
                        self.interim += 1;
                        if self.interim > MAX_INTERIM {
                            return Poll::Ready(Err(H1Error::Invalid(format!(
                                "more than {MAX_INTERIM} interim (1xx) responses"
                            ))));
                        }
                        continue;
                    }
                    self.head = Some(head);
                    return Poll::Ready(Ok(()));
                }
            }
            let n = ready!(conn.io.poll_read(cx, &mut conn.rbuf)).map_err(H1Error::Io)?;
            if n == 0 {
                return Poll::Ready(Err(H1Error::Closed(if conn.rbuf.is_empty() {
                    "the connection closed before the response head"
                } else {
                    "the connection closed in the middle of the response head"
                })));
            }
        }
    }

    /// The response, its body owning the connection.
    fn finish(mut self, reused: bool) -> Result<(Response<H1Body>, Lease), Failure> {
        let (Some(conn), Some(head)) = (self.conn.take(), self.head.take()) else {
            return Err(Failure::Failed(H1Error::Closed("no response")));
        };
        let framing = body_framing(&self.method, &head);
        // A request body the server did not wait for, or a 101, leaves the
        // connection in a state no other request may follow.
        let keep =
            head.keep_alive && self.body_done && head.status != StatusCode::SWITCHING_PROTOCOLS;
        let slot = Rc::new(Cell::new(None));
        let lease = Lease {
            slot: Rc::clone(&slot),
            reused,
        };
        let body = H1Body::new(conn, framing, keep, slot);
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok((resp, lease))
    }
}

/// Encodes `req`'s head into `buf` (cleared first) with the framing its
/// body needs, as hyper frames a client request: the declared
/// Content-Length, none for a body already over, the body's exact size,
/// else chunked.
fn encode_head(buf: &mut Vec<u8>, req: &Request<RequestBody>) -> (ReqFraming, Option<HeaderValue>) {
    buf.clear();
    let headers = req.headers();
    let body = req.body();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| parse_content_length(v.as_bytes()).ok());
    let (framing, add) = match declared {
        Some(n) => (
            if n == 0 {
                ReqFraming::None
            } else {
                ReqFraming::Length(n)
            },
            None,
        ),
        None if body.is_end_stream() => (ReqFraming::None, None),
        None => match body.size_hint().exact() {
            Some(0) => (ReqFraming::None, None),
            Some(n) => (ReqFraming::Length(n), Some(n)),
            None => (ReqFraming::Chunked, None),
        },
    };
    buf.extend_from_slice(req.method().as_str().as_bytes());
    buf.push(b' ');
    match req.uri().path_and_query() {
        Some(pq) => buf.extend_from_slice(pq.as_str().as_bytes()),
        None => buf.push(b'/'),
    }
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if let Some(n) = add {
        buf.extend_from_slice(b"content-length: ");
        buf.extend_from_slice(n.to_string().as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if framing == ReqFraming::Chunked {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    (framing, headers.get(header::TRAILER).cloned())
}

/// Writes the trailer fields `declared` in the request's `Trailer` header.
fn encode_trailers(buf: &mut Vec<u8>, trailers: &HeaderMap, declared: Option<&HeaderValue>) {
    let Some(declared) = declared else {
        return;
    };
    for (name, value) in trailers {
        let listed = declared.as_bytes().split(|b| *b == b',').any(|t| {
            t.trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        });
        if listed {
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
    }
}

/// Decodes a whole chunked body at the start of `buf` with the decoder the
/// connections use: its data, trailers and length on the wire; `Ok(None)`
/// while incomplete. For tests and fuzzing.
pub fn decode_chunked_body(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(Vec<u8>, HeaderMap, usize)>, String> {
    let mut b = BytesMut::from(buf);
    let mut state = Chunked::Size;
    let mut data = Vec::new();
    let mut trailers = HeaderMap::new();
    loop {
        match decode_chunked(&mut b, &mut state, limits)? {
            Out::Data(d) => data.extend_from_slice(&d),
            Out::Trailers(t) => trailers = t,
            Out::End => return Ok(Some((data, trailers, buf.len() - b.len()))),
            Out::More => return Ok(None),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Decode {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// A server's response body read straight from its connection, streamed
/// frame by frame without buffering more than one read.
pub struct H1Body {
    conn: Option<Box<H1Conn>>,
    decode: Decode,
    /// The connection may serve another request once the body is over.
    keep: bool,
    slot: Rc<Cell<Option<Box<H1Conn>>>>,
}

impl H1Body {
    fn new(
        conn: Box<H1Conn>,
        framing: Framing,
        keep: bool,
        slot: Rc<Cell<Option<Box<H1Conn>>>>,
    ) -> H1Body {
        let decode = match framing {
            Framing::None | Framing::Length(0) => Decode::Done,
            Framing::Length(n) => Decode::Length(n),
            Framing::Chunked => Decode::Chunked(Chunked::Size),
            Framing::Close => Decode::Close,
        };
        let mut body = H1Body {
            conn: Some(conn),
            decode,
            keep: keep && framing != Framing::Close,
            slot,
        };
        if matches!(body.decode, Decode::Done) {
            body.done();
        }
        body
    }

    /// The body is over: a connection that may be reused, with nothing
    /// more from its server, goes to the lease's slot.
    fn done(&mut self) {
        self.decode = Decode::Done;
        if let Some(conn) = self.conn.take()
            && self.keep
            && conn.rbuf.is_empty()
        {
            self.slot.set(Some(conn));
        }
    }

    /// The body failed: the connection closes, and nothing more comes.
    fn fail(&mut self) {
        self.keep = false;
        self.conn = None;
        self.decode = Decode::Done;
    }

    /// Decodes what is buffered: a frame, the end (`Ok(None)`), or
    /// `Err(None)` when more bytes are needed.
    fn decode_buffered(&mut self) -> Result<Option<Frame<Bytes>>, Option<H1Error>> {
        let Some(conn) = self.conn.as_deref_mut() else {
            return Ok(None);
        };
        let (frame, over) = match &mut self.decode {
            Decode::Done => return Ok(None),
            Decode::Close if conn.rbuf.is_empty() => return Err(None),
            Decode::Close => (Frame::data(conn.rbuf.split().freeze()), false),
            Decode::Length(_) if conn.rbuf.is_empty() => return Err(None),
            Decode::Length(left) => {
                let n = (conn.rbuf.len() as u64).min(*left);
                *left -= n;
                (
                    Frame::data(conn.rbuf.split_to(n as usize).freeze()),
                    *left == 0,
                )
            }
            Decode::Chunked(state) => match decode_chunked(&mut conn.rbuf, state, conn.limits) {
                Err(e) => return Err(Some(H1Error::Invalid(e))),
                Ok(Out::More) => return Err(None),
                Ok(Out::End) => {
                    self.done();
                    return Ok(None);
                }
                Ok(Out::Trailers(t)) => (Frame::trailers(t), true),
                Ok(Out::Data(d)) => (Frame::data(d), *state == Chunked::End),
            },
        };
        if over {
            self.done();
        }
        Ok(Some(frame))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match this.decode_buffered() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => return Poll::Ready(None),
                Err(Some(e)) => {
                    this.fail();
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
                Err(None) => {}
            }
            let Some(conn) = this.conn.as_deref_mut() else {
                return Poll::Ready(None);
            };
            let n = match ready!(conn.io.poll_read(cx, &mut conn.rbuf)) {
                Ok(n) => n,
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(Box::new(H1Error::Io(e)))));
                }
            };
            if n == 0 {
                if matches!(this.decode, Decode::Close) {
                    // Until-close framing: the close is the end.
                    this.keep = false;
                    this.done();
                    return Poll::Ready(None);
                }
                this.fail();
                return Poll::Ready(Some(Err(Box::new(H1Error::Closed(
                    "the connection closed in the middle of the response body",
                )))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decode, Decode::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Done => SizeHint::with_exact(0),
            Decode::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names read without `HeaderName::from_bytes` are the ones it
    /// gives, whatever the spelling; others still go through it.
    #[test]
    fn known_field_names_are_the_standard_ones() {
        let head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDATE: x\r\ncontent-type: text/plain\r\n\
Content-Length: 2\r\nETag: \"e\"\r\nX-Custom: 1\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\nok";
        let limits = HeadLimits {
            max_size: 4096,
            max_headers: 16,
        };
        let (len, head) = parse_response_head(head, limits)
            .expect("valid head")
            .expect("complete head");
        assert_eq!(len, 146);
        let names: Vec<&str> = head.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "server",
                "date",
                "content-type",
                "content-length",
                "etag",
                "x-custom",
                "set-cookie"
            ]
        );
        assert_eq!(head.headers.get_all(header::SET_COOKIE).iter().count(), 2);
        assert_eq!(head.headers[header::DATE], "x");
        assert!(parse_response_head(b"HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n", limits).is_err());
    }
}
