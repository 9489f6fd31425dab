//! HAProxy's `mailers` sections and a backend's `email-alert` settings:
//! `[[mailers]]` (name, `mailer` list, `timeout_mail`) and a backend's
//! `email_alert` table (`mailers`, `from`, `to`, `level`, `myhostname`,
//! `track_server_health`). portcullis sends no mail itself (HAProxy 3.x
//! dropped its native sender too): a Lua script such as HAProxy's
//! `mailers.lua` reads them with `Proxy:get_mailers()` and speaks SMTP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{ConfigError, SourceMap};
use super::units::ConfigDuration;

/// `[[mailers]]`: HAProxy's `mailers <name>` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailers {
    pub name: Spanned<String>,
    /// `mailer <name> <addr>:<port>` lines.
    #[serde(default)]
    pub mailer: Vec<Spanned<RawMailer>>,
    /// HAProxy's `timeout mail` (default 10s).
    pub timeout_mail: Option<Spanned<ConfigDuration>>,
}

/// One `mailer` of a `[[mailers]]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMailer {
    pub name: Spanned<String>,
    pub addr: Spanned<String>,
}

/// A backend's `email_alert`: HAProxy's `email-alert` keywords.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmailAlert {
    pub mailers: Spanned<String>,
    pub from: Spanned<String>,
    pub to: Spanned<String>,
    /// Syslog level name: the most verbose alert sent (default `alert`).
    pub level: Option<Spanned<String>>,
    /// Name given in SMTP `HELO` (default: the system's host name).
    pub myhostname: Option<Spanned<String>>,
    /// HAProxy's `option log-health-checks`: alerts on each check result too.
    pub track_server_health: Option<bool>,
}

/// A checked `[[mailers]]` section.
#[derive(Debug)]
pub struct Mailers {
    pub name: Arc<str>,
    /// `(name, address)` in the order written.
    pub servers: Vec<(Arc<str>, SocketAddr)>,
    pub timeout: Duration,
}

/// A backend's checked email-alert settings, with its mailers section.
#[derive(Debug)]
pub struct EmailAlert {
    pub mailers: Arc<Mailers>,
    pub from: String,
    pub to: String,
    /// Syslog level number (0 emerg .. 7 debug).
    pub level: u8,
    pub myhostname: String,
    pub track_server_health: bool,
}

/// HAProxy's default `timeout mail` (`DEF_MAILALERTTIME`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Syslog level names in number order, as HAProxy spells them.
const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

impl super::Validator<'_> {
    /// Every `[[mailers]]` section by name.
    pub(super) fn mailers(
        &self,
        raw: &[Spanned<RawMailers>],
    ) -> Result<HashMap<String, Arc<Mailers>>, ConfigError> {
        let src = self.source;
        let mut out: HashMap<String, Arc<Mailers>> = HashMap::new();
        for m in raw {
            let m = m.get_ref();
            self.check_name(&m.name, "mailers section")?;
            if out.contains_key(m.name.get_ref()) {
                return Err(src.error(
                    m.name.span(),
                    format!(
                        "duplicate mailers section {:?}; every [[mailers]] needs a unique name",
                        m.name.get_ref()
                    ),
                ));
            }
            if m.mailer.is_empty() {
                return Err(src.error(
                    m.name.span(),
                    format!(
                        "mailers section {:?} has no mailer; add e.g. mailer = [{{ name = \"smtp1\", addr = \"127.0.0.1:25\" }}]",
                        m.name.get_ref()
                    ),
                ));
            }
            let mut servers: Vec<(Arc<str>, SocketAddr)> = Vec::with_capacity(m.mailer.len());
            for s in &m.mailer {
                let s = s.get_ref();
                self.check_name(&s.name, "mailer")?;
                if servers.iter().any(|(n, _)| **n == **s.name.get_ref()) {
                    return Err(src.error(
                        s.name.span(),
                        format!(
                            "duplicate mailer name {:?} in mailers section {:?}",
                            s.name.get_ref(),
                            m.name.get_ref()
                        ),
                    ));
                }
                let addr = self.socket_addr(&s.addr, "mailer address")?;
                if addr.port() == 0 {
                    return Err(src.error(s.addr.span(), "mailer address needs a non-zero port"));
                }
                servers.push((Arc::from(s.name.get_ref().as_str()), addr));
            }
            let timeout = match &m.timeout_mail {
                Some(t) if t.get_ref().0.is_zero() => {
                    return Err(src.error(t.span(), "timeout_mail must be above 0"));
                }
                Some(t) => t.get_ref().0,
                None => DEFAULT_TIMEOUT,
            };
            out.insert(
                m.name.get_ref().clone(),
                Arc::new(Mailers {
                    name: Arc::from(m.name.get_ref().as_str()),
                    servers,
                    timeout,
                }),
            );
        }
        Ok(out)
    }
}

/// A backend's `email_alert`, its `mailers` looked up in `sections`.
pub(super) fn email_alert(
    src: &SourceMap,
    raw: &RawEmailAlert,
    sections: &HashMap<String, Arc<Mailers>>,
) -> Result<EmailAlert, ConfigError> {
    let mailers = match sections.get(raw.mailers.get_ref()) {
        Some(m) => Arc::clone(m),
        None => {
            let mut known: Vec<&str> = sections.keys().map(String::as_str).collect();
            known.sort_unstable();
            let hint = if known.is_empty() {
                "no [[mailers]] section is declared".to_string()
            } else {
                format!("declared: {}", known.join(", "))
            };
            return Err(src.error(
                raw.mailers.span(),
                format!(
                    "unknown mailers section {:?}; {hint}",
                    raw.mailers.get_ref()
                ),
            ));
        }
    };
    for (v, what) in [(&raw.from, "from"), (&raw.to, "to")] {
        let text = v.get_ref();
        if text.is_empty() || text.bytes().any(|b| b.is_ascii_control()) {
            return Err(src.error(
                v.span(),
                format!("email_alert {what} must be a mail address such as \"ops@example.com\", got {text:?}"),
            ));
        }
    }
    let level = match &raw.level {
        Some(l) => match LEVELS.iter().position(|n| *n == l.get_ref().as_str()) {
            Some(i) => u8::try_from(i).unwrap_or(1),
            None => {
                return Err(src.error(
                    l.span(),
                    format!(
                        "unknown email_alert level {:?}; expected one of {}",
                        l.get_ref(),
                        LEVELS.join(", ")
                    ),
                ));
            }
        },
        None => 1,
    };
    let myhostname = match &raw.myhostname {
        Some(h)
            if h.get_ref().is_empty()
                || h.get_ref()
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) =>
        {
            return Err(src.error(
                h.span(),
                format!(
                    "email_alert myhostname must be a host name without spaces, got {:?}",
                    h.get_ref()
                ),
            ));
        }
        Some(h) => h.get_ref().clone(),
        None => host_name(),
    };
    Ok(EmailAlert {
        mailers,
        from: raw.from.get_ref().clone(),
        to: raw.to.get_ref().clone(),
        level,
        myhostname,
        track_server_health: raw.track_server_health.unwrap_or(false),
    })
}

/// The system's host name, HAProxy's default `myhostname` (Linux keeps it
/// in /proc; "localhost" if unreadable).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
