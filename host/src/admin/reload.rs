//! `POST /reload`: reloads the config file and every plugin file (as
//! `SIGHUP` does) and answers what changed, or 400 with why nothing did.
//! `POST /plugins/<name>/reload`: the same for one plugin's code (its file
//! read again; the config in force otherwise). Reload counters and times
//! for `/stats` and `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use http::{Method, Request, StatusCode};
use serde_json::{Value, json};

use crate::metrics::Writer;
use crate::proxy::{Daemon, Shared};

/// Handles `/reload` and `/plugins/<name>/reload`; `None` for other paths.
pub async fn route<B>(req: &Request<B>, daemon: &Arc<Daemon>) -> Option<(StatusCode, Value)> {
    let path = req.uri().path();
    let plugin = path
        .strip_prefix("/plugins/")
        .and_then(|rest| rest.strip_suffix("/reload"))
        .filter(|name| !name.is_empty() && !name.contains('/'));
    if path != "/reload" && plugin.is_none() {
        return None;
    }
    if req.method() != Method::POST {
        return Some((
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": format!("{} is not allowed on {path}; use POST", req.method())}),
        ));
    }
    let result = match plugin {
        None => daemon.reload("POST /reload").await,
        Some(name) => daemon.reload_plugin(name).await,
    };
    Some(match result {
        Ok(outcome) => (
            StatusCode::OK,
            json!({
                "reloaded": true,
                "generation": outcome.generation,
                "duration_ms": outcome.duration_ms,
                "restart_required": outcome.restart_required,
                "warnings": outcome.warnings,
                "listeners_added": outcome.listeners_added,
                "listeners_removed": outcome.listeners_removed,
                "servers_kept": outcome.servers_kept,
            }),
        ),
        Err(crate::proxy::reload::ReloadError::NoPlugin(name)) => (
            StatusCode::NOT_FOUND,
            json!({"error": format!("no plugin {name:?}")}),
        ),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            json!({"reloaded": false, "error": e.to_string()}),
        ),
    })
}

/// The `reload` object of `/stats`.
pub fn stats_json(shared: &Shared) -> Value {
    let r = &shared.reloads;
    let time = |t: u64| (t > 0).then_some(t);
    json!({
        "generation": shared.id,
        "succeeded": r.succeeded.load(Relaxed),
        "failed": r.failed.load(Relaxed),
        "last_success_unix": time(r.last_success.load(Relaxed)),
        "last_failure_unix": time(r.last_failure.load(Relaxed)),
        "last_error": r.last_error(),
        "generations_live": crate::runtime::live(),
    })
}

/// The reload families of `/metrics`.
pub fn metrics(shared: &Shared, f: &mut Writer) {
    let r = &shared.reloads;
    f.family(
        "portcullis_reloads_total",
        "counter",
        "Configuration reloads, by result.",
        [
            ("result=\"success\"".to_string(), r.succeeded.load(Relaxed)),
            ("result=\"failure\"".to_string(), r.failed.load(Relaxed)),
        ],
    );
    f.family(
        "portcullis_reload_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful reload (0: none yet).",
        [(String::new(), r.last_success.load(Relaxed))],
    );
    f.family(
        "portcullis_reload_last_failure_timestamp_seconds",
        "gauge",
        "Unix time of the last failed reload (0: none yet).",
        [(String::new(), r.last_failure.load(Relaxed))],
    );
    f.family(
        "portcullis_config_generation",
        "gauge",
        "Runtime generation in force: 0 at start, one more per successful reload.",
        [(String::new(), shared.id)],
    );
    f.family(
        "portcullis_config_generations_live",
        "gauge",
        "Runtime generations in memory: the one in force plus replaced ones whose last request has not ended.",
        [(String::new(), crate::runtime::live() as u64)],
    );
}
