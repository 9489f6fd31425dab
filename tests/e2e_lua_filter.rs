//! Lua filters (`core.register_filter`, a frontend's `filters`) through the
//! binary: bodies without a length stream through `http_payload` part by
//! part, bodies with one keep an exact length, a failing callback follows
//! `on_error`, and a filter no script registered is a config error naming
//! its line. The side-by-side check against HAProxy is in e2e_lua_haproxy.rs.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, Request, StatusCode};

const SCRIPT: &str = r#"
Up = { flags = filter.FLT_CFG_FL_HTX }
Up.__index = Up
function Up:new() return setmetatable({ req = 0, parts = 0 }, Up) end
function Up:start_analyze(txn, chn)
  if not chn:is_resp() then
    local q = txn.sf:query() or ""
    self.on = q:find("f=1", 1, true) ~= nil
    self.boom = q:find("boom=1", 1, true) ~= nil
  end
  if self.on then filter.register_data_filter(self, chn) end
end
function Up:http_headers(txn, msg)
  if self.boom and msg:is_resp() then error("boom") end
  if msg:is_resp() and self.on then
    msg:set_header("x-req-bytes", tostring(self.req))
  end
end
function Up:http_payload(txn, msg)
  local b = msg:body()
  if b == nil then return end
  self.parts = self.parts + 1
  if msg:is_resp() then msg:set(b:upper()) else self.req = self.req + #b end
end
core.register_filter("up", Up, function(class, args) return class end)
"#;

async fn proxy(on_error: &str) -> (Daemon, Ports, Backend, TempDir) {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua-filter");
    let script = dir.write("f.lua", SCRIPT);
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"f\"\nlua = \"{}\"\non_error = \"{on_error}\"\nmax_body_size = \"64KiB\"\n\n{}{}",
        global_section(ports.admin, &[]),
        script.display(),
        frontend_section("web", ports.web, "app", "filters = [{ lua = \"up\" }]\n"),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    (d, ports, app, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_through_http_payload_and_keep_exact_lengths() {
    let (d, ports, _app, _dir) = proxy("fail_closed").await;
    // 300 kB without a length, over max_body_size: streamed part by part.
    let r = get(ports.web, "/large/300000?f=1").await;
    assert_eq!(r.status, StatusCode::OK, "{}", d.stderr());
    assert!(r.header("content-length").is_none());
    assert_eq!(r.body.len(), 300_000);
    assert!(
        r.body[..] == pattern(300_000).to_ascii_uppercase()[..],
        "the whole body went through the filter"
    );
    // With a length the filter may hold: read whole, the length stays exact.
    let r = get(ports.web, "/large/5000?cl=1&f=1").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length").as_deref(), Some("5000"));
    assert!(r.body[..] == pattern(5000).to_ascii_uppercase()[..]);
    // Without the filter's data filtering, the body passes untouched.
    let r = get(ports.web, "/large/5000?cl=1").await;
    assert!(r.body[..] == pattern(5000)[..]);
    // The request body is counted before the response headers.
    let req = Request::builder()
        .method(Method::POST)
        .uri("/echo?f=1")
        .header("host", "t")
        .body(full("0123456789".repeat(100)))
        .expect("request");
    let r = H1::connect(ports.web).await.send(req).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-req-bytes").as_deref(), Some("1000"));
    // The response (the backend's echo) went through the filter too.
    assert!(r.text().contains("\"BODY_LEN\":1000"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_callback_follows_on_error() {
    let (d, ports, _app, _dir) = proxy("fail_closed").await;
    let r = get(ports.web, "/x?boom=1").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    drop(d);
    let (_d, ports, _app, _dir) = proxy("fail_open").await;
    let r = get(ports.web, "/x?boom=1").await;
    assert_eq!(r.status, StatusCode::OK);
}

#[test]
fn an_unregistered_filter_is_a_config_error_naming_its_line() {
    let dir = TempDir::new("lua-filter-check");
    dir.write("f.lua", SCRIPT);
    let cfg = dir.write(
        "site.toml",
        "[[plugin]]\nname = \"f\"\nlua = \"f.lua\"\n\n[[backend]]\nname = \"app\"\nserver = [{ name = \"s1\", addr = \"127.0.0.1:9000\" }]\n\n[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:18999\"\ndefault_backend = \"app\"\nfilters = [{ lua = \"upp\" }]\n",
    );
    let out = run_bin(
        &["check", "-c", cfg.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(out.stderr.contains("site.toml:13:"), "{}", out.stderr);
    assert!(
        out.stderr.contains("no Lua filter \"upp\"") && out.stderr.contains("did you mean"),
        "{}",
        out.stderr
    );
}
