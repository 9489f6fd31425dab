//! The host state a plugin instance's store carries: the plugin's shared
//! parts, the resource limiter, the transaction buffers loaded into the store
//! for a callback, queued http calls, and the per-instance context data.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode, Uri, Version};
use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use super::failure::PluginStats;
use super::stream::StreamState;
use crate::txn::{Phase, Txn};
use crate::wasm::PluginSpec;
use crate::wasm::shared::{Metric, SharedData};

/// What all instances of one plugin share (across workers).
#[derive(Debug)]
pub struct PluginShared {
    pub spec: PluginSpec,
    pub shared_data: Arc<SharedData>,
    pub stats: PluginStats,
}

/// Enforces `memory_limit` and table limits on one store. Memory growth past
/// the limit fails the way the guest expects (`memory.grow` returns -1, as
/// in Envoy), so an allocator can fail gracefully; the refusal is recorded,
/// so a trap that follows in the same call counts as a memory-limit hit.
/// Table growth past its limit traps.
#[derive(Debug)]
pub struct Limiter {
    memory: usize,
    tables: usize,
    hit: bool,
    current: u64,
    total: Arc<AtomicU64>,
}

impl Limiter {
    pub(super) fn take_hit(&mut self) -> bool {
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
            // Ok(false): `memory.grow` returns -1 to the guest, nothing traps.
            return Ok(false);
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

    pub(super) fn load(&mut self, txn: &mut Txn) {
        self.swap_txn(txn);
        self.active = true;
        self.read_only = false;
        self.phase = Some(txn.phase);
        self.version = txn.version;
        self.client = Some(txn.client_addr);
        self.local = Some(txn.local_addr);
    }

    pub(super) fn unload(&mut self, txn: &mut Txn) {
        self.swap_txn(txn);
        self.reset();
    }

    pub(super) fn load_for_log(&mut self, txn: &Txn) {
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

    pub(super) fn reset(&mut self) {
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
    /// The backend called (Envoy's cluster).
    pub upstream: std::sync::Arc<crate::wasm::cluster::Cluster>,
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

/// Which buffers exist during the current callback besides bodies.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Callback {
    #[default]
    Other,
    VmStart,
    Configure,
    CallResponse,
    /// `proxy_on_grpc_receive`: the message is buffer type 5.
    GrpcReceive,
    /// `proxy_on_grpc_receive_initial_metadata`: map type 4.
    GrpcInitialMetadata,
    /// `proxy_on_grpc_receive_trailing_metadata`: map type 5.
    GrpcTrailingMetadata,
    /// `proxy_on_grpc_close`.
    GrpcClose,
}

/// One root context of the VM (one per plugin sharing it): its plugin and
/// what the root context does outside requests (ticks, queues, http calls).
pub struct RootState {
    /// The root context's id (1 for the VM's first plugin, then 2, 3, ...).
    pub id: u32,
    pub plugin: Arc<PluginShared>,
    /// Root-context http calls (e.g. from `proxy_on_tick`) not yet started:
    /// the worker starts them after the callback (see `filter::root_calls`).
    pub calls: Vec<PendingCall>,
    /// Root-context calls started and not yet delivered (with `calls`,
    /// bounded by `MAX_CALLS`).
    pub inflight: usize,
    /// Where started root-context calls leave their responses (per instance:
    /// a rebuilt instance never sees its predecessor's responses).
    pub results: CallResults,
    pub tick_period: Option<Duration>,
    pub next_tick: Option<std::time::Instant>,
    /// Queues this root context registered (`proxy_on_queue_ready` goes to it).
    pub queues: Vec<u32>,
    pub props: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RootState {
    pub(crate) fn new(id: u32, plugin: Arc<PluginShared>) -> RootState {
        RootState {
            id,
            plugin,
            calls: Vec::new(),
            inflight: 0,
            results: Rc::default(),
            tick_period: None,
            next_tick: None,
            queues: Vec::new(),
            props: Vec::new(),
        }
    }
}

/// The store's data: everything host functions reach.
pub struct HostState {
    pub limiter: Limiter,
    pub memory: Option<Memory>,
    /// The guest allocator (`Rc`: cloning a `TypedFunc` is not free, and host calls need it by value).
    pub malloc: Option<Rc<TypedFunc<u32, u32>>>,
    pub io: StreamIo,
    /// The stream whose transaction is loaded in `io` (0: none).
    pub io_ctx: u32,
    /// The context host calls act on (the callback's, or set by `proxy_set_effective_context`).
    pub effective: u32,
    /// The root context (plugin) of the current callback: host calls act
    /// for its plugin (configuration, upstreams, limits, logs, stats).
    pub root: RootState,
    /// The VM's other root contexts (plugins sharing it through `vm_id`),
    /// swapped with `root` when a callback of theirs runs (see [`Self::select`]).
    pub others: Vec<RootState>,
    pub callback: Callback,
    pub streams: IdMap<StreamState>,
    pub call_response: Option<CallResponse>,
    pub next_token: u32,
    /// gRPC calls and streams (`proxy_grpc_*`), see [`crate::wasm::grpc`].
    pub grpc: crate::wasm::grpc::GrpcState,
    pub metrics: HashMap<u32, Arc<Metric>>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub last_error: Option<String>,
    /// Guest calls not yet added to the shared `calls` counter: published in
    /// batches so workers do not contend on one cache line per call.
    pub calls_pending: u64,
    /// Drop the guest's log lines (the load-time probe of a TCP context,
    /// which a Go SDK module answers with a panic message).
    pub quiet: bool,
    /// Lines the guest logged, kept for a load error (the start-up check
    /// instance only: a plugin that rejects its config says why in its log).
    pub captured: Option<Vec<(u32, String)>>,
}

impl HostState {
    pub(crate) fn new(plugin: Arc<PluginShared>) -> HostState {
        let limits = plugin.spec.limits;
        let total = Arc::clone(&plugin.stats.memory_bytes);
        HostState {
            limiter: Limiter {
                memory: limits.memory,
                tables: limits.table_elements,
                hit: false,
                current: 0,
                total,
            },
            memory: None,
            malloc: None,
            io: StreamIo::default(),
            io_ctx: 0,
            effective: 0,
            root: RootState::new(ROOT_ID, plugin),
            others: Vec::new(),
            callback: Callback::Other,
            streams: IdMap::default(),
            call_response: None,
            next_token: 1,
            grpc: Default::default(),
            metrics: HashMap::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            last_error: None,
            calls_pending: 0,
            quiet: false,
            captured: None,
        }
    }

    /// Adds a root context for another plugin sharing the VM.
    pub(crate) fn add_root(&mut self, id: u32, plugin: Arc<PluginShared>) {
        self.others.push(RootState::new(id, plugin));
    }

    /// Whether `id` is one of the VM's root contexts.
    pub fn is_root(&self, id: u32) -> bool {
        self.root.id == id || self.others.iter().any(|r| r.id == id)
    }

    /// The root context `ctx` belongs to (itself for a root context).
    pub fn root_of(&self, ctx: u32) -> Option<u32> {
        if self.is_root(ctx) {
            return Some(ctx);
        }
        self.streams.get(&ctx).map(|s| s.root)
    }

    /// Makes root context `id` the current one (its plugin's settings and
    /// counters apply to the host calls that follow). False if there is none.
    pub fn select(&mut self, id: u32) -> bool {
        if self.root.id == id {
            return true;
        }
        let Some(other) = self.others.iter_mut().find(|r| r.id == id) else {
            return false;
        };
        // The batched call count belongs to the plugin it was counted for.
        let n = std::mem::take(&mut self.calls_pending);
        if n > 0 {
            self.root.plugin.stats.calls.fetch_add(n, Relaxed);
        }
        std::mem::swap(&mut self.root, other);
        true
    }

    /// Every root context's state, the current one included.
    pub fn roots(&self) -> impl Iterator<Item = &RootState> {
        std::iter::once(&self.root).chain(self.others.iter())
    }

    /// Adds the batched call count to the plugin's shared counter.
    pub fn flush_calls(&mut self) {
        let n = std::mem::take(&mut self.calls_pending);
        if n > 0 {
            self.root.plugin.stats.calls.fetch_add(n, Relaxed);
        }
    }

    /// Logs a line of the guest (`proxy_log`, stdout/stderr, `portcullis_v1.log`).
    pub fn guest_log(&mut self, level: u32, msg: &str, fields: &str) {
        if self.quiet {
            return;
        }
        if let Some(c) = self.captured.as_mut()
            && c.len() < MAX_CAPTURED
        {
            // Structured fields are part of what the operator must see
            // (`bad configuration reason="missing field ..."`).
            let line = if fields.is_empty() {
                msg.chars().take(512).collect()
            } else {
                format!("{msg} {fields}").chars().take(512).collect()
            };
            c.push((level, line));
        }
        crate::wasm::abi::proxy_wasm::emit(&self.root.plugin.spec.name, level, msg, fields);
    }

    /// Records a refused host call: counted, kept for `last_error`, logged at debug level.
    pub fn note_bad_call(&mut self, what: &str) {
        self.root.plugin.stats.bad_host_calls.fetch_add(1, Relaxed);
        tracing::debug!(plugin = %self.root.plugin.spec.name, "refused host call: {what}");
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

pub use crate::plugin::IdHasher;

/// A map keyed by small integer ids, hashed with [`IdHasher`].
pub type IdMap<V> = HashMap<u32, V, std::hash::BuildHasherDefault<IdHasher>>;

/// Most guest log lines kept for a load error.
const MAX_CAPTURED: usize = 32;

/// Most http calls one context may have queued or in flight (no unbounded queues).
pub const MAX_CALLS: usize = 16;

/// The first root context's id (the first context a module sees; a VM
/// shared by several plugins numbers their root contexts 1, 2, ...).
pub const ROOT_ID: u32 = 1;
