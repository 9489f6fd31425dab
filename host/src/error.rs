//! The one error model (Pingora's single error type): where a failure came
//! from ([`ErrorSource`]), the status it gets ([`ErrorSource::status`]) and the
//! page sent with it ([`page`], HAProxy 2.6's built-in pages, byte for byte).
//!
//! It sits below `rules`, `lua`, `wasm` and `proxy`: each classifies its own
//! failures into these types, so a Lua error and a Wasm trap cannot drift
//! apart again, and a frontend's or backend's `errorfiles` replace a page for
//! every producer at once (see `ErrorPages`).

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::filter::Reply;
use crate::txn::Phase;

/// A failure the client caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// Malformed request, invalid Host, broken body → 400.
    BadRequest,
    /// A method the proxy does not serve (`CONNECT`) → 405.
    MethodNotAllowed,
    /// Head or body not received in time → 408.
    Timeout,
    /// A request body over a limit → 413.
    BodyTooLarge,
    /// A request line over the limit → 414.
    UriTooLong,
    /// A request head over `max_header_size` / `max_headers` → 431.
    HeadTooLarge,
    /// A destination the frontend does not allow (`CONNECT`) → 403.
    Forbidden,
}

/// A failure on the server side (or no server at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerError {
    /// No backend chosen, or no server up in it → 503.
    Unavailable,
    /// Refused, reset, invalid or unexpected response → 502.
    BadResponse,
    /// Connect or response timeout → 504.
    Timeout,
}

/// Why a plugin (Lua or Wasm) failed; both hosts classify into this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginFailure {
    /// A Lua error, or a plugin that could not be (re)built.
    RuntimeError,
    /// The plugin's memory limit was hit.
    OutOfMemory,
    /// One call used more CPU than `cpu_limit`.
    CpuLimit,
    /// A Wasm trap (unreachable, out-of-bounds, stack overflow, `proc_exit`).
    Trap,
    /// A callback returned a value the API does not define.
    BadReturn,
    /// A body larger than the plugin may buffer, in the phase it was read:
    /// 413 for a request (the client's), 502 for a response (the server's).
    BodyLimit(Phase),
    /// A paused request was not resumed within the pause timeout.
    PauseTimeout,
}

impl PluginFailure {
    /// The access log's `termination` for a request a failing plugin
    /// answered (`fail_closed`).
    pub const fn termination(self) -> &'static str {
        match self {
            PluginFailure::RuntimeError => "plugin_error",
            PluginFailure::OutOfMemory => "plugin_memory_limit",
            PluginFailure::CpuLimit => "plugin_cpu_limit",
            PluginFailure::Trap => "plugin_trap",
            PluginFailure::BadReturn => "plugin_bad_return",
            PluginFailure::BodyLimit(_) => "plugin_body_limit",
            PluginFailure::PauseTimeout => "plugin_pause_timeout",
        }
    }
}

/// Where an error came from; the one input of the status table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Client(ClientError),
    Server(ServerError),
    Plugin(PluginFailure),
}

impl ErrorSource {
    /// The status the client gets: the one table from errors to statuses.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorSource::Client(c) => match c {
                ClientError::BadRequest => StatusCode::BAD_REQUEST,
                ClientError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
                ClientError::Timeout => StatusCode::REQUEST_TIMEOUT,
                ClientError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ClientError::UriTooLong => StatusCode::URI_TOO_LONG,
                ClientError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ClientError::Forbidden => StatusCode::FORBIDDEN,
            },
            ErrorSource::Server(s) => match s {
                ServerError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ServerError::BadResponse => StatusCode::BAD_GATEWAY,
                ServerError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            },
            // As Envoy: over the buffer limit is the client's fault on a
            // request, the server's on a response.
            ErrorSource::Plugin(PluginFailure::BodyLimit(Phase::Request)) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ErrorSource::Plugin(PluginFailure::BodyLimit(Phase::Response)) => {
                StatusCode::BAD_GATEWAY
            }
            // Whatever broke inside a plugin, the client did nothing wrong and
            // no server answered: HAProxy's 500 for a failed Lua action.
            ErrorSource::Plugin(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response for this error: its status with the default page.
    pub fn reply(self) -> Reply {
        let mut r = reply(self.status());
        if let ErrorSource::Plugin(p) = self {
            r.cause = Some(p.termination());
        }
        r
    }
}

