//! The v1 frames a node reads and writes (PROTOCOL.md §2): each is one binary WebSocket
//! message whose first byte is its kind, or one of the DATA and ACK frames a BATCH carries.
//!
//! A node parses only what it acts on: the kind and position of DATA (to enforce the window),
//! the stream and high-water mark of ACK (what the window frees), and the positions of a
//! client's own `sync`. Payloads are never copied between two v1 clients; for a raw peer the
//! DATA header is sliced off (each DATA of a BATCH becoming a message of its own), and a raw
//! peer's messages get a two-byte header.

use bytes::{BufMut, Bytes, BytesMut};

use super::ClientId;
use crate::pair::MessageKind;

/// DATA with a binary payload.
pub const DATA_BINARY: u8 = 0x01;
/// DATA with a text payload.
pub const DATA_TEXT: u8 = 0x02;
/// ACK: the stream acknowledged and its high-water mark.
pub const ACK: u8 = 0x03;
/// PEER: a JSON object for the peer client (`sync`, `bye`).
pub const PEER: u8 = 0x04;
/// SERVER: a JSON object from the node to its client (`welcome`, `peer`, `goaway`, `token`).
pub const SERVER: u8 = 0x05;
/// NODE: a JSON object from a client to its node (`token`); never relayed.
pub const NODE: u8 = 0x06;
/// BATCH: DATA and ACK frames, each prefixed by its length, in one WebSocket message.
pub const BATCH: u8 = 0x07;

/// Longest LEB128 encoding of a `u64`.
const MAX_VARINT: usize = 10;

/// What a client sent, as far as a node cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// A message for the peer: its position (0 for unnumbered), whether it is text, and where
    /// its payload starts.
    Data {
        /// Position in the sender's stream; 0 for an unnumbered message.
        seq: u64,
        /// Kind `0x02`.
        text: bool,
        /// Bytes of the header before the payload.
        header_len: usize,
    },
    /// The client acknowledges its peer's stream `sid` up to `hw`.
    Ack {
        /// The stream acknowledged.
        sid: u64,
        /// Its high-water mark.
        hw: u64,
    },
    /// A control object for the peer; `Some` positions for a `sync`.
    Peer(Option<SyncPositions>),
    /// A request to the node itself.
    Node(NodeRequest),
}

/// What a client asks of its node in a NODE frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRequest {
    /// `token`: a fresh client token for this session (PROTOCOL.md §2.5).
    Token(String),
    /// A type this node does not know: ignored, so later clients can ask more of later nodes.
    Unknown,
}

/// The sender's positions a client states in its `sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPositions {
    /// The lowest position still in its outbox.
    pub base: u64,
    /// The position its next new message gets.
    pub next: u64,
}

/// Why a client's frame is not v1 (close 4007).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An empty message.
    #[error("empty v1 frame")]
    Empty,
    /// A kind a client may not send.
    #[error("v1 frame of unknown kind {0:#04x}")]
    Kind(u8),
    /// A position or mark that is not a valid varint.
    #[error("malformed varint in a v1 frame")]
    Varint,
    /// An ACK shorter than its fields.
    #[error("v1 ACK too short")]
    ShortAck,
    /// Text DATA whose payload is not UTF-8.
    #[error("v1 text DATA is not valid UTF-8")]
    Utf8,
    /// A PEER frame that is not a JSON object with a type, or a `sync` without positions.
    #[error("malformed v1 PEER frame: {0}")]
    Peer(&'static str),
    /// A NODE frame that is not a JSON object with a type, or a `token` without a string.
    #[error("malformed v1 NODE frame: {0}")]
    Node(&'static str),
    /// A BATCH that holds no frame, a frame longer than what is left of it, or a frame of a
    /// kind other than DATA and ACK.
    #[error("malformed v1 BATCH: {0}")]
    Batch(&'static str),
}

impl ClientFrame {
    /// Parses a binary message a v1 client sent.
    pub fn parse(frame: &[u8]) -> Result<ClientFrame, FrameError> {
        let (&kind, rest) = frame.split_first().ok_or(FrameError::Empty)?;
        match kind {
            DATA_BINARY | DATA_TEXT => {
                let (seq, used) = read_varint(rest)?;
                let text = kind == DATA_TEXT;
                if text && std::str::from_utf8(&rest[used..]).is_err() {
                    return Err(FrameError::Utf8);
                }
                Ok(ClientFrame::Data {
                    seq,
                    text,
                    header_len: 1 + used,
                })
            }
            ACK => {
                let (sid, rest) = rest.split_first_chunk::<8>().ok_or(FrameError::ShortAck)?;
                let (hw, used) = read_varint(rest)?;
                if used != rest.len() {
                    return Err(FrameError::ShortAck);
                }
                Ok(ClientFrame::Ack {
                    sid: u64::from_be_bytes(*sid),
                    hw,
                })
            }
            PEER => parse_peer(rest).map(ClientFrame::Peer),
            NODE => parse_node(rest).map(ClientFrame::Node),
            other => Err(FrameError::Kind(other)),
        }
    }
}

/// The frames of a BATCH body (the message after its kind byte), as bytes, found by their
/// lengths alone: for a node that looks at frames it checked when it read them. Stops at the
/// first length that runs past the end.
pub fn inner_frames(body: &[u8]) -> InnerFrames<'_> {
    InnerFrames { rest: body }
}

/// See [`inner_frames`].
#[derive(Debug, Clone)]
pub struct InnerFrames<'a> {
    rest: &'a [u8],
}

