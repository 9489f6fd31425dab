//! One connection of a TCP frontend (`mode = "tcp"`, HAProxy's `mode tcp`):
//! the `tcp_request` rules on the client's first bytes (within
//! `inspect_delay`), then a TCP service answers, or a server of the chosen
//! backend gets the connection and bytes are spliced both ways
//! (`tunnel.rs`); one access-log line at the end.
//!
//! While the rules run, the client stream and what it sent sit in the
//! stream's [`Channels`] (in the transaction, where fetches and Lua's
//! `txn.req`/`txn.res` reach them); what the rules left in the request
//! channel goes to the server first.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::tcp_filter::{self, Filters};
use super::tcp_response::Decision as ResDecision;
use super::tunnel::{self, End, Idle};
use super::worker::{Epoch, FrontendRef, Worker};
use crate::channel::{self, Channels};
use crate::filter::{Filter, Flow};
use crate::rules::tcp::{ACCEPT_CAUSE, TcpAction, Verdict};
use crate::txn::{BackendChoice, Txn};

/// Connection attempts after the first one fails (HAProxy's default `retries 3`).
const RETRIES: u32 = 3;

/// What the rules decided.
enum Decision {
    /// Go to a server.
    Forward,
    /// Close the connection (`reject`, a Lua `act.DENY`, a failure).
    Reject,
    /// A TCP service answered.
    Served,
}

/// The facts the access-log line reports.
struct Record {
    backend: Option<usize>,
    server: Option<usize>,
    to_server: u64,
    to_client: u64,
    connect: Option<Duration>,
    /// Time in the backend queue.
    queue: Option<Duration>,
    /// The address connected to (the server's, or the destination a
    /// `0.0.0.0`/port-0 server follows).
    server_addr: Option<SocketAddr>,
    termination: &'static str,
}

/// Serves one client connection of TCP frontend `frontend`.
pub async fn serve(
    worker: Rc<Worker>,
    frontend: FrontendRef,
    stream: TcpStream,
    client: SocketAddr,
) {
    let start = Instant::now();
    // A TCP connection is one stream: it runs on the generation in force at
    // its start to its end, as an HTTP request does, with its frontend as
    // that generation has it (gone: the connection closes).
    let epoch = worker.current();
    let shared = std::sync::Arc::clone(&epoch.shared);
    let Some(frontend) = frontend.index_in(&shared) else {
        return;
    };
    let (Some(fe), Some(name)) = (
        shared.config.frontends.get(frontend),
        epoch.frontend_names.get(frontend),
    ) else {
        return;
    };
    let timeouts = shared.config.global.timeouts;
    let local = stream.local_addr().unwrap_or(client);
    let channels = Rc::new(Channels::new(
        stream,
        start + fe.inspect_delay,
        timeouts.client,
    ));
    let mut txn = Box::new(Txn::for_stream(client, local, Rc::clone(name)));
    txn.plugin_state
        .put(channel::KEY, Box::new(Rc::clone(&channels)));
    let mut rec = Record {
        backend: None,
        server: None,
        to_server: 0,
        to_client: 0,
        connect: None,
        queue: None,
        server_addr: None,
        termination: "--",
    };
    // The filters join the stream before its rules (HAProxy's stream start).
    let (mut filters, decision) = match Filters::attach(&fe.tcp_filters, &mut txn) {
        Ok(f) => {
            let d = run_rules(fe, &mut txn, &channels, timeouts.client).await;
            (f, d)
        }
        Err(_) => (Filters::empty(), Decision::Reject),
    };
    let _ = txn.plugin_state.take::<Rc<Channels>>(channel::KEY);
    // Log hooks (a Lua action's end resets its plugin's back-off), as an
    // HTTP exchange's chain.log.
    for rule in &fe.tcp_rules {
        if let TcpAction::Run(f) | TcpAction::Service(f) = &rule.action {
            f.on_log(&txn);
        }
    }
    let received = channels.received.get();
    let sent = channels.sent.get();
    rec.to_client = sent;
    match decision {
        Decision::Forward => {}
        Decision::Reject | Decision::Served => {
            rec.termination = if matches!(decision, Decision::Reject) {
                "PR"
            } else {
                "--"
            };
            rec.to_server = 0;
            if let Ok(ch) = Rc::try_unwrap(channels) {
                let (mut s, _) = ch.into_client();
                // Flush and close our side; a client gone already changes nothing.
                let _ = tokio::time::timeout(timeouts.client, s.shutdown()).await;
            }
            filters.end(&mut txn);
            finish(&worker, &epoch, frontend, &txn, start, received, &rec);
            return;
        }
    }
    let Ok(ch) = Rc::try_unwrap(channels) else {
        // A plugin kept the channels past its call: nothing safe to splice.
        rec.termination = "PR";
        filters.end(&mut txn);
        finish(&worker, &epoch, frontend, &txn, start, received, &rec);
        return;
    };
    let (mut client_stream, prefix) = ch.into_client();
    let prefix_len = prefix.len() as u64;
    forward(
        &worker,
        &epoch,
        frontend,
        &mut txn,
        &mut client_stream,
        prefix,
        &mut rec,
        &mut filters,
    )
    .await;
    filters.end(&mut txn);
    // From the client: what the rules read, then what the splice moved past
    // the prefix (filters may change the count; the log shows what was sent).
    let spliced = rec.to_server.saturating_sub(prefix_len);
    finish(
        &worker,
        &epoch,
        frontend,
        &txn,
        start,
        received + spliced,
        &rec,
    );
}

