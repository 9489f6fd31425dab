//! The per-request transaction (`Txn`): what filters read and change.
//!
//! The proxy core moves the request head into the `Txn` before the request
//! phase and the response head into it before the response phase, so rules
//! and plugins work on one owned value and never reach into hyper types.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// Which half of the exchange filters are looking at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Request headers received, nothing sent upstream yet.
    Request,
    /// Response headers received from the server (or generated), not yet sent to the client.
    Response,
}

/// A typed value produced by a sample fetch or converter (HAProxy's sample types).
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    Bool(bool),
    Int(i64),
    Ip(IpAddr),
    Str(String),
    Bin(Vec<u8>),
}

impl Sample {
    /// The value as text, as HAProxy would print it in a log-format string.
    pub fn to_text(&self) -> String {
        match self {
            Sample::Bool(b) => if *b { "1" } else { "0" }.to_string(),
            Sample::Int(i) => i.to_string(),
            Sample::Ip(ip) => ip.to_string(),
            Sample::Str(s) => s.clone(),
            Sample::Bin(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }

    /// The value as an integer, if it has one (strings are parsed).
    pub fn to_int(&self) -> Option<i64> {
        match self {
            Sample::Bool(b) => Some(i64::from(*b)),
            Sample::Int(i) => Some(*i),
            Sample::Str(s) => s.trim().parse().ok(),
            Sample::Bin(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            Sample::Ip(_) => None,
        }
    }

    /// HAProxy's boolean reading: non-zero integers, true, and non-empty strings are true.
    pub fn to_bool(&self) -> bool {
        match self {
            Sample::Bool(b) => *b,
            Sample::Int(i) => *i != 0,
            Sample::Ip(_) => true,
            Sample::Str(s) => !s.is_empty(),
            Sample::Bin(b) => !b.is_empty(),
        }
    }
}

/// Variable scopes, as in HAProxy's `set-var(<scope>.<name>)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VarScope {
    /// The whole process, shared by all workers.
    Proc,
    /// The client connection (all requests on it).
    Sess,
    /// The transaction (request and response).
    Txn,
    /// The request phase only.
    Req,
    /// The response phase only.
    Res,
}

impl VarScope {
    /// Splits `"txn.name"` into its scope and name; `None` if the scope is unknown or the name empty.
    pub fn parse(full: &str) -> Option<(VarScope, &str)> {
        let (scope, name) = full.split_once('.')?;
        let scope = match scope {
            "proc" => VarScope::Proc,
            "sess" => VarScope::Sess,
            "txn" => VarScope::Txn,
            "req" => VarScope::Req,
            "res" => VarScope::Res,
            _ => return None,
        };
        (!name.is_empty()).then_some((scope, name))
    }
}

/// A small variable store: a few entries, searched linearly, allocated only when used.
#[derive(Debug, Default, Clone)]
pub struct VarStore {
    entries: Vec<(Box<str>, Sample)>,
}

impl VarStore {
    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&Sample> {
        self.entries
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }

    /// Sets `name` to `value`, replacing any previous value.
    pub fn set(&mut self, name: &str, value: Sample) {
        match self.entries.iter_mut().find(|(n, _)| &**n == name) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((name.into(), value)),
        }
    }

    /// Removes `name`; true if it was set.
    pub fn unset(&mut self, name: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| &**n != name);
        before != self.entries.len()
    }

    /// Removes every variable.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// Process-wide variables (`proc.*`), shared lock-free by all workers.
#[derive(Debug, Default)]
pub struct ProcVars {
    map: scc::HashMap<String, Sample>,
}

/// The process's `proc.*` variables. A static rather than a `Txn` field so a
/// request never touches a shared reference count.
pub static PROC_VARS: std::sync::LazyLock<ProcVars> = std::sync::LazyLock::new(ProcVars::default);

impl ProcVars {
    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<Sample> {
        self.map.read_sync(name, |_, v| v.clone())
    }

    /// Sets `name` to `value`.
    pub fn set(&self, name: &str, value: Sample) {
        self.map.upsert_sync(name.to_string(), value);
    }

