//! `tcp_request` rules (HAProxy's `tcp-request content`) of a TCP frontend
//! and `tcp_response` rules (`tcp-response content`) of a TCP frontend and
//! of the backends it uses: compiled here, evaluated by the TCP session
//! (`proxy/tcp.rs`).
//!
//! A `tcp_response` rule takes `accept`, `reject`, `close`, a Lua
//! `tcp-res` action, `set_var`/`unset_var` and the `sc_*` counters; its
//! conditions read the server's data (`res.len`, `res.payload`).
//!
//! A rule is a condition and one action: `accept`, `reject`, a Lua
//! `tcp-req` action, `use_service` (a TCP service), `use_backend`,
//! `set_var`/`unset_var`, `track_sc*` and the `sc_*` counters. As in
//! HAProxy, a condition that fails on data that may still grow (`req.len`,
//! `req.payload`) makes the rules wait for more data, until the frontend's
//! `inspect_delay` passes, the buffer is full or the client closed; then
//! it is evaluated as it stands.

use std::sync::Arc;

use toml::Spanned;

use super::action::{self, RuleEnv};
use super::{CompileCtx, Condition, Env, at_string};
use crate::config::schema::RawRule;
use crate::config::{ConfigError, SourceMap};
use crate::filter::Filter;
use crate::txn::{Phase, Txn};

/// Actions a `tcp_request` rule takes, as they are written.
pub const TCP_ACTIONS: &[&str] = &[
    "accept",
    "reject",
    "lua",
    "use_service",
    "use_backend",
    "set_var",
    "unset_var",
    "set_dst",
    "set_dst_port",
    "set_src",
    "set_src_port",
    "do_resolve",
    "track_sc0",
    "track_sc1",
    "track_sc2",
    "sc_inc_gpc",
    "sc_clr_gpc",
    "sc_set_gpt",
];

/// Actions a `tcp_response` rule takes, as they are written.
pub const TCP_RES_ACTIONS: &[&str] = &[
    "accept",
    "reject",
    "close",
    "lua",
    "set_var",
    "unset_var",
    "sc_inc_gpc",
    "sc_clr_gpc",
    "sc_set_gpt",
];

/// What a rule does when its condition holds.
pub enum TcpAction {
    /// Stop the rules; the connection goes to its backend.
    Accept,
    /// Close the connection.
    Reject,
    /// `tcp_response` only: what the server sent so far goes to the client,
    /// then the server connection closes (HAProxy's `close`).
    Close,
    /// A built-in action or a plugin's `tcp-req` action (a [`Filter`] run
    /// through its request hook: `Continue` goes on, `Respond` ends the
    /// connection, except a reply marked [`ACCEPT_CAUSE`]).
    Run(Arc<dyn Filter>),
    /// A TCP service answers the connection (the filter runs until it ends).
    Service(Arc<dyn Filter>),
}

/// The `Reply::cause` of a plugin action that accepted the connection
/// (Lua's `act.STOP` in a `tcp-req` action).
pub const ACCEPT_CAUSE: &str = "tcp_accept";

impl std::fmt::Debug for TcpAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcpAction::Accept => f.write_str("Accept"),
            TcpAction::Reject => f.write_str("Reject"),
            TcpAction::Close => f.write_str("Close"),
            TcpAction::Run(a) => write!(f, "Run({})", a.name()),
            TcpAction::Service(a) => write!(f, "Service({})", a.name()),
        }
    }
}

/// One compiled `tcp_request` rule.
#[derive(Debug)]
pub struct TcpRule {
    cond: Option<Condition>,
    unless: bool,
    pub action: TcpAction,
}

/// A condition's verdict on the data there is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The rule applies.
    Apply,
    /// The rule does not apply.
    Skip,
    /// Not decided yet: wait for more data (unless `last` was given).
    Wait,
}

impl TcpRule {
    /// Evaluates the condition; `last`: no more data will come (the delay
    /// passed, the buffer is full or the client closed).
    pub fn check(&self, txn: &Txn, last: bool) -> Verdict {
        let Some(c) = &self.cond else {
            return Verdict::Apply;
        };
        // More data may come: a miss waits for it (HAProxy's `ACL_TEST_MISS`,
        // negated terms included); the last evaluation takes the data as it stands.
        let holds = if last {
            c.holds(txn)
        } else {
            match c.holds_partial(txn) {
                Some(h) => h,
                None => return Verdict::Wait,
            }
        };
        if holds != self.unless {
            Verdict::Apply
        } else {
            Verdict::Skip
        }
    }
}

/// Compiles a frontend's `tcp_request` list.
pub fn compile(
    rules: &[Spanned<RawRule>],
    source: &SourceMap,
    cx: &CompileCtx<'_>,
) -> Result<Vec<TcpRule>, ConfigError> {
    rules
        .iter()
        .map(|r| compile_one(r, source, cx, false))
        .collect()
}

/// Compiles a frontend's or a backend's `tcp_response` list.
pub fn compile_response(
    rules: &[Spanned<RawRule>],
    source: &SourceMap,
    cx: &CompileCtx<'_>,
) -> Result<Vec<TcpRule>, ConfigError> {
    rules
        .iter()
        .map(|r| compile_one(r, source, cx, true))
        .collect()
}

