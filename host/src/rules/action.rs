//! Rule actions: what a rule does when its condition holds.
//!
//! Every action is one entry of [`ACTIONS`]: its key in the rule table, the
//! modifier keys that belong to it, the phases it may run in and a builder.
//! [`rule_keys`] lists the keys a [`RawRule`] has set. To add an action (e.g.
//! `track_sc0`, `lua`), add its fields to `RawRule`, list them in
//! `rule_keys`, and add an entry here; the rule compiler and the proxy core
//! need no change.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use toml::Spanned;

use super::fetch::{Expr, parse_expr, path_and_query, request_host};
use super::format::LogFormat;
use super::{Env, at_string, did_you_mean, parse_var_name, suggest};
use crate::config::schema::{DenySpec, RawRule};
use crate::config::{ConfigError, SourceMap};
use crate::filter::{BodyFlow, BodyLimits, Filter, Flow, Phases, Reply};
use crate::txn::{BackendChoice, Phase, Txn, VarScope};

/// A built-in action as a filter: runs its `run` in the head hook of the
/// phase its rule was declared in (the rule's condition is checked by
/// [`super::RuleFilter`] first).
pub struct HeadAction<A> {
    phase: Phase,
    act: A,
    run: fn(&A, &mut Txn) -> Flow,
}

impl<A: fmt::Debug> fmt::Debug for HeadAction<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.act.fmt(f)
    }
}

impl<A: fmt::Debug + Send + Sync> Filter for HeadAction<A> {
    fn name(&self) -> &str {
        "action"
    }

    fn phases(&self) -> Phases {
        Phases::head(self.phase)
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        (self.run)(&self.act, txn)
    }

    fn on_response(&self, txn: &mut Txn) -> Flow {
        (self.run)(&self.act, txn)
    }
}

/// The rule lists an action may be used in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lists {
    Request,
    Response,
    Both,
}

impl Lists {
    /// Whether the action may run in phase `p`.
    pub fn allows(self, p: Phase) -> bool {
        matches!(
            (self, p),
            (Lists::Both, _)
                | (Lists::Request, Phase::Request)
                | (Lists::Response, Phase::Response)
        )
    }
}

/// What an action builder gets: the compile environment and the rule's location.
pub struct RuleEnv<'a> {
    /// The compile context and the rule's phase.
    pub env: Env<'a>,
    /// The config text the rule's spans point into.
    pub source: &'a SourceMap,
    /// Span of the whole rule (for errors about missing keys).
    pub span: Range<usize>,
    /// The action's key (`set_header`, `lua`, ...).
    pub key: &'static str,
    /// The rule is in `http_after_response` (Lua actions registered for
    /// `http-after-res`, not `http-res`).
    pub after_response: bool,
}

impl RuleEnv<'_> {
    /// A built-in action running `run` in this rule's phase.
    pub fn head<A: fmt::Debug + Send + Sync + 'static>(
        &self,
        run: fn(&A, &mut Txn) -> Flow,
        act: A,
    ) -> Box<dyn Filter> {
        Box::new(HeadAction {
            phase: self.env.phase,
            act,
            run,
        })
    }

    /// An error at `span`.
    pub fn error(&self, span: Range<usize>, msg: impl Into<String>) -> ConfigError {
        self.source.error(span, msg)
    }

    /// A log-format string from a config value.
    pub fn log_format(&self, s: &Spanned<String>) -> Result<LogFormat, ConfigError> {
        LogFormat::parse(s.get_ref(), &self.env).map_err(|e| at_string(self.source, s, e))
    }

    /// A fetch expression from a config value.
    pub fn expr(&self, s: &Spanned<String>) -> Result<Expr, ConfigError> {
        parse_expr(s.get_ref(), 0, &self.env, "in expression")
            .map_err(|e| at_string(self.source, s, e))
    }

    /// The value of a key the builder knows is present (the action key itself).
    pub(super) fn key<'r, T>(
        &self,
        v: &'r Option<Spanned<T>>,
        key: &str,
    ) -> Result<&'r Spanned<T>, ConfigError> {
        v.as_ref().ok_or_else(|| {
            self.error(
                self.span.clone(),
                format!("internal error: `{key}` missing"),
            )
        })
    }

    /// A required modifier, with a message saying how to write it.
    fn require<'r, T>(
        &self,
        v: &'r Option<Spanned<T>>,
        msg: &str,
    ) -> Result<&'r Spanned<T>, ConfigError> {
        v.as_ref().ok_or_else(|| self.error(self.span.clone(), msg))
    }
}

/// Builds an action from a rule whose keys were already checked.
pub type ActionBuilder = fn(&RawRule, &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError>;

/// A registry entry for an action.
pub struct ActionDef {
    /// The action's key in the rule table.
    pub key: &'static str,
    /// Keys that modify this action (besides `if` / `unless`).
    pub modifiers: &'static [&'static str],
    /// The phases whose rule lists may hold it.
    pub phases: Lists,
    /// Why the action is limited to one phase, for the error message.
    pub phase_note: &'static str,
    /// Validates the rule's keys and builds the action.
    pub build: ActionBuilder,
}

