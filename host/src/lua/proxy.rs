//! HAProxy's `Proxy` and `Server` classes: `core.frontends`,
//! `core.backends` and `core.proxies`, each proxy with its `servers`, over
//! the runtime's live backend state ([`crate::servers`]). A script that
//! calls `set_maint`, `set_drain` or `set_weight` changes what the balancer
//! picks at once, in every worker; `get_stats()` reads the same counters and
//! health state the admin API shows.
//!
//! Objects are tables, as in HAProxy: fields (`name`, `uuid`, `puid`,
//! `servers`, ...) plus methods shared through one metatable per class. The
//! object's identity is its raw `[0]` entry (HAProxy keeps a pointer there);
//! every method checks it, so a forged or stale object is a Lua error.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use mlua::{Lua, MultiValue, Table, Value};

use super::api::{Args, error_values, one};
use super::runtime::CallCx;
use crate::servers::{BackendState, Backends, ServerState};

/// Bits of a server id that hold its index in the backend.
const SERVER_BITS: u32 = 20;

fn func<F>(lua: &Lua, f: F) -> mlua::Result<mlua::Function>
where
    F: Fn(&Lua, MultiValue) -> mlua::Result<MultiValue> + 'static,
{
    lua.create_function(move |lua, args: MultiValue| f(lua, args).or_else(|e| error_values(lua, e)))
}

fn none() -> mlua::Result<MultiValue> {
    Ok(MultiValue::new())
}

/// Which proxy an object stands for.
#[derive(Clone, Copy)]
enum ProxyId {
    Frontend(usize),
    Backend(usize),
    /// A proxy that only holds a stick table (no backend of that name).
    TableOnly,
}

impl ProxyId {
    fn encode(self) -> i64 {
        match self {
            ProxyId::Backend(b) => i64::try_from(b).unwrap_or(i64::MAX),
            ProxyId::Frontend(f) => -1 - i64::try_from(f).unwrap_or(i64::MAX - 1),
            ProxyId::TableOnly => i64::MIN,
        }
    }

    fn decode(v: i64) -> ProxyId {
        match v {
            i64::MIN => ProxyId::TableOnly,
            v if v >= 0 => ProxyId::Backend(usize::try_from(v).unwrap_or(usize::MAX)),
            v => ProxyId::Frontend(usize::try_from(-1 - v).unwrap_or(usize::MAX)),
        }
    }
}

/// What the methods reach: the live state and the frontends' names.
struct Objects {
    servers: Backends,
    frontends: Arc<[String]>,
}

/// A server object's identity (its raw `[0]`).
pub(crate) fn encode_server(b: usize, s: usize) -> i64 {
    (i64::try_from(b).unwrap_or(0) << SERVER_BITS) | i64::try_from(s).unwrap_or(0)
}

/// The (backend, server) a method's `self` (first argument) stands for.
pub(crate) fn server_id(
    args: &MultiValue,
    f: &str,
    servers: &Backends,
) -> mlua::Result<(usize, usize)> {
    let first = args.front().unwrap_or(&Value::Nil);
    let id = match first {
        Value::Table(t) => t.raw_get::<Value>(0)?,
        _ => Value::Nil,
    };
    let found = match id {
        Value::Integer(id) if id >= 0 => {
            let b = usize::try_from(id >> SERVER_BITS).unwrap_or(usize::MAX);
            let s = usize::try_from(id & ((1 << SERVER_BITS) - 1)).unwrap_or(usize::MAX);
            servers
                .get(b)
                .and_then(|be| be.servers.get(s))
                .map(|_| (b, s))
        }
        _ => None,
    };
    found.ok_or_else(|| {
        mlua::Error::runtime(format!(
            "bad argument #1 to '{f}' (Server expected, got {})",
            first.type_name()
        ))
    })
}

