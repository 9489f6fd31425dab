//! `portcullis check` / `run` on valid and invalid config files: every error
//! is reported as `FILE:LINE:COL: message` with the right line.

mod common;

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
fn marked_line(text: &str) -> usize {
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("# HERE"))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line must be marked # HERE:\n{text}"
    );
    lines[0]
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
    // After FILE:LINE: comes COL: message.
    let rest = &found[found.find(&want).expect("present") + want.len()..];
    let (col, message) = rest
        .split_once(':')
        .unwrap_or_else(|| panic!("no column after {want:?}: {found:?}"));
    assert!(
        col.trim().parse::<usize>().is_ok_and(|c| c >= 1),
        "bad column in {found:?}"
    );
    let lower = message.to_ascii_lowercase();
    assert!(!message.trim().is_empty(), "empty message: {found:?}");
    for f in fragments {
        assert!(
            lower.contains(&f.to_ascii_lowercase()),
            "message {message:?} should mention {f:?}"
        );
    }
}

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

#[test]
fn toml_syntax_error() {
    let b = base();
    expect_error(
        &edit(&b.text, "grace = \"5s\"", "grace = = \"5s\"  # HERE"),
        &[],
    );
}

#[test]
fn unknown_key() {
    let b = base();
    let t = edit(
        &b.text,
        &format!("bind = \"{}\"", b.web),
        &format!("bnd = \"{}\"  # HERE", b.web),
    );
    expect_error(&t, &["bnd"]);
}

#[test]
fn dangling_default_backend() {
    let b = base();
    let t = edit(
        &b.text,
        "default_backend = \"app\"",
        "default_backend = \"nope\"  # HERE",
    );
    expect_error(&t, &["nope"]);
}

#[test]
fn dangling_use_backend() {
    let b = base();
    let t = edit(
        &b.text,
        "  { set_header = \"X-A\", value = \"1\" },",
        "  { use_backend = \"nope2\", if = \"path_beg /x\" },  # HERE",
    );
    expect_error(&t, &["nope2"]);
}

#[test]
fn duplicate_frontend_name() {
    let b = base();
    let t = format!(
        "{}\n[[frontend]]\nname = \"web\"  # HERE\nbind = \"{}\"\ndefault_backend = \"app\"\n",
        b.text,
        free_addr()
    );
    expect_error(&t, &["duplicate", "web"]);
}

#[test]
fn duplicate_backend_name() {
    let b = base();
    let t = format!(
        "{}\n[[backend]]\nname = \"app\"  # HERE\nserver = [ {{ name = \"x\", addr = \"127.0.0.1:9\" }} ]\n",
        b.text
    );
    expect_error(&t, &["duplicate", "app"]);
}

#[test]
fn duplicate_server_name() {
    let b = base();
    let t = edit(
        &b.text,
        "  { name = \"s1\", addr = \"127.0.0.1:9\" },\n",
        "  { name = \"s1\", addr = \"127.0.0.1:9\" },\n  { name = \"s1\", addr = \"127.0.0.1:10\" },  # HERE\n",
    );
    expect_error(&t, &["duplicate", "s1"]);
}

#[test]
fn bad_duration_unknown_unit() {
    let b = base();
    let t = edit(&b.text, "grace = \"5s\"", "grace = \"5 parsecs\"  # HERE");
    expect_error(&t, &["duration", "parsecs"]);
}

#[test]
fn bad_duration_missing_unit() {
    let b = base();
    let t = edit(&b.text, "connect = \"1s\"", "connect = \"5\"  # HERE");
    expect_error(&t, &["duration"]);
}

#[test]
fn bad_duration_bare_number() {
    let b = base();
    let t = edit(&b.text, "server = \"2s\"", "server = 5  # HERE");
    expect_error(&t, &["duration"]);
}

