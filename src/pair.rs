//! Domain types of a pair: the channel id, the role of a client, and the message that
//! travels from one side of a pair to the other.
//!
//! Values here are validated once, at the edge (`ChannelId::from_str`, `Role::from_str`);
//! code behind the edge takes these types, never `&str`, so the checks cannot be skipped.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// Length of every channel id, in bytes.
pub const CHANNEL_ID_LEN: usize = 32;

/// The 32-character token (`[A-Za-z0-9_]{32}`) a backend issued to one session of the product.
///
/// Stored inline (no heap allocation), so cloning it on every claim and lookup is cheap.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId([u8; CHANNEL_ID_LEN]);

/// Why a string is not a channel id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelIdError {
    /// The id has the wrong length.
    #[error("must be {CHANNEL_ID_LEN} characters, got {0}")]
    Length(usize),
    /// The id holds a character outside `[A-Za-z0-9_]`.
    #[error("must match [A-Za-z0-9_]{{32}}, found {0:?} at position {1}")]
    Character(char, usize),
}

impl FromStr for ChannelId {
    type Err = ChannelIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some((position, bad)) = text
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            return Err(ChannelIdError::Character(bad, position));
        }
        let bytes: [u8; CHANNEL_ID_LEN] = text
            .as_bytes()
            .try_into()
            .map_err(|_| ChannelIdError::Length(text.len()))?;
        Ok(ChannelId(bytes))
    }
}

impl ChannelId {
    /// Parses an id from raw bytes, as read from an inner frame.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ChannelIdError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => text.parse(),
            Err(err) => Err(ChannelIdError::Length(err.valid_up_to())),
        }
    }

    /// The id's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; CHANNEL_ID_LEN] {
        &self.0
    }

    /// The id as text; always ASCII.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a channel id holds only ASCII characters")
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({})", self.as_str())
    }
}

/// Which side of a pair a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The phone app.
    App,
    /// The web page (H5).
    Web,
}

/// The `type` query parameter is neither `app` nor `web`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be `app` or `web`, got {0:?}")]
pub struct RoleError(pub String);

impl Role {
    /// The other side of the same pair.
    pub fn peer(self) -> Role {
        match self {
            Role::App => Role::Web,
            Role::Web => Role::App,
        }
    }

    /// The spelling used in the URL and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Web => "web",
        }
    }
}

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "app" => Ok(Role::App),
            "web" => Ok(Role::Web),
            other => Err(RoleError(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a message is text or binary; the opcode is kept end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    /// A text message; its payload is valid UTF-8 (checked when it was received).
    Text,
    /// A binary message.
    Binary,
    /// A frame of a wspair.v1 client (PROTOCOL.md), checked when it was read: written as a
    /// binary message to a v1 peer, and translated for a raw one.
    V1,
}

/// One whole WebSocket message on its way from a session to its peer.
///
/// The payload is `Bytes`, so relaying it never copies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Text or binary, as the sender sent it.
    pub kind: MessageKind,
    /// The message body, reassembled from fragments and decompressed.
    pub payload: Bytes,
    /// The session of another node that sent it under credit, if one did; the receiving
    /// session accounts for it in its credit ledger as it writes it. `None`: the message took
    /// room from the queue's budget instead (a local sender, or a frame that arrived
    /// without credit), which the receiving session gives back as it writes it.
    pub origin: Option<crate::node::Incarnation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_id_accepts_32_word_characters() {
        let text = "abcdefghijklmnopqrstuvwxyz_ABC09";
        assert_eq!(text.parse::<ChannelId>().unwrap().as_str(), text);
    }

    #[test]
    fn channel_id_rejects_wrong_length() {
        assert_eq!("abc".parse::<ChannelId>(), Err(ChannelIdError::Length(3)));
        let long = "a".repeat(33);
        assert_eq!(long.parse::<ChannelId>(), Err(ChannelIdError::Length(33)));
    }

    #[test]
    fn channel_id_rejects_other_characters() {
        let text = format!("{}-", "a".repeat(31));
        assert_eq!(
            text.parse::<ChannelId>(),
            Err(ChannelIdError::Character('-', 31))
        );
        let unicode = format!("{}é", "a".repeat(30));
        assert_eq!(
            unicode.parse::<ChannelId>(),
            Err(ChannelIdError::Character('é', 30))
        );
    }

    #[test]
    fn role_parses_and_knows_its_peer() {
        assert_eq!("app".parse::<Role>(), Ok(Role::App));
        assert_eq!("web".parse::<Role>().unwrap().peer(), Role::App);
        assert!("APP".parse::<Role>().is_err());
    }
}
