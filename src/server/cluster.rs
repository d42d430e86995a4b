//! Several nodes in the event loop (CLUSTER.md): between the router and
//! the engine bridge. What the router asked this turn (claims, releases,
//! relays and their ACKs, gathered in [`Outgoing`] by the outbox) goes to
//! the engine once per turn, one batch per destination node; what the
//! engine told (its incarnation, the id table's changes, batches from other
//! nodes, a fence) is handed to the router as plain data. The engine's
//! threads wake the loop's `mio::Waker`; nothing here blocks.

use super::Server;
use crate::cluster::batch::{self, BatchWriter, PairRecord, Record};
use crate::cluster::redis::{Polled, RedisConfig, RedisEngine};
use crate::cluster::{Engine, Event, NodeId, Request, RoomJoin, RoomOutcome};
use crate::proto::ext::RoomCode;
use crate::proto::{ClientId, FrameView};
use crate::router::{ConnId, NameAnswer, PairNotice, RemoteLetter, RoomClaim, RoomFacts};
use mio::Waker;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// `server --cluster URL [--node NAME]`.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis server shared by the nodes (`redis://HOST:PORT`).
    pub url: String,
    /// This node's name, shown in its lease and logs.
    pub node: String,
    /// How long the node's lease lives unless renewed (`--cluster-lease`).
    pub lease: Duration,
    /// Requests the loop may queue for the engine (`--cluster-queue`).
    pub queue: usize,
}

impl ClusterConfig {
    /// The defaults, for this Redis and node name.
    pub fn new(url: String, node: String) -> ClusterConfig {
        ClusterConfig {
            url,
            node,
            lease: RedisConfig::LEASE,
            queue: RedisConfig::QUEUE,
        }
    }
}

/// What the router asked of other nodes this turn (the outbox writes it).
#[derive(Default)]
pub(super) struct Outgoing {
    /// This node's incarnation, which every batch carries (0: not joined).
    from: NodeId,
    claims: Vec<(ConnId, bool)>,
    releases: Vec<ClientId>,
    /// HELLO names to claim (claim number, lower-case name) and to release.
    name_claims: Vec<(u64, String)>,
    name_releases: Vec<String>,
    /// What ids this node now holds show: id, roles, name (empty: none).
    shows: Vec<(ClientId, u8, String)>,
    /// JOINs and LEAVEs for the engine to decide.
    room_claims: Vec<RoomClaim>,
    /// The turn's batch for each node written to, in the order first
    /// written: a few nodes, so a search from the last (at 1:1 the only
    /// one) is cheaper than a map's lookup for every record.
    batches: Vec<(NodeId, BatchWriter)>,
    /// Batches that grew past [`batch::FLUSH_AT`] within the turn.
    full: Vec<(NodeId, BatchWriter)>,
    /// The size of the last batch to each node and how many relays it
    /// carried (forgotten at a fence).
    sizes: HashMap<NodeId, (usize, usize)>,
}

impl Outgoing {
    pub(super) fn claim(&mut self, conn: ConnId, exhibitor: bool) {
        self.claims.push((conn, exhibitor));
    }

    pub(super) fn release(&mut self, id: ClientId) {
        self.releases.push(id);
    }

    pub(super) fn claim_name(&mut self, claim: u64, name: &str) {
        self.name_claims.push((claim, name.to_string()));
    }

    pub(super) fn release_name(&mut self, name: &str) {
        self.name_releases.push(name.to_string());
    }

    pub(super) fn show(&mut self, id: ClientId, roles: u8, name: Option<&str>) {
        self.shows
            .push((id, roles, name.unwrap_or_default().to_string()));
    }

    pub(super) fn room_claim(&mut self, claim: &RoomClaim) {
        self.room_claims.push(claim.clone());
    }

    /// Where in `batches` the batch being written for `node` this turn is,
    /// started at the size of the last one (see [`BatchWriter::with_capacity`]).
    fn batch(&mut self, node: NodeId) -> usize {
        if let Some(at) = self.batches.iter().rposition(|(n, _)| *n == node) {
            return at;
        }
        let (size, relays) = self.sizes.get(&node).copied().unwrap_or((0, 0));
        let batch = BatchWriter::with_capacity(self.from, size, relays);
        self.batches.push((node, batch));
        self.batches.len() - 1
    }

    pub(super) fn relay(&mut self, node: NodeId, relay: u64, frame: &FrameView<'_>) {
        let at = self.batch(node);
        self.batches[at].1.push_relay(relay, frame);
        self.bound(at);
    }

