//! A TCP stream's filters (HAProxy's `filter` in `mode tcp`) and the splice
//! that runs each channel's bytes through them before forwarding.
//!
//! Each direction reads into one fixed buffer ([`tunnel::BUF`]); what was
//! read goes through the filters in their order (each sees what it held
//! back plus what the previous one let go), and what the last one lets go
//! is written before the next read. A filter holds at most
//! [`channel::BUFSIZE`] bytes per direction: while it holds that much the
//! direction stops reading (HAProxy's full buffer), until the filter lets
//! bytes go (on a `filter.wake_time` call) or the idle timeout ends the
//! stream. At a direction's end the filters see `end` and what they still
//! hold goes on, then the shutdown is forwarded.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::tunnel::{self, End, Idle, Outcome};
use crate::channel;
use crate::filter::{StreamClose, StreamCx, StreamFilter};
use crate::txn::Txn;

/// One attached filter and what it holds per direction (request, response).
type Attached = (Box<dyn StreamCx>, [Vec<u8>; 2]);

/// The filters attached to one stream, with what each holds per direction.
pub struct Filters {
    list: Vec<Attached>,
}

impl Filters {
    /// Attaches `filters` to a new stream (before its rules) and starts the
    /// request channel's analysis.
    pub fn attach(
        filters: &[std::sync::Arc<dyn StreamFilter>],
        txn: &mut Txn,
    ) -> Result<Filters, StreamClose> {
        let mut list = Vec::with_capacity(filters.len());
        for f in filters {
            if let Some(cx) = f.attach(txn)? {
                list.push((cx, [Vec::new(), Vec::new()]));
            }
        }
        let mut me = Filters { list };
        me.start(txn, false)?;
        Ok(me)
    }

    /// No filter (the stream closes before any could join).
    pub fn empty() -> Filters {
        Filters { list: Vec::new() }
    }

    /// Whether no filter is attached.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Starts the analysis of a channel on every filter.
    pub fn start(&mut self, txn: &mut Txn, resp: bool) -> Result<(), StreamClose> {
        for (f, _) in &mut self.list {
            f.start(txn, resp)?;
        }
        Ok(())
    }

    /// Ends both channels' analysis on every filter (once).
    pub fn end(&mut self, txn: &mut Txn) {
        for (f, _) in &mut self.list {
            f.end(txn);
        }
        self.list.clear();
    }

    /// Bytes the filters hold on a direction.
    fn held(&self, resp: bool) -> usize {
        let d = usize::from(resp);
        self.list
            .iter()
            .map(|(_, h)| h.get(d).map_or(0, Vec::len))
            .sum()
    }

    /// The soonest wake-up a filter asked for on a direction.
    fn wake(&self, resp: bool) -> Option<Duration> {
        self.list.iter().filter_map(|(f, _)| f.wake(resp)).min()
    }

    /// Runs `data` (empty on a wake-up) through the filters; what goes on.
    pub(super) fn pass(
        &mut self,
        txn: &mut Txn,
        resp: bool,
        data: Vec<u8>,
        end: bool,
    ) -> Result<Vec<u8>, StreamClose> {
        let d = usize::from(resp);
        let mut cur = data;
        for (f, held) in &mut self.list {
            let Some(h) = held.get_mut(d) else {
                continue;
            };
            let mut window = std::mem::take(h);
            window.extend_from_slice(&cur);
            if !f.filters(resp) {
                // Not (or no longer) filtering: what it held goes on first.
                cur = window;
                continue;
            }
            let n = f.payload(txn, resp, &mut window, end)?.min(window.len());
            let rest = window.split_off(n);
            if end {
                // Nothing more comes: what the filter held goes on.
                window.extend_from_slice(&rest);
            } else {
                *h = rest;
            }
            cur = window;
        }
        Ok(cur)
    }
}

/// One direction of the filtered splice.
struct Dir {
    buf: Box<[u8]>,
    /// Filtered bytes to write: `out[at..]`.
    out: Vec<u8>,
    at: usize,
    /// The reader ended and the filters saw it.
    eof: bool,
    shut: bool,
    moved: u64,
    /// When the filters asked to be called again.
    wake: Option<Instant>,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            buf: vec![0u8; tunnel::BUF].into_boxed_slice(),
            out: Vec::new(),
            at: 0,
            eof: false,
            shut: false,
            moved: 0,
            wake: None,
        }
    }
}

/// What one step of a direction did.
enum Did {
    Wrote,
    Shut,
    Read(usize),
}

/// Which side failed.
enum Fail {
    Reader,
    Writer,
}

