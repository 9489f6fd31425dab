//! `txn.http` (HAProxy's `HTTP` class): headers, method, path, query, URI
//! and status of the request or the response.

use std::rc::Rc;

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use mlua::{Lua, Table, Value};

use super::CACHE_MAX;
use super::args::{Args, func, none, one};
use crate::lua::runtime::CallCx;
use crate::txn::Txn;

/// Which message a `txn.http` function works on.
#[derive(Clone, Copy)]
pub(crate) enum Msg {
    Req,
    Res,
}

impl Msg {
    pub(crate) fn headers(self, t: &Txn) -> &HeaderMap {
        match self {
            Msg::Req => &t.req_headers,
            Msg::Res => &t.resp_headers,
        }
    }

    pub(crate) fn headers_mut(self, t: &mut Txn) -> &mut HeaderMap {
        match self {
            Msg::Req => &mut t.req_headers,
            Msg::Res => &mut t.resp_headers,
        }
    }
}

/// Why a script may not set or delete header `name`, if it may not: the
/// headers that frame the message (a wrong value would corrupt the stream).
pub(crate) fn framing_refusal(name: &HeaderName) -> Option<String> {
    (name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING)
        .then(|| format!("{name} is managed by the proxy (message framing) and cannot be changed"))
}

/// [`framing_refusal`] as the error of argument 1.
fn check_framing(args: &Args<'_>, name: &HeaderName) -> mlua::Result<()> {
    match framing_refusal(name) {
        Some(msg) => Err(args.err(1, msg)),
        None => Ok(()),
    }
}

