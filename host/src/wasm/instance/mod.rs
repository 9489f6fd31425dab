//! One live instance of a plugin (one per worker): its store with resource
//! limits, the guest exports cached as `TypedFunc`s, the root context and
//! the per-request stream contexts, and the calls into the guest.
//!
//! Every call into the guest goes through [`guest_call`](failure::guest_call),
//! which sets the epoch deadline first and turns any error into a [`Failure`]
//! with a [`FailureKind`]. A failure means the instance is dead: the owner drops
//! it and builds a new one (see [`super::filter`]).
//!
//! - `state`: the host state the store carries (limits, loaded transaction, contexts).
//! - `lifecycle`: build and start-up, root-context calls, housekeeping, teardown.
//! - `stream`: stream (HTTP) contexts, their hooks and verdicts.
//! - `failure`: failure kinds, per-plugin counters, `guest_call`.

mod failure;
mod grpc;
mod lifecycle;
mod state;
mod stream;

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use wasmtime::{Store, TypedFunc};

pub use failure::{Failure, FailureKind, GuestExit, PluginStats};
pub use state::{
    CallResponse, CallResults, Callback, HostState, IdHasher, IdMap, Limiter, MAX_CALLS,
    PendingCall, PluginShared, ROOT_ID, StreamIo,
};
pub(crate) use stream::local_reply;
pub use stream::{StreamState, StreamWaker, Verdict};

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
    on_grpc_receive_initial_metadata: Option<TypedFunc<(u32, u32, u32), ()>>,
    on_grpc_receive: Option<TypedFunc<(u32, u32, u32), ()>>,
    on_grpc_receive_trailing_metadata: Option<TypedFunc<(u32, u32, u32), ()>>,
    on_grpc_close: Option<TypedFunc<(u32, u32, u32), ()>>,
    on_new_connection: Option<TypedFunc<u32, u32>>,
}

/// One instance of a plugin.
pub struct PluginInstance {
    store: Store<HostState>,
    /// Shared with each call site by `Rc` (cloning a `TypedFunc` costs atomics in wasmtime's type registry).
    ex: Rc<Exports>,
    /// `_initialize` / `_start`, until start-up has run it.
    init: Option<TypedFunc<(), ()>>,
    ticks: u64,
    next_ctx: u32,
    order: VecDeque<u32>,
    queue_gen: u64,
    /// The plugins whose root contexts live in this VM (one, or several
    /// sharing a `vm_id`), in root-context order: each counts the instance.
    members: Vec<Arc<PluginShared>>,
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl PluginInstance {
    /// Sets up a callback on `ctx`: its root context (plugin) becomes the current one.
    fn begin(&mut self, ctx: u32, callback: Callback) {
        let d = self.store.data_mut();
        // Only a VM shared by several plugins has a root context to switch to.
        if !d.others.is_empty()
            && let Some(root) = d.root_of(ctx)
        {
            d.select(root);
        }
        d.effective = ctx;
        d.callback = callback;
    }

    /// The shared state of the plugin whose callback ran last (the one a
    /// failure is counted for).
    pub fn plugin(&self) -> &Arc<PluginShared> {
        &self.store.data().root.plugin
    }

    /// The VM's root context ids: one per plugin, numbered from [`ROOT_ID`].
    fn root_range(&self) -> std::ops::Range<u32> {
        ROOT_ID..ROOT_ID + len_u32(self.members.len())
    }

    /// The plugins sharing this VM, in root-context order.
    pub fn members(&self) -> &[Arc<PluginShared>] {
        &self.members
    }

    /// Current linear memory size in bytes.
    pub fn memory_size(&self) -> usize {
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }

    /// A copy of guest memory `ptr .. ptr + len` (empty where out of bounds), for tests.
    #[cfg(test)]
    pub(crate) fn guest_memory(&self, ptr: u32, len: u32) -> Vec<u8> {
        let Some(m) = self.store.data().memory else {
            return Vec::new();
        };
        let mem = m.data(&self.store);
        crate::wasm::memory::read(mem, ptr, len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Whether the module exports an HTTP request hook at all.
    pub fn has_http_hooks(&self) -> bool {
        self.ex.on_request_headers.is_some() || self.ex.on_response_headers.is_some()
    }
}
