//! Shared helpers of the end-to-end tests: the daemon under test, in-test
//! backends, HTTP clients (hyper HTTP/1.1, h2c and raw TCP), config snippets.
//!
//! Every wait is bounded; every test owns its ports and temp directory.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type used by the test clients and backends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Default bound on a single client exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Time bounds, ports, temp dirs
// ---------------------------------------------------------------------------

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every 25 ms until it returns true; panics after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("condition not reached within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "portcullis-e2e-{tag}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Config snippets
// ---------------------------------------------------------------------------

/// Frontend and admin addresses of one daemon.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub web: SocketAddr,
    pub admin: SocketAddr,
}

impl Ports {
    pub fn new() -> Ports {
        let [web, admin] = free_addrs();
        Ports { web, admin }
    }
}

/// `N` distinct free loopback addresses: the listeners are held together,
/// since one freed at once may be handed out again by the next bind.
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local_addr"))
}

impl Default for Ports {
    fn default() -> Self {
        Ports::new()
    }
}

/// A `[global]` + `[global.timeout]` section with short test timeouts.
///
/// `overrides` replace (or add) keys; values are TOML literals. Timeout keys
/// are written `timeout.server` etc.
pub fn global_section(admin: SocketAddr, overrides: &[(&str, &str)]) -> String {
    let admin_v = format!("\"{admin}\"");
    let mut global: Vec<(String, String)> = vec![
        ("workers".into(), "1".into()),
        ("admin".into(), admin_v),
        ("grace".into(), "\"5s\"".into()),
        ("access_log".into(), "\"json\"".into()),
        ("max_header_size".into(), "\"16KiB\"".into()),
        ("max_headers".into(), "50".into()),
    ];
    let mut timeout: Vec<(String, String)> = vec![
        ("connect".into(), "\"1s\"".into()),
        ("client".into(), "\"2s\"".into()),
        ("server".into(), "\"2s\"".into()),
        ("http_request".into(), "\"1s\"".into()),
        ("keep_alive".into(), "\"5s\"".into()),
    ];
    for (k, v) in overrides {
        let (list, key) = match k.strip_prefix("timeout.") {
            Some(t) => (&mut timeout, t),
            None => (&mut global, *k),
        };
        match list.iter_mut().find(|(name, _)| name == key) {
            Some(entry) => entry.1 = (*v).to_string(),
            None => list.push((key.to_string(), (*v).to_string())),
        }
    }
    let mut out = String::from("[global]\n");
    for (k, v) in &global {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out.push_str("\n[global.timeout]\n");
    for (k, v) in &timeout {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out.push('\n');
    out
}

/// A `[[frontend]]` table; `extra` holds further keys (e.g. rules).
pub fn frontend_section(
    name: &str,
    bind: SocketAddr,
    default_backend: &str,
    extra: &str,
) -> String {
    format!(
        "[[frontend]]\nname = \"{name}\"\nbind = \"{bind}\"\ndefault_backend = \"{default_backend}\"\n{extra}\n"
    )
}

/// A `[[backend]]` table with `servers` as (name, addr, weight); `extra` holds further keys.
pub fn backend_section(
    name: &str,
    balance: &str,
    servers: &[(&str, SocketAddr, u32)],
    extra: &str,
) -> String {
    let mut out = format!("[[backend]]\nname = \"{name}\"\nbalance = \"{balance}\"\nserver = [\n");
    for (sname, addr, weight) in servers {
        out.push_str(&format!(
            "  {{ name = \"{sname}\", addr = \"{addr}\", weight = {weight} }},\n"
        ));
    }
    out.push_str("]\n");
    out.push_str(extra);
    out.push('\n');
    out
}

/// The usual test setup: frontend `web` → backend `app` (roundrobin) over `backends`,
/// whose config server names are the backends' names.
pub fn simple_config(
    ports: &Ports,
    backends: &[&Backend],
    global_overrides: &[(&str, &str)],
) -> String {
    let servers: Vec<(&str, SocketAddr, u32)> = backends
        .iter()
        .map(|b| (b.state.name.as_str(), b.addr, 1))
        .collect();
    format!(
        "{}{}{}",
        global_section(ports.admin, global_overrides),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &servers, "")
    )
}

/// Starts a daemon with [`simple_config`] and waits until it is ready.
pub async fn simple_proxy(backends: &[&Backend]) -> (Daemon, Ports) {
    let ports = Ports::new();
    let cfg = simple_config(&ports, backends, &[]);
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    (d, ports)
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

type Shared = Arc<Mutex<String>>;

fn collect<R: Read + Send + 'static>(mut pipe: R, into: Shared) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    into.lock().expect("log lock").push_str(&text);
                }
            }
        }
    });
}