#[test]
fn bad_size() {
    let b = base();
    let t = edit(
        &b.text,
        "max_header_size = \"16KiB\"",
        "max_header_size = \"16 parsecs\"  # HERE",
    );
    expect_error(&t, &["size"]);
}

#[test]
fn bad_bind_address_without_port() {
    let b = base();
    let t = edit(
        &b.text,
        &format!("bind = \"{}\"", b.web),
        "bind = \"localhost\"  # HERE",
    );
    expect_error(&t, &["localhost"]);
}

#[test]
fn bad_server_address_port_out_of_range() {
    let b = base();
    let t = edit(
        &b.text,
        "  { name = \"s1\", addr = \"127.0.0.1:9\" },",
        "  { name = \"s1\", addr = \"1.2.3.4:99999\" },  # HERE",
    );
    expect_error(&t, &["1.2.3.4:99999"]);
}

#[test]
fn bind_address_in_use() {
    let b = base();
    let _held = std::net::TcpListener::bind(b.web).expect("hold the bind address");
    let t = edit(
        &b.text,
        &format!("bind = \"{}\"", b.web),
        &format!("bind = \"{}\"  # HERE", b.web),
    );
    expect_error(&t, &[&b.web.to_string()]);
}

#[test]
fn unknown_balance() {
    let b = base();
    let t = edit(
        &b.text,
        "balance = \"roundrobin\"",
        "balance = \"fastest\"  # HERE",
    );
    expect_error(&t, &["fastest"]);
}

#[test]
fn bad_condition_unknown_fetch() {
    let b = base();
    let t = edit(
        &b.text,
        "  { deny = 403, if = \"path_beg /admin\" },",
        "  { deny = 403, if = \"nosuchfetch /admin\" },  # HERE",
    );
    expect_error(&t, &["nosuchfetch"]);
}

#[test]
fn bad_interpolation_unknown_fetch() {
    let b = base();
    let t = edit(
        &b.text,
        "  { set_header = \"X-A\", value = \"1\" },",
        "  { set_header = \"X-A\", value = \"v-%[nosuchfetch2]\" },  # HERE",
    );
    expect_error(&t, &["nosuchfetch2"]);
}

