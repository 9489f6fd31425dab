//! The gRPC client behind Proxy-Wasm's `proxy_grpc_call` / `proxy_grpc_stream`:
//! one task per call on the worker's `LocalSet`, over HTTP/2 (h2c, or TLS
//! with ALPN `h2` when the server has `tls`) to a server of the backend
//! named as the cluster (taken in turn among those up: [`super::cluster`]),
//! with one cached connection per server per worker (later calls multiplex
//! on it; calls started together before it exists each open one, and the
//! last is kept).
//!
//! What the guest sees follows Envoy's gRPC async client: length-prefixed
//! messages (a compressed one is an `INTERNAL` error, as Envoy has no
//! decompressor there), `grpc-status` / `grpc-message` from the trailers or
//! a trailers-only response, a non-200 answer mapped with gRPC's HTTP-to-gRPC
//! table, a reset before the answer `UNAVAILABLE` and after it `INTERNAL`,
//! the call's timeout `DEADLINE_EXCEEDED`. A task reports [`GrpcEvent`]s
//! into its instance's inbox and asks the worker to deliver them
//! ([`super::filter::deliver_grpc`]); a cancelled call (or a dropped
//! instance) reports nothing more.
//!
//! Bounds: messages up to [`MAX_MESSAGE`] each way, [`MAX_GRPC_CALLS`] calls
//! and streams live per instance, at most [`MAX_PENDING_EVENTS`] /
//! [`MAX_PENDING_BYTES`] undelivered per call (the task stops reading from
//! the server until the guest caught up), [`MAX_QUEUED_SENDS`] messages
//! queued per stream, a connect timeout, the call's timeout (default and
//! longest [`super::abi::proxy_wasm::MAX_CALL_TIMEOUT`]) and a stream idle
//! timeout ([`STREAM_IDLE`]).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use tokio::sync::{Notify, mpsc, oneshot};

use super::cluster::{Cluster, Member, NO_HEALTHY_UPSTREAM};

/// gRPC status codes the host reports itself.
pub mod code {
    pub const OK: u32 = 0;
    pub const CANCELLED: u32 = 1;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
    pub const PERMISSION_DENIED: u32 = 7;
}

/// Largest gRPC message sent or received (gRPC's default receive limit).
pub const MAX_MESSAGE: usize = 4 << 20;
/// Calls and streams one instance (one plugin VM on one worker) may have live.
pub const MAX_GRPC_CALLS: usize = 64;
/// Undelivered events per call before its task stops reading from the server.
pub const MAX_PENDING_EVENTS: usize = 64;
/// Undelivered message bytes per call before its task stops reading.
pub const MAX_PENDING_BYTES: usize = 4 << 20;
/// Messages a stream may have queued for sending (the guest sends faster than the server reads).
pub const MAX_QUEUED_SENDS: usize = 64;
/// A stream with no message either way for this long is ended with `DEADLINE_EXCEEDED`.
pub const STREAM_IDLE: Duration = Duration::from_secs(300);

/// What a call reports to the guest, in order.
#[derive(Debug)]
pub enum GrpcEvent {
    /// Response headers (streams only): `proxy_on_grpc_receive_initial_metadata`.
    InitialMetadata(Vec<(String, Vec<u8>)>),
    /// One message: `proxy_on_grpc_receive`.
    Message(Vec<u8>),
    /// Trailers (streams only): `proxy_on_grpc_receive_trailing_metadata`.
    TrailingMetadata(Vec<(String, Vec<u8>)>),
    /// The end: `proxy_on_grpc_close` with this status (and `proxy_get_status`'s message).
    Close { status: u32, message: String },
}

/// Finished events of an instance's calls, waiting for delivery: `(token, event)`.
pub type Inbox = Rc<RefCell<VecDeque<(u32, GrpcEvent)>>>;

/// Flow control shared by a call's task and its handle: undelivered events and bytes.
#[derive(Debug, Default)]
pub struct Backlog {
    events: Cell<usize>,
    bytes: Cell<usize>,
    drained: Notify,
}

impl Backlog {
    fn add(&self, bytes: usize) {
        self.events.set(self.events.get() + 1);
        self.bytes.set(self.bytes.get().saturating_add(bytes));
    }

