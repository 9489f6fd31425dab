//! One stick table: the key map, the expiry index, eviction and tracking.
//!
//! - `map` (`scc::HashIndex`): key → entry. Lookups are lock-free reads;
//!   an insert locks one bucket only.
//! - `index` (`scc::TreeIndex`): (tick, entry address) → entry, ordered by
//!   expiry date (for tables without `expire`: by last use). Touching an
//!   entry only stores its new date; its node moves lazily, when it reaches
//!   the front (HAProxy's scheme), so the request path never reorders the
//!   index. The front is where the expiry task reaps and where a full table
//!   evicts, a bounded number of nodes per insert.
//! - `used`: reserved before an insert, released when an entry leaves the
//!   map, so it is exact and never exceeds `size`.
//!
//! Whoever removes a node from the index owns that node's entry until it
//! requeues or kills it; whoever removes an entry from the map decrements
//! `used`. Both removals succeed for one caller only, so nothing is counted
//! or freed twice, and memory is freed by `Arc` when the last holder drops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use scc::hash_index::Entry as MapEntry;
use scc::{Guard, HashIndex, TreeIndex};
use tokio::sync::Notify;

use super::clock::Clock;
use super::data::{DataKind, DataRef, Schema};
use super::entry::{DEAD, Entry, Word};
use super::key::{Key, KeyRef, KeyType};
use crate::rules::fetch::Value;

/// How many index nodes one insert into a full table may examine.
pub const EVICT_STEPS: usize = 16;
/// A referenced entry found due is looked at again after at least this long.
pub const RECHECK_MS: u64 = 1_000;

/// What every entry of a table shares (immutable after load).
#[derive(Debug)]
pub struct Meta {
    pub name: Arc<str>,
    pub key_type: KeyType,
    pub schema: Schema,
    /// Entry lifetime after its last use, in ms; `None`: entries never expire.
    pub expire: Option<u64>,
    pub clock: Clock,
    /// Where local changes go to be pushed to the peers (`peers = "..."`).
    pub outbox: Option<Arc<super::replica::Outbox>>,
}

/// A table's settings, as validated from the config.
#[derive(Debug, Clone)]
pub struct TableConfig {
    pub name: String,
    pub key_type: KeyType,
    /// Maximum number of entries.
    pub size: u64,
    /// Entry lifetime after last use in ms.
    pub expire: Option<u64>,
    /// Refuse new keys when full instead of evicting.
    pub nopurge: bool,
    pub schema: Schema,
    /// The `[[peers]]` section the table is replicated with, if any.
    pub peers: Option<String>,
    /// Its name on the peers wire, if not `name` (`peers_name`).
    pub peers_name: Option<String>,
}

/// Event counters of a table (for metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub refusals: AtomicU64,
}

/// The expiry task's bookkeeping.
#[derive(Debug, Default)]
pub struct ExpiryState {
    /// Set by the task before it waits with nothing to do; an insert that
    /// finds it set wakes the task.
    pub(crate) idle: AtomicBool,
    pub(crate) notify: Notify,
    /// Times the task woke up (after a sleep or an idle wait).
    pub wakeups: AtomicU64,
}

/// Why a key could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table is full and `nopurge` is set, or nothing could be evicted in bounded work.
    Full,
}

/// Why an entry could not be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteError {
    NotFound,
    /// In-flight requests reference it (count given), as HAProxy's "entry currently in use".
    InUse(u64),
}

/// What one look at the front of the index did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Empty,
    NotDue(u64),
    /// Another thread took the node.
    Lost,
    /// The node's entry was already dead.
    Stale,
    Requeued,
    Freed,
}

/// Result of one expiry pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireStep {
    /// Nothing queued: sleep until an insert.
    Idle,
    /// The earliest queued date (always later than the `now` given).
    Next(u64),
    /// The work budget ran out; call again (after yielding).
    Budget,
}

/// A stick table.
pub struct StickTable {
    pub(crate) meta: Arc<Meta>,
    size: u64,
    nopurge: bool,
    map: HashIndex<Key, Arc<Entry>>,
    index: TreeIndex<(u64, usize), Arc<Entry>>,
    used: AtomicU64,
    pub counters: Counters,
    pub expiry: ExpiryState,
}

impl std::fmt::Debug for StickTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickTable")
            .field("name", &self.meta.name)
            .field("type", &self.meta.key_type)
            .field("size", &self.size)
            .field("used", &self.used())
            .finish_non_exhaustive()
    }
}

