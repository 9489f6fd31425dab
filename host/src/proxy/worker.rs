//! One worker thread: a current-thread tokio runtime with its own listeners
//! (`SO_REUSEPORT`), upstream pool, balancer state and access-log buffer.
//! Nothing a worker touches per request is shared with another worker
//! except atomics and the immutable config.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::task::LocalSet;

use super::accesslog::{AccessLog, LogRecord};
use super::balance::Balancer;
use super::pool::UpstreamPool;
use super::reload::Switch;
use super::stats::Shared;

/// Resolves once the process starts shutting down.
pub struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    /// Waits for shutdown (returns at once if it already began).
    pub async fn wait(&mut self) {
        // An error means the sender is gone, which also means shutdown.
        let _ = self.0.wait_for(|down| *down).await;
    }
}

/// A worker's state, shared by its tasks through `Rc`.
pub struct Worker {
    pub id: usize,
    pub access_log: AccessLog,
    /// The runtime generation new requests use (replaced by a reload; a
    /// request holds the one it started on until it ends).
    current: RefCell<Rc<Epoch>>,
    /// Each accept loop's stop signal, by listening address.
    listeners: RefCell<Vec<(SocketAddr, watch::Sender<bool>)>>,
    shutdown: watch::Receiver<bool>,
    connections: Cell<usize>,
    drained: Notify,
    /// Wakes this worker's silent and parked idle connections to close when
    /// the accept loop runs out of connection slots or descriptors.
    pub shed: Notify,
}

/// One runtime generation as a worker runs it: the generation's shared
/// state and this worker's pool and balancer for its backends. Requests hold
/// it through `Rc` (no atomic per request); when the last request of a
/// replaced generation ends, dropping it stops this worker's plugin
/// instances of that generation (and with the other workers' epochs, the
/// generation's `Runtime` goes).
pub struct Epoch {
    pub shared: Arc<Shared>,
    pub pool: UpstreamPool,
    /// This worker's HTTP/2 connections to servers.
    pub h2: super::upstream_h2::H2Pool,
    pub balancer: Balancer,
    /// Frontend names as this worker's own `Rc`s (no shared refcount per request).
    pub frontend_names: Vec<Rc<str>>,
    /// Each frontend's replacement pages (`None`: it replaces none), for the
    /// errors written below hyper: a connection holds these, not the runtime.
    pub error_pages: Vec<Option<Rc<crate::error::ErrorPages>>>,
}

impl Epoch {
    fn new(shared: Arc<Shared>) -> Epoch {
        Epoch {
            pool: UpstreamPool::new(&shared.config),
            h2: super::upstream_h2::H2Pool::new(&shared.config),
            balancer: Balancer::new(&shared.config),
            frontend_names: shared
                .config
                .frontends
                .iter()
                .map(|f| Rc::from(&*f.name))
                .collect(),
            error_pages: shared
                .config
                .frontends
                .iter()
                .map(|f| (!f.errors.is_empty()).then(|| Rc::new(f.errors.clone())))
                .collect(),
            shared,
        }
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        // On this worker's thread (an `Rc`): its thread-local instances go.
        for host in &self.shared.config.plugins {
            host.stop_worker();
        }
        tracing::debug!(
            generation = self.shared.id,
            "runtime generation released by a worker"
        );
    }
}

/// The frontend a connection was accepted for, as the generation in force at
/// accept numbered it. A later generation may list its frontends in another
/// order, or no longer have this one: there it is found again by name
/// ([`FrontendRef::index_in`]), so a connection never gets another
/// frontend's rules, limits or counters.
#[derive(Debug, Clone)]
pub struct FrontendRef {
    /// The generation `index` belongs to.
    generation: u64,
    index: usize,
    /// The frontend's name (this worker's `Rc`).
    pub name: Rc<str>,
}

impl FrontendRef {
    /// Frontend `index` of `epoch`'s generation; `None` if there is no such frontend.
    pub fn at(epoch: &Epoch, index: usize) -> Option<FrontendRef> {
        Some(FrontendRef {
            generation: epoch.shared.id,
            index,
            name: Rc::clone(epoch.frontend_names.get(index)?),
        })
    }

