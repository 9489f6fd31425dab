//! HAProxy's filter classes (2.5+): `core.register_filter`, the `filter`
//! table, and the `Channel` and `HTTPMessage` objects a filter's callbacks
//! get. The objects and most methods are written in Lua (`filter.lua`); this
//! file holds the registration and the primitives over [`FilterCx`], the
//! part of the message the running callback works on.
//!
//! The data model is HAProxy's from a filter's point of view: during
//! `http_payload` the callback sees a window of the body it has not
//! forwarded yet (the *input*); `forward`/`send` move bytes out of it, the
//! other methods rewrite it, and what the callback leaves in it when it
//! returns is forwarded unless it returns a smaller count (what is not
//! forwarded is presented again with the next data).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::args::{Args, func, none};
use super::one;
use crate::lua::runtime::{CallCx, Collect, ERR_MARK, mark};

/// Registry name of `filter.lua`'s dispatcher: `(obj, callback, txn, resp, kind)`
/// → `(defined, results...)`.
pub(crate) const CALL_KEY: &str = "portcullis.filter.call";
/// Registry name of `filter.lua`'s per-declaration set-up: `(id, class, fn, args)`
/// → the filter's configured class (cached per declaration).
pub(crate) const CONF_KEY: &str = "portcullis.filter.conf";

/// Which filter callback is running (decides what `HTTPMessage` allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Stage {
    /// Not in a filter callback.
    #[default]
    Idle,
    /// `Class:new()` or the registration function.
    Setup,
    /// `start_analyze` / `end_analyze`.
    Analyze,
    /// `http_headers`: the headers may still change.
    Headers,
    /// `http_payload`: the body window is there.
    Payload,
    /// `http_end`.
    End,
}

/// The state of the running filter callback, shared by the primitives
/// (worker-local, one per Lua state; plain Rust data only).
#[derive(Debug, Default)]
pub(crate) struct FilterCx {
    pub stage: Cell<Stage>,
    /// The callback works on the response.
    pub resp: Cell<bool>,
    /// The body window: `[..off]` forwarded by this callback, `[off..]` its input.
    pub buf: RefCell<Vec<u8>>,
    pub off: Cell<usize>,
    /// The end of the message is in (or was set with `set_eom`).
    pub eom: Cell<bool>,
    /// Most bytes the window may hold (`is_full`, inserts beyond it fail).
    pub max: Cell<usize>,
    /// Data filtering registered, per direction (request, response).
    pub data: Cell<[bool; 2]>,
    /// `filter.wake_time` of the running callback, in milliseconds.
    pub wake_ms: Cell<Option<u64>>,
    /// The running callback filters a TCP stream (its `Channel` works on `buf`).
    pub tcp: Cell<bool>,
}

impl FilterCx {
    /// Sets up a callback of `stage` on the request or the response.
    pub(crate) fn enter(&self, stage: Stage, resp: bool, eom: bool) {
        self.stage.set(stage);
        self.resp.set(resp);
        self.eom.set(eom);
        self.off.set(0);
        self.wake_ms.set(None);
    }

    /// The input window's length.
    fn input(&self) -> usize {
        self.buf
            .try_borrow()
            .map_or(0, |b| b.len().saturating_sub(self.off.get()))
    }
}

/// The filter state of `lua` (installed with the API).
pub(crate) fn cx_of(lua: &Lua) -> Option<Rc<FilterCx>> {
    lua.try_app_data_ref::<Rc<FilterCx>>()
        .ok()
        .flatten()
        .map(|r| Rc::clone(&r))
}

/// Resolves HAProxy's `offset` argument (relative to the input, negative
/// from its end) into an index of the input; `None`: out of range.
fn offset_arg(v: &Value, input: usize) -> Result<Option<usize>, ()> {
    let n = match v {
        Value::Nil => return Ok(Some(0)),
        Value::Integer(i) => *i,
        Value::Number(f) if f.fract() == 0.0 => *f as i64,
        _ => return Err(()),
    };
    let input_i = i64::try_from(input).unwrap_or(i64::MAX);
    let at = if n < 0 { (input_i + n).max(0) } else { n };
    Ok((at <= input_i).then(|| usize::try_from(at).unwrap_or(usize::MAX)))
}

