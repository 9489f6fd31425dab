//! HAProxy's `resolvers` sections: `[[resolvers]]` (name, `nameservers`,
//! `parse_resolv_conf`, `resolve_retries`, `timeout_retry`, `hold_valid`),
//! named by `do_resolve` rules. As in HAProxy, a section called `default`
//! exists even when none is declared: it reads the system's
//! `/etc/resolv.conf` (HAProxy 2.6's implicit `resolvers default` with
//! `parse-resolv-conf`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diag::ConfigError;
use super::units::ConfigDuration;

/// `[[resolvers]]`: HAProxy's `resolvers <name>` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResolvers {
    pub name: Spanned<String>,
    /// `nameserver <name> <addr>:<port>` lines, as `"ADDR:PORT"` strings.
    #[serde(default)]
    pub nameservers: Vec<Spanned<String>>,
    /// HAProxy's `parse-resolv-conf`: add the system's name servers.
    pub parse_resolv_conf: Option<bool>,
    /// HAProxy's `resolve_retries` (default 3): queries sent before giving up.
    pub resolve_retries: Option<Spanned<i64>>,
    /// HAProxy's `timeout retry` (default 1s): how long one query waits.
    pub timeout_retry: Option<Spanned<ConfigDuration>>,
    /// HAProxy's `hold valid` (default 10s): how long an answer is reused.
    pub hold_valid: Option<Spanned<ConfigDuration>>,
}

/// A checked `[[resolvers]]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolversSpec {
    pub name: Arc<str>,
    pub nameservers: Vec<SocketAddr>,
    /// Read `/etc/resolv.conf` for more name servers when the section is built.
    pub parse_resolv_conf: bool,
    pub resolve_retries: u32,
    pub timeout_retry: Duration,
    pub hold_valid: Duration,
}

impl ResolversSpec {
    /// HAProxy's implicit `default` section: the system's name servers.
    pub fn system_default() -> ResolversSpec {
        ResolversSpec {
            name: Arc::from("default"),
            nameservers: Vec::new(),
            parse_resolv_conf: true,
            resolve_retries: 3,
            timeout_retry: Duration::from_secs(1),
            hold_valid: Duration::from_secs(10),
        }
    }
}

impl super::Validator<'_> {
    /// Every `[[resolvers]]` section by name, with `default` added unless declared.
    pub(super) fn resolvers(
        &self,
        raw: &[Spanned<RawResolvers>],
    ) -> Result<HashMap<String, Arc<ResolversSpec>>, ConfigError> {
        let src = self.source;
        let mut out: HashMap<String, Arc<ResolversSpec>> = HashMap::new();
        for r in raw {
            let r = r.get_ref();
            self.check_name(&r.name, "resolvers section")?;
            if out.contains_key(r.name.get_ref()) {
                return Err(src.error(
                    r.name.span(),
                    format!(
                        "duplicate resolvers section {:?}; every [[resolvers]] needs a unique name",
                        r.name.get_ref()
                    ),
                ));
            }
            let parse_resolv_conf = r.parse_resolv_conf.unwrap_or(false);
            if r.nameservers.is_empty() && !parse_resolv_conf {
                return Err(src.error(
                    r.name.span(),
                    format!(
                        "resolvers section {:?} has no name server; add e.g. nameservers = [\"127.0.0.1:53\"], or parse_resolv_conf = true",
                        r.name.get_ref()
                    ),
                ));
            }
            let mut nameservers = Vec::with_capacity(r.nameservers.len());
            for n in &r.nameservers {
                // HAProxy wants the port written (`PA_O_PORT_MAND`).
                let addr: SocketAddr = n.get_ref().parse().map_err(|_| {
                    src.error(
                        n.span(),
                        format!(
                            "invalid name server {:?}: expected IP:PORT, e.g. \"127.0.0.1:53\" or \"[::1]:53\"",
                            n.get_ref()
                        ),
                    )
                })?;
                if addr.port() == 0 {
                    return Err(src.error(n.span(), "a name server needs a non-zero port"));
                }
                nameservers.push(addr);
            }
            let resolve_retries = match &r.resolve_retries {
                Some(n) if !(1..=100).contains(n.get_ref()) => {
                    return Err(src.error(n.span(), "resolve_retries must be from 1 to 100"));
                }
                Some(n) => *n.get_ref() as u32,
                None => 3,
            };
            let duration = |d: &Option<Spanned<ConfigDuration>>, key: &str, default: u64| match d {
                Some(t) if t.get_ref().0.is_zero() => {
                    Err(src.error(t.span(), format!("{key} must be above 0")))
                }
                Some(t) => Ok(t.get_ref().0),
                None => Ok(Duration::from_secs(default)),
            };
            out.insert(
                r.name.get_ref().clone(),
                Arc::new(ResolversSpec {
                    name: Arc::from(r.name.get_ref().as_str()),
                    nameservers,
                    parse_resolv_conf,
                    resolve_retries,
                    timeout_retry: duration(&r.timeout_retry, "timeout_retry", 1)?,
                    hold_valid: duration(&r.hold_valid, "hold_valid", 10)?,
                }),
            );
        }
        out.entry("default".to_string())
            .or_insert_with(|| Arc::new(ResolversSpec::system_default()));
        Ok(out)
    }
}
