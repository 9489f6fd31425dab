//! TCP frontends (`mode = "tcp"`, HAProxy's `mode tcp`) end to end: the
//! splice both ways, `tcp_request` rules with `inspect_delay`, backends
//! that are down, idle and tunnel timeouts, `maxconn`, the access-log line,
//! config errors; Lua `tcp-req` actions on raw channels and TCP services.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

fn config(web: SocketAddr, admin: SocketAddr, frontend_extra: &str, backends: &str) -> String {
    format!(
        "{}[[frontend]]\nname = \"tcpfe\"\nbind = \"{web}\"\nmode = \"tcp\"\ndefault_backend = \"a\"\n{frontend_extra}\n{backends}",
        global_section(admin, &[("access_log", "\"text\"")])
    )
}

fn backend(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "[[backend]]\nname = \"{name}\"\n{extra}\n[[backend.server]]\nname = \"s1\"\naddr = \"{addr}\"\n"
    )
}

/// Reads until the peer closes; the time it took.
async fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await;
    (out, start.elapsed())
}

#[tokio::test]
async fn splices_both_ways_and_logs_the_connection() {
    let [web, admin] = free_addrs();
    let a = tcp_echo("A:").await;
    let d = Daemon::start(&config(web, admin, "", &backend("a", a, "")), &[web]).await;
    let mut c = TcpStream::connect(web).await.expect("connect");
    c.write_all(b"hello").await.expect("write");
    assert_eq!(read_n(&mut c, 7).await, b"A:hello");
    // A large transfer goes through the fixed buffers intact.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = c.into_split();
    let payload = big.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&payload).await.expect("write big");
        w.shutdown().await.expect("half-close");
    });
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, r.read_to_end(&mut got))
        .await
        .expect("echo within the limit")
        .expect("read");
    writer.await.expect("writer");
    assert_eq!(got, big, "the echo came back whole after the half-close");
    let line = d
        .wait_stderr_line(LIMIT, |l| {
            l.contains("tcpfe a/s1 \"TCP") && l.contains(" 200007 ")
        })
        .await
        .expect("a TCP access-log line");
    assert!(line.contains(" --"), "normal termination: {line}");
}

#[tokio::test]
async fn reject_rule_closes_before_any_server() {
    let [web, admin] = free_addrs();
    let a = tcp_echo("A:").await;
    let rules = r#"
[[frontend.tcp_request]]
reject = true
if = "src 127.0.0.1"
"#;
    let d = Daemon::start(&config(web, admin, rules, &backend("a", a, "")), &[web]).await;
    let mut c = TcpStream::connect(web).await.expect("connect");
    let _ = c.write_all(b"hello").await;
    let (got, _) = read_to_close(&mut c).await;
    assert!(got.is_empty(), "nothing from the server: {got:?}");
    let line = d
        .wait_stderr_line(LIMIT, |l| l.contains("\"TCP"))
        .await
        .expect("log line");
    assert!(
        line.contains("tcpfe -/- ") && line.ends_with(" PR"),
        "{line}"
    );
}

#[tokio::test]
async fn content_rules_wait_for_data_within_inspect_delay() {
    let [web, admin] = free_addrs();
    let a = tcp_echo("A:").await;
    let b = tcp_echo("B:").await;
    let rules = r#"
inspect_delay = "3s"
[[frontend.tcp_request]]
use_backend = "b"
if = "req.payload(0,5) -m str HELLO"
[[frontend.tcp_request]]
accept = true
"#;
    let backends = format!("{}{}", backend("a", a, ""), backend("b", b, ""));
    let _d = Daemon::start(&config(web, admin, rules, &backends), &[web]).await;
    // The first bytes arrive in two pieces: the rule waits for the fifth.
    let mut c = TcpStream::connect(web).await.expect("connect");
    c.write_all(b"HEL").await.expect("write");
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.write_all(b"LO!").await.expect("write");
    assert_eq!(read_n(&mut c, 8).await, b"B:HELLO!");
    // Other data: the condition fails once it can be decided (5 bytes there).
    let mut c = TcpStream::connect(web).await.expect("connect");
    c.write_all(b"WORLD").await.expect("write");
    assert_eq!(read_n(&mut c, 7).await, b"A:WORLD");
}

