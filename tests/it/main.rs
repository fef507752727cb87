//! wspair's integration tests: one binary, modules by theme, all through real sockets.

mod harness;

mod auth;
mod churn;
mod cli;
mod cluster;
mod demo;
mod handshake;
mod http_front;
mod lifecycle;
mod limits;
mod memory;
mod properties;
mod protocol;
mod ratelimit;
mod relay;
mod tidy;
mod tls;
mod v1;
mod v1_churn;
mod v1_faults;
mod v1_hostile;
mod v1_resume;
