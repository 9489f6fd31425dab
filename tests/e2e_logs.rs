//! The access log's targets and formats through the binary: syslog over UDP
//! (RFC 5424) and over a Unix datagram socket (RFC 3164) received by the
//! test, a file rotated with `mv` then SIGUSR1 (and `POST /logs/reopen`),
//! an absent syslog receiver that costs dropped lines and never a request,
//! and HAProxy-style `log_format` lines compared with the expected text.

mod common;

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};

/// Receives datagrams until one contains `needle` (5 s at most).
fn recv_until(recv: impl Fn(&mut [u8]) -> std::io::Result<usize>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok(n) = recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.contains(needle) {
                return text;
            }
            seen.push(text);
        }
    }
    panic!("no datagram with {needle:?} within 5 s; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_udp_in_rfc5424() {
    let app = Backend::start("s1").await;
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind syslog receiver");
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let ports = Ports::new();
    let target = format!("\"udp://{}\"", rx.local_addr().expect("addr"));
    let cfg = format!(
        "{}{}{}",
        global_section(
            ports.admin,
            &[
                ("access_log", "\"text\""),
                ("access_log_target", &target),
                ("syslog_format", "\"rfc5424\""),
                ("syslog_facility", "\"local3\""),
                ("syslog_level", "\"notice\""),
                ("syslog_tag", "\"edge\""),
            ]
        ),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = get(ports.web, "/over-udp?x=1").await;
    assert_eq!(r.status, StatusCode::OK);
    let msg = tokio::task::spawn_blocking(move || recv_until(|b| rx.recv(b), "/over-udp?x=1"))
        .await
        .expect("receiver");
    // <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG; PRI = local3 (19) * 8 + notice (5).
    let parts: Vec<&str> = msg.splitn(8, ' ').collect();
    assert_eq!(parts[0], "<157>1", "{msg}");
    assert!(
        parts[1].len() == "2026-12-06T04:20:01.123Z".len() && parts[1].ends_with('Z'),
        "{msg}"
    );
    assert!(!parts[2].is_empty(), "{msg}");
    assert_eq!(parts[3], "edge", "{msg}");
    assert_eq!(parts[4], d.pid().to_string(), "{msg}");
    assert_eq!((parts[5], parts[6]), ("-", "-"), "{msg}");
    // The message is the text line, one per datagram, no newline.
    assert!(
        parts[7].contains(" web app/s1 \"GET /over-udp?x=1 HTTP/1.1\" 200 "),
        "{msg}"
    );
    assert!(!msg.ends_with('\n'), "{msg:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_to_a_unix_socket_in_rfc3164() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("logs-unix");
    let sock = dir.path().join("log.sock");
    let rx = UnixDatagram::bind(&sock).expect("bind unix receiver");
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let ports = Ports::new();
    let target = format!("\"unix:{}\"", sock.display());
    let cfg = format!(
        "{}{}{}",
        global_section(
            ports.admin,
            &[("access_log", "\"json\""), ("access_log_target", &target)]
        ),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = get(ports.web, "/over-unix").await;
    assert_eq!(r.status, StatusCode::OK);
    let msg = tokio::task::spawn_blocking(move || recv_until(|b| rx.recv(b), "/over-unix"))
        .await
        .expect("receiver");
    // HAProxy's default: <PRI>Mmm dd hh:mm:ss TAG[PID]: MSG, PRI = local0 (16) * 8 + info (6).
    let (head, json) = msg.split_once(": ").expect("a tag ends the header");
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let rest = head
        .strip_prefix("<134>")
        .unwrap_or_else(|| panic!("{msg}"));
    assert!(months.contains(&&rest[..3]), "{msg}");
    let time_and_tag = &rest[7..];
    assert_eq!(&time_and_tag[2..3], ":", "{msg}");
    assert_eq!(
        &time_and_tag[9..],
        format!("portcullis[{}]", d.pid()),
        "{msg}"
    );
    let v: serde_json::Value = serde_json::from_str(json).expect("a JSON access line");
    assert_eq!(v["path"], "/over-unix");
    assert_eq!(v["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_syslog_receiver_drops_lines_never_requests() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("logs-absent");
    let ports = Ports::new();
    let target = format!("\"unix:{}\"", dir.path().join("nobody.sock").display());
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[("access_log_target", &target)]),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let start = Instant::now();
    for _ in 0..20 {
        let r = get(ports.web, "/").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    eventually("dropped lines counted", Duration::from_secs(5), || async {
        let m = get(ports.admin, "/metrics").await.text();
        m.lines()
            .find_map(|l| l.strip_prefix("portcullis_access_log_dropped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n >= 20)
    })
    .await;
}

/// Waits until `path` holds `needle`.
async fn file_has(path: &std::path::Path, needle: &str) {
    let p = path.to_path_buf();
    let n = needle.to_string();
    eventually(
        &format!("{} has {needle}", path.display()),
        Duration::from_secs(5),
        move || {
            let (p, n) = (p.clone(), n.clone());
            async move { std::fs::read_to_string(&p).is_ok_and(|t| t.contains(&n)) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_is_reopened_after_rotation() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("logs-file");
    let log = dir.path().join("access.log");
    let ports = Ports::new();
    let target = format!("\"file:{}\"", log.display());
    let cfg = format!(
        "{}{}{}",
        global_section(
            ports.admin,
            &[
                ("access_log", "\"text\""),
                ("access_log_target", &target),
                ("admin_token", ADMIN_TOKEN_TOML),
            ]
        ),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    get(ports.web, "/before-rotation").await;
    file_has(&log, "/before-rotation").await;
    assert!(
        !d.stderr().contains("/before-rotation"),
        "not on stderr too"
    );

    // logrotate's `create` mode: move the file, then signal.
    let old = dir.path().join("access.log.1");
    std::fs::rename(&log, &old).expect("mv");
    d.signal(libc::SIGUSR1);
    // The writer reopens within 200 ms; lines before that still go to the moved file.
    eventually("the file is recreated", Duration::from_secs(5), || async {
        get(ports.web, "/after-signal").await;
        log.exists()
    })
    .await;
    file_has(&log, "/after-signal").await;
    file_has(&old, "/before-rotation").await;

    // The same through the admin API.
    let older = dir.path().join("access.log.2");
    std::fs::rename(&log, &older).expect("mv");
    let r = admin_send(ports.admin, Method::POST, "/logs/reopen", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    eventually(
        "the file is recreated again",
        Duration::from_secs(5),
        || async {
            get(ports.web, "/after-admin").await;
            log.exists()
        },
    )
    .await;
    file_has(&log, "/after-admin").await;
    let rotated = std::fs::read_to_string(&older).expect("rotated file");
    assert!(rotated.contains("/after-signal"), "{rotated}");
    // Only a POST reopens.
    let r = admin_send(ports.admin, Method::GET, "/logs/reopen", "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// The access lines on the daemon's stderr that contain `needle`.
fn lines_with(d: &Daemon, needle: &str) -> Vec<String> {
    d.stderr()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_log_formats_render_haproxy_variables_and_fetches() {
    let app = Backend::start("s1").await;
    let [web, web2, admin] = free_addrs();
    let custom = r#"log_format = "custom %ci %HM %HU %HP %HQ %HV %ST %U %ts %b/%s %[var(txn.srv)] %[var(txn.who)] %{+Q}r %fi:%fp %Tw %Tc"
http_request = [
  { set_var = "txn.who", value = "%[hdr(x-who)]" },
  { deny = 403, if = "path_beg /deny" },
]
http_response = [ { set_var = "txn.srv", expr = "res.hdr(x-server)" } ]
"#;
    let cfg = format!(
        "{}{}{}{}",
        global_section(
            admin,
            &[("access_log", "\"text\""), ("log_format", "\"httplog\"")]
        ),
        frontend_section("web", web, "app", custom),
        frontend_section("plain", web2, "app", ""),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[web, web2, admin]).await;
    let r = H1::connect(web)
        .await
        .send(
            request(Method::GET, web, "/x/y?q=1")
                .header("x-who", "alice")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(web, "/deny/me").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = get(web2, "/via-httplog").await;
    assert_eq!(r.status, StatusCode::OK);
    let len = r.body.len();
    d.wait_stderr_line(Duration::from_secs(5), |l| l.contains("/via-httplog"))
        .await
        .expect("httplog line");
    d.wait_stderr_line(Duration::from_secs(5), |l| {
        l.contains("custom 127.0.0.1 GET /deny/me")
    })
    .await
    .expect("deny line");

    let ok = lines_with(&d, "custom 127.0.0.1 GET /x/y");
    assert_eq!(
        ok,
        [format!(
            "custom 127.0.0.1 GET /x/y?q=1 /x/y ?q=1 HTTP/1.1 200 0 -- app/s1 s1 alice \"GET /x/y?q=1 HTTP/1.1\" {}:{} 0 {}",
            web.ip(),
            web.port(),
            // %Tc: the connection to s1 took whole milliseconds (0 on loopback, unless slow).
            ok.first()
                .and_then(|l| l.rsplit(' ').next())
                .filter(|t| t.parse::<u64>().is_ok())
                .unwrap_or("<%Tc: a number of ms>")
        )],
        "{}",
        d.stderr()
    );
    // A refusal: no backend (HAProxy logs the frontend and <NOSRV>), PR, fetches with no value are `-`.
    let denied = lines_with(&d, "custom 127.0.0.1 GET /deny/me");
    assert_eq!(
        denied,
        [format!(
            "custom 127.0.0.1 GET /deny/me /deny/me  HTTP/1.1 403 0 PR web/<NOSRV> - - \"GET /deny/me HTTP/1.1\" {}:{} -1 -1",
            web.ip(),
            web.port()
        )],
        "{}",
        d.stderr()
    );

    // `httplog`: HAProxy's option httplog line, field by field.
    let line = lines_with(&d, "/via-httplog").pop().expect("line");
    let f: Vec<&str> = line.split(' ').collect();
    assert_eq!(f.len(), 15, "{line}");
    assert!(f[0].starts_with("127.0.0.1:"), "{line}");
    assert!(
        f[1].starts_with('[') && f[1].ends_with(']') && f[1].len() == 26,
        "{line}"
    );
    assert_eq!((f[2], f[3]), ("plain", "app/s1"), "{line}");
    let t: Vec<&str> = f[4].split('/').collect();
    // TR/Tw/Tc: TR unmeasured, no queue wait, a connect time in ms.
    assert_eq!((t[0], t[1]), ("-", "0"), "{line}");
    assert!(t[2].parse::<u64>().is_ok(), "%Tc: {line}");
    assert!(
        t[3].parse::<u64>().is_ok() && t[4].parse::<u64>().is_ok(),
        "{line}"
    );
    assert_eq!(f[5], "200", "{line}");
    assert_eq!(f[6], len.to_string(), "{line}");
    assert_eq!(&f[7..12], ["-", "-", "----", "0/0/0/0/0", "0/0"], "{line}");
    assert_eq!(&f[12..], ["\"GET", "/via-httplog", "HTTP/1.1\""], "{line}");
}

#[test]
fn log_settings_errors_say_what_is_expected() {
    let dir = TempDir::new("logs-check");
    for (key, value, expect) in [
        (
            "access_log_target",
            "\"/var/log/x.log\"",
            "expected \"stderr\", \"file:PATH\", \"udp://HOST:PORT\" or \"unix:PATH\"",
        ),
        (
            "syslog_facility",
            "\"local9\"",
            "unknown syslog_facility \"local9\"; expected one of",
        ),
        (
            "syslog_format",
            "\"rfc9999\"",
            "expected \"rfc3164\" or \"rfc5424\"",
        ),
        (
            "log_format",
            "\"%ci %zz\"",
            "unknown log-format variable %zz",
        ),
        ("log_format", "\"%[nosuch]\"", "unknown fetch \"nosuch\""),
    ] {
        let cfg = format!(
            "[global]\n{key} = {value}\n\n{}{}",
            frontend_section("web", free_addr(), "app", ""),
            backend_section("app", "roundrobin", &[("s1", free_addr(), 1)], ""),
        );
        let path = dir.write("c.toml", &cfg);
        let out = run_bin(
            &["check", "-c", path.to_str().expect("path")],
            Duration::from_secs(20),
        );
        assert!(
            out.stderr.contains(expect) && out.stderr.contains("c.toml:2:"),
            "{key} = {value}: {}",
            out.stderr
        );
    }
}