#[tokio::test]
async fn silent_client_is_held_only_until_inspect_delay() {
    let [web, admin] = free_addrs();
    let a = tcp_echo("A:").await;
    let rules = r#"
inspect_delay = "400ms"
[[frontend.tcp_request]]
reject = true
unless = "req.len gt 0"
"#;
    let d = Daemon::start(&config(web, admin, rules, &backend("a", a, "")), &[web]).await;
    let mut c = TcpStream::connect(web).await.expect("connect");
    let (got, took) = read_to_close(&mut c).await;
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "closed after the inspect delay, took {took:?}"
    );
    d.wait_stderr_line(LIMIT, |l| l.contains("\"TCP") && l.ends_with(" PR"))
        .await
        .expect("rejected after the delay");
    // A client that speaks is forwarded at once.
    let mut c = TcpStream::connect(web).await.expect("connect");
    let start = Instant::now();
    c.write_all(b"x").await.expect("write");
    assert_eq!(read_n(&mut c, 3).await, b"A:x");
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn backend_down_closes_after_retries_and_logs_sc() {
    let [web, admin, dead] = free_addrs();
    let extra = "timeout = { connect = \"100ms\" }";
    let d = Daemon::start(&config(web, admin, "", &backend("a", dead, extra)), &[web]).await;
    let mut c = TcpStream::connect(web).await.expect("connect");
    let _ = c.write_all(b"hello").await;
    let (got, took) = read_to_close(&mut c).await;
    assert!(got.is_empty());
    // Three retries, each after a 100 ms turn-around.
    assert!(took >= Duration::from_millis(250), "retried: {took:?}");
    let line = d
        .wait_stderr_line(LIMIT, |l| l.contains("\"TCP"))
        .await
        .expect("log line");
    assert!(line.contains("a/s1") && line.ends_with(" SC"), "{line}");
}

#[tokio::test]
async fn tunnel_timeout_closes_an_idle_connection() {
    let [web, admin] = free_addrs();
    let a = tcp_echo("").await;
    let extra = "timeout = { tunnel = \"300ms\" }";
    let d = Daemon::start(&config(web, admin, "", &backend("a", a, extra)), &[web]).await;
    let mut c = TcpStream::connect(web).await.expect("connect");
    c.write_all(b"ping").await.expect("write");
    assert_eq!(read_n(&mut c, 4).await, b"ping");
    let (_, took) = read_to_close(&mut c).await;
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "closed by the tunnel timeout (client timeout is 2s): {took:?}"
    );
    let line = d
        .wait_stderr_line(LIMIT, |l| l.contains("\"TCP - -\" 0 4 "))
        .await
        .expect("log line");
    assert!(line.ends_with(" cD"), "{line}");
}

#[tokio::test]
async fn frontend_maxconn_holds_the_next_connection() {
    let [web, admin] = free_addrs();
    let a = tcp_echo("").await;
    let _d = Daemon::start(
        &config(web, admin, "maxconn = 1", &backend("a", a, "")),
        &[web],
    )
    .await;
    let mut first = TcpStream::connect(web).await.expect("connect");
    first.write_all(b"1").await.expect("write");
    assert_eq!(read_n(&mut first, 1).await, b"1");
    let mut second = TcpStream::connect(web).await.expect("connect (backlog)");
    second.write_all(b"2").await.expect("write");
    let mut buf = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(400), second.read(&mut buf))
            .await
            .is_err(),
        "the second connection waits while the first holds the only slot"
    );
    drop(first);
    assert_eq!(read_n(&mut second, 1).await, b"2");
}

fn check(config: &str) -> Finished {
    let dir = TempDir::new("tcpcheck");
    let path = dir.write("p.toml", config);
    run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT)
}

