//! The async client: a small handle, and one background task that owns the WebSocket and the
//! [`Protocol`].
//!
//! The task is the only place where the state machine is touched, so it needs no locks: the
//! handle sends it commands over a channel, and receives events from a bounded channel. A
//! message counts as taken (and so may be acknowledged) only when [`Client::next_event`] hands
//! it out: an application that stops reading stops its peer (PROTOCOL.md §4, §7).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::backoff::{Backoff, random_sid};
use crate::config::Config;
use crate::connection::{Conn, OpenError, Target, Ws, describe_close, open, raw_message};
use crate::error::Error;
use crate::event::Event;
use crate::frame::{Frame, ServerMsg};
use crate::protocol::{Protocol, ProtocolConfig, SendError};

/// Events the task holds for the application beyond the channel before it stops reading.
const MAX_PENDING: usize = 256;
/// Capacity of the channel of events to the application.
const EVENT_CAPACITY: usize = 256;
/// How long a closing client waits for the node's close reply.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);
/// The close code of a session displaced by another one.
const CODE_DISPLACED: u16 = 4001;

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

enum Command {
    Send {
        text: bool,
        payload: Bytes,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Reconnect {
        done: oneshot::Sender<()>,
    },
    Close {
        reply: oneshot::Sender<Result<(), Error>>,
    },
}

/// An event on its way to the application, with the stream a message belongs to.
struct Delivery {
    stream: Option<u64>,
    event: Event,
}

/// What the handle and the task share besides channels.
struct Shared {
    stats: Mutex<Stats>,
    /// The last message the application took: (stream, seq).
    taken: Mutex<Option<(u64, u64)>>,
    taken_notify: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A wspair.v1 client: one stream to the peer, kept across reconnects.
///
/// Dropping it ends the connection without `bye`; [`Client::close`] leaves for good.
pub struct Client {
    cmd: mpsc::Sender<Command>,
    events: mpsc::Receiver<Delivery>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn target(cfg: &Config, url_idx: usize, sid: u64, r#gen: u32) -> Target {
    Target {
        base_url: cfg.urls[url_idx % cfg.urls.len()].clone(),
        channel_id: cfg.channel_id.clone(),
        role: cfg.role,
        sid,
        r#gen,
        raw_fallback: cfg.raw_fallback,
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
        if config.sid == Some(0) {
            return Err(Error::Config("a sid is never zero".into()));
        }
        let sid = config.sid.unwrap_or_else(random_sid);
        let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
        let mut r#gen = 0u32;
        let mut url_idx = 0usize;
        let conn = loop {
            r#gen += 1;
            let t = target(&config, url_idx, sid, r#gen);
            match open(&t).await {
                Ok(conn) => break conn,
                Err(e) if e.retryable() => {
                    tracing::debug!(url = %t.base_url, error = ?e, "first connection failed; retrying");
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
        let (events_tx, events_rx) = mpsc::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            stats: Mutex::new(Stats {
                sid,
                ..Stats::default()
            }),
            taken: Mutex::new(None),
            taken_notify: Notify::new(),
        });
        let mut task = Task {
            backoff: Backoff::new(config.backoff_min, config.backoff_max),
            cfg: config,
            proto,
            ws: None,
            raw: false,
            r#gen,
            conn_gen: r#gen,
            url_idx,
            attempt: None,
            retry_at: None,
            goaway: false,
            closing: None,
            blocked: VecDeque::new(),
            raw_out: VecDeque::new(),
            pending: VecDeque::new(),
            reconnect_waiters: Vec::new(),
            events_tx,
            cmd_rx,
            shared: shared.clone(),
            reconnects: 0,
            stop: Stop::No,
        };
        task.adopt(conn, r#gen, true);
        tokio::spawn(task.run());
        Ok(Client {
            cmd: cmd_tx,
            events: events_rx,
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
    pub async fn next_event(&mut self) -> Option<Event> {
        let delivery = self.events.recv().await?;
        if let (Some(stream), Event::Message { seq, .. }) = (delivery.stream, &delivery.event)
            && *seq > 0
        {
            *lock(&self.shared.taken) = Some((stream, *seq));
            self.shared.taken_notify.notify_one();
        }
        Some(delivery.event)
    }

    /// A snapshot of the client's counters.
    pub fn stats(&self) -> Stats {
        *lock(&self.shared.stats)
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
        self.send(true, Bytes::from(text.into())).await
    }

    /// As [`Client::send_binary`].
    pub async fn send_binary(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.send(false, payload.into()).await
    }

    async fn send(&self, text: bool, payload: Bytes) -> Result<u64, Error> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Send {
                text,
                payload,
                reply,
            })
            .await
            .map_err(|_| Error::Closed)?;
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
        *lock(&self.shared.stats)
    }
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
    Ws(Option<Result<Message, tungstenite::Error>>),
    Attempt(u32, Result<Box<Conn>, OpenError>),
    Timer,
    Progress,
    HandleGone,
}

/// The background task of one client.
struct Task {
    cfg: Config,
    proto: Protocol,
    ws: Option<Ws>,
    /// Whether the current connection is raw (the server did not accept v1).
    raw: bool,
    /// The last generation used for a connection attempt.
    r#gen: u32,
    /// The generation of the current connection.
    conn_gen: u32,
    url_idx: usize,
    attempt: Option<Attempt>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    goaway: bool,
    closing: Option<Closing>,
    blocked: VecDeque<PendingSend>,
    raw_out: VecDeque<Message>,
    pending: VecDeque<Delivery>,
    reconnect_waiters: Vec<oneshot::Sender<()>>,
    events_tx: mpsc::Sender<Delivery>,
    cmd_rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    reconnects: u64,
    stop: Stop,
}

fn std_now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn next_message(ws: &mut Option<Ws>) -> Option<Result<Message, tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn next_attempt(attempt: &mut Option<Attempt>) -> (u32, Result<Conn, OpenError>) {
    match attempt {
        Some(f) => f.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(mut self) {
        loop {
            if let Some((stream, seq)) = lock(&self.shared.taken).take() {
                self.proto.on_taken(stream, seq, std_now());
            }
            self.retry_blocked();
            self.write_frames().await;
            self.collect_events();
            self.publish_stats();
            if self.stop != Stop::No || self.finish_close().await {
                break;
            }
            let wake = self.wait().await;
            self.handle(wake).await;
        }
        for send in self.blocked.drain(..) {
            let _ = send.reply.send(Err(Error::Closed));
        }
        for waiter in self.reconnect_waiters.drain(..) {
            let _ = waiter.send(());
        }
        if self.stop == Stop::Displaced {
            for delivery in self.pending.drain(..) {
                if self.events_tx.send(delivery).await.is_err() {
                    break;
                }
            }
        }
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }

    async fn wait(&mut self) -> Wake {
        let deadline = [
            self.proto.poll_timeout().map(Instant::from_std),
            self.retry_at,
            self.closing.as_ref().map(|c| c.deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        let can_read = self.closing.is_some() || self.pending.len() < MAX_PENDING;
        let has_pending = !self.pending.is_empty();
        let Task {
            cmd_rx,
            ws,
            attempt,
            events_tx,
            pending,
            shared,
            ..
        } = self;
        tokio::select! {
            cmd = cmd_rx.recv() => Wake::Command(cmd),
            msg = next_message(ws), if can_read => Wake::Ws(msg),
            (r#gen, result) = next_attempt(attempt) => Wake::Attempt(r#gen, result.map(Box::new)),
            permit = events_tx.reserve(), if has_pending => match permit {
                Ok(permit) => {
                    permit.send(pending.pop_front().expect("pending is not empty"));
                    Wake::Progress
                }
                Err(_) => Wake::HandleGone,
            },
            () = shared.taken_notify.notified() => Wake::Progress,
            () = sleep_until(deadline) => Wake::Timer,
        }
    }

    async fn handle(&mut self, wake: Wake) {
        let now = Instant::now();
        match wake {
            Wake::Command(None) | Wake::HandleGone => self.stop = Stop::HandleGone,
            Wake::Command(Some(Command::Send {
                text,
                payload,
                reply,
            })) => self.blocked.push_back(PendingSend {
                text,
                payload,
                reply,
            }),
            Wake::Command(Some(Command::Reconnect { done })) => {
                self.reconnect_waiters.push(done);
                if self.ws.take().is_some() {
                    self.disconnected(None, "reconnect requested".into());
                    self.retry_at = None;
                    if self.attempt.is_none() {
                        self.start_attempt();
                    }
                }
            }
            Wake::Command(Some(Command::Close { reply })) => {
                self.closing = Some(Closing {
                    reply,
                    deadline: now + self.cfg.close_timeout,
                });
            }
            Wake::Ws(msg) => self.on_message(msg),
            Wake::Attempt(r#gen, result) => {
                self.attempt = None;
                match result {
                    Ok(conn) => self.adopt(*conn, r#gen, false),
                    Err(e) => self.attempt_failed(e),
                }
            }
            Wake::Timer => {
                self.proto.on_tick(now.into_std());
                if self.retry_at.is_some_and(|t| t <= now) {
                    self.retry_at = None;
                    if self.attempt.is_none() && (self.ws.is_none() || self.goaway) {
                        self.start_attempt();
                    }
                }
            }
            Wake::Progress => {}
        }
    }

    fn on_message(&mut self, msg: Option<Result<Message, tungstenite::Error>>) {
        let now = std_now();
        match msg {
            Some(Ok(Message::Binary(bytes))) if self.raw => self.deliver_raw(false, bytes),
            Some(Ok(Message::Text(text))) if self.raw => self.deliver_raw(true, text.into()),
            Some(Ok(Message::Binary(bytes))) => match Frame::decode(bytes) {
                Ok(Frame::Server(ServerMsg::Goaway { reason })) => {
                    tracing::info!(reason, "goaway: moving to another node");
                    self.goaway = true;
                    self.retry_at = None;
                    if self.attempt.is_none() {
                        self.start_attempt();
                    }
                }
                Ok(frame) => {
                    self.proto.on_frame(frame, now);
                    self.collect_events();
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed frame"),
            },
            Some(Ok(Message::Text(_))) => tracing::warn!("ignoring a text message on v1"),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.as_ref().map(|f| u16::from(f.code));
                let reason = describe_close(frame.as_ref());
                self.ws = None;
                self.disconnected(code, reason);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(e)) => {
                self.ws = None;
                self.disconnected(None, e.to_string());
            }
            None => {
                self.ws = None;
                self.disconnected(None, "connection closed".into());
            }
        }
    }

    fn deliver_raw(&mut self, text: bool, payload: Bytes) {
        self.pending.push_back(Delivery {
            stream: None,
            event: Event::Message {
                text,
                payload,
                seq: 0,
            },
        });
    }

    /// The current connection is gone (`self.ws` already taken): tell, and plan the next.
    fn disconnected(&mut self, code: Option<u16>, reason: String) {
        tracing::info!(?code, reason, "disconnected");
        self.proto.on_disconnected(std_now());
        self.collect_events();
        if code == Some(CODE_DISPLACED) && self.attempt.is_some() {
            // This client's own next connection took the slot (goaway): the expected end of
            // the old one, not news.
            return;
        }
        self.pending.push_back(Delivery {
            stream: None,
            event: Event::Disconnected { code, reason },
        });
        if code == Some(CODE_DISPLACED) {
            // Another client took the role: coming back would displace it in turn.
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
        let t = target(&self.cfg, self.url_idx, self.proto.sid(), self.r#gen);
        let r#gen = self.r#gen;
        tracing::debug!(url = %t.base_url, r#gen, "connecting");
        self.attempt = Some(Box::pin(async move { (r#gen, open(&t).await) }));
    }

    fn attempt_failed(&mut self, e: OpenError) {
        tracing::warn!(error = ?e, "connection attempt failed");
        if let OpenError::Refused { status, reason } = &e {
            self.pending.push_back(Delivery {
                stream: None,
                event: Event::Refused {
                    status: *status,
                    reason: reason.clone(),
                },
            });
        }
        if self.ws.is_none() || self.goaway {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        }
    }

    /// A welcomed connection becomes the current one; an old one (after `goaway`) is dropped.
    fn adopt(&mut self, conn: Conn, r#gen: u32, first: bool) {
        let now = std_now();
        self.ws = Some(conn.ws);
        self.conn_gen = r#gen;
        self.goaway = false;
        self.retry_at = None;
        self.backoff.reset();
        if !first {
            self.reconnects += 1;
        }
        match conn.welcome {
            Some(welcome) => {
                self.raw = false;
                self.proto.on_connected(r#gen, now);
                self.proto
                    .on_frame(Frame::Server(ServerMsg::Welcome(welcome)), now);
            }
            None => {
                self.raw = true;
                self.proto.on_disconnected(now);
                self.pending.push_back(Delivery {
                    stream: None,
                    event: Event::Connected {
                        r#gen,
                        node: String::new(),
                    },
                });
            }
        }
        self.collect_events();
        for waiter in self.reconnect_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }

    /// Offers waiting messages to the state machine while the window lets them in.
    fn retry_blocked(&mut self) {
        let now = std_now();
        while let Some(front) = self.blocked.front() {
            if front.reply.is_closed() {
                self.blocked.pop_front();
                continue;
            }
            if self.raw {
                if self.ws.is_none() {
                    break;
                }
                let send = self.blocked.pop_front().expect("front exists");
                self.raw_out.push_back(raw_message(send.text, send.payload));
                let _ = send.reply.send(Ok(0));
                continue;
            }
            let result = self.proto.send(front.text, front.payload.clone(), now);
            let result = match result {
                Err(SendError::WindowFull) => break,
                Err(SendError::TooLarge { len, max }) => Err(Error::TooLarge { len, max }),
                Ok(seq) => Ok(seq),
            };
            let send = self.blocked.pop_front().expect("front exists");
            let _ = send.reply.send(result);
        }
    }

    async fn write_frames(&mut self) {
        let Some(ws) = self.ws.as_mut() else {
            while self.proto.poll_frame().is_some() {}
            self.raw_out.clear();
            return;
        };
        let mut wrote = false;
        let mut failed = None;
        while let Some(msg) = self
            .proto
            .poll_frame()
            .map(|f| Message::Binary(f.encode()))
            .or_else(|| self.raw_out.pop_front())
        {
            if let Err(e) = ws.feed(msg).await {
                failed = Some(e);
                break;
            }
            wrote = true;
        }
        if wrote
            && failed.is_none()
            && let Err(e) = ws.flush().await
        {
            failed = Some(e);
        }
        if let Some(e) = failed {
            self.ws = None;
            self.disconnected(None, e.to_string());
        }
    }

    fn collect_events(&mut self) {
        while let Some(event) = self.proto.poll_event() {
            let stream = match event {
                Event::Message { seq, .. } if seq > 0 => self.proto.rx_sid(),
                _ => None,
            };
            self.pending.push_back(Delivery { stream, event });
        }
    }

    fn publish_stats(&self) {
        let p = &self.proto;
        *lock(&self.shared.stats) = Stats {
            sid: p.sid(),
            r#gen: self.conn_gen,
            outbox_len: p.outbox_len(),
            next_seq: p.next_seq(),
            acked: p.acked(),
            rx_hw: p.rx_hw(),
            reconnects: self.reconnects,
            duplicates_dropped: p.duplicates_dropped(),
            gaps_seen: p.gaps_seen(),
        };
    }

    /// Ends a requested close once the outbox is empty or the timeout passed. Returns whether
    /// the task is done.
    async fn finish_close(&mut self) -> bool {
        let Some(closing) = &self.closing else {
            return false;
        };
        let unacknowledged = self.proto.outbox_len() + self.blocked.len();
        if unacknowledged > 0 && Instant::now() < closing.deadline {
            return false;
        }
        if self.ws.is_some() && !self.raw {
            self.proto.bye();
            self.write_frames().await;
        }
        if let Some(mut ws) = self.ws.take() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            if ws.close(Some(frame)).await.is_ok() {
                let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
                    while let Some(Ok(_)) = ws.next().await {}
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
