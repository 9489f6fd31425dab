//! Instance lifecycle: building an instance from the plugin's `InstancePre`
//! and running its start-up (root context, `proxy_on_vm_start`,
//! `proxy_on_configure`), root-context http calls, housekeeping (ticks and
//! queues) and teardown.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use wasmtime::{Store, TypedFunc};

use super::failure::{Failure, FailureKind, classify, guest_call};
use super::state::{
    CallResponse, CallResults, Callback, HostState, PendingCall, PluginShared, ROOT_ID,
};
use super::{Exports, PluginInstance, len_u32};
use crate::wasm::engine::deadline_ticks;
use crate::wasm::module::WasmPlugin;

impl PluginInstance {
    /// Instantiates `plugin` and runs its start-up: `_initialize` / `_start`,
    /// the root context, `proxy_on_vm_start` and `proxy_on_configure` (both must return true).
    pub fn new(plugin: &WasmPlugin) -> Result<PluginInstance, Failure> {
        let mut inst = Self::instantiate(plugin, false)?;
        inst.start()?;
        Ok(inst)
    }

    /// Like [`Self::new`], for the load-time check: the guest's log lines
    /// are kept, and on failure returned with it (a plugin that rejects its
    /// configuration logs why, and the operator must see it).
    pub(crate) fn new_captured(
        plugin: &WasmPlugin,
    ) -> Result<PluginInstance, (Failure, Vec<(u32, String)>)> {
        let mut inst = Self::instantiate(plugin, true).map_err(|f| (f, Vec::new()))?;
        match inst.start() {
            // Capturing goes on for the checks that follow (see `take_captured`).
            Ok(()) => Ok(inst),
            Err(f) => {
                let lines = inst.store.data_mut().captured.take().unwrap_or_default();
                Err((f, lines))
            }
        }
    }

