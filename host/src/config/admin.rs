//! `[global] admin*`: where the admin API listens (TCP or a Unix socket), who
//! may use it (a bearer token, the accepted `Host` names) and its limits.
//!
//! The access policy these settings feed (enforced in `admin/guard.rs`,
//! documented in docs/CONFIG.md "Admin API access"):
//! - requests that change state (every method but GET/HEAD) need the token,
//!   and are refused with 403 while no token is configured;
//! - on a loopback address or a Unix socket, reads are open;
//! - on any other address with a token, everything but `/health` needs it.

use std::ffi::CString;
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use toml::Spanned;

use super::schema::{IdSpec, RawGlobal};
use super::{ConfigError, ConfigWarning, Location, Validator, ranged, resolve_path};

/// Longest Unix socket path: `sun_path` holds 108 bytes with the final NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Tokens shorter than this get a warning: they can be guessed.
const MIN_TOKEN_LEN: usize = 16;
/// Longest admin timeout: deadlines are `Instant`s, which must not overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// The validated admin API settings.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: AdminListen,
    /// Where `admin` was declared (for bind errors).
    pub location: Location,
    /// The token state-changing requests (and, off loopback, reads) must carry.
    pub token: Option<AdminToken>,
    /// Extra accepted `Host` values (`admin_hosts`).
    pub hosts: Vec<AdminHost>,
    /// Most connections served at once.
    pub maxconn: usize,
    pub timeouts: AdminTimeouts,
}

/// Where the admin API listens.
#[derive(Debug, Clone)]
pub enum AdminListen {
    Tcp(SocketAddr),
    Unix(UnixSocket),
}

/// A Unix-socket admin address and what to set on the socket file.
#[derive(Debug, Clone)]
pub struct UnixSocket {
    /// Resolved against the config file's directory.
    pub path: PathBuf,
    /// Permission bits (default 0600: only the daemon's user).
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// An `admin_hosts` entry: a lower-case name, and a port if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminHost {
    pub name: String,
    /// `None`: any port (or none) matches.
    pub port: Option<u16>,
}

/// Admin connection timeouts (see [`super::schema::RawAdminTimeouts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminTimeouts {
    pub http_request: Duration,
    pub keep_alive: Duration,
    pub request: Duration,
}

impl Default for AdminTimeouts {
    fn default() -> Self {
        AdminTimeouts {
            http_request: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            request: Duration::from_secs(30),
        }
    }
}

