//! The request flow: request filters → backend and server choice → upstream
//! exchange → response filters → client, with the end-of-exchange work
//! (pool checkin, counters, access log, filter log hooks) run when the
//! response body is over.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::body::{BodyEnd, BodyOutcome, PeerBody, RequestBody, RequestBodyState, ResponseBody};
use super::chain::Outgoing;
use super::conn::ConnState;
use super::error::ProxyError;
use super::head::strip_hop_by_hop;
use super::pool::PooledConn;
use super::tunnel::{self, End, Idle};
use super::upgraded::{Ask, Carrier, ServerSide, Tunnel, TunnelEnd};
use super::worker::{Epoch, FrontendRef, Worker};
use crate::filter::Reply;
use crate::txn::{BackendChoice, Phase, Txn, VarStore};

/// What every request on one client connection shares.
pub struct ConnCtx {
    home: Rc<Worker>,
    /// The frontend's index in the generation that last served a request
    /// here, as (generation, index): a reload may move it.
    frontend_at: std::cell::Cell<(u64, usize)>,
    frontend_name: Rc<str>,
    client: SocketAddr,
    /// `client` as the access log writes it (formatted once per connection, on first use).
    client_text: std::cell::OnceCell<Box<str>>,
    /// The client address as an `X-Forwarded-For` value.
    client_ip: HeaderValue,
    local: SocketAddr,
    state: Rc<ConnState>,
    sess_vars: Rc<RefCell<VarStore>>,
    /// What the TLS handshake settled; `None` on a plain-TCP bind.
    tls: Option<Rc<crate::tls::TlsFacts>>,
}

impl ConnCtx {
    /// Context for a connection accepted by `frontend` from `client`.
    pub fn new(
        worker: Rc<Worker>,
        frontend: FrontendRef,
        client: SocketAddr,
        local: SocketAddr,
        state: Rc<ConnState>,
        tls: Option<Rc<crate::tls::TlsFacts>>,
    ) -> ConnCtx {
        ConnCtx {
            frontend_at: std::cell::Cell::new(frontend.taken_in()),
            home: worker,
            frontend_name: frontend.name,
            client,
            client_text: std::cell::OnceCell::new(),
            client_ip: client_ip_value(client),
            local,
            state,
            sess_vars: Rc::default(),
            tls,
        }
    }
}

impl ConnCtx {
    /// This connection's frontend in `epoch`'s generation: found again by
    /// name after a reload; `None` if the reload removed it.
    fn frontend_in(&self, epoch: &Epoch) -> Option<usize> {
        let (generation, index) = self.frontend_at.get();
        if generation == epoch.shared.id {
            return Some(index);
        }
        let index = epoch.shared.frontend_named(&self.frontend_name)?;
        self.frontend_at.set((epoch.shared.id, index));
        Some(index)
    }
}

/// One request's context: its connection, the runtime generation it runs
/// on from start to end (the one in force when it started) and its
/// frontend's index there.
pub struct Ctx {
    conn: Rc<ConnCtx>,
    worker: Rc<Epoch>,
    frontend: usize,
}

impl std::ops::Deref for Ctx {
    type Target = ConnCtx;
    fn deref(&self) -> &ConnCtx {
        &self.conn
    }
}

/// A request counted in a server's `active` load (leastconn); released on drop,
/// so a request abandoned mid-flight (client gone) releases it too.
struct ActiveGuard {
    worker: Rc<Epoch>,
    backend: usize,
    server: usize,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // The slot goes straight to the oldest request in the queue, if any.
        super::queue::release(&self.worker, self.backend, self.server);
    }
}

/// Where a request went upstream, filled in by [`forward`].
#[derive(Default)]
struct Route {
    backend: Option<usize>,
    server: Option<usize>,
    active: Option<ActiveGuard>,
    upstream_time: Option<Duration>,
    /// Time in the backend queue (`%Tw`).
    queue_time: Option<Duration>,
    /// Time to connect to the server, 0 on a reused connection (`%Tc`).
    connect_time: Option<Duration>,
    conn: Option<PooledConn>,
    /// The connection of the worker's own HTTP/1.1 client, back in its slot
    /// once the response body ended cleanly.
    h1: Option<super::upstream_h1::Lease>,
    /// The HTTP/2 stream the request went out on (released when the exchange ends).
    h2: Option<super::upstream_h2::H2Stream>,
    /// The request's `grpc-timeout` ran out before the response head.
    grpc_deadline: bool,
    /// A gRPC request on a frontend with `grpc_local_replies`: the proxy's
    /// own answers are gRPC ones.
    grpc: bool,
    /// The request said `te: trailers`.
    te_trailers: bool,
    /// When the request's `grpc-timeout` runs out (HTTP/2 servers).
    deadline: Option<Instant>,
    req_body: Option<Rc<RequestBodyState>>,
    error: Option<String>,
    /// The error (if any) was the server's fault.
    server_failed: bool,
    /// HAProxy's termination state for the access log (`--` until known).
    term: Option<[u8; 2]>,
    /// Bytes a tunnel moved from the client to the server.
    tunnel_in: u64,
}

/// The end-of-exchange record, finished when the response body is over.
/// Boxed once when the request starts, with the transaction in it (about
/// 1 KiB): the phase sequence works on it in place, and it goes to the
/// response body (or the tunnel) as that pointer.
struct Exchange {
    ctx: Rc<Ctx>,
    txn: Txn,
    start: Instant,
    orig_method: http::Method,
    orig_uri: Uri,
    route: Route,
    status: u16,
    /// `grpc-status` of the response: its headers' (trailers-only), then its trailers'.
    grpc_status: Option<u32>,
}

impl BodyEnd for Exchange {
    fn trailers(&mut self, trailers: &HeaderMap) {
        if let Some(s) = super::grpc::status_of(Some(trailers), &HeaderMap::new()) {
            self.grpc_status = Some(s);
        }
    }

