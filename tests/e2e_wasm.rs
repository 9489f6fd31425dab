//! Wasm plugins through the binary: a well-behaved Proxy-Wasm filter in both
//! phases, hostile guests written in WAT (CPU loop, memory.grow bomb, deep
//! recursion, unreachable, garbage pointers and lengths to host calls, calls
//! from the wrong context, unknown return codes, a pause never resumed), each
//! failing only its own requests while a good plugin alongside is unaffected;
//! load-time errors; and the example plugins built from source for wasm32.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use serde_json::Value;

/// A module skeleton: memory, a bump allocator, start-up exports returning
/// `start` (1 = accept), and the given extra imports / functions. The whole
/// modules in tests/fixtures/wasm that say so carry a copy of it.
fn module(imports: &str, start: u32, body: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  {imports}
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "x-good")
  (data (i32.const 32) "yes")
  (data (i32.const 48) "x-good-resp")
  (data (i32.const 64) "host")
  (data (i32.const 80) "x-abuse")
  (data (i32.const 96) "ok")
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    local.get $p)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const {start})
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  {body}
)"#
    )
}

/// A hostile module whose `proxy_on_request_headers` runs `hook` (it must leave an i32).
fn hostile(extra: &str, hook: &str) -> String {
    module(
        "",
        1,
        &format!(
            "{extra}\n  (func (export \"proxy_on_request_headers\") (param $ctx i32) (param i32 i32) (result i32)\n    {hook})"
        ),
    )
}

// The guests below are whole modules in tests/fixtures/wasm (each file says
// what it does); the templates above stay for the one-line hostile hooks and
// load-error variants.
const GOOD: &str = include_str!("fixtures/wasm/good.wat");
const ABUSE: &str = include_str!("fixtures/wasm/abuse.wat");
const FLAKY: &str = include_str!("fixtures/wasm/flaky.wat");
const TICKER: &str = include_str!("fixtures/wasm/ticker.wat");
const FOREIGN_COUNTER: &str = include_str!("fixtures/wasm/foreign_counter.wat");
const BODY_CHECK: &str = include_str!("fixtures/wasm/body_check.wat");
const BODY_REWRITE: &str = include_str!("fixtures/wasm/body_rewrite.wat");
const TRAILER_ECHO: &str = include_str!("fixtures/wasm/trailer_echo.wat");
const PASS_THROUGH: &str = include_str!("fixtures/wasm/pass_through.wat");
const CONFIGURE_TICKER: &str = include_str!("fixtures/wasm/configure_ticker.wat");
const ROOT_CALLER: &str = include_str!("fixtures/wasm/root_caller.wat");
const PER_CHUNK: &str = include_str!("fixtures/wasm/per_chunk.wat");

struct Plugin {
    name: &'static str,
    wat: String,
    extra: &'static str,
    path: &'static str,
}

fn hostile_plugins() -> Vec<Plugin> {
    let closed = "on_error = \"fail_closed\"\ncpu_limit = \"20ms\"";
    vec![
        Plugin {
            name: "spin",
            wat: hostile("", "(loop $l (br $l)) i32.const 0"),
            extra: closed,
            path: "/spin",
        },
        Plugin {
            // Grows until memory.grow says -1 (the limit), then gives up
            // like an allocator that aborts: a memory-limit failure.
            name: "bomb",
            wat: hostile(
                "",
                "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 4)) (i32.const -1)))) unreachable",
            ),
            extra: "on_error = \"fail_closed\"\nmemory_limit = \"1MiB\"",
            path: "/bomb",
        },
        Plugin {
            name: "recurse",
            wat: hostile(
                "(func $r (param i32) (result i32) (i32.add (call $r (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))",
                "(call $r (i32.const 0))",
            ),
            extra: closed,
            path: "/recurse",
        },
        Plugin {
            name: "crash",
            wat: hostile("", "unreachable"),
            extra: closed,
            path: "/crash",
        },
        Plugin {
            name: "oob",
            wat: hostile("", "(i32.load (i32.const -4))"),
            extra: closed,
            path: "/oob",
        },
        Plugin {
            name: "badret",
            wat: hostile("", "i32.const 7"),
            extra: closed,
            path: "/badret",
        },
        Plugin {
            name: "stall",
            wat: hostile("", "i32.const 1"),
            extra: closed,
            path: "/stall",
        },
        Plugin {
            name: "crash_open",
            wat: hostile("", "unreachable"),
            extra: "on_error = \"fail_open\"",
            path: "/open",
        },
        Plugin {
            // Pauses forever, unless the request has `x-crash`: then it traps.
            name: "flaky",
            wat: FLAKY.to_string(),
            extra: "on_error = \"fail_closed\"",
            path: "/flaky",
        },
        Plugin {
            name: "ticker",
            wat: TICKER.to_string(),
            extra: "",
            path: "/tick",
        },
        Plugin {
            name: "abuse",
            wat: ABUSE.to_string(),
            extra: closed,
            path: "/abuse",
        },
    ]
}

struct Wasm {
    _d: Daemon,
    ports: Ports,
    app: Backend,
    _dir: TempDir,
}

async fn wasm_proxy() -> Wasm {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm");
    let ports = Ports::new();
    let mut plugins = String::new();
    let g = dir.write("good.wat", GOOD);
    plugins.push_str(&format!(
        "[[plugin]]\nname = \"good\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n\n",
        g.display()
    ));
    let mut rules = String::from("http_request = [\n  { wasm = \"good\" },\n");
    for p in hostile_plugins() {
        let f = dir.write(&format!("{}.wat", p.name), &p.wat);
        plugins.push_str(&format!(
            "[[plugin]]\nname = \"{}\"\nwasm = \"{}\"\n{}\n\n",
            p.name,
            f.display(),
            p.extra
        ));
        rules.push_str(&format!(
            "  {{ wasm = \"{}\", if = \"path_beg {}\" }},\n",
            p.name, p.path
        ));
    }
    rules.push_str("]\n");
    let cfg = format!(
        "{}{plugins}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", &rules),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    Wasm {
        _d: d,
        ports,
        app,
        _dir: dir,
    }
}

async fn plugins(admin: SocketAddr) -> Vec<Value> {
    let r = get(admin, "/plugins").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["plugins"].as_array().cloned().unwrap_or_default()
}

