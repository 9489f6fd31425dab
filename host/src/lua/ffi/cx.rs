//! [`CallCx`], the per-call state the API functions read and change: it
//! lends them the running call's transaction through a raw pointer.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use mlua::{Table, Value};

use crate::filter::Reply;
use crate::lua::Plugin;
use crate::lua::runtime::{CallKind, LOAD_BUDGET};
use crate::rules::Expr;
use crate::rules::fetch::Converter;
use crate::txn::{Phase, Txn};

/// Per-call state the API functions read and change (one per instance).
pub(crate) struct CallCx {
    pub plugin: Arc<Plugin>,
    pub(in crate::lua) txn: Cell<*mut Txn>,
    pub(in crate::lua) writable: Cell<bool>,
    /// Set while an API function holds the transaction (guards against re-entry).
    pub(in crate::lua) txn_borrowed: Cell<bool>,
    pub phase: Cell<Phase>,
    pub kind: Cell<CallKind>,
    /// The reply given to `txn:done(reply)`.
    pub reply: RefCell<Option<Reply>>,
    /// `txn:get_priv/set_priv` of the running request.
    pub privv: RefCell<Value>,
    /// Fields the script set on `txn` for the running request.
    pub fields: RefCell<Option<Table>>,
    /// The running service's request and response.
    pub applet: RefCell<Option<crate::lua::applet::AppletState>>,
    /// `act:wake_time(ms)` before returning `act.YIELD`.
    pub wake_ms: Cell<Option<u64>>,
    pub(in crate::lua) deadline: Cell<Instant>,
    pub(in crate::lua) timed_out: Cell<bool>,
    pub(in crate::lua) peak: Cell<usize>,
    /// Compiled `txn.f` fetches and `txn.c` converters, by name, phase and arguments.
    pub exprs: RefCell<HashMap<String, Rc<Expr>>>,
    pub convs: RefCell<HashMap<String, Rc<dyn Converter>>>,
    pub regexes: RefCell<HashMap<String, Rc<regex::Regex>>>,
    /// A transaction for converters called outside of one (`core` tasks, inits).
    pub idle_txn: RefCell<Option<Box<Txn>>>,
    /// Short strings reused when building header tables (made on first use).
    pub strings: RefCell<Option<super::whole_headers::StrCache>>,
    /// The last header snapshot written (`cfunc::get_headers`), reused so
    /// that a snapshot is made in one pass without allocating.
    pub snapshot: RefCell<Vec<u8>>,
    /// Bumped on every write of `snapshot` (tells a writer whether a
    /// finalizer reused the buffer while Lua allocated).
    pub snapshot_gen: Cell<u64>,
    /// Header names recently set from Lua, parsed once (see `cfunc::header_name`).
    pub names: RefCell<[Option<http::HeaderName>; super::cfunc::NAME_SLOTS]>,
    /// The instance this context belongs to, once built (runtime
    /// `event_sub` calls start their delivery from it).
    pub(in crate::lua) instance: RefCell<std::rc::Weak<crate::lua::runtime::Instance>>,
    /// Event subscriptions made while the script loads, started once the
    /// instance is built.
    pub(in crate::lua) pending_subs: RefCell<Vec<crate::lua::events::Sub>>,
}

/// The error of an API function used where there is no transaction.
fn no_txn() -> mlua::Error {
    mlua::Error::runtime(
        "this function needs a transaction; it can be used in actions, fetches and services",
    )
}

impl CallCx {
    pub(in crate::lua) fn new(plugin: &Arc<Plugin>) -> CallCx {
        CallCx {
            plugin: Arc::clone(plugin),
            txn: Cell::new(std::ptr::null_mut()),
            writable: Cell::new(false),
            txn_borrowed: Cell::new(false),
            phase: Cell::new(Phase::Request),
            kind: Cell::new(CallKind::Load),
            reply: RefCell::new(None),
            privv: RefCell::new(Value::Nil),
            fields: RefCell::new(None),
            applet: RefCell::new(None),
            wake_ms: Cell::new(None),
            deadline: Cell::new(Instant::now() + LOAD_BUDGET),
            timed_out: Cell::new(false),
            peak: Cell::new(0),
            exprs: RefCell::new(HashMap::new()),
            convs: RefCell::new(HashMap::new()),
            regexes: RefCell::new(HashMap::new()),
            idle_txn: RefCell::new(None),
            strings: RefCell::new(None),
            snapshot: RefCell::new(Vec::new()),
            snapshot_gen: Cell::new(0),
            names: RefCell::new(Default::default()),
            instance: RefCell::new(std::rc::Weak::new()),
            pending_subs: RefCell::new(Vec::new()),
        }
    }

    /// Whether a transaction is attached to the running call.
    pub(crate) fn has_txn(&self) -> bool {
        !self.txn.get().is_null()
    }

    /// Runs `f` on the running call's transaction.
    pub(crate) fn with_txn<R>(&self, f: impl FnOnce(&Txn) -> mlua::Result<R>) -> mlua::Result<R> {
        let p = self.txn.get();
        if p.is_null() {
            return Err(no_txn());
        }
        if self.txn_borrowed.replace(true) {
            return Err(mlua::Error::runtime(
                "the transaction is in use (called from a finalizer?)",
            ));
        }
        // SAFETY: `p` was set by `Instance::run` from a `&mut Txn` (or a `&Txn`
        // for read-only calls) that outlives the synchronous call into Lua
        // during which this runs; it is cleared before that call returns.
        // `txn_borrowed` rules out a second reference through this path
        // (a `__gc` finalizer running inside `f`), and the worker is single-threaded.
        let r = f(unsafe { &*p });
        self.txn_borrowed.set(false);
        r
    }

    /// Runs `f` on the running call's transaction, which `f` may change.
    pub(crate) fn with_txn_mut<R>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Txn) -> mlua::Result<R>,
    ) -> mlua::Result<R> {
        let p = self.txn.get();
        if p.is_null() {
            return Err(no_txn());
        }
        if !self.writable.get() {
            return Err(mlua::Error::runtime(format!(
                "{what} cannot change the message from a fetch or a converter"
            )));
        }
        if self.txn_borrowed.replace(true) {
            return Err(mlua::Error::runtime(
                "the transaction is in use (called from a finalizer?)",
            ));
        }
        // SAFETY: as in `with_txn`; `writable` is only set when `p` came from a `&mut Txn`.
        let r = f(unsafe { &mut *p });
        self.txn_borrowed.set(false);
        r
    }

    /// Runs `f` on the transaction, or on an idle one outside of a transaction.
    pub(crate) fn with_any_txn<R>(
        &self,
        f: impl FnOnce(&Txn) -> mlua::Result<R>,
    ) -> mlua::Result<R> {
        if self.has_txn() {
            return self.with_txn(f);
        }
        let mut idle = self
            .idle_txn
            .try_borrow_mut()
            .map_err(|_| mlua::Error::runtime("the transaction is in use"))?;
        let t = idle.get_or_insert_with(|| {
            Box::new(Txn::for_test(
                "/",
                std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            ))
        });
        f(t)
    }
}
