//! wspair.v1 at the wire level, for tests of what a node does: connects with the subprotocol,
//! writes frames byte by byte and reads them back, with no client library in between.

use futures::SinkExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use super::EVENT_TIMEOUT;
use super::client::{Client, Ending};

/// The key of the app in wire-level tests.
pub const APP_KEY: u128 = 0x00a0_0000_0000_0001;
/// The key of the web in wire-level tests.
pub const WEB_KEY: u128 = 0x00b0_0000_0000_0002;

/// A web and then an app of channel `id` on `node` (keys [`WEB_KEY`], [`APP_KEY`], gen 1),
/// both welcomed, the web past the `peer` frame that announces the app. Returns `(app, web)`.
pub async fn welcomed_pair(node: &super::TestNode, id: &wspair::ChannelId) -> (Wire, Wire) {
    let mut web = connect(&node.url(wspair::Role::Web, id.as_str()), WEB_KEY, 1).await;
    web.welcomed().await;
    let mut app = connect(&node.url(wspair::Role::App, id.as_str()), APP_KEY, 1).await;
    app.welcomed().await;
    web.recv_server().await;
    (app, web)
}

/// A v1 connection driven frame by frame.
pub struct Wire {
    pub client: Client,
    pub sid: u64,
}

/// A v1 URL: `base` (a node's upgrade URL with type and channel id) plus `key` and `gen`.
pub fn url(base: &str, key: u128, generation: u32) -> String {
    format!("{base}&key={key:032x}&gen={generation}")
}

/// The stream id the node derives from `key`.
pub fn sid(key: u128) -> u64 {
    wspair::v1::sid_of_key(key)
}

/// Connects offering `wspair.v1`; the error is the refusal's status and body, or why the
/// upgrade failed.
pub async fn try_connect(base: &str, key: u128, generation: u32) -> Result<Wire, String> {
    let mut request = url(base, key, generation)
        .into_client_request()
        .expect("a WebSocket URL");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wspair.v1".parse().unwrap());
    let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
    match tokio::time::timeout(EVENT_TIMEOUT, connecting)
        .await
        .expect("upgrade completes in time")
    {
        Ok((ws, response)) => {
            let echoed = response.headers().get("Sec-WebSocket-Protocol");
            assert_eq!(echoed.map(|v| v.to_str().unwrap()), Some("wspair.v1"));
            Ok(Wire {
                client: Client { ws },
                sid: sid(key),
            })
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|body| String::from_utf8_lossy(body).into_owned())
                .unwrap_or_default();
            Err(format!("{} {}", response.status().as_u16(), body.trim()))
        }
        Err(err) => Err(err.to_string()),
    }
}

/// Connects offering `wspair.v1`; panics if refused.
pub async fn connect(base: &str, key: u128, generation: u32) -> Wire {
    try_connect(base, key, generation)
        .await
        .unwrap_or_else(|err| panic!("v1 upgrade refused: {err}"))
}

/// A DATA frame.
pub fn data(seq: u64, text: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![if text { 0x02 } else { 0x01 }];
    put_varint(&mut frame, seq);
    frame.extend_from_slice(payload);
    frame
}

/// An ACK frame.
pub fn ack(sid: u64, hw: u64) -> Vec<u8> {
    let mut frame = vec![0x03];
    frame.extend_from_slice(&sid.to_be_bytes());
    put_varint(&mut frame, hw);
    frame
}

/// A BATCH of `frames` (PROTOCOL.md §2.6).
pub fn batch(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0x07];
    for frame in frames {
        put_varint(&mut out, frame.len() as u64);
        out.extend_from_slice(frame);
    }
    out
}

/// A PEER `sync` frame.
pub fn sync(sid: u64, generation: u32, base: u64, next: u64, rx: Option<(u64, u64)>) -> Vec<u8> {
    let rx = match rx {
        Some((sid, hw)) => serde_json::json!({"sid": format!("{sid:016x}"), "hw": hw}),
        None => serde_json::json!({"sid": null, "hw": 0}),
    };
    let body = serde_json::json!({"v": 1, "t": "sync", "sid": format!("{sid:016x}"),
        "gen": generation, "tx": {"base": base, "next": next}, "rx": rx, "reply": false});
    let mut frame = vec![0x04];
    frame.extend_from_slice(body.to_string().as_bytes());
    frame
}

fn put_varint(frame: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        frame.push((value as u8) | 0x80);
        value >>= 7;
    }
    frame.push(value as u8);
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Wire({:016x})", self.sid)
    }
}

impl Wire {
    pub async fn send(&mut self, frame: Vec<u8>) {
        self.client
            .ws
            .send(Message::binary(Bytes::from(frame)))
            .await
            .expect("send");
    }

    /// The next binary message, whole.
    pub async fn recv(&mut self) -> Vec<u8> {
        self.client.recv_binary().await
    }

    /// The next SERVER frame's JSON; fails on any other frame.
    pub async fn recv_server(&mut self) -> serde_json::Value {
        let frame = self.recv().await;
        assert_eq!(frame[0], 0x05, "expected a SERVER frame, got {frame:?}");
        serde_json::from_slice(&frame[1..]).expect("SERVER frames hold JSON")
    }

    /// Reads `welcome` and the first `peer` frame; returns the peer frame.
    pub async fn welcomed(&mut self) -> serde_json::Value {
        let welcome = self.recv_server().await;
        assert_eq!(welcome["t"], "welcome", "{welcome}");
        let peer = self.recv_server().await;
        assert_eq!(peer["t"], "peer", "{peer}");
        peer
    }

    pub async fn ending(&mut self) -> Ending {
        self.client.ending().await
    }

    /// Sends a text WebSocket message, which no v1 client may.
    pub async fn send_text(&mut self, text: &str) {
        self.client.send_text(text).await;
    }
}
