//! Config rules (`http_request` / `http_response`) compiled into filters.
//!
//! Each rule becomes one [`RuleFilter`]: an optional [`Condition`] plus one
//! [`Action`]. The pieces live in their own modules:
//! - [`fetch`]: sample fetches and converters (registries [`fetch::FETCHES`], [`fetch::CONVERTERS`]);
//! - [`cond`]: HAProxy-style conditions (`path_beg /api and !src 10.0.0.0/8`);
//! - [`format`]: log-format strings (`"https://%[hdr(host)]%[path]"`);
//! - [`action`]: the actions (registry [`action::ACTIONS`]).
//!
//! Everything is parsed and validated at load time; errors point at the
//! line and column inside the config string. At run time rules never panic:
//! a value that cannot be used (e.g. an invalid header value) skips the action.

pub mod action;
pub mod cond;
pub mod crypto;
pub mod dest;
pub mod ext;
pub mod fetch;
pub mod format;
pub mod pattern;
pub mod stick;
pub mod tcp;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use strsim::levenshtein;
use toml::Spanned;

pub use action::{ActionDef, RuleEnv};
pub use cond::Condition;
pub use ext::{Extensions, RuleExtension};
pub use fetch::{Expr, Kind, Value};
pub use format::{LogFacts, LogFormat};

use crate::config::schema::RawRule;
use crate::config::{ConfigError, SourceMap};
use crate::filter::{BodyFlow, BodyLimits, Chain, Filter, Flow, Phases};
use crate::txn::{Phase, Txn, VarScope};

/// What rules and expressions may refer to: the names they resolve against.
/// Rules compiled from the config also get the `SourceMap` their errors
/// point into; expressions a script compiles at run time need none.
pub struct CompileCtx<'a> {
    /// Backend name → index in the config.
    pub backends: &'a HashMap<String, usize>,
    /// The plugin hosts and what they registered (actions, fetches, converters, services).
    pub plugins: &'a Extensions,
    /// Stick tables that `track_sc*`, `sc*_` / `src_` / `table_` fetches may name.
    pub tables: &'a crate::stick::StickTables,
    /// `[[resolvers]]` sections that `do_resolve` rules may name.
    pub resolvers: &'a crate::resolve::Resolvers,
}

/// The compile environment of one rule: the context and the phase it runs in.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    /// What the config declares (backends, source for errors).
    pub ctx: &'a CompileCtx<'a>,
    /// The phase the rule runs in (`http_request` → Request).
    pub phase: Phase,
}

/// A parse error inside one config string; `offset` is a byte offset into that string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset into the parsed string.
    pub offset: usize,
    /// What was wrong and what would be right.
    pub message: String,
}

impl ParseError {
    /// An error at byte `offset` of the string being parsed.
    pub fn new(offset: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            offset,
            message: message.into(),
        }
    }
}

/// Compiles a frontend's `http_request` and `http_response` lists into its
/// filter chain; each filter is placed by the hooks it takes part in
/// ([`Chain::assemble`]).
pub fn compile_chain(
    request: &[Spanned<RawRule>],
    response: &[Spanned<RawRule>],
    after_response: &[Spanned<RawRule>],
    source: &SourceMap,
    cx: &CompileCtx<'_>,
) -> Result<Chain, ConfigError> {
    let request = request
        .iter()
        .map(|r| compile_rule(r, Phase::Request, source, cx))
        .collect::<Result<Vec<_>, _>>()?;
    let response = response
        .iter()
        .map(|r| compile_rule(r, Phase::Response, source, cx))
        .collect::<Result<Vec<_>, _>>()?;
    let mut chain = Chain::assemble(request, response);
    for r in after_response {
        chain
            .after_response
            .push(compile_after_response(r, source, cx)?);
    }
    Ok(chain)
}

