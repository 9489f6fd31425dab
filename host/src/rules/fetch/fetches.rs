//! The sample fetch implementations (`path`, `hdr`, `cook`, `var`, ...) and the [`FETCHES`]
//! registry.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue, Version, header};

use super::expr::{arg_err, arg_header, arg_int, arg_occ};
use super::value::parse_ip_text;
use super::{Avail, Call, Fetch, FetchDef, Kind, Value};
use crate::rules::{Env, ParseError, parse_var_name};
use crate::txn::{BackendChoice, Sample, Txn, VarScope};

/// A fetch with no arguments, as a plain function.
#[derive(Debug)]
struct Simple(for<'t> fn(&'t Txn) -> Option<Value<'t>>);

impl Fetch for Simple {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        (self.0)(txn)
    }
}

fn simple(f: for<'t> fn(&'t Txn) -> Option<Value<'t>>) -> Result<Box<dyn Fetch>, ParseError> {
    Ok(Box::new(Simple(f)))
}

/// A constant value (`int(5)`, `str(abc)`).
#[derive(Debug)]
struct Const(Sample);

impl Fetch for Const {
    fn fetch<'t>(&'t self, _txn: &'t Txn) -> Option<Value<'t>> {
        Some(Value::borrowed(&self.0))
    }
}

/// Which message's headers a header fetch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// The current phase's message (`hdr`).
    Current,
    Request,
    Response,
}

fn headers_of(txn: &Txn, which: Which) -> &HeaderMap {
    match which {
        Which::Current => txn.headers(),
        Which::Request => &txn.req_headers,
        Which::Response => &txn.resp_headers,
    }
}

/// Splits a header value on commas outside double quotes; items are trimmed.
struct ListIter<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> ListIter<'a> {
    fn new(v: &'a [u8]) -> Self {
        ListIter {
            rest: v,
            done: false,
        }
    }
}

impl<'a> Iterator for ListIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.done {
            return None;
        }
        let (mut in_quote, mut escaped) = (false, false);
        for (i, &c) in self.rest.iter().enumerate() {
            if in_quote {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    in_quote = false;
                }
                continue;
            }
            match c {
                b'"' => in_quote = true,
                b',' => {
                    let (item, rest) = self.rest.split_at(i);
                    self.rest = rest.get(1..).unwrap_or_default();
                    return Some(item.trim_ascii());
                }
                _ => {}
            }
        }
        self.done = true;
        Some(self.rest.trim_ascii())
    }
}

fn bytes_value(b: &[u8]) -> Value<'_> {
    match std::str::from_utf8(b) {
        Ok(s) => Value::Str(Cow::Borrowed(s)),
        Err(_) => Value::Bin(Cow::Borrowed(b)),
    }
}

/// The index of occurrence `occ` (1 = first, -1 = last) among `n` values.
fn resolve_occ(occ: i32, n: usize) -> Option<usize> {
    let k = occ.unsigned_abs() as usize;
    if k == 0 || k > n {
        None
    } else if occ > 0 {
        Some(k - 1)
    } else {
        Some(n - k)
    }
}

/// One occurrence of a header, counting comma-separated values when `split`.
fn header_occurrence<'t>(
    headers: &'t HeaderMap,
    name: &HeaderName,
    occ: i32,
    split: bool,
) -> Option<&'t [u8]> {
    let all = headers.get_all(name);
    if !split {
        let idx = resolve_occ(occ, all.iter().count())?;
        return all.iter().nth(idx).map(|v| v.as_bytes());
    }
    let total: usize = all
        .iter()
        .map(|v| ListIter::new(v.as_bytes()).count())
        .sum();
    let idx = resolve_occ(occ, total)?;
    all.iter()
        .flat_map(|v| ListIter::new(v.as_bytes()))
        .nth(idx)
}

#[derive(Debug)]
struct Hdr {
    name: HeaderName,
    /// 1 = first, -1 = last; 0 = every value in an ACL, the last as a sample.
    occ: i32,
    which: Which,
    split: bool,
    as_ip: bool,
}

impl Hdr {
    fn value<'t>(&self, v: &'t [u8]) -> Option<Value<'t>> {
        if self.as_ip {
            parse_ip_text(std::str::from_utf8(v).ok()?).map(Value::Ip)
        } else {
            Some(bytes_value(v))
        }
    }
}

