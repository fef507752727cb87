//! Where a message goes: a session of this node, a link to the node that holds the peer, or
//! nowhere; and the cluster bookkeeping that keeps that answer right without asking Redis per
//! message.
//!
//! The router owns the cluster side of a node: the registry, the links (one per remote node,
//! spawned on first use), the directory of live nodes (refreshed by the heartbeat, judged by
//! time: see [`crate::liveness`]), the upkeep of this node's routes (a maintenance task of its
//! own, so the heartbeat never waits on it), and the handling of every frame an inner link
//! delivers. In single-node mode it holds only the hub.
//!
//! How caches stay right (cluster mode): a session claims its role in Redis (compare-and-set),
//! then reads its peer's route once; if the peer is on another node, it records it in the hub
//! and sends that node `Bound`, so the peer learns of it too. When a session ends, it releases
//! its route (compare-and-delete) and sends `Unbound` to its peer's node. A node that leaves the
//! directory is forgotten: its remote records are dropped and its link closed. Relaying a
//! message therefore costs no Redis operation in steady state.
//!
//! Backpressure across a link is per pair of session incarnations, by absolute credit (see
//! `credit`): the receiving session grants, the sending session's grant bounds what it has in
//! flight. A slow receiver stops only its own sender, and the link never waits on a session,
//! so other channels on it keep flowing. Frames name incarnations on both ends; one that
//! names a session this node no longer holds is dropped and counted, never applied to its
//! successor.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::DuplicatePolicy;
use crate::credit::CreditDue;
use crate::hub::{
    Claim, DuplicateError, Hub, Peer, Recorded, RemotePeer, SessionHandle, Undelivered,
};
use crate::inner::frame::InnerFrame;
use crate::inner::link::{LinkContext, LinkHandle, spawn_link};
use crate::liveness::Liveness;
use crate::metrics::Metrics;
use crate::node::{Incarnation, NodeId, NodeInfo};
use crate::pair::{ChannelId, Message, Role};
use crate::registry::{ClaimOutcome, Heartbeat, ROUTE_TTL, RedisRegistry, RegistryError, Route};

/// Claims that lose a compare-and-set race are retried this many times.
const CLAIM_ATTEMPTS: usize = 4;

/// How long a node that dialed this one is remembered after it stops being live.
const HEARD_RETAIN: Duration = Duration::from_secs(60 * 60);

/// Routes registered again (or releases retried) at once: enough to hide the round trip,
/// few enough that a heartbeat sharing the connection waits behind no more than this.
const REREGISTER_CONCURRENCY: usize = 32;

/// Routes registered again (or releases retried) per second, at most. A node with 100 000
/// sessions takes 20 s, well within a route's life; ten such nodes registering again at once
/// after Redis restarted empty ask it for 50 000 short scripts a second, a fraction of what one
/// Redis core serves, which leaves room for the claims of the reconnecting clients.
const REREGISTER_PER_SECOND: usize = 5_000;

/// The pace of that rate: a batch of `REREGISTER_PER_SECOND / 10` every 100 ms.
const REREGISTER_TICK: Duration = Duration::from_millis(100);

/// Why a claim failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The role is taken and the duplicate policy is `reject`.
    #[error(transparent)]
    Duplicate(#[from] DuplicateError),
    /// The registry could not be reached.
    #[error("registry unavailable: {0}")]
    Unavailable(#[from] RegistryError),
    /// Other nodes kept changing the route; the client may retry.
    #[error("the route of channel {0} kept changing; retry")]
    Contended(ChannelId),
    /// The node holding the peer did not acknowledge this session within
    /// `inner.connect-timeout`: without that, the peer could not reach it, nor it the peer.
    #[error("the node holding the peer did not answer within {0:?}; retry")]
    PeerNodeSilent(Duration),
}

/// The cluster side of a node.
struct Cluster {
    registry: RedisRegistry,
    link_ctx: Arc<LinkContext>,
    links: Mutex<HashMap<NodeId, (LinkHandle, CancellationToken)>>,
    directory: Mutex<Directory>,
    /// One extra poll of the directory at a time (claims meeting a node not known yet).
    extra_polls: tokio::sync::Mutex<()>,
    /// What the heartbeat asks of the maintenance task.
    upkeep: Upkeep,
    /// Routes whose release failed (Redis down); the maintenance task retries them after each
    /// heartbeat that reached Redis.
    pending_releases: Mutex<Vec<(ChannelId, Role, Route)>>,
    /// What each node that dialed this one said in its `Hello`; lets a `Bound` from a node the
    /// directory has timed out (but which is evidently alive) be answered.
    /// Entries of nodes not live for [`HEARD_RETAIN`] are pruned at each heartbeat.
    heard: Mutex<HashMap<NodeId, (NodeInfo, Instant)>>,
    /// Claims waiting for the peer's node to acknowledge their `Bound`.
    pending_acks: Mutex<HashMap<(ChannelId, Role, u64), oneshot::Sender<()>>>,
    /// How long a claim waits for that acknowledgement (`inner.connect-timeout`).
    ack_timeout: Duration,
    tracker: TaskTracker,
    /// Cancelled after the sessions have drained, so `Unbound` frames still go out.
    links_cancel: CancellationToken,
}

/// Live nodes, as the heartbeats saw them: dead when not seen for `registry.node-ttl`.
#[derive(Debug)]
struct Directory {
    live: Liveness,
    /// When the last poll that has ended (answered or not) started: a claim that asked for a
    /// poll before then needs no other.
    polled: Option<Instant>,
}

/// What the heartbeat asks of the maintenance task ([`Router::maintenance_loop`]).
#[derive(Debug, Default)]
struct Upkeep {
    /// Notified after every heartbeat that reached Redis.
    wake: Notify,
    /// Set when a poll found this node's entry missing: every session is registered again.
    reregister: AtomicBool,
}

/// A route the maintenance task is to write again.
#[derive(Debug, Clone, Copy)]
struct Refresh {
    channel_id: ChannelId,
    role: Role,
    session: u64,
    /// Send `Bound` to the peer's node once written: this node's registration was lost, and
    /// the other nodes may have forgotten the session.
    announce: bool,
    /// When its route was found held by another session. A claim in flight on this node holds
    /// its slot before it writes its route, so one look is no proof; a second look, made after
    /// the next heartbeat and half a heartbeat interval later at least, is.
    suspect: Option<Instant>,
}

impl Directory {
    /// Notes a poll that started at `started` and has ended, answered or not.
    fn polled(&mut self, started: Instant) {
        self.polled = Some(self.polled.map_or(started, |polled| polled.max(started)));
    }
}

/// Routes messages and keeps the cluster's view of routes current.
pub struct Router {
    /// The sessions of this node.
    pub hub: Arc<Hub>,
    me: NodeInfo,
    policy: DuplicatePolicy,
    metrics: Arc<Metrics>,
    cluster: Option<Cluster>,
    this: Weak<Router>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("me", &self.me)
            .field("cluster", &self.cluster.is_some())
            .finish_non_exhaustive()
    }
}

