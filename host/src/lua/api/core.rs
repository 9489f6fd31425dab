//! The `core` table: `core.register_*` (only while the script loads),
//! logging, `now`/`tokenize`, `proc.*` variables, `get_info`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use mlua::{Function, Lua, Table, Value};

use super::args::{Args, func, none, one, sample_to_lua};
use super::txn::lua_to_var;
use crate::lua::RegAction;
use crate::lua::runtime::{CallCx, Collect};
use crate::txn::VarScope;

/// Longest Lua log message, as HAProxy's (its trash buffer, `tune.bufsize` 16384, less the NUL).
const LOG_MAX: usize = 16383;

/// A Lua log message as HAProxy 2.6 writes it (`hlua_sendlog`): one line,
/// every byte that is not printable ASCII (a newline, a tab, UTF-8) becomes
/// `.`, and a message longer than the buffer ends in ` ...`.
pub(crate) fn clean_log_message(msg: &[u8]) -> String {
    let cut = msg.len() > LOG_MAX;
    let keep = if cut { LOG_MAX - 4 } else { msg.len() };
    let mut out: String = msg[..keep]
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect();
    if cut {
        out.push_str(" ...");
    }
    out
}

/// Logs `msg` for the plugin at HAProxy syslog level `level` (0 emerg .. 7 debug).
pub(super) fn log_at(plugin: &str, level: i64, msg: &[u8]) {
    let msg = clean_log_message(msg);
    match level {
        i64::MIN..=3 => tracing::error!(plugin, "{msg}"),
        4 => tracing::warn!(plugin, "{msg}"),
        5 | 6 => tracing::info!(plugin, "{msg}"),
        _ => tracing::debug!(plugin, "{msg}"),
    }
}