impl Fetch for Hdr {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let occ = if self.occ == 0 { -1 } else { self.occ };
        let v = header_occurrence(headers_of(txn, self.which), &self.name, occ, self.split)?;
        self.value(v)
    }

    fn any<'t>(&'t self, txn: &'t Txn, pred: &mut dyn FnMut(Value<'t>) -> bool) -> bool {
        if self.occ != 0 {
            return self.fetch(txn).is_some_and(pred);
        }
        // A value that is not an address (hdr_ip) is skipped, as HAProxy does.
        let mut test = |v: &'t [u8]| self.value(v).is_some_and(&mut *pred);
        headers_of(txn, self.which)
            .get_all(&self.name)
            .iter()
            .any(|line| {
                if self.split {
                    ListIter::new(line.as_bytes()).any(&mut test)
                } else {
                    test(line.as_bytes())
                }
            })
    }
}

fn hdr_fetch(
    c: &Call<'_>,
    which: Which,
    split: bool,
    as_ip: bool,
) -> Result<Box<dyn Fetch>, ParseError> {
    let Some(name) = c.args.first() else {
        return Err(ParseError::new(
            c.offset,
            format!(
                "fetch \"{}\" needs a header name, e.g. {}(host)",
                c.name, c.name
            ),
        ));
    };
    Ok(Box::new(Hdr {
        name: arg_header(name)?,
        occ: arg_occ(c.args.get(1))?,
        which,
        split,
        as_ip,
    }))
}

/// `hdr_cnt` (comma-separated values) or `fhdr_cnt` (lines) of one header, or of all.
#[derive(Debug)]
struct HdrCnt {
    name: Option<HeaderName>,
    which: Which,
    split: bool,
}

impl Fetch for HdrCnt {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let h = headers_of(txn, self.which);
        let count = |v: &HeaderValue| {
            if self.split {
                ListIter::new(v.as_bytes()).count()
            } else {
                1
            }
        };
        let n: usize = match &self.name {
            Some(name) => h.get_all(name).iter().map(count).sum(),
            None if self.split => h.values().map(count).sum(),
            None => h.len(),
        };
        Some(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
    }
}

fn hdr_cnt_fetch(c: &Call<'_>, which: Which, split: bool) -> Result<Box<dyn Fetch>, ParseError> {
    let name = c.args.first().map(arg_header).transpose()?;
    Ok(Box::new(HdrCnt { name, which, split }))
}

/// `cook(name)` (request `Cookie`) or `res.cook(name)` (response `Set-Cookie`):
/// the last occurrence as a sample, every occurrence in an ACL (HAProxy).
#[derive(Debug)]
struct Cook {
    name: Box<str>,
    response: bool,
}

impl Cook {
    /// Calls `f` on each value of the cookie, in order, until it returns true.
    fn each<'t>(&self, txn: &'t Txn, f: &mut dyn FnMut(&'t [u8]) -> bool) -> bool {
        if self.response {
            for line in txn.resp_headers.get_all(header::SET_COOKIE) {
                let first = line
                    .as_bytes()
                    .split(|&b| b == b';')
                    .next()
                    .unwrap_or_default();
                if cookie_pair(first, &self.name).is_some_and(&mut *f) {
                    return true;
                }
            }
        } else {
            for line in txn.req_headers.get_all(header::COOKIE) {
                for part in line.as_bytes().split(|&b| b == b';') {
                    if cookie_pair(part, &self.name).is_some_and(&mut *f) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

impl Fetch for Cook {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let mut last = None;
        self.each(txn, &mut |v| {
            last = Some(v);
            false
        });
        last.map(bytes_value)
    }

    fn any<'t>(&'t self, txn: &'t Txn, pred: &mut dyn FnMut(Value<'t>) -> bool) -> bool {
        self.each(txn, &mut |v| pred(bytes_value(v)))
    }
}

fn cookie_pair<'a>(part: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let eq = part.iter().position(|&b| b == b'=')?;
    let (k, v) = part.split_at(eq);
    (k.trim_ascii() == name.as_bytes()).then(|| v.get(1..).unwrap_or_default().trim_ascii())
}

fn cook_fetch(c: &Call<'_>, response: bool) -> Result<Box<dyn Fetch>, ParseError> {
    let Some(a) = c.args.first() else {
        return Err(ParseError::new(
            c.offset,
            format!("fetch \"{}\" needs a cookie name", c.name),
        ));
    };
    if a.text.is_empty() {
        return Err(arg_err(a, "cookie name must not be empty"));
    }
    Ok(Box::new(Cook {
        name: a.text.as_str().into(),
        response,
    }))
}

/// `url_param(name[,delim])`: the first value of a query-string parameter, not decoded.
#[derive(Debug)]
struct UrlParam {
    name: Box<str>,
    delim: char,
}

impl Fetch for UrlParam {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let q = txn.uri.query()?;
        q.split(self.delim).find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == &*self.name).then_some(Value::Str(Cow::Borrowed(v)))
        })
    }
}

