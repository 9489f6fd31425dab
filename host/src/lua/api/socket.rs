//! `core.tcp()`: HAProxy's `Socket` class as a cosocket on the worker's
//! tokio runtime. A method starts an operation here (`start`), the Lua side
//! yields the socket to the host (the IO marker), the call's driver awaits
//! the operation's future (`runtime::Step::Io`) and resumes the coroutine,
//! which then reads the outcome (`result`) with LuaSocket's and HAProxy's
//! conventions: a value on success, `nil, "error text"` (and for `receive`
//! what arrived before the error) on failure.
//!
//! Every wait is bounded by the socket's timeout (`settimeout`, default the
//! plugin's `timeout.client`), and what `receive` buffers by the plugin's
//! memory limit. Plain TCP and Unix sockets (`unix@/path` or an absolute
//! path), and TLS over either (`connect_ssl`: as HAProxy's Lua socket, the
//! server certificate is not verified and no SNI is sent).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use mlua::{Lua, MultiValue, Table, UserData, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::args::{Args, func, none, one};
use crate::filter::WaitFuture;
use crate::lua::runtime::CallCx;

/// Longest `settimeout` accepted (seconds); longer is surely a unit mistake.
const MAX_TIMEOUT: f64 = 3600.0;

/// A connected stream.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    TlsTcp(Box<TlsStream<TcpStream>>),
    TlsUnix(Box<TlsStream<UnixStream>>),
}

impl Stream {
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            Stream::Unix(s) => s.read_buf(buf).await,
            Stream::TlsTcp(s) => eof_is_close(s.read_buf(buf).await),
            Stream::TlsUnix(s) => eof_is_close(s.read_buf(buf).await),
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(data).await,
            Stream::Unix(s) => s.write_all(data).await,
            Stream::TlsTcp(s) => {
                s.write_all(data).await?;
                // rustls holds the records until flushed.
                s.flush().await
            }
            Stream::TlsUnix(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }
}

/// A TLS peer that closes without `close_notify` (many servers do after
/// `Connection: close`) has closed, as HAProxy's SSL layer sees it.
fn eof_is_close(r: std::io::Result<usize>) -> std::io::Result<usize> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
        r => r,
    }
}

/// What an operation left for `result`.
enum Outcome {
    /// Success: these values.
    Values(Vec<Out>),
    /// Failure: `nil, message[, partial]`.
    Fail(String, Option<Vec<u8>>),
}

enum Out {
    Int(i64),
    Bytes(Vec<u8>),
}

/// One socket's state, shared by its Lua object and its pending operation.
struct Inner {
    stream: RefCell<Option<Stream>>,
    /// Bytes read and not yet returned by `receive`.
    rbuf: RefCell<Vec<u8>>,
    timeout: Cell<Duration>,
    /// Most bytes `receive` may hold (the plugin's memory limit).
    max: Cell<usize>,
    peer: Cell<Option<SocketAddr>>,
    local: Cell<Option<SocketAddr>>,
    pending: RefCell<Option<WaitFuture>>,
    outcome: RefCell<Option<Outcome>>,
}

/// The userdata behind a Lua `Socket` object.
pub(crate) struct Socket(Rc<Inner>);

impl UserData for Socket {}

impl Socket {
    /// The operation the script yielded on, for its driver to await.
    pub(crate) fn take_pending(&self) -> Option<WaitFuture> {
        self.0.pending.try_borrow_mut().ok()?.take()
    }
}

