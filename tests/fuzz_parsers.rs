//! Fuzz targets for everything that parses hand-written or guest-supplied
//! input: the config file, conditions, fetch/converter expressions,
//! log-format strings, map files, the Wasm guest-memory helpers and the
//! Proxy-Wasm pairs decoder.
//!
//! cargo-fuzz needs a nightly compiler, so these are proptest properties:
//! random and grammar-aware inputs, a bounded number of cases per run (the
//! whole file takes seconds in debug, so it runs with every `cargo test`),
//! `PROPTEST_CASES=N` to run longer. Every target also replays its seed
//! corpus `tests/fuzz-corpus/<target>/` on each run, and failures proptest
//! finds are saved in `tests/proptest-regressions/<target>.txt` and replayed
//! first. How to run them longer: `tests/fuzz-corpus/README.md`.
//!
//! The properties: nothing panics; a rejected input gets an error that
//! points inside it (`FILE:LINE:COL` for configs, a byte offset on a
//! character boundary for rule strings, a line number for map files); what
//! parses also evaluates without panicking; conditions obey boolean
//! algebra when combined; and the map and memory helpers, the match methods,
//! `hdr` occurrences and `field`/`word` (HAProxy's own algorithm, transcribed)
//! agree with models, and so do map files changed at run time
//! (`core.set_map` and friends).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

use portcullis::config::BindCheck;
use portcullis::rules::cond::{Condition, MatchMethod};
use portcullis::rules::fetch::{CONVERTERS, FETCHES, parse_expr};
use portcullis::rules::pattern::{MapReader, PatternCache, PatternMap};
use portcullis::rules::{CompileCtx, Env, LogFormat, ParseError};
use portcullis::stick::StickTables;
use portcullis::txn::{BackendChoice, Phase, Sample, Txn, VarScope};
use portcullis::wasm::Status;
use portcullis::wasm::abi::pairs;
use portcullis::wasm::memory;

// ---------------------------------------------------------------------------
// Run settings and the seed corpus
// ---------------------------------------------------------------------------

/// Where proptest saves the failures of `$target` (committed: replayed first on every run).
macro_rules! regressions {
    ($target:literal) => {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/proptest-regressions/",
            $target,
            ".txt"
        )
    };
}

/// `default` cases (sized so the whole file runs in seconds in debug), or
/// `PROPTEST_CASES` to fuzz longer; failures persist in `regressions`.
fn settings(default: u32, regressions: &'static str) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        max_shrink_iters: 2048,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(regressions))),
        ..ProptestConfig::default()
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz-corpus")
        .join(target)
}

/// The seed files of `target`, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes =
                std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            (name, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seed in {}", dir.display());
    out
}

/// A text seed: the file without the one newline an editor adds at the end.
fn seed_text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.strip_suffix('\n').unwrap_or(&s).to_string()
}

/// Runs `check` on every seed of `target`, naming the seed that fails.
fn replay(target: &str, check: impl Fn(&[u8]) -> Result<(), TestCaseError>) {
    for (name, bytes) in corpus(target) {
        if let Err(e) = check(&bytes) {
            panic!("seed tests/fuzz-corpus/{target}/{name}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Config files
// ---------------------------------------------------------------------------

const CONFIG_SEEDS: [&str; 3] = [
    include_str!("../configs/quickstart.toml"),
    include_str!("../configs/reverse-proxy.toml"),
    include_str!("../configs/ratelimit.toml"),
];

/// Whether loading `text` would resolve a host name: addresses may name
/// hosts, but the fuzzer must not send DNS queries (there is no resolver
/// here, and a mutated name would be looked up for real on a CI machine).
fn needs_dns(text: &str) -> bool {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return false;
    };
    let mut addrs: Vec<&str> = Vec::new();
    fn strings(v: &toml::Value) -> Vec<&str> {
        match v {
            toml::Value::String(s) => vec![s.as_str()],
            toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    if let Some(a) = doc
        .get("global")
        .and_then(|g| g.get("admin"))
        .and_then(toml::Value::as_str)
    {
        addrs.push(a);
    }
    let tables = |key: &str| -> Vec<&toml::Table> {
        doc.get(key)
            .and_then(toml::Value::as_array)
            .map(|a| a.iter().filter_map(toml::Value::as_table).collect())
            .unwrap_or_default()
    };
    for fe in tables("frontend") {
        if let Some(b) = fe.get("bind") {
            addrs.extend(strings(b));
        }
    }
    for be in tables("backend") {
        let servers = be.get("server").and_then(toml::Value::as_array);
        for s in servers.into_iter().flatten() {
            if let Some(a) = s.get("addr").and_then(toml::Value::as_str) {
                addrs.push(a);
            }
        }
    }
    // What `str::to_socket_addrs` hands to getaddrinfo: HOST:PORT that is not a socket address.
    addrs.iter().any(|a| {
        a.parse::<SocketAddr>().is_err()
            && a.rsplit_once(':').is_some_and(|(host, port)| {
                port.parse::<u16>().is_ok()
                    && host.parse::<IpAddr>().is_err()
                    && host != "localhost"
            })
    })
}

/// The config property: `text` loads, or the error points inside it.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    if needs_dns(text) {
        return Ok(());
    }
    let err = match portcullis::runtime::parse(Path::new("fuzz.toml"), text, BindCheck::Skip) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let shown = err.to_string();
    let Some((line, col)) = err.location else {
        return Err(TestCaseError::fail(format!(
            "error without a line and column: {shown}"
        )));
    };
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(
        (1..=lines.len()).contains(&line),
        "line {line} outside the input's {} lines: {shown}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    prop_assert!(
        (1..=width + 1).contains(&col),
        "column {col} outside line {line} ({width} characters): {shown}"
    );
    let prefix = format!("fuzz.toml:{line}:{col}: ");
    prop_assert!(shown.starts_with(&prefix), "{shown}");
    prop_assert!(!err.message.trim().is_empty(), "empty message: {shown}");
    Ok(())
}

/// One edit of a config's lines.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Replace what follows the line's first `=`.
    SetValue(usize, String),
    /// Replace the contents of the line's first `"..."`.
    SetString(usize, String),
    Insert(usize, String),
    /// Cut the whole text at this byte (moved back to a character boundary).
    Truncate(usize),
}

fn apply(seed: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = seed.split('\n').map(str::to_string).collect();
    let mut cut = None;
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::Swap(i, j) if !lines.is_empty() => lines.swap(i % n, j % n),
            Edit::SetValue(i, v) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some(eq) = l.find('=') {
                    l.truncate(eq + 1);
                    l.push(' ');
                    l.push_str(v);
                }
            }
            Edit::SetString(i, s) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                if let Some(open) = l.find('"')
                    && let Some(len) = l[open + 1..].find('"')
                {
                    l.replace_range(open + 1..open + 1 + len, &basic_escape(s));
                }
            }
            Edit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
            Edit::Truncate(at) => cut = Some(*at),
            _ => {}
        }
    }
    let mut text = lines.join("\n");
    if let Some(at) = cut {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

/// `s` escaped for the inside of a TOML basic string (always one line).
fn basic_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// `s` as a one-line TOML basic string.
fn toml_quote(s: &str) -> String {
    format!("\"{}\"", basic_escape(s))
}

/// Values worth trying in any config field (limits, units, addresses, shapes).
const VALUES: &[&str] = &[
    "0",
    "-1",
    "1",
    "256",
    "257",
    "1024",
    "65535",
    "65536",
    "100000",
    "9223372036854775807",
    "-9223372036854775808",
    "1e3",
    "0x10",
    "1_000",
    "true",
    "false",
    "[]",
    "{}",
    "[1, 2]",
    "[\"a\", \"b\"]",
    "[0, 0]",
    "[99, 0]",
    "[0, 9]",
    "[-1, -1]",
    "{ path = \"/\" }",
    "{ interval = \"1ms\" }",
    "{ connect = \"1s\", client = \"1s\" }",
    "{ \"x-a\" = 1 }",
    "\"\"",
    "\" \"",
    "\"0ms\"",
    "\"1us\"",
    "\"9ms\"",
    "\"10ms\"",
    "\"25d\"",
    "\"18446744073709551615s\"",
    "\"99999999999999999999s\"",
    "\"213503982334601d\"",
    "\"1m30\"",
    "\"5 s\"",
    "\"7KiB\"",
    "\"8KiB\"",
    "\"16MiB\"",
    "\"17MiB\"",
    "\"18446744073709551615GiB\"",
    "\"100k\"",
    "\"1g\"",
    "\"2g\"",
    "\"1x\"",
    "\"2xx\"",
    "\"600xx\"",
    "\"657xx\"",
    "\"6554xx\"",
    "\"99999xx\"",
    "\"200-100\"",
    "\"100-599,2xx\"",
    "\",\"",
    "\"127.0.0.1:0\"",
    "\"127.0.0.1:9001\"",
    "\"[::1]:0\"",
    "\"0.0.0.0:65535\"",
    "\"127.0.0.1:65536\"",
    "\"127.0.0.1:\"",
    "\"127.0.0.1\"",
    "\"localhost:0\"",
    "\"1.2.3:80\"",
    "\"%[\"",
    "\"%[path\"",
    "\"%[]\"",
    "\"txn.x\"",
    "\"res.x\"",
    "\"x\"",
    "\"app\"",
    "\"static\"",
    "\"per_ip\"",
    "\"web\"",
    "\"a b\"",
    "\"é\"",
    "\"\\u0000\"",
    "'literal'",
    "'''multi\nline'''",
    "\"\"\"\nmulti\nline\"\"\"",
];

/// Lines worth inserting: section headers, keys of every kind, broken TOML.
const LINES: &[&str] = &[
    "[global]",
    "[global.timeout]",
    "[[frontend]]",
    "[[backend]]",
    "[[stick_table]]",
    "[[frontend.http_request]]",
    "[[frontend.http_response]]",
    "[frontend]",
    "[[global]]",
    "name = \"x\"",
    "name = \"app\"",
    "bind = \"127.0.0.1:0\"",
    "server = [{ name = \"s\", addr = \"127.0.0.1:1\" }]",
    "default_backend = \"app\"",
    "if = \"path_beg /\"",
    "deny = true",
    "type = \"ip\"",
    "size = 10",
    "store = [\"gpc0\"]",
    "health_check = { interval = \"5ms\" }",
    "health_check = { expect = \"657xx\" }",
    "timeout = { client = \"1s\" }",
    "workers = 1025",
    "unknown = 1",
    "http_request = [",
    "]",
    "  { deny = 429, if = \"sc0_http_req_rate gt 100\" },",
    "  { track_sc2 = \"path\" },",
    "  { use_backend = \"%[hdr(x)]\" },",
    "  { set_var = \"txn.a\", expr = \"path,field(1,/)\" },",
    "  {",
    "  }",
    "=",
    "\"",
    "'",
    "[",
    "#",
    "a.b.c = 1",
    "\u{feff}",
    "",
];

/// A string for a config value: no `:`, so no mutated address is a host name.
fn config_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^:\n]{0,16}",
        "[a-z0-9_./%\\[\\]() -]{0,24}",
        cond_text(),
        expr_text(),
    ]
    .prop_map(|s| s.replace(':', ""))
}

fn config_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(VALUES).prop_map(str::to_string),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        3 => config_string().prop_map(|s| toml_quote(&s)),
        1 => "[^\n:]{0,12}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0usize..4096;
    prop_oneof![
        3 => at.clone().prop_map(Edit::Delete),
        2 => at.clone().prop_map(Edit::Duplicate),
        1 => (at.clone(), at.clone()).prop_map(|(i, j)| Edit::Swap(i, j)),
        4 => (at.clone(), config_value()).prop_map(|(i, v)| Edit::SetValue(i, v)),
        4 => (at.clone(), config_string()).prop_map(|(i, s)| Edit::SetString(i, s)),
        2 => (at.clone(), select(LINES)).prop_map(|(i, l)| Edit::Insert(i, l.to_string())),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// The repository's configs plus the config corpus: the mutation seeds.
fn config_seeds() -> Vec<String> {
    let mut seeds: Vec<String> = CONFIG_SEEDS.iter().map(|s| s.to_string()).collect();
    seeds.extend(
        corpus("config")
            .into_iter()
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned()),
    );
    seeds
}

