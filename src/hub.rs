//! The hub: which sessions this node holds, by channel id and role.
//!
//! A session enters the hub by [`Hub::claim`] before its upgrade is answered, so a duplicate
//! can still be refused with HTTP 409, and leaves it when its [`Claim`] is dropped. Release is
//! compare-and-delete: a claim removes only its own entry, never one a newer session wrote.
//!
//! The hub holds handles, never sockets: a [`SessionHandle`] is the sending end of a session's
//! bounded outbound queue, its credit, and a token that stops the session. In cluster mode the
//! hub also remembers, for channels it holds a session of, where the other role lives when it
//! is on another node ([`RemotePeer`]), as announced over the links; it keeps nothing for
//! channels it holds no session of. The map is split into shards by channel id, each behind a
//! `std` mutex held for a map operation only, never across an `.await`; sessions cache their
//! peer, so relaying a message does not touch a lock (see `outer::session`), and a link's
//! receiving side takes one shard's lock per frame, never a node-wide one.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::budget::QueueBudget;
use crate::config::DuplicatePolicy;
use crate::credit::{CreditState, Receipt};
use crate::inner::link::LinkHandle;
use crate::metrics::Metrics;
use crate::node::{Incarnation, NodeId};
use crate::pair::{ChannelId, Message, Role};
use crate::v1::{ClientId, Succession};

/// The hub's map is split into this many shards, each behind its own lock, so the receiving
/// side of every link and every claim do not contend on one node-wide mutex.
const SHARDS: usize = 16;

/// The sessions of this node.
#[derive(Debug)]
pub struct Hub {
    shards: Box<[Mutex<HashMap<ChannelId, Slots>>]>,
    hasher: RandomState,
    /// Source of session ids, so a release can tell its own entry from a newer one.
    next_session_id: AtomicU64,
    /// Messages every session's queue takes from local senders (`outer.send-queue`).
    send_queue: usize,
    /// Payload bytes every session's queue takes from local senders (`outer.send-queue-bytes`).
    send_queue_bytes: usize,
    /// Messages other nodes may have in flight to one session (the credit window); the queue
    /// holds them beside `send_queue`.
    window: usize,
    /// How long a displaced remote sender keeps its share of a session's window (see
    /// `credit::DEFAULT_SUPERSEDED_GRACE`).
    superseded_grace: std::time::Duration,
    policy: DuplicatePolicy,
    metrics: Arc<Metrics>,
    /// The node's shutdown token; every session's stop token is a child of it.
    shutdown: CancellationToken,
}

#[derive(Debug, Default)]
struct Slots {
    app: Option<Peer>,
    web: Option<Peer>,
    /// Since when a session of this node has waited for its peer: set when a session claims a
    /// role whose peer is absent and when its peer leaves, taken when a peer becomes known
    /// (`wspair_pairing_wait_seconds`).
    waiting_since: Option<std::time::Instant>,
}

impl Slots {
    fn slot(&mut self, role: Role) -> &mut Option<Peer> {
        match role {
            Role::App => &mut self.app,
            Role::Web => &mut self.web,
        }
    }

    fn slot_ref(&self, role: Role) -> Option<&Peer> {
        match role {
            Role::App => self.app.as_ref(),
            Role::Web => self.web.as_ref(),
        }
    }

    fn has_local(&self) -> bool {
        [&self.app, &self.web]
            .into_iter()
            .any(|slot| matches!(slot, Some(Peer::Local(_))))
    }

    /// `role` now holds a live session, here or on another node: how long the session of this
    /// node waited for it, if one did (observed by the caller once the shard's lock is let go).
    fn peer_arrived(&mut self, role: Role) -> Option<f64> {
        if !matches!(self.slot_ref(role.peer()), Some(Peer::Local(_))) {
            return None;
        }
        Some(self.waiting_since.take()?.elapsed().as_secs_f64())
    }

    /// `role`'s session left: the session of this node of the other role, if there is one,
    /// waits for its peer from now.
    fn peer_left(&mut self, role: Role) {
        if self.slot_ref(role).is_none()
            && matches!(self.slot_ref(role.peer()), Some(Peer::Local(_)))
        {
            self.waiting_since = Some(std::time::Instant::now());
        }
    }

