//! Sample fetches and converters: typed values read from a transaction.
//!
//! A fetch expression is `fetch[(args)][,converter[(args)]]...`, e.g.
//! `hdr(host),lower` or `req.hdr(x-forwarded-for,-1),field(1,:)`. Both kinds
//! of step come from a registry ([`FETCHES`], [`CONVERTERS`]): a name, an
//! argument count, the output type and a constructor that validates the
//! arguments once at load time. Adding a fetch or converter means adding one
//! entry; conditions, log-format strings and actions pick it up unchanged.
//!
//! Values are [`Value`]s that borrow from the transaction where they can, so
//! the common case (match the path, read a header) allocates nothing.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderName, HeaderValue, Version, header};
use regex::{Regex, RegexBuilder};

use super::{Env, ParseError, did_you_mean, parse_var_name, suggest};
use crate::txn::{BackendChoice, Phase, Sample, Txn, VarScope};

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// A sample value during evaluation; borrows from the transaction or the rule when it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Bool(bool),
    Int(i64),
    Ip(IpAddr),
    Str(Cow<'a, str>),
    Bin(Cow<'a, [u8]>),
}

/// The type of value a fetch or converter produces, known at load time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Ip,
    Str,
    Bin,
    /// Only known at run time (e.g. a variable).
    Any,
}

impl Kind {
    /// Lower-case name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Int => "integer",
            Kind::Ip => "IP address",
            Kind::Str => "string",
            Kind::Bin => "binary",
            Kind::Any => "value",
        }
    }
}

/// Formats small values (integers, addresses) without allocating.
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl StackText {
    fn new() -> Self {
        StackText {
            buf: [0; 64],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so this is always valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<'a> Value<'a> {
    /// The value's type.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Bool(_) => Kind::Bool,
            Value::Int(_) => Kind::Int,
            Value::Ip(_) => Kind::Ip,
            Value::Str(_) => Kind::Str,
            Value::Bin(_) => Kind::Bin,
        }
    }

    /// A value borrowing a stored sample.
    pub fn borrowed(s: &'a Sample) -> Value<'a> {
        match s {
            Sample::Bool(b) => Value::Bool(*b),
            Sample::Int(i) => Value::Int(*i),
            Sample::Ip(ip) => Value::Ip(*ip),
            Sample::Str(s) => Value::Str(Cow::Borrowed(s)),
            Sample::Bin(b) => Value::Bin(Cow::Borrowed(b)),
        }
    }

    /// A value owning a sample.
    pub fn owned(s: Sample) -> Value<'static> {
        match s {
            Sample::Bool(b) => Value::Bool(b),
            Sample::Int(i) => Value::Int(i),
            Sample::Ip(ip) => Value::Ip(ip),
            Sample::Str(s) => Value::Str(Cow::Owned(s)),
            Sample::Bin(b) => Value::Bin(Cow::Owned(b)),
        }
    }

    /// The value as a stored sample (for variables).
    pub fn into_sample(self) -> Sample {
        match self {
            Value::Bool(b) => Sample::Bool(b),
            Value::Int(i) => Sample::Int(i),
            Value::Ip(ip) => Sample::Ip(ip),
            Value::Str(s) => Sample::Str(s.into_owned()),
            Value::Bin(b) => Sample::Bin(b.into_owned()),
        }
    }

    /// The value as an integer (strings are parsed), like [`Sample::to_int`].
    pub fn to_int(&self) -> Option<i64> {
        match self {
            Value::Bool(b) => Some(i64::from(*b)),
            Value::Int(i) => Some(*i),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Bin(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            Value::Ip(_) => None,
        }
    }

    /// HAProxy's boolean reading, like [`Sample::to_bool`].
    pub fn to_bool(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Ip(_) => true,
            Value::Str(s) => !s.is_empty(),
            Value::Bin(b) => !b.is_empty(),
        }
    }

    /// The value as an IP address (strings are parsed, with or without a port).
    pub fn to_ip(&self) -> Option<IpAddr> {
        match self {
            Value::Ip(ip) => Some(*ip),
            Value::Str(s) => parse_ip_text(s),
            Value::Bin(b) => parse_ip_text(std::str::from_utf8(b).ok()?),
            Value::Bool(_) | Value::Int(_) => None,
        }
    }

    /// Calls `f` with the value as text, formatting numbers and addresses on the stack.
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            Value::Str(s) => f(s),
            Value::Bin(b) => match std::str::from_utf8(b) {
                Ok(s) => f(s),
                Err(_) => f(&String::from_utf8_lossy(b)),
            },
            Value::Bool(b) => f(if *b { "1" } else { "0" }),
            Value::Int(i) => {
                let mut t = StackText::new();
                if write!(t, "{i}").is_ok() {
                    f(t.as_str())
                } else {
                    f(&i.to_string())
                }
            }
            Value::Ip(ip) => {
                let mut t = StackText::new();
                if write!(t, "{ip}").is_ok() {
                    f(t.as_str())
                } else {
                    f(&ip.to_string())
                }
            }
        }
    }

    /// Calls `f` with the value as bytes (text for numbers and addresses).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Value::Bin(b) => f(b),
            Value::Str(s) => f(s.as_bytes()),
            other => other.with_text(|s| f(s.as_bytes())),
        }
    }

    /// Appends the value's text to `out` (as in a log-format string).
    pub fn write_to(&self, out: &mut String) {
        match self {
            Value::Str(s) => out.push_str(s),
            Value::Bin(b) => out.push_str(&String::from_utf8_lossy(b)),
            Value::Bool(b) => out.push(if *b { '1' } else { '0' }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Ip(ip) => {
                let _ = write!(out, "{ip}");
            }
        }
    }

    /// The value as text, keeping a borrow when it already is text.
    pub fn into_text(self) -> Cow<'a, str> {
        match self {
            Value::Str(s) => s,
            Value::Bin(Cow::Borrowed(b)) => String::from_utf8_lossy(b),
            Value::Bin(Cow::Owned(b)) => match String::from_utf8(b) {
                Ok(s) => Cow::Owned(s),
                Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
            },
            other => Cow::Owned(other.with_text(str::to_string)),
        }
    }
}

/// Parses `1.2.3.4`, `::1`, `1.2.3.4:80` or `[::1]:80` as an address.
fn parse_ip_text(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

// ---------------------------------------------------------------------------
// Traits and registries
// ---------------------------------------------------------------------------

/// A compiled sample fetch: reads one value from the transaction.
pub trait Fetch: Send + Sync + fmt::Debug {
    /// The value, or `None` when there is none (absent header, wrong phase, ...).
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>>;

    /// Whether `pred` holds for any of the values, as an ACL tests them.
    ///
    /// HAProxy iterates over every occurrence of a multi-valued fetch used in
    /// an ACL (`hdr(x)` without an occurrence, `cook(x)`), so a second value
    /// cannot hide the one a rule looks for. Single-valued fetches test their
    /// one value.
    fn any<'t>(&'t self, txn: &'t Txn, pred: &mut dyn FnMut(Value<'t>) -> bool) -> bool {
        self.fetch(txn).is_some_and(pred)
    }
}

/// A compiled converter: transforms a value; `None` stops the expression with no value.
pub trait Converter: Send + Sync + fmt::Debug {
    /// Converts `input`; `txn` is there for converters that read variables.
    fn convert<'t>(&'t self, input: Value<'t>, txn: &'t Txn) -> Option<Value<'t>>;
}

/// Where a fetch can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Avail {
    /// In `http_request` and `http_response` rules.
    Both,
    /// Only in `http_request` rules (it reads something gone by the response).
    Request,
    /// Only in `http_response` rules (it reads the response).
    Response,
}

/// One argument of a fetch or converter call, unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The text, with quotes removed and `\"` / `\\` unescaped.
    pub text: String,
    /// Byte offset of the argument in the config string (for errors).
    pub offset: usize,
    /// Whether the argument was quoted.
    pub quoted: bool,
}

