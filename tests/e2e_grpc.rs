//! HTTP/2 to servers and gRPC end to end through the real binary (issue
//! #21): a real gRPC server and client (Python `grpcio`, tests/grpc_peer.py)
//! for unary and streaming calls, trailers, deadlines, a `deny` answered
//! with grpc-status, h2 over TLS with ALPN; an `h2`-crate server
//! (tests/common/h2server.rs) for stream resets, REFUSED_STREAM, GOAWAY
//! under load and a small SETTINGS_MAX_CONCURRENT_STREAMS.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/grpc_peer.py")
}

fn require_grpcio() {
    require_python_module("grpc", "python3-grpcio");
}

/// The Python gRPC server (h2c, or TLS with `tls` = (cert, key)).
async fn grpc_server(tls: Option<(&Path, &Path)>) -> PyServer {
    require_grpcio();
    let addr = free_addr();
    PyServer::start("grpc_peer.py", &serve_args(addr, false, tls), addr).await
}

/// Runs the Python client's `scenario` against `target`: the JSON it printed.
async fn grpc_client(target: SocketAddr, scenario: &str, arg: Option<&str>) -> Value {
    require_grpcio();
    let mut cmd = Command::new(PYTHON);
    cmd.arg(peer_script())
        .args(["client", &target.to_string(), scenario]);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python gRPC client");
    let start = Instant::now();
    while child.try_wait().expect("client status").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gRPC client ({scenario} {target}) did not finish in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = child.wait_with_output().expect("client output");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client output is not JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn config(ports: &Ports, server: SocketAddr, fe: &str, be: &str) -> String {
    format!(
        "{}{}{}",
        global_section(ports.admin, &[("timeout.server", "\"5s\"")]),
        frontend_section("web", ports.web, "app", fe),
        backend_section("app", "roundrobin", &[("s1", server, 1)], be)
    )
}

/// The access-log JSON line of the first request to `path`.
async fn log_line(d: &Daemon, path: &str) -> Value {
    let needle = format!("\"path\":\"{path}\"");
    let line = d
        .wait_stderr_line(LIMIT, |l| l.contains(&needle))
        .await
        .unwrap_or_else(|| panic!("no access-log line for {path}:\n{}", d.stderr()));
    let json = &line[line.find('{').expect("a JSON line")..];
    serde_json::from_str(json).expect("access-log JSON")
}

/// A gRPC message: the 5-byte prefix (not compressed, length) and `m`.
fn grpc_frame(m: &[u8]) -> Bytes {
    let mut v = vec![0u8];
    v.extend_from_slice(&u32::try_from(m.len()).expect("small").to_be_bytes());
    v.extend_from_slice(m);
    Bytes::from(v)
}

/// A response with its trailers.
struct Full {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// Sends `req` on `sender` and collects the whole response, trailers included.
async fn exchange(
    sender: &mut hyper::client::conn::http2::SendRequest<Body>,
    req: Request<Body>,
) -> Result<Full, BoxError> {
    within("h2 ready", LIMIT, sender.ready()).await?;
    let resp = within("h2 response head", LIMIT, sender.send_request(req)).await?;
    let (parts, body) = resp.into_parts();
    let collected = within("h2 response body", LIMIT, body.collect()).await?;
    let trailers = collected.trailers().cloned();
    Ok(Full {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// An h2c (prior knowledge) client connection to `addr`.
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

fn post(addr: SocketAddr, path: &str, body: Body) -> Request<Body> {
    Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request")
}

#[tokio::test]
async fn grpc_unary_and_streaming_calls_with_trailers_over_h2c() {
    let server = grpc_server(None).await;
    let ports = Ports::new();
    let d = Daemon::start(
        &config(&ports, server.addr, "", "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    let v = grpc_client(ports.web, "all", None).await;
    assert_eq!(v["unary"], "hello", "{v}");
    assert_eq!(v["unary_big"], 300 * 1024, "{v}");
    assert_eq!(v["server_stream"]["count"], 100, "{v}");
    assert_eq!(v["server_stream"]["last"], "99", "{v}");
    assert_eq!(v["server_stream"]["trailing"]["x-count"], "100", "{v}");
    assert_eq!(v["client_stream"], "ab".repeat(50), "{v}");
    assert_eq!(v["bidi"].as_array().map(Vec::len), Some(20), "{v}");
    assert_eq!(v["bidi"][19], "M19", "{v}");
    // A non-zero grpc-status, its message and custom trailing metadata arrive.
    assert_eq!(v["fail"]["code"], "INVALID_ARGUMENT", "{v}");
    assert_eq!(v["fail"]["details"], "bad input", "{v}");
    assert_eq!(v["fail"]["trailing"]["x-reason"], "policy", "{v}");
    // Request metadata reaches the server; te: trailers too (grpcio
    // refuses a call without it).
    assert_eq!(v["meta"]["x-token"], "abc", "{v}");
    let line = log_line(&d, "/test.Echo/Unary").await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["version"], "HTTP/2.0", "{line}");
    assert_eq!(line["grpc_status"], 0, "{line}");
    // The failed call's status, from its trailers-only answer, is logged.
    let failed = d
        .wait_stderr_line(LIMIT, |l| l.contains("\"grpc_status\":3"))
        .await;
    assert!(failed.is_some(), "{}", d.stderr());
}

#[tokio::test]
async fn grpc_status_in_response_rules_and_log_format() {
    let server = grpc_server(None).await;
    let ports = Ports::new();
    let fe = r#"http_response = [{ set_header = "x-grpc-failed", value = "%[res.grpc_status]", if = "res.grpc_status gt 0" }]
log_format = "grpc=%[res.grpc_status] %HP""#;
    let d = Daemon::start(
        &config(&ports, server.addr, fe, "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    let mut h2 = h2c(ports.web).await;
    // A trailers-only error: response rules see its status.
    let r = exchange(
        &mut h2,
        post(ports.web, "/test.Echo/Unary", full(grpc_frame(b"fail"))),
    )
    .await
    .expect("answer");
    assert_eq!(r.headers["grpc-status"], "3");
    assert_eq!(r.headers["x-grpc-failed"], "3");
    // A success: the status comes in trailers, after the rules (none set).
    let r = exchange(
        &mut h2,
        post(ports.web, "/test.Echo/Unary", full(grpc_frame(b"ok"))),
    )
    .await
    .expect("answer");
    assert!(r.headers.get("x-grpc-failed").is_none());
    assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
    // The log line sees both, the trailers' too.
    for want in ["grpc=3 /test.Echo/Unary", "grpc=0 /test.Echo/Unary"] {
        let line = d.wait_stderr_line(LIMIT, |l| l.contains(want)).await;
        assert!(line.is_some(), "{want}: {}", d.stderr());
    }
}

#[tokio::test]
async fn grpc_timeout_bounds_the_upstream_exchange() {
    let server = grpc_server(None).await;
    let ports = Ports::new();
    let d = Daemon::start(
        &config(
            &ports,
            server.addr,
            "grpc_local_replies = true",
            "proto = \"h2\"",
        ),
        &[ports.web],
    )
    .await;
    // A real client's deadline: grpc-timeout goes upstream, the call ends
    // DEADLINE_EXCEEDED on time.
    let v = grpc_client(ports.web, "deadline", None).await;
    assert_eq!(v["result"]["code"], "DEADLINE_EXCEEDED", "{v}");
    assert!(v["elapsed"].as_f64().unwrap_or(9.0) < 2.0, "{v}");
    // The proxy's own answer when the grpc-timeout runs out first (the client waits longer).
    let mut h2 = h2c(ports.web).await;
    let mut req = post(
        ports.web,
        "/test.Echo/Unary",
        full(grpc_frame(b"sleep:3000")),
    );
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("200m"));
    let t = Instant::now();
    let r = exchange(&mut h2, req).await.expect("answer");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "4", "{:?}", r.headers);
    assert_eq!(r.headers["content-type"], "application/grpc");
    assert!(r.body.is_empty());
    let line = log_line(&d, "/test.Echo/Unary").await;
    assert_eq!(line["status"], 200, "{line}");
    // A malformed grpc-timeout is ignored (the server timeout applies).
    let mut req = post(ports.web, "/test.Echo/Unary", full(grpc_frame(b"quick")));
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("10s"));
    let r = exchange(&mut h2, req).await.expect("answer");
    assert_eq!(
        r.trailers.as_ref().map(|t| t["grpc-status"].clone()),
        Some(http::HeaderValue::from_static("0"))
    );
    assert_eq!(r.body, grpc_frame(b"quick"));
}

#[tokio::test]
async fn grpc_timeout_bounds_a_response_already_streaming() {
    let server = H2Server::start(H2ServerOpts::default()).await;
    let ports = Ports::new();
    let d = Daemon::start(
        &config(&ports, server.addr, "", "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    let mut h2 = h2c(ports.web).await;
    let mut req = post(ports.web, "/stall/3000", full(grpc_frame(b"x")));
    req.headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static("300m"));
    let t = Instant::now();
    within("h2 ready", LIMIT, h2.ready()).await.expect("ready");
    let resp = within("head", LIMIT, h2.send_request(req))
        .await
        .expect("the head comes at once");
    assert_eq!(resp.status(), StatusCode::OK);
    // The body is cut at the deadline: the client's stream is reset.
    let body = within("body", LIMIT, resp.into_body().collect()).await;
    assert!(body.is_err(), "the stalled body must fail");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let line = log_line(&d, "/stall/3000").await;
    assert_eq!(line["termination"], "upstream_error", "{line}");
    // The same without grpc-timeout waits for the body.
    let r = exchange(&mut h2, post(ports.web, "/stall/500", full("y")))
        .await
        .expect("answer");
    assert_eq!(r.body, Bytes::from("y"));
}

#[tokio::test]
async fn deny_on_a_grpc_call_answers_grpc_status() {
    let server = grpc_server(None).await;
    let ports = Ports::new();
    let fe = r#"grpc_local_replies = true
http_request = [{ deny = 403, if = "path_beg /test.Echo/Unary and hdr(x-block) -m found" }, { deny = 403, if = "path /plain" }]"#;
    let _d = Daemon::start(
        &config(&ports, server.addr, fe, "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    // The real client passes (no x-block).
    let v = grpc_client(ports.web, "unary", None).await;
    assert_eq!(v["reply"], "hello", "{v}");
    let mut h2 = h2c(ports.web).await;
    let mut req = post(ports.web, "/test.Echo/Unary", full(grpc_frame(b"x")));
    req.headers_mut()
        .insert("x-block", http::HeaderValue::from_static("1"));
    let r = exchange(&mut h2, req).await.expect("answer");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "7", "PERMISSION_DENIED");
    assert_eq!(
        r.headers["grpc-message"],
        "403 Forbidden Request forbidden by administrative rules."
    );
    // Not a gRPC request: the usual 403 page.
    let req = Request::builder()
        .uri(format!("http://{}/plain", ports.web))
        .body(empty())
        .expect("request");
    let r = exchange(&mut h2, req).await.expect("answer");
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.headers.get("grpc-status").is_none());
}

#[tokio::test]
async fn grpc_to_a_tls_server_with_alpn_h2() {
    let dir = TempDir::new("grpc-tls");
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert = dir.write("cert.pem", &made.cert.pem());
    let key = dir.write("key.pem", &made.signing_key.serialize_pem());
    let server = grpc_server(Some((&cert, &key))).await;
    // proto = "h2": ALPN h2 offered by default; and negotiated from an alpn list.
    for be in [
        "proto = \"h2\"\ntls = { verify = false, sni = \"localhost\" }",
        format!(
            "tls = {{ ca = \"{}\", sni = \"localhost\", alpn = [\"h2\", \"http/1.1\"] }}",
            cert.display()
        )
        .as_str(),
    ] {
        let ports = Ports::new();
        let _d = Daemon::start(&config(&ports, server.addr, "", be), &[ports.web]).await;
        let v = grpc_client(ports.web, "all", None).await;
        assert_eq!(v["unary"], "hello", "{be}: {v}");
        assert_eq!(v["fail"]["trailing"]["x-reason"], "policy", "{be}: {v}");
        assert_eq!(v["server_stream"]["count"], 100, "{be}: {v}");
    }
}

#[tokio::test]
async fn a_reset_stream_fails_only_its_request() {
    let server = H2Server::start(H2ServerOpts::default()).await;
    let ports = Ports::new();
    let d = Daemon::start(
        &config(&ports, server.addr, "", "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    let h2 = h2c(ports.web).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut s = h2.clone();
        let path = if i == 5 {
            "/reset".to_string()
        } else {
            format!("/slow/{}", 100 + i)
        };
        let web = ports.web;
        tasks.push(tokio::spawn(async move {
            let r = exchange(&mut s, post(web, &path, full(format!("m{i}")))).await;
            (path, r)
        }));
    }
    for t in tasks {
        let (path, r) = t.await.expect("task");
        let r = r.expect("an answer");
        if path == "/reset" {
            assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}");
        } else {
            assert_eq!(r.status, StatusCode::OK, "{path}");
            assert!(r.body.starts_with(b"m"), "{path}");
            assert_eq!(r.trailers.expect("trailers")["grpc-status"], "0");
        }
    }
    // Processed by the server: not retried.
    assert_eq!(server.state.path_count("/reset"), 1);
    // The proxy and the upstream connection still serve.
    let mut s = h2.clone();
    let r = exchange(&mut s, post(ports.web, "/after", full("x")))
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        server.state.connections.load(SeqCst),
        1,
        "one multiplexed connection"
    );
    let line = log_line(&d, "/reset").await;
    assert_eq!(line["status"], 502, "{line}");
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_once() {
    let server = H2Server::start(H2ServerOpts::default()).await;
    let ports = Ports::new();
    let _d = Daemon::start(
        &config(&ports, server.addr, "", "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    let mut h2 = h2c(ports.web).await;
    let r = exchange(&mut h2, post(ports.web, "/refuse-once/a", full("payload")))
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, Bytes::from("payload"), "the body was replayed");
    assert_eq!(server.state.refused.load(SeqCst), 1);
    assert_eq!(server.state.path_count("/refuse-once/a"), 2);
}

#[tokio::test]
async fn the_retry_buffer_bounds_what_is_sent_again() {
    // h2.retry_buffer = 8 bytes: a 7-byte body is replayed, a 9-byte one
    // is not (the refused request is a 502), a body-less one always is.
    let server = H2Server::start(H2ServerOpts::default()).await;
    let ports = Ports::new();
    let _d = Daemon::start(
        &config(
            &ports,
            server.addr,
            "",
            "proto = \"h2\"\nh2 = { retry_buffer = \"8\" }",
        ),
        &[ports.web],
    )
    .await;
    let mut h2 = h2c(ports.web).await;
    for (key, body, want) in [
        ("small", "7 bytes", StatusCode::OK),
        ("large", "9 bytes!!", StatusCode::BAD_GATEWAY),
        ("empty", "", StatusCode::OK),
    ] {
        let path = format!("/refuse-once/{key}");
        let r = exchange(&mut h2, post(ports.web, &path, full(body)))
            .await
            .expect("answer");
        assert_eq!(r.status, want, "{key}");
        let tries = if want == StatusCode::OK { 2 } else { 1 };
        assert_eq!(server.state.path_count(&path), tries, "{key}");
    }
}

#[tokio::test]
async fn goaway_under_load_loses_no_request() {
    let server = H2Server::start(H2ServerOpts {
        goaway_after: 7,
        ..Default::default()
    })
    .await;
    let ports = Ports::new();
    let d = Daemon::start(
        &config(&ports, server.addr, "", "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    let h2 = h2c(ports.web).await;
    let mut tasks = Vec::new();
    for c in 0..16 {
        let mut s = h2.clone();
        let web = ports.web;
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            for i in 0..20 {
                let body = format!("c{c}-r{i}");
                match exchange(
                    &mut s,
                    post(web, &format!("/echo/{c}/{i}"), full(body.clone())),
                )
                .await
                {
                    Ok(r) if r.status == StatusCode::OK && r.body == body.as_bytes() => {}
                    Ok(r) => bad.push(format!("{body}: {} {:?}", r.status, r.body)),
                    Err(e) => bad.push(format!("{body}: {e}")),
                }
            }
            bad
        }));
    }
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await.expect("task"));
    }
    assert!(
        bad.is_empty(),
        "{} lost requests, the first: {:?}\n{}",
        bad.len(),
        bad.get(..3),
        d.stderr()
            .lines()
            .filter(|l| !l.contains("\"status\":200"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let st = &server.state;
    assert!(st.goaways.load(SeqCst) >= 10, "{st:?}");
    assert!(st.connections.load(SeqCst) >= 10, "{st:?}");
    // Every request was processed once: retries only for unprocessed ones.
    assert_eq!(
        st.paths
            .lock()
            .expect("lock")
            .values()
            .filter(|&&n| n != 1)
            .count(),
        0
    );
}

#[tokio::test]
async fn the_stream_limit_opens_connections_up_to_the_cap() {
    let server = H2Server::start(H2ServerOpts {
        max_streams: 2,
        ..Default::default()
    })
    .await;
    let ports = Ports::new();
    let _d = Daemon::start(
        &config(
            &ports,
            server.addr,
            "",
            "proto = \"h2\"\nh2 = { max_streams = 100, max_connections = 3 }",
        ),
        &[ports.web],
    )
    .await;
    let h2 = h2c(ports.web).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut s = h2.clone();
        let web = ports.web;
        tasks.push(tokio::spawn(async move {
            exchange(&mut s, post(web, "/slow/300", full(format!("{i}")))).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("task").expect("answer");
        assert_eq!(r.status, StatusCode::OK);
    }
    let st = &server.state;
    assert_eq!(st.connections.load(SeqCst), 3, "{st:?}");
    assert!(st.max_open.load(SeqCst) <= 2, "{st:?}");
}

#[tokio::test]
async fn trailers_go_both_ways_from_http2_and_http1_clients() {
    let server = H2Server::start(H2ServerOpts::default()).await;
    let ports = Ports::new();
    let _d = Daemon::start(
        &config(&ports, server.addr, "", "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    // HTTP/2 client: request trailers reach the server, its trailers come back.
    let (tx, body) = chan_body_with_trailers();
    let mut h2 = h2c(ports.web).await;
    let req = post(ports.web, "/t", body);
    let fut = tokio::spawn(async move { exchange(&mut h2, req).await });
    tx.send(Ok(http_body::Frame::data(Bytes::from("abc"))))
        .await
        .expect("send");
    let mut t = HeaderMap::new();
    t.insert("x-sum", http::HeaderValue::from_static("42"));
    tx.send(Ok(http_body::Frame::trailers(t)))
        .await
        .expect("send");
    drop(tx);
    let r = fut.await.expect("task").expect("answer");
    assert_eq!(r.body, Bytes::from("abc"));
    let trailers = r.trailers.expect("trailers");
    assert_eq!(trailers["x-echo-x-sum"], "42");
    assert_eq!(trailers["grpc-status"], "0");
    // HTTP/1.1 client: chunked trailers to the server, and back (it sent `te: trailers`).
    let raw = "POST /h1 HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\nx-h1: yes\r\n\r\n";
    let mut s = TcpStream::connect(ports.web).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + LIMIT;
    // The last chunk, its trailers and the blank line end the response.
    while !(String::from_utf8_lossy(&got).contains("grpc-status") && got.ends_with(b"\r\n\r\n")) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("x-echo-x-h1: yes"), "{text}");
    assert!(text.contains("grpc-status: 0"), "{text}");
    // The server declared no trailer: the gRPC status trailers still come through.
    let raw = "POST /h1-bare HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nContent-Length: 3\r\n\r\nabc";
    let (_s, r) = raw_exchange(ports.web, raw.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let _ = r;
    let mut s = TcpStream::connect(ports.web).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    while !(String::from_utf8_lossy(&got).contains("grpc-status") && got.ends_with(b"\r\n\r\n")) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert!(
        text.contains("trailer: grpc-status, grpc-message, grpc-status-details-bin"),
        "{text}"
    );
    assert!(text.contains("\r\ngrpc-status: 0\r\n"), "{text}");
}

/// A request body fed frame by frame (data and trailers).
fn chan_body_with_trailers() -> (
    tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, BoxError>>,
    Body,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, ChanFrames(rx).boxed())
}

struct ChanFrames(tokio::sync::mpsc::Receiver<Result<http_body::Frame<Bytes>, BoxError>>);

impl http_body::Body for ChanFrames {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn negotiated_alpn_speaks_what_the_handshake_settled() {
    // The server: another portcullis on TLS, offering ALPN as given, in
    // front of an echo backend; its access log says what it was spoken to in.
    let b = Backend::start("s1").await;
    let dir = TempDir::new("alpn-negotiate");
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert = dir.write("cert.pem", &made.cert.pem());
    let key = dir.write("key.pem", &made.signing_key.serialize_pem());
    for (offered, want) in [
        ("[\"http/1.1\"]", "HTTP/1.1"),
        ("[\"h2\", \"http/1.1\"]", "HTTP/2.0"),
    ] {
        let inner_ports = Ports::new();
        let fe = format!(
            "tls = {{ cert = \"{}\", key = \"{}\", alpn = {offered} }}",
            cert.display(),
            key.display()
        );
        let inner = Daemon::start(
            &format!(
                "{}{}{}",
                global_section(inner_ports.admin, &[]),
                frontend_section("web", inner_ports.web, "app", &fe),
                backend_section("app", "roundrobin", &[("s1", b.addr, 1)], "")
            ),
            &[inner_ports.web],
        )
        .await;
        let ports = Ports::new();
        let be = "tls = { verify = false, sni = \"localhost\", alpn = [\"h2\", \"http/1.1\"] }";
        let _d = Daemon::start(&config(&ports, inner_ports.web, "", be), &[ports.web]).await;
        let mut c = H1::connect(ports.web).await;
        for i in 0..3 {
            let r = c.get(&format!("/neg/{i}")).await;
            assert_eq!(r.status, StatusCode::OK, "{offered}: {}", r.text());
            assert_eq!(r.echo().path(), format!("/neg/{i}"));
        }
        for i in 0..3 {
            let line = log_line(&inner, &format!("/neg/{i}")).await;
            assert_eq!(line["version"], want, "{offered}: {line}");
        }
    }
}

/// An h2c test server (with RFC 8441 when `extended_connect`) behind the
/// daemon as a `proto = "h2"` backend.
async fn behind_us(extended_connect: bool) -> (H2Server, Ports, Daemon) {
    let server = H2Server::start(H2ServerOpts {
        extended_connect,
        ..Default::default()
    })
    .await;
    let ports = Ports::new();
    let d = Daemon::start(
        &config(&ports, server.addr, "", "proto = \"h2\""),
        &[ports.web],
    )
    .await;
    (server, ports, d)
}

const WS_HANDSHAKE: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn a_websocket_goes_to_an_http2_server_as_an_extended_connect() {
    // As HAProxy 2.4+ does: RFC 8441 on the server side, the client's
    // HTTP/1.1 handshake answered with the 101 and accept key it expects.
    let (server, ports, d) = behind_us(true).await;
    let (mut s, r) = raw_exchange(ports.web, WS_HANDSHAKE.as_bytes()).await;
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(r.header("upgrade"), Some("websocket"), "{}", r.head);
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{}",
        r.head
    );
    assert_eq!(r.header("x-tunnel"), Some("yes"), "{}", r.head);
    // The tunnel: bytes go to the server's stream and come back.
    for msg in [&b"hello"[..], &[7u8; 70_000][..]] {
        s.write_all(msg).await.expect("write");
        let back = read_n(&mut s, msg.len()).await;
        assert_eq!(back, msg);
    }
    let seen = server.state.connects.lock().expect("lock").clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].protocol.as_deref(), Some("websocket"));
    assert_eq!(seen[0].path, "/ws");
    for gone in ["upgrade", "connection"] {
        assert!(!seen[0].headers.iter().any(|h| h == gone), "{seen:?}");
    }
    assert!(
        seen[0].headers.iter().any(|h| h == "sec-websocket-version"),
        "{seen:?}"
    );
    drop(s);
    // Logged once the tunnel is over, with what the server answered.
    let line = log_line(&d, "/ws").await;
    assert_eq!(line["status"], 101, "{line}");
    assert!(line["bytes_in"].as_u64().unwrap_or(0) >= 70_005, "{line}");
}

#[tokio::test]
async fn http2_websockets_reach_an_http2_server_and_share_its_connection() {
    // Two HTTP/2 clients' extended CONNECTs and ordinary requests on one
    // upstream connection: each tunnel is a stream of it.
    let (server, ports, _d) = behind_us(true).await;
    let mut tunnels = Vec::new();
    for i in 0..2 {
        let tcp = TcpStream::connect(ports.web).await.expect("connect");
        let (mut h2, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        tokio::spawn(conn);
        h2 = h2.ready().await.expect("ready");
        let mut req = Request::builder()
            .method("CONNECT")
            .uri(format!("http://x/chat/{i}"))
            .header("sec-websocket-version", "13")
            .body(())
            .expect("request");
        req.extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        let (resp, mut send) = h2.send_request(req, false).expect("send");
        let resp = within("tunnel answer", LIMIT, resp).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(!resp.headers().contains_key("sec-websocket-accept"));
        let mut body = resp.into_body();
        send.send_data(Bytes::from(format!("ping {i}")), false)
            .expect("data");
        let got = within("tunnel echo", LIMIT, body.data())
            .await
            .expect("a frame")
            .expect("data");
        assert_eq!(got, Bytes::from(format!("ping {i}")));
        tunnels.push((h2, send, body));
    }
    let mut c = H1::connect(ports.web).await;
    assert_eq!(c.get("/plain").await.status, StatusCode::OK);
    assert_eq!(server.state.connections.load(SeqCst), 1);
    assert_eq!(server.state.connects.lock().expect("lock").len(), 2);
}

#[tokio::test]
async fn haproxy_26_carries_a_websocket_to_an_http2_server_alike() {
    // HAProxy 2.6 with `proto h2` in front of the same RFC 8441 server: the
    // same answer to the client, the same extended CONNECT to the server.
    haproxy_26();
    let (server, ports, _d) = behind_us(true).await;
    let hp_web = free_addr();
    let dir = TempDir::new("ws-h2-haproxy");
    let hp_cfg = format!(
        "global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 2s\n  timeout server 2s\n  timeout tunnel 5s\nfrontend web\n  bind {hp_web}\n  default_backend app\nbackend app\n  server s1 {} proto h2\n",
        server.addr
    );
    let _hp = HaProxy::start(&hp_cfg, dir.path(), hp_web).await;
    let mut answers = Vec::new();
    for addr in [ports.web, hp_web] {
        let (mut s, r) = raw_exchange(addr, WS_HANDSHAKE.as_bytes()).await;
        assert_eq!(r.status, 101, "{addr}: {}", r.head);
        s.write_all(b"over the tunnel").await.expect("write");
        assert_eq!(read_n(&mut s, 15).await, b"over the tunnel");
        let pick = |h: &str| r.header(h).map(str::to_ascii_lowercase);
        answers.push((
            pick("upgrade"),
            pick("connection"),
            pick("sec-websocket-accept"),
        ));
    }
    assert_eq!(answers[0], answers[1], "ours, then HAProxy's");
    let seen = server.state.connects.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].protocol, seen[1].protocol);
    assert_eq!(seen[0].path, seen[1].path);
    for s in &seen {
        // HAProxy sends the client's key along (RFC 8441 servers ignore it).
        assert!(
            s.headers.iter().any(|h| h == "sec-websocket-key"),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn a_reload_keeps_the_http2_connection_to_a_kept_server() {
    let server = H2Server::start(H2ServerOpts::default()).await;
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[("admin_token", ADMIN_TOKEN_TOML)]),
        frontend_section("web", ports.web, "app", ""),
        backend_section(
            "app",
            "roundrobin",
            &[("s1", server.addr, 1)],
            "proto = \"h2\""
        )
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let mut c = H1::connect(ports.web).await;
    assert_eq!(c.get("/before").await.status, StatusCode::OK);
    for n in 1..=2 {
        let r = admin_send(ports.admin, http::Method::POST, "/reload", "").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        // A new client connection is served by the new generation.
        let mut c = H1::connect(ports.web).await;
        assert_eq!(c.get(&format!("/after/{n}")).await.status, StatusCode::OK);
    }
    assert_eq!(server.state.path_count("/after/2"), 1);
    assert_eq!(
        server.state.connections.load(SeqCst),
        1,
        "the reloads opened new connections to the same server"
    );
}

#[tokio::test]
async fn a_websocket_to_an_http2_server_without_rfc_8441_is_a_502() {
    let (server, ports, d) = behind_us(false).await;
    let (_s, r) = raw_exchange(ports.web, WS_HANDSHAKE.as_bytes()).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(server.state.streams.load(SeqCst), 0);
    let line = log_line(&d, "/ws").await;
    assert!(
        line["termination"]
            .as_str()
            .is_some_and(|t| t.contains("did not enable extended CONNECT")),
        "{line}"
    );
    // The connection still carries ordinary requests.
    let mut c = H1::connect(ports.web).await;
    assert_eq!(c.get("/after").await.status, StatusCode::OK);
    assert_eq!(server.state.connections.load(SeqCst), 1);
}

#[tokio::test]
async fn health_checks_speak_http2_to_h2_servers() {
    // An h2c-only server: an HTTP/1.1 check would fail and take it down.
    let server = H2Server::start(H2ServerOpts::default()).await;
    let ports = Ports::new();
    let be = "proto = \"h2\"\nhealth_check = { path = \"/health\", interval = \"100ms\", rise = 1, fall = 1 }";
    let _d = Daemon::start(&config(&ports, server.addr, "", be), &[ports.web]).await;
    let start = Instant::now();
    while server.state.path_count("/health") < 3 {
        assert!(
            start.elapsed() < LIMIT,
            "no HTTP/2 health check reached the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut h2 = h2c(ports.web).await;
    let r = exchange(&mut h2, post(ports.web, "/after-checks", full("x")))
        .await
        .expect("answer");
    assert_eq!(r.status, StatusCode::OK, "the server stayed up");
}

#[tokio::test]
async fn proto_errors_name_the_key() {
    let dir = TempDir::new("proto-check");
    for (be, want) in [
        ("proto = \"h3\"", "unknown proto \"h3\""),
        (
            "proto = \"h2\"\ntls = { verify = false, alpn = [\"http/1.1\"] }",
            "does not offer \"h2\"",
        ),
        (
            "tls = { verify = false, alpn = [\"spdy/3\"] }",
            "ALPN \"spdy/3\" is not supported",
        ),
        (
            "h2 = { max_streams = 0 }",
            "h2.max_streams must be between 1 and 65535",
        ),
        (
            "h2 = { ping_timeout = \"0s\" }",
            "h2.ping_timeout must be above 0",
        ),
        (
            "h2 = { retry_buffer = \"1g\" }",
            "h2.retry_buffer of 1000000000 bytes is above the limit",
        ),
    ] {
        let ports = Ports::new();
        let text = config(&ports, "127.0.0.1:9".parse().expect("addr"), "", be);
        let file = dir.write("c.toml", &text);
        let out = run_bin(&["check", "-c", &file.display().to_string()], LIMIT);
        assert!(
            out.status.is_some_and(|s| !s.success()),
            "{be}: accepted\n{}",
            out.stderr
        );
        assert!(out.stderr.contains(want), "{be}: {}", out.stderr);
        assert!(out.stderr.contains("c.toml:"), "{be}: {}", out.stderr);
    }
}
