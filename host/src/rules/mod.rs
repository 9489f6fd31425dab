//! Config rules compiled into filters. (Being written.)

use std::collections::HashMap;

use toml::Spanned;

use crate::config::schema::RawRule;
use crate::config::{ConfigError, SourceMap};
use crate::filter::Chain;

/// What rule compilation may refer to.
pub struct CompileCtx<'a> {
    pub source: &'a SourceMap,
    /// Backend name → index in the config.
    pub backends: &'a HashMap<String, usize>,
}

/// Compiles a frontend's `http_request` and `http_response` lists into its filter chain.
pub fn compile_chain(
    request: &[Spanned<RawRule>],
    response: &[Spanned<RawRule>],
    cx: &CompileCtx<'_>,
) -> Result<Chain, ConfigError> {
    let _ = (request, response, cx);
    Ok(Chain::default())
}
