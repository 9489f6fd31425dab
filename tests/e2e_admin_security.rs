//! The admin API as a control plane, through the binary: the bearer token
//! for state changes (and off-loopback reads), JSON-only bodies, the Host
//! check against DNS rebinding, connection timeouts and the connection
//! limit, the Unix-socket listener, and `check`'s warning.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::*;
use http::{Method, Request, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TABLE: &str = r#"
[[stick_table]]
name = "t"
type = "string"
len = 32
size = 100
store = ["gpc0"]
"#;

struct Admin {
    d: Daemon,
    ports: Ports,
    _app: Backend,
}

/// A daemon whose `[global]` gets `global` and whose admin API has table `t`.
async fn start(global: &[(&str, &str)]) -> Admin {
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = config(&ports, &app, global);
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    Admin {
        d,
        ports,
        _app: app,
    }
}

fn config(ports: &Ports, app: &Backend, global: &[(&str, &str)]) -> String {
    format!(
        "{}{TABLE}\n{}{}",
        global_section(ports.admin, global),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    )
}

/// Sends `method path` to the admin API with exactly `headers` (plus a Host
/// naming the admin address unless `headers` has one) and `body`.
async fn send(a: &Admin, method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut b = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        b = b.header("host", a.ports.admin.to_string());
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let req = b.body(full(body.to_string())).expect("request");
    H1::connect(a.ports.admin).await.send(req).await
}

/// Writes `raw` to the admin port and reads one response.
async fn raw(a: &Admin, raw: &str) -> RawResp {
    raw_exchange(a.ports.admin, raw.as_bytes()).await.1
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn gpc0(a: &Admin, key: &str) -> Option<u64> {
    let r = get(a.ports.admin, &format!("/tables/t/{key}")).await;
    match r.status {
        StatusCode::OK => r.json()["data"]["gpc0"].as_u64(),
        StatusCode::NOT_FOUND => None,
        other => panic!("GET /tables/t/{key}: {other}: {}", r.text()),
    }
}

fn error_text(r: &Resp) -> String {
    r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {}", r.text()))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_token_state_changes_are_refused_naming_the_key() {
    let a = start(&[]).await;
    let auth = bearer(ADMIN_TOKEN);
    let auth = (auth.0, auth.1.as_str());
    for (method, path) in [
        (Method::POST, "/tables/t/k1"),
        (Method::DELETE, "/tables/t"),
        (Method::DELETE, "/tables/t/k1"),
        (Method::POST, "/plugins/p/limits?memory_limit=1MiB"),
        (Method::PUT, "/stats"),
        (Method::OPTIONS, "/stats"),
        (Method::POST, "/reload"),
    ] {
        let r = send(&a, method.clone(), path, &[JSON, auth], r#"{"gpc0": 1}"#).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {path}: {}",
            r.text()
        );
        let msg = error_text(&r);
        assert!(
            msg.contains("set [global] admin_token or admin_token_file to enable"),
            "{method} {path}: {msg}"
        );
    }
    assert_eq!(
        gpc0(&a, "k1").await,
        None,
        "the refused POST changed nothing"
    );
    // Reads stay open on loopback.
    for path in [
        "/health",
        "/stats",
        "/metrics",
        "/tables",
        "/tables/t",
        "/plugins",
    ] {
        let r = get(a.ports.admin, path).await;
        assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
    }
    let r = send(&a, Method::HEAD, "/stats", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_token_is_required_and_checked() {
    let a = start(&[("admin_token", ADMIN_TOKEN_TOML)]).await;
    let body = r#"{"gpc0": 7}"#;

    let r = send(&a, Method::POST, "/tables/t/k", &[JSON], body).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "WWW-Authenticate: {challenge:?}"
    );
    assert!(error_text(&r).contains("Authorization: Bearer"));

    let wrong = bearer("test-admin-token-0123456789abcdeX");
    let r = send(
        &a,
        Method::POST,
        "/tables/t/k",
        &[JSON, (wrong.0, &wrong.1)],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|c| c.starts_with("Bearer") && c.contains("invalid_token")),
        "{:?}",
        r.header("www-authenticate")
    );
    // A prefix of the token, another scheme, or the token without a scheme do not pass.
    for value in [
        format!("Bearer {}", &ADMIN_TOKEN[..10]),
        format!("Basic {ADMIN_TOKEN}"),
        ADMIN_TOKEN.to_string(),
    ] {
        let r = send(
            &a,
            Method::POST,
            "/tables/t/k",
            &[JSON, ("authorization", &value)],
            body,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{value}: {}", r.text());
    }
    assert_eq!(
        gpc0(&a, "k").await,
        None,
        "no refused request changed the table"
    );

    let right = bearer(ADMIN_TOKEN);
    let r = send(
        &a,
        Method::POST,
        "/tables/t/k",
        &[JSON, (right.0, &right.1)],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(gpc0(&a, "k").await, Some(7));
    // The scheme is case-insensitive.
    let lower = format!("bearer {ADMIN_TOKEN}");
    let r = send(
        &a,
        Method::DELETE,
        "/tables/t/k",
        &[("authorization", &lower)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(gpc0(&a, "k").await, None);
    // Reads need no token on loopback.
    assert_eq!(get(a.ports.admin, "/stats").await.status, StatusCode::OK);
    // Every attempt is in the log, the token never.
    let line =
        a.d.wait_stderr_line(Duration::from_secs(2), |l| {
            l.contains("admin request") && l.contains("status=401")
        })
        .await;
    assert!(line.is_some(), "no audit line:\n{}", a.d.stderr());
    assert!(
        !a.d.stderr().contains(ADMIN_TOKEN),
        "the token leaked into the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_file_is_read_at_load_with_its_newline_trimmed() {
    let dir = TempDir::new("token");
    let file = dir.write("admin.token", &format!("{ADMIN_TOKEN}\n"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let value = format!("\"{}\"", file.display());
    let a = start(&[("admin_token_file", &value)]).await;
    let r = admin_send(a.ports.admin, Method::POST, "/tables/t/f", r#"{"gpc0": 3}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(gpc0(&a, "f").await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_changes_take_only_json_bodies() {
    let a = start(&[("admin_token", ADMIN_TOKEN_TOML)]).await;
    let auth = bearer(ADMIN_TOKEN);
    let auth = (auth.0, auth.1.as_str());
    let body = r#"{"gpc0": 1}"#;
    for ct in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json; charset=iso-8859-1",
        "application/jsonp",
    ] {
        let r = send(
            &a,
            Method::POST,
            "/tables/t/m",
            &[auth, ("content-type", ct)],
            body,
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{ct}: {}",
            r.text()
        );
        assert!(
            error_text(&r).contains("application/json"),
            "{ct}: {}",
            r.text()
        );
    }
    // A body without any Content-Type is refused too.
    let r = send(&a, Method::POST, "/tables/t/m", &[auth], body).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text());
    assert_eq!(gpc0(&a, "m").await, None);

    for ct in ["application/json", "Application/JSON; charset=UTF-8"] {
        let r = send(
            &a,
            Method::POST,
            "/tables/t/m",
            &[auth, ("content-type", ct)],
            body,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{ct}: {}", r.text());
    }
    // Requests without a body need no Content-Type.
    let r = send(&a, Method::DELETE, "/tables/t/m", &[auth], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Over 1 MiB: refused on its Content-Length, before any of it is read.
    let r = raw(
        &a,
        &format!(
            "POST /tables/t/big HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n",
            a.ports.admin
        ),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_host_header_must_name_the_admin_listener() {
    let a = start(&[
        ("admin_token", ADMIN_TOKEN_TOML),
        ("admin_hosts", "[\"admin.example\", \"ops.example:8443\"]"),
    ])
    .await;
    let port = a.ports.admin.port();
    let get_with_host = |host: String| {
        let a = &a;
        async move { send(a, Method::GET, "/stats", &[("host", &host)], "").await }
    };
    for ok in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        format!("localhost:{port}"),
        "localhost".to_string(),
        "LocalHost".to_string(),
        "admin.example".to_string(),
        format!("admin.example:{port}"),
        "ops.example:8443".to_string(),
    ] {
        let r = get_with_host(ok.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "Host {ok}: {}", r.text());
    }
    for bad in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        "ops.example".to_string(),
        "10.1.2.3".to_string(),
        "127.0.0.1.evil.example".to_string(),
    ] {
        let r = get_with_host(bad.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "Host {bad}: {}", r.text());
        assert_eq!(
            error_text(&r),
            format!("Host '{bad}' is not an admin host; add it to [global] admin_hosts")
        );
    }
    // A rebinding page cannot change state even with a stolen token.
    let auth = bearer(ADMIN_TOKEN);
    let r = send(
        &a,
        Method::POST,
        "/tables/t/h",
        &[("host", "evil.example"), JSON, (auth.0, &auth.1)],
        r#"{"gpc0": 1}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(gpc0(&a, "h").await, None);

    // No Host on HTTP/1.1 is malformed; HTTP/1.0 may omit it.
    let r = raw(&a, "GET /stats HTTP/1.1\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.text());
    let r = raw(&a, "GET /health HTTP/1.0\r\n\r\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The absolute-form target is a Host too.
    let r = raw(
        &a,
        &format!("GET http://evil.example/stats HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = raw(
        &a,
        "GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 400, "two Host headers: {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn off_loopback_reads_need_the_token_except_health() {
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let wildcard = format!("\"0.0.0.0:{}\"", ports.admin.port());
    let cfg = config(
        &ports,
        &app,
        &[("admin", &wildcard), ("admin_token", ADMIN_TOKEN_TOML)],
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let a = Admin {
        d,
        ports,
        _app: app,
    };
    let auth = bearer(ADMIN_TOKEN);
    for path in ["/stats", "/metrics", "/tables", "/plugins"] {
        let r = send(&a, Method::GET, path, &[], "").await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "GET {path}: {}",
            r.text()
        );
        let r = send(&a, Method::GET, path, &[(auth.0, &auth.1)], "").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "GET {path} with the token: {}",
            r.text()
        );
    }
    let r = send(&a, Method::GET, "/health", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        !a.d.stderr().contains("not a loopback address"),
        "a token is set: no warning expected:\n{}",
        a.d.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_warns_about_a_remote_admin_without_a_token() {
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let wildcard = format!("\"0.0.0.0:{}\"", ports.admin.port());
    let cfg = config(&ports, &app, &[("admin", &wildcard)]);
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let line = d
        .wait_stderr_line(Duration::from_secs(2), |l| {
            l.contains("WARN") && l.contains("not a loopback address")
        })
        .await
        .unwrap_or_else(|| panic!("no start-up warning:\n{}", d.stderr()));
    assert!(line.contains("admin_token"), "{line}");
    assert!(
        line.contains(&format!("{}:", d.config_path.display())),
        "the warning is located: {line}"
    );
    // Reads stay open (the operator was warned), state changes are refused.
    assert_eq!(get(ports.admin, "/stats").await.status, StatusCode::OK);
    let r = admin_send(ports.admin, Method::DELETE, "/tables/t", "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
}

/// Runs `check` on `text` and returns (success, stderr).
fn check(text: &str) -> (bool, String, std::path::PathBuf, TempDir) {
    let dir = TempDir::new("check-admin");
    let path = dir.write("site.toml", text);
    let out = run_bin(
        &["check", "-c", path.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    );
    let ok = out.status.expect("check did not exit within 10s").success();
    (ok, out.stderr, path, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_warns_about_a_remote_admin_without_a_token() {
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let wildcard = format!("\"0.0.0.0:{}\"", ports.admin.port());
    let text = config(&ports, &app, &[("admin", &wildcard)]);
    let line = text
        .lines()
        .position(|l| l.starts_with("admin ="))
        .expect("admin line")
        + 1;
    let (ok, stderr, path, _dir) = check(&text);
    assert!(ok, "a warning must not fail check:\n{stderr}");
    let want = format!("{}:{line}:", path.display());
    let warning = stderr
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or_else(|| panic!("no warning at {want}:\n{stderr}"));
    let rest = &warning[want.len()..];
    let (col, msg) = rest.split_once(':').expect("column");
    assert!(col.parse::<usize>().is_ok(), "{warning}");
    assert!(msg.starts_with(" warning: "), "{warning}");
    assert!(msg.contains("admin_token"), "{warning}");

    // Loopback, or a token: no warning.
    for global in [
        vec![],
        vec![
            ("admin", wildcard.as_str()),
            ("admin_token", ADMIN_TOKEN_TOML),
        ],
    ] {
        let (ok, stderr, _, _dir) = check(&config(&ports, &app, &global));
        assert!(ok, "{stderr}");
        assert!(!stderr.contains("warning"), "{global:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_idle_and_slow_connections_are_closed_after_their_timeouts() {
    let a = start(&[
        ("admin_token", ADMIN_TOKEN_TOML),
        (
            "admin_timeout",
            "{ http_request = \"500ms\", keep_alive = \"700ms\", request = \"800ms\" }",
        ),
    ])
    .await;
    let limit = Duration::from_secs(4);

    // Silent from the start: closed without a word after http_request.
    let start = Instant::now();
    let mut s = TcpStream::connect(a.ports.admin).await.expect("connect");
    assert!(
        wait_closed(&mut s, limit).await,
        "a silent connection stayed open"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );

    // Half a head: 408, then closed.
    let mut s = TcpStream::connect(a.ports.admin).await.expect("connect");
    s.write_all(format!("GET /stats HTTP/1.1\r\nHost: {}\r\n", a.ports.admin).as_bytes())
        .await
        .expect("write");
    let r = read_response(&mut s, limit).await.expect("a 408");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(wait_closed(&mut s, limit).await);

    // Idle after a request: closed after keep_alive.
    let (mut s, r) = raw_exchange(
        a.ports.admin,
        format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", a.ports.admin).as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let start = Instant::now();
    assert!(
        wait_closed(&mut s, limit).await,
        "an idle connection stayed open"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(550),
        "closed too early: {took:?}"
    );

    // A body that stalls: 408 once the request deadline passes.
    let mut s = TcpStream::connect(a.ports.admin).await.expect("connect");
    s.write_all(
        format!(
            "POST /tables/t/slow HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"gpc0\":",
            a.ports.admin
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let r = read_response(&mut s, limit).await.expect("a 408");
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(wait_closed(&mut s, limit).await);
    assert_eq!(gpc0(&a, "slow").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_beyond_admin_maxconn_wait_for_a_free_slot() {
    let a = start(&[
        ("admin_maxconn", "4"),
        ("admin_timeout", "{ http_request = \"1s\" }"),
    ])
    .await;
    // Let the readiness probe's connection end and free its slot.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(a.ports.admin).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opened = Instant::now();
    let mut fifth = TcpStream::connect(a.ports.admin).await.expect("connect");
    fifth
        .write_all(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", a.ports.admin).as_bytes())
        .await
        .expect("write");
    let r = read_response(&mut fifth, Duration::from_secs(6))
        .await
        .expect("the fifth connection is served once a slot frees");
    let waited = opened.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        waited >= Duration::from_millis(500),
        "served after {waited:?}: the four silent connections did not hold the limit"
    );
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            wait_closed(s, Duration::from_secs(3)).await,
            "silent connection {i} still open"
        );
    }
    // With the slots free again, service is immediate.
    let started = Instant::now();
    assert_eq!(get(a.ports.admin, "/health").await.status, StatusCode::OK);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "{took:?}");
}

/// A request to the admin Unix socket (Host is whatever a client sends, or none).
fn unix_req(method: Method, path: &str, headers: &[(&str, &str)], body: &str) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(full(body.to_string())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unix_socket_admin_with_mode_owner_and_local_trust() {
    let dir = TempDir::new("sock");
    let sock = dir.path().join("admin.sock");
    // A stale socket left by a killed process is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    assert!(sock.exists());
    // SAFETY: getuid/getgid only read the process's ids.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let admin = format!("\"unix:{}\"", sock.display());
    let (uid_s, gid_s) = (uid.to_string(), format!("\"{gid}\""));
    let cfg = config(
        &ports,
        &app,
        &[
            ("admin", &admin),
            ("admin_socket_mode", "\"0640\""),
            ("admin_socket_owner", &uid_s),
            ("admin_socket_group", &gid_s),
            ("admin_token", ADMIN_TOKEN_TOML),
        ],
    );
    let mut d = Daemon::start(&cfg, &[ports.web]).await;
    d.wait_unix_accepting(&sock, Duration::from_secs(10)).await;

    let meta = std::fs::metadata(&sock).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o640,
        "mode {:o}",
        meta.permissions().mode()
    );
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));

    // Local peers: any Host or none; reads open; state changes need the token.
    for headers in [
        vec![],
        vec![("host", "localhost")],
        vec![("host", "whatever.example")],
    ] {
        let r = unix_send(&sock, unix_req(Method::GET, "/stats", &headers, "")).await;
        assert_eq!(r.status, StatusCode::OK, "{headers:?}: {}", r.text());
    }
    let body = r#"{"gpc0": 9}"#;
    let r = unix_send(&sock, unix_req(Method::POST, "/tables/t/u", &[JSON], body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = unix_send(
        &sock,
        unix_req(
            Method::POST,
            "/tables/t/u",
            &[JSON, ("authorization", &auth)],
            body,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = unix_send(
        &sock,
        unix_req(
            Method::POST,
            "/tables/t/u",
            &[("content-type", "text/plain"), ("authorization", &auth)],
            body,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text());
    let r = unix_send(&sock, unix_req(Method::GET, "/tables/t/u", &[], "")).await;
    assert_eq!(r.json()["data"]["gpc0"], 9, "{}", r.text());
    assert!(
        d.stderr().contains("removed stale admin socket"),
        "{}",
        d.stderr()
    );

    // Removed at exit.
    d.signal(libc::SIGTERM);
    let st = d
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exit after SIGTERM");
    assert!(st.success(), "{st}");
    assert!(!sock.exists(), "the socket file outlived the daemon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unix_socket_paths_are_relative_to_the_config_and_never_clobber_files() {
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = config(&ports, &app, &[("admin", "\"./admin.sock\"")]);
    let mut d = Daemon::start(&cfg, &[ports.web]).await;
    let sock = d
        .config_path
        .parent()
        .expect("config dir")
        .join("admin.sock");
    d.wait_unix_accepting(&sock, Duration::from_secs(10)).await;
    let meta = std::fs::metadata(&sock).expect("socket file");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "default mode: owner only"
    );
    let r = unix_send(&sock, unix_req(Method::GET, "/health", &[], "")).await;
    assert_eq!(r.status, StatusCode::OK);
    drop(d);

    // A regular file where the socket should go is an error, and stays.
    let dir = TempDir::new("sock-file");
    let file = dir.write("admin.sock", "precious");
    let admin = format!("\"unix:{}\"", file.display());
    let ports = Ports::new();
    let cfg = config(&ports, &app, &[("admin", &admin)]);
    let mut d = Daemon::spawn(&cfg);
    let st = d
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("run exits");
    assert!(!st.success());
    let line = cfg
        .lines()
        .position(|l| l.starts_with("admin ="))
        .expect("admin line")
        + 1;
    assert!(
        d.stderr()
            .contains(&format!("{}:{line}:", d.config_path.display()))
            && d.stderr().contains("is not a socket"),
        "{}",
        d.stderr()
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("file kept"),
        "precious"
    );
}
