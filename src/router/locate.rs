//! What the admin API asks of the router: where a channel's roles are held, and whether this
//! node is ready for new clients. Read-only: nothing here changes a route.

use std::sync::atomic::Ordering;

use super::Router;
use crate::hub::Peer;
use crate::node::NodeId;
use crate::pair::{ChannelId, Role};
use crate::registry::RegistryError;
use crate::v1::ClientId;

/// Where one role of a channel is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The node holding the session.
    pub node: NodeId,
    /// Its advertised inner address, when known (this node, or a node in the directory).
    pub advertise: Option<String>,
    /// The session's id on that node.
    pub session: u64,
    /// Its client's v1 identity; `None` for a raw client.
    pub client: Option<ClientId>,
    /// Whether that node is alive as far as this one knows (false: the route outlived a node
    /// that died and will be overwritten by the next claim).
    pub live: bool,
}

impl Router {
    /// Where `role` of `channel_id` is held: this node's hub first, then, in cluster mode, the
    /// route in Redis. `None` when nobody holds it.
    pub async fn locate(
        &self,
        channel_id: &ChannelId,
        role: Role,
    ) -> Result<Option<Location>, RegistryError> {
        let me = self.me();
        if let Some(Peer::Local(handle)) = self.hub.peer(channel_id, role) {
            return Ok(Some(Location {
                node: me.id,
                advertise: Some(me.advertise.clone()),
                session: handle.id,
                client: handle.client,
                live: true,
            }));
        }
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let Some((route, client)) = cluster.registry.route(channel_id, role).await? else {
            return Ok(None);
        };
        // This node holds no such session (the hub was asked first): a route naming it is left
        // from one that ended, whose release is still to be retried.
        let live = route.node != me.id && cluster.membership.is_live(route.node);
        let advertise = if route.node == me.id {
            Some(me.advertise.clone())
        } else {
            cluster
                .membership
                .info(route.node)
                .map(|info| info.advertise)
        };
        Ok(Some(Location {
            node: route.node,
            advertise,
            session: route.session,
            client,
            live,
        }))
    }

    /// Whether the registry answered this node's last heartbeat: always in single-node mode;
    /// in cluster mode false until the node's first heartbeat and while Redis is unreachable.
    pub fn registry_reachable(&self) -> bool {
        self.cluster
            .as_ref()
            .is_none_or(|cluster| cluster.registry_ok.load(Ordering::Acquire))
    }

    /// Payload bytes waiting in the links to other nodes, and route releases waiting for
    /// their retry (0 and 0 on a single node): for `/metrics`.
    pub fn backlog(&self) -> (usize, usize) {
        self.cluster.as_ref().map_or((0, 0), |cluster| {
            (
                cluster.links.all_queued_bytes(),
                cluster.upkeep.pending_releases(),
            )
        })
    }

    /// Whether this node runs in cluster mode.
    pub fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }
}
