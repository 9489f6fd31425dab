//! Drives a frontend's filter chain over one phase of an exchange: each
//! filter's head hook (waiting and resuming as it asks), then, if the filter
//! takes that phase's body for this request, its body hooks on the body as
//! it arrives (the one body driver: reading, buffering within the filter's
//! [`BodyLimits`], trailers, streaming taps). The first reply stops the phase.
//!
//! What the phase's filters leave of the body (a buffered part, the unread
//! rest, taps for the rest) becomes the outgoing body through [`Outgoing`].

use std::sync::Arc;

use super::body::PeerBody;
use http::HeaderMap;
use http::header::{CONTENT_LENGTH, HeaderValue};

use crate::error::{ClientError, ErrorSource, PluginFailure, ServerError};
use crate::filter::{BodyFlow, BodyLimits, BodyTap, Filter, Flow, Phases, Reply};
use crate::txn::{BufferedBody, Phase, Txn};

/// Runs `filters` over the current phase of `txn` (`txn.phase`); the first
/// reply stops the chain. Taps of filters that let the body go on mid-stream
/// are added to `taps`, in chain order.
pub async fn run_phase(
    filters: &[Arc<dyn Filter>],
    txn: &mut Txn,
    taps: &mut Vec<Box<dyn BodyTap>>,
) -> Option<Reply> {
    let body_hooks = Phases::body(txn.phase);
    for f in filters {
        if let Some(reply) = run_head(&**f, txn).await {
            return Some(reply);
        }
        if f.phases().contains(body_hooks)
            && let Some(limits) = f.body_limits(txn)
            && let Some(reply) = run_body(&**f, txn, limits, taps).await
        {
            return Some(reply);
        }
    }
    None
}

/// Runs the response hooks of `filters` (a chain's `local_reply` list) on
/// the proxy's own `reply` to a request no server answered, as Envoy runs
/// its encoder filters on a local reply: each filter that created its
/// per-request state in the request phase sees the reply's head and body
/// and may change them; one that did not (placed after the answering rule,
/// its condition false, failed) lets it pass. A hook that answers itself
/// replaces the reply: that new reply is returned (no further hook runs).
pub async fn run_local_reply(
    filters: &[Arc<dyn Filter>],
    txn: &mut Txn,
    reply: &mut Reply,
) -> Option<Reply> {
    if filters.is_empty() {
        return None;
    }
    txn.phase = Phase::Response;
    txn.req_vars.clear();
    txn.status = reply.status;
    txn.resp_headers = std::mem::take(&mut reply.headers);
    txn.resp_body = None;
    let len = reply.body.len();
    txn.resp_buffered = (len > 0).then(|| BufferedBody {
        data: reply.body.to_vec(),
        received: len,
        trailers: HeaderMap::new(),
    });
    let mut taps = Vec::new();
    txn.local_reply = true;
    let answer = run_phase(filters, txn, &mut taps).await;
    txn.local_reply = false;
    reply.status = txn.status;
    reply.headers = std::mem::take(&mut txn.resp_headers);
    match txn.resp_buffered.take() {
        Some(b) if b.data[..] != reply.body[..] => {
            if reply.headers.contains_key(CONTENT_LENGTH) {
                reply
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(b.data.len()));
            }
            reply.body = b.data.into();
        }
        Some(_) => {}
        // A hook emptied the body.
        None if len > 0 && answer.is_none() => {
            reply.body = bytes::Bytes::new();
            if reply.headers.contains_key(CONTENT_LENGTH) {
                reply.headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
            }
        }
        None => {}
    }
    answer
}

/// Runs one filter's head hook to completion, waiting and resuming as it asks.
async fn run_head(filter: &dyn Filter, txn: &mut Txn) -> Option<Reply> {
    let flow = match txn.phase {
        Phase::Request => filter.on_request(txn),
        Phase::Response => filter.on_response(txn),
    };
    settle(filter, txn, flow).await
}

/// Follows `flow` (and the resumes it asks for) to `Continue` or a reply.
async fn settle(filter: &dyn Filter, txn: &mut Txn, mut flow: Flow) -> Option<Reply> {
    loop {
        match flow {
            Flow::Continue => return None,
            Flow::Respond(reply) => return Some(reply),
            Flow::Wait(fut) => {
                fut.await;
                flow = filter.resume(txn);
            }
        }
    }
}

/// The phase's unread body.
fn rest(txn: &mut Txn) -> &mut Option<PeerBody> {
    match txn.phase {
        Phase::Request => &mut txn.req_body,
        Phase::Response => &mut txn.resp_body,
    }
}

/// The phase's body read so far by filters.
fn buffered(txn: &mut Txn) -> &mut Option<BufferedBody> {
    match txn.phase {
        Phase::Request => &mut txn.req_buffered,
        Phase::Response => &mut txn.resp_buffered,
    }
}

