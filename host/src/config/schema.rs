//! The TOML file as written: serde structs with `deny_unknown_fields`.
//!
//! Names and other values a later check may reject are kept `Spanned`, so a
//! validation error can point at the exact line and column.

use serde::Deserialize;
use toml::Spanned;

use super::units::{ConfigDuration, ConfigSize};

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub global: RawGlobal,
    #[serde(default)]
    pub frontend: Vec<Spanned<RawFrontend>>,
    #[serde(default)]
    pub backend: Vec<Spanned<RawBackend>>,
    #[serde(default)]
    pub plugin: Vec<Spanned<RawPlugin>>,
    #[serde(default)]
    pub stick_table: Vec<Spanned<RawStickTable>>,
    /// `[[mailers]]`: HAProxy's `mailers` sections (see `config/mailers.rs`).
    #[serde(default)]
    pub mailers: Vec<Spanned<super::mailers::RawMailers>>,
    /// `[[resolvers]]`: HAProxy's `resolvers` sections (see `config/resolvers.rs`).
    #[serde(default)]
    pub resolvers: Vec<Spanned<super::resolvers::RawResolvers>>,
    /// `[[peers]]`: HAProxy's `peers` sections (see `config/peers.rs`).
    #[serde(default)]
    pub peers: Vec<Spanned<super::peers::RawPeers>>,
}

/// `[[stick_table]]`: a table of per-key counters that rules, plugins and the admin API share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStickTable {
    pub name: Spanned<String>,
    /// Key type: `ip`, `ipv6`, `integer`, `string` or `binary`.
    #[serde(rename = "type")]
    pub key_type: Spanned<String>,
    /// Key length in bytes for `string` / `binary` keys (default 32).
    pub len: Option<Spanned<i64>>,
    /// Maximum number of entries: an integer or `"100k"` / `"1m"` (HAProxy's 1024 multiples).
    pub size: Spanned<CountSpec>,
    /// Entry lifetime after its last use; absent: entries stay until evicted.
    pub expire: Option<Spanned<ConfigDuration>>,
    /// When full, refuse new keys instead of evicting the oldest ones.
    pub nopurge: Option<bool>,
    /// Stored data, e.g. `["http_req_rate(10s)", "gpc0", "conn_cur"]`.
    #[serde(default)]
    pub store: Vec<Spanned<String>>,
    /// The `[[peers]]` section the table is replicated with (HAProxy's `peers`).
    pub peers: Option<Spanned<String>>,
    /// The table's name on the peers wire (default: `name`): `/<name>` for a
    /// table HAProxy declares inside its `peers` section.
    pub peers_name: Option<Spanned<String>>,
}

/// A count written as an integer or a string with a `k` / `m` / `g` suffix.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "expected an integer or a string with a k, m or g suffix, such as 100000 or \"100k\""
)]
pub enum CountSpec {
    Int(i64),
    Text(String),
}

/// `[[plugin]]`: a Lua script (or, later, a Wasm module) with its limits, referenced by rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: Spanned<String>,
    /// Path of the Lua script, relative to the config file's directory.
    pub lua: Option<Spanned<String>>,
    /// Path of a Wasm (Proxy-Wasm) module, relative to the config file's directory.
    pub wasm: Option<Spanned<String>>,
    /// Plugin configuration handed to a Wasm plugin (reserved for Wasm).
    pub config: Option<Spanned<toml::Value>>,
    /// VM configuration handed to a Wasm plugin (reserved for Wasm).
    pub vm_config: Option<Spanned<toml::Value>>,
    /// A Wasm plugin no rule uses: one instance for the process (`true`, the
    /// default) or one per worker (`false`), as Envoy's `WasmService.singleton`.
    pub singleton: Option<Spanned<bool>>,
    /// Wasm: Envoy's `vm_id`; plugins with the same one share a VM per worker.
    pub vm_id: Option<Spanned<String>>,
    /// Wasm: Envoy's `root_id` (the `plugin_root_id` property).
    pub root_id: Option<Spanned<String>>,
    /// Memory the plugin may use per worker instance.
    pub memory_limit: Option<Spanned<ConfigSize>>,
    /// CPU time one call into the plugin may use.
    pub cpu_limit: Option<ConfigDuration>,
    /// Wasm: the largest body buffered for the plugin's body hooks (0: bodies stream past it).
    pub max_body_size: Option<Spanned<ConfigSize>>,
    /// `fail_open` (the request goes on) or `fail_closed` (500) when the plugin fails.
    pub on_error: Option<Spanned<String>>,
    /// Arguments passed to the script's main chunk (HAProxy's `lua-load FILE ARGS...`).
    pub args: Option<Spanned<Vec<toml::Value>>>,
    /// Lua: `require` search patterns put before `package.path` (HAProxy's
    /// `lua-prepend-path`), relative ones against the config file's directory.
    pub lua_path: Option<Spanned<OneOrMany>>,
}