/// All actions. Keys not listed here and not in any `modifiers` are conditions (`if`, `unless`).
#[rustfmt::skip]
pub static ACTIONS: &[ActionDef] = &[
    ActionDef { key: "return", modifiers: &["content_type", "body", "headers"], phases: Lists::Both, phase_note: "", build: build_return },
    ActionDef { key: "deny", modifiers: &["headers"], phases: Lists::Both, phase_note: "", build: build_deny },
    ActionDef { key: "redirect", modifiers: &["code", "headers"], phases: Lists::Both, phase_note: "", build: build_redirect },
    ActionDef { key: "redirect_prefix", modifiers: &["code", "headers"], phases: Lists::Request, phase_note: "it reuses the request path", build: build_redirect },
    ActionDef { key: "redirect_scheme", modifiers: &["code", "headers"], phases: Lists::Request, phase_note: "it reuses the request host and path", build: build_redirect },
    ActionDef { key: "set_header", modifiers: &["value"], phases: Lists::Both, phase_note: "", build: build_set_header },
    ActionDef { key: "add_header", modifiers: &["value"], phases: Lists::Both, phase_note: "", build: build_set_header },
    ActionDef { key: "del_header", modifiers: &[], phases: Lists::Both, phase_note: "", build: build_del_header },
    ActionDef { key: "set_path", modifiers: &[], phases: Lists::Request, phase_note: "it rewrites the request", build: build_set_path },
    ActionDef { key: "set_status", modifiers: &[], phases: Lists::Response, phase_note: "it rewrites the response", build: build_set_status },
    ActionDef { key: "set_var", modifiers: &["value", "expr"], phases: Lists::Both, phase_note: "", build: build_set_var },
    ActionDef { key: "unset_var", modifiers: &[], phases: Lists::Both, phase_note: "", build: build_unset_var },
    ActionDef { key: "set_dst", modifiers: &[], phases: Lists::Request, phase_note: "it changes where the request goes", build: super::dest::build_set_addr },
    ActionDef { key: "set_dst_port", modifiers: &[], phases: Lists::Request, phase_note: "it changes where the request goes", build: super::dest::build_set_addr },
    ActionDef { key: "set_src", modifiers: &[], phases: Lists::Request, phase_note: "it changes the client address the request is handled with", build: super::dest::build_set_addr },
    ActionDef { key: "set_src_port", modifiers: &[], phases: Lists::Request, phase_note: "it changes the client address the request is handled with", build: super::dest::build_set_addr },
    ActionDef { key: "do_resolve", modifiers: &["expr", "resolvers", "family"], phases: Lists::Request, phase_note: "it resolves a name while the request waits", build: super::dest::build_do_resolve },
    ActionDef { key: "use_backend", modifiers: &[], phases: Lists::Request, phase_note: "the backend is chosen before the request is sent", build: build_use_backend },
    ActionDef { key: "lua", modifiers: &["args"], phases: Lists::Both, phase_note: "", build: super::ext::build_action },
    ActionDef { key: "wasm", modifiers: &["metadata"], phases: Lists::Both, phase_note: "", build: super::ext::build_action },
    ActionDef { key: "use_service", modifiers: &[], phases: Lists::Request, phase_note: "a service answers the request", build: super::ext::build_service },
    ActionDef { key: "wait_for_body", modifiers: &["at_least"], phases: Lists::Request, phase_note: "it waits for the request body", build: build_wait_for_body },
    ActionDef { key: "track_sc0", modifiers: &["table"], phases: Lists::Request, phase_note: "tracking starts with the request", build: super::stick::build_track },
    ActionDef { key: "track_sc1", modifiers: &["table"], phases: Lists::Request, phase_note: "tracking starts with the request", build: super::stick::build_track },
    ActionDef { key: "track_sc2", modifiers: &["table"], phases: Lists::Request, phase_note: "tracking starts with the request", build: super::stick::build_track },
    ActionDef { key: "sc_inc_gpc", modifiers: &[], phases: Lists::Both, phase_note: "", build: super::stick::build_gp },
    ActionDef { key: "sc_clr_gpc", modifiers: &[], phases: Lists::Both, phase_note: "", build: super::stick::build_gp },
    ActionDef { key: "sc_set_gpt", modifiers: &["value", "expr"], phases: Lists::Both, phase_note: "", build: super::stick::build_gp },
];

/// The action called `key`.
pub fn find_action(key: &str) -> Option<&'static ActionDef> {
    ACTIONS.iter().find(|d| d.key == key)
}

/// The keys set in `raw`, with their spans, in file order.
pub fn rule_keys(raw: &RawRule) -> Vec<(&'static str, Range<usize>)> {
    let mut keys = Vec::new();
    macro_rules! keys {
        ($($field:ident => $name:literal),* $(,)?) => {
            $( if let Some(v) = &raw.$field { keys.push(($name, v.span())); } )*
        };
    }
    keys!(
        cond_if => "if", unless => "unless",
        return_status => "return", body => "body", content_type => "content_type", headers => "headers",
        deny => "deny", accept => "accept", reject => "reject", close => "close",
        redirect => "redirect", redirect_prefix => "redirect_prefix", redirect_scheme => "redirect_scheme", code => "code",
        set_header => "set_header", add_header => "add_header", del_header => "del_header",
        set_path => "set_path", set_status => "set_status",
        set_var => "set_var", unset_var => "unset_var", value => "value", expr => "expr",
        set_dst => "set_dst", set_dst_port => "set_dst_port", set_src => "set_src", set_src_port => "set_src_port",
        do_resolve => "do_resolve", resolvers => "resolvers", family => "family",
        use_backend => "use_backend",
        lua => "lua", args => "args", use_service => "use_service", wasm => "wasm", metadata => "metadata",
        wait_for_body => "wait_for_body", at_least => "at_least",
        track_sc0 => "track_sc0", track_sc1 => "track_sc1", track_sc2 => "track_sc2", table => "table",
        sc_inc_gpc => "sc_inc_gpc", sc_clr_gpc => "sc_clr_gpc", sc_set_gpt => "sc_set_gpt",
    );
    keys.sort_by_key(|(_, span)| span.start);
    keys
}

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// A header value: fixed at load time, or rendered per request.
#[derive(Debug)]
enum ValueSpec {
    Const(HeaderValue),
    Fmt(LogFormat),
}