#[test]
fn two_actions_in_one_rule() {
    let b = base();
    let t = edit(
        &b.text,
        "  { deny = 403, if = \"path_beg /admin\" },",
        "  { deny = 403, return = 200, if = \"path_beg /admin\" },  # HERE",
    );
    expect_error(&t, &["action"]);
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

// --- [global] admin_* keys ---

/// The base config with `lines` added after `admin = ...`.
fn with_admin_keys(b: &Base, lines: &str) -> String {
    let admin = b
        .text
        .lines()
        .find(|l| l.starts_with("admin = "))
        .expect("admin line")
        .to_string();
    edit(&b.text, &admin, &format!("{admin}\n{lines}"))
}

#[test]
fn admin_token_and_token_file_together() {
    let b = base();
    let t = with_admin_keys(
        &b,
        "admin_token = \"0123456789abcdef0123\"\nadmin_token_file = \"admin.token\"  # HERE",
    );
    expect_error(&t, &["admin_token_file", "both"]);
}

#[test]
fn admin_token_file_missing_or_empty() {
    let b = base();
    let t = with_admin_keys(&b, "admin_token_file = \"no-such.token\"  # HERE");
    expect_error(&t, &["cannot read admin_token_file", "no-such.token"]);
    let dir = TempDir::new("token");
    let empty = dir.write("empty.token", "\n");
    let t = with_admin_keys(
        &b,
        &format!("admin_token_file = \"{}\"  # HERE", empty.display()),
    );
    expect_error(&t, &["is empty"]);
}

#[test]
fn admin_token_file_is_relative_to_the_config_file() {
    let b = base();
    let dir = TempDir::new("token-rel");
    let token = dir.write("admin.token", "0123456789abcdef0123456789abcdef\n");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let path = dir.write(
        "site.toml",
        &with_admin_keys(&b, "admin_token_file = \"admin.token\""),
    );
    let out = run_bin(&["check", "-c", path.to_str().expect("utf-8 path")], LIMIT);
    assert!(
        out.status.expect("check exited").success(),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

#[test]
fn admin_token_with_a_space() {
    let b = base();
    let t = with_admin_keys(&b, "admin_token = \"secret token 0123456789\"  # HERE");
    expect_error(&t, &["space", "visible ascii"]);
}

#[test]
fn admin_hosts_entry_malformed() {
    let b = base();
    let t = with_admin_keys(
        &b,
        "admin_hosts = [\"admin.example\",\n  \"http://admin.example/\"]  # HERE",
    );
    expect_error(&t, &["invalid admin_hosts entry", "http://admin.example/"]);
}

#[test]
fn admin_maxconn_zero() {
    let b = base();
    let t = with_admin_keys(&b, "admin_maxconn = 0  # HERE");
    expect_error(&t, &["admin_maxconn", "between 1 and 65535"]);
}

#[test]
fn admin_timeout_zero() {
    let b = base();
    let t = with_admin_keys(&b, "admin_timeout = { request = \"0s\" }  # HERE");
    expect_error(&t, &["admin_timeout.request", "at least 1ms"]);
    let t = with_admin_keys(
        &b,
        "admin_timeout = { keep_alive = \"99999999999d\" }  # HERE",
    );
    expect_error(&t, &["admin_timeout.keep_alive", "at most 1d"]);
}

#[test]
fn admin_socket_mode_on_a_tcp_admin() {
    let b = base();
    let t = with_admin_keys(&b, "admin_socket_mode = \"0660\"  # HERE");
    expect_error(&t, &["admin_socket_mode", "unix"]);
}

/// The base config with a Unix-socket admin in a temp dir, plus `lines`.
fn with_unix_admin(b: &Base, dir: &TempDir, lines: &str) -> String {
    let admin = b
        .text
        .lines()
        .find(|l| l.starts_with("admin = "))
        .expect("admin line")
        .to_string();
    let sock = dir.path().join("a.sock");
    edit(
        &b.text,
        &admin,
        &format!("admin = \"unix:{}\"\n{lines}", sock.display()),
    )
}

#[test]
fn admin_socket_mode_not_octal() {
    let b = base();
    let dir = TempDir::new("sock");
    let t = with_unix_admin(&b, &dir, "admin_socket_mode = \"0999\"  # HERE");
    expect_error(&t, &["invalid admin_socket_mode", "0660"]);
}

#[test]
fn admin_socket_owner_unknown() {
    let b = base();
    let dir = TempDir::new("sock");
    let t = with_unix_admin(
        &b,
        &dir,
        "admin_socket_owner = \"no-such-user-portcullis\"  # HERE",
    );
    expect_error(&t, &["no user named", "no-such-user-portcullis"]);
    let t = with_unix_admin(&b, &dir, "admin_socket_group = -1  # HERE");
    expect_error(&t, &["admin_socket_group", "group id"]);
}

#[test]
fn admin_unix_socket_without_a_path_or_directory() {
    let b = base();
    let t = edit(
        &b.text,
        b.text
            .lines()
            .find(|l| l.starts_with("admin = "))
            .expect("admin line"),
        "admin = \"unix:\"  # HERE",
    );
    expect_error(&t, &["unix socket needs a file path"]);
    let t = edit(
        &b.text,
        b.text
            .lines()
            .find(|l| l.starts_with("admin = "))
            .expect("admin line"),
        "admin = \"/no/such/dir/portcullis/admin.sock\"  # HERE",
    );
    expect_error(&t, &["/no/such/dir/portcullis"]);
}

#[test]
fn admin_keys_without_admin_warn() {
    let b = base();
    let admin = b
        .text
        .lines()
        .find(|l| l.starts_with("admin = "))
        .expect("admin line")
        .to_string();
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
