//! The stick tables' clock: monotonic milliseconds, injectable for tests.
//!
//! Like HAProxy's `now_ms`, every time in a table (expiry dates, rate
//! windows) is a tick in milliseconds. Ticks are `u64` counted from a
//! process-wide origin, so they never wrap. Tests use a [`Clock::manual`]
//! clock to replay worked examples and to drive the expiry task without
//! waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Origin of real ticks, shared by every table so their ticks compare.
static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A millisecond clock: the real monotonic clock, or a manual one for tests.
#[derive(Clone, Debug)]
pub enum Clock {
    /// `Instant::now()` in ms since the process-wide origin.
    Real,
    /// A clock that only moves when [`Clock::advance`] or [`Clock::set`] is called.
    Manual(Arc<ManualClock>),
}

/// The state of a manual clock.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
    moved: Notify,
}

impl Clock {
    /// A manual clock starting at `start` ms.
    pub fn manual(start: u64) -> Clock {
        Clock::Manual(Arc::new(ManualClock {
            now: AtomicU64::new(start),
            moved: Notify::new(),
        }))
    }

    /// The current tick in milliseconds.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Real => {
                let origin = *ORIGIN;
                // +1 so that a real tick is never 0 (0 reads as "never" in a few places).
                u64::try_from(Instant::now().duration_since(origin).as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_add(1)
            }
            Clock::Manual(m) => m.now.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward by `ms` (no effect on the real clock).
    pub fn advance(&self, ms: u64) {
        if let Clock::Manual(m) = self {
            m.now.fetch_add(ms, Ordering::SeqCst);
            m.moved.notify_waiters();
        }
    }

    /// Sets a manual clock to `ms` (no effect on the real clock).
    pub fn set(&self, ms: u64) {
        if let Clock::Manual(m) = self {
            m.now.store(ms, Ordering::SeqCst);
            m.moved.notify_waiters();
        }
    }

    /// Sleeps until tick `at`: a timer for the real clock, a wait for
    /// [`Clock::advance`] for a manual one. Returns at once if `at` has passed.
    pub async fn sleep_until(&self, at: u64) {
        match self {
            Clock::Real => {
                let now = self.now_ms();
                if at > now {
                    tokio::time::sleep(Duration::from_millis(at - now)).await;
                }
            }
            Clock::Manual(m) => loop {
                let moved = m.moved.notified();
                tokio::pin!(moved);
                // Register before reading the time so an advance in between is not lost.
                moved.as_mut().enable();
                if m.now.load(Ordering::SeqCst) >= at {
                    return;
                }
                moved.await;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_clock_is_monotonic_and_non_zero() {
        let c = Clock::Real;
        let a = c.now_ms();
        std::thread::sleep(Duration::from_millis(5));
        let b = c.now_ms();
        assert!(a >= 1 && b >= a + 4, "{a} {b}");
    }

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_when_advanced() {
        let c = Clock::manual(100);
        assert_eq!(c.now_ms(), 100);
        c.sleep_until(50).await; // in the past: immediate
        let c2 = c.clone();
        let t = tokio::spawn(async move { c2.sleep_until(1_100).await });
        tokio::task::yield_now().await;
        c.advance(500);
        tokio::task::yield_now().await;
        assert!(!t.is_finished());
        c.advance(500);
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(c.now_ms(), 1_100);
    }
}