/// Takes one of `size` slots in `used`; false if all are taken.
pub fn try_reserve<W: Word>(used: &W, size: u64) -> bool {
    let mut cur = used.load(Ordering::Relaxed);
    loop {
        if cur >= size {
            return false;
        }
        match used.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(actual) => cur = actual,
        }
    }
}

const fn d(kind: DataKind) -> DataRef {
    DataRef::scalar(kind)
}

impl StickTable {
    /// An empty table.
    /// Whether `other` is declared exactly as this table (key type, stored
    /// data, size, expiry, nopurge): a reload then keeps this table and its entries.
    pub fn same_definition(&self, other: &StickTable) -> bool {
        self.meta.key_type == other.meta.key_type
            && self.meta.schema == other.meta.schema
            && self.meta.expire == other.meta.expire
            && self.size == other.size
            && self.nopurge == other.nopurge
            && self.peers() == other.peers()
            && self.outbox().map(|o| &o.wire_name) == other.outbox().map(|o| &o.wire_name)
    }

    /// The `[[peers]]` section this table is replicated with.
    pub fn peers(&self) -> Option<&str> {
        self.meta.outbox.as_ref().map(|o| &*o.section)
    }

    /// The replication outbox (replicated tables only).
    pub fn outbox(&self) -> Option<&Arc<super::replica::Outbox>> {
        self.meta.outbox.as_ref()
    }

    pub fn new(cfg: TableConfig, clock: Clock) -> StickTable {
        StickTable {
            meta: Arc::new(Meta {
                name: Arc::from(cfg.name.as_str()),
                key_type: cfg.key_type,
                schema: cfg.schema,
                expire: cfg.expire,
                clock,
                outbox: cfg.peers.map(|p| {
                    let wire = cfg.peers_name.as_deref().unwrap_or(&cfg.name);
                    Arc::new(super::replica::Outbox::new(
                        Arc::from(p.as_str()),
                        Arc::from(wire),
                    ))
                }),
            }),
            size: cfg.size,
            nopurge: cfg.nopurge,
            map: HashIndex::new(),
            index: TreeIndex::new(),
            used: AtomicU64::new(0),
            counters: Counters::default(),
            expiry: ExpiryState::default(),
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.meta.name
    }

    /// The key type.
    pub fn key_type(&self) -> KeyType {
        self.meta.key_type
    }

    /// What entries store.
    pub fn schema(&self) -> &Schema {
        &self.meta.schema
    }

    /// Maximum number of entries.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Entries in use (exact once concurrent inserts have finished).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Entry lifetime after last use, in ms.
    pub fn expire(&self) -> Option<u64> {
        self.meta.expire
    }

    /// Whether a full table refuses new keys instead of evicting.
    pub fn nopurge(&self) -> bool {
        self.nopurge
    }

    /// The table's clock.
    pub fn clock(&self) -> &Clock {
        &self.meta.clock
    }

    /// The current tick.
    #[inline]
    pub fn now(&self) -> u64 {
        self.meta.clock.now_ms()
    }

    /// Whether `entry` belongs to this table.
    pub fn owns(&self, entry: &Entry) -> bool {
        Arc::ptr_eq(&entry.meta, &self.meta)
    }

    /// A key of this table built from a sample (`None` if it does not convert).
    pub fn key_of<'v>(&self, v: &'v Value<'_>) -> Option<KeyRef<'v>> {
        self.meta.key_type.key_from_value(v)
    }

    /// The live entry for `key`, if any.
    pub fn lookup(&self, key: &KeyRef<'_>) -> Option<Arc<Entry>> {
        self.map
            .peek_with(key, |_, e| (!e.state.is_dead()).then(|| Arc::clone(e)))
            .flatten()
    }

    /// Runs `f` on the live entry for `key` without taking a reference (lock-free).
    #[inline]
    pub fn with_entry<R>(&self, key: &KeyRef<'_>, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.map
            .peek_with(key, |_, e| (!e.state.is_dead()).then(|| f(e)))
            .flatten()
    }

    /// The entry for `key`, created if absent (evicting or refusing when full).
    pub fn get_or_create(&self, key: &KeyRef<'_>) -> Result<Arc<Entry>, Refused> {
        self.get_or_create_at(key, None)
    }

    /// [`get_or_create`](Self::get_or_create) with the caller's tick, if it
    /// has one: the clock is read at most once per request (`None`: read
    /// only when a new entry needs a date).
    fn get_or_create_at(&self, key: &KeyRef<'_>, now: Option<u64>) -> Result<Arc<Entry>, Refused> {
        // Bounded: each retry means a concurrent kill of this very key.
        for _ in 0..4 {
            if let Some(e) = self.map.peek_with(key, |_, e| Arc::clone(e)) {
                if !e.state.is_dead() {
                    return Ok(e);
                }
                self.unlink(&e);
                continue;
            }
            let now = now.unwrap_or_else(|| self.now());
            if !self.reserve(now) {
                self.counters.refusals.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Full);
            }
            let fresh = Arc::new(Entry::new(
                Arc::clone(&self.meta),
                key.to_owned_key(),
                self.date(now),
            ));
            let existing = match self.map.entry_sync(key.to_owned_key()) {
                MapEntry::Vacant(v) => {
                    v.insert_entry(Arc::clone(&fresh));
                    None
                }
                MapEntry::Occupied(o) => Some(Arc::clone(o.get())),
            };
            match existing {
                None => {
                    self.counters.inserts.fetch_add(1, Ordering::Relaxed);
                    self.enqueue(&fresh, self.date(now));
                    return Ok(fresh);
                }
                Some(e) => {
                    // Another thread inserted it first: give our slot back, use theirs.
                    self.used.fetch_sub(1, Ordering::AcqRel);
                    if !e.state.is_dead() {
                        return Ok(e);
                    }
                    self.unlink(&e);
                }
            }
        }
        self.counters.refusals.fetch_add(1, Ordering::Relaxed);
        Err(Refused::Full)
    }