    /// One event of `bytes` was delivered (or dropped).
    pub fn done(&self, bytes: usize) {
        self.events.set(self.events.get().saturating_sub(1));
        self.bytes.set(self.bytes.get().saturating_sub(bytes));
        self.drained.notify_one();
    }

    fn full(&self) -> bool {
        self.events.get() >= MAX_PENDING_EVENTS || self.bytes.get() >= MAX_PENDING_BYTES
    }
}

/// The host's side of a live call or stream (kept in the instance, by token).
#[derive(Debug)]
pub struct GrpcHandle {
    /// The context that made the call (a stream context or a root context).
    pub owner: u32,
    /// The root context the callbacks go to (Envoy: calls belong to the root context).
    pub root: u32,
    /// A stream (`proxy_grpc_stream`) rather than a unary call.
    pub stream: bool,
    /// Messages to send (streams); `None` once half-closed.
    pub tx: Option<mpsc::Sender<Bytes>>,
    /// Dropping (or sending on) it cancels the task: no more callbacks.
    pub cancel: Option<oneshot::Sender<()>>,
    pub local_closed: bool,
    pub remote_closed: bool,
    pub backlog: Rc<Backlog>,
}

/// A call to start once the guest callback that made it returned.
pub struct GrpcStart {
    pub token: u32,
    /// `None`: a `GrpcService` named a cluster that does not exist (the
    /// call fails through `on_grpc_close`, `UNAVAILABLE`, as in Envoy).
    pub upstream: Option<Arc<Cluster>>,
    /// `:authority` (the cluster name, or the `GrpcService`'s `authority`).
    pub authority: String,
    /// `/service/method`.
    pub path: String,
    pub metadata: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The call's deadline (unary calls); streams have the idle timeout.
    pub timeout: Option<Duration>,
    /// The request message (unary calls).
    pub message: Option<Bytes>,
    /// Messages the guest sends (streams).
    pub rx: Option<mpsc::Receiver<Bytes>>,
    pub cancel: oneshot::Receiver<()>,
    pub backlog: Rc<Backlog>,
    pub inbox: Inbox,
}

impl std::fmt::Debug for GrpcStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcStart")
            .field("token", &self.token)
            .field("upstream", &self.upstream.as_ref().map(|u| &u.name))
            .field("path", &self.path)
            .finish()
    }
}

/// An instance's gRPC calls: live handles by token, calls to start after
/// the current callback, the inbox their tasks report to, and what the
/// current gRPC callback may read.
#[derive(Debug, Default)]
pub struct GrpcState {
    pub calls: HashMap<u32, GrpcHandle>,
    pub starting: Vec<GrpcStart>,
    pub inbox: Inbox,
    next_call: u32,
    next_stream: u32,
    /// The message of the current `proxy_on_grpc_receive` (buffer type 5).
    pub message: Vec<u8>,
    /// The metadata of the current metadata callback (map type 4 or 5).
    pub metadata: Vec<(String, Vec<u8>)>,
    /// What `proxy_get_status` answers: the last close's status, and its
    /// message during `proxy_on_grpc_close`.
    pub status: (u32, String),
}

impl GrpcState {
    /// Live calls and streams (a stream the server closed but the guest did not is not counted).
    pub fn live(&self) -> usize {
        // A call not started yet has its handle too.
        self.calls.values().filter(|h| !h.remote_closed).count()
    }

    /// Forgets call `token` (cancelled): its task, started or not, ends
    /// without another callback. Whether it was there.
    pub fn forget(&mut self, token: u32) -> bool {
        self.starting.retain(|s| s.token != token);
        self.calls.remove(&token).is_some()
    }

    /// The next token: Envoy numbers calls 5, 9, 13, ... and streams 6, 10, 14, ...
    /// (callout ids are kind + 4n, http calls being 4n), so a token says its kind.
    pub fn next_token(&mut self, stream: bool) -> u32 {
        let n = if stream {
            &mut self.next_stream
        } else {
            &mut self.next_call
        };
        let base = if stream { 2 } else { 1 };
        loop {
            *n = n.wrapping_add(4);
            let t = (*n & !3) | base;
            if t > 4 && !self.calls.contains_key(&t) {
                return t;
            }
        }
    }
}

