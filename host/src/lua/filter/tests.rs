//! In-process tests of Lua filters: HAProxy's callback order, the
//! `HTTPMessage` body window, streaming with held data, and failures.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use http::header::CONTENT_LENGTH;

use super::*;
use crate::config::BindCheck;
use crate::runtime::Runtime as Config;
use crate::txn::{BufferedBody, Sample, VarScope};

/// A directory for one test's files, removed afterwards.
#[derive(Debug)]
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads `script` as plugin "p" (with `extra` plugin keys) and a frontend with `filters`.
fn load(script: &str, extra: &str, filters: &str) -> Result<(Config, Dir), ConfigError> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = Dir(std::env::temp_dir().join(format!(
        "portcullis-lua-filter-{}-{}",
        std::process::id(),
        N.fetch_add(1, Relaxed)
    )));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    std::fs::write(dir.0.join("p.lua"), script).expect("write script");
    let text = format!(
        "[[plugin]]\nname = \"p\"\nlua = \"p.lua\"\n{extra}\n\n[[backend]]\nname = \"app\"\nserver = [{{ name = \"s1\", addr = \"127.0.0.1:9000\" }}]\n\n[[frontend]]\nname = \"web\"\nbind = \"127.0.0.1:18080\"\ndefault_backend = \"app\"\n{filters}\n"
    );
    let path = dir.0.join("t.toml");
    crate::runtime::parse(&path, &text, BindCheck::Skip).map(|c| (c, dir))
}

