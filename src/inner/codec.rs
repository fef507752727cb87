//! Bytes to `InnerFrame` and back: the only code that knows the inner wire format.
//!
//! Each frame is a 4-byte big-endian length, then a type byte and the fields of that type:
//!
//! | type | frame | fields after the type byte |
//! |---|---|---|
//! | 1 | Hello | version u16, node id u64, nonce [32], window u32, advertise (the rest, UTF-8) |
//! | 2 | Auth | mac [32] |
//! | 3 | Data | channel id [32], role u8, kind u8, sender u64, receiver u64, seq u64, payload (the rest) |
//! | 4 | Credit | channel id [32], role u8, sender u64, receiver u64, limit u64 |
//! | 5 | Bound | channel id [32], role u8, session u64, client sid u64 (0: raw), client gen u32 |
//! | 6 | Unbound | channel id [32], role u8, session u64, sent u64 |
//! | 7 | Evict | channel id [32], role u8, session u64 |
//! | 8 | Ping | |
//! | 9 | Pong | |
//! | 10 | BoundAck | channel id [32], role u8, session u64, client sid u64 (0: none or raw), client gen u32 (with sid 0: 1 if the other role is held by a raw client, 0 if not held) |
//! | 11 | Sent | channel id [32], role u8, sender u64, receiver u64, sent u64 |
//!
//! Roles are 0 (app) and 1 (web); kinds 0 (text), 1 (binary) and 2 (a wspair.v1 frame); integers are big-endian. The
//! length is checked before anything is buffered past it: a frame longer than the limit (the
//! largest message plus [`HEADER_ALLOWANCE`]) is an error, so a peer cannot make a node
//! allocate more than that. Any error closes the link that sent it, never the node. Payloads
//! are slices of the read buffer, not copies.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec, LengthDelimitedCodecError};

use super::frame::{InnerFrame, MAC_BYTES, NONCE_BYTES};
use crate::node::NodeId;
use crate::pair::{CHANNEL_ID_LEN, ChannelId, MessageKind, Role};
use crate::v1::ClientId;

/// Bytes a frame may carry beyond its message payload: type, channel id, role, kind, two
/// session ids and a position (59 bytes), with room to spare.
pub const HEADER_ALLOWANCE: usize = 64;

/// Largest frame before authentication: a `Hello` with an advertised address of a few
/// hundred bytes fits, a message does not.
pub const HANDSHAKE_FRAME_LIMIT: usize = 1024;

const LENGTH_BYTES: usize = 4;

/// Why bytes from a link are not a frame. Every variant closes that link.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Reading or writing the socket failed.
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix exceeds the limit.
    #[error("inner frame{} exceeds the limit of {limit} bytes", length.map(|n| format!(" of {n} bytes")).unwrap_or_default())]
    TooLong {
        /// The length, when known (encoding); a decoder stops at the prefix.
        length: Option<usize>,
        /// The limit.
        limit: usize,
    },
    /// The type byte is not a known frame type.
    #[error("unknown inner frame type {0}")]
    UnknownType(u8),
    /// The frame's fields do not fit its type.
    #[error("malformed inner {frame} frame: {problem}")]
    Malformed {
        /// The frame type.
        frame: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The codec for one link.
#[derive(Debug)]
pub struct InnerCodec {
    framing: LengthDelimitedCodec,
    limit: usize,
}

impl InnerCodec {
    /// A codec for links that carry messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> InnerCodec {
        let limit = max_message + HEADER_ALLOWANCE;
        InnerCodec {
            framing: LengthDelimitedCodec::builder()
                .length_field_length(LENGTH_BYTES)
                .max_frame_length(limit)
                .new_codec(),
            limit,
        }
    }

    /// A codec for a handshake: frames of at most [`HANDSHAKE_FRAME_LIMIT`] bytes, so a
    /// connection that has not authenticated cannot make the node buffer a message's worth.
    pub fn for_handshake() -> InnerCodec {
        let mut codec = InnerCodec::new(0);
        codec.set_limit(HANDSHAKE_FRAME_LIMIT);
        codec
    }

    /// Raises the limit, once the other side is authenticated, to messages of `max_message`.
    pub fn allow_messages(&mut self, max_message: usize) {
        self.set_limit(max_message + HEADER_ALLOWANCE);
    }

    fn set_limit(&mut self, limit: usize) {
        self.framing.set_max_frame_length(limit);
        self.limit = limit;
    }
}

