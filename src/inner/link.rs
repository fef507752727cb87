//! A link: the single TCP connection from this node to one remote node, carrying this node's
//! frames to it.
//!
//! `Link::run` owns the stream and redials it with backoff; everyone else holds a
//! [`LinkHandle`]. Frames wait in two bounded queues while the link connects: data (messages;
//! `inner.queue` frames and `inner.queue-bytes` payload bytes, senders wait when either is
//! full) and control (credits, announcements, evictions), which is written first. Frames still queued after the link has been down for
//! `inner.connect-timeout` are dropped and counted. The link pings every
//! `inner.heartbeat-interval` and is redialled when the remote node stays silent for
//! `inner.link-timeout`. With `inner.tls-*` the dial runs TLS (under the same
//! `inner.connect-timeout`) before the handshake. This module never talks to the registry.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_util::codec::{Framed, FramedRead, FramedWrite};
use tokio_util::sync::{CancellationToken, PollSender};
use tracing::{debug, info, warn};

use super::auth;
use super::codec::InnerCodec;
use super::frame::InnerFrame;
use super::stream::InnerStream;
use crate::budget::{BudgetWaiter, ByteBudget};
use crate::config::InnerConfig;
use crate::metrics::Metrics;
use crate::node::{NodeId, NodeInfo};

/// Frames written per batch before one flush.
const BATCH: usize = 256;

/// Longest pause between two dial attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A full or closed link queue; the frame is handed back.
#[derive(Debug)]
pub enum LinkError {
    /// The data queue is full; the sender should wait (see [`LinkHandle::data_waiters`]).
    Full(InnerFrame),
    /// The link task has ended (the node is shutting down or the remote node is gone).
    Closed(InnerFrame),
}

/// Why a dial failed, and whether it shows the node is gone.
struct DialError {
    gone: bool,
    text: String,
}

/// A cheap, cloneable way to send frames to one remote node.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    /// The remote node.
    pub node: NodeId,
    data_tx: mpsc::Sender<InnerFrame>,
    /// Payload bytes the data queue may still take; the link task gives them back as it
    /// writes or drops frames.
    data_bytes: ByteBudget,
    control_tx: mpsc::Sender<InnerFrame>,
    metrics: Arc<Metrics>,
}

impl LinkHandle {
    /// Queues a data frame without waiting.
    pub fn try_send_data(&self, frame: InnerFrame) -> Result<(), LinkError> {
        let len = frame.data_len();
        self.data_bytes
            .try_send(&self.data_tx, frame, len)
            .map_err(|err| match err {
                TrySendError::Full(frame) => LinkError::Full(frame),
                TrySendError::Closed(frame) => LinkError::Closed(frame),
            })
    }

    /// What a sender waits on for room in the data queue: its bytes, then a slot.
    pub fn data_waiters(&self) -> (BudgetWaiter, PollSender<InnerFrame>) {
        (
            self.data_bytes.waiter(),
            PollSender::new(self.data_tx.clone()),
        )
    }

    /// Queues a control frame. A full control queue means the remote node has stopped
    /// reading; the frame is dropped, counted and logged, and the link's timeouts deal with it.
    pub fn send_control(&self, frame: InnerFrame) {
        if let Err(err) = self.control_tx.try_send(frame) {
            Metrics::incr(&self.metrics.link_frames_dropped);
            crate::warn_throttled!(node = %self.node, error = %err, "control frame dropped: link queue full or closed");
        }
    }

    /// Payload bytes of the data frames waiting in this link's queue.
    pub fn queued_bytes(&self) -> usize {
        self.data_bytes.used()
    }

    /// True once the link task has ended.
    pub fn is_closed(&self) -> bool {
        self.data_tx.is_closed()
    }
}

/// What every link of a node shares.
#[derive(Debug)]
pub struct LinkContext {
    /// This node, as `Hello` describes it.
    pub me: NodeInfo,
    /// `inner.*` settings.
    pub config: InnerConfig,
    /// Largest message, which sets the codec's frame limit.
    pub max_message: usize,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// `inner.tls-*`: TLS under every link, both ways, when set.
    pub tls: Option<Arc<crate::tls::inner::InnerTls>>,
}

