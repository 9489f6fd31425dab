//! The plugin layer shared by every plugin kind (Lua, Wasm): the
//! [`PluginHost`] contract the rest of the daemon sees, and the pieces each
//! kind would otherwise write again: the [`OnError`] policy, the rebuild
//! [`BackOff`] and the per-worker [`Slot`].
//!
//! A host loads and checks its `[[plugin]]` entries, registers its actions,
//! services, fetches and converters into the rule language (its
//! [`RuleExtension`] half), runs its per-worker instances (worker start,
//! housekeeping, stop) and reports itself to the admin API. `proxy/`,
//! `admin/` and `rules/` know plugins only through this trait; only the
//! assembly step (`runtime`) names the kinds.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::metrics::Writer;
pub use crate::rules::RuleExtension;

pub mod code;
pub mod lograte;

/// One plugin kind's plugins, as the daemon runs them.
pub trait PluginHost: RuleExtension {
    /// A worker starts (before it accepts): build instances that must run
    /// without traffic (Wasm root contexts and ticks, Lua tasks). Called on
    /// the worker's thread, inside its `LocalSet`. `worker` is its index:
    /// worker 0 also runs what must run once per process (Lua event
    /// subscriptions made while a script loads).
    fn start_worker(&self, _worker: usize) {}

    /// Every 100 ms on each worker: timers, queued callbacks, rebuilds of
    /// instances whose back-off is over.
    fn housekeeping(&self) {}

    /// A worker stops: drop its instances while its thread-locals still exist.
    fn stop_worker(&self) {}

    /// Each plugin's `/plugins` document, in config order, with its name.
    fn admin_documents(&self) -> Vec<(String, Value)>;

    /// `POST /plugins/<name>/limits?memory_limit=<bytes>`: `None` if `name`
    /// is not one of this host's plugins; otherwise the new document, or why
    /// the change is refused.
    fn set_memory_limit(&self, _name: &str, _bytes: usize) -> Option<Result<Value, String>> {
        None
    }

    /// This host's `/metrics` families.
    fn metrics(&self, out: &mut Writer);

    /// The host itself, for code that knows its kind (tests, the assembly step).
    fn as_any(&self) -> &dyn std::any::Any;

    /// The daemon starts serving: where the plugins read its figures
    /// (Lua's `core.get_info()`). Weak, so the runtime and the daemon's
    /// state, which holds the runtime, do not keep each other alive.
    fn attach_process(&self, _source: std::sync::Weak<dyn ProcessSource>) {}
}

/// The running daemon's figures, as HAProxy's `show info` has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Since the daemon started serving.
    pub uptime: Duration,
    /// Worker threads (HAProxy's `Nbthread`).
    pub workers: u64,
    /// Open client connections.
    pub curr_conns: u64,
    /// Client connections accepted since the start.
    pub cum_conns: u64,
    /// Requests received since the start.
    pub cum_req: u64,
    /// The global `maxconn`.
    pub maxconn: u64,
    /// Listening sockets (one per bind address per worker).
    pub listeners: u64,
}

/// Where [`ProcessInfo`] comes from (the proxy's shared state).
pub trait ProcessSource: Send + Sync + std::fmt::Debug {
    /// The figures now.
    fn process_info(&self) -> ProcessInfo;
}

/// What a request sees when a plugin fails on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The request goes on as if the plugin had not run.
    FailOpen,
    /// The request is answered with the failure's status and page (`crate::error`: 500).
    FailClosed,
}

impl OnError {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::FailOpen => "fail_open",
            OnError::FailClosed => "fail_closed",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Option<OnError> {
        match s {
            "fail_open" => Some(OnError::FailOpen),
            "fail_closed" => Some(OnError::FailClosed),
            _ => None,
        }
    }
}