impl Decoder for InnerCodec {
    type Item = InnerFrame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<InnerFrame>, CodecError> {
        // The framing codec refuses an oversized length as soon as it reads the prefix,
        // before buffering the body.
        let body = self.framing.decode(src).map_err(|err| {
            if err
                .get_ref()
                .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
            {
                CodecError::TooLong {
                    length: None,
                    limit: self.limit,
                }
            } else {
                CodecError::Io(err)
            }
        })?;
        match body {
            Some(body) => parse(body.freeze()).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<InnerFrame> for InnerCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: InnerFrame, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u32(0);
        write_body(&frame, dst);
        let length = dst.len() - start - LENGTH_BYTES;
        if length > self.limit {
            dst.truncate(start);
            return Err(CodecError::TooLong {
                length: Some(length),
                limit: self.limit,
            });
        }
        dst[start..start + LENGTH_BYTES].copy_from_slice(&(length as u32).to_be_bytes());
        Ok(())
    }
}

fn role_byte(role: Role) -> u8 {
    match role {
        Role::App => 0,
        Role::Web => 1,
    }
}

fn put_target(dst: &mut BytesMut, type_byte: u8, channel_id: &ChannelId, role: Role) {
    dst.put_u8(type_byte);
    dst.put_slice(channel_id.as_bytes());
    dst.put_u8(role_byte(role));
}

fn write_body(frame: &InnerFrame, dst: &mut BytesMut) {
    match frame {
        InnerFrame::Hello {
            version,
            node,
            nonce,
            window,
            advertise,
        } => {
            dst.put_u8(1);
            dst.put_u16(*version);
            dst.put_u64(node.get());
            dst.put_slice(nonce);
            dst.put_u32(*window);
            dst.put_slice(advertise.as_bytes());
        }
        InnerFrame::Auth { mac } => {
            dst.put_u8(2);
            dst.put_slice(mac);
        }
        InnerFrame::Data {
            channel_id,
            role,
            sender,
            receiver,
            seq,
            kind,
            payload,
        } => {
            put_target(dst, 3, channel_id, *role);
            dst.put_u8(match kind {
                MessageKind::Text => 0,
                MessageKind::Binary => 1,
                MessageKind::V1 => 2,
            });
            dst.put_u64(*sender);
            dst.put_u64(*receiver);
            dst.put_u64(*seq);
            dst.put_slice(payload);
        }
        InnerFrame::Credit {
            channel_id,
            role,
            sender,
            receiver,
            limit: count,
        }
        | InnerFrame::Sent {
            channel_id,
            role,
            sender,
            receiver,
            sent: count,
        } => {
            let type_byte = if matches!(frame, InnerFrame::Credit { .. }) {
                4
            } else {
                11
            };
            put_target(dst, type_byte, channel_id, *role);
            dst.put_u64(*sender);
            dst.put_u64(*receiver);
            dst.put_u64(*count);
        }
        InnerFrame::Unbound {
            channel_id,
            role,
            session,
            sent,
        } => {
            put_target(dst, 6, channel_id, *role);
            dst.put_u64(*session);
            dst.put_u64(*sent);
        }
        InnerFrame::Bound {
            channel_id,
            role,
            session,
            client,
        } => {
            put_target(dst, 5, channel_id, *role);
            dst.put_u64(*session);
            dst.put_u64(client.map_or(0, |client| client.sid));
            dst.put_u32(client.map_or(0, |client| client.generation));
        }
        InnerFrame::BoundAck {
            channel_id,
            role,
            session,
            client,
            held,
        } => {
            put_target(dst, 10, channel_id, *role);
            dst.put_u64(*session);
            dst.put_u64(client.map_or(0, |client| client.sid));
            dst.put_u32(client.map_or(u32::from(*held), |client| client.generation));
        }
        InnerFrame::Evict {
            channel_id,
            role,
            session,
        } => {
            put_target(dst, 7, channel_id, *role);
            dst.put_u64(*session);
        }
        InnerFrame::Ping => dst.put_u8(8),
        InnerFrame::Pong => dst.put_u8(9),
    }
}

/// Reads fields off a frame body, turning a short body into `Malformed`.
struct Fields {
    body: Bytes,
    frame: &'static str,
}

impl Fields {
    fn need(&self, n: usize) -> Result<(), CodecError> {
        if self.body.remaining() < n {
            return Err(self.malformed(format!(
                "needs {n} more bytes, has {}",
                self.body.remaining()
            )));
        }
        Ok(())
    }

