//! Frames from other nodes: where each one lands (a session's queue, a sending session's
//! grant, a receiving session's ledger, the hub's records of remote sessions), and the credit
//! a node announces in return. Every frame names the session incarnations it is for; one that
//! names an incarnation this node no longer holds is dropped and counted, never applied to a
//! successor.

use tracing::debug;

use super::{Router, lock};
use crate::credit::CreditDue;
use crate::hub::{Peer, Recorded, RemotePeer, Undelivered};
use crate::inner::frame::InnerFrame;
use crate::metrics::Metrics;
use crate::node::{Incarnation, NodeId, NodeInfo};
use crate::pair::{ChannelId, Message, Role};
use crate::registry::Route;

impl Router {
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
    pub(super) fn adopt_remote(&self, channel_id: ChannelId, role: Role, remote: RemotePeer) {
        let incarnation = remote.incarnation();
        if self.hub.set_remote(&channel_id, role, remote, true) == Recorded::Ignored {
            Metrics::incr(&self.metrics.inner_frames_stale);
            return;
        }
        self.open_credit(channel_id, role.peer(), incarnation);
    }

    /// Opens the account of the remote session `sender` in the ledger of this node's session
    /// of `role` (its peer), and announces the grant.
    pub(super) fn open_credit(&self, channel_id: ChannelId, role: Role, sender: Incarnation) {
        if let Some(handle) = self.hub.local(&channel_id, role) {
            let due = handle.credit.ledger().open(sender);
            if let Some(due) = due {
                self.send_credit(channel_id, role, handle.id, due);
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
                        crate::warn_throttled!(%channel_id, %role, node = %from, lost, "messages from a remote node lost on the way");
                    }
                    // The receiving incarnation is gone: the sender's grant for it is void, so
                    // nothing is given back; the sender finds the successor and its grant.
                    Err(Undelivered::NoSession) => {
                        Metrics::incr(&self.metrics.messages_dropped_remote);
                        debug!(%channel_id, %role, node = %from, "message from a remote node dropped: its session is gone");
                    }
                    Err(Undelivered::Superseded(due)) => {
                        Metrics::incr(&self.metrics.messages_dropped_remote);
                        debug!(%channel_id, %role, node = %from, "v1 frame from a superseded session dropped");
                        if let Some(due) = due {
                            self.send_credit(channel_id, role, receiver, due);
                        }
                    }
                    Err(Undelivered::QueueFull) => {
                        Metrics::incr(&self.metrics.messages_dropped_remote);
                        crate::warn_throttled!(%channel_id, %role, node = %from, "message from a remote node dropped: it came without credit and the session's queue is full");
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
                        // A sender session this node no longer holds never learnt of that
                        // receiver (its own `Unbound` went to the peer it knew), and the
                        // receiver's ledger would keep its share of the window for the
                        // superseded grace: it hears that the session sent it nothing.
                        // (`sent` 0 never lowers an end the session itself stated.)
                        if self.hub.session(&channel_id, role, sender).is_none() {
                            self.send_control(
                                from,
                                InnerFrame::Unbound {
                                    channel_id,
                                    role,
                                    session: sender,
                                    sent: 0,
                                },
                            );
                        }
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
                client,
            } => {
                if let Some(cluster) = &self.cluster {
                    cluster.membership.revive(from);
                }
                let route = Route {
                    node: from,
                    session,
                };
                if let Some(remote) = self.remote_peer(route, client) {
                    self.adopt_remote(channel_id, role, remote);
                }
                // Tells the bound session's node who its peer's client is here, if any.
                let peer_here = self.hub.local(&channel_id, role.peer());
                self.send_control(
                    from,
                    InnerFrame::BoundAck {
                        channel_id,
                        role,
                        session,
                        client: peer_here.as_ref().and_then(|handle| handle.client),
                        held: peer_here.is_some(),
                    },
                );
            }
            InnerFrame::BoundAck {
                channel_id,
                role,
                session,
                client,
                held,
            } => {
                // The acknowledging node named its session's v1 identity: noted before the
                // claim waiting for this answers its client, so its `peer` frame says it. A node
                // that holds no session of the role names nobody: a `None` from it is not a raw
                // client, and announcing it as one would make a v1 client here send its outbox
                // unnumbered (the session it holds, if any, announces itself in its own `Bound`).
                if held
                    && let Some(Peer::Remote(peer)) = self.hub.peer(&channel_id, role.peer())
                    && peer.node == from
                {
                    self.hub.set_remote_client(
                        &channel_id,
                        role.peer(),
                        peer.incarnation(),
                        client,
                    );
                }
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
                    cluster.membership.hello(info);
                }
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
                if let Some(handle) = self.hub.session(&channel_id, role, session) {
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
    pub(super) fn on_sent(
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
            crate::warn_throttled!(%channel_id, %role, node = %from, lost, "messages from a remote node lost on the way");
        }
        if let Some(due) = due {
            self.send_credit(channel_id, role, receiver, due);
        }
    }

    /// Forgets a node that died: its sessions' records, and the credit its senders held,
    /// which goes to the senders that replaced them.
    pub(super) fn forget_node(&self, node: NodeId) {
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

    /// A (re)connected link: credit frames may have been lost with the old connection, so
    /// every session here announces its current grant to its senders on that node again.
    /// Absolute limits make the repetition harmless.
    pub(super) fn on_link_up(&self, node: NodeId) {
        self.evict_again(node);
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
}
