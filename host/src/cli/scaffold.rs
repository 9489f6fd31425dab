//! `portcullis plugin new`: a plugin project from templates embedded in the
//! binary — a Rust crate (guest SDK) or a Lua script, a config that uses it
//! and passes `portcullis check`, and a harness test file.

use std::path::{Path, PathBuf};

/// The plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Wasm filter in Rust, with the `portcullis-guest` SDK.
    Rust,
    /// A Lua script (HAProxy's Lua API).
    Lua,
}

/// One file of a template: its path in the project and its text.
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("templates/rust/Cargo.toml.in")),
    (
        ".cargo/config.toml",
        include_str!("templates/rust/cargo-config.toml.in"),
    ),
    (".gitignore", include_str!("templates/rust/gitignore.in")),
    ("src/lib.rs", include_str!("templates/rust/lib.rs.in")),
    (
        "portcullis.toml",
        include_str!("templates/rust/portcullis.toml.in"),
    ),
    (
        "plugin-test.toml",
        include_str!("templates/rust/plugin-test.toml.in"),
    ),
];

const LUA: &[Template] = &[
    ("{{name}}.lua", include_str!("templates/lua/plugin.lua.in")),
    (
        "portcullis.toml",
        include_str!("templates/lua/portcullis.toml.in"),
    ),
    (
        "plugin-test.toml",
        include_str!("templates/lua/plugin-test.toml.in"),
    ),
];

/// The guest SDK next to the sources this binary was built from, if they are still there.
fn local_sdk() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("guest-sdk");
    dir.join("Cargo.toml")
        .is_file()
        .then(|| dir.canonicalize().unwrap_or(dir))
}

/// Whether `name` can name a plugin, a Cargo package and a Lua registration:
/// a lower-case letter, then lower-case letters, digits and `_`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

/// Creates the project for plugin `name` in `dir` (default `./<name>`);
/// `sdk` is the guest SDK directory for a Rust plugin (default: the one
/// this binary was built with, else the published crate). Returns the
/// directory and the files written.
pub fn create(
    lang: Lang,
    name: &str,
    dir: Option<&Path>,
    sdk: Option<&Path>,
) -> Result<(PathBuf, Vec<PathBuf>), String> {
    if !valid_name(name) {
        return Err(format!(
            "plugin name {name:?}: use a lower-case letter, then lower-case letters, digits or `_` (e.g. \"my_filter\"); it names the plugin, the crate and its registrations"
        ));
    }
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(format!(
            "{}: the directory exists and is not empty; name a new or empty directory",
            dir.display()
        ));
    }
    let sdk_dep = match sdk.map(Path::to_path_buf).or_else(local_sdk) {
        Some(p) => {
            let p = p.canonicalize().map_err(|e| {
                format!(
                    "guest SDK {}: {e}; give --sdk the guest-sdk directory",
                    p.display()
                )
            })?;
            if !p.join("Cargo.toml").is_file() {
                return Err(format!(
                    "guest SDK {}: no Cargo.toml there; give --sdk the guest-sdk directory of portcullis's sources",
                    p.display()
                ));
            }
            format!("{{ path = {:?} }}", p.display().to_string())
        }
        None => "\"0.1\"".to_string(),
    };
    let files = match lang {
        Lang::Rust => RUST,
        Lang::Lua => LUA,
    };
    let mut written = Vec::new();
    for (path, text) in files {
        let path = dir.join(path.replace("{{name}}", name));
        let text = text
            .replace("{{name}}", name)
            .replace("{{module}}", name)
            .replace("{{sdk}}", &sdk_dep);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok((dir, written))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("my_filter2"));
        for bad in ["", "My", "2x", "a-b", "a.b", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
