//! One table entry and its life cycle.
//!
//! An entry's `state` word holds its reference count (in-flight requests
//! tracking it, plus short-lived holds by the API) and a DEAD bit. The only
//! way to remove an entry from its table is [`RefState::try_kill`], a single
//! compare-and-swap from "alive with no reference" (0) to DEAD: so an entry
//! referenced by a request is never expired or evicted, "alive → expired"
//! is one atomic transition, and a reference taken after the kill fails and
//! retries on a fresh entry. Memory is freed by `Arc` once nothing (map,
//! expiry index, request) points at the entry any more.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use super::data::{self, DataRef, Slot};
use super::key::Key;
use super::table::Meta;

/// The atomic word operations [`RefState`] needs; implemented for std's
/// `AtomicU64` and, in tests, for loom's so the state machine can be model-checked.
pub trait Word {
    /// A new word holding `v`.
    fn new(v: u64) -> Self;
    /// Atomic load.
    fn load(&self, o: Ordering) -> u64;
    /// Atomic add, returning the previous value.
    fn fetch_add(&self, v: u64, o: Ordering) -> u64;
    /// Atomic subtract, returning the previous value.
    fn fetch_sub(&self, v: u64, o: Ordering) -> u64;
    /// Atomic compare-and-swap.
    fn compare_exchange(&self, cur: u64, new: u64, s: Ordering, f: Ordering) -> Result<u64, u64>;
}

impl Word for AtomicU64 {
    fn new(v: u64) -> Self {
        AtomicU64::new(v)
    }
    fn load(&self, o: Ordering) -> u64 {
        AtomicU64::load(self, o)
    }
    fn fetch_add(&self, v: u64, o: Ordering) -> u64 {
        AtomicU64::fetch_add(self, v, o)
    }
    fn fetch_sub(&self, v: u64, o: Ordering) -> u64 {
        AtomicU64::fetch_sub(self, v, o)
    }
    fn compare_exchange(&self, cur: u64, new: u64, s: Ordering, f: Ordering) -> Result<u64, u64> {
        AtomicU64::compare_exchange(self, cur, new, s, f)
    }
}

/// The DEAD bit of the state word; the low bits count references.
pub const DEAD: u64 = 1 << 63;

/// Reference count + DEAD bit of an entry.
#[derive(Debug)]
pub struct RefState<W: Word = AtomicU64>(W);

impl<W: Word> Default for RefState<W> {
    fn default() -> Self {
        RefState(W::new(0))
    }
}

impl<W: Word> RefState<W> {
    /// Takes a reference; false if the entry is already dead (the caller retries elsewhere).
    #[inline]
    pub fn acquire(&self) -> bool {
        let prev = self.0.fetch_add(1, Ordering::AcqRel);
        if prev & DEAD != 0 {
            // Dead entries are never revived; undo so the count stays meaningful.
            self.0.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Drops a reference; returns how many remain.
    #[inline]
    pub fn release(&self) -> u64 {
        (self.0.fetch_sub(1, Ordering::AcqRel) & !DEAD).saturating_sub(1)
    }

    /// Marks the entry dead if nobody references it: the one "alive → dead"
    /// transition. `Err(state)` if it is referenced or already dead.
    #[inline]
    pub fn try_kill(&self) -> Result<(), u64> {
        self.0
            .compare_exchange(0, DEAD, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| ())
    }

    /// Whether the entry has been killed.
    #[inline]
    pub fn is_dead(&self) -> bool {
        self.0.load(Ordering::Acquire) & DEAD != 0
    }

    /// Current reference count.
    #[inline]
    pub fn refs(&self) -> u64 {
        self.0.load(Ordering::Acquire) & !DEAD
    }
}

/// One stick-table entry: key, life-cycle state, expiry date and stored values.
pub struct Entry {
    pub(crate) meta: Arc<Meta>,
    pub(crate) key: Key,
    pub(crate) state: RefState,
    /// Tick at which the entry expires (for tables without `expire`: its last use, for LRU eviction).
    pub(crate) expire: AtomicU64,
    /// Tick of this entry's node in the expiry index (lets a delete find the node).
    pub(crate) queued: AtomicU64,
    pub(crate) words: Box<[AtomicU64]>,
    /// Set when a local change awaits its push to the peers (replicated
    /// tables only; see [`super::replica`]).
    pub(crate) dirty: AtomicBool,
    /// The update id of the entry's last push to the peers (0: never pushed from here).
    pub(crate) upd: AtomicU32,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("table", &self.meta.name)
            .field("key", &self.key)
            .field("refs", &self.state.refs())
            .finish_non_exhaustive()
    }
}

impl Entry {
    pub(crate) fn new(meta: Arc<Meta>, key: Key, expire: u64) -> Entry {
        let words = (0..meta.schema.words())
            .map(|_| AtomicU64::new(0))
            .collect();
        Entry {
            meta,
            key,
            state: RefState::default(),
            expire: AtomicU64::new(expire),
            queued: AtomicU64::new(expire),
            words,
            dirty: AtomicBool::new(false),
            upd: AtomicU32::new(0),
        }
    }

