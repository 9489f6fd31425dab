//! The proxy core: listeners, workers, the request flow, upstream pools,
//! balancing and health checks.
//!
//! [`run`] binds every listener up front (so a bind failure is reported with
//! its config location before anything starts), starts one worker thread per
//! configured worker, runs the control thread (admin API, health checks,
//! signals) and returns once shutdown has drained.

pub mod accesslog;
pub mod balance;
pub mod body;
pub mod chain;
pub mod conn;
pub mod error;
pub mod handler;
pub mod head;
pub mod health;
mod info;
pub mod limit;
pub mod logsink;
pub mod pool;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod tunnel;
pub mod worker;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::admin::AdminListen;
use crate::config::{ConfigError, Location};
use crate::runtime::Runtime;
pub use stats::Shared;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{location}: cannot bind {addr}: {source}")]
    Bind {
        location: Location,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{location}: {message}")]
    AdminSocket { location: Location, message: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start: {0}")]
    Startup(std::io::Error),
}

/// Creates a listening socket; `reuse_port` lets every worker bind the same address.
pub fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The admin listener, bound before anything starts.
enum AdminStd {
    Tcp(StdListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Binds every frontend address once per worker.
fn bind_all(config: &Runtime) -> Result<Vec<worker::WorkerListeners>, RunError> {
    let mut per_worker = Vec::with_capacity(config.global.workers);
    for _ in 0..config.global.workers {
        let mut mine = Vec::new();
        for (fe_idx, fe) in config.frontends.iter().enumerate() {
            for b in &fe.binds {
                let l = listen(b.addr, true).map_err(|source| RunError::Bind {
                    location: b.location.clone(),
                    addr: b.addr,
                    source,
                })?;
                mine.push((fe_idx, l));
            }
        }
        per_worker.push(mine);
    }
    Ok(per_worker)
}

/// Runs the daemon on `config` until SIGTERM/SIGINT and the drain that follows.
pub fn run(config: Arc<Runtime>) -> Result<(), RunError> {
    let fd_limit = limit::raise_fd_limit();
    let shared = Arc::new(Shared::new(Arc::clone(&config)));
    crate::plugin::lograte::configure(config.global.logs.failure_lines);
    {
        let weak: std::sync::Weak<Shared> = Arc::downgrade(&shared);
        let source: std::sync::Weak<dyn crate::plugin::ProcessSource> = weak;
        for host in &config.plugins {
            host.attach_process(std::sync::Weak::clone(&source));
        }
    }
    if let Some(warning) = limit::check_maxconn(shared.conns.max(), fd_limit) {
        tracing::warn!("{warning}");
    }
    tracing::info!(maxconn = shared.conns.max(), fd_limit, "connection limits");
    let listeners = bind_all(&config)?;
    // The socket file guard lives until `run` returns: dropping it removes the file.
    let (admin_listener, _admin_socket_file) =
        match config.global.admin.as_ref().map(|a| (a, &a.listen)) {
            Some((a, AdminListen::Tcp(addr))) => {
                let l = listen(*addr, false).map_err(|source| RunError::Bind {
                    location: a.location.clone(),
                    addr: *addr,
                    source,
                })?;
                (Some(AdminStd::Tcp(l)), None)
            }
            Some((a, AdminListen::Unix(u))) => {
                let (l, file) =
                    crate::admin::unix::bind(u).map_err(|message| RunError::AdminSocket {
                        location: a.location.clone(),
                        message,
                    })?;
                (Some(AdminStd::Unix(l)), Some(file))
            }
            None => (None, None),
        };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Startup)?;
    // Signal handlers exist before any worker serves: a SIGTERM that follows
    // the first response must drain, not kill the process.
    let signals = {
        let _guard = rt.enter();
        Signals::install()
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut workers = Vec::new();
    for (id, ls) in listeners.into_iter().enumerate() {
        let shared = Arc::clone(&shared);
        let rx = shutdown_rx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || worker::run(id, shared, ls, rx))
            .map_err(RunError::Startup)?;
        workers.push(handle);
    }
    for fe in &config.frontends {
        for b in &fe.binds {
            tracing::info!(frontend = %fe.name, addr = %b.addr, workers = config.global.workers, "listening");
        }
    }
    rt.block_on(async {
        health::spawn_all(&shared);
        // Expiry tasks live on the control runtime: they sleep until the
        // earliest expiry, so they cost the workers nothing.
        crate::stick::spawn_expiry(&config.tables);
        tokio::spawn(logsink::reopen_on_sigusr1());
        if let (Some(l), Some(admin)) = (admin_listener, &config.global.admin) {
            let l = match l {
                AdminStd::Tcp(l) => tokio::net::TcpListener::from_std(l).map(crate::admin::Listener::Tcp),
                AdminStd::Unix(l) => tokio::net::UnixListener::from_std(l).map(crate::admin::Listener::Unix),
            };
            match l {
                Ok(l) => {
                    tracing::info!(addr = %admin.describe(), maxconn = admin.maxconn, token = admin.token.is_some(), "admin API listening");
                    tokio::spawn(crate::admin::serve(l, Arc::clone(&shared)));
                }
                Err(e) => tracing::error!(error = %e, "cannot start admin listener"),
            }
        }
        signals.wait().await;
        tracing::info!(grace = ?config.global.grace, "shutting down: no new connections, draining in-flight requests");
        let _ = shutdown_tx.send(true);
    });
    // Workers stop by themselves within the grace period.
    for w in workers {
        let _ = w.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT handlers.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    /// Installs the handlers; must run inside the control runtime.
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            _ => {
                tracing::warn!("cannot install signal handlers; graceful shutdown is unavailable");
                Signals(None)
            }
        }
    }

    /// Waits for SIGTERM or SIGINT.
    async fn wait(self) {
        match self.0 {
            Some((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers the process can only be killed; keep serving.
            None => std::future::pending::<()>().await,
        }
    }
}