impl Objects {
    fn server<'a>(&'a self, a: &MultiValue, f: &str) -> mlua::Result<(usize, &'a ServerState)> {
        let (b, s) = server_id(a, f, &self.servers)?;
        Ok((b, &self.servers[b].servers[s]))
    }

    fn proxy(&self, args: &Args, f: &str) -> mlua::Result<(ProxyId, Table)> {
        if let Value::Table(t) = args.get(1)
            && let Value::Integer(id) = t.raw_get::<Value>(0)?
        {
            let id = ProxyId::decode(id);
            let valid = match id {
                ProxyId::Backend(b) => b < self.servers.len(),
                ProxyId::Frontend(i) => i < self.frontends.len(),
                ProxyId::TableOnly => true,
            };
            if valid {
                return Ok((id, t.clone()));
            }
        }
        Err(mlua::Error::runtime(format!(
            "bad argument #1 to '{f}' (Proxy expected, got {})",
            args.get(1).type_name()
        )))
    }
}

/// A `Server` method: the objects, the server's backend and state, the call's arguments.
type ServerFn = fn(&Lua, &Objects, usize, &ServerState, &Args) -> mlua::Result<MultiValue>;

fn string(lua: &Lua, s: impl AsRef<[u8]>) -> mlua::Result<MultiValue> {
    one(Value::String(lua.create_string(s)?))
}

/// HAProxy's `Server` methods (2.6, plus the 2.8 getters real scripts use).
const SERVER_METHODS: &[(&str, ServerFn)] = &[
    ("get_name", |lua, _, _, s, _| string(lua, &*s.name)),
    ("get_puid", |lua, _, _, s, _| {
        string(lua, s.puid.to_string())
    }),
    ("get_rid", |lua, _, _, _, _| string(lua, "0")),
    ("get_addr", |lua, _, _, s, _| {
        string(lua, s.addr.to_string())
    }),
    ("is_draining", |_, _, _, s, _| {
        one(Value::Boolean(s.is_draining()))
    }),
    ("is_backup", |_, _, _, _, _| one(Value::Boolean(false))),
    ("is_dynamic", |_, _, _, _, _| one(Value::Boolean(false))),
    ("get_cur_sess", |_, _, _, s, _| {
        one(Value::Integer(i64::from(s.active.load(Relaxed))))
    }),
    ("get_pend_conn", |_, _, _, s, _| {
        one(Value::Integer(i64::from(s.queued.load(Relaxed))))
    }),
    ("get_maxconn", |_, _, _, s, _| {
        one(Value::Integer(i64::from(s.maxconn.load(Relaxed))))
    }),
    ("set_maxconn", |lua, _, _, s, a| {
        let text = a.string(1)?;
        match parse_maxconn(&text) {
            Ok(v) => {
                s.maxconn.store(v, Relaxed);
                // A higher limit may free slots for queued requests: their
                // waiters take them at their next check (100 ms at most).
                one(Value::Nil)
            }
            Err(e) => string(lua, e),
        }
    }),
    ("get_weight", |_, _, _, s, _| {
        one(Value::Integer(i64::from(s.weight())))
    }),
    ("set_weight", |lua, o, b, s, a| {
        let text = a.string(1)?;
        let static_lb = o.servers.get(b).is_some_and(|be| be.static_lb);
        match s.set_weight_request(&text, static_lb) {
            Ok(()) => one(Value::Nil),
            Err(e) => string(lua, e),
        }
    }),
    ("set_addr", |lua, _, _, _, a| {
        a.string(1)?;
        string(
            lua,
            "changing a server's address at run time is not supported by portcullis",
        )
    }),
    ("get_stats", |lua, o, b, s, _| match o.servers.get(b) {
        Some(be) => one(Value::Table(server_stats(lua, be, s)?)),
        None => one(Value::Nil),
    }),
    ("get_proxy", |lua, _, b, _, _| {
        // The backend proxy objects live in the registry (events read them too).
        let objects: Table = lua.named_registry_value(super::events::BACKEND_OBJECTS)?;
        let p: Option<Table> = objects.raw_get(b + 1)?;
        one(p.map_or(Value::Nil, Value::Table))
    }),
    ("shut_sess", |_, _, _, _, _| none()),
    ("set_drain", |_, _, _, s, _| {
        s.set_drain();
        none()
    }),
    ("set_maint", |_, _, _, s, _| {
        s.set_maint();
        none()
    }),
    ("set_ready", |_, _, _, s, _| {
        s.set_ready();
        none()
    }),
    ("check_enable", |_, _, _, s, _| {
        s.set_check_enabled(true);
        none()
    }),
    ("check_disable", |_, _, _, s, _| {
        s.set_check_enabled(false);
        none()
    }),
    ("check_force_up", |_, _, _, s, _| {
        s.force_check(true);
        none()
    }),
    ("check_force_nolb", |_, _, _, s, _| {
        s.force_nolb();
        none()
    }),
    ("check_force_down", |_, _, _, s, _| {
        s.force_check(false);
        none()
    }),
    // No agent checks in portcullis: HAProxy ignores these without an agent too.
    ("agent_enable", |_, _, _, _, _| none()),
    ("agent_disable", |_, _, _, _, _| none()),
    ("agent_force_up", |_, _, _, _, _| none()),
    ("agent_force_down", |_, _, _, _, _| none()),
    ("tracking", |_, _, _, _, _| one(Value::Nil)),
    ("get_trackers", |lua, _, _, _, _| {
        one(Value::Table(lua.create_table()?))
    }),
];

