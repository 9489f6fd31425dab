//! Match methods (`-m`) and the matchers that test a fetched value: integer ranges and
//! operators, IP networks, string and word matching, regexes.

use std::net::IpAddr;

use regex::Regex;

use crate::rules::fetch::Value;

/// A `-m` match method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchMethod {
    Found,
    Bool,
    Int,
    Ip,
    Str,
    Beg,
    End,
    Sub,
    Reg,
    Len,
    Dir,
    Dom,
}

impl MatchMethod {
    pub(super) const ALL: [(&'static str, MatchMethod); 12] = [
        ("found", MatchMethod::Found),
        ("bool", MatchMethod::Bool),
        ("int", MatchMethod::Int),
        ("ip", MatchMethod::Ip),
        ("str", MatchMethod::Str),
        ("beg", MatchMethod::Beg),
        ("end", MatchMethod::End),
        ("sub", MatchMethod::Sub),
        ("reg", MatchMethod::Reg),
        ("len", MatchMethod::Len),
        ("dir", MatchMethod::Dir),
        ("dom", MatchMethod::Dom),
    ];

    /// The method called `name` (as written after `-m`).
    pub fn parse(name: &str) -> Option<MatchMethod> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|&(_, m)| m)
    }

    /// The method's name.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("str", |(n, _)| n)
    }

    /// The method implied by an ACL keyword suffix (`path_beg` → beg).
    pub(super) fn from_suffix(s: &str) -> Option<MatchMethod> {
        match s {
            "beg" | "end" | "sub" | "reg" | "dir" | "dom" | "len" => MatchMethod::parse(s),
            _ => None,
        }
    }

    pub(super) fn is_textual(self) -> bool {
        matches!(
            self,
            MatchMethod::Str
                | MatchMethod::Beg
                | MatchMethod::End
                | MatchMethod::Sub
                | MatchMethod::Reg
                | MatchMethod::Dir
                | MatchMethod::Dom
        )
    }
}

/// Integer comparison operators (`status ge 500`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IntOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl IntOp {
    pub(super) fn parse(s: &str) -> Option<IntOp> {
        Some(match s {
            "eq" => IntOp::Eq,
            "ne" => IntOp::Ne,
            "gt" => IntOp::Gt,
            "ge" => IntOp::Ge,
            "lt" => IntOp::Lt,
            "le" => IntOp::Le,
            _ => return None,
        })
    }

    fn test(self, a: i64, b: i64) -> bool {
        match self {
            IntOp::Eq => a == b,
            IntOp::Ne => a != b,
            IntOp::Gt => a > b,
            IntOp::Ge => a >= b,
            IntOp::Lt => a < b,
            IntOp::Le => a <= b,
        }
    }
}

/// Integer patterns: one operator comparison, or ranges (`404`, `200:299`, `500:`).
#[derive(Debug)]
pub(super) enum IntPats {
    Op(IntOp, i64),
    Ranges(Box<[(i64, i64)]>),
}

impl IntPats {
    fn test(&self, n: i64) -> bool {
        match self {
            IntPats::Op(op, b) => op.test(n, *b),
            IntPats::Ranges(r) => r.iter().any(|&(lo, hi)| lo <= n && n <= hi),
        }
    }
}

/// Parses `N`, `N:M`, `N:` or `:M`.
pub(crate) fn parse_int_range(s: &str) -> Option<(i64, i64)> {
    match s.split_once(':') {
        None => s.parse().ok().map(|n| (n, n)),
        Some((a, b)) => {
            let lo = if a.is_empty() {
                i64::MIN
            } else {
                a.parse().ok()?
            };
            let hi = if b.is_empty() {
                i64::MAX
            } else {
                b.parse().ok()?
            };
            (!(a.is_empty() && b.is_empty()) && lo <= hi).then_some((lo, hi))
        }
    }
}

/// An IP network; addresses are compared as IPv6, IPv4 mapped into `::ffff:0:0/96`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpNet {
    pub(crate) addr: u128,
    pub(crate) mask: u128,
}

impl IpNet {
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        ip_bits(ip) & self.mask == self.addr
    }
}

pub(crate) fn ip_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Parses `10.0.0.1`, `10.0.0.0/8`, `10.0.0.0/255.0.0.0` or `2001:db8::/32`.
pub(crate) fn parse_net(s: &str) -> Option<IpNet> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p)),
        None => (s.parse::<IpAddr>().ok()?, None),
    };
    let (max, extra) = if addr.is_ipv4() { (32, 96) } else { (128, 0) };
    let bits: u32 = match prefix {
        None => max,
        Some(p) if addr.is_ipv4() && p.contains('.') => {
            let m = u32::from(p.parse::<std::net::Ipv4Addr>().ok()?);
            // Only contiguous masks (ones then zeros) are prefixes.
            if m.leading_ones() + m.trailing_zeros() != 32 {
                return None;
            }
            m.leading_ones()
        }
        Some(p) => p.parse().ok().filter(|&n| n <= max)?,
    };
    let total = bits + extra;
    let mask = if total == 0 {
        0
    } else {
        u128::MAX << (128 - total)
    };
    Some(IpNet {
        addr: ip_bits(addr) & mask,
        mask,
    })
}

