//! Proxy-Wasm guests from other languages and SDKs, built here from source
//! and run through the binary: the "demo filter" written four times, in C
//! against wasi-libc (`plugins/wasm/c/demo.c`), in C++ against libc++ and
//! wasi-libc (`plugins/wasm/cpp/demo.cc`), in AssemblyScript with its
//! own ABI bindings (`plugins/wasm/assemblyscript/`) and in Rust with the
//! Envoy SDK, the `proxy-wasm` crate (`plugins/wasm/sdk_demo`). Each test
//! checks one behaviour on all four: header changes in both directions, a
//! local reply, an http call whose answer resumes or denies the request,
//! buffered body rewrites, shared data updated with CAS across workers,
//! ticks with logs, and a configuration the guest refuses.
//!
//! The C guest needs clang, lld, wasi-libc and the wasm32 compiler-rt
//! builtins, the C++ guest also libc++ for wasm32; the AssemblyScript guest Node.js and the pinned assemblyscript
//! compiler: `bash scripts/setup.sh` installs them. Without them these tests
//! fail, naming the script; they never skip.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

/// A daemon running every guest as plugin `<guest>` (config
/// `upstream=<upstream>`), each on its own frontend in front of `app`;
/// backend `auth` serves the guests' http calls, backend `down` has nothing
/// listening.
struct Proxy {
    d: Daemon,
    admin: SocketAddr,
    fronts: Vec<(&'static str, SocketAddr)>,
    app: Backend,
    auth: Backend,
}

async fn proxy(upstream: &str, workers: u32) -> Proxy {
    let guests = tokio::task::spawn_blocking(guests)
        .await
        .expect("build the guests");
    let app = Backend::start("app1").await;
    let auth = Backend::start("auth1").await;
    let down = free_addr();
    let ports = Ports::new();
    let workers = workers.to_string();
    let mut cfg = global_section(ports.admin, &[("workers", workers.as_str())]);
    let mut fronts = Vec::new();
    for g in guests {
        cfg.push_str(&format!(
            "[[plugin]]\nname = \"{}\"\nwasm = \"{}\"\non_error = \"fail_closed\"\nconfig = \"upstream={upstream}\"\n\n",
            g.name,
            g.wasm.display()
        ));
        let web = free_addr();
        cfg.push_str(&frontend_section(
            &format!("web_{}", g.name),
            web,
            "app",
            &format!("http_request = [ {{ wasm = \"{}\" }} ]\n", g.name),
        ));
        fronts.push((g.name, web));
    }
    cfg.push_str(&backend_section(
        "app",
        "roundrobin",
        &[("app1", app.addr, 1)],
        "",
    ));
    cfg.push_str(&backend_section(
        "auth",
        "roundrobin",
        &[("auth1", auth.addr, 1)],
        "",
    ));
    cfg.push_str(&backend_section(
        "down",
        "roundrobin",
        &[("down1", down, 1)],
        "",
    ));
    let mut ready: Vec<SocketAddr> = fronts.iter().map(|(_, a)| *a).collect();
    ready.push(ports.admin);
    // Default log level (info): the guests' info lines are logged.
    let d = Daemon::start(&cfg, &ready).await;
    Proxy {
        d,
        admin: ports.admin,
        fronts,
        app,
        auth,
    }
}

impl Proxy {
    /// Waits until the daemon's log has `line`.
    async fn log_has(&self, line: &str) {
        let d = &self.d;
        eventually(
            &format!("log line {line:?}"),
            Duration::from_secs(3),
            || {
                let found = d.stderr().contains(line);
                async move { found }
            },
        )
        .await;
    }

