//! [`WasmHost`]: the Wasm plugins as a [`PluginHost`]: `{ wasm = "<plugin>" }`
//! rules, per-worker instances (built at worker start, ticked and rebuilt by
//! housekeeping), `/plugins` documents and metric families.

use std::sync::Arc;

use serde_json::Value;

use super::WasmPlugin;
use crate::config::ConfigError;
use crate::config::schema::RawRule;
use crate::filter::Filter;
use crate::metrics::Writer;
use crate::plugin::{PluginHost, RuleExtension};
use crate::rules::RuleEnv;

/// The config's Wasm plugins, compiled and started once at load.
#[derive(Debug, Default)]
pub struct WasmHost {
    pub plugins: Vec<Arc<WasmPlugin>>,
}

impl RuleExtension for WasmHost {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn action(&self, raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
        super::config::build_action(&self.plugins, raw, re)
    }
}

impl PluginHost for WasmHost {
    fn start_worker(&self, worker: usize) {
        super::filter::start_worker(&self.plugins, worker);
    }

    fn housekeeping(&self) {
        super::filter::housekeeping(&self.plugins);
    }

    fn stop_worker(&self) {
        super::filter::clear_worker(&self.plugins);
    }

    fn admin_documents(&self) -> Vec<(String, Value)> {
        self.plugins
            .iter()
            .map(|p| (p.name().to_string(), super::admin::plugin_json(p)))
            .collect()
    }

    fn metrics(&self, out: &mut Writer) {
        for (name, kind, help, samples) in super::admin::metric_families(&self.plugins) {
            out.family(name, kind, help, samples);
        }
        super::admin::guest_metrics(out);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