proptest! {
    #![proptest_config(settings(5000, regressions!("config_text")))]

    /// Arbitrary text (and bytes read as text) never panics the loader.
    #[test]
    fn config_arbitrary_text(
        text in prop_oneof![
            ".{0,200}",
            "[a-z_.=\\[\\]{}\"', \n0-9#]{0,200}",
            prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    ) {
        check_config(&text)?;
    }
}

proptest! {
    #![proptest_config(settings(10000, regressions!("config_mutated")))]

    /// Valid configs with lines deleted, duplicated, swapped, values replaced, text cut.
    #[test]
    fn config_mutated(
        seed in select(config_seeds()),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        check_config(&apply(&seed, &edits))?;
    }
}

#[test]
fn config_corpus() {
    replay("config", |b| check_config(&String::from_utf8_lossy(b)));
    // The repository's configs are valid, and so are the corpus seeds named `ok-*`
    // (so the mutations start from configs that reach every check).
    let ok = corpus("config")
        .into_iter()
        .filter(|(name, _)| name.starts_with("ok-"))
        .map(|(_, b)| String::from_utf8_lossy(&b).into_owned());
    for seed in CONFIG_SEEDS.iter().map(|s| s.to_string()).chain(ok) {
        if let Err(e) = portcullis::runtime::parse(Path::new("fuzz.toml"), &seed, BindCheck::Skip) {
            panic!("a seed config does not load: {e}\n{seed}");
        }
    }
}

#[test]
fn apply_edits() {
    let seed = "a = \"x\"\nb = 1\nc";
    assert_eq!(apply(seed, &[Edit::Delete(4)]), "a = \"x\"\nc");
    assert_eq!(
        apply(seed, &[Edit::SetString(0, "q\"\n".into())]),
        "a = \"q\\\"\\u000A\"\nb = 1\nc"
    );
    assert_eq!(
        apply(seed, &[Edit::SetValue(1, "[]".into())]),
        "a = \"x\"\nb = []\nc"
    );
    assert_eq!(apply("aé", &[Edit::Truncate(2)]), "a");
    assert!(needs_dns("[global]\nadmin = \"example.invalid:80\""));
    assert!(!needs_dns("[global]\nadmin = \"127.0.0.1:80\""));
    assert!(!needs_dns("[global]\nadmin = \"nowhere\""));
}

// ---------------------------------------------------------------------------
// Conditions, fetch expressions and log-format strings
// ---------------------------------------------------------------------------

/// Stick tables the `sc*_`/`src_`/`table_` fetches can name (`per_ip`, `per_key`).
const TABLES_TOML: &str = r#"
[[stick_table]]
name = "per_ip"
type = "ip"
size = 100
store = ["http_req_rate(10s)", "http_req_cnt", "conn_cur", "gpc(3)", "gpt(2)", "gpc_rate(3,1s)", "bytes_in_cnt", "bytes_out_rate(1s)"]

[[stick_table]]
name = "per_key"
type = "string"
size = 100
store = ["http_err_cnt", "http_fail_rate(1m)", "sess_cnt"]
"#;

/// The rest of the config that rule strings are embedded in (backends `api`, `static`).
const RULES_HEAD: &str = r#"
[[backend]]
name = "api"
server = [{ name = "s1", addr = "127.0.0.1:9000" }]

[[backend]]
name = "static"
server = [{ name = "s1", addr = "127.0.0.1:9001" }]

[[frontend]]
name = "web"
bind = "127.0.0.1:0"
default_backend = "api"
"#;

static TABLES: LazyLock<Arc<StickTables>> = LazyLock::new(|| {
    let text = format!("{TABLES_TOML}{RULES_HEAD}");
    match portcullis::runtime::parse(Path::new("tables.toml"), &text, BindCheck::Skip) {
        Ok(cfg) => Arc::clone(&cfg.tables),
        Err(e) => panic!("the fuzz tables do not load: {e}"),
    }
});

/// Runs `f` with the compile environment of a rule in `phase` (same backends and tables as the config).
fn with_env<R>(phase: Phase, f: impl FnOnce(&Env<'_>) -> R) -> R {
    let backends = HashMap::from([("api".to_string(), 0), ("static".to_string(), 1)]);
    let cx = CompileCtx {
        backends: &backends,
        plugins: portcullis::rules::Extensions::empty(),
        tables: &TABLES,
        resolvers: portcullis::resolve::Resolvers::none(),
    };
    f(&Env { ctx: &cx, phase })
}

/// A transaction in `phase` with a bit of everything fetches read, plus fuzzed parts.
fn txn(phase: Phase, uri: &str, header: &[u8]) -> Txn {
    let mut t = Txn::for_test(uri, SocketAddr::from(([10, 1, 2, 3], 5555)));
    let h = &mut t.req_headers;
    for (name, value) in [
        ("host", &b"www.Example.com:8080"[..]),
        ("cookie", b"a=1; sid=abc; =x; b"),
        ("x-forwarded-for", b"203.0.113.9, 10.0.0.1, [::1]:80"),
        ("x-list", b"\"c,d\", e, , \"unterminated"),
        ("x-empty", b""),
        ("x-bin", b"\xff\xfe0"),
        ("x-api-key", b"K"),
    ] {
        if let Ok(v) = http::HeaderValue::from_bytes(value) {
            h.append(name, v);
        }
    }
    if let Ok(v) = http::HeaderValue::from_bytes(header) {
        h.append("x-fuzz", v.clone());
        h.append("x-fuzz", v);
    }
    t.set_var(VarScope::Txn, "n", Sample::Int(7));
    t.set_var(VarScope::Txn, "three", Sample::Int(3));
    t.set_var(VarScope::Txn, "zero", Sample::Int(0));
    t.set_var(
        VarScope::Txn,
        "s",
        Sample::Str(String::from_utf8_lossy(header).into()),
    );
    t.set_var(VarScope::Txn, "ip", Sample::Ip(IpAddr::from([10, 0, 0, 1])));
    t.set_var(VarScope::Txn, "b", Sample::Bin(header.to_vec()));
    t.set_var(VarScope::Sess, "s", Sample::Bool(true));
    t.backend = Some(BackendChoice::Index(1));
    if phase == Phase::Response {
        t.phase = Phase::Response;
        t.status = http::StatusCode::NOT_FOUND;
        for (name, value) in [
            ("set-cookie", &b"sid=new; Path=/"[..]),
            ("set-cookie", b"=; x"),
            ("content-length", b"12"),
            ("x-fuzz", header),
        ] {
            if let Ok(v) = http::HeaderValue::from_bytes(value) {
                t.resp_headers.append(name, v);
            }
        }
    }
    t
}

/// A rule-string error must point inside the string, on a character boundary.
fn check_offset(text: &str, e: &ParseError) -> Result<(), TestCaseError> {
    prop_assert!(
        e.offset <= text.len(),
        "offset {} past the end ({}) of {text:?}: {}",
        e.offset,
        text.len(),
        e.message
    );
    prop_assert!(
        text.is_char_boundary(e.offset),
        "offset {} inside a character of {text:?}: {}",
        e.offset,
        e.message
    );
    prop_assert!(!e.message.trim().is_empty(), "empty message for {text:?}");
    Ok(())
}

/// Fetch calls that mostly compile (every registry entry, arguments of the
/// right shape), so evaluation gets exercised, not only the error paths.
/// Fetches whose value changes on every call (`uuid`): parsed by the
/// fuzzers but kept out of the semantic comparisons, which evaluate an
/// expression twice and expect the same answer.
const VARYING_FETCH_CALLS: &[&str] = &["uuid", "uuid(4)"];

const FETCH_CALLS: &[&str] = &[
    "ssl_fc",
    "ssl_fc_sni",
    "ssl_fc_protocol",
    "ssl_fc_cipher",
    "ssl_fc_alpn",
    "ssl_c_used",
    "ssl_c_verify",
    "ssl_c_s_dn",
    "ssl_c_s_dn(CN)",
    "ssl_c_s_dn(OU,-1)",
    "ssl_c_s_dn(,,rfc2253)",
    "req.body",
    "req.len",
    "req_len",
    "req.payload(0,4)",
    "req.payload(2,0)",
    "req.payload_lv(0,1)",
    "req.payload_lv(0,2,4)",
    "res.len",
    "res.payload(0,4)",
    "res.payload(2,0)",
    "res.payload_lv(0,1)",
    "res.payload_lv(0,2,4)",
    "path",
    "pathq",
    "url",
    "query",
    "url_param(id)",
    "urlp(x,;)",
    "base",
    "method",
    "hdr(host)",
    "hdr(x-list,2)",
    "hdr(x-fuzz,-1)",
    "hdr(x-fuzz,1)",
    "req.hdr(x-forwarded-for,1)",
    "res.hdr(x-fuzz)",
    "shdr(set-cookie)",
    "req.fhdr(x-list)",
    "res.fhdr(x-fuzz,-1)",
    "fhdr(x-bin)",
    "fhdr(x-fuzz)",
    "hdr_ip(x-forwarded-for)",
    "hdr_ip(x-fuzz)",
    "req.hdr_ip(x-forwarded-for,-2)",
    "hdr_cnt",
    "hdr_cnt(x-list)",
    "req.hdr_cnt(cookie)",
    "res.hdr_cnt",
    "shdr_cnt(set-cookie)",
    "req.fhdr_cnt(x-list)",
    "res.fhdr_cnt",
    "cook(sid)",
    "req.cook(a)",
    "res.cook(sid)",
    "scook(x)",
    "src",
    "sc0_tracked",
    "sc1_tracked(per_ip)",
    "sc_tracked(2)",
    "sc2_tracked",
    "sc0_http_req_rate",
    "sc1_get_gpc(1)",
    "sc0_get_gpc0",
    "sc_get_gpc(0,2,per_ip)",
    "sc2_inc_gpc(2,per_ip)",
    "sc0_clr_gpc(1)",
    "src_http_req_cnt(per_ip)",
    "src_conn_cur(per_ip)",
    "src_kbytes_in(per_ip)",
    "sc0_http_err_cnt(per_key)",
    "sc1_get_gpt(1)",
    "sc0_gpc_rate(2)",
    "sc0_trackers",
    "table_cnt(per_ip)",
    "table_avl",
    "src_port",
    "dst",
    "dst_port",
    "dst_is_local",
    "src_is_local",
    "status",
    "res.grpc_status",
    "var(txn.n)",
    "var(txn.s)",
    "var(txn.b)",
    "var(txn.ip)",
    "var(txn.zero)",
    "var(sess.s)",
    "var(txn.none,dflt)",
    "var(proc.p)",
    "var(req.x)",
    "var(res.x)",
    "always_true",
    "always_false",
    "int(7)",
    "int(0)",
    "int(-9223372036854775808)",
    "int(9223372036854775807)",
    "str(abc)",
    "str('a b')",
    "str(\"\")",
    "str(é)",
    "fe_name",
    "be_name",
    "http_version",
    "req.ver",
    "date",
    "lua.f",
];

/// Converter calls that mostly compile.
const CONVERTER_CALLS: &[&str] = &[
    "http_date",
    "http_date(3600)",
    "lower",
    "upper",
    "length",
    "len",
    "base64",
    "hex",
    "field(1,/)",
    "field(-1,/.)",
    "field(2,_,0)",
    "field(-2,_,3)",
    "field(9223372036854775807,a)",
    "field(-9223372036854775808,a,9223372036854775807)",
    "word(1,/)",
    "word(-1,.,2)",
    "regsub(/,_)",
    "regsub(a,b,gi)",
    "regsub(\"^/(\\w+)/(.*)$\",\"\\2-\\1$\",g)",
    "regsub([ab],_,g)",
    "regsub(,x,g)",
    "regsub(\\b,$)",
    "bool",
    "add(2)",
    "sub(txn.n)",
    "mul(-1)",
    "mul(9223372036854775807)",
    "div(txn.zero)",
    "div(-1)",
    "mod(3)",
    "mod(-1)",
    "mod(txn.three)",
    "json",
    "json(ascii)",
    "url_dec",
    "url_dec(1)",
    "ipmask(24)",
    "ipmask(255.255.0.0,64)",
    "ipmask(0,0)",
    "ipmask(32,128)",
    "sha2",
    "sha2(512)",
    "hmac(sha256,c2VjcmV0)",
    "hmac(sha384,txn.s)",
    "b64dec",
    "crc32",
    "crc32(1)",
    "lua.c",
];

/// Values a term compares with: text, numbers, ranges, operators, addresses, regexes.
const COND_VALUES: &[&str] = &[
    "/",
    "/api",
    "/api/",
    "api",
    ".css",
    ".js",
    "www.",
    "example.com",
    "Example.COM",
    "GET",
    "POST",
    "abc",
    "'a b'",
    "\"q\\\"x\"",
    "''",
    "0",
    "1",
    "7",
    "-5",
    "404",
    "200:299",
    "500:",
    ":404",
    "9:1",
    "gt 5",
    "ge 0",
    "lt -1",
    "le 9223372036854775807",
    "eq -9223372036854775808",
    "ne 404",
    "99999999999999999999",
    "10.0.0.0/8",
    "10.1.0.0/255.255.0.0",
    "0.0.0.0/0",
    "::1",
    "::/0",
    "2001:db8::/32",
    "::ffff:10.0.0.0/104",
    "127.0.0.1",
    "^/api",
    "^(a|b)+$",
    "'[a-'",
    "\\.png$",
    "é",
    "-- -5",
];

/// Flags before a term's values.
const COND_FLAGS: &[&str] = &[
    "",
    "",
    "",
    "-i",
    "-m str",
    "-m beg",
    "-m end",
    "-m sub",
    "-m reg",
    "-m dir",
    "-m dom",
    "-m len",
    "-m int",
    "-m ip",
    "-m found",
    "-m bool",
    "-i -m beg",
    "-m sub -i",
    "--",
];

/// ACL keyword suffixes (`path_beg` = `path -m beg`).
const ACL_SUFFIXES: &[&str] = &[
    "", "", "", "_beg", "_end", "_sub", "_reg", "_dir", "_dom", "_len",
];

/// One edit that usually breaks a well-formed string: the error paths.
#[derive(Debug, Clone)]
enum Breakage {
    None,
    Insert(usize, &'static str),
    Delete(usize, usize),
    Cut(usize),
}

fn breakage() -> impl Strategy<Value = Breakage> {
    let noise = select(
        &[
            "(",
            ")",
            "{",
            "}",
            "!",
            ",",
            "\"",
            "'",
            "\\",
            "-m",
            "-i",
            " and ",
            " or ",
            "&&",
            "||",
            "%[",
            "]",
            "%",
            " ",
            "é",
            "\u{0}",
            "\u{1f600}",
        ][..],
    );
    prop_oneof![
        6 => Just(Breakage::None),
        2 => (any::<usize>(), noise).prop_map(|(i, s)| Breakage::Insert(i, s)),
        1 => (any::<usize>(), 1usize..4).prop_map(|(i, n)| Breakage::Delete(i, n)),
        1 => any::<usize>().prop_map(Breakage::Cut),
    ]
}

/// `s` with `b` applied at character positions (so the result stays valid UTF-8).
fn broken(s: String, b: &Breakage) -> String {
    let chars: Vec<char> = s.chars().collect();
    let at = |i: usize| i % (chars.len() + 1);
    match *b {
        Breakage::None => s,
        Breakage::Insert(i, t) => {
            let i = at(i);
            chars[..i]
                .iter()
                .chain(t.chars().collect::<Vec<_>>().iter())
                .chain(&chars[i..])
                .collect()
        }
        Breakage::Delete(i, n) => {
            let i = at(i);
            let j = (i + n).min(chars.len());
            chars[..i].iter().chain(&chars[j..]).collect()
        }
        Breakage::Cut(i) => chars[..at(i)].iter().collect(),
    }
}

/// A new fetch or converter must be added to the call tables, so the fuzzer reaches it.
#[test]
fn call_tables_cover_the_registries() {
    let named = |calls: &[&str], name: &str| {
        let prefix = name.trim_end_matches('*');
        calls.iter().any(|c| {
            let called = c.split('(').next().unwrap_or(c);
            if name.ends_with('*') {
                called.starts_with(prefix) && called.len() > prefix.len()
            } else {
                called == name
            }
        })
    };
    for d in FETCHES {
        assert!(
            named(FETCH_CALLS, d.name) || named(VARYING_FETCH_CALLS, d.name),
            "FETCH_CALLS lacks {}",
            d.name
        );
    }
    for d in CONVERTERS {
        assert!(
            named(CONVERTER_CALLS, d.name),
            "CONVERTER_CALLS lacks {}",
            d.name
        );
    }
}

/// A well-formed fetch expression: a call, then converters.
fn good_expr() -> impl Strategy<Value = String> {
    (
        select(FETCH_CALLS),
        prop::collection::vec(select(CONVERTER_CALLS), 0..4),
    )
        .prop_map(|(f, cs)| {
            let mut s = f.to_string();
            for c in cs {
                s.push(',');
                s.push_str(c);
            }
            s
        })
}

/// A term: an expression (or an ACL keyword), flags, values.
fn good_term() -> impl Strategy<Value = String> {
    (
        good_expr(),
        select(ACL_SUFFIXES),
        select(COND_FLAGS),
        prop::collection::vec(select(COND_VALUES), 0..3),
    )
        .prop_map(|(e, suffix, flags, values)| {
            // A suffix only makes an ACL keyword of a bare fetch name.
            let head = if e
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.".contains(c))
            {
                format!("{e}{suffix}")
            } else {
                e
            };
            [head.as_str(), flags]
                .into_iter()
                .chain(values)
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
}

/// A well-formed condition: terms under `!`, `not`, `( )`, `{ }`, joined by and/or.
fn good_cond() -> impl Strategy<Value = String> {
    let leaf = good_term().boxed();
    leaf.prop_recursive(3, 8, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                select(&[" and ", " or ", " && ", " || ", "&&"][..]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a}{op}{b}")),
            inner.clone().prop_map(|a| format!("!{a}")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.clone().prop_map(|a| format!("( {a} )")),
            good_term().prop_map(|t| format!("{{ {t} }}")),
        ]
    })
}

/// Noise words for the unstructured generators.
const NOISE: &[&str] = &[
    "(", ")", "{", "}", "!", "not", "and", "or", "&&", "||", "&", "|", "AND", "Or", "-m", "-i",
    "--", "-x", "-", "found", "begin", "eq", "gt", "\"", "'", "\\\"", "\\", ",", "%[", "%%", "%",
    "[", "]", ":", "é", "𝔘", "\u{0}", "\u{7f}", "\u{200b}", "\n", "\t",
];

/// Words from every vocabulary, joined by blanks or nothing.
fn word_soup(max: usize) -> impl Strategy<Value = String> {
    let word = prop_oneof![
        3 => select(FETCH_CALLS),
        1 => select(VARYING_FETCH_CALLS),
        2 => select(CONVERTER_CALLS),
        3 => select(COND_VALUES),
        2 => select(COND_FLAGS),
        3 => select(NOISE),
    ];
    (
        prop::collection::vec(word, 0..max),
        prop::collection::vec(
            select(&[" ", " ", " ", "", "  ", "\t", "\u{a0}", ","][..]),
            16,
        ),
    )
        .prop_map(|(words, seps)| {
            let mut s = String::new();
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    s.push_str(seps[i % seps.len()]);
                }
                s.push_str(w);
            }
            s
        })
}

/// A condition: well-formed (sometimes broken by one edit), or word soup, or anything.
fn cond_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (good_cond(), breakage()).prop_map(|(c, b)| broken(c, &b)),
        2 => word_soup(10),
        1 => ".{0,40}",
    ]
}

