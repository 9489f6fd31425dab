//! Reload: `SIGHUP` and `POST /reload` read the config file and every
//! plugin file again, check them as `portcullis check` does, assemble a new
//! [`Runtime`] next to the running one and switch the workers to it.
//!
//! [`Daemon`] holds the generation in force ([`Shared`]) for the control
//! thread (admin API, health checks, signals). Workers learn of a new
//! generation through a `watch` channel ([`Switch`]) and keep their own
//! [`Epoch`](super::worker::Epoch): requests read it without a lock or an
//! atomic, a request keeps the generation it started on to its end, and a
//! replaced generation goes (plugin instances stopped, memory returned) when
//! its last request ends.
//!
//! What carries over: listening sockets of addresses in both configs (never
//! closed, so no connection is refused), stick tables declared as before
//! (with their entries), the live state of servers declared as before
//! (health, admin state, weight) and idle upstream connections to them,
//! frontend counters, process-wide plugin state (Wasm shared data and
//! queues, `proc.*` variables). Settings only a restart changes are reported.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use super::stats::Shared;
use super::worker::WorkerListeners;
use crate::config::{BindCheck, ConfigError};
use crate::runtime::Runtime;
use crate::stick::StickTable;

/// How long a reload waits for every worker to take the new generation.
const SWITCH_WAIT: Duration = Duration::from_secs(5);

/// Reload counters and times, process-wide (in `/stats` and `/metrics`).
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Unix time in seconds of the last successful reload; 0: none yet.
    pub last_success: AtomicU64,
    /// Unix time in seconds of the last failed reload; 0: none yet.
    pub last_failure: AtomicU64,
    /// Why the last failed reload failed.
    pub last_error: Mutex<Option<String>>,
}

impl ReloadStats {
    /// The last failure's message, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config or a plugin failed the check, or an address could not be bound.
    #[error("{0}")]
    Failed(String),
    /// `POST /plugins/<name>/reload` for a plugin the config does not declare.
    #[error("no plugin {0:?}")]
    NoPlugin(String),
}

/// Where a reload reads its config from.
enum Source {
    /// The config file, again (`SIGHUP`, `POST /reload`).
    File,
    /// The config text in force and the plugin files as the runtime in
    /// force read them, but for this plugin's, read again
    /// (`POST /plugins/<name>/reload`: only that plugin's code changes).
    Plugin(String),
}

/// A new generation on its way to the workers.
#[derive(Debug)]
pub struct Switch {
    pub shared: Arc<Shared>,
    /// Per worker, sockets for the addresses this generation adds.
    listeners: Mutex<Vec<WorkerListeners>>,
    applied: AtomicUsize,
    done: Notify,
}

impl Switch {
    /// Worker `id`'s new sockets (once).
    pub fn take_listeners(&self, id: usize) -> WorkerListeners {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(id)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// A worker serves new requests on this generation.
    pub fn applied(&self) {
        self.applied.fetch_add(1, SeqCst);
        self.done.notify_waiters();
    }
}

/// What a successful reload did, as `POST /reload` reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub generation: u64,
    pub duration_ms: u64,
    /// Settings whose new value waits for a restart (the old one stays in force).
    pub restart_required: Vec<String>,
    /// The config's warnings and what did not carry over (e.g. a stick table that starts empty).
    pub warnings: Vec<String>,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub servers_kept: usize,
}

/// The running daemon as the control thread sees it.
pub struct Daemon {
    config_path: PathBuf,
    workers: usize,
    current: RwLock<Arc<Shared>>,
    switches: watch::Sender<Option<Arc<Switch>>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Control-thread tasks of the generation in force.
    tasks: Mutex<Tasks>,
    /// Copies of the listening sockets, for a binary upgrade.
    inventory: Arc<super::upgrade::Inventory>,
}

