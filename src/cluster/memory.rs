//! An engine in memory, for tests: several nodes in one process share a
//! [`MemoryHub`] that does what Redis does for the Redis engine (the id
//! table, the channels), at once and in order, and can crash a node or
//! fence it (its lease lost: reaped, then joined again as a new one), cut
//! the channel between two nodes that both keep their leases (a
//! partition: what one publishes to the other is lost, unannounced), or
//! make one node's engine refuse requests (its queue full, Redis away).
//! Names are claimed in it as in Redis: one holder system-wide, freed with
//! their node; rooms too: one id per room name, members by name, bounded
//! as the Redis scripts bound them.

use super::{Engine, Event, NodeId, Request, RoomJoin, RoomOutcome, RoomState};
use crate::proto::ext::ROOM_IDS;
use crate::proto::{ClientId, EMITTER_IDS, EXHIBITOR_IDS};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

/// What the nodes of one test share.
#[derive(Clone, Default)]
pub struct MemoryHub {
    inner: Arc<Mutex<Hub>>,
}

#[derive(Default)]
struct Hub {
    next_node: NodeId,
    owner: BTreeMap<ClientId, NodeId>,
    /// Who holds each name (lower case).
    names: HashMap<String, NodeId>,
    /// What each held id shows: its roles and name.
    shows: BTreeMap<ClientId, (u8, String)>,
    /// Each live node's undrained events and how it is woken.
    nodes: HashMap<NodeId, Inbox>,
    /// Pairs of nodes (lower first) whose batches to each other are lost.
    cut: HashSet<(NodeId, NodeId)>,
    /// Rooms by id: their kind, spelling and member names (lower case).
    rooms: BTreeMap<ClientId, RoomState>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    (a.min(b), a.max(b))
}

struct Inbox {
    events: Vec<Event>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Hub {
    fn tell(&mut self, node: NodeId, event: Event) {
        if let Some(inbox) = self.nodes.get_mut(&node) {
            inbox.events.push(event);
            (inbox.wake)();
        }
    }

    /// `node` is gone: its ids, names and what they showed with it.
    fn forget_node(&mut self, node: NodeId) {
        let owner = &self.owner;
        self.shows
            .retain(|id, _| owner.get(id).is_some_and(|&n| n != node));
        self.owner.retain(|_, n| *n != node);
        self.names.retain(|_, n| *n != node);
    }

    /// The join events of `node`: the id table, then what each id shows.
    fn joined(&self, node: NodeId) -> Vec<Event> {
        let held = self.owner.iter().map(|(&id, &n)| (id, n)).collect();
        let mut events = vec![Event::Joined { node, held }];
        events.extend(self.shows.iter().map(|(&id, (roles, name))| Event::Shown {
            id,
            node: self.owner[&id],
            roles: *roles,
            name: name.clone(),
        }));
        let rooms = self.rooms.values().cloned().collect();
        events.push(Event::Rooms { rooms });
        events
    }

    /// [`Request::JoinRoom`], as the Redis script does it.
    fn join_room(&mut self, join: RoomJoin) -> RoomOutcome {
        let found = self
            .rooms
            .values()
            .find(|r| r.spelling.eq_ignore_ascii_case(&join.key))
            .map(|r| (r.id, r.queue, r.members.len()));
        let rooms_of = self
            .rooms
            .values()
            .filter(|r| r.members.contains(&join.member))
            .count();
        let id = match found {
            Some((_, queue, _)) if queue != join.queue => return RoomOutcome::OtherKind,
            Some((id, _, _)) if self.rooms[&id].members.contains(&join.member) => id,
            Some((_, _, members)) if members >= join.room_members as usize => {
                return RoomOutcome::RoomFull;
            }
            _ if rooms_of >= join.rooms_per_name as usize => return RoomOutcome::TooManyRooms,
            Some((id, _, _)) => id,
            None if !join.may_create => return RoomOutcome::NotAllowed,
            None => {
                let first = *ROOM_IDS.start();
                let range = first..first + join.max_rooms;
                let Some(id) = range.into_iter().find(|id| !self.rooms.contains_key(id)) else {
                    return RoomOutcome::NoRoomId;
                };
                let room = RoomState {
                    id,
                    queue: join.queue,
                    spelling: join.spelling.clone(),
                    members: Vec::new(),
                    prefetch: Vec::new(),
                };
                self.rooms.insert(id, room);
                id
            }
        };
        let room = self.rooms.get_mut(&id).expect("found or made above");
        if !room.members.contains(&join.member) {
            room.members.push(join.member.clone());
        }
        if room.queue {
            room.prefetch.retain(|(m, _)| *m != join.member);
            room.prefetch
                .push((join.member.clone(), join.prefetch.max(1)));
        }
        // A member already is told again, as the script does: its JOIN
        // again carries the prefetch afresh.
        let event = Event::RoomJoined {
            id,
            queue: room.queue,
            spelling: room.spelling.clone(),
            member: join.member,
            prefetch: Some(join.prefetch.max(1)),
        };
        self.tell_all(&event);
        let room = &self.rooms[&id];
        RoomOutcome::Joined {
            id,
            queue: room.queue,
            spelling: room.spelling.clone(),
            members: room.members.len() as u32,
        }
    }

    /// [`Request::LeaveRoom`], as the Redis script does it.
    fn leave_room(&mut self, key: &str, member: String) -> RoomOutcome {
        let Some(room) = self
            .rooms
            .values_mut()
            .find(|r| r.spelling.eq_ignore_ascii_case(key))
        else {
            return RoomOutcome::NotMember;
        };
        let Some(at) = room.members.iter().position(|m| *m == member) else {
            return RoomOutcome::NotMember;
        };
        room.members.remove(at);
        room.prefetch.retain(|(m, _)| *m != member);
        let outcome = RoomOutcome::Left {
            id: room.id,
            queue: room.queue,
            spelling: room.spelling.clone(),
            members: room.members.len() as u32,
        };
        let id = room.id;
        if room.members.is_empty() {
            self.rooms.remove(&id);
        }
        self.tell_all(&Event::RoomLeft { id, member });
        outcome
    }

    fn tell_all(&mut self, event: &Event) {
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        for node in nodes {
            self.tell(node, event.clone());
        }
    }
}

impl MemoryHub {
    pub fn new() -> MemoryHub {
        MemoryHub::default()
    }

