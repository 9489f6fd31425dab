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
}

/// State shared by every worker, the admin API and the health checker.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Runtime>,
    pub frontends: Vec<FrontendStats>,
    /// The runtime's live backend and server state (also seen by plugins).
    pub backends: Backends,
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
                tls_handshakes: AtomicU64::new(0),
                tls_handshake_failures: AtomicU64::new(0),
            })
            .collect();
        let backends = Arc::clone(&config.servers);
        Shared {
            config,
            frontends,
            backends,
            conns: ConnLimit::new(maxconn),
            started: Instant::now(),
        }
    }
}
