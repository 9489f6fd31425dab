//! The `docs/PLUGINS.md` walkthrough plugin: `x-hello: <path>` on every
//! request, 429 for an API key seen more than 10 times in 10 s.

use portcullis_guest::proxy_wasm;
use portcullis_guest::{Action, Context, ContextType, HttpContext, RootContext, StickTable};

// Like proxy_wasm::main!, and installs the panic hook: a panic's message
// reaches portcullis's log.
portcullis_guest::main! {
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hello {
            keys: StickTable::new("api_keys"),
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext) // required: portcullis runs HTTP filters
    }
}

struct Hello {
    keys: StickTable,
}
impl Context for Hello {}
impl HttpContext for Hello {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.set_http_request_header("x-hello", Some(&path));
        if let Some(key) = self.get_http_request_header("x-api-key") {
            // gpc0 += 1 also counts an event in gpc0_rate.
            let seen = self
                .keys
                .add(&key, "gpc0", 1)
                .and_then(|_| self.keys.get(&key, "gpc0_rate"));
            if let Ok(Some(n)) = seen
                && n > 10
            {
                self.send_http_response(429, vec![("retry-after", "10")], Some(b"slow down\n"));
                return Action::Pause;
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let _ = portcullis_guest::log(
            portcullis_guest::LogLevel::Info,
            "answered",
            &[(
                "status",
                &self.get_http_response_header(":status").unwrap_or_default(),
            )],
        );
        Action::Continue
    }
}
