//! Plugins sharing a VM through `vm_id`, as in Envoy: one Wasm instance per
//! worker with one root context per plugin (its own configuration and
//! HTTP contexts), shared data and queues scoped by the VM id, and a trap
//! in one plugin recycling the VM for all of them. Run with the Rust SDK
//! demo (`plugins/wasm/sdk_demo`) and the Go SDK's `shared_data` example
//! (`../shared/fixtures/proxy-wasm-go/`), through the binary.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::Value;

/// The Rust SDK demo filter, built once per test binary.
fn sdk_demo() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        build_wasm_examples("wasm32-unknown-unknown", &["sdk_demo"]).join("sdk_demo.wasm")
    })
    .clone()
}

fn go_fixture(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/proxy-wasm-go")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "missing Go SDK fixture {} (../shared/fixtures/proxy-wasm-go beside the checkout)",
        p.display()
    );
    p
}

/// A `[[plugin]]` entry.
fn plugin(name: &str, wasm: &std::path::Path, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\nwasm = \"{}\"\non_error = \"fail_closed\"\n{extra}\n",
        wasm.display()
    )
}

/// A daemon (one worker) with `plugins` (name, extra keys), each on its own
/// frontend in front of `app`; backend `auth` exists for their config.
struct Vms {
    d: Daemon,
    admin: SocketAddr,
    fronts: Vec<(String, SocketAddr)>,
    _app: Backend,
}

impl Vms {
    async fn start(wasm: &std::path::Path, plugins: &[(&str, &str)]) -> Vms {
        let app = Backend::start("app1").await;
        let ports = Ports::new();
        let mut cfg = global_section(ports.admin, &[]);
        let mut fronts = Vec::new();
        for (name, extra) in plugins {
            cfg.push_str(&plugin(name, wasm, extra));
            // Separately picked free ports can repeat (each probe releases
            // its port): skip the admin port and the ones already taken.
            let web = loop {
                let a = free_addr();
                if a != ports.admin && !fronts.iter().any(|(_, w)| *w == a) {
                    break a;
                }
            };
            cfg.push_str(&frontend_section(
                &format!("web_{name}"),
                web,
                "app",
                &format!("http_request = [ {{ wasm = \"{name}\" }} ]\n"),
            ));
            fronts.push((name.to_string(), web));
        }
        for b in ["app", "auth"] {
            cfg.push_str(&backend_section(
                b,
                "roundrobin",
                &[("s1", app.addr, 1)],
                "",
            ));
        }
        let d = Daemon::spawn(&cfg);
        // Go modules are large: compiling them in a debug build on a busy
        // machine takes longer than Daemon::start's usual wait.
        let up = d
            .wait_stderr_line(Duration::from_secs(180), |l| l.contains("listening"))
            .await;
        assert!(up.is_some(), "the daemon did not start:\n{}", d.stderr());
        Vms {
            d,
            admin: ports.admin,
            fronts,
            _app: app,
        }
    }

    fn web(&self, name: &str) -> SocketAddr {
        self.fronts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no frontend for {name}"))
    }

    /// `path` through plugin `name`'s frontend: the echoed request header `header`.
    async fn echoed(&self, name: &str, path: &str, header: &str) -> String {
        let r = get(self.web(name), path).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{name} {path}: {}\n{}",
            r.text(),
            self.d.stderr()
        );
        r.echo()
            .header(header)
            .unwrap_or_else(|| panic!("{name} {path}: no {header} in {}", r.text()))
    }

    async fn plugin_doc(&self, name: &str) -> Value {
        let r = get(self.admin, "/plugins").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        r.json()["plugins"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
            .unwrap_or_else(|| panic!("plugin {name} not in /plugins: {}", r.text()))
    }
}

