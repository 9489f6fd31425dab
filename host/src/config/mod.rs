//! Configuration: the TOML schema, loading, and validation into a plain [`Spec`].
//!
//! [`load`] reads a file, deserializes it with `deny_unknown_fields`, then
//! checks every cross-reference and value. The result is data only: rules,
//! plugins and stick tables stay as written (with their locations) for the
//! assembly step (`crate::runtime`), which builds the live tables, plugin
//! hosts and filter chains from it and reports their errors with the same
//! `file:line:col`. Nothing here starts or registers anything, so a spec can
//! be built again (a reload) while the running one serves.

pub mod admin;
pub mod diag;
mod errors;
pub mod h2;
pub mod logs;
pub mod mailers;
pub mod peers;
pub mod resolvers;
pub mod schema;
pub mod stick;
pub mod tls;
pub mod tunnels;
pub mod units;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use toml::Spanned;

pub use diag::{ConfigError, ConfigWarning, Location, SourceMap};

/// Envoy's `filter_metadata`: filter name → a table of values (JSON-like).
pub type Metadata = std::sync::Arc<serde_json::Map<String, serde_json::Value>>;

/// Checks a `metadata` table (every entry a table, as Envoy's
/// `filter_metadata` holds a struct per filter) and converts it.
pub fn metadata(source: &SourceMap, m: &Spanned<toml::Table>) -> Result<Metadata, ConfigError> {
    let mut out = serde_json::Map::new();
    for (name, v) in m.get_ref() {
        if !v.is_table() {
            return Err(source.error(
                m.span(),
                format!(
                    "metadata: `{name}` must be a table of that filter's values (metadata = {{ {name} = {{ key = \"value\" }} }}), got {}",
                    v.type_str()
                ),
            ));
        }
        let json = serde_json::to_value(v)
            .map_err(|e| source.error(m.span(), format!("metadata: `{name}`: {e}")))?;
        out.insert(name.clone(), json);
    }
    Ok(std::sync::Arc::new(out))
}
use schema::{RawBackend, RawConfig, RawFrontend, RawHealthCheck, RawTimeouts};

/// A validated configuration, as data: what the assembly step builds the running daemon from.
#[derive(Debug)]
pub struct Spec {
    pub source: SourceMap,
    pub global: Global,
    pub frontends: Vec<Frontend>,
    pub backends: Vec<Backend>,
    /// `[[plugin]]` entries as written; each plugin host checks its own.
    pub plugins: Vec<Spanned<schema::RawPlugin>>,
    /// `[[stick_table]]` entries as written (checked by [`stick::build`] at assembly).
    pub stick_tables: Vec<Spanned<schema::RawStickTable>>,
    /// `[[resolvers]]` sections by name (`default` always there), for `do_resolve` rules.
    pub resolvers: HashMap<String, Arc<resolvers::ResolversSpec>>,
}

/// Access-log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    Json,
    Off,
}

/// Process-wide settings.
#[derive(Debug, Clone)]
pub struct Global {
    /// Number of worker threads (resolved: never 0).
    pub workers: usize,
    /// The admin API (`admin*` keys), if `admin` is set.
    pub admin: Option<admin::Admin>,
    /// Valid settings that are probably mistakes (`check` prints them, `run` logs them).
    pub warnings: Vec<ConfigWarning>,
    pub grace: Duration,
    pub log_level: String,
    pub access_log: AccessLogFormat,
    /// Where access-log lines go, the syslog header, the failure-line limit.
    pub logs: logs::LogSettings,
    /// `[global] log_format` as written (compiled at assembly).
    pub log_format: Option<Spanned<String>>,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// Global `maxconn`; `None`: derived from the open-file limit at start-up.
    pub maxconn: Option<usize>,
    /// `wasm_cache` as written (opened by the assembly step, relative to the
    /// config file, when some plugin is a Wasm module).
    pub wasm_cache: Option<Spanned<String>>,
    pub timeouts: Timeouts,
    /// `[[peers]]` sections (replication of stick tables; restart-only).
    pub peers: Vec<Arc<peers::Section>>,
    /// Which HTTP/1.1 client speaks to servers (`http1_client`).
    pub http1_client: Http1Client,
    /// Which HTTP/1 server serves clients (`http1_server`).
    pub http1_server: Http1Server,
}

/// `[global] http1_server`: how client HTTP/1 connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Server {
    /// The worker's own codec (`proxy/server_h1.rs`): heads parsed with
    /// httparse into a reused buffer, bodies read straight from the socket.
    Native,
    /// hyper's server connection (`proxy/conn.rs`). The default until the
    /// native path costs fewer instructions per request (bench/README.md).
    #[default]
    Hyper,
}

/// `[global] http1_client`: how requests go to HTTP/1.1 servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Http1Client {
    /// The worker's own codec (`proxy/upstream_h1.rs`): no channel or second
    /// task per connection. Upgrades (WebSocket) still go through hyper.
    #[default]
    Native,
    /// hyper's client connection with its driver task (`proxy/pool.rs`).
    Hyper,
}