    /// This frontend's index in `shared`'s generation; `None` if a reload removed it.
    pub fn index_in(&self, shared: &Shared) -> Option<usize> {
        if shared.id == self.generation {
            return Some(self.index);
        }
        shared.frontend_named(&self.name)
    }

    /// The generation and index this reference was taken in.
    pub fn taken_in(&self) -> (u64, usize) {
        (self.generation, self.index)
    }
}

impl Worker {
    /// The runtime generation a new request or connection uses.
    pub fn current(&self) -> Rc<Epoch> {
        Rc::clone(&self.current.borrow())
    }

    /// A receiver for the shutdown signal.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.shutdown.clone())
    }

    /// Counts and logs a response the HTTP layer produced without reaching the handler
    /// (400 malformed, 431 too large, 408 head timeout).
    pub fn record_local_error(
        &self,
        frontend: &FrontendRef,
        client: std::net::SocketAddr,
        status: u16,
        reason: &str,
    ) {
        let epoch = self.current();
        let Some(frontend) = frontend.index_in(&epoch.shared) else {
            return;
        };
        let (Some(fe), Some(spec)) = (
            epoch.shared.frontends.get(frontend),
            epoch.shared.config.frontends.get(frontend),
        ) else {
            return;
        };
        fe.responses.record(status);
        fe.errors.fetch_add(1, Relaxed);
        let fe_rt = spec;
        if let Some(format) = &fe_rt.log_format {
            // No transaction: fetches render `-`.
            let facts = crate::rules::LogFacts {
                client,
                local: fe_rt.binds.first().map_or(client, |b| b.addr),
                frontend: &fe_rt.name,
                backend: None,
                server: None,
                server_addr: None,
                method: "-",
                uri: "-",
                version: "-",
                status,
                bytes_out: 0,
                bytes_in: 0,
                start: std::time::SystemTime::now(),
                total: std::time::Duration::ZERO,
                upstream: None,
                queue: None,
                connect: None,
                term: if status == 408 { *b"cR" } else { *b"PR" },
            };
            self.access_log
                .write_with(|buf| format.render_log(None, &facts, buf));
            return;
        }
        if self.access_log.enabled() {
            let client = client.to_string();
            self.access_log.write(&LogRecord {
                client: &client,
                frontend: &spec.name,
                backend: None,
                server: None,
                method: "-",
                path: "-",
                version: "-",
                status,
                bytes: 0,
                bytes_in: 0,
                total: std::time::Duration::ZERO,
                upstream: None,
                termination: reason,
                grpc_status: None,
            });
        }
    }
}

/// Listening sockets handed to one worker: (bound address, socket).
pub type WorkerListeners = Vec<(SocketAddr, StdListener)>;

