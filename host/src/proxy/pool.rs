//! Per-worker keep-alive pool of upstream HTTP/1.1 connections.
//!
//! Each worker owns one pool, so checkout and checkin touch no lock. A
//! connection goes back to the pool only after its response body was read to
//! the end; one whose body was abandoned is closed, as hyper-util's pool does.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use rustls_pki_types::ServerName;

use super::body::RequestBody;
use crate::runtime::Runtime;
use crate::tls::client::Target;

/// A connection to one server, checked out of the pool.
pub struct PooledConn {
    pub sender: http1::SendRequest<RequestBody>,
    /// Aborts the connection's driver task, closing the socket at once.
    abort: AbortHandle,
    /// Whether this connection already served a request (a failure on it may be a stale keep-alive).
    pub reused: bool,
    backend: usize,
    server: usize,
    /// The TLS server name it was opened with (`None`: plain TCP): a
    /// connection is reused only for the same name.
    name: Option<ServerName<'static>>,
    /// The address it goes to: a server that follows the connection's
    /// destination (`0.0.0.0:0`) has one pool list for many addresses.
    addr: SocketAddr,
}

struct IdleConn {
    sender: http1::SendRequest<RequestBody>,
    abort: AbortHandle,
    since: Instant,
    name: Option<ServerName<'static>>,
    addr: SocketAddr,
}

/// Why a new upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// One worker's idle upstream connections, by backend and server.
pub struct UpstreamPool {
    idle: RefCell<Vec<Vec<Vec<IdleConn>>>>,
    max_idle: Vec<usize>,
    idle_timeout: Duration,
    /// HTTP/1.1 client settings, shared by every new connection.
    http: http1::Builder,
    /// Idle connections of the worker's own HTTP/1.1 client (`http1_client = "native"`).
    pub native: super::upstream_h1::NativePool,
}

/// The HTTP/1.1 client settings: response heads are bounded like request
/// heads (`max_header_size`, `max_headers` → 502 when over), as HAProxy's
/// `tune.bufsize` and `tune.http.maxhdr` bound both directions.
fn http_builder(config: &Runtime) -> http1::Builder {
    let global = &config.global;
    let mut b = http1::Builder::new();
    b.writev(false)
        .max_header_size(global.max_header_size)
        .max_headers(global.max_headers)
        // The buffer must hold a head of the allowed size, and no more: it
        // is also what one response body can hold here while its client
        // lags (hyper's default would let it grow to 400 KiB).
        .max_buf_size(global.max_header_size + 8192)
        // Read at most this much per read: a response body chunk handed on
        // (and held while its client lags) is this big, not the buffer's
        // full size (hyper's adaptive reads grow toward `max_buf_size`).
        .read_buf_exact_size(Some(UPSTREAM_READ));
    b
}

/// Bytes read from a server per read call. A client that stops reading
/// holds about three such chunks (being handed on, in hyper's read buffer,
/// in the body channel): 12 KiB keeps that under 64 KiB per connection
/// while large bodies still move in big reads (HAProxy: `tune.bufsize` 16 KiB).
const UPSTREAM_READ: usize = 12 << 10;

impl UpstreamPool {
    /// An empty pool shaped after `config`'s backends.
    pub fn new(config: &Runtime) -> UpstreamPool {
        UpstreamPool {
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
            http: http_builder(config),
            native: super::upstream_h1::NativePool::new(config),
        }
    }

