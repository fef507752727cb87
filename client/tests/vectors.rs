//! Checks the codec against the byte-level vectors in `tests/vectors.json`, which are kept
//! language-neutral so that clients in other languages can run the same cases.

use bytes::Bytes;
use serde_json::Value;
use wspair_client::frame::{
    Frame, FrameError, NodeMsg, PeerMsg, ServerMsg, decode_message, sid_from_hex,
};

fn load() -> Value {
    let text = include_str!("vectors.json");
    serde_json::from_str(text).expect("vectors.json is JSON")
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn error_name(e: &FrameError) -> &'static str {
    match e {
        FrameError::Empty => "empty",
        FrameError::UnknownKind(_) => "unknown_kind",
        FrameError::VarintTruncated => "varint_truncated",
        FrameError::VarintTooLong => "varint_too_long",
        FrameError::VarintOverflow => "varint_overflow",
        FrameError::VarintOverlong => "varint_overlong",
        FrameError::AckTruncated => "ack_truncated",
        FrameError::Trailing(_) => "trailing",
        FrameError::InvalidUtf8 => "invalid_utf8",
        FrameError::Json(_) => "json",
        FrameError::BatchEmpty => "batch_empty",
        FrameError::BatchTruncated => "batch_truncated",
        FrameError::BatchKind(_) => "batch_kind",
    }
}

/// The JSON object of a decoded control frame, through its own encoding.
fn control_json(frame: &Frame) -> Value {
    let bytes = frame.encode();
    serde_json::from_slice(&bytes[1..]).expect("control frames encode JSON")
}

/// Whether every field of `want` is in `got` with the same value (unknown fields aside).
fn covers(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => w.iter().all(|(k, wv)| match g.get(k) {
            Some(gv) => covers(gv, wv),
            // Defaults the encoder leaves out.
            None => matches!(wv, Value::Null | Value::Bool(false)),
        }),
        // A time may come back as 1764547200.0 for 1764547200.
        (Value::Number(g), Value::Number(w)) => g.as_f64() == w.as_f64(),
        _ => got == want,
    }
}

#[test]
fn valid_vectors_decode_to_their_meaning() {
    let vectors = load();
    let valid = vectors["valid"].as_array().expect("valid list");
    assert!(valid.len() >= 20);
    for v in valid {
        let name = v["name"].as_str().unwrap();
        let bytes = unhex(v["hex"].as_str().unwrap());
        let meaning = &v["frame"];
        let frame =
            Frame::decode(Bytes::from(bytes.clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
        match meaning["kind"].as_str().unwrap() {
            "data" => {
                let want = Frame::Data {
                    seq: meaning["seq"].as_u64().unwrap(),
                    text: meaning["text"].as_bool().unwrap(),
                    payload: Bytes::from(unhex(meaning["payload_hex"].as_str().unwrap())),
                };
                assert_eq!(frame, want, "{name}");
                assert_eq!(frame.encode().as_ref(), &bytes[..], "{name}: encoding");
            }
            "ack" => {
                let want = Frame::Ack {
                    sid: sid_from_hex(meaning["sid"].as_str().unwrap()).unwrap(),
                    hw: meaning["hw"].as_u64().unwrap(),
                };
                assert_eq!(frame, want, "{name}");
                assert_eq!(frame.encode().as_ref(), &bytes[..], "{name}: encoding");
            }
            kind @ ("peer" | "server" | "node") => {
                let t = meaning["t"].as_str().unwrap();
                match (&frame, kind, t) {
                    (Frame::Peer(PeerMsg::Sync(_)), "peer", "sync")
                    | (Frame::Peer(PeerMsg::Bye), "peer", "bye")
                    | (Frame::Server(ServerMsg::Welcome(_)), "server", "welcome")
                    | (Frame::Server(ServerMsg::Peer(_)), "server", "peer")
                    | (Frame::Server(ServerMsg::Goaway { .. }), "server", "goaway")
                    | (Frame::Server(ServerMsg::Token(_)), "server", "token")
                    | (Frame::Node(NodeMsg::Token { .. }), "node", "token") => {}
                    (Frame::Peer(PeerMsg::Unknown(u)), "peer", _) => {
                        assert_eq!(u, t, "{name}");
                        continue;
                    }
                    _ => panic!("{name}: decoded as {frame:?}"),
                }
                let mut want = meaning.clone();
                want.as_object_mut().unwrap().remove("kind");
                let got = control_json(&frame);
                let mut relevant = want.clone();
                // Fields this version does not know are ignored, so they are not re-encoded.
                if let Some(o) = relevant.as_object_mut() {
                    o.remove("future");
                }
                assert!(
                    covers(&got, &relevant),
                    "{name}: {got} does not cover {want}"
                );
                let again = Frame::decode(frame.encode()).unwrap();
                assert_eq!(again, frame, "{name}: round trip");
            }
            other => panic!("{name}: unknown kind {other}"),
        }
    }
}

#[test]
fn invalid_vectors_are_rejected_with_their_error() {
    let vectors = load();
    let invalid = vectors["invalid"].as_array().expect("invalid list");
    assert!(invalid.len() >= 15);
    for v in invalid {
        let name = v["name"].as_str().unwrap();
        let bytes = unhex(v["hex"].as_str().unwrap());
        let want = v["error"].as_str().unwrap();
        match Frame::decode(Bytes::from(bytes)) {
            Ok(frame) => panic!("{name}: decoded as {frame:?}"),
            Err(e) => assert_eq!(error_name(&e), want, "{name}: {e}"),
        }
    }
}

/// The DATA or ACK frame a vector's meaning describes.
fn data_or_ack(meaning: &Value) -> Frame {
    match meaning["kind"].as_str().unwrap() {
        "data" => Frame::Data {
            seq: meaning["seq"].as_u64().unwrap(),
            text: meaning["text"].as_bool().unwrap(),
            payload: Bytes::from(unhex(meaning["payload_hex"].as_str().unwrap())),
        },
        "ack" => Frame::Ack {
            sid: sid_from_hex(meaning["sid"].as_str().unwrap()).unwrap(),
            hw: meaning["hw"].as_u64().unwrap(),
        },
        other => panic!("a BATCH holds DATA and ACK only, not {other}"),
    }
}

#[test]
fn messages_carry_their_frames_in_order() {
    let vectors = load();
    let messages = vectors["messages"].as_array().expect("messages list");
    assert!(messages.len() >= 5);
    for v in messages {
        let name = v["name"].as_str().unwrap();
        let bytes = unhex(v["hex"].as_str().unwrap());
        let got: Vec<Frame> = decode_message(Bytes::from(bytes))
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Vec<Frame> = v["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(data_or_ack)
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn invalid_messages_are_rejected_with_their_error() {
    let vectors = load();
    let invalid = vectors["invalid_messages"]
        .as_array()
        .expect("invalid list");
    assert!(invalid.len() >= 8);
    for v in invalid {
        let name = v["name"].as_str().unwrap();
        let bytes = unhex(v["hex"].as_str().unwrap());
        let want = v["error"].as_str().unwrap();
        match decode_message(Bytes::from(bytes)).find_map(Result::err) {
            None => panic!("{name}: decoded"),
            Some(e) => assert_eq!(error_name(&e), want, "{name}: {e}"),
        }
    }
}
