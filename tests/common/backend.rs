//! In-test upstream servers: the echoing hyper [`Backend`], and raw-socket
//! peers ([`ResetBackend`], [`FlakyKeepAliveBackend`], [`RawBackend`]) that
//! misbehave on purpose or record the exact bytes the proxy sends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Body, BoxError, Fnv, IO_TIMEOUT, chan_body, find, full, pattern, pattern_byte};

// ---------------------------------------------------------------------------
// In-test backend server
// ---------------------------------------------------------------------------

/// Counters and switches of one backend server.
#[derive(Debug)]
pub struct BackendState {
    pub name: String,
    /// TCP connections accepted (health checks included).
    pub connections: AtomicUsize,
    /// Requests other than `GET /health`.
    pub requests: AtomicUsize,
    /// `/health` requests.
    pub health_checks: AtomicUsize,
    /// Requests currently being handled.
    pub active: AtomicUsize,
    /// Whether `/health` answers 200 (else 503).
    pub healthy: AtomicBool,
    /// Delay before `/health` answers, in milliseconds.
    pub health_delay_ms: AtomicU64,
    /// Released by tests to let `/gated-download` send its second half.
    pub gate: Notify,
    /// Request body bytes received so far (all requests).
    pub received: AtomicUsize,
}

/// An HTTP/1.1 server on a free loopback port. Paths:
/// - `/health`: 200 or 503 per `healthy`;
/// - `/delay/MS...`: wait MS milliseconds, then echo;
/// - `/status/NNN...`: echo with status NNN;
/// - `/large/N`: N pattern bytes streamed chunked (`/large/N?cl=1`: with Content-Length);
/// - `/gated-download`: sends `first;`, waits for `gate`, sends `second`;
/// - `/hop-resp`: echo with hop-by-hop response headers;
/// - `/cookies`: echo with two `Set-Cookie` headers;
/// - `/close`: echo with `Connection: close`;
/// - anything else: echo the request as JSON.
///
/// Every response carries `x-server: NAME` and `x-secret: 1`.
pub struct Backend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    task: JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(BackendState {
            name: name.to_string(),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            health_delay_ms: AtomicU64::new(0),
            gate: Notify::new(),
            received: AtomicUsize::new(0),
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_nodelay(true);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend { addr, state, task }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }
    pub fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::SeqCst)
    }
    pub fn received(&self) -> usize {
        self.state.received.load(Ordering::SeqCst)
    }
    pub fn set_healthy(&self, up: bool) {
        self.state.healthy.store(up, Ordering::SeqCst);
    }
    pub fn set_health_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.health_delay_ms.store(ms, Ordering::SeqCst);
    }
    pub fn open_gate(&self) {
        self.state.gate.notify_one();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct ActiveGuard(Arc<BackendState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    st: Arc<BackendState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        st.health_checks.fetch_add(1, Ordering::SeqCst);
        let delay = st.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let up = st.healthy.load(Ordering::SeqCst);
        let status = if up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(with_ids(
            &st,
            Response::builder().status(status),
            full(if up { "ok" } else { "down" }),
        ));
    }
    st.requests.fetch_add(1, Ordering::SeqCst);
    st.active.fetch_add(1, Ordering::SeqCst);
    let _guard = ActiveGuard(st.clone());
    let mut segs = path.trim_start_matches('/').split('/');
    let first = segs.next().unwrap_or("");
    let arg = segs.next().unwrap_or("");

    let mut builder = Response::builder();
    match first {
        "delay" => {
            let ms: u64 = arg.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        "status" => {
            let code: u16 = arg.parse().unwrap_or(200);
            builder = builder.status(code);
        }
        "large" => {
            let n: usize = arg.parse().unwrap_or(0);
            let with_len = req.uri().query().is_some_and(|q| q.contains("cl=1"));
            drain(&st, req.into_body()).await;
            let body = if with_len {
                full(pattern(n))
            } else {
                PatternBody { pos: 0, len: n }.boxed()
            };
            return Ok(with_ids(&st, builder, body));
        }
        "gated-download" => {
            drain(&st, req.into_body()).await;
            let (tx, body) = chan_body();
            let st2 = st.clone();
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first;")).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), st2.gate.notified()).await;
                let _ = tx.send(Bytes::from_static(b"second")).await;
            });
            return Ok(with_ids(&st, builder, body));
        }
        "hop-resp" => {
            builder = builder
                .header("connection", "x-bar")
                .header("x-bar", "1")
                .header("keep-alive", "timeout=99")
                .header("proxy-connection", "keep-alive")
                .header("x-keep-resp", "yes");
        }
        "cookies" => {
            builder = builder
                .header("set-cookie", "a=1; Path=/")
                .header("set-cookie", "b=2; Path=/; HttpOnly");
        }
        "close" => {
            builder = builder.header("connection", "close");
        }
        _ => {}
    }
    let echo = echo_json(&st, req).await;
    builder = builder.header("content-type", "application/json");
    Ok(with_ids(&st, builder, full(echo.to_string())))
}