    pub(super) fn pair_notice(&mut self, node: NodeId, notice: PairNotice) {
        let at = self.batch(node);
        self.batches[at].1.push_pair(to_record(notice));
        self.bound(at);
    }

    pub(super) fn waited(&mut self, node: NodeId, relay: u64, letter: &RemoteLetter<'_>) {
        let at = self.batch(node);
        let (stored_ms, roles, name) = (letter.stored_ms, letter.roles, letter.name);
        self.batches[at]
            .1
            .push_waited(relay, stored_ms, roles, name, letter.frame);
        self.bound(at);
    }

    pub(super) fn room_copy(&mut self, node: NodeId, frame: &FrameView<'_>) {
        let at = self.batch(node);
        self.batches[at].1.push_said(frame);
        self.bound(at);
    }

    pub(super) fn queued(
        &mut self,
        node: NodeId,
        relay: u64,
        exhibitor: ClientId,
        frame: &FrameView<'_>,
    ) {
        let at = self.batch(node);
        self.batches[at].1.push_queued(relay, exhibitor, frame);
        self.bound(at);
    }

    pub(super) fn relay_ack(&mut self, node: NodeId, relay: u64, ok: bool) {
        let at = self.batch(node);
        self.batches[at].1.push_ack(relay, ok);
        self.bound(at);
    }

    pub(super) fn relay_refused(&mut self, node: NodeId, relay: u64) {
        let at = self.batch(node);
        self.batches[at].1.push_refused(relay);
        self.bound(at);
    }

    /// A batch past the size bound goes on its own; the next starts anew.
    fn bound(&mut self, at: usize) {
        if self.batches[at].1.len() >= batch::FLUSH_AT {
            let full = self.batches.remove(at);
            self.full.push(full);
        }
    }

    /// The batches written this turn, ready to publish; each node's size
    /// is kept for its next batch.
    fn take_batches(&mut self) -> Vec<(NodeId, BatchWriter)> {
        let mut batches = std::mem::take(&mut self.full);
        batches.append(&mut self.batches);
        for (node, batch) in &batches {
            self.sizes.insert(*node, (batch.len(), batch.relay_count()));
        }
        batches
    }

    fn is_empty(&self) -> bool {
        self.claims.is_empty()
            && self.releases.is_empty()
            && self.name_claims.is_empty()
            && self.name_releases.is_empty()
            && self.shows.is_empty()
            && self.room_claims.is_empty()
            && self.batches.is_empty()
            && self.full.is_empty()
    }
}

/// The loop's side of the bridge.
pub(super) struct Cluster {
    engine: Box<dyn Engine + Send>,
    /// This node's incarnation, once joined.
    node: Option<NodeId>,
    /// Incarnations reaped: anything still heard from them is stale.
    down: HashSet<NodeId>,
    next_claim: u64,
    /// Claims asked, by number: the connection they are for. A connection
    /// is also mapped to its claim, so that an answer for a connection
    /// since closed (its slot perhaps reused) is released, not given.
    claims: HashMap<u64, ConnId>,
    claim_of: HashMap<ConnId, u64>,
    events: Vec<Event>,
    /// Releases (of names and ids) the engine's queue could not take, in
    /// the order asked: offered again before any new one, every turn and
    /// at `retry_at` while any wait, so that a full queue delays a release
    /// but never drops it (CLUSTER.md, "Failure behaviour"). Each with
    /// whether it is a name this incarnation may hand over
    /// ([`Cluster::hand_over`]).
    unsent: VecDeque<(Request, bool)>,
    retry_at: Option<Instant>,
    /// The HELLO names (lower case) sessions accepted in this incarnation
    /// hold: a release of one of them that never left the loop leaves
    /// Redis recording this incarnation as the holder. Not a name of the
    /// incarnation before a fence (its reap frees those).
    names: HashSet<String>,
    /// How many records the last batch heard held: room is made for as
    /// many in the next one's list before it is parsed.
    last_records: usize,
    /// What crossed the bridge, told once at exit (CLUSTER.md, "Numbers").
    counts: Counts,
}

/// What a HELLO's name claim finds among the releases waiting in the loop
/// ([`Cluster::hand_over`]).
#[derive(Debug, PartialEq, Eq)]
enum Waiting {
    /// No release of the name waits: the engine is asked.
    None,
    /// A release of a name this incarnation holds waited: it never reached
    /// the engine, so Redis still records this incarnation as the holder
    /// and no other node can have the name. The release is dropped (run
    /// later, it would free the name under the new session) and the name
    /// passes to the new session without asking the engine.
    HandedOver,
    /// A release of a name this incarnation may not hold waits (one its
    /// previous incarnation held, or one won for a connection since gone):
    /// the claim must not overtake it, or the release would run after the
    /// claim and free the name under the new session. Refused as busy.
    NotOurs,
}

