//! The HAProxy Lua API surface: `core`, `act`, the `txn` object with
//! `txn.http` and `txn.f/sf/c/sc`, and reply objects (`prelude.lua` holds the
//! parts written in Lua). Every function checks its arguments and fails with
//! a Lua error (`bad argument #n to 'name' (...)`), never a panic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use mlua::{Function, Lua, LuaString, MultiValue, Table, Value};

use super::RegAction;
use super::rules::text_value;
use super::runtime::{CallCx, Collect, DONE_MARK, ERR_MARK, SLEEP_MARK, mark};
use crate::config::SourceMap;
use crate::filter::Reply;
use crate::rules::fetch::{Arg, Avail, CONVERTERS, Call, FETCHES, find_converter, find_fetch};
use crate::rules::{CompileCtx, Env};
use crate::txn::{Phase, Sample, Txn, VarScope};

/// Largest number of compiled fetches/converters/regexes kept per state.
const CACHE_MAX: usize = 512;

// ---------------------------------------------------------------------------
// Argument checking
// ---------------------------------------------------------------------------

/// A function's arguments, with HAProxy-style errors; `skip` self arguments are not counted.
pub(crate) struct Args<'a> {
    v: &'a MultiValue,
    f: &'static str,
    skip: usize,
}

impl<'a> Args<'a> {
    pub(crate) fn new(v: &'a MultiValue, f: &'static str, skip: usize) -> Args<'a> {
        Args { v, f, skip }
    }

    /// Argument `n` (1-based, after self), `Nil` if absent.
    pub(crate) fn get(&self, n: usize) -> &'a Value {
        self.v.get(self.skip + n - 1).unwrap_or(&Value::Nil)
    }

    pub(crate) fn bad(&self, n: usize, expected: &str) -> mlua::Error {
        mlua::Error::runtime(format!(
            "bad argument #{n} to '{}' ({expected} expected, got {})",
            self.f,
            self.get(n).type_name()
        ))
    }

    pub(crate) fn err(&self, n: usize, msg: impl std::fmt::Display) -> mlua::Error {
        mlua::Error::runtime(format!("bad argument #{n} to '{}' ({msg})", self.f))
    }

    /// A string argument (numbers are accepted and written out, as Lua does).
    pub(crate) fn bytes(&self, n: usize) -> mlua::Result<Vec<u8>> {
        match self.get(n) {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Integer(i) => Ok(i.to_string().into_bytes()),
            Value::Number(x) => Ok(x.to_string().into_bytes()),
            _ => Err(self.bad(n, "string")),
        }
    }

    pub(crate) fn string(&self, n: usize) -> mlua::Result<String> {
        let b = self.bytes(n)?;
        String::from_utf8(b).map_err(|_| self.err(n, "invalid UTF-8"))
    }

    pub(crate) fn opt_string(&self, n: usize) -> mlua::Result<Option<String>> {
        match self.get(n) {
            Value::Nil => Ok(None),
            _ => self.string(n).map(Some),
        }
    }

    pub(crate) fn int(&self, n: usize) -> mlua::Result<i64> {
        match self.get(n) {
            Value::Integer(i) => Ok(*i),
            Value::Number(x) if x.fract() == 0.0 && x.is_finite() => Ok(*x as i64),
            Value::String(s) => s
                .to_str()
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| self.bad(n, "integer")),
            _ => Err(self.bad(n, "integer")),
        }
    }

    pub(crate) fn opt_int(&self, n: usize) -> mlua::Result<Option<i64>> {
        match self.get(n) {
            Value::Nil => Ok(None),
            _ => self.int(n).map(Some),
        }
    }

    pub(crate) fn table(&self, n: usize) -> mlua::Result<Table> {
        match self.get(n) {
            Value::Table(t) => Ok(t.clone()),
            _ => Err(self.bad(n, "table")),
        }
    }

    pub(crate) fn func(&self, n: usize) -> mlua::Result<Function> {
        match self.get(n) {
            Value::Function(f) => Ok(f.clone()),
            _ => Err(self.bad(n, "function")),
        }
    }

    /// Runs `f` on a string argument's bytes, borrowed from Lua (no copy) when it is a string.
    fn with_bytes<R>(&self, n: usize, f: impl FnOnce(&[u8]) -> R) -> mlua::Result<R> {
        match self.get(n) {
            Value::String(s) => Ok(f(&s.as_bytes())),
            _ => self.bytes(n).map(|b| f(&b)),
        }
    }

    pub(crate) fn header_name(&self, n: usize) -> mlua::Result<HeaderName> {
        self.with_bytes(n, HeaderName::from_bytes)?
            .map_err(|_| self.err(n, "invalid header name"))
    }

    pub(crate) fn header_value(&self, n: usize) -> mlua::Result<HeaderValue> {
        self.with_bytes(n, HeaderValue::from_bytes)?.map_err(|_| {
            self.err(
                n,
                "invalid header value: control characters are not allowed",
            )
        })
    }
}

fn func<F>(lua: &Lua, f: F) -> mlua::Result<Function>
where
    F: Fn(&Lua, MultiValue) -> mlua::Result<MultiValue> + 'static,
{
    lua.create_function(move |lua, args: MultiValue| {
        f(lua, args).or_else(|e| super::api::error_values(lua, e))
    })
}

