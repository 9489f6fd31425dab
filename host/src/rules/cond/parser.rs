//! The condition parser: builds the `and`/`or`/`not` tree and compiles each term (fetch, flags,
//! values) into a matcher.

use regex::Regex;

use super::ast::{Node, Term};
use super::lexer::{Lexer, Tok, Token, describe};
use super::matchers::{
    DIR_DELIMS, DOM_DELIMS, IntOp, IntPats, IpNet, MatchMethod, Matcher, StrHow, parse_int_range,
    parse_net,
};
use crate::rules::fetch::{self, Call, FetchDef, Kind, build_expr, compile_regex, split_calls};
use crate::rules::{Env, ParseError, did_you_mean, suggest};

pub(super) struct Parser<'s, 'e> {
    pub(super) lx: Lexer<'s>,
    pub(super) env: &'e Env<'e>,
    /// Current nesting of `(` and `!`, bounded so a silly config cannot overflow the stack.
    pub(super) depth: usize,
}

const MAX_DEPTH: usize = 64;

impl Parser<'_, '_> {
    pub(super) fn expr(&mut self) -> Result<Node, ParseError> {
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
        if let Some(def) = predefined_acl(word) {
            // HAProxy's predefined ACLs are conditions of their own.
            let mut sub = Parser {
                lx: Lexer::new(def),
                env: self.env,
                depth: self.depth,
            };
            return sub.expr().map_err(|e| {
                ParseError::new(
                    first.start,
                    format!("predefined ACL {word} (\"{def}\"): {}", e.message),
                )
            });
        }
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

/// HAProxy's predefined ACLs (those whose fetches portcullis has), as the
/// conditions they stand for.
fn predefined_acl(name: &str) -> Option<&'static str> {
    Some(match name {
        "TRUE" => "always_true",
        "FALSE" => "always_false",
        "LOCALHOST" => "src 127.0.0.1/8",
        "HTTP_1.0" => "req.ver 1.0",
        "HTTP_1.1" => "req.ver 1.1",
        "HTTP_CONTENT" => "req.hdr(content-length) -m int gt 0",
        "HTTP_URL_ABS" => "url_reg ^[^/:]*://",
        "HTTP_URL_SLASH" => "url_beg /",
        "HTTP_URL_STAR" => "url *",
        "METH_CONNECT" => "method CONNECT",
        "METH_DELETE" => "method DELETE",
        "METH_GET" => "method GET HEAD",
        "METH_HEAD" => "method HEAD",
        "METH_OPTIONS" => "method OPTIONS",
        "METH_POST" => "method POST",
        "METH_PUT" => "method PUT",
        "METH_TRACE" => "method TRACE",
        "REQ_CONTENT" => "req.len gt 0",
        _ => return None,
    })
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
