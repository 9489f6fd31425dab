//! A frontend's Lua filters: HAProxy's `filter lua.<name> [args]`
//! (`filters = [{ lua = "<name>", args = [...] }]`), registered by a script
//! with `core.register_filter(name, Class, function(class, args) ... end)`.
//!
//! One [`LuaFilter`] per `filters` entry, placed after the frontend's
//! `http_request` rules and after its `http_response` rules (HAProxy calls
//! a filter's `http_headers` after the rules processed the message). Per
//! request, `Class:new()` makes the instance (nil: not attached); then, per
//! direction, `start_analyze(txn, chn)` and `http_headers(txn, msg)` in the
//! head hook, `http_payload(txn, msg)` per part of the body and
//! `http_end(txn, msg)` at its end for a filter that registered data
//! filtering on that channel, and `end_analyze(txn, chn)` for both
//! channels when the exchange is over — HAProxy 2.6's order.
//!
//! Callbacks cannot yield (as in HAProxy: `core.msleep` there is an error).
//! `filter.WAIT` calls the callback again after `filter.wake_time` (10 ms
//! if unset), up to the client timeout. Bodies stream: the first part is
//! read through the chain's body driver (with the transaction), every later
//! part through a [`BodyTap`] (without it: the headers are gone by then, as
//! in HAProxy where they are forwarded before the payload). What the filter
//! does not forward stays held, at most the plugin's `max_body_size`.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use mlua::{Function, Table, Value as LuaValue};
use toml::Spanned;

use super::api::filter::{CALL_KEY, CONF_KEY, FilterCx, Stage, cx_of};
use super::runtime::{self, CallError, CallKind, Instance, Site, Step};
use super::{FailureKind, LuaHost, OnError, Plugin, arg_strings};
use crate::config::schema::RawFilter;
use crate::config::{ConfigError, SourceMap};
use crate::error::{ErrorSource, PluginFailure};
use crate::filter::{
    BodyFlow, BodyLimits, BodyTap, BoxError, Filter, Flow, Phases, Reply, StreamFilter,
};
use crate::txn::{Phase, Txn};

static NEXT_FILTER: AtomicU64 = AtomicU64::new(1);

/// HAProxy's `filter.*` return codes.
const WAIT: i64 = 0;
/// Wait between two calls of a callback that answered `filter.WAIT` without `filter.wake_time`.
const DEFAULT_WAKE: Duration = Duration::from_millis(10);

/// Builds a frontend's `filters`: each must name a filter a plugin registered.
pub fn build_filters(
    host: &LuaHost,
    raw: &[Spanned<RawFilter>],
    source: &SourceMap,
) -> Result<Vec<Arc<dyn Filter>>, ConfigError> {
    Ok(build(host, raw, source)?
        .into_iter()
        .map(|f| f as Arc<dyn Filter>)
        .collect())
}

/// Builds a TCP frontend's `filters` (HAProxy's `filter lua.<name>` in
/// `mode tcp`: `tcp_payload` on the raw bytes, see `filter/tcp.rs`).
pub fn build_stream_filters(
    host: &LuaHost,
    raw: &[Spanned<RawFilter>],
    source: &SourceMap,
) -> Result<Vec<Arc<dyn StreamFilter>>, ConfigError> {
    Ok(build(host, raw, source)?
        .into_iter()
        .map(|f| f as Arc<dyn StreamFilter>)
        .collect())
}

