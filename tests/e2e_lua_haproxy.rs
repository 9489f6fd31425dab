//! Lua compatibility proven against HAProxy itself: the example scripts in
//! `plugins/lua/` run under HAProxy 2.6 (Debian's, Lua 5.3) and under the
//! portcullis binary (Lua 5.4) with equivalent configs in front of the same
//! in-test backend; every request goes to both and the status, headers and
//! body must match, up to the deliberate differences documented in
//! docs/LUA.md (see [`normalize`]).
//!
//! HAProxy must be installed (`bash scripts/setup.sh`): without it this test
//! fails; it never skips.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use http::{Method, Request};

/// The example scripts both proxies load.
const SCRIPTS: &[&str] = &[
    "cors.lua",
    "rewrite.lua",
    "samples.lua",
    "hello_service.lua",
    "deny_page.lua",
    "vars.lua",
    "stick_lookup.lua",
    "maps.lua",
    "runtime_api.lua",
    "body_filter.lua",
];

fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/lua")
}

async fn start_haproxy(web: SocketAddr, app: SocketAddr) -> HaProxy {
    let loads: String = SCRIPTS
        .iter()
        .map(|s| format!("  lua-load {}\n", plugins_dir().join(s).display()))
        .collect();
    let cfg = format!(
        r#"global
  nbthread 1
{loads}
defaults
  mode http
  timeout connect 2s
  timeout client 10s
  timeout server 10s

frontend web
  bind {web}
  http-request track-sc0 src table per_ip
  http-request set-var(txn.rewritten) str(1) if {{ path_beg /rewrite }}
  http-request set-var(txn.stick) str(1) if {{ path_beg /stick }}
  http-request lua.deny_page if {{ path_beg /admin }}
  http-request use-service lua.hello if {{ path_beg /svc }}
  http-request use-service lua.body_echo if {{ path_beg /body }}
  http-request lua.cors "GET,POST" "https://a.example, https://b.example" "X-Custom" if {{ path_beg /cors }}
  http-request lua.rewrite if {{ path_beg /rewrite }}
  http-request lua.builtins if {{ path_beg /samples }}
  http-request set-header x-kind %[lua.client_kind(kind=)] if {{ path_beg /samples }}
  http-request set-header x-masked %[req.hdr(x-token),lua.mask(3)] if {{ path_beg /samples }}
  http-request lua.vars_req if {{ path_beg /vars }}
  http-request lua.maps if {{ path_beg /maps }}
  http-request lua.runtime_map if {{ path_beg /rmap }}
  http-request lua.runtime_info if {{ path_beg /rinfo }}
  http-request lua.runtime_concat if {{ path_beg /rconcat }}
  http-request lua.runtime_uri if {{ path_beg /ruri }}
  http-request use-service lua.runtime_recv if {{ path_beg /rrecv }}
  http-response lua.cors if {{ var(txn.cors_origin) -m found }}
  http-response lua.rewrite if {{ var(txn.rewritten) -m found }}
  http-response lua.vars_res if {{ var(txn.path) -m found }}
  http-response lua.stick_lookup if {{ res.hdr(x-stick) -m found }} || {{ var(txn.stick) -m found }}
  filter lua.body_filter tag-a tag-b
  default_backend app

backend app
  server s1 {app}

backend per_ip
  stick-table type ip size 1k expire 60s store http_req_cnt,gpc0
"#
    );
    // HAProxy resolves relative map paths against its working directory.
    HaProxy::start(&cfg, &plugins_dir(), web).await
}

