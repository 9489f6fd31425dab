//! The proxy-wasm Go SDK's example modules, unmodified (built with upstream
//! Go as WASI reactors, `../shared/fixtures/proxy-wasm-go/`), through the
//! binary: each behaves as its README says an Envoy user sees it.
//!
//! One daemon runs the five HTTP modules side by side (a path prefix per
//! module), so the large Go modules are compiled once per test run; the
//! config a module rejects is checked with `portcullis check`.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A fixture module; fails (never skips) when it is missing.
fn fixture(name: &str) -> PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/proxy-wasm-go")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "missing Go SDK fixture {} (the shared fixtures must sit beside the checkout: ../shared/fixtures/proxy-wasm-go)",
        p.display()
    );
    p
}

/// FNV-1a, 32 bits: what http_auth_random hashes the call's answer with.
fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A body whose FNV-1a-32 has the given parity.
fn body_with_parity(even: bool) -> String {
    (0..)
        .map(|i| format!("httpbin answer {i}"))
        .find(|b| fnv1a32(b.as_bytes()).is_multiple_of(2) == even)
        .unwrap_or_default()
}

/// The `httpbin` backend http_auth_random calls: the module forwards the
/// request's headers (so its `:path`), and the answer's parity decides; a
/// path under `/auth/grant` gets an even body, anything else an odd one.
struct Httpbin {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
}

impl Httpbin {
    async fn start() -> Httpbin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind httpbin");
        let addr = listener.local_addr().expect("httpbin addr");
        let calls = Arc::new(AtomicUsize::new(0));
        let even = Bytes::from(body_with_parity(true));
        let odd = Bytes::from(body_with_parity(false));
        let counter = Arc::clone(&calls);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (even, odd, counter) = (even.clone(), odd.clone(), Arc::clone(&counter));
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = if req.uri().path().starts_with("/auth/grant") {
                            even.clone()
                        } else {
                            odd.clone()
                        };
                        async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Httpbin { addr, calls }
    }
}

/// The daemon with the five HTTP modules.
struct GoProxy {
    d: Daemon,
    web: SocketAddr,
    admin: SocketAddr,
    app: Backend,
    httpbin: Httpbin,
    _dir: TempDir,
}

async fn go_proxy() -> GoProxy {
    let app = Backend::start("app").await;
    let httpbin = Httpbin::start().await;
    let dir = TempDir::new("wasm-go");
    let ports = Ports::new();
    let plugin = |name: &str, module: &str, config: &str| {
        format!(
            "[[plugin]]\nname = \"{name}\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n{config}\n\n",
            fixture(module).display()
        )
    };
    let plugins = [
        plugin("helloworld", "helloworld", ""),
        plugin(
            "headers",
            "http_headers",
            r#"config = { header = "x-wasm-header", value = "demo-wasm" }"#,
        ),
        plugin(
            "headers_late",
            "http_headers",
            r#"config = { header = "x-late", value = "late" }"#,
        ),
        plugin("body_echo", "http_body", "config = \"echo\""),
        plugin("body_set", "http_body", "config = \"body-set\""),
        plugin("shared", "shared_data", ""),
        plugin("auth", "http_auth_random", ""),
    ]
    .concat();
    let rules = "http_request = [\n  { wasm = \"helloworld\" },\n  { wasm = \"headers\", if = \"path_beg /headers\" },\n  { deny = 403, if = \"path_beg /headers/deny\" },\n  { use_backend = \"down\", if = \"path_beg /headers/down\" },\n  { wasm = \"headers_late\", if = \"path_beg /headers/deny or path_beg /headers/down\" },\n  { wasm = \"body_echo\", if = \"path_beg /echo\" },\n  { wasm = \"body_set\", if = \"path_beg /set\" },\n  { wasm = \"shared\", if = \"path_beg /shared\" },\n  { wasm = \"auth\", if = \"path_beg /auth\" },\n]\nhttp_response = [ { set_header = \"x-resp-rule\", value = \"1\" } ]\nhttp_after_response = [ { set_header = \"x-after\", value = \"1\" } ]\n";
    let cfg = format!(
        "{}{plugins}{}{}{}{}",
        global_section(ports.admin, &[("workers", "2"), ("log_level", "\"info\"")]),
        frontend_section("web", ports.web, "app", rules),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
        backend_section("httpbin", "roundrobin", &[("h1", httpbin.addr, 1)], ""),
        // Nothing listens there: a request routed to it gets the proxy's 502.
        backend_section("down", "roundrobin", &[("d1", free_addr(), 1)], ""),
    );
    let d = Daemon::spawn(&cfg);
    // The Go modules are large: compiling them in a debug build on a busy
    // machine takes longer than Daemon::start's usual wait.
    let up = d
        .wait_stderr_line(Duration::from_secs(180), |l| l.contains("listening"))
        .await;
    assert!(
        up.is_some(),
        "the daemon with the Go modules did not start:\n{}",
        d.stderr()
    );
    GoProxy {
        d,
        web: ports.web,
        admin: ports.admin,
        app,
        httpbin,
        _dir: dir,
    }
}