/// Adds `log`, `Debug`, `Info`, `Warning` and `Alert` (methods when `skip` is 1).
pub(super) fn log_functions(
    lua: &Lua,
    t: &Table,
    cx: &Rc<CallCx>,
    skip: usize,
) -> mlua::Result<()> {
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
                log_at(&cx.plugin.name, level, &args.bytes(2)?);
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
                log_at(&cx.plugin.name, level, &args.bytes(1)?);
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

pub(super) fn core_table(
    lua: &Lua,
    cx: &Rc<CallCx>,
    collect: &Rc<RefCell<Collect>>,
) -> mlua::Result<Table> {
    let core = lua.create_table()?;
    log_functions(lua, &core, cx, 0)?;
    super::regex::add_addr_functions(lua, &core)?;

    {
        let collect = Rc::clone(collect);
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
                let (mut req, mut res, mut tcp, mut tcp_res, mut after) =
                    (false, false, false, false, false);
                for i in 1..=kinds.raw_len() {
                    let k: Value = kinds.raw_get(i)?;
                    let Value::String(k) = k else {
                        return Err(args.err(2, "action types must be strings"));
                    };
                    match &*k.as_bytes() {
                        b"http-req" => req = true,
                        b"http-res" => res = true,
                        b"tcp-req" => tcp = true,
                        b"tcp-res" => tcp_res = true,
                        b"http-after-res" => after = true,
                        other => {
                            return Err(args.err(
                                2,
                                format!(
                                    "unknown action type '{}'; expected http-req, http-res, http-after-res, tcp-req or tcp-res",
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
                            tcp: false,
                            nb_args_tcp: 0,
                            tcp_res: false,
                            nb_args_tcp_res: 0,
                            after_res: false,
                            nb_args_after_res: 0,
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
                if tcp {
                    entry.tcp = true;
                    entry.nb_args_tcp = nb;
                    funcs.actions_tcp.insert(name.clone(), f.clone());
                }
                if tcp_res {
                    entry.tcp_res = true;
                    entry.nb_args_tcp_res = nb;
                    funcs.actions_tcp_res.insert(name.clone(), f.clone());
                }
                if after {
                    entry.after_res = true;
                    entry.nb_args_after_res = nb;
                    funcs.actions_after_res.insert(name.clone(), f.clone());
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
                        let mut c = collect_mut(&collect)?;
                        push_name(&mut c.names.tcp_services, &name);
                        c.funcs.services_tcp.insert(name, f);
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
    {
        let cx = Rc::clone(cx);
        core.raw_set(
            "get_info",
            func(lua, move |lua, _| {
                get_info(lua, &cx).map(Value::Table).and_then(one)
            })?,
        )?;
    }
    core.raw_set("thread", 1)?;
    Ok(core)
}

/// `show info` fields of features portcullis does not have: 0, as HAProxy
/// reports them when they are not configured (SSL, pipes, compression,
/// peers, log receivers, resolvers, rate limits).
const ZERO_FIELDS: [&str; 30] = [
    "ActivePeers",
    "BusyPolling",
    "CompressBpsIn",
    "CompressBpsOut",
    "CompressBpsRateLim",
    "ConnRateLimit",
    "ConnectedPeers",
    "CumRecvLogs",
    "CumSslConns",
    "CurrSslConns",
    "DebugCommandsIssued",
    "FailedResolutions",
    "MaxSslConns",
    "MaxSslRate",
    "Maxpipes",
    "PipesFree",
    "PipesUsed",
    "SessRateLimit",
    "SslBackendKeyRate",
    "SslBackendMaxKeyRate",
    "SslCacheLookups",
    "SslCacheMisses",
    "SslFrontendKeyRate",
    "SslFrontendMaxKeyRate",
    "SslFrontendSessionReuse_pct",
    "SslRate",
    "SslRateLimit",
    // HAProxy 2.6's spelling.
    "TotalSplicdedBytesOut",
    "Nbproc",
    "Process_num",
];

/// `core.get_info()`: HAProxy's `show info` fields, with HAProxy's names and
/// types (integers, and strings for `Name`, `Version`, `Uptime`, ...), for
/// what portcullis knows; fields it does not measure are absent (nil), as
/// HAProxy leaves out empty ones.
fn get_info(lua: &Lua, cx: &CallCx) -> mlua::Result<Table> {
    let info = cx
        .plugin
        .process
        .get()
        .and_then(std::sync::Weak::upgrade)
        .map(|s| s.process_info());
    let t = lua.create_table_with_capacity(0, 48)?;
    let version = env!("CARGO_PKG_VERSION");
    t.raw_set("Name", "portcullis")?;
    t.raw_set("Version", version)?;
    t.raw_set("Build info", version)?;
    t.raw_set("Tainted", "0")?;
    t.raw_set("Pid", i64::from(std::process::id()))?;
    for name in ZERO_FIELDS {
        t.raw_set(name, 0)?;
    }
    // Nbproc and Process_num are 1 (one process), as in HAProxy 2.6.
    t.raw_set("Nbproc", 1)?;
    t.raw_set("Process_num", 1)?;
    // Before the daemon serves (a script loading, `portcullis check`):
    // the process's own age and no traffic.
    let info = info.unwrap_or_else(|| crate::plugin::ProcessInfo {
        uptime: process_start().elapsed(),
        workers: 1,
        ..Default::default()
    });
    let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let up = info.uptime.as_secs();
    t.raw_set(
        "Uptime",
        format!(
            "{}d {}h{:02}m{:02}s",
            up / 86400,
            (up % 86400) / 3600,
            (up % 3600) / 60,
            up % 60
        ),
    )?;
    t.raw_set("Uptime_sec", int(up))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    t.raw_set("Start_time_sec", int(now.saturating_sub(up)))?;
    t.raw_set("Nbthread", int(info.workers))?;
    t.raw_set("Maxconn", int(info.maxconn))?;
    t.raw_set("Hard_maxconn", int(info.maxconn))?;
    t.raw_set("CurrConns", int(info.curr_conns))?;
    t.raw_set("CumConns", int(info.cum_conns))?;
    t.raw_set("CumReq", int(info.cum_req))?;
    t.raw_set("Listeners", int(info.listeners))?;
    Ok(t)
}

/// When the process first asked (the uptime reported before the daemon serves).
fn process_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

fn push_name(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_string());
    }
}
