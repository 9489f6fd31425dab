//! Loading `[[plugin]]` entries with `wasm = "module.wasm"` and compiling
//! `{ wasm = "<plugin>" }` rules.
//!
//! Each module is compiled once at load and run through start-up in a
//! throwaway instance, so an invalid module, a missing import, or a plugin
//! whose `proxy_on_vm_start` / `proxy_on_configure` returns false is a
//! config error with the entry's location.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::{Limits, OnError, PluginSpec, WasmFilter, WasmPlugin};
use crate::config::schema::{RawPlugin, RawRule};
use crate::config::{Backend, ConfigError, SourceMap};
use crate::filter::Filter;
use crate::rules::RuleEnv;

/// Loads every `[[plugin]]` that has `wasm =` (the others are Lua's).
/// `used` names the plugins some `{ wasm = "<name>" }` rule runs; the
/// others are singleton services (see [`PluginSpec::root_only`]).
#[allow(clippy::too_many_arguments)] // the assembly step's inputs, each used once
pub fn load_plugins(
    raw: &[Spanned<RawPlugin>],
    source: &SourceMap,
    (backends, live): (&[Backend], Option<crate::servers::Backends>),
    tables: Option<Arc<dyn super::StickApi>>,
    pause_timeout: Duration,
    used: &HashSet<String>,
    code: &mut crate::plugin::code::CodeFiles,
    cache: Option<&super::cache::ModuleCache>,
) -> Result<Vec<Arc<WasmPlugin>>, ConfigError> {
    let clusters: super::Clusters = Arc::new(
        backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                super::cluster::Cluster::of_backend(i, b, live.clone())
                    .map(|c| (b.name.to_string(), Arc::new(c)))
            })
            .collect(),
    );
    let mut out: Vec<WasmPlugin> = Vec::new();
    let mut vms: Vec<Vm<'_>> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let p = p.get_ref();
        let Some(wasm) = &p.wasm else { continue };
        let name = p.name.get_ref();
        // Lua's loader checks names among Lua plugins; names are unique across both kinds.
        if let Some(other) = raw
            .iter()
            .enumerate()
            .find(|(j, q)| *j != i && q.get_ref().name.get_ref() == name)
        {
            let span = if other.0 > i {
                other.1.get_ref().name.span()
            } else {
                p.name.span()
            };
            return Err(source.error(
                span,
                format!("duplicate plugin name {name:?}; every plugin needs a unique name"),
            ));
        }
        let (spec, path) = prepare(
            p,
            wasm,
            source,
            &clusters,
            tables.clone(),
            pause_timeout,
            !used.contains(name),
        )?;
        // Read once the entry is known good (a per-plugin reload takes other plugins' kept copies).
        let bytes = code.read(name, &path).map_err(|e| {
            source.error(
                wasm.span(),
                format!(
                    "plugin {name:?}: cannot read Wasm module {}: {e}",
                    path.display()
                ),
            )
        })?;
        let load_err = |e: super::WasmLoadError| {
            source.error(
                wasm.span(),
                format!("plugin {name:?}: cannot load {}: {e}", path.display()),
            )
        };
        // A singleton service runs on worker 0 only, apart from the VMs of
        // every worker (Envoy's main-thread VM): the same vm_id shares its
        // data and queues but not its VM.
        let key = (spec.vm_id.clone(), spec.root_only && spec.singleton);
        match vms.iter_mut().find(|v| v.key == key) {
            Some(Vm {
                members,
                bytes: first_bytes,
                first,
                ..
            }) => {
                let Some(lead) = members.first().and_then(|i| out.get(*i)) else {
                    return Err(source.error(p.name.span(), "internal error: empty VM group"));
                };
                let same = (&bytes[..], &spec);
                same_vm(
                    (p, same),
                    (first, (first_bytes, &lead.shared().spec)),
                    source,
                )?;
                let plugin = lead.sibling(spec).map_err(load_err)?;
                members.push(out.len());
                out.push(plugin);
            }
            None => {
                let plugin = WasmPlugin::compile_cached(&bytes, spec, cache).map_err(load_err)?;
                vms.push(Vm {
                    key,
                    members: vec![out.len()],
                    bytes,
                    first: p,
                });
                out.push(plugin);
            }
        }
    }
    for Vm { members, first, .. } in &vms {
        if members.len() < 2 {
            continue;
        }
        let mut group: Vec<&mut WasmPlugin> = out
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| members.contains(i))
            .map(|(_, p)| p)
            .collect();
        WasmPlugin::share_vm(&mut group).map_err(|e| {
            let span = first.wasm.as_ref().map_or(first.name.span(), Spanned::span);
            source.error(span, e.to_string())
        })?;
    }
    Ok(out.into_iter().map(Arc::new).collect())
}

