//! Subcommands of the `portcullis` binary that live in the library (so
//! `main.rs` only dispatches): `plugin new|check|test`.

pub mod plugin;
pub mod scaffold;
