//! [`WasmFilter`]: a Wasm plugin as a rule action, with one Proxy-Wasm
//! stream context per request spanning the request and response phases.
//!
//! Instances live in a worker-local registry (one per VM per worker, keyed
//! by [`WasmPlugin::vm_key`]: a plugin's own, or one shared through `vm_id`;
//! built from the plugin's `InstancePre` when the worker starts, as Envoy
//! starts each worker's VM, so ticks run with no traffic). A failed call kills the
//! instance; the request gets the plugin's `on_error` policy, the failure is
//! logged and counted, and the next instance is built only after an
//! exponential back-off, so a crash-looping plugin cannot burn the CPU.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use super::OnError;
use super::instance::{
    CallResponse, Failure, FailureKind, IdHasher, PendingCall, PluginInstance, PluginShared,
    StreamWaker, Verdict,
};
use super::module::WasmPlugin;
use crate::error::ErrorSource;
use crate::filter::{BodyFlow, BodyLimits, BodyTap, Filter, Flow, Phases, WaitFuture};
use crate::txn::{Phase, Txn};

/// One worker's instance of one plugin ([`crate::plugin::Slot`]: instance,
/// generation, back-off) and the plugin, so housekeeping can rebuild a dead
/// instance without a request.
#[derive(Default)]
struct Slot {
    plugin: Option<Arc<WasmPlugin>>,
    worker: crate::plugin::Slot<PluginInstance>,
}

impl std::ops::Deref for Slot {
    type Target = crate::plugin::Slot<PluginInstance>;
    fn deref(&self) -> &Self::Target {
        &self.worker
    }
}

impl std::ops::DerefMut for Slot {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.worker
    }
}

thread_local! {
    /// Per-worker instances, keyed by plugin id.
    static SLOTS: RefCell<HashMap<u64, Slot, BuildHasherDefault<IdHasher>>> =
        RefCell::new(HashMap::default());
}

/// A request's stream context: which one, in which instance generation.
#[derive(Debug, Clone, Copy)]
struct CtxRef {
    ctx: u32,
    generation: u64,
}

thread_local! {
    /// Contexts whose request went away without its log hook (client gone
    /// mid-request, a failed hook): destroyed at the plugin's next use.
    static ORPHANS: RefCell<Vec<(u64, CtxRef)>> = const { RefCell::new(Vec::new()) };
}

/// What a request holds in `txn.plugin_state`: dropping it (with the
/// transaction) hands a still-live context to [`ORPHANS`].
#[derive(Debug)]
struct Held {
    plugin: u64,
    cref: CtxRef,
    /// Set once the log hook finished the context (nothing left to clean up).
    done: std::cell::Cell<bool>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.done.get() {
            return;
        }
        // `try_with`: a transaction dropped during thread teardown just forgets it.
        let _ = ORPHANS.try_with(|o| {
            if let Ok(mut o) = o.try_borrow_mut() {
                o.push((self.plugin, self.cref));
            }
        });
    }
}

static NEXT_FILTER: AtomicU64 = AtomicU64::new(1 << 40);

/// A `{ wasm = "<plugin>" }` rule: runs the plugin's HTTP context hooks.
pub struct WasmFilter {
    plugin: Arc<WasmPlugin>,
    /// Keys this rule's per-request context (a plugin may appear in several rules).
    key: u64,
    /// The list the rule was declared in: a request rule also sees the response.
    declared: Phase,
    /// The rule's `metadata` (Envoy's route metadata).
    metadata: Option<crate::config::Metadata>,
}

impl std::fmt::Debug for WasmFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmFilter")
            .field("plugin", &self.plugin.name())
            .field("declared", &self.declared)
            .finish()
    }
}

/// What one hook run ended with.
enum Outcome {
    Verdict(Verdict),
    Fail(Failure),
}

impl WasmFilter {
    /// A filter running `plugin` for a rule declared in the `declared` list.
    pub fn new(
        plugin: Arc<WasmPlugin>,
        declared: Phase,
        metadata: Option<crate::config::Metadata>,
    ) -> WasmFilter {
        WasmFilter {
            plugin,
            key: NEXT_FILTER.fetch_add(1, Relaxed),
            declared,
            metadata,
        }
    }