/// `[global]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlobal {
    /// Worker threads; 0 or absent means one per core.
    pub workers: Option<Spanned<i64>>,
    /// Admin listener: `HOST:PORT`, or a Unix socket (`unix:PATH`, `/PATH`, `./PATH`); absent disables it.
    pub admin: Option<Spanned<String>>,
    // The admin API's access control and limits (validated in `config/admin.rs`).
    /// Bearer token that state-changing admin requests must carry.
    pub admin_token: Option<Spanned<String>>,
    /// File holding the admin token (relative to the config file; trailing newline trimmed).
    pub admin_token_file: Option<Spanned<String>>,
    /// Host names accepted in admin requests' `Host` besides the bind address and `localhost`.
    pub admin_hosts: Option<Vec<Spanned<String>>>,
    /// Most admin connections served at once; beyond it, accepting pauses.
    pub admin_maxconn: Option<Spanned<i64>>,
    /// Unix-socket admin: permission bits as an octal string, e.g. `"0660"`.
    pub admin_socket_mode: Option<Spanned<String>>,
    /// Unix-socket admin: owner, a user name or numeric id.
    pub admin_socket_owner: Option<Spanned<IdSpec>>,
    /// Unix-socket admin: group, a group name or numeric id.
    pub admin_socket_group: Option<Spanned<IdSpec>>,
    /// `[global.admin_timeout]`: the admin connections' timeouts.
    pub admin_timeout: Option<Spanned<RawAdminTimeouts>>,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub grace: Option<ConfigDuration>,
    /// Log filter for the daemon's own logs (`error`, `warn`, `info`, `debug`, `trace`).
    pub log_level: Option<Spanned<String>>,
    /// Access-log format: `text`, `json` or `off`.
    pub access_log: Option<Spanned<String>>,
    // Where access-log lines go and how they read (checked in `config/logs.rs`).
    /// `stderr`, `file:PATH`, `udp://HOST:PORT` or `unix:PATH` (syslog).
    pub access_log_target: Option<Spanned<String>>,
    /// Syslog header: `rfc3164` (HAProxy's default) or `rfc5424`.
    pub syslog_format: Option<Spanned<String>>,
    /// Syslog facility (`local0`..`local7`, `daemon`, ...).
    pub syslog_facility: Option<Spanned<String>>,
    /// Syslog severity of access-log lines (`info`, ...).
    pub syslog_level: Option<Spanned<String>>,
    /// Syslog tag (program name).
    pub syslog_tag: Option<Spanned<String>>,
    /// HAProxy-style custom access-log line for every frontend without its own.
    pub log_format: Option<Spanned<String>>,
    /// Plugin failures of a kind logged in full before the rate limit applies.
    pub plugin_failure_log_burst: Option<Spanned<i64>>,
    /// After the burst, at most one failure line per plugin and kind per this time.
    pub plugin_failure_log_interval: Option<Spanned<ConfigDuration>>,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_size: Option<Spanned<ConfigSize>>,
    /// Most header fields accepted in one request; more gets 431.
    pub max_headers: Option<Spanned<i64>>,
    /// Most client connections open at once over all frontends (HAProxy's
    /// global `maxconn`); absent: derived from the open-file limit.
    pub maxconn: Option<Spanned<i64>>,
    /// Directory for compiled Wasm modules (loaded from there on the next
    /// start instead of compiled again); absent: no cache.
    pub wasm_cache: Option<Spanned<String>>,
    /// HTTP/1.1 client to servers: `"native"` (the worker's own codec) or `"hyper"`.
    pub http1_client: Option<Spanned<String>>,
    /// HTTP/1 server for clients: `"native"` (the worker's own codec) or `"hyper"`.
    pub http1_server: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout: RawTimeouts,
}

