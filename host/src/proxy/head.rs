//! What the proxy settles in a message head before any rule sees it, so that
//! rules judge the request the server will receive (HAProxy does the same in
//! its HTTP/1 and HTTP/2 parsers):
//!
//! - the one `Host`: HTTP/2 `:authority` or an absolute-form URI's authority
//!   becomes the `Host` header; repeated `Host` lines must agree; a `Host`
//!   must be one `host[:port]`;
//! - `CONNECT` is refused (405) unless the frontend opens tunnels (`connect`);
//! - headers a `Connection` header names are removed from the *received*
//!   headers, so that a client (or server) cannot remove what rules or the
//!   proxy add later; the fixed hop-by-hop headers go when forwarding.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Uri, Version};

use super::error::ProxyError;
use crate::txn::Txn;

/// Why a request's host is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHost {
    #[error("several Host headers with different values")]
    Conflicting,
    #[error("the Host header holds a list of values")]
    List,
    #[error("the Host header is not one host[:port]")]
    Invalid,
    #[error("the Host header names another host than the request URI")]
    Mismatch,
    #[error("the request URI carries user information")]
    UserInfo,
}

/// Checks and settles the request head in `txn` before the request rules
/// run; `connect_ok`: the frontend opens CONNECT tunnels (`connect.allow`).
pub fn prepare_request(txn: &mut Txn, connect_ok: bool) -> Result<(), ProxyError> {
    if txn.method == Method::CONNECT && !connect_ok {
        return Err(ProxyError::ConnectMethod);
    }
    settle_host(&txn.uri, txn.version, &mut txn.req_headers)?;
    remove_connection_options(&mut txn.req_headers);
    Ok(())
}

/// The `Host` lines of a message, compared case-insensitively.
struct HostLines<'a> {
    first: Option<&'a HeaderValue>,
    /// More than one line.
    repeated: bool,
    /// Lines with different values.
    conflicting: bool,
}

fn host_lines(headers: &HeaderMap) -> HostLines<'_> {
    let mut lines = headers.get_all(header::HOST).iter();
    let first = lines.next();
    let (mut repeated, mut conflicting) = (false, false);
    if let Some(first) = first {
        for other in lines {
            repeated = true;
            conflicting |= !other.as_bytes().eq_ignore_ascii_case(first.as_bytes());
        }
    }
    HostLines {
        first,
        repeated,
        conflicting,
    }
}

/// Makes the `Host` header the one host the request is for:
/// - origin form: the `Host` header; identical repeated lines are merged into
///   one (HAProxy's HTTP/1 parser), different ones are refused;
/// - HTTP/2: `:authority` becomes `Host`, replacing any `Host` header
///   (`:authority` takes precedence, as in HAProxy);
/// - absolute form (HTTP/1): the URI's authority becomes `Host`; a `Host`
///   header naming another host is refused (HAProxy), one naming the same
///   host with or without the scheme's default port is fine.
///
/// A default port in the URI's authority is dropped (scheme-based
/// normalization, RFC 3986 §6.2.3, as HAProxy does), so
/// `GET http://a.example:80/` is for host `a.example` like `Host: a.example`.
pub fn settle_host(uri: &Uri, version: Version, headers: &mut HeaderMap) -> Result<(), BadHost> {
    let lines = host_lines(headers);
    let Some(authority) = uri.authority() else {
        let Some(host) = lines.first else {
            return Ok(());
        };
        if lines.conflicting {
            return Err(BadHost::Conflicting);
        }
        check_host(host.as_bytes())?;
        if lines.repeated {
            let one = host.clone();
            headers.insert(header::HOST, one);
        }
        return Ok(());
    };
    let target = authority_host(authority, uri.scheme())?;
    check_host(target.as_bytes())?;
    if version != Version::HTTP_2 {
        if lines.conflicting {
            return Err(BadHost::Conflicting);
        }
        if let Some(host) = lines.first
            && !same_host(host.as_bytes(), target, uri.scheme())
        {
            return Err(BadHost::Mismatch);
        }
    }
    let already = !lines.repeated
        && lines
            .first
            .is_some_and(|h| h.as_bytes() == target.as_bytes());
    if !already {
        // Checked above: only visible ASCII, so this cannot fail.
        let value = HeaderValue::from_str(target).map_err(|_| BadHost::Invalid)?;
        headers.insert(header::HOST, value);
    }
    Ok(())
}