/// Output of a finished (or killed) run of the binary.
#[derive(Debug)]
pub struct Finished {
    /// `None` if it had to be killed after the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args`, killing it after `limit`.
pub fn run_bin(args: &[&str], limit: Duration) -> Finished {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let out: Shared = Arc::default();
    let err: Shared = Arc::default();
    let t_out = child.stdout.take().expect("stdout");
    let t_err = child.stderr.take().expect("stderr");
    let h1 = {
        let out = out.clone();
        std::thread::spawn(move || collect_blocking(t_out, out))
    };
    let h2 = {
        let err = err.clone();
        std::thread::spawn(move || collect_blocking(t_err, err))
    };
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = h1.join();
    let _ = h2.join();
    let stdout = out.lock().expect("lock").clone();
    let stderr = err.lock().expect("lock").clone();
    Finished {
        status,
        stdout,
        stderr,
    }
}

fn collect_blocking<R: Read>(mut pipe: R, into: Shared) {
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => into
                .lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

/// A running `portcullis run -c FILE`, killed on drop.
pub struct Daemon {
    child: Child,
    pub config_path: PathBuf,
    stdout: Shared,
    stderr: Shared,
    exited: Option<ExitStatus>,
    _dir: TempDir,
}

impl Daemon {
    /// Writes `config`, spawns the daemon and waits until every address in
    /// `ready` accepts connections (10 s at most).
    pub async fn start(config: &str, ready: &[SocketAddr]) -> Daemon {
        let mut d = Daemon::spawn(config);
        for addr in ready {
            d.wait_accepting(*addr, Duration::from_secs(10)).await;
        }
        d
    }

    /// Spawns without waiting for readiness.
    pub fn spawn(config: &str) -> Daemon {
        let dir = TempDir::new("run");
        let config_path = dir.write("portcullis.toml", config);
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis run");
        let stdout: Shared = Arc::default();
        let stderr: Shared = Arc::default();
        collect(child.stdout.take().expect("stdout"), stdout.clone());
        collect(child.stderr.take().expect("stderr"), stderr.clone());
        Daemon {
            child,
            config_path,
            stdout,
            stderr,
            exited: None,
            _dir: dir,
        }
    }

    async fn wait_accepting(&mut self, addr: SocketAddr, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
            {
                return;
            }
            if let Some(st) = self.try_exit_status() {
                panic!(
                    "portcullis exited ({st}) before accepting on {addr}\n--- config ---\n{}\n--- stderr ---\n{}",
                    std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.stderr()
                );
            }
            if start.elapsed() > limit {
                panic!(
                    "portcullis not accepting on {addr} after {limit:?}\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_exit_status() {
                return Some(st);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// Waits until a complete stderr line satisfies `pred`.
    pub async fn wait_stderr_line(
        &self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let start = Instant::now();
        loop {
            let text = self.stderr();
            // Only complete lines (terminated by '\n').
            let complete = match text.rfind('\n') {
                Some(i) => &text[..i],
                None => "",
            };
            if let Some(line) = complete.lines().find(|l| pred(l)) {
                return Some(line.to_string());
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let err = self.stderr();
            let tail: String = if err.len() > 6000 {
                let mut cut = err.len() - 6000;
                while !err.is_char_boundary(cut) {
                    cut += 1;
                }
                err[cut..].to_string()
            } else {
                err
            };
            eprintln!("--- portcullis stderr (tail) ---\n{tail}\n--- end ---");
        }
    }
}

// ---------------------------------------------------------------------------
// Bodies and hashing
// ---------------------------------------------------------------------------

/// FNV-1a, 64 bit: a small deterministic hash to compare bodies.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

pub fn fnv_hex(data: &[u8]) -> String {
    let mut h = Fnv::new();
    h.update(data);
    h.hex()
}

/// Byte `i` of the deterministic test pattern.
pub fn pattern_byte(i: usize) -> u8 {
    ((i * 7 + i / 251) % 251) as u8
}

/// The first `n` bytes of the test pattern.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body fed through a channel; no size hint, so HTTP/1.1 sends it chunked.
pub struct ChanBody {
    rx: mpsc::Receiver<Bytes>,
}

impl HttpBody for ChanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A streaming body and the sender that feeds it (drop the sender to end it).
pub fn chan_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChanBody { rx }.boxed())
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
// Clients
// ---------------------------------------------------------------------------

/// A response with its body collected.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
    /// The backend's echo; panics with the body if it is not one.
    pub fn echo(&self) -> Echo {
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(v) if v.get("server").is_some() => Echo(v),
            _ => panic!(
                "expected a backend echo, got {} with body {:?}",
                self.status,
                self.text()
            ),
        }
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

async fn collect_resp(resp: Response<Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// A request builder for `path` with a Host header naming `addr`.
pub fn request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
}

pub fn get_req(addr: SocketAddr, path: &str) -> Request<Body> {
    request(Method::GET, addr, path)
        .body(empty())
        .expect("build request")
}

/// One HTTP/1.1 client connection (hyper).
pub struct H1 {
    pub addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> H1 {
        let stream = within("connect to proxy", IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        H1::handshake(addr, stream).await
    }

    /// Connects from a chosen local IP (e.g. 127.0.0.2).
    pub async fn connect_from(local: IpAddr, addr: SocketAddr) -> H1 {
        let sock = TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(local, 0))
            .unwrap_or_else(|e| panic!("bind {local}: {e}"));
        let stream = within("connect to proxy", IO_TIMEOUT, sock.connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr} from {local}: {e}"));
        H1::handshake(addr, stream).await
    }

    async fn handshake(addr: SocketAddr, stream: TcpStream) -> H1 {
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("http1 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H1 { addr, sender }
    }

    /// Sends a request and returns the response head with a streaming body.
    pub async fn try_send_streaming(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        within("client connection ready", IO_TIMEOUT, self.sender.ready()).await?;
        Ok(within("response head", IO_TIMEOUT, self.sender.send_request(req)).await?)
    }

    pub async fn try_send(&mut self, req: Request<Body>) -> Result<Resp, BoxError> {
        let resp = self.try_send_streaming(req).await?;
        within("response body", IO_TIMEOUT, collect_resp(resp)).await
    }

    pub async fn send(&mut self, req: Request<Body>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        self.try_send(req)
            .await
            .unwrap_or_else(|e| panic!("{what} via {}: {e:?}", self.addr))
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        let req = get_req(self.addr, path);
        self.send(req).await
    }
}

/// GET `path` on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    H1::connect(addr).await.get(path).await
}

/// One h2c (prior knowledge) client connection; clones share it.
#[derive(Clone)]
pub struct H2 {
    pub addr: SocketAddr,
    sender: hyper::client::conn::http2::SendRequest<Body>,
}

impl H2 {
    pub async fn connect(addr: SocketAddr) -> H2 {
        let stream = within("connect to proxy", IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let (sender, conn) = within(
            "h2 handshake",
            IO_TIMEOUT,
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        H2 { addr, sender }
    }

    pub async fn send(&mut self, req: Request<Body>) -> Resp {
        let what = format!("{} {}", req.method(), req.uri());
        let res: Result<Resp, BoxError> = async {
            within("h2 ready", IO_TIMEOUT, self.sender.ready()).await?;
            let resp = within(
                "h2 response head",
                IO_TIMEOUT,
                self.sender.send_request(req),
            )
            .await?;
            within("h2 response body", IO_TIMEOUT, collect_resp(resp)).await
        }
        .await;
        res.unwrap_or_else(|e| panic!("h2 {what}: {e:?}"))
    }

    /// A request builder with an absolute URI (HTTP/2 needs scheme and authority).
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .version(Version::HTTP_2)
            .uri(format!("http://{}{path}", self.addr))
    }
}

// ---------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one HTTP/1.x response from `s` (Content-Length, chunked or until EOF).
/// Bytes past the end of that response are dropped (no pipelining).
pub async fn read_response(s: &mut TcpStream, limit: Duration) -> Result<RawResp, String> {
    tokio::time::timeout(limit, read_response_inner(s))
        .await
        .map_err(|_| format!("no complete response within {limit:?}"))?
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_response_inner(s: &mut TcpStream) -> Result<RawResp, String> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if read_more(s, &mut buf).await? == 0 {
            return Err(format!(
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let hdr = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if hdr("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&rest, b"\r\n") {
                    break i;
                }
                let mut tmp = std::mem::take(&mut rest);
                if read_more(s, &mut tmp).await? == 0 {
                    return Err("EOF inside chunked body".into());
                }
                rest = tmp;
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            rest.drain(..line_end + 2);
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    if let Some(i) = find(&rest, b"\r\n") {
                        let empty = i == 0;
                        rest.drain(..i + 2);
                        if empty {
                            break;
                        }
                        continue;
                    }
                    let mut tmp = std::mem::take(&mut rest);
                    if read_more(s, &mut tmp).await? == 0 {
                        return Err("EOF inside chunked trailers".into());
                    }
                    rest = tmp;
                }
                break;
            }
            while rest.len() < size + 2 {
                let mut tmp = std::mem::take(&mut rest);
                if read_more(s, &mut tmp).await? == 0 {
                    return Err("EOF inside chunk".into());
                }
                rest = tmp;
            }
            body.extend_from_slice(&rest[..size]);
            rest.drain(..size + 2);
        }
        body
    } else if let Some(cl) = hdr("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| format!("bad content-length {cl:?}"))?;
        while rest.len() < n {
            let mut tmp = std::mem::take(&mut rest);
            if read_more(s, &mut tmp).await? == 0 {
                return Err("EOF inside body".into());
            }
            rest = tmp;
        }
        rest.truncate(n);
        rest
    } else {
        while read_more(s, &mut rest).await? > 0 {}
        rest
    };
    Ok(RawResp {
        status,
        head,
        headers,
        body,
    })
}

/// Connects, writes `bytes`, reads one response.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> (TcpStream, RawResp) {
    let mut s = within("raw connect", IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    within("raw write", IO_TIMEOUT, s.write_all(bytes))
        .await
        .expect("raw write");
    let resp = read_response(&mut s, IO_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("raw request to {addr}: {e}"));
    (s, resp)
}

/// Waits until the peer closes `s` (EOF or reset); false if still open after `limit`.
pub async fn wait_closed(s: &mut TcpStream, limit: Duration) -> bool {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------

/// GET `/stats` from the admin listener as JSON.
pub async fn stats(admin: SocketAddr) -> Value {
    let r = get(admin, "/stats").await;
    assert_eq!(r.status, StatusCode::OK, "/stats: {}", r.text());
    r.json()
}

/// The element of JSON array `arr` whose `name` is `name`.
pub fn named<'a>(arr: &'a Value, name: &str) -> Option<&'a Value> {
    arr.as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
}

/// `up` of server `server` in backend `backend` per `/stats`.
pub fn server_up(stats: &Value, backend: &str, server: &str) -> Option<bool> {
    let b = named(&stats["backends"], backend)?;
    named(&b["servers"], server)?["up"].as_bool()
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

// ---------------------------------------------------------------------------
// Admin API access: token, Unix socket
// ---------------------------------------------------------------------------

/// The admin token the tests configure and send.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// [`ADMIN_TOKEN`] as a TOML value, for `global_section(.., &[("admin_token", ADMIN_TOKEN_TOML)])`.
pub const ADMIN_TOKEN_TOML: &str = "\"test-admin-token-0123456789abcdef\"";

/// A request builder for the admin API that carries [`ADMIN_TOKEN`] and a JSON content type.
pub fn admin_request(method: Method, admin: SocketAddr, path: &str) -> http::request::Builder {
    request(method, admin, path)
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
}

/// Sends `method path` with [`ADMIN_TOKEN`] and JSON `body` on a fresh admin connection.
pub async fn admin_send(admin: SocketAddr, method: Method, path: &str, body: &str) -> Resp {
    let req = admin_request(method, admin, path)
        .body(full(body.to_string()))
        .expect("admin request");
    H1::connect(admin).await.send(req).await
}

/// Sends `req` over a fresh connection to the Unix socket at `path`.
pub async fn unix_send(path: &Path, req: Request<Body>) -> Resp {
    let stream = within(
        "connect to the admin socket",
        IO_TIMEOUT,
        tokio::net::UnixStream::connect(path),
    )
    .await
    .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake over the Unix socket");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let what = format!("{} {} via {}", req.method(), req.uri(), path.display());
    let res: Result<Resp, BoxError> = async {
        let resp = within("response head", IO_TIMEOUT, sender.send_request(req)).await?;
        within("response body", IO_TIMEOUT, collect_resp(resp)).await
    }
    .await;
    res.unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

impl Daemon {
    /// Waits until the Unix socket at `path` accepts connections.
    pub async fn wait_unix_accepting(&mut self, path: &Path, limit: Duration) {
        let start = Instant::now();
        loop {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return;
            }
            if let Some(st) = self.try_exit_status() {
                panic!(
                    "portcullis exited ({st}) before accepting on {}\n--- stderr ---\n{}",
                    path.display(),
                    self.stderr()
                );
            }
            if start.elapsed() > limit {
                panic!(
                    "portcullis not accepting on {} after {limit:?}\n--- stderr ---\n{}",
                    path.display(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
