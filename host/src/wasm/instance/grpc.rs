//! Delivering gRPC call events to the guest (`proxy_on_grpc_receive*`,
//! `proxy_on_grpc_close`), as Envoy does: to the root context of the
//! context that made the call (the SDKs find the caller by token and switch
//! to it with `proxy_set_effective_context`). Events of a call made by a
//! stream that is paused wait for the stream's resume, where they are
//! delivered with its transaction loaded (so a callback may change the
//! request it waited for); the others are delivered as they come.

use std::rc::Rc;

use wasmtime::TypedFunc;

use super::failure::{Failure, guest_call};
use super::state::Callback;
use super::{PluginInstance, len_u32};
use crate::txn::Txn;
use crate::wasm::grpc::{GrpcEvent, GrpcStart};

impl PluginInstance {
    /// Takes the calls the guest made since the last time (to be spawned on the worker).
    pub fn take_grpc_starts(&mut self) -> Vec<GrpcStart> {
        std::mem::take(&mut self.store.data_mut().grpc.starting)
    }

    /// Whether the guest made calls not yet started.
    pub fn has_grpc_starts(&self) -> bool {
        !self.store.data().grpc.starting.is_empty()
    }

    /// Delivers what calls reported: events of a call whose stream is
    /// paused are parked on the stream (and it is woken), the rest go to
    /// the guest now, with no request loaded.
    pub fn route_grpc(&mut self) -> Result<(), Failure> {
        loop {
            let next = {
                let d = self.store.data();
                let Ok(mut q) = d.grpc.inbox.try_borrow_mut() else {
                    return Ok(());
                };
                q.pop_front()
            };
            let Some((token, ev)) = next else {
                return Ok(());
            };
            let d = self.store.data_mut();
            let Some(h) = d.grpc.calls.get(&token) else {
                // Cancelled meanwhile: nothing more for the guest.
                continue;
            };
            let owner = h.owner;
            if let Some(s) = d.streams.get_mut(&owner)
                && s.paused
                && let Some(w) = &s.waker
            {
                w.notify.notify_one();
                s.grpc_parked.push((token, ev));
                continue;
            }
            self.deliver_grpc_event(token, ev, None)?;
        }
    }

    /// Delivers the events parked for stream `ctx` with its transaction loaded.
    pub(super) fn deliver_parked_grpc(&mut self, ctx: u32, txn: &mut Txn) -> Result<(), Failure> {
        loop {
            let next = match self.store.data_mut().streams.get_mut(&ctx) {
                Some(s) if !s.grpc_parked.is_empty() => s.grpc_parked.remove(0),
                _ => return Ok(()),
            };
            self.deliver_grpc_event(next.0, next.1, Some((ctx, &mut *txn)))?;
        }
    }

    /// One event to the guest, then the call's bookkeeping (Envoy's: a unary
    /// call ends with its message or its close; a stream once closed both ways).
    fn deliver_grpc_event(
        &mut self,
        token: u32,
        ev: GrpcEvent,
        txn: Option<(u32, &mut Txn)>,
    ) -> Result<(), Failure> {
        let (root, stream, backlog) = match self.store.data().grpc.calls.get(&token) {
            Some(h) => (h.root, h.stream, Rc::clone(&h.backlog)),
            None => return Ok(()),
        };
        let size = match &ev {
            GrpcEvent::Message(m) => m.len(),
            _ => 0,
        };
        backlog.done(size);
        let ex = Rc::clone(&self.ex);
        match ev {
            GrpcEvent::InitialMetadata(m) | GrpcEvent::TrailingMetadata(m) if !stream => {
                drop(m);
                Ok(())
            }
            GrpcEvent::InitialMetadata(m) => {
                let n = len_u32(m.len());
                self.store.data_mut().grpc.metadata = m;
                let r = self.grpc_callback(
                    ex.on_grpc_receive_initial_metadata.as_ref(),
                    Callback::GrpcInitialMetadata,
                    root,
                    (root, token, n),
                    txn,
                );
                self.store.data_mut().grpc.metadata.clear();
                r
            }
            GrpcEvent::TrailingMetadata(m) => {
                let n = len_u32(m.len());
                self.store.data_mut().grpc.metadata = m;
                let r = self.grpc_callback(
                    ex.on_grpc_receive_trailing_metadata.as_ref(),
                    Callback::GrpcTrailingMetadata,
                    root,
                    (root, token, n),
                    txn,
                );
                self.store.data_mut().grpc.metadata.clear();
                r
            }
            GrpcEvent::Message(m) => {
                let n = len_u32(m.len());
                self.store.data_mut().grpc.message = m;
                let r = self.grpc_callback(
                    ex.on_grpc_receive.as_ref(),
                    Callback::GrpcReceive,
                    root,
                    (root, token, n),
                    txn,
                );
                let d = self.store.data_mut();
                d.grpc.message = Vec::new();
                if !stream {
                    d.grpc.calls.remove(&token);
                }
                r
            }
            GrpcEvent::Close { status, message } => {
                let d = self.store.data_mut();
                d.grpc.status = (status, message);
                if let Some(h) = d.grpc.calls.get_mut(&token) {
                    h.remote_closed = true;
                    h.tx = None;
                }
                let r = self.grpc_callback(
                    ex.on_grpc_close.as_ref(),
                    Callback::GrpcClose,
                    root,
                    (root, token, status),
                    txn,
                );
                let d = self.store.data_mut();
                // The message only lives during the callback (Envoy's); the code stays.
                d.grpc.status.1.clear();
                let done = d
                    .grpc
                    .calls
                    .get(&token)
                    .is_some_and(|h| !h.stream || h.local_closed);
                if done {
                    d.grpc.calls.remove(&token);
                }
                r
            }
        }
    }

    /// Runs one gRPC callback on `root` (with stream `txn.0`'s transaction loaded, if given).
    fn grpc_callback(
        &mut self,
        f: Option<&TypedFunc<(u32, u32, u32), ()>>,
        callback: Callback,
        root: u32,
        args: (u32, u32, u32),
        txn: Option<(u32, &mut Txn)>,
    ) -> Result<(), Failure> {
        let Some(f) = f else {
            return Ok(());
        };
        self.begin(root, callback);
        let r = match txn {
            Some((ctx, txn)) => {
                let d = self.store.data_mut();
                d.io.load(txn);
                d.io_ctx = ctx;
                let r = guest_call(&mut self.store, self.ticks, f, args);
                let d = self.store.data_mut();
                d.io.unload(txn);
                d.io_ctx = 0;
                r
            }
            None => guest_call(&mut self.store, self.ticks, f, args),
        };
        self.store.data_mut().callback = Callback::Other;
        r
    }
}
