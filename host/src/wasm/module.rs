//! Loading a plugin: compile once, check imports and exports, pre-link
//! (`InstancePre`), then run a throwaway instance through start-up so a
//! module that cannot work is a config error at load, not a 500 later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use wasmtime::{Engine, ExternType, FuncType, InstancePre, Linker, Module, Store, ValType};

use super::PluginSpec;
use super::cache::ModuleCache;
use super::instance::{HostState, PluginInstance, PluginShared, PluginStats};

/// Why a module cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WasmLoadError {
    #[error("{0}")]
    Engine(String),
    #[error("not a valid WebAssembly module: {0}")]
    Invalid(String),
    #[error(
        "the module imports `{module}`.`{name}` ({kind}), which portcullis does not provide; it provides the Proxy-Wasm ABI v0.2.1 (`env`), WASI preview1 basics (`wasi_snapshot_preview1`) and `portcullis_v1`"
    )]
    MissingImport {
        module: String,
        name: String,
        kind: &'static str,
    },
    #[error("cannot link the module: {0}")]
    Link(String),
    #[error("the module does not export `{0}`; is it a Proxy-Wasm module?")]
    MissingExport(&'static str),
    #[error("export `{name}` has type {found}, but Proxy-Wasm ABI v0.2.1 expects {expected}")]
    BadExport {
        name: String,
        found: String,
        expected: String,
    },
    #[error("the plugin failed to start: {0}")]
    Start(String),
    #[error("{0}")]
    AbiMismatch(String),
    #[error("{0}")]
    NotHttp(String),
}

/// Whether `bytes` may be WebAssembly text: after blanks and `;;` comments,
/// a `(`.
fn looks_like_wat(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(";;"))
        .is_some_and(|l| l.starts_with('('))
}

/// What a failed start-up logged, for its load error: the lines at warning
/// level or above (else the last lines of any level), a few at most.
fn logged(lines: &[(u32, String)]) -> String {
    const MAX: usize = 5;
    let lines: Vec<&(u32, String)> = lines.iter().filter(|(_, m)| !m.trim().is_empty()).collect();
    let serious: Vec<&str> = lines
        .iter()
        .filter(|(l, _)| *l >= 3)
        .map(|(_, m)| m.as_str())
        .collect();
    let shown: Vec<&str> = if serious.is_empty() {
        let all: Vec<&str> = lines.iter().map(|(_, m)| m.as_str()).collect();
        all[all.len().saturating_sub(MAX)..].to_vec()
    } else {
        serious.into_iter().take(MAX).collect()
    };
    if shown.is_empty() {
        return String::new();
    }
    format!("; the plugin logged: {}", shown.join(" | "))
}

/// The Proxy-Wasm ABI a module declares (its `proxy_abi_version_*` export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_2_0` (the Go SDK's): 0.2.1 without `proxy_get_log_level`.
    V0_2_0,
    /// `proxy_abi_version_0_2_1`, or no version export (taken as the newest).
    V0_2_1,
}

impl AbiVersion {
    /// The version as written in the export's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        }
    }

    /// From the module's exports: 0.2.0 or 0.2.1; 0.1.0 (whose header hooks
    /// take other arguments) is refused, as anything we cannot call right.
    fn detect(module: &Module) -> Result<AbiVersion, WasmLoadError> {
        let has = |n: &str| module.get_export(n).is_some();
        if has("proxy_abi_version_0_2_1") {
            Ok(AbiVersion::V0_2_1)
        } else if has("proxy_abi_version_0_2_0") {
            if let Some(i) = module
                .imports()
                .find(|i| i.module() == "env" && i.name() == "proxy_get_log_level")
            {
                return Err(WasmLoadError::AbiMismatch(format!(
                    "the module declares Proxy-Wasm ABI 0.2.0 but imports `{}`, which ABI 0.2.1 added; rebuild it with an SDK for ABI 0.2.1",
                    i.name()
                )));
            }
            Ok(AbiVersion::V0_2_0)
        } else if has("proxy_abi_version_0_1_0") {
            Err(WasmLoadError::AbiMismatch(
                "the module declares Proxy-Wasm ABI 0.1.0; portcullis runs ABI 0.2.0 and 0.2.1 modules (rebuild it with a current SDK)".into(),
            ))
        } else {
            Ok(AbiVersion::V0_2_1)
        }
    }
}

