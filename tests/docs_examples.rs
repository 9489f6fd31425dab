//! Every config and code block in the docs is checked, so the docs cannot
//! drift from the daemon:
//! - TOML blocks go through `portcullis check`. A block that is a whole
//!   config (a frontend with a bind) is checked as written; one that shows a part (a `[[plugin]]`,
//!   a rule list, one rule per line) is checked inside a minimal config
//!   around it (a frontend `web`, backends `app` and `api`); `# ...` lines
//!   stand for what the prose leaves out. Files the blocks name are there:
//!   `plugins/` of this repository, the example Wasm modules built, stub
//!   error files. A Cargo manifest is parsed and checked for a `cdylib`.
//! - Lua blocks load as plugins through `portcullis check`.
//! - Rust blocks must appear in a file the test suite compiles.
//! - A plugin test file (`[[case]]`) must parse as one; the `sh` steps of
//!   docs/GUIDE.md are run by tests/plugin_harness.rs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// The documents whose blocks are checked.
const DOCS: &[&str] = &[
    "README.md",
    "docs/CONFIG.md",
    "docs/LUA.md",
    "docs/PLUGINS.md",
    "docs/STICK-TABLES.md",
    "docs/ABI.md",
    "docs/GUIDE.md",
    "guest-sdk/README.md",
];

struct Block {
    at: String,
    lang: String,
    text: String,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for doc in DOCS {
        let text = std::fs::read_to_string(repo().join(doc)).expect("read doc");
        let mut open: Option<(usize, String, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match (&mut open, line.strip_prefix("```")) {
                (None, Some(lang)) => open = Some((i + 1, lang.trim().to_string(), String::new())),
                (Some(_), Some(_)) => {
                    let (at, lang, body) = open.take().expect("open block");
                    out.push(Block {
                        at: format!("{doc}:{at}"),
                        lang,
                        text: body,
                    });
                }
                (Some((_, _, body)), None) => {
                    body.push_str(line);
                    body.push('\n');
                }
                (None, None) => {}
            }
        }
    }
    out
}

/// Splits a config into its tables (the text before the first header, then
/// one piece per `[..]` / `[[..]]` header).
fn tables(text: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    for line in text.lines() {
        if line.starts_with('[') {
            out.push(String::new());
        }
        let last = out.last_mut().expect("a table");
        last.push_str(line);
        last.push('\n');
    }
    out
}

fn has_key(table: &str, key: &str) -> bool {
    table.lines().any(|l| {
        l.trim_start().starts_with(&format!("{key} "))
            || l.trim_start().starts_with(&format!("{key}="))
    })
}