impl ValueSpec {
    fn new(re: &RuleEnv<'_>, s: &Spanned<String>, what: &str) -> Result<ValueSpec, ConfigError> {
        let f = re.log_format(s)?;
        match f.as_literal() {
            Some(lit) => HeaderValue::from_str(lit).map(ValueSpec::Const).map_err(|_| {
                re.error(
                    s.span(),
                    format!("invalid {what} {lit:?}: header values cannot contain control characters such as newlines"),
                )
            }),
            None => Ok(ValueSpec::Fmt(f)),
        }
    }

    /// The value for this request; `None` (logged) if the rendered text is not a valid header value.
    fn render(&self, txn: &Txn, what: &str) -> Option<HeaderValue> {
        match self {
            ValueSpec::Const(v) => Some(v.clone()),
            ValueSpec::Fmt(f) => match HeaderValue::try_from(f.render_string(txn)) {
                Ok(v) => Some(v),
                Err(_) => {
                    tracing::debug!(
                        what,
                        "rule skipped: rendered value is not a valid header value"
                    );
                    None
                }
            },
        }
    }
}

/// Extra response headers of `return` / `deny` / redirects.
#[derive(Debug, Default)]
struct ExtraHeaders(Vec<(HeaderName, ValueSpec)>);

impl ExtraHeaders {
    fn new(re: &RuleEnv<'_>, raw: &RawRule) -> Result<ExtraHeaders, ConfigError> {
        let Some(table) = &raw.headers else {
            return Ok(ExtraHeaders::default());
        };
        let span = table.span();
        let mut out = Vec::new();
        for (name, value) in table.get_ref() {
            let hn = header_name(re, name, span.clone())?;
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                other => {
                    return Err(re.error(
                        span.clone(),
                        format!(
                            "header {name:?} must be a string (log-format) or an integer, got a {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            // Table values carry no span of their own; point at the table.
            let f = LogFormat::parse(&text, &re.env).map_err(|e| {
                re.error(span.clone(), format!("in header {name:?}: {}", e.message))
            })?;
            let spec = match f.as_literal() {
                Some(lit) => ValueSpec::Const(HeaderValue::from_str(lit).map_err(|_| {
                    re.error(
                        span.clone(),
                        format!("invalid value {lit:?} for header {name:?}"),
                    )
                })?),
                None => ValueSpec::Fmt(f),
            };
            out.push((hn, spec));
        }
        Ok(ExtraHeaders(out))
    }

    fn has(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    fn apply(&self, txn: &Txn, headers: &mut HeaderMap) {
        for (name, spec) in &self.0 {
            if let Some(v) = spec.render(txn, name.as_str()) {
                headers.append(name.clone(), v);
            }
        }
    }
}

fn header_name(
    re: &RuleEnv<'_>,
    name: &str,
    span: Range<usize>,
) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        re.error(
            span,
            format!(
                "invalid header name {name:?}; use letters, digits and '-' (e.g. \"X-Request-Id\")"
            ),
        )
    })
}

fn status_in(
    re: &RuleEnv<'_>,
    v: &Spanned<i64>,
    lo: u16,
    hi: u16,
    what: &str,
) -> Result<StatusCode, ConfigError> {
    let n = *v.get_ref();
    u16::try_from(n)
        .ok()
        .filter(|s| (lo..=hi).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            re.error(
                v.span(),
                format!("{what} must be between {lo} and {hi}, got {n}"),
            )
        })
}

// ---------------------------------------------------------------------------
// return / deny
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Body {
    Const(Bytes),
    Fmt(LogFormat),
}

#[derive(Debug)]
struct ReturnAction {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Option<Body>,
    headers: ExtraHeaders,
}

impl ReturnAction {
    fn apply(&self, txn: &mut Txn) -> Flow {
        let body = match &self.body {
            Some(Body::Const(b)) => b.clone(),
            Some(Body::Fmt(f)) => Bytes::from(f.render_string(txn)),
            None => Bytes::new(),
        };
        let mut headers = HeaderMap::new();
        if let Some(ct) = &self.content_type {
            headers.insert(CONTENT_TYPE, ct.clone());
        }
        self.headers.apply(txn, &mut headers);
        Flow::Respond(Reply {
            status: self.status,
            headers,
            body,
            error_page: false,
            cause: None,
        })
    }
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

fn build_return(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let st = re.key(&raw.return_status, "return")?;
    let status = status_in(re, st, 200, 599, "the status of return")?;
    let headers = ExtraHeaders::new(re, raw)?;
    let body = match &raw.body {
        Some(b) => {
            if matches!(status.as_u16(), 204 | 304) {
                return Err(re.error(
                    b.span(),
                    format!(
                        "a {} response cannot have a body; remove `body` or use another status",
                        status.as_u16()
                    ),
                ));
            }
            let f = re.log_format(b)?;
            Some(match f.as_literal() {
                Some(lit) => Body::Const(Bytes::from(lit.to_string())),
                None => Body::Fmt(f),
            })
        }
        None => None,
    };
    let content_type = match &raw.content_type {
        Some(ct) => {
            if headers.has(&CONTENT_TYPE) {
                return Err(re.error(
                    ct.span(),
                    "Content-Type is given both as `content_type` and in `headers`; keep one",
                ));
            }
            Some(HeaderValue::from_str(ct.get_ref()).map_err(|_| {
                re.error(
                    ct.span(),
                    format!("invalid content_type {:?}", ct.get_ref()),
                )
            })?)
        }
        // A body without a declared type is sent as plain text.
        None if body.is_some() && !headers.has(&CONTENT_TYPE) => {
            Some(HeaderValue::from_static(TEXT_PLAIN))
        }
        None => None,
    };
    Ok(re.head(
        ReturnAction::apply,
        ReturnAction {
            status,
            content_type,
            body,
            headers,
        },
    ))
}

#[derive(Debug)]
struct DenyAction {
    status: StatusCode,
    body: Bytes,
    headers: ExtraHeaders,
}

impl DenyAction {
    fn apply(&self, txn: &mut Txn) -> Flow {
        // HAProxy's page (the body was built at load for statuses without one);
        // marked so `errorfiles` can replace it, as HAProxy's errorfile does.
        let mut reply = Reply {
            status: self.status,
            headers: crate::error::page_headers(),
            body: self.body.clone(),
            error_page: true,
            cause: None,
        };
        self.headers.apply(txn, &mut reply.headers);
        Flow::Respond(reply)
    }
}

fn build_deny(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let d = re.key(&raw.deny, "deny")?;
    let status = match d.get_ref() {
        // Like HAProxy, a denied response becomes a 502: the client did nothing wrong.
        DenySpec::Flag(true) if re.env.phase == Phase::Response => StatusCode::BAD_GATEWAY,
        DenySpec::Flag(true) => StatusCode::FORBIDDEN,
        DenySpec::Flag(false) => {
            return Err(re.error(d.span(), "deny = false does nothing; write deny = true (403) or deny = <status 400-599>, or remove the rule"));
        }
        DenySpec::Status(n) => status_in(
            re,
            &Spanned::new(d.span(), *n),
            400,
            599,
            "the status of deny",
        )?,
    };
    Ok(re.head(
        DenyAction::apply,
        DenyAction {
            status,
            body: crate::error::body(status),
            headers: ExtraHeaders::new(re, raw)?,
        },
    ))
}

// ---------------------------------------------------------------------------
// Redirects
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum Target {
    /// `redirect`: the whole Location.
    Location(LogFormat),
    /// `redirect_prefix`: prefix + original path and query.
    Prefix(LogFormat),
    /// `redirect_scheme`: scheme + `://` + Host + original path and query.
    Scheme(Box<str>),
}

#[derive(Debug)]
struct RedirectAction {
    target: Target,
    code: StatusCode,
    headers: ExtraHeaders,
}

impl RedirectAction {
    fn apply(&self, txn: &mut Txn) -> Flow {
        let mut loc = String::new();
        match &self.target {
            Target::Location(f) => f.render(txn, &mut loc),
            Target::Prefix(f) => {
                f.render(txn, &mut loc);
                let pq = path_and_query(txn);
                // A prefix ending in '/' (e.g. "/") must not double the path's slash.
                if loc.ends_with('/') && pq.starts_with('/') {
                    loc.pop();
                }
                loc.push_str(pq);
            }
            Target::Scheme(scheme) => {
                let Some(host) = request_host(txn) else {
                    tracing::debug!("redirect_scheme skipped: the request has no Host");
                    return Flow::Continue;
                };
                loc.reserve(scheme.len() + 3 + host.len() + txn.uri.path().len());
                loc.push_str(scheme);
                loc.push_str("://");
                loc.push_str(host);
                loc.push_str(path_and_query(txn));
            }
        }
        if loc.is_empty() {
            tracing::debug!("redirect skipped: the location rendered empty");
            return Flow::Continue;
        }
        let Ok(location) = HeaderValue::try_from(loc) else {
            tracing::debug!("redirect skipped: the location is not a valid header value");
            return Flow::Continue;
        };
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, location);
        self.headers.apply(txn, &mut headers);
        Flow::Respond(Reply {
            status: self.code,
            headers,
            body: Bytes::new(),
            error_page: false,
            cause: None,
        })
    }
}

fn build_redirect(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let target = if let Some(loc) = &raw.redirect {
        let f = re.log_format(loc)?;
        if f.as_literal() == Some("") {
            return Err(re.error(
                loc.span(),
                "redirect location is empty; write e.g. redirect = \"https://example.com%[path]\"",
            ));
        }
        Target::Location(f)
    } else if let Some(p) = &raw.redirect_prefix {
        let f = re.log_format(p)?;
        if f.as_literal() == Some("") {
            return Err(re.error(
                p.span(),
                "redirect_prefix is empty; write e.g. redirect_prefix = \"https://example.com\"",
            ));
        }
        Target::Prefix(f)
    } else {
        let s = re.key(&raw.redirect_scheme, "redirect_scheme")?;
        let text = s.get_ref();
        let valid = text.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid {
            let hint = if text.contains("://") {
                " (without \"://\")"
            } else {
                ""
            };
            return Err(re.error(
                s.span(),
                format!("invalid redirect_scheme {text:?}; write a scheme such as \"https\"{hint}"),
            ));
        }
        Target::Scheme(text.as_str().into())
    };
    let code = match &raw.code {
        Some(c) => {
            let n = *c.get_ref();
            match u16::try_from(n)
                .ok()
                .filter(|n| matches!(n, 301 | 302 | 303 | 307 | 308))
            {
                Some(n) => StatusCode::from_u16(n).unwrap_or(StatusCode::FOUND),
                None => {
                    return Err(re.error(
                        c.span(),
                        format!("redirect code must be 301, 302, 303, 307 or 308, got {n}"),
                    ));
                }
            }
        }
        None => StatusCode::FOUND,
    };
    Ok(re.head(
        RedirectAction::apply,
        RedirectAction {
            target,
            code,
            headers: ExtraHeaders::new(re, raw)?,
        },
    ))
}

// ---------------------------------------------------------------------------
// Header rewriting
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct SetHeader {
    name: HeaderName,
    value: ValueSpec,
    append: bool,
}

impl SetHeader {
    fn apply(&self, txn: &mut Txn) -> Flow {
        if let Some(v) = self.value.render(txn, self.name.as_str()) {
            let headers = txn.headers_mut();
            if self.append {
                headers.append(self.name.clone(), v);
            } else {
                headers.insert(self.name.clone(), v);
            }
        }
        Flow::Continue
    }
}

fn build_set_header(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let (key, append) = match (&raw.set_header, &raw.add_header) {
        (Some(_), _) => ("set_header", false),
        _ => ("add_header", true),
    };
    let n = re.key(
        if append {
            &raw.add_header
        } else {
            &raw.set_header
        },
        key,
    )?;
    let name = header_name(re, n.get_ref(), n.span())?;
    // Framing headers are owned by the proxy; a wrong value would corrupt the stream.
    if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
        return Err(re.error(
            n.span(),
            format!(
                "{} is managed by the proxy (message framing) and cannot be set by a rule",
                n.get_ref()
            ),
        ));
    }
    let v = re.require(
        &raw.value,
        &format!("`{key}` needs `value = \"...\"` (the header value, a log-format string)"),
    )?;
    Ok(re.head(
        SetHeader::apply,
        SetHeader {
            value: ValueSpec::new(re, v, "header value")?,
            name,
            append,
        },
    ))
}