/// A `Proxy` method: the objects, which proxy, the object itself.
type ProxyFn = fn(&Lua, &Objects, ProxyId, &Table) -> mlua::Result<MultiValue>;

/// HAProxy's `Proxy` methods.
const PROXY_METHODS: &[(&str, ProxyFn)] = &[
    ("get_name", |_, _, _, t| one(t.raw_get("name")?)),
    ("get_uuid", |_, _, _, t| one(t.raw_get("uuid")?)),
    ("get_cap", |lua, _, id, _| {
        string(
            lua,
            if matches!(id, ProxyId::Frontend(_)) {
                "frontend"
            } else {
                "backend"
            },
        )
    }),
    ("get_mode", |lua, _, _, _| string(lua, "http")),
    ("get_stats", |lua, o, id, t| {
        one(Value::Table(proxy_stats(lua, o, id, t)?))
    }),
    ("get_srv_act", |_, o, id, _| {
        let n = match id {
            ProxyId::Backend(b) => o.servers.get(b).map_or(0, BackendState::usable_servers),
            _ => 0,
        };
        one(Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)))
    }),
    ("get_srv_bck", |_, _, _, _| one(Value::Integer(0))),
    ("get_mailers", |lua, o, id, _| {
        let alert = match id {
            ProxyId::Backend(b) => o.servers.get(b).and_then(|be| be.email_alert.as_ref()),
            _ => None,
        };
        match alert {
            Some(a) => one(Value::Table(mailers_table(lua, a)?)),
            None => one(Value::Nil),
        }
    }),
    ("shut_bcksess", |_, _, _, _| none()),
    ("pause", |_, _, _, _| {
        Err(mlua::Error::runtime(
            "Proxy:pause() is not supported by portcullis",
        ))
    }),
    ("resume", |_, _, _, _| {
        Err(mlua::Error::runtime(
            "Proxy:resume() is not supported by portcullis",
        ))
    }),
    ("stop", |_, _, _, _| {
        Err(mlua::Error::runtime(
            "Proxy:stop() is not supported by portcullis",
        ))
    }),
];

fn set<V: mlua::IntoLua>(t: &Table, k: &str, v: V) -> mlua::Result<()> {
    t.raw_set(k, v)
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The HTTP response counters as HAProxy's `hrsp_*` fields.
fn set_responses(t: &Table, counters: &crate::servers::StatusCounters) -> mlua::Result<()> {
    let r = counters.snapshot();
    for (name, v) in [
        "hrsp_1xx",
        "hrsp_2xx",
        "hrsp_3xx",
        "hrsp_4xx",
        "hrsp_5xx",
        "hrsp_other",
    ]
    .iter()
    .zip(r)
    {
        set(t, name, count(v))?;
    }
    Ok(())
}

/// `Proxy:get_mailers()`: HAProxy 2.8's `ProxyMailers` table built from
/// the backend's `email_alert` and its `[[mailers]]` section (addresses
/// as HAProxy's `sa2str` writes them: `ip:port`, IPv6 without brackets).
fn mailers_table(lua: &Lua, a: &crate::config::mailers::EmailAlert) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    set(&t, "track_server_health", a.track_server_health)?;
    set(&t, "log_level", i64::from(a.level))?;
    let servers = lua.create_table()?;
    for (name, addr) in &a.mailers.servers {
        servers.raw_set(&**name, format!("{}:{}", addr.ip(), addr.port()))?;
    }
    set(&t, "mailservers", servers)?;
    set(
        &t,
        "mailservers_timeout",
        i64::try_from(a.mailers.timeout.as_millis()).unwrap_or(i64::MAX),
    )?;
    set(&t, "smtp_hostname", a.myhostname.as_str())?;
    set(&t, "smtp_from", a.from.as_str())?;
    set(&t, "smtp_to", a.to.as_str())?;
    Ok(t)
}

