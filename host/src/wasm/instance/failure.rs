//! Failure classification: why an instance died ([`FailureKind`], [`Failure`]),
//! the per-plugin counters kept by kind, and [`guest_call`], the one way into
//! the guest (CPU deadline set first, errors and bad returns classified).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use wasmtime::{Store, Trap, TypedFunc, WasmParams, WasmResults};

use super::state::HostState;

pub use crate::plugin::FailureKind;

/// A failed call into the guest.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
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
    /// Failures by kind.
    pub failures: crate::plugin::FailureCounts,
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
    pub fn count_failure(&self, kind: FailureKind) {
        self.failures.count(kind);
    }

    /// Failures of `kind` so far.
    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        self.failures.get(kind)
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
    // A growth refused in an earlier call that the guest coped with says
    // nothing about a failure of this one.
    d.limiter.take_hit();
    d.calls_pending += 1;
    if d.calls_pending >= 64 {
        d.flush_calls();
    }
    f.call(&mut *store, args).map_err(|e| classify(store, &e))
}

pub(super) fn classify(store: &mut Store<HostState>, e: &wasmtime::Error) -> Failure {
    // What the guest printed before it died (a Go panic's message) is logged
    // even without a final newline.
    crate::wasm::abi::wasi::flush_all(store.data_mut());
    // A trap after the limiter refused to grow memory in this call is the
    // guest failing for want of memory (an allocator that aborts).
    let memory_hit = store.data_mut().limiter.take_hit();
    let kind = if memory_hit {
        FailureKind::MemoryLimit
    } else if let Some(t) = e.downcast_ref::<Trap>() {
        match *t {
            Trap::Interrupt => FailureKind::CpuLimit,
            Trap::StackOverflow => FailureKind::StackOverflow,
            Trap::UnreachableCodeReached => FailureKind::Unreachable,
            _ => FailureKind::Trap,
        }
    } else if e.downcast_ref::<GuestExit>().is_some() {
        FailureKind::Exit
    } else {
        FailureKind::Trap
    };
    Failure::new(kind, describe(e))
}

/// One line for the log: the cause, then where the guest was (its top
/// frames, Rust and C++ names demangled), instead of wasmtime's multi-line
/// backtrace of mangled symbols.
fn describe(e: &wasmtime::Error) -> String {
    let cause = e
        .chain()
        .find_map(|c| c.downcast_ref::<Trap>().map(ToString::to_string))
        .or_else(|| e.chain().last().map(ToString::to_string))
        .unwrap_or_else(|| e.to_string());
    let cause = cause.trim_start_matches("wasm trap: ").to_string();
    let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return cause;
    };
    let frames: Vec<String> = bt
        .frames()
        .iter()
        .take(4)
        .map(|f| match f.func_name() {
            Some(name) => format!("{:#}", rustc_demangle::demangle(name)),
            None => format!("wasm function {}", f.func_index()),
        })
        .collect();
    if frames.is_empty() {
        return cause;
    }
    let more = if bt.frames().len() > frames.len() {
        " <- ..."
    } else {
        ""
    };
    format!("{cause} (in {}{more})", frames.join(" <- "))
}

pub(super) fn action(raw: u32, callback: &str) -> Result<bool, Failure> {
    match raw {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(Failure::new(
            FailureKind::BadReturn,
            format!(
                "{callback} returned {other}, which is not a Proxy-Wasm action (0 continue, 1 pause)"
            ),
        )),
    }
}