#[derive(Debug)]
struct DelHeader {
    name: HeaderName,
}

impl DelHeader {
    fn apply(&self, txn: &mut Txn) -> Flow {
        txn.headers_mut().remove(&self.name);
        Flow::Continue
    }
}

fn build_del_header(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let n = re.key(&raw.del_header, "del_header")?;
    Ok(re.head(
        DelHeader::apply,
        DelHeader {
            name: header_name(re, n.get_ref(), n.span())?,
        },
    ))
}

// ---------------------------------------------------------------------------
// set_path / set_status
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct SetPath {
    path: LogFormat,
}

impl SetPath {
    fn apply(&self, txn: &mut Txn) -> Flow {
        let mut p = self.path.render_string(txn);
        if !p.starts_with('/') {
            tracing::debug!(path = %p, "set_path skipped: the new path does not start with '/'");
            return Flow::Continue;
        }
        if let Some(q) = txn.uri.query() {
            p.push('?');
            p.push_str(q);
        }
        let Ok(pq) = PathAndQuery::try_from(p) else {
            tracing::debug!("set_path skipped: the new path is not a valid URI path");
            return Flow::Continue;
        };
        let mut parts = txn.uri.clone().into_parts();
        parts.path_and_query = Some(pq);
        match Uri::from_parts(parts) {
            Ok(u) => txn.uri = u,
            Err(e) => tracing::debug!(error = %e, "set_path skipped"),
        }
        Flow::Continue
    }
}

