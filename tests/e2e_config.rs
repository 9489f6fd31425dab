//! Config validation: every error is reported as `FILE:LINE:COL: message`
//! with the right line. The cases run as one table on the library's config
//! parser (see [`validate`]); a few go through the binary (`portcullis check`
//! and a failed `run` start-up) so the CLI path stays covered.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(10);

/// A valid config; tests replace parts of it. Bad lines get a `# HERE` comment.
const BASE: &str = r#"[global]
workers = 1
admin = "ADMIN"
grace = "5s"
max_header_size = "16KiB"

[global.timeout]
connect = "1s"
server = "2s"

[[frontend]]
name = "web"
bind = "WEB"
default_backend = "app"
http_request = [
  { set_header = "X-A", value = "1" },
  { deny = 403, if = "path_beg /admin" },
]

[[backend]]
name = "app"
balance = "roundrobin"
server = [
  { name = "s1", addr = "127.0.0.1:9" },
]
"#;

struct Base {
    web: std::net::SocketAddr,
    text: String,
}

fn base() -> Base {
    let web = free_addr();
    let text = BASE
        .replace("WEB", &web.to_string())
        .replace("ADMIN", &free_addr().to_string());
    Base { web, text }
}

/// Replaces exactly one occurrence of `from` in `text`.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur once in the base config"
    );
    text.replacen(from, to, 1)
}

/// 1-based number of the line marked `# HERE`.
fn here_line(text: &str) -> Result<usize, String> {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("# HERE"))
        .map(|(i, _)| i + 1)
        .collect();
    match lines[..] {
        [line] => Ok(line),
        _ => Err(format!(
            "exactly one line must be marked # HERE, found {}:\n{text}",
            lines.len()
        )),
    }
}

fn marked_line(text: &str) -> usize {
    here_line(text).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks that `report` (an error or warning line) says `PATH:LINE:COL:
/// message` for `path` at the `# HERE` line of `text`, with a message
/// containing every fragment (case-insensitive).
fn located(report: &str, path: &Path, text: &str, fragments: &[&str]) -> Result<(), String> {
    let line = here_line(text)?;
    let want = format!("{}:{line}:", path.display());
    let at = report
        .find(&want)
        .ok_or_else(|| format!("{report:?} is not located at {want:?} (line {line})"))?;
    // After FILE:LINE: comes COL: message.
    let rest = &report[at + want.len()..];
    let (col, message) = rest
        .split_once(':')
        .ok_or_else(|| format!("no column after {want:?}: {report:?}"))?;
    if !col.trim().parse::<usize>().is_ok_and(|c| c >= 1) {
        return Err(format!("bad column in {report:?}"));
    }
    if message.trim().is_empty() {
        return Err(format!("empty message: {report:?}"));
    }
    let lower = message.to_ascii_lowercase();
    let missing: Vec<&str> = fragments
        .iter()
        .copied()
        .filter(|f| !lower.contains(&f.to_ascii_lowercase()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("message {message:?} should mention {missing:?}"))
    }
}

/// Runs `check` on `text` and asserts a located error at the `# HERE` line
/// whose message contains every fragment (case-insensitive).
fn expect_error(text: &str, fragments: &[&str]) {
    let line = marked_line(text);
    let dir = TempDir::new("check");
    let path = dir.write("bad.toml", text);
    let out = run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT);
    let status = out
        .status
        .expect("portcullis check did not exit within 10s");
    assert!(
        !status.success(),
        "check accepted an invalid file:\n{text}\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let want = format!("{}:{line}:", path.display());
    let found = out
        .stderr
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| {
            panic!(
                "stderr lacks {want:?} (error expected on line {line}):\n{}\n--- config ---\n{text}",
                out.stderr
            )
        });
    if let Err(e) = located(found, &path, text, fragments) {
        panic!("{e}\n--- config ---\n{text}");
    }
}

// ---------------------------------------------------------------------------
// The validation table, on the library
// ---------------------------------------------------------------------------

