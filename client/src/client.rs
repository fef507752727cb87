//! The async client: a small handle, and one background task that keeps the connection.
//!
//! The state machine ([`Protocol`]) and the queue of events for the application live in one
//! [`Core`] behind a mutex, shared by the handles and the task. Why not a channel of commands,
//! as a task owning everything would want: a `send` then cost a command, a wake-up of the task
//! and a reply per message, and the task wrote and flushed each message on its own. Now a `send`
//! with room in the window puts the frame into the state machine itself, under the lock, and
//! returns its seq at once; it only wakes the task, which writes every frame queued since its
//! last write and flushes once. Only a `send` that meets a full window waits, on a reply from
//! the task, which retries it as acknowledgements come in. Events go into the core's queue and
//! [`Client::next_event`] takes them there; a message counts as taken (and so may be
//! acknowledged) only when `next_event` hands it out, so an application that stops reading
//! stops its peer (PROTOCOL.md §4, §7).
//!
//! The application's own tasks do the I/O they wait for, where they can, since every hand-off
//! between tasks was a wake-up that a raw client does not pay, and on a busy runtime it cut
//! bursts into smaller writes:
//! - The socket's writing half sits behind a second, async lock ([`Writer`]) that the handles
//!   take too: [`Handle::feed_binary`] queues a message without waking anyone and
//!   [`Handle::flush`] writes what is queued from the caller's task, a burst in one write.
//! - The reading half sits behind a third lock ([`Reader`]): `next_event` with no event waiting
//!   reads the socket itself, and the socket wakes it rather than the task while it waits
//!   ([`ReadWake`]). The task reads whenever the application is not waiting, so ACKs and the
//!   peer's news are handled all the same.
//! - The task's timer lives in the core, so whoever starts a deadline (the delayed ACK of a
//!   message taken, the retransmission timer of a message fed) sets it there instead of waking
//!   the task to set it.
//!
//! The task still connects, reconnects, closes, runs the timers and writes what nobody flushes.
//! The core's lock is held for bookkeeping only, never across an `.await` or a socket
//! operation; the writer's and the reader's locks are taken before the core's, never after.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::task::AtomicWaker;
use futures::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::backoff::{Backoff, random_key};
use crate::config::Config;
use crate::connection::{Conn, OpenError, Target, Ws, loggable, open, raw_message};
use crate::error::Error;
use crate::event::Event;
use crate::frame::{Frame, NodeMsg, ServerMsg, decode_message, frames_in, sid_of_key};
use crate::protocol::{Protocol, ProtocolConfig, SendError};

/// Events the core holds for the application before the task stops reading the socket.
const MAX_EVENTS: usize = 512;
/// Messages read from the socket in a row, when they are already buffered, before what they
/// caused (ACKs, resends) is written and the reader looks at its other inputs again.
const READ_BATCH: usize = 256;
/// The smallest allocation frames are copied into for writing: a new one is made only when
/// a batch outgrows it while its frames are still being written.
const ENCODE_CHUNK: usize = 8 * 1024;
/// How long a closing client waits for the node's close reply.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);
/// The close code of a session displaced by another one.
const CODE_DISPLACED: u16 = 4001;
/// The close code of a session an operator closed (the node's admin API): the client stops.
const CODE_OPERATOR: u16 = 4004;
/// Where the task's timer waits while no deadline stands: far enough never to matter, and
/// armed all the same, so that whoever sets a deadline only moves it (see [`Core::arm`]).
const IDLE_TIMER: Duration = Duration::from_secs(24 * 3600);

/// Counters and positions of a client, for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// This client's stream id.
    pub sid: u64,
    /// The generation of the current (or last) connection.
    pub r#gen: u32,
    /// Messages kept until the peer acknowledges them.
    pub outbox_len: usize,
    /// The seq the next message gets.
    pub next_seq: u64,
    /// The highest seq the peer acknowledged.
    pub acked: u64,
    /// The last position of the peer's stream handed over.
    pub rx_hw: u64,
    /// Connections opened after the first.
    pub reconnects: u64,
    /// The peer's messages dropped as already delivered.
    pub duplicates_dropped: u64,
    /// The peer's messages dropped because earlier ones were missing.
    pub gaps_seen: u64,
}

/// What a handle asks of the task that does not go through the core.
enum Command {
    Reconnect {
        done: oneshot::Sender<()>,
    },
    Close {
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// A fresh client token: for later connections, and for the open one's session.
    SetToken(String),
}

/// An event on its way to the application, with the stream a message belongs to.
struct Delivery {
    stream: Option<u64>,
    event: Event,
}

/// The state the handles and the task share, behind [`Shared::core`].
struct Core {
    proto: Protocol,
    /// Messages that met a full window (or a raw connection being down), in order; a `send`
    /// that finds any here queues behind them, so sends keep their order.
    blocked: VecDeque<PendingSend>,
    /// Whether the current connection is raw (the server did not accept v1): sends then go
    /// through the task, which writes them as plain messages.
    raw: bool,
    /// Events for the application, in order.
    events: VecDeque<Delivery>,
    /// Whether events were pushed since the reader was last woken.
    fresh: bool,
    /// The task has ended: sends fail, and `next_event` returns `None` once `events` is empty.
    stopped: bool,
    /// The generation of the current connection.
    conn_gen: u32,
    /// Connections opened after the first.
    reconnects: u64,
    /// Why a write on the current connection failed, for the task to end the connection; set
    /// by whoever wrote (the task or a handle's [`Handle::flush`]).
    write_error: Option<String>,
    /// The task's timer. It lives here rather than in the task so that a handle that sets an
    /// earlier deadline (the delayed ACK of a message taken, the retransmission timer of a
    /// message fed) moves it itself: the task used to be woken for that alone, once per
    /// burst of messages taken. The task always waits on it, so it keeps the task's waker.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Where `timer` is set; `None` while it idles (see [`IDLE_TIMER`]).
    timer_at: Option<Instant>,
    /// The task's own deadline (reconnect, close), which `timer` also serves.
    task_at: Option<Instant>,
}

impl Core {
    /// Moves the state machine's events into the application's queue. Called after every
    /// change to the state machine, since a message's stream is the one current at that time.
    fn collect(&mut self) {
        while let Some(event) = self.proto.poll_event() {
            let stream = match event {
                Event::Message { seq, .. } if seq > 0 => self.proto.rx_sid(),
                _ => None,
            };
            self.push(Delivery { stream, event });
        }
    }

