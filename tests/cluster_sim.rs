//! A deterministic simulation of several nodes (CLUSTER.md): three
//! `Router`s, each with the cluster on, joined through the in-memory
//! engine, driven by seeded random clients (OIs, unicasts, broadcasts,
//! slow and refusing exhibitors, departures) while nodes crash. The glue
//! between each router and its engine does what the loop's does
//! (`server/cluster.rs`): claims, releases, one batch per destination
//! node per step, events back to the router. Asserted at every step: no id
//! is held by two live clients; every request gets exactly one reply, in
//! request order; no OK reaches an emitter before one of its request's
//! targets answered OK; each router's own invariants.

use crate::util::Rng;
use evchat::cluster::batch::{self, BatchWriter, PairRecord, Record};
use evchat::cluster::memory::{MemoryEngine, MemoryHub};
use evchat::cluster::{Engine, Event, NodeId, Request};
use evchat::proto::{ClientId, Frame, FrameView, Kind, SERVER_ID};
use evchat::server::Limits;
use evchat::testing::{CloseReason, ConnId, Outbox, PairNotice, Router};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// What a router asked for in one step, as the loop's outbox gathers it.
struct Recorder {
    node: NodeId,
    frames: Vec<(ConnId, Frame)>,
    closed: Vec<ConnId>,
    claims: Vec<(ConnId, bool)>,
    releases: Vec<ClientId>,
    batches: BTreeMap<NodeId, BatchWriter>,
}

impl Outbox for Recorder {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        self.frames.push((to, frame.clone()));
    }
    fn close(&mut self, conn: ConnId, _id: ClientId, _reason: CloseReason) {
        self.closed.push(conn);
    }
    fn resume_input(&mut self, _conn: ConnId) {}
    fn claim_id(&mut self, conn: ConnId, exhibitor: bool) {
        self.claims.push((conn, exhibitor));
    }
    fn release_id(&mut self, id: ClientId) {
        self.releases.push(id);
    }
    fn relay(&mut self, node: u64, relay: u64, frame: &FrameView<'_>) {
        let from = self.node;
        let batch = self
            .batches
            .entry(node)
            .or_insert_with(|| BatchWriter::new(from));
        batch.push_relay(relay, frame);
    }
    fn relay_ack(&mut self, node: u64, relay: u64, ok: bool) {
        let from = self.node;
        let batch = self
            .batches
            .entry(node)
            .or_insert_with(|| BatchWriter::new(from));
        batch.push_ack(relay, ok);
    }
    fn pair_notice(&mut self, node: u64, notice: PairNotice) {
        let from = self.node;
        let batch = self
            .batches
            .entry(node)
            .or_insert_with(|| BatchWriter::new(from));
        batch.push_pair(record(notice));
    }
}

