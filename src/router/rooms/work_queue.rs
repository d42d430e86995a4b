//! A queue room's messages and its member sessions' holds (PROTOCOL.md,
//! "Work queues"). Each message sits in one slot from its arrival until it
//! is settled: the waiting line and the acknowledgements name it by its
//! slot, so a turn moves a 4-byte index, not the message, and an
//! acknowledgement finds its message with one index. Which member sessions
//! have room for one more is a bitset by place in the room's online list:
//! the next one in turn is a bit search from the cursor, not a scan of the
//! sessions. Knows nothing of sessions or the outbox: the room's caller
//! says which places there are and which may not be given a message.

use super::super::RequestRef;
use crate::proto::{ClientId, FrameView};
use std::collections::VecDeque;
use std::time::Instant;

/// A settled message's buffer is kept in its slot for the next message if
/// it is at most this long, so short messages cost no allocation and a
/// burst of long ones leaves no large buffers behind.
const KEPT_TEXT_BYTES: usize = 256;

/// `Slot::holder` of a message no member session holds.
const NOT_HELD: u32 = u32::MAX;

/// One queue message, from its arrival until settled: its MSG's fields as
/// they arrived, the request its emitter's reply settles (none for one
/// recovered from history: its emitter is gone), when it arrived (the wait
/// bound runs from then, redeliveries included), the number a history
/// records it by, and, while a member session holds it, that session's
/// place and the ticket the delivery carries.
#[derive(Debug, Default)]
struct Slot {
    text: Vec<u8>,
    origin: ClientId,
    seq: u16,
    request: Option<RequestRef>,
    since: Option<Instant>,
    wait: u64,
    ticket: u64,
    holder: u32,
}

/// What a settled or given-up message leaves to answer: its number in a
/// history and the request its emitter's reply settles.
pub(super) type Answered = (u64, Option<RequestRef>);

/// A queue room's messages, waiting or held, and what each member session
/// (by its place in the room's online list) holds and may hold.
#[derive(Debug, Default)]
pub(super) struct WorkQueue {
    slots: Vec<Slot>,
    /// Slots holding no message, reused lowest-last.
    vacant: Vec<u32>,
    /// Messages waiting for a member session, oldest first, by slot.
    waiting: VecDeque<u32>,
    /// How many messages each member session holds, by place.
    holds: Vec<u16>,
    /// How many each may hold (its name's prefetch), by place.
    capacity: Vec<u8>,
    /// A bit per place: set while the session holds fewer than it may and
    /// is not known to be unable to take more (leaving, gone).
    free: Vec<u64>,
    /// Messages held by member sessions in all.
    held: usize,
    /// The place the next turn starts at.
    cursor: usize,
}

impl WorkQueue {
    /// Messages waiting for a member session.
    pub(super) fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Messages member sessions hold.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn held(&self) -> usize {
        self.held
    }

    /// When the oldest waiting message arrived.
    pub(super) fn oldest_since(&self) -> Option<Instant> {
        let &slot = self.waiting.front()?;
        self.slots[slot as usize].since
    }

    /// A message joins the end of the waiting line, its text copied into a
    /// settled message's buffer when there is one.
    pub(super) fn push_waiting(
        &mut self,
        origin: ClientId,
        seq: u16,
        text: &[u8],
        request: Option<RequestRef>,
        since: Instant,
        wait: u64,
    ) {
        let slot = match self.vacant.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.text.extend_from_slice(text);
        entry.origin = origin;
        entry.seq = seq;
        entry.request = request;
        entry.since = Some(since);
        entry.wait = wait;
        entry.holder = NOT_HELD;
        self.waiting.push_back(slot);
    }

    /// A member session came online at the next place, able to hold
    /// `capacity` messages.
    pub(super) fn add_place(&mut self, capacity: u8) {
        let at = self.capacity.len();
        self.capacity.push(capacity);
        self.holds.push(0);
        if at / 64 >= self.free.len() {
            self.free.push(0);
        }
        self.set_free(at, capacity > 0);
    }

