//! Work queues on a node of several (CLUSTER.md, "Queues across nodes"):
//! one turn per queue system-wide. A queue room's **home** is the lowest
//! incarnation with a member session online, as every node's replica
//! says; a queue MSG sent elsewhere is relayed there (one target of its
//! request), and the home gives each message to one member session on any
//! node in turn, the sessions on other nodes by a QUEUED relay that names
//! their exhibitor, answered by the member's acknowledgement. This module
//! owns the home's choice, the places of member sessions on other nodes,
//! the messages relayed in to be dispatched here, and the member's node's
//! side of a QUEUED relay. Plain data in, the [`Outbox`] out; a single
//! server builds none of it.

use super::{Room, member_key};
use crate::proto::{ClientId, FrameView, Kind};
use crate::router::remote::{RELAY_GRACE, Remote};
use crate::router::{ConnId, NodeRef, Outbox, Purpose, Role, RoomEvent, Router, Sender};
use std::collections::HashMap;
use std::time::Instant;
use tracing::debug;

/// The queue rooms' cluster state of one router.
#[derive(Debug, Default)]
pub(in crate::router) struct Homes {
    /// This node's incarnation (0 until joined: lower than any other,
    /// so this node is then home for every queue it has a member of).
    me: NodeRef,
    /// The id table's epoch and the membership generation the member
    /// sessions on other nodes were last listed at.
    synced: Option<(u64, u64)>,
    /// Queue messages other nodes relayed here, by their wait number: the
    /// key of the relay being answered (in the remote part's `received`).
    relayed: HashMap<u64, u64>,
}

impl Router {
    /// This node serves as incarnation `node`.
    pub fn cluster_node(&mut self, node: NodeRef) {
        self.rooms.across.homes.me = node;
    }

    /// The home of queue room `id`: the lowest incarnation with a member
    /// session online (this node's own sessions included), None when no
    /// member is online anywhere.
    fn queue_home(&self, id: ClientId) -> Option<NodeRef> {
        let room = self.rooms.by_id.get(&id)?;
        let me = self.rooms.across.homes.me;
        let here = (!room.online.is_empty()).then_some(me);
        room.away.iter().map(|&(node, _)| node).chain(here).min()
    }

    /// Lists again, when the id table or a membership changed since, each
    /// queue room's member sessions on other nodes: a session gone passes
    /// on what it held (at-least-once), one new takes turns from now on,
    /// each may hold its name's prefetch (as the `j` changes said), and
    /// what waits is dispatched.
    pub fn queues_across(&mut self, now: Instant, out: &mut impl Outbox) {
        let mark = (self.ids.epoch, self.rooms.across.generation);
        if !self.remote.enabled || self.rooms.across.homes.synced == Some(mark) {
            return;
        }
        self.rooms.across.homes.synced = Some(mark);
        let queues: Vec<ClientId> = self
            .rooms
            .by_id
            .iter()
            .filter(|(_, room)| room.queue)
            .map(|(id, _)| id)
            .collect();
        if queues.is_empty() {
            return;
        }
        let named: Vec<(ClientId, NodeRef, String)> = self
            .remote
            .named_exhibitors()
            .map(|(id, node, name)| (id, node, name.to_ascii_lowercase()))
            .collect();
        let queue_wait = self.rooms.limits.queue_wait;
        for id in queues {
            let room = self.rooms.by_id.get_mut(&id).expect("listed above");
            let mut wanted: Vec<((NodeRef, ClientId), u8)> = named
                .iter()
                .filter(|(_, _, name)| room.members.contains(name.as_str()))
                .map(|&(exhibitor, node, ref name)| {
                    let prefetch = room.prefetch.get(name.as_str()).copied().unwrap_or(1);
                    ((node, exhibitor), prefetch)
                })
                .collect();
            wanted.sort_unstable();
            let base = room.online.len();
            let mut passed_on = None;
            for at in (0..room.away.len()).rev() {
                let session = room.away[at];
                if wanted.binary_search_by_key(&session, |&(s, _)| s).is_err() {
                    room.away.remove(at);
                    passed_on = passed_on.or(room.work.remove_place(base + at));
                }
            }
            for (session, prefetch) in wanted {
                match room.away.iter().position(|&s| s == session) {
                    Some(at) if room.work.capacity(base + at) != prefetch => {
                        room.work.set_capacity(base + at, prefetch);
                    }
                    Some(_) => {}
                    None => {
                        room.away.push(session);
                        room.work.add_place(prefetch);
                    }
                }
            }
            if let Some(since) = passed_on {
                debug!(room = id, "queue messages passed on from another node");
                self.note_deadline(since + queue_wait);
            }
            self.dispatch_across(id, now, out);
        }
    }