/// The router's pair notice as a batch record, and back, as the loop's
/// glue converts them.
fn record(notice: PairNotice) -> PairRecord {
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

fn notice(record: PairRecord) -> PairNotice {
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

/// One node: its router, its engine, and the glue's bookkeeping.
struct Node {
    router: Router,
    engine: MemoryEngine,
    out: Recorder,
    down: HashSet<NodeId>,
    next_claim: u64,
    claims: HashMap<u64, ConnId>,
    next_conn: ConnId,
}

impl Node {
    fn new(hub: &MemoryHub, limits: Limits) -> Node {
        let engine = hub.join(|| {});
        let mut router = Router::new(limits);
        router.enable_cluster();
        Node {
            router,
            out: Recorder {
                node: engine.node(),
                frames: Vec::new(),
                closed: Vec::new(),
                claims: Vec::new(),
                releases: Vec::new(),
                batches: BTreeMap::new(),
            },
            engine,
            down: HashSet::new(),
            next_claim: 0,
            claims: HashMap::new(),
            next_conn: 0,
        }
    }

    /// Engine events to the router, then the router's requests to the
    /// engine; true if anything happened.
    fn pump(&mut self, now: Instant) -> bool {
        let mut events = Vec::new();
        self.engine.drain(&mut events);
        let busy = !events.is_empty();
        let mut me = self.engine.node();
        for event in events {
            let (router, out) = (&mut self.router, &mut self.out);
            match event {
                Event::Joined { node, held } => {
                    // A new incarnation after a fence: its batches say so.
                    out.node = node;
                    me = node;
                    router.cluster_joined(&held);
                }
                Event::Claimed { claim, id } => {
                    let conn = self.claims.remove(&claim).expect("a claim asked");
                    if !router.id_claimed(conn, id, now, out)
                        && let Some(id) = id
                    {
                        out.releases.push(id);
                    }
                }
                Event::Held { id, node } if node != me && !self.down.contains(&node) => {
                    router.remote_held(id, node)
                }
                Event::Freed { id, node } if node != me => router.remote_freed(id, node),
                Event::Held { .. } | Event::Freed { .. } => {}
                // These clients send no HELLO: no names are claimed or shown.
                Event::NameClaimed { .. } | Event::Shown { .. } => {}
                Event::Down { node } => {
                    self.down.insert(node);
                    router.node_down(node, now, out);
                }
                Event::Batch { bytes } => {
                    let (from, records) = batch::parse(&bytes).expect("a well-formed batch");
                    if self.down.contains(&from) {
                        continue;
                    }
                    for record in records {
                        match record {
                            Record::Relay { relay, frame } => {
                                router.relayed(from, relay, &frame, now, out)
                            }
                            Record::Ack { relay, ok } => {
                                router.relay_acked(from, relay, ok, now, out)
                            }
                            Record::Pair(r) => router.pair_notice(from, notice(r), now, out),
                        }
                    }
                }
                Event::Unreachable { node, relays } => {
                    router.relays_failed(node, &relays, now, out)
                }
                Event::Fenced => router.fence(now, out),
            }
        }
        let outgoing = !self.out.claims.is_empty()
            || !self.out.releases.is_empty()
            || !self.out.batches.is_empty();
        for (conn, exhibitor) in std::mem::take(&mut self.out.claims) {
            let claim = self.next_claim;
            self.next_claim += 1;
            self.claims.insert(claim, conn);
            self.engine
                .submit(Request::Claim { claim, exhibitor })
                .unwrap();
        }
        for id in std::mem::take(&mut self.out.releases) {
            self.engine.submit(Request::Release { id }).unwrap();
        }
        for (to, writer) in std::mem::take(&mut self.out.batches) {
            let (batch, relays) = writer.finish();
            self.engine
                .submit(Request::Publish { to, batch, relays })
                .unwrap();
        }
        busy || outgoing
    }
}

#[derive(Debug, PartialEq)]
enum Kindof {
    Exhibitor,
    Emitter,
}

/// A simulated client: where it is, what it is, what it awaits.
struct Client {
    node: usize,
    conn: ConnId,
    kind: Kindof,
    id: Option<ClientId>,
    next_seq: u16,
    /// An emitter's requests awaiting replies: seq and request number.
    awaiting: VecDeque<(u16, u64)>,
    /// An exhibitor's frames not yet acknowledged (acked oldest first).
    unacked: VecDeque<Frame>,
    /// Refuses (ERRO) what it is sent.
    refuses: bool,
    /// The server sent it FLW: it no longer counts as holding its id.
    dismissed: bool,
}

struct World {
    hub: MemoryHub,
    nodes: Vec<Option<Node>>,
    clients: Vec<Client>,
    now: Instant,
    rng: Rng,
    next_request: u64,
    /// Requests some target answered OK.
    acked_ok: HashSet<u64>,
    replies: u64,
}

impl World {
    fn new(seed: u64, nodes: usize) -> World {
        let hub = MemoryHub::new();
        let limits = Limits {
            ack_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let nodes = (0..nodes).map(|_| Some(Node::new(&hub, limits))).collect();
        let mut world = World {
            hub,
            nodes,
            clients: Vec::new(),
            now: Instant::now(),
            rng: Rng(seed | 1),
            next_request: 0,
            acked_ok: HashSet::new(),
            replies: 0,
        };
        world.settle();
        world
    }

    fn pick(&mut self, n: usize) -> usize {
        (self.rng.next() % n as u64) as usize
    }

    fn live_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| self.nodes[n].is_some())
            .collect()
    }

    fn frame(&mut self, client: usize, frame: Frame) {
        let Client { node, conn, .. } = self.clients[client];
        let now = self.now;
        if let Some(n) = self.nodes[node].as_mut()
            && n.router.accepts_input(conn)
        {
            let Node { router, out, .. } = n;
            router.on_frame(conn, frame, now, out);
        }
    }

    fn connect(&mut self, kind: Kindof) {
        let live = self.live_nodes();
        let node = live[self.pick(live.len())];
        let refuses = self.rng.next().is_multiple_of(5);
        let n = self.nodes[node].as_mut().unwrap();
        let conn = n.next_conn;
        n.next_conn += 1;
        n.router.connected(conn, self.now);
        let exhibitors: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|c| c.kind == Kindof::Exhibitor)
            .filter_map(|c| c.id)
            .collect();
        let origin = match kind {
            Kindof::Exhibitor => 0,
            // A third of the emitters ask to pair, on any node.
            Kindof::Emitter if !exhibitors.is_empty() && self.rng.next().is_multiple_of(3) => {
                exhibitors[self.pick(exhibitors.len())]
            }
            Kindof::Emitter => 1,
        };
        self.clients.push(Client {
            node,
            conn,
            kind,
            id: None,
            next_seq: 1,
            awaiting: VecDeque::new(),
            unacked: VecDeque::new(),
            refuses,
            dismissed: false,
        });
        let client = self.clients.len() - 1;
        self.frame(client, Frame::bare(Kind::Oi, origin, SERVER_ID, 0));
    }

    /// A random identified emitter sends a MSG to a random id (or to all).
    fn request(&mut self) {
        let emitters: Vec<usize> = (0..self.clients.len())
            .filter(|&c| self.clients[c].kind == Kindof::Emitter && self.clients[c].id.is_some())
            .collect();
        if emitters.is_empty() {
            return;
        }
        let c = emitters[self.pick(emitters.len())];
        let ids: Vec<ClientId> = self.clients.iter().filter_map(|c| c.id).collect();
        let dest = if self.rng.next().is_multiple_of(3) {
            0
        } else {
            ids[self.pick(ids.len())]
        };
        let number = self.next_request;
        self.next_request += 1;
        let client = &mut self.clients[c];
        let seq = client.next_seq;
        client.next_seq = client.next_seq.wrapping_add(1);
        client.awaiting.push_back((seq, number));
        let origin = client.id.unwrap();
        let text = bytes::Bytes::from(number.to_string());
        self.frame(c, Frame::msg(origin, dest, seq, text).unwrap());
    }

    /// A random exhibitor acknowledges its oldest frame.
    fn acknowledge(&mut self, c: usize) {
        let Some(frame) = self.clients[c].unacked.pop_front() else {
            return;
        };
        let ok = !self.clients[c].refuses;
        if ok && frame.kind == Kind::Msg {
            let text = frame.text().expect("a MSG has text");
            let number: u64 = std::str::from_utf8(text).unwrap().parse().unwrap();
            self.acked_ok.insert(number);
        }
        let kind = if ok { Kind::Ok } else { Kind::Erro };
        let id = self.clients[c].id.unwrap_or(0);
        self.frame(c, Frame::bare(kind, id, SERVER_ID, frame.seq));
    }

    fn leave(&mut self, c: usize) {
        let Client { node, conn, .. } = self.clients[c];
        let now = self.now;
        if let Some(n) = self.nodes[node].as_mut() {
            let Node { router, out, .. } = n;
            router.disconnected(conn, now, out);
        }
        self.clients.remove(c);
    }

    fn crash(&mut self, node: usize) {
        let gone = self.nodes[node].take().unwrap();
        self.hub.crash(gone.engine.node());
        self.clients.retain(|c| c.node != node);
    }

    /// Pumps every node and hands every frame to its client, until quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut busy = false;
            let now = self.now;
            for node in self.nodes.iter_mut().flatten() {
                let Node { router, out, .. } = node;
                router.tick(now, out);
                busy |= node.pump(now);
            }
            busy |= self.deliver();
            if !busy {
                return;
            }
        }
        panic!("the nodes never settled");
    }

    /// Frames the routers sent go to their clients; closes remove them.
    fn deliver(&mut self) -> bool {
        let mut busy = false;
        for node in 0..self.nodes.len() {
            let Some(n) = self.nodes[node].as_mut() else {
                continue;
            };
            let frames = std::mem::take(&mut n.out.frames);
            let closed = std::mem::take(&mut n.out.closed);
            busy |= !frames.is_empty() || !closed.is_empty();
            for (conn, frame) in frames {
                let Some(c) = self
                    .clients
                    .iter()
                    .position(|c| c.node == node && c.conn == conn)
                else {
                    continue;
                };
                self.receive(c, frame);
            }
            for conn in closed {
                self.clients.retain(|c| !(c.node == node && c.conn == conn));
            }
        }
        busy
    }

    fn receive(&mut self, c: usize, frame: Frame) {
        let client = &mut self.clients[c];
        if client.id.is_none() {
            assert_eq!(frame.origin, SERVER_ID, "{frame}");
            if frame.kind == Kind::Ok {
                client.id = Some(frame.dest);
            }
            return;
        }
        match (&client.kind, frame.kind) {
            (Kindof::Emitter, Kind::Ok | Kind::Erro) => {
                let (seq, number) = client
                    .awaiting
                    .pop_front()
                    .unwrap_or_else(|| panic!("a reply to no request: {frame}"));
                assert_eq!(frame.seq, seq, "replies out of request order");
                if frame.kind == Kind::Ok {
                    assert!(
                        self.acked_ok.contains(&number),
                        "OK to request {number} before any target's OK"
                    );
                }
                self.replies += 1;
            }
            (_, Kind::Flw) => {
                client.dismissed = true;
                client.unacked.push_back(frame);
            }
            (Kindof::Exhibitor, _) => client.unacked.push_back(frame),
            (Kindof::Emitter, other) => panic!("an emitter was sent {other}"),
        }
    }

    fn check(&self) {
        let mut held = HashSet::new();
        // A dismissed client is on its way out: after a fence, the id it
        // showed may already be another node's (CLUSTER.md).
        for client in self.clients.iter().filter(|c| !c.dismissed) {
            if let Some(id) = client.id {
                assert!(held.insert(id), "id {id} held by two live clients");
            }
        }
        for node in self.nodes.iter().flatten() {
            node.router.check_invariants().unwrap();
        }
    }

    fn step(&mut self, crashes: bool) {
        self.now += Duration::from_millis(7);
        match self.rng.next() % 100 {
            0..=9 => self.connect(Kindof::Exhibitor),
            10..=19 => self.connect(Kindof::Emitter),
            20..=54 => self.request(),
            55..=89 => {
                let exhibitors: Vec<usize> = (0..self.clients.len())
                    .filter(|&c| !self.clients[c].unacked.is_empty())
                    .collect();
                if !exhibitors.is_empty() {
                    let c = exhibitors[self.pick(exhibitors.len())];
                    self.acknowledge(c);
                }
            }
            90..=96 if !self.clients.is_empty() => {
                let c = self.pick(self.clients.len());
                self.leave(c);
            }
            97 if crashes => {
                let live = self.live_nodes();
                let node = live[self.pick(live.len())];
                self.nodes[node].as_mut().unwrap().engine.fence();
            }
            98 | 99 if crashes && self.live_nodes().len() > 1 => {
                let live = self.live_nodes();
                let node = live[self.pick(live.len())];
                self.crash(node);
            }
            _ => {}
        }
        self.settle();
        self.check();
    }
}

#[test]
fn routers_on_an_in_memory_engine_keep_ids_unique_replies_whole_and_oks_earned() {
    let mut replies = 0;
    for seed in 1..=30u64 {
        let mut world = World::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), 3);
        for _ in 0..400 {
            world.step(true);
        }
        // Quiet: every exhibitor answers what it holds and time passes the
        // ack timeout, so every request left must have had its reply.
        for _ in 0..50 {
            // Acknowledging a FLW closes the client: the list shrinks.
            let mut c = 0;
            while c < world.clients.len() {
                if world.clients[c].unacked.is_empty() {
                    c += 1;
                    continue;
                }
                world.acknowledge(c);
                world.settle();
            }
            world.now += Duration::from_millis(500);
            world.settle();
            world.check();
        }
        for client in &world.clients {
            assert!(
                client.awaiting.is_empty(),
                "requests never answered: {:?}",
                client.awaiting
            );
        }
        replies += world.replies;
    }
    // The simulation did route: many requests were answered.
    assert!(replies > 1000, "only {replies} replies");
}
