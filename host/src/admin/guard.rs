//! Who may do what on the admin API, checked before any endpoint runs:
//!
//! 1. `Host` (TCP only): the bind address, the address the client reached,
//!    `localhost` on loopback, or an `admin_hosts` entry. A page on
//!    `evil.example` whose name was re-pointed at 127.0.0.1 (DNS rebinding)
//!    sends `Host: evil.example` and is refused.
//! 2. The bearer token: every state-changing request (any method but
//!    GET/HEAD) needs it; off loopback, with a token set, so does every read
//!    but `/health`. No token configured: state changes are refused (403).
//! 3. State-changing bodies must be JSON and at most [`MAX_BODY`]: a browser
//!    page can post `text/plain` or a form without a CORS preflight, never
//!    `application/json`.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::Full;
use serde_json::json;

use super::json_response;
use crate::config::admin::{Admin, AdminListen, split_host_port};

/// Largest request body accepted (checked on `Content-Length` here, and
/// while reading a body without one).
pub const MAX_BODY: usize = 1 << 20;

/// Where an admin connection comes from.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    /// `local` is the address the client connected to.
    Tcp {
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// A Unix-socket client: on this host, trusted like loopback.
    Unix,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp { remote, .. } => write!(f, "{remote}"),
            Peer::Unix => f.write_str("unix"),
        }
    }
}

type Refusal = Box<Response<Full<Bytes>>>;

fn refuse(status: StatusCode, msg: impl Into<String>) -> Refusal {
    Box::new(json_response(status, &json!({ "error": msg.into() })))
}

/// Whether `method` may change state (everything but GET and HEAD).
pub fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// Checks `req` against the access policy; `Err` holds the refusal to send.
pub fn check<B>(req: &Request<B>, admin: &Admin, peer: &Peer) -> Result<(), Refusal> {
    if let Peer::Tcp { local, .. } = peer {
        check_host(req, admin, *local)?;
    }
    let writes = changes_state(req.method());
    if writes || (admin.reads_need_token() && req.uri().path() != "/health") {
        check_token(req, admin)?;
    }
    if writes {
        check_body(req.headers())?;
    }
    Ok(())
}

fn check_host<B>(req: &Request<B>, admin: &Admin, local: SocketAddr) -> Result<(), Refusal> {
    let mut values = req.headers().get_all(header::HOST).iter();
    let host = match (values.next(), values.next()) {
        (Some(_), Some(_)) => {
            return Err(refuse(StatusCode::BAD_REQUEST, "more than one Host header"));
        }
        (Some(h), None) => Some(h.to_str().map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                "the Host header is not visible ASCII",
            )
        })?),
        (None, _) => None,
    };
    // An absolute-form target (`GET http://name/ HTTP/1.1`) names a host too.
    let target = req.uri().authority().map(|a| match a.port_u16() {
        Some(p) => format!("{}:{p}", a.host()),
        None => a.host().to_string(),
    });
    if host.is_none() && target.is_none() && req.version() >= Version::HTTP_11 {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "HTTP/1.1 requests need a Host header",
        ));
    }
    for value in host.into_iter().chain(target.as_deref()) {
        let Some((name, port)) = split_host_port(value) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("invalid Host {value:?}: expected NAME[:PORT]"),
            ));
        };
        if !host_allowed(&name, port, admin, local) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!("Host '{value}' is not an admin host; add it to [global] admin_hosts"),
            ));
        }
    }
    Ok(())
}

/// Whether host `name` (lower case) with `port` may address this listener.
/// The port of built-in names is not compared: an SSH tunnel or port
/// forward changes it, and a rebinding attack is told apart by the name.
fn host_allowed(name: &str, port: Option<u16>, admin: &Admin, local: SocketAddr) -> bool {
    if admin
        .hosts
        .iter()
        .any(|h| h.name == name && h.port.is_none_or(|p| Some(p) == port))
    {
        return true;
    }
    let local_ip = local.ip().to_canonical();
    if let Ok(ip) = name.parse::<IpAddr>() {
        let ip = ip.to_canonical();
        let bound = match &admin.listen {
            AdminListen::Tcp(a) => !a.ip().is_unspecified() && a.ip().to_canonical() == ip,
            AdminListen::Unix(_) => false,
        };
        return bound || ip == local_ip;
    }
    name == "localhost" && local_ip.is_loopback()
}

