//! The phase sequence of one HTTP exchange, written once: the request
//! phase (head settled, request filters and their body hooks), the
//! proxy's own replies (error pages, the local-reply hooks), the server's
//! answer through the response phase, `http_after_response`, and the end of
//! the exchange (log hooks, stick-table outcomes).
//!
//! It runs over [`Sides`], what the sequence needs from where it runs: the
//! daemon's request handler (`handler.rs`: sockets, pool, balancer, counters,
//! tunnels) and the plugin test harness (`crate::harness`: a canned server
//! response) implement it. So whatever the daemon does between phases (does
//! a response hook see a `deny`? a body hook's reply? trailers?) is what the
//! harness shows, by construction.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Version};
use tokio::time::Instant;

use super::body::ResponseBody;
use super::chain::{Outgoing, run_local_reply, run_phase};
use super::error::ProxyError;
use super::head::{clean_received_response, prepare_request};
use crate::filter::{BodyTap, Chain, Reply};
use crate::runtime::Runtime;
use crate::txn::{BackendChoice, Outcome, Phase, Txn};

/// What [`Sides::forward`] got for the request.
pub(crate) enum Sent {
    /// A server's response: its head is in the transaction (`status`,
    /// `resp_headers`) and its unread body in `resp_body`, for the response
    /// phase (put there by the side, not moved through the sequence).
    Received,
    /// The request opened a tunnel (a `CONNECT`'s `200`): this answer, no
    /// body and no response phase.
    Opened(StatusCode, HeaderMap),
}

/// What the phase sequence asks of the place it runs in.
pub(crate) trait Sides {
    /// The request passed the request phase: sends it (its body as the
    /// request filters left it, through `taps`) to a server of the chosen
    /// backend, or opens the tunnel it asks for, and waits for the answer's head.
    async fn forward(
        &mut self,
        txn: &mut Txn,
        taps: Vec<Box<dyn BodyTap>>,
    ) -> Result<Sent, ProxyError>;

    /// The proxy's own answer to `err` (counted and recorded where this side keeps such things).
    fn fail(&mut self, err: &ProxyError) -> Reply;

    /// A rule's or plugin's `reply` answered the exchange in `phase`.
    fn note_cause(&mut self, reply: &Reply, phase: Phase);

    /// Puts the configured page (or a gRPC reply) in place of `reply`'s, see [`error_pages`].
    fn error_pages(&self, reply: &mut Reply);

    /// The response phase answered instead of the server: its response is abandoned.
    fn abandon(&mut self);

    /// The response phase let a `101` through: the answer that opens the
    /// tunnel if the server's connection switched protocols, else `None`
    /// (the `101` then goes out as any response).
    fn switch(&mut self, txn: &mut Txn) -> Option<(StatusCode, HeaderMap)>;

    /// The server's response goes to the client: the idle timeout and
    /// deadline of its body; `headers` adjusted for the client.
    fn pass(&mut self, txn: &Txn, headers: &mut HeaderMap) -> (Duration, Option<Instant>);
}

/// The answer an exchange sends (before the end-of-exchange work, which
/// runs when its body is over: [`finish`]).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ResponseBody,
    /// HAProxy's reason phrase for an error page, where it differs from the standard one.
    pub reason: Option<&'static str>,
    /// The proxy answered itself (a rule, a plugin, an error page) instead
    /// of passing a server's response.
    pub local: bool,
    /// Why, when a plugin failure answered (the access log's termination).
    pub cause: Option<&'static str>,
}

impl Answer {
    /// A reply of the proxy as the answer; an error page keeps HAProxy's
    /// reason phrase where it differs from the standard one.
    fn reply(reply: Reply) -> Answer {
        let reason = if reply.error_page {
            let r = crate::error::reason(reply.status);
            (Some(r) != reply.status.canonical_reason()).then_some(r)
        } else {
            None
        };
        Answer {
            status: reply.status,
            headers: reply.headers,
            body: ResponseBody::full(reply.body),
            reason,
            local: true,
            cause: reply.cause,
        }
    }

    /// A passed answer with no body (a tunnel's).
    fn opened(status: StatusCode, headers: HeaderMap) -> Answer {
        Answer {
            status,
            headers,
            body: ResponseBody::empty(),
            reason: None,
            local: false,
            cause: None,
        }
    }
}

