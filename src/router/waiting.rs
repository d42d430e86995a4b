//! Messages to names (PROTOCOL.md, "Waiting messages"): a TELL to a name
//! online goes to its exhibitors as a MSG; to an offline name known to the
//! server (`names.rs`) it is stored, when the server keeps history,
//! until a session of the name identifies, then sent behind a WAITING frame
//! and settled by its answer. Like the rest of the router: no disk and no
//! clock; the loop hands in the wall-clock time a message is stored at and
//! records what it is told through [`Outbox::room_event`].

use super::{ConnId, Deadline, NodeRef, Outbox, Purpose, RoomEvent, Router, sender};
use crate::proto::ext::{ExtFrame, ROLE_EMIT, RoomAck, RoomCode, Waiting as WaitingFrame};
use crate::proto::{ClientId, Frame, FrameView, Header, SERVER_ID};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;
use tracing::{debug, info};

mod across;
pub use across::RemoteLetter;

/// The bounds on what waits for one name (each a server flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TellLimits {
    /// Messages waiting for one name (`--tell-max`).
    pub max: usize,
    /// Bytes of text waiting for one name (`--tell-max-bytes`).
    pub max_bytes: usize,
    /// Without accounts: names seen that count as known, the one seen
    /// longest ago forgotten first (`--tell-names`).
    pub names: usize,
}

impl Default for TellLimits {
    fn default() -> TellLimits {
        TellLimits {
            max: 100,
            max_bytes: 1 << 20,
            names: 100_000,
        }
    }
}

/// A message for a name as a history recovered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recalled {
    pub wait: u64,
    /// The teller's id when it told.
    pub origin: ClientId,
    /// The addressee, lower case.
    pub to: String,
    /// The teller's name and roles then.
    pub name: Option<String>,
    pub roles: u8,
    pub text: Vec<u8>,
    /// When it was stored (ms since the Unix epoch).
    pub time_ms: u64,
}

/// One message waiting for a name.
#[derive(Debug)]
struct Letter {
    wait: u64,
    origin: ClientId,
    name: Option<Box<str>>,
    roles: u8,
    text: Bytes,
    time_ms: u64,
    /// The session it was sent to and that has not answered yet.
    out_to: Option<ConnId>,
    /// The other node it was sent to, whose answer has not come yet
    /// (CLUSTER.md, "Rooms across nodes", TELL).
    away: Option<NodeRef>,
}

/// What waits for one name.
#[derive(Debug, Default)]
struct Letters {
    queue: VecDeque<Letter>,
    bytes: usize,
}

impl Letters {
    /// Whether one of them is out already (to a session here, or to
    /// another node): the rest go after it is settled, in order.
    fn any_out(&self) -> bool {
        self.queue
            .iter()
            .any(|l| l.out_to.is_some() || l.away.is_some())
    }
}

/// Every name's waiting messages.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// Messages are stored (the server keeps history).
    stores: bool,
    limits: TellLimits,
    by_name: HashMap<Box<str>, Letters>,
}

impl Waiting {
    pub(super) fn new() -> Waiting {
        Waiting::default()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Messages wait for the name `key` (lower case).
    pub(super) fn has_letters_for(&self, key: &str) -> bool {
        self.by_name.contains_key(key)
    }
}

impl Router {
    /// With history: TELLs to offline names known to the server are stored
    /// within `limits` (without, they are refused: ERRO).
    pub fn keep_waiting(&mut self, limits: TellLimits) {
        self.waiting.stores = true;
        self.waiting.limits = limits;
        self.keep_names_seen(limits.names);
    }

    /// A message for a name from before this start (after
    /// [`Router::keep_waiting`]), oldest first. Kept whatever the bounds:
    /// it was accepted within them.
    pub fn recall_waiting(&mut self, letter: Recalled) {
        self.next_wait = self.next_wait.max(letter.wait + 1);
        let letters = self
            .waiting
            .by_name
            .entry(letter.to.into_boxed_str())
            .or_default();
        letters.bytes += letter.text.len();
        letters.queue.push_back(Letter {
            wait: letter.wait,
            origin: letter.origin,
            name: letter.name.map(String::into_boxed_str),
            roles: letter.roles,
            text: Bytes::from(letter.text),
            time_ms: letter.time_ms,
            out_to: None,
            away: None,
        });
    }

