//! The session side of wspair.v1 (PROTOCOL.md): what a session does differently for a v1
//! client, and how a raw session writes what a v1 peer sent.
//!
//! A v1 session checks each frame its client sends ([`V1Session::read`]), enforces the
//! client's window, writes `welcome` first and a `peer` frame whenever the hub's record of the
//! peer changes ([`V1Session::poll_peer`]), and writes what the peer sent as v1 frames
//! ([`V1Session::outgoing`]). Frames between two v1 clients are written as they were read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;
use yawc::Frame;

use super::close::CloseReason;
use crate::config::{OuterConfig, V1Config};
use crate::hub::{Hub, Peer, PeerWatch};
use crate::node::{Incarnation, NodeId};
use crate::pair::{ChannelId, Message, MessageKind, Role};
use crate::v1::ClientId;
use crate::v1::frame::{self, BatchFrames, ClientFrame, NodeRequest, PeerView};
use crate::v1::window::Window;

/// A v1 session's own state. Boxed in the session, so a raw session pays one pointer.
#[derive(Debug)]
pub struct V1Session {
    client: ClientId,
    watch: Arc<PeerWatch>,
    window: Window,
    /// What the client was last told of its peer: the session, and what was said.
    told: Option<(Option<Incarnation>, PeerView)>,
    /// Server frames to write before anything else.
    pending: VecDeque<Bytes>,
    /// The answer to the client's last `token` request, not written yet: one at most, however
    /// many requests a client sends without reading.
    token_answer: Option<Bytes>,
    /// When the client's last `token` request was checked: checks are spaced by
    /// [`TOKEN_CHECK_INTERVAL`].
    token_checked_at: Option<Instant>,
    /// The most frames a BATCH of the client may hold (`welcome.max_batch`), if limited.
    max_batch: Option<u32>,
    /// DATA and PEER frames of the peer written to the client (each of a BATCH): what its ACKs
    /// and `sync`s answer.
    answerable_written: u64,
}

/// The shortest time between two token checks of one session. A signature check costs tens of
/// microseconds, a thousand times what relaying a message does: a client cannot make its node
/// check tokens any faster than this.
pub const TOKEN_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a v1 client's frame asks of its session.
#[derive(Debug)]
pub enum FromClient {
    /// A frame for the peer.
    Relay(Message),
    /// A fresh token for this session (`token`).
    Token(String),
    /// A request this node does not know: ignored.
    Ignored,
}

impl V1Session {
    /// The state of a new session of `client`, whose first frame is its `welcome`.
    pub fn new(
        client: ClientId,
        watch: Arc<PeerWatch>,
        (config, outer): (&V1Config, &OuterConfig),
        node: NodeId,
        session: u64,
        token_exp: Option<f64>,
    ) -> V1Session {
        let max_batch = outer.rate.max_batch();
        let welcome = frame::welcome(
            &node.to_string(),
            session,
            client,
            (config.window, config.window_bytes),
            (outer.max_frame_size, max_batch),
            token_exp,
        );
        V1Session {
            client,
            watch,
            window: Window::new(config.window, config.window_bytes),
            told: None,
            pending: VecDeque::from([welcome]),
            token_answer: None,
            token_checked_at: None,
            max_batch,
            answerable_written: 0,
        }
    }

    /// DATA and PEER frames of the peer written to the client so far, each of a BATCH
    /// counted: what the client's ACKs and `sync`s answer.
    pub fn answerable_written(&self) -> u64 {
        self.answerable_written
    }

    /// Looks at the hub's record of the peer if it changed since the last look (or the node
    /// asked the session to send `goaway`), and queues the frames that tell the client.
    /// Registers the session's waker for the next change: call once per round of writes.
    pub fn poll_peer(
        &mut self,
        cx: &mut Context<'_>,
        hub: &Hub,
        me: NodeId,
        channel_id: &ChannelId,
        role: Role,
    ) {
        if self.watch.poll_changed(cx) == Poll::Pending {
            return;
        }
        if self.watch.take_goaway() {
            self.pending.push_back(frame::goaway());
        }
        let seen = match hub.peer(channel_id, role.peer()) {
            None => (None, PeerView::Away),
            Some(Peer::Local(handle)) => (
                Some(handle.incarnation(me)),
                PeerView::Online(handle.client),
            ),
            Some(Peer::Remote(remote)) => {
                (Some(remote.incarnation()), PeerView::Online(remote.client))
            }
        };
        if self.told != Some(seen) {
            self.told = Some(seen);
            self.pending.push_back(frame::peer(seen.1));
        }
    }

    /// The next server frame to write (`welcome` first), before anything the peer sent.
    pub fn next_server_frame(&mut self) -> Option<Bytes> {
        self.pending
            .pop_front()
            .or_else(|| self.token_answer.take())
    }

    /// Whether a `token` request may be checked now (see [`TOKEN_CHECK_INTERVAL`]); if so, the
    /// next one may be checked only an interval later.
    pub fn may_check_token(&mut self, now: Instant) -> bool {
        if self
            .token_checked_at
            .is_some_and(|at| now < at + TOKEN_CHECK_INTERVAL)
        {
            return false;
        }
        self.token_checked_at = Some(now);
        true
    }

    /// Queues the answer to a `token` request, in place of an earlier one not written yet:
    /// only the last answer matters to the client, and a client that sends requests without
    /// reading must not make its session hold one answer per request.
    pub fn answer_token(&mut self, answer: Result<Option<f64>, &str>) {
        self.token_answer = Some(frame::token_answer(answer));
    }

