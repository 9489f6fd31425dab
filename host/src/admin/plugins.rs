//! `GET /plugins`: one document per plugin, from its host (Lua: memory in
//! use and peak, calls, errors by kind, rebuilds, what the script
//! registered; Wasm: limits, calls, failures by kind, rebuilds).
//! `POST /plugins/<name>/limits?memory_limit=<bytes>`: changes a plugin's
//! memory limit at run time, where its host allows it (every worker applies
//! it before its next call).

use serde_json::{Value, json};

use crate::runtime::Runtime;

/// The `/plugins` document.
pub fn plugins_json(rt: &Runtime) -> Value {
    let docs: Vec<Value> = rt
        .plugins
        .iter()
        .flat_map(|h| h.admin_documents())
        .map(|(_, d)| d)
        .collect();
    json!({ "plugins": docs })
}

/// Handles `/plugins` and `/plugins/<name>/limits`; `None` for other paths.
pub fn route(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
    rt: &Runtime,
) -> Option<(http::StatusCode, Value)> {
    use http::StatusCode;
    if path == "/plugins" {
        if method != http::Method::GET && method != http::Method::HEAD {
            return Some((
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": format!("{method} is not allowed on /plugins; use GET")}),
            ));
        }
        return Some((StatusCode::OK, plugins_json(rt)));
    }
    let rest = path.strip_prefix("/plugins/")?;
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let doc = rt
        .plugins
        .iter()
        .flat_map(|h| h.admin_documents())
        .find(|(n, _)| n == name)
        .map(|(_, d)| d);
    let Some(doc) = doc else {
        return Some((
            StatusCode::NOT_FOUND,
            json!({"error": format!("no plugin {name:?}")}),
        ));
    };
    match (method, tail) {
        (&http::Method::GET, "") => Some((StatusCode::OK, doc)),
        (&http::Method::POST, "limits") => {
            let value = query
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("memory_limit="));
            let Some(bytes) = value.and_then(|v| crate::config::units::parse_size(v).ok()) else {
                return Some((
                    StatusCode::BAD_REQUEST,
                    json!({"error": "give the new limit as ?memory_limit=<bytes or size like 8MiB>"}),
                ));
            };
            if bytes == 0 || bytes > 4 << 30 {
                return Some((
                    StatusCode::BAD_REQUEST,
                    json!({"error": "memory_limit must be between 1 byte and 4GiB"}),
                ));
            }
            let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
            match rt
                .plugins
                .iter()
                .find_map(|h| h.set_memory_limit(name, bytes))
            {
                Some(Ok(doc)) => Some((StatusCode::OK, doc)),
                Some(Err(e)) => Some((StatusCode::CONFLICT, json!({ "error": e }))),
                None => Some((
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("no admin endpoint {method} {path}"), "endpoints": ["GET /plugins", "GET /plugins/<name>", "POST /plugins/<name>/limits?memory_limit=<size>"]}),
                )),
            }
        }
        _ => Some((
            StatusCode::NOT_FOUND,
            json!({"error": format!("no admin endpoint {method} {path}"), "endpoints": ["GET /plugins", "GET /plugins/<name>", "POST /plugins/<name>/limits?memory_limit=<size>"]}),
        )),
    }
}