/// Parses, validates and assembles config `text` as read from `path` (relative paths in
/// it resolve against `path`'s directory; the file itself is not read) and
/// binds nothing. `Ok` holds the warnings, `Err` the error, each as printed:
/// `FILE:LINE:COL: [warning: ]message`.
///
/// The only call into the library in this file: when the config API
/// changes, this is the one place to adapt.
fn validate(path: &Path, text: &str) -> Result<Vec<String>, String> {
    portcullis::runtime::parse(path, text, portcullis::config::BindCheck::Skip)
        .map(|cfg| {
            cfg.global
                .warnings
                .iter()
                .map(ToString::to_string)
                .collect()
        })
        .map_err(|e| e.to_string())
}

/// What [`validate`] must give for a [`Case`].
enum Want {
    /// Accepted without a warning.
    Ok,
    /// Accepted with exactly one warning, located at the `# HERE` line and
    /// mentioning every fragment (case-insensitive).
    Warn(&'static [&'static str]),
    /// Rejected with an error located at the `# HERE` line and mentioning
    /// every fragment (case-insensitive).
    Err(&'static [&'static str]),
}

struct Case {
    name: &'static str,
    /// The config text; `{DIR}` stands for the case's own temp directory,
    /// which also holds the config file it is validated as (`case.toml`).
    config: String,
    /// Files written to that directory first (mode 0600): name, contents.
    files: &'static [(&'static str, &'static str)],
    want: Want,
}

impl Case {
    fn new(name: &'static str, config: String, want: Want) -> Case {
        Case {
            name,
            config,
            files: &[],
            want,
        }
    }

    fn with_files(mut self, files: &'static [(&'static str, &'static str)]) -> Case {
        self.files = files;
        self
    }
}

/// The base config with `lines` added after `admin = ...`.
fn with_admin_keys(b: &Base, lines: &str) -> String {
    let admin = admin_line(b);
    edit(&b.text, &admin, &format!("{admin}\n{lines}"))
}

/// The base config with a Unix-socket admin in the case's directory, plus `lines`.
fn with_unix_admin(b: &Base, lines: &str) -> String {
    let admin = admin_line(b);
    edit(
        &b.text,
        &admin,
        &format!("admin = \"unix:{{DIR}}/a.sock\"\n{lines}"),
    )
}

/// The `admin = ...` line of the base config.
fn admin_line(b: &Base) -> String {
    b.text
        .lines()
        .find(|l| l.starts_with("admin = "))
        .expect("admin line")
        .to_string()
}