    /// Removes `name`; true if it was set.
    pub fn unset(&self, name: &str) -> bool {
        self.map.remove_sync(name).is_some()
    }
}

/// The backend a rule selected for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendChoice {
    /// A backend validated at load time, by index in the config.
    Index(usize),
    /// A backend named at run time (e.g. from a header); resolved by the proxy,
    /// falling back to the frontend's default backend if no such backend exists.
    Name(String),
}

/// One request/response exchange as seen by filters.
#[derive(Debug)]
pub struct Txn {
    /// The client's address (`src`).
    pub client_addr: SocketAddr,
    /// The local address the client connected to (`dst`).
    pub local_addr: SocketAddr,
    /// Name of the frontend that accepted the request.
    pub frontend: Rc<str>,
    /// Current phase.
    pub phase: Phase,
    /// Request method (may be rewritten by filters).
    pub method: Method,
    /// Request URI as received (path and query; may be rewritten by filters).
    pub uri: Uri,
    /// Request HTTP version.
    pub version: Version,
    /// Request headers during the request phase; empty once sent upstream.
    pub req_headers: HeaderMap,
    /// Response status during the response phase.
    pub status: StatusCode,
    /// Response headers during the response phase.
    pub resp_headers: HeaderMap,
    /// `txn.*` variables.
    pub vars: VarStore,
    /// Request-scoped variables (`req.*`), cleared after the request phase.
    pub req_vars: VarStore,
    /// Response-scoped variables (`res.*`).
    pub res_vars: VarStore,
    /// `sess.*` variables, shared by the requests of one client connection.
    pub sess_vars: Rc<RefCell<VarStore>>,
    /// The backend chosen by a `use_backend` rule (first match wins).
    pub backend: Option<BackendChoice>,
    /// How the exchange ended; filled in before `Filter::on_log` runs.
    pub outcome: Outcome,
    /// What plugins keep per transaction between hooks (private data, a waiting coroutine).
    pub plugin_state: PluginState,
    /// The frontend's `metadata` (what its `wasm` rules read as route metadata).
    pub frontend_metadata: Option<crate::config::Metadata>,
    /// Stick-table entries tracked by `track_sc0..2`; held (never evicted) until the `Txn` drops.
    pub sc: crate::stick::StickCounters,
    /// The client's request body until it is forwarded (a Lua service may read it instead).
    pub req_body: Option<crate::proxy::body::PeerBody>,
    /// Request body bytes read for filters' body hooks (by `proxy::chain`), which
    /// may rewrite them; sent upstream before what is left of `req_body`.
    pub req_buffered: Option<BufferedBody>,
    /// The server's response body during the response phase, until it is streamed to the client.
    pub resp_body: Option<crate::proxy::body::PeerBody>,
    /// Response body bytes a filter read; sent to the client before what is left of `resp_body`.
    pub resp_buffered: Option<BufferedBody>,
    /// The connection's TLS facts (`ssl_fc*`, `ssl_c_*`); `None` on a plain-TCP bind.
    pub tls: Option<Rc<crate::tls::TlsFacts>>,
    /// The response phase runs on the proxy's own reply (a local reply:
    /// Wasm filters skip a context whose instance died, as Envoy skips a
    /// failed stream).
    pub local_reply: bool,
}

/// A message body (or its first part) a filter read and may have rewritten, with its trailers.
#[derive(Debug, Default)]
pub struct BufferedBody {
    pub data: Vec<u8>,
    /// Bytes received from the peer (`data` may since have been rewritten).
    pub received: usize,
    /// Trailers (HTTP/1 chunked trailers, h2 trailers); empty if there were none.
    pub trailers: HeaderMap,
}

/// Per-transaction plugin state, keyed by plugin id; empty (no allocation) unless a plugin uses it.
#[derive(Default)]
pub struct PluginState(Vec<(u64, Box<dyn std::any::Any>)>);

