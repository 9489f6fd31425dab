//! Shared runtime state: counters and server health, read by the admin API.
//!
//! Everything here is atomics so workers update it without locks; readers
//! (admin, metrics) see a slightly racy but consistent-enough snapshot, as
//! with HAProxy's stats.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use super::limit::ConnLimit;
use crate::runtime::Runtime;

/// Response counters by status class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
#[derive(Debug, Default)]
pub struct StatusCounters {
    classes: [AtomicU64; 6],
}

impl StatusCounters {
    /// Counts one response with `status`.
    pub fn record(&self, status: u16) {
        let idx = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.classes[idx].fetch_add(1, Relaxed);
    }

    /// The six counters in order 1xx..5xx, other.
    pub fn snapshot(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.classes[i].load(Relaxed))
    }
}

/// Names of the [`StatusCounters`] classes, in order.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

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
}

/// Per-backend counters.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub requests: AtomicU64,
    pub responses: StatusCounters,
    /// Requests that found no usable server (503).
    pub no_server: AtomicU64,
}

/// One server's live state: health, load and counters.
#[derive(Debug)]
pub struct ServerState {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub weight: u32,
    up: AtomicBool,
    /// Requests currently being served (for leastconn).
    pub active: AtomicU32,
    pub requests: AtomicU64,
    /// Connection failures, resets and timeouts.
    pub failures: AtomicU64,
    pub responses: StatusCounters,
    /// Upstream connections opened.
    pub connects: AtomicU64,
    pub checks_failed: AtomicU64,
    /// Times the server went from up to down.
    pub downs: AtomicU64,
}

impl ServerState {
    /// Whether balancing may pick this server.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Marks the server up or down; returns true if that changed its state.
    pub fn set_up(&self, up: bool) -> bool {
        let was = self.up.swap(up, Relaxed);
        if was && !up {
            self.downs.fetch_add(1, Relaxed);
        }
        was != up
    }
}

/// A backend's counters and servers.
#[derive(Debug)]
pub struct BackendState {
    pub stats: BackendStats,
    pub servers: Vec<ServerState>,
}

/// State shared by every worker, the admin API and the health checker.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Runtime>,
    pub frontends: Vec<FrontendStats>,
    pub backends: Vec<BackendState>,
    /// Open client connections against the global `maxconn`.
    pub conns: ConnLimit,
    pub started: Instant,
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
            .map(|f| FrontendStats {
                requests: AtomicU64::new(0),
                responses: StatusCounters::default(),
                connections_total: AtomicU64::new(0),
                conns: ConnLimit::new(f.maxconn.unwrap_or(maxconn)),
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            })
            .collect();
        let backends = config
            .backends
            .iter()
            .map(|b| BackendState {
                stats: BackendStats::default(),
                servers: b
                    .servers
                    .iter()
                    .map(|s| ServerState {
                        name: s.name.clone(),
                        addr: s.addr,
                        weight: s.weight,
                        up: AtomicBool::new(true),
                        active: AtomicU32::new(0),
                        requests: AtomicU64::new(0),
                        failures: AtomicU64::new(0),
                        responses: StatusCounters::default(),
                        connects: AtomicU64::new(0),
                        checks_failed: AtomicU64::new(0),
                        downs: AtomicU64::new(0),
                    })
                    .collect(),
            })
            .collect();
        Shared {
            config,
            frontends,
            backends,
            conns: ConnLimit::new(maxconn),
            started: Instant::now(),
        }
    }
}
