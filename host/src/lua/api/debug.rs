//! The safe part of Lua's `debug` library: `debug.getinfo` and
//! `debug.traceback`.
//!
//! HAProxy opens every standard library (`luaL_openlibs`), and scripts use
//! these two to find their own file (`debug.getinfo(1, "S").source`, as
//! CrowdSec's bouncer does to extend `package.path`) and to log errors. The
//! rest of the library (`sethook`, `setmetatable`, `getregistry`,
//! `setlocal`, `upvaluejoin`, ...) would let a script remove the CPU-limit
//! hook, unprotect the API's metatables or reach the host's internals, so it
//! is not there; a script calling it gets Lua's usual "attempt to call a nil
//! value".
//!
//! Both functions reach scripts through the prelude's error wrapper, one
//! Lua frame between the script and the Rust function: stack levels given
//! by the script are shifted by that frame ([`WRAPPER_FRAMES`]).

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::args::{Args, func, one};

/// Frames between the script's call and the Rust function: the prelude's wrapper.
const WRAPPER_FRAMES: usize = 1;

/// The options `debug.getinfo` knows (Lua 5.4's `lua_getinfo`).
const OPTIONS: &str = "SlnrutfL";

/// The `debug` table: `getinfo` and `traceback`.
pub(super) fn table(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("getinfo", func(lua, getinfo)?)?;
    t.raw_set("traceback", func(lua, traceback)?)?;
    Ok(t)
}

/// `debug.getinfo([thread,] f [, what])`: `f` a stack level or a function.
/// A level with no function → nil, as in Lua; a thread argument → nil
/// (other coroutines' stacks are not inspected).
fn getinfo(lua: &Lua, a: MultiValue) -> mlua::Result<MultiValue> {
    let args = Args::new(&a, "getinfo", 0);
    if matches!(args.get(1), Value::Thread(_)) {
        return one(Value::Nil);
    }
    let what = match args.get(2) {
        Value::Nil => "flnSrtu".to_string(),
        _ => args.string(2)?,
    };
    if what.starts_with('>') || what.chars().any(|c| !OPTIONS.contains(c)) {
        return Err(args.err(2, "invalid option"));
    }
    let has = |c: char| what.contains(c);
    let t = lua.create_table()?;
    match args.get(1) {
        Value::Integer(_) | Value::Number(_) => {
            let level = args.int(1)?;
            // A negative level names no frame; Lua answers nil (fail).
            let Ok(level) = usize::try_from(level) else {
                return one(Value::Nil);
            };
            // Level 0 is getinfo itself; the script's levels count from its caller.
            let real = if level == 0 {
                0
            } else {
                level + WRAPPER_FRAMES
            };
            let filled = lua.inspect_stack(real, |d| -> mlua::Result<()> {
                if has('S') {
                    let s = d.source();
                    t.raw_set("source", s.source.as_deref().unwrap_or("=?"))?;
                    t.raw_set("short_src", s.short_src.as_deref().unwrap_or("?"))?;
                    t.raw_set("linedefined", line(s.line_defined))?;
                    t.raw_set("lastlinedefined", line(s.last_line_defined))?;
                    t.raw_set("what", s.what)?;
                }
                if has('l') {
                    t.raw_set("currentline", line(d.current_line()))?;
                }
                if has('n') {
                    let n = d.names();
                    if let Some(name) = n.name.as_deref() {
                        t.raw_set("name", name)?;
                    }
                    t.raw_set("namewhat", n.name_what.unwrap_or(""))?;
                }
                if has('u') {
                    let st = d.stack();
                    t.raw_set("nups", st.num_upvalues)?;
                    t.raw_set("nparams", st.num_params)?;
                    t.raw_set("isvararg", st.is_vararg)?;
                }
                if has('t') {
                    t.raw_set("istailcall", d.is_tail_call())?;
                }
                if has('f') {
                    t.raw_set("func", d.function())?;
                }
                Ok(())
            });
            match filled {
                Some(r) => r?,
                None => return one(Value::Nil),
            }
        }
        Value::Function(f) => function_info(&t, f, &has)?,
        _ => return Err(args.err(1, "function or level expected")),
    }
    one(Value::Table(t))
}

/// What `getinfo` tells about a function value (not running: no current line).
fn function_info(t: &Table, f: &Function, has: &dyn Fn(char) -> bool) -> mlua::Result<()> {
    let i = f.info();
    if has('S') {
        t.raw_set("source", i.source.as_deref().unwrap_or("=?"))?;
        t.raw_set("short_src", i.short_src.as_deref().unwrap_or("?"))?;
        t.raw_set("linedefined", line(i.line_defined))?;
        t.raw_set("lastlinedefined", line(i.last_line_defined))?;
        t.raw_set("what", i.what)?;
    }
    if has('l') {
        t.raw_set("currentline", -1)?;
    }
    if has('f') {
        t.raw_set("func", f.clone())?;
    }
    Ok(())
}

/// Lua writes an unknown line as -1.
fn line(l: Option<usize>) -> i64 {
    l.and_then(|n| i64::try_from(n).ok()).unwrap_or(-1)
}

/// `debug.traceback([thread,] [message [, level]])`: a message that is not a
/// string (nor nil) is returned as it is, as Lua does.
fn traceback(lua: &Lua, a: MultiValue) -> mlua::Result<MultiValue> {
    let args = Args::new(&a, "traceback", 0);
    let skip = usize::from(matches!(args.get(1), Value::Thread(_)));
    let msg = match args.get(1 + skip) {
        Value::Nil => None,
        Value::String(s) => Some(s.to_str()?.to_string()),
        Value::Integer(_) | Value::Number(_) => Some(args.string(1 + skip)?),
        other => return one(other.clone()),
    };
    let level = match args.get(2 + skip) {
        Value::Nil => 1,
        _ => usize::try_from(args.int(2 + skip)?).unwrap_or(0),
    };
    let real = if level == 0 {
        0
    } else {
        level + WRAPPER_FRAMES
    };
    let s = lua.traceback(msg.as_deref(), real)?;
    one(Value::String(s))
}