/// Runs one exchange of `txn` (its request head and unread body in place)
/// through `chain`, from the request phase to the answer `http_after_response`
/// left. `asked` is what the request asks before any rule: `Ok(true)` a
/// `CONNECT` the frontend allows, `Ok(false)` anything else, `Err` a
/// request refused as it came (a tunnel the frontend does not allow).
pub(crate) async fn exchange<S: Sides>(
    chain: &Chain,
    txn: &mut Txn,
    side: &mut S,
    asked: Result<bool, ProxyError>,
) -> Answer {
    // Rules see the request as the server will: Host settled, Connection
    // options gone, CONNECT refused.
    let mut req_taps = Vec::new();
    let early = match asked.and_then(|connect| prepare_request(txn, connect)) {
        Ok(()) => run_phase(&chain.request, txn, &mut req_taps).await,
        Err(err) => {
            let mut reply = side.fail(&err);
            // HTTP/2 has no Connection header (hyper would drop it with a warning).
            if err.closes_connection() && txn.version < Version::HTTP_2 {
                reply
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Some(reply)
        }
    };
    let mut answer = match early {
        Some(mut reply) => {
            side.note_cause(&reply, Phase::Request);
            side.error_pages(&mut reply);
            // Boxed, and only when hooks run: the proxy's own answers are
            // not the path every request's future is sized for.
            if !chain.local_reply.is_empty() {
                Box::pin(local_reply(chain, side, txn, &mut reply)).await;
            }
            Answer::reply(reply)
        }
        None => match side.forward(txn, req_taps).await {
            Ok(Sent::Opened(status, headers)) => Answer::opened(status, headers),
            Ok(Sent::Received) => response(chain, txn, side).await,
            Err(err) => {
                let mut reply = side.fail(&err);
                side.error_pages(&mut reply);
                // Boxed, and only when hooks run: the proxy's own answers are
                // not the path every request's future is sized for.
                if !chain.local_reply.is_empty() {
                    Box::pin(local_reply(chain, side, txn, &mut reply)).await;
                }
                Answer::reply(reply)
            }
        },
    };
    if !chain.after_response.is_empty() {
        after_response(chain, txn, &mut answer).await;
    }
    answer
}

/// The response phase on a server's answer (its head and body in `txn`: [`Sent::Received`]).
async fn response<S: Sides>(chain: &Chain, txn: &mut Txn, side: &mut S) -> Answer {
    txn.phase = Phase::Response;
    txn.req_vars.clear();
    // Before the response rules, so the server cannot remove what they set.
    clean_received_response(&mut txn.resp_headers);
    let mut taps = Vec::new();
    if let Some(mut reply) = run_phase(&chain.response, txn, &mut taps).await {
        side.note_cause(&reply, Phase::Response);
        side.error_pages(&mut reply);
        // The server's body is abandoned: its connection cannot be reused.
        side.abandon();
        drop(txn.resp_body.take());
        drop(txn.resp_buffered.take());
        return Answer::reply(reply);
    }
    if txn.status == StatusCode::SWITCHING_PROTOCOLS
        && let Some((status, headers)) = side.switch(txn)
    {
        return Answer::opened(status, headers);
    }
    let mut headers = std::mem::take(&mut txn.resp_headers);
    let (timeout, deadline) = side.pass(txn, &mut headers);
    let out = Outgoing::take(txn, Phase::Response, taps, &mut headers);
    let mut body = ResponseBody::outgoing(out, timeout);
    if let Some(at) = deadline {
        body = body.with_deadline(at);
    }
    Answer {
        status: txn.status,
        headers,
        body,
        reason: None,
        local: false,
        cause: None,
    }
}

/// The response hooks that see the proxy's own reply to a request no
/// server answered (Envoy's local reply through the encoder filters); a hook
/// that answers instead replaces the reply.
async fn local_reply<S: Sides>(chain: &Chain, side: &mut S, txn: &mut Txn, reply: &mut Reply) {
    if let Some(mut other) = run_local_reply(&chain.local_reply, txn, reply).await {
        side.note_cause(&other, Phase::Response);
        side.error_pages(&mut other);
        *reply = other;
    }
}

/// `http_after_response` (a chain that has some): every response sent, the
/// proxy's own included. The answer changes in place (not moved in and out).
async fn after_response(chain: &Chain, txn: &mut Txn, answer: &mut Answer) {
    txn.phase = Phase::Response;
    txn.status = answer.status;
    txn.resp_headers = std::mem::take(&mut answer.headers);
    let mut taps = Vec::new();
    // The rules there neither answer nor wait (checked at load).
    let _ = run_phase(&chain.after_response, txn, &mut taps).await;
    answer.reason = answer.reason.filter(|_| txn.status == answer.status);
    answer.status = txn.status;
    answer.headers = std::mem::take(&mut txn.resp_headers);
}

/// The end of the exchange, once the answer's body is over (or dropped):
/// the filters' log hooks, then what tracked stick entries learn.
pub(crate) fn finish(chain: &Chain, txn: &mut Txn, outcome: Outcome) {
    txn.outcome = outcome;
    for f in &chain.log {
        f.on_log(txn);
    }
    // Tracked entries learn how the exchange ended (status class, bytes), as HAProxy's stream does.
    txn.sc.record_outcome(&txn.outcome);
}

/// The backend `txn` goes to: a `use_backend` choice (by index, or by a
/// name the config declares), else `frontend`'s `default_backend`.
pub(crate) fn backend_for(rt: &Runtime, frontend: usize, txn: &Txn) -> Option<usize> {
    let default = rt.frontends.get(frontend).and_then(|f| f.default_backend);
    match &txn.backend {
        Some(BackendChoice::Index(i)) => Some(*i),
        Some(BackendChoice::Name(name)) => rt.backend_index(name).or(default),
        None => default,
    }
}

/// Puts the configured page (the backend's once routed, else the
/// frontend's) in place of an error page of the proxy, a rule or a plugin.
/// `grpc`: the request is gRPC on a frontend with `grpc_local_replies`
/// (`Some(true)`: its `grpc-timeout` ran out): the reply becomes a gRPC one.
pub(crate) fn error_pages(
    rt: &Runtime,
    frontend: usize,
    backend: Option<usize>,
    grpc: Option<bool>,
    reply: &mut Reply,
) {
    if let Some(deadline) = grpc {
        // A gRPC client reads grpc-status, not pages (Envoy's gRPC local reply).
        let status = deadline.then_some(super::grpc::DEADLINE_EXCEEDED);
        super::grpc::local_reply(reply, status);
    }
    if !reply.error_page {
        return;
    }
    let backend = backend.and_then(|b| rt.backends.get(b));
    crate::error::apply_overrides(
        reply,
        backend
            .map(|b| &b.errors)
            .into_iter()
            .chain(rt.frontends.get(frontend).map(|f| &f.errors)),
    );
}
