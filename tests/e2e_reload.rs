//! Reload without losing a request (issue 19), through the real binary:
//! `POST /reload` and `SIGHUP` under keep-alive and new-connection load, a
//! broken config that changes nothing, listeners added and removed, a
//! binary upgrade that takes over the listening sockets, connections that
//! keep their frontend when a reload reorders or removes frontends, log
//! settings that follow a reload, a plugin reload that reads only that
//! plugin's file, and replaced generations freed once their last request ends.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use tokio::task::JoinHandle;

/// The Lua plugin of generation `n`: an action that tags requests with `v<n>`.
fn lua_script(n: usize) -> String {
    format!(
        "core.register_action(\"tag\", {{\"http-req\"}}, function(txn)\n  txn.http:req_set_header(\"x-lua\", \"v{n}\")\nend)\n"
    )
}

/// Generation `n` of the config: routes to backend `a` or `b` (a route
/// change every reload), runs the Lua plugin, tracks clients in a stick
/// table declared the same way every time (so its entries stay).
fn config_gen(ports: &Ports, a: &Backend, b: &Backend, lua: &Path, n: usize) -> String {
    let backend = if n.is_multiple_of(2) { "a" } else { "b" };
    format!(
        "{}{}{}{}\n[[stick_table]]\nname = \"clients\"\ntype = \"ip\"\nsize = \"1k\"\nstore = [\"http_req_cnt\"]\n\n[[plugin]]\nname = \"tagger\"\nlua = \"{}\"\n",
        global_section(ports.admin, &[("admin_token", ADMIN_TOKEN_TOML)]),
        frontend_section(
            "web",
            ports.web,
            backend,
            "http_request = [\n  { track_sc0 = \"src\", table = \"clients\" },\n  { lua = \"tag\" },\n]\n"
        ),
        backend_section("a", "roundrobin", &[("a", a.addr, 1)], ""),
        backend_section("b", "roundrobin", &[("b", b.addr, 1)], ""),
        lua.display()
    )
}

