//! In-process tests of the smaller HAProxy APIs: `core.queue`,
//! `core.get_info`, `core.set_map`/`del_map`/`add_acl`/`del_acl`,
//! `core.concat`, the `req_set_*` edge cases, the checks of the no-op
//! `txn:set_*` methods and `txn:get_priv` seen from a fetch.

use std::sync::Arc;

use super::tests::{exchange, lua_plugins, ok, ok_with, rt, txn};
use crate::txn::Phase;

/// Runs the request rules of the first frontend on `uri` and returns the
/// request headers the rules left.
fn run(rt: &tokio::runtime::Runtime, cfg: &crate::runtime::Runtime, uri: &str) -> http::HeaderMap {
    let mut t = txn(uri);
    let r = exchange(rt, cfg, &mut t);
    assert!(r.is_none(), "no reply expected: {r:?}");
    t.req_headers
}

fn hdr(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "<none>".into())
}

#[test]
fn queue_push_pop_size_and_argument_errors() {
    let script = r#"
local q = core.queue()
core.register_action("q", {"http-req"}, function(txn)
  local out = {}
  out[#out + 1] = tostring(q:size())
  out[#out + 1] = tostring(q:push("a"))
  out[#out + 1] = tostring(q:push(2))
  out[#out + 1] = tostring(q:push({ k = "t" }))
  out[#out + 1] = tostring(q:push(false))
  out[#out + 1] = tostring(q:size())
  out[#out + 1] = tostring(q:pop())
  out[#out + 1] = tostring(q:pop())
  out[#out + 1] = q:pop().k
  out[#out + 1] = tostring(q:pop())
  out[#out + 1] = tostring(q:pop())
  out[#out + 1] = tostring(q:size())
  for _, bad in ipairs({ function() q:push(nil) end, function() q:push() end,
                         function() q:push(1, 2) end, function() q.push({}, 1) end }) do
    local ok, e = pcall(bad)
    out[#out + 1] = tostring(ok) .. ":" .. tostring(e):gsub("^.-:%d+: ", "")
  end
  txn.http:req_set_header("x-q", table.concat(out, ","))
end)
core.register_fetches("qf", function(txn)
  local ok, e = pcall(q.pop_wait, q)
  return tostring(e):gsub("^.-:%d+: ", "")
end)
"#;
    let (cfg, _d) = ok(
        script,
        "",
        "http_request = [{ lua = \"q\" }, { set_header = \"x-f\", value = \"%[lua.qf]\" }]",
    );
    let rt = rt();
    let h = run(&rt, &cfg, "/");
    assert_eq!(
        hdr(&h, "x-q"),
        "0,true,true,true,true,4,a,2,t,false,nil,0,false:unexpected argument,false:unexpected argument,false:unexpected argument,false:bad argument #1 to 'push' (Queue expected, got table)"
    );
    assert_eq!(
        hdr(&h, "x-f"),
        "pop_wait() may only be used within task context (requires yielding)"
    );
}

#[test]
fn queue_pop_wait_wakes_when_another_coroutine_pushes() {
    // A task waits on the queue; each request pushes an item and the task
    // moves what it popped into a proc variable the next request reads.
    let script = r#"
local q = core.queue()
core.register_task(function()
  while true do
    local v = q:pop_wait()
    core.set_var("proc.queue_test_got", (core.get_var("proc.queue_test_got") or "") .. v)
  end
end)
core.register_action("push", {"http-req"}, function(txn)
  txn.http:req_set_header("x-pushed", tostring(q:push(txn.sf:path())))
  core.msleep(20)
  txn.http:req_set_header("x-got", core.get_var("proc.queue_test_got") or "")
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"push\" }]");
    let rt = rt();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        for host in &cfg.plugins {
            host.start_worker(0);
        }
        // Let the task start and block in pop_wait.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    });
    let chain = &cfg.frontends[0].chain;
    for (path, want) in [("/a", "/a"), ("/b", "/a/b")] {
        let mut t = txn(path);
        t.phase = Phase::Request;
        local.block_on(&rt, async {
            let mut flow = chain.request[0].on_request(&mut t);
            loop {
                match flow {
                    crate::filter::Flow::Wait(f) => {
                        f.await;
                        flow = chain.request[0].resume(&mut t);
                    }
                    other => {
                        assert!(matches!(other, crate::filter::Flow::Continue));
                        break;
                    }
                }
            }
        });
        assert_eq!(hdr(&t.req_headers, "x-pushed"), "true");
        assert_eq!(hdr(&t.req_headers, "x-got"), want);
    }
    crate::txn::PROC_VARS.unset("queue_test_got");
    let ids: Vec<u64> = lua_plugins(&cfg).iter().map(|p| p.id).collect();
    super::runtime::clear_worker(&ids);
}

#[test]
fn queue_pop_wait_in_an_action_gives_up_after_the_client_timeout() {
    let script = r#"
local q = core.queue()
core.register_action("w", {"http-req"}, function(txn)
  txn.http:req_set_header("x-w", tostring(q:pop_wait()))
end)
"#;
    let (cfg, _d) = ok(
        script,
        "[global.timeout]\nclient = \"150ms\"",
        "http_request = [{ lua = \"w\" }]",
    );
    let rt = rt();
    let start = std::time::Instant::now();
    let h = run(&rt, &cfg, "/");
    assert_eq!(hdr(&h, "x-w"), "nil");
    let took = start.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(140) && took < std::time::Duration::from_secs(2),
        "{took:?}"
    );
}

#[test]
fn get_info_has_haproxys_names_and_types() {
    let script = r#"
core.register_action("i", {"http-req"}, function(txn)
  local t = core.get_info()
  local out = {}
  for _, k in ipairs({ "Name", "Version", "Uptime", "Tainted", "Pid", "Nbthread", "Uptime_sec",
                       "CurrConns", "CumConns", "CumReq", "Maxconn", "Listeners", "CurrSslConns",
                       "Start_time_sec", "Idle_pct" }) do
    local v = t[k]
    out[#out + 1] = k .. "=" .. (math.type(v) or type(v))
  end
  txn.http:req_set_header("x-i", table.concat(out, ","))
  txn.http:req_set_header("x-pid", tostring(t.Pid))
  txn.http:req_set_header("x-name", t.Name)
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"i\" }]");
    let rt = rt();
    let h = run(&rt, &cfg, "/");
    assert_eq!(
        hdr(&h, "x-i"),
        "Name=string,Version=string,Uptime=string,Tainted=string,Pid=integer,Nbthread=integer,Uptime_sec=integer,CurrConns=integer,CumConns=integer,CumReq=integer,Maxconn=integer,Listeners=integer,CurrSslConns=integer,Start_time_sec=integer,Idle_pct=nil"
    );
    assert_eq!(hdr(&h, "x-pid"), std::process::id().to_string());
    assert_eq!(hdr(&h, "x-name"), "portcullis");
}

#[derive(Debug)]
struct FakeDaemon;

impl crate::plugin::ProcessSource for FakeDaemon {
    fn process_info(&self) -> crate::plugin::ProcessInfo {
        crate::plugin::ProcessInfo {
            uptime: std::time::Duration::from_secs(90061),
            workers: 3,
            curr_conns: 5,
            cum_conns: 7,
            cum_req: 11,
            maxconn: 100,
            listeners: 6,
        }
    }
}

#[test]
fn get_info_reads_the_daemons_figures_once_attached() {
    let script = r#"
core.register_action("i", {"http-req"}, function(txn)
  local t = core.get_info()
  txn.http:req_set_header("x-i", string.format("%s %d %d %d %d %d %d %d", t.Uptime, t.Uptime_sec,
    t.Nbthread, t.CurrConns, t.CumConns, t.CumReq, t.Maxconn, t.Listeners))
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"i\" }]");
    let daemon: Arc<dyn crate::plugin::ProcessSource> = Arc::new(FakeDaemon);
    for host in &cfg.plugins {
        host.attach_process(Arc::downgrade(&daemon));
    }
    let rt = rt();
    let h = run(&rt, &cfg, "/");
    assert_eq!(hdr(&h, "x-i"), "1d 1h01m01s 90061 3 5 7 11 100 6");
    // The daemon gone (a runtime outliving it): figures from the process alone.
    drop(daemon);
    let h = run(&rt, &cfg, "/");
    assert!(
        hdr(&h, "x-i").contains(" 1 0 0 0 0 0"),
        "{}",
        hdr(&h, "x-i")
    );
}

const MAP_SCRIPT: &str = r#"
local m = Map.new("hosts.map", Map._str)
local b = Map.new("hosts.map", Map._beg)
core.register_action("edit", {"http-req"}, function(txn)
  local op, k, v = txn.sf:req_hdr("x-op"), txn.sf:req_hdr("x-k"), txn.sf:req_hdr("x-v")
  local ok, e
  if op == "set" then ok, e = pcall(core.set_map, "hosts.map", k, v)
  elseif op == "del" then ok, e = pcall(core.del_map, "hosts.map", k)
  elseif op == "add" then ok, e = pcall(core.add_acl, "hosts.map", k)
  elseif op == "delacl" then ok, e = pcall(core.del_acl, "hosts.map", k)
  end
  txn.http:req_set_header("x-edit", tostring(ok) .. (ok and "" or (":" .. tostring(e):gsub("^.-:%d+: ", ""))))
  txn.http:req_set_header("x-str", tostring(m:lookup(k)))
  txn.http:req_set_header("x-beg", tostring(b:lookup(k .. "/x")))
end)
core.register_action("errs", {"http-req"}, function(txn)
  local out = {}
  for _, f in ipairs({
    function() core.set_map("other.map", "k", "v") end,
    function() core.del_map("other.map", "k") end,
    function() core.add_acl("other.map", "k") end,
    function() core.del_acl("other.map", "k") end,
    function() core.set_map("hosts.map", "k") end,
    function() core.del_map("hosts.map") end,
    function() core.set_map("hosts.map", {}, "v") end,
  }) do
    local ok, e = pcall(f)
    out[#out + 1] = tostring(e):gsub("^.-:%d+: ", "")
  end
  txn.http:req_set_header("x-errs", table.concat(out, "|"))
end)
"#;

#[test]
fn set_map_del_map_add_acl_change_the_loaded_file_in_memory() {
    let (cfg, d) = ok_with(
        &[("hosts.map", "a.example one\nb.example two\nb.example dup\n")],
        MAP_SCRIPT,
        "",
        "http_request = [{ lua = \"edit\" }, { lua = \"errs\" }]",
    );
    let rt = rt();
    let go = |op: &str, k: &str, v: &str| {
        let mut t = txn("/");
        for (n, x) in [("x-op", op), ("x-k", k), ("x-v", v)] {
            t.req_headers.insert(n, x.parse().expect("hv"));
        }
        assert!(exchange(&rt, &cfg, &mut t).is_none());
        (
            hdr(&t.req_headers, "x-edit"),
            hdr(&t.req_headers, "x-str"),
            hdr(&t.req_headers, "x-beg"),
            hdr(&t.req_headers, "x-errs"),
        )
    };
    // A new key is appended; an existing one (every duplicate) gets the value.
    let r = go("set", "c.example", "three");
    assert_eq!(
        (r.0.as_str(), r.1.as_str(), r.2.as_str()),
        ("true", "three", "three")
    );
    let r = go("set", "b.example", "TWO");
    assert_eq!((r.1.as_str(), r.2.as_str()), ("TWO", "TWO"));
    // del_map removes every entry of the key.
    let r = go("del", "b.example", "");
    assert_eq!(
        (r.0.as_str(), r.1.as_str(), r.2.as_str()),
        ("true", "nil", "nil")
    );
    // add_acl adds a key without a value: a map lookup then finds nothing.
    let r = go("add", "d.example", "");
    assert_eq!((r.1.as_str(), r.2.as_str()), ("nil", "nil"));
    // ... and does not touch a key that is there.
    let r = go("add", "a.example", "");
    assert_eq!(r.1, "one");
    let r = go("delacl", "a.example", "");
    assert_eq!(r.1, "nil");
    // The file on disk is unchanged.
    assert_eq!(
        std::fs::read_to_string(d.0.join("hosts.map")).expect("map"),
        "a.example one\nb.example two\nb.example dup\n"
    );
    assert_eq!(
        r.3,
        "'set_map': unknown map file 'other.map'|'del_map': unknown acl file 'other.map'|'add_acl': unknown acl file 'other.map'|'del_acl': unknown acl file 'other.map'|'set_map' needs 3 arguments|'del_map' needs 2 arguments|bad argument #2 to 'set_map' (string expected, got table)"
    );
    // Every plugin state (and every other plugin) shares the change: a
    // rebuilt state's Map.new reads the changed entries, not the file.
    super::runtime::discard(&super::runtime::instance(&lua_plugins(&cfg)[0]).expect("instance"));
    let r = go("set", "e.example", "five");
    assert_eq!(r.1, "five");
    let r = go("set", "c.example", "three!");
    assert_eq!(r.1, "three!");
}

#[test]
fn set_map_drops_a_key_a_method_cannot_read() {
    let script = r#"
local m = Map.new("nets.map", Map._ip)
core.register_action("a", {"http-req"}, function(txn)
  core.set_map("nets.map", "not-an-ip", "x")
  core.set_map("nets.map", "10.2.0.0/16", "ten-two")
  txn.http:req_set_header("x-a", tostring(m:lookup("10.2.3.4")) .. " " .. tostring(m:lookup("10.9.9.9")))
end)
"#;
    let (cfg, _d) = ok_with(
        &[("nets.map", "10.0.0.0/8 ten\n")],
        script,
        "",
        "http_request = [{ lua = \"a\" }]",
    );
    let rt = rt();
    let h = run(&rt, &cfg, "/");
    assert_eq!(hdr(&h, "x-a"), "ten-two ten");
}

#[test]
fn concat_api_as_haproxy() {
    let script = r#"
core.register_action("c", {"http-req"}, function(txn)
  local c = core.concat()
  c:add("a")
  c:add(1)
  c:add(2.5)
  local d1 = c:dump()
  c:add("b")
  local out = { d1, c:dump(), c:dump(), tostring(c):match("^Concat object: ") and "ts" or tostring(c) }
  for _, f in ipairs({ function() c:add() end, function() c:add({}) end, function() c.add("x", "y") end }) do
    local ok, e = pcall(f)
    out[#out + 1] = tostring(e):gsub("^.-:%d+: ", "")
  end
  out[#out + 1] = core.concat():dump() == "" and "empty" or "?"
  txn.http:req_set_header("x-c", table.concat(out, "|"))
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"c\" }]");
    let rt = rt();
    let h = run(&rt, &cfg, "/");
    assert_eq!(
        hdr(&h, "x-c"),
        "a12.5|a12.5b|a12.5b|ts|bad argument #1 to 'add' (string expected, got no value)|bad argument #1 to 'add' (string expected, got table)|bad argument #1 to 'add' (Concat expected, got string)|empty"
    );
}

#[test]
fn req_set_uri_path_query_edge_cases() {
    let script = r#"
core.register_action("u", {"http-req"}, function(txn)
  local f, v = txn.sf:req_hdr("x-f"), txn.sf:req_hdr("x-v")
  if v == "EMPTY" then v = "" end
  local r = txn.http[f](txn.http, v)
  txn.http:req_set_header("x-r", tostring(r) .. " " .. txn.sf:url() .. " " .. tostring(txn.f:query()))
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"u\" }]");
    let rt = rt();
    let go = |uri: &str, f: &str, v: &str| {
        let mut t = txn(uri);
        t.req_headers.insert("x-f", f.parse().expect("hv"));
        t.req_headers.insert("x-v", v.parse().expect("hv"));
        t.req_headers
            .insert("host", "orig.example".parse().expect("hv"));
        assert!(exchange(&rt, &cfg, &mut t).is_none());
        (hdr(&t.req_headers, "x-r"), hdr(&t.req_headers, "host"))
    };
    // HAProxy 2.6's results (tests/e2e_lua_haproxy.rs checks them side by side).
    assert_eq!(go("/o?q=1", "req_set_query", "?a=1").0, "true /o??a=1 ?a=1");
    assert_eq!(
        go("/o?q=1", "req_set_query", "a=1?b").0,
        "true /o?a=1?b a=1?b"
    );
    assert_eq!(go("/o?q=1", "req_set_query", "EMPTY").0, "true /o? ");
    assert_eq!(go("/o", "req_set_query", "EMPTY").0, "true /o nil");
    assert_eq!(
        go("/o?q=1", "req_set_path", "/a?b").0,
        "true /a?b?q=1 b?q=1"
    );
    assert_eq!(go("/o?q=1", "req_set_uri", "/p?").0, "true /p? ");
    let (r, host) = go("/o", "req_set_uri", "http://other.example:8080/a?x=1");
    assert_eq!(r, "true http://other.example:8080/a?x=1 x=1");
    assert_eq!(host, "other.example:8080");
    // What a request line cannot carry is refused (HAProxy writes it as is).
    assert_eq!(go("/o?q=1", "req_set_path", "EMPTY").0, "false /o?q=1 q=1");
    assert_eq!(go("/o?q=1", "req_set_query", "a b").0, "false /o?q=1 q=1");
    assert_eq!(go("/o?q=1", "req_set_uri", "/a#f").0, "false /o?q=1 q=1");
    let (r, host) = go("/o", "req_set_uri", "http://u@evil.example/");
    assert_eq!(
        (r.as_str(), host.as_str()),
        ("false /o nil", "orig.example")
    );
}

#[test]
fn no_op_setters_check_their_arguments_like_haproxy() {
    let script = r#"
core.register_action("s", {"http-req"}, function(txn)
  local out = {}
  for _, f in ipairs({
    function() txn:set_loglevel(3) end,
    function() txn:set_loglevel("7") end,
    function() txn:set_loglevel(8) end,
    function() txn:set_loglevel(-1) end,
    function() txn:set_loglevel() end,
    function() txn:set_tos(1.5) end,
    function() txn:set_mark("x") end,
    function() txn:set_mark(1, 2) end,
    function() txn:set_priority_class(4) end,
  }) do
    local ok, e = pcall(f)
    out[#out + 1] = ok and "ok" or tostring(e):gsub("^.-:%d+: ", "")
  end
  txn.http:req_set_header("x-s", table.concat(out, "|"))
end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"s\" }]");
    let rt = rt();
    let h = run(&rt, &cfg, "/");
    assert_eq!(
        hdr(&h, "x-s"),
        "ok|ok|bad argument #1 to 'set_loglevel' (Bad log level. It must be between 0 and 7)|bad argument #1 to 'set_loglevel' (Bad log level. It must be between 0 and 7)|'set_loglevel' needs 2 arguments|bad argument #1 to 'set_tos' (number has no integer representation)|bad argument #1 to 'set_mark' (number expected, got string)|'set_mark' needs 2 arguments|ok"
    );
}

#[test]
fn get_priv_from_an_action_is_seen_by_a_fetch_and_the_response_phase() {
    let script = r#"
core.register_action("set", {"http-req"}, function(txn) txn:set_priv({ n = 41 }) end)
core.register_fetches("p", function(txn)
  local p = txn:get_priv()
  return p and tostring(p.n + 1) or "none"
end)
core.register_action("res", {"http-res"}, function(txn)
  local p = txn:get_priv()
  txn.http:res_set_header("x-res", p and tostring(p.n) or "none")
end)
"#;
    let (cfg, _d) = ok(
        script,
        "",
        "http_request = [{ set_header = \"x-before\", value = \"%[lua.p]\" }, { lua = \"set\" }, { set_header = \"x-after\", value = \"%[lua.p]\" }]\nhttp_response = [{ lua = \"res\" }]",
    );
    let rt = rt();
    let mut t = txn("/");
    assert!(exchange(&rt, &cfg, &mut t).is_none());
    assert_eq!(hdr(&t.req_headers, "x-before"), "none");
    assert_eq!(hdr(&t.req_headers, "x-after"), "42");
    assert_eq!(hdr(&t.resp_headers, "x-res"), "41");
}

#[test]
fn queue_push_past_the_cap_returns_false() {
    let script = r#"
local q = core.queue()
core.register_action("fill", {"http-req"}, function(txn)
  local n = 0
  while q:push(n) do n = n + 1 end
  local first = q:pop()
  local again = q:push("x")
  txn.http:req_set_header("x-fill", string.format("%d %d %s %s %d", n, q:size(), tostring(first),
    tostring(again), q:size()))
end)
"#;
    let (cfg, _d) = ok(
        script,
        "memory_limit = \"512MiB\"\ncpu_limit = \"60s\"",
        "http_request = [{ lua = \"fill\" }]",
    );
    let rt = rt();
    let h = run(&rt, &cfg, "/");
    let max = super::api::QUEUE_MAX_ITEMS;
    assert_eq!(hdr(&h, "x-fill"), format!("{max} {max} 0 true {max}"));
}