impl<'a> InnerFrames<'a> {
    fn next_frame(&mut self) -> Result<&'a [u8], FrameError> {
        let (len, used) = read_varint(self.rest)?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| used.checked_add(len))
            .filter(|&end| end <= self.rest.len())
            .ok_or(FrameError::Batch("a frame runs past the end"))?;
        let frame = &self.rest[used..end];
        self.rest = &self.rest[end..];
        Ok(frame)
    }
}

impl<'a> Iterator for InnerFrames<'a> {
    type Item = Result<&'a [u8], FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = self.next_frame();
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

/// The frames of a BATCH, parsed and each with its bytes, one at a time: a node checks each
/// DATA against the window as it goes. The iteration stops after the first error.
#[derive(Debug, Clone)]
pub struct BatchFrames<'a> {
    frames: InnerFrames<'a>,
}

impl<'a> BatchFrames<'a> {
    /// The frames of `body`, a BATCH after its kind byte; a BATCH holds at least one.
    pub fn new(body: &'a [u8]) -> Result<BatchFrames<'a>, FrameError> {
        if body.is_empty() {
            return Err(FrameError::Batch("no frame"));
        }
        Ok(BatchFrames {
            frames: inner_frames(body),
        })
    }
}

impl<'a> Iterator for BatchFrames<'a> {
    type Item = Result<(ClientFrame, &'a [u8]), FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.frames.next()?.and_then(|frame| match frame.first() {
            Some(&(DATA_BINARY | DATA_TEXT | ACK)) => Ok((ClientFrame::parse(frame)?, frame)),
            Some(_) => Err(FrameError::Batch("only DATA and ACK frames may be batched")),
            None => Err(FrameError::Empty),
        });
        if item.is_err() {
            self.frames.rest = &[];
        }
        Some(item)
    }
}

fn parse_peer(json: &[u8]) -> Result<Option<SyncPositions>, FrameError> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|_| FrameError::Peer("not JSON"))?;
    let kind = value
        .get("t")
        .and_then(serde_json::Value::as_str)
        .ok_or(FrameError::Peer("no string `t`"))?;
    if kind != "sync" {
        return Ok(None);
    }
    let position = |name| value.get("tx").and_then(|tx| tx.get(name))?.as_u64();
    match (position("base"), position("next")) {
        (Some(base), Some(next)) if base >= 1 && base <= next => {
            Ok(Some(SyncPositions { base, next }))
        }
        _ => Err(FrameError::Peer(
            "`sync` needs tx.base and tx.next, 1 <= base <= next",
        )),
    }
}

fn parse_node(json: &[u8]) -> Result<NodeRequest, FrameError> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|_| FrameError::Node("not JSON"))?;
    let kind = value
        .get("t")
        .and_then(serde_json::Value::as_str)
        .ok_or(FrameError::Node("no string `t`"))?;
    if kind != "token" {
        return Ok(NodeRequest::Unknown);
    }
    match value.get("token").and_then(serde_json::Value::as_str) {
        Some(token) => Ok(NodeRequest::Token(token.to_owned())),
        None => Err(FrameError::Node("`token` needs a string `token`")),
    }
}

