//! How rules reach plugins: the `lua` action, `use_service = "lua.<name>"`,
//! and `lua.<name>` fetches and converters in expressions.

use std::borrow::Cow;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use mlua::{IntoLuaMulti, MultiValue, Value as LuaValue};

use super::runtime::{self, CallError, CallKind, Instance, Site, Step, TxnSlot};
use super::{FailureKind, Plugin, arg_strings};
use crate::config::ConfigError;
use crate::config::schema::RawRule;
use crate::filter::{Filter, Flow, Phases, Reply};
use crate::rules::action::RuleEnv;
use crate::rules::fetch::{Call, Converter, Fetch};
use crate::rules::{Env, ParseError, Value};
use crate::txn::{Phase, Sample, Txn};

static NEXT_RULE: AtomicU64 = AtomicU64::new(1);

/// HAProxy's `act.*` return codes.
pub(crate) mod act {
    pub const CONTINUE: i64 = 0;
    pub const STOP: i64 = 1;
    pub const YIELD: i64 = 2;
    pub const ERROR: i64 = 3;
    pub const DONE: i64 = 4;
    pub const DENY: i64 = 5;
    pub const ABORT: i64 = 6;
    pub const INVALID: i64 = 7;
}

// ---------------------------------------------------------------------------
// The `lua` action
// ---------------------------------------------------------------------------

/// `{ lua = "<action>", args = [...] }`.
#[derive(Debug)]
pub struct LuaAction {
    plugin: Arc<Plugin>,
    name: String,
    phase: Phase,
    args: Vec<String>,
    id: u64,
    /// A `tcp-req` action (a `tcp_request` rule).
    tcp: bool,
    /// An `http-after-res` action (an `http_after_response` rule).
    after: bool,
}

/// Builds a `lua` rule in `tcp_request`: the action must be registered for `tcp-req`.
pub fn build_tcp_action(
    plugins: &super::Plugins,
    raw: &RawRule,
    re: &RuleEnv<'_>,
) -> Result<Box<dyn Filter>, ConfigError> {
    let Some(n) = &raw.lua else {
        return Err(re.error(re.span.clone(), "internal error: `lua` missing"));
    };
    // `tcp_response` rules compile in the response phase: `tcp-res` actions.
    let phase = re.env.phase;
    let (plugin, nb_args) = plugins
        .tcp_action(n.get_ref(), phase == Phase::Response)
        .map_err(|m| re.error(n.span(), m))?;
    let args = match &raw.args {
        Some(a) => arg_strings(a).map_err(|m| re.error(a.span(), m))?,
        None => Vec::new(),
    };
    if args.len() != nb_args {
        let span = raw.args.as_ref().map_or(n.span(), |a| a.span());
        return Err(re.error(
            span,
            format!(
                "Lua action {:?} takes {nb_args} argument(s) (nb_args in core.register_action), got {}",
                n.get_ref(),
                args.len()
            ),
        ));
    }
    Ok(Box::new(LuaAction {
        plugin: Arc::clone(plugin),
        name: n.get_ref().clone(),
        phase,
        args,
        id: NEXT_RULE.fetch_add(1, Relaxed),
        tcp: true,
        after: false,
    }))
}

