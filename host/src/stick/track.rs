//! The stick counters of one request (HAProxy's `sc0`..`sc2`).
//!
//! A `track_scN` rule stores a [`Tracked`] reference here; it lives as long
//! as the request's [`Txn`](crate::txn::Txn), so the entry cannot be evicted
//! or expire while the request runs, and dropping the `Txn` releases it.

use super::table::Tracked;
use crate::txn::Outcome;

/// Number of stick counters a request has (`sc0`, `sc1`, `sc2`).
pub const COUNTERS: usize = 3;

/// A request's tracked entries, by counter number.
#[derive(Debug, Default)]
pub struct StickCounters {
    slots: [Option<Tracked>; COUNTERS],
}

impl StickCounters {
    /// The entry tracked by counter `n`, if any.
    #[inline]
    pub fn get(&self, n: usize) -> Option<&Tracked> {
        self.slots.get(n).and_then(Option::as_ref)
    }

    /// Whether counter `n` already tracks an entry (a second `track_scN` is ignored, as in HAProxy).
    #[inline]
    pub fn is_tracked(&self, n: usize) -> bool {
        self.get(n).is_some()
    }

    /// Stores `t` in counter `n` unless it is taken (then `t` is dropped, releasing it).
    pub fn set(&mut self, n: usize, t: Tracked) {
        if let Some(slot @ None) = self.slots.get_mut(n) {
            *slot = Some(t);
        }
    }

    /// Whether no counter is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Records how the exchange ended in every tracked entry (per counter, as
    /// HAProxy does: two counters on one entry count twice).
    pub fn record_outcome(&self, o: &Outcome) {
        for t in self.slots.iter().flatten() {
            t.record_outcome(o.status, o.bytes_in, o.bytes_out);
        }
    }
}