    /// Wakes the v1 session of the other role, if this node holds one: what it knows of
    /// `role` changed.
    fn notify_peer_of(&self, role: Role) {
        if let Some(Peer::Local(handle)) = self.slot_ref(role.peer())
            && let Some(watch) = &handle.watch
        {
            watch.notify();
        }
    }

    fn forget_remotes(&mut self) {
        for slot in [&mut self.app, &mut self.web] {
            if let Some(Peer::Remote(remote)) = slot {
                remote.mark_gone();
                *slot = None;
            }
        }
    }
}

/// A session of another node, as far as this node knows: where it is and how to reach it.
/// How much may be sent to it is the sending session's [`crate::credit::Grant`].
#[derive(Debug, Clone)]
pub struct RemotePeer {
    /// The node holding the session.
    pub node: NodeId,
    /// The session's id on that node.
    pub session: u64,
    /// The link to that node.
    pub link: LinkHandle,
    /// Its client's v1 identity, as its node announced it or its route in Redis says; `None`
    /// for a raw client.
    pub client: Option<ClientId>,
    /// Set when this record is replaced or forgotten (the session ended, moved, or its node
    /// died). An atomic, not a token: senders check it for every message.
    pub gone: Arc<AtomicBool>,
}

impl RemotePeer {
    /// The remote session's incarnation.
    pub fn incarnation(&self) -> Incarnation {
        Incarnation {
            node: self.node,
            session: self.session,
        }
    }

    /// Marks the record as no longer current; senders caching it look again.
    pub fn mark_gone(&self) {
        self.gone.store(true, Ordering::Release);
    }

    /// True once [`RemotePeer::mark_gone`] was called.
    pub fn is_marked_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }
}

/// Where a session's peer is: on this node, or behind a link.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A session of this node.
    Local(SessionHandle),
    /// A session of another node.
    Remote(RemotePeer),
}

impl Peer {
    /// True once the peer has ended, moved, or been replaced; look it up again. Checked for
    /// every message, so it reads atomics only: a local session counts as gone once its queue
    /// closes (the first thing a stopping session does), not when its stop token fires, which
    /// would take a mutex. Messages queued in between are counted as dropped by that session.
    pub fn is_gone(&self) -> bool {
        match self {
            Peer::Local(handle) => handle.outbound_tx.is_closed(),
            Peer::Remote(remote) => remote.is_marked_gone() || remote.link.is_closed(),
        }
    }
}

/// A cheap, cloneable way to reach one session: its outbound queue, its credit and its
/// eviction token.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Unique within this node for its lifetime.
    pub id: u64,
    /// The session's outbound queue; the session task is the only receiver. It holds
    /// `outer.send-queue` messages from local senders (their room taken from `queue`) plus
    /// the credit window of messages from other nodes, so credited frames always fit.
    pub outbound_tx: mpsc::Sender<Message>,
    /// Room for local senders' messages; the session gives it back as it writes them.
    pub queue: QueueBudget,
    /// The session's credit as a receiver (ledger) and as a sender (grant).
    pub credit: Arc<CreditState>,
    /// Cancelled when the session must stop: a newer client of the same role and channel id
    /// replaced it, the node lost its route, or the node is shutting down (it is a child of
    /// the shutdown token).
    pub stop: CancellationToken,
    /// The client's v1 identity; `None` for a raw client.
    pub client: Option<ClientId>,
    /// Wakes a v1 session when the hub's record of its peer changes, so it can tell its
    /// client (`peer`); `None` for a raw session, which is told nothing.
    pub watch: Option<Arc<PeerWatch>>,
}

/// A flag and a waker: the hub's record of a v1 session's peer changed since the session last
/// looked. The session reads the record itself, so changes in a burst coalesce into one look,
/// and nothing is queued that a slow client could let pile up.
#[derive(Debug, Default)]
pub struct PeerWatch {
    changed: AtomicBool,
    /// The node is draining and the session must tell its client to move.
    goaway: AtomicBool,
    waker: AtomicWaker,
}