/// A failed API call as `(ERR_MARK, message)` for the Lua wrapper to raise.
pub(crate) fn error_values(lua: &Lua, e: mlua::Error) -> mlua::Result<MultiValue> {
    let msg = super::runtime::describe(&e);
    let Ok(s) = lua.create_string(&msg) else {
        return Err(e);
    };
    let mut m = MultiValue::with_capacity(2);
    m.push_back(Value::LightUserData(mark(&ERR_MARK)));
    m.push_back(Value::String(s));
    Ok(m)
}

fn none() -> mlua::Result<MultiValue> {
    Ok(MultiValue::new())
}

/// One return value.
pub(crate) fn one(v: Value) -> mlua::Result<MultiValue> {
    let mut m = MultiValue::with_capacity(1);
    m.push_back(v);
    Ok(m)
}

/// A sample as a Lua value (`stringify`: always a string, "" for none).
pub(crate) fn sample_to_lua(lua: &Lua, s: Option<Sample>, stringify: bool) -> mlua::Result<Value> {
    Ok(match (s, stringify) {
        (None, false) => Value::Nil,
        (None, true) => Value::String(lua.create_string("")?),
        (Some(Sample::Str(s)), _) => Value::String(lua.create_string(s)?),
        (Some(Sample::Bin(b)), _) => Value::String(lua.create_string(b)?),
        (Some(s), true) => Value::String(lua.create_string(s.to_text())?),
        (Some(Sample::Int(i)), false) => Value::Integer(i),
        (Some(Sample::Bool(b)), false) => Value::Boolean(b),
        (Some(Sample::Ip(ip)), false) => Value::String(lua.create_string(ip.to_string())?),
    })
}

// ---------------------------------------------------------------------------
// Installation
// ---------------------------------------------------------------------------