fn build_set_path(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let s = re.key(&raw.set_path, "set_path")?;
    let path = re.log_format(s)?;
    if let Some(lit) = path.as_literal() {
        let ok = lit.starts_with('/')
            && !lit.contains(['?', '#'])
            && PathAndQuery::try_from(lit).is_ok();
        if !ok {
            return Err(re.error(s.span(), format!("invalid set_path {lit:?}: a path starts with '/' and has no query or spaces (the query is kept)")));
        }
    }
    Ok(re.head(SetPath::apply, SetPath { path }))
}

#[derive(Debug)]
struct SetStatus {
    status: StatusCode,
}

impl SetStatus {
    fn apply(&self, txn: &mut Txn) -> Flow {
        txn.status = self.status;
        Flow::Continue
    }
}

fn build_set_status(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let s = re.key(&raw.set_status, "set_status")?;
    Ok(re.head(
        SetStatus::apply,
        SetStatus {
            status: status_in(re, s, 200, 599, "set_status")?,
        },
    ))
}

// ---------------------------------------------------------------------------
// Variables
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum VarSource {
    Text(LogFormat),
    Expr(Expr),
}

#[derive(Debug)]
struct SetVar {
    scope: VarScope,
    name: Box<str>,
    source: VarSource,
}

impl SetVar {
    fn apply(&self, txn: &mut Txn) -> Flow {
        let value = match &self.source {
            VarSource::Text(f) => Some(crate::txn::Sample::Str(f.render_string(txn))),
            // A fetch with no value leaves the variable untouched, as in HAProxy.
            VarSource::Expr(e) => e.eval(txn).map(|v| v.into_sample()),
        };
        if let Some(v) = value {
            txn.set_var(self.scope, &self.name, v);
        }
        Flow::Continue
    }
}

fn var_target(re: &RuleEnv<'_>, s: &Spanned<String>) -> Result<(VarScope, Box<str>), ConfigError> {
    parse_var_name(s.get_ref(), &re.env)
        .map(|(scope, name)| (scope, name.into()))
        .map_err(|m| re.error(s.span(), m))
}

fn build_set_var(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let target = re.key(&raw.set_var, "set_var")?;
    let (scope, name) = var_target(re, target)?;
    let source = match (&raw.value, &raw.expr) {
        (Some(_), Some(e)) => {
            return Err(re.error(
                e.span(),
                "set_var takes either `value` (text) or `expr` (a fetch expression), not both",
            ));
        }
        (Some(v), None) => VarSource::Text(re.log_format(v)?),
        (None, Some(e)) => VarSource::Expr(re.expr(e)?),
        (None, None) => {
            return Err(re.error(target.span(), "set_var needs `value = \"...\"` (log-format text) or `expr = \"...\"` (a typed fetch expression such as \"req.hdr(host),lower\")"));
        }
    };
    Ok(re.head(
        SetVar::apply,
        SetVar {
            scope,
            name,
            source,
        },
    ))
}

