//! wspair-client
#![warn(missing_docs)]

mod backoff;
mod client;
mod config;
mod connection;
mod error;
pub mod event;
pub mod frame;
pub mod protocol;

pub use client::{Client, Stats};
pub use config::{Config, Role};
pub use connection::SUBPROTOCOL;
pub use error::Error;
pub use event::{Event, Presence};
