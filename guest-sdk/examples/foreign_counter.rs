//! Stick tables from a plain Proxy-Wasm filter, through the host's foreign
//! functions (`proxy_call_foreign_function`), as a module built with any
//! Proxy-Wasm SDK reaches them without this crate's `StickTable`: counts
//! requests per `x-api-key` in the table `per_key` and answers 429 past 100.
//! `docs/ABI.md` shows the call from this file.

use portcullis_guest::proxy_wasm;
use portcullis_guest::{Action, Context, ContextType, HttpContext, RootContext};

portcullis_guest::main! {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Counter))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Proxy-Wasm's pairs layout: the count, each name and value length, then
/// each name and value followed by a NUL (all integers u32 little-endian).
fn serialize_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        for s in [k, v] {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
    }
    out
}

fn count(key: &str) -> Result<u64, proxy_wasm::types::Status> {
    let args = [
        ("table", "per_key"),
        ("key", key),
        ("data", "gpc0"),
        ("delta", "1"),
    ];
    let bytes = serialize_pairs(&args); // the pairs layout above
    let count = proxy_wasm::hostcalls::call_foreign_function("stick_add", Some(&bytes))?;
    let text = String::from_utf8(count.unwrap_or_default()).unwrap_or_default();
    Ok(text.parse().unwrap_or(0))
}

struct Counter;
impl Context for Counter {}
impl HttpContext for Counter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let Some(key) = self.get_http_request_header("x-api-key") else {
            return Action::Continue;
        };
        match count(&key) {
            Ok(n) if n > 100 => {
                self.send_http_response(429, vec![], Some(b"too many requests\n"));
                Action::Pause
            }
            _ => Action::Continue,
        }
    }
}
