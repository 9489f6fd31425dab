//! WebSockets and other tunnels through the real binary (issue #21): a real
//! WebSocket server and client (Python `websockets`, tests/websocket_peer.py)
//! through HTTP/1.1 upgrades (plain and TLS on both sides), request rules and
//! Lua actions on the upgrade request, the tunnel idle timeout, many sockets
//! at once, the counters and the access-log line; HAProxy 2.6 side by side
//! for a denied upgrade and a 101; WebSockets over HTTP/2 (RFC 8441) from a
//! hyper HTTP/2 client; `CONNECT` forward tunnels with their allow-list.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/websocket_peer.py")
}

fn require_websockets() {
    require_python_module("websockets", "python3-websockets");
}

/// The Python WebSocket server (TLS with `tls` = (cert, key)).
async fn ws_server(tls: Option<(&Path, &Path)>) -> PyServer {
    require_websockets();
    let addr = free_addr();
    PyServer::start("websocket_peer.py", &serve_args(addr, true, tls), addr).await
}

/// Runs the Python client's `scenario` against `url`: the JSON it printed.
async fn ws_client(url: &str, scenario: &str, n: usize, env: &[(&str, &str)]) -> Value {
    let mut child = Command::new(PYTHON)
        .arg(peer_script())
        .args(["client", url, scenario, &n.to_string()])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python WebSocket client");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("client status").is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the WebSocket client ({scenario} {url}) did not finish in 60 s");
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

fn no_error(v: &Value) {
    assert!(v.get("error").is_none(), "client failed: {v}");
}

fn config(
    ports: &Ports,
    server: SocketAddr,
    global: &[(&str, &str)],
    fe: &str,
    be: &str,
) -> String {
    format!(
        "{}{}{}",
        global_section(ports.admin, global),
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

async fn frontend_stats(admin: SocketAddr) -> Value {
    let s = stats(admin).await;
    named(&s["frontends"], "web").expect("frontend web").clone()
}

#[tokio::test]
async fn websocket_echo_large_frames_client_close_counters_and_log() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let d = Daemon::start(&config(&ports, server.addr, &[], "", ""), &[ports.web]).await;
    let url = format!("ws://{}/echo", ports.web);
    let v = ws_client(&url, "echo", 1, &[]).await;
    no_error(&v);
    assert_eq!(v["text"], "hello through the proxy");
    assert_eq!(v["binary_ok"], true, "1 MiB frame intact: {v}");
    assert_eq!(v["close_code"], 1000, "client-initiated close: {v}");
    let h = &v["hello"]["headers"];
    assert_eq!(h["upgrade"], "websocket", "the server saw the upgrade: {h}");
    assert!(
        h["connection"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{h}"
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    let line = log_line(&d, "/echo").await;
    assert_eq!(line["status"], 101, "{line}");
    assert!(line["bytes_in"].as_u64().unwrap_or(0) > 1 << 20, "{line}");
    assert!(line["bytes"].as_u64().unwrap_or(0) > 1 << 20, "{line}");
    assert_eq!(line["termination"], "tunnel closed (--)", "{line}");
    let fe = frontend_stats(ports.admin).await;
    assert_eq!(fe["upgrades"], 1, "{fe}");
    assert_eq!(fe["tunnels_current"], 0, "{fe}");
    let metrics = get(ports.admin, "/metrics").await.text();
    assert!(
        metrics.contains("portcullis_frontend_upgrades_total{frontend=\"web\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn server_close_reaches_the_client() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let _d = Daemon::start(&config(&ports, server.addr, &[], "", ""), &[ports.web]).await;
    let v = ws_client(&format!("ws://{}/close", ports.web), "server-close", 1, &[]).await;
    no_error(&v);
    assert_eq!(v["close_code"], 4000, "{v}");
    assert_eq!(v["reason"], "bye", "{v}");
}

#[tokio::test]
async fn idle_tunnel_closes_after_timeout_tunnel() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    // The client and server timeouts (2 s) do not apply once the tunnel timeout is set.
    let cfg = config(&ports, server.addr, &[("timeout.tunnel", "\"1s\"")], "", "");
    let d = Daemon::start(&cfg, &[ports.web]).await;
    let v = ws_client(&format!("ws://{}/idle", ports.web), "idle", 1, &[]).await;
    no_error(&v);
    let after = v["closed_after"].as_f64().expect("closed_after");
    assert!((0.8..4.0).contains(&after), "closed after {after} s: {v}");
    assert_eq!(v["close_frame"], false, "the proxy closes the sockets: {v}");
    let line = log_line(&d, "/idle").await;
    assert_eq!(
        line["termination"], "tunnel idle timeout, client side (cD)",
        "{line}"
    );
    // Without timeout.tunnel, the client timeout (2 s) bounds an idle tunnel.
    let ports = Ports::new();
    let _d = Daemon::start(&config(&ports, server.addr, &[], "", ""), &[ports.web]).await;
    let v = ws_client(&format!("ws://{}/idle2", ports.web), "idle", 1, &[]).await;
    let after = v["closed_after"].as_f64().expect("closed_after");
    assert!((1.8..6.0).contains(&after), "closed after {after} s: {v}");
}

#[tokio::test]
async fn shutdown_closes_open_tunnels_and_logs_them() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let cfg = config(
        &ports,
        server.addr,
        &[("timeout.tunnel", "\"30s\"")],
        "",
        "",
    );
    let mut d = Daemon::start(&cfg, &[ports.web]).await;
    let url = format!("ws://{}/held", ports.web);
    let client = ws_client(&url, "idle", 1, &[]);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        d.signal(libc::SIGTERM);
    };
    let (v, ()) = tokio::join!(client, stop);
    no_error(&v);
    let after = v["closed_after"].as_f64().expect("closed_after");
    assert!(after < 10.0, "the tunnel outlived the shutdown: {v}");
    let status = d.wait_exit(LIMIT).await.expect("the daemon exits");
    assert!(status.success(), "{status}");
    let line = log_line(&d, "/held").await;
    assert_eq!(
        line["termination"], "tunnel closed by shutdown (KD)",
        "{line}"
    );
}

#[tokio::test]
async fn request_rule_denies_the_upgrade_and_others_pass() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let fe = r#"http_request = [
  { deny = true, if = "path /private and hdr(upgrade) -i websocket" },
  { set_header = "x-rule", value = "seen %[hdr(upgrade)]" },
]"#;
    let _d = Daemon::start(&config(&ports, server.addr, &[], fe, ""), &[ports.web]).await;
    let v = ws_client(&format!("ws://{}/private", ports.web), "refused", 1, &[]).await;
    no_error(&v);
    assert_eq!(v["status"], 403, "{v}");
    let v = ws_client(&format!("ws://{}/public", ports.web), "echo", 1, &[]).await;
    no_error(&v);
    assert_eq!(v["hello"]["headers"]["x-rule"], "seen websocket", "{v}");
    let fe = frontend_stats(ports.admin).await;
    assert_eq!(fe["upgrades"], 1, "only the allowed one: {fe}");
}

