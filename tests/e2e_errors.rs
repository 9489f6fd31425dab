//! Error paths: upstream failures (502/503/504), malformed or oversized
//! requests (400/431), slow clients (408), idle keep-alive close; the pages
//! are HAProxy's, replaced per frontend/backend by `errorfiles` and
//! `error_replies`; a Lua and a Wasm failure give the same page.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Frontend `web` → backend `app` whose servers are bare addresses.
async fn proxy_to(
    servers: &[(&str, std::net::SocketAddr)],
    backend_extra: &str,
    global: &[(&str, &str)],
) -> (Daemon, Ports) {
    let ports = Ports::new();
    let list: Vec<(&str, std::net::SocketAddr, u32)> =
        servers.iter().map(|(n, a)| (*n, *a, 1)).collect();
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, global),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &list, backend_extra)
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    (d, ports)
}

/// HAProxy 2.6's built-in page for `code` (as `haproxy` itself sends it).
fn haproxy_page(code: u16) -> &'static str {
    match code {
        400 => {
            "<html><body><h1>400 Bad request</h1>\nYour browser sent an invalid request.\n</body></html>\n"
        }
        403 => {
            "<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n</body></html>\n"
        }
        408 => {
            "<html><body><h1>408 Request Time-out</h1>\nYour browser didn't send a complete request in time.\n</body></html>\n"
        }
        500 => {
            "<html><body><h1>500 Internal Server Error</h1>\nAn internal server error occurred.\n</body></html>\n"
        }
        502 => {
            "<html><body><h1>502 Bad Gateway</h1>\nThe server returned an invalid or incomplete response.\n</body></html>\n"
        }
        503 => {
            "<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n"
        }
        504 => {
            "<html><body><h1>504 Gateway Time-out</h1>\nThe server didn't respond in time.\n</body></html>\n"
        }
        _ => panic!("no page for {code} in this test"),
    }
}

