//! Lua plugins: HAProxy's Lua API on Lua 5.4 (mlua), one state per plugin per worker.
//!
//! - [`Plugin`]: one `[[plugin]]` with `lua = "file"`, loaded and checked at
//!   config time in a throwaway state (syntax errors and failing main chunks
//!   are config errors with the script's `file:line`), carrying what the
//!   script registered so rules can be checked against it, its limits and its
//!   shared [`PluginStats`].
//! - [`Plugins`]: the config's plugins, as rule compilation sees them.
//! - `runtime`: per-worker instances in worker-local storage (the Lua state,
//!   one reusable request object, a small coroutine pool), the memory and
//!   CPU limits, and the one place where failures are classified, counted
//!   and turned into the plugin's `on_error` policy.
//! - `api`: the `core`, `act`, `txn` (with `txn.http`, `txn.f/sf/c/sc`) and
//!   reply objects; `applet`: `AppletHTTP` for services.
//! - `rules`: how rules reach plugins: the `lua` action, `use_service`, and
//!   `lua.<name>` fetches and converters.
//! - `filter`: a frontend's `filters` (HAProxy's `filter lua.<name>`), with
//!   the `Channel` and `HTTPMessage` classes in `api/filter.rs`.
//!
//! Failures stay local: every allocation a script can trigger is bounded by
//! the plugin's own limit and fails as a Lua error, every entry into Lua is
//! guarded against panics, and a state that may be inconsistent (out of
//! memory, CPU limit, internal error) is dropped and rebuilt from the source.

pub mod admin;
mod api;
mod applet;
mod applet_tcp;
mod events;
mod ffi;
mod filter;
mod headers;
pub mod host;
mod map;
mod proxy;
mod rules;
mod runtime;
mod stktable;
mod task;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use toml::Spanned;

use crate::config::schema::RawPlugin;
use crate::config::{ConfigError, SourceMap};
use crate::txn::Phase;

pub use filter::{build_filters, build_stream_filters};
pub use host::LuaHost;

/// Default per-instance memory limit.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 20;
/// Default `max_body_size`: the body a Lua filter may hold un-forwarded.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Default CPU budget of one call.
pub const DEFAULT_CPU_LIMIT: Duration = Duration::from_millis(50);

pub use crate::plugin::OnError;

pub use crate::plugin::FailureKind;

/// A plugin's counters, shared by every worker's instance (atomics only).
#[derive(Debug, Default)]
pub struct PluginStats {
    /// Calls into the plugin (actions, fetches, converters, services, inits, tasks).
    pub calls: AtomicU64,
    /// Failed calls by kind (`Script`, `MemoryLimit`, `CpuLimit`).
    pub errors: crate::plugin::FailureCounts,
    /// States dropped and rebuilt from the script after a failure.
    pub rebuilds: AtomicU64,
    /// Lua memory in use, summed over the workers' instances.
    pub memory_in_use: AtomicU64,
    /// Largest memory use seen in one instance.
    pub memory_peak: AtomicU64,
    /// Live instances (one per worker that used the plugin).
    pub instances: AtomicU64,
    /// The memory limit in force (config value; the admin API may change it).
    pub memory_limit: AtomicU64,
}

impl PluginStats {
    /// Counts one failure of `kind`.
    pub fn count_error(&self, kind: FailureKind) {
        self.errors.count(kind);
    }
}

/// An action a script registered with `core.register_action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegAction {
    pub name: String,
    /// Registered for `http-req`.
    pub request: bool,
    /// Registered for `http-res`.
    pub response: bool,
    /// Arguments the rule must give (`nb_args`), per phase.
    pub nb_args_req: usize,
    pub nb_args_res: usize,
    /// Registered for `tcp-req` (`tcp_request` rules), with its `nb_args`.
    pub tcp: bool,
    pub nb_args_tcp: usize,
    /// Registered for `tcp-res` (`tcp_response` rules), with its `nb_args`.
    pub tcp_res: bool,
    pub nb_args_tcp_res: usize,
    /// Registered for `http-after-res` (`http_after_response` rules), with its `nb_args`.
    pub after_res: bool,
    pub nb_args_after_res: usize,
}

