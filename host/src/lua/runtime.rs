//! Per-worker Lua instances and the one call path every entry into Lua takes.
//!
//! An [`Instance`] is one Lua state for one plugin on one worker thread,
//! kept in worker-local storage and built lazily from the script's source.
//! It owns a single request object (`txn`) and a single applet object whose
//! per-request state lives on the Rust side ([`CallCx`]) and is swapped in
//! for each call, plus a small pool of coroutines reused across calls (see
//! DESIGN.md: creating either per request costs 4-6x a reused one and piles
//! up garbage).
//!
//! Limits: `Lua::set_memory_limit` makes every allocation past the plugin's
//! budget fail as a Lua memory error; an instruction-count hook stops a call
//! that runs past `cpu_limit` by yielding out of its coroutine (a yield
//! cannot be swallowed by the script's `pcall`). Every entry into Lua runs
//! under `catch_unwind`, so even an internal mlua assertion under memory
//! exhaustion fails one call instead of the process. After an out-of-memory,
//! a timeout or an internal error the state may be inconsistent: it is
//! dropped and the next call rebuilds it from the script.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::thread::ThreadStatus;
use mlua::{
    Function, HookTriggers, IntoLuaMulti, LightUserData, Lua, LuaOptions, MultiValue, StdLib,
    Table, Thread, Value, VmState,
};

use super::{FailureKind, OnError, Plugin, Registered};
use crate::filter::{Flow, Reply};
use crate::plugin::Slot;
use crate::txn::{Phase, Txn};

/// Instructions between two runs of the CPU/memory hook.
const HOOK_EVERY: u32 = 2048;
/// Coroutines kept for reuse per instance.
const POOL_MAX: usize = 16;
/// CPU budget for a script's main chunk and init functions (at least).
pub(super) const LOAD_BUDGET: Duration = Duration::from_secs(1);
/// Memory-in-use changes smaller than this are not published (see `report`).
const REPORT_STEP: u64 = 4096;
/// Message of the error raised when a call exceeds its CPU budget in a non-yieldable spot.
pub(crate) const CPU_MSG: &str = "cpu_limit exceeded";

/// Markers yielded by `core.msleep` / `core.yield` and `txn:done()`.
pub(crate) static SLEEP_MARK: u8 = 1;
pub(crate) static DONE_MARK: u8 = 2;
/// First return value of an API function that failed; the second is the message
/// (raised by a Lua wrapper as a plain string error, as HAProxy's C functions do).
pub(crate) static ERR_MARK: u8 = 3;
/// Yielded with a `Socket`, an `HTTPClient` call or a `Queue` waiter: the host awaits its operation.
pub(crate) static IO_MARK: u8 = 4;
/// Yielded by `core.done(...)`: the call ends here, with these values.
pub(crate) static END_MARK: u8 = 5;

/// A marker as a Lua light userdata (compared by address).
pub(crate) fn mark(m: &'static u8) -> LightUserData {
    LightUserData(std::ptr::from_ref(m).cast_mut().cast())
}

/// What kind of call is running (decides what the API allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// The main chunk or an init function.
    Load,
    Action,
    Fetch,
    Converter,
    Service,
    /// A `core.register_task` function.
    Task,
}

/// A failed call.
#[derive(Debug, Clone)]
pub(crate) struct CallError {
    pub kind: FailureKind,
    pub message: String,
    /// The state may be inconsistent and must be rebuilt.
    pub poisoned: bool,
}

impl CallError {
    pub(crate) fn runtime(message: impl Into<String>) -> CallError {
        CallError {
            kind: FailureKind::Script,
            message: message.into(),
            poisoned: false,
        }
    }

    fn timeout(limit: Duration) -> CallError {
        CallError {
            kind: FailureKind::CpuLimit,
            message: format!("{CPU_MSG} ({limit:?})"),
            poisoned: true,
        }
    }

    /// Classifies an mlua error: a memory error anywhere in the chain is OOM.
    pub(crate) fn from_lua(e: &mlua::Error) -> CallError {
        let message = describe(e);
        let kind = if is_memory_error(e) || message.contains("not enough memory") {
            FailureKind::MemoryLimit
        } else if message.contains(CPU_MSG) {
            FailureKind::CpuLimit
        } else {
            FailureKind::Script
        };
        CallError {
            kind,
            poisoned: kind != FailureKind::Script,
            message,
        }
    }
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } => is_memory_error(cause),
        mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// The useful line of an mlua error (no traceback).
