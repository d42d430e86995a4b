//! The rules' part of several nodes (CLUSTER.md): which other node holds
//! each id (a replica the loop keeps up to date from the engine), the OIs
//! waiting for an id the engine claims, the requests relayed to other
//! nodes and awaiting their acknowledgement, and the relays from other
//! nodes being delivered here, and the pairs whose emitter and exhibitor
//! are on two nodes, the names claimed in the engine and what each other
//! node's id shows (for WHO). It is handed routes and acknowledgements as
//! plain data and answers through the [`Outbox`]; it never sees the engine.
//! Without a cluster none of it is allocated, and a request pays one branch.

use super::pair_reconcile::Orphans;
use super::pair_retry::PairRetries;
use super::sequence_map::SequenceMap;
use super::{
    ConnId, Hello, NameTaken, Outbox, Purpose, RemoteLetter, RequestRef, Role, Router, Session,
    is_room_id,
};
use crate::proto::{
    ClientId, EXHIBITOR_IDS, Frame, FrameView, Kind, SERVER_ID, is_emitter_id, is_exhibitor_id,
};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Another node, as the loop names it (its incarnation).
pub type NodeRef = u64;

/// How much longer than the ack timeout a relay may wait for the other
/// node's ACK: its exhibitors have the ack timeout, then the ACK travels.
pub(super) const RELAY_GRACE: Duration = Duration::from_secs(2);

/// A request relayed to another node, awaiting its ACK.
#[derive(Debug)]
struct Sent {
    node: NodeRef,
    origin: SentFor,
    deadline: Instant,
}

/// What a relay's ACK settles. The tag in 64 bits, as [`Purpose`]'s, so
/// that building a [`Sent`] moves its payload 8-aligned.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
enum SentFor {
    /// One target of an emitter's request here.
    Request(RequestRef),
    /// A relay received from another node, passed on to the node of the
    /// destination emitter's exhibitor (by its key in `received`).
    Chain(u64),
    /// A message waiting here for a name, sent to the node where the name
    /// is online (by its wait number).
    Waited(u64),
    /// A queue room's message this node (its home) gave to a member session
    /// on another node: the room, the message's slot and ticket there.
    Queued {
        room: ClientId,
        slot: u32,
        ticket: u64,
    },
}

/// A notice between the two halves of a pair on two nodes (CLUSTER.md,
/// "Pairs across nodes"); the loop carries it in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PairNotice {
    /// My emitter `emitter` asks to pair with your `exhibitor`.
    Pair {
        token: u64,
        exhibitor: ClientId,
        emitter: ClientId,
    },
    /// The answer to PAIR `token`.
    Paired { token: u64, ok: bool },
    /// My emitter `emitter` is gone: your `exhibitor` leaves (rule 6).
    Dismiss {
        exhibitor: ClientId,
        emitter: ClientId,
    },
    /// My exhibitor `exhibitor` is gone: your `emitter` is unpaired.
    Unpaired {
        exhibitor: ClientId,
        emitter: ClientId,
    },
    /// I gave up pairing `emitter` with your `exhibitor`: forget it.
    Unpair {
        exhibitor: ClientId,
        emitter: ClientId,
    },
}

/// An emitter's OI waiting for another node's answer to PAIR.
#[derive(Debug, Clone, Copy)]
struct PairWait {
    conn: ConnId,
    node: NodeRef,
    exhibitor: ClientId,
    /// The id claimed for the emitter.
    emitter: ClientId,
    seq: u16,
    deadline: Instant,
}

/// A HELLO waiting for the engine's answer to its name claim.
#[derive(Debug)]
struct NameWait {
    claim: u64,
    seq: u16,
    name: Box<str>,
    roles: u8,
}

/// The engine's answer to a HELLO's name claim, for the loop to send as
/// HELLOACK.
#[derive(Debug, PartialEq, Eq)]
pub enum NameAnswer {
    /// The name is the session's (code 0).
    Accepted {
        conn: ConnId,
        seq: u16,
        name: Box<str>,
        roles: u8,
    },
    /// Another session, on this node or another, holds it (code 3).
    Taken { conn: ConnId, seq: u16 },
    /// The engine could not be asked: refused as an OI is (code 6, busy).
    Failed { conn: ConnId, seq: u16 },
}

/// A relay from another node, being delivered to targets here.
#[derive(Debug)]
struct Received {
    from: NodeRef,
    relay: u64,
    outstanding: u32,
    any_ok: bool,
    /// Its one target answering ERRO is told back as such (a REFUSED
    /// ACK), not as a failure: a queue message for a member session here,
    /// or a waiting message for its addressee.
    refusable: bool,
}