    fn finish(mut self: Box<Self>, outcome: BodyOutcome, bytes: u64) {
        // Worked on in its box: the record is not moved out of it.
        let Exchange {
            ctx,
            txn,
            start,
            orig_method,
            orig_uri,
            route,
            status,
            grpc_status,
        } = &mut *self;
        let (start, status, grpc_status) = (*start, *status, *grpc_status);
        let worker = &ctx.worker;
        let shared = &worker.shared;
        let access_log = &ctx.home.access_log;
        let now = Instant::now();
        if let Some(conn) = route.conn.take() {
            if outcome == BodyOutcome::Complete {
                worker.pool.checkin(conn, now);
            } else {
                conn.discard();
            }
        }
        if let Some(lease) = route.h1.take()
            && outcome == BodyOutcome::Complete
        {
            worker.pool.native.checkin(lease, now);
        }
        let bytes_in = route.req_body.as_ref().map_or(0, |s| s.bytes.get()) + route.tunnel_in;
        let fe = &shared.frontends[ctx.frontend];
        fe.responses.record(status);
        fe.bytes_out.fetch_add(bytes, Relaxed);
        fe.bytes_in.fetch_add(bytes_in, Relaxed);
        if let Some(b) = route.backend {
            let bstate = &shared.backends[b];
            bstate.stats.responses.record(status);
            if let Some(s) = route.server {
                let server = &bstate.servers[s];
                server.responses.record(status);
                if outcome == BodyOutcome::UpstreamError {
                    server.failures.fetch_add(1, Relaxed);
                }
            }
        }
        // The filters' log hooks and the tracked entries (proxy/flow.rs).
        super::flow::finish(
            &shared.config.frontends[ctx.frontend].chain,
            txn,
            crate::txn::Outcome {
                status,
                bytes_in,
                bytes_out: bytes,
                server_failed: outcome == BodyOutcome::UpstreamError || route.server_failed,
                grpc_status,
            },
        );
        if access_log.enabled() {
            let config = &shared.config;
            let backend = route.backend.and_then(|b| config.backends.get(b));
            let server = backend
                .zip(route.server)
                .and_then(|(b, s)| b.servers.get(s));
            // A CONNECT's target is its authority.
            let path = match (orig_uri.path_and_query(), orig_uri.authority()) {
                (Some(p), _) => p.as_str(),
                (None, Some(a)) => a.as_str(),
                (None, None) => "/",
            };
            let termination = match (&route.error, outcome) {
                (Some(e), _) => e.as_str(),
                (None, BodyOutcome::Complete) => "complete",
                (None, BodyOutcome::Aborted) => "aborted",
                (None, BodyOutcome::UpstreamError) => "upstream_error",
            };
            if let Some(format) = config
                .frontends
                .get(ctx.frontend)
                .and_then(|f| f.log_format.as_ref())
            {
                let total = now.saturating_duration_since(start);
                let term = match (route.term, outcome) {
                    (Some(t), _) => t,
                    (None, BodyOutcome::Complete) => *b"--",
                    (None, BodyOutcome::Aborted) => *b"CD",
                    (None, BodyOutcome::UpstreamError) => *b"SD",
                };
                let facts = crate::rules::LogFacts {
                    client: txn.client_addr,
                    local: ctx.local,
                    frontend: &ctx.frontend_name,
                    backend: backend.map(|b| &*b.name),
                    server: server.map(|s| &*s.name),
                    server_addr: server.map(|s| s.target(txn.local_addr)),
                    method: orig_method.as_str(),
                    uri: path,
                    version: version_str(txn.version),
                    status,
                    bytes_out: bytes,
                    bytes_in,
                    start: std::time::SystemTime::now()
                        .checked_sub(total)
                        .unwrap_or(std::time::UNIX_EPOCH),
                    total,
                    upstream: route.upstream_time,
                    queue: route.queue_time,
                    connect: route.connect_time,
                    term,
                };
                access_log.write_with(|buf| format.render_log(Some(&*txn), &facts, buf));
                ctx.state.request_finished();
                return;
            }
            access_log.write(&super::accesslog::LogRecord {
                client: ctx
                    .client_text
                    .get_or_init(|| ctx.client.to_string().into_boxed_str()),
                frontend: &ctx.frontend_name,
                backend: backend.map(|b| &*b.name),
                server: server.map(|s| &*s.name),
                method: orig_method.as_str(),
                path,
                version: version_str(txn.version),
                status,
                bytes,
                bytes_in,
                total: now.saturating_duration_since(start),
                upstream: route.upstream_time,
                termination,
                grpc_status,
            });
        }
        ctx.state.request_finished();
    }
}