/// Compiles an access-log `log_format` (HAProxy variables and `%[fetch]`
/// as at the end of the exchange: response fetches, variables).
pub fn compile_log_format(
    text: Option<&Spanned<String>>,
    source: &SourceMap,
    cx: &CompileCtx<'_>,
) -> Result<Option<LogFormat>, ConfigError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let env = Env {
        ctx: cx,
        phase: Phase::Response,
    };
    LogFormat::parse_log(text.get_ref(), &env)
        .map(Some)
        .map_err(|e| at_string(source, text, e))
}

/// Actions `http_after_response` takes (HAProxy 2.6's `http-after-response`
/// set, in this config's names): the response is already decided, so
/// nothing that answers, waits or routes.
const AFTER_RESPONSE_ACTIONS: &[&str] = &[
    "set_header",
    "add_header",
    "del_header",
    "set_status",
    "set_var",
    "unset_var",
    "sc_inc_gpc",
    "sc_clr_gpc",
    "sc_set_gpt",
    // Lua actions registered for `http-after-res` (checked by the Lua host).
    "lua",
];

/// Compiles one `http_after_response` rule: a response rule limited to
/// [`AFTER_RESPONSE_ACTIONS`].
fn compile_after_response(
    rule: &Spanned<RawRule>,
    source: &SourceMap,
    cx: &CompileCtx<'_>,
) -> Result<Arc<dyn Filter>, ConfigError> {
    for (key, span) in action::rule_keys(rule.get_ref()) {
        if action::find_action(key).is_some() && !AFTER_RESPONSE_ACTIONS.contains(&key) {
            return Err(source.error(
                span,
                format!(
                    "`{key}` cannot be used in http_after_response rules (the response is already decided); they take: {}",
                    AFTER_RESPONSE_ACTIONS.join(", ")
                ),
            ));
        }
    }
    compile_rule_in(rule, Phase::Response, true, source, cx)
}

fn list_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Request => "http_request",
        Phase::Response => "http_response",
    }
}

/// Compiles one rule of the `phase` list into a filter.
pub fn compile_rule(
    rule: &Spanned<RawRule>,
    phase: Phase,
    source: &SourceMap,
    cx: &CompileCtx<'_>,
) -> Result<Arc<dyn Filter>, ConfigError> {
    compile_rule_in(rule, phase, false, source, cx)
}

