//! HAProxy's `Regex` class and `core.parse_addr` / `core.match_addr`.
//!
//! `Regex`: `Regex.new(pattern, case_sensitive)` returns
//! `true, regex` or `false, "error text"`; `regex:exec(s)` tells whether it
//! matches, `regex:match(s)` also returns the captures (the whole match
//! first), as HAProxy's. Patterns use Rust's `regex` syntax, which covers
//! the PCRE that real scripts use but has no look-around or backreferences
//! (such a pattern is the `false, "error text"` answer, never a crash).

use mlua::{Lua, MultiValue, Table, UserData, UserDataMethods, Value};

use super::args::{Args, func};

/// A compiled regex as a Lua object.
struct LuaRegex(regex::Regex);

impl UserData for LuaRegex {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("exec", |_, re, s: mlua::LuaString| {
            Ok(re.0.is_match(&String::from_utf8_lossy(&s.as_bytes())))
        });
        methods.add_method("match", |lua, re, s: mlua::LuaString| {
            let text = String::from_utf8_lossy(&s.as_bytes()).into_owned();
            let mut out = MultiValue::new();
            match re.0.captures(&text) {
                Some(caps) => {
                    out.push_back(Value::Boolean(true));
                    let t = lua.create_table()?;
                    for (i, c) in caps.iter().enumerate() {
                        let v = c.map_or("", |m| m.as_str());
                        t.raw_set(i + 1, v)?;
                    }
                    out.push_back(Value::Table(t));
                }
                None => out.push_back(Value::Boolean(false)),
            }
            Ok(out)
        });
    }
}

/// The `Regex` class table (`Regex.new`).
pub(super) fn class(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set(
        "new",
        func(lua, |lua, a| {
            let args = Args::new(&a, "new", 0);
            let pattern = args.string(1)?;
            let case_sensitive = match args.get(2) {
                Value::Nil => true,
                Value::Boolean(b) => *b,
                _ => return Err(args.bad(2, "boolean")),
            };
            let mut out = MultiValue::new();
            match crate::rules::fetch::compile_regex(&pattern, !case_sensitive) {
                Ok(re) => {
                    out.push_back(Value::Boolean(true));
                    out.push_back(Value::UserData(lua.create_userdata(LuaRegex(re))?));
                }
                Err(e) => {
                    out.push_back(Value::Boolean(false));
                    out.push_back(Value::String(lua.create_string(&e)?));
                }
            }
            Ok(out)
        })?,
    )?;
    Ok(t)
}

/// A network from `core.parse_addr` (an address with an optional mask).
struct Net(crate::rules::cond::IpNet);

impl UserData for Net {}

/// A network from a `core.match_addr` argument: a `parse_addr` object or a string.
fn net_arg(args: &Args<'_>, n: usize) -> mlua::Result<Option<crate::rules::cond::IpNet>> {
    match args.get(n) {
        Value::UserData(ud) => match ud.borrow::<Net>() {
            Ok(net) => Ok(Some(net.0)),
            Err(_) => Err(args.bad(n, "network")),
        },
        Value::String(s) => Ok(crate::rules::cond::parse_net(s.to_str()?.trim())),
        _ => Err(args.bad(n, "network")),
    }
}

/// Adds `core.parse_addr(s)` (a network, or nil if `s` is not one) and
/// `core.match_addr(a, b)` (whether the two networks overlap: the addresses
/// agree on the shorter mask, so `127.0.0.1/32` matches `127.0.0.0/8` either way).
pub(super) fn add_addr_functions(lua: &Lua, core: &Table) -> mlua::Result<()> {
    core.raw_set(
        "parse_addr",
        func(lua, |lua, a| {
            let args = Args::new(&a, "parse_addr", 0);
            let s = args.string(1)?;
            let mut out = MultiValue::new();
            out.push_back(match crate::rules::cond::parse_net(s.trim()) {
                Some(net) => Value::UserData(lua.create_userdata(Net(net))?),
                None => Value::Nil,
            });
            Ok(out)
        })?,
    )?;
    core.raw_set(
        "match_addr",
        func(lua, |_, a| {
            let args = Args::new(&a, "match_addr", 0);
            let matched = match (net_arg(&args, 1)?, net_arg(&args, 2)?) {
                (Some(x), Some(y)) => {
                    let mask = x.mask & y.mask;
                    x.addr & mask == y.addr & mask
                }
                _ => false,
            };
            let mut out = MultiValue::new();
            out.push_back(Value::Boolean(matched));
            Ok(out)
        })?,
    )?;
    Ok(())
}
