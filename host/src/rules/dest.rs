//! Actions on a connection's addresses, as HAProxy's: `set_dst`,
//! `set_dst_port`, `set_src`, `set_src_port` (the `dst`/`src` every later
//! rule, the log and a server written `0.0.0.0:0` see), and `do_resolve`
//! (a name resolved through a `[[resolvers]]` section into a variable, the
//! request waiting meanwhile).

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

use super::action::RuleEnv;
use super::fetch::Expr;
use crate::config::ConfigError;
use crate::config::schema::RawRule;
use crate::filter::{Filter, Flow, Phases};
use crate::resolve::{Prefer, Section};
use crate::txn::{Sample, Txn, VarScope};

/// Which address and part an action sets.
#[derive(Debug, Clone, Copy)]
enum Part {
    DstIp,
    DstPort,
    SrcIp,
    SrcPort,
}

#[derive(Debug)]
struct SetAddr {
    part: Part,
    expr: Expr,
}

impl SetAddr {
    fn apply(&self, txn: &mut Txn) -> Flow {
        // Read the value first: the expression borrows the transaction.
        let (ip, port) = match self.expr.eval(txn) {
            None => return Flow::Continue, // no value: the address stays, as in HAProxy
            Some(v) => match self.part {
                Part::DstIp | Part::SrcIp => (v.to_ip(), None),
                // An integer (or text holding one), truncated to 16 bits as
                // HAProxy's `htons()` does.
                Part::DstPort | Part::SrcPort => (None, v.to_int().map(|n| n as u16)),
            },
        };
        let addr = match self.part {
            Part::DstIp | Part::DstPort => &mut txn.local_addr,
            Part::SrcIp | Part::SrcPort => &mut txn.client_addr,
        };
        // A new IP keeps the port (HAProxy keeps it across families too).
        if let Some(ip) = ip {
            *addr = SocketAddr::new(ip, addr.port());
        }
        if let Some(port) = port {
            addr.set_port(port);
        }
        Flow::Continue
    }
}

/// `set_dst`, `set_dst_port`, `set_src`, `set_src_port`: a fetch expression.
pub fn build_set_addr(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let (field, part) = match re.key {
        "set_dst" => (&raw.set_dst, Part::DstIp),
        "set_dst_port" => (&raw.set_dst_port, Part::DstPort),
        "set_src" => (&raw.set_src, Part::SrcIp),
        _ => (&raw.set_src_port, Part::SrcPort),
    };
    let text = re.key(field, re.key)?;
    let expr = re.expr(text)?;
    Ok(re.head(SetAddr::apply, SetAddr { part, expr }))
}

/// `do_resolve`: the name from `expr`, resolved through `resolvers`, into a variable.
struct DoResolve {
    scope: VarScope,
    var: Box<str>,
    expr: Expr,
    section: Arc<Section>,
    prefer: Prefer,
    /// Where this rule keeps its pending answer in `txn.plugin_state`.
    key: u64,
}

/// What a lookup left for `resume`.
type Answer = Rc<Cell<Option<IpAddr>>>;

impl Filter for DoResolve {
    fn name(&self) -> &str {
        "do_resolve"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        // No name (the fetch found nothing): the action is skipped, as HAProxy's.
        let Some(name) = self.expr.eval(txn).map(|v| v.into_text().into_owned()) else {
            return Flow::Continue;
        };
        let answer: Answer = Rc::new(Cell::new(None));
        txn.plugin_state.put(self.key, Box::new(Rc::clone(&answer)));
        let section = Arc::clone(&self.section);
        let prefer = self.prefer;
        Flow::Wait(Box::pin(async move {
            answer.set(section.lookup(&name, prefer).await);
        }))
    }

    fn resume(&self, txn: &mut Txn) -> Flow {
        // Only a valid answer sets the variable; a failure leaves it as it was.
        if let Some(ip) = txn
            .plugin_state
            .take::<Answer>(self.key)
            .and_then(|a| a.get())
        {
            txn.set_var(self.scope, &self.var, Sample::Ip(ip));
        }
        Flow::Continue
    }
}

pub fn build_do_resolve(raw: &RawRule, re: &RuleEnv<'_>) -> Result<Box<dyn Filter>, ConfigError> {
    let target = re.key(&raw.do_resolve, "do_resolve")?;
    let (scope, var) =
        super::parse_var_name(target.get_ref(), &re.env).map_err(|m| re.error(target.span(), m))?;
    let expr_text = raw.expr.as_ref().ok_or_else(|| {
        re.error(
            target.span(),
            "do_resolve needs `expr = \"...\"`: the fetch expression giving the name to resolve, e.g. \"req.hdr(host)\" or \"var(txn.name)\"",
        )
    })?;
    let expr = re.expr(expr_text)?;
    let (section_name, span) = match &raw.resolvers {
        Some(r) => (r.get_ref().as_str(), r.span()),
        None => ("default", target.span()),
    };
    let section = re.env.ctx.resolvers.get(section_name).ok_or_else(|| {
        re.error(
            span,
            format!(
                "unknown resolvers section {section_name:?}; declared: {} (add a [[resolvers]] section with that name)",
                re.env.ctx.resolvers.names().join(", ")
            ),
        )
    })?;
    let prefer = match raw
        .family
        .as_ref()
        .map(|f| (f.get_ref().as_str(), f.span()))
    {
        None | Some(("ipv6", _)) => Prefer::Ipv6,
        Some(("ipv4", _)) => Prefer::Ipv4,
        Some((other, span)) => {
            return Err(re.error(
                span,
                format!("unknown family {other:?} for do_resolve; expected \"ipv4\" or \"ipv6\" (the family asked first)"),
            ));
        }
    };
    // One key per rule: two do_resolve rules of one request never share an answer.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key = 0xD0_5E50_0000_0000 | NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(Box::new(DoResolve {
        scope,
        var: var.into(),
        expr,
        section: Arc::clone(section),
        prefer,
        key,
    }))
}
