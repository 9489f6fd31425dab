//! The Rust member of the demo filter family, written with the Envoy Rust
//! SDK (the `proxy-wasm` crate) only: the same behaviour as
//! `plugins/wasm/c/demo.c` (which documents it) and the AssemblyScript
//! `plugins/wasm/assemblyscript/assembly/demo.ts`, with the guest name
//! "rust". `tests/e2e_wasm_sdks.rs` runs all three through portcullis.
//! Two extras serve `tests/e2e_wasm_vm.rs` (plugins sharing a VM): `/whoami`
//! adds the plugin's name, VM id and configured upstream to the request, and
//! `/trap` panics (a trap that kills the VM).
//!
//! Unlike the C and AssemblyScript guests, the SDK routes http-call answers
//! (which Envoy delivers on the root context) to the HTTP context that made
//! the call, so `on_http_call_response` below is the stream's.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

const GUEST: &str = "rust";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { upstream: String::new(), ticks_seen: 0 })
    });
}}

/// Busy-waits `ms` milliseconds of the host's clock.
fn hold(ms: u64) {
    let Ok(start) = hostcalls::get_current_time() else {
        return;
    };
    while hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(start).ok())
        .is_some_and(|d| d < Duration::from_millis(ms))
    {}
}

/// Adds `delta` to the decimal counter `key` in shared data, retrying (and
/// logging "rust cas retry") when another worker changed it in between (CAS
/// mismatch). `hold_ms` widens the window between the first read and write
/// so that the tests can make workers race (retries go at full speed, or a
/// loser could keep losing). The new value.
fn shared_add(key: &str, delta: u32, hold_ms: u64) -> u32 {
    for attempt in 0..100 {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let n = shared_value(value.as_deref());
        if hold_ms > 0 && attempt == 0 {
            hold(hold_ms);
        }
        match hostcalls::set_shared_data(key, Some((n + delta).to_string().as_bytes()), cas) {
            Ok(()) => return n + delta,
            Err(Status::CasMismatch) => {
                let _ = hostcalls::log(LogLevel::Info, &format!("{GUEST} cas retry"));
            }
            Err(_) => break,
        }
    }
    let _ = hostcalls::log(
        LogLevel::Warn,
        &format!("{GUEST} shared counter update failed"),
    );
    0
}

/// Creates the counter `key` at 0 unless it exists. A set with cas 0 is
/// unconditional, so two workers creating the same key could both write;
/// doing it here avoids that: the first on_configure runs once, when the
/// plugin is loaded, before any worker serves.
fn shared_init(key: &str) {
    if let Ok((None, _)) | Err(_) = hostcalls::get_shared_data(key) {
        let _ = hostcalls::set_shared_data(key, Some(b"0"), None);
    }
}

