//! Header rewrite: on the request, copies the client address into
//! `x-client-addr` and removes `x-internal-*` headers; on the response,
//! removes `server`, adds `x-served-by: portcullis` and logs a structured line.

use portcullis_guest::proxy_wasm::{self, types::LogLevel};
use portcullis_guest::{Action, Context, ContextType, HttpContext, RootContext};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Rewrite))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Rewrite;

impl Context for Rewrite {}

impl HttpContext for Rewrite {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        for (name, _) in self.get_http_request_headers() {
            if name.starts_with("x-internal-") {
                self.set_http_request_header(&name, None);
            }
        }
        if let Some(addr) = self.get_property(vec!["source", "address"]) {
            let addr = String::from_utf8_lossy(&addr).into_owned();
            self.set_http_request_header("x-client-addr", Some(&addr));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_response_header("server", None);
        self.add_http_response_header("x-served-by", "portcullis");
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let _ = portcullis_guest::log(
            portcullis_guest::LogLevel::Debug,
            "response rewritten",
            &[("status", &status)],
        );
        Action::Continue
    }
}
