//! Reading a JSON plugin configuration and checking a shared secret.
//!
//! ```toml
//! [[plugin]]
//! name = "token"
//! wasm = "json_config.wasm"
//! config = '{"header": "x-token", "sha256_hex": "<hex of the token's SHA-256>"}'
//! ```
//!
//! Requests whose `x-token` header does not hash to `sha256_hex` get a 401.
//! A configuration that is not such JSON fails the config load with the
//! reason in the log (`on_configure` returns `false`).

use portcullis_guest::{Action, Context, ContextType, HttpContext, LogLevel, RootContext, Sha2};
use serde::Deserialize;

portcullis_guest::main! {
    portcullis_guest::proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { config: None })
    });
}

#[derive(Deserialize, Clone)]
struct Config {
    header: String,
    sha256_hex: String,
}

struct Root {
    config: Option<(String, Vec<u8>)>,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration();
        let parsed = portcullis_guest::json_config::<Config>(raw.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let digest = portcullis_guest::hex_decode(&c.sha256_hex)
                    .map_err(|e| format!("sha256_hex: {e}"))?;
                Ok((c.header, digest))
            });
        match parsed {
            Ok(c) => {
                self.config = Some(c);
                true
            }
            Err(reason) => {
                let _ = portcullis_guest::log(
                    LogLevel::Error,
                    "bad configuration",
                    &[("reason", &reason)],
                );
                false
            }
        }
    }
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        self.config
            .clone()
            .map(|(header, digest)| -> Box<dyn HttpContext> {
                Box::new(TokenCheck { header, digest })
            })
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TokenCheck {
    header: String,
    digest: Vec<u8>,
}

impl Context for TokenCheck {}
impl HttpContext for TokenCheck {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let token = self
            .get_http_request_header(&self.header)
            .unwrap_or_default();
        let ok = portcullis_guest::sha2(Sha2::Sha256, token.as_bytes())
            .is_ok_and(|d| portcullis_guest::constant_time_eq(&d, &self.digest));
        if ok {
            return Action::Continue;
        }
        self.send_http_response(
            401,
            vec![("www-authenticate", "Token")],
            Some(b"unauthorized\n"),
        );
        Action::Pause
    }
}
