//! A test harness for plugins without the daemon, after Envoy's proxy-wasm
//! test framework and Kong's pongo: a config (the one the daemon would load)
//! is assembled by the daemon's own assembly step, and a fake request and a
//! fake server response go through a frontend's filter chain by the
//! daemon's own chain driver (`proxy::chain`), bodies included. What a test
//! can then assert: the request the server got, the response the client
//! got (or the proxy's local reply), the HTTP calls plugins made (answered
//! by canned upstreams on real loopback sockets), what was logged, the
//! transaction's variables and the stick tables.
//!
//! ```no_run
//! use portcullis::harness::{Canned, Harness, Request};
//!
//! let mut h = Harness::config_file("portcullis.toml").start().expect("config loads");
//! let ex = h.run(Request::get("/"), Canned::ok().body("hello"));
//! assert_eq!(ex.status, 200);
//! assert_eq!(ex.header("x-served-by"), Some("portcullis"));
//! ```
//!
//! What is the daemon's own code: the config loading and assembly, the
//! plugins' worker instances, the phase sequence (`proxy::flow`: the
//! request phase, local replies and the response hooks that see them, the
//! response phase, `http_after_response`, the log hooks and stick-table
//! outcomes), the chain driver and body handling (`proxy::chain`,
//! `proxy::body`), the head preparation (`proxy::head`), error pages. What
//! the harness supplies instead of sockets is the server's side: the request
//! is recorded as the server would get it (without the proxy's
//! `X-Forwarded-*`), and the canned response comes back as the server's,
//! with no balancer, pool or health checks in between.
//!
//! The harness runs on the calling thread (its own current-thread tokio
//! runtime, like one daemon worker): use it from plain `#[test]`s, not
//! from inside an async runtime.

mod logs;
mod net;
pub mod spec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use tracing_subscriber::layer::SubscriberExt;

pub use logs::LogLine;
pub use net::{Call, Canned};

use crate::config::{self, ConfigError};
use crate::filter::{BodyTap, Reply};
use crate::proxy::body::{RequestBody, RequestBodyState};
use crate::proxy::chain::Outgoing;
use crate::proxy::error::ProxyError;
use crate::proxy::flow::{self, Answer, Sent};
use crate::proxy::grpc;
use crate::proxy::head::strip_hop_by_hop;
use crate::rules::{CompileCtx, Env, Extensions, RuleExtension};
use crate::runtime::Runtime;
use crate::stick::api::{Api, EntryView};
use crate::txn::{BackendChoice, Phase, Sample, Txn, VarStore};

/// Why the harness could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The config did not load (the message `portcullis check` would print).
    #[error("{0}")]
    Config(String),
    /// A name given to the harness is not in the config.
    #[error("{0}")]
    Unknown(String),
    /// A sample expression did not compile.
    #[error("cannot compile `{expr}`: {message}")]
    Expr { expr: String, message: String },
    /// The harness's own plumbing failed (a socket, a runtime).
    #[error("harness: {0}")]
    Io(String),
}

impl From<ConfigError> for HarnessError {
    fn from(e: ConfigError) -> HarnessError {
        HarnessError::Config(e.to_string())
    }
}

/// A fake client request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Path and query (an absolute URI is allowed too).
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// A request with `method` for `uri`; `Host: localhost` unless a `host` header is set.
    pub fn new(method: Method, uri: &str) -> Request {
        Request {
            method,
            uri: uri.to_string(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// `GET uri`.
    pub fn get(uri: &str) -> Request {
        Request::new(Method::GET, uri)
    }

    /// `POST uri` with `body`.
    pub fn post(uri: &str, body: impl Into<Bytes>) -> Request {
        Request::new(Method::POST, uri).body(body)
    }

    /// Adds a header (an invalid name or value is ignored).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            self.headers.append(n, v);
        }
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = body.into();
        self
    }
}

/// The request as the server received it (after the request rules and plugins).
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers as sent, hop-by-hop headers removed (the proxy's
    /// `X-Forwarded-For`/`-Proto` are not added here).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The backend the request was routed to (`use_backend`, else the default).
    pub backend: Option<String>,
}