/// The cluster state of one router (empty and off on a single server).
#[derive(Debug, Default)]
pub(super) struct Remote {
    pub(super) enabled: bool,
    /// Which other node holds each id (indexed by id; empty until enabled).
    owner: Vec<Option<NodeRef>>,
    /// What each id another node holds shows: its roles and name (indexed
    /// by id; None until that node says, or for ids held here).
    shows: Vec<Option<(u8, Option<Box<str>>)>>,
    /// HELLO name claims asked of the engine, by claim number: the
    /// connection and the name's key (lower case). Kept until answered,
    /// so that a name won for a connection since gone is released.
    name_claims: HashMap<u64, (ConnId, Box<str>)>,
    /// The HELLO each connection waits on: its claim number, seq, the
    /// name as sent, and the roles it will hold.
    naming: HashMap<ConnId, NameWait>,
    next_name_claim: u64,
    /// How many exhibitor ids each other node holds: a broadcast goes to
    /// the nodes counted here.
    exhibitors: BTreeMap<NodeRef, u32>,
    /// Anonymous connections whose OI waits for a claimed id: the OI's
    /// origin and seq.
    claiming: HashMap<ConnId, (ClientId, u16)>,
    next_relay: u64,
    /// Relays awaiting an ACK, by relay number (this router's own sequence,
    /// so a multiplication hashes it: a `BTreeMap` here cost node A about
    /// 430 instructions a delivery, CLUSTER.md "Numbers").
    sent: SequenceMap<Sent>,
    /// No relay in `sent` is due before this (None: `sent` is empty).
    /// Lowered as relays are sent, never raised by an ACK: a stale value
    /// only makes the sweep look early, once, and set it anew. Every relay
    /// waits the same time, so in steady traffic the whole map is looked
    /// at about once per ack timeout, not once per delivery.
    sent_due: Option<Instant>,
    next_received: u64,
    received: SequenceMap<Received>,
    /// The nodes of the request being routed.
    nodes: Vec<NodeRef>,
    /// Emitters here paired with an exhibitor on another node: its node
    /// and id.
    pub(super) paired_out: HashMap<ConnId, (NodeRef, ClientId)>,
    /// Exhibitors here paired with an emitter on another node, by the
    /// emitter's id: its node and the exhibitor's connection.
    pub(super) paired_in: HashMap<ClientId, (NodeRef, ConnId)>,
    /// The same pairs by the exhibitor's connection: the node and the
    /// emitter's id.
    pub(super) paired_in_by_exhibitor: HashMap<ConnId, (NodeRef, ClientId)>,
    /// OIs waiting for PAIRED, by token, and their tokens by connection.
    pairing: HashMap<u64, PairWait>,
    pairing_conns: HashMap<ConnId, u64>,
    next_token: u64,
    /// Pair notices the engine could not carry, to be sent again.
    pub(super) retries: PairRetries,
    /// Exhibitors here whose emitter's id was freed, awaiting the notice
    /// that says why (`pair_reconcile.rs`).
    pub(super) orphans: Orphans,
}

impl Remote {
    /// Whether `conn`'s OI waits for its id (its input is held meanwhile).
    pub(super) fn is_claiming(&self, conn: ConnId) -> bool {
        self.claiming.contains_key(&conn) || self.pairing_conns.contains_key(&conn)
    }

    /// Whether the exhibitor `conn` is paired with an emitter on another node.
    pub(super) fn is_paired_in(&self, conn: ConnId) -> bool {
        self.paired_in_by_exhibitor.contains_key(&conn)
    }

    /// The exhibitor here paired with the emitter `id` of another node.
    pub(super) fn exhibitor_of(&self, id: ClientId) -> Option<ConnId> {
        self.paired_in.get(&id).map(|&(_, conn)| conn)
    }

