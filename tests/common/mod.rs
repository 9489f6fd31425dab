//! Shared helpers of the end-to-end tests: the daemon under test, in-test
//! backends, HTTP clients (hyper HTTP/1.1, h2c and raw TCP), config snippets.
//!
//! Every wait is bounded; every test owns its ports and temp directory.
//! The helpers live in the submodules below; everything is re-exported here,
//! so tests keep writing `common::X` (or `use common::*`).

#![allow(dead_code)]

mod admin;
mod backend;
mod body;
mod client;
mod config;
mod daemon;
mod dns;
mod grpc;
mod guests;
mod h2server;
mod haproxy;
mod peers;
mod plugins;
mod python;
mod rawserver;

// Each test target uses a part of the helpers: a re-export it leaves unused
// is not a warning.
#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use backend::*;
#[allow(unused_imports)]
pub use body::*;
#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use config::*;
#[allow(unused_imports)]
pub use daemon::*;
#[allow(unused_imports)]
pub use dns::*;
#[allow(unused_imports)]
pub use grpc::*;
#[allow(unused_imports)]
pub use guests::*;
#[allow(unused_imports)]
pub use h2server::*;
#[allow(unused_imports)]
pub use haproxy::*;
#[allow(unused_imports)]
pub use peers::*;
#[allow(unused_imports)]
pub use plugins::*;
#[allow(unused_imports)]
pub use python::*;
#[allow(unused_imports)]
pub use rawserver::*;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type used by the test clients and backends.
pub type Body = BoxBody<Bytes, BoxError>;

/// Default bound on a single client exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Time bounds; the byte search shared by the raw readers
// ---------------------------------------------------------------------------

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `check` every 25 ms until it returns true; panics after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("condition not reached within {limit:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