/// Reads an unsigned LEB128 number; returns it and the bytes it took.
pub fn read_varint(bytes: &[u8]) -> Result<(u64, usize), FrameError> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().take(MAX_VARINT).enumerate() {
        let bits = u64::from(byte & 0x7f);
        // The tenth byte holds the 64th bit only.
        if i == MAX_VARINT - 1 && byte > 1 {
            return Err(FrameError::Varint);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            // Every value has one encoding: a last byte of zero would make it longer.
            if byte == 0 && i > 0 {
                return Err(FrameError::Varint);
            }
            return Ok((value, i + 1));
        }
    }
    Err(FrameError::Varint)
}

/// Appends `value` as unsigned LEB128.
pub fn put_varint(dst: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        dst.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

/// What a raw client sent, as the unnumbered DATA its v1 peer receives (PROTOCOL.md §6).
pub fn wrap_unnumbered(kind: MessageKind, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 2);
    frame.put_u8(match kind {
        MessageKind::Text => DATA_TEXT,
        _ => DATA_BINARY,
    });
    frame.put_u8(0);
    frame.put_slice(payload);
    frame.freeze()
}

/// What a v1 client's frame becomes for a raw peer: the payload of each DATA (one, or each of
/// a BATCH), with its kind, handed to `write` in order; other frames are for v1 peers only.
/// The frame was checked when it was read.
pub fn unwrap_data<E>(
    frame: &Bytes,
    mut write: impl FnMut(MessageKind, Bytes) -> Result<(), E>,
) -> Result<(), E> {
    // The DATA at `at..at + len` of `frame`, if that is one.
    let mut unwrap_one = |at: usize, len: usize| {
        let Some((text, header_len)) = ClientFrame::parse_header(&frame[at..at + len]) else {
            return Ok(());
        };
        let kind = if text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        write(kind, frame.slice(at + header_len..at + len))
    };
    if frame.first() != Some(&BATCH) {
        return unwrap_one(0, frame.len());
    }
    let start = frame.as_ptr() as usize;
    for inner in inner_frames(&frame[1..]).flatten() {
        unwrap_one(inner.as_ptr() as usize - start, inner.len())?;
    }
    Ok(())
}

impl ClientFrame {
    /// The text flag and header length of a DATA frame; `None` for other kinds. Skips the UTF-8
    /// check of [`ClientFrame::parse`], which the frame passed when it was read.
    fn parse_header(frame: &[u8]) -> Option<(bool, usize)> {
        let (&kind, rest) = frame.split_first()?;
        if kind != DATA_BINARY && kind != DATA_TEXT {
            return None;
        }
        let (_, used) = read_varint(rest).ok()?;
        Some((kind == DATA_TEXT, 1 + used))
    }

    /// What `frame` (checked when it was read) carries to a client of stream `sid`: the
    /// highest mark its ACKs give that stream, and how many frames the client may answer (DATA,
    /// each of a BATCH, and PEER). Payloads are not looked at.
    pub fn written(frame: &[u8], sid: u64) -> Written {
        let mut written = Written::default();
        let mut one = |frame: &[u8]| match frame.first() {
            Some(&(DATA_BINARY | DATA_TEXT | PEER)) => written.answerable += 1,
            Some(&ACK) => {
                if let Ok(ClientFrame::Ack { sid: acked, hw }) = ClientFrame::parse(frame)
                    && acked == sid
                {
                    written.ack = written.ack.max(Some(hw));
                }
            }
            _ => {}
        };
        match frame.first() {
            Some(&BATCH) => inner_frames(&frame[1..]).flatten().for_each(&mut one),
            _ => one(frame),
        }
        written
    }
}

/// What a frame written to a v1 client carries; see [`ClientFrame::written`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// The highest mark the frame's ACKs give the client's stream.
    pub ack: Option<u64>,
    /// Frames a client answers (with ACKs, or a `sync`): DATA, one or those of a BATCH, and
    /// PEER.
    pub answerable: u64,
}

