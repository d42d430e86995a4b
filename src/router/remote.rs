//! The rules' part of several nodes (CLUSTER.md): which other node holds
//! each id (a replica the loop keeps up to date from the engine), the OIs
//! waiting for an id the engine claims, the requests relayed to other
//! nodes and awaiting their acknowledgement, and the relays from other
//! nodes being delivered here. It is handed routes and acknowledgements as
//! plain data and answers through the [`Outbox`]; it never sees the engine.
//! Without a cluster none of it is allocated, and a request pays one branch.

use super::{ConnId, Delivery, Outbox, Purpose, RequestRef, Role, Router, Session};
use crate::proto::{
    ClientId, EXHIBITOR_IDS, Frame, FrameView, Kind, SERVER_ID, is_emitter_id, is_exhibitor_id,
};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Another node, as the loop names it (its incarnation).
pub type NodeRef = u64;

/// How much longer than the ack timeout a relay may wait for the other
/// node's ACK: its exhibitors have the ack timeout, then the ACK travels.
const RELAY_GRACE: Duration = Duration::from_secs(2);

/// A request relayed to another node, awaiting its ACK.
#[derive(Debug)]
struct Sent {
    node: NodeRef,
    request: RequestRef,
    deadline: Instant,
}

/// A relay from another node, being delivered to targets here.
#[derive(Debug)]
struct Received {
    from: NodeRef,
    relay: u64,
    outstanding: u32,
    any_ok: bool,
}

/// The cluster state of one router (empty and off on a single server).
#[derive(Debug, Default)]
pub(super) struct Remote {
    pub(super) enabled: bool,
    /// Which other node holds each id (indexed by id; empty until enabled).
    owner: Vec<Option<NodeRef>>,
    /// How many exhibitor ids each other node holds: a broadcast goes to
    /// the nodes counted here.
    exhibitors: BTreeMap<NodeRef, u32>,
    /// Anonymous connections whose OI waits for a claimed id: the OI's
    /// origin and seq.
    claiming: HashMap<ConnId, (ClientId, u16)>,
    next_relay: u64,
    /// By relay number, so the first has the earliest deadline.
    sent: BTreeMap<u64, Sent>,
    next_received: u64,
    received: HashMap<u64, Received>,
    /// The nodes of the request being routed.
    nodes: Vec<NodeRef>,
}

impl Remote {
    /// Whether `conn`'s OI waits for its id (its input is held meanwhile).
    pub(super) fn is_claiming(&self, conn: ConnId) -> bool {
        self.claiming.contains_key(&conn)
    }

    /// `conn` is gone: its claim (if any) is dropped, and its id released.
    pub(super) fn forget(&mut self, conn: ConnId, session: &Session, out: &mut impl Outbox) {
        self.claiming.remove(&conn);
        if !matches!(session.role, Role::Anonymous) {
            out.release_id(session.id);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.sent.first_key_value().map(|(_, sent)| sent.deadline)
    }

    fn hold(&mut self, id: ClientId, node: NodeRef) {
        let Some(slot) = self.owner.get_mut(usize::from(id)) else {
            return;
        };
        if let Some(old) = slot.replace(node) {
            self.uncount(id, old);
        }
        if is_exhibitor_id(id) {
            *self.exhibitors.entry(node).or_default() += 1;
        }
    }

    fn free(&mut self, id: ClientId, node: NodeRef) {
        let Some(slot) = self.owner.get_mut(usize::from(id)) else {
            return;
        };
        if *slot == Some(node) {
            *slot = None;
            self.uncount(id, node);
        }
    }

    fn uncount(&mut self, id: ClientId, node: NodeRef) {
        if is_exhibitor_id(id)
            && let Some(count) = self.exhibitors.get_mut(&node)
        {
            *count -= 1;
            if *count == 0 {
                self.exhibitors.remove(&node);
            }
        }
    }
}

impl Router {
    /// This router serves one node of several: OIs wait for ids the engine
    /// claims ([`Outbox::claim_id`]), departures release them, and
    /// requests reach ids other nodes hold.
    pub fn enable_cluster(&mut self) {
        self.remote.enabled = true;
        self.remote.owner = vec![None; usize::from(*EXHIBITOR_IDS.end()) + 1];
    }

