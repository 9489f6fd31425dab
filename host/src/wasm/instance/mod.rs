//! One live instance of a plugin (one per worker): its store with resource
//! limits, the guest exports cached as `TypedFunc`s, the root context and
//! the per-request stream contexts, and the calls into the guest.
//!
//! Every call into the guest goes through [`guest_call`], which sets the
//! epoch deadline first and turns any error into a [`Failure`] with a
//! [`FailKind`]. A failure means the instance is dead: the owner drops it
//! and builds a new one (see [`super::filter`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use wasmtime::{Memory, ResourceLimiter, Store, Trap, TypedFunc, WasmParams, WasmResults};

use super::PluginSpec;
use super::engine::deadline_ticks;
use super::module::WasmPlugin;
use super::shared::{Metric, SharedData};
use crate::filter::Reply;
use crate::txn::{Phase, Txn};

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

/// What all instances of one plugin share (across workers).
#[derive(Debug)]
pub struct PluginShared {
    pub spec: PluginSpec,
    pub shared_data: Arc<SharedData>,
    pub stats: PluginStats,
}

/// Enforces `memory_limit` and table limits on one store; growth past the
/// limit traps and is recorded, so the failure is reported as a memory-limit hit.
#[derive(Debug)]
pub struct Limiter {
    memory: usize,
    tables: usize,
    hit: bool,
    current: u64,
    total: Arc<AtomicU64>,
}