    /// The plugin this filter runs.
    pub fn plugin(&self) -> &Arc<WasmPlugin> {
        &self.plugin
    }

    /// Runs `f` on this worker's live instance, building it first if allowed.
    fn with_instance<T>(
        &self,
        f: impl FnOnce(&mut PluginInstance, u64) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        self.with_instance_opt(true, f)
    }

    /// Like [`Self::with_instance`]; `build = false` never builds (log hooks of dead contexts).
    fn with_instance_opt<T>(
        &self,
        build: bool,
        f: impl FnOnce(&mut PluginInstance, u64) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        SLOTS.with(|slots| {
            let mut slots = slots.borrow_mut();
            let slot = slots.entry(self.plugin.vm_key).or_default();
            if slot.inst.is_none() {
                if !build {
                    return Err(gone());
                }
                build_instance(&self.plugin, slot)?;
            }
            let generation = slot.generation;
            let Some(inst) = slot.inst.as_mut() else {
                return Err(Failure::new(FailureKind::Init, "no instance"));
            };
            if let Err(e) = reap(self.plugin.vm_key, generation, inst) {
                record(self.plugin.shared(), slot, &e);
                return Err(e);
            }
            let Some(inst) = slot.inst.as_mut() else {
                return Err(Failure::new(FailureKind::Init, "no instance"));
            };
            // A successful call does not reset the back-off: a request that
            // fails later (a loop in its second hook) would keep it at its
            // minimum. Only a request finished on a live instance does (`on_log`).
            let r = match f(inst, generation) {
                Ok(v) => Ok(v),
                Err(e) => {
                    record(self.plugin.shared(), slot, &e);
                    Err(e)
                }
            };
            // gRPC calls the hook made start now (a dead instance took them along).
            if let Some(inst) = slot.inst.as_mut() {
                spawn_grpc(self.plugin.vm_key, inst);
            }
            r
        })
    }

    /// Resets the rebuild back-off of this worker's instance, if it is still
    /// the `generation` a request just finished on.
    fn reset_backoff(&self, generation: u64) {
        let _ = SLOTS.try_with(|slots| {
            if let Ok(mut slots) = slots.try_borrow_mut()
                && let Some(slot) = slots.get_mut(&self.plugin.vm_key)
                && slot.generation == generation
            {
                slot.backoff.reset();
            }
        });
    }

    /// The failure response (or pass-through) for a failed hook.
    fn on_error(&self, txn: &mut Txn, f: &Failure) -> Flow {
        // Dropping the held context queues it for destruction (if the instance lives on).
        drop(txn.plugin_state.take::<Held>(self.key));
        let stats = &self.plugin.shared().stats;
        stats.failed_requests.fetch_add(1, Relaxed);
        tracing::debug!(plugin = %self.plugin.name(), "request handled by on_error: {f}");
        match self.plugin.shared().spec.on_error {
            OnError::FailOpen => Flow::Continue,
            OnError::FailClosed => Flow::Respond(ErrorSource::Plugin(f.kind.failure()).reply()),
        }
    }

    /// Turns a hook's outcome into a flow (waiting for http calls or a resume on `Pause`).
    fn flow(&self, txn: &mut Txn, cref: CtxRef, out: Outcome) -> Flow {
        match out {
            Outcome::Fail(f) => self.on_error(txn, &f),
            Outcome::Verdict(Verdict::Continue) => Flow::Continue,
            Outcome::Verdict(Verdict::Respond(r)) => Flow::Respond(r),
            Outcome::Verdict(Verdict::Pause) => {
                let r = self.with_instance(|inst, generation| {
                    if generation != cref.generation {
                        return Err(gone());
                    }
                    let (deadline, _) = inst.pause_state(cref.ctx).ok_or_else(gone)?;
                    let waker = inst.waker(cref.ctx).ok_or_else(gone)?;
                    let deadline = deadline.unwrap_or_else(|| {
                        Instant::now() + self.plugin.shared().spec.limits.pause_timeout
                    });
                    Ok((inst.take_calls(cref.ctx), waker, deadline))
                });
                match r {
                    Ok((calls, waker, deadline)) => Flow::Wait(wait(calls, waker, deadline)),
                    Err(f) => self.on_error(txn, &f),
                }
            }
        }
    }