/// Everything a script registered while loading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registered {
    pub actions: Vec<RegAction>,
    pub fetches: Vec<String>,
    pub converters: Vec<String>,
    pub services: Vec<String>,
    /// `core.register_service(name, "tcp", f)` names.
    pub tcp_services: Vec<String>,
    /// `core.register_filter` names.
    pub filters: Vec<String>,
    pub inits: usize,
    pub tasks: usize,
    /// `core.event_sub`/`Server:event_sub` calls made by the main chunk.
    pub event_subs: usize,
}

/// One validated `[[plugin]]` with `lua = ...`.
#[derive(Debug)]
pub struct Plugin {
    /// Process-unique id (keys worker-local state; never reused across reloads).
    pub id: u64,
    pub name: Arc<str>,
    /// The script's path as resolved against the config directory.
    pub path: PathBuf,
    /// The script's text, read once at load.
    pub source: Arc<str>,
    /// Arguments for the main chunk (`...`).
    pub args: Vec<String>,
    /// `require` search patterns put before `package.path` (`lua_path`), resolved.
    pub lua_path: Vec<String>,
    /// Configured memory limit per instance, in bytes.
    pub memory_limit: usize,
    pub cpu_limit: Duration,
    pub on_error: OnError,
    pub registered: Registered,
    pub stats: PluginStats,
    /// Backend names → index, for fetches scripts evaluate (`be_name`).
    pub backends: Arc<std::collections::HashMap<String, usize>>,
    /// Frontend names, for `core.frontends`.
    pub frontends: Arc<[String]>,
    /// The config's stick tables (`core.backends[name].stktable`, `sc_*` fetches).
    pub tables: Arc<crate::stick::StickTables>,
    /// Live backend and server state (`Proxy.servers`, `Server` objects).
    pub servers: crate::servers::Backends,
    /// Client inactivity limit while a service reads the request body (`timeout.client`).
    pub client_timeout: Duration,
    /// Map files loaded with `Map.new`, shared by every state and every plugin of the config.
    pub maps: Arc<crate::rules::pattern::PatternCache>,
    /// The daemon's figures (`core.get_info()`), once it serves.
    pub process: std::sync::OnceLock<std::sync::Weak<dyn crate::plugin::ProcessSource>>,
    /// Most body bytes a filter holds without forwarding them (`max_body_size`).
    pub max_body: usize,
}

impl Plugin {
    /// The memory limit in force now.
    pub fn current_memory_limit(&self) -> usize {
        usize::try_from(self.stats.memory_limit.load(Relaxed)).unwrap_or(usize::MAX)
    }

    /// Changes the memory limit of every instance (applied before their next call).
    pub fn set_memory_limit(&self, bytes: usize) {
        self.stats
            .memory_limit
            .store(u64::try_from(bytes).unwrap_or(u64::MAX), Relaxed);
    }
}

/// The config's Lua plugins, as rule compilation sees them.
#[derive(Debug, Default)]
pub struct Plugins {
    pub list: Vec<Arc<Plugin>>,
}

static NO_PLUGINS: Plugins = Plugins { list: Vec::new() };

