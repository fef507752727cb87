//! wspair's integration tests: one binary, modules by theme, all through real sockets.

mod harness;

mod admin;
mod auth;
mod churn;
mod cli;
mod cluster;
mod demo;
mod handshake;
mod http_front;
mod inner_tls;
mod lifecycle;
mod limits;
mod logs;
mod memory;
mod properties;
mod protocol;
mod proxies;
mod ratelimit;
mod redis_tls;
mod relay;
mod tidy;
mod tls;
mod token_refresh;
mod tools;
mod v1;
mod v1_churn;
mod v1_faults;
mod v1_hostile;
mod v1_resume;
