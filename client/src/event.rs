//! What the library tells its application.
//!
//! The state machine and the async client report through the same [`Event`] type, so an
//! application sees one stream of facts in the order they happened.

use bytes::Bytes;

/// The peer's presence as this library derives it (PROTOCOL.md §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The peer has a session and is reachable.
    Online,
    /// The peer has been away for `presence_quiet` without coming back.
    Reconnecting,
    /// The peer is gone: away for `presence_grace`, or it said `bye` (`left: true`).
    Offline {
        /// Whether the peer announced that it left for good.
        left: bool,
    },
}

/// Something the application is told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message of the peer, handed over exactly once and in order.
    Message {
        /// Whether the peer sent it as text (the payload is then UTF-8).
        text: bool,
        /// The message's bytes.
        payload: Bytes,
        /// Its position in the peer's stream; 0 for an unnumbered message (a raw peer's).
        seq: u64,
    },
    /// The peer's presence changed.
    Presence(Presence),
    /// The peer acknowledged every message of this client up to `hw`.
    Acked {
        /// The highest acknowledged seq.
        hw: u64,
    },
    /// The peer's stream changed (it restarted, or another client took its role): messages of
    /// `old_sid` after `delivered_hw` that were never handed over are lost.
    StreamReset {
        /// The stream that ended.
        old_sid: u64,
        /// The last position of it that was handed to this application.
        delivered_hw: u64,
    },
    /// A connection was welcomed by a node.
    Connected {
        /// The connection's generation.
        r#gen: u32,
        /// The node's id.
        node: String,
    },
    /// The current connection ended; the client reconnects unless it was closed, another client
    /// took its role (4001), or an operator closed the channel (4004): then it stops.
    Disconnected {
        /// The close code the node sent, if any.
        code: Option<u16>,
        /// The close reason, or what went wrong.
        reason: String,
    },
    /// The peer is a raw (non-v1) client: messages to it are sent unnumbered, at most once, and
    /// no acknowledgement will ever come.
    RawPeer,
    /// The node took the token of [`Handle::set_token`](crate::Handle::set_token): the session
    /// now closes at `expires` (never, when `None`).
    TokenRefreshed {
        /// The session's new expiry.
        expires: Option<std::time::SystemTime>,
    },
    /// The node refused the token of [`Handle::set_token`](crate::Handle::set_token); the old
    /// token's expiry stands.
    TokenRefused {
        /// Why.
        reason: String,
    },
    /// A reconnect attempt was refused with an HTTP status; the client keeps trying.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The reason text of the refusal.
        reason: String,
    },
}
