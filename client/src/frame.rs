//! The wspair.v1 wire codec (PROTOCOL.md §2).
//!
//! Every v1 frame is one binary WebSocket message whose first byte is its kind, or one of the
//! frames a BATCH message carries. This module turns such messages into [`Frame`] values and
//! back ([`decode_message`] for either), and nothing else: it keeps no state, so the state
//! machine and the tests can rely on one strict definition of what is well formed.

use std::time::SystemTime;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Kind byte of a binary DATA frame.
pub const KIND_DATA_BINARY: u8 = 0x01;
/// Kind byte of a text DATA frame.
pub const KIND_DATA_TEXT: u8 = 0x02;
/// Kind byte of an ACK frame.
pub const KIND_ACK: u8 = 0x03;
/// Kind byte of a PEER (end-to-end JSON) frame.
pub const KIND_PEER: u8 = 0x04;
/// Kind byte of a SERVER (node to client JSON) frame.
pub const KIND_SERVER: u8 = 0x05;
/// Kind byte of a NODE (client to its node JSON) frame.
pub const KIND_NODE: u8 = 0x06;
/// Kind byte of a BATCH: DATA and ACK frames, each prefixed by its length, in one message
/// (see [`decode_message`]).
pub const KIND_BATCH: u8 = 0x07;

/// The longest LEB128 varint the protocol allows, in bytes.
pub const MAX_VARINT_LEN: usize = 10;

/// One decoded wspair.v1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An application message: `seq` is its position in the sender's stream (0: unnumbered).
    Data {
        /// Position in the sender's stream; 0 marks an unnumbered message.
        seq: u64,
        /// Whether the payload is UTF-8 text (kind `0x02`).
        text: bool,
        /// The application payload, after the header.
        payload: Bytes,
    },
    /// An acknowledgement: every message of stream `sid` with `seq <= hw` was handed to the
    /// receiving application.
    Ack {
        /// The acknowledged stream (the receiver's peer's sid).
        sid: u64,
        /// The high-water mark.
        hw: u64,
    },
    /// An end-to-end control message.
    Peer(PeerMsg),
    /// A message from the node.
    Server(ServerMsg),
    /// A request to the node (never relayed).
    Node(NodeMsg),
}

/// Why a binary message is not a well-formed frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message has no bytes at all.
    #[error("empty frame")]
    Empty,
    /// The first byte is not a known kind.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A varint ends before its last byte.
    #[error("truncated varint")]
    VarintTruncated,
    /// A varint is longer than 10 bytes.
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    /// A varint encodes a value above 2^64 - 1.
    #[error("varint above 2^64 - 1")]
    VarintOverflow,
    /// A varint is longer than its value needs (it ends with a zero byte): every value has one
    /// encoding.
    #[error("overlong varint")]
    VarintOverlong,
    /// An ACK frame is shorter than its 8-byte sid.
    #[error("truncated ACK sid")]
    AckTruncated,
    /// Bytes follow the last field of a fixed-layout frame.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A text DATA payload is not UTF-8.
    #[error("text DATA is not valid UTF-8")]
    InvalidUtf8,
    /// A PEER or SERVER frame is not a JSON object of a known shape.
    #[error("malformed JSON control frame: {0}")]
    Json(String),
    /// A BATCH holds no frame.
    #[error("BATCH holds no frame")]
    BatchEmpty,
    /// A frame's length runs past the end of its BATCH.
    #[error("a frame runs past the end of its BATCH")]
    BatchTruncated,
    /// A BATCH holds a frame other than DATA and ACK.
    #[error("frame of kind 0x{0:02x} inside a BATCH")]
    BatchKind(u8),
}

/// The `tx` part of a `sync`: what the sender still has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxPos {
    /// The lowest seq still in the outbox (`next` when it is empty).
    pub base: u64,
    /// The seq the next new message will get.
    pub next: u64,
}

/// The `rx` part of a `sync`: the stream last received and its high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RxPos {
    /// The stream received, `None` before any.
    #[serde(with = "opt_hex_sid")]
    pub sid: Option<u64>,
    /// The last position delivered of that stream.
    pub hw: u64,
}

/// A `sync` PEER message (PROTOCOL.md §2.3, §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// The sender's stream id.
    #[serde(with = "hex_sid")]
    pub sid: u64,
    /// The generation of the connection the sync was sent on.
    pub r#gen: u32,
    /// The sender's outbox positions.
    pub tx: TxPos,
    /// The sender's receive position.
    pub rx: RxPos,
    /// Whether the receiver is asked to answer with its own `sync`.
    #[serde(default)]
    pub reply: bool,
}

