//! HTTP/2 to servers (`proto = "h2"`, or TLS whose ALPN settled on `h2`).
//!
//! Each worker keeps, per server, a few multiplexed connections
//! (`h2.max_connections`); a request takes a stream on the first one with
//! room (fewer streams open than `h2.max_streams` and the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS), else opens another connection, else
//! (at the connection cap) queues on the least loaded one, where hyper
//! waits for the server to allow one more stream. PINGs check a silent
//! connection (`h2.ping_interval` / `h2.ping_timeout`).
//!
//! A request the server did not process is sent again once on another
//! connection, as Envoy does: one refused with REFUSED_STREAM, one above a
//! GOAWAY's last stream id, one queued on a connection that closed. Its
//! body is replayed from a copy of what was sent ([`ReplayBody`], at most
//! the backend's `h2.retry_buffer` bytes, 64 KiB by default; a request with
//! more body is not retried).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::body::{BoxError, RequestBody, RequestBodyState};
use super::pool::{ConnectError, Dialed, PooledConn, UpstreamPool, dial};
use crate::config::h2::{H2Settings, UpstreamProto};
use crate::runtime::Runtime;
use crate::tls::client::Target;

/// Spawns hyper's HTTP/2 tasks (the connection, request bodies) on this worker's `LocalSet`.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        // Boxed first. hyper's client futures are one enum (the connection,
        // a request body's pipe, a response's wait), each as large as the
        // connection's state (several KiB), spawned twice per request;
        // tokio moves a task's future through several frames and copies
        // it whole when it ends: a pointer is cheaper to move.
        tokio::task::spawn_local(Box::pin(fut));
    }
}

/// One multiplexed connection to a server.
pub struct H2Conn {
    sender: http2::SendRequest<ReplayBody>,
    abort: AbortHandle,
    /// Streams in flight (requests whose exchange is not over).
    active: Cell<usize>,
    /// Reads the server's current SETTINGS.
    server_max: ServerMax,
    /// This backend's `h2.max_streams`.
    cap: usize,
    name: Option<ServerName<'static>>,
    /// The address it goes to: a server that follows the connection's
    /// destination (`0.0.0.0:0`) has connections to many addresses.
    addr: SocketAddr,
    idle_since: Cell<Instant>,
}

impl H2Conn {
    fn limit(&self) -> usize {
        self.cap.min((self.server_max)().max_streams).max(1)
    }

    fn has_room(&self) -> bool {
        self.active.get() < self.limit()
    }

    /// The server announced SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441).
    fn extended_connect(&self) -> bool {
        (self.server_max)().extended_connect
    }

    fn usable(&self) -> bool {
        // A GOAWAY or an error ends hyper's dispatch task: the sender is then closed.
        !self.sender.is_closed()
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        // The last stream is over and the pool let go: the connection closes.
        self.abort.abort();
    }
}

/// A stream taken on an [`H2Conn`]: released when dropped (the exchange is over).
pub struct H2Stream {
    conn: Rc<H2Conn>,
    /// The connection carried earlier requests.
    pub reused: bool,
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        let c = &self.conn;
        c.active.set(c.active.get().saturating_sub(1));
        if c.active.get() == 0 {
            c.idle_since.set(Instant::now());
        }
    }
}

/// The connection a request goes out on.
pub enum Leg {
    H2(H2Stream),
    /// A server whose TLS handshake settled on `http/1.1` (`proto` negotiated).
    H1(PooledConn),
}

#[derive(Default)]
struct ServerConns {
    conns: Vec<Rc<H2Conn>>,
    /// Connection attempts under way (they count against the cap).
    connecting: usize,
    /// Requests waiting for an attempt under way (its streams to be).
    waiting: usize,
    /// A negotiating server's last handshake settled on `http/1.1`.
    speaks_h1: bool,
    /// Woken when an attempt ends, for requests waiting on one.
    settled: Rc<Notify>,
}

/// One worker's HTTP/2 connections to servers, by backend and server.
pub struct H2Pool {
    servers: RefCell<Vec<Vec<ServerConns>>>,
    settings: Vec<H2Settings>,
    idle_timeout: Duration,
    max_header_list: u32,
}

