//! Lazy header tables (`req_/res_get_headers`): the C metamethods over a
//! userdata snapshot (its format is in `lua/headers.rs`), their shared
//! metatable, and the function that pushes a new table.
//!
//! The metamethods are raw C functions: an allocation failure raises a Lua
//! error through them (a `longjmp`), so their frames hold nothing with a
//! destructor. The snapshot is parsed with bounds checks and a magic number,
//! so even a forged argument cannot make them read outside it.

use std::os::raw::c_int;

use mlua::ffi::{self, lua_State};
use mlua::{Lua, Table};

use crate::lua::headers::{Group, find, first_group, group_at, mark_taken, values};

/// Key of a lazy table's snapshot: a light userdata no script can forge.
static SNAPSHOT_KEY: u8 = 0;

fn snapshot_key() -> *const std::ffi::c_void {
    std::ptr::from_ref(&SNAPSHOT_KEY).cast()
}

/// The snapshot of the lazy table at `t`: pushes the userdata (1 slot) and
/// returns its bytes, or pushes nothing and returns `None` for anything else
/// (a table already iterated, or not a header table).
///
/// # Safety
/// `state` is a running Lua state with a free stack slot. The slice is valid
/// while the userdata is on the stack: Lua never moves a full userdata nor
/// reads or writes its block, and no other reference to it exists while a
/// metamethod runs (the worker is single-threaded).
unsafe fn snapshot_at<'a>(state: *mut lua_State, t: c_int) -> Option<&'a mut [u8]> {
    // SAFETY: per this function's contract; only reads the stack.
    unsafe {
        if ffi::lua_type(state, t) != ffi::LUA_TTABLE {
            return None;
        }
        if ffi::lua_rawgetp(state, t, snapshot_key()) != ffi::LUA_TUSERDATA {
            ffi::lua_pop(state, 1);
            return None;
        }
        let p = ffi::lua_touserdata(state, -1).cast::<u8>();
        let len = ffi::lua_rawlen(state, -1);
        if p.is_null() {
            ffi::lua_pop(state, 1);
            return None;
        }
        Some(std::slice::from_raw_parts_mut(p, len))
    }
}

/// Pushes the values table of `g`: `{ [0] = v1, [1] = v2, ... }`.
///
/// # Safety
/// Inside a Lua call with 2 free stack slots; may raise a memory error.
unsafe fn push_values(state: *mut lua_State, snap: &[u8], g: &Group) {
    // SAFETY: per this function's contract.
    unsafe {
        let arr = c_int::try_from(g.count.saturating_sub(1)).unwrap_or(0);
        ffi::lua_createtable(state, arr, 1);
        for (i, r) in (0..).zip(values(snap, g)) {
            let v = &snap[r];
            ffi::lua_pushlstring(state, v.as_ptr().cast(), v.len());
            ffi::lua_rawseti(state, -2, i);
        }
    }
}

/// The string at stack index `i`, if it is one (not converted from a number).
///
/// # Safety
/// `state` is a running Lua state; the slice lives while the value is on the stack.
unsafe fn string_at<'a>(state: *mut lua_State, i: c_int) -> Option<&'a [u8]> {
    // SAFETY: `lua_tolstring` on a string returns its bytes, which Lua keeps
    // unchanged while the string is reachable from the stack.
    unsafe {
        if ffi::lua_type(state, i) != ffi::LUA_TSTRING {
            return None;
        }
        let mut len = 0usize;
        let p = ffi::lua_tolstring(state, i, &mut len);
        (!p.is_null()).then(|| std::slice::from_raw_parts(p.cast::<u8>(), len))
    }
}

/// `__index(t, k)`: header `k`'s values from the snapshot, moved into `t`.
unsafe extern "C-unwind" fn lazy_index(state: *mut lua_State) -> c_int {
    // SAFETY: called by Lua as a metamethod with (t, k); a C function has
    // LUA_MINSTACK (20) free slots and this uses 5. Memory errors raised by
    // `push_values`/`lua_rawset` longjmp over this frame, which holds only
    // slices, integers and iterators (no destructors); the group is marked
    // taken only after the table holds it, so a failed read loses nothing.
    unsafe {
        ffi::lua_settop(state, 2);
        let found = match (string_at(state, 2), snapshot_at(state, 1)) {
            (Some(key), Some(snap)) => find(snap, key).filter(|g| !g.taken).map(|g| (snap, g)),
            _ => None,
        };
        let Some((snap, g)) = found else {
            ffi::lua_pushnil(state);
            return 1;
        };
        push_values(state, snap, &g);
        ffi::lua_pushvalue(state, 2);
        ffi::lua_pushvalue(state, -2);
        ffi::lua_rawset(state, 1);
        mark_taken(snap, &g);
        1
    }
}

/// `__newindex(t, k, v)`: a script's assignment wins over the snapshot.
unsafe extern "C-unwind" fn lazy_newindex(state: *mut lua_State) -> c_int {
    // SAFETY: as `lazy_index`, with (t, k, v). `lua_rawset` raises for a nil
    // or NaN key, as a plain assignment would; the name is marked taken only
    // after the assignment is done.
    unsafe {
        ffi::lua_settop(state, 3);
        if ffi::lua_type(state, 1) != ffi::LUA_TTABLE {
            return 0;
        }
        ffi::lua_pushvalue(state, 2);
        ffi::lua_pushvalue(state, 3);
        ffi::lua_rawset(state, 1);
        if let (Some(key), Some(snap)) = (string_at(state, 2), snapshot_at(state, 1))
            && let Some(g) = find(snap, key)
        {
            mark_taken(snap, &g);
        }
        0
    }
}

