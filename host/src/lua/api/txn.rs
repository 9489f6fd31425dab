//! The `txn` object's methods: variables, private data, logging
//! (`txn.http` and `txn.f/sf/c/sc` have their own files).

use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::args::{Args, func, none, one, sample_to_lua};
use super::core::{log_at, log_functions};
use crate::lua::runtime::CallCx;
use crate::txn::{Sample, VarScope};

/// A Lua value to store in a variable.
pub(super) fn lua_to_var(args: &Args<'_>, n: usize) -> mlua::Result<Sample> {
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

pub(super) fn txn_methods(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Table> {
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
                // HAProxy 2.6 (`vars_set_by_name_ifexist`, VF_UPDATEONLY):
                // `ifexist` only stops the creation of a `proc` variable;
                // every other scope gets the variable created.
                cx.with_txn_mut("set_var", |t| {
                    t.set_var(scope, var, value);
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
                log_at(&cx.plugin.name, 6, &args.bytes(1)?);
                none()
            })?,
        )?;
    }
    // Checked as HAProxy checks them (`check_args`, `luaL_checkinteger`),
    // then without effect: portcullis has no per-request log level, TOS,
    // mark or queue priority.
    for name in [
        "set_loglevel",
        "set_tos",
        "set_mark",
        "set_priority_class",
        "set_priority_offset",
    ] {
        t.raw_set(
            name,
            func(lua, move |_, a| {
                if a.len() != 2 {
                    return Err(mlua::Error::runtime(format!("'{name}' needs 2 arguments")));
                }
                let args = Args::new(&a, name, 1);
                let n = args.checkinteger(1)?;
                if name == "set_loglevel" && !(0..=7).contains(&n) {
                    return Err(args.err(1, "Bad log level. It must be between 0 and 7"));
                }
                none()
            })?,
        )?;
    }
    Ok(t)
}
