//! One client connection: reads messages from the client and relays them to its peer, and
//! writes the messages its peer sent, in one task that owns the WebSocket.
//!
//! One task per session, not a reader and a writer: the task polls the socket, its outbound
//! queue, the peer's queue and a ticker in one `poll_fn` ([`Session::poll_event`]), so no lock
//! guards the socket and an idle session costs one task.
//!
//! Backpressure: a message read from the client goes into the peer's bounded queue
//! (`outer.send-queue`). When that queue is full the session holds the message and stops
//! reading from its client, so TCP pushes back on the sender; it keeps writing its own outbound
//! queue meanwhile, so two sessions that both wait on each other still drain. A peer that takes
//! nothing for `outer.stall-timeout` is closed with 1013, its queue is dropped (and counted),
//! and the sender flows again.
//!
//! The peer's handle is cached: relaying a message touches the hub's lock only when the cached
//! peer is gone (closed or replaced), never in steady state.
//!
//! Rate limits (`outer::rate`), when set, apply to what the client sends: a message over them is
//! held like a message for a full queue (reads stop until its moment), or closes the session
//! with 1008. Time spent held is not idle time. Without limits a message costs one branch more.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::{Sink, SinkExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::{debug, info};
use yawc::{Frame, HttpWebSocket, OpCode, WebSocketError};

use super::close::{CloseReason, PendingCloses};
use super::delivery::Delivery;
use super::rate::RateLimiter;
use super::v1::{FromClient, V1Session, outgoing_raw};
use crate::auth::{self, Auth};
use crate::budget::QueueBudget;
use crate::config::{CLOSE_TIMEOUT, OuterConfig, RateAction, V1Config};
use crate::histograms::LocalSizes;
use crate::hub::Claim;
use crate::metrics::Metrics;
use crate::node::Incarnation;
use crate::pair::{Message, MessageKind};
use crate::router::Router;

/// Frames a session reads in a row before it yields its worker to the other tasks on it.
///
/// Measured with one-byte messages (`scripts/attacks.py cpu`): yielding every 64 frames, or
/// spending tokio's budget per frame (128), cost 35 % more CPU per message than never
/// yielding, because the receiving session then writes smaller bursts; at 256 the cost is
/// within noise, and a message of another pair on the worker waits a few hundred µs at most.
const READ_BUDGET: u32 = 256;

/// What every session of a node shares.
#[derive(Debug)]
pub struct SessionContext {
    /// Timeouts and limits.
    pub config: OuterConfig,
    /// Where peers are found, here or on other nodes.
    pub router: Arc<Router>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the node shuts down; tells a stop by shutdown from one by replacement.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The wspair.v1 settings.
    pub v1: V1Config,
    /// Cancelled when the node starts draining (see `crate::drain`): upgrades are refused, and
    /// a session stopped from then on closes with 1001.
    pub draining: tokio_util::sync::CancellationToken,
    /// Client tokens (`auth.*`), when required: checked at the upgrade, and again when a v1
    /// client hands its session a fresh one.
    pub auth: Option<Arc<Auth>>,
    /// Why sessions stopped from outside were stopped (the admin API closing a channel).
    pub closes: PendingCloses,
}

impl SessionContext {
    /// How often a session checks its timeouts and pings: fine enough that idle and stall
    /// timeouts fire within a quarter of their length, and the message timeout within its
    /// length (it may start counting up to a tick late).
    fn tick_period(&self) -> Duration {
        let config = &self.config;
        config
            .ping_interval
            .min(config.idle_timeout / 4)
            .min(config.stall_timeout / 4)
            .min(config.message_timeout / 2)
            .max(Duration::from_millis(10))
    }
}

/// Something that needs the session's attention.
enum Event {
    /// A frame, or a read error, from the client.
    Read(Result<Frame, WebSocketError>),
    /// Writing to the client failed.
    WriteFailed(WebSocketError),
    /// The session must stop: replaced, or the node shuts down.
    Stop,
    /// Time to check timeouts and maybe ping.
    Tick,
    /// The client's token expired (`auth.*`).
    TokenExpired,
}