    /// A MSG to the queue room `frame.dest` on a node that is not its home:
    /// relayed home, its reply waiting for the home's answer. False when
    /// this node dispatches it (it is the home, or no member is online
    /// anywhere and it waits here).
    pub(in crate::router) fn queue_sent_home(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) -> bool {
        self.queues_across(now, out);
        let me = self.rooms.across.homes.me;
        let Some(home) = self.queue_home(frame.dest).filter(|&home| home != me) else {
            return false;
        };
        let request = self.push_reply(conn, frame.seq, 1, false);
        let wait = self.rooms.limits.queue_wait;
        self.relay_home(home, request, frame, wait, now, out);
        self.flush_replies(conn, now, out);
        true
    }

    /// A queue MSG relayed here by node `from` (relay `relay`): dispatched
    /// here as one sent here (this node is its home, or was when it was
    /// sent), its ACK going back once a member session settles it or it is
    /// given up; ERRO at once when the room is full.
    pub(in crate::router) fn queue_relayed_home(
        &mut self,
        from: NodeRef,
        relay: u64,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        self.queues_across(now, out);
        let room = frame.dest;
        if self.rooms.queue_is_full(room) {
            debug!(from, room, "queue full: relayed message refused");
            out.relay_ack(from, relay, false);
            return;
        }
        let key = self.receiving(from, relay);
        let wait = self.next_wait;
        self.next_wait += 1;
        let text = frame.text().unwrap_or_default();
        let shown = self.remote.shown(frame.origin);
        out.room_event(&RoomEvent::Waiting {
            wait,
            origin: frame.origin,
            seq: frame.seq,
            room,
            to: "",
            sender: Sender {
                name: shown.and_then(|(name, _)| name),
                roles: shown.map_or(0, |(_, roles)| roles),
            },
            text,
            stored_ms: None,
        });
        self.rooms.across.homes.relayed.insert(wait, key);
        let entry = self.rooms.by_id.get_mut(&room).expect("checked above");
        entry
            .work
            .push_waiting(frame.origin, frame.seq, text, None, now, wait);
        self.note_deadline(now + self.rooms.limits.queue_wait);
        self.dispatch_across(room, now, out);
    }

    /// A queue message with no emitter here settled (`ok`: a member showed
    /// it) or was given up: when another node relayed it here, that node
    /// is answered. Out of line: a single server's acknowledgements never
    /// come here (their messages have an emitter).
    #[cold]
    #[inline(never)]
    pub(in crate::router) fn queue_answered_home(
        &mut self,
        wait: u64,
        ok: bool,
        out: &mut impl Outbox,
    ) {
        if let Some(key) = self.rooms.across.homes.relayed.remove(&wait) {
            self.relay_settled(key, ok, out);
        }
    }

    /// This node is fenced: the queue messages relayed to its old
    /// incarnation by other nodes, and those its own emitters sent (they
    /// are dismissed), are forgotten, waiting or held, as a home killed
    /// loses them. The other nodes answer theirs ERRO when that
    /// incarnation is reaped (`down`), and its emitters are answered ERRO
    /// here: a message kept would be shown after its ERRO, and again if a
    /// member on another node showed it already, its ack now unheard
    /// (found by the simulation). A message recovered from history (no
    /// emitter) stays: it is durable, shown again at worst.
    pub(in crate::router) fn forget_on_fence(&mut self, now: Instant, out: &mut impl Outbox) {
        let relayed = std::mem::take(&mut self.rooms.across.homes.relayed);
        let mut forgotten = Vec::new();
        for room in self.rooms.by_id.values_mut().filter(|room| room.queue) {
            let gone = |wait, emitted_here| emitted_here || relayed.contains_key(&wait);
            room.work.forget(gone, &mut forgotten);
        }
        if forgotten.is_empty() {
            return;
        }
        debug!(
            messages = forgotten.len(),
            "fenced: queue messages of the old incarnation forgotten"
        );
        forgotten.sort_unstable_by_key(|&(wait, _)| wait);
        for (wait, request) in forgotten {
            out.room_event(&RoomEvent::Settled { wait });
            if let Some(request) = request {
                self.settle(request, false, now, out);
            }
        }
    }

    /// [`Router::dispatch_queue`] for this module's callers, out of line:
    /// each inlined copy of it weighs on the one-node paths' inlining.
    #[inline(never)]
    fn dispatch_across(&mut self, id: ClientId, now: Instant, out: &mut impl Outbox) {
        self.dispatch_queue(id, now, out);
    }