/// Feeds the phase's body to one filter's body hooks until it lets the body
/// go on or answers. As in Envoy, a request or response without a body
/// calls no body hook.
async fn run_body(
    filter: &dyn Filter,
    txn: &mut Txn,
    limits: BodyLimits,
    taps: &mut Vec<Box<dyn BodyTap>>,
) -> Option<Reply> {
    let mut first = true;
    loop {
        let unread = rest(txn)
            .take()
            .filter(|b| !http_body::Body::is_end_stream(b));
        let flow = match unread {
            Some(body) => {
                let acc = buffered(txn).take().unwrap_or_default();
                let step = match read_step(body, acc, limits, taps).await {
                    Ok(step) => step,
                    Err(e) => return Some(body_error(txn.phase, e)),
                };
                let trailers = !step.acc.trailers.is_empty();
                *buffered(txn) = Some(step.acc);
                match step.rest {
                    Some(more) => {
                        *rest(txn) = Some(more);
                        filter.on_body(txn, false)
                    }
                    // The filter saw every data frame already: only the trailers are new.
                    None if trailers => filter.on_trailers(txn),
                    None => filter.on_body(txn, true),
                }
            }
            None if first => {
                // An earlier filter read it all (or there is no body).
                let trailers = buffered(txn).as_ref().map(|b| !b.trailers.is_empty())?;
                let flow = filter.on_body(txn, !trailers);
                if trailers && !matches!(flow, BodyFlow::Respond(_)) {
                    filter.on_trailers(txn)
                } else {
                    flow
                }
            }
            // The body ended while the filter buffered: nothing more to give it.
            None => return None,
        };
        first = false;
        match flow {
            BodyFlow::Continue => return None,
            BodyFlow::Stream(tap) => {
                taps.push(tap);
                return None;
            }
            BodyFlow::StopAndBuffer => {}
            BodyFlow::Respond(reply) => return Some(reply),
            BodyFlow::Wait(fut) => {
                fut.await;
                let flow = filter.resume(txn);
                return settle(filter, txn, flow).await;
            }
        }
    }
}

/// Why a body could not be read for a filter's body hooks.
#[derive(Debug)]
enum BodyError {
    /// More than the filter's `BodyLimits::max`.
    TooLarge,
    /// The sender went quiet for longer than `BodyLimits::idle`.
    Timeout,
    /// The body stream failed (reset, malformed chunking).
    Failed(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("body larger than the filter's buffer limit"),
            BodyError::Timeout => f.write_str("timeout while reading the body"),
            BodyError::Failed(e) => write!(f, "body stream failed: {e}"),
        }
    }
}

/// The reply for a body the driver could not read: the filter's limit, or
/// the peer's fault (client in the request phase, server in the response phase).
fn body_error(phase: Phase, err: BodyError) -> Reply {
    tracing::debug!(?phase, "cannot buffer the body for a filter: {err}");
    let request = phase == Phase::Request;
    let source = match (request, err) {
        (_, BodyError::TooLarge) => ErrorSource::Plugin(PluginFailure::BodyLimit(phase)),
        (true, BodyError::Timeout) => ErrorSource::Client(ClientError::Timeout),
        (true, BodyError::Failed(_)) => ErrorSource::Client(ClientError::BadRequest),
        (false, BodyError::Timeout) => ErrorSource::Server(ServerError::Timeout),
        (false, BodyError::Failed(_)) => ErrorSource::Server(ServerError::BadResponse),
    };
    source.reply()
}

/// One step of reading a body: what is buffered so far, and the rest of the
/// stream (`None`: the body ended).
struct ReadStep {
    acc: BufferedBody,
    rest: Option<PeerBody>,
}