fn cases() -> Vec<Case> {
    let b = base();
    let bind = format!("bind = \"{}\"", b.web);
    let admin = admin_line(&b);
    vec![
        Case::new("valid base config", b.text.clone(), Want::Ok),
        Case::new(
            "toml syntax error",
            edit(&b.text, "grace = \"5s\"", "grace = = \"5s\"  # HERE"),
            Want::Err(&[]),
        ),
        Case::new(
            "unknown key",
            edit(&b.text, &bind, &format!("bnd = \"{}\"  # HERE", b.web)),
            Want::Err(&["bnd"]),
        ),
        // Errors in the user's words, with the closest known key or value.
        Case::new(
            "misspelled key suggests the known one",
            edit(&b.text, &bind, &format!("bnid = \"{}\"  # HERE", b.web)),
            Want::Err(&["unknown key `bnid` (did you mean `bind`?)"]),
        ),
        Case::new(
            "a string where an integer goes",
            edit(&b.text, "workers = 1", "workers = \"two\"  # HERE"),
            Want::Err(&["expected an integer, got the string \"two\""]),
        ),
        Case::new(
            "deny with a word",
            edit(
                &b.text,
                "  { deny = 403, if = \"path_beg /admin\" },",
                "  { deny = \"yes\", if = \"path_beg /admin\" },  # HERE",
            ),
            Want::Err(&["expected true, or the HTTP status to answer with"]),
        ),
        Case::new(
            "misspelled balance algorithm",
            edit(
                &b.text,
                "balance = \"roundrobin\"",
                "balance = \"roundrobn\"  # HERE",
            ),
            Want::Err(&["unknown balance algorithm \"roundrobn\"; expected \"roundrobin\""]),
        ),
        Case::new(
            "dangling default_backend",
            edit(
                &b.text,
                "default_backend = \"app\"",
                "default_backend = \"nope\"  # HERE",
            ),
            Want::Err(&["nope"]),
        ),
        Case::new(
            "dangling use_backend",
            edit(
                &b.text,
                "  { set_header = \"X-A\", value = \"1\" },",
                "  { use_backend = \"nope2\", if = \"path_beg /x\" },  # HERE",
            ),
            Want::Err(&["nope2"]),
        ),
        Case::new(
            "duplicate frontend name",
            format!(
                "{}\n[[frontend]]\nname = \"web\"  # HERE\nbind = \"{}\"\ndefault_backend = \"app\"\n",
                b.text,
                free_addr()
            ),
            Want::Err(&["duplicate", "web"]),
        ),
        Case::new(
            "duplicate backend name",
            format!(
                "{}\n[[backend]]\nname = \"app\"  # HERE\nserver = [ {{ name = \"x\", addr = \"127.0.0.1:9\" }} ]\n",
                b.text
            ),
            Want::Err(&["duplicate", "app"]),
        ),
        Case::new(
            "duplicate server name",
            edit(
                &b.text,
                "  { name = \"s1\", addr = \"127.0.0.1:9\" },\n",
                "  { name = \"s1\", addr = \"127.0.0.1:9\" },\n  { name = \"s1\", addr = \"127.0.0.1:10\" },  # HERE\n",
            ),
            Want::Err(&["duplicate", "s1"]),
        ),
        Case::new(
            "duration with an unknown unit",
            edit(&b.text, "grace = \"5s\"", "grace = \"5 parsecs\"  # HERE"),
            Want::Err(&["duration", "parsecs"]),
        ),
        Case::new(
            "duration without a unit",
            edit(&b.text, "connect = \"1s\"", "connect = \"5\"  # HERE"),
            Want::Err(&["duration"]),
        ),
        Case::new(
            "duration as a bare number",
            edit(&b.text, "server = \"2s\"", "server = 5  # HERE"),
            Want::Err(&["duration"]),
        ),
        Case::new(
            "bad size",
            edit(
                &b.text,
                "max_header_size = \"16KiB\"",
                "max_header_size = \"16 parsecs\"  # HERE",
            ),
            Want::Err(&["size"]),
        ),
        Case::new(
            "bind address without a port",
            edit(&b.text, &bind, "bind = \"localhost\"  # HERE"),
            Want::Err(&["localhost"]),
        ),
        Case::new(
            "server address with the port out of range",
            edit(
                &b.text,
                "  { name = \"s1\", addr = \"127.0.0.1:9\" },",
                "  { name = \"s1\", addr = \"1.2.3.4:99999\" },  # HERE",
            ),
            Want::Err(&["1.2.3.4:99999"]),
        ),
        Case::new(
            "unknown balance",
            edit(
                &b.text,
                "balance = \"roundrobin\"",
                "balance = \"fastest\"  # HERE",
            ),
            Want::Err(&["fastest"]),
        ),
        Case::new(
            "condition with an unknown fetch",
            edit(
                &b.text,
                "  { deny = 403, if = \"path_beg /admin\" },",
                "  { deny = 403, if = \"nosuchfetch /admin\" },  # HERE",
            ),
            Want::Err(&["nosuchfetch"]),
        ),
        Case::new(
            "interpolation with an unknown fetch",
            edit(
                &b.text,
                "  { set_header = \"X-A\", value = \"1\" },",
                "  { set_header = \"X-A\", value = \"v-%[nosuchfetch2]\" },  # HERE",
            ),
            Want::Err(&["nosuchfetch2"]),
        ),
        Case::new(
            "two actions in one rule",
            edit(
                &b.text,
                "  { deny = 403, if = \"path_beg /admin\" },",
                "  { deny = 403, return = 200, if = \"path_beg /admin\" },  # HERE",
            ),
            Want::Err(&["action"]),
        ),
        // --- [global] admin_* keys ---
        Case::new(
            "admin_token and admin_token_file together",
            with_admin_keys(
                &b,
                "admin_token = \"0123456789abcdef0123\"\nadmin_token_file = \"admin.token\"  # HERE",
            ),
            Want::Err(&["admin_token_file", "both"]),
        ),
        Case::new(
            "admin_token_file missing",
            with_admin_keys(&b, "admin_token_file = \"no-such.token\"  # HERE"),
            Want::Err(&["cannot read admin_token_file", "no-such.token"]),
        ),
        Case::new(
            "admin_token_file empty",
            with_admin_keys(&b, "admin_token_file = \"{DIR}/empty.token\"  # HERE"),
            Want::Err(&["is empty"]),
        )
        .with_files(&[("empty.token", "\n")]),
        Case::new(
            "admin_token_file relative to the config file",
            with_admin_keys(&b, "admin_token_file = \"admin.token\""),
            Want::Ok,
        )
        .with_files(&[("admin.token", "0123456789abcdef0123456789abcdef\n")]),
        Case::new(
            "admin_token with a space",
            with_admin_keys(&b, "admin_token = \"secret token 0123456789\"  # HERE"),
            Want::Err(&["space", "visible ascii"]),
        ),
        Case::new(
            "admin_hosts entry malformed",
            with_admin_keys(
                &b,
                "admin_hosts = [\"admin.example\",\n  \"http://admin.example/\"]  # HERE",
            ),
            Want::Err(&["invalid admin_hosts entry", "http://admin.example/"]),
        ),
        Case::new(
            "admin_maxconn zero",
            with_admin_keys(&b, "admin_maxconn = 0  # HERE"),
            Want::Err(&["admin_maxconn", "between 1 and 65535"]),
        ),
        Case::new(
            "admin_timeout.request zero",
            with_admin_keys(&b, "admin_timeout = { request = \"0s\" }  # HERE"),
            Want::Err(&["admin_timeout.request", "at least 1ms"]),
        ),
        Case::new(
            "admin_timeout.keep_alive over a day",
            with_admin_keys(
                &b,
                "admin_timeout = { keep_alive = \"99999999999d\" }  # HERE",
            ),
            Want::Err(&["admin_timeout.keep_alive", "at most 1d"]),
        ),
        Case::new(
            "admin_socket_mode on a TCP admin",
            with_admin_keys(&b, "admin_socket_mode = \"0660\"  # HERE"),
            Want::Err(&["admin_socket_mode", "unix"]),
        ),
        Case::new(
            "admin_socket_mode not octal",
            with_unix_admin(&b, "admin_socket_mode = \"0999\"  # HERE"),
            Want::Err(&["invalid admin_socket_mode", "0660"]),
        ),
        Case::new(
            "admin_socket_owner unknown",
            with_unix_admin(
                &b,
                "admin_socket_owner = \"no-such-user-portcullis\"  # HERE",
            ),
            Want::Err(&["no user named", "no-such-user-portcullis"]),
        ),
        Case::new(
            "admin_socket_group negative",
            with_unix_admin(&b, "admin_socket_group = -1  # HERE"),
            Want::Err(&["admin_socket_group", "group id"]),
        ),
        Case::new(
            "admin unix socket without a path",
            edit(&b.text, &admin, "admin = \"unix:\"  # HERE"),
            Want::Err(&["unix socket needs a file path"]),
        ),
        Case::new(
            "admin keys without admin",
            edit(
                &b.text,
                &admin,
                "admin_token = \"0123456789abcdef0123\"  # HERE",
            ),
            Want::Warn(&["warning: admin_token has no effect"]),
        ),
    ]
}