/// A fetch expression: well-formed (sometimes broken by one edit), or word soup, or anything.
fn expr_text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (good_expr(), breakage()).prop_map(|(e, b)| broken(e, &b)),
        2 => word_soup(4),
        1 => ".{0,30}",
    ]
}

/// A log-format string: literals, `%%`, `%`, and `%[...]` around expressions.
fn logformat_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => expr_text().prop_map(|e| format!("%[{e}]")),
        1 => expr_text().prop_map(|e| format!("%[ {e} ]")),
        2 => select(&["%", "%%", "%[", "]", "[", "%[]", "%[ ]", "'", "\"", "é", "\u{0}"][..])
            .prop_map(str::to_string),
        3 => "[^%]{0,8}",
    ];
    (prop::collection::vec(piece, 0..6), breakage()).prop_map(|(p, b)| broken(p.concat(), &b))
}

/// Parses `text` as a condition in both phases; evaluates what parses.
fn check_cond(text: &str, uri: &str, header: &[u8]) -> Result<(), TestCaseError> {
    for phase in [Phase::Request, Phase::Response] {
        let parsed = with_env(phase, |env| Condition::parse(text, env));
        match parsed {
            Ok(c) => {
                let t = txn(phase, uri, header);
                let held = c.holds(&t);
                prop_assert_eq!(c.negated().holds(&t), !held, "unless = !if for {:?}", text);
            }
            Err(e) => check_offset(text, &e)?,
        }
    }
    Ok(())
}

fn check_expr(text: &str, uri: &str, header: &[u8]) -> Result<(), TestCaseError> {
    for phase in [Phase::Request, Phase::Response] {
        let parsed = with_env(phase, |env| parse_expr(text, 0, env, "in expression"));
        match parsed {
            Ok(e) => {
                let t = txn(phase, uri, header);
                if let Some(v) = e.eval(&t) {
                    let mut out = String::new();
                    v.write_to(&mut out);
                    let _ = v.into_sample();
                }
            }
            Err(e) => check_offset(text, &e)?,
        }
    }
    Ok(())
}

fn check_logformat(text: &str, uri: &str, header: &[u8]) -> Result<(), TestCaseError> {
    for phase in [Phase::Request, Phase::Response] {
        let parsed = with_env(phase, |env| LogFormat::parse(text, env));
        match parsed {
            Ok(f) => {
                let t = txn(phase, uri, header);
                let out = f.render_string(&t);
                if let Some(lit) = f.as_literal() {
                    prop_assert_eq!(lit, out.as_str());
                    let unescaped = text.replace("%%", "%");
                    prop_assert_eq!(lit, unescaped.as_str());
                }
            }
            Err(e) => check_offset(text, &e)?,
        }
    }
    Ok(())
}

/// Where a rule string goes in a config: the list, the phase, and the rule's
/// TOML around the quoted string.
#[derive(Debug, Clone, Copy)]
enum Site {
    If,
    Unless,
    Expr,
    Body,
}

impl Site {
    fn phase(self) -> Phase {
        match self {
            Site::Unless => Phase::Response,
            _ => Phase::Request,
        }
    }

