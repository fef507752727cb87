//! Where a message goes: a session of this node, a link to the node that holds the peer, or
//! nowhere; and the cluster bookkeeping that keeps that answer right without asking Redis per
//! message.
//!
//! The router composes the cluster side of a node, each concern in a room of its own that
//! never calls back into it: [`membership`] (which nodes are live, judged by time: see
//! [`crate::liveness`]), [`links`] (one link per remote node, spawned on first use), the
//! registry, and per session the credit of [`crate::credit`]. This file holds claims (a new
//! session's route, its peer, what it displaced) and releases; [`inbound`] handles every
//! frame a link delivers; [`upkeep`] runs the heartbeat and the maintenance task. In
//! single-node mode the router holds only the hub.
//!
//! How caches stay right (cluster mode): a session claims its role in Redis and reads its
//! peer's route, in one script; if the peer is on another node, it records it in the hub
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

mod inbound;
mod links;
mod locate;

pub use locate::Location;
mod membership;
mod upkeep;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use self::links::Links;
use self::membership::Membership;
use crate::config::DuplicatePolicy;
use crate::hub::{Claim, DuplicateError, Hub, Peer, RemotePeer, SessionHandle};
use crate::inner::frame::InnerFrame;
use crate::inner::link::LinkContext;
use crate::metrics::Metrics;
use crate::node::{NodeId, NodeInfo};
use crate::pair::{ChannelId, Message, Role};
use crate::registry::{ClaimOutcome, Holder, RedisRegistry, RegistryError, Route};
use crate::v1::ClientId;

/// Claims that lose a compare-and-set race are retried this many times.
const CLAIM_ATTEMPTS: usize = 4;

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

/// The cluster side of a node, in rooms of its own: who is live ([`Membership`]), the link
/// to each of them ([`Links`]), and the upkeep of this node's routes ([`upkeep::Upkeep`]).
/// The router composes them; none of them calls back into it, except the link table's
/// callback on each (re)connection.
struct Cluster {
    registry: RedisRegistry,
    membership: Membership,
    links: Links,
    /// The upkeep of this node's routes, woken by the heartbeat.
    upkeep: upkeep::Upkeep,
    /// Claims waiting for the peer's node to acknowledge their `Bound`.
    pending_acks: Mutex<HashMap<(ChannelId, Role, u64), oneshot::Sender<()>>>,
    /// How long a claim waits for that acknowledgement (`inner.connect-timeout`).
    ack_timeout: Duration,
    /// Evictions sent to other nodes within the last `registry.node-ttl`, sent again when the
    /// link to their node comes back: one sent while that node was paused is dropped with its
    /// link's queue, and the node, not timed out, would keep the displaced session running.
    evictions: Mutex<Vec<Eviction>>,
    /// Whether the last heartbeat reached Redis (false until the first does): what readiness
    /// reports.
    registry_ok: std::sync::atomic::AtomicBool,
}

/// An `Evict` sent to `node`, and when.
struct Eviction {
    node: NodeId,
    frame: InnerFrame,
    at: Instant,
}

