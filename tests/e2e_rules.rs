//! Config rules through the binary: return, deny, redirect, header rewriting
//! in both phases, variables, conditions, static and dynamic use_backend.

mod common;

use common::*;
use http::{Method, StatusCode};

struct Rules {
    _d: Daemon,
    ports: Ports,
    app: Backend,
    api: Backend,
}

const REQUEST_RULES: &str = r#"http_request = [
  { return = 200, content_type = "text/plain", body = "hello %[src]", if = "path /hello" },
  { deny = 403, if = "path_beg /admin" },
  { deny = 429, if = "method DELETE and path_beg /limited" },
  { redirect = "https://example.com%[path]", code = 301, if = "path_beg /old" },
  { return = 200, content_type = "text/plain", body = "example-host", if = "hdr(host) -m end .example.com" },
  { return = 200, content_type = "text/plain", body = "a-or-b", if = "path /a or path /b" },
  { return = 200, content_type = "text/plain", body = "not-get", if = "path /m and !method GET" },
  { set_header = "X-Test", value = "v-%[path]" },
  { add_header = "X-Added", value = "a1" },
  { del_header = "X-Remove-Me" },
  { set_var = "txn.m", expr = "method" },
  { use_backend = "api", if = "path_beg /api" },
  { use_backend = "%[hdr(x-backend)]", if = "path_beg /dyn" },
]
http_response = [
  { set_header = "X-Method", value = "%[var(txn.m)]" },
  { add_header = "X-Served-By", value = "portcullis" },
  { del_header = "X-Secret" },
  { set_header = "X-Error", value = "yes", if = "status ge 500" },
  { set_header = "X-Backend", value = "%[be_name]" },
]
"#;