/// One `name(args)` step of an expression, as written.
#[derive(Debug, Clone)]
pub struct Call<'s> {
    /// The fetch or converter name.
    pub name: &'s str,
    /// Byte offset of the name in the config string.
    pub offset: usize,
    /// The arguments between the parentheses.
    pub args: Vec<Arg>,
    /// Whether `(...)` was written (even if empty).
    pub parens: bool,
}

/// Builds a fetch from its call; validates arguments.
pub type FetchBuilder = fn(&Call<'_>, &Env<'_>) -> Result<Box<dyn Fetch>, ParseError>;
/// Builds a converter from its call; validates arguments.
pub type ConvBuilder = fn(&Call<'_>, &Env<'_>) -> Result<Box<dyn Converter>, ParseError>;

/// A registry entry for a sample fetch.
pub struct FetchDef {
    /// The fetch name; a name ending in `.*` (e.g. `lua.*`) matches every name with that prefix.
    pub name: &'static str,
    /// How to write it, for messages (e.g. `hdr(<name>[,<occ>])`).
    pub usage: &'static str,
    /// Minimum and maximum argument count.
    pub args: (u8, u8),
    /// Output type (decides the default match method in conditions).
    pub kind: Kind,
    /// The phases whose rules may use it (checked at load time).
    pub avail: Avail,
    /// Validates the arguments and builds the fetch.
    pub build: FetchBuilder,
}

/// A registry entry for a converter.
pub struct ConvDef {
    /// The converter name.
    pub name: &'static str,
    /// How to write it, for messages (e.g. `field(<index>,<delimiters>)`).
    pub usage: &'static str,
    /// Minimum and maximum argument count.
    pub args: (u8, u8),
    /// Output type; `None` keeps the input's type.
    pub out: Option<Kind>,
    /// Validates the arguments and builds the converter.
    pub build: ConvBuilder,
}

/// The fetch called `name`: an exact entry, else a `prefix.*` entry.
pub fn find_fetch(name: &str) -> Option<&'static FetchDef> {
    FETCHES.iter().find(|d| d.name == name).or_else(|| {
        FETCHES.iter().find(|d| {
            d.name
                .strip_suffix('*')
                .is_some_and(|p| name.len() > p.len() && name.starts_with(p))
        })
    })
}

/// The converter called `name`: an exact entry, else a `prefix.*` entry.
pub fn find_converter(name: &str) -> Option<&'static ConvDef> {
    CONVERTERS.iter().find(|d| d.name == name).or_else(|| {
        CONVERTERS.iter().find(|d| {
            d.name
                .strip_suffix('*')
                .is_some_and(|p| name.len() > p.len() && name.starts_with(p))
        })
    })
}

/// Names of all fetches (prefix entries excluded), for suggestions.
pub fn fetch_names() -> impl Iterator<Item = &'static str> {
    FETCHES.iter().map(|d| d.name).filter(|n| !n.ends_with('*'))
}

// ---------------------------------------------------------------------------
// Expressions
// ---------------------------------------------------------------------------

/// A compiled fetch expression: one fetch then converters.
#[derive(Debug)]
pub struct Expr {
    fetch: Box<dyn Fetch>,
    convs: Box<[Box<dyn Converter>]>,
    kind: Kind,
}

impl Expr {
    /// Evaluates the expression; `None` if the fetch or a converter yields nothing.
    pub fn eval<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>> {
        let mut v = self.fetch.fetch(txn)?;
        for c in &self.convs {
            v = c.convert(v, txn)?;
        }
        Some(v)
    }

    /// Whether `pred` holds for any value, converted, as an ACL term tests it
    /// (every occurrence of a multi-valued fetch; see [`Fetch::any`]).
    pub fn any<'t>(&'t self, txn: &'t Txn, mut pred: impl FnMut(&Value<'t>) -> bool) -> bool {
        self.fetch.any(txn, &mut |mut v| {
            for c in &self.convs {
                match c.convert(v, txn) {
                    Some(next) => v = next,
                    None => return false,
                }
            }
            pred(&v)
        })
    }

    /// The output type known at load time.
    pub fn kind(&self) -> Kind {
        self.kind
    }
}

/// Parses a whole fetch expression (e.g. the `expr` of `set_var`).
///
/// `base` is the byte offset of `text` in the config string; `site` says
/// where it was written, for messages (e.g. `"in expression"`).
pub fn parse_expr(text: &str, base: usize, env: &Env<'_>, site: &str) -> Result<Expr, ParseError> {
    let calls = split_calls(text, base)?;
    let Some((first, convs)) = calls.split_first() else {
        return Err(ParseError::new(base, "empty expression"));
    };
    let def = find_fetch(first.name).ok_or_else(|| unknown_fetch(first, site, fetch_names()))?;
    build_expr(first, def, convs, env)
}

/// The error for an unknown fetch name, with a suggestion from `candidates`.
pub(crate) fn unknown_fetch<'a>(
    call: &Call<'_>,
    site: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> ParseError {
    let hint = match suggest(call.name, candidates) {
        Some(s) => did_you_mean(s),
        None => "; common fetches are path, url, query, method, hdr(<name>), cook(<name>), src, status and var(<scope.name>)".to_string(),
    };
    ParseError::new(
        call.offset,
        format!("unknown fetch \"{}\" {site}{hint}", call.name),
    )
}

