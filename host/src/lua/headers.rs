//! Header tables for Lua: HAProxy's `{ name = { [0] = v1, [1] = v2 } }`.
//!
//! `txn.http:req_get_headers()` / `res_get_headers()` return a *lazy* table:
//! the headers are copied into one plain userdata (a snapshot taken at the
//! call, counted against the plugin's memory limit, no finalizer), and the
//! table's C metamethods move a name into the table on its first read, or
//! every remaining name on `pairs()`. Most scripts read one or two of a
//! dozen headers, so this saves building a dozen tables per call, which was
//! most of the cost of a "get + set header" action. What a script can see
//! is HAProxy's table, except `next()`/`rawget()` before a `pairs()` and
//! `getmetatable()` returning `false` (docs/LUA.md).
//!
//! The metamethods are raw C functions: an allocation failure raises a Lua
//! error through them (a `longjmp`), so their frames hold nothing with a
//! destructor. The snapshot is parsed with bounds checks and a magic number,
//! so even a forged argument cannot make them read outside it.

use std::os::raw::c_int;

use http::{HeaderMap, HeaderName};
use mlua::ffi::{self, lua_State};
use mlua::{Lua, Table};

use super::runtime::CallCx;

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

// ---------------------------------------------------------------------------
// Lazy tables
// ---------------------------------------------------------------------------

/// First 4 bytes of a snapshot: marks the userdata as one of ours.
const MAGIC: u32 = 0x5043_4853;

/// Little-endian `u32` of a length (header fields are far below 4 GiB).
fn le32(n: usize) -> [u8; 4] {
    u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes()
}

/// Writes the snapshot of `h` into `out` (cleared first).
///
/// The layout, after `MAGIC`, one group per header name: `taken: u8`,
/// `len: u32` (bytes of the rest of the group), `name_len: u32`,
/// `values: u32`, the name, then each value as `len: u32` + bytes. `taken`
/// is set once the name is in the table (read, assigned or iterated).
///
/// One pass over `iter()` (a name's values come together, in order; the
/// same entry yields the same `&HeaderName`): a `get_all` per name would
/// hash every name again, and sizing first would walk the map twice. A
/// group's length and count are patched in at its end.
pub(crate) fn write_snapshot(h: &HeaderMap, out: &mut Vec<u8>) {
    fn end_group(out: &mut [u8], start: usize, count: usize) {
        let (len, count) = (le32(out.len() - (start + 5)), le32(count));
        for (at, v) in [(start + 1, len), (start + 9, count)] {
            if let Some(dst) = out.get_mut(at..).and_then(|d| d.first_chunk_mut::<4>()) {
                *dst = v;
            }
        }
    }
    out.clear();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    let mut current: Option<&HeaderName> = None;
    let (mut start, mut count) = (0, 0);
    for (name, v) in h.iter() {
        if !current.is_some_and(|c| std::ptr::eq(c, name)) {
            if current.is_some() {
                end_group(out, start, count);
            }
            current = Some(name);
            (start, count) = (out.len(), 0);
            let n = name.as_str().as_bytes();
            let l = le32(n.len());
            // taken, len and count (patched at the end), name length.
            out.extend_from_slice(&[0, 0, 0, 0, 0, l[0], l[1], l[2], l[3], 0, 0, 0, 0]);
            out.extend_from_slice(n);
        }
        out.extend_from_slice(&le32(v.len()));
        out.extend_from_slice(v.as_bytes());
        count += 1;
    }
    if current.is_some() {
        end_group(out, start, count);
    }
}

fn read32(b: &[u8], at: usize) -> Option<usize> {
    let s = b.get(at..at.checked_add(4)?)?;
    usize::try_from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok()
}

/// One name of a snapshot.
struct Group {
    /// Offset of the `taken` byte.
    taken_at: usize,
    taken: bool,
    name: std::ops::Range<usize>,
    /// Offset of the first value and the number of values.
    values_at: usize,
    count: usize,
    /// Offset of the next group.
    next: usize,
}