    fn pop_idle(
        &self,
        backend: usize,
        server: usize,
        addr: SocketAddr,
        name: Option<&ServerName<'static>>,
    ) -> Option<IdleConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(backend)?.get_mut(server)?;
        // The most recent connection opened to the same address for the same TLS name.
        let i = list
            .iter()
            .rposition(|c| c.name.as_ref() == name && c.addr == addr)?;
        Some(list.remove(i))
    }

    /// A ready connection to `addr`: a pooled one if any is still usable, else a new one.
    /// `now` is the caller's clock reading (one per request, not one per use).
    pub async fn checkout(
        &self,
        backend: usize,
        server: usize,
        addr: SocketAddr,
        connect_timeout: Duration,
        now: Instant,
        tls: Option<&Target>,
    ) -> Result<PooledConn, ConnectError> {
        if let Some(conn) = self.checkout_idle(backend, server, addr, now, tls).await {
            return Ok(conn);
        }
        self.connect_new(backend, server, addr, connect_timeout, tls)
            .await
    }

    /// A pooled connection still usable, if any (none is opened).
    pub async fn checkout_idle(
        &self,
        backend: usize,
        server: usize,
        addr: SocketAddr,
        now: Instant,
        tls: Option<&Target>,
    ) -> Option<PooledConn> {
        let name = tls.map(|t| &t.name);
        while let Some(mut idle) = self.pop_idle(backend, server, addr, name) {
            if idle.sender.is_closed()
                || now.saturating_duration_since(idle.since) > self.idle_timeout
            {
                idle.abort.abort();
                continue;
            }
            // The connection task marks the connection ready once the previous
            // response is fully read; a closed connection errors here instead.
            if idle.sender.ready().await.is_ok() {
                return Some(PooledConn {
                    sender: idle.sender,
                    abort: idle.abort,
                    reused: true,
                    backend,
                    server,
                    name: idle.name,
                    addr,
                });
            }
        }
        None
    }

    /// An HTTP/1.1 connection over `io`, a socket [`dial`] opened whose
    /// TLS handshake did not settle on `h2`.
    pub async fn start_new(
        &self,
        backend: usize,
        server: usize,
        addr: SocketAddr,
        io: Dialed,
        name: Option<ServerName<'static>>,
    ) -> Result<PooledConn, ConnectError> {
        let (sender, abort) = match io {
            Dialed::Tcp(s) => start_http(&self.http, addr, s).await?,
            Dialed::Tls(s) => start_http(&self.http, addr, *s).await?,
        };
        Ok(PooledConn {
            sender,
            abort,
            reused: false,
            backend,
            server,
            name,
            addr,
        })
    }

    /// A new connection to `addr`, bypassing idle ones.
    pub async fn connect_new(
        &self,
        backend: usize,
        server: usize,
        addr: SocketAddr,
        connect_timeout: Duration,
        tls: Option<&Target>,
    ) -> Result<PooledConn, ConnectError> {
        // A backend that keeps no idle connection closes each one right after
        // its response: reset it instead of the FIN handshake, as HAProxy's
        // http-server-close does, so no TIME_WAIT piles up on our side.
        let reset_on_close = self.max_idle.get(backend) == Some(&0);
        let (sender, abort) =
            connect(&self.http, addr, connect_timeout, reset_on_close, tls).await?;
        Ok(PooledConn {
            sender,
            abort,
            reused: false,
            backend,
            server,
            name: tls.map(|t| t.name.clone()),
            addr,
        })
    }

    /// Returns a connection whose last response was fully read (at `now`).
    pub fn checkin(&self, conn: PooledConn, now: Instant) {
        if conn.sender.is_closed() {
            conn.discard();
            return;
        }
        let max = self.max_idle.get(conn.backend).copied().unwrap_or(0);
        let mut idle = self.idle.borrow_mut();
        match idle
            .get_mut(conn.backend)
            .and_then(|b| b.get_mut(conn.server))
        {
            Some(list) if list.len() < max => list.push(IdleConn {
                sender: conn.sender,
                abort: conn.abort,
                since: now,
                name: conn.name,
                addr: conn.addr,
            }),
            _ => conn.discard(),
        }
    }

    /// Closes idle connections older than the keep-alive timeout or already closed.
    pub fn sweep(&self) {
        self.native.sweep();
        let timeout = self.idle_timeout;
        for backend in self.idle.borrow_mut().iter_mut() {
            for list in backend.iter_mut() {
                list.retain(|c| {
                    let keep = !c.sender.is_closed() && c.since.elapsed() <= timeout;
                    if !keep {
                        c.abort.abort();
                    }
                    keep
                });
            }
        }
    }

    /// A reload: takes over `old`'s idle connections to every server that
    /// `own` declares as `old_config` did (same backend name, server name
    /// and address); the rest close with `old`.
    pub fn adopt(&self, own: &Runtime, old: &UpstreamPool, old_config: &Runtime) {
        self.native.adopt(own, &old.native, old_config);
        let mut mine = self.idle.borrow_mut();
        let mut theirs = old.idle.borrow_mut();
        for k in kept_servers(own, old_config) {
            let max = self.max_idle.get(k.b).copied().unwrap_or(0);
            if let (Some(to), Some(from)) = (
                mine.get_mut(k.b).and_then(|v| v.get_mut(k.s)),
                theirs.get_mut(k.old_b).and_then(|v| v.get_mut(k.old_s)),
            ) {
                let room = max.saturating_sub(to.len()).min(from.len());
                to.extend(from.drain(..room));
            }
        }
    }

    /// Number of idle connections held (for tests and stats).
    pub fn idle_count(&self) -> usize {
        self.idle
            .borrow()
            .iter()
            .flatten()
            .map(Vec::len)
            .sum::<usize>()
            + self.native.idle_count()
    }
}

