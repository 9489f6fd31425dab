//! A Lua filter on a TCP frontend (HAProxy's `filter lua.<name>` in `mode
//! tcp`): `Class:new()` when the stream starts (every filter, whatever its
//! `flags`: the HTX flag only gates HTTP streams), `start_analyze(txn, chn)`
//! on the request then on the response channel, `tcp_payload(txn, chn)` on
//! each channel's bytes once it registered data filtering there, and
//! `end_analyze(txn, chn)` on both channels when the stream ends.
//!
//! In `tcp_payload`, `chn` is the window of bytes the filter has not
//! forwarded yet (what it held back, then what arrived): its data methods
//! read and rewrite it, `forward`/`send` move bytes out, and what is left
//! goes on when the callback returns, unless it returns a smaller count
//! (the same model as `http_payload`, see `filter.rs`). A callback cannot
//! yield; `filter.wake_time` has it called again after that delay without
//! new data. A failure with `on_error = "fail_open"` detaches the filter
//! (the bytes pass untouched); `fail_closed`, `filter.ERROR` (a negative
//! count) or `txn:done()` close the stream.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Access, Callback, LuaFilter, OnError, Plugin, Ret, Slot, Stage, StepError, cx_of, dir, invoke,
    to_integer,
};
use crate::filter::{StreamClose, StreamCx, StreamFilter};
use crate::lua::runtime::{self, CallError};
use crate::txn::Txn;

impl StreamFilter for LuaFilter {
    fn name(&self) -> &str {
        &self.label
    }

    fn attach(&self, txn: &mut Txn) -> Result<Option<Box<dyn StreamCx>>, StreamClose> {
        match LuaFilter::attach(self, txn, false) {
            Ok(Some(slot)) => Ok(Some(Box::new(TcpCx {
                plugin: Arc::clone(&self.plugin),
                what: self.what.clone(),
                slot: Some(slot),
                wake: [None; 2],
            }))),
            Ok(None) => Ok(None),
            // `fail` counted and logged it; fail_open goes on without the filter.
            Err(flow) => match *flow {
                crate::filter::Flow::Continue => Ok(None),
                _ => Err(StreamClose),
            },
        }
    }
}

/// One stream's filter instance.
struct TcpCx {
    plugin: Arc<Plugin>,
    what: String,
    /// None once detached (a failure with fail_open).
    slot: Option<Slot>,
    /// `filter.wake_time` asked by the last callback on each channel.
    wake: [Option<Duration>; 2],
}

impl TcpCx {
    /// Counts and logs a failure: fail_open detaches the filter, fail_closed closes the stream.
    fn failed(&mut self, e: &CallError) -> Result<(), StreamClose> {
        let inst = self.slot.as_ref().map(|s| Rc::clone(&s.inst));
        runtime::record_failure(&self.plugin, inst.as_ref(), e, &self.what);
        self.slot = None;
        self.wake = [None; 2];
        match self.plugin.on_error {
            OnError::FailOpen => Ok(()),
            OnError::FailClosed => Err(StreamClose),
        }
    }

