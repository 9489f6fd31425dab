//! Whole header tables (`AppletHTTP.headers`), built in one protected call
//! with the raw C API, and the per-state cache of short strings they use.

use std::os::raw::c_int;

use http::{HeaderMap, HeaderName};
use mlua::ffi::{self, lua_State};
use mlua::{Lua, Table};

use super::cx::CallCx;

/// Longest string Lua interns (`LUAI_MAXSHORTLEN`); longer ones are not hashed.
const SHORT_MAX: usize = 40;
/// Slots of a [`StrCache`] (a power of two: the slot is the top bits of a hash).
const STR_SLOTS: usize = 256;

/// Recently pushed short strings (header names, common values) of one state.
///
/// Interning a short string makes Lua hash every byte and walk a hash chain;
/// for the dozen header names of each request that was the largest single
/// cost of building a whole header table. A slot is chosen from the length
/// and the first and last 8 bytes, and its content compared in full, so a
/// hit pushes the very string Lua would have interned.
pub(crate) struct StrCache {
    /// Lua array (`STR_SLOTS` preallocated) anchoring the cached strings.
    table: Table,
    /// The bytes of the string in each slot of `table`.
    keys: Vec<Option<Box<[u8]>>>,
}

impl StrCache {
    fn new(lua: &Lua) -> mlua::Result<StrCache> {
        Ok(StrCache {
            table: lua.create_table_with_capacity(STR_SLOTS, 0)?,
            keys: vec![None; STR_SLOTS],
        })
    }
}

/// The cache slot of a short string.
fn str_slot(b: &[u8]) -> usize {
    let n = b.len().min(8);
    let (mut head, mut tail) = ([0u8; 8], [0u8; 8]);
    head[..n].copy_from_slice(&b[..n]);
    tail[..n].copy_from_slice(&b[b.len() - n..]);
    let h = (u64::from_le_bytes(head) ^ u64::from_le_bytes(tail).rotate_left(29) ^ b.len() as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // Top 8 bits: STR_SLOTS is 256.
    usize::try_from(h >> 56).unwrap_or(0)
}

/// Pushes `b` as a Lua string, from `keys`/the table at stack index `cache` when cached.
///
/// # Safety
/// Must run inside a protected call on `state` with the cache table (created
/// with `STR_SLOTS` array slots) at index `cache` and 2 free stack slots.
/// It may raise a Lua error (memory) only from `lua_pushlstring`, before any
/// Rust value with a destructor exists in this frame.
unsafe fn push_cached(
    state: *mut lua_State,
    cache: c_int,
    keys: &mut [Option<Box<[u8]>>],
    b: &[u8],
) {
    // SAFETY: per this function's contract (see the caller).
    unsafe {
        if b.len() > SHORT_MAX {
            ffi::lua_pushlstring(state, b.as_ptr().cast(), b.len());
            return;
        }
        let slot = str_slot(b);
        let index = ffi::lua_Integer::try_from(slot + 1).unwrap_or(1);
        if keys.get(slot).and_then(|k| k.as_deref()) == Some(b) {
            ffi::lua_rawgeti(state, cache, index);
            return;
        }
        ffi::lua_pushlstring(state, b.as_ptr().cast(), b.len());
        ffi::lua_pushvalue(state, -1);
        // Stores into the preallocated array part: no allocation, cannot fail.
        ffi::lua_rawseti(state, cache, index);
        if let Some(k) = keys.get_mut(slot) {
            *k = Some(Box::from(b));
        }
    }
}

/// Borrows the state's short-string cache (made on first use) for `f`.
fn with_str_cache<R>(
    lua: &Lua,
    cx: &CallCx,
    f: impl FnOnce(&mut StrCache) -> mlua::Result<R>,
) -> mlua::Result<R> {
    let mut guard = cx
        .strings
        .try_borrow_mut()
        .map_err(|_| mlua::Error::runtime("headers: string cache in use"))?;
    if guard.is_none() {
        *guard = Some(StrCache::new(lua)?);
    }
    match guard.as_mut() {
        Some(cache) => f(cache),
        None => Err(mlua::Error::runtime("headers: no string cache")),
    }
}

/// `{ name = { [0] = v1, [1] = v2 } }`, names in lower case, built whole
/// (`AppletHTTP.headers`).
///
/// Built in one protected call: under a memory limit mlua protects each
/// table and string operation with its own `pcall`, which made this ~10x
/// slower (about 1 µs per header). Short strings come from `cx`'s cache.
pub(crate) fn headers_table(lua: &Lua, cx: &CallCx, h: &HeaderMap) -> mlua::Result<Table> {
    let size = c_int::try_from(h.keys_len()).unwrap_or(0);
    with_str_cache(lua, cx, |StrCache { table, keys }| {
        // SAFETY: `exec_raw` runs the closure inside one protected call, so an
        // allocation failure in any of these functions becomes an `Err` (a Lua
        // error longjmps back to that call). The closure's frame (and
        // `push_cached`'s) only holds references, integers and the header
        // iterator, none of which has a destructor, so nothing is skipped by
        // that jump; the cache's `RefCell` guard lives outside the protected
        // call. A cache slot's bytes are only replaced after its Lua string
        // is stored, so the two never disagree. Stack: the cache table
        // (argument 1), the result table, a name, a values table, a value and
        // its copy (6 slots; a C function gets LUA_MINSTACK = 20). It leaves
        // exactly the result table on the stack.
        unsafe {
            lua.exec_raw::<Table>(&*table, |state| {
                ffi::lua_createtable(state, 0, size);
                // One pass over `iter()` (a name's values come together, in
                // order) instead of a `get_all` lookup per name.
                let mut current: Option<&HeaderName> = None;
                let mut i: ffi::lua_Integer = 0;
                for (name, v) in h.iter() {
                    // Same entry, same key: compare addresses, not the strings.
                    if !current.is_some_and(|c| std::ptr::eq(c, name)) {
                        if current.is_some() {
                            ffi::lua_rawset(state, -3);
                        }
                        current = Some(name);
                        i = 0;
                        push_cached(state, 1, keys, name.as_str().as_bytes());
                        ffi::lua_createtable(state, 0, 1);
                    }
                    push_cached(state, 1, keys, v.as_bytes());
                    ffi::lua_rawseti(state, -2, i);
                    i += 1;
                }
                if current.is_some() {
                    ffi::lua_rawset(state, -3);
                }
                ffi::lua_remove(state, 1);
            })
        }
    })
}