/// `[global.admin_timeout]`: admin connections are bounded in every phase.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminTimeouts {
    /// Time to receive a complete request head (from accept, or from its first byte).
    pub http_request: Option<Spanned<ConfigDuration>>,
    /// Idle time between requests on a keep-alive admin connection.
    pub keep_alive: Option<Spanned<ConfigDuration>>,
    /// Total time for one request: head, body, handling and writing the response.
    pub request: Option<Spanned<ConfigDuration>>,
}

/// A user or group: a name, or a numeric id (as an integer or a string of digits).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "expected a user or group name, or a numeric id")]
pub enum IdSpec {
    Id(i64),
    Name(String),
}

/// `[global.timeout]` (and a backend's `timeout` table, which may set `connect`/`server`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect to a server.
    pub connect: Option<ConfigDuration>,
    /// Client inactivity while sending a request body.
    pub client: Option<ConfigDuration>,
    /// Server inactivity: waiting for response headers or body data.
    pub server: Option<ConfigDuration>,
    /// Time allowed to receive a complete request head (HAProxy `timeout http-request`).
    pub http_request: Option<ConfigDuration>,
    /// Idle time allowed between requests on a keep-alive connection.
    pub keep_alive: Option<ConfigDuration>,
    /// Inactivity allowed both ways once a TCP-mode connection is spliced
    /// to its server (HAProxy's `timeout tunnel`); absent: `client`/`server`.
    pub tunnel: Option<ConfigDuration>,
    /// Longest wait in a backend's queue for a server under its `maxconn`
    /// (HAProxy's `timeout queue`); absent: the `connect` timeout.
    pub queue: Option<ConfigDuration>,
}

/// `[[frontend]]`: a set of listening addresses and the rules applied to their traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrontend {
    pub name: Spanned<String>,
    pub bind: Spanned<OneOrMany>,
    pub default_backend: Option<Spanned<String>>,
    /// `"http"` (the default) or `"tcp"`: a TCP frontend splices bytes to a
    /// server after its `tcp_request` rules (HAProxy's `mode tcp`).
    pub mode: Option<Spanned<String>>,
    /// HAProxy's `tcp-request content` rules (TCP frontends only).
    #[serde(default)]
    pub tcp_request: Vec<Spanned<RawRule>>,
    /// How long `tcp_request` rules may wait for client data (HAProxy's
    /// `tcp-request inspect-delay`); absent: they see what is there at once.
    pub inspect_delay: Option<Spanned<ConfigDuration>>,
    /// HAProxy's `tcp-response content` rules, on the server's data (TCP frontends only).
    #[serde(default)]
    pub tcp_response: Vec<Spanned<RawRule>>,
    /// How long `tcp_response` rules may wait for server data (HAProxy's
    /// `tcp-response inspect-delay`); absent: they see the first data.
    pub response_inspect_delay: Option<Spanned<ConfigDuration>>,
    /// Most client connections open at once on this frontend; absent: the global `maxconn`.
    pub maxconn: Option<Spanned<i64>>,
    /// HAProxy's `option forwardfor` (and the proto header): add
    /// `X-Forwarded-For` / `X-Forwarded-Proto` upstream; absent: true.
    pub forwardfor: Option<bool>,
    /// Answer gRPC requests the proxy itself answers (deny, errors) with
    /// HTTP 200 + `grpc-status` (Envoy's gRPC local replies).
    pub grpc_local_replies: Option<bool>,
    #[serde(default)]
    pub http_request: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub http_response: Vec<Spanned<RawRule>>,
    /// HAProxy's `http-after-response`: rules on every response sent, the
    /// proxy's own answers (deny, return, redirect, error pages) included.
    #[serde(default)]
    pub http_after_response: Vec<Spanned<RawRule>>,
    /// HAProxy-style custom access-log line for this frontend.
    pub log_format: Option<Spanned<String>>,
    /// HAProxy's `filter lua.NAME [args]`: stream filters, in order.
    #[serde(default)]
    pub filters: Vec<Spanned<RawFilter>>,
    /// Metadata every `wasm` rule of the frontend sees (a rule's own wins):
    /// filter name → values, as Envoy's `filter_metadata`.
    pub metadata: Option<Spanned<toml::Table>>,
    /// HAProxy's `errorfile`: status → a file holding a whole HTTP response.
    pub errorfiles: Option<Spanned<ErrorMap<String>>>,
    /// HAProxy's `http-error`: status → a reply (`body`, `content_type`, `headers`).
    pub error_replies: Option<Spanned<ErrorMap<RawErrorReply>>>,
    /// HTTPS: certificates and TLS settings of the binds (see `config/tls.rs`).
    pub tls: Option<Spanned<super::tls::RawTlsBind>>,
    /// HTTP/1.1 `Upgrade` protocols forwarded to servers (`config/tunnels.rs`);
    /// absent: `["websocket"]`, `[]`: none.
    pub upgrades: Option<Spanned<Vec<Spanned<String>>>>,
    /// `CONNECT` forward tunnels to the destinations listed; absent: 405.
    pub connect: Option<Spanned<super::tunnels::RawConnect>>,
}