fn shared_value(v: Option<&[u8]>) -> u32 {
    v.and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

struct Root {
    upstream: String,
    ticks_seen: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = self.get_plugin_configuration().unwrap_or_default();
        match std::str::from_utf8(&cfg)
            .ok()
            .and_then(|s| s.strip_prefix("upstream="))
        {
            Some(u) if !u.is_empty() => self.upstream = u.to_string(),
            _ => {
                let _ = hostcalls::log(
                    LogLevel::Warn,
                    &format!("{GUEST} needs config \"upstream=<backend>\""),
                );
                return false;
            }
        }
        shared_init("hits");
        shared_init("ticks");
        self.set_tick_period(Duration::from_millis(100));
        true
    }

    fn on_tick(&mut self) {
        let total = shared_add("ticks", 1, 0);
        self.ticks_seen += 1;
        if self.ticks_seen <= 3 {
            let _ = hostcalls::log(
                LogLevel::Info,
                &format!("{GUEST} tick {} total {total}", self.ticks_seen),
            );
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Demo {
            upstream: self.upstream.clone(),
            body: false,
            method: String::new(),
            path: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Demo {
    upstream: String,
    body: bool,
    method: String,
    path: String,
}

impl Demo {
    fn start_auth_call(&mut self) -> Action {
        let code: String = self.path["/call/".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let path = format!("/status/{code}");
        let call = self.dispatch_http_call(
            &self.upstream,
            vec![
                (":method", "GET"),
                (":path", &path),
                (":authority", "auth"),
                ("x-from", GUEST),
            ],
            None,
            vec![],
            Duration::from_secs(2),
        );
        if call.is_err() {
            self.send_http_response(
                503,
                vec![],
                Some(format!("{GUEST}: cannot dispatch the auth call\n").as_bytes()),
            );
        }
        Action::Pause
    }
}

impl Context for Demo {
    fn on_http_call_response(&mut self, _token: u32, headers: usize, body_size: usize, _t: usize) {
        if headers == 0 {
            self.send_http_response(
                503,
                vec![],
                Some(format!("{GUEST}: auth unreachable\n").as_bytes()),
            );
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        if status.len() == 3 && status.starts_with('2') {
            self.add_http_request_header("x-auth-status", &status);
            if let Some(server) = self.get_http_call_response_header("x-server") {
                self.add_http_request_header("x-auth-server", &server);
            }
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            self.add_http_request_header("x-auth-bytes", &body.len().to_string());
            self.resume_http_request();
        } else {
            self.send_http_response(
                403,
                vec![],
                Some(format!("{GUEST}: auth said {status}\n").as_bytes()),
            );
        }
    }
}

impl HttpContext for Demo {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.method = self.get_http_request_header(":method").unwrap_or_default();
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        self.add_http_request_header("x-guest", GUEST);
        self.add_http_request_header("x-seen", &format!("{} {}", self.method, self.path));
        if self.get_http_request_header("x-replace-me").is_some() {
            self.set_http_request_header("x-replace-me", Some("replaced"));
        }
        self.remove_http_request_header("x-remove-me");

        if self.path.starts_with("/local") {
            self.send_http_response(
                403,
                vec![("x-local-by", GUEST)],
                Some(format!("{GUEST} says no\n").as_bytes()),
            );
            return Action::Pause;
        }
        if self.path.starts_with("/call/") {
            return self.start_auth_call();
        }
        // Rust-only extras for the VM-sharing tests (tests/e2e_wasm_vm.rs):
        // which plugin and VM a request ran in, and a trap on demand.
        if self.path.starts_with("/whoami") {
            for (header, property) in [("x-plugin", "plugin_name"), ("x-vm-id", "plugin_vm_id")] {
                let v = self.get_property(vec![property]).unwrap_or_default();
                self.add_http_request_header(header, &String::from_utf8_lossy(&v));
            }
            self.add_http_request_header("x-upstream", &self.upstream.clone());
        }
        if self.path.starts_with("/trap") {
            panic!("{GUEST} trap requested");
        }
        self.body = self.path.starts_with("/body");
        if self.path.starts_with("/count") {
            let n = shared_add("hits", 1, 5);
            self.add_http_request_header("x-hits", &n.to_string());
        }
        if self.path.starts_with("/ticks") {
            let (v, _) = self.get_shared_data("ticks");
            self.add_http_request_header("x-ticks", &shared_value(v.as_deref()).to_string());
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.body {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause; // buffer it all
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let mut out = format!("{GUEST}:").into_bytes();
        out.extend(body.iter().map(u8::to_ascii_uppercase));
        self.set_http_request_body(0, usize::MAX, &out);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.add_http_response_header("x-resp-guest", GUEST);
        self.set_http_response_header("x-server", Some("hidden"));
        self.remove_http_response_header("x-secret");
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if !self.body {
            return Action::Continue;
        }
        if !eos {
            return Action::Pause;
        }
        // Insert at the end: replace the empty range size..size.
        self.set_http_response_body(size, 0, format!("\n{GUEST} saw {size} bytes\n").as_bytes());
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.path.is_empty() {
            return;
        }
        let status = self.get_http_response_header(":status").unwrap_or_default();
        let _ = hostcalls::log(
            LogLevel::Info,
            &format!("{GUEST} log {} {} -> {status}", self.method, self.path),
        );
    }
}