    /// The node (re)joined: `held` is every id other nodes hold.
    pub fn cluster_joined(&mut self, held: &[(ClientId, NodeRef)]) {
        self.remote.owner.fill(None);
        self.remote.exhibitors.clear();
        for &(id, node) in held {
            self.remote.hold(id, node);
        }
    }

    /// Another node now holds `id`.
    pub fn remote_held(&mut self, id: ClientId, node: NodeRef) {
        self.remote.hold(id, node);
    }

    /// Another node no longer holds `id`.
    pub fn remote_freed(&mut self, id: ClientId, node: NodeRef) {
        self.remote.free(id, node);
    }

    /// Every id another node holds, ascending, for a CLIST with this
    /// node's own.
    pub(super) fn all_ids(&self) -> Vec<ClientId> {
        let mut ids: Vec<ClientId> = self.ids.ids().collect();
        if self.remote.enabled {
            let remote = self.remote.owner.iter().enumerate();
            ids.extend(
                remote
                    .filter(|(_, n)| n.is_some())
                    .map(|(id, _)| id as ClientId),
            );
            ids.sort_unstable();
        }
        ids
    }

    /// `node` is gone (its lease expired): its ids are forgotten and every
    /// request relayed to it fails.
    pub fn node_down(&mut self, node: NodeRef, now: Instant, out: &mut impl Outbox) {
        for slot in &mut self.remote.owner {
            if *slot == Some(node) {
                *slot = None;
            }
        }
        self.remote.exhibitors.remove(&node);
        let failed: Vec<u64> = self
            .remote
            .sent
            .iter()
            .filter(|(_, sent)| sent.node == node)
            .map(|(&relay, _)| relay)
            .collect();
        if !failed.is_empty() {
            warn!(
                node,
                relays = failed.len(),
                "node down: its deliveries fail"
            );
        }
        self.relays_failed(node, &failed, now, out);
    }

    /// These relays to `node` could not be delivered: they fail.
    pub fn relays_failed(
        &mut self,
        node: NodeRef,
        relays: &[u64],
        now: Instant,
        out: &mut impl Outbox,
    ) {
        for relay in relays {
            if self.remote.sent.get(relay).is_some_and(|s| s.node == node)
                && let Some(sent) = self.remote.sent.remove(relay)
            {
                self.settle(sent.request, false, now, out);
            }
        }
    }

    /// This node lost its lease: every client is dismissed as at shutdown
    /// (rule 8), every relay fails, and what it knew of others is dropped
    /// until it joins again.
    pub fn fence(&mut self, now: Instant, out: &mut impl Outbox) {
        self.shutdown(now, out);
        let sent = std::mem::take(&mut self.remote.sent);
        for (_, sent) in sent {
            self.settle(sent.request, false, now, out);
        }
        self.remote.received.clear();
        self.cluster_joined(&[]);
    }