/// One `filters` entry of a frontend: `{ lua = "name", args = [...] }`
/// (HAProxy's `filter lua.name args...`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilter {
    /// The name a script gave `core.register_filter`.
    pub lua: Option<Spanned<String>>,
    /// Arguments handed to the registration function (as strings).
    pub args: Option<Spanned<Vec<toml::Value>>>,
}

/// Error pages by status (`errorfiles`, `error_replies` of a frontend or backend).
pub type ErrorMap<T> = std::collections::BTreeMap<String, Spanned<T>>;

/// One `error_replies` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawErrorReply {
    #[serde(default)]
    pub body: String,
    pub content_type: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, Spanned<String>>,
}

/// A string or a list of strings (e.g. `bind = "127.0.0.1:80"` or `bind = ["a", "b"]`).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a slice-like list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// `[[backend]]`: a pool of servers and how to choose among them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub name: Spanned<String>,
    pub balance: Option<Spanned<String>>,
    #[serde(default)]
    pub server: Vec<Spanned<RawServer>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// Overrides of `connect` and `server` timeouts for this backend.
    pub timeout: Option<Spanned<RawTimeouts>>,
    /// Idle keep-alive connections kept per server per worker.
    pub max_idle_per_server: Option<Spanned<i64>>,
    /// HAProxy's `errorfile`: status → a file holding a whole HTTP response.
    pub errorfiles: Option<Spanned<ErrorMap<String>>>,
    /// HAProxy's `http-error`: status → a reply (`body`, `content_type`, `headers`).
    pub error_replies: Option<Spanned<ErrorMap<RawErrorReply>>>,
    /// TLS to the servers (see `config/tls.rs`); a server's own `tls` wins.
    pub tls: Option<Spanned<super::tls::RawTlsUpstream>>,
    /// `"h2"`: HTTP/2 to the servers (HAProxy's `proto h2`; `config/h2.rs`).
    pub proto: Option<Spanned<String>>,
    /// HTTP/2 connection settings (`config/h2.rs`).
    pub h2: Option<Spanned<super::h2::RawH2>>,
    /// HAProxy's `email-alert` keywords (see `config/mailers.rs`).
    pub email_alert: Option<Spanned<super::mailers::RawEmailAlert>>,
    /// HAProxy's `tcp-response content` rules, run when a TCP frontend uses this backend.
    #[serde(default)]
    pub tcp_response: Vec<Spanned<RawRule>>,
    /// How long this backend's `tcp_response` rules may wait for server data.
    pub response_inspect_delay: Option<Spanned<ConfigDuration>>,
}

