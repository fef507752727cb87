//! The link table: one outbound link per remote node, spawned on first use, forgotten when
//! the node dies. Knows nothing of sessions or membership; the router looks a node up before
//! asking for its link, and hears of each (re)connection through the callback it gave.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lock;
use crate::inner::frame::InnerFrame;
use crate::inner::link::{LinkContext, LinkHandle, spawn_link};
use crate::node::{NodeId, NodeInfo};

/// Called with a node's id each time its link (re)connects, or (the second) when its inner
/// port refuses connections or another node answers there.
pub(super) type OnLinkEvent = Arc<dyn Fn(NodeId) + Send + Sync>;

/// The links of one node.
pub(super) struct Links {
    table: Mutex<HashMap<NodeId, (LinkHandle, CancellationToken)>>,
    ctx: Arc<LinkContext>,
    tracker: TaskTracker,
    /// Cancelled after the sessions have drained, so `Unbound` frames still go out.
    cancel: CancellationToken,
    on_up: OnLinkEvent,
    on_gone: OnLinkEvent,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

impl Links {
    /// An empty table whose links run on `tracker` until `cancel`.
    pub(super) fn new(
        ctx: Arc<LinkContext>,
        tracker: TaskTracker,
        cancel: CancellationToken,
        on_up: OnLinkEvent,
        on_gone: OnLinkEvent,
    ) -> Links {
        Links {
            table: Mutex::default(),
            ctx,
            tracker,
            cancel,
            on_up,
            on_gone,
        }
    }

    /// Queues a control frame on the open link to `node`; hands it back if there is none.
    /// Credit comes through here as often as every 32 messages: the link is used in place,
    /// without cloning its handle.
    pub(super) fn send_control_if_open(
        &self,
        node: NodeId,
        frame: InnerFrame,
    ) -> Result<(), InnerFrame> {
        match lock(&self.table).get(&node) {
            Some((handle, _)) if !handle.is_closed() => {
                handle.send_control(frame);
                Ok(())
            }
            _ => Err(frame),
        }
    }

    /// The link to `info`'s node, spawned on first use.
    pub(super) fn link(&self, info: &NodeInfo) -> LinkHandle {
        let mut table = lock(&self.table);
        if let Some((handle, _)) = table.get(&info.id)
            && !handle.is_closed()
        {
            return handle.clone();
        }
        let cancel = self.cancel.child_token();
        let (on_up, on_gone) = (Arc::clone(&self.on_up), Arc::clone(&self.on_gone));
        let handle = spawn_link(
            info.clone(),
            Arc::clone(&self.ctx),
            &self.tracker,
            cancel.clone(),
            Box::new(move |node| on_up(node)),
            Box::new(move |node| on_gone(node)),
        );
        table.insert(info.id, (handle.clone(), cancel));
        handle
    }

    /// Closes the link to a node that died.
    pub(super) fn forget(&self, node: NodeId) {
        if let Some((_, cancel)) = lock(&self.table).remove(&node) {
            cancel.cancel();
        }
    }

    /// Payload bytes waiting in the link to `node`, if there is one.
    pub(super) fn queued_bytes(&self, node: NodeId) -> Option<usize> {
        lock(&self.table)
            .get(&node)
            .map(|(link, _)| link.queued_bytes())
    }

    /// Payload bytes waiting in every link.
    pub(super) fn all_queued_bytes(&self) -> usize {
        lock(&self.table)
            .values()
            .map(|(link, _)| link.queued_bytes())
            .sum()
    }

    /// Links open or connecting.
    pub(super) fn count(&self) -> usize {
        lock(&self.table)
            .values()
            .filter(|(link, _)| !link.is_closed())
            .count()
    }
}
