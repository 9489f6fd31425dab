//! Request and response bodies for the test clients and backends: full,
//! empty and channel-fed bodies, the deterministic byte pattern and the
//! FNV hash used to compare what went through.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use super::{Body, BoxError};

// ---------------------------------------------------------------------------
// Bodies and hashing
// ---------------------------------------------------------------------------

/// FNV-1a, 64 bit: a small deterministic hash to compare bodies.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

pub fn fnv_hex(data: &[u8]) -> String {
    let mut h = Fnv::new();
    h.update(data);
    h.hex()
}

/// Byte `i` of the deterministic test pattern.
pub fn pattern_byte(i: usize) -> u8 {
    ((i * 7 + i / 251) % 251) as u8
}

/// The first `n` bytes of the test pattern.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body fed through a channel; no size hint, so HTTP/1.1 sends it chunked.
pub struct ChanBody {
    rx: mpsc::Receiver<Bytes>,
}

impl HttpBody for ChanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A streaming body and the sender that feeds it (drop the sender to end it).
pub fn chan_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChanBody { rx }.boxed())
}
