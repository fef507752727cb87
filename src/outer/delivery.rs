//! Delivery: hands the messages a session reads to its peer, wherever the peer is, with
//! backpressure.
//!
//! A message goes to a local peer's bounded queue, or, for a peer on another node, takes one
//! credit from the session's grant towards that incarnation (see `credit`) and goes into the
//! link's data queue, numbered with its position. When the queue is full or the credit is spent,
//! the message is parked ([`Delivery::is_blocked`]) and the session stops reading its client
//! until [`Delivery::poll_unblock`] says it went through; that is the whole backpressure.
//! A peer that ends while a message is parked gets looked up again, so a reconnected peer
//! receives it; with no peer at all, the message is dropped and counted.
//!
//! A message over the session's rate limit (`outer::rate`, in `throttle` mode) is parked the
//! same way, until its moment comes ([`Delivery::hold_until`]): the session then reads
//! nothing, with no check of its own on the way to its socket.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Sleep;
use tokio_util::sync::{PollSemaphore, PollSender};
use tracing::{debug, warn};

use crate::budget::{BudgetWaiter, QueueBudget, QueueWaiter};
use crate::credit::{CreditState, Grant};
use crate::hub::{Peer, RemotePeer};
use crate::inner::frame::InnerFrame;
use crate::inner::link::LinkError;
use crate::metrics::Metrics;
use crate::pair::{ChannelId, Message, Role};
use crate::router::Router;

/// How long a sender waits for credit before it says where it stands (`Sent`), which the
/// receiving session answers with its limit: that repairs a `Credit` lost with a link or
/// dropped for a session not yet recorded, and settles frames lost on the way. Then again after
/// twice as long each time, up to [`CREDIT_PROBE_MAX`]: a receiver that is merely slow costs a
/// frame every few seconds.
const CREDIT_PROBE_FIRST: Duration = Duration::from_millis(500);

/// The longest wait between two probes of a sender waiting for credit.
const CREDIT_PROBE_MAX: Duration = Duration::from_secs(8);

/// How often a session with no peer asks the registry where its peer is.
const RESOLVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// A parked message and what it waits for.
enum Blocked {
    /// The moment the session's rate limit lets it go (`outer::rate`), before any peer.
    Rate {
        message: Message,
        until: Pin<Box<Sleep>>,
    },
    /// Room in a local peer's queue.
    Local {
        message: Message,
        room: QueueWaiter,
        queue: QueueBudget,
        tx: mpsc::Sender<Message>,
    },
    /// Credit from the remote peer.
    Credit {
        message: Message,
        remote: RemotePeer,
        grant: Arc<Grant>,
        credits: PollSemaphore,
        /// When the sender next says where it stands (`Sent`), if credit has not come by then.
        probe: Pin<Box<Sleep>>,
        /// The wait before the probe after that: doubled each time, up to `CREDIT_PROBE_MAX`.
        probe_wait: Duration,
    },
    /// Bytes in the link's data queue, then a slot in it (the credit is already taken).
    Link {
        frame: InnerFrame,
        bytes: BudgetWaiter,
        bytes_taken: bool,
        sender: PollSender<InnerFrame>,
        /// The credit and position the frame took, given back if it is not sent.
        grant: Arc<Grant>,
    },
}

/// The sending half of a session's relaying.
pub struct Delivery {
    channel_id: ChannelId,
    /// The role of the session that sends.
    role: Role,
    /// The sending session's id on this node.
    session: u64,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// The session's credit, whose grant bounds what it sends to a remote peer.
    credit: Arc<CreditState>,
    /// The peer, cached; looked up again only when absent or gone.
    peer: Option<Peer>,
    /// The grant towards a remote peer, cached while it is for that peer.
    grant: Option<Arc<Grant>>,
    /// Boxed: rarely set, and large (its wakers), while every idle session holds a `Delivery`.
    blocked: Option<Box<Blocked>>,
    /// When this session last asked the registry where its peer is, having none.
    resolved_at: Option<tokio::time::Instant>,
}

