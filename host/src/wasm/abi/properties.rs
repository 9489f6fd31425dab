//! `proxy_get_property` / `proxy_set_property`: Envoy's attribute names for
//! what portcullis knows about a request. Strings are raw bytes, integers
//! 8-byte little-endian (as Envoy serializes them).
//!
//! | path | value |
//! |---|---|
//! | `request.path` | path and query |
//! | `request.url_path` | path without query |
//! | `request.query` | query string (without `?`) |
//! | `request.host` | Host header (or the URI's authority) |
//! | `request.scheme` | `http` |
//! | `request.method` | method |
//! | `request.protocol` | `HTTP/1.1`, `HTTP/2`, … |
//! | `request.headers.<name>` | first value of a request header |
//! | `response.code` | status (int, response phase and log) |
//! | `response.headers.<name>` | first value of a response header |
//! | `source.address` / `source.port` | client `ip:port` / port (int) |
//! | `destination.address` / `destination.port` | local `ip:port` / port (int) |
//! | `plugin_name` | the plugin's name |
//! | `plugin_vm_id` | its `vm_id` (default: the plugin's name) |
//! | `plugin_root_id` | its `root_id` (default: empty) |
//! | `route_metadata`, `metadata` | the rule's / frontend's `metadata` (see below) |
//!
//! Route metadata is Envoy's `filter_metadata`: `route_metadata.filter_metadata.<filter>.<key>...`
//! (and the same under `metadata`) walks the rule's `metadata` table, else its
//! frontend's. A leaf string is its bytes, a number an 8-byte little-endian
//! double (protobuf `Value.number_value`), a boolean one byte; a table is a
//! serialized `google.protobuf.Struct`, a list a `ListValue`, and the whole
//! `route_metadata` a serialized `envoy.config.core.v3.Metadata`, as Envoy
//! serializes them.
//!
//! `proxy_set_property` on `request.path` or `request.method` rewrites the
//! request; any other path stores a value the same context can read back
//! (per stream, or on the root context).

use http::Version;

use super::maps::{self, MapKind};
use super::pairs::split_path;
use crate::txn::Phase;
use crate::wasm::Status;
use crate::wasm::instance::HostState;

fn int(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn stream_props(st: &HostState) -> Option<&Vec<(Vec<u8>, Vec<u8>)>> {
    if st.effective == st.root.id {
        Some(&st.root.props)
    } else {
        st.streams.get(&st.effective).map(|s| &s.props)
    }
}

/// The value of property `path` (NUL-separated segments).
pub fn get(st: &HostState, path: &[u8]) -> Result<Vec<u8>, Status> {
    let spec = &st.root.plugin.spec;
    let segs = split_path(path);
    match segs.as_slice() {
        [b"plugin_name"] => return Ok(spec.name.as_bytes().to_vec()),
        [b"plugin_vm_id"] => return Ok(spec.vm_id.as_bytes().to_vec()),
        [b"plugin_root_id"] => return Ok(spec.root_id.as_bytes().to_vec()),
        _ => {}
    }
    if let Some(v) = stream_props(st).and_then(|p| p.iter().find(|(k, _)| k == path)) {
        return Ok(v.1.clone());
    }
    if let [b"route_metadata" | b"metadata", rest @ ..] = segs.as_slice() {
        let md = st
            .streams
            .get(&st.effective)
            .map(|s| &s.metadata)
            .ok_or(Status::NotFound)?;
        return route_metadata(md, rest).ok_or(Status::NotFound);
    }
    // Not for a chunk of a body let go on mid-stream: the request has moved on.
    if !st.io_available() || st.io.body_only {
        return Err(Status::NotFound);
    }
    let io = &st.io;
    let v = match segs.as_slice() {
        [b"request", b"path"] => io
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes()
            .to_vec(),
        [b"request", b"url_path"] => io.uri.path().as_bytes().to_vec(),
        [b"request", b"query"] => io.uri.query().unwrap_or("").as_bytes().to_vec(),
        [b"request", b"host"] => {
            maps::get_value(st, MapKind::RequestHeaders, b":authority")?.ok_or(Status::NotFound)?
        }
        [b"request", b"scheme"] => io.uri.scheme_str().unwrap_or("http").as_bytes().to_vec(),
        [b"request", b"method"] => io.method.as_str().as_bytes().to_vec(),
        [b"request", b"protocol"] => match io.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        }
        .as_bytes()
        .to_vec(),
        [b"request", b"headers", name] => {
            maps::get_value(st, MapKind::RequestHeaders, name)?.ok_or(Status::NotFound)?
        }
        [b"response", b"code"] if io.phase == Some(Phase::Response) => {
            int(i64::from(io.status.as_u16()))
        }
        [b"response", b"headers", name] => {
            maps::get_value(st, MapKind::ResponseHeaders, name)?.ok_or(Status::NotFound)?
        }
        [b"source", b"address"] => io.client.ok_or(Status::NotFound)?.to_string().into_bytes(),
        [b"source", b"port"] => int(i64::from(io.client.ok_or(Status::NotFound)?.port())),
        [b"destination", b"address"] => io.local.ok_or(Status::NotFound)?.to_string().into_bytes(),
        [b"destination", b"port"] => int(i64::from(io.local.ok_or(Status::NotFound)?.port())),
        _ => return Err(Status::NotFound),
    };
    Ok(v)
}