/// The credentials of an `Authorization: Bearer <token>` header, if that is what it holds.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let v = v.as_bytes();
    let space = v.iter().position(|b| *b == b' ')?;
    if !v[..space].eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = v[space..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn check_token<B>(req: &Request<B>, admin: &Admin) -> Result<(), Refusal> {
    let Some(token) = &admin.token else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{} {} changes state and no admin token is configured; set [global] admin_token or admin_token_file to enable state-changing admin requests, then send Authorization: Bearer <token>",
                req.method(),
                req.uri().path()
            ),
        ));
    };
    let (challenge, msg) = match bearer(req.headers()) {
        Some(t) if token.matches(t) => return Ok(()),
        Some(_) => (
            "Bearer realm=\"portcullis admin\", error=\"invalid_token\"",
            "the admin token is wrong",
        ),
        None => (
            "Bearer realm=\"portcullis admin\"",
            "this request needs the admin token: send Authorization: Bearer <token>",
        ),
    };
    let mut r = refuse(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    Err(r)
}

/// `application/json`, optionally with `charset=utf-8`.
fn is_json(v: &HeaderValue) -> bool {
    let Ok(s) = v.to_str() else { return false };
    let mut parts = s.split(';');
    let media = parts.next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
        && parts.all(|p| {
            let p = p.trim();
            p.is_empty()
                || p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("charset")
                        && v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
                })
        })
}

fn check_body(headers: &HeaderMap) -> Result<(), Refusal> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let has_body = length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
    match headers.get(header::CONTENT_TYPE) {
        Some(ct) if !is_json(ct) => {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {:?} is not accepted; state-changing admin requests take application/json bodies",
                    String::from_utf8_lossy(ct.as_bytes())
                ),
            ));
        }
        None if has_body => {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "a request body needs Content-Type: application/json",
            ));
        }
        _ => {}
    }
    if length.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::admin::{AdminHost, AdminTimeouts};

    fn admin(listen: &str, hosts: &[(&str, Option<u16>)]) -> Admin {
        Admin {
            listen: AdminListen::Tcp(listen.parse().expect("addr")),
            location: crate::config::Location {
                file: "x".into(),
                line: 1,
                col: 1,
            },
            token: None,
            hosts: hosts
                .iter()
                .map(|(n, p)| AdminHost {
                    name: (*n).to_string(),
                    port: *p,
                })
                .collect(),
            maxconn: 1,
            timeouts: AdminTimeouts::default(),
        }
    }

    fn allowed(a: &Admin, local: &str, host: &str) -> bool {
        let (n, p) = split_host_port(host).expect("host");
        host_allowed(&n, p, a, local.parse().expect("local"))
    }

    #[test]
    fn hosts() {
        let a = admin(
            "127.0.0.1:9901",
            &[("admin.example", None), ("b.example", Some(8443))],
        );
        let l = "127.0.0.1:9901";
        for ok in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "localhost",
            "LOCALHOST:9901",
            "localhost.:1",
            "admin.example",
            "admin.example:9901",
            "b.example:8443",
        ] {
            assert!(allowed(&a, l, ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "b.example",
            "b.example:9901",
            "10.0.0.1",
            "[::1]",
        ] {
            assert!(!allowed(&a, l, bad), "{bad}");
        }
        let v6 = admin("[::1]:9901", &[]);
        assert!(allowed(&v6, "[::1]:9901", "[::1]:9901"));
        assert!(allowed(&v6, "[::1]:9901", "localhost"));
        // A wildcard bind accepts the address the client reached, not every address.
        let any = admin("0.0.0.0:9901", &[]);
        assert!(allowed(&any, "192.0.2.7:9901", "192.0.2.7:9901"));
        assert!(!allowed(&any, "192.0.2.7:9901", "0.0.0.0"));
        assert!(!allowed(&any, "192.0.2.7:9901", "localhost"));
    }

    #[test]
    fn json_media_types() {
        let j = |s: &'static str| is_json(&HeaderValue::from_static(s));
        assert!(j("application/json"));
        assert!(j("Application/JSON; charset=UTF-8"));
        assert!(j("application/json;charset=\"utf-8\""));
        assert!(!j("application/json; charset=latin1"));
        assert!(!j("text/plain"));
        assert!(!j("application/x-www-form-urlencoded"));
        assert!(!j("application/jsonp"));
    }

    #[test]
    fn bearer_credentials() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), None);
    }
}
