//! `POST /certificates/reload`: re-reads the certificate, key and CA files
//! of every TLS frontend. All of them are read and checked first; only if
//! every one loads are they put in force (new handshakes use them, open
//! connections keep theirs). On any error nothing changes and the answer
//! names the frontend, the file and what is wrong.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::proxy::stats::Shared;

/// The endpoint's path.
pub const PATH: &str = "/certificates/reload";

/// Handles a request to [`PATH`] (the guard has checked the token).
pub fn reload(method: &Method, shared: &Shared) -> Response<Full<Bytes>> {
    if method != Method::POST {
        return super::json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": format!("{method} is not allowed on {PATH}; use POST")}),
        );
    }
    let mut loaded = Vec::new();
    for fe in &shared.config.frontends {
        let Some(acceptor) = &fe.tls else { continue };
        match acceptor.prepare() {
            Ok(config) => loaded.push((Arc::clone(acceptor), config, Arc::clone(&fe.name))),
            Err(e) => {
                tracing::warn!(frontend = %fe.name, error = %e.error, "certificate reload refused");
                return super::json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({
                        "error": format!("frontend {}: {}", fe.name, e.error),
                        "frontend": &*fe.name,
                        "file": e.error.path.display().to_string(),
                        "reloaded": [],
                    }),
                );
            }
        }
    }
    let names: Vec<String> = loaded.iter().map(|(_, _, n)| n.to_string()).collect();
    for (acceptor, config, _) in loaded {
        acceptor.install(config);
    }
    tracing::info!(frontends = ?names, "certificates reloaded");
    super::json_response(StatusCode::OK, &json!({ "reloaded": names }))
}