    /// (list, TOML before the string, TOML after it)
    fn parts(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Site::If => ("http_request", "deny = true, if = ", ""),
            Site::Unless => ("http_response", "unless = ", ", del_header = \"x\""),
            Site::Expr => ("http_request", "set_var = \"txn.v\", expr = ", ""),
            Site::Body => ("http_request", "return = 200, body = ", ""),
        }
    }

    /// What the rule parser says about `value`: `Err(offset)` if it refuses it.
    fn parse(self, value: &str) -> Result<(), usize> {
        with_env(self.phase(), |env| match self {
            Site::If | Site::Unless => Condition::parse(value, env).map(drop),
            Site::Expr => parse_expr(value, 0, env, "in expression").map(drop),
            Site::Body => LogFormat::parse(value, env).map(drop),
        })
        .map_err(|e| e.offset)
    }
}

/// A rule string inside a config: the loader refuses exactly what the rule
/// parser refuses, and points at the same place. The place is checked
/// without the code under test: the TOML text from the opening quote to the
/// reported column must decode to the value up to the parser's offset.
fn check_in_config(site: Site, value: &str) -> Result<(), TestCaseError> {
    let (list, before, after) = site.parts();
    let quoted = toml_quote(value);
    let head = format!("{TABLES_TOML}{RULES_HEAD}{list} = [\n  {{ {before}");
    let text = format!("{head}{quoted}{after} }},\n]\n");
    check_config(&text)?;
    let parsed = site.parse(value);
    let err = match portcullis::runtime::parse(Path::new("fuzz.toml"), &text, BindCheck::Skip) {
        Ok(_) => {
            prop_assert!(
                parsed.is_ok(),
                "the config loads {quoted}, the parser refuses it"
            );
            return Ok(());
        }
        Err(e) => e,
    };
    let Err(offset) = parsed else {
        return Err(TestCaseError::fail(format!(
            "the parser accepts {quoted}, the config refuses it: {err}"
        )));
    };
    let (line, col) = err.location.unwrap_or((0, 0));
    let line_start = head.rfind('\n').map_or(0, |i| i + 1);
    prop_assert_eq!(line, head.matches('\n').count() + 1, "{} ({:?})", err, site);
    // The byte the column points at, and the value up to there.
    let at = text[line_start..]
        .char_indices()
        .nth(col - 1)
        .map_or(text.len(), |(i, _)| line_start + i);
    let open = head.len();
    prop_assert!(
        (open + 1..open + quoted.len()).contains(&at),
        "{} points outside the string {}",
        err,
        quoted
    );
    let prefix = format!("v = \"{}\"", &text[open + 1..at]);
    let decoded = match prefix.parse::<toml::Table>() {
        Ok(t) => t
            .get("v")
            .and_then(toml::Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Err(e) => {
            return Err(TestCaseError::fail(format!(
                "{err} points inside an escape of {quoted}: {e}"
            )));
        }
    };
    prop_assert!(value.starts_with(&decoded), "{}: {:?}", err, decoded);
    // The error's byte is in the character the column points at (or past the value).
    let next = value[decoded.len()..]
        .chars()
        .next()
        .map_or(0, char::len_utf8);
    prop_assert!(
        (decoded.len()..decoded.len() + next.max(1)).contains(&offset.min(value.len()))
            || (decoded.len() == value.len() && offset >= value.len()),
        "{} for parser offset {} in {:?}: column at value byte {}",
        err,
        offset,
        value,
        decoded.len()
    );
    Ok(())
}

/// A URI for the synthetic transaction (an unparsable one becomes `/`).
fn uri() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "/",
                "/api/v1/users?id=7&x=%41+b",
                "/a%zz?%",
                "http://h:1/p?q",
                "*"
            ][..]
        )
        .prop_map(str::to_string),
        "/[a-z/.%?=&+-]{0,20}",
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,16}".prop_map(String::into_bytes),
        select(
            &[
                "10.0.0.7",
                "[::1]:80",
                "a, \"b,c\", d",
                " 12 ",
                "%2F%zz",
                "-0"
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ]
}

proptest! {
    #![proptest_config(settings(10000, regressions!("cond")))]

    #[test]
    fn cond_parse_and_eval(text in cond_text(), uri in uri(), header in header_value()) {
        check_cond(&text, &uri, &header)?;
    }
}

proptest! {
    #![proptest_config(settings(10000, regressions!("expr")))]

    #[test]
    fn expr_parse_and_eval(text in expr_text(), uri in uri(), header in header_value()) {
        check_expr(&text, &uri, &header)?;
    }
}

proptest! {
    #![proptest_config(settings(10000, regressions!("logformat")))]

    #[test]
    fn logformat_parse_and_render(text in logformat_text(), uri in uri(), header in header_value()) {
        check_logformat(&text, &uri, &header)?;
    }
}

proptest! {
    #![proptest_config(settings(1000, regressions!("rules_in_config")))]

    /// Conditions, expressions and log-format strings embedded in a config file.
    #[test]
    fn rule_strings_in_config(cond in cond_text(), expr in expr_text(), fmt in logformat_text()) {
        check_in_config(Site::If, &cond)?;
        check_in_config(Site::Unless, &cond)?;
        check_in_config(Site::Expr, &expr)?;
        check_in_config(Site::Body, &fmt)?;
    }
}

/// Whether condition `text` holds for `t` in the request phase; `None` if it does not parse.
fn holds(text: &str, t: &Txn) -> Option<bool> {
    with_env(Phase::Request, |env| Condition::parse(text, env).ok()).map(|c| c.holds(t))
}

/// Conditions combined with and/or/not/parentheses evaluate as the boolean
/// algebra says (`and` is wrapped in parentheses: `or` binds looser).
fn check_cond_algebra(a: &str, b: &str, uri: &str, header: &[u8]) -> Result<(), TestCaseError> {
    let t = txn(Phase::Request, uri, header);
    let (Some(x), Some(y)) = (holds(a, &t), holds(b, &t)) else {
        return Ok(());
    };
    for (form, want) in [
        (format!("{a} or {b}"), x || y),
        (format!("{a}||{b}"), x || y),
        (format!("( {a} ) and ( {b} )"), x && y),
        (format!("({a})&&({b})"), x && y),
        (format!("!( {a} )"), !x),
        (format!("not ({a}) or {b}"), !x || y),
        (format!("( ( {a} ) )"), x),
        (format!("{b} or !!({a})"), x || y),
    ] {
        prop_assert_eq!(holds(&form, &t), Some(want), "{}", form);
    }
    Ok(())
}

/// HAProxy's `field` and `word` converters (`sample_conv_field` and
/// `sample_conv_word` in sample.c), transcribed step by step: the reference
/// for ours. `None` is HAProxy's "no sample".
fn haproxy_field<'a>(
    s: &'a [u8],
    seps: &[u8],
    index: i64,
    count: i64,
    word: bool,
) -> Option<&'a [u8]> {
    let is_sep = |c: u8| seps.contains(&c);
    let mut count = count;
    let (mut start, mut end);
    let mut found = false;
    let mut n: i64;
    if !word {
        if index < 0 {
            n = -1;
            (start, end) = (s.len(), s.len());
            while start > 0 {
                if is_sep(s[start - 1]) {
                    if n == index {
                        if count == 1 {
                            found = true;
                            break;
                        } else if count > 1 {
                            count -= 1;
                        }
                    } else {
                        end = start - 1;
                        n -= 1;
                    }
                }
                start -= 1;
            }
        } else {
            n = 1;
            (start, end) = (0, 0);
            while end < s.len() {
                if is_sep(s[end]) {
                    if n == index {
                        if count == 1 {
                            found = true;
                            break;
                        } else if count > 1 {
                            count -= 1;
                        }
                    } else {
                        start = end + 1;
                        n += 1;
                    }
                }
                end += 1;
            }
        }
    } else {
        n = 0;
        let mut inword = false;
        if index < 0 {
            (start, end) = (s.len(), s.len());
            while start > 0 {
                let sep = is_sep(s[start - 1]);
                if !inword {
                    if !sep {
                        if n != index {
                            n -= 1;
                            end = start;
                        }
                        inword = true;
                    }
                } else if sep {
                    if n == index {
                        if count == 1 {
                            found = true;
                            break;
                        } else if count > 1 {
                            count -= 1;
                        }
                    }
                    inword = false;
                }
                start -= 1;
            }
        } else {
            (start, end) = (0, 0);
            while end < s.len() {
                let sep = is_sep(s[end]);
                if !inword {
                    if !sep {
                        if n != index {
                            n += 1;
                            start = end;
                        }
                        inword = true;
                    }
                } else if sep {
                    if n == index {
                        if count == 1 {
                            found = true;
                            break;
                        } else if count > 1 {
                            count -= 1;
                        }
                    }
                    inword = false;
                }
                end += 1;
            }
        }
    }
    (found || n == index).then(|| &s[start..end])
}

/// `field`/`word` agree with HAProxy's (ASCII separators, any text).
fn check_field(
    s: &str,
    seps: &str,
    index: i64,
    count: Option<i64>,
    word: bool,
) -> Result<(), TestCaseError> {
    let name = if word { "word" } else { "field" };
    let text = match count {
        Some(c) => format!("var(txn.fz),{name}({index},'{seps}',{c})"),
        None => format!("var(txn.fz),{name}({index},'{seps}')"),
    };
    let Ok(expr) = with_env(Phase::Request, |env| parse_expr(&text, 0, env, "")) else {
        return Err(TestCaseError::fail(format!("{text} does not parse")));
    };
    let mut t = txn(Phase::Request, "/", b"");
    t.set_var(VarScope::Txn, "fz", Sample::Str(s.to_string()));
    let got = expr.eval(&t).map(|v| v.into_text().into_owned());
    let want = haproxy_field(
        s.as_bytes(),
        seps.as_bytes(),
        index,
        count.unwrap_or(1),
        word,
    )
    .map(|b| String::from_utf8_lossy(b).into_owned());
    prop_assert_eq!(got, want, "{} on {:?}", text, s);
    Ok(())
}

/// `hdr`, `fhdr` and `hdr_cnt` against a naive reading of comma-separated
/// header lines (values without quotes, where commas always separate).
fn check_headers(lines: &[String], occ: i32) -> Result<(), TestCaseError> {
    let mut t = txn(Phase::Request, "/", b"");
    for l in lines {
        let v = http::HeaderValue::from_str(l).map_err(|e| TestCaseError::fail(e.to_string()))?;
        t.req_headers.append("x-m", v);
    }
    let items: Vec<&str> = lines
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .collect();
    let pick = |all: &[&str]| -> Option<String> {
        let k = usize::try_from(occ.unsigned_abs()).ok()?;
        if k == 0 || k > all.len() {
            return None;
        }
        let i = if occ > 0 { k - 1 } else { all.len() - k };
        Some(all[i].to_string())
    };
    let whole: Vec<&str> = lines.iter().map(String::as_str).collect();
    let eval = |text: &str| {
        with_env(Phase::Request, |env| {
            parse_expr(text, 0, env, "")
                .ok()
                .and_then(|e| e.eval(&t).map(|v| v.into_text().into_owned()))
        })
    };
    prop_assert_eq!(eval(&format!("hdr(x-m,{occ})")), pick(&items));
    prop_assert_eq!(eval(&format!("req.fhdr(x-m,{occ})")), pick(&whole));
    if occ == -1 {
        prop_assert_eq!(eval("hdr(x-m)"), pick(&items));
    }
    prop_assert_eq!(eval("hdr_cnt(x-m)"), Some(items.len().to_string()));
    Ok(())
}