impl Forwarded {
    /// The first value of header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What one fake exchange produced.
#[derive(Debug)]
pub struct Exchange {
    /// The status the client got.
    pub status: u16,
    /// The response headers the client got.
    pub headers: HeaderMap,
    /// The response body the client got.
    pub body: Bytes,
    /// The proxy answered itself (a rule's `return`/`deny`, a plugin's
    /// local reply, a service, an error page) instead of sending the server's response.
    pub local_reply: bool,
    /// Why the proxy answered, when a plugin failed (`plugin_trap`,
    /// `plugin_cpu_limit`, ...: the access log's termination).
    pub cause: Option<&'static str>,
    /// The request the server got; `None` if the request phase answered.
    pub upstream: Option<Forwarded>,
    /// HTTP calls plugins made during this exchange, to the canned upstreams.
    pub calls: Vec<Call>,
    /// Lines logged during this exchange.
    pub logs: Vec<LogLine>,
    /// The transaction's `txn.*` variables at the end.
    pub vars: VarStore,
}

impl Exchange {
    /// The first value of response header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `txn.<name>` variable as text (as a log-format would print it).
    pub fn var(&self, name: &str) -> Option<String> {
        let name = name.strip_prefix("txn.").unwrap_or(name);
        self.vars.get(name).map(Sample::to_text)
    }

    /// Whether a line containing `needle` was logged during the exchange.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(needle))
    }
}

/// Where the harness's config comes from.
enum Source {
    File(PathBuf),
    Text { path: PathBuf, text: String },
}

/// Builds a [`Harness`]: the config, which frontend's chain to run, canned upstreams.
pub struct HarnessBuilder {
    source: Source,
    frontend: Option<String>,
    upstreams: Vec<(String, Canned)>,
    client: SocketAddr,
    level: tracing::Level,
}

impl HarnessBuilder {
    fn new(source: Source) -> HarnessBuilder {
        HarnessBuilder {
            source,
            frontend: None,
            upstreams: Vec::new(),
            client: SocketAddr::from(([127, 0, 0, 1], 40000)),
            level: tracing::Level::DEBUG,
        }
    }

    /// Runs the chain of frontend `name` (default: the first frontend).
    pub fn frontend(mut self, name: &str) -> HarnessBuilder {
        self.frontend = Some(name.to_string());
        self
    }

    /// Answers every request to backend `backend` (a plugin's HTTP call to
    /// that cluster, Lua's `core.httpclient`) with `answer`, from a loopback
    /// server that records the calls. The backend must be declared in the config.
    pub fn upstream(mut self, backend: &str, answer: Canned) -> HarnessBuilder {
        self.upstreams.push((backend.to_string(), answer));
        self
    }

    /// The fake client's address (`src`; default 127.0.0.1:40000).
    pub fn client(mut self, addr: SocketAddr) -> HarnessBuilder {
        self.client = addr;
        self
    }

    /// The most verbose level captured (default `DEBUG`).
    pub fn log_level(mut self, level: tracing::Level) -> HarnessBuilder {
        self.level = level;
        self
    }