/// Runs filter `f`'s request hook to its end, each wait bounded by `limit`.
pub(super) async fn drive(f: &dyn Filter, txn: &mut Txn, limit: Duration) -> Flow {
    let mut flow = f.on_request(txn);
    loop {
        match flow {
            Flow::Wait(fut) => {
                if tokio::time::timeout(limit, fut).await.is_err() {
                    tracing::debug!(action = f.name(), "tcp_request action wait timed out");
                    return Flow::Respond(crate::filter::Reply::text(
                        http::StatusCode::GATEWAY_TIMEOUT,
                        "",
                    ));
                }
                flow = f.resume(txn);
            }
            other => return other,
        }
    }
}

/// HAProxy's `tcp_inspect_request`: the rules in order; a condition on
/// data that may still grow waits for more of it.
async fn run_rules(
    fe: &crate::runtime::Frontend,
    txn: &mut Txn,
    ch: &Rc<Channels>,
    wait_limit: Duration,
) -> Decision {
    let mut i = 0;
    while let Some(rule) = fe.tcp_rules.get(i) {
        match rule.check(txn, !ch.may_recv()) {
            Verdict::Wait => {
                // Nothing more can come when `fill` fails: the next check is final.
                ch.fill().await;
                continue;
            }
            Verdict::Skip => {
                i += 1;
                continue;
            }
            Verdict::Apply => {}
        }
        match &rule.action {
            TcpAction::Accept => return Decision::Forward,
            // `close` is a tcp_response action (not compiled here).
            TcpAction::Reject | TcpAction::Close => return Decision::Reject,
            TcpAction::Run(f) => match drive(&**f, txn, wait_limit).await {
                Flow::Continue => {}
                Flow::Respond(r) if r.cause == Some(ACCEPT_CAUSE) => return Decision::Forward,
                Flow::Respond(_) | Flow::Wait(_) => return Decision::Reject,
            },
            TcpAction::Service(f) => {
                let _ = drive(&**f, txn, wait_limit).await;
                return Decision::Served;
            }
        }
        i += 1;
    }
    Decision::Forward
}

