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
pub mod flow;
pub mod grpc;
pub mod h1codec;
pub mod handler;
pub mod head;
pub mod health;
mod info;
pub mod limit;
pub mod logsink;
pub mod pool;
pub mod queue;
pub mod reload;
pub mod server_h1;
pub mod stats;
pub mod tcp;
pub mod tcp_filter;
pub mod tcp_response;
pub mod tls;
pub mod tunnel;
pub mod upgrade;
pub mod upgraded;
pub mod upstream_h1;
pub mod upstream_h2;
pub mod worker;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::config::admin::AdminListen;
use crate::config::{ConfigError, Location};
use crate::runtime::Runtime;
pub use reload::Daemon;
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
    #[error("{0}")]
    Upgrade(String),
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

/// Binds every frontend address once per worker, taking the sockets of a
/// process being upgraded first ([`upgrade::Inherited`]); every socket is
/// also kept in `inventory` for the next upgrade.
fn bind_all(
    config: &Runtime,
    inherited: &mut upgrade::Inherited,
    inventory: &upgrade::Inventory,
) -> Result<Vec<worker::WorkerListeners>, RunError> {
    use std::os::fd::AsFd;
    let workers = config.global.workers.max(1);
    let mut per_worker: Vec<worker::WorkerListeners> = (0..workers).map(|_| Vec::new()).collect();
    for mine in &mut per_worker {
        for fe in &config.frontends {
            for b in &fe.binds {
                if mine.iter().any(|(a, _)| *a == b.addr) {
                    continue;
                }
                let l = match inherited.take(b.addr) {
                    Some(l) => l,
                    None => listen(b.addr, true).map_err(|source| RunError::Bind {
                        location: b.location.clone(),
                        addr: b.addr,
                        source,
                    })?,
                };
                inventory.add(b.addr, l.as_fd());
                mine.push((b.addr, l));
            }
        }
    }
    // The old process had more workers: their sockets' accept queues are
    // served too (round robin over the workers), or their connections would wait forever.
    let mut next = 0;
    for (addr, ls) in std::mem::take(&mut inherited.listeners) {
        if !per_worker.iter().flatten().any(|(a, _)| *a == addr) {
            continue;
        }
        for l in ls {
            inventory.add(addr, l.as_fd());
            if let Some(mine) = per_worker.get_mut(next % workers) {
                mine.push((addr, l));
            }
            next += 1;
        }
    }
    Ok(per_worker)
}

/// How `portcullis run` was started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The config file, read again by a reload.
    pub config_path: PathBuf,
    /// Listen here for a new binary taking over (`--upgrade-socket`).
    pub upgrade_socket: Option<PathBuf>,
    /// Take over the sockets of the process listening here (`--upgrade-from`).
    pub upgrade_from: Option<PathBuf>,
}