/// An end-to-end message between the two client libraries (kind `0x04`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMsg {
    /// Positions of the sender (§5).
    Sync(Sync),
    /// The sender leaves for good.
    Bye,
    /// A type this version does not know; ignored by the receiver.
    Unknown(String),
}

/// The send window a node enforces (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Most numbered messages sent and not acknowledged.
    pub msgs: u64,
    /// Most payload bytes of those messages.
    pub bytes: u64,
}

/// The first frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The node's id.
    pub node: String,
    /// The node's session number for this connection.
    #[serde(default)]
    pub session: u64,
    /// The generation the node accepted.
    pub r#gen: u32,
    /// The window the node enforces.
    pub window: Window,
    /// The largest frame the node accepts, header included.
    pub max_frame: u64,
    /// The most frames a BATCH may hold, when the node limits it (its message rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<u64>,
    /// When the connection's client token expires (the node requires tokens): the session is
    /// closed with 4003 then, unless a fresh token was accepted first.
    #[serde(
        default,
        with = "opt_unix_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_exp: Option<SystemTime>,
}

/// The node's view of the peer's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// A session of the peer is connected.
    Online,
    /// The node knows of no session of the peer.
    Away,
}

/// A `peer` SERVER message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Online or away.
    pub state: PeerState,
    /// The peer's stream id, when it is online and speaks v1.
    #[serde(default, with = "opt_hex_sid", skip_serializing_if = "Option::is_none")]
    pub sid: Option<u64>,
    /// The peer session's generation, when it is online and speaks v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#gen: Option<u32>,
    /// Whether the peer is a raw (non-v1) client.
    #[serde(default)]
    pub raw: bool,
}

/// A message from the node (kind `0x05`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// The first frame on every connection.
    Welcome(Welcome),
    /// The node's view of the peer changed.
    Peer(PeerInfo),
    /// The node is stopping: reconnect elsewhere.
    Goaway {
        /// Why, for example `drain`.
        reason: String,
    },
    /// The answer to a `token` request.
    Token(TokenAnswer),
    /// A type this version does not know; ignored.
    Unknown(String),
}

/// The node's answer to a `token` request (PROTOCOL.md §2.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenAnswer {
    /// Whether the node took the token.
    pub ok: bool,
    /// The session's new expiry when taken (`None`: it no longer expires).
    #[serde(default, with = "opt_unix_time")]
    pub exp: Option<SystemTime>,
    /// Why the token was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A request of a client to its node (kind `0x06`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeMsg {
    /// A fresh client token for the session.
    Token {
        /// The token (a JWT).
        token: String,
    },
    /// A type this version does not know.
    Unknown(String),
}

impl NodeMsg {
    fn to_json(&self) -> Vec<u8> {
        match self {
            NodeMsg::Token { token } => {
                control_json("token", Some(&serde_json::json!({ "token": token })))
            }
            NodeMsg::Unknown(t) => control_json::<()>(t, None),
        }
    }

    fn from_json(bytes: &[u8]) -> Result<NodeMsg, FrameError> {
        #[derive(Deserialize)]
        struct TokenBody {
            token: String,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(json_err)?;
        Ok(match head.t.as_str() {
            "token" => {
                let body: TokenBody = serde_json::from_slice(bytes).map_err(json_err)?;
                NodeMsg::Token { token: body.token }
            }
            _ => NodeMsg::Unknown(head.t),
        })
    }
}

/// The `v` and `t` every JSON control object carries.
#[derive(Deserialize)]
struct Head {
    t: String,
}

#[derive(Deserialize)]
struct GoawayBody {
    #[serde(default)]
    reason: String,
}

/// Serialises a JSON control object with `"v":1` and `"t"` in front of `body`'s fields.
fn control_json<T: Serialize>(t: &str, body: Option<&T>) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    obj.insert("v".into(), 1.into());
    obj.insert("t".into(), t.into());
    if let Some(body) = body {
        let value = serde_json::to_value(body).expect("control bodies serialise");
        if let serde_json::Value::Object(fields) = value {
            obj.extend(fields);
        }
    }
    serde_json::to_vec(&obj).expect("a JSON map serialises")
}