/// `Server:set_maxconn(text)`'s number, read as HAProxy's
/// `server_parse_maxconn_change_request` does (`strtol`: leading blanks
/// and a sign allowed, nothing after the digits), with its messages.
fn parse_maxconn(text: &str) -> Result<u32, &'static str> {
    if text.is_empty() {
        return Err("Require <maxconn>.");
    }
    let t = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let digits_at = usize::from(t.starts_with(['+', '-']));
    let rest = t.get(digits_at..).unwrap_or("");
    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return Err("maxconn string empty or preceded by garbage");
    }
    if n != rest.len() {
        return Err("Trailing garbage in maxconn string");
    }
    if t.starts_with('-') && rest.bytes().any(|b| b != b'0') {
        return Err("maxconn must not be negative");
    }
    Ok(rest
        .parse::<u64>()
        .map_or(u32::MAX, |v| u32::try_from(v).unwrap_or(u32::MAX)))
}

/// `Server:get_stats()`: HAProxy's `show stat` fields for one server, as
/// far as portcullis keeps them.
fn server_stats(lua: &Lua, b: &BackendState, s: &ServerState) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    set(&t, "pxname", &*b.name)?;
    set(&t, "svname", &*s.name)?;
    set(&t, "qcur", i64::from(s.queued.load(Relaxed)))?;
    set(&t, "qmax", i64::from(s.max_queued.load(Relaxed)))?;
    set(&t, "scur", i64::from(s.active.load(Relaxed)))?;
    set(&t, "smax", i64::from(s.max_active.load(Relaxed)))?;
    set(&t, "stot", count(s.requests.load(Relaxed)))?;
    set(&t, "lbtot", count(s.requests.load(Relaxed)))?;
    set(&t, "econ", count(s.failures.load(Relaxed)))?;
    set(&t, "eresp", 0)?;
    set(&t, "wretr", 0)?;
    set(&t, "wredis", 0)?;
    set(&t, "status", s.status_text())?;
    set(&t, "weight", i64::from(s.weight()))?;
    set(&t, "act", 1)?;
    set(&t, "bck", 0)?;
    set(&t, "lastchg", count(s.last_change_secs()))?;
    set(&t, "pid", i64::from(std::process::id()))?;
    set(&t, "sid", i64::from(s.puid))?;
    set(&t, "type", 2)?;
    set(&t, "mode", "http")?;
    set(&t, "addr", s.addr.to_string())?;
    set_responses(&t, &s.responses)?;
    if let Some((status, code, ms)) = s.last_check() {
        // HAProxy leaves the check counters empty for an unchecked server.
        set(&t, "chkfail", count(s.checks_failed.load(Relaxed)))?;
        set(&t, "chkdown", count(s.downs.load(Relaxed)))?;
        // HAProxy's `* ` marks a check running at this moment.
        if s.is_checking() {
            set(&t, "check_status", format!("* {}", status.as_str()))?;
        } else {
            set(&t, "check_status", status.as_str())?;
        }
        if code != 0 {
            set(&t, "check_code", i64::from(code))?;
        }
        set(&t, "check_duration", i64::from(ms))?;
        let (rise, fall) = s.check.map_or((0, 0), |c| (c.rise, c.fall));
        set(&t, "check_rise", i64::from(rise))?;
        set(&t, "check_fall", i64::from(fall))?;
    }
    Ok(t)
}

