//! One session with a peer, after the handshake: a reader task decodes the
//! peer's messages (table definitions, updates applied to our tables,
//! acknowledgements, control messages) and hands what needs an answer to
//! the writer loop, which pushes our updates (live batches, catch-up walks,
//! a full resync on request), acknowledges the peer's updates, asks for the
//! start-up resync, and keeps the link alive with heartbeats.
//!
//! Reading and writing are separate tasks so a large push never stops the
//! reader (two peers pushing at each other cannot deadlock on full socket
//! buffers). Every wait is bounded: a write within [`WRITE_TIMEOUT`], and a
//! peer silent for [`DEAD_AFTER`] is dropped. A malformed message ends this
//! session only (after telling the peer, as HAProxy does).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, broadcast, mpsc};

use super::proto::{self, Definition, ProtoError, WireKey, class, control, stkt};
use super::table;
use super::{DEAD_AFTER, HEARTBEAT, Peer, Section, Shared, State, WRITE_TIMEOUT};
use crate::stick::{Entry, replica};

/// Bytes buffered before the writer flushes in the middle of a long push.
const FLUSH_AT: usize = 64 * 1024;
/// Table definitions one session may hold (a peer defining more is hostile or broken).
const MAX_REMOTE_TABLES: usize = 1024;

/// What the reader tells the writer.
#[derive(Debug)]
enum Event {
    /// A control message (resync request, finished, partial, confirm).
    Control(u8),
    /// The peer acknowledged our updates of table `table` up to `update`.
    Ack { table: u64, update: u32 },
    /// We received the peer's updates of its table `table` up to `update`: acknowledge.
    AckDue { table: u64, update: u32 },
    /// The peer sent something malformed.
    Error(ProtoError),
    /// The peer reported an error (class 1) and closes.
    RemoteError(u8),
    /// The connection closed.
    Closed,
}

/// Who a session is with.
#[derive(Debug)]
pub enum Role {
    /// A remote peer.
    Remote,
    /// (In a binary upgrade's new process) the old process, connected as
    /// the local peer to teach us its tables: we learn from it without
    /// asking, as HAProxy does.
    FromPredecessor,
    /// (In the old process) the new process: we teach it every entry at
    /// once; the sender gets the number of entries when it confirms.
    ToSuccessor(Option<tokio::sync::oneshot::Sender<Result<usize, String>>>),
}

/// A table as the peer defined it.
struct Remote {
    /// Ours, if the definition matches one (otherwise its updates are ignored, as HAProxy does).
    shared: Option<Arc<Shared>>,
    key: WireKey,
    def: Definition<'static>,
    last_get: u32,
}

/// Runs a session until it ends (peer closed, error, silence, or replaced
/// by a newer one through `cancel`). `rest`: bytes read past the handshake;
/// `(id, cancel)`: the session's registration with its peer.
pub async fn run(
    section: Arc<Section>,
    peer: Arc<Peer>,
    stream: TcpStream,
    rest: Vec<u8>,
    (id, cancel): (u64, Arc<Notify>),
    remote_minor: u32,
    role: Role,
) {
    peer.stats.sessions.fetch_add(1, Relaxed);
    peer.stats.state.store(State::Established as u64, Relaxed);
    peer.stats.last_rx.store(section.now_ms(), Relaxed);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(256);
    let reader = tokio::spawn(read_loop(
        Arc::clone(&section),
        Arc::clone(&peer),
        rd,
        rest,
        tx,
    ));
    let mut out = Out {
        section: &section,
        peer: &peer,
        wr,
        buf: Vec::with_capacity(4096),
        announced: HashSet::new(),
        current: None,
        last_pushed: HashMap::new(),
        timed: remote_minor >= 1,
        role,
    };
    let why = out.serve(rx, &cancel).await;
    let _ = out.wr.shutdown().await;
    reader.abort();
    section.unassign(&peer.name);
    peer.unregister(id);
    tracing::info!(section = %section.spec.name, peer = %peer.name, reason = %why, "peer session ended");
}