/// Plugins whose `vm_id` (and placement) put them in one VM.
struct Vm<'a> {
    /// The vm id, and whether the VM runs as a singleton service.
    key: (String, bool),
    /// Indexes of its plugins in the loaded list, in config order.
    members: Vec<usize>,
    /// The first plugin's module bytes and entry.
    bytes: Arc<[u8]>,
    first: &'a RawPlugin,
}

/// Checks that plugin `p` may join the VM of `first` (Envoy's VM key: the
/// same module and VM configuration; here also the same CPU and memory
/// limits, which are the VM's); the error names both plugins.
fn same_vm(
    (p, (bytes, spec)): (&RawPlugin, (&[u8], &PluginSpec)),
    (first, (first_bytes, lead)): (&RawPlugin, (&[u8], &PluginSpec)),
    source: &SourceMap,
) -> Result<(), ConfigError> {
    let what = if bytes != first_bytes {
        Some("module (`wasm`)".to_string())
    } else if spec.vm_config != lead.vm_config {
        Some("`vm_config`".to_string())
    } else if spec.limits.memory != lead.limits.memory {
        Some(format!(
            "`memory_limit` ({} vs {} bytes; the limit is the VM's)",
            spec.limits.memory, lead.limits.memory
        ))
    } else if spec.limits.cpu != lead.limits.cpu {
        Some(format!(
            "`cpu_limit` ({:?} vs {:?}; the limit is the VM's)",
            spec.limits.cpu, lead.limits.cpu
        ))
    } else {
        None
    };
    let Some(what) = what else {
        return Ok(());
    };
    let span = p.vm_id.as_ref().map_or(p.name.span(), Spanned::span);
    Err(source.error(
        span,
        format!(
            "plugins {:?} and {:?} share the VM {:?} but differ in their {what}; plugins with the same vm_id run one VM and must have the same module, vm_config, memory_limit and cpu_limit (give one of them another vm_id)",
            first.name.get_ref(),
            p.name.get_ref(),
            spec.vm_id
        ),
    ))
}

/// A `config` / `vm_config` value as the plugin receives it: a string as its
/// bytes, anything else as JSON (Envoy hands the plugin a JSON serialization).
fn config_bytes(v: &Option<Spanned<toml::Value>>) -> Vec<u8> {
    match v.as_ref().map(Spanned::get_ref) {
        None => Vec::new(),
        Some(toml::Value::String(s)) => s.as_bytes().to_vec(),
        Some(other) => serde_json::to_vec(other).unwrap_or_default(),
    }
}