/// Resolved timeouts (see [`schema::RawTimeouts`] for their meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub client: Duration,
    pub server: Duration,
    pub http_request: Duration,
    pub keep_alive: Duration,
    /// HAProxy's `timeout tunnel`; `None`: the client and server timeouts apply.
    pub tunnel: Option<Duration>,
    /// HAProxy's `timeout queue`; `None`: the connect timeout applies.
    pub queue: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            client: Duration::from_secs(30),
            server: Duration::from_secs(30),
            http_request: Duration::from_secs(10),
            keep_alive: Duration::from_secs(60),
            tunnel: None,
            queue: None,
        }
    }
}

/// A listening address and where it was declared.
#[derive(Debug, Clone)]
pub struct Bind {
    pub addr: SocketAddr,
    pub location: Location,
    /// Connections to this address start with a TLS handshake (the frontend's `tls`).
    pub tls: bool,
}

/// A validated frontend.
#[derive(Debug)]
pub struct Frontend {
    pub name: Arc<str>,
    pub binds: Vec<Bind>,
    /// Index into [`Config::backends`].
    pub default_backend: Option<usize>,
    /// This frontend's `maxconn`; `None`: only the global limit applies.
    pub maxconn: Option<usize>,
    /// Add `X-Forwarded-For` / `X-Forwarded-Proto` to requests sent upstream.
    pub forwardfor: bool,
    /// Local replies to gRPC requests are gRPC answers (HTTP 200 +
    /// `grpc-status`, `grpc-message`), as Envoy sends them.
    pub grpc_local_replies: bool,
    /// `http_request` rules as written (compiled into the chain at assembly).
    pub http_request: Vec<Spanned<schema::RawRule>>,
    /// `http_response` rules as written.
    pub http_response: Vec<Spanned<schema::RawRule>>,
    /// `http_after_response` rules as written.
    pub http_after_response: Vec<Spanned<schema::RawRule>>,
    /// `log_format` as written (compiled at assembly; else the global one).
    pub log_format: Option<Spanned<String>>,
    /// `filters` as written (built by the plugin host at assembly).
    pub filters: Vec<Spanned<schema::RawFilter>>,
    /// `metadata`, checked: what its `wasm` rules read as route metadata.
    pub metadata: Option<Metadata>,
    /// `errorfiles` / `error_replies`: pages replacing the default ones.
    pub errors: crate::error::ErrorPages,
    /// `mode = "tcp"`: bytes are spliced to a server after `tcp_request`.
    pub tcp: bool,
    /// `tcp_request` rules as written (TCP frontends).
    pub tcp_request: Vec<Spanned<schema::RawRule>>,
    /// `inspect_delay`: how long `tcp_request` rules may wait for data.
    pub inspect_delay: Duration,
    /// `tcp_response` rules as written (TCP frontends).
    pub tcp_response: Vec<Spanned<schema::RawRule>>,
    /// `response_inspect_delay`: how long `tcp_response` rules may wait for server data.
    pub response_inspect_delay: Duration,
    /// `tls`: the certificates its TLS binds serve (swappable on reload).
    pub tls: Option<Arc<crate::tls::server::Acceptor>>,
    /// `upgrades` and `connect`: which tunnels requests may open.
    pub tunnels: tunnels::Tunnels,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    Source,
}

/// A validated backend.
#[derive(Debug)]
pub struct Backend {
    pub name: Arc<str>,
    pub balance: Balance,
    pub servers: Vec<Server>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    pub server_timeout: Duration,
    /// HAProxy's `timeout tunnel` for TCP-mode connections to this backend.
    pub tunnel_timeout: Option<Duration>,
    /// Longest wait in the queue for a server under its `maxconn`
    /// (HAProxy's `timeout queue`, else the connect timeout).
    pub queue_timeout: Duration,
    pub max_idle_per_server: usize,
    /// HTTP/2 connection settings for its `proto = "h2"` servers (`h2 = { ... }`).
    pub h2: h2::H2Settings,
    /// `tcp_response` rules as written (run for TCP frontends using this backend).
    pub tcp_response: Vec<Spanned<schema::RawRule>>,
    /// `response_inspect_delay`: how long they may wait for server data.
    pub response_inspect_delay: Duration,
    /// `errorfiles` / `error_replies`; win over the frontend's after routing.
    pub errors: crate::error::ErrorPages,
    /// HAProxy's `email-alert` settings (read by Lua's `Proxy:get_mailers()`).
    pub email_alert: Option<Arc<mailers::EmailAlert>>,
}

/// A validated server.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: Arc<str>,
    pub addr: SocketAddr,
    /// The address as written (used as the Host of health checks).
    pub addr_text: String,
    pub weight: u32,
    /// Whether the backend's health check applies to this server.
    pub check: bool,
    /// TLS to this server (its own `tls`, else the backend's).
    pub tls: Option<Arc<crate::tls::client::Upstream>>,
    /// Most requests served at once (HAProxy's `maxconn`); 0: no limit.
    pub maxconn: u32,
    /// Parts of the address taken from the connection's destination (`dst`,
    /// which `set_dst`/`set_dst_port` rules change): HAProxy's `0.0.0.0`,
    /// port 0 and `+N`/`-N` ports.
    pub dest: ServerDest,
    /// HTTP/1.1, HTTP/2, or what TLS's ALPN settles (`proto`, `tls.alpn`).
    pub proto: h2::UpstreamProto,
}

/// Which parts of a server's address follow the connection's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerDest {
    /// The address was `0.0.0.0`, `::` or `*`: connect to the destination's IP.
    pub ip: bool,
    /// The port: as written, the destination's, or the destination's moved by an offset.
    pub port: DestPort,
}