impl Limiter {
    fn take_hit(&mut self) -> bool {
        std::mem::take(&mut self.hit)
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.total.fetch_sub(self.current, Relaxed);
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "linear memory would grow to {desired} bytes, past the plugin's memory_limit of {} bytes",
                self.memory
            ));
        }
        let grown = u64::try_from(desired.saturating_sub(current)).unwrap_or(0);
        self.current = self.current.saturating_add(grown);
        self.total.fetch_add(grown, Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.tables {
            self.hit = true;
            return Err(wasmtime::format_err!(
                "a table would grow to {desired} elements, past the limit of {}",
                self.tables
            ));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        4
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The parts of a [`Txn`] a callback may read and change, moved into the
/// store for the duration of the call (swapped, never copied).
#[derive(Debug, Default)]
pub struct StreamIo {
    /// A transaction is loaded.
    pub active: bool,
    /// Loaded read-only (the log phase).
    pub read_only: bool,
    /// Only a body chunk is loaded (a body let go on mid-stream): headers,
    /// trailers and request properties are `NOT_FOUND`.
    pub body_only: bool,
    pub phase: Option<Phase>,
    pub req_headers: HeaderMap,
    pub resp_headers: HeaderMap,
    pub req_trailers: HeaderMap,
    pub resp_trailers: HeaderMap,
    pub req_body: Vec<u8>,
    pub resp_body: Vec<u8>,
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub status: StatusCode,
    pub client: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

impl StreamIo {
    fn swap_txn(&mut self, txn: &mut Txn) {
        std::mem::swap(&mut self.req_headers, &mut txn.req_headers);
        std::mem::swap(&mut self.resp_headers, &mut txn.resp_headers);
        std::mem::swap(&mut self.method, &mut txn.method);
        std::mem::swap(&mut self.uri, &mut txn.uri);
        std::mem::swap(&mut self.status, &mut txn.status);
        // Buffered bodies stay readable (and writable) in every later callback
        // of the stream, e.g. after a pause for an http call. Swapping twice
        // restores them; `io` holds empty buffers while nothing is loaded.
        if let Some(b) = txn.req_buffered.as_mut() {
            std::mem::swap(&mut self.req_body, &mut b.data);
            std::mem::swap(&mut self.req_trailers, &mut b.trailers);
        }
        if let Some(b) = txn.resp_buffered.as_mut() {
            std::mem::swap(&mut self.resp_body, &mut b.data);
            std::mem::swap(&mut self.resp_trailers, &mut b.trailers);
        }
    }

    fn load(&mut self, txn: &mut Txn) {
        self.swap_txn(txn);
        self.active = true;
        self.read_only = false;
        self.phase = Some(txn.phase);
        self.version = txn.version;
        self.client = Some(txn.client_addr);
        self.local = Some(txn.local_addr);
    }

    fn unload(&mut self, txn: &mut Txn) {
        self.swap_txn(txn);
        self.reset();
    }

    fn load_for_log(&mut self, txn: &Txn) {
        self.active = true;
        self.read_only = true;
        self.phase = Some(Phase::Response);
        self.method = txn.method.clone();
        self.uri = txn.uri.clone();
        self.version = txn.version;
        self.status = StatusCode::from_u16(txn.outcome.status).unwrap_or(txn.status);
        self.client = Some(txn.client_addr);
        self.local = Some(txn.local_addr);
    }

    fn reset(&mut self) {
        self.active = false;
        self.read_only = false;
        self.body_only = false;
        self.phase = None;
        self.client = None;
        self.local = None;
        self.req_trailers.clear();
        self.resp_trailers.clear();
        // Writes to a body that was not buffered go nowhere (never to the next request).
        self.req_body.clear();
        self.resp_body.clear();
        self.method = Method::GET;
        self.uri = Uri::default();
        self.status = StatusCode::OK;
    }
}

/// An outgoing `proxy_http_call`, queued until the request's wait future runs it.
#[derive(Debug, Clone)]
pub struct PendingCall {
    pub token: u32,
    pub upstream: SocketAddr,
    pub authority: String,
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// The response to an http call as the guest sees it (map type 6, buffer type 4).
#[derive(Debug, Clone, Default)]
pub struct CallResponse {
    /// Includes `:status` first; empty if the call failed.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Finished http calls (token, response) waiting to be delivered.
pub type CallResults = Rc<RefCell<Vec<(u32, CallResponse)>>>;

/// What a wait future reports back to the instance.
#[derive(Debug, Default)]
pub struct StreamWaker {
    pub notify: tokio::sync::Notify,
    pub results: std::cell::RefCell<Vec<(u32, CallResponse)>>,
}

/// Host-side state of one stream (HTTP) context.
#[derive(Debug)]
pub struct StreamState {
    pub paused: bool,
    pub pause_deadline: Option<Instant>,
    pub reply: Option<Reply>,
    pub closed: bool,
    pub calls: Vec<PendingCall>,
    pub inflight: usize,
    /// Created when the stream first waits (most requests never pause).
    pub waker: Option<Rc<StreamWaker>>,
    pub props: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamState {
    fn new() -> StreamState {
        StreamState {
            paused: false,
            pause_deadline: None,
            reply: None,
            closed: false,
            calls: Vec::new(),
            inflight: 0,
            waker: None,
            props: Vec::new(),
        }
    }
}

/// Which buffers exist during the current callback besides bodies.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    #[default]
    Other,
    VmStart,
    Configure,
    CallResponse,
}

/// The store's data: everything host functions reach.
pub struct HostState {
    pub limiter: Limiter,
    pub memory: Option<Memory>,
    /// The guest allocator (`Rc`: cloning a `TypedFunc` is not free, and host calls need it by value).
    pub malloc: Option<Rc<TypedFunc<u32, u32>>>,
    pub plugin: Arc<PluginShared>,
    pub io: StreamIo,
    /// The stream whose transaction is loaded in `io` (0: none).
    pub io_ctx: u32,
    /// The context host calls act on (the callback's, or set by `proxy_set_effective_context`).
    pub effective: u32,
    pub root_id: u32,
    pub callback: Callback,
    pub streams: IdMap<StreamState>,
    pub call_response: Option<CallResponse>,
    pub next_token: u32,
    /// Root-context http calls (e.g. from `proxy_on_tick`) not yet started:
    /// the worker starts them after the callback (see `filter::run_root_calls`).
    pub root_calls: Vec<PendingCall>,
    /// Root-context calls started and not yet delivered (with `root_calls`,
    /// bounded by `MAX_CALLS`).
    pub root_inflight: usize,
    /// Where started root-context calls leave their responses (per instance:
    /// a rebuilt instance never sees its predecessor's responses).
    pub root_results: CallResults,
    pub tick_period: Option<Duration>,
    pub queues: Vec<u32>,
    pub metrics: HashMap<u32, Arc<Metric>>,
    pub root_props: Vec<(Vec<u8>, Vec<u8>)>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub last_error: Option<String>,
    /// Guest calls not yet added to the shared `calls` counter: published in
    /// batches so workers do not contend on one cache line per call.
    pub calls_pending: u64,
}

impl HostState {
    pub(crate) fn new(plugin: Arc<PluginShared>) -> HostState {
        let limits = plugin.spec.limits;
        HostState {
            limiter: Limiter {
                memory: limits.memory,
                tables: limits.table_elements,
                hit: false,
                current: 0,
                total: Arc::clone(&plugin.stats.memory_bytes),
            },
            memory: None,
            malloc: None,
            plugin,
            io: StreamIo::default(),
            io_ctx: 0,
            effective: 0,
            root_id: ROOT_ID,
            callback: Callback::Other,
            streams: IdMap::default(),
            call_response: None,
            next_token: 1,
            root_calls: Vec::new(),
            root_inflight: 0,
            root_results: Rc::default(),
            tick_period: None,
            queues: Vec::new(),
            metrics: HashMap::new(),
            root_props: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            last_error: None,
            calls_pending: 0,
        }
    }

    /// Adds the batched call count to the plugin's shared counter.
    pub fn flush_calls(&mut self) {
        let n = std::mem::take(&mut self.calls_pending);
        if n > 0 {
            self.plugin.stats.calls.fetch_add(n, Relaxed);
        }
    }

    /// Records a refused host call: counted, kept for `last_error`, logged at debug level.
    pub fn note_bad_call(&mut self, what: &str) {
        self.plugin.stats.bad_host_calls.fetch_add(1, Relaxed);
        tracing::debug!(plugin = %self.plugin.spec.name, "refused host call: {what}");
        self.last_error = Some(what.to_string());
    }

    /// The stream state of the effective context, if it is a stream.
    pub fn effective_stream(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.effective)
    }

    /// Whether the loaded transaction belongs to the effective context.
    pub fn io_available(&self) -> bool {
        self.io.active && self.io_ctx != 0 && self.io_ctx == self.effective
    }
}

/// Hashes small integer ids (context ids, plugin ids) by one multiplication:
/// they are not attacker-chosen, so SipHash's cost buys nothing on a path
/// taken several times per request.
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

/// A map keyed by small integer ids, hashed with [`IdHasher`].
pub type IdMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Most http calls one context may have queued or in flight (no unbounded queues).
pub const MAX_CALLS: usize = 16;

/// The root context's id (the first context a module sees).
pub const ROOT_ID: u32 = 1;

/// `proxy_on_http_call_response(context, token, headers, body_size, trailers)`.
type CallResponseArgs = (u32, u32, u32, u32, u32);

/// Guest exports, resolved once per instance.
struct Exports {
    on_context_create: Option<TypedFunc<(u32, u32), ()>>,
    on_vm_start: Option<TypedFunc<(u32, u32), u32>>,
    on_configure: Option<TypedFunc<(u32, u32), u32>>,
    on_request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    on_response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    on_response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    on_log: Option<TypedFunc<u32, ()>>,
    on_done: Option<TypedFunc<u32, u32>>,
    on_delete: Option<TypedFunc<u32, ()>>,
    on_tick: Option<TypedFunc<u32, ()>>,
    on_http_call_response: Option<TypedFunc<CallResponseArgs, ()>>,
    on_queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    on_new_connection: Option<TypedFunc<u32, u32>>,
}

/// What a stream callback decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// Wait: the guest returned `Action::Pause` and has not resumed the stream yet.
    Pause,
    /// Answer with this response (`proxy_send_local_response`, or `proxy_close_stream`).
    Respond(Reply),
}

/// One instance of a plugin.
pub struct PluginInstance {
    store: Store<HostState>,
    /// Shared with each call site by `Rc` (cloning a `TypedFunc` costs atomics in wasmtime's type registry).
    ex: Rc<Exports>,
    ticks: u64,
    next_ctx: u32,
    order: VecDeque<u32>,
    next_tick: Option<Instant>,
    queue_gen: u64,
}

/// Calls `f` with the CPU deadline set; any error is classified into a [`Failure`].
fn guest_call<P: WasmParams, R: WasmResults>(
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

fn classify(store: &mut Store<HostState>, e: &wasmtime::Error) -> Failure {
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

fn action(raw: u32, callback: &str) -> Result<bool, Failure> {
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

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl PluginInstance {
    /// Instantiates `plugin` and runs its start-up: `_initialize` / `_start`,
    /// the root context, `proxy_on_vm_start` and `proxy_on_configure` (both must return true).
    pub fn new(plugin: &WasmPlugin) -> Result<PluginInstance, Failure> {
        let shared = Arc::clone(&plugin.shared);
        let ticks = deadline_ticks(shared.spec.limits.cpu);
        let mut store = Store::new(plugin.engine(), HostState::new(Arc::clone(&shared)));
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&mut store, &e))?;
        shared.stats.instances_built.fetch_add(1, Relaxed);
        let memory = instance.get_memory(&mut store, "memory");
        let malloc = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "malloc"))
            .ok();
        {
            let data = store.data_mut();
            data.memory = memory;
            data.malloc = malloc.map(Rc::new);
        }
        macro_rules! get {
            ($name:literal) => {
                instance.get_typed_func(&mut store, $name).ok()
            };
        }
        let ex = Exports {
            on_context_create: get!("proxy_on_context_create"),
            on_vm_start: get!("proxy_on_vm_start"),
            on_configure: get!("proxy_on_configure"),
            on_request_headers: get!("proxy_on_request_headers"),
            on_request_body: get!("proxy_on_request_body"),
            on_request_trailers: get!("proxy_on_request_trailers"),
            on_response_headers: get!("proxy_on_response_headers"),
            on_response_body: get!("proxy_on_response_body"),
            on_response_trailers: get!("proxy_on_response_trailers"),
            on_log: get!("proxy_on_log"),
            on_done: get!("proxy_on_done"),
            on_delete: get!("proxy_on_delete"),
            on_tick: get!("proxy_on_tick"),
            on_http_call_response: get!("proxy_on_http_call_response"),
            on_queue_ready: get!("proxy_on_queue_ready"),
            on_new_connection: get!("proxy_on_new_connection"),
        };
        let init: Option<TypedFunc<(), ()>> = instance
            .get_typed_func(&mut store, "_initialize")
            .or_else(|_| instance.get_typed_func(&mut store, "_start"))
            .ok();
        let mut inst = PluginInstance {
            store,
            ex: Rc::new(ex),
            ticks,
            next_ctx: ROOT_ID + 1,
            order: VecDeque::new(),
            next_tick: None,
            queue_gen: super::shared::queue_generation(),
        };
        inst.live(true);
        if let Some(f) = init {
            match guest_call(&mut inst.store, ticks, &f, ()) {
                Ok(()) => {}
                // A WASI command's `_start` ends with proc_exit(0): that is success.
                Err(e) if e.kind == FailKind::Exit && e.message.contains("proc_exit(0)") => {}
                Err(e) => return Err(e),
            }
        }
        inst.begin(ROOT_ID, Callback::Other);
        let ex = Rc::clone(&inst.ex);
        if let Some(f) = &ex.on_context_create {
            guest_call(&mut inst.store, ticks, f, (ROOT_ID, 0))?;
        }
        let vm_len = len_u32(shared.spec.vm_config.len());
        inst.begin(ROOT_ID, Callback::VmStart);
        let ex = Rc::clone(&inst.ex);
        if let Some(f) = &ex.on_vm_start
            && guest_call(&mut inst.store, ticks, f, (ROOT_ID, vm_len))? == 0
        {
            return Err(Failure::new(
                FailKind::Init,
                "proxy_on_vm_start returned false (the plugin rejected its vm_config)",
            ));
        }
        let cfg_len = len_u32(shared.spec.config.len());
        inst.begin(ROOT_ID, Callback::Configure);
        let ex = Rc::clone(&inst.ex);
        if let Some(f) = &ex.on_configure
            && guest_call(&mut inst.store, ticks, f, (ROOT_ID, cfg_len))? == 0
        {
            return Err(Failure::new(
                FailKind::Init,
                "proxy_on_configure returned false (the plugin rejected its config)",
            ));
        }
        inst.begin(ROOT_ID, Callback::Other);
        inst.schedule_tick();
        Ok(inst)
    }

    fn live(&self, up: bool) {
        let stats = &self.store.data().plugin.stats;
        if up {
            stats.instances_live.fetch_add(1, Relaxed);
        } else {
            stats.instances_live.fetch_sub(1, Relaxed);
        }
    }

    fn begin(&mut self, ctx: u32, callback: Callback) {
        let d = self.store.data_mut();
        d.effective = ctx;
        d.callback = callback;
    }

    /// The plugin's shared state.
    pub fn plugin(&self) -> &Arc<PluginShared> {
        &self.store.data().plugin
    }

    /// Current linear memory size in bytes.
    pub fn memory_size(&self) -> usize {
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }

    /// Whether the module exports an HTTP request hook at all.
    pub fn has_http_hooks(&self) -> bool {
        self.ex.on_request_headers.is_some() || self.ex.on_response_headers.is_some()
    }

    /// Live stream contexts.
    pub fn stream_count(&self) -> usize {
        self.store.data().streams.len()
    }

    /// Creates a stream context for one request; returns its id.
    pub fn create_stream(&mut self) -> Result<u32, Failure> {
        let max = self.store.data().plugin.spec.limits.max_streams.max(1);
        while self.store.data().streams.len() >= max {
            // Requests dropped before their log hook leave contexts behind: evict the oldest.
            match self.order.pop_front() {
                Some(old) => self.destroy_stream(old)?,
                None => break,
            }
        }
        let mut id = self.next_ctx;
        while id <= ROOT_ID || self.store.data().streams.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_ctx = id.wrapping_add(1);
        self.store.data_mut().streams.insert(id, StreamState::new());
        self.order.push_back(id);
        self.begin(id, Callback::Other);
        let ex = Rc::clone(&self.ex);
        if let Some(f) = &ex.on_context_create {
            guest_call(&mut self.store, self.ticks, f, (id, ROOT_ID))?;
        }
        Ok(id)
    }

    /// Whether stream `ctx` exists.
    pub fn has_stream(&self, ctx: u32) -> bool {
        self.store.data().streams.contains_key(&ctx)
    }

    /// `Err` if stream `ctx` no longer exists (the instance was rebuilt under it).
    fn require_stream(&self, ctx: u32) -> Result<(), Failure> {
        if self.has_stream(ctx) {
            Ok(())
        } else {
            Err(gone())
        }
    }

    /// Runs `proxy_on_new_connection` on `ctx`: it succeeds only for a TCP
    /// stream context (the Rust SDK traps for an HTTP context). Used at load.
    pub(crate) fn probe_stream_context(&mut self, ctx: u32) -> bool {
        let ex = Rc::clone(&self.ex);
        match &ex.on_new_connection {
            Some(f) => guest_call(&mut self.store, self.ticks, f, ctx).is_ok(),
            None => false,
        }
    }

    fn stream_hook(
        &mut self,
        ctx: u32,
        txn: &mut Txn,
        f: Option<&TypedFunc<(u32, u32, u32), u32>>,
        count: impl Fn(&StreamIo) -> usize,
        eos: bool,
        name: &str,
    ) -> Result<Verdict, Failure> {
        self.require_stream(ctx)?;
        let Some(f) = f else {
            return Ok(Verdict::Continue);
        };
        let pause = self.stream_call(ctx, txn, f, count, eos, name)?;
        Ok(self.verdict(ctx, pause))
    }

    /// One `(context, size, end_of_stream)` hook with the transaction loaded; true for `Pause`.
    fn stream_call(
        &mut self,
        ctx: u32,
        txn: &mut Txn,
        f: &TypedFunc<(u32, u32, u32), u32>,
        count: impl Fn(&StreamIo) -> usize,
        eos: bool,
        name: &str,
    ) -> Result<bool, Failure> {
        self.begin(ctx, Callback::Other);
        let d = self.store.data_mut();
        d.io.load(txn);
        d.io_ctx = ctx;
        let n = len_u32(count(&d.io));
        let r = guest_call(&mut self.store, self.ticks, f, (ctx, n, u32::from(eos)));
        let d = self.store.data_mut();
        d.io.unload(txn);
        d.io_ctx = 0;
        action(r?, name)
    }

    fn verdict(&mut self, ctx: u32, pause: bool) -> Verdict {
        let limits = self.store.data().plugin.spec.limits;
        let Some(s) = self.store.data_mut().streams.get_mut(&ctx) else {
            return Verdict::Continue;
        };
        if let Some(reply) = s.reply.take() {
            s.paused = false;
            return Verdict::Respond(reply);
        }
        if s.closed {
            s.closed = false;
            s.paused = false;
            // The plugin ended the stream without a reply: HAProxy's 502 page.
            return Verdict::Respond(crate::error::reply(StatusCode::BAD_GATEWAY));
        }
        if pause {
            s.paused = true;
            s.pause_deadline
                .get_or_insert_with(|| Instant::now() + limits.pause_timeout);
        }
        if s.paused {
            Verdict::Pause
        } else {
            s.pause_deadline = None;
            Verdict::Continue
        }
    }

    /// `proxy_on_request_headers` with the transaction's request headers.
    pub fn request_headers(
        &mut self,
        ctx: u32,
        txn: &mut Txn,
        eos: bool,
    ) -> Result<Verdict, Failure> {
        let ex = Rc::clone(&self.ex);
        let f = ex.on_request_headers.as_ref();
        self.stream_hook(
            ctx,
            txn,
            f,
            |io| io.req_headers.len() + 4,
            eos,
            "proxy_on_request_headers",
        )
    }

    /// `proxy_on_response_headers` with the transaction's response headers.
    pub fn response_headers(
        &mut self,
        ctx: u32,
        txn: &mut Txn,
        eos: bool,
    ) -> Result<Verdict, Failure> {
        let ex = Rc::clone(&self.ex);
        let f = ex.on_response_headers.as_ref();
        self.stream_hook(
            ctx,
            txn,
            f,
            |io| io.resp_headers.len() + 1,
            eos,
            "proxy_on_response_headers",
        )
    }

    /// `proxy_on_request_body` / `proxy_on_response_body` (by `txn.phase`) over
    /// the body buffered in `txn` (buffer type 0 / 1, changeable by the guest).
    /// With `eos` false (trailers follow) a `Pause` only means "keep
    /// buffering", as Envoy's StopIterationAndBuffer: the trailers hook decides.
    pub fn body(&mut self, ctx: u32, txn: &mut Txn, eos: bool) -> Result<Verdict, Failure> {
        self.require_stream(ctx)?;
        let ex = Rc::clone(&self.ex);
        let pause = match txn.phase {
            Phase::Request => match &ex.on_request_body {
                Some(f) => self.stream_call(
                    ctx,
                    txn,
                    f,
                    |io| io.req_body.len(),
                    eos,
                    "proxy_on_request_body",
                )?,
                None => false,
            },
            Phase::Response => match &ex.on_response_body {
                Some(f) => self.stream_call(
                    ctx,
                    txn,
                    f,
                    |io| io.resp_body.len(),
                    eos,
                    "proxy_on_response_body",
                )?,
                None => false,
            },
        };
        Ok(self.verdict(ctx, pause && eos))
    }

    /// The body hook on a body still arriving (`end_of_stream` 0), over what
    /// is buffered so far. `None`: the guest wants more (`Pause`, Envoy's
    /// StopIterationAndBuffer, or no body hook but a trailers hook);
    /// `Some(Continue)`: the buffered part may go on and the rest stream past.
    pub fn body_chunk(&mut self, ctx: u32, txn: &mut Txn) -> Result<Option<Verdict>, Failure> {
        self.require_stream(ctx)?;
        let ex = Rc::clone(&self.ex);
        let (f, name) = match txn.phase {
            Phase::Request => (ex.on_request_body.as_ref(), "proxy_on_request_body"),
            Phase::Response => (ex.on_response_body.as_ref(), "proxy_on_response_body"),
        };
        let request = txn.phase == Phase::Request;
        let Some(f) = f else {
            return Ok(None);
        };
        let more = self.stream_call(
            ctx,
            txn,
            f,
            move |io| {
                if request {
                    io.req_body.len()
                } else {
                    io.resp_body.len()
                }
            },
            false,
            name,
        )?;
        let v = self.verdict(ctx, false);
        Ok(match v {
            Verdict::Continue if more => None,
            v => Some(v),
        })
    }

    /// The body hook for one chunk of a body the guest let go on before its
    /// end (Envoy keeps calling per chunk): only the chunk is loaded, as the
    /// transaction has moved on. Returns the chunk as the guest left it and
    /// the stream's verdict (a `Pause` cannot hold what already went on: it
    /// is ignored). A context already finished lets the chunk pass.
    pub fn body_chunk_detached(
        &mut self,
        ctx: u32,
        phase: Phase,
        data: Vec<u8>,
        eos: bool,
    ) -> Result<(Vec<u8>, Verdict), Failure> {
        if !self.has_stream(ctx) {
            return Ok((data, Verdict::Continue));
        }
        let ex = Rc::clone(&self.ex);
        let request = phase == Phase::Request;
        let (f, name) = if request {
            (ex.on_request_body.as_ref(), "proxy_on_request_body")
        } else {
            (ex.on_response_body.as_ref(), "proxy_on_response_body")
        };
        let Some(f) = f else {
            return Ok((data, Verdict::Continue));
        };
        self.begin(ctx, Callback::Other);
        let d = self.store.data_mut();
        d.io.active = true;
        d.io.body_only = true;
        d.io.phase = Some(phase);
        let n = len_u32(data.len());
        if request {
            d.io.req_body = data;
        } else {
            d.io.resp_body = data;
        }
        d.io_ctx = ctx;
        let r = guest_call(&mut self.store, self.ticks, f, (ctx, n, u32::from(eos)));
        let d = self.store.data_mut();
        let out = std::mem::take(if request {
            &mut d.io.req_body
        } else {
            &mut d.io.resp_body
        });
        d.io.reset();
        d.io_ctx = 0;
        action(r?, name)?;
        Ok((out, self.verdict(ctx, false)))
    }

    /// `proxy_on_request_trailers` / `proxy_on_response_trailers` (by `txn.phase`)
    /// with the trailers buffered in `txn` (map type 1 / 3).
    pub fn trailers(&mut self, ctx: u32, txn: &mut Txn) -> Result<Verdict, Failure> {
        self.require_stream(ctx)?;
        let ex = Rc::clone(&self.ex);
        let (f, name) = match txn.phase {
            Phase::Request => (ex.on_request_trailers.as_ref(), "proxy_on_request_trailers"),
            Phase::Response => (
                ex.on_response_trailers.as_ref(),
                "proxy_on_response_trailers",
            ),
        };
        let Some(f) = f else {
            return Ok(Verdict::Continue);
        };
        self.begin(ctx, Callback::Other);
        let d = self.store.data_mut();
        d.io.load(txn);
        d.io_ctx = ctx;
        let n = len_u32(match txn.phase {
            Phase::Request => d.io.req_trailers.len(),
            Phase::Response => d.io.resp_trailers.len(),
        });
        let r = guest_call(&mut self.store, self.ticks, f, (ctx, n));
        let d = self.store.data_mut();
        d.io.unload(txn);
        d.io_ctx = 0;
        let pause = action(r?, name)?;
        Ok(self.verdict(ctx, pause))
    }

    /// Delivers finished http calls of stream `ctx` (`proxy_on_http_call_response`),
    /// then reports whether the stream may go on.
    pub fn deliver_calls(&mut self, ctx: u32, txn: &mut Txn) -> Result<Verdict, Failure> {
        let Some(s) = self.store.data().streams.get(&ctx) else {
            return Err(gone());
        };
        let results: Vec<(u32, CallResponse)> = match &s.waker {
            Some(w) => w.results.borrow_mut().drain(..).collect(),
            None => Vec::new(),
        };
        for (token, resp) in results {
            if let Some(s) = self.store.data_mut().streams.get_mut(&ctx) {
                s.inflight = s.inflight.saturating_sub(1);
            }
            let ex = Rc::clone(&self.ex);
            let Some(f) = &ex.on_http_call_response else {
                continue;
            };
            let nh = len_u32(resp.headers.len());
            let nb = len_u32(resp.body.len());
            self.begin(ctx, Callback::CallResponse);
            let d = self.store.data_mut();
            d.call_response = Some(resp);
            d.io.load(txn);
            d.io_ctx = ctx;
            let r = guest_call(&mut self.store, self.ticks, f, (ctx, token, nh, nb, 0));
            let d = self.store.data_mut();
            d.io.unload(txn);
            d.io_ctx = 0;
            d.call_response = None;
            d.callback = Callback::Other;
            r?;
        }
        Ok(self.verdict(ctx, false))
    }

    /// Takes the root context's http calls not yet started (counted in flight
    /// from now on) and where their responses go.
    pub fn take_root_calls(&mut self) -> (Vec<PendingCall>, CallResults) {
        let d = self.store.data_mut();
        let calls = std::mem::take(&mut d.root_calls);
        d.root_inflight += calls.len();
        (calls, Rc::clone(&d.root_results))
    }

    /// Whether root-context calls wait to be started or delivered.
    pub fn has_root_calls(&self) -> bool {
        let d = self.store.data();
        !d.root_calls.is_empty() || !d.root_results.borrow().is_empty()
    }

    /// Delivers finished root-context http calls:
    /// `proxy_on_http_call_response(root, token, headers, body_size, 0)`,
    /// with no request loaded (only the call response is readable).
    pub fn deliver_root_calls(&mut self) -> Result<(), Failure> {
        let results: Vec<(u32, CallResponse)> = self
            .store
            .data()
            .root_results
            .borrow_mut()
            .drain(..)
            .collect();
        for (token, resp) in results {
            let d = self.store.data_mut();
            d.root_inflight = d.root_inflight.saturating_sub(1);
            let ex = Rc::clone(&self.ex);
            let Some(f) = &ex.on_http_call_response else {
                continue;
            };
            let nh = len_u32(resp.headers.len());
            let nb = len_u32(resp.body.len());
            self.begin(ROOT_ID, Callback::CallResponse);
            self.store.data_mut().call_response = Some(resp);
            let r = guest_call(&mut self.store, self.ticks, f, (ROOT_ID, token, nh, nb, 0));
            let d = self.store.data_mut();
            d.call_response = None;
            d.callback = Callback::Other;
            r?;
        }
        Ok(())
    }

    /// Takes the http calls stream `ctx` dispatched and not yet started.
    pub fn take_calls(&mut self, ctx: u32) -> Vec<PendingCall> {
        match self.store.data_mut().streams.get_mut(&ctx) {
            Some(s) => {
                let calls = std::mem::take(&mut s.calls);
                s.inflight += calls.len();
                calls
            }
            None => Vec::new(),
        }
    }

    /// The waker of stream `ctx` (results of http calls, `proxy_continue_stream`).
    pub fn waker(&mut self, ctx: u32) -> Option<Rc<StreamWaker>> {
        self.store
            .data_mut()
            .streams
            .get_mut(&ctx)
            .map(|s| Rc::clone(s.waker.get_or_insert_with(Rc::default)))
    }

    /// The pause deadline of stream `ctx` and whether calls are still in flight.
    pub fn pause_state(&self, ctx: u32) -> Option<(Option<Instant>, usize)> {
        self.store
            .data()
            .streams
            .get(&ctx)
            .map(|s| (s.pause_deadline, s.inflight))
    }

    /// `proxy_on_log`, `proxy_on_done` and `proxy_on_delete` for stream `ctx`.
    pub fn finish_stream(&mut self, ctx: u32, txn: &Txn) -> Result<(), Failure> {
        if !self.has_stream(ctx) {
            return Ok(());
        }
        let ex = Rc::clone(&self.ex);
        if let Some(f) = &ex.on_log {
            self.begin(ctx, Callback::Other);
            let d = self.store.data_mut();
            d.io.load_for_log(txn);
            d.io_ctx = ctx;
            let r = guest_call(&mut self.store, self.ticks, f, ctx);
            let d = self.store.data_mut();
            d.io.reset();
            d.io_ctx = 0;
            if let Err(e) = r {
                self.store.data_mut().streams.remove(&ctx);
                return Err(e);
            }
        }
        self.destroy_stream(ctx)
    }

    /// `proxy_on_done` and `proxy_on_delete` for `ctx`, then forgets it.
    pub fn destroy_stream(&mut self, ctx: u32) -> Result<(), Failure> {
        if self.store.data_mut().streams.remove(&ctx).is_none() {
            return Ok(());
        }
        if let Some(pos) = self.order.iter().position(|c| *c == ctx) {
            self.order.remove(pos);
        }
        self.begin(ctx, Callback::Other);
        let ex = Rc::clone(&self.ex);
        if let Some(f) = &ex.on_done {
            guest_call(&mut self.store, self.ticks, f, ctx)?;
        }
        if let Some(f) = &ex.on_delete {
            guest_call(&mut self.store, self.ticks, f, ctx)?;
        }
        Ok(())
    }

    fn schedule_tick(&mut self) {
        self.next_tick = self.store.data().tick_period.map(|p| Instant::now() + p);
    }

    /// Wakes every paused stream (the instance is about to be dropped: their
    /// requests resume, find their context gone, and get `on_error` now
    /// instead of at the pause timeout).
    pub fn wake_all(&self) {
        for s in self.store.data().streams.values() {
            if let Some(w) = &s.waker {
                w.notify.notify_one();
            }
        }
    }

    /// Publishes counters batched in the instance (the worker does it every 100 ms).
    pub fn flush_stats(&mut self) {
        self.store.data_mut().flush_calls();
    }

    /// Whether [`Self::housekeeping`] has anything to look at (ticks or queues).
    pub fn wants_housekeeping(&self) -> bool {
        let d = self.store.data();
        d.tick_period.is_some() || self.next_tick.is_some() || !d.queues.is_empty()
    }

    /// Runs `proxy_on_tick` if the tick period has passed, and
    /// `proxy_on_queue_ready` for registered queues that received items.
    pub fn housekeeping(&mut self, now: Instant) -> Result<(), Failure> {
        let period = self.store.data().tick_period;
        match (period, self.next_tick) {
            (Some(p), Some(at)) if now >= at => {
                self.next_tick = Some(now + p);
                let ex = Rc::clone(&self.ex);
                if let Some(f) = &ex.on_tick {
                    self.begin(ROOT_ID, Callback::Other);
                    guest_call(&mut self.store, self.ticks, f, ROOT_ID)?;
                }
            }
            (Some(p), None) => self.next_tick = Some(now + p),
            (None, Some(_)) => self.next_tick = None,
            _ => {}
        }
        let generation = super::shared::queue_generation();
        if generation != self.queue_gen {
            self.queue_gen = generation;
            let ready: Vec<u32> = self
                .store
                .data()
                .queues
                .iter()
                .copied()
                .filter(|q| super::shared::queue_has_items(*q))
                .collect();
            let ex = Rc::clone(&self.ex);
            if let Some(f) = &ex.on_queue_ready {
                for q in ready {
                    self.begin(ROOT_ID, Callback::Other);
                    guest_call(&mut self.store, self.ticks, f, (ROOT_ID, q))?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for PluginInstance {
    fn drop(&mut self) {
        self.store.data_mut().flush_calls();
        self.live(false);
    }
}

/// A reply for [`Reply`] built from a guest's local response.
pub(crate) fn local_reply(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Reply {
    Reply {
        status,
        headers,
        body: Bytes::from(body),
        error_page: false,
    }
}

/// The failure of a hook called on a stream context the instance no longer has.
fn gone() -> Failure {
    Failure::new(
        FailKind::Trap,
        "the request's plugin context is gone (the instance was rebuilt)",
    )
}