    /// `conn` is gone: its claim or pairing (if any) is dropped, its id
    /// released, and the other half of a pair across nodes told (rule 6).
    pub(super) fn forget(&mut self, conn: ConnId, session: &Session, out: &mut impl Outbox) {
        self.claiming.remove(&conn);
        self.naming.remove(&conn);
        if let Some(token) = self.pairing_conns.remove(&conn)
            && let Some(wait) = self.pairing.remove(&token)
        {
            out.release_id(wait.emitter);
            let (exhibitor, emitter) = (wait.exhibitor, wait.emitter);
            out.pair_notice(wait.node, PairNotice::Unpair { exhibitor, emitter });
        }
        if let Some((node, exhibitor)) = self.paired_out.remove(&conn) {
            let emitter = session.id;
            out.pair_notice(node, PairNotice::Dismiss { exhibitor, emitter });
        }
        self.orphans.settled(conn);
        if let Some((node, emitter)) = self.paired_in_by_exhibitor.remove(&conn) {
            self.paired_in.remove(&emitter);
            let exhibitor = session.id;
            out.pair_notice(node, PairNotice::Unpaired { exhibitor, emitter });
        }
        if !matches!(session.role, Role::Anonymous) {
            out.release_id(session.id);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let relays = self.sent_due;
        let pairs = self.pairing.values().map(|wait| wait.deadline).min();
        let retries = self.retries.next_due();
        let orphans = self.orphans.next_due();
        relays
            .into_iter()
            .chain(pairs)
            .chain(retries)
            .chain(orphans)
            .min()
    }

    /// Whether a pair notice that failed is still worth sending: a PAIR
    /// only while its OI still waits for the answer; the others always
    /// (each is idempotent, and moot only once its node is gone).
    pub(super) fn pair_notice_matters(&self, notice: &PairNotice) -> bool {
        match notice {
            PairNotice::Pair { token, .. } => self.pairing.contains_key(token),
            _ => true,
        }
    }

    /// A relay just sent is due at `deadline`.
    fn sent_due_by(&mut self, deadline: Instant) {
        self.sent_due = Some(self.sent_due.map_or(deadline, |due| due.min(deadline)));
    }

    /// A relay about to be sent, awaited until its deadline (which the
    /// sweep then knows of): its number.
    /// A queue message of `room`, held in `slot` under `ticket`, goes to
    /// a member session on `node`: returns the relay number its ACK names.
    pub(super) fn await_queued(
        &mut self,
        node: NodeRef,
        (room, slot, ticket): (ClientId, u32, u64),
        deadline: Instant,
    ) -> u64 {
        self.await_ack(Sent {
            node,
            origin: SentFor::Queued { room, slot, ticket },
            deadline,
        })
    }

    fn await_ack(&mut self, sent: Sent) -> u64 {
        let relay = self.next_relay;
        self.next_relay += 1;
        self.sent_due_by(sent.deadline);
        self.sent.insert(relay, sent);
        relay
    }

    /// Relay `relay` settled: no longer awaited.
    fn take_sent(&mut self, relay: u64) -> Option<Sent> {
        let sent = self.sent.remove(&relay);
        if self.sent.is_empty() {
            self.sent_due = None;
        }
        sent
    }

    fn owner_of(&self, id: ClientId) -> Option<NodeRef> {
        self.owner.get(usize::from(id)).copied().flatten()
    }

    fn hold(&mut self, id: ClientId, node: NodeRef) {
        let Some(slot) = self.owner.get_mut(usize::from(id)) else {
            return;
        };
        if let Some(old) = slot.replace(node) {
            self.uncount(id, old);
        }
        // A new holder shows nothing until its node says what.
        self.shows[usize::from(id)] = None;
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
            self.shows[usize::from(id)] = None;
        }
    }

    /// What the id `id`, held by another node, shows: its name and roles
    /// (None: not known yet, or not held elsewhere).
    pub(super) fn shown(&self, id: ClientId) -> Option<(Option<&str>, u8)> {
        let (roles, name) = self.shows.get(usize::from(id))?.as_ref()?;
        Some((name.as_deref(), *roles))
    }

    /// Each exhibitor id another node holds that shows a name: the id, its
    /// node and the name (where a room's members, or a TELL's addressee,
    /// may be online).
    pub(super) fn named_exhibitors(&self) -> impl Iterator<Item = (ClientId, NodeRef, &str)> {
        let held = self.owner.iter().zip(&self.shows).enumerate();
        held.filter(|&(id, _)| is_exhibitor_id(id as ClientId))
            .filter_map(|(id, (node, shown))| {
                Some((id as ClientId, (*node)?, shown.as_ref()?.1.as_deref()?))
            })
    }

    /// Every other node holding at least one id, in ascending order.
    pub(super) fn nodes_holding(&self, into: &mut Vec<NodeRef>) {
        into.clear();
        into.extend(self.owner.iter().flatten().copied());
        into.sort_unstable();
        into.dedup();
    }

    /// The other nodes the request being routed was found to go to.
    pub(super) fn request_nodes(&self) -> &[NodeRef] {
        &self.nodes
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
        self.remote.shows = vec![None; usize::from(*EXHIBITOR_IDS.end()) + 1];
    }

    /// The node (re)joined: `held` is every id other nodes hold.
    /// Pairs across nodes whose other half's id the table lacks are
    /// reconciled as if its release had been heard (`pair_reconcile.rs`):
    /// a lost subscription may have lost both the release and the notice.
    pub fn cluster_joined(&mut self, held: &[(ClientId, NodeRef)], now: Instant) {
        self.remote.owner.fill(None);
        self.remote.shows.fill(None);
        self.remote.exhibitors.clear();
        for &(id, node) in held {
            self.remote.hold(id, node);
        }
        self.ids.epoch += 1;
        let remote = &self.remote;
        let halves = remote.paired_out.values().copied();
        let halves = halves.chain(remote.paired_in.iter().map(|(&e, &(node, _))| (node, e)));
        let gone: Vec<(NodeRef, ClientId)> = halves
            .filter(|&(node, id)| remote.owner_of(id) != Some(node))
            .collect();
        for (node, id) in gone {
            self.pair_half_freed(id, node, now);
        }
    }