/// A server's port as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DestPort {
    /// A fixed port (the one in `Server::addr`).
    #[default]
    Fixed,
    /// No port or port 0: the destination's port.
    Same,
    /// `+N` / `-N`: the destination's port plus N (wrapping, as HAProxy's 16-bit sum).
    Offset(i32),
}

impl Server {
    /// Whether any part of the address comes from the connection's destination.
    pub fn follows_dst(&self) -> bool {
        self.dest != ServerDest::default()
    }

    /// The address to connect to for a connection whose destination is `dst`.
    pub fn target(&self, dst: SocketAddr) -> SocketAddr {
        if !self.follows_dst() {
            return self.addr;
        }
        let ip = if self.dest.ip {
            dst.ip()
        } else {
            self.addr.ip()
        };
        let port = match self.dest.port {
            DestPort::Fixed => self.addr.port(),
            DestPort::Same => dst.port(),
            DestPort::Offset(n) => (i32::from(dst.port()).wrapping_add(n)) as u16,
        };
        SocketAddr::new(ip, port)
    }
}

/// Active HTTP health-check settings.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub method: Method,
    pub path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Accepted status ranges, inclusive.
    pub expect: Vec<(u16, u16)>,
}

impl HealthCheck {
    /// Whether `status` counts as a passing check.
    pub fn accepts(&self, status: u16) -> bool {
        self.expect
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl Spec {
    /// Index of the backend called `name`.
    pub fn backend_index(&self, name: &str) -> Option<usize> {
        self.backends.iter().position(|b| &*b.name == name)
    }
}

/// What loading should check beyond the file itself (`crate::runtime::load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindCheck {
    /// Try to bind every listener address once and report one already in use.
    Probe,
    /// Skip (the caller binds for real and reports failures itself).
    Skip,
}

/// Reads, parses and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Spec, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read config file: {e}")))?;
    parse(path, &text)
}

/// Parses and validates config `text` that came from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Spec, ConfigError> {
    let source = SourceMap::new(path, text);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = diag::humanize(e.message().trim());
        match e.span() {
            Some(span) => source.error(span, message),
            None => ConfigError::file(path, message),
        }
    })?;
    let validator = Validator { source: &source };
    let (global, frontends, backends) = validator.validate(&raw)?;
    let resolvers = validator.resolvers(&raw.resolvers)?;
    Ok(Spec {
        source,
        global,
        frontends,
        backends,
        plugins: raw.plugin,
        stick_tables: raw.stick_table,
        resolvers,
    })
}

struct Validator<'a> {
    source: &'a SourceMap,
}

/// Converts a spanned integer into a bounded type with a located error.
fn ranged<T: TryFrom<i64>>(
    source: &SourceMap,
    v: &Spanned<i64>,
    what: &str,
    lo: i64,
    hi: i64,
) -> Result<T, ConfigError> {
    let n = *v.get_ref();
    if n < lo || n > hi {
        return Err(source.error(
            v.span(),
            format!("{what} must be between {lo} and {hi}, got {n}"),
        ));
    }
    T::try_from(n).map_err(|_| source.error(v.span(), format!("{what} out of range: {n}")))
}

