//! Prometheus text exposition (format 0.0.4) of the shared counters.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use crate::proxy::stats::{STATUS_CLASSES, Shared};

/// Escapes a label value as the exposition format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Collects samples per metric family so each family is written once with its HELP and TYPE.
struct Families {
    out: String,
}

impl Families {
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, u64)>,
    ) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.out, "{name} {value}");
            } else {
                let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
            }
        }
    }
}

/// Renders every metric.
pub fn render(shared: &Shared) -> String {
    let config = &shared.config;
    let mut f = Families {
        out: String::with_capacity(4096),
    };
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

    let fes: Vec<(String, &crate::proxy::stats::FrontendStats)> = config
        .frontends
        .iter()
        .zip(&shared.frontends)
        .map(|(fe, st)| (format!("frontend=\"{}\"", esc(&fe.name)), st))
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

    let bes: Vec<(String, &crate::proxy::stats::BackendState)> = config
        .backends
        .iter()
        .zip(&shared.backends)
        .map(|(be, st)| (format!("backend=\"{}\"", esc(&be.name)), st))
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

    let servers: Vec<(String, &crate::proxy::stats::ServerState)> = bes
        .iter()
        .flat_map(|(l, b)| {
            b.servers
                .iter()
                .map(move |s| (format!("{l},server=\"{}\"", esc(&s.name)), s))
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
    for (name, kind, help, samples) in super::plugins::metric_families(config) {
        f.family(name, kind, help, samples);
    }
    for (name, kind, help, samples) in super::tables::metric_families(&config.tables) {
        f.family(name, kind, help, samples);
    }
    for (name, kind, help, samples) in crate::wasm::admin::metric_families(&config.wasm_plugins) {
        f.family(name, kind, help, samples);
    }
    f.out.push_str(&crate::wasm::admin::guest_metrics());
    f.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaping() {
        assert_eq!(esc("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        let mut f = Families { out: String::new() };
        f.family(
            "x_total",
            "counter",
            "Things.",
            [(String::new(), 1), ("k=\"v\"".to_string(), 2)],
        );
        assert_eq!(
            f.out,
            "# HELP x_total Things.\n# TYPE x_total counter\nx_total 1\nx_total{k=\"v\"} 2\n"
        );
    }
}
