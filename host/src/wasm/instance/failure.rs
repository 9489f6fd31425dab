//! Failure classification: why an instance died ([`FailKind`], [`Failure`]),
//! the per-plugin counters kept by kind, and [`guest_call`], the one way into
//! the guest (CPU deadline set first, errors and bad returns classified).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use wasmtime::{Store, Trap, TypedFunc, WasmParams, WasmResults};

use super::state::HostState;

/// Why an instance died (or a call was refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailKind {
    /// The CPU deadline (epoch) passed.
    Deadline,
    /// Linear memory or tables would grow past the limit.
    Memory,
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

impl FailKind {
    /// The kind in the one error model (the status and page come from there).
    pub fn failure(self) -> crate::error::PluginFailure {
        use crate::error::PluginFailure;
        match self {
            FailKind::Deadline => PluginFailure::CpuLimit,
            FailKind::Memory => PluginFailure::OutOfMemory,
            FailKind::StackOverflow | FailKind::Unreachable | FailKind::Trap | FailKind::Exit => {
                PluginFailure::Trap
            }
            FailKind::BadReturn => PluginFailure::BadReturn,
            FailKind::PauseTimeout => PluginFailure::PauseTimeout,
            // No instance to call: the plugin cannot run, like a Lua load error.
            FailKind::Init => PluginFailure::RuntimeError,
        }
    }

    /// Every kind, in stats order.
    pub const ALL: [FailKind; 9] = [
        FailKind::Deadline,
        FailKind::Memory,
        FailKind::StackOverflow,
        FailKind::Unreachable,
        FailKind::Trap,
        FailKind::Exit,
        FailKind::BadReturn,
        FailKind::PauseTimeout,
        FailKind::Init,
    ];

    /// A short name for logs and stats.
    pub fn name(self) -> &'static str {
        match self {
            FailKind::Deadline => "cpu_limit",
            FailKind::Memory => "memory_limit",
            FailKind::StackOverflow => "stack_overflow",
            FailKind::Unreachable => "unreachable",
            FailKind::Trap => "trap",
            FailKind::Exit => "exit",
            FailKind::BadReturn => "bad_return",
            FailKind::PauseTimeout => "pause_timeout",
            FailKind::Init => "init",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// Whether the instance must be thrown away (its state is suspect).
    pub fn kills_instance(self) -> bool {
        !matches!(self, FailKind::BadReturn | FailKind::PauseTimeout)
    }
}

/// A failed call into the guest.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailKind,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(kind: FailKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.message)
    }
}

/// The error a guest's WASI `proc_exit` raises (a trap with its exit code).
#[derive(Debug, thiserror::Error)]
#[error("guest called proc_exit({0})")]
pub struct GuestExit(pub u32);

/// Counters of one plugin across all workers (admin API, metrics).
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls into the guest.
    pub calls: AtomicU64,
    /// Requests handled by the plugin's `on_error` policy.
    pub failed_requests: AtomicU64,
    /// Failures by [`FailKind`] (index as in [`FailKind::ALL`]).
    pub failures: [AtomicU64; 9],
    /// Instances built (first builds and rebuilds).
    pub instances_built: AtomicU64,
    /// Instances rebuilt after a failure.
    pub rebuilds: AtomicU64,
    /// Instances alive now.
    pub instances_live: AtomicU64,
    /// Linear memory of the live instances, in bytes.
    pub memory_bytes: Arc<AtomicU64>,
    /// Host calls refused for a bad argument or pointer (the guest got an error status).
    pub bad_host_calls: AtomicU64,
}

impl PluginStats {
    /// Counts a failure of `kind`.
    pub fn count_failure(&self, kind: FailKind) {
        self.failures[kind.index()].fetch_add(1, Relaxed);
    }

    /// Failures of `kind` so far.
    pub fn failures_of(&self, kind: FailKind) -> u64 {
        self.failures[kind.index()].load(Relaxed)
    }
}

/// Calls `f` with the CPU deadline set; any error is classified into a [`Failure`].
pub(super) fn guest_call<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    ticks: u64,
    f: &TypedFunc<P, R>,
    args: P,
) -> Result<R, Failure> {
    store.set_epoch_deadline(ticks);
    let d = store.data_mut();
    d.calls_pending += 1;
    if d.calls_pending >= 64 {
        d.flush_calls();
    }
    f.call(&mut *store, args).map_err(|e| classify(store, &e))
}

pub(super) fn classify(store: &mut Store<HostState>, e: &wasmtime::Error) -> Failure {
    let memory_hit = store.data_mut().limiter.take_hit();
    let kind = if memory_hit {
        FailKind::Memory
    } else if let Some(t) = e.downcast_ref::<Trap>() {
        match *t {
            Trap::Interrupt => FailKind::Deadline,
            Trap::StackOverflow => FailKind::StackOverflow,
            Trap::UnreachableCodeReached => FailKind::Unreachable,
            _ => FailKind::Trap,
        }
    } else if e.downcast_ref::<GuestExit>().is_some() {
        FailKind::Exit
    } else {
        FailKind::Trap
    };
    let mut message = format!("{e}");
    if let Some(root) = e.chain().skip(1).last() {
        message = format!("{message}: {root}");
    }
    Failure::new(kind, message)
}

pub(super) fn action(raw: u32, callback: &str) -> Result<bool, Failure> {
    match raw {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(Failure::new(
            FailKind::BadReturn,
            format!(
                "{callback} returned {other}, which is not a Proxy-Wasm action (0 continue, 1 pause)"
            ),
        )),
    }
}