/// Whether a token names a unary call (`proxy_grpc_call`).
pub fn is_call_token(t: u32) -> bool {
    t & 3 == 1
}

/// Whether a token names a stream (`proxy_grpc_stream`).
pub fn is_stream_token(t: u32) -> bool {
    t & 3 == 2
}

/// What the guest named as the service: a cluster (backend) name, or a
/// serialized `envoy.config.core.v3.GrpcService` whose `envoy_grpc` names it.
#[derive(Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub cluster: String,
    pub authority: Option<String>,
    pub metadata: Vec<(String, String)>,
    /// Given as a serialized `GrpcService` (not a bare name).
    pub from_proto: bool,
}

/// Reads the service argument as Envoy does: a `GrpcService` message if it
/// parses as one with an `envoy_grpc` cluster, else the bytes are the
/// cluster name. `None` if neither (not UTF-8, or empty).
pub fn parse_service(raw: &[u8]) -> Option<ServiceRef> {
    if let Some(s) = parse_grpc_service(raw) {
        return Some(s);
    }
    let name = std::str::from_utf8(raw).ok()?;
    (!name.is_empty()).then(|| ServiceRef {
        cluster: name.to_string(),
        authority: None,
        metadata: Vec::new(),
        from_proto: false,
    })
}

/// One protobuf field: (number, wire type, payload for length-delimited).
fn proto_fields(mut b: &[u8]) -> Option<Vec<(u64, u8, &[u8])>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (key, rest) = varint(b)?;
        b = rest;
        let (num, wire) = (key >> 3, (key & 7) as u8);
        if num == 0 {
            return None;
        }
        match wire {
            0 => b = varint(b)?.1,
            1 => b = b.get(8..)?,
            5 => b = b.get(4..)?,
            2 => {
                let (len, rest) = varint(b)?;
                let len = usize::try_from(len).ok()?;
                out.push((num, wire, rest.get(..len)?));
                b = rest.get(len..)?;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let mut v: u64 = 0;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, b.get(i + 1..)?));
        }
    }
    None
}

/// `GrpcService { envoy_grpc = 1 { cluster_name = 1; authority = 2 }; initial_metadata = 5 { key = 1; value = 2 } }`.
fn parse_grpc_service(raw: &[u8]) -> Option<ServiceRef> {
    let fields = proto_fields(raw)?;
    let mut out: Option<ServiceRef> = None;
    let mut metadata = Vec::new();
    for (num, _, payload) in &fields {
        match *num {
            1 => {
                let mut cluster = None;
                let mut authority = None;
                for (n, _, p) in proto_fields(payload)? {
                    match n {
                        1 => cluster = Some(std::str::from_utf8(p).ok()?.to_string()),
                        2 => authority = Some(std::str::from_utf8(p).ok()?.to_string()),
                        _ => {}
                    }
                }
                out = Some(ServiceRef {
                    cluster: cluster.filter(|c| !c.is_empty())?,
                    authority: authority.filter(|a| !a.is_empty()),
                    metadata: Vec::new(),
                    from_proto: true,
                });
            }
            5 => {
                let (mut k, mut v) = (String::new(), String::new());
                for (n, _, p) in proto_fields(payload)? {
                    match n {
                        1 => k = std::str::from_utf8(p).ok()?.to_string(),
                        2 => v = std::str::from_utf8(p).ok()?.to_string(),
                        _ => {}
                    }
                }
                metadata.push((k, v));
            }
            _ => {}
        }
    }
    out.map(|mut s| {
        s.metadata = metadata;
        s
    })
}