/// The task that owns one link.
struct Link {
    target: NodeInfo,
    ctx: Arc<LinkContext>,
    data_rx: mpsc::Receiver<InnerFrame>,
    data_bytes: ByteBudget,
    control_rx: mpsc::Receiver<InnerFrame>,
    cancel: CancellationToken,
    /// Called each time the link (re)connects, so credit windows can start afresh.
    on_up: Box<dyn Fn(NodeId) + Send + Sync>,
    /// Called when the node is certainly gone: its inner port refuses connections, or another
    /// node answers there (it restarted, as a new incarnation).
    on_gone: Box<dyn Fn(NodeId) + Send + Sync>,
}

/// Spawns the link to `target` on `tracker`; it runs until `cancel` fires.
pub fn spawn_link(
    target: NodeInfo,
    ctx: Arc<LinkContext>,
    tracker: &tokio_util::task::TaskTracker,
    cancel: CancellationToken,
    on_up: Box<dyn Fn(NodeId) + Send + Sync>,
    on_gone: Box<dyn Fn(NodeId) + Send + Sync>,
) -> LinkHandle {
    let (data_tx, data_rx) = mpsc::channel(ctx.config.queue);
    let (control_tx, control_rx) = mpsc::channel(ctx.config.queue);
    let data_bytes = ByteBudget::new(ctx.config.queue_bytes);
    let handle = LinkHandle {
        node: target.id,
        data_tx,
        data_bytes: data_bytes.clone(),
        control_tx,
        metrics: Arc::clone(&ctx.metrics),
    };
    let link = Link {
        target,
        ctx,
        data_rx,
        data_bytes,
        control_rx,
        cancel,
        on_up,
        on_gone,
    };
    tracker.spawn(link.run());
    handle
}

