//! wspair's integration tests: one binary, modules by theme, all through real sockets.

mod harness;

mod cluster;
mod handshake;
mod lifecycle;
mod limits;
mod protocol;
mod relay;
mod tidy;
