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

/// The generated config, on free ports and with absolute plugin paths, in the daemon.
async fn run_generated(project: &Path, plugin: &str, module: &str) {
    let ports = common::Ports::new();
    let cfg = std::fs::read_to_string(project.join("portcullis.toml")).expect("config");
    let abs = project.join(module).display().to_string();
    let cfg = cfg
        .replace("127.0.0.1:18080", &ports.web.to_string())
        .replace("127.0.0.1:19901", &ports.admin.to_string())
        .replace(&format!("\"{module}\""), &format!("{abs:?}"));
    let _d = common::Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = common::get(ports.web, "/admin").await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    let plugins = common::get(ports.admin, "/plugins").await;
    assert!(plugins.text().contains(plugin), "{}", plugins.text());
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
    let ports = common::Ports::new();
    let cfg = std::fs::read_to_string(project.join("portcullis.toml"))
        .expect("config")
        .replace("127.0.0.1:18080", &ports.web.to_string())
        .replace("127.0.0.1:19901", &ports.admin.to_string())
        .replace("\"target/", &format!("\"{}/target/", project.display()));
    let _d = common::Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = common::get(ports.web, "/private/x").await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    let plugins = common::get(ports.admin, "/plugins").await;
    assert!(plugins.text().contains("my_filter"), "{}", plugins.text());
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
    assert!(out.contains("2 passed, 0 failed"), "{out}");
    assert!(
        out.contains("actions:    my_script (http-req, http-res)"),
        "{out}"
    );
    assert!(out.contains("fetches:    my_script_greeting"), "{out}");
    assert!(out.contains("configuration is valid"), "{out}");
    run_generated(&dir.path().join("my_script"), "my_script", "my_script.lua").await;
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