/// `P.socket`: the functions the Lua `Socket` class (prelude) is made of.
pub(super) fn table(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "new",
            func(lua, move |lua, _| {
                let inner = Inner {
                    stream: RefCell::new(None),
                    rbuf: RefCell::new(Vec::new()),
                    timeout: Cell::new(cx.plugin.client_timeout),
                    max: Cell::new(cx.plugin.current_memory_limit()),
                    peer: Cell::new(None),
                    local: Cell::new(None),
                    pending: RefCell::new(None),
                    outcome: RefCell::new(None),
                };
                one(Value::UserData(
                    lua.create_userdata(Socket(Rc::new(inner)))?,
                ))
            })?,
        )?;
    }
    t.raw_set(
        "start",
        func(lua, |_, a| {
            let args = Args::new(&a, "socket", 0);
            let inner = socket(&args)?;
            let op = args.string(2)?;
            let fut: Option<WaitFuture> = match op.as_str() {
                "connect" => start_connect(&inner, &args, false)?,
                "connect_ssl" => start_connect(&inner, &args, true)?,
                "send" => start_send(&inner, &args)?,
                "receive" => start_receive(&inner, &args)?,
                other => {
                    return Err(mlua::Error::runtime(format!(
                        "unknown socket operation {other}"
                    )));
                }
            };
            let must_wait = fut.is_some();
            *inner
                .pending
                .try_borrow_mut()
                .map_err(|_| mlua::Error::runtime("socket busy"))? = fut;
            one(Value::Boolean(must_wait))
        })?,
    )?;
    t.raw_set(
        "result",
        func(lua, |lua, a| {
            let args = Args::new(&a, "socket", 0);
            let s = socket(&args)?;
            let outcome = s.outcome.try_borrow_mut().ok().and_then(|mut o| o.take());
            let mut m = MultiValue::new();
            match outcome {
                Some(Outcome::Values(vals)) => {
                    for v in vals {
                        m.push_back(out_value(lua, v)?);
                    }
                }
                Some(Outcome::Fail(msg, partial)) => {
                    m.push_back(Value::Nil);
                    m.push_back(Value::String(lua.create_string(&msg)?));
                    if let Some(p) = partial {
                        m.push_back(Value::String(lua.create_string(&p)?));
                    }
                }
                None => {
                    m.push_back(Value::Nil);
                    m.push_back(Value::String(lua.create_string("operation interrupted")?));
                }
            }
            Ok(m)
        })?,
    )?;
    t.raw_set(
        "settimeout",
        func(lua, |_, a| {
            let args = Args::new(&a, "settimeout", 0);
            let s = socket(&args)?;
            let secs = match args.get(2) {
                Value::Integer(i) => *i as f64,
                Value::Number(n) => *n,
                _ => return Err(args.bad(1, "number")),
            };
            if !(secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT) {
                return Err(args.err(
                    1,
                    format!("timeout must be between 0 and {MAX_TIMEOUT} seconds"),
                ));
            }
            s.timeout.set(Duration::from_secs_f64(secs));
            one(Value::Integer(1))
        })?,
    )?;
    t.raw_set(
        "close",
        func(lua, |_, a| {
            let args = Args::new(&a, "close", 0);
            let s = socket(&args)?;
            if let Ok(mut st) = s.stream.try_borrow_mut() {
                *st = None;
            }
            if let Ok(mut b) = s.rbuf.try_borrow_mut() {
                *b = Vec::new();
            }
            one(Value::Integer(1))
        })?,
    )?;
    for (name, peer) in [("getpeername", true), ("getsockname", false)] {
        t.raw_set(
            name,
            func(lua, move |lua, a| {
                let args = Args::new(&a, name, 0);
                let s = socket(&args)?;
                let addr = if peer { s.peer.get() } else { s.local.get() };
                match addr {
                    Some(addr) => {
                        let mut m = MultiValue::new();
                        m.push_back(Value::String(lua.create_string(addr.ip().to_string())?));
                        m.push_back(Value::Integer(i64::from(addr.port())));
                        Ok(m)
                    }
                    None => none(),
                }
            })?,
        )?;
    }
    Ok(t)
}

/// The socket state behind argument 1.
fn socket(args: &Args<'_>) -> mlua::Result<Rc<Inner>> {
    match args.get(1) {
        Value::UserData(ud) => match ud.borrow::<Socket>() {
            Ok(s) => Ok(Rc::clone(&s.0)),
            Err(_) => Err(args.bad(1, "Socket")),
        },
        _ => Err(args.bad(1, "Socket")),
    }
}

fn out_value(lua: &Lua, v: Out) -> mlua::Result<Value> {
    Ok(match v {
        Out::Int(i) => Value::Integer(i),
        Out::Bytes(b) => Value::String(lua.create_string(&b)?),
    })
}

