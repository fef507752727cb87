//! A client of wspair, the WebSocket relay, speaking the `wspair.v1` subprotocol
//! (PROTOCOL.md): end-to-end acknowledgements, lossless resume across reconnects and nodes,
//! flow control, peer presence and drain.
//!
//! Per direction, every message is handed to the peer's application exactly once and in
//! order while both client processes live: a sender keeps what it sent until the peer's library
//! acknowledges it, and the two libraries exchange their positions (`sync`) on every new
//! connection.
//!
//! The crate is layered so each part can be used and tested alone:
//! - [`frame`]: the wire codec;
//! - [`protocol`]: the state machine, without I/O and with time passed in;
//! - [`Client`]: the async client on tokio and tokio-tungstenite.
//!
//! ```rust,no_run
//! use wspair_client::{Client, Config, Event, Role};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), wspair_client::Error> {
//!     let urls = ["ws://10.0.0.1:1024/channel", "ws://10.0.0.2:1024/channel"]; // two nodes
//!     let mut client = Client::connect(Config::new(urls, "0123456789abcdef0123456789abcdef", Role::Web)).await?;
//!     let seq = client.send_text("hello").await?; // waits while the window is full
//!     println!("sent #{seq}");
//!     while let Some(event) = client.next_event().await {
//!         match event {
//!             Event::Message { text: true, payload, seq } => {
//!                 println!("#{seq}: {}", String::from_utf8_lossy(&payload));
//!                 break;
//!             }
//!             Event::Acked { hw } => println!("the peer took everything up to #{hw}"),
//!             Event::Presence(p) => println!("peer: {p:?}"),
//!             Event::StreamReset { old_sid, delivered_hw } => {
//!                 println!("peer restarted; its stream {old_sid:016x} ended after #{delivered_hw}")
//!             }
//!             _ => {}
//!         }
//!     }
//!     client.close().await // waits for the outbox to empty, then says bye
//! }
//! ```
#![warn(missing_docs)]

mod backoff;
mod client;
mod config;
mod connection;
mod error;
pub mod event;
pub mod frame;
pub mod protocol;

pub use client::{Client, Handle, Stats};
pub use config::{Config, Role};
pub use connection::SUBPROTOCOL;
pub use error::Error;
pub use event::{Event, Presence};
