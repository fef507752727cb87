//! Identity of a node in a cluster: its generated id and what it advertises to the others.
//!
//! A node id is drawn at random when the process starts, so a restarted node is a new node
//! (a new incarnation): routes written by the old process name an id that is no longer alive
//! and are treated as absent.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

/// The generated id of one node process. Never zero, so `Option<NodeId>` is as small as a
/// `u64` (it rides along with every message in a session's queue).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub NonZeroU64);

impl NodeId {
    /// A fresh random id.
    pub fn generate() -> NodeId {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
        NodeId::from_u64(u64::from_le_bytes(bytes)).unwrap_or(NodeId(NonZeroU64::MIN))
    }

    /// The id `n`, if not zero.
    pub fn from_u64(n: u64) -> Option<NodeId> {
        NonZeroU64::new(n).map(NodeId)
    }

    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0.get())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let n = u64::from_str_radix(text, 16)?;
        // Zero is not an id; parsing "0" as a non-zero number reports the same kind of error.
        n.to_string().parse::<NonZeroU64>().map(NodeId)
    }
}

/// One session anywhere in the cluster: its node and its id on that node. Never reused: node
/// ids are drawn per process and session ids count up within one, so a reconnecting client
/// is a new incarnation, and a frame naming an old one can be told from one for its
/// successor.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Incarnation {
    /// The node holding the session.
    pub node: NodeId,
    /// The session's id on that node.
    pub session: u64,
}

/// What a node tells the others about itself through the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// `host:port` of its inner listener.
    pub advertise: String,
    /// Its credit window: messages a sender may have in flight to one of its sessions
    /// (its `outer.send-queue`).
    pub window: u32,
    /// Its wspair version.
    pub version: String,
}

impl NodeInfo {
    /// The registry spelling: `id|advertise|window|version`.
    pub fn encode(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.id, self.advertise, self.window, self.version
        )
    }

    /// Parses [`NodeInfo::encode`]'s output; `None` for anything else.
    pub fn decode(text: &str) -> Option<NodeInfo> {
        let mut parts = text.splitn(4, '|');
        Some(NodeInfo {
            id: parts.next()?.parse().ok()?,
            advertise: parts.next()?.to_owned(),
            window: parts.next()?.parse().ok()?,
            version: parts.next()?.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_info_round_trips() {
        let info = NodeInfo {
            id: NodeId::from_u64(0xfeed).unwrap(),
            advertise: "[::1]:1025".into(),
            window: 1024,
            version: "0.1.0".into(),
        };
        assert_eq!(NodeInfo::decode(&info.encode()), Some(info));
        assert_eq!(NodeInfo::decode("garbage"), None);
    }
}
