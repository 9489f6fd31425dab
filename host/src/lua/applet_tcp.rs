//! TCP services (`core.register_service(name, "tcp", f)`), run by
//! `use_service = "lua.<name>"` in `tcp_request`: the function gets the
//! `AppletTCP` object (`api/tcp.lua`) and talks to the client over the
//! stream's channels until it returns; then the connection closes.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use mlua::{MultiValue, Table, Value as LuaValue};

use super::Plugin;
use super::rules::{finished, watched};
use super::runtime::{self, CallError, CallKind, Instance, Site, Step, TxnSlot};
use crate::filter::{Filter, Flow, Phases, Reply};
use crate::txn::{Phase, Txn};

static NEXT_SERVICE: AtomicU64 = AtomicU64::new(1 << 62);

/// `{ use_service = "lua.<name>" }` in `tcp_request`.
#[derive(Debug)]
pub struct LuaTcpService {
    plugin: Arc<Plugin>,
    name: String,
    id: u64,
}

/// Builds a TCP service rule: `name` must be registered with mode "tcp".
pub fn build(plugins: &super::Plugins, name: &str) -> Result<Box<dyn Filter>, String> {
    let plugin = plugins
        .find("TCP service", name, |r| &r.tcp_services)
        .map_err(|e| {
            if plugins
                .list
                .iter()
                .any(|p| p.registered.services.iter().any(|s| s == name))
            {
                format!("Lua service {name:?} is an HTTP service; tcp_request needs one registered with core.register_service(name, \"tcp\", f)")
            } else {
                e
            }
        })?;
    Ok(Box::new(LuaTcpService {
        plugin: Arc::clone(plugin),
        name: name.to_string(),
        id: NEXT_SERVICE.fetch_add(1, Relaxed),
    }))
}

/// The end of a service: the connection closes (the reply is never sent).
fn end() -> Flow {
    Flow::Respond(Reply::text(http::StatusCode::OK, ""))
}

impl LuaTcpService {
    fn what(&self) -> String {
        format!("TCP service {:?}", self.name)
    }

    fn failed(&self, inst: Option<&Rc<Instance>>, e: &CallError) -> Flow {
        runtime::record_failure(&self.plugin, inst, e, &self.what());
        end()
    }

    fn start(&self, txn: &mut Txn) -> Flow {
        let name = self.name.as_str();
        let (inst, thread) = match runtime::service_thread(
            &self.plugin,
            self.id,
            |f| f.services_tcp.get(name).cloned(),
            || self.what(),
        ) {
            Ok(it) => it,
            Err((inst, e)) => return self.failed(inst.as_ref(), &e),
        };
        let applet: Table = match inst.lua.named_registry_value(super::api::tcp::APPLET_KEY) {
            Ok(a) => a,
            Err(e) => return self.failed(Some(&inst), &CallError::from_lua(&e)),
        };
        let mut args = MultiValue::new();
        args.push_back(LuaValue::Table(applet));
        let slot = runtime::take_slot(txn, &inst);
        self.drive(&inst, thread, args, txn, slot)
    }

    fn drive(
        &self,
        inst: &Rc<Instance>,
        thread: mlua::Thread,
        args: MultiValue,
        txn: &mut Txn,
        mut slot: TxnSlot,
    ) -> Flow {
        let site = Site {
            txn: std::ptr::from_mut(txn),
            writable: true,
            phase: Phase::Request,
            kind: CallKind::Service,
        };
        let budget = self.plugin.cpu_limit.saturating_sub(slot.cpu_used);
        let ((spent, step), keep) = inst.run(
            thread,
            args,
            &site,
            &mut slot.privv,
            &mut slot.fields,
            budget,
        );
        slot.cpu_used += spent;
        match step {
            Step::Finished(_) | Step::Done => {
                runtime::put_slot(txn, slot);
                end()
            }
            Step::Sleep(d) => {
                slot.suspended = keep;
                runtime::put_slot(txn, slot);
                Flow::Wait(Box::pin(async move { tokio::time::sleep(d).await }))
            }
            Step::Io(op) => {
                slot.suspended = keep;
                runtime::put_slot(txn, slot);
                Flow::Wait(op)
            }
            Step::Failed(e) => {
                runtime::put_slot(txn, slot);
                self.failed(Some(inst), &e)
            }
        }
    }

    fn resume_call(&self, txn: &mut Txn) -> Flow {
        let Some(mut slot) = txn.plugin_state.take::<TxnSlot>(self.plugin.id) else {
            return self.failed(
                None,
                &CallError::runtime("resumed without a waiting service"),
            );
        };
        let Some(thread) = slot.suspended.take() else {
            return self.failed(
                None,
                &CallError::runtime("resumed without a waiting service"),
            );
        };
        let inst = Rc::clone(&slot.instance);
        self.drive(&inst, thread, MultiValue::new(), txn, *slot)
    }
}

impl Filter for LuaTcpService {
    fn name(&self) -> &str {
        "use_service"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST | Phases::LOG
    }

    fn on_request(&self, txn: &mut Txn) -> Flow {
        watched(&self.plugin, txn, |txn| self.start(txn))
    }

    fn resume(&self, txn: &mut Txn) -> Flow {
        watched(&self.plugin, txn, |txn| self.resume_call(txn))
    }

    fn on_log(&self, txn: &Txn) {
        finished(&self.plugin, txn);
    }
}