/// Checks a `[[plugin]]` entry with `wasm =`: the plugin's spec and the
/// module's path (read by the caller).
fn prepare(
    p: &RawPlugin,
    wasm: &Spanned<String>,
    source: &SourceMap,
    clusters: &super::Clusters,
    tables: Option<Arc<dyn super::StickApi>>,
    pause_timeout: Duration,
    root_only: bool,
) -> Result<(PluginSpec, std::path::PathBuf), ConfigError> {
    let name = p.name.get_ref();
    if let Some(l) = &p.lua {
        return Err(source.error(
            l.span(),
            format!("plugin {name:?} has both `lua` and `wasm`; a plugin is one or the other"),
        ));
    }
    if let Some(a) = &p.args {
        return Err(source.error(
            a.span(),
            "`args` is for Lua plugins; a Wasm plugin takes its settings from `config`",
        ));
    }
    if let Some(l) = &p.lua_path {
        return Err(source.error(
            l.span(),
            "`lua_path` is the `require` path of Lua plugins; a Wasm module links its libraries in",
        ));
    }
    // A paused request waits for the plugin as long as it would for a server.
    let mut limits = Limits {
        pause_timeout,
        ..Limits::default()
    };
    if let Some(m) = &p.memory_limit {
        let n = m.get_ref().0;
        if !(64 << 10..=4u64 << 30).contains(&n) {
            return Err(source.error(
                m.span(),
                format!("memory_limit of a Wasm plugin must be between 64KiB (one page) and 4GiB, got {n} bytes"),
            ));
        }
        limits.memory = usize::try_from(n).unwrap_or(usize::MAX);
    }
    if let Some(c) = p.cpu_limit {
        if c.0 < Duration::from_millis(1) || c.0 > Duration::from_secs(60) {
            return Err(source.error(
                p.name.span(),
                format!(
                    "plugin {name:?}: cpu_limit must be between 1ms and 60s, got {:?}",
                    c.0
                ),
            ));
        }
        limits.cpu = c.0;
    }
    if let Some(m) = &p.max_body_size {
        let n = m.get_ref().0;
        if n > 64 << 20 {
            return Err(source.error(
                m.span(),
                format!("max_body_size of a Wasm plugin must be at most 64MiB (0 turns body hooks off), got {n} bytes"),
            ));
        }
        limits.max_body = usize::try_from(n).unwrap_or(usize::MAX);
    }
    let on_error = match &p.on_error {
        Some(s) => match s.get_ref().as_str() {
            "fail_open" => OnError::FailOpen,
            "fail_closed" => OnError::FailClosed,
            other => {
                return Err(source.error(
                    s.span(),
                    format!("unknown on_error {other:?}; expected \"fail_open\" (the request goes on) or \"fail_closed\" (500)"),
                ));
            }
        },
        None => OnError::FailOpen,
    };
    let path = crate::config::resolve_path(source.file(), wasm.get_ref());
    let singleton = match &p.singleton {
        Some(s) if !root_only => {
            return Err(source.error(
                s.span(),
                format!(
                    "plugin {name:?}: `singleton` applies to a plugin no rule uses (a service); this one runs as a filter in every worker"
                ),
            ));
        }
        Some(s) => *s.get_ref(),
        None => true,
    };
    let vm_id = match &p.vm_id {
        Some(v) if v.get_ref().is_empty() => {
            return Err(source.error(
                v.span(),
                format!("plugin {name:?}: vm_id must not be empty; leave it out for a VM of the plugin's own (vm_id = its name)"),
            ));
        }
        Some(v) => v.get_ref().clone(),
        None => name.clone(),
    };
    let spec = PluginSpec {
        name: name.clone(),
        vm_id,
        root_id: p
            .root_id
            .as_ref()
            .map(|r| r.get_ref().clone())
            .unwrap_or_default(),
        config: config_bytes(&p.config),
        vm_config: config_bytes(&p.vm_config),
        limits,
        on_error,
        clusters: Arc::clone(clusters),
        stick: tables,
        root_only,
        singleton,
    };
    Ok((spec, path))
}

/// Builds a `{ wasm = "<plugin>" }` rule.
pub fn build_action(
    plugins: &[Arc<WasmPlugin>],
    raw: &RawRule,
    re: &RuleEnv<'_>,
) -> Result<Box<dyn Filter>, ConfigError> {
    let Some(name) = &raw.wasm else {
        return Err(re.error(re.span.clone(), "internal error: `wasm` missing"));
    };
    let Some(p) = plugins.iter().find(|p| p.name() == name.get_ref()) else {
        let known: Vec<&str> = plugins.iter().map(|p| p.name()).collect();
        let hint = crate::rules::suggest(name.get_ref(), known.iter().copied())
            .map(crate::rules::did_you_mean)
            .unwrap_or_default();
        let list = if known.is_empty() {
            "; no Wasm plugin is declared (add [[plugin]] with wasm = \"module.wasm\")".to_string()
        } else {
            format!("; declared Wasm plugins: {}", known.join(", "))
        };
        return Err(re.error(
            name.span(),
            format!("no Wasm plugin {:?}{hint}{list}", name.get_ref()),
        ));
    };
    let metadata = raw
        .metadata
        .as_ref()
        .map(|m| crate::config::metadata(re.source, m))
        .transpose()?;
    Ok(Box::new(WasmFilter::new(
        Arc::clone(p),
        re.env.phase,
        metadata,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spanned(v: toml::Value) -> Option<Spanned<toml::Value>> {
        Some(Spanned::new(0..0, v))
    }

    #[test]
    fn config_is_raw_bytes_or_json() {
        assert_eq!(config_bytes(&None), b"");
        assert_eq!(
            config_bytes(&spanned(toml::Value::String("a=b c".into()))),
            b"a=b c"
        );
        let t: toml::Value = toml::from_str("header = \"x-sig\"\nn = 3").expect("toml");
        let json: serde_json::Value =
            serde_json::from_slice(&config_bytes(&spanned(t))).expect("json");
        assert_eq!(json, serde_json::json!({"header": "x-sig", "n": 3}));
    }
}
