//! HAProxy's `Map` class: `Map.new(file[, method])` while the script loads
//! (main chunk or init function), `map:lookup(key)` / `map:slookup(key)`
//! anywhere. A map object is a table holding its map at index 0 under the
//! class metatable, as in HAProxy; the map itself is read once per process
//! ([`PatternCache`](crate::rules::pattern::PatternCache)) and shared by
//! every worker's state.

use std::cell::RefCell;
use std::rc::Rc;

use mlua::{Lua, MultiValue, Table, UserData, Value};

use super::api::{Args, error_values, one};
use super::runtime::{CallCx, CallKind};
use crate::rules::cond::MatchMethod;
use crate::rules::pattern::{Change, MapReader};

/// The map behind a `Map` object: this state's copy of the file's live index.
struct MapHandle(RefCell<MapReader>);

impl UserData for MapHandle {}

/// HAProxy's `PAT_MATCH_*` numbers, which `Map._str` and friends hold.
const METHODS: [(&str, i64); 14] = [
    ("found", 0),
    ("bool", 1),
    ("int", 2),
    ("ip", 3),
    ("bin", 4),
    ("len", 5),
    ("str", 6),
    ("beg", 7),
    ("sub", 8),
    ("dir", 9),
    ("dom", 10),
    ("end", 11),
    ("reg", 12),
    ("regm", 13),
];

/// The match method a `Map.new` code selects, or HAProxy's refusal.
fn method_for(code: i64) -> Result<MatchMethod, &'static str> {
    Ok(match code {
        2 => MatchMethod::Int,
        3 => MatchMethod::Ip,
        6 => MatchMethod::Str,
        7 => MatchMethod::Beg,
        8 => MatchMethod::Sub,
        9 => MatchMethod::Dir,
        10 => MatchMethod::Dom,
        11 => MatchMethod::End,
        12 => MatchMethod::Reg,
        0..=13 => {
            return Err(
                "'new' doesn't support this match mode (use Map._str, _beg, _sub, _dir, _dom, _end, _reg, _int or _ip)",
            );
        }
        _ => return Err("'new' needs a valid match method (Map._str, Map._beg, ...)"),
    })
}

/// Builds the `Map` class and the object methods; the prelude wraps the
/// functions (errors located at the script's line) and publishes `Map`.
pub(crate) fn install(lua: &Lua, cx: &Rc<CallCx>, p: &Table) -> mlua::Result<()> {
    let class = lua.create_table()?;
    for (name, code) in METHODS {
        class.raw_set(format!("_{name}"), code)?;
        class.raw_set(name, code)?;
    }
    let methods = lua.create_table()?;
    methods.raw_set("lookup", lookup_fn(lua, "lookup", false)?)?;
    methods.raw_set("slookup", lookup_fn(lua, "slookup", true)?)?;
    let meta = lua.create_table()?;
    meta.raw_set("__index", &methods)?;
    let new = {
        let cx = Rc::clone(cx);
        lua.create_function(move |lua, a: MultiValue| {
            new_map(lua, &cx, &meta, &a).or_else(|e| error_values(lua, e))
        })?
    };
    class.raw_set("new", new)?;
    p.raw_set("map_class", class)?;
    p.raw_set("map_methods", methods)?;
    let core: Table = p.raw_get("core")?;
    for op in [Op::SetMap, Op::DelMap, Op::AddAcl, Op::DelAcl] {
        let cx = Rc::clone(cx);
        let f = lua.create_function(move |lua, a: MultiValue| {
            edit(&cx, op, &a).or_else(|e| error_values(lua, e))
        })?;
        core.raw_set(op.name(), f)?;
    }
    Ok(())
}

/// `core.set_map`, `del_map`, `add_acl`, `del_acl`.
#[derive(Debug, Clone, Copy)]
enum Op {
    SetMap,
    DelMap,
    AddAcl,
    DelAcl,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::SetMap => "set_map",
            Op::DelMap => "del_map",
            Op::AddAcl => "add_acl",
            Op::DelAcl => "del_acl",
        }
    }
}