    /// Sets the task's timer to the earliest deadline of the state machine and the task. Moving
    /// it later costs little (tokio only records the new instant); earlier, it is re-inserted
    /// into the timer wheel, still without waking the task.
    fn arm(&mut self) {
        let at = [
            self.proto.poll_timeout().map(Instant::from_std),
            self.task_at,
        ]
        .into_iter()
        .flatten()
        .min();
        if at == self.timer_at {
            return;
        }
        self.timer_at = at;
        let at = at.unwrap_or_else(|| Instant::now() + IDLE_TIMER);
        self.timer.as_mut().reset(at);
    }

    fn push(&mut self, delivery: Delivery) {
        self.events.push_back(delivery);
        self.fresh = true;
    }

    fn stats(&self) -> Stats {
        let p = &self.proto;
        Stats {
            sid: p.sid(),
            r#gen: self.conn_gen,
            outbox_len: p.outbox_len(),
            next_seq: p.next_seq(),
            acked: p.acked(),
            rx_hw: p.rx_hw(),
            reconnects: self.reconnects,
            duplicates_dropped: p.duplicates_dropped(),
            gaps_seen: p.gaps_seen(),
        }
    }
}

/// The writing half of a connection's WebSocket.
type Sink = SplitSink<Ws, Message>;
/// The reading half, which only the task reads.
type Source = SplitStream<Ws>;

/// The writing half of the current connection, with the buffers a write reuses.
///
/// Shared, behind [`Shared::writer`], by the task and the handles, so that an application that
/// sends a burst writes it itself with one flush ([`Handle::flush`]) instead of waking the task,
/// which cut the burst wherever it happened to run. Whoever holds it takes the state machine's
/// frames and writes them, so frames leave in the order they were queued. The task swaps the
/// sink and tells the state machine of the new connection under this one lock: frames taken for
/// a connection are never written on the next.
struct Writer {
    sink: Option<Sink>,
    /// The buffer frames are copied into, one slice per frame: each slice is dropped once
    /// tungstenite has copied it into its write buffer, within the same write, and the
    /// allocation is reused by the next batch.
    encoded: BytesMut,
    /// Messages taken from the core to write, kept to reuse its allocation.
    out: Vec<Message>,
}

impl Writer {
    /// Writes every frame the state machine has queued (with the ACK due, if any), then
    /// `plain`, and flushes once. A failed write drops the sink and leaves its error in the core
    /// for the task, which ends the connection; the messages stay in the outbox. Returns
    /// whether a write failed.
    async fn write(&mut self, shared: &Shared, plain: Option<&mut VecDeque<Message>>) -> bool {
        {
            let mut core = lock(&shared.core);
            if self.sink.is_none() {
                while core.proto.poll_frame().is_some() {}
                if let Some(plain) = plain {
                    plain.clear();
                }
                return false;
            }
            if core.proto.piggyback_ack() {
                // The delayed ACK's deadline is gone: the task's timer need not wake it.
                core.arm();
            }
            while core.proto.poll_message_into(&mut self.encoded) {
                self.out
                    .push(Message::Binary(self.encoded.split().freeze()));
            }
        }
        if let Some(plain) = plain {
            self.out.extend(plain.drain(..));
        }
        if self.out.is_empty() {
            return false;
        }
        let sink = self.sink.as_mut().expect("checked above");
        let mut failed = None;
        for msg in self.out.drain(..) {
            if failed.is_none()
                && let Err(e) = sink.feed(msg).await
            {
                failed = Some(e);
            }
        }
        if failed.is_none()
            && let Err(e) = sink.flush().await
        {
            failed = Some(e);
        }
        let Some(e) = failed else {
            return false;
        };
        self.sink = None;
        lock(&shared.core).write_error = Some(e.to_string());
        shared.task_wake.notify_one();
        true
    }
}

/// The reading half of the current connection, read by whoever gets to it: the application's
/// task in [`Client::next_event`] when it finds no event waiting, the background task when
/// the application is not waiting (see [`ReadWake`]). Whoever reads holds this lock until the
/// frames read are handled, so they are handled in the order they arrived.
struct Reader {
    stream: Option<Source>,
    /// The end of the connection (close frame, error, end of the stream), for the task, which
    /// alone handles it; nothing is read after it.
    end: Option<(Option<u16>, String)>,
    /// A goaway read, for the task.
    goaway: Option<String>,
    /// Messages read in one burst, kept to reuse the allocation (see [`pump`]).
    batch: Vec<Message>,
}

/// [`ReadWake::state`]: the application's task waits in `next_event` and reads the socket.
const APP_READING: u8 = 1;
/// [`ReadWake::state`]: the socket became readable (or was left unread) since the application
/// last read it.
const APP_WOKEN: u8 = 2;

/// The waker the socket is read with, whoever reads it. While the application's task waits in
/// [`Client::next_event`] it reads the socket itself, so the socket wakes it and not the
/// background task: a burst of messages then costs one wake-up, of the task that takes them,
/// where the background task was woken to read them and then woke the application's. When
/// the application's task stops waiting, a readiness it was told of and did not read goes to
/// the background task, so nothing waits unread (ACKs included) while the application does
/// something else.
struct ReadWake {
    state: AtomicU8,
    app: AtomicWaker,
    task: AtomicWaker,
}

impl std::task::Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & APP_READING == 0 {
                self.task.wake();
                return;
            }
            match self.state.compare_exchange_weak(
                state,
                state | APP_WOKEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.app.wake();
                    return;
                }
                Err(current) => state = current,
            }
        }
    }
}

