//! A room's messages kept on every node (CLUSTER.md, "History"): with
//! history on a node of several, a message said in an ordinary room here
//! goes, beside the relays to the nodes where a member is online, as an
//! unanswered copy to every other node holding a client; and each node
//! keeps what is relayed or copied to it as it keeps what is said through
//! it, so that a member back on any node is sent, from that node's own
//! kept messages, what the room said while it was away. Plain data in, the
//! [`Outbox`] out; a single server, or a node without history, builds none
//! of it.

use crate::proto::{FrameView, Kind};
use crate::router::{ConnId, NodeRef, Outbox, Router};
use std::time::Instant;
use tracing::debug;

/// The other nodes a kept message is copied to, as computed at the id
/// table's epoch noted beside them.
#[derive(Debug, Default)]
pub(in crate::router) struct Keepers {
    epoch: Option<u64>,
    nodes: Vec<NodeRef>,
}

impl Router {
    /// `frame`, a MSG to a room, was accepted here (and kept, if this
    /// node keeps room messages): a copy goes to every other node holding
    /// a client that it is not relayed to already. Which nodes those are
    /// is computed again only when the id table changed since.
    pub(in crate::router) fn room_copies_out(
        &mut self,
        frame: &FrameView<'_>,
        out: &mut impl Outbox,
    ) {
        if self.rooms.keep == 0 || self.rooms.by_id.get(&frame.dest).is_none_or(|r| r.queue) {
            return;
        }
        let epoch = self.ids.epoch;
        let keepers = &mut self.rooms.copies;
        if keepers.epoch != Some(epoch) {
            self.remote.nodes_holding(&mut keepers.nodes);
            keepers.epoch = Some(epoch);
        }
        let relayed = self.remote.request_nodes();
        for &node in &self.rooms.copies.nodes {
            if !relayed.contains(&node) {
                out.room_copy(node, frame);
            }
        }
    }

    /// A copy of a message said in room `frame.dest` on node `from` (a
    /// SAID record): kept here for the members away. A member session
    /// online here that the sender did not know of (it came online as the
    /// message went) is sent it now, as what it missed.
    pub fn room_copy_heard(
        &mut self,
        from: NodeRef,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if !self.room_heard(frame, &[]) {
            debug!(from, room = frame.dest, "a room's message not kept here");
            return;
        }
        let online: Vec<ConnId> = self.rooms.online(frame.dest).to_vec();
        for conn in online {
            self.catch_up(frame.dest, conn, now, out);
        }
    }

    /// A MSG to a room relayed here, reaching `targets` (this node's
    /// member sessions online): kept as a copy is.
    pub(in crate::router) fn room_relay_heard(
        &mut self,
        frame: &FrameView<'_>,
        targets: &[ConnId],
    ) {
        self.room_heard(frame, targets);
    }

    /// Keeps `frame`, said on another node, if this node keeps the
    /// messages of its room (history on, an ordinary room it knows); the
    /// names of `targets` and of members online on other nodes are noted
    /// as sent it, as on the node it was said on. Whether it was kept.
    fn room_heard(&mut self, frame: &FrameView<'_>, targets: &[ConnId]) -> bool {
        if self.rooms.keep == 0 || frame.kind != Kind::Msg {
            return false;
        }
        if self.rooms.by_id.get(&frame.dest).is_none_or(|r| r.queue) {
            return false;
        }
        // Who sent it, as this node's replica has the origin id.
        let sender = self
            .remote
            .shown(frame.origin)
            .map_or((None, 0), |(name, roles)| (name.map(Into::into), roles));
        self.room_keep(frame.dest, frame, sender, targets);
        self.room_said_across(frame.dest);
        true
    }

    /// A session showing `name` came online on another node, where it was
    /// sent what that node keeps of its rooms and not yet sent: which is
    /// what this node keeps too (every node keeps every room message it
    /// hears), so the name is noted as sent everything kept here, and a
    /// later return on this node sends only what follows.
    pub(in crate::router) fn room_member_online_elsewhere(&mut self, name: &str) {
        if self.rooms.keep == 0 {
            return;
        }
        let key = name.to_ascii_lowercase();
        let Some(ids) = self.rooms.of_name.get(key.as_str()) else {
            return;
        };
        for id in ids {
            let Some(room) = self.rooms.by_id.get_mut(id) else {
                continue;
            };
            if let Some(last) = room.next_number.checked_sub(1) {
                room.seen.insert(key.as_str().into(), last);
            }
        }
    }
}