/// Builds an expression from an already-resolved fetch and its converter calls.
pub(crate) fn build_expr(
    call: &Call<'_>,
    def: &FetchDef,
    convs: &[Call<'_>],
    env: &Env<'_>,
) -> Result<Expr, ParseError> {
    match (def.avail, env.phase) {
        (Avail::Request, Phase::Response) => {
            return Err(ParseError::new(
                call.offset,
                format!(
                    "fetch \"{}\" reads the request, which is gone when http_response rules run; \
                     save it in http_request with e.g. set_var = \"txn.x\", expr = \"{}\" and read var(txn.x)",
                    call.name, def.usage
                ),
            ));
        }
        (Avail::Response, Phase::Request) => {
            return Err(ParseError::new(
                call.offset,
                format!(
                    "fetch \"{}\" reads the response, which does not exist yet in http_request rules; use it in http_response",
                    call.name
                ),
            ));
        }
        _ => {}
    }
    check_arity(call, def.args, "fetch", def.usage)?;
    let fetch = (def.build)(call, env)?;
    let mut kind = def.kind;
    let mut built = Vec::with_capacity(convs.len());
    for c in convs {
        let cd = find_converter(c.name).ok_or_else(|| {
            let hint = match suggest(c.name, CONVERTERS.iter().map(|d| d.name)) {
                Some(s) => did_you_mean(s),
                None => {
                    let all: Vec<&str> = CONVERTERS.iter().map(|d| d.name).collect();
                    format!("; available converters: {}", all.join(", "))
                }
            };
            let also = if find_fetch(c.name).is_some() {
                " (it is a fetch; only converters may follow ',')"
            } else {
                ""
            };
            ParseError::new(
                c.offset,
                format!("unknown converter \"{}\"{also}{hint}", c.name),
            )
        })?;
        check_arity(c, cd.args, "converter", cd.usage)?;
        built.push((cd.build)(c, env)?);
        kind = cd.out.unwrap_or(kind);
    }
    Ok(Expr {
        fetch,
        convs: built.into_boxed_slice(),
        kind,
    })
}

fn check_arity(
    call: &Call<'_>,
    (min, max): (u8, u8),
    what: &str,
    usage: &str,
) -> Result<(), ParseError> {
    let n = call.args.len();
    if n >= usize::from(min) && n <= usize::from(max) {
        return Ok(());
    }
    let expected = match (min, max) {
        (0, 0) => {
            return Err(ParseError::new(
                call.offset,
                format!(
                    "{what} \"{}\" takes no arguments; write just \"{}\"",
                    call.name, call.name
                ),
            ));
        }
        (a, b) if a == b => format!("{a} argument{}", if a == 1 { "" } else { "s" }),
        (0, b) => format!("at most {b} argument{}", if b == 1 { "" } else { "s" }),
        (a, b) => format!("{a} to {b} arguments"),
    };
    Err(ParseError::new(
        call.offset,
        format!(
            "{what} \"{}\" takes {expected}, got {n}; usage: {usage}",
            call.name
        ),
    ))
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.'
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

fn char_at(text: &str, i: usize) -> char {
    text.get(i..).and_then(|s| s.chars().next()).unwrap_or(' ')
}

/// Splits `fetch(args),conv(args),...` into calls; offsets are `base`-relative.
pub fn split_calls(text: &str, base: usize) -> Result<Vec<Call<'_>>, ParseError> {
    let b = text.as_bytes();
    let mut calls: Vec<Call<'_>> = Vec::new();
    let mut i = skip_ws(b, 0);
    loop {
        let start = i;
        while b.get(i).is_some_and(|&c| is_name_byte(c)) {
            i += 1;
        }
        if i == start {
            let what = if calls.is_empty() {
                "fetch"
            } else {
                "converter"
            };
            let msg = if i >= b.len() {
                if calls.is_empty() {
                    "empty expression; expected a fetch such as path or hdr(host)".to_string()
                } else {
                    "expected a converter name after ','".to_string()
                }
            } else {
                format!("unexpected '{}'; expected a {what} name", char_at(text, i))
            };
            return Err(ParseError::new(base + i, msg));
        }
        let name = &text[start..i];
        let mut call = Call {
            name,
            offset: base + start,
            args: Vec::new(),
            parens: false,
        };
        if b.get(i) == Some(&b'(') {
            call.parens = true;
            let (args, next) = parse_args(text, i, base)?;
            call.args = args;
            i = next;
        }
        calls.push(call);
        i = skip_ws(b, i);
        match b.get(i) {
            None => return Ok(calls),
            Some(b',') => i = skip_ws(b, i + 1),
            Some(_) => {
                return Err(ParseError::new(
                    base + i,
                    format!(
                        "unexpected '{}' after \"{name}\"; converters are chained with ',' (e.g. hdr(host),lower)",
                        char_at(text, i)
                    ),
                ));
            }
        }
    }
}

/// Parses the arguments of a call whose `(` is at `open`; returns them and the index after `)`.
fn parse_args(text: &str, open: usize, base: usize) -> Result<(Vec<Arg>, usize), ParseError> {
    let b = text.as_bytes();
    let mut args = Vec::new();
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b')') {
        return Ok((args, i + 1));
    }
    let unclosed = || ParseError::new(base + open, "missing ')' to close this '('");
    loop {
        i = skip_ws(b, i);
        let start = i;
        if matches!(b.get(i), Some(b'"' | b'\'')) {
            let (t, next) = read_quoted(text, i, base)?;
            args.push(Arg {
                text: t,
                offset: base + start + 1,
                quoted: true,
            });
            i = skip_ws(b, next);
        } else {
            // Nested parentheses (e.g. a regex group) stay inside the argument.
            let mut depth = 0usize;
            while let Some(&c) = b.get(i) {
                match c {
                    b'(' => depth += 1,
                    b')' if depth == 0 => break,
                    b')' => depth -= 1,
                    b',' if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
            args.push(Arg {
                text: text[start..i].trim_end().to_string(),
                offset: base + start,
                quoted: false,
            });
        }
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b')') => return Ok((args, i + 1)),
            None => return Err(unclosed()),
            Some(_) => {
                return Err(ParseError::new(
                    base + i,
                    format!(
                        "unexpected '{}' after a quoted argument; expected ',' or ')'",
                        char_at(text, i)
                    ),
                ));
            }
        }
    }
}

/// Reads a `"..."` or `'...'` string starting at `at`; returns its text and the index after it.
///
/// In double quotes `\"` and `\\` are escapes and any other backslash is kept
/// (so regexes like `"\.png$"` need no doubling); single quotes are literal.
pub(crate) fn read_quoted(
    text: &str,
    at: usize,
    base: usize,
) -> Result<(String, usize), ParseError> {
    let quote = char_at(text, at);
    let mut out = String::new();
    let rest = text.get(at + 1..).unwrap_or("");
    let mut chars = rest.char_indices().peekable();
    while let Some((j, c)) = chars.next() {
        if c == quote {
            return Ok((out, at + 1 + j + 1));
        }
        if c == '\\'
            && quote == '"'
            && let Some(&(_, n @ ('"' | '\\'))) = chars.peek()
        {
            out.push(n);
            chars.next();
            continue;
        }
        out.push(c);
    }
    Err(ParseError::new(
        base + at,
        format!("unterminated quoted string; add the closing {quote}"),
    ))
}

// ---------------------------------------------------------------------------
// Argument helpers
// ---------------------------------------------------------------------------

fn arg_err(a: &Arg, msg: impl Into<String>) -> ParseError {
    ParseError::new(a.offset, msg)
}

fn arg_int(a: &Arg, what: &str) -> Result<i64, ParseError> {
    a.text
        .trim()
        .parse()
        .map_err(|_| arg_err(a, format!("{what} must be an integer, got \"{}\"", a.text)))
}

fn arg_header(a: &Arg) -> Result<HeaderName, ParseError> {
    HeaderName::from_bytes(a.text.trim().as_bytes()).map_err(|_| {
        arg_err(
            a,
            format!(
                "invalid header name \"{}\"; use letters, digits and '-' (e.g. x-forwarded-for)",
                a.text
            ),
        )
    })
}

fn arg_regex(a: &Arg, icase: bool) -> Result<Regex, ParseError> {
    compile_regex(&a.text, icase).map_err(|m| arg_err(a, m))
}

/// Compiles a regex, turning the crate's multi-line error into one line.
pub(crate) fn compile_regex(pattern: &str, icase: bool) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .case_insensitive(icase)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let detail = text
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix("error: "))
                .unwrap_or(text.trim())
                .to_string();
            format!("invalid regex \"{pattern}\": {detail}")
        })
}

/// An occurrence argument: positive from the first value, negative from the
/// last; 0 (or none) means every value in an ACL and the last one as a sample,
/// as in HAProxy.
fn arg_occ(a: Option<&Arg>) -> Result<i32, ParseError> {
    let Some(a) = a else { return Ok(0) };
    i32::try_from(arg_int(a, "occurrence")?).map_err(|_| {
        arg_err(
            a,
            "occurrence out of range: 1 is the first value, -1 the last, 0 all of them",
        )
    })
}