/// `prefix` followed by `data` (what `receive` returns or leaves as partial).
fn joined(mut prefix: Vec<u8>, data: &[u8]) -> Vec<u8> {
    prefix.extend_from_slice(data);
    prefix
}

/// Sets the outcome now (no wait) and returns no future.
fn done(inner: &Inner, o: Outcome) -> mlua::Result<Option<WaitFuture>> {
    *inner
        .outcome
        .try_borrow_mut()
        .map_err(|_| mlua::Error::runtime("socket busy"))? = Some(o);
    Ok(None)
}

fn fail(inner: &Inner, msg: impl Into<String>) -> mlua::Result<Option<WaitFuture>> {
    done(inner, Outcome::Fail(msg.into(), None))
}

/// Where `connect(address[, port])` goes: `unix@/path` or `/path`, or a
/// host and port (`"127.0.0.1", 8080` or `"127.0.0.1:8080"`).
enum Target {
    Unix(String),
    Host(String, u16),
}

fn target(args: &Args<'_>) -> mlua::Result<Result<Target, String>> {
    let addr = args.string(3)?;
    if let Some(path) = addr.strip_prefix("unix@") {
        return Ok(Ok(Target::Unix(path.to_string())));
    }
    if addr.starts_with('/') {
        return Ok(Ok(Target::Unix(addr)));
    }
    let addr = addr
        .strip_prefix("ipv4@")
        .or_else(|| addr.strip_prefix("ipv6@"))
        .unwrap_or(&addr)
        .to_string();
    let port = match args.get(4) {
        Value::Nil => None,
        Value::Integer(i) => Some(*i),
        Value::Number(n) if n.fract() == 0.0 => Some(*n as i64),
        Value::String(s) => s.to_str().ok().and_then(|s| s.parse::<i64>().ok()),
        _ => return Err(args.bad(2, "number")),
    };
    let (host, port) = match port {
        Some(p) => (
            addr.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            Some(p),
        ),
        None => match addr.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<i64>().ok(),
            ),
            None => (addr.clone(), None),
        },
    };
    match port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) {
        Some(p) if !host.is_empty() => Ok(Ok(Target::Host(host, p))),
        _ => Ok(Err(format!(
            "cannot connect to {addr:?}: a port between 1 and 65535 is needed"
        ))),
    }
}

/// The TLS session of `connect_ssl` over a connected stream `s`; `peer` is
/// the name given to rustls (not sent: the config has SNI off, and the
/// certificate is not checked against it).
async fn handshake<S>(s: S, peer: Option<SocketAddr>, what: &str) -> Result<TlsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = crate::tls::client::lua_socket_config()?;
    let name = match peer {
        Some(a) => rustls_pki_types::ServerName::IpAddress(a.ip().into()),
        None => {
            rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
        }
    };
    tokio_rustls::TlsConnector::from(config)
        .connect(name, s)
        .await
        .map_err(|e| format!("TLS handshake with {what} failed: {e}"))
}

