//! Plugin test files: harness cases written in TOML, run by
//! `portcullis plugin test FILE` (so a Lua or Wasm plugin is tested without
//! writing Rust). Each case sends a fake request through the config's
//! frontend with a fake server response and checks what came out; the
//! cases run in order on one harness (one worker's plugin instances).
//!
//! ```toml
//! config = "portcullis.toml"   # relative to this file
//! frontend = "web"             # default: the first
//!
//! [upstreams]                  # canned answers to plugins' HTTP calls, by backend
//! auth = { status = 200, body = "ok" }
//!
//! [[case]]
//! name = "adds the header"
//! request = { method = "GET", path = "/", headers = { "x-token" = "abc" } }
//! server = { status = 200, body = "hello" }
//! expect = { status = 200, headers = { "x-hello" = "world" } }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{Canned, Exchange, Harness, HarnessError, Request};

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The config to load, relative to the test file.
    pub config: String,
    /// The frontend whose rules run (default: the first).
    #[serde(default)]
    pub frontend: Option<String>,
    /// Canned answers for plugins' HTTP calls, by backend name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Message>,
    /// The cases, run in order.
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

/// A request or response as written in a test file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

/// One case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub request: Message,
    /// The server's response (default `200` with an empty body).
    #[serde(default)]
    pub server: Message,
    #[serde(default)]
    pub expect: Expect,
}

/// What a case checks; every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The status the client gets.
    pub status: Option<u16>,
    /// Whether the proxy answered itself (rule, plugin, service) instead of the server.
    pub local_reply: Option<bool>,
    /// Response headers the client gets (name → exact value; "" = must be absent).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The exact response body.
    pub body: Option<String>,
    /// Text the response body contains.
    pub body_contains: Option<String>,
    /// Headers the server gets (name → exact value; "" = must be absent).
    #[serde(default)]
    pub upstream_headers: BTreeMap<String, String>,
    /// The exact body the server gets.
    pub upstream_body: Option<String>,
    /// Texts that lines logged during the case contain.
    #[serde(default)]
    pub logs: Vec<String>,
    /// HTTP calls made, as `"<backend> <METHOD> <path>"`, in order.
    pub calls: Option<Vec<String>>,
    /// `txn.*` variables (name → value as text).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Stick-table values after the case: `"<table> <key> <data>" = value`.
    #[serde(default)]
    pub tables: BTreeMap<String, u64>,
}

/// One case's result: its name and what did not match (empty: passed).
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub failures: Vec<String>,
}

fn message_request(m: &Message) -> Request {
    let method = m
        .method
        .as_deref()
        .and_then(|s| http::Method::from_bytes(s.as_bytes()).ok())
        .unwrap_or(http::Method::GET);
    let mut r = Request::new(method, m.path.as_deref().unwrap_or("/")).body(m.body.clone());
    for (k, v) in &m.headers {
        r = r.header(k, v);
    }
    r
}

fn message_answer(m: &Message) -> Canned {
    let mut c = Canned::status(m.status.unwrap_or(200)).body(m.body.clone());
    for (k, v) in &m.headers {
        c = c.header(k, v);
    }
    c
}

/// Loads the test file at `path` and runs its cases.
pub fn run_file(path: &Path) -> Result<Vec<CaseResult>, HarnessError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| HarnessError::Io(format!("cannot read {}: {e}", path.display())))?;
    let file: TestFile = toml::from_str(&text)
        .map_err(|e| HarnessError::Config(format!("{}: {}", path.display(), e.message())))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut b = Harness::config_file(dir.join(&file.config));
    if let Some(f) = &file.frontend {
        b = b.frontend(f);
    }
    for (name, m) in &file.upstreams {
        b = b.upstream(name, message_answer(m));
    }
    let mut h = b.start()?;
    let mut results = Vec::new();
    for case in &file.cases {
        let ex = h.try_run(message_request(&case.request), message_answer(&case.server))?;
        let failures = check(&h, &ex, &case.expect);
        results.push(CaseResult {
            name: case.name.clone(),
            failures,
        });
    }
    Ok(results)
}

fn check_headers(
    what: &str,
    got: &http::HeaderMap,
    want: &BTreeMap<String, String>,
    out: &mut Vec<String>,
) {
    for (name, value) in want {
        let v = got
            .get(name.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        match (v, value.is_empty()) {
            (None, true) => {}
            (Some(v), true) => out.push(format!("{what} `{name}` should be absent, got {v:?}")),
            (Some(v), false) if v == value.as_str() => {}
            (v, _) => out.push(format!("{what} `{name}`: expected {value:?}, got {v:?}")),
        }
    }
}

fn check(h: &Harness, ex: &Exchange, want: &Expect) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = want.status
        && s != ex.status
    {
        out.push(format!("status: expected {s}, got {}", ex.status));
    }
    if let Some(l) = want.local_reply
        && l != ex.local_reply
    {
        out.push(format!("local_reply: expected {l}, got {}", ex.local_reply));
    }
    check_headers("response header", &ex.headers, &want.headers, &mut out);
    if let Some(b) = &want.body
        && b.as_bytes() != ex.body
    {
        out.push(format!("body: expected {b:?}, got {:?}", ex.text()));
    }
    if let Some(b) = &want.body_contains
        && !ex.text().contains(b.as_str())
    {
        out.push(format!(
            "body: expected to contain {b:?}, got {:?}",
            ex.text()
        ));
    }
    if !want.upstream_headers.is_empty() || want.upstream_body.is_some() {
        match &ex.upstream {
            None => out.push("the server got no request (the proxy answered)".into()),
            Some(up) => {
                check_headers(
                    "upstream header",
                    &up.headers,
                    &want.upstream_headers,
                    &mut out,
                );
                if let Some(b) = &want.upstream_body
                    && b.as_bytes() != up.body
                {
                    out.push(format!(
                        "upstream body: expected {b:?}, got {:?}",
                        String::from_utf8_lossy(&up.body)
                    ));
                }
            }
        }
    }
    for l in &want.logs {
        if !ex.logged(l) {
            let got: Vec<String> = ex.logs.iter().map(ToString::to_string).collect();
            out.push(format!("no log line contains {l:?}; logged: {got:?}"));
        }
    }
    if let Some(calls) = &want.calls {
        let got: Vec<String> = ex
            .calls
            .iter()
            .map(|c| format!("{} {} {}", c.upstream, c.method, c.path))
            .collect();
        if &got != calls {
            out.push(format!("calls: expected {calls:?}, got {got:?}"));
        }
    }
    for (name, value) in &want.vars {
        let got = ex.var(name);
        if got.as_deref() != Some(value.as_str()) {
            out.push(format!("variable {name}: expected {value:?}, got {got:?}"));
        }
    }
    for (spec, value) in &want.tables {
        let parts: Vec<&str> = spec.split_whitespace().collect();
        let [table, key, data] = parts[..] else {
            out.push(format!(
                "tables key {spec:?}: write \"<table> <key> <data>\", e.g. \"per_ip 127.0.0.1 http_req_cnt\""
            ));
            continue;
        };
        let got = h.table_value(table, key, data);
        if got != *value {
            out.push(format!(
                "{table}[{key}].{data}: expected {value}, got {got}"
            ));
        }
    }
    out
}
