//! Stream (HTTP) contexts: creating and destroying them, the request and
//! response hooks (headers, body, body chunks, trailers) with the transaction
//! loaded, verdicts and pause state, and delivering http call responses.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use wasmtime::TypedFunc;

use super::failure::{Failure, FailureKind, action, guest_call};
use super::state::{CallResponse, Callback, PendingCall, ROOT_ID, StreamIo};
use super::{PluginInstance, len_u32};
use crate::filter::Reply;
use crate::txn::{Phase, Txn};

/// What a wait future reports back to the instance.
#[derive(Debug, Default)]
pub struct StreamWaker {
    pub notify: tokio::sync::Notify,
    pub results: std::cell::RefCell<Vec<(u32, CallResponse)>>,
}

/// Host-side state of one stream (HTTP) context.
#[derive(Debug)]
pub struct StreamState {
    pub paused: bool,
    pub pause_deadline: Option<Instant>,
    pub reply: Option<Reply>,
    pub closed: bool,
    pub calls: Vec<PendingCall>,
    pub inflight: usize,
    /// Created when the stream first waits (most requests never pause).
    pub waker: Option<Rc<StreamWaker>>,
    pub props: Vec<(Vec<u8>, Vec<u8>)>,
    /// Route metadata: the rule's, then its frontend's (the first that has
    /// a filter's entry answers for it).
    pub metadata: [Option<crate::config::Metadata>; 2],
    /// The root context (plugin) that created the stream.
    pub root: u32,
    /// Events of gRPC calls the stream made, come while it was paused:
    /// delivered at its resume, with its transaction loaded.
    pub grpc_parked: Vec<(u32, crate::wasm::grpc::GrpcEvent)>,
}

impl StreamState {
    fn new(root: u32) -> StreamState {
        StreamState {
            root,
            paused: false,
            pause_deadline: None,
            reply: None,
            closed: false,
            calls: Vec::new(),
            inflight: 0,
            waker: None,
            props: Vec::new(),
            metadata: [None, None],
            grpc_parked: Vec::new(),
        }
    }
}

/// What a stream callback decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// Wait: the guest returned `Action::Pause` and has not resumed the stream yet.
    Pause,
    /// Answer with this response (`proxy_send_local_response`, or `proxy_close_stream`).
    Respond(Reply),
}

impl PluginInstance {
    /// Live stream contexts.
    pub fn stream_count(&self) -> usize {
        self.store.data().streams.len()
    }

    /// Gives stream `ctx` its route metadata (rule's, frontend's).
    pub fn set_route_metadata(&mut self, ctx: u32, metadata: [Option<crate::config::Metadata>; 2]) {
        if let Some(s) = self.store.data_mut().streams.get_mut(&ctx) {
            s.metadata = metadata;
        }
    }

    /// Creates a stream context for one request under root context `root`
    /// (the plugin's, in a VM shared through `vm_id`); returns its id.
    pub fn create_stream(&mut self, root: u32) -> Result<u32, Failure> {
        if !self.store.data().is_root(root) {
            return Err(Failure::new(
                FailureKind::Init,
                format!("no root context {root} in this VM"),
            ));
        }
        self.begin(root, Callback::Other);
        let max = self.store.data().root.plugin.spec.limits.max_streams.max(1);
        while self.store.data().streams.len() >= max {
            // Requests dropped before their log hook leave contexts behind: evict the oldest.
            match self.order.pop_front() {
                Some(old) => self.destroy_stream(old)?,
                None => break,
            }
        }
        let mut id = self.next_ctx;
        while id == 0
            || self.store.data().is_root(id)
            || self.store.data().streams.contains_key(&id)
        {
            id = id.wrapping_add(1);
        }
        self.next_ctx = id.wrapping_add(1);
        self.store
            .data_mut()
            .streams
            .insert(id, StreamState::new(root));
        self.order.push_back(id);
        self.begin(id, Callback::Other);
        let ex = Rc::clone(&self.ex);
        if let Some(f) = &ex.on_context_create {
            guest_call(&mut self.store, self.ticks, f, (id, root))?;
        }
        Ok(id)
    }

    /// Whether stream `ctx` exists.
    pub fn has_stream(&self, ctx: u32) -> bool {
        self.store.data().streams.contains_key(&ctx)
    }

    /// `Err` if stream `ctx` no longer exists (the instance was rebuilt under it).
    fn require_stream(&self, ctx: u32) -> Result<(), Failure> {
        if self.has_stream(ctx) {
            Ok(())
        } else {
            Err(gone())
        }
    }