/// Releases that may wait for room in the engine's queue: as many as a
/// node can hold ids and names, twice over. Past it a release is given up
/// (the id or name held until this incarnation ends), with a warning.
const UNSENT_RELEASES_MAX: usize = 16_384;

/// How soon a release the engine's queue refused is offered again when
/// no turn comes sooner.
const RELEASE_RETRY: Duration = Duration::from_millis(100);

/// How the traffic between nodes was grouped, counted by the loop and
/// logged once when the node stops (at info level, target
/// `evchat::server::cluster`): how many records a publish carries and how
/// many events a turn takes are what the round trip at 1:1 is made of.
#[derive(Debug, Default)]
struct Counts {
    /// Turns that took at least one event from the engine, and the events.
    event_turns: u64,
    events: u64,
    /// Batches handed to the engine to publish, their relays and bytes.
    batches_out: u64,
    relays_out: u64,
    bytes_out: u64,
    /// Batches heard from other nodes, and their relays and ACKs.
    batches_in: u64,
    relays_in: u64,
    acks_in: u64,
    /// Room messages heard from other nodes to keep (SAID records).
    said_in: u64,
    /// Batches refused whole: malformed (each also logged).
    batches_dropped: u64,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let c = &self.counts;
        info!(
            event_turns = c.event_turns,
            events = c.events,
            batches_out = c.batches_out,
            relays_out = c.relays_out,
            bytes_out = c.bytes_out,
            batches_in = c.batches_in,
            relays_in = c.relays_in,
            acks_in = c.acks_in,
            said_in = c.said_in,
            batches_dropped = c.batches_dropped,
            "cluster: traffic between nodes"
        );
    }
}

impl Cluster {
    /// Starts the bridge; its sockets are polled where `polled` says (see
    /// [`Server::cluster_io`]).
    pub(super) fn start(
        config: &ClusterConfig,
        waker: Arc<Waker>,
        polled: Polled,
    ) -> redis::RedisResult<Cluster> {
        let engine = RedisEngine::start(
            RedisConfig {
                queue: config.queue,
                ..RedisConfig::new(config.url.clone(), config.node.clone(), config.lease)
            },
            move || {
                if let Err(e) = waker.wake() {
                    warn!(error = %e, "could not wake the event loop");
                }
            },
            polled,
        )?;
        Ok(Cluster::new(Box::new(engine)))
    }

    fn new(engine: Box<dyn Engine + Send>) -> Cluster {
        Cluster {
            engine,
            node: None,
            down: HashSet::new(),
            next_claim: 0,
            claims: HashMap::new(),
            claim_of: HashMap::new(),
            events: Vec::new(),
            unsent: VecDeque::new(),
            retry_at: None,
            names: HashSet::new(),
            last_records: 0,
            counts: Counts::default(),
        }
    }

    /// When the loop must wake to offer waiting releases again, if any wait.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Hands the engine a release, after any still waiting (the order the
    /// router asked them in), or keeps it to offer again; `ours`: a name
    /// this incarnation holds.
    fn release(&mut self, request: Request, ours: bool, now: Instant) {
        let request = if self.unsent.is_empty() {
            match self.engine.submit(request) {
                Ok(()) => return,
                Err(request) => request,
            }
        } else {
            request
        };
        if self.unsent.len() >= UNSENT_RELEASES_MAX {
            warn!(
                "cluster: too many releases wait for the engine's queue; one is given up until this incarnation ends"
            );
            return;
        }
        if self.unsent.is_empty() {
            warn!("cluster: engine queue full; releases wait for room");
            self.retry_at = Some(now + RELEASE_RETRY);
        }
        self.unsent.push_back((request, ours));
    }

    /// A HELLO here claims `name` (lower case, as the router keys names,
    /// so they compare without case): what a release of it waiting here
    /// means for the claim. A release already in the engine's queue needs
    /// nothing here: it runs before the claim on the engine's one
    /// connection.
    fn hand_over(&mut self, name: &str) -> Waiting {
        let Some(at) = self.unsent.iter().position(
            |(request, _)| matches!(request, Request::ReleaseName { name: held } if held == name),
        ) else {
            return Waiting::None;
        };
        if !self.unsent[at].1 {
            return Waiting::NotOurs;
        }
        self.unsent.remove(at);
        if self.unsent.is_empty() {
            self.retry_at = None;
        }
        info!(
            name,
            "cluster: a name whose release waited for the engine's queue passes to a new session here"
        );
        Waiting::HandedOver
    }

