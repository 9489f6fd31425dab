//! Per-API-key rate limiting on a portcullis stick table.
//!
//! Each request's API key (header `x-api-key` by default) is counted in the
//! table's `gpc0_rate` (adding to `gpc0` counts an event in the rate too);
//! past `limit` events per the table's rate period, the request gets 429.
//! Requests without a key get 401.
//!
//! Config (a string): `table=<name> limit=<n> [header=<name>]`, e.g.
//! `"table=api_keys limit=100"`; the table must store `gpc0` and `gpc0_rate(<period>)`.

use portcullis_guest::proxy_wasm::{self, types::LogLevel};
use portcullis_guest::{Action, Context, ContextType, HttpContext, RootContext, StickTable};

#[derive(Debug, Clone)]
struct Config {
    table: String,
    limit: u64,
    header: String,
}

/// Parses `key=value` words.
fn parse(s: &str) -> Option<Config> {
    let (mut table, mut limit, mut header) = (None, None, "x-api-key".to_string());
    for word in s.split_whitespace() {
        match word.split_once('=')? {
            ("table", v) => table = Some(v.to_string()),
            ("limit", v) => limit = v.parse().ok(),
            ("header", v) => header = v.to_ascii_lowercase(),
            _ => return None,
        }
    }
    Some(Config {
        table: table?,
        limit: limit?,
        header,
    })
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
        let raw = self.get_plugin_configuration().unwrap_or_default();
        self.config = std::str::from_utf8(&raw).ok().and_then(parse);
        self.config.is_some()
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        let c = self.config.clone()?;
        Some(Box::new(Limit {
            table: StickTable::new(c.table.clone()),
            config: c,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Limit {
    table: StickTable,
    config: Config,
}

impl Context for Limit {}

impl HttpContext for Limit {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let Some(key) = self.get_http_request_header(&self.config.header) else {
            self.send_http_response(401, vec![], Some(b"api key required\n"));
            return Action::Pause;
        };
        let seen = match self
            .table
            .add(&key, "gpc0", 1)
            .and_then(|_| self.table.get(&key, "gpc0_rate"))
        {
            Ok(v) => v.unwrap_or(0),
            Err(e) => {
                // The table is misconfigured: say why once per request and let it through.
                let why = portcullis_guest::last_error().unwrap_or_default();
                let _ = portcullis_guest::log(
                    portcullis_guest::LogLevel::Warn,
                    "stick table call failed",
                    &[("status", &format!("{e:?}")), ("why", &why)],
                );
                return Action::Continue;
            }
        };
        self.set_http_request_header("x-rate-count", Some(&seen.to_string()));
        if seen > self.config.limit {
            self.send_http_response(
                429,
                vec![("retry-after", "1")],
                Some(b"rate limit exceeded\n"),
            );
            return Action::Pause;
        }
        Action::Continue
    }
}