/// A term `var(txn.fz) [-i] -m <method> '<pattern>'` against the plain
/// string operations each match method stands for.
fn check_matcher(
    value: &str,
    pattern: &str,
    method: &str,
    icase: bool,
) -> Result<(), TestCaseError> {
    let flag = if icase { "-i " } else { "" };
    let text = format!("var(txn.fz) {flag}-m {method} '{pattern}'");
    let fold = |x: &str| {
        if icase {
            x.to_ascii_lowercase()
        } else {
            x.to_string()
        }
    };
    let (v, p) = (fold(value), fold(pattern));
    let num = |p: &str| model_int_range(p.as_bytes());
    let want = match method {
        "str" => Some(v == p),
        "beg" => Some(v.starts_with(&p)),
        "end" => Some(v.ends_with(&p)),
        "sub" => Some(v.contains(&p)),
        "dir" => Some(word_match(v.as_bytes(), p.as_bytes(), b"/?")),
        "dom" => Some(word_match(v.as_bytes(), p.as_bytes(), b"/?.:")),
        "reg" => regex::RegexBuilder::new(pattern)
            .case_insensitive(icase)
            .build()
            .ok()
            .map(|r| r.is_match(value)),
        "len" => num(pattern).map(|(lo, hi)| {
            let n = i64::try_from(value.len()).unwrap_or(i64::MAX);
            lo <= n && n <= hi
        }),
        "int" => num(pattern).map(|(lo, hi)| {
            value
                .trim()
                .parse::<i64>()
                .is_ok_and(|n| lo <= n && n <= hi)
        }),
        _ => None,
    };
    let mut t = txn(Phase::Request, "/", b"");
    t.set_var(VarScope::Txn, "fz", Sample::Str(value.to_string()));
    let got = holds(&text, &t);
    match want {
        // A pattern of nothing but delimiters is refused for dir/dom.
        Some(_) if got.is_none() && matches!(method, "dir" | "dom") => {}
        _ => prop_assert_eq!(got, want, "{} on {:?}", text, value),
    }
    Ok(())
}

proptest! {
    #![proptest_config(settings(2000, regressions!("semantics")))]

    #[test]
    fn cond_algebra(a in good_cond(), b in good_cond(), uri in uri(), header in header_value()) {
        check_cond_algebra(&a, &b, &uri, &header)?;
    }

}

proptest! {
    #![proptest_config(settings(20000, regressions!("models")))]

    #[test]
    fn field_and_word_match_haproxy(
        s in "[a-c_/.é ]{0,12}",
        seps in "[_/. ]{1,3}",
        index in prop_oneof![-6i64..=-1, 1i64..=6],
        count in prop::option::of(0i64..6),
        word in any::<bool>(),
    ) {
        check_field(&s, &seps, index, count, word)?;
    }

    #[test]
    fn matchers_match_their_models(
        value in "[aAbB/.?:é0-9-]{0,10}",
        pattern in "[aAbB/.?:é0-9-]{0,4}",
        method in select(&["str", "beg", "end", "sub", "dir", "dom", "reg", "len", "int"][..]),
        icase in any::<bool>(),
    ) {
        let icase = icase && !matches!(method, "len" | "int");
        check_matcher(&value, &pattern, method, icase)?;
    }

    #[test]
    fn header_occurrences(
        lines in prop::collection::vec("[a-c ,]{0,8}", 1..4),
        occ in prop_oneof![-6i32..=-1, 1i32..=6],
    ) {
        check_headers(&lines, occ)?;
    }
}

#[test]
fn cond_corpus() {
    replay("cond", |b| {
        let text = seed_text(b);
        check_cond(&text, "/api/x?id=1", b"v")?;
        check_in_config(Site::If, &text)?;
        check_in_config(Site::Unless, &text)
    });
}

#[test]
fn expr_corpus() {
    replay("expr", |b| {
        let text = seed_text(b);
        check_expr(&text, "/api/x?id=1", b"v")?;
        check_in_config(Site::Expr, &text)
    });
}

#[test]
fn logformat_corpus() {
    replay("logformat", |b| {
        let text = seed_text(b);
        check_logformat(&text, "/api/x?id=1", b"v")?;
        check_in_config(Site::Body, &text)
    });
}

// ---------------------------------------------------------------------------
// Map files
// ---------------------------------------------------------------------------

const METHODS: [MatchMethod; 12] = [
    MatchMethod::Found,
    MatchMethod::Bool,
    MatchMethod::Int,
    MatchMethod::Ip,
    MatchMethod::Str,
    MatchMethod::Beg,
    MatchMethod::End,
    MatchMethod::Sub,
    MatchMethod::Reg,
    MatchMethod::Len,
    MatchMethod::Dir,
    MatchMethod::Dom,
];

/// A naive reading of a map file, written from HAProxy's rules, not from the
/// code under test: `#` in column 1 is a comment, CR or NUL ends a line, the
/// key is the first blank-separated word, the value the rest without the
/// blanks around it.
fn model_entries(text: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let blank = |c: u8| c == b' ' || c == b'\t';
    let mut out = Vec::new();
    for raw in text.split(|&c| c == b'\n') {
        if raw.first() == Some(&b'#') {
            continue;
        }
        let mut line: Vec<u8> = raw
            .iter()
            .copied()
            .take_while(|&c| c != b'\r' && c != 0)
            .collect();
        while line.first().is_some_and(|&c| blank(c)) {
            line.remove(0);
        }
        if line.is_empty() {
            continue;
        }
        let key: Vec<u8> = line.iter().copied().take_while(|&c| !blank(c)).collect();
        let mut value: Vec<u8> = line[key.len()..].to_vec();
        while value.first().is_some_and(|&c| blank(c)) {
            value.remove(0);
        }
        while value.last().is_some_and(|&c| blank(c)) {
            value.pop();
        }
        out.push((key, value));
    }
    out
}

/// The value the model picks for `key` with `method`, when it has a model.
fn model_lookup(
    entries: &[(Vec<u8>, Vec<u8>)],
    regexes: &[Option<regex::Regex>],
    method: MatchMethod,
    key: &[u8],
) -> Option<Option<Vec<u8>>> {
    let first =
        |f: &dyn Fn(&[u8]) -> bool| entries.iter().find(|(k, _)| f(k)).map(|(_, v)| v.clone());
    Some(match method {
        MatchMethod::Str => first(&|k| k == key),
        MatchMethod::Sub => first(&|k| key.windows(k.len()).any(|w| w == k)),
        MatchMethod::End => first(&|k| key.ends_with(k)),
        MatchMethod::Beg => {
            // Longest prefix; the first of equally long ones.
            let mut best: Option<&(Vec<u8>, Vec<u8>)> = None;
            for e in entries.iter().filter(|(k, _)| key.starts_with(k)) {
                if best.is_none_or(|b| e.0.len() > b.0.len()) {
                    best = Some(e);
                }
            }
            best.map(|(_, v)| v.clone())
        }
        MatchMethod::Dir => first(&|k| word_match(key, k, b"/?")),
        MatchMethod::Dom => first(&|k| word_match(key, k, b"/?.:")),
        MatchMethod::Reg => {
            let text = String::from_utf8_lossy(key);
            entries
                .iter()
                .zip(regexes)
                .find(|(_, r)| r.as_ref().is_some_and(|r| r.is_match(&text)))
                .map(|((_, v), _)| v.clone())
        }
        MatchMethod::Int => {
            let n = std::str::from_utf8(key)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok());
            let Some(n) = n else { return Some(None) };
            first(&|k| model_int_range(k).is_some_and(|(lo, hi)| lo <= n && n <= hi))
        }
        MatchMethod::Ip => {
            let ip = std::str::from_utf8(key)
                .ok()
                .and_then(|t| t.trim().parse::<IpAddr>().ok());
            let Some(ip) = ip else { return Some(None) };
            // The longest network holding the address; the first of equally long ones.
            let mut best: Option<(u32, &Vec<u8>)> = None;
            for (k, v) in entries {
                if let Some(bits) = model_net(k).filter(|net| net_holds(net, ip)).map(|n| n.1)
                    && best.is_none_or(|(b, _)| bits > b)
                {
                    best = Some((bits, v));
                }
            }
            best.map(|(_, v)| v.clone())
        }
        _ => return None,
    })
}

/// HAProxy's `-m dir` / `-m dom`: the key without its end delimiters occurs in
/// `s` between delimiters or ends (an empty one matches nothing).
fn word_match(s: &[u8], key: &[u8], delims: &[u8]) -> bool {
    let p: &[u8] = {
        let start = key.iter().position(|c| !delims.contains(c));
        let end = key.iter().rposition(|c| !delims.contains(c));
        match (start, end) {
            (Some(a), Some(b)) => &key[a..=b],
            _ => return false,
        }
    };
    let edge = |i: Option<usize>| i.is_none_or(|i| s.get(i).is_none_or(|c| delims.contains(c)));
    (0..s.len().saturating_sub(p.len()) + 1)
        .filter(|&i| s[i..].starts_with(p))
        .any(|i| edge(i.checked_sub(1)) && edge(Some(i + p.len())))
}

/// `N`, `N:M`, `N:` or `:M`.
fn model_int_range(k: &[u8]) -> Option<(i64, i64)> {
    let t = std::str::from_utf8(k).ok()?;
    let num = |s: &str, dflt: i64| {
        if s.is_empty() {
            Some(dflt)
        } else {
            s.parse().ok()
        }
    };
    let (lo, hi) = match t.split_once(':') {
        None => (t.parse().ok()?, t.parse().ok()?),
        Some(("", "")) => return None,
        Some((a, b)) => (num(a, i64::MIN)?, num(b, i64::MAX)?),
    };
    (lo <= hi).then_some((lo, hi))
}

/// An address or network (`a.b.c.d/len`, `a.b.c.d/mask`, `v6/len`): the
/// address and its prefix length, IPv4 counted in the IPv6 space.
fn model_net(k: &[u8]) -> Option<(IpAddr, u32)> {
    let t = std::str::from_utf8(k).ok()?;
    let (a, p) = t.split_once('/').map_or((t, None), |(a, p)| (a, Some(p)));
    let ip: IpAddr = a.parse().ok()?;
    let bits = match (ip, p) {
        (IpAddr::V4(_), None) => 32,
        (IpAddr::V6(_), None) => 128,
        (IpAddr::V4(_), Some(p)) if p.contains('.') => {
            let m = u32::from(p.parse::<std::net::Ipv4Addr>().ok()?);
            let ones = m.leading_ones();
            // Only ones then zeros is a mask.
            (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones)?
        }
        (IpAddr::V4(_), Some(p)) => p.parse().ok().filter(|&n: &u32| n <= 32)?,
        (IpAddr::V6(_), Some(p)) => p.parse().ok().filter(|&n: &u32| n <= 128)?,
    };
    Some((ip, if ip.is_ipv4() { bits + 96 } else { bits }))
}

fn net_holds(net: &(IpAddr, u32), ip: IpAddr) -> bool {
    let v6 = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    };
    let mask = u128::MAX.checked_shl(128 - net.1).unwrap_or(0);
    v6(net.0) & mask == v6(ip) & mask
}