/// Plugin log lines of `plugin` (the message part, before the fields).
fn plugin_lines(stderr: &str, plugin: &str) -> Vec<String> {
    let tag = format!("plugin=\"{plugin}\"");
    stderr
        .lines()
        .filter(|l| l.contains(&tag))
        .map(|l| l.to_string())
        .collect()
}

fn post(web: SocketAddr, path: &str) -> http::request::Builder {
    request(Method::POST, web, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn go_sdk_examples_behave_as_under_envoy() {
    let t = go_proxy().await;
    let web = t.web;

    // helloworld: `OnPluginStart from Go!` at start (info, the default level),
    // then a 1000 ms tick logging a random value and `OnTick called`.
    let start = plugin_lines(&t.d.stderr(), "helloworld");
    assert!(
        start.iter().any(|l| l.contains("OnPluginStart from Go!")),
        "no start line: {start:?}"
    );
    let tick =
        t.d.wait_stderr_line(Duration::from_secs(5), |l| {
            l.contains("OnTick called") && l.contains("plugin=\"helloworld\"")
        })
        .await;
    assert!(tick.is_some(), "no tick within 5 s:\n{}", t.d.stderr());
    let hw = plugin_lines(&t.d.stderr(), "helloworld");
    assert!(
        hw.iter()
            .any(|l| l.contains("It's ") && l.contains(": random value: ")),
        "{hw:?}"
    );
    // It leaves traffic alone.
    let r = get(web, "/plain").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().path(), "/plain");

    // http_headers: `test: best` reaches the upstream; every request header
    // is logged, Host once, as `:authority` (Envoy's HTTP/1 view); the
    // response gets the example's header and the configured one.
    let mut c = H1::connect(web).await;
    let r = c
        .send(
            request(Method::GET, web, "/headers/x")
                .header("x-probe", "p1")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().header("test").as_deref(), Some("best"));
    assert_eq!(
        r.header("x-proxy-wasm-go-sdk-example").as_deref(),
        Some("http_headers")
    );
    assert_eq!(r.header("x-wasm-header").as_deref(), Some("demo-wasm"));
    let logged =
        t.d.wait_stderr_line(Duration::from_secs(5), |l| {
            l.contains("request header --> x-probe: p1")
        })
        .await;
    assert!(logged.is_some(), "{}", t.d.stderr());
    assert_eq!(r.header("x-resp-rule").as_deref(), Some("1"));
    assert_eq!(
        r.header("x-late"),
        None,
        "headers_late only runs on /headers/deny|down"
    );

    // Local replies go through the response hooks as Envoy's local replies
    // go through its encoder filters: a filter whose context the request
    // created (`headers`, before the `deny`) adds its headers to the 403;
    // one the request never reached (`headers_late`, after it) does not.
    // `http_response` rules do not run on it (HAProxy), `http_after_response` do.
    let r = get(web, "/headers/deny").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.header("x-wasm-header").as_deref(), Some("demo-wasm"));
    assert_eq!(
        r.header("x-proxy-wasm-go-sdk-example").as_deref(),
        Some("http_headers")
    );
    assert_eq!(
        r.header("x-late"),
        None,
        "the request never reached headers_late"
    );
    assert_eq!(
        r.header("x-resp-rule"),
        None,
        "http_response rules skip local replies"
    );
    assert_eq!(r.header("x-after").as_deref(), Some("1"));
    // The proxy's own 502 for a refused connection (the router's local
    // reply in Envoy) comes after every request filter ran: both see it.
    let r = get(web, "/headers/down").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.header("x-wasm-header").as_deref(), Some("demo-wasm"));
    assert_eq!(r.header("x-late").as_deref(), Some("late"));
    assert_eq!(r.header("x-resp-rule"), None);
    assert_eq!(r.header("x-after").as_deref(), Some("1"));
    let lines = plugin_lines(&t.d.stderr(), "headers");
    let auth = format!("request header --> :authority: {web}");
    assert!(lines.iter().any(|l| l.contains(&auth)), "{lines:?}");
    for pseudo in [":path: /headers/x", ":method: GET", ":scheme: http"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("request header --> {pseudo}"))),
            "{pseudo}: {lines:?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("request header --> host:")),
        "Host seen twice: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("response header <-- x-wasm-header: demo-wasm")),
        "{lines:?}"
    );

    // http_body, config `echo`: the request body comes back as a local 200.
    let before = t.app.requests();
    let r = H1::connect(web)
        .await
        .send(
            post(web, "/echo")
                .body(full("echo this back"))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "echo this back");
    assert_eq!(t.app.requests(), before, "echo must not reach the upstream");

    // http_body, config `body-set`: no content-length is a local 400.
    let r = get(web, "/set/none").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.text(), "content must be provided");
    // buffer-operation rewrites the request body the upstream gets.
    for (op, want) in [
        ("append", "hello[this is appended body]"),
        ("prepend", "[this is prepended body]hello"),
        ("replace", "[this is replaced body]"),
    ] {
        let r = H1::connect(web)
            .await
            .send(
                post(web, "/set/req")
                    .header("buffer-operation", op)
                    .body(full("hello"))
                    .expect("request"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{op}: {}", r.text());
        assert_eq!(r.echo().body(), want, "{op}");
    }
    // With `buffer-replace-at: response` the response body is rewritten instead.
    let r = H1::connect(web)
        .await
        .send(
            post(web, "/set/resp")
                .header("buffer-operation", "replace")
                .header("buffer-replace-at", "response")
                .body(full("hello"))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "[this is replaced body]");
    let r = H1::connect(web)
        .await
        .send(
            post(web, "/set/resp")
                .header("buffer-operation", "prepend")
                .header("buffer-replace-at", "response")
                .body(full("hello"))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let echo = text
        .strip_prefix("[this is prepended body]")
        .unwrap_or_else(|| panic!("response not prepended: {text}"));
    let echo: serde_json::Value = serde_json::from_str(echo).expect("echo JSON after the prefix");
    assert_eq!(echo["body"], "hello", "the request body was left alone");

    // shared_data: one counter for both workers' instances, CAS-incremented
    // per request and logged. New connections spread over the workers.
    for _ in 0..8 {
        let r = get(web, "/shared").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let stderr = t.d.stderr();
    let mut values: Vec<u64> = plugin_lines(&stderr, "shared")
        .iter()
        .filter_map(|l| {
            l.split("shared value: ")
                .nth(1)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .collect();
    values.sort_unstable();
    assert_eq!(values, (1..=8).collect::<Vec<u64>>(), "{stderr}");

    // http_auth_random: an http call to `httpbin` per request, with the
    // request's headers; an even FNV-1a-32 of the answer lets it through,
    // an odd one is a local 403. The response is delivered on the root
    // context id (the Go SDK panics on any other).
    let calls = t.httpbin.calls.load(Ordering::SeqCst);
    let r = get(web, "/auth/grant/1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().path(), "/auth/grant/1");
    let r = get(web, "/auth/deny/1").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(
        r.header("powered-by").as_deref(),
        Some("proxy-wasm-go-sdk!!")
    );
    assert_eq!(r.text(), "access forbidden");
    assert_eq!(t.httpbin.calls.load(Ordering::SeqCst), calls + 2);
    let lines = plugin_lines(&t.d.stderr(), "auth");
    assert!(
        lines.iter().any(|l| l.contains("access granted")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("access forbidden")),
        "{lines:?}"
    );

    // No module failed along the way (a Go panic would have been a failure).
    let admin = get(t.admin, "/plugins").await;
    for p in admin.json()["plugins"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        assert_eq!(p["rebuilds"], 0, "{p}");
        assert_eq!(p["failed_requests"], 0, "{p}");
    }
}

#[test]
fn a_config_the_module_rejects_is_a_config_error_with_its_reason() {
    // http_headers wants {"header": ..., "value": ...}; anything else fails
    // the load, naming the plugin and carrying what the module logged.
    let dir = TempDir::new("wasm-go-check");
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"headers\"\nwasm = \"{}\"\nconfig = \"not json\"\n\n{}{}",
        global_section(ports.admin, &[]),
        fixture("http_headers").display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [ { wasm = \"headers\" } ]\n"
        ),
        backend_section("app", "roundrobin", &[("s1", free_addr(), 1)], ""),
    );
    let path = dir.write("check.toml", &cfg);
    let p = path.display().to_string();
    let out = run_bin(&["check", "-c", &p], Duration::from_secs(180));
    let status = out
        .status
        .unwrap_or_else(|| panic!("check did not finish: {}", out.stderr));
    assert!(!status.success(), "{}", out.stdout);
    assert!(out.stderr.contains("plugin \"headers\""), "{}", out.stderr);
    assert!(out.stderr.contains("rejected its config"), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid configuration format"),
        "the module's reason is missing: {}",
        out.stderr
    );

    // A root-only module in a rule: it has no HTTP context, and the Go
    // runtime's panic message (printed while it dies) is in the error.
    let cfg = format!(
        "{}[[plugin]]\nname = \"vmconf\"\nwasm = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[]),
        fixture("vm_plugin_configuration").display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [ { wasm = \"vmconf\" } ]\n"
        ),
        backend_section("app", "roundrobin", &[("s1", free_addr(), 1)], ""),
    );
    let path = dir.write("check-root.toml", &cfg);
    let p = path.display().to_string();
    let out = run_bin(&["check", "-c", &p], Duration::from_secs(180));
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(out.stderr.contains("plugin \"vmconf\""), "{}", out.stderr);
    assert!(out.stderr.contains("HTTP context"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("panic: invalid context id on proxy_on_context_create"),
        "the Go panic message is missing: {}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_only_module_no_rule_uses_runs_as_a_singleton() {
    // vm_plugin_configuration has no HTTP context: declared without a rule
    // it is a singleton service, one VM for the process as Envoy runs it,
    // started with its vm_config and its (distinct) config.
    let app = Backend::start("app").await;
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"vmconf\"\nwasm = \"{}\"\nvm_config = \"vm-side settings\"\nconfig = {{ answer = 42 }}\n\n{}{}",
        global_section(ports.admin, &[("workers", "2"), ("log_level", "\"info\"")]),
        fixture("vm_plugin_configuration").display(),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::spawn(&cfg);
    let up = d
        .wait_stderr_line(Duration::from_secs(180), |l| l.contains("listening"))
        .await;
    assert!(up.is_some(), "did not start:\n{}", d.stderr());
    let stderr = d.stderr();
    let lines = plugin_lines(&stderr, "vmconf");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("vm config: vm-side settings")),
        "{stderr}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(r#"plugin config: {"answer":42}"#)),
        "{stderr}"
    );
    let admin = ports.admin;
    let all = get(admin, "/plugins").await.json();
    let p = &all["plugins"][0];
    assert_eq!(p["name"], "vmconf", "{all}");
    assert_eq!(p["root_only"], true, "{p}");
    assert_eq!(p["abi"], "0.2.0", "{p}");
    // One instance although two workers run.
    assert_eq!(p["instances"], 1, "{p}");
    assert_eq!(p["rebuilds"], 0, "{p}");
    // Traffic is not affected.
    let r = get(ports.web, "/x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}