impl Validator<'_> {
    fn validate(
        &self,
        raw: &RawConfig,
    ) -> Result<(Global, Vec<Frontend>, Vec<Backend>), ConfigError> {
        let mut global = self.global(&raw.global)?;
        let mailer_sections = self.mailers(&raw.mailers)?;
        global.peers = peers::build(&raw.peers, self.source)?;
        peers::check_tables(&raw.stick_table, &global.peers, self.source)?;

        let mut backend_ids: HashMap<String, usize> = HashMap::new();
        let mut backends = Vec::with_capacity(raw.backend.len());
        for (i, b) in raw.backend.iter().enumerate() {
            let name = b.get_ref().name.get_ref();
            if backend_ids.insert(name.clone(), i).is_some() {
                return Err(self.source.error(
                    b.get_ref().name.span(),
                    format!("duplicate backend name {name:?}; every backend needs a unique name"),
                ));
            }
            let mut backend = self.backend(b.get_ref(), &global.timeouts)?;
            if let Some(e) = &b.get_ref().email_alert {
                backend.email_alert = Some(Arc::new(mailers::email_alert(
                    self.source,
                    e.get_ref(),
                    &mailer_sections,
                )?));
            }
            backends.push(backend);
        }

        let mut frontend_names: HashMap<String, ()> = HashMap::new();
        let mut seen_binds: HashMap<SocketAddr, Location> = HashMap::new();
        let mut frontends = Vec::with_capacity(raw.frontend.len());
        for f in &raw.frontend {
            let f = f.get_ref();
            let name = f.name.get_ref();
            if frontend_names.insert(name.clone(), ()).is_some() {
                return Err(self.source.error(
                    f.name.span(),
                    format!("duplicate frontend name {name:?}; every frontend needs a unique name"),
                ));
            }
            let fe = self.frontend(f, &backend_ids)?;
            for b in &fe.binds {
                if let Some(prev) = seen_binds.insert(b.addr, b.location.clone()) {
                    return Err(ConfigError::at(
                        &b.location,
                        format!(
                            "address {} is already bound by the frontend declared at {prev}",
                            b.addr
                        ),
                    ));
                }
            }
            frontends.push(fe);
        }
        if let Some(admin::AdminListen::Tcp(admin)) = global.admin.as_ref().map(|a| &a.listen)
            && seen_binds.contains_key(admin)
        {
            let span = raw.global.admin.as_ref().map_or(0..0, |a| a.span());
            return Err(self.source.error(
                span,
                format!("admin address {admin} is also a frontend bind address"),
            ));
        }

        Ok((global, frontends, backends))
    }

    fn global(&self, g: &schema::RawGlobal) -> Result<Global, ConfigError> {
        let src = self.source;
        let workers = match &g.workers {
            Some(w) => ranged::<usize>(src, w, "workers", 0, 1024)?,
            None => 0,
        };
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            workers
        };
        let mut warnings = Vec::new();
        let admin = self.admin(g, &mut warnings)?;
        let log_level = match &g.log_level {
            Some(l) => {
                let v = l.get_ref().to_ascii_lowercase();
                if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                    return Err(src.error(
                        l.span(),
                        format!(
                            "unknown log_level {:?}; expected error, warn, info, debug or trace",
                            l.get_ref()
                        ),
                    ));
                }
                v
            }
            None => "info".to_string(),
        };
        let access_log = match &g.access_log {
            Some(a) => match a.get_ref().as_str() {
                "text" => AccessLogFormat::Text,
                "json" => AccessLogFormat::Json,
                "off" => AccessLogFormat::Off,
                other => {
                    return Err(src.error(
                        a.span(),
                        format!("unknown access_log format {other:?}; expected \"text\", \"json\" or \"off\""),
                    ));
                }
            },
            None => AccessLogFormat::Text,
        };
        let max_header_size = match &g.max_header_size {
            Some(s) => {
                let n = s.get_ref().0;
                if !(8192..=16 << 20).contains(&n) {
                    return Err(src.error(
                        s.span(),
                        format!("max_header_size must be between 8KiB and 16MiB, got {n} bytes"),
                    ));
                }
                n as usize
            }
            None => 64 << 10,
        };
        let max_headers = match &g.max_headers {
            Some(n) => ranged::<usize>(src, n, "max_headers", 1, 10_000)?,
            None => 100,
        };
        let maxconn = match &g.maxconn {
            Some(n) => Some(ranged::<usize>(src, n, "maxconn", 1, 1 << 24)?),
            None => None,
        };
        let http1_client = match &g.http1_client {
            Some(c) => match c.get_ref().as_str() {
                "native" => Http1Client::Native,
                "hyper" => Http1Client::Hyper,
                other => {
                    return Err(src.error(
                        c.span(),
                        format!("unknown http1_client {other:?}; expected \"native\" or \"hyper\""),
                    ));
                }
            },
            None => Http1Client::default(),
        };
        let http1_server = match &g.http1_server {
            Some(c) => match c.get_ref().as_str() {
                "native" => Http1Server::Native,
                "hyper" => Http1Server::Hyper,
                other => {
                    return Err(src.error(
                        c.span(),
                        format!("unknown http1_server {other:?}; expected \"native\" or \"hyper\""),
                    ));
                }
            },
            None => Http1Server::default(),
        };
        let timeouts = merge_timeouts(&Timeouts::default(), &g.timeout);
        Ok(Global {
            workers,
            admin,
            warnings,
            grace: g.grace.map_or(Duration::from_secs(10), |d| d.0),
            log_level,
            access_log,
            logs: logs::settings(src, g)?,
            log_format: g.log_format.clone(),
            max_header_size,
            max_headers,
            maxconn,
            wasm_cache: g.wasm_cache.clone(),
            timeouts,
            peers: Vec::new(),
            http1_client,
            http1_server,
        })
    }

    /// A server address: `HOST:PORT`, or HAProxy's forms that follow the
    /// connection's destination: `0.0.0.0`/`::`/`*` for its IP, no port or
    /// port 0 for its port, `+N`/`-N` for its port moved by N.
    fn server_addr(&self, s: &Spanned<String>) -> Result<(SocketAddr, ServerDest), ConfigError> {
        let text = s.get_ref().trim();
        // Split off the port: the text after the last ':' unless it is a bare IPv6 address.
        let (host, port) = match text.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => (h, Some(p)),
            _ if text.starts_with('[') || text.parse::<std::net::Ipv6Addr>().is_ok() => {
                (text, None)
            }
            Some(("", p)) => ("*", Some(p)),
            _ => (text, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let any_ip = host == "*" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified());
        let bad = |why: &str| {
            self.source.error(
                s.span(),
                format!("invalid server address {text:?}: {why}; expected HOST:PORT (e.g. \"127.0.0.1:8080\"), or \"0.0.0.0:0\" / \"*\" / \"0.0.0.0:+1000\" to follow each connection's destination (set_dst, set_dst_port)"),
            )
        };
        let dest_port = match port {
            None | Some("") => DestPort::Same,
            Some(p) if p.starts_with('+') || p.starts_with('-') => {
                let n: i32 = p
                    .parse()
                    .map_err(|_| bad("the port offset is not a number"))?;
                if !(-65535..=65535).contains(&n) {
                    return Err(bad("the port offset must be within -65535..+65535"));
                }
                DestPort::Offset(n)
            }
            Some(p) => match p.parse::<u16>() {
                Ok(0) => DestPort::Same,
                Ok(_) => DestPort::Fixed,
                Err(_) => return Err(bad("the port is not a number from 0 to 65535")),
            },
        };
        let dest = ServerDest {
            ip: any_ip,
            port: dest_port,
        };
        if dest == ServerDest::default() {
            return Ok((self.socket_addr(s, "server address")?, dest));
        }
        let fixed_port = match (dest_port, port) {
            (DestPort::Fixed, Some(p)) => p.parse::<u16>().unwrap_or(0),
            _ => 0,
        };
        let ip = if any_ip {
            if host.contains(':') {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            }
        } else {
            let with_port = if host.contains(':') {
                format!("[{host}]:{}", fixed_port)
            } else {
                format!("{host}:{}", fixed_port)
            };
            let probe = Spanned::new(s.span(), with_port);
            self.socket_addr(&probe, "server address")?.ip()
        };
        Ok((SocketAddr::new(ip, fixed_port), dest))
    }

    fn socket_addr(&self, s: &Spanned<String>, what: &str) -> Result<SocketAddr, ConfigError> {
        let text = s.get_ref();
        if let Ok(a) = text.parse::<SocketAddr>() {
            return Ok(a);
        }
        if !text.contains(':') {
            return Err(self.source.error(
                s.span(),
                format!("invalid {what} {text:?}: expected HOST:PORT, e.g. \"127.0.0.1:8080\""),
            ));
        }
        match text.to_socket_addrs() {
            Ok(mut addrs) => addrs.next().ok_or_else(|| {
                self.source.error(
                    s.span(),
                    format!("invalid {what} {text:?}: host resolves to no address"),
                )
            }),
            Err(e) => Err(self.source.error(
                s.span(),
                format!(
                    "invalid {what} {text:?}: {e}; expected HOST:PORT, e.g. \"127.0.0.1:8080\""
                ),
            )),
        }
    }

    fn frontend(
        &self,
        f: &RawFrontend,
        backends: &HashMap<String, usize>,
    ) -> Result<Frontend, ConfigError> {
        let name = f.name.get_ref();
        self.check_name(&f.name, "frontend")?;
        let addrs = f.bind.get_ref().to_vec();
        if addrs.is_empty() {
            return Err(self
                .source
                .error(f.bind.span(), "bind must list at least one address"));
        }
        let mut binds = Vec::with_capacity(addrs.len());
        for a in addrs {
            // Individual list items carry no span of their own; point at the `bind` value.
            let spanned = Spanned::new(f.bind.span(), a);
            let addr = self.socket_addr(&spanned, "bind address")?;
            binds.push(Bind {
                addr,
                location: self.source.location(f.bind.span().start),
                tls: false,
            });
        }
        // The mode first: it decides which settings apply (a TCP frontend's `tls` is refused before its files are read).
        let tcp = self.frontend_mode(f)?;
        let tls = match &f.tls {
            // Refused before its files are read (below, with the other TCP checks).
            Some(_) if f.mode.as_ref().is_some_and(|m| m.get_ref() == "tcp") => None,
            Some(t) => {
                let (acceptor, which) = tls::bind(self.source, t, &|a| {
                    self.socket_addr(a, "tls.binds address")
                })?;
                if let (Some(which), Some(b)) = (&which, &t.get_ref().binds)
                    && let Some(stray) = which.iter().find(|a| !binds.iter().any(|x| x.addr == **a))
                {
                    return Err(self.source.error(
                        b.span(),
                        format!("tls.binds lists {stray}, which is not one of this frontend's bind addresses"),
                    ));
                }
                for b in &mut binds {
                    b.tls = which.as_ref().is_none_or(|w| w.contains(&b.addr));
                }
                Some(acceptor)
            }
            None => None,
        };
        let default_backend = match &f.default_backend {
            Some(b) => Some(*backends.get(b.get_ref()).ok_or_else(|| {
                self.source.error(
                    b.span(),
                    format!(
                        "default_backend {:?} is not a declared backend{}",
                        b.get_ref(),
                        known(backends)
                    ),
                )
            })?),
            None => None,
        };
        let maxconn = match &f.maxconn {
            Some(n) => Some(ranged::<usize>(self.source, n, "maxconn", 1, 1 << 24)?),
            None => None,
        };
        Ok(Frontend {
            name: Arc::from(name.as_str()),
            binds,
            default_backend,
            maxconn,
            forwardfor: f.forwardfor.unwrap_or(true),
            grpc_local_replies: f.grpc_local_replies.unwrap_or(false),
            http_request: f.http_request.clone(),
            http_response: f.http_response.clone(),
            http_after_response: f.http_after_response.clone(),
            log_format: f.log_format.clone(),
            filters: f.filters.clone(),
            metadata: f
                .metadata
                .as_ref()
                .map(|m| metadata(self.source, m))
                .transpose()?,
            errors: errors::error_pages(
                self.source,
                f.errorfiles.as_ref(),
                f.error_replies.as_ref(),
            )?,
            tcp,
            tcp_request: f.tcp_request.clone(),
            inspect_delay: f
                .inspect_delay
                .as_ref()
                .map_or(Duration::ZERO, |d| d.get_ref().0),
            tcp_response: f.tcp_response.clone(),
            response_inspect_delay: self.inspect_delay(f.response_inspect_delay.as_ref())?,
            tls,
            tunnels: tunnels::tunnels(self.source, f.upgrades.as_ref(), f.connect.as_ref())?,
        })
    }

    /// `mode`: true for `"tcp"`; HTTP-only keys on a TCP frontend and
    /// TCP-only keys on an HTTP one are errors at the key.
    fn frontend_mode(&self, f: &RawFrontend) -> Result<bool, ConfigError> {
        let tcp = match &f.mode {
            None => false,
            Some(m) => match m.get_ref().as_str() {
                "http" => false,
                "tcp" => true,
                other => {
                    return Err(self.source.error(
                        m.span(),
                        format!("unknown mode {other:?}; expected \"http\" or \"tcp\""),
                    ));
                }
            },
        };
        let first = |rules: &[Spanned<schema::RawRule>]| rules.first().map(|r| r.span());
        if tcp {
            let http_only = [
                ("http_request", first(&f.http_request)),
                ("http_response", first(&f.http_response)),
                ("http_after_response", first(&f.http_after_response)),
                ("errorfiles", f.errorfiles.as_ref().map(|e| e.span())),
                ("error_replies", f.error_replies.as_ref().map(|e| e.span())),
                ("metadata", f.metadata.as_ref().map(|m| m.span())),
                ("upgrades", f.upgrades.as_ref().map(|u| u.span())),
                ("connect", f.connect.as_ref().map(|c| c.span())),
            ];
            if let Some((key, Some(span))) = http_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.source.error(
                    span,
                    format!("`{key}` is an HTTP setting and this frontend has mode = \"tcp\"; use tcp_request rules, or a separate HTTP frontend"),
                ));
            }
            if let Some(t) = &f.tls {
                return Err(self.source.error(
                    t.span(),
                    "TLS on a TCP frontend (HAProxy's `bind ... ssl` in mode tcp) is not supported yet; terminate TLS on an HTTP frontend, or pass the bytes through without `tls`",
                ));
            }
            if f.forwardfor == Some(true) {
                return Err(self.source.error(
                    f.mode.as_ref().map_or(0..0, |m| m.span()),
                    "forwardfor adds HTTP headers and this frontend has mode = \"tcp\"; remove it",
                ));
            }
        } else {
            let tcp_only = [
                ("tcp_request", first(&f.tcp_request)),
                ("inspect_delay", f.inspect_delay.as_ref().map(|d| d.span())),
                ("tcp_response", first(&f.tcp_response)),
                (
                    "response_inspect_delay",
                    f.response_inspect_delay.as_ref().map(|d| d.span()),
                ),
            ];
            if let Some((key, Some(span))) = tcp_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.source.error(
                    span,
                    format!("`{key}` applies to TCP frontends; add mode = \"tcp\" to this frontend, or use http_request rules"),
                ));
            }
        }
        if let Some(d) = &f.inspect_delay
            && d.get_ref().0 > Duration::from_secs(3600)
        {
            return Err(self.source.error(
                d.span(),
                "inspect_delay longer than 1h; it bounds how long a connection may wait for data, e.g. \"5s\"",
            ));
        }
        Ok(tcp)
    }

    /// A `response_inspect_delay` (at most 1h); absent: zero.
    fn inspect_delay(
        &self,
        d: Option<&Spanned<units::ConfigDuration>>,
    ) -> Result<Duration, ConfigError> {
        match d {
            Some(d) if d.get_ref().0 > Duration::from_secs(3600) => Err(self.source.error(
                d.span(),
                "response_inspect_delay longer than 1h; it bounds how long a connection may wait for server data, e.g. \"5s\"",
            )),
            Some(d) => Ok(d.get_ref().0),
            None => Ok(Duration::ZERO),
        }
    }

    fn check_name(&self, name: &Spanned<String>, what: &str) -> Result<(), ConfigError> {
        check_name(self.source, name, what)
    }

    fn backend(&self, b: &RawBackend, global: &Timeouts) -> Result<Backend, ConfigError> {
        let src = self.source;
        self.check_name(&b.name, "backend")?;
        let balance = match &b.balance {
            None => Balance::RoundRobin,
            Some(s) => match s.get_ref().as_str() {
                "roundrobin" => Balance::RoundRobin,
                "leastconn" => Balance::LeastConn,
                "source" => Balance::Source,
                other => {
                    return Err(src.error(
                        s.span(),
                        format!("unknown balance algorithm {other:?}; expected \"roundrobin\", \"leastconn\" or \"source\""),
                    ));
                }
            },
        };
        if b.server.is_empty() {
            return Err(src.error(
                b.name.span(),
                format!("backend {:?} has no server; add e.g. server = [{{ name = \"s1\", addr = \"127.0.0.1:9000\" }}]", b.name.get_ref()),
            ));
        }
        let backend_h2 = b.proto.as_ref().is_some_and(|p| p.get_ref() == "h2");
        let backend_tls = b
            .tls
            .as_ref()
            .map(|t| tls::upstream(src, t, backend_h2))
            .transpose()?;
        let mut servers = Vec::with_capacity(b.server.len());
        let mut names = HashMap::new();
        for s in &b.server {
            let s = s.get_ref();
            self.check_name(&s.name, "server")?;
            if names.insert(s.name.get_ref().clone(), ()).is_some() {
                return Err(src.error(
                    s.name.span(),
                    format!(
                        "duplicate server name {:?} in backend {:?}",
                        s.name.get_ref(),
                        b.name.get_ref()
                    ),
                ));
            }
            let (addr, dest) = self.server_addr(&s.addr)?;
            if dest != ServerDest::default() && b.health_check.is_some() && s.check.unwrap_or(true)
            {
                return Err(src.error(
                    s.addr.span(),
                    format!(
                        "server {:?} takes its address from each connection's destination, so it cannot be health-checked; add `check = false` to it",
                        s.name.get_ref()
                    ),
                ));
            }
            let weight = match &s.weight {
                Some(w) => ranged::<u32>(src, w, "weight", 0, 256)?,
                None => 1,
            };
            // A server's own `proto` wins over the backend's; its ALPN list
            // (its own `tls`, else the backend's) must agree with it.
            let raw_proto = s.proto.as_ref().or(b.proto.as_ref());
            let server_h2 = raw_proto.is_some_and(|p| p.get_ref() == "h2");
            let raw_alpn = s
                .tls
                .as_ref()
                .or(b.tls.as_ref())
                .and_then(|t| t.get_ref().alpn.as_ref())
                .map(|a| {
                    a.get_ref()
                        .iter()
                        .map(|p| p.as_bytes().to_vec())
                        .collect::<Vec<_>>()
                });
            let proto = h2::proto(src, raw_proto, raw_alpn.as_deref())?;
            servers.push(Server {
                name: Arc::from(s.name.get_ref().as_str()),
                addr,
                addr_text: s.addr.get_ref().clone(),
                weight,
                check: s.check.unwrap_or(true),
                maxconn: match &s.maxconn {
                    Some(m) => ranged::<u32>(src, m, "maxconn", 0, 1_000_000)?,
                    None => 0,
                },
                tls: match (&s.tls, &backend_tls, &b.tls) {
                    (Some(t), _, _) => Some(tls::upstream(src, t, server_h2)?),
                    // The backend's TLS offers ALPN h2 by default only to its h2 servers.
                    (None, Some(_), Some(t)) if server_h2 != backend_h2 => {
                        Some(tls::upstream(src, t, server_h2)?)
                    }
                    (None, Some(t), _) => Some(Arc::clone(t)),
                    (None, None, _) => None,
                },
                dest,
                proto,
            });
        }
        if servers.iter().all(|s| s.weight == 0) {
            return Err(src.error(
                b.name.span(),
                "every server of this backend has weight 0; at least one needs a weight above 0",
            ));
        }
        let health_check = b
            .health_check
            .as_ref()
            .map(|h| self.health_check(h))
            .transpose()?;
        let timeouts = match &b.timeout {
            Some(t) => {
                let t = t.get_ref();
                if t.client.is_some() || t.http_request.is_some() || t.keep_alive.is_some() {
                    return Err(src.error(
                        b.timeout.as_ref().map_or(0..0, |t| t.span()),
                        "a backend's timeout table may only set \"connect\", \"server\", \"tunnel\" and \"queue\"; client-side timeouts belong in [global.timeout]",
                    ));
                }
                merge_timeouts(global, t)
            }
            None => *global,
        };
        let max_idle_per_server = match &b.max_idle_per_server {
            Some(n) => ranged::<usize>(src, n, "max_idle_per_server", 0, 100_000)?,
            None => 64,
        };
        Ok(Backend {
            name: Arc::from(b.name.get_ref().as_str()),
            balance,
            servers,
            health_check,
            connect_timeout: timeouts.connect,
            server_timeout: timeouts.server,
            tunnel_timeout: timeouts.tunnel,
            queue_timeout: timeouts.queue.unwrap_or(timeouts.connect),
            max_idle_per_server,
            h2: h2::settings(src, b.h2.as_ref())?,
            errors: errors::error_pages(src, b.errorfiles.as_ref(), b.error_replies.as_ref())?,
            email_alert: None,
            tcp_response: b.tcp_response.clone(),
            response_inspect_delay: self.inspect_delay(b.response_inspect_delay.as_ref())?,
        })
    }

    fn health_check(&self, h: &Spanned<RawHealthCheck>) -> Result<HealthCheck, ConfigError> {
        let src = self.source;
        let h = h.get_ref();
        let method = match &h.method {
            Some(m) => Method::from_bytes(m.get_ref().as_bytes()).map_err(|_| {
                src.error(
                    m.span(),
                    format!("invalid health-check method {:?}", m.get_ref()),
                )
            })?,
            None => Method::GET,
        };
        let path = match &h.path {
            Some(p) => {
                if !p.get_ref().starts_with('/') || p.get_ref().parse::<http::Uri>().is_err() {
                    return Err(src.error(
                        p.span(),
                        format!(
                            "invalid health-check path {:?}: must start with '/'",
                            p.get_ref()
                        ),
                    ));
                }
                p.get_ref().clone()
            }
            None => "/".to_string(),
        };
        let expect = match &h.expect {
            Some(e) => parse_status_ranges(e.get_ref()).map_err(|m| src.error(e.span(), m))?,
            None => vec![(200, 399)],
        };
        let interval = match &h.interval {
            Some(d) if d.get_ref().0 < Duration::from_millis(10) => {
                return Err(src.error(
                    d.span(),
                    format!(
                        "health_check interval must be at least 10ms, got {:?}",
                        d.get_ref().0
                    ),
                ));
            }
            Some(d) => d.get_ref().0,
            None => Duration::from_secs(2),
        };
        Ok(HealthCheck {
            method,
            path,
            host: h.host.clone(),
            interval,
            timeout: h
                .timeout
                .map_or(interval.min(Duration::from_secs(2)), |d| d.0),
            rise: match &h.rise {
                Some(r) => ranged(src, r, "rise", 1, 1000)?,
                None => 2,
            },
            fall: match &h.fall {
                Some(f) => ranged(src, f, "fall", 1, 1000)?,
                None => 3,
            },
            expect,
        })
    }
}