async fn rules_proxy() -> Rules {
    let app = Backend::start("s1").await;
    let api = Backend::start("api1").await;
    let ports = Ports::new();
    let cfg = format!(
        "{}{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", REQUEST_RULES),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
        backend_section("api", "roundrobin", &[("api1", api.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    Rules {
        _d: d,
        ports,
        app,
        api,
    }
}

impl Rules {
    fn backend_requests(&self) -> usize {
        self.app.requests() + self.api.requests()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn return_rule_answers_without_a_backend() {
    let t = rules_proxy().await;
    let r = get(t.ports.web, "/hello").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "hello 127.0.0.1");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "content-type: {:?}",
        r.header("content-type")
    );
    assert_eq!(t.backend_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deny_rules() {
    let t = rules_proxy().await;
    let r = get(t.ports.web, "/admin/panel").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());

    let mut c = H1::connect(t.ports.web).await;
    let req = request(Method::DELETE, t.ports.web, "/limited/x")
        .body(empty())
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(t.backend_requests(), 0);

    // Only DELETE is limited.
    let r = get(t.ports.web, "/limited/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().server(), "s1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirect_rule() {
    let t = rules_proxy().await;
    let r = get(t.ports.web, "/old/page").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://example.com/old/page")
    );
    assert_eq!(t.backend_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn condition_operators() {
    let t = rules_proxy().await;
    let web = t.ports.web;
    let mut c = H1::connect(web).await;

    let host_req = |host: &str| {
        http::Request::builder()
            .uri("/host")
            .header("host", host)
            .body(empty())
            .expect("request")
    };
    let r = c.send(host_req("www.example.com")).await;
    assert_eq!(r.text(), "example-host", "hdr(host) -m end .example.com");
    let r = c.send(host_req("example.org")).await;
    assert_eq!(r.echo().server(), "s1", "example.org must not match");

    for p in ["/a", "/b"] {
        let r = c.get(p).await;
        assert_eq!(r.text(), "a-or-b", "{p}: `or`");
    }
    let r = c.get("/c").await;
    assert_eq!(r.echo().server(), "s1");

    let req = request(Method::POST, web, "/m")
        .body(full("x"))
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.text(), "not-get", "`and` with `!`");
    let r = c.get("/m").await;
    assert_eq!(r.echo().server(), "s1", "GET /m must be proxied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_header_rules_are_seen_by_the_backend() {
    let t = rules_proxy().await;
    let req = request(Method::GET, t.ports.web, "/echo?q=1")
        .header("x-test", "original")
        .header("x-remove-me", "1")
        .header("x-added", "a0")
        .body(empty())
        .expect("request");
    let r = H1::connect(t.ports.web).await.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    let e = r.echo();
    assert_eq!(
        e.header_all("x-test"),
        vec!["v-/echo".to_string()],
        "set_header replaces"
    );
    assert_eq!(
        e.header_all("x-added"),
        vec!["a0".to_string(), "a1".to_string()],
        "add_header appends"
    );
    assert!(e.header("x-remove-me").is_none(), "del_header removes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn response_rules_and_variables() {
    let t = rules_proxy().await;
    let mut c = H1::connect(t.ports.web).await;
    let r = c.get("/resp").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("x-method").as_deref(),
        Some("GET"),
        "txn.m set in the request phase"
    );
    assert_eq!(r.header("x-served-by").as_deref(), Some("portcullis"));
    assert!(r.header("x-secret").is_none(), "response del_header");
    assert!(
        r.header("x-error").is_none(),
        "status ge 500 must not match 200"
    );

    let req = request(Method::POST, t.ports.web, "/resp")
        .body(full("b"))
        .expect("request");
    let r = c.send(req).await;
    assert_eq!(r.header("x-method").as_deref(), Some("POST"));

    let r = c.get("/status/503").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("x-error").as_deref(), Some("yes"), "status ge 500");
    assert_eq!(r.header("x-served-by").as_deref(), Some("portcullis"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn use_backend_static_and_dynamic() {
    let t = rules_proxy().await;
    let mut c = H1::connect(t.ports.web).await;
    let r = c.get("/api/users").await;
    assert_eq!(r.echo().server(), "api1", "path_beg /api → api");
    assert_eq!(r.header("x-backend").as_deref(), Some("api"));
    let r = c.get("/other").await;
    assert_eq!(r.echo().server(), "s1", "default backend");
    // be_name in response rules names the backend that served, also when
    // the default backend routed the request.
    assert_eq!(r.header("x-backend").as_deref(), Some("app"));

    let dyn_req = |name: Option<&str>| {
        let mut b = request(Method::GET, t.ports.web, "/dyn");
        if let Some(n) = name {
            b = b.header("x-backend", n);
        }
        b.body(empty()).expect("request")
    };
    let r = c.send(dyn_req(Some("api"))).await;
    assert_eq!(r.echo().server(), "api1", "x-backend: api");
    let r = c.send(dyn_req(Some("app"))).await;
    assert_eq!(r.echo().server(), "s1", "x-backend: app");
    let r = c.send(dyn_req(Some("nosuch"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.echo().server(),
        "s1",
        "unknown backend name falls back to default"
    );
    // The unknown name is not kept: be_name is the backend that served.
    assert_eq!(r.header("x-backend").as_deref(), Some("app"));
    let r = c.send(dyn_req(None)).await;
    assert_eq!(
        r.echo().server(),
        "s1",
        "missing header falls back to default"
    );
    assert_eq!(t.api.requests(), 2);
    assert_eq!(t.app.requests(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_after_response_runs_on_every_response() {
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let rules = r#"http_request = [
  { deny = 403, if = "path_beg /admin" },
  { return = 200, content_type = "text/plain", body = "hi", if = "path /hello" },
  { redirect = "https://example.com%[path]", code = 302, if = "path_beg /old" },
]
http_response = [{ set_header = "X-Response-Rule", value = "1" }]
http_after_response = [
  { set_header = "Strict-Transport-Security", value = "max-age=31536000" },
  { set_header = "X-Status", value = "%[status]" },
  { del_header = "X-Secret" },
  { set_status = 404, if = "status eq 403" },
]
"#;
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", rules),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let hsts = Some("max-age=31536000".to_string());

    // A server's response: after the http_response rules.
    let r = get(ports.web, "/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("strict-transport-security"), hsts);
    assert_eq!(r.header("x-response-rule").as_deref(), Some("1"));
    assert_eq!(r.header("x-status").as_deref(), Some("200"));
    // The proxy's own answers, which http_response rules never see.
    let r = get(ports.web, "/hello").await;
    assert_eq!(r.text(), "hi");
    assert_eq!(r.header("strict-transport-security"), hsts);
    assert_eq!(r.header("x-response-rule"), None);
    let r = get(ports.web, "/old/a").await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.header("strict-transport-security"), hsts);
    assert_eq!(r.header("x-status").as_deref(), Some("302"));
    // A deny, whose status a rule there may still change.
    let r = get(ports.web, "/admin").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("x-status").as_deref(), Some("403"));
    assert_eq!(r.header("strict-transport-security"), hsts);
}

#[test]
fn http_after_response_refuses_actions_that_answer() {
    let dir = TempDir::new("after");
    let cfg = dir.write(
        "c.toml",
        "[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\nhttp_after_response = [{ deny = 403 }]\n",
    );
    let out = run_bin(
        &["check", "-c", cfg.to_str().expect("path")],
        std::time::Duration::from_secs(10),
    );
    assert!(out.status.is_some_and(|s| !s.success()), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`deny` cannot be used in http_after_response rules"),
        "{}",
        out.stderr
    );
}

/// Lua actions registered for `http-after-res` (HAProxy 2.7+; Debian's 2.6
/// refuses that registration, so this follows HAProxy's documentation: the
/// action runs from `http-after-response lua.<name>` on every response,
/// the proxy's own answers included) run in `http_after_response` rules; an
/// action registered only for `http-res` is refused there, and the other
/// way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lua_http_after_res_actions_run_on_every_response() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("after-res");
    let script = dir.write(
        "after.lua",
        r#"
core.register_action("stamp", { "http-after-res" }, function(txn, tag)
  txn.http:res_set_header("x-after", tag .. " " .. txn.sf:status())
  txn.http:res_del_header("x-secret")
end, 1)
core.register_action("res_only", { "http-res" }, function(txn) end)
"#,
    );
    let script = script.display().to_string();
    let ports = Ports::new();
    let rules = r#"http_request = [
  { deny = 403, if = "path_beg /admin" },
  { return = 200, content_type = "text/plain", body = "hi", if = "path /hello" },
]
http_after_response = [{ lua = "stamp", args = ["lua"] }]
"#;
    let cfg = format!(
        "{}[[plugin]]\nname = \"after\"\nlua = \"{script}\"\n\n{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", rules),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    for (path, status) in [("/x", "200"), ("/hello", "200"), ("/admin", "403")] {
        let r = get(ports.web, path).await;
        assert_eq!(r.status.as_str(), status, "{path}");
        assert_eq!(
            r.header("x-after"),
            Some(format!("lua {status}")),
            "{path}: the action ran after the response was decided"
        );
    }

    // The wrong registration for the list is a config error naming both.
    for (list, action, want) in [
        ("http_after_response", "res_only", "http-after-res"),
        ("http_response", "stamp", "http-res"),
    ] {
        let bad = format!(
            "[[plugin]]\nname = \"after\"\nlua = \"{script}\"\n\n[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\ndefault_backend = \"app\"\n{list} = [{{ lua = \"{action}\", args = [\"x\"] }}]\n\n[[backend]]\nname = \"app\"\nserver = [{{ name = \"s1\", addr = \"127.0.0.1:2\" }}]\n"
        );
        let path = dir.write("bad.toml", &bad);
        let out = run_bin(
            &["check", "-c", path.to_str().expect("utf-8 path")],
            std::time::Duration::from_secs(20),
        );
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(1),
            "{list}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(want), "{list}: {}", out.stderr);
    }
}
