//! Log-format strings: literal text with `%[fetch,conv...]` interpolated.
//!
//! `%%` is a literal `%`; any other text (including a `%` not followed by
//! `[` or `%`) is copied as is. Strings are parsed once at load time into
//! segments, so rendering is a walk over literals and compiled expressions.

use super::fetch::{Expr, parse_expr, read_quoted};
use super::{Env, ParseError};
use crate::txn::Txn;

/// A pre-compiled log-format string.
#[derive(Debug)]
pub struct LogFormat {
    segs: Box<[Seg]>,
}

#[derive(Debug)]
enum Seg {
    Lit(Box<str>),
    Expr(Expr),
}

impl LogFormat {
    /// Parses `text`; error offsets are byte offsets into `text`.
    pub fn parse(text: &str, env: &Env<'_>) -> Result<LogFormat, ParseError> {
        let b = text.as_bytes();
        let mut segs = Vec::new();
        let mut lit = String::new();
        let mut i = 0;
        let mut lit_start = 0;
        while let Some(pos) = text.get(i..).and_then(|s| s.find('%')).map(|p| p + i) {
            match b.get(pos + 1) {
                Some(b'%') => {
                    lit.push_str(&text[lit_start..=pos]);
                    i = pos + 2;
                    lit_start = i;
                }
                Some(b'[') => {
                    lit.push_str(&text[lit_start..pos]);
                    let close = find_close(text, pos + 2)?.ok_or_else(|| {
                        ParseError::new(pos, "unclosed %[ ... ]; add the closing ']'")
                    })?;
                    let inner = &text[pos + 2..close];
                    if inner.trim().is_empty() {
                        return Err(ParseError::new(
                            pos,
                            "empty %[]; put a fetch inside, e.g. %[path]",
                        ));
                    }
                    if !lit.is_empty() {
                        segs.push(Seg::Lit(std::mem::take(&mut lit).into()));
                    }
                    segs.push(Seg::Expr(parse_expr(
                        inner,
                        pos + 2,
                        env,
                        "in log-format string",
                    )?));
                    i = close + 1;
                    lit_start = i;
                }
                _ => i = pos + 1,
            }
        }
        lit.push_str(&text[lit_start..]);
        if !lit.is_empty() {
            segs.push(Seg::Lit(lit.into()));
        }
        Ok(LogFormat {
            segs: segs.into_boxed_slice(),
        })
    }

    /// Appends the rendered string to `out`; a fetch with no value renders as nothing.
    pub fn render(&self, txn: &Txn, out: &mut String) {
        for s in &self.segs {
            match s {
                Seg::Lit(l) => out.push_str(l),
                Seg::Expr(e) => {
                    if let Some(v) = e.eval(txn) {
                        v.write_to(out);
                    }
                }
            }
        }
    }

    /// The rendered string, as a new `String`.
    pub fn render_string(&self, txn: &Txn) -> String {
        let mut out = String::new();
        self.render(txn, &mut out);
        out
    }

    /// The text when the string has no `%[...]` (so it can be precomputed).
    pub fn as_literal(&self) -> Option<&str> {
        match &*self.segs {
            [] => Some(""),
            [Seg::Lit(l)] => Some(l),
            _ => None,
        }
    }
}

/// Finds the `]` closing a `%[` whose content starts at `from`, skipping
/// quoted arguments and nested brackets (e.g. in a regex character class).
fn find_close(text: &str, from: usize) -> Result<Option<usize>, ParseError> {
    let b = text.as_bytes();
    let (mut i, mut depth) = (from, 0usize);
    while let Some(&c) = b.get(i) {
        match c {
            b'"' | b'\'' => {
                i = read_quoted(text, i, 0)?.1;
                continue;
            }
            b'[' => depth += 1,
            b']' if depth == 0 => return Ok(Some(i)),
            b']' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::{ctx_parts, txn};
    use crate::txn::Phase;

    fn parse(text: &str) -> Result<LogFormat, ParseError> {
        let (_, backends) = ctx_parts();
        let cx = crate::rules::CompileCtx {
            backends: &backends,
            plugins: crate::rules::ext::Extensions::empty(),
            tables: crate::stick::StickTables::none(),
        };
        let env = Env {
            ctx: &cx,
            phase: Phase::Request,
        };
        LogFormat::parse(text, &env)
    }

    fn render(text: &str, t: &Txn) -> String {
        parse(text).expect("log-format parses").render_string(t)
    }

    #[test]
    fn renders_literals_fetches_and_percent() {
        let mut t = txn("/a/b?x=1");
        t.req_headers
            .insert("host", "example.com".parse().expect("hv"));
        assert_eq!(render("plain text", &t), "plain text");
        assert_eq!(render("", &t), "");
        assert_eq!(render("100%% sure, 5% off", &t), "100% sure, 5% off");
        assert_eq!(
            render("https://%[hdr(host)]%[path]", &t),
            "https://example.com/a/b"
        );
        assert_eq!(
            render("[%[method]] %[src]:%[src_port]", &t),
            "[GET] 10.1.2.3:5555"
        );
        assert_eq!(render("x=%[hdr(none)]!", &t), "x=!");
        assert_eq!(render("%[path,regsub([ab],_,g)]", &t), "/_/_");
        assert_eq!(render("%[str(']'),length]", &t), "1");
        assert_eq!(render("%[ path , upper ]", &t), "/A/B");
        assert_eq!(render("%%[path]", &t), "%[path]");
        assert_eq!(render("end%", &t), "end%");
        assert_eq!(render("é%[path]ü", &t), "é/a/bü");
    }

    #[test]
    fn literal_detection() {
        assert_eq!(parse("abc").expect("ok").as_literal(), Some("abc"));
        assert_eq!(parse("a%%b").expect("ok").as_literal(), Some("a%b"));
        assert_eq!(parse("").expect("ok").as_literal(), Some(""));
        assert_eq!(parse("%[path]").expect("ok").as_literal(), None);
    }

    #[test]
    fn errors_are_located() {
        let e = parse("x %[path").expect_err("unclosed");
        assert_eq!(e.offset, 2);
        let e = parse("ab%[]").expect_err("empty");
        assert_eq!(e.offset, 2);
        let e = parse("abc%[pth]").expect_err("unknown");
        assert_eq!(e.offset, 5);
        assert_eq!(
            e.message,
            "unknown fetch \"pth\" in log-format string; did you mean \"path\"?"
        );
        let e = parse("%[path,lower(1)]").expect_err("arity");
        assert_eq!(e.offset, 7);
        let e = parse("%[path,regsub('x,y)]").expect_err("quote");
        assert_eq!(e.offset, 14);
    }
}
