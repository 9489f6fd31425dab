//! The "demo filter" guests of `plugins/wasm` written in C, C++,
//! AssemblyScript and Rust (the `proxy-wasm` crate), built from source for
//! the tests that run them (through the binary, and in the plugin harness).
//! The C guest needs clang, lld, wasi-libc and the wasm32 compiler-rt
//! builtins, the C++ guest also libc++ for wasm32, the AssemblyScript guest
//! Node.js and the pinned assemblyscript compiler: `bash scripts/setup.sh`
//! installs them. Without them the tests fail, naming the script.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// One built guest: its name (what it writes into headers and logs) and module.
pub struct Guest {
    pub name: &'static str,
    pub wasm: PathBuf,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Where the guests are built: inside cargo's target directory.
fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wasm-guests");
    std::fs::create_dir_all(&d).expect("create the guest build directory");
    d
}

const SETUP_HINT: &str = "run `bash scripts/setup.sh` (it installs clang, lld, wasi-libc, \
libclang-rt-dev-wasm32, libc++-dev-wasm32, Node.js/npm and the pinned assemblyscript)";

/// Runs a build command; on failure (or a missing tool) panics with its output and the setup hint.
fn run_build(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "building the {what} guest: cannot run {:?}: {e}\n{SETUP_HINT}",
            cmd.get_program()
        )
    });
    assert!(
        out.status.success(),
        "building the {what} guest failed ({:?}):\n{}{}\n{SETUP_HINT}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A C or C++ guest: `source` compiled by `compiler` for wasm32-wasi as a
/// reactor, warnings as errors, with `extra` flags before the common ones.
fn build_clang(what: &str, compiler: &str, extra: &[&str], source: &str, out: &Path) -> PathBuf {
    let wasm = out.join(format!(
        "demo_{}.wasm",
        if compiler == "clang" { "c" } else { "cpp" }
    ));
    run_build(
        what,
        Command::new(compiler)
            .arg("--target=wasm32-wasi")
            .args(extra)
            .args([
                "-O2",
                "-mexec-model=reactor",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-o",
            ])
            .arg(&wasm)
            .arg(root().join(source)),
    );
    wasm
}

fn build_c(out: &Path) -> PathBuf {
    build_clang("C", "clang", &[], "plugins/wasm/c/demo.c", out)
}

fn build_cpp(out: &Path) -> PathBuf {
    build_clang(
        "C++",
        "clang++",
        &["-std=c++17", "-fno-exceptions"],
        "plugins/wasm/cpp/demo.cc",
        out,
    )
}

fn build_assemblyscript(out: &Path) -> PathBuf {
    let dir = root().join("plugins/wasm/assemblyscript");
    let asc = dir.join("node_modules/assemblyscript/bin/asc.js");
    assert!(
        asc.exists(),
        "the AssemblyScript compiler is not installed ({} is missing)\n{SETUP_HINT}",
        asc.display()
    );
    let wasm = out.join("demo_as.wasm");
    // asconfig.json in that directory holds the flags.
    run_build(
        "AssemblyScript",
        Command::new("node")
            .current_dir(&dir)
            .arg(&asc)
            .arg("assembly/demo.ts")
            .arg("--outFile")
            .arg(&wasm),
    );
    wasm
}

fn build_rust(out: &Path) -> PathBuf {
    let target = out.join("cargo");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run_build(
        "Rust (proxy-wasm crate)",
        Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-unknown-unknown",
                "-p",
                "sdk_demo",
                "--manifest-path",
            ])
            .arg(root().join("plugins/wasm/Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            // The outer `cargo test` may set flags meant for the host target.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    );
    target.join("wasm32-unknown-unknown/release/sdk_demo.wasm")
}

/// The four guests, built once per test binary (the tests run in parallel).
pub fn guests() -> &'static [Guest] {
    static GUESTS: OnceLock<Vec<Guest>> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let out = out_dir();
        vec![
            Guest {
                name: "c",
                wasm: build_c(&out),
            },
            Guest {
                name: "cpp",
                wasm: build_cpp(&out),
            },
            Guest {
                name: "as",
                wasm: build_assemblyscript(&out),
            },
            Guest {
                name: "rust",
                wasm: build_rust(&out),
            },
        ]
    })
}
