//! Stick-table replication with HAProxy's peers protocol (version 2.1, as
//! HAProxy 2.6 speaks it), so portcullis nodes share their tables with each
//! other and with HAProxy nodes (see `docs/STICK-TABLES.md`, "Replication").
//!
//! - [`proto`]: the wire codec (pure, fuzzed).
//! - [`table`]: a table's definition, its entries as updates, a peer's update applied.
//! - [`session`]: one connection (handshake, messages, heartbeat, resync, acks).
//! - here: per `[[peers]]` section the listener, one connector per remote
//!   peer (reconnection with back-off), one pump per replicated table, the
//!   start-up resync state, and the counters `/peers`, `/stats` and
//!   `/metrics` show.
//!
//! Everything runs on the control thread's runtime. The request path only
//! flags a changed entry and queues it without waiting
//! ([`crate::stick::replica`]); a table's pump drains that queue, stamps each
//! entry with an update id and broadcasts batches to the sessions. A session
//! that falls behind (the broadcast channel is bounded) or reconnects pushes
//! what its peer has not acknowledged by walking the table, so a slow or
//! dead peer costs bounded memory and loses nothing it had not acknowledged.

pub mod proto;
pub mod session;
pub mod table;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, broadcast};
use tokio::task::AbortHandle;

use crate::config::peers::Section as Spec;
use crate::stick::{Entry, StickTable, StickTables, replica};
use table::Layout;

/// A heartbeat is sent after this long without sending anything (HAProxy's `PEER_HEARTBEAT_TIMEOUT`).
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// A session that received nothing for this long is closed (HAProxy's `PEER_RECONNECT_TIMEOUT`).
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// The handshake must complete within this (HAProxy's peers timeouts are 5 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect timeout (HAProxy's peers `timeout connect` is 1 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A write that does not complete within this closes the session.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a starting process waits for a resync from a peer (HAProxy's `PEER_RESYNC_TIMEOUT`).
pub const RESYNC_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches a session may fall behind before it catches up by a table walk.
pub const BROADCAST: usize = 256;
/// Entries per batch.
pub const BATCH: usize = 256;
/// Handshakes in progress at once per listener (connections beyond are closed).
pub const MAX_HANDSHAKES: usize = 64;
/// How long a binary upgrade's old process tries to teach the new one.
pub const SUCCESSOR_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off between failed connection attempts: from the first to the last, doubling.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));

/// The replication runtime of the process (started by `proxy::run`; its
/// sections are restart-only settings).
static RUNNING: OnceLock<Arc<Peers>> = OnceLock::new();

/// The running replication, if the daemon started one.
pub fn running() -> Option<&'static Arc<Peers>> {
    RUNNING.get()
}

/// Every `[[peers]]` section at work.
#[derive(Debug)]
pub struct Peers {
    sections: Vec<Arc<Section>>,
}

/// One replicated table of a section.
#[derive(Debug)]
pub struct Shared {
    pub table: Arc<StickTable>,
    pub layout: Layout,
    /// Our id for it on the wire (never reused within the process).
    pub id: u64,
}

impl Shared {
    /// The table's name on the wire.
    pub fn wire_name(&self) -> &str {
        self.table
            .outbox()
            .map_or_else(|| self.table.name(), |o| &*o.wire_name)
    }
}

/// Entries changed together, with their update ids, for the sessions to push.
#[derive(Debug)]
pub struct Batch {
    pub table: Arc<Shared>,
    pub items: Vec<(u32, Arc<Entry>)>,
}

/// A session's state, as `show peers` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle = 0,
    Connecting = 1,
    Established = 2,
}

/// Counters of one remote peer.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub state: AtomicU64,
    /// The last handshake status (100: connecting, 200: established, 5xx: refused).
    pub last_status: AtomicU64,
    /// Ms since the section started at the last message received / sent (0: never).
    pub last_rx: AtomicU64,
    pub last_tx: AtomicU64,
    pub updates_sent: AtomicU64,
    pub updates_received: AtomicU64,
    /// Full pushes to this peer after its resync request.
    pub resyncs_taught: AtomicU64,
    /// Full resyncs received from this peer.
    pub resyncs_learned: AtomicU64,
    /// Catch-up walks (after a reconnection or falling behind).
    pub catch_ups: AtomicU64,
    pub connects: AtomicU64,
    pub sessions: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_received: AtomicU64,
    /// Sessions closed because the peer went silent.
    pub silent: AtomicU64,
    /// Sessions replaced by a newer connection with the same peer.
    pub collisions: AtomicU64,
}