    /// Another node now holds `id`.
    pub fn remote_held(&mut self, id: ClientId, node: NodeRef) {
        self.remote.hold(id, node);
        // What ids show is cached per epoch (WHO): a change moves it on.
        self.ids.epoch += 1;
    }

    /// Another node no longer holds `id`; a pair across nodes whose other
    /// half it was is reconciled (`pair_reconcile.rs`).
    pub fn remote_freed(&mut self, id: ClientId, node: NodeRef, now: Instant) {
        self.pair_half_freed(id, node, now);
        self.remote.free(id, node);
        self.ids.epoch += 1;
    }

    /// `node`'s id `id` shows `name` and `roles` (what WHO tells of it
    /// here); ignored unless the replica has `node` holding `id`.
    pub fn remote_shown(&mut self, id: ClientId, node: NodeRef, roles: u8, name: Option<&str>) {
        if self.remote.owner_of(id) != Some(node) {
            return;
        }
        self.remote.shows[usize::from(id)] = Some((roles, name.map(Into::into)));
        self.ids.epoch += 1;
        if let Some(name) = name.filter(|_| is_exhibitor_id(id)) {
            self.room_member_online_elsewhere(name);
        }
    }

    /// A HELLO from `conn` claims `name` for the session, with these
    /// roles: with several nodes the engine decides (one holder in the
    /// whole system), and until it answers the HELLO waits as an OI waits
    /// for its id (input held). A name held here is refused at once.
    pub fn claim_name(
        &mut self,
        conn: ConnId,
        seq: u16,
        name: &str,
        roles: u8,
        out: &mut impl Outbox,
    ) -> Result<(), NameTaken> {
        let key: Box<str> = name.to_ascii_lowercase().into();
        if self.claimed.get(&key).is_some_and(|&holder| holder != conn) {
            return Err(NameTaken);
        }
        let Some(session) = self.session_mut(conn) else {
            return Ok(());
        };
        session.hello = Hello::Checking;
        let claim = self.remote.next_name_claim;
        self.remote.next_name_claim += 1;
        out.claim_name(claim, &key);
        self.remote.name_claims.insert(claim, (conn, key));
        let wait = NameWait {
            claim,
            seq,
            name: name.into(),
            roles,
        };
        self.remote.naming.insert(conn, wait);
        Ok(())
    }

    /// The engine answered name claim `claim` (`won`: None when it could
    /// not be asked). Returns what the HELLO gets, or None when its
    /// connection has gone (a name won for it is released).
    pub fn name_claimed(
        &mut self,
        claim: u64,
        won: Option<bool>,
        out: &mut impl Outbox,
    ) -> Option<NameAnswer> {
        let (conn, key) = self.remote.name_claims.remove(&claim)?;
        let current = self
            .remote
            .naming
            .get(&conn)
            .is_some_and(|wait| wait.claim == claim);
        if !current {
            if won == Some(true) {
                out.release_name(&key);
            }
            return None;
        }
        let wait = self.remote.naming.remove(&conn).expect("found above");
        let seq = wait.seq;
        if won == Some(true) {
            match self.hello_accepted(conn, Some(&wait.name), wait.roles, true, out) {
                Ok(()) => {
                    return Some(NameAnswer::Accepted {
                        conn,
                        seq,
                        name: wait.name,
                        roles: wait.roles,
                    });
                }
                Err(NameTaken) => out.release_name(&key),
            }
        }
        if let Some(session) = self.session_mut(conn) {
            session.hello = Hello::Plain;
        }
        out.resume_input(conn);
        Some(match won {
            None => NameAnswer::Failed { conn, seq },
            Some(_) => NameAnswer::Taken { conn, seq },
        })
    }

