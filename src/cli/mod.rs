//! Subcommands of the `wspair` binary other than `serve`. They live in the binary, not in the
//! library: they are tools for poking a running relay, and nothing in a node depends on them.

pub mod client;