// ---------------------------------------------------------------------------
// Fetch implementations
// ---------------------------------------------------------------------------

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
fn f_status(t: &Txn) -> Option<Value<'_>> {
    Some(Value::Int(i64::from(t.status.as_u16())))
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
    FetchDef { name: "sc0_tracked", usage: "sc0_tracked", args: (0, 1), kind: Kind::Bool, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "sc1_tracked", usage: "sc1_tracked", args: (0, 1), kind: Kind::Bool, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "sc2_tracked", usage: "sc2_tracked", args: (0, 1), kind: Kind::Bool, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "sc_tracked", usage: "sc_tracked(<sc>[,<table>])", args: (1, 2), kind: Kind::Bool, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "sc0_*", usage: "sc0_<data>([<table>])", args: (0, 2), kind: Kind::Int, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "sc1_*", usage: "sc1_<data>([<table>])", args: (0, 2), kind: Kind::Int, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "sc2_*", usage: "sc2_<data>([<table>])", args: (0, 2), kind: Kind::Int, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "sc_*", usage: "sc_<data>(<sc>[,<table>])", args: (1, 3), kind: Kind::Int, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "src_*", usage: "src_<data>([<table>])", args: (0, 2), kind: Kind::Int, avail: Avail::Both, build: super::stick::build_sc_fetch },
    FetchDef { name: "table_cnt", usage: "table_cnt([<table>])", args: (0, 1), kind: Kind::Int, avail: Avail::Both, build: super::stick::build_table_fetch },
    FetchDef { name: "table_avl", usage: "table_avl([<table>])", args: (0, 1), kind: Kind::Int, avail: Avail::Both, build: super::stick::build_table_fetch },
    FetchDef { name: "src_port", usage: "src_port", args: (0, 0), kind: Kind::Int, avail: Avail::Both, build: |_, _| simple(f_src_port) },
    FetchDef { name: "dst", usage: "dst", args: (0, 0), kind: Kind::Ip, avail: Avail::Both, build: |_, _| simple(f_dst) },
    FetchDef { name: "dst_port", usage: "dst_port", args: (0, 0), kind: Kind::Int, avail: Avail::Both, build: |_, _| simple(f_dst_port) },
    FetchDef { name: "status", usage: "status", args: (0, 0), kind: Kind::Int, avail: Avail::Response, build: |_, _| simple(f_status) },
    FetchDef { name: "var", usage: "var(<scope>.<name>[,<default>])", args: (1, 2), kind: Kind::Any, avail: Avail::Both, build: var_fetch },
    FetchDef { name: "always_true", usage: "always_true", args: (0, 0), kind: Kind::Bool, avail: Avail::Both, build: |_, _| simple(f_true) },
    FetchDef { name: "always_false", usage: "always_false", args: (0, 0), kind: Kind::Bool, avail: Avail::Both, build: |_, _| simple(f_false) },
    FetchDef { name: "int", usage: "int(<integer>)", args: (1, 1), kind: Kind::Int, avail: Avail::Both, build: b_int },
    FetchDef { name: "str", usage: "str(<text>)", args: (1, 1), kind: Kind::Str, avail: Avail::Both, build: b_str },
    FetchDef { name: "fe_name", usage: "fe_name", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_fe_name) },
    FetchDef { name: "be_name", usage: "be_name", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: be_name_fetch },
    FetchDef { name: "http_version", usage: "http_version", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_version) },
    FetchDef { name: "req.ver", usage: "req.ver", args: (0, 0), kind: Kind::Str, avail: Avail::Both, build: |_, _| simple(f_version) },
    FetchDef { name: "date", usage: "date", args: (0, 0), kind: Kind::Int, avail: Avail::Both, build: |_, _| simple(f_date) },
    FetchDef { name: "lua.*", usage: "lua.<fetch>([<args>])", args: (0, 16), kind: Kind::Any, avail: Avail::Both, build: crate::lua::build_fetch },
];

// ---------------------------------------------------------------------------
// Converters
// ---------------------------------------------------------------------------

/// Keeps a borrow when slicing a borrowed string.
fn sub_cow(s: Cow<'_, str>, start: usize, end: usize) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(start..end).unwrap_or("")),
        Cow::Owned(o) => Cow::Owned(o.get(start..end).unwrap_or("").to_string()),
    }
}

#[derive(Debug)]
struct Case {
    upper: bool,
}

impl Converter for Case {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let s = v.into_text();
        let needs = if self.upper {
            s.bytes().any(|b| b.is_ascii_lowercase())
        } else {
            s.bytes().any(|b| b.is_ascii_uppercase())
        };
        Some(Value::Str(match (needs, self.upper) {
            (false, _) => s,
            (true, true) => Cow::Owned(s.to_ascii_uppercase()),
            (true, false) => Cow::Owned(s.to_ascii_lowercase()),
        }))
    }
}

#[derive(Debug)]
struct Length;

impl Converter for Length {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let n = v.with_bytes(<[u8]>::len);
        Some(Value::Int(i64::try_from(n).unwrap_or(i64::MAX)))
    }
}

#[derive(Debug)]
struct Base64;

impl Converter for Base64 {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        Some(Value::Str(Cow::Owned(
            v.with_bytes(super::crypto::base64_encode),
        )))
    }
}

#[derive(Debug)]
struct Hex;

impl Converter for Hex {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let s = v.with_bytes(|b| {
            let mut out = String::with_capacity(b.len() * 2);
            for byte in b {
                let _ = write!(out, "{byte:02X}");
            }
            out
        });
        Some(Value::Str(Cow::Owned(s)))
    }
}

/// `field(idx,delims[,count])` and `word(...)` (which skips empty fields).
#[derive(Debug)]
struct Field {
    index: i64,
    delims: Box<[char]>,
    count: i64,
    skip_empty: bool,
}

impl Field {
    /// The byte range selected in `s`.
    fn range(&self, s: &str) -> Option<(usize, usize)> {
        let base = s.as_ptr() as usize;
        let off = |p: &str| p.as_ptr() as usize - base;
        let keep = |p: &&str| !self.skip_empty || !p.is_empty();
        let delims = &self.delims;
        let parts = s.split(|c: char| delims.contains(&c));
        let k = usize::try_from(self.index.unsigned_abs()).ok()?;
        let count = usize::try_from(self.count).unwrap_or(0);
        if self.index > 0 {
            let mut it = parts.filter(keep);
            let first = it.nth(k - 1)?;
            let start = off(first);
            let end = match count {
                0 => s.len(),
                1 => start + first.len(),
                n => match last_of(it, n - 1) {
                    Some(p) => off(p) + p.len(),
                    None => s.len(),
                },
            };
            Some((start, end))
        } else {
            let mut it = parts.rev().filter(keep);
            let last = it.nth(k - 1)?;
            let end = off(last) + last.len();
            let start = match count {
                0 => 0,
                1 => off(last),
                n => last_of(it, n - 1).map_or(0, off),
            };
            Some((start, end))
        }
    }
}

/// The `n`th of `parts`, or `None` when there are fewer: then HAProxy's
/// `field`/`word` take the rest of the string, delimiters included, as with
/// a count of 0 (`word(1,_,3)` on `a_b__` is `a_b__`).
fn last_of<'s>(parts: impl Iterator<Item = &'s str>, n: usize) -> Option<&'s str> {
    let mut taken = 0;
    let mut last = None;
    for p in parts.take(n) {
        taken += 1;
        last = Some(p);
    }
    if taken == n { last } else { None }
}

impl Converter for Field {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let s = v.into_text();
        let (a, b) = self.range(&s)?;
        Some(Value::Str(sub_cow(s, a, b)))
    }
}

fn field_conv(c: &Call<'_>, skip_empty: bool) -> Result<Box<dyn Converter>, ParseError> {
    let (Some(ia), Some(da)) = (c.args.first(), c.args.get(1)) else {
        return Err(ParseError::new(
            c.offset,
            format!("{} needs an index and delimiters", c.name),
        ));
    };
    let index = arg_int(ia, "field index")?;
    if index == 0 {
        return Err(arg_err(
            ia,
            "field index starts at 1 (or -1 for the last field); 0 is invalid",
        ));
    }
    if da.text.is_empty() {
        return Err(arg_err(da, "the delimiter list must not be empty"));
    }
    let count = match c.args.get(2) {
        Some(a) => {
            let n = arg_int(a, "field count")?;
            if n < 0 {
                return Err(arg_err(a, "field count must be 0 (all remaining) or more"));
            }
            n
        }
        None => 1,
    };
    Ok(Box::new(Field {
        index,
        delims: da.text.chars().collect(),
        count,
        skip_empty,
    }))
}

#[derive(Debug)]
struct RegSub {
    re: Regex,
    /// Replacement in the regex crate's syntax (`${1}`), converted from HAProxy's `\1`.
    subst: String,
    global: bool,
}

impl Converter for RegSub {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let s = v.into_text();
        let limit = if self.global { 0 } else { 1 };
        let replaced = match self.re.replacen(&s, limit, self.subst.as_str()) {
            Cow::Borrowed(_) => None,
            Cow::Owned(o) => Some(o),
        };
        Some(Value::Str(replaced.map_or(s, Cow::Owned)))
    }
}

