//! Shared runtime state: frontend counters and connection limits, with the
//! runtime's live backend state (`crate::servers`), read by the admin API.
//!
//! Everything here is atomics so workers update it without locks; readers
//! (admin, metrics) see a slightly racy but consistent-enough snapshot, as
//! with HAProxy's stats.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use super::limit::ConnLimit;
use crate::runtime::Runtime;
use crate::servers::{Backends, StatusCounters};

/// Per-frontend counters.
#[derive(Debug)]
pub struct FrontendStats {
    pub requests: AtomicU64,
    pub responses: StatusCounters,
    pub connections_total: AtomicU64,
    /// Open connections against this frontend's `maxconn`.
    pub conns: ConnLimit,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Requests that failed before a response could be produced (client errors on the wire).
    pub errors: AtomicU64,
    /// TLS handshakes completed on this frontend's TLS binds.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out (logged at debug only).
    pub tls_handshake_failures: AtomicU64,
    /// Tunnels opened by a protocol upgrade (HTTP/1.1 `101`, HTTP/2 extended CONNECT).
    pub upgrades: AtomicU64,
    /// Tunnels opened by `CONNECT`.
    pub connects: AtomicU64,
    /// Tunnels (of either kind) open now.
    pub tunnels_current: AtomicU64,
}

/// TLS handshake counters of one TLS bind address of a frontend (the
/// frontend's own counters are their sums): a handshake failure storm on
/// one address shows which listener it hit.
#[derive(Debug)]
pub struct BindStats {
    pub frontend: Box<str>,
    pub addr: std::net::SocketAddr,
    pub tls_handshakes: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
}

impl BindStats {
    /// Whether a connection whose local address is `local` was accepted on
    /// this bind (a wildcard bind's connections carry the interface address).
    pub fn accepted(&self, local: std::net::SocketAddr) -> bool {
        self.addr == local || (self.addr.ip().is_unspecified() && self.addr.port() == local.port())
    }
}

/// Per TLS bind of `config`, in config order: the counters of `old` for the
/// same frontend name and address, else zero ones.
fn tls_binds(config: &Runtime, old: &[Arc<BindStats>]) -> Vec<Arc<BindStats>> {
    let mut out = Vec::new();
    for f in &config.frontends {
        for b in f.binds.iter().filter(|b| b.tls) {
            let kept = old
                .iter()
                .find(|o| *o.frontend == *f.name && o.addr == b.addr)
                .map(Arc::clone);
            out.push(kept.unwrap_or_else(|| {
                Arc::new(BindStats {
                    frontend: Box::from(&*f.name),
                    addr: b.addr,
                    tls_handshakes: AtomicU64::new(0),
                    tls_handshake_failures: AtomicU64::new(0),
                })
            }));
        }
    }
    out
}

/// State shared by every worker, the admin API and the health checker: one
/// per runtime generation (a reload makes the next one, [`Shared::next`]);
/// the process-wide parts (connection limit, reload counters, uptime) are
/// the same objects in every generation.
#[derive(Debug)]
pub struct Shared {
    /// The generation: 0 at start, one more per successful reload.
    pub id: u64,
    pub config: Arc<Runtime>,
    /// Per frontend of `config`, in its order; a frontend a reload kept (by
    /// name) keeps its counters and its `maxconn` count.
    pub frontends: Vec<Arc<FrontendStats>>,
    /// Per TLS bind address (kept across reloads by frontend name and address).
    pub tls_binds: Vec<Arc<BindStats>>,
    /// The runtime's live backend and server state (also seen by plugins).
    pub backends: Backends,
    /// Open client connections against the global `maxconn`.
    pub conns: Arc<ConnLimit>,
    pub started: Instant,
    /// Reload counters and times, process-wide.
    pub reloads: Arc<super::reload::ReloadStats>,
}

impl Shared {
    /// Fresh state for `config`: all servers up, counters zero.
    pub fn new(config: Arc<Runtime>) -> Shared {
        let maxconn = config
            .global
            .maxconn
            .unwrap_or_else(|| super::limit::default_maxconn(super::limit::fd_limit()));
        let frontends = config
            .frontends
            .iter()
            .map(|f| Arc::new(FrontendStats::new(f.maxconn.unwrap_or(maxconn))))
            .collect();
        let backends = Arc::clone(&config.servers);
        let tls_binds = tls_binds(&config, &[]);
        Shared {
            id: 0,
            config,
            frontends,
            tls_binds,
            backends,
            conns: Arc::new(ConnLimit::new(maxconn)),
            started: Instant::now(),
            reloads: Arc::default(),
        }
    }

    /// The generation after `self` for `config`: frontends with the same
    /// name keep their counters (and, with the same `maxconn`, their open
    /// connection count); the global limit, uptime and reload counters are shared.
    pub fn next(&self, config: Arc<Runtime>) -> Shared {
        let maxconn = self.conns.max();
        let frontends = config
            .frontends
            .iter()
            .map(|f| {
                let max = f.maxconn.unwrap_or(maxconn);
                self.config
                    .frontends
                    .iter()
                    .zip(&self.frontends)
                    .find(|(old, st)| old.name == f.name && st.conns.max() == max)
                    .map_or_else(
                        || Arc::new(FrontendStats::new(max)),
                        |(_, st)| Arc::clone(st),
                    )
            })
            .collect();
        let backends = Arc::clone(&config.servers);
        let tls_binds = tls_binds(&config, &self.tls_binds);
        Shared {
            id: self.id + 1,
            config,
            frontends,
            tls_binds,
            backends,
            conns: Arc::clone(&self.conns),
            started: self.started,
            reloads: Arc::clone(&self.reloads),
        }
    }

    /// Index of the frontend that listens on `addr` in this generation.
    pub fn frontend_for(&self, addr: std::net::SocketAddr) -> Option<usize> {
        self.config
            .frontends
            .iter()
            .position(|f| f.binds.iter().any(|b| b.addr == addr))
    }

    /// The counters of the TLS bind of frontend `name` that accepted a
    /// connection with local address `local`.
    pub fn tls_bind(&self, name: &str, local: std::net::SocketAddr) -> Option<Arc<BindStats>> {
        self.tls_binds
            .iter()
            .find(|b| *b.frontend == *name && b.accepted(local))
            .map(Arc::clone)
    }

    /// Index of the frontend called `name` in this generation.
    pub fn frontend_named(&self, name: &str) -> Option<usize> {
        self.config.frontends.iter().position(|f| &*f.name == name)
    }
}

impl FrontendStats {
    /// Zero counters under a `maxconn` of `max`.
    pub fn new(max: usize) -> FrontendStats {
        FrontendStats {
            requests: AtomicU64::new(0),
            responses: StatusCounters::default(),
            connections_total: AtomicU64::new(0),
            conns: ConnLimit::new(max),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            tls_handshakes: AtomicU64::new(0),
            tls_handshake_failures: AtomicU64::new(0),
            upgrades: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            tunnels_current: AtomicU64::new(0),
        }
    }
}