impl PluginState {
    /// Takes the `T` stored under `key`, if any.
    pub fn take<T: 'static>(&mut self, key: u64) -> Option<Box<T>> {
        let i = self.0.iter().position(|(k, v)| *k == key && v.is::<T>())?;
        self.0.swap_remove(i).1.downcast().ok()
    }

    /// The `T` stored under `key`, if any, left in place.
    pub fn peek<T: 'static>(&self, key: u64) -> Option<&T> {
        self.0
            .iter()
            .find(|(k, v)| *k == key && v.is::<T>())
            .and_then(|(_, v)| v.downcast_ref())
    }

    /// Stores `value` under `key` (alongside values of other types).
    pub fn put<T: 'static>(&mut self, key: u64, value: Box<T>) {
        self.0.push((key, value));
    }
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginState({} entries)", self.0.len())
    }
}

/// The final facts of an exchange, for log hooks (and stick-table counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Status sent to the client (0 until the exchange ends).
    pub status: u16,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// The server failed (refused, reset, timed out) or the body was cut.
    pub server_failed: bool,
    /// A gRPC response's `grpc-status` (its trailers', else its headers').
    pub grpc_status: Option<u32>,
}

impl Txn {
    /// Reads a variable in any scope.
    pub fn get_var(&self, scope: VarScope, name: &str) -> Option<Sample> {
        match scope {
            VarScope::Proc => PROC_VARS.get(name),
            VarScope::Sess => self.sess_vars.borrow().get(name).cloned(),
            VarScope::Txn => self.vars.get(name).cloned(),
            VarScope::Req => self.req_vars.get(name).cloned(),
            VarScope::Res => self.res_vars.get(name).cloned(),
        }
    }

    /// Sets a variable in any scope.
    pub fn set_var(&mut self, scope: VarScope, name: &str, value: Sample) {
        match scope {
            VarScope::Proc => PROC_VARS.set(name, value),
            VarScope::Sess => self.sess_vars.borrow_mut().set(name, value),
            VarScope::Txn => self.vars.set(name, value),
            VarScope::Req => self.req_vars.set(name, value),
            VarScope::Res => self.res_vars.set(name, value),
        }
    }

    /// Removes a variable in any scope; true if it was set.
    pub fn unset_var(&mut self, scope: VarScope, name: &str) -> bool {
        match scope {
            VarScope::Proc => PROC_VARS.unset(name),
            VarScope::Sess => self.sess_vars.borrow_mut().unset(name),
            VarScope::Txn => self.vars.unset(name),
            VarScope::Req => self.req_vars.unset(name),
            VarScope::Res => self.res_vars.unset(name),
        }
    }

    /// The request path (without query).
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// The headers of the current phase's message.
    pub fn headers(&self) -> &HeaderMap {
        match self.phase {
            Phase::Request => &self.req_headers,
            Phase::Response => &self.resp_headers,
        }
    }

    /// The headers of the current phase's message, mutable.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        match self.phase {
            Phase::Request => &mut self.req_headers,
            Phase::Response => &mut self.resp_headers,
        }
    }

    /// A transaction for tests and tools: GET `uri` from `client`.
    pub fn for_test(uri: &str, client: SocketAddr) -> Txn {
        let mut t = Txn::for_stream(
            client,
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            Rc::from("test"),
        );
        t.uri = uri.parse().unwrap_or_else(|_| Uri::from_static("/"));
        t
    }

    /// The transaction of a TCP-mode stream (no HTTP message: GET / stands
    /// in for the fetches that read one).
    pub fn for_stream(client: SocketAddr, local: SocketAddr, frontend: Rc<str>) -> Txn {
        Txn {
            client_addr: client,
            local_addr: local,
            frontend,
            phase: Phase::Request,
            method: Method::GET,
            uri: Uri::from_static("/"),
            version: Version::HTTP_11,
            req_headers: HeaderMap::new(),
            status: StatusCode::OK,
            resp_headers: HeaderMap::new(),
            vars: VarStore::default(),
            req_vars: VarStore::default(),
            res_vars: VarStore::default(),
            sess_vars: Rc::default(),
            backend: None,
            outcome: Outcome::default(),
            plugin_state: PluginState::default(),
            frontend_metadata: None,
            sc: crate::stick::StickCounters::default(),
            req_body: None,
            req_buffered: None,
            resp_body: None,
            resp_buffered: None,
            tls: None,
            local_reply: false,
        }
    }
}