fn compile_one(
    rule: &Spanned<RawRule>,
    source: &SourceMap,
    cx: &CompileCtx<'_>,
    response: bool,
) -> Result<TcpRule, ConfigError> {
    let raw = rule.get_ref();
    let keys = action::rule_keys(raw);
    let (list, what, has) = if response {
        (TCP_RES_ACTIONS, "tcp_response", "the server's data")
    } else {
        (TCP_ACTIONS, "tcp_request", "no HTTP message")
    };
    let is_action =
        |k: &str| action::find_action(k).is_some() || matches!(k, "accept" | "reject" | "close");
    let mut found: Option<(&'static str, std::ops::Range<usize>)> = None;
    for (key, span) in &keys {
        if !is_action(key) {
            continue;
        }
        if !list.contains(key) {
            return Err(source.error(
                span.clone(),
                format!(
                    "`{key}` cannot be used in {what} rules (they see {has}); they take: {}",
                    list.join(", ")
                ),
            ));
        }
        if let Some((first, _)) = &found {
            return Err(source.error(
                span.clone(),
                format!(
                    "a rule has exactly one action, but this one has both `{first}` and `{key}`; split it into two rules"
                ),
            ));
        }
        found = Some((key, span.clone()));
    }
    let Some((key, span)) = found else {
        return Err(source.error(
            rule.span(),
            format!("{what} rule has no action; add one of: {}", list.join(", ")),
        ));
    };
    let phase = if response {
        Phase::Response
    } else {
        Phase::Request
    };
    let env = Env { ctx: cx, phase };
    let (cond, unless) = match (&raw.cond_if, &raw.unless) {
        (Some(_), Some(u)) => {
            return Err(source.error(
                u.span(),
                "a rule takes `if` or `unless`, not both; combine them, e.g. if = \"A and !B\"",
            ));
        }
        (Some(c), None) | (None, Some(c)) => {
            let parsed =
                Condition::parse(c.get_ref(), &env).map_err(|e| at_string(source, c, e))?;
            (Some(parsed), raw.unless.is_some())
        }
        (None, None) => (None, false),
    };
    let flag = |v: &Option<Spanned<bool>>| -> Result<(), ConfigError> {
        match v {
            Some(b) if !*b.get_ref() => Err(source.error(
                b.span(),
                format!("`{key} = false` does nothing; write `{key} = true` or remove the rule"),
            )),
            _ => Ok(()),
        }
    };
    let bare = |what: &str| -> Result<(), ConfigError> {
        match keys
            .iter()
            .find(|(k, _)| !matches!(*k, "if" | "unless") && *k != key)
        {
            Some((k, s)) => {
                Err(source.error(s.clone(), format!("`{k}` does not apply to `{what}`")))
            }
            None => Ok(()),
        }
    };
    let action = match key {
        "accept" => {
            flag(&raw.accept)?;
            bare("accept")?;
            TcpAction::Accept
        }
        "reject" => {
            flag(&raw.reject)?;
            bare("reject")?;
            TcpAction::Reject
        }
        "close" => {
            flag(&raw.close)?;
            bare("close")?;
            TcpAction::Close
        }
        "lua" | "use_service" => {
            let re = RuleEnv {
                env,
                source,
                span: rule.span(),
                key: if key == "lua" { "lua" } else { "use_service" },
                after_response: false,
            };
            if key == "lua" {
                for (k, s) in &keys {
                    if !matches!(*k, "if" | "unless" | "lua" | "args") {
                        return Err(
                            source.error(s.clone(), format!("`{k}` does not apply to `lua`"))
                        );
                    }
                }
                let host = cx.plugins.get("lua").ok_or_else(|| {
                    source.error(
                        span.clone(),
                        "`lua` rules need a lua plugin host, and none is loaded",
                    )
                })?;
                TcpAction::Run(Arc::from(host.tcp_action(raw, &re)?))
            } else {
                bare("use_service")?;
                let Some(s) = &raw.use_service else {
                    return Err(source.error(span, "internal error: `use_service` missing"));
                };
                let (kind, name) = s
                    .get_ref()
                    .split_once('.')
                    .unwrap_or(("", s.get_ref().as_str()));
                let host = cx.plugins.get(kind).ok_or_else(|| {
                    source.error(
                        s.span(),
                        format!(
                            "use_service {:?}: expected <kind>.<name>, e.g. \"lua.smtp\"",
                            s.get_ref()
                        ),
                    )
                })?;
                TcpAction::Service(Arc::from(
                    host.tcp_service(name, &re)
                        .map_err(|m| source.error(s.span(), m))?,
                ))
            }
        }
        _ => {
            // The built-in actions shared with http_request, compiled as such
            // (their condition is evaluated here, so it is left out).
            let mut inner = raw.clone();
            inner.cond_if = None;
            inner.unless = None;
            let f = super::compile_rule(&Spanned::new(rule.span(), inner), phase, source, cx)?;
            TcpAction::Run(f)
        }
    };
    Ok(TcpRule {
        cond,
        unless,
        action,
    })
}
