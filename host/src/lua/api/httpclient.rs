//! `core.httpclient()`: HAProxy 2.5+'s `HTTPClient` class (`get`, `head`,
//! `put`, `post`, `delete` with `url`, `headers`, `body`, `timeout` (ms) and
//! `dst`), on the same cosocket machinery as `core.tcp` (the call yields, the
//! driver awaits the request, the coroutine resumes with the response). The
//! response is HAProxy's table: `status`, `reason`, `headers` (name → list
//! of values, names in lower case) and `body`. A request that fails (refused,
//! timed out, invalid answer) gets status 0 with empty fields, as HAProxy's.
//!
//! Plain `http://` only until TLS lands; one connection per request
//! (`Connection: close`); the response body is bounded by the plugin's
//! memory limit.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use mlua::{Lua, Table, UserData, Value};

use super::args::{Args, func, one};
use crate::filter::WaitFuture;
use crate::lua::runtime::CallCx;

/// Default bound of one request (connect + response), as HAProxy's httpclient proxy.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a finished request left.
struct Response {
    status: u16,
    reason: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

/// The userdata a request yields with; the driver awaits its future.
pub(crate) struct HttpCall {
    pending: RefCell<Option<WaitFuture>>,
    outcome: Rc<RefCell<Option<Result<Response, String>>>>,
}

impl UserData for HttpCall {}

impl HttpCall {
    /// The request the script yielded on, for its driver to await.
    pub(crate) fn take_pending(&self) -> Option<WaitFuture> {
        self.pending.try_borrow_mut().ok()?.take()
    }
}

/// `P.httpclient`: `start(method, request)` and `result(call)`.
pub(super) fn table(lua: &Lua, cx: &Rc<CallCx>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    {
        let cx = Rc::clone(cx);
        t.raw_set(
            "start",
            func(lua, move |lua, a| {
                let method = Args::new(&a, "httpclient", 0).string(1)?;
                let args = Args::new(&a, "httpclient", 1);
                let Value::Table(req) = args.get(1) else {
                    return Err(args.bad(1, "table"));
                };
                let request = build(&method, req, &args)?;
                let limit = cx.plugin.current_memory_limit();
                let outcome: Rc<RefCell<Option<Result<Response, String>>>> = Rc::default();
                let out = Rc::clone(&outcome);
                let fut: WaitFuture = Box::pin(async move {
                    let r = match tokio::time::timeout(request.timeout, send(request, limit)).await
                    {
                        Ok(r) => r,
                        Err(_) => Err("timeout".to_string()),
                    };
                    *out.borrow_mut() = Some(r);
                });
                let call = HttpCall {
                    pending: RefCell::new(Some(fut)),
                    outcome,
                };
                one(Value::UserData(lua.create_userdata(call)?))
            })?,
        )?;
    }
    t.raw_set(
        "result",
        func(lua, |lua, a| {
            let args = Args::new(&a, "httpclient", 0);
            let Value::UserData(ud) = args.get(1) else {
                return Err(args.bad(1, "HTTPClient call"));
            };
            let call = ud.borrow::<HttpCall>()?;
            let r = call
                .outcome
                .try_borrow_mut()
                .ok()
                .and_then(|mut o| o.take());
            let resp = lua.create_table()?;
            let headers = lua.create_table()?;
            match r {
                Some(Ok(res)) => {
                    resp.raw_set("status", i64::from(res.status))?;
                    resp.raw_set("reason", res.reason)?;
                    for (name, value) in res.headers {
                        let list: Table = match headers.raw_get::<Value>(name.as_str())? {
                            Value::Table(l) => l,
                            _ => {
                                let l = lua.create_table()?;
                                headers.raw_set(name.as_str(), l.clone())?;
                                l
                            }
                        };
                        list.raw_set(list.raw_len() + 1, lua.create_string(&value)?)?;
                    }
                    resp.raw_set("body", lua.create_string(&res.body)?)?;
                }
                other => {
                    if let Some(Err(e)) = other {
                        tracing::debug!("Lua httpclient request failed: {e}");
                    }
                    resp.raw_set("status", 0)?;
                    resp.raw_set("reason", "")?;
                    resp.raw_set("body", "")?;
                }
            }
            resp.raw_set("headers", headers)?;
            one(Value::Table(resp))
        })?,
    )?;
    Ok(t)
}

/// A request checked and ready to send.
struct Request {
    connect: String,
    req: http::Request<Full<Bytes>>,
    timeout: Duration,
}

fn build(method: &str, req: &Table, args: &Args<'_>) -> mlua::Result<Request> {
    let url: String = match req.raw_get::<Value>("url")? {
        Value::String(s) => s.to_str()?.to_string(),
        _ => return Err(args.err(1, "the request needs url = \"http://host[:port]/path\"")),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| args.err(1, format!("invalid url {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(args.err(1, "https URLs are not supported yet (TLS)")),
        _ => {
            return Err(args.err(
                1,
                format!("invalid url {url:?}: expected http://host[:port]/path"),
            ));
        }
    }
    let Some(authority) = uri.authority().cloned() else {
        return Err(args.err(1, format!("invalid url {url:?}: no host")));
    };
    let connect = match req.raw_get::<Value>("dst")? {
        Value::String(s) => s.to_str()?.to_string(),
        Value::Nil => format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        ),
        _ => return Err(args.err(1, "dst must be a string \"ip:port\"")),
    };
    let timeout = match req.raw_get::<Value>("timeout")? {
        Value::Nil => DEFAULT_TIMEOUT,
        Value::Integer(ms) if ms > 0 => Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        Value::Number(ms) if ms.is_finite() && ms > 0.0 => Duration::from_secs_f64(ms / 1000.0),
        _ => return Err(args.err(1, "timeout must be a positive number of milliseconds")),
    };
    let body = match req.raw_get::<Value>("body")? {
        Value::Nil => Bytes::new(),
        Value::String(s) => Bytes::copy_from_slice(&s.as_bytes()),
        _ => return Err(args.err(1, "body must be a string")),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONNECTION, "close");
    match req.raw_get::<Value>("headers")? {
        Value::Nil => {}
        Value::Table(h) => {
            for pair in h.pairs::<String, Value>() {
                let (name, v) = pair?;
                let values: Vec<Vec<u8>> = match v {
                    Value::String(s) => vec![s.as_bytes().to_vec()],
                    Value::Table(list) => list
                        .sequence_values::<mlua::LuaString>()
                        .map(|s| s.map(|s| s.as_bytes().to_vec()))
                        .collect::<mlua::Result<_>>()?,
                    _ => {
                        return Err(args.err(1, format!("header {name:?}: values must be strings")));
                    }
                };
                for v in values {
                    builder = builder.header(name.as_str(), v);
                }
            }
        }
        _ => return Err(args.err(1, "headers must be a table of name = { values }")),
    }
    let req = builder
        .body(Full::new(body))
        .map_err(|e| args.err(1, format!("invalid request: {e}")))?;
    Ok(Request {
        connect,
        req,
        timeout,
    })
}

/// Sends `r` over a new connection and reads the whole response (at most `limit` body bytes).
async fn send(r: Request, limit: usize) -> Result<Response, String> {
    let stream = tokio::net::TcpStream::connect(r.connect.as_str())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", r.connect))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| e.to_string())?;
    // The connection is driven here, next to the exchange: nothing is spawned.
    let exchange = async {
        let resp = sender
            .send_request(r.req)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?
            .to_bytes();
        Ok::<_, String>((parts, body))
    };
    tokio::pin!(conn);
    tokio::pin!(exchange);
    let mut conn_done = false;
    let (parts, body) = loop {
        tokio::select! {
            r = &mut exchange => break r?,
            c = &mut conn, if !conn_done => {
                conn_done = true;
                if let Err(e) = c {
                    return Err(e.to_string());
                }
            }
        }
    };
    Ok(Response {
        status: parts.status.as_u16(),
        reason: parts.status.canonical_reason().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body,
    })
}
