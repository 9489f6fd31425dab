//! The hottest `txn.http` functions as raw Lua C functions:
//! `req_/res_get_headers` and `req_/res_set_header`/`add_header`.
//!
//! A function made with mlua's `create_function` pays for its argument and
//! result conversion (`MultiValue`), a `catch_unwind` and the prelude's
//! error wrapper: about 150 ns per call, the largest part of a header get +
//! set action (`benches/lua.rs`). These do the same checks and return the
//! same errors without that layer.
//!
//! Safety rules, for every function here:
//! - The function's transaction comes from its `CallCx`, whose address is
//!   the closure's upvalue 1. It is used only while that very `CallCx` is
//!   the one `Instance::run` marked running on this thread ([`Running`]),
//!   which holds it alive; anywhere else (a task, a finalizer at state
//!   close, another plugin's call) the function raises "needs a transaction".
//!   A stale address cannot match by reuse: the running `CallCx` was alive
//!   before this state's own one was freed (at its close), so they differ,
//!   and no code of a closed state runs afterwards.
//! - A Lua error (`longjmp`) may only happen while the function's frames
//!   hold nothing with a destructor: Rust work is done in an inner function
//!   returning `Result<_, String>`, and a message is copied to the stack
//!   before it is raised ([`raise`]).

use std::cell::Cell;
use std::os::raw::c_int;

use http::{HeaderName, HeaderValue};
use mlua::ffi::{self, lua_State};
use mlua::{Function, Lua, Table};

use super::cx::CallCx;
use super::lazy_headers;
use crate::lua::api::{Msg, framing_refusal};
use crate::lua::headers::write_snapshot;
use crate::lua::runtime::describe;

thread_local! {
    /// The `CallCx` of the Lua call running on this thread, or null.
    static RUNNING: Cell<*const CallCx> = const { Cell::new(std::ptr::null()) };
}

/// Marks a `CallCx` running on this thread until dropped (restoring the
/// outer one: a Lua fetch of another plugin may run inside an action).
pub(crate) struct Running(*const CallCx);

