//! `throughput --v1-sans-io`: wspair.v1 clients built on the library's sans-IO state machine
//! ([`wspair_client::protocol::Protocol`]) inside the raw mode's own I/O loop: the sending task
//! offers messages to the machine and writes its frames itself, flushing when the window is
//! used up (as the raw sender does); the reading task hands frames to the machine and takes the
//! messages. It measures what the protocol costs, apart from the async client's tasks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use wspair_client::Event;
use wspair_client::frame::{Frame, ServerMsg, decode_message, sid_of_key};
use wspair_client::protocol::{Protocol, ProtocolConfig, SendError};

use crate::direction::{DirectionResult, Flow, Tally};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Sink = SplitSink<Ws, Message>;
/// The reading half of a v1 client's socket.
pub type Stream = SplitStream<Ws>;

/// One v1 client: its state machine and the writing half of its socket.
pub struct Side {
    proto: Mutex<Protocol>,
    sink: tokio::sync::Mutex<(Sink, BytesMut)>,
}

/// How often a reading task runs its machine's timers.
const TICK: Duration = Duration::from_millis(100);

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Opens one v1 connection for `role` of channel `id` on `base` and waits for its welcome.
pub async fn open(
    base: &str,
    id: &str,
    role: &str,
    key: u128,
) -> Result<(Arc<Side>, SplitStream<Ws>), String> {
    let url = format!("{base}?type={role}&channelId={id}&key={key:032x}&gen=1");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "wspair.v1".parse().expect("valid"),
    );
    let config = WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| e.to_string())?;
    let (sink, mut stream) = ws.split();
    let mut proto = Protocol::new(sid_of_key(key), ProtocolConfig::default());
    proto.on_connected(1, now());
    match stream.next().await {
        Some(Ok(Message::Binary(bytes))) => match Frame::decode(bytes) {
            Ok(frame @ Frame::Server(ServerMsg::Welcome(_))) => proto.on_frame(frame, now()),
            other => return Err(format!("expected welcome, got {other:?}")),
        },
        other => return Err(format!("expected welcome, got {other:?}")),
    }
    Ok((
        Arc::new(Side {
            proto: Mutex::new(proto),
            sink: tokio::sync::Mutex::new((sink, BytesMut::new())),
        }),
        stream,
    ))
}

impl Side {
    /// Writes every frame the machine has queued (an ACK due joining them), then flushes.
    async fn write_frames(&self) -> Result<(), String> {
        let mut sink = self.sink.lock().await;
        let (sink, buf) = &mut *sink;
        let mut frames = Vec::new();
        {
            let mut proto = self.proto.lock().expect("not poisoned");
            proto.piggyback_ack();
            while proto.poll_message_into(buf) {
                frames.push(Message::Binary(buf.split().freeze()));
            }
        }
        if frames.is_empty() {
            return Ok(());
        }
        for frame in frames {
            sink.feed(frame).await.map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())
    }
}

/// How many directions of a pair are done: each reading task keeps reading its socket (for
/// the ACKs and syncs its machine must answer) until both are.
#[derive(Default)]
pub struct PairDone {
    count: std::sync::atomic::AtomicUsize,
    notify: tokio::sync::Notify,
}

impl PairDone {
    fn finish_one(&self) {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    fn all(&self) -> bool {
        self.count.load(std::sync::atomic::Ordering::Acquire) == 2
    }
}

/// One direction: `sender` sends; `stream` is the receiver's socket, `receiver` its machine.
pub async fn direction(
    sender: Arc<Side>,
    receiver: Arc<Side>,
    mut stream: Stream,
    pair: Arc<PairDone>,
    flow: Flow,
) -> Result<DirectionResult, String> {
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(None::<u64>);
    let sending = flow.clone();
    let sender_state = Arc::clone(&sender);
    let send_task = tokio::spawn(async move {
        let mut seq = 0;
        while let Some((bytes, window_used_up)) = sending.next_message(seq).await {
            // A full window waits for the peer's ACKs, as the library's `send` does: the
            // machine's reader may be busy writing while its peer keeps taking messages.
            let mut payload = Bytes::from(bytes);
            loop {
                let offered = sender
                    .proto
                    .lock()
                    .expect("not poisoned")
                    .offer(false, payload, now);
                match offered {
                    Ok(_) => break,
                    Err((SendError::WindowFull, back)) => {
                        payload = back;
                        sender.write_frames().await?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => return Err(format!("offer: {e:?}")),
                }
            }
            if window_used_up {
                sender.write_frames().await?;
            }
            seq += 1;
        }
        sender.write_frames().await?;
        let _ = sent_tx.send(Some(seq));
        Ok::<_, String>(())
    });
    let drain_until = flow.drain_until();
    let mut tally = Tally::new(flow);
    let mut sent = None;
    let mut events = Vec::new();
    // The machine's timers (delayed ACK, sync asked again, retransmission), run at this pace:
    // this side is the receiver of this direction only, so each machine has one ticker.
    let mut ticker = tokio::time::interval(TICK);
    let mut finished = false;
    loop {
        if !finished && tally.has_all(sent) {
            finished = true;
            pair.finish_one();
        }
        if finished && pair.all() {
            break;
        }
        let pair_done = pair.notify.notified();
        tokio::select! {
            () = pair_done, if finished => continue,
            _ = ticker.tick() => {
                let write = {
                    let mut proto = receiver.proto.lock().expect("not poisoned");
                    proto.on_tick(now());
                    proto.has_frames()
                };
                if write {
                    receiver.write_frames().await?;
                }
            }
            changed = sent_rx.changed(), if sent.is_none() => {
                if changed.is_err() { break; }
                sent = *sent_rx.borrow();
            }
            next = tokio::time::timeout_at(drain_until, stream.next()) => match next {
                Err(_) => {
                    if !finished {
                        pair.finish_one();
                    }
                    break;
                }
                Ok(Some(Ok(Message::Binary(bytes)))) => {
                    let write = {
                        let mut proto = receiver.proto.lock().expect("not poisoned");
                        for frame in decode_message(bytes) {
                            proto.on_frame(frame.map_err(|e| e.to_string())?, now());
                        }
                        while let Some(event) = proto.poll_event() {
                            events.push(event);
                        }
                        let rx = proto.rx_sid();
                        for event in events.drain(..) {
                            if let Event::Message { payload, seq, .. } = event {
                                if let Some(rx) = rx {
                                    proto.take(rx, seq, now);
                                }
                                tally.take(&payload)?;
                            }
                        }
                        // Frames this caused (syncs, an ACK due), and with them any the other
                        // direction's sender queued and has not written yet.
                        proto.has_frames()
                    };
                    if write {
                        receiver.write_frames().await?;
                    }
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(err))) => return Err(err.to_string()),
                Ok(None) => return Err("connection closed".into()),
            },
        }
    }
    send_task.await.map_err(|e| e.to_string())??;
    if !tally.has_all(sent) {
        // What each machine knew, to tell a stalled direction's cause.
        let rx = receiver.proto.lock().expect("not poisoned");
        let tx = sender_state.proto.lock().expect("not poisoned");
        eprintln!(
            "stalled: sent {sent:?}, received {}; receiver hw {} of {:?}, gaps {}; sender outbox {}, next {}, acked {}, frames waiting {}, peer {:?}",
            tally.check.next,
            rx.rx_hw(),
            rx.rx_sid(),
            rx.gaps_seen(),
            tx.outbox_len(),
            tx.next_seq(),
            tx.acked(),
            tx.has_frames(),
            tx.peer()
        );
    }
    Ok(DirectionResult::new(tally, sent, None))
}
