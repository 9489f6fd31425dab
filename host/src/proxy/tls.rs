//! The TLS step of the accept path: a connection accepted on a TLS bind
//! waits for its first byte holding no buffer, does its handshake within
//! the request-head timeout (`timeout.http_request`: a client that sends
//! nothing, or half a ClientHello, is cut then), and is then served by the
//! same HTTP/1 and HTTP/2 code as plain connections (`conn.rs`).
//!
//! Handshake failures are counted per frontend and per TLS bind address,
//! and logged at debug only: a scanner must not fill the logs.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use super::conn::{self, ClientStream, Opened, Wake};
use super::worker::{FrontendRef, Worker};
use crate::tls::TlsFacts;
use crate::tls::server::Acceptor;

impl ClientStream for Box<TlsStream<TcpStream>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn into_tcp(self) -> TcpStream {
        (*self).into_inner().0
    }

    fn send_now(&mut self, buf: &[u8]) {
        let (tcp, session) = self.get_mut();
        if session.writer().write_all(buf).is_err() {
            return;
        }
        session.send_close_notify();
        let mut out = NowWriter(tcp);
        // Only what the socket takes at once: the caller closes right after.
        while session.wants_write() {
            match session.write_tls(&mut out) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
}

/// Writes to the socket without waiting (`WouldBlock` when it is full).
struct NowWriter<'a>(&'a TcpStream);

impl io::Write for NowWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Serves one connection accepted on a TLS bind of `frontend`.
pub async fn serve(
    worker: Rc<Worker>,
    frontend: FrontendRef,
    stream: TcpStream,
    client: SocketAddr,
    acceptor: Arc<Acceptor>,
) {
    let accepted = Instant::now();
    let local = stream.local_addr().unwrap_or(client);
    // Read now and not held: an open connection must not keep a replaced runtime alive.
    let (deadline, stats, bind) = {
        let epoch = worker.current();
        let Some(stats) = frontend
            .index_in(&epoch.shared)
            .and_then(|i| epoch.shared.frontends.get(i))
            .map(Arc::clone)
        else {
            return;
        };
        (
            accepted + epoch.shared.config.global.timeouts.http_request,
            stats,
            epoch.shared.tls_bind(&frontend.name, local),
        )
    };
    let failed = || {
        stats.tls_handshake_failures.fetch_add(1, Relaxed);
        if let Some(b) = &bind {
            b.tls_handshake_failures.fetch_add(1, Relaxed);
        }
    };
    let mut shutdown = worker.shutdown_signal();
    // Until its first byte the connection holds no buffer, rustls' included.
    if conn::wait_readable(&stream, &worker, None, deadline, &mut shutdown).await == Wake::Close {
        return;
    }
    // A client that closes without a byte (a port probe) is no handshake.
    let mut first = [0u8; 1];
    if matches!(stream.peek(&mut first).await, Ok(0) | Err(_)) {
        return;
    }
    // Boxed (and built in place), as the stream after it: the connection's
    // task would otherwise keep room for rustls' state (over 1 KiB) for its
    // whole life, idle included.
    let handshake = Box::pin(tokio::time::timeout_at(
        deadline,
        tokio_rustls::TlsAcceptor::from(acceptor.current()).accept(stream),
    ));
    let tls = match handshake.await {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err(e)) => {
            failed();
            tracing::debug!(%client, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            failed();
            tracing::debug!(%client, "TLS handshake not complete within timeout.http_request");
            return;
        }
    };
    stats.tls_handshakes.fetch_add(1, Relaxed);
    if let Some(b) = &bind {
        b.tls_handshakes.fetch_add(1, Relaxed);
    }
    let facts = Rc::new(TlsFacts::of(tls.get_ref().1));
    let opened = Opened {
        frontend,
        client,
        local,
        accepted,
        tls: Some(facts),
    };
    conn::serve_tls(worker, opened, tls).await;
}
