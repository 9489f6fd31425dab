//! `portcullis plugin new|check|test`: the plugin author's tools.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::scaffold::{self, Lang};

/// `portcullis plugin ...`.
#[derive(Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Create a plugin project: the code, a config that uses it (passes
    /// `portcullis check`) and a test file for `portcullis plugin test`.
    New {
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: Lang,
        /// The plugin's name (lower case, digits, `_`).
        name: String,
        /// Where to create it (default: ./NAME); must be new or empty.
        dir: Option<PathBuf>,
        /// The guest SDK directory a Rust plugin depends on (default: the
        /// one of the sources this binary was built from, else crates.io).
        #[arg(long, value_name = "DIR")]
        sdk: Option<PathBuf>,
    },
    /// Report what a plugin file (.wasm or .lua) imports, exports and
    /// registers, and whether the daemon would load it.
    Check {
        /// The .wasm (or .wat) module or .lua script.
        file: PathBuf,
        /// A Wasm plugin's configuration (what `config =` gives it), for its start-up run.
        #[arg(long, value_name = "TEXT")]
        config: Option<String>,
    },
    /// Run a plugin test file: cases of fake requests and server responses
    /// through a config's rules and plugins, without the daemon.
    Test {
        /// The test file (TOML; see docs/GUIDE.md).
        file: PathBuf,
    },
}

