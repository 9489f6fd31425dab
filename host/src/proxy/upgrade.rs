//! Binary upgrade: a new `portcullis` process takes over the listening
//! sockets of the running one, as HAProxy's `-x` does, so no connection is
//! refused and no accept queue is lost.
//!
//! The running daemon, started with `--upgrade-socket PATH`, listens on a
//! Unix `SOCK_SEQPACKET` socket there. The new one, started with
//! `--upgrade-from PATH`, connects and receives every listening socket
//! (each worker's `SO_REUSEPORT` socket of every address, and the admin
//! listener) with `SCM_RIGHTS`, one per message with its address; it serves
//! on them (binding what the old one did not have), then sends `READY`. The
//! old daemon then stops accepting (its copies of the sockets close; the
//! sockets live on in the new process), drains its connections and exits.
//!
//! Messages (one record each): `L <addr>` + a listening socket, `A tcp` or
//! `A unix` + the admin listener, `END`; then from the new process `READY`.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use socket2::{Domain, SockAddr, Socket, Type};

/// How long each side waits for the other at each step.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message of the protocol.
const MAX_MESSAGE: usize = 256;

/// The daemon's own copies of its listening sockets, kept to hand over.
#[derive(Debug, Default)]
pub struct Inventory {
    listeners: Mutex<Vec<(SocketAddr, OwnedFd)>>,
    admin: Mutex<Option<(&'static str, OwnedFd)>>,
}

impl Inventory {
    /// Keeps a copy of a listening socket bound to `addr`.
    pub fn add(&self, addr: SocketAddr, fd: BorrowedFd<'_>) {
        match fd.try_clone_to_owned() {
            Ok(fd) => lock(&self.listeners).push((addr, fd)),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot keep a listener for binary upgrades")
            }
        }
    }

    /// Keeps a copy of the admin listener (`kind`: "tcp" or "unix").
    pub fn set_admin(&self, kind: &'static str, fd: BorrowedFd<'_>) {
        if let Ok(fd) = fd.try_clone_to_owned() {
            *lock(&self.admin) = Some((kind, fd));
        }
    }

    /// A reload removed `addr`: its copies close, so the socket really stops
    /// listening once the workers drop theirs (connections are refused, not queued).
    pub fn remove(&self, addr: SocketAddr) {
        lock(&self.listeners).retain(|(a, _)| *a != addr);
    }

    /// Shutdown: every copy closes.
    pub fn clear(&self) {
        lock(&self.listeners).clear();
        lock(&self.admin).take();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sockets received from the old process.
#[derive(Debug, Default)]
pub struct Inherited {
    pub listeners: HashMap<SocketAddr, Vec<std::net::TcpListener>>,
    pub admin: Option<(String, OwnedFd)>,
    /// The connection to the old process, answered `READY` once serving.
    channel: Option<Socket>,
}

impl Inherited {
    /// One inherited socket for `addr`, if any is left.
    pub fn take(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        self.listeners.get_mut(&addr)?.pop()
    }

    /// Tells the old process the new one serves: it stops accepting and drains.
    pub fn ready(&mut self) {
        if let Some(ch) = self.channel.take()
            && let Err(e) = ch.send(b"READY")
        {
            tracing::warn!(error = %e, "cannot tell the old process to stop");
        }
    }
}

/// Why the sockets could not be taken over.
#[derive(Debug, thiserror::Error)]
#[error("cannot take over the listeners of the process at {path}: {message}")]
pub struct UpgradeError {
    path: PathBuf,
    message: String,
}

/// Connects to the old process at `path` and receives its sockets.
pub fn receive(path: &Path) -> Result<Inherited, UpgradeError> {
    let fail = |message: String| UpgradeError {
        path: path.to_path_buf(),
        message,
    };
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(|e| fail(e.to_string()))?;
    let addr = SockAddr::unix(path).map_err(|e| fail(e.to_string()))?;
    sock.connect(&addr).map_err(|e| {
        fail(format!(
            "connect: {e} (is the running daemon started with --upgrade-socket {})?",
            path.display()
        ))
    })?;
    sock.set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| fail(e.to_string()))?;
    let mut out = Inherited::default();
    loop {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = rustix::net::recvmsg(
            &sock,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| fail(format!("receive: {e}")))?;
        let mut fd = None;
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                for f in fds {
                    fd = Some(f);
                }
            }
        }
        let text = std::str::from_utf8(buf.get(..msg.bytes).unwrap_or_default())
            .map_err(|_| fail("a message that is not text".into()))?;
        if msg.bytes == 0 {
            return Err(fail("the old process closed the connection early".into()));
        }
        if text == "END" {
            break;
        }
        let fd = fd.ok_or_else(|| fail(format!("message {text:?} came without its socket")))?;
        if let Some(a) = text.strip_prefix("L ") {
            let a: SocketAddr = a
                .parse()
                .map_err(|_| fail(format!("bad listener address {a:?}")))?;
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
            out.listeners.entry(a).or_default().push(l);
        } else if let Some(kind) = text.strip_prefix("A ") {
            out.admin = Some((kind.to_string(), fd));
        } else {
            return Err(fail(format!("unknown message {text:?}")));
        }
    }
    out.channel = Some(sock);
    Ok(out)
}

/// The old side: listens on `path` for a new process; on a completed
/// hand-over calls `stop` (the daemon then drains and exits). Runs on its
/// own thread (blocking calls, none of them on the request path).
pub fn serve(
    path: PathBuf,
    inventory: std::sync::Arc<Inventory>,
    stop: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    // A file left by an earlier process (or the one this process took over) is replaced.
    let _ = std::fs::remove_file(&path);
    let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    listener.bind(&SockAddr::unix(&path)?)?;
    listener.listen(4)?;
    std::thread::Builder::new()
        .name("upgrade".into())
        .spawn(move || {
            loop {
                let conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "upgrade socket accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                match hand_over(&conn, &inventory) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "a new process took over the listeners: no new connections here, draining");
                        stop();
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "binary upgrade failed; this process keeps serving"),
                }
            }
        })?;
    Ok(())
}

/// Sends every socket of `inventory` on `conn`, then waits for `READY`.
fn hand_over(conn: &Socket, inventory: &Inventory) -> std::io::Result<()> {
    conn.set_read_timeout(Some(STEP_TIMEOUT))?;
    conn.set_write_timeout(Some(STEP_TIMEOUT))?;
    {
        let listeners = lock(&inventory.listeners);
        for (addr, fd) in listeners.iter() {
            send_fd(conn, &format!("L {addr}"), Some(fd.as_fd()))?;
        }
    }
    if let Some((kind, fd)) = lock(&inventory.admin).as_ref() {
        send_fd(conn, &format!("A {kind}"), Some(fd.as_fd()))?;
    }
    send_fd(conn, "END", None)?;
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut &*conn, &mut buf)?;
    let got = buf.get(..n).unwrap_or_default();
    if got == b"READY" {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "the new process ended before it was ready",
        ))
    }
}

fn send_fd(conn: &Socket, text: &str, fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(
        conn,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}