    fn malformed(&self, problem: String) -> CodecError {
        CodecError::Malformed {
            frame: self.frame,
            problem,
        }
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        self.need(1)?;
        Ok(self.body.get_u8())
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        self.need(2)?;
        Ok(self.body.get_u16())
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        self.need(4)?;
        Ok(self.body.get_u32())
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        self.need(8)?;
        Ok(self.body.get_u64())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        self.need(N)?;
        let mut out = [0u8; N];
        self.body.copy_to_slice(&mut out);
        Ok(out)
    }

    fn channel_id(&mut self) -> Result<ChannelId, CodecError> {
        let bytes: [u8; CHANNEL_ID_LEN] = self.array()?;
        ChannelId::from_bytes(&bytes).map_err(|err| self.malformed(format!("channel id {err}")))
    }

    fn role(&mut self) -> Result<Role, CodecError> {
        match self.u8()? {
            0 => Ok(Role::App),
            1 => Ok(Role::Web),
            other => Err(self.malformed(format!("role {other}"))),
        }
    }

    fn end(self) -> Result<(), CodecError> {
        if self.body.has_remaining() {
            return Err(self.malformed(format!("{} trailing bytes", self.body.remaining())));
        }
        Ok(())
    }
}

fn parse(mut body: Bytes) -> Result<InnerFrame, CodecError> {
    if body.is_empty() {
        return Err(CodecError::Malformed {
            frame: "empty",
            problem: "no type byte".into(),
        });
    }
    let type_byte = body.get_u8();
    let frame = match type_byte {
        1 => "hello",
        2 => "auth",
        3 => "data",
        4 => "credit",
        5 => "bound",
        6 => "unbound",
        7 => "evict",
        8 => "ping",
        9 => "pong",
        10 => "bound-ack",
        11 => "sent",
        other => return Err(CodecError::UnknownType(other)),
    };
    let mut fields = Fields { body, frame };
    let parsed = match type_byte {
        1 => {
            let version = fields.u16()?;
            let node = NodeId::from_u64(fields.u64()?)
                .ok_or_else(|| fields.malformed("node id 0".into()))?;
            let nonce = fields.array::<NONCE_BYTES>()?;
            let window = fields.u32()?;
            let rest = std::mem::take(&mut fields.body);
            let advertise = String::from_utf8(rest.to_vec())
                .map_err(|_| fields.malformed("advertise is not UTF-8".into()))?;
            InnerFrame::Hello {
                version,
                node,
                nonce,
                window,
                advertise,
            }
        }
        2 => InnerFrame::Auth {
            mac: fields.array::<MAC_BYTES>()?,
        },
        3 => {
            let channel_id = fields.channel_id()?;
            let role = fields.role()?;
            let kind = match fields.u8()? {
                0 => MessageKind::Text,
                1 => MessageKind::Binary,
                2 => MessageKind::V1,
                other => return Err(fields.malformed(format!("kind {other}"))),
            };
            let sender = fields.u64()?;
            let receiver = fields.u64()?;
            let seq = fields.u64()?;
            let payload = std::mem::take(&mut fields.body);
            InnerFrame::Data {
                channel_id,
                role,
                sender,
                receiver,
                seq,
                kind,
                payload,
            }
        }
        4 => InnerFrame::Credit {
            channel_id: fields.channel_id()?,
            role: fields.role()?,
            sender: fields.u64()?,
            receiver: fields.u64()?,
            limit: fields.u64()?,
        },
        11 => InnerFrame::Sent {
            channel_id: fields.channel_id()?,
            role: fields.role()?,
            sender: fields.u64()?,
            receiver: fields.u64()?,
            sent: fields.u64()?,
        },
        6 => InnerFrame::Unbound {
            channel_id: fields.channel_id()?,
            role: fields.role()?,
            session: fields.u64()?,
            sent: fields.u64()?,
        },
        5 | 7 | 10 => {
            let channel_id = fields.channel_id()?;
            let role = fields.role()?;
            let session = fields.u64()?;
            match type_byte {
                5 | 10 => {
                    let sid = fields.u64()?;
                    let generation = fields.u32()?;
                    let client = match (sid, generation) {
                        (0, _) => None,
                        (_, 0) => return Err(fields.malformed("v1 generation 0".into())),
                        (sid, generation) => Some(ClientId { sid, generation }),
                    };
                    if type_byte == 5 {
                        InnerFrame::Bound {
                            channel_id,
                            role,
                            session,
                            client,
                        }
                    } else {
                        InnerFrame::BoundAck {
                            channel_id,
                            role,
                            session,
                            client,
                            held: (sid, generation) != (0, 0),
                        }
                    }
                }
                _ => InnerFrame::Evict {
                    channel_id,
                    role,
                    session,
                },
            }
        }
        8 => InnerFrame::Ping,
        _ => InnerFrame::Pong,
    };
    fields.end()?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ChannelId {
        "abcdefghijklmnopqrstuvwxyz012345".parse().unwrap()
    }

    fn round_trip(frame: InnerFrame, max_message: usize) -> InnerFrame {
        let mut codec = InnerCodec::new(max_message);
        let mut buffer = BytesMut::new();
        codec.encode(frame, &mut buffer).unwrap();
        let decoded = codec.decode(&mut buffer).unwrap().unwrap();
        assert!(buffer.is_empty());
        decoded
    }

    fn every_frame(payload: Bytes) -> Vec<InnerFrame> {
        vec![
            InnerFrame::Hello {
                version: 1,
                node: NodeId::from_u64(42).unwrap(),
                nonce: [7; NONCE_BYTES],
                window: 1024,
                advertise: "127.0.0.1:1025".into(),
            },
            InnerFrame::BoundAck {
                channel_id: id(),
                role: Role::Web,
                session: 6,
                client: None,
                held: false,
            },
            InnerFrame::BoundAck {
                channel_id: id(),
                role: Role::App,
                session: 8,
                client: None,
                held: true,
            },
            InnerFrame::BoundAck {
                channel_id: id(),
                role: Role::App,
                session: 9,
                client: Some(ClientId {
                    sid: 0xbeef,
                    generation: 2,
                }),
                held: true,
            },
            InnerFrame::Auth {
                mac: [9; MAC_BYTES],
            },
            InnerFrame::Data {
                channel_id: id(),
                role: Role::Web,
                sender: 11,
                receiver: 12,
                seq: 13,
                kind: MessageKind::Text,
                payload,
            },
            InnerFrame::Credit {
                channel_id: id(),
                role: Role::App,
                sender: 14,
                receiver: 15,
                limit: u64::MAX,
            },
            InnerFrame::Sent {
                channel_id: id(),
                role: Role::App,
                sender: 16,
                receiver: 17,
                sent: 18,
            },
            InnerFrame::Bound {
                channel_id: id(),
                role: Role::App,
                session: 3,
                client: Some(ClientId {
                    sid: 0xfeed,
                    generation: 7,
                }),
            },
            InnerFrame::Unbound {
                channel_id: id(),
                role: Role::Web,
                session: 4,
                sent: 19,
            },
            InnerFrame::Evict {
                channel_id: id(),
                role: Role::App,
                session: 5,
            },
            InnerFrame::Ping,
            InnerFrame::Pong,
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in every_frame(Bytes::from_static(b"hi")) {
            assert_eq!(round_trip(frame.clone(), 100), frame);
        }
    }

    #[test]
    fn payloads_at_the_edge_lengths_round_trip() {
        for length in [0, 1, 99, 100] {
            let frame = InnerFrame::Data {
                channel_id: id(),
                role: Role::App,
                sender: 1,
                receiver: 2,
                seq: 3,
                kind: MessageKind::Binary,
                payload: Bytes::from(vec![1u8; length]),
            };
            assert_eq!(round_trip(frame.clone(), 100), frame);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_buffering() {
        let mut codec = InnerCodec::new(100);
        let mut buffer = BytesMut::new();
        buffer.put_u32(10_000_000);
        buffer.put_u8(3);
        assert!(matches!(
            codec.decode(&mut buffer),
            Err(CodecError::TooLong {
                length: None,
                limit: 164
            })
        ));
    }

    /// Regression: the decoder once checked the length prefix itself before the framing
    /// codec, and read payload bytes as a length whenever a frame arrived in two reads,
    /// closing healthy links under load.
    #[test]
    fn frames_split_at_any_byte_decode_the_same() {
        let mut encoded = BytesMut::new();
        let mut codec = InnerCodec::new(100);
        let frames = every_frame(Bytes::from_static(b"split me"));
        for frame in frames.clone() {
            codec.encode(frame, &mut encoded).unwrap();
        }
        let mut decoder = InnerCodec::new(100);
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in encoded.iter() {
            buffer.put_u8(*byte);
            while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn encoding_a_payload_over_the_limit_fails() {
        let mut codec = InnerCodec::new(100);
        let mut buffer = BytesMut::new();
        let frame = InnerFrame::Data {
            channel_id: id(),
            role: Role::App,
            sender: 1,
            receiver: 2,
            seq: 3,
            kind: MessageKind::Binary,
            payload: Bytes::from(vec![1u8; 200]),
        };
        assert!(codec.encode(frame, &mut buffer).is_err());
        assert!(buffer.is_empty());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let mut codec = InnerCodec::new(100);
        for body in [&[][..], &[42], &[1, 0], &[3, b'a'], &[8, 0]] {
            let mut buffer = BytesMut::new();
            buffer.put_u32(body.len() as u32);
            buffer.put_slice(body);
            assert!(codec.decode(&mut buffer).is_err(), "{body:?}");
        }
    }

    /// Arbitrary bytes (a fixed-seed xorshift stream, mutated valid frames and raw noise) give
    /// a frame or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut valid = BytesMut::new();
        let mut encoder = InnerCodec::new(100);
        for frame in every_frame(Bytes::from_static(b"payload")) {
            encoder.encode(frame, &mut valid).unwrap();
        }
        for _ in 0..20_000 {
            let mut bytes = if next() % 2 == 0 {
                let mut mutated = valid.clone();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() as usize) % mutated.len();
                    mutated[at] = next() as u8;
                }
                mutated
            } else {
                let length = (next() % 200) as usize;
                (0..length).map(|_| next() as u8).collect()
            };
            let mut codec = InnerCodec::new(100);
            while let Ok(Some(_)) = codec.decode(&mut bytes) {}
        }
    }
}