fn build(
    host: &LuaHost,
    raw: &[Spanned<RawFilter>],
    source: &SourceMap,
) -> Result<Vec<Arc<LuaFilter>>, ConfigError> {
    let mut out: Vec<Arc<LuaFilter>> = Vec::with_capacity(raw.len());
    for entry in raw {
        let f = entry.get_ref();
        let Some(name) = &f.lua else {
            return Err(source.error(
                entry.span(),
                "a filter needs `lua = \"<name>\"` (a filter a script registered with core.register_filter)",
            ));
        };
        let plugin = host
            .plugins
            .find("filter", name.get_ref(), |r| &r.filters)
            .map_err(|m| source.error(name.span(), m))?;
        let args = match &f.args {
            Some(a) => arg_strings(a).map_err(|m| source.error(a.span(), m))?,
            None => Vec::new(),
        };
        out.push(Arc::new(LuaFilter {
            plugin: Arc::clone(plugin),
            label: format!("lua.{}", name.get_ref()),
            what: format!("filter {:?}", name.get_ref()),
            registered: name.get_ref().clone(),
            args,
            id: NEXT_FILTER.fetch_add(1, Relaxed),
        }));
    }
    Ok(out)
}

/// One `filters` entry.
#[derive(Debug)]
pub struct LuaFilter {
    plugin: Arc<Plugin>,
    /// The name given to `core.register_filter`.
    registered: String,
    args: Vec<String>,
    /// Process-unique: keys the per-request state and the configured class in each state.
    id: u64,
    /// `lua.<name>`, for logs and stats.
    label: String,
    what: String,
}

/// A filter callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callback {
    StartAnalyze,
    HttpHeaders,
    HttpPayload,
    HttpEnd,
    EndAnalyze,
    /// TCP mode: the channel's raw bytes.
    TcpPayload,
}

impl Callback {
    fn name(self) -> &'static str {
        match self {
            Callback::StartAnalyze => "start_analyze",
            Callback::HttpHeaders => "http_headers",
            Callback::HttpPayload => "http_payload",
            Callback::HttpEnd => "http_end",
            Callback::EndAnalyze => "end_analyze",
            Callback::TcpPayload => "tcp_payload",
        }
    }

    fn stage(self) -> Stage {
        match self {
            Callback::StartAnalyze | Callback::EndAnalyze => Stage::Analyze,
            Callback::HttpHeaders => Stage::Headers,
            Callback::HttpPayload | Callback::TcpPayload => Stage::Payload,
            Callback::HttpEnd => Stage::End,
        }
    }

    /// Whether it gets the channel (else the HTTP message).
    fn takes_channel(self) -> bool {
        matches!(
            self,
            Callback::StartAnalyze | Callback::EndAnalyze | Callback::TcpPayload
        )
    }
}

/// How a callback returned.
#[derive(Debug)]
enum Ret {
    /// The instance has no such function.
    Missing,
    /// It returned nothing.
    Nothing,
    /// Its first return value.
    Value(LuaValue),
    /// `txn:done()`.
    Done,
}

impl Ret {
    /// The code as HAProxy reads it (`lua_tointeger`; no value: `filter.CONTINUE`).
    fn code(&self) -> i64 {
        match self {
            Ret::Missing | Ret::Nothing | Ret::Done => 1,
            Ret::Value(v) => to_integer(v),
        }
    }
}

/// Lua's `lua_tointeger`: integers, integral floats and numeric strings; else 0.
fn to_integer(v: &LuaValue) -> i64 {
    match v {
        LuaValue::Integer(i) => *i,
        LuaValue::Number(n) if n.fract() == 0.0 && n.is_finite() => *n as i64,
        LuaValue::String(s) => {
            let t = s.to_string_lossy();
            let t = t.trim();
            t.parse::<i64>().ok().or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.fract() == 0.0 && f.is_finite())
                    .map(|f| f as i64)
            })
        }
        .unwrap_or(0),
        _ => 0,
    }
}

/// The filter instance of one request.
struct Slot {
    /// Declared before `inst`: released before the state it belongs to.
    obj: Table,
    inst: Rc<Instance>,
    /// Data filtering registered (request, response).
    data: [bool; 2],
    /// `http_end` ran (request, response).
    ended: [bool; 2],
    /// A callback that answered `filter.WAIT`: called again on resume, and since when.
    waiting: Option<(Callback, Instant)>,
    /// A callback failed during this request (the back-off is not reset at its end).
    failed: bool,
}

