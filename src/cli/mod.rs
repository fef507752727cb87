//! Subcommands of the `wspair` binary other than `serve`. They live in the binary, not in the
//! library: they are tools around a relay (a client to poke it, a configuration check, a drain
//! through the admin API, shell completions and a man page), and nothing in a node depends on
//! them.

pub mod check_config;
pub mod client;
pub mod drain;
pub mod generate;