    /// A member session came online at place `at`, before the places from
    /// `at` on, which move up one (on a node of several, sessions here come
    /// before those on other nodes: CLUSTER.md, "Queues across nodes").
    pub(super) fn insert_place(&mut self, at: usize, capacity: u8) {
        self.capacity.insert(at, capacity);
        self.holds.insert(at, 0);
        let place = at as u32;
        for slot in &mut self.slots {
            if slot.holder != NOT_HELD && slot.holder >= place {
                slot.holder += 1;
            }
        }
        if self.cursor > at {
            self.cursor += 1;
        }
        self.rebuild_free();
    }

    /// The member session at `at` left: the places after it move down one,
    /// and what it held goes back to the front of the waiting line, in the
    /// order it was given them (at-least-once). Returns when the earliest
    /// of those arrived.
    pub(super) fn remove_place(&mut self, at: usize) -> Option<Instant> {
        let since = self.pass_on(at);
        self.capacity.remove(at);
        self.holds.remove(at);
        let place = at as u32;
        for slot in &mut self.slots {
            if slot.holder != NOT_HELD && slot.holder > place {
                slot.holder -= 1;
            }
        }
        if self.cursor > at {
            self.cursor -= 1;
        }
        self.rebuild_free();
        since
    }

    /// Places moved: the bits are rebuilt from the counts (a session known
    /// unable to take more is found so again at its next turn).
    fn rebuild_free(&mut self) {
        self.free = vec![0; self.capacity.len().div_ceil(64)];
        for at in 0..self.capacity.len() {
            self.set_free(at, self.holds[at] < u16::from(self.capacity[at]));
        }
    }

    /// How many messages the member session at `at` may hold.
    pub(super) fn capacity(&self, at: usize) -> u8 {
        self.capacity[at]
    }

    /// The member session at `at` may hold `capacity` messages from now on
    /// (those it holds above it are kept until acknowledged).
    pub(super) fn set_capacity(&mut self, at: usize, capacity: u8) {
        self.capacity[at] = capacity;
        self.set_free(at, self.holds[at] < u16::from(capacity));
    }

    /// The member session at `at` cannot take a message now (it is leaving
    /// or gone): it is skipped until it settles one.
    pub(super) fn skip(&mut self, at: usize) {
        self.set_free(at, false);
    }