/// `grpc-timeout` for `d` (milliseconds, as Envoy writes it; at most 8 digits).
pub fn grpc_timeout(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// The request body: length-prefixed messages, the unary one or the guest's
/// as they are sent; ends when the stream is half-closed.
struct GrpcBody {
    first: Option<Bytes>,
    rx: Option<mpsc::Receiver<Bytes>>,
}

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 5);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(m) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(frame(&m)))));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Some(Ok(Frame::data(frame(&m))))),
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.first, &self.rx) {
            (Some(m), None) => SizeHint::with_exact(m.len() as u64 + 5),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

thread_local! {
    /// This worker's HTTP/2 connection to each gRPC server (by backend name and address).
    static CONNS: RefCell<HashMap<(String, SocketAddr), http2::SendRequest<GrpcBody>>> =
        RefCell::new(HashMap::new());
}

/// Most cached connections per worker (one per backend in use).
const MAX_CONNS: usize = 256;

/// A ready connection to a server of `u` taking traffic: the cached one,
/// or a new one; with whether it is TLS.
async fn connection(u: &Cluster) -> Result<(http2::SendRequest<GrpcBody>, bool), String> {
    let m = u.pick().ok_or_else(|| NO_HEALTHY_UPSTREAM.to_string())?;
    let key = (u.name.clone(), m.addr);
    let cached = CONNS.with(|c| {
        c.try_borrow()
            .ok()
            .and_then(|c| c.get(&key).filter(|s| !s.is_closed()).cloned())
    });
    if let Some(mut s) = cached
        && s.ready().await.is_ok()
    {
        return Ok((s, m.tls.is_some()));
    }
    let s = connect(m, u.connect_timeout).await?;
    CONNS.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            c.retain(|_, s| !s.is_closed());
            if c.len() < MAX_CONNS || c.contains_key(&key) {
                c.insert(key, s.clone());
            }
        }
    });
    Ok((s, m.tls.is_some()))
}

async fn connect(m: &Member, timeout: Duration) -> Result<http2::SendRequest<GrpcBody>, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tls = m.tls_target(None, &[b"h2"])?;
    let is_tls = tls.is_some();
    let (io, alpn) = super::cluster::connect(m, tls, timeout).await?;
    if is_tls && alpn.as_deref() != Some(&b"h2"[..]) {
        return Err("the server did not agree to HTTP/2 (ALPN h2)".into());
    }
    let mut builder = http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .max_frame_size(16 << 10)
        .max_header_list_size(64 << 10);
    let io = hyper_util::rt::TokioIo::new(io);
    let (send, conn) = tokio::time::timeout_at(deadline, builder.handshake(io))
        .await
        .map_err(|_| "HTTP/2 handshake timed out".to_string())?
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(send)
}

/// gRPC's HTTP-to-gRPC status mapping (for answers without `grpc-status`).
pub fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

fn pairs(h: &HeaderMap, status: Option<http::StatusCode>) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(h.len() + 1);
    if let Some(s) = status {
        out.push((":status".to_string(), s.as_str().as_bytes().to_vec()));
    }
    for (k, v) in h {
        out.push((k.as_str().to_string(), v.as_bytes().to_vec()));
    }
    out
}

/// `grpc-status` (None: absent or not a number) and the percent-decoded `grpc-message`.
fn status_of(h: &HeaderMap) -> (Option<u32>, String) {
    let status = h
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok());
    let message = h
        .get("grpc-message")
        .map(|v| {
            percent_encoding::percent_decode(v.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    (status, message)
}

/// Reports events of one call into its instance's inbox, then asks the worker to deliver.
struct Sink<'a> {
    token: u32,
    inbox: &'a Inbox,
    backlog: &'a Backlog,
    vm_key: u64,
    /// Unary: only the outcome is reported (the last message, or the failure).
    unary: bool,
    last: RefCell<Option<Vec<u8>>>,
}

impl Sink<'_> {
    fn emit(&self, e: GrpcEvent) {
        if self.unary {
            match e {
                GrpcEvent::Message(m) => {
                    // Envoy keeps the last message of a unary answer.
                    if let Ok(mut l) = self.last.try_borrow_mut() {
                        *l = Some(m);
                    }
                    return;
                }
                GrpcEvent::Close { status, message } => {
                    let last = self.last.try_borrow_mut().ok().and_then(|mut l| l.take());
                    let e = match (status, last) {
                        (code::OK, Some(m)) => GrpcEvent::Message(m),
                        (code::OK, None) => GrpcEvent::Close {
                            status: code::INTERNAL,
                            message: String::new(),
                        },
                        (status, _) => GrpcEvent::Close { status, message },
                    };
                    self.push(e);
                    return;
                }
                _ => return,
            }
        }
        self.push(e);
    }

    fn push(&self, e: GrpcEvent) {
        let n = match &e {
            GrpcEvent::Message(m) => m.len(),
            _ => 0,
        };
        self.backlog.add(n);
        if let Ok(mut q) = self.inbox.try_borrow_mut() {
            q.push_back((self.token, e));
        }
        super::filter::deliver_grpc(self.vm_key);
    }

    fn close(&self, status: u32, message: impl Into<String>) {
        if !self.unary {
            // Envoy's stream error: empty trailing metadata, then the close.
            self.push(GrpcEvent::TrailingMetadata(Vec::new()));
        }
        self.emit(GrpcEvent::Close {
            status,
            message: message.into(),
        });
    }
}

