//! Every example plugin tested with the plugin harness (`portcullis::harness`),
//! the way a plugin author tests one: no daemon, the config assembled by
//! the daemon's own code, a fake request and server response through the
//! frontend's chain, and assertions on what came out (headers, bodies,
//! local replies, HTTP calls to canned upstreams, logs, stick tables).
//! Also: the `portcullis plugin new|check|test` commands on what they produce.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use portcullis::harness::{Canned, Harness, Request};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// plugins/wasm built once for all tests of this file.
fn wasm(name: &str) -> String {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| common::build_wasm_examples("wasm32-unknown-unknown", &[]));
    dir.join(format!("{name}.wasm")).display().to_string()
}

/// guest-sdk/examples built once for all tests of this file.
fn sdk_example(name: &str) -> String {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let target = repo().join("target").join("guest-sdk-examples");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-unknown-unknown",
                "--examples",
            ])
            .current_dir(repo().join("guest-sdk"))
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building guest-sdk examples failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("wasm32-unknown-unknown/release/examples")
    });
    dir.join(format!("{name}.wasm")).display().to_string()
}

fn lua(name: &str) -> String {
    repo().join("plugins/lua").join(name).display().to_string()
}

/// A config: `top` (plugins, tables), one frontend `web` with the given
/// rule lists (TOML array bodies) to backend `app`, and backends `app` and `auth`.
fn config(top: &str, request: &str, response: &str) -> String {
    format!(
        r#"{top}

[[frontend]]
name = "web"
bind = "127.0.0.1:1"
default_backend = "app"
http_request = [{request}]
http_response = [{response}]

[[backend]]
name = "app"
server = [{{ name = "s1", addr = "127.0.0.1:2" }}]

[[backend]]
name = "auth"
server = [{{ name = "a1", addr = "127.0.0.1:3" }}]
"#
    )
}

fn harness(top: &str, request: &str, response: &str) -> Harness {
    match Harness::config_text(&config(top, request, response), repo()).start() {
        Ok(h) => h,
        Err(e) => panic!("harness: {e}"),
    }
}

fn plugin_wasm(name: &str, path: &str, config: Option<&str>) -> String {
    let config = config.map_or_else(String::new, |c| format!("config = '{c}'\n"));
    format!("[[plugin]]\nname = \"{name}\"\nwasm = \"{path}\"\n{config}")
}

fn plugin_lua(name: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\nlua = \"{}\"\n",
        lua(&format!("{name}.lua"))
    )
}

// ---------------------------------------------------------------- Wasm