impl Running {
    pub(crate) fn enter(cx: &CallCx) -> Running {
        Running(RUNNING.replace(std::ptr::from_ref(cx)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.set(self.0);
    }
}

/// The function's `CallCx` if it is the running one.
///
/// # Safety
/// Called from a C closure made by [`closure`] (upvalue 1 is the address).
unsafe fn running_cx<'a>(state: *mut lua_State) -> Result<&'a CallCx, String> {
    // SAFETY: reading an upvalue; the address is only dereferenced when it
    // equals the running `CallCx`, which `Instance::run` keeps alive.
    unsafe {
        let me = ffi::lua_touserdata(state, ffi::lua_upvalueindex(1))
            .cast::<CallCx>()
            .cast_const();
        if me.is_null() || RUNNING.with(Cell::get) != me {
            return Err(
                "this function needs a transaction; it can be used in actions, fetches and services"
                    .to_string(),
            );
        }
        Ok(&*me)
    }
}

/// Raises `msg` at the script's call, as `luaL_error` does.
///
/// # Safety
/// Inside a Lua C function. `msg` is copied to this frame's stack buffer and
/// dropped before anything may raise.
unsafe fn raise(state: *mut lua_State, msg: String) -> ! {
    let mut buf = [0u8; 320];
    let n = msg.len().min(buf.len());
    buf[..n].copy_from_slice(&msg.as_bytes()[..n]);
    drop(msg);
    // SAFETY: no value with a destructor is alive in this frame now.
    unsafe {
        ffi::luaL_where(state, 1);
        ffi::lua_pushlstring(state, buf.as_ptr().cast(), n);
        ffi::lua_concat(state, 2);
        ffi::lua_error(state)
    }
}

/// Converts number arguments `from..=to` to strings in place (as
/// `luaL_checkstring` does), before any Rust value exists.
///
/// # Safety
/// Inside a Lua C function; may raise a memory error.
unsafe fn numbers_to_strings(state: *mut lua_State, from: c_int, to: c_int) {
    // SAFETY: `lua_tolstring` on a number replaces it with its string.
    unsafe {
        for i in from..=to {
            if ffi::lua_type(state, i) == ffi::LUA_TNUMBER {
                ffi::lua_tolstring(state, i, std::ptr::null_mut());
            }
        }
    }
}

/// Argument `i`'s bytes (a string), or the HAProxy-style "bad argument" message.
///
/// # Safety
/// Inside a Lua C function; the slice lives while the argument is on the stack.
unsafe fn string_arg<'a>(state: *mut lua_State, i: c_int, f: &str) -> Result<&'a [u8], String> {
    // SAFETY: reads the stack only; a string's bytes stay put while it is on it.
    unsafe {
        if ffi::lua_type(state, i) == ffi::LUA_TSTRING {
            let mut len = 0usize;
            let p = ffi::lua_tolstring(state, i, &mut len);
            if !p.is_null() {
                return Ok(std::slice::from_raw_parts(p.cast::<u8>(), len));
            }
        }
        let t = std::ffi::CStr::from_ptr(ffi::lua_typename(state, ffi::lua_type(state, i)));
        Err(format!(
            "bad argument #{} to '{f}' (string expected, got {})",
            i - 1,
            t.to_string_lossy()
        ))
    }
}

/// `txn.http:req_set_header(name, value)` and its three siblings.
fn set_header(state: *mut lua_State, m: Msg, append: bool) -> Result<c_int, String> {
    let f = match (m, append) {
        (Msg::Req, false) => "req_set_header",
        (Msg::Req, true) => "req_add_header",
        (Msg::Res, false) => "res_set_header",
        (Msg::Res, true) => "res_add_header",
    };
    // SAFETY: called from the C functions below, inside a Lua call, with
    // the arguments (self, name, value) converted by `numbers_to_strings`.
    let (cx, name, value) = unsafe {
        (
            running_cx(state)?,
            string_arg(state, 2, f)?,
            string_arg(state, 3, f)?,
        )
    };
    let name = header_name(cx, name)
        .ok_or_else(|| format!("bad argument #1 to '{f}' (invalid header name)"))?;
    if let Some(msg) = framing_refusal(&name) {
        return Err(format!("bad argument #1 to '{f}' ({msg})"));
    }
    let value = HeaderValue::from_bytes(value).map_err(|_| {
        format!(
            "bad argument #2 to '{f}' (invalid header value: control characters are not allowed)"
        )
    })?;
    cx.with_txn_mut(f, |t| {
        let h = m.headers_mut(t);
        if append {
            h.append(name, value);
        } else {
            h.insert(name, value);
        }
        Ok(())
    })
    .map_err(|e| describe(&e))?;
    Ok(0)
}

/// Slots of `CallCx::names`.
pub(crate) const NAME_SLOTS: usize = 8;

/// `name` parsed as a header name, from the state's small cache when the
/// same name was set recently: a script sets the same few names on every
/// request, and parsing one that is not a standard name allocates.
fn header_name(cx: &CallCx, name: &[u8]) -> Option<HeaderName> {
    let slot = name.iter().fold(name.len(), |h, &b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    }) % NAME_SLOTS;
    let mut names = cx.names.try_borrow_mut().ok();
    if let Some(cached) = names.as_ref().and_then(|n| n[slot].as_ref())
        && cached.as_str().as_bytes() == name
    {
        return Some(cached.clone());
    }
    let parsed = HeaderName::from_bytes(name).ok()?;
    if let Some(n) = names.as_mut() {
        n[slot] = Some(parsed.clone());
    }
    Some(parsed)
}

/// `txn.http:req_get_headers()` / `res_get_headers()`: a lazy header table
/// (see `headers.rs`, `lazy_headers.rs`); upvalue 2 is the shared metatable.
///
/// # Safety
/// Inside the C functions below.
unsafe fn get_headers(state: *mut lua_State, m: Msg) -> c_int {
    // Writes the snapshot into `cx.snapshot`; returns its address and size,
    // the number of names and the buffer's generation.
    let fill = |cx: &CallCx| -> Result<(*const u8, usize, usize, u64), String> {
        cx.with_txn(|t| {
            let h = m.headers(t);
            let mut buf = cx
                .snapshot
                .try_borrow_mut()
                .map_err(|_| mlua::Error::runtime("the header snapshot is in use"))?;
            write_snapshot(h, &mut buf);
            let generation = cx.snapshot_gen.get().wrapping_add(1);
            cx.snapshot_gen.set(generation);
            Ok((buf.as_ptr(), buf.len(), h.keys_len(), generation))
        })
        .map_err(|e| describe(&e))
    };
    // SAFETY: as in `set_header`.
    let filled = unsafe { running_cx(state) }.and_then(|cx| Ok((cx, fill(cx)?)));
    let (cx, (src, size, names, generation)) = match filled {
        Ok(v) => v,
        // SAFETY: nothing with a destructor is alive here but `msg`, which
        // `raise` drops first.
        Err(msg) => unsafe { raise(state, msg) },
    };
    // The buffer is not borrowed while Lua allocates: a finalizer may run
    // and call the API, even this function, which then rewrites the buffer.
    // SAFETY: `push_lazy` may raise a memory error; this frame then holds
    // only references, pointers and integers. The returned bytes are
    // anchored by the table on the stack.
    let out = unsafe { lazy_headers::push_lazy(state, ffi::lua_upvalueindex(2), size, names) };
    if cx.snapshot_gen.get() == generation {
        // SAFETY: the buffer was not written since `fill` (same generation),
        // so `src` still points to its `size` bytes; `out` has `size` bytes
        // and is a fresh userdata, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, out, size) };
    } else {
        // A finalizer reused the buffer: write it again, keeping the size
        // the userdata was made with (the headers may have changed since).
        let again = fill(cx).ok().map(|(p, n, _, _)| (p, n.min(size)));
        let (src, n) = again.unwrap_or((std::ptr::null(), 0));
        // SAFETY: `src` (when not null) points to the buffer's `n` bytes,
        // with `n <= size`; the rest of `out` is zeroed, so all `size` bytes
        // are written (a shorter snapshot reads as truncated, which the
        // parser bounds-checks).
        unsafe {
            if !src.is_null() {
                std::ptr::copy_nonoverlapping(src, out, n);
            }
            std::ptr::write_bytes(out.add(n), 0, size - n);
        }
    }
    shrink_snapshot(cx);
    1
}

/// Gives back a header buffer grown by an unusually large header set.
fn shrink_snapshot(cx: &CallCx) {
    const KEEP: usize = 64 * 1024;
    if let Ok(mut buf) = cx.snapshot.try_borrow_mut()
        && buf.capacity() > KEEP
    {
        buf.clear();
        buf.shrink_to(KEEP / 4);
    }
}

macro_rules! c_functions {
    ($($name:ident => $body:expr;)*) => {
        $(
            unsafe extern "C-unwind" fn $name(state: *mut lua_State) -> c_int {
                // SAFETY: see the module docs; `$body` returns with no Rust
                // value alive but a message, which `raise` drops first.
                unsafe {
                    #[allow(clippy::redundant_closure_call)]
                    match ($body)(state) {
                        Ok(n) => n,
                        Err(msg) => raise(state, msg),
                    }
                }
            }
        )*
    };
}

c_functions! {
    req_set_header => |s| { numbers_to_strings(s, 2, 3); set_header(s, Msg::Req, false) };
    req_add_header => |s| { numbers_to_strings(s, 2, 3); set_header(s, Msg::Req, true) };
    res_set_header => |s| { numbers_to_strings(s, 2, 3); set_header(s, Msg::Res, false) };
    res_add_header => |s| { numbers_to_strings(s, 2, 3); set_header(s, Msg::Res, true) };
    req_get_headers => |s| Ok::<c_int, String>(get_headers(s, Msg::Req));
    res_get_headers => |s| Ok::<c_int, String>(get_headers(s, Msg::Res));
}

/// A C closure over `f` with upvalues `cx` (address) and, if given, `extra`.
fn closure(
    lua: &Lua,
    cx: &CallCx,
    f: ffi::lua_CFunction,
    extra: Option<&Table>,
) -> mlua::Result<Function> {
    let cx = std::ptr::from_ref(cx).cast_mut().cast::<std::ffi::c_void>();
    // SAFETY: one protected call pushing a light userdata, the optional
    // table (argument 1) and the closure; it leaves only the closure.
    unsafe {
        lua.exec_raw::<Function>(extra, |state| {
            let n = ffi::lua_gettop(state);
            ffi::lua_pushlightuserdata(state, cx);
            if n == 1 {
                ffi::lua_pushvalue(state, 1);
            }
            ffi::lua_pushcclosure(state, f, 1 + n);
            if n == 1 {
                ffi::lua_replace(state, 1);
            }
        })
    }
}

/// Sets the C versions of the functions into `http` (the `txn.http` table).
pub(crate) fn install(lua: &Lua, cx: &CallCx, http: &Table) -> mlua::Result<()> {
    let lazy = lazy_headers::LazyHeaders::new(lua)?;
    let meta = Some(lazy.meta());
    for (name, f, extra) in [
        ("req_set_header", req_set_header as ffi::lua_CFunction, None),
        ("req_add_header", req_add_header, None),
        ("res_set_header", res_set_header, None),
        ("res_add_header", res_add_header, None),
        ("req_get_headers", req_get_headers, meta),
        ("res_get_headers", res_get_headers, meta),
    ] {
        http.raw_set(name, closure(lua, cx, f, extra)?)?;
    }
    Ok(())
}
