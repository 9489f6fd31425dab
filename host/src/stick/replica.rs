//! The request path's side of replication: a replicated table's entries
//! are queued for the peers when they change, without a lock.
//!
//! A change (tracking, a request's end, a `gpc`/`gpt` action, an API write)
//! calls [`changed`]: if the entry is not already waiting (its `dirty` flag),
//! it sets the flag and queues an `Arc` of the entry on the table's bounded
//! [`Outbox`] (`try_send`: never waits). The peers task (`crate::peers`)
//! drains the outbox, clears each flag *before* reading the values it sends
//! (so a change made meanwhile queues the entry again and is never lost),
//! and gives each push an update id. When the queue is full the entry stays
//! flagged but unqueued and the outbox records an overflow: the peers task
//! then walks the table for flagged entries. Memory is bounded by the queue
//! size; the queue holds `Arc`s, so an entry that expires meanwhile is freed
//! once the peers task drops it (it skips dead entries).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::entry::Entry;

/// Entries a table's outbox holds before it overflows to a table walk.
pub const QUEUE: usize = 16_384;

/// How long the peers pump rests after each batch before it takes the next.
/// While it rests, changes are queued without waking it (a wake-up from a
/// worker thread is a system call when the control thread sleeps: that was
/// most of a replicated table's request-path cost), and an entry changed
/// many times meanwhile stays flagged, so it costs its requests one load and
/// is pushed once. When idle, the pump waits on the queue: the first change
/// is pushed at once. So pushes lag changes by at most this under load.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(1);

/// A replicated table's queue of changed entries.
#[derive(Debug)]
pub struct Outbox {
    /// The `[[peers]]` section the table is replicated with.
    pub section: Arc<str>,
    /// The table's name on the wire (its `peers_name`, by default its name).
    pub wire_name: Arc<str>,
    tx: mpsc::Sender<Arc<Entry>>,
    rx: Mutex<Option<mpsc::Receiver<Arc<Entry>>>>,
    overflow: AtomicBool,
    /// Times the queue was full (each costs the peers task one table walk).
    pub overflows: AtomicU64,
    /// The last update id given (the peers task is the only writer).
    last_id: AtomicU32,
}

impl Outbox {
    /// An empty outbox for a table replicated with `section` under the wire name `wire_name`.
    pub fn new(section: Arc<str>, wire_name: Arc<str>) -> Outbox {
        let (tx, rx) = mpsc::channel(QUEUE);
        Outbox {
            section,
            wire_name,
            tx,
            rx: Mutex::new(Some(rx)),
            overflow: AtomicBool::new(false),
            overflows: AtomicU64::new(0),
            last_id: AtomicU32::new(0),
        }
    }

    /// The receiving end, for the one task that pushes this table (`None` once taken).
    pub fn take_receiver(&self) -> Option<mpsc::Receiver<Arc<Entry>>> {
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Gives a receiver back (its task stopped; the next one takes it again).
    pub fn give_back(&self, rx: mpsc::Receiver<Arc<Entry>>) {
        *self
            .rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(rx);
    }

    /// Whether the queue overflowed since the last call (clears the mark).
    pub fn take_overflow(&self) -> bool {
        self.overflow.swap(false, Ordering::AcqRel)
    }

    /// The next update id (HAProxy's `localupdate`: 32 bits, wrapping, never 0).
    pub fn next_id(&self) -> u32 {
        let mut id = self.last_id.load(Ordering::Relaxed).wrapping_add(1);
        if id == 0 {
            id = 1;
        }
        self.last_id.store(id, Ordering::Relaxed);
        id
    }

    /// The last update id given.
    pub fn last_id(&self) -> u32 {
        self.last_id.load(Ordering::Relaxed)
    }
}

/// Marks `e` as changed locally: queued for the peers unless it already
/// waits. A no-op (one branch) for a table that is not replicated.
#[inline]
pub fn changed(e: &Arc<Entry>) {
    let Some(o) = &e.meta.outbox else {
        return;
    };
    if e.dirty.load(Ordering::Relaxed) || e.dirty.swap(true, Ordering::AcqRel) {
        return;
    }
    if o.tx.try_send(Arc::clone(e)).is_err() {
        // Full: the entry stays flagged; the peers task walks the table.
        o.overflows.fetch_add(1, Ordering::Relaxed);
        o.overflow.store(true, Ordering::Release);
    }
}

/// Takes an entry's "changed" mark before its values are read for a push;
/// false if it was not marked.
pub fn take_dirty(e: &Entry) -> bool {
    e.dirty.swap(false, Ordering::AcqRel)
}

/// Whether `e` has an unpushed local change.
pub fn is_dirty(e: &Entry) -> bool {
    e.dirty.load(Ordering::Acquire)
}

/// Records the update id `e` was last pushed with.
pub fn set_update_id(e: &Entry, id: u32) {
    e.upd.store(id, Ordering::Relaxed);
}

/// The update id `e` was last pushed with (0: never).
pub fn update_id(e: &Entry) -> u32 {
    e.upd.load(Ordering::Relaxed)
}
