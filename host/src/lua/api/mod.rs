//! The HAProxy Lua API surface: `core`, `act`, the `txn` object with
//! `txn.http` and `txn.f/sf/c/sc`, and reply objects (`prelude.lua` holds the
//! parts written in Lua). Every function checks its arguments and fails with
//! a Lua error (`bad argument #n to 'name' (...)`), never a panic.
//!
//! This file installs the API in a fresh state and runs the prelude; each
//! class's Rust half has its own file:
//! - `args`: argument checking ([`Args`]) and return values, shared by all;
//! - `core`: the `core` table (registrations, logging, `proc.*` variables);
//! - `txn`: the `txn` object's methods (variables, private data, logging);
//! - `http`: `txn.http` (its hottest functions are C functions, `ffi::cfunc`);
//! - `fetches`: `txn.f/sf/c/sc`, sample fetches and converters from Lua;
//! - `reply`: reply objects as responses;
//! - `debug`: `debug.getinfo` and `debug.traceback` (the safe part of Lua's `debug`).
//! - `filter`: `core.register_filter`, `filter`, `Channel`, `HTTPMessage` (with `filter.lua`).
//!
//! `act` and the `Reply` class are written in Lua (`prelude.lua`), over the
//! primitives [`install`] gives the prelude (`set_done`, `wake_time`, the
//! request's fields).

mod args;
mod core;
mod debug;
mod fetches;
pub(crate) mod filter;
mod http;
mod httpclient;
mod queue;
mod regex;
mod reply;
mod socket;
pub(crate) mod tcp;
mod txn;

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{Lua, Table, Value};

pub(crate) use self::args::{Args, error_values, one};
use self::args::{func, none};
#[cfg(test)]
pub(crate) use self::core::clean_log_message;
use self::core::core_table;
use self::fetches::{conv_fn, fetch_fn};
use self::http::http_methods;
pub(crate) use self::http::{Msg, framing_refusal};
pub(crate) use self::httpclient::HttpCall;
#[cfg(test)]
pub(crate) use self::queue::MAX_ITEMS as QUEUE_MAX_ITEMS;
pub(crate) use self::queue::Waiter as QueueWaiter;
use self::reply::reply_from_table;
pub(crate) use self::socket::Socket;
use self::txn::txn_methods;
use super::runtime::{CallCx, Collect, DONE_MARK, END_MARK, ERR_MARK, IO_MARK, SLEEP_MARK, mark};

/// Largest number of compiled fetches/converters/regexes kept per state.
const CACHE_MAX: usize = 512;

/// Installs the API in a fresh state; returns the request and applet objects.
pub(crate) fn install(
    lua: &Lua,
    cx: &Rc<CallCx>,
    collect: &Rc<RefCell<Collect>>,
) -> mlua::Result<(Table, Table)> {
    let p = lua.create_table()?;
    let core = core_table(lua, cx, collect)?;
    let (server_methods, proxy_methods) = super::proxy::install(lua, &core, cx)?;
    super::events::install(lua, &core, &server_methods, cx, collect)?;
    p.raw_set("core", core)?;
    p.raw_set("server_methods", server_methods)?;
    p.raw_set("proxy_methods", proxy_methods)?;
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
    p.raw_set("socket", socket::table(lua, cx)?)?;
    p.raw_set("httpclient", httpclient::table(lua, cx)?)?;
    p.raw_set("queue", queue::table(lua, cx)?)?;
    p.raw_set("regex_class", regex::class(lua)?)?;
    p.raw_set("debug", debug::table(lua)?)?;
    let prelude = lua
        .load(include_str!("prelude.lua"))
        .set_name("=portcullis-prelude")
        .into_function()?;
    let (txn, applet): (Table, Table) = prelude.call((
        p.clone(),
        Value::LightUserData(mark(&SLEEP_MARK)),
        Value::LightUserData(mark(&DONE_MARK)),
        Value::LightUserData(mark(&ERR_MARK)),
        Value::LightUserData(mark(&IO_MARK)),
        Value::LightUserData(mark(&END_MARK)),
    ))?;
    super::ffi::cfunc::install(lua, cx, &http)?;
    filter::install(lua, cx, collect, &p, &txn)?;
    Ok((txn, applet))
}
