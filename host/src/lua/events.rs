//! HAProxy 2.8's event framework for Lua: `core.event_sub(types, fn)` and
//! `Server:event_sub(types, fn)`, over the runtime's server events
//! ([`crate::servers::events`]).
//!
//! Each subscription is a local task on its worker holding one receiver of
//! the process-wide event channel; it calls `fn(event, data, sub, when)`
//! for each matching event, one at a time (the handler may sleep or use
//! cosockets; the next event waits for it), as HAProxy does per thread.
//! A subscription made while the script loads (main chunk, init function)
//! runs on worker 0 only, since every worker loads the script and HAProxy's
//! `lua-load` subscribes once per process; one made at run time (a task, an
//! action) runs where it was made. `sub:unsub()` ends it; so does the
//! instance being retired for a rebuild (the rebuilt one subscribes again).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mlua::{Function, Lua, MultiValue, Table, Value};
use tokio::sync::broadcast::error::RecvError;

use super::api::{Args, error_values};
use super::runtime::{CallCx, Collect, Instance};
use crate::servers::{CheckReport, Detail, EventKind, ServerEvent};

/// Registry key of the backend proxy objects (`Server` references).
pub(crate) const BACKEND_OBJECTS: &str = "portcullis.backend_objects";

/// How often an idle subscription checks whether it should end.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// One subscription: which events, for which server, the handler.
pub(crate) struct Sub {
    mask: u8,
    /// Only this server's events (`Server:event_sub`).
    server: Option<(usize, usize)>,
    func: Function,
    /// The `EventSub` object handed to the handler.
    object: Table,
    closed: Rc<Cell<bool>>,
}

impl Sub {
    fn matches(&self, ev: &ServerEvent) -> bool {
        self.mask & ev.kind as u8 != 0
            && self
                .server
                .is_none_or(|(b, s)| ev.backend == b && ev.server == s)
    }
}

/// `event_sub(types, fn)` for `core` (no server) or one server.
fn subscribe(
    lua: &Lua,
    cx: &CallCx,
    collect: &RefCell<Collect>,
    args: &Args,
    server: Option<(usize, usize)>,
) -> mlua::Result<MultiValue> {
    let types = args.table(1)?;
    let mut mask = 0u8;
    for v in types.sequence_values::<Value>() {
        let name = match v? {
            Value::String(s) => s.to_str()?.to_string(),
            other => {
                return Err(args.err(
                    1,
                    format!("event types must be strings, got {}", other.type_name()),
                ));
            }
        };
        mask |= EventKind::mask_of(&name).ok_or_else(|| {
            args.err(
                1,
                format!("unknown event type \"{name}\"; expected SERVER, SERVER_ADD, SERVER_DEL, SERVER_UP, SERVER_DOWN, SERVER_STATE, SERVER_ADMIN or SERVER_CHECK"),
            )
        })?;
    }
    if mask == 0 {
        return Err(args.err(1, "no event type given"));
    }
    let func = args.func(2)?;
    let closed = Rc::new(Cell::new(false));
    let object = lua.create_table()?;
    let methods = lua.create_table()?;
    {
        let closed = Rc::clone(&closed);
        methods.raw_set(
            "unsub",
            lua.create_function(move |_, _: MultiValue| {
                closed.set(true);
                Ok(())
            })?,
        )?;
    }
    let meta = lua.create_table()?;
    meta.raw_set("__index", methods)?;
    meta.raw_set("__name", "EventSub")?;
    object.set_metatable(Some(meta))?;
    let sub = Sub {
        mask,
        server,
        func,
        object: object.clone(),
        closed,
    };
    let loading = collect.try_borrow().map(|c| c.loading).unwrap_or(false);
    let inst = cx.instance.try_borrow().ok().and_then(|w| w.upgrade());
    match inst {
        Some(inst) if !loading => spawn(&inst, sub),
        _ => {
            if let Ok(mut c) = collect.try_borrow_mut()
                && c.loading
            {
                c.names.event_subs += 1;
            }
            cx.pending_subs
                .try_borrow_mut()
                .map_err(|_| mlua::Error::runtime("event_sub: subscriptions in use"))?
                .push(sub);
        }
    }
    Ok(MultiValue::from_iter([Value::Table(object)]))
}

/// Installs `core.event_sub` and the `event_sub` method of `Server` objects.
pub(crate) fn install(
    lua: &Lua,
    core: &Table,
    server_methods: &Table,
    cx: &Rc<CallCx>,
    collect: &Rc<RefCell<Collect>>,
) -> mlua::Result<()> {
    {
        let (cx, collect) = (Rc::clone(cx), Rc::clone(collect));
        core.raw_set(
            "event_sub",
            lua.create_function(move |lua, a: MultiValue| {
                let args = Args::new(&a, "event_sub", 0);
                subscribe(lua, &cx, &collect, &args, None).or_else(|e| error_values(lua, e))
            })?,
        )?;
    }
    let (cx, collect) = (Rc::clone(cx), Rc::clone(collect));
    server_methods.raw_set(
        "event_sub",
        lua.create_function(move |lua, a: MultiValue| {
            let run = || {
                let server = super::proxy::server_id(&a, "event_sub", &cx.plugin.servers)?;
                let args = Args::new(&a, "event_sub", 1);
                subscribe(lua, &cx, &collect, &args, Some(server))
            };
            run().or_else(|e| error_values(lua, e))
        })?,
    )?;
    Ok(())
}

