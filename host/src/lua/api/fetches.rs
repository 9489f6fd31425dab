//! `txn.f/sf/c/sc`: sample fetches and converters called from Lua, compiled
//! once per (phase, name, arguments) and kept in a bounded per-state cache.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::LazyLock;

use mlua::{Function, Lua, MultiValue, Value};

use super::CACHE_MAX;
use super::args::{Args, func, one, sample_to_lua};
use crate::lua::rules::text_value;
use crate::lua::runtime::CallCx;
use crate::rules::fetch::{Arg, Avail, CONVERTERS, Call, FETCHES, find_converter, find_fetch};
use crate::rules::{CompileCtx, Env};
use crate::txn::Phase;

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
    let ctx = CompileCtx {
        backends: &cx.plugin.backends,
        plugins: crate::rules::Extensions::empty(),
        tables: &cx.plugin.tables,
        resolvers: crate::resolve::Resolvers::none(),
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

pub(super) fn fetch_fn(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Function> {
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

pub(super) fn conv_fn(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Function> {
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