async fn read_loop(
    section: Arc<Section>,
    peer: Arc<Peer>,
    mut rd: OwnedReadHalf,
    mut buf: Vec<u8>,
    tx: mpsc::Sender<Event>,
) {
    let mut remotes: HashMap<u64, Remote> = HashMap::new();
    let mut current: Option<u64> = None;
    loop {
        let mut used = 0;
        let mut acks: Vec<u64> = Vec::new();
        loop {
            let f = match proto::frame(buf.get(used..).unwrap_or_default()) {
                Ok(Some((f, n))) => {
                    used += n;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Event::Error(e)).await;
                    return;
                }
            };
            peer.stats.last_rx.store(section.now_ms(), Relaxed);
            match handle(&section, &peer, &f, &mut remotes, &mut current, &mut acks) {
                Ok(Some(ev)) => {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Event::Error(e)).await;
                    return;
                }
            }
        }
        buf.drain(..used);
        acks.sort_unstable();
        acks.dedup();
        for t in acks {
            if let Some(r) = remotes.get(&t) {
                let ev = Event::AckDue {
                    table: t,
                    update: r.last_get,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
        // At most one message (≤ MAX_MESSAGE + its header) is ever kept
        // unfinished, so the buffer stays within a few tens of KiB.
        buf.reserve(16 * 1024);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(Event::Closed).await;
                return;
            }
            Ok(_) => {}
        }
    }
}

