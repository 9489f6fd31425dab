//! The admin API as the tests use it: the token they configure and send,
//! token-carrying requests, and readers of `/stats`.

use std::net::SocketAddr;

use http::{Method, StatusCode};
use serde_json::Value;

use super::{H1, Resp, full, get, request};

// ---------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------

/// GET `/stats` from the admin listener as JSON.
pub async fn stats(admin: SocketAddr) -> Value {
    let r = get(admin, "/stats").await;
    assert_eq!(r.status, StatusCode::OK, "/stats: {}", r.text());
    r.json()
}

/// The element of JSON array `arr` whose `name` is `name`.
pub fn named<'a>(arr: &'a Value, name: &str) -> Option<&'a Value> {
    arr.as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
}

/// `up` of server `server` in backend `backend` per `/stats`.
pub fn server_up(stats: &Value, backend: &str, server: &str) -> Option<bool> {
    let b = named(&stats["backends"], backend)?;
    named(&b["servers"], server)?["up"].as_bool()
}

// ---------------------------------------------------------------------------
// Admin API access: the token
// ---------------------------------------------------------------------------

/// The admin token the tests configure and send.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// [`ADMIN_TOKEN`] as a TOML value, for `global_section(.., &[("admin_token", ADMIN_TOKEN_TOML)])`.
pub const ADMIN_TOKEN_TOML: &str = "\"test-admin-token-0123456789abcdef\"";

/// A request builder for the admin API that carries [`ADMIN_TOKEN`] and a JSON content type.
pub fn admin_request(method: Method, admin: SocketAddr, path: &str) -> http::request::Builder {
    request(method, admin, path)
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/json")
}

/// Sends `method path` with [`ADMIN_TOKEN`] and JSON `body` on a fresh admin connection.
pub async fn admin_send(admin: SocketAddr, method: Method, path: &str, body: &str) -> Resp {
    let req = admin_request(method, admin, path)
        .body(full(body.to_string()))
        .expect("admin request");
    H1::connect(admin).await.send(req).await
}