/// Failures in a row after which the instance is rebuilt at once.
pub const FREE_REBUILDS: u32 = 3;
/// Why a call into a plugin failed, for every kind of plugin: the one
/// failure-kind enum (Lua uses the first three, Wasm all but `Script`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The script raised an error (a Lua error, or one an API function raised).
    Script,
    /// The call used more CPU than `cpu_limit` (Wasm: the epoch deadline passed).
    CpuLimit,
    /// An allocation failed under `memory_limit` (Wasm: memory or tables would grow past it).
    MemoryLimit,
    /// The guest's call stack overflowed.
    StackOverflow,
    /// `unreachable` (also how Rust guests panic).
    Unreachable,
    /// Any other trap (out-of-bounds access, division by zero, bad indirect call, host error).
    Trap,
    /// The guest called WASI `proc_exit`.
    Exit,
    /// A callback returned a value the ABI does not define.
    BadReturn,
    /// A paused request was not resumed within the pause timeout.
    PauseTimeout,
    /// Instantiation or start-up (`proxy_on_vm_start` / `proxy_on_configure`) failed.
    Init,
}

impl FailureKind {
    /// Every kind, in stats order.
    pub const ALL: [FailureKind; 10] = [
        FailureKind::Script,
        FailureKind::CpuLimit,
        FailureKind::MemoryLimit,
        FailureKind::StackOverflow,
        FailureKind::Unreachable,
        FailureKind::Trap,
        FailureKind::Exit,
        FailureKind::BadReturn,
        FailureKind::PauseTimeout,
        FailureKind::Init,
    ];

