//! Which other nodes are live, judged by time: a node is dead once it has not been seen live
//! for `registry.node-ttl`.
//!
//! Why a type of its own, and why time: the directory used to call a node dead when two
//! successive polls missed it, and claims poll too (a route naming a node not yet known), so a
//! burst of claims could declare a node dead within milliseconds of one missed heartbeat. Here
//! only the passing of time kills: any poll can add a node or renew one, none can hasten a
//! death. Keeping the rule apart from the router, with the clock passed in, makes it testable
//! without Redis or sleeping.
//!
//! "Seen live" is when the node last heartbeat, as a poll reports it: the registry says how
//! long ago each listed node refreshed its entry ([`crate::registry::LiveNode::since_beat`]).
//! So a node that stops is dead `registry.node-ttl` after its last heartbeat, however often or
//! seldom this node polls (the registry keeps an entry listed for `node-ttl × 3/5`).
//!
//! While this node cannot read the registry it is blind, and its clock of absences stands
//! still: nobody dies while blind, and when a poll succeeds again every node gets the blind
//! time back, so a node whose entry lapsed in the same outage has the rest of its `node-ttl`
//! to heartbeat again.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use tokio::time::Instant;

use crate::node::{NodeId, NodeInfo};

/// The live nodes and when each was last seen live.
#[derive(Debug)]
pub struct Liveness {
    ttl: Duration,
    nodes: HashMap<NodeId, Seen>,
    /// Since when the regular polls have failed, if the last one did.
    blind_since: Option<Instant>,
    /// Nodes held as dead by other evidence (their inner port refuses connections), with when:
    /// a poll that lists them with a heartbeat from before then does not bring them back.
    buried: HashMap<NodeId, Instant>,
}

#[derive(Debug)]
struct Seen {
    info: NodeInfo,
    at: Instant,
}

impl Liveness {
    /// An empty directory in which a node dies when not seen for `ttl`.
    pub fn new(ttl: Duration) -> Liveness {
        Liveness {
            ttl,
            nodes: HashMap::new(),
            blind_since: None,
            buried: HashMap::new(),
        }
    }

    /// Records a poll's answer at `now`: every `(node, time since its last heartbeat)` listed
    /// is live, seen at `now` less that time. Adds nodes and renews them, never removes one;
    /// returns the nodes it added. Any poll may call this, as often as it likes.
    pub fn observe(
        &mut self,
        listed: impl IntoIterator<Item = (NodeInfo, Duration)>,
        now: Instant,
    ) -> Vec<NodeInfo> {
        let mut added = Vec::new();
        let ttl = self.ttl;
        self.buried
            .retain(|_, at| now.saturating_duration_since(*at) < ttl);
        for (info, since_beat) in listed {
            let at = now.checked_sub(since_beat).unwrap_or(now);
            if self
                .buried
                .get(&info.id)
                .is_some_and(|buried| at <= *buried)
            {
                continue;
            }
            match self.nodes.entry(info.id) {
                Entry::Occupied(mut entry) => {
                    let seen = entry.get_mut();
                    seen.at = seen.at.max(at);
                    seen.info = info;
                }
                Entry::Vacant(entry) => {
                    added.push(info.clone());
                    entry.insert(Seen { info, at });
                }
            }
        }
        added
    }

    /// Adds a node known by other means (it authenticated a link), as seen at `now`, unless it
    /// is known already; true if added. Polls confirm it or it dies like any other.
    pub fn learn(&mut self, info: NodeInfo, now: Instant) -> bool {
        match self.nodes.entry(info.id) {
            Entry::Occupied(_) => false,
            Entry::Vacant(entry) => {
                entry.insert(Seen { info, at: now });
                true
            }
        }
    }

    /// Holds `id` as dead from `now` (see `buried`); true if it was live.
    pub fn bury(&mut self, id: NodeId, now: Instant) -> bool {
        self.buried.insert(id, now);
        self.nodes.remove(&id).is_some()
    }

    /// A regular poll failed at `now`: until one succeeds, no node dies.
    pub fn blind(&mut self, now: Instant) {
        self.blind_since.get_or_insert(now);
    }

    /// A regular poll succeeded at `now`, after [`Liveness::observe`] took its answer. Ends a
    /// blind spell, giving every node the time it lasted.
    pub fn sighted(&mut self, now: Instant) {
        if let Some(since) = self.blind_since.take() {
            let blind_for = now.saturating_duration_since(since);
            for seen in self.nodes.values_mut() {
                seen.at = (seen.at + blind_for).min(now);
            }
        }
    }

