//! Fuzz target for what a node reads from Redis (`evchat::cluster`): the
//! bytes are one message on a node's own channel (a batch from another
//! node) and one on the change channel.
//!
//! * Neither parser panics, whatever the bytes.
//! * A batch is accepted whole or not at all, and one that is accepted is
//!   its bytes: written again record by record, it gives the same bytes
//!   (nothing in it is ignored or guessed).
//! * A change names only client ids (room ids for a room's), and a shown
//!   or member name is at most 24 bytes of the name rule.
//! * A reply read off the subscription's socket (the same bytes), and an
//!   answer read off the publishing connection, takes no more than is
//!   there, and parses the same from exactly its own bytes.
#![no_main]

use evchat::cluster::Event;
use evchat::cluster::batch::{BatchWriter, FLUSH_AT, Record, parse};
use evchat::cluster::redis::parse_change;
use evchat::cluster::{publisher, subscription};
use evchat::proto::ext::ROOM_IDS;
use evchat::proto::{EMITTER_IDS, EXHIBITOR_IDS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((from, records)) = parse(data) {
        assert!(data.len() <= 2 * FLUSH_AT);
        let mut again = BatchWriter::new(from);
        for record in &records {
            match record {
                Record::Relay { relay, frame } => again.push_relay(*relay, frame),
                Record::Ack { relay, ok } => again.push_single_ack(*relay, *ok),
                Record::Acks { first, count, ok } => again.push_ack_run(*first, *count, *ok),
                Record::Refused { relay } => again.push_refused(*relay),
                Record::Pair(pair) => again.push_pair(*pair),
                Record::Waited {
                    relay,
                    stored_ms,
                    roles,
                    name,
                    frame,
                } => again.push_waited(*relay, *stored_ms, *roles, *name, frame),
                Record::Said { frame } => again.push_said(frame),
                Record::Queued {
                    relay,
                    exhibitor,
                    frame,
                } => again.push_queued(*relay, *exhibitor, frame),
            }
        }
        assert_eq!(again.finish().0, data, "a batch is its bytes");
    }
    let client = |id| EMITTER_IDS.contains(&id) || EXHIBITOR_IDS.contains(&id);
    match parse_change(data) {
        Some(Event::Held { id, .. } | Event::Freed { id, .. }) => assert!(client(id)),
        Some(Event::Shown { id, name, .. }) => {
            assert!(client(id));
            assert!(name.len() <= 24 && name.is_ascii());
        }
        Some(Event::RoomJoined {
            id,
            spelling,
            member,
            ..
        }) => {
            assert!(ROOM_IDS.contains(&id));
            assert!(spelling.len() <= 24 && member.len() <= 24);
        }
        Some(Event::RoomLeft { id, member }) => {
            assert!(ROOM_IDS.contains(&id));
            assert!(member.len() <= 24 && member.is_ascii());
        }
        Some(Event::Down { .. }) | None => {}
        Some(other) => panic!("a change parsed as {other:?}"),
    }
    if let Ok(Some((reply, used))) = subscription::parse(data) {
        assert!(used <= data.len());
        let again = subscription::parse(&data[..used]).expect("its own bytes parse");
        assert_eq!(again, Some((reply, used)));
    }
    if let Ok(Some((count, used))) = publisher::parse_count(data) {
        assert!(count >= 0 && used <= data.len());
        let again = publisher::parse_count(&data[..used]).expect("its own bytes parse");
        assert_eq!(again, Some((count, used)));
    }
});