impl ReadWake {
    /// The application's task is about to read the socket, and to wait on it if it is dry.
    fn app_reads(&self) {
        self.state.store(APP_READING, Ordering::Release);
    }

    /// The application's task stopped reading before the socket ran dry.
    fn app_left_unread(&self) {
        self.state.fetch_or(APP_WOKEN, Ordering::AcqRel);
    }

    /// The application's task no longer waits: what it was woken for and did not read is the
    /// background task's to read.
    fn app_leaves(&self) {
        if self.state.swap(0, Ordering::AcqRel) & APP_WOKEN != 0 {
            self.task.wake();
        }
    }

    fn app_reading(&self) -> bool {
        self.state.load(Ordering::Acquire) & APP_READING != 0
    }
}

/// Ends the application's reading when [`Client::next_event`] returns or is dropped.
struct Leave<'a>(&'a ReadWake);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.app_leaves();
    }
}

/// What one [`pump`] did.
struct Pumped {
    /// Messages went to the state machine (or a raw connection's to the event queue).
    handled: bool,
    /// The socket had nothing more to read: its next data wakes a reader.
    dry: bool,
    /// The task has work from it: frames to write, blocked sends to retry, the end of the
    /// connection or a goaway.
    for_task: bool,
}

/// Reads what the socket already holds, until `limit` frames (each of a BATCH counted, so the
/// event queue stays bounded whatever the batches hold), and hands it to the state
/// machine under one lock of the core and one reading of the clock: one wake-up and one write
/// for a burst of frames rather than one per frame. The burst is read before the core is
/// locked (no socket operation under that lock).
fn pump(shared: &Shared, reader: &mut Reader, limit: usize) -> Pumped {
    let Reader {
        stream,
        end,
        goaway,
        batch,
    } = reader;
    let mut pumped = Pumped {
        handled: false,
        dry: true,
        for_task: end.is_some() || goaway.is_some(),
    };
    let Some(source) = stream.as_mut() else {
        return pumped;
    };
    if end.is_some() {
        return pumped;
    }
    let mut cx = Context::from_waker(&shared.read_waker);
    pumped.dry = false;
    // Frames read, each of a BATCH counted: each may become an event to queue.
    let mut frames = 0;
    while frames < limit {
        let msg = match source.poll_next_unpin(&mut cx) {
            Poll::Pending => {
                pumped.dry = true;
                break;
            }
            Poll::Ready(msg) => msg,
        };
        match msg {
            Some(Ok(Message::Binary(bytes))) => {
                frames += frames_in(&bytes);
                batch.push(Message::Binary(bytes));
            }
            Some(Ok(msg @ Message::Text(_))) => {
                frames += 1;
                batch.push(msg);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                // The code is in `code`; the reason is the frame's text alone.
                let reason = frame
                    .as_ref()
                    .map_or_else(|| "no close frame".into(), |f| f.reason.to_string());
                *end = Some((code, reason));
            }
            Some(Err(e)) => *end = Some((None, e.to_string())),
            None => *end = Some((None, "connection closed".into())),
        }
        if end.is_some() {
            pumped.dry = true;
            pumped.for_task = true;
            break;
        }
    }
    if batch.is_empty() {
        return pumped;
    }
    pumped.handled = true;
    let now = std_now();
    let mut core = lock(&shared.core);
    let frames_before = core.proto.queued_frames();
    for msg in batch.drain(..) {
        let frames = match msg {
            Message::Binary(bytes) if core.raw => {
                core.push(raw_delivery(false, bytes));
                continue;
            }
            Message::Text(text) if core.raw => {
                core.push(raw_delivery(true, text.into()));
                continue;
            }
            Message::Binary(bytes) => decode_message(bytes),
            _ => {
                tracing::warn!("ignoring a text message on v1");
                continue;
            }
        };
        for frame in frames {
            match frame {
                Ok(Frame::Server(ServerMsg::Goaway { reason })) => {
                    *goaway = Some(reason);
                    pumped.for_task = true;
                }
                Ok(frame) => core.proto.on_frame(frame, now),
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed frame"),
            }
        }
        // Once per message: the frames of a BATCH (DATA and ACK) never change the stream
        // received, which `collect` records with each message; a `sync` comes alone.
        core.collect();
    }
    // Answers to write (syncs, ACKs), or sends that wait for the window the ACKs read opened.
    pumped.for_task |= core.proto.queued_frames() > frames_before || !core.blocked.is_empty();
    // Deadlines the frames moved (presence, retransmission).
    core.arm();
    pumped
}