/// One built-in error page.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    /// The reason phrase HAProxy writes (e.g. `Request Time-out`, `Bad request`).
    pub reason: &'static str,
    /// The HTML body, exactly as HAProxy 2.6 sends it.
    pub body: &'static str,
}

macro_rules! page {
    ($status:literal, $reason:literal, $text:literal) => {
        Page {
            status: $status,
            reason: $reason,
            body: concat!(
                "<html><body><h1>",
                $status,
                " ",
                $reason,
                "</h1>\n",
                $text,
                "\n</body></html>\n"
            ),
        }
    };
}

/// HAProxy 2.6's built-in pages (`http_err_msgs`, checked against the
/// running binary), then 414 and 431, which HAProxy never sends, in the same
/// shape. Sorted by status.
pub static PAGES: [Page; 19] = [
    page!(200, "OK", "Service ready."),
    page!(400, "Bad request", "Your browser sent an invalid request."),
    page!(
        401,
        "Unauthorized",
        "You need a valid user and password to access this content."
    ),
    page!(
        403,
        "Forbidden",
        "Request forbidden by administrative rules."
    ),
    page!(404, "Not Found", "The resource could not be found."),
    // HAProxy's text has no final full stop.
    page!(
        405,
        "Method Not Allowed",
        "A request was made of a resource using a request method not supported by that resource"
    ),
    // HAProxy's 407 page says "Unauthorized", not "Proxy Authentication Required".
    page!(
        407,
        "Unauthorized",
        "You need a valid user and password to access this content."
    ),
    page!(
        408,
        "Request Time-out",
        "Your browser didn't send a complete request in time."
    ),
    page!(
        410,
        "Gone",
        "The resource is no longer available and will not be available again."
    ),
    page!(
        413,
        "Payload Too Large",
        "The request entity exceeds the maximum allowed."
    ),
    page!(414, "URI Too Long", "The request URI is too long."),
    page!(425, "Too Early", "Your browser sent early data."),
    page!(
        429,
        "Too Many Requests",
        "You have sent too many requests in a given amount of time."
    ),
    page!(
        431,
        "Request Header Fields Too Large",
        "The request header fields are too large or too many."
    ),
    page!(
        500,
        "Internal Server Error",
        "An internal server error occurred."
    ),
    // The leading full stop is HAProxy's.
    page!(
        501,
        "Not Implemented",
        ".The server does not support the functionality required to fulfill the request."
    ),
    page!(
        502,
        "Bad Gateway",
        "The server returned an invalid or incomplete response."
    ),
    page!(
        503,
        "Service Unavailable",
        "No server is available to handle this request."
    ),
    page!(
        504,
        "Gateway Time-out",
        "The server didn't respond in time."
    ),
];

/// The built-in page for `status`, if there is one.
pub fn page(status: StatusCode) -> Option<&'static Page> {
    let code = status.as_u16();
    PAGES
        .binary_search_by_key(&code, |p| p.status)
        .ok()
        .map(|i| &PAGES[i])
}

/// The page body for `status`: the built-in one (no allocation), else the
/// same shape with "The request was denied." (built once by callers at load,
/// e.g. `deny = 418`).
pub fn body(status: StatusCode) -> Bytes {
    match page(status) {
        Some(p) => Bytes::from_static(p.body.as_bytes()),
        None => Bytes::from(format!(
            "<html><body><h1>{} {}</h1>\nThe request was denied.\n</body></html>\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )),
    }
}

/// The reason phrase to send with `status` (HAProxy's where it has a page).
pub fn reason(status: StatusCode) -> &'static str {
    page(status)
        .map(|p| p.reason)
        .or_else(|| status.canonical_reason())
        .unwrap_or("")
}

/// The headers HAProxy sends with its pages.
pub fn page_headers() -> HeaderMap {
    let mut h = HeaderMap::with_capacity(2);
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html"),
    );
    h
}

/// The proxy's error response for `status`: the default page, marked so a
/// frontend's or backend's `errorfiles` / `error_replies` can replace it.
pub fn reply(status: StatusCode) -> Reply {
    Reply {
        status,
        headers: page_headers(),
        body: body(status),
        error_page: true,
        cause: None,
    }
}