/// Expands HAProxy's `\1`-style references in `fmt` from `caps`.
fn expand(fmt: &str, caps: &regex::Captures<'_>) -> String {
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(d) = chars.peek().and_then(|d| d.to_digit(10))
        {
            chars.next();
            if let Some(m) = caps.get(d as usize) {
                out.push_str(m.as_str());
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A compiled regex from the state's cache.
fn cached_regex(cx: &CallCx, args: &Args<'_>, n: usize) -> mlua::Result<Rc<regex::Regex>> {
    let pattern = args.string(n)?;
    if let Some(r) = cx
        .regexes
        .try_borrow()
        .ok()
        .and_then(|m| m.get(&pattern).cloned())
    {
        return Ok(r);
    }
    let re = crate::rules::fetch::compile_regex(&pattern, false).map_err(|m| args.err(n, m))?;
    let re = Rc::new(re);
    if let Ok(mut m) = cx.regexes.try_borrow_mut() {
        if m.len() >= CACHE_MAX {
            m.clear();
        }
        m.insert(pattern, Rc::clone(&re));
    }
    Ok(re)
}

pub(super) fn http_methods(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    // req_/res_get_headers and set/add_header: C functions (`ffi/cfunc.rs`),
    // installed after the prelude.
    for (name, m) in [("req_del_header", Msg::Req), ("res_del_header", Msg::Res)] {
        let cx = Rc::clone(cx);
        t.raw_set(
            name,
            func(lua, move |_, a| {
                let args = Args::new(&a, name, 1);
                let hn = args.header_name(1)?;
                check_framing(&args, &hn)?;
                cx.with_txn_mut(name, |t| {
                    m.headers_mut(t).remove(&hn);
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    for (name, m, per_value) in [
        ("req_rep_header", Msg::Req, false),
        ("req_rep_value", Msg::Req, true),
        ("res_rep_header", Msg::Res, false),
        ("res_rep_value", Msg::Res, true),
    ] {
        let cx = Rc::clone(cx);
        t.raw_set(
            name,
            func(lua, move |_, a| {
                let args = Args::new(&a, name, 1);
                let hn = args.header_name(1)?;
                check_framing(&args, &hn)?;
                let re = cached_regex(&cx, &args, 2)?;
                let fmt = args.string(3)?;
                cx.with_txn_mut(name, |t| {
                    let h = m.headers_mut(t);
                    let old: Vec<HeaderValue> = h.get_all(&hn).iter().cloned().collect();
                    if old.is_empty() {
                        return Ok(());
                    }
                    let replace = |v: &str| match re.captures(v) {
                        Some(c) => expand(&fmt, &c),
                        None => v.to_string(),
                    };
                    let mut new = Vec::with_capacity(old.len());
                    for v in &old {
                        let text = String::from_utf8_lossy(v.as_bytes());
                        let out = if per_value {
                            text.split(',')
                                .map(|p| replace(p.trim()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        } else {
                            replace(&text)
                        };
                        new.push(HeaderValue::try_from(out).map_err(|_| {
                            mlua::Error::runtime(format!(
                                "{name}: the replacement is not a valid header value"
                            ))
                        })?);
                    }
                    h.remove(&hn);
                    for v in new {
                        h.append(hn.clone(), v);
                    }
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "req_set_method",
            func(lua, move |_, a| {
                let args = Args::new(&a, "req_set_method", 1);
                let m = Method::from_bytes(&args.bytes(1)?)
                    .map_err(|_| args.err(1, "invalid method"))?;
                cx.with_txn_mut("req_set_method", |t| {
                    t.method = m;
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    for name in ["req_set_path", "req_set_query", "req_set_uri"] {
        let cx = Rc::clone(cx);
        t.raw_set(
            name,
            func(lua, move |_, a| {
                let args = Args::new(&a, name, 1);
                let v = args.bytes(1)?;
                let done = cx.with_txn_mut(name, |t| Ok(replace_uri(t, name, &v)))?;
                one(Value::Boolean(done))
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "res_set_status",
            func(lua, move |_, a| {
                let args = Args::new(&a, "res_set_status", 1);
                let code = args.int(1)?;
                let _reason = args.opt_string(2)?;
                let st = u16::try_from(code)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .and_then(|c| StatusCode::from_u16(c).ok())
                    .ok_or_else(|| args.err(1, "status must be between 100 and 599"))?;
                cx.with_txn_mut("res_set_status", |t| {
                    t.status = st;
                    Ok(())
                })?;
                none()
            })?,
        )?;
    }
    Ok(t)
}

/// `req_set_path`, `req_set_query`, `req_set_uri` as HAProxy's
/// `http_req_replace_stline` does them: the text replaces that part of the
/// request target as given (a query keeps a leading `?`: `"?a"` gives
/// `/p??a`; `""` leaves `/p?` where there was a query, nothing where there
/// was none), and an absolute URI's authority becomes `Host`. Returns
/// false, changing nothing, for a target the request line cannot carry
/// (spaces, control characters, `#`, an empty path), which HAProxy would
/// write as is.
fn replace_uri(t: &mut Txn, name: &str, v: &[u8]) -> bool {
    let text = match std::str::from_utf8(v) {
        // The URI parser would drop a fragment silently: refused instead.
        Ok(s) if !s.contains('#') => s,
        _ => return false,
    };
    let uri = match name {
        "req_set_uri" => match text.parse::<Uri>() {
            Ok(u) => u,
            Err(_) => return false,
        },
        _ => {
            let path = if name == "req_set_path" {
                text
            } else {
                t.uri.path()
            };
            let query = if name == "req_set_query" {
                // HAProxy only writes `?` + "" where a query string was.
                (!text.is_empty() || t.uri.query().is_some()).then_some(text)
            } else {
                t.uri.query()
            };
            let pq = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            // An empty path would be read back as `/`: HAProxy writes none.
            if path.is_empty() {
                return false;
            }
            let Ok(pq) = PathAndQuery::try_from(pq) else {
                return false;
            };
            let mut parts = t.uri.clone().into_parts();
            parts.path_and_query = Some(pq);
            match Uri::from_parts(parts) {
                Ok(u) => u,
                Err(_) => return false,
            }
        }
    };
    if let Some(auth) = uri.authority() {
        if auth.as_str().contains('@') {
            // Userinfo in a request target disguises the host (RFC 9110 §4.2.4).
            return false;
        }
        let Ok(host) = HeaderValue::from_str(auth.as_str()) else {
            return false;
        };
        t.req_headers.insert(http::header::HOST, host);
    }
    t.uri = uri;
    true
}