/// Installs the API in a fresh state; returns the request and applet objects.
pub(crate) fn install(
    lua: &Lua,
    cx: &Rc<CallCx>,
    collect: &Rc<RefCell<Collect>>,
) -> mlua::Result<(Table, Table)> {
    let p = lua.create_table()?;
    p.raw_set("core", core_table(lua, cx, collect)?)?;
    p.raw_set("txn", txn_methods(lua, cx)?)?;
    let http = http_methods(lua, cx)?;
    p.raw_set("http", &http)?;
    p.raw_set("applet", super::applet::methods(lua, cx)?)?;
    p.raw_set("fetch", fetch_fn(lua, cx)?)?;
    p.raw_set("conv", conv_fn(lua, cx)?)?;
    {
        let cx = Rc::clone(cx);
        p.raw_set(
            "set_done",
            func(lua, move |_, a| {
                let args = Args::new(&a, "done", 0);
                let reply = match args.get(1) {
                    Value::Nil => None,
                    Value::Table(t) => Some(reply_from_table(t)?),
                    _ => return Err(args.bad(1, "reply object")),
                };
                *cx.reply
                    .try_borrow_mut()
                    .map_err(|_| mlua::Error::runtime("done: reply in use"))? = reply;
                none()
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        p.raw_set(
            "wake_time",
            func(lua, move |_, a| {
                let args = Args::new(&a, "wake_time", 0);
                let ms = args.int(1)?;
                cx.wake_ms.set(Some(u64::try_from(ms).unwrap_or(0)));
                none()
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        p.raw_set(
            "get_field",
            func(lua, move |_, a| {
                let t = cx.fields.try_borrow().ok().and_then(|f| f.clone());
                match (t, a.front()) {
                    (Some(t), Some(k)) => one(t.raw_get(k.clone())?),
                    _ => one(Value::Nil),
                }
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        p.raw_set(
            "set_field",
            func(lua, move |lua, a| {
                let k = a.front().cloned().unwrap_or(Value::Nil);
                let v = a.get(1).cloned().unwrap_or(Value::Nil);
                if k.is_nil() {
                    return Err(mlua::Error::runtime("index is nil"));
                }
                let existing = cx.fields.try_borrow().ok().and_then(|f| f.clone());
                let t = match existing {
                    Some(t) => t,
                    None => {
                        let t = lua.create_table()?;
                        *cx.fields
                            .try_borrow_mut()
                            .map_err(|_| mlua::Error::runtime("txn fields in use"))? =
                            Some(t.clone());
                        t
                    }
                };
                t.raw_set(k, v)?;
                none()
            })?,
        )?;
    }
    super::map::install(lua, cx, &p)?;
    let prelude = lua
        .load(include_str!("prelude.lua"))
        .set_name("=portcullis-prelude")
        .into_function()?;
    let (txn, applet): (Table, Table) = prelude.call((
        p,
        Value::LightUserData(mark(&SLEEP_MARK)),
        Value::LightUserData(mark(&DONE_MARK)),
        Value::LightUserData(mark(&ERR_MARK)),
    ))?;
    super::cfunc::install(lua, cx, &http)?;
    Ok((txn, applet))
}

// ---------------------------------------------------------------------------
// core
// ---------------------------------------------------------------------------

/// Logs `msg` for the plugin at HAProxy syslog level `level` (0 emerg .. 7 debug).
fn log_at(plugin: &str, level: i64, msg: &str) {
    match level {
        i64::MIN..=3 => tracing::error!(plugin, "{msg}"),
        4 => tracing::warn!(plugin, "{msg}"),
        5 | 6 => tracing::info!(plugin, "{msg}"),
        _ => tracing::debug!(plugin, "{msg}"),
    }
}

/// Adds `log`, `Debug`, `Info`, `Warning` and `Alert` (methods when `skip` is 1).
fn log_functions(lua: &Lua, t: &Table, cx: &Rc<CallCx>, skip: usize) -> mlua::Result<()> {
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "log",
            func(lua, move |_, a| {
                let args = Args::new(&a, "log", skip);
                let level = args.int(1)?;
                if !(0..=7).contains(&level) {
                    return Err(args.err(1, "log level must be between 0 (emerg) and 7 (debug)"));
                }
                let msg = String::from_utf8_lossy(&args.bytes(2)?).into_owned();
                log_at(&cx.plugin.name, level, &msg);
                none()
            })?,
        )?;
    }
    for (name, level) in [("Debug", 7), ("Info", 6), ("Warning", 4), ("Alert", 1)] {
        let cx = Rc::clone(cx);
        t.raw_set(
            name,
            func(lua, move |_, a| {
                let args = Args::new(&a, "log", skip);
                let msg = String::from_utf8_lossy(&args.bytes(1)?).into_owned();
                log_at(&cx.plugin.name, level, &msg);
                none()
            })?,
        )?;
    }
    Ok(())
}

/// Returns an error unless the script is loading.
fn while_loading(collect: &RefCell<Collect>, f: &str) -> mlua::Result<()> {
    match collect.try_borrow() {
        Ok(c) if c.loading => Ok(()),
        _ => Err(mlua::Error::runtime(format!(
            "core.{f} can only be called while the script loads (in its main chunk)"
        ))),
    }
}

fn collect_mut<'a>(collect: &'a RefCell<Collect>) -> mlua::Result<std::cell::RefMut<'a, Collect>> {
    collect
        .try_borrow_mut()
        .map_err(|_| mlua::Error::runtime("registration in progress"))
}

fn core_table(lua: &Lua, cx: &Rc<CallCx>, collect: &Rc<RefCell<Collect>>) -> mlua::Result<Table> {
    let core = lua.create_table()?;
    log_functions(lua, &core, cx, 0)?;

    {
        let collect = Rc::clone(collect);
        let cx = Rc::clone(cx);
        core.raw_set(
            "register_action",
            func(lua, move |_, a| {
                let args = Args::new(&a, "register_action", 0);
                let name = args.string(1)?;
                let kinds = args.table(2)?;
                let f = args.func(3)?;
                let nb = args.opt_int(4)?.unwrap_or(0);
                if !(0..=64).contains(&nb) {
                    return Err(args.err(4, "nb_args must be between 0 and 64"));
                }
                let nb = usize::try_from(nb).unwrap_or(0);
                while_loading(&collect, "register_action")?;
                let (mut req, mut res) = (false, false);
                for i in 1..=kinds.raw_len() {
                    let k: Value = kinds.raw_get(i)?;
                    let Value::String(k) = k else {
                        return Err(args.err(2, "action types must be strings"));
                    };
                    match &*k.as_bytes() {
                        b"http-req" => req = true,
                        b"http-res" => res = true,
                        b"tcp-req" | b"tcp-res" | b"http-after-res" => {
                            tracing::warn!(plugin = %cx.plugin.name, action = %name, "{} actions are not supported; only http-req and http-res", k.to_string_lossy());
                        }
                        other => {
                            return Err(args.err(
                                2,
                                format!(
                                    "unknown action type '{}'; expected http-req or http-res",
                                    String::from_utf8_lossy(other)
                                ),
                            ));
                        }
                    }
                }
                let mut c = collect_mut(&collect)?;
                let Collect { funcs, names, .. } = &mut *c;
                let entry = match names.actions.iter_mut().position(|x| x.name == name) {
                    Some(i) => &mut names.actions[i],
                    None => {
                        names.actions.push(RegAction {
                            name: name.clone(),
                            request: false,
                            response: false,
                            nb_args_req: 0,
                            nb_args_res: 0,
                        });
                        let last = names.actions.len() - 1;
                        &mut names.actions[last]
                    }
                };
                if req {
                    entry.request = true;
                    entry.nb_args_req = nb;
                    funcs.actions_req.insert(name.clone(), f.clone());
                }
                if res {
                    entry.response = true;
                    entry.nb_args_res = nb;
                    funcs.actions_res.insert(name, f);
                }
                none()
            })?,
        )?;
    }
    type Pick = fn(&mut Collect, String, Function);
    let simple: [(&'static str, Pick); 2] = [
        ("register_fetches", |c, n, f| {
            push_name(&mut c.names.fetches, &n);
            c.funcs.fetches.insert(n, f);
        }),
        ("register_converters", |c, n, f| {
            push_name(&mut c.names.converters, &n);
            c.funcs.converters.insert(n, f);
        }),
    ];
    for (fname, pick) in simple {
        let collect = Rc::clone(collect);
        core.raw_set(
            fname,
            func(lua, move |_, a| {
                let args = Args::new(&a, fname, 0);
                let name = args.string(1)?;
                let f = args.func(2)?;
                while_loading(&collect, fname)?;
                pick(&mut *collect_mut(&collect)?, name, f);
                none()
            })?,
        )?;
    }
    {
        let collect = Rc::clone(collect);
        let cx = Rc::clone(cx);
        core.raw_set(
            "register_service",
            func(lua, move |_, a| {
                let args = Args::new(&a, "register_service", 0);
                let name = args.string(1)?;
                let mode = args.string(2)?;
                let f = args.func(3)?;
                while_loading(&collect, "register_service")?;
                match mode.as_str() {
                    "http" => {
                        let mut c = collect_mut(&collect)?;
                        push_name(&mut c.names.services, &name);
                        c.funcs.services.insert(name, f);
                    }
                    "tcp" => {
                        tracing::warn!(plugin = %cx.plugin.name, service = %name, "tcp services are not supported; only http services");
                    }
                    other => {
                        return Err(args.err(
                            2,
                            format!("unknown service mode '{other}'; expected http or tcp"),
                        ));
                    }
                }
                none()
            })?,
        )?;
    }
    {
        let collect = Rc::clone(collect);
        core.raw_set(
            "register_init",
            func(lua, move |_, a| {
                let args = Args::new(&a, "register_init", 0);
                let f = args.func(1)?;
                while_loading(&collect, "register_init")?;
                let mut c = collect_mut(&collect)?;
                c.names.inits += 1;
                c.funcs.inits.push(f);
                none()
            })?,
        )?;
    }
    {
        let collect = Rc::clone(collect);
        core.raw_set(
            "register_task",
            func(lua, move |_, a| {
                let args = Args::new(&a, "register_task", 0);
                let f = args.func(1)?;
                if a.len() > 5 {
                    return Err(args.err(6, "a task takes at most 4 arguments"));
                }
                let extra: Vec<Value> = a.iter().skip(1).cloned().collect();
                while_loading(&collect, "register_task")?;
                let mut c = collect_mut(&collect)?;
                c.names.tasks += 1;
                c.funcs.tasks.push((f, extra));
                none()
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        core.raw_set(
            "register_cli",
            func(lua, move |_, a| {
                let args = Args::new(&a, "register_cli", 0);
                args.table(1)?;
                args.func(3)?;
                tracing::warn!(plugin = %cx.plugin.name, "core.register_cli is not supported; the command is ignored");
                none()
            })?,
        )?;
    }
    core.raw_set(
        "now",
        func(lua, |lua, _| {
            let d = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let t = lua.create_table_with_capacity(0, 2)?;
            t.raw_set("sec", i64::try_from(d.as_secs()).unwrap_or(i64::MAX))?;
            t.raw_set("usec", i64::from(d.subsec_micros()))?;
            one(Value::Table(t))
        })?,
    )?;
    core.raw_set(
        "tokenize",
        func(lua, |lua, a| {
            let args = Args::new(&a, "tokenize", 0);
            let s = args.bytes(1)?;
            let seps = args.bytes(2)?;
            let noblank = match args.get(3) {
                Value::Nil => false,
                Value::Boolean(b) => *b,
                _ => return Err(args.bad(3, "boolean")),
            };
            let t = lua.create_table()?;
            let mut i = 0i64;
            for part in s.split(|b| seps.contains(b)) {
                if noblank && part.is_empty() {
                    continue;
                }
                i += 1;
                t.raw_set(i, lua.create_string(part)?)?;
            }
            one(Value::Table(t))
        })?,
    )?;
    core.raw_set(
        "get_var",
        func(lua, |lua, a| {
            let args = Args::new(&a, "get_var", 0);
            let name = args.string(1)?;
            match VarScope::parse(&name) {
                Some((VarScope::Proc, n)) => {
                    sample_to_lua(lua, crate::txn::PROC_VARS.get(n), false).and_then(one)
                }
                _ => Err(args.err(1, "core.get_var only reads proc.* variables")),
            }
        })?,
    )?;
    core.raw_set(
        "set_var",
        func(lua, |_, a| {
            let args = Args::new(&a, "set_var", 0);
            let name = args.string(1)?;
            let value = lua_to_var(&args, 2)?;
            match VarScope::parse(&name) {
                Some((VarScope::Proc, n)) => {
                    crate::txn::PROC_VARS.set(n, value);
                    none()
                }
                _ => Err(args.err(1, "core.set_var only sets proc.* variables")),
            }
        })?,
    )?;
    core.raw_set(
        "unset_var",
        func(lua, |_, a| {
            let args = Args::new(&a, "unset_var", 0);
            let name = args.string(1)?;
            match VarScope::parse(&name) {
                Some((VarScope::Proc, n)) => one(Value::Boolean(crate::txn::PROC_VARS.unset(n))),
                _ => Err(args.err(1, "core.unset_var only removes proc.* variables")),
            }
        })?,
    )?;
    core.raw_set(
        "set_nice",
        func(lua, |_, a| {
            Args::new(&a, "set_nice", 0).int(1)?;
            none()
        })?,
    )?;
    for name in [
        "add_acl",
        "del_acl",
        "set_map",
        "del_map",
        "tcp",
        "httpclient",
    ] {
        core.raw_set(
            name,
            func(lua, move |_, _| {
                Err(mlua::Error::runtime(format!(
                    "core.{name} is not supported by portcullis"
                )))
            })?,
        )?;
    }
    core.raw_set("thread", 1)?;
    super::stktable::install(lua, &core, cx)?;
    Ok(core)
}

fn push_name(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}

// ---------------------------------------------------------------------------
// txn methods: variables, private data, logging
// ---------------------------------------------------------------------------

/// A Lua value to store in a variable.
fn lua_to_var(args: &Args<'_>, n: usize) -> mlua::Result<Sample> {
    match args.get(n) {
        Value::String(s) => {
            let b = s.as_bytes();
            Ok(match std::str::from_utf8(&b) {
                Ok(t) => Sample::Str(t.to_string()),
                Err(_) => Sample::Bin(b.to_vec()),
            })
        }
        Value::Integer(i) => Ok(Sample::Int(*i)),
        Value::Number(x) if x.is_finite() => Ok(Sample::Int(*x as i64)),
        Value::Boolean(b) => Ok(Sample::Bool(*b)),
        _ => Err(args.bad(n, "string, number or boolean")),
    }
}

fn txn_methods(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    log_functions(lua, &t, cx, 1)?;
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "set_var",
            func(lua, move |_, a| {
                let args = Args::new(&a, "set_var", 1);
                let name = args.string(1)?;
                let value = lua_to_var(&args, 2)?;
                let ifexist = matches!(args.get(3), Value::Boolean(true));
                let Some((scope, var)) = VarScope::parse(&name) else {
                    // HAProxy ignores a variable name without a valid scope.
                    return none();
                };
                if scope == VarScope::Proc {
                    if !ifexist || crate::txn::PROC_VARS.get(var).is_some() {
                        crate::txn::PROC_VARS.set(var, value);
                    }
                    return none();
                }
                cx.with_txn_mut("set_var", |t| {
                    if !ifexist || t.get_var(scope, var).is_some() {
                        t.set_var(scope, var, value);
                    }
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "get_var",
            func(lua, move |lua, a| {
                let args = Args::new(&a, "get_var", 1);
                let name = args.string(1)?;
                let Some((scope, var)) = VarScope::parse(&name) else {
                    return one(Value::Nil);
                };
                let v = if scope == VarScope::Proc {
                    crate::txn::PROC_VARS.get(var)
                } else {
                    cx.with_txn(|t| Ok(t.get_var(scope, var)))?
                };
                sample_to_lua(lua, v, false).and_then(one)
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "unset_var",
            func(lua, move |_, a| {
                let args = Args::new(&a, "unset_var", 1);
                let name = args.string(1)?;
                let Some((scope, var)) = VarScope::parse(&name) else {
                    return one(Value::Boolean(false));
                };
                let was = if scope == VarScope::Proc {
                    crate::txn::PROC_VARS.unset(var)
                } else {
                    cx.with_txn_mut("unset_var", |t| Ok(t.unset_var(scope, var)))?
                };
                one(Value::Boolean(was))
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "get_priv",
            func(lua, move |_, _| {
                let v = cx
                    .privv
                    .try_borrow()
                    .map(|v| v.clone())
                    .unwrap_or(Value::Nil);
                one(v)
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "set_priv",
            func(lua, move |_, a| {
                let v = a.get(1).cloned().unwrap_or(Value::Nil);
                *cx.privv
                    .try_borrow_mut()
                    .map_err(|_| mlua::Error::runtime("set_priv: private data in use"))? = v;
                none()
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "deflog",
            func(lua, move |_, a| {
                let args = Args::new(&a, "deflog", 1);
                let msg = String::from_utf8_lossy(&args.bytes(1)?).into_owned();
                log_at(&cx.plugin.name, 6, &msg);
                none()
            })?,
        )?;
    }
    // Accepted for compatibility; portcullis has no per-request log level, TOS, mark or priority.
    for (name, kind) in [
        ("set_loglevel", 0u8),
        ("set_tos", 0),
        ("set_mark", 0),
        ("set_priority_class", 0),
        ("set_priority_offset", 0),
    ] {
        let _ = kind;
        t.raw_set(
            name,
            func(lua, move |_, a| {
                Args::new(&a, name, 1).int(1)?;
                none()
            })?,
        )?;
    }
    Ok(t)
}

// ---------------------------------------------------------------------------
// txn.http
// ---------------------------------------------------------------------------

/// Which message a `txn.http` function works on.
#[derive(Clone, Copy)]
pub(crate) enum Msg {
    Req,
    Res,
}

impl Msg {
    pub(crate) fn headers(self, t: &Txn) -> &HeaderMap {
        match self {
            Msg::Req => &t.req_headers,
            Msg::Res => &t.resp_headers,
        }
    }

    pub(crate) fn headers_mut(self, t: &mut Txn) -> &mut HeaderMap {
        match self {
            Msg::Req => &mut t.req_headers,
            Msg::Res => &mut t.resp_headers,
        }
    }
}

/// Why a script may not set or delete header `name`, if it may not: the
/// headers that frame the message (a wrong value would corrupt the stream).
pub(crate) fn framing_refusal(name: &HeaderName) -> Option<String> {
    (name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING)
        .then(|| format!("{name} is managed by the proxy (message framing) and cannot be changed"))
}

/// [`framing_refusal`] as the error of argument 1.
fn check_framing(args: &Args<'_>, name: &HeaderName) -> mlua::Result<()> {
    match framing_refusal(name) {
        Some(msg) => Err(args.err(1, msg)),
        None => Ok(()),
    }
}

/// Expands HAProxy's `\1`-style references in `fmt` from `caps`.
fn expand(fmt: &str, caps: &regex::Captures<'_>) -> String {
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(d) = chars.peek().and_then(|d| d.to_digit(10))
        {
            chars.next();
            if let Some(m) = caps.get(d as usize) {
                out.push_str(m.as_str());
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A compiled regex from the state's cache.
fn cached_regex(cx: &CallCx, args: &Args<'_>, n: usize) -> mlua::Result<Rc<regex::Regex>> {
    let pattern = args.string(n)?;
    if let Some(r) = cx
        .regexes
        .try_borrow()
        .ok()
        .and_then(|m| m.get(&pattern).cloned())
    {
        return Ok(r);
    }
    let re = crate::rules::fetch::compile_regex(&pattern, false).map_err(|m| args.err(n, m))?;
    let re = Rc::new(re);
    if let Ok(mut m) = cx.regexes.try_borrow_mut() {
        if m.len() >= CACHE_MAX {
            m.clear();
        }
        m.insert(pattern, Rc::clone(&re));
    }
    Ok(re)
}

fn http_methods(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    // req_/res_get_headers and set/add_header: C functions (`cfunc.rs`),
    // installed after the prelude.
    for (name, m) in [("req_del_header", Msg::Req), ("res_del_header", Msg::Res)] {
        let cx = Rc::clone(cx);
        t.raw_set(
            name,
            func(lua, move |_, a| {
                let args = Args::new(&a, name, 1);
                let hn = args.header_name(1)?;
                check_framing(&args, &hn)?;
                cx.with_txn_mut(name, |t| {
                    m.headers_mut(t).remove(&hn);
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    for (name, m, per_value) in [
        ("req_rep_header", Msg::Req, false),
        ("req_rep_value", Msg::Req, true),
        ("res_rep_header", Msg::Res, false),
        ("res_rep_value", Msg::Res, true),
    ] {
        let cx = Rc::clone(cx);
        t.raw_set(
            name,
            func(lua, move |_, a| {
                let args = Args::new(&a, name, 1);
                let hn = args.header_name(1)?;
                check_framing(&args, &hn)?;
                let re = cached_regex(&cx, &args, 2)?;
                let fmt = args.string(3)?;
                cx.with_txn_mut(name, |t| {
                    let h = m.headers_mut(t);
                    let old: Vec<HeaderValue> = h.get_all(&hn).iter().cloned().collect();
                    if old.is_empty() {
                        return Ok(());
                    }
                    let replace = |v: &str| match re.captures(v) {
                        Some(c) => expand(&fmt, &c),
                        None => v.to_string(),
                    };
                    let mut new = Vec::with_capacity(old.len());
                    for v in &old {
                        let text = String::from_utf8_lossy(v.as_bytes());
                        let out = if per_value {
                            text.split(',')
                                .map(|p| replace(p.trim()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        } else {
                            replace(&text)
                        };
                        new.push(HeaderValue::try_from(out).map_err(|_| {
                            mlua::Error::runtime(format!(
                                "{name}: the replacement is not a valid header value"
                            ))
                        })?);
                    }
                    h.remove(&hn);
                    for v in new {
                        h.append(hn.clone(), v);
                    }
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "req_set_method",
            func(lua, move |_, a| {
                let args = Args::new(&a, "req_set_method", 1);
                let m = Method::from_bytes(&args.bytes(1)?)
                    .map_err(|_| args.err(1, "invalid method"))?;
                cx.with_txn_mut("req_set_method", |t| {
                    t.method = m;
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    for name in ["req_set_path", "req_set_query", "req_set_uri"] {
        let cx = Rc::clone(cx);
        t.raw_set(
            name,
            func(lua, move |_, a| {
                let args = Args::new(&a, name, 1);
                let v = args.string(1)?;
                cx.with_txn_mut(name, |t| {
                    let uri = match name {
                        "req_set_uri" => {
                            v.parse::<Uri>().map_err(|_| args.err(1, "invalid URI"))?
                        }
                        _ => {
                            let path = if name == "req_set_path" {
                                v.clone()
                            } else {
                                t.uri.path().to_string()
                            };
                            let query = if name == "req_set_query" {
                                let q = v.strip_prefix('?').unwrap_or(&v);
                                (!q.is_empty()).then(|| q.to_string())
                            } else {
                                t.uri.query().map(str::to_string)
                            };
                            let pq = match query {
                                Some(q) => format!("{path}?{q}"),
                                None => path,
                            };
                            let pq = PathAndQuery::try_from(pq)
                                .map_err(|_| args.err(1, "invalid path or query"))?;
                            let mut parts = t.uri.clone().into_parts();
                            parts.path_and_query = Some(pq);
                            Uri::from_parts(parts).map_err(|_| args.err(1, "invalid URI"))?
                        }
                    };
                    t.uri = uri;
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "res_set_status",
            func(lua, move |_, a| {
                let args = Args::new(&a, "res_set_status", 1);
                let code = args.int(1)?;
                let _reason = args.opt_string(2)?;
                let st = u16::try_from(code)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| args.err(1, "status must be between 100 and 599"))?;
                cx.with_txn_mut("res_set_status", |t| {
                    t.status = st;
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    Ok(t)
}

// ---------------------------------------------------------------------------
// txn.f / txn.sf / txn.c / txn.sc
// ---------------------------------------------------------------------------

/// Lua names (dots become underscores) → registry names.
static FETCH_NAMES: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    FETCHES
        .iter()
        .filter(|d| !d.name.ends_with('*'))
        .map(|d| (d.name.replace('.', "_"), d.name))
        .collect()
});

static CONV_NAMES: LazyLock<HashMap<String, &'static str>> = LazyLock::new(|| {
    CONVERTERS
        .iter()
        .filter(|d| !d.name.ends_with('*'))
        .map(|d| (d.name.replace('.', "_"), d.name))
        .collect()
});

/// The call's arguments as sample arguments (strings).
fn sample_args(a: &MultiValue, from: usize, f: &'static str) -> mlua::Result<Vec<Arg>> {
    let args = Args::new(a, f, 0);
    (from..a.len())
        .map(|i| {
            let text = match args.get(i + 1) {
                Value::Boolean(b) => i64::from(*b).to_string(),
                _ => String::from_utf8_lossy(&args.bytes(i + 1)?).into_owned(),
            };
            Ok(Arg {
                text,
                offset: 0,
                quoted: true,
            })
        })
        .collect()
}

fn cache_key(phase: Phase, name: &str, args: &[Arg]) -> String {
    let mut k = String::with_capacity(name.len() + 16);
    k.push(if phase == Phase::Request { 'q' } else { 's' });
    k.push_str(name);
    for a in args {
        k.push('\0');
        k.push_str(&a.text);
    }
    k
}

/// A fetch or converter called from Lua, compiled once per (phase, name,
/// arguments) and kept in a bounded per-state cache (scripts call the same
/// few with the same arguments on every request).
fn compiled<T: ?Sized>(
    cx: &CallCx,
    cache: &RefCell<HashMap<String, Rc<T>>>,
    (phase, name, args): (Phase, &'static str, Vec<Arg>),
    build: impl FnOnce(&Call, &Env<'_>) -> mlua::Result<Rc<T>>,
) -> mlua::Result<Rc<T>> {
    let key = cache_key(phase, name, &args);
    if let Some(hit) = cache.try_borrow().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(hit);
    }
    let call = Call {
        name,
        offset: 0,
        parens: !args.is_empty(),
        args,
    };
    let source = SourceMap::new(std::path::Path::new("lua"), "");
    let ctx = CompileCtx {
        source: &source,
        backends: &cx.plugin.backends,
        plugins: crate::rules::Extensions::empty(),
        tables: &cx.plugin.tables,
    };
    let built = build(&call, &Env { ctx: &ctx, phase })?;
    if let Ok(mut m) = cache.try_borrow_mut() {
        if m.len() >= CACHE_MAX {
            m.clear();
        }
        m.insert(key, Rc::clone(&built));
    }
    Ok(built)
}

fn arity_error(
    kind: &str,
    name: &str,
    (min, max): (u8, u8),
    got: usize,
    usage: &str,
) -> Option<String> {
    (got < usize::from(min) || got > usize::from(max)).then(|| {
        format!("{kind} '{name}' takes {min} to {max} arguments, got {got}; usage: {usage}")
    })
}

fn fetch_fn(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Function> {
    let cx = Rc::clone(cx);
    func(lua, move |lua, a| {
        // (name, stringify, self, args...)
        let name = match a.front() {
            Some(Value::String(s)) => s.to_string_lossy(),
            _ => return Err(mlua::Error::runtime("fetch name must be a string")),
        };
        let stringify = matches!(a.get(1), Some(Value::Boolean(true)));
        let Some(&canonical) = FETCH_NAMES.get(&name) else {
            return Err(mlua::Error::runtime(format!(
                "unknown sample fetch '{name}'"
            )));
        };
        let Some(def) = find_fetch(canonical) else {
            return Err(mlua::Error::runtime(format!(
                "unknown sample fetch '{name}'"
            )));
        };
        let phase = cx.phase.get();
        if matches!(
            (def.avail, phase),
            (Avail::Request, Phase::Response) | (Avail::Response, Phase::Request)
        ) {
            return sample_to_lua(lua, None, stringify).and_then(one);
        }
        let fargs = sample_args(&a, 2, "fetch")?;
        let expr = compiled(&cx, &cx.exprs, (phase, canonical, fargs), |call, env| {
            if let Some(m) = arity_error("fetch", &name, def.args, call.args.len(), def.usage) {
                return Err(mlua::Error::runtime(m));
            }
            crate::rules::fetch::build_expr(call, def, &[], env)
                .map(Rc::new)
                .map_err(|e| mlua::Error::runtime(format!("fetch '{name}': {}", e.message)))
        })?;
        let v = cx.with_txn(|t| Ok(expr.eval(t).map(crate::rules::Value::into_sample)))?;
        sample_to_lua(lua, v, stringify).and_then(one)
    })
}

fn conv_fn(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Function> {
    let cx = Rc::clone(cx);
    func(lua, move |lua, a| {
        // (name, stringify, input, args...)
        let name = match a.front() {
            Some(Value::String(s)) => s.to_string_lossy(),
            _ => return Err(mlua::Error::runtime("converter name must be a string")),
        };
        let stringify = matches!(a.get(1), Some(Value::Boolean(true)));
        let Some(&canonical) = CONV_NAMES.get(&name) else {
            return Err(mlua::Error::runtime(format!("unknown converter '{name}'")));
        };
        let Some(def) = find_converter(canonical) else {
            return Err(mlua::Error::runtime(format!("unknown converter '{name}'")));
        };
        let input = match a.get(2) {
            Some(Value::String(s)) => text_value(&s.as_bytes()),
            Some(Value::Integer(i)) => crate::rules::Value::Int(*i),
            Some(Value::Number(x)) if x.is_finite() => crate::rules::Value::Int(*x as i64),
            Some(Value::Boolean(b)) => crate::rules::Value::Bool(*b),
            other => {
                return Err(mlua::Error::runtime(format!(
                    "bad argument #1 to '{name}' (string expected, got {})",
                    other.map_or("no value", Value::type_name)
                )));
            }
        };
        let cargs = sample_args(&a, 3, "converter")?;
        let phase = cx.phase.get();
        let conv = compiled(
            &cx,
            &cx.convs,
            (phase, canonical, cargs),
            |call, env| -> mlua::Result<Rc<dyn crate::rules::fetch::Converter>> {
                if let Some(m) =
                    arity_error("converter", &name, def.args, call.args.len(), def.usage)
                {
                    return Err(mlua::Error::runtime(m));
                }
                (def.build)(call, env)
                    .map(Rc::from)
                    .map_err(|e| mlua::Error::runtime(format!("converter '{name}': {}", e.message)))
            },
        )?;
        let out =
            cx.with_any_txn(|t| Ok(conv.convert(input, t).map(crate::rules::Value::into_sample)))?;
        sample_to_lua(lua, out, stringify).and_then(one)
    })
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// A reply object (from `txn:reply{...}`) as a response.
pub(crate) fn reply_from_table(t: &Table) -> mlua::Result<Reply> {
    let bad = |m: String| mlua::Error::runtime(format!("bad argument #1 to 'done' ({m})"));
    let status = match t.raw_get::<Value>("status")? {
        Value::Nil => 200,
        Value::Integer(i) => i,
        Value::Number(x) if x.fract() == 0.0 => x as i64,
        other => {
            return Err(bad(format!(
                "status must be an integer, got {}",
                other.type_name()
            )));
        }
    };
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| bad(format!("status {status} is not between 100 and 599")))?;
    let mut headers = HeaderMap::new();
    if let Value::Table(h) = t.raw_get::<Value>("headers")? {
        for pair in h.pairs::<LuaString, Value>() {
            let (k, v) = pair?;
            let name = HeaderName::from_bytes(&k.as_bytes())
                .map_err(|_| bad(format!("invalid header name '{}'", k.to_string_lossy())))?;
            if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
                continue;
            }
            let mut push = |v: &Value| -> mlua::Result<()> {
                let bytes = match v {
                    Value::String(s) => s.as_bytes().to_vec(),
                    Value::Integer(i) => i.to_string().into_bytes(),
                    Value::Number(x) => x.to_string().into_bytes(),
                    other => {
                        return Err(bad(format!(
                            "header '{name}' has a {} value",
                            other.type_name()
                        )));
                    }
                };
                let hv = HeaderValue::from_bytes(&bytes)
                    .map_err(|_| bad(format!("invalid value for header '{name}'")))?;
                headers.append(name.clone(), hv);
                Ok(())
            };
            match &v {
                Value::Table(list) => {
                    for i in 0..=list.raw_len() {
                        let x: Value = list.raw_get(i)?;
                        if !x.is_nil() {
                            push(&x)?;
                        }
                    }
                }
                other => push(other)?,
            }
        }
    }
    let body = match t.raw_get::<Value>("body")? {
        Value::Nil => bytes::Bytes::new(),
        Value::String(s) => bytes::Bytes::from(s.as_bytes().to_vec()),
        Value::Integer(i) => bytes::Bytes::from(i.to_string()),
        other => {
            return Err(bad(format!(
                "body must be a string, got {}",
                other.type_name()
            )));
        }
    };
    Ok(Reply {
        status,
        headers,
        body,
        error_page: false,
    })
}