/// One `server` entry of a backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: Spanned<String>,
    pub addr: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
    /// Set to false to exclude this server from the backend's health check.
    pub check: Option<bool>,
    /// TLS to this server, replacing the backend's `tls`.
    pub tls: Option<Spanned<super::tls::RawTlsUpstream>>,
    /// `"h2"` or `"http/1.1"`, replacing the backend's `proto`.
    pub proto: Option<Spanned<String>>,
    /// Most requests served at once (HAProxy's server `maxconn`); more wait
    /// in the backend's queue. Absent or 0: no limit.
    pub maxconn: Option<Spanned<i64>>,
}

/// Active HTTP health check for a backend's servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    /// Host header sent with the check (default: the server address).
    pub host: Option<String>,
    /// Spanned: a too short interval is reported at the value.
    pub interval: Option<Spanned<ConfigDuration>>,
    pub timeout: Option<ConfigDuration>,
    /// Consecutive successes needed to mark a down server up.
    pub rise: Option<Spanned<i64>>,
    /// Consecutive failures needed to mark an up server down.
    pub fall: Option<Spanned<i64>>,
    /// Accepted statuses, e.g. `"2xx"`, `"200"`, `"200-399"` (default `"200-399"`).
    pub expect: Option<Spanned<String>>,
}

/// `deny = true` or `deny = 429`.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "expected true, or the HTTP status to answer with, such as 403 or 429"
)]
pub enum DenySpec {
    Flag(bool),
    Status(i64),
}