    /// Whether an id claim may go to the engine now: never ahead of a
    /// release still waiting here (offered first). A release waits only
    /// while the queue is full, but the engine drains its queue while the
    /// loop works, so a claim could find room its elder release did not.
    /// That is harmless within an incarnation (the waiting id is still
    /// held), not for a session dismissed at a fence that left since: its
    /// id, reaped and free, could be claimed by a new client, and the
    /// release, run later under this incarnation, would free it from
    /// under that client.
    fn claims_may_go(&mut self, now: Instant) -> bool {
        if !self.unsent.is_empty() {
            self.retry_releases(now);
        }
        self.unsent.is_empty()
    }

    /// Offers the waiting releases again, oldest first, until the queue
    /// is full again or none waits.
    fn retry_releases(&mut self, now: Instant) {
        let waited = self.unsent.len();
        while let Some((request, ours)) = self.unsent.pop_front() {
            if let Err(request) = self.engine.submit(request) {
                self.unsent.push_front((request, ours));
                self.retry_at = Some(now + RELEASE_RETRY);
                return;
            }
        }
        self.retry_at = None;
        info!(
            releases = waited,
            "cluster: releases that waited for the engine's queue went through"
        );
    }
}

/// Acks a batch may settle beyond twice the relays awaited when it comes:
/// room for acks of relays given up meanwhile (their look-ups find nothing).
const ACKS_SLACK: u64 = 1024;

/// Rounds of "apply, then submit" one turn may take: what the router
/// answers to events is submitted in the same turn.
const ROUNDS_PER_TURN: usize = 4;