    /// Which other node holds `id`, if one does.
    pub(super) fn remote_owner(&self, id: ClientId) -> Option<NodeRef> {
        self.remote.owner_of(id)
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
        for (slot, shows) in self.remote.owner.iter_mut().zip(&mut self.remote.shows) {
            if *slot == Some(node) {
                *slot = None;
                *shows = None;
            }
        }
        self.ids.epoch += 1;
        self.remote.exhibitors.remove(&node);
        self.remote.retries.forget_node(node);
        // Rule 6 across nodes: emitters here lose their exhibitor there;
        // exhibitors here whose emitter was there are dismissed.
        self.remote.paired_out.retain(|_, (n, _)| *n != node);
        let orphans: Vec<ConnId> = self
            .remote
            .paired_in_by_exhibitor
            .iter()
            .filter(|(_, (n, _))| *n == node)
            .map(|(&conn, _)| conn)
            .collect();
        for conn in orphans {
            if let Some((_, emitter)) = self.remote.paired_in_by_exhibitor.remove(&conn) {
                self.remote.paired_in.remove(&emitter);
            }
            if self.session(conn).is_some_and(|s| !s.leaving) {
                self.dismiss(conn, now, out);
            }
        }
        let waits: Vec<u64> = self
            .remote
            .pairing
            .iter()
            .filter(|(_, wait)| wait.node == node)
            .map(|(&token, _)| token)
            .collect();
        for token in waits {
            self.pair_failed(token, now, out);
        }
        let mut failed: Vec<u64> = self
            .remote
            .sent
            .iter()
            .filter(|(_, sent)| sent.node == node)
            .map(|(&relay, _)| relay)
            .collect();
        failed.sort_unstable();
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
                && let Some(sent) = self.remote.take_sent(*relay)
            {
                self.sent_settled(sent.origin, false, now, out);
            }
        }
    }

    /// This node lost its lease: every client is dismissed as at shutdown
    /// (rule 8), every relay fails, and what it knew of others is dropped
    /// until it joins again.
    pub fn fence(&mut self, now: Instant, out: &mut impl Outbox) {
        self.room_claims_failed(now, out);
        self.shutdown(now, out);
        let mut sent: Vec<(u64, Sent)> = self.remote.sent.drain().collect();
        self.remote.sent_due = None;
        sent.sort_unstable_by_key(|&(relay, _)| relay);
        for (_, sent) in sent {
            self.sent_settled(sent.origin, false, now, out);
        }
        self.forget_on_fence(now, out);
        self.remote.received.clear();
        self.remote.paired_out.clear();
        self.remote.paired_in.clear();
        self.remote.paired_in_by_exhibitor.clear();
        self.remote.retries.clear();
        self.remote.orphans.clear();
        self.cluster_joined(&[], now);
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
        // After a fence, a client of the old incarnation being dismissed
        // may still show the id the new one is given: refused until it has
        // gone, rather than two sessions here with one id (found by the
        // simulation).
        let Some(id) = id.filter(|&id| self.ids.get(id).is_none()) else {
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
        if self.client_id(conn) == Some(id) {
            self.show(conn, out);
            return true;
        }
        self.remote.pairing_conns.contains_key(&conn)
    }

    /// Tells the other nodes what `conn`'s id shows (its name and roles),
    /// once it holds it: before its first request can be relayed, since
    /// one engine connection carries both in order.
    fn show(&self, conn: ConnId, out: &mut impl Outbox) {
        if let Some(session) = self.session(conn) {
            out.show_id(session.id, session.roles, session.name());
        }
    }

    /// An emitter's OI names `exhibitor`, held by `node`: with its id
    /// claimed, that node is asked to pair them; until it answers (or
    /// the ack timeout passes) the OI waits.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn pair_across(
        &mut self,
        conn: ConnId,
        exhibitor: ClientId,
        seq: u16,
        claimed: Option<ClientId>,
        node: NodeRef,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let Some(emitter) = claimed else {
            return self.claim_for(conn, exhibitor, seq, out);
        };
        let token = self.remote.next_token;
        self.remote.next_token += 1;
        let deadline = now + self.limits.ack_timeout;
        let wait = PairWait {
            conn,
            node,
            exhibitor,
            emitter,
            seq,
            deadline,
        };
        self.remote.pairing.insert(token, wait);
        self.remote.pairing_conns.insert(conn, token);
        out.pair_notice(
            node,
            PairNotice::Pair {
                token,
                exhibitor,
                emitter,
            },
        );
        self.note_deadline(deadline);
    }

    /// A pairing that will not be: ERRO to the OI and close (rule 1), the
    /// claimed id released, the other node told to forget it.
    fn pair_failed(&mut self, token: u64, now: Instant, out: &mut impl Outbox) {
        let Some(wait) = self.remote.pairing.remove(&token) else {
            return;
        };
        self.remote.pairing_conns.remove(&wait.conn);
        warn!(
            conn = wait.conn,
            requested = wait.exhibitor,
            "OI refused: no pair across nodes"
        );
        out.release_id(wait.emitter);
        let (exhibitor, emitter) = (wait.exhibitor, wait.emitter);
        out.pair_notice(wait.node, PairNotice::Unpair { exhibitor, emitter });
        if self.session(wait.conn).is_some() {
            out.resume_input(wait.conn);
            out.send(wait.conn, &Frame::bare(Kind::Erro, SERVER_ID, 0, wait.seq));
            self.close(wait.conn, super::CloseReason::Refused, now, out);
        }
    }

    /// A notice from the other half of a pair on node `from`.
    pub fn pair_notice(
        &mut self,
        from: NodeRef,
        notice: PairNotice,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        match notice {
            PairNotice::Pair {
                token,
                exhibitor,
                emitter,
            } => {
                // One loop decides, so of two racing PAIRs (or a PAIR and
                // a local OI) exactly one wins.
                let free = self.ids.get(exhibitor).filter(|&x| {
                    self.session(x).is_some_and(|s| {
                        !s.leaving && matches!(s.role, Role::Exhibitor { emitter: None })
                    }) && !self.remote.is_paired_in(x)
                });
                if let Some(x) = free {
                    self.remote.orphans.settled(x);
                    self.remote.paired_in.insert(emitter, (from, x));
                    self.remote
                        .paired_in_by_exhibitor
                        .insert(x, (from, emitter));
                    info!(
                        exhibitor,
                        emitter,
                        node = from,
                        "exhibitor paired across nodes"
                    );
                }
                let ok = free.is_some();
                out.pair_notice(from, PairNotice::Paired { token, ok });
            }
            PairNotice::Paired { token, ok } => {
                let Some(wait) = self.remote.pairing.get(&token).copied() else {
                    return; // given up already (and UNPAIR sent)
                };
                if wait.node != from {
                    return;
                }
                let taken = self.ids.get(wait.emitter).is_some();
                if !ok || taken || self.session(wait.conn).is_none() {
                    return self.pair_failed(token, now, out);
                }
                self.remote.pairing.remove(&token);
                self.remote.pairing_conns.remove(&wait.conn);
                let (conn, id) = (wait.conn, wait.emitter);
                self.free_emitter_ids.remove(&id);
                self.pair_emitter(conn, id, None, out);
                self.ids.insert(id, conn);
                self.remote.paired_out.insert(conn, (from, wait.exhibitor));
                info!(
                    conn,
                    id,
                    exhibitor = wait.exhibitor,
                    node = from,
                    "emitter identified, paired across nodes"
                );
                out.resume_input(conn);
                out.send(conn, &Frame::bare(Kind::Ok, SERVER_ID, id, wait.seq));
                self.show(conn, out);
            }
            PairNotice::Dismiss { exhibitor, emitter } => {
                if let Some(x) = self.unpair_in(from, exhibitor, emitter)
                    && self.session(x).is_some_and(|s| !s.leaving)
                {
                    self.dismiss(x, now, out);
                }
            }
            PairNotice::Unpair { exhibitor, emitter } => {
                self.unpair_in(from, exhibitor, emitter);
            }
            PairNotice::Unpaired { exhibitor, emitter } => {
                if let Some(conn) = self.ids.get(emitter)
                    && self.remote.paired_out.get(&conn) == Some(&(from, exhibitor))
                {
                    self.remote.paired_out.remove(&conn);
                }
            }
        }
    }

    /// Forgets the pair of this node's `exhibitor` with `from`'s `emitter`,
    /// if it stands; returns the exhibitor's connection.
    fn unpair_in(
        &mut self,
        from: NodeRef,
        exhibitor: ClientId,
        emitter: ClientId,
    ) -> Option<ConnId> {
        let &(node, x) = self.remote.paired_in.get(&emitter)?;
        if node != from || self.client_id(x) != Some(exhibitor) {
            return None;
        }
        self.remote.paired_in.remove(&emitter);
        self.remote.paired_in_by_exhibitor.remove(&x);
        self.remote.orphans.settled(x);
        Some(x)
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
        if is_room_id(dest) {
            let mut nodes = std::mem::take(&mut self.remote.nodes);
            nodes.clear();
            self.room_nodes(dest, &mut nodes);
            self.remote.nodes = nodes;
            return self.remote.nodes.len();
        }
        let local = self.ids.get(dest);
        let remote = &mut self.remote;
        remote.nodes.clear();
        if dest == 0 {
            remote.nodes.extend(remote.exhibitors.keys().copied());
        } else if remote.paired_in.contains_key(&dest) {
            // Another node's emitter whose exhibitor is here: local.
        } else if let Some(node) = remote.owner_of(dest) {
            remote.nodes.push(node);
        } else if let Some(&(node, _)) = local.and_then(|conn| remote.paired_out.get(&conn)) {
            // An emitter here whose exhibitor is on another node.
            remote.nodes.push(node);
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
        let deadline = now + (self.limits.ack_timeout + RELAY_GRACE);
        for at in 0..self.remote.nodes.len() {
            let node = self.remote.nodes[at];
            self.relay_awaiting(node, request, frame, deadline, out);
        }
        self.note_deadline(deadline);
    }

    /// Relays `frame` to `node` as a target of `request` whose ACK is
    /// awaited until `deadline` (the caller notes the deadline).
    fn relay_awaiting(
        &mut self,
        node: NodeRef,
        request: RequestRef,
        frame: &FrameView<'_>,
        deadline: Instant,
        out: &mut impl Outbox,
    ) {
        let relay = self.remote.await_ack(Sent {
            node,
            origin: SentFor::Request(request),
            deadline,
        });
        out.relay(node, relay, frame);
    }

    /// Relays `frame` to `node` alone, as one target of `request`.
    pub(super) fn relay_to(
        &mut self,
        node: NodeRef,
        request: RequestRef,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        self.remote.nodes.clear();
        self.remote.nodes.push(node);
        self.relay_out(request, frame, now, out);
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
        if is_room_id(frame.dest) && frame.kind == Kind::Msg && self.rooms.is_queue(frame.dest) {
            // A queue message sent on another node: this node is its home.
            return self.queue_relayed_home(from, relay, frame, now, out);
        }
        let mut targets = std::mem::take(&mut self.targets);
        self.find_targets(frame.dest, &mut targets);
        if is_room_id(frame.dest) {
            // Kept here too, for members back on this node (CLUSTER.md).
            self.room_relay_heard(frame, &targets);
        }
        if targets.is_empty() {
            self.targets = targets;
            let chained = self
                .ids
                .get(frame.dest)
                .filter(|_| is_emitter_id(frame.dest));
            if let Some(&(node, _)) = chained.and_then(|c| self.remote.paired_out.get(&c)) {
                return self.relay_on(from, relay, node, frame, now, out);
            }
            debug!(from, dest = frame.dest, "relay with no target here");
            out.relay_ack(from, relay, false);
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
                refusable: false,
            },
        );
        // WHO before a remote sender's first message, and before a CLIST
        // for each id it carries, as for a local one (`targets` is not
        // empty here).
        self.deliver(&targets, frame, now, Purpose::Relayed { key }, out);
        targets.clear();
        self.targets = targets;
    }

    /// A relay to an emitter here whose exhibitor is on node `node`: passed
    /// on, and answered when that node answers.
    fn relay_on(
        &mut self,
        from: NodeRef,
        relay: u64,
        node: NodeRef,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let key = self.receiving(from, relay);
        let deadline = now + (self.limits.ack_timeout + RELAY_GRACE);
        let onward = self.remote.await_ack(Sent {
            node,
            origin: SentFor::Chain(key),
            deadline,
        });
        out.relay(node, onward, frame);
        self.note_deadline(deadline);
    }

    /// A relay this node sent was answered (or failed).
    fn sent_settled(&mut self, origin: SentFor, ok: bool, now: Instant, out: &mut impl Outbox) {
        match origin {
            SentFor::Request(request) => self.settle(request, ok, now, out),
            SentFor::Chain(key) => self.relay_settled(key, ok, out),
            SentFor::Waited(wait) => self.waited_away_settled(wait, ok, now, out),
            SentFor::Queued { room, slot, ticket } => {
                self.queue_away_settled(room, slot, ticket, ok, now, out)
            }
        }
    }

    /// Relays the queue message `frame` to the queue's home `node`, as the
    /// one target of `request`: awaited for as long as the home may keep
    /// it waiting (`wait`) and then a member takes to answer.
    pub(super) fn relay_home(
        &mut self,
        node: NodeRef,
        request: RequestRef,
        frame: &FrameView<'_>,
        wait: Duration,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let deadline = now + (wait + self.limits.ack_timeout + RELAY_GRACE);
        self.relay_awaiting(node, request, frame, deadline, out);
        self.note_deadline(deadline);
    }

    /// Sends node `node` the waiting message `wait` (a WAITED record);
    /// its ACK, or its failure, settles it.
    pub(super) fn relay_waited(
        &mut self,
        node: NodeRef,
        wait: u64,
        letter: &RemoteLetter<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let deadline = now + (self.limits.ack_timeout + RELAY_GRACE);
        // Awaited like any relay: one that is never answered fails at its
        // deadline (and the message waits again).
        let relay = self.remote.await_ack(Sent {
            node,
            origin: SentFor::Waited(wait),
            deadline,
        });
        out.waited(node, relay, letter);
        self.note_deadline(deadline);
    }

    /// Notes relay `relay` from node `from` as being delivered to one
    /// target here; returns its key (for [`Purpose::Relayed`]).
    pub(super) fn receiving(&mut self, from: NodeRef, relay: u64) -> u64 {
        self.receiving_one(from, relay, false)
    }

    /// As [`Router::receiving`], for a relay whose target answering ERRO
    /// is told back as such ([`Router::relay_answered`]).
    pub(super) fn receiving_refusable(&mut self, from: NodeRef, relay: u64) -> u64 {
        self.receiving_one(from, relay, true)
    }

    fn receiving_one(&mut self, from: NodeRef, relay: u64, refusable: bool) -> u64 {
        let key = self.remote.next_received;
        self.remote.next_received += 1;
        self.remote.received.insert(
            key,
            Received {
                from,
                relay,
                outstanding: 1,
                any_ok: false,
                refusable,
            },
        );
        key
    }

    /// A target here answered relay `key` (`ok`: OK). An ERRO to a relay
    /// that tells it ([`Router::receiving_refusable`]) goes back as
    /// REFUSED; anything else as [`Router::relay_settled`].
    pub(super) fn relay_answered(&mut self, key: u64, ok: bool, out: &mut impl Outbox) {
        if ok || !self.relay_refused_here(key, out) {
            self.relay_settled(key, ok, out);
        }
    }

    /// True when relay `key` tells an ERRO, now told (REFUSED). Out of
    /// line: only a queue message's member on another node than its home,
    /// or a waiting message's addressee, comes here.
    #[cold]
    #[inline(never)]
    fn relay_refused_here(&mut self, key: u64, out: &mut impl Outbox) -> bool {
        if !self.remote.received.get(&key).is_some_and(|r| r.refusable) {
            return false;
        }
        let received = self.remote.received.remove(&key).expect("found above");
        out.relay_refused(received.from, received.relay);
        true
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

    /// How many relays to other nodes await their ACK.
    pub fn relays_awaited(&self) -> usize {
        self.remote.sent.len()
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
        // One lookup: this runs once per delivery on the emitters' node.
        let Entry::Occupied(entry) = self.remote.sent.entry(relay) else {
            debug!(from, relay, "ACK for no relay pending ignored");
            return;
        };
        if entry.get().node != from {
            debug!(
                from,
                relay, "ACK for a relay pending on another node ignored"
            );
            return;
        }
        let sent = entry.remove();
        if self.remote.sent.is_empty() {
            self.remote.sent_due = None;
        }
        self.sent_settled(sent.origin, ok, now, out);
    }

    /// Node `from` answered relay `relay` REFUSED: its target answered
    /// ERRO. A queue message so answered is settled ERRO, as on one node
    /// (not passed on to the next member); a waiting message is settled,
    /// as one node's ERRO settles it (it does not wait again); any other
    /// relay fails as with an ERRO ACK.
    pub fn relay_refused(
        &mut self,
        from: NodeRef,
        relay: u64,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if self
            .remote
            .sent
            .get(&relay)
            .is_none_or(|sent| sent.node != from)
        {
            debug!(from, relay, "REFUSED for no relay pending there ignored");
            return;
        }
        let sent = self.remote.take_sent(relay).expect("found above");
        match sent.origin {
            SentFor::Queued { room, slot, ticket } => {
                self.queue_away_answered(room, slot, ticket, false, now, out)
            }
            SentFor::Waited(wait) => self.waited_away_settled(wait, true, now, out),
            origin => self.sent_settled(origin, false, now, out),
        }
    }

    /// Relays whose node did not answer in time fail, pairings not
    /// answered in time are given up, pair notices due again are sent and
    /// exhibitors whose emitter's release no notice followed are dismissed.
    pub(super) fn expire_relays(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.remote.sent_due.is_some_and(|due| due <= now) {
            let mut overdue: Vec<u64> = Vec::new();
            let mut due: Option<Instant> = None;
            for (&relay, sent) in &self.remote.sent {
                if sent.deadline <= now {
                    overdue.push(relay);
                } else {
                    due = Some(due.map_or(sent.deadline, |d| d.min(sent.deadline)));
                }
            }
            self.remote.sent_due = due;
            // In the order they were sent, as their requests were made.
            overdue.sort_unstable();
            for relay in overdue {
                let Some(sent) = self.remote.take_sent(relay) else {
                    continue;
                };
                warn!(
                    node = sent.node,
                    "no ACK from the node in time: the delivery fails"
                );
                self.sent_settled(sent.origin, false, now, out);
            }
        }
        let overdue: Vec<u64> = self
            .remote
            .pairing
            .iter()
            .filter(|(_, wait)| wait.deadline <= now)
            .map(|(&token, _)| token)
            .collect();
        for token in overdue {
            self.pair_failed(token, now, out);
        }
        self.resend_pair_notices(now, out);
        self.dismiss_orphans(now, out);
    }
}