/// What the handles and the task share.
struct Shared {
    core: Mutex<Core>,
    /// The current connection's writing half (see [`Writer`]).
    writer: tokio::sync::Mutex<Writer>,
    /// The current connection's reading half (see [`Reader`]).
    reader: Mutex<Reader>,
    /// Who the socket wakes (see [`ReadWake`]).
    read_wake: Arc<ReadWake>,
    /// `read_wake` as the waker every read of the socket registers.
    read_waker: Waker,
    /// Wakes the task: frames to write, an ACK due, a blocked send, news from the reader, the
    /// client dropped.
    task_wake: Notify,
    /// Wakes the application's task in [`Client::next_event`]: events were pushed, or the task
    /// ended.
    events_waker: AtomicWaker,
    /// The [`Client`] was dropped: nobody takes events any more, so the task ends.
    client_gone: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A wspair.v1 client: one stream to the peer, kept across reconnects.
///
/// Dropping it ends the connection without `bye`; [`Client::close`] leaves for good.
pub struct Client {
    cmd: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.client_gone.store(true, Ordering::Release);
        self.shared.task_wake.notify_one();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn target(cfg: &Config, url_idx: usize, r#gen: u32) -> Target {
    Target {
        base_url: cfg.urls[url_idx % cfg.urls.len()].clone(),
        channel_id: cfg.channel_id.clone(),
        role: cfg.role,
        key: cfg.key.expect("connect draws a key when none is given"),
        r#gen,
        raw_fallback: cfg.raw_fallback,
        token: cfg.token.clone(),
    }
}

impl Client {
    /// Connects, and returns once the first connection is welcomed.
    ///
    /// Network errors and 503 are retried with backoff (wrap the call in a timeout to bound
    /// it); any other refusal is returned with its status and reason.
    pub async fn connect(config: Config) -> Result<Client, Error> {
        if config.urls.is_empty() {
            return Err(Error::Config("no URL".into()));
        }
        let mut config = config;
        // The stream id is derived from the key, which only this client knows (PROTOCOL.md §1).
        let sid = sid_of_key(*config.key.get_or_insert_with(random_key));
        let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
        let mut r#gen = 0u32;
        let mut url_idx = 0usize;
        let conn = loop {
            r#gen += 1;
            let t = target(&config, url_idx, r#gen);
            match open(&t).await {
                Ok(conn) => break conn,
                Err(e) if e.retryable() => {
                    tracing::debug!(url = %loggable(&t.base_url), error = ?e, "first connection failed; retrying");
                    url_idx += 1;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let proto = Protocol::new(
            sid,
            ProtocolConfig {
                ack_timeout: config.ack_timeout,
                presence_quiet: config.presence_quiet,
                presence_grace: config.presence_grace,
                ..ProtocolConfig::default()
            },
        );
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let read_wake = Arc::new(ReadWake {
            state: AtomicU8::new(0),
            app: AtomicWaker::new(),
            task: AtomicWaker::new(),
        });
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                proto,
                blocked: VecDeque::new(),
                raw: false,
                events: VecDeque::new(),
                fresh: false,
                stopped: false,
                conn_gen: r#gen,
                reconnects: 0,
                write_error: None,
                timer: Box::pin(tokio::time::sleep(IDLE_TIMER)),
                timer_at: None,
                task_at: None,
            }),
            writer: tokio::sync::Mutex::new(Writer {
                sink: None,
                encoded: BytesMut::with_capacity(ENCODE_CHUNK),
                out: Vec::new(),
            }),
            reader: Mutex::new(Reader {
                stream: None,
                end: None,
                goaway: None,
                batch: Vec::new(),
            }),
            read_waker: Waker::from(Arc::clone(&read_wake)),
            read_wake,
            task_wake: Notify::new(),
            events_waker: AtomicWaker::new(),
            client_gone: AtomicBool::new(false),
        });
        let mut task = Task {
            backoff: Backoff::new(config.backoff_min, config.backoff_max),
            cfg: config,
            live: false,
            sink_open: false,
            r#gen,
            url_idx,
            attempt: None,
            retry_at: None,
            goaway: false,
            closing: None,
            plain_out: VecDeque::new(),
            reconnect_waiters: Vec::new(),
            cmd_rx,
            shared: shared.clone(),
            stop: Stop::No,
        };
        task.adopt(conn, r#gen, true).await;
        tokio::spawn(task.run());
        Ok(Client {
            cmd: cmd_tx,
            shared,
        })
    }

    /// Sends a text message; waits while the window is full. Returns its seq (0 when the peer
    /// is raw: sent unnumbered, at most once).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<u64, Error> {
        self.handle().send_text(text).await
    }

    /// Sends a binary message; waits while the window is full. Returns its seq (0 when the
    /// peer is raw).
    pub async fn send_binary(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.handle().send_binary(payload).await
    }

    /// As [`Handle::feed_text`].
    pub async fn feed_text(&self, text: impl Into<String>) -> Result<u64, Error> {
        self.handle().feed_text(text).await
    }

    /// As [`Handle::feed_binary`].
    pub async fn feed_binary(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.handle().feed_binary(payload).await
    }

    /// As [`Handle::flush`].
    pub async fn flush(&self) -> Result<(), Error> {
        self.handle().flush().await
    }