pub(crate) fn describe(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, .. } => return describe(cause),
        mlua::Error::WithContext { context, cause } => {
            return format!("{context}: {}", describe(cause));
        }
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::MemoryError(_) => "not enough memory".to_string(),
        other => other.to_string(),
    };
    text.lines().next().unwrap_or("").trim().to_string()
}

/// Functions a script registered, by name.
#[derive(Default)]
pub(crate) struct Funcs {
    pub actions_req: HashMap<String, Function>,
    pub actions_res: HashMap<String, Function>,
    /// `http-after-res` actions by name.
    pub actions_after_res: HashMap<String, Function>,
    pub fetches: HashMap<String, Function>,
    pub converters: HashMap<String, Function>,
    pub services: HashMap<String, Function>,
    /// `tcp-req` actions and TCP services.
    pub actions_tcp: HashMap<String, Function>,
    /// `tcp-res` actions (`tcp_response` rules).
    pub actions_tcp_res: HashMap<String, Function>,
    pub services_tcp: HashMap<String, Function>,
    /// `core.register_filter`: the class and the function called per `filters` entry.
    pub filters: HashMap<String, (Table, Function)>,
    pub inits: Vec<Function>,
    pub tasks: Vec<(Function, Vec<Value>)>,
}

/// What `core.register_*` collects while the script loads.
#[derive(Default)]
pub(crate) struct Collect {
    /// Registration is only allowed while loading.
    pub loading: bool,
    pub funcs: Funcs,
    pub names: Registered,
}

/// Per-call state the API functions read and change (one per instance),
/// defined with the raw C API layer that relies on it.
pub(crate) use super::ffi::CallCx;

/// Per-request values of one plugin, kept in the transaction between calls.
pub(crate) struct TxnSlot {
    pub privv: Value,
    pub fields: Option<Table>,
    /// A coroutine waiting on a timer (`core.msleep`), resumed by the next hook.
    pub suspended: Option<Thread>,
    /// CPU already used by the suspended call.
    pub cpu_used: Duration,
    /// The instance the values above belong to (kept alive for them).
    pub instance: Rc<Instance>,
}

impl TxnSlot {
    fn is_empty(&self) -> bool {
        self.privv.is_nil() && self.fields.is_none() && self.suspended.is_none()
    }
}

/// Takes `plugin`'s slot out of `txn`, keeping it only if it belongs to `inst`.
pub(crate) fn take_slot(txn: &mut Txn, inst: &Rc<Instance>) -> TxnSlot {
    match txn.plugin_state.take::<TxnSlot>(inst.plugin.id) {
        Some(s) if Rc::ptr_eq(&s.instance, inst) => *s,
        _ => TxnSlot {
            privv: Value::Nil,
            fields: None,
            suspended: None,
            cpu_used: Duration::ZERO,
            instance: Rc::clone(inst),
        },
    }
}

/// Puts a slot back into `txn` if it holds anything.
pub(crate) fn put_slot(txn: &mut Txn, slot: TxnSlot) {
    if !slot.is_empty() {
        let id = slot.instance.plugin.id;
        txn.plugin_state.put(id, Box::new(slot));
    }
}

/// How a call into Lua ended.
pub(crate) enum Step {
    /// The function returned these values.
    Finished(MultiValue),
    /// `core.msleep` (or `act.YIELD`): wait, then resume.
    Sleep(Duration),
    /// A cosocket operation (`core.tcp`): await it, then resume.
    Io(crate::filter::WaitFuture),
    /// `txn:done()`.
    Done,
    Failed(CallError),
}

/// Where a call runs: the transaction (if any) and how it may be used.
pub(crate) struct Site {
    pub txn: *mut Txn,
    pub writable: bool,
    pub phase: Phase,
    pub kind: CallKind,
}

impl Site {
    /// A call with no transaction.
    pub(crate) fn none(kind: CallKind) -> Site {
        Site {
            txn: std::ptr::null_mut(),
            writable: false,
            phase: Phase::Request,
            kind,
        }
    }
}

/// A rule's function and arguments as values of one instance.
pub(crate) struct Binding {
    pub func: Function,
    pub args: Vec<Value>,
}

