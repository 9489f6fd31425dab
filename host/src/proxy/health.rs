//! Active HTTP health checks: one task per checked server, on the control thread.
//!
//! A server goes down after `fall` consecutive failed checks and comes back
//! after `rise` consecutive successes (HAProxy's model); balancing reads the
//! result from the shared [`ServerState`](super::stats::ServerState).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::stats::Shared;
use crate::config::HealthCheck;

/// Spawns the health-check tasks of every backend that has a health check.
pub fn spawn_all(shared: &Arc<Shared>) {
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
            tokio::spawn(async move { check_loop(shared, b, s, check).await });
        }
    }
}

async fn check_loop(shared: Arc<Shared>, b: usize, s: usize, check: HealthCheck) {
    let backend = &shared.config.backends[b];
    let server = &backend.servers[s];
    let state = &shared.backends[b].servers[s];
    let mut successes = 0u32;
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let host = check
            .host
            .clone()
            .unwrap_or_else(|| server.addr_text.clone());
        match probe(server.addr, &host, &check).await {
            Ok(()) => {
                failures = 0;
                successes = successes.saturating_add(1);
                if !state.is_up() && successes >= check.rise && state.set_up(true) {
                    tracing::warn!(backend = %backend.name, server = %server.name, "server is UP: health check passed {successes} time(s)");
                }
            }
            Err(reason) => {
                successes = 0;
                failures = failures.saturating_add(1);
                state.checks_failed.fetch_add(1, Relaxed);
                if state.is_up() && failures >= check.fall && state.set_up(false) {
                    tracing::warn!(backend = %backend.name, server = %server.name, %reason, "server is DOWN: health check failed {failures} time(s)");
                } else {
                    tracing::debug!(backend = %backend.name, server = %server.name, %reason, "health check failed");
                }
            }
        }
    }
}

/// One check: a fresh connection, one request, the status compared with `expect`.
async fn probe(addr: std::net::SocketAddr, host: &str, check: &HealthCheck) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
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
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        // Drain (bounded by the timeout) so the server sees a clean exchange.
        let _ = resp.into_body().collect().await;
        driver.abort();
        if check.accepts(status) {
            Ok(())
        } else {
            Err(format!("unexpected status {status}"))
        }
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", check.timeout)),
    }
}