impl Cluster {
    /// The evictions sent within `registry.node-ttl`; older ones are dropped on the way.
    fn recent_evictions(&self) -> std::sync::MutexGuard<'_, Vec<Eviction>> {
        let mut evictions = lock(&self.evictions);
        let node_ttl = self.registry.node_ttl();
        evictions.retain(|eviction| eviction.at.elapsed() < node_ttl);
        evictions
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
        let me_id = me.id;
        Arc::new_cyclic(|this: &Weak<Router>| {
            let cluster = cluster.map(|parts| {
                let router = this.clone();
                let on_up: links::OnLinkEvent = Arc::new(move |node| {
                    if let Some(router) = router.upgrade() {
                        router.on_link_up(node);
                    }
                });
                let router = this.clone();
                let on_gone: links::OnLinkEvent = Arc::new(move |node| {
                    if let Some(router) = router.upgrade() {
                        router.on_node_gone(node);
                    }
                });
                Cluster {
                    membership: Membership::new(me_id, parts.registry.node_ttl()),
                    upkeep: upkeep::Upkeep::new(
                        parts.registry.clone(),
                        Arc::clone(&hub),
                        Arc::clone(&metrics),
                        me_id,
                    ),
                    registry: parts.registry,
                    links: Links::new(
                        parts.link_ctx,
                        parts.tracker,
                        parts.links_cancel,
                        on_up,
                        on_gone,
                    ),
                    pending_acks: Mutex::default(),
                    ack_timeout,
                    evictions: Mutex::default(),
                    registry_ok: std::sync::atomic::AtomicBool::new(false),
                }
            });
            Router {
                hub,
                me,
                policy,
                metrics,
                cluster,
            }
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
        client: Option<ClientId>,
    ) -> Result<(Claim, mpsc::Receiver<Message>), ClaimError> {
        let (mut claim, outbound_rx) = self.hub.claim(channel_id, role, client)?;
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
        if let Some((node, session, _)) = claim.displaced_remote.take() {
            let (channel_id, role) = (claim.channel_id, claim.role);
            Metrics::incr(&self.metrics.sessions_replaced);
            let frame = InnerFrame::Evict {
                channel_id,
                role,
                session,
            };
            self.send_control(node, frame.clone());
            if let Some(cluster) = &self.cluster {
                cluster.recent_evictions().push(Eviction {
                    node,
                    frame,
                    at: Instant::now(),
                });
            }
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
                        client: claim.handle.client,
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
            .map(|old| {
                let route = Route {
                    node: self.me.id,
                    session: old.id,
                };
                (route, old.client)
            });
        let remote = claim
            .displaced_remote
            .filter(|(node, _, _)| remote_peer.as_ref().is_none_or(|peer| peer.node == *node))
            .map(|(node, session, client)| (Route { node, session }, client));
        let Some((restore, restore_client)) = local.or(remote) else {
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
            .compare_and_set(&channel_id, role, Some(mine), restore, restore_client)
            .await
        {
            Ok(restored) => restored,
            Err(err) => {
                crate::warn_throttled!(%channel_id, %role, error = %err, "route not given back after a failed upgrade; releasing it at the next heartbeat");
                cluster.upkeep.release_later(channel_id, role, mine);
                false
            }
        };
        if !restored {
            self.activate(&mut claim);
            // Whatever `activate` told the peer's node of the failed session, it forgets now.
            unbind(remote_peer.as_ref(), &claim, false);
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
                    cluster.upkeep.release_later(channel_id, role, restore);
                }
            } else if let Some(remote_peer) = &remote_peer {
                // The failed session first, on the same link: its node records a newer
                // session of a node over an older one, never the other way round.
                unbind(Some(remote_peer), &claim, false);
                remote_peer.link.send_control(InnerFrame::Bound {
                    channel_id,
                    role,
                    session: restore.session,
                    client: restore_client,
                });
            }
        }
        // A displaced session of another node is given back its route without this node knowing
        // whether it still lives; its peer's node, had it recorded the failed session (the
        // displaced one having ended meanwhile), forgets it rather than send into nothing.
        if !restored_here {
            unbind(remote_peer.as_ref(), &claim, false);
        }
        // Dropping the claim gives a displaced session of this node its slot back; one of
        // another node is recorded again for a local peer.
        drop(claim);
        if !restored_here && let Some(remote) = self.remote_peer(restore, restore_client) {
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
    ) -> Result<Option<Holder>, ClaimError> {
        let (channel_id, role) = (claim.channel_id, claim.role);
        let mine = Route {
            node: self.me.id,
            session: claim.handle.id,
        };
        let reject = self.policy == DuplicatePolicy::Reject;
        let mut dead = Vec::new();
        for _ in 0..CLAIM_ATTEMPTS {
            let live = cluster.membership.live_ids();
            let (outcome, peer) = cluster
                .registry
                .claim(
                    &channel_id,
                    role,
                    (mine, claim.handle.client),
                    reject,
                    &live,
                    &dead,
                )
                .await?;
            match outcome {
                ClaimOutcome::Written { displaced } => {
                    // Evicted only once this session is upgraded (`activate`). A route of this
                    // node is a session being replaced here, which the hub handles. A newer
                    // connection of the same v1 client overwrites a route whatever node it
                    // names, so one on a node not yet heard of is looked up first.
                    claim.displaced_remote = match displaced {
                        Some((holder, client)) if holder.node != self.me.id => {
                            if !live.contains(&holder.node) {
                                self.learn_if_unknown(holder.node).await;
                            }
                            self.is_live(holder.node).then_some((
                                holder.node,
                                holder.session,
                                client,
                            ))
                        }
                        _ => None,
                    };
                    return Ok(peer);
                }
                ClaimOutcome::Held(_) | ClaimOutcome::Stale(_) => {
                    let stale = matches!(outcome, ClaimOutcome::Stale(_));
                    return Err(DuplicateError {
                        channel_id,
                        role,
                        stale,
                    }
                    .into());
                }
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

    /// Finds the claim's peer (`peer`, the route read with the claim) and, when it is on
    /// another node, tells that node of this session and waits for its acknowledgement (up
    /// to the ack timeout).
    async fn bind_peer(
        &self,
        cluster: &Cluster,
        claim: &Claim,
        peer: Option<Holder>,
    ) -> Result<(), ClaimError> {
        let (channel_id, role) = (claim.channel_id, claim.role);
        // A peer's `Bound` that arrived while this claim ran names a session at least as new as
        // the route the claim read; when the two differ, Redis is asked again rather than one
        // of them trusted (a record from before the claim may be stale as well).
        // The peer's node is learnt first, so that no wait falls between the check of the
        // record and the write of the route (a `Bound` arriving in between would be overwritten
        // by an older route), but in the rare case that Redis is read again.
        let mut peer = peer;
        if let Some((route, _)) = peer {
            self.learn_if_unknown(route.node).await;
        }
        if let Some(Peer::Remote(recorded)) = self.hub.peer(&channel_id, role.peer())
            && peer.map(|(route, _)| route) != Some(recorded.incarnation())
        {
            peer = cluster.registry.route(&channel_id, role.peer()).await?;
            if let Some((route, _)) = peer {
                self.learn_if_unknown(route.node).await;
            }
        }
        if let Some((peer, peer_client)) = peer
            && peer.node != self.me.id
            && let Some(remote) = self.remote_peer(peer, peer_client)
        {
            let incarnation = remote.incarnation();
            // Found by this claim: the client waited for nothing.
            self.hub.set_remote(&channel_id, role.peer(), remote, false);
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
                    client: claim.handle.client,
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
                crate::warn_throttled!(%channel_id, %role, node = %peer.node, "peer's node did not acknowledge the bind in time; refusing the client");
                return Err(ClaimError::PeerNodeSilent(cluster.ack_timeout));
            }
        }
        Ok(())
    }

    /// A session of this node found no peer: asks the registry, in a task of its own, where the
    /// peer is, and if this session still holds its route and the peer is a live session of
    /// another node that this node has no record of, records it and tells its node of this
    /// session (as a claim would). Heals a record lost
    /// to a race or an outage; costs one Redis read, and the caller rate-limits it.
    pub fn resolve_peer(self: &Arc<Self>, channel_id: ChannelId, role: Role, session: u64) {
        if self.cluster.is_none() {
            return;
        }
        let router = Arc::clone(self);
        tokio::spawn(async move {
            let Some(cluster) = &router.cluster else {
                return;
            };
            let Ok((app, web)) = cluster.registry.routes(&channel_id).await else {
                return;
            };
            let (mine, peer) = match role {
                Role::App => (app, web),
                Role::Web => (web, app),
            };
            // Only the session the registry names may announce itself: one whose route was
            // taken (a zombie of a paused node, say) would steal its successor's peer.
            let me = crate::node::Incarnation {
                node: router.me.id,
                session,
            };
            let Some((route, peer_client)) =
                peer.filter(|_| mine.map(|(route, _)| route) == Some(me))
            else {
                return;
            };
            if route.node == router.me.id {
                return;
            }
            router.learn_if_unknown(route.node).await;
            let Some(mine) = router.hub.session(&channel_id, role, session) else {
                return;
            };
            if router.hub.peer(&channel_id, role.peer()).is_some() {
                return;
            }
            let Some(remote) = router.remote_peer(route, peer_client) else {
                return;
            };
            let client = mine.client;
            let incarnation = remote.incarnation();
            // Checked and recorded under one lock: a `Bound` of a newer session may have come
            // since the registry was read, and the registry may name a session that just ended.
            if !router
                .hub
                .set_remote_if_vacant(&channel_id, role.peer(), remote)
            {
                return;
            }
            debug!(%channel_id, %role, node = %route.node, "peer found again in the registry");
            // The `Bound` before the credit: the peer's node applies credit only from a
            // session it has recorded.
            router.send_control(
                route.node,
                InnerFrame::Bound {
                    channel_id,
                    role,
                    session,
                    client,
                },
            );
            router.open_credit(channel_id, role, incarnation);
        });
    }

    /// Releases a session's route and tells its remote peer, if any, that it ended.
    pub async fn release(&self, claim: &Claim) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let (channel_id, role) = (claim.channel_id, claim.role);
        if let Some(Peer::Remote(remote)) = self.hub.peer(&channel_id, role.peer()) {
            unbind(Some(&remote), claim, true);
        }
        let mine = Route {
            node: self.me.id,
            session: claim.handle.id,
        };
        if let Err(err) = cluster.registry.release(&channel_id, role, mine).await {
            crate::warn_throttled!(%channel_id, %role, error = %err, "route release failed; retrying at the next heartbeat");
            cluster.upkeep.release_later(channel_id, role, mine);
        }
    }

    /// Sends `node` again the evictions sent to it within `registry.node-ttl` (see
    /// `Cluster::evictions`). Harmless when the first arrived: an eviction names a session
    /// incarnation, which is gone by then.
    pub(super) fn evict_again(&self, node: NodeId) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let again: Vec<InnerFrame> = cluster
            .recent_evictions()
            .iter()
            .filter(|eviction| eviction.node == node)
            .map(|eviction| eviction.frame.clone())
            .collect();
        for frame in again {
            self.send_control(node, frame);
        }
    }

    /// A route may name a node that joined since the last heartbeat; reads the directory
    /// once more before treating it as dead. Costs a Redis call only for unknown nodes, and
    /// claims that meet one at once share a poll. Such a poll adds nodes, never kills one.
    async fn learn_if_unknown(&self, node: NodeId) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let membership = &cluster.membership;
        if membership.is_live(node) {
            return;
        }
        let asked = Instant::now();
        let _turn = membership.extra_poll_turn().await;
        if membership.polled_since(asked) || membership.is_live(node) {
            return;
        }
        let started = Instant::now();
        match cluster.registry.heartbeat().await {
            Ok(beat) => {
                self.update_directory(cluster, beat, started, false);
            }
            Err(err) => {
                membership.poll_failed(started);
                debug!(%node, error = %err, "directory poll for an unknown node failed");
            }
        }
    }

    fn is_live(&self, node: NodeId) -> bool {
        node == self.me.id
            || self
                .cluster
                .as_ref()
                .is_some_and(|cluster| cluster.membership.is_live(node))
    }

    /// A record of a remote session whose client has v1 identity `client` (as its node
    /// announced it, or as its route in Redis says); `None` if its node is not live.
    fn remote_peer(&self, route: Route, client: Option<ClientId>) -> Option<RemotePeer> {
        let cluster = self.cluster.as_ref()?;
        let info = cluster.membership.info(route.node)?;
        Some(RemotePeer {
            node: route.node,
            session: route.session,
            link: cluster.links.link(&info),
            client,
            gone: Arc::default(),
        })
    }

    /// Queues a control frame for `node`, on its link (spawned if need be); dropped and
    /// counted if the node is not live.
    fn send_control(&self, node: NodeId, frame: InnerFrame) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let Err(frame) = cluster.links.send_control_if_open(node, frame) else {
            return;
        };
        let Some(info) = cluster.membership.info(node) else {
            Metrics::incr(&self.metrics.link_frames_dropped);
            debug!(%node, "control frame for a node that is not live dropped");
            return;
        };
        cluster.links.link(&info).send_control(frame);
    }