/// Runs worker `id` until shutdown completes; blocks the calling thread.
/// `reloads` brings each new runtime generation (with this worker's sockets
/// for addresses the generation adds).
pub fn run(
    id: usize,
    shared: Arc<Shared>,
    listeners: WorkerListeners,
    shutdown: watch::Receiver<bool>,
    mut reloads: watch::Receiver<Option<Arc<Switch>>>,
    started: std::sync::mpsc::SyncSender<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = id, error = %e, "cannot start worker runtime");
            return;
        }
    };
    let worker = Rc::new(Worker {
        id,
        access_log: AccessLog::new(
            shared.config.global.access_log,
            super::logsink::open(&shared.config.global.logs),
        ),
        current: RefCell::new(Rc::new(Epoch::new(shared))),
        listeners: RefCell::new(Vec::new()),
        shutdown,
        connections: Cell::new(0),
        drained: Notify::new(),
        shed: Notify::new(),
    });
    tracing::debug!(worker = id, sizes = ?super::conn::future_sizes(), "per-connection futures, bytes");
    let local = LocalSet::new();
    local.block_on(&rt, async {
        // Plugin instances that run without traffic (Wasm VMs and their
        // ticks, Lua tasks) start on every worker before it serves.
        for host in &worker.current().shared.config.plugins {
            host.start_worker(worker.id);
        }
        // Init functions have run and their event subscriptions exist: the
        // control thread may start health checks (HAProxy runs init
        // functions before the first check, so a server found DOWN at start
        // is an event scripts see).
        let _ = started.send(());
        for (addr, listener) in listeners {
            worker.listen(addr, listener);
        }
        let housekeeping = tokio::task::spawn_local(housekeeping(Rc::clone(&worker)));
        let mut shutdown = worker.shutdown_signal();
        loop {
            tokio::select! {
                () = shutdown.wait() => break,
                changed = reloads.changed() => {
                    if changed.is_err() {
                        // No more reloads can come: serve until shutdown.
                        shutdown.wait().await;
                        break;
                    }
                    let switch = reloads.borrow_and_update().clone();
                    if let Some(switch) = switch {
                        worker.switch_to(&switch);
                    }
                }
            }
        }
        // Accept loops have seen the signal too and dropped their sockets.
        if worker.connections.get() > 0 {
            tracing::info!(
                worker = id,
                connections = worker.connections.get(),
                "draining connections"
            );
            let drained = async {
                while worker.connections.get() > 0 {
                    worker.drained.notified().await;
                }
            };
            let grace = worker.current().shared.config.global.grace;
            if tokio::time::timeout(grace, drained).await.is_err() {
                tracing::warn!(
                    worker = id,
                    connections = worker.connections.get(),
                    "grace period over; closing remaining connections"
                );
            }
        }
        housekeeping.abort();
        worker.access_log.flush();
    });
    // Plugin tasks go with the LocalSet; then the instances (the epoch's
    // drop: with the tasks gone, this is the last `Rc` of the worker and
    // of its epoch), while thread-locals still exist.
    drop(local);
    drop(worker);
}

impl Worker {
    /// Starts accepting on `listener` (bound to `addr`) until shutdown or
    /// until a reload removes `addr`.
    fn listen(self: &Rc<Self>, addr: SocketAddr, listener: StdListener) {
        let (stop_tx, stop_rx) = watch::channel(false);
        // A worker may have several sockets for one address (taken over
        // from a process that had more workers).
        self.listeners.borrow_mut().push((addr, stop_tx));
        tokio::task::spawn_local(accept_loop(
            Rc::clone(self),
            addr,
            listener,
            ShutdownSignal(stop_rx),
        ));
    }

    /// A reload: new requests and connections use `switch`'s generation from
    /// now on; the replaced one goes when its last request on this worker
    /// ends. Listeners the generation adds start, removed ones stop accepting.
    fn switch_to(self: &Rc<Self>, switch: &Switch) {
        let shared = Arc::clone(&switch.shared);
        // Its per-worker plugin instances exist before a request can reach them.
        for host in &shared.config.plugins {
            host.start_worker(self.id);
        }
        // Access-log lines from now on: the new generation's format and target.
        let global = &shared.config.global;
        self.access_log
            .reconfigure(global.access_log, super::logsink::open(&global.logs));
        let old = self
            .current
            .replace(Rc::new(Epoch::new(Arc::clone(&shared))));
        // Connections to servers the reload kept are reused (HTTP/1 idle
        // ones, HTTP/2 ones whatever streams they carry).
        let new = self.current();
        new.pool
            .adopt(&new.shared.config, &old.pool, &old.shared.config);
        new.h2
            .adopt(&new.shared.config, &old.h2, &old.shared.config);
        drop(old);
        for (addr, listener) in switch.take_listeners(self.id) {
            self.listen(addr, listener);
        }
        self.listeners.borrow_mut().retain(|(addr, stop)| {
            let kept = shared.frontend_for(*addr).is_some();
            if !kept {
                let _ = stop.send(true);
            }
            kept
        });
        switch.applied();
    }
}