fn start_connect(
    inner: &Rc<Inner>,
    args: &Args<'_>,
    tls: bool,
) -> mlua::Result<Option<WaitFuture>> {
    if inner
        .stream
        .try_borrow()
        .map(|s| s.is_some())
        .unwrap_or(true)
    {
        return fail(inner, "already connected");
    }
    let target = match target(args)? {
        Ok(t) => t,
        Err(msg) => return fail(inner, msg),
    };
    let inner = Rc::clone(inner);
    let timeout = inner.timeout.get();
    // One deadline for the connection and the handshake, as HAProxy's
    // connect timeout covers both.
    Ok(Some(Box::pin(async move {
        let r = tokio::time::timeout(timeout, async {
            match target {
                Target::Unix(path) => {
                    let s = UnixStream::connect(&path)
                        .await
                        .map_err(|e| format!("cannot connect to unix@{path}: {e}"))?;
                    let stream = if tls {
                        let what = format!("unix@{path}");
                        Stream::TlsUnix(Box::new(handshake(s, None, &what).await?))
                    } else {
                        Stream::Unix(s)
                    };
                    Ok((stream, None, None))
                }
                Target::Host(host, port) => {
                    let s = TcpStream::connect((host.as_str(), port))
                        .await
                        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
                    let _ = s.set_nodelay(true);
                    let (peer, local) = (s.peer_addr().ok(), s.local_addr().ok());
                    let stream = if tls {
                        let what = format!("{host}:{port}");
                        Stream::TlsTcp(Box::new(handshake(s, peer, &what).await?))
                    } else {
                        Stream::Tcp(s)
                    };
                    Ok((stream, peer, local))
                }
            }
        })
        .await;
        let outcome = match r {
            Ok(Ok((stream, peer, local))) => {
                if let Ok(mut s) = inner.stream.try_borrow_mut() {
                    *s = Some(stream);
                }
                inner.peer.set(peer);
                inner.local.set(local);
                Outcome::Values(vec![Out::Int(1)])
            }
            Ok(Err(msg)) => Outcome::Fail(msg, None),
            Err(_) => Outcome::Fail("timeout".into(), None),
        };
        set_outcome(&inner, outcome);
    })))
}

fn set_outcome(inner: &Inner, o: Outcome) {
    if let Ok(mut slot) = inner.outcome.try_borrow_mut() {
        *slot = Some(o);
    }
}

/// `send(data[, i[, j]])`: sends `data:sub(i, j)`; returns the index of
/// the last byte sent (LuaSocket's convention).
fn start_send(inner: &Rc<Inner>, args: &Args<'_>) -> mlua::Result<Option<WaitFuture>> {
    let data = args.bytes(3)?;
    let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
    let norm = |v: Option<i64>, default: i64| -> i64 {
        match v {
            None => default,
            Some(x) if x < 0 => (len + x + 1).max(1),
            Some(x) => x,
        }
    };
    let i = norm(args.opt_int(4)?, 1).max(1);
    let j = norm(args.opt_int(5)?, len).min(len);
    let slice: Vec<u8> = if i > j {
        Vec::new()
    } else {
        let (a, b) = (
            usize::try_from(i - 1).unwrap_or(0),
            usize::try_from(j).unwrap_or(0),
        );
        data.get(a..b).map(<[u8]>::to_vec).unwrap_or_default()
    };
    let Some(mut stream) = inner
        .stream
        .try_borrow_mut()
        .ok()
        .and_then(|mut s| s.take())
    else {
        return fail(inner, "not connected");
    };
    let inner = Rc::clone(inner);
    let timeout = inner.timeout.get();
    Ok(Some(Box::pin(async move {
        let r = tokio::time::timeout(timeout, stream.write_all(&slice)).await;
        let outcome = match r {
            Ok(Ok(())) => Outcome::Values(vec![Out::Int(j.max(i - 1))]),
            Ok(Err(e)) => Outcome::Fail(format!("send failed: {e}"), None),
            Err(_) => Outcome::Fail("timeout".into(), None),
        };
        if matches!(outcome, Outcome::Values(_))
            && let Ok(mut s) = inner.stream.try_borrow_mut()
        {
            *s = Some(stream);
        }
        set_outcome(&inner, outcome);
    })))
}

/// What `receive` waits for.
#[derive(Clone, Copy)]
enum Pattern {
    /// `*l`: a line (LF-terminated; CRs are dropped).
    Line,
    /// `*a`: everything until the peer closes.
    All,
    /// A byte count.
    Bytes(usize),
}

impl Pattern {
    /// The answer if `buf` already holds it (`closed`: nothing more will come).
    fn take(self, buf: &mut Vec<u8>, closed: bool) -> Option<Vec<u8>> {
        match self {
            Pattern::Line => {
                let end = buf.iter().position(|&b| b == b'\n')?;
                let mut line: Vec<u8> = buf.drain(..=end).collect();
                line.retain(|&b| b != b'\r' && b != b'\n');
                Some(line)
            }
            Pattern::All => closed.then(|| std::mem::take(buf)),
            Pattern::Bytes(n) => (buf.len() >= n).then(|| buf.drain(..n).collect()),
        }
    }
}