/// Offset of the first group of snapshot `b` (its end if `b` is not a snapshot).
fn first_group(b: &[u8]) -> usize {
    if read32(b, 0) == Some(MAGIC as usize) {
        4
    } else {
        b.len()
    }
}

/// The group at offset `at` of snapshot `b`.
fn group_at(b: &[u8], at: usize) -> Option<Group> {
    let taken = *b.get(at)?;
    let len = read32(b, at + 1)?;
    let name_len = read32(b, at + 5)?;
    let count = read32(b, at + 9)?;
    let name = at + 13..(at + 13).checked_add(name_len)?;
    b.get(name.clone())?;
    Some(Group {
        taken_at: at,
        taken: taken != 0,
        values_at: name.end,
        name,
        count,
        next: (at + 5).checked_add(len)?,
    })
}

/// The group of header `key` in snapshot `b`.
fn find(b: &[u8], key: &[u8]) -> Option<Group> {
    let mut at = first_group(b);
    while let Some(g) = group_at(b, at) {
        if b.get(g.name.clone()) == Some(key) {
            return Some(g);
        }
        at = g.next;
    }
    None
}

/// The values of a group, as byte ranges of the snapshot.
fn values<'a>(b: &'a [u8], g: &Group) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut at = g.values_at;
    (0..g.count).map_while(move |_| {
        let len = read32(b, at)?;
        let r = at + 4..(at + 4).checked_add(len)?;
        b.get(r.clone())?;
        at = r.end;
        Some(r)
    })
}

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

/// Marks group `g` of `snap` taken.
fn mark_taken(snap: &mut [u8], g: &Group) {
    if let Some(b) = snap.get_mut(g.taken_at) {
        *b = 1;
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
/// must write all `size` bytes (see [`write_snapshot`]) before Lua code may
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(h: &HeaderMap) -> Vec<u8> {
        let mut b = Vec::new();
        write_snapshot(h, &mut b);
        b
    }

    #[test]
    fn snapshot_round_trips_names_and_values_in_order() {
        let mut h = HeaderMap::new();
        for (k, v) in [("host", "a"), ("x-m", "1"), ("accept", ""), ("x-m", "2")] {
            h.append(k, v.parse().expect("hv"));
        }
        let b = snapshot(&h);
        let g = find(&b, b"x-m").expect("x-m");
        let vals: Vec<&[u8]> = values(&b, &g).map(|r| &b[r]).collect();
        assert_eq!(vals, [b"1".as_slice(), b"2"]);
        let g = find(&b, b"accept").expect("accept");
        assert_eq!(values(&b, &g).map(|r| r.len()).collect::<Vec<_>>(), [0]);
        assert!(find(&b, b"Host").is_none() && find(&b, b"hos").is_none());
        let mut b = b;
        let g = find(&b, b"host").expect("host");
        mark_taken(&mut b, &g);
        assert!(find(&b, b"host").is_some_and(|g| g.taken));
        assert!(find(&b, b"x-m").is_some_and(|g| !g.taken));
    }

    #[test]
    fn forged_or_truncated_snapshots_are_read_safely() {
        let mut h = HeaderMap::new();
        h.append("x-a", "value".parse().expect("hv"));
        h.append("x-b", "other".parse().expect("hv"));
        let good = snapshot(&h);
        // Every truncation and every single-byte corruption: no panic, and
        // whatever is found lies inside the buffer.
        for cut in 0..good.len() {
            let b = &good[..cut];
            for key in [&b"x-a"[..], b"x-b"] {
                if let Some(g) = find(b, key) {
                    for r in values(b, &g) {
                        assert!(r.end <= b.len());
                    }
                }
            }
        }
        for i in 0..good.len() {
            for byte in [0u8, 1, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = byte;
                if let Some(g) = find(&b, b"x-b") {
                    assert!(values(&b, &g).all(|r| r.end <= b.len()));
                    mark_taken(&mut b, &g);
                }
            }
        }
        assert!(find(b"not a snapshot", b"x-a").is_none());
    }
}