/// Decodes one message; what the writer must do about it, if anything.
fn handle(
    section: &Section,
    peer: &Peer,
    f: &proto::Frame<'_>,
    remotes: &mut HashMap<u64, Remote>,
    current: &mut Option<u64>,
    acks: &mut Vec<u64>,
) -> Result<Option<Event>, ProtoError> {
    match f.class {
        class::CONTROL => match f.kind {
            control::HEARTBEAT => {
                peer.stats.heartbeats_received.fetch_add(1, Relaxed);
                Ok(None)
            }
            k @ (control::RESYNC_REQUEST
            | control::RESYNC_FINISHED
            | control::RESYNC_PARTIAL
            | control::RESYNC_CONFIRM) => Ok(Some(Event::Control(k))),
            _ => Ok(None),
        },
        class::ERROR => Ok(Some(Event::RemoteError(f.kind))),
        class::STICK_TABLE => match f.kind {
            stkt::DEFINE => {
                let d = proto::parse_definition(f.body)?;
                if remotes.len() >= MAX_REMOTE_TABLES && !remotes.contains_key(&d.id) {
                    return Err(ProtoError::Malformed("more than 1024 table definitions"));
                }
                let key = WireKey::from_wire(d.key_type, d.key_len);
                let shared = section
                    .table_named(d.name)
                    .filter(|s| s.layout.accepts(&d) && key.is_some());
                if shared.is_none() {
                    tracing::debug!(section = %section.spec.name, peer = %peer.name, table = %String::from_utf8_lossy(d.name), key_type = d.key_type, key_len = d.key_len, "peer table with no matching local table: its updates are ignored");
                }
                remotes.insert(
                    d.id,
                    Remote {
                        shared,
                        key: key.unwrap_or(WireKey::Fixed(0)),
                        def: d.detached(),
                        last_get: 0,
                    },
                );
                *current = Some(d.id);
                Ok(None)
            }
            stkt::SWITCH => {
                let id = proto::parse_switch(f.body)?;
                *current = remotes.contains_key(&id).then_some(id);
                Ok(None)
            }
            stkt::UPDATE | stkt::INC_UPDATE | stkt::UPDATE_TIMED | stkt::INC_UPDATE_TIMED => {
                let Some((rid, r)) = current.and_then(|id| remotes.get_mut(&id).map(|r| (id, r)))
                else {
                    return Ok(None);
                };
                let Some(sh) = &r.shared else {
                    return Ok(None);
                };
                let with_id = matches!(f.kind, stkt::UPDATE | stkt::UPDATE_TIMED);
                let timed = matches!(f.kind, stkt::UPDATE_TIMED | stkt::INC_UPDATE_TIMED);
                let u = proto::parse_update(f.body, with_id, timed, r.key, &r.def)?;
                r.last_get = u.id.unwrap_or_else(|| r.last_get.wrapping_add(1));
                table::apply(&sh.table, &u);
                peer.stats.updates_received.fetch_add(1, Relaxed);
                acks.push(rid);
                Ok(None)
            }
            stkt::ACK => {
                let (table, update) = proto::parse_ack(f.body)?;
                Ok(Some(Event::Ack { table, update }))
            }
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

/// The writing side of a session.
struct Out<'a> {
    section: &'a Section,
    peer: &'a Peer,
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
    /// Our tables defined to the peer in this session.
    announced: HashSet<u64>,
    /// The table the peer applies updates to.
    current: Option<u64>,
    /// Per table, the id of our last update pushed (for incremental updates).
    last_pushed: HashMap<u64, u32>,
    /// The peer speaks 2.1: resync pushes carry each entry's remaining lifetime.
    timed: bool,
    role: Role,
}

impl Out<'_> {
    async fn serve(&mut self, mut events: mpsc::Receiver<Event>, cancel: &Notify) -> String {
        let mut updates = self.section.updates.subscribe();
        let mut learning = false;
        let mut teaching = false;
        let remote = matches!(self.role, Role::Remote);
        let mut lesson = 0;
        let r: Result<String, String> = async {
            match self.role {
                Role::Remote => {
                    self.catch_up().await?;
                    if self.section.try_assign(&self.peer.name) {
                        proto::put_short(&mut self.buf, class::CONTROL, control::RESYNC_REQUEST);
                        learning = true;
                    }
                }
                Role::FromPredecessor => {
                    self.catch_up().await?;
                    learning = self.section.assign_local();
                }
                // The whole table, so no catch-up first (HAProxy's old
                // process flags its local peer for a lesson at connect time).
                Role::ToSuccessor(_) => {
                    teaching = true;
                    lesson = self.teach().await?;
                    self.peer.stats.resyncs_taught.fetch_add(1, Relaxed);
                }
            }
            self.flush().await?;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.notified() => return Ok("replaced by a newer session".to_string()),
                    ev = events.recv() => match ev {
                        None | Some(Event::Closed) => return Ok("closed by the peer".to_string()),
                        Some(Event::RemoteError(k)) => {
                            return Ok(format!("the peer reported an error ({})", if k == proto::error::SIZE_LIMIT { "size limit" } else { "protocol error" }));
                        }
                        Some(Event::Error(e)) => {
                            self.peer.stats.protocol_errors.fetch_add(1, Relaxed);
                            let kind = if matches!(e, ProtoError::TooBig(_)) { proto::error::SIZE_LIMIT } else { proto::error::PROTOCOL };
                            self.buf.clear();
                            proto::put_short(&mut self.buf, class::ERROR, kind);
                            let _ = self.flush().await;
                            tracing::warn!(section = %self.section.spec.name, peer = %self.peer.name, error = %e, "peer protocol error");
                            return Ok(format!("protocol error: {e}"));
                        }
                        Some(Event::AckDue { table, update }) => proto::put_ack(&mut self.buf, table, update),
                        Some(Event::Ack { table, update }) => {
                            // HAProxy ignores acknowledgements while it pushes a resync.
                            if !teaching && self.section.table_by_id(table).is_some() {
                                self.peer.set_acked(table, update);
                            }
                        }
                        Some(Event::Control(control::RESYNC_REQUEST)) => {
                            teaching = true;
                            self.teach().await?;
                            self.peer.stats.resyncs_taught.fetch_add(1, Relaxed);
                        }
                        Some(Event::Control(k @ (control::RESYNC_FINISHED | control::RESYNC_PARTIAL))) => {
                            if learning {
                                learning = false;
                                self.section.learned(&self.peer.name, k == control::RESYNC_FINISHED);
                                self.peer.stats.resyncs_learned.fetch_add(1, Relaxed);
                                tracing::info!(section = %self.section.spec.name, peer = %self.peer.name, complete = k == control::RESYNC_FINISHED, "resync received");
                            }
                            proto::put_short(&mut self.buf, class::CONTROL, control::RESYNC_CONFIRM);
                        }
                        Some(Event::Control(k)) => {
                            teaching = false;
                            if k == control::RESYNC_CONFIRM
                                && let Role::ToSuccessor(taught) = &mut self.role
                                && let Some(tx) = taught.take()
                            {
                                let _ = tx.send(Ok(lesson));
                            }
                        }
                    },
                    b = updates.recv(), if !learning => match b {
                        Ok(batch) => {
                            let now = batch.table.table.now();
                            for (id, e) in &batch.items {
                                if !e.is_dead() {
                                    self.push(&batch.table, *id, e, None, now);
                                }
                                if self.buf.len() >= FLUSH_AT {
                                    self.flush().await?;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await?,
                        Err(broadcast::error::RecvError::Closed) => return Ok("shutting down".to_string()),
                    },
                    _ = tick.tick() => {
                        let now = self.section.now_ms();
                        let rx = self.peer.stats.last_rx.load(Relaxed);
                        if now.saturating_sub(rx) > DEAD_AFTER.as_millis() as u64 {
                            self.peer.stats.silent.fetch_add(1, Relaxed);
                            return Ok(format!("nothing received for {DEAD_AFTER:?}"));
                        }
                        if !learning && remote && self.section.try_assign(&self.peer.name) {
                            proto::put_short(&mut self.buf, class::CONTROL, control::RESYNC_REQUEST);
                            learning = true;
                        }
                        let tx = self.peer.stats.last_tx.load(Relaxed);
                        if self.buf.is_empty() && now.saturating_sub(tx) >= HEARTBEAT.as_millis() as u64 {
                            proto::put_short(&mut self.buf, class::CONTROL, control::HEARTBEAT);
                            self.peer.stats.heartbeats_sent.fetch_add(1, Relaxed);
                        }
                    }
                }
                self.flush().await?;
            }
        }
        .await;
        r.unwrap_or_else(|e| e)
    }

    /// Appends an update of `e` (with the table's definition or a switch first when needed).
    fn push(&mut self, sh: &Shared, id: u32, e: &Entry, expire: Option<u32>, now: u64) {
        let Some(key) = table::key_bytes(sh.table.key_type(), e.key()) else {
            return;
        };
        if self.announced.insert(sh.id) {
            let name = sh.wire_name().as_bytes();
            proto::put_definition(&mut self.buf, &sh.layout.definition(sh.id, name));
            self.current = Some(sh.id);
        } else if self.current != Some(sh.id) {
            proto::put_switch(&mut self.buf, sh.id);
            self.current = Some(sh.id);
        }
        let incremental = id != 0
            && self
                .last_pushed
                .get(&sh.id)
                .is_some_and(|l| l.wrapping_add(1) == id);
        let values = sh.layout.values(e, now);
        proto::put_update(
            &mut self.buf,
            (!incremental).then_some(id),
            expire,
            sh.layout.key,
            &key,
            &values,
        );
        self.last_pushed.insert(sh.id, id);
        self.peer.stats.updates_sent.fetch_add(1, Relaxed);
    }

    /// Writes what is buffered, within [`WRITE_TIMEOUT`].
    async fn flush(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.wr.write_all(&self.buf)).await {
            Ok(Ok(())) => {
                self.buf.clear();
                self.peer
                    .stats
                    .last_tx
                    .store(self.section.now_ms(), Relaxed);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write failed: {e}")),
            Err(_) => Err(format!("a write made no progress for {WRITE_TIMEOUT:?}")),
        }
    }

    /// Pushes every entry changed here since the peer's last acknowledgement
    /// (after a reconnection, or after falling behind the live batches).
    async fn catch_up(&mut self) -> Result<(), String> {
        let mut any = false;
        for sh in self.section.tables().iter() {
            let acked = self.peer.acked(sh.id);
            let items = table::unacked(&sh.table, acked);
            let now = sh.table.now();
            for (id, e) in &items {
                any = true;
                self.push(sh, *id, e, None, now);
                if self.buf.len() >= FLUSH_AT {
                    self.flush().await?;
                }
            }
        }
        if any {
            self.peer.stats.catch_ups.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// Answers a resync request: every live entry (with its remaining
    /// lifetime when the peer speaks 2.1), then "finished" if this process
    /// considers its tables complete, "partial" otherwise. The number of entries pushed.
    async fn teach(&mut self) -> Result<usize, String> {
        let mut n = 0;
        for sh in self.section.tables().iter() {
            let now = sh.table.now();
            let timed = self.timed && sh.table.expire().is_some();
            for e in sh.table.entries(usize::MAX, |_| true) {
                let expire = timed
                    .then(|| e.expires_in(now))
                    .flatten()
                    .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX));
                self.push(sh, replica::update_id(&e), &e, expire, now);
                n += 1;
                if self.buf.len() >= FLUSH_AT {
                    self.flush().await?;
                    tokio::task::yield_now().await;
                }
            }
        }
        let k = if self.section.resync_finished() {
            control::RESYNC_FINISHED
        } else {
            control::RESYNC_PARTIAL
        };
        proto::put_short(&mut self.buf, class::CONTROL, k);
        Ok(n)
    }
}
