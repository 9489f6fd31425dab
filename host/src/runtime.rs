//! The assembly step: turns a validated [`Spec`] into the running
//! [`Runtime`]: live stick tables, the plugin hosts (each loads and checks its
//! `[[plugin]]` entries), and every frontend's filter chain compiled against
//! them.
//!
//! This is the only module that names the plugin kinds; everything below it
//! (`rules`, `plugin`, `config`, `stick`) and everything that runs the result
//! (`proxy`, `admin`) sees plugins only as [`PluginHost`]s. Nothing here is a
//! global or keyed by config identity, so a second runtime can be assembled
//! (a reload) while the first keeps serving.

use std::collections::HashMap;
use std::net::TcpListener;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::admin::AdminListen;
use crate::config::{self, BindCheck, ConfigError, Spec};
use crate::filter::Chain;
use crate::plugin::PluginHost;
use crate::plugin::code::CodeFiles;
use crate::rules::{CompileCtx, Extensions, RuleExtension};
use crate::stick::StickTables;

/// The running configuration: the spec's settings plus what was built from it.
pub struct Runtime {
    pub source: config::SourceMap,
    pub global: config::Global,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<config::Backend>,
    /// Live backend and server state (health, admin state, weights, counters),
    /// shared by the balancer, health checks, admin API and plugins.
    pub servers: crate::servers::Backends,
    /// Stick tables (`[[stick_table]]`), shared by rules, plugins and the admin API.
    pub tables: Arc<StickTables>,
    /// `[[resolvers]]` sections (`default` always there), asked by `do_resolve` rules.
    pub resolvers: Arc<crate::resolve::Resolvers>,
    /// One host per plugin kind, in a fixed order (Lua, then Wasm).
    pub plugins: Vec<Arc<dyn PluginHost>>,
    /// Each backend's `tcp_response` rules (by backend index), run for TCP frontends.
    pub backend_tcp_response: Vec<Vec<crate::rules::tcp::TcpRule>>,
    /// The plugin files as this assembly read them: a per-plugin reload
    /// takes every other plugin's from here instead of reading it again.
    pub plugin_files: Vec<crate::plugin::code::CodeFile>,
    /// Counts this runtime in [`live`] while it exists.
    _live: Live,
}

/// Runtimes assembled and not dropped yet in this process.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many runtimes exist: in the daemon, the generation in force plus the
/// replaced ones some request (or task) still holds; 1 once they ended. A
/// count that stays above 1 with no request in flight is a leak.
pub fn live() -> usize {
    LIVE.load(Relaxed)
}

/// A runtime's place in [`LIVE`].
struct Live;

impl Live {
    fn new() -> Live {
        LIVE.fetch_add(1, Relaxed);
        Live
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Relaxed);
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("frontends", &self.frontends)
            .field("backends", &self.backends.len())
            .field("plugins", &self.plugins.len())
            .finish()
    }
}

/// A frontend as it runs: its settings and its compiled filter chain.
#[derive(Debug)]
pub struct Frontend {
    pub spec: config::Frontend,
    pub chain: Chain,
    /// `tcp_request` rules of a TCP frontend (`proxy/tcp.rs` runs them).
    pub tcp_rules: Vec<crate::rules::tcp::TcpRule>,
    /// `tcp_response` rules of a TCP frontend (run before its backend's).
    pub tcp_response: Vec<crate::rules::tcp::TcpRule>,
    /// `filters` of a TCP frontend (on its streams' bytes; HTTP frontends' are in `chain`).
    pub tcp_filters: Vec<Arc<dyn crate::filter::StreamFilter>>,
    /// The access-log line (its `log_format`, else the global one), if custom.
    pub log_format: Option<crate::rules::LogFormat>,
}

impl Deref for Frontend {
    type Target = config::Frontend;
    fn deref(&self) -> &config::Frontend {
        &self.spec
    }
}

impl Runtime {
    /// Index of the backend called `name`.
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.name == name)
    }
}

/// Reads, validates and assembles the config file at `path`.
pub fn load(path: &Path, bind_check: BindCheck) -> Result<Runtime, ConfigError> {
    load_after(path, bind_check, None)
}