#[tokio::test]
async fn response_rule_sees_the_101_and_can_refuse_it() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let fe = r#"http_response = [
  { deny = true, if = "status 101 and path /no" },
  { set_header = "x-resp", value = "%[status]" },
]"#;
    let _d = Daemon::start(&config(&ports, server.addr, &[], fe, ""), &[ports.web]).await;
    let v = ws_client(&format!("ws://{}/no", ports.web), "refused", 1, &[]).await;
    assert_eq!(v["status"], 502, "a deny in the response phase: {v}");
    // A raw handshake shows the 101's headers: the rule's, Upgrade, Connection.
    let (_s, r) = raw_head(ports.web, handshake("/yes", ports.web).as_bytes()).await;
    assert_eq!(r.status, 101, "{}", r.text);
    assert_eq!(r.header("x-resp"), Some("101"));
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert!(
        r.header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("upgrade"))
    );
    assert_eq!(
        r.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the server's accept key for the RFC 6455 sample key"
    );
}

#[tokio::test]
async fn lua_action_sets_a_header_on_the_upgrade_request() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let dir = TempDir::new("ws-lua");
    let script = dir.write(
        "ws.lua",
        r#"core.register_action("tag_ws", {"http-req"}, function(txn)
  txn.http:req_set_header("x-lua", "upgrade:" .. (txn.http:req_get_headers()["upgrade"][0] or "none"))
end)
"#,
    );
    let cfg = format!(
        "{}[[plugin]]\nname = \"p\"\nlua = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[]),
        script.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [{ lua = \"tag_ws\" }]"
        ),
        backend_section("app", "roundrobin", &[("s1", server.addr, 1)], "")
    );
    let _d = Daemon::start(&cfg, &[ports.web]).await;
    let v = ws_client(&format!("ws://{}/lua", ports.web), "echo", 1, &[]).await;
    no_error(&v);
    assert_eq!(v["hello"]["headers"]["x-lua"], "upgrade:websocket", "{v}");
    assert_eq!(v["binary_ok"], true);
}