/// Runs a `plugin` subcommand; the process's exit status.
pub fn run(cmd: PluginCommand) -> ExitCode {
    let ok = match cmd {
        PluginCommand::New {
            lang,
            name,
            dir,
            sdk,
        } => new(lang, &name, dir.as_deref(), sdk.as_deref()),
        PluginCommand::Check { file, config } => check(&file, config.as_deref()),
        PluginCommand::Test { file } => test(&file),
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn new(lang: Lang, name: &str, dir: Option<&Path>, sdk: Option<&Path>) -> bool {
    match scaffold::create(lang, name, dir, sdk) {
        Ok((dir, files)) => {
            println!(
                "created {} plugin `{name}` in {}:",
                lang_name(lang),
                dir.display()
            );
            for f in &files {
                println!("  {}", f.strip_prefix(&dir).unwrap_or(f).display());
            }
            let d = dir.display();
            match lang {
                Lang::Rust => println!(
                    "next:\n  cd {d}\n  cargo build --release\n  portcullis plugin test plugin-test.toml\n  portcullis check -c portcullis.toml\n  portcullis run -c portcullis.toml"
                ),
                Lang::Lua => println!(
                    "next:\n  cd {d}\n  portcullis plugin test plugin-test.toml\n  portcullis check -c portcullis.toml\n  portcullis run -c portcullis.toml"
                ),
            }
            true
        }
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust (Wasm)",
        Lang::Lua => "Lua",
    }
}

fn check(file: &Path, config: Option<&str>) -> bool {
    let lua = file.extension().is_some_and(|e| e == "lua");
    let result = if lua {
        check_lua(file)
    } else {
        check_wasm(file, config)
    };
    match result {
        Ok(report) => {
            print!("{report}");
            true
        }
        Err(report) => {
            eprint!("{report}");
            false
        }
    }
}

/// The Wasm report: the module's interface (`wasm::module::inspect`), then
/// the daemon's own load (`WasmPlugin::compile`) for the verdict.
fn check_wasm(file: &Path, config: Option<&str>) -> Result<String, String> {
    use std::fmt::Write;
    let bytes =
        std::fs::read(file).map_err(|e| format!("{}: cannot read: {e}\n", file.display()))?;
    let info =
        crate::wasm::module::inspect(&bytes).map_err(|e| format!("{}: {e}\n", file.display()))?;
    let mut out = String::new();
    let speaks = |m: &str| info.imports.iter().any(|i| i.module == m);
    let abi = match &info.abi {
        Ok(v) => {
            let declared = info
                .exports
                .iter()
                .any(|(n, _)| n.starts_with("proxy_abi_version_"));
            if declared {
                format!("Proxy-Wasm ABI {}", v.as_str())
            } else {
                format!(
                    "Proxy-Wasm ABI {} (no proxy_abi_version_* export: taken as the newest)",
                    v.as_str()
                )
            }
        }
        Err(e) => format!("unsupported ABI: {e}"),
    };
    let _ = writeln!(out, "{}: {abi}", file.display());
    let mut extra = Vec::new();
    if speaks("portcullis_v1") {
        extra.push("portcullis_v1 (stick tables, sha2/hmac, structured log)");
    }
    if speaks("wasi_snapshot_preview1") {
        extra.push("WASI preview1");
    }
    if !extra.is_empty() {
        let _ = writeln!(out, "  also speaks: {}", extra.join(", "));
    }
    match info.memory {
        Some((min, max)) => {
            let max = max.map_or_else(
                || "no maximum".to_string(),
                |m| format!("at most {m} pages"),
            );
            let _ = writeln!(
                out,
                "  memory: {min} pages of 64 KiB at start ({} KiB), {max}",
                min * 64
            );
        }
        None => {
            let _ = writeln!(out, "  memory: none declared");
        }
    }
    let _ = writeln!(out, "  imports ({}):", info.imports.len());
    for i in &info.imports {
        let mark = if i.provided {
            ""
        } else {
            "   <- NOT PROVIDED by portcullis"
        };
        let _ = writeln!(out, "    {}.{} ({}){mark}", i.module, i.name, i.kind);
    }
    let _ = writeln!(out, "  exports ({}):", info.exports.len());
    for (name, kind) in &info.exports {
        let _ = writeln!(out, "    {name} ({kind})");
    }
    let name = file.file_stem().map_or_else(
        || "plugin".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let spec = |root_only| crate::wasm::PluginSpec {
        config: config.unwrap_or_default().as_bytes().to_vec(),
        root_only,
        ..crate::wasm::PluginSpec::new(name.clone())
    };
    match crate::wasm::WasmPlugin::compile(&bytes, spec(false)) {
        Ok(p) => {
            let mut hooks = Vec::new();
            if p.request_body_hooks {
                hooks.push("request body");
            }
            if p.response_body_hooks {
                hooks.push("response body");
            }
            let bodies = if hooks.is_empty() {
                String::new()
            } else {
                // The SDKs export every hook; a body is held back only while a hook asks.
                format!(
                    "; its body hooks see the {} (held back only while a hook returns Pause)",
                    hooks.join(" and ")
                )
            };
            let _ = writeln!(
                out,
                "ok: loads and starts as an HTTP filter (`{{ wasm = \"<name>\" }}` in http_request/http_response rules){bodies}"
            );
            Ok(out)
        }
        Err(crate::wasm::module::WasmLoadError::NotHttp(why)) => {
            match crate::wasm::WasmPlugin::compile(&bytes, spec(true)) {
                Ok(_) => {
                    let _ = writeln!(
                        out,
                        "ok: loads as a singleton service only (a [[plugin]] no rule uses); not as an HTTP filter: {why}"
                    );
                    Ok(out)
                }
                Err(e) => {
                    let _ = writeln!(out, "error: the daemon would refuse it: {e}");
                    Err(out)
                }
            }
        }
        Err(e) => {
            let hint =
                if config.is_none() && matches!(e, crate::wasm::module::WasmLoadError::Start(_)) {
                    " (if it needs a configuration, give it with --config)"
                } else {
                    ""
                };
            let _ = writeln!(out, "error: the daemon would refuse it: {e}{hint}");
            Err(out)
        }
    }
}

/// The Lua report: the script loaded as a `[[plugin]]` by the daemon's own
/// loader (sandbox, limits, main chunk), then what it registered.
fn check_lua(file: &Path) -> Result<String, String> {
    use std::fmt::Write;
    let abs = file
        .canonicalize()
        .map_err(|e| format!("{}: cannot read: {e}\n", file.display()))?;
    let dir = abs.parent().unwrap_or(Path::new("."));
    let text = format!(
        "[[plugin]]\nname = \"check\"\nlua = {:?}\n",
        abs.display().to_string()
    );
    let spec = crate::config::parse(&dir.join("plugin-check.toml"), &text)
        .map_err(|e| format!("{e}\n"))?;
    let runtime = crate::runtime::assemble(spec).map_err(|e| format!("{e}\n"))?;
    let host = runtime
        .plugins
        .iter()
        .find_map(|h| h.as_any().downcast_ref::<crate::lua::LuaHost>())
        .and_then(|h| h.plugins.list.first())
        .ok_or_else(|| format!("{}: the Lua host did not load it\n", file.display()))?;
    let r = &host.registered;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: loads under the sandbox (Lua 5.4, HAProxy's Lua API)",
        file.display()
    );
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let actions: Vec<String> = r
        .actions
        .iter()
        .map(|a| {
            let mut phases = Vec::new();
            if a.request {
                phases.push("http-req");
            }
            if a.response {
                phases.push("http-res");
            }
            format!("{} ({})", a.name, phases.join(", "))
        })
        .collect();
    let _ = writeln!(out, "  actions:    {}", list(&actions));
    let _ = writeln!(out, "  fetches:    {}", list(&r.fetches));
    let _ = writeln!(out, "  converters: {}", list(&r.converters));
    let _ = writeln!(out, "  services:   {}", list(&r.services));
    let _ = writeln!(out, "  filters:    {}", list(&r.filters));
    let _ = writeln!(out, "  inits: {}, tasks: {}", r.inits, r.tasks);
    let _ = writeln!(
        out,
        "ok: use it with a [[plugin]] lua = \"{}\"; actions as {{ lua = \"<action>\" }}, fetches and converters as lua.<name>, services as use_service = \"lua.<name>\"",
        file.display()
    );
    Ok(out)
}

fn test(file: &Path) -> bool {
    match crate::harness::spec::run_file(file) {
        Ok(results) => {
            let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
            for r in &results {
                if r.failures.is_empty() {
                    println!("ok    {}", r.name);
                } else {
                    println!("FAIL  {}", r.name);
                    for f in &r.failures {
                        println!("        {f}");
                    }
                }
            }
            println!(
                "{}: {} passed, {failed} failed",
                file.display(),
                results.len() - failed
            );
            if results.is_empty() {
                eprintln!(
                    "{}: no [[case]] to run; add one (see docs/GUIDE.md)",
                    file.display()
                );
            }
            failed == 0 && !results.is_empty()
        }
        Err(e) => {
            eprintln!("{e}");
            false
        }
    }
}