/// The admin token, kept only as its SHA-256 digest: comparing digests in
/// constant time reveals neither the content nor the length of the token.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    fn new(token: &str) -> AdminToken {
        AdminToken(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl Admin {
    /// Whether every peer is on this host: a loopback address or a Unix socket.
    pub fn is_local(&self) -> bool {
        match &self.listen {
            AdminListen::Tcp(a) => a.ip().to_canonical().is_loopback(),
            AdminListen::Unix(_) => true,
        }
    }

    /// Whether read-only endpoints other than `/health` need the token too:
    /// a token is configured and other hosts can reach the API.
    pub fn reads_need_token(&self) -> bool {
        self.token.is_some() && !self.is_local()
    }

    /// The address for logs and messages.
    pub fn describe(&self) -> String {
        match &self.listen {
            AdminListen::Tcp(a) => a.to_string(),
            AdminListen::Unix(u) => format!("unix:{}", u.path.display()),
        }
    }
}

/// Splits a `Host` value (or an `admin_hosts` entry) into host and port:
/// `name`, `name:port`, `1.2.3.4:port`, `[::1]:port`. The host comes back
/// lower-case without brackets or a trailing dot; `None` when malformed.
pub fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        inside.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (inside, port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = !host.is_empty()
        && (text.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    ok.then(|| (host.to_ascii_lowercase(), port))
}

/// Parses `"0660"` / `"660"` / `"0o660"` into permission bits.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o777)
}

/// Looks up a user (`group == false`) or group id by name; `Ok(None)` when unknown.
fn lookup_id(name: &str, group: bool) -> Result<Option<u32>, String> {
    let cname = CString::new(name).map_err(|_| "the name contains a NUL byte".to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let rc = if group {
            let mut grp = MaybeUninit::<libc::group>::uninit();
            let mut res: *mut libc::group = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call: the name is
            // NUL-terminated, `grp` and `res` are writable, `buf` has `buf.len()` bytes.
            let rc = unsafe {
                libc::getgrnam_r(
                    cname.as_ptr(),
                    grp.as_mut_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut res,
                )
            };
            if rc == 0 {
                // SAFETY: a non-null result points at `grp`, which the call filled in.
                return Ok((!res.is_null()).then(|| unsafe { (*res).gr_gid }));
            }
            rc
        } else {
            let mut pwd = MaybeUninit::<libc::passwd>::uninit();
            let mut res: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: as above, for getpwnam_r.
            let rc = unsafe {
                libc::getpwnam_r(
                    cname.as_ptr(),
                    pwd.as_mut_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut res,
                )
            };
            if rc == 0 {
                // SAFETY: a non-null result points at `pwd`, which the call filled in.
                return Ok((!res.is_null()).then(|| unsafe { (*res).pw_uid }));
            }
            rc
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return Err(std::io::Error::from_raw_os_error(rc).to_string());
    }
}

impl Validator<'_> {
    /// Validates the `admin*` keys of `[global]`, collecting warnings.
    pub(super) fn admin(
        &self,
        g: &RawGlobal,
        warnings: &mut Vec<ConfigWarning>,
    ) -> Result<Option<Admin>, ConfigError> {
        let src = self.source;
        let Some(addr) = &g.admin else {
            // Settings that do nothing are probably a forgotten `admin`.
            for (key, span) in self.admin_keys(g) {
                warnings.push(ConfigWarning(src.error(
                    span,
                    format!(
                        "{key} has no effect: [global] admin is not set, so there is no admin API"
                    ),
                )));
            }
            return Ok(None);
        };
        let listen = self.admin_listen(addr)?;
        let mut unix_only: Vec<(&str, Range<usize>)> = Vec::new();
        if let Some(m) = &g.admin_socket_mode {
            unix_only.push(("admin_socket_mode", m.span()));
        }
        if let Some(o) = &g.admin_socket_owner {
            unix_only.push(("admin_socket_owner", o.span()));
        }
        if let Some(o) = &g.admin_socket_group {
            unix_only.push(("admin_socket_group", o.span()));
        }
        let listen = match listen {
            AdminListen::Tcp(a) => {
                if let Some((key, span)) = unix_only.into_iter().next() {
                    return Err(src.error(
                        span,
                        format!("{key} applies to a Unix-socket admin address (admin = \"unix:/run/portcullis/admin.sock\"), not to {a}"),
                    ));
                }
                AdminListen::Tcp(a)
            }
            AdminListen::Unix(mut u) => {
                if let Some(m) = &g.admin_socket_mode {
                    u.mode = parse_mode(m.get_ref()).ok_or_else(|| {
                        src.error(
                            m.span(),
                            format!(
                                "invalid admin_socket_mode {:?}: expected octal permission bits as a string, e.g. \"0660\" (owner and group may connect)",
                                m.get_ref()
                            ),
                        )
                    })?;
                }
                u.owner = self.admin_id(g.admin_socket_owner.as_ref(), false)?;
                u.group = self.admin_id(g.admin_socket_group.as_ref(), true)?;
                AdminListen::Unix(u)
            }
        };
        let token = self.admin_token(g, warnings)?;
        let mut hosts = Vec::new();
        for h in g.admin_hosts.iter().flatten() {
            let (name, port) = split_host_port(h.get_ref()).ok_or_else(|| {
                src.error(
                    h.span(),
                    format!(
                        "invalid admin_hosts entry {:?}: expected a host name or IP address, optionally with :PORT, e.g. \"admin.example\" or \"admin.example:8443\"",
                        h.get_ref()
                    ),
                )
            })?;
            hosts.push(AdminHost { name, port });
        }
        let maxconn = match &g.admin_maxconn {
            Some(n) => ranged::<usize>(src, n, "admin_maxconn", 1, 65_535)?,
            None => 64,
        };
        let mut timeouts = AdminTimeouts::default();
        if let Some(t) = &g.admin_timeout {
            let t = t.get_ref();
            for (key, value, slot) in [
                ("http_request", &t.http_request, &mut timeouts.http_request),
                ("keep_alive", &t.keep_alive, &mut timeouts.keep_alive),
                ("request", &t.request, &mut timeouts.request),
            ] {
                if let Some(v) = value {
                    if v.get_ref().0 < Duration::from_millis(1) || v.get_ref().0 > MAX_TIMEOUT {
                        return Err(src.error(
                            v.span(),
                            format!(
                                "admin_timeout.{key} must be at least 1ms and at most 1d, e.g. \"5s\""
                            ),
                        ));
                    }
                    *slot = v.get_ref().0;
                }
            }
        }
        let admin = Admin {
            listen,
            location: src.location(addr.span().start),
            token,
            hosts,
            maxconn,
            timeouts,
        };
        if !admin.is_local() && admin.token.is_none() {
            warnings.push(ConfigWarning(src.error(
                addr.span(),
                format!(
                    "admin address {} is not a loopback address and no admin token is configured: anyone who can reach it can read /stats, /metrics, /tables and /plugins; set [global] admin_token or admin_token_file (then everything but /health needs it), or bind 127.0.0.1",
                    admin.describe()
                ),
            )));
        }
        Ok(Some(admin))
    }

    /// The `admin_*` keys that are set, with their spans.
    fn admin_keys(&self, g: &RawGlobal) -> Vec<(&'static str, Range<usize>)> {
        let mut keys = Vec::new();
        let mut add = |k, s: Option<Range<usize>>| {
            if let Some(s) = s {
                keys.push((k, s));
            }
        };
        add("admin_token", g.admin_token.as_ref().map(Spanned::span));
        add(
            "admin_token_file",
            g.admin_token_file.as_ref().map(Spanned::span),
        );
        add(
            "admin_hosts",
            g.admin_hosts
                .as_ref()
                .and_then(|h| h.first())
                .map(Spanned::span),
        );
        add("admin_maxconn", g.admin_maxconn.as_ref().map(Spanned::span));
        add(
            "admin_socket_mode",
            g.admin_socket_mode.as_ref().map(Spanned::span),
        );
        add(
            "admin_socket_owner",
            g.admin_socket_owner.as_ref().map(Spanned::span),
        );
        add(
            "admin_socket_group",
            g.admin_socket_group.as_ref().map(Spanned::span),
        );
        add("admin_timeout", g.admin_timeout.as_ref().map(Spanned::span));
        keys
    }

    /// `admin`: `unix:PATH`, a path starting with `/`, `./` or `../`, or `HOST:PORT`.
    fn admin_listen(&self, a: &Spanned<String>) -> Result<AdminListen, ConfigError> {
        let src = self.source;
        let text = a.get_ref();
        let unix = match text.strip_prefix("unix:") {
            Some(p) => Some(p),
            None if text.starts_with('/') || text.starts_with("./") || text.starts_with("../") => {
                Some(text.as_str())
            }
            None => None,
        };
        let Some(p) = unix else {
            return self
                .socket_addr(a, "admin address")
                .map(AdminListen::Tcp)
                .map_err(|mut e| {
                    e.message.push_str(
                        "; or a Unix socket path such as \"unix:/run/portcullis/admin.sock\"",
                    );
                    e
                });
        };
        if p.is_empty() || p.ends_with('/') {
            return Err(src.error(
                a.span(),
                format!("invalid admin address {text:?}: a Unix socket needs a file path, e.g. \"unix:/run/portcullis/admin.sock\""),
            ));
        }
        let path = resolve_path(src.file(), p);
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(src.error(
                a.span(),
                format!(
                    "admin socket path {} is {len} bytes long; Unix socket paths are limited to {MAX_SOCKET_PATH} bytes, choose a shorter one",
                    path.display()
                ),
            ));
        }
        Ok(AdminListen::Unix(UnixSocket {
            path,
            mode: 0o600,
            owner: None,
            group: None,
        }))
    }

    /// `admin_socket_owner` / `admin_socket_group`: a name or a numeric id.
    fn admin_id(
        &self,
        v: Option<&Spanned<IdSpec>>,
        group: bool,
    ) -> Result<Option<u32>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let (key, what) = if group {
            ("admin_socket_group", "group")
        } else {
            ("admin_socket_owner", "user")
        };
        let bad_id = |n: &dyn std::fmt::Display| {
            self.source.error(
                v.span(),
                format!("{key} {n} is not a valid {what} id; use 0 to 4294967294 or a {what} name"),
            )
        };
        match v.get_ref() {
            IdSpec::Id(n) => u32::try_from(*n)
                .ok()
                .filter(|n| *n != u32::MAX)
                .map(Some)
                .ok_or_else(|| bad_id(n)),
            IdSpec::Name(name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) => {
                name.parse::<u32>()
                    .ok()
                    .filter(|n| *n != u32::MAX)
                    .map(Some)
                    .ok_or_else(|| bad_id(name))
            }
            IdSpec::Name(name) => match lookup_id(name, group) {
                Ok(Some(id)) => Ok(Some(id)),
                Ok(None) => Err(self.source.error(
                    v.span(),
                    format!("{key}: no {what} named {name:?} on this system; give an existing {what} name or a numeric id"),
                )),
                Err(e) => Err(self.source.error(
                    v.span(),
                    format!("{key}: cannot look up {what} {name:?}: {e}"),
                )),
            },
        }
    }

    /// `admin_token` or `admin_token_file` (not both).
    fn admin_token(
        &self,
        g: &RawGlobal,
        warnings: &mut Vec<ConfigWarning>,
    ) -> Result<Option<AdminToken>, ConfigError> {
        let src = self.source;
        let (text, span, key) = match (&g.admin_token, &g.admin_token_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(f)) => {
                return Err(src.error(
                    f.span(),
                    "admin_token and admin_token_file are both set; keep one (admin_token_file keeps the secret out of the config file)",
                ));
            }
            (Some(t), None) => (t.get_ref().clone(), t.span(), "admin_token"),
            (None, Some(f)) => {
                let path = resolve_path(src.file(), f.get_ref());
                let raw = std::fs::read_to_string(&path).map_err(|e| {
                    src.error(
                        f.span(),
                        format!("cannot read admin_token_file {}: {e}", path.display()),
                    )
                })?;
                let text = raw.trim_end_matches(['\n', '\r']).to_string();
                if text.is_empty() {
                    return Err(src.error(
                        f.span(),
                        format!(
                            "admin_token_file {} is empty; write the token in it, e.g. `openssl rand -hex 32 > {}`",
                            path.display(),
                            path.display()
                        ),
                    ));
                }
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.permissions().mode() & 0o004 != 0
                {
                    warnings.push(ConfigWarning(src.error(
                        f.span(),
                        format!(
                            "admin_token_file {} is readable by every user; restrict it, e.g. chmod 600",
                            path.display()
                        ),
                    )));
                }
                (text, f.span(), "admin_token_file")
            }
        };
        if text.is_empty() {
            return Err(src.error(
                span,
                "admin_token is empty; set a long random string, e.g. from `openssl rand -hex 32`",
            ));
        }
        // The token travels in an Authorization header: visible ASCII only. The
        // message names the position, never the token.
        if let Some(i) = text.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
            return Err(src.error(
                span,
                format!(
                    "{key}: the token has a space, control or non-ASCII character at byte {i}; use visible ASCII only, e.g. `openssl rand -hex 32`"
                ),
            ));
        }
        if text.len() < MIN_TOKEN_LEN {
            warnings.push(ConfigWarning(src.error(
                span,
                format!(
                    "{key}: the token is only {} characters long; use at least {MIN_TOKEN_LEN} random characters, e.g. `openssl rand -hex 32`",
                    text.len()
                ),
            )));
        }
        Ok(Some(AdminToken::new(&text)))
    }
}