/// Rule bindings of an instance, by rule id.
type Bindings = HashMap<u64, Rc<Binding>, std::hash::BuildHasherDefault<crate::plugin::IdHasher>>;

/// One Lua state for one plugin on one worker.
pub(crate) struct Instance {
    pub plugin: Arc<Plugin>,
    pub cx: Rc<CallCx>,
    pub txn_obj: Table,
    pub applet_obj: Table,
    pub funcs: Funcs,
    pool: RefCell<Vec<Thread>>,
    bindings: RefCell<Bindings>,
    limit: Cell<usize>,
    /// Memory after the last full collection (decides when to collect again).
    after_gc: Cell<usize>,
    /// Memory last added to the plugin's `memory_in_use`.
    reported: Cell<u64>,
    /// The highest peak published in the plugin's stats.
    reported_peak: Cell<u64>,
    busy: Cell<bool>,
    /// Dropped from the worker for a rebuild: its tasks stop.
    retired: Cell<bool>,
    /// Counted in the plugin's stats (not the config-time validation state).
    counted: bool,
    /// Declared last: every Lua value above is released before the state closes.
    pub lua: Lua,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.pool.borrow_mut().clear();
        self.bindings.borrow_mut().clear();
        *self.cx.privv.borrow_mut() = Value::Nil;
        *self.cx.fields.borrow_mut() = None;
        *self.cx.strings.borrow_mut() = None;
        if self.counted {
            let s = &self.plugin.stats;
            s.instances.fetch_sub(1, Relaxed);
            s.memory_in_use.fetch_sub(self.reported.get(), Relaxed);
        }
    }
}