fn json_err(e: serde_json::Error) -> FrameError {
    FrameError::Json(e.to_string())
}

impl PeerMsg {
    fn to_json(&self) -> Vec<u8> {
        match self {
            PeerMsg::Sync(s) => control_json("sync", Some(s)),
            PeerMsg::Bye => control_json::<()>("bye", None),
            PeerMsg::Unknown(t) => control_json::<()>(t, None),
        }
    }

    fn from_json(bytes: &[u8]) -> Result<PeerMsg, FrameError> {
        let head: Head = serde_json::from_slice(bytes).map_err(json_err)?;
        Ok(match head.t.as_str() {
            "sync" => PeerMsg::Sync(serde_json::from_slice(bytes).map_err(json_err)?),
            "bye" => PeerMsg::Bye,
            _ => PeerMsg::Unknown(head.t),
        })
    }
}

impl ServerMsg {
    fn to_json(&self) -> Vec<u8> {
        match self {
            ServerMsg::Welcome(w) => control_json("welcome", Some(w)),
            ServerMsg::Peer(p) => control_json("peer", Some(p)),
            ServerMsg::Goaway { reason } => {
                control_json("goaway", Some(&serde_json::json!({ "reason": reason })))
            }
            ServerMsg::Token(answer) => control_json("token", Some(answer)),
            ServerMsg::Unknown(t) => control_json::<()>(t, None),
        }
    }

    fn from_json(bytes: &[u8]) -> Result<ServerMsg, FrameError> {
        let head: Head = serde_json::from_slice(bytes).map_err(json_err)?;
        Ok(match head.t.as_str() {
            "welcome" => ServerMsg::Welcome(serde_json::from_slice(bytes).map_err(json_err)?),
            "peer" => {
                let info: PeerInfo = serde_json::from_slice(bytes).map_err(json_err)?;
                ServerMsg::Peer(info)
            }
            "goaway" => {
                let body: GoawayBody = serde_json::from_slice(bytes).map_err(json_err)?;
                ServerMsg::Goaway {
                    reason: body.reason,
                }
            }
            "token" => ServerMsg::Token(serde_json::from_slice(bytes).map_err(json_err)?),
            _ => ServerMsg::Unknown(head.t),
        })
    }
}

/// How many bytes the LEB128 encoding of `v` takes (1 to 10).
pub fn varint_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.max(1).div_ceil(7)
}

/// Appends the LEB128 encoding of `v`.
pub fn put_varint(buf: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// Reads a LEB128 varint from the front of `bytes`: the value and how many bytes it took.
pub fn get_varint(bytes: &[u8]) -> Result<(u64, usize), FrameError> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if i == MAX_VARINT_LEN {
            return Err(FrameError::VarintTooLong);
        }
        let low = u64::from(b & 0x7f);
        if i == MAX_VARINT_LEN - 1 && low > 1 {
            return Err(FrameError::VarintOverflow);
        }
        value |= low << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(FrameError::VarintOverlong);
            }
            return Ok((value, i + 1));
        }
    }
    if bytes.len() >= MAX_VARINT_LEN {
        Err(FrameError::VarintTooLong)
    } else {
        Err(FrameError::VarintTruncated)
    }
}

/// The length of a DATA frame's header (kind byte and `seq` varint) for `seq`.
pub fn data_header_len(seq: u64) -> usize {
    1 + varint_len(seq)
}

/// Encodes a DATA frame from its parts, for a caller that keeps the payload elsewhere (the
/// outbox) and need not build a [`Frame`] around a clone of it.
pub fn encode_data(seq: u64, text: bool, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(data_header_len(seq) + payload.len());
    put_data(&mut buf, seq, text, payload);
    buf.freeze()
}

/// Appends a DATA frame to `buf`, for a writer that encodes a batch of frames into one buffer
/// rather than allocating each.
pub fn put_data(buf: &mut impl BufMut, seq: u64, text: bool, payload: &[u8]) {
    buf.put_u8(if text {
        KIND_DATA_TEXT
    } else {
        KIND_DATA_BINARY
    });
    put_varint(buf, seq);
    buf.put_slice(payload);
}