    /// Runs `proxy_on_new_connection` on `ctx`: it succeeds only for a TCP
    /// stream context (the Rust SDK traps for an HTTP context). Used at load.
    pub(crate) fn probe_stream_context(&mut self, ctx: u32) -> bool {
        let ex = Rc::clone(&self.ex);
        // The Go SDK panics (and prints it) for an HTTP context: expected
        // here, so the probe's output is not the plugin's to log.
        self.store.data_mut().quiet = true;
        let tcp = match &ex.on_new_connection {
            Some(f) => guest_call(&mut self.store, self.ticks, f, ctx).is_ok(),
            None => false,
        };
        self.store.data_mut().quiet = false;
        tcp
    }

    fn stream_hook(
        &mut self,
        ctx: u32,
        txn: &mut Txn,
        f: Option<&TypedFunc<(u32, u32, u32), u32>>,
        count: impl Fn(&StreamIo) -> usize,
        eos: bool,
        name: &str,
    ) -> Result<Verdict, Failure> {
        self.require_stream(ctx)?;
        let Some(f) = f else {
            return Ok(Verdict::Continue);
        };
        let pause = self.stream_call(ctx, txn, f, count, eos, name)?;
        Ok(self.verdict(ctx, pause))
    }

    /// One `(context, size, end_of_stream)` hook with the transaction loaded; true for `Pause`.
    fn stream_call(
        &mut self,
        ctx: u32,
        txn: &mut Txn,
        f: &TypedFunc<(u32, u32, u32), u32>,
        count: impl Fn(&StreamIo) -> usize,
        eos: bool,
        name: &str,
    ) -> Result<bool, Failure> {
        self.begin(ctx, Callback::Other);
        let d = self.store.data_mut();
        d.io.load(txn);
        d.io_ctx = ctx;
        let n = len_u32(count(&d.io));
        let r = guest_call(&mut self.store, self.ticks, f, (ctx, n, u32::from(eos)));
        let d = self.store.data_mut();
        d.io.unload(txn);
        d.io_ctx = 0;
        action(r?, name)
    }

    fn verdict(&mut self, ctx: u32, pause: bool) -> Verdict {
        let limits = self.store.data().root.plugin.spec.limits;
        let Some(s) = self.store.data_mut().streams.get_mut(&ctx) else {
            return Verdict::Continue;
        };
        if let Some(reply) = s.reply.take() {
            s.paused = false;
            return Verdict::Respond(reply);
        }
        if s.closed {
            s.closed = false;
            s.paused = false;
            // The plugin ended the stream without a reply: HAProxy's 502 page.
            return Verdict::Respond(crate::error::reply(StatusCode::BAD_GATEWAY));
        }
        if pause {
            s.paused = true;
            s.pause_deadline
                .get_or_insert_with(|| Instant::now() + limits.pause_timeout);
        }
        if s.paused {
            Verdict::Pause
        } else {
            s.pause_deadline = None;
            Verdict::Continue
        }
    }

    /// `proxy_on_request_headers` with the transaction's request headers.
    pub fn request_headers(
        &mut self,
        ctx: u32,
        txn: &mut Txn,
        eos: bool,
    ) -> Result<Verdict, Failure> {
        let ex = Rc::clone(&self.ex);
        let f = ex.on_request_headers.as_ref();
        self.stream_hook(
            ctx,
            txn,
            f,
            |io| io.req_headers.len() + 4,
            eos,
            "proxy_on_request_headers",
        )
    }

    /// `proxy_on_response_headers` with the transaction's response headers.
    pub fn response_headers(
        &mut self,
        ctx: u32,
        txn: &mut Txn,
        eos: bool,
    ) -> Result<Verdict, Failure> {
        let ex = Rc::clone(&self.ex);
        let f = ex.on_response_headers.as_ref();
        self.stream_hook(
            ctx,
            txn,
            f,
            |io| io.resp_headers.len() + 1,
            eos,
            "proxy_on_response_headers",
        )
    }

    /// `proxy_on_request_body` / `proxy_on_response_body` (by `txn.phase`) over
    /// the body buffered in `txn` (buffer type 0 / 1, changeable by the guest).
    /// With `eos` false (trailers follow) a `Pause` only means "keep
    /// buffering", as Envoy's StopIterationAndBuffer: the trailers hook decides.
    pub fn body(&mut self, ctx: u32, txn: &mut Txn, eos: bool) -> Result<Verdict, Failure> {
        self.require_stream(ctx)?;
        let ex = Rc::clone(&self.ex);
        let pause = match txn.phase {
            Phase::Request => match &ex.on_request_body {
                Some(f) => self.stream_call(
                    ctx,
                    txn,
                    f,
                    |io| io.req_body.len(),
                    eos,
                    "proxy_on_request_body",
                )?,
                None => false,
            },
            Phase::Response => match &ex.on_response_body {
                Some(f) => self.stream_call(
                    ctx,
                    txn,
                    f,
                    |io| io.resp_body.len(),
                    eos,
                    "proxy_on_response_body",
                )?,
                None => false,
            },
        };
        Ok(self.verdict(ctx, pause && eos))
    }