/// What the router needs to run in cluster mode.
pub struct ClusterParts {
    /// The connected registry.
    pub registry: RedisRegistry,
    /// Settings and counters shared by every link.
    pub link_ctx: Arc<LinkContext>,
    /// Tracks link tasks.
    pub tracker: TaskTracker,
    /// Stops the links at the end of shutdown.
    pub links_cancel: CancellationToken,
}

impl Router {
    /// A router for `hub`; in cluster mode when `cluster` is given.
    pub fn new(
        hub: Arc<Hub>,
        me: NodeInfo,
        policy: DuplicatePolicy,
        metrics: Arc<Metrics>,
        cluster: Option<ClusterParts>,
    ) -> Arc<Router> {
        let ack_timeout = cluster.as_ref().map_or(Duration::ZERO, |parts| {
            parts.link_ctx.config.connect_timeout
        });
        let node_ttl = cluster
            .as_ref()
            .map_or(Duration::ZERO, |parts| parts.registry.node_ttl());
        Arc::new_cyclic(|this| Router {
            hub,
            me,
            policy,
            metrics,
            cluster: cluster.map(|parts| Cluster {
                registry: parts.registry,
                link_ctx: parts.link_ctx,
                links: Mutex::default(),
                directory: Mutex::new(Directory {
                    live: Liveness::new(node_ttl),
                    polled: None,
                }),
                extra_polls: tokio::sync::Mutex::default(),
                upkeep: Upkeep::default(),
                pending_releases: Mutex::default(),
                pending_acks: Mutex::default(),
                heard: Mutex::default(),
                ack_timeout,
                tracker: parts.tracker,
                links_cancel: parts.links_cancel,
            }),
            this: this.clone(),
        })
    }

    /// This node's id and advertised address.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// Claims `role` of `channel_id` for a new session of this node, on this node and, in
    /// cluster mode, in the registry; then finds the peer if it is on another node.
    pub async fn claim(
        &self,
        channel_id: ChannelId,
        role: Role,
    ) -> Result<(Claim, mpsc::Receiver<Message>), ClaimError> {
        let (mut claim, outbound_rx) = self.hub.claim(channel_id, role)?;
        if let Some(cluster) = &self.cluster {
            // On error the claim is dropped, which releases the hub slot.
            let peer = self.write_route(cluster, &mut claim).await?;
            if let Err(err) = self.bind_peer(cluster, &claim, peer).await {
                // The route is written: it goes back to what the claim displaced, or away.
                self.abandon(claim).await;
                return Err(err);
            }
        }
        Ok((claim, outbound_rx))
    }

    /// Completes a claim once its session's upgrade is answered: the session it displaced,
    /// here or on another node, is evicted only now.
    pub fn activate(&self, claim: &mut Claim) {
        claim.evict_displaced();
        if let Some((node, session)) = claim.displaced_remote.take() {
            let (channel_id, role) = (claim.channel_id, claim.role);
            Metrics::incr(&self.metrics.sessions_replaced);
            self.send_control(
                node,
                InnerFrame::Evict {
                    channel_id,
                    role,
                    session,
                },
            );
            // A peer on the displaced session's own node ignored this session's `Bound` while
            // the displaced one still ran there; told again after the eviction, on the same
            // link, it records this one.
            if let Some(Peer::Remote(peer)) = self.hub.peer(&channel_id, role.peer())
                && peer.node == node
            {
                self.send_control(
                    node,
                    InnerFrame::Bound {
                        channel_id,
                        role,
                        session: claim.handle.id,
                    },
                );
            }
        }
    }