impl Server {
    /// The poll reported one of the engine's sockets.
    pub(super) fn cluster_io(&mut self, token: mio::Token) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.engine.io_ready(token);
        }
    }

    /// Once a turn: the engine's events to the router, then what the router
    /// asked to the engine. Out of line: a single server never calls it.
    #[inline(never)]
    pub(super) fn cluster_turn(&mut self) {
        let Some(mut cluster) = self.cluster.take() else {
            return;
        };
        if !cluster.unsent.is_empty() {
            cluster.retry_releases(self.wire.now);
        }
        for _ in 0..ROUNDS_PER_TURN {
            cluster.engine.drain(&mut cluster.events);
            let events = std::mem::take(&mut cluster.events);
            let busy = !events.is_empty();
            if busy {
                cluster.counts.event_turns += 1;
                cluster.counts.events += events.len() as u64;
            }
            for event in events {
                self.cluster_event(&mut cluster, event);
            }
            let outgoing = self.wire.cluster.as_deref().is_some_and(|o| !o.is_empty());
            if outgoing {
                self.cluster_submit(&mut cluster);
            }
            if !busy && !outgoing {
                break;
            }
        }
        self.cluster = Some(cluster);
    }

    fn cluster_event(&mut self, cluster: &mut Cluster, event: Event) {
        let now = self.wire.now;
        match event {
            Event::Joined { node, held } => {
                info!(
                    node,
                    others = held.len(),
                    "cluster: serving as this incarnation"
                );
                cluster.node = Some(node);
                self.router.cluster_node(node);
                if let Some(outgoing) = self.wire.cluster.as_deref_mut() {
                    outgoing.from = node;
                }
                let held: Vec<_> = held
                    .into_iter()
                    .filter(|(_, n)| !cluster.down.contains(n))
                    .collect();
                self.router.cluster_joined(&held, now);
            }
            Event::Claimed { claim, id } => {
                let conn = cluster.claims.remove(&claim);
                let current = conn.filter(|c| cluster.claim_of.get(c) == Some(&claim));
                let kept = match current {
                    Some(conn) => {
                        cluster.claim_of.remove(&conn);
                        self.router.id_claimed(conn, id, now, &mut self.wire)
                    }
                    None => false,
                };
                if !kept && let Some(id) = id {
                    self.wire.cluster_release(id);
                }
            }
            Event::Held { id, node }
                if Some(node) != cluster.node && !cluster.down.contains(&node) =>
            {
                self.router.remote_held(id, node);
            }
            Event::Freed { id, node } if Some(node) != cluster.node => {
                self.router.remote_freed(id, node, now);
            }
            Event::Held { .. } | Event::Freed { .. } => {}
            Event::Shown {
                id,
                node,
                roles,
                name,
            } if Some(node) != cluster.node => {
                let name = (!name.is_empty()).then_some(name.as_str());
                self.router.remote_shown(id, node, roles, name);
                if let Some(name) = name {
                    // Messages waiting here for that name go to it there.
                    self.router
                        .remote_named(id, node, name, now, &mut self.wire);
                }
            }
            Event::Shown { .. } => {}
            Event::NameClaimed { claim, won } => self.name_claim_answered(cluster, claim, won),
            Event::Down { node } => {
                cluster.down.insert(node);
                if Some(node) == cluster.node {
                    // Reaped while alive: its ids may be handed out again.
                    warn!(node, "cluster: this incarnation was reaped; fencing");
                    self.cluster_fence(cluster);
                } else {
                    info!(node, "cluster: node down");
                    if let Some(outgoing) = self.wire.cluster.as_deref_mut() {
                        outgoing.sizes.remove(&node);
                    }
                    self.router.node_down(node, now, &mut self.wire);
                }
            }
            Event::Batch { bytes } => self.cluster_batch(cluster, &bytes),
            Event::Unreachable {
                node,
                relays,
                batch,
            } => {
                warn!(
                    node,
                    relays = relays.len(),
                    "cluster: batch not delivered; its relays fail"
                );
                self.cluster_undelivered(node, &relays, &batch);
            }
            Event::RoomAnswered { claim, outcome } => {
                let outcome = outcome.map(room_answer);
                self.router
                    .room_answered(claim, outcome, now, &mut self.wire);
            }
            Event::RoomJoined {
                id,
                queue,
                spelling,
                member,
                prefetch,
            } => {
                self.router.remote_room_joined(
                    id,
                    queue,
                    &spelling,
                    &member,
                    prefetch,
                    now,
                    &mut self.wire,
                );
            }
            Event::RoomLeft { id, member } => {
                self.router
                    .remote_room_left(id, &member, now, &mut self.wire);
            }
            Event::Rooms { rooms } => {
                // What each queue member's last JOIN asked, applied (as a
                // `j` line's prefetch is) once the replica holds the rooms.
                let mut prefetches = Vec::new();
                let rooms: Vec<(RoomFacts, Vec<String>)> = rooms
                    .into_iter()
                    .map(|room| {
                        if !room.prefetch.is_empty() {
                            prefetches.push((room.id, room.spelling.clone(), room.prefetch));
                        }
                        let facts = RoomFacts {
                            id: room.id,
                            queue: room.queue,
                            spelling: room.spelling,
                            members: room.members.len() as u32,
                        };
                        (facts, room.members)
                    })
                    .collect();
                self.router.rooms_read(&rooms, now, &mut self.wire);
                for (id, spelling, members) in prefetches {
                    for (member, prefetch) in members {
                        self.router.remote_room_joined(
                            id,
                            true,
                            &spelling,
                            &member,
                            Some(prefetch),
                            now,
                            &mut self.wire,
                        );
                    }
                }
            }
            Event::Fenced => self.cluster_fence(cluster),
        }
        // Whatever changed the id table or a membership may change who
        // receives a queue room's messages here (CLUSTER.md, "Queues
        // across nodes"); nothing to do when neither changed.
        self.router.queues_across(now, &mut self.wire);
        self.settle_dropped();
    }

    fn cluster_fence(&mut self, cluster: &mut Cluster) {
        if let Some(node) = cluster.node.take() {
            warn!(node, "cluster: fenced: dismissing every client");
        }
        // The old incarnation's reap frees what its waiting releases
        // would have; run under the next one, they could free a new
        // client's id.
        cluster.unsent.clear();
        cluster.retry_at = None;
        cluster.names.clear();
        // What the fence itself asks of other nodes goes nowhere: this
        // incarnation is over.
        self.router.fence(self.wire.now, &mut self.wire);
        if let Some(outgoing) = self.wire.cluster.as_deref_mut() {
            outgoing.from = 0;
            outgoing.batches.clear();
            outgoing.full.clear();
            outgoing.sizes.clear();
            outgoing.releases.clear();
            // The reap of the old incarnation frees its names and what its
            // ids showed.
            outgoing.name_releases.clear();
            outgoing.shows.clear();
        }
    }

    /// A batch from another node: checked whole, then each record routed.
    fn cluster_batch(&mut self, cluster: &mut Cluster, bytes: &[u8]) {
        let now = self.wire.now;
        let (from, records) = match batch::parse_expecting(bytes, cluster.last_records) {
            Ok(parsed) => parsed,
            Err(e) => {
                warn!(error = %e, bytes = bytes.len(), "cluster: malformed batch dropped");
                cluster.counts.batches_dropped += 1;
                return;
            }
        };
        if cluster.down.contains(&from) || Some(from) == cluster.node || cluster.node.is_none() {
            warn!(from, "cluster: batch from a stale incarnation dropped");
            return;
        }
        cluster.counts.batches_in += 1;
        cluster.last_records = records.len();
        let mut ack_budget = 2 * self.router.relays_awaited() as u64 + ACKS_SLACK;
        // Cut runs are told once per batch: a hostile batch holds tens of
        // thousands of them, and one line each would flood the log.
        let (mut runs_cut, mut acks_ignored) = (0u64, 0u64);
        for record in records {
            match record {
                Record::Relay { relay, frame } => {
                    cluster.counts.relays_in += 1;
                    self.router
                        .relayed(from, relay, &frame, now, &mut self.wire)
                }
                Record::Ack { relay, ok } => {
                    cluster.counts.acks_in += 1;
                    self.router
                        .relay_acked(from, relay, ok, now, &mut self.wire)
                }
                Record::Acks { first, count, ok } => {
                    // A few bytes may claim four billion acks: a batch is
                    // settled for no more than the relays awaited (twice,
                    // and some, for acks of relays already given up), so
                    // that no batch stalls the loop.
                    let take = u64::from(count).min(ack_budget);
                    ack_budget -= take;
                    if take < u64::from(count) {
                        runs_cut += 1;
                        acks_ignored += u64::from(count) - take;
                    }
                    cluster.counts.acks_in += take;
                    // The parser checked that the run ends within u64.
                    for relay in (0..take).map(|i| first + i) {
                        self.router
                            .relay_acked(from, relay, ok, now, &mut self.wire)
                    }
                }
                Record::Refused { relay } => {
                    cluster.counts.acks_in += 1;
                    self.router.relay_refused(from, relay, now, &mut self.wire)
                }
                Record::Pair(record) => {
                    let notice = to_notice(record);
                    self.router.pair_notice(from, notice, now, &mut self.wire)
                }
                Record::Waited {
                    relay,
                    stored_ms,
                    roles,
                    name,
                    frame,
                } => {
                    let letter = RemoteLetter {
                        stored_ms,
                        roles,
                        name,
                        frame: &frame,
                    };
                    self.router
                        .waited_relayed(from, relay, &letter, now, &mut self.wire)
                }
                Record::Said { frame } => {
                    cluster.counts.said_in += 1;
                    self.router
                        .room_copy_heard(from, &frame, now, &mut self.wire)
                }
                Record::Queued {
                    relay,
                    exhibitor,
                    frame,
                } => {
                    self.router
                        .queued_relayed(from, relay, exhibitor, &frame, now, &mut self.wire)
                }
            }
            self.settle_dropped();
        }
        if runs_cut > 0 {
            warn!(
                from,
                runs_cut,
                acks_ignored,
                "cluster: runs of acks past the relays awaited; the rest ignored"
            );
        }
    }

    fn cluster_submit(&mut self, cluster: &mut Cluster) {
        let Some(outgoing) = self.wire.cluster.as_deref_mut() else {
            return;
        };
        let claims = std::mem::take(&mut outgoing.claims);
        let releases = std::mem::take(&mut outgoing.releases);
        let name_claims = std::mem::take(&mut outgoing.name_claims);
        let name_releases = std::mem::take(&mut outgoing.name_releases);
        let shows = std::mem::take(&mut outgoing.shows);
        let room_claims = std::mem::take(&mut outgoing.room_claims);
        let batches = outgoing.take_batches();
        let now = self.wire.now;
        // Releases before claims, so that a name given up and claimed again
        // in one turn is free when the claim runs (one engine connection
        // runs them in order), or handed over if its release must wait.
        for name in name_releases {
            let ours = cluster.names.remove(&name);
            cluster.release(Request::ReleaseName { name }, ours, now);
        }
        for (claim, name) in name_claims {
            match cluster.hand_over(&name) {
                Waiting::None => {}
                Waiting::HandedOver => {
                    self.name_claim_answered(cluster, claim, Some(true));
                    continue;
                }
                Waiting::NotOurs => {
                    warn!("cluster: a release of the name waits for the engine; HELLO refused");
                    self.name_claim_answered(cluster, claim, None);
                    continue;
                }
            }
            if cluster
                .engine
                .submit(Request::ClaimName { claim, name })
                .is_err()
            {
                warn!("cluster: engine queue full; HELLO refused");
                self.name_claim_answered(cluster, claim, None);
            }
        }
        for (conn, exhibitor) in claims {
            let claim = cluster.next_claim;
            cluster.next_claim += 1;
            if cluster.claims_may_go(now)
                && cluster
                    .engine
                    .submit(Request::Claim { claim, exhibitor })
                    .is_ok()
            {
                cluster.claims.insert(claim, conn);
                cluster.claim_of.insert(conn, claim);
            } else {
                warn!(conn, "cluster: engine queue full; OI refused");
                self.router.id_claimed(conn, None, now, &mut self.wire);
            }
        }
        for id in releases {
            cluster.release(Request::Release { id }, false, now);
        }
        // Before the batches: another node knows what an id shows before
        // it relays the id's first request.
        for (id, roles, name) in shows {
            if cluster
                .engine
                .submit(Request::Show { id, roles, name })
                .is_err()
            {
                warn!(
                    id,
                    "cluster: engine queue full; other nodes tell no name for the id"
                );
            }
        }
        // Before the batches too: a member joined here is in the other
        // nodes' replicas before a message this turn relays to the room.
        for claim in room_claims {
            let (number, request) = room_request(claim);
            if cluster.engine.submit(request).is_err() {
                warn!("cluster: engine queue full; a JOIN or LEAVE refused");
                self.router.room_answered(number, None, now, &mut self.wire);
            }
        }
        for (to, writer) in batches {
            let (batch, relays) = writer.finish();
            cluster.counts.batches_out += 1;
            cluster.counts.relays_out += relays.len() as u64;
            cluster.counts.bytes_out += batch.len() as u64;
            if let Err(Request::Publish { relays, batch, .. }) = cluster
                .engine
                .submit(Request::Publish { to, batch, relays })
            {
                warn!(node = to, "cluster: engine queue full; relays fail");
                self.cluster_undelivered(to, &relays, &batch);
            }
        }
        self.settle_dropped();
    }

    /// The answer to name claim `claim` (`won`: None when the engine could
    /// not be asked) to the router, and its HELLOACK sent; a name the
    /// session now holds is noted as this incarnation's.
    fn name_claim_answered(&mut self, cluster: &mut Cluster, claim: u64, won: Option<bool>) {
        let Some(answer) = self.router.name_claimed(claim, won, &mut self.wire) else {
            return;
        };
        if let NameAnswer::Accepted { name, .. } = &answer {
            cluster.names.insert(name.to_ascii_lowercase());
        }
        self.name_answered(answer);
    }

    /// A batch for `node` the engine could not carry: its relays fail (ERRO,
    /// never a false OK) and its pair notices are handed back to the router
    /// to be sent again (`router/pair_retry.rs`).
    fn cluster_undelivered(&mut self, node: NodeId, relays: &[u64], batch: &[u8]) {
        let now = self.wire.now;
        self.router.relays_failed(node, relays, now, &mut self.wire);
        // Our own batch: it parses, unless empty of records or cut short.
        if let Ok((_, records)) = batch::parse(batch) {
            let notices: Vec<PairNotice> = records
                .into_iter()
                .filter_map(|record| match record {
                    Record::Pair(record) => Some(to_notice(record)),
                    _ => None,
                })
                .collect();
            if !notices.is_empty() {
                self.router.pair_notices_failed(node, &notices, now);
            }
        }
    }
}