fn known(names: &HashMap<String, usize>) -> String {
    if names.is_empty() {
        return "; no backend is declared".to_string();
    }
    let mut v: Vec<&str> = names.keys().map(String::as_str).collect();
    v.sort_unstable();
    format!("; declared backends: {}", v.join(", "))
}

fn merge_timeouts(base: &Timeouts, raw: &RawTimeouts) -> Timeouts {
    Timeouts {
        connect: raw.connect.map_or(base.connect, |d| d.0),
        client: raw.client.map_or(base.client, |d| d.0),
        server: raw.server.map_or(base.server, |d| d.0),
        http_request: raw.http_request.map_or(base.http_request, |d| d.0),
        keep_alive: raw.keep_alive.map_or(base.keep_alive, |d| d.0),
        tunnel: raw.tunnel.map(|d| d.0).or(base.tunnel),
        queue: raw.queue.map(|d| d.0).or(base.queue),
    }
}

/// Parses `"2xx"`, `"200"`, `"200-399"`, or a comma-separated list of those.
fn parse_status_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let bad = || {
        format!("invalid expect {text:?}: use e.g. \"2xx\", \"200\", \"200-399\" or \"200,204\"")
    };
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim) {
        let range = if let Some(class) = part.strip_suffix("xx") {
            // One digit 1-5: a longer class would overflow `c * 100` ("657xx" wrapped to 164-263).
            let c = match class.as_bytes() {
                [d @ b'1'..=b'5'] => u16::from(d - b'0'),
                _ => return Err(bad()),
            };
            (c * 100, c * 100 + 99)
        } else if let Some((lo, hi)) = part.split_once('-') {
            (
                lo.trim().parse().map_err(|_| bad())?,
                hi.trim().parse().map_err(|_| bad())?,
            )
        } else {
            let s: u16 = part.parse().map_err(|_| bad())?;
            (s, s)
        };
        if !(100..=599).contains(&range.0) || !(100..=599).contains(&range.1) || range.0 > range.1 {
            return Err(bad());
        }
        out.push(range);
    }
    Ok(out)
}