/// The state of one session; [`run`] drives it.
struct Session {
    ws: HttpWebSocket,
    outbound_rx: mpsc::Receiver<Message>,
    claim: Claim,
    ctx: Arc<SessionContext>,
    /// Sends what the client says to its peer.
    delivery: Delivery,
    /// Messages of one remote sender written since the ledger last heard of it; settled once
    /// per burst (or when the sender changes), not per message.
    unsettled: Option<(Incarnation, u64)>,
    /// Fires when the session must stop (its `stop` token, a child of the shutdown token).
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    ticker: Interval,
    /// When the client's token expires (`auth.*`); boxed, so a session without one holds a
    /// null pointer only.
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Frames written to the client's buffer and not yet flushed.
    unflushed: bool,
    ping_due: bool,
    /// Counts data messages read; a change between ticks means a message was completed.
    messages_read: u64,
    /// What the session carried, for its closing log line.
    traffic: Traffic,
    /// Counts messages dequeued and flushes done; compared at each tick to detect a stall.
    write_progress: u64,
    seen: TickMarks,
    client_close_code: Option<u16>,
    /// True when the library has already queued the close frame (an echo or a protocol
    /// error's), so the server must not send a second one.
    library_closed: bool,
    /// The state of a wspair.v1 session; `None` for a raw one.
    v1: Option<Box<V1Session>>,
    /// The client's rate limits (`outer.max-*-per-second`); `None`, a null pointer, when none
    /// is set.
    rate: Option<Box<RateLimiter>>,
}

/// What a session carried, and since when: its closing log line says it.
struct Traffic {
    opened: Instant,
    /// Sizes of the messages read since they were last added to the node's histogram.
    sizes: LocalSizes,
    /// Payload bytes of the data messages read from the client.
    bytes_read: u64,
    /// Messages written to the client, and their payload bytes.
    messages_written: u64,
    bytes_written: u64,
}

/// What one burst of writes took from the queue.
#[derive(Default)]
struct Written {
    messages: u64,
    /// Messages that took room from the queue's budget, and their bytes.
    local: usize,
    local_bytes: usize,
}

/// What the last ticks saw, to measure idle and stall time without reading the clock per message.
struct TickMarks {
    /// Frames read, continuation frames included; unchanged for `outer.idle-timeout` is idle.
    frames_read: u64,
    read_at: Instant,
    messages_read: u64,
    /// Since when a message has been in progress with no message completed, if one is.
    reading_since: Option<Instant>,
    write_progress: u64,
    wrote_at: Instant,
    pinged_at: Instant,
}

/// Runs a session until it ends, then closes the connection with the reason's code.
///
/// Not an `async fn`: the session is built before the future exists, so the future holds
/// the session alone, not also the arguments it was built from (an idle connection's memory
/// is mostly this future).
pub fn run(
    ws: HttpWebSocket,
    claim: Claim,
    outbound_rx: mpsc::Receiver<Message>,
    ctx: Arc<SessionContext>,
    remote_addr: SocketAddr,
    token_expires: Option<SystemTime>,
) -> impl Future<Output = ()> + Send {
    let channel_id = claim.channel_id;
    let role = claim.role;
    Metrics::incr(&ctx.metrics.sessions_opened);
    let node = ctx.router.me().id;
    let v1 = claim.handle.client.is_some();
    info!(%channel_id, %role, %node, %remote_addr, v1, "session opened");
    let now = Instant::now();
    let mut ticker = tokio::time::interval_at(now + ctx.tick_period(), ctx.tick_period());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let v1 = claim
        .handle
        .client
        .zip(claim.handle.watch.clone())
        .map(|(client, watch)| {
            Box::new(V1Session::new(
                client,
                watch,
                (&ctx.v1, &ctx.config),
                ctx.router.me().id,
                claim.handle.id,
                token_expires.map(auth::unix_seconds),
            ))
        });
    let rate = RateLimiter::new(&ctx.config.rate, now);
    let mut session = Session {
        ws,
        outbound_rx,
        stop: Box::pin(claim.handle.stop.clone().cancelled_owned()),
        delivery: Delivery::new(
            claim.channel_id,
            claim.role,
            claim.handle.id,
            Arc::clone(&claim.handle.credit),
            Arc::clone(&ctx.router),
            Arc::clone(&ctx.metrics),
        ),
        unsettled: None,
        claim,
        ctx,
        ticker,
        expiry: token_expires
            .and_then(auth::deadline)
            .map(|at| Box::pin(tokio::time::sleep_until(at))),
        unflushed: false,
        ping_due: false,
        messages_read: 0,
        traffic: Traffic {
            opened: now,
            sizes: LocalSizes::default(),
            bytes_read: 0,
            messages_written: 0,
            bytes_written: 0,
        },
        write_progress: 0,
        seen: TickMarks {
            frames_read: 0,
            read_at: now,
            messages_read: 0,
            reading_since: None,
            write_progress: 0,
            wrote_at: now,
            pinged_at: now,
        },
        client_close_code: None,
        library_closed: false,
        v1,
        rate,
    };
    // The block only borrows the session: moving it into an `async fn` would store it twice.
    async move { session.serve(remote_addr).await }
}

