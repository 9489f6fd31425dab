//! The expiry task: one per table with `expire`, on the control runtime.
//!
//! It reaps what is due, then sleeps until the earliest date still queued
//! (rounded up to [`RESOLUTION_MS`] so entries created in the same few
//! milliseconds are reaped in one wake-up), or, with nothing queued, until
//! an insert wakes it. Every date it sleeps until is later than the time it
//! computed it at, and a due entry that is referenced is re-queued at least
//! [`RECHECK_MS`](super::table::RECHECK_MS) later, so the task cannot spin:
//! an idle table costs no wake-up at all (HAProxy incident 2).

use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};

use super::table::{ExpireStep, StickTable};

/// Granularity of expiry wake-ups, in ms.
pub const RESOLUTION_MS: u64 = 10;
/// Nodes examined before the task yields to the rest of the control runtime.
const BUDGET: usize = 1024;

/// Runs the expiry loop of `table` forever (returns at once if it has no `expire`).
pub async fn run(table: Arc<StickTable>) {
    if table.expire().is_none() {
        return;
    }
    loop {
        let now = table.now();
        match table.expire_step(now, BUDGET) {
            ExpireStep::Budget => {
                tokio::task::yield_now().await;
                continue;
            }
            ExpireStep::Next(at) => {
                let at = at.div_ceil(RESOLUTION_MS).saturating_mul(RESOLUTION_MS);
                table.clock().sleep_until(at).await;
            }
            ExpireStep::Idle => {
                table.expiry.idle.store(true, Ordering::SeqCst);
                // Pairs with the fence in `enqueue` (no lost wake-up).
                fence(Ordering::SeqCst);
                if !table.index_is_empty() {
                    table.expiry.idle.store(false, Ordering::SeqCst);
                    continue;
                }
                table.expiry.notify.notified().await;
            }
        }
        table.expiry.wakeups.fetch_add(1, Ordering::Relaxed);
    }
}
