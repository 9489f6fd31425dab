//! gRPC through the proxy: `te: trailers` kept, `grpc-timeout` read (the
//! gRPC over HTTP/2 spec), and gRPC local replies (Envoy's: HTTP 200 with
//! `grpc-status` and `grpc-message` in a trailers-only response).

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode, Uri};

use crate::filter::Reply;

/// gRPC status DEADLINE_EXCEEDED.
pub const DEADLINE_EXCEEDED: u32 = 4;

/// Whether the request's `te` names `trailers` (the one value forwarded).
pub fn asks_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(header::TE).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            // `trailers` may carry no parameters; `trailers;q=1` is not it.
            t.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
    })
}

/// Whether `headers` are a gRPC message's: `content-type: application/grpc`
/// (or `application/grpc+proto`, `application/grpc;...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The request's `grpc-timeout` (gRPC over HTTP/2: 1 to 8 digits and a
/// unit, `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u`
/// microseconds, `n` nanoseconds); `None` if absent, not a gRPC request,
/// or malformed (the spec's servers then ignore it, as Envoy does).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    if !is_grpc(headers) {
        return None;
    }
    parse_timeout(headers.get("grpc-timeout")?.as_bytes())
}

/// Parses a `grpc-timeout` value (see [`timeout`]).
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for an HTTP status (gRPC's "HTTP to gRPC status code
/// mapping", as Envoy's `Grpc::Utility::httpToGrpcStatus`).
pub fn status_for(http: StatusCode) -> u32 {
    match http.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// Turns a local reply into a gRPC one: HTTP 200, `content-type:
/// application/grpc`, `grpc-status` (`status`, else mapped from the HTTP
/// status) and `grpc-message` (the body's text, percent-encoded), no body.
/// A 2xx reply a rule wrote stays as it is (it may be a gRPC answer itself).
pub fn local_reply(reply: &mut Reply, status: Option<u32>) {
    if reply.status.is_success() {
        return;
    }
    let code = status.unwrap_or_else(|| status_for(reply.status));
    let message = message_for(reply);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&encode_message(&message)) {
        headers.insert("grpc-message", v);
    }
    reply.status = StatusCode::OK;
    reply.headers = headers;
    reply.body = Bytes::new();
    // Not an error page any more: `errorfiles` must not replace it.
    reply.error_page = false;
}

/// The `grpc-message` of a local reply: its body's first line if it is
/// short text, else the HTTP reason (`Forbidden`).
fn message_for(reply: &Reply) -> String {
    let text = std::str::from_utf8(&reply.body).ok().map(|t| {
        // HAProxy's pages are HTML: their text without the tags, on one line.
        let mut out = String::with_capacity(t.len());
        let mut in_tag = false;
        for c in t.chars() {
            match c {
                '<' => in_tag = true,
                '>' if in_tag => {
                    in_tag = false;
                    out.push(' ');
                }
                _ if !in_tag => out.push(c),
                _ => {}
            }
        }
        out.split_whitespace().collect::<Vec<_>>().join(" ")
    });
    match text {
        Some(t) if !t.is_empty() && t.len() <= 256 => t,
        _ => reply
            .status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
    }
}

/// gRPC's percent-encoding of `grpc-message`: bytes outside printable
/// ASCII, and `%`, as `%XX`.
pub fn encode_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    for &b in m.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP/2 request needs `:scheme` and `:authority`: the origin-form URI
/// becomes absolute with the request's Host (which then goes, as
/// `:authority` replaces it), else the server's address.
pub fn absolute_uri<B>(req: &mut Request<B>, tls: bool, server_addr: &str) -> bool {
    let host = req.headers_mut().remove(header::HOST);
    let authority = host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .unwrap_or(server_addr);
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let scheme = if tls { "https" } else { "http" };
    match Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(pq)
        .build()
    {
        Ok(uri) => {
            *req.uri_mut() = uri;
            true
        }
        Err(_) => {
            if let Some(h) = host {
                req.headers_mut().insert(header::HOST, h);
            }
            false
        }
    }
}

/// A gRPC response to an HTTP/1.1 client that accepts trailers: its status
/// trailers are declared in `Trailer` (unless the server declared its own),
/// since HTTP/1.1 chunked trailers go out only when declared.
pub fn declare_trailers(headers: &mut HeaderMap) {
    if is_grpc(headers) && !headers.contains_key(header::TRAILER) {
        headers.insert(
            header::TRAILER,
            HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
        );
    }
}

/// The gRPC status of a response: `grpc-status` in its trailers, else in
/// its headers (a trailers-only response).
pub fn status_of(trailers: Option<&HeaderMap>, headers: &HeaderMap) -> Option<u32> {
    trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(parse_timeout(b"123456789S"), None, "at most 8 digits");
        assert_eq!(parse_timeout(b"S"), None);
        assert_eq!(parse_timeout(b"10s"), None, "units are case-sensitive");
        assert_eq!(parse_timeout(b"-1S"), None);
        assert_eq!(parse_timeout(b""), None);
    }

    #[test]
    fn grpc_content_types() {
        let mut h = HeaderMap::new();
        for (v, yes) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=x", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            assert_eq!(is_grpc(&h), yes, "{v}");
        }
    }

    #[test]
    fn te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        assert!(asks_trailers(&h));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        assert!(!asks_trailers(&h));
    }

    #[test]
    fn local_replies() {
        let mut r = Reply::text(StatusCode::FORBIDDEN, "denied by policy\n");
        local_reply(&mut r, None);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["grpc-status"], "7");
        assert_eq!(r.headers["grpc-message"], "denied by policy");
        assert!(r.body.is_empty());
        let mut r = Reply::text(StatusCode::GATEWAY_TIMEOUT, "");
        local_reply(&mut r, Some(DEADLINE_EXCEEDED));
        assert_eq!(r.headers["grpc-status"], "4");
        assert_eq!(r.headers["grpc-message"], "Gateway Timeout");
        assert_eq!(encode_message("50% é"), "50%25 %C3%A9");
    }
}
