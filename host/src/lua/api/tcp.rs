//! TCP mode: `Channel`'s data methods on a TCP stream's raw channels
//! (`txn.req`/`txn.res` in `tcp-req` and `tcp-res` actions) and
//! `AppletTCP` (TCP services). Each primitive takes an optional last
//! argument, true for the response channel. The objects are written in Lua (`tcp.lua`); this file holds
//! the primitives over the running stream's [`Channels`] (found in the
//! call's transaction).
//!
//! Waiting for client data or for a send to finish yields to the host
//! (the IO marker with a [`ChanWait`]): a read waits until the channel's
//! deadline (the frontend's `inspect_delay` in an action, the client
//! timeout or the given one in a service), a send at most the client
//! timeout.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use mlua::{Function, Lua, Table, Value};

use super::args::{Args, func, one};
use crate::channel::{BUFSIZE, Channels};
use crate::filter::WaitFuture;
use crate::lua::runtime::{CallCx, ERR_MARK, IO_MARK, mark};

/// Registry name of the `AppletTCP` object `tcp.lua` builds.
pub(crate) const APPLET_KEY: &str = "portcullis.applet_tcp";

/// A wait the script yielded on, for its driver to await, and whether it
/// brought data (a read) or succeeded (a send).
pub(crate) struct ChanWait(RefCell<Option<WaitFuture>>, Rc<std::cell::Cell<bool>>);

impl mlua::UserData for ChanWait {}

impl ChanWait {
    /// The operation to await.
    pub(crate) fn take_pending(&self) -> Option<WaitFuture> {
        self.0.try_borrow_mut().ok()?.take()
    }
}

/// The running call's request channel (`resp`: its response channel,
/// there while `tcp_response` rules run).
fn channels(cx: &CallCx, resp: bool) -> mlua::Result<Rc<Channels>> {
    cx.with_txn(|txn| {
        Ok(if resp {
            crate::channel::of_res(txn)
        } else {
            crate::channel::of(txn)
        })
    })?
    .ok_or_else(|| {
        mlua::Error::runtime(if resp {
            "no response channel: it is there in tcp-res actions only"
        } else {
            "no TCP stream: this works in tcp-req actions and TCP services only"
        })
    })
}

/// The optional direction argument `n` (true: the response channel).
fn resp_arg(args: &Args<'_>, n: usize) -> bool {
    matches!(args.get(n), Value::Boolean(true))
}