fn assert_error(r: &Resp, status: StatusCode) {
    assert_eq!(r.status, status, "body: {:?}", r.text());
    assert_eq!(r.text(), haproxy_page(status.as_u16()));
    assert_eq!(r.header("content-type").as_deref(), Some("text/html"));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-cache"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_upstream_gives_502() {
    let nothing = free_addr();
    let (_d, ports) = proxy_to(&[("s1", nothing)], "", &[]).await;
    let start = Instant::now();
    let r = get(ports.web, "/refused").await;
    assert_error(&r, StatusCode::BAD_GATEWAY);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "502 took {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reset_upstream_gives_502() {
    let reset = ResetBackend::start().await;
    let (_d, ports) = proxy_to(&[("s1", reset.addr)], "", &[]).await;
    let r = get(ports.web, "/reset").await;
    assert_error(&r, StatusCode::BAD_GATEWAY);
    // The proxy keeps serving.
    let r = get(ports.web, "/reset-again").await;
    assert_error(&r, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_servers_down_per_health_check_gives_503() {
    let s1 = Backend::start("s1").await;
    let s2 = Backend::start("s2").await;
    s1.set_healthy(false);
    s2.set_healthy(false);
    let (_d, ports) = proxy_to(
        &[("s1", s1.addr), ("s2", s2.addr)],
        "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 1 }\n",
        &[],
    )
    .await;
    let web = ports.web;
    eventually(
        "503 once health checks mark every server down",
        Duration::from_secs(3),
        || async move { get(web, "/down").await.status == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    let served = s1.requests() + s2.requests();
    for i in 0..5 {
        let r = get(ports.web, &format!("/down/{i}")).await;
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        s1.requests() + s2.requests(),
        served,
        "requests reached servers that are down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_backend_gives_503() {
    let ports = Ports::new();
    let s1 = Backend::start("s1").await;
    // A frontend without default_backend and no rule choosing one.
    let cfg = format!(
        "{}[[frontend]]\nname = \"web\"\nbind = \"{}\"\n\n{}",
        global_section(ports.admin, &[]),
        ports.web,
        backend_section("app", "roundrobin", &[("s1", s1.addr, 1)], "")
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = get(ports.web, "/nobackend").await;
    assert_error(&r, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(s1.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_upstream_gives_504_after_server_timeout() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = proxy_to(
        &[("s1", s1.addr)],
        "timeout = { connect = \"1s\", server = \"500ms\" }\n",
        &[("timeout.server", "\"5s\"")],
    )
    .await;
    let start = Instant::now();
    let r = get(ports.web, "/delay/4000").await;
    let took = start.elapsed();
    assert_error(&r, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(400) && took <= Duration::from_millis(1800),
        "504 after {took:?}; the backend's server timeout is 500ms"
    );
    // The status line is HAProxy's too (clients and scripts compare it).
    let (_s, raw) = raw_exchange(
        ports.web,
        b"GET /delay/4000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        raw.head.starts_with("HTTP/1.1 504 Gateway Time-out\r\n"),
        "{:?}",
        raw.head
    );
    // A fast request on the same backend still works.
    let r = get(ports.web, "/fast").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// After an error on one connection, a normal request on a new one works.
async fn still_serves(web: std::net::SocketAddr) {
    let r = get(web, "/after-error").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "proxy stopped serving after an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_give_400() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&s1]).await;
    let cases: [&[u8]; 3] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nNo colon in this header line\r\n\r\n",
        b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for raw in cases {
        let (_s, r) = raw_exchange(ports.web, raw).await;
        assert_eq!(
            r.status,
            400,
            "for {:?}: {}",
            String::from_utf8_lossy(raw),
            r.text()
        );
        assert_eq!(r.text(), haproxy_page(400), "{}", r.head);
        still_serves(ports.web).await;
    }
    assert_eq!(
        s1.requests(),
        3,
        "malformed requests must not reach the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_block_above_max_header_size_gives_431() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&s1]).await; // max_header_size = 16KiB

    // 10 KiB of headers is under the limit.
    let ok = format!(
        "GET /big-ok HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
        ports.web,
        "a".repeat(10 * 1024)
    );
    let (_s, r) = raw_exchange(ports.web, ok.as_bytes()).await;
    assert_eq!(r.status, 200, "a 10 KiB head is within 16KiB");

    let big = format!(
        "GET /big HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
        ports.web,
        "a".repeat(20 * 1024)
    );
    let (_s, r) = raw_exchange(ports.web, big.as_bytes()).await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(
        !r.body.is_empty(),
        "431 should carry a small text body; got:\n{}",
        r.head
    );
    still_serves(ports.web).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn more_than_max_headers_gives_431() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&s1]).await; // max_headers = 50

    let mut ok = format!("GET /few HTTP/1.1\r\nHost: {}\r\n", ports.web);
    for i in 0..40 {
        ok.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    ok.push_str("\r\n");
    let (_s, r) = raw_exchange(ports.web, ok.as_bytes()).await;
    assert_eq!(
        r.status, 200,
        "41 header fields are within max_headers = 50"
    );

    let mut many = format!("GET /many HTTP/1.1\r\nHost: {}\r\n", ports.web);
    for i in 0..60 {
        many.push_str(&format!("X-H{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let (_s, r) = raw_exchange(ports.web, many.as_bytes()).await;
    assert_eq!(r.status, 431, "{}", r.text());
    assert!(
        !r.body.is_empty(),
        "431 should carry a small text body; got:\n{}",
        r.head
    );
    still_serves(ports.web).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incomplete_request_head_gives_408_and_close() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&s1]).await; // http_request = 1s
    let mut s = within("connect", IO_TIMEOUT, TcpStream::connect(ports.web))
        .await
        .expect("connect");
    let start = Instant::now();
    s.write_all(format!("GET /stall HTTP/1.1\r\nHost: {}\r\nX-Half: ", ports.web).as_bytes())
        .await
        .expect("write half head");
    let r = read_response(&mut s, Duration::from_secs(4))
        .await
        .unwrap_or_else(|e| panic!("expected a 408 after http_request = 1s: {e}"));
    let took = start.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert_eq!(r.text(), haproxy_page(408));
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_millis(2500),
        "408 after {took:?}; http_request timeout is 1s"
    );
    assert!(
        wait_closed(&mut s, Duration::from_secs(2)).await,
        "connection not closed after 408"
    );
    assert_eq!(s1.requests(), 0);
    still_serves(ports.web).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_request_body_gives_408() {
    let s1 = Backend::start("s1").await;
    let (_d, ports) = simple_proxy(&[&s1]).await; // client = 2s
    let mut s = within("connect", IO_TIMEOUT, TcpStream::connect(ports.web))
        .await
        .expect("connect");
    let start = Instant::now();
    s.write_all(
        format!(
            "POST /stall-body HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n0123456789",
            ports.web
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let r = read_response(&mut s, Duration::from_secs(6))
        .await
        .unwrap_or_else(|e| panic!("expected a 408 after client = 2s: {e}"));
    let took = start.elapsed();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        took >= Duration::from_millis(1800) && took <= Duration::from_millis(4500),
        "408 after {took:?}; client timeout is 2s"
    );
    still_serves(ports.web).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_keep_alive_connection_is_closed() {
    let s1 = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = simple_config(&ports, &[&s1], &[("timeout.keep_alive", "\"1s\"")]);
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let req = format!("GET /ka HTTP/1.1\r\nHost: {}\r\n\r\n", ports.web);
    let (mut s, r) = raw_exchange(ports.web, req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let start = Instant::now();
    assert!(
        wait_closed(&mut s, Duration::from_secs(3)).await,
        "idle keep-alive connection still open 3s after keep_alive = 1s"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "idle connection closed after {:?}, before keep_alive = 1s",
        start.elapsed()
    );
}

/// Writes the three fixtures of the page tests into `dir`.
fn page_files(dir: &TempDir) {
    dir.write(
        "fe.http",
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nX-Page: frontend\r\n\r\n<p>frontend 503</p>\n",
    );
    dir.write(
        "fe502.http",
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n\r\n<p>frontend 502</p>\n",
    );
    // LF-only and no length, as people write them by hand.
    dir.write(
        "be502.http",
        "HTTP/1.0 502 Bad Gateway\nCache-Control: no-cache\nConnection: close\nContent-Type: text/html\nX-Page: backend\n\n<p>backend 502</p>\n",
    );
    dir.write(
        "fe400.http",
        "HTTP/1.1 400 Bad request\r\nContent-Type: text/plain\r\n\r\nbad request, says the frontend\n",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errorfiles_and_error_replies_replace_pages_backend_wins() {
    let ports = Ports::new();
    let dir = TempDir::new("pages");
    page_files(&dir);
    let refused = free_addr();
    let cfg = format!(
        r#"{}[[frontend]]
name = "web"
bind = "{}"
http_request = [
  {{ deny = 403, headers = {{ retry-after = "9" }}, if = "path /deny" }},
  {{ deny = 429, if = "path /slow" }},
  {{ return = 503, body = "mine", if = "path /mine" }},
  {{ use_backend = "app", if = "path_beg /app" }},
]
errorfiles = {{ 503 = "{d}/fe.http", 502 = "{d}/fe502.http", 400 = "{d}/fe400.http" }}
error_replies = {{ 403 = {{ body = "go away", content_type = "text/plain", headers = {{ x-page = "reply" }} }} }}

{}errorfiles = {{ 502 = "{d}/be502.http" }}
"#,
        global_section(ports.admin, &[]),
        ports.web,
        backend_section("app", "roundrobin", &[("s1", refused, 1)], ""),
        d = dir.path().display(),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;

    // Before routing: the frontend's page.
    let r = get(ports.web, "/none").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "<p>frontend 503</p>\n");
    assert_eq!(r.header("x-page").as_deref(), Some("frontend"));
    assert_eq!(r.header("content-type").as_deref(), Some("text/html"));

    // After routing: the backend's 502 wins over the frontend's.
    let r = get(ports.web, "/app/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.text(), "<p>backend 502</p>\n");
    assert_eq!(r.header("x-page").as_deref(), Some("backend"));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-cache"));

    // A deny rule's page is replaced by `error_replies`; the rule's headers stay.
    let r = get(ports.web, "/deny").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.text(), "go away");
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(r.header("x-page").as_deref(), Some("reply"));
    assert_eq!(r.header("retry-after").as_deref(), Some("9"));
    assert_eq!(r.header("cache-control"), None);

    // No replacement for 429: HAProxy's page.
    let r = get(ports.web, "/slow").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.text()
            .starts_with("<html><body><h1>429 Too Many Requests</h1>\n")
    );

    // A `return` reply is the config's own answer, never replaced.
    let r = get(ports.web, "/mine").await;
    assert_eq!(r.text(), "mine");

    // Written below hyper (a malformed head): the frontend's file too.
    let (_s, r) = raw_exchange(ports.web, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(r.status, 400, "{}", r.head);
    assert_eq!(r.text(), "bad request, says the frontend\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lua_and_wasm_failures_give_the_same_500_page() {
    let ports = Ports::new();
    let dir = TempDir::new("plugfail");
    let lua = dir.write(
        "boom.lua",
        "core.register_action(\"boom\", {\"http-req\"}, function(txn) error(\"boom\") end)\n",
    );
    // The smallest Proxy-Wasm guest whose request hook traps.
    let wasm = dir.write("trap.wat", include_str!("fixtures/wasm/trap.wat"));
    let s1 = Backend::start("s1").await;
    let cfg = format!(
        "{}[[plugin]]\nname = \"boom\"\nlua = \"{}\"\non_error = \"fail_closed\"\n\n\
         [[plugin]]\nname = \"trap\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n\n{}{}",
        global_section(ports.admin, &[]),
        lua.display(),
        wasm.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [\n  { lua = \"boom\", if = \"path /lua\" },\n  { wasm = \"trap\", if = \"path /wasm\" },\n]"
        ),
        backend_section("app", "roundrobin", &[("s1", s1.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let lua = get(ports.web, "/lua").await;
    let wasm = get(ports.web, "/wasm").await;
    assert_error(&lua, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error(&wasm, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(lua.body, wasm.body);
    assert_eq!(s1.requests(), 0);
}

#[test]
fn bad_errorfile_is_a_located_config_error() {
    let dir = TempDir::new("badpage");
    page_files(&dir);
    dir.write(
        "big.http",
        &format!("HTTP/1.1 503 x\r\n\r\n{}", "a".repeat(70_000)),
    );
    let web = free_addr();
    let cases: [(&str, &[&str]); 5] = [
        (
            "errorfiles = { 503 = \"fe502.http\" }",
            &["fe502.http", "answers 502", "configured for 503"],
        ),
        (
            "errorfiles = { 503 = \"missing.http\" }",
            &["errorfiles.503", "cannot read"],
        ),
        (
            "errorfiles = { 503 = \"big.http\" }",
            &["big.http", "65536"],
        ),
        (
            "errorfiles = { 99 = \"fe.http\" }",
            &["not an error status"],
        ),
        (
            "error_replies = { 503 = { body = \"x\", headers = { \"bad name\" = \"1\" } } }",
            &["invalid header name"],
        ),
    ];
    for (line, fragments) in cases {
        let cfg = format!(
            "[global]\nworkers = 1\n\n[[frontend]]\nname = \"web\"\nbind = \"{web}\"\ndefault_backend = \"app\"\n{line}\n\n[[backend]]\nname = \"app\"\nserver = [{{ name = \"s1\", addr = \"127.0.0.1:9\" }}]\n"
        );
        let path = dir.write("bad.toml", &cfg);
        let out = run_bin(
            &["check", "-c", path.to_str().expect("utf-8 path")],
            Duration::from_secs(10),
        );
        let status = out.status.expect("check did not exit");
        assert!(!status.success(), "{line}: accepted");
        // The line of the `errorfiles` / `error_replies` key (line 8).
        let located = format!("{}:8:", path.display());
        assert!(
            out.stderr.contains(&located),
            "{line}: not located at line 8:\n{}",
            out.stderr
        );
        for f in fragments {
            assert!(
                out.stderr.contains(f),
                "{line}: {f:?} missing in:\n{}",
                out.stderr
            );
        }
    }
}