/// Runs the daemon on `config` until SIGTERM/SIGINT (or a new binary taking
/// over) and the drain that follows; SIGHUP reloads.
/// How long health checks wait for the workers to start their plugins.
const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn run(config: Arc<Runtime>, opts: RunOptions) -> Result<(), RunError> {
    use std::os::fd::AsFd;
    let fd_limit = limit::raise_fd_limit();
    let shared = Arc::new(Shared::new(Arc::clone(&config)));
    reload::attach(&shared);
    crate::plugin::lograte::configure(config.global.logs.failure_lines);
    if let Some(warning) = limit::check_maxconn(shared.conns.max(), fd_limit) {
        tracing::warn!("{warning}");
    }
    tracing::info!(maxconn = shared.conns.max(), fd_limit, "connection limits");
    let mut inherited = match &opts.upgrade_from {
        Some(path) => {
            let i = upgrade::receive(path).map_err(|e| RunError::Upgrade(e.to_string()))?;
            tracing::info!(from = %path.display(), addresses = i.listeners.len(), admin = i.admin.is_some(), "took over the listeners of the running process");
            i
        }
        None => upgrade::Inherited::default(),
    };
    let inventory = Arc::new(upgrade::Inventory::default());
    // Peers listeners: a binary upgrade's old process hands its own over
    // (taken before the frontends take theirs and drop the rest); the
    // others are bound now, so a taken port fails the start. An old process
    // that did not hand it over still holds it: it is bound once free.
    let mut peers_listeners: Vec<Option<StdListener>> = Vec::new();
    for spec in &config.global.peers {
        let l = match inherited.take(spec.bind) {
            Some(l) => Some(l),
            None => match listen(spec.bind, false) {
                Ok(l) => Some(l),
                Err(e)
                    if opts.upgrade_from.is_some() && e.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    None
                }
                Err(e) => {
                    return Err(RunError::Startup(std::io::Error::new(
                        e.kind(),
                        format!(
                            "peers section {:?}: cannot bind {}: {e}",
                            spec.name, spec.bind
                        ),
                    )));
                }
            },
        };
        if let Some(l) = &l {
            inventory.add(spec.bind, l.as_fd());
        }
        peers_listeners.push(l);
    }
    let listeners = bind_all(&config, &mut inherited, &inventory)?;
    let inherited_admin = inherited.admin.take();
    // The socket file guard lives until `run` returns: dropping it removes the file.
    let (admin_listener, admin_socket_file) =
        match config.global.admin.as_ref().map(|a| (a, &a.listen)) {
            Some((_, AdminListen::Tcp(_)))
                if inherited_admin.as_ref().is_some_and(|(k, _)| k == "tcp") =>
            {
                let fd = inherited_admin.map(|(_, fd)| fd);
                let l = fd.map(StdListener::from);
                (l.map(AdminStd::Tcp), None)
            }
            Some((_, AdminListen::Unix(u)))
                if inherited_admin.as_ref().is_some_and(|(k, _)| k == "unix") =>
            {
                let fd = inherited_admin.map(|(_, fd)| fd);
                let l = fd.map(std::os::unix::net::UnixListener::from);
                (l.map(AdminStd::Unix), crate::admin::unix::adopt(&u.path))
            }
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
    match &admin_listener {
        Some(AdminStd::Tcp(l)) => inventory.set_admin("tcp", l.as_fd()),
        Some(AdminStd::Unix(l)) => inventory.set_admin("unix", l.as_fd()),
        None => {}
    }
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
    let (daemon, switches) = Daemon::new(
        opts.config_path.clone(),
        Arc::clone(&shared),
        config.global.workers.max(1),
        Arc::clone(&inventory),
    );
    drop(shared);
    let mut workers = Vec::new();
    let (started_tx, started) = std::sync::mpsc::sync_channel(listeners.len());
    for (id, ls) in listeners.into_iter().enumerate() {
        let shared = daemon.current();
        let rx = shutdown_rx.clone();
        let switches = switches.clone();
        let started_tx = started_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || worker::run(id, shared, ls, rx, switches, started_tx))
            .map_err(RunError::Startup)?;
        workers.push(handle);
    }
    drop(started_tx);
    // Health checks start once every worker has started its plugins (init
    // functions run, event subscriptions made), bounded: a worker that
    // cannot start is logged by itself and does not hold the checks back.
    let until = std::time::Instant::now() + STARTUP_WAIT;
    for _ in 0..workers.len() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if started.recv_timeout(left).is_err() {
            tracing::warn!(
                "a worker did not start its plugins within {STARTUP_WAIT:?}; health checks start anyway"
            );
            break;
        }
    }
    for fe in &config.frontends {
        for b in &fe.binds {
            tracing::info!(frontend = %fe.name, addr = %b.addr, workers = config.global.workers, "listening");
        }
    }
    drop(switches);
    // Held only by the daemon from here, so a reload can drop it.
    let admin_settings = config.global.admin.clone();
    let peers_specs = config.global.peers.clone();
    drop(config);
    let taken_over = Arc::new(tokio::sync::Notify::new());
    let upgraded = rt.block_on(async {
        // Health checks and expiry tasks live on the control runtime (expiry
        // tasks sleep until the earliest expiry, so they cost the workers nothing).
        if !peers_specs.is_empty() {
            let tables = Arc::clone(&daemon.current().config.tables);
            let predecessor = opts.upgrade_from.is_some();
            crate::peers::Peers::start(&peers_specs, peers_listeners, &tables, predecessor);
        }
        daemon.start_tasks();
        tokio::spawn(logsink::reopen_on_sigusr1());
        if let (Some(l), Some(admin)) = (admin_listener, &admin_settings) {
            let l = match l {
                AdminStd::Tcp(l) => tokio::net::TcpListener::from_std(l).map(crate::admin::Listener::Tcp),
                AdminStd::Unix(l) => tokio::net::UnixListener::from_std(l).map(crate::admin::Listener::Unix),
            };
            match l {
                Ok(l) => {
                    tracing::info!(addr = %admin.describe(), maxconn = admin.maxconn, token = admin.token.is_some(), "admin API listening");
                    tokio::spawn(crate::admin::serve(l, Arc::clone(&daemon)));
                }
                Err(e) => tracing::error!(error = %e, "cannot start admin listener"),
            }
        }
        // Serving: the process this one replaces may stop accepting.
        inherited.ready();
        if let Some(path) = &opts.upgrade_socket {
            let notify = Arc::clone(&taken_over);
            match upgrade::serve(path.clone(), Arc::clone(&inventory), move || notify.notify_one()) {
                Ok(()) => tracing::info!(path = %path.display(), "upgrade socket listening"),
                Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot listen on the upgrade socket; binary upgrades are unavailable"),
            }
        }
        let mut signals = signals;
        let upgraded = loop {
            tokio::select! {
                signal = signals.wait() => match signal {
                    Signal::Reload => {
                        let _ = daemon.reload("SIGHUP").await;
                    }
                    Signal::Shutdown => break false,
                },
                () = taken_over.notified() => break true,
            }
        };
        tracing::info!(grace = ?daemon.current().config.global.grace, "shutting down: no new connections, draining in-flight requests");
        let _ = shutdown_tx.send(true);
        upgraded
    });
    // This process's copies of the sockets close; after an upgrade the
    // sockets live on in the new process.
    inventory.clear();
    if upgraded {
        // The socket files now belong to the new process.
        std::mem::forget(admin_socket_file);
    } else if let Some(path) = &opts.upgrade_socket {
        let _ = std::fs::remove_file(path);
    }
    // Workers stop by themselves within the grace period.
    let join = move || {
        for w in workers {
            let _ = w.join();
        }
    };
    match crate::peers::running() {
        // As HAProxy's old process: teach the new one our tables, and keep
        // pushing what the draining requests change until the workers end.
        Some(peers) if upgraded => rt.block_on(async {
            let drained = tokio::task::spawn_blocking(join);
            peers.hand_over().await;
            let _ = drained.await;
        }),
        _ => join(),
    }
    tracing::info!("stopped");
    Ok(())
}

/// What a signal asks for.
#[derive(Debug, PartialEq, Eq)]
enum Signal {
    Shutdown,
    Reload,
}

/// SIGTERM and SIGINT handlers, and SIGHUP's (reload; none if it cannot be installed).
struct Signals(
    Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    Option<tokio::signal::unix::Signal>,
);

impl Signals {
    /// Installs the handlers; must run inside the control runtime.
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let hup = signal(SignalKind::hangup()).ok();
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals(Some((term, int)), hup),
            _ => {
                tracing::warn!("cannot install signal handlers; graceful shutdown is unavailable");
                Signals(None, hup)
            }
        }
    }

    /// Waits for SIGTERM or SIGINT (shutdown) or SIGHUP (reload).
    async fn wait(&mut self) -> Signal {
        let hup = async {
            match &mut self.1 {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        match &mut self.0 {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => Signal::Shutdown,
                    _ = int.recv() => Signal::Shutdown,
                    () = hup => Signal::Reload,
                }
            }
            // Without shutdown handlers the process can only be killed; keep serving.
            None => {
                hup.await;
                Signal::Reload
            }
        }
    }
}
