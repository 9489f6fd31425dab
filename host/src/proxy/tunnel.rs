//! A byte splice both ways between a client and a server stream: TCP-mode
//! connections (`proxy/tcp.rs`), and any upgraded connection (WebSocket)
//! that needs one.
//!
//! Each direction has one fixed buffer ([`BUF`]); a read waits until the
//! previous chunk is fully written, so a slow reader never makes the proxy
//! buffer more. A side that ends its sending half has that half shut on
//! the other side (half-close, as HAProxy forwards a shutdown); the splice
//! ends when both directions ended, on an error, or when nothing moved
//! either way for the idle timeout (HAProxy's `timeout tunnel`, else the
//! client and server timeouts).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Bytes buffered per direction.
pub const BUF: usize = 16 << 10;

/// The idle limits of a splice.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    /// Client inactivity allowed (HAProxy's `timeout client`).
    pub client: Duration,
    /// Server inactivity allowed (HAProxy's `timeout server`).
    pub server: Duration,
    /// When set, the inactivity allowed both ways (HAProxy's `timeout tunnel`).
    pub tunnel: Option<Duration>,
}

/// How a splice ended, in HAProxy's termination-state letters (first:
/// who ended it, second: in which state; `D` = data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed normally: `--`.
    Closed,
    /// The client reset or failed: `CD`.
    ClientError,
    /// The server reset or failed: `SD`.
    ServerError,
    /// No traffic for the client's idle limit: `cD`.
    ClientTimeout,
    /// No traffic for the server's idle limit: `sD`.
    ServerTimeout,
    /// The daemon is stopping: `KD`.
    Shutdown,
}

impl End {
    /// HAProxy's two-letter termination state.
    pub fn code(self) -> &'static str {
        match self {
            End::Closed => "--",
            End::ClientError => "CD",
            End::ServerError => "SD",
            End::ClientTimeout => "cD",
            End::ServerTimeout => "sD",
            End::Shutdown => "KD",
        }
    }
}

/// What a splice moved and how it ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Bytes from the client written to the server.
    pub to_server: u64,
    /// Bytes from the server written to the client.
    pub to_client: u64,
    pub end: End,
}

/// One direction's state.
struct Half {
    buf: Box<[u8]>,
    /// `buf[start..len]` is read and not yet written.
    start: usize,
    len: usize,
    /// The reader reached its end (and the writer was shut once drained).
    eof: bool,
    shut: bool,
    moved: u64,
}

impl Half {
    fn new() -> Half {
        Half {
            buf: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            len: 0,
            eof: false,
            shut: false,
            moved: 0,
        }
    }

    fn done(&self) -> bool {
        self.shut
    }
}

/// Which side failed in one step of a direction.
enum Fail {
    Reader,
    Writer,
}

/// Moves one chunk from `r` to `w` (read if the buffer is empty, else write
/// what is pending); shuts `w` once `r` ended and all was written.
async fn step<R, W>(h: &mut Half, r: &mut R, w: &mut W) -> Result<(), Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if h.start < h.len {
        let chunk = h.buf.get(h.start..h.len).unwrap_or(&[]);
        let n = w.write(chunk).await.map_err(|_| Fail::Writer)?;
        if n == 0 {
            return Err(Fail::Writer);
        }
        h.start += n;
        h.moved += n as u64;
        if h.start == h.len {
            h.start = 0;
            h.len = 0;
        }
        return Ok(());
    }
    if h.eof {
        // Everything written: forward the shutdown (a failure here only
        // means the peer is already gone).
        let _ = w.shutdown().await;
        h.shut = true;
        return Ok(());
    }
    let n = r.read(&mut h.buf).await.map_err(|_| Fail::Reader)?;
    if n == 0 {
        h.eof = true;
    } else {
        h.len = n;
    }
    Ok(())
}

/// Splices `client` and `server` until both directions ended, one side
/// failed, the idle limit passed or `stop` completes (shutdown). `prefix`
/// (client data already read, e.g. by `tcp_request` rules) goes to the
/// server first.
pub async fn splice<C, S>(
    client: &mut C,
    server: &mut S,
    prefix: &[u8],
    idle: Idle,
    stop: impl std::future::Future<Output = ()>,
) -> Outcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Half::new();
    let mut down = Half::new();
    let mut out = Outcome {
        to_server: 0,
        to_client: 0,
        end: End::Closed,
    };
    if !prefix.is_empty() {
        if server.write_all(prefix).await.is_err() {
            out.end = End::ServerError;
            return out;
        }
        out.to_server = prefix.len() as u64;
    }
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    tokio::pin!(stop);
    // Inactivity deadlines, reset by traffic either way: the tunnel timeout
    // for both sides, else each side's own (the first to pass names the
    // side in the termination state).
    let now = Instant::now();
    let mut client_deadline = now + idle.tunnel.unwrap_or(idle.client);
    let mut server_deadline = now + idle.tunnel.unwrap_or(idle.server);
    let end = loop {
        if up.done() && down.done() {
            break End::Closed;
        }
        let up_before = up.moved + u64::from(up.eof);
        let down_before = down.moved + u64::from(down.eof);
        let deadline = client_deadline.min(server_deadline);
        tokio::select! {
            r = step(&mut up, &mut cr, &mut sw), if !up.done() => match r {
                Ok(()) => {}
                Err(Fail::Reader) => break End::ClientError,
                Err(Fail::Writer) => break End::ServerError,
            },
            r = step(&mut down, &mut sr, &mut cw), if !down.done() => match r {
                Ok(()) => {}
                Err(Fail::Reader) => break End::ServerError,
                Err(Fail::Writer) => break End::ClientError,
            },
            () = tokio::time::sleep_until(deadline) => {
                break if client_deadline <= server_deadline {
                    End::ClientTimeout
                } else {
                    End::ServerTimeout
                };
            }
            () = &mut stop => break End::Shutdown,
        }
        if up.moved + u64::from(up.eof) != up_before
            || down.moved + u64::from(down.eof) != down_before
        {
            let now = Instant::now();
            client_deadline = now + idle.tunnel.unwrap_or(idle.client);
            server_deadline = now + idle.tunnel.unwrap_or(idle.server);
        }
    };
    out.to_server += up.moved;
    out.to_client += down.moved;
    out.end = end;
    out
}
