//! Reload without losing a request (issue 19), through the real binary:
//! `POST /reload` and `SIGHUP` under keep-alive and new-connection load, a
//! broken config that changes nothing, listeners added and removed, and a
//! binary upgrade that takes over the listening sockets.

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
