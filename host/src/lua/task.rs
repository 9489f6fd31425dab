//! `core.register_task`: background functions a script starts at load.
//!
//! As with HAProxy's `lua-load-per-thread`, every worker runs the tasks of
//! its own instance. Each task is a local tokio task driving one coroutine:
//! `core.msleep`/`core.yield` suspend it on a timer, each slice between two
//! sleeps gets the plugin's `cpu_limit`, and a failure (error, OOM, CPU
//! limit) ends that task, counted and logged like any other plugin failure.
//! A task stops when its instance is retired (dropped for a rebuild); the
//! rebuilt instance starts its own tasks — except the ones that failed:
//! HAProxy kills a failing task, and restarting one that loops past its CPU
//! limit on every rebuild would let each request pay for it.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use mlua::{MultiValue, Value};

use super::Plugin;
use super::runtime::{self, CallError, CallKind, Instance, Site, Step};

thread_local! {
    /// The worker's index, set on worker threads (inside their `LocalSet`),
    /// where tasks can be spawned.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
    /// Tasks that failed on this worker, as (plugin id, task number): not restarted.
    static FAILED: std::cell::RefCell<Vec<(u64, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn failed(plugin: u64, n: usize) -> bool {
    FAILED
        .try_with(|f| f.borrow().contains(&(plugin, n)))
        .unwrap_or(true)
}

fn mark_failed(plugin: u64, n: usize) {
    let _ = FAILED.try_with(|f| f.borrow_mut().push((plugin, n)));
}

/// The running worker's index; `None` off worker threads (config checks).
pub(crate) fn worker_index() -> Option<usize> {
    WORKER.try_with(Cell::get).ok().flatten()
}

/// Starts this worker's plugin tasks: builds the instances of the plugins that
/// registered tasks, init functions or event subscriptions (which spawns
/// them; an init function may subscribe) and lets later rebuilds spawn theirs.
///
/// Must run inside the worker's `LocalSet`.
pub fn start_worker(plugins: &[Arc<Plugin>], worker: usize) {
    WORKER.with(|w| w.set(Some(worker)));
    let runs_alone = |p: &&Arc<Plugin>| {
        let r = &p.registered;
        r.tasks > 0 || r.inits > 0 || r.event_subs > 0
    };
    for p in plugins.iter().filter(runs_alone) {
        if let Err(e) = runtime::instance(p) {
            runtime::record_failure(p, None, &e, "start of tasks");
        }
    }
}

/// Spawns the tasks and load-time event subscriptions of a freshly built
/// instance (only on worker threads; subscriptions on worker 0 only, as
/// HAProxy's `lua-load` subscribes once per process).
pub(crate) fn spawn_tasks(inst: &Rc<Instance>) {
    let Some(worker) = worker_index() else {
        return;
    };
    let subs = std::mem::take(&mut *inst.cx.pending_subs.borrow_mut());
    if worker == 0 {
        for s in subs {
            super::events::spawn(inst, s);
        }
    }
    for (i, (f, args)) in inst.funcs.tasks.iter().enumerate() {
        if failed(inst.plugin.id, i + 1) {
            continue;
        }
        let inst = Rc::clone(inst);
        let f = f.clone();
        let args: MultiValue = args.iter().cloned().collect();
        tokio::task::spawn_local(async move { run(inst, f, args, i + 1).await });
    }
}

async fn run(inst: Rc<Instance>, f: mlua::Function, args: MultiValue, n: usize) {
    let plugin = Arc::clone(&inst.plugin);
    plugin.stats.calls.fetch_add(1, Relaxed);
    if let Err(e) = drive(&inst, f, args, &format!("task #{n}")).await {
        mark_failed(plugin.id, n);
        runtime::record_failure(&plugin, Some(&inst), &e, &format!("task #{n}"));
    }
}

/// Runs `f(args)` as a coroutine of `inst` to its end, sleeping and waiting
/// on I/O where it yields; each slice between two waits gets the plugin's
/// `cpu_limit`. `Ok` also when the instance was retired meanwhile.
pub(crate) async fn drive(
    inst: &Rc<Instance>,
    f: mlua::Function,
    mut args: MultiValue,
    what: &str,
) -> Result<(), CallError> {
    let plugin = &inst.plugin;
    let mut thread = inst.setup(|| inst.lua.create_thread(f.clone()))?;
    loop {
        if inst.is_retired() {
            return Ok(());
        }
        let mut privv = Value::Nil;
        let mut fields = None;
        let ((_, step), keep) = inst.run(
            thread,
            std::mem::take(&mut args),
            &Site::none(CallKind::Task),
            &mut privv,
            &mut fields,
            plugin.cpu_limit,
        );
        match (step, keep) {
            (Step::Finished(_), _) | (Step::Sleep(_) | Step::Io(_), None) => return Ok(()),
            (Step::Sleep(d), Some(t)) => {
                thread = t;
                if d.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(d.min(Duration::from_secs(86_400))).await;
                }
            }
            (Step::Io(op), Some(t)) => {
                thread = t;
                op.await;
            }
            (Step::Done, _) => {
                return Err(CallError::runtime(format!(
                    "txn:done() cannot be used in a {what}"
                )));
            }
            (Step::Failed(e), _) => return Err(e),
        }
    }
}
