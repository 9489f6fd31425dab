//! The admin API's view of Lua plugins: one JSON document per plugin for
//! `/plugins` and metric families for `/metrics`.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use super::{FailureKind, Plugin};
use crate::metrics::Family;

/// One plugin's JSON document.
pub fn plugin_json(p: &Plugin) -> Value {
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
            "runtime": s.errors.get(FailureKind::Script),
            "oom": s.errors.get(FailureKind::MemoryLimit),
            "timeout": s.errors.get(FailureKind::CpuLimit),
        },
        "rebuilds": s.rebuilds.load(Relaxed),
        "registered": {
            "actions": r.actions.iter().map(|a| {
                let mut phases = Vec::new();
                if a.request { phases.push("http-req"); }
                if a.response { phases.push("http-res"); }
                if a.tcp { phases.push("tcp-req"); }
                if a.tcp_res { phases.push("tcp-res"); }
                json!({ "name": a.name, "phases": phases })
            }).collect::<Vec<_>>(),
            "fetches": r.fetches,
            "converters": r.converters,
            "services": r.services,
            "tcp_services": r.tcp_services,
            "filters": r.filters,
            "inits": r.inits,
            "tasks": r.tasks,
        },
    })
}

/// The plugins' metric families.
pub fn metric_families(plugins: &[std::sync::Arc<Plugin>]) -> Vec<Family> {
    let label = |p: &Plugin| crate::metrics::label("plugin", &p.name);
    let per = |f: fn(&Plugin) -> u64| -> Vec<(String, u64)> {
        plugins.iter().map(|p| (label(p), f(p))).collect()
    };
    let errors: Vec<(String, u64)> = plugins
        .iter()
        .flat_map(|p| {
            let l = label(p);
            let s = &p.stats;
            [
                (
                    format!("{l},kind=\"runtime\""),
                    s.errors.get(FailureKind::Script),
                ),
                (
                    format!("{l},kind=\"oom\""),
                    s.errors.get(FailureKind::MemoryLimit),
                ),
                (
                    format!("{l},kind=\"timeout\""),
                    s.errors.get(FailureKind::CpuLimit),
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