    /// Applies a peer's update of `key` (HAProxy's `stktable_touch_remote`):
    /// finds or creates the entry (a full table evicts or refuses as for any
    /// insert), lets `write` store the pushed values at tick `now`, and sets
    /// the expiry date to `expire_ms` from now (the table's own `expire` when
    /// the update has none). The entry is not marked as changed locally, so
    /// it is not pushed back. False if the table refused the key.
    pub fn apply_remote(
        &self,
        key: &KeyRef<'_>,
        expire_ms: Option<u64>,
        write: impl Fn(&Entry, u64),
    ) -> bool {
        let now = self.now();
        // Bounded: each retry means the entry was killed while being written.
        for _ in 0..4 {
            let Ok(e) = self.get_or_create_at(key, Some(now)) else {
                return false;
            };
            write(&e, now);
            match self.meta.expire {
                Some(exp) => e.expire.store(
                    now.saturating_add(expire_ms.unwrap_or(exp)),
                    Ordering::Relaxed,
                ),
                None => e.touch(now),
            }
            if !e.state.is_dead() {
                return true;
            }
            self.unlink(&e);
        }
        false
    }

    /// Tracks `key` for one request: takes a reference (the entry cannot
    /// leave the table until it is dropped), touches the entry and counts the
    /// request (`http_req_*`, `conn_*`, `sess_*`, `conn_cur` + 1).
    /// `None` if the key could not be stored (the request goes on untracked).
    pub fn track(&self, key: &KeyRef<'_>) -> Option<Tracked> {
        // The request phase's one clock read: the insert, the counters and
        // the request's later reads in this phase all use it.
        let now = self.now();
        for _ in 0..4 {
            let e = self.get_or_create_at(key, Some(now)).ok()?;
            if e.state.acquire() {
                e.touch(now);
                for k in [
                    DataKind::HttpReqCnt,
                    DataKind::HttpReqRate,
                    DataKind::ConnCur,
                    DataKind::ConnCnt,
                    DataKind::ConnRate,
                    DataKind::SessCnt,
                    DataKind::SessRate,
                ] {
                    e.add(d(k), now, 1);
                }
                super::replica::changed(&e);
                return Some(Tracked {
                    entry: e,
                    tick: AtomicU64::new(stamp(TickPhase::Request, now)),
                });
            }
            // Killed between lookup and reference: drop it and try again.
            self.unlink(&e);
        }
        None
    }

    /// Entry date for an entry used at `now`.
    fn date(&self, now: u64) -> u64 {
        now.saturating_add(self.meta.expire.unwrap_or(0))
    }

    fn reserve(&self, now: u64) -> bool {
        for _ in 0..2 {
            if try_reserve(&self.used, self.size) {
                return true;
            }
            if self.nopurge || !self.evict_one(now) {
                return false;
            }
        }
        false
    }

    /// Frees one entry from the front of the index in at most [`EVICT_STEPS`] steps.
    fn evict_one(&self, now: u64) -> bool {
        for _ in 0..EVICT_STEPS {
            match self.handle_front(now, true) {
                Step::Freed => return true,
                Step::Empty => return false,
                _ => {}
            }
        }
        false
    }

