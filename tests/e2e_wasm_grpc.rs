//! Proxy-Wasm gRPC calls through the real binary (issue #21): a filter built
//! with the Rust proxy-wasm SDK (plugins/wasm/grpc_demo) calls a real gRPC
//! server (Python grpcio) as an Envoy user's filter would: a unary auth
//! check that lets a request on or denies it by status, a bidirectional
//! stream (initial metadata, messages, trailing metadata, close, half-close
//! both ways), cancel (no callback, the server sees the cancellation),
//! the call's timeout, an unknown cluster, calls from the root context
//! (`on_tick`), TLS with ALPN h2, and a server that resets streams or
//! answers badly (Envoy's statuses for each).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const LIMIT: Duration = Duration::from_secs(10);

fn plugin_dir() -> PathBuf {
    build_wasm_examples("wasm32-unknown-unknown", &["grpc_demo"])
}

/// A config with the grpc_demo plugin (`plugin_config`) on frontend `web`,
/// backend `app` for requests that go on, and `extra` backends.
fn config(ports: &Ports, app: SocketAddr, plugin_config: &str, extra: &str) -> String {
    let wasm = plugin_dir().join("grpc_demo.wasm");
    format!(
        "{}[[plugin]]\nname = \"g\"\nwasm = \"{}\"\non_error = \"fail_closed\"\nconfig = \"{plugin_config}\"\n\n{}{}{}",
        global_section(ports.admin, &[("timeout.server", "\"5s\"")]),
        wasm.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [ { wasm = \"g\" } ]"
        ),
        backend_section("app", "roundrobin", &[("s1", app, 1)], ""),
        extra,
    )
}

fn grpc_backend(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "[[backend]]\nname = \"{name}\"\nserver = [{{ name = \"s1\", addr = \"{addr}\"{extra} }}]\n\n"
    )
}

