//! Header maps as the guest sees them: request/response headers and
//! trailers of the loaded transaction (read and changed in place), and the
//! headers of an http call's response. Request maps carry HTTP/2-style
//! pseudo-headers (`:method`, `:path`, `:authority`, `:scheme`), response
//! maps `:status`, as Envoy presents them; writing one rewrites the method,
//! the path, the Host header or the status. As in Envoy, whose HTTP/1 codec
//! turns `Host` into `:authority`, the request map has no `host` entry: the
//! Host header is `:authority` (reading `host` finds nothing; writing `host`
//! writes `:authority`, so a request never gets two Host headers).

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use super::pairs;
use crate::txn::Phase;
use crate::wasm::Status;
use crate::wasm::instance::{Callback, HostState};

/// Proxy-Wasm map types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
    CallHeaders,
    CallTrailers,
    /// gRPC response headers, during `proxy_on_grpc_receive_initial_metadata`.
    GrpcInitial,
    /// gRPC trailers, during `proxy_on_grpc_receive_trailing_metadata`.
    GrpcTrailing,
}

impl MapKind {
    /// From the ABI's numbering.
    pub fn from_raw(raw: u32) -> Result<MapKind, Status> {
        Ok(match raw {
            0 => MapKind::RequestHeaders,
            1 => MapKind::RequestTrailers,
            2 => MapKind::ResponseHeaders,
            3 => MapKind::ResponseTrailers,
            4 => MapKind::GrpcInitial,
            5 => MapKind::GrpcTrailing,
            6 => MapKind::CallHeaders,
            7 => MapKind::CallTrailers,
            _ => return Err(Status::BadArgument),
        })
    }
}

fn check(st: &HostState, kind: MapKind, write: bool) -> Result<(), Status> {
    // A chunk of a body let go on mid-stream: the request's maps have moved on.
    if st.io.body_only
        && !matches!(
            kind,
            MapKind::CallHeaders
                | MapKind::CallTrailers
                | MapKind::GrpcInitial
                | MapKind::GrpcTrailing
        )
    {
        return Err(Status::NotFound);
    }
    match kind {
        MapKind::RequestHeaders | MapKind::RequestTrailers => {
            if !st.io_available() {
                return Err(Status::NotFound);
            }
        }
        MapKind::ResponseHeaders | MapKind::ResponseTrailers => {
            if !st.io_available() || st.io.phase != Some(Phase::Response) {
                return Err(Status::NotFound);
            }
        }
        MapKind::CallHeaders | MapKind::CallTrailers => {
            if st.callback != Callback::CallResponse || st.call_response.is_none() {
                return Err(Status::NotFound);
            }
            if write {
                return Err(Status::BadArgument);
            }
        }
        MapKind::GrpcInitial | MapKind::GrpcTrailing => {
            let now = if kind == MapKind::GrpcInitial {
                Callback::GrpcInitialMetadata
            } else {
                Callback::GrpcTrailingMetadata
            };
            if st.callback != now {
                return Err(Status::NotFound);
            }
            if write {
                return Err(Status::BadArgument);
            }
        }
    }
    if write && st.io.read_only {
        return Err(Status::BadArgument);
    }
    Ok(())
}

fn headers_mut(st: &mut HostState, kind: MapKind) -> &mut HeaderMap {
    match kind {
        MapKind::RequestHeaders => &mut st.io.req_headers,
        MapKind::RequestTrailers => &mut st.io.req_trailers,
        MapKind::ResponseHeaders => &mut st.io.resp_headers,
        _ => &mut st.io.resp_trailers,
    }
}

fn headers(st: &HostState, kind: MapKind) -> &HeaderMap {
    match kind {
        MapKind::RequestHeaders => &st.io.req_headers,
        MapKind::RequestTrailers => &st.io.req_trailers,
        MapKind::ResponseHeaders => &st.io.resp_headers,
        _ => &st.io.resp_trailers,
    }
}

