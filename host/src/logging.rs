//! The daemon's own log level, changeable while it runs: `main` installs
//! the filter behind a reload handle and registers it here; a config
//! reload that changes `[global] log_level` applies the new level through
//! [`set_level`] (unless `PORTCULLIS_LOG` chose the filter at start, which
//! then stays in force).

use std::sync::OnceLock;

/// Applies a `log_level` (`error` .. `trace`) to the running filter.
pub type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<SetLevel> = OnceLock::new();

/// Registers how the level is changed (once, by `main`).
pub fn install(set: SetLevel) {
    let _ = SETTER.set(set);
}

/// Puts `level` in force; `Err` says why it could not be (no reloadable
/// filter installed, or `PORTCULLIS_LOG` fixed the filter at start).
pub fn set_level(level: &str) -> Result<(), String> {
    match SETTER.get() {
        Some(set) => set(level),
        None => Err("the log filter cannot be changed while running".into()),
    }
}
