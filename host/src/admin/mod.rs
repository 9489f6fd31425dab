//! The admin listener: `GET /health`, `GET /stats` (JSON), `GET /metrics`
//! (Prometheus text format), `/tables` and `/plugins`, on TCP or a Unix
//! socket. Runs on the control thread, off the request path.
//!
//! Every request passes [`guard::check`] first (Host, token, body type);
//! connections are bounded by `admin_maxconn` and by [`conn`]'s deadlines.

mod certs;
pub mod conn;
pub mod guard;
pub mod metrics;
pub mod plugins;
pub mod reload;
pub mod tables;
pub mod unix;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::config::admin::Admin;
use crate::proxy::Daemon;
use crate::proxy::stats::Shared;
use crate::servers::{STATUS_CLASSES, StatusCounters};
use guard::Peer;

/// Every endpoint, as the 404 answer lists them.
const ENDPOINTS: &[&str] = &[
    "GET /health",
    "GET /stats",
    "GET /metrics",
    "POST /reload",
    "GET /plugins[/<name>]",
    "POST /plugins/<name>/limits?memory_limit=<size>",
    "POST /plugins/<name>/reload",
    "GET /tables[/<name>[/<key>]]",
    "POST|DELETE /tables/<name>/<key>, DELETE /tables/<name>",
    "POST /certificates/reload",
    "GET /peers",
    "POST /logs/reopen",
];

/// A bound admin listener.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Accepts admin connections forever, at most `admin_maxconn` at once.
pub async fn serve(listener: Listener, shared: Arc<Daemon>) {
    let Some(admin) = shared.current().config.global.admin.clone() else {
        return;
    };
    let admin = Arc::new(admin);
    let slots = Arc::new(Semaphore::new(admin.maxconn));
    loop {
        // A slot is taken before accepting: beyond the limit, connections
        // wait in the kernel's backlog and cost no task, no memory here.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().await.map(|(s, remote)| {
                let local = s.local_addr().unwrap_or(remote);
                let _ = s.set_nodelay(true);
                (Stream::Tcp(s), Peer::Tcp { local, remote })
            }),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| (Stream::Unix(s), Peer::Unix)),
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            match stream {
                Stream::Tcp(s) => serve_conn(s, peer, shared, admin).await,
                Stream::Unix(s) => serve_conn(s, peer, shared, admin).await,
            }
            drop(slot);
        });
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Serves one admin connection until it closes or a deadline passes.
async fn serve_conn<S>(stream: S, peer: Peer, shared: Arc<Daemon>, admin: Arc<Admin>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let clock = Arc::new(conn::Clock::new(admin.timeouts));
    let io = conn::AdminIo::new(stream, Arc::clone(&clock));
    let svc = service_fn(move |req: Request<Incoming>| {
        let shared = Arc::clone(&shared);
        let admin = Arc::clone(&admin);
        let clock = Arc::clone(&clock);
        async move {
            let deadline = clock.begin_request();
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let resp = match guard::check(&req, &admin, &peer) {
                Err(refusal) => *refusal,
                Ok(()) => match tokio::time::timeout_at(deadline, dispatch(req, &shared)).await {
                    Ok(r) => r,
                    Err(_) => {
                        let mut r = json_response(
                            StatusCode::REQUEST_TIMEOUT,
                            &json!({"error": format!(
                                "the request did not complete within admin_timeout.request ({:?})",
                                admin.timeouts.request
                            )}),
                        );
                        r.headers_mut()
                            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                        r
                    }
                },
            };
            if guard::changes_state(&method) {
                // An audit trail of every attempt to change state.
                tracing::info!(%peer, %method, %path, status = resp.status().as_u16(), "admin request");
            }
            clock.end_request();
            Ok::<_, Infallible>(resp)
        }
    });
    if let Err(e) = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(error = %e, %peer, "admin connection error");
    }
}

/// Runs the endpoint for an admitted request.
async fn dispatch(req: Request<Incoming>, daemon: &Arc<Daemon>) -> Response<Full<Bytes>> {
    if let Some((status, body)) = reload::route(&req, daemon).await {
        return json_response(status, &body);
    }
    let shared = &*daemon.current();
    // Table requests may carry a body (POST), so they are routed before `route`.
    if tables::owns(req.uri().path()) {
        return tables::handle(req, &shared.config.tables).await;
    }
    if req.uri().path() == certs::PATH {
        return certs::reload(req.method(), shared);
    }
    route(&req, shared)
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".to_string());
    text.push('\n');
    respond(status, "application/json", text)
}