impl PeerWatch {
    /// Marks the record changed and wakes the session.
    pub fn notify(&self) {
        self.changed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Asks the session to send its client `goaway`.
    pub fn goaway(&self) {
        self.goaway.store(true, Ordering::Release);
        self.notify();
    }

    /// True once after [`PeerWatch::goaway`].
    pub fn take_goaway(&self) -> bool {
        self.goaway.swap(false, Ordering::AcqRel)
    }

    /// Ready once after every change (and at first, so the session looks once at its start).
    pub fn poll_changed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.changed.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl SessionHandle {
    /// Queues `message` if the queue has room for it; never waits. A full queue (in messages
    /// or in bytes) hands the message back as `Full`.
    pub fn try_queue(&self, message: Message) -> Result<(), TrySendError<Message>> {
        let len = message.payload.len();
        if !self.queue.try_take(len) {
            return Err(if self.outbound_tx.is_closed() {
                TrySendError::Closed(message)
            } else {
                TrySendError::Full(message)
            });
        }
        self.outbound_tx
            .try_send(message)
            .inspect_err(|_| self.queue.give_back(1, len))
    }

    /// True once the session is replaced or has ended; its queue accepts nothing useful then.
    pub fn is_gone(&self) -> bool {
        self.stop.is_cancelled() || self.outbound_tx.is_closed()
    }

    /// The session's incarnation on node `node` (this node).
    pub fn incarnation(&self, node: NodeId) -> Incarnation {
        Incarnation {
            node,
            session: self.id,
        }
    }
}

/// Why [`Hub::deliver_remote`] could not queue a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// This node holds no live session of that role in that channel, or a newer incarnation
    /// than the one the frame names.
    NoSession,
    /// The frame came without credit and the session's queue is full.
    QueueFull,
    /// A v1 frame from a sender session that is no longer the recorded peer; dropped, and
    /// the credit it took is due back to its sender.
    Superseded(Option<crate::credit::CreditDue>),
}

/// What [`Hub::set_remote`] did with an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The remote session is now the peer (new, or the one already recorded).
    Peer,
    /// Not recorded: nobody here needs it, the role is held here, or it is older than the
    /// session of the same node already recorded.
    Ignored,
}

/// A second client of a role that `outer.on-duplicate = "reject"` refuses, or a v1
/// connection older than the one of the same client holding the role.
#[derive(Debug, thiserror::Error)]
#[error("{}", if *.stale {
    format!("a newer connection of this client holds the {role} of channel {channel_id}")
} else {
    format!("channel {channel_id} already has a connected {role}")
})]
pub struct DuplicateError {
    /// The channel id that is taken.
    pub channel_id: ChannelId,
    /// The role that is taken.
    pub role: Role,
    /// True when the holder is a newer connection of the same v1 client (PROTOCOL.md §1).
    pub stale: bool,
}

/// A session's place in the hub. Dropping it removes the session, unless a newer one took over.
#[derive(Debug)]
pub struct Claim {
    hub: Arc<Hub>,
    /// The channel id the session belongs to.
    pub channel_id: ChannelId,
    /// The session's role.
    pub role: Role,
    /// The session's own handle; its `stop` token tells the session to end.
    pub handle: SessionHandle,
    /// The session of this node this claim took the slot from (`outer.on-duplicate =
    /// "replace"`). It keeps running until [`Claim::evict_displaced`], called once this
    /// session's upgrade is complete; if the upgrade fails instead, dropping the claim puts it
    /// back in the slot, so a client that gives up mid-upgrade never evicts a working one.
    pub displaced: Option<SessionHandle>,
    /// The session of another node this claim took the route from, evicted like `displaced`.
    /// Its node, session id and client's v1 identity.
    pub displaced_remote: Option<(NodeId, u64, Option<ClientId>)>,
}

impl Claim {
    /// Stops the local session this claim displaced, if any: the new session is upgraded.
    pub fn evict_displaced(&mut self) {
        if let Some(old) = self.displaced.take() {
            self.hub.evict(&old);
        }
    }
}