/// Checks that a frontend, backend, server, table or plugin name is 1-64
/// letters, digits, `_`, `-` or `.` (names appear in stats, metrics and URLs).
pub(crate) fn check_name(
    source: &SourceMap,
    name: &Spanned<String>,
    what: &str,
) -> Result<(), ConfigError> {
    let n = name.get_ref();
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(source.error(
            name.span(),
            format!("invalid {what} name {n:?}: use 1-64 letters, digits, '_', '-' or '.'"),
        ))
    }
}

/// `rel` relative to the directory of the config file `config` (how every
/// path in a config file is read, as HAProxy and nginx do).
pub(crate) fn resolve_path(config: &Path, rel: &str) -> PathBuf {
    let p = Path::new(rel);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match config.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKEND: &str =
        "[[backend]]\nname = \"app\"\nserver = [{ name = \"s\", addr = \"127.0.0.1:9000\" }]\n";

    fn load(extra: &str) -> Result<crate::runtime::Runtime, ConfigError> {
        crate::runtime::parse(
            Path::new("t.toml"),
            &format!("{BACKEND}{extra}"),
            BindCheck::Skip,
        )
    }

    #[test]
    fn status_classes_are_one_digit() {
        assert_eq!(parse_status_ranges("2xx"), Ok(vec![(200, 299)]));
        assert_eq!(
            parse_status_ranges("1xx, 5xx,404"),
            Ok(vec![(100, 199), (500, 599), (404, 404)])
        );
        // Found by tests/fuzz_parsers.rs: "657xx" overflowed `657 * 100` (a panic
        // in debug; in release it wrapped to the accepted range 164-263).
        for bad in [
            "657xx", "6554xx", "99999xx", "6xx", "0xx", "+2xx", "02xx", "xx", "2xxx",
        ] {
            assert!(parse_status_ranges(bad).is_err(), "{bad} is accepted");
        }
    }

    #[test]
    fn health_check_interval_errors_are_located() {
        // Found by tests/fuzz_parsers.rs: this error had no line and column.
        let e = load("health_check = { interval = \"5ms\" }\n").expect_err("too short");
        assert_eq!(e.location, Some((4, 29)), "{e}");
        assert!(e.message.contains("at least 10ms, got 5ms"), "{e}");
        let c = load("health_check = { interval = \"10ms\" }\n").expect("10ms is the minimum");
        let hc = c.backends[0].health_check.as_ref().expect("health check");
        assert_eq!(hc.interval, Duration::from_millis(10));
        assert_eq!(hc.timeout, Duration::from_millis(10));
        let e = load("health_check = { expect = \"657xx\" }\n").expect_err("bad class");
        assert_eq!(e.location, Some((4, 27)), "{e}");
    }
}