impl Frame {
    /// Encodes the frame as the bytes of one binary WebSocket message.
    pub fn encode(&self) -> Bytes {
        match self {
            Frame::Data { seq, text, payload } => encode_data(*seq, *text, payload),
            Frame::Ack { sid, hw } => {
                let mut buf = BytesMut::with_capacity(1 + 8 + varint_len(*hw));
                buf.put_u8(KIND_ACK);
                buf.put_u64(*sid);
                put_varint(&mut buf, *hw);
                buf.freeze()
            }
            Frame::Peer(msg) => prefixed(KIND_PEER, msg.to_json()),
            Frame::Server(msg) => prefixed(KIND_SERVER, msg.to_json()),
            Frame::Node(msg) => prefixed(KIND_NODE, msg.to_json()),
        }
    }

    /// Decodes one binary WebSocket message. The payload of a DATA frame shares `bytes`.
    pub fn decode(bytes: Bytes) -> Result<Frame, FrameError> {
        let (&kind, rest) = bytes.split_first().ok_or(FrameError::Empty)?;
        match kind {
            KIND_DATA_BINARY | KIND_DATA_TEXT => {
                let (seq, n) = get_varint(rest)?;
                // Advancing the owned bytes rather than slicing them saves a reference count
                // taken and dropped per message.
                let mut payload = bytes;
                payload.advance(1 + n);
                let text = kind == KIND_DATA_TEXT;
                if text && std::str::from_utf8(&payload).is_err() {
                    return Err(FrameError::InvalidUtf8);
                }
                Ok(Frame::Data { seq, text, payload })
            }
            KIND_ACK => {
                if rest.len() < 8 {
                    return Err(FrameError::AckTruncated);
                }
                let sid = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
                let (hw, n) = get_varint(&rest[8..])?;
                let trailing = rest.len() - 8 - n;
                if trailing > 0 {
                    return Err(FrameError::Trailing(trailing));
                }
                Ok(Frame::Ack { sid, hw })
            }
            KIND_PEER => Ok(Frame::Peer(PeerMsg::from_json(rest)?)),
            KIND_SERVER => Ok(Frame::Server(ServerMsg::from_json(rest)?)),
            KIND_NODE => Ok(Frame::Node(NodeMsg::from_json(rest)?)),
            other => Err(FrameError::UnknownKind(other)),
        }
    }
}

/// The frames of one binary WebSocket message, in order: the message's own frame, or each
/// frame of a BATCH (PROTOCOL.md §2.6). The payloads of DATA frames share `bytes`. Yields an
/// error for the first malformed frame and nothing after it.
pub fn decode_message(bytes: Bytes) -> Frames {
    Frames {
        batch: bytes.first() == Some(&KIND_BATCH),
        bytes: Some(bytes),
        started: false,
    }
}

/// The frames of one message; see [`decode_message`].
#[derive(Debug)]
pub struct Frames {
    /// What is left to decode; `None` once done.
    bytes: Option<Bytes>,
    batch: bool,
    started: bool,
}

/// Where the first frame of `rest` (a BATCH after its kind byte, or after the frames before)
/// starts and ends: past its length varint, and past its bytes.
fn batch_frame_bounds(rest: &[u8]) -> Result<(usize, usize), FrameError> {
    let (len, n) = get_varint(rest)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| n.checked_add(len))
        .filter(|&end| end <= rest.len())
        .ok_or(FrameError::BatchTruncated)?;
    Ok((n, end))
}

impl Frames {
    fn next_in_batch(bytes: &mut Bytes) -> Result<Frame, FrameError> {
        let (n, end) = batch_frame_bounds(bytes)?;
        let mut frame = bytes.split_to(end);
        frame.advance(n);
        match frame.first() {
            None => Err(FrameError::Empty),
            Some(&(KIND_DATA_BINARY | KIND_DATA_TEXT | KIND_ACK)) => Frame::decode(frame),
            Some(&kind) => Err(FrameError::BatchKind(kind)),
        }
    }
}

impl Iterator for Frames {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if !self.batch {
            return self.bytes.take().map(Frame::decode);
        }
        let bytes = self.bytes.as_mut()?;
        if !self.started {
            self.started = true;
            bytes.advance(1);
            if bytes.is_empty() {
                self.bytes = None;
                return Some(Err(FrameError::BatchEmpty));
            }
        }
        if bytes.is_empty() {
            self.bytes = None;
            return None;
        }
        let item = Frames::next_in_batch(bytes);
        if item.is_err() {
            self.bytes = None;
        }
        Some(item)
    }
}