fn stats_of<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("plugin {name} not in /plugins: {all:?}"))
}

/// The good plugin saw both phases of a normal request.
async fn assert_good(web: SocketAddr) {
    let r = get(web, "/ok").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().header("x-good").as_deref(), Some("yes"));
    assert_eq!(r.header("x-good-resp").as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_guests_fail_only_their_own_requests() {
    let t = wasm_proxy().await;
    assert_good(t.ports.web).await;

    for path in ["/spin", "/bomb", "/recurse", "/crash", "/oob", "/badret"] {
        for round in 0..3 {
            let r = within(
                "hostile request",
                Duration::from_secs(5),
                get(t.ports.web, path),
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{path} round {round}: {}",
                r.text()
            );
            // The one error model: HAProxy's 500 page, as a failed Lua action gives.
            assert_eq!(
                r.text(),
                "<html><body><h1>500 Internal Server Error</h1>\nAn internal server error occurred.\n</body></html>\n"
            );
            assert_good(t.ports.web).await;
            // Let the back-off pass so later rounds run a rebuilt instance.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    }
    // fail_open: the request goes on as if the plugin were not there.
    let r = get(t.ports.web, "/open").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().header("x-good").as_deref(), Some("yes"));

    // Garbage pointers and wrong-context calls get error statuses, not traps.
    let r = get(t.ports.web, "/abuse").await;
    assert_eq!(r.status, StatusCode::OK, "check #{} failed", r.text());
    assert_eq!(r.echo().header("x-abuse").as_deref(), Some("ok"));

    // A request paused in an instance that another request crashes is
    // answered at once, not at the pause timeout.
    let start = Instant::now();
    let paused = tokio::spawn({
        let web = t.ports.web;
        async move { get(web, "/flaky").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!paused.is_finished());
    let mut c = H1::connect(t.ports.web).await;
    let r = c
        .send(
            request(http::Method::GET, t.ports.web, "/flaky")
                .header("x-crash", "1")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = within("woken request", Duration::from_secs(1), paused)
        .await
        .expect("join");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );

    // proxy_on_tick runs on the worker's housekeeping (every 100 ms) while idle.
    assert_eq!(get(t.ports.web, "/tick").await.status, StatusCode::OK);
    let admin = t.ports.admin;
    eventually("ticks while idle", Duration::from_secs(3), || async move {
        let m = get(admin, "/metrics").await.text();
        m.lines()
            .find_map(|l| l.strip_prefix("portcullis_wasm_ticks{plugin=\"ticker\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 3)
    })
    .await;

    // A pause never resumed ends at the pause timeout (timeout.server, 2s)
    // while the worker keeps serving other requests.
    let start = Instant::now();
    let stalled = tokio::spawn({
        let web = t.ports.web;
        async move { get(web, "/stall").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_good(t.ports.web).await;
    assert!(!stalled.is_finished());
    let r = within("stalled request", Duration::from_secs(6), stalled)
        .await
        .expect("join");
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    assert_good(t.ports.web).await;

    let all = plugins(t.ports.admin).await;
    let fails =
        |name: &str, kind: &str| stats_of(&all, name)["failures"][kind].as_u64().unwrap_or(0);
    assert!(fails("spin", "cpu_limit") >= 2, "{all:?}");
    assert!(fails("bomb", "memory_limit") >= 2, "{all:?}");
    assert!(fails("recurse", "stack_overflow") >= 2, "{all:?}");
    assert!(fails("crash", "unreachable") >= 2, "{all:?}");
    assert!(fails("oob", "trap") >= 2, "{all:?}");
    assert!(fails("badret", "bad_return") >= 3, "{all:?}");
    assert_eq!(fails("stall", "pause_timeout"), 1, "{all:?}");
    for name in ["spin", "bomb", "recurse", "crash", "oob"] {
        let s = stats_of(&all, name);
        assert!(s["rebuilds"].as_u64().unwrap_or(0) >= 1, "{name}: {s}");
        assert_eq!(s["failed_requests"], 3, "{name}: {s}");
    }
    // A bad return code or a stalled pause fails the request, not the instance.
    assert_eq!(stats_of(&all, "badret")["rebuilds"], 0);
    let abuse = stats_of(&all, "abuse");
    assert!(
        abuse["bad_host_calls"].as_u64().unwrap_or(0) >= 10,
        "{abuse}"
    );
    assert_eq!(abuse["failed_requests"], 0, "{abuse}");
    let g = stats_of(&all, "good");
    assert_eq!(g["kind"], "wasm");
    assert_eq!(g["rebuilds"], 0, "{g}");
    assert_eq!(g["failed_requests"], 0, "{g}");
    assert_eq!(g["instances"], 1, "{g}");
    assert!(g["calls"].as_u64().unwrap_or(0) > 20, "{g}");
    assert!(g["memory_in_use"].as_u64().unwrap_or(0) >= 128 << 10, "{g}");
    // Every hostile request was answered by the proxy, never sent upstream.
    let ok_requests = t.app.requests();
    assert!(ok_requests >= 20, "{ok_requests}");

    let m = get(t.ports.admin, "/metrics").await.text();
    assert!(
        m.contains("portcullis_wasm_plugin_failures_total{plugin=\"spin\",kind=\"cpu_limit\"}"),
        "{m}"
    );
    assert!(
        m.contains("portcullis_wasm_plugin_calls_total{plugin=\"good\"}"),
        "{m}"
    );
    // A metric the guest defined (proxy_define_metric), one count per request it saw.
    let line = m
        .lines()
        .find(|l| l.starts_with("portcullis_wasm_good_requests{plugin=\"good\"} "))
        .unwrap_or_else(|| panic!("no guest metric in {m}"));
    let n: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(n >= ok_requests as u64, "{line} vs {ok_requests}");
    assert!(
        m.contains("# TYPE portcullis_wasm_good_requests counter"),
        "{m}"
    );
}

fn check(cfg_dir: &TempDir, plugin: &str, rules: &str) -> Finished {
    let ports = Ports::new();
    let app = free_addr();
    let cfg = format!(
        "{}{plugin}\n{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", rules),
        backend_section("app", "roundrobin", &[("s1", app, 1)], ""),
    );
    let path = cfg_dir.write("check.toml", &cfg);
    let p = path.display().to_string();
    run_bin(&["check", "-c", &p], Duration::from_secs(30))
}

#[test]
fn load_errors_are_config_errors() {
    let dir = TempDir::new("wasm-check");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown import",
            module(
                "(import \"env\" \"proxy_teleport\" (func (param i32) (result i32)))",
                1,
                "",
            ),
            "proxy_teleport",
        ),
        (
            "config refused",
            module("", 1, "").replace(
                "(func (export \"proxy_on_configure\") (param i32 i32) (result i32) i32.const 1)",
                "(func (export \"proxy_on_configure\") (param i32 i32) (result i32) i32.const 0)",
            ),
            "proxy_on_configure returned false",
        ),
        (
            "vm start refused",
            module("", 0, ""),
            "proxy_on_vm_start returned false",
        ),
        (
            "not wasm",
            "this is not a module".to_string(),
            "not a valid WebAssembly module",
        ),
        ("root context only", module("", 1, ""), "HTTP"),
    ];
    for (what, wat, want) in cases {
        let f = dir.write("m.wat", &wat);
        let plugin = format!("[[plugin]]\nname = \"m\"\nwasm = \"{}\"\n", f.display());
        let out = check(&dir, &plugin, "http_request = [{ wasm = \"m\" }]");
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(1),
            "{what}: {out:?}"
        );
        assert!(out.stderr.contains(want), "{what}: {}", out.stderr);
        assert!(out.stderr.contains("check.toml:"), "{what}: {}", out.stderr);
    }
    // A rule naming no declared plugin.
    let f = dir.write("g.wat", GOOD);
    let plugin = format!("[[plugin]]\nname = \"good\"\nwasm = \"{}\"\n", f.display());
    let out = check(&dir, &plugin, "http_request = [{ wasm = \"goood\" }]");
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("no Wasm plugin \"goood\""),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("did you mean"), "{}", out.stderr);
    // Names are unique across Lua and Wasm plugins.
    let lua = dir.write("p.lua", "-- nothing\n");
    let both = format!(
        "[[plugin]]\nname = \"good\"\nlua = \"{}\"\n\n{plugin}",
        lua.display()
    );
    let out = check(&dir, &both, "http_request = [{ wasm = \"good\" }]");
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("duplicate plugin name \"good\""),
        "{}",
        out.stderr
    );
    // The body buffer limit is bounded.
    let big = format!("{plugin}max_body_size = \"65MiB\"\n");
    let out = check(&dir, &big, "http_request = [{ wasm = \"good\" }]");
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:?}");
    assert!(out.stderr.contains("max_body_size"), "{}", out.stderr);
    assert!(out.stderr.contains("check.toml:"), "{}", out.stderr);
    // And the good one passes.
    let out = check(&dir, &plugin, "http_request = [{ wasm = \"good\" }]");
    assert_eq!(out.status.and_then(|s| s.code()), Some(0), "{out:?}");
}

fn sign(secret: &str, method: &str, path: &str) -> String {
    use hmac::Mac;
    let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("key");
    m.update(format!("{method}\n{path}").as_bytes());
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn example_plugins_build_and_work() {
    let wasm = build_wasm_examples("wasm32-unknown-unknown", &[]);
    // The same plain filter built for WASI (the Rust std links wasi_snapshot_preview1).
    let wasi = build_wasm_examples("wasm32-wasip1", &["plain_filter"]);
    let wasi_plugin = format!(
        "[[plugin]]\nname = \"plain_wasi\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n\n",
        wasi.join("plain_filter.wasm").display()
    );
    let dir = TempDir::new("wasm-ff");
    let ff = dir.write("ff.wat", FOREIGN_COUNTER);
    let ff_plugin = format!(
        "[[plugin]]\nname = \"ff\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n\n",
        ff.display()
    );
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let plugin = |name: &str, file: &str, extra: &str| {
        format!(
            "[[plugin]]\nname = \"{name}\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n{extra}\n\n",
            wasm.join(file).display()
        )
    };
    let cfg = format!(
        "{}[[stick_table]]\nname = \"api_keys\"\ntype = \"string\"\nlen = 32\nsize = 100\nexpire = \"1m\"\nstore = [\"gpc0\", \"gpc0_rate(10s)\"]\n\n{}{}{}{}{}{}{}{}{}",
        global_section(ports.admin, &[]),
        plugin(
            "hmac",
            "hmac_auth.wasm",
            "config = { header = \"x-signature\", secret = \"s3cret\" }"
        ),
        plugin(
            "rl",
            "rate_limit.wasm",
            "config = \"table=api_keys limit=3\""
        ),
        plugin("rewrite", "header_rewrite.wasm", ""),
        plugin("plain", "plain_filter.wasm", "config = \"upstream=app\""),
        plugin("hello", "hello.wasm", ""),
        ff_plugin,
        wasi_plugin,
        frontend_section(
            "web",
            ports.web,
            "app",
            r#"http_request = [
  { wasm = "hmac", if = "path_beg /signed" },
  { wasm = "rl", if = "path_beg /limited" },
  { wasm = "rewrite", if = "path_beg /rw" },
  { wasm = "plain", if = "path_beg /plain" },
  { wasm = "hello", if = "path_beg /hello" },
  { wasm = "ff", if = "path_beg /foreign" },
  { wasm = "plain_wasi", if = "path_beg /wasi" },
]"#
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;

    // HMAC request signatures.
    let r = get(ports.web, "/signed/a").await;
    assert_eq!(r.status.as_u16(), 401);
    assert_eq!(r.text(), "bad signature\n");
    let send = |sig: String| {
        let web = ports.web;
        async move {
            let mut c = H1::connect(web).await;
            c.send(
                request(http::Method::GET, web, "/signed/a?x=1")
                    .header("x-signature", sig)
                    .body(empty())
                    .expect("request"),
            )
            .await
        }
    };
    assert_eq!(
        send(sign("wrong", "GET", "/signed/a?x=1"))
            .await
            .status
            .as_u16(),
        401
    );
    assert_eq!(send("zz".into()).await.status.as_u16(), 401);
    let r = send(sign("s3cret", "GET", "/signed/a?x=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Rate limit per API key on the stick table.
    assert_eq!(get(ports.web, "/limited").await.status.as_u16(), 401);
    let with_key = |key: &'static str| {
        let web = ports.web;
        async move {
            let mut c = H1::connect(web).await;
            c.send(
                request(http::Method::GET, web, "/limited")
                    .header("x-api-key", key)
                    .body(empty())
                    .expect("request"),
            )
            .await
        }
    };
    for n in 1..=3 {
        let r = with_key("alice").await;
        assert_eq!(r.status, StatusCode::OK, "request {n}: {}", r.text());
        assert_eq!(r.echo().header("x-rate-count"), Some(n.to_string()));
    }
    let r = with_key("alice").await;
    assert_eq!(r.status.as_u16(), 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(with_key("bob").await.status, StatusCode::OK);
    let t = get(ports.admin, "/tables/api_keys").await;
    assert!(t.text().contains("alice"), "{}", t.text());

    // Header rewrite in both phases.
    let mut c = H1::connect(ports.web).await;
    let r = c
        .send(
            request(http::Method::GET, ports.web, "/rw")
                .header("x-internal-token", "secret")
                .header("x-keep", "1")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let echo = r.echo();
    assert_eq!(echo.header("x-internal-token"), None);
    assert_eq!(echo.header("x-keep").as_deref(), Some("1"));
    // Envoy's `source.address` is "ip:port".
    let addr = echo.header("x-client-addr").unwrap_or_default();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_eq!(r.header("x-served-by").as_deref(), Some("portcullis"));
    assert_eq!(r.header("server"), None);

    // A plain Proxy-Wasm filter: pause on an http call, resume on its response.
    let r = get(ports.web, "/plain/x").await;
    assert_eq!(r.echo().header("x-plain").as_deref(), Some("GET /plain/x"));
    let before = app.requests();
    let mut c = H1::connect(ports.web).await;
    let r = c
        .send(
            request(http::Method::GET, ports.web, "/plain/y")
                .header("x-check", "1")
                .body(empty())
                .expect("request"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().header("x-checked").as_deref(), Some("200"));
    assert_eq!(
        app.requests(),
        before + 2,
        "the check and the request itself"
    );

    // The docs/PLUGINS.md walkthrough plugin (whose code the doc shows verbatim).
    let r = get(ports.web, "/hello/w").await;
    assert_eq!(r.echo().header("x-hello").as_deref(), Some("/hello/w"));

    let r = get(ports.web, "/wasi/z").await;
    assert_eq!(r.echo().header("x-plain").as_deref(), Some("GET /wasi/z"));

    // Stick tables from a plain Proxy-Wasm module, through the foreign-function encoding.
    for n in 1..=2 {
        let r = get(ports.web, "/foreign").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.echo().header("x-count"), Some(n.to_string()));
    }

    let all = plugins(ports.admin).await;
    for name in [
        "hmac",
        "rl",
        "rewrite",
        "plain",
        "hello",
        "ff",
        "plain_wasi",
    ] {
        let s = stats_of(&all, name);
        assert_eq!(s["failed_requests"], 0, "{name}: {s}");
        assert_eq!(s["rebuilds"], 0, "{name}: {s}");
    }
}

#[test]
fn plugins_guide_shows_the_tested_example_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let code = std::fs::read_to_string(root.join("plugins/wasm/hello/src/lib.rs")).expect("hello");
    let body = code.split_once("\n\n").map_or(code.as_str(), |(_, b)| b);
    let doc = std::fs::read_to_string(root.join("docs/PLUGINS.md")).expect("PLUGINS.md");
    assert!(
        doc.contains(body),
        "docs/PLUGINS.md must show plugins/wasm/hello/src/lib.rs (after its doc comment) verbatim"
    );
}

/// A module for the body tests: a bump allocator (reset per context, growing
/// memory as needed), the buffer / local-response / header-map imports, a
/// no-op request headers hook, and `hooks`. The body_*.wat, trailer_echo.wat
/// and pass_through.wat modules in tests/fixtures/wasm carry a copy of it.
fn body_module(hooks: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_get_buffer_bytes" (func $getbuf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $setbuf (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $send (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $hget (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 300) "forbidden")
  (data (i32.const 320) "REPLACED-BODY")
  (data (i32.const 340) "RESP-PREFIX:")
  (data (i32.const 360) "x-trail")
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (drop (memory.grow (i32.add (i32.const 1) (i32.shr_u
        (i32.sub (global.get $heap) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)))))))
    local.get $p)
  (func (export "proxy_on_context_create") (param i32 i32) (global.set $heap (i32.const 4096)))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_configure") (param i32 i32) (result i32) i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) i32.const 0)
  {hooks}
)"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn body_and_trailer_hooks() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm-body");
    let ports = Ports::new();
    let mut plugin_cfg = String::new();
    let mut rules = String::from("http_request = [\n");
    let mut plugin_list = vec![(
        "nobuf",
        BODY_CHECK.to_string(),
        "/nobuf",
        "max_body_size = \"0\"",
    )];
    for (name, wat, path) in [
        ("bodycheck", BODY_CHECK.to_string(), "/check"),
        ("rewrite", BODY_REWRITE.to_string(), "/rewrite"),
        ("trailers", TRAILER_ECHO.to_string(), "/trailers"),
        ("passthru", PASS_THROUGH.to_string(), "/passthru"),
        (
            "bodystall",
            body_module(
                r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) i32.const 1)"#,
            ),
            "/bstall",
        ),
        (
            "bodytrap",
            body_module(
                r#"(func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) unreachable)"#,
            ),
            "/btrap",
        ),
    ] {
        plugin_list.push((name, wat, path, ""));
    }
    for (name, wat, path, extra) in plugin_list {
        let f = dir.write(&format!("{name}.wat"), &wat);
        plugin_cfg.push_str(&format!(
            "[[plugin]]\nname = \"{name}\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n{extra}\n\n",
            f.display()
        ));
        rules.push_str(&format!(
            "  {{ wasm = \"{name}\", if = \"path_beg {path}\" }},\n"
        ));
    }
    rules.push_str("  { wasm = \"rewrite\", if = \"path_beg /large\" },\n");
    // A Lua service after a Wasm body filter reads the body the filter left.
    let echo = dir.write(
        "echo.lua",
        "core.register_service('echo', 'http', function(applet)\n\
         local b = applet:receive() or ''\n\
         applet:set_status(200)\n\
         applet:add_header('content-length', tostring(#b))\n\
         applet:start_response()\n\
         applet:send(b)\n\
         end)\n",
    );
    plugin_cfg.push_str(&format!(
        "[[plugin]]\nname = \"echo\"\nlua = \"{}\"\n\n",
        echo.display()
    ));
    rules.push_str("  { wasm = \"rewrite\", if = \"path_beg /svc\" },\n");
    rules.push_str("  { use_service = \"lua.echo\", if = \"path_beg /svc\" },\n]\n");
    let cfg = format!(
        "{}{plugin_cfg}{}{}",
        global_section(ports.admin, &[]),
        frontend_section("web", ports.web, "app", &rules),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let web = ports.web;
    let post = |path: &str, body: Body| {
        request(http::Method::POST, web, path)
            .body(body)
            .expect("request")
    };

    // Read at end of stream: a marker anywhere in the body (here across chunks) → 403.
    let (tx, body) = chan_body();
    let sending = tokio::spawn(async move {
        for part in ["hello ", "E", "VIL", " world"] {
            tx.send(bytes::Bytes::from(part)).await.expect("send");
        }
    });
    let r = H1::connect(web).await.send(post("/check", body)).await;
    sending.await.expect("sender");
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.text(), "forbidden");
    let r = H1::connect(web)
        .await
        .send(post("/check", full("a harmless body")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().body(), "a harmless body");
    assert_eq!(r.echo().body_len(), 15);

    // Over the 1 MiB buffer limit → 413, with a declared length and chunked.
    let big = pattern(2 << 20);
    let r = H1::connect(web)
        .await
        .send(post("/check", full(big.clone())))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let (tx, body) = chan_body();
    let sending = tokio::spawn(async move {
        for c in big.chunks(64 << 10) {
            if tx.send(bytes::Bytes::copy_from_slice(c)).await.is_err() {
                break;
            }
        }
    });
    // The proxy answers once the buffer is full, before the body ends: the
    // client must still get the 413 (a dropped connection is a failure).
    let r = H1::connect(web).await.send(post("/check", body)).await;
    sending.abort();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    // With `max_body_size = 0` the same plugin's hooks are off: bodies stream past it.
    let r = H1::connect(web)
        .await
        .send(post("/nobuf", full(pattern(3 << 20))))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().body_len(), 3 << 20);
    let r = H1::connect(web)
        .await
        .send(post("/nobuf", full("EVIL passes")))
        .await;
    assert_eq!(r.echo().body(), "EVIL passes");
    // A hook that lets the body go on before its end: the rest streams past,
    // well beyond the buffer limit, and a changed first part drops the
    // declared length (the backend gets a chunked body of the right size).
    for body in [full(pattern(3 << 20)), {
        let (tx, body) = chan_body();
        tokio::spawn(async move {
            for c in pattern(3 << 20).chunks(64 << 10) {
                if tx.send(bytes::Bytes::copy_from_slice(c)).await.is_err() {
                    break;
                }
            }
        });
        body
    }] {
        let r = H1::connect(web).await.send(post("/passthru", body)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let echo = r.echo();
        assert_eq!(echo.body_len(), (3 << 20) + 4);
        assert!(echo.body().starts_with("PFX:"), "{}", &echo.body()[..16]);
        let mut want = b"PFX:".to_vec();
        want.extend_from_slice(&pattern(3 << 20));
        assert_eq!(echo.body_hash(), fnv_hex(&want));
    }
    // Up to the limit is fine.
    let r = H1::connect(web)
        .await
        .send(post("/check", full(pattern(1 << 20))))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().body_len(), 1 << 20);

    // A Lua service behind the rewrite gets the rewritten body, not an
    // empty one; its answer is a local reply the rewrite filter saw the
    // request of, so (as Envoy's encoder filters on a local reply) the
    // filter's response body hook prefixes it too.
    let r = H1::connect(web)
        .await
        .send(post("/svc", full("original body for the service")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "RESP-PREFIX:REPLACED-BODY");
    // Rewrites: the backend sees the new body with its own length; the
    // client gets the changed response body with a correct length.
    let (tx, body) = chan_body();
    let sending = tokio::spawn(async move {
        for part in ["original ", "chunked ", "body"] {
            tx.send(bytes::Bytes::from(part)).await.expect("send");
        }
    });
    let r = H1::connect(web).await.send(post("/rewrite", body)).await;
    sending.await.expect("sender");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let json = text
        .strip_prefix("RESP-PREFIX:")
        .unwrap_or_else(|| panic!("response body not rewritten: {text}"));
    assert_eq!(
        r.header("content-length").as_deref(),
        Some(r.body.len().to_string().as_str())
    );
    let echo = Echo(serde_json::from_str(json).expect("echo json"));
    assert_eq!(echo.body(), "REPLACED-BODY");
    assert_eq!(echo.body_len(), 13);
    assert_eq!(echo.header("content-length").as_deref(), Some("13"));
    assert_eq!(echo.header("transfer-encoding"), None);
    // Same over h2.
    let mut h2 = H2::connect(web).await;
    let req = h2
        .request(http::Method::POST, "/rewrite")
        .body(full("h2 body"))
        .expect("request");
    let r = h2.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let text = r.text();
    let echo = Echo(
        serde_json::from_str(text.strip_prefix("RESP-PREFIX:").expect("prefixed"))
            .expect("echo json"),
    );
    assert_eq!(echo.body(), "REPLACED-BODY");

    // Trailers reach the trailers hook; without trailers it is not called.
    let raw = "POST /trailers HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
               5\r\nhello\r\n0\r\nx-trail: from-the-trailer\r\n\r\n";
    let (_s, r) = raw_exchange(web, raw.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"from-the-trailer");
    let r = H1::connect(web)
        .await
        .send(post("/trailers", full("no trailers")))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo().body(), "no trailers");

    // Response bodies: rewritten within the limit; past it (declared or
    // streamed) the client gets 502, as Envoy does.
    let r = get(web, "/large/1000").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut want = b"RESP-PREFIX:".to_vec();
    want.extend_from_slice(&pattern(1000));
    assert_eq!(r.body.as_ref(), want.as_slice());
    assert_eq!(r.header("content-length").as_deref(), Some("1012"));
    for path in ["/large/2097152", "/large/2097152?cl=1"] {
        let r = get(web, path).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}: {}", r.text());
    }

    // A body hook that pauses for good ends at the pause timeout
    // (timeout.server, 2s); one that traps gets on_error. Both fail closed.
    let start = Instant::now();
    let r = within(
        "stalled body",
        Duration::from_secs(6),
        H1::connect(web).await.send(post("/bstall", full("x"))),
    )
    .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    assert!(start.elapsed() >= Duration::from_millis(1900));
    let r = H1::connect(web).await.send(post("/btrap", full("x"))).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    let all = plugins(ports.admin).await;
    let fails =
        |name: &str, kind: &str| stats_of(&all, name)["failures"][kind].as_u64().unwrap_or(0);
    assert_eq!(fails("bodystall", "pause_timeout"), 1, "{all:?}");
    assert_eq!(fails("bodytrap", "unreachable"), 1, "{all:?}");
    // Still serving.
    let r = H1::connect(web)
        .await
        .send(post("/check", full("after")))
        .await;
    assert_eq!(r.echo().body(), "after");
}

