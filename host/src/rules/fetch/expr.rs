//! The expression parser: [`Expr`] (a fetch then converters), parsing `fetch(args),conv(args)...`
//! into one, and the helpers that validate call arguments.

use http::HeaderName;
use regex::{Regex, RegexBuilder};

use super::{
    Arg, Avail, CONVERTERS, Call, Converter, Fetch, FetchDef, Kind, Value, fetch_names,
    find_converter, find_fetch,
};
use crate::rules::{Env, ParseError, did_you_mean, suggest};
use crate::txn::{Phase, Txn};

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

pub(super) fn arg_err(a: &Arg, msg: impl Into<String>) -> ParseError {
    ParseError::new(a.offset, msg)
}

pub(super) fn arg_int(a: &Arg, what: &str) -> Result<i64, ParseError> {
    a.text
        .trim()
        .parse()
        .map_err(|_| arg_err(a, format!("{what} must be an integer, got \"{}\"", a.text)))
}

pub(super) fn arg_header(a: &Arg) -> Result<HeaderName, ParseError> {
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

pub(super) fn arg_regex(a: &Arg, icase: bool) -> Result<Regex, ParseError> {
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
pub(super) fn arg_occ(a: Option<&Arg>) -> Result<i32, ParseError> {
    let Some(a) = a else { return Ok(0) };
    i32::try_from(arg_int(a, "occurrence")?).map_err(|_| {
        arg_err(
            a,
            "occurrence out of range: 1 is the first value, -1 the last, 0 all of them",
        )
    })
}