/// The map property: parsing never panics; text methods always load and
/// agree with the model; lookups never panic.
fn check_map(text: &[u8], extra_keys: &[Vec<u8>], ints: &[i64]) -> Result<(), TestCaseError> {
    let entries = model_entries(text);
    // Compiled once: the `reg` model tries every key on every lookup.
    let regexes: Vec<Option<regex::Regex>> = entries
        .iter()
        .map(|(k, _)| {
            std::str::from_utf8(k)
                .ok()
                .and_then(|p| regex::Regex::new(p).ok())
        })
        .collect();
    let line_count = text.split(|&c| c == b'\n').count();
    let mut keys: Vec<Vec<u8>> = extra_keys.to_vec();
    for (k, v) in &entries {
        keys.push(k.clone());
        keys.push([k.as_slice(), b"/x"].concat());
        keys.push([b"a.".as_slice(), k.as_slice()].concat());
        keys.push(k[..k.len() / 2].to_vec());
        keys.push(v.clone());
    }
    for method in METHODS {
        let map = match PatternMap::parse(text, method) {
            Ok(m) => m,
            Err(e) => {
                if matches!(
                    method,
                    MatchMethod::Found | MatchMethod::Bool | MatchMethod::Len
                ) {
                    prop_assert_eq!(e.line, 0);
                } else {
                    prop_assert!(
                        matches!(
                            method,
                            MatchMethod::Int | MatchMethod::Ip | MatchMethod::Reg
                        ),
                        "-m {} refused a map: {:?}",
                        method.as_str(),
                        e
                    );
                    prop_assert!((1..=line_count).contains(&e.line), "{:?}", e);
                }
                prop_assert!(!e.message.is_empty());
                continue;
            }
        };
        prop_assert_eq!(
            map.len(),
            entries.len(),
            "entries for -m {}",
            method.as_str()
        );
        prop_assert_eq!(map.method(), method);
        for k in &keys {
            let got = map.lookup(k).map(<[u8]>::to_vec);
            if let Some(want) = model_lookup(&entries, &regexes, method, k) {
                prop_assert_eq!(
                    got,
                    want,
                    "-m {} lookup {:?} in {:?}",
                    method.as_str(),
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(text)
                );
            }
        }
        for &n in ints {
            let got = map.lookup_int(n);
            let text = n.to_string();
            // Integer maps compare numbers; the others, the decimal text.
            prop_assert_eq!(got, map.lookup(text.as_bytes()), "lookup_int({})", n);
            if let Some(want) = model_lookup(&entries, &regexes, method, text.as_bytes()) {
                prop_assert_eq!(got.map(<[u8]>::to_vec), want, "lookup_int({})", n);
            }
        }
    }
    Ok(())
}

const MAP_KEYS: &[&str] = &[
    "a",
    "ab",
    "abc",
    "/api",
    "/api/v2",
    "api",
    "example.com",
    ".com",
    "com.",
    "///",
    "/",
    "?",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.0.0.1",
    "::1",
    "::/0",
    "0.0.0.0/0",
    "2001:db8::/32",
    "10.0.0.0/255.255.0.0",
    "1",
    "-1",
    "100:199",
    "500:",
    ":99",
    ":",
    "9:1",
    "^a.*",
    "(",
    "a{99999}",
    "é",
    "#",
];

fn map_line() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        6 => select(MAP_KEYS).prop_map(|s| s.as_bytes().to_vec()),
        2 => "[a-c/.:]{1,5}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 1..4),
    ];
    let value = prop_oneof![
        select(&["", "v", "two words", "x\ty", "é"][..]).prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..4),
    ];
    const LEADS: &[&[u8]] = &[b"", b"", b" ", b"\t", b"#", b" #", b"\r"];
    const SEPS: &[&[u8]] = &[b" ", b"\t", b"  ", b""];
    const ENDS: &[&[u8]] = &[b"", b"", b" ", b"\r", b"\0x", b"\t "];
    let (lead, sep, end) = (select(LEADS), select(SEPS), select(ENDS));
    (lead, key, sep, value, end)
        .prop_map(|(l, k, s, v, e)| [l, k.as_slice(), s, v.as_slice(), e].concat())
}

const NEWLINES: &[&[u8]] = &[b"\n", b"\r\n", b"\n\n"];

fn map_text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..200),
        4 => (
            prop::collection::vec(map_line(), 0..10),
            select(NEWLINES),
        )
            .prop_map(|(lines, nl)| lines.join(nl)),
    ]
}

proptest! {
    #![proptest_config(settings(2000, regressions!("map")))]

    #[test]
    fn map_parse_and_lookup(
        text in map_text(),
        keys in prop::collection::vec(
            prop_oneof![
                select(MAP_KEYS).prop_map(|s| s.as_bytes().to_vec()),
                prop::collection::vec(any::<u8>(), 0..8),
            ],
            0..6,
        ),
        ints in prop::collection::vec(
            prop_oneof![any::<i64>(), -300i64..300, Just(i64::MIN), Just(i64::MAX)],
            0..4,
        ),
    ) {
        check_map(&text, &keys, &ints)?;
    }
}

/// A run-time change of a map file (`core.set_map`, `add_acl`, `del_map`).
#[derive(Debug, Clone)]
enum MapOp {
    Set(String, String),
    Add(String),
    Del(String),
}

fn map_op() -> impl Strategy<Value = MapOp> {
    let key = "[ab/]{1,3}";
    prop_oneof![
        (key, "[xy]{0,2}").prop_map(|(k, v)| MapOp::Set(k, v)),
        key.prop_map(MapOp::Add),
        key.prop_map(MapOp::Del),
    ]
}

/// The model's answer for `q`: `str` the first entry with the key, `beg`
/// the longest prefix (first of equal keys), `sub` the first in order.
fn changed_lookup(entries: &[(String, Option<String>)], m: MatchMethod, q: &str) -> Option<String> {
    let hit = match m {
        MatchMethod::Str => entries.iter().find(|(k, _)| k == q),
        MatchMethod::Beg => entries
            .iter()
            .filter(|(k, _)| q.starts_with(k.as_str()))
            .fold(
                None,
                |best: Option<&(String, Option<String>)>, e| match best {
                    Some(b) if b.0.len() >= e.0.len() => Some(b),
                    _ => Some(e),
                },
            ),
        _ => entries.iter().find(|(k, _)| q.contains(k.as_str())),
    };
    hit.and_then(|(_, v)| v.clone())
}

proptest! {
    #![proptest_config(settings(300, regressions!("map_changes")))]

    /// Run-time changes to a loaded file agree with a model of HAProxy's
    /// pattern reference for every index and reader of the file.
    #[test]
    fn map_run_time_changes_agree_with_the_model(
        lines in prop::collection::vec(("[ab/]{1,3}", "[xy]{1,2}"), 0..6),
        ops in prop::collection::vec(map_op(), 1..12),
    ) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-fuzz-mapops-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m.map");
        let text: String = lines.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        std::fs::write(&path, &text).expect("write");
        let mut model: Vec<(String, Option<String>)> =
            lines.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
        let cache = PatternCache::default();
        let methods = [MatchMethod::Str, MatchMethod::Beg, MatchMethod::Sub];
        let mut readers: Vec<MapReader> = methods
            .iter()
            .map(|m| MapReader::new(cache.get_or_load(&path, *m).expect("loads")))
            .collect();
        let r = cache.loaded(&path).expect("loaded");
        let queries = ["a", "b", "/", "ab", "a/", "/b", "ba/", "aab", "b/a/x", "a/b/a"];
        for op in &ops {
            match op {
                MapOp::Set(k, v) => {
                    r.set(k.as_bytes(), v.as_bytes());
                    if model.iter().any(|(x, _)| x == k) {
                        for e in model.iter_mut().filter(|(x, _)| x == k) {
                            e.1 = Some(v.clone());
                        }
                    } else {
                        model.push((k.clone(), Some(v.clone())));
                    }
                }
                MapOp::Add(k) => {
                    r.add_key(k.as_bytes());
                    if !model.iter().any(|(x, _)| x == k) {
                        model.push((k.clone(), None));
                    }
                }
                MapOp::Del(k) => {
                    r.delete(k.as_bytes());
                    model.retain(|(x, _)| x != k);
                }
            }
            for (m, reader) in methods.iter().zip(readers.iter_mut()) {
                for q in queries {
                    let got = reader
                        .get()
                        .lookup(q.as_bytes())
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    prop_assert_eq!(
                        got,
                        changed_lookup(&model, *m, q),
                        "-m {} lookup {:?} after {:?} on {:?}",
                        m.as_str(),
                        q,
                        op,
                        &model
                    );
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn map_corpus() {
    replay("map", |b| {
        check_map(
            b,
            &[b"/api/x".to_vec(), b"10.1.2.3".to_vec()],
            &[0, 150, -1],
        )
    });
}

// ---------------------------------------------------------------------------
// Wasm guest memory and the pairs decoder
// ---------------------------------------------------------------------------

/// Pointers and lengths: small, around a memory's end, and near `u32::MAX`.
fn guest_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => 0u32..80,
        2 => (0u32..8).prop_map(|d| u32::MAX - d),
        1 => (0u32..8).prop_map(|d| (1u32 << 31) - d),
        1 => (0u32..8).prop_map(|d| 65536 - d),
        1 => any::<u32>(),
    ]
}

/// The model: `ptr .. ptr + len` computed without overflow.
fn in_bounds(mem_len: usize, ptr: u32, len: u32) -> bool {
    u128::from(ptr) + u128::from(len) <= mem_len as u128
}

fn check_memory(mem: &mut [u8], ptr: u32, len: u32, data: &[u8]) -> Result<(), TestCaseError> {
    let fits = in_bounds(mem.len(), ptr, len);
    let span = ptr as usize..(ptr as usize).saturating_add(len as usize);
    match memory::read(mem, ptr, len) {
        Ok(b) => {
            prop_assert!(fits);
            prop_assert_eq!(b, &mem[span.clone()]);
        }
        Err(s) => {
            prop_assert!(!fits);
            prop_assert_eq!(s, Status::InvalidMemoryAccess);
        }
    }
    match memory::read_str(mem, ptr, len) {
        Ok(s) => prop_assert_eq!(s.as_bytes(), &mem[span.clone()]),
        Err(Status::BadArgument) => {
            prop_assert!(fits && std::str::from_utf8(&mem[span.clone()]).is_err());
        }
        Err(s) => {
            prop_assert!(!fits);
            prop_assert_eq!(s, Status::InvalidMemoryAccess);
        }
    }
    prop_assert_eq!(memory::check(mem, ptr, len).is_ok(), fits);
    prop_assert_eq!(
        memory::range(mem.len(), ptr, len),
        fits.then_some(span.clone())
    );
    for mem_len in [usize::MAX, usize::MAX - 1, u32::MAX as usize, 0] {
        let r = memory::range(mem_len, ptr, len);
        prop_assert_eq!(r.is_some(), in_bounds(mem_len, ptr, len));
    }
    let fits4 = in_bounds(mem.len(), ptr, 4);
    match memory::read_u32(mem, ptr) {
        Ok(v) => {
            prop_assert!(fits4);
            let at = ptr as usize;
            let bytes = v.to_le_bytes();
            prop_assert_eq!(&bytes[..], &mem[at..at + 4]);
        }
        Err(s) => {
            prop_assert!(!fits4);
            prop_assert_eq!(s, Status::InvalidMemoryAccess);
        }
    }

    // Writes: all or nothing.
    let before = mem.to_vec();
    let fits_data = u32::try_from(data.len()).is_ok_and(|n| in_bounds(mem.len(), ptr, n));
    match memory::write(mem, ptr, data) {
        Ok(()) => {
            prop_assert!(fits_data);
            let at = ptr as usize;
            prop_assert_eq!(&mem[at..at + data.len()], data);
            prop_assert_eq!(&mem[..at], &before[..at]);
            prop_assert_eq!(&mem[at + data.len()..], &before[at + data.len()..]);
        }
        Err(s) => {
            prop_assert!(!fits_data);
            prop_assert_eq!(s, Status::InvalidMemoryAccess);
            prop_assert_eq!(&*mem, before.as_slice());
        }
    }
    let before = mem.to_vec();
    let r = memory::write_u64(mem, ptr, u64::from(len) << 32 | u64::from(ptr));
    prop_assert_eq!(r.is_ok(), in_bounds(mem.len(), ptr, 8));
    if r.is_err() {
        prop_assert_eq!(&*mem, before.as_slice());
    }
    let r = memory::write_u32(mem, ptr, len);
    prop_assert_eq!(r.is_ok(), fits4);
    if r.is_ok() {
        prop_assert_eq!(memory::read_u32(mem, ptr), Ok(len));
    }
    Ok(())
}

/// Pairs: decoding never panics; what decodes re-encodes to a prefix of the input.
fn check_pairs_decode(buf: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(p) = pairs::decode(buf) {
        prop_assert!(p.len() <= pairs::MAX_PAIRS);
        let again = pairs::encode(p.iter().copied());
        if buf.is_empty() {
            prop_assert!(p.is_empty());
        } else {
            prop_assert!(
                buf.starts_with(&again),
                "{:?} re-encodes to {:?}",
                buf,
                again
            );
        }
    }
    let _ = pairs::split_path(buf);
    Ok(())
}

proptest! {
    #![proptest_config(settings(2000, regressions!("memory")))]

    /// Slices of random sizes: reads and writes match the bounds model exactly.
    #[test]
    fn memory_helpers(
        size in prop_oneof![0usize..80, Just(65536usize)],
        fill in any::<u8>(),
        ptr in guest_u32(),
        len in guest_u32(),
        data in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        let mut mem: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31) ^ fill).collect();
        check_memory(&mut mem, ptr, len, &data)?;
    }

    /// A real linear memory (grown by a random number of pages) behind the same helpers.
    #[test]
    fn memory_helpers_on_wasm_memory(
        pages in 0u64..3,
        ptr in guest_u32(),
        len in guest_u32(),
        data in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        let mut store = wasmtime::Store::new(&ENGINE, ());
        let ty = wasmtime::MemoryType::new(0, Some(4));
        let mem = wasmtime::Memory::new(&mut store, ty).map_err(|e| TestCaseError::fail(e.to_string()))?;
        mem.grow(&mut store, pages).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Near the end of the memory, where off-by-one errors live.
        let end = u32::try_from(mem.data_size(&store)).unwrap_or(u32::MAX);
        for p in [ptr, end.wrapping_sub(ptr % 9), end.wrapping_add(ptr % 3)] {
            check_memory(mem.data_mut(&mut store), p, len % 16, &data)?;
            check_memory(mem.data_mut(&mut store), p, len, &data)?;
        }
    }

}