    /// Gives up a claim whose upgrade failed or timed out. The session it displaced, which was
    /// never evicted, gets its route back; with none, the route is released.
    ///
    /// A displaced session of this node also gets its slot back (when the claim drops) and is
    /// announced again to a peer on another node. A displaced session of another node gets its
    /// route back when its peer is here, absent, or on its own node. When the peer is on a
    /// third node, which has learnt of the failed session and cannot be told of the displaced
    /// one by this node, the displaced session is evicted after all, and so it is when the
    /// route cannot be given back (a newer claim took it, or Redis failed): the pair ends up
    /// consistent, with the evicted client reconnecting, never with a session left running
    /// that no route leads to.
    pub async fn abandon(&self, mut claim: Claim) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let (channel_id, role) = (claim.channel_id, claim.role);
        let remote_peer = match self.hub.peer(&channel_id, role.peer()) {
            Some(Peer::Remote(remote)) => Some(remote),
            _ => None,
        };
        let local = claim
            .displaced
            .as_ref()
            .filter(|old| !old.is_gone())
            .map(|old| Route {
                node: self.me.id,
                session: old.id,
            });
        let remote = claim
            .displaced_remote
            .filter(|(node, _)| remote_peer.as_ref().is_none_or(|peer| peer.node == *node))
            .map(|(node, session)| Route { node, session });
        let Some(restore) = local.or(remote) else {
            self.activate(&mut claim);
            self.release(&claim).await;
            return;
        };
        let mine = Route {
            node: self.me.id,
            session: claim.handle.id,
        };
        let restored = match cluster
            .registry
            .compare_and_set(&channel_id, role, Some(mine), restore)
            .await
        {
            Ok(restored) => restored,
            Err(err) => {
                warn!(%channel_id, %role, error = %err, "route not given back after a failed upgrade; releasing it at the next heartbeat");
                lock(&cluster.pending_releases).push((channel_id, role, mine));
                false
            }
        };
        if !restored {
            self.activate(&mut claim);
            // Whatever `activate` told the peer's node of the failed session, it forgets now.
            unbind(remote_peer.as_ref(), &claim);
            return;
        }
        let restored_here = restore.node == self.me.id;
        if restored_here {
            // A displaced session that ended meanwhile released its route before it was
            // written back: remove it again rather than leave a route to nobody.
            if claim.displaced.as_ref().is_some_and(SessionHandle::is_gone) {
                if cluster
                    .registry
                    .release(&channel_id, role, restore)
                    .await
                    .is_err()
                {
                    lock(&cluster.pending_releases).push((channel_id, role, restore));
                }
            } else if let Some(remote_peer) = &remote_peer {
                // The failed session first, on the same link: its node records a newer
                // session of a node over an older one, never the other way round.
                unbind(Some(remote_peer), &claim);
                remote_peer.link.send_control(InnerFrame::Bound {
                    channel_id,
                    role,
                    session: restore.session,
                });
            }
        }
        // A displaced session of another node is given back its route without this node knowing
        // whether it still lives; its peer's node, had it recorded the failed session (the
        // displaced one having ended meanwhile), forgets it rather than send into nothing.
        if !restored_here {
            unbind(remote_peer.as_ref(), &claim);
        }
        // Dropping the claim gives a displaced session of this node its slot back; one of
        // another node is recorded again for a local peer.
        drop(claim);
        if !restored_here && let Some(remote) = self.remote_peer(restore) {
            self.adopt_remote(channel_id, role, remote);
        }
    }

    /// Writes this claim's route and reads the peer's, in one Redis round trip (one more, and
    /// a directory read, only when the route names a node this node has not heard of), noting
    /// what it displaced on another node. On error nothing was written.
    async fn write_route(
        &self,
        cluster: &Cluster,
        claim: &mut Claim,
    ) -> Result<Option<Route>, ClaimError> {
        let (channel_id, role) = (claim.channel_id, claim.role);
        let mine = Route {
            node: self.me.id,
            session: claim.handle.id,
        };
        let reject = self.policy == DuplicatePolicy::Reject;
        let mut dead = Vec::new();
        for _ in 0..CLAIM_ATTEMPTS {
            let live = self.live_nodes(cluster);
            let (outcome, peer) = cluster
                .registry
                .claim(&channel_id, role, mine, reject, &live, &dead)
                .await?;
            match outcome {
                ClaimOutcome::Written { displaced } => {
                    // Evicted only once this session is upgraded (`activate`). A route of this
                    // node is a session being replaced here, which the hub handles.
                    claim.displaced_remote = displaced
                        .filter(|holder| live.contains(&holder.node))
                        .map(|holder| (holder.node, holder.session));
                    return Ok(peer);
                }
                ClaimOutcome::Held(_) => return Err(DuplicateError { channel_id, role }.into()),
                ClaimOutcome::UnknownHolder(holder) => {
                    // A node that joined since the last heartbeat, or one long dead.
                    self.learn_if_unknown(holder.node).await;
                    if !self.is_live(holder.node) {
                        dead.push(holder.node);
                    }
                }
            }
        }
        Err(ClaimError::Contended(channel_id))
    }

    /// Every other node the directory holds as live.
    fn live_nodes(&self, cluster: &Cluster) -> Vec<NodeId> {
        lock(&cluster.directory)
            .live
            .ids()
            .filter(|node| *node != self.me.id)
            .collect()
    }

    /// Finds the claim's peer (`peer`, the route read with the claim) and, when it is on
    /// another node, tells that node of this session and waits for its acknowledgement (up
    /// to the ack timeout).
    async fn bind_peer(
        &self,
        cluster: &Cluster,
        claim: &Claim,
        peer: Option<Route>,
    ) -> Result<(), ClaimError> {
        let (channel_id, role) = (claim.channel_id, claim.role);
        // A peer's `Bound` that arrived while this claim ran names a session at least as new as
        // the route the claim read; when the two differ, Redis is asked again rather than one
        // of them trusted (a record from before the claim may be stale as well).
        let mut peer = peer;
        if let Some(Peer::Remote(recorded)) = self.hub.peer(&channel_id, role.peer())
            && peer != Some(recorded.incarnation())
        {
            peer = cluster.registry.route(&channel_id, role.peer()).await?;
        }
        if let Some(route) = peer {
            self.learn_if_unknown(route.node).await;
        }
        if let Some(peer) = peer
            && peer.node != self.me.id
            && let Some(remote) = self.remote_peer(peer)
        {
            let incarnation = remote.incarnation();
            self.hub.set_remote(&channel_id, role.peer(), remote);
            // The client is answered only once the peer's node knows of it, so a message the
            // peer sends after this client is connected is never dropped for want of a route.
            let key = (channel_id, role, claim.handle.id);
            let (ack_tx, ack_rx) = oneshot::channel();
            lock(&cluster.pending_acks).insert(key, ack_tx);
            self.send_control(
                peer.node,
                InnerFrame::Bound {
                    channel_id,
                    role,
                    session: claim.handle.id,
                },
            );
            // After the `Bound`, on the same queue: the peer's node applies credit only from a
            // session it has recorded.
            let due = claim.handle.credit.ledger().open(incarnation);
            if let Some(due) = due {
                self.send_credit(channel_id, role, claim.handle.id, due);
            }
            if tokio::time::timeout(cluster.ack_timeout, ack_rx)
                .await
                .is_err()
            {
                lock(&cluster.pending_acks).remove(&key);
                warn!(%channel_id, %role, node = %peer.node, "peer's node did not acknowledge the bind in time; refusing the client");
                return Err(ClaimError::PeerNodeSilent(cluster.ack_timeout));
            }
        }
        Ok(())
    }

    /// Releases a session's route and tells its remote peer, if any, that it ended.
    pub async fn release(&self, claim: &Claim) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let (channel_id, role) = (claim.channel_id, claim.role);
        if let Some(Peer::Remote(remote)) = self.hub.peer(&channel_id, role.peer()) {
            unbind(Some(&remote), claim);
        }
        let mine = Route {
            node: self.me.id,
            session: claim.handle.id,
        };
        if let Err(err) = cluster.registry.release(&channel_id, role, mine).await {
            warn!(%channel_id, %role, error = %err, "route release failed; retrying at the next heartbeat");
            lock(&cluster.pending_releases).push((channel_id, role, mine));
        }
    }

    /// Announces credit from this node's session `receiver` (holding `role` of `channel_id`)
    /// to the sending session `due.to`.
    pub fn send_credit(&self, channel_id: ChannelId, role: Role, receiver: u64, due: CreditDue) {
        self.send_control(
            due.to.node,
            InnerFrame::Credit {
                channel_id,
                role: role.peer(),
                sender: due.to.session,
                receiver,
                limit: due.limit,
            },
        );
    }

    /// Records `remote` as the session of `role` in `channel_id` and, if it is now the peer
    /// of a session here, opens its credit account there and announces the grant.
    fn adopt_remote(&self, channel_id: ChannelId, role: Role, remote: RemotePeer) {
        let incarnation = remote.incarnation();
        if self.hub.set_remote(&channel_id, role, remote) == Recorded::Ignored {
            Metrics::incr(&self.metrics.inner_frames_stale);
            return;
        }
        if let Some(handle) = self.hub.local(&channel_id, role.peer()) {
            let due = handle.credit.ledger().open(incarnation);
            if let Some(due) = due {
                self.send_credit(channel_id, role.peer(), handle.id, due);
            }
        }
    }

    /// Handles a frame an authenticated link delivered from `from`. Never waits.
    pub fn on_frame(&self, from: NodeId, frame: InnerFrame) {
        match frame {
            InnerFrame::Data {
                channel_id,
                role,
                sender,
                receiver,
                seq,
                kind,
                payload,
            } => {
                let message = Message {
                    kind,
                    payload,
                    origin: None,
                };
                let sender = Incarnation {
                    node: from,
                    session: sender,
                };
                match self
                    .hub
                    .deliver_remote(&channel_id, role, receiver, sender, seq, message)
                {
                    Ok(0) => {}
                    Ok(lost) => {
                        Metrics::add(&self.metrics.messages_lost_between_nodes, lost);
                        warn!(%channel_id, %role, node = %from, lost, "messages from a remote node lost on the way");
                    }
                    // The receiving incarnation is gone: the sender's grant for it is void, so
                    // nothing is given back; the sender finds the successor and its grant.
                    Err(Undelivered::NoSession) => {
                        Metrics::incr(&self.metrics.messages_dropped_remote);
                        debug!(%channel_id, %role, node = %from, "message from a remote node dropped: its session is gone");
                    }
                    Err(Undelivered::QueueFull) => {
                        Metrics::incr(&self.metrics.messages_dropped_remote);
                        warn!(%channel_id, %role, node = %from, "message from a remote node dropped: it came without credit and the session's queue is full");
                    }
                }
            }
            InnerFrame::Credit {
                channel_id,
                role,
                sender,
                receiver,
                limit,
            } => {
                let receiver = Incarnation {
                    node: from,
                    session: receiver,
                };
                match self.hub.sender_credit(&channel_id, role, sender, receiver) {
                    Some(credit) => {
                        if let Some(sent) = credit.credit(receiver, limit)
                            && let Some(Peer::Remote(peer)) =
                                self.hub.peer(&channel_id, role.peer())
                        {
                            // Behind this session's data, as a waiting sender's would be.
                            let _ = peer.link.try_send_data(InnerFrame::Sent {
                                channel_id,
                                role: role.peer(),
                                sender,
                                receiver: receiver.session,
                                sent,
                            });
                        }
                    }
                    None => {
                        Metrics::incr(&self.metrics.inner_frames_stale);
                        debug!(%channel_id, %role, node = %from, "credit for a session incarnation no longer here dropped");
                    }
                }
            }
            InnerFrame::Sent {
                channel_id,
                role,
                sender,
                receiver,
                sent,
            } => self.on_sent(from, channel_id, role, sender, receiver, sent),
            InnerFrame::Bound {
                channel_id,
                role,
                session,
            } => {
                if !self.is_live(from)
                    && let Some(cluster) = &self.cluster
                {
                    // Bound first: a guard in the `if let` would live through `learn_node`,
                    // which locks `directory`, while the heartbeat locks them the other way.
                    let heard = lock(&cluster.heard).get(&from).cloned();
                    if let Some((info, _)) = heard {
                        self.learn_node(info);
                    }
                }
                if let Some(remote) = self.remote_peer(Route {
                    node: from,
                    session,
                }) {
                    self.adopt_remote(channel_id, role, remote);
                }
                self.send_control(
                    from,
                    InnerFrame::BoundAck {
                        channel_id,
                        role,
                        session,
                    },
                );
            }
            InnerFrame::BoundAck {
                channel_id,
                role,
                session,
            } => {
                if let Some(cluster) = &self.cluster
                    && let Some(ack_tx) =
                        lock(&cluster.pending_acks).remove(&(channel_id, role, session))
                {
                    let _ = ack_tx.send(());
                }
            }
            InnerFrame::Hello {
                node,
                window,
                advertise,
                ..
            } => {
                let info = NodeInfo {
                    id: node,
                    advertise,
                    window,
                    version: String::new(),
                };
                if let Some(cluster) = &self.cluster {
                    lock(&cluster.heard).insert(node, (info.clone(), Instant::now()));
                }
                self.learn_node(info);
            }
            InnerFrame::Unbound {
                channel_id,
                role,
                session,
                sent,
            } => {
                self.hub.clear_remote(&channel_id, role, from, session);
                if let Some(handle) = self.hub.local(&channel_id, role.peer()) {
                    let sender = Incarnation {
                        node: from,
                        session,
                    };
                    handle.credit.revoke(|receiver| receiver == sender);
                    let due = handle.credit.ledger().ended(sender, sent);
                    if let Some(due) = due {
                        self.send_credit(channel_id, role.peer(), handle.id, due);
                    }
                }
            }
            InnerFrame::Evict {
                channel_id,
                role,
                session,
            } => {
                if let Some(handle) = self.hub.local(&channel_id, role)
                    && handle.id == session
                {
                    handle.stop.cancel();
                }
            }
            InnerFrame::Auth { .. } | InnerFrame::Ping | InnerFrame::Pong => {}
        }
    }

    /// A sender that waited for credit says how many messages it sent: what never arrived is
    /// counted lost and credited, and the limit goes back to it. A sender this session has no
    /// account for, but records as its peer (its node was forgotten and came back), gets one
    /// opened at its position.
    fn on_sent(
        &self,
        from: NodeId,
        channel_id: ChannelId,
        role: Role,
        sender: u64,
        receiver: u64,
        sent: u64,
    ) {
        let Some(credit) = self.hub.local_credit(&channel_id, role, receiver) else {
            Metrics::incr(&self.metrics.inner_frames_stale);
            return;
        };
        let sender = Incarnation {
            node: from,
            session: sender,
        };
        let is_peer = || {
            matches!(self.hub.peer(&channel_id, role.peer()),
                Some(Peer::Remote(peer)) if peer.incarnation() == sender)
        };
        let (lost, due) = {
            let known = credit.ledger().knows(sender);
            // Checked outside the ledger's lock: the hub's lock comes first, never inside.
            if !known && !is_peer() {
                Metrics::incr(&self.metrics.inner_frames_stale);
                return;
            }
            let mut ledger = credit.ledger();
            if !ledger.knows(sender) {
                ledger.open(sender);
            }
            ledger.sent(sender, sent)
        };
        if lost > 0 {
            Metrics::add(&self.metrics.messages_lost_between_nodes, lost);
            warn!(%channel_id, %role, node = %from, lost, "messages from a remote node lost on the way");
        }
        if let Some(due) = due {
            self.send_credit(channel_id, role, receiver, due);
        }
    }

    /// Forgets a node that died: its sessions' records, and the credit its senders held,
    /// which goes to the senders that replaced them.
    fn forget_node(&self, node: NodeId) {
        self.hub.forget_remotes_of(node);
        let mut dues = Vec::new();
        self.hub.for_each_local(|channel_id, role, handle| {
            handle.credit.revoke(|receiver| receiver.node == node);
            if let Some(due) = handle.credit.ledger().forget_node(node) {
                dues.push((*channel_id, role, handle.id, due));
            }
        });
        for (channel_id, role, receiver, due) in dues {
            self.send_credit(channel_id, role, receiver, due);
        }
    }

    /// Adds a node that authenticated a link to this one, if the directory does not have it
    /// yet, as seen now; the heartbeats confirm it or it dies like any other.
    fn learn_node(&self, info: NodeInfo) {
        if let Some(cluster) = &self.cluster {
            let (id, advertise) = (info.id, info.advertise.clone());
            if lock(&cluster.directory).live.learn(info, Instant::now()) {
                info!(node = %id, %advertise, "node joined the cluster (link)");
            }
        }
    }

    /// A route may name a node that joined since the last heartbeat; reads the directory
    /// once more before treating it as dead. Costs a Redis call only for unknown nodes, and
    /// claims that meet one at once share a poll. Such a poll adds nodes, never kills one.
    async fn learn_if_unknown(&self, node: NodeId) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        if self.is_live(node) {
            return;
        }
        let asked = Instant::now();
        let _turn = cluster.extra_polls.lock().await;
        let polled_since = lock(&cluster.directory)
            .polled
            .is_some_and(|polled| polled >= asked);
        if polled_since || self.is_live(node) {
            return;
        }
        let started = Instant::now();
        match cluster.registry.heartbeat().await {
            Ok(beat) => {
                self.update_directory(cluster, beat, started, false);
            }
            Err(err) => {
                lock(&cluster.directory).polled(started);
                debug!(%node, error = %err, "directory poll for an unknown node failed");
            }
        }
    }

    fn is_live(&self, node: NodeId) -> bool {
        node == self.me.id
            || self
                .cluster
                .as_ref()
                .is_some_and(|cluster| lock(&cluster.directory).live.contains(&node))
    }

    /// A record of a remote session; `None` if its node is not live.
    fn remote_peer(&self, route: Route) -> Option<RemotePeer> {
        let cluster = self.cluster.as_ref()?;
        let info = lock(&cluster.directory).live.get(&route.node).cloned()?;
        Some(RemotePeer {
            node: route.node,
            session: route.session,
            link: self.link(cluster, &info),
            gone: Arc::default(),
        })
    }

    fn send_control(&self, node: NodeId, frame: InnerFrame) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        // Credit returns come through here as often as every 32 messages: use an open link in
        // place, without cloning its handle or the node's directory entry.
        if let Some((handle, _)) = lock(&cluster.links).get(&node)
            && !handle.is_closed()
        {
            handle.send_control(frame);
            return;
        }
        let Some(info) = lock(&cluster.directory).live.get(&node).cloned() else {
            Metrics::incr(&self.metrics.link_frames_dropped);
            debug!(%node, "control frame for a node that is not live dropped");
            return;
        };
        self.link(cluster, &info).send_control(frame);
    }

    /// The link to `info`'s node, spawned on first use.
    fn link(&self, cluster: &Cluster, info: &NodeInfo) -> LinkHandle {
        let mut links = lock(&cluster.links);
        if let Some((handle, _)) = links.get(&info.id)
            && !handle.is_closed()
        {
            return handle.clone();
        }
        let cancel = cluster.links_cancel.child_token();
        let this = self.this.clone();
        let handle = spawn_link(
            info.clone(),
            Arc::clone(&cluster.link_ctx),
            &cluster.tracker,
            cancel.clone(),
            Box::new(move |node| {
                if let Some(router) = this.upgrade() {
                    router.on_link_up(node);
                }
            }),
        );
        links.insert(info.id, (handle.clone(), cancel));
        handle
    }

    /// A (re)connected link: credit frames may have been lost with the old connection, so
    /// every session here announces its current grant to its senders on that node again.
    /// Absolute limits make the repetition harmless.
    fn on_link_up(&self, node: NodeId) {
        let mut dues = Vec::new();
        self.hub.for_each_local(|channel_id, role, handle| {
            if let Some(due) = handle.credit.ledger().current_on(node) {
                dues.push((*channel_id, role, handle.id, due));
            }
        });
        for (channel_id, role, receiver, due) in dues {
            self.send_credit(channel_id, role, receiver, due);
        }
    }

    /// Runs one heartbeat: refreshes this node's entry, updates the directory and forgets the
    /// nodes that died, then wakes the maintenance task (which registers every session again if
    /// Redis had lost this node's entry). Returns false if Redis could not be reached.
    pub async fn heartbeat(&self, first: bool) -> bool {
        let Some(cluster) = &self.cluster else {
            return true;
        };
        let started = Instant::now();
        let beat = match cluster.registry.heartbeat().await {
            Ok(beat) => beat,
            Err(err) => {
                warn!(error = %err, "registry heartbeat failed; established pairs keep relaying");
                let mut directory = lock(&cluster.directory);
                directory.live.blind(started);
                directory.polled(started);
                return false;
            }
        };
        let was_missing = beat.was_missing;
        let dead = self.update_directory(cluster, beat, started, true);
        // Locks never nest: the live set is copied out of `directory` before `heard` is taken.
        let live: HashSet<NodeId> = lock(&cluster.directory).live.ids().collect();
        lock(&cluster.heard).retain(|node, (_, heard_at)| {
            if live.contains(node) {
                *heard_at = Instant::now();
                return true;
            }
            heard_at.elapsed() < HEARD_RETAIN
        });
        self.forget_nodes(cluster, dead);
        if first {
            // A new node's entry is missing, and it holds no session yet.
            cluster.upkeep.reregister.store(false, Ordering::Release);
        } else if was_missing {
            warn!(
                "this node's registration was missing from Redis; registering every session again"
            );
        }
        cluster.upkeep.wake.notify_one();
        true
    }

    /// Takes the answer of a poll that started at `started`: adds and renews live nodes. A
    /// `regular` poll (the heartbeat's) also ends a blind spell and returns the nodes now dead;
    /// any other only adds. This node's entry found missing has its sessions registered again.
    fn update_directory(
        &self,
        cluster: &Cluster,
        beat: Heartbeat,
        started: Instant,
        regular: bool,
    ) -> Vec<NodeId> {
        if beat.was_missing {
            cluster.upkeep.reregister.store(true, Ordering::Release);
            if !regular {
                cluster.upkeep.wake.notify_one();
            }
        }
        let now = Instant::now();
        // This node is live to itself whatever the registry says (a pause can leave its own
        // entry expired): it is never in its own directory, so never declared dead there.
        let listed = beat
            .live
            .into_iter()
            .filter(|live| live.info.id != self.me.id)
            .map(|live| (live.info, live.since_beat));
        let mut directory = lock(&cluster.directory);
        directory.polled(started);
        for info in directory.live.observe(listed, now) {
            info!(node = %info.id, advertise = %info.advertise, version = %info.version, "node joined the cluster");
        }
        if !regular {
            return Vec::new();
        }
        directory.live.sighted(now);
        directory.live.expire(now)
    }

    /// Forgets nodes that died: their sessions' records and their links.
    fn forget_nodes(&self, cluster: &Cluster, dead: Vec<NodeId>) {
        for node in dead {
            info!(%node, "node left the cluster; forgetting its sessions");
            self.forget_node(node);
            if let Some((_, cancel)) = lock(&cluster.links).remove(&node) {
                cancel.cancel();
            }
        }
    }

    /// Heartbeats every `registry.node-ttl / 5` until `shutdown`, and forgets a node the moment
    /// it has gone unseen for `registry.node-ttl`. Does nothing else, so nothing delays it:
    /// routes are kept up by [`Router::maintenance_loop`].
    pub async fn heartbeat_loop(self: Arc<Self>, node_ttl: Duration, shutdown: CancellationToken) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut ticker = tokio::time::interval(node_ttl / 5);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_death = lock(&cluster.directory).live.next_death();
            let death = async {
                match next_death {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {
                    self.heartbeat(false).await;
                }
                () = death => {
                    let dead = lock(&cluster.directory).live.expire(Instant::now());
                    self.forget_nodes(cluster, dead);
                }
            }
        }
    }

    /// Keeps this node's routes in Redis, woken by every heartbeat that reached it: retries
    /// failed releases, and writes every session's route again when the heartbeat found this
    /// node's entry missing, and every [`ROUTE_TTL`] / 2 so live routes never expire. Work left
    /// over (Redis failed, or a route was found held by another session) waits for the next
    /// heartbeat. Runs beside [`Router::heartbeat_loop`], never inside it.
    pub async fn maintenance_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut registered_at = Instant::now();
        let mut backlog: HashMap<(ChannelId, Role), Refresh> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = cluster.upkeep.wake.notified() => {}
            }
            let round = async {
                self.retry_releases(cluster).await;
                let missing = cluster.upkeep.reregister.swap(false, Ordering::AcqRel);
                if missing || registered_at.elapsed() >= ROUTE_TTL / 2 {
                    registered_at = Instant::now();
                    for (channel_id, role, session) in self.hub.local_sessions() {
                        let entry = backlog.entry((channel_id, role)).or_insert(Refresh {
                            channel_id,
                            role,
                            session,
                            announce: false,
                            suspect: None,
                        });
                        if entry.session != session {
                            entry.session = session;
                            entry.suspect = None;
                        }
                        entry.announce |= missing;
                    }
                }
                if !backlog.is_empty() {
                    self.reregister(cluster, &mut backlog).await;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = round => {}
            }
        }
    }

    /// Retries the releases that failed, paced; those that fail again wait for the next round.
    async fn retry_releases(&self, cluster: &Cluster) {
        let pending = std::mem::take(&mut *lock(&cluster.pending_releases));
        if pending.is_empty() {
            return;
        }
        let registry = &cluster.registry;
        let untried =
            paced(
                pending,
                |(channel_id, role, route)| async move {
                    registry.release(&channel_id, role, route).await
                },
                |results| {
                    let mut pending = lock(&cluster.pending_releases);
                    for (release, result) in results {
                        if result.is_err() {
                            pending.push(release);
                        }
                    }
                },
            )
            .await;
        lock(&cluster.pending_releases).extend(untried);
    }

    /// Writes the routes in `backlog` again where absent or still this node's, paced (see
    /// [`REREGISTER_PER_SECOND`]). A route another session holds at two looks, a heartbeat
    /// apart, means that session replaced this one: it is closed with 4001 and not announced.
    /// Written routes of sessions to announce are announced; routes whose write failed, and
    /// those to look at again, stay in `backlog`.
    async fn reregister(
        &self,
        cluster: &Cluster,
        backlog: &mut HashMap<(ChannelId, Role), Refresh>,
    ) {
        let todo: Vec<Refresh> = backlog.drain().map(|(_, refresh)| refresh).collect();
        let n_todo = todo.len();
        let (mut written, mut fenced) = (0, 0);
        let registry = &cluster.registry;
        let me = self.me.id;
        let second_look_after = registry.node_ttl() / 10;
        let untried = paced(
            todo,
            |refresh| async move {
                if !self.holds(refresh.channel_id, refresh.role, refresh.session) {
                    return Ok(None);
                }
                let route = Route {
                    node: me,
                    session: refresh.session,
                };
                registry
                    .refresh(&refresh.channel_id, refresh.role, route)
                    .await
                    .map(Some)
            },
            |results| {
                let mut announce = Vec::new();
                for (refresh, result) in results {
                    let Refresh {
                        channel_id,
                        role,
                        session,
                        ..
                    } = refresh;
                    match result {
                        // Ended before its turn: nothing to write.
                        Ok(None) => {}
                        // Ended meanwhile, maybe after its release: take the route away again.
                        Ok(Some(true)) if !self.holds(channel_id, role, session) => {
                            let route = Route { node: me, session };
                            lock(&cluster.pending_releases).push((channel_id, role, route));
                        }
                        Ok(Some(true)) => {
                            written += 1;
                            if refresh.announce {
                                announce.push((channel_id, role, session));
                            }
                        }
                        Ok(Some(false)) => match refresh.suspect {
                            Some(since) if since.elapsed() >= second_look_after => {
                                fenced += usize::from(self.fence(channel_id, role, session));
                            }
                            Some(_) => {
                                backlog.insert((channel_id, role), refresh);
                            }
                            None => {
                                let suspect = Refresh {
                                    suspect: Some(Instant::now()),
                                    ..refresh
                                };
                                backlog.insert((channel_id, role), suspect);
                            }
                        },
                        Err(_) => {
                            backlog.insert((channel_id, role), refresh);
                        }
                    }
                }
                self.announce_sessions(&announce);
            },
        )
        .await;
        for refresh in untried {
            backlog.insert((refresh.channel_id, refresh.role), refresh);
        }
        info!(
            sessions = n_todo,
            written,
            fenced,
            left = backlog.len(),
            "sessions registered again"
        );
    }

    /// True if this node still holds session `session` as `role` of `channel_id`.
    fn holds(&self, channel_id: ChannelId, role: Role, session: u64) -> bool {
        self.hub
            .local(&channel_id, role)
            .is_some_and(|handle| handle.id == session)
    }

    /// Closes a session whose route another session holds with 4001, as replaced: a newer
    /// client took its role while this node was cut off, and its `Evict` never arrived.
    fn fence(&self, channel_id: ChannelId, role: Role, session: u64) -> bool {
        match self.hub.local(&channel_id, role) {
            Some(handle) if handle.id == session => {
                warn!(%channel_id, %role, "another session holds this session's route; closing it as replaced");
                Metrics::incr(&self.metrics.sessions_fenced);
                handle.stop.cancel();
                true
            }
            _ => false,
        }
    }

    /// Sends `Bound` for each of `sessions` whose peer is on another node. After this node's
    /// registration was lost, the other nodes may have timed it out and forgotten its sessions;
    /// this tells them again, so pairs split by the outage join up without reconnecting.
    fn announce_sessions(&self, sessions: &[(ChannelId, Role, u64)]) {
        for &(channel_id, role, session) in sessions {
            if let Some(Peer::Remote(remote)) = self.hub.peer(&channel_id, role.peer()) {
                remote.link.send_control(InnerFrame::Bound {
                    channel_id,
                    role,
                    session,
                });
            }
        }
    }

    /// Removes this node from the directory, at shutdown; other nodes forget it at once
    /// instead of after `registry.node-ttl`.
    pub async fn deregister(&self) {
        if let Some(cluster) = &self.cluster
            && let Err(err) = cluster.registry.deregister().await
        {
            warn!(error = %err, "deregistering from the registry failed; other nodes will time this node out");
        }
    }

    /// Payload bytes waiting in the link to `node`, if there is one; for tests and metrics.
    pub fn link_queued_bytes(&self, node: NodeId) -> Option<usize> {
        let cluster = self.cluster.as_ref()?;
        lock(&cluster.links)
            .get(&node)
            .map(|(link, _)| link.queued_bytes())
    }

    /// Number of links currently open or connecting, for tests and metrics.
    pub fn n_links(&self) -> usize {
        self.cluster.as_ref().map_or(0, |cluster| {
            lock(&cluster.links)
                .values()
                .filter(|(link, _)| !link.is_closed())
                .count()
        })
    }
}