/// Loads the plugin in a throwaway state: the config-time check.
pub(crate) fn validate(plugin: &Plugin) -> Result<Registered, String> {
    // The check needs an `Arc<Plugin>`; this copy shares the source and stats are not counted.
    let copy = Arc::new(Plugin {
        id: plugin.id,
        name: Arc::clone(&plugin.name),
        path: plugin.path.clone(),
        source: Arc::clone(&plugin.source),
        args: plugin.args.clone(),
        lua_path: plugin.lua_path.clone(),
        memory_limit: plugin.memory_limit,
        cpu_limit: plugin.cpu_limit,
        on_error: plugin.on_error,
        registered: Registered::default(),
        stats: super::PluginStats::default(),
        backends: Arc::clone(&plugin.backends),
        frontends: Arc::clone(&plugin.frontends),
        tables: Arc::clone(&plugin.tables),
        servers: Arc::clone(&plugin.servers),
        client_timeout: plugin.client_timeout,
        maps: Arc::clone(&plugin.maps),
        process: std::sync::OnceLock::new(),
        max_body: plugin.max_body,
    });
    copy.set_memory_limit(plugin.memory_limit);
    let built = catch_unwind(AssertUnwindSafe(|| Instance::build(&copy, false)));
    match built {
        Ok(Ok((inst, names))) => {
            drop(inst);
            Ok(names)
        }
        Ok(Err(e)) => Err(match e.kind {
            FailureKind::MemoryLimit => format!(
                "{} (memory_limit is {} bytes; raise it)",
                e.message, plugin.memory_limit
            ),
            _ => e.message,
        }),
        Err(p) => Err(format!("internal error while loading: {}", panic_text(&p))),
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

impl Instance {
    /// Builds a state from the plugin's source: API, main chunk, and (on workers) init functions.
    fn build(plugin: &Arc<Plugin>, worker: bool) -> Result<(Instance, Registered), CallError> {
        let lua = Lua::new_with(StdLib::ALL_SAFE, LuaOptions::default())
            .map_err(|e| CallError::from_lua(&e))?;
        let limit = plugin.current_memory_limit();
        let base = lua.used_memory();
        if base >= limit {
            return Err(CallError {
                kind: FailureKind::MemoryLimit,
                message: format!("not enough memory: an empty Lua state already uses {base} bytes"),
                poisoned: true,
            });
        }
        lua.set_memory_limit(limit)
            .map_err(|e| CallError::from_lua(&e))?;
        // Generational: a request's garbage (header tables, strings) dies
        // young, and the API and script, which live long, are not re-marked
        // each cycle (about 8% of a header get + set in `benches/lua.rs`).
        lua.gc_set_mode(mlua::state::GcMode::Generational(
            mlua::state::GcGenParams::default(),
        ));
        let cx = Rc::new(CallCx::new(plugin));
        let hook_cx = Rc::clone(&cx);
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |lua, _| {
                let used = lua.used_memory();
                if used > hook_cx.peak.get() {
                    hook_cx.peak.set(used);
                }
                if Instant::now() >= hook_cx.deadline.get() {
                    // First time: yield out of the coroutine (pcall cannot catch a yield).
                    // If we are still called, the spot was not yieldable: raise instead.
                    if hook_cx.timed_out.replace(true) {
                        return Err(mlua::Error::runtime(CPU_MSG));
                    }
                    return Ok(VmState::Yield);
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(|e| CallError::from_lua(&e))?;
        let collect = Rc::new(RefCell::new(Collect {
            loading: true,
            ..Collect::default()
        }));
        let (txn_obj, applet_obj) =
            super::api::install(&lua, &cx, &collect).map_err(|e| CallError::from_lua(&e))?;
        if !plugin.lua_path.is_empty() {
            // HAProxy's lua-prepend-path: the plugin's patterns are searched first.
            let package: mlua::Table = lua
                .globals()
                .get("package")
                .map_err(|e| CallError::from_lua(&e))?;
            let current: String = package.get("path").unwrap_or_default();
            let path = format!("{};{current}", plugin.lua_path.join(";"));
            package
                .set("path", path)
                .map_err(|e| CallError::from_lua(&e))?;
        }
        let chunk = lua
            .load(&*plugin.source)
            .set_name(format!("@{}", plugin.path.display()))
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| CallError::from_lua(&e))?;
        let mut inst = Instance {
            plugin: Arc::clone(plugin),
            cx,
            txn_obj,
            applet_obj,
            funcs: Funcs::default(),
            pool: RefCell::new(Vec::new()),
            bindings: RefCell::new(Bindings::default()),
            limit: Cell::new(limit),
            after_gc: Cell::new(0),
            reported: Cell::new(0),
            reported_peak: Cell::new(0),
            busy: Cell::new(false),
            retired: Cell::new(false),
            counted: false,
            lua,
        };
        let mut args = MultiValue::new();
        for a in &plugin.args {
            let s = inst
                .lua
                .create_string(a)
                .map_err(|e| CallError::from_lua(&e))?;
            args.push_back(Value::String(s));
        }
        inst.run_load(chunk, args, "main chunk")?;
        let names = {
            let mut c = collect.borrow_mut();
            c.loading = false;
            inst.funcs = std::mem::take(&mut c.funcs);
            c.names.clone()
        };
        if worker {
            let inits = inst.funcs.inits.clone();
            for f in inits {
                inst.run_load(f, MultiValue::new(), "init function")?;
            }
        }
        Ok((inst, names))
    }

    /// Whether this instance was dropped from its worker (its tasks must stop).
    pub(crate) fn is_retired(&self) -> bool {
        self.retired.get()
    }

    /// Runs a load-time function (main chunk, init) to completion.
    fn run_load(&self, f: Function, args: MultiValue, what: &str) -> Result<(), CallError> {
        let thread = self
            .lua
            .create_thread(f)
            .map_err(|e| CallError::from_lua(&e))?;
        let budget = self.plugin.cpu_limit.max(LOAD_BUDGET);
        let mut slot_priv = Value::Nil;
        let mut fields = None;
        let (step, _) = self.run(
            thread,
            args,
            &Site::none(CallKind::Load),
            &mut slot_priv,
            &mut fields,
            budget,
        );
        match step.1 {
            Step::Finished(_) => Ok(()),
            Step::Sleep(_) => Err(CallError::runtime(format!(
                "{what}: core.msleep/core.yield cannot be used while the script loads"
            ))),
            Step::Io(_) => Err(CallError::runtime(format!(
                "{what}: sockets cannot wait while the script loads (use them in actions, services or tasks)"
            ))),
            Step::Done => Err(CallError::runtime(format!(
                "{what}: txn:done() cannot be used while the script loads"
            ))),
            Step::Failed(e) => Err(e),
        }
    }

    /// A coroutine running `f`: reused from the pool when possible.
    pub(crate) fn thread_for(&self, f: &Function) -> Result<Thread, CallError> {
        let pooled = self.pool.borrow_mut().pop();
        if let Some(t) = pooled
            && t.reset(f.clone()).is_ok()
        {
            return Ok(t);
        }
        self.setup(|| self.lua.create_thread(f.clone()))
    }

    /// Runs a setup step (coroutine, arguments); on a memory error, collects once and retries.
    pub(crate) fn setup<T>(&self, f: impl Fn() -> mlua::Result<T>) -> Result<T, CallError> {
        match catch_unwind(AssertUnwindSafe(&f)) {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if !is_memory_error(&e) => return Err(CallError::from_lua(&e)),
            Ok(Err(_)) => {}
            Err(p) => return Err(self.panicked(&p)),
        }
        let _ = catch_unwind(AssertUnwindSafe(|| self.lua.gc_collect()));
        match catch_unwind(AssertUnwindSafe(&f)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::from_lua(&e)),
            Err(p) => Err(self.panicked(&p)),
        }
    }

    fn panicked(&self, p: &Box<dyn std::any::Any + Send>) -> CallError {
        let near_limit = self.lua.used_memory() + 64 * 1024 >= self.limit.get();
        CallError {
            kind: if near_limit {
                FailureKind::MemoryLimit
            } else {
                FailureKind::Script
            },
            message: format!("internal error in the Lua runtime: {}", panic_text(p)),
            poisoned: true,
        }
    }

    /// The function and argument values of rule `id`, resolved once per instance.
    pub(crate) fn binding(
        &self,
        id: u64,
        resolve: impl FnOnce(&Funcs) -> Option<Function>,
        args: &[String],
        what: impl FnOnce() -> String,
    ) -> Result<Rc<Binding>, CallError> {
        if let Some(b) = self.bindings.borrow().get(&id) {
            return Ok(Rc::clone(b));
        }
        let func = resolve(&self.funcs).ok_or_else(|| {
            CallError::runtime(format!(
                "{} is not registered by this instance of the script (was it registered conditionally?)",
                what()
            ))
        })?;
        let values = self.setup(|| {
            args.iter()
                .map(|a| self.lua.create_string(a).map(Value::String))
                .collect::<mlua::Result<Vec<Value>>>()
        })?;
        let b = Rc::new(Binding { func, args: values });
        self.bindings.borrow_mut().insert(id, Rc::clone(&b));
        Ok(b)
    }

    /// Applies a changed memory limit and collects garbage when memory runs high.
    fn prepare(&self) {
        let want = self.plugin.current_memory_limit();
        if want != self.limit.get() && self.lua.set_memory_limit(want).is_ok() {
            self.limit.set(want);
        }
        let used = self.lua.used_memory();
        let base = self.after_gc.get();
        // Collect when at least half of the room left after the last collection is used up:
        // garbage, not live data, then never makes an allocation fail.
        if used > base + want.saturating_sub(base) / 2 {
            let _ = catch_unwind(AssertUnwindSafe(|| self.lua.gc_collect()));
            self.after_gc.set(self.lua.used_memory());
        }
    }

    /// Publishes this instance's memory use in the plugin's stats.
    ///
    /// The shared counters are written (atomic read-modify-writes on a cache
    /// line every worker touches) only when the figure moved by
    /// `REPORT_STEP` or the peak grew: each call leaves some garbage, and
    /// publishing every byte cost more than the rest of a short action's
    /// bookkeeping.
    fn report(&self) {
        if !self.counted {
            return;
        }
        let used = self.lua.used_memory();
        let s = &self.plugin.stats;
        let now = u64::try_from(used).unwrap_or(u64::MAX);
        let before = self.reported.get();
        if now.abs_diff(before) >= REPORT_STEP || before == 0 {
            self.reported.set(now);
            if now > before {
                s.memory_in_use.fetch_add(now - before, Relaxed);
            } else {
                s.memory_in_use.fetch_sub(before - now, Relaxed);
            }
        }
        let peak = u64::try_from(self.cx.peak.get().max(used)).unwrap_or(u64::MAX);
        if peak > self.reported_peak.get() {
            self.reported_peak.set(peak);
            s.memory_peak.fetch_max(peak, Relaxed);
        }
    }

    /// Runs `thread` with `args` at `site` until it finishes, yields or fails.
    ///
    /// `privv`/`fields` are the request's values (swapped in for the call and
    /// back out after). Returns the CPU time spent (by a call that sleeps; zero
    /// otherwise) and how the call ended; a finished coroutine goes back to
    /// the pool, a sleeping one is returned.
    pub(crate) fn run(
        &self,
        thread: Thread,
        args: impl IntoLuaMulti,
        site: &Site,
        privv: &mut Value,
        fields: &mut Option<Table>,
        budget: Duration,
    ) -> ((Duration, Step), Option<Thread>) {
        if self.busy.replace(true) {
            return (
                (
                    Duration::ZERO,
                    Step::Failed(CallError::runtime(
                        "re-entrant call into the plugin (a Lua fetch or converter used from inside the same plugin)",
                    )),
                ),
                None,
            );
        }
        self.prepare();
        let cx = &*self.cx;
        *cx.privv.borrow_mut() = std::mem::replace(privv, Value::Nil);
        *cx.fields.borrow_mut() = fields.take();
        cx.txn.set(site.txn);
        cx.writable.set(site.writable);
        cx.phase.set(site.phase);
        cx.kind.set(site.kind);
        cx.wake_ms.set(None);
        *cx.reply.borrow_mut() = None;
        cx.timed_out.set(false);
        let start = Instant::now();
        cx.deadline.set(start + budget);
        let running = super::ffi::cfunc::Running::enter(cx);
        let res = catch_unwind(AssertUnwindSafe(|| thread.resume::<MultiValue>(args)));
        drop(running);
        cx.txn.set(std::ptr::null_mut());
        cx.writable.set(false);
        cx.txn_borrowed.set(false);
        *privv = std::mem::replace(&mut *cx.privv.borrow_mut(), Value::Nil);
        *fields = cx.fields.borrow_mut().take();
        let step = if cx.timed_out.get() {
            Step::Failed(CallError::timeout(self.plugin.cpu_limit))
        } else {
            match res {
                Err(p) => Step::Failed(self.panicked(&p)),
                Ok(Err(e)) => Step::Failed(CallError::from_lua(&e)),
                Ok(Ok(vals)) => {
                    if thread.status() == ThreadStatus::Resumable {
                        classify_yield(&vals)
                    } else {
                        Step::Finished(vals)
                    }
                }
            }
        };
        // Only a sleeping call carries its CPU time forward (to its next
        // resume's budget): a call that ends does not read the clock again.
        let spent = match step {
            Step::Sleep(_) | Step::Io(_) => start.elapsed(),
            _ => Duration::ZERO,
        };
        self.report();
        self.busy.set(false);
        let keep = match &step {
            // A coroutine ended by `core.done` is still suspended: not reusable.
            Step::Finished(_) if thread.status() == ThreadStatus::Resumable => None,
            Step::Finished(_) => {
                let mut pool = self.pool.borrow_mut();
                if pool.len() < POOL_MAX {
                    pool.push(thread);
                }
                None
            }
            Step::Sleep(_) | Step::Io(_) => Some(thread),
            Step::Done | Step::Failed(_) => None,
        };
        ((spent, step), keep)
    }
}

/// What a yield means: a marker from the API, or a plain yield (resume at once).
fn classify_yield(vals: &MultiValue) -> Step {
    match vals.front() {
        Some(Value::LightUserData(m)) if *m == mark(&DONE_MARK) => Step::Done,
        Some(Value::LightUserData(m)) if *m == mark(&SLEEP_MARK) => {
            let ms = vals.get(1).and_then(|v| match v {
                Value::Integer(i) => Some(*i as f64),
                Value::Number(n) => Some(*n),
                _ => None,
            });
            let ms = ms.filter(|m| m.is_finite() && *m > 0.0).unwrap_or(0.0);
            // Sleeps are capped at one day; a longer one is surely a unit mistake.
            Step::Sleep(Duration::from_secs_f64((ms / 1000.0).min(86_400.0)))
        }
        Some(Value::LightUserData(m)) if *m == mark(&END_MARK) => {
            Step::Finished(vals.iter().skip(1).cloned().collect())
        }
        Some(Value::LightUserData(m)) if *m == mark(&IO_MARK) => {
            let pending = match vals.get(1) {
                Some(Value::UserData(ud)) => match ud.borrow::<super::api::Socket>() {
                    Ok(s) => s.take_pending(),
                    Err(_) => match ud.borrow::<super::api::HttpCall>() {
                        Ok(c) => c.take_pending(),
                        Err(_) => match ud.borrow::<super::api::QueueWaiter>() {
                            Ok(w) => w.take_pending(),
                            Err(_) => ud
                                .borrow::<super::api::tcp::ChanWait>()
                                .ok()
                                .and_then(|w| w.take_pending()),
                        },
                    },
                },
                _ => None,
            };
            // Nothing to wait for (the outcome is already there): resume at once.
            pending.map_or(Step::Sleep(Duration::ZERO), Step::Io)
        }
        _ => Step::Sleep(Duration::ZERO),
    }
}

// ---------------------------------------------------------------------------
// Worker-local instances
// ---------------------------------------------------------------------------

struct Entry {
    id: u64,
    /// The state (if alive) and when it may be rebuilt after failures
    /// (dropped states and failed builds count) ...
    slot: Slot<Rc<Instance>>,
    /// ...or at once if the memory limit changed since (the operator raised it).
    failed_limit: usize,
}

/// A worker's instances. Dropped normally by [`clear_worker`]; whatever is
/// left when the thread's locals are destroyed is leaked on purpose: other
/// thread-locals (scc's epoch collector, tokio's context) may already be
/// gone, and closing a Lua state can release the last reference to a stick
/// table whose drop needs them (a panic in a TLS destructor aborts).
struct Instances(RefCell<Vec<Entry>>);

impl Drop for Instances {
    fn drop(&mut self) {
        for e in self.0.get_mut().drain(..) {
            std::mem::forget(e);
        }
    }
}

thread_local! {
    static INSTANCES: Instances = const { Instances(RefCell::new(Vec::new())) };
}

/// Drops this thread's instances of the plugins `ids` now, while the
/// thread's locals still exist (a worker calls it when it, or the runtime
/// the plugins belong to, stops; tests may call it at their end). Other
/// runtimes' instances stay.
pub fn clear_worker(ids: &[u64]) {
    let taken = INSTANCES.try_with(|i| {
        let mut v = i.0.borrow_mut();
        let (gone, kept): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut *v)
            .into_iter()
            .partition(|e| ids.contains(&e.id));
        *v = kept;
        gone
    });
    // Its tasks and event subscriptions end at their next wake-up instead of
    // keeping the instance alive (a reload replaced the plugin).
    if let Ok(gone) = &taken {
        for e in gone {
            if let Some(inst) = &e.slot.inst {
                inst.retired.set(true);
            }
        }
    }
    drop(taken);
}

/// This worker's instance of `plugin`, built on first use (or after a
/// failure, once its back-off allows).
pub(crate) fn instance(plugin: &Arc<Plugin>) -> Result<Rc<Instance>, CallError> {
    let existing = INSTANCES
        .try_with(|cell| {
            let v = cell.0.borrow();
            v.iter()
                .find(|e| e.id == plugin.id)
                .map(|e| (e.slot.inst.clone(), e.slot.backoff, e.failed_limit))
        })
        .map_err(|_| CallError::runtime("worker is shutting down"))?;
    match existing {
        Some((Some(inst), _, _)) => return Ok(inst),
        Some((None, backoff, limit))
            if !backoff.ready(Instant::now()) && limit == plugin.current_memory_limit() =>
        {
            return Err(CallError {
                kind: FailureKind::Script,
                message: "the Lua state failed recently; it is rebuilt after a back-off"
                    .to_string(),
                poisoned: false,
            });
        }
        _ => {}
    }
    let built = catch_unwind(AssertUnwindSafe(|| Instance::build(plugin, true)));
    let result = match built {
        Ok(Ok((mut inst, _))) => {
            inst.counted = true;
            plugin.stats.instances.fetch_add(1, Relaxed);
            inst.report();
            let inst = Rc::new(inst);
            *inst.cx.instance.borrow_mut() = Rc::downgrade(&inst);
            super::task::spawn_tasks(&inst);
            Ok(inst)
        }
        Ok(Err(e)) => Err(e),
        Err(p) => Err(CallError::runtime(format!(
            "internal error while building the Lua state: {}",
            panic_text(&p)
        ))),
    };
    let _ = INSTANCES.try_with(|cell| {
        let mut v = cell.0.borrow_mut();
        let i = match v.iter().position(|e| e.id == plugin.id) {
            Some(i) => i,
            None => {
                v.push(Entry {
                    id: plugin.id,
                    slot: Slot::default(),
                    failed_limit: 0,
                });
                v.len() - 1
            }
        };
        let e = &mut v[i];
        e.failed_limit = plugin.current_memory_limit();
        match &result {
            Ok(inst) => {
                e.slot.install(Rc::clone(inst));
            }
            Err(_) => {
                e.slot.kill(Instant::now());
            }
        }
    });
    result
}

/// Drops this worker's instance `inst` so the next call rebuilds it from
/// the script (after the back-off, if it keeps failing).
pub(crate) fn discard(inst: &Rc<Instance>) {
    let dropped = INSTANCES.try_with(|cell| {
        let mut v = cell.0.borrow_mut();
        match v.iter_mut().find(|e| e.id == inst.plugin.id) {
            Some(e) if e.slot.inst.as_ref().is_some_and(|i| Rc::ptr_eq(i, inst)) => {
                e.slot.kill(Instant::now()).0
            }
            _ => None,
        }
    });
    if let Ok(Some(old)) = dropped {
        old.retired.set(true);
        inst.plugin.stats.rebuilds.fetch_add(1, Relaxed);
        // The state is dropped here unless a waiting request still holds it.
        drop(old);
    }
}

/// Consecutive failures of `plugin`'s state on this worker (dropped states, failed builds).
pub(crate) fn failures(plugin: &Plugin) -> u32 {
    INSTANCES
        .try_with(|cell| {
            cell.0
                .borrow()
                .iter()
                .find(|e| e.id == plugin.id)
                .map_or(0, |e| e.slot.backoff.failures())
        })
        .unwrap_or(0)
}

/// A request that used `plugin` ended with no failure of its state: if
/// this worker's state is alive, earlier failures were not consecutive and
/// the back-off starts over.
pub(crate) fn request_succeeded(plugin: &Plugin) {
    let _ = INSTANCES.try_with(|cell| {
        if let Ok(mut v) = cell.0.try_borrow_mut()
            && let Some(e) = v.iter_mut().find(|e| e.id == plugin.id)
            && e.slot.inst.is_some()
        {
            e.slot.backoff.reset();
        }
    });
}

/// Counts and logs a failure, drops a possibly inconsistent state, and applies `on_error`.
pub(crate) fn fail(
    plugin: &Plugin,
    inst: Option<&Rc<Instance>>,
    e: &CallError,
    what: &str,
) -> Flow {
    record_failure(plugin, inst, e, what);
    match plugin.on_error {
        OnError::FailOpen => Flow::Continue,
        OnError::FailClosed => Flow::Respond(error_reply(e)),
    }
}

/// Counts and logs a failure and drops a possibly inconsistent state.
/// Why a service could not start: the instance, if there was one, and the error.
pub(crate) type ServiceFailure = (Option<Rc<Instance>>, CallError);

/// The worker's instance of `plugin` and a thread running the function
/// `resolve` picks (a service's body), counted as a call; on failure, the
/// instance if there was one, for `record_failure`.
pub(crate) fn service_thread(
    plugin: &Arc<Plugin>,
    id: u64,
    resolve: impl FnOnce(&Funcs) -> Option<Function>,
    what: impl FnOnce() -> String,
) -> Result<(Rc<Instance>, Thread), ServiceFailure> {
    let inst = instance(plugin).map_err(|e| (None, e))?;
    plugin.stats.calls.fetch_add(1, Relaxed);
    let thread = inst
        .binding(id, resolve, &[], what)
        .and_then(|b| inst.thread_for(&b.func));
    match thread {
        Ok(t) => Ok((inst, t)),
        Err(e) => Err((Some(inst), e)),
    }
}

pub(crate) fn record_failure(
    plugin: &Plugin,
    inst: Option<&Rc<Instance>>,
    e: &CallError,
    what: &str,
) {
    plugin.stats.count_error(e.kind);
    // Rate-limited per plugin and kind (plugin::lograte); every failure is counted.
    if let Some(more) = plugin.stats.errors.log_line(e.kind) {
        tracing::warn!(
            plugin = %plugin.name,
            kind = e.kind.name(),
            "Lua {what} failed: {}{more}",
            e.message
        );
    }
    if e.poisoned
        && let Some(i) = inst
    {
        discard(i);
    }
}

/// The reply a failed plugin answers with: the one mapping of [`crate::error`].
pub(crate) fn error_reply(e: &CallError) -> Reply {
    crate::error::ErrorSource::Plugin(e.kind.failure()).reply()
}
