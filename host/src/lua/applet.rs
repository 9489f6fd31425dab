//! `AppletHTTP`: the object a Lua HTTP service (`core.register_service(name,
//! "http", fn)`) receives. The service's response is buffered (bounded) and
//! sent as one reply when the service returns.

use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use mlua::{Lua, MultiValue, Table, Value};

use super::api::Args;
use super::ffi::headers_table;
use super::runtime::{CallCx, Instance};
use crate::filter::Reply;
use crate::txn::Txn;

/// Largest response body a service may buffer, and largest request body it may read.
pub(crate) const MAX_BODY: usize = 8 << 20;

/// Why a service's request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    Timeout,
    Client(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => write!(f, "request body larger than {MAX_BODY} bytes"),
            BodyError::Timeout => f.write_str("client timeout while sending the request body"),
            BodyError::Client(e) => write!(f, "client error: {e}"),
        }
    }
}

impl BodyError {
    /// The reply the client gets instead of the service's.
    pub(crate) fn reply(&self) -> Reply {
        use crate::error::{ClientError, ErrorSource, PluginFailure};
        match self {
            BodyError::TooLarge => {
                ErrorSource::Plugin(PluginFailure::BodyLimit(crate::txn::Phase::Request))
            }
            BodyError::Timeout => ErrorSource::Client(ClientError::Timeout),
            BodyError::Client(_) => ErrorSource::Client(ClientError::BadRequest),
        }
        .reply()
    }
}

/// Reads a request body whole (at most [`MAX_BODY`], `idle` between two pieces).
pub(crate) async fn read_body(
    prefix: Vec<u8>,
    mut body: crate::proxy::body::PeerBody,
    idle: std::time::Duration,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    // `prefix`: what an earlier filter (a Wasm body hook) already read and maybe rewrote.
    let mut buf = bytes::BytesMut::from(&prefix[..]);
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(BodyError::Client(e.to_string())),
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if buf.len() + d.len() > MAX_BODY {
                        return Err(BodyError::TooLarge);
                    }
                    buf.extend_from_slice(d);
                }
            }
        }
    }
}

/// The running service's request body and response.
#[derive(Debug)]
pub(crate) struct AppletState {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    started: bool,
    /// The request body, read whole before the service starts.
    req_body: Bytes,
    read: usize,
    /// HTTP/1.1 client: a response without a length is sent chunked.
    http11: bool,
}