#[tokio::test]
async fn many_concurrent_sockets() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let _d = Daemon::start(&config(&ports, server.addr, &[], "", ""), &[ports.web]).await;
    let v = ws_client(&format!("ws://{}/many", ports.web), "many", 100, &[]).await;
    assert_eq!(v["ok"], 100, "{v}");
    let fe = frontend_stats(ports.admin).await;
    assert_eq!(fe["upgrades"], 100, "{fe}");
    let start = Instant::now();
    loop {
        let fe = frontend_stats(ports.admin).await;
        if fe["tunnels_current"] == 0 {
            break;
        }
        assert!(start.elapsed() < LIMIT, "tunnels left open: {fe}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn upgrades_not_listed_reach_the_server_as_plain_requests() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let cfg = config(&ports, server.addr, &[], "upgrades = []", "");
    let _d = Daemon::start(&cfg, &[ports.web]).await;
    // The server sees a GET without Upgrade and says so (426).
    let v = ws_client(&format!("ws://{}/off", ports.web), "refused", 1, &[]).await;
    assert_eq!(v["status"], 426, "{v}");
    let fe = frontend_stats(ports.admin).await;
    assert_eq!(fe["upgrades"], 0, "{fe}");
}

#[tokio::test]
async fn bytes_sent_with_the_handshake_reach_the_server() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let _d = Daemon::start(&config(&ports, server.addr, &[], "", ""), &[ports.web]).await;
    // The handshake and a first (masked) frame in one write: the frame was
    // read by the HTTP layer past the head and must go through the tunnel.
    let mut s = TcpStream::connect(ports.web).await.expect("connect");
    let mut bytes = handshake("/eager", ports.web).into_bytes();
    bytes.extend_from_slice(&ws_frame(0x1, b"eager"));
    s.write_all(&bytes).await.expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (op, hello) = read_frame(&mut s).await;
    assert_eq!(op, 0x1, "the hello text frame");
    assert!(String::from_utf8_lossy(&hello).contains("/eager"));
    let (op, echo) = read_frame(&mut s).await;
    assert_eq!((op, echo.as_slice()), (0x1, &b"eager"[..]));
}

/// A server that answers every request head `101` to `Upgrade: foo` (its
/// request head is sent back as the first bytes), then echoes bytes until
/// the client ends its half.
async fn foo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    head.push(b[0]);
                }
                let reply = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n";
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let _ = s.write_all(&(head.len() as u32).to_be_bytes()).await;
                let _ = s.write_all(&head).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn another_protocol_when_listed_with_half_close() {
    let server = foo_server().await;
    let ports = Ports::new();
    let cfg = config(
        &ports,
        server,
        &[],
        "upgrades = [\"websocket\", \"Foo\"]",
        "",
    );
    let d = Daemon::start(&cfg, &[ports.web]).await;
    let req = format!(
        "GET /foo HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: foo/1\r\n\r\n",
        ports.web
    );
    let (mut s, head) = raw_head(ports.web, req.as_bytes()).await;
    assert_eq!(head.status, 101, "{}", head.text);
    assert_eq!(head.header("upgrade"), Some("foo"));
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.expect("len");
    let mut seen = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut seen)
        .await
        .expect("head seen by the server");
    let seen = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(seen.contains("upgrade: foo/1\r\n"), "{seen}");
    assert!(seen.contains("connection: upgrade\r\n"), "{seen}");
    s.write_all(b"abc").await.expect("write");
    let mut buf = [0u8; 3];
    within("echo", LIMIT, s.read_exact(&mut buf))
        .await
        .expect("echo");
    assert_eq!(&buf, b"abc");
    // Our half-close reaches the server, whose close comes back.
    s.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    within("close", LIMIT, s.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(rest.is_empty());
    let line = log_line(&d, "/foo").await;
    assert_eq!(line["termination"], "tunnel closed (--)", "{line}");
    assert_eq!(line["bytes_in"], 3, "{line}");
    // Not listed: Upgrade is removed, so this server's 101 is unexpected (502).
    let ports = Ports::new();
    let _d = Daemon::start(&config(&ports, server, &[], "", ""), &[ports.web]).await;
    let req = format!(
        "GET /foo HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n",
        ports.web
    );
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 502, "{}", r.text());
}