/// Closes a session's outbound queue and returns how many messages were still in it.
///
/// Every sender queues without waiting once it has room (`try_send`), so after the close
/// nothing more arrives and a sweep finds everything. Closing the queue's budget wakes a peer
/// parked on it, so it looks for the next session.
pub fn close_queue(outbound_rx: &mut mpsc::Receiver<Message>, queue: &QueueBudget) -> u64 {
    outbound_rx.close();
    queue.close();
    let mut undelivered = 0;
    while outbound_rx.try_recv().is_ok() {
        undelivered += 1;
    }
    undelivered
}

impl Session {
    async fn serve(&mut self, remote_addr: SocketAddr) {
        let reason = self.relay().await;
        let metrics = &self.ctx.metrics;
        match reason {
            CloseReason::Protocol
            | CloseReason::InvalidUtf8
            | CloseReason::V1Malformed
            | CloseReason::V1Window => {
                Metrics::incr(&metrics.sessions_protocol_errors);
            }
            CloseReason::MessageTimeout | CloseReason::TooManyFragments => {
                Metrics::incr(&metrics.sessions_message_limits);
            }
            CloseReason::TooBig => Metrics::incr(&metrics.sessions_too_big),
            CloseReason::MessageRate | CloseReason::ByteRate => {
                Metrics::incr(&metrics.sessions_rate_limited);
            }
            _ => {}
        }
        // Boxed: closing needs as much state again as relaying, and only for a moment at
        // the end; unboxed, every idle session's task would carry room for it.
        Box::pin(self.finish(&reason)).await;
        // An operator's close that came after the session had stopped for another reason.
        self.ctx.closes.take(self.claim.handle.id);
        let histograms = &self.ctx.metrics.histograms;
        histograms.message_size.add(&mut self.traffic.sizes);
        let by = match reason {
            CloseReason::ClientClosed(_) => "client",
            CloseReason::ConnectionLost => "lost",
            _ => "server",
        };
        histograms.by_label.closed(by, reason.code());
        let traffic = &self.traffic;
        histograms
            .session_duration
            .observe(traffic.opened.elapsed().as_secs_f64());
        info!(channel_id = %self.claim.channel_id, role = %self.claim.role,
            node = %self.ctx.router.me().id, %remote_addr,
            duration_ms = u64::try_from(traffic.opened.elapsed().as_millis()).unwrap_or(u64::MAX),
            messages_in = self.messages_read, bytes_in = traffic.bytes_read,
            messages_out = traffic.messages_written, bytes_out = traffic.bytes_written,
            code = reason.code(), close = %reason, "session closed");
    }

