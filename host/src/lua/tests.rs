//! In-process tests of the Lua runtime: the API against `Txn`s, and failure
//! isolation (memory stepped so allocation fails at every point, CPU loops).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::*;
use crate::config::BindCheck;
use crate::filter::{Filter, Flow, Reply};
use crate::runtime::Runtime as Config;
use crate::txn::{Phase, Sample, Txn, VarScope};

/// A directory for one test's files, removed afterwards.
#[derive(Debug)]
pub(super) struct Dir(pub(super) PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-lua-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads `script` as plugin "p" (with `plugin_extra` keys) and a frontend with `rules`.
fn load(script: &str, plugin_extra: &str, rules: &str) -> Result<(Config, Dir), ConfigError> {
    load_with(&[], script, plugin_extra, rules)
}

/// [`load`] with more `files` (name, text) beside the script and the config.
fn load_with(
    files: &[(&str, &str)],
    script: &str,
    plugin_extra: &str,
    rules: &str,
) -> Result<(Config, Dir), ConfigError> {
    let dir = Dir::new("cfg");
    std::fs::write(dir.0.join("p.lua"), script).expect("write script");
    for (name, text) in files {
        std::fs::write(dir.0.join(name), text).expect("write file");
    }
    let text = format!(
        "[[plugin]]\nname = \"p\"\nlua = \"p.lua\"\n{plugin_extra}\n\n[[backend]]\nname = \"app\"\nserver = [{{ name = \"s1\", addr = \"127.0.0.1:9000\" }}]\n\n[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:18080\"\ndefault_backend = \"app\"\n{rules}\n"
    );
    let path = dir.0.join("t.toml");
    crate::runtime::parse(&path, &text, BindCheck::Skip).map(|c| (c, dir))
}

pub(super) fn ok(script: &str, plugin_extra: &str, rules: &str) -> (Config, Dir) {
    ok_with(&[], script, plugin_extra, rules)
}

pub(super) fn ok_with(
    files: &[(&str, &str)],
    script: &str,
    plugin_extra: &str,
    rules: &str,
) -> (Config, Dir) {
    match load_with(files, script, plugin_extra, rules) {
        Ok(c) => c,
        Err(e) => panic!("config should load: {e}"),
    }
}

pub(super) fn txn(uri: &str) -> Txn {
    Txn::for_test(uri, std::net::SocketAddr::from(([10, 1, 2, 3], 5555)))
}

/// Runs one hook to completion like the proxy core (waiting on a runtime).
pub(in crate::lua) fn hook(
    rt: &tokio::runtime::Runtime,
    f: &std::sync::Arc<dyn Filter>,
    t: &mut Txn,
) -> Option<Reply> {
    let mut flow = match t.phase {
        Phase::Request => f.on_request(t),
        Phase::Response => f.on_response(t),
    };
    loop {
        match flow {
            Flow::Continue => return None,
            Flow::Respond(r) => return Some(r),
            Flow::Wait(fut) => {
                rt.block_on(fut);
                flow = f.resume(t);
            }
        }
    }
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs the request rules, then (unless answered) the response rules on a 200.
pub(super) fn exchange(rt: &tokio::runtime::Runtime, cfg: &Config, t: &mut Txn) -> Option<Reply> {
    let chain = &cfg.frontends[0].chain;
    t.phase = Phase::Request;
    for f in &chain.request {
        if let Some(r) = hook(rt, f, t) {
            return Some(r);
        }
    }
    t.phase = Phase::Response;
    t.req_vars.clear();
    for f in &chain.response {
        if let Some(r) = hook(rt, f, t) {
            return Some(r);
        }
    }
    None
}

fn plugin(cfg: &Config) -> &Arc<Plugin> {
    &lua_plugins(cfg)[0]
}

/// The config's Lua plugins (the first plugin host is Lua's).
pub(super) fn lua_plugins(cfg: &Config) -> &[Arc<Plugin>] {
    let host = cfg.plugins[0]
        .as_any()
        .downcast_ref::<super::LuaHost>()
        .expect("the Lua host");
    &host.plugins.list
}

const API: &str = r#"
core.register_action("hdrs", {"http-req", "http-res"}, function(txn, a)
  local h = txn.http:req_get_headers()
  local x = h["x-multi"]
  txn.http:req_set_header("x-seen", (x and (x[0] .. "|" .. x[1]) or "none") .. "/" .. tostring(a))
  txn.http:req_add_header("x-added", "1")
  txn.http:req_del_header("x-gone")
  txn.http:req_rep_header("x-rep", "^v(.*)$", "w\\1")
  txn:set_var("txn.m", txn.f:method())
  txn:set_var("req.r", 5)
  txn:set_var("sess.s", true)
  txn:set_priv({ count = 1 })
  txn.mine = "field"
  txn.http:req_set_path("/rewritten")
  txn.http:req_set_query("q=1")
end, 1)
core.register_action("hdrs", {"http-res"}, function(txn)
  local p = txn:get_priv()
  txn.http:res_set_header("x-priv", tostring(p and p.count))
  txn.http:res_set_header("x-field", tostring(txn.mine))
  txn.http:res_set_header("x-var", txn:get_var("txn.m") .. " " .. tostring(txn:get_var("req.r")) .. " " .. tostring(txn:get_var("sess.s")))
  txn.http:res_set_header("x-f", tostring(txn.f:req_hdr("x-nope")) .. "|" .. txn.sf:req_hdr("x-nope") .. "|" .. txn.sf:status())
  txn.http:res_set_header("x-c", txn.c:hex(txn.c:sha2("abc", 256)) .. "|" .. txn.c:lower("ABC") .. "|" .. txn.c:base64(txn.c:hmac("data", "sha256", "a2V5")))
  txn.http:res_set_status(201)
end)
"#;

#[test]
fn header_var_priv_and_sample_api() {
    let (cfg, _d) = ok(
        API,
        "",
        "http_request = [{ lua = \"hdrs\", args = [\"arg1\"] }]\nhttp_response = [{ lua = \"hdrs\" }]",
    );
    let rt = rt();
    let mut t = txn("/p?x=1");
    t.req_headers.append("x-multi", "a".parse().expect("hv"));
    t.req_headers.append("x-multi", "b".parse().expect("hv"));
    t.req_headers.append("x-gone", "1".parse().expect("hv"));
    t.req_headers.append("x-rep", "v42".parse().expect("hv"));
    let chain = &cfg.frontends[0].chain;
    t.phase = Phase::Request;
    assert!(hook(&rt, &chain.request[0], &mut t).is_none());
    assert_eq!(t.req_headers["x-seen"], "a|b/arg1");
    assert_eq!(t.req_headers["x-added"], "1");
    assert!(t.req_headers.get("x-gone").is_none());
    assert_eq!(t.req_headers["x-rep"], "w42");
    assert_eq!(t.uri.to_string(), "/rewritten?q=1");
    assert_eq!(
        t.get_var(VarScope::Txn, "m"),
        Some(Sample::Str("GET".into()))
    );
    assert_eq!(t.get_var(VarScope::Req, "r"), Some(Sample::Int(5)));
    t.phase = Phase::Response;
    assert!(hook(&rt, &chain.response[0], &mut t).is_none());
    assert_eq!(t.resp_headers["x-priv"], "1");
    assert_eq!(t.resp_headers["x-var"], "GET 5 true");
    assert_eq!(t.resp_headers["x-field"], "field");
    assert_eq!(t.resp_headers["x-f"], "nil||200");
    assert_eq!(
        t.resp_headers["x-c"],
        "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD|abc|UDH+PZicbRU3oBP6bnOdojRj/a7DtwE32Cjjas4iG9A="
    );
    assert_eq!(t.status.as_u16(), 201);
    // Another request on the same state sees neither the private data nor the fields.
    let mut t2 = txn("/");
    t2.phase = Phase::Response;
    assert!(hook(&rt, &chain.response[0], &mut t2).is_none());
    assert_eq!(t2.resp_headers["x-priv"], "nil");
    assert_eq!(t2.resp_headers["x-field"], "nil");
    assert_eq!(plugin(&cfg).stats.instances.load(Relaxed), 1);
}

#[test]
fn reply_done_and_act_codes() {
    let script = r#"
core.register_action("deny_page", {"http-req"}, function(txn)
  local r = txn:reply({ status = 403, headers = { ["content-type"] = { "text/html" } }, body = "<h1>no</h1>" })
  r:add_header("X-Why", "test")
  txn:done(r)
  error("not reached")
end)
core.register_action("code", {"http-req"}, function(txn, c) return tonumber(c) end, 1)
"#;
    let (cfg, _d) = ok(
        script,
        "",
        "http_request = [\n{ lua = \"deny_page\", if = \"path /deny\" },\n{ lua = \"code\", args = [\"5\"], if = \"path /d\" },\n{ lua = \"code\", args = [\"7\"], if = \"path /i\" },\n{ lua = \"code\", args = [\"0\"] },\n]",
    );
    let rt = rt();
    let r = exchange(&rt, &cfg, &mut txn("/deny")).expect("reply");
    assert_eq!(r.status.as_u16(), 403);
    assert_eq!(r.headers["content-type"], "text/html");
    assert_eq!(r.headers["x-why"], "test");
    assert_eq!(&r.body[..], b"<h1>no</h1>");
    let r = exchange(&rt, &cfg, &mut txn("/d")).expect("deny");
    assert_eq!(r.status.as_u16(), 403);
    let r = exchange(&rt, &cfg, &mut txn("/i")).expect("invalid");
    assert_eq!(r.status.as_u16(), 400);
    assert!(exchange(&rt, &cfg, &mut txn("/other")).is_none());
    assert_eq!(plugin(&cfg).stats.errors.get(FailureKind::Script), 0);
}

#[test]
fn msleep_yields_and_resumes_with_the_request_state() {
    let script = r#"
core.register_action("slow", {"http-req"}, function(txn)
  txn:set_priv("before")
  core.msleep(20)
  txn.http:req_set_header("x-after", txn:get_priv())
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"slow\" }]");
    let rt = rt();
    let chain = &cfg.frontends[0].chain;
    let mut t = txn("/");
    let flow = chain.request[0].on_request(&mut t);
    let Flow::Wait(fut) = flow else {
        panic!("expected a wait, got {flow:?}")
    };
    // Another request runs on the same state while the first one sleeps.
    let mut other = txn("/");
    let flow2 = chain.request[0].on_request(&mut other);
    assert!(matches!(flow2, Flow::Wait(_)));
    rt.block_on(fut);
    assert!(matches!(chain.request[0].resume(&mut t), Flow::Continue));
    assert_eq!(t.req_headers["x-after"], "before");
}

#[test]
fn fetch_converter_and_service() {
    let script = r#"
core.register_fetches("greet", function(txn, who) return "hi " .. who .. " from " .. txn.sf:src() end)
core.register_converters("rev", function(s, sep) return string.reverse(s) .. (sep or "") end)
core.register_service("svc", "http", function(applet)
  local body = applet.method .. " " .. applet.path .. " " .. applet.qs .. " " .. applet.headers["host"][0]
  applet:set_status(202)
  applet:add_header("content-type", "text/plain")
  applet:start_response()
  applet:send(body)
  applet:send("!")
end)
"#;
    let (cfg, _d) = ok(
        script,
        "",
        "http_request = [\n{ use_service = \"lua.svc\", if = \"path_beg /svc\" },\n{ return = 200, body = \"%[lua.greet(bob)] %[path,lua.rev(-)]\" },\n]",
    );
    let rt = rt();
    let r = exchange(&rt, &cfg, &mut txn("/abc")).expect("return");
    assert_eq!(&r.body[..], b"hi bob from 10.1.2.3 cba/-");
    let mut t = txn("/svc/x?y=1");
    t.req_headers
        .insert("host", "example.com".parse().expect("hv"));
    let r = exchange(&rt, &cfg, &mut t).expect("service");
    assert_eq!(r.status.as_u16(), 202);
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(&r.body[..], b"GET /svc/x y=1 example.com!");
}

#[test]
fn config_errors_name_the_script_line_and_the_plugin() {
    let e = load("local x = \n core.register_action(", "", "").expect_err("syntax");
    assert!(e.to_string().contains("p.lua:2:"), "{e}");
    assert!(
        e.to_string()
            .contains("t.toml:3:7: plugin \"p\": cannot load"),
        "{e}"
    );
    let e = load("\n\nerror('boom')", "", "").expect_err("runtime");
    assert!(e.to_string().contains("p.lua:3: boom"), "{e}");
    let e = load("while true do end", "cpu_limit = \"1ms\"", "").expect_err("loop");
    assert!(e.to_string().contains("cpu_limit exceeded"), "{e}");
    let e = load(
        "local t = {} for i = 1, 1e7 do t[i] = i end",
        "memory_limit = \"256KiB\"",
        "",
    )
    .expect_err("memory");
    assert!(e.to_string().contains("not enough memory"), "{e}");
    // `max_body_size` bounds what a Lua filter holds.
    let e = load("", "max_body_size = \"65MiB\"", "").expect_err("max_body_size");
    assert!(
        e.to_string()
            .contains("max_body_size of a Lua plugin (the body a filter may hold)"),
        "{e}"
    );
    let e = load("", "", "http_request = [{ lua = \"nope\" }]").expect_err("unknown");
    assert!(e.to_string().contains("no Lua action \"nope\""), "{e}");
    let e = load(
        "core.register_action('a', {'http-req'}, function() end, 2)",
        "",
        "http_request = [{ lua = \"a\", args = [\"x\"] }]",
    )
    .expect_err("nb_args");
    assert!(e.to_string().contains("takes 2 arguments"), "{e}");
    let e = load(
        "core.register_action('a', {'http-req'}, function() end)",
        "",
        "http_response = [{ lua = \"a\" }]",
    )
    .expect_err("phase");
    assert!(
        e.to_string().contains("not registered for http_response"),
        "{e}"
    );
    let e = load(
        "",
        "",
        "http_request = [{ set_header = \"x\", value = \"%[lua.nope]\" }]",
    )
    .expect_err("fetch");
    assert!(e.to_string().contains("no Lua fetch \"nope\""), "{e}");
    let e = load("core.register_action(nil, {}, function() end)", "", "").expect_err("bad args");
    assert!(
        e.to_string()
            .contains("bad argument #1 to 'register_action' (string expected, got"),
        "{e}"
    );
}

#[test]
fn infinite_loops_are_stopped_even_under_pcall() {
    let script = r#"
core.register_action("spin", {"http-req"}, function(txn)
  while true do pcall(function() while true do end end) end
end)
core.register_action("fine", {"http-req"}, function(txn) txn.http:req_set_header("x-ok", "1") end)
"#;
    let (cfg, _d) = ok(
        script,
        "cpu_limit = \"5ms\"\non_error = \"fail_closed\"",
        "http_request = [{ lua = \"spin\", if = \"path /spin\" }, { lua = \"fine\" }]",
    );
    let rt = rt();
    let start = std::time::Instant::now();
    let r = exchange(&rt, &cfg, &mut txn("/spin")).expect("fail_closed answers");
    assert_eq!(r.status.as_u16(), 500);
    assert!(start.elapsed() < Duration::from_secs(2));
    let p = plugin(&cfg);
    assert_eq!(p.stats.errors.get(FailureKind::CpuLimit), 1);
    assert_eq!(p.stats.rebuilds.load(Relaxed), 1);
    let mut t = txn("/");
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    assert_eq!(t.req_headers["x-ok"], "1");
}

#[test]
fn hmac_bad_arguments_are_lua_errors() {
    let script = r#"
core.register_action("h", {"http-req"}, function(txn, case)
  local ok, err
  if case == "alg" then ok, err = pcall(txn.c.hmac, txn.c, "data", "md42", "a2V5")
  elseif case == "nokey" then ok, err = pcall(txn.c.hmac, txn.c, "data", "sha256")
  elseif case == "b64" then ok, err = pcall(txn.c.hmac, txn.c, "data", "sha256", "!!!")
  elseif case == "input" then ok, err = pcall(txn.c.hmac, txn.c, {}, "sha256", "a2V5")
  elseif case == "nil" then ok, err = pcall(txn.c.hmac, txn.c, nil, "sha256", "a2V5")
  end
  txn.http:req_set_header("x-err", tostring(ok) .. " " .. tostring(err))
  txn.c:hmac({}, "sha256", "a2V5")
end, 1)
"#;
    let rules: String = ["alg", "nokey", "b64", "input", "nil"]
        .iter()
        .map(|c| format!("{{ lua = \"h\", args = [\"{c}\"], if = \"path /{c}\" }},\n"))
        .collect();
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let (cfg, _d) = ok(script, "", &format!("http_request = [\n{rules}]"));
    let rt = rt();
    for (case, want) in [
        ("alg", "unknown hmac algorithm \"md42\""),
        ("nokey", "takes 2 to 2 arguments, got 1"),
        ("b64", "the hmac key must be base64"),
        (
            "input",
            "bad argument #1 to 'hmac' (string expected, got table)",
        ),
        (
            "nil",
            "bad argument #1 to 'hmac' (string expected, got nil)",
        ),
    ] {
        let mut t = txn(&format!("/{case}"));
        assert!(exchange(&rt, &cfg, &mut t).is_none(), "fail_open");
        let got = t
            .req_headers
            .get("x-err")
            .map(|v| v.to_str().expect("text").to_string())
            .unwrap_or_else(|| panic!("{case}: no x-err header; {:?}", p_stats(&cfg)));
        assert!(
            got.starts_with("false ") && got.contains(want),
            "{case}: {got}"
        );
    }
    // The unprotected call at the end of each run failed the action (fail_open): counted, no rebuild.
    let p = plugin(&cfg);
    assert_eq!(p.stats.errors.get(FailureKind::Script), 5);
    assert_eq!(p.stats.rebuilds.load(Relaxed), 0);
}

fn p_stats(cfg: &Config) -> String {
    let s = &plugin(cfg).stats;
    format!(
        "runtime={} oom={} timeout={}",
        s.errors.get(FailureKind::Script),
        s.errors.get(FailureKind::MemoryLimit),
        s.errors.get(FailureKind::CpuLimit)
    )
}

const STEP_SCRIPT: &str = r#"
local routes = Map.new("step.map", Map._beg)
local big = {}
for i = 1, 200 do big[i] = string.rep("x", 64) .. i end
core.register_init(function() core.Debug("init") end)
core.register_action("act", {"http-req", "http-res"}, function(txn, a)
  local h = txn.http:req_get_headers()
  local n = 0
  for _ in pairs(txn.http:req_get_headers()) do n = n + 1 end
  local t = { (h["x-a"] or {})[0], n }
  for i = 1, 50 do t[#t + 1] = a .. i end
  txn.http:req_set_header("x-act", table.concat(t, ","))
  txn.http:req_set_header("x-route", routes:slookup(txn.sf:path()) .. tostring(routes:lookup("none")))
  txn:set_var("txn.v", txn.sf:path() .. txn.c:hex(txn.c:sha2("abc")))
  txn:set_priv(t)
  txn.http:res_set_header("x-res", txn.c:base64(txn.c:hmac("data", "sha256", "a2V5")))
  local st = core.backends["t"].stktable
  st:increment(txn.sf:src(), "gpc0")
  st:set("10.9.9.9", { gpc0 = 3 })
  local e = st:lookup(txn.sf:src())
  local d = st:dump({ { "gpc0", "ge", 1 } })
  local i = st:info()
  txn:set_var("txn.st", tostring(e.gpc0) .. i.type .. tostring(d["10.9.9.9"].gpc0))
end, 1)
core.register_fetches("f", function(txn, x) return string.rep(x, 100) .. txn.sf:method() end)
core.register_converters("c", function(s) local u = {} for i = 1, 20 do u[i] = s:upper() end return table.concat(u) end)
core.register_service("svc", "http", function(applet)
  applet:add_header("x-svc", "1")
  applet:add_header("x-body", applet:receive() .. applet:getline())
  applet:start_response()
  for i = 1, 20 do applet:send(string.rep("y", 100)) end
end)
"#;

fn step_config() -> (Config, Dir) {
    ok_with(
        &[("step.map", "/x route-x\n/ root\n")],
        STEP_SCRIPT,
        "memory_limit = \"8MiB\"\n[[stick_table]]\nname = \"t\"\ntype = \"ip\"\nsize = 10\nstore = [\"gpc0\"]",
        "http_request = [\n{ use_service = \"lua.svc\", if = \"path /svc\" },\n{ lua = \"act\", args = [\"v\"] },\n{ set_header = \"x-fc\", value = \"%[lua.f(ab)] %[path,lua.c]\" },\n]\nhttp_response = [{ lua = \"act\", args = [\"w\"] }]",
    )
}

/// Every path through the plugin at `limit`: must never panic or abort.
fn run_all(rt: &tokio::runtime::Runtime, cfg: &Config) {
    let mut t = txn("/svc");
    let _ = exchange(rt, cfg, &mut t);
    let mut t = txn("/x");
    for (name, value) in [
        ("x-a", "1"),
        ("x-b", "2"),
        ("x-a", "3"),
        ("user-agent", "test"),
    ] {
        t.req_headers.append(name, value.parse().expect("hv"));
    }
    let _ = exchange(rt, cfg, &mut t);
}

fn sane_call_works(rt: &tokio::runtime::Runtime, cfg: &Config) {
    let p = plugin(cfg);
    p.set_memory_limit(8 << 20);
    let mut t = txn("/x");
    assert!(exchange(rt, cfg, &mut t).is_none());
    assert!(
        t.req_headers.get("x-act").is_some() && t.req_headers.get("x-fc").is_some(),
        "a sane limit works again: {:?}",
        t.req_headers
    );
    assert_eq!(t.req_headers["x-route"], "route-xnil");
    let r = exchange(rt, cfg, &mut txn("/svc")).expect("service answers");
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body.len(), 2000);
}

#[test]
fn memory_limit_stepped_from_nothing_fails_every_allocation_cleanly() {
    let (cfg, _d) = step_config();
    let rt = rt();
    let p = plugin(&cfg);
    // Building the state: from almost nothing up to past what the script needs.
    let mut limit = 1usize;
    while limit < 160 * 1024 {
        p.set_memory_limit(limit);
        run_all(&rt, &cfg);
        limit += if limit < 40 * 1024 { 997 } else { 211 };
    }
    assert!(p.stats.errors.get(FailureKind::MemoryLimit) > 0);
    sane_call_works(&rt, &cfg);
}

#[test]
fn memory_headroom_stepped_over_a_built_state() {
    let (cfg, _d) = step_config();
    let rt = rt();
    let p = plugin(&cfg);
    sane_call_works(&rt, &cfg);
    let inst = runtime::instance(p).expect("built");
    inst.lua.gc_collect().expect("gc");
    let base = inst.lua.used_memory();
    drop(inst);
    // With the state built, leave it 0..48KiB of room: every call and API
    // function meets a failing allocation somewhere.
    let mut room = 0usize;
    while room < 48 * 1024 {
        p.set_memory_limit(base + room);
        run_all(&rt, &cfg);
        room += 61;
    }
    assert!(p.stats.errors.get(FailureKind::MemoryLimit) > 0);
    assert!(p.stats.rebuilds.load(Relaxed) > 0);
    sane_call_works(&rt, &cfg);
}

#[test]
fn a_plugin_does_not_starve_another() {
    let dir = Dir::new("two");
    std::fs::write(
        dir.0.join("hog.lua"),
        "core.register_action('hog', {'http-req'}, function() local t = {} for i = 1, 1e8 do t[i] = i end end)",
    )
    .expect("write");
    std::fs::write(
        dir.0.join("ok.lua"),
        "core.register_action('ok', {'http-req'}, function(txn) txn.http:req_set_header('x-ok', '1') end)",
    )
    .expect("write");
    let text = "[[plugin]]\nname = \"hog\"\nlua = \"hog.lua\"\nmemory_limit = \"1MiB\"\n[[plugin]]\nname = \"ok\"\nlua = \"ok.lua\"\nmemory_limit = \"1MiB\"\n[[backend]]\nname = \"app\"\nserver = [{ name = \"s1\", addr = \"127.0.0.1:9000\" }]\n[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:18080\"\ndefault_backend = \"app\"\nhttp_request = [{ lua = \"hog\" }, { lua = \"ok\" }]\n";
    let cfg = crate::runtime::parse(&dir.0.join("t.toml"), text, BindCheck::Skip).expect("loads");
    let rt = rt();
    let mut t = txn("/");
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    assert_eq!(t.req_headers["x-ok"], "1");
    assert_eq!(
        lua_plugins(&cfg)[0]
            .stats
            .errors
            .get(FailureKind::MemoryLimit),
        1
    );
    assert_eq!(
        lua_plugins(&cfg)[1]
            .stats
            .errors
            .get(FailureKind::MemoryLimit),
        0
    );
    let _ = Path::new("");
}

const LAZY_HEADERS: &str = r#"
core.register_action("lazy", {"http-req"}, function(txn)
  local http = txn.http
  local h = http:req_get_headers()
  -- The table is a snapshot: changes after the call do not show through.
  http:req_set_header("x-a", "changed")
  http:req_add_header("x-new", "1")
  local a = h["x-a"]
  local out = { a[0], a[1], tostring(a[2]), tostring(h["x-new"]), tostring(h["X-A"]), tostring(h[1]) }
  -- The same table on every read; a script's changes stick.
  out[#out + 1] = tostring(rawequal(h["x-a"], a))
  a[0] = "mine"
  out[#out + 1] = h["x-a"][0]
  h["x-b"] = nil
  h["x-c"] = { [0] = "set" }
  -- pairs() sees every name once, with the script's changes.
  local names = {}
  for k, v in pairs(h) do names[#names + 1] = k .. "=" .. v[0] end
  table.sort(names)
  out[#out + 1] = table.concat(names, ",")
  -- After pairs(), a plain table: next() and rawget() see everything.
  out[#out + 1] = tostring(getmetatable(h)) .. " " .. rawget(h, "host")[0]
  http:req_set_header("x-out", table.concat(out, ";"))
  -- Two snapshots are independent.
  local h1, h2 = http:req_get_headers(), http:req_get_headers()
  h1["host"] = nil
  http:req_set_header("x-two", tostring(h1["host"]) .. " " .. h2["host"][0])
  -- Many live snapshots, each its own; the metatable is protected.
  local keep = {}
  for i = 1, 100 do keep[i] = http:req_get_headers() end
  local same = 0
  for i = 1, 100 do if keep[i]["x-new"][0] == "1" and keep[i]["host"][0] == "example.com" then same = same + 1 end end
  local ok = pcall(setmetatable, keep[1], {})
  http:req_set_header("x-many", same .. " " .. tostring(getmetatable(keep[2])) .. " " .. tostring(ok))
end)
core.register_action("lazy_res", {"http-res"}, function(txn)
  local h = txn.http:res_get_headers()
  txn.http:res_set_header("x-echo", h["x-up"][0] .. " " .. tostring(h["x-req"]))
end)
"#;

#[test]
fn header_tables_are_snapshots_filled_on_read_and_on_pairs() {
    let (cfg, _d) = ok(
        LAZY_HEADERS,
        "",
        "http_request = [{ lua = \"lazy\" }]\nhttp_response = [{ lua = \"lazy_res\" }]",
    );
    let rt = rt();
    let mut t = txn("/");
    for (name, value) in [
        ("host", "example.com"),
        ("x-a", "1"),
        ("x-b", "2"),
        ("x-a", "3"),
        ("x-req", "r"),
    ] {
        t.req_headers.append(name, value.parse().expect("hv"));
    }
    t.resp_headers.append("x-up", "u".parse().expect("hv"));
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    assert_eq!(
        t.req_headers["x-out"],
        "1;3;nil;nil;nil;nil;true;mine;host=example.com,x-a=mine,x-c=set,x-req=r;nil example.com"
    );
    assert_eq!(t.req_headers["x-two"], "nil example.com");
    assert_eq!(t.req_headers["x-many"], "100 false false");
    assert_eq!(t.resp_headers["x-echo"], "u nil");
    assert_eq!(p_stats(&cfg), "runtime=0 oom=0 timeout=0");
}

const GC_HEADERS: &str = r#"
core.register_action("gc_headers", {"http-req"}, function(txn)
  local http = txn.http
  local bad = 0
  for i = 1, 400 do
    -- Garbage whose finalizers take snapshots of the other header set: they
    -- run while a snapshot's table is being allocated and reuse its buffer.
    setmetatable({}, {__gc = function() http:res_get_headers() end})
    local h = http:req_get_headers()
    local v = h["x-a"]
    if not v or v[0] ~= "request" or v[1] ~= "second" then bad = bad + 1 end
    local n = 0
    for _ in pairs(h) do n = n + 1 end
    if n ~= 2 then bad = bad + 1 end
  end
  http:req_set_header("x-bad", tostring(bad))
end)
"#;

/// A snapshot is reused across calls; a finalizer writing another one while
/// Lua allocates the table must not end up in it.
#[test]
fn header_snapshots_survive_finalizers_that_take_snapshots() {
    let (cfg, _d) = ok(GC_HEADERS, "", "http_request = [{ lua = \"gc_headers\" }]");
    let rt = rt();
    let mut t = txn("/");
    t.req_headers
        .append("host", "example.com".parse().expect("hv"));
    t.req_headers.append("x-a", "request".parse().expect("hv"));
    t.req_headers.append("x-a", "second".parse().expect("hv"));
    for i in 0..20 {
        let v = format!("response value {i} long enough to differ in size");
        t.resp_headers.append("x-a", v.parse().expect("hv"));
    }
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    assert_eq!(t.req_headers["x-bad"], "0");
    assert_eq!(p_stats(&cfg), "runtime=0 oom=0 timeout=0");
}

const HEADER_ARGS: &str = r#"
local saved
local function try(f, ...)
  local ok, e = pcall(f, ...)
  return ok and "ok" or e
end
core.register_action("bad", {"http-req"}, function(txn)
  local http = txn.http
  saved = http
  local out = {
    try(function() http:req_set_header(nil, "v") end),
    try(http.req_set_header, http, "x-a", {}),
    try(http.req_set_header, http, "bad name", "v"),
    try(http.req_add_header, http, "Content-Length", "5"),
    try(http.res_set_header, http, "x-a", "a\nb"),
    try(http.req_set_header, http, "x-num", 42),
    try(http.req_add_header, http, 7, 1.5),
  }
  http:req_set_header("x-out", table.concat(out, "|"))
  -- Names parsed once and cached: case and slot collisions stay exact.
  for i = 1, 20 do
    http:req_add_header("x-n" .. (i % 10), tostring(i))
  end
  http:req_set_header("X-Case", "1")
  http:req_set_header("x-case", "2")
end)
core.register_fetches("setter", function(txn)
  local ok, e = pcall(txn.http.req_set_header, txn.http, "x-f", "1")
  local h = txn.http:req_get_headers()
  return tostring(ok) .. " " .. e .. " " .. h["x-num"][0]
end)
core.register_action("later", {"http-res"}, function(txn)
  -- A txn.http kept from another call works on the running one.
  saved:res_set_header("x-later", "1")
end)
core.register_converters("conv", function(s)
  local ok, e = pcall(saved.req_get_headers, saved)
  return s .. " " .. tostring(ok) .. " " .. e
end)
"#;

#[test]
fn c_header_functions_check_arguments_like_the_rest_of_the_api() {
    let (cfg, _d) = ok(
        HEADER_ARGS,
        "",
        "http_request = [{ lua = \"bad\" }, { set_header = \"x-fetch\", value = \"%[lua.setter]\" }, { set_header = \"x-conv\", value = \"%[path,lua.conv]\" }]\nhttp_response = [{ lua = \"later\" }]",
    );
    let rt = rt();
    let mut t = txn("/");
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    let out = t.req_headers["x-out"].to_str().expect("ascii").to_string();
    let parts: Vec<&str> = out.split('|').collect();
    assert!(
        parts[0].contains("p.lua:11: "),
        "located at the script's call: {out}"
    );
    assert!(
        parts[0].ends_with("bad argument #1 to 'req_set_header' (string expected, got nil)"),
        "{out}"
    );
    assert!(
        parts[1].ends_with("bad argument #2 to 'req_set_header' (string expected, got table)"),
        "{out}"
    );
    assert!(
        parts[2].ends_with("bad argument #1 to 'req_set_header' (invalid header name)"),
        "{out}"
    );
    assert!(parts[3].ends_with("bad argument #1 to 'req_add_header' (content-length is managed by the proxy (message framing) and cannot be changed)"), "{out}");
    assert!(parts[4].ends_with("bad argument #2 to 'res_set_header' (invalid header value: control characters are not allowed)"), "{out}");
    assert_eq!(&parts[5..], ["ok", "ok"]);
    assert_eq!(t.req_headers["x-num"], "42");
    assert_eq!(t.req_headers["7"], "1.5");
    for i in 0..10 {
        let got: Vec<&str> = t
            .req_headers
            .get_all(format!("x-n{i}"))
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        let want = [
            (if i == 0 { 10 } else { i }).to_string(),
            (if i == 0 { 20 } else { i + 10 }).to_string(),
        ];
        assert_eq!(got, want, "x-n{i}");
    }
    assert_eq!(t.req_headers.get_all("x-case").iter().count(), 1);
    assert_eq!(t.req_headers["x-case"], "2");
    assert_eq!(
        t.req_headers["x-fetch"],
        "false req_set_header cannot change the message from a fetch or a converter 42"
    );
    assert!(t.req_headers.get("x-f").is_none());
    assert_eq!(
        t.req_headers["x-conv"],
        "/ false this function needs a transaction; it can be used in actions, fetches and services"
    );
    assert_eq!(t.resp_headers["x-later"], "1");
    assert_eq!(p_stats(&cfg), "runtime=0 oom=0 timeout=0");
}

const MAP_SCRIPT: &str = r##"
local hosts = Map.new("hosts.map")
local nets = Map.new(NETS, Map._ip)
local codes = Map.new("codes.map", Map.int)
local at_init
core.register_init(function() at_init = Map.new("hosts.map", Map._str):lookup("a.example") end)
local function err(f, ...)
  local ok, e = pcall(f, ...)
  return tostring(ok) .. ":" .. tostring(e)
end
core.register_action("route", {"http-req"}, function(txn)
  local h = txn.http
  h:req_set_header("x-host", tostring(hosts:lookup(txn.sf:req_hdr("host"))))
  h:req_set_header("x-net", nets:slookup(txn.sf:src()) .. "|" .. nets:slookup("192.0.2.1") .. "|" .. tostring(nets:lookup("bogus")))
  h:req_set_header("x-code", codes:lookup(404) .. "|" .. codes:lookup("503") .. "|" .. tostring(codes:lookup(200)))
  h:req_set_header("x-init", tostring(at_init))
  h:req_set_header("x-consts", Map._str .. Map.str .. Map._beg .. Map._ip .. Map._reg)
  h:req_set_header("x-errs", table.concat({
    err(Map.new, "hosts.map", Map._str),
    err(hosts.lookup, hosts),
    err(hosts.lookup, "x", "y"),
    err(function() local v = hosts:lookup({}) return v end),
    err(codes.lookup, codes, "x"),
    err(codes.lookup, codes, 2.5),
  }, "~"))
end)
"##;

#[test]
fn map_class_loads_once_and_looks_up_like_haproxy() {
    let nets = Dir::new("nets");
    let nets_path = nets.0.join("nets.map");
    std::fs::write(&nets_path, "10.0.0.0/8 ten\n10.1.0.0/16 ten-one\n").expect("nets");
    let script = MAP_SCRIPT.replace("NETS", &format!("{:?}", nets_path.display().to_string()));
    let (cfg, _d) = ok_with(
        &[
            (
                "hosts.map",
                "# virtual hosts\na.example  app-a\nb.example\tapp-b  \n",
            ),
            ("codes.map", "400:499 client\n500: server\n"),
        ],
        &script,
        "",
        "http_request = [{ lua = \"route\" }]",
    );
    let rt = rt();
    let mut t = txn("/");
    t.req_headers
        .insert("host", "b.example".parse().expect("hv"));
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    let h = |n: &str| t.req_headers[n].to_str().expect("ascii").to_string();
    assert_eq!(h("x-host"), "app-b");
    assert_eq!(h("x-net"), "ten-one||nil");
    assert_eq!(h("x-code"), "client|server|nil");
    assert_eq!(h("x-init"), "app-a");
    assert_eq!(h("x-consts"), "667312");
    let errs = h("x-errs");
    let errs: Vec<&str> = errs.split('~').collect();
    assert!(
        errs[0].starts_with("false:")
            && errs[0].contains("maps can only be loaded while the script loads"),
        "{errs:?}"
    );
    assert!(errs[1].ends_with("'lookup' needs 2 arguments"), "{errs:?}");
    assert!(
        errs[2].ends_with(
            "calling 'lookup' on bad self (Map expected, got string); use map:lookup(key)"
        ),
        "{errs:?}"
    );
    assert!(
        errs[3].ends_with("bad argument #1 to 'lookup' (string expected, got table)"),
        "{errs:?}"
    );
    assert!(
        errs[4].ends_with("bad argument #1 to 'lookup' (number expected, got string)"),
        "{errs:?}"
    );
    assert!(
        errs[5].ends_with("bad argument #1 to 'lookup' (number has no integer representation)"),
        "{errs:?}"
    );
    assert!(
        errs[3].contains("p.lua:"),
        "located at the script's line: {errs:?}"
    );
    // Each file was read once for the config check and every state since.
    let p = plugin(&cfg);
    let a = p
        .maps
        .get_or_load(
            &_d.0.join("hosts.map"),
            crate::rules::cond::MatchMethod::Str,
        )
        .expect("cached");
    std::fs::remove_file(_d.0.join("hosts.map")).expect("rm");
    let b = p
        .maps
        .get_or_load(
            &_d.0.join("hosts.map"),
            crate::rules::cond::MatchMethod::Str,
        )
        .expect("still cached");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(p_stats(&cfg), "runtime=0 oom=0 timeout=0");
}

#[test]
fn map_files_that_cannot_load_are_config_errors() {
    let e = load_with(&[], "\nlocal m = Map.new('missing.map', Map._str)", "", "")
        .expect_err("missing");
    let text = e.to_string();
    assert!(
        text.contains("p.lua:2: 'new': failed to open pattern file <"),
        "{text}"
    );
    assert!(text.contains("missing.map>: No such file"), "{text}");
    let e = load_with(
        &[("n.map", "10.0.0.0/8 ok\nnot-an-ip bad\n")],
        "Map.new('n.map', Map._ip)",
        "",
        "",
    )
    .expect_err("bad ip");
    assert!(
        e.to_string()
            .contains("'new': 'not-an-ip' is not a valid IPv4 or IPv6 address at line 2 of file <"),
        "{e}"
    );
    let e = load_with(
        &[("r.map", "( bad\n")],
        "Map.new('r.map', Map._reg)",
        "",
        "",
    )
    .expect_err("bad regex");
    assert!(e.to_string().contains("invalid regex \"(\""), "{e}");
    assert!(e.to_string().contains("at line 1 of file <"), "{e}");
    let e = load_with(
        &[("s.map", "a b\n")],
        "Map.new('s.map', Map._found)",
        "",
        "",
    )
    .expect_err("found");
    assert!(
        e.to_string()
            .contains("'new' doesn't support this match mode"),
        "{e}"
    );
    let e = load_with(&[("s.map", "a b\n")], "Map.new('s.map', 99)", "", "").expect_err("99");
    assert!(
        e.to_string().contains("'new' needs a valid match method"),
        "{e}"
    );
    let e = load_with(&[], "Map.new()", "", "").expect_err("no args");
    assert!(
        e.to_string().contains("'new' needs at least 1 argument."),
        "{e}"
    );
}

#[test]
fn set_var_ifexist_only_keeps_proc_variables_from_being_created() {
    // HAProxy 2.6: `ifexist` stops the creation of a proc variable only;
    // a variable of any other scope is created.
    let script = r#"
core.register_action("vars", {"http-req"}, function(txn)
  txn:set_var("txn.fresh", "made", true)
  txn:set_var("sess.fresh", 7, true)
  txn:set_var("proc.lua_ifexist_never_set", 1, true)
  txn:set_var("proc.lua_ifexist_set", 1)
  txn:set_var("proc.lua_ifexist_set", 2, true)
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"vars\" }]");
    let rt = rt();
    let mut t = txn("/");
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    assert_eq!(
        t.get_var(VarScope::Txn, "fresh"),
        Some(Sample::Str("made".into()))
    );
    assert_eq!(t.get_var(VarScope::Sess, "fresh"), Some(Sample::Int(7)));
    assert_eq!(t.get_var(VarScope::Proc, "lua_ifexist_never_set"), None);
    assert_eq!(
        t.get_var(VarScope::Proc, "lua_ifexist_set"),
        Some(Sample::Int(2))
    );
}

#[test]
fn log_messages_are_cleaned_as_haproxy_does() {
    use super::api::clean_log_message;
    assert_eq!(clean_log_message(b"two\nlines\tand\x7f"), "two.lines.and.");
    assert_eq!(clean_log_message("é".as_bytes()), "..");
    assert_eq!(clean_log_message(b"plain text"), "plain text");
    let exact = vec![b'a'; 16383];
    assert_eq!(clean_log_message(&exact).len(), 16383);
    assert!(!clean_log_message(&exact).ends_with(" ..."));
    let long = vec![b'a'; 20000];
    let out = clean_log_message(&long);
    assert_eq!(out.len(), 16383);
    assert!(out.ends_with("a ..."), "{}", &out[out.len() - 8..]);
}

#[test]
fn regex_class_and_address_matching() {
    // The selfie exporter's use: `local _, regex = Regex.new(...); regex:exec(s)`.
    let script = r#"
core.register_action("re", {"http-req"}, function(txn)
  local ok, up = Regex.new("^(UP|no check).*", true)
  local ok2, ci = Regex.new("^up", false)
  local bad, err = Regex.new("(", true)
  local m, caps = up:match("UP 1/3")
  local net = core.parse_addr("10.0.0.0/8")
  txn.http:req_set_header("x-re", table.concat({
    tostring(ok), tostring(up:exec("UP 2/3")), tostring(up:exec("DOWN")),
    tostring(ok2 and ci:exec("Up")), tostring(bad), tostring(err ~= nil),
    tostring(m), caps[1], caps[2], tostring((select(2, up:match("x")))),
    tostring(core.match_addr(net, "10.1.2.3")), tostring(core.match_addr("127.0.0.1/32", "127.0.0.0/8")),
    tostring(core.match_addr("10.0.0.1", "192.168.0.0/16")), tostring(core.parse_addr("nope")),
    tostring(core.match_addr("::1", "::1/128")),
  }, ","))
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"re\" }]");
    let rt = rt();
    let mut t = txn("/");
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    assert_eq!(
        t.req_headers["x-re"],
        "true,true,false,true,false,true,true,UP 1/3,UP,nil,true,true,false,nil,true"
    );
}

#[test]
fn core_done_ends_the_call_where_it_stands() {
    let script = r#"
core.register_action("stop", {"http-req"}, function(txn)
  txn.http:req_set_header("x-before", "1")
  core.done()
  txn.http:req_set_header("x-after", "1")
end)
core.register_fetches("early", function(txn)
  core.done("from-done")
  return "from-return"
end)
"#;
    let (cfg, _d) = ok(
        script,
        "",
        "http_request = [{ lua = \"stop\" }, { set_header = \"x-f\", value = \"%[lua.early]\" }]",
    );
    let rt = rt();
    // Twice: a coroutine ended by core.done is not reused in a bad state.
    for _ in 0..2 {
        let mut t = txn("/");
        assert!(exchange(&rt, &cfg, &mut t).is_none());
        assert_eq!(t.req_headers["x-before"], "1");
        assert!(t.req_headers.get("x-after").is_none());
        assert_eq!(t.req_headers["x-f"], "from-done");
    }
    assert_eq!(plugin(&cfg).stats.errors.get(FailureKind::Script), 0);
}

#[test]
fn server_objects_share_the_live_state_and_check_self() {
    // The 2.8 getters scripts such as haproxy-mailers use, the state a
    // script changes as the balancer and other workers see it, and a forged
    // object refused as a bad argument.
    let script = r#"
core.register_action("srv", {"http-req"}, function(txn)
  local px = core.backends["app"]
  local s1 = px.servers["s1"]
  local out = {
    s1:get_name(), s1:get_puid(), s1.name, s1.puid, s1:get_proxy():get_name(),
    px:get_uuid(), tostring(px:get_srv_act()), tostring(px:get_srv_bck()),
    tostring(s1:get_cur_sess()), tostring(s1:is_backup()), tostring(s1:get_pend_conn()),
    tostring(core.frontends["web"]:get_cap()), tostring(s1:set_addr("10.0.0.1") ~= nil),
  }
  s1:set_maint()
  out[#out + 1] = tostring(px:get_srv_act())
  local ok, err = pcall(s1.get_weight, { [0] = 99999999 })
  out[#out + 1] = tostring(ok) .. ":" .. tostring(err)
  local ok2, err2 = pcall(px.get_stats, {})
  out[#out + 1] = tostring(ok2) .. ":" .. tostring(err2)
  txn:set_var("txn.out", table.concat(out, "|"))
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"srv\" }]");
    let rt = rt();
    let mut t = txn("/");
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    let Some(Sample::Str(out)) = t.get_var(VarScope::Txn, "out") else {
        panic!("no output: {:?}", t.get_var(VarScope::Txn, "out"));
    };
    let parts: Vec<&str> = out.split('|').collect();
    assert_eq!(
        &parts[..14],
        &[
            "s1", "1", "s1", "1", "app", "2", "1", "0", "0", "false", "0", "frontend", "true", "0"
        ],
        "{out}"
    );
    assert!(
        parts[14].starts_with("false:")
            && parts[14].contains("bad argument #1 to 'get_weight' (Server expected"),
        "{out}"
    );
    assert!(
        parts[15].contains("bad argument #1 to 'get_stats' (Proxy expected"),
        "{out}"
    );
    // The script's set_maint is the runtime's live state: the balancer sees it.
    assert!(cfg.servers[0].servers[0].is_maint());
    assert_eq!(cfg.servers[0].usable_servers(), 0);
}

#[test]
fn event_sub_checks_its_arguments() {
    let script = r#"
local errs = {}
for _, args in ipairs({ { {"NOPE"}, print }, { {}, print }, { "SERVER_UP", print }, { {"SERVER_UP"}, 3 }, { {1}, print } }) do
  local ok, e = pcall(core.event_sub, args[1], args[2])
  errs[#errs + 1] = tostring(ok) .. ":" .. tostring(e)
end
local ok, e = pcall(core.backends["app"].servers["s1"].event_sub, {}, {"SERVER_UP"}, print)
errs[#errs + 1] = tostring(ok) .. ":" .. tostring(e)
local sub = core.event_sub({"SERVER"}, function() end)
errs[#errs + 1] = tostring(getmetatable(sub).__name) .. ":" .. type(sub.unsub)
sub:unsub()
core.register_action("errs", {"http-req"}, function(txn) txn:set_var("txn.errs", table.concat(errs, "\n")) end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"errs\" }]");
    let rt = rt();
    let mut t = txn("/");
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    let Some(Sample::Str(out)) = t.get_var(VarScope::Txn, "errs") else {
        panic!("no output");
    };
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("bad argument #1 to 'event_sub' (unknown event type \"NOPE\""),
        "{out}"
    );
    assert!(
        lines[1].contains("bad argument #1 to 'event_sub' (no event type given)"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("false:") && lines[2].contains("bad argument #1 to 'event_sub'"),
        "{out}"
    );
    assert!(
        lines[3].starts_with("false:") && lines[3].contains("bad argument #2 to 'event_sub'"),
        "{out}"
    );
    assert!(lines[4].contains("event types must be strings"), "{out}");
    assert!(
        lines[5].contains("bad argument #1 to 'event_sub' (Server expected"),
        "{out}"
    );
    assert_eq!(lines[6], "EventSub:function", "{out}");
    assert_eq!(plugin(&cfg).registered.event_subs, 1);
}

#[test]
fn fetch_and_converter_results_convert_as_haproxy_does() {
    // hlua_lua2smp: nil (and tables, functions) is the boolean false, which
    // prints as 0; a float without an integer value is 0. Converters get
    // their input as a string (registered with input type str).
    let script = r#"
core.register_fetches("nothing", function(txn) return nil end)
core.register_fetches("tbl", function(txn) return {} end)
core.register_fetches("half", function(txn) return 2.5 end)
core.register_fetches("two", function(txn) return 2.0 end)
core.register_converters("kind", function(v) return type(v) .. ":" .. v end)
"#;
    let (cfg, _d) = ok(
        script,
        "",
        r#"http_request = [
  { set_var = "txn.n", expr = "lua.nothing" },
  { return = 200, body = "%[lua.nothing] %[lua.tbl] %[lua.half] %[lua.two] %[int(7),lua.kind] %[lua.nothing,lua.kind] %[src,lua.kind]", if = "var(txn.n) -m found" },
]"#,
    );
    let rt = rt();
    let r = exchange(&rt, &cfg, &mut txn("/")).expect("return");
    assert_eq!(
        std::str::from_utf8(&r.body).expect("utf8"),
        "0 0 0 2 string:7 string:0 string:10.1.2.3"
    );
}

#[test]
fn debug_getinfo_and_traceback_are_there_and_the_rest_is_not() {
    let script = r#"
local info = debug.getinfo(1, "S")
SOURCE = info.source
WHAT = info.what
local function f() return debug.getinfo(2, "l").currentline end
LINE = f()
FN = debug.getinfo(f, "S").linedefined
NONE = debug.getinfo(50) == nil
TB = debug.traceback("msg")
SETHOOK = debug.sethook == nil and debug.getregistry == nil and debug.setmetatable == nil
BAD = select(2, pcall(debug.getinfo, 1, "x"))
core.register_fetches("dbg", function(txn)
  return table.concat({tostring(SOURCE:sub(1, 1) == "@" and SOURCE:match("[^/]+$")), WHAT,
    tostring(LINE), tostring(FN), tostring(NONE), tostring(TB:match("^msg\nstack traceback:") ~= nil),
    tostring(SETHOOK), BAD}, " ")
end)
"#;
    let (cfg, _d) = ok(
        script,
        "",
        r#"http_request = [ { return = 200, body = "%[lua.dbg]" } ]"#,
    );
    let rt = rt();
    let r = exchange(&rt, &cfg, &mut txn("/")).expect("return");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.starts_with("p.lua main 6 5 true true true "), "{body}");
    assert!(
        body.ends_with("bad argument #2 to 'getinfo' (invalid option)"),
        "{body}"
    );
}
