//! `core.queue()` (HAProxy 2.8's `Queue` class): a FIFO of Lua values.
//!
//! The items live in a Lua table of the object (so they count against the
//! plugin's memory limit like any value the script keeps); this file holds
//! only what `pop_wait` needs to sleep until another coroutine of the same
//! state (a task, an action, a service) pushes: a [`Waiter`] the Lua side
//! yields with the IO marker, its wait future handed to the call's driver
//! (`runtime::Step::Io`), as a socket's operation is.
//!
//! Waits are bounded: each one ends after at most [`SLICE`] (the Lua side
//! then looks again, so a retired state's task stops), and in an action or
//! a service `pop_wait` gives up after the plugin's `timeout.client` and
//! returns nil.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use mlua::{Lua, Table, UserData, Value};
use tokio::time::{Instant, Sleep};

use super::args::{Args, func, none, one};
use crate::filter::WaitFuture;
use crate::lua::runtime::{CallCx, CallKind};

/// Longest single wait of `pop_wait` before it looks at the queue again.
const SLICE: Duration = Duration::from_secs(1);

/// Most items a queue holds; `push` past it returns false (HAProxy's answer
/// when it cannot allocate an item).
pub(crate) const MAX_ITEMS: i64 = 1 << 20;

/// Wake-ups of one queue: a generation bumped by every push, and the wakers
/// of the waits started before it.
#[derive(Default)]
struct Shared {
    generation: Cell<u64>,
    next_id: Cell<u64>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

/// The userdata at index 0 of a Lua `Queue` object.
pub(crate) struct Waiter {
    shared: Rc<Shared>,
    pending: RefCell<Option<WaitFuture>>,
}

impl UserData for Waiter {}

impl Waiter {
    /// The wait the script yielded on, for its driver to await.
    pub(crate) fn take_pending(&self) -> Option<WaitFuture> {
        self.pending.try_borrow_mut().ok()?.take()
    }
}

/// One `pop_wait` sleep: ready when a push happened since it was armed or
/// when its time is up. Its waker is removed when it is dropped (a request
/// that goes away leaves nothing behind).
struct Wait {
    shared: Rc<Shared>,
    id: u64,
    armed_at: u64,
    until: Instant,
    /// Made on the first poll, inside the worker's runtime (a timer needs one).
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Future for Wait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.generation.get() != self.armed_at {
            return Poll::Ready(());
        }
        let until = self.until;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if let Ok(mut w) = self.shared.wakers.try_borrow_mut() {
            w.insert(self.id, cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.wakers.try_borrow_mut() {
            w.remove(&self.id);
        }
    }
}

fn waiter(args: &Args<'_>) -> mlua::Result<mlua::UserDataRef<Waiter>> {
    match args.get(1) {
        Value::UserData(ud) => ud.borrow::<Waiter>().map_err(|_| args.bad(1, "Queue")),
        _ => Err(args.bad(1, "Queue")),
    }
}

/// `P.queue`: the primitives the Lua `Queue` class (prelude) is built on.
pub(super) fn table(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("max", MAX_ITEMS)?;
    t.raw_set(
        "new",
        func(lua, |lua, _| {
            let w = Waiter {
                shared: Rc::default(),
                pending: RefCell::new(None),
            };
            one(Value::UserData(lua.create_userdata(w)?))
        })?,
    )?;
    t.raw_set(
        "wake",
        func(lua, |_, a| {
            let args = Args::new(&a, "push", 0);
            let w = waiter(&args)?;
            let s = &w.shared;
            s.generation.set(s.generation.get().wrapping_add(1));
            let wakers = std::mem::take(
                &mut *s
                    .wakers
                    .try_borrow_mut()
                    .map_err(|_| mlua::Error::runtime("queue busy"))?,
            );
            for (_, wk) in wakers {
                wk.wake();
            }
            none()
        })?,
    )?;
    {
        let cx = Rc::clone(cx);
        // arm(waiter, deadline) -> armed, deadline: prepares one wait, or
        // false once an action's or a service's wait is over.
        t.raw_set(
            "arm",
            func(lua, move |_, a| {
                let args = Args::new(&a, "pop_wait", 0);
                let w = waiter(&args)?;
                let bound = match cx.kind.get() {
                    CallKind::Task => None,
                    CallKind::Action | CallKind::Service => Some(cx.plugin.client_timeout),
                    CallKind::Load | CallKind::Fetch | CallKind::Converter => {
                        return Err(mlua::Error::runtime(
                            "pop_wait() may only be used within task context (requires yielding)",
                        ));
                    }
                };
                let now = Instant::now();
                // The deadline travels as milliseconds after an origin fixed per process.
                let origin = origin();
                let deadline = match (bound, args.get(2)) {
                    (None, _) => None,
                    (Some(_), Value::Number(ms)) => {
                        Some(origin + Duration::from_secs_f64(ms.max(0.0) / 1000.0))
                    }
                    (Some(_), Value::Integer(ms)) => {
                        Some(origin + Duration::from_millis(u64::try_from(*ms).unwrap_or(0)))
                    }
                    (Some(b), _) => Some(now + b),
                };
                if deadline.is_some_and(|d| d <= now) {
                    let mut m = mlua::MultiValue::new();
                    m.push_back(Value::Boolean(false));
                    return Ok(m);
                }
                let until = deadline.map_or(now + SLICE, |d| d.min(now + SLICE));
                let s = &w.shared;
                let id = s.next_id.get();
                s.next_id.set(id.wrapping_add(1));
                let wait = Wait {
                    shared: Rc::clone(s),
                    id,
                    armed_at: s.generation.get(),
                    until,
                    sleep: None,
                };
                *w.pending
                    .try_borrow_mut()
                    .map_err(|_| mlua::Error::runtime("queue busy"))? = Some(Box::pin(wait));
                let mut m = mlua::MultiValue::new();
                m.push_back(Value::Boolean(true));
                m.push_back(match deadline {
                    Some(d) => Value::Number(d.duration_since(origin).as_secs_f64() * 1000.0),
                    None => Value::Nil,
                });
                Ok(m)
            })?,
        )?;
    }
    Ok(t)
}

/// The instant deadlines are counted from (the first `pop_wait` of the process).
fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    Instant::from_std(*ORIGIN.get_or_init(std::time::Instant::now))
}