/// Why a request could not be sent on an HTTP/2 connection.
pub enum H2Failure {
    Connect(ConnectError),
    /// The server's response head did not come within the server timeout.
    Timeout(Duration),
    /// The request's `grpc-timeout` ran out first.
    Deadline(Duration),
    Failed(hyper::Error),
    /// Never written to a connection that then closed.
    Unsent,
    /// An upgrade to a server that did not enable extended CONNECT.
    NoExtendedConnect,
}

impl From<ConnectError> for H2Failure {
    fn from(e: ConnectError) -> H2Failure {
        H2Failure::Connect(e)
    }
}

/// Where a request goes: the server and how to reach it.
pub struct Dest<'a> {
    pub backend: usize,
    pub server: usize,
    pub addr: SocketAddr,
    pub connect_timeout: Duration,
    pub tls: Option<&'a Target>,
    pub proto: UpstreamProto,
    /// The request is an upgrade (WebSocket): on an HTTP/2 connection it
    /// goes as RFC 8441's extended CONNECT.
    pub upgrade: bool,
}

/// How long the response head may take: the server timeout from the last
/// request-body progress, and an absolute deadline (`grpc-timeout`).
pub struct Wait<'a> {
    pub timeout: Duration,
    pub body: &'a RequestBodyState,
    pub deadline: Option<(Instant, Duration)>,
}

impl H2Pool {
    /// An empty pool shaped after `config`'s backends.
    pub fn new(config: &Runtime) -> H2Pool {
        H2Pool {
            servers: RefCell::new(
                config
                    .backends
                    .iter()
                    .map(|b| b.servers.iter().map(|_| ServerConns::default()).collect())
                    .collect(),
            ),
            settings: config.backends.iter().map(|b| b.h2).collect(),
            idle_timeout: config.global.timeouts.keep_alive,
            max_header_list: u32::try_from(config.global.max_header_size).unwrap_or(u32::MAX),
        }
    }

    fn with<R>(&self, b: usize, s: usize, f: impl FnOnce(&mut ServerConns) -> R) -> Option<R> {
        let mut servers = self.servers.borrow_mut();
        servers.get_mut(b).and_then(|v| v.get_mut(s)).map(f)
    }

    /// A stream on a connection with room, dropping dead connections on the way.
    fn take_stream(
        &self,
        b: usize,
        s: usize,
        addr: SocketAddr,
        name: Option<&ServerName<'static>>,
    ) -> Option<H2Stream> {
        self.with(b, s, |sc| {
            sc.conns.retain(|c| c.usable());
            let c = sc
                .conns
                .iter()
                .find(|c| c.has_room() && c.name.as_ref() == name && c.addr == addr)?;
            c.active.set(c.active.get() + 1);
            Some(H2Stream {
                conn: Rc::clone(c),
                reused: true,
            })
        })
        .flatten()
    }

    /// At the connection cap: the least loaded connection (hyper queues the
    /// stream until the server allows it).
    fn overflow(
        &self,
        b: usize,
        s: usize,
        addr: SocketAddr,
        name: Option<&ServerName<'static>>,
    ) -> Option<H2Stream> {
        self.with(b, s, |sc| {
            let c = sc
                .conns
                .iter()
                .filter(|c| c.usable() && c.name.as_ref() == name && c.addr == addr)
                .min_by_key(|c| c.active.get())?;
            c.active.set(c.active.get() + 1);
            Some(H2Stream {
                conn: Rc::clone(c),
                reused: true,
            })
        })
        .flatten()
    }

