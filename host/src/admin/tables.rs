//! Stick tables over the admin API, through [`crate::stick::Api`] (the same
//! operation set Lua and Wasm bind):
//!
//! - `GET /tables`: every table (name, type, size, used, counters);
//! - `GET /tables/{name}`: entries as JSON; `?data.<type>=<op>:<n>` filters
//!   (ops `eq ne lt le gt ge`), `limit=N`, `format=haproxy` for `show table` text;
//! - `GET /tables/{name}/{key}`: one entry;
//! - `DELETE /tables/{name}` (with the same filters): clear;
//! - `DELETE /tables/{name}/{key}`: remove one entry;
//! - `POST /tables/{name}/{key}` with a JSON object `{"gpc0": 3, ...}`: set data.
//!
//! Keys in paths are percent-decoded. Every bad input is a 4xx with a JSON
//! `{"error": ...}` body.

use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::json_response;
use super::metrics::{Family, label};
use crate::stick::api::{EntryView, Filter, TableInfo};
use crate::stick::{StickError, StickTables};

use super::guard::MAX_BODY;
/// Entries returned when no `limit` is given.
const DEFAULT_LIMIT: usize = 1000;

/// Whether `path` belongs to this module.
pub fn owns(path: &str) -> bool {
    path == "/tables" || path.starts_with("/tables/")
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": msg.into() }))
}

fn stick_error(e: &StickError) -> Response<Full<Bytes>> {
    let status = match e {
        StickError::NoSuchTable { .. } | StickError::NotFound { .. } => StatusCode::NOT_FOUND,
        StickError::InUse { .. } => StatusCode::CONFLICT,
        StickError::Full { .. } => StatusCode::INSUFFICIENT_STORAGE,
        StickError::BadKey { .. }
        | StickError::UnknownData { .. }
        | StickError::NotStored { .. }
        | StickError::BadValue { .. }
        | StickError::BadFilter { .. } => StatusCode::BAD_REQUEST,
    };
    error(status, e.to_string())
}

fn info_json(t: &TableInfo) -> Value {
    json!({
        "name": t.name,
        "type": t.key_type,
        "len": t.key_len,
        "size": t.size,
        "used": t.used,
        "expire_ms": t.expire_ms,
        "nopurge": t.nopurge,
        "store": t.store,
        "inserts": t.inserts,
        "evictions": t.evictions,
        "expirations": t.expirations,
        "refusals": t.refusals,
    })
}

fn entry_json(e: &EntryView) -> Value {
    let data: serde_json::Map<String, Value> =
        e.data.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({
        "key": e.key,
        "expire_ms": e.expire_ms,
        "refs": e.refs,
        "data": data,
    })
}

/// Decodes `%XX` escapes (and `+` as space in query strings); `None` on a bad escape or non-UTF-8.
fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let out = crate::rules::fetch::percent_decode_strict(s, plus.then_some(0))?;
    String::from_utf8(out).ok()
}

/// The parsed query of a table request.
struct Query {
    filters: Vec<Filter>,
    limit: usize,
    haproxy: bool,
}

fn parse_query(
    tables: &StickTables,
    table: &str,
    query: Option<&str>,
) -> Result<Query, Box<Response<Full<Bytes>>>> {
    let api = tables.api();
    let t = api.table(table).map_err(|e| Box::new(stick_error(&e)))?;
    let mut q = Query {
        filters: Vec::new(),
        limit: DEFAULT_LIMIT,
        haproxy: false,
    };
    for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let (Some(k), Some(v)) = (percent_decode(k, true), percent_decode(v, true)) else {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("invalid percent-encoding in query parameter {part:?}"),
            )));
        };
        if k.starts_with("data.") {
            q.filters.push(
                api.filter(t, &k, &v)
                    .map_err(|e| Box::new(stick_error(&e)))?,
            );
            continue;
        }
        match k.as_str() {
            "limit" => {
                q.limit = v.parse().map_err(|_| {
                    Box::new(error(
                        StatusCode::BAD_REQUEST,
                        format!("limit must be a non-negative integer, got {v:?}"),
                    ))
                })?;
            }
            "format" => match v.as_str() {
                "json" => q.haproxy = false,
                "haproxy" => q.haproxy = true,
                other => {
                    return Err(Box::new(error(
                        StatusCode::BAD_REQUEST,
                        format!("unknown format {other:?}; use json or haproxy"),
                    )));
                }
            },
            other => {
                return Err(Box::new(error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "unknown query parameter {other:?}; use data.<type>=<op>:<value>, limit or format"
                    ),
                )));
            }
        }
    }
    Ok(q)
}