/// Runs one case in its own temp directory: `Err` says what went wrong.
fn run_case(case: &Case) -> Result<(), String> {
    let dir = TempDir::new("table");
    for (name, contents) in case.files {
        let f = dir.write(name, contents);
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| format!("chmod {}: {e}", f.display()))?;
    }
    let text = case
        .config
        .replace("{DIR}", &dir.path().display().to_string());
    let path = dir.path().join("case.toml");
    match (&case.want, validate(&path, &text)) {
        (Want::Ok, Ok(warnings)) if warnings.is_empty() => Ok(()),
        (Want::Ok, Ok(warnings)) => Err(format!("accepted with warnings {warnings:?}")),
        (Want::Warn(fragments), Ok(warnings)) => match &warnings[..] {
            [one] => located(one, &path, &text, fragments),
            _ => Err(format!("want one warning, got {warnings:?}")),
        },
        (Want::Err(fragments), Err(e)) => located(&e, &path, &text, fragments),
        (Want::Err(_), Ok(_)) => Err("accepted an invalid config".to_string()),
        (Want::Ok | Want::Warn(_), Err(e)) => Err(format!("rejected: {e}")),
    }
}

#[test]
fn config_validation_table() {
    let cases = cases();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            run_case(case)
                .err()
                .map(|why| format!("{}: {why}\n--- config ---\n{}", case.name, case.config))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------
// Through the binary: `check` and `run` print what the library reports
// ---------------------------------------------------------------------------

#[test]
fn check_accepts_a_valid_file() {
    let b = base();
    let dir = TempDir::new("check");
    let path = dir.write("good.toml", &b.text);
    let out = run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT);
    let status = out.status.expect("check did not exit within 10s");
    assert!(
        status.success(),
        "check rejected a valid file: {}",
        out.stderr
    );
    assert!(
        !(out.stdout.trim().is_empty() && out.stderr.trim().is_empty()),
        "check printed nothing on a valid file"
    );
    // check must not keep the bind address.
    std::net::TcpListener::bind(b.web).expect("bind address free after check");
}