/// Starts delivering `sub`'s events on this worker (nothing off workers:
/// the config check's throwaway state subscribes to nothing).
pub(crate) fn spawn(inst: &Rc<Instance>, sub: Sub) {
    if super::task::worker_index().is_none() {
        return;
    }
    let rx = inst.plugin.servers.events.subscribe();
    let inst = Rc::clone(inst);
    tokio::task::spawn_local(async move { deliver(inst, sub, rx).await });
}

async fn deliver(
    inst: Rc<Instance>,
    sub: Sub,
    mut rx: tokio::sync::broadcast::Receiver<Arc<ServerEvent>>,
) {
    let plugin = Arc::clone(&inst.plugin);
    loop {
        let next = tokio::time::timeout(IDLE_CHECK, rx.recv()).await;
        if inst.is_retired() || sub.closed.get() {
            return;
        }
        let ev = match next {
            Err(_) => continue,
            Ok(Ok(ev)) => ev,
            Ok(Err(RecvError::Lagged(n))) => {
                tracing::error!(plugin = %plugin.name, missed = n, "a Lua event subscription fell behind and missed events; its handler is too slow for the event rate");
                continue;
            }
            Ok(Err(RecvError::Closed)) => return,
        };
        if !sub.matches(&ev) {
            continue;
        }
        let args = match inst.setup(|| event_args(&inst.lua, &plugin.servers, &sub, &ev)) {
            Ok(a) => a,
            Err(e) => {
                super::runtime::record_failure(&plugin, Some(&inst), &e, "event handler");
                continue;
            }
        };
        plugin
            .stats
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = super::task::drive(&inst, sub.func.clone(), args, "event handler").await {
            super::runtime::record_failure(&plugin, Some(&inst), &e, "event handler");
        }
    }
}

/// `(event, event_data, sub, when)` for one event.
fn event_args(
    lua: &Lua,
    servers: &crate::servers::Servers,
    sub: &Sub,
    ev: &ServerEvent,
) -> mlua::Result<MultiValue> {
    let data = lua.create_table()?;
    let backends: Table = lua.named_registry_value(BACKEND_OBJECTS)?;
    let proxy: Option<Table> = backends.raw_get(ev.backend + 1)?;
    if let Some(px) = &proxy {
        data.raw_set("proxy_name", px.raw_get::<Value>("name")?)?;
        let uuid: String = px.raw_get("uuid")?;
        data.raw_set("proxy_uuid", uuid.parse::<i64>().unwrap_or(0))?;
        // The proxy's `servers` is keyed by name: the event's server, looked up directly.
        let objects: Table = px.raw_get("servers")?;
        let name = servers
            .get(ev.backend)
            .and_then(|be| be.servers.get(ev.server))
            .map(|sv| Arc::clone(&sv.name));
        if let Some(name) = name {
            data.raw_set("name", &*name)?;
            if let Value::Table(srv) = objects.raw_get::<Value>(&*name)? {
                data.raw_set("reference", srv)?;
            }
        }
    }
    data.raw_set("puid", i64::try_from(ev.server + 1).unwrap_or(0))?;
    data.raw_set("rid", 0)?;
    match &ev.detail {
        Detail::None => {}
        Detail::State {
            old,
            new,
            admin,
            cause,
            check,
        } => {
            let t = lua.create_table()?;
            t.raw_set("admin", *admin)?;
            t.raw_set("cause", *cause)?;
            t.raw_set("old_state", old.name())?;
            t.raw_set("new_state", new.name())?;
            t.raw_set("requeued", 0)?;
            if let Some(c) = check {
                t.raw_set("check", check_table(lua, c)?)?;
            }
            data.raw_set("state", t)?;
        }
        Detail::Admin { old, new, cause } => {
            let t = lua.create_table()?;
            t.raw_set("cause", *cause)?;
            t.raw_set("old_admin", lua.create_sequence_from(old.iter().copied())?)?;
            t.raw_set("new_admin", lua.create_sequence_from(new.iter().copied())?)?;
            t.raw_set("requeued", 0)?;
            data.raw_set("admin", t)?;
        }
        Detail::Check(c) => data.raw_set("check", check_table(lua, c)?)?,
    }
    let when = i64::try_from(ev.when).unwrap_or(0);
    Ok(MultiValue::from_iter([
        Value::String(lua.create_string(ev.kind.name())?),
        Value::Table(data),
        Value::Table(sub.object.clone()),
        Value::Integer(when),
    ]))
}

/// HAProxy's `ServerEventCheckRes`.
fn check_table(lua: &Lua, c: &CheckReport) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("result", if c.passed { "PASSED" } else { "FAILED" })?;
    t.raw_set("agent", false)?;
    t.raw_set("duration", i64::from(c.duration_ms))?;
    let reason = lua.create_table()?;
    reason.raw_set("short", c.status.as_str())?;
    reason.raw_set("desc", c.status.description())?;
    if c.code != 0 {
        reason.raw_set("code", i64::from(c.code))?;
    }
    t.raw_set("reason", reason)?;
    let health = lua.create_table()?;
    health.raw_set("cur", i64::from(c.health))?;
    health.raw_set("rise", i64::from(c.rise))?;
    health.raw_set("fall", i64::from(c.fall))?;
    t.raw_set("health", health)?;
    Ok(t)
}