/// `Proxy:get_stats()`: the backend line (`svname` `BACKEND`) or the
/// frontend line (`FRONTEND`, status `OPEN`) of HAProxy's `show stat`.
fn proxy_stats(lua: &Lua, o: &Objects, id: ProxyId, obj: &Table) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    set(&t, "pxname", obj.raw_get::<Value>("name")?)?;
    set(&t, "iid", obj.raw_get::<Value>("uuid")?)?;
    set(&t, "pid", i64::from(std::process::id()))?;
    set(&t, "mode", "http")?;
    match id {
        ProxyId::Backend(b) => {
            let Some(be) = o.servers.get(b) else {
                return Ok(t);
            };
            set(&t, "svname", "BACKEND")?;
            set(&t, "type", 1)?;
            set(&t, "status", be.status_text())?;
            let active: u32 = be.servers.iter().map(|s| s.active.load(Relaxed)).sum();
            set(&t, "scur", i64::from(active))?;
            set(&t, "qcur", i64::from(be.queue.len()))?;
            set(&t, "qmax", i64::from(be.queue.max()))?;
            set(&t, "stot", count(be.stats.requests.load(Relaxed)))?;
            set(&t, "req_tot", count(be.stats.requests.load(Relaxed)))?;
            let weight: u32 = be.servers.iter().map(ServerState::lb_weight).sum();
            set(&t, "weight", i64::from(weight))?;
            set(
                &t,
                "act",
                i64::try_from(be.usable_servers()).unwrap_or(i64::MAX),
            )?;
            set(&t, "bck", 0)?;
            set(
                &t,
                "chkdown",
                count(be.servers.iter().map(|s| s.downs.load(Relaxed)).sum()),
            )?;
            set_responses(&t, &be.stats.responses)?;
        }
        ProxyId::Frontend(_) => {
            set(&t, "svname", "FRONTEND")?;
            set(&t, "type", 0)?;
            set(&t, "status", "OPEN")?;
        }
        ProxyId::TableOnly => {
            set(&t, "svname", "BACKEND")?;
            set(&t, "type", 1)?;
            set(&t, "status", "DOWN")?;
        }
    }
    Ok(t)
}