#[test]
fn check_reports_a_missing_file() {
    let dir = TempDir::new("check");
    let path = dir.path().join("does-not-exist.toml");
    let out = run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT);
    let status = out.status.expect("check did not exit");
    assert!(!status.success());
    assert!(
        out.stderr.contains("does-not-exist.toml"),
        "stderr should name the file: {}",
        out.stderr
    );
}

#[test]
fn version_flag() {
    let out = run_bin(&["--version"], LIMIT);
    assert!(out.status.expect("--version did not exit").success());
    assert!(
        out.stdout.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {:?}",
        out.stdout
    );
}

/// `check` probes the listen addresses (the table's parse binds nothing)
/// and prints the located error.
#[test]
fn check_probes_the_listen_addresses() {
    let b = base();
    let held = std::net::TcpListener::bind(b.web).expect("hold the bind address");
    let t = edit(
        &b.text,
        &format!("bind = \"{}\"", b.web),
        &format!("bind = \"{}\"  # HERE", b.web),
    );
    expect_error(&t, &[&b.web.to_string()]);
    drop(held);
    // An admin socket in a directory that does not exist.
    let t = edit(
        &b.text,
        &admin_line(&b),
        "admin = \"/no/such/dir/portcullis/admin.sock\"  # HERE",
    );
    expect_error(&t, &["/no/such/dir/portcullis"]);
}

#[test]
fn run_with_bind_in_use_fails_with_location() {
    let b = base();
    let _held = std::net::TcpListener::bind(b.web).expect("hold the bind address");
    let t = edit(
        &b.text,
        &format!("bind = \"{}\"", b.web),
        &format!("bind = \"{}\"  # HERE", b.web),
    );
    let line = marked_line(&t);
    let dir = TempDir::new("run");
    let path = dir.write("inuse.toml", &t);
    let out = run_bin(&["run", "-c", path.to_str().expect("utf-8 path")], LIMIT);
    let status = out
        .status
        .expect("run with a bind address in use did not exit within 10s");
    assert!(
        !status.success(),
        "run exited 0 with its bind address in use"
    );
    let want = format!("{}:{line}:", path.display());
    assert!(
        out.stderr.contains(&want),
        "stderr should locate the bind ({want}):\n{}",
        out.stderr
    );
}