    /// Removes and returns the nodes not seen for the ttl at `now`; none while blind.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        if self.blind_since.is_some() {
            return Vec::new();
        }
        let ttl = self.ttl;
        let dead: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(seen.at) >= ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in &dead {
            self.nodes.remove(id);
        }
        dead
    }

    /// When the next node dies if nobody sees it before; `None` while blind or empty.
    pub fn next_death(&self) -> Option<Instant> {
        if self.blind_since.is_some() {
            return None;
        }
        self.nodes.values().map(|seen| seen.at + self.ttl).min()
    }

    /// The node `id`, if live.
    pub fn get(&self, id: &NodeId) -> Option<&NodeInfo> {
        self.nodes.get(id).map(|seen| &seen.info)
    }

    /// True if `id` is live.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.nodes.contains_key(id)
    }

    /// The ids of the live nodes.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    fn node(n: u64) -> NodeInfo {
        NodeInfo {
            id: NodeId::from_u64(n).unwrap(),
            advertise: format!("127.0.0.1:{n}"),
            window: 16,
            version: "test".into(),
        }
    }

    fn id(n: u64) -> NodeId {
        NodeId::from_u64(n).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_buried_node_comes_back_only_with_a_newer_heartbeat() {
        let start = Instant::now();
        let mut live = Liveness::new(TTL);
        live.observe([(node(1), ms(0))], start);
        assert!(live.bury(id(1), start + ms(100)));
        // Still listed, with the heartbeat it sent before it was found gone.
        assert!(
            live.observe([(node(1), ms(400))], start + ms(500))
                .is_empty()
        );
        assert!(!live.contains(&id(1)));
        // A heartbeat after the burial: it lives (a new process would have a new id).
        assert_eq!(live.observe([(node(1), ms(0))], start + ms(900)).len(), 1);
    }

    #[test]
    fn a_node_dies_node_ttl_after_its_last_heartbeat_not_after_its_last_listing() {
        let start = Instant::now();
        let mut live = Liveness::new(TTL);
        assert_eq!(live.observe([(node(1), ms(0))], start), vec![node(1)]);
        // Listed once more, 3 s later, by a reply saying it beat 2 s before.
        live.observe([(node(1), ms(2000))], start + ms(3000));
        assert!(live.expire(start + ms(5999)).is_empty());
        assert_eq!(live.next_death(), Some(start + ms(6000)));
        assert_eq!(live.expire(start + ms(6000)), vec![id(1)]);
        assert!(!live.contains(&id(1)));
        assert_eq!(live.next_death(), None);
    }

    #[test]
    fn any_number_of_polls_missing_a_node_never_hasten_its_death() {
        let start = Instant::now();
        let mut live = Liveness::new(TTL);
        live.observe([(node(1), ms(0)), (node(2), ms(0))], start);
        // A burst of polls (claims meeting unknown nodes) that all miss node 2, and regular
        // polls that miss it too, within its ttl.
        for n in 0..1000 {
            let now = start + ms(n * 4);
            live.observe([(node(1), ms(0))], now);
            live.sighted(now);
            assert!(live.expire(now).is_empty(), "poll {n}");
        }
        assert!(live.contains(&id(2)));
        assert_eq!(live.expire(start + TTL), vec![id(2)]);
        assert!(live.contains(&id(1)));
    }

    #[test]
    fn a_poll_adds_unknown_nodes_and_renews_known_ones() {
        let start = Instant::now();
        let mut live = Liveness::new(TTL);
        live.observe([(node(1), ms(0))], start);
        let added = live.observe([(node(1), ms(0)), (node(3), ms(100))], start + ms(4000));
        assert_eq!(added, vec![node(3)]);
        assert_eq!(live.get(&id(3)), Some(&node(3)));
        // Node 1 renewed at 4 s lives until 9 s; node 3, which beat at 3.9 s, until 8.9 s.
        assert!(live.expire(start + ms(8000)).is_empty());
        assert_eq!(live.expire(start + ms(8900)), vec![id(3)]);
        assert_eq!(live.expire(start + ms(9000)), vec![id(1)]);
    }

    #[test]
    fn an_older_report_never_moves_a_sighting_back() {
        let start = Instant::now();
        let mut live = Liveness::new(TTL);
        live.observe([(node(1), ms(0))], start + ms(1000));
        live.observe([(node(1), ms(3000))], start + ms(2000));
        assert_eq!(live.next_death(), Some(start + ms(6000)));
    }

    #[test]
    fn nobody_dies_while_blind_and_the_blind_time_is_given_back() {
        let start = Instant::now();
        let mut live = Liveness::new(TTL);
        live.observe([(node(1), ms(0)), (node(2), ms(0))], start);
        live.sighted(start);
        live.blind(start + ms(1000));
        live.blind(start + ms(2000));
        assert_eq!(live.next_death(), None);
        assert!(live.expire(start + ms(20_000)).is_empty());
        // Back after 20 s blind: node 1 is listed, node 2 not (yet). Node 2 had 1 s of
        // absence before the outage, and has the other 4 s now.
        let back = start + ms(21_000);
        live.observe([(node(1), ms(0))], back);
        live.sighted(back);
        assert!(live.expire(back).is_empty());
        assert_eq!(live.next_death(), Some(back + ms(4000)));
        assert_eq!(live.expire(back + ms(4000)), vec![id(2)]);
    }

    #[test]
    fn a_node_learnt_from_a_link_dies_unless_a_poll_confirms_it() {
        let start = Instant::now();
        let mut live = Liveness::new(TTL);
        assert!(live.learn(node(4), start));
        assert!(!live.learn(node(4), start + ms(1000)), "known already");
        assert!(live.expire(start + ms(4999)).is_empty());
        assert_eq!(live.expire(start + TTL), vec![id(4)]);
        // Confirmed by a poll, it lives on.
        assert!(live.learn(node(5), start));
        live.observe([(node(5), ms(0))], start + ms(3000));
        assert!(live.expire(start + ms(7999)).is_empty());
    }
}