    /// The engine answered `conn`'s claim: the OI goes on with `id`, or is
    /// refused without one. Returns whether `conn` now holds `id` (if not,
    /// the caller releases it).
    pub fn id_claimed(
        &mut self,
        conn: ConnId,
        id: Option<ClientId>,
        now: Instant,
        out: &mut impl Outbox,
    ) -> bool {
        let Some((origin, seq)) = self.remote.claiming.remove(&conn) else {
            return false;
        };
        if self.session(conn).is_none() {
            return false;
        }
        out.resume_input(conn);
        let Some(id) = id else {
            warn!(
                conn,
                requested = origin,
                "OI refused: no id could be claimed"
            );
            out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, 0, seq));
            self.close(conn, super::CloseReason::Refused, now, out);
            return false;
        };
        self.identify(conn, origin, seq, Some(id), now, out);
        self.client_id(conn) == Some(id)
    }

    /// An identify that must wait for the engine: noted, and the claim asked.
    pub(super) fn claim_for(
        &mut self,
        conn: ConnId,
        origin: ClientId,
        seq: u16,
        out: &mut impl Outbox,
    ) {
        self.remote.claiming.insert(conn, (origin, seq));
        out.claim_id(conn, origin == 0);
    }

    /// Fills the nodes a request to `dest` must also go to; returns how many.
    #[inline(never)]
    pub(super) fn remote_targets(&mut self, dest: ClientId) -> usize {
        let remote = &mut self.remote;
        remote.nodes.clear();
        if dest == 0 {
            remote.nodes.extend(remote.exhibitors.keys().copied());
        } else if (is_emitter_id(dest) || is_exhibitor_id(dest))
            && let Some(Some(node)) = remote.owner.get(usize::from(dest))
        {
            remote.nodes.push(*node);
        }
        remote.nodes.len()
    }

    /// Relays `frame` to the nodes [`Router::remote_targets`] found, each a
    /// target of `request`.
    #[inline(never)]
    pub(super) fn relay_out(
        &mut self,
        request: RequestRef,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let deadline = now + self.limits.ack_timeout + RELAY_GRACE;
        for &node in &self.remote.nodes {
            let relay = self.remote.next_relay;
            self.remote.next_relay += 1;
            self.remote.sent.insert(
                relay,
                Sent {
                    node,
                    request,
                    deadline,
                },
            );
            out.relay(node, relay, frame);
        }
        self.note_deadline(deadline);
    }

    /// A request relayed from node `from`: delivered to this node's targets
    /// as any request (rules 3–5); one ACK goes back once they settle.
    pub fn relayed(
        &mut self,
        from: NodeRef,
        relay: u64,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let mut targets = std::mem::take(&mut self.targets);
        self.find_targets(frame.dest, &mut targets);
        if targets.is_empty() {
            debug!(from, dest = frame.dest, "relay with no target here");
            out.relay_ack(from, relay, false);
            self.targets = targets;
            return;
        }
        let key = self.remote.next_received;
        self.remote.next_received += 1;
        self.remote.received.insert(
            key,
            Received {
                from,
                relay,
                outstanding: targets.len() as u32,
                any_ok: false,
            },
        );
        let clist = (frame.kind == Kind::Creq).then(|| self.all_ids());
        if clist.is_none() {
            out.forward(&targets, frame);
        }
        let deadline = now + self.limits.ack_timeout;
        for &target in &targets {
            let session = self.session_mut(target).expect("targets are live");
            let seq = match &clist {
                None => frame.seq,
                Some(ids) => {
                    let seq = session.seq.next_seq();
                    let list = Frame::clist(SERVER_ID, frame.dest, seq, ids.clone())
                        .expect("at most 8191 clients");
                    out.send(target, &list);
                    seq
                }
            };
            session.awaiting_ack.push_back(Delivery {
                seq,
                deadline,
                purpose: Purpose::Relayed { key },
            });
        }
        self.note_deadline(deadline);
        targets.clear();
        self.targets = targets;
    }

    /// One target of a relay from another node settled.
    pub(super) fn relay_settled(&mut self, key: u64, ok: bool, out: &mut impl Outbox) {
        let Some(received) = self.remote.received.get_mut(&key) else {
            return;
        };
        received.outstanding -= 1;
        received.any_ok |= ok;
        if received.outstanding == 0 {
            let received = self.remote.received.remove(&key).expect("found above");
            out.relay_ack(received.from, received.relay, received.any_ok);
        }
    }

    /// Node `from` answered relay `relay`.
    pub fn relay_acked(
        &mut self,
        from: NodeRef,
        relay: u64,
        ok: bool,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if self.remote.sent.get(&relay).is_none_or(|s| s.node != from) {
            debug!(from, relay, "ACK for no relay pending on that node ignored");
            return;
        }
        let sent = self.remote.sent.remove(&relay).expect("found above");
        self.settle(sent.request, ok, now, out);
    }

    /// Relays whose node did not answer in time fail.
    pub(super) fn expire_relays(&mut self, now: Instant, out: &mut impl Outbox) {
        while let Some(entry) = self.remote.sent.first_entry() {
            if entry.get().deadline > now {
                break;
            }
            let sent = entry.remove();
            warn!(
                node = sent.node,
                "no ACK from the node in time: the delivery fails"
            );
            self.settle(sent.request, false, now, out);
        }
    }
}
