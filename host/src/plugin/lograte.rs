//! The rate limit on plugin-failure log lines: a plugin that fails on every
//! request must not flood the log. Per plugin and failure kind, the first
//! `burst` failures are logged in full; after them at most one line per
//! `interval`, saying how many like it were left out since the previous
//! line (`... 312 more like this in the last 10s`), as Envoy's periodic
//! logging and nginx's `limit_req` log do. Counters and metrics still count
//! every failure.
//!
//! Lock-free: a few atomics per plugin and kind, shared by all workers. The
//! settings are process-wide (`[global] plugin_failure_log_burst` /
//! `plugin_failure_log_interval`), set at start and again by every reload.

use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

/// Failures of a kind logged in full before the limit applies.
pub const DEFAULT_BURST: u32 = 5;
/// At most one line per plugin and kind per this interval after the burst.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// The limit's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub burst: u32,
    pub interval: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            burst: DEFAULT_BURST,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// The burst in force.
static BURST: AtomicU32 = AtomicU32::new(DEFAULT_BURST);
/// The interval in force, in milliseconds (the config takes whole milliseconds).
static INTERVAL_MS: AtomicU64 = AtomicU64::new(DEFAULT_INTERVAL.as_millis() as u64);
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Sets the process-wide settings (at start, and by each reload: a failure
/// after it is limited by the new ones; the counts so far stay).
pub fn configure(s: Settings) {
    BURST.store(s.burst, Relaxed);
    INTERVAL_MS.store(
        u64::try_from(s.interval.as_millis()).unwrap_or(u64::MAX),
        Relaxed,
    );
}

/// The settings in force.
pub fn settings() -> Settings {
    Settings {
        burst: BURST.load(Relaxed),
        interval: Duration::from_millis(INTERVAL_MS.load(Relaxed)),
    }
}

/// Milliseconds since the first use (monotonic), never 0.
fn now_ms() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// What a line that is logged after suppressed ones adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed {
    /// Lines left out since the previous one.
    pub count: u64,
    /// Time since the previous line.
    pub since: Duration,
}

impl std::fmt::Display for Suppressed {
    /// ` (312 more like this in the last 10s)`, or nothing when none were left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return Ok(());
        }
        // Whole seconds past one second, milliseconds below.
        let since = if self.since >= Duration::from_secs(1) {
            Duration::from_secs(self.since.as_secs())
        } else {
            Duration::from_millis(u64::try_from(self.since.as_millis()).unwrap_or(u64::MAX))
        };
        write!(
            f,
            " ({} more like this in the last {})",
            self.count,
            humantime::format_duration(since)
        )
    }
}

/// One plugin's and kind's limit.
#[derive(Debug, Default)]
pub struct LineLimit {
    /// Lines logged in full so far (up to the burst).
    burst_used: AtomicU32,
    /// When the previous line was logged (ms since [`EPOCH`], 0: never).
    last_ms: AtomicU64,
    /// Failures left out since the previous line.
    suppressed: AtomicU64,
}

impl LineLimit {
    /// Whether a failure gets its line now (`Some`, with what was left out
    /// before it) or is left out (`None`, counted).
    pub fn admit(&self, s: Settings) -> Option<Suppressed> {
        self.admit_at(s, now_ms())
    }

    fn admit_at(&self, s: Settings, now: u64) -> Option<Suppressed> {
        let in_burst = self
            .burst_used
            .fetch_update(Relaxed, Relaxed, |n| (n < s.burst).then_some(n + 1))
            .is_ok();
        let last = self.last_ms.load(Relaxed);
        if in_burst {
            self.last_ms.store(now, Relaxed);
            return Some(Suppressed {
                count: 0,
                since: Duration::from_millis(now.saturating_sub(last)),
            });
        }
        let interval = u64::try_from(s.interval.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) >= interval
            && self
                .last_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(Suppressed {
                count: self.suppressed.swap(0, Relaxed),
                since: Duration::from_millis(now.saturating_sub(last)),
            });
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_line_per_interval_with_the_count() {
        let s = Settings {
            burst: 3,
            interval: Duration::from_secs(10),
        };
        let l = LineLimit::default();
        for t in [1, 2, 3] {
            assert_eq!(l.admit_at(s, t).map(|x| x.count), Some(0), "burst at {t}");
        }
        // The interval counts from the last line.
        for t in 4..10_003 {
            assert_eq!(l.admit_at(s, t), None, "at {t}");
        }
        let line = l.admit_at(s, 10_003).expect("one line after the interval");
        assert_eq!(line.count, 9_999);
        assert_eq!(line.to_string(), " (9999 more like this in the last 10s)");
        assert_eq!(l.admit_at(s, 10_004), None);
        // Quiet for longer than the interval: the next failure is logged at once.
        let line = l.admit_at(s, 50_000).expect("after a quiet time");
        assert_eq!(
            (line.count, line.to_string().as_str()),
            (1, " (1 more like this in the last 39s)")
        );
        let line = l.admit_at(s, 70_000).expect("nothing left out");
        assert_eq!(line.to_string(), "");
    }

    #[test]
    fn short_intervals_read_in_milliseconds() {
        let x = Suppressed {
            count: 2,
            since: Duration::from_micros(250_700),
        };
        assert_eq!(x.to_string(), " (2 more like this in the last 250ms)");
    }
}