    /// No guest failed, was rebuilt or made a refused host call.
    async fn assert_clean(&self) {
        let r = get(self.admin, "/plugins").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let all = r.json()["plugins"].as_array().cloned().unwrap_or_default();
        for (name, _) in &self.fronts {
            let s = all
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap_or_else(|| panic!("plugin {name} not in /plugins: {all:?}"));
            for key in ["failed_requests", "rebuilds", "bad_host_calls"] {
                assert_eq!(s[key], 0, "{name}: {key} in {s}\n{}", self.d.stderr());
            }
        }
    }
}

async fn send(web: SocketAddr, req: http::request::Builder, body: Body) -> Resp {
    let mut c = H1::connect(web).await;
    c.send(req.body(body).expect("request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn headers_are_read_added_replaced_and_removed() {
    let p = proxy("auth", 1).await;
    for &(name, web) in &p.fronts {
        let r = send(
            web,
            request(Method::GET, web, "/h?x=1")
                .header("x-replace-me", "old")
                .header("x-remove-me", "1")
                .header("x-keep", "k"),
            empty(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
        // What the backend saw.
        let echo = r.echo();
        assert_eq!(echo.header("x-guest").as_deref(), Some(name), "{name}");
        assert_eq!(
            echo.header("x-seen").as_deref(),
            Some("GET /h?x=1"),
            "{name}"
        );
        assert_eq!(echo.header_all("x-replace-me"), ["replaced"], "{name}");
        assert_eq!(echo.header("x-remove-me"), None, "{name}");
        assert_eq!(echo.header("x-keep").as_deref(), Some("k"), "{name}");
        // What the client saw.
        assert_eq!(r.header("x-resp-guest").as_deref(), Some(name), "{name}");
        assert_eq!(r.header_all("x-server"), ["hidden"], "{name}");
        assert_eq!(r.header("x-secret"), None, "{name}");
        // proxy_on_log read the response status.
        p.log_has(&format!("{name} log GET /h?x=1 -> 200")).await;
    }
    assert_eq!(p.app.requests(), p.fronts.len());
    p.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_reply_never_reaches_the_backend() {
    let p = proxy("auth", 1).await;
    for &(name, web) in &p.fronts {
        let r = get(web, "/local/x").await;
        assert_eq!(r.status.as_u16(), 403, "{name}: {}", r.text());
        assert_eq!(r.text(), format!("{name} says no\n"));
        assert_eq!(r.header("x-local-by").as_deref(), Some(name));
        // proxy_on_log still runs, and sees the local reply's status.
        p.log_has(&format!("{name} log GET /local/x -> 403")).await;
    }
    assert_eq!(p.app.requests(), 0, "a local reply stays in the proxy");
    p.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_call_answer_resumes_or_denies_the_request() {
    let p = proxy("auth", 1).await;
    for (i, &(name, web)) in p.fronts.iter().enumerate() {
        // 2xx: the request goes on with what the call returned.
        let r = get(web, "/call/200/a").await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
        let echo = r.echo();
        assert_eq!(echo.path(), "/call/200/a", "{name}");
        assert_eq!(echo.header("x-auth-status").as_deref(), Some("200"));
        assert_eq!(echo.header("x-auth-server").as_deref(), Some("auth1"));
        let bytes: usize = echo
            .header("x-auth-bytes")
            .and_then(|b| b.parse().ok())
            .unwrap_or_default();
        // The auth backend's JSON echo of `GET /status/200`.
        assert!(bytes > 100, "{name}: call body of {bytes} bytes");
        // Anything else: denied, the backend never sees the request.
        let before = p.app.requests();
        let r = get(web, "/call/403/b").await;
        assert_eq!(r.status.as_u16(), 403, "{name}: {}", r.text());
        assert_eq!(r.text(), format!("{name}: auth said 403\n"));
        assert_eq!(p.app.requests(), before, "{name}: denied request went on");
        assert_eq!(
            p.auth.requests(),
            2 * (i + 1),
            "{name}: one call per request"
        );
    }
    p.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_call_without_an_answer_is_503() {
    let p = proxy("down", 1).await;
    for &(name, web) in &p.fronts {
        let r = get(web, "/call/200").await;
        assert_eq!(r.status.as_u16(), 503, "{name}: {}", r.text());
        assert_eq!(r.text(), format!("{name}: auth unreachable\n"));
    }
    assert_eq!(p.app.requests(), 0);
    p.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_are_buffered_and_rewritten() {
    let p = proxy("auth", 1).await;
    for &(name, web) in &p.fronts {
        // The request body arrives in three frames; the guest pauses until the end.
        let (tx, body) = chan_body();
        let feeder = tokio::spawn(async move {
            for part in ["hello ", "wasm ", "world"] {
                tx.send(Bytes::from_static(part.as_bytes()))
                    .await
                    .expect("feed the body");
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        let r = send(web, request(Method::POST, web, "/body"), body).await;
        feeder.await.expect("feeder");
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
        let text = r.text();
        let suffix_at = text
            .rfind(&format!("\n{name} saw "))
            .unwrap_or_else(|| panic!("{name}: no appended line in {text:?}"));
        let (json, tail) = text.split_at(suffix_at);
        assert_eq!(tail, format!("\n{name} saw {} bytes\n", json.len()));
        let echo = Echo(serde_json::from_str::<Value>(json).expect("echo JSON"));
        let want = format!("{name}:HELLO WASM WORLD");
        assert_eq!(echo.body(), want, "{name}");
        assert_eq!(echo.body_len(), want.len() as u64, "{name}");
        assert_eq!(
            r.header("content-length"),
            Some(text.len().to_string()),
            "{name}: the response length follows the rewrite"
        );
        // Other paths stream past untouched.
        let r = send(web, request(Method::POST, web, "/plain"), full("as is")).await;
        assert_eq!(r.echo().body(), "as is", "{name}");
    }
    p.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_data_counts_with_cas_across_workers() {
    // Two workers, each with its own instance of every guest, race on the
    // same counter (and on the tick counter, every 100 ms).
    let p = proxy("auth", 2).await;
    const N: usize = 40;
    for &(name, web) in &p.fronts {
        let tasks: Vec<_> = (0..N)
            .map(|_| tokio::spawn(async move { get(web, "/count").await }))
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            let r = t.await.expect("request task");
            assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
            let n: usize = r
                .echo()
                .header("x-hits")
                .and_then(|h| h.parse().ok())
                .unwrap_or_else(|| panic!("{name}: no x-hits in {}", r.text()));
            seen.push(n);
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=N).collect::<Vec<_>>(),
            "{name}: every increment counted once"
        );
        // The guests hold 5 ms between read and write (longer than a scheduler
        // slice, so even on one CPU): the workers did race
        // (so the count above proves the CAS), and the loser retried.
        p.log_has(&format!("{name} cas retry")).await;
    }
    p.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ticks_run_without_traffic_and_log() {
    let p = proxy("auth", 2).await;
    for &(name, _) in &p.fronts {
        // Both workers tick from start-up; the first ticks are logged.
        p.log_has(&format!("{name} tick 1 total")).await;
        p.log_has(&format!("{name} tick 3 total")).await;
    }
    for &(name, web) in &p.fronts {
        let ticks = || async move {
            get(web, "/ticks")
                .await
                .echo()
                .header("x-ticks")
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name}: no x-ticks"))
        };
        let first = ticks().await;
        // Two workers, three ticks logged each.
        assert!(first >= 3, "{name}: {first} ticks");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let later = ticks().await;
        assert!(later > first, "{name}: ticks stopped at {first}");
    }
    let log = p.d.stderr();
    for &(name, _) in &p.fronts {
        // The first three ticks of each worker's instance, and no more.
        assert_eq!(
            log.matches(&format!("{name} tick 3 total")).count(),
            2,
            "{name}:\n{log}"
        );
        assert_eq!(log.matches(&format!("{name} tick 4 ")).count(), 0);
    }
    p.assert_clean().await;
}

#[test]
fn a_guest_refusing_its_config_is_a_config_error() {
    // proxy_on_configure reads the plugin configuration (buffer 7) and
    // returns 0 without "upstream=<backend>": `check` fails, naming the
    // plugin and quoting its warning.
    let dir = TempDir::new("wasm-sdks-check");
    for g in guests() {
        let check = |config: &str| {
            let ports = Ports::new();
            let cfg = format!(
                "{}[[plugin]]\nname = \"{}\"\nwasm = \"{}\"\n{config}\n{}{}",
                global_section(ports.admin, &[]),
                g.name,
                g.wasm.display(),
                frontend_section(
                    "web",
                    ports.web,
                    "app",
                    &format!("http_request = [ {{ wasm = \"{}\" }} ]\n", g.name)
                ),
                backend_section("app", "roundrobin", &[("s1", free_addr(), 1)], ""),
            );
            let path = dir.write("check.toml", &cfg);
            let out = run_bin(
                &["check", "-c", &path.display().to_string()],
                Duration::from_secs(30),
            );
            (out.status.and_then(|s| s.code()), out.stderr)
        };
        for bad in ["", "config = \"nonsense\""] {
            let (code, stderr) = check(bad);
            assert_eq!(code, Some(1), "{}: {bad:?} accepted: {stderr}", g.name);
            // The error names the plugin and quotes what it logged.
            assert!(
                stderr.contains(&format!("plugin \"{}\"", g.name))
                    && stderr.contains(&format!("{} needs config", g.name)),
                "{}: {stderr}",
                g.name
            );
        }
        let (code, stderr) = check("config = \"upstream=app\"");
        assert_eq!(code, Some(0), "{}: {stderr}", g.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_calls_go_to_the_clusters_servers_that_are_up() {
    // Envoy's cluster semantics for a call naming a backend: its servers in
    // turn, only those up (health checks), a 503 "no healthy upstream"
    // when none is.
    let rust = tokio::task::spawn_blocking(guests)
        .await
        .expect("build the guests")
        .iter()
        .find(|g| g.name == "rust")
        .expect("the Rust guest");
    let app = Backend::start("app1").await;
    let auth1 = Backend::start("auth1").await;
    let auth2 = Backend::start("auth2").await;
    let dead = free_addr();
    let ports = Ports::new();
    let mut cfg = global_section(ports.admin, &[]);
    let check = "health_check = { path = \"/\", interval = \"100ms\", rise = 1, fall = 1 }";
    type Servers<'a> = Vec<(&'a str, SocketAddr, u32)>;
    let clusters: [(&str, Servers, &str); 3] = [
        (
            "both",
            vec![("auth1", auth1.addr, 1), ("auth2", auth2.addr, 1)],
            "",
        ),
        (
            "half",
            vec![("auth1", auth1.addr, 1), ("dead", dead, 1)],
            check,
        ),
        ("none", vec![("dead", dead, 1)], check),
    ];
    let mut fronts = Vec::new();
    for (name, servers, extra) in &clusters {
        cfg.push_str(&format!(
            "[[plugin]]\nname = \"to_{name}\"\nwasm = \"{}\"\non_error = \"fail_closed\"\nconfig = \"upstream={name}\"\n\n",
            rust.wasm.display()
        ));
        let web = free_addr();
        cfg.push_str(&frontend_section(
            &format!("web_{name}"),
            web,
            "app",
            &format!("http_request = [ {{ wasm = \"to_{name}\" }} ]\n"),
        ));
        cfg.push_str(&backend_section(name, "roundrobin", servers, extra));
        fronts.push(web);
    }
    cfg.push_str(&backend_section(
        "app",
        "roundrobin",
        &[("app1", app.addr, 1)],
        "",
    ));
    let _d = Daemon::start(&cfg, &fronts).await;
    let server_of = |r: &Resp| r.echo().header("x-auth-server");
    // Both up: the calls alternate.
    let mut seen = Vec::new();
    for i in 0..4 {
        let r = get(fronts[0], &format!("/call/200/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        seen.push(server_of(&r).unwrap_or_default());
    }
    assert_eq!(seen.iter().filter(|s| *s == "auth1").count(), 2, "{seen:?}");
    assert_eq!(seen.iter().filter(|s| *s == "auth2").count(), 2, "{seen:?}");
    // Once the dead server is down, every call goes to the live one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..4 {
        let r = get(fronts[1], &format!("/call/200/h{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.text());
        assert_eq!(server_of(&r).as_deref(), Some("auth1"));
    }
    // No server up: the guest gets Envoy's local 503.
    let r = get(fronts[2], "/call/200/n").await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.text());
    assert_eq!(r.text(), "rust: auth said 503\n");
    assert_eq!(app.requests(), 8);
}