/// Flushes the access log and sweeps stale pooled connections.
async fn housekeeping(worker: Rc<Worker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u32;
    loop {
        tick.tick().await;
        worker.access_log.flush();
        let epoch = worker.current();
        // Plugin timers (Wasm proxy_on_tick / proxy_on_queue_ready) and rebuilds, also when idle.
        for host in &epoch.shared.config.plugins {
            host.housekeeping();
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(10) {
            epoch.pool.sweep();
            epoch.h2.sweep();
            // Buffers of closed and parked connections go back to the system
            // instead of staying in this thread's heap after a load peak.
            release_free_memory();
        }
    }
}

unsafe extern "C" {
    /// mimalloc (linked through the `mimalloc` crate): frees this thread's
    /// delayed frees and returns pages that are entirely free to the OS.
    fn mi_collect(force: bool);
}

/// Returns this thread's free allocator pages to the OS (cheap when there
/// are none: a walk over the thread's heap).
fn release_free_memory() {
    // SAFETY: mi_collect takes no pointers and may be called at any time
    // from any thread; it only touches the calling thread's heap.
    unsafe { mi_collect(false) }
}

/// Accepts connections on `addr` until shutdown or `stop` (a reload removed
/// the address), for the frontend that listens there in the current
/// generation, within the global and the frontend's `maxconn`: a slot is reserved once the listener is
/// readable and before `accept`, so at the limit the loop pauses and new
/// connections wait in the kernel's backlog (HAProxy's behaviour), while
/// this worker's silent and parked idle connections are shed to make room.
async fn accept_loop(
    worker: Rc<Worker>,
    addr: SocketAddr,
    listener: StdListener,
    mut stop: ShutdownSignal,
) {
    // SAFETY: the listener owns its descriptor, which stays open and is not
    // replaced while the AsyncFd owns the listener.
    let listener = match unsafe { AsyncFd::register(listener) } {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(worker = worker.id, error = %e, "cannot register listener");
            return;
        }
    };
    let mut shutdown = worker.shutdown_signal();
    let global = Arc::clone(&worker.current().shared.conns);
    let global = &*global;
    loop {
        let mut ready = tokio::select! {
            r = listener.readable() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(worker = worker.id, error = %e, "listener failed");
                    return;
                }
            },
            () = shutdown.wait() => return,
            () = stop.wait() => return,
        };
        // The frontend listening here in the generation in force (a reload
        // may have changed its settings, its index or its counters).
        // Its TLS acceptor too, so new certificates of a reload apply here.
        // Carried by the connection as (generation, index, name): what it
        // serves later is found again by name in the generation then in force.
        let (frontend, fe_stats, tcp, tls) = {
            let epoch = worker.current();
            let Some((i, st, fr)) = epoch.shared.frontend_for(addr).and_then(|i| {
                Some((
                    i,
                    Arc::clone(epoch.shared.frontends.get(i)?),
                    FrontendRef::at(&epoch, i)?,
                ))
            }) else {
                return;
            };
            let tcp = epoch.shared.config.frontends.get(i).is_some_and(|f| f.tcp);
            (fr, st, tcp, tls_of(&epoch.shared, i, addr))
        };
        let fe = &fe_stats.conns;
        // Created before the check, so a release in between is not missed.
        let global_freed = global.released();
        let fe_freed = fe.released();
        tokio::pin!(global_freed, fe_freed);
        global_freed.as_mut().enable();
        fe_freed.as_mut().enable();
        let full = if !global.try_acquire() {
            Some((global, global_freed))
        } else if !fe.try_acquire() {
            global.release();
            Some((fe, fe_freed))
        } else {
            None
        };
        if let Some((limit, freed)) = full {
            // Readiness may be stale (the last accept emptied the backlog):
            // pause and shed only for a connection that is really waiting.
            if !connection_pending(ready.get_ref().get_ref()) {
                ready.clear_ready();
                continue;
            }
            limit.note_reached();
            drop(ready);
            worker.shed.notify_waiters();
            tokio::select! {
                () = freed => {}
                // A release on another worker that raced the check is found on the next pass.
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = shutdown.wait() => return,
                () = stop.wait() => return,
            }
            continue;
        }
        let accepted = ready.try_io(|l| l.get_ref().accept());
        let (stream, client) = match accepted {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                global.release();
                fe.release();
                // EMFILE and friends: make room, back off instead of spinning on accept.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                worker.shed.notify_waiters();
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_would_block) => {
                // Another worker took it: the slot goes back.
                global.release();
                fe.release();
                continue;
            }
        };
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
        {
            Ok(s) => s,
            Err(e) => {
                global.release();
                fe.release();
                tracing::warn!(worker = worker.id, error = %e, "cannot register connection");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        fe_stats.connections_total.fetch_add(1, Relaxed);
        worker.connections.set(worker.connections.get() + 1);
        let accepted = Accepted {
            worker: Rc::clone(&worker),
            frontend,
            fe_stats: Arc::clone(&fe_stats),
            global: Arc::clone(&worker.current().shared.conns),
        };
        let kind = match tls {
            // A TCP frontend's binds are plain: `tls` there is refused by the config check.
            _ if tcp => Kind::Tcp,
            Some(acceptor) => Kind::Tls(acceptor),
            None => Kind::Http,
        };
        tokio::task::spawn_local(serve_accepted(accepted, kind, stream, client));
    }
}