#[derive(Debug)]
struct UnsetVar {
    scope: VarScope,
    name: Box<str>,
}

impl UnsetVar {
    fn apply(&self, txn: &mut Txn) -> Flow {
        txn.unset_var(self.scope, &self.name);
        Flow::Continue
    }
}

fn build_unset_var(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let target = re.key(&raw.unset_var, "unset_var")?;
    let (scope, name) = var_target(re, target)?;
    Ok(re.head(UnsetVar::apply, UnsetVar { scope, name }))
}

// ---------------------------------------------------------------------------
// use_backend
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum BackendTarget {
    Fixed(usize),
    Dynamic(LogFormat),
}

#[derive(Debug)]
struct UseBackend {
    target: BackendTarget,
}

impl UseBackend {
    fn apply(&self, txn: &mut Txn) -> Flow {
        // The first matching use_backend wins.
        if txn.backend.is_some() {
            return Flow::Continue;
        }
        txn.backend = match &self.target {
            BackendTarget::Fixed(i) => Some(BackendChoice::Index(*i)),
            BackendTarget::Dynamic(f) => {
                let name = f.render_string(txn);
                (!name.is_empty()).then_some(BackendChoice::Name(name))
            }
        };
        Flow::Continue
    }
}

fn build_use_backend(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let b = re.key(&raw.use_backend, "use_backend")?;
    let name = b.get_ref();
    if name.contains("%[") {
        return Ok(re.head(
            UseBackend::apply,
            UseBackend {
                target: BackendTarget::Dynamic(re.log_format(b)?),
            },
        ));
    }
    let backends = re.env.ctx.backends;
    match backends.get(name) {
        Some(&i) => Ok(re.head(
            UseBackend::apply,
            UseBackend {
                target: BackendTarget::Fixed(i),
            },
        )),
        None => {
            let hint = suggest(name, backends.keys().map(String::as_str))
                .map(did_you_mean)
                .unwrap_or_default();
            let mut known: Vec<&str> = backends.keys().map(String::as_str).collect();
            known.sort_unstable();
            let list = if known.is_empty() {
                "no backend is declared".to_string()
            } else {
                format!("declared backends: {}", known.join(", "))
            };
            Err(re.error(
                b.span(),
                format!("use_backend {name:?} is not a declared backend{hint}; {list}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::DenySpec;
    use crate::rules::tests::{ctx_parts, txn};

    /// A spanned value for tests (spans are irrelevant for successful builds).
    fn sp<T>(v: T) -> Option<Spanned<T>> {
        Some(Spanned::new(0..0, v))
    }

    fn build(raw: &RawRule, phase: Phase) -> Result<Box<dyn Filter>, ConfigError> {
        let (source, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            backends: &backends,
            plugins: crate::rules::ext::Extensions::empty(),
            tables: crate::stick::StickTables::none(),
            resolvers: crate::resolve::Resolvers::none(),
        };
        let key = rule_keys(raw)
            .into_iter()
            .find_map(|(k, _)| find_action(k))
            .expect("rule has an action");
        let re = RuleEnv {
            env: Env { ctx: &cx, phase },
            source: &source,
            span: 0..0,
            key: key.key,
            after_response: false,
        };
        (key.build)(raw, &re)
    }

    /// Runs a built action's head hook for the transaction's phase.
    trait Apply {
        fn apply(&self, t: &mut Txn) -> Flow;
    }

    impl Apply for Box<dyn Filter> {
        fn apply(&self, t: &mut Txn) -> Flow {
            match t.phase {
                Phase::Request => self.on_request(t),
                Phase::Response => self.on_response(t),
            }
        }
    }

    fn reply(flow: Flow) -> Reply {
        match flow {
            Flow::Respond(r) => r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn return_builds_reply() {
        let mut headers = toml::value::Table::new();
        headers.insert("x-a".into(), toml::Value::String("p=%[path]".into()));
        headers.insert("retry-after".into(), toml::Value::Integer(5));
        let raw = RawRule {
            return_status: sp(200),
            body: sp("hello %[path]\n".into()),
            headers: sp(headers),
            ..RawRule::default()
        };
        let a = build(&raw, Phase::Request).expect("builds");
        let mut t = txn("/x");
        let r = reply(a.apply(&mut t));
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"hello /x\n");
        assert_eq!(r.headers["content-type"], TEXT_PLAIN);
        assert_eq!(r.headers["x-a"], "p=/x");
        assert_eq!(r.headers["retry-after"], "5");

        let raw = RawRule {
            return_status: sp(204),
            ..RawRule::default()
        };
        let r = reply(build(&raw, Phase::Response).expect("builds").apply(&mut t));
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(r.body.is_empty());
        assert!(r.headers.get("content-type").is_none());

        let raw = RawRule {
            return_status: sp(503),
            body: sp("{\"down\":true}".into()),
            content_type: sp("application/json".into()),
            ..RawRule::default()
        };
        let r = reply(build(&raw, Phase::Request).expect("builds").apply(&mut t));
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(&r.body[..], b"{\"down\":true}");
    }

    #[test]
    fn deny_builds_haproxy_like_reply() {
        let mut t = txn("/");
        let raw = RawRule {
            deny: sp(DenySpec::Flag(true)),
            ..RawRule::default()
        };
        let r = reply(build(&raw, Phase::Request).expect("builds").apply(&mut t));
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(
            &r.body[..],
            &b"<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n</body></html>\n"[..]
        );
        assert!(r.error_page);
        let r = reply(build(&raw, Phase::Response).expect("builds").apply(&mut t));
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);

        let mut headers = toml::value::Table::new();
        headers.insert("retry-after".into(), toml::Value::String("60".into()));
        let raw = RawRule {
            deny: sp(DenySpec::Status(429)),
            headers: sp(headers),
            ..RawRule::default()
        };
        let r = reply(build(&raw, Phase::Request).expect("builds").apply(&mut t));
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            r.body
                .starts_with(b"<html><body><h1>429 Too Many Requests</h1>\n")
        );
        assert_eq!(r.headers["retry-after"], "60");
        assert_eq!(r.headers["content-type"], "text/html");
    }

    #[test]
    fn redirects() {
        let mut t = txn("/a/b?q=1");
        t.req_headers
            .insert("host", "example.com".parse().expect("hv"));
        let raw = RawRule {
            redirect_scheme: sp("https".into()),
            code: sp(301),
            ..RawRule::default()
        };
        let r = reply(build(&raw, Phase::Request).expect("builds").apply(&mut t));
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.headers["location"], "https://example.com/a/b?q=1");

        let raw = RawRule {
            redirect_prefix: sp("https://new.example/".into()),
            ..RawRule::default()
        };
        let r = reply(build(&raw, Phase::Request).expect("builds").apply(&mut t));
        assert_eq!(r.status, StatusCode::FOUND);
        assert_eq!(r.headers["location"], "https://new.example/a/b?q=1");

        let raw = RawRule {
            redirect: sp("/login?next=%[path]".into()),
            code: sp(303),
            ..RawRule::default()
        };
        let r = reply(build(&raw, Phase::Request).expect("builds").apply(&mut t));
        assert_eq!(r.status, StatusCode::SEE_OTHER);
        assert_eq!(r.headers["location"], "/login?next=/a/b");

        // Without a Host, redirect_scheme cannot build a Location and does nothing.
        let raw = RawRule {
            redirect_scheme: sp("https".into()),
            ..RawRule::default()
        };
        let mut bare = txn("/");
        assert!(matches!(
            build(&raw, Phase::Request)
                .expect("builds")
                .apply(&mut bare),
            Flow::Continue
        ));

        // A rendered value that is not a valid header value skips the redirect.
        let raw = RawRule {
            redirect: sp("%[url_dec]".into()),
            ..RawRule::default()
        };
        assert!(
            build(&raw, Phase::Request).is_err(),
            "url_dec is a converter, not a fetch"
        );
        let raw = RawRule {
            redirect: sp("%[query,url_dec]".into()),
            ..RawRule::default()
        };
        let mut bad = txn("/?%0a");
        assert!(matches!(
            build(&raw, Phase::Request).expect("builds").apply(&mut bad),
            Flow::Continue
        ));
    }

    #[test]
    fn header_actions() {
        let mut t = txn("/p");
        t.req_headers.append("x-old", "1".parse().expect("hv"));
        t.req_headers.append("x-old", "2".parse().expect("hv"));
        let set = RawRule {
            set_header: sp("X-Old".into()),
            value: sp("path=%[path]".into()),
            ..RawRule::default()
        };
        assert!(matches!(
            build(&set, Phase::Request).expect("builds").apply(&mut t),
            Flow::Continue
        ));
        let all: Vec<_> = t.req_headers.get_all("x-old").iter().collect();
        assert_eq!(all, ["path=/p"]);

        let add = RawRule {
            add_header: sp("x-old".into()),
            value: sp("again".into()),
            ..RawRule::default()
        };
        build(&add, Phase::Request).expect("builds").apply(&mut t);
        assert_eq!(t.req_headers.get_all("x-old").iter().count(), 2);

        let del = RawRule {
            del_header: sp("X-OLD".into()),
            ..RawRule::default()
        };
        build(&del, Phase::Request).expect("builds").apply(&mut t);
        assert!(t.req_headers.get("x-old").is_none());

        // In the response phase the same actions touch the response headers.
        t.phase = Phase::Response;
        build(&add, Phase::Response).expect("builds").apply(&mut t);
        assert_eq!(t.resp_headers["x-old"], "again");
        assert!(t.req_headers.get("x-old").is_none());

        // An invalid rendered value (a newline from a decoded query) skips the action.
        let mut t = txn("/?a%0Ab");
        let set = RawRule {
            set_header: sp("x-q".into()),
            value: sp("%[query,url_dec]".into()),
            ..RawRule::default()
        };
        build(&set, Phase::Request).expect("builds").apply(&mut t);
        assert!(t.req_headers.get("x-q").is_none());
    }

    #[test]
    fn path_status_and_vars() {
        let mut t = txn("/old/x?keep=1");
        let raw = RawRule {
            set_path: sp("/new%[path]".into()),
            ..RawRule::default()
        };
        build(&raw, Phase::Request).expect("builds").apply(&mut t);
        assert_eq!(t.uri, "/new/old/x?keep=1");
        let raw = RawRule {
            set_path: sp("%[hdr(x-none)]".into()),
            ..RawRule::default()
        };
        build(&raw, Phase::Request).expect("builds").apply(&mut t);
        assert_eq!(t.uri, "/new/old/x?keep=1", "an empty path is not applied");

        t.phase = Phase::Response;
        let raw = RawRule {
            set_status: sp(503),
            ..RawRule::default()
        };
        build(&raw, Phase::Response).expect("builds").apply(&mut t);
        assert_eq!(t.status, StatusCode::SERVICE_UNAVAILABLE);

        t.phase = Phase::Request;
        let raw = RawRule {
            set_var: sp("txn.n".into()),
            expr: sp("path,length".into()),
            ..RawRule::default()
        };
        build(&raw, Phase::Request).expect("builds").apply(&mut t);
        assert_eq!(
            t.get_var(VarScope::Txn, "n"),
            Some(crate::txn::Sample::Int(10))
        );
        let raw = RawRule {
            set_var: sp("sess.who".into()),
            value: sp("%[src]".into()),
            ..RawRule::default()
        };
        build(&raw, Phase::Request).expect("builds").apply(&mut t);
        assert_eq!(
            t.get_var(VarScope::Sess, "who"),
            Some(crate::txn::Sample::Str("10.1.2.3".into()))
        );
        let raw = RawRule {
            set_var: sp("txn.n".into()),
            expr: sp("hdr(x-none)".into()),
            ..RawRule::default()
        };
        build(&raw, Phase::Request).expect("builds").apply(&mut t);
        assert_eq!(
            t.get_var(VarScope::Txn, "n"),
            Some(crate::txn::Sample::Int(10)),
            "no value leaves the variable"
        );
        let raw = RawRule {
            unset_var: sp("txn.n".into()),
            ..RawRule::default()
        };
        build(&raw, Phase::Request).expect("builds").apply(&mut t);
        assert_eq!(t.get_var(VarScope::Txn, "n"), None);
    }

    #[test]
    fn use_backend_first_match_wins() {
        let mut t = txn("/");
        t.req_headers.insert("x-be", "dyn".parse().expect("hv"));
        let dynamic = RawRule {
            use_backend: sp("be-%[hdr(x-be)]".into()),
            ..RawRule::default()
        };
        let fixed = RawRule {
            use_backend: sp("api".into()),
            ..RawRule::default()
        };
        build(&fixed, Phase::Request).expect("builds").apply(&mut t);
        build(&dynamic, Phase::Request)
            .expect("builds")
            .apply(&mut t);
        assert_eq!(t.backend, Some(BackendChoice::Index(0)));
        let mut t2 = txn("/");
        t2.req_headers.insert("x-be", "dyn".parse().expect("hv"));
        build(&dynamic, Phase::Request)
            .expect("builds")
            .apply(&mut t2);
        build(&fixed, Phase::Request)
            .expect("builds")
            .apply(&mut t2);
        assert_eq!(t2.backend, Some(BackendChoice::Name("be-dyn".into())));
        let empty = RawRule {
            use_backend: sp("%[hdr(x-none)]".into()),
            ..RawRule::default()
        };
        let mut t3 = txn("/");
        build(&empty, Phase::Request)
            .expect("builds")
            .apply(&mut t3);
        assert_eq!(t3.backend, None);
    }
}

// ---------------------------------------------------------------------------
// wait_for_body
// ---------------------------------------------------------------------------

/// What `wait_for_body` buffers without `at_least`: HAProxy waits for the
/// whole body as far as its buffer holds it (`tune.bufsize`, 16 KiB).
const WAIT_FOR_BODY_DEFAULT: usize = 16 * 1024;

/// Room past `at_least` for the frame that crosses it (HAProxy never fails
/// a request for a body larger than it waits for).
const WAIT_FOR_BODY_SLACK: usize = 1 << 20;

/// Keys `wait_for_body` rules' per-request marks in `txn.plugin_state`
/// (from the top of the key space, away from plugin ids, which count up).
static WAIT_FOR_BODY_IDS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(u64::MAX);

/// `wait_for_body = "<time>"[, at_least = "<size>"]`: the request body is
/// read into `txn.req_buffered` (for `req.body`, Lua's `txn.sf:req_body()`)
/// until it ends or `at_least` bytes arrived, before the next rules run.
#[derive(Debug)]
struct WaitForBody {
    idle: std::time::Duration,
    at_least: usize,
    /// Marks the requests whose rule condition held (body hooks run unguarded).
    id: u64,
}

impl Filter for WaitForBody {
    fn name(&self) -> &str {
        "wait_for_body"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::REQUEST_BODY
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        txn.plugin_state.put(self.id, Box::new(()));
        Flow::Continue
    }

    fn body_limits(&self, txn: &Txn) -> Option<BodyLimits> {
        txn.plugin_state.peek::<()>(self.id)?;
        Some(BodyLimits {
            // One frame may carry the body past `at_least`; the hook then
            // lets the rest stream, so the buffer never holds much more.
            max: self.at_least.saturating_add(WAIT_FOR_BODY_SLACK),
            idle: self.idle,
        })
    }

    fn on_body(&self, txn: &mut Txn, end_of_stream: bool) -> BodyFlow {
        let have = txn.req_buffered.as_ref().map_or(0, |b| b.data.len());
        if end_of_stream || have >= self.at_least {
            BodyFlow::Continue
        } else {
            BodyFlow::StopAndBuffer
        }
    }
}

fn build_wait_for_body(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let t = re.key(&raw.wait_for_body, "wait_for_body")?;
    let idle =
        crate::config::units::parse_duration(t.get_ref()).map_err(|m| re.error(t.span(), m))?;
    let at_least = match &raw.at_least {
        None => WAIT_FOR_BODY_DEFAULT,
        Some(a) => {
            let n =
                crate::config::units::parse_size(a.get_ref()).map_err(|m| re.error(a.span(), m))?;
            usize::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| re.error(a.span(), "at_least must be at least 1 byte"))?
        }
    };
    Ok(Box::new(WaitForBody {
        idle,
        at_least,
        id: WAIT_FOR_BODY_IDS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed),
    }))
}
