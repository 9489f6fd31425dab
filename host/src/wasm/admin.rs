//! The admin API's view of Wasm plugins: one JSON document per plugin for
//! `/plugins` and metric families for `/metrics` (plus the metrics guests
//! define with `proxy_define_metric`).

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Value, json};

use super::{FailureKind, WasmPlugin};

/// The failure kinds a Wasm plugin can have: all but a script error, in stats order.
fn wasm_kinds() -> impl Iterator<Item = FailureKind> {
    FailureKind::ALL
        .into_iter()
        .filter(|k| *k != FailureKind::Script)
}

/// One Wasm plugin's JSON document: limits, memory, calls, failures by kind, rebuilds.
pub fn plugin_json(p: &WasmPlugin) -> Value {
    let sh = p.shared();
    let s = &sh.stats;
    let spec = &sh.spec;
    let failures: serde_json::Map<String, Value> = wasm_kinds()
        .map(|k| (k.name().to_string(), json!(s.failures_of(k))))
        .collect();
    json!({
        "name": p.name(),
        "kind": "wasm",
        "on_error": spec.on_error.as_str(),
        "root_only": spec.root_only,
        "abi": p.abi.as_str(),
        "memory_limit": spec.limits.memory,
        "cpu_limit_us": u64::try_from(spec.limits.cpu.as_micros()).unwrap_or(u64::MAX),
        "vm_id": spec.vm_id,
        "root_id": spec.root_id,
        // Plugins sharing this one's VM (`vm_id`): the VM's memory is
        // reported once, by its first plugin (`memory_in_use` of the others is 0).
        "vm_shared_with": p.vm_siblings(),
        "memory_in_use": s.memory_bytes.load(Relaxed),
        "instances": s.instances_live.load(Relaxed),
        "instances_built": s.instances_built.load(Relaxed),
        "calls": s.calls.load(Relaxed),
        "failures": failures,
        "failed_requests": s.failed_requests.load(Relaxed),
        "bad_host_calls": s.bad_host_calls.load(Relaxed),
        "rebuilds": s.rebuilds.load(Relaxed),
    })
}

pub use crate::metrics::Family;
use crate::metrics::Writer;

fn label(p: &WasmPlugin) -> String {
    crate::metrics::label("plugin", p.name())
}

/// The Wasm plugins' metric families.
pub fn metric_families(plugins: &[std::sync::Arc<WasmPlugin>]) -> Vec<Family> {
    let per = |f: fn(&WasmPlugin) -> u64| -> Vec<(String, u64)> {
        plugins.iter().map(|p| (label(p), f(p))).collect()
    };
    let failures = plugins
        .iter()
        .flat_map(|p| {
            let l = label(p);
            wasm_kinds().map(move |k| {
                (
                    format!("{l},kind=\"{}\"", k.name()),
                    p.shared().stats.failures_of(k),
                )
            })
        })
        .collect();
    vec![
        (
            "portcullis_wasm_plugin_calls_total",
            "counter",
            "Calls into the Wasm plugin's guest code.",
            per(|p| p.shared().stats.calls.load(Relaxed)),
        ),
        (
            "portcullis_wasm_plugin_failures_total",
            "counter",
            "Failed calls into the Wasm plugin, by kind.",
            failures,
        ),
        (
            "portcullis_wasm_plugin_failed_requests_total",
            "counter",
            "Requests handled by the plugin's on_error policy.",
            per(|p| p.shared().stats.failed_requests.load(Relaxed)),
        ),
        (
            "portcullis_wasm_plugin_rebuilds_total",
            "counter",
            "Instances rebuilt after a failure.",
            per(|p| p.shared().stats.rebuilds.load(Relaxed)),
        ),
        (
            "portcullis_wasm_plugin_bad_host_calls_total",
            "counter",
            "Host calls refused for a bad pointer or argument.",
            per(|p| p.shared().stats.bad_host_calls.load(Relaxed)),
        ),
        (
            "portcullis_wasm_plugin_memory_bytes",
            "gauge",
            "Linear memory of the plugin's live instances, all workers.",
            per(|p| p.shared().stats.memory_bytes.load(Relaxed)),
        ),
        (
            "portcullis_wasm_plugin_instances",
            "gauge",
            "Live instances of the plugin (one per worker that used it).",
            per(|p| p.shared().stats.instances_live.load(Relaxed)),
        ),
    ]
}

/// Writes the metrics guests defined (`proxy_define_metric`).
pub fn guest_metrics(out: &mut Writer) {
    super::shared::render_prometheus(out);
}
