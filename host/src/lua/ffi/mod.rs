//! The raw Lua C API layer: every `unsafe` of the Lua plugins lives here.
//!
//! Why unsafe: a function made with mlua's `create_function` pays for its
//! argument and result conversion (`MultiValue`), a `catch_unwind` and the
//! prelude's error wrapper, about 150 ns per call; under a memory limit mlua
//! also protects each table and string operation with its own `pcall`. The
//! hottest paths skip that layer (`benches/lua.rs`), and API functions reach
//! the running call's transaction through a raw pointer:
//! - `cx`: [`CallCx`], the per-call state, which holds the transaction's
//!   address while `Instance::run` is inside its synchronous call into Lua
//!   (set from a `&mut Txn`, or a `&Txn` for read-only calls, and cleared
//!   before that call returns);
//! - `cfunc`: the hottest `txn.http` functions as raw C functions
//!   (`req_/res_get_headers`, `req_/res_set_header`/`add_header`);
//! - `lazy_headers`: the C metamethods of lazy header tables, over a
//!   userdata snapshot (its format, safe code, is in `lua/headers.rs`);
//! - `whole_headers`: whole header tables built in one protected call.
//!
//! The invariants this code keeps:
//! - A C function's transaction comes from its `CallCx`, whose address is
//!   the closure's upvalue 1. It is used only while that very `CallCx` is
//!   the one `Instance::run` marked running on this thread
//!   (`cfunc::Running`), which holds it alive; anywhere else (a task, a
//!   finalizer at state close, another plugin's call) the function raises
//!   "needs a transaction". A stale address cannot match by reuse: the
//!   running `CallCx` was alive before this state's own one was freed (at
//!   its close), so they differ, and no code of a closed state runs
//!   afterwards.
//! - The transaction is lent to one API function at a time: `txn_borrowed`
//!   rules out a second reference (a `__gc` finalizer running inside one),
//!   and the worker is single-threaded.
//! - A Lua error (`longjmp`) may only happen while the function's frames
//!   hold nothing with a destructor: Rust work is done in an inner function
//!   returning `Result<_, String>`, and a message is copied to the stack
//!   before it is raised.
//! - Snapshots are parsed with bounds checks and a magic number, so even a
//!   forged argument cannot make a metamethod read outside one.
//!
//! Each `unsafe` block states its own reason in a `SAFETY` comment.

pub(super) mod cfunc;
mod cx;
mod lazy_headers;
mod whole_headers;

pub(crate) use cx::CallCx;
pub(crate) use whole_headers::headers_table;