impl Link {
    async fn run(mut self) {
        let node = self.target.id;
        let mut backoff = Duration::from_millis(50);
        let mut down_since = Instant::now();
        loop {
            let connected = tokio::select! {
                _ = self.cancel.cancelled() => return,
                connected = tokio::time::timeout(self.ctx.config.connect_timeout, self.connect()) => connected,
            };
            match connected {
                Ok(Ok(stream)) => {
                    info!(%node, advertise = %self.target.advertise, "link up");
                    (self.on_up)(node);
                    backoff = Duration::from_millis(50);
                    let reason = self.pump(stream).await;
                    if self.cancel.is_cancelled() {
                        return;
                    }
                    crate::warn_throttled!(%node, %reason, "link down; redialling");
                    down_since = Instant::now();
                }
                Ok(Err(err)) => {
                    Metrics::incr(&self.ctx.metrics.link_dial_failures);
                    debug!(%node, advertise = %self.target.advertise, error = %err.text, "link dial failed");
                    if err.gone {
                        (self.on_gone)(node);
                    }
                }
                Err(_) => {
                    Metrics::incr(&self.ctx.metrics.link_dial_failures);
                    debug!(%node, "link dial timed out");
                }
            }
            if down_since.elapsed() >= self.ctx.config.connect_timeout {
                self.drop_queued();
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect(&self) -> Result<auth::LinkStream, DialError> {
        let stream = TcpStream::connect(&self.target.advertise)
            .await
            .map_err(|err| DialError {
                // Nothing listens there any more: the node's process is gone.
                gone: err.kind() == std::io::ErrorKind::ConnectionRefused,
                text: format!("connect {}: {err}", self.target.advertise),
            })?;
        let _ = stream.set_nodelay(true);
        let stream = match &self.ctx.tls {
            None => InnerStream::Plain(stream),
            Some(tls) => {
                let name = crate::tls::inner::server_name(&self.target.advertise);
                let tls = tls
                    .connector()
                    .connect(name, stream)
                    .await
                    .map_err(|err| DialError {
                        // Someone listens there; the certificates or the settings differ.
                        gone: false,
                        text: format!("TLS with {}: {err}", self.target.advertise),
                    })?;
                InnerStream::Dialed(Box::new(tls))
            }
        };
        let mut framed = Framed::new(stream, InnerCodec::for_handshake());
        let binding = framed.get_ref().channel_binding();
        let acceptor = auth::dial(
            &mut framed,
            &self.ctx.me,
            self.ctx.config.secret.as_bytes(),
            &binding,
        )
        .await
        .map_err(|err| DialError {
            gone: false,
            text: err.to_string(),
        })?
        .id;
        if acceptor != self.target.id {
            return Err(DialError {
                gone: true,
                text: format!(
                    "{} answered as node {acceptor}, expected {}",
                    self.target.advertise, self.target.id
                ),
            });
        }
        Ok(framed)
    }

    /// Counts and drops every queued frame: the link could not be established in time.
    fn drop_queued(&mut self) {
        let mut dropped = 0;
        while let Ok(frame) = self.data_rx.try_recv() {
            self.data_bytes.give_back(frame.data_len());
            dropped += 1;
        }
        while self.control_rx.try_recv().is_ok() {
            dropped += 1;
        }
        if dropped > 0 {
            Metrics::add(&self.ctx.metrics.link_frames_dropped, dropped);
            warn!(node = %self.target.id, dropped, "link down past inner.connect-timeout; queued frames dropped");
        }
    }

    /// Writes queued frames and reads pongs until the link fails; returns why.
    async fn pump(&mut self, framed: auth::LinkStream) -> String {
        let parts = framed.into_parts();
        let (read_half, write_half) = parts.io.split();
        let mut reader = FramedRead::new(read_half, InnerCodec::new(self.ctx.max_message));
        *reader.read_buffer_mut() = parts.read_buf;
        let mut writer = FramedWrite::new(write_half, InnerCodec::new(self.ctx.max_message));
        let config = &self.ctx.config;
        let mut ticker = tokio::time::interval(config.heartbeat_interval);
        let mut last_heard = Instant::now();
        // The oldest `Ping` not answered yet: its `Pong` measures the round trip.
        let mut ping_sent: Option<Instant> = None;
        let mut control = Vec::new();
        let mut data = Vec::new();
        // Made once: a fresh `cancelled()` per loop would lock the token's mutex per message.
        let cancelled = self.cancel.clone().cancelled_owned();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => return "node shutting down".into(),
                n = self.control_rx.recv_many(&mut control, BATCH) => {
                    if n == 0 {
                        return "control queue closed".into();
                    }
                }
                n = self.data_rx.recv_many(&mut data, BATCH) => {
                    if n == 0 {
                        return "data queue closed".into();
                    }
                }
                frame = reader.next() => match frame {
                    Some(Ok(InnerFrame::Pong)) => {
                        last_heard = Instant::now();
                        if let Some(sent) = ping_sent.take() {
                            self.ctx.metrics.histograms.link_round_trip
                                .observe(last_heard.duration_since(sent).as_secs_f64());
                        }
                    }
                    Some(Ok(other)) => return format!("unexpected frame from the acceptor: {other:?}"),
                    Some(Err(err)) => return err.to_string(),
                    None => return "closed by the remote node".into(),
                },
                _ = ticker.tick() => {
                    if last_heard.elapsed() >= config.link_timeout {
                        return format!("no pong within inner.link-timeout {:?}", config.link_timeout);
                    }
                    control.push(InnerFrame::Ping);
                    ping_sent.get_or_insert_with(Instant::now);
                }
            }
            if control.is_empty() && data.is_empty() {
                continue;
            }
            let n_frames = (control.len() + data.len()) as u64;
            // The frames leave the queue now, whether the write succeeds or they are dropped.
            self.data_bytes
                .give_back(data.iter().map(InnerFrame::data_len).sum());
            let write = async {
                for frame in control.drain(..).chain(data.drain(..)) {
                    writer.feed(frame).await?;
                }
                writer.flush().await
            };
            match tokio::time::timeout(config.link_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    Metrics::add(&self.ctx.metrics.link_frames_dropped, n_frames);
                    return format!("write failed: {err}");
                }
                Err(_) => {
                    Metrics::add(&self.ctx.metrics.link_frames_dropped, n_frames);
                    return format!(
                        "write blocked for inner.link-timeout {:?}",
                        config.link_timeout
                    );
                }
            }
        }
    }
}

impl Drop for Link {
    /// Wakes senders waiting for bytes: the queue is gone, and they learn it.
    fn drop(&mut self) {
        self.data_bytes.close();
    }
}