impl AppletState {
    /// The buffered response as a reply.
    ///
    /// As in HAProxy, a service that sets no `content-length` answers chunked
    /// to an HTTP/1.1 client (HTTP/1.0 and HTTP/2 have no chunked encoding:
    /// hyper sends the length). With one, the length is the real body's: hyper
    /// writes it, so a wrong value from the script cannot break the framing.
    pub(crate) fn into_reply(self) -> Reply {
        let mut headers = self.headers;
        let had_length = headers.remove(http::header::CONTENT_LENGTH).is_some();
        headers.remove(http::header::TRANSFER_ENCODING);
        if !had_length && self.http11 {
            headers.insert(
                http::header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        Reply {
            status: StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK),
            headers,
            body: Bytes::from(self.body),
            error_page: false,
            cause: None,
        }
    }
}

/// Prepares the applet object and state for a service call on `txn` with its request `body`.
pub(crate) fn begin(inst: &Instance, txn: &Txn, body: Bytes) -> mlua::Result<()> {
    let lua = &inst.lua;
    let a = &inst.applet_obj;
    a.raw_set("method", txn.method.as_str())?;
    a.raw_set("path", txn.uri.path())?;
    a.raw_set("qs", txn.uri.query().unwrap_or(""))?;
    // HAProxy 2.6 shortens only HTTP/1.x versions ("1.0", "1.1"); others
    // keep the start line's text: an HTTP/2 request is "HTTP/2.0".
    a.raw_set(
        "version",
        match txn.version {
            http::Version::HTTP_10 => "1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            _ => "1.1",
        },
    )?;
    let length = txn
        .req_headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .unwrap_or(0);
    a.raw_set("length", length)?;
    a.raw_set("headers", headers_table(lua, &inst.cx, &txn.req_headers)?)?;
    *inst
        .cx
        .applet
        .try_borrow_mut()
        .map_err(|_| mlua::Error::runtime("applet in use"))? = Some(AppletState {
        status: 200,
        headers: HeaderMap::new(),
        body: Vec::new(),
        started: false,
        req_body: body,
        read: 0,
        http11: txn.version == http::Version::HTTP_11,
    });
    Ok(())
}

fn with_state<R>(
    cx: &CallCx,
    f: impl FnOnce(&mut AppletState) -> mlua::Result<R>,
) -> mlua::Result<R> {
    let mut guard = cx
        .applet
        .try_borrow_mut()
        .map_err(|_| mlua::Error::runtime("applet in use"))?;
    let st = guard.as_mut().ok_or_else(|| {
        mlua::Error::runtime("AppletHTTP functions can only be used inside a service")
    })?;
    f(st)
}

fn func<F>(lua: &Lua, f: F) -> mlua::Result<mlua::Function>
where
    F: Fn(&Lua, MultiValue) -> mlua::Result<MultiValue> + 'static,
{
    lua.create_function(move |lua, args: MultiValue| {
        f(lua, args).or_else(|e| super::api::error_values(lua, e))
    })
}

fn one(v: Value) -> mlua::Result<MultiValue> {
    let mut m = MultiValue::with_capacity(1);
    m.push_back(v);
    Ok(m)
}

/// The applet's methods.
pub(crate) fn methods(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "set_status",
            func(lua, move |_, a| {
                let args = Args::new(&a, "set_status", 1);
                let code = args.int(1)?;
                let _reason = args.opt_string(2)?;
                let code = u16::try_from(code)
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| args.err(1, "status must be between 100 and 599"))?;
                with_state(&cx, |s| {
                    s.status = code;
                    Ok(())
                })?;
                Ok(MultiValue::new())
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "add_header",
            func(lua, move |_, a| {
                let args = Args::new(&a, "add_header", 1);
                let name = args.header_name(1)?;
                let value: HeaderValue = args.header_value(2)?;
                with_state(&cx, |s| {
                    s.headers.append(name, value);
                    Ok(())
                })?;
                Ok(MultiValue::new())
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "start_response",
            func(lua, move |_, _| {
                with_state(&cx, |s| {
                    s.started = true;
                    Ok(())
                })?;
                Ok(MultiValue::new())
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "send",
            func(lua, move |_, a| {
                let args = Args::new(&a, "send", 1);
                let data = match args.get(1) {
                    Value::String(s) => s.as_bytes().to_vec(),
                    Value::Integer(i) => i.to_string().into_bytes(),
                    Value::Number(x) => x.to_string().into_bytes(),
                    _ => return Err(args.bad(1, "string")),
                };
                with_state(&cx, |s| {
                    if s.body.len() + data.len() > MAX_BODY {
                        return Err(mlua::Error::runtime(format!(
                            "send: the service's response exceeds {} bytes",
                            MAX_BODY
                        )));
                    }
                    s.started = true;
                    s.body.extend_from_slice(&data);
                    Ok(())
                })?;
                Ok(MultiValue::new())
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "receive",
            func(lua, move |lua, a| {
                let args = Args::new(&a, "receive", 1);
                // As HAProxy: an explicit argument (nil included) must be an
                // integer; none, or a negative one, reads everything.
                if a.len() > 2 {
                    // HAProxy's message (it names the function 'recv').
                    return Err(mlua::Error::runtime(
                        "The 'recv' function requires between 1 and 2 arguments.",
                    ));
                }
                let size = if a.len() >= 2 {
                    Some(args.checkinteger(1)?)
                } else {
                    None
                };
                let chunk = with_state(&cx, |s| {
                    let rest = s.req_body.len() - s.read;
                    let n = match size {
                        Some(n) if n >= 0 => usize::try_from(n).unwrap_or(usize::MAX).min(rest),
                        _ => rest,
                    };
                    let c = s.req_body.slice(s.read..s.read + n);
                    s.read += n;
                    Ok(c)
                })?;
                one(Value::String(lua.create_string(&chunk)?))
            })?,
        )?;
    }
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "getline",
            func(lua, move |lua, _| {
                let line = with_state(&cx, |s| {
                    let rest = &s.req_body[s.read..];
                    let n = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(rest.len(), |i| i + 1);
                    let c = s.req_body.slice(s.read..s.read + n);
                    s.read += n;
                    Ok(c)
                })?;
                one(Value::String(lua.create_string(&line)?))
            })?,
        )?;
    }
    Ok(t)
}
