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
//! | `plugin_name`, `plugin_vm_id` | the plugin's name |
//! | `plugin_root_id` | empty |
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
    if st.effective == st.root_id {
        Some(&st.root_props)
    } else {
        st.streams.get(&st.effective).map(|s| &s.props)
    }
}

/// The value of property `path` (NUL-separated segments).
pub fn get(st: &HostState, path: &[u8]) -> Result<Vec<u8>, Status> {
    let spec = &st.plugin.spec;
    let segs = split_path(path);
    match segs.as_slice() {
        [b"plugin_name"] | [b"plugin_vm_id"] => return Ok(spec.name.as_bytes().to_vec()),
        [b"plugin_root_id"] => return Ok(Vec::new()),
        _ => {}
    }
    if let Some(v) = stream_props(st).and_then(|p| p.iter().find(|(k, _)| k == path)) {
        return Ok(v.1.clone());
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
    let root = st.effective == st.root_id;
    let props = if root {
        &mut st.root_props
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