/// Exports the host calls, with the signature it calls them with.
const EXPORTS: &[(&str, &[ValType], &[ValType])] = {
    use ValType::I32;
    &[
        ("proxy_on_context_create", &[I32, I32], &[]),
        ("proxy_on_vm_start", &[I32, I32], &[I32]),
        ("proxy_on_configure", &[I32, I32], &[I32]),
        ("proxy_on_request_headers", &[I32, I32, I32], &[I32]),
        ("proxy_on_request_body", &[I32, I32, I32], &[I32]),
        ("proxy_on_request_trailers", &[I32, I32], &[I32]),
        ("proxy_on_response_headers", &[I32, I32, I32], &[I32]),
        ("proxy_on_response_body", &[I32, I32, I32], &[I32]),
        ("proxy_on_response_trailers", &[I32, I32], &[I32]),
        ("proxy_on_log", &[I32], &[]),
        ("proxy_on_done", &[I32], &[I32]),
        ("proxy_on_delete", &[I32], &[]),
        ("proxy_on_tick", &[I32], &[]),
        (
            "proxy_on_http_call_response",
            &[I32, I32, I32, I32, I32],
            &[],
        ),
        ("proxy_on_queue_ready", &[I32, I32], &[]),
        ("proxy_on_new_connection", &[I32], &[I32]),
        ("proxy_on_memory_allocate", &[I32], &[I32]),
        ("malloc", &[I32], &[I32]),
        ("_initialize", &[], &[]),
        ("_start", &[], &[]),
    ]
};

static LINKER: LazyLock<Result<Linker<HostState>, String>> = LazyLock::new(|| {
    let engine = super::engine::engine()?;
    super::abi::linker(engine).map_err(|e| format!("cannot set up the wasm host functions: {e}"))
});

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A compiled, linked plugin, shared by every worker.
pub struct WasmPlugin {
    /// Unique id (keys the per-worker instance registry).
    pub id: u64,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) shared: Arc<PluginShared>,
    engine: &'static Engine,
    /// The Proxy-Wasm ABI version the module declares.
    pub abi: AbiVersion,
    /// The module exports `proxy_on_request_body` or `_trailers`: request bodies are buffered for it.
    pub(crate) request_body_hooks: bool,
    /// The module exports `proxy_on_response_body` or `_trailers`: response bodies are buffered for it.
    pub(crate) response_body_hooks: bool,
    /// Keys the per-worker VM registry: the id of the VM's first plugin
    /// (its own id unless it shares a VM through `vm_id`).
    pub vm_key: u64,
    /// The plugin's root context id in its VM ([`super::instance::ROOT_ID`] for the first plugin).
    pub root_ctx: u32,
    /// Every plugin of the VM in root-context order (empty: this one alone).
    pub(crate) members: Vec<Arc<PluginShared>>,
}

impl std::fmt::Debug for WasmPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmPlugin")
            .field("id", &self.id)
            .field("name", &self.shared.spec.name)
            .finish()
    }
}