/// The demo filter written in C, C++, AssemblyScript and Rust (the
/// `proxy-wasm` crate; `tests/e2e_wasm_sdks.rs` runs the same modules
/// through the binary), each tested in the harness as its author would:
/// headers both ways and the log hook, a local reply, an HTTP call to a
/// canned upstream whose answer resumes the request.
#[test]
fn sdk_demo_guests_in_the_harness() {
    for g in common::guests() {
        let name = g.name;
        let top = plugin_wasm(name, &g.wasm.display().to_string(), Some("upstream=auth"));
        let text = config(&top, &format!(r#"{{ wasm = "{name}" }}"#), "");
        let mut h = match Harness::config_text(&text, repo())
            .upstream("auth", Canned::ok().body("{\"from\": \"auth\"}"))
            .start()
        {
            Ok(h) => h,
            Err(e) => panic!("{name}: {e}"),
        };

        let ex = h.run(
            Request::get("/h?x=1")
                .header("x-replace-me", "old")
                .header("x-remove-me", "1")
                .header("x-keep", "k"),
            Canned::ok()
                .header("x-server", "app1")
                .header("x-secret", "s"),
        );
        assert_eq!(ex.status, 200, "{name}: {}", ex.text());
        let up = ex.upstream.as_ref().expect("forwarded");
        assert_eq!(up.header("x-guest"), Some(name), "{name}");
        assert_eq!(up.header("x-seen"), Some("GET /h?x=1"), "{name}");
        assert_eq!(up.header("x-replace-me"), Some("replaced"), "{name}");
        assert_eq!(up.header("x-remove-me"), None, "{name}");
        assert_eq!(up.header("x-keep"), Some("k"), "{name}");
        assert_eq!(ex.header("x-resp-guest"), Some(name), "{name}");
        assert_eq!(ex.header("x-server"), Some("hidden"), "{name}");
        assert_eq!(ex.header("x-secret"), None, "{name}");
        assert!(
            ex.logged(&format!("{name} log GET /h?x=1 -> 200")),
            "{name}: {:?}",
            ex.logs
        );

        let ex = h.run(Request::get("/local/x"), Canned::ok());
        assert_eq!(ex.status, 403, "{name}: {}", ex.text());
        assert!(ex.local_reply, "{name}");
        assert!(
            ex.upstream.is_none(),
            "{name}: the server must not be asked"
        );
        assert_eq!(ex.text(), format!("{name} says no\n"));
        assert_eq!(ex.header("x-local-by"), Some(name), "{name}");

        let ex = h.run(Request::get("/call/200/a"), Canned::ok());
        assert_eq!(ex.status, 200, "{name}: {}", ex.text());
        assert_eq!(ex.calls.len(), 1, "{name}: {:?}", ex.calls);
        assert_eq!(ex.calls[0].upstream, "auth", "{name}");
        assert_eq!(ex.calls[0].path, "/status/200", "{name}");
        let up = ex.upstream.as_ref().expect("forwarded after the call");
        assert_eq!(up.header("x-auth-status"), Some("200"), "{name}");
    }
}

#[test]
fn wasm_hello_sets_a_header_counts_keys_and_answers_429() {
    let top = format!(
        "[[stick_table]]\nname = \"api_keys\"\ntype = \"string\"\nlen = 64\nsize = 1000\nexpire = \"1m\"\nstore = [\"gpc0\", \"gpc0_rate(10s)\"]\n\n{}",
        plugin_wasm("hello", &wasm("hello"), None)
    );
    let mut h = harness(&top, r#"{ wasm = "hello" }"#, "");
    let ex = h.run(Request::get("/api/x"), Canned::ok().body("fine"));
    assert_eq!(ex.status, 200);
    assert!(!ex.local_reply);
    let up = ex.upstream.as_ref().expect("forwarded");
    assert_eq!(up.header("x-hello"), Some("/api/x"));
    assert_eq!(up.backend.as_deref(), Some("app"));
    assert_eq!(ex.text(), "fine");
    assert!(ex.logged("answered"), "{:?}", ex.logs);
    for i in 1..=10 {
        let ex = h.run(Request::get("/").header("x-api-key", "k1"), Canned::ok());
        assert_eq!(ex.status, 200, "request {i}");
    }
    assert_eq!(h.table_value("api_keys", "k1", "gpc0"), 10);
    let ex = h.run(Request::get("/").header("x-api-key", "k1"), Canned::ok());
    assert_eq!(ex.status, 429);
    assert!(ex.local_reply);
    assert!(ex.upstream.is_none(), "the server must not be asked");
    assert_eq!(ex.header("retry-after"), Some("10"));
    assert_eq!(ex.text(), "slow down\n");
    assert_eq!(h.table_value("api_keys", "k1", "gpc0"), 11);
}

#[test]
fn wasm_header_rewrite_in_both_phases() {
    let top = plugin_wasm("rw", &wasm("header_rewrite"), None);
    let mut h = harness(&top, r#"{ wasm = "rw" }"#, "");
    let ex = h.run(
        Request::get("/")
            .header("x-internal-token", "secret")
            .header("x-keep", "1"),
        Canned::ok()
            .header("server", "apache")
            .header("x-other", "o"),
    );
    let up = ex.upstream.as_ref().expect("forwarded");
    assert_eq!(up.header("x-internal-token"), None);
    assert_eq!(up.header("x-keep"), Some("1"));
    assert_eq!(up.header("x-client-addr"), Some("127.0.0.1:40000"));
    assert_eq!(ex.header("server"), None);
    assert_eq!(ex.header("x-served-by"), Some("portcullis"));
    assert_eq!(ex.header("x-other"), Some("o"));
    assert!(ex.logged("response rewritten"), "{:?}", ex.logs);
}

#[test]
fn wasm_hmac_auth_checks_signatures() {
    use hmac::Mac;
    let top = plugin_wasm("sig", &wasm("hmac_auth"), Some(r#"{"secret": "s3cret"}"#));
    let mut h = harness(&top, r#"{ wasm = "sig" }"#, "");
    let ex = h.run(
        Request::get("/doc").header("x-signature", "00"),
        Canned::ok(),
    );
    assert_eq!(ex.status, 401);
    assert_eq!(ex.text(), "bad signature\n");
    assert!(ex.logged("bad request signature"), "{:?}", ex.logs);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret").expect("key");
    mac.update(b"GET\n/doc");
    let sig: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let ex = h.run(
        Request::get("/doc").header("x-signature", &sig),
        Canned::ok(),
    );
    assert_eq!(ex.status, 200);
    assert!(!ex.local_reply);
    // A config without a secret is refused when the config loads.
    let bad = plugin_wasm("sig", &wasm("hmac_auth"), Some(r#"{"secret": ""}"#));
    let err = Harness::config_text(&config(&bad, r#"{ wasm = "sig" }"#, ""), repo())
        .start()
        .err()
        .expect("a config without a secret must not load");
    assert!(err.to_string().contains("sig"), "{err}");
}

#[test]
fn wasm_plain_filter_http_call_answered_by_a_canned_upstream() {
    let top = plugin_wasm("plain", &wasm("plain_filter"), Some("upstream=auth"));
    let text = config(&top, r#"{ wasm = "plain" }"#, "");
    let mut h = Harness::config_text(&text, repo())
        .upstream("auth", Canned::status(204).header("x-auth", "yes"))
        .start()
        .expect("harness");
    let ex = h.run(Request::post("/p?q=1", "data"), Canned::ok());
    let up = ex.upstream.as_ref().expect("forwarded");
    assert_eq!(up.header("x-plain"), Some("POST /p?q=1"));
    assert_eq!(&up.body[..], b"data");
    assert!(ex.calls.is_empty(), "{:?}", ex.calls);
    let ex = h.run(Request::get("/").header("x-check", "1"), Canned::ok());
    assert_eq!(ex.calls.len(), 1, "{:?}", ex.calls);
    assert_eq!(ex.calls[0].upstream, "auth");
    assert_eq!(ex.calls[0].path, "/check");
    assert_eq!(
        ex.upstream.as_ref().and_then(|u| u.header("x-checked")),
        Some("204")
    );
    assert_eq!(h.calls().len(), 1);
}

#[test]
fn wasm_rate_limit_on_a_stick_table() {
    let top = format!(
        "[[stick_table]]\nname = \"keys\"\ntype = \"string\"\nlen = 32\nsize = 100\nexpire = \"1m\"\nstore = [\"gpc0\", \"gpc0_rate(10s)\"]\n\n{}",
        plugin_wasm("rl", &wasm("rate_limit"), Some("table=keys limit=2"))
    );
    let mut h = harness(&top, r#"{ wasm = "rl" }"#, "");
    let ex = h.run(Request::get("/"), Canned::ok());
    assert_eq!(ex.status, 401);
    assert_eq!(ex.text(), "api key required\n");
    for n in 1..=2 {
        let ex = h.run(Request::get("/").header("x-api-key", "a"), Canned::ok());
        assert_eq!(ex.status, 200);
        let count = ex.upstream.as_ref().and_then(|u| u.header("x-rate-count"));
        assert_eq!(count, Some(n.to_string().as_str()));
    }
    let ex = h.run(Request::get("/").header("x-api-key", "a"), Canned::ok());
    assert_eq!(ex.status, 429);
    assert_eq!(h.table_value("keys", "a", "gpc0"), 3);
    assert_eq!(h.table_value("keys", "b", "gpc0"), 0);
}

#[test]
fn wasm_sdk_demo_bodies_local_replies_calls_ticks_and_log_hook() {
    let top = plugin_wasm("demo", &wasm("sdk_demo"), Some("upstream=auth"));
    let text = config(&top, r#"{ wasm = "demo" }"#, "");
    let mut h = Harness::config_text(&text, repo())
        .upstream(
            "auth",
            Canned::ok().header("x-server", "auth1").body("12345"),
        )
        .start()
        .expect("harness");
    // Request and response bodies rewritten by the body hooks.
    let ex = h.run(
        Request::post("/body", "hello"),
        Canned::ok().header("x-secret", "s").body("abc"),
    );
    let up = ex.upstream.as_ref().expect("forwarded");
    assert_eq!(&up.body[..], b"rust:HELLO");
    assert_eq!(up.header("x-guest"), Some("rust"));
    assert_eq!(ex.text(), "abc\nrust saw 3 bytes\n");
    assert_eq!(ex.header("content-length"), Some("21"));
    assert_eq!(ex.header("x-secret"), None);
    assert_eq!(ex.header("x-server"), Some("hidden"));
    assert!(ex.logged("rust log POST /body -> 200"), "{:?}", ex.logs);
    // A local reply.
    let ex = h.run(Request::get("/local"), Canned::ok());
    assert_eq!((ex.status, ex.text().as_str()), (403, "rust says no\n"));
    assert_eq!(ex.header("x-local-by"), Some("rust"));
    // An HTTP call, answered by the canned upstream.
    let ex = h.run(Request::get("/call/200"), Canned::ok());
    assert_eq!(ex.calls.len(), 1);
    assert_eq!(ex.calls[0].path, "/status/200");
    assert_eq!(
        ex.calls[0].headers.get("x-from").map(|v| v.as_bytes()),
        Some(&b"rust"[..])
    );
    let up = ex.upstream.as_ref().expect("forwarded after the call");
    assert_eq!(up.header("x-auth-server"), Some("auth1"));
    assert_eq!(up.header("x-auth-bytes"), Some("5"));
    // Ticks run while time passes.
    h.wait(std::time::Duration::from_millis(350));
    assert!(
        h.logs().iter().any(|l| l.message.contains("rust tick 1")),
        "{:?}",
        h.logs()
    );
}

#[test]
fn guest_sdk_examples() {
    // add_header
    let top = plugin_wasm("add_header", &sdk_example("add_header"), None);
    let mut h = harness(&top, "", r#"{ wasm = "add_header" }"#);
    let ex = h.run(Request::get("/"), Canned::ok());
    assert_eq!(ex.header("x-served-by"), Some("portcullis"));
    drop(h);

    // json_config: the token's SHA-256 ("secret").
    let digest = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    let cfg = format!(r#"{{"header": "x-token", "sha256_hex": "{digest}"}}"#);
    let top = plugin_wasm("token", &sdk_example("json_config"), Some(&cfg));
    let mut h = harness(&top, r#"{ wasm = "token" }"#, "");
    let ex = h.run(Request::get("/").header("x-token", "wrong"), Canned::ok());
    assert_eq!(ex.status, 401);
    assert_eq!(ex.header("www-authenticate"), Some("Token"));
    let ex = h.run(Request::get("/").header("x-token", "secret"), Canned::ok());
    assert_eq!(ex.status, 200);
    drop(h);
    let bad = plugin_wasm(
        "token",
        &sdk_example("json_config"),
        Some(r#"{"header": "x"}"#),
    );
    let err = Harness::config_text(&config(&bad, r#"{ wasm = "token" }"#, ""), repo())
        .start()
        .err()
        .expect("a bad plugin config must not load");
    assert!(
        err.to_string().contains("missing field `sha256_hex`"),
        "{err}"
    );

    // foreign_counter: a plain Proxy-Wasm module on a stick table.
    let top = format!(
        "[[stick_table]]\nname = \"per_key\"\ntype = \"string\"\nlen = 32\nsize = 100\nstore = [\"gpc0\"]\n\n{}",
        plugin_wasm("fc", &sdk_example("foreign_counter"), None)
    );
    let mut h = harness(&top, r#"{ wasm = "fc" }"#, "");
    for _ in 0..3 {
        let ex = h.run(Request::get("/").header("x-api-key", "k"), Canned::ok());
        assert_eq!(ex.status, 200);
    }
    assert_eq!(h.table_value("per_key", "k", "gpc0"), 3);
}

// ---------------------------------------------------------------- Lua

#[test]
fn lua_rewrite_in_both_phases() {
    let mut h = harness(
        &plugin_lua("rewrite"),
        r#"{ lua = "rewrite" }"#,
        r#"{ lua = "rewrite" }"#,
    );
    let ex = h.run(
        Request::get("/p?x=1")
            .header("user-agent", "ua")
            .header("x-remove-me", "1")
            .header("x-version", "v2"),
        Canned::ok()
            .header("x-server", "s1")
            .header("x-secret", "no"),
    );
    let up = ex.upstream.as_ref().expect("forwarded");
    assert_eq!(up.path, "/rewritten/p?a=1&b=2");
    assert_eq!(up.header("x-ua-first"), Some("ua"));
    assert_eq!(up.header("x-remove-me"), None);
    assert_eq!(up.header("x-version"), Some("version-2"));
    assert_eq!(up.headers.get_all("x-added").iter().count(), 2);
    assert_eq!(ex.status, 203);
    assert_eq!(ex.header("x-backend"), Some("s1"));
    assert_eq!(ex.header("x-secret"), None);
}

#[test]
fn lua_cors_preflight_and_response() {
    let rule = r#"{ lua = "cors", args = ["GET,POST", "https://a.example", "X-Custom"] }"#;
    let mut h = harness(&plugin_lua("cors"), rule, r#"{ lua = "cors" }"#);
    let ex = h.run(
        Request::new(http::Method::OPTIONS, "/")
            .header("origin", "https://a.example")
            .header("access-control-request-method", "POST"),
        Canned::ok(),
    );
    assert_eq!(ex.status, 204);
    assert!(ex.local_reply);
    assert_eq!(ex.header("access-control-allow-methods"), Some("GET,POST"));
    let ex = h.run(
        Request::get("/").header("origin", "https://a.example"),
        Canned::ok(),
    );
    assert_eq!(ex.status, 200);
    assert_eq!(
        ex.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(
        ex.var("txn.cors_origin").as_deref(),
        Some("https://a.example")
    );
    let ex = h.run(
        Request::get("/").header("origin", "https://evil.example"),
        Canned::ok(),
    );
    assert_eq!(ex.header("access-control-allow-origin"), None);
    assert_eq!(ex.header("vary"), Some("Origin"));
}

#[test]
fn lua_deny_page_and_services() {
    let top = format!(
        "{}\n{}",
        plugin_lua("deny_page"),
        plugin_lua("hello_service")
    );
    let rules = r#"{ lua = "deny_page", if = "path_beg /admin" }, { use_service = "lua.hello", if = "path_beg /svc" }, { use_service = "lua.body_echo", if = "path_beg /body" }"#;
    let mut h = harness(&top, rules, "");
    let ex = h.run(Request::get("/admin/x"), Canned::ok());
    assert_eq!(ex.status, 403);
    assert_eq!(ex.header("x-denied-by"), Some("lua"));
    assert!(ex.text().contains("No access to /admin/x"), "{}", ex.text());
    let ex = h.run(
        Request::get("/svc?cl=1").header("x-name", "ann"),
        Canned::ok(),
    );
    assert!(ex.local_reply);
    assert_eq!(ex.header("x-service"), Some("hello"));
    assert_eq!(ex.text(), "hello GET /svc?cl=1\nname=ann\nfrom=127.0.0.1\n");
    let ex = h.run(Request::post("/body", "first\nabcdef"), Canned::ok());
    assert!(ex.text().contains("line=[first\n]"), "{}", ex.text());
    assert!(ex.text().contains("three=[abc]"), "{}", ex.text());
    let ex = h.run(Request::get("/other"), Canned::ok().body("server"));
    assert_eq!((ex.local_reply, ex.text().as_str()), (false, "server"));
}

#[test]
fn lua_fetches_and_converters_through_sample() {
    let mut h = harness(&plugin_lua("samples"), r#"{ lua = "builtins" }"#, "");
    let bot = Request::get("/").header("user-agent", "SomeBot/1.0");
    assert_eq!(
        h.sample("lua.client_kind(kind=)", bot)
            .expect("compiles")
            .as_deref(),
        Some("kind=bot")
    );
    let human = Request::get("/").header("user-agent", "Firefox");
    assert_eq!(
        h.sample("lua.client_kind", human)
            .expect("compiles")
            .as_deref(),
        Some("human")
    );
    let tok = Request::get("/").header("x-token", "abcdef");
    assert_eq!(
        h.sample("req.hdr(x-token),lua.mask(3)", tok)
            .expect("compiles")
            .as_deref(),
        Some("abc***")
    );
    assert!(h.sample("lua.no_such_fetch", Request::get("/")).is_err());
    let ex = h.run(Request::get("/a?b=c"), Canned::ok());
    let up = ex.upstream.as_ref().expect("forwarded");
    assert_eq!(up.header("x-c-upper"), Some("MIXED"));
    assert_eq!(up.header("x-f-query"), Some("b=c"));
}

#[test]
fn lua_stick_lookup_and_vars() {
    let top = format!(
        "[[stick_table]]\nname = \"per_ip\"\ntype = \"ip\"\nsize = 1024\nexpire = \"60s\"\nstore = [\"http_req_cnt\", \"gpc0\"]\n\n{}\n{}",
        plugin_lua("stick_lookup"),
        plugin_lua("vars")
    );
    let mut h = harness(
        &top,
        r#"{ track_sc0 = "src", table = "per_ip" }, { lua = "vars_req" }"#,
        r#"{ lua = "stick_lookup" }, { lua = "vars_res" }"#,
    );
    let ex = h.run(Request::get("/v"), Canned::ok());
    assert_eq!(ex.header("x-st-req-cnt"), Some("1"));
    assert_eq!(ex.header("x-st-type"), Some("ip"));
    assert_eq!(ex.header("x-var-path"), Some("/v"));
    assert_eq!(ex.header("x-var-n"), Some("42"));
    assert_eq!(ex.header("x-priv"), Some("request"));
    assert_eq!(ex.var("txn.path").as_deref(), Some("/v"));
    let ex = h.run(Request::get("/v"), Canned::ok());
    assert_eq!(ex.header("x-st-req-cnt"), Some("2"));
    assert_eq!(h.table_value("per_ip", "127.0.0.1", "http_req_cnt"), 2);
}

#[test]
fn lua_body_filter_rewrites_both_bodies() {
    let top = plugin_lua("body_filter");
    let text = config(&top, "", "").replace(
        "http_response = []",
        "http_response = []\nfilters = [{ lua = \"body_filter\", args = [\"tag-a\", \"tag-b\"] }]",
    );
    let mut h = Harness::config_text(&text, repo())
        .start()
        .expect("harness");
    let ex = h.run(
        Request::post("/filter/upper", "some body"),
        Canned::ok().body("hello filter"),
    );
    assert_eq!(ex.header("x-filter-args"), Some("tag-a,tag-b"));
    assert_eq!(ex.header("x-filter-req-body"), Some("9"));
    assert_eq!(ex.text(), "HELLO FILTER");
    // filter.ERROR in the request phase: HAProxy's 400, from the proxy.
    let ex = h.run(Request::get("/filter/deny"), Canned::ok());
    assert_eq!((ex.status, ex.local_reply), (400, true));
    let ex = h.run(Request::get("/plain"), Canned::ok().body("as is"));
    assert_eq!(ex.text(), "as is");
}

#[test]
fn lua_maps_runtime_api_and_servers() {
    // servers.lua reports the backends `pool`, `hashed` and `checked`.
    let pools: String = ["pool", "hashed", "checked"]
        .iter()
        .map(|b| {
            format!("[[backend]]\nname = \"{b}\"\nserver = [{{ name = \"s1\", addr = \"127.0.0.1:4\" }}]\n\n")
        })
        .collect();
    let top = format!(
        "{pools}{}\n{}\n{}",
        plugin_lua("maps"),
        plugin_lua("runtime_api"),
        plugin_lua("servers")
    );
    let rules = r#"{ lua = "maps", if = "path_beg /maps" }, { lua = "runtime_map", if = "path_beg /rmap" }, { use_service = "lua.servers", if = "path_beg /servers" }"#;
    let mut h = harness(&top, rules, "");
    let ex = h.run(
        Request::get("/maps/img/42.jpg")
            .header("x-host", "static.example.com")
            .header("user-agent", "Mozilla/5.0")
            .header("x-ip", "2001:db8::7")
            .header("x-code", "503"),
        Canned::ok(),
    );
    assert_eq!(ex.status, 200, "{} {:?}", ex.text(), ex.logs);
    let up = ex.upstream.as_ref().expect("forwarded");
    assert_eq!(up.header("x-map-host"), Some("assets"));
    let ex = h.run(Request::get("/servers"), Canned::ok());
    assert!(ex.local_reply);
    assert!(ex.text().contains("s1"), "{} {:?}", ex.text(), ex.logs);
    let ex = h.run(
        Request::get("/rmap")
            .header("x-op", "set")
            .header("x-k", "k")
            .header("x-v", "v"),
        Canned::ok(),
    );
    assert!(ex.local_reply, "{}", ex.text());
}

// ------------------------------------- the harness and the daemon agree

/// The server's answer in the agreement test: the same bytes from the
/// daemon's real server as from the harness's canned one.
const PROBE_SERVER: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-server: raw\r\ncontent-length: 12\r\n\r\nhello world\n";

/// What a client and the server saw of one exchange, from either side.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    /// Response headers, minus framing and `date` (hyper's own on the wire).
    headers: Vec<(String, String)>,
    body: String,
    /// The request the server got: `x-probe*` headers and body; `None` if none went.
    upstream: Option<(Vec<(String, String)>, String)>,
    /// The log hook's line (`probe log <path> -> <status>`), if it ran.
    log: Option<String>,
}

fn seen_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = headers
        .filter(|(n, _)| {
            !["date", "content-length", "transfer-encoding", "connection"]
                .contains(&n.to_ascii_lowercase().as_str())
        })
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

fn probe_line(logs: &str, path: &str) -> Option<String> {
    let needle = format!("probe log {path} -> ");
    logs.lines().find_map(|l| {
        let rest = &l[l.find(&needle)? + needle.len()..];
        let status: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(format!("{needle}{status}"))
    })
}

/// The same plugin (`plugins/wasm/phase_probe`) and rules through the
/// harness and through the daemon, with the same server answer: every
/// case must come out the same on both, status, headers, body, what the
/// server got and the log hook's line. The tricky turns of the phase
/// sequence: a plugin's local reply from its request hook (does its
/// response hook see it?), `deny` and `return` rules after the plugin,
/// request bodies buffered by StopIteration (rewritten, or answered from
/// the body hook), the response body buffered or answered from its hook,
/// `http_response` rules (skipped on local replies) and
/// `http_after_response` rules (run on everything).
#[test]
fn harness_and_daemon_agree_on_the_phase_sequence() {
    let top = plugin_wasm("probe", &wasm("phase_probe"), None);
    let request = r#"{ wasm = "probe" },
  { deny = 403, if = "path_beg /deny" },
  { return = 200, content_type = "text/plain", body = "returned\n", if = "path_beg /ret" }"#;
    let response = r#"{ set_header = "x-resp-rule", value = "%[status]" }"#;
    let text = config(&top, request, response).replace(
        "http_response = [",
        "http_after_response = [{ set_header = \"x-after\", value = \"%[status]\" }]\nhttp_response = [",
    );
    let cases: [(&str, &str, &str); 10] = [
        ("GET", "/plain", ""),
        ("GET", "/local", ""),
        ("GET", "/deny", ""),
        ("GET", "/ret", ""),
        ("POST", "/buffer", "hello, body"),
        ("POST", "/reject", "this is bad"),
        ("POST", "/reject", "this is fine"),
        ("POST", "/plain", "streamed as it came"),
        ("GET", "/rbuffer", ""),
        ("GET", "/rreject", ""),
    ];
    let (status, rest) = PROBE_SERVER
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.split_once(' '))
        .expect("status line");
    let mut canned = Canned::status(status.parse().expect("status"));
    let head_end = rest.find("\r\n\r\n").expect("head end");
    for line in rest[..head_end].split("\r\n").skip(1) {
        let (n, v) = line.split_once(": ").expect("header line");
        canned = canned.header(n, v);
    }
    canned = canned.body(rest[head_end + 4..].to_string());

    // Through the harness.
    let mut h = Harness::config_text(&text, repo())
        .start()
        .expect("harness");
    let by_harness: Vec<Seen> = cases
        .iter()
        .map(|(method, path, body)| {
            let req = Request::new(method.parse().expect("method"), path).body(body.to_string());
            let ex = h.run(req, canned.clone());
            let logs: String = ex.logs.iter().map(|l| format!("{l}\n")).collect();
            Seen {
                status: ex.status,
                headers: seen_headers(ex.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))),
                body: ex.text(),
                upstream: ex.upstream.as_ref().map(|u| {
                    (
                        seen_headers(
                            u.headers
                                .iter()
                                .map(|(n, v)| (n.as_str(), v.as_bytes()))
                                .filter(|(n, _)| n.starts_with("x-probe")),
                        ),
                        String::from_utf8_lossy(&u.body).into_owned(),
                    )
                }),
                log: probe_line(&logs, path),
            }
        })
        .collect();
    drop(h);

    // Through the daemon, with a real server and client.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let by_daemon: Vec<Seen> = rt.block_on(async {
        let server = common::RawBackend::start(PROBE_SERVER).await;
        let ports = common::Ports::new();
        let cfg = format!("[global]\nworkers = 1\n\n{text}")
            .replace("127.0.0.1:1\"", &format!("{}\"", ports.web))
            .replace("127.0.0.1:2\"", &format!("{}\"", server.addr));
        let d = common::Daemon::start(&cfg, &[ports.web]).await;
        let mut seen = Vec::new();
        for (method, path, body) in cases {
            let before = server.requests().len();
            let mark = d.stderr().len();
            let req = common::request(method.parse().expect("method"), ports.web, path)
                .body(common::full(body.to_string()))
                .expect("request");
            let mut c = common::H1::connect(ports.web).await;
            let r = c.try_send(req).await.expect("response");
            let upstream = server.requests().get(before).map(|u| {
                (
                    seen_headers(
                        u.headers
                            .iter()
                            .map(|(n, v)| (n.as_str(), v.as_bytes()))
                            .filter(|(n, _)| n.to_ascii_lowercase().starts_with("x-probe")),
                    ),
                    String::from_utf8_lossy(&u.body).into_owned(),
                )
            });
            // The log hook runs once the response body is over.
            let mut log = None;
            for _ in 0..100 {
                log = probe_line(d.stderr().get(mark..).unwrap_or_default(), path);
                if log.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            seen.push(Seen {
                status: r.status.as_u16(),
                headers: seen_headers(r.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes()))),
                body: r.text(),
                upstream,
                log,
            });
        }
        seen
    });
    for (i, (h, d)) in by_harness.iter().zip(&by_daemon).enumerate() {
        assert_eq!(
            h, d,
            "case {:?}: the harness (left) and the daemon (right) differ",
            cases[i]
        );
    }
    // And what they agree on is the documented behaviour.
    let case = |path: &str, body: &str| {
        let i = cases
            .iter()
            .position(|c| c.1 == path && c.2 == body)
            .expect("case");
        &by_daemon[i]
    };
    let header = |s: &Seen, name: &str| {
        s.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let local = case("/local", "");
    assert_eq!(
        (local.status, local.body.as_str()),
        (403, "probe says no\n")
    );
    assert_eq!(
        header(local, "x-probe-resp").as_deref(),
        Some("403"),
        "{local:?}"
    );
    assert_eq!(header(local, "x-resp-rule"), None, "{local:?}");
    assert_eq!(
        header(local, "x-after").as_deref(),
        Some("403"),
        "{local:?}"
    );
    assert!(local.upstream.is_none());
    let plain = case("/plain", "");
    assert_eq!(header(plain, "x-resp-rule").as_deref(), Some("200"));
    assert_eq!(header(plain, "x-server").as_deref(), Some("raw"));
    let buffered = case("/buffer", "hello, body");
    assert_eq!(
        buffered.upstream.as_ref().map(|u| u.1.as_str()),
        Some("probe[11]:HELLO, BODY")
    );
    let rejected = case("/reject", "this is bad");
    assert_eq!(rejected.status, 400, "{rejected:?}");
    assert!(rejected.upstream.is_none());
    assert_eq!(case("/rbuffer", "").body, "hello world\n|probe saw 12");
    assert_eq!(case("/rreject", "").status, 502);
}

// ------------------------------------------------- the author's tools

/// The `sh` blocks of one `## ` section of docs/GUIDE.md, in order.
fn guide_steps(section: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("docs/GUIDE.md")).expect("read GUIDE.md");
    let mut steps = Vec::new();
    let mut in_section = false;
    let mut block: Option<String> = None;
    for line in text.lines() {
        if let Some(b) = &mut block {
            if line.starts_with("```") {
                steps.push(block.take().unwrap_or_default());
            } else {
                b.push_str(line);
                b.push('\n');
            }
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            in_section = title.starts_with(section);
        } else if in_section && line == "```sh" {
            block = Some(String::new());
        }
    }
    steps
}

/// Runs `script` with bash in `dir`, the built `portcullis` first on PATH,
/// cargo offline (only crates already in the registry cache).
fn sh(dir: &Path, script: &str) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_portcullis"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-euxc", script])
        .current_dir(dir)
        .env("PATH", path)
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "steps failed:\n{script}\n---\n{text}");
    text
}

/// GUIDE.md's "Run it and see it": the generated config (on free ports,
/// its `app` backend a real server, `file` its plugin file) in the daemon;
/// `denied` is answered 403 by the plugin, `/plugins` lists it, and a
/// request the server answers comes back with `headers` (the plugin's).
async fn run_generated(
    project: &Path,
    plugin: &str,
    file: (&str, String),
    denied: &str,
    headers: &[(&str, &str)],
) {
    let ports = common::Ports::new();
    let app = common::Backend::start("app").await;
    let cfg = std::fs::read_to_string(project.join("portcullis.toml"))
        .expect("config")
        .replace("127.0.0.1:18080", &ports.web.to_string())
        .replace("127.0.0.1:19901", &ports.admin.to_string())
        .replace("127.0.0.1:18081", &app.addr.to_string())
        .replace(file.0, &file.1);
    let _d = common::Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = common::get(ports.web, denied).await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    let plugins = common::get(ports.admin, "/plugins").await;
    assert!(plugins.text().contains(plugin), "{}", plugins.text());
    let r = common::get(ports.web, "/").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.text());
    assert_eq!(
        r.header("x-server").as_deref(),
        Some("app"),
        "{:?}",
        r.headers
    );
    for (name, value) in headers {
        assert_eq!(r.header(name).as_deref(), Some(*value), "{:?}", r.headers);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_rust_steps_scaffold_build_test_check_and_run() {
    let steps = guide_steps("In Rust");
    assert!(steps.len() >= 4, "GUIDE.md's Rust steps: {steps:?}");
    let dir = common::TempDir::new("guide-rust");
    // The scaffold, then its wasm build cache kept between runs of this test.
    let cache = repo().join("target").join("guide-rust");
    std::fs::create_dir_all(&cache).expect("cache dir");
    let script = format!(
        "{}\nln -s {:?} target\n{}",
        steps[0],
        cache.display().to_string(),
        steps[1..].join("\n")
    );
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || sh(&dir, &script)
    })
    .await
    .expect("steps");
    assert!(out.contains("3 passed, 0 failed"), "{out}");
    assert!(out.contains("Proxy-Wasm ABI 0.2.1"), "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
    // The crate depends on the SDK outside any workspace: it built on its own.
    let project = dir.path().join("my_filter");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).expect("manifest");
    assert!(
        manifest.contains("portcullis-guest = { path = "),
        "{manifest}"
    );
    // The edited config is what runs.
    run_generated(
        &project,
        "my_filter",
        ("\"target/", format!("\"{}/target/", project.display())),
        "/private/x",
        &[("x-hello", "world")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_lua_steps_scaffold_test_check_and_run() {
    let steps = guide_steps("In Lua");
    assert!(steps.len() >= 2, "GUIDE.md's Lua steps: {steps:?}");
    let dir = common::TempDir::new("guide-lua");
    let script = steps.join("\n");
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || sh(&dir, &script)
    })
    .await
    .expect("steps");
    assert!(out.contains("3 passed, 0 failed"), "{out}");
    assert!(
        out.contains("actions:    my_script (http-req, http-res)"),
        "{out}"
    );
    assert!(out.contains("fetches:    my_script_greeting"), "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
    let project = dir.path().join("my_script");
    let script = project.join("my_script.lua").display().to_string();
    run_generated(
        &project,
        "my_script",
        ("\"my_script.lua\"", format!("{script:?}")),
        "/admin",
        &[("x-hello", "world"), ("x-script", "my_script")],
    )
    .await;
}

#[test]
fn plugin_test_reports_failures_and_exits_1() {
    let dir = common::TempDir::new("plugin-test-fail");
    let out = common::run_bin(
        &[
            "plugin",
            "new",
            "--lang",
            "lua",
            "t",
            dir.path().join("t").to_str().expect("utf-8"),
        ],
        std::time::Duration::from_secs(30),
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let file = dir.path().join("t/plugin-test.toml");
    let text = std::fs::read_to_string(&file).expect("test file");
    std::fs::write(&file, text.replace("status = 403", "status = 418")).expect("write");
    let out = common::run_bin(
        &["plugin", "test", file.to_str().expect("utf-8")],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("FAIL  /admin is answered 403"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("status: expected 418, got 403"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("1 passed, 1 failed"), "{}", out.stdout);
    // A second scaffold into a non-empty directory is refused.
    let out = common::run_bin(
        &[
            "plugin",
            "new",
            "--lang",
            "lua",
            "t",
            dir.path().join("t").to_str().expect("utf-8"),
        ],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(out.status.and_then(|s| s.code()), Some(1));
    assert!(out.stderr.contains("not empty"), "{}", out.stderr);
}

#[test]
fn plugin_check_reports_imports_abi_and_what_the_host_lacks() {
    let dir = common::TempDir::new("plugin-check");
    // A module importing something the host does not provide.
    let bad = dir.write(
        "bad.wat",
        r#"(module
  (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
  (import "env" "proxy_no_such_call" (func (param i32) (result i32)))
  (memory (export "memory") 2 16)
  (func (export "proxy_abi_version_0_2_0"))
  (func (export "proxy_on_context_create") (param i32 i32)))"#,
    );
    let out = common::run_bin(
        &["plugin", "check", bad.to_str().expect("utf-8")],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("Proxy-Wasm ABI 0.2.0"), "{text}");
    assert!(text.contains("env.proxy_log (function)\n"), "{text}");
    assert!(
        text.contains("env.proxy_no_such_call (function)   <- NOT PROVIDED"),
        "{text}"
    );
    assert!(
        text.contains("memory: 2 pages of 64 KiB at start (128 KiB), at most 16 pages"),
        "{text}"
    );
    assert!(
        text.contains(
            "error: the daemon would refuse it: the module imports `env`.`proxy_no_such_call`"
        ),
        "{text}"
    );

    // An example module: loads as an HTTP filter, speaks portcullis_v1.
    let out = common::run_bin(
        &["plugin", "check", &wasm("hello")],
        std::time::Duration::from_secs(30),
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("Proxy-Wasm ABI 0.2.1"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("portcullis_v1"), "{}", out.stdout);
    assert!(
        out.stdout.contains("proxy_on_request_headers (function)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("ok: loads and starts as an HTTP filter"),
        "{}",
        out.stdout
    );

    // A module that needs its configuration: the start-up failure, with a hint.
    let out = common::run_bin(
        &["plugin", "check", &wasm("hmac_auth")],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("give it with --config"),
        "{}",
        out.stderr
    );

    // Lua: a script that fails under the sandbox, and one that registers things.
    let broken = dir.write("broken.lua", "core.register_action(\n");
    let out = common::run_bin(
        &["plugin", "check", broken.to_str().expect("utf-8")],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(out.stderr.contains("broken.lua"), "{}", out.stderr);
    let out = common::run_bin(
        &["plugin", "check", &lua("hello_service.lua")],
        std::time::Duration::from_secs(30),
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("services:   hello, body_echo"),
        "{}",
        out.stdout
    );
}