/// One request to the frontend with `headers`.
async fn call(web: SocketAddr, headers: &[(&str, &str)]) -> Resp {
    let mut c = H1::connect(web).await;
    let mut req = request(http::Method::GET, web, "/x");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within(
        "request",
        LIMIT,
        c.send(req.body(empty()).expect("request")),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_allows_denies_and_fails_with_envoys_statuses() {
    let peer = grpc_peer(None).await;
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let down = free_addr();
    let extra = format!(
        "{}{}{}health_check = {{ interval = \"100ms\", rise = 1, fall = 1 }}\n\n",
        grpc_backend("grpc", peer.addr, ""),
        grpc_backend("down", down, ""),
        grpc_backend("checked", down, "")
    );
    let cfg = config(&ports, app.addr, "cluster=grpc", &extra);
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;

    // Allowed: the request goes on with the answer, metadata reached the server.
    let r = call(
        ports.web,
        &[
            ("x-grpc", "unary"),
            ("x-method", "Check"),
            ("x-msg", "alice"),
        ],
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(
        r.echo().header("x-grpc-answer").as_deref(),
        Some("ok:alice")
    );
    let r = call(ports.web, &[("x-grpc", "unary")]).await;
    assert_eq!(
        r.echo().header("x-grpc-answer").as_deref(),
        Some("echo:hello meta:m1")
    );

    // Denied by status: the code and message reach the plugin (proxy_get_status).
    let r = call(
        ports.web,
        &[
            ("x-grpc", "unary"),
            ("x-method", "Check"),
            ("x-msg", "mallory"),
        ],
    )
    .await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    assert_eq!(r.header("x-grpc-status").as_deref(), Some("7"));
    assert_eq!(
        r.header("x-grpc-message").as_deref(),
        Some("user mallory is denied")
    );

    // The timeout goes to the server as grpc-timeout.
    let r = call(
        ports.web,
        &[
            ("x-grpc", "unary"),
            ("x-method", "Deadline"),
            ("x-local-reply", "1"),
        ],
    )
    .await;
    assert_eq!(r.text(), "deadline");

    // An unknown method: the server's UNIMPLEMENTED (a trailers-only answer).
    let r = call(ports.web, &[("x-grpc", "unary"), ("x-method", "Nope")]).await;
    assert_eq!(
        r.header("x-grpc-status").as_deref(),
        Some("12"),
        "{}",
        r.text()
    );

    // The call's timeout: DEADLINE_EXCEEDED, in about the timeout (from
    // the server, which got it as grpc-timeout, or from the host's timer).
    let t = Instant::now();
    let r = call(
        ports.web,
        &[
            ("x-grpc", "unary"),
            ("x-method", "Sleep"),
            ("x-msg", "3000"),
            ("x-timeout-ms", "300"),
        ],
    )
    .await;
    assert_eq!(
        r.header("x-grpc-status").as_deref(),
        Some("4"),
        "{}",
        r.text()
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        t.elapsed()
    );

    // A message past the 4 MiB cap: RESOURCE_EXHAUSTED, nothing buffered past it.
    let r = call(
        ports.web,
        &[
            ("x-grpc", "unary"),
            ("x-method", "Big"),
            ("x-msg", "5000000"),
        ],
    )
    .await;
    assert_eq!(
        r.header("x-grpc-status").as_deref(),
        Some("8"),
        "{}",
        r.text()
    );
    let r = call(
        ports.web,
        &[
            ("x-grpc", "unary"),
            ("x-method", "Big"),
            ("x-msg", "100000"),
            ("x-local-reply", "1"),
        ],
    )
    .await;
    assert_eq!(r.body.len(), 100_000);

    // A cluster that is not a backend: the host call fails (PARSE_FAILURE, as Envoy).
    let r = call(ports.web, &[("x-grpc", "unary"), ("x-cluster", "nope")]).await;
    assert_eq!(r.status.as_u16(), 500, "{}", r.text());
    assert_eq!(r.header("x-dispatch").as_deref(), Some("ParseFailure"));

    // A backend whose server is down: UNAVAILABLE.
    let r = call(ports.web, &[("x-grpc", "unary"), ("x-cluster", "down")]).await;
    assert_eq!(
        r.header("x-grpc-status").as_deref(),
        Some("14"),
        "{}",
        r.text()
    );

    // A backend whose only server its health check took down: no call
    // leaves, UNAVAILABLE "no healthy upstream" (Envoy's local reply).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = call(ports.web, &[("x-grpc", "unary"), ("x-cluster", "checked")]).await;
    assert_eq!(
        r.header("x-grpc-status").as_deref(),
        Some("14"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.header("x-grpc-message").as_deref(),
        Some("no healthy upstream"),
        "{}",
        r.text()
    );

    // Many calls at once, multiplexed on one connection per worker.
    let mut all = Vec::new();
    for i in 0..20 {
        let web = ports.web;
        all.push(tokio::spawn(async move {
            let msg = format!("u{i}");
            let r = call(
                web,
                &[("x-grpc", "unary"), ("x-method", "Check"), ("x-msg", &msg)],
            )
            .await;
            (msg, r.echo().header("x-grpc-answer"))
        }));
    }
    for h in all {
        let (msg, answer) = h.await.expect("task");
        assert_eq!(answer, Some(format!("ok:{msg}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_sends_receives_metadata_and_closes() {
    let peer = grpc_peer(None).await;
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = config(
        &ports,
        app.addr,
        "cluster=grpc",
        &grpc_backend("grpc", peer.addr, ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;

    // Half-closed with proxy_grpc_close after the messages.
    let r = call(ports.web, &[("x-grpc", "stream"), ("x-msgs", "a,b,c")]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.text(), "echo:a,echo:b,echo:c");
    assert_eq!(r.header("x-grpc-status").as_deref(), Some("0"));
    assert_eq!(r.header("x-initial").as_deref(), Some("hi"));
    assert_eq!(r.header("x-trailing").as_deref(), Some("bye"));

    // Half-closed by end_stream on the last proxy_grpc_send.
    let r = call(
        ports.web,
        &[
            ("x-grpc", "stream"),
            ("x-msgs", "x,y"),
            ("x-half-close", "send"),
        ],
    )
    .await;
    assert_eq!(r.text(), "echo:x,echo:y");
    assert_eq!(r.header("x-grpc-status").as_deref(), Some("0"));

    // The server ends the stream with an error: its status and message.
    let r = call(ports.web, &[("x-grpc", "stream"), ("x-msgs", "a,fail,b")]).await;
    assert_eq!(r.text(), "echo:a");
    assert_eq!(r.header("x-grpc-status").as_deref(), Some("3"));
    assert_eq!(
        r.header("x-grpc-message").as_deref(),
        Some("fail requested")
    );
    assert_eq!(r.header("x-trailing").as_deref(), Some("bye"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_call_without_a_callback() {
    let peer = grpc_peer(None).await;
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = config(
        &ports,
        app.addr,
        "cluster=grpc",
        &grpc_backend("grpc", peer.addr, ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;

    // The cancelled Slow call (500 ms) never calls back, though the request
    // lives on for 800 ms more; the server sees the cancellation.
    let r = call(ports.web, &[("x-grpc", "cancel")]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.text(), "slept");
    assert_eq!(r.header("x-late").as_deref(), Some("no"));
    let r = call(
        ports.web,
        &[
            ("x-grpc", "unary"),
            ("x-method", "Stats"),
            ("x-local-reply", "1"),
        ],
    )
    .await;
    assert_eq!(r.text(), "cancelled=1 completed=0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_context_calls_from_on_tick() {
    let peer = grpc_peer(None).await;
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = config(
        &ports,
        app.addr,
        "cluster=grpc tick",
        &grpc_backend("grpc", peer.addr, ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let until = Instant::now() + LIMIT;
    loop {
        let r = call(ports.web, &[("x-grpc", "tick")]).await;
        if r.text() == "echo:from-tick meta:tick" {
            break;
        }
        assert!(
            Instant::now() < until,
            "no answer from the tick's call: {:?}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_and_bad_answers_map_to_envoys_statuses() {
    let bad = BadGrpc::start().await;
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = config(
        &ports,
        app.addr,
        "cluster=bad",
        &grpc_backend("bad", bad.addr, ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let status = |method: &'static str| {
        let web = ports.web;
        async move {
            let r = call(
                web,
                &[
                    ("x-grpc", "unary"),
                    ("x-service", "test.Bad"),
                    ("x-method", method),
                ],
            )
            .await;
            assert_eq!(r.status.as_u16(), 403, "{method}: {}", r.text());
            r.header("x-grpc-status").unwrap_or_default()
        }
    };
    // Reset before the answer: UNAVAILABLE; after it: INTERNAL.
    assert_eq!(status("ResetBefore").await, "14");
    assert_eq!(status("ResetAfter").await, "13");
    // A compressed message (no decompressor): INTERNAL.
    assert_eq!(status("Compressed").await, "13");
    // HTTP 503 without grpc-status: gRPC's mapping, UNAVAILABLE.
    assert_eq!(status("Http503").await, "14");
    // The body ends without trailers: UNKNOWN.
    assert_eq!(status("NoTrailers").await, "2");
    // A server that never answers: the host's timer ends the call.
    let t = Instant::now();
    let r = call(
        ports.web,
        &[
            ("x-grpc", "unary"),
            ("x-service", "test.Bad"),
            ("x-method", "Hang"),
            ("x-timeout-ms", "300"),
        ],
    )
    .await;
    assert_eq!(
        r.header("x-grpc-status").as_deref(),
        Some("4"),
        "{}",
        r.text()
    );
    assert_eq!(
        r.header("x-grpc-message").as_deref(),
        Some("upstream request timeout")
    );
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_grpc_server_with_alpn_h2() {
    let dir = TempDir::new("wasm-grpc-tls");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, "test ca");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().expect("key");
    let cert = leaf.signed_by(&key, &ca).expect("signed");
    let ca_pem = dir.write("ca.pem", &ca.pem());
    let cert_pem = dir.write("cert.pem", &cert.pem());
    let key_pem = dir.write("key.pem", &key.serialize_pem());

    let peer = grpc_peer(Some((&cert_pem, &key_pem))).await;
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let tls = format!(
        ", tls = {{ ca = \"{}\", sni = \"localhost\" }}",
        ca_pem.display()
    );
    let cfg = config(
        &ports,
        app.addr,
        "cluster=grpc",
        &grpc_backend("grpc", peer.addr, &tls),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = call(
        ports.web,
        &[("x-grpc", "unary"), ("x-method", "Check"), ("x-msg", "tls")],
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(r.echo().header("x-grpc-answer").as_deref(), Some("ok:tls"));
    let r = call(ports.web, &[("x-grpc", "stream"), ("x-msgs", "s")]).await;
    assert_eq!(r.text(), "echo:s");
}