/// An accepted connection's slot: the worker, frontend and limits it counts in.
pub(super) struct Accepted {
    worker: Rc<Worker>,
    frontend: FrontendRef,
    fe_stats: Arc<super::stats::FrontendStats>,
    global: Arc<super::limit::ConnLimit>,
}

/// What serves an accepted connection.
pub(super) enum Kind {
    /// Plain HTTP/1.1 or h2c.
    Http,
    /// TLS, then HTTP.
    Tls(Arc<crate::tls::server::Acceptor>),
    /// A TCP frontend.
    Tcp,
}

/// The task of one accepted connection: serves it, then gives its slot back.
///
/// Every connection's task is as large as the largest state of this future
/// for its whole life, idle keep-alive connections included: the TLS and TCP
/// paths (handshake state, TCP rules and filters) are boxed so that a plain
/// HTTP connection does not pay for them (see the size test in `conn.rs`).
pub(super) async fn serve_accepted(
    accepted: Accepted,
    kind: Kind,
    stream: TcpStream,
    client: SocketAddr,
) {
    let Accepted {
        worker: w,
        frontend,
        fe_stats,
        global,
    } = accepted;
    match kind {
        Kind::Tcp => Box::pin(super::tcp::serve(Rc::clone(&w), frontend, stream, client)).await,
        Kind::Tls(acceptor) => {
            Box::pin(super::tls::serve(
                Rc::clone(&w),
                frontend,
                stream,
                client,
                acceptor,
            ))
            .await;
        }
        Kind::Http => super::conn::serve(Rc::clone(&w), frontend, stream, client).await,
    }
    global.release();
    fe_stats.conns.release();
    w.connections.set(w.connections.get() - 1);
    if w.connections.get() == 0 {
        w.drained.notify_waiters();
    }
}

/// The TLS acceptor of the listener on `local` if it is one of the frontend's TLS binds.
fn tls_of(
    shared: &Shared,
    frontend: usize,
    local: SocketAddr,
) -> Option<Arc<crate::tls::server::Acceptor>> {
    let fe = shared.config.frontends.get(frontend)?;
    let acceptor = fe.tls.as_ref()?;
    fe.binds
        .iter()
        .any(|b| b.tls && b.addr == local)
        .then(|| Arc::clone(acceptor))
}

/// Whether a connection waits in `listener`'s accept queue (a zero-timeout
/// `poll`: the listener is level-triggered there, unlike the runtime's readiness).
fn connection_pending(listener: &StdListener) -> bool {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout: poll only writes `revents`.
    let n = unsafe { libc::poll(&mut fds, 1, 0) };
    n > 0 && fds.revents & libc::POLLIN != 0
}