    /// Loads and assembles the config as the daemon does, starts the
    /// canned upstreams and the plugins' worker instances.
    pub fn start(self) -> Result<Harness, HarnessError> {
        let lines = logs::Lines::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::from_level(
                self.level,
            ))
            .with(logs::Capture(Arc::clone(&lines)));
        // This thread's default only: tests in parallel keep their own lines.
        let guard = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HarnessError::Io(e.to_string()))?;
        let local = tokio::task::LocalSet::new();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let mut addrs = Vec::new();
        for (backend, answer) in self.upstreams {
            let addr = local
                .block_on(
                    &rt,
                    net::canned_server(backend.clone(), answer, Arc::clone(&calls)),
                )
                .map_err(|e| HarnessError::Io(e.to_string()))?;
            addrs.push((backend, addr));
        }
        let mut spec = match &self.source {
            Source::File(path) => config::load(path)?,
            Source::Text { path, text } => config::parse(path, text)?,
        };
        for (backend, addr) in addrs {
            let Some(b) = spec.backends.iter_mut().find(|b| *b.name == *backend) else {
                return Err(HarnessError::Unknown(format!(
                    "upstream `{backend}`: the config declares no [[backend]] named so; declare it (any server address: the harness answers for it)"
                )));
            };
            for s in &mut b.servers {
                s.addr = addr;
                s.addr_text = addr.to_string();
            }
        }
        let runtime = crate::runtime::assemble(spec).map_err(|e| {
            // What the plugins logged while they failed to start says why.
            let said: Vec<String> = lines
                .lock()
                .map(|l| {
                    l.iter()
                        .filter(|l| l.level <= tracing::Level::WARN)
                        .map(ToString::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if said.is_empty() {
                HarnessError::Config(e.to_string())
            } else {
                HarnessError::Config(format!("{e}\n{}", said.join("\n")))
            }
        })?;
        let frontend = match &self.frontend {
            Some(name) => runtime
                .frontends
                .iter()
                .position(|f| &*f.name == name.as_str())
                .ok_or_else(|| {
                    HarnessError::Unknown(format!(
                        "the config declares no [[frontend]] named `{name}`"
                    ))
                })?,
            None if runtime.frontends.is_empty() => {
                return Err(HarnessError::Unknown(
                    "the config declares no [[frontend]]: the harness runs a frontend's rules"
                        .into(),
                ));
            }
            None => 0,
        };
        local.block_on(&rt, async {
            for h in &runtime.plugins {
                h.start_worker(0);
            }
        });
        Ok(Harness {
            runtime,
            frontend,
            client: self.client,
            lines,
            calls,
            local,
            rt,
            _guard: guard,
        })
    }
}

/// A loaded config with its plugins running on this thread, as one daemon
/// worker runs them. See the [module docs](self).
pub struct Harness {
    runtime: Runtime,
    frontend: usize,
    client: SocketAddr,
    lines: logs::Lines,
    calls: Arc<Mutex<Vec<Call>>>,
    local: tokio::task::LocalSet,
    rt: tokio::runtime::Runtime,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let plugins = &self.runtime.plugins;
        self.local.block_on(&self.rt, async {
            for h in plugins {
                h.stop_worker();
            }
        });
    }
}

impl Harness {
    /// A harness for the config file at `path` (relative plugin paths resolve from its directory).
    pub fn config_file(path: impl AsRef<Path>) -> HarnessBuilder {
        HarnessBuilder::new(Source::File(path.as_ref().to_path_buf()))
    }

    /// A harness for config `text`; relative plugin paths resolve from `dir`.
    pub fn config_text(text: &str, dir: impl AsRef<Path>) -> HarnessBuilder {
        HarnessBuilder::new(Source::Text {
            path: dir.as_ref().join("harness.toml"),
            text: text.to_string(),
        })
    }

    /// The assembled runtime (tables, plugin hosts, chains).
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Every line logged since the harness started (plugin start-up included).
    pub fn logs(&self) -> Vec<LogLine> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every HTTP call made to the canned upstreams so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// The stick-table entry of `key` in `table` (`None`: no such entry).
    pub fn table_entry(&self, table: &str, key: &str) -> Result<Option<EntryView>, HarnessError> {
        Api::new(&self.runtime.tables)
            .lookup(table, key)
            .map_err(|e| HarnessError::Unknown(e.to_string()))
    }

    /// Stored value `data` (`gpc0`, `http_req_cnt`, ...) of `key` in `table`; 0 when absent.
    pub fn table_value(&self, table: &str, key: &str, data: &str) -> u64 {
        self.table_entry(table, key)
            .ok()
            .flatten()
            .and_then(|e| e.data.into_iter().find(|(n, _)| n == data))
            .map_or(0, |(_, v)| v)
    }

    /// Lets time pass for the plugins: `d` of the worker's life with its
    /// housekeeping every 100 ms (ticks, root-context HTTP calls, Lua tasks).
    pub fn wait(&mut self, d: Duration) {
        let plugins = &self.runtime.plugins;
        self.local.block_on(&self.rt, async {
            let end = tokio::time::Instant::now() + d;
            loop {
                for h in plugins {
                    h.housekeeping();
                }
                let now = tokio::time::Instant::now();
                if now >= end {
                    break;
                }
                tokio::time::sleep((end - now).min(Duration::from_millis(100))).await;
            }
        });
    }