/// Tells the node of `remote_peer`, if any, that the session of `claim` is gone, and how many
/// messages it sent there.
fn unbind(remote_peer: Option<&RemotePeer>, claim: &Claim) {
    if let Some(remote_peer) = remote_peer {
        remote_peer.link.send_control(InnerFrame::Unbound {
            channel_id: claim.channel_id,
            role: claim.role,
            session: claim.handle.id,
            sent: claim.handle.credit.sent_to(remote_peer.incarnation()),
        });
    }
}

/// Runs `op` on every item, [`REREGISTER_CONCURRENCY`] at a time, in batches of
/// [`REREGISTER_PER_SECOND`] / 10 one [`REREGISTER_TICK`] apart, handing each batch's results
/// to `done`. After a batch in which `op` failed (Redis is likely down) it stops, and returns
/// the items it did not try.
async fn paced<T, R, Op, Fut>(
    items: Vec<T>,
    op: Op,
    mut done: impl FnMut(Vec<(T, Result<R, RegistryError>)>),
) -> Vec<T>
where
    T: Copy,
    Op: Fn(T) -> Fut,
    Fut: Future<Output = Result<R, RegistryError>>,
{
    const PER_TICK: usize = REREGISTER_PER_SECOND
        / (Duration::from_secs(1).as_millis() / REREGISTER_TICK.as_millis()) as usize;
    let mut ticker = tokio::time::interval(REREGISTER_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut items = items.into_iter();
    loop {
        let batch: Vec<T> = items.by_ref().take(PER_TICK).collect();
        if batch.is_empty() {
            return Vec::new();
        }
        ticker.tick().await;
        let op = &op;
        let results: Vec<(T, Result<R, RegistryError>)> = futures::stream::iter(batch)
            .map(|item| async move { (item, op(item).await) })
            .buffer_unordered(REREGISTER_CONCURRENCY)
            .collect()
            .await;
        let failed = results.iter().any(|(_, result)| result.is_err());
        done(results);
        if failed {
            return items.collect();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a map operation; a panic inside one leaves the map usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