/// The router's room claim as the engine's request, with its number
/// (public for the cluster simulation, as [`to_record`]).
pub fn room_request(claim: RoomClaim) -> (u64, Request) {
    match claim {
        RoomClaim::Join {
            claim,
            key,
            spelling,
            queue,
            member,
            may_create,
            max_rooms,
            room_members,
            rooms_per_name,
            prefetch,
        } => {
            let join = RoomJoin {
                key: key.into(),
                spelling: spelling.into(),
                queue,
                member: member.into(),
                may_create,
                max_rooms,
                room_members,
                rooms_per_name,
                prefetch,
            };
            (claim, Request::JoinRoom { claim, join })
        }
        RoomClaim::Leave { claim, key, member } => (
            claim,
            Request::LeaveRoom {
                claim,
                key: key.into(),
                member: member.into(),
            },
        ),
    }
}

/// What the engine made of a JOIN or LEAVE, as the router's answer: the
/// room, or the ROOMACK code of a refusal (PROTOCOL.md).
pub fn room_answer(outcome: RoomOutcome) -> Result<RoomFacts, RoomCode> {
    match outcome {
        RoomOutcome::Joined {
            id,
            queue,
            spelling,
            members,
        }
        | RoomOutcome::Left {
            id,
            queue,
            spelling,
            members,
        } => Ok(RoomFacts {
            id,
            queue,
            spelling,
            members,
        }),
        RoomOutcome::OtherKind => Err(RoomCode::OtherKind),
        RoomOutcome::RoomFull => Err(RoomCode::RoomFull),
        RoomOutcome::TooManyRooms => Err(RoomCode::TooManyRooms),
        RoomOutcome::NoRoomId => Err(RoomCode::ServerFull),
        RoomOutcome::NotAllowed => Err(RoomCode::NotAllowed),
        RoomOutcome::NotMember => Err(RoomCode::NotMember),
    }
}