    /// The body hook on a body still arriving (`end_of_stream` 0), over what
    /// is buffered so far. `None`: the guest wants more (`Pause`, Envoy's
    /// StopIterationAndBuffer, or no body hook but a trailers hook);
    /// `Some(Continue)`: the buffered part may go on and the rest stream past.
    pub fn body_chunk(&mut self, ctx: u32, txn: &mut Txn) -> Result<Option<Verdict>, Failure> {
        self.require_stream(ctx)?;
        let ex = Rc::clone(&self.ex);
        let (f, name) = match txn.phase {
            Phase::Request => (ex.on_request_body.as_ref(), "proxy_on_request_body"),
            Phase::Response => (ex.on_response_body.as_ref(), "proxy_on_response_body"),
        };
        let request = txn.phase == Phase::Request;
        let Some(f) = f else {
            return Ok(None);
        };
        let more = self.stream_call(
            ctx,
            txn,
            f,
            move |io| {
                if request {
                    io.req_body.len()
                } else {
                    io.resp_body.len()
                }
            },
            false,
            name,
        )?;
        let v = self.verdict(ctx, false);
        Ok(match v {
            Verdict::Continue if more => None,
            v => Some(v),
        })
    }

    /// The body hook for one chunk of a body the guest let go on before its
    /// end (Envoy keeps calling per chunk): only the chunk is loaded, as the
    /// transaction has moved on. Returns the chunk as the guest left it and
    /// the stream's verdict (a `Pause` cannot hold what already went on: it
    /// is ignored). A context already finished lets the chunk pass.
    pub fn body_chunk_detached(
        &mut self,
        ctx: u32,
        phase: Phase,
        data: Vec<u8>,
        eos: bool,
    ) -> Result<(Vec<u8>, Verdict), Failure> {
        if !self.has_stream(ctx) {
            return Ok((data, Verdict::Continue));
        }
        let ex = Rc::clone(&self.ex);
        let request = phase == Phase::Request;
        let (f, name) = if request {
            (ex.on_request_body.as_ref(), "proxy_on_request_body")
        } else {
            (ex.on_response_body.as_ref(), "proxy_on_response_body")
        };
        let Some(f) = f else {
            return Ok((data, Verdict::Continue));
        };
        self.begin(ctx, Callback::Other);
        let d = self.store.data_mut();
        d.io.active = true;
        d.io.body_only = true;
        d.io.phase = Some(phase);
        let n = len_u32(data.len());
        if request {
            d.io.req_body = data;
        } else {
            d.io.resp_body = data;
        }
        d.io_ctx = ctx;
        let r = guest_call(&mut self.store, self.ticks, f, (ctx, n, u32::from(eos)));
        let d = self.store.data_mut();
        let out = std::mem::take(if request {
            &mut d.io.req_body
        } else {
            &mut d.io.resp_body
        });
        d.io.reset();
        d.io_ctx = 0;
        action(r?, name)?;
        Ok((out, self.verdict(ctx, false)))
    }

    /// `proxy_on_request_trailers` / `proxy_on_response_trailers` (by `txn.phase`)
    /// with the trailers buffered in `txn` (map type 1 / 3).
    pub fn trailers(&mut self, ctx: u32, txn: &mut Txn) -> Result<Verdict, Failure> {
        self.require_stream(ctx)?;
        let ex = Rc::clone(&self.ex);
        let (f, name) = match txn.phase {
            Phase::Request => (ex.on_request_trailers.as_ref(), "proxy_on_request_trailers"),
            Phase::Response => (
                ex.on_response_trailers.as_ref(),
                "proxy_on_response_trailers",
            ),
        };
        let Some(f) = f else {
            return Ok(Verdict::Continue);
        };
        self.begin(ctx, Callback::Other);
        let d = self.store.data_mut();
        d.io.load(txn);
        d.io_ctx = ctx;
        let n = len_u32(match txn.phase {
            Phase::Request => d.io.req_trailers.len(),
            Phase::Response => d.io.resp_trailers.len(),
        });
        let r = guest_call(&mut self.store, self.ticks, f, (ctx, n));
        let d = self.store.data_mut();
        d.io.unload(txn);
        d.io_ctx = 0;
        let pause = action(r?, name)?;
        Ok(self.verdict(ctx, pause))
    }

