//! HAProxy's `StickTable` class over the stick-table host API
//! ([`crate::stick::Api`]); `lua/proxy.rs` hangs each on its proxy object.
//!
//! HAProxy hangs a table on the proxy that declares it; portcullis declares
//! tables on their own (`[[stick_table]]`), so a table named `X` appears as
//! `core.backends["X"].stktable` (on the backend `X` if there is one, else on
//! a table-only proxy object, like an HAProxy backend that only holds a table).
//! Methods: HAProxy's `info`, `lookup`, `dump`, plus portcullis's write
//! methods `increment`, `set` and `clear` (HAProxy's Lua API has none).

use std::sync::Arc;

use mlua::{Lua, MultiValue, Table, Value};

use super::api::{Args, error_values};
use crate::stick::api::{EntryView, Filter};
use crate::stick::{StickError, StickTables};

/// HAProxy's `dump` accepts at most this many filters.
const MAX_FILTERS: usize = 4;

fn func<F>(lua: &Lua, f: F) -> mlua::Result<mlua::Function>
where
    F: Fn(&Lua, MultiValue) -> mlua::Result<MultiValue> + 'static,
{
    lua.create_function(move |lua, args: MultiValue| f(lua, args).or_else(|e| error_values(lua, e)))
}

fn one(v: Value) -> mlua::Result<MultiValue> {
    let mut m = MultiValue::with_capacity(1);
    m.push_back(v);
    Ok(m)
}

fn stick_err(f: &str, e: &StickError) -> mlua::Error {
    mlua::Error::runtime(format!("{f}: {e}"))
}

fn to_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An entry's data as `{ name = value, ... }` (plus `expire` and `use` with `meta`, as `lookup` gives).
fn entry_table(lua: &Lua, e: &EntryView, meta: bool) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, e.data.len() + 2)?;
    for (name, v) in &e.data {
        t.raw_set(name.as_str(), to_int(*v))?;
    }
    if meta {
        t.raw_set("expire", to_int(e.expire_ms.unwrap_or(0)))?;
        t.raw_set("use", to_int(e.refs))?;
    }
    Ok(t)
}