    /// A new node joins; its first event is [`Event::Joined`].
    pub fn join(&self, wake: impl Fn() + Send + Sync + 'static) -> MemoryEngine {
        let mut hub = self.lock();
        hub.next_node += 1;
        let node = hub.next_node;
        let events = hub.joined(node);
        hub.nodes.insert(
            node,
            Inbox {
                events,
                wake: Arc::new(wake),
            },
        );
        MemoryEngine {
            hub: self.clone(),
            node,
            refusing: false,
        }
    }

    /// `node` dies: its ids are freed and every other node told it is down.
    pub fn crash(&self, node: NodeId) {
        let mut hub = self.lock();
        hub.nodes.remove(&node);
        hub.forget_node(node);
        hub.tell_all(&Event::Down { node });
    }

    /// Which node holds the name `name` (lower case), if any.
    pub fn name_holder(&self, name: &str) -> Option<NodeId> {
        self.lock().names.get(name).copied()
    }

    /// Cuts the channel between `a` and `b` both ways: each keeps its lease
    /// and its ids, but what one publishes to the other is lost without a
    /// word (as a message into a dropped subscription would be).
    pub fn partition(&self, a: NodeId, b: NodeId) {
        self.lock().cut.insert(pair(a, b));
    }

    /// Joins `a` and `b` again.
    pub fn heal(&self, a: NodeId, b: NodeId) {
        self.lock().cut.remove(&pair(a, b));
    }

    /// Joins every partitioned pair again.
    pub fn heal_all(&self) {
        self.lock().cut.clear();
    }

    /// Every room the hub holds, by id, with its members (lower case).
    pub fn rooms(&self) -> Vec<RoomState> {
        self.lock().rooms.values().cloned().collect()
    }