/// Converts HAProxy's `\1` back-references to `${1}` and escapes literal `$`.
fn haproxy_subst(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                if let Some(d) = chars.next() {
                    let _ = write!(out, "${{{d}}}");
                }
            }
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn regsub_conv(c: &Call<'_>) -> Result<Box<dyn Converter>, ParseError> {
    let (Some(ra), Some(sa)) = (c.args.first(), c.args.get(1)) else {
        return Err(ParseError::new(
            c.offset,
            "regsub needs a regex and a replacement",
        ));
    };
    let (mut icase, mut global) = (false, false);
    if let Some(fa) = c.args.get(2) {
        for f in fa.text.chars() {
            match f {
                'i' => icase = true,
                'g' => global = true,
                other => {
                    return Err(arg_err(
                        fa,
                        format!(
                            "unknown regsub flag '{other}'; use 'i' (ignore case) and/or 'g' (all matches)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(Box::new(RegSub {
        re: arg_regex(ra, icase)?,
        subst: haproxy_subst(&sa.text),
        global,
    }))
}

#[derive(Debug)]
struct ToBool;

impl Converter for ToBool {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        Some(Value::Bool(v.to_int()? != 0))
    }
}

#[derive(Debug, Clone, Copy)]
enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// The right-hand side of an arithmetic converter: a constant or a variable.
#[derive(Debug)]
enum Operand {
    Const(i64),
    Var(VarScope, Box<str>),
}

#[derive(Debug)]
struct Arith {
    op: ArithOp,
    rhs: Operand,
}

impl Converter for Arith {
    fn convert<'t>(&'t self, v: Value<'t>, txn: &'t Txn) -> Option<Value<'t>> {
        let a = v.to_int()?;
        let b = match &self.rhs {
            Operand::Const(n) => *n,
            Operand::Var(scope, name) => txn.get_var(*scope, name)?.to_int()?,
        };
        // Saturating like HAProxy; division by zero yields no value instead of a panic.
        let r = match self.op {
            ArithOp::Add => a.saturating_add(b),
            ArithOp::Sub => a.saturating_sub(b),
            ArithOp::Mul => a.saturating_mul(b),
            ArithOp::Div if b == 0 => return None,
            ArithOp::Div => a.checked_div(b).unwrap_or(i64::MAX),
            ArithOp::Mod if b == 0 => return None,
            ArithOp::Mod => a.checked_rem(b).unwrap_or(0),
        };
        Some(Value::Int(r))
    }
}

fn arith_conv(c: &Call<'_>, env: &Env<'_>, op: ArithOp) -> Result<Box<dyn Converter>, ParseError> {
    let Some(a) = c.args.first() else {
        return Err(ParseError::new(
            c.offset,
            format!("{} needs a value", c.name),
        ));
    };
    let t = a.text.trim();
    let rhs = if let Ok(n) = t.parse::<i64>() {
        Operand::Const(n)
    } else if t.contains('.') {
        let (scope, name) = parse_var_name(t, env).map_err(|m| arg_err(a, m))?;
        Operand::Var(scope, name.into())
    } else {
        return Err(arg_err(
            a,
            format!(
                "{} needs an integer or a variable name (e.g. txn.limit), got \"{t}\"",
                c.name
            ),
        ));
    };
    if matches!(op, ArithOp::Div | ArithOp::Mod) && matches!(rhs, Operand::Const(0)) {
        return Err(arg_err(a, "division by zero"));
    }
    Ok(Box::new(Arith { op, rhs }))
}

#[derive(Debug)]
struct Json {
    ascii: bool,
}

impl Converter for Json {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let s = v.into_text();
        let clean = s
            .chars()
            .all(|c| c >= ' ' && c != '"' && c != '\\' && (!self.ascii || c.is_ascii()));
        if clean {
            return Some(Value::Str(s));
        }
        let mut out = String::with_capacity(s.len() + 8);
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if c < ' ' || (self.ascii && !c.is_ascii()) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        Some(Value::Str(Cow::Owned(out)))
    }
}

fn json_conv(c: &Call<'_>) -> Result<Box<dyn Converter>, ParseError> {
    let ascii = match c.args.first().map(|a| (a, a.text.as_str())) {
        None | Some((_, "utf8" | "utf8s" | "utf8p" | "utf8ps")) => false,
        Some((_, "ascii")) => true,
        Some((a, other)) => {
            return Err(arg_err(
                a,
                format!("unknown json mode \"{other}\"; use ascii, utf8, utf8s, utf8p or utf8ps"),
            ));
        }
    };
    Ok(Box::new(Json { ascii }))
}

#[derive(Debug)]
struct UrlDec {
    in_form: bool,
}

impl Converter for UrlDec {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let s = v.into_text();
        if !s.contains(['%', '+']) {
            return Some(Value::Str(s));
        }
        url_decode(&s, self.in_form).map(|d| Value::Str(Cow::Owned(d)))
    }
}

fn url_dec_conv(c: &Call<'_>) -> Result<Box<dyn Converter>, ParseError> {
    let in_form = match c.args.first() {
        Some(a) => arg_int(a, "in_form")? != 0,
        None => false,
    };
    Ok(Box::new(UrlDec { in_form }))
}

/// Percent-decodes `s`; `+` becomes a space in forms and after a literal
/// `?`. `None` on a bad escape (HAProxy's `url_dec` fails); invalid UTF-8 is replaced.
fn url_decode(s: &str, in_form: bool) -> Option<String> {
    let plus_from = if in_form {
        Some(0)
    } else {
        s.find('?').map(|i| i + 1)
    };
    let out = percent_decode_strict(s, plus_from)?;
    Some(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Percent-decodes `s` (`+` as a space from byte `plus_from` on), or `None`
/// if a `%` is not followed by two hex digits: `percent_encoding` keeps such
/// text as it is, but HAProxy and the admin API refuse it.
pub(crate) fn percent_decode_strict(s: &str, plus_from: Option<usize>) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let escapes_valid = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_valid {
        return None;
    }
    // `+` is replaced before decoding so that `%2B` stays a `+`.
    let plus = plus_from.filter(|&at| b.get(at..).is_some_and(|t| t.contains(&b'+')));
    Some(match plus {
        None => percent_encoding::percent_decode(b).collect(),
        Some(at) => {
            let mut raw = b.to_vec();
            for c in raw.iter_mut().skip(at) {
                if *c == b'+' {
                    *c = b' ';
                }
            }
            percent_encoding::percent_decode(&raw).collect()
        }
    })
}

#[derive(Debug)]
struct IpMask {
    v4: u32,
    v6: u128,
}

impl Converter for IpMask {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        Some(Value::Ip(match v.to_ip()? {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & self.v4)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & self.v6)),
        }))
    }
}

fn ipmask_conv(c: &Call<'_>) -> Result<Box<dyn Converter>, ParseError> {
    let Some(a) = c.args.first() else {
        return Err(ParseError::new(c.offset, "ipmask needs an IPv4 mask"));
    };
    let v4 = if let Ok(m) = a.text.trim().parse::<Ipv4Addr>() {
        u32::from(m)
    } else {
        match a.text.trim().parse::<u32>() {
            Ok(0) => 0,
            Ok(n @ 1..=32) => u32::MAX << (32 - n),
            _ => {
                return Err(arg_err(
                    a,
                    "IPv4 mask must be a prefix length 0-32 or a dotted mask like 255.255.255.0",
                ));
            }
        }
    };
    let v6 = match c.args.get(1) {
        None => u128::MAX,
        Some(b) => match b.text.trim().parse::<u32>() {
            Ok(0) => 0,
            Ok(n @ 1..=128) => u128::MAX << (128 - n),
            _ => return Err(arg_err(b, "IPv6 mask must be a prefix length 0-128")),
        },
    };
    Ok(Box::new(IpMask { v4, v6 }))
}