/// `__pairs(t)`: moves every remaining name into `t`, drops the metatable
/// (a plain table from then on) and iterates it with `next`.
unsafe extern "C-unwind" fn lazy_pairs(state: *mut lua_State) -> c_int {
    // SAFETY: as `lazy_index`, with (t). Each name is marked taken right
    // after it is stored, so a memory error part-way leaves a consistent
    // table and snapshot (a later `pairs` finishes the job). Removing a key
    // and a metatable does not allocate. Stack: t, the userdata, then a
    // name, its copy and a values table.
    unsafe {
        ffi::lua_settop(state, 1);
        if let Some(snap) = snapshot_at(state, 1) {
            let mut at = first_group(snap);
            while let Some(g) = group_at(snap, at) {
                at = g.next;
                if g.taken {
                    continue;
                }
                let Some(name) = snap.get(g.name.clone()) else {
                    break;
                };
                ffi::lua_pushlstring(state, name.as_ptr().cast(), name.len());
                ffi::lua_pushvalue(state, -1);
                // A name the script stored with `rawset` keeps its value.
                if ffi::lua_rawget(state, 1) != ffi::LUA_TNIL {
                    ffi::lua_pop(state, 2);
                } else {
                    ffi::lua_pop(state, 1);
                    push_values(state, snap, &g);
                    ffi::lua_rawset(state, 1);
                }
                mark_taken(snap, &g);
            }
            // A plain table from here on: no hidden key, no metatable.
            ffi::lua_pushnil(state);
            ffi::lua_rawsetp(state, 1, snapshot_key());
            ffi::lua_pushnil(state);
            ffi::lua_setmetatable(state, 1);
        }
        ffi::lua_settop(state, 1);
        ffi::lua_pushcfunction(state, lazy_next);
        ffi::lua_insert(state, 1);
        ffi::lua_pushnil(state);
        3
    }
}

/// `next(t, k)` for the iteration `__pairs` starts (a table is checked first).
unsafe extern "C-unwind" fn lazy_next(state: *mut lua_State) -> c_int {
    // SAFETY: `luaL_checktype` raises unless argument 1 is a table, which
    // `lua_next` requires; `lua_next` raises for a key not in the table.
    unsafe {
        ffi::luaL_checktype(state, 1, ffi::LUA_TTABLE);
        ffi::lua_settop(state, 2);
        if ffi::lua_next(state, 1) != 0 {
            2
        } else {
            ffi::lua_pushnil(state);
            1
        }
    }
}

/// The metatable shared by a state's lazy header tables (made once per state).
pub(crate) struct LazyHeaders {
    meta: Table,
}

impl LazyHeaders {
    pub(crate) fn new(lua: &Lua) -> mlua::Result<LazyHeaders> {
        let meta = lua.create_table()?;
        // SAFETY: the functions are the `extern "C-unwind"` metamethods above,
        // which uphold the Lua C API's rules (see their own comments).
        unsafe {
            meta.raw_set("__index", lua.create_c_function(lazy_index)?)?;
            meta.raw_set("__newindex", lua.create_c_function(lazy_newindex)?)?;
            meta.raw_set("__pairs", lua.create_c_function(lazy_pairs)?)?;
        }
        // Protected: scripts cannot reach the metamethods nor swap the
        // metatable (and there is no `debug` library to go around it).
        meta.raw_set("__metatable", false)?;
        Ok(LazyHeaders { meta })
    }

    /// The shared metatable.
    pub(crate) fn meta(&self) -> &Table {
        &self.meta
    }
}

/// Pushes a lazy header table with a snapshot of `size` bytes and the
/// metatable at stack index `meta` (a positive or upvalue index); `hint` is
/// the number of header names. Returns the snapshot's address: the caller
/// must write all `size` bytes (see
/// [`write_snapshot`](crate::lua::headers::write_snapshot)) before Lua code may
/// run again.
///
/// # Safety
/// Inside a Lua call with 3 free stack slots; may raise a memory error, so
/// the caller's frame must hold nothing with a destructor. The bytes are
/// valid while the table is reachable (it anchors the userdata).
pub(crate) unsafe fn push_lazy(
    state: *mut lua_State,
    meta: c_int,
    size: usize,
    hint: usize,
) -> *mut u8 {
    // SAFETY: per this function's contract. `lua_newuserdatauv` returns a
    // block of `size` writable bytes, never moved, alive while it is on the
    // stack and then while the table refers to it. Setting a key of a
    // pre-sized table and a metatable do not allocate.
    unsafe {
        let hash = c_int::try_from(1 + hint.min(3)).unwrap_or(1);
        let p = ffi::lua_newuserdatauv(state, size, 0).cast::<u8>();
        ffi::lua_createtable(state, 0, hash);
        // Stack: userdata, table.
        ffi::lua_pushvalue(state, -2);
        ffi::lua_rawsetp(state, -2, snapshot_key());
        ffi::lua_pushvalue(state, meta);
        ffi::lua_setmetatable(state, -2);
        // Leave only the table.
        ffi::lua_rotate(state, -2, 1);
        ffi::lua_pop(state, 1);
        p
    }
}
