//! Upkeep of the cluster's view, off the path of any client: the heartbeat (liveness of this
//! node and of the others, by time), and the maintenance task that keeps this node's routes in
//! Redis (releases that failed, routes registered again after Redis lost them, at a pace),
//! fences sessions whose route another session took (4001), and announces the others again.
//! The heartbeat never waits for the maintenance task: a node with many sessions to register
//! again still heartbeats on time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Cluster, Router, lock};
use crate::hub::{Hub, Peer};
use crate::inner::frame::InnerFrame;
use crate::metrics::Metrics;
use crate::node::NodeId;
use crate::pair::{ChannelId, Role};
use crate::registry::{Heartbeat, ROUTE_TTL, RedisRegistry, RegistryError, Route};

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

/// The upkeep of this node's routes in Redis, a room of its own: releases that failed, routes
/// registered again after Redis lost this node's entry (or every [`ROUTE_TTL`] / 2), sessions
/// fenced because another session holds their route, and the announcements that follow. Woken
/// by the heartbeat, never run inside it; it reaches the hub and the registry, never the router.
pub(super) struct Upkeep {
    registry: RedisRegistry,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    me: NodeId,
    /// Notified after every heartbeat that reached Redis.
    wake: Notify,
    /// Set when a poll found this node's entry missing: every session is registered again.
    reregister: AtomicBool,
    /// Routes whose release failed (Redis down); retried after each heartbeat that reached
    /// Redis.
    pending_releases: Mutex<Vec<(ChannelId, Role, Route)>>,
    /// Sessions registered again after this node's registration was lost that have no peer:
    /// the router looks for their peers in the registry ([`Router::resolve_peer`]).
    alone: Mutex<Vec<(ChannelId, Role, u64)>>,
    /// Notified when `alone` gets entries.
    alone_found: Notify,
}

impl std::fmt::Debug for Upkeep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upkeep").finish_non_exhaustive()
    }
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

