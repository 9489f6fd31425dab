//! The `portcullis` command: `run` the daemon, `check` a config file, `plugin` tools.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use portcullis::config::BindCheck;

// mimalloc measurably lowers per-request CPU (see DESIGN.md, measured costs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--version`: the release, the commit it was built from and what it embeds.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PORTCULLIS_COMMIT"),
    ")\nLua 5.4 (mlua ",
    env!("PORTCULLIS_MLUA"),
    ", vendored)\nwasmtime ",
    env!("PORTCULLIS_WASMTIME"),
    " (Proxy-Wasm ABI 0.2.1 and 0.2.0, portcullis_v1)\nallocator mimalloc"
);

/// Shown after `--help`.
const AFTER_HELP: &str = "\
Logging: [global] log_level sets the level; the PORTCULLIS_LOG environment
variable overrides it with a tracing filter (e.g. PORTCULLIS_LOG=debug or
PORTCULLIS_LOG=portcullis=debug,warn). Logs go to stderr.

Docs: README.md, docs/CONFIG.md (every config key), docs/LUA.md and
docs/PLUGINS.md (plugins), docs/ABI.md (the Wasm host ABI).";

/// HTTP reverse proxy with Lua and WebAssembly filter plugins.
#[derive(Parser)]
#[command(name = "portcullis", version, long_version = LONG_VERSION, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Listen on this Unix socket for a new binary taking over (see docs/OPERATIONS.md).
        #[arg(long, value_name = "PATH")]
        upgrade_socket: Option<PathBuf>,
        /// Take over the listening sockets of the daemon whose --upgrade-socket is PATH;
        /// it then drains and exits.
        #[arg(long, value_name = "PATH")]
        upgrade_from: Option<PathBuf>,
    },
    /// Validate a config file completely (including bind addresses) without starting anything.
    Check {
        /// Config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Plugin tools: scaffold a plugin, check a module or script, run its tests.
    Plugin {
        #[command(subcommand)]
        command: portcullis::cli::plugin::PluginCommand,
    },
}

fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let from_env = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG").ok();
    let fixed = from_env.is_some();
    let filter = from_env
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(format!("portcullis={level},warn")));
    // Behind a reload handle: a config reload may change log_level.
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    portcullis::logging::install(Box::new(move |level| {
        if fixed {
            return Err("PORTCULLIS_LOG set the log filter at start; it stays in force".into());
        }
        handle
            .reload(tracing_subscriber::EnvFilter::new(format!(
                "portcullis={level},warn"
            )))
            .map_err(|e| e.to_string())
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Plugin { command } => portcullis::cli::plugin::run(command),
        Command::Check { config } => match portcullis::runtime::load(&config, BindCheck::Probe) {
            Ok(c) => {
                // The plugins' start-up lines, at the configured level, as `run` shows them.
                init_logging(&c.global.log_level);
                portcullis::wasm::abi::proxy_wasm::replay_load_logs();
                for w in &c.global.warnings {
                    eprintln!("{w}");
                }
                println!(
                    "{}: configuration is valid ({} frontend(s), {} backend(s), {} worker(s))",
                    config.display(),
                    c.frontends.len(),
                    c.backends.len(),
                    c.global.workers
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            upgrade_socket,
            upgrade_from,
        } => {
            let cfg = match portcullis::runtime::load(&config, BindCheck::Skip) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(&cfg.global.log_level);
            // What plugins logged while they started during the load above.
            portcullis::wasm::abi::proxy_wasm::replay_load_logs();
            tracing::info!(config = %config.display(), version = env!("CARGO_PKG_VERSION"), "starting portcullis");
            for w in &cfg.global.warnings {
                tracing::warn!("{w}");
            }
            let opts = portcullis::proxy::RunOptions {
                config_path: config,
                upgrade_socket,
                upgrade_from,
            };
            match portcullis::proxy::run(Arc::new(cfg), opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
