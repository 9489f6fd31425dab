//! Request-signature verification: a request must carry
//! `<header>: hex(HMAC-SHA256(secret, METHOD + "\n" + PATH))`, else 401.
//!
//! Config (JSON, from the `[[plugin]]` table's `config`):
//! `{ "header": "x-signature", "secret": "..." }`. The HMAC runs in the
//! host (`portcullis_v1.hmac_sha2`) and is compared in constant time.

use portcullis_guest::proxy_wasm::{self, types::LogLevel};
use portcullis_guest::{Action, Context, ContextType, HttpContext, RootContext, Sha2};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    secret: String,
}

fn default_header() -> String {
    "x-signature".into()
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

struct Root {
    config: Option<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(raw) = self.get_plugin_configuration() else {
            return false;
        };
        // A config without a secret is refused at load: a config error, not a 500 later.
        match serde_json::from_slice::<Config>(&raw) {
            Ok(c) if !c.secret.is_empty() => {
                self.config = Some(c);
                true
            }
            _ => false,
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(Verify { config }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Verify {
    config: Config,
}

impl Context for Verify {}

/// Decodes lower- or upper-case hex; `None` if malformed.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl HttpContext for Verify {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let signed = format!("{method}\n{path}");
        let ok = self
            .get_http_request_header(&self.config.header)
            .and_then(|sig| hex_decode(sig.trim()))
            .and_then(|mac| {
                portcullis_guest::hmac_verify(
                    Sha2::Sha256,
                    self.config.secret.as_bytes(),
                    signed.as_bytes(),
                    &mac,
                )
                .ok()
            })
            .unwrap_or(false);
        if ok {
            Action::Continue
        } else {
            let _ = portcullis_guest::log(
                portcullis_guest::LogLevel::Info,
                "bad request signature",
                &[("path", &path)],
            );
            self.send_http_response(
                401,
                vec![("content-type", "text/plain")],
                Some(b"bad signature\n"),
            );
            Action::Pause
        }
    }
}