/// Reads `portcullis_wasm_<metric>{plugin="<plugin>"}` from /metrics.
async fn guest_metric(admin: SocketAddr, metric: &str, plugin: &str) -> Option<u64> {
    let m = get(admin, "/metrics").await.text();
    let prefix = format!("portcullis_wasm_{metric}{{plugin=\"{plugin}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse::<u64>().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_start_on_every_worker_without_traffic() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm-ticks");
    let ports = Ports::new();
    let f = dir.write("ticker.wat", CONFIGURE_TICKER);
    let cfg = format!(
        "{}[[plugin]]\nname = \"cticker\"\nwasm = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[("workers", "2")]),
        f.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [ { wasm = \"cticker\" } ]\n"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let admin = ports.admin;
    // No request is sent: every worker built its instance at start-up, ran
    // on_configure (which set the period) and ticks from its housekeeping.
    eventually(
        "ticks with no traffic",
        Duration::from_secs(3),
        || async move {
            guest_metric(admin, "idle_ticks", "cticker")
                .await
                .is_some_and(|n| n >= 4)
        },
    )
    .await;
    let all = plugins(admin).await;
    let s = stats_of(&all, "cticker");
    assert_eq!(s["instances"], 2, "{s}");
    assert_eq!(s["rebuilds"], 0, "{s}");
    assert_eq!(app.requests(), 0);
    // Traffic still flows through the plugin.
    let r = get(ports.web, "/after").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_call_from_the_root_context() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm-rootcall");
    let ports = Ports::new();
    let f = dir.write("rootcall.wat", ROOT_CALLER);
    let cfg = format!(
        "{}[[plugin]]\nname = \"refresher\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n\n{}{}",
        global_section(ports.admin, &[("workers", "2")]),
        f.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [ { wasm = \"refresher\" } ]\n"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let web = ports.web;
    // The calls go out from on_tick with no request to carry them.
    eventually(
        "root calls reach the backend",
        Duration::from_secs(3),
        || {
            let n = app.requests();
            async move { n >= 32 }
        },
    )
    .await;
    eventually(
        "the response lands in shared data",
        Duration::from_secs(3),
        || async move { get(web, "/keys").await.status == StatusCode::OK },
    )
    .await;
    // The client sees the backend's body, fetched by the root context.
    let r = get(web, "/keys").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo.0["path"], "/refresh", "{}", r.text());
    assert_eq!(echo.0["method"], "GET", "{}", r.text());
    // 16 per worker; the 17th was refused (else the body says bound-broken).
    assert_eq!(app.requests(), 32);
    let all = plugins(ports.admin).await;
    let s = stats_of(&all, "refresher");
    assert_eq!(s["rebuilds"], 0, "{s}");
    assert_eq!(s["failed_requests"], 0, "{s}");
    assert_eq!(s["bad_host_calls"], 2, "{s}");
}

/// Whether `e`, from a client exchange, says the peer closed or reset the connection.
fn connection_closed(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>()
            && (h.is_closed() || h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
            )
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_hook_sees_every_chunk_after_continue() {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm-chunks");
    let ports = Ports::new();
    let f = dir.write("chunks.wat", PER_CHUNK);
    let cfg = format!(
        "{}[[plugin]]\nname = \"chunks\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n\n{}{}",
        global_section(ports.admin, &[]),
        f.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [ { wasm = \"chunks\" } ]\n"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let web = ports.web;

    // Request: the first chunk is read for the hook, which lets the body go
    // on; the next two stream past through the hook one by one, unbuffered.
    let (tx, body) = chan_body();
    tokio::spawn(async move {
        for c in ["one", "two", "three"] {
            if tx
                .send(bytes::Bytes::from_static(c.as_bytes()))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let req = request(http::Method::POST, web, "/up")
        .body(body)
        .expect("request");
    let r = H1::connect(web).await.send(req).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // (The response hook appended `$` to the echo as well.)
    let echo = r.body.strip_suffix(b"$").expect("response ends with $");
    let echo: serde_json::Value = serde_json::from_slice(echo).expect("echo JSON");
    assert_eq!(echo["body"], "abc$", "{echo}");

    // Response: every chunk of a streamed (or length-declared) body after
    // the first goes through the hook, and the end of stream too.
    let mut seen = 0;
    for path in ["/large/300000", "/large/300000?cl=1"] {
        let r = get(web, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let mut want = pattern(300000);
        want.push(b'$');
        assert_eq!(r.body.len(), want.len(), "{path}");
        assert!(r.body.as_ref() == want.as_slice(), "{path}");
        // A changed length is either left undeclared (chunked, when the hook
        // ran per chunk) or declared correctly (when the whole body arrived
        // in the first frame and was handled at end of stream).
        let whole_in_first_frame = match r.header("content-length") {
            Some(cl) => {
                assert_eq!(cl, want.len().to_string(), "{path}");
                true
            }
            None => false,
        };
        let n = guest_metric(ports.admin, "resp_chunks", "chunks")
            .await
            .unwrap_or(0);
        // One hook call when the body came whole (a loaded machine reads it
        // in one go), else the first chunk, the later ones and the end.
        let least = if whole_in_first_frame { 1 } else { 2 };
        assert!(
            n >= seen + least,
            "{path}: the hook saw {} chunks",
            n - seen
        );
        seen = n;
    }
    let all = plugins(ports.admin).await;
    let s = stats_of(&all, "chunks");
    assert_eq!(s["failed_requests"], 0, "{s}");
    assert_eq!(s["rebuilds"], 0, "{s}");

    // A hook failing mid-stream (fail_closed) aborts that request's body and
    // counts the request once as handled by on_error.
    let (tx, body) = chan_body();
    tokio::spawn(async move {
        for c in ["1", "2", "3", "4", "5", "6", "7", "8"] {
            if tx
                .send(bytes::Bytes::from_static(c.as_bytes()))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let r = H1::connect(web)
        .await
        .try_send(
            request(http::Method::POST, web, "/trap")
                .body(body)
                .expect("request"),
        )
        .await;
    // The request fails, and never hangs. The upstream request breaks off
    // with its body, so the proxy answers 502 while the client is still
    // sending chunks; should the proxy close the connection with some of
    // them unread, a reset can overtake that answer and the client sees its
    // connection closed instead. Those two outcomes only.
    match &r {
        Ok(r) => assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text()),
        Err(e) => assert!(
            connection_closed(e.as_ref()),
            "neither an error response nor a closed connection: {e:?}"
        ),
    }
    let all = plugins(ports.admin).await;
    let s = stats_of(&all, "chunks");
    assert_eq!(s["failed_requests"], 1, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failure_back_off_grows_until_a_request_succeeds() {
    // `spin` creates its context fine, then loops in on_request_headers until
    // its 20 ms CPU limit. Before, the successful context creation reset the
    // back-off on every request, so it stayed at 10 ms: one rebuild (and one
    // 20 ms spin) every 10 ms for as long as requests came.
    let t = wasm_proxy().await;
    let start = Instant::now();
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
    let all = plugins(t.ports.admin).await;
    let s = stats_of(&all, "spin");
    let spins = s["failures"]["cpu_limit"].as_u64().unwrap_or(0);
    // Three rebuilds at once (plugin::FREE_REBUILDS), then doubling from
    // 10 ms: 10+20+...+640 ms covers 1.27 s, so at most about 12 instances
    // can have been built and spun (20 ms each) in 1.5 s; without growth it
    // would be about 50.
    assert!(
        (1..=12).contains(&spins),
        "{spins} CPU-limit failures in {requests} requests over 1.5 s: the back-off did not grow ({s})"
    );
    // A good request on another plugin is unaffected, and the back-off of
    // `spin` is not a failure of the worker.
    assert_good(t.ports.web).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_off_follows_the_documented_schedule() {
    // plugin::BackOff: the first three failures in a row rebuild at once,
    // then 10 ms doubling per further failure. Each failure's log line says
    // the wait it starts; a plugin that fails on every request shows the
    // schedule, whether a request or housekeeping rebuilds it. The lines
    // are rate-limited (plugin::lograte): the first five in full, then at
    // most one per interval (150 ms here) saying how many like it were left
    // out, so the logged waits are the schedule with the left-out steps
    // counted in the line that follows them.
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm-backoff");
    let ports = Ports::new();
    let f = dir.write("crash.wat", &hostile("", "unreachable"));
    let cfg = format!(
        "{}[[plugin]]\nname = \"crash\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n\n{}{}",
        global_section(ports.admin, &[("plugin_failure_log_interval", "\"150ms\"")]),
        f.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [ { wasm = \"crash\" } ]\n"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    // (wait started, failures left out before this line) per logged failure.
    let lines = || -> Vec<(u64, u64)> {
        d.stderr()
            .split("wasm plugin failed, instance dropped")
            .skip(1)
            .filter_map(|entry| {
                let wait = entry
                    .split("backoff_ms=")
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())?;
                let left_out = entry
                    .split(" more like this in the last ")
                    .next()
                    .filter(|_| entry.contains(" more like this in the last "))
                    .and_then(|head| head.rsplit('(').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Some((wait, left_out))
            })
            .collect()
    };
    let start = Instant::now();
    while lines().len() < 8 && start.elapsed() < Duration::from_secs(10) {
        let r = get(ports.web, "/").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = lines();
    assert!(seen.len() >= 8, "{seen:?}\n{}", d.stderr());
    // The burst: every failure, in full.
    assert_eq!(
        seen[..5],
        [(0, 0), (0, 0), (0, 0), (10, 0), (20, 0)],
        "{}",
        d.stderr()
    );
    // After it: each logged wait doubles the previous logged one once per
    // failure in between, and the line counts exactly those left out.
    for pair in seen[4..].windows(2) {
        let ((prev, _), (wait, left_out)) = (pair[0], pair[1]);
        assert_eq!(
            wait.min(5000),
            prev.checked_shl(u32::try_from(left_out + 1).unwrap_or(u32::MAX))
                .unwrap_or(u64::MAX)
                .min(5000),
            "{seen:?}\n{}",
            d.stderr()
        );
        assert!(wait == 5000 || left_out < 8, "{seen:?}");
    }
    assert!(
        seen[5..].iter().any(|&(_, n)| n > 0),
        "the limit left lines out: {seen:?}"
    );
    // Requests during a back-off never entered the guest: one failure per
    // build (besides the load-time check's instance and a live rebuilt one),
    // and every failure is counted whether logged or not.
    let all = plugins(ports.admin).await;
    let s = stats_of(&all, "crash");
    let fails = s["failures"]["unreachable"].as_u64().unwrap_or(0);
    let built = s["instances_built"].as_u64().unwrap_or(0);
    assert!((fails..=fails + 2).contains(&built), "{s}");
    let logged: u64 = seen.iter().map(|&(_, n)| n + 1).sum();
    assert!(
        fails >= logged,
        "{fails} failures, {logged} logged or left out: {s}"
    );
}

/// Logs at info when configured (with the level `proxy_get_log_level`
/// reports then) and at info and warn per request.
const LEVELS: &str = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $level (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) "configured, host level ?")
  (data (i32.const 64) "request seen")
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $heap local.set $p
    global.get $heap local.get $n i32.add global.set $heap
    local.get $p)
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $level (i32.const 8)))
    (i32.store8 (i32.const 39) (i32.add (i32.const 48) (i32.load (i32.const 8))))
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 24)))
    i32.const 1)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 64) (i32.const 12)))
    (drop (call $log (i32.const 3) (i32.const 64) (i32.const 12)))
    i32.const 0))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_log_lines_follow_log_level() {
    // Before, plugin lines had their own tracing target outside the
    // `portcullis=<log_level>` filter: info lines were hidden unless
    // PORTCULLIS_LOG said otherwise, and lines logged while the config
    // loaded were lost (no subscriber yet).
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm-levels");
    let f = dir.write("levels.wat", LEVELS);
    for (level, shown) in [("info", true), ("warn", false)] {
        let ports = Ports::new();
        let cfg = format!(
            "{}[[plugin]]\nname = \"levels\"\nwasm = \"{}\"\n\n{}{}",
            global_section(ports.admin, &[("log_level", &format!("\"{level}\""))]),
            f.display(),
            frontend_section(
                "web",
                ports.web,
                "app",
                "http_request = [ { wasm = \"levels\" } ]\n"
            ),
            backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
        );
        let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
        let r = get(ports.web, "/").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let warn = d
            .wait_stderr_line(Duration::from_secs(5), |l| {
                l.contains("WARN") && l.contains("request seen")
            })
            .await;
        assert!(warn.is_some(), "{level}: {}", d.stderr());
        let err = d.stderr();
        let info_request = err
            .lines()
            .any(|l| l.contains("INFO") && l.contains("request seen"));
        assert_eq!(info_request, shown, "{level}: {err}");
        // The load-time check instance and the worker's both configured;
        // the host reported the configured level (2 info, 3 warn).
        let configured = err
            .lines()
            .filter(|l| l.contains("configured, host level 2"))
            .count();
        assert_eq!(configured >= 2, shown, "{level}: {err}");
    }
}

/// Two workers and the ticking module as a plugin no rule uses, with
/// `extra` plugin keys; the backend, the directory and the daemon live as long as the test.
async fn ticker_service(extra: &str) -> (Backend, TempDir, Ports, Daemon) {
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm-service");
    let ports = Ports::new();
    let f = dir.write("ticker.wat", CONFIGURE_TICKER);
    let cfg = format!(
        "{}[[plugin]]\nname = \"service\"\nwasm = \"{}\"\n{extra}\n{}{}",
        global_section(ports.admin, &[("workers", "2")]),
        f.display(),
        frontend_section("web", ports.web, "app", ""),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    (app, dir, ports, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_no_rule_uses_ticks_as_one_singleton() {
    // Declared but used by no rule: one instance for the process (not one
    // per worker), configured and ticking with no HTTP context.
    let (_app, _dir, ports, _d) = ticker_service("").await;
    let admin = ports.admin;
    eventually(
        "the singleton ticks",
        Duration::from_secs(3),
        || async move {
            guest_metric(admin, "idle_ticks", "service")
                .await
                .is_some_and(|n| n >= 3)
        },
    )
    .await;
    let all = plugins(admin).await;
    let s = stats_of(&all, "service");
    assert_eq!(s["root_only"], true, "{s}");
    assert_eq!(s["instances"], 1, "{s}");
    assert_eq!(s["rebuilds"], 0, "{s}");
    assert_eq!(get(ports.web, "/").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_singleton_false_runs_in_every_worker() {
    // Envoy's WasmService singleton = false: one instance per worker.
    let (app, dir, ports, _d) = ticker_service("singleton = false\n").await;
    let admin = ports.admin;
    eventually(
        "both workers' instances run",
        Duration::from_secs(3),
        || async move { stats_of(&plugins(admin).await, "service")["instances"] == 2 },
    )
    .await;
    // `singleton` on a plugin a rule uses is a config error.
    let bad = format!(
        "[[plugin]]\nname = \"f\"\nwasm = \"{}\"\nsingleton = false\n\n{}{}",
        dir.write("good.wat", GOOD).display(),
        frontend_section(
            "web",
            free_addr(),
            "app",
            "http_request = [{ wasm = \"f\" }]"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let path = dir.write("bad.toml", &bad);
    let out = run_bin(
        &["check", "-c", path.to_str().expect("utf-8")],
        Duration::from_secs(30),
    );
    assert!(!out.status.expect("finished").success());
    assert!(
        out.stderr
            .contains("`singleton` applies to a plugin no rule uses"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_metadata_reaches_the_plugin_as_envoy_names_it() {
    // A rule's `metadata` and its frontend's are Envoy's route metadata:
    // `route_metadata.filter_metadata.<filter>.<key>`, the rule's first.
    let app = Backend::start("s1").await;
    let dir = TempDir::new("wasm-metadata");
    let module = dir.write("md.wat", include_str!("fixtures/wasm/route_metadata.wat"));
    let ports = Ports::new();
    let rules = r#"metadata = { demo = { tenant = "frontend-wide" } }
http_request = [
  { wasm = "md", if = "path_beg /rule", metadata = { demo = { tenant = "rule-own", n = 3 } } },
  { wasm = "md", unless = "path_beg /rule" },
]"#;
    let cfg = format!(
        "{}[[plugin]]\nname = \"md\"\nwasm = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[]),
        module.display(),
        frontend_section("web", ports.web, "app", rules),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let e = get(ports.web, "/rule/x").await.echo();
    assert_eq!(e.header("x-tenant").as_deref(), Some("rule-own"));
    assert_eq!(
        e.header("x-md-status").as_deref(),
        Some("1"),
        "missing key: NOT_FOUND"
    );
    let e = get(ports.web, "/other").await.echo();
    assert_eq!(e.header("x-tenant").as_deref(), Some("frontend-wide"));

    // metadata belongs to wasm rules, and each filter's entry is a table.
    for (rule, want) in [
        (
            r#"{ set_header = "x-a", value = "1", metadata = { demo = { k = "v" } } }"#,
            "`metadata` does not apply to `set_header`; it is used with `wasm`",
        ),
        (
            r#"{ wasm = "md", metadata = { demo = "flat" } }"#,
            "metadata: `demo` must be a table",
        ),
    ] {
        let bad = format!(
            "[[plugin]]\nname = \"md\"\nwasm = \"{}\"\n\n{}{}",
            module.display(),
            frontend_section(
                "web",
                free_addr(),
                "app",
                &format!("http_request = [{rule}]")
            ),
            backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
        );
        let path = dir.write("bad.toml", &bad);
        let out = run_bin(
            &["check", "-c", path.to_str().expect("utf-8")],
            Duration::from_secs(30),
        );
        assert!(!out.status.expect("finished").success(), "{rule} accepted");
        assert!(out.stderr.contains(want), "{rule}: {}", out.stderr);
    }
}