    /// Runs a body hook of the request's context and turns its outcome into a body flow.
    fn body_flow(
        &self,
        txn: &mut Txn,
        call: impl FnOnce(&mut PluginInstance, CtxRef, &mut Txn) -> Result<Option<Verdict>, Failure>,
    ) -> BodyFlow {
        let Some(cref) = self.current(txn) else {
            return BodyFlow::Continue;
        };
        let out = self.with_instance(|inst, generation| {
            if generation != cref.generation {
                return Err(gone());
            }
            call(inst, cref, txn)
        });
        match out {
            Ok(None) => BodyFlow::StopAndBuffer,
            // Let go mid-body: what was read goes first, the rest streams
            // past, each further chunk through the body hook (as in Envoy).
            Ok(Some(Verdict::Continue)) => BodyFlow::Continue,
            Ok(Some(v)) => match self.flow(txn, cref, Outcome::Verdict(v)) {
                Flow::Continue => BodyFlow::Continue,
                Flow::Respond(r) => BodyFlow::Respond(r),
                Flow::Wait(f) => BodyFlow::Wait(f),
            },
            Err(f) => match self.on_error(txn, &f) {
                Flow::Respond(r) => BodyFlow::Respond(r),
                _ => BodyFlow::Continue,
            },
        }
    }

    /// The tap that runs the body hook on each later chunk of a body this
    /// request's context let go on before its end.
    fn tap(&self, txn: &Txn) -> Option<Box<dyn BodyTap>> {
        let cref = self.current(txn)?;
        Some(Box::new(WasmTap {
            plugin: self.plugin.vm_key,
            cref,
            phase: txn.phase,
            fail_open: matches!(self.plugin.shared().spec.on_error, OnError::FailOpen),
            failed: false,
        }))
    }

    /// Whether `cref`'s instance is still this worker's live one.
    fn is_live(&self, cref: CtxRef) -> bool {
        SLOTS.with(|slots| {
            slots.try_borrow().is_ok_and(|slots| {
                slots
                    .get(&self.plugin.id)
                    .is_some_and(|s| s.inst.is_some() && s.generation == cref.generation)
            })
        })
    }

    fn current(&self, txn: &Txn) -> Option<CtxRef> {
        txn.plugin_state.peek::<Held>(self.key).map(|h| h.cref)
    }

    /// Creates the request's context and runs the phase's header hook.
    fn start(&self, txn: &mut Txn) -> Flow {
        let r = self.with_instance(|inst, generation| {
            if inst.wants_housekeeping() {
                inst.housekeeping(Instant::now())?;
            }
            let ctx = inst.create_stream(self.plugin.root_ctx)?;
            inst.set_route_metadata(ctx, [self.metadata.clone(), txn.frontend_metadata.clone()]);
            Ok(CtxRef { ctx, generation })
        });
        let cref = match r {
            Ok(c) => c,
            Err(f) => return self.on_error(txn, &f),
        };
        txn.plugin_state.put(
            self.key,
            Box::new(Held {
                plugin: self.plugin.vm_key,
                cref,
                done: std::cell::Cell::new(false),
            }),
        );
        self.headers(txn, cref)
    }

    fn headers(&self, txn: &mut Txn, cref: CtxRef) -> Flow {
        let out = self.with_instance(|inst, generation| {
            if generation != cref.generation {
                return Err(gone());
            }
            match txn.phase {
                Phase::Request => {
                    let eos = no_body(&txn.req_headers);
                    inst.request_headers(cref.ctx, txn, eos)
                }
                Phase::Response => inst.response_headers(cref.ctx, txn, false),
            }
        });
        let out = out.map_or_else(Outcome::Fail, Outcome::Verdict);
        self.flow(txn, cref, out)
    }