fn ok(script: &str, extra: &str, filters: &str) -> (Config, Dir) {
    match load(script, extra, filters) {
        Ok(c) => c,
        Err(e) => panic!("config should load: {e}"),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The frontend's one filter.
fn the_filter(cfg: &Config) -> Arc<dyn Filter> {
    let chain = &cfg.frontends[0].chain;
    assert_eq!(chain.request.len(), 1, "{chain:?}");
    Arc::clone(&chain.request[0])
}

/// Runs a head hook to completion, waiting as asked.
fn head(rt: &tokio::runtime::Runtime, f: &Arc<dyn Filter>, t: &mut Txn) -> Option<Reply> {
    crate::lua::tests::hook(rt, f, t)
}

/// The phase's body, read whole before the head hook (as when an earlier
/// filter buffered it).
fn set_body(t: &mut Txn, body: &str) {
    let b = Some(BufferedBody {
        data: body.as_bytes().to_vec(),
        received: body.len(),
        trailers: http::HeaderMap::new(),
    });
    match t.phase {
        Phase::Request => t.req_buffered = b,
        Phase::Response => t.resp_buffered = b,
    }
}

/// Gives the phase's body (see [`set_body`]) to the body hook, as the driver does.
fn whole_body(f: &Arc<dyn Filter>, t: &mut Txn) -> BodyFlow {
    assert!(f.body_limits(t).is_some(), "a data filter takes the body");
    f.on_body(t, true)
}

fn body_of(t: &Txn) -> String {
    let b = match t.phase {
        Phase::Request => &t.req_buffered,
        Phase::Response => &t.resp_buffered,
    };
    String::from_utf8_lossy(&b.as_ref().expect("body").data).into_owned()
}

fn var(t: &Txn, name: &str) -> String {
    match t.get_var(VarScope::Txn, name) {
        Some(Sample::Str(s)) => s,
        other => panic!("txn.{name}: {other:?}"),
    }
}

const FILTERS: &str = "filters = [{ lua = \"f\", args = [\"a1\", 2] }]";

const TRACE: &str = r#"
F = {}
F.id = "trace"
F.flags = filter.FLT_CFG_FL_HTX
F.__index = F
function F:new()
  return setmetatable({ trace = {}, args = self.args }, F)
end
local function note(self, what, m) self.trace[#self.trace + 1] = what .. (m:is_resp() and ":res" or ":req") end
function F:start_analyze(txn, chn)
  note(self, "start", chn)
  filter.register_data_filter(self, chn)
end
function F:end_analyze(txn, chn) note(self, "end_analyze", chn) end
function F:http_headers(txn, msg)
  note(self, "headers", msg)
  local sl = msg:get_stline()
  if msg:is_resp() then
    msg:set_header("x-trace", table.concat(self.trace, ","))
    msg:set_header("x-code", sl.code)
  else
    msg:set_header("x-args", table.concat(self.args, "|"))
    msg:set_header("x-sl", sl.method .. " " .. sl.uri .. " " .. sl.version)
    msg:set_path("/rewritten")
    assert(txn.http_req == msg and txn.req == msg.channel)
  end
  return filter.CONTINUE
end
function F:http_payload(txn, msg)
  note(self, "payload", msg)
  local b = msg:body()
  if b then msg:set(b:upper()) end
  if msg:eom() and msg:is_resp() then
    msg:append("|" .. table.concat(self.trace, ","))
  end
end
function F:http_end(txn, msg)
  note(self, "http_end", msg)
  local ok, e = pcall(msg.set_header, msg, "x-late", "1")
  txn:set_var(msg:is_resp() and "txn.late_res" or "txn.late_req", tostring(ok) .. " " .. tostring(e))
  return filter.CONTINUE
end
core.register_filter("f", F, function(class, args)
  class.args = args
  return class
end)
"#;

#[test]
fn callbacks_run_in_haproxys_order() {
    let (cfg, _d) = ok(TRACE, "", FILTERS);
    let f = the_filter(&cfg);
    assert_eq!(f.name(), "lua.f");
    let rt = rt();
    let mut t = Txn::for_test("/p?q=1", std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
    t.req_headers
        .insert(CONTENT_LENGTH, http::HeaderValue::from_static("5"));
    set_body(&mut t, "hello");
    assert!(head(&rt, &f, &mut t).is_none());
    assert_eq!(t.req_headers["x-args"], "a1|2");
    assert_eq!(t.req_headers["x-sl"], "GET /p?q=1 HTTP/1.1");
    assert_eq!(t.uri.path(), "/rewritten");
    assert!(matches!(whole_body(&f, &mut t), BodyFlow::Continue));
    assert_eq!(body_of(&t), "HELLO");
    // Headers cannot change once the payload went: HAProxy raises an error.
    assert!(
        var(&t, "late_req").starts_with("false ") && var(&t, "late_req").contains("set_header"),
        "{}",
        var(&t, "late_req")
    );
    assert!(
        f.body_limits(&t).is_none(),
        "http_end ran: the body is done"
    );

    t.phase = Phase::Response;
    set_body(&mut t, "abc");
    assert!(head(&rt, &f, &mut t).is_none());
    assert_eq!(
        t.resp_headers["x-trace"],
        "start:req,headers:req,payload:req,http_end:req,start:res,headers:res"
    );
    assert_eq!(t.resp_headers["x-code"], "200");
    assert!(matches!(whole_body(&f, &mut t), BodyFlow::Continue));
    assert_eq!(
        body_of(&t),
        "ABC|start:req,headers:req,payload:req,http_end:req,start:res,headers:res,payload:res"
    );
    f.on_log(&t);
}

#[test]
fn body_window_methods_follow_haproxy_offsets() {
    let script = r#"
F = { flags = filter.FLT_CFG_FL_HTX }
F.__index = F
function F:new() return setmetatable({}, F) end
function F:start_analyze(txn, chn) filter.register_data_filter(self, chn) end
function F:http_payload(txn, msg)
  local r = {}
  r[#r + 1] = msg:body()
  r[#r + 1] = msg:body(6)
  r[#r + 1] = msg:body(-5, 2)
  r[#r + 1] = msg:body(0, -1)
  r[#r + 1] = tostring(msg:input())
  r[#r + 1] = tostring(msg:send("<"))        -- copied in front, forwarded
  r[#r + 1] = tostring(msg:output()) .. "/" .. tostring(msg:input())
  r[#r + 1] = tostring(msg:insert("_", 5))
  r[#r + 1] = tostring(msg:prepend("["))
  r[#r + 1] = tostring(msg:append("]"))
  r[#r + 1] = tostring(msg:remove(1, 5))      -- "hello" goes
  r[#r + 1] = tostring(msg:set("W", 2, 1))    -- "[_ world]": " " -> "W"
  r[#r + 1] = tostring(msg:forward(3))
  r[#r + 1] = msg:body()
  r[#r + 1] = tostring(pcall(msg.body, msg, 99))
  r[#r + 1] = tostring(msg:eom()) .. tostring(msg:may_recv()) .. tostring(msg:is_full())
  txn:set_var("txn.r", table.concat(r, ";"))
end
core.register_filter("f", F, function(c) return c end)
"#;
    let (cfg, _d) = ok(script, "max_body_size = \"64\"", FILTERS);
    let f = the_filter(&cfg);
    let rt = rt();
    let mut t = Txn::for_test("/", std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
    set_body(&mut t, "hello world");
    assert!(head(&rt, &f, &mut t).is_none());
    assert!(matches!(whole_body(&f, &mut t), BodyFlow::Continue));
    assert_eq!(
        var(&t, "r"),
        "hello world;world;wo;hello world;11;1;1/11;1;1;1;5;1;3;world];false;truefalsefalse"
    );
    // "<" sent; "[hello_ world]" after the inserts; "hello" removed; " " set to "W".
    assert_eq!(body_of(&t), "<[_Wworld]");
}

#[test]
fn streamed_parts_keep_what_the_filter_does_not_forward() {
    // Forwards whole lines only: the rest waits for the next part.
    let script = r#"
F = { flags = filter.FLT_CFG_FL_HTX }
F.__index = F
function F:new() return setmetatable({}, F) end
function F:start_analyze(txn, chn) filter.register_data_filter(self, chn) end
function F:http_payload(txn, msg)
  local b = msg:body() or ""
  local last = 0
  for i = 1, #b do if b:sub(i, i) == "\n" then last = i end end
  if msg:eom() then return end
  return last
end
function F:http_end(txn, msg) return filter.CONTINUE end
core.register_filter("f", F, function(c) return c end)
"#;
    let (cfg, _d) = ok(script, "max_body_size = \"16\"", FILTERS);
    // The chain's filter as its own type, to reach its request state.
    let host = cfg
        .plugins
        .iter()
        .find_map(|h| h.as_any().downcast_ref::<LuaHost>())
        .expect("lua host");
    let lf = Arc::new(LuaFilter {
        plugin: Arc::clone(&host.plugins.list[0]),
        registered: "f".into(),
        args: Vec::new(),
        id: NEXT_FILTER.fetch_add(1, Relaxed),
        label: "lua.f".into(),
        what: "filter \"f\"".into(),
    });
    let f: Arc<dyn Filter> = Arc::clone(&lf) as Arc<dyn Filter>;
    let rt = rt();
    let mut t = Txn::for_test("/", std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
    assert!(head(&rt, &f, &mut t).is_none());
    let slot = t.plugin_state.take::<Slot>(lf.id).expect("attached");
    let mut tap = FilterTap {
        plugin: Arc::clone(&slot.inst.plugin),
        what: "filter \"f\"".into(),
        obj: slot.obj.clone(),
        inst: Rc::clone(&slot.inst),
        resp: false,
        data: slot.data,
        held: Vec::new(),
        failed: false,
        ended: false,
    };
    let mut out = Vec::new();
    for (part, eos) in [("ab\ncd", false), ("e\nf", false), ("gh", true)] {
        let d = tap
            .data(bytes::Bytes::from(part), eos)
            .expect("passes the filter");
        out.push(String::from_utf8_lossy(&d).into_owned());
    }
    assert_eq!(out, ["ab\n", "cde\n", "fgh"]);
    // Keeping back more than max_body_size aborts the body; a large part
    // that is forwarded is fine.
    let mut tap = FilterTap {
        held: Vec::new(),
        failed: false,
        ended: false,
        ..tap
    };
    let big = "0123456789\n".repeat(10);
    assert_eq!(
        tap.data(bytes::Bytes::from(big.clone()), false).ok(),
        Some(bytes::Bytes::from(big))
    );
    assert!(tap.data(bytes::Bytes::from("0123456789"), false).is_ok());
    let e = tap
        .data(bytes::Bytes::from("0123456789"), false)
        .expect_err("over the limit");
    assert!(e.to_string().contains("max_body_size"), "{e}");
}

#[test]
fn errors_yields_and_waits_behave_as_in_haproxy() {
    let script = r#"
F = { flags = filter.FLT_CFG_FL_HTX }
F.__index = F
function F:new() return setmetatable({ n = 0 }, F) end
function F:http_headers(txn, msg)
  if msg:is_resp() then return end
  local p = txn.sf:path()
  if p == "/error" then return filter.ERROR end
  if p == "/boom" then error("boom") end
  if p == "/sleep" then core.msleep(1) end
  if p == "/wait" then
    self.n = self.n + 1
    if self.n < 3 then filter.wake_time(1); return filter.WAIT end
    msg:set_header("x-calls", tostring(self.n))
  end
  if p == "/hog" then
    local t = {} for i = 1, 1e7 do t[i] = string.rep("x", 64) .. i end
  end
  if p == "/spin" then while true do end end
  return filter.CONTINUE
end
core.register_filter("f", F, function(c) return c end)
"#;
    let rt = rt();
    for (on_error, path, status) in [
        ("fail_closed", "/error", Some(400)),
        ("fail_open", "/error", Some(400)),
        ("fail_closed", "/boom", Some(500)),
        ("fail_open", "/boom", None),
        ("fail_closed", "/sleep", Some(500)),
        ("fail_open", "/wait", None),
        ("fail_closed", "/hog", Some(500)),
        ("fail_open", "/hog", None),
        ("fail_closed", "/spin", Some(500)),
    ] {
        let (cfg, _d) = ok(
            script,
            &format!("on_error = \"{on_error}\"\nmemory_limit = \"4MiB\"\ncpu_limit = \"20ms\""),
            FILTERS,
        );
        let f = the_filter(&cfg);
        let mut t = Txn::for_test(path, std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
        let r = head(&rt, &f, &mut t);
        assert_eq!(
            r.as_ref().map(|r| r.status.as_u16()),
            status,
            "{on_error} {path}"
        );
        if path == "/error" {
            let r = r.expect("reply");
            assert_eq!(r.headers[http::header::CONNECTION], "close");
        }
        if path == "/wait" {
            assert_eq!(t.req_headers["x-calls"], "3");
        }
        if path == "/hog" || path == "/spin" {
            // The state was dropped; the next request gets a rebuilt one.
            let mut t = Txn::for_test("/", std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
            assert!(head(&rt, &f, &mut t).is_none(), "{on_error} {path} then /");
            let p = &cfg
                .plugins
                .iter()
                .find_map(|h| h.as_any().downcast_ref::<LuaHost>())
                .expect("lua host")
                .plugins
                .list[0];
            assert!(p.stats.rebuilds.load(Relaxed) >= 1, "{on_error} {path}");
        }
    }
}

#[test]
fn new_returning_nil_leaves_the_request_alone() {
    let script = r#"
F = { flags = filter.FLT_CFG_FL_HTX }
function F:new() return nil end
function F:http_headers(txn, msg) msg:set_header("x-seen", "1") end
core.register_filter("f", F, function(c) return c end)
"#;
    let (cfg, _d) = ok(script, "", FILTERS);
    let f = the_filter(&cfg);
    let rt = rt();
    let mut t = Txn::for_test("/", std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
    assert!(head(&rt, &f, &mut t).is_none());
    assert!(t.req_headers.get("x-seen").is_none());
    assert!(f.body_limits(&t).is_none());
    t.phase = Phase::Response;
    assert!(head(&rt, &f, &mut t).is_none());
    f.on_log(&t);
}

#[test]
fn a_class_without_the_htx_flag_is_not_attached() {
    // HAProxy 2.6 silently leaves such a filter out of HTTP streams.
    let script = r#"
F = {}
function F:new() return {} end
function F:http_headers(txn, msg) msg:set_header("x-seen", "1") end
core.register_filter("f", F, function(c) return c end)
"#;
    let (cfg, _d) = ok(script, "", FILTERS);
    let f = the_filter(&cfg);
    let rt = rt();
    let mut t = Txn::for_test("/", std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
    assert!(head(&rt, &f, &mut t).is_none());
    assert!(t.req_headers.get("x-seen").is_none());
}

#[test]
fn filter_objects_exist_only_in_filters() {
    let script = r#"
core.register_action("a", { "http-req" }, function(txn)
  txn:set_var("txn.r", tostring(txn.http_req) .. " " .. tostring(txn.req:is_resp()))
end)
F = { flags = filter.FLT_CFG_FL_HTX }
core.register_filter("f", F, function(c) return c end)
"#;
    let (cfg, _d) = ok(script, "", "http_request = [{ lua = \"a\" }]");
    let rt = rt();
    let mut t = Txn::for_test("/", std::net::SocketAddr::from(([10, 0, 0, 1], 1)));
    let f = Arc::clone(&cfg.frontends[0].chain.request[0]);
    assert!(head(&rt, &f, &mut t).is_none());
    assert_eq!(var(&t, "r"), "nil false");
}

#[test]
fn unknown_filters_are_config_errors_naming_the_line() {
    let script = "F = {}\ncore.register_filter(\"known\", F, function(c) return c end)\n";
    let e = load(script, "", "filters = [{ lua = \"unknwn\" }]").expect_err("unknown filter");
    let text = e.to_string();
    assert!(text.contains("t.toml:"), "{text}");
    assert!(text.contains("no Lua filter \"unknwn\""), "{text}");
    assert!(text.contains("known"), "{text}");
    let e = load(script, "", "filters = [{ args = [\"x\"] }]").expect_err("no name");
    assert!(e.to_string().contains("lua = "), "{e}");
    let e = load("core.register_filter(\"f\", {}, 1)\n", "", "").expect_err("bad registration");
    assert!(e.to_string().contains("register_filter"), "{e}");
}