fn int(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A non-negative integer argument (`default` when nil).
fn count(args: &Args<'_>, n: usize, default: usize) -> mlua::Result<usize> {
    match args.get(n) {
        Value::Nil => Ok(default),
        _ => {
            let v = args.int(n)?;
            Ok(usize::try_from(v).unwrap_or(0))
        }
    }
}

/// Installs `T` (the primitives) and runs `tcp.lua` with the `Channel` class.
pub(super) fn install(
    lua: &Lua,
    cx: &Rc<CallCx>,
    p: &Table,
    channel: &Table,
    filter_prims: &Table,
    txn: &Table,
) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let add = |name: &'static str, f: Function| t.raw_set(name, f);
    {
        let cx = Rc::clone(cx);
        add(
            "active",
            lua.create_function(move |_, resp: Option<bool>| {
                Ok(cx
                    .with_txn(|txn| {
                        Ok(if resp == Some(true) {
                            crate::channel::of_res(txn).is_some()
                        } else {
                            crate::channel::of(txn).is_some()
                        })
                    })
                    .unwrap_or(false))
            })?,
        )?;
    }
    {
        // state(what[, resp]): input, output, is_full, may_recv of a channel.
        let cx = Rc::clone(cx);
        add(
            "state",
            func(lua, move |_, a| {
                let args = Args::new(&a, "state", 0);
                let what = args.string(1)?;
                let ch = channels(&cx, resp_arg(&args, 2))?;
                one(match what.as_str() {
                    "input" => int(ch.input()),
                    "output" => int(ch.fwd.get()),
                    "is_full" => Value::Boolean(ch.is_full()),
                    "may_recv" => Value::Boolean(ch.may_recv()),
                    "closed" => Value::Boolean(ch.closed.get()),
                    _ => Value::Nil,
                })
            })?,
        )?;
    }
    {
        // sub(off, len): `len` bytes of the input from `off` (clamped).
        let cx = Rc::clone(cx);
        add(
            "sub",
            func(lua, move |lua, a| {
                let args = Args::new(&a, "data", 0);
                let off = count(&args, 1, 0)?;
                let len = count(&args, 2, usize::MAX)?;
                let ch = channels(&cx, resp_arg(&args, 3))?;
                let buf = ch
                    .req
                    .try_borrow()
                    .map_err(|_| mlua::Error::runtime("channel in use"))?;
                let input = buf.get(ch.fwd.get()..).unwrap_or(&[]);
                let start = off.min(input.len());
                let end = start.saturating_add(len).min(input.len());
                one(Value::String(
                    lua.create_string(input.get(start..end).unwrap_or(&[]))?,
                ))
            })?,
        )?;
    }
    {
        // find(off, byte): index in the input of `byte` at or after `off`, or nil.
        let cx = Rc::clone(cx);
        add(
            "find",
            func(lua, move |_, a| {
                let args = Args::new(&a, "line", 0);
                let off = count(&args, 1, 0)?;
                let ch = channels(&cx, resp_arg(&args, 2))?;
                let buf = ch
                    .req
                    .try_borrow()
                    .map_err(|_| mlua::Error::runtime("channel in use"))?;
                let input = buf.get(ch.fwd.get()..).unwrap_or(&[]);
                let at = input
                    .get(off..)
                    .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
                    .map(|i| i + off);
                one(at.map_or(Value::Nil, int))
            })?,
        )?;
    }
    {
        // splice(off, len, data): replaces `len` input bytes at `off` with
        // `data`; -1 when the channel would exceed its size.
        let cx = Rc::clone(cx);
        add(
            "splice",
            func(lua, move |_, a| {
                let args = Args::new(&a, "set", 0);
                let off = count(&args, 1, 0)?;
                let len = count(&args, 2, 0)?;
                let data = match args.get(3) {
                    Value::Nil => Vec::new(),
                    _ => args.bytes(3)?,
                };
                let ch = channels(&cx, resp_arg(&args, 4))?;
                let mut buf = ch
                    .req
                    .try_borrow_mut()
                    .map_err(|_| mlua::Error::runtime("channel in use"))?;
                let base = ch.fwd.get();
                let input = buf.len().saturating_sub(base);
                let start = off.min(input);
                let end = start.saturating_add(len).min(input);
                if (buf.len() - (end - start)).saturating_add(data.len()) > BUFSIZE {
                    return one(Value::Integer(-1));
                }
                let n = data.len();
                buf.splice(base + start..base + end, data);
                one(int(if n == 0 { end - start } else { n }))
            })?,
        )?;
    }
    {
        // forward(n): moves up to `n` input bytes to the output.
        let cx = Rc::clone(cx);
        add(
            "forward",
            func(lua, move |_, a| {
                let args = Args::new(&a, "forward", 0);
                let n = count(&args, 1, 0)?;
                let ch = channels(&cx, resp_arg(&args, 2))?;
                let n = n.min(ch.input());
                ch.fwd.set(ch.fwd.get() + n);
                one(int(n))
            })?,
        )?;
    }
    {
        // push_out(data): `txn.req:send`: data put in the output, towards the server.
        let cx = Rc::clone(cx);
        add(
            "push_out",
            func(lua, move |_, a| {
                let args = Args::new(&a, "send", 0);
                let data = args.bytes(1)?;
                let ch = channels(&cx, resp_arg(&args, 2))?;
                let mut buf = ch
                    .req
                    .try_borrow_mut()
                    .map_err(|_| mlua::Error::runtime("channel in use"))?;
                if buf.len().saturating_add(data.len()) > BUFSIZE {
                    return one(Value::Integer(-1));
                }
                let at = ch.fwd.get();
                let n = data.len();
                buf.splice(at..at, data);
                ch.fwd.set(at + n);
                one(int(n))
            })?,
        )?;
    }
    {
        // wait([ms]): a wait for more client data, or nil if none can come.
        // ms >= 0: the deadline becomes now + ms; -1: now + the client
        // timeout (services); nil: the channel's deadline stays (actions).
        let cx = Rc::clone(cx);
        add(
            "wait",
            func(lua, move |lua, a| {
                let args = Args::new(&a, "wait", 0);
                let ch = channels(&cx, resp_arg(&args, 2))?;
                match args.get(1) {
                    Value::Nil => {}
                    _ => {
                        let ms = args.int(1)?;
                        let d = if ms < 0 {
                            ch.send_timeout
                        } else {
                            Duration::from_millis(u64::try_from(ms).unwrap_or(0).min(86_400_000))
                        };
                        ch.deadline.set(tokio::time::Instant::now() + d);
                    }
                }
                if !ch.may_recv() {
                    return one(Value::Nil);
                }
                let ok = Rc::new(std::cell::Cell::new(false));
                let set = Rc::clone(&ok);
                let fut: WaitFuture = Box::pin(async move {
                    set.set(ch.fill().await);
                });
                one(Value::UserData(
                    lua.create_userdata(ChanWait(RefCell::new(Some(fut)), ok))?,
                ))
            })?,
        )?;
    }
    {
        // send(data): a wait that writes `data` to the client.
        let cx = Rc::clone(cx);
        add(
            "send",
            func(lua, move |lua, a| {
                let args = Args::new(&a, "send", 0);
                let data = args.bytes(1)?;
                let ch = channels(&cx, false)?;
                let ok = Rc::new(std::cell::Cell::new(false));
                let set = Rc::clone(&ok);
                let fut: WaitFuture = Box::pin(async move {
                    let sent = ch.send(&data).await;
                    if !sent {
                        ch.closed.set(true);
                    }
                    set.set(sent);
                });
                one(Value::UserData(
                    lua.create_userdata(ChanWait(RefCell::new(Some(fut)), ok))?,
                ))
            })?,
        )?;
    }
    add(
        "done",
        lua.create_function(|_, w: mlua::AnyUserData| {
            Ok(w.borrow::<ChanWait>().is_ok_and(|w| w.1.get()))
        })?,
    )?;
    let chunk = lua
        .load(include_str!("tcp.lua"))
        .set_name("=portcullis-tcp")
        .into_function()?;
    let applet: Table = chunk.call((
        p.clone(),
        t,
        channel.clone(),
        txn.clone(),
        Value::LightUserData(mark(&ERR_MARK)),
        Value::LightUserData(mark(&IO_MARK)),
        filter_prims.clone(),
    ))?;
    lua.set_named_registry_value(APPLET_KEY, applet)?;
    Ok(())
}