/// Where a callback runs: the transaction it may see.
#[derive(Clone, Copy)]
enum Access {
    Write(*mut Txn),
    Read(*const Txn),
    /// A later part of a body, streaming after the chain ran.
    Detached,
}

fn dir(resp: bool) -> usize {
    usize::from(resp)
}

/// The proxy's error page for `status`.
fn status_reply(status: u16) -> Reply {
    crate::error::reply(
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
    )
}

/// What HAProxy answers when a filter fails the message (`filter.ERROR`):
/// 400 for the request; for the response HAProxy closes the connection, a
/// 502 here.
fn refused(resp: bool) -> Reply {
    let mut r = status_reply(if resp { 502 } else { 400 });
    if !resp {
        // HAProxy closes the client connection after this answer.
        r.headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    r
}

/// Leaves filter mode when dropped.
struct Leave<'a>(&'a FilterCx);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.stage.set(Stage::Idle);
    }
}

/// Runs one callback of `obj` in `inst`. `fcx` must have been entered.
#[allow(clippy::too_many_arguments)]
fn invoke(
    plugin: &Plugin,
    inst: &Rc<Instance>,
    fcx: &FilterCx,
    obj: &Table,
    cb: Callback,
    resp: bool,
    access: Access,
    txn_slot: Option<&mut runtime::TxnSlot>,
) -> Result<Ret, CallError> {
    // However the call ends, the API leaves filter mode (`txn.http_req` is gone).
    let _leave = Leave(fcx);
    plugin.stats.calls.fetch_add(1, Relaxed);
    let call: Function = inst
        .setup(|| inst.lua.named_registry_value(CALL_KEY))
        .map_err(|e| CallError::runtime(format!("filter dispatcher missing: {}", e.message)))?;
    let thread = inst.thread_for(&call)?;
    let (txn, writable) = match access {
        Access::Write(p) => (p, true),
        Access::Read(p) => (p.cast_mut(), false),
        Access::Detached => (std::ptr::null_mut(), false),
    };
    let site = Site {
        txn,
        writable,
        phase: if resp {
            Phase::Response
        } else {
            Phase::Request
        },
        kind: CallKind::Action,
    };
    let (mut privv, mut fields) = (LuaValue::Nil, None);
    let mut slot = txn_slot;
    if let Some(s) = slot.as_deref_mut() {
        privv = std::mem::replace(&mut s.privv, LuaValue::Nil);
        fields = s.fields.take();
    }
    let kind = if cb.takes_channel() { "chn" } else { "msg" };
    let ((_, step), _keep) = inst.run(
        thread,
        (obj.clone(), cb.name(), resp, kind),
        &site,
        &mut privv,
        &mut fields,
        plugin.cpu_limit,
    );
    if let Some(s) = slot {
        s.privv = privv;
        s.fields = fields;
    }
    match step {
        Step::Finished(vals) => Ok(match vals.front() {
            Some(LuaValue::Boolean(false)) | None => Ret::Missing,
            _ => match vals.get(1) {
                Some(v) => Ret::Value(v.clone()),
                None => Ret::Nothing,
            },
        }),
        // As HAProxy 2.6: no filter callback may yield.
        Step::Sleep(_) | Step::Io(_) => Err(CallError::runtime(format!(
            "yield functions like core.tcp() or core.sleep() are not allowed from '{}' callback",
            cb.name()
        ))),
        Step::Done => Ok(Ret::Done),
        Step::Failed(e) => Err(e),
    }
}

/// Why a part of a body could not go through a filter.
enum StepError {
    /// The filter held more than `max_body_size`.
    TooLarge,
    /// `filter.ERROR`, a negative count or `txn:done()`: the message fails.
    Refused,
    /// The callback failed; the window as it was left.
    Failed(CallError, Vec<u8>),
}

/// The body of one direction as one filter sees it.
struct Pipe<'a> {
    plugin: &'a Plugin,
    inst: &'a Rc<Instance>,
    obj: &'a Table,
    resp: bool,
    data: &'a mut [bool; 2],
}

