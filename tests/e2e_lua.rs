//! Lua plugins through the binary: the HAProxy API in both phases, fetches,
//! converters and services from rules, yielding sleeps, and failure
//! isolation (CPU loops, memory stepped from almost nothing, bad arguments)
//! with the admin API's per-plugin counters.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

const SCRIPT: &str = r#"
core.register_action("tag", {"http-req"}, function(txn, name, value)
  local h = txn.http:req_get_headers()
  local ua = h["user-agent"]
  txn.http:req_set_header(name, value)
  txn.http:req_add_header("x-ua-count", ua and #ua + 1 or 0)
  txn.http:req_del_header("x-drop")
  txn:set_var("txn.path", txn.f:path())
  txn:set_priv("from-request")
end, 2)
core.register_action("tag", {"http-res"}, function(txn)
  txn.http:res_set_header("x-path", txn:get_var("txn.path") or "none")
  txn.http:res_set_header("x-priv", tostring(txn:get_priv()))
  txn.http:res_del_header("x-secret")
end)
core.register_action("deny_page", {"http-req"}, function(txn)
  local reply = txn:reply()
  reply:set_status(451, "Unavailable")
  reply:add_header("content-type", "text/html")
  reply:set_body("<p>blocked</p>")
  txn:done(reply)
end)
core.register_action("nap", {"http-req"}, function(txn, ms)
  core.msleep(tonumber(ms))
  txn.http:req_set_header("x-napped", ms)
end, 1)
core.register_action("spin", {"http-req"}, function(txn) while true do end end)
core.register_action("hog", {"http-req"}, function(txn)
  local t = {} for i = 1, 1000 do t[i] = string.rep("x", 100000) .. i end
end)
core.register_action("hmac_bad", {"http-req"}, function(txn)
  local ok, err = pcall(txn.c.hmac, txn.c, "data", "sha1024", "a2V5")
  txn.http:req_set_header("x-hmac-err", tostring(err))
  ok, err = pcall(txn.c.hmac, txn.c, {}, "sha256", "a2V5")
  txn.http:req_set_header("x-hmac-input", tostring(err))
  txn.http:req_set_header("x-hmac-ok", txn.c:hex(txn.c:hmac("data", "sha256", "a2V5")))
end)
core.register_fetches("client", function(txn, prefix) return prefix .. txn.sf:src() end)
core.register_converters("shout", function(s) return string.upper(s) .. "!" end)
core.register_service("upload", "http", function(applet)
  local body = applet:receive()
  applet:set_status(201)
  applet:add_header("content-length", #body)
  applet:start_response()
  applet:send(string.format("%d %d", applet.length, #body))
end)
core.register_service("hello", "http", function(applet)
  local body = "hello " .. applet.path .. "?" .. applet.qs
  applet:set_status(200)
  applet:add_header("content-type", "text/plain")
  if applet.qs == "cl=1" then applet:add_header("content-length", #body) end
  applet:start_response()
  applet:send(body)
end)
"#;

fn rules(extra_req: &str) -> String {
    format!(
        r#"http_request = [
  {extra_req}
  {{ lua = "deny_page", if = "path /deny" }},
  {{ lua = "nap", args = ["300"], if = "path /nap" }},
  {{ lua = "hmac_bad", if = "path /hmac" }},
  {{ use_service = "lua.hello", if = "path_beg /svc" }},
  {{ use_service = "lua.upload", if = "path_beg /upload" }},
  {{ return = 200, content_type = "text/plain", body = "%[lua.client(ip=)] %[path,lua.shout]", if = "path_beg /fetch" }},
  {{ lua = "tag", args = ["x-tag", "tagged"] }},
]
http_response = [{{ lua = "tag" }}]
"#
    )
}

struct Lua {
    d: Daemon,
    ports: Ports,
    app: Backend,
    _dir: TempDir,
}

async fn lua_proxy(plugin_extra: &str, extra_req: &str) -> Lua {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua");
    let script = dir.write("p.lua", SCRIPT);
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"p\"\nlua = \"{}\"\n{plugin_extra}\n\n{}{}",
        global_section(ports.admin, &[("admin_token", ADMIN_TOKEN_TOML)]),
        script.display(),
        frontend_section("web", ports.web, "app", &rules(extra_req)),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    Lua {
        d,
        ports,
        app,
        _dir: dir,
    }
}

async fn plugin_stats(admin: std::net::SocketAddr) -> Value {
    let r = get(admin, "/plugins").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["plugins"][0].clone()
}

async fn admin_post(admin: std::net::SocketAddr, path: &str) -> Resp {
    let mut c = H1::connect(admin).await;
    c.send(
        admin_request(Method::POST, admin, path)
            .body(empty())
            .expect("request"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actions_change_both_phases_and_keep_request_state() {
    let t = lua_proxy("", "").await;
    let mut c = H1::connect(t.ports.web).await;
    let r = c
        .send(
            request(Method::GET, t.ports.web, "/some/path?x=1")
                .header("user-agent", "test")
                .header("x-drop", "1")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let echo = r.echo();
    assert_eq!(echo.header("x-tag").as_deref(), Some("tagged"));
    // One User-Agent value: `{[0] = "test"}`, whose length operator gives 0 (as in HAProxy).
    assert_eq!(echo.header("x-ua-count").as_deref(), Some("1"));
    assert_eq!(echo.header("x-drop"), None);
    assert_eq!(r.header("x-path").as_deref(), Some("/some/path"));
    assert_eq!(r.header("x-priv").as_deref(), Some("from-request"));
    assert_eq!(r.header("x-secret"), None);
    // A second request on the same connection (and Lua state) starts clean.
    let r = c.get("/other").await;
    assert_eq!(r.header("x-path").as_deref(), Some("/other"));
    assert_eq!(r.echo().header("x-ua-count").as_deref(), Some("0"));

    let r = get(t.ports.web, "/deny").await;
    assert_eq!(r.status.as_u16(), 451);
    assert_eq!(r.header("content-type").as_deref(), Some("text/html"));
    assert_eq!(r.text(), "<p>blocked</p>");
    assert_eq!(t.app.requests(), 2);

    let s = plugin_stats(t.ports.admin).await;
    assert_eq!(s["name"], "p");
    assert_eq!(s["instances"], 1);
    assert!(s["calls"].as_u64().unwrap_or(0) >= 5, "{s}");
    assert_eq!(s["errors"]["runtime"], 0);
    assert!(s["memory_in_use"].as_u64().unwrap_or(0) > 10_000, "{s}");
    assert!(
        s["memory_peak"].as_u64() >= s["memory_in_use"].as_u64(),
        "{s}"
    );
    let m = get(t.ports.admin, "/metrics").await.text();
    assert!(
        m.contains("portcullis_plugin_calls_total{plugin=\"p\"}"),
        "{m}"
    );
    assert!(m.contains("portcullis_plugin_errors_total{plugin=\"p\",kind=\"oom\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetches_converters_and_services_from_rules() {
    let t = lua_proxy("", "").await;
    let r = get(t.ports.web, "/fetch/me").await;
    assert_eq!(r.text(), "ip=127.0.0.1 /FETCH/ME!");
    for q in ["cl=1", "chunked=1"] {
        let r = get(t.ports.web, &format!("/svc/a?{q}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), format!("hello /svc/a?{q}"));
        assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
        // As in HAProxy: chunked unless the service set a content-length.
        if q == "cl=1" {
            assert_eq!(r.header("content-length").as_deref(), Some("17"));
            assert_eq!(r.header("transfer-encoding"), None);
        } else {
            assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
            assert_eq!(r.header("content-length"), None);
        }
    }
    assert_eq!(t.app.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_read_the_request_body_within_a_bound() {
    let t = lua_proxy("", "").await;
    let mut c = H1::connect(t.ports.web).await;
    let body = pattern(300_000);
    let r = c
        .send(
            request(Method::POST, t.ports.web, "/upload")
                .body(full(body))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.text(), "300000 300000");
    // Past the 8 MiB a service may read: 413, and the daemon goes on.
    let r = c
        .send(
            request(Method::POST, t.ports.web, "/upload")
                .body(full(pattern(9 << 20)))
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let r = get(t.ports.web, "/upload").await;
    assert_eq!(r.text(), "0 0");
    assert_eq!(t.app.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_task_past_its_cpu_limit_is_stopped_once_and_not_restarted() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua-spin-task");
    let script = dir.write(
        "t.lua",
        "core.register_task(function() while true do end end)\ncore.register_action('hi', {'http-req'}, function(txn) txn.http:req_set_header('x-hi', '1') end)\n",
    );
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"t\"\nlua = \"{}\"\ncpu_limit = \"10ms\"\n\n{}{}",
        global_section(ports.admin, &[]),
        script.display(),
        frontend_section("web", ports.web, "app", "http_request = [{ lua = \"hi\" }]"),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    for _ in 0..5 {
        let r = get(ports.web, "/").await;
        assert_eq!(r.echo().header("x-hi").as_deref(), Some("1"));
    }
    // Stopped at its CPU limit once; the rebuilt state did not start it again.
    let s = plugin_stats(ports.admin).await;
    assert_eq!(s["errors"]["timeout"], 1, "{s}");
    assert_eq!(s["rebuilds"], 1, "{s}");
}

const TASK_SCRIPT: &str = r#"
local ticks = 0
core.register_init(function() core.set_var("proc.inited", "yes") end)
core.register_task(function(step)
  while true do
    ticks = ticks + step
    core.set_var("proc.ticks", ticks)
    core.msleep(20)
  end
end, 1)
core.register_task(function() error("task boom") end)
core.register_action("probe", {"http-req"}, function(txn)
  local st = core.backends["hits"].stktable
  local src = txn.f:src()
  local n = st:increment(src, "gpc0")
  st:increment(src, "gpc0", 4)
  st:set("10.0.0.9", { gpc0 = 7 })
  local e = st:lookup(src)
  local ok, err = pcall(st.increment, st, src, "gpc7")
  local ok2, err2 = pcall(st.lookup, st, "not-an-ip")
  local info = st:info()
  local dump = st:dump({ { "gpc0", "ge", 7 } })
  local keys = {}
  for k in pairs(dump) do keys[#keys + 1] = k end
  table.sort(keys)
  local h = function(k, v) txn.http:req_set_header(k, tostring(v)) end
  h("x-first-inc", n)
  h("x-gpc0", e.gpc0)
  h("x-inc-err", err)
  h("x-key-err", err2)
  h("x-info", info.type .. " " .. info.size .. " " .. tostring(info.data.gpc0))
  h("x-dump", table.concat(keys, ","))
  h("x-clear", tostring(st:clear("10.0.0.9")) .. " " .. tostring(st:lookup("10.0.0.9")))
  h("x-ticks", txn:get_var("proc.ticks"))
  h("x-inited", core.get_var("proc.inited"))
  h("x-fe", core.frontends["web"].name .. " " .. core.frontends["web"]:get_cap())
  h("x-be", core.backends["app"].name .. " " .. tostring(core.backends["app"].stktable))
end)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_inits_proxies_and_stick_table_methods() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua-task");
    let script = dir.write("t.lua", TASK_SCRIPT);
    let ports = Ports::new();
    let cfg = format!(
        "{}[[stick_table]]\nname = \"hits\"\ntype = \"ip\"\nsize = 100\nexpire = \"60s\"\nstore = [\"gpc0\"]\n\n[[plugin]]\nname = \"t\"\nlua = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[]),
        script.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [{ lua = \"probe\" }]"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    // The task runs in the background from worker start: its counter moves between requests.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = get(ports.web, "/").await.echo();
    let t1: i64 = first
        .header("x-ticks")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(t1 >= 2, "task ticks: {:?}", first.header("x-ticks"));
    eventually("the task keeps running", Duration::from_secs(3), || async {
        let e = get(ports.web, "/").await.echo();
        e.header("x-ticks")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            > t1
    })
    .await;
    assert_eq!(first.header("x-inited").as_deref(), Some("yes"));
    assert_eq!(first.header("x-first-inc").as_deref(), Some("1"));
    assert_eq!(first.header("x-gpc0").as_deref(), Some("5"));
    let inc_err = first.header("x-inc-err").unwrap_or_default();
    assert!(
        inc_err.contains("increment: table \"hits\" does not store gpc7"),
        "{inc_err}"
    );
    let key_err = first.header("x-key-err").unwrap_or_default();
    assert!(
        key_err.contains("lookup: invalid key for table \"hits\" (type ip)"),
        "{key_err}"
    );
    assert_eq!(first.header("x-info").as_deref(), Some("ip 100 -1"));
    assert_eq!(first.header("x-dump").as_deref(), Some("10.0.0.9"));
    assert_eq!(first.header("x-clear").as_deref(), Some("true nil"));
    assert_eq!(first.header("x-fe").as_deref(), Some("web frontend"));
    assert_eq!(first.header("x-be").as_deref(), Some("app nil"));
    // The failing task was counted as a runtime error; the plugin still serves.
    let s = plugin_stats(ports.admin).await;
    assert_eq!(s["errors"]["runtime"], 1, "{s}");
    assert!(
        d.stderr().contains("task boom"),
        "the task's error is logged: {}",
        d.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn msleep_yields_the_worker_to_other_requests() {
    let t = lua_proxy("", "").await;
    // One worker: two 300 ms sleeps overlap only if the Lua call yields.
    let start = Instant::now();
    let (a, b) = tokio::join!(get(t.ports.web, "/nap"), get(t.ports.web, "/nap"));
    let took = start.elapsed();
    for r in [&a, &b] {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.echo().header("x-napped").as_deref(), Some("300"));
    }
    assert!(took >= Duration::from_millis(290), "{took:?}");
    assert!(
        took < Duration::from_millis(550),
        "sleeps did not overlap: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_infinite_loop_is_stopped_fail_open() {
    let t = lua_proxy(
        "cpu_limit = \"20ms\"",
        "{ lua = \"spin\", if = \"path /spin\" },",
    )
    .await;
    let start = Instant::now();
    let r = get(t.ports.web, "/spin").await;
    assert!(start.elapsed() < Duration::from_secs(2));
    // fail_open: the request goes on to the server.
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().path(), "/spin");
    let r = get(t.ports.web, "/after").await;
    assert_eq!(r.header("x-path").as_deref(), Some("/after"));
    let s = plugin_stats(t.ports.admin).await;
    assert_eq!(s["errors"]["timeout"], 1, "{s}");
    assert_eq!(s["rebuilds"], 1, "{s}");
    let line =
        t.d.wait_stderr_line(Duration::from_secs(2), |l| l.contains("cpu_limit exceeded"))
            .await;
    assert!(
        line.is_some_and(|l| l.contains("plugin=p")),
        "{}",
        t.d.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_plugin_fails_closed_with_500() {
    let t = lua_proxy(
        "cpu_limit = \"20ms\"\nmemory_limit = \"2MiB\"\non_error = \"fail_closed\"",
        "{ lua = \"spin\", if = \"path /spin\" }, { lua = \"hog\", if = \"path /hog\" },",
    )
    .await;
    let r = get(t.ports.web, "/spin").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = get(t.ports.web, "/hog").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(t.app.requests(), 0);
    let r = get(t.ports.web, "/fine").await;
    assert_eq!(r.status, StatusCode::OK);
    let s = plugin_stats(t.ports.admin).await;
    assert_eq!(s["errors"]["timeout"], 1, "{s}");
    assert_eq!(s["errors"]["oom"], 1, "{s}");
    assert_eq!(s["rebuilds"], 2, "{s}");
    assert!(s["memory_peak"].as_u64().unwrap_or(0) > 1_000_000, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_limit_stepped_from_almost_nothing_never_takes_the_daemon_down() {
    let t = lua_proxy("", "").await;
    let admin = t.ports.admin;
    let mut c = H1::connect(t.ports.web).await;
    let paths = ["/a", "/fetch/x", "/svc/x?q", "/hmac"];
    let mut limit = 1usize;
    let mut statuses = std::collections::BTreeMap::new();
    while limit < 200_000 {
        let r = admin_post(admin, &format!("/plugins/p/limits?memory_limit={limit}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        for p in paths {
            let r = c.get(p).await;
            *statuses.entry(r.status.as_u16()).or_insert(0) += 1;
        }
        limit += if limit < 50_000 { 2_500 } else { 733 };
    }
    // Failures were answered (fail_open → the server, services → 500), never dropped.
    assert!(
        statuses.keys().all(|s| [200, 500].contains(s)),
        "{statuses:?}"
    );
    let r = admin_post(admin, "/plugins/p/limits?memory_limit=16MiB").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = c.get("/a").await;
    assert_eq!(r.echo().header("x-tag").as_deref(), Some("tagged"));
    assert_eq!(
        get(t.ports.web, "/svc/z?cl=1").await.text(),
        "hello /svc/z?cl=1"
    );
    assert_eq!(
        get(t.ports.web, "/fetch/q").await.text(),
        "ip=127.0.0.1 /FETCH/Q!"
    );
    let s = plugin_stats(admin).await;
    assert!(s["errors"]["oom"].as_u64().unwrap_or(0) > 0, "{s}");
    assert_eq!(s["memory_limit"], 16 << 20);
    assert!(get(admin, "/health").await.status == StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_hmac_arguments_raise_clear_lua_errors() {
    let t = lua_proxy("", "").await;
    let r = get(t.ports.web, "/hmac").await;
    let echo = r.echo();
    let err = echo.header("x-hmac-err").unwrap_or_default();
    assert!(err.contains("unknown hmac algorithm \"sha1024\""), "{err}");
    let input = echo.header("x-hmac-input").unwrap_or_default();
    assert!(
        input.contains("bad argument #1 to 'hmac' (string expected, got table)"),
        "{input}"
    );
    assert_eq!(
        echo.header("x-hmac-ok").as_deref(),
        Some("5031FE3D989C6D1537A013FA6E739DA23463FDAEC3B70137D828E36ACE221BD0")
    );
}

#[test]
fn check_reports_script_errors_with_both_locations() {
    let dir = TempDir::new("lua-check");
    dir.write("bad.lua", "core.Info('x')\nlocal = 1\n");
    let cfg = dir.write(
        "site.toml",
        "[[plugin]]\nname = \"bad\"\nlua = \"bad.lua\"\n\n[[backend]]\nname = \"app\"\nserver = [{ name = \"s1\", addr = \"127.0.0.1:9000\" }]\n",
    );
    let out = run_bin(
        &["check", "-c", cfg.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("site.toml:3:7: plugin \"bad\""),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("bad.lua:2:"), "{}", out.stderr);

    dir.write("fail.lua", "\n\nerror('no config for ' .. ...)\n");
    let cfg = dir.write(
        "site2.toml",
        "[[plugin]]\nname = \"f\"\nlua = \"fail.lua\"\nargs = [\"prod\"]\n",
    );
    let out = run_bin(
        &["check", "-c", cfg.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("fail.lua:3: no config for prod"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_failing_on_every_request_backs_off() {
    // `spin` loops until its 20 ms CPU limit on every request. Each failure
    // drops the state; after three in a row the rebuild waits 10 ms, doubling
    // (plugin::BackOff), so in 1.5 s each worker builds and spins it only a
    // dozen times instead of on every request (about 75).
    let t = lua_proxy(
        "cpu_limit = \"20ms\"\non_error = \"fail_closed\"",
        "{ lua = \"spin\", if = \"path /spin\" },",
    )
    .await;
    let start = std::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        let r = within(
            "spin request",
            Duration::from_secs(5),
            get(t.ports.web, "/spin"),
        )
        .await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
        requests += 1;
    }
    let s = plugin_stats(t.ports.admin).await;
    let spins = s["errors"]["timeout"].as_u64().unwrap_or(0);
    // Two workers (one per core), each with its own state and back-off.
    assert!(
        (1..=24).contains(&spins),
        "{spins} CPU-limit failures in {requests} requests over 1.5 s: the back-off did not grow ({s})"
    );
    // During the back-off the plugin's other rules fail too (`tag` runs on
    // every request; fail_closed); once it is over the state is rebuilt and
    // a request that succeeds starts the count over.
    eventually(
        "the state is rebuilt after its back-off",
        Duration::from_secs(8),
        || async { get(t.ports.web, "/fine").await.status == StatusCode::OK },
    )
    .await;
    let r = get(t.ports.web, "/spin").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
}

const GREET_LIB: &str = r#"local M = {}
function M.word() return "hello from a module" end
return M
"#;

const GREET_SCRIPT: &str = r#"local greet = require("greet")
core.register_action("greet", {"http-req"}, function(txn)
  txn.http:req_set_header("x-greet", greet.word())
end)
"#;

#[test]
fn lua_path_lets_scripts_require_their_libraries() {
    let dir = TempDir::new("luapath");
    std::fs::create_dir_all(dir.path().join("lib")).expect("lib dir");
    dir.write("lib/greet.lua", GREET_LIB);
    dir.write("main.lua", GREET_SCRIPT);
    let config = |extra: &str| {
        format!(
            "[[plugin]]\nname = \"p\"\nlua = \"main.lua\"\n{extra}\n[[backend]]\nname = \"app\"\nserver = [{{ name = \"s1\", addr = \"127.0.0.1:9\" }}]\n[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\ndefault_backend = \"app\"\nhttp_request = [{{ lua = \"greet\" }}]\n"
        )
    };
    let check = |name: &str, text: &str| {
        let cfg = dir.write(name, text);
        run_bin(
            &["check", "-c", cfg.to_str().expect("path")],
            Duration::from_secs(10),
        )
    };
    // Relative patterns resolve against the config file's directory, not the cwd.
    let ok = check("ok.toml", &config("lua_path = \"lib/?.lua\""));
    assert!(ok.status.is_some_and(|s| s.success()), "{}", ok.stderr);
    let missing = check("missing.toml", &config(""));
    assert!(missing.status.is_some_and(|s| !s.success()));
    assert!(
        missing.stderr.contains("module 'greet' not found"),
        "{}",
        missing.stderr
    );
    let bad = check("bad.toml", &config("lua_path = \"lib\""));
    assert!(
        bad.stderr.contains("not a search pattern"),
        "{}",
        bad.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_required_module_works_on_every_worker() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("luapath-run");
    std::fs::create_dir_all(dir.path().join("lib")).expect("lib dir");
    dir.write("lib/greet.lua", GREET_LIB);
    let script = dir.write("main.lua", GREET_SCRIPT);
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"p\"\nlua = \"{}\"\nlua_path = [\"{}/lib/?.lua\", \"{}/other/?/init.lua\"]\n\n{}{}",
        global_section(ports.admin, &[("workers", "2")]),
        script.display(),
        dir.path().display(),
        dir.path().display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [{ lua = \"greet\" }]"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    for i in 0..6 {
        let r = get(ports.web, &format!("/{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.echo().header("x-greet").as_deref(),
            Some("hello from a module")
        );
    }
}

/// A line server on loopback: answers `lookup <x>` with `OK <x>`, `dump`
/// with a payload then a close, `count <x>` by counting (no answer), and
/// `stall` with nothing at all.
async fn line_server() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = std::sync::Arc::clone(&counted);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let c = std::sync::Arc::clone(&c);
            tokio::spawn(async move {
                let (rd, mut wr) = s.into_split();
                let mut lines = BufReader::new(rd).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(x) = line.strip_prefix("lookup ") {
                        let _ = wr.write_all(format!("OK {x}\r\n").as_bytes()).await;
                    } else if line == "dump" {
                        let _ = wr.write_all(b"first part\nsecond part").await;
                        return;
                    } else if line.starts_with("count ") {
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else if line == "stall" {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            });
        }
    });
    (addr, counted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn core_tcp_cosockets_from_actions_services_and_tasks() {
    let (svc, counted) = line_server().await;
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua-tcp");
    let closed = free_addr();
    let script = dir.write(
        "tcp.lua",
        &format!(
            r#"
local ADDR, PORT = "{ip}", {port}
-- An IP-reputation style lookup in an action: one request, one answer line.
core.register_action("lookup", {{"http-req"}}, function(txn)
  local s = core.tcp()
  s:settimeout(2)
  local ok, err = s:connect(ADDR, PORT)
  if not ok then txn.http:req_set_header("x-lookup", "connect: " .. err) return end
  s:send("lookup " .. txn.sf:path() .. "\n")
  local line, rerr = s:receive("*l")
  local peer, pport = s:getpeername()
  s:close()
  txn.http:req_set_header("x-lookup", tostring(line) .. "|" .. tostring(rerr) .. "|" .. tostring(peer) .. ":" .. tostring(pport == PORT))
end)
-- Errors come back as nil plus a message, never as a Lua error.
core.register_action("failures", {{"http-req"}}, function(txn)
  local s = core.tcp()
  s:settimeout(0.3)
  local ok, cerr = s:connect("{closed}")
  local t = core.tcp()
  t:settimeout(0.3)
  t:connect(ADDR .. ":" .. PORT)
  t:send("stall\n")
  local data, terr, partial = t:receive(5, "pre-")
  local u = core.tcp()
  local sent, serr = u:send("x")
  txn.http:req_set_header("x-fail", tostring(ok) .. "|" .. tostring(cerr ~= nil) .. "|" .. tostring(data) .. "|" .. tostring(terr) .. "|" .. tostring(partial) .. "|" .. tostring(sent) .. "|" .. tostring(serr))
end)
-- A service reading everything until the peer closes, with byte counts too.
core.register_service("dump", "http", function(applet)
  local s = core.tcp()
  s:settimeout(2)
  assert(s:connect(ADDR, PORT))
  assert(s:send("xxdumpyy", 3, 6) == 6)
  s:send("\n")
  local head = s:receive(5)
  local line = s:receive("*l")
  local rest, err = s:receive("*a")
  local body = head .. "/" .. line .. "/" .. tostring(rest) .. "/" .. tostring(err)
  applet:set_status(200)
  applet:add_header("content-length", #body)
  applet:start_response()
  applet:send(body)
end)
-- A task talking to the service on its own.
core.register_task(function()
  local s = core.tcp()
  s:settimeout(2)
  if s:connect(ADDR, PORT) then
    for i = 1, 3 do s:send("count " .. i .. "\n") end
    s:close()
  end
end)
"#,
            ip = svc.ip(),
            port = svc.port(),
        ),
    );
    let ports = Ports::new();
    let rules = r#"http_request = [
  { lua = "lookup", if = "path_beg /lookup" },
  { lua = "failures", if = "path /failures" },
  { use_service = "lua.dump", if = "path /dump" },
]"#;
    let cfg = format!(
        "{}[[plugin]]\nname = \"p\"\nlua = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[("workers", "1")]),
        script.display(),
        frontend_section("web", ports.web, "app", rules),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;

    let r = get(ports.web, "/lookup/1.2.3.4").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.echo().header("x-lookup").as_deref(),
        Some("OK /lookup/1.2.3.4|nil|127.0.0.1:true")
    );
    // Several at once on one worker: each request's coroutine waits alone.
    let many = (0..8).map(|i| {
        let web = ports.web;
        tokio::spawn(async move { (i, get(web, &format!("/lookup/{i}")).await) })
    });
    for h in many {
        let (i, r) = h.await.expect("join");
        assert_eq!(
            r.echo().header("x-lookup").as_deref(),
            Some(format!("OK /lookup/{i}|nil|127.0.0.1:true").as_str())
        );
    }
    let start = std::time::Instant::now();
    let r = get(ports.web, "/failures").await;
    assert_eq!(
        r.echo().header("x-fail").as_deref(),
        Some("nil|true|nil|timeout|pre-|nil|not connected")
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let r = get(ports.web, "/dump").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "first/ part/second part/nil");
    eventually(
        "the task's three lines arrive",
        Duration::from_secs(5),
        || async { counted.load(std::sync::atomic::Ordering::Relaxed) == 3 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn core_tcp_reaches_unix_sockets_and_bounds_what_it_buffers() {
    use tokio::io::AsyncWriteExt;
    // A stats-socket style service: answers a command with a large dump and closes.
    let dir = TempDir::new("lua-unix");
    let sock = dir.path().join("stats.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind unix");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut cmd = [0u8; 64];
                let n = tokio::io::AsyncReadExt::read(&mut s, &mut cmd)
                    .await
                    .unwrap_or(0);
                let reply: Vec<u8> = if cmd[..n].starts_with(b"show big") {
                    vec![b'x'; 3 << 20]
                } else {
                    b"line one\nline two\n".to_vec()
                };
                let _ = s.write_all(&reply).await;
            });
        }
    });
    let app = Backend::start("s1").await;
    let script = dir.write(
        "unix.lua",
        &format!(
            r#"
core.register_service("stats", "http", function(applet)
  local s = core.tcp()
  s:settimeout(2)
  assert(s:connect("unix@{path}"))
  s:send(applet.qs == "big" and "show big\n" or "show stat\n")
  local all, err = s:receive("*a")
  s:close()
  local body = all and ("got " .. #all .. " bytes: " .. all:sub(1, 8)) or ("failed: " .. err)
  applet:set_status(200)
  applet:add_header("content-length", #body)
  applet:start_response()
  applet:send(body)
end)
core.register_fetches("sock", function(txn)
  local s = core.tcp()
  return tostring(s:connect("unix@{path}"))
end)
"#,
            path = sock.display()
        ),
    );
    let ports = Ports::new();
    let rules = r#"http_request = [
  { use_service = "lua.stats", if = "path /stats" },
  { return = 200, body = "%[lua.sock]", if = "path /fetch" },
]"#;
    let cfg = format!(
        "{}[[plugin]]\nname = \"p\"\nlua = \"{}\"\nmemory_limit = \"2MiB\"\n\n{}{}",
        global_section(ports.admin, &[("admin_token", ADMIN_TOKEN_TOML)]),
        script.display(),
        frontend_section("web", ports.web, "app", rules),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = get(ports.web, "/stats").await;
    assert_eq!(r.text(), "got 18 bytes: line one");
    // 3 MiB does not fit a 2 MiB plugin: an error value, not an OOM kill.
    let r = get(ports.web, "/stats?big").await;
    assert_eq!(r.text(), "failed: not enough memory");
    // A fetch cannot wait: the fetch fails (no value), the proxy answers.
    let r = get(ports.web, "/fetch").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "");
    let s = plugin_stats(ports.admin).await;
    assert_eq!(s["errors"]["oom"], 0, "{s}");
    assert!(s["errors"]["runtime"].as_u64().unwrap_or(0) >= 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn core_httpclient_posts_and_reads_the_answer() {
    // A webhook-style call from an action and from a task, on the
    // daemon's own client, against a local HTTP service (the echo backend).
    let hook = Backend::start("hook").await;
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua-httpclient");
    let closed = free_addr();
    let script = dir.write(
        "hc.lua",
        &format!(
            r#"
local URL = "http://{hook}/hook"
core.register_action("notify", {{"http-req"}}, function(txn)
  local hc = core.httpclient()
  local r = hc:post{{ url = URL .. txn.sf:path(), body = "payload", headers = {{ ["x-a"] = {{ "1", "2" }}, ["content-type"] = {{ "text/plain" }} }} }}
  local ct = r.headers["content-type"] and r.headers["content-type"][1]
  txn.http:req_set_header("x-hook", r.status .. "|" .. r.reason .. "|" .. tostring(ct) .. "|" .. tostring(r.body:find("payload", 1, true) ~= nil))
  local g = hc:get{{ url = URL .. "/get" }}
  local h = hc:head{{ url = URL .. "/head" }}
  local bad = hc:get{{ url = "http://{closed}/x", timeout = 500 }}
  txn.http:req_set_header("x-more", g.status .. "|" .. h.status .. "|" .. #h.body .. "|" .. bad.status .. "|" .. bad.body)
end)
core.register_task(function()
  core.httpclient():put{{ url = URL .. "/from-task", body = "t" }}
end)
"#,
            hook = hook.addr,
            closed = closed,
        ),
    );
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"p\"\nlua = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[("workers", "1")]),
        script.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [{ lua = \"notify\", if = \"path_beg /n\" }]"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    eventually("the task's PUT arrives", Duration::from_secs(5), || async {
        hook.requests() >= 1
    })
    .await;
    let before = hook.requests();
    let r = get(ports.web, "/n1").await;
    assert_eq!(r.status, StatusCode::OK);
    let e = r.echo();
    assert_eq!(
        e.header("x-hook").as_deref(),
        Some("200|OK|application/json|true")
    );
    assert_eq!(e.header("x-more").as_deref(), Some("200|200|0|0|"));
    // POST, GET, HEAD reached the service (the failed one did not).
    assert_eq!(hook.requests(), before + 3);
}

/// The public `events-backend-down-webhook` fixture (HAProxy 2.8's event
/// framework), unmodified: it subscribes every server of backend `test` to
/// `SERVER_DOWN` in an init function and POSTs to `DEMO_WEBHOOK_URL` when
/// the last active server goes down.
fn fixture(path: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/haproxy-lua")
        .join(path);
    assert!(
        p.exists(),
        "fixture {} is missing: CI clones ../shared beside the repository",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_fixture_posts_one_webhook_when_the_backend_goes_down() {
    let (w1, w2) = (
        Backend::start("webserver1").await,
        Backend::start("webserver2").await,
    );
    let hook = Webhook::start().await;
    let ports = Ports::new();
    let check = "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }\n";
    // Two workers: both load the script; the subscription (made at init)
    // runs once per process, as under HAProxy's lua-load.
    let cfg = format!(
        "{}[[plugin]]\nname = \"events\"\nlua = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[("workers", "2")]),
        fixture("events-backend-down-webhook/backend_down_webhook.lua").display(),
        frontend_section("web", ports.web, "test", ""),
        backend_section(
            "test",
            "roundrobin",
            &[("webserver1", w1.addr, 1), ("webserver2", w2.addr, 1)],
            check
        ),
    );
    let url = format!("http://{}/webhook", hook.addr);
    let d = Daemon::start_with(
        &cfg,
        &[ports.web, ports.admin],
        &[("DEMO_WEBHOOK_URL", &url)],
        None,
    )
    .await;
    eventually(
        "both servers are checked",
        Duration::from_secs(5),
        || async { w1.health_checks() > 1 && w2.health_checks() > 1 },
    )
    .await;
    // One server down: a SERVER_DOWN event, but another server is active.
    w1.set_healthy(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hook.calls().is_empty(), "{:?}", hook.calls());
    // The last one down: the handler finds no active server and POSTs.
    w2.set_healthy(false);
    eventually("the webhook is called", Duration::from_secs(5), || async {
        !hook.calls().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let calls = hook.calls();
    assert_eq!(
        calls.len(),
        1,
        "one call per process, not per worker: {calls:?}\n{}",
        d.stderr()
    );
    let (method, path, body) = &calls[0];
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/webhook"));
    let body: String = body.split_whitespace().collect();
    assert!(
        body.starts_with("{\"type\":\"backend_down\",\"name\":\"test\",\"when\":\""),
        "{body}"
    );
    let when: u64 = body
        .trim_start_matches("{\"type\":\"backend_down\",\"name\":\"test\",\"when\":\"")
        .trim_end_matches("\"}")
        .parse()
        .expect("when is a number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(now.abs_diff(when) < 30, "when={when} now={now}");
    // The backend really is down: 503.
    assert_eq!(
        get(ports.web, "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_sub_delivers_server_events_in_order_until_unsub() {
    // core.event_sub for the whole family and Server:event_sub for one
    // server: admin changes made by a script and health-check changes both
    // arrive, in order, with HAProxy's event data; unsub ends delivery.
    let (s1, s2) = (Backend::start("s1").await, Backend::start("s2").await);
    let dir = TempDir::new("lua-events");
    let script = dir.write(
        "ev.lua",
        r#"
local seen = {}
local function fmt(event, data)
  local extra = ""
  if data.state then extra = " " .. data.state.old_state .. ">" .. data.state.new_state .. " admin=" .. tostring(data.state.admin) end
  if data.admin then extra = " " .. table.concat(data.admin.old_admin, "+") .. ">" .. table.concat(data.admin.new_admin, "+") end
  if data.check then extra = " " .. data.check.result .. " " .. data.check.reason.short .. " " .. data.check.health.cur .. "/" .. data.check.health.rise .. "/" .. data.check.health.fall end
  return event .. " " .. data.proxy_name .. "/" .. data.name .. " puid=" .. data.puid .. " ref=" .. data.reference:get_name() .. extra
end
local all = core.event_sub({"SERVER_UP", "SERVER_DOWN", "SERVER_ADMIN", "SERVER_STATE"}, function(event, data, sub, when)
  core.msleep(1) -- handlers may yield; events still come one at a time
  seen[#seen + 1] = fmt(event, data)
  if type(when) ~= "number" then seen[#seen + 1] = "bad when" end
end)
core.register_init(function()
  core.backends["app"].servers["s2"]:event_sub({"SERVER_CHECK"}, function(event, data, sub)
    -- (the first passing check may come before the worker subscribed)
    if data.check.result == "FAILED" then
      seen[#seen + 1] = fmt(event, data)
      sub:unsub()
    end
  end)
end)
core.register_service("ev", "http", function(applet)
  local op = applet.qs
  local s1 = core.backends["app"].servers["s1"]
  if op == "maint" then s1:set_maint() elseif op == "ready" then s1:set_ready()
  elseif op == "unsub" then all:unsub() end
  core.msleep(50)
  local body = table.concat(seen, "\n") .. "\n"
  applet:set_status(200)
  applet:start_response()
  applet:send(body)
end)
"#,
    );
    let ports = Ports::new();
    let check = "health_check = { path = \"/health\", interval = \"100ms\", timeout = \"500ms\", rise = 2, fall = 2 }\n";
    let cfg = format!(
        "{}[[plugin]]\nname = \"ev\"\nlua = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[("workers", "1")]),
        script.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [{ use_service = \"lua.ev\", if = \"path /ev\" }]"
        ),
        backend_section(
            "app",
            "roundrobin",
            &[("s1", s1.addr, 1), ("s2", s2.addr, 1)],
            check
        ),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    eventually("s2 is checked", Duration::from_secs(5), || async {
        s2.health_checks() > 2
    })
    .await;
    let r = get(ports.web, "/ev?maint").await;
    assert_eq!(
        r.text(),
        "SERVER_ADMIN app/s1 puid=1 ref=s1 >MAINT+FMAINT\n\
         SERVER_STATE app/s1 puid=1 ref=s1 RUNNING>STOPPED admin=true\n\
         SERVER_DOWN app/s1 puid=1 ref=s1\n"
    );
    // s2 goes down through its checks: two failures (health 3 -> 2 -> 0);
    // the first reaches the per-server SERVER_CHECK subscription, which
    // then ends itself.
    s2.set_healthy(false);
    eventually("s2 is down", Duration::from_secs(5), || async {
        get(ports.web, "/ev")
            .await
            .text()
            .contains("SERVER_DOWN app/s2")
    })
    .await;
    let r = get(ports.web, "/ev?unsub").await;
    assert!(
        r.text().ends_with(
            "SERVER_CHECK app/s2 puid=2 ref=s2 FAILED L7STS 2/2/2\n\
             SERVER_STATE app/s2 puid=2 ref=s2 RUNNING>STOPPED admin=false\n\
             SERVER_DOWN app/s2 puid=2 ref=s2\n"
        ),
        "{}",
        r.text()
    );
    // After unsub nothing more arrives, and the unsubscribed per-server
    // handler saw no later check.
    let before = r.text();
    let r = get(ports.web, "/ev?ready").await;
    assert_eq!(r.text(), before);
    assert_eq!(before.matches("SERVER_CHECK").count(), 1, "{before}");
}

const RUNTIME_SCRIPT: &str = r#"
local hosts = Map.new("hosts.map", Map._str)
local q = core.queue()
-- Tasks run in every worker: each waits on its own worker's queue.
core.register_task(function()
  while true do
    local v = q:pop_wait()
    core.set_var("proc.e2e_popped", (core.get_var("proc.e2e_popped") or "") .. v .. ";")
  end
end)
local function answer(txn, body)
  txn:done(txn:reply({ status = 200, body = body }))
end
core.register_action("rt", {"http-req"}, function(txn)
  local p, k = txn.f:path(), txn.sf:req_hdr("x-k")
  if p == "/set" then
    core.set_map("hosts.map", k, txn.sf:req_hdr("x-v"))
  elseif p == "/del" then
    core.del_map("hosts.map", k)
  elseif p == "/push" then
    local ok = q:push(k)
    core.msleep(50)
    return answer(txn, tostring(ok) .. " " .. (core.get_var("proc.e2e_popped") or ""))
  elseif p == "/info" then
    local i = core.get_info()
    return answer(txn, string.format("%d %d %d %d %d %s", i.Pid, i.Nbthread, i.CumReq, i.Listeners,
      i.Maxconn, i.Name))
  end
  answer(txn, tostring(hosts:lookup(k)))
end)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runtime_maps_get_info_and_queues_through_the_binary() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua-runtime-api");
    dir.write("hosts.map", "a.example one\n");
    let script = dir.write("rt.lua", RUNTIME_SCRIPT);
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"rt\"\nlua = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[("workers", "2"), ("maxconn", "500")]),
        script.display(),
        frontend_section("web", ports.web, "app", "http_request = [{ lua = \"rt\" }]"),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let req = |path: &'static str, k: &'static str, v: &'static str| {
        let web = ports.web;
        async move {
            let r = H1::connect(web)
                .await
                .send(
                    http::Request::builder()
                        .uri(path)
                        .header("host", "t")
                        .header("x-k", k)
                        .header("x-v", v)
                        .body(empty())
                        .expect("request"),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
            r.text()
        }
    };
    // core.get_info(): the daemon's own figures.
    let info = req("/info", "", "").await;
    let f: Vec<&str> = info.split(' ').collect();
    assert_eq!(f[0], d.pid().to_string(), "{info}");
    assert_eq!(&f[1..], ["2", f[2], "2", "500", "portcullis"], "{info}");
    let before: u64 = f[2].parse().expect("CumReq");
    let again = req("/info", "", "").await;
    let after: u64 = again
        .split(' ')
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("CumReq");
    assert!(after > before, "{info} then {again}");
    // A map change made on one connection (one worker) is seen on every
    // connection after it, whichever worker serves it.
    assert_eq!(req("/get", "a.example", "").await, "one");
    assert_eq!(req("/get", "b.example", "").await, "nil");
    req("/set", "b.example", "two").await;
    req("/set", "a.example", "ONE").await;
    for _ in 0..8 {
        assert_eq!(req("/get", "b.example", "").await, "two");
        assert_eq!(req("/get", "a.example", "").await, "ONE");
    }
    req("/del", "a.example", "").await;
    for _ in 0..4 {
        assert_eq!(req("/get", "a.example", "").await, "nil");
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hosts.map")).expect("map"),
        "a.example one\n",
        "the file on disk is never written"
    );
    // core.queue(): the worker's task wakes from pop_wait on each push.
    let first = req("/push", "x1", "").await;
    assert!(
        first.starts_with("true ") && first.contains("x1;"),
        "{first}"
    );
    let second = req("/push", "x2", "").await;
    assert!(second.contains("x2;"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failure_that_answers_is_the_access_logs_termination() {
    // fail_closed: the 500 a failing plugin causes is logged with the
    // failure as the termination, not as a complete exchange.
    let app = Backend::start("s1").await;
    let dir = TempDir::new("lua-termination");
    let script = dir.write(
        "t.lua",
        r#"
core.register_action("boom", {"http-req"}, function(txn) error("boom") end)
core.register_action("spin", {"http-req"}, function(txn) while true do end end)
"#,
    );
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"t\"\nlua = \"{}\"\non_error = \"fail_closed\"\ncpu_limit = \"20ms\"\n\n{}{}",
        global_section(ports.admin, &[("access_log", "\"json\""), ("workers", "1")]),
        script.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [{ lua = \"boom\", if = \"path /boom\" }, { lua = \"spin\", if = \"path /spin\" }]"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    for (path, want) in [
        ("/boom", "plugin_error"),
        ("/spin", "plugin_cpu_limit"),
        ("/ok", "complete"),
    ] {
        let r = get(ports.web, path).await;
        let status = if want == "complete" { 200 } else { 500 };
        assert_eq!(r.status.as_u16(), status, "{path}");
        let line = d
            .wait_stderr_line(Duration::from_secs(5), |l| {
                l.contains(&format!("\"path\":\"{path}\"")) && l.contains("\"termination\"")
            })
            .await
            .unwrap_or_else(|| panic!("no access-log line for {path}:\n{}", d.stderr()));
        let v: Value = serde_json::from_str(&line).expect("json line");
        assert_eq!(v["termination"], want, "{line}");
    }
}