/// [`compile_rule`], for the `http_after_response` list when `after_response`.
fn compile_rule_in(
    rule: &Spanned<RawRule>,
    phase: Phase,
    after_response: bool,
    source: &SourceMap,
    cx: &CompileCtx<'_>,
) -> Result<Arc<dyn Filter>, ConfigError> {
    let raw = rule.get_ref();
    let keys = action::rule_keys(raw);

    let mut found: Option<(&'static ActionDef, Range<usize>)> = None;
    for (key, span) in &keys {
        let Some(def) = action::find_action(key) else {
            continue;
        };
        if let Some((first, _)) = &found {
            return Err(source.error(
                span.clone(),
                format!(
                    "a rule has exactly one action, but this one has both `{}` and `{key}`; split it into two rules",
                    first.key
                ),
            ));
        }
        found = Some((def, span.clone()));
    }
    let Some((def, action_span)) = found else {
        let all: Vec<&str> = action::ACTIONS.iter().map(|d| d.key).collect();
        return Err(source.error(
            rule.span(),
            format!("rule has no action; add one of: {}", all.join(", ")),
        ));
    };
    if !def.phases.allows(phase) {
        let other = match phase {
            Phase::Request => "http_response",
            Phase::Response => "http_request",
        };
        return Err(source.error(
            action_span,
            format!(
                "`{}` cannot be used in {} rules ({}); it belongs in {other}",
                def.key,
                list_name(phase),
                def.phase_note
            ),
        ));
    }
    for (key, span) in &keys {
        if matches!(*key, "if" | "unless") || *key == def.key || def.modifiers.contains(key) {
            continue;
        }
        let owners: Vec<String> = action::ACTIONS
            .iter()
            .filter(|d| d.modifiers.contains(key))
            .map(|d| format!("`{}`", d.key))
            .collect();
        let owners = match owners.as_slice() {
            [] => "another action".to_string(),
            [one] => one.clone(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        };
        return Err(source.error(
            span.clone(),
            format!(
                "`{key}` does not apply to `{}`; it is used with {owners}",
                def.key
            ),
        ));
    }

    let env = Env { ctx: cx, phase };
    let cond = match (&raw.cond_if, &raw.unless) {
        (Some(_), Some(u)) => {
            return Err(source.error(
                u.span(),
                "a rule takes `if` or `unless`, not both; combine them, e.g. if = \"A and !B\"",
            ));
        }
        (Some(c), None) => {
            Some(Condition::parse(c.get_ref(), &env).map_err(|e| at_string(source, c, e))?)
        }
        (None, Some(u)) => Some(
            Condition::parse(u.get_ref(), &env)
                .map_err(|e| at_string(source, u, e))?
                .negated(),
        ),
        (None, None) => None,
    };
    let re = RuleEnv {
        env,
        source,
        span: rule.span(),
        key: def.key,
        after_response,
    };
    let inner = (def.build)(raw, &re)?;
    Ok(Arc::new(RuleFilter::new(def.key, phase, cond, inner)))
}

/// One compiled rule: an optional condition guarding a filter (a built-in
/// action, a Lua action or service, a Wasm filter).
///
/// The condition is checked once, at the head hook of the phase the rule
/// was declared in; a filter that also takes part in later hooks (a Wasm
/// filter declared in `http_request` sees the response and both bodies)
/// knows per request whether it ran, so those hooks go to it directly.
pub struct RuleFilter {
    name: &'static str,
    phase: Phase,
    cond: Option<Condition>,
    inner: Box<dyn Filter>,
}

impl RuleFilter {
    /// A rule named `name` (its action key) declared in the `phase` list.
    pub fn new(
        name: &'static str,
        phase: Phase,
        cond: Option<Condition>,
        inner: Box<dyn Filter>,
    ) -> RuleFilter {
        RuleFilter {
            name,
            phase,
            cond,
            inner,
        }
    }

    fn holds(&self, txn: &Txn) -> bool {
        self.cond.as_ref().is_none_or(|c| c.holds(txn))
    }
}

impl fmt::Debug for RuleFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleFilter")
            .field("name", &self.name)
            .field("phase", &self.phase)
            .field("cond", &self.cond)
            .finish()
    }
}

impl Filter for RuleFilter {
    fn name(&self) -> &str {
        self.name
    }

    fn phases(&self) -> Phases {
        self.inner.phases()
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        if self.phase == Phase::Request && !self.holds(txn) {
            return Flow::Continue;
        }
        self.inner.on_request(txn)
    }

    fn on_response(&self, txn: &mut Txn) -> Flow {
        if self.phase == Phase::Response && !self.holds(txn) {
            return Flow::Continue;
        }
        self.inner.on_response(txn)
    }

    fn resume(&self, txn: &mut Txn) -> Flow {
        self.inner.resume(txn)
    }

    fn body_limits(&self, txn: &Txn) -> Option<BodyLimits> {
        self.inner.body_limits(txn)
    }

    fn on_body(&self, txn: &mut Txn, end_of_stream: bool) -> BodyFlow {
        self.inner.on_body(txn, end_of_stream)
    }

    fn on_trailers(&self, txn: &mut Txn) -> BodyFlow {
        self.inner.on_trailers(txn)
    }

    fn on_log(&self, txn: &Txn) {
        self.inner.on_log(txn);
    }
}

// ---------------------------------------------------------------------------
// Helpers shared by the submodules
// ---------------------------------------------------------------------------

/// A [`ParseError`] inside config string `s`, located in the file.
///
/// Offsets count bytes of the decoded string; the source map maps them back
/// through the TOML quotes and escapes (an offset past the value points at
/// its closing quote).
pub(crate) fn at_string(source: &SourceMap, s: &Spanned<String>, e: ParseError) -> ConfigError {
    source.error_in_string(s.span(), e.offset, e.message)
}