    /// A cloneable handle that sends, reconnects and reads the counters while another task
    /// takes events from this client.
    pub fn handle(&self) -> Handle {
        Handle {
            cmd: self.cmd.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// The next event, or `None` once the client has stopped. A message handed out here counts
    /// as taken by the application and will be acknowledged.
    ///
    /// With no event waiting, it reads the socket itself rather than wait for the client's
    /// task to: a burst of messages then costs one wake-up, of the task that takes them.
    pub async fn next_event(&mut self) -> Option<Event> {
        let shared = &*self.shared;
        let _leave = Leave(&shared.read_wake);
        std::future::poll_fn(|cx| poll_event(shared, cx)).await
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> Stats {
        lock(&self.shared.core).stats()
    }

    /// As [`Handle::set_token`].
    pub async fn set_token(&self, token: impl Into<String>) -> Result<(), Error> {
        self.handle().set_token(token).await
    }

    /// Drops the current socket abruptly (no close frame) and reconnects to the next URL;
    /// returns once a new connection is welcomed, or the client stopped.
    pub async fn reconnect(&self) {
        self.handle().reconnect().await;
    }

    /// Leaves for good: waits up to `close_timeout` for the outbox to empty, sends `bye`, and
    /// closes with 1000. Errs with [`Error::CloseTimedOut`] when messages were still
    /// unacknowledged.
    pub async fn close(self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Close { reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

/// The sending side of a [`Client`], for a task other than the one taking its events.
#[derive(Clone)]
pub struct Handle {
    cmd: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// As [`Client::send_text`].
    pub async fn send_text(&self, text: impl Into<String>) -> Result<u64, Error> {
        self.send(true, Bytes::from(text.into()), true).await
    }

    /// As [`Client::send_binary`].
    pub async fn send_binary(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.send(false, payload.into(), true).await
    }

    /// Queues a text message for [`Handle::flush`], as `send_text` does for the client's task:
    /// same order, seq, window and guarantees, but nothing is written until this handle (or
    /// any other) flushes, or the client writes for its own reasons (an ACK, a resend).
    ///
    /// A sender of bursts feeds each message and flushes once at the end of the burst: the
    /// burst then leaves in one write from the sender's own task, as a raw client writing its
    /// socket would, where `send_text` wakes the client's task, which writes whatever was queued
    /// when it runs (on a busy runtime, often part of a burst).
    pub async fn feed_text(&self, text: impl Into<String>) -> Result<u64, Error> {
        self.send(true, Bytes::from(text.into()), false).await
    }

    /// As [`Handle::feed_text`], for a binary message.
    pub async fn feed_binary(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.send(false, payload.into(), false).await
    }

    /// Writes every frame queued so far (fed messages, and an ACK due) on the current
    /// connection, from the caller's task, with one flush; returns once they are written.
    /// While another flush or the client's task is writing, waits for it, then writes what it
    /// left. Without a connection there is nothing to write: the messages wait in the outbox
    /// and are sent on the next connection. A failed write ends the connection (the client
    /// reconnects), and is not an error here; [`Error::Closed`] once the client stopped.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut writer = self.shared.writer.lock().await;
        if lock(&self.shared.core).stopped {
            return Err(Error::Closed);
        }
        writer.write(&self.shared, None).await;
        Ok(())
    }

    /// Offers a message; `wake`: the client's task writes it (`send_*`), else it waits for a
    /// flush (`feed_*`).
    async fn send(&self, text: bool, payload: Bytes, wake: bool) -> Result<u64, Error> {
        let rx = {
            let mut core = lock(&self.shared.core);
            if core.stopped {
                return Err(Error::Closed);
            }
            // The fast path: nothing queued before this message and room in the window.
            let mut payload = payload;
            if core.blocked.is_empty() && !core.raw {
                // The clock is read only when the message starts the retransmission timer,
                // which the task's timer must then serve.
                let mut timer_started = false;
                let clock = || {
                    timer_started = true;
                    std_now()
                };
                match core.proto.offer(text, payload, clock) {
                    Ok(seq) => {
                        if timer_started {
                            core.arm();
                        }
                        let wake = wake && core.proto.has_frames();
                        drop(core);
                        if wake {
                            self.shared.task_wake.notify_one();
                        }
                        return Ok(seq);
                    }
                    Err((SendError::TooLarge { len, max }, _)) => {
                        return Err(Error::TooLarge { len, max });
                    }
                    Err((SendError::WindowFull, back)) => payload = back,
                }
            }
            let (reply, rx) = oneshot::channel();
            core.blocked.push_back(PendingSend {
                text,
                payload,
                reply,
            });
            rx
        };
        self.shared.task_wake.notify_one();
        rx.await.map_err(|_| Error::Closed)?
    }

    /// As [`Client::reconnect`].
    pub async fn reconnect(&self) {
        let (done, rx) = oneshot::channel();
        if self.cmd.send(Command::Reconnect { done }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// As [`Client::stats`].
    pub fn stats(&self) -> Stats {
        lock(&self.shared.core).stats()
    }

    /// Replaces the client token (README, "Client tokens"): every later connection presents
    /// it, and the open v1 connection hands it to its session (PROTOCOL.md §2.5), which then
    /// closes at the new token's expiry rather than the old one's. The node's answer arrives
    /// as [`Event::TokenRefreshed`] or [`Event::TokenRefused`]; while no v1 connection is open
    /// there is no answer, and the next connection's upgrade checks the token instead.
    pub async fn set_token(&self, token: impl Into<String>) -> Result<(), Error> {
        self.cmd
            .send(Command::SetToken(token.into()))
            .await
            .map_err(|_| Error::Closed)
    }
}

/// [`Client::next_event`]: the next event waiting, else what the socket holds.
fn poll_event(shared: &Shared, cx: &mut Context<'_>) -> Poll<Option<Event>> {
    loop {
        if let Some(next) = take_event(shared) {
            return Poll::Ready(next);
        }
        // Nothing waits: read the socket here rather than wait for the task to read it.
        shared.events_waker.register(cx.waker());
        shared.read_wake.app.register(cx.waker());
        shared.read_wake.app_reads();
        let pumped = pump(shared, &mut lock(&shared.reader), READ_BATCH);
        if pumped.for_task {
            shared.task_wake.notify_one();
        }
        if !pumped.dry {
            shared.read_wake.app_left_unread();
        }
        if !pumped.handled {
            // Events the task pushed before the wakers above were registered woke nobody.
            return match take_event(shared) {
                Some(next) => Poll::Ready(next),
                None => Poll::Pending,
            };
        }
    }
}

/// The next event of the queue (`Some(None)` once the client stopped), taken by the
/// application: a message may be acknowledged from now on. `None` when the queue is empty.
fn take_event(shared: &Shared) -> Option<Option<Event>> {
    let mut core = lock(&shared.core);
    // This reader looks at the queue now: nothing pushed so far needs to wake it.
    core.fresh = false;
    let Some(delivery) = core.events.pop_front() else {
        return core.stopped.then_some(None);
    };
    // The task stopped reading at a full queue: there is room again.
    let mut wake = core.events.len() + 1 == MAX_EVENTS;
    if let (Some(stream), Event::Message { seq, .. }) = (delivery.stream, &delivery.event)
        && *seq > 0
        && core.proto.take(stream, *seq, std_now)
    {
        // The task writes the ACK this made; the delayed one only needs the task's timer,
        // set here. For every other message nothing changed.
        if core.proto.has_frames() {
            wake = true;
        } else {
            core.arm();
        }
    }
    drop(core);
    if wake {
        shared.task_wake.notify_one();
    }
    Some(Some(delivery.event))
}

type Attempt = Pin<Box<dyn Future<Output = (u32, Result<Conn, OpenError>)> + Send>>;

struct PendingSend {
    text: bool,
    payload: Bytes,
    reply: oneshot::Sender<Result<u64, Error>>,
}

struct Closing {
    reply: oneshot::Sender<Result<(), Error>>,
    deadline: Instant,
}

/// Why the task ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// The handle is gone: nobody to tell anything.
    HandleGone,
    /// Another client took the role: tell the application, then end.
    Displaced,
}

/// What woke the task.
enum Wake {
    Command(Option<Command>),
    /// The task read the socket, or found what the application's task read for it.
    Read,
    Attempt(u32, Result<Box<Conn>, OpenError>),
    Timer,
    Progress,
}

/// An application message of a raw connection.
fn raw_delivery(text: bool, payload: Bytes) -> Delivery {
    Delivery {
        stream: None,
        event: Event::Message {
            text,
            payload,
            seq: 0,
        },
    }
}

/// The background task of one client.
struct Task {
    cfg: Config,
    /// Whether a connection is current (its halves in [`Shared::reader`] and
    /// [`Shared::writer`]).
    live: bool,
    /// Whether [`Writer::sink`] may still hold the writing half of a connection that is gone
    /// (the task releases it, so the socket closes).
    sink_open: bool,
    /// The last generation used for a connection attempt.
    r#gen: u32,
    url_idx: usize,
    attempt: Option<Attempt>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    goaway: bool,
    closing: Option<Closing>,
    /// Messages written as they are, after the state machine's frames: a raw connection's
    /// messages, and requests to the node.
    plain_out: VecDeque<Message>,
    reconnect_waiters: Vec<oneshot::Sender<()>>,
    cmd_rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    stop: Stop,
}

fn std_now() -> std::time::Instant {
    Instant::now().into_std()
}

/// The task's read of the socket: ready when it handled frames or has news from the reader.
/// While the application's task waits in `next_event`, that one reads instead.
fn poll_read(shared: &Shared, limit: usize, cx: &mut Context<'_>) -> Poll<()> {
    shared.read_wake.task.register(cx.waker());
    let mut reader = lock(&shared.reader);
    if reader.end.is_some() || reader.goaway.is_some() {
        return Poll::Ready(());
    }
    if shared.read_wake.app_reading() {
        return Poll::Pending;
    }
    let pumped = pump(shared, &mut reader, limit);
    if pumped.handled || pumped.for_task {
        Poll::Ready(())
    } else {
        Poll::Pending
    }
}

async fn next_attempt(attempt: &mut Option<Attempt>) -> (u32, Result<Conn, OpenError>) {
    match attempt {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Task {
    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.shared.core)
    }

    async fn run(mut self) {
        loop {
            self.check_connection().await;
            self.retry_blocked();
            self.write_frames().await;
            if self.stop != Stop::No || self.finish_close().await {
                break;
            }
            let wake = self.wait().await;
            self.handle(wake).await;
        }
        let blocked: Vec<PendingSend> = {
            let mut core = self.core();
            core.stopped = true;
            core.fresh = true;
            if self.stop != Stop::Displaced {
                // Nobody is told anything after a close or once the client is gone.
                core.events.clear();
            }
            core.blocked.drain(..).collect()
        };
        for send in blocked {
            let _ = send.reply.send(Err(Error::Closed));
        }
        self.publish();
        for waiter in self.reconnect_waiters.drain(..) {
            let _ = waiter.send(());
        }
        if self.end_stream() {
            let sink = self.shared.writer.lock().await.sink.take();
            self.sink_open = false;
            if let Some(mut sink) = sink {
                let _ = sink.send(Message::Close(None)).await;
            }
        }
    }

    /// Drops the current connection's reading half; returns whether there was one.
    fn end_stream(&mut self) -> bool {
        let mut reader = lock(&self.shared.reader);
        reader.stream = None;
        reader.end = None;
        reader.goaway = None;
        std::mem::take(&mut self.live)
    }

    /// Ends the connection when a write on it failed, and releases the writing half of a
    /// connection that ended, so its socket closes.
    async fn check_connection(&mut self) {
        let failed = self.core().write_error.take();
        if let Some(reason) = failed
            && self.end_stream()
        {
            self.disconnected(None, reason);
        }
        if !self.live && self.sink_open {
            self.shared.writer.lock().await.sink = None;
            self.sink_open = false;
        }
    }

    /// Collects the state machine's events and wakes the reader if there are new ones.
    fn publish(&self) {
        let fresh = {
            let mut core = self.core();
            core.collect();
            std::mem::take(&mut core.fresh)
        };
        if fresh {
            self.shared.events_waker.wake();
        }
    }

    /// Publishes new events (as [`Task::publish`]) and waits for something to do.
    async fn wait(&mut self) -> Wake {
        let task_at = [self.retry_at, self.closing.as_ref().map(|c| c.deadline)]
            .into_iter()
            .flatten()
            .min();
        let (queued, fresh) = {
            let mut core = self.core();
            core.collect();
            core.task_at = task_at;
            core.arm();
            let fresh = std::mem::take(&mut core.fresh);
            (core.events.len(), fresh)
        };
        if fresh {
            self.shared.events_waker.wake();
        }
        let can_read = self.closing.is_some() || queued < MAX_EVENTS;
        // About what the event queue has room for (most frames make one event at most), so
        // an application that stops reading stops this client's reads.
        let limit = if self.closing.is_some() {
            READ_BATCH
        } else {
            MAX_EVENTS.saturating_sub(queued).clamp(1, READ_BATCH)
        };
        let Task {
            cmd_rx,
            attempt,
            shared,
            ..
        } = self;
        let read = std::future::poll_fn(|cx| poll_read(shared, limit, cx));
        let timer = std::future::poll_fn(|cx| lock(&shared.core).timer.as_mut().poll(cx));
        tokio::select! {
            cmd = cmd_rx.recv() => Wake::Command(cmd),
            () = read, if can_read => Wake::Read,
            (r#gen, result) = next_attempt(attempt) => Wake::Attempt(r#gen, result.map(Box::new)),
            () = shared.task_wake.notified() => Wake::Progress,
            () = timer => Wake::Timer,
        }
    }

    async fn handle(&mut self, wake: Wake) {
        let now = Instant::now();
        match wake {
            Wake::Command(None) => self.stop = Stop::HandleGone,
            Wake::Command(Some(Command::Reconnect { done })) => {
                self.reconnect_waiters.push(done);
                if self.end_stream() {
                    self.disconnected(None, "reconnect requested".into());
                    self.retry_at = None;
                    if self.attempt.is_none() {
                        self.start_attempt();
                    }
                }
            }
            Wake::Command(Some(Command::SetToken(token))) => {
                let raw = self.core().raw;
                if self.live && !raw {
                    let request = Frame::Node(NodeMsg::Token {
                        token: token.clone(),
                    });
                    self.plain_out.push_back(Message::Binary(request.encode()));
                }
                self.cfg.token = Some(token);
            }
            Wake::Command(Some(Command::Close { reply })) => {
                self.closing = Some(Closing {
                    reply,
                    deadline: now + self.cfg.close_timeout,
                });
            }
            Wake::Read => self.reader_news(),
            Wake::Attempt(r#gen, result) => {
                self.attempt = None;
                match result {
                    Ok(conn) => self.adopt(*conn, r#gen, false).await,
                    Err(e) => self.attempt_failed(e),
                }
            }
            Wake::Timer => {
                {
                    let mut core = self.core();
                    core.proto.on_tick(now.into_std());
                    core.collect();
                }
                if self.retry_at.is_some_and(|t| t <= now) {
                    self.retry_at = None;
                    if self.attempt.is_none() && (!self.live || self.goaway) {
                        self.start_attempt();
                    }
                }
            }
            Wake::Progress => {
                if self.shared.client_gone.load(Ordering::Acquire) {
                    self.stop = Stop::HandleGone;
                }
                self.reader_news();
            }
        }
    }

    /// Acts on what a read of the socket left for the task: a goaway, the end of the connection.
    fn reader_news(&mut self) {
        let (goaway, end) = {
            let mut reader = lock(&self.shared.reader);
            (reader.goaway.take(), reader.end.take())
        };
        if let Some(reason) = goaway {
            tracing::info!(reason, "goaway: moving to another node");
            self.goaway = true;
            self.retry_at = None;
            if self.attempt.is_none() {
                self.start_attempt();
            }
        }
        if let Some((code, reason)) = end
            && self.end_stream()
        {
            self.disconnected(code, reason);
        }
    }

    /// The current connection is gone (its reading half dropped; the task releases the writing
    /// half before it next writes): tell, and plan the next.
    fn disconnected(&mut self, code: Option<u16>, reason: String) {
        tracing::info!(?code, reason, "disconnected");
        {
            let mut core = self.core();
            core.proto.on_disconnected(std_now());
            core.collect();
            if code == Some(CODE_DISPLACED) && self.attempt.is_some() {
                // This client's own next connection took the slot (goaway): the expected end
                // of the old one, not news.
                return;
            }
            core.push(Delivery {
                stream: None,
                event: Event::Disconnected { code, reason },
            });
        }
        if code == Some(CODE_DISPLACED) || code == Some(CODE_OPERATOR) {
            // Another client took the role: coming back would displace it in turn. Or an
            // operator closed the channel: coming back would undo that.
            self.stop = Stop::Displaced;
            return;
        }
        if self.attempt.is_none() {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        }
    }

    fn start_attempt(&mut self) {
        self.r#gen = self.r#gen.saturating_add(1);
        self.url_idx += 1;
        let t = target(&self.cfg, self.url_idx, self.r#gen);
        let r#gen = self.r#gen;
        tracing::debug!(url = %loggable(&t.base_url), r#gen, "connecting");
        self.attempt = Some(Box::pin(async move { (r#gen, open(&t).await) }));
    }

    fn attempt_failed(&mut self, e: OpenError) {
        tracing::warn!(error = ?e, "connection attempt failed");
        if let OpenError::Refused { status, reason } = &e {
            self.core().push(Delivery {
                stream: None,
                event: Event::Refused {
                    status: *status,
                    reason: reason.clone(),
                },
            });
        }
        if !self.live || self.goaway {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        }
    }

    /// A welcomed connection becomes the current one; an old one (after `goaway`) is dropped.
    async fn adopt(&mut self, conn: Conn, r#gen: u32, first: bool) {
        let (sink, stream) = conn.ws.split();
        // The sink changes and the state machine learns of the connection under the writer's
        // lock: no writer takes frames of the old connection and writes them on this one.
        let mut writer = self.shared.writer.lock().await;
        writer.sink = Some(sink);
        {
            let mut reader = lock(&self.shared.reader);
            reader.stream = Some(stream);
            reader.end = None;
            reader.goaway = None;
        }
        self.live = true;
        self.sink_open = true;
        let now = std_now();
        self.goaway = false;
        self.retry_at = None;
        self.backoff.reset();
        {
            let mut core = self.core();
            // A failed write of the old connection no longer matters.
            core.write_error = None;
            core.conn_gen = r#gen;
            if !first {
                core.reconnects += 1;
            }
            match conn.welcome {
                Some(welcome) => {
                    core.raw = false;
                    core.proto.on_connected(r#gen, now);
                    core.proto
                        .on_frame(Frame::Server(ServerMsg::Welcome(welcome)), now);
                }
                None => {
                    core.raw = true;
                    core.proto.on_disconnected(now);
                    core.collect();
                    core.push(Delivery {
                        stream: None,
                        event: Event::Connected {
                            r#gen,
                            node: String::new(),
                        },
                    });
                }
            }
            core.collect();
        }
        drop(writer);
        // Whoever reads (the application's task, if it waits) starts on the new socket.
        self.shared.read_waker.wake_by_ref();
        for waiter in self.reconnect_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Offers waiting messages to the state machine while the window lets them in.
    fn retry_blocked(&mut self) {
        let mut now = None;
        let mut replies = Vec::new();
        {
            let mut core = lock(&self.shared.core);
            while let Some(front) = core.blocked.front() {
                if front.reply.is_closed() {
                    core.blocked.pop_front();
                    continue;
                }
                if core.raw {
                    if !self.live {
                        break;
                    }
                    let send = core.blocked.pop_front().expect("front exists");
                    self.plain_out
                        .push_back(raw_message(send.text, send.payload));
                    replies.push((send.reply, Ok(0)));
                    continue;
                }
                let mut send = core.blocked.pop_front().expect("front exists");
                let clock = || *now.get_or_insert_with(std_now);
                let result = match core.proto.offer(send.text, send.payload, clock) {
                    Err((SendError::WindowFull, payload)) => {
                        send.payload = payload;
                        core.blocked.push_front(send);
                        break;
                    }
                    Err((SendError::TooLarge { len, max }, _)) => Err(Error::TooLarge { len, max }),
                    Ok(seq) => Ok(seq),
                };
                replies.push((send.reply, result));
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
    }

    /// Writes every frame queued since the last write, then the task's own messages, and
    /// flushes once.
    async fn write_frames(&mut self) {
        let failed = {
            let mut writer = self.shared.writer.lock().await;
            writer.write(&self.shared, Some(&mut self.plain_out)).await
        };
        if failed {
            self.check_connection().await;
        }
    }

    /// Ends a requested close once the outbox is empty or the timeout passed. Returns whether
    /// the task is done.
    async fn finish_close(&mut self) -> bool {
        let Some(closing) = &self.closing else {
            return false;
        };
        let (unacknowledged, raw) = {
            let core = self.core();
            (core.proto.outbox_len() + core.blocked.len(), core.raw)
        };
        if unacknowledged > 0 && Instant::now() < closing.deadline {
            return false;
        }
        if self.live && !raw {
            self.core().proto.bye();
            self.write_frames().await;
        }
        let stream = lock(&self.shared.reader).stream.take();
        self.end_stream();
        if let Some(mut stream) = stream {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let sink = self.shared.writer.lock().await.sink.take();
            self.sink_open = false;
            if let Some(mut sink) = sink
                && sink.send(Message::Close(Some(frame))).await.is_ok()
            {
                let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
                    while let Some(Ok(_)) = stream.next().await {}
                })
                .await;
            }
        }
        let closing = self.closing.take().expect("checked above");
        let result = if unacknowledged == 0 {
            Ok(())
        } else {
            Err(Error::CloseTimedOut { unacknowledged })
        };
        let _ = closing.reply.send(result);
        self.stop = Stop::HandleGone;
        true
    }
}