    /// The connection for a request to `dest`; `h2_only`: never an
    /// HTTP/1.1 one (a retry, whose body is an HTTP/2 replay).
    pub async fn checkout(
        &self,
        dest: &Dest<'_>,
        h1: &UpstreamPool,
        now: Instant,
        h2_only: bool,
    ) -> Result<Leg, ConnectError> {
        let (b, s) = (dest.backend, dest.server);
        let name = dest.tls.map(|t| &t.name);
        let settings = self.settings.get(b).copied().unwrap_or_default();
        loop {
            if let Some(st) = self.take_stream(b, s, dest.addr, name) {
                return Ok(Leg::H2(st));
            }
            let speaks_h1 = dest.proto == UpstreamProto::Negotiate
                && !h2_only
                && self.with(b, s, |sc| sc.speaks_h1).unwrap_or(false);
            if speaks_h1 && let Some(c) = h1.checkout_idle(b, s, dest.addr, now, dest.tls).await {
                return Ok(Leg::H1(c));
            }
            let max_streams = settings.max_streams as usize;
            let (room, settled) = self
                .with(b, s, |sc| {
                    // Requests wait for a connection under way while its
                    // streams suffice for them (as Envoy's pending
                    // requests), instead of each opening one.
                    let enough = sc.waiting < sc.connecting.saturating_mul(max_streams);
                    let room = !enough && sc.conns.len() + sc.connecting < settings.max_connections;
                    if room {
                        sc.connecting += 1;
                    }
                    (room, Rc::clone(&sc.settled))
                })
                .unwrap_or((true, Rc::new(Notify::new())));
            if room {
                let result = self.open(dest, settings, h1, h2_only).await;
                self.with(b, s, |sc| {
                    sc.connecting = sc.connecting.saturating_sub(1);
                    match &result {
                        Ok(Leg::H2(st)) => {
                            sc.speaks_h1 = false;
                            sc.conns.push(Rc::clone(&st.conn));
                        }
                        Ok(Leg::H1(_)) => sc.speaks_h1 = true,
                        Err(_) => {}
                    }
                });
                settled.notify_waiters();
                return result;
            }
            let connecting = self.with(b, s, |sc| sc.connecting).unwrap_or(0);
            if connecting == 0
                && let Some(st) = self.overflow(b, s, dest.addr, name)
            {
                return Ok(Leg::H2(st));
            }
            // Wait for an attempt under way, then look again.
            let wait = settled.notified();
            self.with(b, s, |sc| sc.waiting += 1);
            let waited = tokio::time::timeout(dest.connect_timeout, wait).await;
            self.with(b, s, |sc| sc.waiting = sc.waiting.saturating_sub(1));
            if waited.is_err() {
                return Err(ConnectError::Timeout {
                    addr: dest.addr,
                    after: dest.connect_timeout,
                });
            }
        }
    }

    /// A new connection to `dest`: HTTP/2, or HTTP/1.1 when a negotiating
    /// server's TLS settled on it.
    async fn open(
        &self,
        dest: &Dest<'_>,
        settings: H2Settings,
        h1: &UpstreamPool,
        h2_only: bool,
    ) -> Result<Leg, ConnectError> {
        let addr = dest.addr;
        let io = dial(addr, dest.connect_timeout, false, dest.tls).await?;
        let name = dest.tls.map(|t| t.name.clone());
        let h2 = match dest.proto {
            UpstreamProto::Negotiate => io.alpn_h2(),
            _ => true,
        };
        if !h2 {
            if h2_only {
                return Err(ConnectError::Tls {
                    addr,
                    source: std::io::Error::other("ALPN settled on http/1.1, not h2"),
                });
            }
            return h1
                .start_new(dest.backend, dest.server, addr, io, name)
                .await
                .map(Leg::H1);
        }
        if let Dialed::Tls(t) = &io
            && t.get_ref().1.alpn_protocol() != Some(b"h2")
        {
            // proto = "h2" over TLS: HTTP/2 only if the server agreed to it.
            let settled = t
                .get_ref()
                .1
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            return Err(ConnectError::Tls {
                addr,
                source: std::io::Error::other(format!(
                    "the server did not agree to ALPN h2 (it settled {})",
                    settled.as_deref().unwrap_or("no protocol")
                )),
            });
        }
        let mut builder = http2::Builder::new(LocalExec);
        builder
            .timer(TokioTimer::new())
            .initial_max_send_streams(settings.max_streams as usize)
            .max_header_list_size(self.max_header_list)
            .keep_alive_interval(settings.ping_interval)
            .keep_alive_timeout(settings.ping_timeout)
            .keep_alive_while_idle(true);
        let conn = match io {
            Dialed::Tcp(s) => start(&builder, addr, s).await?,
            Dialed::Tls(s) => start(&builder, addr, *s).await?,
        };
        let conn = Rc::new(H2Conn {
            sender: conn.0,
            abort: conn.1,
            active: Cell::new(1),
            server_max: conn.2,
            cap: settings.max_streams as usize,
            name,
            addr,
            idle_since: Cell::new(Instant::now()),
        });
        Ok(Leg::H2(H2Stream {
            conn,
            reused: false,
        }))
    }