/// Most custom properties one context may store.
const MAX_PROPS: usize = 256;

/// Sets property `path` to `value`.
pub fn set(st: &mut HostState, path: &[u8], value: &[u8]) -> Status {
    let segs = split_path(path);
    match segs.as_slice() {
        [b"request", b"path"] => {
            return maps::replace(st, MapKind::RequestHeaders, b":path", value);
        }
        [b"request", b"method"] => {
            return maps::replace(st, MapKind::RequestHeaders, b":method", value);
        }
        _ => {}
    }
    let root = st.effective == st.root.id;
    let props = if root {
        &mut st.root.props
    } else {
        match st.streams.get_mut(&st.effective) {
            Some(s) => &mut s.props,
            None => return Status::NotFound,
        }
    };
    match props.iter_mut().find(|(k, _)| k == path) {
        Some(slot) => slot.1 = value.to_vec(),
        None => {
            if props.len() >= MAX_PROPS {
                return Status::BadArgument;
            }
            props.push((path.to_vec(), value.to_vec()));
        }
    }
    Status::Ok
}

/// `route_metadata` below its name: `[]` (the whole `Metadata`),
/// `[filter_metadata, <filter>, <key>...]`.
fn route_metadata(md: &[Option<crate::config::Metadata>; 2], rest: &[&[u8]]) -> Option<Vec<u8>> {
    use serde_json::Value;
    match rest {
        [] => {
            // envoy.config.core.v3.Metadata { map<string, Struct> filter_metadata = 1; }
            let mut names: Vec<&String> = md.iter().flatten().flat_map(|m| m.keys()).collect();
            names.sort();
            names.dedup();
            let mut out = Vec::new();
            for name in names {
                let v = md.iter().flatten().find_map(|m| m.get(name))?;
                let mut entry = Vec::new();
                pb_bytes(&mut entry, 1, name.as_bytes());
                pb_bytes(&mut entry, 2, &pb_struct(v.as_object()?));
                pb_bytes(&mut out, 1, &entry);
            }
            Some(out)
        }
        [b"filter_metadata", filter, keys @ ..] => {
            let filter = std::str::from_utf8(filter).ok()?;
            let mut v: &Value = md.iter().flatten().find_map(|m| m.get(filter))?;
            for k in keys {
                let k = std::str::from_utf8(k).ok()?;
                v = match v {
                    Value::Object(o) => o.get(k)?,
                    Value::Array(a) => a.get(k.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            Some(match v {
                Value::String(s) => s.as_bytes().to_vec(),
                Value::Number(n) => n.as_f64()?.to_le_bytes().to_vec(),
                Value::Bool(b) => vec![u8::from(*b)],
                Value::Null => Vec::new(),
                Value::Object(o) => pb_struct(o),
                Value::Array(a) => pb_list(a),
            })
        }
        _ => None,
    }
}

fn pb_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field.
fn pb_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    pb_varint(out, field << 3 | 2);
    pb_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `google.protobuf.Struct { map<string, Value> fields = 1; }`, keys sorted.
fn pb_struct(o: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
    let mut keys: Vec<&String> = o.keys().collect();
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let mut entry = Vec::new();
        pb_bytes(&mut entry, 1, k.as_bytes());
        pb_bytes(&mut entry, 2, &pb_value(&o[k]));
        pb_bytes(&mut out, 1, &entry);
    }
    out
}

/// `google.protobuf.ListValue { repeated Value values = 1; }`.
fn pb_list(a: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in a {
        pb_bytes(&mut out, 1, &pb_value(v));
    }
    out
}

/// `google.protobuf.Value`: null 1, number 2, string 3, bool 4, struct 5, list 6.
fn pb_value(v: &serde_json::Value) -> Vec<u8> {
    use serde_json::Value;
    let mut out = Vec::new();
    match v {
        Value::Null => {
            pb_varint(&mut out, 1 << 3);
            pb_varint(&mut out, 0);
        }
        Value::Number(n) => {
            pb_varint(&mut out, 2 << 3 | 1);
            out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
        }
        Value::String(s) => pb_bytes(&mut out, 3, s.as_bytes()),
        Value::Bool(b) => {
            pb_varint(&mut out, 4 << 3);
            pb_varint(&mut out, u64::from(*b));
        }
        Value::Object(o) => pb_bytes(&mut out, 5, &pb_struct(o)),
        Value::Array(a) => pb_bytes(&mut out, 6, &pb_list(a)),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(json: &str) -> crate::config::Metadata {
        std::sync::Arc::new(serde_json::from_str(json).expect("json"))
    }

    #[test]
    fn route_metadata_walks_rule_then_frontend_as_envoy_serializes() {
        let rule = md(r#"{"auth": {"tenant": "a", "n": 3, "on": true, "tags": ["x"]}}"#);
        let fe = md(r#"{"auth": {"tenant": "fe"}, "other": {"k": "v"}}"#);
        let both = [Some(rule), Some(fe)];
        let get = |p: &[&[u8]]| route_metadata(&both, p);
        assert_eq!(
            get(&[b"filter_metadata", b"auth", b"tenant"]),
            Some(b"a".to_vec())
        );
        assert_eq!(
            get(&[b"filter_metadata", b"auth", b"n"]),
            Some(3.0f64.to_le_bytes().to_vec())
        );
        assert_eq!(get(&[b"filter_metadata", b"auth", b"on"]), Some(vec![1]));
        assert_eq!(
            get(&[b"filter_metadata", b"auth", b"tags", b"0"]),
            Some(b"x".to_vec())
        );
        // The frontend answers for a filter the rule does not name.
        assert_eq!(
            get(&[b"filter_metadata", b"other", b"k"]),
            Some(b"v".to_vec())
        );
        assert_eq!(get(&[b"filter_metadata", b"auth", b"missing"]), None);
        assert_eq!(get(&[b"filter_metadata", b"nope"]), None);
        assert_eq!(get(&[b"other"]), None);
        // A struct: field 1 entries { key = 1, Value = 2 } in key order.
        let s = get(&[b"filter_metadata", b"other"]).expect("struct");
        assert_eq!(
            s,
            vec![0x0a, 0x08, 0x0a, 0x01, b'k', 0x12, 0x03, 0x1a, 0x01, b'v']
        );
        // The whole Metadata: filter_metadata entries for both filters.
        let all = get(&[]).expect("metadata");
        assert_eq!(all[0], 0x0a);
        assert!(all.windows(4).any(|w| w == b"auth"));
        assert!(all.windows(5).any(|w| w == b"other"));
    }
}