fn authority(st: &HostState) -> Option<Vec<u8>> {
    st.io
        .req_headers
        .get(http::header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            st.io
                .uri
                .authority()
                .map(|a| a.as_str().as_bytes().to_vec())
        })
}

fn pseudo(st: &HostState, kind: MapKind, name: &[u8]) -> Option<Vec<u8>> {
    match (kind, name) {
        (MapKind::RequestHeaders, b":method") => Some(st.io.method.as_str().as_bytes().to_vec()),
        (MapKind::RequestHeaders, b":path") => Some(
            st.io
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes()
                .to_vec(),
        ),
        (MapKind::RequestHeaders, b":authority") => authority(st),
        (MapKind::RequestHeaders, b":scheme") => {
            Some(st.io.uri.scheme_str().unwrap_or("http").as_bytes().to_vec())
        }
        (MapKind::ResponseHeaders, b":status") => Some(st.io.status.as_str().as_bytes().to_vec()),
        _ => None,
    }
}

/// The first value of `name`, `Ok(None)` if absent.
pub fn get_value(st: &HostState, kind: MapKind, name: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    check(st, kind, false)?;
    if let MapKind::GrpcInitial | MapKind::GrpcTrailing = kind {
        return Ok(st
            .grpc
            .metadata
            .iter()
            .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone()));
    }
    if let MapKind::CallHeaders | MapKind::CallTrailers = kind {
        if kind == MapKind::CallTrailers {
            return Ok(None);
        }
        let resp = st.call_response.as_ref().ok_or(Status::NotFound)?;
        return Ok(resp
            .headers
            .iter()
            .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone()));
    }
    if name.first() == Some(&b':') {
        return Ok(pseudo(st, kind, name));
    }
    let Ok(name) = HeaderName::from_bytes(name) else {
        return Ok(None);
    };
    if is_host(kind, &name) {
        return Ok(None);
    }
    Ok(headers(st, kind).get(name).map(|v| v.as_bytes().to_vec()))
}

/// The whole map, serialized.
pub fn get_pairs(st: &HostState, kind: MapKind) -> Result<Vec<u8>, Status> {
    check(st, kind, false)?;
    match kind {
        MapKind::CallHeaders => {
            let resp = st.call_response.as_ref().ok_or(Status::NotFound)?;
            Ok(pairs::encode(
                resp.headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes(), v.as_slice())),
            ))
        }
        MapKind::CallTrailers => Ok(pairs::encode(std::iter::empty::<(&[u8], &[u8])>())),
        MapKind::GrpcInitial | MapKind::GrpcTrailing => Ok(pairs::encode(
            st.grpc
                .metadata
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice())),
        )),
        _ => {
            let mut list: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let names: &[&[u8]] = match kind {
                MapKind::RequestHeaders => &[b":authority", b":path", b":method", b":scheme"],
                MapKind::ResponseHeaders => &[b":status"],
                _ => &[],
            };
            for n in names {
                if let Some(v) = pseudo(st, kind, n) {
                    list.push((n.to_vec(), v));
                }
            }
            for (k, v) in headers(st, kind) {
                if is_host(kind, k) {
                    continue;
                }
                list.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
            }
            Ok(pairs::encode(list.iter().map(|(k, v)| (k, v))))
        }
    }
}