/// Resolves a `length` argument from `at` (absent: to the end; -1: all).
fn length_arg(v: &Value, at: usize, input: usize) -> Result<Option<usize>, ()> {
    let rest = input - at;
    let n = match v {
        Value::Nil => return Ok(Some(rest)),
        Value::Integer(i) => *i,
        Value::Number(f) if f.fract() == 0.0 => *f as i64,
        _ => return Err(()),
    };
    if n == -1 {
        return Ok(Some(rest));
    }
    Ok(usize::try_from(n).ok().filter(|n| *n <= rest))
}

/// Installs `core.register_filter` and the primitives `filter.lua` builds on.
pub(super) fn install(
    lua: &Lua,
    cx: &Rc<CallCx>,
    collect: &Rc<RefCell<Collect>>,
    p: &Table,
    txn: &Table,
) -> mlua::Result<()> {
    let fcx = Rc::new(FilterCx::default());
    lua.set_app_data(Rc::clone(&fcx));
    let f = lua.create_table()?;
    {
        let collect = Rc::clone(collect);
        f.raw_set(
            "register",
            func(lua, move |_, a| {
                let args = Args::new(&a, "register_filter", 0);
                let name = args.string(1)?;
                let class = args.table(2)?;
                let fun = args.func(3)?;
                let mut c = match collect.try_borrow_mut() {
                    Ok(c) if c.loading => c,
                    _ => {
                        return Err(mlua::Error::runtime(
                            "register_filter: not available outside of body context",
                        ));
                    }
                };
                if !c.names.filters.contains(&name) {
                    c.names.filters.push(name.clone());
                }
                // As HAProxy (with a warning there): the last registration wins.
                c.funcs.filters.insert(name, (class, fun));
                none()
            })?,
        )?;
    }
    {
        let fcx = Rc::clone(&fcx);
        f.raw_set(
            "stage",
            lua.create_function(move |_, ()| {
                Ok(match fcx.stage.get() {
                    Stage::Idle => None,
                    Stage::Setup => Some("setup"),
                    Stage::Analyze => Some("analyze"),
                    Stage::Headers => Some("headers"),
                    Stage::Payload => Some("payload"),
                    Stage::End => Some("end"),
                })
            })?,
        )?;
    }
    {
        let fcx = Rc::clone(&fcx);
        f.raw_set(
            "register_data",
            func(lua, move |_, a| {
                let args = Args::new(&a, "register_data_filter", 0);
                let resp = matches!(args.get(1), Value::Boolean(true));
                let on = matches!(args.get(2), Value::Boolean(true));
                if fcx.stage.get() == Stage::Idle {
                    return Err(mlua::Error::runtime(
                        "register_data_filter: only from a filter callback",
                    ));
                }
                let mut d = fcx.data.get();
                d[usize::from(resp)] = on;
                fcx.data.set(d);
                none()
            })?,
        )?;
    }
    {
        let fcx = Rc::clone(&fcx);
        f.raw_set(
            "wake_time",
            func(lua, move |_, a| {
                let args = Args::new(&a, "wake_time", 0);
                let ms = args.int(1)?;
                fcx.wake_ms.set(Some(u64::try_from(ms).unwrap_or(0)));
                none()
            })?,
        )?;
    }
    {
        // input(resp), output(resp), eom(resp), is_full(resp), may_recv(resp)
        let fcx = Rc::clone(&fcx);
        f.raw_set(
            "state",
            lua.create_function(move |_, (what, resp): (String, bool)| {
                let mine = fcx.stage.get() != Stage::Idle && fcx.resp.get() == resp;
                let payload = mine && fcx.stage.get() == Stage::Payload;
                Ok(match what.as_str() {
                    "input" => Value::Integer(if payload {
                        i64::try_from(fcx.input()).unwrap_or(i64::MAX)
                    } else {
                        0
                    }),
                    "output" => Value::Integer(if payload {
                        i64::try_from(fcx.off.get()).unwrap_or(i64::MAX)
                    } else {
                        0
                    }),
                    "eom" => Value::Boolean(mine && fcx.eom.get()),
                    "is_full" => Value::Boolean(
                        payload && fcx.buf.try_borrow().map_or(0, |b| b.len()) >= fcx.max.get(),
                    ),
                    "may_recv" => Value::Boolean(mine && !fcx.eom.get()),
                    _ => Value::Nil,
                })
            })?,
        )?;
    }
    {
        // tcp(): a TCP filter's `tcp_payload` runs (Channel methods work on its window).
        let fcx = Rc::clone(&fcx);
        f.raw_set(
            "tcp",
            lua.create_function(move |_, ()| {
                Ok(fcx.tcp.get() && fcx.stage.get() == Stage::Payload)
            })?,
        )?;
    }
    {
        let fcx = Rc::clone(&fcx);
        f.raw_set(
            "set_eom",
            lua.create_function(move |_, (resp, on): (bool, bool)| {
                if fcx.stage.get() != Stage::Idle && fcx.resp.get() == resp {
                    fcx.eom.set(on);
                }
                Ok(())
            })?,
        )?;
    }
    body_primitives(lua, &f, &fcx)?;
    {
        let cx = Rc::clone(cx);
        f.raw_set(
            "stline",
            func(lua, move |lua, a| {
                let resp = matches!(a.front(), Some(Value::Boolean(true)));
                let t = lua.create_table()?;
                cx.with_txn(|txn| {
                    if resp {
                        // Responses come from servers over HTTP/1.1.
                        t.raw_set("version", "HTTP/1.1")?;
                        t.raw_set("code", txn.status.as_str())?;
                        t.raw_set("reason", txn.status.canonical_reason().unwrap_or(""))?;
                    } else {
                        t.raw_set("method", txn.method.as_str())?;
                        t.raw_set("uri", txn.uri.to_string())?;
                        t.raw_set("version", format!("{:?}", txn.version))?;
                    }
                    Ok(())
                })?;
                one(Value::Table(t))
            })?,
        )?;
    }
    let chunk = lua
        .load(include_str!("filter.lua"))
        .set_name("=portcullis-filter")
        .into_function()?;
    let err = Value::LightUserData(mark(&ERR_MARK));
    let (call, conf, channel, prims): (Function, Function, Table, Table) =
        chunk.call((p.clone(), f, txn.clone(), err))?;
    super::tcp::install(lua, cx, p, &channel, &prims, txn)?;
    lua.set_named_registry_value(CALL_KEY, call)?;
    lua.set_named_registry_value(CONF_KEY, conf)?;
    Ok(())
}