/// A SERVER frame holding `body`.
fn server(body: &serde_json::Value) -> Bytes {
    let mut frame = BytesMut::new();
    frame.put_u8(SERVER);
    frame.put_slice(body.to_string().as_bytes());
    frame.freeze()
}

/// The first frame on every v1 connection. `max_batch` is the most DATA a BATCH may hold, when
/// the node limits it (`outer.max-messages-per-second`); `token_exp` is when the client's token
/// expires, in seconds since the Unix epoch, when it has one (`auth.*`).
pub fn welcome(
    node: &str,
    session: u64,
    client: ClientId,
    window: (u32, u64),
    (max_frame, max_batch): (usize, Option<u32>),
    token_exp: Option<f64>,
) -> Bytes {
    let mut welcome = serde_json::json!({
        "v": 1, "t": "welcome", "node": node, "session": session,
        "sid": format!("{:016x}", client.sid), "gen": client.generation,
        "window": {"msgs": window.0, "bytes": window.1}, "max_frame": max_frame,
    });
    if let Some(max_batch) = max_batch {
        welcome["max_batch"] = max_batch.into();
    }
    if let Some(exp) = token_exp {
        welcome["token_exp"] = exp.into();
    }
    server(&welcome)
}

/// The answer to a `token` request: accepted, with the new expiry (seconds since the Unix
/// epoch; `None` when the session no longer expires), or refused with the reason (the old
/// token's expiry stands).
pub fn token_answer(answer: Result<Option<f64>, &str>) -> Bytes {
    server(&match answer {
        Ok(exp) => serde_json::json!({"v": 1, "t": "token", "ok": true, "exp": exp}),
        Err(reason) => serde_json::json!({"v": 1, "t": "token", "ok": false, "reason": reason}),
    })
}

/// What the node knows of the peer's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerView {
    /// No session of the peer is known.
    Away,
    /// A session of the peer, with its v1 identity (`None`: a raw client).
    Online(Option<ClientId>),
}

/// A `peer` frame for `view`.
pub fn peer(view: PeerView) -> Bytes {
    server(&match view {
        PeerView::Away => serde_json::json!({"v": 1, "t": "peer", "state": "away"}),
        PeerView::Online(None) => {
            serde_json::json!({"v": 1, "t": "peer", "state": "online", "raw": true})
        }
        PeerView::Online(Some(client)) => serde_json::json!({
            "v": 1, "t": "peer", "state": "online", "raw": false,
            "sid": format!("{:016x}", client.sid), "gen": client.generation,
        }),
    })
}