    /// Queue messages went to member sessions on other nodes: the loop
    /// wakes by their relays' deadline.
    pub(in crate::router) fn note_away_deadline(&mut self, now: Instant) {
        self.note_deadline(now + (self.limits.ack_timeout + RELAY_GRACE));
    }

    /// The node of the member session a queue message was given to
    /// answered (`ok`: the member showed it) or failed it (it left, its
    /// node died or said nothing in time; a member's ERRO comes as REFUSED,
    /// [`Router::queue_away_answered`]): settled, or passed on to the next
    /// member session (at-least-once).
    pub(in crate::router) fn queue_away_settled(
        &mut self,
        room: ClientId,
        slot: u32,
        ticket: u64,
        ok: bool,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if ok {
            return self.queue_away_answered(room, slot, ticket, true, now, out);
        }
        // Only this message is passed on: on one node a failed delivery
        // means its session ended, but a relay unanswered (lost to a
        // partition, late) leaves the session there, showing what it was
        // given since; passing that on too showed it twice (found by the
        // simulation).
        let queue_wait = self.rooms.limits.queue_wait;
        if let Some(since) = self
            .rooms
            .by_id
            .get_mut(&room)
            .and_then(|entry| entry.work.drop_delivery(slot, ticket))
        {
            debug!(room, "a queue message passed on from another node");
            self.note_deadline(since + queue_wait);
        }
        // A node gone may still be listed: list again first.
        self.queues_across(now, out);
        self.dispatch_across(room, now, out);
    }

    /// The member session on another node a queue message was given to
    /// answered it (`ok`: OK; else ERRO, told by a REFUSED ACK): settled
    /// with that answer to its emitter, as [`Router::queue_acked`] does on
    /// one node (not called: a second caller would keep it from being
    /// inlined into the one-node path).
    pub(in crate::router) fn queue_away_answered(
        &mut self,
        room: ClientId,
        slot: u32,
        ticket: u64,
        ok: bool,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let Some(entry) = self.rooms.by_id.get_mut(&room) else {
            return;
        };
        let Some((wait, request)) = entry.work.settle(slot, ticket) else {
            debug!(room, "a queue message passed on already was answered");
            return;
        };
        out.room_event(&RoomEvent::Settled { wait });
        match request {
            Some(request) => self.settle(request, ok, now, out),
            None => self.queue_answered_home(wait, ok, out),
        }
        self.dispatch_across(room, now, out);
    }

    /// A queue message from its home `from` (relay `relay`) for the member
    /// session `exhibitor` here: delivered as any (WHO first when needed),
    /// answered by one ACK when the member answers (REFUSED when it
    /// answers ERRO, which settles the message as on one node); ERRO (a
    /// failure: passed on) at once when no member session of the room
    /// holds that id here.
    pub fn queued_relayed(
        &mut self,
        from: NodeRef,
        relay: u64,
        exhibitor: ClientId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let room = self.rooms.by_id.get(&frame.dest).filter(|r| r.queue);
        let conn = self.ids.get(exhibitor).filter(|&conn| {
            self.session(conn).is_some_and(|s| {
                !s.leaving
                    && matches!(s.role, Role::Exhibitor { .. })
                    && member_key(s)
                        .is_some_and(|key| room.is_some_and(|r| r.members.contains(key)))
            })
        });
        let Some(conn) = conn.filter(|_| frame.kind == Kind::Msg) else {
            debug!(from, exhibitor, "queue message for no member session here");
            out.relay_ack(from, relay, false);
            return;
        };
        let key = self.receiving_refusable(from, relay);
        self.deliver(
            std::slice::from_ref(&conn),
            frame,
            now,
            Purpose::Relayed { key },
            out,
        );
        debug!(
            from,
            exhibitor,
            room = frame.dest,
            "queue message from its home"
        );
    }
}

impl Room {
    /// Gives the oldest waiting message of this queue room (`id`) to the
    /// member session at place `at`, on another node, under `ticket`: a
    /// QUEUED relay, awaited until `deadline` (the caller notes it).
    #[inline(never)]
    pub(super) fn give_away(
        &mut self,
        id: ClientId,
        at: usize,
        ticket: u64,
        remote: &mut Remote,
        deadline: Instant,
        out: &mut impl Outbox,
    ) {
        let (node, exhibitor) = self.away[at - self.online.len()];
        let slot = self.work.give(at, ticket);
        let relay = remote.await_queued(node, (id, slot, ticket), deadline);
        out.queued(node, relay, exhibitor, &self.work.view(slot, id));
    }
}