impl Plugins {
    /// An empty registry (tests, and fetches compiled at run time by scripts).
    pub fn empty() -> &'static Plugins {
        &NO_PLUGINS
    }

    /// The plugin called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.list.iter().find(|p| &*p.name == name)
    }

    /// The plugin that registered action `name` for `phase`.
    pub(crate) fn action(
        &self,
        name: &str,
        phase: Phase,
        after_response: bool,
    ) -> Result<(&Arc<Plugin>, usize), String> {
        let mut found = Vec::new();
        let mut other_phase = false;
        for p in &self.list {
            for a in p.registered.actions.iter().filter(|a| a.name == name) {
                match phase {
                    Phase::Response if after_response => {
                        if a.after_res {
                            found.push((p, a.nb_args_after_res));
                        } else {
                            other_phase = true;
                        }
                    }
                    Phase::Request if a.request => found.push((p, a.nb_args_req)),
                    Phase::Response if a.response => found.push((p, a.nb_args_res)),
                    _ => other_phase = true,
                }
            }
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] if other_phase && after_response => Err(format!(
                "Lua action {name:?} is not registered for http_after_response rules (register it with {{\"http-after-res\"}} in core.register_action, as HAProxy requires for http-after-response)"
            )),
            [] if other_phase => Err(format!(
                "Lua action {name:?} is not registered for {} (register it with {{\"{}\"}} in core.register_action)",
                phase_list(phase),
                phase_word(phase)
            )),
            [] => {
                let names: Vec<&str> = self
                    .list
                    .iter()
                    .flat_map(|p| p.registered.actions.iter().map(|a| a.name.as_str()))
                    .collect();
                Err(unknown("action", name, &names, &self.list))
            }
            [(a, _), (b, _), ..] => Err(format!(
                "Lua action {name:?} is registered by both plugin {:?} and plugin {:?}; rename one of them",
                a.name, b.name
            )),
        }
    }

    /// The plugin that registered `tcp-req` (`response`: `tcp-res`) action
    /// `name`, and its `nb_args`.
    pub(crate) fn tcp_action(
        &self,
        name: &str,
        response: bool,
    ) -> Result<(&Arc<Plugin>, usize), String> {
        let mut found = Vec::new();
        let mut other = false;
        let (kind, rules) = if response {
            ("tcp-res", "tcp_response")
        } else {
            ("tcp-req", "tcp_request")
        };
        let registered = |a: &RegAction| if response { a.tcp_res } else { a.tcp };
        for p in &self.list {
            for a in p.registered.actions.iter().filter(|a| a.name == name) {
                if registered(a) {
                    found.push((
                        p,
                        if response {
                            a.nb_args_tcp_res
                        } else {
                            a.nb_args_tcp
                        },
                    ));
                } else {
                    other = true;
                }
            }
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] if other => Err(format!(
                "Lua action {name:?} is not registered for {rules} rules (register it with {{\"{kind}\"}} in core.register_action)"
            )),
            [] => {
                let names: Vec<&str> = self
                    .list
                    .iter()
                    .flat_map(|p| {
                        p.registered
                            .actions
                            .iter()
                            .filter(|a| registered(a))
                            .map(|a| a.name.as_str())
                    })
                    .collect();
                Err(unknown(&format!("{kind} action"), name, &names, &self.list))
            }
            [(a, _), (b, _), ..] => Err(format!(
                "Lua action {name:?} is registered by both plugin {:?} and plugin {:?}; rename one of them",
                a.name, b.name
            )),
        }
    }

    /// The plugin that registered the fetch, converter or service `name`.
    pub(crate) fn find(
        &self,
        what: &str,
        name: &str,
        list: impl Fn(&Registered) -> &Vec<String>,
    ) -> Result<&Arc<Plugin>, String> {
        let found: Vec<&Arc<Plugin>> = self
            .list
            .iter()
            .filter(|p| list(&p.registered).iter().any(|n| n == name))
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => {
                let names: Vec<&str> = self
                    .list
                    .iter()
                    .flat_map(|p| list(&p.registered).iter().map(String::as_str))
                    .collect();
                Err(unknown(what, name, &names, &self.list))
            }
            [a, b, ..] => Err(format!(
                "Lua {what} {name:?} is registered by both plugin {:?} and plugin {:?}; rename one of them",
                a.name, b.name
            )),
        }
    }
}

fn phase_list(p: Phase) -> &'static str {
    match p {
        Phase::Request => "http_request rules",
        Phase::Response => "http_response rules",
    }
}

fn phase_word(p: Phase) -> &'static str {
    match p {
        Phase::Request => "http-req",
        Phase::Response => "http-res",
    }
}

