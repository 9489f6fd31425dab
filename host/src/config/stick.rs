//! Validation of `[[stick_table]]` sections into the [`StickTables`] registry.

use std::collections::HashMap;
use std::sync::Arc;

use toml::Spanned;

use super::diag::{ConfigError, SourceMap};
use super::schema::{CountSpec, RawStickTable};
use crate::stick::key::{DEFAULT_KEY_LEN, MAX_KEY_LEN};
use crate::stick::{Clock, KeyType, Schema, StickTable, StickTables, TableConfig};

/// Largest `size` accepted (2^30 entries: far beyond any sane memory budget).
const MAX_SIZE: u64 = 1 << 30;
/// Longest `expire` accepted (HAProxy's limit: 2^31 - 1 ms, about 24 days).
const MAX_EXPIRE_MS: u64 = (1 << 31) - 1;

/// Validates every `[[stick_table]]` and builds the tables (empty, real clock).
pub fn build(
    raw: &[Spanned<RawStickTable>],
    source: &SourceMap,
) -> Result<StickTables, ConfigError> {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    let mut tables = Vec::with_capacity(raw.len());
    for t in raw {
        let t = t.get_ref();
        let name = t.name.get_ref();
        super::check_name(source, &t.name, "stick_table")?;
        if seen.insert(name, ()).is_some() {
            return Err(source.error(
                t.name.span(),
                format!("duplicate stick_table name {name:?}; every table needs a unique name"),
            ));
        }
        tables.push(Arc::new(StickTable::new(table(t, source)?, Clock::Real)));
    }
    Ok(StickTables::new(tables))
}

fn table(t: &RawStickTable, source: &SourceMap) -> Result<TableConfig, ConfigError> {
    let len = match &t.len {
        Some(l) => {
            let n = *l.get_ref();
            if !matches!(t.key_type.get_ref().as_str(), "string" | "binary") {
                return Err(source.error(l.span(), "`len` only applies to string and binary keys"));
            }
            usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_KEY_LEN).contains(n))
                .ok_or_else(|| {
                    source.error(
                        l.span(),
                        format!("len must be between 1 and {MAX_KEY_LEN} bytes, got {n}"),
                    )
                })?
        }
        None => DEFAULT_KEY_LEN,
    };
    let key_type = match t.key_type.get_ref().as_str() {
        "ip" => KeyType::Ip,
        "ipv6" => KeyType::Ipv6,
        "integer" => KeyType::Integer,
        "string" => KeyType::String { len },
        "binary" => KeyType::Binary { len },
        other => {
            return Err(source.error(
                t.key_type.span(),
                format!(
                    "unknown stick_table type {other:?}; expected ip, ipv6, integer, string or binary"
                ),
            ));
        }
    };
    let size = count(&t.size, source)?;
    let expire = match &t.expire {
        Some(e) => {
            let ms = e.get_ref().0.as_millis();
            if ms == 0 || ms > u128::from(MAX_EXPIRE_MS) {
                return Err(source.error(
                    e.span(),
                    "expire must be between 1ms and 24d (2147483647ms)",
                ));
            }
            // In range by the check above.
            Some(u64::try_from(ms).unwrap_or(MAX_EXPIRE_MS))
        }
        None => None,
    };
    let items: Vec<&str> = t.store.iter().map(|s| s.get_ref().as_str()).collect();
    let schema = Schema::parse(&items).map_err(|(i, msg)| {
        let span = t.store.get(i).map_or_else(|| t.name.span(), Spanned::span);
        source.error(span, msg)
    })?;
    Ok(TableConfig {
        name: t.name.get_ref().clone(),
        key_type,
        size,
        expire,
        nopurge: t.nopurge.unwrap_or(false),
        schema,
        peers: t.peers.as_ref().map(|p| p.get_ref().clone()),
        peers_name: t.peers_name.as_ref().map(|p| p.get_ref().clone()),
    })
}

