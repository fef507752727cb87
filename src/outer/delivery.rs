//! Delivery: hands the messages a session reads to its peer, wherever the peer is, with
//! backpressure; and returns credit for the messages a session received from other nodes.
//!
//! A message goes to a local peer's bounded queue, or, for a peer on another node, takes one
//! credit and goes into the link's data queue. When the queue is full or the credit is spent,
//! the message is parked ([`Delivery::is_blocked`]) and the session stops reading its client
//! until [`Delivery::poll_unblock`] says it went through; that is the whole backpressure.
//! A peer that ends while a message is parked gets looked up again, so a reconnected peer
//! receives it; with no peer at all, the message is dropped and counted.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::{PollSemaphore, PollSender};
use tracing::debug;

use crate::budget::BudgetWaiter;
use crate::hub::{Peer, RemotePeer};
use crate::inner::frame::InnerFrame;
use crate::inner::link::LinkError;
use crate::metrics::Metrics;
use crate::node::NodeId;
use crate::pair::{ChannelId, Message, Role};
use crate::router::Router;

/// Credit returned to a sending node in one frame, at most (see [`CreditReturn`]).
const CREDIT_BATCH: u32 = 32;

/// A parked message and what it waits for.
enum Blocked {
    /// Bytes in a local peer's queue, then a slot in it.
    Local {
        message: Message,
        bytes: BudgetWaiter,
        bytes_taken: bool,
        sender: PollSender<Message>,
    },
    /// Credit from the remote peer.
    Credit {
        message: Message,
        remote: RemotePeer,
        credits: PollSemaphore,
    },
    /// Bytes in the link's data queue, then a slot in it (the credit is already taken).
    Link {
        frame: InnerFrame,
        bytes: BudgetWaiter,
        bytes_taken: bool,
        sender: PollSender<InnerFrame>,
        /// The remote peer's credit, given back if the message is abandoned here.
        credits: Arc<Semaphore>,
    },
}

/// The sending half of a session's relaying.
pub struct Delivery {
    channel_id: ChannelId,
    /// The role of the session that sends.
    role: Role,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// The peer, cached; looked up again only when absent or gone.
    peer: Option<Peer>,
    /// Boxed: rarely set, and large (its wakers), while every idle session holds a `Delivery`.
    blocked: Option<Box<Blocked>>,
}