    /// After a reload: this generation's pool takes the old one's
    /// connections to servers the reload kept (same backend name, server
    /// name, address and protocol), as the HTTP/1 pool keeps its idle ones.
    /// Streams still open on them (the old generation's requests) stay
    /// counted: both pools share each connection.
    pub fn adopt(&self, own: &Runtime, old: &H2Pool, old_config: &Runtime) {
        let mut mine = self.servers.borrow_mut();
        let mut theirs = old.servers.borrow_mut();
        for k in super::pool::kept_servers(own, old_config) {
            let proto = |rt: &Runtime, b: usize, s: usize| {
                rt.backends
                    .get(b)
                    .and_then(|x| x.servers.get(s))
                    .map(|x| x.proto)
            };
            if proto(own, k.b, k.s) != proto(old_config, k.old_b, k.old_s) {
                continue;
            }
            if let (Some(to), Some(from)) = (
                mine.get_mut(k.b).and_then(|v| v.get_mut(k.s)),
                theirs.get_mut(k.old_b).and_then(|v| v.get_mut(k.old_s)),
            ) {
                from.conns.retain(|c| c.usable());
                to.conns.append(&mut from.conns);
                to.speaks_h1 = from.speaks_h1;
            }
        }
    }

    /// Closes connections idle longer than the keep-alive timeout, or closed.
    pub fn sweep(&self) {
        let timeout = self.idle_timeout;
        for backend in self.servers.borrow_mut().iter_mut() {
            for sc in backend.iter_mut() {
                sc.conns.retain(|c| {
                    c.usable() && (c.active.get() > 0 || c.idle_since.get().elapsed() <= timeout)
                });
            }
        }
    }

    /// Sends `req` to `dest` and waits for the response head; a request the
    /// server did not process is sent once more on another connection.
    pub async fn send(
        &self,
        dest: &Dest<'_>,
        h1: &UpstreamPool,
        req: Request<RequestBody>,
        wait: &Wait<'_>,
        now: Instant,
    ) -> (Result<Response<Incoming>, H2Failure>, Option<Leg>) {
        let leg = match self.checkout(dest, h1, now, false).await {
            Ok(l) => l,
            Err(e) => return (Err(e.into()), None),
        };
        let (mut parts, body) = req.into_parts();
        let mut st = match leg {
            Leg::H1(mut c) => {
                let req = Request::from_parts(parts, body);
                let fut = c.sender.try_send_request(req);
                let r = wait_head(fut, wait, Instant::now()).await;
                let r = match r {
                    Ok(Ok(resp)) => Ok(resp),
                    Ok(Err(mut e)) => Err(match e.take_message() {
                        Some(_) => H2Failure::Unsent,
                        None => H2Failure::Failed(e.into_error()),
                    }),
                    Err(f) => Err(f),
                };
                return (r, Some(Leg::H1(c)));
            }
            Leg::H2(st) => st,
        };
        let upgrade = if dest.upgrade {
            if !st.conn.extended_connect() {
                return (Err(H2Failure::NoExtendedConnect), Some(Leg::H2(st)));
            }
            Some(extended_connect(&mut parts))
        } else {
            None
        };
        let cap = self
            .settings
            .get(dest.backend)
            .map_or(0, |s| s.retry_buffer);
        let replay = Rc::new(RefCell::new(Replay::new(body, cap)));
        let mut retried = false;
        loop {
            let mut req = Request::from_parts(parts.clone(), ReplayBody::new(&replay));
            *req.version_mut() = http::Version::HTTP_2;
            let mut sender = st.conn.sender.clone();
            let fut = sender.try_send_request(req);
            let r = wait_head(fut, wait, Instant::now()).await;
            let again = match &r {
                Ok(Err(e)) => e.message().is_some() || refused(e.error()),
                _ => false,
            };
            if !again || retried || !replay.borrow().replayable() {
                let r = match r {
                    Ok(Ok(resp)) => Ok(match &upgrade {
                        Some(asked) => asked.answered(resp),
                        None => resp,
                    }),
                    Ok(Err(e)) if e.message().is_some() => Err(H2Failure::Unsent),
                    Ok(Err(e)) => Err(H2Failure::Failed(e.into_error())),
                    Err(f) => Err(f),
                };
                return (r, Some(Leg::H2(st)));
            }
            retried = true;
            tracing::debug!(addr = %dest.addr, "request not processed by the server (refused stream, GOAWAY or closed connection); retrying once on another connection");
            replay.borrow_mut().rewind();
            drop(st);
            st = match self.checkout(dest, h1, Instant::now(), true).await {
                Ok(Leg::H2(s)) => s,
                Ok(Leg::H1(c)) => {
                    c.discard();
                    return (Err(H2Failure::Unsent), None);
                }
                Err(e) => return (Err(e.into()), None),
            };
        }
    }
}