fn url_param_fetch(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    let Some(a) = c.args.first() else {
        return Err(ParseError::new(
            c.offset,
            "url_param needs a parameter name",
        ));
    };
    let delim = match c.args.get(1) {
        None => '&',
        Some(d) => {
            let mut it = d.text.chars();
            match (it.next(), it.next()) {
                (Some(ch), None) => ch,
                _ => return Err(arg_err(d, "the delimiter must be a single character")),
            }
        }
    };
    Ok(Box::new(UrlParam {
        name: a.text.as_str().into(),
        delim,
    }))
}

/// `var(scope.name[,default])`.
#[derive(Debug)]
struct Var {
    scope: VarScope,
    name: Box<str>,
    default: Option<Sample>,
}

impl Fetch for Var {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let v = match self.scope {
            VarScope::Txn => txn.vars.get(&self.name).map(Value::borrowed),
            VarScope::Req => txn.req_vars.get(&self.name).map(Value::borrowed),
            VarScope::Res => txn.res_vars.get(&self.name).map(Value::borrowed),
            // try_borrow: a plugin holding the session store must not make us panic.
            VarScope::Sess => txn
                .sess_vars
                .try_borrow()
                .ok()
                .and_then(|s| s.get(&self.name).cloned())
                .map(Value::owned),
            VarScope::Proc => txn.get_var(VarScope::Proc, &self.name).map(Value::owned),
        };
        v.or_else(|| self.default.as_ref().map(Value::borrowed))
    }
}

fn var_fetch(c: &Call<'_>, env: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    let Some(a) = c.args.first() else {
        return Err(ParseError::new(
            c.offset,
            "var needs a variable name, e.g. var(txn.user)",
        ));
    };
    let (scope, name) = parse_var_name(a.text.trim(), env).map_err(|m| arg_err(a, m))?;
    Ok(Box::new(Var {
        scope,
        name: name.into(),
        default: c.args.get(1).map(|d| Sample::Str(d.text.clone())),
    }))
}

/// `be_name`: the backend chosen so far by `use_backend`.
#[derive(Debug)]
struct BeName {
    /// Backend names by config index.
    names: Box<[Box<str>]>,
}

impl Fetch for BeName {
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        match txn.backend.as_ref()? {
            BackendChoice::Name(n) => Some(Value::Str(Cow::Borrowed(n))),
            BackendChoice::Index(i) => self.names.get(*i).map(|n| Value::Str(Cow::Borrowed(n))),
        }
    }
}

fn be_name_fetch(_: &Call<'_>, env: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    let backends = env.ctx.backends;
    let len = backends.values().map(|&i| i + 1).max().unwrap_or(0);
    let mut names = vec![Box::<str>::from(""); len];
    for (name, &i) in backends {
        if let Some(slot) = names.get_mut(i) {
            *slot = name.as_str().into();
        }
    }
    Ok(Box::new(BeName {
        names: names.into_boxed_slice(),
    }))
}

/// The request's host: the first Host header, else the URI authority (HTTP/2).
pub(crate) fn request_host(txn: &Txn) -> Option<&str> {
    txn.req_headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty())
        .or_else(|| txn.uri.authority().map(|a| a.as_str()))
}

/// The request path and query as sent (`/` if the URI has none).
pub(crate) fn path_and_query(txn: &Txn) -> &str {
    txn.uri
        .path_and_query()
        .map_or_else(|| txn.uri.path(), |pq| pq.as_str())
}

fn version_text(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2.0",
        Version::HTTP_3 => "3.0",
        _ => "1.1",
    }
}

fn str_val(s: &str) -> Option<Value<'_>> {
    Some(Value::Str(Cow::Borrowed(s)))
}

