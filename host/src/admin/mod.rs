//! The admin listener: `GET /health`, `GET /stats` (JSON) and `GET /metrics`
//! (Prometheus text format). Runs on the control thread, off the request path.

pub mod metrics;
pub mod plugins;
pub mod tables;

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
use tokio::net::TcpListener;

use crate::proxy::stats::{STATUS_CLASSES, Shared, StatusCounters};

/// Accepts admin connections forever.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move {
                    // Table requests may carry a body (POST), so they are routed before `route`.
                    if tables::owns(req.uri().path()) {
                        return Ok::<_, Infallible>(
                            tables::handle(req, &shared.config.tables).await,
                        );
                    }
                    Ok::<_, Infallible>(route(&req, &shared))
                }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
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
    let known = ["/health", "/stats", "/metrics", "/tables"];
    if !known.contains(&path) {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin endpoint {path}"), "endpoints": known}),
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
            })
        })
        .collect();
    let backends: Vec<Value> = config
        .backends
        .iter()
        .zip(&shared.backends)
        .map(|(be, st)| {
            let servers: Vec<Value> = st
                .servers
                .iter()
                .map(|s| {
                    json!({
                        "name": &*s.name,
                        "addr": s.addr.to_string(),
                        "up": s.is_up(),
                        "status": if s.is_up() { "UP" } else { "DOWN" },
                        "weight": s.weight,
                        "requests": s.requests.load(Relaxed),
                        "active": s.active.load(Relaxed),
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
        "frontends": frontends,
        "backends": backends,
    })
}
