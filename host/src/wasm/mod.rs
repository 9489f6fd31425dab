//! WebAssembly filter plugins: a Proxy-Wasm ABI v0.2.1 host on wasmtime,
//! plus portcullis's own versioned host ABI (`portcullis_v1`).
//!
//! - [`engine`]: the one `wasmtime::Engine` (epoch interruption) and its ticker thread.
//! - [`module`]: [`WasmPlugin::compile`]: validate, link, check exports, `InstancePre`.
//! - [`cache`]: the compiled-module cache (`[global] wasm_cache`).
//! - [`memory`]: THE checked guest-memory helper every host call goes through.
//! - [`abi`]: host functions, grouped by area (Proxy-Wasm, WASI preview1, `portcullis_v1`).
//! - [`shared`]: process-wide plugin state: shared data (CAS), shared queues, metrics.
//! - [`instance`]: one per-worker instance: store limits, cached exports, contexts, fail state.
//! - [`filter`]: [`WasmFilter`], the [`crate::filter::Filter`] implementation with
//!   per-worker instances in a thread-local registry, rebuilt with back-off after a failure.
//!
//! Failure stays local: a trap, a memory-limit hit or a CPU deadline kills
//! the instance (never the process); the request gets the plugin's
//! `on_error` handling, the failure is logged and counted, and the next
//! request after a back-off builds a fresh instance from the `InstancePre`.

pub mod abi;
pub mod admin;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod filter;
pub mod grpc;
pub mod host;
pub mod instance;
pub mod memory;
pub mod module;
pub mod shared;
pub mod stick;

/// Backends by name, as the clusters plugins call ([`cluster::Cluster`]).
pub type Clusters = Arc<HashMap<String, Arc<cluster::Cluster>>>;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use filter::WasmFilter;
pub use host::WasmHost;
pub use instance::{FailureKind, PluginInstance};
pub use module::{WasmLoadError, WasmPlugin};
pub use stick::{StickApi, StickFail};

/// Status codes of host calls, numbered as in the Proxy-Wasm ABI v0.2.1 spec.
///
/// SDKs panic on a status they do not expect from a given call, so every
/// host function returns exactly the statuses the spec lists for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    /// The raw value returned to the guest.
    #[inline]
    pub fn raw(self) -> u32 {
        self as u32
    }
}

pub use crate::plugin::OnError;

/// Per-instance resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory one instance may grow to, in bytes.
    pub memory: usize,
    /// CPU time one call into the guest may take (enforced with the epoch
    /// ticker's granularity, [`engine::EPOCH_TICK`]).
    pub cpu: Duration,
    /// Table elements one instance may grow to.
    pub table_elements: usize,
    /// How long a paused request (`Action::Pause`) may wait for the guest to resume it.
    pub pause_timeout: Duration,
    /// Stream contexts one instance keeps alive at most (oldest evicted past it).
    pub max_streams: usize,
    /// Largest body a plugin with a body or trailers hook buffers per request
    /// and direction (default 1 MiB, Envoy's buffer limit); past it: 413 / 502.
    /// 0 turns the hooks off: bodies stream past the plugin.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: 16 << 20,
            cpu: Duration::from_millis(50),
            table_elements: 100_000,
            pause_timeout: Duration::from_secs(10),
            max_streams: 100_000,
            max_body: 1 << 20,
        }
    }
}

/// Everything a Wasm plugin is loaded with.
#[derive(Clone)]
pub struct PluginSpec {
    /// The plugin's name (`plugin_name` property, logs, stats, shared-data scope).
    pub name: String,
    /// The VM it runs in (Envoy's `vm_id`; default: the plugin's name):
    /// plugins with the same one share a VM per worker, and it scopes shared
    /// data and queues (`plugin_vm_id` property).
    pub vm_id: String,
    /// Envoy's `root_id` (`plugin_root_id` property; SDKs such as the C++
    /// one pick the root context to create by it). Default: empty.
    pub root_id: String,
    /// Plugin configuration (`proxy_on_configure`, buffer type 7).
    pub config: Vec<u8>,
    /// VM configuration (`proxy_on_vm_start`, buffer type 6).
    pub vm_config: Vec<u8>,
    /// Resource limits per instance.
    pub limits: Limits,
    /// What requests see while the plugin fails.
    pub on_error: OnError,
    /// The clusters of `proxy_http_call`, `proxy_grpc_call` and
    /// `proxy_grpc_stream`: backend name → its servers.
    pub clusters: Clusters,
    /// Stick tables for `portcullis_v1` and the foreign functions (none: calls return NOT_FOUND).
    pub stick: Option<Arc<dyn StickApi>>,
    /// No rule uses the plugin: it runs as a singleton service (one
    /// instance, on worker 0, as Envoy runs a singleton VM): start-up, ticks,
    /// queues and http calls of its root context, and needs no HTTP context.
    pub root_only: bool,
    /// A root-only plugin runs once for the process (`true`) or once per
    /// worker (`false`).
    pub singleton: bool,
}

impl std::fmt::Debug for PluginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSpec")
            .field("name", &self.name)
            .field("vm_id", &self.vm_id)
            .field("config_len", &self.config.len())
            .field("vm_config_len", &self.vm_config.len())
            .field("limits", &self.limits)
            .field("on_error", &self.on_error)
            .field("root_only", &self.root_only)
            .finish()
    }
}

impl PluginSpec {
    /// A spec with default limits, fail-closed, no configuration.
    pub fn new(name: impl Into<String>) -> PluginSpec {
        let name = name.into();
        PluginSpec {
            vm_id: name.clone(),
            root_id: String::new(),
            name,
            config: Vec::new(),
            vm_config: Vec::new(),
            limits: Limits::default(),
            on_error: OnError::FailClosed,
            clusters: Arc::default(),
            stick: None,
            root_only: false,
            singleton: true,
        }
    }
}
