//! Conditions: HAProxy ACL terms written inline and joined with and/or/not.
//!
//! ```text
//! expr    := and_expr (("or" | "||") and_expr)*
//! and_expr:= unary (("and" | "&&") unary)*
//! unary   := ("!" | "not")? primary
//! primary := "(" expr ")" | "{" term "}" | term
//! term    := fetch[,conv(args)...] [-i] [-m method] [--] [operator] [values...]
//! ```
//!
//! A term takes every following word as a value until `and`, `or`, `&&`,
//! `||`, `)`, `}` or the end, so two terms must be joined explicitly; a value
//! that looks like a fetch is reported as a missing operator instead of being
//! silently compared as text. Several values are alternatives (any match).

use std::net::IpAddr;

use regex::Regex;

use super::fetch::{
    self, Call, Expr, FetchDef, Kind, Value, build_expr, compile_regex, split_calls,
};
use super::{Env, ParseError, did_you_mean, suggest};
use crate::txn::Txn;

/// A compiled condition (`if = ...`, or `unless = ...` when negated).
#[derive(Debug)]
pub struct Condition {
    root: Node,
    negate: bool,
}

impl Condition {
    /// Parses and compiles `text`; error offsets are byte offsets into `text`.
    pub fn parse(text: &str, env: &Env<'_>) -> Result<Condition, ParseError> {
        if text.trim().is_empty() {
            return Err(ParseError::new(
                0,
                "empty condition; write e.g. \"path_beg /api\" or remove the key",
            ));
        }
        let mut p = Parser {
            lx: Lexer::new(text),
            env,
            depth: 0,
        };
        let root = p.expr()?;
        let t = p.lx.next()?;
        match t.tok {
            Tok::End => Ok(Condition {
                root,
                negate: false,
            }),
            Tok::RParen => Err(ParseError::new(t.start, "unmatched ')'")),
            Tok::RBrace => Err(ParseError::new(t.start, "unmatched '}'")),
            other => Err(ParseError::new(
                t.start,
                format!("unexpected {}", describe(&other)),
            )),
        }
    }

    /// The same condition inverted (for `unless`).
    pub fn negated(mut self) -> Condition {
        self.negate = !self.negate;
        self
    }

    /// Whether the condition holds for `txn`.
    pub fn holds(&self, txn: &Txn) -> bool {
        self.root.eval(txn) != self.negate
    }
}

#[derive(Debug)]
enum Node {
    Term(Box<Term>),
    Not(Box<Node>),
    And(Box<[Node]>),
    Or(Box<[Node]>),
}

impl Node {
    fn eval(&self, txn: &Txn) -> bool {
        match self {
            // Every value of a multi-valued fetch is tested (HAProxy ACL semantics).
            Node::Term(t) => t.expr.any(txn, |v| t.matcher.test(Some(v))),
            Node::Not(n) => !n.eval(txn),
            Node::And(v) => v.iter().all(|n| n.eval(txn)),
            Node::Or(v) => v.iter().any(|n| n.eval(txn)),
        }
    }
}

#[derive(Debug)]
struct Term {
    expr: Expr,
    matcher: Matcher,
}