/// Changes the in-memory entries of a loaded file, as HAProxy's
/// `hlua_set_map` and friends change its `pat_ref` (never the file on
/// disk); every `Map` object of the file, in every worker, sees the change
/// at its next lookup.
fn edit(cx: &CallCx, op: Op, a: &MultiValue) -> mlua::Result<MultiValue> {
    let name = op.name();
    let nargs = if matches!(op, Op::SetMap) { 3 } else { 2 };
    if a.len() != nargs {
        return Err(mlua::Error::runtime(format!(
            "'{name}' needs {nargs} arguments"
        )));
    }
    let args = Args::new(a, name, 0);
    let file = args.bytes(1)?;
    let key = args.bytes(2)?;
    let value = if matches!(op, Op::SetMap) {
        Some(args.bytes(3)?)
    } else {
        None
    };
    let file_text = String::from_utf8_lossy(&file);
    // Resolved as `Map.new` resolves it, so the same string names the same file.
    let path = crate::config::resolve_path(&cx.plugin.path, &file_text);
    let Some(r) = cx.plugin.maps.loaded(&path) else {
        // HAProxy's messages, `del_map`'s "acl" included.
        let kind = if matches!(op, Op::SetMap) {
            "map"
        } else {
            "acl"
        };
        return Err(mlua::Error::runtime(format!(
            "'{name}': unknown {kind} file '{file_text}'"
        )));
    };
    let change = match (op, value) {
        (Op::SetMap, Some(v)) => r.set(&key, &v),
        (Op::AddAcl, _) => r.add_key(&key),
        _ => r.delete(&key),
    };
    if change == Change::Full {
        // HAProxy drops an entry it cannot allocate without a word; the log says why.
        tracing::warn!(plugin = %cx.plugin.name, file = %path.display(), "core.{name}: the file would exceed {} entries or {} bytes; the change was dropped", crate::rules::pattern::MAX_ENTRIES, crate::rules::pattern::MAX_FILE_BYTES);
    }
    Ok(MultiValue::new())
}

fn new_map(lua: &Lua, cx: &CallCx, meta: &Table, a: &MultiValue) -> mlua::Result<MultiValue> {
    if a.is_empty() || a.len() > 2 {
        return Err(mlua::Error::runtime("'new' needs at least 1 argument."));
    }
    let args = Args::new(a, "new", 0);
    let file = args.string(1)?;
    let method = match args.get(2) {
        Value::Nil if a.len() == 1 => MatchMethod::Str,
        _ => method_for(args.int(2)?).map_err(mlua::Error::runtime)?,
    };
    if cx.kind.get() != CallKind::Load {
        // Reading a file would block the worker mid-request; HAProxy refuses too.
        return Err(mlua::Error::runtime(
            "'new': maps can only be loaded while the script loads (main chunk or init function), not at runtime",
        ));
    }
    // Relative to the script's directory, so a script and its maps move together.
    let path = crate::config::resolve_path(&cx.plugin.path, &file);
    let map = cx
        .plugin
        .maps
        .get_or_load(&path, method)
        .map_err(|m| mlua::Error::runtime(format!("'new': {m}.")))?;
    let obj = lua.create_table()?;
    obj.raw_set(
        0,
        lua.create_userdata(MapHandle(RefCell::new(MapReader::new(map))))?,
    )?;
    obj.set_metatable(Some(meta.clone()))?;
    one(Value::Table(obj))
}

/// `map:lookup(key)` (nil when nothing matches) or `map:slookup(key)` ("").
fn lookup_fn(lua: &Lua, name: &'static str, stringify: bool) -> mlua::Result<mlua::Function> {
    lua.create_function(move |lua, a: MultiValue| {
        lookup(lua, name, stringify, &a).or_else(|e| error_values(lua, e))
    })
}

fn lookup(
    lua: &Lua,
    name: &'static str,
    stringify: bool,
    a: &MultiValue,
) -> mlua::Result<MultiValue> {
    if a.len() != 2 {
        return Err(mlua::Error::runtime(format!("'{name}' needs 2 arguments")));
    }
    let this = a.front().unwrap_or(&Value::Nil);
    let ud = match this {
        Value::Table(t) => match t.raw_get::<Value>(0)? {
            Value::UserData(ud) => Some(ud),
            _ => None,
        },
        _ => None,
    };
    // Borrowed for the lookup: no reference count is touched per call.
    let Some(handle) = ud.as_ref().and_then(|ud| ud.borrow::<MapHandle>().ok()) else {
        return Err(mlua::Error::runtime(format!(
            "calling '{name}' on bad self (Map expected, got {}); use map:{name}(key)",
            this.type_name()
        )));
    };
    let args = Args::new(a, name, 1);
    let Ok(mut reader) = handle.0.try_borrow_mut() else {
        return Err(mlua::Error::runtime(format!("'{name}': map in use")));
    };
    let map = reader.get();
    let found = if map.method() == MatchMethod::Int {
        map.lookup_int(args.checkinteger(1)?)
    } else {
        match args.get(1) {
            Value::String(s) => map.lookup(&s.as_bytes()),
            Value::Integer(_) | Value::Number(_) => map.lookup(&args.bytes(1)?),
            _ => return Err(args.bad(1, "string")),
        }
    };
    let v = match found {
        Some(v) => Value::String(lua.create_string(v)?),
        None if stringify => Value::String(lua.create_string("")?),
        None => Value::Nil,
    };
    one(v)
}