/// A config `portcullis check` can take, from a block. A block with a
/// frontend that binds is shown as a whole config and checked as written.
fn complete(block: &str) -> String {
    if block.contains("[[frontend]]") && block.lines().any(|l| l.trim_start().starts_with("bind")) {
        // As written, but on free ports: `check` binds what it reads. A
        // list of binds (and `tls.binds`, which repeats some) keeps its
        // addresses apart: each port written maps to one free address.
        let mut ports: std::collections::HashMap<String, String> = Default::default();
        return block
            .lines()
            .map(|l| {
                let t = l.trim_start();
                if t.starts_with("bind = [") || t.starts_with("tls = {") {
                    let mut out = String::new();
                    let mut rest = l;
                    while let Some(i) = rest.find("\"127.0.0.1:") {
                        out.push_str(&rest[..i]);
                        let after = &rest[i + 1..];
                        let end = after.find('"').unwrap_or(after.len());
                        let written = after[..end].to_string();
                        let free = ports
                            .entry(written)
                            .or_insert_with(|| free_addr().to_string());
                        out.push_str(&format!("\"{free}"));
                        rest = &after[end..];
                    }
                    out.push_str(rest);
                    format!("{out}\n")
                } else if (t.starts_with("bind") || t.starts_with("admin"))
                    && t.contains("\"127.0.0.1:")
                {
                    let key = t.split('=').next().unwrap_or("bind").trim();
                    format!("{key} = \"{}\"\n", free_addr())
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
    }
    let text: String = block
        .lines()
        .filter(|l| l.trim() != "# ...")
        .map(|l| format!("{l}\n"))
        .collect();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .unwrap_or("");
    let mut cfg = String::new();
    let mut frontend_keys = String::new();
    if first.starts_with('{') {
        // One rule per line.
        let rules: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .collect();
        frontend_keys = format!("http_request = [\n  {}\n]\n", rules.join(",\n  "));
    } else if first.starts_with('[') {
        for t in tables(&text) {
            let header = t.lines().next().unwrap_or("");
            let mut t = t.clone();
            if header.trim() == "[[frontend]]" {
                if !has_key(&t, "name") {
                    t.push_str("name = \"web\"\n");
                }
                if !has_key(&t, "bind") {
                    t.push_str(&format!("bind = \"{}\"\n", free_addr()));
                }
                if !has_key(&t, "default_backend") {
                    t.push_str("default_backend = \"app\"\n");
                }
            }
            if header.trim() == "[[backend]]" && !has_key(&t, "server") {
                t.push_str("server = [{ name = \"s1\", addr = \"127.0.0.1:9\" }]\n");
            }
            cfg.push_str(&t);
        }
    } else {
        frontend_keys = text.clone();
    }
    if !cfg.contains("[[frontend]]") {
        cfg.push_str(&format!(
            "\n[[frontend]]\nname = \"web\"\nbind = \"{}\"\ndefault_backend = \"app\"\n{frontend_keys}",
            free_addr()
        ));
    }
    // Stick tables the rules name (`table = "X"`), keyed as they track.
    let mut rest = cfg.clone();
    while let Some(i) = rest.find("table = \"") {
        let after = &rest[i + 9..];
        let name = after.split('"').next().unwrap_or("").to_string();
        rest = after.to_string();
        if !name.is_empty() && !cfg.contains(&format!("name = \"{name}\"")) {
            let ip = cfg.contains(&format!("track_sc0 = \"src\", table = \"{name}\""));
            cfg.push_str(&format!(
                "\n[[stick_table]]\nname = \"{name}\"\ntype = \"{}\"\nsize = 100\nstore = [\"gpc0\", \"http_req_rate(10s)\"]\n",
                if ip { "ip" } else { "string" }
            ));
        }
    }
    for b in ["app", "api"] {
        if !cfg.contains(&format!("name = \"{b}\"")) {
            cfg.push_str(&format!(
                "\n[[backend]]\nname = \"{b}\"\nserver = [{{ name = \"s1\", addr = \"127.0.0.1:9\" }}]\n"
            ));
        }
    }
    cfg
}

/// The files the docs' configs name, laid out as they say.
fn workdir() -> TempDir {
    let dir = TempDir::new("docs-check");
    let root = dir.path();
    let link = |to: &Path, at: &str| {
        let at = root.join(at);
        std::fs::create_dir_all(at.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(to, &at).expect("symlink");
    };
    link(&repo().join("plugins/lua"), "plugins/lua");
    link(&repo().join("plugins/lua/maps"), "maps");
    let wasm = build_wasm_examples("wasm32-unknown-unknown", &[]);
    for m in ["hello", "hmac_auth", "rate_limit", "header_rewrite"] {
        let module = wasm.join(format!("{m}.wasm"));
        link(&module, &format!("plugins/wasm/{m}.wasm"));
        link(
            &module,
            &format!("target/wasm32-unknown-unknown/release/{m}.wasm"),
        );
    }
    // guest-sdk/README.md's module of "your own crate".
    link(
        &wasm.join("hello.wasm"),
        "target/wasm32-unknown-unknown/release/my_filter.wasm",
    );
    // The certificates the TLS examples name, made here (valid, self-signed).
    std::fs::create_dir_all(root.join("certs")).expect("mkdir certs");
    for name in ["site", "api", "wild", "internal-ca"] {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![format!("{name}.example.com")])
            .and_then(|p| p.self_signed(&key))
            .expect("certificate");
        dir.write(&format!("certs/{name}.pem"), &cert.pem());
        dir.write(&format!("certs/{name}.key"), &key.serialize_pem());
    }
    std::fs::create_dir_all(root.join("errors")).expect("mkdir errors");
    for (page, status) in [
        ("errors/503.http", "503 Service Unavailable"),
        ("errors/400.http", "400 Bad Request"),
        ("errors/app-502.http", "502 Bad Gateway"),
    ] {
        dir.write(
            page,
            &format!("HTTP/1.1 {status}\r\ncontent-type: text/plain\r\n\r\nsorry\n"),
        );
    }
    dir
}

fn check(dir: &TempDir, name: &str, cfg: &str) -> Result<(), String> {
    let path = dir.write(name, cfg);
    let out = run_bin(
        &["check", "-c", path.to_str().expect("utf-8 path")],
        Duration::from_secs(60),
    );
    if out.status.is_some_and(|s| s.success()) {
        Ok(())
    } else {
        Err(format!(
            "{}{}\n--- config checked ---\n{cfg}",
            out.stdout, out.stderr
        ))
    }
}

#[test]
fn every_config_and_code_block_in_the_docs_is_checked() {
    let dir = workdir();
    let sources: Vec<String> = [
        "plugins/wasm/hello/src/lib.rs",
        "plugins/wasm/rate_limit/src/lib.rs",
        "guest-sdk/src/host.rs",
        "guest-sdk/examples/json_config.rs",
        "guest-sdk/examples/foreign_counter.rs",
        "tests/e2e_wasm.rs",
        "tests/plugin_harness.rs",
        // What `portcullis plugin new --lang rust` writes; built by tests/plugin_harness.rs.
        "host/src/cli/templates/rust/lib.rs.in",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(repo().join(f)).unwrap_or_default())
    .collect();
    let mut failures = Vec::new();
    let mut checked = 0;
    for (n, b) in blocks().iter().enumerate() {
        let result = match b.lang.as_str() {
            "toml" if b.text.contains("[package]") => toml::from_str::<toml::Value>(&b.text)
                .map_err(|e| e.to_string())
                .and_then(|v| {
                    let cdylib = v
                        .get("lib")
                        .and_then(|l| l.get("crate-type"))
                        .and_then(|c| c.as_array())
                        .is_some_and(|c| c.iter().any(|t| t.as_str() == Some("cdylib")));
                    cdylib
                        .then_some(())
                        .ok_or_else(|| "a plugin crate must be a cdylib".into())
                }),
            // A plugin test file (`portcullis plugin test`): every key known.
            "toml" if b.text.contains("[[case]]") => {
                toml::from_str::<portcullis::harness::spec::TestFile>(&b.text)
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            "toml" => check(&dir, &format!("block{n}.toml"), &complete(&b.text)),
            "lua" => {
                let script = dir.write(&format!("block{n}.lua"), &b.text);
                let cfg = complete(&format!(
                    "[[plugin]]\nname = \"block{n}\"\nlua = \"{}\"\n",
                    script.display()
                ));
                check(&dir, &format!("block{n}-lua.toml"), &cfg)
            }
            "rust" => {
                // Each line of the block is in a compiled source file.
                let missing: Vec<&str> = b
                    .text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("//"))
                    .filter(|l| !sources.iter().any(|s| s.contains(l)))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not in any compiled source: {missing:?}"))
                }
            }
            _ => continue,
        };
        checked += 1;
        if let Err(e) = result {
            failures.push(format!("{} ({}):\n{e}", b.at, b.lang));
        }
    }
    assert!(
        checked >= 15,
        "only {checked} blocks found: the scan is broken"
    );
    assert!(
        failures.is_empty(),
        "{} doc blocks fail:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
