//! [`LuaHost`]: the Lua plugins as a [`PluginHost`]: the `lua` action,
//! `use_service = "lua.<name>"`, `lua.<name>` fetches and converters,
//! `core.register_task` tasks per worker, `/plugins` documents (with the
//! run-time memory limit) and metric families.

use serde_json::Value;

use super::Plugins;
use crate::config::ConfigError;
use crate::config::schema::RawRule;
use crate::filter::Filter;
use crate::metrics::Writer;
use crate::plugin::{PluginHost, RuleExtension};
use crate::rules::fetch::{Call, Converter, Fetch};
use crate::rules::{Env, ParseError, RuleEnv};

/// The config's Lua plugins, each loaded and checked once at load.
#[derive(Debug, Default)]
pub struct LuaHost {
    pub plugins: Plugins,
}

impl RuleExtension for LuaHost {
    fn kind(&self) -> &'static str {
        "lua"
    }

    fn action(&self, raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
        super::rules::build_action(&self.plugins, raw, re)
    }

    fn service(&self, name: &str, _re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, String> {
        super::rules::build_service(&self.plugins, name)
    }

    fn tcp_action(&self, raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
        super::rules::build_tcp_action(&self.plugins, raw, re)
    }

    fn tcp_service(&self, name: &str, _re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, String> {
        super::applet_tcp::build(&self.plugins, name)
    }

    fn fetch(&self, c: &Call<'_>, env: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
        super::rules::build_fetch(&self.plugins, c, env)
    }

    fn converter(&self, c: &Call<'_>, _env: &Env<'_>) -> Result<Box<dyn Converter>, ParseError> {
        super::rules::build_converter(&self.plugins, c)
    }
}

impl PluginHost for LuaHost {
    /// `core.register_task` functions run in every worker, as with lua-load-per-thread.
    fn start_worker(&self, worker: usize) {
        super::task::start_worker(&self.plugins.list, worker);
    }

    fn stop_worker(&self) {
        let ids: Vec<u64> = self.plugins.list.iter().map(|p| p.id).collect();
        super::runtime::clear_worker(&ids);
    }

    fn admin_documents(&self) -> Vec<(String, Value)> {
        self.plugins
            .list
            .iter()
            .map(|p| (p.name.to_string(), super::admin::plugin_json(p)))
            .collect()
    }

    fn set_memory_limit(&self, name: &str, bytes: usize) -> Option<Result<Value, String>> {
        let p = self.plugins.by_name(name)?;
        p.set_memory_limit(bytes);
        Some(Ok(super::admin::plugin_json(p)))
    }

    fn metrics(&self, out: &mut Writer) {
        for (name, kind, help, samples) in super::admin::metric_families(&self.plugins.list) {
            out.family(name, kind, help, samples);
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn attach_process(&self, source: std::sync::Weak<dyn crate::plugin::ProcessSource>) {
        for p in &self.plugins.list {
            // Set once per runtime; a second daemon on the same runtime keeps the first.
            let _ = p.process.set(std::sync::Weak::clone(&source));
        }
    }
}
