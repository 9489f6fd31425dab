//! HTTP/2 towards servers: a backend's or server's `proto` (HAProxy's
//! `server ... proto h2`) and the backend's `h2 = { ... }` connection
//! settings (stream and connection caps, PING liveness).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diag::{ConfigError, SourceMap};
use super::units::{ConfigDuration, ConfigSize};

/// Largest `h2.retry_buffer`: a request in flight may hold this much.
const MAX_RETRY_BUFFER: u64 = 16 << 20;

/// How requests are spoken to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProto {
    /// HTTP/1.1 (the default).
    Http1,
    /// HTTP/2: prior knowledge (h2c) on plain TCP, ALPN `h2` over TLS.
    H2,
    /// TLS whose `alpn` offers both `h2` and `http/1.1`: what the
    /// handshake settled decides, connection by connection.
    Negotiate,
}

/// `h2 = { ... }` of a backend, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawH2 {
    /// Most streams (requests) at once on one connection; the server's
    /// SETTINGS_MAX_CONCURRENT_STREAMS lowers it.
    pub max_streams: Option<Spanned<i64>>,
    /// Most HTTP/2 connections per server per worker.
    pub max_connections: Option<Spanned<i64>>,
    /// A PING is sent after this long without a frame from the server.
    pub ping_interval: Option<Spanned<ConfigDuration>>,
    /// A PING unanswered this long closes the connection.
    pub ping_timeout: Option<Spanned<ConfigDuration>>,
    /// Request body bytes kept to send a request again when the server did
    /// not process it (REFUSED_STREAM, GOAWAY); `0`: such requests fail.
    pub retry_buffer: Option<Spanned<ConfigSize>>,
}

/// A backend's HTTP/2 connection settings, checked.
#[derive(Debug, Clone, Copy)]
pub struct H2Settings {
    pub max_streams: u32,
    pub max_connections: usize,
    /// `None`: no PING (liveness is then TCP's and the timeouts').
    pub ping_interval: Option<Duration>,
    pub ping_timeout: Duration,
    /// Most request body bytes kept for a retry on another connection.
    pub retry_buffer: usize,
}

impl Default for H2Settings {
    /// 100 streams per connection (the value most servers advertise, and
    /// HAProxy's `tune.h2.max-concurrent-streams`), 4 connections per server
    /// per worker, a PING after 30 s of silence answered within 10 s, a
    /// request sent again with up to 64 KiB of its body.
    fn default() -> H2Settings {
        H2Settings {
            max_streams: 100,
            max_connections: 4,
            ping_interval: Some(Duration::from_secs(30)),
            ping_timeout: Duration::from_secs(10),
            retry_buffer: 64 << 10,
        }
    }
}

/// Validates `h2 = { ... }`.
pub fn settings(src: &SourceMap, raw: Option<&Spanned<RawH2>>) -> Result<H2Settings, ConfigError> {
    let mut s = H2Settings::default();
    let Some(raw) = raw else {
        return Ok(s);
    };
    let r = raw.get_ref();
    if let Some(n) = &r.max_streams {
        s.max_streams = super::ranged::<u32>(src, n, "h2.max_streams", 1, 65_535)?;
    }
    if let Some(n) = &r.max_connections {
        s.max_connections = super::ranged::<usize>(src, n, "h2.max_connections", 1, 1_000)?;
    }
    if let Some(d) = &r.ping_interval {
        s.ping_interval = match d.get_ref().0 {
            Duration::ZERO => None,
            d => Some(d),
        };
    }
    if let Some(d) = &r.ping_timeout {
        if d.get_ref().0.is_zero() {
            return Err(src.error(
                d.span(),
                "h2.ping_timeout must be above 0 (e.g. \"10s\"); to send no PING at all set h2.ping_interval = \"0s\"",
            ));
        }
        s.ping_timeout = d.get_ref().0;
    }
    if let Some(n) = &r.retry_buffer {
        let v = n.get_ref().0;
        if v > MAX_RETRY_BUFFER {
            return Err(src.error(
                n.span(),
                format!(
                    "h2.retry_buffer of {v} bytes is above the limit of {MAX_RETRY_BUFFER} (16m); each request in flight may hold that much"
                ),
            ));
        }
        s.retry_buffer = usize::try_from(v).unwrap_or(usize::MAX);
    }
    Ok(s)
}

/// A backend's or server's `proto`, with its TLS `alpn` (already checked to
/// name only `h2` and `http/1.1`): `"h2"` needs `h2` in a given `alpn`
/// (absent, `h2` is offered); no `proto` with an `alpn` offering `h2`
/// negotiates (only `h2`: HTTP/2).
pub fn proto(
    src: &SourceMap,
    raw: Option<&Spanned<String>>,
    alpn: Option<&[Vec<u8>]>,
) -> Result<UpstreamProto, ConfigError> {
    let offers = |p: &[u8]| alpn.is_some_and(|a| a.iter().any(|x| x == p));
    match raw {
        None => Ok(match alpn {
            Some(a) if offers(b"h2") && a.len() == 1 => UpstreamProto::H2,
            Some(_) if offers(b"h2") => UpstreamProto::Negotiate,
            _ => UpstreamProto::Http1,
        }),
        Some(p) => match p.get_ref().as_str() {
            "h2" => match alpn {
                Some(a) if !a.is_empty() && !offers(b"h2") => Err(src.error(
                    p.span(),
                    "proto = \"h2\" with a tls.alpn that does not offer \"h2\"; add \"h2\" to tls.alpn (or remove tls.alpn: \"h2\" is then offered)",
                )),
                _ => Ok(UpstreamProto::H2),
            },
            "h1" | "http/1.1" => {
                if offers(b"h2") {
                    return Err(src.error(
                        p.span(),
                        "proto = \"http/1.1\" with a tls.alpn offering \"h2\"; offer only [\"http/1.1\"]",
                    ));
                }
                Ok(UpstreamProto::Http1)
            }
            other => Err(src.error(
                p.span(),
                format!("unknown proto {other:?}; expected \"h2\" (HTTP/2: h2c on TCP, ALPN h2 over TLS) or \"http/1.1\""),
            )),
        },
    }
}