fn f_path(t: &Txn) -> Option<Value<'_>> {
    str_val(t.uri.path())
}
fn f_pathq(t: &Txn) -> Option<Value<'_>> {
    str_val(path_and_query(t))
}
fn f_url(t: &Txn) -> Option<Value<'_>> {
    if t.uri.scheme().is_none() {
        str_val(path_and_query(t))
    } else {
        Some(Value::Str(Cow::Owned(t.uri.to_string())))
    }
}
fn f_query(t: &Txn) -> Option<Value<'_>> {
    t.uri.query().and_then(str_val)
}
fn f_base(t: &Txn) -> Option<Value<'_>> {
    let path = t.uri.path();
    match request_host(t) {
        Some(h) => Some(Value::Str(Cow::Owned(format!("{h}{path}")))),
        None => str_val(path),
    }
}
fn f_method(t: &Txn) -> Option<Value<'_>> {
    // A TCP-mode stream has no parsed request: the method is read from its data.
    if let Some(m) = super::payload::tcp_method(t) {
        return m;
    }
    str_val(t.method.as_str())
}
fn f_src(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Ip(t.client_addr.ip()))
}
fn f_src_port(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Int(i64::from(t.client_addr.port())))
}
fn f_dst(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Ip(t.local_addr.ip()))
}
fn f_dst_port(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Int(i64::from(t.local_addr.port())))
}
/// HAProxy's `addr_is_local`: whether a UDP socket can be bound to `ip`
/// (an address of this system); other bind errors give no value.
fn is_local(ip: std::net::IpAddr) -> Option<Value<'static>> {
    match std::net::UdpSocket::bind((ip, 0)) {
        Ok(_) => Some(Value::Bool(true)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Some(Value::Bool(false)),
        Err(_) => None,
    }
}
fn f_dst_is_local(t: &Txn) -> Option<Value<'_>> {
    is_local(t.local_addr.ip())
}
fn f_src_is_local(t: &Txn) -> Option<Value<'_>> {
    is_local(t.client_addr.ip())
}
fn f_status(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Int(i64::from(t.status.as_u16())))
}
/// A gRPC response's status: once the exchange ended (logs), the
/// trailers' `grpc-status`; before (response rules), the headers' (a
/// trailers-only response, as gRPC errors and local replies are).
fn f_grpc_status(t: &Txn) -> Option<Value<'_>> {
    let s = t
        .outcome
        .grpc_status
        .or_else(|| crate::proxy::grpc::status_of(None, &t.resp_headers))?;
    Some(Value::Int(i64::from(s)))
}
fn f_fe_name(t: &Txn) -> Option<Value<'_>> {
    str_val(&t.frontend)
}
fn f_version(t: &Txn) -> Option<Value<'_>> {
    str_val(version_text(t.version))
}
fn f_true(_: &Txn) -> Option<Value<'_>> {
    Some(Value::Bool(true))
}
fn f_false(_: &Txn) -> Option<Value<'_>> {
    Some(Value::Bool(false))
}
fn f_date(_: &Txn) -> Option<Value<'_>> {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(Value::Int(i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
}

/// `req.body`: the request body read so far by `wait_for_body` (or a body
/// filter before); no value when none was read, as HAProxy gives none
/// without `wait-for-body` / `option http-buffer-request`.
fn f_req_body(t: &Txn) -> Option<Value<'_>> {
    let b = t.req_buffered.as_ref()?;
    Some(Value::Bin(Cow::Borrowed(&b.data)))
}

/// `uuid([4])`: a random (version 4) UUID, the only version HAProxy 2.6 makes.
fn b_uuid(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    if let Some(a) = c.args.first()
        && arg_int(a, "the UUID version")? != 4
    {
        return Err(ParseError::new(
            a.offset,
            "uuid: only version 4 is supported",
        ));
    }
    simple(f_uuid)
}

fn f_uuid(_: &Txn) -> Option<Value<'_>> {
    let mut b = [0u8; 16];
    // getrandom(2) fills at most 256 bytes at once without blocking once the
    // pool is initialized; a failure (not expected) gives no value.
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if usize::try_from(n).ok() != Some(b.len()) {
        return None;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    Some(Value::Str(Cow::Owned(format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    ))))
}

fn b_int(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    let Some(a) = c.args.first() else {
        return Err(ParseError::new(c.offset, "int needs a value, e.g. int(1)"));
    };
    Ok(Box::new(Const(Sample::Int(arg_int(
        a,
        "the value of int()",
    )?))))
}