/// A complete `Connection: close` HTTP/1.1 response for `status` with its
/// page, for the few errors written below hyper (408 on a slow head, hyper's
/// own 400/414/431). Built once per status.
pub fn raw_response(status: StatusCode) -> Bytes {
    static RAW: LazyLock<Vec<(u16, Bytes)>> = LazyLock::new(|| {
        PAGES
            .iter()
            .filter_map(|p| StatusCode::from_u16(p.status).ok())
            .map(|s| (s.as_u16(), build_raw(s, &page_headers(), &body(s))))
            .collect()
    });
    match RAW.binary_search_by_key(&status.as_u16(), |(s, _)| *s) {
        Ok(i) => RAW[i].1.clone(),
        Err(_) => build_raw(status, &page_headers(), &body(status)),
    }
}

/// Serialises a `Connection: close` HTTP/1.1 response (header names as given).
pub fn build_raw(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-length: {}\r\n",
            status.as_u16(),
            reason(status),
            body.len()
        )
        .as_bytes(),
    );
    for (name, value) in headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Largest `errorfile` accepted (HAProxy's default `tune.bufsize` is 16 KiB;
/// pages are small, and a bigger file is most likely the wrong file).
pub const MAX_ERRORFILE: usize = 64 << 10;

/// A page a frontend or backend puts in place of a default one.
#[derive(Debug, Clone)]
pub struct Override {
    pub status: StatusCode,
    /// Replace the page's `content-type` and `cache-control`.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The whole response, for errors written below hyper (408, 400, 431).
    pub raw: Bytes,
}

impl Override {
    /// An `error_replies` entry: a body with its content type and extra headers.
    pub fn reply(status: StatusCode, headers: HeaderMap, body: Bytes) -> Override {
        let raw = build_raw(status, &headers, &body);
        Override {
            status,
            headers,
            body,
            raw,
        }
    }

    /// Parses an `errorfile` (HAProxy's format: a whole HTTP/1 response, status
    /// line and headers, CRLF or LF line ends) that must answer `status`.
    pub fn parse_errorfile(status: StatusCode, text: &[u8]) -> Result<Override, String> {
        if text.len() > MAX_ERRORFILE {
            return Err(format!(
                "{} bytes, more than the {MAX_ERRORFILE} an error file may have",
                text.len()
            ));
        }
        let (head, body) = split_head(text)
            .ok_or("no end of the header block (an empty line) found; an error file is a whole HTTP response: status line, headers, empty line, body")?;
        let head = std::str::from_utf8(head).map_err(|_| "the head is not UTF-8")?;
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let line = lines.next().unwrap_or("");
        let mut parts = line.splitn(3, ' ');
        let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
            return Err(format!(
                "the first line {line:?} is not an HTTP/1 status line (\"HTTP/1.1 {} {}\")",
                status.as_u16(),
                reason(status)
            ));
        }
        let got = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("{code:?} in the status line is not a status code"))?;
        if got != status {
            return Err(format!(
                "the file answers {}, but it is configured for {}",
                got.as_u16(),
                status.as_u16()
            ));
        }
        let mut headers = HeaderMap::new();
        let mut length = None;
        for l in lines.filter(|l| !l.is_empty()) {
            let (name, value) = l
                .split_once(':')
                .ok_or_else(|| format!("header line {l:?} has no ':'"))?;
            let name = http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("invalid header name {:?}", name.trim()))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("invalid value for header {name}"))?;
            match name {
                // Framing is the proxy's: it sends the length of the body it has.
                http::header::CONTENT_LENGTH => length = Some(value),
                http::header::CONNECTION | http::header::TRANSFER_ENCODING => {}
                _ => {
                    headers.append(name, value);
                }
            }
        }
        if let Some(v) = length
            && v.to_str().ok().and_then(|v| v.parse::<usize>().ok()) != Some(body.len())
        {
            return Err(format!(
                "content-length {v:?} does not match the {} bytes after the head",
                body.len()
            ));
        }
        Ok(Override::reply(
            status,
            headers,
            Bytes::copy_from_slice(body),
        ))
    }
}