/// Picks a server of the chosen backend, connects (with retries) and
/// splices (through the stream's filters, if any).
#[allow(clippy::too_many_arguments)]
async fn forward(
    worker: &Rc<Worker>,
    epoch: &Epoch,
    frontend: usize,
    txn: &mut Txn,
    client: &mut TcpStream,
    prefix: Vec<u8>,
    rec: &mut Record,
    filters: &mut Filters,
) {
    let shared = &epoch.shared;
    let config = &shared.config;
    let default = config.frontends[frontend].default_backend;
    let b = match &txn.backend {
        Some(BackendChoice::Index(i)) => Some(*i),
        Some(BackendChoice::Name(name)) => config.backend_index(name).or(default),
        None => default,
    };
    txn.backend = b.map(BackendChoice::Index);
    let Some(b) = b else {
        rec.termination = "SC";
        return;
    };
    rec.backend = Some(b);
    let backend = &config.backends[b];
    let bstate = &shared.backends[b];
    bstate.stats.requests.fetch_add(1, Relaxed);
    let s = match super::queue::acquire(epoch, b, txn.client_addr.ip()).await {
        Ok((s, waited)) => {
            rec.queue = Some(waited);
            s
        }
        Err(super::queue::Unavailable::NoServer) => {
            bstate.stats.no_server.fetch_add(1, Relaxed);
            rec.termination = "SC";
            return;
        }
        Err(e) => {
            // Every server at its maxconn for `timeout queue`, as HAProxy logs it.
            if let super::queue::Unavailable::Timeout(waited) = e {
                rec.queue = Some(waited);
            }
            rec.termination = "sQ";
            return;
        }
    };
    rec.server = Some(s);
    let server = &backend.servers[s];
    let sstate = &bstate.servers[s];
    // Released however the connection ends (leastconn load, `scur`), the
    // slot handed to the oldest queued connection.
    struct Active<'a>(&'a Epoch, usize, usize);
    impl Drop for Active<'_> {
        fn drop(&mut self) {
            super::queue::release(self.0, self.1, self.2);
        }
    }
    let _active = Active(epoch, b, s);
    let started = Instant::now();
    let mut attempt = 0;
    // A server written `0.0.0.0:0` (or with port 0 / `+N`) goes where the
    // connection is headed, as `set_dst`/`set_dst_port` left it.
    let target = server.target(txn.local_addr);
    rec.server_addr = Some(target);
    let mut upstream = loop {
        sstate.connects.fetch_add(1, Relaxed);
        match tokio::time::timeout(backend.connect_timeout, TcpStream::connect(target)).await {
            Ok(Ok(s)) => break s,
            Ok(Err(_)) | Err(_) if attempt < RETRIES => {
                attempt += 1;
                // HAProxy's turn-around timer before a retry.
                tokio::time::sleep(backend.connect_timeout.min(Duration::from_secs(1))).await;
            }
            Ok(Err(_)) => {
                sstate.failures.fetch_add(1, Relaxed);
                rec.termination = "SC";
                return;
            }
            Err(_) => {
                sstate.failures.fetch_add(1, Relaxed);
                rec.termination = "sC";
                return;
            }
        }
    };
    let _ = upstream.set_nodelay(true);
    rec.connect = Some(started.elapsed());
    let idle = Idle {
        client: config.global.timeouts.client,
        server: backend.server_timeout,
        tunnel: backend.tunnel_timeout,
    };
    // The response channel's analysis starts once the server is there.
    if filters.start(txn, true).is_err() {
        rec.termination = "PD";
        return;
    }
    let fe = &config.frontends[frontend];
    let res_rules: Vec<&crate::rules::tcp::TcpRule> = fe
        .tcp_response
        .iter()
        .chain(config.backend_tcp_response.get(b).into_iter().flatten())
        .collect();
    let (mut prefix, mut res_prefix, mut sent) = (prefix, Vec::new(), 0u64);
    if !res_rules.is_empty() {
        // What the client sent so far goes first (through the filters): the
        // server may need it before it answers.
        let first = if filters.is_empty() {
            std::mem::take(&mut prefix)
        } else {
            match filters.pass(txn, false, std::mem::take(&mut prefix), false) {
                Ok(out) => out,
                Err(_) => {
                    rec.termination = "PR";
                    return;
                }
            }
        };
        match tokio::time::timeout(backend.server_timeout, upstream.write_all(&first)).await {
            Ok(Ok(())) => sent += first.len() as u64,
            _ => {
                sstate.failures.fetch_add(1, Relaxed);
                rec.termination = "SD";
                return;
            }
        }
        let ins = super::tcp_response::inspect(
            &res_rules,
            txn,
            client,
            upstream,
            fe.response_inspect_delay
                .max(backend.response_inspect_delay),
            backend.server_timeout,
            config.global.timeouts.client,
            filters.is_empty(),
        )
        .await;
        // Log hooks of the actions (a Lua action's end resets its back-off).
        for rule in &res_rules {
            if let TcpAction::Run(f) = &rule.action {
                f.on_log(txn);
            }
        }
        sent += ins.sent;
        rec.to_server = sent;
        let Some(up) = ins.upstream else {
            rec.termination = "PD";
            return;
        };
        upstream = up;
        match ins.decision {
            ResDecision::Forward => {
                prefix = ins.to_server;
                res_prefix = ins.to_client;
            }
            ResDecision::Reject => {
                rec.termination = "PD";
                return;
            }
            ResDecision::Close => {
                // What the server sent goes to the client, then both close.
                let limit = config.global.timeouts.client;
                if let Ok(Ok(())) =
                    tokio::time::timeout(limit, client.write_all(&ins.to_client)).await
                {
                    rec.to_client += ins.to_client.len() as u64;
                }
                let _ = tokio::time::timeout(limit, client.shutdown()).await;
                return;
            }
        }
    }
    let mut stop = worker.shutdown_signal();
    let stop = async move { stop.wait().await };
    let out = if filters.is_empty() {
        if !res_prefix.is_empty() {
            let limit = config.global.timeouts.client;
            match tokio::time::timeout(limit, client.write_all(&res_prefix)).await {
                Ok(Ok(())) => rec.to_client += res_prefix.len() as u64,
                _ => {
                    rec.termination = "CD";
                    return;
                }
            }
        }
        tunnel::splice(client, &mut upstream, &prefix, idle, stop).await
    } else {
        let f = tcp_filter::splice(
            client,
            &mut upstream,
            prefix,
            res_prefix,
            idle,
            stop,
            txn,
            filters,
        )
        .await;
        if f.refused {
            rec.to_server = sent + f.outcome.to_server;
            rec.to_client += f.outcome.to_client;
            rec.termination = "PD";
            return;
        }
        f.outcome
    };
    rec.to_server = sent + out.to_server;
    rec.to_client += out.to_client;
    if matches!(out.end, End::ServerError | End::ServerTimeout) {
        sstate.failures.fetch_add(1, Relaxed);
    }
    rec.termination = out.end.code();
}

