//! gRPC calls from a plain Proxy-Wasm filter (only the `proxy-wasm` crate):
//! what an Envoy user writes, run unchanged by portcullis.
//!
//! Config: `cluster=<backend>` (default `grpc`), and `tick` to make the
//! root context call `test.Echo/Unary` every 200 ms and keep the answer in
//! shared data (`grpc_demo.tick`). Per request, `x-grpc` picks what to do:
//!
//! - `unary` (an auth check): calls `<x-service or test.Echo>/<x-method or
//!   Unary>` on `x-cluster` (default: the configured one) with the message
//!   `x-msg` (default `hello`), metadata `x-meta: m1` and timeout
//!   `x-timeout-ms` (default 2000); the request waits. On `OK` it goes on
//!   with `x-grpc-answer: <reply>` (or, with `x-local-reply`, is answered
//!   200 with the reply); on any other status it is denied: 403 with
//!   `x-grpc-status` / `x-grpc-message`. A call the host refuses: 500 with
//!   `x-dispatch: <status>`.
//! - `stream`: opens `test.Echo/Chat`, sends each `x-msgs` item (comma
//!   separated), half-closes (`x-half-close: send` with the last message,
//!   else `proxy_grpc_close`) and answers 200 once the stream closes: the
//!   messages received joined by `,`, `x-grpc-status`, `x-grpc-message`, and
//!   the server's `x-server-meta` / `x-server-trailer` metadata as
//!   `x-initial` / `x-trailing`.
//! - `cancel`: calls `test.Echo/Slow` (500 ms) and `test.Echo/Sleep` (100
//!   ms); when the latter answers, cancels the former (the server sees it
//!   cancelled), calls `test.Echo/Sleep` again (`x-sleep-ms`, default 800)
//!   and answers 200 with `x-late: yes` if the cancelled call called back.
//! - `tick`: answers 200 with what the root context's last call brought.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { cluster: "grpc".into(), tick: false, inflight: None })
    });
}}

struct Root {
    cluster: String,
    tick: bool,
    inflight: Option<u32>,
}

impl Context for Root {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if self.inflight == Some(token) {
            self.inflight = None;
        }
        let value = if status == 0 {
            self.get_grpc_call_response_body(0, size)
                .unwrap_or_default()
        } else {
            let (code, msg) = self.get_grpc_status();
            format!("status:{code}:{}", msg.unwrap_or_default()).into_bytes()
        };
        let _ = self.set_shared_data("grpc_demo.tick", Some(&value), None);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(c) = self.get_plugin_configuration() {
            let Ok(text) = std::str::from_utf8(&c) else {
                return false;
            };
            for item in text.split_whitespace() {
                match item.split_once('=') {
                    Some(("cluster", v)) if !v.is_empty() => self.cluster = v.to_string(),
                    None if item == "tick" => self.tick = true,
                    _ => return false,
                }
            }
        }
        if self.tick {
            self.set_tick_period(Duration::from_millis(200));
        }
        true
    }

    fn on_tick(&mut self) {
        if self.inflight.is_some() {
            return;
        }
        if let Ok(t) = self.dispatch_grpc_call(
            &self.cluster,
            "test.Echo",
            "Unary",
            vec![("x-meta", b"tick")],
            Some(b"from-tick"),
            Duration::from_secs(2),
        ) {
            self.inflight = Some(t);
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            cluster: self.cluster.clone(),
            ..Filter::default()
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Default)]
struct Filter {
    cluster: String,
    local_reply: bool,
    slow: Option<u32>,
    first_sleep: Option<u32>,
    cancelled: Option<u32>,
    sleep_ms: String,
    late: bool,
    received: Vec<String>,
    initial: String,
    trailing: String,
}

impl Filter {
    fn header(&self, name: &str) -> Option<String> {
        self.get_http_request_header(name)
    }

    fn refused(&self, what: &str, s: proxy_wasm::types::Status) -> Action {
        self.send_http_response(
            500,
            vec![("x-dispatch", &format!("{s:?}"))],
            Some(format!("{what} failed\n").as_bytes()),
        );
        Action::Pause
    }

    fn unary(&mut self) -> Action {
        let cluster = self
            .header("x-cluster")
            .unwrap_or_else(|| self.cluster.clone());
        let service = self
            .header("x-service")
            .unwrap_or_else(|| "test.Echo".into());
        let method = self.header("x-method").unwrap_or_else(|| "Unary".into());
        let msg = self.header("x-msg").unwrap_or_else(|| "hello".into());
        let ms = self
            .header("x-timeout-ms")
            .and_then(|t| t.parse().ok())
            .unwrap_or(2000);
        self.local_reply = self.header("x-local-reply").is_some();
        match self.dispatch_grpc_call(
            &cluster,
            &service,
            &method,
            vec![("x-meta", b"m1")],
            Some(msg.as_bytes()),
            Duration::from_millis(ms),
        ) {
            Ok(_) => Action::Pause,
            Err(s) => self.refused("dispatch_grpc_call", s),
        }
    }