impl Pipe<'_> {
    /// Runs `http_payload` on what the filter holds plus `chunk` (and
    /// `http_end` when `end`); returns what goes on and keeps in `held`
    /// what the filter did not forward.
    fn step(
        &mut self,
        held: &mut Vec<u8>,
        chunk: &[u8],
        end: bool,
        access: Access,
        mut txn_slot: Option<&mut runtime::TxnSlot>,
    ) -> Result<Vec<u8>, StepError> {
        let max = self.plugin.max_body;
        // What the filter kept back, plus this part (already in memory).
        if held.len() > max {
            return Err(StepError::TooLarge);
        }
        held.extend_from_slice(chunk);
        let Some(fcx) = cx_of(&self.inst.lua) else {
            return Err(StepError::Failed(
                CallError::runtime("filter state missing"),
                std::mem::take(held),
            ));
        };
        let mut out = Vec::new();
        // At the end it runs even on an empty window, so a filter can append
        // once `eom()` holds (HAProxy also calls it without new data).
        if (!held.is_empty() || end) && self.data[dir(self.resp)] {
            fcx.enter(Stage::Payload, self.resp, end);
            fcx.max.set(max);
            fcx.data.set(*self.data);
            match fcx.buf.try_borrow_mut() {
                Ok(mut b) => *b = std::mem::take(held),
                Err(_) => {
                    fcx.stage.set(Stage::Idle);
                    return Err(StepError::Failed(
                        CallError::runtime("filter buffer in use"),
                        std::mem::take(held),
                    ));
                }
            }
            let r = invoke(
                self.plugin,
                self.inst,
                &fcx,
                self.obj,
                Callback::HttpPayload,
                self.resp,
                access,
                txn_slot.as_deref_mut(),
            );
            *self.data = fcx.data.get();
            let buf = fcx
                .buf
                .try_borrow_mut()
                .map(|mut b| std::mem::take(&mut *b))
                .unwrap_or_default();
            let off = fcx.off.get().min(buf.len());
            let input = buf.len() - off;
            let n = match r {
                Err(e) => return Err(StepError::Failed(e, buf)),
                Ok(Ret::Done) => return Err(StepError::Refused),
                Ok(Ret::Missing | Ret::Nothing) => input,
                Ok(Ret::Value(v)) => {
                    let n = to_integer(&v);
                    if n < 0 {
                        return Err(StepError::Refused);
                    }
                    usize::try_from(n).unwrap_or(usize::MAX).min(input)
                }
            };
            let mut buf = buf;
            *held = buf.split_off(off + n);
            out = buf;
            // Only what it keeps back is bounded: what it forwards goes on.
            if held.len() > max && !end {
                return Err(StepError::TooLarge);
            }
        }
        if end {
            if self.data[dir(self.resp)] {
                fcx.enter(Stage::End, self.resp, true);
                fcx.data.set(*self.data);
                let r = invoke(
                    self.plugin,
                    self.inst,
                    &fcx,
                    self.obj,
                    Callback::HttpEnd,
                    self.resp,
                    access,
                    txn_slot,
                );
                *self.data = fcx.data.get();
                match r {
                    Err(e) => {
                        out.append(held);
                        return Err(StepError::Failed(e, out));
                    }
                    Ok(Ret::Done) => return Err(StepError::Refused),
                    // `filter.WAIT` at the end of a streamed body cannot wait (the
                    // tap runs synchronously): the message ends as if it continued.
                    Ok(r) if r.code() < 0 => return Err(StepError::Refused),
                    Ok(_) => {}
                }
            }
            // At the end of the message what is still held goes on.
            out.append(held);
        }
        Ok(out)
    }
}

impl LuaFilter {
    /// Counts and logs a failure and applies `on_error`.
    fn fail(&self, slot: Option<&mut Slot>, inst: Option<&Rc<Instance>>, e: &CallError) -> Flow {
        if let Some(s) = slot {
            s.failed = true;
        }
        runtime::fail(&self.plugin, inst, e, &self.what)
    }