#[derive(Default)]
struct Tasks {
    health: Vec<AbortHandle>,
    expiry: Vec<(Arc<StickTable>, AbortHandle)>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("config_path", &self.config_path)
            .field("generation", &self.current().id)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// The daemon serving `shared` (generation 0) with `workers` workers.
    pub fn new(
        config_path: PathBuf,
        shared: Arc<Shared>,
        workers: usize,
        inventory: Arc<super::upgrade::Inventory>,
    ) -> (Arc<Daemon>, watch::Receiver<Option<Arc<Switch>>>) {
        let (tx, rx) = watch::channel(None);
        let daemon = Arc::new(Daemon {
            config_path,
            workers,
            current: RwLock::new(shared),
            switches: tx,
            reloading: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Tasks::default()),
            inventory,
        });
        (daemon, rx)
    }

    /// The generation in force.
    pub fn current(&self) -> Arc<Shared> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Starts the control-thread tasks (health checks, stick-table expiry)
    /// of the generation in force; must run inside the control runtime.
    pub fn start_tasks(&self) {
        let shared = self.current();
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for h in tasks.health.drain(..) {
            h.abort();
        }
        tasks.health = super::health::spawn_all(&shared);
        // A kept table keeps its expiry task; a dropped one's stops.
        let tables = &shared.config.tables;
        if let Some(p) = crate::peers::running() {
            p.set_tables(tables);
        }
        tasks.expiry.retain(|(t, h)| {
            let kept = tables.contains(t);
            if !kept {
                h.abort();
            }
            kept
        });
        for t in tables.iter().filter(|t| t.expire().is_some()) {
            if !tasks.expiry.iter().any(|(r, _)| Arc::ptr_eq(r, t)) {
                let h = tokio::spawn(crate::stick::expiry_task(Arc::clone(t))).abort_handle();
                tasks.expiry.push((Arc::clone(t), h));
            }
        }
    }

    /// Reloads the config file: on success every worker serves new requests
    /// on the new generation when this returns; on failure nothing changed
    /// and the error (`FILE:LINE:COL: message`) says why.
    pub async fn reload(self: &Arc<Self>, cause: &str) -> Result<Outcome, ReloadError> {
        self.reload_from(cause, Source::File).await
    }

    /// `POST /plugins/<name>/reload`: assembles the config in force again
    /// with `name`'s files read again; the config file (even if changed on
    /// disk) and every other plugin's files are not.
    pub async fn reload_plugin(self: &Arc<Self>, name: &str) -> Result<Outcome, ReloadError> {
        let known = self
            .current()
            .config
            .plugins
            .iter()
            .any(|h| h.admin_documents().iter().any(|(n, _)| n == name));
        if !known {
            return Err(ReloadError::NoPlugin(name.to_string()));
        }
        let cause = format!("POST /plugins/{name}/reload");
        self.reload_from(&cause, Source::Plugin(name.to_string()))
            .await
    }

    async fn reload_from(
        self: &Arc<Self>,
        cause: &str,
        source: Source,
    ) -> Result<Outcome, ReloadError> {
        let _one = self.reloading.lock().await;
        let started = Instant::now();
        let result = self
            .reload_inner(started, source)
            .await
            .map_err(ReloadError::Failed);
        let stats = &self.current().reloads;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match &result {
            Ok(out) => {
                stats.succeeded.fetch_add(1, Relaxed);
                stats.last_success.store(now, Relaxed);
                for w in &out.restart_required {
                    tracing::warn!(cause, "reload: {w}");
                }
                for w in &out.warnings {
                    tracing::warn!(cause, "reload: {w}");
                }
                tracing::info!(
                    cause,
                    generation = out.generation,
                    duration_ms = out.duration_ms,
                    added = ?out.listeners_added,
                    removed = ?out.listeners_removed,
                    servers_kept = out.servers_kept,
                    "reloaded: new requests use the new configuration"
                );
            }
            Err(e) => {
                stats.failed.fetch_add(1, Relaxed);
                stats.last_failure.store(now, Relaxed);
                *stats
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                tracing::error!(cause, "reload failed, the running configuration stays: {e}");
            }
        }
        result
    }

    async fn reload_inner(
        self: &Arc<Self>,
        started: Instant,
        source: Source,
    ) -> Result<Outcome, String> {
        let old = self.current();
        let path = self.config_path.clone();
        let previous = Arc::clone(&old.config);
        // Compiling plugins takes a while: off the control thread, which
        // keeps answering the admin API and running health checks.
        let assembled = tokio::task::spawn_blocking(move || match source {
            Source::File => crate::runtime::load_after(&path, BindCheck::Skip, Some(&previous)),
            Source::Plugin(name) => {
                let src = &previous.source;
                let code = crate::plugin::code::CodeFiles::reusing(&previous.plugin_files, &name);
                crate::config::parse(src.file(), src.text())
                    .and_then(|spec| crate::runtime::assemble_with(spec, Some(&previous), code))
            }
        })
        .await
        .map_err(|e| format!("the reload task failed: {e}"))?;
        let runtime = assembled.map_err(|e: ConfigError| e.to_string())?;
        let mut restart_required = restart_required(&old.config, &runtime);
        let (added, removed) = listener_changes(&old.config, &runtime);
        let listeners = self.bind_new(&runtime, &added).map_err(|e| e.to_string())?;
        // Nothing fails from here: the new log level goes in force with the rest.
        let (was, now) = (&old.config.global.log_level, &runtime.global.log_level);
        if was != now
            && let Err(why) = crate::logging::set_level(now)
        {
            restart_required.push(format!(
                "[global] log_level changed from {was} to {now}: not applied ({why})"
            ));
        }
        for (addr, _) in &removed {
            self.inventory.remove(*addr);
        }
        let servers_kept = crate::servers::carry_over(
            &runtime.servers,
            &runtime.backends,
            &old.config.servers,
            &old.config.backends,
        );
        let warnings = runtime
            .global
            .warnings
            .iter()
            .map(|w| w.to_string())
            .collect();
        let shared = Arc::new(old.next(Arc::new(runtime)));
        attach(&shared);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&shared);
        self.start_tasks();
        crate::plugin::lograte::configure(shared.config.global.logs.failure_lines);
        let switch = Arc::new(Switch {
            shared: Arc::clone(&shared),
            listeners: Mutex::new(listeners),
            applied: AtomicUsize::new(0),
            done: Notify::new(),
        });
        self.switches.send_replace(Some(Arc::clone(&switch)));
        let all = async {
            loop {
                let notified = switch.done.notified();
                if switch.applied.load(SeqCst) >= self.workers {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(SWITCH_WAIT, all).await.is_err() {
            tracing::warn!(
                applied = switch.applied.load(SeqCst),
                workers = self.workers,
                "reload: not every worker took the new configuration in time; the others will on their next turn"
            );
        }
        drop(old);
        let show = |v: &[(SocketAddr, String)]| v.iter().map(|(a, _)| a.to_string()).collect();
        Ok(Outcome {
            generation: shared.id,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            restart_required,
            warnings,
            listeners_added: show(&added),
            listeners_removed: show(&removed),
            servers_kept,
        })
    }

    /// Binds each worker's socket for every address in `added`.
    fn bind_new(
        &self,
        runtime: &Runtime,
        added: &[(SocketAddr, String)],
    ) -> Result<Vec<WorkerListeners>, ConfigError> {
        let mut per_worker: Vec<WorkerListeners> = (0..self.workers).map(|_| Vec::new()).collect();
        for (addr, _) in added {
            let location = runtime
                .frontends
                .iter()
                .flat_map(|f| &f.binds)
                .find(|b| b.addr == *addr)
                .map(|b| b.location.clone());
            for mine in &mut per_worker {
                let l = super::listen(*addr, true).map_err(|e| match &location {
                    Some(loc) => ConfigError::at(loc, format!("cannot bind {addr}: {e}")),
                    None => {
                        ConfigError::file(&self.config_path, format!("cannot bind {addr}: {e}"))
                    }
                })?;
                self.inventory.add(*addr, std::os::fd::AsFd::as_fd(&l));
                mine.push((*addr, l));
            }
        }
        Ok(per_worker)
    }
}

/// Gives every plugin host of `shared`'s runtime the daemon's figures.
pub fn attach(shared: &Arc<Shared>) {
    let weak: std::sync::Weak<Shared> = Arc::downgrade(shared);
    let source: std::sync::Weak<dyn crate::plugin::ProcessSource> = weak;
    for host in &shared.config.plugins {
        host.attach_process(std::sync::Weak::clone(&source));
    }
}

/// Listening addresses, each with its frontend's name.
type Addrs = Vec<(SocketAddr, String)>;

/// Addresses `new` listens on and `old` did not, and the reverse.
fn listener_changes(old: &Runtime, new: &Runtime) -> (Addrs, Addrs) {
    let addrs = |r: &Runtime| -> Addrs {
        let mut seen = HashSet::new();
        r.frontends
            .iter()
            .flat_map(|f| f.binds.iter().map(|b| (b.addr, f.name.to_string())))
            .filter(|(a, _)| seen.insert(*a))
            .collect()
    };
    let (o, n) = (addrs(old), addrs(new));
    let added = n
        .iter()
        .filter(|(a, _)| !o.iter().any(|(b, _)| a == b))
        .cloned()
        .collect();
    let removed = o
        .iter()
        .filter(|(a, _)| !n.iter().any(|(b, _)| a == b))
        .cloned()
        .collect();
    (added, removed)
}

/// The settings whose change only a restart (or a binary upgrade) applies:
/// the old value stays in force.
fn restart_required(old: &Runtime, new: &Runtime) -> Vec<String> {
    let (o, n) = (&old.global, &new.global);
    let mut out = Vec::new();
    let mut note = |key: &str, was: String, now: String| {
        if was != now {
            out.push(format!(
                "[global] {key} changed from {was} to {now}: takes effect at the next restart or binary upgrade"
            ));
        }
    };
    note("workers", o.workers.to_string(), n.workers.to_string());
    note(
        "maxconn",
        format!("{:?}", o.maxconn),
        format!("{:?}", n.maxconn),
    );
    let admin = |a: &Option<crate::config::admin::Admin>| {
        a.as_ref().map_or_else(
            || "none".to_string(),
            |a| {
                format!(
                    "{:?} token={} hosts={:?} maxconn={} timeouts={:?}",
                    a.listen,
                    a.token.is_some(),
                    a.hosts,
                    a.maxconn,
                    a.timeouts
                )
            },
        )
    };
    if o.peers != n.peers {
        out.push(
            "[[peers]] sections changed: replication keeps its sections, addresses and peers until the next restart".to_string(),
        );
    }
    let (was, now) = (admin(&o.admin), admin(&n.admin));
    if was != now {
        out.push(
            "[global] admin settings changed: the admin API keeps its address, token and limits until the next restart or binary upgrade"
                .to_string(),
        );
    }
    out
}