/// An upgrade sent as an extended CONNECT: what its answer needs to look
/// like the `101` an HTTP/1.1 server gives.
struct Asked {
    protocol: HeaderValue,
    /// The client's `Sec-WebSocket-Key`, for the accept key of the `101`.
    key: Option<HeaderValue>,
}

/// Turns the HTTP/1.1 upgrade request in `parts` into RFC 8441's extended
/// CONNECT (`:method CONNECT`, `:protocol`), as HAProxy does for a
/// WebSocket to an HTTP/2 server: `Upgrade` and `Connection` are not
/// sent; `Sec-WebSocket-Key` is, as HAProxy 2.6 sends it (RFC 8441 servers
/// ignore it).
fn extended_connect(parts: &mut http::request::Parts) -> Asked {
    use http::header;
    let protocol = parts
        .headers
        .remove(header::UPGRADE)
        .unwrap_or_else(|| HeaderValue::from_static("websocket"));
    parts.headers.remove(header::CONNECTION);
    let key = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    parts.method = http::Method::CONNECT;
    if let Ok(p) = protocol.to_str() {
        parts.extensions.insert(hyper::ext::Protocol::from(p));
    }
    Asked { protocol, key }
}

impl Asked {
    /// A `200` to the extended CONNECT opens the tunnel: it becomes the
    /// `101` (with `Upgrade` and, for a WebSocket, the `Sec-WebSocket-Accept`
    /// the client's key calls for) the rest of the proxy expects. Any
    /// other answer is an ordinary response.
    fn answered(&self, mut resp: Response<Incoming>) -> Response<Incoming> {
        use http::header;
        if resp.status() != http::StatusCode::OK {
            return resp;
        }
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::UPGRADE, self.protocol.clone());
        if let Some(key) = &self.key
            && self.protocol.as_bytes().eq_ignore_ascii_case(b"websocket")
            && !h.contains_key(header::SEC_WEBSOCKET_ACCEPT)
        {
            h.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                websocket_accept(key.as_bytes()),
            );
        }
        resp
    }
}