/// How many frames a binary message holds: those of a BATCH, found by their lengths alone, or
/// one. A reader that bounds what it queues counts frames, not messages.
pub fn frames_in(message: &[u8]) -> usize {
    if message.first() != Some(&KIND_BATCH) {
        return 1;
    }
    let mut rest = &message[1..];
    let mut frames = 0;
    loop {
        match batch_frame_bounds(rest) {
            Ok((_, end)) => {
                frames += 1;
                rest = &rest[end..];
            }
            // A length that reads but runs past the end still names a frame.
            Err(FrameError::BatchTruncated) => {
                frames += 1;
                break;
            }
            Err(_) => break,
        }
    }
    frames.max(1)
}

/// Whether a frame of kind `kind` may go into a BATCH.
pub fn batchable(kind: u8) -> bool {
    matches!(kind, KIND_DATA_BINARY | KIND_DATA_TEXT | KIND_ACK)
}

/// Inserts `bytes` at `at` in `buf`, moving what follows: a writer that finds a second frame
/// to batch puts the BATCH's kind byte and the first frame's length before the first.
pub(crate) fn insert(buf: &mut BytesMut, at: usize, bytes: &[u8]) {
    let old = buf.len();
    buf.resize(old + bytes.len(), 0);
    buf.copy_within(at..old, at + bytes.len());
    buf[at..at + bytes.len()].copy_from_slice(bytes);
}

fn prefixed(kind: u8, json: Vec<u8>) -> Bytes {
    let mut buf = BytesMut::with_capacity(1 + json.len());
    buf.put_u8(kind);
    buf.put_slice(&json);
    buf.freeze()
}

/// The stream id of the client with secret `key`: the first 8 bytes (big-endian) of the SHA-256
/// of the key's 16 bytes (big-endian), or 1 if those are all zero (PROTOCOL.md §1). The node
/// derives it the same way from the `key` a connection presents, so a peer that learns the sid
/// still cannot connect as its owner.
pub fn sid_of_key(key: u128) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.to_be_bytes());
    let sid = u64::from_be_bytes(digest[..8].try_into().expect("a digest has 32 bytes"));
    sid.max(1)
}

/// A sid as the protocol writes it: 16 lowercase hex digits.
pub fn sid_to_hex(sid: u64) -> String {
    format!("{sid:016x}")
}

/// Parses a sid written as exactly 16 hex digits.
pub fn sid_from_hex(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

mod hex_sid {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sid: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::sid_to_hex(*sid))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::sid_from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("sid is not 16 hex digits"))
    }
}

mod opt_hex_sid {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(sid: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match sid {
            Some(sid) => s.serialize_str(&super::sid_to_hex(*sid)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::sid_from_hex(&text)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("sid is not 16 hex digits")),
        }
    }
}

