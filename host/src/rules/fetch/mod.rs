//! Sample fetches and converters: typed values read from a transaction.
//!
//! A fetch expression is `fetch[(args)][,converter[(args)]]...`, e.g.
//! `hdr(host),lower` or `req.hdr(x-forwarded-for,-1),field(1,:)`. Both kinds
//! of step come from a registry ([`FETCHES`], [`CONVERTERS`]): a name, an
//! argument count, the output type and a constructor that validates the
//! arguments once at load time. Adding a fetch or converter means adding one
//! entry; conditions, log-format strings and actions pick it up unchanged.
//!
//! Values are [`Value`]s that borrow from the transaction where they can, so
//! the common case (match the path, read a header) allocates nothing.

mod converters;
mod expr;
mod fetches;
pub(crate) mod payload;
mod registry;
mod ssl;
mod value;

#[cfg(test)]
mod tests;

pub use converters::CONVERTERS;
pub(crate) use converters::percent_decode_strict;
pub use expr::{Expr, parse_expr, split_calls};
pub(crate) use expr::{build_expr, compile_regex, read_quoted, unknown_fetch};
pub use fetches::FETCHES;
pub(crate) use fetches::{path_and_query, request_host};
pub use registry::{
    Arg, Avail, Call, ConvBuilder, ConvDef, Converter, Fetch, FetchBuilder, FetchDef, fetch_names,
    find_converter, find_fetch,
};
pub use value::{Kind, Value};
