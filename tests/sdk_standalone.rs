//! The guest SDK outside this repository, as a plugin author gets it: a
//! copy of `guest-sdk/` in a directory of its own must pass `cargo package`
//! (publishable), build its examples for wasm32, and the example module it
//! builds must run in the real daemon.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

fn cargo(dir: &Path, args: &[&str], target_dir: &Path) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "cargo {args:?} failed in {}:\n{text}",
        dir.display()
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_sdk_packages_and_builds_outside_the_repository() {
    // A temp dir outside the repository: no workspace to inherit from.
    let dir = TempDir::new("guest-sdk-copy");
    let sdk = dir.path().join("portcullis-guest");
    for part in ["Cargo.toml", "README.md"] {
        std::fs::create_dir_all(&sdk).expect("mkdir");
        std::fs::copy(repo().join("guest-sdk").join(part), sdk.join(part)).expect("copy");
    }
    copy_dir(&repo().join("guest-sdk/src"), &sdk.join("src"));
    copy_dir(&repo().join("guest-sdk/examples"), &sdk.join("examples"));
    let target = repo().join("target").join("sdk-standalone");
    // Publishable: the package builds from what it contains.
    let listed = cargo(&sdk, &["package", "--allow-dirty", "--list"], &target);
    for f in [
        "Cargo.toml",
        "README.md",
        "src/lib.rs",
        "examples/json_config.rs",
    ] {
        assert!(
            listed.lines().any(|l| l == f),
            "{f} not packaged:\n{listed}"
        );
    }
    cargo(&sdk, &["package", "--allow-dirty"], &target);
    cargo(
        &sdk,
        &[
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--examples",
        ],
        &target,
    );
    let module = target.join("wasm32-unknown-unknown/release/examples/add_header.wasm");
    assert!(module.exists(), "{} was not built", module.display());

    // The example runs in the daemon as its docs say.
    let app = Backend::start("s1").await;
    let ports = Ports::new();
    let cfg = format!(
        "{}[[plugin]]\nname = \"add_header\"\nwasm = \"{}\"\n\n{}{}",
        global_section(ports.admin, &[]),
        module.display(),
        frontend_section(
            "web",
            ports.web,
            "app",
            "http_response = [{ wasm = \"add_header\" }]"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let _d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    let r = get(ports.web, "/").await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.header("x-served-by").as_deref(), Some("portcullis"));

    // json_config: a configuration that is not the JSON it wants fails the
    // config check, and the plugin's own reason reaches the operator.
    let module = target.join("wasm32-unknown-unknown/release/examples/json_config.wasm");
    let bad = format!(
        "[[plugin]]\nname = \"token\"\nwasm = \"{}\"\nconfig = '{{\"header\": \"x-token\"}}'\n\n{}{}",
        module.display(),
        frontend_section(
            "web",
            free_addr(),
            "app",
            "http_request = [{ wasm = \"token\" }]"
        ),
        backend_section("app", "roundrobin", &[("s1", app.addr, 1)], ""),
    );
    let path = dir.write("bad.toml", &bad);
    let out = run_bin(
        &["check", "-c", path.to_str().expect("utf-8 path")],
        std::time::Duration::from_secs(30),
    );
    assert!(
        !out.status.expect("check finished").success(),
        "a bad plugin config must fail the check:\n{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("rejected its config"),
        "the check must say why:\n{}",
        out.stderr
    );
}
