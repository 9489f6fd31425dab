//! One worker thread: a current-thread tokio runtime with its own listeners
//! (`SO_REUSEPORT`), upstream pool, balancer state and access-log buffer.
//! Nothing a worker touches per request is shared with another worker
//! except atomics and the immutable config.

use std::cell::Cell;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::LocalSet;

use super::accesslog::{AccessLog, LogRecord};
use super::balance::Balancer;
use super::pool::UpstreamPool;
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
    pub shared: Arc<Shared>,
    pub pool: UpstreamPool,
    pub balancer: Balancer,
    pub access_log: AccessLog,
    /// Frontend names as this worker's own `Rc`s (no shared refcount per request).
    pub frontend_names: Vec<Rc<str>>,
    shutdown: watch::Receiver<bool>,
    connections: Cell<usize>,
    drained: Notify,
}

impl Worker {
    /// A receiver for the shutdown signal.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.shutdown.clone())
    }

    /// Counts and logs a response the HTTP layer produced without reaching the handler
    /// (400 malformed, 431 too large, 408 head timeout).
    pub fn record_local_error(
        &self,
        frontend: usize,
        client: std::net::SocketAddr,
        status: u16,
        reason: &str,
    ) {
        let fe = &self.shared.frontends[frontend];
        fe.responses.record(status);
        fe.errors.fetch_add(1, Relaxed);
        if self.access_log.enabled() {
            let client = client.to_string();
            self.access_log.write(&LogRecord {
                client: &client,
                frontend: &self.shared.config.frontends[frontend].name,
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
            });
        }
    }
}

/// Listening sockets handed to one worker: (frontend index, socket).
pub type WorkerListeners = Vec<(usize, StdListener)>;

/// Runs worker `id` until shutdown completes; blocks the calling thread.
pub fn run(
    id: usize,
    shared: Arc<Shared>,
    listeners: WorkerListeners,
    shutdown: watch::Receiver<bool>,
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
    let grace = shared.config.global.grace;
    let worker = Rc::new(Worker {
        id,
        pool: UpstreamPool::new(&shared.config),
        balancer: Balancer::new(&shared.config),
        access_log: AccessLog::new(shared.config.global.access_log),
        frontend_names: shared
            .config
            .frontends
            .iter()
            .map(|f| Rc::from(&*f.name))
            .collect(),
        shared,
        shutdown,
        connections: Cell::new(0),
        drained: Notify::new(),
    });
    let local = LocalSet::new();
    local.block_on(&rt, async {
        for (frontend, listener) in listeners {
            match TcpListener::from_std(listener) {
                Ok(l) => {
                    tokio::task::spawn_local(accept_loop(Rc::clone(&worker), frontend, l));
                }
                Err(e) => tracing::error!(worker = id, error = %e, "cannot register listener"),
            }
        }
        // Each Wasm plugin's VM starts on every worker before traffic (ticks run when idle).
        crate::wasm::filter::start_worker(&worker.shared.config.wasm_plugins);
        let housekeeping = tokio::task::spawn_local(housekeeping(Rc::clone(&worker)));
        // Lua `core.register_task` functions run in every worker, as with lua-load-per-thread.
        crate::lua::start_worker(&worker.shared.config.plugins);
        worker.shutdown_signal().wait().await;
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
    // Lua tasks go with the LocalSet; then the Lua states, while thread-locals still exist.
    drop(local);
    crate::lua::clear_worker();
    crate::wasm::filter::clear_worker();
}

/// Flushes the access log and sweeps stale pooled connections.
async fn housekeeping(worker: Rc<Worker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u32;
    loop {
        tick.tick().await;
        worker.access_log.flush();
        // Wasm plugins' proxy_on_tick / proxy_on_queue_ready, also when idle.
        crate::wasm::filter::housekeeping();
        n = n.wrapping_add(1);
        if n.is_multiple_of(10) {
            worker.pool.sweep();
        }
    }
}

async fn accept_loop(worker: Rc<Worker>, frontend: usize, listener: TcpListener) {
    let mut shutdown = worker.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait() => return,
        };
        match accepted {
            Ok((stream, client)) => {
                let _ = stream.set_nodelay(true);
                let stats = &worker.shared.frontends[frontend];
                stats.connections_total.fetch_add(1, Relaxed);
                stats.connections_current.fetch_add(1, Relaxed);
                worker.connections.set(worker.connections.get() + 1);
                let w = Rc::clone(&worker);
                tokio::task::spawn_local(async move {
                    super::conn::serve(Rc::clone(&w), frontend, stream, client).await;
                    w.shared.frontends[frontend]
                        .connections_current
                        .fetch_sub(1, Relaxed);
                    w.connections.set(w.connections.get() - 1);
                    if w.connections.get() == 0 {
                        w.drained.notify_waiters();
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on accept.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