/// `host[:port]` of a URI's authority, without the scheme's default port.
fn authority_host<'u>(
    authority: &'u Authority,
    scheme: Option<&Scheme>,
) -> Result<&'u str, BadHost> {
    let text = authority.as_str();
    if text.contains('@') {
        // RFC 9110 §4.2.4: user information is likely there to disguise the host.
        return Err(BadHost::UserInfo);
    }
    let (host, port) = split_port(text);
    Ok(match port {
        Some(p) if parse_port(p).is_some() && parse_port(p) == default_port(scheme) => host,
        _ => text,
    })
}

/// Whether `host` (a `Host` value) names `target` (a normalized authority),
/// ignoring case and the scheme's default port.
fn same_host(host: &[u8], target: &str, scheme: Option<&Scheme>) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let host = match split_port(host) {
        (h, Some(p)) if parse_port(p).is_some() && parse_port(p) == default_port(scheme) => h,
        _ => host,
    };
    host.eq_ignore_ascii_case(target)
}

/// Splits `host[:port]`; the colons of an IPv6 literal are inside brackets.
fn split_port(s: &str) -> (&str, Option<&str>) {
    match s.rfind(':') {
        Some(i) => {
            let (host, rest) = s.split_at(i);
            if rest.contains(']') {
                (s, None)
            } else {
                (host, rest.get(1..))
            }
        }
        None => (s, None),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

fn default_port(scheme: Option<&Scheme>) -> Option<u16> {
    let s = scheme?.as_str();
    if s.eq_ignore_ascii_case("http") {
        Some(80)
    } else if s.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    }
}

/// Bytes a `Host` value may hold: those of a URI authority's host and port
/// (RFC 3986 reg-name, IP literal, `:`), but no `,` (a list: several hosts)
/// and no `@` (user information).
const HOST_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
            );
        b += 1;
    }
    t
};

/// Checks that a `Host` value is one `host[:port]` (RFC 9112 §3.2: else 400).
fn check_host(v: &[u8]) -> Result<(), BadHost> {
    match v.iter().find(|&&b| !HOST_BYTES[usize::from(b)]) {
        None => Ok(()),
        Some(b',') => Err(BadHost::List),
        Some(_) => Err(BadHost::Invalid),
    }
}