    /// The entry's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The key as text, as `show table` prints it.
    pub fn key_text(&self) -> String {
        self.meta.key_type.format(self.key.as_ref())
    }

    /// The raw value words (read and written by the peers codec).
    pub(crate) fn words(&self) -> &[AtomicU64] {
        &self.words
    }

    /// Whether the entry has left its table (expired, evicted or deleted).
    pub fn is_dead(&self) -> bool {
        self.state.is_dead()
    }

    /// In-flight references (requests tracking this entry).
    pub fn refs(&self) -> u64 {
        self.state.refs()
    }

    /// Milliseconds until expiry at `now` (`None` if the table has no `expire`).
    pub fn expires_in(&self, now: u64) -> Option<u64> {
        self.meta
            .expire
            .map(|_| self.expire.load(Ordering::Relaxed).saturating_sub(now))
    }

    /// Where `r` is stored in this entry's table.
    #[inline]
    pub fn slot(&self, r: DataRef) -> Option<Slot> {
        self.meta.schema.slot(r)
    }

    /// The value of `r` at tick `now`; `None` if the table does not store it.
    #[inline]
    pub fn get(&self, r: DataRef, now: u64) -> Option<u64> {
        self.slot(r).map(|s| data::read(&self.words, s, now))
    }

    /// Adds `n` to `r` (a no-op if not stored).
    #[inline]
    pub fn add(&self, r: DataRef, now: u64, n: u64) {
        if let Some(s) = self.slot(r) {
            data::add(&self.words, s, now, n);
        }
    }

    /// Sets `r` to `v` (a no-op if not stored).
    pub fn set(&self, r: DataRef, now: u64, v: u64) {
        if let Some(s) = self.slot(r) {
            data::set(&self.words, s, now, v);
        }
    }

    /// Sets `r` to `v`, returning the previous value.
    pub fn swap(&self, r: DataRef, now: u64, v: u64) -> Option<u64> {
        self.slot(r).map(|s| data::swap(&self.words, s, now, v))
    }

    /// Subtracts `n` from counter `r`, stopping at 0.
    pub fn sub(&self, r: DataRef, n: u64) {
        if let Some(s) = self.slot(r) {
            data::sub(&self.words, s, n);
        }
    }

    /// Increments general-purpose counter `idx` and its rate (HAProxy's `sc-inc-gpc`); the new value.
    pub fn inc_gpc(&self, idx: u8, now: u64) -> Option<u64> {
        use super::data::DataKind;
        let c = DataRef {
            kind: DataKind::Gpc,
            idx,
        };
        let r = DataRef {
            kind: DataKind::GpcRate,
            idx,
        };
        self.add(r, now, 1);
        self.add(c, now, 1);
        self.get(c, now).or_else(|| self.get(r, now))
    }

    /// Every stored value at tick `now`, in display order.
    pub fn snapshot(&self, now: u64) -> Vec<(DataRef, Slot, u64)> {
        self.meta
            .schema
            .stored()
            .into_iter()
            .map(|(r, s)| (r, s, data::read(&self.words, s, now)))
            .collect()
    }