/// Client load until `stop`: `keep_alive` clients reuse one connection each
/// (opening another only when the server closes it), `fresh` clients open one
/// per request. Every request must be answered 200 by a backend.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, keep_alive: usize, fresh: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..keep_alive + fresh {
            let reuse = i < keep_alive;
            let (stop, ok, failed, errors) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&errors),
            );
            tasks.push(tokio::spawn(async move {
                let mut conn: Option<H1> = None;
                while !stop.load(SeqCst) {
                    if conn.is_none() {
                        conn = Some(H1::connect(addr).await);
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let r = tokio::time::timeout(IO_TIMEOUT, c.try_send(get_req(addr, "/"))).await;
                    match r {
                        Ok(Ok(resp)) if resp.status == StatusCode::OK => {
                            ok.fetch_add(1, SeqCst);
                            let closes = resp
                                .header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                            if !reuse || closes {
                                conn = None;
                            }
                        }
                        other => {
                            failed.fetch_add(1, SeqCst);
                            let what = match other {
                                Ok(Ok(resp)) => format!("status {} {}", resp.status, resp.text()),
                                Ok(Err(e)) => format!("error {e}"),
                                Err(_) => "timeout".to_string(),
                            };
                            if let Ok(mut e) = errors.lock() {
                                e.push(what);
                            }
                            conn = None;
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            failed,
            errors,
            tasks,
        }
    }

    /// Stops the clients; returns (answered, failed, the first failures).
    async fn finish(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, SeqCst);
        for t in self.tasks {
            let _ = within("load task", Duration::from_secs(15), t).await;
        }
        let errors = self.errors.lock().map(|e| e.clone()).unwrap_or_default();
        (
            self.ok.load(SeqCst),
            self.failed.load(SeqCst),
            errors.into_iter().take(5).collect(),
        )
    }
}

async fn reload(admin: SocketAddr) -> Resp {
    admin_send(admin, Method::POST, "/reload", "").await
}

/// The `http_req_cnt` of the `clients` entry for 127.0.0.1.
async fn tracked_requests(admin: SocketAddr) -> u64 {
    let t = get(admin, "/tables/clients").await.json();
    t["entries"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["key"] == "127.0.0.1"))
        .and_then(|e| e["data"]["http_req_cnt"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_load_lose_no_request() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let ports = Ports::new();
    let dir = TempDir::new("reload-lua");
    let lua = dir.write("tag.lua", &lua_script(0));
    let d = Daemon::start(
        &config_gen(&ports, &a, &b, &lua, 0),
        &[ports.web, ports.admin],
    )
    .await;
    let first = get(ports.web, "/").await;
    assert_eq!(first.echo().header("x-lua").as_deref(), Some("v0"));
    assert_eq!(first.header("x-server").as_deref(), Some("a"));

    let load = Load::start(ports.web, 4, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 1..=20 {
        let before = tracked_requests(ports.admin).await;
        std::fs::write(&lua, lua_script(n)).expect("write lua");
        std::fs::write(&d.config_path, config_gen(&ports, &a, &b, &lua, n)).expect("write config");
        let r = reload(ports.admin).await;
        assert_eq!(r.status, StatusCode::OK, "reload {n}: {}", r.text());
        assert_eq!(r.json()["generation"], n as u64, "reload {n}: {}", r.text());
        // The new route and the new plugin code, right after the answer.
        let resp = get(ports.web, "/").await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(
            resp.echo().header("x-lua"),
            Some(format!("v{n}")),
            "reload {n}"
        );
        let server = if n % 2 == 0 { "a" } else { "b" };
        assert_eq!(
            resp.header("x-server").as_deref(),
            Some(server),
            "reload {n}"
        );
        // The stick table kept its entry: the count goes on from where it was.
        let after = tracked_requests(ports.admin).await;
        assert!(
            after > before,
            "reload {n}: table entry lost ({before} then {after})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "failed requests during reloads: {errors:?}");
    assert!(ok > 100, "too little load went through: {ok}");

    // SIGHUP does the same as POST /reload.
    std::fs::write(&lua, lua_script(99)).expect("write lua");
    d.signal(libc::SIGHUP);
    eventually("SIGHUP reload", Duration::from_secs(10), || async {
        get(ports.web, "/").await.echo().header("x-lua").as_deref() == Some("v99")
    })
    .await;
    let st = stats(ports.admin).await;
    assert_eq!(st["reload"]["succeeded"], 21, "{st}");
    assert_eq!(st["reload"]["failed"], 0, "{st}");
    assert!(st["reload"]["last_success_unix"].as_u64().is_some(), "{st}");
    let metrics = get(ports.admin, "/metrics").await.text();
    assert!(
        metrics.contains("portcullis_reloads_total{result=\"success\"} 21"),
        "{metrics}"
    );
    // Replaced generations went: their Lua states were closed on every worker.
    assert!(
        d.stderr()
            .contains("reloaded: new requests use the new configuration"),
        "{}",
        d.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_changes_nothing_and_says_why() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let ports = Ports::new();
    let dir = TempDir::new("reload-bad");
    let lua = dir.write("tag.lua", &lua_script(1));
    let d = Daemon::start(
        &config_gen(&ports, &a, &b, &lua, 0),
        &[ports.web, ports.admin],
    )
    .await;
    let good = std::fs::read_to_string(&d.config_path).expect("config");

    // A typo in a rule: the check fails at its line, nothing changes.
    let broken = good.replace("{ lua = \"tag\" }", "{ lua = \"tga\" }");
    std::fs::write(&d.config_path, &broken).expect("write");
    let line = broken
        .lines()
        .position(|l| l.contains("tga"))
        .expect("line")
        + 1;
    let r = reload(ports.admin).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
    let at = format!("{}:{line}:", d.config_path.display());
    assert!(msg.starts_with(&at), "{msg} (expected {at})");
    let resp = get(ports.web, "/").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-server").as_deref(), Some("a"));

    // A plugin that fails to load fails the reload as a whole.
    std::fs::write(&d.config_path, &good).expect("write");
    std::fs::write(
        &lua,
        "core.register_action(\"tag\", {\"http-req\"}, function(txn)\n  oops(\nend)\n",
    )
    .expect("lua");
    let r = reload(ports.admin).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("tag.lua"), "{}", r.text());
    assert_eq!(
        get(ports.web, "/").await.echo().header("x-lua").as_deref(),
        Some("v1"),
        "the old plugin code serves on"
    );
    // The failure is logged with the same message, and counted.
    let logged = d
        .wait_stderr_line(Duration::from_secs(5), |l| {
            l.contains("reload failed") && l.contains(&at)
        })
        .await;
    assert!(logged.is_some(), "{}", d.stderr());
    let st = stats(ports.admin).await;
    assert_eq!(st["reload"]["failed"], 2, "{st}");
    assert_eq!(st["reload"]["succeeded"], 0, "{st}");
    assert!(st["reload"]["last_failure_unix"].as_u64().is_some(), "{st}");
    assert!(
        st["reload"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("tag.lua")),
        "{st}"
    );

    // The token is required, as for every state-changing endpoint.
    let anon = H1::connect(ports.admin)
        .await
        .send(
            request(Method::POST, ports.admin, "/reload")
                .body(full(String::new()))
                .expect("req"),
        )
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED, "{}", anon.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_config_and_restart_settings_are_reported() {
    let a = Backend::start("a").await;
    let [web, web2, web3, admin] = free_addrs();
    let ports = Ports { web, admin };
    let servers = [("a", a.addr, 1)];
    let cfg = |binds: &[(&str, SocketAddr)], workers: &str| {
        let mut out = global_section(
            admin,
            &[("admin_token", ADMIN_TOKEN_TOML), ("workers", workers)],
        );
        for (name, addr) in binds {
            out.push_str(&frontend_section(name, *addr, "a", ""));
        }
        out.push_str(&backend_section("a", "roundrobin", &servers, ""));
        out
    };
    let d = Daemon::start(
        &cfg(&[("web", web), ("web2", web2)], "2"),
        &[web, web2, admin],
    )
    .await;
    // A kept-alive connection on the listener that stays.
    let mut kept = H1::connect(web).await;
    assert_eq!(kept.get("/").await.status, StatusCode::OK);

    std::fs::write(&d.config_path, cfg(&[("web", web), ("web3", web3)], "3")).expect("write");
    let r = reload(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(
        body["listeners_added"],
        serde_json::json!([web3.to_string()])
    );
    assert_eq!(
        body["listeners_removed"],
        serde_json::json!([web2.to_string()])
    );
    assert!(
        body["restart_required"][0]
            .as_str()
            .is_some_and(|m| m.contains("workers") && m.contains("restart")),
        "{body}"
    );
    assert_eq!(
        kept.get("/").await.status,
        StatusCode::OK,
        "kept-alive connection"
    );
    assert_eq!(get(web3, "/").await.status, StatusCode::OK, "new listener");
    eventually("web2 stops accepting", Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(web2).await.is_err()
    })
    .await;
    let _ = ports;
}

/// A child process killed when the test ends, also on a failed assertion.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `portcullis run` with extra arguments.
fn spawn_run(config: &Path, extra: &[&str]) -> Killed {
    Killed(
        Command::new(BIN)
            .arg("run")
            .arg("-c")
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn portcullis"),
    )
}

/// The old process drains as HAProxy's soft-stop does: every kept-alive
/// connection's next request is answered with `Connection: close`, an idle
/// one is closed only after a short window for a request already on its
/// way, and a connection accepted just before the hand-over is served too.
/// The load's clients retry nothing: not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_takes_over_under_load() {
    let a = Backend::start("a").await;
    let ports = Ports::new();
    let dir = TempDir::new("upgrade");
    let cfg = format!(
        "{}{}{}",
        global_section(ports.admin, &[("workers", "2")]),
        frontend_section("web", ports.web, "a", ""),
        backend_section("a", "roundrobin", &[("a", a.addr, 1)], "")
    );
    let config: PathBuf = dir.write("portcullis.toml", &cfg);
    let sock = dir.path().join("upgrade.sock");
    let sock_s = sock.to_str().expect("utf-8 path");
    let mut old = spawn_run(&config, &["--upgrade-socket", sock_s]);
    eventually("old daemon serves", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(ports.web).await.is_ok() && sock.exists()
    })
    .await;
    let load = Load::start(ports.web, 3, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new process (one worker more) takes over; the old one drains and exits.
    let cfg3 = cfg.replace("workers = 2", "workers = 3");
    let config3 = dir.write("portcullis3.toml", &cfg3);
    let mut new = spawn_run(
        &config3,
        &["--upgrade-socket", sock_s, "--upgrade-from", sock_s],
    );
    let exited = within("old process exits", Duration::from_secs(15), async {
        loop {
            if let Some(st) = old.0.try_wait().expect("try_wait") {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(exited.success(), "old process: {exited}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served_by_new = get(ports.web, "/").await;
    assert_eq!(served_by_new.status, StatusCode::OK);
    assert_eq!(
        stats(ports.admin).await["workers"],
        3,
        "the admin API is the new process's"
    );
    let (ok, failed, errors) = load.finish().await;
    assert_eq!(failed, 0, "failed requests during the upgrade: {errors:?}");
    assert!(ok > 50, "too little load went through: {ok}");
    assert!(
        new.0.try_wait().expect("try_wait").is_none(),
        "new process still runs"
    );
}

/// Two frontends, each tagging its responses with its name, in `order`
/// (`"one"` on `one`, `"two"` on `two`); a frontend left out of `order` is gone.
fn two_frontends(admin: SocketAddr, a: &Backend, order: &[(&str, SocketAddr)]) -> String {
    // Connections stay silent a while before their first request.
    let mut out = global_section(
        admin,
        &[
            ("admin_token", ADMIN_TOKEN_TOML),
            ("timeout.http_request", "\"10s\""),
        ],
    );
    for (name, addr) in order {
        out.push_str(&frontend_section(
            name,
            *addr,
            "a",
            &format!("http_response = [{{ set_header = \"x-fe\", value = \"{name}\" }}]\n"),
        ));
    }
    out.push_str(&backend_section("a", "roundrobin", &[("a", a.addr, 1)], ""));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_its_frontend_when_a_reload_reorders_them() {
    let a = Backend::start("a").await;
    let [one, two, admin] = free_addrs();
    let d = Daemon::start(
        &two_frontends(admin, &a, &[("one", one), ("two", two)]),
        &[one, two, admin],
    )
    .await;
    // Accepted by `one` (index 0) while it is first; its first request comes
    // only after the reload that puts `two` first.
    let mut quiet = H1::connect(one).await;
    // One that already served a request on `two` (index 1), then idles.
    let mut busy = H1::connect(two).await;
    let r = busy.get("/before").await;
    assert_eq!(r.header("x-fe").as_deref(), Some("two"));
    // A connection accepted but silent until after the reload (the accept is
    // asynchronous: give it time to happen before the reload).
    let mut quiet_two = H1::connect(two).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    std::fs::write(
        &d.config_path,
        two_frontends(admin, &a, &[("two", two), ("one", one)]),
    )
    .expect("write");
    let r = reload(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    for (conn, name) in [
        (&mut quiet, "one"),
        (&mut busy, "two"),
        (&mut quiet_two, "two"),
    ] {
        let r = conn.get("/after").await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
        assert_eq!(
            r.header("x-fe").as_deref(),
            Some(name),
            "a connection accepted by {name} got another frontend's rules after the reload"
        );
    }
    // New connections: each address its own frontend.
    assert_eq!(get(one, "/").await.header("x-fe").as_deref(), Some("one"));
    assert_eq!(get(two, "/").await.header("x-fe").as_deref(), Some("two"));
    // Counters follow the frontend by name, not by position.
    let st = stats(admin).await;
    let requests = |name: &str| named(&st["frontends"], name).map(|f| f["requests"].clone());
    assert_eq!(requests("one"), Some(serde_json::json!(2)), "{st}");
    assert_eq!(requests("two"), Some(serde_json::json!(4)), "{st}");

    // A reload that removes `one`: a connection it accepted (silent until
    // then) is not served by `two`'s rules but told the frontend is gone.
    let mut orphan = H1::connect(one).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&d.config_path, two_frontends(admin, &a, &[("two", two)])).expect("write");
    let r = reload(admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = orphan.get("/orphan").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("x-fe"), None);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert_eq!(a.requests(), 6, "the orphan's request reached no server");
}

/// Datagrams on `rx` for `wait`, as text.
fn datagrams(rx: &std::net::UdpSocket, wait: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_targets_formats_and_failure_line_limits_follow_a_reload() {
    let a = Backend::start("a").await;
    let ports = Ports::new();
    let [rx1, rx2] = [0, 1].map(|_| {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind syslog receiver");
        rx.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        rx
    });
    let dir = TempDir::new("reload-logs");
    // Fails on every request (fail_open: the request goes on): one failure line each, up to the burst.
    let lua = dir.write(
        "fail.lua",
        "core.register_action(\"fail\", {\"http-req\"}, function(txn)\n  error(\"boom-\" .. txn.sf:path())\nend)\n",
    );
    let cfg = |format: &str, rx: &std::net::UdpSocket, burst: u32| {
        let target = format!("\"udp://{}\"", rx.local_addr().expect("addr"));
        format!(
            "{}{}{}\n[[plugin]]\nname = \"fail\"\nlua = \"{}\"\n",
            global_section(
                ports.admin,
                &[
                    ("admin_token", ADMIN_TOKEN_TOML),
                    ("access_log", &format!("\"{format}\"")),
                    ("access_log_target", &target),
                    ("plugin_failure_log_burst", &burst.to_string()),
                    ("plugin_failure_log_interval", "\"1h\""),
                ]
            ),
            frontend_section(
                "web",
                ports.web,
                "a",
                "http_request = [{ lua = \"fail\" }]\n"
            ),
            backend_section("a", "roundrobin", &[("a", a.addr, 1)], ""),
            lua.display()
        )
    };
    let d = Daemon::start(&cfg("text", &rx1, 1), &[ports.web, ports.admin]).await;
    for i in 0..3 {
        assert_eq!(
            get(ports.web, &format!("/gen0-{i}")).await.status,
            StatusCode::OK
        );
    }
    let first = tokio::task::spawn_blocking(move || (datagrams(&rx1, Duration::from_secs(1)), rx1))
        .await
        .expect("receiver");
    let (seen, rx1) = first;
    assert!(
        seen.iter()
            .any(|l| l.contains("\"GET /gen0-2 HTTP/1.1\" 200")),
        "a text line on the first target: {seen:?}"
    );

    std::fs::write(&d.config_path, cfg("json", &rx2, 3)).expect("write");
    let r = reload(ports.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["restart_required"],
        serde_json::json!([]),
        "log settings need no restart: {}",
        r.text()
    );
    for i in 0..3 {
        assert_eq!(
            get(ports.web, &format!("/gen1-{i}")).await.status,
            StatusCode::OK
        );
    }
    let (old, new) = tokio::task::spawn_blocking(move || {
        (
            datagrams(&rx1, Duration::from_millis(500)),
            datagrams(&rx2, Duration::from_secs(1)),
        )
    })
    .await
    .expect("receivers");
    assert!(
        !old.iter().any(|l| l.contains("/gen1-")),
        "the old target got lines after the reload: {old:?}"
    );
    for i in 0..3 {
        let path = format!("\"path\":\"/gen1-{i}\"");
        let line = new.iter().find(|l| l.contains(&path));
        let line =
            line.unwrap_or_else(|| panic!("no JSON line for /gen1-{i} on the new target: {new:?}"));
        let json = line.get(line.find('{').unwrap_or(0)..).unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["status"], 200, "{line}");
    }
    // The failure-line burst: 1 before the reload, 3 after it.
    let failures = |round: &str| {
        d.stderr()
            .lines()
            .filter(|l| l.contains(&format!("boom-/{round}")))
            .count()
    };
    eventually("failure lines logged", Duration::from_secs(5), || async {
        failures("gen1-") >= 3
    })
    .await;
    assert_eq!(
        failures("gen0-"),
        1,
        "burst 1 before the reload\n{}",
        d.stderr()
    );
    assert_eq!(failures("gen1-"), 3, "burst 3 after it\n{}", d.stderr());
}

/// A Lua plugin `name` whose action sets header `x-<name>` to `value`.
fn tagger(name: &str, value: &str) -> String {
    format!(
        "core.register_action(\"{name}\", {{\"http-req\"}}, function(txn)\n  txn.http:req_set_header(\"x-{name}\", \"{value}\")\nend)\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_reload_reads_only_that_plugins_file() {
    let a = Backend::start("a").await;
    let ports = Ports::new();
    let dir = TempDir::new("reload-plugin");
    let p1 = dir.write("p1.lua", &tagger("p1", "old"));
    let p2 = dir.write("p2.lua", &tagger("p2", "old"));
    let cfg = format!(
        "{}{}{}\n[[plugin]]\nname = \"p1\"\nlua = \"{}\"\n\n[[plugin]]\nname = \"p2\"\nlua = \"{}\"\n",
        global_section(ports.admin, &[("admin_token", ADMIN_TOKEN_TOML)]),
        frontend_section(
            "web",
            ports.web,
            "a",
            "http_request = [{ lua = \"p1\" }, { lua = \"p2\" }]\n"
        ),
        backend_section("a", "roundrobin", &[("a", a.addr, 1)], ""),
        p1.display(),
        p2.display()
    );
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let tags = || async {
        let r = get(ports.web, "/").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let e = r.echo();
        (e.header("x-p1"), e.header("x-p2"))
    };
    let old = || Some("old".to_string());
    let new = || Some("new".to_string());
    assert_eq!(tags().await, (old(), old()));

    // Both files change on disk (and the config too); only p1 is reloaded.
    std::fs::write(&p1, tagger("p1", "new")).expect("write");
    std::fs::write(&p2, tagger("p2", "new")).expect("write");
    std::fs::write(
        &d.config_path,
        cfg.replace("lua = \"p2\" }]", "lua = \"p1\" }]"),
    )
    .expect("write");
    let r = admin_send(ports.admin, Method::POST, "/plugins/p1/reload", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        tags().await,
        (new(), old()),
        "p1's file read again; p2's and the config file not"
    );
    // p2 in turn: p1 stays as it was loaded.
    std::fs::write(&p1, tagger("p1", "newer")).expect("write");
    let r = admin_send(ports.admin, Method::POST, "/plugins/p2/reload", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(tags().await, (new(), new()));
    // A broken file of another plugin does not fail this plugin's reload.
    std::fs::write(
        &p2,
        "core.register_action(\"p2\", {\"http-req\"}, function(txn)\n",
    )
    .expect("write");
    let r = admin_send(ports.admin, Method::POST, "/plugins/p1/reload", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(tags().await, (Some("newer".to_string()), new()));
    // Its own broken file does, and names it.
    let r = admin_send(ports.admin, Method::POST, "/plugins/p2/reload", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.text().contains("p2.lua"), "{}", r.text());
    assert_eq!(tags().await, (Some("newer".to_string()), new()));
}

/// `/stats`' count of runtime generations in memory.
async fn generations_live(admin: SocketAddr) -> u64 {
    stats(admin).await["reload"]["generations_live"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_generations_are_freed_when_their_last_request_ends() {
    let a = Backend::start("a").await;
    let ports = Ports::new();
    let dir = TempDir::new("reload-free");
    let lua = dir.write("tag.lua", &lua_script(0));
    // Error pages on the frontend: a connection keeps a copy, never the runtime.
    // The idle connection must outlast every reload (however slow the machine).
    let cfg = |n: usize| {
        config_gen(&ports, &a, &a, &lua, n)
            .replace(
                "http_request = [",
                "error_replies = { 503 = { body = \"down\" } }\nhttp_request = [",
            )
            .replace("keep_alive = \"5s\"", "keep_alive = \"60s\"")
    };
    let d = Daemon::start(&cfg(0), &[ports.web, ports.admin]).await;
    assert_eq!(generations_live(ports.admin).await, 1);
    // An idle keep-alive connection, and a request in flight across the reloads.
    let mut idle = H1::connect(ports.web).await;
    assert_eq!(idle.get("/").await.status, StatusCode::OK);
    let slow = tokio::spawn(async move { get(ports.web, "/delay/1500").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 1..=10 {
        std::fs::write(&lua, lua_script(n)).expect("write lua");
        std::fs::write(&d.config_path, cfg(n)).expect("write config");
        let r = reload(ports.admin).await;
        assert_eq!(r.status, StatusCode::OK, "reload {n}: {}", r.text());
    }
    // Generation 0 is held by the slow request; 1 to 9 by nothing.
    let live = generations_live(ports.admin).await;
    assert!(
        (2..=3).contains(&live),
        "while a request of generation 0 runs: {live} generations live"
    );
    let slow = within("slow request", Duration::from_secs(10), slow)
        .await
        .expect("slow request task");
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(
        slow.echo().header("x-lua").as_deref(),
        Some("v0"),
        "it ran on generation 0 to its end"
    );
    eventually(
        "old generations dropped",
        Duration::from_secs(5),
        || async { generations_live(ports.admin).await == 1 },
    )
    .await;
    let metrics = get(ports.admin, "/metrics").await.text();
    assert!(
        metrics.contains("portcullis_config_generations_live 1\n"),
        "{metrics}"
    );
    // The idle connection outlived them all, and serves on the newest.
    let r = idle.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.echo().header("x-lua").as_deref(), Some("v10"));
}

/// `[global] log_level` follows a reload (it needed a restart before): a
/// request that fails is logged at debug only once the reload made debug
/// the level, and the reload reports nothing to restart.
#[tokio::test]
async fn the_log_level_follows_a_reload() {
    let ports = Ports::new();
    let refused = free_addr();
    let cfg = |level: &str| {
        format!(
            "{}{}{}",
            global_section(
                ports.admin,
                &[
                    ("admin_token", ADMIN_TOKEN_TOML),
                    ("log_level", &format!("\"{level}\"")),
                ]
            ),
            frontend_section("web", ports.web, "gone", ""),
            backend_section("gone", "roundrobin", &[("g1", refused, 1)], ""),
        )
    };
    let d = Daemon::start(&cfg("info"), &[ports.web, ports.admin]).await;
    let r = get(ports.web, "/before").await;
    assert!(r.status.is_server_error(), "{}", r.status);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !d.stderr().contains("request failed"),
        "no debug line at info: {}",
        d.stderr()
    );
    std::fs::write(&d.config_path, cfg("debug")).expect("write");
    let r = reload(ports.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json()["restart_required"],
        serde_json::json!([]),
        "log_level needs no restart: {}",
        r.text()
    );
    let r = get(ports.web, "/after").await;
    assert!(r.status.is_server_error(), "{}", r.status);
    d.wait_stderr_line(Duration::from_secs(5), |l| l.contains("request failed"))
        .await
        .expect("the failed request logged at debug after the reload");
}