/// The body methods of `HTTPMessage`: only in `http_payload`, on the
/// message being filtered.
fn body_primitives(lua: &Lua, f: &Table, fcx: &Rc<FilterCx>) -> mlua::Result<()> {
    /// The window of the running payload callback, or the error HAProxy raises elsewhere.
    fn window<'a>(fcx: &'a FilterCx, a: &MultiValue, name: &str) -> mlua::Result<&'a FilterCx> {
        let resp = matches!(a.front(), Some(Value::Boolean(true)));
        if fcx.stage.get() != Stage::Payload || fcx.resp.get() != resp {
            return Err(mlua::Error::runtime(format!(
                "'{name}' can only be called from http_payload or tcp_payload, on the channel being filtered"
            )));
        }
        Ok(fcx)
    }
    let fcx_body = Rc::clone(fcx);
    f.raw_set(
        "body",
        func(lua, move |lua, a| {
            let args = Args::new(&a, "body", 1);
            let fcx = window(&fcx_body, &a, "body")?;
            let input = fcx.input();
            if input == 0 && fcx.eom.get() {
                return one(Value::Nil);
            }
            let at = offset_arg(args.get(1), input)
                .map_err(|()| args.bad(1, "number"))?
                .ok_or_else(|| mlua::Error::runtime("offset out of range."))?;
            let len = length_arg(args.get(2), at, input)
                .map_err(|()| args.bad(2, "number"))?
                .map_or(input - at, |n| n)
                .min(input - at);
            let buf = fcx
                .buf
                .try_borrow()
                .map_err(|_| mlua::Error::runtime("body: buffer in use"))?;
            let start = fcx.off.get() + at;
            let s = buf.get(start..start + len).unwrap_or(&[]);
            if s.is_empty() && fcx.eom.get() {
                return one(Value::Nil);
            }
            one(Value::String(lua.create_string(s)?))
        })?,
    )?;
    let fcx_ins = Rc::clone(fcx);
    f.raw_set(
        "insert",
        func(lua, move |_, a| {
            // insert(resp, string, offset|nil, where): where = "at" | "end" | "front".
            let args = Args::new(&a, "insert", 1);
            let fcx = window(&fcx_ins, &a, "insert")?;
            let data = args.bytes(1)?;
            let input = fcx.input();
            let at = match args.get(3) {
                Value::String(w) if w.as_bytes().as_ref() == b"end" => input,
                Value::String(w) if w.as_bytes().as_ref() == b"front" => 0,
                _ => offset_arg(args.get(2), input)
                    .map_err(|()| args.bad(2, "number"))?
                    .ok_or_else(|| mlua::Error::runtime("offset out of range."))?,
            };
            let mut buf = fcx
                .buf
                .try_borrow_mut()
                .map_err(|_| mlua::Error::runtime("insert: buffer in use"))?;
            if buf.len().saturating_add(data.len()) > fcx.max.get() {
                return one(Value::Integer(-1));
            }
            let pos = fcx.off.get() + at;
            buf.splice(pos..pos, data.iter().copied());
            one(Value::Integer(
                i64::try_from(data.len()).unwrap_or(i64::MAX),
            ))
        })?,
    )?;
    let fcx_rm = Rc::clone(fcx);
    f.raw_set(
        "remove",
        func(lua, move |_, a| {
            let args = Args::new(&a, "remove", 1);
            let fcx = window(&fcx_rm, &a, "remove")?;
            let input = fcx.input();
            let at = offset_arg(args.get(1), input)
                .map_err(|()| args.bad(1, "number"))?
                .ok_or_else(|| mlua::Error::runtime("offset out of range."))?;
            let len = length_arg(args.get(2), at, input)
                .map_err(|()| args.bad(2, "number"))?
                .ok_or_else(|| mlua::Error::runtime("length out of range."))?;
            let mut buf = fcx
                .buf
                .try_borrow_mut()
                .map_err(|_| mlua::Error::runtime("remove: buffer in use"))?;
            let pos = fcx.off.get() + at;
            buf.drain(pos..pos + len);
            one(Value::Integer(i64::try_from(len).unwrap_or(i64::MAX)))
        })?,
    )?;
    let fcx_set = Rc::clone(fcx);
    f.raw_set(
        "set",
        func(lua, move |_, a| {
            let args = Args::new(&a, "set", 1);
            let fcx = window(&fcx_set, &a, "set")?;
            let data = args.bytes(1)?;
            let input = fcx.input();
            let at = offset_arg(args.get(2), input)
                .map_err(|()| args.bad(2, "number"))?
                .ok_or_else(|| mlua::Error::runtime("offset out of range."))?;
            let len = length_arg(args.get(3), at, input)
                .map_err(|()| args.bad(3, "number"))?
                .ok_or_else(|| mlua::Error::runtime("length out of range."))?;
            let mut buf = fcx
                .buf
                .try_borrow_mut()
                .map_err(|_| mlua::Error::runtime("set: buffer in use"))?;
            if (buf.len() - len).saturating_add(data.len()) > fcx.max.get() {
                return one(Value::Integer(-1));
            }
            let pos = fcx.off.get() + at;
            buf.splice(pos..pos + len, data.iter().copied());
            one(Value::Integer(
                i64::try_from(data.len()).unwrap_or(i64::MAX),
            ))
        })?,
    )?;
    let fcx_send = Rc::clone(fcx);
    f.raw_set(
        "send",
        func(lua, move |_, a| {
            let args = Args::new(&a, "send", 1);
            let fcx = window(&fcx_send, &a, "send")?;
            let data = args.bytes(1)?;
            let mut buf = fcx
                .buf
                .try_borrow_mut()
                .map_err(|_| mlua::Error::runtime("send: buffer in use"))?;
            if buf.len().saturating_add(data.len()) > fcx.max.get() {
                return one(Value::Integer(-1));
            }
            // Copied in front of the input and forwarded at once.
            let pos = fcx.off.get();
            buf.splice(pos..pos, data.iter().copied());
            fcx.off.set(pos + data.len());
            one(Value::Integer(
                i64::try_from(data.len()).unwrap_or(i64::MAX),
            ))
        })?,
    )?;
    let fcx_fwd = Rc::clone(fcx);
    f.raw_set(
        "forward",
        func(lua, move |_, a| {
            let args = Args::new(&a, "forward", 1);
            let fcx = window(&fcx_fwd, &a, "forward")?;
            let n = args.int(1)?;
            let n = usize::try_from(n).unwrap_or(0).min(fcx.input());
            fcx.off.set(fcx.off.get() + n);
            one(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
        })?,
    )?;
    Ok(())
}