    /// Relays until something ends the session, and says what.
    async fn relay(&mut self) -> CloseReason {
        let mut frames_since_yield = 0u32;
        loop {
            match poll_fn(|cx| self.poll_event(cx)).await {
                Event::Read(Ok(frame)) => {
                    if let Some(reason) = self.on_frame(frame) {
                        return reason;
                    }
                    // A client sending tiny frames as fast as it can would hold the worker for
                    // as long as its socket has data (tokio's budget counts socket reads, and
                    // one read holds many frames); yielding every READ_BUDGET frames lets the
                    // other sessions on the worker run.
                    frames_since_yield += 1;
                    if frames_since_yield == READ_BUDGET {
                        frames_since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Event::Read(Err(WebSocketError::ConnectionClosed)) => {
                    return match self.client_close_code {
                        Some(code) => CloseReason::ClientClosed(Some(code)),
                        None => CloseReason::ConnectionLost,
                    };
                }
                Event::Read(Err(err)) => {
                    self.library_closed = !matches!(err, WebSocketError::IoError(_));
                    return CloseReason::from_read_error(&err);
                }
                Event::WriteFailed(err) => {
                    debug!(channel_id = %self.claim.channel_id, role = %self.claim.role,
                        error = %err, "write to client failed");
                    return CloseReason::ConnectionLost;
                }
                Event::Stop => return self.why_stopped(),
                Event::TokenExpired => return CloseReason::TokenExpired,
                Event::Tick => {
                    if let Some(reason) = self.on_tick() {
                        return reason;
                    }
                }
            }
        }
    }

    /// Why the session's stop token fired: an operator closed it, the node shuts down (a
    /// draining node stops its raw sessions), or, otherwise, a newer session took its slot (a
    /// v1 session stopped while the node drains was replaced by its client's next connection).
    fn why_stopped(&self) -> CloseReason {
        if let Some(operator) = self.ctx.closes.take(self.claim.handle.id) {
            return operator;
        }
        if self.ctx.shutdown.is_cancelled()
            || (self.ctx.draining.is_cancelled() && self.v1.is_none())
        {
            return CloseReason::Shutdown;
        }
        CloseReason::Replaced
    }

    /// Polls every source in a fixed order: stop, writes, reads, ticker.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Event::Stop);
        }
        if let Err(err) = self.poll_write(cx) {
            return Poll::Ready(Event::WriteFailed(err));
        }
        // A parked message is a no-op here unless it can now move.
        let _ = self.delivery.poll_unblock(cx);
        // Reading waits while a message is blocked: that is what pushes back on the client.
        if !self.delivery.is_blocked()
            && let Poll::Ready(result) = self.ws.poll_next_frame(cx)
        {
            return Poll::Ready(Event::Read(result));
        }
        if self.ticker.poll_tick(cx).is_ready() {
            return Poll::Ready(Event::Tick);
        }
        if let Some(expiry) = &mut self.expiry
            && expiry.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Event::TokenExpired);
        }
        Poll::Pending
    }

    /// Moves queued messages into the socket's buffer while it has room, then flushes.
    ///
    /// Once the client has sent its close, nothing more is written (RFC 6455 §5.5.1): the
    /// library writes the echo, and what is still queued is dropped and counted by `finish`.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), WebSocketError> {
        if self.client_close_code.is_some() {
            return Ok(());
        }
        if let Some(v1) = &mut self.v1 {
            v1.poll_peer(
                cx,
                &self.ctx.router.hub,
                self.ctx.router.me().id,
                &self.claim.channel_id,
                self.claim.role,
            );
        }
        let mut written = Written::default();
        let result = self.poll_write_queued(cx, &mut written);
        if written.messages > 0 {
            // Once per burst, not per message: giving room back takes the budget's locks.
            if written.local > 0 {
                self.claim
                    .handle
                    .queue
                    .give_back(written.local, written.local_bytes);
            }
            self.settle();
            Metrics::add(&self.ctx.metrics.messages_relayed, written.messages);
        }
        result
    }

    fn poll_write_queued(
        &mut self,
        cx: &mut Context<'_>,
        written: &mut Written,
    ) -> Result<(), WebSocketError> {
        loop {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(result) => result?,
                Poll::Pending => break,
            }
            if self.ping_due {
                self.ping_due = false;
                Pin::new(&mut self.ws).start_send(Frame::ping(bytes::Bytes::new()))?;
                self.unflushed = true;
                continue;
            }
            if let Some(v1) = &mut self.v1
                && let Some(frame) = v1.next_server_frame()
            {
                Pin::new(&mut self.ws).start_send(Frame::binary(frame))?;
                self.unflushed = true;
                continue;
            }
            match self.outbound_rx.poll_recv(cx) {
                Poll::Ready(Some(message)) => {
                    written.messages += 1;
                    self.traffic.messages_written += 1;
                    self.traffic.bytes_written += message.payload.len() as u64;
                    match message.origin {
                        None => {
                            written.local += 1;
                            written.local_bytes += message.payload.len();
                        }
                        Some(origin) => match &mut self.unsettled {
                            Some((sender, n)) if *sender == origin => *n += 1,
                            _ => {
                                self.settle();
                                self.unsettled = Some((origin, 1));
                            }
                        },
                    }
                    let ws = &mut self.ws;
                    let unflushed = &mut self.unflushed;
                    // One message may be several frames for a raw client (a v1 peer's BATCH):
                    // they go in one go, past the sink's readiness by one batch at most.
                    let mut write = |frame| {
                        *unflushed = true;
                        Pin::new(&mut *ws).start_send(frame)
                    };
                    match &mut self.v1 {
                        Some(v1) => write(v1.outgoing(message))?,
                        None => outgoing_raw(message, write)?,
                    }
                    self.write_progress += 1;
                }
                // The hub and this session's claim hold senders, so the queue never closes here.
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        if self.unflushed
            && let Poll::Ready(result) = Pin::new(&mut self.ws).poll_flush(cx)
        {
            result?;
            self.unflushed = false;
            self.write_progress += 1;
        }
        Ok(())
    }

    /// Relays a data frame; returns a reason if the frame ends the session.
    fn on_frame(&mut self, frame: Frame) -> Option<CloseReason> {
        let kind = match frame.opcode() {
            OpCode::Text => MessageKind::Text,
            OpCode::Binary => MessageKind::Binary,
            OpCode::Close => {
                // The library queues the echo of this close; the next read returns
                // `ConnectionClosed` once it is written.
                self.client_close_code = Some(frame.close_code().map_or(1005, u16::from));
                return None;
            }
            // Pings are answered by the library; pongs only prove the client is alive.
            _ => return None,
        };
        self.messages_read += 1;
        let len = frame.payload().len();
        self.traffic.bytes_read += len as u64;
        self.traffic.sizes.observe(len);
        let message = match &mut self.v1 {
            Some(v1) => match v1.read(frame) {
                Ok(FromClient::Relay(message)) => message,
                Ok(FromClient::Token(token)) => {
                    if self.rate.is_some()
                        && let Some(reason) = self.charge_rate(len)
                    {
                        return Some(reason);
                    }
                    self.refresh_token(&token);
                    return None;
                }
                Ok(FromClient::Ignored) => return None,
                Err(reason) => return Some(reason),
            },
            None => {
                let (_, _, payload) = frame.into_parts();
                // Checked here rather than in the library, which would close without a close
                // frame.
                if kind == MessageKind::Text && std::str::from_utf8(&payload).is_err() {
                    return Some(CloseReason::InvalidUtf8);
                }
                Message {
                    kind,
                    payload,
                    origin: None,
                }
            }
        };
        if self.rate.is_some() {
            return self.send_within_rate(message);
        }
        self.delivery.send(message);
        None
    }

    /// Sends a message the client sent under its rate limits: now, once they allow it (the
    /// session reads nothing more meanwhile), or not at all, closing the session.
    ///
    /// Cold: limits are off by default, and this keeps their code out of the relay path's.
    #[cold]
    fn send_within_rate(&mut self, message: Message) -> Option<CloseReason> {
        let rate = self.rate.as_mut().expect("called with a limiter");
        let messages = match &self.v1 {
            None => 1,
            Some(v1) => rate.charge_v1(&message.payload, v1.answerable_written()),
        };
        // Bytes always count: a free control frame is free of the message rate only.
        let over = rate.take_many(messages, message.payload.len(), Instant::now());
        match over {
            None => self.delivery.send(message),
            Some((_, limit)) if rate.action() == RateAction::Close => {
                debug!(channel_id = %self.claim.channel_id, role = %self.claim.role,
                    ?limit, "message over the session's rate limit: closing");
                return Some(limit.close_reason());
            }
            Some((at, _)) => {
                Metrics::incr(&self.ctx.metrics.rate_limit_pauses);
                self.delivery.hold_until(message, at);
            }
        }
        None
    }

    /// Takes a frame that is not relayed (a NODE request) from the session's rate limits: its
    /// cost makes the client's next messages wait, or, over the limit with `close`, ends the
    /// session. Without this a client could send such frames, each answered, at any rate.
    #[cold]
    fn charge_rate(&mut self, len: usize) -> Option<CloseReason> {
        let rate = self.rate.as_mut()?;
        let (_, limit) = rate.take(len, Instant::now())?;
        (rate.action() == RateAction::Close).then(|| limit.close_reason())
    }

    /// Checks a fresh token a v1 client handed over and answers it. A good one replaces the
    /// session's expiry; a refused one leaves the old expiry standing. Without `auth.*` every
    /// token is accepted and the session never expires.
    fn refresh_token(&mut self, token: &str) {
        let Some(v1) = &mut self.v1 else { return };
        let Some(auth) = &self.ctx.auth else {
            return v1.answer_token(Ok(None));
        };
        let checked = if v1.may_check_token(Instant::now()) {
            auth.check(Some(token), &self.claim.channel_id, self.claim.role)
        } else {
            Err("token refreshed less than 1 s ago; try again later".to_owned())
        };
        match checked {
            Ok(expiry) => {
                self.expiry = expiry
                    .and_then(auth::deadline)
                    .map(|at| Box::pin(tokio::time::sleep_until(at)));
                Metrics::incr(&self.ctx.metrics.tokens_refreshed);
                v1.answer_token(Ok(expiry.map(auth::unix_seconds)));
            }
            Err(reason) => {
                Metrics::incr(&self.ctx.metrics.tokens_refused);
                debug!(channel_id = %self.claim.channel_id, role = %self.claim.role,
                    reason, "token refresh refused");
                v1.answer_token(Err(&reason));
            }
        }
    }

    /// Tells the ledger what was written of a remote sender's messages, and announces the
    /// credit that frees, if any.
    fn settle(&mut self) {
        if let Some((sender, n)) = self.unsettled.take() {
            let due = self.claim.handle.credit.ledger().written(sender, n);
            self.announce_credit(due);
        }
    }

    /// Announces credit this session's ledger freed, if any, to the sender it is for.
    fn announce_credit(&self, due: Option<crate::credit::CreditDue>) {
        if let Some(due) = due {
            self.ctx.router.send_credit(
                self.claim.channel_id,
                self.claim.role,
                self.claim.handle.id,
                due,
            );
        }
    }

    /// Checks the idle and stall timeouts and schedules a ping.
    fn on_tick(&mut self) -> Option<CloseReason> {
        self.ctx
            .metrics
            .histograms
            .message_size
            .add(&mut self.traffic.sizes);
        self.delivery.recheck();
        let (lost, due) = self.claim.handle.credit.ledger().sweep();
        if lost > 0 {
            Metrics::add(&self.ctx.metrics.messages_lost_between_nodes, lost);
            debug!(channel_id = %self.claim.channel_id, role = %self.claim.role, lost,
                "messages an ended remote sender sent never arrived");
        }
        self.announce_credit(due);
        let now = Instant::now();
        let config = &self.ctx.config;
        let seen = &mut self.seen;
        let frames_read = self.ws.frames_received();
        // A session held by its rate limit reads nothing, so its client's pongs wait unread:
        // that time is the node's doing, not the client's silence.
        if frames_read != seen.frames_read || self.delivery.is_held_by_rate() {
            seen.frames_read = frames_read;
            seen.read_at = now;
        }
        // A message in progress, while this session reads (a parked message stops its
        // reads), must complete within outer.message-timeout; the library also checks it
        // as each continuation frame arrives.
        // Reads held back (a parked message, or a pong the client does not read) leave bytes
        // in the read buffer that the client may well have sent complete: not counted.
        let reading = self.ws.is_reading_message()
            && !self.delivery.is_blocked()
            && !self.ws.has_pending_writes();
        if !reading {
            seen.reading_since = None;
        } else if self.messages_read != seen.messages_read || seen.reading_since.is_none() {
            seen.reading_since = Some(now);
        }
        seen.messages_read = self.messages_read;
        if seen
            .reading_since
            .is_some_and(|since| now.duration_since(since) >= config.message_timeout)
        {
            return Some(CloseReason::MessageTimeout);
        }
        // Pongs and close frames the library could not write count as waiting output too.
        let has_output =
            self.unflushed || !self.outbound_rx.is_empty() || self.ws.has_pending_writes();
        if self.write_progress != seen.write_progress || !has_output {
            seen.write_progress = self.write_progress;
            seen.wrote_at = now;
        }
        if now.duration_since(seen.read_at) >= config.idle_timeout {
            Metrics::incr(&self.ctx.metrics.sessions_idle);
            return Some(CloseReason::Idle);
        }
        if now.duration_since(seen.wrote_at) >= config.stall_timeout {
            Metrics::incr(&self.ctx.metrics.sessions_stalled);
            return Some(CloseReason::Stalled);
        }
        if now.duration_since(seen.pinged_at) >= config.ping_interval {
            seen.pinged_at = now;
            self.ping_due = true;
        }
        None
    }

    /// Counts what the session could not deliver, sends the close frame for `reason` (or lets
    /// the library send the one it queued), and shuts the connection down, within
    /// [`CLOSE_TIMEOUT`].
    async fn finish(&mut self, reason: &CloseReason) {
        // The parked message first: it may hold a slot of the peer's queue, and a peer closing
        // at the same time waits for that slot in its own `close_queue`.
        let mut undelivered = self.delivery.abandon();
        undelivered += close_queue(&mut self.outbound_rx, &self.claim.handle.queue);
        if undelivered > 0 {
            Metrics::add(&self.ctx.metrics.messages_dropped_closed, undelivered);
            debug!(channel_id = %self.claim.channel_id, role = %self.claim.role,
                undelivered, "queued messages dropped with their session");
        }
        let ws = &mut self.ws;
        let library_closed = self.library_closed || matches!(reason, CloseReason::ClientClosed(_));
        let closing = async {
            if library_closed {
                // One more read writes out the close frame the library queued.
                let _ = ws.next_frame().await;
                let _ = ws.close().await;
            } else if let Some(code) = reason.code() {
                let _ = ws.send(Frame::close(code.into(), reason.text())).await;
                let _ = ws.close().await;
                // Wait for the client's close (RFC 6455 section 7.1.1), so the connection is
                // not torn down under a client still reading our close frame.
                while ws.next_frame().await.is_ok() {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
        self.ctx.router.release(&self.claim).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message {
            kind: MessageKind::Binary,
            payload: bytes::Bytes::from_static(b"x"),
            origin: None,
        }
    }

    #[test]
    fn close_queue_counts_what_was_queued_and_refuses_more() {
        let (tx, mut rx) = mpsc::channel(4);
        tx.try_send(message()).unwrap();
        tx.try_send(message()).unwrap();
        let queue = QueueBudget::new(4, 64);
        assert_eq!(close_queue(&mut rx, &queue), 2);
        assert!(tx.try_send(message()).is_err());
        assert!(!queue.try_take(1));
    }
}