impl Delivery {
    /// Delivery for session `session` of `role` in `channel_id`.
    pub fn new(
        channel_id: ChannelId,
        role: Role,
        session: u64,
        credit: Arc<CreditState>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Delivery {
        Delivery {
            channel_id,
            role,
            session,
            router,
            metrics,
            credit,
            peer: None,
            grant: None,
            blocked: None,
            resolved_at: None,
        }
    }

    /// True while a message waits; the session must not read its client meanwhile.
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// True while a message waits for the session's rate limit (not for its peer).
    pub fn is_held_by_rate(&self) -> bool {
        matches!(self.blocked.as_deref(), Some(Blocked::Rate { .. }))
    }

    /// Parks `message` until `at`, when the session's rate limit lets it go; it is then sent
    /// as [`Delivery::send`] would. Only while nothing is parked, as for every read message.
    pub fn hold_until(&mut self, message: Message, at: tokio::time::Instant) {
        debug_assert!(
            self.blocked.is_none(),
            "a message read while one was parked"
        );
        self.blocked = Some(Box::new(Blocked::Rate {
            message,
            until: Box::pin(tokio::time::sleep_until(at)),
        }));
    }

    /// Messages this session sent to the remote session `remote`, for its `Unbound`.
    pub fn sent_to(&self, remote: &RemotePeer) -> u64 {
        self.credit.sent_to(remote.incarnation())
    }

    /// Sends `message` now, or parks it. Never waits.
    pub fn send(&mut self, mut message: Message) {
        // A second attempt covers a cached peer that ended since it was cached.
        for _ in 0..2 {
            if self.current_peer().is_none() {
                break;
            }
            // Taken out and put back, so the hot path clones no handle.
            let peer = self.peer.take().expect("current_peer cached it");
            let returned = match &peer {
                Peer::Local(handle) => match handle.try_queue(message) {
                    Ok(()) => None,
                    Err(TrySendError::Full(returned)) => {
                        self.blocked = Some(Box::new(Blocked::Local {
                            message: returned,
                            room: handle.queue.waiter(),
                            queue: handle.queue.clone(),
                            tx: handle.outbound_tx.clone(),
                        }));
                        None
                    }
                    Err(TrySendError::Closed(returned)) => Some(returned),
                },
                Peer::Remote(remote) => {
                    let grant = self.grant_for(remote);
                    match grant.try_take() {
                        Some(seq) => self.send_to_link(remote, grant, seq, message),
                        None => {
                            self.blocked = Some(Box::new(Blocked::Credit {
                                message,
                                remote: remote.clone(),
                                credits: PollSemaphore::new(grant.permits()),
                                grant,
                                probe: Box::pin(tokio::time::sleep(CREDIT_PROBE_FIRST)),
                                probe_wait: CREDIT_PROBE_FIRST * 2,
                            }));
                            None
                        }
                    }
                }
            };
            match returned {
                None => {
                    self.peer = Some(peer);
                    return;
                }
                Some(returned) => message = returned,
            }
        }
        self.drop_no_peer(&message);
    }

    /// The grant towards `remote`: the cached one while it is for that session.
    fn grant_for(&mut self, remote: &RemotePeer) -> Arc<Grant> {
        let receiver = remote.incarnation();
        match &self.grant {
            Some(grant) if grant.receiver == receiver && !grant.is_closed() => Arc::clone(grant),
            _ => {
                let grant = self.credit.grant_for(receiver);
                self.grant = Some(Arc::clone(&grant));
                grant
            }
        }
    }

    /// Puts a data frame at position `seq` (its credit taken) on the link; returns the
    /// message if the link is closed, so the caller can look for the peer again.
    fn send_to_link(
        &mut self,
        remote: &RemotePeer,
        grant: Arc<Grant>,
        seq: u64,
        message: Message,
    ) -> Option<Message> {
        let frame = InnerFrame::Data {
            channel_id: self.channel_id,
            role: self.role.peer(),
            sender: self.session,
            receiver: remote.session,
            seq,
            kind: message.kind,
            payload: message.payload,
        };
        match remote.link.try_send_data(frame) {
            Ok(()) => {
                grant.queued(seq);
                None
            }
            Err(LinkError::Full(frame)) => {
                let (bytes, sender) = remote.link.data_waiters();
                self.blocked = Some(Box::new(Blocked::Link {
                    frame,
                    bytes,
                    bytes_taken: false,
                    sender,
                    grant,
                }));
                None
            }
            Err(LinkError::Closed(frame)) => {
                grant.untake();
                Some(into_message(frame))
            }
        }
    }

    /// Makes progress on a parked message; ready once nothing is parked.
    pub fn poll_unblock(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(blocked) = &mut self.blocked else {
                return Poll::Ready(());
            };
            match &mut **blocked {
                Blocked::Rate { until, .. } => {
                    if until.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let Some(Blocked::Rate { message, .. }) = self.take_blocked() else {
                        unreachable!("matched Rate above");
                    };
                    self.send(message);
                }
                Blocked::Local { message, room, .. } => {
                    let reserved = match room.poll_take(cx, message.payload.len()) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(reserved) => reserved,
                    };
                    let Some(Blocked::Local {
                        message, queue, tx, ..
                    }) = self.take_blocked()
                    else {
                        unreachable!("matched Local above");
                    };
                    if !reserved {
                        self.retry(message);
                        continue;
                    }
                    // The queue holds a local sender's share and the credit window beside
                    // it, so with room taken it is never full; it may have closed.
                    let len = message.payload.len();
                    match tx.try_send(message) {
                        Ok(()) => {}
                        Err(TrySendError::Closed(message)) => {
                            queue.give_back(1, len);
                            self.retry(message);
                        }
                        // Cannot happen while credit holds; dropped rather than retried, which
                        // would spin on room that is there and a queue that is not.
                        Err(TrySendError::Full(_)) => {
                            queue.give_back(1, len);
                            Metrics::incr(&self.metrics.messages_dropped_closed);
                            warn!(channel_id = %self.channel_id, role = %self.role,
                                "message dropped: the peer's queue is full beyond its room");
                        }
                    }
                }
                Blocked::Credit {
                    remote,
                    grant,
                    credits,
                    probe,
                    probe_wait,
                    ..
                } => {
                    if probe.as_mut().poll(cx).is_ready() {
                        // Behind this session's data on the link's queue, so it tells where
                        // the data ends; the answer is a `Credit`.
                        let _ = remote.link.try_send_data(InnerFrame::Sent {
                            channel_id: self.channel_id,
                            role: self.role.peer(),
                            sender: self.session,
                            receiver: remote.session,
                            sent: grant.position(),
                        });
                        probe
                            .as_mut()
                            .reset(tokio::time::Instant::now() + *probe_wait);
                        *probe_wait = (*probe_wait * 2).min(CREDIT_PROBE_MAX);
                        // Polled again, so the reset timer is registered.
                        continue;
                    }
                    if remote.is_marked_gone() || grant.is_closed() {
                        let Some(Blocked::Credit { message, .. }) = self.take_blocked() else {
                            unreachable!("matched Credit above");
                        };
                        self.retry(message);
                        continue;
                    }
                    match credits.poll_acquire(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(permit) => {
                            let Some(Blocked::Credit {
                                message,
                                remote,
                                grant,
                                ..
                            }) = self.take_blocked()
                            else {
                                unreachable!("matched Credit above");
                            };
                            match permit {
                                Some(permit) => {
                                    permit.forget();
                                    let seq = grant.advance();
                                    if let Some(returned) =
                                        self.send_to_link(&remote, grant, seq, message)
                                    {
                                        self.retry(returned);
                                    }
                                }
                                None => self.retry(message),
                            }
                        }
                    }
                }
                Blocked::Link {
                    frame,
                    bytes,
                    bytes_taken,
                    sender,
                    ..
                } => {
                    let len = frame.data_len();
                    let reserved = match poll_room(cx, len, bytes, bytes_taken, sender) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(reserved) => reserved,
                    };
                    let Some(Blocked::Link {
                        frame,
                        mut sender,
                        grant,
                        ..
                    }) = self.take_blocked()
                    else {
                        unreachable!("matched Link above");
                    };
                    let seq = frame.seq();
                    if !reserved {
                        grant.untake();
                        self.retry(into_message(frame));
                    } else if let Err(err) = sender.send_item(frame) {
                        grant.untake();
                        let frame = err
                            .into_inner()
                            .expect("a reserved send hands the frame back");
                        self.retry(into_message(frame));
                    } else {
                        grant.queued(seq);
                    }
                }
            }
        }
    }

    /// Called at each tick of the session: a message parked on a peer that has since gone is
    /// sent again. (One waiting for credit asks for it on a timer of its own, see
    /// `CREDIT_PROBE_FIRST`.)
    pub fn recheck(&mut self) {
        let Some(Blocked::Credit { remote, grant, .. }) = self.blocked.as_deref_mut() else {
            return;
        };
        if (remote.is_marked_gone() || grant.is_closed())
            && let Some(Blocked::Credit { message, .. }) = self.take_blocked()
        {
            self.retry(message);
        }
    }

    /// Drops a parked message at the end of the session; returns how many were dropped.
    pub fn abandon(&mut self) -> u64 {
        match self.take_blocked() {
            None => 0,
            Some(blocked) => {
                // Room and credit taken for a message that never went give back, or every
                // abandoned message would shrink the receiver's queue or the window for good.
                match blocked {
                    Blocked::Local {
                        message, mut room, ..
                    } => room.abandon(message.payload.len()),
                    Blocked::Link {
                        frame,
                        bytes,
                        bytes_taken,
                        grant,
                        ..
                    } => {
                        if bytes_taken {
                            bytes.give_back(frame.data_len());
                        }
                        grant.untake();
                    }
                    Blocked::Credit { .. } | Blocked::Rate { .. } => {}
                }
                1
            }
        }
    }

    fn take_blocked(&mut self) -> Option<Blocked> {
        self.blocked.take().map(|blocked| *blocked)
    }

    fn retry(&mut self, message: Message) {
        self.peer = None;
        self.send(message);
    }

    fn drop_no_peer(&mut self, message: &Message) {
        Metrics::incr(&self.metrics.messages_dropped_no_peer);
        debug!(channel_id = %self.channel_id, role = %self.role,
            bytes = message.payload.len(), "message dropped: peer not connected");
        // No peer here: when in doubt, the registry is asked (at most once per
        // RESOLVE_INTERVAL), so a record this node lost is found again.
        let now = tokio::time::Instant::now();
        if self
            .resolved_at
            .is_none_or(|at| now.duration_since(at) >= RESOLVE_INTERVAL)
        {
            self.resolved_at = Some(now);
            self.router
                .resolve_peer(self.channel_id, self.role, self.session);
        }
    }

    /// The peer, refreshed from the hub when the cached one is absent or gone.
    fn current_peer(&mut self) -> Option<&Peer> {
        if self.peer.as_ref().is_none_or(Peer::is_gone) {
            self.peer = self.router.hub.peer(&self.channel_id, self.role.peer());
        }
        self.peer.as_ref()
    }
}

/// The message a data frame carries, to send it elsewhere.
fn into_message(frame: InnerFrame) -> Message {
    match frame {
        InnerFrame::Data { kind, payload, .. } => Message {
            kind,
            payload,
            origin: None,
        },
        other => unreachable!("only data frames carry messages, not {}", other.kind()),
    }
}

/// Waits for a queue to have `len` bytes and then a free slot; `false` if the queue is gone.
/// The bytes, once taken, stay taken (`bytes_taken`) while the slot is awaited.
fn poll_room<T: Send>(
    cx: &mut Context<'_>,
    len: usize,
    bytes: &mut BudgetWaiter,
    bytes_taken: &mut bool,
    sender: &mut PollSender<T>,
) -> Poll<bool> {
    if !*bytes_taken {
        match bytes.poll_take(cx, len) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(false) => return Poll::Ready(false),
            Poll::Ready(true) => *bytes_taken = true,
        }
    }
    sender.poll_reserve(cx).map(|reserved| reserved.is_ok())
}