    fn run_phase(&self, txn: &mut Txn) -> Flow {
        match self.current(txn) {
            // On a local reply, a context whose instance died since (this
            // request's own failure, e.g. a trapping body tap) is skipped,
            // as Envoy skips a stream that failed.
            Some(cref) if txn.local_reply && !self.is_live(cref) => {
                drop(txn.plugin_state.take::<Held>(self.key));
                Flow::Continue
            }
            Some(cref) => self.headers(txn, cref),
            // A request rule whose condition did not hold (or that failed open) has no context.
            None if self.declared == Phase::Request && txn.phase == Phase::Response => {
                Flow::Continue
            }
            None => self.start(txn),
        }
    }
}

/// Runs a plugin's body hook on each chunk of a body it let go on before
/// its end (see [`crate::proxy::body::BodyTap`]).
#[derive(Debug)]
struct WasmTap {
    plugin: u64,
    cref: CtxRef,
    phase: Phase,
    fail_open: bool,
    /// The hook failed once: the rest passes untouched (fail_open) and the
    /// request is counted once in `failed_requests`.
    failed: bool,
}

impl BodyTap for WasmTap {
    fn data(
        &mut self,
        data: bytes::Bytes,
        eos: bool,
    ) -> Result<bytes::Bytes, crate::filter::BoxError> {
        if self.failed {
            return Ok(data);
        }
        let r = SLOTS.try_with(|slots| {
            let Ok(mut slots) = slots.try_borrow_mut() else {
                return Err(gone());
            };
            let Some(slot) = slots.get_mut(&self.plugin) else {
                return Err(gone());
            };
            if slot.generation != self.cref.generation {
                return Err(gone());
            }
            let Some(inst) = slot.inst.as_mut() else {
                return Err(gone());
            };
            match inst.body_chunk_detached(self.cref.ctx, self.phase, data.to_vec(), eos) {
                Ok((out, Verdict::Respond(_))) => {
                    drop(out);
                    inst.plugin().stats.failed_requests.fetch_add(1, Relaxed);
                    Err(Failure::new(
                        FailureKind::BadReturn,
                        "local response after the body was let go on: the stream is aborted",
                    ))
                }
                Ok((out, _)) => {
                    spawn_grpc(self.plugin, inst);
                    Ok(out)
                }
                Err(e) => {
                    let shared = Arc::clone(inst.plugin());
                    shared.stats.failed_requests.fetch_add(1, Relaxed);
                    record(&shared, slot, &e);
                    Err(e)
                }
            }
        });
        if !matches!(r, Ok(Ok(_))) {
            self.failed = true;
        }
        match r {
            Ok(Ok(out)) => Ok(bytes::Bytes::from(out)),
            // The headers went out already: on_error can only pass the rest or abort.
            Ok(Err(_)) | Err(_) if self.fail_open => Ok(data),
            Ok(Err(f)) => Err(f.to_string().into()),
            Err(_) => Err("worker shutting down".into()),
        }
    }
}

/// Destroys this plugin's orphaned contexts of the live instance generation.
fn reap(plugin: u64, generation: u64, inst: &mut PluginInstance) -> Result<(), Failure> {
    let mine: Vec<CtxRef> = ORPHANS.with(|o| {
        let mut o = o.borrow_mut();
        if o.is_empty() {
            return Vec::new();
        }
        let mut mine = Vec::new();
        o.retain(|(p, c)| {
            if *p == plugin {
                mine.push(*c);
                false
            } else {
                true
            }
        });
        mine
    });
    for c in mine {
        if c.generation == generation {
            // A context already finished by its log hook is unknown: a no-op.
            inst.destroy_stream(c.ctx)?;
        }
    }
    Ok(())
}

fn gone() -> Failure {
    Failure::new(
        FailureKind::Trap,
        "the request's plugin context is gone (the instance was rebuilt)",
    )
}

