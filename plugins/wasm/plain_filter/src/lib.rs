//! A plain Proxy-Wasm filter (only the `proxy-wasm` crate, no portcullis
//! imports): it loads in Envoy unchanged.
//!
//! Requests with `x-check` are held (`Action::Pause`) while the filter asks
//! the upstream named in its config (`"upstream=<backend>"`, default `app`)
//! for `GET /check`; the request resumes with `x-checked: <status>`, or gets
//! 503 if the check failed. Every request gets `x-plain: <method> <path>`.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { upstream: "app".into() })
    });
}}

struct Root {
    upstream: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(c) = self.get_plugin_configuration() {
            match std::str::from_utf8(&c)
                .ok()
                .and_then(|s| s.trim().strip_prefix("upstream="))
            {
                Some(u) if !u.is_empty() => self.upstream = u.to_string(),
                _ => return false,
            }
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Plain {
            upstream: self.upstream.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Plain {
    upstream: String,
}

impl Context for Plain {
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        _body: usize,
        _trailers: usize,
    ) {
        match self.get_http_call_response_header(":status") {
            Some(status) => {
                self.set_http_request_header("x-checked", Some(&status));
                self.resume_http_request();
            }
            None => self.send_http_response(503, vec![], Some(b"check failed\n")),
        }
    }
}

impl HttpContext for Plain {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.set_http_request_header("x-plain", Some(&format!("{method} {path}")));
        if self.get_http_request_header("x-check").is_none() {
            return Action::Continue;
        }
        let call = self.dispatch_http_call(
            &self.upstream,
            vec![
                (":method", "GET"),
                (":path", "/check"),
                (":authority", "check"),
            ],
            None,
            vec![],
            Duration::from_secs(2),
        );
        match call {
            Ok(_) => Action::Pause,
            Err(_) => {
                self.send_http_response(503, vec![], Some(b"cannot dispatch check\n"));
                Action::Pause
            }
        }
    }
}
