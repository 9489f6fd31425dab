//! Reply objects (`txn:reply{...}`, the prelude's `Reply` class) as the
//! response `txn:done(reply)` answers with.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use mlua::{LuaString, Table, Value};

use crate::filter::Reply;

/// A reply object (from `txn:reply{...}`) as a response.
pub(crate) fn reply_from_table(t: &Table) -> mlua::Result<Reply> {
    let bad = |m: String| mlua::Error::runtime(format!("bad argument #1 to 'done' ({m})"));
    let status = match t.raw_get::<Value>("status")? {
        Value::Nil => 200,
        Value::Integer(i) => i,
        Value::Number(x) if x.fract() == 0.0 => x as i64,
        other => {
            return Err(bad(format!(
                "status must be an integer, got {}",
                other.type_name()
            )));
        }
    };
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (100..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| bad(format!("status {status} is not between 100 and 599")))?;
    let mut headers = HeaderMap::new();
    if let Value::Table(h) = t.raw_get::<Value>("headers")? {
        for pair in h.pairs::<LuaString, Value>() {
            let (k, v) = pair?;
            let name = HeaderName::from_bytes(&k.as_bytes())
                .map_err(|_| bad(format!("invalid header name '{}'", k.to_string_lossy())))?;
            if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
                continue;
            }
            let mut push = |v: &Value| -> mlua::Result<()> {
                let bytes = match v {
                    Value::String(s) => s.as_bytes().to_vec(),
                    Value::Integer(i) => i.to_string().into_bytes(),
                    Value::Number(x) => x.to_string().into_bytes(),
                    other => {
                        return Err(bad(format!(
                            "header '{name}' has a {} value",
                            other.type_name()
                        )));
                    }
                };
                let hv = HeaderValue::from_bytes(&bytes)
                    .map_err(|_| bad(format!("invalid value for header '{name}'")))?;
                headers.append(name.clone(), hv);
                Ok(())
            };
            match &v {
                Value::Table(list) => {
                    for i in 0..=list.raw_len() {
                        let x: Value = list.raw_get(i)?;
                        if !x.is_nil() {
                            push(&x)?;
                        }
                    }
                }
                other => push(other)?,
            }
        }
    }
    let body = match t.raw_get::<Value>("body")? {
        Value::Nil => bytes::Bytes::new(),
        Value::String(s) => bytes::Bytes::from(s.as_bytes().to_vec()),
        Value::Integer(i) => bytes::Bytes::from(i.to_string()),
        other => {
            return Err(bad(format!(
                "body must be a string, got {}",
                other.type_name()
            )));
        }
    };
    Ok(Reply {
        status,
        headers,
        body,
        error_page: false,
        cause: None,
    })
}