    /// Checks a message the client sent and says what it asks for, or the reason to close.
    pub fn read(&mut self, frame: Frame) -> Result<FromClient, CloseReason> {
        if frame.opcode() != yawc::OpCode::Binary {
            return Err(CloseReason::V1Malformed);
        }
        let (_, _, payload) = frame.into_parts();
        if payload.first() == Some(&frame::BATCH) {
            let frames = BatchFrames::new(&payload[1..]).map_err(|_| CloseReason::V1Malformed)?;
            for (count, inner) in (1u32..).zip(frames) {
                if self.max_batch.is_some_and(|max| count > max) {
                    return Err(CloseReason::V1Window);
                }
                let (parsed, bytes) = inner.map_err(|_| CloseReason::V1Malformed)?;
                self.check(parsed, bytes.len())?;
            }
        } else {
            match ClientFrame::parse(&payload).map_err(|_| CloseReason::V1Malformed)? {
                ClientFrame::Node(NodeRequest::Token(token)) => {
                    return Ok(FromClient::Token(token));
                }
                ClientFrame::Node(NodeRequest::Unknown) => return Ok(FromClient::Ignored),
                parsed => self.check(parsed, payload.len())?,
            }
        }
        Ok(FromClient::Relay(Message {
            kind: MessageKind::V1,
            payload,
            origin: None,
        }))
    }

    /// Checks a relayed frame (of `len` bytes) against the client's window.
    fn check(&mut self, parsed: ClientFrame, len: usize) -> Result<(), CloseReason> {
        match parsed {
            ClientFrame::Data {
                seq, header_len, ..
            } => self
                .window
                .on_data(seq, len - header_len)
                .map_err(|_| CloseReason::V1Window),
            ClientFrame::Peer(Some(positions)) => self
                .window
                .on_sync(positions)
                .map_err(|_| CloseReason::V1Window),
            ClientFrame::Peer(None) | ClientFrame::Ack { .. } | ClientFrame::Node(_) => Ok(()),
        }
    }

    /// The frame that writes `message` from the peer to this v1 client. An ACK of this
    /// client's stream (alone or in a BATCH) frees its window.
    pub fn outgoing(&mut self, message: Message) -> Frame {
        match message.kind {
            MessageKind::V1 => {
                let written = ClientFrame::written(&message.payload, self.client.sid);
                if let Some(hw) = written.ack {
                    self.window.on_ack(hw);
                }
                self.answerable_written += written.answerable;
                Frame::binary(message.payload)
            }
            kind => {
                self.answerable_written += 1;
                Frame::binary(frame::wrap_unnumbered(kind, &message.payload))
            }
        }
    }
}

/// Writes `message` to a raw client with `write`: as it came from a raw peer, the payload of
/// each DATA of a v1 peer's frame (one, or each of a BATCH), and nothing for a v1 peer's other
/// frames.
pub fn outgoing_raw<E>(
    message: Message,
    mut write: impl FnMut(Frame) -> Result<(), E>,
) -> Result<(), E> {
    let frame = |kind, payload| match kind {
        MessageKind::Text => Frame::text(payload),
        _ => Frame::binary(payload),
    };
    match message.kind {
        MessageKind::V1 => frame::unwrap_data(&message.payload, |kind, payload| {
            write(frame(kind, payload))
        }),
        kind => write(frame(kind, message.payload)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session of client sid 7 (generation 1), with the default outer settings.
    fn session_of_sid_7() -> V1Session {
        let config = V1Config {
            enabled: true,
            window: 16,
            window_bytes: 1 << 16,
        };
        let client = ClientId {
            sid: 7,
            generation: 1,
        };
        V1Session::new(
            client,
            Arc::new(PeerWatch::default()),
            (&config, &crate::config::Config::default().outer),
            NodeId::generate(),
            1,
            None,
        )
    }

    #[test]
    fn a_session_holds_one_token_answer_however_many_requests_came() {
        let mut session = session_of_sid_7();
        for n in 0..10_000 {
            session.answer_token(if n % 2 == 0 {
                Ok(None)
            } else {
                Err("too soon")
            });
        }
        let welcome = session.next_server_frame().expect("the welcome");
        assert!(welcome.windows(9).any(|w| w == b"\"welcome\""));
        let answer = session.next_server_frame().expect("the last answer");
        assert!(
            answer.windows(10).any(|w| w == b"\"too soon\""),
            "the last one"
        );
        assert_eq!(session.next_server_frame(), None);
    }

    #[test]
    fn the_frames_written_to_a_client_count_each_of_a_batch() {
        let mut session = session_of_sid_7();
        let message = |payload: &[u8]| Message {
            kind: MessageKind::V1,
            payload: Bytes::copy_from_slice(payload),
            origin: None,
        };
        // Three DATA and an ACK of stream 7 up to 2, in one BATCH.
        let mut batch = vec![frame::BATCH];
        for seq in 1..=3 {
            batch.extend_from_slice(&[3, frame::DATA_BINARY, seq, b'x']);
        }
        batch.extend_from_slice(&[10, frame::ACK, 0, 0, 0, 0, 0, 0, 0, 7, 2]);
        session.outgoing(message(&batch));
        session.outgoing(message(&[frame::DATA_TEXT, 0, b'y']));
        session.outgoing(Message {
            kind: MessageKind::Binary,
            payload: Bytes::from_static(b"raw"),
            origin: None,
        });
        assert_eq!(session.answerable_written(), 5);
    }
}