fn start_receive(inner: &Rc<Inner>, args: &Args<'_>) -> mlua::Result<Option<WaitFuture>> {
    let pattern = match args.get(3) {
        Value::Nil => Pattern::Line,
        Value::Integer(n) => Pattern::Bytes(
            usize::try_from(*n).map_err(|_| args.err(1, "a byte count must not be negative"))?,
        ),
        Value::Number(n) if n.fract() == 0.0 && *n >= 0.0 => Pattern::Bytes(*n as usize),
        Value::String(s) => match &*s.as_bytes() {
            b"*l" | b"*L" => Pattern::Line,
            b"*a" => Pattern::All,
            _ => {
                return Err(args.err(
                    1,
                    "invalid pattern: expected \"*l\", \"*a\" or a byte count",
                ));
            }
        },
        _ => return Err(args.bad(1, "pattern")),
    };
    let prefix = match args.get(4) {
        Value::Nil => Vec::new(),
        _ => args.bytes(4)?,
    };
    let max = inner.max.get();
    if let Pattern::Bytes(n) = pattern
        && n > max
    {
        return fail(inner, "not enough memory");
    }
    // Already buffered: no wait.
    if let Ok(mut buf) = inner.rbuf.try_borrow_mut()
        && let Some(data) = pattern.take(&mut buf, false)
    {
        return done(
            inner,
            Outcome::Values(vec![Out::Bytes(joined(prefix, &data))]),
        );
    }
    let Some(mut stream) = inner
        .stream
        .try_borrow_mut()
        .ok()
        .and_then(|mut s| s.take())
    else {
        let partial = inner
            .rbuf
            .try_borrow_mut()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        return done(inner, Outcome::Fail("not connected".into(), Some(partial)));
    };
    let inner = Rc::clone(inner);
    let timeout = inner.timeout.get();
    Ok(Some(Box::pin(async move {
        let mut buf = inner
            .rbuf
            .try_borrow_mut()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut keep_stream = true;
        let outcome = loop {
            if let Some(data) = pattern.take(&mut buf, false) {
                break Outcome::Values(vec![Out::Bytes(joined(prefix, &data))]);
            }
            if buf.len() >= max {
                keep_stream = false;
                break Outcome::Fail("not enough memory".into(), None);
            }
            buf.reserve(4096.min(max - buf.len()));
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
                Ok(Ok(0)) => {
                    keep_stream = false;
                    if let Some(data) = pattern.take(&mut buf, true) {
                        break Outcome::Values(vec![Out::Bytes(joined(prefix, &data))]);
                    }
                    let partial = joined(prefix, &std::mem::take(&mut buf));
                    break Outcome::Fail("closed".into(), Some(partial));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    keep_stream = false;
                    let partial = joined(prefix, &std::mem::take(&mut buf));
                    break Outcome::Fail(format!("receive failed: {e}"), Some(partial));
                }
                Err(_) => {
                    let partial = joined(prefix, &std::mem::take(&mut buf));
                    break Outcome::Fail("timeout".into(), Some(partial));
                }
            }
        };
        if let Ok(mut b) = inner.rbuf.try_borrow_mut() {
            *b = buf;
        }
        if keep_stream && let Ok(mut s) = inner.stream.try_borrow_mut() {
            *s = Some(stream);
        }
        set_outcome(&inner, outcome);
    })))
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn patterns_take_what_they_ask_for() {
        let mut b = b"one\r\ntwo\npart".to_vec();
        assert_eq!(
            Pattern::Line.take(&mut b, false).as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            Pattern::Line.take(&mut b, false).as_deref(),
            Some(&b"two"[..])
        );
        assert_eq!(Pattern::Line.take(&mut b, false), None);
        assert_eq!(
            Pattern::Bytes(2).take(&mut b, false).as_deref(),
            Some(&b"pa"[..])
        );
        assert_eq!(Pattern::All.take(&mut b, false), None);
        assert_eq!(Pattern::All.take(&mut b, true).as_deref(), Some(&b"rt"[..]));
    }
}