    /// Creates the request's (`http`) or TCP stream's filter instance
    /// (`Class:new()`); `None`: not attached.
    fn attach(&self, txn: &mut Txn, http: bool) -> Result<Option<Slot>, Box<Flow>> {
        let plugin = &self.plugin;
        let inst = runtime::instance(plugin).map_err(|e| Box::new(self.fail(None, None, &e)))?;
        let Some((class, fun)) = inst.funcs.filters.get(&self.registered).cloned() else {
            let e = CallError::runtime(format!(
                "{} is not registered by this instance of the script (was it registered conditionally?)",
                self.what
            ));
            return Err(Box::new(self.fail(None, Some(&inst), &e)));
        };
        let Some(fcx) = cx_of(&inst.lua) else {
            let e = CallError::runtime("filter state missing");
            return Err(Box::new(self.fail(None, Some(&inst), &e)));
        };
        let prepared = inst
            .setup(|| {
                let new: Function = inst.lua.named_registry_value(CONF_KEY)?;
                let args = inst
                    .lua
                    .create_sequence_from(self.args.iter().map(String::as_str))?;
                Ok((new, args))
            })
            .and_then(|(new, args)| Ok((inst.thread_for(&new)?, args)));
        let (thread, args) = prepared.map_err(|e| Box::new(self.fail(None, Some(&inst), &e)))?;
        plugin.stats.calls.fetch_add(1, Relaxed);
        fcx.enter(Stage::Setup, false, false);
        fcx.data.set([false; 2]);
        let site = Site {
            txn: std::ptr::from_mut(txn),
            writable: true,
            phase: Phase::Request,
            kind: CallKind::Action,
        };
        let (mut privv, mut fields) = (LuaValue::Nil, None);
        let id = i64::try_from(self.id).unwrap_or(i64::MAX);
        let ((_, step), _) = inst.run(
            thread,
            (id, class, fun, args, http),
            &site,
            &mut privv,
            &mut fields,
            plugin.cpu_limit,
        );
        fcx.stage.set(Stage::Idle);
        let obj = match step {
            Step::Finished(vals) => match vals.into_iter().next() {
                Some(LuaValue::Table(t)) => t,
                _ => return Ok(None),
            },
            Step::Sleep(_) | Step::Io(_) => {
                let e = CallError::runtime(
                    "yield functions like core.tcp() or core.sleep() are not allowed from 'new' function",
                );
                return Err(Box::new(self.fail(None, Some(&inst), &e)));
            }
            Step::Done => return Ok(None),
            Step::Failed(e) => return Err(Box::new(self.fail(None, Some(&inst), &e))),
        };
        Ok(Some(Slot {
            inst,
            obj,
            data: fcx.data.get(),
            ended: [false; 2],
            waiting: None,
            failed: false,
        }))
    }

