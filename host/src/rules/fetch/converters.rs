//! The converter implementations (`lower`, `field`, `regsub`, `url_dec`, ...) and the
//! [`CONVERTERS`] registry.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use regex::Regex;

use super::expr::{arg_err, arg_int, arg_regex};
use super::{Call, ConvDef, Converter, Kind, Value};
use crate::rules::{Env, ParseError, parse_var_name};
use crate::txn::{Txn, VarScope};

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
            v.with_bytes(crate::rules::crypto::base64_encode),
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
pub(super) fn haproxy_subst(s: &str) -> String {
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

/// `http_date([offset[,unit]])`: an integer date (seconds, or `ms`/`us`
/// since the epoch) as an HTTP date, `Sun, 06 Dec 2026 00:59:33 GMT`, as
/// HAProxy's `sample_conv_http_date` writes it: the offset is added first,
/// a sub-second unit adds `.<fraction>` before `GMT`, and the date is masked
/// to 55 bits so that huge numbers cannot go negative.
#[derive(Debug)]
struct HttpDate {
    offset: i64,
    /// 1 (seconds), 1000 (`ms`) or 1_000_000 (`us`).
    per_sec: i64,
}

impl Converter for HttpDate {
    fn convert<'t>(&'t self, v: Value<'t>, _: &'t Txn) -> Option<Value<'t>> {
        let n = match v {
            Value::Int(i) => i,
            Value::Bool(b) => i64::from(b),
            // A string input is cast to an integer, as HAProxy casts str to sint.
            other => other.into_text().trim().parse::<i64>().ok()?,
        };
        let n = n.wrapping_add(self.offset);
        let (secs, frac) = (n / self.per_sec, n % self.per_sec);
        let secs = secs & 0x007f_ffff_ffff_ffff;
        Some(Value::Str(Cow::Owned(http_date(
            secs,
            (self.per_sec != 1).then_some(frac),
        ))))
    }
}

/// `secs` since the epoch (non-negative) as `Www, DD Mon YYYY HH:MM:SS[.frac] GMT`.
pub(crate) fn http_date(secs: i64, frac: Option<i64>) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a Gregorian date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let wday = DAYS[days.rem_euclid(7) as usize];
    let mon = MONTHS[(month - 1) as usize];
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    match frac {
        Some(f) => format!("{wday}, {day:02} {mon} {year:04} {h:02}:{m:02}:{s:02}.{f} GMT"),
        None => format!("{wday}, {day:02} {mon} {year:04} {h:02}:{m:02}:{s:02} GMT"),
    }
}

fn http_date_conv(c: &Call<'_>) -> Result<Box<dyn Converter>, ParseError> {
    let offset = match c.args.first() {
        Some(a) if !a.text.is_empty() => arg_int(a, "offset")?,
        _ => 0,
    };
    let per_sec = match c.args.get(1).map(|a| (a, a.text.as_str())) {
        None | Some((_, "s")) => 1,
        Some((_, "ms")) => 1000,
        Some((_, "us")) => 1_000_000,
        Some((a, _)) => return Err(arg_err(a, "unit must be s, ms or us")),
    };
    Ok(Box::new(HttpDate { offset, per_sec }))
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
    ConvDef { name: "http_date", usage: "http_date([<offset>[,<unit s/ms/us>]])", args: (0, 2), out: Some(Kind::Str), build: |c, _| http_date_conv(c) },
    ConvDef { name: "url_dec", usage: "url_dec([<in_form>])", args: (0, 1), out: Some(Kind::Str), build: |c, _| url_dec_conv(c) },
    ConvDef { name: "ipmask", usage: "ipmask(<v4 mask>[,<v6 mask>])", args: (1, 2), out: Some(Kind::Ip), build: |c, _| ipmask_conv(c) },
    ConvDef { name: "sha2", usage: "sha2([<bits>])", args: (0, 1), out: Some(Kind::Bin), build: crate::rules::crypto::sha2_conv },
    ConvDef { name: "hmac", usage: "hmac(<algorithm>,<base64 key or variable>)", args: (2, 2), out: Some(Kind::Bin), build: crate::rules::crypto::hmac_conv },
    ConvDef { name: "b64dec", usage: "b64dec", args: (0, 0), out: Some(Kind::Bin), build: crate::rules::crypto::b64dec_conv },
    ConvDef { name: "crc32", usage: "crc32([<avalanche>])", args: (0, 1), out: Some(Kind::Int), build: crate::rules::crypto::crc32_conv },
    ConvDef { name: "lua.*", usage: "lua.<converter>([<args>])", args: (0, 16), out: Some(Kind::Any), build: crate::rules::ext::build_converter },
];