    /// Pushes the expiry date to `now + expire` (or records the use, without `expire`).
    #[inline]
    pub(crate) fn touch(&self, now: u64) {
        let exp = now.saturating_add(self.meta.expire.unwrap_or(0));
        self.expire.store(exp, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_machine_basics() {
        let s: RefState = RefState::default();
        assert!(s.acquire());
        assert!(s.acquire());
        assert_eq!(s.refs(), 2);
        assert_eq!(s.try_kill(), Err(2));
        assert_eq!(s.release(), 1);
        assert_eq!(s.release(), 0);
        assert_eq!(s.try_kill(), Ok(()));
        assert!(s.is_dead());
        assert_eq!(s.try_kill(), Err(DEAD), "killed exactly once");
        assert!(!s.acquire(), "a dead entry cannot be referenced");
        assert_eq!(s.refs(), 0);
    }

    /// Many threads reference and release while one tries to kill: the kill
    /// only ever succeeds when no reference is held, and no reference is
    /// granted after it.
    #[test]
    fn kill_never_overlaps_a_reference() {
        use std::sync::atomic::AtomicBool;
        for _ in 0..200 {
            let s = Arc::new(RefState::<AtomicU64>::default());
            let held = Arc::new(AtomicU64::new(0));
            let dead = Arc::new(AtomicBool::new(false));
            let users: Vec<_> = (0..3)
                .map(|_| {
                    let (s, held, dead) = (s.clone(), held.clone(), dead.clone());
                    std::thread::spawn(move || {
                        for _ in 0..200 {
                            if s.acquire() {
                                held.fetch_add(1, Ordering::SeqCst);
                                assert!(!dead.load(Ordering::SeqCst), "referenced a dead entry");
                                held.fetch_sub(1, Ordering::SeqCst);
                                s.release();
                            }
                        }
                    })
                })
                .collect();
            let killer = {
                let (s, held, dead) = (s.clone(), held.clone(), dead.clone());
                std::thread::spawn(move || {
                    loop {
                        if s.try_kill().is_ok() {
                            dead.store(true, Ordering::SeqCst);
                            assert_eq!(held.load(Ordering::SeqCst), 0, "killed while referenced");
                            return;
                        }
                        std::hint::spin_loop();
                    }
                })
            };
            for u in users {
                u.join().expect("user");
            }
            killer.join().expect("killer");
            assert!(s.is_dead());
        }
    }
}

/// Exhaustive model checks (loom) of the entry state machine.
#[cfg(test)]
mod loom_tests {
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool, AtomicU64 as LoomU64, Ordering as O};

    use super::{RefState, Word};

    impl Word for LoomU64 {
        fn new(v: u64) -> Self {
            LoomU64::new(v)
        }
        fn load(&self, o: O) -> u64 {
            LoomU64::load(self, o)
        }
        fn fetch_add(&self, v: u64, o: O) -> u64 {
            LoomU64::fetch_add(self, v, o)
        }
        fn fetch_sub(&self, v: u64, o: O) -> u64 {
            LoomU64::fetch_sub(self, v, o)
        }
        fn compare_exchange(&self, c: u64, n: u64, s: O, f: O) -> Result<u64, u64> {
            LoomU64::compare_exchange(self, c, n, s, f)
        }
    }

    /// Every interleaving of two users (acquire, use, release) and one killer:
    /// the kill succeeds only with no reference held, never twice, and no
    /// acquire succeeds after it.
    #[test]
    fn loom_acquire_release_kill() {
        loom::model(|| {
            let s = Arc::new(RefState::<LoomU64>::default());
            let held = Arc::new(LoomU64::new(0));
            let dead = Arc::new(AtomicBool::new(false));
            let users: Vec<_> = (0..2)
                .map(|_| {
                    let (s, held, dead) = (s.clone(), held.clone(), dead.clone());
                    loom::thread::spawn(move || {
                        if s.acquire() {
                            held.fetch_add(1, O::SeqCst);
                            assert!(!dead.load(O::SeqCst));
                            held.fetch_sub(1, O::SeqCst);
                            s.release();
                        }
                    })
                })
                .collect();
            let killed = if s.try_kill().is_ok() {
                dead.store(true, O::SeqCst);
                assert_eq!(held.load(O::SeqCst), 0);
                true
            } else {
                false
            };
            for u in users {
                u.join().expect("user");
            }
            if killed {
                assert!(s.try_kill().is_err(), "killed twice");
                assert!(!s.acquire());
            } else {
                // Nobody holds a reference any more: the kill now succeeds, once.
                assert_eq!(s.refs(), 0);
                assert!(s.try_kill().is_ok());
                assert!(s.try_kill().is_err());
            }
        });
    }

    /// Two concurrent kills of an unreferenced entry: exactly one wins.
    #[test]
    fn loom_single_kill() {
        loom::model(|| {
            let s = Arc::new(RefState::<LoomU64>::default());
            let wins = Arc::new(LoomU64::new(0));
            let t: Vec<_> = (0..2)
                .map(|_| {
                    let (s, wins) = (s.clone(), wins.clone());
                    loom::thread::spawn(move || {
                        if s.try_kill().is_ok() {
                            wins.fetch_add(1, O::SeqCst);
                        }
                    })
                })
                .collect();
            for h in t {
                h.join().expect("thread");
            }
            assert_eq!(wins.load(O::SeqCst), 1);
        });
    }
}