impl TunnelEnd for Exchange {
    fn end(mut self: Box<Self>, out: tunnel::Outcome) {
        self.route.term = Some(match out.end.code().as_bytes() {
            [a, b] => [*a, *b],
            _ => *b"--",
        });
        let outcome = match out.end {
            End::Closed | End::Shutdown | End::ClientTimeout | End::ServerTimeout => {
                BodyOutcome::Complete
            }
            End::ClientError => BodyOutcome::Aborted,
            End::ServerError => BodyOutcome::UpstreamError,
        };
        if self.route.error.is_none() {
            // The text and JSON logs' termination, with HAProxy's state.
            let what = match out.end {
                End::Closed => "tunnel closed",
                End::Shutdown => "tunnel closed by shutdown",
                End::ClientTimeout => "tunnel idle timeout, client side",
                End::ServerTimeout => "tunnel idle timeout, server side",
                End::ClientError => "tunnel client connection failed",
                End::ServerError => "tunnel server connection failed",
            };
            self.route.error = Some(format!("{what} ({})", out.end.code()));
        }
        self.route.tunnel_in = out.to_server;
        self.finish(outcome, out.to_client);
    }
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// The hyper service: handles one request from `ctx`'s connection.
pub async fn handle(
    req: Request<PeerBody>,
    conn: Rc<ConnCtx>,
) -> Result<Response<ResponseBody>, Infallible> {
    // The generation in force now serves this request to its end.
    let epoch = conn.home.current();
    let Some(frontend) = conn.frontend_in(&epoch) else {
        return Ok(frontend_gone());
    };
    let ctx = Rc::new(Ctx {
        conn,
        worker: epoch,
        frontend,
    });
    ctx.state.request_started();
    let start = Instant::now();
    let shared = &*ctx.worker.shared;
    shared.frontends[ctx.frontend]
        .requests
        .fetch_add(1, Relaxed);
    let (mut parts, body) = req.into_parts();
    // An upgrade, extended CONNECT or CONNECT: settled before the rules
    // (an HTTP/2 extended CONNECT becomes the HTTP/1.1 upgrade they see).
    let asked =
        super::upgraded::classify(&mut parts, &shared.config.frontends[ctx.frontend].tunnels);
    let ask = asked.as_ref().ok().copied().flatten();
    // HTTP/2: the stream itself is the client side of a tunnel.
    let client_upgrade = if parts.version == Version::HTTP_2 && ask.is_some() {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    if !http_body::Body::is_end_stream(&body) {
        ctx.state.request_has_body();
    }
    let orig_method = parts.method.clone();
    let orig_uri = parts.uri.clone();
    let chain = &shared.config.frontends[ctx.frontend].chain;
    let grpc = shared.config.frontends[ctx.frontend].grpc_local_replies
        && super::grpc::is_grpc(&parts.headers);
    // The end-of-exchange record with the transaction, boxed from the
    // start: the phase sequence fills it in place (not in this future's
    // state) and it goes to the response body as the pointer, never copied.
    let mut ex = Box::new(Exchange {
        ctx: Rc::clone(&ctx),
        txn: Txn {
            client_addr: ctx.client,
            local_addr: ctx.local,
            frontend: ctx.frontend_name.clone(),
            phase: Phase::Request,
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            req_headers: parts.headers,
            status: StatusCode::OK,
            resp_headers: HeaderMap::new(),
            vars: VarStore::default(),
            req_vars: VarStore::default(),
            res_vars: VarStore::default(),
            sess_vars: Rc::clone(&ctx.sess_vars),
            backend: None,
            outcome: crate::txn::Outcome::default(),
            plugin_state: crate::txn::PluginState::default(),
            frontend_metadata: shared.config.frontends[ctx.frontend].metadata.clone(),
            sc: crate::stick::StickCounters::default(),
            req_body: Some(body),
            req_buffered: None,
            resp_body: None,
            resp_buffered: None,
            tls: ctx.tls.clone(),
            local_reply: false,
        },
        start,
        orig_method,
        orig_uri,
        route: Route {
            grpc,
            ..Route::default()
        },
        status: 0,
        grpc_status: None,
    });
    let record = &mut *ex;
    // The phase sequence (proxy/flow.rs), over this connection's sockets.
    let mut sides = DaemonSides {
        ctx: &ctx,
        route: &mut record.route,
        ask,
        server_side: None,
        upgrade: None,
    };
    let answer = super::flow::exchange(
        chain,
        &mut record.txn,
        &mut sides,
        asked.map(|_| ask == Some(Ask::Connect)),
    )
    .await;
    // The server side of a tunnel this request opens, once answered.
    let server_side = sides.server_side.take();
    let super::flow::Answer {
        status,
        headers,
        body,
        reason,
        ..
    } = answer;
    // A tunnel opens only if its answer is still the one that opens it
    // (a response rule may have turned it into another status).
    let opens = if ex.txn.version == Version::HTTP_2 || ask == Some(Ask::Connect) {
        StatusCode::OK
    } else {
        StatusCode::SWITCHING_PROTOCOLS
    };
    let server_side = match server_side {
        Some(side) if status == opens => Some(side),
        Some(ServerSide::Upgrade { conn, .. }) => {
            conn.discard();
            None
        }
        _ => None,
    };
    let logged_status = match (&server_side, ask) {
        // The log says what the server answered (101), as Envoy logs an
        // HTTP/2 WebSocket's upstream answer.
        (Some(_), Some(Ask::Extended)) => StatusCode::SWITCHING_PROTOCOLS,
        _ => status,
    };
    ex.status = logged_status.as_u16();
    ex.grpc_status = super::grpc::status_of(None, &headers);
    if let Some(side) = server_side {
        return Ok(open_tunnel(
            &ctx,
            ex,
            side,
            ask,
            client_upgrade,
            status,
            headers,
        ));
    }
    let mut headers = headers;
    if ctx.state.close_after_response() {
        // Shutting down: the client learns it before sending another request.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let body = body.on_end(ex).watch_client(Rc::clone(&ctx.state));
    let mut resp = Response::new(body);
    if let Some(reason) = reason
        && let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes())
    {
        // HTTP/1 clients see HAProxy's status line too (`504 Gateway Time-out`).
        resp.extensions_mut().insert(r);
    }
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// The answer that opens a tunnel (`101`, or `200` to a CONNECT or an
/// HTTP/2 extended CONNECT), with the tunnel set to run once it is sent: on
/// the HTTP/1 socket after hyper wrote it (`conn.rs`), or on the HTTP/2
/// stream on a task of its own. The exchange is logged when the tunnel ends.
fn open_tunnel(
    ctx: &Rc<Ctx>,
    ex: Box<Exchange>,
    server: ServerSide,
    ask: Option<Ask>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    status: StatusCode,
    headers: HeaderMap,
) -> Response<ResponseBody> {
    let shared = &ctx.worker.shared;
    let config = &shared.config;
    let t = config.global.timeouts;
    let backend = ex.route.backend.and_then(|b| config.backends.get(b));
    let idle = Idle {
        client: t.client,
        server: backend.map_or(t.server, |b| b.server_timeout),
        tunnel: backend.map_or(t.tunnel, |b| b.tunnel_timeout),
    };
    let h2 = ex.txn.version == Version::HTTP_2;
    let tunnel = Tunnel {
        end: ex,
        server,
        idle,
        stats: std::sync::Arc::clone(&shared.frontends[ctx.frontend]),
        connect: ask == Some(Ask::Connect),
        stop: ctx.home.shutdown_signal(),
    };
    match (h2, client_upgrade) {
        (false, _) => ctx.state.set_tunnel(tunnel),
        (true, Some(on)) => {
            tokio::task::spawn_local(async move {
                // hyper hands the stream over once the answer's head is sent.
                match tokio::time::timeout(t.client, on).await {
                    Ok(Ok(up)) => tunnel.run(Box::new(TokioIo::new(up))).await,
                    _ => tunnel.abandon(),
                }
            });
        }
        (true, None) => {
            // Not reached: hyper marks every HTTP/2 CONNECT upgradable.
            tunnel.abandon();
            let status = StatusCode::BAD_GATEWAY;
            let mut resp = Response::new(ResponseBody::full(crate::error::body(status)));
            *resp.status_mut() = status;
            *resp.headers_mut() = crate::error::page_headers();
            return resp;
        }
    }
    let mut resp = Response::new(ResponseBody::empty());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A CONNECT's tunnel: its target (after the rules) checked against the
/// frontend's `connect.allow`, resolved and connected within `timeout.connect`.
async fn connect_tunnel(ctx: &Ctx, txn: &Txn) -> Result<tokio::net::TcpStream, ProxyError> {
    let config = &ctx.worker.shared.config;
    let Some(allow) = config
        .frontends
        .get(ctx.frontend)
        .and_then(|f| f.tunnels.connect.as_deref())
    else {
        return Err(ProxyError::ConnectMethod);
    };
    let Some(authority) = txn.uri.authority() else {
        return Err(ProxyError::ConnectTarget(
            "the target must be host:port (authority form)",
        ));
    };
    super::upgraded::dial(authority, allow, config.global.timeouts.connect).await
}

/// The answer to a request on a kept-alive connection whose frontend a
/// reload removed: 503, and the connection closes (as HAProxy's old process
/// closes its idle connections once its listener is gone).
fn frontend_gone() -> Response<ResponseBody> {
    let status = StatusCode::SERVICE_UNAVAILABLE;
    let mut resp = Response::new(ResponseBody::full(crate::error::body(status)));
    *resp.status_mut() = status;
    *resp.headers_mut() = crate::error::page_headers();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A plugin failure that answered the request is the access log's termination.
/// The termination state: a plugin failure is internal (`I`), an error
/// page (`deny`) the proxy's refusal (`P`), another answer local (`L`); in
/// the request (`R`) or response-headers (`H`) state.
fn note_cause(route: &mut Route, reply: &Reply, phase: Phase) {
    if route.term.is_none() {
        let cause = if reply.cause.is_some() {
            b'I'
        } else if reply.error_page {
            b'P'
        } else {
            b'L'
        };
        let state = if phase == Phase::Request { b'R' } else { b'H' };
        route.term = Some([cause, state]);
    }
    if route.error.is_none()
        && let Some(cause) = reply.cause
    {
        route.error = Some(cause.to_string());
    }
}

/// The proxy's own answer to `err`, recorded in `route` for counters and the access log.
fn fail(ctx: &Ctx, route: &mut Route, err: &ProxyError) -> Reply {
    if err.is_server_failure()
        && let (Some(b), Some(s)) = (route.backend, route.server)
    {
        ctx.worker.shared.backends[b].servers[s]
            .failures
            .fetch_add(1, Relaxed);
    }
    tracing::debug!(client = %ctx.client, source = ?err.source(), error = %err, "request failed");
    route.error = Some(err.to_string());
    route.server_failed = err.is_server_failure();
    route.term = Some(err.term_state());
    err.reply()
}

/// The daemon's side of the phase sequence (`proxy/flow.rs`): the request
/// goes to a server through [`forward`] (or a CONNECT's tunnel), its
/// failures and replies are recorded in `route` for counters and the access
/// log, and a tunnel's server side is kept for after the answer.
struct DaemonSides<'a> {
    ctx: &'a Rc<Ctx>,
    route: &'a mut Route,
    ask: Option<Ask>,
    /// The server side of a tunnel the request opens, once answered.
    server_side: Option<ServerSide>,
    /// A `101`'s upgrade and its `Upgrade` header, until the response phase passes it.
    upgrade: Option<(hyper::upgrade::OnUpgrade, Option<HeaderValue>)>,
}

impl super::flow::Sides for DaemonSides<'_> {
    async fn forward(
        &mut self,
        txn: &mut Txn,
        taps: Vec<Box<dyn crate::filter::BodyTap>>,
    ) -> Result<super::flow::Sent, ProxyError> {
        if self.ask == Some(Ask::Connect) {
            // Boxed: a tunnel's connect is no state of a proxied request's future.
            let stream = Box::pin(connect_tunnel(self.ctx, txn)).await?;
            self.server_side = Some(ServerSide::Stream(stream));
            return Ok(super::flow::Sent::Opened(StatusCode::OK, HeaderMap::new()));
        }
        let mut resp = forward(self.ctx, txn, taps, self.route, self.ask.is_some()).await?;
        // A 101 to an upgrade we forwarded: the server's socket
        // is the tunnel's once the response rules let it through.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let on = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
            self.upgrade = on.map(|on| (on, resp.headers().get(header::UPGRADE).cloned()));
        }
        // Into the transaction field by field: the response's parts are not
        // moved through the phase sequence.
        txn.status = resp.status();
        txn.resp_headers = std::mem::take(resp.headers_mut());
        txn.resp_body = Some(resp.into_body());
        Ok(super::flow::Sent::Received)
    }

    fn fail(&mut self, err: &ProxyError) -> Reply {
        fail(self.ctx, self.route, err)
    }

    fn note_cause(&mut self, reply: &Reply, phase: Phase) {
        note_cause(self.route, reply, phase);
    }

    fn error_pages(&self, reply: &mut Reply) {
        let route = &*self.route;
        super::flow::error_pages(
            &self.ctx.worker.shared.config,
            self.ctx.frontend,
            route.backend,
            route.grpc.then_some(route.grpc_deadline),
            reply,
        );
    }

    fn abandon(&mut self) {
        if let Some(conn) = self.route.conn.take() {
            conn.discard();
        }
    }

    fn switch(&mut self, txn: &mut Txn) -> Option<(StatusCode, HeaderMap)> {
        let (on, protocol) = self.upgrade.take()?;
        let mut headers = std::mem::take(&mut txn.resp_headers);
        drop(txn.resp_body.take());
        drop(txn.resp_buffered.take());
        let mut status = txn.status;
        let carrier = match (self.route.conn.take(), self.route.h2.take()) {
            (Some(c), _) => Some(Carrier::H1(c)),
            (None, Some(st)) => Some(Carrier::H2(st)),
            (None, None) => None,
        };
        if let Some(conn) = carrier {
            self.server_side = Some(ServerSide::Upgrade { on, conn });
            if txn.version == Version::HTTP_2 {
                // RFC 8441: a 200 on the stream opens the tunnel.
                status = StatusCode::OK;
                headers.remove(header::SEC_WEBSOCKET_ACCEPT);
            } else {
                let protocol = protocol
                    .or_else(|| txn.req_headers.get(header::UPGRADE).cloned())
                    .unwrap_or_else(|| HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, protocol);
            }
        }
        Some((status, headers))
    }

    fn pass(&mut self, txn: &Txn, headers: &mut HeaderMap) -> (Duration, Option<Instant>) {
        let config = &self.ctx.worker.shared.config;
        let timeout = self
            .route
            .backend
            .and_then(|b| config.backends.get(b))
            .map_or(config.global.timeouts.server, |b| b.server_timeout);
        if self.route.te_trailers && txn.version < Version::HTTP_2 {
            // hyper sends an HTTP/1.1 client only the trailers declared.
            super::grpc::declare_trailers(headers);
        }
        (timeout, self.route.deadline)
    }
}

/// Picks the backend for `txn`: a `use_backend` choice, else the frontend default.
fn resolve_backend(ctx: &Ctx, txn: &Txn) -> Option<usize> {
    super::flow::backend_for(&ctx.worker.shared.config, ctx.frontend, txn)
}

/// Sends the request to a server of the chosen backend and waits for its response head.
async fn forward(
    ctx: &Rc<Ctx>,
    txn: &mut Txn,
    taps: Vec<Box<dyn crate::filter::BodyTap>>,
    ex: &mut Route,
    upgrade: bool,
) -> Result<Response<PeerBody>, ProxyError> {
    let worker = &ctx.worker;
    let shared = &worker.shared;
    // What routed the request is what `be_name` reports from here on (also
    // in response rules): the default backend, or the one a dynamic
    // `use_backend` named if it exists (a name that does not is not kept).
    let b = resolve_backend(ctx, txn);
    txn.backend = b.map(BackendChoice::Index);
    let b = b.ok_or(ProxyError::NoBackend)?;
    let backend = &shared.config.backends[b];
    let bstate = &shared.backends[b];
    bstate.stats.requests.fetch_add(1, Relaxed);
    ex.backend = Some(b);
    let s = match super::queue::acquire(worker, b, ctx.client.ip()).await {
        Ok((s, waited)) => {
            ex.queue_time = Some(waited);
            s
        }
        Err(super::queue::Unavailable::NoServer) => {
            bstate.stats.no_server.fetch_add(1, Relaxed);
            return Err(ProxyError::NoServer(backend.name.to_string()));
        }
        Err(super::queue::Unavailable::Timeout(waited)) => {
            // HAProxy logs the time spent in the queue before its timeout too.
            ex.queue_time = Some(waited);
            return Err(ProxyError::QueueTimeout(backend.name.to_string(), waited));
        }
        Err(super::queue::Unavailable::QueueFull) => {
            return Err(ProxyError::QueueFull(backend.name.to_string()));
        }
    };
    let server = &backend.servers[s];
    ex.active = Some(ActiveGuard {
        worker: Rc::clone(worker),
        backend: b,
        server: s,
    });
    ex.server = Some(s);

    let mut headers = std::mem::take(&mut txn.req_headers);
    // TLS to the server: the name to send (a fixed one, the address's, or the request's Host).
    let tls_target = server.tls.as_ref().and_then(|u| {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        u.target(&server.addr_text, host)
    });
    if server.tls.is_some() && tls_target.is_none() {
        // Never plain TCP to a TLS server: no name to send (no Host) is a 502.
        return Err(ProxyError::Connect(super::pool::ConnectError::Tls {
            addr: server.addr,
            source: std::io::Error::other("no server name for SNI (the request has no Host)"),
        }));
    }
    // An upgrade the frontend allows keeps its Upgrade (as the rules left
    // it) with `Connection: upgrade`; any other Upgrade is hop-by-hop and
    // goes, and a server that switches protocols without being asked is
    // answered 502 below.
    let upgrade_to = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let asked_upgrade = upgrade_to.is_some();
    // `te: trailers` is end to end in effect (gRPC needs it): kept as that
    // one value, as HAProxy and Envoy do.
    let te_trailers = super::grpc::asks_trailers(&headers);
    ex.te_trailers = te_trailers;
    // Connection options went before the rules (`prepare_request`), and Host
    // was settled there: what rules set and what the proxy adds here stays.
    strip_hop_by_hop(&mut headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(protocol) = upgrade_to {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if shared.config.frontends[ctx.frontend].forwardfor {
        // A `set_src` rule changed the client's address: HAProxy forwards that one.
        if txn.client_addr.ip() == ctx.client.ip() {
            add_forwarded(&mut headers, &ctx.client_ip, ctx.tls.is_some());
        } else {
            add_forwarded(
                &mut headers,
                &client_ip_value(txn.client_addr),
                ctx.tls.is_some(),
            );
        }
    }
    let uri = match txn.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    let client_timeout = shared.config.global.timeouts.client;
    let body_state = Rc::new(RequestBodyState::default());
    // A filter that consumed the body (a Lua service) answered itself.
    let out = Outgoing::take(txn, Phase::Request, taps, &mut headers);
    let (req_body, counted) = RequestBody::outgoing(out, client_timeout, &body_state);
    ex.req_body = counted;
    let mut req = Request::new(req_body);
    *req.method_mut() = txn.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;

    // A server written `0.0.0.0:0` (or with port 0 / `+N`) goes where the
    // request is headed, as `set_dst`/`set_dst_port` left it.
    let target = server.target(txn.local_addr);
    let now = Instant::now();
    if server.proto != crate::config::h2::UpstreamProto::Http1 {
        // Boxed, as hyper's path below: only the common path's states
        // are in every request's future (`request_future_stays_small`).
        return Box::pin(forward_h2(
            ctx,
            ex,
            req,
            (b, s, target),
            tls_target.as_ref(),
            &body_state,
            (now, asked_upgrade),
        ))
        .await
        .map(|r| r.map(PeerBody::from));
    }
    if !asked_upgrade && shared.config.global.http1_client == crate::config::Http1Client::Native {
        return forward_native(
            ctx,
            ex,
            req,
            (b, s, target),
            tls_target.as_ref(),
            &body_state,
            now,
        )
        .await;
    }
    Box::pin(forward_hyper(
        ctx,
        ex,
        req,
        (b, s, target),
        tls_target.as_ref(),
        &body_state,
        (now, asked_upgrade),
    ))
    .await
}

/// [`forward`] through hyper's client connection (`pool.rs`): upgrades, and
/// every request with `http1_client = "hyper"`.
async fn forward_hyper(
    ctx: &Rc<Ctx>,
    ex: &mut Route,
    req: Request<RequestBody>,
    (b, s, target): (usize, usize, std::net::SocketAddr),
    tls_target: Option<&crate::tls::client::Target>,
    body_state: &Rc<RequestBodyState>,
    (now, asked_upgrade): (Instant, bool),
) -> Result<Response<PeerBody>, ProxyError> {
    let worker = &ctx.worker;
    let backend = &worker.shared.config.backends[b];
    let sstate = &worker.shared.backends[b].servers[s];
    let client_timeout = worker.shared.config.global.timeouts.client;
    let mut conn = worker
        .pool
        .checkout(b, s, target, backend.connect_timeout, now, tls_target)
        .await?;
    // A reused connection is ready at once: no need to read the clock again.
    let sent_at = if conn.reused {
        now
    } else {
        sstate.connects.fetch_add(1, Relaxed);
        Instant::now()
    };
    ex.connect_time = Some(sent_at.saturating_duration_since(now));
    let result = match send(&mut conn, req, backend.server_timeout, body_state, sent_at).await {
        Err(SendFailure::Unsent(req)) if conn.reused => {
            // A keep-alive connection the server closed while idle: retry once on a fresh one.
            conn.discard();
            conn = worker
                .pool
                .connect_new(b, s, target, backend.connect_timeout, tls_target)
                .await?;
            sstate.connects.fetch_add(1, Relaxed);
            send(
                &mut conn,
                *req,
                backend.server_timeout,
                body_state,
                Instant::now(),
            )
            .await
        }
        other => other,
    };
    ex.upstream_time = Some(sent_at.elapsed());
    match result {
        Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !asked_upgrade => {
            // HAProxy: a 101 to a request without Upgrade is an invalid response.
            conn.discard();
            Err(ProxyError::UnexpectedUpgrade)
        }
        Ok(resp) => {
            ex.conn = Some(conn);
            Ok(resp.map(PeerBody::from))
        }
        Err(failure) => {
            conn.discard();
            Err(match failure {
                SendFailure::Timeout(d) => ProxyError::ServerTimeout(d),
                _ if body_state.timed_out.get() => ProxyError::ClientTimeout(client_timeout),
                SendFailure::Failed(e) if body_state.failed.get() => ProxyError::ClientBody(e),
                // A malformed response head, or one over max_header_size/max_headers.
                SendFailure::Failed(e) if e.is_parse() || e.is_parse_too_large() => {
                    ProxyError::UpstreamInvalid(e)
                }
                SendFailure::Failed(e) => ProxyError::UpstreamReset(e),
                SendFailure::Unsent(_) => {
                    ProxyError::UpstreamUnusable("connection closed before the request was sent")
                }
            })
        }
    }
}

/// [`forward`] through the worker's own HTTP/1.1 client: the request is
/// written and the response head read on this task (no upgrade: those go
/// through hyper's connection, which hands its socket to the tunnel).
async fn forward_native(
    ctx: &Rc<Ctx>,
    ex: &mut Route,
    req: Request<RequestBody>,
    (b, s, target): (usize, usize, std::net::SocketAddr),
    tls: Option<&crate::tls::client::Target>,
    body_state: &Rc<RequestBodyState>,
    now: Instant,
) -> Result<Response<PeerBody>, ProxyError> {
    use super::upstream_h1::{Failure, H1Error, send};
    let worker = &ctx.worker;
    let backend = &worker.shared.config.backends[b];
    let sstate = &worker.shared.backends[b].servers[s];
    let pool = &worker.pool.native;
    let timeout = backend.server_timeout;
    let (conn, reused) = match pool.checkout_idle(b, s, target, now, tls) {
        Some(c) => (c, true),
        None => (
            pool.connect((b, s), target, backend.connect_timeout, tls)
                .await?,
            false,
        ),
    };
    // A reused connection is ready at once: no need to read the clock again.
    let sent_at = if reused {
        now
    } else {
        sstate.connects.fetch_add(1, Relaxed);
        Instant::now()
    };
    ex.connect_time = Some(sent_at.saturating_duration_since(now));
    let result = match send(conn, req, reused, timeout, body_state, sent_at).await {
        Err(Failure::Unsent(req)) => {
            // A keep-alive connection the server closed while idle: retry once on a fresh one.
            let conn = pool
                .connect((b, s), target, backend.connect_timeout, tls)
                .await?;
            sstate.connects.fetch_add(1, Relaxed);
            send(conn, *req, false, timeout, body_state, Instant::now()).await
        }
        other => other,
    };
    ex.upstream_time = Some(sent_at.elapsed());
    match result {
        // HAProxy: a 101 to a request without Upgrade is an invalid response.
        Ok((resp, _)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
            Err(ProxyError::UnexpectedUpgrade)
        }
        Ok((resp, lease)) => {
            ex.h1 = Some(lease);
            Ok(resp.map(PeerBody::H1))
        }
        Err(failure) => {
            let client_timeout = worker.shared.config.global.timeouts.client;
            Err(match failure {
                Failure::Timeout(d) => ProxyError::ServerTimeout(d),
                _ if body_state.timed_out.get() => ProxyError::ClientTimeout(client_timeout),
                // The client's stream failed: its fault. A filter's tap
                // failing is not, and is a 502 as with hyper's client.
                Failure::Failed(H1Error::Body(e)) if body_state.failed.get() => {
                    ProxyError::ClientBodyStream(e)
                }
                Failure::Failed(e) => ProxyError::UpstreamH1(e),
                Failure::Unsent(_) => {
                    ProxyError::UpstreamUnusable("connection closed before the request was sent")
                }
            })
        }
    }
}

/// [`forward`] to a server spoken to in HTTP/2 (or, negotiating by ALPN,
/// in what the TLS handshake settled).
#[allow(clippy::too_many_arguments)]
async fn forward_h2(
    ctx: &Rc<Ctx>,
    ex: &mut Route,
    mut req: Request<RequestBody>,
    (b, s, target): (usize, usize, std::net::SocketAddr),
    tls: Option<&crate::tls::client::Target>,
    body_state: &Rc<RequestBodyState>,
    (now, upgrade): (Instant, bool),
) -> Result<Response<Incoming>, ProxyError> {
    use super::upstream_h2::{Dest, H2Failure, Leg, Wait};
    let worker = &ctx.worker;
    let backend = &worker.shared.config.backends[b];
    let server = &backend.servers[s];
    let sstate = &worker.shared.backends[b].servers[s];
    super::grpc::absolute_uri(&mut req, tls.is_some(), &server.addr_text);
    let deadline = super::grpc::timeout(req.headers()).map(|d| (now + d, d));
    ex.deadline = deadline.map(|(at, _)| at);
    let dest = Dest {
        backend: b,
        server: s,
        // A server written `0.0.0.0:0` (or with port 0 / `+N`) goes where the
        // request is headed, as `set_dst`/`set_dst_port` left it.
        addr: target,
        connect_timeout: backend.connect_timeout,
        tls,
        proto: server.proto,
        upgrade,
    };
    let wait = Wait {
        timeout: backend.server_timeout,
        body: body_state,
        deadline,
    };
    let (result, leg) = worker.h2.send(&dest, &worker.pool, req, &wait, now).await;
    ex.upstream_time = Some(now.elapsed());
    let fresh = match &leg {
        Some(Leg::H2(st)) => !st.reused,
        Some(Leg::H1(c)) => !c.reused,
        None => false,
    };
    if fresh {
        sstate.connects.fetch_add(1, Relaxed);
    }
    match (result, leg) {
        (Ok(resp), leg) => {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
                // HAProxy: a 101 to a request without Upgrade is an invalid response.
                if let Some(Leg::H1(c)) = leg {
                    c.discard();
                }
                return Err(ProxyError::UnexpectedUpgrade);
            }
            match leg {
                Some(Leg::H2(st)) => ex.h2 = Some(st),
                Some(Leg::H1(c)) => ex.conn = Some(c),
                None => {}
            }
            Ok(resp)
        }
        (Err(failure), leg) => {
            if let Some(Leg::H1(c)) = leg {
                c.discard();
            }
            let client_timeout = worker.shared.config.global.timeouts.client;
            Err(match failure {
                H2Failure::Connect(e) => ProxyError::Connect(e),
                H2Failure::Timeout(d) => ProxyError::ServerTimeout(d),
                H2Failure::Deadline(d) => {
                    ex.grpc_deadline = true;
                    ProxyError::GrpcDeadline(d)
                }
                _ if body_state.timed_out.get() => ProxyError::ClientTimeout(client_timeout),
                H2Failure::Failed(e) if body_state.failed.get() => ProxyError::ClientBody(e),
                H2Failure::Failed(e) if e.is_parse() || e.is_parse_too_large() => {
                    ProxyError::UpstreamInvalid(e)
                }
                H2Failure::Failed(e) => ProxyError::UpstreamReset(e),
                H2Failure::Unsent => {
                    ProxyError::UpstreamUnusable("connection closed before the request was sent")
                }
                H2Failure::NoExtendedConnect => ProxyError::NoExtendedConnect,
            })
        }
    }
}

enum SendFailure {
    /// Not written to the connection at all; the request is handed back.
    Unsent(Box<Request<RequestBody>>),
    Failed(hyper::Error),
    Timeout(Duration),
}

/// Sends `req` (at `sent_at`) and waits for the response head. The server
/// timeout counts from the last request-body progress, so a long upload is
/// not cut short.
async fn send(
    conn: &mut PooledConn,
    req: Request<RequestBody>,
    timeout: Duration,
    body: &RequestBodyState,
    sent_at: Instant,
) -> Result<Response<Incoming>, SendFailure> {
    let fut = conn.sender.try_send_request(req);
    tokio::pin!(fut);
    let mut last_bytes = body.bytes.get();
    let mut deadline = sent_at + timeout;
    loop {
        tokio::select! {
            r = &mut fut => {
                return match r {
                    Ok(resp) => Ok(resp),
                    Err(mut e) => match e.take_message() {
                        Some(req) => Err(SendFailure::Unsent(Box::new(req))),
                        None => Err(SendFailure::Failed(e.into_error())),
                    },
                };
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now_bytes = body.bytes.get();
                if now_bytes != last_bytes {
                    last_bytes = now_bytes;
                    deadline = Instant::now() + timeout;
                } else {
                    return Err(SendFailure::Timeout(timeout));
                }
            }
        }
    }
}

/// The client address as an `X-Forwarded-For` value.
fn client_ip_value(client: SocketAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(client.ip().to_canonical().to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `X-Forwarded-For`, built at compile time: `HeaderName::from_static` at
/// run time matches the text against every standard name first.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`, see [`X_FORWARDED_FOR`].
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Appends the client address to X-Forwarded-For and sets X-Forwarded-Proto.
/// `ip` is the client address, computed once per connection.
fn add_forwarded(headers: &mut HeaderMap, ip: &HeaderValue, https: bool) {
    // One hashed lookup for "is there one?" and the insertion (an entry).
    match headers.entry(X_FORWARDED_FOR) {
        header::Entry::Occupied(mut e) => {
            let mut joined: Vec<u8> = Vec::with_capacity(64);
            for v in e.iter() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(ip.as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
                e.insert(v);
            }
        }
        header::Entry::Vacant(e) => {
            e.insert(ip.clone());
        }
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
}

/// The sizes of the request flow's futures, largest state first: what each
/// request's task touches and moves (`tests::request_future_stays_small`).
#[cfg(test)]
pub(super) fn future_sizes() -> Vec<(&'static str, usize)> {
    /// The size of what `$f` returns (an async fn's future), never calling it.
    macro_rules! returned {
        ($f:expr; $($a:ident),*) => {{
            fn returned<$($a,)* R>(_: &impl FnOnce($($a),*) -> R) -> usize {
                size_of::<R>()
            }
            returned(&$f)
        }};
    }
    let mut sizes = vec![
        ("handle", returned!(handle; A, B)),
        (
            "exchange",
            returned!(super::flow::exchange::<DaemonSides>; A, B, C, D),
        ),
        ("forward", returned!(forward; A, B, C, D, E)),
        (
            "forward_native",
            returned!(forward_native; A, B, C, D, E, F, G),
        ),
        ("forward_h2", returned!(forward_h2; A, B, C, D, E, F, G)),
        ("send (hyper)", returned!(send; A, B, C, D, E)),
        (
            "upstream_h1::send",
            returned!(super::upstream_h1::send; A, B, C, D, E, F),
        ),
        ("queue::acquire", returned!(super::queue::acquire; A, B, C)),
        ("connect_tunnel", returned!(connect_tunnel; A, B)),
        ("run_phase", returned!(super::chain::run_phase; A, B, C)),
        (
            "run_local_reply",
            returned!(super::chain::run_local_reply; A, B, C),
        ),
    ];
    sizes.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    sizes
}

/// The sizes of the values the request flow moves (`request_future_stays_small` prints them).
#[cfg(test)]
fn value_sizes() -> Vec<(&'static str, usize)> {
    vec![
        ("Txn", size_of::<Txn>()),
        ("Route", size_of::<Route>()),
        ("Exchange", size_of::<Exchange>()),
        ("Answer", size_of::<super::flow::Answer>()),
        ("ResponseBody", size_of::<ResponseBody>()),
        ("PeerBody", size_of::<PeerBody>()),
        ("RequestBody", size_of::<RequestBody>()),
        ("Request<RequestBody>", size_of::<Request<RequestBody>>()),
        ("Response<PeerBody>", size_of::<Response<PeerBody>>()),
        ("HeaderMap", size_of::<HeaderMap>()),
        ("http::request::Parts", size_of::<http::request::Parts>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each request's future is written as it advances and moved into its
    /// task's slot: its size is cache lines every request touches (bench/README.md,
    /// "user-space cost per request"). The rare states (HTTP/2 servers,
    /// hyper's client, tunnels, the queue's wait, local replies) are boxed
    /// so the common HTTP/1 proxy path stays small.
    #[test]
    fn request_future_stays_small() {
        let sizes = future_sizes();
        eprintln!("futures: {sizes:?}\nvalues: {:?}", value_sizes());
        let handle = sizes
            .iter()
            .find(|(n, _)| *n == "handle")
            .map_or(0, |s| s.1);
        let bound = 6144;
        assert!(
            handle > 0 && handle <= bound,
            "handle's future is {handle} bytes, over {bound}: {sizes:?}"
        );
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        add_forwarded(
            &mut h,
            &client_ip_value("127.0.0.1:5000".parse().expect("addr")),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            &client_ip_value("[::ffff:10.0.0.1]:5000".parse().expect("addr")),
            true,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