    /// Whether the message declares a length the filter may hold whole: it
    /// is then read whole and filtered in one `http_payload` call, so it
    /// keeps an exact `Content-Length` (HAProxy forwards the server's
    /// length as it is; a streamed body here would go chunked). Bodies
    /// without a length, or longer, stream.
    fn buffers_whole(&self, txn: &Txn, resp: bool) -> bool {
        let headers = if resp {
            &txn.resp_headers
        } else {
            &txn.req_headers
        };
        headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| n <= self.plugin.max_body)
    }

    /// Whether the phase's message has no body left for the body hooks.
    fn no_body(txn: &Txn, resp: bool) -> bool {
        let (unread, read) = if resp {
            (&txn.resp_body, &txn.resp_buffered)
        } else {
            (&txn.req_body, &txn.req_buffered)
        };
        unread.as_ref().is_none_or(http_body::Body::is_end_stream) && read.is_none()
    }

    /// Runs the head callbacks of the phase from `from` on: `start_analyze`,
    /// `http_headers`, and `http_end` for a data filter of a message without body.
    fn run_head(&self, txn: &mut Txn, slot: &mut Slot, from: Callback) -> Flow {
        let resp = txn.phase == Phase::Response;
        let order = [
            Callback::StartAnalyze,
            Callback::HttpHeaders,
            Callback::HttpEnd,
        ];
        let start = order.iter().position(|c| *c == from).unwrap_or(0);
        for &cb in &order[start..] {
            let no_body = Self::no_body(txn, resp);
            if cb == Callback::HttpEnd && !(slot.data[dir(resp)] && no_body) {
                continue;
            }
            let Some(fcx) = cx_of(&slot.inst.lua) else {
                let inst = Rc::clone(&slot.inst);
                return self.fail(
                    Some(slot),
                    Some(&inst),
                    &CallError::runtime("filter state missing"),
                );
            };
            fcx.enter(cb.stage(), resp, no_body);
            fcx.data.set(slot.data);
            fcx.max.set(self.plugin.max_body);
            let inst = Rc::clone(&slot.inst);
            let mut vals = runtime::take_slot(txn, &inst);
            let r = invoke(
                &self.plugin,
                &inst,
                &fcx,
                &slot.obj,
                cb,
                resp,
                Access::Write(std::ptr::from_mut(txn)),
                Some(&mut vals),
            );
            runtime::put_slot(txn, vals);
            slot.data = fcx.data.get();
            if cb == Callback::HttpEnd {
                slot.ended[dir(resp)] = true;
            }
            let ret = match r {
                Ok(r) => r,
                Err(e) => return self.fail(Some(slot), Some(&inst), &e),
            };
            if let Ret::Done = ret {
                return Flow::Respond(
                    inst.cx
                        .reply
                        .borrow_mut()
                        .take()
                        .unwrap_or_else(|| status_reply(if resp { 502 } else { 500 })),
                );
            }
            let code = ret.code();
            if code < 0 {
                return Flow::Respond(refused(resp));
            }
            if code == WAIT {
                let since = match slot.waiting {
                    Some((c, t)) if c == cb => t,
                    _ => Instant::now(),
                };
                if since.elapsed() > self.plugin.client_timeout {
                    let e = CallError {
                        kind: FailureKind::PauseTimeout,
                        message: format!(
                            "'{}' kept answering filter.WAIT for longer than the client timeout",
                            cb.name()
                        ),
                        poisoned: false,
                    };
                    slot.waiting = None;
                    return self.fail(Some(slot), Some(&inst), &e);
                }
                slot.waiting = Some((cb, since));
                let wake = fcx.wake_ms.get().map_or(DEFAULT_WAKE, |ms| {
                    Duration::from_millis(ms.clamp(1, 86_400_000))
                });
                // Created lazily: the timer registers with the runtime when polled.
                return Flow::Wait(Box::pin(async move { tokio::time::sleep(wake).await }));
            }
            slot.waiting = None;
        }
        Flow::Continue
    }

    /// The head hook of either phase.
    fn head(&self, txn: &mut Txn) -> Flow {
        let mut slot = match txn.plugin_state.take::<Slot>(self.id) {
            Some(s) => *s,
            None if txn.phase == Phase::Request => match self.attach(txn, true) {
                Ok(Some(s)) => s,
                Ok(None) => return Flow::Continue,
                Err(flow) => return *flow,
            },
            // Not attached to this request.
            None => return Flow::Continue,
        };
        let flow = self.run_head(txn, &mut slot, Callback::StartAnalyze);
        txn.plugin_state.put(self.id, Box::new(slot));
        flow
    }

    /// The body hook: the first part of the phase's body (with the
    /// transaction), then a tap for the rest.
    fn body(&self, txn: &mut Txn, end_of_stream: bool) -> BodyFlow {
        let resp = txn.phase == Phase::Response;
        let Some(mut slot) = txn.plugin_state.take::<Slot>(self.id).map(|s| *s) else {
            return BodyFlow::Continue;
        };
        if slot.ended[dir(resp)] {
            txn.plugin_state.put(self.id, Box::new(slot));
            return BodyFlow::Continue;
        }
        let unread = if resp { &txn.resp_body } else { &txn.req_body };
        // Nothing left to read (trailers may follow): this part is the whole body.
        let end = end_of_stream || unread.as_ref().is_none_or(http_body::Body::is_end_stream);
        if !end && self.buffers_whole(txn, resp) {
            txn.plugin_state.put(self.id, Box::new(slot));
            return BodyFlow::StopAndBuffer;
        }
        let buffered = if resp {
            &mut txn.resp_buffered
        } else {
            &mut txn.req_buffered
        };
        let chunk = buffered
            .as_mut()
            .map(|b| std::mem::take(&mut b.data))
            .unwrap_or_default();
        let inst = Rc::clone(&slot.inst);
        let obj = slot.obj.clone();
        let mut data = slot.data;
        let mut held = Vec::new();
        let mut vals = runtime::take_slot(txn, &inst);
        let r = Pipe {
            plugin: &self.plugin,
            inst: &inst,
            obj: &obj,
            resp,
            data: &mut data,
        }
        .step(
            &mut held,
            &chunk,
            end,
            Access::Write(std::ptr::from_mut(txn)),
            Some(&mut vals),
        );
        runtime::put_slot(txn, vals);
        slot.data = data;
        if end {
            slot.ended[dir(resp)] = true;
        }
        let flow = match r {
            Ok(out) => {
                put_body(txn, resp, out);
                if end {
                    BodyFlow::Continue
                } else {
                    BodyFlow::Stream(Box::new(FilterTap {
                        plugin: Arc::clone(&self.plugin),
                        what: self.what.clone(),
                        inst,
                        obj,
                        resp,
                        data,
                        held,
                        failed: false,
                        ended: false,
                    }))
                }
            }
            Err(StepError::TooLarge) => {
                BodyFlow::Respond(ErrorSource::Plugin(PluginFailure::BodyLimit(txn.phase)).reply())
            }
            Err(StepError::Refused) => BodyFlow::Respond(refused(resp)),
            Err(StepError::Failed(e, window)) => {
                put_body(txn, resp, window);
                match self.fail(Some(&mut slot), Some(&inst), &e) {
                    Flow::Respond(r) => BodyFlow::Respond(r),
                    // fail_open: the rest of the body passes untouched.
                    _ => BodyFlow::Continue,
                }
            }
        };
        txn.plugin_state.put(self.id, Box::new(slot));
        flow
    }
}