/// A class's metatable: `__index` holds one function per entry of `table`,
/// made by `method` (which checks `self` and calls the implementation).
fn class<F: Copy + 'static>(
    lua: &Lua,
    name: &'static str,
    table: &[(&'static str, F)],
    method: impl Fn(&'static str, F) -> mlua::Result<mlua::Function>,
) -> mlua::Result<Table> {
    let methods = lua.create_table()?;
    for (n, f) in table {
        methods.raw_set(*n, method(n, *f)?)?;
    }
    let meta = lua.create_table()?;
    meta.raw_set("__index", methods)?;
    meta.raw_set("__name", name)?;
    Ok(meta)
}

fn server_class(lua: &Lua, o: &Rc<Objects>) -> mlua::Result<Table> {
    class(lua, "Server", SERVER_METHODS, |name, f| {
        let o = Rc::clone(o);
        func(lua, move |lua, a| {
            let args = Args::new(&a, name, 1);
            let (b, s) = o.server(&a, name)?;
            f(lua, &o, b, s, &args)
        })
    })
}

fn proxy_class(lua: &Lua, o: &Rc<Objects>) -> mlua::Result<Table> {
    class(lua, "Proxy", PROXY_METHODS, |name, f| {
        let o = Rc::clone(o);
        func(lua, move |lua, a| {
            let args = Args::new(&a, name, 0);
            let (id, t) = o.proxy(&args, name)?;
            f(lua, &o, id, &t)
        })
    })
}

/// A `Proxy` object: `name`, `uuid` (a string, as HAProxy gives it),
/// `servers`, `listeners`; `stktable` is added by the caller.
fn proxy(lua: &Lua, meta: &Table, id: ProxyId, name: &str, uuid: usize) -> mlua::Result<Table> {
    let p = lua.create_table()?;
    p.raw_set(0, id.encode())?;
    p.raw_set("name", name)?;
    p.raw_set("uuid", uuid.to_string())?;
    p.raw_set("servers", lua.create_table()?)?;
    p.raw_set("listeners", lua.create_table()?)?;
    p.set_metatable(Some(meta.clone()))?;
    Ok(p)
}

/// Sets `core.frontends`, `core.backends` and `core.proxies`; returns the
/// two method tables (for the prelude to wrap their errors).
pub(crate) fn install(lua: &Lua, core: &Table, cx: &CallCx) -> mlua::Result<(Table, Table)> {
    let plugin = &cx.plugin;
    let objects = Rc::new(Objects {
        servers: Arc::clone(&plugin.servers),
        frontends: Arc::clone(&plugin.frontends),
    });
    let server_meta = server_class(lua, &objects)?;
    let proxy_meta = proxy_class(lua, &objects)?;
    let frontends = lua.create_table()?;
    let backends = lua.create_table()?;
    let proxies = lua.create_table()?;
    let mut uuid = 0;
    for (i, name) in plugin.frontends.iter().enumerate() {
        uuid += 1;
        let p = proxy(lua, &proxy_meta, ProxyId::Frontend(i), name, uuid)?;
        frontends.raw_set(name.as_str(), p.clone())?;
        proxies.raw_set(name.as_str(), p)?;
    }
    let mut backend_objects = Vec::with_capacity(plugin.servers.len());
    for (b, be) in plugin.servers.iter().enumerate() {
        uuid += 1;
        let p = proxy(lua, &proxy_meta, ProxyId::Backend(b), &be.name, uuid)?;
        let servers: Table = p.raw_get("servers")?;
        for (s, sv) in be.servers.iter().enumerate() {
            let o = lua.create_table()?;
            o.raw_set(0, encode_server(b, s))?;
            o.raw_set("name", &*sv.name)?;
            o.raw_set("puid", sv.puid.to_string())?;
            o.set_metatable(Some(server_meta.clone()))?;
            servers.raw_set(&*sv.name, o)?;
        }
        backends.raw_set(&*be.name, p.clone())?;
        proxies.raw_set(&*be.name, p.clone())?;
        backend_objects.push(p);
    }
    lua.set_named_registry_value(
        super::events::BACKEND_OBJECTS,
        lua.create_sequence_from(backend_objects)?,
    )?;
    for table in plugin.tables.names() {
        let st = super::stktable::stick_table(lua, &plugin.tables, table)?;
        let p = match backends.raw_get::<Value>(table)? {
            Value::Table(p) => p,
            _ => {
                uuid += 1;
                let p = proxy(lua, &proxy_meta, ProxyId::TableOnly, table, uuid)?;
                backends.raw_set(table, p.clone())?;
                proxies.raw_set(table, p.clone())?;
                p
            }
        };
        p.raw_set("stktable", st)?;
    }
    core.raw_set("frontends", frontends)?;
    core.raw_set("backends", backends)?;
    core.raw_set("proxies", proxies)?;
    let (sm, pm): (Table, Table) = (
        server_meta.raw_get("__index")?,
        proxy_meta.raw_get("__index")?,
    );
    Ok((sm, pm))
}

#[cfg(test)]
mod maxconn_tests {
    use super::parse_maxconn;

    #[test]
    fn maxconn_text_is_read_as_strtol_with_haproxy_messages() {
        assert_eq!(parse_maxconn("7"), Ok(7));
        assert_eq!(parse_maxconn(" \t5"), Ok(5));
        assert_eq!(parse_maxconn("+4"), Ok(4));
        assert_eq!(parse_maxconn("-0"), Ok(0));
        assert_eq!(parse_maxconn("99999999999"), Ok(u32::MAX));
        assert_eq!(parse_maxconn(""), Err("Require <maxconn>."));
        assert_eq!(
            parse_maxconn("abc"),
            Err("maxconn string empty or preceded by garbage")
        );
        assert_eq!(
            parse_maxconn("-"),
            Err("maxconn string empty or preceded by garbage")
        );
        assert_eq!(
            parse_maxconn("12x"),
            Err("Trailing garbage in maxconn string")
        );
        assert_eq!(parse_maxconn("-3"), Err("maxconn must not be negative"));
    }
}