    /// Instantiates `plugin` (no guest code runs but a start function) and resolves its exports.
    fn instantiate(plugin: &WasmPlugin, capture: bool) -> Result<PluginInstance, Failure> {
        // The VM's plugins: this one alone, or every plugin sharing its `vm_id`.
        let members: Vec<Arc<PluginShared>> = if plugin.members.is_empty() {
            vec![Arc::clone(&plugin.shared)]
        } else {
            plugin.members.clone()
        };
        let Some(first) = members.first().map(Arc::clone) else {
            return Err(Failure::new(FailureKind::Init, "a VM without plugins"));
        };
        // CPU and memory limits are the VM's: its plugins agree on them (checked at load).
        let ticks = deadline_ticks(first.spec.limits.cpu);
        let mut state = HostState::new(Arc::clone(&first));
        for (id, m) in (ROOT_ID + 1..).zip(members.iter().skip(1)) {
            state.add_root(id, Arc::clone(m));
        }
        if capture {
            state.captured = Some(Vec::new());
        }
        let mut store = Store::new(plugin.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(ticks);
        let instance = plugin
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify(&mut store, &e))?;
        for m in &members {
            m.stats.instances_built.fetch_add(1, Relaxed);
        }
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
            on_grpc_receive_initial_metadata: get!("proxy_on_grpc_receive_initial_metadata"),
            on_grpc_receive: get!("proxy_on_grpc_receive"),
            on_grpc_receive_trailing_metadata: get!("proxy_on_grpc_receive_trailing_metadata"),
            on_grpc_close: get!("proxy_on_grpc_close"),
            on_new_connection: get!("proxy_on_new_connection"),
        };
        let init: Option<TypedFunc<(), ()>> = instance
            .get_typed_func(&mut store, "_initialize")
            .or_else(|_| instance.get_typed_func(&mut store, "_start"))
            .ok();
        let inst = PluginInstance {
            store,
            ex: Rc::new(ex),
            init,
            ticks,
            next_ctx: ROOT_ID + len_u32(members.len()),
            order: VecDeque::new(),
            queue_gen: crate::wasm::shared::queue_generation(),
            members,
        };
        inst.live(true);
        Ok(inst)
    }

    /// Runs start-up: `_initialize` / `_start`, the root context,
    /// `proxy_on_vm_start` and `proxy_on_configure` (both must return true).
    fn start(&mut self) -> Result<(), Failure> {
        let inst = self;
        let ticks = inst.ticks;
        if let Some(f) = inst.init.take() {
            match guest_call(&mut inst.store, ticks, &f, ()) {
                Ok(()) => {}
                // A WASI command's `_start` ends with proc_exit(0): that is success.
                Err(e) if e.kind == FailureKind::Exit && e.message.contains("proc_exit(0)") => {}
                Err(e) => return Err(e),
            }
        }
        // One root context per plugin, each started as Envoy starts a
        // plugin in a VM: context created, `proxy_on_vm_start` (called for
        // each plugin, with the VM configuration), `proxy_on_configure`.
        let shared_vm = inst.members.len() > 1;
        for root in inst.root_range() {
            inst.start_root(root, ticks).map_err(|mut f| {
                if shared_vm {
                    let name = &inst.store.data().root.plugin.spec.name;
                    f.message = format!("plugin {name:?}: {}", f.message);
                }
                f
            })?;
        }
        inst.begin(ROOT_ID, Callback::Other);
        Ok(())
    }

    /// Creates root context `root` and runs its `proxy_on_vm_start` and `proxy_on_configure`.
    fn start_root(&mut self, root: u32, ticks: u64) -> Result<(), Failure> {
        let inst = self;
        inst.begin(root, Callback::Other);
        let shared = Arc::clone(inst.plugin());
        let ex = Rc::clone(&inst.ex);
        if let Some(f) = &ex.on_context_create {
            guest_call(&mut inst.store, ticks, f, (root, 0))?;
        }
        let vm_len = len_u32(shared.spec.vm_config.len());
        inst.begin(root, Callback::VmStart);
        if let Some(f) = &ex.on_vm_start
            && guest_call(&mut inst.store, ticks, f, (root, vm_len))? == 0
        {
            return Err(Failure::new(
                FailureKind::Init,
                "proxy_on_vm_start returned false (the plugin rejected its vm_config)",
            ));
        }
        let cfg_len = len_u32(shared.spec.config.len());
        inst.begin(root, Callback::Configure);
        if let Some(f) = &ex.on_configure
            && guest_call(&mut inst.store, ticks, f, (root, cfg_len))? == 0
        {
            return Err(Failure::new(
                FailureKind::Init,
                "proxy_on_configure returned false (the plugin rejected its config)",
            ));
        }
        inst.begin(root, Callback::Other);
        let d = inst.store.data_mut();
        d.root.next_tick = d.root.tick_period.map(|p| Instant::now() + p);
        Ok(())
    }

    /// Stops keeping the guest's log lines and returns those kept so far.
    pub(crate) fn take_captured(&mut self) -> Vec<(u32, String)> {
        self.store.data_mut().captured.take().unwrap_or_default()
    }

    fn live(&self, up: bool) {
        for m in &self.members {
            if up {
                m.stats.instances_live.fetch_add(1, Relaxed);
            } else {
                m.stats.instances_live.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Takes every root context's http calls not yet started (counted in
    /// flight from now on) with where their responses go.
    pub fn take_root_calls(&mut self) -> Vec<(Vec<PendingCall>, CallResults)> {
        let d = self.store.data_mut();
        std::iter::once(&mut d.root)
            .chain(d.others.iter_mut())
            .filter(|r| !r.calls.is_empty())
            .map(|r| {
                let calls = std::mem::take(&mut r.calls);
                r.inflight += calls.len();
                (calls, Rc::clone(&r.results))
            })
            .collect()
    }

    /// Whether root-context calls wait to be started or delivered.
    pub fn has_root_calls(&self) -> bool {
        self.store
            .data()
            .roots()
            .any(|r| !r.calls.is_empty() || !r.results.borrow().is_empty())
    }

    /// Delivers finished root-context http calls, each to the root context
    /// that made it: `proxy_on_http_call_response(root, token, headers,
    /// body_size, 0)`, with no request loaded (only the call response is readable).
    pub fn deliver_root_calls(&mut self) -> Result<(), Failure> {
        for root in self.root_range() {
            self.begin(root, Callback::Other);
            let results: Vec<(u32, CallResponse)> = self
                .store
                .data()
                .root
                .results
                .borrow_mut()
                .drain(..)
                .collect();
            for (token, resp) in results {
                let d = self.store.data_mut();
                d.root.inflight = d.root.inflight.saturating_sub(1);
                let ex = Rc::clone(&self.ex);
                let Some(f) = &ex.on_http_call_response else {
                    continue;
                };
                let nh = len_u32(resp.headers.len());
                let nb = len_u32(resp.body.len());
                self.begin(root, Callback::CallResponse);
                self.store.data_mut().call_response = Some(resp);
                let r = guest_call(&mut self.store, self.ticks, f, (root, token, nh, nb, 0));
                let d = self.store.data_mut();
                d.call_response = None;
                d.callback = Callback::Other;
                r?;
            }
        }
        Ok(())
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
        self.store
            .data()
            .roots()
            .any(|r| r.tick_period.is_some() || r.next_tick.is_some() || !r.queues.is_empty())
    }

    /// Runs `proxy_on_tick` of each root context whose tick period has
    /// passed, and `proxy_on_queue_ready` for registered queues that received
    /// items (on the root context that registered the queue).
    pub fn housekeeping(&mut self, now: Instant) -> Result<(), Failure> {
        let generation = crate::wasm::shared::queue_generation();
        let queues_changed = generation != self.queue_gen;
        self.queue_gen = generation;
        let ex = Rc::clone(&self.ex);
        for root in self.root_range() {
            self.begin(root, Callback::Other);
            let r = &mut self.store.data_mut().root;
            match (r.tick_period, r.next_tick) {
                (Some(p), Some(at)) if now >= at => {
                    r.next_tick = Some(now + p);
                    if let Some(f) = &ex.on_tick {
                        guest_call(&mut self.store, self.ticks, f, root)?;
                    }
                }
                (Some(p), None) => r.next_tick = Some(now + p),
                (None, Some(_)) => r.next_tick = None,
                _ => {}
            }
            if !queues_changed {
                continue;
            }
            let ready: Vec<u32> = self
                .store
                .data()
                .root
                .queues
                .iter()
                .copied()
                .filter(|q| crate::wasm::shared::queue_has_items(*q))
                .collect();
            if let Some(f) = &ex.on_queue_ready {
                for q in ready {
                    self.begin(root, Callback::Other);
                    guest_call(&mut self.store, self.ticks, f, (root, q))?;
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