/// [`load`] for a reload of `previous` (see [`assemble_after`]): the same
/// checks as `portcullis check`, the bind probe apart (the running daemon
/// holds the addresses; a reload binds the new ones itself).
pub fn load_after(
    path: &Path,
    bind_check: BindCheck,
    previous: Option<&Runtime>,
) -> Result<Runtime, ConfigError> {
    let spec = config::load(path)?;
    probe(&spec, bind_check)?;
    let listens = !spec.frontends.is_empty() || spec.global.admin.is_some();
    let runtime = assemble_after(spec, previous)?;
    if !listens {
        // HAProxy refuses to start with no listener; so do we (`check`
        // too), once every other error has had its say.
        return Err(ConfigError::file(
            path,
            "the configuration declares no [[frontend]] and no admin address: portcullis would listen on nothing; add a [[frontend]] with a bind address (see docs/CONFIG.md)",
        ));
    }
    Ok(runtime)
}

/// Validates and assembles config `text` that came from `path`.
pub fn parse(path: &Path, text: &str, bind_check: BindCheck) -> Result<Runtime, ConfigError> {
    let spec = config::parse(path, text)?;
    probe(&spec, bind_check)?;
    assemble(spec)
}

/// With [`BindCheck::Probe`] (`portcullis check`): binds every listener
/// address once, and checks the admin address, so an address already in use
/// is reported with its location before the daemon is started.
fn probe(spec: &Spec, bind_check: BindCheck) -> Result<(), ConfigError> {
    if bind_check != BindCheck::Probe {
        return Ok(());
    }
    for fe in &spec.frontends {
        for b in &fe.binds {
            if let Err(e) = TcpListener::bind(b.addr) {
                return Err(ConfigError::at(
                    &b.location,
                    format!("cannot bind {}: {e}", b.addr),
                ));
            }
        }
    }
    if let Some(admin) = &spec.global.admin {
        match &admin.listen {
            AdminListen::Tcp(addr) => {
                if let Err(e) = TcpListener::bind(addr) {
                    return Err(ConfigError::at(
                        &admin.location,
                        format!("cannot bind admin address {addr}: {e}"),
                    ));
                }
            }
            AdminListen::Unix(u) => {
                config::admin::probe_socket(&u.path)
                    .map_err(|m| ConfigError::at(&admin.location, m))?;
            }
        }
    }
    Ok(())
}

/// Builds the running configuration from `spec`: tables first (rules and
/// plugins reach them), then the plugin hosts, then the chains.
pub fn assemble(spec: Spec) -> Result<Runtime, ConfigError> {
    assemble_after(spec, None)
}

/// [`assemble`] for a reload of `previous`: stick tables declared as before
/// keep their entries (a changed one starts empty, said in `global.warnings`).
pub fn assemble_after(spec: Spec, previous: Option<&Runtime>) -> Result<Runtime, ConfigError> {
    assemble_with(spec, previous, CodeFiles::from_disk())
}