/// The `goaway` a draining node sends.
pub fn goaway() -> Bytes {
    server(&serde_json::json!({"v": 1, "t": "goaway", "reason": "drain"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(kind: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut frame = BytesMut::new();
        frame.put_u8(kind);
        put_varint(&mut frame, seq);
        frame.put_slice(payload);
        frame.to_vec()
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, value);
            assert_eq!(read_varint(&buf), Ok((value, buf.len())), "{value}");
        }
    }

    #[test]
    fn varints_that_overflow_or_never_end_are_refused() {
        assert_eq!(read_varint(&[0x80; 10]), Err(FrameError::Varint));
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert_eq!(read_varint(&too_big), Err(FrameError::Varint));
        assert_eq!(read_varint(&[0x80]), Err(FrameError::Varint));
        assert_eq!(read_varint(&[]), Err(FrameError::Varint));
        // Overlong (found by fuzzing): 16 written in two bytes; each value has one encoding.
        assert_eq!(read_varint(&[0x90, 0x00]), Err(FrameError::Varint));
        assert_eq!(read_varint(&[0x80, 0x00]), Err(FrameError::Varint));
        assert_eq!(read_varint(&[0x00]), Ok((0, 1)));
    }

    #[test]
    fn data_parses_and_unwraps_to_its_payload() {
        let frame = data(DATA_TEXT, 300, "héllo".as_bytes());
        assert_eq!(
            ClientFrame::parse(&frame),
            Ok(ClientFrame::Data {
                seq: 300,
                text: true,
                header_len: 3
            })
        );
        let mut unwrapped = Vec::new();
        unwrap_data::<()>(&Bytes::from(frame), |kind, payload| {
            unwrapped.push((kind, payload));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            unwrapped,
            [(MessageKind::Text, Bytes::from_static("héllo".as_bytes()))]
        );
        assert_eq!(
            ClientFrame::parse(&data(DATA_TEXT, 1, &[0xff])),
            Err(FrameError::Utf8)
        );
    }

    #[test]
    fn a_raw_message_becomes_unnumbered_data() {
        let wrapped = wrap_unnumbered(MessageKind::Binary, &[9, 9]);
        assert_eq!(&wrapped[..], &[DATA_BINARY, 0, 9, 9]);
        assert_eq!(
            ClientFrame::parse(&wrapped),
            Ok(ClientFrame::Data {
                seq: 0,
                text: false,
                header_len: 2
            })
        );
    }

    /// A BATCH of `frames`, each prefixed by its length.
    fn batch(frames: &[&[u8]]) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(BATCH);
        for frame in frames {
            put_varint(&mut out, frame.len() as u64);
            out.put_slice(frame);
        }
        out.freeze()
    }

    fn ack(sid: u64, hw: u8) -> Vec<u8> {
        let mut frame = vec![ACK];
        frame.extend_from_slice(&sid.to_be_bytes());
        frame.push(hw);
        frame
    }

    #[test]
    fn a_batch_yields_its_data_and_acks_in_order() {
        let frames = batch(&[
            &data(DATA_BINARY, 1, b"ab"),
            &ack(7, 40),
            &data(DATA_TEXT, 2, b"c"),
            &ack(7, 42),
            &ack(8, 99),
        ]);
        let parsed: Vec<_> = BatchFrames::new(&frames[1..])
            .unwrap()
            .map(|item| item.map(|(parsed, bytes)| (parsed, bytes.len())))
            .collect();
        assert_eq!(
            parsed,
            [
                Ok((
                    ClientFrame::Data {
                        seq: 1,
                        text: false,
                        header_len: 2
                    },
                    4
                )),
                Ok((ClientFrame::Ack { sid: 7, hw: 40 }, 10)),
                Ok((
                    ClientFrame::Data {
                        seq: 2,
                        text: true,
                        header_len: 2
                    },
                    3
                )),
                Ok((ClientFrame::Ack { sid: 7, hw: 42 }, 10)),
                Ok((ClientFrame::Ack { sid: 8, hw: 99 }, 10)),
            ]
        );
        assert_eq!(
            ClientFrame::written(&frames, 7),
            Written {
                ack: Some(42),
                answerable: 2
            }
        );
        assert_eq!(ClientFrame::written(&frames, 9).ack, None);
        let mut unwrapped = Vec::new();
        unwrap_data::<()>(&frames, |kind, payload| {
            unwrapped.push((kind, payload));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            unwrapped,
            [
                (MessageKind::Binary, Bytes::from_static(b"ab")),
                (MessageKind::Text, Bytes::from_static(b"c"))
            ]
        );
    }

    #[test]
    fn malformed_batches_are_refused() {
        let first_error = |frames: &[u8]| {
            BatchFrames::new(&frames[1..])
                .and_then(|mut frames| frames.find_map(Result::err).map_or(Ok(()), Err))
        };
        assert_eq!(first_error(&[BATCH]), Err(FrameError::Batch("no frame")));
        assert_eq!(
            first_error(&[BATCH, 5, DATA_BINARY, 1]),
            Err(FrameError::Batch("a frame runs past the end"))
        );
        assert_eq!(first_error(&[BATCH, 0]), Err(FrameError::Empty));
        assert_eq!(first_error(&[BATCH, 0x80]), Err(FrameError::Varint));
        for inner in [
            &b"\x04{}"[..],
            &[BATCH, 1, 1, 0],
            &[NODE, b'{', b'}'],
            &[SERVER],
        ] {
            assert_eq!(
                first_error(&batch(&[&data(DATA_BINARY, 1, b"x"), inner])),
                Err(FrameError::Batch("only DATA and ACK frames may be batched")),
                "{inner:?}"
            );
        }
        assert_eq!(
            first_error(&batch(&[&data(DATA_TEXT, 1, &[0xff])])),
            Err(FrameError::Utf8)
        );
        assert_eq!(
            first_error(&batch(&[&ack(1, 1)[..9]])),
            Err(FrameError::Varint)
        );
    }

    #[test]
    fn acks_parse_exactly() {
        let mut frame = vec![ACK];
        frame.extend_from_slice(&7u64.to_be_bytes());
        frame.push(42);
        assert_eq!(
            ClientFrame::parse(&frame),
            Ok(ClientFrame::Ack { sid: 7, hw: 42 })
        );
        assert_eq!(
            ClientFrame::written(&frame, 7),
            Written {
                ack: Some(42),
                answerable: 0
            }
        );
        assert_eq!(ClientFrame::written(&frame, 8), Written::default());
        frame.push(0);
        assert_eq!(ClientFrame::parse(&frame), Err(FrameError::ShortAck));
        assert_eq!(ClientFrame::parse(&frame[..5]), Err(FrameError::ShortAck));
    }

    #[test]
    fn peer_frames_must_be_typed_json_and_a_sync_states_positions() {
        let peer = |json: &str| {
            let mut frame = vec![PEER];
            frame.extend_from_slice(json.as_bytes());
            ClientFrame::parse(&frame)
        };
        assert_eq!(peer(r#"{"v":1,"t":"bye"}"#), Ok(ClientFrame::Peer(None)));
        assert_eq!(
            peer(r#"{"v":1,"t":"sync","tx":{"base":3,"next":9},"rx":{"sid":null,"hw":0}}"#),
            Ok(ClientFrame::Peer(Some(SyncPositions { base: 3, next: 9 })))
        );
        assert!(peer(r#"{"v":1,"t":"sync","tx":{"base":9,"next":3}}"#).is_err());
        assert!(peer("not json").is_err());
        assert!(peer(r#"{"v":1}"#).is_err());
    }

    #[test]
    fn node_frames_carry_a_token_request_or_are_ignored() {
        let node = |json: &str| {
            let mut frame = vec![NODE];
            frame.extend_from_slice(json.as_bytes());
            ClientFrame::parse(&frame)
        };
        assert_eq!(
            node(r#"{"v":1,"t":"token","token":"a.b.c"}"#),
            Ok(ClientFrame::Node(NodeRequest::Token("a.b.c".into())))
        );
        assert_eq!(
            node(r#"{"v":1,"t":"later"}"#),
            Ok(ClientFrame::Node(NodeRequest::Unknown))
        );
        assert!(node(r#"{"v":1,"t":"token"}"#).is_err());
        assert!(node(r#"{"v":1,"t":"token","token":7}"#).is_err());
        assert!(node("[]").is_err());
        assert!(node("").is_err());
    }

    #[test]
    fn token_answers_say_whether_and_until_when() {
        let json = |frame: Bytes| -> serde_json::Value {
            assert_eq!(frame[0], SERVER);
            serde_json::from_slice(&frame[1..]).unwrap()
        };
        let ok = json(token_answer(Ok(Some(1_764_547_200.5))));
        assert_eq!(
            (ok["t"].as_str(), ok["ok"].as_bool()),
            (Some("token"), Some(true))
        );
        assert_eq!(ok["exp"], 1_764_547_200.5);
        assert!(json(token_answer(Ok(None)))["exp"].is_null());
        let refused = json(token_answer(Err("token expired")));
        assert_eq!(refused["ok"], false);
        assert_eq!(refused["reason"], "token expired");
    }

    #[test]
    fn kinds_a_client_may_not_send_are_refused() {
        assert_eq!(ClientFrame::parse(&[]), Err(FrameError::Empty));
        assert_eq!(
            ClientFrame::parse(&[SERVER, b'{', b'}']),
            Err(FrameError::Kind(SERVER))
        );
        assert_eq!(ClientFrame::parse(&[0x42]), Err(FrameError::Kind(0x42)));
    }

    #[test]
    fn server_frames_are_typed_json() {
        let frame = peer(PeerView::Online(Some(ClientId {
            sid: 0xab,
            generation: 2,
        })));
        assert_eq!(frame[0], SERVER);
        let value: serde_json::Value = serde_json::from_slice(&frame[1..]).unwrap();
        assert_eq!(value["sid"], "00000000000000ab");
        assert_eq!(value["state"], "online");
    }
}