/// One entry of `http_request` / `http_response`: exactly one action key plus its modifiers.
///
/// Every action is a field here so that serde rejects unknown keys; the rules
/// compiler checks that exactly one action is present and that each modifier
/// belongs to it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Condition: apply the rule only when it holds.
    #[serde(rename = "if")]
    pub cond_if: Option<Spanned<String>>,
    /// Condition: apply the rule only when it does not hold.
    pub unless: Option<Spanned<String>>,

    /// `return = 200`: answer directly with this status.
    #[serde(rename = "return")]
    pub return_status: Option<Spanned<i64>>,
    /// With `return`: the body (a log-format string, `%[fetch]` interpolated).
    pub body: Option<Spanned<String>>,
    /// With `return`: the Content-Type header.
    pub content_type: Option<Spanned<String>>,
    /// With `return`/`deny`/`redirect`: extra response headers.
    pub headers: Option<Spanned<toml::value::Table>>,

    /// `deny = true` (403) or `deny = 429`.
    pub deny: Option<Spanned<DenySpec>>,
    /// `accept = true` (`tcp_request` only): stop the rules, forward the connection.
    pub accept: Option<Spanned<bool>>,
    /// `reject = true` (`tcp_request` only): close the connection.
    pub reject: Option<Spanned<bool>>,
    /// `close = true` (`tcp_response` only): close the server connection
    /// once what it sent so far reached the client.
    pub close: Option<Spanned<bool>>,

    /// `redirect = "https://example.com%[path]"`: Location (log-format).
    pub redirect: Option<Spanned<String>>,
    /// `redirect_prefix = "https://example.com"`: prefix prepended to the request path.
    pub redirect_prefix: Option<Spanned<String>>,
    /// `redirect_scheme = "https"`: same host and path, another scheme.
    pub redirect_scheme: Option<Spanned<String>>,
    /// With a redirect: 301, 302 (default), 303, 307 or 308.
    pub code: Option<Spanned<i64>>,

    /// `set_header = "X-Name", value = "..."`: replace all values of a header.
    pub set_header: Option<Spanned<String>>,
    /// `add_header = "X-Name", value = "..."`: append a header value.
    pub add_header: Option<Spanned<String>>,
    /// `del_header = "X-Name"`: remove a header.
    pub del_header: Option<Spanned<String>>,
    /// `set_path = "/new%[path]"`: rewrite the request path (request phase only).
    pub set_path: Option<Spanned<String>>,
    /// `set_status = 404`: rewrite the response status (response phase only).
    pub set_status: Option<Spanned<i64>>,

    /// `set_var = "txn.name"` with `value` (log-format) or `expr` (fetch expression).
    pub set_var: Option<Spanned<String>>,
    /// `unset_var = "txn.name"`.
    pub unset_var: Option<Spanned<String>>,

    /// `set_dst = "<expr>"`: the connection's destination IP (`dst`) from a fetch expression.
    pub set_dst: Option<Spanned<String>>,
    /// `set_dst_port = "<expr>"`: the destination port.
    pub set_dst_port: Option<Spanned<String>>,
    /// `set_src = "<expr>"`: the client's IP as rules, logs and `X-Forwarded-For` see it.
    pub set_src: Option<Spanned<String>>,
    /// `set_src_port = "<expr>"`: the client's port.
    pub set_src_port: Option<Spanned<String>>,
    /// `do_resolve = "txn.ip"` with `expr` (the name) and `resolvers`, `family`:
    /// HAProxy's `do-resolve(<var>,<resolvers>[,ipv4|ipv6]) <expr>`.
    pub do_resolve: Option<Spanned<String>>,
    /// The `[[resolvers]]` section a `do_resolve` asks (default `"default"`).
    pub resolvers: Option<Spanned<String>>,
    /// The family a `do_resolve` asks for first: `"ipv6"` (default) or `"ipv4"`.
    pub family: Option<Spanned<String>>,

    /// Value of `set_header` / `add_header` / `set_var` (log-format string).
    pub value: Option<Spanned<String>>,
    /// Fetch expression for `set_var` (e.g. `"hdr(host),lower"`).
    pub expr: Option<Spanned<String>>,

    /// `use_backend = "api"` or `use_backend = "%[hdr(x-backend)]"`.
    pub use_backend: Option<Spanned<String>>,

    /// `lua = "cors"`: run the Lua action a plugin registered under this name.
    pub lua: Option<Spanned<String>>,
    /// With `lua`: the action's arguments (strings; numbers and booleans are converted).
    pub args: Option<Spanned<Vec<toml::Value>>>,
    /// `use_service = "lua.hello"`: answer the request with a Lua HTTP service.
    pub use_service: Option<Spanned<String>>,
    /// `wasm = "hmac_auth"`: run a Wasm plugin's HTTP filter (in `http_request`
    /// it sees the response too, as an Envoy filter does).
    pub wasm: Option<Spanned<String>>,
    /// Envoy's route metadata for a `wasm` rule: filter name → values, read by
    /// the plugin as `route_metadata.filter_metadata.<name>...`.
    pub metadata: Option<Spanned<toml::Table>>,

    /// `wait_for_body = "1s"`: buffer the request body (until its end or
    /// `at_least` bytes) before the next rules, as HAProxy's `wait-for-body`.
    pub wait_for_body: Option<Spanned<String>>,
    /// With `wait_for_body`: stop waiting once this many bytes arrived (`"1k"`).
    pub at_least: Option<Spanned<String>>,

    /// `track_sc0 = "src"`: track the key this fetch expression yields in stick counter 0.
    pub track_sc0: Option<Spanned<String>>,
    /// `track_sc1 = "hdr(x-api-key)"`: stick counter 1.
    pub track_sc1: Option<Spanned<String>>,
    /// `track_sc2 = "path"`: stick counter 2.
    pub track_sc2: Option<Spanned<String>>,
    /// With `track_scN`: the stick table (optional when only one is declared).
    pub table: Option<Spanned<String>>,
    /// `sc_inc_gpc = [idx, sc]`: increment gpc `idx` of stick counter `sc`.
    pub sc_inc_gpc: Option<Spanned<Vec<i64>>>,
    /// `sc_clr_gpc = [idx, sc]`: reset gpc `idx` of stick counter `sc` to 0.
    pub sc_clr_gpc: Option<Spanned<Vec<i64>>>,
    /// `sc_set_gpt = [idx, sc]` with `value` or `expr`: set gpt `idx` of stick counter `sc`.
    pub sc_set_gpt: Option<Spanned<Vec<i64>>>,
}