    /// Every message waiting for a name, as [`Router::room_snapshot`]
    /// gives it.
    pub(super) fn waiting_snapshot(&self, emit: &mut impl FnMut(&RoomEvent<'_>)) {
        for (key, letters) in &self.waiting.by_name {
            for letter in &letters.queue {
                emit(&RoomEvent::Waiting {
                    wait: letter.wait,
                    origin: letter.origin,
                    seq: 0,
                    room: 0,
                    to: key,
                    sender: super::Sender {
                        name: letter.name.as_deref(),
                        roles: letter.roles,
                    },
                    text: &letter.text,
                    stored_ms: Some(letter.time_ms),
                });
            }
        }
    }

    /// TELL from `conn` (PROTOCOL.md, "Waiting messages"): `name` is the
    /// addressee if it follows the name rule (None: code 1); `now_ms` the
    /// wall-clock time a stored message is stamped with.
    #[allow(clippy::too_many_arguments)]
    pub fn tell_request(
        &mut self,
        conn: ConnId,
        header: Header,
        name: Option<&str>,
        text: Bytes,
        now_ms: u64,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if !self.room_request_from(conn, header, now, out) {
            return;
        }
        let seq = header.seq;
        if self.session(conn).is_some_and(|s| s.roles & ROLE_EMIT == 0) {
            debug!(conn, "TELL without emit refused");
            return self.reply(conn, seq, false, now, out);
        }
        let Some(name) = name else {
            return self.answer_room_request(conn, seq, Err(RoomCode::BadName), now, out);
        };
        let key: Box<str> = name.to_ascii_lowercase().into();
        let mut targets = std::mem::take(&mut self.targets);
        targets.extend(self.ids.exhibitors.iter().map(|&(_, c)| c).filter(|&c| {
            self.session(c)
                .is_some_and(|s| !s.leaving && s.member_key() == Some(&*key))
        }));
        // On a node of several, its exhibitors online elsewhere too
        // (CLUSTER.md, "Rooms across nodes", TELL).
        let elsewhere: Vec<(ClientId, NodeRef)> = if self.remote.enabled {
            let named = self.remote.named_exhibitors();
            named
                .filter(|(_, _, name)| name.eq_ignore_ascii_case(&key))
                .map(|(id, node, _)| (id, node))
                .collect()
        } else {
            Vec::new()
        };
        if !targets.is_empty() || !elsewhere.is_empty() {
            self.tell_online(conn, header, &targets, &elsewhere, text, now, out);
            targets.clear();
            self.targets = targets;
            return;
        }
        self.targets = targets;
        if !self.waiting.stores {
            debug!(conn, "TELL to a name offline, no history: refused");
            return self.reply(conn, seq, false, now, out);
        }
        if !self.knows_name(&key) {
            return self.answer_room_request(conn, seq, Err(RoomCode::UnknownName), now, out);
        }
        let limits = self.waiting.limits;
        let letters = self.waiting.by_name.get(&key);
        let (count, bytes) = letters.map_or((0, 0), |l| (l.queue.len(), l.bytes));
        if count >= limits.max || bytes + text.len() > limits.max_bytes {
            debug!(conn, count, bytes, "TELL over the name's waiting bound");
            return self.answer_room_request(conn, seq, Err(RoomCode::TooManyWaiting), now, out);
        }
        let wait = self.next_wait;
        self.next_wait += 1;
        let teller = sender(&self.sessions, conn);
        let held = out.room_event(&RoomEvent::Waiting {
            wait,
            origin: header.origin,
            seq,
            room: 0,
            to: &key,
            sender: teller,
            text: &text,
            stored_ms: None,
        });
        let letter = Letter {
            wait,
            origin: header.origin,
            name: teller.name.map(Into::into),
            roles: teller.roles,
            text,
            time_ms: now_ms,
            out_to: None,
            away: None,
        };
        let letters = self.waiting.by_name.entry(key).or_default();
        letters.bytes += letter.text.len();
        letters.queue.push_back(letter);
        info!(conn, wait, "TELL stored for a name offline");
        let id = self.session(conn).map_or(0, |s| s.id);
        let ack = ExtFrame::RoomAck(RoomAck {
            origin: SERVER_ID,
            dest: id,
            seq,
            code: RoomCode::Stored as u8,
            flags: 0,
            room: 0,
            members: 0,
            name: name.as_bytes().to_vec(),
        });
        self.reply_ext_after(conn, seq, ack, held, now, out);
    }

    /// A TELL to a name online: MSG(teller, target, the TELL's seq) to each
    /// of its exhibitors, here (`targets`) and on other nodes (`elsewhere`:
    /// each id relayed to its node as one target), answered by rule 4 as a
    /// MSG.
    #[allow(clippy::too_many_arguments)]
    fn tell_online(
        &mut self,
        conn: ConnId,
        header: Header,
        targets: &[ConnId],
        elsewhere: &[(ClientId, NodeRef)],
        text: Bytes,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let first = match targets.first() {
            Some(&target) => self.session(target).map_or(0, |s| s.id),
            None => elsewhere[0].0,
        };
        let wire = Frame::msg(header.origin, first, header.seq, text.clone())
            .expect("a TELL's text fits a MSG")
            .to_bytes();
        let (view, _) = FrameView::parse(&wire).ok().flatten().expect("a whole MSG");
        let held = out.accepted(&view, || sender(&self.sessions, conn));
        let waits = (targets.len() + elsewhere.len()) as u32 + u32::from(held.is_some());
        let request = self.push_reply(conn, header.seq, waits, false);
        if let Some(number) = held {
            self.hold_for_record(number, request);
        }
        for &(id, node) in elsewhere {
            let wire = Frame::msg(header.origin, id, header.seq, text.clone())
                .expect("a TELL's text fits a MSG")
                .to_bytes();
            let (view, _) = FrameView::parse(&wire).ok().flatten().expect("a whole MSG");
            self.relay_to(node, request, &view, now, out);
        }
        let deadline = self.timeline.after(now);
        if self.tellers > 0 && !targets.is_empty() {
            self.tell_names(targets, &[header.origin], deadline, out);
        }
        for &target in targets {
            let session = self.session_mut(target).expect("targets are live");
            let msg = Frame::msg(header.origin, session.id, header.seq, text.clone())
                .expect("a TELL's text fits a MSG");
            out.send(target, &msg);
            session
                .awaiting_ack
                .push(header.seq, deadline.due, Purpose::Request(request));
        }
        if !targets.is_empty() {
            self.note_deadline(deadline.at);
        }
        self.flush_replies(conn, now, out);
    }

    /// The opted-in exhibitor `conn` just identified (after its replays):
    /// the messages waiting for its name, oldest first, each as WAITING,
    /// WHO when needed, and the MSG. Unless another session of the name
    /// holds them.
    pub(super) fn deliver_waiting(&mut self, conn: ConnId, now: Instant, out: &mut impl Outbox) {
        if self.waiting.by_name.is_empty() {
            return;
        }
        let Some(key) = self
            .session(conn)
            .and_then(|s| s.member_key().map(Box::<str>::from))
        else {
            return;
        };
        let Some(letters) = self.waiting.by_name.get_mut(&key) else {
            return;
        };
        if letters.any_out() {
            return;
        }
        let mut sending = Vec::with_capacity(letters.queue.len());
        for letter in &mut letters.queue {
            letter.out_to = Some(conn);
            sending.push((
                letter.wait,
                letter.origin,
                letter.name.clone(),
                letter.roles,
                letter.text.clone(),
                letter.time_ms,
            ));
        }
        let deadline = self.timeline.after(now);
        for (wait, origin, name, roles, text, time_ms) in sending.iter().cloned() {
            let said = (origin, name.as_deref(), roles, text);
            self.send_letter(conn, time_ms, said, Purpose::Waited { wait }, deadline, out);
        }
        debug!(conn, messages = sending.len(), "waiting messages sent");
        self.note_deadline(deadline.at);
    }

    /// Sends the exhibitor `conn` one waiting message, as WAITING(`time_ms`),
    /// WHO when needed, and MSG(teller, `conn`'s id, the server's seq)
    /// acknowledged under `purpose`.
    fn send_letter(
        &mut self,
        conn: ConnId,
        time_ms: u64,
        (origin, name, roles, text): (ClientId, Option<&str>, u8, Bytes),
        purpose: Purpose,
        deadline: Deadline,
        out: &mut impl Outbox,
    ) {
        let session = self.session_mut(conn).expect("delivered to a live session");
        let id = session.id;
        let seq = session.seq.next_seq();
        session
            .awaiting_ack
            .push(seq, deadline.due, Purpose::Replay);
        out.send_ext(
            conn,
            &ExtFrame::Waiting(WaitingFrame {
                origin: SERVER_ID,
                dest: id,
                seq,
                time_ms,
            }),
        );
        self.tell_as_said(conn, origin, name, roles, deadline, out);
        let session = self.session_mut(conn).expect("delivered to a live session");
        let seq = session.seq.next_seq();
        out.send(
            conn,
            &Frame::msg(origin, id, seq, text).expect("a waiting text fits a MSG"),
        );
        session.awaiting_ack.push(seq, deadline.due, purpose);
    }

    /// `conn` answered the waiting message `wait`: it is settled. Out of
    /// line: its arm in the ack path cost every plain ack 2 instructions
    /// inlined (callgrind, 1:1).
    #[inline(never)]
    pub(super) fn waited_answered(&mut self, conn: ConnId, wait: u64, out: &mut impl Outbox) {
        let Some(key) = self
            .session(conn)
            .and_then(|s| s.member_key().map(Box::<str>::from))
        else {
            return;
        };
        let Some(letters) = self.waiting.by_name.get_mut(&key) else {
            return;
        };
        let Some(at) = letters
            .queue
            .iter()
            .position(|l| l.wait == wait && l.out_to == Some(conn))
        else {
            return;
        };
        let letter = letters.queue.remove(at).expect("found above");
        letters.bytes -= letter.text.len();
        if letters.queue.is_empty() {
            self.waiting.by_name.remove(&key);
        }
        out.room_event(&RoomEvent::Settled { wait });
    }

    /// The session `conn` of the name `key` is gone: what it was sent and
    /// did not answer waits again for the next session (at-least-once).
    pub(super) fn waiting_dropped(&mut self, conn: ConnId, key: &str) {
        if let Some(letters) = self.waiting.by_name.get_mut(key) {
            for letter in &mut letters.queue {
                if letter.out_to == Some(conn) {
                    letter.out_to = None;
                }
            }
        }
    }
}