    /// The place of the next member session in turn with room for one
    /// more, if there is a waiting message for it.
    #[inline]
    pub(super) fn next_turn(&self) -> Option<usize> {
        if self.waiting.is_empty() {
            return None;
        }
        let words = self.free.len();
        let from = if self.cursor < self.capacity.len() {
            self.cursor
        } else {
            0
        };
        // The cursor's word from the cursor on, the words after it, then
        // round to the start and the cursor's word again (its bits from
        // the cursor on are clear by then).
        let start = from / 64;
        let mut word = start;
        let mut bits = *self.free.get(start)? & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word = if word + 1 == words { 0 } else { word + 1 };
            bits = self.free[word];
            if word == start {
                return (bits != 0).then(|| word * 64 + bits.trailing_zeros() as usize);
            }
        }
    }

    /// Gives the oldest waiting message to the member session at `at`
    /// under `ticket`; the turn moves past it. Returns the message's slot.
    pub(super) fn give(&mut self, at: usize, ticket: u64) -> u32 {
        let slot = self.waiting.pop_front().expect("a turn has a message");
        let entry = &mut self.slots[slot as usize];
        entry.ticket = ticket;
        entry.holder = at as u32;
        self.holds[at] += 1;
        self.held += 1;
        if self.holds[at] >= u16::from(self.capacity[at]) {
            self.set_free(at, false);
        }
        self.cursor = at + 1;
        slot
    }

    /// Who sent the oldest waiting message (0: none waits).
    pub(super) fn next_origin(&self) -> ClientId {
        self.waiting
            .front()
            .map_or(0, |&slot| self.slots[slot as usize].origin)
    }

    /// The MSG in `slot`, to the room `room`, as it arrived.
    pub(super) fn view(&self, slot: u32, room: ClientId) -> FrameView<'_> {
        let entry = &self.slots[slot as usize];
        FrameView::msg(entry.origin, room, entry.seq, &entry.text)
            .expect("a queued text came in a MSG")
    }

    /// The message in `slot` given under `ticket` is acknowledged: its
    /// holder may take another, the slot is free. None: it was passed on
    /// (and maybe given again) since, so this settles nothing.
    pub(super) fn settle(&mut self, slot: u32, ticket: u64) -> Option<Answered> {
        let entry = self.slots.get_mut(slot as usize)?;
        if entry.holder == NOT_HELD || entry.ticket != ticket {
            return None;
        }
        let at = entry.holder as usize;
        let answered = (entry.wait, entry.request.take());
        self.release(slot);
        self.holds[at] -= 1;
        self.held -= 1;
        if self.holds[at] < u16::from(self.capacity[at]) {
            self.set_free(at, true);
        }
        Some(answered)
    }

    /// The delivery of `slot` under `ticket` failed with its holder's end:
    /// everything that holder holds goes back to wait (the later deliveries
    /// of the same end then find nothing to pass on). Returns when the
    /// earliest of those arrived.
    pub(super) fn drop_holder_of(&mut self, slot: u32, ticket: u64) -> Option<Instant> {
        let entry = self.slots.get(slot as usize)?;
        if entry.holder == NOT_HELD || entry.ticket != ticket {
            return None;
        }
        let at = entry.holder as usize;
        let since = self.pass_on(at);
        self.set_free(at, u16::from(self.capacity[at]) > 0);
        since
    }

    /// The delivery of `slot` under `ticket` to a member session on another
    /// node failed (its relay not answered OK): that message alone goes
    /// back to the front of the waiting line. The session may still be
    /// there and showing what it was given since, each awaited by its own
    /// relay. Returns when it arrived; None if it was settled or passed on
    /// since.
    pub(super) fn drop_delivery(&mut self, slot: u32, ticket: u64) -> Option<Instant> {
        let entry = self.slots.get_mut(slot as usize)?;
        if entry.holder == NOT_HELD || entry.ticket != ticket {
            return None;
        }
        let at = entry.holder as usize;
        entry.holder = NOT_HELD;
        let since = entry.since;
        self.waiting.push_front(slot);
        self.holds[at] -= 1;
        self.held -= 1;
        self.set_free(at, self.holds[at] < u16::from(self.capacity[at]));
        since
    }

    /// Gives up on the messages that arrived at or before `before`, oldest
    /// first.
    pub(super) fn expire(&mut self, before: Instant, expired: &mut Vec<Answered>) {
        while let Some(&slot) = self.waiting.front() {
            let entry = &mut self.slots[slot as usize];
            if entry.since.is_none_or(|since| since > before) {
                break;
            }
            self.waiting.pop_front();
            expired.push((entry.wait, entry.request.take()));
            self.release(slot);
        }
    }

    /// Forgets every message, waiting or held, that `gone` picks (by its
    /// wait number and whether it has a request here), adding each one's
    /// answer to `forgotten`. Their holders may take others.
    pub(super) fn forget(
        &mut self,
        gone: impl Fn(u64, bool) -> bool,
        forgotten: &mut Vec<Answered>,
    ) {
        for slot in 0..self.slots.len() as u32 {
            let entry = &self.slots[slot as usize];
            if entry.since.is_none() || !gone(entry.wait, entry.request.is_some()) {
                continue;
            }
            let holder = entry.holder;
            if holder == NOT_HELD {
                self.waiting.retain(|&s| s != slot);
            } else {
                let at = holder as usize;
                self.holds[at] -= 1;
                self.held -= 1;
                self.set_free(at, self.holds[at] < u16::from(self.capacity[at]));
            }
            let entry = &mut self.slots[slot as usize];
            forgotten.push((entry.wait, entry.request.take()));
            self.release(slot);
        }
    }

    /// Every message, held ones first in the order given, then the waiting
    /// ones oldest first: (wait, origin, seq, text).
    pub(super) fn messages(&self) -> impl Iterator<Item = (u64, ClientId, u16, &[u8])> {
        let mut held: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.since.is_some() && s.holder != NOT_HELD)
            .collect();
        held.sort_by_key(|s| s.ticket);
        let waiting = self.waiting.iter().map(|&slot| &self.slots[slot as usize]);
        held.into_iter()
            .chain(waiting)
            .map(|s| (s.wait, s.origin, s.seq, &s.text[..]))
    }

    /// Every message's answer, held ones first, as the room goes.
    pub(super) fn into_answers(mut self) -> Vec<Answered> {
        let mut held: Vec<&mut Slot> = self
            .slots
            .iter_mut()
            .filter(|s| s.since.is_some() && s.holder != NOT_HELD)
            .collect();
        held.sort_by_key(|s| s.ticket);
        let mut answers: Vec<Answered> = held
            .into_iter()
            .map(|s| (s.wait, s.request.take()))
            .collect();
        for slot in std::mem::take(&mut self.waiting) {
            let entry = &mut self.slots[slot as usize];
            answers.push((entry.wait, entry.request.take()));
        }
        answers
    }

    /// Whether the counts agree with the slots (the router's invariants):
    /// an error names what does not.
    #[cfg(feature = "testing")]
    pub(super) fn check(&self, places: usize) -> Result<(), String> {
        if self.holds.len() != places || self.capacity.len() != places {
            return Err(format!("{} places, {} counted", places, self.holds.len()));
        }
        let mut holds = vec![0u16; places];
        for slot in self.slots.iter().filter(|s| s.since.is_some()) {
            if slot.holder != NOT_HELD {
                let at = slot.holder as usize;
                *holds.get_mut(at).ok_or("a message held by no place")? += 1;
            }
        }
        if holds != self.holds || self.held != holds.iter().map(|&h| usize::from(h)).sum::<usize>()
        {
            return Err("held messages miscounted".into());
        }
        let in_use = self.slots.iter().filter(|s| s.since.is_some()).count();
        if in_use != self.held + self.waiting.len()
            || self.slots.len() != in_use + self.vacant.len()
        {
            return Err("message slots miscounted".into());
        }
        for at in 0..places {
            if self.is_free(at) && self.holds[at] >= u16::from(self.capacity[at]) {
                return Err(format!("place {at} is full but marked free"));
            }
        }
        if self.capacity.contains(&0) {
            return Err("a member session may hold nothing".into());
        }
        Ok(())
    }

    /// Whether the session at `at` holds fewer messages than it may.
    #[cfg(feature = "testing")]
    pub(super) fn has_room(&self, at: usize) -> bool {
        self.holds[at] < u16::from(self.capacity[at])
    }

    /// Whether the place `at` is marked as able to take one more.
    #[cfg(feature = "testing")]
    pub(super) fn is_free(&self, at: usize) -> bool {
        self.free[at / 64] & (1 << (at % 64)) != 0
    }

    fn set_free(&mut self, at: usize, free: bool) {
        let bit = 1u64 << (at % 64);
        if free {
            self.free[at / 64] |= bit;
        } else {
            self.free[at / 64] &= !bit;
        }
    }

    /// Everything the session at `at` holds goes back to the front of the
    /// waiting line in the order it was given (tickets rise with each
    /// turn). Returns when the earliest of them arrived.
    fn pass_on(&mut self, at: usize) -> Option<Instant> {
        if self.holds[at] == 0 {
            return None;
        }
        let place = at as u32;
        let mut back: Vec<(u64, u32)> = (0..self.slots.len() as u32)
            .filter(|&slot| {
                let entry = &self.slots[slot as usize];
                entry.since.is_some() && entry.holder == place
            })
            .map(|slot| (self.slots[slot as usize].ticket, slot))
            .collect();
        back.sort_unstable();
        let mut since = None;
        for &(_, slot) in back.iter().rev() {
            let entry = &mut self.slots[slot as usize];
            entry.holder = NOT_HELD;
            since = match (since, entry.since) {
                (Some(a), Some(b)) => Some(b.min(a)),
                (a, b) => a.or(b),
            };
            self.waiting.push_front(slot);
        }
        self.held -= back.len();
        self.holds[at] = 0;
        since
    }

    /// The slot's message is gone: its buffer stays for the next one if it
    /// is short.
    fn release(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        entry.since = None;
        entry.holder = NOT_HELD;
        entry.request = None;
        if entry.text.capacity() > KEPT_TEXT_BYTES {
            entry.text = Vec::new();
        } else {
            entry.text.clear();
        }
        self.vacant.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue of `places` member sessions each holding up to `capacity`,
    /// with messages "0", "1", … waiting (origin 1, seq = the number).
    fn queue(places: usize, capacity: u8, messages: u16) -> WorkQueue {
        let mut work = WorkQueue::default();
        for _ in 0..places {
            work.add_place(capacity);
        }
        let now = Instant::now();
        for n in 0..messages {
            work.push_waiting(1, n, n.to_string().as_bytes(), None, now, u64::from(n));
        }
        work
    }

    /// Gives turns until none is due; returns (place, seq) of each.
    fn turns(work: &mut WorkQueue, ticket: &mut u64) -> Vec<(usize, u16)> {
        let mut given = Vec::new();
        while let Some(at) = work.next_turn() {
            *ticket += 1;
            let slot = work.give(at, *ticket);
            given.push((at, work.view(slot, 9).seq));
        }
        given
    }

    #[test]
    fn the_turn_goes_round_from_the_cursor_across_bitset_words() {
        let mut work = queue(130, 1, 200);
        let mut ticket = 0;
        let given = turns(&mut work, &mut ticket);
        let expected: Vec<(usize, u16)> = (0..130).map(|at| (at, at as u16)).collect();
        assert_eq!(given, expected, "one each, in place order");
        assert_eq!((work.held(), work.waiting_len()), (130, 70));
        // Places 100 and 5 settle (the cursor is past the end): the turn
        // wraps to 5 first, then goes on to 100.
        let slot_of = |work: &WorkQueue, seq: u16| {
            (0..work.slots.len() as u32)
                .find(|&s| {
                    work.slots[s as usize].since.is_some() && work.slots[s as usize].seq == seq
                })
                .expect("a message in a slot")
        };
        let (s100, s5) = (slot_of(&work, 100), slot_of(&work, 5));
        assert!(work.settle(s100, 101).is_some());
        assert!(work.settle(s5, 6).is_some());
        assert_eq!(turns(&mut work, &mut ticket), vec![(5, 130), (100, 131)]);
        work.check(130).expect("counts agree");
    }

    #[test]
    fn a_failed_delivery_elsewhere_passes_on_that_message_alone() {
        // One place of prefetch 2 holds messages 0 and 1; 2 waits.
        let mut work = queue(1, 2, 3);
        let mut ticket = 0;
        assert_eq!(turns(&mut work, &mut ticket), vec![(0, 0), (0, 1)]);
        // Message 0's relay failed (ticket 1): it goes back first; the
        // session keeps message 1, which it may be showing.
        assert!(work.drop_delivery(0, 1).is_some());
        assert_eq!((work.held(), work.waiting_len()), (1, 2));
        assert!(work.drop_delivery(0, 1).is_none(), "passed on already");
        work.check(1).expect("counts agree");
        assert_eq!(turns(&mut work, &mut ticket), vec![(0, 0)]);
    }

    #[test]
    fn forgotten_messages_leave_the_line_and_free_their_holders() {
        // Two places of prefetch 2; messages 0..6 (wait numbers = seqs).
        let mut work = queue(2, 2, 6);
        let mut ticket = 0;
        assert_eq!(
            turns(&mut work, &mut ticket),
            vec![(0, 0), (1, 1), (0, 2), (1, 3)]
        );
        // Forget the odd ones: 1 and 3 held by place 1, 5 waiting.
        let mut forgotten = Vec::new();
        work.forget(|wait, _| wait % 2 == 1, &mut forgotten);
        let mut waits: Vec<u64> = forgotten.iter().map(|&(wait, _)| wait).collect();
        waits.sort_unstable();
        assert_eq!(waits, vec![1, 3, 5]);
        assert_eq!((work.held(), work.waiting_len()), (2, 1));
        work.check(2).expect("counts agree");
        // Place 1 holds nothing now: it takes message 4, the only one left.
        assert_eq!(turns(&mut work, &mut ticket), vec![(1, 4)]);
    }

    #[test]
    fn a_session_that_leaves_passes_on_what_it_held_in_the_order_given() {
        let mut work = queue(2, 3, 5);
        let mut ticket = 0;
        // Round robin, one at a time: 0 gets 0, 2, 4; 1 gets 1, 3.
        let given = turns(&mut work, &mut ticket);
        assert_eq!(given, vec![(0, 0), (1, 1), (0, 2), (1, 3), (0, 4)]);
        let since = work.remove_place(0);
        assert!(since.is_some());
        let order: Vec<u16> = work.messages().map(|(_, _, seq, _)| seq).collect();
        assert_eq!(
            order,
            vec![1, 3, 0, 2, 4],
            "held by 1, then 0's back in front"
        );
        // The former place 1 is place 0 now, with room for one more.
        assert_eq!(turns(&mut work, &mut ticket), vec![(0, 0)]);
        work.check(1).expect("counts agree");
    }

    #[test]
    fn an_ack_for_a_message_passed_on_settles_nothing() {
        let mut work = queue(2, 1, 1);
        let slot = work.give(0, 7);
        assert_eq!(work.drop_holder_of(slot, 6), None, "another ticket");
        assert!(work.drop_holder_of(slot, 7).is_some());
        assert!(work.settle(slot, 7).is_none(), "passed on");
        let again = work.give(1, 8);
        assert_eq!(again, slot, "the same message, given again");
        assert!(work.settle(slot, 7).is_none(), "the first holder's ticket");
        let settled = work
            .settle(slot, 8)
            .map(|(wait, request)| (wait, request.is_none()));
        assert_eq!(settled, Some((0, true)));
        assert_eq!((work.held(), work.waiting_len()), (0, 0));
        work.check(2).expect("counts agree");
    }

    #[test]
    fn a_place_inserted_before_others_moves_their_holds_up_one() {
        let mut work = queue(2, 1, 3);
        let mut ticket = 0;
        assert_eq!(turns(&mut work, &mut ticket), vec![(0, 0), (1, 1)]);
        // A session comes online before place 1 (now place 2): it takes the
        // next message, and place 2 still holds message 1.
        work.insert_place(1, 1);
        work.check(3).expect("counts agree");
        assert_eq!(turns(&mut work, &mut ticket), vec![(1, 2)]);
        work.remove_place(2);
        let order: Vec<u16> = work.messages().map(|(_, _, seq, _)| seq).collect();
        assert_eq!(order, vec![0, 2, 1], "held by 0 and 1, then 1 back to wait");
        work.check(2).expect("counts agree");
    }

    #[test]
    fn a_skipped_session_takes_turns_again_once_it_settles_one() {
        let mut work = queue(2, 2, 4);
        let mut ticket = 0;
        work.skip(0);
        assert_eq!(turns(&mut work, &mut ticket), vec![(1, 0), (1, 1)]);
        let slot = (0..work.slots.len() as u32)
            .find(|&s| work.slots[s as usize].seq == 0)
            .expect("message 0");
        assert!(work.settle(slot, 1).is_some());
        // Place 1 has room again, and the turn is past it: round to 0,
        // which is still passed over (it settled nothing), then 1.
        assert_eq!(turns(&mut work, &mut ticket), vec![(1, 2)]);
    }
}