/// Builds the `StickTable` object of table `name`.
pub(super) fn stick_table(lua: &Lua, tables: &Arc<StickTables>, name: &str) -> mlua::Result<Table> {
    let obj = lua.create_table()?;
    let methods = lua.create_table()?;
    let name: Arc<str> = Arc::from(name);
    {
        let (tables, name) = (Arc::clone(tables), Arc::clone(&name));
        methods.raw_set(
            "info",
            func(lua, move |lua, _| {
                let api = tables.api();
                let i = api.info(&name).map_err(|e| stick_err("info", &e))?;
                let t = lua.create_table()?;
                t.raw_set("type", i.key_type)?;
                // HAProxy reports the key's storage length (4 for ip, 16 for ipv6, 4 for integer).
                let length = match (i.key_type, i.key_len) {
                    (_, Some(n)) => n,
                    ("ipv6", _) => 16,
                    _ => 4,
                };
                t.raw_set("length", to_int(length as u64))?;
                t.raw_set("size", to_int(i.size))?;
                t.raw_set("used", to_int(i.used))?;
                t.raw_set("nopurge", i.nopurge)?;
                t.raw_set("expire", to_int(i.expire_ms.unwrap_or(0)))?;
                let data = lua.create_table()?;
                for d in &i.store {
                    // `http_req_rate(10000)` → period 10000; counters → -1 (HAProxy's values).
                    match d.split_once('(') {
                        Some((n, rest)) => {
                            let p = rest.trim_end_matches(')').parse::<i64>().unwrap_or(-1);
                            data.raw_set(n, p)?;
                        }
                        None => data.raw_set(d.as_str(), -1)?,
                    }
                }
                t.raw_set("data", data)?;
                one(Value::Table(t))
            })?,
        )?;
    }
    {
        let (tables, name) = (Arc::clone(tables), Arc::clone(&name));
        methods.raw_set(
            "lookup",
            func(lua, move |lua, a| {
                let args = Args::new(&a, "lookup", 1);
                let key = args.string(1)?;
                match tables
                    .api()
                    .lookup(&name, &key)
                    .map_err(|e| stick_err("lookup", &e))?
                {
                    Some(e) => one(Value::Table(entry_table(lua, &e, true)?)),
                    None => one(Value::Nil),
                }
            })?,
        )?;
    }
    {
        let (tables, name) = (Arc::clone(tables), Arc::clone(&name));
        methods.raw_set(
            "dump",
            func(lua, move |lua, a| {
                let args = Args::new(&a, "dump", 1);
                let api = tables.api();
                let t = api.table(&name).map_err(|e| stick_err("dump", &e))?;
                let mut filters: Vec<Filter> = Vec::new();
                match args.get(1) {
                    Value::Nil => {}
                    Value::Table(list) => {
                        let n = list.raw_len();
                        if n > MAX_FILTERS {
                            return Err(args.err(1, "at most 4 filters"));
                        }
                        for i in 1..=n {
                            let Value::Table(f) = list.raw_get::<Value>(i)? else {
                                return Err(
                                    args.err(1, "each filter is a table {data, operator, value}")
                                );
                            };
                            let part = |j: usize| -> mlua::Result<String> {
                                match f.raw_get::<Value>(j)? {
                                    Value::String(s) => Ok(s.to_string_lossy()),
                                    Value::Integer(v) => Ok(v.to_string()),
                                    Value::Number(v) => Ok(v.to_string()),
                                    _ => Err(args
                                        .err(1, "each filter is a table {data, operator, value}")),
                                }
                            };
                            let (data, op, value) = (part(1)?, part(2)?, part(3)?);
                            filters.push(
                                api.filter(t, &data, &format!("{op}:{value}"))
                                    .map_err(|e| stick_err("dump", &e))?,
                            );
                        }
                    }
                    _ => return Err(args.bad(1, "table")),
                }
                let entries = api
                    .dump(&name, &filters, usize::MAX)
                    .map_err(|e| stick_err("dump", &e))?;
                let out = lua.create_table_with_capacity(0, entries.len())?;
                for e in &entries {
                    out.raw_set(e.key.as_str(), entry_table(lua, e, false)?)?;
                }
                one(Value::Table(out))
            })?,
        )?;
    }
    {
        let (tables, name) = (Arc::clone(tables), Arc::clone(&name));
        methods.raw_set(
            "increment",
            func(lua, move |_, a| {
                let args = Args::new(&a, "increment", 1);
                let key = args.string(1)?;
                let data = args.string(2)?;
                let delta = args.opt_int(3)?.unwrap_or(1);
                let v = tables
                    .api()
                    .add(&name, &key, &data, delta)
                    .map_err(|e| stick_err("increment", &e))?;
                one(Value::Integer(to_int(v)))
            })?,
        )?;
    }
    {
        let (tables, name) = (Arc::clone(tables), Arc::clone(&name));
        methods.raw_set(
            "set",
            func(lua, move |lua, a| {
                let args = Args::new(&a, "set", 1);
                let key = args.string(1)?;
                let list = args.table(2)?;
                let mut values: Vec<(String, i64)> = Vec::new();
                for pair in list.pairs::<Value, Value>() {
                    let (k, v) = pair?;
                    let Value::String(k) = k else {
                        return Err(args.err(2, "keys must be data type names"));
                    };
                    let v = match v {
                        Value::Integer(i) => i,
                        Value::Number(x) if x.fract() == 0.0 && x.is_finite() => x as i64,
                        _ => {
                            return Err(args.err(
                                2,
                                format!("value of {} must be an integer", k.to_string_lossy()),
                            ));
                        }
                    };
                    values.push((k.to_string_lossy(), v));
                }
                let refs: Vec<(&str, i64)> = values.iter().map(|(k, v)| (k.as_str(), *v)).collect();
                let e = tables
                    .api()
                    .set(&name, &key, &refs)
                    .map_err(|e| stick_err("set", &e))?;
                one(Value::Table(entry_table(lua, &e, true)?))
            })?,
        )?;
    }
    {
        let (tables, name) = (Arc::clone(tables), Arc::clone(&name));
        methods.raw_set(
            "clear",
            func(lua, move |_, a| {
                let args = Args::new(&a, "clear", 1);
                let key = args.string(1)?;
                match tables.api().clear_entry(&name, &key) {
                    Ok(()) => one(Value::Boolean(true)),
                    Err(StickError::NotFound { .. }) => one(Value::Boolean(false)),
                    Err(e) => Err(stick_err("clear", &e)),
                }
            })?,
        )?;
    }
    let meta = lua.create_table()?;
    meta.raw_set("__index", methods)?;
    meta.raw_set("__name", "StickTable")?;
    obj.set_metatable(Some(meta))?;
    obj.raw_set("name", &*name)?;
    Ok(obj)
}