proptest! {
    #![proptest_config(settings(5000, regressions!("pairs")))]

    #[test]
    fn pairs_decode_arbitrary(buf in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        // A plausible header with hostile lengths after it.
        (0u32..4, prop::collection::vec(guest_u32(), 0..8), prop::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(n, lens, tail)| {
                let mut b = n.to_le_bytes().to_vec();
                for l in lens {
                    b.extend_from_slice(&l.to_le_bytes());
                }
                b.extend_from_slice(&tail);
                b
            }),
    ]) {
        check_pairs_decode(&buf)?;
    }

    /// encode → decode is the identity within the caps; one flipped or cut byte never panics.
    #[test]
    fn pairs_round_trip(
        list in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..12), prop::collection::vec(any::<u8>(), 0..12)),
            0..8,
        ),
        flip in any::<(usize, u8)>(),
        cut in any::<usize>(),
    ) {
        let buf = pairs::encode(list.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
        let back = pairs::decode(&buf).map_err(|s| TestCaseError::fail(format!("{s:?}")))?;
        let want: Vec<(&[u8], &[u8])> = list.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        prop_assert_eq!(back, want);
        let mut bad = buf.clone();
        let i = flip.0 % bad.len();
        bad[i] ^= flip.1 | 1;
        check_pairs_decode(&bad)?;
        check_pairs_decode(&buf[..cut % (buf.len() + 1)])?;
    }
}

/// One engine for every case (creating one is the expensive part).
static ENGINE: LazyLock<wasmtime::Engine> = LazyLock::new(wasmtime::Engine::default);

#[test]
fn pairs_caps() {
    // Exactly at the pair cap: decodes; one more: refused.
    let keys: Vec<[u8; 1]> = (0..=pairs::MAX_PAIRS).map(|i| [i as u8]).collect();
    let at_cap = pairs::encode(keys[..pairs::MAX_PAIRS].iter().map(|k| (k, k)));
    assert_eq!(
        pairs::decode(&at_cap).map(|p| p.len()),
        Ok(pairs::MAX_PAIRS)
    );
    let over = pairs::encode(keys.iter().map(|k| (k, k)));
    assert!(pairs::decode(&over).is_err());
    // A value that makes the buffer one byte too large.
    let big = vec![b'v'; pairs::MAX_PAIRS_BYTES - 4 - 8 - 2 + 1];
    let buf = pairs::encode([(&b""[..], big.as_slice())]);
    assert_eq!(buf.len(), pairs::MAX_PAIRS_BYTES + 1);
    assert!(pairs::decode(&buf).is_err());
    let buf = pairs::encode([(&b""[..], &big[1..])]);
    assert_eq!(pairs::decode(&buf).map(|p| p.len()), Ok(1));
}

#[test]
fn pairs_corpus() {
    replay("pairs", check_pairs_decode);
}

/// Memory seeds are lines `MEM_LEN PTR LEN`.
#[test]
fn memory_corpus() {
    replay("memory", |b| {
        for line in String::from_utf8_lossy(b).lines() {
            let n: Vec<u64> = line
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            let [size, ptr, len] = n[..] else { continue };
            let mut mem = vec![0x5a; size as usize];
            check_memory(&mut mem, ptr as u32, len as u32, b"abcd")?;
        }
        Ok(())
    });
}