    /// A short name for logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Script => "script",
            FailureKind::CpuLimit => "cpu_limit",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Trap => "trap",
            FailureKind::Exit => "exit",
            FailureKind::BadReturn => "bad_return",
            FailureKind::PauseTimeout => "pause_timeout",
            FailureKind::Init => "init",
        }
    }

    /// The kind in the one error model (the status and page come from there).
    pub fn failure(self) -> crate::error::PluginFailure {
        use crate::error::PluginFailure;
        match self {
            FailureKind::Script => PluginFailure::RuntimeError,
            FailureKind::CpuLimit => PluginFailure::CpuLimit,
            FailureKind::MemoryLimit => PluginFailure::OutOfMemory,
            FailureKind::StackOverflow
            | FailureKind::Unreachable
            | FailureKind::Trap
            | FailureKind::Exit => PluginFailure::Trap,
            FailureKind::BadReturn => PluginFailure::BadReturn,
            FailureKind::PauseTimeout => PluginFailure::PauseTimeout,
            // No instance to call: the plugin cannot run, like a Lua load error.
            FailureKind::Init => PluginFailure::RuntimeError,
        }
    }

    /// Whether the instance must be thrown away (its state is suspect).
    /// A script error leaves a Lua state consistent; a bad return value or
    /// a pause timeout concerns one request only.
    pub fn kills_instance(self) -> bool {
        !matches!(
            self,
            FailureKind::Script | FailureKind::BadReturn | FailureKind::PauseTimeout
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Failures counted by kind (atomics shared by every worker's instance),
/// with the rate limit of their log lines ([`lograte`]).
#[derive(Debug, Default)]
pub struct FailureCounts([std::sync::atomic::AtomicU64; 10], [lograte::LineLimit; 10]);

impl FailureCounts {
    /// Counts one failure of `kind`.
    pub fn count(&self, kind: FailureKind) {
        self.0[kind.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Failures of `kind` so far.
    pub fn get(&self, kind: FailureKind) -> u64 {
        self.0[kind.index()].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a failure of `kind` gets its log line now, and what to add
    /// to it (the failures suppressed since the previous line); `None`:
    /// suppressed (counted for the next line).
    pub fn log_line(&self, kind: FailureKind) -> Option<lograte::Suppressed> {
        self.1[kind.index()].admit(lograte::settings())
    }
}

/// First back-off after [`FREE_REBUILDS`] failures in a row; doubles per further failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest back-off between rebuilds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// When a worker may rebuild a plugin instance after failures: at once
/// after each of the first [`FREE_REBUILDS`] failures in a row (a failing
/// request recycles the instance for the next, as users of a plugin that
/// fails now and then expect), then exponentially (10 ms doubling to 5 s). Only a
/// request that ran to its end on a live instance resets it, so a plugin that
/// fails on every request backs off to seconds instead of burning the CPU on
/// rebuilds.
#[derive(Debug, Default, Clone, Copy)]
pub struct BackOff {
    /// Consecutive failures that dropped the instance.
    fails: u32,
    /// No rebuild before this instant.
    retry_at: Option<Instant>,
}

impl BackOff {
    /// A failure dropped the instance at `now`: returns the wait before the next rebuild.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.fails = self.fails.saturating_add(1);
        let wait = match self.fails {
            n if n <= FREE_REBUILDS => Duration::ZERO,
            n => BACKOFF_MIN
                .saturating_mul(1 << (n - FREE_REBUILDS - 1).min(16))
                .min(BACKOFF_MAX),
        };
        self.retry_at = Some(now + wait);
        wait
    }

    /// Whether a rebuild is allowed at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }

    /// An instance was built: the wait is over (the failure count stays
    /// until a request succeeds).
    pub fn rebuilt(&mut self) {
        self.retry_at = None;
    }

    /// A request ran to its end on a live instance: failures before it
    /// were not consecutive.
    pub fn reset(&mut self) {
        self.fails = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.fails
    }
}

/// One worker's instance of one plugin: the instance (if alive), which
/// build it is, and its back-off.
pub struct Slot<I> {
    pub inst: Option<I>,
    /// Bumped on every (re)build, so per-request state of a dead instance is recognised.
    pub generation: u64,
    pub backoff: BackOff,
}

impl<I> Default for Slot<I> {
    fn default() -> Self {
        Slot {
            inst: None,
            generation: 0,
            backoff: BackOff::default(),
        }
    }
}

impl<I> Slot<I> {
    /// Installs a freshly built instance.
    pub fn install(&mut self, inst: I) {
        self.inst = Some(inst);
        self.generation += 1;
        self.backoff.rebuilt();
    }

    /// Drops the instance after a failure at `now`; returns the back-off before the next build.
    pub fn kill(&mut self, now: Instant) -> (Option<I>, Duration) {
        let old = self.inst.take();
        (old, self.backoff.failed(now))
    }
}

/// Hashes small integer ids (plugin, rule and context ids) by one
/// multiplication (Fibonacci hashing: the high bits hashbrown uses as tags
/// mix all of the id): they come from counters, not from clients, so
/// SipHash's cost buys nothing on a path taken several times per request.
/// One for every plugin kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_only_on_success() {
        let t0 = Instant::now();
        let mut b = BackOff::default();
        assert!(b.ready(t0));
        let waits: Vec<Duration> = (0..14).map(|_| b.failed(t0)).collect();
        // A few failures recycle the instance at once; more in a row back off.
        assert_eq!(waits[..3], [Duration::ZERO; 3]);
        assert_eq!(waits[3], Duration::from_millis(10));
        assert_eq!(waits[4], Duration::from_millis(20));
        assert_eq!(waits[8], Duration::from_millis(320));
        assert_eq!(*waits.last().expect("waits"), BACKOFF_MAX);
        assert!(!b.ready(t0));
        assert!(b.ready(t0 + BACKOFF_MAX));
        // A rebuild does not forget the failures; a finished request does.
        b.rebuilt();
        assert!(b.ready(t0));
        assert_eq!(b.failed(t0), BACKOFF_MAX);
        b.reset();
        for _ in 0..FREE_REBUILDS {
            assert_eq!(b.failed(t0), Duration::ZERO);
        }
        assert_eq!(b.failed(t0), BACKOFF_MIN);
    }

    #[test]
    fn slot_generations_count_builds() {
        let mut s: Slot<&str> = Slot::default();
        s.install("a");
        assert_eq!(s.generation, 1);
        let (old, wait) = s.kill(Instant::now());
        assert_eq!(old, Some("a"));
        assert_eq!(wait, Duration::ZERO);
        s.install("b");
        assert_eq!(s.generation, 2);
    }

    #[test]
    fn failure_kinds_are_counted_apart_and_named_once() {
        let c = FailureCounts::default();
        c.count(FailureKind::CpuLimit);
        c.count(FailureKind::CpuLimit);
        c.count(FailureKind::Init);
        assert_eq!(c.get(FailureKind::CpuLimit), 2);
        assert_eq!(c.get(FailureKind::Init), 1);
        assert_eq!(c.get(FailureKind::Script), 0);
        let mut names: Vec<&str> = FailureKind::ALL.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FailureKind::ALL.len());
        for (i, k) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "ALL is in declaration order");
        }
    }

    #[test]
    fn on_error_spellings_round_trip() {
        for o in [OnError::FailOpen, OnError::FailClosed] {
            assert_eq!(OnError::parse(o.as_str()), Some(o));
        }
        assert_eq!(OnError::parse("fail"), None);
    }
}