/// Builds `plugin`'s instance in `slot` unless a recent failure's back-off
/// is still running (a failure is counted and starts the next back-off).
fn build_instance(plugin: &Arc<WasmPlugin>, slot: &mut Slot) -> Result<(), Failure> {
    if slot.plugin.is_none() {
        slot.plugin = Some(Arc::clone(plugin));
    }
    if !slot.backoff.ready(Instant::now()) {
        return Err(Failure::new(
            FailureKind::Init,
            "the plugin failed recently; its instance is being rebuilt after a back-off",
        ));
    }
    let stats = &plugin.shared().stats;
    if slot.generation > 0 {
        stats.rebuilds.fetch_add(1, Relaxed);
    }
    match PluginInstance::new(plugin) {
        Ok(i) => {
            slot.install(i);
            Ok(())
        }
        Err(e) => {
            let e = Failure::new(
                FailureKind::Init,
                format!("cannot rebuild the instance: {e}"),
            );
            record(plugin.shared(), slot, &e);
            Err(e)
        }
    }
}

/// Builds this worker's instance of every plugin (at worker start): the
/// root context, `proxy_on_vm_start` and `proxy_on_configure` run before the
/// first request, so a tick period set in `on_configure` ticks with no
/// traffic, as in Envoy. A failure is logged and counted and the instance is
/// rebuilt after the back-off (by housekeeping or a request); the worker
/// serves either way. A singleton service (a plugin no rule runs) gets its
/// one instance on worker 0 only; housekeeping there ticks and rebuilds it.
pub fn start_worker(plugins: &[Arc<WasmPlugin>], worker: usize) {
    SLOTS.with(|slots| {
        let Ok(mut slots) = slots.try_borrow_mut() else {
            return;
        };
        for p in plugins {
            let spec = &p.shared().spec;
            // A VM shared through `vm_id` is built once, for its first plugin.
            if p.root_ctx != super::instance::ROOT_ID
                || (spec.root_only && spec.singleton && worker != 0)
            {
                continue;
            }
            let slot = slots.entry(p.vm_key).or_default();
            if slot.inst.is_none() {
                // Failures were recorded (and logged) by `build_instance`.
                let _ = build_instance(p, slot);
            }
            // on_vm_start / on_configure may have called out already.
            root_calls(slot);
        }
    });
}

/// Delivers the root context's finished http calls and starts its queued
/// ones on this worker's `LocalSet`; each finished call delivers at once
/// (or at the next housekeeping if the registry is busy). Only called from
/// tasks of a worker's `LocalSet` (start-up, housekeeping, a finished call),
/// where `spawn_local` is allowed.
fn root_calls(slot: &mut Slot) {
    let Some(plugin) = slot.plugin.as_ref().map(|p| p.vm_key) else {
        return;
    };
    let Some(inst) = slot.inst.as_mut() else {
        return;
    };
    if !inst.has_root_calls() {
        spawn_grpc(plugin, inst);
        return;
    }
    if let Err(e) = inst.deliver_root_calls() {
        let shared = Arc::clone(inst.plugin());
        record(&shared, slot, &e);
        return;
    }
    for (calls, results) in inst.take_root_calls() {
        for c in calls {
            let results = Rc::clone(&results);
            tokio::task::spawn_local(async move {
                let token = c.token;
                let resp = http_call(c).await;
                results.borrow_mut().push((token, resp));
                deliver_root(plugin);
            });
        }
    }
    // gRPC calls made before or in the responses' callbacks.
    spawn_grpc(plugin, inst);
}

/// Starts the gRPC calls `inst` queued, each as a task on this worker's
/// `LocalSet` (only called from its tasks, where `spawn_local` is allowed).
fn spawn_grpc(vm_key: u64, inst: &mut PluginInstance) {
    if !inst.has_grpc_starts() {
        return;
    }
    for s in inst.take_grpc_starts() {
        tokio::task::spawn_local(super::grpc::run(s, vm_key));
    }
}

