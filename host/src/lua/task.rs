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
    /// Set on worker threads (inside their `LocalSet`), where tasks can be spawned.
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
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

/// Starts this worker's plugin tasks: builds the instances of the plugins that
/// registered tasks (which spawns them) and lets later rebuilds spawn theirs.
///
/// Must run inside the worker's `LocalSet`.
pub fn start_worker(plugins: &[Arc<Plugin>]) {
    IN_WORKER.with(|w| w.set(true));
    for p in plugins.iter().filter(|p| p.registered.tasks > 0) {
        if let Err(e) = runtime::instance(p) {
            runtime::record_failure(p, None, &e, "start of tasks");
        }
    }
}

/// Spawns the tasks of a freshly built instance (only on worker threads).
pub(crate) fn spawn_tasks(inst: &Rc<Instance>) {
    if inst.funcs.tasks.is_empty() || !IN_WORKER.try_with(Cell::get).unwrap_or(false) {
        return;
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

async fn run(inst: Rc<Instance>, f: mlua::Function, mut args: MultiValue, n: usize) {
    let plugin = Arc::clone(&inst.plugin);
    let what = format!("task #{n}");
    plugin.stats.calls.fetch_add(1, Relaxed);
    let mut thread = match inst.setup(|| inst.lua.create_thread(f.clone())) {
        Ok(t) => t,
        Err(e) => return runtime::record_failure(&plugin, Some(&inst), &e, &what),
    };
    loop {
        if inst.is_retired() {
            return;
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
            (Step::Finished(_), _) => return,
            (Step::Sleep(d), Some(t)) => {
                thread = t;
                if d.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(d.min(Duration::from_secs(86_400))).await;
                }
            }
            (Step::Sleep(_), None) => return,
            (Step::Io(op), Some(t)) => {
                thread = t;
                op.await;
            }
            (Step::Io(_), None) => return,
            (Step::Done, _) => {
                mark_failed(plugin.id, n);
                let e = CallError::runtime("txn:done() cannot be used in a task");
                return runtime::record_failure(&plugin, Some(&inst), &e, &what);
            }
            (Step::Failed(e), _) => {
                mark_failed(plugin.id, n);
                return runtime::record_failure(&plugin, Some(&inst), &e, &what);
            }
        }
    }
}
