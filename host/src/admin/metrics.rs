//! Prometheus text exposition (format 0.0.4) of the shared counters.

use std::sync::atomic::Ordering::Relaxed;

use crate::proxy::stats::Shared;
use crate::servers::STATUS_CLASSES;

pub use crate::metrics::{Family, Writer, escape_label, label};

/// Renders every metric.
pub fn render(shared: &Shared) -> String {
    let config = &shared.config;
    let mut f = Writer::new();
    f.family(
        "portcullis_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        [(String::new(), shared.started.elapsed().as_secs())],
    );
    f.family(
        "portcullis_connections_current",
        "gauge",
        "Open client connections over all frontends.",
        [(String::new(), shared.conns.current() as u64)],
    );
    f.family(
        "portcullis_maxconn",
        "gauge",
        "Global connection limit (maxconn).",
        [(String::new(), shared.conns.max() as u64)],
    );
    f.family(
        "portcullis_maxconn_reached_total",
        "counter",
        "Times accepting paused because the global maxconn was reached.",
        [(String::new(), shared.conns.reached())],
    );
    f.family(
        "portcullis_access_log_dropped_total",
        "counter",
        "Access-log lines dropped because their target could not take them (full queue or socket buffer, no syslog receiver, write error).",
        [(String::new(), crate::proxy::logsink::dropped_total())],
    );

    let fes: Vec<(String, &crate::proxy::stats::FrontendStats)> = config
        .frontends
        .iter()
        .zip(&shared.frontends)
        .map(|(fe, st)| (label("frontend", &fe.name), &**st))
        .collect();
    f.family(
        "portcullis_frontend_requests_total",
        "counter",
        "HTTP requests received.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.requests.load(Relaxed))),
    );
    f.family(
        "portcullis_frontend_responses_total",
        "counter",
        "HTTP responses sent, by status class.",
        fes.iter().flat_map(|(l, s)| {
            STATUS_CLASSES
                .iter()
                .zip(s.responses.snapshot())
                .map(move |(c, n)| (format!("{l},code=\"{c}\""), n))
        }),
    );
    f.family(
        "portcullis_frontend_connections_current",
        "gauge",
        "Open client connections.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.conns.current() as u64)),
    );
    f.family(
        "portcullis_frontend_maxconn",
        "gauge",
        "The frontend's connection limit (maxconn).",
        fes.iter().map(|(l, s)| (l.clone(), s.conns.max() as u64)),
    );
    f.family(
        "portcullis_frontend_maxconn_reached_total",
        "counter",
        "Times accepting paused because the frontend's maxconn was reached.",
        fes.iter().map(|(l, s)| (l.clone(), s.conns.reached())),
    );
    f.family(
        "portcullis_frontend_connections_total",
        "counter",
        "Client connections accepted.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.connections_total.load(Relaxed))),
    );
    f.family(
        "portcullis_frontend_bytes_in_total",
        "counter",
        "Request body bytes received from clients.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.bytes_in.load(Relaxed))),
    );
    f.family(
        "portcullis_frontend_bytes_out_total",
        "counter",
        "Response body bytes sent to clients.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.bytes_out.load(Relaxed))),
    );
    f.family(
        "portcullis_frontend_tls_handshakes_total",
        "counter",
        "TLS handshakes completed on the frontend's TLS binds.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.tls_handshakes.load(Relaxed))),
    );
    f.family(
        "portcullis_frontend_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or did not complete within timeout.http_request.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.tls_handshake_failures.load(Relaxed))),
    );
    let binds: Vec<(String, &crate::proxy::stats::BindStats)> = shared
        .tls_binds
        .iter()
        .map(|b| {
            (
                format!(
                    "{},{}",
                    label("frontend", &b.frontend),
                    label("bind", &b.addr.to_string())
                ),
                &**b,
            )
        })
        .collect();
    f.family(
        "portcullis_bind_tls_handshakes_total",
        "counter",
        "TLS handshakes completed, per TLS bind address.",
        binds
            .iter()
            .map(|(l, b)| (l.clone(), b.tls_handshakes.load(Relaxed))),
    );
    f.family(
        "portcullis_bind_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out, per TLS bind address.",
        binds
            .iter()
            .map(|(l, b)| (l.clone(), b.tls_handshake_failures.load(Relaxed))),
    );
    f.family(
        "portcullis_frontend_upgrades_total",
        "counter",
        "Tunnels opened by a protocol upgrade (HTTP/1.1 101, HTTP/2 extended CONNECT).",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.upgrades.load(Relaxed))),
    );
    f.family(
        "portcullis_frontend_connects_total",
        "counter",
        "Tunnels opened by CONNECT.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.connects.load(Relaxed))),
    );
    f.family(
        "portcullis_frontend_tunnels_current",
        "gauge",
        "Upgraded and CONNECT tunnels open now.",
        fes.iter()
            .map(|(l, s)| (l.clone(), s.tunnels_current.load(Relaxed))),
    );

    let bes: Vec<(String, &crate::servers::BackendState)> = config
        .backends
        .iter()
        .zip(shared.backends.iter())
        .map(|(be, st)| (label("backend", &be.name), st))
        .collect();
    f.family(
        "portcullis_backend_requests_total",
        "counter",
        "Requests routed to the backend.",
        bes.iter()
            .map(|(l, s)| (l.clone(), s.stats.requests.load(Relaxed))),
    );
    f.family(
        "portcullis_backend_responses_total",
        "counter",
        "Responses for requests routed to the backend, by status class.",
        bes.iter().flat_map(|(l, s)| {
            STATUS_CLASSES
                .iter()
                .zip(s.stats.responses.snapshot())
                .map(move |(c, n)| (format!("{l},code=\"{c}\""), n))
        }),
    );
    f.family(
        "portcullis_backend_no_server_total",
        "counter",
        "Requests that found no server up (503).",
        bes.iter()
            .map(|(l, s)| (l.clone(), s.stats.no_server.load(Relaxed))),
    );
    f.family(
        "portcullis_backend_queued_requests",
        "gauge",
        "Requests waiting for a server under its maxconn (HAProxy's qcur).",
        bes.iter()
            .map(|(l, s)| (l.clone(), u64::from(s.queue.len()))),
    );

    let servers: Vec<(String, &crate::servers::ServerState)> = bes
        .iter()
        .flat_map(|(l, b)| {
            b.servers
                .iter()
                .map(move |s| (format!("{l},{}", label("server", &s.name)), s))
        })
        .collect();
    f.family(
        "portcullis_server_up",
        "gauge",
        "1 if the server is up (health checks passing), else 0.",
        servers
            .iter()
            .map(|(l, s)| (l.clone(), u64::from(s.is_up()))),
    );
    f.family(
        "portcullis_server_active_requests",
        "gauge",
        "Requests being served by the server.",
        servers
            .iter()
            .map(|(l, s)| (l.clone(), u64::from(s.active.load(Relaxed)))),
    );
    f.family(
        "portcullis_server_requests_total",
        "counter",
        "Requests sent to the server.",
        servers
            .iter()
            .map(|(l, s)| (l.clone(), s.requests.load(Relaxed))),
    );
    f.family(
        "portcullis_server_failures_total",
        "counter",
        "Connection failures, resets and timeouts talking to the server.",
        servers
            .iter()
            .map(|(l, s)| (l.clone(), s.failures.load(Relaxed))),
    );
    f.family(
        "portcullis_server_connects_total",
        "counter",
        "Upstream connections opened to the server.",
        servers
            .iter()
            .map(|(l, s)| (l.clone(), s.connects.load(Relaxed))),
    );
    f.family(
        "portcullis_server_checks_failed_total",
        "counter",
        "Failed health checks.",
        servers
            .iter()
            .map(|(l, s)| (l.clone(), s.checks_failed.load(Relaxed))),
    );
    super::reload::metrics(shared, &mut f);
    for host in &config.plugins {
        host.metrics(&mut f);
    }
    for (name, kind, help, samples) in super::tables::metric_families(&config.tables) {
        f.family(name, kind, help, samples);
    }
    if let Some(p) = crate::peers::running() {
        p.metrics(&mut f);
    }
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaping() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(label("k", "plain"), "k=\"plain\"");
        let mut f = Writer::new();
        f.family(
            "x_total",
            "counter",
            "Things.",
            [(String::new(), 1), ("k=\"v\"".to_string(), 2)],
        );
        f.header("y", "gauge", Some("a\\b\nc"));
        f.header("z", "summary", None);
        f.sample("z_sum", &label("p", "q"), -1i64);
        assert_eq!(
            f.finish(),
            concat!(
                "# HELP x_total Things.\n# TYPE x_total counter\nx_total 1\nx_total{k=\"v\"} 2\n",
                "# HELP y a\\\\b\\nc\n# TYPE y gauge\n",
                "# TYPE z summary\nz_sum{p=\"q\"} -1\n",
            )
        );
    }
}