    /// Delivers finished http calls of stream `ctx` (`proxy_on_http_call_response`),
    /// then reports whether the stream may go on.
    pub fn deliver_calls(&mut self, ctx: u32, txn: &mut Txn) -> Result<Verdict, Failure> {
        let Some(s) = self.store.data().streams.get(&ctx) else {
            return Err(gone());
        };
        let results: Vec<(u32, CallResponse)> = match &s.waker {
            Some(w) => w.results.borrow_mut().drain(..).collect(),
            None => Vec::new(),
        };
        for (token, resp) in results {
            if let Some(s) = self.store.data_mut().streams.get_mut(&ctx) {
                s.inflight = s.inflight.saturating_sub(1);
            }
            let ex = Rc::clone(&self.ex);
            let Some(f) = &ex.on_http_call_response else {
                continue;
            };
            let nh = len_u32(resp.headers.len());
            let nb = len_u32(resp.body.len());
            // As Envoy: an http call belongs to the root context, whatever
            // context made it, and its response is delivered there (the Go
            // SDK panics on any other id). The SDK finds the caller by token
            // and reaches the stream with proxy_set_effective_context; the
            // stream's transaction is loaded for it meanwhile.
            // The stream's own root context: in a VM shared by several
            // plugins, the plugin that made the call.
            let root = self.store.data().root_of(ctx).unwrap_or(ROOT_ID);
            self.begin(root, Callback::CallResponse);
            let d = self.store.data_mut();
            d.call_response = Some(resp);
            d.io.load(txn);
            d.io_ctx = ctx;
            let r = guest_call(&mut self.store, self.ticks, f, (root, token, nh, nb, 0));
            let d = self.store.data_mut();
            d.io.unload(txn);
            d.io_ctx = 0;
            d.call_response = None;
            d.callback = Callback::Other;
            r?;
        }
        self.deliver_parked_grpc(ctx, txn)?;
        Ok(self.verdict(ctx, false))
    }

    /// Takes the http calls stream `ctx` dispatched and not yet started.
    pub fn take_calls(&mut self, ctx: u32) -> Vec<PendingCall> {
        match self.store.data_mut().streams.get_mut(&ctx) {
            Some(s) => {
                let calls = std::mem::take(&mut s.calls);
                s.inflight += calls.len();
                calls
            }
            None => Vec::new(),
        }
    }

    /// The waker of stream `ctx` (results of http calls, `proxy_continue_stream`).
    pub fn waker(&mut self, ctx: u32) -> Option<Rc<StreamWaker>> {
        self.store
            .data_mut()
            .streams
            .get_mut(&ctx)
            .map(|s| Rc::clone(s.waker.get_or_insert_with(Rc::default)))
    }

    /// The pause deadline of stream `ctx` and whether calls are still in flight.
    pub fn pause_state(&self, ctx: u32) -> Option<(Option<Instant>, usize)> {
        self.store
            .data()
            .streams
            .get(&ctx)
            .map(|s| (s.pause_deadline, s.inflight))
    }

    /// `proxy_on_log`, `proxy_on_done` and `proxy_on_delete` for stream `ctx`.
    pub fn finish_stream(&mut self, ctx: u32, txn: &Txn) -> Result<(), Failure> {
        if !self.has_stream(ctx) {
            return Ok(());
        }
        let ex = Rc::clone(&self.ex);
        if let Some(f) = &ex.on_log {
            self.begin(ctx, Callback::Other);
            let d = self.store.data_mut();
            d.io.load_for_log(txn);
            d.io_ctx = ctx;
            let r = guest_call(&mut self.store, self.ticks, f, ctx);
            let d = self.store.data_mut();
            d.io.reset();
            d.io_ctx = 0;
            if let Err(e) = r {
                self.store.data_mut().streams.remove(&ctx);
                return Err(e);
            }
        }
        self.destroy_stream(ctx)
    }

    /// `proxy_on_done` and `proxy_on_delete` for `ctx`, then forgets it.
    pub fn destroy_stream(&mut self, ctx: u32) -> Result<(), Failure> {
        let Some(gone) = self.store.data_mut().streams.remove(&ctx) else {
            return Ok(());
        };
        // The stream's plugin is current for its last callbacks.
        self.store.data_mut().select(gone.root);
        if let Some(pos) = self.order.iter().position(|c| *c == ctx) {
            self.order.remove(pos);
        }
        self.begin(ctx, Callback::Other);
        let ex = Rc::clone(&self.ex);
        if let Some(f) = &ex.on_done {
            guest_call(&mut self.store, self.ticks, f, ctx)?;
        }
        if let Some(f) = &ex.on_delete {
            guest_call(&mut self.store, self.ticks, f, ctx)?;
        }
        Ok(())
    }
}

/// A reply for [`Reply`] built from a guest's local response.
pub(crate) fn local_reply(status: StatusCode, headers: HeaderMap, body: Vec<u8>) -> Reply {
    Reply {
        status,
        headers,
        body: Bytes::from(body),
        error_page: false,
        cause: None,
    }
}

/// The failure of a hook called on a stream context the instance no longer has.
fn gone() -> Failure {
    Failure::new(
        FailureKind::Trap,
        "the request's plugin context is gone (the instance was rebuilt)",
    )
}
