//! The registries: the [`Fetch`] and [`Converter`] traits, the entries of [`FETCHES`] and
//! [`CONVERTERS`] ([`FetchDef`], [`ConvDef`]) and lookup by name.

use std::fmt;

use super::{CONVERTERS, FETCHES, Kind, Value};
use crate::rules::{Env, ParseError};
use crate::txn::Txn;

/// A compiled sample fetch: reads one value from the transaction.
pub trait Fetch: Send + Sync + fmt::Debug {
    /// The value, or `None` when there is none (absent header, wrong phase, ...).
    fn fetch<'t>(&'t self, txn: &'t Txn) -> Option<Value<'t>>;

    /// Whether `pred` holds for any of the values, as an ACL tests them.
    ///
    /// HAProxy iterates over every occurrence of a multi-valued fetch used in
    /// an ACL (`hdr(x)` without an occurrence, `cook(x)`), so a second value
    /// cannot hide the one a rule looks for. Single-valued fetches test their
    /// one value.
    fn any<'t>(&'t self, txn: &'t Txn, pred: &mut dyn FnMut(Value<'t>) -> bool) -> bool {
        self.fetch(txn).is_some_and(pred)
    }
}

/// A compiled converter: transforms a value; `None` stops the expression with no value.
pub trait Converter: Send + Sync + fmt::Debug {
    /// Converts `input`; `txn` is there for converters that read variables.
    fn convert<'t>(&'t self, input: Value<'t>, txn: &'t Txn) -> Option<Value<'t>>;
}

/// Where a fetch can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Avail {
    /// In `http_request` and `http_response` rules.
    Both,
    /// Only in `http_request` rules (it reads something gone by the response).
    Request,
    /// Only in `http_response` rules (it reads the response).
    Response,
}

/// One argument of a fetch or converter call, unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The text, with quotes removed and `\"` / `\\` unescaped.
    pub text: String,
    /// Byte offset of the argument in the config string (for errors).
    pub offset: usize,
    /// Whether the argument was quoted.
    pub quoted: bool,
}

/// One `name(args)` step of an expression, as written.
#[derive(Debug, Clone)]
pub struct Call<'s> {
    /// The fetch or converter name.
    pub name: &'s str,
    /// Byte offset of the name in the config string.
    pub offset: usize,
    /// The arguments between the parentheses.
    pub args: Vec<Arg>,
    /// Whether `(...)` was written (even if empty).
    pub parens: bool,
}

/// Builds a fetch from its call; validates arguments.
pub type FetchBuilder = fn(&Call<'_>, &Env<'_>) -> Result<Box<dyn Fetch>, ParseError>;
/// Builds a converter from its call; validates arguments.
pub type ConvBuilder = fn(&Call<'_>, &Env<'_>) -> Result<Box<dyn Converter>, ParseError>;

/// A registry entry for a sample fetch.
pub struct FetchDef {
    /// The fetch name; a name ending in `.*` (e.g. `lua.*`) matches every name with that prefix.
    pub name: &'static str,
    /// How to write it, for messages (e.g. `hdr(<name>[,<occ>])`).
    pub usage: &'static str,
    /// Minimum and maximum argument count.
    pub args: (u8, u8),
    /// Output type (decides the default match method in conditions).
    pub kind: Kind,
    /// The phases whose rules may use it (checked at load time).
    pub avail: Avail,
    /// Validates the arguments and builds the fetch.
    pub build: FetchBuilder,
}

/// A registry entry for a converter.
pub struct ConvDef {
    /// The converter name.
    pub name: &'static str,
    /// How to write it, for messages (e.g. `field(<index>,<delimiters>)`).
    pub usage: &'static str,
    /// Minimum and maximum argument count.
    pub args: (u8, u8),
    /// Output type; `None` keeps the input's type.
    pub out: Option<Kind>,
    /// Validates the arguments and builds the converter.
    pub build: ConvBuilder,
}

/// The fetch called `name`: an exact entry, else a `prefix.*` entry.
pub fn find_fetch(name: &str) -> Option<&'static FetchDef> {
    FETCHES.iter().find(|d| d.name == name).or_else(|| {
        FETCHES.iter().find(|d| {
            d.name
                .strip_suffix('*')
                .is_some_and(|p| name.len() > p.len() && name.starts_with(p))
        })
    })
}

/// The converter called `name`: an exact entry, else a `prefix.*` entry.
pub fn find_converter(name: &str) -> Option<&'static ConvDef> {
    CONVERTERS.iter().find(|d| d.name == name).or_else(|| {
        CONVERTERS.iter().find(|d| {
            d.name
                .strip_suffix('*')
                .is_some_and(|p| name.len() > p.len() && name.starts_with(p))
        })
    })
}

/// Names of all fetches (prefix entries excluded), for suggestions.
pub fn fetch_names() -> impl Iterator<Item = &'static str> {
    FETCHES.iter().map(|d| d.name).filter(|n| !n.ends_with('*'))
}