/// Builds a `lua` rule: the action must be registered for the rule's phase with as many arguments.
pub fn build_action(
    plugins: &super::Plugins,
    raw: &RawRule,
    re: &RuleEnv<'_>,
) -> Result<Box<dyn Filter>, ConfigError> {
    let Some(n) = &raw.lua else {
        return Err(re.error(re.span.clone(), "internal error: `lua` missing"));
    };
    let phase = re.env.phase;
    let (plugin, nb_args) = plugins
        .action(n.get_ref(), phase, re.after_response)
        .map_err(|m| re.error(n.span(), m))?;
    let args = match &raw.args {
        Some(a) => arg_strings(a).map_err(|m| re.error(a.span(), m))?,
        None => Vec::new(),
    };
    if args.len() != nb_args {
        let span = raw.args.as_ref().map_or(n.span(), |a| a.span());
        return Err(re.error(
            span,
            format!(
                "Lua action {:?} takes {nb_args} argument{} (nb_args in core.register_action), got {}{}",
                n.get_ref(),
                if nb_args == 1 { "" } else { "s" },
                args.len(),
                if nb_args > 0 && raw.args.is_none() {
                    format!("; add args = [...] with {nb_args} value(s)")
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(Box::new(LuaAction {
        plugin: Arc::clone(plugin),
        name: n.get_ref().clone(),
        phase,
        args,
        id: NEXT_RULE.fetch_add(1, Relaxed),
        tcp: false,
        after: re.after_response,
    }))
}

impl LuaAction {
    fn what(&self) -> String {
        format!("action {:?}", self.name)
    }

    /// Starts the action from the beginning.
    fn start(&self, txn: &mut Txn) -> Flow {
        let plugin = &self.plugin;
        let inst = match runtime::instance(plugin) {
            Ok(i) => i,
            Err(e) => return runtime::fail(plugin, None, &e, &self.what()),
        };
        plugin.stats.calls.fetch_add(1, Relaxed);
        let response = self.phase == Phase::Response;
        let tcp = self.tcp;
        let after = self.after;
        let name = self.name.as_str();
        let binding = match inst.binding(
            self.id,
            |f| {
                if tcp && response {
                    f.actions_tcp_res.get(name).cloned()
                } else if tcp {
                    f.actions_tcp.get(name).cloned()
                } else if after {
                    f.actions_after_res.get(name).cloned()
                } else if response {
                    f.actions_res.get(name).cloned()
                } else {
                    f.actions_req.get(name).cloned()
                }
            },
            &self.args,
            || self.what(),
        ) {
            Ok(b) => b,
            Err(e) => return runtime::fail(plugin, Some(&inst), &e, &self.what()),
        };
        let thread = match inst.thread_for(&binding.func) {
            Ok(t) => t,
            Err(e) => return runtime::fail(plugin, Some(&inst), &e, &self.what()),
        };
        let mut slot = runtime::take_slot(txn, &inst);
        slot.cpu_used = Duration::ZERO;
        if binding.args.is_empty() {
            // `txn` alone is pushed straight from the table: no argument list
            // to allocate on the path every argument-less action takes.
            return self.drive(&inst, thread, &inst.txn_obj, txn, slot);
        }
        let mut args = MultiValue::with_capacity(1 + binding.args.len());
        args.push_back(LuaValue::Table(inst.txn_obj.clone()));
        args.extend(binding.args.iter().cloned());
        self.drive(&inst, thread, args, txn, slot)
    }

    /// Runs (or resumes) the action's coroutine and turns the outcome into a flow.
    fn drive(
        &self,
        inst: &Rc<Instance>,
        thread: mlua::Thread,
        args: impl IntoLuaMulti,
        txn: &mut Txn,
        mut slot: TxnSlot,
    ) -> Flow {
        let site = Site {
            txn: std::ptr::from_mut(txn),
            writable: true,
            phase: self.phase,
            kind: CallKind::Action,
        };
        let budget = self.plugin.cpu_limit.saturating_sub(slot.cpu_used);
        let ((spent, step), keep) = inst.run(
            thread,
            args,
            &site,
            &mut slot.privv,
            &mut slot.fields,
            budget,
        );
        slot.cpu_used += spent;
        match step {
            Step::Finished(vals) => {
                runtime::put_slot(txn, slot);
                self.verdict(inst, &vals, txn)
            }
            Step::Sleep(d) => {
                slot.suspended = keep;
                runtime::put_slot(txn, slot);
                Flow::Wait(Box::pin(async move { tokio::time::sleep(d).await }))
            }
            Step::Io(op) => {
                slot.suspended = keep;
                runtime::put_slot(txn, slot);
                Flow::Wait(op)
            }
            Step::Done => {
                runtime::put_slot(txn, slot);
                done_flow(inst, self.phase)
            }
            Step::Failed(e) => {
                runtime::put_slot(txn, slot);
                runtime::fail(&self.plugin, Some(inst), &e, &self.what())
            }
        }
    }

    /// What the action's return code (`act.*`) means for the request.
    fn verdict(&self, inst: &Rc<Instance>, vals: &MultiValue, txn: &mut Txn) -> Flow {
        let code = match vals.front() {
            None | Some(LuaValue::Nil) => act::CONTINUE,
            Some(LuaValue::Integer(i)) => *i,
            Some(LuaValue::Number(n)) if n.fract() == 0.0 => *n as i64,
            Some(other) => {
                let e = CallError::runtime(format!(
                    "returned a {} where an act.* code was expected",
                    other.type_name()
                ));
                return runtime::fail(&self.plugin, Some(inst), &e, &self.what());
            }
        };
        let _ = txn;
        match code {
            // In tcp_request, STOP ends the rules and accepts the connection.
            act::STOP if self.tcp => Flow::Respond(Reply {
                cause: Some(crate::rules::tcp::ACCEPT_CAUSE),
                ..status_reply(200)
            }),
            act::CONTINUE | act::STOP => Flow::Continue,
            act::YIELD => {
                // HAProxy calls the action again after the wake time.
                let ms = inst.cx.wake_ms.get().unwrap_or(0).min(86_400_000);
                Flow::Wait(Box::pin(async move {
                    if ms == 0 {
                        tokio::task::yield_now().await;
                    } else {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }))
            }
            act::DONE => done_flow(inst, self.phase),
            act::DENY => Flow::Respond(status_reply(match self.phase {
                Phase::Request => 403,
                Phase::Response => 502,
            })),
            act::ERROR | act::ABORT => Flow::Respond(status_reply(500)),
            act::INVALID => Flow::Respond(status_reply(400)),
            other => {
                let e = CallError::runtime(format!("returned {other}, which is not an act.* code"));
                runtime::fail(&self.plugin, Some(inst), &e, &self.what())
            }
        }
    }
}

/// The flow after `txn:done()`: the reply given to it, else HAProxy's behaviour.
fn done_flow(inst: &Instance, phase: Phase) -> Flow {
    match inst.cx.reply.borrow_mut().take() {
        Some(r) => Flow::Respond(r),
        // Without a reply HAProxy ends the transaction; the client sees an error.
        None => Flow::Respond(status_reply(match phase {
            Phase::Request => 500,
            Phase::Response => 502,
        })),
    }
}

/// The proxy's error reply (HAProxy's page) for a status an `act.*` code asks for.
fn status_reply(status: u16) -> Reply {
    crate::error::reply(
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
    )
}

/// Marks, in the transaction, that a plugin's state failed during it (so its
/// end does not reset the plugin's rebuild back-off).
struct StateFailed;

/// Runs `call`, marking `txn` if `plugin`'s state on this worker failed meanwhile.
pub(super) fn watched(plugin: &Plugin, txn: &mut Txn, call: impl FnOnce(&mut Txn) -> Flow) -> Flow {
    let before = runtime::failures(plugin);
    let flow = call(txn);
    if runtime::failures(plugin) > before
        && txn.plugin_state.peek::<StateFailed>(plugin.id).is_none()
    {
        txn.plugin_state.put(plugin.id, Box::new(StateFailed));
    }
    flow
}

/// The end of a request that ran `plugin`: a request with no failure of its
/// state resets the back-off (only the plugin's failures in a row count).
pub(super) fn finished(plugin: &Plugin, txn: &Txn) {
    if txn.plugin_state.peek::<StateFailed>(plugin.id).is_none() {
        runtime::request_succeeded(plugin);
    }
}

impl Filter for LuaAction {
    fn name(&self) -> &str {
        "lua"
    }

    fn phases(&self) -> Phases {
        Phases::head(self.phase) | Phases::LOG
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        watched(&self.plugin, txn, |txn| self.start(txn))
    }

    fn on_response(&self, txn: &mut Txn) -> Flow {
        watched(&self.plugin, txn, |txn| self.start(txn))
    }

    fn on_log(&self, txn: &Txn) {
        finished(&self.plugin, txn);
    }

    fn resume(&self, txn: &mut Txn) -> Flow {
        watched(&self.plugin, txn, |txn| self.resume_call(txn))
    }
}

impl LuaAction {
    fn resume_call(&self, txn: &mut Txn) -> Flow {
        let Some(mut slot) = txn.plugin_state.take::<TxnSlot>(self.plugin.id) else {
            // Nothing suspended: an `act.YIELD` return; run the action again.
            return self.start(txn);
        };
        let Some(thread) = slot.suspended.take() else {
            txn.plugin_state.put(self.plugin.id, slot);
            return self.start(txn);
        };
        let inst = Rc::clone(&slot.instance);
        self.drive(&inst, thread, MultiValue::new(), txn, *slot)
    }
}

// ---------------------------------------------------------------------------
// use_service
// ---------------------------------------------------------------------------

/// `{ use_service = "lua.<name>" }`: the request is answered by an `AppletHTTP` service.
#[derive(Debug)]
pub struct LuaService {
    plugin: Arc<Plugin>,
    name: String,
    id: u64,
}

/// Builds `use_service = "lua.<name>"` (`name` without the prefix).
pub fn build_service(plugins: &super::Plugins, name: &str) -> Result<Box<dyn Filter>, String> {
    let plugin = plugins.find("service", name, |r| &r.services)?;
    Ok(Box::new(LuaService {
        plugin: Arc::clone(plugin),
        name: name.to_string(),
        id: NEXT_RULE.fetch_add(1, Relaxed),
    }))
}

impl LuaService {
    fn what(&self) -> String {
        format!("service {:?}", self.name)
    }

    /// Reads the request body first if there is one (HAProxy's applets see it), then starts.
    fn read_then_start(&self, txn: &mut Txn) -> Flow {
        // A Wasm body filter before us may hold the body's first part (or all of it).
        let prefix = txn.req_buffered.take().map(|b| b.data).unwrap_or_default();
        if prefix.len() > super::applet::MAX_BODY {
            return Flow::Respond(super::applet::BodyError::TooLarge.reply());
        }
        match txn.req_body.take() {
            Some(body) if !http_body::Body::is_end_stream(&body) => {
                let cell = Rc::new(std::cell::RefCell::new(None));
                txn.plugin_state
                    .put(self.plugin.id, Box::new(PendingBody(Rc::clone(&cell))));
                let idle = self.plugin.client_timeout;
                Flow::Wait(Box::pin(async move {
                    let r = super::applet::read_body(prefix, body, idle).await;
                    *cell.borrow_mut() = Some(r);
                }))
            }
            _ => self.start(txn, bytes::Bytes::from(prefix)),
        }
    }

    fn start(&self, txn: &mut Txn, body: bytes::Bytes) -> Flow {
        let name = self.name.as_str();
        let (inst, thread) = match runtime::service_thread(
            &self.plugin,
            self.id,
            |f| f.services.get(name).cloned(),
            || self.what(),
        ) {
            Ok(it) => it,
            Err((inst, e)) => return self.failed(inst.as_ref(), &e),
        };
        if let Err(e) = inst.setup(|| super::applet::begin(&inst, txn, body.clone())) {
            return self.failed(Some(&inst), &e);
        }
        let mut args = MultiValue::new();
        args.push_back(LuaValue::Table(inst.applet_obj.clone()));
        let slot = runtime::take_slot(txn, &inst);
        self.drive(&inst, thread, args, txn, slot)
    }

    fn drive(
        &self,
        inst: &Rc<Instance>,
        thread: mlua::Thread,
        args: MultiValue,
        txn: &mut Txn,
        mut slot: TxnSlot,
    ) -> Flow {
        let site = Site {
            txn: std::ptr::from_mut(txn),
            writable: true,
            phase: Phase::Request,
            kind: CallKind::Service,
        };
        // The applet's state lives with the request while the service sleeps.
        if let Some(state) = txn
            .plugin_state
            .take::<super::applet::AppletState>(self.plugin.id)
        {
            *inst.cx.applet.borrow_mut() = Some(*state);
        }
        let budget = self.plugin.cpu_limit.saturating_sub(slot.cpu_used);
        let ((spent, step), keep) = inst.run(
            thread,
            args,
            &site,
            &mut slot.privv,
            &mut slot.fields,
            budget,
        );
        slot.cpu_used += spent;
        let state = inst.cx.applet.borrow_mut().take();
        match step {
            Step::Finished(_) | Step::Done => {
                runtime::put_slot(txn, slot);
                match state {
                    Some(s) => Flow::Respond(s.into_reply()),
                    None => self.failed(
                        Some(inst),
                        &CallError::runtime("the service lost its response state"),
                    ),
                }
            }
            Step::Sleep(d) => {
                slot.suspended = keep;
                runtime::put_slot(txn, slot);
                if let Some(s) = state {
                    txn.plugin_state.put(self.plugin.id, Box::new(s));
                }
                Flow::Wait(Box::pin(async move { tokio::time::sleep(d).await }))
            }
            Step::Io(op) => {
                slot.suspended = keep;
                runtime::put_slot(txn, slot);
                if let Some(s) = state {
                    txn.plugin_state.put(self.plugin.id, Box::new(s));
                }
                Flow::Wait(op)
            }
            Step::Failed(e) => {
                runtime::put_slot(txn, slot);
                self.failed(Some(inst), &e)
            }
        }
    }

    /// A service that fails answers 500 whatever `on_error` says: there is no server to fall back to.
    fn failed(&self, inst: Option<&Rc<Instance>>, e: &CallError) -> Flow {
        runtime::record_failure(&self.plugin, inst, e, &self.what());
        Flow::Respond(runtime::error_reply(e))
    }
}

/// A request body being read for a service (filled in by the wait future).
type BodyCell = Rc<std::cell::RefCell<Option<Result<bytes::Bytes, super::applet::BodyError>>>>;

/// Marks, in the transaction, a service waiting for its request body.
struct PendingBody(BodyCell);

impl Filter for LuaService {
    fn name(&self) -> &str {
        "use_service"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::LOG
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        watched(&self.plugin, txn, |txn| self.read_then_start(txn))
    }

    fn resume(&self, txn: &mut Txn) -> Flow {
        watched(&self.plugin, txn, |txn| self.resume_call(txn))
    }

    fn on_log(&self, txn: &Txn) {
        finished(&self.plugin, txn);
    }
}

impl LuaService {
    fn resume_call(&self, txn: &mut Txn) -> Flow {
        if let Some(p) = txn.plugin_state.take::<PendingBody>(self.plugin.id) {
            let read = p.0.borrow_mut().take();
            return match read {
                Some(Ok(body)) => self.start(txn, body),
                Some(Err(e)) => {
                    tracing::debug!(plugin = %self.plugin.name, error = %e, "request body for a Lua service not read");
                    Flow::Respond(e.reply())
                }
                None => self.failed(None, &CallError::runtime("the request body was not read")),
            };
        }
        let Some(mut slot) = txn.plugin_state.take::<TxnSlot>(self.plugin.id) else {
            return self.failed(
                None,
                &CallError::runtime("resumed without a waiting service"),
            );
        };
        let Some(thread) = slot.suspended.take() else {
            return self.failed(
                None,
                &CallError::runtime("resumed without a waiting service"),
            );
        };
        let inst = Rc::clone(&slot.instance);
        self.drive(&inst, thread, MultiValue::new(), txn, *slot)
    }
}

// ---------------------------------------------------------------------------
// lua.<fetch> and lua.<converter>
// ---------------------------------------------------------------------------

/// `lua.<name>(args)` in a fetch expression.
#[derive(Debug)]
struct LuaFetch {
    plugin: Arc<Plugin>,
    name: String,
    args: Vec<String>,
    phase: Phase,
    id: u64,
}

/// Builds a `lua.<name>` fetch.
pub fn build_fetch(
    plugins: &super::Plugins,
    c: &Call<'_>,
    env: &Env<'_>,
) -> Result<Box<dyn Fetch>, ParseError> {
    let name = c.name.strip_prefix("lua.").unwrap_or(c.name);
    let plugin = plugins
        .find("fetch", name, |r| &r.fetches)
        .map_err(|m| ParseError::new(c.offset, m))?;
    Ok(Box::new(LuaFetch {
        plugin: Arc::clone(plugin),
        name: name.to_string(),
        args: c.args.iter().map(|a| a.text.clone()).collect(),
        phase: env.phase,
        id: NEXT_RULE.fetch_add(1, Relaxed),
    }))
}

/// Runs a fetch or converter function synchronously; yields are errors (as in HAProxy).
fn call_sync(
    plugin: &Arc<Plugin>,
    id: u64,
    what: impl Fn() -> String,
    resolve: impl Fn(&runtime::Funcs) -> Option<mlua::Function>,
    args: &[String],
    first: impl Fn(&Instance) -> mlua::Result<(LuaValue, LuaValue)>,
    site: Site,
) -> Option<Sample> {
    let inst = match runtime::instance(plugin) {
        Ok(i) => i,
        Err(e) => {
            runtime::record_failure(plugin, None, &e, &what());
            return None;
        }
    };
    plugin.stats.calls.fetch_add(1, Relaxed);
    let binding = match inst.binding(id, &resolve, args, &what) {
        Ok(b) => b,
        Err(e) => {
            runtime::record_failure(plugin, Some(&inst), &e, &what());
            return None;
        }
    };
    // A fetch or converter has no side effects to repeat: on a memory error,
    // collect once and run it again before calling it out of memory.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let prepared = inst.thread_for(&binding.func).and_then(|t| {
            let (head, privv) = inst.setup(|| first(&inst))?;
            let mut a = MultiValue::with_capacity(1 + binding.args.len());
            a.push_back(head);
            a.extend(binding.args.iter().cloned());
            Ok((t, a, privv))
        });
        let (thread, a, mut privv) = match prepared {
            Ok(p) => p,
            Err(e) => {
                runtime::record_failure(plugin, Some(&inst), &e, &what());
                return None;
            }
        };
        let mut fields = None;
        let ((_, step), _) = inst.run(thread, a, &site, &mut privv, &mut fields, plugin.cpu_limit);
        let e = match step {
            Step::Finished(vals) => return Some(lua_to_sample(vals.front())),
            Step::Sleep(_) => {
                CallError::runtime("cannot yield (core.msleep, core.yield) in a fetch or converter")
            }
            Step::Io(_) => CallError::runtime(
                "sockets cannot wait in a fetch or converter (use them in actions, services or tasks)",
            ),
            Step::Done => CallError::runtime("txn:done() cannot be used in a fetch or converter"),
            Step::Failed(e) => e,
        };
        if e.kind == FailureKind::MemoryLimit && attempt == 1 {
            let _ = inst.setup(|| inst.lua.gc_collect());
            continue;
        }
        runtime::record_failure(plugin, Some(&inst), &e, &what());
        return None;
    }
}

impl Fetch for LuaFetch {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let site = Site {
            // Read-only: the pointer is never written through (`writable` is false).
            txn: std::ptr::from_ref(txn).cast_mut(),
            writable: false,
            phase: self.phase,
            kind: CallKind::Fetch,
        };
        let name = self.name.as_str();
        call_sync(
            &self.plugin,
            self.id,
            || format!("fetch {name:?}"),
            |f| f.fetches.get(name).cloned(),
            &self.args,
            |inst| {
                // The request's private data, as the actions of this state
                // left it (HAProxy's fetches share the stream's Lua
                // context); a fetch only reads the request, so what it
                // sets is not kept.
                let privv = txn
                    .plugin_state
                    .peek::<TxnSlot>(self.plugin.id)
                    .filter(|s| std::ptr::eq(Rc::as_ptr(&s.instance), inst))
                    .map_or(LuaValue::Nil, |s| s.privv.clone());
                Ok((LuaValue::Table(inst.txn_obj.clone()), privv))
            },
            site,
        )
        .map(Value::owned)
    }
}

/// `,lua.<name>(args)` in a fetch expression.
#[derive(Debug)]
struct LuaConverter {
    plugin: Arc<Plugin>,
    name: String,
    args: Vec<String>,
    id: u64,
}

/// Builds a `lua.<name>` converter.
pub fn build_converter(
    plugins: &super::Plugins,
    c: &Call<'_>,
) -> Result<Box<dyn Converter>, ParseError> {
    let name = c.name.strip_prefix("lua.").unwrap_or(c.name);
    let plugin = plugins
        .find("converter", name, |r| &r.converters)
        .map_err(|m| ParseError::new(c.offset, m))?;
    Ok(Box::new(LuaConverter {
        plugin: Arc::clone(plugin),
        name: name.to_string(),
        args: c.args.iter().map(|a| a.text.clone()).collect(),
        id: NEXT_RULE.fetch_add(1, Relaxed),
    }))
}

impl Converter for LuaConverter {
    fn convert<'t>(&'t self, input: Value<'t>, _txn: &'t Txn) -> Option<Value<'t>> {
        let name = self.name.as_str();
        call_sync(
            &self.plugin,
            self.id,
            || format!("converter {name:?}"),
            |f| f.converters.get(name).cloned(),
            &self.args,
            |inst| Ok((value_to_lua(&inst.lua, &input)?, LuaValue::Nil)),
            Site::none(CallKind::Converter),
        )
        .map(Value::owned)
    }
}

