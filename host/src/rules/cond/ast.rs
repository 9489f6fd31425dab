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

    /// HAProxy's three-valued evaluation on data that may still grow
    /// (`acl_exec_cond`): a term that matched passes for good; one that did
    /// not match on a value more data may change is a miss (`None`), which
    /// `not` keeps, `and` yields to a failure and `or` to a pass.
    pub(super) fn eval_partial(&self, txn: &Txn) -> Option<bool> {
        match self {
            Node::Term(t) => {
                let (matched, may_change) = crate::rules::fetch::payload::watch_may_change(|| {
                    t.expr.any(txn, |v| t.matcher.test(Some(v)))
                });
                match (matched, may_change) {
                    (true, _) => Some(true),
                    (false, true) => None,
                    (false, false) => Some(false),
                }
            }
            Node::Not(n) => n.eval_partial(txn).map(|b| !b),
            Node::And(v) => {
                let mut miss = false;
                for n in v.iter() {
                    match n.eval_partial(txn) {
                        Some(false) => return Some(false),
                        None => miss = true,
                        Some(true) => {}
                    }
                }
                if miss { None } else { Some(true) }
            }
            Node::Or(v) => {
                let mut miss = false;
                for n in v.iter() {
                    match n.eval_partial(txn) {
                        Some(true) => return Some(true),
                        None => miss = true,
                        Some(false) => {}
                    }
                }
                if miss { None } else { Some(false) }
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct Term {
    pub(super) expr: Expr,
    pub(super) matcher: Matcher,
}