/// Puts `data` back as the phase's buffered body.
fn put_body(txn: &mut Txn, resp: bool, data: Vec<u8>) {
    let buffered = if resp {
        &mut txn.resp_buffered
    } else {
        &mut txn.req_buffered
    };
    match buffered {
        Some(b) => b.data = data,
        None => {
            *buffered = Some(crate::txn::BufferedBody {
                data,
                ..Default::default()
            });
        }
    }
}

impl Filter for LuaFilter {
    fn name(&self) -> &str {
        &self.label
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
            | Phases::REQUEST_BODY
            | Phases::RESPONSE
            | Phases::RESPONSE_BODY
            | Phases::LOG
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        self.head(txn)
    }

    fn on_response(&self, txn: &mut Txn) -> Flow {
        self.head(txn)
    }

    fn resume(&self, txn: &mut Txn) -> Flow {
        let Some(mut slot) = txn.plugin_state.take::<Slot>(self.id).map(|s| *s) else {
            return Flow::Continue;
        };
        let flow = match slot.waiting {
            Some((cb, _)) => self.run_head(txn, &mut slot, cb),
            None => Flow::Continue,
        };
        txn.plugin_state.put(self.id, Box::new(slot));
        flow
    }

    fn body_limits(&self, txn: &Txn) -> Option<BodyLimits> {
        let resp = txn.phase == Phase::Response;
        let slot = txn.plugin_state.peek::<Slot>(self.id)?;
        (slot.data[dir(resp)] && !slot.ended[dir(resp)]).then_some(BodyLimits {
            max: self.plugin.max_body,
            idle: self.plugin.client_timeout,
        })
    }