    /// Runs `cb` on the channel; the window (payload only) is in the filter state's buffer.
    fn call(
        &mut self,
        txn: &mut Txn,
        cb: Callback,
        resp: bool,
        window: Option<&mut Vec<u8>>,
        end: bool,
    ) -> Result<Option<(Ret, usize)>, StepError> {
        let Some(slot) = self.slot.as_mut() else {
            return Ok(None);
        };
        let Some(fcx) = cx_of(&slot.inst.lua) else {
            return Err(StepError::Failed(
                CallError::runtime("filter state missing"),
                Vec::new(),
            ));
        };
        fcx.enter(cb.stage(), resp, end);
        fcx.data.set(slot.data);
        fcx.max.set(crate::channel::BUFSIZE);
        let mut window = window;
        let payload = window.is_some();
        if let Some(w) = window.as_deref_mut() {
            match fcx.buf.try_borrow_mut() {
                Ok(mut b) => *b = std::mem::take(w),
                Err(_) => {
                    fcx.stage.set(Stage::Idle);
                    return Err(StepError::Failed(
                        CallError::runtime("filter buffer in use"),
                        Vec::new(),
                    ));
                }
            }
            fcx.tcp.set(true);
        }
        let inst = Rc::clone(&slot.inst);
        let mut vals = runtime::take_slot(txn, &inst);
        let r = invoke(
            &self.plugin,
            &inst,
            &fcx,
            &slot.obj,
            cb,
            resp,
            Access::Write(std::ptr::from_mut(txn)),
            Some(&mut vals),
        );
        runtime::put_slot(txn, vals);
        fcx.tcp.set(false);
        slot.data = fcx.data.get();
        self.wake[dir(resp)] = fcx
            .wake_ms
            .get()
            .map(|ms| Duration::from_millis(ms.clamp(1, 86_400_000)));
        let mut off = 0;
        if payload && let Some(w) = window {
            *w = fcx
                .buf
                .try_borrow_mut()
                .map(|mut b| std::mem::take(&mut *b))
                .unwrap_or_default();
            off = fcx.off.get().min(w.len());
        }
        match r {
            Ok(ret) => Ok(Some((ret, off))),
            Err(e) => Err(StepError::Failed(e, Vec::new())),
        }
    }

    /// The outcome of a callback that does not move data.
    fn settle(&mut self, r: Result<Option<(Ret, usize)>, StepError>) -> Result<(), StreamClose> {
        match r {
            Ok(None) => Ok(()),
            Ok(Some((Ret::Done, _))) => Err(StreamClose),
            Ok(Some((ret, _))) if ret.code() < 0 => Err(StreamClose),
            Ok(Some(_)) => Ok(()),
            Err(StepError::Failed(e, _)) => self.failed(&e),
            Err(_) => Err(StreamClose),
        }
    }
}

impl StreamCx for TcpCx {
    fn start(&mut self, txn: &mut Txn, resp: bool) -> Result<(), StreamClose> {
        let r = self.call(txn, Callback::StartAnalyze, resp, None, false);
        self.settle(r)
    }

    fn filters(&self, resp: bool) -> bool {
        self.slot.as_ref().is_some_and(|s| s.data[dir(resp)])
    }

    fn payload(
        &mut self,
        txn: &mut Txn,
        resp: bool,
        window: &mut Vec<u8>,
        end: bool,
    ) -> Result<usize, StreamClose> {
        if !self.filters(resp) {
            return Ok(window.len());
        }
        match self.call(txn, Callback::TcpPayload, resp, Some(&mut *window), end) {
            Ok(None) => Ok(window.len()),
            Ok(Some((ret, off))) => {
                let input = window.len() - off;
                match ret {
                    Ret::Done => Err(StreamClose),
                    Ret::Missing | Ret::Nothing => Ok(window.len()),
                    Ret::Value(v) => {
                        let n = to_integer(&v);
                        if n < 0 {
                            return Err(StreamClose);
                        }
                        Ok(off + usize::try_from(n).unwrap_or(usize::MAX).min(input))
                    }
                }
            }
            Err(StepError::Failed(e, _)) => {
                // Detached (fail_open): the window as the filter left it goes on.
                self.failed(&e)?;
                Ok(window.len())
            }
            Err(_) => Err(StreamClose),
        }
    }

    fn wake(&self, resp: bool) -> Option<Duration> {
        self.slot.as_ref().and(self.wake[dir(resp)])
    }

    fn end(&mut self, txn: &mut Txn) {
        let Some(slot) = self.slot.as_mut() else {
            return;
        };
        let mut failed = slot.failed;
        for resp in [false, true] {
            if let Err(StepError::Failed(e, _)) =
                self.call(txn, Callback::EndAnalyze, resp, None, true)
            {
                failed = true;
                let inst = self.slot.as_ref().map(|s| Rc::clone(&s.inst));
                runtime::record_failure(&self.plugin, inst.as_ref(), &e, &self.what);
            }
        }
        if !failed {
            runtime::request_succeeded(&self.plugin);
        }
        self.slot = None;
    }
}
