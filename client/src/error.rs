//! The errors the client's public methods return.

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work (no URL, a zero sid).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The server refused the connection with an HTTP status.
    #[error("refused with HTTP {status}: {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The reason text the server gave.
        reason: String,
    },
    /// The server did not accept the `wspair.v1` subprotocol (and raw fallback is off).
    #[error("the server did not accept the wspair.v1 subprotocol")]
    NoSubprotocol,
    /// The connection could not be made, or broke during the handshake.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The server broke the protocol (for example no `welcome` first).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A message would exceed the node's `max_frame`.
    #[error("a frame of {len} bytes exceeds the node's max_frame of {max}")]
    TooLarge {
        /// The frame's length, header included.
        len: u64,
        /// The node's limit.
        max: u64,
    },
    /// The client has stopped (closed, or replaced by another client).
    #[error("the client is closed")]
    Closed,
    /// `close` sent `bye` after its timeout with messages still unacknowledged.
    #[error("closed with {unacknowledged} messages unacknowledged")]
    CloseTimedOut {
        /// Messages still in the outbox.
        unacknowledged: usize,
    },
}