/// Runs one call or stream to its end (or its cancellation) on this worker.
pub async fn run(start: GrpcStart, vm_key: u64) {
    let GrpcStart {
        token,
        upstream,
        authority,
        path,
        metadata,
        timeout,
        message,
        rx,
        cancel,
        backlog,
        inbox,
    } = start;
    let unary = rx.is_none();
    let sink = Sink {
        token,
        inbox: &inbox,
        backlog: &backlog,
        vm_key,
        unary,
        last: RefCell::new(None),
    };
    let Some(upstream) = upstream else {
        sink.close(code::UNAVAILABLE, "Cluster not available");
        return;
    };
    // Unary calls always have a deadline: the plugin's, or the longest allowed.
    let limit = if unary {
        Some(timeout.unwrap_or(super::abi::proxy_wasm::MAX_CALL_TIMEOUT))
    } else {
        None
    };
    let req = Req {
        upstream: &upstream,
        authority: &authority,
        path: &path,
        metadata,
        timeout,
        body: GrpcBody { first: message, rx },
    };
    let exchange = exchange(req, &sink, &backlog);
    tokio::pin!(exchange);
    let deadline = async {
        match limit {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        // Cancelled by the guest, or the instance went away: nothing more is reported.
        _ = cancel => {}
        r = &mut exchange => {
            if let Err((status, message)) = r {
                sink.close(status, message);
            }
        }
        () = deadline => sink.close(code::DEADLINE_EXCEEDED, "upstream request timeout"),
    }
}

struct Req<'a> {
    upstream: &'a Cluster,
    authority: &'a str,
    path: &'a str,
    metadata: Vec<(http::HeaderName, http::HeaderValue)>,
    timeout: Option<Duration>,
    body: GrpcBody,
}