    /// Removes `e` from the map if it is still there; true if this call did it.
    fn unlink(&self, e: &Arc<Entry>) -> bool {
        if self.map.remove_if_sync(&e.key, |v| Arc::ptr_eq(v, e)) {
            self.used.fetch_sub(1, Ordering::AcqRel);
            true
        } else {
            false
        }
    }

    /// Queues `e` in the index at `tick`.
    fn enqueue(&self, e: &Arc<Entry>, tick: u64) {
        e.queued.store(tick, Ordering::Relaxed);
        let id = Arc::as_ptr(e) as usize;
        // The entry has one node at a time (the caller removed the old one or
        // just created the entry), so the key is free.
        let _ = self.index.insert_sync((tick, id), Arc::clone(e));
        // Pairs with the fence in the expiry task: either it sees this node,
        // or this load sees it idle and wakes it.
        fence(Ordering::SeqCst);
        if self.expiry.idle.load(Ordering::Relaxed)
            && self.expiry.idle.swap(false, Ordering::SeqCst)
        {
            self.expiry.notify.notify_one();
        }
    }

    /// Whether the expiry index is empty.
    pub(crate) fn index_is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Examines the node at the front of the index: reaps (`evict`: also
    /// evicts) its entry, or moves it to its real date.
    fn handle_front(&self, now: u64, evict: bool) -> Step {
        let front = {
            let guard = Guard::new();
            self.index
                .iter(&guard)
                .next()
                .map(|(k, v)| (*k, Arc::clone(v)))
        };
        let Some(((tick, id), e)) = front else {
            return Step::Empty;
        };
        if !evict && tick > now {
            return Step::NotDue(tick);
        }
        if !self.index.remove_sync(&(tick, id)) {
            return Step::Lost;
        }
        if e.state.is_dead() {
            return Step::Stale;
        }
        let date = e.expire.load(Ordering::Relaxed);
        let expired = self.meta.expire.is_some() && date <= now;
        if !expired && (!evict || date > tick) {
            // Used since it was queued: move it to its real date (> now when expiring).
            self.enqueue(&e, date);
            return Step::Requeued;
        }
        match e.state.try_kill() {
            Ok(()) => {
                self.unlink(&e);
                let c = if expired {
                    &self.counters.expirations
                } else {
                    &self.counters.evictions
                };
                c.fetch_add(1, Ordering::Relaxed);
                Step::Freed
            }
            Err(s) if s & DEAD != 0 => Step::Stale,
            Err(_) => {
                // In use: never removed while referenced. Releasing touches it,
                // so by the next look its date is the real one.
                let later = now.saturating_add(self.meta.expire.unwrap_or(0).max(RECHECK_MS));
                self.enqueue(&e, later);
                Step::Requeued
            }
        }
    }

    /// Reaps entries due at `now`, examining at most `budget` nodes.
    pub fn expire_step(&self, now: u64, budget: usize) -> ExpireStep {
        if self.meta.expire.is_none() {
            return ExpireStep::Idle;
        }
        for _ in 0..budget {
            match self.handle_front(now, false) {
                Step::Empty => return ExpireStep::Idle,
                Step::NotDue(t) => return ExpireStep::Next(t),
                _ => {}
            }
        }
        ExpireStep::Budget
    }

    /// Deletes the entry for `key` unless a request references it.
    pub fn delete(&self, key: &KeyRef<'_>) -> Result<(), DeleteError> {
        let e = self.lookup(key).ok_or(DeleteError::NotFound)?;
        self.kill(&e)
    }

    fn kill(&self, e: &Arc<Entry>) -> Result<(), DeleteError> {
        match e.state.try_kill() {
            Ok(()) => {
                self.unlink(e);
                let node = (e.queued.load(Ordering::Relaxed), Arc::as_ptr(e) as usize);
                // Best effort: a node being moved right now is dropped when it reaches the front.
                self.index.remove_sync(&node);
                Ok(())
            }
            Err(s) if s & DEAD != 0 => Err(DeleteError::NotFound),
            Err(s) => Err(DeleteError::InUse(s)),
        }
    }

    /// Deletes every entry `matches` accepts that no request references;
    /// returns (deleted, skipped because in use).
    pub fn clear(&self, matches: impl Fn(&Entry) -> bool) -> (u64, u64) {
        let (mut removed, mut in_use) = (0, 0);
        for e in self.entries(usize::MAX, matches) {
            match self.kill(&e) {
                Ok(()) => removed += 1,
                Err(DeleteError::InUse(_)) => in_use += 1,
                Err(DeleteError::NotFound) => {}
            }
        }
        (removed, in_use)
    }

    /// Up to `limit` live entries that `matches` accepts (map order).
    pub fn entries(&self, limit: usize, matches: impl Fn(&Entry) -> bool) -> Vec<Arc<Entry>> {
        let guard = Guard::new();
        self.map
            .iter(&guard)
            .map(|(_, e)| e)
            .filter(|e| !e.state.is_dead() && matches(e))
            .take(limit)
            .map(Arc::clone)
            .collect()
    }
}

/// The phases of a tracked request, each with its own tick: the clock is
/// read at most once per phase (like HAProxy's `now_ms`, updated once per
/// event-loop turn), not at every counter update or fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TickPhase {
    /// `http_request` rules (the tick is read when tracking starts).
    Request = 0,
    /// `http_response` rules.
    Response = 1,
    /// The exchange is over: outcome and release.
    End = 2,
}

