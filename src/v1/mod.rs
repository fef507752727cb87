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

/// Who a v1 connection is: the client's stream id, derived from the secret key the client drew
/// once and presents on each of its connections (so a peer, which learns the stream id, cannot
/// pose as it), and the connection's generation, one more per connection.
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

    /// Parses the `key` (32 lowercase hex digits: the client's 128-bit secret) and `gen`
    /// (1..=2^32-1) query parameters; the error names the parameter and the rule.
    pub fn from_query(key: Option<&str>, generation: Option<&str>) -> Result<ClientId, String> {
        let key = key.ok_or("v1 needs the query parameter `key`")?;
        let generation = generation.ok_or("v1 needs the query parameter `gen`")?;
        let key =
            parse_hex::<16>(key).ok_or("query parameter `key` must be 32 lowercase hex digits")?;
        Ok(ClientId {
            sid: sid_of_key(u128::from_str_radix(key, 16).expect("checked hex digits")),
            generation: parse_generation(generation)
                .ok_or("query parameter `gen` must be a decimal number in 1..=4294967295")?,
        })
    }

    /// The registry's spelling, appended to a route: `sid:gen`.
    pub fn encode(&self) -> String {
        format!("{:016x}:{}", self.sid, self.generation)
    }

    /// Parses [`ClientId::encode`]'s output.
    pub fn decode(text: &str) -> Option<ClientId> {
        let (sid, generation) = text.split_once(':')?;
        let sid = u64::from_str_radix(parse_hex::<8>(sid)?, 16).ok()?;
        Some(ClientId {
            sid: (sid != 0).then_some(sid)?,
            generation: parse_generation(generation)?,
        })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{}", self.sid, self.generation)
    }
}

/// The stream id of the client whose secret is `key`: the first 8 bytes (big-endian) of the
/// SHA-256 of the key's 16 bytes (big-endian), or 1 if those are all zero.
pub fn sid_of_key(key: u128) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.to_be_bytes());
    let sid = u64::from_be_bytes(digest[..8].try_into().expect("a digest has 32 bytes"));
    sid.max(1)
}

/// `text` if it is exactly `2 * N` lowercase hex digits.
fn parse_hex<const N: usize>(text: &str) -> Option<&str> {
    (text.len() == 2 * N && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then_some(text)
}

/// A generation written canonically: decimal, 1..=2^32-1, no sign, no leading zero.
fn parse_generation(text: &str) -> Option<u32> {
    text.parse::<u32>()
        .ok()
        .filter(|&n| n != 0 && !text.starts_with('+') && !text.starts_with('0'))
}

/// True if a `Sec-WebSocket-Protocol` header value offers `wspair.v1`.
pub fn offered(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .is_ok_and(|text| text.split(',').any(|token| token.trim() == SUBPROTOCOL))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "5f0c3a9e71d2b8460011223344556677";

    #[test]
    fn the_sid_is_derived_from_the_key_and_round_trips() {
        let id = ClientId::from_query(Some(KEY), Some("3")).unwrap();
        assert_eq!(
            id.sid,
            sid_of_key(0x5f0c_3a9e_71d2_b846_0011_2233_4455_6677)
        );
        assert_eq!(id.generation, 3);
        assert_eq!(ClientId::decode(&id.encode()), Some(id));
        // SHA-256 of 16 zero bytes begins 374708fff7719dd5 (the client library checks the same).
        assert_eq!(sid_of_key(0), 0x3747_08ff_f771_9dd5);
    }

    #[test]
    fn refuses_what_the_protocol_does_not_allow() {
        let bad = |key: &str, generation: &str| ClientId::from_query(Some(key), Some(generation));
        assert!(bad("5F0C3A9E71D2B8460011223344556677", "1").is_err());
        assert!(bad("5f0c3a9e71d2b846001122334455667", "1").is_err());
        assert!(bad("+f0c3a9e71d2b8460011223344556677", "1").is_err());
        assert!(bad(KEY, "0").is_err());
        assert!(bad(KEY, "01").is_err());
        assert!(bad(KEY, "4294967296").is_err());
        assert!(bad(KEY, "+1").is_err());
        assert!(
            ClientId::from_query(None, Some("1"))
                .unwrap_err()
                .contains("`key`")
        );
        assert_eq!(ClientId::decode("0000000000000000:1"), None);
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