/// Names a `Connection` header may not remove: the host and the framing
/// (HAProxy never drops them), and the hop-by-hop headers themselves, which
/// [`strip_hop_by_hop`] removes when forwarding (rules may still read them).
const KEPT_OPTIONS: [&str; 10] = [
    "close",
    "keep-alive",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

/// Removes the headers a received `Connection` header names (RFC 9110
/// §7.6.1). Run on the received message, before any rule, so the sender
/// cannot remove headers that rules set or the proxy adds (`X-Forwarded-For`).
pub fn remove_connection_options(headers: &mut HeaderMap) {
    // Most messages have no Connection header, or one with only `close` /
    // `keep-alive` (every keep-alive response from nginx): one lookup, no
    // copy, nothing removed.
    if !headers
        .get_all(header::CONNECTION)
        .iter()
        .any(names_other_option)
    {
        return;
    }
    // "connection" is kept, so the lines stay where they are while options go.
    let mut i = 0;
    // A cheap clone (a shared buffer), so that the map can change meanwhile.
    while let Some(line) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() {
        for name in line.as_bytes().split(|&b| b == b',') {
            let name = name.trim_ascii();
            if name.is_empty()
                || KEPT_OPTIONS
                    .iter()
                    .any(|k| name.eq_ignore_ascii_case(k.as_bytes()))
            {
                continue;
            }
            if let Ok(name) = std::str::from_utf8(name) {
                // Case-insensitive lookup without allocating; an invalid name matches nothing.
                headers.remove(name);
            }
        }
        i += 1;
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// `Trailer` is not one: it declares the message's trailer fields, end to
/// end (an HTTP/1.1 peer's chunked trailers are sent only when declared).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers before a message is forwarded; hyper frames
/// the body anew on the other side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (cheap comparisons of standard headers) notes
    // which are present: most messages carry none, a keep-alive response
    // `Connection` only, so one hashed removal instead of seven (about
    // 1,000 instructions per proxied response, bench/instructions).
    let mut present = 0u8;
    let mut chunked = false;
    for k in headers.keys() {
        if *k == header::TRANSFER_ENCODING {
            chunked = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present |= 1 << i;
        }
    }
    remove_hop_by_hop(headers, present, chunked);
}

/// Removes what a walk over `headers` found: the [`HOP_BY_HOP`] entries
/// whose bits are set in `present`, and with `chunked` the framing.
fn remove_hop_by_hop(headers: &mut HeaderMap, present: u8, chunked: bool) {
    if chunked {
        headers.remove(header::TRANSFER_ENCODING);
        // Transfer-Encoding wins over a Content-Length in the same message
        // (RFC 9112 §6.3, HAProxy): hyper read the body by its chunks, so the
        // length would be wrong for what is forwarded.
        headers.remove(header::CONTENT_LENGTH);
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// [`remove_connection_options`] then [`strip_hop_by_hop`] on a received
/// response, in one pass over its fields where the `Connection` header
/// names only `close`/`keep-alive` or kept names (nearly every response):
/// one walk instead of a walk plus a hashed `Connection` lookup.
pub fn clean_received_response(headers: &mut HeaderMap) {
    let mut present = 0u8;
    let mut chunked = false;
    for (k, v) in headers.iter() {
        if *k == header::TRANSFER_ENCODING {
            chunked = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            if i == 0 && names_other_option(v) {
                // Options to remove: the general path (rare).
                remove_connection_options(headers);
                strip_hop_by_hop(headers);
                return;
            }
            present |= 1 << i;
        }
    }
    remove_hop_by_hop(headers, present, chunked);
}

/// A `Connection` line names a header to remove (not only kept names).
fn names_other_option(line: &HeaderValue) -> bool {
    line.as_bytes().split(|&b| b == b',').any(|name| {
        let name = name.trim_ascii();
        !name.is_empty()
            && !KEPT_OPTIONS
                .iter()
                .any(|k| name.eq_ignore_ascii_case(k.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn hosts(h: &HeaderMap) -> Vec<&str> {
        h.get_all(header::HOST)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    fn settle(
        uri: &str,
        version: Version,
        pairs: &[(&'static str, &'static str)],
    ) -> Result<HeaderMap, BadHost> {
        let uri: Uri = uri.parse().expect("uri");
        let mut h = headers(pairs);
        settle_host(&uri, version, &mut h).map(|()| h)
    }

    const H1: Version = Version::HTTP_11;

    #[test]
    fn origin_form_host() {
        let h = settle("/a", H1, &[("host", "a.example")]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"]);
        let h = settle("/a", H1, &[("host", "a.example"), ("host", "A.example")]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"], "identical lines merged");
        assert_eq!(
            settle("/a", H1, &[("host", "a.example"), ("host", "b.example")]).err(),
            Some(BadHost::Conflicting)
        );
        assert_eq!(
            settle("/a", H1, &[("host", "a.example, b.example")]).err(),
            Some(BadHost::List)
        );
        assert_eq!(
            settle("/a", H1, &[("host", "a.example b")]).err(),
            Some(BadHost::Invalid)
        );
        assert_eq!(
            settle("/a", H1, &[("host", "u@a.example")]).err(),
            Some(BadHost::Invalid)
        );
        assert!(settle("/a", H1, &[("host", "[::1]:8080")]).is_ok());
        assert!(
            settle("/a", H1, &[("host", "")]).is_ok(),
            "empty Host is allowed"
        );
        assert!(
            hosts(&settle("/a", H1, &[]).expect("ok")).is_empty(),
            "no Host is not invented"
        );
    }

    #[test]
    fn absolute_form_authority_is_the_host() {
        let h = settle("http://a.example/x", H1, &[]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"]);
        let h = settle("http://a.example:80/x", H1, &[]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"], "default port dropped");
        let h = settle("https://a.example:443/x", H1, &[]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"]);
        let h = settle("http://a.example:8080/x", H1, &[]).expect("ok");
        assert_eq!(hosts(&h), ["a.example:8080"]);
        let h = settle("http://a.example:443/x", H1, &[]).expect("ok");
        assert_eq!(hosts(&h), ["a.example:443"], "443 is not http's default");
        let h = settle("http://[::1]:80/x", H1, &[]).expect("ok");
        assert_eq!(hosts(&h), ["[::1]"]);
        let h = settle("http://a.example/x", H1, &[("host", "A.EXAMPLE:80")]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"], "agreeing Host normalized");
        let h = settle("http://a.example:80/x", H1, &[("host", "a.example")]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"]);
        assert_eq!(
            settle("http://a.example/x", H1, &[("host", "b.example")]).err(),
            Some(BadHost::Mismatch)
        );
        assert_eq!(
            settle("http://a.example/x", H1, &[("host", "a.example:8080")]).err(),
            Some(BadHost::Mismatch)
        );
        assert_eq!(
            settle(
                "http://a.example/x",
                H1,
                &[("host", "a.example"), ("host", "b.example")]
            )
            .err(),
            Some(BadHost::Conflicting)
        );
        assert_eq!(
            settle("http://u@a.example/x", H1, &[]).err(),
            Some(BadHost::UserInfo)
        );
    }

    #[test]
    fn http2_authority_wins() {
        let v = Version::HTTP_2;
        let h = settle("http://a.example/x", v, &[]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"]);
        let h = settle(
            "http://a.example/x",
            v,
            &[("host", "b.example"), ("host", "c")],
        )
        .expect("ok");
        assert_eq!(hosts(&h), ["a.example"], ":authority replaces Host");
        let h = settle("http://a.example:80/x", v, &[]).expect("ok");
        assert_eq!(hosts(&h), ["a.example"]);
        assert_eq!(
            settle("http://a.example,b/x", v, &[]).err(),
            Some(BadHost::List)
        );
    }

    #[test]
    fn connection_options_spare_host_and_framing() {
        let mut h = headers(&[
            ("connection", "close, X-Secret, Host, Content-Length"),
            ("connection", "x-other, bad name, keep-alive, Upgrade"),
            ("host", "a.example"),
            ("content-length", "3"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
        ]);
        remove_connection_options(&mut h);
        for gone in ["x-secret", "x-other"] {
            assert!(!h.contains_key(gone), "{gone} named in Connection");
        }
        for kept in [
            "connection",
            "host",
            "content-length",
            "keep-alive",
            "upgrade",
            "x-keep",
        ] {
            assert!(h.contains_key(kept), "{kept} must stay");
        }
        assert_eq!(h.get_all("connection").iter().count(), 2);
    }

    #[test]
    fn hop_by_hop_headers_go_and_chunked_wins_over_length() {
        let mut h = headers(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-keep"));
        assert!(h.contains_key("trailer"), "end to end");
        let mut h = headers(&[("content-length", "5"), ("x-keep", "yes")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "a plain length stays");
        // Only some present (a keep-alive response): those go, the rest stays,
        // repeated lines included.
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("content-length", "2"),
            ("upgrade", "a"),
            ("upgrade", "b"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("content-length") && h.contains_key("x-keep"));
    }

    #[test]
    fn connection_with_only_kept_options_changes_nothing() {
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("connection", " close ,"),
            ("keep-alive", "timeout=5"),
            ("x-keep", "yes"),
        ]);
        let before = h.clone();
        remove_connection_options(&mut h);
        assert_eq!(h, before);
        // A later line that names another header still counts.
        let mut h = headers(&[
            ("connection", "keep-alive"),
            ("connection", "x-gone"),
            ("x-gone", "1"),
        ]);
        remove_connection_options(&mut h);
        assert!(!h.contains_key("x-gone") && h.contains_key("connection"));
    }

    /// The response's one-pass clean does what the two steps do, on the
    /// usual responses and on those whose `Connection` names options.
    #[test]
    fn response_clean_is_the_two_steps() {
        let cases: [&[(&'static str, &'static str)]; 6] = [
            &[("server", "nginx"), ("content-length", "3")],
            &[
                ("connection", "keep-alive"),
                ("content-length", "3"),
                ("keep-alive", "timeout=5"),
            ],
            &[
                ("connection", "close"),
                ("transfer-encoding", "chunked"),
                ("content-length", "9"),
            ],
            &[
                ("connection", "keep-alive"),
                ("connection", "x-gone, te"),
                ("x-gone", "1"),
                ("te", "trailers"),
                ("x-kept", "2"),
            ],
            &[
                ("connection", "x-a"),
                ("x-a", "1"),
                ("upgrade", "h2c"),
                ("proxy-connection", "close"),
            ],
            &[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("trailer", "grpc-status"),
            ],
        ];
        for pairs in cases {
            let mut two = headers(pairs);
            remove_connection_options(&mut two);
            strip_hop_by_hop(&mut two);
            let mut one = headers(pairs);
            clean_received_response(&mut one);
            assert_eq!(one, two, "{pairs:?}");
            assert!(
                !one.contains_key("connection")
                    && !one.contains_key("x-gone")
                    && !one.contains_key("x-a")
            );
        }
    }
}
