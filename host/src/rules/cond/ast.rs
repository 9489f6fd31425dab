//! The tree of a compiled condition: `and`/`or`/`not` nodes over terms (a fetch expression and
//! the matcher that tests its values).

use super::matchers::Matcher;
use crate::rules::fetch::Expr;
use crate::txn::Txn;

#[derive(Debug)]
pub(super) enum Node {
    Term(Box<Term>),
    Not(Box<Node>),
    And(Box<[Node]>),
    Or(Box<[Node]>),
}

impl Node {
    pub(super) fn eval(&self, txn: &Txn) -> bool {
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
pub(super) struct Term {
    pub(super) expr: Expr,
    pub(super) matcher: Matcher,
}