/// Parses `scope.name` for `set_var` / `var()`, checking the scope exists in `env`'s phase.
pub(crate) fn parse_var_name<'a>(
    full: &'a str,
    env: &Env<'_>,
) -> Result<(VarScope, &'a str), String> {
    const SCOPES: [&str; 5] = ["proc", "sess", "txn", "req", "res"];
    let Some((scope_text, rest)) = full.split_once('.') else {
        return Err(format!(
            "variable {full:?} needs a scope: write <scope>.<name> with scope proc, sess, txn, req or res (e.g. \"txn.{full}\")"
        ));
    };
    let Some((scope, name)) = VarScope::parse(full) else {
        if rest.is_empty() {
            return Err(format!("variable {full:?} has no name after the scope"));
        }
        let hint = suggest(scope_text, SCOPES)
            .map(did_you_mean)
            .unwrap_or_default();
        return Err(format!(
            "unknown variable scope {scope_text:?} in {full:?}{hint}; expected proc, sess, txn, req or res"
        ));
    };
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.')))
    {
        return Err(format!(
            "invalid character {bad:?} in variable name {full:?}; use letters, digits, '_' and '.'"
        ));
    }
    match (scope, env.phase) {
        (VarScope::Res, Phase::Request) => Err(format!(
            "variable scope \"res\" only exists in http_response rules; use \"txn.{name}\" to share a value between request and response"
        )),
        (VarScope::Req, Phase::Response) => Err(format!(
            "variable scope \"req\" only exists in http_request rules; use \"txn.{name}\" to share a value between request and response"
        )),
        _ => Ok((scope, name)),
    }
}

/// The closest candidate to a misspelled `name`, if one is close enough.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let max = match name.chars().count() {
        0..=2 => 1,
        3..=5 => 2,
        _ => 3,
    };
    candidates
        .into_iter()
        .map(|c| (levenshtein(name, c), c))
        .filter(|&(d, _)| d > 0 && d <= max)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `; did you mean "x"?`