    /// Payload bytes waiting in the link to `node`, if there is one; for tests and metrics.
    pub fn link_queued_bytes(&self, node: NodeId) -> Option<usize> {
        self.cluster.as_ref()?.links.queued_bytes(node)
    }

    /// Number of links currently open or connecting, for tests and metrics.
    pub fn n_links(&self) -> usize {
        self.cluster
            .as_ref()
            .map_or(0, |cluster| cluster.links.count())
    }
}

/// Tells the node of `remote_peer`, if any, that the session of `claim` is gone, and how many
/// messages it sent there. `behind_data`: on the link's data queue, after the session's last
/// messages, so that what the peer's node has not received by then was lost (when that queue
/// is full, or for a claim that sent nothing and must stay in order with a `Bound`, on the
/// control queue; the receiving ledger's grace covers frames still on the way then).
fn unbind(remote_peer: Option<&RemotePeer>, claim: &Claim, behind_data: bool) {
    let Some(remote_peer) = remote_peer else {
        return;
    };
    let frame = InnerFrame::Unbound {
        channel_id: claim.channel_id,
        role: claim.role,
        session: claim.handle.id,
        sent: claim.handle.credit.sent_to(remote_peer.incarnation()),
    };
    if !behind_data {
        remote_peer.link.send_control(frame);
        return;
    }
    if let Err(crate::inner::link::LinkError::Full(frame)) = remote_peer.link.try_send_data(frame) {
        remote_peer.link.send_control(frame);
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a map operation; a panic inside one leaves the map usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
