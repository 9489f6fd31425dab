//! `tcp_response` rules of a TCP stream (HAProxy's `tcp-response content`
//! with `tcp-response inspect-delay`): once the server is connected, the
//! rules of the frontend, then of the backend, run on the server's data.
//!
//! As HAProxy's `tcp_inspect_response`, they run when the server's first
//! data arrives (or it closes, or the server timeout passes); a condition
//! that fails on data that may still grow (`res.len`, `res.payload`) waits
//! for more, until the inspect delay (counted from that first data) passes,
//! the buffer is full or the server closed. Meanwhile the client's data
//! keeps flowing to the server (with stream filters it is held, at most
//! one buffer, so the filters see it in order once the rules are done).
//! The server stream and its data sit in a [`Channels`] under
//! [`channel::RES_KEY`] (where `res.*` fetches and Lua's `txn.res` in
//! `tcp-res` actions find it).

use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::channel::{self, Channels};
use crate::filter::Flow;
use crate::rules::tcp::{ACCEPT_CAUSE, TcpAction, TcpRule, Verdict};
use crate::txn::Txn;

/// What the rules decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The stream goes on.
    Forward,
    /// Both connections close (`reject`, a Lua `act.DENY`, a failure).
    Reject,
    /// The server's data so far goes to the client, then both close (`close`).
    Close,
}

/// The outcome of the inspection.
pub struct Inspected {
    pub decision: Decision,
    /// The server stream (None when a plugin kept the channel: nothing safe to go on with).
    pub upstream: Option<TcpStream>,
    /// Server data the rules left, for the client before anything else.
    pub to_client: Vec<u8>,
    /// Client data read meanwhile and not written to the server yet.
    pub to_server: Vec<u8>,
    /// Client bytes written to the server meanwhile.
    pub sent: u64,
}

/// The client-to-server copy that runs while the rules wait. Its state
/// lives here, outside the future, so dropping the future loses nothing.
struct Pump {
    buf: Vec<u8>,
    at: usize,
    /// Write to the server (else only hold, for the stream filters).
    write: bool,
    eof: bool,
    sent: u64,
}

/// Copies (or holds) client data until the client ends, a side fails or
/// the buffer is full; then waits forever (the rules decide the end).
async fn pump(p: &mut Pump, client: &TcpStream, server: &TcpStream) {
    loop {
        if p.write && p.at < p.buf.len() {
            if server.writable().await.is_err() {
                break;
            }
            match server.try_write(p.buf.get(p.at..).unwrap_or(&[])) {
                Ok(n) => {
                    p.at += n;
                    p.sent += n as u64;
                    if p.at >= p.buf.len() {
                        p.buf.clear();
                        p.at = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            continue;
        }
        let room = channel::BUFSIZE.saturating_sub(p.buf.len());
        if p.eof || room == 0 {
            break;
        }
        if client.readable().await.is_err() {
            break;
        }
        let mut chunk = vec![0u8; room.min(16 << 10)];
        match client.try_read(&mut chunk) {
            Ok(0) => p.eof = true,
            Ok(n) => p.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // The splice sees the failure again and ends the stream.
            Err(_) => p.eof = true,
        }
    }
    std::future::pending::<()>().await;
}

/// Runs `rules` on the data `upstream` sends. `delay`: the inspect delay;
/// `first_wait`: how long to wait for the first data (the server timeout);
/// `wait_limit`: how long one plugin wait may take; `write_through`: the
/// client's data goes to the server meanwhile (false: held for the filters).
#[allow(clippy::too_many_arguments)]
pub async fn inspect(
    rules: &[&TcpRule],
    txn: &mut Txn,
    client: &TcpStream,
    upstream: TcpStream,
    delay: Duration,
    first_wait: Duration,
    wait_limit: Duration,
    write_through: bool,
) -> Inspected {
    let ch = Rc::new(Channels::new(
        upstream,
        Instant::now() + first_wait,
        wait_limit,
    ));
    txn.plugin_state
        .put(channel::RES_KEY, Box::new(Rc::clone(&ch)));
    let mut p = Pump {
        buf: Vec::new(),
        at: 0,
        write: write_through,
        eof: false,
        sent: 0,
    };
    let decision = tokio::select! {
        d = async {
            // The rules run on the server's first data (or its end).
            ch.fill().await;
            ch.deadline.set(Instant::now() + delay);
            run(rules, txn, &ch, wait_limit).await
        } => d,
        () = pump(&mut p, client, ch.client()) => Decision::Reject,
    };
    let _ = txn.plugin_state.take::<Rc<Channels>>(channel::RES_KEY);
    let mut to_server = p.buf;
    to_server.drain(..p.at.min(to_server.len()));
    let (upstream, to_client) = match Rc::try_unwrap(ch) {
        Ok(ch) => {
            let (s, data) = ch.into_client();
            (Some(s), data)
        }
        Err(_) => (None, Vec::new()),
    };
    Inspected {
        decision: if upstream.is_some() {
            decision
        } else {
            Decision::Reject
        },
        upstream,
        to_client,
        to_server,
        sent: p.sent,
    }
}

/// HAProxy's `tcp_inspect_response`: the rules in order; a condition on
/// data that may still grow waits for more of it.
async fn run(
    rules: &[&TcpRule],
    txn: &mut Txn,
    ch: &Rc<Channels>,
    wait_limit: Duration,
) -> Decision {
    let mut i = 0;
    while let Some(rule) = rules.get(i) {
        match rule.check(txn, !ch.may_recv()) {
            Verdict::Wait => {
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
            TcpAction::Reject => return Decision::Reject,
            TcpAction::Close => return Decision::Close,
            TcpAction::Run(f) => match super::tcp::drive(&**f, txn, wait_limit).await {
                Flow::Continue => {}
                Flow::Respond(r) if r.cause == Some(ACCEPT_CAUSE) => return Decision::Forward,
                Flow::Respond(_) | Flow::Wait(_) => return Decision::Reject,
            },
            // Not compiled for tcp_response rules.
            TcpAction::Service(_) => return Decision::Reject,
        }
        i += 1;
    }
    Decision::Forward
}