impl Router {
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
                crate::warn_throttled!(error = %err, "registry heartbeat failed; established pairs keep relaying");
                cluster.registry_ok.store(false, Ordering::Release);
                cluster.membership.blind(started);
                return false;
            }
        };
        cluster.registry_ok.store(true, Ordering::Release);
        let was_missing = beat.was_missing;
        let dead = self.update_directory(cluster, beat, started, true);
        cluster.membership.prune_heard();
        self.forget_nodes(cluster, dead);
        if first {
            cluster.upkeep.nothing_to_register();
        } else if was_missing {
            warn!(
                "this node's registration was missing from Redis; registering every session again"
            );
        }
        cluster.upkeep.after_heartbeat(false);
        true
    }

    /// Takes the answer of a poll that started at `started` (see `Membership::observe`);
    /// this node's entry found missing has its sessions registered again.
    pub(super) fn update_directory(
        &self,
        cluster: &Cluster,
        beat: Heartbeat,
        started: Instant,
        regular: bool,
    ) -> Vec<NodeId> {
        if beat.was_missing {
            if regular {
                // Woken at the end of this heartbeat.
                cluster.upkeep.reregister.store(true, Ordering::Release);
            } else {
                cluster.upkeep.after_heartbeat(true);
            }
        }
        cluster.membership.observe(beat.live, started, regular)
    }

    /// The node's inner port refuses connections, or another node answers there: its process
    /// is gone, whatever its last heartbeat says. It is forgotten at once, so its clients'
    /// successors get their peers' credit without waiting `registry.node-ttl` (a node killed
    /// with -9). Its registry entry, still listed until it expires, does not bring it back.
    pub(super) fn on_node_gone(&self, node: NodeId) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        if cluster.membership.bury(node) {
            info!(%node, "node's inner port refuses connections; it is gone");
            self.forget_nodes(cluster, vec![node]);
        }
    }

    /// Forgets nodes that died: their sessions' records and their links.
    fn forget_nodes(&self, cluster: &Cluster, dead: Vec<NodeId>) {
        for node in dead {
            info!(%node, "node left the cluster; forgetting its sessions");
            self.forget_node(node);
            cluster.links.forget(node);
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
            let next_death = cluster.membership.next_death();
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
                    let dead = cluster.membership.expire();
                    self.forget_nodes(cluster, dead);
                }
            }
        }
    }

    /// Keeps this node's routes in Redis until `shutdown` (see [`Upkeep`]).
    pub async fn maintenance_loop(self: Arc<Self>, shutdown: CancellationToken) {
        if let Some(cluster) = &self.cluster {
            let resolve = async {
                loop {
                    cluster.upkeep.alone_found.notified().await;
                    let alone = std::mem::take(&mut *lock(&cluster.upkeep.alone));
                    for (channel_id, role, session) in alone {
                        self.resolve_peer(channel_id, role, session);
                    }
                }
            };
            tokio::select! {
                () = cluster.upkeep.run(shutdown) => {}
                () = resolve => {}
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
}

impl Upkeep {
    /// The upkeep of node `me`'s routes in `registry`, for the sessions of `hub`.
    pub(super) fn new(
        registry: RedisRegistry,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        me: NodeId,
    ) -> Upkeep {
        Upkeep {
            registry,
            hub,
            metrics,
            me,
            wake: Notify::new(),
            reregister: AtomicBool::new(false),
            pending_releases: Mutex::default(),
            alone: Mutex::default(),
            alone_found: Notify::new(),
        }
    }

    /// A heartbeat reached Redis: the maintenance task runs a round, registering every session
    /// again first if `missing` (this node's entry was lost).
    pub(super) fn after_heartbeat(&self, missing: bool) {
        if missing {
            self.reregister.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// The first heartbeat of a node finds its entry missing, and it holds no session yet.
    pub(super) fn nothing_to_register(&self) {
        self.reregister.store(false, Ordering::Release);
    }

    /// A release that failed, to retry after the next heartbeat that reaches Redis.
    pub(super) fn release_later(&self, channel_id: ChannelId, role: Role, route: Route) {
        lock(&self.pending_releases).push((channel_id, role, route));
    }

    /// Releases that failed and wait for their retry.
    pub(super) fn pending_releases(&self) -> usize {
        lock(&self.pending_releases).len()
    }

    /// Keeps this node's routes in Redis, woken by every heartbeat that reached it: retries
    /// failed releases, and writes every session's route again when the heartbeat found this
    /// node's entry missing, and every [`ROUTE_TTL`] / 2 so live routes never expire. Work left
    /// over (Redis failed, or a route was found held by another session) waits for the next
    /// heartbeat. Runs beside the heartbeat loop, never inside it.
    pub(super) async fn run(&self, shutdown: CancellationToken) {
        let mut registered_at = Instant::now();
        let mut scripts_loaded = false;
        let mut backlog: HashMap<(ChannelId, Role), Refresh> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
            }
            let round = async {
                let missing = self.reregister.swap(false, Ordering::AcqRel);
                // Scripts are loaded once Redis answers, and again when it lost this node's
                // entry (it may have restarted, its script cache empty): a script call that
                // finds none costs three round trips instead of one.
                if !scripts_loaded || missing {
                    scripts_loaded = match self.registry.load_scripts().await {
                        Ok(()) => true,
                        Err(err) => {
                            debug!(error = %err, "loading the registry's scripts failed; retried after the next heartbeat");
                            false
                        }
                    };
                }
                self.retry_releases().await;
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
                    self.register_again(&mut backlog).await;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = round => {}
            }
        }
    }

    /// Retries the releases that failed, paced; those that fail again wait for the next round.
    async fn retry_releases(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending_releases));
        if pending.is_empty() {
            return;
        }
        let registry = &self.registry;
        let untried =
            paced(
                pending,
                |(channel_id, role, route)| async move {
                    registry.release(&channel_id, role, route).await
                },
                |results| {
                    let mut pending = lock(&self.pending_releases);
                    for (release, result) in results {
                        if result.is_err() {
                            pending.push(release);
                        }
                    }
                },
            )
            .await;
        lock(&self.pending_releases).extend(untried);
    }

    /// Writes the routes in `backlog` again where absent or still this node's, paced (see
    /// [`REREGISTER_PER_SECOND`]). A route another session holds at two looks, a heartbeat
    /// apart, means that session replaced this one: it is closed with 4001 and not announced.
    /// Written routes of sessions to announce are announced; routes whose write failed, and
    /// those to look at again, stay in `backlog`.
    async fn register_again(&self, backlog: &mut HashMap<(ChannelId, Role), Refresh>) {
        let todo: Vec<Refresh> = backlog.drain().map(|(_, refresh)| refresh).collect();
        let n_todo = todo.len();
        let (mut written, mut fenced) = (0, 0);
        let registry = &self.registry;
        let me = self.me;
        let second_look_after = registry.node_ttl() / 10;
        let untried = paced(
            todo,
            |refresh| async move {
                let Some(handle) =
                    self.hub
                        .session(&refresh.channel_id, refresh.role, refresh.session)
                else {
                    return Ok(None);
                };
                let route = Route {
                    node: me,
                    session: refresh.session,
                };
                let client = handle.client;
                registry
                    .refresh(&refresh.channel_id, refresh.role, route, client)
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
                            lock(&self.pending_releases).push((channel_id, role, route));
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
        self.hub.session(&channel_id, role, session).is_some()
    }

    /// Closes a session whose route another session holds with 4001, as replaced: a newer
    /// client took its role while this node was cut off, and its `Evict` never arrived.
    fn fence(&self, channel_id: ChannelId, role: Role, session: u64) -> bool {
        match self.hub.local(&channel_id, role) {
            Some(handle) if handle.id == session => {
                crate::warn_throttled!(%channel_id, %role, "another session holds this session's route; closing it as replaced");
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
    ///
    /// A session with no peer is handed to the router to look for it in the registry: after
    /// Redis restarted empty, a client that claimed before its peer's route was written again
    /// found no peer, and its peer's node, writing that route later, found it in no record.
    /// Neither would ever hear of the other (v1 clients send nothing while their peer is away,
    /// so no dropped message asks either), and the pair would stay split. Of two nodes writing
    /// and then reading, the later reader finds the other.
    fn announce_sessions(&self, sessions: &[(ChannelId, Role, u64)]) {
        let mut alone = Vec::new();
        for &(channel_id, role, session) in sessions {
            let peer = self.hub.peer(&channel_id, role.peer());
            if peer.is_none() {
                alone.push((channel_id, role, session));
            }
            if let Some(Peer::Remote(remote)) = peer {
                let client = self
                    .hub
                    .session(&channel_id, role, session)
                    .and_then(|handle| handle.client);
                remote.link.send_control(InnerFrame::Bound {
                    channel_id,
                    role,
                    session,
                    client,
                });
            }
        }
        if !alone.is_empty() {
            lock(&self.alone).extend(alone);
            self.alone_found.notify_one();
        }
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