/// `"a", "b"` for the plugins of a VM.
fn names(members: &[Arc<PluginShared>]) -> String {
    members
        .iter()
        .map(|m| format!("{:?}", m.spec.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn sig(params: &[ValType], results: &[ValType]) -> String {
    let list = |v: &[ValType]| {
        v.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", list(params), list(results))
}

fn same(ft: &FuncType, params: &[ValType], results: &[ValType]) -> bool {
    ft.params().len() == params.len()
        && ft.results().len() == results.len()
        && ft.params().zip(params).all(|(a, b)| ValType::eq(&a, b))
        && ft.results().zip(results).all(|(a, b)| ValType::eq(&a, b))
}

fn kind_name(t: &ExternType) -> &'static str {
    match t {
        ExternType::Func(_) => "function",
        ExternType::Global(_) => "global",
        ExternType::Table(_) => "table",
        ExternType::Memory(_) => "memory",
        _ => "item",
    }
}

/// Validates and compiles `bytes` (a binary module or WAT text), with a
/// message in the user's words for a file that is neither.
fn parse_module(engine: &Engine, bytes: &[u8]) -> Result<Module, WasmLoadError> {
    if !bytes.starts_with(b"\0asm") && !looks_like_wat(bytes) {
        // Module::new would try it as WebAssembly text and say "expected `(`".
        let head: String = bytes
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        let found = if bytes.is_empty() {
            "this file is empty".to_string()
        } else {
            format!("this file starts with {head}")
        };
        return Err(WasmLoadError::Invalid(format!(
            "a binary module starts with the bytes 00 61 73 6d (\"\\0asm\") and a text one with `(module`, but {found} (build the plugin for wasm32-unknown-unknown or wasm32-wasip1 and point `wasm` at the .wasm file)"
        )));
    }
    let module = Module::new(engine, bytes).map_err(|e| {
        let root = e.chain().last().map(|c| c.to_string()).unwrap_or_default();
        let msg = e.to_string();
        WasmLoadError::Invalid(if root.is_empty() || root == msg {
            msg
        } else {
            format!("{msg}: {root}")
        })
    })?;
    Ok(module)
}

/// One import of a module, and whether the host provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportInfo {
    pub module: String,
    pub name: String,
    /// `function`, `memory`, `global`, `table`.
    pub kind: &'static str,
    pub provided: bool,
}

/// Every import of `module`, checked against the host's linker.
fn imports(
    engine: &Engine,
    linker: &Linker<HostState>,
    module: &Module,
    shared: &Arc<PluginShared>,
) -> Vec<ImportInfo> {
    let mut probe = Store::new(engine, HostState::new(Arc::clone(shared)));
    module
        .imports()
        .map(|import| ImportInfo {
            module: import.module().to_string(),
            name: import.name().to_string(),
            kind: kind_name(&import.ty()),
            provided: linker
                .get(&mut probe, import.module(), import.name())
                .is_ok(),
        })
        .collect()
}

/// What `portcullis plugin check` shows of a module before it is loaded.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    /// The Proxy-Wasm ABI it declares, or why it cannot be run.
    pub abi: Result<AbiVersion, String>,
    pub imports: Vec<ImportInfo>,
    /// Exports: name and kind.
    pub exports: Vec<(String, &'static str)>,
    /// The memory it exports or imports: minimum and maximum in 64 KiB pages.
    pub memory: Option<(u64, Option<u64>)>,
}

/// Reads a module's interface: imports (each checked against what the host
/// provides, as loading does), exports, the ABI it declares, its memory.
pub fn inspect(bytes: &[u8]) -> Result<ModuleInfo, WasmLoadError> {
    let engine = super::engine::engine().map_err(WasmLoadError::Engine)?;
    let linker = LINKER
        .as_ref()
        .map_err(|e| WasmLoadError::Engine(e.clone()))?;
    let module = parse_module(engine, bytes)?;
    let shared = Arc::new(PluginShared {
        shared_data: super::shared::shared_data("plugin-check"),
        spec: PluginSpec::new("plugin-check"),
        stats: PluginStats::default(),
    });
    let memory = module
        .exports()
        .map(|e| e.ty())
        .chain(module.imports().map(|i| i.ty()))
        .find_map(|t| match t {
            ExternType::Memory(m) => Some((m.minimum(), m.maximum())),
            _ => None,
        });
    Ok(ModuleInfo {
        abi: AbiVersion::detect(&module).map_err(|e| e.to_string()),
        imports: imports(engine, linker, &module, &shared),
        exports: module
            .exports()
            .map(|e| (e.name().to_string(), kind_name(&e.ty())))
            .collect(),
        memory,
    })
}

impl WasmPlugin {
    /// Compiles `bytes` (a binary module, or WAT text) for `spec`: validates,
    /// checks every import is provided and every known export has the ABI's
    /// signature, pre-links, and runs one instance through start-up.
    pub fn compile(bytes: &[u8], spec: PluginSpec) -> Result<WasmPlugin, WasmLoadError> {
        Self::compile_cached(bytes, spec, None)
    }

    /// [`WasmPlugin::compile`], taking the compiled module from `cache`
    /// when it has it (and storing it there when not).
    pub fn compile_cached(
        bytes: &[u8],
        spec: PluginSpec,
        cache: Option<&ModuleCache>,
    ) -> Result<WasmPlugin, WasmLoadError> {
        let plugin = Self::compile_with(bytes, spec, cache)?;
        plugin.check_start()?;
        Ok(plugin)
    }

    /// Like [`WasmPlugin::compile`] but without the start-up run and HTTP-context checks.
    pub fn compile_unchecked(bytes: &[u8], spec: PluginSpec) -> Result<WasmPlugin, WasmLoadError> {
        Self::compile_with(bytes, spec, None)
    }

    fn compile_with(
        bytes: &[u8],
        spec: PluginSpec,
        cache: Option<&ModuleCache>,
    ) -> Result<WasmPlugin, WasmLoadError> {
        let engine = super::engine::engine().map_err(WasmLoadError::Engine)?;
        let linker = LINKER
            .as_ref()
            .map_err(|e| WasmLoadError::Engine(e.clone()))?;
        let module = match cache {
            Some(c) => c.get_or_compile(engine, bytes, || parse_module(engine, bytes))?,
            None => parse_module(engine, bytes)?,
        };
        let abi = AbiVersion::detect(&module)?;
        let shared = Arc::new(PluginShared {
            shared_data: super::shared::shared_data(&spec.vm_id),
            spec,
            stats: PluginStats::default(),
        });
        if let Some(i) = imports(engine, linker, &module, &shared)
            .into_iter()
            .find(|i| !i.provided)
        {
            return Err(WasmLoadError::MissingImport {
                module: i.module,
                name: i.name,
                kind: i.kind,
            });
        }
        if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
            return Err(WasmLoadError::MissingExport("memory"));
        }
        if module.get_export("proxy_on_context_create").is_none() {
            return Err(WasmLoadError::MissingExport("proxy_on_context_create"));
        }
        for (name, params, results) in EXPORTS {
            if let Some(ExternType::Func(ft)) = module.get_export(name)
                && !same(&ft, params, results)
            {
                let found = sig(
                    &ft.params().collect::<Vec<_>>(),
                    &ft.results().collect::<Vec<_>>(),
                );
                return Err(WasmLoadError::BadExport {
                    name: (*name).to_string(),
                    found,
                    expected: sig(params, results),
                });
            }
        }
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| WasmLoadError::Link(format!("{e:#}")))?;
        // Checked once here: plugins without body hooks never make a body wait.
        let exports = |names: [&str; 2]| {
            names
                .iter()
                .any(|n| matches!(module.get_export(n), Some(ExternType::Func(_))))
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(WasmPlugin {
            id,
            pre,
            shared,
            engine,
            abi,
            request_body_hooks: exports(["proxy_on_request_body", "proxy_on_request_trailers"]),
            response_body_hooks: exports(["proxy_on_response_body", "proxy_on_response_trailers"]),
            vm_key: id,
            root_ctx: super::instance::ROOT_ID,
            members: Vec::new(),
        })
    }

    /// A plugin of `spec` running the module `self` was compiled from (the
    /// same bytes: a plugin joining another's VM through `vm_id`), checked
    /// through start-up like [`WasmPlugin::compile`] without compiling again.
    pub fn sibling(&self, spec: PluginSpec) -> Result<WasmPlugin, WasmLoadError> {
        let shared = Arc::new(PluginShared {
            shared_data: super::shared::shared_data(&spec.vm_id),
            spec,
            stats: PluginStats::default(),
        });
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let plugin = WasmPlugin {
            id,
            pre: self.pre.clone(),
            shared,
            engine: self.engine,
            abi: self.abi,
            request_body_hooks: self.request_body_hooks,
            response_body_hooks: self.response_body_hooks,
            vm_key: id,
            root_ctx: super::instance::ROOT_ID,
            members: Vec::new(),
        };
        plugin.check_start()?;
        Ok(plugin)
    }

    /// Makes the plugins of `group` (same module, VM configuration and
    /// limits, checked by the caller) share one VM per worker: root context
    /// 1, 2, ... in order. Then checks that the VM starts with all of them.
    pub fn share_vm(group: &mut [&mut WasmPlugin]) -> Result<(), WasmLoadError> {
        let members: Vec<Arc<PluginShared>> = group.iter().map(|p| Arc::clone(&p.shared)).collect();
        let Some(key) = group.first().map(|p| p.id) else {
            return Ok(());
        };
        for (root, p) in (super::instance::ROOT_ID..).zip(group.iter_mut()) {
            p.vm_key = key;
            p.root_ctx = root;
            p.members = members.clone();
        }
        if let Some(first) = group.first()
            && members.len() > 1
        {
            // Each plugin started alone; together they share one memory,
            // one set of globals: start them as a worker will.
            PluginInstance::new(first).map_err(|f| {
                WasmLoadError::Start(format!("in the VM shared by {}: {f}", names(&members)))
            })?;
        }
        Ok(())
    }

    /// The names of the other plugins sharing this one's VM (empty if none).
    pub fn vm_siblings(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| !Arc::ptr_eq(m, &self.shared))
            .map(|m| m.spec.name.as_str())
            .collect()
    }

    fn check_start(&self) -> Result<(), WasmLoadError> {
        let mut inst = PluginInstance::new_captured(self)
            .map_err(|(f, lines)| WasmLoadError::Start(format!("{f}{}", logged(&lines))))?;
        // A singleton service (no rule uses it) needs no HTTP context: a
        // root-only module (the Go SDK panics creating one) is fine.
        if self.shared.spec.root_only {
            inst.take_captured();
            return Ok(());
        }
        if !inst.has_http_hooks() {
            return Err(WasmLoadError::NotHttp(
                "the module exports neither proxy_on_request_headers nor proxy_on_response_headers; HTTP rules need an HTTP filter".into(),
            ));
        }
        let ctx = match inst.create_stream(super::instance::ROOT_ID) {
            Ok(ctx) => ctx,
            Err(f) => {
                // What the guest printed says why (a Go SDK module panics).
                let lines = inst.take_captured();
                return Err(WasmLoadError::NotHttp(format!(
                    "the module's root context does not create an HTTP context (creating one failed: {f}{}); a plugin used in HTTP rules must define an HTTP context (proxy_wasm::set_http_context, or a root context whose get_type() is HttpContext); a root-only plugin runs as a singleton service when no rule uses it",
                    logged(&lines)
                )));
            }
        };
        inst.take_captured();
        if inst.probe_stream_context(ctx) {
            return Err(WasmLoadError::NotHttp(
                "the module defines a TCP stream context, not an HTTP context; HTTP rules need an HTTP filter".into(),
            ));
        }
        Ok(())
    }

    /// The engine the plugin was compiled with.
    pub fn engine(&self) -> &'static Engine {
        self.engine
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.shared.spec.name
    }

    /// The plugin's shared state and counters.
    pub fn shared(&self) -> &Arc<PluginShared> {
        &self.shared
    }
}
