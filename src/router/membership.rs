//! Membership: which other nodes this node holds as live, and how it learns of them.
//!
//! Three sources: the heartbeat's polls of the registry (the authority, through
//! [`Liveness`], which judges by time), extra polls by claims that meet a node not yet known
//! (which may only add), and links: a node that authenticated a link to this one says who it
//! is in its `Hello`, which is remembered (`heard`) so its `Bound` can be answered even while
//! the registry's view of it lags. This type knows nothing of sessions or links; the router
//! acts on what it reports (nodes that joined, nodes that died).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use super::lock;
use crate::liveness::Liveness;
use crate::node::{NodeId, NodeInfo};
use crate::registry::LiveNode;

/// How long a node that dialed this one is remembered after it stops being live.
const HEARD_RETAIN: Duration = Duration::from_secs(60 * 60);

/// The nodes this node holds as live.
#[derive(Debug)]
pub(super) struct Membership {
    me: NodeId,
    directory: Mutex<Directory>,
    /// What each node that dialed this one said in its `Hello`; lets a `Bound` from a node the
    /// directory has timed out (but which is evidently alive) be answered.
    /// Entries of nodes not live for [`HEARD_RETAIN`] are pruned at each heartbeat.
    heard: Mutex<HashMap<NodeId, (NodeInfo, Instant)>>,
    /// One extra poll of the directory at a time (claims meeting a node not known yet).
    extra_polls: tokio::sync::Mutex<()>,
}

/// Live nodes, as the heartbeats saw them: dead when not seen for `registry.node-ttl`.
#[derive(Debug)]
struct Directory {
    live: Liveness,
    /// When the last poll that has ended (answered or not) started: a claim that asked for a
    /// poll before then needs no other.
    polled: Option<Instant>,
}

impl Membership {
    /// An empty membership for node `me`, in which a node dies when unseen for `node_ttl`.
    pub(super) fn new(me: NodeId, node_ttl: Duration) -> Membership {
        Membership {
            me,
            directory: Mutex::new(Directory {
                live: Liveness::new(node_ttl),
                polled: None,
            }),
            heard: Mutex::default(),
            extra_polls: tokio::sync::Mutex::default(),
        }
    }

    /// True for this node and every node held as live.
    pub(super) fn is_live(&self, node: NodeId) -> bool {
        node == self.me || lock(&self.directory).live.contains(&node)
    }

    /// What a live node said of itself.
    pub(super) fn info(&self, node: NodeId) -> Option<NodeInfo> {
        lock(&self.directory).live.get(&node).cloned()
    }

    /// Every other node held as live.
    pub(super) fn live_ids(&self) -> Vec<NodeId> {
        lock(&self.directory).live.ids().collect()
    }

    /// A node authenticated a link to this one and said who it is.
    pub(super) fn hello(&self, info: NodeInfo) {
        lock(&self.heard).insert(info.id, (info.clone(), Instant::now()));
        self.learn(info);
    }

    /// Holds `node` as live again if it dialed this node before, though the directory timed it
    /// out: it just sent a frame on an authenticated link.
    pub(super) fn revive(&self, node: NodeId) {
        if self.is_live(node) {
            return;
        }
        // Copied out first: the two locks never nest.
        let heard = lock(&self.heard).get(&node).cloned();
        if let Some((info, _)) = heard {
            self.learn(info);
        }
    }

    /// Adds a node known by other means than a poll, as seen now, unless known already; the
    /// heartbeats confirm it or it dies like any other.
    fn learn(&self, info: NodeInfo) {
        let (id, advertise) = (info.id, info.advertise.clone());
        if lock(&self.directory).live.learn(info, Instant::now()) {
            info!(node = %id, %advertise, "node joined the cluster (link)");
        }
    }

    /// Takes the answer of a poll that started at `started`: adds and renews live nodes. A
    /// `regular` poll (the heartbeat's) also ends a blind spell and returns the nodes now dead;
    /// any other only adds.
    pub(super) fn observe(
        &self,
        listed: Vec<LiveNode>,
        started: Instant,
        regular: bool,
    ) -> Vec<NodeId> {
        let now = Instant::now();
        // This node is live to itself whatever the registry says (a pause can leave its own
        // entry expired): it is never in its own directory, so never declared dead there.
        let listed = listed
            .into_iter()
            .filter(|live| live.info.id != self.me)
            .map(|live| (live.info, live.since_beat));
        let mut directory = lock(&self.directory);
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

    /// A regular poll that started at `started` failed: nobody dies until one succeeds.
    pub(super) fn blind(&self, started: Instant) {
        let mut directory = lock(&self.directory);
        directory.live.blind(started);
        directory.polled(started);
    }

    /// A poll other than the heartbeat's, started at `started`, failed.
    pub(super) fn poll_failed(&self, started: Instant) {
        lock(&self.directory).polled(started);
    }

    /// True if a poll that started at or after `asked` has ended.
    pub(super) fn polled_since(&self, asked: Instant) -> bool {
        lock(&self.directory)
            .polled
            .is_some_and(|polled| polled >= asked)
    }

    /// Waits for the turn to run an extra poll; hold the guard while polling.
    pub(super) async fn extra_poll_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.extra_polls.lock().await
    }

    /// Holds `node` as dead now, whatever its last heartbeat; true if it was live. A poll
    /// listing its last heartbeat again does not bring it back, a newer heartbeat would.
    pub(super) fn bury(&self, node: NodeId) -> bool {
        lock(&self.directory).live.bury(node, Instant::now())
    }

    /// When the next node dies if nobody sees it before.
    pub(super) fn next_death(&self) -> Option<Instant> {
        lock(&self.directory).live.next_death()
    }

    /// The nodes that have died by now.
    pub(super) fn expire(&self) -> Vec<NodeId> {
        lock(&self.directory).live.expire(Instant::now())
    }

    /// Forgets what nodes that stopped being live long ago said in their `Hello`.
    pub(super) fn prune_heard(&self) {
        // Locks never nest: the live set is copied out of `directory` before `heard` is taken.
        let live: HashSet<NodeId> = lock(&self.directory).live.ids().collect();
        lock(&self.heard).retain(|node, (_, heard_at)| {
            if live.contains(node) {
                *heard_at = Instant::now();
                return true;
            }
            heard_at.elapsed() < HEARD_RETAIN
        });
    }
}

impl Directory {
    /// Notes a poll that started at `started` and has ended, answered or not.
    fn polled(&mut self, started: Instant) {
        self.polled = Some(self.polled.map_or(started, |polled| polled.max(started)));
    }
}
