//! portcullis: an HTTP reverse proxy daemon extended with Lua and WebAssembly filter plugins.
//!
//! Module map (see `docs/ARCHITECTURE.md`):
//! - [`config`]: the TOML schema, loading and validation with located errors.
//! - [`txn`]: the per-request transaction filters work on.
//! - [`error`]: the one error model: failure sources → statuses → HAProxy's pages.
//! - [`filter`]: the one filter trait and the per-frontend chain.
//! - [`plugin`]: the plugin layer: the `PluginHost` contract, `OnError`, back-off, per-worker slots.
//! - [`runtime`]: the assembly step: a validated spec → tables, plugin hosts, chains.
//! - [`metrics`]: the one Prometheus text writer.
//! - [`lua`]: Lua plugins (HAProxy's Lua API), one state per plugin per worker.
//! - [`rules`]: config rules (conditions, fetches, converters, actions) as filters.
//! - [`proxy`]: workers, listeners, the request flow, upstream pools, balancing, health checks.
//! - [`stick`]: stick tables (per-key counters and rates), their expiry task and host-function API.
//! - [`wasm`]: Wasm plugins (Proxy-Wasm ABI v0.2.1 + `portcullis_v1`), one instance per plugin per worker.
//! - [`harness`]: a test harness for plugins without the daemon (fake request, fake server, canned upstreams).
//! - [`admin`]: the admin listener (`/health`, `/stats`, `/metrics`, `/tables`, `/plugins`) and its access policy.

pub mod admin;
pub mod channel;
pub mod cli;
pub mod config;
pub mod error;
pub mod filter;
pub mod harness;
pub mod logging;
pub mod lua;
pub mod metrics;
pub mod peers;
pub mod plugin;
pub mod proxy;
pub mod resolve;
pub mod rules;
pub mod runtime;
pub mod servers;
pub mod stick;
pub mod tls;
pub mod txn;
pub mod wasm;