/// [`assemble_after`] with the plugin files taken from `code` (see
/// [`CodeFiles::reusing`]: a per-plugin reload reads only that plugin's files).
pub fn assemble_with(
    spec: Spec,
    previous: Option<&Runtime>,
    mut code: CodeFiles,
) -> Result<Runtime, ConfigError> {
    let Spec {
        source,
        global,
        frontends,
        backends,
        plugins,
        stick_tables,
        resolvers,
    } = spec;
    let resolvers = Arc::new(crate::resolve::Resolvers::new(&resolvers));
    let mut frontends = frontends;
    if let Some(prev) = previous {
        // A TLS frontend kept by a reload keeps its session-ticket keys.
        for fe in &mut frontends {
            let old = prev
                .frontends
                .iter()
                .find(|o| o.name == fe.name)
                .and_then(|o| o.tls.as_ref());
            if let (Some(new), Some(old)) = (&fe.tls, old) {
                fe.tls = Some(Arc::new(new.with_tickets_of(old)));
            }
        }
    }
    let mut tables = config::stick::build(&stick_tables, &source)?;
    let mut global = global;
    if let Some(prev) = previous {
        for note in tables.carry_over(&prev.tables) {
            global
                .warnings
                .push(config::ConfigWarning(ConfigError::file(
                    source.file(),
                    note,
                )));
        }
    }
    let tables = Arc::new(tables);
    let servers = crate::servers::build(&backends);
    let backend_ids: HashMap<String, usize> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.to_string(), i))
        .collect();

    let view = crate::lua::HostView {
        backends: Arc::new(backend_ids.clone()),
        frontends: frontends.iter().map(|f| f.name.to_string()).collect(),
        tables: Arc::clone(&tables),
        servers: Arc::clone(&servers),
        client_timeout: global.timeouts.client,
    };
    let lua = Arc::new(crate::lua::LuaHost {
        plugins: crate::lua::load_plugins(&plugins, &source, &view, &mut code)?,
    });
    // Plugins log while they start, before the daemon sets up its logging.
    crate::wasm::abi::proxy_wasm::set_configured_level(&global.log_level);
    // A Wasm plugin no rule runs is a singleton service (root context only).
    let wasm_used: std::collections::HashSet<String> = frontends
        .iter()
        .flat_map(|f| {
            f.http_request
                .iter()
                .chain(&f.http_response)
                .chain(&f.http_after_response)
        })
        .filter_map(|r| r.get_ref().wasm.as_ref().map(|w| w.get_ref().clone()))
        .collect();
    let wasm_cache = match &global.wasm_cache {
        Some(dir) if plugins.iter().any(|p| p.get_ref().wasm.is_some()) => {
            let path = config::resolve_path(source.file(), dir.get_ref());
            Some(crate::wasm::cache::ModuleCache::open(&path).map_err(|e| {
                source.error(dir.span(), format!("wasm_cache {}: {e}", path.display()))
            })?)
        }
        _ => None,
    };
    let wasm = Arc::new(crate::wasm::WasmHost {
        plugins: crate::wasm::config::load_plugins(
            &plugins,
            &source,
            (&backends, Some(Arc::clone(&servers))),
            Some(Arc::new(crate::wasm::stick::TablesStick(Arc::clone(
                &tables,
            )))),
            global.timeouts.server,
            &wasm_used,
            &mut code,
            wasm_cache.as_ref(),
        )?,
    });
    let hosts: Vec<Arc<dyn PluginHost>> = vec![Arc::clone(&lua) as Arc<dyn PluginHost>, wasm];
    let extensions = Extensions::new(
        hosts
            .iter()
            .map(|h| Arc::clone(h) as Arc<dyn RuleExtension>)
            .collect(),
    );

    let cx = CompileCtx {
        backends: &backend_ids,
        plugins: &extensions,
        tables: &tables,
        resolvers: &resolvers,
    };
    let frontends = frontends
        .into_iter()
        .map(|spec| {
            let mut chain = crate::rules::compile_chain(
                &spec.http_request,
                &spec.http_response,
                &spec.http_after_response,
                &source,
                &cx,
            )?;
            // HAProxy's `filter`s see each message after the rules processed it.
            let mut tcp_filters = Vec::new();
            if spec.tcp {
                tcp_filters = crate::lua::build_stream_filters(&lua, &spec.filters, &source)?;
            } else {
                for f in crate::lua::build_filters(&lua, &spec.filters, &source)? {
                    chain.request.push(Arc::clone(&f));
                    chain.response.push(Arc::clone(&f));
                    chain.log.push(f);
                }
            }
            let tcp_rules = crate::rules::tcp::compile(&spec.tcp_request, &source, &cx)?;
            let tcp_response =
                crate::rules::tcp::compile_response(&spec.tcp_response, &source, &cx)?;
            let log_format = crate::rules::compile_log_format(
                spec.log_format.as_ref().or(global.log_format.as_ref()),
                &source,
                &cx,
            )?;
            Ok(Frontend {
                spec,
                chain,
                tcp_rules,
                tcp_response,
                tcp_filters,
                log_format,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let backend_tcp_response = backends
        .iter()
        .map(|b| crate::rules::tcp::compile_response(&b.tcp_response, &source, &cx))
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(Runtime {
        backend_tcp_response,
        source,
        global,
        frontends,
        backends,
        servers,
        tables,
        resolvers,
        plugins: hosts,
        plugin_files: code.into_used(),
        _live: Live::new(),
    })
}