// ---------------------------------------------------------------------------
// TLS on both sides
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_over_a_tls_bind_to_a_tls_server() {
    let dir = TempDir::new("ws-tls");
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let cert = dir.write("cert.pem", &made.cert.pem());
    let key = dir.write("key.pem", &made.signing_key.serialize_pem());
    let server = ws_server(Some((&cert, &key))).await;
    let ports = Ports::new();
    let fe = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    );
    let be = "tls = { verify = false }";
    let d = Daemon::start(&config(&ports, server.addr, &[], &fe, be), &[ports.web]).await;
    let v = ws_client(
        &format!("wss://localhost:{}/tls", ports.web.port()),
        "echo",
        1,
        &[],
    )
    .await;
    no_error(&v);
    assert_eq!(v["binary_ok"], true, "{v}");
    assert_eq!(v["hello"]["headers"]["x-forwarded-proto"], "https", "{v}");
    let line = log_line(&d, "/tls").await;
    assert_eq!(line["status"], 101, "{line}");
}

// ---------------------------------------------------------------------------
// HAProxy 2.6 side by side
// ---------------------------------------------------------------------------

/// An HTTP/1.1 WebSocket handshake with RFC 6455's sample key.
fn handshake(path: &str, host: SocketAddr) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

#[tokio::test]
async fn haproxy_26_answers_a_denied_upgrade_and_a_101_alike() {
    haproxy_26();
    let server = ws_server(None).await;
    let ports = Ports::new();
    let fe = r#"http_request = [{ deny = true, if = "path /denied" }]"#;
    let _d = Daemon::start(&config(&ports, server.addr, &[], fe, ""), &[ports.web]).await;
    let hp_web = free_addr();
    let dir = TempDir::new("ws-haproxy");
    let hp_cfg = format!(
        "global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 2s\n  timeout server 2s\n  timeout tunnel 5s\nfrontend web\n  bind {hp_web}\n  http-request deny if {{ path /denied }}\n  default_backend app\nbackend app\n  server s1 {}\n",
        server.addr
    );
    let _hp = HaProxy::start(&hp_cfg, dir.path(), hp_web).await;
    for path in ["/denied", "/open"] {
        let (mut ours_s, ours) = raw_head(ports.web, handshake(path, ports.web).as_bytes()).await;
        let (mut theirs_s, theirs) = raw_head(hp_web, handshake(path, hp_web).as_bytes()).await;
        assert_eq!(
            ours.status, theirs.status,
            "{path}: ours {} / HAProxy {}",
            ours.text, theirs.text
        );
        for h in ["upgrade", "sec-websocket-accept"] {
            assert_eq!(
                ours.header(h).map(str::to_ascii_lowercase),
                theirs.header(h).map(str::to_ascii_lowercase),
                "{path}: {h}"
            );
        }
        assert_eq!(
            ours.header("connection").map(str::to_ascii_lowercase),
            theirs.header("connection").map(str::to_ascii_lowercase),
            "{path}: connection"
        );
        if ours.status == 101 {
            // Both then carry frames: the hello from the server.
            for s in [&mut ours_s, &mut theirs_s] {
                let (op, hello) = read_frame(s).await;
                assert_eq!(op, 0x1);
                assert!(String::from_utf8_lossy(&hello).contains("/open"));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket frames by hand (for raw and HTTP/2 clients)
// ---------------------------------------------------------------------------

/// A client frame (masked, RFC 6455 §5.3) with opcode `op`.
fn ws_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | op];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one whole server frame (unmasked): (opcode, payload).
async fn read_frame<S: AsyncReadExt + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    within("frame head", LIMIT, s.read_exact(&mut head))
        .await
        .expect("frame head");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.expect("len16");
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.expect("len64");
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    within("frame payload", LIMIT, s.read_exact(&mut payload))
        .await
        .expect("frame payload");
    (head[0] & 0x0f, payload)
}

/// A response head read off a raw socket (nothing past it).
struct Head {
    status: u16,
    text: String,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.text.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Connects, writes `bytes`, reads the response head only (a tunnel's
/// bytes follow it).
async fn raw_head(addr: SocketAddr, bytes: &[u8]) -> (TcpStream, Head) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let text = read_head(&mut s).await;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text}"));
    (s, Head { status, text })
}

/// Reads a response head byte by byte (nothing past it).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        within("response head", LIMIT, s.read_exact(&mut b))
            .await
            .expect("response head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

// ---------------------------------------------------------------------------
// HTTP/2 (RFC 8441)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn websocket_over_http2_extended_connect_to_an_http1_server() {
    let server = ws_server(None).await;
    let ports = Ports::new();
    let fe = r#"http_request = [{ set_header = "x-method", value = "%[method]" }]"#;
    let d = Daemon::start(&config(&ports, server.addr, &[], fe, ""), &[ports.web]).await;
    let stream = TcpStream::connect(ports.web).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/h2ws", ports.web))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = within("extended CONNECT", LIMIT, sender.send_request(req))
        .await
        .expect("extended CONNECT accepted (SETTINGS_ENABLE_CONNECT_PROTOCOL)");
    assert_eq!(resp.status(), 200, "RFC 8441: 200 opens the stream");
    let up = within("upgrade", LIMIT, hyper::upgrade::on(resp))
        .await
        .expect("upgraded stream");
    let mut io = hyper_util::rt::TokioIo::new(up);
    let (op, hello) = read_frame(&mut io).await;
    assert_eq!(op, 0x1);
    let hello: Value = serde_json::from_slice(&hello).expect("hello JSON");
    assert_eq!(hello["path"], "/h2ws");
    let h = &hello["headers"];
    assert_eq!(h["upgrade"], "websocket", "{h}");
    assert_eq!(
        h["x-method"], "GET",
        "the rules see the HTTP/1.1 upgrade: {h}"
    );
    assert!(
        h["sec-websocket-key"]
            .as_str()
            .is_some_and(|k| k.len() == 24),
        "{h}"
    );
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    io.write_all(&ws_frame(0x2, &big)).await.expect("send");
    let (op, back) = read_frame(&mut io).await;
    assert_eq!((op, back.len()), (0x2, big.len()));
    assert!(back == big, "binary echo over HTTP/2 intact");
    io.write_all(&ws_frame(0x8, &1000u16.to_be_bytes()))
        .await
        .expect("close");
    let (op, _) = read_frame(&mut io).await;
    assert_eq!(op, 0x8, "the server answers the close");
    let line = log_line(&d, "/h2ws").await;
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["version"], "HTTP/2.0", "{line}");
    let fe = frontend_stats(ports.admin).await;
    assert_eq!(fe["upgrades"], 1, "{fe}");
}

/// An HTTP/2 connection to `addr` (prior knowledge).
async fn h2_sender(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
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

#[tokio::test]
async fn http2_connect_and_a_protocol_not_listed() {
    let echo = tcp_echo().await;
    let server = ws_server(None).await;
    let ports = Ports::new();
    let fe = format!("connect = {{ allow = [\"{echo}\"] }}");
    let _d = Daemon::start(&config(&ports, server.addr, &[], &fe, ""), &[ports.web]).await;
    let mut sender = h2_sender(ports.web).await;
    // An extended CONNECT for a protocol `upgrades` does not list: 405.
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/chat", ports.web))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("irc"));
    let resp = within("extended CONNECT", LIMIT, sender.send_request(req))
        .await
        .expect("answered");
    assert_eq!(resp.status(), 405);
    // A plain CONNECT on an HTTP/2 stream: 200, then the stream is the tunnel.
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(echo.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = within("CONNECT", LIMIT, sender.send_request(req))
        .await
        .expect("answered");
    assert_eq!(resp.status(), 200);
    let up = within("upgrade", LIMIT, hyper::upgrade::on(resp))
        .await
        .expect("tunnel stream");
    let mut io = hyper_util::rt::TokioIo::new(up);
    io.write_all(b"over an h2 stream").await.expect("write");
    let mut buf = [0u8; 17];
    within("echo", LIMIT, io.read_exact(&mut buf))
        .await
        .expect("echo");
    assert_eq!(&buf, b"over an h2 stream");
    let fe = frontend_stats(ports.admin).await;
    assert_eq!(fe["connects"], 1, "{fe}");
}

// ---------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------

/// A TCP echo server.
async fn tcp_echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn connect_tunnels_only_to_allowed_destinations() {
    let echo = tcp_echo().await;
    let other = tcp_echo().await;
    let ports = Ports::new();
    let unused = free_addr();
    let fe = format!(
        "connect = {{ allow = [\"127.0.0.0/8:{}\", \"localhost:{}\", \"127.0.0.1:{}\"] }}",
        echo.port(),
        other.port(),
        unused.port()
    );
    let d = Daemon::start(&config(&ports, echo, &[], &fe, ""), &[ports.web]).await;
    // Allowed by network: 200, then bytes both ways.
    let req = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
    let mut s = TcpStream::connect(ports.web).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    s.write_all(b"ping through CONNECT").await.expect("write");
    let mut buf = [0u8; 20];
    within("echo", LIMIT, s.read_exact(&mut buf))
        .await
        .expect("echo");
    assert_eq!(&buf, b"ping through CONNECT");
    drop(s);
    // Allowed by name (resolved), on its port only.
    let req = format!(
        "CONNECT localhost:{} HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
        other.port(),
        other.port()
    );
    let (_s, r) = raw_head(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Not listed: 403 (a name by its name or by the addresses it resolves to).
    let port = free_addr().port();
    let req = format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(
        r.status,
        403,
        "localhost is allowed on other ports only: {}",
        r.text()
    );
    let req = "CONNECT 10.1.2.3:443 HTTP/1.1\r\nHost: 10.1.2.3:443\r\n\r\n";
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Allowed, but nothing listens: 502.
    let req = format!("CONNECT {unused} HTTP/1.1\r\nHost: {unused}\r\n\r\n");
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 502, "{}", r.text());
    // No port: 400.
    let (_s, r) = raw_exchange(
        ports.web,
        b"CONNECT localhost HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let fe = frontend_stats(ports.admin).await;
    assert_eq!(fe["connects"], 2, "{fe}");
    let line = d
        .wait_stderr_line(LIMIT, |l| {
            l.contains("\"method\":\"CONNECT\"") && l.contains("tunnel")
        })
        .await
        .expect("a CONNECT log line");
    assert!(line.contains(&format!("\"path\":\"{echo}\"")), "{line}");
}

#[tokio::test]
async fn curl_through_a_connect_tunnel() {
    let app = Backend::start("app").await;
    let ports = Ports::new();
    let fe = format!("connect = {{ allow = [\"{}\"] }}", app.addr);
    let _d = Daemon::start(&config(&ports, app.addr, &[], &fe, ""), &[ports.web]).await;
    let (proxy, target) = (
        format!("http://{}", ports.web),
        format!("http://{}/through", app.addr),
    );
    // Off this thread: the backend runs on the test's runtime.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sSv", "--max-time", "10", "-p", "-x", &proxy, &target])
            .output()
    })
    .await
    .expect("curl thread")
    .expect("curl is required (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("/through"),
        "the backend answered through the tunnel: {body}"
    );
}

#[tokio::test]
async fn connect_without_the_setting_is_405_and_config_errors_name_the_entry() {
    let echo = tcp_echo().await;
    let ports = Ports::new();
    let _d = Daemon::start(&config(&ports, echo, &[], "", ""), &[ports.web]).await;
    let req = format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n");
    let (_s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 405);
    for (fe, want) in [
        ("connect = { allow = [\"db.example\"] }", "no port"),
        ("connect = { allow = [] }", "connect.allow is empty"),
        (
            "connect = { allow = [\"10.0.0.0/40:22\"] }",
            "prefix length",
        ),
        ("upgrades = [\"web socket\"]", "is not a protocol name"),
        ("upgrades = [\"h2c\"]", "h2c"),
        (
            "mode = \"tcp\"\nupgrades = [\"websocket\"]",
            "`upgrades` is an HTTP setting",
        ),
    ] {
        let dir = TempDir::new("ws-check");
        let path = dir.write("c.toml", &config(&ports, echo, &[], fe, ""));
        let f = run_bin(&["check", "-c", path.to_str().expect("path")], LIMIT);
        assert!(
            f.status.is_some_and(|s| !s.success()),
            "{fe} must be refused"
        );
        assert!(f.stderr.contains(want), "{fe}: {}", f.stderr);
        assert!(
            f.stderr.contains("c.toml:"),
            "names the place: {}",
            f.stderr
        );
    }
}