proptest! {
    #![proptest_config(settings(5000, regressions!("connect_allow")))]

    /// `connect.allow` patterns (config/tunnels.rs): any text parses or is
    /// refused with a reason, and a parsed pattern matches names and
    /// addresses without panicking; an address pattern never allows a name.
    #[test]
    fn connect_allow_patterns(
        text in "[a-zA-Z0-9.*:/\\[\\]_-]{0,40}",
        name in "[a-z0-9.-]{0,20}",
        ip in any::<[u8; 4]>(),
        port in any::<u16>(),
    ) {
        use portcullis::config::tunnels::{parse_dest, HostPattern};
        match parse_dest(&text) {
            Ok(d) => {
                let addr = std::net::IpAddr::from(ip);
                let by_name = d.allows_name(&name, port);
                let _ = d.allows_addr(addr, port);
                if matches!(d.host, HostPattern::Net(..)) {
                    prop_assert!(!by_name);
                }
                prop_assert!(d.ports.0 >= 1 && d.ports.0 <= d.ports.1);
            }
            Err(why) => prop_assert!(!why.is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------
// The peers protocol decoder (bytes from a remote peer)
// ---------------------------------------------------------------------------

use portcullis::peers::proto as peers_proto;

/// Decodes a byte stream as a peers session does: frames one after another,
/// table definitions setting the layout of the updates that follow. Nothing
/// panics; a decoded update or definition re-encodes to bytes that decode the same.
fn check_peers_stream(buf: &[u8]) -> Result<(), TestCaseError> {
    use peers_proto::{Definition, WireKey, stkt};
    let mut rest = buf;
    let mut def: Option<(Definition<'static>, WireKey)> = None;
    for _ in 0..10_000 {
        let (f, n) = match peers_proto::frame(rest) {
            Ok(Some(x)) => x,
            Ok(None) | Err(_) => return Ok(()),
        };
        prop_assert!(n >= 2 && n <= rest.len());
        match (f.class, f.kind) {
            (10, stkt::DEFINE) => {
                if let Ok(d) = peers_proto::parse_definition(f.body) {
                    let mut out = Vec::new();
                    peers_proto::put_definition(&mut out, &d);
                    let (g, _) = peers_proto::frame(&out)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                        .ok_or_else(|| TestCaseError::fail("re-encoded definition incomplete"))?;
                    if !d.unknown_types && d.expire.is_some() {
                        let again = peers_proto::parse_definition(g.body)
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(&again, &d);
                    }
                    def = WireKey::from_wire(d.key_type, d.key_len).map(|k| (d.detached(), k));
                }
            }
            (
                10,
                k @ (stkt::UPDATE | stkt::INC_UPDATE | stkt::UPDATE_TIMED | stkt::INC_UPDATE_TIMED),
            ) => {
                if let Some((d, key)) = &def {
                    let with_id = matches!(k, stkt::UPDATE | stkt::UPDATE_TIMED);
                    let timed = matches!(k, stkt::UPDATE_TIMED | stkt::INC_UPDATE_TIMED);
                    if let Ok(u) = peers_proto::parse_update(f.body, with_id, timed, *key, d) {
                        let vals: Vec<peers_proto::Value> = u.values.iter().map(|v| v.2).collect();
                        let mut out = Vec::new();
                        peers_proto::put_update(&mut out, u.id, u.expire, *key, u.key, &vals);
                        if let Ok(Some((g, _))) = peers_proto::frame(&out) {
                            let again = peers_proto::parse_update(g.body, with_id, timed, *key, d)
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                            prop_assert_eq!(again.key, u.key);
                            prop_assert_eq!(again.values, u.values);
                        }
                    }
                }
            }
            (10, stkt::SWITCH) => {
                let _ = peers_proto::parse_switch(f.body);
            }
            (10, stkt::ACK) => {
                let _ = peers_proto::parse_ack(f.body);
            }
            _ => {}
        }
        rest = &rest[n..];
    }
    Ok(())
}

#[test]
fn peers_corpus() {
    replay("peers", check_peers_stream);
}

proptest! {
    #![proptest_config(settings(3000, regressions!("peers")))]

    /// Random bytes, and the seed streams with bytes flipped, cut or spliced.
    #[test]
    fn peers_decode_arbitrary(buf in prop::collection::vec(any::<u8>(), 0..96)) {
        check_peers_stream(&buf)?;
    }

    #[test]
    fn peers_decode_mutated(seed in 0usize..4, edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6), cut in any::<usize>()) {
        let seeds = corpus("peers");
        let mut buf = seeds[seed % seeds.len()].1.clone();
        for (i, b) in edits {
            if buf.is_empty() {
                break;
            }
            let i = i % buf.len();
            buf[i] = b;
        }
        let cut = cut % (buf.len() + 1);
        check_peers_stream(&buf[..cut])?;
        check_peers_stream(&buf)?;
    }

    /// HAProxy's integer encoding round-trips every value.
    #[test]
    fn peers_varint_round_trip(v in any::<u64>()) {
        let mut out = Vec::new();
        peers_proto::put_varint(&mut out, v);
        let mut pos = 0;
        prop_assert_eq!(peers_proto::get_varint(&out, &mut pos), Some(v));
        prop_assert_eq!(pos, out.len());
    }
}

// ---------------------------------------------------------------------------
// The HTTP/1 client's response head parser and chunked decoder
// (proxy/upstream_h1.rs): bytes come from servers, so from anyone
// ---------------------------------------------------------------------------

use portcullis::proxy::upstream_h1::{self, Framing, HeadLimits};

const H1_LIMITS: HeadLimits = HeadLimits {
    max_size: 1024,
    max_headers: 8,
};

/// Parses `buf` as a response head and as a chunked body: never a panic,
/// the caps hold, every proper prefix of an accepted head is incomplete or
/// refused, never another head.
fn check_h1_head(buf: &[u8]) -> Result<(), TestCaseError> {
    match upstream_h1::parse_response_head(buf, H1_LIMITS) {
        Ok(Some((len, head))) => {
            prop_assert!(len <= buf.len() && len <= H1_LIMITS.max_size);
            prop_assert!(head.headers.len() <= H1_LIMITS.max_headers);
            prop_assert!(buf[..len].ends_with(b"\n"));
            if let Framing::Length(n) = head.framing {
                let declared = head.headers.get(http::header::CONTENT_LENGTH);
                prop_assert!(declared.is_some(), "a length without Content-Length");
                prop_assert!(n < u64::MAX);
            }
            if head.framing == Framing::Chunked {
                prop_assert!(head.version == http::Version::HTTP_11);
            }
            for cut in [len / 2, len.saturating_sub(1)] {
                if cut < len {
                    let r = upstream_h1::parse_response_head(&buf[..cut], H1_LIMITS);
                    prop_assert!(!matches!(r, Ok(Some(_))), "prefix of {cut} bytes parsed");
                }
            }
        }
        Ok(None) => prop_assert!(buf.len() < H1_LIMITS.max_size),
        Err(e) => prop_assert!(!e.is_empty()),
    }
    if let Ok(Some((_, _, used))) = upstream_h1::decode_chunked_body(buf, H1_LIMITS) {
        prop_assert!(used <= buf.len());
    }
    Ok(())
}

/// A plausible response head: status line, a few fields (framing ones
/// often), CRLF or bare LF line ends, sometimes a folded line.
fn h1_head() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("Content-Length: 5".to_string()),
        Just("Content-Length: 5, 5".to_string()),
        Just("Content-Length: 7".to_string()),
        Just("Content-Length: -1".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Transfer-Encoding: gzip".to_string()),
        Just("Connection: close".to_string()),
        Just("Connection: keep-alive".to_string()),
        Just(" folded".to_string()),
        "[A-Za-z-]{1,10}: [ -~]{0,20}",
    ];
    (
        select(vec![
            "HTTP/1.1",
            "HTTP/1.0",
            "HTTP/2.0",
            "HTTP/1.1 ",
            "http/1.1",
        ]),
        select(vec![
            "100", "101", "200", "204", "304", "404", "099", "1000", "abc",
        ]),
        prop::collection::vec(field, 0..12),
        select(vec!["\r\n", "\n"]),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(version, status, fields, eol, tail)| {
            let mut b = format!("{version} {status} Reason{eol}").into_bytes();
            for f in fields {
                b.extend_from_slice(f.as_bytes());
                b.extend_from_slice(eol.as_bytes());
            }
            b.extend_from_slice(eol.as_bytes());
            b.extend_from_slice(&tail);
            b
        })
}

proptest! {
    #![proptest_config(settings(5000, regressions!("h1_head")))]

    /// Random bytes and plausible heads (then a byte flipped): no panic, caps hold.
    #[test]
    fn h1_head_parse(
        buf in prop_oneof![prop::collection::vec(any::<u8>(), 0..200), h1_head()],
        flip in any::<(usize, u8)>(),
    ) {
        check_h1_head(&buf)?;
        if !buf.is_empty() {
            let mut bad = buf.clone();
            let i = flip.0 % bad.len();
            bad[i] ^= flip.1 | 1;
            check_h1_head(&bad)?;
        }
    }

    /// Any data cut into chunks (with extensions, with trailers) decodes
    /// back to itself, and to nothing complete before its last byte.
    #[test]
    fn h1_chunked_round_trip(
        data in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(1usize..64, 1..8),
        ext in any::<bool>(),
        trailer in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        let mut rest = &data[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            wire.extend_from_slice(format!("{n:X}").as_bytes());
            if ext {
                wire.extend_from_slice(b";k=\"v;w\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&rest[..n]);
            wire.extend_from_slice(b"\r\n");
            rest = &rest[n..];
            i += 1;
        }
        wire.extend_from_slice(b"0\r\n");
        if trailer {
            wire.extend_from_slice(b"x-sum: 1\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        let (got, trailers, used) = upstream_h1::decode_chunked_body(&wire, H1_LIMITS)
            .map_err(TestCaseError::fail)?
            .ok_or_else(|| TestCaseError::fail("incomplete"))?;
        prop_assert_eq!(got, data);
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(trailers.get("x-sum").is_some(), trailer);
        let cut = wire.len() - 1;
        prop_assert!(matches!(upstream_h1::decode_chunked_body(&wire[..cut], H1_LIMITS), Ok(None)));
    }
}

#[test]
fn h1_head_corpus() {
    replay("h1_head", check_h1_head);
}

#[test]
fn h1_head_cases() {
    let parse = |b: &str| upstream_h1::parse_response_head(b.as_bytes(), H1_LIMITS);
    let (len, h) = parse("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok")
        .expect("valid")
        .expect("complete");
    assert_eq!(
        (len, h.framing, h.keep_alive),
        (41, Framing::Length(2), true)
    );
    let (_, h) = parse("HTTP/1.0 200 OK\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
    let (_, h) = parse("HTTP/1.1 204 No Content\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert_eq!((h.framing, h.keep_alive), (Framing::Close, true));
    assert_eq!(
        upstream_h1::body_framing(&http::Method::GET, &h),
        Framing::None
    );
    let (_, h) = parse("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert_eq!((h.framing, h.keep_alive), (Framing::Length(0), true));
    let (_, h) =
        parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("valid")
            .expect("complete");
    assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    assert!(h.headers.get("content-length").is_none());
    for bad in [
        "HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} accepted");
    }
    assert!(matches!(parse("HTTP/1.1 200 OK\r\nA: b\r\n"), Ok(None)));
    let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    let e = parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).expect_err("9 > 8 fields");
    assert!(e.contains("max_headers (8)"), "{e}");
    let e =
        parse(&format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(2000))).expect_err("too large");
    assert!(e.contains("max_header_size"), "{e}");
    // Chunk sizes: hex digits then extensions; anything else is refused.
    for bad in [
        "g\r\n",
        "\r\n",
        "5 x\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "5\nhello\r\n",
    ] {
        assert!(
            upstream_h1::decode_chunked_body(bad.as_bytes(), H1_LIMITS).is_err(),
            "{bad:?} accepted"
        );
    }
}

// ---------------------------------------------------------------------------
// The native HTTP/1 server's request head parser (proxy/server_h1.rs):
// bytes come from clients, so from anyone
// ---------------------------------------------------------------------------

use portcullis::proxy::server_h1::{self, ReqFraming};

/// Parses `buf` as a request head: never a panic, the caps hold, framing
/// follows RFC 9112 §6 (chunked wins over a length, which is then removed;
/// no Transfer-Encoding in HTTP/1.0), every proper prefix of an accepted
/// head is incomplete or refused.
fn check_h1_req_head(buf: &[u8]) -> Result<(), TestCaseError> {
    match server_h1::parse_request_head(buf, H1_LIMITS) {
        Ok(Some((len, head))) => {
            prop_assert!(len <= buf.len() && len <= H1_LIMITS.max_size);
            prop_assert!(head.headers.len() <= H1_LIMITS.max_headers);
            prop_assert!(buf[..len].ends_with(b"\n"));
            let cl = head
                .headers
                .get_all(http::header::CONTENT_LENGTH)
                .iter()
                .count();
            let te = head.headers.contains_key(http::header::TRANSFER_ENCODING);
            prop_assert!(cl <= 1, "more than one Content-Length kept");
            match head.framing {
                ReqFraming::Chunked => {
                    prop_assert!(te && cl == 0);
                    prop_assert!(head.version == http::Version::HTTP_11);
                }
                ReqFraming::Length(n) => prop_assert!(cl == 1 && !te && n > 0),
                ReqFraming::None => prop_assert!(!te),
            }
            if te && head.headers.contains_key(http::header::CONTENT_LENGTH) {
                prop_assert!(false, "Content-Length kept beside Transfer-Encoding");
            }
            for cut in [len / 2, len.saturating_sub(1)] {
                if cut < len {
                    let r = server_h1::parse_request_head(&buf[..cut], H1_LIMITS);
                    prop_assert!(!matches!(r, Ok(Some(_))), "prefix of {cut} bytes parsed");
                }
            }
        }
        Ok(None) => prop_assert!(buf.len() < H1_LIMITS.max_size),
        Err(e) => {
            prop_assert!(!e.reason.is_empty());
            prop_assert!(matches!(e.status.as_u16(), 400 | 414 | 431));
        }
    }
    Ok(())
}

/// A plausible request head: request line, a few fields (framing ones
/// often), CRLF or bare LF line ends, sometimes a folded line.
fn h1_req_head() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        Just("Content-Length: 5".to_string()),
        Just("Content-Length: 5, 5".to_string()),
        Just("Content-Length: 7".to_string()),
        Just("Content-Length: +1".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Transfer-Encoding: gzip".to_string()),
        Just("Transfer-Encoding: gzip, chunked".to_string()),
        Just("Connection: close".to_string()),
        Just("Connection: keep-alive".to_string()),
        Just("Expect: 100-continue".to_string()),
        Just("Host: h".to_string()),
        Just(" folded".to_string()),
        "[A-Za-z-]{1,10}: [ -~]{0,20}",
    ];
    (
        select(vec!["GET", "POST", "HEAD", "CONNECT", "OPTIONS", "G@T", ""]),
        select(vec!["/", "/a?b=c", "*", "h:443", "http://h/a", "/a b", ""]),
        select(vec![
            "HTTP/1.1",
            "HTTP/1.0",
            "HTTP/2.0",
            "http/1.1",
            "HTTP/1.1 ",
        ]),
        prop::collection::vec(field, 0..12),
        select(vec!["\r\n", "\n"]),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(method, target, version, fields, eol, tail)| {
            let mut b = format!("{method} {target} {version}{eol}").into_bytes();
            for f in fields {
                b.extend_from_slice(f.as_bytes());
                b.extend_from_slice(eol.as_bytes());
            }
            b.extend_from_slice(eol.as_bytes());
            b.extend_from_slice(&tail);
            b
        })
}

proptest! {
    #![proptest_config(settings(5000, regressions!("h1_req_head")))]

    /// Random bytes and plausible heads (then a byte flipped): no panic, caps hold.
    #[test]
    fn h1_req_head_parse(
        buf in prop_oneof![prop::collection::vec(any::<u8>(), 0..200), h1_req_head()],
        flip in any::<(usize, u8)>(),
    ) {
        check_h1_req_head(&buf)?;
        if !buf.is_empty() {
            let mut bad = buf.clone();
            let i = flip.0 % bad.len();
            bad[i] ^= flip.1 | 1;
            check_h1_req_head(&bad)?;
        }
    }
}

#[test]
fn h1_req_head_corpus() {
    replay("h1_req_head", check_h1_req_head);
}

#[test]
fn h1_req_head_cases() {
    let parse = |b: &str| server_h1::parse_request_head(b.as_bytes(), H1_LIMITS);
    let status = |b: &str| parse(b).map(|_| 0).unwrap_or_else(|e| e.status.as_u16());
    let (len, h) = parse(
        "POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .expect("valid")
    .expect("complete");
    assert_eq!(
        (len, h.framing, h.keep_alive),
        (67, ReqFraming::Chunked, false)
    );
    assert!(!h.headers.contains_key(http::header::CONTENT_LENGTH));
    let (_, h) = parse("POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert_eq!((h.framing, h.headers.len()), (ReqFraming::Length(5), 1));
    let (_, h) = parse("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert!(h.keep_alive);
    let (_, h) = parse("GET /a HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert!(!h.keep_alive);
    let (_, h) = parse("OPTIONS * HTTP/1.1\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert_eq!(h.uri, "*");
    let (_, h) = parse("CONNECT h:443 HTTP/1.1\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert_eq!(h.uri.authority().map(|a| a.as_str()), Some("h:443"));
    let (_, h) = parse("GET http://h/a?b HTTP/1.1\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert_eq!((h.uri.host(), h.uri.path()), (Some("h"), "/a"));
    let (_, h) = parse("POST /a HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        .expect("valid")
        .expect("complete");
    assert!(h.expect_continue);
    assert!(
        parse("GET /a HTTP/1.1\r\nHost: h\r\n")
            .expect("valid")
            .is_none()
    );
    for (raw, want) in [
        (
            "POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            400,
        ),
        ("POST /a HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", 400),
        ("POST /a HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
        ("GET /a HTTP/1.1\r\nX: a\r\n b\r\n\r\n", 400),
        (
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            400,
        ),
        (
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        (
            "POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        ("GET /a HTTP/1.1\r\nHost : h\r\n\r\n", 400),
        ("GET /a HTTP/1.1\r\nX: a\0b\r\n\r\n", 400),
        ("G@T /a HTTP/1.1\r\n\r\n", 400),
    ] {
        assert_eq!(status(raw), want, "{raw:?}");
    }
    let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    assert_eq!(
        status(&format!("GET /{} HTTP/1.1\r\n", "a".repeat(1100))),
        431
    );
}