/// Streams `len` bytes of the test pattern in 64 KiB frames, without a length.
struct PatternBody {
    pos: usize,
    len: usize,
}

impl HttpBody for PatternBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.pos >= self.len {
            return Poll::Ready(None);
        }
        let end = (self.pos + 64 * 1024).min(self.len);
        let chunk: Vec<u8> = (self.pos..end).map(pattern_byte).collect();
        self.pos = end;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn with_ids(st: &BackendState, builder: http::response::Builder, body: Body) -> Response<Body> {
    builder
        .header("x-server", st.name.as_str())
        .header("x-secret", "1")
        .body(body)
        .expect("build backend response")
}

async fn drain(st: &BackendState, mut body: Incoming) {
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    st.received.fetch_add(d.len(), Ordering::SeqCst);
                }
            }
            Err(_) => break,
        }
    }
}

async fn echo_json(st: &BackendState, req: Request<Incoming>) -> Value {
    let (parts, mut body) = req.into_parts();
    let mut hash = Fnv::new();
    let mut len = 0usize;
    let mut sample = Vec::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    st.received.fetch_add(d.len(), Ordering::SeqCst);
                    len += d.len();
                    hash.update(d);
                    if sample.len() < 4096 {
                        let take = (4096 - sample.len()).min(d.len());
                        sample.extend_from_slice(&d[..take]);
                    }
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let headers: Vec<Value> = parts
        .headers
        .iter()
        .map(|(k, v)| json!([k.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    json!({
        "server": st.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("", |p| p.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": len,
        "body_hash": hash.hex(),
        "body": String::from_utf8_lossy(&sample),
        "body_error": body_error,
    })
}

/// A backend's JSON echo of one request.
#[derive(Debug, Clone)]
pub struct Echo(pub Value);

impl Echo {
    /// The `x-*` request headers the backend saw (not `X-Forwarded-*`, which
    /// portcullis adds) as `name: value`, sorted by name, each header's
    /// values in their order: what side-by-side tests compare.
    pub fn x_headers(&self) -> Vec<String> {
        let mut seen: Vec<String> = self.0["headers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        let k = p[0].as_str()?;
                        let v = p[1].as_str()?;
                        (k.starts_with("x-") && !k.starts_with("x-forwarded-"))
                            .then(|| format!("{k}: {v}"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        seen.sort_by(|a, b| {
            a.split(':')
                .next()
                .unwrap_or("")
                .cmp(b.split(':').next().unwrap_or(""))
        });
        seen
    }

    pub fn server(&self) -> &str {
        self.0["server"].as_str().unwrap_or("")
    }
    pub fn method(&self) -> &str {
        self.0["method"].as_str().unwrap_or("")
    }
    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap_or("")
    }
    pub fn version(&self) -> &str {
        self.0["version"].as_str().unwrap_or("")
    }
    pub fn body(&self) -> &str {
        self.0["body"].as_str().unwrap_or("")
    }
    pub fn body_len(&self) -> u64 {
        self.0["body_len"].as_u64().unwrap_or(u64::MAX)
    }
    pub fn body_hash(&self) -> &str {
        self.0["body_hash"].as_str().unwrap_or("")
    }
    /// All values of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
                    .filter_map(|h| h[1].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
}

/// A "backend" that accepts connections, reads a little and closes them: upstream reset.
pub struct ResetBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ResetBackend {
    pub async fn start() -> ResetBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                    // Reset rather than a clean close.
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    drop(s);
                });
            }
        });
        ResetBackend { addr, task }
    }
}

impl Drop for ResetBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server that claims keep-alive but closes each connection 100 ms after
/// its first response: pooled upstream connections go stale.
pub struct FlakyKeepAliveBackend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FlakyKeepAliveBackend {
    pub async fn start() -> FlakyKeepAliveBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while find(&buf, b"\r\n\r\n").is_none() {
                        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await
                        {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-server: flaky\r\n\r\nflaky",
                        )
                        .await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    drop(s);
                });
            }
        });
        FlakyKeepAliveBackend {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for FlakyKeepAliveBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Hostile peers (issue #14): a raw backend that records what it receives
// ---------------------------------------------------------------------------

/// One request as a [`RawBackend`] read it off the wire.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The request line, e.g. `GET /a HTTP/1.1`.
    pub line: String,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked when it came chunked).
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request target (`/a?q=1`).
    pub fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("")
    }
    /// Every value of header `name` (case-insensitive), one per line, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Parses one complete request at the start of `buf`: the request and the
