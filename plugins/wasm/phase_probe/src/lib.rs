//! Phase probe: a filter that marks every phase it runs in and takes the
//! turns a plugin author finds hardest to predict, chosen by path:
//!
//! - every request: `x-probe-req: <method> <path>` on the request; the
//!   response hook adds `x-probe-resp: <status it saw>` (also on the
//!   proxy's own replies, when it runs there); the log hook logs
//!   `probe log <path> -> <status>`;
//! - `/local`: the request hook answers 403 itself (a local reply);
//! - `/buffer`: the request body is buffered whole (Proxy-Wasm's
//!   `StopIteration` on each chunk) and forwarded as `probe[N]:` + the body
//!   in upper case;
//! - `/reject`: the request body is buffered; one containing `bad` is
//!   answered 400 from the body hook, any other forwarded as it came;
//! - `/rbuffer`: the response body is buffered and `|probe saw N` appended;
//! - `/rreject`: the response body hook answers 502 instead of the server.
//!
//! `tests/plugin_harness.rs` runs it through the plugin harness and through
//! the daemon and compares what each client (and server) got.

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
        Some(Box::new(Probe {
            path: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Probe {
    path: String,
}

impl Probe {
    fn on(&self, prefix: &str) -> bool {
        self.path.starts_with(prefix)
    }
}

impl Context for Probe {}

impl HttpContext for Probe {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        let method = self.get_http_request_header(":method").unwrap_or_default();
        self.set_http_request_header("x-probe-req", Some(&format!("{method} {}", self.path)));
        if self.on("/local") {
            self.send_http_response(
                403,
                vec![("x-local", "probe"), ("content-type", "text/plain")],
                Some(b"probe says no\n"),
            );
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.on("/buffer") && !self.on("/reject") {
            return Action::Continue;
        }
        if !eos {
            // Keep it all until the end (StopIteration: the host buffers).
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        if self.on("/reject") {
            if body.windows(3).any(|w| w == b"bad") {
                self.send_http_response(
                    400,
                    vec![("content-type", "text/plain")],
                    Some(format!("probe rejected {size} bytes\n").as_bytes()),
                );
                return Action::Pause;
            }
            return Action::Continue;
        }
        let mut out = format!("probe[{size}]:").into_bytes();
        out.extend(body.iter().map(u8::to_ascii_uppercase));
        self.set_http_request_body(0, usize::MAX, &out);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.set_http_response_header("x-probe-resp", Some(&status));
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.on("/rbuffer") && !self.on("/rreject") {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        if self.on("/rreject") {
            self.send_http_response(
                502,
                vec![("content-type", "text/plain")],
                Some(format!("probe rejected the {size}-byte response\n").as_bytes()),
            );
            return Action::Pause;
        }
        // Append: replace the empty range at the end.
        self.set_http_response_body(size, 0, format!("|probe saw {size}").as_bytes());
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let _ = portcullis_guest::proxy_wasm::hostcalls::log(
            LogLevel::Info,
            &format!("probe log {} -> {status}", self.path),
        );
    }
}