/// Converters, by name.
#[rustfmt::skip]
pub static CONVERTERS: &[ConvDef] = &[
    ConvDef { name: "lower", usage: "lower", args: (0, 0), out: Some(Kind::Str), build: |_, _| Ok(Box::new(Case { upper: false })) },
    ConvDef { name: "upper", usage: "upper", args: (0, 0), out: Some(Kind::Str), build: |_, _| Ok(Box::new(Case { upper: true })) },
    ConvDef { name: "length", usage: "length", args: (0, 0), out: Some(Kind::Int), build: |_, _| Ok(Box::new(Length)) },
    ConvDef { name: "len", usage: "len", args: (0, 0), out: Some(Kind::Int), build: |_, _| Ok(Box::new(Length)) },
    ConvDef { name: "base64", usage: "base64", args: (0, 0), out: Some(Kind::Str), build: |_, _| Ok(Box::new(Base64)) },
    ConvDef { name: "hex", usage: "hex", args: (0, 0), out: Some(Kind::Str), build: |_, _| Ok(Box::new(Hex)) },
    ConvDef { name: "field", usage: "field(<index>,<delimiters>[,<count>])", args: (2, 3), out: Some(Kind::Str), build: |c, _| field_conv(c, false) },
    ConvDef { name: "word", usage: "word(<index>,<delimiters>[,<count>])", args: (2, 3), out: Some(Kind::Str), build: |c, _| field_conv(c, true) },
    ConvDef { name: "regsub", usage: "regsub(<regex>,<replacement>[,<flags i/g>])", args: (2, 3), out: Some(Kind::Str), build: |c, _| regsub_conv(c) },
    ConvDef { name: "bool", usage: "bool", args: (0, 0), out: Some(Kind::Bool), build: |_, _| Ok(Box::new(ToBool)) },
    ConvDef { name: "add", usage: "add(<integer or variable>)", args: (1, 1), out: Some(Kind::Int), build: |c, e| arith_conv(c, e, ArithOp::Add) },
    ConvDef { name: "sub", usage: "sub(<integer or variable>)", args: (1, 1), out: Some(Kind::Int), build: |c, e| arith_conv(c, e, ArithOp::Sub) },
    ConvDef { name: "mul", usage: "mul(<integer or variable>)", args: (1, 1), out: Some(Kind::Int), build: |c, e| arith_conv(c, e, ArithOp::Mul) },
    ConvDef { name: "div", usage: "div(<integer or variable>)", args: (1, 1), out: Some(Kind::Int), build: |c, e| arith_conv(c, e, ArithOp::Div) },
    ConvDef { name: "mod", usage: "mod(<integer or variable>)", args: (1, 1), out: Some(Kind::Int), build: |c, e| arith_conv(c, e, ArithOp::Mod) },
    ConvDef { name: "json", usage: "json([ascii|utf8])", args: (0, 1), out: Some(Kind::Str), build: |c, _| json_conv(c) },
    ConvDef { name: "url_dec", usage: "url_dec([<in_form>])", args: (0, 1), out: Some(Kind::Str), build: |c, _| url_dec_conv(c) },
    ConvDef { name: "ipmask", usage: "ipmask(<v4 mask>[,<v6 mask>])", args: (1, 2), out: Some(Kind::Ip), build: |c, _| ipmask_conv(c) },
    ConvDef { name: "sha2", usage: "sha2([<bits>])", args: (0, 1), out: Some(Kind::Bin), build: super::crypto::sha2_conv },
    ConvDef { name: "hmac", usage: "hmac(<algorithm>,<base64 key or variable>)", args: (2, 2), out: Some(Kind::Bin), build: super::crypto::hmac_conv },
    ConvDef { name: "b64dec", usage: "b64dec", args: (0, 0), out: Some(Kind::Bin), build: super::crypto::b64dec_conv },
    ConvDef { name: "crc32", usage: "crc32([<avalanche>])", args: (0, 1), out: Some(Kind::Int), build: super::crypto::crc32_conv },
    ConvDef { name: "lua.*", usage: "lua.<converter>([<args>])", args: (0, 16), out: Some(Kind::Any), build: crate::lua::build_converter },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::{ctx_parts, txn};

    fn eval_in(text: &str, t: &Txn, phase: Phase) -> Option<Sample> {
        let (source, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            source: &source,
            backends: &backends,
            plugins: crate::lua::Plugins::empty(),
            tables: crate::stick::StickTables::none(),
        };
        let env = Env { ctx: &cx, phase };
        let e = parse_expr(text, 0, &env, "in expression").expect("expression parses");
        e.eval(t).map(Value::into_sample)
    }

    fn eval(text: &str, t: &Txn) -> Option<Sample> {
        eval_in(text, t, Phase::Request)
    }

    fn s(x: &str) -> Option<Sample> {
        Some(Sample::Str(x.to_string()))
    }

    fn err(text: &str, phase: Phase) -> ParseError {
        let (source, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            source: &source,
            backends: &backends,
            plugins: crate::lua::Plugins::empty(),
            tables: crate::stick::StickTables::none(),
        };
        let env = Env { ctx: &cx, phase };
        parse_expr(text, 0, &env, "in expression").expect_err("expression is rejected")
    }

    #[test]
    fn split_calls_handles_args_quotes_and_nesting() {
        let c = split_calls("regsub(\"a,b\",'x)'),field(1, :), lower", 0).expect("ok");
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].args[0].text, "a,b");
        assert_eq!(c[0].args[1].text, "x)");
        assert_eq!(c[1].args[1].text, ":");
        assert_eq!(c[2].name, "lower");
        assert_eq!(c[2].offset, 32);
        let c = split_calls("regsub(^/(a|b)/,/)", 0).expect("ok");
        assert_eq!(c[0].args[0].text, "^/(a|b)/");
        let e = split_calls("hdr(host", 10).expect_err("unclosed");
        assert_eq!(e.offset, 13);
        let e = split_calls("path lower", 0).expect_err("space");
        assert!(e.message.contains("chained with ','"), "{}", e.message);
        let e = split_calls("path,", 0).expect_err("trailing comma");
        assert!(e.message.contains("converter name"));
        let e = split_calls("hdr(\"x)", 0).expect_err("unterminated");
        assert_eq!(e.offset, 4);
    }

    #[test]
    fn basic_fetches() {
        let mut t = txn("/a/b?x=1&y=two");
        t.req_headers
            .insert("host", "Example.com".parse().expect("hv"));
        assert_eq!(eval("path", &t), s("/a/b"));
        assert_eq!(eval("pathq", &t), s("/a/b?x=1&y=two"));
        assert_eq!(eval("url", &t), s("/a/b?x=1&y=two"));
        assert_eq!(eval("query", &t), s("x=1&y=two"));
        assert_eq!(eval("url_param(y)", &t), s("two"));
        assert_eq!(eval("urlp(z)", &t), None);
        assert_eq!(eval("base", &t), s("Example.com/a/b"));
        assert_eq!(eval("method", &t), s("GET"));
        assert_eq!(
            eval("src", &t),
            Some(Sample::Ip("10.1.2.3".parse().expect("ip")))
        );
        assert_eq!(eval("src_port", &t), Some(Sample::Int(5555)));
        assert_eq!(eval("dst_port", &t), Some(Sample::Int(8080)));
        assert_eq!(
            eval("dst", &t),
            Some(Sample::Ip("127.0.0.1".parse().expect("ip")))
        );
        assert_eq!(eval("fe_name", &t), s("test"));
        assert_eq!(eval("req.ver", &t), s("1.1"));
        assert_eq!(eval("http_version", &t), s("1.1"));
        assert_eq!(eval("int(-7)", &t), Some(Sample::Int(-7)));
        assert_eq!(eval("str('a b')", &t), s("a b"));
        assert_eq!(eval("always_true", &t), Some(Sample::Bool(true)));
        assert_eq!(eval("always_false", &t), Some(Sample::Bool(false)));
        assert!(matches!(eval("date", &t), Some(Sample::Int(n)) if n > 1_600_000_000));
        assert_eq!(eval("query", &txn("/")), None);
    }

    #[test]
    fn header_fetches() {
        let mut t = txn("/");
        t.req_headers.append("x-list", "a, b".parse().expect("hv"));
        t.req_headers
            .append("x-list", "\"c,d\", e".parse().expect("hv"));
        t.req_headers.append("x-empty", "".parse().expect("hv"));
        t.req_headers
            .append("x-ip", "192.0.2.7:443".parse().expect("hv"));
        t.req_headers
            .append("cookie", "a=1; sid=abc".parse().expect("hv"));
        t.req_headers
            .append("cookie", "sid=last".parse().expect("hv"));
        assert_eq!(eval("hdr(x-list)", &t), s("e"));
        assert_eq!(eval("hdr(X-List,1)", &t), s("a"));
        assert_eq!(eval("hdr(x-list,3)", &t), s("\"c,d\""));
        assert_eq!(eval("hdr(x-list,-2)", &t), s("\"c,d\""));
        assert_eq!(eval("hdr(x-list,5)", &t), None);
        assert_eq!(eval("req.hdr(x-list,2)", &t), s("b"));
        assert_eq!(eval("req.fhdr(x-list)", &t), s("\"c,d\", e"));
        assert_eq!(eval("req.fhdr(x-list,1)", &t), s("a, b"));
        assert_eq!(eval("hdr(x-empty)", &t), s(""));
        assert_eq!(eval("hdr(x-missing)", &t), None);
        assert_eq!(eval("hdr_cnt(x-list)", &t), Some(Sample::Int(4)));
        assert_eq!(eval("hdr_cnt(x-missing)", &t), Some(Sample::Int(0)));
        // No name: every comma-separated value of every header, as HAProxy counts.
        assert_eq!(eval("hdr_cnt", &t), Some(Sample::Int(8)));
        assert_eq!(eval("req.fhdr_cnt(x-list)", &t), Some(Sample::Int(2)));
        assert_eq!(eval("req.fhdr_cnt", &t), Some(Sample::Int(6)));
        // As a sample (not an ACL), no occurrence or 0 is the last value.
        assert_eq!(eval("hdr(x-list,0)", &t), s("e"));
        assert_eq!(eval("fhdr(x-list,0)", &t), s("\"c,d\", e"));
        assert_eq!(
            eval("hdr_ip(x-ip)", &t),
            Some(Sample::Ip("192.0.2.7".parse().expect("ip")))
        );
        assert_eq!(eval("cook(sid)", &t), s("last"));
        assert_eq!(eval("req.cook(a)", &t), s("1"));
        assert_eq!(eval("cook(none)", &t), None);

        t.phase = Phase::Response;
        t.resp_headers
            .append("set-cookie", "sid=new; Path=/".parse().expect("hv"));
        t.resp_headers.append("server", "x".parse().expect("hv"));
        t.status = http::StatusCode::NOT_FOUND;
        assert_eq!(eval_in("res.cook(sid)", &t, Phase::Response), s("new"));
        assert_eq!(eval_in("res.hdr(server)", &t, Phase::Response), s("x"));
        assert_eq!(eval_in("shdr(server)", &t, Phase::Response), s("x"));
        // `hdr` follows the phase: now the response headers.
        assert_eq!(eval_in("hdr(server)", &t, Phase::Response), s("x"));
        assert_eq!(eval_in("hdr(x-list)", &t, Phase::Response), None);
        assert_eq!(
            eval_in("status", &t, Phase::Response),
            Some(Sample::Int(404))
        );
    }

    #[test]
    fn var_and_backend_fetches() {
        let mut t = txn("/");
        t.set_var(VarScope::Txn, "n", Sample::Int(3));
        t.set_var(VarScope::Sess, "s", Sample::Str("sv".into()));
        // proc.* is process-wide: use a name no other test touches.
        t.set_var(VarScope::Proc, "fetch_test_p", Sample::Bool(true));
        assert_eq!(eval("var(txn.n)", &t), Some(Sample::Int(3)));
        assert_eq!(eval("var(sess.s)", &t), s("sv"));
        assert_eq!(eval("var(proc.fetch_test_p)", &t), Some(Sample::Bool(true)));
        assert_eq!(eval("var(txn.missing)", &t), None);
        assert_eq!(eval("var(txn.missing,dflt)", &t), s("dflt"));
        assert_eq!(eval("be_name", &t), None);
        t.backend = Some(BackendChoice::Index(0));
        assert_eq!(eval("be_name", &t), s("api"));
        t.backend = Some(BackendChoice::Name("dyn".into()));
        assert_eq!(eval("be_name", &t), s("dyn"));
    }

    #[test]
    fn converters() {
        let mut t = txn("/Some/Path.PNG?q=a%20b+c");
        t.set_var(VarScope::Txn, "three", Sample::Int(3));
        assert_eq!(eval("path,lower", &t), s("/some/path.png"));
        assert_eq!(eval("path,upper", &t), s("/SOME/PATH.PNG"));
        assert_eq!(eval("path,length", &t), Some(Sample::Int(14)));
        assert_eq!(eval("path,len", &t), Some(Sample::Int(14)));
        assert_eq!(eval("str(hello),base64", &t), s("aGVsbG8="));
        assert_eq!(eval("str(hi),base64", &t), s("aGk="));
        assert_eq!(eval("str(abc),base64", &t), s("YWJj"));
        assert_eq!(eval("str(''),base64", &t), s(""));
        assert_eq!(eval("str(\"\n\"),hex", &t), s("0A"));
        assert_eq!(eval("str(Az),hex", &t), s("417A"));
        assert_eq!(eval("path,field(2,/)", &t), s("Some"));
        assert_eq!(eval("path,field(-1,/.)", &t), s("PNG"));
        assert_eq!(eval("path,field(9,/)", &t), None);
        assert_eq!(eval("str(f1_f2_f3__f5),field(2,_,2)", &t), s("f2_f3"));
        assert_eq!(eval("str(f1_f2_f3__f5),field(2,_,0)", &t), s("f2_f3__f5"));
        assert_eq!(eval("str(f1_f2_f3__f5),field(-2,_,3)", &t), s("f2_f3_"));
        assert_eq!(eval("str(f1_f2_f3__f5),word(-2,_,3)", &t), s("f1_f2_f3"));
        assert_eq!(eval("str(f1_f2_f3__f5),word(4,_)", &t), s("f5"));
        assert_eq!(eval("str(//a//b),word(1,/)", &t), s("a"));
        // Found by tests/fuzz_parsers.rs (HAProxy's sample.c as the model): a
        // count beyond the last word takes the rest of the string, as HAProxy does.
        assert_eq!(eval("str(_é),word(-1,_,2)", &t), s("_é"));
        assert_eq!(eval("str(a_b__),word(1,_,3)", &t), s("a_b__"));
        assert_eq!(eval("str(a_b__),word(1,_,2)", &t), s("a_b"));
        assert_eq!(eval("str(__a_b),word(-1,_,9)", &t), s("__a_b"));
        assert_eq!(eval("str(a_b),field(1,_,3)", &t), s("a_b"));
        assert_eq!(eval("path,regsub(/,_)", &t), s("_Some/Path.PNG"));
        assert_eq!(eval("path,regsub(/,_,g)", &t), s("_Some_Path.PNG"));
        assert_eq!(
            eval("path,regsub(\"^/(\\w+)/(.*)$\",\"\\2-\\1$\")", &t),
            s("Path.PNG-Some$")
        );
        assert_eq!(eval("path,regsub(png,jpg,i)", &t), s("/Some/Path.jpg"));
        assert_eq!(eval("path,regsub(zzz,y)", &t), s("/Some/Path.PNG"));
        assert_eq!(eval("int(0),bool", &t), Some(Sample::Bool(false)));
        assert_eq!(eval("int(5),bool", &t), Some(Sample::Bool(true)));
        assert_eq!(eval("str(x),bool", &t), None);
        assert_eq!(eval("int(5),add(2)", &t), Some(Sample::Int(7)));
        assert_eq!(eval("int(5),sub(7)", &t), Some(Sample::Int(-2)));
        assert_eq!(eval("int(5),mul(txn.three)", &t), Some(Sample::Int(15)));
        assert_eq!(eval("int(7),div(2)", &t), Some(Sample::Int(3)));
        assert_eq!(eval("int(7),mod(4)", &t), Some(Sample::Int(3)));
        assert_eq!(eval("int(7),div(txn.missing)", &t), None);
        assert_eq!(eval("str(12),add(1)", &t), Some(Sample::Int(13)));
        assert_eq!(
            eval("int(9223372036854775807),add(1)", &t),
            Some(Sample::Int(i64::MAX))
        );
        assert_eq!(
            eval("int(-9223372036854775808),div(-1)", &t),
            Some(Sample::Int(i64::MAX))
        );
        t.set_var(VarScope::Txn, "zero", Sample::Int(0));
        assert_eq!(eval("int(7),div(txn.zero)", &t), None);
        assert_eq!(eval("int(7),mod(txn.zero)", &t), None);
        assert_eq!(eval(r#"str('a"b\c'),json"#, &t), s(r#"a\"b\\c"#));
        assert_eq!(eval("str(\"é\t\"),json(ascii)", &t), s("\\u00e9\\t"));
        assert_eq!(eval("str(é),json", &t), s("é"));
        assert_eq!(eval("query,url_dec", &t), s("q=a b+c"));
        assert_eq!(eval("query,url_dec(1)", &t), s("q=a b c"));
        assert_eq!(eval("str(/a?b+c),url_dec", &t), s("/a?b c"));
        assert_eq!(eval("str(%zz),url_dec", &t), None);
        assert_eq!(
            eval("src,ipmask(24)", &t),
            Some(Sample::Ip("10.1.2.0".parse().expect("ip")))
        );
        assert_eq!(
            eval("src,ipmask(255.0.0.0)", &t),
            Some(Sample::Ip("10.0.0.0".parse().expect("ip")))
        );
        assert_eq!(eval("src_port,lower", &t), s("5555"));
        assert_eq!(eval("src,length", &t), Some(Sample::Int(8)));
    }

    /// Pins the encoders' and decoders' edge cases (HAProxy semantics) so a
    /// swap of their implementation cannot change what rules see.
    #[test]
    fn encoding_edge_cases() {
        let t = txn("/");
        // base64: standard alphabet (`+`, `/`), always padded; binary input round-trips.
        for (expr, want) in [
            ("str(a),base64", "YQ=="),
            ("str(ab),base64", "YWI="),
            ("str(+/8=),b64dec,base64", "+/8="),
            ("str(//79),b64dec,base64", "//79"),
            ("str(YQ),b64dec,base64", "YQ=="),
        ] {
            assert_eq!(eval(expr, &t), s(want), "{expr}");
        }
        // url_dec: `+` is a space only in forms or after a literal `?` (an
        // encoded `%3F` does not start the query); `%2B` stays `+`; any bad or
        // truncated escape fails the converter; invalid UTF-8 is replaced.
        for (expr, want) in [
            ("str(%41%2f%2F),url_dec", Some("A//")),
            ("str(a+b),url_dec", Some("a+b")),
            ("str(a+b),url_dec(1)", Some("a b")),
            ("str(a+b),url_dec(0)", Some("a+b")),
            ("str(%3F+x),url_dec", Some("?+x")),
            ("str(a?b?c+d),url_dec", Some("a?b?c d")),
            ("str(%2B+),url_dec(1)", Some("+ ")),
            ("str(%C3%A9),url_dec", Some("é")),
            ("str(%FFa),url_dec", Some("\u{FFFD}a")),
            ("str(a%00b),url_dec", Some("a\0b")),
            ("str(%),url_dec", None),
            ("str(a%4),url_dec", None),
            ("str(%g0),url_dec", None),
            ("str(%+1),url_dec", None),
            ("str(%-1),url_dec", None),
        ] {
            assert_eq!(eval(expr, &t), want.and_then(s), "{expr}");
        }
        // crc32: IEEE (zlib), optionally through HAProxy's full avalanche.
        for (expr, want) in [
            ("str(''),crc32", 0),
            ("str(a),crc32", 0xE8B7_BE43),
            ("str(123456789),crc32", 0xCBF4_3926),
            ("str(/wA=),b64dec,crc32", 0xD2FD_EF8D),
            ("str(''),crc32(1)", 1_800_329_511),
            ("str(123456789),crc32(1)", 3_277_901_182),
        ] {
            assert_eq!(eval(expr, &t), Some(Sample::Int(want)), "{expr}");
        }
    }

    #[test]
    fn expression_errors() {
        let e = err("pth", Phase::Request);
        assert_eq!(
            e.message,
            "unknown fetch \"pth\" in expression; did you mean \"path\"?"
        );
        let e = err("path,lowr", Phase::Request);
        assert_eq!(e.offset, 5);
        assert!(
            e.message.contains("did you mean \"lower\""),
            "{}",
            e.message
        );
        let e = err("path,src", Phase::Request);
        assert!(e.message.contains("it is a fetch"), "{}", e.message);
        let e = err("hdr", Phase::Request);
        assert!(
            e.message
                .contains("takes 1 to 2 arguments, got 0; usage: hdr(<name>[,<occ>])"),
            "{}",
            e.message
        );
        let e = err("path(1)", Phase::Request);
        assert!(e.message.contains("takes no arguments"), "{}", e.message);
        let e = err("hdr(x,99999999999)", Phase::Request);
        assert_eq!(e.offset, 6);
        assert!(
            e.message.contains("occurrence out of range"),
            "{}",
            e.message
        );
        let e = err("hdr(bad name)", Phase::Request);
        assert!(e.message.contains("invalid header name"), "{}", e.message);
        let e = err("path,regsub([,x)", Phase::Request);
        assert_eq!(e.offset, 12);
        assert!(
            e.message.starts_with("invalid regex \"[\""),
            "{}",
            e.message
        );
        let e = err("path,field(0,/)", Phase::Request);
        assert!(e.message.contains("starts at 1"), "{}", e.message);
        let e = err("int(1),div(0)", Phase::Request);
        assert!(e.message.contains("division by zero"));
        let e = err("int(1),add(x)", Phase::Request);
        assert!(e.message.contains("integer or a variable"), "{}", e.message);
        let e = err("var(foo.x)", Phase::Request);
        assert!(
            e.message.contains("unknown variable scope"),
            "{}",
            e.message
        );
        let e = err("status", Phase::Request);
        assert!(e.message.contains("does not exist yet"), "{}", e.message);
        let e = err("req.hdr(host)", Phase::Response);
        assert!(
            e.message.contains("gone when http_response rules run"),
            "{}",
            e.message
        );
        let e = err("var(res.x)", Phase::Request);
        assert!(
            e.message.contains("only exists in http_response"),
            "{}",
            e.message
        );
        let e = err("int(x)", Phase::Request);
        assert!(e.message.contains("must be an integer"), "{}", e.message);
        let e = err("path,json(xx)", Phase::Request);
        assert!(e.message.contains("unknown json mode"), "{}", e.message);
    }

    #[test]
    fn value_text_and_conversions() {
        let v = Value::Int(-42);
        assert_eq!(v.with_text(str::to_string), "-42");
        let v = Value::Ip("2001:db8::1".parse().expect("ip"));
        let mut out = String::new();
        v.write_to(&mut out);
        assert_eq!(out, "2001:db8::1");
        assert_eq!(Value::Str(" 12 ".into()).to_int(), Some(12));
        assert!(!Value::Str("".into()).to_bool());
        assert_eq!(
            Value::Str("[::1]:80".into()).to_ip(),
            Some("::1".parse().expect("ip"))
        );
        assert_eq!(
            Value::Bin(Cow::Borrowed(&[0xff, b'a'])).into_text(),
            "\u{fffd}a"
        );
        assert_eq!(haproxy_subst("\\1$x\\"), "${1}$$x\\");
    }
}