/// portcullis with the same scripts and the equivalent rules.
async fn start_portcullis(ports: &Ports, app: SocketAddr) -> Daemon {
    let plugins: String = SCRIPTS
        .iter()
        .map(|s| {
            format!(
                "[[plugin]]\nname = \"{}\"\nlua = \"{}\"\non_error = \"fail_closed\"\n\n",
                s.trim_end_matches(".lua"),
                plugins_dir().join(s).display()
            )
        })
        .collect();
    let rules = r#"http_request = [
  { track_sc0 = "src", table = "per_ip" },
  { set_var = "txn.rewritten", expr = "str(1)", if = "path_beg /rewrite" },
  { set_var = "txn.stick", expr = "str(1)", if = "path_beg /stick" },
  { lua = "deny_page", if = "path_beg /admin" },
  { use_service = "lua.hello", if = "path_beg /svc" },
  { use_service = "lua.body_echo", if = "path_beg /body" },
  { lua = "cors", args = ["GET,POST", "https://a.example, https://b.example", "X-Custom"], if = "path_beg /cors" },
  { lua = "rewrite", if = "path_beg /rewrite" },
  { lua = "builtins", if = "path_beg /samples" },
  { set_header = "x-kind", value = "%[lua.client_kind(kind=)]", if = "path_beg /samples" },
  { set_header = "x-masked", value = "%[req.hdr(x-token),lua.mask(3)]", if = "path_beg /samples" },
  { lua = "vars_req", if = "path_beg /vars" },
  { lua = "maps", if = "path_beg /maps" },
  { lua = "runtime_map", if = "path_beg /rmap" },
  { lua = "runtime_info", if = "path_beg /rinfo" },
  { lua = "runtime_concat", if = "path_beg /rconcat" },
  { lua = "runtime_uri", if = "path_beg /ruri" },
  { use_service = "lua.runtime_recv", if = "path_beg /rrecv" },
]
http_response = [
  { lua = "cors", if = "var(txn.cors_origin) -m found" },
  { lua = "rewrite", if = "var(txn.rewritten) -m found" },
  { lua = "vars_res", if = "var(txn.path) -m found" },
  { lua = "stick_lookup", if = "res.hdr(x-stick) -m found or var(txn.stick) -m found" },
]
"#;
    // HAProxy's `filter lua.body_filter tag-a tag-b`.
    let rules =
        format!("{rules}filters = [{{ lua = \"body_filter\", args = [\"tag-a\", \"tag-b\"] }}]\n");
    let cfg = format!(
        "{}[[stick_table]]\nname = \"per_ip\"\ntype = \"ip\"\nsize = 1024\nexpire = \"60s\"\nstore = [\"http_req_cnt\", \"gpc0\"]\n\n{plugins}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", &rules),
        backend_section("app", "roundrobin", &[("s1", app, 1)], ""),
    );
    Daemon::start(&cfg, &[ports.web, ports.admin]).await
}