/// A gRPC call of the VM `vm_key` reported events: deliver them now if
/// this worker's registry is free (else housekeeping does within 100 ms).
pub fn deliver_grpc(vm_key: u64) {
    let _ = SLOTS.try_with(|slots| {
        let Ok(mut slots) = slots.try_borrow_mut() else {
            return;
        };
        let Some(slot) = slots.get_mut(&vm_key) else {
            return;
        };
        grpc_events(vm_key, slot);
    });
}

/// Routes the instance's gRPC events (delivering or parking them) and starts the calls they made.
fn grpc_events(vm_key: u64, slot: &mut Slot) {
    let Some(inst) = slot.inst.as_mut() else {
        return;
    };
    if let Err(e) = inst.route_grpc() {
        let shared = Arc::clone(inst.plugin());
        record(&shared, slot, &e);
        return;
    }
    spawn_grpc(vm_key, inst);
    // Root-context http calls a gRPC callback made start now too.
    root_calls(slot);
}

/// A root-context call of `plugin` finished: deliver it now if this
/// worker's registry is free (else housekeeping does within 100 ms).
fn deliver_root(plugin: u64) {
    let _ = SLOTS.try_with(|slots| {
        let Ok(mut slots) = slots.try_borrow_mut() else {
            return;
        };
        if let Some(slot) = slots.get_mut(&plugin) {
            root_calls(slot);
        }
    });
}

/// Runs due `proxy_on_tick` / `proxy_on_queue_ready` callbacks of this
/// worker's live instances, and rebuilds dead ones whose back-off is over. The worker's housekeeping task calls it every
/// 100 ms, so ticks also run on a worker that handles no requests.
pub fn housekeeping(plugins: &[Arc<WasmPlugin>]) {
    let now = Instant::now();
    SLOTS.with(|slots| {
        let Ok(mut slots) = slots.try_borrow_mut() else {
            return;
        };
        // Only this runtime's plugins: a runtime being replaced (a reload)
        // keeps its own until it stops.
        for p in plugins {
            // A shared VM is looked after once, through its first plugin.
            if p.root_ctx != super::instance::ROOT_ID {
                continue;
            }
            let Some(slot) = slots.get_mut(&p.vm_key) else {
                continue;
            };
            if slot.inst.is_none()
                && slot.backoff.ready(now)
                && let Some(p) = slot.plugin.clone()
            {
                // Failures were recorded (and logged) by `build_instance`.
                let _ = build_instance(&p, slot);
            }
            let Some(inst) = slot.inst.as_mut() else {
                continue;
            };
            inst.flush_stats();
            if inst.wants_housekeeping()
                && let Err(e) = inst.housekeeping(now)
            {
                let shared = Arc::clone(inst.plugin());
                record(&shared, slot, &e);
            }
            // Calls the root context made in on_tick (or, through
            // proxy_set_effective_context, in a stream callback) start now.
            root_calls(slot);
            // gRPC events a busy registry could not take when they came.
            grpc_events(p.vm_key, slot);
        }
    });
}

/// Drops this worker's instances of `plugins` (when the worker, or the
/// runtime they belong to, stops); other runtimes' instances stay.
pub fn clear_worker(plugins: &[Arc<WasmPlugin>]) {
    let _ = SLOTS.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            for p in plugins {
                s.remove(&p.vm_key);
            }
        }
    });
    let _ = ORPHANS.try_with(|o| {
        if let Ok(mut o) = o.try_borrow_mut() {
            o.retain(|(id, _)| plugins.iter().all(|p| p.vm_key != *id));
        }
    });
}

