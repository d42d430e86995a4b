//! Waiting messages on a node of several (CLUSTER.md, "Rooms across
//! nodes", TELL): the node a TELL was told on keeps it; when an exhibitor
//! on another node shows its addressee's name, the messages waiting go
//! there, each in a WAITED record, and each is settled by that node's
//! answer (or waits here again when that node fails it). A WAITED record
//! from another node is sent to its exhibitor here as any waiting message
//! is. Plain data in, the [`Outbox`] out; the engine is never seen.

use crate::proto::{ClientId, Frame, FrameView, is_exhibitor_id};
use crate::router::{NodeRef, Outbox, Purpose, RoomEvent, Router};
use bytes::Bytes;
use std::time::Instant;
use tracing::{debug, info};

/// A waiting message for an exhibitor on another node, as the loop
/// carries it: when it was stored, who told it (name and roles, as
/// stored), and MSG(teller, the exhibitor, 0, text).
#[derive(Debug)]
pub struct RemoteLetter<'a> {
    pub stored_ms: u64,
    pub roles: u8,
    pub name: Option<&'a str>,
    pub frame: &'a FrameView<'a>,
}

impl Router {
    /// The exhibitor `id` of node `node` shows `name`: the messages waiting
    /// here for that name, if none is out already, go to it.
    pub fn remote_named(
        &mut self,
        id: ClientId,
        node: NodeRef,
        name: &str,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if self.waiting.by_name.is_empty() || !is_exhibitor_id(id) {
            return;
        }
        let key = name.to_ascii_lowercase();
        let Some(letters) = self.waiting.by_name.get_mut(key.as_str()) else {
            return;
        };
        if letters.any_out() {
            return;
        }
        let sending: Vec<_> = letters
            .queue
            .iter_mut()
            .map(|letter| {
                letter.away = Some(node);
                let name = letter.name.clone();
                let said = (letter.origin, letter.text.clone());
                (letter.wait, letter.time_ms, letter.roles, name, said)
            })
            .collect();
        for (wait, stored_ms, roles, name, (origin, text)) in &sending {
            let wire = Frame::msg(*origin, id, 0, text.clone())
                .expect("a waiting text fits a MSG")
                .to_bytes();
            let (frame, _) = FrameView::parse(&wire).ok().flatten().expect("a whole MSG");
            let letter = RemoteLetter {
                stored_ms: *stored_ms,
                roles: *roles,
                name: name.as_deref(),
                frame: &frame,
            };
            self.relay_waited(node, *wait, &letter, now, out);
        }
        info!(
            node,
            id,
            messages = sending.len(),
            "waiting messages sent to another node"
        );
    }

    /// The node waiting message `wait` went to answered it (`ok`: its
    /// exhibitor did, OK or ERRO, the latter by a REFUSED ACK) or failed it
    /// (the node gone or silent, the exhibitor gone): settled, or waiting
    /// here again, and sent at once to a session
    /// of the name online here, if one is (it may have signed in while the
    /// message was away).
    pub(in crate::router) fn waited_away_settled(
        &mut self,
        wait: u64,
        ok: bool,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let found = self.waiting.by_name.iter_mut().find_map(|(key, letters)| {
            let at = letters
                .queue
                .iter()
                .position(|l| l.wait == wait && l.away.is_some())?;
            Some((key.clone(), at))
        });
        let Some((key, at)) = found else {
            return;
        };
        let letters = self.waiting.by_name.get_mut(&key).expect("found above");
        if !ok {
            letters.queue[at].away = None;
            debug!(wait, "a waiting message sent away waits again");
            if letters.queue.iter().all(|l| l.away.is_none()) {
                let here = self.ids.exhibitors.iter().map(|&(_, c)| c).find(|&c| {
                    self.session(c)
                        .is_some_and(|s| !s.leaving && s.member_key() == Some(&*key))
                });
                if let Some(conn) = here {
                    self.deliver_waiting(conn, now, out);
                }
            }
            return;
        }
        let letter = letters.queue.remove(at).expect("found above");
        letters.bytes -= letter.text.len();
        if letters.queue.is_empty() {
            self.waiting.by_name.remove(&key);
        }
        out.room_event(&RoomEvent::Settled { wait });
    }

    /// A waiting message from node `from` (relay `relay`) for the
    /// exhibitor `letter.frame.dest` here: sent to it as a waiting message
    /// is, and answered with one ACK once it answers (REFUSED for its ERRO,
    /// which settles the message as on one node); ERRO (a failure: it
    /// waits again) at once when no opted-in exhibitor holds that id here.
    pub fn waited_relayed(
        &mut self,
        from: NodeRef,
        relay: u64,
        letter: &RemoteLetter<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let frame = letter.frame;
        let conn = self.ids.get(frame.dest).filter(|&c| {
            self.session(c).is_some_and(|s| {
                !s.leaving
                    && matches!(s.role, crate::router::Role::Exhibitor { .. })
                    && s.member_key().is_some()
            })
        });
        let Some(conn) = conn else {
            debug!(
                from,
                dest = frame.dest,
                "waiting message for no exhibitor here"
            );
            out.relay_ack(from, relay, false);
            return;
        };
        let key = self.receiving_refusable(from, relay);
        let deadline = self.timeline.after(now);
        let text = Bytes::copy_from_slice(frame.text().unwrap_or_default());
        let said = (frame.origin, letter.name, letter.roles, text);
        let purpose = Purpose::Relayed { key };
        self.send_letter(conn, letter.stored_ms, said, purpose, deadline, out);
        self.note_deadline(deadline.at);
    }
}