impl PooledConn {
    /// Closes the connection now (its last exchange did not end cleanly).
    pub fn discard(self) {
        self.abort.abort();
    }

    /// Lets go of a connection whose socket went to an upgraded tunnel:
    /// never pooled, and its driver task ends on its own once it handed
    /// the socket over (aborting it first would lose the socket).
    pub fn into_tunnel(self) {}
}

/// Opens a new HTTP/1.1 connection to `addr` and spawns its driver task on this worker.
async fn connect(
    http: &http1::Builder,
    addr: SocketAddr,
    timeout: Duration,
    reset_on_close: bool,
    tls: Option<&Target>,
) -> Result<(http1::SendRequest<RequestBody>, AbortHandle), ConnectError> {
    match dial(addr, timeout, reset_on_close, tls).await? {
        Dialed::Tcp(s) => start_http(http, addr, s).await,
        Dialed::Tls(s) => start_http(http, addr, *s).await,
    }
}

/// A socket to a server, its TLS handshake (if any) done.
pub enum Dialed {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Dialed {
    /// TLS's ALPN settled on `h2`.
    pub fn alpn_h2(&self) -> bool {
        match self {
            Dialed::Tcp(_) => false,
            Dialed::Tls(s) => s.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

/// Connects to `addr` and runs the TLS handshake if `tls`, both within `timeout`.
pub async fn dial(
    addr: SocketAddr,
    timeout: Duration,
    reset_on_close: bool,
    tls: Option<&Target>,
) -> Result<Dialed, ConnectError> {
    // One deadline for the TCP connect and the TLS handshake.
    let deadline = Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => {
            return Err(ConnectError::Timeout {
                addr,
                after: timeout,
            });
        }
    };
    // Small request/response exchanges must not wait on Nagle.
    let _ = stream.set_nodelay(true);
    if reset_on_close {
        // SO_LINGER 0: closing sends RST and frees the port at once. With a
        // new connection per request, each graceful close would leave a
        // TIME_WAIT socket here for 60 s; at thousands of requests per second
        // they fill the ephemeral port range and make every connect() search
        // it. Only done once the response is over (or the exchange failed).
        let _ = stream.set_zero_linger();
    }
    let Some(target) = tls else {
        return Ok(Dialed::Tcp(stream));
    };
    let handshake = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&target.config))
        .connect(target.name.clone(), stream);
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(tls)) => Ok(Dialed::Tls(Box::new(tls))),
        Ok(Err(source)) => Err(ConnectError::Tls { addr, source }),
        Err(_) => Err(ConnectError::Timeout {
            addr,
            after: timeout,
        }),
    }
}

/// The HTTP/1.1 handshake over `io` and its driver task on this worker.
async fn start_http<T>(
    http: &http1::Builder,
    addr: SocketAddr,
    io: T,
) -> Result<(http1::SendRequest<RequestBody>, AbortHandle), ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http
        .handshake(TokioIo::new(io))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    let task = tokio::task::spawn_local(async move {
        // With upgrades: after a `101` the socket goes to the response's
        // `hyper::upgrade::on` (a tunnel, `proxy/upgraded.rs`) and the task ends.
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok((sender, task.abort_handle()))
}

/// A server a reload kept: its indexes in the new configuration and in the old.
#[derive(Debug, Clone, Copy)]
pub struct Kept {
    pub b: usize,
    pub s: usize,
    pub old_b: usize,
    pub old_s: usize,
}

/// The servers of `own` that `old` declared alike (same backend name,
/// server name and address): their connections may carry over a reload.
pub fn kept_servers(own: &Runtime, old: &Runtime) -> Vec<Kept> {
    let mut kept = Vec::new();
    for (b, backend) in own.backends.iter().enumerate() {
        let Some(old_b) = old.backend_index(&backend.name) else {
            continue;
        };
        let Some(ob) = old.backends.get(old_b) else {
            continue;
        };
        for (s, server) in backend.servers.iter().enumerate() {
            if let Some(old_s) = ob
                .servers
                .iter()
                .position(|x| x.name == server.name && x.addr == server.addr)
            {
                kept.push(Kept { b, s, old_b, old_s });
            }
        }
    }
    kept
}
