//! wspair relays WebSocket messages point to point between the two clients of a pair: the
//! `app` and the `web` that connect to `/channel?type=app|web&channelId=ID` with the same
//! channel id. Every message one sends reaches the other, in order, with its opcode.
//!
//! The binary (`main.rs`) is a thin shell around this library, so tests drive exactly what
//! users run:
//!
//! ```no_run
//! # async fn example() -> Result<(), wspair::ServerError> {
//! let server = wspair::Server::bind(wspair::Config::default()).await?;
//! let addrs = server.local_addrs();
//! let stop = tokio_util::sync::CancellationToken::new();
//! let outcome = server.run(stop).await;
//! # Ok(()) }
//! ```
//!
//! See ARCHITECTURE.md for the map of the modules.
#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
pub mod auth;
pub mod budget;
pub mod config;
pub mod credit;
pub mod drain;
pub mod histograms;
pub mod hub;
pub mod inner;
pub mod liveness;
pub mod log_throttle;
pub mod metrics;
pub mod node;
pub mod origins;
pub mod outer;
pub mod pair;
pub mod registry;
pub mod router;
pub mod server;
pub mod tls;
pub mod v1;

pub use config::{Config, ConfigError};
pub use pair::{ChannelId, Role};
pub use server::{LocalAddrs, Server, ServerError, ShutdownOutcome};