/// A time as seconds since the Unix epoch (a JSON number, possibly fractional), or `null`.
mod opt_unix_time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => {
                let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                s.serialize_f64(secs.as_secs_f64())
            }
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.and_then(|secs| {
            // A time the clock cannot hold is as good as never.
            let after = Duration::try_from_secs_f64(secs).ok()?;
            UNIX_EPOCH.checked_add(after)
        }))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sid_is_the_head_of_the_keys_sha256() {
        // SHA-256 of 16 zero bytes begins 374708fff7719dd5; the node derives the same.
        assert_eq!(super::sid_of_key(0), 0x3747_08ff_f771_9dd5);
        assert_ne!(super::sid_of_key(1), super::sid_of_key(2));
    }

    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn round_trip(frame: Frame) {
        let bytes = frame.encode();
        assert_eq!(Frame::decode(bytes).unwrap(), frame);
    }

    fn sample_sync() -> Sync {
        Sync {
            sid: 0x5f0c_3a9e_71d2_b846,
            r#gen: 3,
            tx: TxPos { base: 41, next: 57 },
            rx: RxPos {
                sid: Some(0x0a1b_2c3d_4e5f_6071),
                hw: 980,
            },
            reply: false,
        }
    }

    #[test]
    fn varint_lengths_match_encoding() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "value {v}");
            assert_eq!(get_varint(&buf).unwrap(), (v, buf.len()));
        }
        assert_eq!(varint_len(u64::MAX), 10);
        assert_eq!(data_header_len(1), 2);
        assert_eq!(data_header_len(2_097_151), 4);
        assert_eq!(data_header_len(u64::MAX), 11);
    }

    #[test]
    fn data_round_trips() {
        for seq in [0, 1, 300, u64::MAX] {
            round_trip(Frame::Data {
                seq,
                text: false,
                payload: Bytes::from_static(&[0, 1, 2, 255]),
            });
            round_trip(Frame::Data {
                seq,
                text: true,
                payload: Bytes::from_static("héllo".as_bytes()),
            });
        }
        round_trip(Frame::Data {
            seq: 5,
            text: true,
            payload: Bytes::new(),
        });
    }

    #[test]
    fn ack_round_trips() {
        round_trip(Frame::Ack { sid: 1, hw: 0 });
        round_trip(Frame::Ack {
            sid: u64::MAX,
            hw: u64::MAX,
        });
    }

    #[test]
    fn control_round_trips() {
        round_trip(Frame::Peer(PeerMsg::Sync(sample_sync())));
        let mut fresh = sample_sync();
        fresh.rx = RxPos { sid: None, hw: 0 };
        fresh.reply = true;
        round_trip(Frame::Peer(PeerMsg::Sync(fresh)));
        round_trip(Frame::Peer(PeerMsg::Bye));
        let welcome = Welcome {
            node: "8c61e0d2a4b9f713".into(),
            session: 17,
            r#gen: 3,
            window: Window {
                msgs: 1024,
                bytes: 1_048_576,
            },
            max_frame: 10_240,
            max_batch: None,
            token_exp: None,
        };
        round_trip(Frame::Server(ServerMsg::Welcome(welcome.clone())));
        round_trip(Frame::Server(ServerMsg::Welcome(Welcome {
            token_exp: Some(UNIX_EPOCH + Duration::from_secs(1_764_547_200)),
            ..welcome
        })));
        round_trip(Frame::Server(ServerMsg::Token(TokenAnswer {
            ok: true,
            exp: Some(UNIX_EPOCH + Duration::from_millis(1_764_547_200_500)),
            reason: None,
        })));
        round_trip(Frame::Server(ServerMsg::Token(TokenAnswer {
            ok: false,
            exp: None,
            reason: Some("token expired".into()),
        })));
        round_trip(Frame::Node(NodeMsg::Token {
            token: "a.b.c".into(),
        }));
        round_trip(Frame::Server(ServerMsg::Peer(PeerInfo {
            state: PeerState::Online,
            sid: Some(0x0a1b_2c3d_4e5f_6071),
            r#gen: Some(5),
            raw: false,
        })));
        round_trip(Frame::Server(ServerMsg::Peer(PeerInfo {
            state: PeerState::Online,
            sid: None,
            r#gen: None,
            raw: true,
        })));
        round_trip(Frame::Server(ServerMsg::Peer(PeerInfo {
            state: PeerState::Away,
            sid: None,
            r#gen: None,
            raw: false,
        })));
        round_trip(Frame::Server(ServerMsg::Goaway {
            reason: "drain".into(),
        }));
    }

    #[test]
    fn frames_in_counts_a_batch_by_its_lengths() {
        assert_eq!(frames_in(&[KIND_DATA_BINARY, 1, 9]), 1);
        assert_eq!(frames_in(&[KIND_BATCH, 3, 1, 1, 9, 3, 1, 2, 9, 1, 3]), 3);
        assert_eq!(
            frames_in(&[KIND_BATCH, 9, 1]),
            1,
            "a malformed BATCH counts once"
        );
        assert_eq!(frames_in(&[KIND_BATCH]), 1);
        // A length near 2^64 (a raw peer's message may start with 0x07): no overflow, no spin.
        let huge = [
            KIND_BATCH, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(frames_in(&huge), 1);
    }

    #[test]
    fn decodes_the_spec_examples() {
        let sync = br#"{"v":1,"t":"sync","sid":"5f0c3a9e71d2b846","gen":3,
 "tx":{"base":41,"next":57},"rx":{"sid":"0a1b2c3d4e5f6071","hw":980},"reply":false}"#;
        let frame = Frame::decode(prefixed(KIND_PEER, sync.to_vec())).unwrap();
        assert_eq!(frame, Frame::Peer(PeerMsg::Sync(sample_sync())));
        let away = br#"{"v":1,"t":"peer","state":"away"}"#;
        let frame = Frame::decode(prefixed(KIND_SERVER, away.to_vec())).unwrap();
        assert_eq!(
            frame,
            Frame::Server(ServerMsg::Peer(PeerInfo {
                state: PeerState::Away,
                sid: None,
                r#gen: None,
                raw: false
            }))
        );
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let msg = br#"{"v":1,"t":"typing","who":"me"}"#;
        let frame = Frame::decode(prefixed(KIND_PEER, msg.to_vec())).unwrap();
        assert_eq!(frame, Frame::Peer(PeerMsg::Unknown("typing".into())));
        let msg = br#"{"v":1,"t":"stats","n":3}"#;
        let frame = Frame::decode(prefixed(KIND_SERVER, msg.to_vec())).unwrap();
        assert_eq!(frame, Frame::Server(ServerMsg::Unknown("stats".into())));
        let msg = br#"{"v":1,"t":"bye","extra":[1,2]}"#;
        let frame = Frame::decode(prefixed(KIND_PEER, msg.to_vec())).unwrap();
        assert_eq!(frame, Frame::Peer(PeerMsg::Bye));
    }

    #[test]
    fn malformed_frames_are_rejected() {
        let cases: &[(&[u8], FrameError)] = &[
            (&[], FrameError::Empty),
            (&[0x00], FrameError::UnknownKind(0)),
            (&[0x07, 1], FrameError::UnknownKind(7)),
            (&[0x01], FrameError::VarintTruncated),
            (&[0x02, 0x80], FrameError::VarintTruncated),
            (
                &[
                    0x01, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                FrameError::VarintTooLong,
            ),
            (
                &[
                    0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ],
                FrameError::VarintOverflow,
            ),
            (&[0x02, 0x01, 0xff, 0xfe], FrameError::InvalidUtf8),
            (&[0x03, 0, 0, 0, 0, 0, 0, 1], FrameError::AckTruncated),
            (&[0x03, 0, 0, 0, 0, 0, 0, 0, 1], FrameError::VarintTruncated),
            (
                &[0x03, 0, 0, 0, 0, 0, 0, 0, 1, 5, 0],
                FrameError::Trailing(1),
            ),
        ];
        for (bytes, want) in cases {
            let got = Frame::decode(Bytes::copy_from_slice(bytes));
            assert_eq!(got.as_ref(), Err(want), "bytes {bytes:02x?}");
        }
    }

    #[test]
    fn malformed_json_is_rejected() {
        let cases: &[&[u8]] = &[
            b"",
            b"not json",
            br#"{"v":1}"#,
            br#"[1,2]"#,
            br#"{"v":1,"t":"sync","sid":"xyz","gen":1,"tx":{"base":1,"next":1},"rx":{"sid":null,"hw":0}}"#,
            br#"{"v":1,"t":"sync","sid":"5f0c3a9e71d2b84","gen":1,"tx":{"base":1,"next":1},"rx":{"sid":null,"hw":0}}"#,
            br#"{"v":1,"t":"sync","sid":"5f0c3a9e71d2b846","gen":1,"rx":{"sid":null,"hw":0}}"#,
            &[0xff, 0xfe],
        ];
        for json in cases {
            let got = Frame::decode(prefixed(KIND_PEER, json.to_vec()));
            assert!(matches!(got, Err(FrameError::Json(_))), "{json:?}: {got:?}");
        }
        let server_cases: &[&[u8]] = &[
            br#"{"v":1,"t":"welcome","node":"n"}"#,
            br#"{"v":1,"t":"peer","state":"gone"}"#,
        ];
        for json in server_cases {
            let got = Frame::decode(prefixed(KIND_SERVER, json.to_vec()));
            assert!(matches!(got, Err(FrameError::Json(_))), "{json:?}: {got:?}");
        }
    }

    #[test]
    fn the_largest_varint_is_accepted() {
        let bytes = [
            0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let frame = Frame::decode(Bytes::copy_from_slice(&bytes)).unwrap();
        assert_eq!(
            frame,
            Frame::Data {
                seq: u64::MAX,
                text: false,
                payload: Bytes::new()
            }
        );
    }

    #[test]
    fn sid_hex_is_strict() {
        assert_eq!(sid_to_hex(0x5f0c_3a9e_71d2_b846), "5f0c3a9e71d2b846");
        assert_eq!(sid_to_hex(1), "0000000000000001");
        assert_eq!(
            sid_from_hex("5f0c3a9e71d2b846"),
            Some(0x5f0c_3a9e_71d2_b846)
        );
        assert_eq!(sid_from_hex("+f0c3a9e71d2b846"), None);
        assert_eq!(sid_from_hex("5f0c3a9e71d2b8"), None);
    }
}