impl Hub {
    /// An empty hub whose sessions' queues take `send_queue` messages and `send_queue_bytes`
    /// payload bytes from local senders, plus `window` messages from other nodes.
    pub fn new(
        send_queue: usize,
        send_queue_bytes: usize,
        window: usize,
        superseded_grace: std::time::Duration,
        policy: DuplicatePolicy,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            next_session_id: AtomicU64::new(1),
            send_queue,
            send_queue_bytes,
            window,
            superseded_grace,
            policy,
            metrics,
            shutdown,
        }
    }

    /// Registers a new session for `role` in `channel_id` and returns its claim and the
    /// receiving end of its outbound queue. With [`DuplicatePolicy::Replace`] an existing
    /// session of that role is displaced (see [`Claim::displaced`]); with
    /// [`DuplicatePolicy::Reject`] the claim fails. A v1 `client` displaces an older
    /// connection of its own whatever the policy, and is refused by a newer one.
    pub fn claim(
        self: &Arc<Self>,
        channel_id: ChannelId,
        role: Role,
        client: Option<ClientId>,
    ) -> Result<(Claim, mpsc::Receiver<Message>), DuplicateError> {
        let (outbound_tx, outbound_rx) = mpsc::channel(self.send_queue + self.window);
        let handle = SessionHandle {
            id: self.next_session_id.fetch_add(1, Ordering::Relaxed),
            outbound_tx,
            queue: QueueBudget::new(self.send_queue, self.send_queue_bytes),
            credit: Arc::new(CreditState::new(self.window, self.superseded_grace)),
            stop: self.shutdown.child_token(),
            client,
            watch: client.map(|_| Arc::new(PeerWatch::default())),
        };
        if let Some(watch) = &handle.watch {
            watch.notify();
        }
        let mut sessions = self.lock(&channel_id);
        let slots = sessions.entry(channel_id).or_default();
        let mut displaced = None;
        match slots.slot_ref(role) {
            Some(Peer::Local(old)) if !old.is_gone() => {
                match (ClientId::succession(client, old.client), self.policy) {
                    (Succession::Stale, _) => {
                        return Err(DuplicateError {
                            channel_id,
                            role,
                            stale: true,
                        });
                    }
                    (Succession::Other, DuplicatePolicy::Reject) => {
                        return Err(DuplicateError {
                            channel_id,
                            role,
                            stale: false,
                        });
                    }
                    _ => displaced = Some(old.clone()),
                }
            }
            // A session of another node held this role; the registry claim decides about it.
            // A sender here waiting for its credit looks for the new peer.
            Some(Peer::Remote(remote)) => {
                remote.mark_gone();
                let gone = remote.incarnation();
                if let Some(Peer::Local(sender)) = slots.slot_ref(role.peer()) {
                    sender.credit.revoke(|receiver| receiver == gone);
                }
            }
            _ => {}
        }
        let slot = slots.slot(role);
        *slot = Some(Peer::Local(handle.clone()));
        slots.notify_peer_of(role);
        let waited = if slots
            .slot_ref(role.peer())
            .is_some_and(|peer| !peer.is_gone())
        {
            slots.peer_arrived(role)
        } else {
            slots.waiting_since = Some(std::time::Instant::now());
            None
        };
        drop(sessions);
        self.observe_wait(waited);
        let claim = Claim {
            hub: Arc::clone(self),
            channel_id,
            role,
            handle,
            displaced,
            displaced_remote: None,
        };
        Ok((claim, outbound_rx))
    }

    /// Where the live session of `role` in `channel_id` is, if this node knows.
    pub fn peer(&self, channel_id: &ChannelId, role: Role) -> Option<Peer> {
        let sessions = self.lock(channel_id);
        sessions
            .get(channel_id)?
            .slot_ref(role)
            .filter(|peer| !peer.is_gone())
            .cloned()
    }

    /// The live session of `role` in `channel_id`, if this node holds it.
    pub fn local(&self, channel_id: &ChannelId, role: Role) -> Option<SessionHandle> {
        match self.peer(channel_id, role)? {
            Peer::Local(handle) => Some(handle),
            Peer::Remote(_) => None,
        }
    }

    /// This node's live session `session`, if it still holds `role` of `channel_id`.
    pub fn session(
        &self,
        channel_id: &ChannelId,
        role: Role,
        session: u64,
    ) -> Option<SessionHandle> {
        self.local(channel_id, role)
            .filter(|handle| handle.id == session)
    }

    /// The credit of this node's session `session`, if it holds `role` of `channel_id`.
    pub fn local_credit(
        &self,
        channel_id: &ChannelId,
        role: Role,
        session: u64,
    ) -> Option<Arc<CreditState>> {
        let sessions = self.lock(channel_id);
        match sessions.get(channel_id)?.slot_ref(role)? {
            Peer::Local(handle) if handle.id == session => Some(Arc::clone(&handle.credit)),
            _ => None,
        }
    }

    /// The credit of this node's session `session` of `role`, if its recorded peer is
    /// `receiver`: where a credit frame from `receiver` lands, and only there.
    pub fn sender_credit(
        &self,
        channel_id: &ChannelId,
        role: Role,
        session: u64,
        receiver: Incarnation,
    ) -> Option<Arc<CreditState>> {
        let sessions = self.lock(channel_id);
        let slots = sessions.get(channel_id)?;
        match (slots.slot_ref(role)?, slots.slot_ref(role.peer())?) {
            (Peer::Local(handle), Peer::Remote(peer))
                if handle.id == session && peer.incarnation() == receiver =>
            {
                Some(Arc::clone(&handle.credit))
            }
            _ => None,
        }
    }

    /// Queues a message that session `sender` of another node sent, at position `seq`, for
    /// this node's session `receiver` of `role`, without waiting; says why not otherwise.
    /// Under credit it always fits; without (see [`Receipt::Uncredited`]) it takes room from
    /// the queue's budget like a local sender's. Returns the frames found lost before it.
    ///
    /// The receiving side of a link calls this for every data frame, so it clones no handle
    /// and locks one shard of the map and the session's ledger.
    pub fn deliver_remote(
        &self,
        channel_id: &ChannelId,
        role: Role,
        receiver: u64,
        sender: Incarnation,
        seq: u64,
        mut message: Message,
    ) -> Result<u64, Undelivered> {
        let sessions = self.lock(channel_id);
        let Some(slots) = sessions.get(channel_id) else {
            return Err(Undelivered::NoSession);
        };
        let Some(Peer::Local(handle)) = slots.slot_ref(role) else {
            return Err(Undelivered::NoSession);
        };
        if handle.id != receiver {
            return Err(Undelivered::NoSession);
        }
        // A v1 frame from a sender session that is no longer the peer (a half-open socket
        // whose client reconnected elsewhere) must not arrive after its successor's `sync`,
        // which comes after the successor's `Bound` and so after it is recorded here. With no
        // record at all the frame is delivered: no successor is known. A dropped frame's
        // credit is settled as if it had been written. (Raw frames are not checked: the
        // relay of raw clients never was.)
        let superseded = || match slots.slot_ref(role.peer()) {
            Some(Peer::Remote(peer)) => peer.incarnation() != sender,
            Some(Peer::Local(_)) => true,
            None => false,
        };
        if message.kind == crate::pair::MessageKind::V1 && superseded() {
            let mut ledger = handle.credit.ledger();
            let due = match ledger.receive(sender, seq) {
                Receipt::Credited { .. } => ledger.written(sender, 1),
                Receipt::Uncredited => None,
            };
            return Err(Undelivered::Superseded(due));
        }
        let receipt = handle.credit.ledger().receive(sender, seq);
        let full = |err: TrySendError<Message>| match err {
            TrySendError::Full(_) => Undelivered::QueueFull,
            TrySendError::Closed(_) => Undelivered::NoSession,
        };
        match receipt {
            Receipt::Credited { lost } => {
                message.origin = Some(sender);
                handle.outbound_tx.try_send(message).map_err(full)?;
                Ok(lost)
            }
            Receipt::Uncredited => {
                message.origin = None;
                handle.try_queue(message).map_err(full)?;
                Ok(0)
            }
        }
    }

    /// Records that `role` of `channel_id` lives on another node, as `remote`. Ignored when
    /// this node holds no session of the channel (nobody here needs to know), holds that role
    /// itself, or has recorded a newer session of the same node (session ids only grow, so an
    /// announcement that arrives late never overwrites its successor's). The record already
    /// there is kept when it names the same session, so what senders cached stays valid.
    ///
    /// `arrived`: the peer's session is new to the session of this node, which waited for it
    /// (an announcement), rather than found by that session's own claim (which waited for
    /// nothing): the wait is observed only then.
    pub fn set_remote(
        &self,
        channel_id: &ChannelId,
        role: Role,
        remote: RemotePeer,
        arrived: bool,
    ) -> Recorded {
        let mut sessions = self.lock(channel_id);
        let Some(slots) = sessions.get_mut(channel_id) else {
            return Recorded::Ignored;
        };
        if !slots.has_local() {
            return Recorded::Ignored;
        }
        let slot = slots.slot(role);
        match slot {
            Some(Peer::Local(handle)) if !handle.is_gone() => return Recorded::Ignored,
            Some(Peer::Remote(old)) if old.node == remote.node && !old.is_marked_gone() => {
                if old.session == remote.session {
                    return Recorded::Peer;
                }
                if old.session > remote.session {
                    return Recorded::Ignored;
                }
                old.mark_gone();
            }
            Some(Peer::Remote(old)) => old.mark_gone(),
            _ => {}
        }
        *slot = Some(Peer::Remote(remote));
        slots.notify_peer_of(role);
        let waited = slots.peer_arrived(role);
        drop(sessions);
        self.observe_wait(waited.filter(|_| arrived));
        Recorded::Peer
    }

    /// Records `remote` as in [`Hub::set_remote`], but only if no live session of `role` is
    /// recorded: for a record healed from the registry, which must never displace one that a
    /// `Bound` wrote meanwhile (the registry may name a session that has just ended). True if
    /// it was recorded.
    pub fn set_remote_if_vacant(
        &self,
        channel_id: &ChannelId,
        role: Role,
        remote: RemotePeer,
    ) -> bool {
        let mut sessions = self.lock(channel_id);
        let Some(slots) = sessions.get_mut(channel_id) else {
            return false;
        };
        if !slots.has_local() || slots.slot_ref(role).is_some_and(|peer| !peer.is_gone()) {
            return false;
        }
        *slots.slot(role) = Some(Peer::Remote(remote));
        slots.notify_peer_of(role);
        let waited = slots.peer_arrived(role);
        drop(sessions);
        self.observe_wait(waited);
        true
    }

    /// Notes the v1 identity the node of the remote session `peer` announced for it (in its
    /// `BoundAck`), if it is still the one recorded for `role`.
    pub fn set_remote_client(
        &self,
        channel_id: &ChannelId,
        role: Role,
        peer: Incarnation,
        client: Option<ClientId>,
    ) {
        let mut sessions = self.lock(channel_id);
        if let Some(slots) = sessions.get_mut(channel_id)
            && let Some(Peer::Remote(remote)) = slots.slot(role)
            && remote.incarnation() == peer
            && remote.client != client
        {
            remote.client = client;
            slots.notify_peer_of(role);
        }
    }

    /// Forgets the remote session `session` of `node` for `role` of `channel_id`, if it is the
    /// one recorded; true if it was.
    pub fn clear_remote(
        &self,
        channel_id: &ChannelId,
        role: Role,
        node: NodeId,
        session: u64,
    ) -> bool {
        let mut sessions = self.lock(channel_id);
        if let Some(slots) = sessions.get_mut(channel_id) {
            let slot = slots.slot(role);
            if let Some(Peer::Remote(remote)) = slot
                && remote.node == node
                && remote.session == session
            {
                remote.mark_gone();
                *slot = None;
                slots.notify_peer_of(role);
                slots.peer_left(role);
                return true;
            }
        }
        false
    }

    /// Forgets every remote record pointing at `node` (it died), marking each gone so
    /// sessions look again.
    pub fn forget_remotes_of(&self, node: NodeId) {
        crate::credit::assert_no_ledger_held();
        for shard in self.shards.iter() {
            for slots in lock(shard).values_mut() {
                for role in [Role::App, Role::Web] {
                    let slot = slots.slot(role);
                    if let Some(Peer::Remote(remote)) = slot
                        && remote.node == node
                    {
                        remote.mark_gone();
                        *slot = None;
                        slots.notify_peer_of(role);
                        slots.peer_left(role);
                    }
                }
            }
        }
    }

    /// Calls `visit` with every live session this node holds, under its shard's lock: keep
    /// it short, and take no other lock than a session's ledger in it.
    pub fn for_each_local(&self, mut visit: impl FnMut(&ChannelId, Role, &SessionHandle)) {
        crate::credit::assert_no_ledger_held();
        for shard in self.shards.iter() {
            for (channel_id, slots) in lock(shard).iter() {
                for (role, slot) in [(Role::App, &slots.app), (Role::Web, &slots.web)] {
                    if let Some(Peer::Local(handle)) = slot
                        && !handle.is_gone()
                    {
                        visit(channel_id, role, handle);
                    }
                }
            }
        }
    }

    /// Every live session this node holds, for registering them again.
    pub fn local_sessions(&self) -> Vec<(ChannelId, Role, u64)> {
        let mut found = Vec::new();
        self.for_each_local(|channel_id, role, handle| found.push((*channel_id, role, handle.id)));
        found
    }

    /// Sessions held, and channel ids with both roles connected on this node.
    pub fn counts(&self) -> (usize, usize) {
        self.sum_over_channels(|slots| {
            let local = |slot: &Option<Peer>| usize::from(matches!(slot, Some(Peer::Local(_))));
            let n = local(&slots.app) + local(&slots.web);
            (n, usize::from(n == 2))
        })
    }

    /// Observes a wait for a peer, outside any shard's lock.
    fn observe_wait(&self, waited: Option<f64>) {
        if let Some(seconds) = waited {
            self.metrics.histograms.pairing_wait.observe(seconds);
        }
    }

    /// Channels with one role on this node and the other on another node (known to this one).
    pub fn cross_node_pairs(&self) -> usize {
        let (pairs, _) = self.sum_over_channels(|slots| {
            let cross = matches!(
                (&slots.app, &slots.web),
                (Some(Peer::Local(_)), Some(Peer::Remote(_)))
                    | (Some(Peer::Remote(_)), Some(Peer::Local(_)))
            );
            (usize::from(cross), 0)
        });
        pairs
    }

    /// Two sums over every channel this node knows, one shard's lock at a time.
    fn sum_over_channels(&self, per_channel: impl Fn(&Slots) -> (usize, usize)) -> (usize, usize) {
        crate::credit::assert_no_ledger_held();
        let add = |(a, b): (usize, usize), (c, d): (usize, usize)| (a + c, b + d);
        self.shards
            .iter()
            .map(|shard| lock(shard).values().map(&per_channel).fold((0, 0), add))
            .fold((0, 0), add)
    }

    /// Empties the slot of session `session_id`, or gives it back to the session it displaced
    /// if that one still runs. If a newer session holds the slot by now, the displaced one is
    /// stopped: nothing would route to it any more.
    fn release(
        &self,
        channel_id: &ChannelId,
        role: Role,
        session_id: u64,
        displaced: Option<SessionHandle>,
    ) {
        let mut sessions = self.lock(channel_id);
        if let Entry::Occupied(mut entry) = sessions.entry(*channel_id) {
            let slots = entry.get_mut();
            let slot = slots.slot(role);
            if matches!(slot, Some(Peer::Local(handle)) if handle.id == session_id) {
                *slot = displaced.filter(|old| !old.is_gone()).map(Peer::Local);
                slots.notify_peer_of(role);
                slots.peer_left(role);
            } else if let Some(old) = displaced {
                self.evict(&old);
            }
            if !slots.has_local() {
                slots.forget_remotes();
                entry.remove();
            }
        }
    }

    /// Stops a session a newer one replaced, counting it unless it had ended already.
    pub fn evict(&self, old: &SessionHandle) {
        if !old.is_gone() {
            Metrics::incr(&self.metrics.sessions_replaced);
        }
        old.stop.cancel();
    }

    fn lock(&self, channel_id: &ChannelId) -> MutexGuard<'_, HashMap<ChannelId, Slots>> {
        let shard = self.hasher.hash_one(channel_id) as usize % SHARDS;
        crate::credit::assert_no_ledger_held();
        lock(&self.shards[shard])
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock would be a bug in a map operation; the map itself
    // stays consistent, so carrying on with it is sound.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for Claim {
    fn drop(&mut self) {
        let displaced = self.displaced.take();
        self.hub
            .release(&self.channel_id, self.role, self.handle.id, displaced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(policy: DuplicatePolicy) -> Arc<Hub> {
        Arc::new(Hub::new(
            4,
            1024,
            4,
            crate::credit::DEFAULT_SUPERSEDED_GRACE,
            policy,
            Arc::default(),
            CancellationToken::new(),
        ))
    }

    fn id(n: u8) -> ChannelId {
        format!("{:0>32}", n).parse().unwrap()
    }

    #[test]
    fn claim_then_drop_frees_the_slot() {
        let hub = hub(DuplicatePolicy::Reject);
        let (claim, _rx) = hub.claim(id(1), Role::App, None).unwrap();
        assert_eq!(hub.counts(), (1, 0));
        drop(claim);
        assert_eq!(hub.counts(), (0, 0));
        assert!(hub.claim(id(1), Role::App, None).is_ok());
    }

    #[test]
    fn reject_refuses_a_second_client_of_the_same_role() {
        let hub = hub(DuplicatePolicy::Reject);
        let (_app, _rx) = hub.claim(id(1), Role::App, None).unwrap();
        assert!(hub.claim(id(1), Role::App, None).is_err());
        let (_web, _rx2) = hub.claim(id(1), Role::Web, None).unwrap();
        assert_eq!(hub.counts(), (2, 1));
    }

    #[test]
    fn replace_evicts_the_old_session_and_its_release_keeps_the_new_one() {
        let hub = hub(DuplicatePolicy::Replace);
        let (old, _old_rx) = hub.claim(id(1), Role::Web, None).unwrap();
        let (mut new, _new_rx) = hub.claim(id(1), Role::Web, None).unwrap();
        // Only once the new session is upgraded.
        assert!(!old.handle.stop.is_cancelled());
        new.evict_displaced();
        assert!(old.handle.stop.is_cancelled());
        drop(old);
        let found = hub.local(&id(1), Role::Web).unwrap();
        assert_eq!(found.id, new.handle.id);
    }

    /// Regression: with a first replacement still upgrading when a second one came, the first
    /// one's failure dropped the original session's handle without stopping it, so it ran on
    /// outside the hub, still sending to its peer.
    #[test]
    fn overlapping_replacements_never_leave_a_session_outside_the_hub() {
        let hub = hub(DuplicatePolicy::Replace);
        let (first, _first_rx) = hub.claim(id(1), Role::Web, None).unwrap();
        let (second, _second_rx) = hub.claim(id(1), Role::Web, None).unwrap();
        let (mut third, _third_rx) = hub.claim(id(1), Role::Web, None).unwrap();
        drop(second);
        assert!(first.handle.stop.is_cancelled());
        third.evict_displaced();
        assert_eq!(hub.local(&id(1), Role::Web).unwrap().id, third.handle.id);
    }

    #[test]
    fn a_newer_generation_of_a_v1_client_displaces_it_whatever_the_policy() {
        let hub = hub(DuplicatePolicy::Reject);
        let client = |generation| Some(ClientId { sid: 7, generation });
        let (first, _rx) = hub.claim(id(1), Role::App, client(1)).unwrap();
        let (mut second, _rx2) = hub.claim(id(1), Role::App, client(2)).unwrap();
        second.evict_displaced();
        assert!(first.handle.stop.is_cancelled());
        let stale = hub.claim(id(1), Role::App, client(2)).unwrap_err();
        assert!(stale.stale);
        let other = hub
            .claim(
                id(1),
                Role::App,
                Some(ClientId {
                    sid: 8,
                    generation: 9,
                }),
            )
            .unwrap_err();
        assert!(!other.stale);
    }

    #[test]
    fn a_v1_session_is_woken_when_its_peer_comes_and_goes() {
        let hub = hub(DuplicatePolicy::Replace);
        let (web, _rx) = hub
            .claim(
                id(1),
                Role::Web,
                Some(ClientId {
                    sid: 7,
                    generation: 1,
                }),
            )
            .unwrap();
        let watch = web.handle.watch.clone().unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Once at the start, so the session looks at its peer.
        assert_eq!(watch.poll_changed(&mut cx), Poll::Ready(()));
        assert_eq!(watch.poll_changed(&mut cx), Poll::Pending);
        let (app, _rx2) = hub.claim(id(1), Role::App, None).unwrap();
        assert_eq!(watch.poll_changed(&mut cx), Poll::Ready(()));
        drop(app);
        assert_eq!(watch.poll_changed(&mut cx), Poll::Ready(()));
        assert!(hub.peer(&id(1), Role::App).is_none());
    }

    #[test]
    fn a_replacement_that_never_upgrades_gives_the_slot_back() {
        let hub = hub(DuplicatePolicy::Replace);
        let (old, _old_rx) = hub.claim(id(1), Role::Web, None).unwrap();
        let (new, _new_rx) = hub.claim(id(1), Role::Web, None).unwrap();
        assert_eq!(hub.local(&id(1), Role::Web).unwrap().id, new.handle.id);
        drop(new);
        assert!(!old.handle.stop.is_cancelled());
        assert_eq!(hub.local(&id(1), Role::Web).unwrap().id, old.handle.id);
    }
}