/// A warning goes to stderr, located, and `check` still succeeds.
#[test]
fn admin_keys_without_admin_warn() {
    let b = base();
    let admin = admin_line(&b);
    let t = edit(&b.text, &admin, "admin_token = \"0123456789abcdef0123\"");
    let dir = TempDir::new("check");
    let path = dir.write("noadmin.toml", &t);
    let out = run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT);
    assert!(
        out.status.expect("check exited").success(),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("{}:3:", path.display()))
            && out.stderr.contains("warning: admin_token has no effect"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_config_that_listens_on_nothing_is_refused() {
    // HAProxy will not start without a listener; neither check nor run passes.
    let dir = TempDir::new("empty-config");
    let path = dir.write("empty.toml", "# nothing here\n");
    let p = path.to_str().expect("utf-8 path");
    for cmd in ["check", "run"] {
        let out = run_bin(&[cmd, "-c", p], LIMIT);
        assert!(
            !out.status.expect("finished").success(),
            "{cmd}: {}",
            out.stdout
        );
        assert!(
            out.stderr
                .contains("declares no [[frontend]] and no admin address"),
            "{cmd}: {}",
            out.stderr
        );
    }
}

#[test]
fn version_and_help_say_what_was_built_and_where_to_look() {
    let out = run_bin(&["--version"], LIMIT);
    assert!(out.status.expect("finished").success());
    let v = out.stdout;
    assert!(
        v.starts_with(&format!(
            "portcullis {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{v}"
    );
    assert!(v.contains("Lua 5.4 (mlua 0."), "{v}");
    assert!(v.contains("wasmtime 48."), "{v}");
    let out = run_bin(&["--help"], LIMIT);
    assert!(out.status.expect("finished").success());
    assert!(out.stdout.contains("PORTCULLIS_LOG"), "{}", out.stdout);
    assert!(out.stdout.contains("docs/CONFIG.md"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------
// wasm_cache: the compiled-module cache, filled by `check`, used by `run`
// ---------------------------------------------------------------------------

const GOOD_WAT: &str = include_str!("fixtures/wasm/good.wat");

/// A config with one Wasm plugin on the request path and `wasm_cache`.
fn wasm_cache_config(dir: &TempDir, cache: &str) -> (std::path::PathBuf, Ports) {
    let wat = dir.write("good.wat", GOOD_WAT);
    let ports = Ports::new();
    let text = format!(
        "[global]\nworkers = 1\naccess_log = \"off\"\nwasm_cache = \"{cache}\"\n\n\
         [[plugin]]\nname = \"good\"\nwasm = \"{}\"\n\n\
         [[frontend]]\nname = \"web\"\nbind = \"{}\"\nhttp_request = [\n  {{ wasm = \"good\" }},\n  \
         {{ return = 200, body = \"ok\" }},\n]\n",
        wat.display(),
        ports.web
    );
    (dir.write("cache.toml", &text), ports)
}

fn images(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(std::path::PathBuf, u64)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .map(|p| {
            let ino = std::fs::metadata(&p).expect("image metadata").ino();
            (p, ino)
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn wasm_cache_is_filled_once_then_mapped() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("wasm-cache");
    // Relative to the config file, created private.
    let (path, ports) = wasm_cache_config(&dir, "cache/modules");
    let cache = dir.path().join("cache/modules");
    let arg = path.to_str().expect("utf-8 path");
    let out = run_bin(&["check", "-c", arg], Duration::from_secs(60));
    assert!(
        out.status.expect("check finished").success(),
        "check failed: {}",
        out.stderr
    );
    let first = images(&cache);
    assert_eq!(first.len(), 1, "one compiled image after check: {first:?}");
    let mode = std::fs::metadata(&cache)
        .expect("cache dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the cache directory is created private");
    // A second load maps the image instead of compiling and writing again.
    let out = run_bin(&["check", "-c", arg], Duration::from_secs(60));
    assert!(
        out.status.expect("check finished").success(),
        "{}",
        out.stderr
    );
    assert_eq!(images(&cache), first, "the image was not rewritten");
    // The daemon runs the plugin from the cached image.
    let text = std::fs::read_to_string(&path).expect("config");
    let _d = Daemon::start(&text, &[ports.web]).await;
    let r = get(ports.web, "/").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(images(&cache), first, "run used the same image");
}

#[test]
fn wasm_cache_others_can_write_is_a_config_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("wasm-cache-open");
    let (path, _ports) = wasm_cache_config(&dir, "shared");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = run_bin(
        &["check", "-c", path.to_str().expect("utf-8 path")],
        Duration::from_secs(60),
    );
    assert!(!out.status.expect("check finished").success());
    assert!(
        out.stderr.contains("cache.toml:4:")
            && out.stderr.contains("wasm_cache")
            && out.stderr.contains("writable by other users"),
        "want a located error naming the key and the fix: {}",
        out.stderr
    );
}