/// Counters, log hooks and the access-log line of a finished connection.
fn finish(
    worker: &Rc<Worker>,
    epoch: &Epoch,
    frontend: usize,
    txn: &Txn,
    start: Instant,
    bytes_in: u64,
    rec: &Record,
) {
    let shared = &epoch.shared;
    let Some(fe) = shared.frontends.get(frontend) else {
        return;
    };
    fe.bytes_in.fetch_add(bytes_in, Relaxed);
    fe.bytes_out.fetch_add(rec.to_client, Relaxed);
    if !worker.access_log.enabled() {
        return;
    }
    let config = &shared.config;
    let backend = rec.backend.and_then(|b| config.backends.get(b));
    let server = backend.zip(rec.server).and_then(|(b, s)| b.servers.get(s));
    if let Some(format) = config
        .frontends
        .get(frontend)
        .and_then(|f| f.log_format.as_ref())
    {
        // HAProxy's custom log-format on a TCP proxy (`option tcplog` is
        // `log_format = "tcplog"`): no request, so method, URI and status are `-`/0.
        let total = start.elapsed();
        let t = rec.termination.as_bytes();
        let facts = crate::rules::LogFacts {
            client: txn.client_addr,
            local: txn.local_addr,
            frontend: &txn.frontend,
            backend: backend.map(|b| &*b.name),
            server: server.map(|s| &*s.name),
            server_addr: rec.server_addr.or(server.map(|s| s.addr)),
            method: "-",
            uri: "-",
            version: "-",
            status: 0,
            bytes_out: rec.to_client,
            bytes_in,
            start: std::time::SystemTime::now()
                .checked_sub(total)
                .unwrap_or(std::time::UNIX_EPOCH),
            total,
            upstream: rec.connect,
            queue: rec.queue,
            connect: rec.connect,
            term: [
                t.first().copied().unwrap_or(b'-'),
                t.get(1).copied().unwrap_or(b'-'),
            ],
        };
        worker
            .access_log
            .write_with(|buf| format.render_log(Some(txn), &facts, buf));
        return;
    }
    let client = txn.client_addr.to_string();
    worker.access_log.write(&super::accesslog::LogRecord {
        client: &client,
        frontend: &txn.frontend,
        backend: backend.map(|b| &*b.name),
        server: server.map(|s| &*s.name),
        method: "TCP",
        path: "-",
        version: "-",
        status: 0,
        bytes: rec.to_client,
        bytes_in,
        total: start.elapsed(),
        upstream: rec.connect,
        termination: rec.termination,
        grpc_status: None,
    });
}
