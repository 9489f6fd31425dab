//! The access log's settings in `[global]`: where lines go
//! (`access_log_target`), the syslog header (`syslog_*`), and the rate limit
//! of plugin-failure lines (`plugin_failure_log_*`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::diag::{ConfigError, SourceMap};
use super::schema::RawGlobal;
use crate::plugin::lograte;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// The daemon's standard error (the default).
    Stderr,
    /// A file, appended to; reopened on SIGUSR1 (and `POST /logs/reopen`).
    File(PathBuf),
    /// Syslog datagrams over UDP (HAProxy's `log HOST:PORT`).
    Udp(SocketAddr),
    /// Syslog datagrams to a Unix socket (HAProxy's `log /dev/log`).
    Unix(PathBuf),
}

impl LogTarget {
    /// Whether lines are syslog messages (a header, one datagram each).
    pub fn is_syslog(&self) -> bool {
        matches!(self, LogTarget::Udp(_) | LogTarget::Unix(_))
    }
}

/// The syslog header's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyslogFormat {
    /// `<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: ` (BSD syslog; HAProxy's default).
    Rfc3164,
    /// `<PRI>1 TIMESTAMP HOST TAG PID - - ` (the IETF format).
    Rfc5424,
}

/// The syslog header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Syslog {
    pub format: SyslogFormat,
    /// Facility code (0..=23).
    pub facility: u8,
    /// Severity (0..=7).
    pub level: u8,
    pub tag: String,
}

/// The access log's output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub target: LogTarget,
    pub syslog: Syslog,
    pub failure_lines: lograte::Settings,
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            target: LogTarget::Stderr,
            syslog: Syslog {
                format: SyslogFormat::Rfc3164,
                facility: 16,
                level: 6,
                tag: "portcullis".into(),
            },
            failure_lines: lograte::Settings::default(),
        }
    }
}

/// Syslog facility names (RFC 5424 codes 0..=23), as HAProxy spells them.
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "auth2",
    "ftp", "ntp", "audit", "alert", "cron2", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Syslog severities (codes 0..=7), as HAProxy spells them.
const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

fn pick(
    src: &SourceMap,
    v: &Spanned<String>,
    names: &[&str],
    what: &str,
) -> Result<u8, ConfigError> {
    let text = v.get_ref().to_ascii_lowercase();
    names
        .iter()
        .position(|n| *n == text)
        .and_then(|i| u8::try_from(i).ok())
        .ok_or_else(|| {
            src.error(
                v.span(),
                format!(
                    "unknown {what} {:?}; expected one of {}",
                    v.get_ref(),
                    names.join(", ")
                ),
            )
        })
}

/// Checks the `[global]` log keys.
pub fn settings(src: &SourceMap, g: &RawGlobal) -> Result<LogSettings, ConfigError> {
    let mut out = LogSettings::default();
    if let Some(t) = &g.access_log_target {
        out.target = target(src, t)?;
    }
    if let Some(f) = &g.syslog_format {
        out.syslog.format = match f.get_ref().to_ascii_lowercase().as_str() {
            "rfc3164" => SyslogFormat::Rfc3164,
            "rfc5424" => SyslogFormat::Rfc5424,
            _ => {
                return Err(src.error(
                    f.span(),
                    format!(
                        "unknown syslog_format {:?}; expected \"rfc3164\" or \"rfc5424\"",
                        f.get_ref()
                    ),
                ));
            }
        };
    }
    if let Some(f) = &g.syslog_facility {
        out.syslog.facility = pick(src, f, &FACILITIES, "syslog_facility")?;
    }
    if let Some(l) = &g.syslog_level {
        out.syslog.level = pick(src, l, &LEVELS, "syslog_level")?;
    }
    if let Some(t) = &g.syslog_tag {
        let tag = t.get_ref();
        // RFC 5424's APP-NAME: 1..48 printable ASCII, no spaces.
        if tag.is_empty() || tag.len() > 48 || !tag.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(src.error(
                t.span(),
                format!(
                    "syslog_tag {tag:?} must be 1 to 48 printable ASCII characters without spaces"
                ),
            ));
        }
        out.syslog.tag = tag.clone();
    }
    if let Some(b) = &g.plugin_failure_log_burst {
        out.failure_lines.burst = super::ranged(src, b, "plugin_failure_log_burst", 0, 1_000_000)?;
    }
    if let Some(i) = &g.plugin_failure_log_interval {
        let d = i.get_ref().0;
        if d < Duration::from_millis(1) || d > Duration::from_secs(86_400) {
            return Err(src.error(
                i.span(),
                "plugin_failure_log_interval must be between 1ms and 24h",
            ));
        }
        out.failure_lines.interval = d;
    }
    Ok(out)
}

/// `access_log_target`: `stderr`, `file:PATH`, `udp://HOST:PORT` or `unix:PATH`.
fn target(src: &SourceMap, t: &Spanned<String>) -> Result<LogTarget, ConfigError> {
    let text = t.get_ref().trim();
    let err = |m: String| src.error(t.span(), m);
    if text == "stderr" {
        return Ok(LogTarget::Stderr);
    }
    if let Some(path) = text.strip_prefix("file:") {
        if path.is_empty() {
            return Err(err("access_log_target \"file:\" needs a path, e.g. \"file:/var/log/portcullis/access.log\"".into()));
        }
        return Ok(LogTarget::File(super::resolve_path(src.file(), path)));
    }
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(err(
                "access_log_target \"unix:\" needs a socket path, e.g. \"unix:/dev/log\"".into(),
            ));
        }
        return Ok(LogTarget::Unix(super::resolve_path(src.file(), path)));
    }
    if let Some(hp) = text.strip_prefix("udp://") {
        let addr = hp
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                err(format!(
                    "access_log_target {text:?}: {hp:?} is not a reachable HOST:PORT, e.g. \"udp://127.0.0.1:514\""
                ))
            })?;
        return Ok(LogTarget::Udp(addr));
    }
    Err(err(format!(
        "unknown access_log_target {text:?}; expected \"stderr\", \"file:PATH\", \"udp://HOST:PORT\" or \"unix:PATH\" (a syslog socket such as \"unix:/dev/log\")"
    )))
}
