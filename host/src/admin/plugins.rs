//! `GET /plugins`: per plugin, memory in use and peak, calls, errors by kind
//! (runtime, OOM, timeout), rebuilds and what the script registered.
//! `POST /plugins/<name>/limits?memory_limit=<bytes>`: changes a plugin's
//! memory limit at run time (every worker applies it before its next call).

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use crate::config::Config;
use crate::lua::Plugin;

/// One plugin's JSON document.
fn plugin_json(p: &Plugin) -> Value {
    let s = &p.stats;
    let r = &p.registered;
    json!({
        "name": &*p.name,
        "kind": "lua",
        "path": p.path.display().to_string(),
        "on_error": p.on_error.as_str(),
        "memory_limit": s.memory_limit.load(Relaxed),
        "cpu_limit_us": u64::try_from(p.cpu_limit.as_micros()).unwrap_or(u64::MAX),
        "memory_in_use": s.memory_in_use.load(Relaxed),
        "memory_peak": s.memory_peak.load(Relaxed),
        "instances": s.instances.load(Relaxed),
        "calls": s.calls.load(Relaxed),
        "errors": {
            "runtime": s.errors_runtime.load(Relaxed),
            "oom": s.errors_oom.load(Relaxed),
            "timeout": s.errors_timeout.load(Relaxed),
        },
        "rebuilds": s.rebuilds.load(Relaxed),
        "registered": {
            "actions": r.actions.iter().map(|a| {
                let mut phases = Vec::new();
                if a.request { phases.push("http-req"); }
                if a.response { phases.push("http-res"); }
                json!({ "name": a.name, "phases": phases })
            }).collect::<Vec<_>>(),
            "fetches": r.fetches,
            "converters": r.converters,
            "services": r.services,
            "inits": r.inits,
            "tasks": r.tasks,
        },
    })
}

/// The `/plugins` document.
pub fn plugins_json(config: &Config) -> Value {
    let lua = config.plugins.iter().map(|p| plugin_json(p));
    let wasm = config
        .wasm_plugins
        .iter()
        .map(|p| crate::wasm::admin::plugin_json(p));
    json!({ "plugins": lua.chain(wasm).collect::<Vec<_>>() })
}

/// Handles `/plugins` and `/plugins/<name>/limits`; `None` for other paths.
pub fn route(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    config: &Config,
) -> Option<(http::StatusCode, Value)> {
    use http::StatusCode;
    if path == "/plugins" {
        if method != http::Method::GET && method != http::Method::HEAD {
            return Some((
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": format!("{method} is not allowed on /plugins; use GET")}),
            ));
        }
        return Some((StatusCode::OK, plugins_json(config)));
    }
    let rest = path.strip_prefix("/plugins/")?;
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(p) = config.plugins.iter().find(|p| &*p.name == name) else {
        if let Some(w) = config.wasm_plugins.iter().find(|p| p.name() == name)
            && method == http::Method::GET
            && tail.is_empty()
        {
            return Some((StatusCode::OK, crate::wasm::admin::plugin_json(w)));
        }
        return Some((
            StatusCode::NOT_FOUND,
            json!({"error": format!("no plugin {name:?}")}),
        ));
    };
    match (method, tail) {
        (&http::Method::GET, "") => Some((StatusCode::OK, plugin_json(p))),
        (&http::Method::POST, "limits") => {
            let value = query
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("memory_limit="));
            let Some(bytes) = value.and_then(|v| crate::config::units::parse_size(v).ok()) else {
                return Some((
                    StatusCode::BAD_REQUEST,
                    json!({"error": "give the new limit as ?memory_limit=<bytes or size like 8MiB>"}),
                ));
            };
            if bytes == 0 || bytes > 4 << 30 {
                return Some((
                    StatusCode::BAD_REQUEST,
                    json!({"error": "memory_limit must be between 1 byte and 4GiB"}),
                ));
            }
            p.set_memory_limit(usize::try_from(bytes).unwrap_or(usize::MAX));
            Some((StatusCode::OK, plugin_json(p)))
        }
        _ => Some((
            StatusCode::NOT_FOUND,
            json!({"error": format!("no admin endpoint {method} {path}"), "endpoints": ["GET /plugins", "GET /plugins/<name>", "POST /plugins/<name>/limits?memory_limit=<size>"]}),
        )),
    }
}

pub use super::metrics::Family;

/// The plugins' metric families.
pub fn metric_families(config: &Config) -> Vec<Family> {
    let label = |p: &Plugin| super::metrics::label("plugin", &p.name);
    let per = |f: fn(&Plugin) -> u64| -> Vec<(String, u64)> {
        config.plugins.iter().map(|p| (label(p), f(p))).collect()
    };
    let errors: Vec<(String, u64)> = config
        .plugins
        .iter()
        .flat_map(|p| {
            let l = label(p);
            let s = &p.stats;
            [
                (
                    format!("{l},kind=\"runtime\""),
                    s.errors_runtime.load(Relaxed),
                ),
                (format!("{l},kind=\"oom\""), s.errors_oom.load(Relaxed)),
                (
                    format!("{l},kind=\"timeout\""),
                    s.errors_timeout.load(Relaxed),
                ),
            ]
        })
        .collect();
    vec![
        (
            "portcullis_plugin_calls_total",
            "counter",
            "Calls into the plugin.",
            per(|p| p.stats.calls.load(Relaxed)),
        ),
        (
            "portcullis_plugin_errors_total",
            "counter",
            "Failed plugin calls, by kind (runtime, oom, timeout).",
            errors,
        ),
        (
            "portcullis_plugin_rebuilds_total",
            "counter",
            "Plugin states rebuilt from the script after a failure.",
            per(|p| p.stats.rebuilds.load(Relaxed)),
        ),
        (
            "portcullis_plugin_memory_bytes",
            "gauge",
            "Memory the plugin's states use, all workers.",
            per(|p| p.stats.memory_in_use.load(Relaxed)),
        ),
        (
            "portcullis_plugin_memory_peak_bytes",
            "gauge",
            "Largest memory use seen in one of the plugin's states.",
            per(|p| p.stats.memory_peak.load(Relaxed)),
        ),
        (
            "portcullis_plugin_memory_limit_bytes",
            "gauge",
            "Memory limit of each of the plugin's states.",
            per(|p| p.stats.memory_limit.load(Relaxed)),
        ),
    ]
}