/// Writes pending filtered bytes, forwards the end, or reads at most `room` bytes.
async fn step<R, W>(h: &mut Dir, room: usize, r: &mut R, w: &mut W) -> Result<Did, Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if h.at < h.out.len() {
        let chunk = h.out.get(h.at..).unwrap_or(&[]);
        let n = w.write(chunk).await.map_err(|_| Fail::Writer)?;
        if n == 0 {
            return Err(Fail::Writer);
        }
        h.at += n;
        h.moved += n as u64;
        if h.at >= h.out.len() {
            h.out.clear();
            h.at = 0;
        }
        return Ok(Did::Wrote);
    }
    if h.eof {
        let _ = w.shutdown().await;
        h.shut = true;
        return Ok(Did::Shut);
    }
    let room = room.min(h.buf.len());
    if room == 0 {
        // The filters hold a full buffer: only a wake-up or a timeout moves on.
        std::future::pending::<()>().await;
    }
    let buf = h.buf.get_mut(..room).unwrap_or(&mut []);
    let n = r.read(buf).await.map_err(|_| Fail::Reader)?;
    Ok(Did::Read(n))
}

/// How a filtered splice ended.
pub struct Filtered {
    pub outcome: Outcome,
    /// A filter closed the stream.
    pub refused: bool,
}

/// [`tunnel::splice`] with `filters` on both channels: `prefix` (client data
/// read by the rules) is the request channel's first data, `res_prefix`
/// (server data read by `tcp_response` rules) the response channel's.
#[allow(clippy::too_many_arguments)]
pub async fn splice<C, S>(
    client: &mut C,
    server: &mut S,
    prefix: Vec<u8>,
    res_prefix: Vec<u8>,
    idle: Idle,
    stop: impl std::future::Future<Output = ()>,
    txn: &mut Txn,
    filters: &mut Filters,
) -> Filtered
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Dir::new();
    let mut down = Dir::new();
    let mut refused = false;
    if !prefix.is_empty() {
        match filters.pass(txn, false, prefix, false) {
            Ok(out) => up.out = out,
            Err(StreamClose) => refused = true,
        }
        up.wake = filters.wake(false).map(|d| Instant::now() + d);
    }
    if !res_prefix.is_empty() && !refused {
        match filters.pass(txn, true, res_prefix, false) {
            Ok(out) => down.out = out,
            Err(StreamClose) => refused = true,
        }
        down.wake = filters.wake(true).map(|d| Instant::now() + d);
    }
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    tokio::pin!(stop);
    let now = Instant::now();
    let mut client_deadline = now + idle.tunnel.unwrap_or(idle.client);
    let mut server_deadline = now + idle.tunnel.unwrap_or(idle.server);
    let end = loop {
        if refused {
            break End::Closed;
        }
        if up.shut && down.shut {
            break End::Closed;
        }
        let deadline = client_deadline.min(server_deadline);
        let up_room = channel::BUFSIZE.saturating_sub(filters.held(false));
        let down_room = channel::BUFSIZE.saturating_sub(filters.held(true));
        let far = Instant::now() + Duration::from_secs(86_400);
        let (up_wake, down_wake) = (up.wake.unwrap_or(far), down.wake.unwrap_or(far));
        // Which direction did what; the filters run once the futures are gone.
        let (resp, did) = tokio::select! {
            r = step(&mut up, up_room, &mut cr, &mut sw), if !up.shut => match r {
                Ok(d) => (false, Some(d)),
                Err(Fail::Reader) => break End::ClientError,
                Err(Fail::Writer) => break End::ServerError,
            },
            r = step(&mut down, down_room, &mut sr, &mut cw), if !down.shut => match r {
                Ok(d) => (true, Some(d)),
                Err(Fail::Reader) => break End::ServerError,
                Err(Fail::Writer) => break End::ClientError,
            },
            () = tokio::time::sleep_until(up_wake), if up.wake.is_some() && !up.eof => (false, None),
            () = tokio::time::sleep_until(down_wake), if down.wake.is_some() && !down.eof => (true, None),
            () = tokio::time::sleep_until(deadline) => {
                break if client_deadline <= server_deadline {
                    End::ClientTimeout
                } else {
                    End::ServerTimeout
                };
            }
            () = &mut stop => break End::Shutdown,
        };
        let active = did.is_some();
        let h = if resp { &mut down } else { &mut up };
        let fed = match did {
            Some(Did::Read(0)) => Some((Vec::new(), true)),
            Some(Did::Read(n)) => Some((h.buf.get(..n).unwrap_or(&[]).to_vec(), false)),
            // A wake-up: the filters run again on what they hold.
            None => Some((Vec::new(), false)),
            Some(Did::Wrote | Did::Shut) => None,
        };
        if let Some((data, end)) = fed {
            if end {
                h.eof = true;
            }
            match filters.pass(txn, resp, data, end) {
                Ok(out) => h.out.extend_from_slice(&out),
                Err(StreamClose) => refused = true,
            }
            h.wake = filters.wake(resp).map(|d| Instant::now() + d);
        }
        if active {
            let now = Instant::now();
            client_deadline = now + idle.tunnel.unwrap_or(idle.client);
            server_deadline = now + idle.tunnel.unwrap_or(idle.server);
        }
    };
    Filtered {
        outcome: Outcome {
            to_server: up.moved,
            to_client: down.moved,
            end,
        },
        refused,
    }
}