/// How a textual pattern is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StrHow {
    Exact,
    Beg,
    End,
    Sub,
    Dir,
    Dom,
}

pub(crate) const DIR_DELIMS: &[u8] = b"/?";
pub(crate) const DOM_DELIMS: &[u8] = b"/?.:";

fn bytes_eq(a: &[u8], b: &[u8], icase: bool) -> bool {
    if icase {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

pub(crate) fn find_from(hay: &[u8], needle: &[u8], from: usize, icase: bool) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| {
        hay.get(i..i + needle.len())
            .is_some_and(|w| bytes_eq(w, needle, icase))
    })
}

/// HAProxy's word match: `p` occurs in `s` bounded by delimiters or the ends.
pub(crate) fn match_word(s: &[u8], p: &[u8], delims: &[u8], icase: bool) -> bool {
    let is_delim = |c: Option<&u8>| c.is_none_or(|c| delims.contains(c));
    let mut from = 0;
    while let Some(i) = find_from(s, p, from, icase) {
        let before = if i == 0 { None } else { s.get(i - 1) };
        if is_delim(before) && is_delim(s.get(i + p.len())) {
            return true;
        }
        from = i + 1;
    }
    false
}

fn str_test(how: StrHow, icase: bool, s: &str, p: &str) -> bool {
    let (sb, pb) = (s.as_bytes(), p.as_bytes());
    match how {
        StrHow::Exact => bytes_eq(sb, pb, icase),
        StrHow::Beg => sb.get(..pb.len()).is_some_and(|h| bytes_eq(h, pb, icase)),
        StrHow::End => sb
            .len()
            .checked_sub(pb.len())
            .and_then(|start| sb.get(start..))
            .is_some_and(|t| bytes_eq(t, pb, icase)),
        StrHow::Sub if !icase => s.contains(p),
        StrHow::Sub => find_from(sb, pb, 0, true).is_some(),
        StrHow::Dir => match_word(sb, pb, DIR_DELIMS, icase),
        StrHow::Dom => match_word(sb, pb, DOM_DELIMS, icase),
    }
}

/// A compiled term's test on the fetched value.
#[derive(Debug)]
pub(super) enum Matcher {
    /// No method and no value: the value exists and, if boolean or integer, is true.
    Truthy,
    Found,
    Bool,
    Int(IntPats),
    Len(IntPats),
    Ip(Box<[IpNet]>),
    Str {
        how: StrHow,
        icase: bool,
        pats: Box<[Box<str>]>,
    },
    Reg(Box<[Regex]>),
    /// For values whose type is only known at run time (variables): compare by that type.
    Auto {
        icase: bool,
        strs: Box<[Box<str>]>,
        ints: Option<IntPats>,
        ips: Option<Box<[IpNet]>>,
    },
}

impl Matcher {
    pub(super) fn test(&self, v: Option<&Value<'_>>) -> bool {
        let Some(v) = v else {
            return false;
        };
        match self {
            Matcher::Truthy => match v {
                Value::Bool(b) => *b,
                Value::Int(i) => *i != 0,
                _ => true,
            },
            Matcher::Found => true,
            Matcher::Bool => v.to_bool(),
            Matcher::Int(p) => v.to_int().is_some_and(|n| p.test(n)),
            Matcher::Len(p) => {
                let n = v.with_bytes(<[u8]>::len);
                p.test(i64::try_from(n).unwrap_or(i64::MAX))
            }
            Matcher::Ip(nets) => v
                .to_ip()
                .is_some_and(|ip| nets.iter().any(|n| n.contains(ip))),
            Matcher::Str { how, icase, pats } => {
                v.with_text(|s| pats.iter().any(|p| str_test(*how, *icase, s, p)))
            }
            Matcher::Reg(res) => v.with_text(|s| res.iter().any(|r| r.is_match(s))),
            Matcher::Auto {
                icase,
                strs,
                ints,
                ips,
            } => {
                let text =
                    || v.with_text(|s| strs.iter().any(|p| str_test(StrHow::Exact, *icase, s, p)));
                match (v, ints, ips) {
                    (Value::Int(_) | Value::Bool(_), Some(p), _) => {
                        v.to_int().is_some_and(|n| p.test(n))
                    }
                    (Value::Ip(ip), _, Some(nets)) => nets.iter().any(|n| n.contains(*ip)),
                    _ => text(),
                }
            }
        }
    }
}