#[test]
fn http_settings_on_a_tcp_frontend_are_errors() {
    let [web, admin, a] = free_addrs();
    let cfg = config(
        web,
        admin,
        "[[frontend.http_request]]\nset_header = \"x\"\nvalue = \"y\"\n",
        &backend("a", a, ""),
    );
    let out = check(&cfg);
    assert!(out.status.is_some_and(|s| !s.success()));
    assert!(
        out.stderr.contains("`http_request` is an HTTP setting") && out.stderr.contains("p.toml:"),
        "{}",
        out.stderr
    );
    let cfg = config(
        web,
        admin,
        "[[frontend.tcp_request]]\nset_header = \"x\"\nvalue = \"y\"\n",
        &backend("a", a, ""),
    );
    let out = check(&cfg);
    assert!(
        out.stderr
            .contains("`set_header` cannot be used in tcp_request rules"),
        "{}",
        out.stderr
    );
    let cfg = format!(
        "{}[[frontend]]\nname = \"h\"\nbind = \"{web}\"\ndefault_backend = \"a\"\ninspect_delay = \"1s\"\n{}",
        global_section(admin, &[]),
        backend("a", a, "")
    );
    let out = check(&cfg);
    assert!(out.stderr.contains("add mode = \"tcp\""), "{}", out.stderr);
    // TLS is terminated on HTTP frontends only, for now: refused, not ignored.
    let cfg = config(
        web,
        admin,
        "tls = { cert = \"c.pem\", key = \"k.pem\" }\n",
        &backend("a", a, ""),
    );
    let out = check(&cfg);
    assert!(
        out.stderr.contains("TLS on a TCP frontend") && out.stderr.contains("p.toml:"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// Lua in TCP mode, side by side with HAProxy 2.6
// ---------------------------------------------------------------------------

/// A fixture file of `../shared/fixtures/haproxy-lua/` (checked to exist).
fn fixture(dir: &str, file: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/haproxy-lua")
        .join(dir)
        .join(file);
    assert!(
        p.is_file(),
        "fixture {} is missing (see /work/shared/fixtures/haproxy-lua/README.md)",
        p.display()
    );
    p.display().to_string()
}

/// A client's side of a SOCKS5 exchange, sent in small pieces (the
/// script's reads wait for each): what the proxy answered at each step.
async fn socks5_client(addr: SocketAddr) -> Vec<Vec<u8>> {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let mut seen = Vec::new();
    // Greeting: version 5, two methods (none, username/password), split.
    c.write_all(&[5, 2]).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(&[0, 2]).await.expect("write");
    seen.push(read_n(&mut c, 2).await);
    // RFC 1929 login.
    c.write_all(&[1, 5]).await.expect("write");
    c.write_all(b"alice").await.expect("write");
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.write_all(&[3]).await.expect("write");
    c.write_all(b"pwd").await.expect("write");
    seen.push(read_n(&mut c, 2).await);
    // CONNECT 10.1.2.3:8080, then data for the server in the same write.
    let mut req = vec![5, 1, 0, 1, 10, 1, 2, 3, 0x1f, 0x90];
    req.extend_from_slice(b"hello");
    c.write_all(&req).await.expect("write");
    seen.push(read_n(&mut c, 10 + 7).await);
    seen
}

#[tokio::test]
async fn socks5_fixture_matches_haproxy() {
    haproxy_26();
    let [web, admin, hweb] = free_addrs();
    let e = tcp_echo("E:").await;
    let script = fixture("socks5-connect-inline-auth", "socks5.lua");
    let cfg = format!(
        "{}[[plugin]]\nname = \"socks5\"\nlua = \"{script}\"\n\n[[frontend]]\nname = \"socks\"\nbind = \"{web}\"\nmode = \"tcp\"\ndefault_backend = \"a\"\ninspect_delay = \"2s\"\n[[frontend.tcp_request]]\nlua = \"socks5\"\n\n{}",
        global_section(admin, &[("log_level", "\"debug\"")]),
        backend("a", e, "")
    );
    let d = Daemon::start(&cfg, &[web]).await;
    let hcfg = format!(
        "global\n  lua-load-per-thread {script}\n\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\nlisten socks\n  bind {hweb}\n  log stdout format raw daemon debug\n  tcp-request inspect-delay 2s\n  tcp-request content lua.socks5\n  server s {e}\n"
    );
    let dir = TempDir::new("socks5");
    let h = HaProxy::start(&hcfg, dir.path(), hweb).await;
    let ours = socks5_client(web).await;
    let theirs = socks5_client(hweb).await;
    assert_eq!(
        theirs,
        vec![
            vec![5, 2],
            vec![1, 0],
            b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00E:hello".to_vec()
        ],
        "HAProxy's answers"
    );
    assert_eq!(ours, theirs, "portcullis answers as HAProxy does");
    // Both logged the script's notice.
    let want = "\"alice\" connect to 10.1.2.3:8080";
    d.wait_stderr_line(LIMIT, |l| l.contains(want))
        .await
        .expect("portcullis logged the script's line");
    assert!(h.log().contains(want), "HAProxy log: {}", h.log());
}

/// One line (up to its "\n") or what came before the peer closed.
async fn read_line(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\n") {
        match tokio::time::timeout(LIMIT, c.read(&mut b)).await {
            Ok(Ok(1)) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An SMTP dialog with the fixture's mail service; the server's lines.
async fn smtp_client(addr: SocketAddr) -> Vec<String> {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    let mut seen = Vec::new();
    seen.push(read_line(&mut c).await);
    for cmd in [
        "HELO client\r\n",
        "MAIL FROM:<a@example.com>\r\n",
        "RCPT TO:<b@example.com>\r\n",
        "DATA\r\n",
    ] {
        c.write_all(cmd.as_bytes()).await.expect("write");
        seen.push(read_line(&mut c).await);
    }
    // The body in two writes, split inside a line.
    c.write_all(b"Subject: disk full\r\nHello th")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"ere\r\n\r\n.\r\n").await.expect("write");
    seen.push(read_line(&mut c).await);
    c.write_all(b"QUIT\r\n").await.expect("write");
    seen.push(read_line(&mut c).await);
    let (rest, _) = read_to_close(&mut c).await;
    seen.push(format!("closed after {} more bytes", rest.len()));
    seen
}

#[tokio::test]
async fn healthcheckmail_smtp_service_matches_haproxy() {
    haproxy_26();
    let [web, admin, hweb] = free_addrs();
    let script = fixture("haproxy-mailers", "healthcheckmail.lua");
    let dead = free_addr();
    let cfg = format!(
        "{}[[plugin]]\nname = \"mail\"\nlua = \"{script}\"\n\n[[frontend]]\nname = \"smtp\"\nbind = \"{web}\"\nmode = \"tcp\"\ndefault_backend = \"a\"\n[[frontend.tcp_request]]\nuse_service = \"lua.mailservice\"\n\n{}",
        global_section(admin, &[]),
        backend("a", dead, "")
    );
    let d = Daemon::start(&cfg, &[web]).await;
    let hcfg = format!(
        "global\n  lua-load {script}\n\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\nlisten smtp\n  bind {hweb}\n  tcp-request content use-service lua.mailservice\n"
    );
    let dir = TempDir::new("smtp");
    let h = HaProxy::start(&hcfg, dir.path(), hweb).await;
    let ours = smtp_client(web).await;
    let theirs = smtp_client(hweb).await;
    assert_eq!(theirs[0], "220 Welcome\r\n", "HAProxy: {theirs:?}");
    assert_eq!(
        theirs[6], "221 Mail queued for delivery to /dev/null \r\n",
        "HAProxy: {theirs:?}"
    );
    assert_eq!(ours, theirs, "portcullis answers as HAProxy does");
    let want = "Mail queued for delivery to /dev/null subject: Subject: disk full";
    d.wait_stderr_line(LIMIT, |l| l.contains(want))
        .await
        .expect("portcullis logged the script's line");
    assert!(h.log().contains(want), "HAProxy log: {}", h.log());
}

fn own_script() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/lua/tcp_banner.lua")
        .display()
        .to_string()
}

#[tokio::test]
async fn lua_tcp_action_reads_and_answers_on_raw_channels() {
    let [web, admin] = free_addrs();
    let a = tcp_echo("").await;
    let cfg = format!(
        "{}[[plugin]]\nname = \"b\"\nlua = \"{}\"\n\n[[frontend]]\nname = \"tcpfe\"\nbind = \"{web}\"\nmode = \"tcp\"\ndefault_backend = \"a\"\ninspect_delay = \"1s\"\n[[frontend.tcp_request]]\nlua = \"banner\"\n[[frontend.tcp_request]]\nreject = true\n\n{}",
        global_section(admin, &[("access_log", "\"text\"")]),
        own_script(),
        backend("a", a, "")
    );
    let d = Daemon::start(&cfg, &[web]).await;
    // The line arrives in two pieces; the rest goes to the server after
    // what the action put in front of it. act.STOP skips the reject rule.
    let mut c = TcpStream::connect(web).await.expect("connect");
    c.write_all(b"HELO b").await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"ob\r\ndata").await.expect("write");
    let got = read_n(&mut c, 8 + 9 + 4).await;
    assert_eq!(got, b"hi bob\r\nUSER bob\ndata");
    // A wrong greeting: act.DENY closes the connection.
    let mut c = TcpStream::connect(web).await.expect("connect");
    c.write_all(b"EHLO x\r\n").await.expect("write");
    let (got, _) = read_to_close(&mut c).await;
    assert!(got.is_empty(), "{got:?}");
    d.wait_stderr_line(LIMIT, |l| l.contains("\"TCP") && l.ends_with(" PR"))
        .await
        .expect("denied connection logged PR");
}

#[tokio::test]
async fn lua_tcp_service_talks_to_the_client() {
    let [web, admin] = free_addrs();
    let dead = free_addr();
    let cfg = format!(
        "{}[[plugin]]\nname = \"b\"\nlua = \"{}\"\n\n[[frontend]]\nname = \"tcpfe\"\nbind = \"{web}\"\nmode = \"tcp\"\ndefault_backend = \"a\"\n[[frontend.tcp_request]]\nuse_service = \"lua.lines\"\n\n{}",
        global_section(admin, &[]),
        own_script(),
        backend("a", dead, "")
    );
    let _d = Daemon::start(&cfg, &[web]).await;
    let mut c = TcpStream::connect(web).await.expect("connect");
    assert_eq!(read_line(&mut c).await, "ready\r\n");
    c.write_all(b"one\ntw").await.expect("write");
    assert_eq!(read_line(&mut c).await, "ONE\n");
    c.write_all(b"o\n").await.expect("write");
    assert_eq!(read_line(&mut c).await, "TWO\n");
    c.write_all(b"QUIT\nab").await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"cdef").await.expect("write");
    assert_eq!(read_line(&mut c).await, "got4:abcd\r\n");
    // "ef" is there, then nothing for 200 ms: receive(10, 200) gives what came.
    assert_eq!(read_line(&mut c).await, "timeout:ef\r\n");
    let (rest, _) = read_to_close(&mut c).await;
    assert!(
        rest.is_empty(),
        "the connection closes when the service returns"
    );
}

/// A TCP frontend's `log_format` is used for its connection lines;
/// `"tcplog"` is HAProxy's `option tcplog` line.
#[tokio::test]
async fn tcp_frontends_take_a_log_format() {
    let [web, admin] = free_addrs();
    let a = tcp_echo("A:").await;
    let d = Daemon::start(
        &config(web, admin, "log_format = \"tcplog\"", &backend("a", a, "")),
        &[web],
    )
    .await;
    let mut c = TcpStream::connect(web).await.expect("connect");
    c.write_all(b"hello").await.expect("write");
    assert_eq!(read_n(&mut c, 7).await, b"A:hello");
    drop(c);
    let line = d
        // The readiness probe's connection is logged too, with 0 bytes.
        .wait_stderr_line(LIMIT, |l| l.contains(" tcpfe a/s1 ") && l.contains(" 7 --"))
        .await
        .expect("a tcplog line");
    // %ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq
    let shape = regex::Regex::new(
        r"127\.0\.0\.1:\d+ \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d\.\d{3}\] tcpfe a/s1 \d+/(-|-?\d+)/\d+ 7 -- \d+/\d+/\d+/\d+/\d+ \d+/\d+$",
    )
    .expect("regex");
    assert!(
        shape.is_match(line.trim_end()),
        "not HAProxy's tcplog shape: {line}"
    );
}