/// Counts a failure, and kills the instance (with back-off) if its state is suspect.
fn record(plugin: &PluginShared, slot: &mut Slot, f: &Failure) {
    let stats = &plugin.stats;
    stats.count_failure(f.kind);
    // Rate-limited per plugin and kind (plugin::lograte); every failure is counted.
    let line = stats.failures.log_line(f.kind);
    if f.kind.kills_instance() {
        let (old, backoff) = slot.kill(Instant::now());
        // A VM shared through `vm_id` goes for all its plugins, as in Envoy.
        let mut shared_with = String::new();
        if let Some(inst) = old {
            inst.wake_all();
            let others: Vec<&str> = inst
                .members()
                .iter()
                .map(|m| m.spec.name.as_str())
                .filter(|n| *n != plugin.spec.name)
                .collect();
            if !others.is_empty() {
                shared_with = format!(
                    " (the VM {:?} of plugins {} too)",
                    plugin.spec.vm_id,
                    others.join(", ")
                );
            }
        }
        if let Some(more) = line {
            tracing::warn!(
                plugin = %plugin.spec.name,
                kind = f.kind.name(),
                backoff_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                "wasm plugin failed, instance dropped{shared_with}: {}{more}", f.message
            );
        }
    } else if let Some(more) = line {
        tracing::warn!(plugin = %plugin.spec.name, kind = f.kind.name(), "wasm plugin call failed: {}{more}", f.message);
    }
}

/// Whether a request head announces no body.
fn no_body(h: &http::HeaderMap) -> bool {
    !h.contains_key(http::header::TRANSFER_ENCODING)
        && h.get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0")
}

/// Starts the stream's http calls and waits until one finishes, the guest
/// resumes the stream, a gRPC event comes for it, or the pause deadline.
fn wait(calls: Vec<PendingCall>, waker: Rc<StreamWaker>, deadline: Instant) -> WaitFuture {
    Box::pin(async move {
        let sleep = tokio::time::sleep_until(deadline.into());
        // Each call runs on its own and wakes the stream with its response
        // (delivered as it comes, as in Envoy): a wake-up for something else
        // (a gRPC event, the guest resuming) does not drop calls in flight.
        for c in calls {
            let waker = Rc::clone(&waker);
            tokio::task::spawn_local(async move {
                let token = c.token;
                let resp = http_call(c).await;
                waker.results.borrow_mut().push((token, resp));
                waker.notify.notify_one();
            });
        }
        tokio::select! {
            () = waker.notify.notified() => {}
            () = sleep => {}
        }
    })
}

/// Runs one `proxy_http_call` over a fresh HTTP/1.1 connection to a server
/// of its cluster; an empty response on failure (Envoy's `onFailure`), a
/// `503` "no healthy upstream" when no server takes traffic (Envoy's local
/// reply).
async fn http_call(c: PendingCall) -> CallResponse {
    match tokio::time::timeout(c.timeout, http_call_inner(&c)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!("wasm http call to {} failed: {e}", c.upstream.name);
            CallResponse::default()
        }
        Err(_) => CallResponse::default(),
    }
}

