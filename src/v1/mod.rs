//! wspair.v1, the opt-in client protocol (PROTOCOL.md): what a node needs of it.
//!
//! A node does little for v1 clients, by design: positions live in the clients (the sender's
//! outbox, the receiver's high-water mark), so a node that dies loses nothing a pair needs.
//! A node checks a v1 client's identity ([`ClientId`]: its stream id and connection generation)
//! when it claims its role, checks every frame the client sends ([`frame`]) and enforces its
//! window ([`window`]), tells it of its peer's sessions, relays the frames between two v1
//! clients untouched, and translates for a raw peer.

pub mod frame;
pub mod window;

use std::fmt;

/// The subprotocol name a v1 client offers in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "wspair.v1";

/// Who a v1 connection is: the client's stream id, drawn once per client and kept across its
/// reconnects, and the connection's generation, one more per connection.
///
/// A newer generation of the same stream id takes the role's slot whatever
/// `outer.on-duplicate` says; an equal or older one is refused (PROTOCOL.md §1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ClientId {
    /// The stream id; never zero.
    pub sid: u64,
    /// The connection's generation; never zero.
    pub generation: u32,
}

/// How a new connection stands against the v1 client holding its role.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Succession {
    /// The same client, newer connection: it takes the slot.
    Newer,
    /// The same client, an equal or older connection: refused.
    Stale,
    /// Another client (or a raw one on either side): the duplicate policy decides.
    Other,
}

impl ClientId {
    /// How `self`, a new connection, stands against `holder`, the session holding the role.
    pub fn succession(new: Option<ClientId>, holder: Option<ClientId>) -> Succession {
        match (new, holder) {
            (Some(new), Some(holder)) if new.sid == holder.sid => {
                if new.generation > holder.generation {
                    Succession::Newer
                } else {
                    Succession::Stale
                }
            }
            _ => Succession::Other,
        }
    }

    /// Parses the `sid` (16 lowercase hex digits, not all zero) and `gen` (1..=2^32-1) query
    /// parameters; the error names the parameter and the rule.
    pub fn parse(sid: Option<&str>, generation: Option<&str>) -> Result<ClientId, String> {
        let sid = sid.ok_or("v1 needs the query parameter `sid`")?;
        let generation = generation.ok_or("v1 needs the query parameter `gen`")?;
        let sid_ok = sid.len() == 16 && sid.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let sid = u64::from_str_radix(sid, 16)
            .ok()
            .filter(|&n| sid_ok && n != 0)
            .ok_or("query parameter `sid` must be 16 lowercase hex digits, not all zero")?;
        let generation = generation
            .parse::<u32>()
            .ok()
            .filter(|&n| n != 0 && !generation.starts_with('+') && !generation.starts_with('0'))
            .ok_or("query parameter `gen` must be a decimal number in 1..=4294967295")?;
        Ok(ClientId { sid, generation })
    }

    /// The registry's spelling, appended to a route: `sid:gen`.
    pub fn encode(&self) -> String {
        format!("{:016x}:{}", self.sid, self.generation)
    }

    /// Parses [`ClientId::encode`]'s output.
    pub fn decode(text: &str) -> Option<ClientId> {
        let (sid, generation) = text.split_once(':')?;
        ClientId::parse(Some(sid), Some(generation)).ok()
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{}", self.sid, self.generation)
    }
}

/// True if a `Sec-WebSocket-Protocol` header value offers `wspair.v1`.
pub fn offered(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .is_ok_and(|text| text.split(',').any(|token| token.trim() == SUBPROTOCOL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let id = ClientId::parse(Some("5f0c3a9e71d2b846"), Some("3")).unwrap();
        assert_eq!(id.sid, 0x5f0c_3a9e_71d2_b846);
        assert_eq!(id.generation, 3);
        assert_eq!(ClientId::decode(&id.encode()), Some(id));
    }

    #[test]
    fn refuses_what_the_protocol_does_not_allow() {
        let bad = |sid: &str, generation: &str| ClientId::parse(Some(sid), Some(generation));
        assert!(bad("0000000000000000", "1").is_err());
        assert!(bad("5F0C3A9E71D2B846", "1").is_err());
        assert!(bad("5f0c3a9e71d2b84", "1").is_err());
        assert!(bad("+f0c3a9e71d2b846", "1").is_err());
        assert!(bad("5f0c3a9e71d2b846", "0").is_err());
        assert!(bad("5f0c3a9e71d2b846", "01").is_err());
        assert!(bad("5f0c3a9e71d2b846", "4294967296").is_err());
        assert!(bad("5f0c3a9e71d2b846", "+1").is_err());
        assert!(
            ClientId::parse(None, Some("1"))
                .unwrap_err()
                .contains("`sid`")
        );
    }

    #[test]
    fn a_newer_generation_of_the_same_client_succeeds() {
        let id = |sid, generation| Some(ClientId { sid, generation });
        assert_eq!(ClientId::succession(id(1, 2), id(1, 1)), Succession::Newer);
        assert_eq!(ClientId::succession(id(1, 1), id(1, 1)), Succession::Stale);
        assert_eq!(ClientId::succession(id(1, 1), id(1, 2)), Succession::Stale);
        assert_eq!(ClientId::succession(id(2, 9), id(1, 1)), Succession::Other);
        assert_eq!(ClientId::succession(None, id(1, 1)), Succession::Other);
        assert_eq!(ClientId::succession(id(1, 1), None), Succession::Other);
    }

    #[test]
    fn finds_the_offer_among_others() {
        assert!(offered(b"chat, wspair.v1"));
        assert!(!offered(b"wspair.v2"));
    }
}