// ---------------------------------------------------------------------------
// Match methods
// ---------------------------------------------------------------------------

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
    const ALL: [(&'static str, MatchMethod); 12] = [
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
    fn from_suffix(s: &str) -> Option<MatchMethod> {
        match s {
            "beg" | "end" | "sub" | "reg" | "dir" | "dom" | "len" => MatchMethod::parse(s),
            _ => None,
        }
    }

    fn is_textual(self) -> bool {
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
enum IntOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl IntOp {
    fn parse(s: &str) -> Option<IntOp> {
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
enum IntPats {
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
enum StrHow {
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
enum Matcher {
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
    fn test(&self, v: Option<&Value<'_>>) -> bool {
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

// ---------------------------------------------------------------------------
// Lexer
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    LBrace,
    RBrace,
    Not,
    And,
    Or,
    Word { text: String, quoted: bool },
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
        Tok::LBrace => "'{'".into(),
        Tok::RBrace => "'}'".into(),
        Tok::Not => "'!'".into(),
        Tok::And => "'and'".into(),
        Tok::Or => "'or'".into(),
        Tok::Word { text, .. } => format!("\"{text}\""),
        Tok::End => "the end of the condition".into(),
    }
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    peeked: Option<Token>,
}

impl<'s> Lexer<'s> {
    fn new(src: &'s str) -> Self {
        Lexer {
            src,
            pos: 0,
            peeked: None,
        }
    }

    fn peek(&mut self) -> Result<&Token, ParseError> {
        let t = match self.peeked.take() {
            Some(t) => t,
            None => self.lex()?,
        };
        Ok(self.peeked.insert(t))
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    fn lex(&mut self) -> Result<Token, ParseError> {
        let b = self.src.as_bytes();
        while b.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let mut token = |tok: Tok, len: usize| {
            self.pos = start + len;
            Ok(Token { tok, start })
        };
        let Some(&c) = b.get(start) else {
            return token(Tok::End, 0);
        };
        match c {
            b'(' => return token(Tok::LParen, 1),
            b')' => return token(Tok::RParen, 1),
            b'{' => return token(Tok::LBrace, 1),
            b'}' => return token(Tok::RBrace, 1),
            b'!' => return token(Tok::Not, 1),
            b'&' if b.get(start + 1) == Some(&b'&') => return token(Tok::And, 2),
            b'|' if b.get(start + 1) == Some(&b'|') => return token(Tok::Or, 2),
            b'"' | b'\'' => {
                let (text, end) = fetch::read_quoted(self.src, start, 0)?;
                // What may end an unquoted word may end a quoted one too (`'a b'||path`).
                let ends = |i: usize| {
                    b.get(i).is_none_or(|&n| {
                        n.is_ascii_whitespace()
                            || n == b')'
                            || n == b'}'
                            || (matches!(n, b'&' | b'|') && b.get(i + 1) == Some(&n))
                    })
                };
                if !ends(end) {
                    return Err(ParseError::new(
                        end,
                        "unexpected character after the closing quote; separate values with spaces",
                    ));
                }
                return token(Tok::Word { text, quoted: true }, end - start);
            }
            _ => {}
        }
        // An unquoted word; parentheses (fetch arguments, regex groups) may nest
        // and hold spaces or quotes, and braces may too (regex repetitions).
        let (mut i, mut depth, mut braces, mut open) = (start, 0usize, 0usize, start);
        while let Some(&c) = b.get(i) {
            match c {
                b'(' => {
                    if depth == 0 {
                        open = i;
                    }
                    depth += 1;
                }
                b')' if depth == 0 => break,
                b')' => depth -= 1,
                b'{' => braces += 1,
                b'}' if braces == 0 => break,
                b'}' => braces -= 1,
                b'"' | b'\'' if depth > 0 => {
                    i = fetch::read_quoted(self.src, i, 0)?.1;
                    continue;
                }
                b'&' | b'|' if depth == 0 && b.get(i + 1) == Some(&c) => break,
                c if depth == 0 && c.is_ascii_whitespace() => break,
                _ => {}
            }
            i += 1;
        }
        if depth > 0 {
            return Err(ParseError::new(
                open,
                "missing ')' to close this '(' (quote values that contain unbalanced parentheses)",
            ));
        }
        let text = &self.src[start..i];
        let tok = match text {
            "and" => Tok::And,
            "or" => Tok::Or,
            "not" => Tok::Not,
            _ => Tok::Word {
                text: text.to_string(),
                quoted: false,
            },
        };
        token(tok, i - start)
    }
}

// ---------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------

struct Parser<'s, 'e> {
    lx: Lexer<'s>,
    env: &'e Env<'e>,
    /// Current nesting of `(` and `!`, bounded so a silly config cannot overflow the stack.
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser<'_, '_> {
    fn expr(&mut self) -> Result<Node, ParseError> {
        let mut items = vec![self.and_expr()?];
        while self.lx.peek()?.tok == Tok::Or {
            self.lx.next()?;
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::Or(items.into_boxed_slice())
        })
    }

    fn and_expr(&mut self) -> Result<Node, ParseError> {
        let mut items = vec![self.unary()?];
        loop {
            let t = self.lx.peek()?;
            match &t.tok {
                Tok::And => {
                    self.lx.next()?;
                    items.push(self.unary()?);
                }
                Tok::Or | Tok::RParen | Tok::RBrace | Tok::End => break,
                other => {
                    return Err(ParseError::new(
                        t.start,
                        format!(
                            "expected 'and' or 'or' before {}; conditions must be joined explicitly",
                            describe(other)
                        ),
                    ));
                }
            }
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Node::And(items.into_boxed_slice())
        })
    }

    fn unary(&mut self) -> Result<Node, ParseError> {
        if self.lx.peek()?.tok == Tok::Not {
            let t = self.lx.next()?;
            self.enter(t.start)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn enter(&mut self, at: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(
                at,
                format!("condition nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(())
    }

    fn primary(&mut self) -> Result<Node, ParseError> {
        let t = self.lx.next()?;
        match t.tok {
            Tok::LParen => {
                self.enter(t.start)?;
                let n = self.expr()?;
                self.depth -= 1;
                let close = self.lx.next()?;
                if close.tok != Tok::RParen {
                    return Err(ParseError::new(
                        t.start,
                        format!(
                            "missing ')' to close this '(' (found {})",
                            describe(&close.tok)
                        ),
                    ));
                }
                Ok(n)
            }
            Tok::LBrace => {
                let first = self.lx.next()?;
                let n = match first.tok {
                    Tok::Word { quoted: false, .. } => self.term(first)?,
                    other => {
                        return Err(ParseError::new(
                            first.start,
                            format!("expected a fetch after '{{', found {}", describe(&other)),
                        ));
                    }
                };
                let close = self.lx.next()?;
                if close.tok != Tok::RBrace {
                    return Err(ParseError::new(
                        t.start,
                        format!(
                            "missing '}}' to close this '{{' (found {})",
                            describe(&close.tok)
                        ),
                    ));
                }
                Ok(n)
            }
            Tok::Word { quoted: false, .. } => self.term(t),
            Tok::Word { quoted: true, .. } => Err(ParseError::new(
                t.start,
                "expected a fetch (e.g. path or hdr(host)), found a quoted string",
            )),
            Tok::End => Err(ParseError::new(
                t.start,
                "the condition ends where a fetch was expected",
            )),
            other => Err(ParseError::new(
                t.start,
                format!(
                    "expected a fetch (e.g. path or hdr(host)), found {}",
                    describe(&other)
                ),
            )),
        }
    }

    fn term(&mut self, first: Token) -> Result<Node, ParseError> {
        let Tok::Word { text: word, .. } = &first.tok else {
            return Err(ParseError::new(first.start, "expected a fetch"));
        };
        let calls = split_calls(word, first.start)?;
        let Some((fc, convs)) = calls.split_first() else {
            return Err(ParseError::new(first.start, "expected a fetch"));
        };
        let (def, implied) = resolve_term_fetch(fc)?;
        let expr = build_expr(fc, def, convs, self.env)?;

        // Flags come first: -i, -m <method>, and -- to end them.
        let mut icase = false;
        let mut method: Option<(MatchMethod, usize)> = None;
        loop {
            let t = self.lx.peek()?;
            let flag = matches!(&t.tok, Tok::Word { text, quoted: false } if is_flag(text));
            if !flag {
                break;
            }
            let t = self.lx.next()?;
            let Tok::Word { text, .. } = &t.tok else {
                break;
            };
            match text.as_str() {
                "-i" => icase = true,
                "--" => break,
                "-m" => {
                    let m = self.lx.next()?;
                    let name = match &m.tok {
                        Tok::Word {
                            text,
                            quoted: false,
                        } => text.as_str(),
                        _ => {
                            return Err(ParseError::new(
                                t.start,
                                format!("-m needs a match method: {}", method_list()),
                            ));
                        }
                    };
                    let Some(mm) = MatchMethod::parse(name) else {
                        let hint = suggest(name, MatchMethod::ALL.iter().map(|(n, _)| *n))
                            .map(did_you_mean)
                            .unwrap_or_default();
                        return Err(ParseError::new(
                            m.start,
                            format!(
                                "unknown match method \"{name}\"{hint}; expected {}",
                                method_list()
                            ),
                        ));
                    };
                    if let Some(imp) = implied {
                        return Err(ParseError::new(
                            t.start,
                            format!(
                                "\"{}\" already matches with -m {}; write \"{} -m {}\" instead",
                                fc.name,
                                imp.as_str(),
                                def.name,
                                mm.as_str()
                            ),
                        ));
                    }
                    if method.is_some() {
                        return Err(ParseError::new(
                            t.start,
                            "-m given twice; a term has one match method",
                        ));
                    }
                    method = Some((mm, t.start));
                }
                other => {
                    return Err(ParseError::new(
                        t.start,
                        format!(
                            "unknown flag \"{other}\"; supported flags are -i (ignore case), -m <method> and -- (end of flags; use it before a value starting with '-')"
                        ),
                    ));
                }
            }
        }

        let mut values: Vec<Token> = Vec::new();
        while matches!(self.lx.peek()?.tok, Tok::Word { .. }) {
            let v = self.lx.next()?;
            if let Tok::Word {
                text,
                quoted: false,
            } = &v.tok
            {
                check_value_word(text, v.start, word)?;
            }
            values.push(v);
        }

        let method_pos = method.map_or(first.start, |(_, p)| p);
        let method = method.map(|(m, _)| m).or(implied);
        let matcher = build_matcher(expr.kind(), method, method_pos, icase, &values, word)?;
        Ok(Node::Term(Box::new(Term { expr, matcher })))
    }
}

fn method_list() -> String {
    let names: Vec<&str> = MatchMethod::ALL.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

fn is_flag(text: &str) -> bool {
    let b = text.as_bytes();
    b.first() == Some(&b'-') && b.get(1).is_some_and(|c| !c.is_ascii_digit())
}

/// Finds the fetch of a term, accepting HAProxy's ACL keywords (`path_beg` = `path -m beg`).
fn resolve_term_fetch(
    call: &Call<'_>,
) -> Result<(&'static FetchDef, Option<MatchMethod>), ParseError> {
    if let Some(def) = fetch::find_fetch(call.name) {
        return Ok((def, None));
    }
    if let Some((def, m)) = acl_keyword(call.name) {
        return Ok((def, Some(m)));
    }
    let aliases: Vec<String> = fetch::FETCHES
        .iter()
        .filter(|d| d.kind == Kind::Str && !d.name.ends_with('*'))
        .flat_map(|d| {
            ["beg", "end", "sub", "reg", "dir", "dom", "len"].map(|s| format!("{}_{s}", d.name))
        })
        .collect();
    let mut candidates: Vec<&str> = fetch::fetch_names().collect();
    candidates.extend(aliases.iter().map(String::as_str));
    Err(fetch::unknown_fetch(call, "in condition", candidates))
}

/// `<string fetch>_<method>` as an ACL keyword.
fn acl_keyword(name: &str) -> Option<(&'static FetchDef, MatchMethod)> {
    let (base, suffix) = name.rsplit_once('_')?;
    let m = MatchMethod::from_suffix(suffix)?;
    let def = fetch::find_fetch(base).filter(|d| d.kind == Kind::Str)?;
    Some((def, m))
}

/// Rejects unquoted value words that are really the next condition or a misplaced flag.
fn check_value_word(text: &str, at: usize, term: &str) -> Result<(), ParseError> {
    if matches!(text, "-i" | "-m" | "--") {
        return Err(ParseError::new(
            at,
            format!("flag {text} must come before the values (e.g. \"hdr(host) -i example.com\")"),
        ));
    }
    if matches!(text, "AND" | "OR" | "NOT" | "And" | "Or" | "Not") {
        return Err(ParseError::new(
            at,
            format!(
                "operators are lower-case: write \"{}\" (or quote \"{text}\" if it is a value)",
                text.to_ascii_lowercase()
            ),
        ));
    }
    let name_end = text.find(['(', ',']).unwrap_or(text.len());
    let name = &text[..name_end];
    let fetch_like = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && name.bytes().any(|b| b.is_ascii_alphabetic())
        && (fetch::find_fetch(name).is_some() || acl_keyword(name).is_some());
    if fetch_like {
        return Err(ParseError::new(
            at,
            format!(
                "\"{text}\" looks like another condition, but it comes where a value of \"{term}\" is expected; \
                 join conditions with 'and' or 'or' (or quote the value if it is one)"
            ),
        ));
    }
    Ok(())
}

fn word_text(t: &Token) -> &str {
    match &t.tok {
        Tok::Word { text, .. } => text,
        _ => "",
    }
}

fn int_values(values: &[Token]) -> Result<IntPats, ParseError> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let text = word_text(v);
        let r = parse_int_range(text).ok_or_else(|| {
            ParseError::new(
                v.start,
                format!(
                    "invalid integer \"{text}\"; expected a number, a range like 200:299, \
                     or an operator (eq, ne, gt, ge, lt, le) followed by a number"
                ),
            )
        })?;
        out.push(r);
    }
    Ok(IntPats::Ranges(out.into_boxed_slice()))
}

fn ip_values(values: &[Token]) -> Result<Box<[IpNet]>, ParseError> {
    values
        .iter()
        .map(|v| {
            let text = word_text(v);
            parse_net(text).ok_or_else(|| {
                ParseError::new(
                    v.start,
                    format!("invalid address \"{text}\"; expected an IP address or a CIDR network like 10.0.0.0/8"),
                )
            })
        })
        .collect()
}

fn build_matcher(
    kind: Kind,
    method: Option<MatchMethod>,
    method_pos: usize,
    icase: bool,
    values: &[Token],
    term: &str,
) -> Result<Matcher, ParseError> {
    let textual = match method {
        Some(m) => m.is_textual(),
        None => matches!(kind, Kind::Str | Kind::Bin | Kind::Any) && !values.is_empty(),
    };
    if icase && method.is_none() && values.is_empty() {
        return Err(ParseError::new(
            method_pos,
            format!("-i (ignore case) needs values to compare \"{term}\" with"),
        ));
    }
    if icase && !textual {
        let how = method.map_or_else(
            || format!("a {}", kind.as_str()),
            |m| format!("-m {}", m.as_str()),
        );
        return Err(ParseError::new(
            method_pos,
            format!(
                "-i (ignore case) only applies to text matching, but \"{term}\" is matched as {how}"
            ),
        ));
    }

    // An integer operator as the first value: `status ge 500`.
    if let Some(first) = values.first()
        && let Tok::Word {
            text,
            quoted: false,
        } = &first.tok
        && let Some(op) = IntOp::parse(text)
    {
        let int_like = match method {
            Some(MatchMethod::Int | MatchMethod::Len) => true,
            Some(_) => false,
            None => matches!(kind, Kind::Int | Kind::Bool | Kind::Any),
        };
        if !int_like {
            return Err(ParseError::new(
                first.start,
                format!(
                    "operator \"{text}\" compares integers, but \"{term}\" is matched as text; \
                     add -m int (or -m len), or quote \"{text}\" to match it as text"
                ),
            ));
        }
        let [_, v] = values else {
            return Err(ParseError::new(
                first.start,
                format!("operator \"{text}\" takes exactly one integer after it"),
            ));
        };
        let n = word_text(v).parse::<i64>().map_err(|_| {
            ParseError::new(
                v.start,
                format!(
                    "expected an integer after \"{text}\", got \"{}\"",
                    word_text(v)
                ),
            )
        })?;
        let pats = IntPats::Op(op, n);
        return Ok(if method == Some(MatchMethod::Len) {
            Matcher::Len(pats)
        } else {
            Matcher::Int(pats)
        });
    }

    let Some(method) = method else {
        if values.is_empty() {
            return Ok(Matcher::Truthy);
        }
        return Ok(match kind {
            Kind::Int | Kind::Bool => Matcher::Int(int_values(values)?),
            Kind::Ip => Matcher::Ip(ip_values(values)?),
            Kind::Str | Kind::Bin => str_matcher(StrHow::Exact, icase, values)?,
            Kind::Any => Matcher::Auto {
                icase,
                strs: values.iter().map(|v| Box::from(word_text(v))).collect(),
                ints: int_values(values).ok(),
                ips: ip_values(values).ok(),
            },
        });
    };

    match (method, values.first()) {
        (MatchMethod::Found | MatchMethod::Bool, Some(v)) => Err(ParseError::new(
            v.start,
            format!(
                "-m {} takes no value; to test another condition, join it with 'and' or 'or'",
                method.as_str()
            ),
        )),
        (MatchMethod::Found, None) => Ok(Matcher::Found),
        (MatchMethod::Bool, None) => Ok(Matcher::Bool),
        (_, None) => Err(ParseError::new(
            method_pos,
            format!(
                "\"{term}\" with -m {} needs at least one value to compare with",
                method.as_str()
            ),
        )),
        (MatchMethod::Int, _) => Ok(Matcher::Int(int_values(values)?)),
        (MatchMethod::Len, _) => Ok(Matcher::Len(int_values(values)?)),
        (MatchMethod::Ip, _) => Ok(Matcher::Ip(ip_values(values)?)),
        (MatchMethod::Reg, _) => values
            .iter()
            .map(|v| compile_regex(word_text(v), icase).map_err(|m| ParseError::new(v.start, m)))
            .collect::<Result<Box<[Regex]>, _>>()
            .map(Matcher::Reg),
        (MatchMethod::Str, _) => str_matcher(StrHow::Exact, icase, values),
        (MatchMethod::Beg, _) => str_matcher(StrHow::Beg, icase, values),
        (MatchMethod::End, _) => str_matcher(StrHow::End, icase, values),
        (MatchMethod::Sub, _) => str_matcher(StrHow::Sub, icase, values),
        (MatchMethod::Dir, _) => str_matcher(StrHow::Dir, icase, values),
        (MatchMethod::Dom, _) => str_matcher(StrHow::Dom, icase, values),
    }
}

fn str_matcher(how: StrHow, icase: bool, values: &[Token]) -> Result<Matcher, ParseError> {
    let mut pats = Vec::with_capacity(values.len());
    for v in values {
        let text = word_text(v);
        let delims = match how {
            StrHow::Dir => DIR_DELIMS,
            StrHow::Dom => DOM_DELIMS,
            _ => {
                pats.push(Box::from(text));
                continue;
            }
        };
        // Like HAProxy, delimiters at the ends of the pattern are ignored.
        let trimmed = text.trim_matches(|c: char| c.is_ascii() && delims.contains(&(c as u8)));
        if trimmed.is_empty() {
            return Err(ParseError::new(
                v.start,
                format!(
                    "\"{text}\" has nothing but delimiters, so it cannot match a {}; use -m beg (e.g. path_beg /) to match everything",
                    if how == StrHow::Dir {
                        "path segment"
                    } else {
                        "domain label"
                    }
                ),
            ));
        }
        pats.push(Box::from(trimmed));
    }
    Ok(Matcher::Str {
        how,
        icase,
        pats: pats.into_boxed_slice(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::{ctx_parts, txn};
    use crate::txn::{Phase, Sample, VarScope};

    fn check_in(cond: &str, t: &Txn, phase: Phase) -> bool {
        let (source, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            source: &source,
            backends: &backends,
            plugins: crate::lua::Plugins::empty(),
            tables: crate::stick::StickTables::none(),
        };
        let env = Env { ctx: &cx, phase };
        Condition::parse(cond, &env)
            .unwrap_or_else(|e| panic!("{cond:?} should parse: {} at {}", e.message, e.offset))
            .holds(t)
    }

    fn check(cond: &str, t: &Txn) -> bool {
        check_in(cond, t, Phase::Request)
    }

    fn err(cond: &str) -> ParseError {
        let (source, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            source: &source,
            backends: &backends,
            plugins: crate::lua::Plugins::empty(),
            tables: crate::stick::StickTables::none(),
        };
        let env = Env {
            ctx: &cx,
            phase: Phase::Request,
        };
        match Condition::parse(cond, &env) {
            Ok(c) => panic!("{cond:?} should be rejected, got {c:?}"),
            Err(e) => e,
        }
    }

    fn sample_txn() -> Txn {
        let mut t = txn("/api/v1/users?id=7");
        t.req_headers
            .insert("host", "www.Example.com:8080".parse().expect("hv"));
        t.req_headers.insert("x-debug", "".parse().expect("hv"));
        t.req_headers.insert("x-zero", "0".parse().expect("hv"));
        t.req_headers
            .insert("user-agent", "curl/8.0".parse().expect("hv"));
        t
    }

    #[test]
    fn precedence_parens_braces_and_negation() {
        let t = sample_txn();
        assert!(check("always_true or always_false and always_false", &t));
        assert!(!check("(always_true or always_false) and always_false", &t));
        assert!(check("always_false || always_true && always_true", &t));
        assert!(!check("!always_true", &t));
        assert!(check("not always_false", &t));
        assert!(check("! ! always_true", &t));
        assert!(check("!(always_false or always_false)", &t));
        assert!(check("{ path_beg /api } and { method GET }", &t));
        assert!(check("{path_beg /api}&&{method GET}", &t));
        assert!(check("(path_beg /nope or path_beg /api)", &t));
        assert!(!check("path_beg /api and !method GET", &t));
        assert!(check("path_beg /x /y /api", &t));
        assert!(check(
            "path_beg /x or (method POST or hdr(host) -i -m beg www.)",
            &t
        ));
    }

    #[test]
    fn quoting() {
        let mut t = sample_txn();
        t.req_headers
            .insert("x-msg", "hello world".parse().expect("hv"));
        t.req_headers.insert("x-op", "or".parse().expect("hv"));
        assert!(check("hdr(x-msg) \"hello world\"", &t));
        assert!(check("hdr(x-msg) 'hello world'", &t));
        assert!(check("hdr(x-msg) \"say \\\"hi\\\"\" 'hello world'", &t));
        assert!(check("hdr(x-op) 'or'", &t));
        // Found by tests/fuzz_parsers.rs: `&&` / `||` right after a closing quote
        // was refused, though it may follow an unquoted value.
        assert!(check("hdr(x-msg) 'hello world'||always_false", &t));
        assert!(check("hdr(x-op) \"or\"&&always_true", &t));
        assert!(!check("hdr(x-op) 'or'&&always_false", &t));
        assert!(check("hdr(x-msg) -m sub \"o w\"", &t));
        assert!(check("hdr(x-msg,1) -m reg \"^hello (world|there)$\"", &t));
    }

    #[test]
    fn string_methods() {
        let t = sample_txn();
        assert!(check("path /api/v1/users", &t));
        assert!(!check("path /api", &t));
        assert!(check("path -m str /api/v1/users", &t));
        assert!(check("path_beg /api/", &t));
        assert!(check("path_end /users", &t));
        assert!(check("path_sub v1", &t));
        assert!(check("path_reg ^/api/v[0-9]+/", &t));
        assert!(check("path_reg ^/(api|web)/", &t));
        assert!(check("path_reg ^/a{1}pi", &t));
        assert!(check("path_dir v1", &t));
        assert!(check("path_dir /api/v1/", &t));
        assert!(!check("path_dir api/v", &t));
        assert!(!check("path_dir user", &t));
        assert!(check("path_len 13", &t));
        assert!(check("path_len gt 5", &t));
        assert!(check("path -m len 10:20", &t));
        assert!(!check("hdr_dom(host) example.com", &t));
        assert!(check("hdr_dom(host) -i example.com", &t));
        assert!(check("hdr_dom(host) -i www", &t));
        assert!(!check("hdr_dom(host) -i exam", &t));
        assert!(check("hdr_beg(host) -i WWW.", &t));
        assert!(!check("hdr_beg(host) WWW.", &t));
        assert!(check("hdr_end(host) :8080", &t));
        assert!(check("hdr_sub(host) -i EXAMPLE", &t));
        assert!(check("hdr_reg(host) -i ^www\\.example", &t));
        assert!(check("hdr(user-agent) -m beg curl/", &t));
        assert!(check("url_beg /api", &t));
        assert!(check("url_sub id=7", &t));
        assert!(check("urlp(id) 7", &t));
        assert!(check("base_beg www.Example.com:8080/api", &t));
        assert!(check("path,lower -m end /users", &t));
        assert!(check("path,length 13", &t));
    }

    /// HAProxy ACL semantics: a term on a multi-valued fetch holds if any
    /// value matches (`hdr` split on commas, `fhdr` per line, `cook` per
    /// cookie), unless an occurrence picks one value.
    #[test]
    fn multi_valued_fetches_test_every_value() {
        let mut t = txn("/");
        let mut add = |n: &'static str, v: &'static str| {
            t.req_headers.append(n, v.parse().expect("hv"));
        };
        add("x-role", "admin, user");
        add("x-role", "guest");
        add("x-agent", "evil-bot");
        add("x-agent", "good, evil-bot");
        add("x-ip", "10.0.0.7, unknown");
        add("cookie", "role=admin; a=1");
        add("cookie", "role=user");
        for c in [
            "hdr(x-role) admin",
            "hdr(x-role) user",
            "req.hdr(x-role) -m str guest",
            "hdr(x-role,0) admin",
            "hdr(x-role),upper ADMIN",
            "hdr_beg(x-role) adm",
            "hdr_sub(x-role) ues",
            "hdr(x-role) -m reg ^us",
            "hdr(x-role) -m len 5",
            "fhdr(x-role) 'admin, user'",
            "req.fhdr(x-agent) evil-bot",
            "hdr_ip(x-ip) 10.0.0.0/8",
            "cook(role) admin",
            "req.cook(role) user",
            "!hdr(x-role) root",
            "hdr_cnt(x-role) eq 3",
            "req.fhdr_cnt(x-role) eq 2",
            // An explicit occurrence tests that value only.
            "hdr(x-role,1) admin",
            "hdr(x-role,-1) guest",
            "!hdr(x-role,1) guest",
            "!hdr(x-role,-1) admin",
            // fhdr does not split, hdr does.
            "!fhdr(x-role) admin",
            "!hdr(x-role) 'admin, user'",
            // Several patterns: any value against any pattern.
            "hdr(x-role) root guest",
        ] {
            assert!(check(c, &t), "{c} should hold");
        }
        assert!(!check("!hdr(x-role) admin", &t));
        assert!(!check("hdr(x-role) root", &t));
        assert!(!check("hdr(x-missing) -m found", &t));

        t.phase = Phase::Response;
        t.resp_headers
            .append("x-cache", "miss, hit".parse().expect("hv"));
        t.resp_headers
            .append("set-cookie", "s=1; Path=/".parse().expect("hv"));
        t.resp_headers
            .append("set-cookie", "s=2; Path=/".parse().expect("hv"));
        let r = |c: &str| check_in(c, &t, Phase::Response);
        assert!(r("res.hdr(x-cache) miss"));
        assert!(r("hdr(x-cache) hit"));
        assert!(r("res.cook(s) 1"));
        assert!(r("res.fhdr_cnt(set-cookie) eq 2"));
        assert!(!r("res.fhdr(x-cache) miss"));
    }

    #[test]
    fn found_bool_and_truthy() {
        let t = sample_txn();
        assert!(check("hdr(x-debug)", &t));
        assert!(!check("hdr(x-nope)", &t));
        assert!(check("!hdr(x-nope)", &t));
        assert!(check("hdr(x-debug) -m found", &t));
        assert!(!check("hdr(x-debug) -m bool", &t));
        assert!(check("hdr(x-zero) -m bool", &t));
        assert!(check("hdr(x-zero)", &t));
        assert!(!check("hdr(x-zero),bool", &t));
        assert!(!check("int(0)", &t));
        assert!(check("int(3)", &t));
        assert!(check("hdr_cnt(host)", &t));
        assert!(!check("hdr_cnt(x-nope)", &t));
        assert!(check("hdr_cnt(x-nope) -m found", &t));
    }

    #[test]
    fn integer_matching() {
        let mut t = sample_txn();
        t.phase = Phase::Response;
        t.status = http::StatusCode::NOT_FOUND;
        let r = |c: &str| check_in(c, &t, Phase::Response);
        assert!(r("status 404"));
        assert!(r("status 200 404"));
        assert!(!r("status 200"));
        assert!(r("status 400:499"));
        assert!(r("status 400:"));
        assert!(r("status :404"));
        assert!(!r("status :403"));
        assert!(r("status eq 404"));
        assert!(r("status ne 500"));
        assert!(r("status gt 403"));
        assert!(!r("status gt 404"));
        assert!(r("status ge 404"));
        assert!(r("status lt 405"));
        assert!(!r("status lt 404"));
        assert!(r("status le 404"));
        assert!(r("status -m int 404"));
        assert!(r("status -m str 404"));
        assert!(r("status -m beg 4"));
        assert!(check("src_port 5555", &t));
        assert!(check("dst_port 8080", &t));
        let t = sample_txn();
        assert!(check("hdr_cnt(host) eq 1", &t));
        assert!(check("hdr(x-zero) -m int 0", &t));
        assert!(check("int(-5) -- -5", &t));
        assert!(check("int(-5) -5", &t));
        assert!(check("int(-5) lt -1", &t));
    }

    #[test]
    fn ip_matching() {
        let t = txn("/");
        assert!(check("src 10.0.0.0/8", &t));
        assert!(check("src 192.168.0.0/16 10.1.2.3", &t));
        assert!(!check("src 192.168.0.0/16 127.0.0.1", &t));
        assert!(check("src 10.1.0.0/255.255.0.0", &t));
        assert!(check("src 0.0.0.0/0", &t));
        assert!(check("dst 127.0.0.1", &t));
        assert!(!check("src ::1", &t));
        let mut t6 = Txn::for_test("/", "[2001:db8::5]:1000".parse().expect("addr"));
        assert!(check("src 2001:db8::/32", &t6));
        assert!(!check("src 10.0.0.0/8", &t6));
        t6.client_addr = "[::ffff:10.9.8.7]:1".parse().expect("addr");
        assert!(check("src 10.0.0.0/8", &t6));
        let mut t = txn("/");
        t.req_headers.insert(
            "x-forwarded-for",
            "203.0.113.9, 10.0.0.1".parse().expect("hv"),
        );
        assert!(check("hdr(x-forwarded-for,1) -m ip 203.0.113.0/24", &t));
        assert!(check("hdr_ip(x-forwarded-for) 10.0.0.1", &t));
        assert!(!check("hdr(x-forwarded-for,1) -m ip 10.0.0.0/8", &t));
    }

    #[test]
    fn variables_match_by_runtime_type() {
        let mut t = txn("/");
        t.set_var(VarScope::Txn, "n", Sample::Int(7));
        t.set_var(VarScope::Txn, "s", Sample::Str("Abc".into()));
        t.set_var(
            VarScope::Txn,
            "ip",
            Sample::Ip("10.0.0.1".parse().expect("ip")),
        );
        t.set_var(VarScope::Txn, "f", Sample::Bool(false));
        assert!(check("var(txn.n) 7", &t));
        assert!(check("var(txn.n) 5:9", &t));
        assert!(check("var(txn.n) gt 6", &t));
        assert!(check("var(txn.n)", &t));
        assert!(!check("var(txn.f)", &t));
        assert!(check("var(txn.f) -m found", &t));
        assert!(check("var(txn.s) Abc", &t));
        assert!(check("var(txn.s) -i abc", &t));
        assert!(check("var(txn.s) -m beg A", &t));
        assert!(check("var(txn.ip) 10.0.0.0/8", &t));
        assert!(!check("var(txn.none)", &t));
        assert!(!check("var(txn.none) x", &t));
    }

    #[test]
    fn word_matching_helpers() {
        assert!(match_word(b"/a/bc/d", b"bc", DIR_DELIMS, false));
        assert!(!match_word(b"/a/bcd", b"bc", DIR_DELIMS, false));
        assert!(match_word(b"/a/bc?x", b"bc", DIR_DELIMS, false));
        assert!(match_word(
            b"a.b.Example.COM",
            b"example.com",
            DOM_DELIMS,
            true
        ));
        assert!(!match_word(
            b"notexample.com",
            b"example.com",
            DOM_DELIMS,
            false
        ));
        assert!(match_word(
            b"xexample.com.example.com",
            b"example.com",
            DOM_DELIMS,
            false
        ));
        assert_eq!(parse_int_range("5:"), Some((5, i64::MAX)));
        assert_eq!(parse_int_range(":"), None);
        assert_eq!(parse_int_range("9:1"), None);
        assert!(parse_net("10.0.0.0/33").is_none());
        assert!(parse_net("10.0.0.0/255.0.255.0").is_none());
        assert!(parse_net("::/129").is_none());
    }

    #[test]
    fn parse_errors_with_offsets() {
        let e = err("pth_beg /x");
        assert_eq!(e.offset, 0);
        assert_eq!(
            e.message,
            "unknown fetch \"pth_beg\" in condition; did you mean \"path_beg\"?"
        );
        let e = err("path_beg /x path_end .css");
        assert_eq!(e.offset, 12);
        assert!(
            e.message.contains("join conditions with 'and' or 'or'"),
            "{}",
            e.message
        );
        let e = err("hdr(x-debug) hdr(x-other)");
        assert_eq!(e.offset, 13);
        let e = err("{ path_beg /x } { method GET }");
        assert_eq!(e.offset, 16);
        assert!(
            e.message.starts_with("expected 'and' or 'or' before '{'"),
            "{}",
            e.message
        );
        let e = err("path_beg /x !method GET");
        assert_eq!(e.offset, 12);
        let e = err("(path_beg /x");
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("missing ')'"));
        let e = err("path_beg /x)");
        assert_eq!(e.offset, 11);
        assert_eq!(e.message, "unmatched ')'");
        let e = err("{ path_beg /x");
        assert!(e.message.contains("missing '}'"), "{}", e.message);
        let e = err("path_beg /x and");
        assert_eq!(e.offset, 15);
        let e = err("path_beg /x or or method GET");
        assert_eq!(e.offset, 15);
        let e = err("hdr(host");
        assert_eq!(e.offset, 3);
        let e = err("hdr(x) \"abc");
        assert_eq!(e.offset, 7);
        assert!(e.message.contains("unterminated"));
        let e = err("path -m foo x");
        assert_eq!(e.offset, 8);
        assert!(
            e.message.contains("unknown match method \"foo\""),
            "{}",
            e.message
        );
        let e = err("path -m");
        assert!(
            e.message.contains("-m needs a match method"),
            "{}",
            e.message
        );
        let e = err("path -x /a");
        assert_eq!(e.offset, 5);
        assert!(e.message.contains("unknown flag"));
        let e = err("path_beg -m sub /a");
        assert!(
            e.message.contains("already matches with -m beg"),
            "{}",
            e.message
        );
        let e = err("path /a -i");
        assert_eq!(e.offset, 8);
        let e = err("path_reg ^/(a");
        assert_eq!(e.offset, 11);
        assert!(e.message.contains("missing ')'"), "{}", e.message);
        let e = err("path_reg '^/(a'");
        assert_eq!(e.offset, 9);
        assert!(e.message.starts_with("invalid regex"), "{}", e.message);
        let e = err("path_reg '['");
        assert_eq!(e.offset, 9);
        let e = err("src 10.0.0.300");
        assert_eq!(e.offset, 4);
        assert!(e.message.contains("CIDR"));
        let e = err("src_port abc");
        assert!(e.message.contains("invalid integer"));
        let e = err("path ge 5");
        assert!(e.message.contains("compares integers"), "{}", e.message);
        let e = err("src_port ge");
        assert!(e.message.contains("exactly one integer"), "{}", e.message);
        let e = err("src_port -i 5");
        assert!(
            e.message.contains("-i (ignore case) only applies"),
            "{}",
            e.message
        );
        let e = err("hdr(x) -m found yes");
        assert_eq!(e.offset, 16);
        let e = err("path -m beg");
        assert!(
            e.message.contains("needs at least one value"),
            "{}",
            e.message
        );
        let e = err("path_beg");
        assert!(
            e.message.contains("needs at least one value"),
            "{}",
            e.message
        );
        let e = err("path_dir /");
        assert!(
            e.message.contains("nothing but delimiters"),
            "{}",
            e.message
        );
        let e = err("   ");
        assert!(e.message.contains("empty condition"));
        let e = err("'path' /x");
        assert!(e.message.contains("quoted string"));
        let e = err("path_beg /x AND method GET");
        assert!(e.message.contains("lower-case"), "{}", e.message);
        let e = err("status 200");
        assert!(e.message.contains("does not exist yet"), "{}", e.message);
        let e = err("path,lowr /x");
        assert_eq!(e.offset, 5);
        let e = err(&format!("{}always_true{}", "(".repeat(70), ")".repeat(70)));
        assert_eq!(e.offset, 64);
        assert!(e.message.contains("nested"), "{}", e.message);
        let e = err("hdr(x) 'a'b");
        assert_eq!(e.offset, 10);
        let e = err("hdr(x) 'a'|b");
        assert_eq!(e.offset, 10);
    }
}
