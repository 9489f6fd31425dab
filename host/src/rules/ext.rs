//! What plugin hosts add to the rule language: actions (`{ <kind> = "..." }`),
//! services (`use_service = "<kind>.<name>"`), fetches and converters
//! (`<kind>.<name>(...)`).
//!
//! Rules know plugins only through [`RuleExtension`]; the assembly step
//! hands the plugin hosts in as [`Extensions`], so `rules/` names no plugin
//! kind and a new kind needs no change here.

use std::sync::Arc;

use super::action::RuleEnv;
use super::fetch::{Call, Converter, Fetch};
use super::{Env, ParseError};
use crate::config::ConfigError;
use crate::config::schema::RawRule;
use crate::filter::Filter;

/// One plugin kind's entries in the rule language.
pub trait RuleExtension: Send + Sync {
    /// The kind: the action key and the prefix of its services, fetches
    /// and converters (`lua`, `wasm`).
    fn kind(&self) -> &'static str;

    /// Builds the rule `{ <kind> = "<name>", ... }` (its keys were checked).
    fn action(&self, raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError>;

    /// Builds `use_service = "<kind>.<name>"`; `name` is the part after the prefix.
    fn service(&self, name: &str, _re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, String> {
        Err(format!(
            "unknown service \"{}.{name}\": {} plugins provide no services",
            self.kind(),
            self.kind()
        ))
    }

    /// Builds the `tcp_request` rule `{ <kind> = "<name>", ... }` (a
    /// `tcp-req` action, run on a TCP stream's raw channels).
    fn tcp_action(&self, _raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
        Err(re.error(
            re.span.clone(),
            format!("{} plugins provide no tcp_request actions", self.kind()),
        ))
    }

    /// Builds `use_service = "<kind>.<name>"` in `tcp_request` (a TCP service).
    fn tcp_service(&self, name: &str, _re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, String> {
        Err(format!(
            "unknown TCP service \"{}.{name}\": {} plugins provide no TCP services",
            self.kind(),
            self.kind()
        ))
    }

    /// Builds the fetch `<kind>.<name>(args)`.
    fn fetch(&self, c: &Call<'_>, _env: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
        Err(ParseError::new(
            c.offset,
            format!("{} plugins provide no fetch {:?}", self.kind(), c.name),
        ))
    }

    /// Builds the converter `<kind>.<name>(args)`.
    fn converter(&self, c: &Call<'_>, _env: &Env<'_>) -> Result<Box<dyn Converter>, ParseError> {
        Err(ParseError::new(
            c.offset,
            format!("{} plugins provide no converter {:?}", self.kind(), c.name),
        ))
    }
}

/// The plugin hosts rules may reach, by kind.
#[derive(Default, Clone)]
pub struct Extensions(Vec<Arc<dyn RuleExtension>>);

static NONE: Extensions = Extensions(Vec::new());

impl Extensions {
    /// The given hosts.
    pub fn new(hosts: Vec<Arc<dyn RuleExtension>>) -> Extensions {
        Extensions(hosts)
    }

    /// No plugin host (tests, and fetches compiled at run time by scripts).
    pub fn empty() -> &'static Extensions {
        &NONE
    }

    /// The host of `kind`.
    pub fn get(&self, kind: &str) -> Option<&dyn RuleExtension> {
        self.0.iter().find(|e| e.kind() == kind).map(|e| &**e)
    }

    fn kinds(&self) -> String {
        let k: Vec<&str> = self.0.iter().map(|e| e.kind()).collect();
        if k.is_empty() {
            "none is loaded".to_string()
        } else {
            k.join(", ")
        }
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|e| e.kind()))
            .finish()
    }
}

/// The builder of every plugin action key (`lua`, `wasm`): the host of that kind builds it.
pub(super) fn build_action(
    raw: &RawRule,
    re: &RuleEnv<'_>,
) -> Result<Box<dyn Filter>, ConfigError> {
    match re.env.ctx.plugins.get(re.key) {
        Some(host) => host.action(raw, re),
        None => Err(re.error(
            re.span.clone(),
            format!(
                "`{}` rules need a {} plugin host, and none is loaded",
                re.key, re.key
            ),
        )),
    }
}

/// `use_service = "<kind>.<name>"`: the host of `kind` builds the service.
pub(super) fn build_service(
    raw: &RawRule,
    re: &RuleEnv<'_>,
) -> Result<Box<dyn Filter>, ConfigError> {
    let Some(s) = &raw.use_service else {
        return Err(re.error(re.span.clone(), "internal error: `use_service` missing"));
    };
    let host = s
        .get_ref()
        .split_once('.')
        .and_then(|(kind, name)| Some((re.env.ctx.plugins.get(kind)?, name)));
    let Some((host, name)) = host else {
        return Err(re.error(
            s.span(),
            format!(
                "unknown service {:?}; services are Lua services written \"lua.<name>\"",
                s.get_ref()
            ),
        ));
    };
    host.service(name, re).map_err(|m| re.error(s.span(), m))
}

/// The host of a `<kind>.<name>` call's kind (`what`: "fetch" or "converter", for the error).
fn host_of<'e>(
    c: &Call<'_>,
    env: &Env<'e>,
    what: &str,
) -> Result<&'e dyn RuleExtension, ParseError> {
    let kind = c.name.split_once('.').map_or(c.name, |(k, _)| k);
    env.ctx.plugins.get(kind).ok_or_else(|| {
        ParseError::new(
            c.offset,
            format!(
                "{what} {:?} needs a {kind} plugin host (loaded: {})",
                c.name,
                env.ctx.plugins.kinds()
            ),
        )
    })
}

/// The builder of `<kind>.*` fetches.
pub(super) fn build_fetch(c: &Call<'_>, env: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    host_of(c, env, "fetch")?.fetch(c, env)
}

/// The builder of `<kind>.*` converters.
pub(super) fn build_converter(
    c: &Call<'_>,
    env: &Env<'_>,
) -> Result<Box<dyn Converter>, ParseError> {
    host_of(c, env, "converter")?.converter(c, env)
}
