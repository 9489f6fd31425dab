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
use super::state::{CallResponse, CallResults, Callback, HostState, PendingCall, ROOT_ID};
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
        let shared = Arc::clone(&plugin.shared);
        let ticks = deadline_ticks(shared.spec.limits.cpu);
        let mut state = HostState::new(Arc::clone(&shared));
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
        let inst = PluginInstance {
            store,
            ex: Rc::new(ex),
            init,
            ticks,
            next_ctx: ROOT_ID + 1,
            order: VecDeque::new(),
            next_tick: None,
            queue_gen: crate::wasm::shared::queue_generation(),
        };
        inst.live(true);
        Ok(inst)
    }

    /// Runs start-up: `_initialize` / `_start`, the root context,
    /// `proxy_on_vm_start` and `proxy_on_configure` (both must return true).
    fn start(&mut self) -> Result<(), Failure> {
        let inst = self;
        let ticks = inst.ticks;
        let shared = Arc::clone(inst.plugin());
        if let Some(f) = inst.init.take() {
            match guest_call(&mut inst.store, ticks, &f, ()) {
                Ok(()) => {}
                // A WASI command's `_start` ends with proc_exit(0): that is success.
                Err(e) if e.kind == FailureKind::Exit && e.message.contains("proc_exit(0)") => {}
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
                FailureKind::Init,
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
                FailureKind::Init,
                "proxy_on_configure returned false (the plugin rejected its config)",
            ));
        }
        inst.begin(ROOT_ID, Callback::Other);
        inst.schedule_tick();
        Ok(())
    }

    /// Stops keeping the guest's log lines and returns those kept so far.
    pub(crate) fn take_captured(&mut self) -> Vec<(u32, String)> {
        self.store.data_mut().captured.take().unwrap_or_default()
    }

    fn live(&self, up: bool) {
        let stats = &self.store.data().plugin.stats;
        if up {
            stats.instances_live.fetch_add(1, Relaxed);
        } else {
            stats.instances_live.fetch_sub(1, Relaxed);
        }
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
        let generation = crate::wasm::shared::queue_generation();
        if generation != self.queue_gen {
            self.queue_gen = generation;
            let ready: Vec<u32> = self
                .store
                .data()
                .queues
                .iter()
                .copied()
                .filter(|q| crate::wasm::shared::queue_has_items(*q))
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