    fn on_body(&self, txn: &mut Txn, end_of_stream: bool) -> BodyFlow {
        self.body(txn, end_of_stream)
    }

    fn on_trailers(&self, txn: &mut Txn) -> BodyFlow {
        self.body(txn, true)
    }

    /// `end_analyze` for both channels (as HAProxy, also when the response
    /// was never analyzed), read-only: the exchange is over.
    fn on_log(&self, txn: &Txn) {
        let Some(slot) = txn.plugin_state.peek::<Slot>(self.id) else {
            return;
        };
        let mut failed = slot.failed;
        for resp in [false, true] {
            let Some(fcx) = cx_of(&slot.inst.lua) else {
                return;
            };
            fcx.enter(Stage::Analyze, resp, true);
            fcx.data.set(slot.data);
            if let Err(e) = invoke(
                &self.plugin,
                &slot.inst,
                &fcx,
                &slot.obj,
                Callback::EndAnalyze,
                resp,
                Access::Read(std::ptr::from_ref(txn)),
                None,
            ) {
                failed = true;
                runtime::record_failure(&self.plugin, Some(&slot.inst), &e, &self.what);
            }
        }
        if !failed {
            runtime::request_succeeded(&self.plugin);
        }
    }
}

/// Runs a filter on the later parts of a body it registered data filtering
/// on, after the chain let the body go on.
struct FilterTap {
    plugin: Arc<Plugin>,
    what: String,
    /// Declared before `inst`: released before the state it belongs to.
    obj: Table,
    inst: Rc<Instance>,
    resp: bool,
    data: [bool; 2],
    /// What the filter did not forward yet (at most `max_body_size`).
    held: Vec<u8>,
    /// A callback failed: the rest passes untouched (fail_open).
    failed: bool,
    /// `http_end` ran.
    ended: bool,
}

impl std::fmt::Debug for FilterTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterTap")
            .field("plugin", &self.plugin.name)
            .field("resp", &self.resp)
            .field("held", &self.held.len())
            .finish()
    }
}

impl BodyTap for FilterTap {
    fn data(&mut self, data: bytes::Bytes, eos: bool) -> Result<bytes::Bytes, BoxError> {
        if self.failed || self.ended {
            return Ok(data);
        }
        // The worker's state was rebuilt since (after a failure elsewhere):
        // this request's filter instance is gone with it.
        let live = runtime::instance(&self.plugin).is_ok_and(|i| Rc::ptr_eq(&i, &self.inst));
        let r = if live {
            Pipe {
                plugin: &self.plugin,
                inst: &self.inst,
                obj: &self.obj,
                resp: self.resp,
                data: &mut self.data,
            }
            .step(&mut self.held, &data, eos, Access::Detached, None)
        } else {
            Err(StepError::Failed(
                CallError::runtime("the Lua state was rebuilt while the body streamed"),
                std::mem::take(&mut self.held),
            ))
        };
        self.ended = eos;
        match r {
            Ok(out) => Ok(bytes::Bytes::from(out)),
            Err(StepError::TooLarge) => {
                self.failed = true;
                Err(format!(
                    "{}: held more than max_body_size ({} bytes)",
                    self.what, self.plugin.max_body
                )
                .into())
            }
            Err(StepError::Refused) => {
                self.failed = true;
                Err(format!("{} failed the message (filter.ERROR)", self.what).into())
            }
            Err(StepError::Failed(e, mut window)) => {
                self.failed = true;
                runtime::record_failure(&self.plugin, Some(&self.inst), &e, &self.what);
                // The headers went out already: on_error can only pass the rest or abort.
                match self.plugin.on_error {
                    OnError::FailOpen => {
                        if !live {
                            window.extend_from_slice(&data);
                        }
                        Ok(bytes::Bytes::from(window))
                    }
                    OnError::FailClosed => Err(e.message.into()),
                }
            }
        }
    }
}

mod tcp;
#[cfg(test)]
mod tests;