fn set_pseudo(st: &mut HostState, kind: MapKind, name: &[u8], value: &[u8]) -> Status {
    match (kind, name) {
        (MapKind::RequestHeaders, b":method") => match Method::from_bytes(value) {
            Ok(m) => {
                st.io.method = m;
                Status::Ok
            }
            Err(_) => Status::BadArgument,
        },
        (MapKind::RequestHeaders, b":path") => {
            if value.first() != Some(&b'/') {
                return Status::BadArgument;
            }
            let Ok(pq) = PathAndQuery::try_from(value) else {
                return Status::BadArgument;
            };
            let mut parts = std::mem::take(&mut st.io.uri).into_parts();
            parts.path_and_query = Some(pq);
            match Uri::from_parts(parts) {
                Ok(u) => {
                    st.io.uri = u;
                    Status::Ok
                }
                Err(_) => Status::BadArgument,
            }
        }
        (MapKind::RequestHeaders, b":authority") => match HeaderValue::from_bytes(value) {
            Ok(v) => {
                st.io.req_headers.insert(http::header::HOST, v);
                Status::Ok
            }
            Err(_) => Status::BadArgument,
        },
        (MapKind::ResponseHeaders, b":status") => {
            match std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|c| (100..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
            {
                Some(s) => {
                    st.io.status = s;
                    Status::Ok
                }
                None => Status::BadArgument,
            }
        }
        // Other pseudo-headers (`:scheme`, unknown ones) are accepted and ignored.
        _ => Status::Ok,
    }
}

/// Whether `name` is the request's Host header, which the guest sees as `:authority`.
fn is_host(kind: MapKind, name: &HeaderName) -> bool {
    kind == MapKind::RequestHeaders && name == http::header::HOST
}

/// The name a write goes to: `host` in the request map is `:authority`.
fn write_name(kind: MapKind, name: &[u8]) -> &[u8] {
    if kind == MapKind::RequestHeaders && name.eq_ignore_ascii_case(b"host") {
        b":authority"
    } else {
        name
    }
}

fn name_value(name: &[u8], value: &[u8]) -> Result<(HeaderName, HeaderValue), Status> {
    let n = HeaderName::from_bytes(name).map_err(|_| Status::BadArgument)?;
    let v = HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
    Ok((n, v))
}

/// Appends a value.
pub fn add(st: &mut HostState, kind: MapKind, name: &[u8], value: &[u8]) -> Status {
    if let Err(s) = check(st, kind, true) {
        return s;
    }
    let name = write_name(kind, name);
    if name.first() == Some(&b':') {
        return set_pseudo(st, kind, name, value);
    }
    match name_value(name, value) {
        Ok((n, v)) => {
            headers_mut(st, kind).append(n, v);
            Status::Ok
        }
        Err(s) => s,
    }
}

/// Replaces every value of `name` with `value`.
pub fn replace(st: &mut HostState, kind: MapKind, name: &[u8], value: &[u8]) -> Status {
    if let Err(s) = check(st, kind, true) {
        return s;
    }
    let name = write_name(kind, name);
    if name.first() == Some(&b':') {
        return set_pseudo(st, kind, name, value);
    }
    match name_value(name, value) {
        Ok((n, v)) => {
            headers_mut(st, kind).insert(n, v);
            Status::Ok
        }
        Err(s) => s,
    }
}

/// Removes `name` (absent is fine).
pub fn remove(st: &mut HostState, kind: MapKind, name: &[u8]) -> Status {
    if let Err(s) = check(st, kind, true) {
        return s;
    }
    // Removing `host` (like a pseudo-header) leaves `:authority` in place.
    let name = write_name(kind, name);
    if name.first() == Some(&b':') {
        return Status::Ok;
    }
    if let Ok(n) = HeaderName::from_bytes(name) {
        headers_mut(st, kind).remove(n);
    }
    Status::Ok
}

/// Replaces the whole map with the serialized `buf` (all pairs are checked first).
pub fn set_pairs(st: &mut HostState, kind: MapKind, buf: &[u8]) -> Status {
    if let Err(s) = check(st, kind, true) {
        return s;
    }
    let list = match pairs::decode(buf) {
        Ok(l) => l,
        Err(s) => return s,
    };
    let mut map = HeaderMap::with_capacity(list.len());
    let mut pseudos = Vec::new();
    for (k, v) in list {
        let k = write_name(kind, k);
        if k.first() == Some(&b':') {
            pseudos.push((k, v));
            continue;
        }
        match name_value(k, v) {
            Ok((n, v)) => {
                map.append(n, v);
            }
            Err(s) => return s,
        }
    }
    *headers_mut(st, kind) = map;
    for (k, v) in pseudos {
        let s = set_pseudo(st, kind, k, v);
        if s != Status::Ok {
            return s;
        }
    }
    Status::Ok
}
