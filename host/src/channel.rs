//! The raw channels of a TCP-mode stream (HAProxy's `Channel` in TCP mode),
//! shared by the proxy's TCP session (`proxy/tcp.rs`), the `tcp_request`
//! fetches (`req.len`, `req.payload`) and Lua's `txn.req`/`txn.res` and
//! `AppletTCP`.
//!
//! The session puts one `Rc<Channels>` in the transaction's plugin state
//! under [`KEY`] while its rules or service run (and one over the server
//! stream under [`RES_KEY`] while its `tcp_response` rules run: the same
//! type, reading the server); whoever needs more client
//! data awaits [`Channels::fill`], bounded by the channel's deadline (the
//! frontend's `inspect_delay` for rules, the client timeout for services)
//! and its buffer cap. Writes to the client go out at once
//! ([`Channels::send`]), each bounded by the client timeout.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::txn::Txn;

/// Where a stream's channels sit in [`Txn::plugin_state`] (no plugin id is this large).
pub const KEY: u64 = u64::MAX - 7;

/// Where the response channel sits while `tcp_response` rules run: a
/// [`Channels`] over the server stream (its buffer holds the server's data).
pub const RES_KEY: u64 = u64::MAX - 8;

/// Most client bytes a channel holds before it counts as full (HAProxy's
/// default `tune.bufsize`).
pub const BUFSIZE: usize = 16 << 10;

/// A TCP stream's client side and its request data not yet forwarded.
#[derive(Debug)]
pub struct Channels {
    client: TcpStream,
    /// Client bytes received and not yet sent to a server: `req[..fwd]`
    /// is the request channel's output (forwarded, or sent with
    /// `txn.req:send`), `req[fwd..]` its input.
    pub req: RefCell<Vec<u8>>,
    pub fwd: Cell<usize>,
    /// The client closed its sending side (or failed).
    pub closed: Cell<bool>,
    /// Until when a reader may wait for more data.
    pub deadline: Cell<Instant>,
    /// How long one write to the client may take.
    pub send_timeout: Duration,
    /// Bytes received from the client.
    pub received: Cell<u64>,
    /// Bytes sent to the client (plugins' `send`s and services' output).
    pub sent: Cell<u64>,
}

impl Channels {
    /// Channels over `client`; readers may wait until `deadline`.
    pub fn new(client: TcpStream, deadline: Instant, send_timeout: Duration) -> Channels {
        Channels {
            client,
            req: RefCell::new(Vec::new()),
            fwd: Cell::new(0),
            closed: Cell::new(false),
            deadline: Cell::new(deadline),
            send_timeout,
            received: Cell::new(0),
            sent: Cell::new(0),
        }
    }

    /// The client stream back, once nobody else holds the channels.
    pub fn into_client(self) -> (TcpStream, Vec<u8>) {
        (self.client, self.req.into_inner())
    }

    /// The client's address as the stream sees it.
    pub fn client(&self) -> &TcpStream {
        &self.client
    }

    /// Bytes in the request channel's input.
    pub fn input(&self) -> usize {
        self.total().saturating_sub(self.fwd.get())
    }

    /// Bytes in the request channel (output and input).
    fn total(&self) -> usize {
        self.req.try_borrow().map_or(0, |b| b.len())
    }

    /// Whether the request channel can take no more data.
    pub fn is_full(&self) -> bool {
        self.total() >= BUFSIZE
    }

    /// Whether more data may still come (not closed, not full, deadline ahead).
    pub fn may_recv(&self) -> bool {
        !self.closed.get() && !self.is_full() && Instant::now() < self.deadline.get()
    }

    /// Reads what the client sends next into the request channel. Returns
    /// false (nothing read) when no more can come: the client closed, the
    /// channel is full, or the deadline passed.
    pub async fn fill(&self) -> bool {
        loop {
            if !self.may_recv() {
                return false;
            }
            match tokio::time::timeout_at(self.deadline.get(), self.client.readable()).await {
                Err(_) => return false,
                Ok(Err(_)) => {
                    self.closed.set(true);
                    return false;
                }
                Ok(Ok(())) => {}
            }
            let room = BUFSIZE.saturating_sub(self.total());
            let mut chunk = vec![0u8; room.min(BUFSIZE)];
            match self.client.try_read(&mut chunk) {
                Ok(0) => {
                    self.closed.set(true);
                    return false;
                }
                Ok(n) => {
                    if let (Ok(mut req), Some(got)) = (self.req.try_borrow_mut(), chunk.get(..n)) {
                        req.extend_from_slice(got);
                    }
                    self.received.set(self.received.get() + n as u64);
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => {
                    self.closed.set(true);
                    return false;
                }
            }
        }
    }

    /// Sends `data` to the client now; false if it failed or timed out.
    pub async fn send(&self, data: &[u8]) -> bool {
        let deadline = Instant::now() + self.send_timeout;
        let mut rest = data;
        while !rest.is_empty() {
            match tokio::time::timeout_at(deadline, self.client.writable()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
            match self.client.try_write(rest) {
                Ok(n) => {
                    self.sent.set(self.sent.get() + n as u64);
                    rest = rest.get(n..).unwrap_or(&[]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// The channels of the stream `txn` belongs to, if it is a TCP-mode one.
pub fn of(txn: &Txn) -> Option<Rc<Channels>> {
    txn.plugin_state.peek::<Rc<Channels>>(KEY).cloned()
}

/// The response channel of the stream `txn` belongs to, while its
/// `tcp_response` rules run.
pub fn of_res(txn: &Txn) -> Option<Rc<Channels>> {
    txn.plugin_state.peek::<Rc<Channels>>(RES_KEY).cloned()
}