/// A converter's input as the Lua function gets it: always a string, as
/// HAProxy registers Lua converters with input type `str` and casts the
/// sample to it first (a boolean is `"1"`/`"0"`, an integer its digits, an
/// address its text); binary stays bytes.
pub(crate) fn value_to_lua(lua: &mlua::Lua, v: &Value<'_>) -> mlua::Result<LuaValue> {
    Ok(LuaValue::String(match v {
        Value::Bool(b) => lua.create_string(if *b { "1" } else { "0" })?,
        Value::Int(i) => lua.create_string(i.to_string())?,
        Value::Ip(ip) => lua.create_string(ip.to_string())?,
        Value::Str(s) => lua.create_string(s.as_bytes())?,
        Value::Bin(b) => lua.create_string(b)?,
    }))
}

/// A fetch's or converter's Lua return value as a sample, as HAProxy's
/// `hlua_lua2smp` makes it: a number is an integer (`lua_tointeger`: a
/// float without an exact integer value is 0), and `nil` (or a table, a
/// function, nothing at all) is the boolean `false`, which is a value: a
/// log-format string shows it as `0` and `-m found` holds.
pub(crate) fn lua_to_sample(v: Option<&LuaValue>) -> Sample {
    match v {
        Some(LuaValue::Boolean(b)) => Sample::Bool(*b),
        Some(LuaValue::Integer(i)) => Sample::Int(*i),
        Some(LuaValue::Number(n)) => Sample::Int(float_to_int(*n)),
        Some(LuaValue::String(s)) => {
            let b = s.as_bytes();
            match std::str::from_utf8(&b) {
                Ok(t) => Sample::Str(t.to_string()),
                Err(_) => Sample::Bin(b.to_vec()),
            }
        }
        _ => Sample::Bool(false),
    }
}

/// Lua's `lua_tointeger` on a float: its value if it is an integer that fits, else 0.
fn float_to_int(n: f64) -> i64 {
    // i64::MAX as f64 rounds up to 2^63, itself out of range: hence `<`.
    if n.fract() == 0.0 && n >= i64::MIN as f64 && n < i64::MAX as f64 {
        n as i64
    } else {
        0
    }
}

/// A borrowed text value (for converters taking Lua strings).
pub(crate) fn text_value(b: &[u8]) -> Value<'static> {
    match std::str::from_utf8(b) {
        Ok(s) => Value::Str(Cow::Owned(s.to_string())),
        Err(_) => Value::Bin(Cow::Owned(b.to_vec())),
    }
}