async fn http_call_inner(c: &PendingCall) -> Result<CallResponse, String> {
    use http_body_util::{BodyExt, Full};
    let Some(m) = c.upstream.pick() else {
        let body = crate::wasm::cluster::NO_HEALTHY_UPSTREAM
            .as_bytes()
            .to_vec();
        return Ok(CallResponse {
            headers: vec![
                (":status".to_string(), b"503".to_vec()),
                (
                    "content-length".to_string(),
                    body.len().to_string().into_bytes(),
                ),
                ("content-type".to_string(), b"text/plain".to_vec()),
            ],
            body,
        });
    };
    // The call's :authority is its Host, for SNI as a proxied request's.
    let tls = m.tls_target(Some(&c.authority), &[b"http/1.1"])?;
    let (io, _) = crate::wasm::cluster::connect(m, tls, c.upstream.connect_timeout).await?;
    let io = hyper_util::rt::TokioIo::new(io);
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<bytes::Bytes>>(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::builder()
        .method(c.method.clone())
        .uri(c.path.as_str())
        .header(http::header::HOST, c.authority.as_str());
    for (k, v) in &c.headers {
        req = req.header(k.as_str(), v.as_slice());
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(c.body.clone())))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let mut headers = vec![(
        ":status".to_string(),
        resp.status().as_str().as_bytes().to_vec(),
    )];
    for (k, v) in resp.headers() {
        headers.push((k.as_str().to_string(), v.as_bytes().to_vec()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    // Bound what a call may bring into the guest.
    if body.len() > 16 << 20 {
        return Err("http call response body larger than 16 MiB".into());
    }
    Ok(CallResponse {
        headers,
        body: body.to_vec(),
    })
}

impl Filter for WasmFilter {
    fn name(&self) -> &str {
        "wasm"
    }

    /// One context spans the request and the response (Envoy's filter
    /// semantics): a rule of `http_request` takes part in every hook of the
    /// exchange, one of `http_response` in the response's.
    fn phases(&self) -> Phases {
        let response = Phases::RESPONSE | Phases::RESPONSE_BODY | Phases::LOG;
        match self.declared {
            // As in Envoy, a context the request created also sees the
            // proxy's own reply (its own `send_http_response` included).
            Phase::Request => {
                response | Phases::REQUEST | Phases::REQUEST_BODY | Phases::LOCAL_REPLY
            }
            Phase::Response => response,
        }
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        self.run_phase(txn)
    }

    fn on_response(&self, txn: &mut Txn) -> Flow {
        self.run_phase(txn)
    }

    fn resume(&self, txn: &mut Txn) -> Flow {
        let Some(cref) = self.current(txn) else {
            return Flow::Continue;
        };
        let out = self.with_instance(|inst, generation| {
            if generation != cref.generation {
                return Err(gone());
            }
            let v = inst.deliver_calls(cref.ctx, txn)?;
            if matches!(v, Verdict::Pause)
                && let Some((Some(deadline), _)) = inst.pause_state(cref.ctx)
                && Instant::now() >= deadline
            {
                // Not a trap: the instance is fine, only this request is abandoned.
                let _ = inst.destroy_stream(cref.ctx);
                return Err(Failure::new(
                    FailureKind::PauseTimeout,
                    "the plugin paused the request and did not resume it in time",
                ));
            }
            Ok(v)
        });
        let out = out.map_or_else(Outcome::Fail, Outcome::Verdict);
        self.flow(txn, cref, out)
    }

    /// The body hooks run when the plugin exports the phase's and this
    /// request has a live context; `max_body_size = 0` turns them off (SDK
    /// filters export every hook, used or not).
    fn body_limits(&self, txn: &Txn) -> Option<BodyLimits> {
        let wants = match txn.phase {
            Phase::Request => self.plugin.request_body_hooks,
            Phase::Response => self.plugin.response_body_hooks,
        };
        let limits = self.plugin.shared().spec.limits;
        (wants && limits.max_body > 0 && self.current(txn).is_some()).then_some(BodyLimits {
            max: limits.max_body,
            idle: limits.pause_timeout,
        })
    }

    fn on_body(&self, txn: &mut Txn, end_of_stream: bool) -> BodyFlow {
        if end_of_stream {
            return self.body_flow(txn, |inst, cref, txn| {
                inst.body(cref.ctx, txn, true).map(Some)
            });
        }
        let flow = self.body_flow(txn, |inst, cref, txn| inst.body_chunk(cref.ctx, txn));
        match flow {
            BodyFlow::Continue if self.current(txn).is_some() => match self.tap(txn) {
                Some(tap) => BodyFlow::Stream(tap),
                None => BodyFlow::Continue,
            },
            other => other,
        }
    }

    fn on_trailers(&self, txn: &mut Txn) -> BodyFlow {
        self.body_flow(txn, |inst, cref, txn| {
            inst.trailers(cref.ctx, txn).map(Some)
        })
    }

    fn on_log(&self, txn: &Txn) {
        // `on_log` cannot change the transaction, so the context is read, not taken.
        let Some(held) = txn.plugin_state.peek::<Held>(self.key) else {
            return;
        };
        let cref = held.cref;
        // Finished or not, the context is gone afterwards (a failing log hook kills the instance).
        held.done.set(true);
        let finished = self.with_instance_opt(false, |inst, generation| {
            if generation != cref.generation {
                return Ok(false);
            }
            inst.finish_stream(cref.ctx, txn).map(|()| true)
        });
        if matches!(finished, Ok(true)) {
            // The whole request ran on one live instance: failures before
            // it were not consecutive, the back-off starts over.
            self.reset_backoff(cref.generation);
        }
    }
}
