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

mod ast;
mod lexer;
mod matchers;
mod parser;

#[cfg(test)]
mod tests;

use self::ast::Node;
use self::lexer::{Lexer, Tok, describe};
use self::parser::Parser;
use super::{Env, ParseError};
use crate::txn::Txn;

pub use matchers::MatchMethod;
pub(crate) use matchers::{
    DIR_DELIMS, DOM_DELIMS, IpNet, find_from, ip_bits, match_word, parse_int_range, parse_net,
};

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

    /// Whether the condition holds on data that may still grow: `None`
    /// until more data could change the answer (HAProxy's `ACL_TEST_MISS`,
    /// which `unless` keeps a miss).
    pub fn holds_partial(&self, txn: &Txn) -> Option<bool> {
        self.root.eval_partial(txn).map(|b| b != self.negate)
    }
}