/// bytes it took, or `None` while incomplete (or unparsable).
pub fn parse_raw_request(buf: &[u8]) -> Option<(RawRequest, usize)> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let mut pos = head_end + 4;
    let mut body = Vec::new();
    if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let rest = buf.get(pos..)?;
            let eol = find(rest, b"\r\n")?;
            let size_text = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            pos += eol + 2;
            if size == 0 {
                // No trailers expected from the proxy: the final CRLF.
                let rest = buf.get(pos..)?;
                let end = find(rest, b"\r\n")?;
                pos += end + 2;
                break;
            }
            body.extend_from_slice(buf.get(pos..pos + size)?);
            pos += size + 2;
            if buf.len() < pos {
                return None;
            }
        }
    } else if let Some(cl) = value("content-length") {
        let n: usize = cl.trim().parse().ok()?;
        body.extend_from_slice(buf.get(pos..pos + n)?);
        pos += n;
    }
    Some((
        RawRequest {
            line,
            headers,
            body,
        },
        pos,
    ))
}

#[derive(Debug, Default)]
struct RawLog {
    bytes: Vec<u8>,
    requests: Vec<RawRequest>,
    connections: usize,
}

/// A server on raw TCP: answers each complete request it reads with fixed
/// bytes (keeping the connection) and records every byte and request received.
pub struct RawBackend {
    pub addr: SocketAddr,
    log: Arc<Mutex<RawLog>>,
    task: JoinHandle<()>,
}

impl RawBackend {
    pub async fn start(reply: impl Into<Bytes>) -> RawBackend {
        let reply: Bytes = reply.into();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log: Arc<Mutex<RawLog>> = Arc::default();
        let shared = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                shared.lock().expect("log").connections += 1;
                let (log, reply) = (shared.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 16 * 1024];
                    loop {
                        while let Some((req, used)) = parse_raw_request(&buf) {
                            buf.drain(..used);
                            log.lock().expect("log").requests.push(req);
                            if s.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                        match tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => {
                                log.lock()
                                    .expect("log")
                                    .bytes
                                    .extend_from_slice(&chunk[..n]);
                                buf.extend_from_slice(&chunk[..n]);
                            }
                            _ => return,
                        }
                    }
                });
            }
        });
        RawBackend { addr, log, task }
    }

    /// Every byte received so far, all connections in arrival order.
    pub fn received(&self) -> Vec<u8> {
        self.log.lock().expect("log").bytes.clone()
    }

    /// The complete requests read so far.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().expect("log").requests.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.log.lock().expect("log").connections
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP endpoint that records each request (method, path, body) and
/// answers 200 `ok`: the receiving end of webhooks scripts send.
pub struct Webhook {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<(String, String, String)>>>,
    task: JoinHandle<()>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook");
        let addr = listener.local_addr().expect("webhook addr");
        let calls: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
        let log = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                                .unwrap_or_default();
                            log.lock().expect("webhook log").push((method, path, body));
                            Ok::<_, Infallible>(Response::new(full("ok")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Webhook { addr, calls, task }
    }

    /// The requests received so far.
    pub fn calls(&self) -> Vec<(String, String, String)> {
        self.calls.lock().expect("webhook log").clone()
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP echo server; each connection's bytes come back prefixed by `tag`.
pub async fn tcp_echo(tag: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut first = true;
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if first && !tag.is_empty() {
                        let _ = s.write_all(tag.as_bytes()).await;
                        first = false;
                    }
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}
