//! The condition lexer: brackets, `!`/`and`/`or` and words (fetches with their arguments, flags,
//! values, quoted or not).

use crate::rules::ParseError;
use crate::rules::fetch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
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
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) start: usize,
}

pub(super) fn describe(t: &Tok) -> String {
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

pub(super) struct Lexer<'s> {
    src: &'s str,
    pos: usize,
    peeked: Option<Token>,
}

impl<'s> Lexer<'s> {
    pub(super) fn new(src: &'s str) -> Self {
        Lexer {
            src,
            pos: 0,
            peeked: None,
        }
    }

    pub(super) fn peek(&mut self) -> Result<&Token, ParseError> {
        let t = match self.peeked.take() {
            Some(t) => t,
            None => self.lex()?,
        };
        Ok(self.peeked.insert(t))
    }

    pub(super) fn next(&mut self) -> Result<Token, ParseError> {
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
