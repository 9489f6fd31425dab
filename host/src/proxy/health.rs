//! Active HTTP health checks: one task per checked server, on the control thread.
//!
//! A server goes down after `fall` consecutive failed checks and comes back
//! after `rise` consecutive successes (HAProxy's model); balancing reads the
//! result from the shared [`ServerState`](crate::servers::ServerState), whose health counter
//! moves as HAProxy's does.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::stats::Shared;
use crate::config::HealthCheck;
use crate::servers::{CheckStatus, Transition};

/// Spawns the health-check tasks of every backend that has a health check;
/// a reload aborts them through the handles returned.
pub fn spawn_all(shared: &Arc<Shared>) -> Vec<tokio::task::AbortHandle> {
    let mut tasks = Vec::new();
    for (b, backend) in shared.config.backends.iter().enumerate() {
        let Some(check) = &backend.health_check else {
            continue;
        };
        for (s, server) in backend.servers.iter().enumerate() {
            if !server.check {
                continue;
            }
            let shared = Arc::clone(shared);
            let check = check.clone();
            tasks.push(
                tokio::spawn(async move { check_loop(shared, b, s, check).await }).abort_handle(),
            );
        }
    }
    tasks
}

async fn check_loop(shared: Arc<Shared>, b: usize, s: usize, check: HealthCheck) {
    let backend = &shared.config.backends[b];
    let server = &backend.servers[s];
    let state = &shared.backends[b].servers[s];
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // `check_disable` (Lua) pauses checks; the state stays as it was.
        if !state.check_enabled() {
            continue;
        }
        let host = check
            .host
            .clone()
            .unwrap_or_else(|| server.addr_text.clone());
        let started = std::time::Instant::now();
        state.set_checking(true);
        let tls = server
            .tls
            .as_ref()
            .and_then(|u| u.target(&server.addr_text, Some(&host)));
        let probe = probe(server.addr, &host, &check, tls, server.proto).await;
        state.set_checking(false);
        let ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        match state.record_check(probe.status, probe.code, ms) {
            Some(Transition::Up) => {
                tracing::warn!(backend = %backend.name, server = %server.name, check = probe.status.as_str(), "server is UP: health check passed");
            }
            Some(Transition::Down) => {
                tracing::warn!(backend = %backend.name, server = %server.name, check = probe.status.as_str(), reason = %probe.reason, "server is DOWN: health check failed");
            }
            None if probe.status != CheckStatus::L7Ok => {
                tracing::debug!(backend = %backend.name, server = %server.name, reason = %probe.reason, "health check failed");
            }
            None => {}
        }
    }
}

/// One check's outcome, as HAProxy names it.
struct Probe {
    status: CheckStatus,
    /// The HTTP status, 0 before a response.
    code: u16,
    reason: String,
}

impl Probe {
    fn failed(status: CheckStatus, reason: String) -> Probe {
        Probe {
            status,
            code: 0,
            reason,
        }
    }
}

/// One check: a fresh connection, one request, the status compared with `expect`.
async fn probe(
    addr: std::net::SocketAddr,
    host: &str,
    check: &HealthCheck,
    tls: Option<crate::tls::client::Target>,
    proto: crate::config::h2::UpstreamProto,
) -> Probe {
    use crate::config::h2::UpstreamProto;
    // One deadline for the whole check (connect, request, response), as before
    // the connect step got its own status.
    let deadline = tokio::time::Instant::now() + check.timeout;
    let connect = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Probe::failed(CheckStatus::L4Con, format!("connect: {e}")),
        Err(_) => {
            return Probe::failed(
                CheckStatus::L4Tout,
                format!("connect timed out after {:?}", check.timeout),
            );
        }
    };
    let attempt = async {
        let stream = connect;
        let _ = stream.set_nodelay(true);
        match tls {
            Some(t) => {
                let tls = tokio_rustls::TlsConnector::from(t.config)
                    .connect(t.name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                // The server's protocol, as HAProxy's checks use the server's `proto`.
                let h2 = match proto {
                    UpstreamProto::Http1 => false,
                    UpstreamProto::H2 => true,
                    UpstreamProto::Negotiate => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
                };
                exchange(tls, host, check, h2).await
            }
            None => exchange(stream, host, check, proto == UpstreamProto::H2).await,
        }
    };
    match tokio::time::timeout_at(deadline, attempt).await {
        Ok(Ok(code)) if check.accepts(code) => Probe {
            status: CheckStatus::L7Ok,
            code,
            reason: String::new(),
        },
        Ok(Ok(code)) => Probe {
            status: CheckStatus::L7Sts,
            code,
            reason: format!("unexpected status {code}"),
        },
        Ok(Err(reason)) => Probe::failed(CheckStatus::L7Rsp, reason),
        Err(_) => Probe::failed(
            CheckStatus::L7Tout,
            format!("timed out after {:?}", check.timeout),
        ),
    }
}

/// The check's request and response over `io` (TCP, or TLS over it), in
/// HTTP/2 when `h2`.
async fn exchange<T>(io: T, host: &str, check: &HealthCheck, h2: bool) -> Result<u16, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(io),
        )
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let uri = format!("http://{host}{}", check.path);
        let req = http::Request::builder()
            .method(check.method.clone())
            .uri(uri.as_str())
            .header(http::header::USER_AGENT, "portcullis-health-check")
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        return answer(sender.send_request(req), driver).await;
    }
    {
        let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .method(check.method.clone())
            .uri(check.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::CONNECTION, "close")
            .header(http::header::USER_AGENT, "portcullis-health-check")
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        answer(sender.send_request(req), driver).await
    }
}

/// The status of a check's answer, drained (bounded by the check's timeout)
/// so the server sees a clean exchange; then the connection goes.
async fn answer(
    resp: impl std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, hyper::Error>>,
    driver: tokio::task::JoinHandle<()>,
) -> Result<u16, String> {
    let resp = resp.await.map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    driver.abort();
    Ok(status)
}