/// One request sent to both proxies.
struct Case {
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const fn case(
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> Case {
    Case {
        method,
        path,
        headers,
    }
}

fn cases() -> Vec<Case> {
    vec![
        // CORS: a simple request from an allowed origin, one from a refused
        // origin, a preflight, and no Origin at all.
        case(
            Method::GET,
            "/cors/data",
            &[("origin", "https://b.example")],
        ),
        case(
            Method::GET,
            "/cors/data",
            &[("origin", "https://evil.example")],
        ),
        case(
            Method::OPTIONS,
            "/cors/data",
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", "POST"),
            ],
        ),
        case(
            Method::OPTIONS,
            "/cors/data",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        ),
        case(Method::GET, "/cors/data", &[]),
        // Header and URI rewriting in both phases.
        case(
            Method::GET,
            "/rewrite/x?old=1",
            &[
                ("user-agent", "first-agent"),
                ("x-multi", "a"),
                ("x-multi", "b"),
                ("x-remove-me", "1"),
                ("x-version", "v42"),
            ],
        ),
        case(Method::GET, "/rewrite/y", &[("x-version", "beta")]),
        // A fetch in a header value, a converter, and the built-in fetches and converters.
        case(
            Method::GET,
            "/samples/p?q=1&r=two",
            &[
                ("user-agent", "FriendlyBot/1.0"),
                ("x-token", "secret-token"),
                ("x-list", "a, b"),
                ("x-list", "c"),
                ("cookie", "theme=dark; session=abc123"),
            ],
        ),
        case(Method::GET, "/samples/q", &[("user-agent", "Mozilla/5.0")]),
        // An AppletHTTP service: chunked, then with a content-length.
        case(Method::GET, "/svc/hello?x=1", &[("x-name", "ada")]),
        case(Method::GET, "/svc/hello?cl=1", &[]),
        case(Method::POST, "/svc/post?cl=1", &[("x-name", "bob")]),
        // A service reading the request body (getline, receive(n), receive()).
        case(Method::POST, "/body/lines", &[]),
        case(Method::GET, "/body/none", &[]),
        // txn:reply deny page.
        case(Method::GET, "/admin/panel", &[]),
        // Variables across phases and core.msleep.
        case(Method::GET, "/vars/one", &[]),
        case(Method::GET, "/vars/two", &[]),
        // Map lookups: every match method, misses, integer keys, argument errors.
        case(
            Method::GET,
            "/maps/api/v2/users.tar.gz",
            &[
                ("x-host", "api.example.com"),
                ("user-agent", "curl/8.0 (a bot?)"),
                ("x-ip", "10.20.3.4"),
                ("x-code", "404"),
            ],
        ),
        case(
            Method::GET,
            "/maps/img/42.jpg",
            &[
                ("x-host", "static.example.com"),
                ("user-agent", "Mozilla/5.0"),
                ("x-ip", "2001:db8::7"),
                ("x-code", "503"),
            ],
        ),
        case(
            Method::GET,
            "/maps/private/img/x.png",
            &[
                ("x-host", "shop.acme.example.org"),
                ("x-ip", "192.168.7.7"),
                ("x-code", "42"),
            ],
        ),
        case(
            Method::GET,
            "/maps/internal",
            &[
                ("x-host", "www.example.com"),
                ("x-ip", "not-an-ip"),
                ("x-code", "200"),
            ],
        ),
        case(Method::GET, "/maps", &[("x-host", "acmeco.com")]),
        // core.set_map / del_map / add_acl / del_acl change the loaded map
        // in memory; each case sees the changes of the ones before.
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "get"), ("x-k", "alpha.example")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "set"), ("x-k", "gamma.example"), ("x-v", "three")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "set"), ("x-k", "beta.example"), ("x-v", "TWO")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "get"), ("x-k", "gamma.example")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "del"), ("x-k", "beta.example")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "del"), ("x-k", "never.example")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "add"), ("x-k", "delta.example")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "add"), ("x-k", "alpha.example")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "delacl"), ("x-k", "alpha.example")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "unknown"), ("x-k", "a"), ("x-v", "b")],
        ),
        case(
            Method::GET,
            "/rmap",
            &[("x-op", "nargs"), ("x-k", "gamma.example")],
        ),
        // core.get_info(): names and types; core.concat().
        case(Method::GET, "/rinfo", &[]),
        case(Method::GET, "/rconcat/p", &[]),
        // req_set_uri / req_set_path / req_set_query edge cases.
        case(
            Method::GET,
            "/ruri/o?q=1",
            &[("x-f", "req_set_query"), ("x-v", "?a=1")],
        ),
        case(
            Method::GET,
            "/ruri/o?q=1",
            &[("x-f", "req_set_query"), ("x-v", "a=1?b")],
        ),
        case(
            Method::GET,
            "/ruri/o?q=1",
            &[("x-f", "req_set_query"), ("x-v", "EMPTY")],
        ),
        case(
            Method::GET,
            "/ruri/o",
            &[("x-f", "req_set_query"), ("x-v", "EMPTY")],
        ),
        case(
            Method::GET,
            "/ruri/o?q=1",
            &[("x-f", "req_set_path"), ("x-v", "/a?b")],
        ),
        case(
            Method::GET,
            "/ruri/o?q=1",
            &[("x-f", "req_set_path"), ("x-v", "/new/p")],
        ),
        case(
            Method::GET,
            "/ruri/o?q=1",
            &[("x-f", "req_set_uri"), ("x-v", "/p?")],
        ),
        case(
            Method::GET,
            "/ruri/o",
            &[
                ("x-f", "req_set_uri"),
                ("x-v", "http://other.example:8080/a?x=1"),
            ],
        ),
        // AppletHTTP:receive(n) and getline() lengths (the POST body is
        // "first line\nsecond line\nthe rest").
        case(
            Method::POST,
            "/rrecv?line,0,4,str,flt,nil,word,two,-7,3,line,100,all,5",
            &[],
        ),
        case(Method::POST, "/rrecv?line,line,line,line,2", &[]),
        case(Method::POST, "/rrecv?line,100,0,-1", &[]),
        case(Method::POST, "/rrecv?line,11,1,all", &[]),
        case(Method::GET, "/rrecv?line,1,all,-1", &[]),
        // A Lua filter (core.register_filter): headers in http_headers, the
        // request body counted and rewritten, the response body rewritten
        // (same length), filter.ERROR, filter.WAIT.
        case(
            Method::GET,
            "/filter/swap?a=1",
            &[
                ("user-agent", "filter-agent"),
                ("x-drop-me", "1"),
                ("x-version", "v7"),
            ],
        ),
        case(Method::POST, "/filter/swap", &[("x-version", "beta")]),
        case(Method::GET, "/filter/wait", &[]),
        case(Method::GET, "/filter/deny", &[]),
        // A streamed response without a length, in many parts.
        case(Method::GET, "/large/100000?filter=upper", &[]),
        // Stick-table lookup (the table counts every request above).
        case(Method::GET, "/stick/me", &[]),
    ]
}