/// RFC 6455's `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
fn websocket_accept(key: &[u8]) -> HeaderValue {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    // Base64 is always a valid header value.
    HeaderValue::from_str(&accept).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What a connection's server currently allows (its last SETTINGS).
#[derive(Clone, Copy)]
struct PeerSettings {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    max_streams: usize,
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL.
    extended_connect: bool,
}

/// Reads a connection's [`PeerSettings`].
type ServerMax = Rc<dyn Fn() -> PeerSettings>;

/// The HTTP/2 handshake over `io` and its driver task on this worker, with
/// a reader of the server's SETTINGS_MAX_CONCURRENT_STREAMS.
async fn start<T>(
    builder: &http2::Builder<LocalExec>,
    addr: SocketAddr,
    io: T,
) -> Result<(http2::SendRequest<ReplayBody>, AbortHandle, ServerMax), ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let first = Rc::new(FirstFrame::default());
    let io = Watch {
        io,
        first: Some(Rc::clone(&first)),
    };
    let (sender, conn) = builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    // Shared with the reader: the driver borrows it only while polling,
    // which never runs while another task reads.
    let conn = Rc::new(RefCell::new(Some(Box::pin(conn))));
    let reader = Rc::clone(&conn);
    let server_max: ServerMax = Rc::new(move || match reader.try_borrow().as_deref() {
        Ok(Some(c)) => PeerSettings {
            max_streams: c.current_max_send_streams(),
            extended_connect: c.is_extended_connect_protocol_enabled(),
        },
        // Over: no stream fits (the sender is closed too).
        Ok(None) => PeerSettings {
            max_streams: 0,
            extended_connect: false,
        },
        // Being polled right now (never while another task reads).
        Err(_) => PeerSettings {
            max_streams: usize::MAX,
            extended_connect: false,
        },
    });
    let task = tokio::task::spawn_local(async move {
        let r = std::future::poll_fn(|cx| match conn.try_borrow_mut().as_deref_mut() {
            Ok(Some(c)) => c.as_mut().poll(cx),
            Ok(None) => Poll::Ready(Ok(())),
            Err(_) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
        // Dropped now, not with the last reader: requests still queued on
        // it come back unsent, and the sender reads as closed.
        if let Ok(mut c) = conn.try_borrow_mut() {
            c.take();
        }
        if let Err(e) = r {
            tracing::debug!(%addr, error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    // The server's SETTINGS (its preface) say how many streams it takes:
    // known before the first requests pick the connection, so that they
    // spread over connections instead of queueing on this one.
    let settled = first.done.notified();
    if !first.seen.get() {
        let _ = tokio::time::timeout(PREFACE_WAIT, settled).await;
    }
    Ok((sender, task.abort_handle(), server_max))
}

/// Longest wait for the server's first SETTINGS after the handshake.
const PREFACE_WAIT: Duration = Duration::from_secs(1);

/// Whether the server's first frame (its SETTINGS) was read.
#[derive(Default)]
struct FirstFrame {
    /// The first 9 bytes (the frame header) as read so far.
    head: RefCell<Vec<u8>>,
    /// Bytes of the first frame still to read, once its header is known.
    left: Cell<Option<usize>>,
    seen: Cell<bool>,
    done: Notify,
}

impl FirstFrame {
    fn read(&self, mut bytes: &[u8]) {
        if self.left.get().is_none() {
            let mut head = self.head.borrow_mut();
            let take = (9 - head.len()).min(bytes.len());
            head.extend_from_slice(bytes.get(..take).unwrap_or_default());
            bytes = bytes.get(take..).unwrap_or_default();
            if let [a, b, c, ..] = head[..]
                && head.len() == 9
            {
                let len = (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c);
                self.left.set(Some(len));
            }
        }
        if let Some(left) = self.left.get() {
            let left = left.saturating_sub(bytes.len());
            self.left.set(Some(left));
            if left == 0 {
                self.seen.set(true);
                // The driver handles the frame in this same poll; the
                // waiter runs after it.
                self.done.notify_waiters();
            }
        }
    }
}

/// A server socket that reports when the server's first frame was read.
struct Watch<T> {
    io: T,
    first: Option<Rc<FirstFrame>>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(first) = &this.first {
            let new = buf.filled().get(before..).unwrap_or_default();
            let eof = new.is_empty() && matches!(r, Poll::Ready(_));
            first.read(new);
            if first.seen.get() || eof {
                if eof {
                    first.done.notify_waiters();
                }
                this.first = None;
            }
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Whether the server said it did not process the stream: reset with
/// REFUSED_STREAM, or above the last stream id of a graceful GOAWAY
/// (RFC 9113 §8.7).
fn refused(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<h2::Error>() {
            return h2e.is_remote()
                && (h2e.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (h2e.is_go_away() && h2e.reason() == Some(h2::Reason::NO_ERROR)));
        }
        source = s.source();
    }
    false
}

/// Waits for the response head of `fut` (sent at `sent_at`); the server
/// timeout counts from the last request-body progress, so a long upload
/// is not cut short.
pub async fn wait_head<F, T>(fut: F, wait: &Wait<'_>, sent_at: Instant) -> Result<T, H2Failure>
where
    F: std::future::Future<Output = T>,
{
    tokio::pin!(fut);
    let mut last_bytes = wait.body.bytes.get();
    let mut deadline = sent_at + wait.timeout;
    loop {
        let (until, grpc) = match wait.deadline {
            Some((d, total)) if d < deadline => (d, Some(total)),
            _ => (deadline, None),
        };
        tokio::select! {
            r = &mut fut => return Ok(r),
            _ = tokio::time::sleep_until(until) => {
                if let Some(total) = grpc {
                    return Err(H2Failure::Deadline(total));
                }
                let now_bytes = wait.body.bytes.get();
                if now_bytes != last_bytes {
                    last_bytes = now_bytes;
                    deadline = Instant::now() + wait.timeout;
                } else {
                    return Err(H2Failure::Timeout(wait.timeout));
                }
            }
        }
    }
}

/// What was sent of a request body, to send it again.
struct Replay {
    body: RequestBody,
    /// Frames handed out so far, while they fit in `cap`.
    sent: Vec<Frame<Bytes>>,
    bytes: usize,
    /// The backend's `h2.retry_buffer`.
    cap: usize,
    /// More than the cap went out: no replay.
    overflowed: bool,
    /// The body hands out frames to the handle of this generation only (a
    /// failed attempt's body may still be polled by hyper for a moment).
    generation: u32,
}

impl Replay {
    fn new(body: RequestBody, cap: usize) -> Replay {
        Replay {
            body,
            sent: Vec::new(),
            bytes: 0,
            cap,
            overflowed: false,
            generation: 0,
        }
    }

    fn replayable(&self) -> bool {
        !self.overflowed
    }

    fn rewind(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }
}

/// A request body sent on an HTTP/2 stream: the client's body, recorded
/// (up to the backend's `h2.retry_buffer`) so that a retry can send it again.
pub struct ReplayBody {
    state: Rc<RefCell<Replay>>,
    generation: u32,
    /// Next recorded frame to hand out again.
    pos: usize,
}

impl ReplayBody {
    fn new(state: &Rc<RefCell<Replay>>) -> ReplayBody {
        ReplayBody {
            generation: state.borrow().generation,
            state: Rc::clone(state),
            pos: 0,
        }
    }
}

fn copy(frame: &Frame<Bytes>) -> Option<Frame<Bytes>> {
    if let Some(d) = frame.data_ref() {
        return Some(Frame::data(d.clone()));
    }
    frame.trailers_ref().map(|t| Frame::trailers(t.clone()))
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut st = this.state.borrow_mut();
        if st.generation != this.generation {
            return Poll::Ready(None);
        }
        if let Some(f) = st.sent.get(this.pos).and_then(copy) {
            this.pos += 1;
            return Poll::Ready(Some(Ok(f)));
        }
        let r = Pin::new(&mut st.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r
            && !st.overflowed
        {
            let n = frame.data_ref().map_or(0, Bytes::len);
            if st.bytes.saturating_add(n) > st.cap {
                st.overflowed = true;
                st.sent = Vec::new();
            } else if let Some(f) = copy(frame) {
                st.bytes += n;
                st.sent.push(f);
                this.pos += 1;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let st = self.state.borrow();
        st.generation == self.generation && self.pos >= st.sent.len() && st.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let st = self.state.borrow();
        if self.pos == 0 && st.sent.is_empty() {
            st.body.size_hint()
        } else {
            SizeHint::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_is_rfc_6455s() {
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn an_upgrade_becomes_an_extended_connect() {
        let (mut parts, ()) = Request::get("http://app/chat")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(())
            .unwrap()
            .into_parts();
        let asked = extended_connect(&mut parts);
        assert_eq!(parts.method, http::Method::CONNECT);
        assert_eq!(
            parts
                .extensions
                .get::<hyper::ext::Protocol>()
                .map(|p| p.as_str()),
            Some("websocket")
        );
        for gone in ["upgrade", "connection"] {
            assert!(!parts.headers.contains_key(gone), "{gone} is not sent");
        }
        assert_eq!(parts.headers["sec-websocket-version"], "13");
        assert_eq!(asked.protocol, "websocket");
    }
}