/// The exchange; `Err` is the closing status of a failure (a normal end
/// reports its own close).
async fn exchange(r: Req<'_>, sink: &Sink<'_>, backlog: &Backlog) -> Result<(), (u32, String)> {
    let (mut send, tls) = connection(r.upstream).await.map_err(|e| {
        if e == NO_HEALTHY_UPSTREAM {
            (code::UNAVAILABLE, e)
        } else {
            (code::UNAVAILABLE, format!("upstream connect error: {e}"))
        }
    })?;
    let scheme = if tls { "https" } else { "http" };
    let uri = format!("{scheme}://{}{}", r.authority, r.path);
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers");
    if let Some(t) = r.timeout {
        req = req.header("grpc-timeout", grpc_timeout(t));
    }
    let mut req = req
        .body(r.body)
        .map_err(|e| (code::INTERNAL, format!("invalid request: {e}")))?;
    for (k, v) in r.metadata {
        req.headers_mut().append(k, v);
    }
    let resp = send.send_request(req).await.map_err(|e| {
        (
            code::UNAVAILABLE,
            format!("upstream connect error or disconnect/reset before headers: {e}"),
        )
    })?;
    let (parts, mut body) = resp.into_parts();
    let end = body.is_end_stream();
    sink.emit(GrpcEvent::InitialMetadata(if end {
        Vec::new()
    } else {
        pairs(&parts.headers, Some(parts.status))
    }));
    let (hdr_status, hdr_message) = status_of(&parts.headers);
    if parts.status != http::StatusCode::OK {
        if end && let Some(s) = hdr_status {
            sink.emit(GrpcEvent::TrailingMetadata(pairs(&parts.headers, None)));
            sink.emit(GrpcEvent::Close {
                status: s,
                message: hdr_message,
            });
            return Ok(());
        }
        return Err((http_to_grpc(parts.status.as_u16()), String::new()));
    }
    if end {
        // Trailers-only.
        sink.emit(GrpcEvent::TrailingMetadata(pairs(&parts.headers, None)));
        sink.emit(GrpcEvent::Close {
            status: hdr_status.unwrap_or(code::UNKNOWN),
            message: hdr_message,
        });
        return Ok(());
    }
    let mut buf = BytesMut::new();
    loop {
        // Backpressure: the guest has not taken what came so far.
        while backlog.full() {
            backlog.drained.notified().await;
        }
        let next = if sink.unary {
            body.frame().await
        } else {
            match tokio::time::timeout(STREAM_IDLE, body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    return Err((
                        code::DEADLINE_EXCEEDED,
                        "gRPC stream idle for too long".into(),
                    ));
                }
            }
        };
        match next {
            None => return Err((code::UNKNOWN, String::new())),
            Some(Err(e)) => return Err((code::INTERNAL, format!("upstream reset: {e}"))),
            Some(Ok(f)) => match f.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    while buf.len() >= 5 {
                        let flags = buf.first().copied().unwrap_or(0);
                        let len = buf
                            .get(1..5)
                            .and_then(|b| <[u8; 4]>::try_from(b).ok())
                            .map_or(0, u32::from_be_bytes);
                        let len = usize::try_from(len).unwrap_or(usize::MAX);
                        if len > MAX_MESSAGE {
                            return Err((
                                code::RESOURCE_EXHAUSTED,
                                format!("gRPC message of {len} bytes is larger than {MAX_MESSAGE}"),
                            ));
                        }
                        if buf.len() < 5 + len {
                            break;
                        }
                        if flags != 0 && len > 0 {
                            return Err((
                                code::INTERNAL,
                                "compressed gRPC messages are not supported".into(),
                            ));
                        }
                        buf.advance(5);
                        let msg = buf.split_to(len);
                        sink.emit(GrpcEvent::Message(msg.to_vec()));
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        let (s, m) = status_of(&t);
                        sink.emit(GrpcEvent::TrailingMetadata(pairs(&t, None)));
                        sink.emit(GrpcEvent::Close {
                            status: s.unwrap_or(code::UNKNOWN),
                            message: m,
                        });
                        return Ok(());
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_as_cluster_name_or_proto() {
        assert_eq!(
            parse_service(b"grpc_backend").map(|s| s.cluster),
            Some("grpc_backend".to_string())
        );
        // envoy_grpc { cluster_name: "c1", authority: "a.example" }, initial_metadata { key: "k", value: "v" }
        let mut inner = vec![0x0a, 2, b'c', b'1', 0x12, 9];
        inner.extend_from_slice(b"a.example");
        let mut raw = vec![0x0a, u8::try_from(inner.len()).unwrap_or(0)];
        raw.extend_from_slice(&inner);
        raw.extend_from_slice(&[0x2a, 6, 0x0a, 1, b'k', 0x12, 1, b'v']);
        let s = parse_service(&raw).expect("a GrpcService");
        assert_eq!(s.cluster, "c1");
        assert_eq!(s.authority.as_deref(), Some("a.example"));
        assert_eq!(s.metadata, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(parse_service(b""), None);
        assert_eq!(parse_service(&[0xff, 0xfe]), None);
    }

    #[test]
    fn timeouts_and_statuses() {
        assert_eq!(grpc_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(http_to_grpc(404), code::UNIMPLEMENTED);
        assert_eq!(http_to_grpc(503), code::UNAVAILABLE);
        assert_eq!(http_to_grpc(500), code::UNKNOWN);
        let mut h = HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static("7"));
        h.insert("grpc-message", http::HeaderValue::from_static("no%20entry"));
        assert_eq!(status_of(&h), (Some(7), "no entry".to_string()));
    }
}