    fn stream(&mut self) -> Action {
        let cluster = self
            .header("x-cluster")
            .unwrap_or_else(|| self.cluster.clone());
        let msgs = self.header("x-msgs").unwrap_or_default();
        let half_close_on_send = self.header("x-half-close").as_deref() == Some("send");
        let token =
            match self.open_grpc_stream(&cluster, "test.Echo", "Chat", vec![("x-meta", b"s1")]) {
                Ok(t) => t,
                Err(s) => return self.refused("open_grpc_stream", s),
            };
        let items: Vec<&str> = msgs.split(',').filter(|m| !m.is_empty()).collect();
        for (i, m) in items.iter().enumerate() {
            let last = i + 1 == items.len();
            self.send_grpc_stream_message(token, Some(m.as_bytes()), last && half_close_on_send);
        }
        if !half_close_on_send || items.is_empty() {
            self.close_grpc_stream(token);
        }
        Action::Pause
    }

    fn cancel(&mut self) -> Action {
        let slow = match self.dispatch_grpc_call(
            &self.cluster,
            "test.Echo",
            "Slow",
            vec![],
            Some(b"slow"),
            Duration::from_secs(5),
        ) {
            Ok(t) => t,
            Err(s) => return self.refused("dispatch_grpc_call", s),
        };
        self.slow = Some(slow);
        self.sleep_ms = self.header("x-sleep-ms").unwrap_or_else(|| "800".into());
        match self.dispatch_grpc_call(
            &self.cluster,
            "test.Echo",
            "Sleep",
            vec![],
            Some(b"100"),
            Duration::from_secs(5),
        ) {
            Ok(t) => {
                self.first_sleep = Some(t);
                Action::Pause
            }
            Err(s) => self.refused("dispatch_grpc_call", s),
        }
    }

    /// The first Sleep answered: cancel Slow, wait on a second Sleep.
    fn cancel_slow(&mut self) {
        if let Some(slow) = self.slow.take() {
            self.cancel_grpc_call(slow);
            self.cancelled = Some(slow);
        }
        self.local_reply = true;
        let ms = self.sleep_ms.clone();
        if let Err(s) = self.dispatch_grpc_call(
            &self.cluster,
            "test.Echo",
            "Sleep",
            vec![],
            Some(ms.as_bytes()),
            Duration::from_secs(5),
        ) {
            self.refused("dispatch_grpc_call", s);
        }
    }
}

impl Context for Filter {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        if self.cancelled == Some(token) {
            self.late = true;
            return;
        }
        if self.first_sleep == Some(token) {
            self.first_sleep = None;
            self.cancel_slow();
            return;
        }
        if status != 0 {
            let (code, msg) = self.get_grpc_status();
            self.send_http_response(
                403,
                vec![
                    ("x-grpc-status", &code.to_string()),
                    ("x-grpc-message", &msg.unwrap_or_default()),
                ],
                Some(b"denied\n"),
            );
            return;
        }
        let body = self
            .get_grpc_call_response_body(0, size)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body).into_owned();
        if self.local_reply {
            let late = if self.late { "yes" } else { "no" };
            self.send_http_response(200, vec![("x-late", late)], Some(text.as_bytes()));
            return;
        }
        self.set_http_request_header("x-grpc-answer", Some(&text));
        self.resume_http_request();
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, _n: u32) {
        if let Some(v) = self.get_grpc_stream_initial_metadata_value("x-server-meta") {
            self.initial = String::from_utf8_lossy(&v).into_owned();
        }
    }

    fn on_grpc_stream_message(&mut self, _token: u32, size: usize) {
        let m = self.get_grpc_stream_message(0, size).unwrap_or_default();
        self.received.push(String::from_utf8_lossy(&m).into_owned());
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, _n: u32) {
        if let Some(v) = self.get_grpc_stream_trailing_metadata_value("x-server-trailer") {
            self.trailing = String::from_utf8_lossy(&v).into_owned();
        }
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status: u32) {
        let (_, msg) = self.get_grpc_status();
        let body = self.received.join(",");
        self.send_http_response(
            200,
            vec![
                ("x-grpc-status", &status.to_string()),
                ("x-grpc-message", &msg.unwrap_or_default()),
                ("x-initial", &self.initial),
                ("x-trailing", &self.trailing),
            ],
            Some(body.as_bytes()),
        );
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        match self.header("x-grpc").as_deref() {
            Some("unary") => self.unary(),
            Some("stream") => self.stream(),
            Some("cancel") => self.cancel(),
            Some("tick") => {
                let (v, _) = self.get_shared_data("grpc_demo.tick");
                self.send_http_response(200, vec![], Some(&v.unwrap_or_default()));
                Action::Pause
            }
            _ => Action::Continue,
        }
    }
}