/// A remote peer of a section.
#[derive(Debug)]
pub struct Peer {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    pub stats: PeerStats,
    /// The session in force: its id and the notifier that ends it.
    current: Mutex<Option<(u64, Arc<Notify>)>>,
    next_session: AtomicU64,
    /// The last update id this peer acknowledged, per table id (kept across
    /// sessions; by id, so a table redefined by a reload starts afresh).
    acked: Mutex<HashMap<u64, u32>>,
    /// Wakes the connector when a session ends.
    ended: Notify,
    /// Set by a collision: the connector waits a random delay first (HAProxy's 50-2050 ms).
    delay_next: AtomicBool,
    /// The peer's last hello to us said version 2.0: ours to it say 2.0 too
    /// (HAProxy's `PEER_F_DWNGRD`; it never retries after a 502 otherwise).
    pub downgraded: AtomicBool,
}

impl Peer {
    fn new(name: Arc<str>, addr: SocketAddr) -> Peer {
        Peer {
            name,
            addr,
            stats: PeerStats::default(),
            current: Mutex::new(None),
            next_session: AtomicU64::new(1),
            acked: Mutex::new(HashMap::new()),
            ended: Notify::new(),
            delay_next: AtomicBool::new(false),
            downgraded: AtomicBool::new(false),
        }
    }

    fn active(&self) -> bool {
        lock(&self.current).is_some()
    }

    /// The last update id acknowledged for our table `table` (its wire id).
    pub fn acked(&self, table: u64) -> Option<u32> {
        lock(&self.acked).get(&table).copied()
    }

    fn set_acked(&self, table: u64, id: u32) {
        lock(&self.acked).insert(table, id);
    }

    /// Makes a new session the one in force, ending the previous one (a
    /// collision: both sides connected at once, or the peer restarted).
    fn register(&self) -> (u64, Arc<Notify>) {
        let mut cur = lock(&self.current);
        if let Some((_, cancel)) = cur.take() {
            cancel.notify_one();
            self.stats.collisions.fetch_add(1, Relaxed);
            self.delay_next.store(true, Relaxed);
        }
        let id = self.next_session.fetch_add(1, Relaxed);
        let n = Arc::new(Notify::new());
        *cur = Some((id, Arc::clone(&n)));
        (id, n)
    }

    /// Ends the session in force, if any (its connector, if still running, reconnects).
    fn end_session(&self) {
        if let Some((_, cancel)) = lock(&self.current).as_ref() {
            cancel.notify_one();
        }
    }

    fn unregister(&self, id: u64) {
        let mut cur = lock(&self.current);
        if cur.as_ref().is_some_and(|(c, _)| *c == id) {
            *cur = None;
            self.stats.state.store(State::Idle as u64, Relaxed);
        }
        drop(cur);
        self.ended.notify_one();
    }
}