/// What is compared of one response.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    status: u16,
    /// Response headers, lower-case names, sorted by name (values in order).
    headers: Vec<(String, String)>,
    /// The body, or for a backend echo: method, path and the `x-*` request headers it saw.
    body: String,
}

/// Turns a response into what must match, dropping the documented, deliberate differences:
/// - `date`: portcullis (hyper) sends it on every response, HAProxy not on its own replies;
/// - a backend echo's `content-length`: the echoed request differs by the next item;
/// - `x-forwarded-for` / `x-forwarded-proto`: portcullis adds them to every forwarded request.
fn normalize(r: &Resp) -> Seen {
    let is_echo = r
        .header("content-type")
        .is_some_and(|c| c == "application/json");
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| *k != "date" && !(is_echo && *k == "content-length"))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let body = if is_echo {
        let e = r.echo();
        let seen = e.x_headers();
        let sent = e.0["body"].as_str().unwrap_or("");
        format!(
            "echo {} {}\n{}\nbody: {sent}",
            e.method(),
            e.path(),
            seen.join("\n")
        )
    } else {
        r.text()
    };
    Seen {
        status: r.status.as_u16(),
        headers,
        body,
    }
}

async fn send(addr: SocketAddr, c: &Case) -> Resp {
    let mut b = Request::builder()
        .method(c.method.clone())
        .uri(c.path)
        .header("host", "compat.test");
    for (k, v) in c.headers {
        b = b.header(*k, *v);
    }
    let body = if c.method == Method::POST {
        full("first line\nsecond line\nthe rest")
    } else {
        empty()
    };
    H1::connect(addr)
        .await
        .send(b.body(body).expect("request"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_scripts_behave_as_under_haproxy() {
    haproxy_26();
    let app = Backend::start("s1").await;
    let ha_web = free_addr();
    let ha = start_haproxy(ha_web, app.addr).await;
    let ports = Ports::new();
    let pc = start_portcullis(&ports, app.addr).await;

    let mut failures = Vec::new();
    for c in cases() {
        let h = normalize(&send(ha_web, &c).await);
        let p = normalize(&send(ports.web, &c).await);
        // Shown with --nocapture: what was compared.
        eprintln!("{} {}\n  {h:?}", c.method, c.path);
        if h != p {
            failures.push(format!(
                "{} {} {:?}\n  haproxy:    {h:?}\n  portcullis: {p:?}",
                c.method, c.path, c.headers
            ));
        }
        // A script error would hide behind equal 500s: both must have succeeded.
        assert!(
            h.status < 500,
            "{} {}: HAProxy answered {}; its log:\n{}",
            c.method,
            c.path,
            h.status,
            ha.log()
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} responses differ:\n{}\nportcullis log:\n{}\nhaproxy log:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n"),
        pc.stderr(),
        ha.log()
    );
    // HAProxy really ran the scripts (a rule that never fired would compare equal too).
    let r = send(
        ha_web,
        &case(Method::GET, "/svc/hello?x=1", &[("x-name", "ada")]),
    )
    .await;
    assert_eq!(r.header("x-service").as_deref(), Some("hello"));
}