/// The router's pair notice as the batch writes it (the router does not
/// know the batch format, nor the batch the router). Public for the
/// cluster simulation, which stands in for this glue.
pub fn to_record(notice: PairNotice) -> PairRecord {
    match notice {
        PairNotice::Pair {
            token,
            exhibitor,
            emitter,
        } => PairRecord::Pair {
            token,
            exhibitor,
            emitter,
        },
        PairNotice::Paired { token, ok } => PairRecord::Paired { token, ok },
        PairNotice::Dismiss { exhibitor, emitter } => PairRecord::Dismiss { exhibitor, emitter },
        PairNotice::Unpaired { exhibitor, emitter } => PairRecord::Unpaired { exhibitor, emitter },
        PairNotice::Unpair { exhibitor, emitter } => PairRecord::Unpair { exhibitor, emitter },
    }
}

/// A batch's pair record as the router's notice.
pub fn to_notice(record: PairRecord) -> PairNotice {
    match record {
        PairRecord::Pair {
            token,
            exhibitor,
            emitter,
        } => PairNotice::Pair {
            token,
            exhibitor,
            emitter,
        },
        PairRecord::Paired { token, ok } => PairNotice::Paired { token, ok },
        PairRecord::Dismiss { exhibitor, emitter } => PairNotice::Dismiss { exhibitor, emitter },
        PairRecord::Unpaired { exhibitor, emitter } => PairNotice::Unpaired { exhibitor, emitter },
        PairRecord::Unpair { exhibitor, emitter } => PairNotice::Unpair { exhibitor, emitter },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::memory::MemoryHub;

    fn release_name(name: &str) -> Request {
        Request::ReleaseName { name: name.into() }
    }

    /// An engine whose queue is full while `full` is set, recording what
    /// it takes.
    #[derive(Clone, Default)]
    struct Recording {
        full: Arc<std::sync::atomic::AtomicBool>,
        taken: Arc<std::sync::Mutex<Vec<Request>>>,
    }

    impl Engine for Recording {
        fn submit(&mut self, request: Request) -> Result<(), Request> {
            if self.full.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(request);
            }
            self.taken.lock().unwrap().push(request);
            Ok(())
        }

        fn drain(&mut self, _into: &mut Vec<Event>) {}
    }

    #[test]
    fn an_id_claim_never_goes_ahead_of_a_release_waiting_here() {
        let engine = Recording::default();
        let mut cluster = Cluster::new(Box::new(engine.clone()));
        let now = Instant::now();
        engine
            .full
            .store(true, std::sync::atomic::Ordering::Relaxed);
        cluster.release(Request::Release { id: 4096 }, false, now);
        assert!(!cluster.claims_may_go(now), "the queue is full");
        // The engine drained meanwhile: the release goes first, then the claim.
        engine
            .full
            .store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(cluster.claims_may_go(now));
        assert_eq!(
            *engine.taken.lock().unwrap(),
            [Request::Release { id: 4096 }]
        );
        assert!(cluster.unsent.is_empty() && cluster.retry_at().is_none());
    }

    #[test]
    fn a_name_release_waiting_here_is_handed_over_once_and_only_if_this_incarnation_holds_it() {
        let hub = MemoryHub::new();
        let mut engine = hub.join(|| {});
        engine.refuse(true);
        let mut cluster = Cluster::new(Box::new(engine));
        let now = Instant::now();
        cluster.release(Request::Release { id: 4096 }, false, now);
        cluster.release(release_name("carol"), true, now);
        // A name of the incarnation before a fence: its reap frees it,
        // and Redis may already have given it to another node; a claim
        // must not overtake its release either.
        cluster.release(release_name("dave"), false, now);
        assert_eq!(cluster.hand_over("dave"), Waiting::NotOurs);
        assert_eq!(cluster.hand_over("erin"), Waiting::None);
        assert_eq!(cluster.hand_over("carol"), Waiting::HandedOver);
        // Dropped: it neither runs later nor passes the name twice; the
        // others wait in their order.
        assert_eq!(cluster.hand_over("carol"), Waiting::None);
        let waiting: Vec<_> = cluster.unsent.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(
            waiting,
            [Request::Release { id: 4096 }, release_name("dave")]
        );
        assert!(cluster.retry_at().is_some());
    }
}