impl From<crate::txn::Phase> for TickPhase {
    fn from(p: crate::txn::Phase) -> TickPhase {
        match p {
            crate::txn::Phase::Request => TickPhase::Request,
            crate::txn::Phase::Response => TickPhase::Response,
        }
    }
}

/// `Tracked::tick` keeps the phase in its top 2 bits and the tick below.
const PHASE_SHIFT: u32 = 62;
const TICK_MASK: u64 = (1 << PHASE_SHIFT) - 1;

/// One word holding `phase` and `now` (ticks are ms since process start, far below 2^62).
fn stamp(phase: TickPhase, now: u64) -> u64 {
    ((phase as u64) << PHASE_SHIFT) | now.min(TICK_MASK)
}

/// A request's reference to a tracked entry (HAProxy's stick counter).
///
/// While it lives, the entry stays in its table; dropping it decrements
/// `conn_cur`, pushes the expiry date to now + `expire` and releases the
/// reference.
pub struct Tracked {
    entry: Arc<Entry>,
    /// The latest phase's tick (see [`TickPhase`]). Atomic only because the
    /// request's fetches see the counter through `&`; one task uses it, so
    /// `Relaxed` suffices.
    tick: AtomicU64,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Tracked").field(&self.entry).finish()
    }
}

impl Tracked {
    /// The tracked entry.
    #[inline]
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The tick of the request's latest phase, without reading the clock.
    #[inline]
    pub fn now(&self) -> u64 {
        self.tick.load(Ordering::Relaxed) & TICK_MASK
    }

    /// The tick of `phase`: the clock is read on the first call in a phase
    /// later than the latest one, then reused for the rest of that phase.
    /// An earlier phase gets the latest tick (time never goes back).
    #[inline]
    pub fn now_in(&self, phase: TickPhase) -> u64 {
        let cur = self.tick.load(Ordering::Relaxed);
        if cur >> PHASE_SHIFT >= phase as u64 {
            return cur & TICK_MASK;
        }
        let now = self.entry.meta.clock.now_ms().min(TICK_MASK);
        self.tick.store(stamp(phase, now), Ordering::Relaxed);
        now
    }

    /// Tells the peers the entry changed (after a rule or fetch wrote to it
    /// through [`Tracked::entry`]); nothing for a table that is not replicated.
    #[inline]
    pub fn changed(&self) {
        super::replica::changed(&self.entry);
    }

    /// Records how the exchange ended: `http_err_*` on 4xx, `http_fail_*` on
    /// 5xx other than 501 and 505 (HAProxy's definition), `bytes_*`.
    pub fn record_outcome(&self, status: u16, bytes_in: u64, bytes_out: u64) {
        let e = &self.entry;
        let now = self.now_in(TickPhase::End);
        if (400..=499).contains(&status) {
            e.add(d(DataKind::HttpErrCnt), now, 1);
            e.add(d(DataKind::HttpErrRate), now, 1);
        }
        if (500..=599).contains(&status) && status != 501 && status != 505 {
            e.add(d(DataKind::HttpFailCnt), now, 1);
            e.add(d(DataKind::HttpFailRate), now, 1);
        }
        for (k, n) in [
            (DataKind::BytesInCnt, bytes_in),
            (DataKind::BytesInRate, bytes_in),
            (DataKind::BytesOutCnt, bytes_out),
            (DataKind::BytesOutRate, bytes_out),
        ] {
            if n > 0 {
                e.add(d(k), now, n);
            }
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // The outcome's tick when it was just recorded (the usual case: the
        // Txn is dropped right after logging); otherwise a fresh read, so the
        // expiry date is counted from the real release time.
        let now = self.now_in(TickPhase::End);
        self.entry.sub(d(DataKind::ConnCur), 1);
        self.entry.touch(now);
        self.entry.state.release();
        super::replica::changed(&self.entry);
    }
}