    /// Who holds `id`, if anyone.
    pub fn owner(&self, id: ClientId) -> Option<NodeId> {
        self.lock().owner.get(&id).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One node's handle on the hub.
pub struct MemoryEngine {
    hub: MemoryHub,
    node: NodeId,
    /// Every request is given back, as a full queue would.
    refusing: bool,
}

impl MemoryEngine {
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// From now on (`true`) or no longer, [`Engine::submit`] gives every
    /// request back, as when the Redis engine's queue is full.
    pub fn refuse(&mut self, refusing: bool) {
        self.refusing = refusing;
    }

    /// This node loses its lease (a partition from the engine, a stall):
    /// the others see it reaped (its ids freed, [`Event::Down`]); what
    /// it had not yet drained is lost; it is told [`Event::Fenced`] and
    /// joins again as a new incarnation.
    pub fn fence(&mut self) {
        let mut hub = self.hub.lock();
        let Some(inbox) = hub.nodes.remove(&self.node) else {
            return;
        };
        let old = self.node;
        hub.forget_node(old);
        hub.tell_all(&Event::Down { node: old });
        hub.next_node += 1;
        self.node = hub.next_node;
        let mut events = vec![Event::Fenced];
        events.extend(hub.joined(self.node));
        (inbox.wake)();
        hub.nodes.insert(
            self.node,
            Inbox {
                events,
                wake: inbox.wake,
            },
        );
    }
}

impl Engine for MemoryEngine {
    fn submit(&mut self, request: Request) -> Result<(), Request> {
        if self.refusing {
            return Err(request);
        }
        let mut hub = self.hub.lock();
        if !hub.nodes.contains_key(&self.node) {
            return Err(request);
        }
        match request {
            Request::Claim { claim, exhibitor } => {
                let range = if exhibitor {
                    EXHIBITOR_IDS
                } else {
                    EMITTER_IDS
                };
                let id = range.clone().find(|id| !hub.owner.contains_key(id));
                if let Some(id) = id {
                    hub.owner.insert(id, self.node);
                    hub.tell_all(&Event::Held {
                        id,
                        node: self.node,
                    });
                }
                hub.tell(self.node, Event::Claimed { claim, id });
            }
            Request::ClaimName { claim, name } => {
                let won = !hub.names.contains_key(&name);
                if won {
                    hub.names.insert(name, self.node);
                }
                hub.tell(
                    self.node,
                    Event::NameClaimed {
                        claim,
                        won: Some(won),
                    },
                );
            }
            Request::ReleaseName { name } => {
                if hub.names.get(&name) == Some(&self.node) {
                    hub.names.remove(&name);
                }
            }
            Request::Show { id, roles, name } => {
                if hub.owner.get(&id) == Some(&self.node) {
                    hub.shows.insert(id, (roles, name.clone()));
                    hub.tell_all(&Event::Shown {
                        id,
                        node: self.node,
                        roles,
                        name,
                    });
                }
            }
            Request::Release { id } => {
                if hub.owner.get(&id) == Some(&self.node) {
                    hub.owner.remove(&id);
                    hub.shows.remove(&id);
                    hub.tell_all(&Event::Freed {
                        id,
                        node: self.node,
                    });
                }
            }
            Request::JoinRoom { claim, join } => {
                let outcome = Some(hub.join_room(join));
                hub.tell(self.node, Event::RoomAnswered { claim, outcome });
            }
            Request::LeaveRoom { claim, key, member } => {
                let outcome = Some(hub.leave_room(&key, member));
                hub.tell(self.node, Event::RoomAnswered { claim, outcome });
            }
            Request::Publish { to, batch, relays } => {
                if hub.cut.contains(&pair(self.node, to)) {
                    // Lost in the partition: no one is told.
                } else if hub.nodes.contains_key(&to) {
                    hub.tell(to, Event::Batch { bytes: batch });
                } else {
                    let event = Event::Unreachable {
                        node: to,
                        relays,
                        batch,
                    };
                    hub.tell(self.node, event);
                }
            }
        }
        Ok(())
    }

    fn drain(&mut self, into: &mut Vec<Event>) {
        if let Some(inbox) = self.hub.lock().nodes.get_mut(&self.node) {
            into.append(&mut inbox.events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained(engine: &mut MemoryEngine) -> Vec<Event> {
        let mut events = Vec::new();
        engine.drain(&mut events);
        events
    }

    #[test]
    fn claims_take_the_lowest_free_id_across_nodes_and_a_crash_frees_them() {
        let hub = MemoryHub::new();
        let mut a = hub.join(|| {});
        let mut b = hub.join(|| {});
        a.submit(Request::Claim {
            claim: 1,
            exhibitor: false,
        })
        .unwrap();
        b.submit(Request::Claim {
            claim: 1,
            exhibitor: false,
        })
        .unwrap();
        b.submit(Request::Claim {
            claim: 2,
            exhibitor: true,
        })
        .unwrap();
        assert_eq!(hub.owner(1), Some(a.node()));
        assert_eq!(hub.owner(2), Some(b.node()));
        assert_eq!(hub.owner(4096), Some(b.node()));
        let events = drained(&mut a);
        assert!(events.contains(&Event::Claimed {
            claim: 1,
            id: Some(1)
        }));
        assert!(events.contains(&Event::Held {
            id: 4096,
            node: b.node()
        }));
        hub.crash(b.node());
        assert_eq!(hub.owner(2), None);
        assert!(drained(&mut a).contains(&Event::Down { node: b.node() }));
        let relays = vec![7];
        a.submit(Request::Publish {
            to: b.node(),
            batch: vec![],
            relays: relays.clone(),
        })
        .unwrap();
        assert!(drained(&mut a).contains(&Event::Unreachable {
            node: b.node(),
            relays,
            batch: vec![],
        }));
    }

    fn join_request(claim: u64, room: &str, queue: bool, member: &str) -> Request {
        Request::JoinRoom {
            claim,
            join: RoomJoin {
                key: room.to_ascii_lowercase(),
                spelling: room.into(),
                queue,
                member: member.into(),
                may_create: true,
                max_rooms: 2,
                room_members: 2,
                rooms_per_name: 2,
                prefetch: 1,
            },
        }
    }

    fn answer(engine: &mut MemoryEngine) -> Option<RoomOutcome> {
        drained(engine).into_iter().find_map(|e| match e {
            Event::RoomAnswered { outcome, .. } => outcome,
            _ => None,
        })
    }

    #[test]
    fn a_room_name_has_one_id_on_every_node_and_the_bounds_hold_system_wide() {
        let hub = MemoryHub::new();
        let mut a = hub.join(|| {});
        let mut b = hub.join(|| {});
        drained(&mut a);
        drained(&mut b);
        a.submit(join_request(1, "Ops", false, "alice")).unwrap();
        b.submit(join_request(1, "OPS", false, "bob")).unwrap();
        let first = *ROOM_IDS.start();
        let joined = |members| RoomOutcome::Joined {
            id: first,
            queue: false,
            spelling: "Ops".into(),
            members,
        };
        let heard_by_a = drained(&mut a);
        assert!(heard_by_a.contains(&Event::RoomAnswered {
            claim: 1,
            outcome: Some(joined(1))
        }));
        assert_eq!(answer(&mut b), Some(joined(2)));
        // Every node hears each join (its replica), the first node too.
        assert!(heard_by_a.contains(&Event::RoomJoined {
            id: first,
            queue: false,
            spelling: "Ops".into(),
            member: "bob".into(),
            prefetch: Some(1),
        }));
        b.submit(join_request(2, "ops", true, "carol")).unwrap();
        assert_eq!(answer(&mut b), Some(RoomOutcome::OtherKind));
        b.submit(join_request(3, "ops", false, "carol")).unwrap();
        assert_eq!(answer(&mut b), Some(RoomOutcome::RoomFull));
        b.submit(join_request(4, "jobs", true, "carol")).unwrap();
        assert!(matches!(answer(&mut b), Some(RoomOutcome::Joined { id, .. }) if id == first + 1));
        b.submit(join_request(5, "more", false, "carol")).unwrap();
        assert_eq!(answer(&mut b), Some(RoomOutcome::NoRoomId));
        // The last member gone, the room is gone and its id free.
        for (claim, member) in [(6, "alice"), (7, "bob")] {
            a.submit(Request::LeaveRoom {
                claim,
                key: "ops".into(),
                member: member.into(),
            })
            .unwrap();
            assert!(matches!(answer(&mut a), Some(RoomOutcome::Left { .. })));
        }
        a.submit(Request::LeaveRoom {
            claim: 8,
            key: "ops".into(),
            member: "bob".into(),
        })
        .unwrap();
        assert_eq!(answer(&mut a), Some(RoomOutcome::NotMember));
        a.submit(join_request(9, "news", false, "dave")).unwrap();
        assert!(matches!(answer(&mut a), Some(RoomOutcome::Joined { id, .. }) if id == first));
    }
}