const SHARED_AB: &[(&str, &str)] = &[
    ("a", "vm_id = \"shared\"\nconfig = \"upstream=auth\""),
    ("b", "vm_id = \"shared\"\nconfig = \"upstream=app\""),
    ("c", "config = \"upstream=auth\""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_with_one_vm_id_share_one_vm_and_its_data() {
    let wasm = tokio::task::spawn_blocking(sdk_demo)
        .await
        .expect("build sdk_demo");
    let v = Vms::start(&wasm, SHARED_AB).await;

    // Each plugin's HTTP contexts belong to its own root context: its name,
    // VM id and configuration (read by its own on_configure).
    for (name, vm, upstream) in [
        ("a", "shared", "auth"),
        ("b", "shared", "app"),
        ("c", "c", "auth"),
    ] {
        assert_eq!(v.echoed(name, "/whoami", "x-plugin").await, name);
        assert_eq!(v.echoed(name, "/whoami", "x-vm-id").await, vm);
        assert_eq!(v.echoed(name, "/whoami", "x-upstream").await, upstream);
    }

    // One counter for a and b (VM "shared"), another for c (VM "c").
    let mut seen = Vec::new();
    for name in ["a", "b", "a", "c", "b", "c"] {
        seen.push(v.echoed(name, "/count", "x-hits").await);
    }
    assert_eq!(seen, ["1", "2", "3", "1", "4", "2"], "{}", v.d.stderr());

    // One VM for a and b on the one worker: each counts it, its memory is
    // reported once (by a, the VM's first plugin).
    let (a, b, c) = (
        v.plugin_doc("a").await,
        v.plugin_doc("b").await,
        v.plugin_doc("c").await,
    );
    assert_eq!(a["vm_id"], "shared");
    assert_eq!(a["vm_shared_with"], serde_json::json!(["b"]));
    assert_eq!(b["vm_shared_with"], serde_json::json!(["a"]));
    assert_eq!(c["vm_shared_with"], serde_json::json!([]));
    for p in [&a, &b, &c] {
        assert_eq!(p["instances"], 1, "{p}");
    }
    assert!(a["memory_in_use"].as_u64() > Some(0), "{a}");
    assert_eq!(b["memory_in_use"], 0, "{b}");
    assert!(c["memory_in_use"].as_u64() > Some(0), "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_recycles_the_vm_for_all_its_plugins() {
    let wasm = tokio::task::spawn_blocking(sdk_demo)
        .await
        .expect("build sdk_demo");
    let v = Vms::start(&wasm, SHARED_AB).await;
    assert_eq!(v.echoed("b", "/count", "x-hits").await, "1");
    // Instances built so far (the load-time checks' included).
    let mut built = Vec::new();
    for p in ["a", "b", "c"] {
        let doc = v.plugin_doc(p).await;
        assert_eq!(doc["instances"], 1, "{doc}");
        built.push(doc["instances_built"].as_u64().unwrap_or(0));
    }

    // a traps: its request gets on_error (fail_closed: 500) and the VM goes,
    // b's root context with it.
    let r = get(v.web("a"), "/trap").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.text());
    // The log lines reach the test through a pipe, possibly after the
    // response: wait for them (bounded).
    for wanted in [
        "instance dropped (the VM \"shared\" of plugins b too)",
        "rust trap requested",
    ] {
        assert!(
            v.d.wait_stderr_line(Duration::from_secs(10), |l| l.contains(wanted))
                .await
                .is_some(),
            "no log line with {wanted:?}: {}",
            v.d.stderr()
        );
    }

    // The next request through b works, on a new VM (started for both
    // plugins); shared data outlives the VM, as in Envoy.
    assert_eq!(v.echoed("b", "/count", "x-hits").await, "2");
    assert_eq!(v.echoed("b", "/whoami", "x-upstream").await, "app");
    assert_eq!(v.echoed("a", "/whoami", "x-upstream").await, "auth");
    let (a, b, c) = (
        v.plugin_doc("a").await,
        v.plugin_doc("b").await,
        v.plugin_doc("c").await,
    );
    assert_eq!(a["failures"]["unreachable"], 1, "{a}");
    assert_eq!(b["failures"]["unreachable"], 0, "{b}");
    for (p, before) in [(&a, built[0]), (&b, built[1])] {
        assert_eq!(p["instances_built"], before + 1, "{p}");
        assert_eq!(p["instances"], 1, "{p}");
    }
    // Another VM is left alone.
    assert_eq!(c["instances_built"], built[2], "{c}");
    assert_eq!(v.echoed("c", "/count", "x-hits").await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_plugins_share_data_by_vm_id() {
    // The Go SDK's shared_data example: a CAS-incremented counter per
    // request, logged. x and y share VM "counter"; z has its own.
    let wasm = go_fixture("shared_data");
    let v = Vms::start(
        &wasm,
        &[
            ("x", "vm_id = \"counter\""),
            ("y", "vm_id = \"counter\""),
            ("z", ""),
        ],
    )
    .await;
    for name in ["x", "y", "x", "z", "y"] {
        let r = get(v.web(name), "/").await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {}", r.text());
    }
    let stderr = v.d.stderr();
    let values = |plugin: &str| -> Vec<u64> {
        let tag = format!("plugin=\"{plugin}\"");
        stderr
            .lines()
            .filter(|l| l.contains(&tag))
            .filter_map(|l| l.split("shared value: ").nth(1))
            .filter_map(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect()
    };
    assert_eq!(values("x"), [1, 3], "{stderr}");
    assert_eq!(values("y"), [2, 4], "{stderr}");
    assert_eq!(values("z"), [1], "{stderr}");
}

/// `portcullis check` on a config with `plugins`: exit code and stderr.
fn check(plugins: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("wasm-vm-check");
    let ports = Ports::new();
    let cfg = format!(
        "{}{plugins}{}{}",
        global_section(ports.admin, &[]),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_request = [ { wasm = \"a\" }, { wasm = \"b\" } ]\n"
        ),
        backend_section("app", "roundrobin", &[("s1", free_addr(), 1)], ""),
    );
    let path = dir.write("check.toml", &cfg);
    let out = run_bin(
        &["check", "-c", &path.display().to_string()],
        Duration::from_secs(60),
    );
    (out.status.and_then(|s| s.code()), out.stderr)
}

#[test]
fn plugins_that_cannot_share_a_vm_are_a_config_error_naming_both() {
    let rust = sdk_demo();
    let go = go_fixture("shared_data");
    let ok = "config = \"upstream=app\"\nvm_id = \"v\"\n";
    for (b, differs) in [
        (plugin("b", &go, "vm_id = \"v\""), "module (`wasm`)"),
        (
            plugin("b", &rust, &format!("{ok}vm_config = \"other\"")),
            "`vm_config`",
        ),
        (
            plugin("b", &rust, &format!("{ok}memory_limit = \"32MiB\"")),
            "`memory_limit`",
        ),
    ] {
        let (code, stderr) = check(&format!("{}{b}", plugin("a", &rust, ok)));
        assert_eq!(code, Some(1), "{differs} accepted: {stderr}");
        assert!(
            stderr.contains(&format!(
                "plugins \"a\" and \"b\" share the VM \"v\" but differ in their {differs}"
            )),
            "{stderr}"
        );
    }
    let (code, stderr) = check(&format!(
        "{}{}",
        plugin("a", &rust, ok),
        plugin("b", &rust, ok)
    ));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check(&format!(
        "{}{}",
        plugin("a", &rust, ok),
        plugin("b", &rust, "vm_id = \"\"")
    ));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("vm_id must not be empty"), "{stderr}");
}