    /// Evaluates sample expression `expr` (`lua.my_fetch`, `str(x),lua.my_conv`,
    /// `req.hdr(host),lower`) on `req` in the request phase; its value as text.
    pub fn sample(&mut self, expr: &str, req: Request) -> Result<Option<String>, HarnessError> {
        let backends: HashMap<String, usize> = self
            .runtime
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.name.to_string(), i))
            .collect();
        let ext = Extensions::new(
            self.runtime
                .plugins
                .iter()
                .map(|h| Arc::clone(h) as Arc<dyn RuleExtension>)
                .collect(),
        );
        let cx = CompileCtx {
            backends: &backends,
            plugins: &ext,
            tables: &self.runtime.tables,
            resolvers: &self.runtime.resolvers,
        };
        let env = Env {
            ctx: &cx,
            phase: Phase::Request,
        };
        let compiled =
            crate::rules::fetch::parse_expr(expr, 0, &env, "harness sample").map_err(|e| {
                HarnessError::Expr {
                    expr: expr.to_string(),
                    message: e.message,
                }
            })?;
        let txn = self.txn(&req)?;
        Ok(self.local.block_on(&self.rt, async {
            compiled.eval(&txn).map(|v| v.into_sample().to_text())
        }))
    }

    /// A transaction for `req` as the handler builds it (no body yet).
    fn txn(&self, req: &Request) -> Result<Box<Txn>, HarnessError> {
        let fe = &self.runtime.frontends[self.frontend];
        let uri: Uri = req
            .uri
            .parse()
            .map_err(|e| HarnessError::Unknown(format!("request URI `{}`: {e}", req.uri)))?;
        let mut headers = req.headers.clone();
        if !headers.contains_key(http::header::HOST) {
            headers.insert(http::header::HOST, HeaderValue::from_static("localhost"));
        }
        let local_addr = fe
            .binds
            .first()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 8080)), |b| b.addr);
        let mut txn = Box::new(Txn::for_test("/", self.client));
        txn.local_addr = local_addr;
        txn.frontend = Rc::from(&*fe.name);
        txn.method = req.method.clone();
        txn.uri = uri;
        txn.version = Version::HTTP_11;
        txn.req_headers = headers;
        txn.frontend_metadata = fe.metadata.clone();
        Ok(txn)
    }

    /// Runs `req` through the frontend's request rules and plugins, gives
    /// `server` as the server's response (unless the request phase
    /// answered), runs the response rules and plugins, `http_after_response`,
    /// then the end of the exchange (plugins' log hooks, stick-table
    /// outcomes). As the daemon's request flow does, in the same order.
    pub fn run(&mut self, req: Request, server: Canned) -> Exchange {
        match self.try_run(req, server) {
            Ok(ex) => ex,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Harness::run`], with the harness's own failures as errors.
    pub fn try_run(&mut self, req: Request, server: Canned) -> Result<Exchange, HarnessError> {
        let logs_before = self.lines.lock().map(|l| l.len()).unwrap_or(0);
        let calls_before = self.calls.lock().map(|c| c.len()).unwrap_or(0);
        let mut txn = self.txn(&req)?;
        let rt = &self.runtime;
        let fe = self.frontend;
        let chain = &rt.frontends[fe].chain;
        let result = self.local.block_on(&self.rt, async {
            txn.req_body = Some(
                net::incoming(req.body.clone())
                    .await
                    .map_err(HarnessError::Io)?
                    .into(),
            );
            let mut side = CannedSides {
                rt,
                frontend: fe,
                server: &server,
                backend: None,
                grpc: rt.frontends[fe].grpc_local_replies && grpc::is_grpc(&txn.req_headers),
                upstream: None,
                bytes_in: 0,
                error: None,
            };
            // The daemon's own phase sequence, with the canned server.
            let answer = flow::exchange(chain, &mut txn, &mut side, Ok(false)).await;
            if let Some(e) = side.error {
                return Err(HarnessError::Io(e));
            }
            let Answer {
                status,
                headers,
                body,
                local,
                cause,
                ..
            } = answer;
            let body = collect(body).await?;
            flow::finish(
                chain,
                &mut txn,
                crate::txn::Outcome {
                    status: status.as_u16(),
                    bytes_in: side.bytes_in,
                    bytes_out: body.len() as u64,
                    server_failed: false,
                    grpc_status: grpc::status_of(None, &headers),
                },
            );
            let vars = txn.vars.clone();
            // Tracked entries are released as the daemon releases them.
            drop(txn);
            // Let what the exchange started (log hooks' calls) settle.
            tokio::task::yield_now().await;
            Ok::<_, HarnessError>(Exchange {
                status: status.as_u16(),
                headers,
                body,
                local_reply: local,
                cause,
                upstream: side.upstream,
                calls: Vec::new(),
                logs: Vec::new(),
                vars,
            })
        });
        let mut ex = result?;
        ex.logs = self
            .lines
            .lock()
            .map(|l| l.get(logs_before..).map(<[_]>::to_vec).unwrap_or_default())
            .unwrap_or_default();
        ex.calls = self
            .calls
            .lock()
            .map(|c| c.get(calls_before..).map(<[_]>::to_vec).unwrap_or_default())
            .unwrap_or_default();
        Ok(ex)
    }
}

/// The harness's side of the daemon's phase sequence (`proxy::flow`): the
/// request goes to no socket but is recorded as the server would get it,
/// and the canned response comes back as the server's, over an in-memory
/// HTTP/1.1 connection.
struct CannedSides<'a> {
    rt: &'a Runtime,
    frontend: usize,
    server: &'a Canned,
    /// The backend the request was routed to.
    backend: Option<usize>,
    /// A gRPC request on a frontend with `grpc_local_replies`.
    grpc: bool,
    upstream: Option<Forwarded>,
    bytes_in: u64,
    /// The harness's own failure, reported instead of the exchange.
    error: Option<String>,
}

impl flow::Sides for CannedSides<'_> {
    async fn forward(
        &mut self,
        txn: &mut Txn,
        taps: Vec<Box<dyn BodyTap>>,
    ) -> Result<Sent, ProxyError> {
        // As the daemon routes: the choice stays what `be_name` reports.
        let backend = flow::backend_for(self.rt, self.frontend, txn);
        txn.backend = backend.map(BackendChoice::Index);
        self.backend = backend;
        if backend.is_none() {
            return Err(ProxyError::NoBackend);
        }
        let mut headers = std::mem::take(&mut txn.req_headers);
        strip_hop_by_hop(&mut headers);
        let out = Outgoing::take(txn, Phase::Request, taps, &mut headers);
        let state = Rc::new(RequestBodyState::default());
        let (body, _) = RequestBody::outgoing(out, self.rt.global.timeouts.client, &state);
        let body = match collect(body).await {
            Ok(b) => b,
            Err(e) => {
                self.error = Some(e.to_string());
                return Err(ProxyError::UpstreamUnusable("the request body failed"));
            }
        };
        self.bytes_in = body.len() as u64;
        self.upstream = Some(Forwarded {
            method: txn.method.clone(),
            path: txn
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
            headers,
            body,
            backend: backend
                .and_then(|b| self.rt.backends.get(b))
                .map(|b| b.name.to_string()),
        });
        match net::incoming(self.server.body.clone()).await {
            Ok(incoming) => {
                txn.status = self.server.status;
                txn.resp_headers = self.server.headers.clone();
                txn.resp_body = Some(incoming.into());
                Ok(Sent::Received)
            }
            Err(e) => {
                self.error = Some(e);
                Err(ProxyError::UpstreamUnusable("the canned response failed"))
            }
        }
    }

    fn fail(&mut self, err: &ProxyError) -> Reply {
        err.reply()
    }

    fn note_cause(&mut self, _reply: &Reply, _phase: Phase) {}

    fn error_pages(&self, reply: &mut Reply) {
        flow::error_pages(
            self.rt,
            self.frontend,
            self.backend,
            self.grpc.then_some(false),
            reply,
        );
    }

    fn abandon(&mut self) {}

    fn switch(&mut self, _txn: &mut Txn) -> Option<(StatusCode, HeaderMap)> {
        // No socket to hand over: a canned 101 goes out as any response.
        None
    }

    fn pass(
        &mut self,
        _txn: &Txn,
        _headers: &mut HeaderMap,
    ) -> (Duration, Option<tokio::time::Instant>) {
        let timeout = self
            .backend
            .and_then(|b| self.rt.backends.get(b))
            .map_or(self.rt.global.timeouts.server, |b| b.server_timeout);
        (timeout, None)
    }
}

/// Reads a whole body the proxy would send.
async fn collect<B>(body: B) -> Result<Bytes, HarnessError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| HarnessError::Io(format!("reading the body: {e}")))
}