pub(crate) fn did_you_mean(s: &str) -> String {
    format!("; did you mean \"{s}\"?")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use super::*;
    use crate::config::BindCheck;
    use crate::runtime::Runtime as Config;
    use crate::txn::{BackendChoice, Sample};

    /// A source map and backend table for unit tests (`api` = 0, `static` = 1).
    pub(crate) fn ctx_parts() -> (SourceMap, HashMap<String, usize>) {
        (
            SourceMap::new(Path::new("t.toml"), ""),
            HashMap::from([("api".to_string(), 0), ("static".to_string(), 1)]),
        )
    }

    /// A GET of `uri` from 10.1.2.3:5555.
    pub(crate) fn txn(uri: &str) -> Txn {
        Txn::for_test(uri, SocketAddr::from(([10, 1, 2, 3], 5555)))
    }

    const HEAD: &str = r#"[[backend]]
name = "api"
server = [{ name = "s1", addr = "127.0.0.1:9000" }]

[[backend]]
name = "static"
server = [{ name = "s1", addr = "127.0.0.1:9001" }]

[[frontend]]
name = "web"
bind = "127.0.0.1:18080"
default_backend = "api"
"#;

    fn load(rules: &str) -> Result<Config, ConfigError> {
        crate::runtime::parse(
            Path::new("t.toml"),
            &format!("{HEAD}{rules}"),
            BindCheck::Skip,
        )
    }

    /// Asserts `rules` fail to load at the first occurrence of `marker`, with `msg` in the message.
    #[track_caller]
    fn fails_at(rules: &str, marker: &str, msg: &str) {
        let text = format!("{HEAD}{rules}");
        let err = match load(rules) {
            Ok(_) => panic!("config should be rejected:\n{rules}"),
            Err(e) => e,
        };
        let at = text.find(marker).expect("marker is in the config");
        let loc = SourceMap::new(Path::new("t.toml"), &text).location(at);
        assert_eq!(
            err.location,
            Some((loc.line, loc.col)),
            "wrong location for: {err}"
        );
        assert!(
            err.message.contains(msg),
            "message {:?} lacks {msg:?}",
            err.message
        );
    }

    /// Runs a chain like the proxy core: request filters until a reply, then response filters.
    fn run(chain: &Chain, t: &mut Txn) -> Option<crate::filter::Reply> {
        t.phase = Phase::Request;
        let mut reply = None;
        for f in &chain.request {
            if let Flow::Respond(r) = f.on_request(t) {
                reply = Some(r);
                break;
            }
        }
        t.phase = Phase::Response;
        if let Some(r) = &reply {
            t.status = r.status;
            t.resp_headers = r.headers.clone();
        }
        for f in &chain.response {
            if let Flow::Respond(r) = f.on_response(t) {
                reply = Some(r);
                break;
            }
        }
        reply
    }

    #[test]
    fn full_chain_runs() {
        let cfg = load(
            r#"http_request = [
  { if = "path_beg /admin and !src 192.168.0.0/16", deny = true },
  { if = 'hdr(host) -i -m beg api.', use_backend = "static" },
  { use_backend = "api" },
  { set_header = "X-Forwarded-Proto", value = "http" },
  { set_var = "txn.path", expr = "path" },
  { return = 200, body = "ok %[var(txn.path)]", if = "path /health" },
]
http_response = [
  { set_header = "X-Served-By", value = "%[fe_name]/%[be_name]" },
  { unless = "status lt 500", set_status = 503 },
  { del_header = "server" },
]
"#,
        )
        .expect("config loads");
        let chain = &cfg.frontends[0].chain;
        assert_eq!(chain.request.len(), 6);
        assert_eq!(chain.response.len(), 3);
        assert_eq!(chain.request[0].name(), "deny");
        assert!(chain.log.is_empty());

        let mut t = txn("/admin/x");
        let r = run(chain, &mut t).expect("denied");
        assert_eq!(r.status, http::StatusCode::FORBIDDEN);

        let mut t = txn("/health");
        t.req_headers
            .insert("host", "API.example.com".parse().expect("hv"));
        let r = run(chain, &mut t).expect("answered");
        assert_eq!(&r.body[..], b"ok /health");
        assert_eq!(t.backend, Some(BackendChoice::Index(1)));
        assert_eq!(t.req_headers["x-forwarded-proto"], "http");
        assert_eq!(t.resp_headers["x-served-by"], "test/static");
        assert_eq!(
            t.get_var(VarScope::Txn, "path"),
            Some(Sample::Str("/health".into()))
        );

        let mut t = txn("/app");
        assert!(run(chain, &mut t).is_none());
        assert_eq!(t.backend, Some(BackendChoice::Index(0)));

        // Response rules on a server response.
        t.phase = Phase::Response;
        t.status = http::StatusCode::BAD_GATEWAY;
        t.resp_headers.insert("server", "x".parse().expect("hv"));
        for f in &chain.response {
            assert!(matches!(f.on_response(&mut t), Flow::Continue));
        }
        assert_eq!(t.status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(t.resp_headers.get("server").is_none());
        assert_eq!(t.resp_headers["x-served-by"], "test/api");
        // Request hooks of response rules do nothing.
        assert!(matches!(
            chain.response[1].on_request(&mut t),
            Flow::Continue
        ));
    }

    #[test]
    fn condition_errors_are_located_inside_the_string() {
        fails_at(
            "http_request = [{ if = \"pth_beg /x\", deny = true }]\n",
            "pth_beg",
            "unknown fetch \"pth_beg\" in condition; did you mean \"path_beg\"?",
        );
        fails_at(
            "http_request = [\n  { deny = true, if = \"path_beg /x path_end .css\" },\n]\n",
            "path_end",
            "join conditions with 'and' or 'or'",
        );
        fails_at(
            "http_request = [{ unless = 'path_reg \"[a-\"', deny = true }]\n",
            "\"[a-",
            "invalid regex",
        );
        fails_at(
            "http_request = [{ if = \"src 10.0.0.0/40\", deny = true }]\n",
            "10.0.0.0/40",
            "CIDR",
        );
        fails_at(
            "http_request = [{ if = \"hdr(host) -m begin x\", deny = true }]\n",
            "begin",
            "unknown match method \"begin\"",
        );
        fails_at(
            "http_response = [{ if = \"req.hdr(host) -i x\", deny = true }]\n",
            "req.hdr",
            "gone when http_response rules run",
        );
        fails_at(
            "http_request = [{ if = \"(path_beg /a or method GET\", deny = true }]\n",
            "(path_beg",
            "missing ')'",
        );
        fails_at(
            "http_request = [{ if = \"\", deny = true }]\n",
            "\", deny",
            "empty condition",
        );
        // Escapes in the TOML string do not shift the column (`\"` is one byte of the condition).
        fails_at(
            "http_request = [{ if = \"hdr(x) \\\"q\\\" \\u00e9 path_end .css\", deny = true }]\n",
            "path_end",
            "join conditions with 'and' or 'or'",
        );
        fails_at(
            "http_request = [{ if = '''\npath_beg /é path_end .css''', deny = true }]\n",
            "path_end",
            "join conditions with 'and' or 'or'",
        );
    }

    #[test]
    fn rule_shape_errors() {
        fails_at(
            "http_request = [{ if = \"path /\" }]\n",
            "{ if",
            "rule has no action; add one of: return, deny,",
        );
        fails_at(
            "http_request = [{ deny = true, set_header = \"x\", value = \"y\" }]\n",
            "\"x\"",
            "both `deny` and `set_header`; split it into two rules",
        );
        fails_at(
            "http_request = [{ set_header = \"x\", value = \"y\", body = \"z\" }]\n",
            "\"z\"",
            "`body` does not apply to `set_header`; it is used with `return`",
        );
        fails_at(
            "http_request = [{ deny = true, value = \"z\" }]\n",
            "\"z\"",
            "it is used with `set_header`, `add_header`, `set_var` or `sc_set_gpt`",
        );
        fails_at(
            "http_request = [{ set_status = 404 }]\n",
            "404",
            "`set_status` cannot be used in http_request rules",
        );
        fails_at(
            "http_response = [{ use_backend = \"api\" }]\n",
            "\"api\" }",
            "cannot be used in http_response rules",
        );
        fails_at(
            "http_response = [{ redirect_scheme = \"https\" }]\n",
            "\"https\"",
            "cannot be used in http_response rules",
        );
        fails_at(
            "http_request = [{ if = \"path /\", unless = \"path /x\", deny = true }]\n",
            "\"path /x\"",
            "`if` or `unless`, not both",
        );
    }

    #[test]
    fn action_value_errors() {
        fails_at(
            "http_request = [{ use_backend = \"apii\" }]\n",
            "\"apii\"",
            "use_backend \"apii\" is not a declared backend; did you mean \"api\"?; declared backends: api, static",
        );
        fails_at(
            "http_request = [{ return = 700 }]\n",
            "700",
            "between 200 and 599",
        );
        fails_at(
            "http_request = [{ deny = 302 }]\n",
            "302",
            "between 400 and 599",
        );
        fails_at(
            "http_request = [{ deny = false }]\n",
            "false",
            "deny = false does nothing",
        );
        fails_at(
            "http_request = [{ redirect = \"/x\", code = 200 }]\n",
            "200",
            "301, 302, 303, 307 or 308",
        );
        fails_at(
            "http_request = [{ redirect_scheme = \"https://\" }]\n",
            "\"https://\"",
            "without \"://\"",
        );
        fails_at(
            "http_request = [{ set_header = \"bad name\", value = \"v\" }]\n",
            "\"bad name\"",
            "invalid header name",
        );
        fails_at(
            "http_request = [{ set_header = \"content-length\", value = \"1\" }]\n",
            "\"content-length\"",
            "managed by the proxy",
        );
        fails_at(
            "http_request = [{ set_header = \"x-a\" }]\n",
            "{ set_header",
            "`set_header` needs `value",
        );
        fails_at(
            "http_request = [{ set_header = \"x-a\", value = \"a %[pth] b\" }]\n",
            "pth]",
            "unknown fetch \"pth\" in log-format string",
        );
        fails_at(
            "http_request = [{ set_header = \"x-a\", value = \"a %[path\" }]\n",
            "%[path\"",
            "unclosed %[",
        );
        fails_at(
            "http_request = [{ set_var = \"foo.x\", value = \"1\" }]\n",
            "\"foo.x\"",
            "unknown variable scope \"foo\"",
        );
        fails_at(
            "http_request = [{ set_var = \"res.x\", value = \"1\" }]\n",
            "\"res.x\"",
            "only exists in http_response rules",
        );
        fails_at(
            "http_request = [{ set_var = \"txn.x\" }]\n",
            "\"txn.x\"",
            "set_var needs `value",
        );
        fails_at(
            "http_request = [{ set_var = \"txn.x\", value = \"1\", expr = \"path\" }]\n",
            "\"path\"",
            "not both",
        );
        fails_at(
            "http_request = [{ set_var = \"txn.x\", expr = \"path,lower(2)\" }]\n",
            "lower(2)",
            "converter \"lower\" takes no arguments",
        );
        fails_at(
            "http_request = [{ set_path = \"no-slash\" }]\n",
            "\"no-slash\"",
            "invalid set_path",
        );
        fails_at(
            "http_request = [{ return = 204, body = \"x\" }]\n",
            "\"x\"",
            "cannot have a body",
        );
        fails_at(
            "http_request = [{ return = 200, headers = { \"x-a\" = true } }]\n",
            "{ \"x-a\"",
            "must be a string",
        );
        fails_at(
            "http_request = [{ return = 200, content_type = \"a\", headers = { \"content-type\" = \"b\" } }]\n",
            "\"a\"",
            "keep one",
        );
        fails_at(
            "http_request = [{ redirect = \"\" }]\n",
            "\"\" }",
            "redirect location is empty",
        );
    }

    #[test]
    fn multi_line_rules_point_at_the_right_line() {
        fails_at(
            "[[frontend.http_request]]\nif = 'hdr(host) -i example.com'\ndeny = true\n\n[[frontend.http_request]]\nif = 'status 500'\ndeny = true\n",
            "status 500",
            "does not exist yet in http_request rules",
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("pth", ["path", "url"]), Some("path"));
        assert_eq!(suggest("zzzzzz", ["path", "url"]), None);
        assert_eq!(suggest("path", ["path"]), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        // Distances count chars, not bytes.
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(levenshtein("é", "e"), 1);
        assert_eq!(levenshtein("ab", "ba"), 2);
        assert_eq!(suggest("é", ["e", "ab"]), Some("e"));
        let (_, backends) = ctx_parts();
        let cx = CompileCtx {
            backends: &backends,
            plugins: crate::rules::ext::Extensions::empty(),
            tables: crate::stick::StickTables::none(),
            resolvers: crate::resolve::Resolvers::none(),
        };
        let env = Env {
            ctx: &cx,
            phase: Phase::Request,
        };
        assert_eq!(
            parse_var_name("txn.a.b_1", &env),
            Ok((VarScope::Txn, "a.b_1"))
        );
        assert!(
            parse_var_name("tx.a", &env)
                .expect_err("bad")
                .contains("did you mean \"txn\"?")
        );
        assert!(
            parse_var_name("txn.", &env)
                .expect_err("bad")
                .contains("no name")
        );
        assert!(
            parse_var_name("name", &env)
                .expect_err("bad")
                .contains("needs a scope")
        );
        assert!(
            parse_var_name("txn.a-b", &env)
                .expect_err("bad")
                .contains("invalid character")
        );
    }
}