/// Checks (for `check`) that `path` could be bound: its directory exists and
/// nothing but a stale socket is there. Creates nothing.
pub fn probe_socket(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "cannot create admin socket {}: {} is not a directory",
                path.display(),
                dir.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot create admin socket {}: directory {}: {e}",
                path.display(),
                dir.display()
            ));
        }
    }
    stale(path).map(|_| ())
}

/// Whether `path` holds a stale socket (`Ok(true)`), nothing (`Ok(false)`),
/// or something that must not be removed (`Err`): a socket a process still
/// listens on, or a file that is not a socket.
pub(crate) fn stale(path: &Path) -> Result<bool, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "admin socket path {} exists and is not a socket; remove it or choose another path",
            path.display()
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "admin socket {} is in use by a running process (another portcullis?); stop it or choose another path",
            path.display()
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => Err(format!(
            "cannot tell whether admin socket {} is stale: {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let hp = |s| split_host_port(s);
        assert_eq!(hp("LocalHost:9901"), Some(("localhost".into(), Some(9901))));
        assert_eq!(hp("127.0.0.1"), Some(("127.0.0.1".into(), None)));
        assert_eq!(hp("[::1]:9901"), Some(("::1".into(), Some(9901))));
        assert_eq!(hp("[::1]"), Some(("::1".into(), None)));
        assert_eq!(hp("admin.example."), Some(("admin.example".into(), None)));
        for bad in [
            "", ":80", "a:", "a:b", "::1", "[::1", "[zz]:1", "a:99999", "a b", "http://a", "a/b",
        ] {
            assert_eq!(hp(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Some(0o660));
        assert_eq!(parse_mode("600"), Some(0o600));
        assert_eq!(parse_mode("0o640"), Some(0o640));
        for bad in ["", "999", "4777", "0x1ff", "rw"] {
            assert_eq!(parse_mode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn token_digest_comparison() {
        let t = AdminToken::new("s3cret-token-0123456789");
        assert!(t.matches(b"s3cret-token-0123456789"));
        assert!(!t.matches(b"s3cret-token-012345678"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn root_resolves() {
        assert_eq!(lookup_id("root", false), Ok(Some(0)));
        assert_eq!(lookup_id("no-such-user-portcullis", false), Ok(None));
    }
}