/// Where this process's own peers listener is reached (its bind address;
/// loopback when it binds every address).
fn local_addr(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        std::net::IpAddr::V4(a) if a.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(a) if a.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The start-up resync (HAProxy's "learn" state): a new process asks one
/// connected peer for everything it knows, and considers itself up to date
/// when a peer says it finished, or after [`RESYNC_TIMEOUT`] without one.
#[derive(Debug)]
struct Learn {
    finished: bool,
    /// A binary upgrade's old process is expected to teach us first (it
    /// connects as the local peer): remote peers are not asked before this
    /// date, or before its lesson ended (HAProxy's resync "from local").
    local_until: Option<Instant>,
    deadline: Instant,
    /// The peer asked for a resync.
    assigned: Option<Arc<str>>,
    /// Peers that answered with a partial resync (not asked again).
    partial: Vec<Arc<str>>,
}

/// One `[[peers]]` section at work.
#[derive(Debug)]
pub struct Section {
    pub spec: Arc<Spec>,
    tables: ArcSwap<Vec<Arc<Shared>>>,
    pumps: Mutex<Vec<(Arc<Shared>, AbortHandle)>>,
    next_table_id: AtomicU64,
    updates: broadcast::Sender<Arc<Batch>>,
    pub peers: Vec<Arc<Peer>>,
    /// The local peer: this process's name, as a binary upgrade's old
    /// process connects to its successor (HAProxy's `peers->local`).
    pub local_peer: Arc<Peer>,
    learn: Mutex<Learn>,
    /// The listener and connector tasks, stopped when a successor takes over.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    started: Instant,
    pid: u32,
    handshakes: Arc<Semaphore>,
    /// Connections refused by the allow-list or the handshake limit.
    pub refused: AtomicU64,
}

impl Section {
    fn new(spec: Arc<Spec>, predecessor: bool) -> Section {
        let peers = spec
            .remotes
            .iter()
            .map(|r| Arc::new(Peer::new(Arc::clone(&r.name), r.addr)))
            .collect::<Vec<_>>();
        let started = Instant::now();
        let local_until = predecessor.then_some(started + RESYNC_TIMEOUT);
        Section {
            learn: Mutex::new(Learn {
                finished: peers.is_empty() && !predecessor,
                local_until,
                deadline: local_until.unwrap_or(started) + RESYNC_TIMEOUT,
                assigned: None,
                partial: Vec::new(),
            }),
            local_peer: Arc::new(Peer::new(Arc::clone(&spec.local), local_addr(spec.bind))),
            tasks: Mutex::new(Vec::new()),
            spec,
            tables: ArcSwap::from_pointee(Vec::new()),
            pumps: Mutex::new(Vec::new()),
            next_table_id: AtomicU64::new(1),
            updates: broadcast::channel(BROADCAST).0,
            peers,
            started,
            pid: std::process::id(),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            refused: AtomicU64::new(0),
        }
    }

    /// The section's replicated tables in the generation in force.
    pub fn tables(&self) -> Arc<Vec<Arc<Shared>>> {
        self.tables.load_full()
    }

    /// The table a peer's definition names: ours whose wire name (its
    /// `peers_name`, by default its name) is exactly that, as HAProxy
    /// matches tables (one declared inside an HAProxy `peers` section is
    /// `/<name>` there, so only a table with that `peers_name` matches it).
    fn table_named(&self, name: &[u8]) -> Option<Arc<Shared>> {
        self.tables
            .load()
            .iter()
            .find(|s| s.wire_name().as_bytes() == name)
            .cloned()
    }

    fn table_by_id(&self, id: u64) -> Option<Arc<Shared>> {
        self.tables.load().iter().find(|s| s.id == id).cloned()
    }

    /// Ms since the section started (never 0, so 0 can mean "never").
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether this process considers its tables complete (its start-up
    /// resync finished or timed out): what a resync answer says.
    pub fn resync_finished(&self) -> bool {
        let mut l = lock(&self.learn);
        let now = Instant::now();
        if l.assigned.is_none() && l.local_until.is_some_and(|t| now >= t) {
            tracing::info!(section = %self.spec.name, "peers: no lesson from the old process within the timeout");
            l.local_until = None;
            l.finished = self.peers.is_empty();
            l.deadline = now + RESYNC_TIMEOUT;
        }
        if !l.finished && l.assigned.is_none() && now >= l.deadline {
            tracing::info!(section = %self.spec.name, "peers: no resync within the timeout; tables considered up to date");
            l.finished = true;
        }
        l.finished
    }

    /// Asks `peer` for the start-up resync if none is under way; true if it should.
    fn try_assign(&self, peer: &Arc<str>) -> bool {
        if self.resync_finished() {
            return false;
        }
        let mut l = lock(&self.learn);
        if l.assigned.is_some() || l.partial.contains(peer) || l.local_until.is_some() {
            return false;
        }
        l.assigned = Some(Arc::clone(peer));
        true
    }

    /// The old process connected as the local peer: if we wait for its
    /// lesson, it is assigned to it, the request taken as made (HAProxy's
    /// old process teaches without being asked). True if we learn from it.
    fn assign_local(&self) -> bool {
        let mut l = lock(&self.learn);
        if l.finished || l.local_until.is_none() || l.assigned.is_some() {
            return false;
        }
        l.assigned = Some(Arc::clone(&self.local_peer.name));
        true
    }

    /// `peer` finished its resync push: completely (`full`) or not.
    fn learned(&self, peer: &Arc<str>, full: bool) {
        let mut l = lock(&self.learn);
        if l.assigned.as_ref() != Some(peer) {
            return;
        }
        l.assigned = None;
        if l.local_until.take().is_some() {
            // The old process's lesson: complete if it was up to date
            // itself, otherwise the remote peers are asked next.
            l.finished = full || self.peers.is_empty();
            l.deadline = Instant::now() + RESYNC_TIMEOUT;
        } else if full {
            l.finished = true;
        } else {
            l.partial.push(Arc::clone(peer));
            l.deadline = Instant::now() + RESYNC_TIMEOUT;
        }
    }

    /// `peer`'s session ended: a resync it was giving is asked of another peer.
    fn unassign(&self, peer: &Arc<str>) {
        let mut l = lock(&self.learn);
        if l.assigned.as_ref() == Some(peer) {
            l.assigned = None;
            if *peer == self.local_peer.name {
                // The old process went away mid-lesson: ask the remote peers.
                l.local_until = None;
                l.finished = self.peers.is_empty();
            }
            l.deadline = Instant::now() + RESYNC_TIMEOUT;
        }
    }

    /// Adopts the generation's tables replicated with this section: kept
    /// tables keep their pump and id, new ones get both, dropped ones lose theirs.
    fn set_tables(self: &Arc<Self>, tables: &StickTables) {
        let mut pumps = lock(&self.pumps);
        let mut next: Vec<Arc<Shared>> = Vec::new();
        for t in tables
            .iter()
            .filter(|t| t.peers() == Some(&*self.spec.name))
        {
            if let Some((s, _)) = pumps.iter().find(|(s, _)| Arc::ptr_eq(&s.table, t)) {
                next.push(Arc::clone(s));
                continue;
            }
            let Some(rx) = t.outbox().and_then(|o| o.take_receiver()) else {
                continue;
            };
            let shared = Arc::new(Shared {
                table: Arc::clone(t),
                layout: Layout::of(t),
                id: self.next_table_id.fetch_add(1, Relaxed),
            });
            let h =
                tokio::spawn(pump(Arc::downgrade(self), Arc::clone(&shared), rx)).abort_handle();
            pumps.push((Arc::clone(&shared), h));
            next.push(shared);
        }
        pumps.retain(|(s, h)| {
            let kept = next.iter().any(|n| Arc::ptr_eq(n, s));
            if !kept {
                h.abort();
            }
            kept
        });
        self.tables.store(Arc::new(next));
    }

    /// The `/peers` document of this section.
    pub fn json(&self) -> Value {
        let now = self.now_ms();
        let ago = |t: u64| {
            if t == 0 {
                Value::Null
            } else {
                json!(now.saturating_sub(t))
            }
        };
        let tables: Vec<Value> = self
            .tables()
            .iter()
            .map(|s| {
                let o = s.table.outbox();
                json!({
                    "name": s.table.name(),
                    "wire_name": s.wire_name(),
                    "id": s.id,
                    "last_update_id": o.map_or(0, |o| o.last_id()),
                    "queue_overflows": o.map_or(0, |o| o.overflows.load(Relaxed)),
                })
            })
            .collect();
        let peer_json = |p: &Peer| {
            let st = &p.stats;
            let status = st.last_status.load(Relaxed);
            let state = match st.state.load(Relaxed) {
                2 => "established",
                1 => "connecting",
                _ => "idle",
            };
            let acked: serde_json::Map<String, Value> = self
                .tables()
                .iter()
                .filter_map(|t| {
                    p.acked(t.id)
                        .map(|a| (t.table.name().to_string(), json!(a)))
                })
                .collect();
            json!({
                "name": &*p.name,
                "addr": p.addr.to_string(),
                "state": state,
                "last_status": status,
                "status": proto::Status::short(u16::try_from(status).unwrap_or(0)),
                "last_rx_ms_ago": ago(st.last_rx.load(Relaxed)),
                "last_tx_ms_ago": ago(st.last_tx.load(Relaxed)),
                "updates_sent": st.updates_sent.load(Relaxed),
                "updates_received": st.updates_received.load(Relaxed),
                "resyncs_taught": st.resyncs_taught.load(Relaxed),
                "resyncs_learned": st.resyncs_learned.load(Relaxed),
                "catch_ups": st.catch_ups.load(Relaxed),
                "connects": st.connects.load(Relaxed),
                "sessions": st.sessions.load(Relaxed),
                "protocol_errors": st.protocol_errors.load(Relaxed),
                "heartbeats_sent": st.heartbeats_sent.load(Relaxed),
                "heartbeats_received": st.heartbeats_received.load(Relaxed),
                "silent_closes": st.silent.load(Relaxed),
                "collisions": st.collisions.load(Relaxed),
                "acked": acked,
            })
        };
        let peers: Vec<Value> = self.peers.iter().map(|p| peer_json(p)).collect();
        json!({
            "name": &*self.spec.name,
            "local": &*self.spec.local,
            "bind": self.spec.bind.to_string(),
            "resync": if self.resync_finished() { "finished" } else { "pending" },
            "refused_connections": self.refused.load(Relaxed),
            // A binary upgrade's lesson: taught by the old process, learned by the new one.
            "local_peer": peer_json(&self.local_peer),
            "tables": tables,
            "peers": peers,
        })
    }
}

impl Peers {
    /// Binds each section's listener (before anything starts, so a taken
    /// port is a start-up error naming the section).
    pub fn bind(specs: &[Arc<Spec>]) -> Result<Vec<StdListener>, (Arc<Spec>, std::io::Error)> {
        specs
            .iter()
            .map(|s| crate::proxy::listen(s.bind, false).map_err(|e| (Arc::clone(s), e)))
            .collect()
    }

    /// Starts every section on the current (control) runtime with the
    /// listeners [`Peers::bind`] made, replicating `tables`; registers the
    /// result for the admin API.
    /// A `None` listener (a binary upgrade whose old process still holds
    /// the port) is bound as soon as the port is free. `predecessor`: a
    /// binary upgrade's old process runs, and will teach its tables to this
    /// one (see [`Peers::hand_over`]) before the remote peers are asked.
    pub fn start(
        specs: &[Arc<Spec>],
        listeners: Vec<Option<StdListener>>,
        tables: &StickTables,
        predecessor: bool,
    ) -> Arc<Peers> {
        let mut sections = Vec::new();
        for (spec, l) in specs.iter().zip(listeners) {
            let s = Arc::new(Section::new(Arc::clone(spec), predecessor));
            s.set_tables(tables);
            let mut tasks = vec![tokio::spawn(listen_when_bound(Arc::clone(&s), l))];
            for p in &s.peers {
                tasks.push(tokio::spawn(connector(Arc::clone(&s), Arc::clone(p))));
            }
            *lock(&s.tasks) = tasks;
            sections.push(s);
        }
        let peers = Arc::new(Peers { sections });
        let _ = RUNNING.set(Arc::clone(&peers));
        peers
    }

    /// A binary upgrade's new process serves: as HAProxy's old process at
    /// its soft-stop, this one stops accepting peers connections (the new
    /// process has the listener) and connecting to the remote peers, ends
    /// its sessions with them (they reconnect to the new process), then
    /// connects to the new process as the local peer and teaches it every
    /// entry. Returns once every section's lesson was confirmed, failed, or
    /// [`SUCCESSOR_TIMEOUT`] passed; the sessions go on pushing this
    /// process's later changes (its draining requests) until it exits.
    pub async fn hand_over(&self) {
        let mut lessons = Vec::new();
        for s in &self.sections {
            let tasks = std::mem::take(&mut *lock(&s.tasks));
            for t in &tasks {
                t.abort();
            }
            // The listener task's end closes this process's copy of the socket.
            for t in tasks {
                let _ = t.await;
            }
            for p in &s.peers {
                p.end_session();
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(teach_successor(Arc::clone(s), tx));
            lessons.push((Arc::clone(&s.spec.name), rx));
        }
        for (name, rx) in lessons {
            match tokio::time::timeout_at(tokio::time::Instant::now() + SUCCESSOR_TIMEOUT, rx).await
            {
                Ok(Ok(Ok(n))) => {
                    tracing::info!(section = %name, entries = n, "peers: tables taught to the new process")
                }
                Ok(Ok(Err(why))) => {
                    tracing::warn!(section = %name, error = %why, "peers: cannot teach the new process")
                }
                Ok(Err(_)) => {
                    tracing::warn!(section = %name, "peers: the session with the new process ended before its lesson did")
                }
                Err(_) => {
                    tracing::warn!(section = %name, timeout = ?SUCCESSOR_TIMEOUT, "peers: the new process did not confirm its lesson in time")
                }
            }
        }
    }

    /// A reload: the sections replicate the new generation's tables.
    pub fn set_tables(&self, tables: &StickTables) {
        for s in &self.sections {
            s.set_tables(tables);
        }
    }

    /// The sections.
    pub fn sections(&self) -> &[Arc<Section>] {
        &self.sections
    }

    /// The `/peers` document (also the `peers` part of `/stats`).
    pub fn json(&self) -> Value {
        Value::Array(self.sections.iter().map(|s| s.json()).collect())
    }

    /// The `/metrics` families.
    pub fn metrics(&self, f: &mut crate::metrics::Writer) {
        use crate::metrics::label;
        type Get = fn(&PeerStats) -> u64;
        let fams: [(&str, &str, &str, Get); 9] = [
            (
                "portcullis_peer_up",
                "gauge",
                "1 while the session with the peer is established.",
                |s| u64::from(s.state.load(Relaxed) == State::Established as u64),
            ),
            (
                "portcullis_peer_updates_sent_total",
                "counter",
                "Stick-table updates pushed to the peer.",
                |s| s.updates_sent.load(Relaxed),
            ),
            (
                "portcullis_peer_updates_received_total",
                "counter",
                "Stick-table updates received from the peer.",
                |s| s.updates_received.load(Relaxed),
            ),
            (
                "portcullis_peer_resyncs_taught_total",
                "counter",
                "Full resyncs pushed to the peer on its request.",
                |s| s.resyncs_taught.load(Relaxed),
            ),
            (
                "portcullis_peer_resyncs_learned_total",
                "counter",
                "Full resyncs received from the peer.",
                |s| s.resyncs_learned.load(Relaxed),
            ),
            (
                "portcullis_peer_sessions_total",
                "counter",
                "Sessions established with the peer.",
                |s| s.sessions.load(Relaxed),
            ),
            (
                "portcullis_peer_protocol_errors_total",
                "counter",
                "Sessions closed on a protocol error.",
                |s| s.protocol_errors.load(Relaxed),
            ),
            (
                "portcullis_peer_heartbeats_received_total",
                "counter",
                "Heartbeats received from the peer.",
                |s| s.heartbeats_received.load(Relaxed),
            ),
            (
                "portcullis_peer_silent_closes_total",
                "counter",
                "Sessions closed because the peer sent nothing for 5 s.",
                |s| s.silent.load(Relaxed),
            ),
        ];
        for (name, kind, help, get) in fams {
            let samples: Vec<(String, u64)> = self
                .sections
                .iter()
                .flat_map(|s| {
                    s.peers.iter().map(move |p| {
                        (
                            format!(
                                "{},{}",
                                label("section", &s.spec.name),
                                label("peer", &p.name)
                            ),
                            get(&p.stats),
                        )
                    })
                })
                .collect();
            f.family(name, kind, help, samples);
        }
    }
}

/// Drains a table's outbox: each changed entry gets the next update id and
/// goes out in batches to every session (entries that left the table are dropped).
async fn pump(
    section: std::sync::Weak<Section>,
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<Arc<Entry>>,
) {
    let Some(outbox) = shared.table.outbox().cloned() else {
        return;
    };
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut items = Vec::new();
        let take = |e: Arc<Entry>, items: &mut Vec<(u32, Arc<Entry>)>| {
            // The mark goes before the values are read: a change made
            // meanwhile queues the entry again.
            if replica::take_dirty(&e) && !e.is_dead() {
                let id = outbox.next_id();
                replica::set_update_id(&e, id);
                items.push((id, e));
            }
        };
        take(first, &mut items);
        while items.len() < BATCH {
            match rx.try_recv() {
                Ok(e) => take(e, &mut items),
                Err(_) => break,
            }
        }
        if outbox.take_overflow() {
            // Entries flagged while the queue was full are not in it: find them.
            for e in shared.table.entries(usize::MAX, replica::is_dirty) {
                take(e, &mut items);
            }
        }
        let Some(section) = section.upgrade() else {
            return;
        };
        for chunk in items.chunks(BATCH) {
            // No session listening is fine: a session that starts walks the table.
            let _ = section.updates.send(Arc::new(Batch {
                table: Arc::clone(&shared),
                items: chunk.to_vec(),
            }));
        }
        drop(section);
        tokio::time::sleep(replica::LINGER).await;
    }
}

/// Binds the section's listener if it is not yet (retrying every 200 ms), then accepts.
async fn listen_when_bound(section: Arc<Section>, l: Option<StdListener>) {
    let spec = Arc::clone(&section.spec);
    let l = match l {
        Some(l) => l,
        None => loop {
            match crate::proxy::listen(spec.bind, false) {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        },
    };
    match TcpListener::from_std(l) {
        Ok(l) => {
            tracing::info!(section = %spec.name, local = %spec.local, addr = %spec.bind, peers = spec.remotes.len(), "peers listening");
            listen(section, l).await;
        }
        Err(e) => {
            tracing::error!(section = %spec.name, error = %e, "cannot start the peers listener")
        }
    }
}

/// Accepts peers connections: the allow-list, then the handshake (bounded in number and time).
async fn listen(section: Arc<Section>, listener: TcpListener) {
    loop {
        let (sock, from) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(section = %section.spec.name, error = %e, "peers accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !section.spec.allows(from.ip()) {
            section.refused.fetch_add(1, Relaxed);
            tracing::warn!(section = %section.spec.name, %from, "peers connection refused: the source address is not allowed");
            continue;
        }
        let Ok(permit) = Arc::clone(&section.handshakes).try_acquire_owned() else {
            section.refused.fetch_add(1, Relaxed);
            tracing::warn!(section = %section.spec.name, %from, "peers connection refused: too many handshakes in progress");
            continue;
        };
        let s = Arc::clone(&section);
        tokio::spawn(async move {
            let r = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_hello(&s, sock, from)).await;
            drop(permit);
            match r {
                Ok(Some(run)) => run.await,
                Ok(None) => {}
                Err(_) => {
                    tracing::debug!(section = %s.spec.name, %from, "peers handshake timed out")
                }
            }
        });
    }
}

/// The server side of a handshake; on success, the session to run.
async fn accept_hello(
    section: &Arc<Section>,
    mut sock: TcpStream,
    from: SocketAddr,
) -> Option<impl std::future::Future<Output = ()> + use<>> {
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    while lines.len() < 3 {
        match proto::take_line(&mut buf) {
            Ok(Some(l)) => {
                lines.push(l);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(%from, error = %e, "peers handshake refused");
                let _ = sock.write_all(b"501\n").await;
                return None;
            }
        }
        let mut chunk = [0u8; 512];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let status = (|| {
        let (_, minor) = proto::check_version(&lines[0])?;
        if lines[1] != *section.spec.local {
            return Err(proto::Status::ErrHost);
        }
        let name = proto::sender_name(&lines[2])?;
        // Our own name: a binary upgrade's old process, come to teach us.
        let peer = if name == &*section.spec.local {
            &section.local_peer
        } else {
            section
                .peers
                .iter()
                .find(|p| *p.name == *name)
                .ok_or(proto::Status::ErrPeer)?
        };
        Ok((Arc::clone(peer), minor))
    })();
    let (peer, minor) = match status {
        Ok(p) => p,
        Err(st) => {
            tracing::warn!(section = %section.spec.name, %from, status = st.code(), hello = ?lines, "peers handshake refused");
            let _ = sock.write_all(format!("{}\n", st.code()).as_bytes()).await;
            return None;
        }
    };
    // HAProxy remembers a 2.0 peer: its own hellos to it say 2.0 from then on.
    peer.downgraded
        .store(minor == proto::DOWNGRADED_MINOR, Relaxed);
    let (id, cancel) = peer.register();
    if sock.write_all(b"200\n").await.is_err() {
        peer.unregister(id);
        return None;
    }
    peer.stats.last_status.store(200, Relaxed);
    tracing::info!(section = %section.spec.name, peer = %peer.name, %from, "peer connected");
    let section = Arc::clone(section);
    let role = if Arc::ptr_eq(&peer, &section.local_peer) {
        session::Role::FromPredecessor
    } else {
        session::Role::Remote
    };
    Some(async move {
        session::run(section, peer, sock, buf, (id, cancel), minor, role).await;
    })
}

/// A small random delay (HAProxy waits 50-2050 ms after a collision so the two sides do not race again).
fn jitter(min_ms: u64, span_ms: u64) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(min_ms);
    Duration::from_millis(min_ms + h.finish() % span_ms.max(1))
}

/// Keeps a session with `peer` up: connects when none is in force, with
/// back-off after failures.
async fn connector(section: Arc<Section>, peer: Arc<Peer>) {
    let mut backoff = BACKOFF.0;
    loop {
        loop {
            let ended = peer.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !peer.active() {
                break;
            }
            ended.await;
        }
        if peer.delay_next.swap(false, Relaxed) {
            tokio::time::sleep(jitter(50, 2000)).await;
            if peer.active() {
                continue;
            }
        }
        peer.stats.connects.fetch_add(1, Relaxed);
        peer.stats.state.store(State::Connecting as u64, Relaxed);
        peer.stats.last_status.store(100, Relaxed);
        let minor = if peer.downgraded.load(Relaxed) {
            proto::DOWNGRADED_MINOR
        } else {
            proto::MINOR
        };
        match connect(&section, &peer, minor).await {
            Ok((sock, rest)) => {
                backoff = BACKOFF.0;
                let (id, cancel) = peer.register();
                tracing::info!(section = %section.spec.name, peer = %peer.name, addr = %peer.addr, "connected to peer");
                session::run(
                    Arc::clone(&section),
                    Arc::clone(&peer),
                    sock,
                    rest,
                    (id, cancel),
                    minor,
                    session::Role::Remote,
                )
                .await;
                tokio::time::sleep(jitter(50, 500)).await;
            }
            Err(why) => {
                if !peer.active() {
                    peer.stats.state.store(State::Idle as u64, Relaxed);
                }
                tracing::debug!(section = %section.spec.name, peer = %peer.name, addr = %peer.addr, error = %why, retry_in = ?backoff, "cannot connect to peer");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Connects to `peer` and says hello; the stream and any bytes read past
/// the status line on success.
async fn connect(
    section: &Section,
    peer: &Peer,
    minor: u32,
) -> Result<(TcpStream, Vec<u8>), String> {
    let mut sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer.addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = sock.set_nodelay(true);
    peer.stats.last_status.store(110, Relaxed);
    let hello = proto::hello(&peer.name, &section.spec.local, section.pid, minor);
    let status = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        sock.write_all(hello.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        loop {
            if let Some(line) = proto::take_line(&mut buf).map_err(|e| e.to_string())? {
                return Ok::<_, String>((line, buf));
            }
            let mut chunk = [0u8; 256];
            match sock.read(&mut chunk).await {
                Ok(0) => return Err("closed during the handshake".to_string()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "handshake timed out".to_string())??;
    let (line, rest) = status;
    let code = proto::parse_status(&line).ok_or_else(|| format!("bad status line {line:?}"))?;
    peer.stats.last_status.store(u64::from(code), Relaxed);
    if code != 200 {
        return Err(format!(
            "peer answered {code} ({})",
            proto::Status::short(code)
        ));
    }
    Ok((sock, rest))
}

/// A binary upgrade's old process: connects to the new one (at this
/// section's own address) as the local peer and teaches it every entry;
/// `taught` gets the number of entries once the new process confirmed the
/// lesson, or why it failed. The session then goes on until this process exits.
async fn teach_successor(
    section: Arc<Section>,
    taught: tokio::sync::oneshot::Sender<Result<usize, String>>,
) {
    let peer = Arc::clone(&section.local_peer);
    peer.stats.connects.fetch_add(1, Relaxed);
    peer.stats.state.store(State::Connecting as u64, Relaxed);
    match connect(&section, &peer, proto::MINOR).await {
        Ok((sock, rest)) => {
            let (id, cancel) = peer.register();
            tracing::info!(section = %section.spec.name, addr = %peer.addr, "connected to the new process to teach it");
            session::run(
                Arc::clone(&section),
                peer,
                sock,
                rest,
                (id, cancel),
                proto::MINOR,
                session::Role::ToSuccessor(Some(taught)),
            )
            .await;
        }
        Err(why) => {
            peer.stats.state.store(State::Idle as u64, Relaxed);
            let _ = taught.send(Err(why));
        }
    }
}
