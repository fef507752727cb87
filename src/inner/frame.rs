//! `InnerFrame`: what travels on a link between two nodes.
//!
//! A link carries frames one way, from the dialing node to the accepting one, except for the
//! handshake and `Pong`. Frames name sessions by channel id and role, never by socket, so either
//! node can restart without the other keeping stale handles.

use bytes::Bytes;

use crate::node::NodeId;
use crate::pair::{ChannelId, MessageKind, Role};
use crate::v1::ClientId;

/// Version of the inner protocol, checked in `Hello`. Version 2 named session incarnations
/// in data and credit frames; version 3 carries wspair.v1 frames and clients' v1 identities.
/// Nodes of other versions cannot link with it.
pub const PROTOCOL_VERSION: u16 = 3;

/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;

/// Bytes of an HMAC-SHA256 tag.
pub const MAC_BYTES: usize = 32;

/// One frame on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InnerFrame {
    /// First frame from each side: who it is and a challenge for the other.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// The sender's node id.
        node: NodeId,
        /// A fresh random challenge the other side must answer.
        nonce: [u8; NONCE_BYTES],
        /// The sender's credit window (see `OuterConfig::credit_window`).
        window: u32,
        /// The sender's `inner.advertise`, so a node can answer one it has not yet seen in
        /// the registry.
        advertise: String,
    },
    /// The answer to the other side's challenge: an HMAC over both nonces and both ids.
    Auth {
        /// HMAC-SHA256 under `inner.secret`.
        mac: [u8; MAC_BYTES],
    },
    /// A message from session `sender` of the sending node to session `receiver` (holding
    /// `role` of `channel_id`) of the receiving node, at position `seq` of that pair.
    Data {
        /// The pair's channel id.
        channel_id: ChannelId,
        /// The role of the receiving session.
        role: Role,
        /// The sending session's id on the sending node.
        sender: u64,
        /// The receiving session's id on the receiving node.
        receiver: u64,
        /// 1 for the first message `sender` sent `receiver`, then one more for each.
        seq: u64,
        /// Text or binary.
        kind: MessageKind,
        /// The message body.
        payload: Bytes,
    },
    /// Session `sender` (holding `role` on the receiving node) may have sent up to `limit`
    /// messages in all to session `receiver` of the sending node. Absolute: a repeated or
    /// late one changes nothing.
    Credit {
        /// The pair's channel id.
        channel_id: ChannelId,
        /// The role of the sending session whose window grows.
        role: Role,
        /// The sending session's id, on the node receiving this frame.
        sender: u64,
        /// The receiving session's id, on the node sending this frame.
        receiver: u64,
        /// Messages the sender may have sent in all.
        limit: u64,
    },
    /// Session `sender` of the sending node has sent `sent` messages in all to session
    /// `receiver` (holding `role`) of the receiving node. Queued behind its data, by a sender
    /// that has waited for credit: any it sent that did not arrive were lost; the answer is a
    /// `Credit`.
    Sent {
        /// The pair's channel id.
        channel_id: ChannelId,
        /// The role of the receiving session.
        role: Role,
        /// The sending session's id on the sending node.
        sender: u64,
        /// The receiving session's id on the receiving node.
        receiver: u64,
        /// Messages sent in all.
        sent: u64,
    },
    /// `role` of `channel_id` is now held by `session` on the sending node.
    Bound {
        /// The pair's channel id.
        channel_id: ChannelId,
        /// The role that was bound.
        role: Role,
        /// The new session's id on the sending node.
        session: u64,
        /// Its client's v1 identity; `None` for a raw client.
        client: Option<ClientId>,
    },
    /// The receiving node's `Bound` for `session` was processed; the claim that sent it may
    /// answer its client.
    BoundAck {
        /// The pair's channel id.
        channel_id: ChannelId,
        /// The role that was bound.
        role: Role,
        /// The session named in the `Bound`.
        session: u64,
        /// The v1 identity of the client of the other role on the acknowledging node, if it
        /// holds that role with a v1 client.
        client: Option<ClientId>,
        /// Whether the acknowledging node holds the other role at all. When it does not,
        /// `client` says nothing (`None` is then "no session", not "a raw client"), and the
        /// record of the peer keeps the identity it has.
        held: bool,
    },
    /// `session`, which held `role` of `channel_id` on the sending node, has ended.
    Unbound {
        /// The pair's channel id.
        channel_id: ChannelId,
        /// The role that was released.
        role: Role,
        /// The ended session's id on the sending node.
        session: u64,
        /// Messages it sent its peer on the receiving node: credit beyond them is free.
        sent: u64,
    },
    /// Close `session` (holding `role` of `channel_id` on the receiving node) with 4001:
    /// a newer client replaced it on the sending node.
    Evict {
        /// The pair's channel id.
        channel_id: ChannelId,
        /// The role to evict.
        role: Role,
        /// The session to evict, on the receiving node.
        session: u64,
    },
    /// Heartbeat; answered with `Pong`.
    Ping,
    /// Answer to `Ping`.
    Pong,
}

impl InnerFrame {
    /// The frame's kind, for logs: never its contents, which may carry clients' payloads.
    pub fn kind(&self) -> &'static str {
        match self {
            InnerFrame::Hello { .. } => "hello",
            InnerFrame::Auth { .. } => "auth",
            InnerFrame::Data { .. } => "data",
            InnerFrame::Credit { .. } => "credit",
            InnerFrame::Sent { .. } => "sent",
            InnerFrame::Bound { .. } => "bound",
            InnerFrame::BoundAck { .. } => "bound-ack",
            InnerFrame::Unbound { .. } => "unbound",
            InnerFrame::Evict { .. } => "evict",
            InnerFrame::Ping => "ping",
            InnerFrame::Pong => "pong",
        }
    }

    /// The position of a data frame; 0 for others.
    pub fn seq(&self) -> u64 {
        match self {
            InnerFrame::Data { seq, .. } => *seq,
            _ => 0,
        }
    }

    /// Payload bytes of a data frame, which is what a link's byte budget counts; 0 for others.
    pub fn data_len(&self) -> usize {
        match self {
            InnerFrame::Data { payload, .. } => payload.len(),
            _ => 0,
        }
    }
}