/// Handles a `/tables` request (reads the body of a `POST`).
pub async fn handle(req: Request<Incoming>, tables: &StickTables) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query();
    let rest = path
        .strip_prefix("/tables")
        .unwrap_or("")
        .trim_start_matches('/');
    let (name, key) = match rest.split_once('/') {
        Some((n, k)) => (n, Some(k)),
        None => (rest, None),
    };
    let key = match key {
        None => None,
        Some(k) => match percent_decode(k, false) {
            Some(k) => Some(k),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid percent-encoding in the key",
                );
            }
        },
    };
    let api = tables.api();
    let method = &parts.method;
    match (method, name, key) {
        (&Method::GET | &Method::HEAD, "", None) => {
            let list: Vec<Value> = api.list().iter().map(info_json).collect();
            json_response(StatusCode::OK, &json!({ "tables": list }))
        }
        (_, "", _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on /tables; use GET"),
        ),
        (&Method::GET | &Method::HEAD, name, None) => {
            let q = match parse_query(tables, name, query) {
                Ok(q) => q,
                Err(r) => return *r,
            };
            if q.haproxy {
                return match api.show_table(name, &q.filters, q.limit) {
                    Ok(text) => super::respond(StatusCode::OK, "text/plain; charset=utf-8", text),
                    Err(e) => stick_error(&e),
                };
            }
            match (api.info(name), api.dump(name, &q.filters, q.limit)) {
                (Ok(info), Ok(entries)) => {
                    let mut doc = info_json(&info);
                    doc["entries"] = Value::Array(entries.iter().map(entry_json).collect());
                    json_response(StatusCode::OK, &doc)
                }
                (Err(e), _) | (_, Err(e)) => stick_error(&e),
            }
        }
        (&Method::DELETE, name, None) => {
            let q = match parse_query(tables, name, query) {
                Ok(q) => q,
                Err(r) => return *r,
            };
            match api.clear_table(name, &q.filters) {
                Ok((removed, in_use)) => json_response(
                    StatusCode::OK,
                    &json!({ "table": name, "removed": removed, "in_use": in_use }),
                ),
                Err(e) => stick_error(&e),
            }
        }
        (_, name, None) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on /tables/{name}; use GET or DELETE"),
        ),
        (&Method::GET | &Method::HEAD, name, Some(key)) => match api.lookup(name, &key) {
            Ok(Some(e)) => json_response(StatusCode::OK, &entry_json(&e)),
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                format!("no entry {key:?} in table {name:?}"),
            ),
            Err(e) => stick_error(&e),
        },
        (&Method::DELETE, name, Some(key)) => match api.clear_entry(name, &key) {
            Ok(()) => json_response(StatusCode::OK, &json!({ "table": name, "removed": key })),
            Err(e) => stick_error(&e),
        },
        (&Method::POST | &Method::PUT, name, Some(key)) => {
            let body = match Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the request body is larger than {MAX_BODY} bytes"),
                    );
                }
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the request body: {e}"),
                    );
                }
            };
            set_entry(tables, name, &key, &body)
        }
        (_, name, Some(_)) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on /tables/{name}/<key>; use GET, POST or DELETE"),
        ),
    }
}

/// `POST /tables/{name}/{key}`: `{"gpc0": 3, "gpt0": 1}` (or `{"data": {...}}`).
fn set_entry(tables: &StickTables, name: &str, key: &str, body: &[u8]) -> Response<Full<Bytes>> {
    let doc: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body must be a JSON object such as {{\"gpc0\": 3}}: {e}"),
            );
        }
    };
    let obj = match doc.get("data").unwrap_or(&doc) {
        Value::Object(m) => m,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object such as {\"gpc0\": 3}",
            );
        }
    };
    let mut values: Vec<(&str, i64)> = Vec::with_capacity(obj.len());
    for (k, v) in obj {
        let Some(n) = v.as_i64() else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("value of {k:?} must be an integer, got {v}"),
            );
        };
        values.push((k.as_str(), n));
    }
    match tables.api().set(name, key, &values) {
        Ok(e) => json_response(StatusCode::OK, &entry_json(&e)),
        Err(e) => stick_error(&e),
    }
}

/// Prometheus families: per table used, size, inserts, evictions, expirations, refusals.
pub fn metric_families(tables: &StickTables) -> Vec<Family> {
    let per = |f: &dyn Fn(&crate::stick::StickTable) -> u64| -> Vec<(String, u64)> {
        tables
            .iter()
            .map(|t| (label("table", t.name()), f(t)))
            .collect()
    };
    vec![
        (
            "portcullis_stick_table_used",
            "gauge",
            "Entries in the stick table.",
            per(&|t| t.used()),
        ),
        (
            "portcullis_stick_table_size",
            "gauge",
            "Maximum entries of the stick table.",
            per(&|t| t.size()),
        ),
        (
            "portcullis_stick_table_inserts_total",
            "counter",
            "Entries created.",
            per(&|t| t.counters.inserts.load(Relaxed)),
        ),
        (
            "portcullis_stick_table_evictions_total",
            "counter",
            "Entries evicted to make room in a full table.",
            per(&|t| t.counters.evictions.load(Relaxed)),
        ),
        (
            "portcullis_stick_table_expirations_total",
            "counter",
            "Entries removed by expiry.",
            per(&|t| t.counters.expirations.load(Relaxed)),
        ),
        (
            "portcullis_stick_table_refusals_total",
            "counter",
            "New keys refused because the table was full.",
            per(&|t| t.counters.refusals.load(Relaxed)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c", true).as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
        assert_eq!(percent_decode("%ff", false), None);
        // Edge cases pinned before the decoder became `percent-encoding`.
        assert_eq!(percent_decode("%", false), None);
        assert_eq!(percent_decode("a%2", true), None);
        assert_eq!(percent_decode("%2B+", true).as_deref(), Some("+ "));
        assert_eq!(percent_decode("%2b%2F", false).as_deref(), Some("+/"));
        assert_eq!(percent_decode("%C3%A9", false).as_deref(), Some("é"));
        assert_eq!(percent_decode("a%00", false).as_deref(), Some("a\0"));
        assert_eq!(percent_decode("é+", true).as_deref(), Some("é "));
        assert_eq!(percent_decode("%-1", false), None);
        // A sign is no hex digit (the old `u8::from_str_radix` decoder took `%+1` as 0x01).
        assert_eq!(percent_decode("%+1", false), None);
    }
}
