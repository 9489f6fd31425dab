//! Fixtures shared by the criterion micro-benchmarks in `benches/`: rules
//! compiled through the real config loader, typical request transactions and
//! header maps. The side-by-side comparison with HAProxy is `bench/run`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis::config::BindCheck;
use portcullis::filter::{Filter, Flow};
use portcullis::txn::Txn;

/// The client address of the benchmark transactions.
pub const CLIENT: &str = "192.0.2.10:51234";

/// Compiles `rules` (TOML inline tables) as one frontend's `http_request` list
/// and returns its request filters.
///
/// # Panics
/// If the rules do not compile: the fixtures are fixed, so that is a bug here.
pub fn request_rules(rules: &[&str]) -> Vec<Arc<dyn Filter>> {
    let text = format!(
        "[[frontend]]\nname = \"bench\"\nbind = \"127.0.0.1:8080\"\nhttp_request = [\n{}\n]\n",
        rules
            .iter()
            .map(|r| format!("  {r},"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut config = portcullis::runtime::parse(Path::new("bench.toml"), &text, BindCheck::Skip)
        .unwrap_or_else(|e| panic!("bench rules do not compile: {e}\n{text}"));
    std::mem::take(&mut config.frontends[0].chain.request)
}

/// Runs the request filters in order, as the proxy does; returns the flow that
/// stopped the chain (`None` if every filter continued).
pub fn run_request(filters: &[Arc<dyn Filter>], txn: &mut Txn) -> Option<Flow> {
    for f in filters {
        match f.on_request(txn) {
            Flow::Continue => {}
            other => return Some(other),
        }
    }
    None
}

/// Request headers a browser sends to an API (11 fields, no hop-by-hop
/// header other than `Connection: keep-alive`).
pub fn browser_headers() -> HeaderMap {
    headers(&[
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("referer", "https://www.example.com/app/dashboard"),
        ("cookie", "session=4f1c2a9be07d; theme=dark; consent=1"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc123"),
        ("x-request-id", "7d9f3c2a-6b1e-4f8a-9c0d-2e5b7a1f4c3d"),
        ("sec-fetch-mode", "cors"),
        ("connection", "keep-alive"),
    ])
}

/// Response headers of a typical API answer (no hop-by-hop header).
pub fn response_headers() -> HeaderMap {
    headers(&[
        ("content-type", "application/json"),
        ("content-length", "1432"),
        ("date", "Mon, 23 Nov 2026 12:00:00 GMT"),
        ("server", "nginx"),
        ("cache-control", "no-store"),
        ("x-request-id", "7d9f3c2a-6b1e-4f8a-9c0d-2e5b7a1f4c3d"),
        ("vary", "Accept-Encoding"),
    ])
}

/// The browser headers plus hop-by-hop ones, including one the `Connection`
/// header names (a client speaking through an old forward proxy).
pub fn hop_by_hop_headers() -> HeaderMap {
    let mut h = browser_headers();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-trace"),
    );
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    h.insert("te", HeaderValue::from_static("trailers"));
    h.insert("x-trace", HeaderValue::from_static("1"));
    h
}

/// A GET of `uri` from [`CLIENT`] with the given request headers.
///
/// # Panics
/// If [`CLIENT`] does not parse (it does).
pub fn txn(uri: &str, headers: HeaderMap) -> Txn {
    let client: SocketAddr = CLIENT.parse().expect("CLIENT is an address");
    let mut t = Txn::for_test(uri, client);
    t.req_headers = headers;
    t
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

/// The rule sets the `rules` benchmark measures, by name.
pub mod rulesets {
    /// A condition on path and Host, then a header set.
    pub const COND_SET_HEADER: &[&str] = &[
        r#"{ set_header = "X-Api", value = "v1", if = "path_beg /api/ and hdr(host) -i -m end .example.com" }"#,
    ];
    /// A deny rule whose condition does not hold (the common case).
    pub const DENY_NO_MATCH: &[&str] =
        &[r#"{ deny = 403, if = "path_beg /admin or !src 192.0.2.0/24" }"#];
    /// A header value rendered from a log-format string with fetches and a converter.
    pub const LOG_FORMAT: &[&str] = &[
        r#"{ set_header = "X-Client", value = "%[src]:%[src_port] %[hdr(host),lower] %[method] %[path]" }"#,
    ];
    /// The `headers` scenario of `bench/run`: add + set + del.
    pub const HEADER_REWRITE: &[&str] = &[
        r#"{ add_header = "X-Bench-Add", value = "1" }"#,
        r#"{ set_header = "X-Bench-Set", value = "1" }"#,
        r#"{ del_header = "X-Request-Id" }"#,
    ];
    /// A small realistic request chain: deny, route, rewrite, tag.
    pub const TYPICAL_CHAIN: &[&str] = &[
        r#"{ deny = 403, if = "path_beg /admin and !src 10.0.0.0/8" }"#,
        r#"{ return = 200, content_type = "text/plain", body = "pong", if = "path /ping" }"#,
        r#"{ set_var = "txn.host", expr = "hdr(host),lower" }"#,
        r#"{ del_header = "X-Forwarded-Host" }"#,
        r#"{ add_header = "X-Bench", value = "1" }"#,
        r#"{ set_header = "X-Client", value = "%[src]" }"#,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rules: &[&str]) -> (Option<Flow>, Txn) {
        let filters = request_rules(rules);
        let mut t = txn("/api/v1/users?page=2", browser_headers());
        let flow = run_request(&filters, &mut t);
        (flow, t)
    }

    #[test]
    fn cond_set_header_matches() {
        let (flow, t) = run(rulesets::COND_SET_HEADER);
        assert!(flow.is_none());
        assert_eq!(t.req_headers["x-api"], "v1");
    }

    #[test]
    fn deny_does_not_match() {
        let (flow, t) = run(rulesets::DENY_NO_MATCH);
        assert!(flow.is_none(), "{flow:?}");
        assert_eq!(t.req_headers.len(), browser_headers().len());
    }

    #[test]
    fn log_format_renders() {
        let (_, t) = run(rulesets::LOG_FORMAT);
        assert_eq!(
            t.req_headers["x-client"],
            "192.0.2.10:51234 api.example.com GET /api/v1/users"
        );
    }

    #[test]
    fn header_rewrite_applies() {
        let (_, t) = run(rulesets::HEADER_REWRITE);
        assert_eq!(t.req_headers["x-bench-add"], "1");
        assert_eq!(t.req_headers["x-bench-set"], "1");
        assert!(!t.req_headers.contains_key("x-request-id"));
    }

    #[test]
    fn typical_chain_continues() {
        let (flow, t) = run(rulesets::TYPICAL_CHAIN);
        assert!(flow.is_none(), "{flow:?}");
        assert_eq!(t.req_headers["x-client"], "192.0.2.10");
        assert_eq!(t.req_headers["x-bench"], "1");
    }

    #[test]
    fn hop_by_hop_fixture_is_stripped() {
        let mut h = hop_by_hop_headers();
        portcullis::proxy::head::remove_connection_options(&mut h);
        portcullis::proxy::head::strip_hop_by_hop(&mut h);
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "x-trace",
        ] {
            assert!(!h.contains_key(name), "{name} left");
        }
        let mut plain = response_headers();
        portcullis::proxy::head::remove_connection_options(&mut plain);
        portcullis::proxy::head::strip_hop_by_hop(&mut plain);
        assert_eq!(plain, response_headers());
    }
}