/// Dispatches one admin request.
pub fn route(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let Some((status, body)) =
        plugins::route(req.method(), path, req.uri().query(), &shared.config)
    {
        return json_response(status, &body);
    }
    if path == "/logs/reopen" {
        if req.method() != Method::POST {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": format!("{} is not allowed on {path}; use POST", req.method())}),
            );
        }
        // The file writers reopen within 200 ms (logrotate's `postrotate`).
        crate::proxy::logsink::reopen();
        return json_response(StatusCode::OK, &json!({"reopen": "requested"}));
    }
    if path == "/peers" {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": format!("{} is not allowed on {path}; use GET", req.method())}),
            );
        }
        let sections = crate::peers::running().map_or(Value::Array(Vec::new()), |p| p.json());
        return json_response(StatusCode::OK, &json!({ "peers": sections }));
    }
    if !["/health", "/stats", "/metrics"].contains(&path) {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin endpoint {path}"), "endpoints": ENDPOINTS}),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": format!("{} is not allowed on {path}; use GET", req.method())}),
        );
    }
    match path {
        "/health" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/stats" => json_response(StatusCode::OK, &stats_json(shared)),
        _ => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(shared),
        ),
    }
}

fn classes_json(c: &StatusCounters) -> Value {
    let snap = c.snapshot();
    let mut map = serde_json::Map::new();
    for (name, n) in STATUS_CLASSES.iter().zip(snap) {
        map.insert((*name).to_string(), json!(n));
    }
    Value::Object(map)
}

/// The `/stats` document.
pub fn stats_json(shared: &Shared) -> Value {
    let config = &shared.config;
    let frontends: Vec<Value> = config
        .frontends
        .iter()
        .zip(&shared.frontends)
        .map(|(fe, st)| {
            json!({
                "name": &*fe.name,
                "binds": fe.binds.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>(),
                "requests": st.requests.load(Relaxed),
                "connections_current": st.conns.current(),
                "maxconn": st.conns.max(),
                "maxconn_reached": st.conns.reached(),
                "connections_total": st.connections_total.load(Relaxed),
                "responses": classes_json(&st.responses),
                "errors": st.errors.load(Relaxed),
                "bytes_in": st.bytes_in.load(Relaxed),
                "bytes_out": st.bytes_out.load(Relaxed),
                "tls_binds": shared
                    .tls_binds
                    .iter()
                    .filter(|b| *b.frontend == *fe.name)
                    .map(|b| json!({
                        "addr": b.addr.to_string(),
                        "tls_handshakes": b.tls_handshakes.load(Relaxed),
                        "tls_handshake_failures": b.tls_handshake_failures.load(Relaxed),
                    }))
                    .collect::<Vec<_>>(),
                "tls_handshakes": st.tls_handshakes.load(Relaxed),
                "tls_handshake_failures": st.tls_handshake_failures.load(Relaxed),
                "upgrades": st.upgrades.load(Relaxed),
                "connects": st.connects.load(Relaxed),
                "tunnels_current": st.tunnels_current.load(Relaxed),
            })
        })
        .collect();
    let backends: Vec<Value> = config
        .backends
        .iter()
        .zip(shared.backends.iter())
        .map(|(be, st)| {
            let servers: Vec<Value> = st
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "name": &*s.name,
                        "addr": s.addr.to_string(),
                        "up": s.is_up(),
                        "status": s.status_text(),
                        "weight": s.weight(),
                        "requests": s.requests.load(Relaxed),
                        "active": s.active.load(Relaxed),
                        "scur": s.active.load(Relaxed),
                        "smax": s.max_active.load(Relaxed),
                        "maxconn": s.maxconn.load(Relaxed),
                        "qcur": s.queued.load(Relaxed),
                        "qmax": s.max_queued.load(Relaxed),
                        "connects": s.connects.load(Relaxed),
                        "failures": s.failures.load(Relaxed),
                        "checks_failed": s.checks_failed.load(Relaxed),
                        "downs": s.downs.load(Relaxed),
                        "responses": classes_json(&s.responses),
                    })
                })
                .collect();
            json!({
                "name": &*be.name,
                "balance": format!("{:?}", be.balance).to_lowercase(),
                "requests": st.stats.requests.load(Relaxed),
                "no_server": st.stats.no_server.load(Relaxed),
                "qcur": st.queue.len(),
                "qmax": st.queue.max(),
                "servers_up": st.servers.iter().filter(|s| s.is_up()).count(),
                "responses": classes_json(&st.stats.responses),
                "servers": servers,
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": shared.started.elapsed().as_secs(),
        "workers": config.global.workers,
        "connections_current": shared.conns.current(),
        "maxconn": shared.conns.max(),
        "maxconn_reached": shared.conns.reached(),
        "reload": reload::stats_json(shared),
        "frontends": frontends,
        "backends": backends,
        "peers": crate::peers::running().map_or(Value::Array(Vec::new()), |p| p.json()),
    })
}