impl Delivery {
    /// Delivery for the session of `role` in `channel_id`.
    pub fn new(
        channel_id: ChannelId,
        role: Role,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Delivery {
        Delivery {
            channel_id,
            role,
            router,
            metrics,
            peer: None,
            blocked: None,
        }
    }

    /// True while a message waits; the session must not read its client meanwhile.
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
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
                            bytes: handle.queue_bytes.waiter(),
                            bytes_taken: false,
                            sender: PollSender::new(handle.outbound_tx.clone()),
                        }));
                        None
                    }
                    Err(TrySendError::Closed(returned)) => Some(returned),
                },
                Peer::Remote(remote) => match remote.credits.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        self.send_to_link(remote, message)
                    }
                    Err(_) => {
                        self.blocked = Some(Box::new(Blocked::Credit {
                            message,
                            remote: remote.clone(),
                            credits: PollSemaphore::new(Arc::clone(&remote.credits)),
                        }));
                        None
                    }
                },
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

    /// Puts a data frame (its credit taken) on the link; returns the message if the link is
    /// closed, so the caller can look for the peer again.
    fn send_to_link(&mut self, remote: &RemotePeer, message: Message) -> Option<Message> {
        let frame = InnerFrame::Data {
            channel_id: self.channel_id,
            role: self.role.peer(),
            kind: message.kind,
            payload: message.payload,
        };
        match remote.link.try_send_data(frame) {
            Ok(()) => None,
            Err(LinkError::Full(frame)) => {
                let (bytes, sender) = remote.link.data_waiters();
                self.blocked = Some(Box::new(Blocked::Link {
                    frame,
                    bytes,
                    bytes_taken: false,
                    sender,
                    credits: Arc::clone(&remote.credits),
                }));
                None
            }
            Err(LinkError::Closed(InnerFrame::Data { kind, payload, .. })) => Some(Message {
                kind,
                payload,
                origin: None,
            }),
            Err(LinkError::Closed(_)) => unreachable!("send_to_link only sends data frames"),
        }
    }

    /// Makes progress on a parked message; ready once nothing is parked.
    pub fn poll_unblock(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(blocked) = &mut self.blocked else {
                return Poll::Ready(());
            };
            match &mut **blocked {
                Blocked::Local {
                    message,
                    bytes,
                    bytes_taken,
                    sender,
                } => {
                    let len = message.payload.len();
                    let reserved = match poll_room(cx, len, bytes, bytes_taken, sender) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(reserved) => reserved,
                    };
                    let Some(Blocked::Local {
                        message,
                        mut sender,
                        ..
                    }) = self.take_blocked()
                    else {
                        unreachable!("matched Local above");
                    };
                    let sent = reserved && sender.send_item(message.clone()).is_ok();
                    if !sent {
                        self.retry(message);
                    }
                }
                Blocked::Credit {
                    remote, credits, ..
                } => {
                    if remote.is_marked_gone() {
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
                                message, remote, ..
                            }) = self.take_blocked()
                            else {
                                unreachable!("matched Credit above");
                            };
                            match permit {
                                Some(permit) => {
                                    permit.forget();
                                    if let Some(returned) = self.send_to_link(&remote, message) {
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
                        frame, mut sender, ..
                    }) = self.take_blocked()
                    else {
                        unreachable!("matched Link above");
                    };
                    if !reserved || sender.send_item(frame).is_err() {
                        Metrics::incr(&self.metrics.link_frames_dropped);
                        debug!(channel_id = %self.channel_id, role = %self.role,
                            "message dropped: link closed");
                    }
                }
            }
        }
    }

    /// Called periodically: a message parked on a peer that has since gone is sent again.
    pub fn recheck(&mut self) {
        if let Some(Blocked::Credit { remote, .. }) = self.blocked.as_deref()
            && remote.is_marked_gone()
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
                // Bytes and credit taken for a slot that never came go back, or every abandoned
                // message would shrink the receiver's budget or the remote window for good.
                match blocked {
                    Blocked::Local {
                        message,
                        bytes,
                        bytes_taken: true,
                        ..
                    } => bytes.give_back(message.payload.len()),
                    Blocked::Link {
                        frame,
                        bytes,
                        bytes_taken,
                        credits,
                        ..
                    } => {
                        if bytes_taken {
                            bytes.give_back(frame.data_len());
                        }
                        credits.add_permits(1);
                    }
                    _ => {}
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

    fn drop_no_peer(&self, message: &Message) {
        Metrics::incr(&self.metrics.messages_dropped_no_peer);
        debug!(channel_id = %self.channel_id, role = %self.role,
            bytes = message.payload.len(), "message dropped: peer not connected");
    }

    /// The peer, refreshed from the hub when the cached one is absent or gone.
    fn current_peer(&mut self) -> Option<&Peer> {
        if self.peer.as_ref().is_none_or(Peer::is_gone) {
            self.peer = self.router.hub.peer(&self.channel_id, self.role.peer());
        }
        self.peer.as_ref()
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

/// The receiving half: credit owed to nodes whose messages this session wrote to its client.
///
/// Credit goes back in batches of half this node's window (at most [`CREDIT_BATCH`]), never
/// one message at a time: at a low message rate that would double the frames on the links and
/// wake the sending node once more per message. Holding back less than half the window never
/// stalls a sender: once this session has written everything, the sender still has credit.
///
/// What a session owes when its peer is replaced by a new session on the same node (at most
/// one batch less one) goes back to the new sender, which did not spend it. Senders therefore
/// start with [`CreditReturn::sender_credits`], a batch less than the window, so even then no
/// more messages are in flight than the receiving session's queue holds.
#[derive(Debug)]
pub struct CreditReturn {
    batch: u32,
    owed: Option<(NodeId, u32)>,
}

impl CreditReturn {
    /// Credit return for a session of a node whose window is `window` messages.
    pub fn new(window: usize) -> CreditReturn {
        CreditReturn {
            batch: Self::batch(window),
            owed: None,
        }
    }

    /// Credit a sender starts with towards a session of a node whose window is `window`.
    pub fn sender_credits(window: usize) -> usize {
        window + 1 - Self::batch(window) as usize
    }

    fn batch(window: usize) -> u32 {
        u32::try_from(window / 2)
            .unwrap_or(u32::MAX)
            .clamp(1, CREDIT_BATCH)
    }

    /// Notes that a message from `origin` was written; returns credit due now, if any.
    pub fn written(&mut self, origin: NodeId) -> Option<(NodeId, u32)> {
        match &mut self.owed {
            Some((node, n)) if *node == origin => {
                *n += 1;
                if *n >= self.batch {
                    return self.owed.take();
                }
                None
            }
            // The first credit owed, or credit from a new node (the peer moved): what the
            // previous node was owed goes back at once.
            _ => {
                let previous = self.owed.replace((origin, 1));
                if previous.is_none() && self.batch == 1 {
                    return self.owed.take();
                }
                previous
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u64) -> NodeId {
        NodeId::from_u64(n).unwrap()
    }

    #[test]
    fn credit_goes_back_in_batches_of_half_the_window() {
        let mut credit = CreditReturn::new(8);
        let due: Vec<_> = (0..8).map(|_| credit.written(node(1))).collect();
        assert_eq!(
            due.iter().flatten().collect::<Vec<_>>(),
            [&(node(1), 4), &(node(1), 4)]
        );
    }

    #[test]
    fn senders_start_a_batch_less_one_below_the_window_and_never_at_zero() {
        assert_eq!(CreditReturn::sender_credits(1024), 1024 - 31);
        assert_eq!(CreditReturn::sender_credits(8), 5);
        assert_eq!(CreditReturn::sender_credits(3), 3);
        assert_eq!(CreditReturn::sender_credits(1), 1);
        for window in 1..200 {
            let credits = CreditReturn::sender_credits(window);
            let held_back = CreditReturn::batch(window) as usize - 1;
            assert!(credits > held_back, "window {window} could stall");
            assert!(
                credits + held_back <= window,
                "window {window} could overflow"
            );
        }
    }

    #[test]
    fn a_window_of_one_returns_every_message() {
        let mut credit = CreditReturn::new(1);
        assert_eq!(credit.written(node(1)), Some((node(1), 1)));
        assert_eq!(credit.written(node(2)), Some((node(2), 1)));
    }

    #[test]
    fn credit_owed_to_a_previous_node_is_returned_when_the_peer_moves() {
        let mut credit = CreditReturn::new(1024);
        assert_eq!(credit.written(node(1)), None);
        assert_eq!(credit.written(node(1)), None);
        assert_eq!(credit.written(node(2)), Some((node(1), 2)));
    }
}