/// The head and the body of a raw response (the head ends at the first empty line).
fn split_head(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut start = 0;
    while let Some(nl) = text[start..].iter().position(|b| *b == b'\n') {
        let line = &text[start..start + nl];
        if line.is_empty() || line == b"\r" {
            return Some((&text[..start], &text[start + nl + 1..]));
        }
        start += nl + 1;
    }
    None
}

/// A frontend's or backend's replacement pages (`errorfiles`, `error_replies`).
#[derive(Debug, Clone, Default)]
pub struct ErrorPages(Vec<Override>);

impl ErrorPages {
    /// Adds (or replaces) the page for its status.
    pub fn insert(&mut self, o: Override) {
        self.0.retain(|x| x.status != o.status);
        self.0.push(o);
    }

    /// The page configured for `status`.
    pub fn get(&self, status: StatusCode) -> Option<&Override> {
        self.0.iter().find(|o| o.status == status)
    }

    /// Whether no page is replaced.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Puts the first configured page (`pages` in order: backend, then frontend)
/// in place of an error page `reply`; other replies are left alone.
pub fn apply_overrides<'a>(reply: &mut Reply, pages: impl IntoIterator<Item = &'a ErrorPages>) {
    if !reply.error_page {
        return;
    }
    let Some(o) = pages.into_iter().find_map(|p| p.get(reply.status)) else {
        return;
    };
    reply.headers.remove(http::header::CONTENT_TYPE);
    reply.headers.remove(http::header::CACHE_CONTROL);
    for (name, value) in &o.headers {
        reply.headers.append(name, value.clone());
    }
    reply.body = o.body.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorSource; 18] = [
        ErrorSource::Client(ClientError::BadRequest),
        ErrorSource::Client(ClientError::MethodNotAllowed),
        ErrorSource::Client(ClientError::Timeout),
        ErrorSource::Client(ClientError::BodyTooLarge),
        ErrorSource::Client(ClientError::UriTooLong),
        ErrorSource::Client(ClientError::HeadTooLarge),
        ErrorSource::Server(ServerError::Unavailable),
        ErrorSource::Server(ServerError::BadResponse),
        ErrorSource::Server(ServerError::Timeout),
        ErrorSource::Plugin(PluginFailure::RuntimeError),
        ErrorSource::Plugin(PluginFailure::OutOfMemory),
        ErrorSource::Plugin(PluginFailure::CpuLimit),
        ErrorSource::Plugin(PluginFailure::Trap),
        ErrorSource::Plugin(PluginFailure::BadReturn),
        ErrorSource::Plugin(PluginFailure::BodyLimit(Phase::Request)),
        ErrorSource::Plugin(PluginFailure::BodyLimit(Phase::Response)),
        ErrorSource::Plugin(PluginFailure::PauseTimeout),
        ErrorSource::Client(ClientError::Forbidden),
    ];

    #[test]
    fn every_source_has_a_status_and_a_builtin_page() {
        let expect = [
            400, 405, 408, 413, 414, 431, 503, 502, 504, 500, 500, 500, 500, 500, 413, 502, 500,
            403,
        ];
        for (src, code) in ALL.iter().zip(expect) {
            let st = src.status();
            assert_eq!(st.as_u16(), code, "{src:?}");
            let p = page(st).unwrap_or_else(|| panic!("{src:?}: no page for {code}"));
            let r = src.reply();
            assert_eq!(r.status, st);
            assert!(r.error_page);
            assert_eq!(r.headers["content-type"], "text/html");
            assert_eq!(r.headers["cache-control"], "no-cache");
            assert_eq!(&r.body[..], p.body.as_bytes());
            assert!(p.body.starts_with(&format!("<html><body><h1>{code} ")));
        }
    }

    #[test]
    fn pages_are_haproxys_bytes() {
        // Content lengths as HAProxy 2.6 declares them in `http_err_msgs`.
        let lengths = [
            (200, 58),
            (400, 90),
            (401, 112),
            (403, 93),
            (404, 83),
            (405, 146),
            (407, 112),
            (408, 110),
            (410, 114),
            (413, 106),
            (425, 80),
            (429, 117),
            (500, 97),
            (501, 136),
            (502, 107),
            (503, 107),
            (504, 92),
        ];
        for (code, len) in lengths {
            let p = page(StatusCode::from_u16(code).expect("status")).expect("page");
            assert_eq!(p.body.len(), len, "{code}");
        }
        assert!(PAGES.windows(2).all(|w| w[0].status < w[1].status));
        assert_eq!(
            body(StatusCode::FORBIDDEN),
            "<html><body><h1>403 Forbidden</h1>\nRequest forbidden by administrative rules.\n</body></html>\n"
        );
    }

    #[test]
    fn unknown_status_gets_the_generic_page() {
        let s = StatusCode::from_u16(418).expect("status");
        assert!(page(s).is_none());
        assert_eq!(
            body(s),
            "<html><body><h1>418 I'm a teapot</h1>\nThe request was denied.\n</body></html>\n"
        );
    }

    #[test]
    fn errorfiles_parse_and_replace() {
        let f = b"HTTP/1.0 503 Service Unavailable\r\nCache-Control: no-cache\r\nConnection: close\r\nContent-Type: text/html\r\nX-A: 1\r\n\r\n<p>down</p>\n";
        let o = Override::parse_errorfile(StatusCode::SERVICE_UNAVAILABLE, f).expect("parses");
        assert_eq!(&o.body[..], b"<p>down</p>\n");
        assert_eq!(o.headers["x-a"], "1");
        assert!(o.headers.get("connection").is_none());
        assert!(
            o.raw
                .starts_with(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 12\r\n")
        );
        // LF-only files as people write them by hand.
        assert!(
            Override::parse_errorfile(StatusCode::SERVICE_UNAVAILABLE, b"HTTP/1.1 503 x\n\nbody")
                .is_ok()
        );
        for (bad, why) in [
            (&b"<html>no head</html>"[..], "no end of the header block"),
            (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "configured for 503"),
            (b"HTTP/2 503 x\r\n\r\n", "not an HTTP/1 status line"),
            (b"HTTP/1.1 503 x\r\nbad header\r\n\r\n", "has no ':'"),
            (
                b"HTTP/1.1 503 x\r\ncontent-length: 9\r\n\r\nab",
                "does not match",
            ),
        ] {
            let e =
                Override::parse_errorfile(StatusCode::SERVICE_UNAVAILABLE, bad).expect_err("bad");
            assert!(e.contains(why), "{e}");
        }
        let big = vec![b'a'; MAX_ERRORFILE + 1];
        assert!(Override::parse_errorfile(StatusCode::SERVICE_UNAVAILABLE, &big).is_err());

        let mut be = ErrorPages::default();
        be.insert(o);
        let mut fe = ErrorPages::default();
        fe.insert(Override::reply(
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            Bytes::from_static(b"fe"),
        ));
        let mut r = reply(StatusCode::SERVICE_UNAVAILABLE);
        apply_overrides(&mut r, [&be, &fe]);
        assert_eq!(&r.body[..], b"<p>down</p>\n");
        let mut r = reply(StatusCode::SERVICE_UNAVAILABLE);
        apply_overrides(&mut r, [&fe]);
        assert_eq!(&r.body[..], b"fe");
        assert!(r.headers.get("content-type").is_none());
        // Only error pages are replaced, never a `return` reply of the same status.
        let mut r = Reply::text(StatusCode::SERVICE_UNAVAILABLE, "mine");
        apply_overrides(&mut r, [&be, &fe]);
        assert_eq!(&r.body[..], b"mine");
    }

    #[test]
    fn raw_response_is_haproxys() {
        let r = raw_response(StatusCode::REQUEST_TIMEOUT);
        assert_eq!(
            &r[..],
            &b"HTTP/1.1 408 Request Time-out\r\ncontent-length: 110\r\ncache-control: no-cache\r\ncontent-type: text/html\r\nconnection: close\r\n\r\n<html><body><h1>408 Request Time-out</h1>\nYour browser didn't send a complete request in time.\n</body></html>\n"[..]
        );
        assert!(
            raw_response(StatusCode::IM_A_TEAPOT).starts_with(b"HTTP/1.1 418 I'm a teapot\r\n")
        );
    }
}
