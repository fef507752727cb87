//! Node-to-node links (cluster mode): the frame type, its codec, the authenticated handshake,
//! the dialing side (`link`), the accepting side (`listener`) and the stream under them
//! (`stream`: TCP, or TLS with `inner.tls-*`).
//!
//! One link per ordered pair of nodes: node A dials B to send A's frames to B, and B dials A
//! for the other direction, so three nodes use six TCP connections however many channels they
//! relay. This module never talks to the registry.

pub mod auth;
pub mod codec;
pub mod frame;
pub mod link;
pub mod listener;
pub mod stream;
