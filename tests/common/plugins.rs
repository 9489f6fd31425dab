//! The example Wasm plugins of `plugins/wasm`, built for the tests that load them.

use std::path::PathBuf;

/// Builds `packages` (all if empty) of plugins/wasm for `target_triple`
/// with their own target directory (so the build does not wait on the
/// outer cargo's lock); the directory the modules land in.
pub fn build_wasm_examples(target_triple: &str, packages: &[&str]) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let target = root.join("target").join("wasm-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            target_triple,
            "--manifest-path",
        ])
        .arg(root.join("plugins/wasm/Cargo.toml"))
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .env("CARGO_TARGET_DIR", &target)
        // The outer `cargo test` may set flags meant for the host target.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo build for the example plugins");
    assert!(
        out.status.success(),
        "building plugins/wasm failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.join(target_triple).join("release")
}