fn unknown(what: &str, name: &str, names: &[&str], plugins: &[Arc<Plugin>]) -> String {
    if plugins.is_empty() {
        return format!(
            "no Lua {what} {name:?}: no [[plugin]] is declared; add one with lua = \"script.lua\""
        );
    }
    let hint = crate::rules::suggest(name, names.iter().copied())
        .map(crate::rules::did_you_mean)
        .unwrap_or_default();
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let known = if sorted.is_empty() {
        format!("; the plugins register no {what}")
    } else {
        format!("; registered: {}", sorted.join(", "))
    };
    format!("no Lua {what} {name:?} is registered by any plugin{hint}{known}")
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What scripts see of the rest of the config.
#[derive(Debug, Clone)]
pub struct HostView {
    /// Backend name → index.
    pub backends: Arc<std::collections::HashMap<String, usize>>,
    /// Frontend names, in config order.
    pub frontends: Arc<[String]>,
    pub tables: Arc<crate::stick::StickTables>,
    /// Live backend and server state (`Proxy.servers`, `Server` objects).
    pub servers: crate::servers::Backends,
    /// `[global.timeout] client`.
    pub client_timeout: Duration,
}

/// Validates every `[[plugin]]` and loads each script once in a throwaway state.
pub fn load_plugins(
    raw: &[Spanned<RawPlugin>],
    source: &SourceMap,
    view: &HostView,
    code: &mut crate::plugin::code::CodeFiles,
) -> Result<Plugins, ConfigError> {
    let mut list: Vec<Arc<Plugin>> = Vec::with_capacity(raw.len());
    // One per config: every plugin sees the same in-memory map files, as
    // HAProxy's pattern references are process-wide.
    let maps = Arc::new(crate::rules::pattern::PatternCache::default());
    for p in raw {
        let p = p.get_ref();
        let name = p.name.get_ref();
        if list.iter().any(|q| &*q.name == name.as_str()) {
            return Err(source.error(
                p.name.span(),
                format!("duplicate plugin name {name:?}; every plugin needs a unique name"),
            ));
        }
        if p.wasm.is_some() {
            // Another plugin host's.
            continue;
        }
        list.push(Arc::new(load_one(p, source, view, &maps, code)?));
    }
    Ok(Plugins { list })
}

fn load_one(
    p: &RawPlugin,
    source: &SourceMap,
    view: &HostView,
    maps: &Arc<crate::rules::pattern::PatternCache>,
    code: &mut crate::plugin::code::CodeFiles,
) -> Result<Plugin, ConfigError> {
    let name = p.name.get_ref();
    crate::config::check_name(source, &p.name, "plugin")?;
    let Some(lua) = &p.lua else {
        return Err(source.error(
            p.name.span(),
            format!("plugin {name:?} needs a script: add lua = \"path/to/script.lua\""),
        ));
    };
    if let Some(s) = &p.singleton {
        return Err(source.error(
            s.span(),
            "`singleton` is for Wasm plugins no rule uses; a Lua plugin's tasks run in every worker",
        ));
    }
    for (key, v) in [("vm_id", &p.vm_id), ("root_id", &p.root_id)] {
        if let Some(v) = v {
            return Err(source.error(
                v.span(),
                format!("`{key}` is for Wasm plugins (Envoy's VM and root context ids)"),
            ));
        }
    }
    for (key, v) in [("config", &p.config), ("vm_config", &p.vm_config)] {
        if let Some(v) = v {
            return Err(source.error(
                v.span(),
                format!(
                    "`{key}` is for Wasm plugins; a Lua plugin takes its arguments from `args`"
                ),
            ));
        }
    }
    // A Lua filter holds at most this much of a body it has not forwarded
    // yet (HAProxy: one buffer, `tune.bufsize`); actions see headers only.
    let max_body = match &p.max_body_size {
        Some(m) => {
            let n = m.get_ref().0;
            if !(1..=(64u64 << 20)).contains(&n) {
                return Err(source.error(
                    m.span(),
                    format!("max_body_size of a Lua plugin (the body a filter may hold) must be between 1 byte and 64MiB, got {n} bytes"),
                ));
            }
            usize::try_from(n).unwrap_or(DEFAULT_MAX_BODY)
        }
        None => DEFAULT_MAX_BODY,
    };
    let memory_limit = match &p.memory_limit {
        Some(m) => {
            let n = m.get_ref().0;
            if !(1..=(4u64 << 30)).contains(&n) {
                return Err(source.error(
                    m.span(),
                    format!("memory_limit must be between 1 byte and 4GiB, got {n} bytes"),
                ));
            }
            usize::try_from(n).unwrap_or(usize::MAX)
        }
        None => DEFAULT_MEMORY_LIMIT,
    };
    let cpu_limit = p.cpu_limit.map_or(DEFAULT_CPU_LIMIT, |d| d.0);
    if cpu_limit < Duration::from_micros(100) || cpu_limit > Duration::from_secs(60) {
        return Err(source.error(
            p.name.span(),
            format!("plugin {name:?}: cpu_limit must be between 100us and 60s, got {cpu_limit:?}"),
        ));
    }
    let on_error = match &p.on_error {
        Some(s) => match s.get_ref().as_str() {
            "fail_open" => OnError::FailOpen,
            "fail_closed" => OnError::FailClosed,
            other => {
                return Err(source.error(
                    s.span(),
                    format!(
                        "unknown on_error {other:?}; expected \"fail_open\" (the request goes on) or \"fail_closed\" (500)"
                    ),
                ));
            }
        },
        None => OnError::FailOpen,
    };
    let args = match &p.args {
        Some(a) => arg_strings(a).map_err(|m| source.error(a.span(), m))?,
        None => Vec::new(),
    };
    let lua_path = match &p.lua_path {
        Some(l) => l
            .get_ref()
            .to_vec()
            .into_iter()
            .map(|pattern| {
                if pattern.is_empty() || pattern.contains(';') || !pattern.contains('?') {
                    return Err(source.error(
                        l.span(),
                        format!(
                            "lua_path entry {pattern:?} is not a search pattern: write a path with `?` for the module name, e.g. \"lib/?.lua\" (one pattern per entry, no `;`)"
                        ),
                    ));
                }
                Ok(crate::config::resolve_path(source.file(), &pattern)
                    .to_string_lossy()
                    .into_owned())
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let path = crate::config::resolve_path(source.file(), lua.get_ref());
    let text = code
        .read(name, &path)
        .and_then(|b| {
            std::str::from_utf8(&b).map(Arc::<str>::from).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                )
            })
        })
        .map_err(|e| {
            source.error(
                lua.span(),
                format!(
                    "plugin {name:?}: cannot read Lua script {}: {e}",
                    path.display()
                ),
            )
        })?;
    let mut plugin = Plugin {
        id: NEXT_ID.fetch_add(1, Relaxed),
        name: Arc::from(name.as_str()),
        path,
        source: text,
        args,
        lua_path,
        memory_limit,
        cpu_limit,
        on_error,
        registered: Registered::default(),
        stats: PluginStats::default(),
        backends: Arc::clone(&view.backends),
        frontends: Arc::clone(&view.frontends),
        tables: Arc::clone(&view.tables),
        servers: Arc::clone(&view.servers),
        client_timeout: view.client_timeout,
        maps: Arc::clone(maps),
        process: std::sync::OnceLock::new(),
        max_body,
    };
    plugin.set_memory_limit(memory_limit);
    plugin.registered = runtime::validate(&plugin).map_err(|m| {
        source.error(
            lua.span(),
            format!(
                "plugin {name:?}: cannot load {}: {m}",
                plugin.path.display()
            ),
        )
    })?;
    Ok(plugin)
}

/// `args` values as strings (numbers and booleans are written out).
pub(crate) fn arg_strings(a: &Spanned<Vec<toml::Value>>) -> Result<Vec<String>, String> {
    a.get_ref()
        .iter()
        .map(|v| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "args must be strings, numbers or booleans, got a {}",
                other.type_str()
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_api;