/// `size`: an integer, or `"100k"`, `"2m"`, `"1g"` in multiples of 1024 (HAProxy's reading).
fn count(v: &Spanned<CountSpec>, source: &SourceMap) -> Result<u64, ConfigError> {
    let bad = |msg: String| source.error(v.span(), msg);
    let n = match v.get_ref() {
        CountSpec::Int(i) => {
            u64::try_from(*i).map_err(|_| bad(format!("size must be positive, got {i}")))?
        }
        CountSpec::Text(text) => {
            let t = text.trim();
            let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let num: u64 = t[..digits].parse().map_err(|_| {
                bad(format!(
                    "invalid size {text:?}: expected a number of entries, e.g. 100000 or \"100k\""
                ))
            })?;
            let mult: u64 = match &t[digits..] {
                "" => 1,
                "k" | "K" => 1 << 10,
                "m" | "M" => 1 << 20,
                "g" | "G" => 1 << 30,
                other => {
                    return Err(bad(format!(
                        "invalid size {text:?}: unknown suffix {other:?}; use k, m or g (multiples of 1024)"
                    )));
                }
            };
            num.saturating_mul(mult)
        }
    };
    if n == 0 || n > MAX_SIZE {
        return Err(bad(format!(
            "size must be between 1 and {MAX_SIZE} entries, got {n}"
        )));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::BindCheck;
    use crate::runtime::parse;

    fn load(tables: &str) -> Result<crate::runtime::Runtime, crate::config::ConfigError> {
        parse(Path::new("t.toml"), tables, BindCheck::Skip)
    }

    #[track_caller]
    fn fails(text: &str, marker: &str, msg: &str) {
        let err = load(text).expect_err("config should be rejected");
        let at = text.find(marker).expect("marker in text");
        let loc = crate::config::SourceMap::new(Path::new("t.toml"), text).location(at);
        assert_eq!(err.location, Some((loc.line, loc.col)), "{err}");
        assert!(err.message.contains(msg), "{:?} lacks {msg:?}", err.message);
    }

    #[test]
    fn tables_load() {
        let cfg = load(
            r#"
[[stick_table]]
name = "per_ip"
type = "ip"
size = "100k"
expire = "30s"
store = ["http_req_rate(10s)", "gpc0", "conn_cur"]

[[stick_table]]
name = "keys"
type = "string"
len = 64
size = 1000
nopurge = true
"#,
        )
        .expect("loads");
        let t = cfg.tables.get("per_ip").expect("per_ip");
        assert_eq!(t.size(), 100 * 1024);
        assert_eq!(t.expire(), Some(30_000));
        assert_eq!(t.key_type().name(), "ip");
        let k = cfg.tables.get("keys").expect("keys");
        assert!(k.nopurge());
        assert_eq!(k.expire(), None);
        assert_eq!(cfg.tables.names(), ["per_ip", "keys"]);
    }

    #[test]
    fn table_errors_are_located() {
        let t = "[[stick_table]]\nname = \"a\"\ntype = \"ip\"\nsize = 10\n";
        let dup = format!("{t}\n{t}");
        let second = dup.rfind("\"a\"").expect("second");
        let err = load(&dup).expect_err("dup rejected");
        let loc = crate::config::SourceMap::new(Path::new("t.toml"), &dup).location(second);
        assert_eq!(err.location, Some((loc.line, loc.col)));
        assert!(err.message.contains("duplicate stick_table name \"a\""));
        fails(
            "[[stick_table]]\nname = \"a\"\ntype = \"ipv4\"\nsize = 10\n",
            "\"ipv4\"",
            "unknown stick_table type \"ipv4\"",
        );
        fails(
            "[[stick_table]]\nname = \"a\"\ntype = \"ip\"\nsize = 10\nstore = [\"gpc0\", \"http_req_rate\"]\n",
            "\"http_req_rate\"",
            "http_req_rate needs a period",
        );
        fails(
            "[[stick_table]]\nname = \"a\"\ntype = \"ip\"\nsize = 10\nstore = [\"gpc0\", \"foo\"]\n",
            "\"foo\"",
            "unknown data type \"foo\"",
        );
        fails(
            "[[stick_table]]\nname = \"a\"\ntype = \"ip\"\nsize = \"10x\"\n",
            "\"10x\"",
            "unknown suffix",
        );
        fails(
            "[[stick_table]]\nname = \"a\"\ntype = \"ip\"\nsize = 0\n",
            "0\n",
            "size must be between 1",
        );
        fails(
            "[[stick_table]]\nname = \"a\"\ntype = \"ip\"\nlen = 4\nsize = 1\n",
            "4\n",
            "only applies to string and binary",
        );
        fails(
            "[[stick_table]]\nname = \"a\"\ntype = \"ip\"\nsize = 1\nexpir = \"1s\"\n",
            "expir",
            "unknown key `expir` (did you mean `expire`?)",
        );
    }
}