fn b_str(c: &Call<'_>, _: &Env<'_>) -> Result<Box<dyn Fetch>, ParseError> {
    let text = c.args.first().map(|a| a.text.clone()).unwrap_or_default();
    Ok(Box::new(Const(Sample::Str(text))))
}

/// Fetches, by name. Keep `usage` in sync with the builder's arguments.
#[rustfmt::skip]
pub static FETCHES: &[FetchDef] = &[
    FetchDef { name: "path", usage: "path", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_path) },
    FetchDef { name: "pathq", usage: "pathq", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_pathq) },
    FetchDef { name: "url", usage: "url", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_url) },
    FetchDef { name: "query", usage: "query", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_query) },
    FetchDef { name: "url_param", usage: "url_param(<name>[,<delim>])", args: (1, 2), kind: Kind::Str, avail: Avail::Both, build: url_param_fetch },
    FetchDef { name: "urlp", usage: "urlp(<name>[,<delim>])", args: (1, 2), kind: Kind::Str, avail: Avail::Both, build: url_param_fetch },
    FetchDef { name: "base", usage: "base", args: (0, 0), kind: Kind::Str, avail: Avail::Request, build: |_, _| simple(f_base) },
    FetchDef { name: "method", usage: "method", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_method) },
    FetchDef { name: "hdr", usage: "hdr(<name>[,<occ>])", args: (1, 2), kind: Kind::Str, avail: Avail::Both, build: |c, _| hdr_fetch(c, Which::Current, true, false) },
    FetchDef { name: "req.hdr", usage: "req.hdr(<name>[,<occ>])", args: (1, 2), kind: Kind::Str, avail: Avail::Request, build: |c, _| hdr_fetch(c, Which::Request, true, false) },
    FetchDef { name: "res.hdr", usage: "res.hdr(<name>[,<occ>])", args: (1, 2), kind: Kind::Str, avail: Avail::Response, build: |c, _| hdr_fetch(c, Which::Response, true, false) },
    FetchDef { name: "shdr", usage: "shdr(<name>[,<occ>])", args: (1, 2), kind: Kind::Str, avail: Avail::Response, build: |c, _| hdr_fetch(c, Which::Response, true, false) },
    FetchDef { name: "req.fhdr", usage: "req.fhdr(<name>[,<occ>])", args: (1, 2), kind: Kind::Str, avail: Avail::Request, build: |c, _| hdr_fetch(c, Which::Request, false, false) },
    FetchDef { name: "res.fhdr", usage: "res.fhdr(<name>[,<occ>])", args: (1, 2), kind: Kind::Str, avail: Avail::Response, build: |c, _| hdr_fetch(c, Which::Response, false, false) },
    FetchDef { name: "fhdr", usage: "fhdr(<name>[,<occ>])", args: (1, 2), kind: Kind::Str, avail: Avail::Both, build: |c, _| hdr_fetch(c, Which::Current, false, false) },
    FetchDef { name: "hdr_ip", usage: "hdr_ip(<name>[,<occ>])", args: (1, 2), kind: Kind::Ip, avail: Avail::Both, build: |c, _| hdr_fetch(c, Which::Current, true, true) },
    FetchDef { name: "req.hdr_ip", usage: "req.hdr_ip(<name>[,<occ>])", args: (1, 2), kind: Kind::Ip, avail: Avail::Request, build: |c, _| hdr_fetch(c, Which::Request, true, true) },
    FetchDef { name: "hdr_cnt", usage: "hdr_cnt([<name>])", args: (0, 1), kind: Kind::Int, avail: Avail::Both, build: |c, _| hdr_cnt_fetch(c, Which::Current, true) },
    FetchDef { name: "req.hdr_cnt", usage: "req.hdr_cnt([<name>])", args: (0, 1), kind: Kind::Int, avail: Avail::Request, build: |c, _| hdr_cnt_fetch(c, Which::Request, true) },
    FetchDef { name: "res.hdr_cnt", usage: "res.hdr_cnt([<name>])", args: (0, 1), kind: Kind::Int, avail: Avail::Response, build: |c, _| hdr_cnt_fetch(c, Which::Response, true) },
    FetchDef { name: "shdr_cnt", usage: "shdr_cnt([<name>])", args: (0, 1), kind: Kind::Int, avail: Avail::Response, build: |c, _| hdr_cnt_fetch(c, Which::Response, true) },
    FetchDef { name: "req.fhdr_cnt", usage: "req.fhdr_cnt([<name>])", args: (0, 1), kind: Kind::Int, avail: Avail::Request, build: |c, _| hdr_cnt_fetch(c, Which::Request, false) },
    FetchDef { name: "res.fhdr_cnt", usage: "res.fhdr_cnt([<name>])", args: (0, 1), kind: Kind::Int, avail: Avail::Response, build: |c, _| hdr_cnt_fetch(c, Which::Response, false) },
    FetchDef { name: "cook", usage: "cook(<name>)", args: (1, 1), kind: Kind::Str, avail: Avail::Request, build: |c, _| cook_fetch(c, false) },
    FetchDef { name: "req.cook", usage: "req.cook(<name>)", args: (1, 1), kind: Kind::Str, avail: Avail::Request, build: |c, _| cook_fetch(c, false) },
    FetchDef { name: "res.cook", usage: "res.cook(<name>)", args: (1, 1), kind: Kind::Str, avail: Avail::Response, build: |c, _| cook_fetch(c, true) },
    FetchDef { name: "scook", usage: "scook(<name>)", args: (1, 1), kind: Kind::Str, avail: Avail::Response, build: |c, _| cook_fetch(c, true) },
    FetchDef { name: "src", usage: "src", args: (0, 0), kind: Kind::Ip, avail: Avail::Both, build: |_, _| simple(f_src) },
    FetchDef { name: "sc0_tracked", usage: "sc0_tracked", args: (0, 1), kind: Kind::Bool, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "sc1_tracked", usage: "sc1_tracked", args: (0, 1), kind: Kind::Bool, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "sc2_tracked", usage: "sc2_tracked", args: (0, 1), kind: Kind::Bool, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "sc_tracked", usage: "sc_tracked(<sc>[,<table>])", args: (1, 2), kind: Kind::Bool, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "sc0_*", usage: "sc0_<data>([<table>])", args: (0, 2), kind: Kind::Int, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "sc1_*", usage: "sc1_<data>([<table>])", args: (0, 2), kind: Kind::Int, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "sc2_*", usage: "sc2_<data>([<table>])", args: (0, 2), kind: Kind::Int, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "sc_*", usage: "sc_<data>(<sc>[,<table>])", args: (1, 3), kind: Kind::Int, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "src_*", usage: "src_<data>([<table>])", args: (0, 2), kind: Kind::Int, avail: Avail::Both, build: crate::rules::stick::build_sc_fetch },
    FetchDef { name: "table_cnt", usage: "table_cnt([<table>])", args: (0, 1), kind: Kind::Int, avail: Avail::Both, build: crate::rules::stick::build_table_fetch },
    FetchDef { name: "table_avl", usage: "table_avl([<table>])", args: (0, 1), kind: Kind::Int, avail: Avail::Both, build: crate::rules::stick::build_table_fetch },
    FetchDef { name: "src_port", usage: "src_port", args: (0, 0), kind: Kind::Int, avail: Avail::Both, build: |_, _| simple(f_src_port) },
    FetchDef { name: "dst", usage: "dst", args: (0, 0), kind: Kind::Ip, avail: Avail::Both, build: |_, _| simple(f_dst) },
    FetchDef { name: "dst_port", usage: "dst_port", args: (0, 0), kind: Kind::Int, avail: Avail::Both, build: |_, _| simple(f_dst_port) },
    FetchDef { name: "dst_is_local", usage: "dst_is_local", args: (0, 0), kind: Kind::Bool, avail: Avail::Both, build: |_, _| simple(f_dst_is_local) },
    FetchDef { name: "src_is_local", usage: "src_is_local", args: (0, 0), kind: Kind::Bool, avail: Avail::Both, build: |_, _| simple(f_src_is_local) },
    FetchDef { name: "status", usage: "status", args: (0, 0), kind: Kind::Int, avail: Avail::Response, build: |_, _| simple(f_status) },
    FetchDef { name: "res.grpc_status", usage: "res.grpc_status", args: (0, 0), kind: Kind::Int, avail: Avail::Response, build: |_, _| simple(f_grpc_status) },
    FetchDef { name: "var", usage: "var(<scope>.<name>[,<default>])", args: (1, 2), kind: Kind::Any, avail: Avail::Both, build: var_fetch },
    FetchDef { name: "always_true", usage: "always_true", args: (0, 0), kind: Kind::Bool, avail: Avail::Both, build: |_, _| simple(f_true) },
    FetchDef { name: "always_false", usage: "always_false", args: (0, 0), kind: Kind::Bool, avail: Avail::Both, build: |_, _| simple(f_false) },
    FetchDef { name: "int", usage: "int(<integer>)", args: (1, 1), kind: Kind::Int, avail: Avail::Both, build: b_int },
    FetchDef { name: "str", usage: "str(<text>)", args: (1, 1), kind: Kind::Str, avail: Avail::Both, build: b_str },
    FetchDef { name: "fe_name", usage: "fe_name", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_fe_name) },
    FetchDef { name: "be_name", usage: "be_name", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: be_name_fetch },
    FetchDef { name: "http_version", usage: "http_version", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_version) },
    FetchDef { name: "req.ver", usage: "req.ver", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_version) },
    FetchDef { name: "req.body", usage: "req.body", args: (0, 0), kind: Kind::Bin, avail: Avail::Request, build: |_, _| simple(f_req_body) },
    FetchDef { name: "req.len", usage: "req.len", args: (0, 0), kind: Kind::Int, avail: Avail::Request, build: super::payload::b_len },
    FetchDef { name: "req_len", usage: "req_len", args: (0, 0), kind: Kind::Int, avail: Avail::Request, build: super::payload::b_len },
    FetchDef { name: "req.payload", usage: "req.payload(<offset>,<length>)", args: (2, 2), kind: Kind::Bin, avail: Avail::Request, build: super::payload::b_payload },
    FetchDef { name: "req.payload_lv", usage: "req.payload_lv(<offset1>,<length>[,<offset2>])", args: (2, 3), kind: Kind::Bin, avail: Avail::Request, build: super::payload::b_payload_lv },
    FetchDef { name: "res.len", usage: "res.len", args: (0, 0), kind: Kind::Int, avail: Avail::Response, build: super::payload::b_res_len },
    FetchDef { name: "res.payload", usage: "res.payload(<offset>,<length>)", args: (2, 2), kind: Kind::Bin, avail: Avail::Response, build: super::payload::b_res_payload },
    FetchDef { name: "res.payload_lv", usage: "res.payload_lv(<offset1>,<length>[,<offset2>])", args: (2, 3), kind: Kind::Bin, avail: Avail::Response, build: super::payload::b_res_payload_lv },
    FetchDef { name: "uuid", usage: "uuid([4])", args: (0, 1), kind: Kind::Str, avail: Avail::Both, build: b_uuid },
    FetchDef { name: "date", usage: "date", args: (0, 0), kind: Kind::Int, avail: Avail::Both, build: |_, _| simple(f_date) },
    FetchDef { name: "ssl_fc", usage: "ssl_fc", args: (0, 0), kind: Kind::Bool, avail: Avail::Both, build: |_, _| simple(super::ssl::f_ssl_fc) },
    FetchDef { name: "ssl_fc_sni", usage: "ssl_fc_sni", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(super::ssl::f_ssl_fc_sni) },
    FetchDef { name: "ssl_fc_protocol", usage: "ssl_fc_protocol", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(super::ssl::f_ssl_fc_protocol) },
    FetchDef { name: "ssl_fc_cipher", usage: "ssl_fc_cipher", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(super::ssl::f_ssl_fc_cipher) },
    FetchDef { name: "ssl_fc_alpn", usage: "ssl_fc_alpn", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(super::ssl::f_ssl_fc_alpn) },
    FetchDef { name: "ssl_c_used", usage: "ssl_c_used", args: (0, 0), kind: Kind::Bool, avail: Avail::Both, build: |_, _| simple(super::ssl::f_ssl_c_used) },
    FetchDef { name: "ssl_c_verify", usage: "ssl_c_verify", args: (0, 0), kind: Kind::Int, avail: Avail::Both, build: |_, _| simple(super::ssl::f_ssl_c_verify) },
    FetchDef { name: "ssl_c_s_dn", usage: "ssl_c_s_dn([<entry>[,<occ>[,<format>]]])", args: (0, 3), kind: Kind::Str, avail: Avail::Both, build: super::ssl::b_ssl_c_s_dn },
    FetchDef { name: "lua.*", usage: "lua.<fetch>([<args>])", args: (0, 16), kind: Kind::Any, avail: Avail::Both, build: crate::rules::ext::build_fetch },
];