/// Reads the next data frame of `body` into `acc` (trailers and the end
/// too), through the taps of filters that let the body go on earlier (so
/// each filter sees the body as the ones before it left it); the buffer may
/// hold at most `limits.max` bytes, each frame must come within `limits.idle`.
async fn read_step(
    mut body: PeerBody,
    mut acc: BufferedBody,
    limits: BodyLimits,
    taps: &mut [Box<dyn BodyTap>],
) -> Result<ReadStep, BodyError> {
    use http_body::Body;
    use http_body_util::BodyExt;
    loop {
        let frame = match tokio::time::timeout(limits.idle, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => return Ok(ReadStep { acc, rest: None }),
            Ok(Some(Err(e))) => return Err(BodyError::Failed(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(mut d) => {
                let eos = body.is_end_stream();
                for t in taps.iter_mut() {
                    d = t
                        .data(d, eos)
                        .map_err(|e| BodyError::Failed(e.to_string()))?;
                }
                if acc.data.len().saturating_add(d.len()) > limits.max {
                    return Err(BodyError::TooLarge);
                }
                acc.data.extend_from_slice(&d);
                acc.received = acc.received.saturating_add(d.len());
                let rest = (!eos).then_some(body);
                return Ok(ReadStep { acc, rest });
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    acc.trailers.extend(t);
                }
            }
        }
    }
}

/// What goes on of a phase's body after its filters ran.
pub enum Outgoing {
    /// No body.
    Empty,
    /// The whole body, read (and maybe rewritten) by filters.
    Buffered(BufferedBody),
    /// Streamed from the peer: the part filters read first (if any), then
    /// the unread rest through the filters' taps.
    Stream {
        prefix: Option<BufferedBody>,
        rest: PeerBody,
        taps: Vec<Box<dyn BodyTap>>,
    },
}

impl Outgoing {
    /// Takes the phase's body out of `txn` and fixes `headers`' framing for
    /// it: an exactly known length for a buffered body; no declared length
    /// where filters may have changed the size of a streamed one.
    pub fn take(
        txn: &mut Txn,
        phase: Phase,
        taps: Vec<Box<dyn BodyTap>>,
        headers: &mut HeaderMap,
    ) -> Outgoing {
        let (buffered, unread) = match phase {
            Phase::Request => (txn.req_buffered.take(), txn.req_body.take()),
            Phase::Response => (txn.resp_buffered.take(), txn.resp_body.take()),
        };
        let ended = unread.as_ref().is_none_or(http_body::Body::is_end_stream);
        match (buffered, unread) {
            (Some(b), _) if ended => {
                // A filter may have changed the body: its length is now exact.
                headers.insert(CONTENT_LENGTH, HeaderValue::from(b.data.len()));
                Outgoing::Buffered(b)
            }
            // A request that announced no body sends none; a response's
            // (HEAD, 204, `Content-Length: 0`) passes as the server framed it.
            (None, Some(_)) if ended && phase == Phase::Request => Outgoing::Empty,
            (prefix, Some(rest)) => {
                // A changed part, or taps that may resize frames, make the
                // declared length wrong: the body goes chunked.
                if prefix.as_ref().is_some_and(|b| b.data.len() != b.received) || !taps.is_empty() {
                    headers.remove(CONTENT_LENGTH);
                }
                Outgoing::Stream { prefix, rest, taps }
            }
            (_, None) => Outgoing::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The chain's semantics, on filters that record what ran.
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use http::StatusCode;

    use super::*;
    use crate::filter::{Chain, WaitFuture};

    /// What a test filter does in its head hook.
    #[derive(Clone, Copy)]
    enum Act {
        Continue,
        Respond(u16),
        /// Wait once, then continue on resume.
        WaitThenContinue,
    }

    struct Probe {
        name: &'static str,
        phases: Phases,
        act: Act,
        log: std::sync::Arc<Mutex<Vec<String>>>,
    }

    impl Probe {
        fn note(&self, what: &str) {
            self.log
                .lock()
                .expect("log")
                .push(format!("{}:{what}", self.name));
        }

        fn head(&self, txn: &mut Txn) -> Flow {
            self.note(match txn.phase {
                Phase::Request => "request",
                Phase::Response => "response",
            });
            match self.act {
                Act::Continue => Flow::Continue,
                Act::Respond(s) => Flow::Respond(Reply::text(
                    StatusCode::from_u16(s).expect("status"),
                    self.name,
                )),
                Act::WaitThenContinue => {
                    let fut: WaitFuture = Box::pin(tokio::task::yield_now());
                    Flow::Wait(fut)
                }
            }
        }
    }

    impl Filter for Probe {
        fn name(&self) -> &str {
            self.name
        }
        fn phases(&self) -> Phases {
            self.phases
        }
        fn on_request(&self, txn: &mut Txn) -> Flow {
            self.head(txn)
        }
        fn on_response(&self, txn: &mut Txn) -> Flow {
            self.head(txn)
        }
        fn resume(&self, _txn: &mut Txn) -> Flow {
            self.note("resume");
            Flow::Continue
        }
        fn on_log(&self, _txn: &Txn) {
            self.note("log");
        }
        fn body_limits(&self, txn: &Txn) -> Option<BodyLimits> {
            self.phases
                .contains(Phases::body(txn.phase))
                .then_some(BodyLimits {
                    max: 1024,
                    idle: std::time::Duration::from_secs(1),
                })
        }
        fn on_body(&self, _txn: &mut Txn, end_of_stream: bool) -> BodyFlow {
            self.note(if end_of_stream { "body-end" } else { "body" });
            BodyFlow::Continue
        }
    }

    type Log = std::sync::Arc<Mutex<Vec<String>>>;

    fn probe(log: &Log, name: &'static str, phases: Phases, act: Act) -> Arc<dyn Filter> {
        Arc::new(Probe {
            name,
            phases,
            act,
            log: Arc::clone(log),
        })
    }

    fn txn(phase: Phase) -> Txn {
        let mut t = Txn::for_test("/", SocketAddr::from(([127, 0, 0, 1], 1)));
        t.phase = phase;
        t
    }

    fn run(filters: &[Arc<dyn Filter>], phase: Phase) -> Option<Reply> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut t = txn(phase);
        let mut taps = Vec::new();
        let r = rt.block_on(run_phase(filters, &mut t, &mut taps));
        assert!(taps.is_empty(), "no body, no tap");
        r
    }

    fn taken(log: &Log) -> Vec<String> {
        std::mem::take(&mut *log.lock().expect("log"))
    }

    #[test]
    fn the_first_reply_stops_the_phase() {
        let log = Log::default();
        let filters = [
            probe(&log, "a", Phases::REQUEST, Act::Continue),
            probe(&log, "b", Phases::REQUEST, Act::Respond(403)),
            probe(&log, "c", Phases::REQUEST, Act::Continue),
        ];
        let r = run(&filters, Phase::Request).expect("b answers");
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert_eq!(&r.body[..], b"b");
        assert_eq!(taken(&log), ["a:request", "b:request"]);
    }

    #[test]
    fn a_waiting_filter_is_resumed_before_the_next_runs() {
        let log = Log::default();
        let filters = [
            probe(&log, "a", Phases::REQUEST, Act::WaitThenContinue),
            probe(&log, "b", Phases::REQUEST, Act::Continue),
        ];
        assert!(run(&filters, Phase::Request).is_none());
        assert_eq!(taken(&log), ["a:request", "a:resume", "b:request"]);
    }

    #[test]
    fn filters_are_placed_by_their_phases() {
        let log = Log::default();
        let both = Phases::REQUEST | Phases::RESPONSE | Phases::LOG;
        let chain = Chain::assemble(
            vec![
                probe(&log, "req", Phases::REQUEST, Act::Continue),
                probe(&log, "span1", both, Act::Continue),
                probe(&log, "span2", both, Act::Continue),
            ],
            vec![probe(
                &log,
                "res",
                Phases::RESPONSE | Phases::LOG,
                Act::Continue,
            )],
        );
        let names =
            |v: &[Arc<dyn Filter>]| v.iter().map(|f| f.name().to_string()).collect::<Vec<_>>();
        assert_eq!(names(&chain.request), ["req", "span1", "span2"]);
        // Request-list filters see the response first, in reverse order (Envoy's encoder order).
        assert_eq!(names(&chain.response), ["span2", "span1", "res"]);
        // Each filter with a log hook once, in declaration order.
        assert_eq!(names(&chain.log), ["span1", "span2", "res"]);
        assert!(run(&chain.response, Phase::Response).is_none());
        assert_eq!(
            taken(&log),
            ["span2:response", "span1:response", "res:response"]
        );
    }

    #[test]
    fn no_body_calls_no_body_hook_but_a_body_read_earlier_does() {
        // As in Envoy, a request without a body calls no body hook.
        let log = Log::default();
        let f = probe(
            &log,
            "a",
            Phases::REQUEST | Phases::REQUEST_BODY,
            Act::Continue,
        );
        assert!(run(std::slice::from_ref(&f), Phase::Request).is_none());
        assert_eq!(taken(&log), ["a:request"]);
        // A body an earlier filter read in full is given whole, as ended.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut t = txn(Phase::Request);
        t.req_buffered = Some(BufferedBody {
            data: b"abc".to_vec(),
            received: 3,
            trailers: HeaderMap::new(),
        });
        let mut taps = Vec::new();
        assert!(rt.block_on(run_phase(&[f], &mut t, &mut taps)).is_none());
        assert_eq!(taken(&log), ["a:request", "a:body-end"]);
    }

    #[test]
    fn outgoing_keeps_or_fixes_the_declared_length() {
        let mut t = txn(Phase::Request);
        t.req_buffered = Some(BufferedBody {
            data: b"rewritten".to_vec(),
            received: 4,
            trailers: HeaderMap::new(),
        });
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(4));
        match Outgoing::take(&mut t, Phase::Request, Vec::new(), &mut headers) {
            Outgoing::Buffered(b) => assert_eq!(b.data, b"rewritten"),
            _ => panic!("a body read in full goes as one buffer"),
        }
        assert_eq!(headers[CONTENT_LENGTH], "9");
        let mut headers = HeaderMap::new();
        assert!(matches!(
            Outgoing::take(&mut t, Phase::Request, Vec::new(), &mut headers),
            Outgoing::Empty
        ));
    }
}
