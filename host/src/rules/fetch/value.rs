//! The value type: [`Value`] (a sample during evaluation), its [`Kind`], and conversions
//! to and from stored samples, integers, addresses and text.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use crate::txn::Sample;

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
pub(super) fn parse_ip_text(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}
