//! The bytes one node publishes to another in one turn (CLUSTER.md,
//! "Messages between nodes"): a header naming the sender's incarnation,
//! then relayed client frames and acknowledgements of relays. Pure bytes
//! both ways; a batch that does not parse is refused whole.
//!
//! ```text
//! 'E' 1 | sender incarnation u64 BE | record*
//! record = 1 | relay u64 BE | frame length u32 BE | frame   (RELAY: a MSG or CREQ)
//!        | 2 | relay u64 BE | ok u8 (1 OK, 0 ERRO, 2 REFUSED) (ACK; REFUSED: the
//!                                       target itself answered ERRO)
//!        | 10 | first relay u64 BE | count u32 BE | ok u8 (1 OK, 0 ERRO)
//!                                       (ACKS: relays first .. first + count - 1,
//!                                       count >= 1, all answered alike)
//!        | 3 | token u64 BE | exhibitor u16 | emitter u16   (PAIR: may my emitter pair?)
//!        | 4 | token u64 BE | ok u8                         (PAIRED: the answer)
//!        | 5 | exhibitor u16 | emitter u16                  (DISMISS: its emitter is gone)
//!        | 6 | exhibitor u16 | emitter u16                  (UNPAIRED: its exhibitor is gone)
//!        | 7 | exhibitor u16 | emitter u16                  (UNPAIR: the pairing was given up)
//!        | 8 | relay u64 BE | stored ms u64 BE | roles u8 | NL u8 | NL bytes of name
//!            | frame length u32 BE | MSG(teller, addressee's exhibitor, 0, text)
//!                                       (WAITED: a waiting message for an exhibitor here)
//!        | 16 | frame length u32 BE | MSG(origin, room id, seq, text)
//!                                       (SAID: a room's message to keep, no answer)
//!        | 9 | relay u64 BE | exhibitor u16 | frame length u32 | MSG(origin, queue room, seq, text)
//!                                       (QUEUED: a queue message for that exhibitor here)
//! ```

use super::NodeId;
use super::redis::follows_name_rule;
use crate::proto::ext::is_room_id;
use crate::proto::{Encode, FrameView, Kind, is_exhibitor_id};
use bytes::BytesMut;

const MAGIC: u8 = b'E';
const VERSION: u8 = 1;
const RELAY: u8 = 1;
const ACK: u8 = 2;
const PAIR: u8 = 3;
const PAIRED: u8 = 4;
const DISMISS: u8 = 5;
const UNPAIRED: u8 = 6;
const UNPAIR: u8 = 7;
const WAITED: u8 = 8;
/// Far from the others, so that records added beside 8 do not meet it.
const SAID: u8 = 16;
const QUEUED: u8 = 9;
const ACKS: u8 = 10;
/// An ACKS record's bytes: tag, first relay, count, ok.
const ACKS_LEN: usize = 1 + 8 + 4 + 1;
/// The ACK value for a target that answered ERRO (1 is OK, 0 a failure).
const REFUSED: u8 = 2;
/// Header bytes: magic, version, incarnation.
const HEADER: usize = 2 + 8;
/// A batch grows to about this size before it is published early (and a
/// received one larger than twice this is refused unread).
pub const FLUSH_AT: usize = 1 << 20;

/// The most a batch's buffer starts with: beyond this, doubling copies
/// little beside the writing, and a buffer this small stays off `mmap`.
const START_AT_MOST: usize = 64 << 10;
/// The fewest bytes a record takes (a pair notice: tag and two ids), and
/// a relay (tag, relay number, length and a frame's 8-byte header): what
/// bounds the room made ahead for records and relay numbers.
const MIN_RECORD: usize = 1 + 2 + 2;
const MIN_RELAY: usize = 1 + 8 + 4 + 8;

/// One record of a batch, borrowing from it.
#[derive(Debug)]
pub enum Record<'a> {
    /// A client's MSG or CREQ to deliver; `relay` names it in the ACK.
    Relay { relay: u64, frame: FrameView<'a> },
    /// The outcome of relay `relay` that this node sent the batch's sender.
    Ack { relay: u64, ok: bool },
    /// The same outcome for `count` relays in a row from `first` (the
    /// sender's exhibitors answer in order, so acks come in runs).
    Acks { first: u64, count: u32, ok: bool },
    /// Relay `relay` (a QUEUED or WAITED one) reached its target, which
    /// answered ERRO: not a failure, an answer (an ACK whose value is 2).
    Refused { relay: u64 },
    /// A pair across nodes (CLUSTER.md, "Pairs across nodes").
    Pair(PairRecord),
    /// A message that waited for a name, for the exhibitor `frame.dest`
    /// here (CLUSTER.md, "Rooms across nodes", TELL): stored at
    /// `stored_ms`, told by `name` (None: no name) with `roles`; `relay`
    /// names it in the ACK.
    Waited {
        relay: u64,
        stored_ms: u64,
        roles: u8,
        name: Option<&'a str>,
        frame: FrameView<'a>,
    },
    /// A message said in the room `frame.dest` on the sender's node, for
    /// this node to keep for the room's members away (CLUSTER.md,
    /// "History"); nothing answers it.
    Said { frame: FrameView<'a> },
    /// A queue room's message from its home, for the member session
    /// `exhibitor` here (CLUSTER.md, "Queues across nodes"): the MSG as
    /// it came to the room; `relay` names it in the ACK.
    Queued {
        relay: u64,
        exhibitor: u16,
        frame: FrameView<'a>,
    },
}

/// The records that make and end a pair whose halves are on two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairRecord {
    /// The sender's emitter `emitter` asks to pair with `exhibitor` here.
    Pair {
        token: u64,
        exhibitor: u16,
        emitter: u16,
    },
    /// The answer to the sender's PAIR `token`.
    Paired { token: u64, ok: bool },
    /// The emitter `emitter` (the sender's) is gone: `exhibitor` leaves.
    Dismiss { exhibitor: u16, emitter: u16 },
    /// The exhibitor `exhibitor` (the sender's) is gone: `emitter` is unpaired.
    Unpaired { exhibitor: u16, emitter: u16 },
    /// The sender gave up pairing `emitter` with `exhibitor`: forget it.
    Unpair { exhibitor: u16, emitter: u16 },
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("not an evchat batch (magic or version)")]
    BadHeader,
    #[error("unknown record tag {0}")]
    UnknownRecord(u8),
    #[error("record cut short")]
    Short,
    #[error("relayed bytes are not one whole MSG or CREQ")]
    BadFrame,
    #[error("a waiting message's teller is not a name")]
    BadName,
    #[error("a room's message to keep is not to a room id")]
    NotARoom,
    #[error("a queue message is not for an exhibitor, or not to a room")]
    BadQueued,
    #[error("a run of acks is empty, runs past the last relay number, or says neither OK nor ERRO")]
    BadAckRun,
}

/// A batch being written for one destination.
#[derive(Debug)]
pub struct BatchWriter {
    buf: BytesMut,
    /// The relays it carries, failed together if it cannot be delivered.
    relays: Vec<u64>,
    /// A run of acks not yet in `buf`: the next ack alike extends it, any
    /// other record writes it first.
    acks: Option<AckRun>,
}

/// An ACKS record being gathered.
#[derive(Debug, Clone, Copy)]
struct AckRun {
    first: u64,
    count: u32,
    ok: bool,
}

impl BatchWriter {
    pub fn new(from: NodeId) -> BatchWriter {
        BatchWriter::with_capacity(from, 256, 0)
    }

    /// A writer whose buffer takes `capacity` bytes (at most
    /// [`START_AT_MOST`]) and its list `relays` relay numbers before either
    /// grows: the loop passes the last batch's to the same node, so that a
    /// batch of hundreds of relays is not copied by each doubling.
    pub fn with_capacity(from: NodeId, capacity: usize, relays: usize) -> BatchWriter {
        let mut buf = BytesMut::with_capacity(capacity.clamp(256, START_AT_MOST));
        buf.extend_from_slice(&[MAGIC, VERSION]);
        buf.extend_from_slice(&from.to_be_bytes());
        BatchWriter {
            buf,
            relays: Vec::with_capacity(relays.min(START_AT_MOST / MIN_RELAY)),
            acks: None,
        }
    }

    /// How many relays were written so far.
    pub fn relay_count(&self) -> usize {
        self.relays.len()
    }

    pub fn push_relay(&mut self, relay: u64, frame: &FrameView<'_>) {
        self.write_acks();
        // u32: a MSG with the longest text is 65,545 bytes.
        let len = frame.encoded_len();
        let mut head = [RELAY; 13];
        head[1..9].copy_from_slice(&relay.to_be_bytes());
        head[9..].copy_from_slice(&(len as u32).to_be_bytes());
        // One reservation for the record: this runs once per relay.
        self.buf.reserve(head.len() + len);
        self.buf.extend_from_slice(&head);
        frame.encode_into(&mut self.buf);
        self.relays.push(relay);
    }

    /// A WAITED record; `name` follows the name rule (the teller's, as
    /// stored), `frame` is the MSG.
    pub fn push_waited(
        &mut self,
        relay: u64,
        stored_ms: u64,
        roles: u8,
        name: Option<&str>,
        frame: &FrameView<'_>,
    ) {
        self.write_acks();
        let name = name.unwrap_or_default();
        self.buf.extend_from_slice(&[WAITED]);
        self.buf.extend_from_slice(&relay.to_be_bytes());
        self.buf.extend_from_slice(&stored_ms.to_be_bytes());
        self.buf.extend_from_slice(&[roles, name.len() as u8]);
        self.buf.extend_from_slice(name.as_bytes());
        let len = frame.encoded_len() as u32;
        self.buf.extend_from_slice(&len.to_be_bytes());
        frame.encode_into(&mut self.buf);
        self.relays.push(relay);
    }

    /// A SAID record: `frame` is a MSG to a room id.
    pub fn push_said(&mut self, frame: &FrameView<'_>) {
        self.write_acks();
        let len = frame.encoded_len() as u32;
        self.buf.reserve(5 + len as usize);
        self.buf.extend_from_slice(&[SAID]);
        self.buf.extend_from_slice(&len.to_be_bytes());
        frame.encode_into(&mut self.buf);
    }

    /// A QUEUED record: `frame` is the MSG to the queue room, for the
    /// exhibitor `exhibitor` of the receiving node.
    pub fn push_queued(&mut self, relay: u64, exhibitor: u16, frame: &FrameView<'_>) {
        self.write_acks();
        self.buf.extend_from_slice(&[QUEUED]);
        self.buf.extend_from_slice(&relay.to_be_bytes());
        self.buf.extend_from_slice(&exhibitor.to_be_bytes());
        let len = frame.encoded_len() as u32;
        self.buf.extend_from_slice(&len.to_be_bytes());
        frame.encode_into(&mut self.buf);
        self.relays.push(relay);
    }

    /// The outcome of relay `relay`: the last record grows when it is an
    /// ACKS alike that ends just before `relay`, else a new one starts.
    /// One record per run instead of one per ack is less to publish and to
    /// parse: the emitters' node ran about 85 fewer instructions a delivery
    /// at 1:1 (CLUSTER.md, "Measured again on 2026-12-06"). A node built
    /// before it refuses the batch whole (an unknown record), never reads
    /// it as OK.
    pub fn push_ack(&mut self, relay: u64, ok: bool) {
        if let Some(run) = &mut self.acks
            && run.ok == ok
            && run.count < u32::MAX
            && run.first.checked_add(u64::from(run.count)) == Some(relay)
        {
            run.count += 1;
            return;
        }
        self.write_acks();
        self.acks = Some(AckRun {
            first: relay,
            count: 1,
            ok,
        });
    }

    /// A run of `count` (at least 1) acks from `first`, as one ACKS record
    /// of its own, never merged with another: what a parsed run is written
    /// back as.
    pub fn push_ack_run(&mut self, first: u64, count: u32, ok: bool) {
        self.write_acks();
        self.acks = Some(AckRun { first, count, ok });
        self.write_acks();
    }

    /// Writes the run of acks being gathered, if any, into the buffer.
    fn write_acks(&mut self) {
        if let Some(AckRun { first, count, ok }) = self.acks.take() {
            let mut record = [ACKS; ACKS_LEN];
            record[1..9].copy_from_slice(&first.to_be_bytes());
            record[9..13].copy_from_slice(&count.to_be_bytes());
            record[13] = u8::from(ok);
            self.buf.extend_from_slice(&record);
        }
    }

    /// One ACK record (tag 2) of relay `relay`, as nodes built before ACKS
    /// wrote each ack: such a batch still parses, and is written back so.
    pub fn push_single_ack(&mut self, relay: u64, ok: bool) {
        self.write_acks();
        let mut record = [ACK; 10];
        record[1..9].copy_from_slice(&relay.to_be_bytes());
        record[9] = u8::from(ok);
        self.buf.extend_from_slice(&record);
    }

    /// An ACK of relay `relay` saying its target answered ERRO (value 2).
    /// A node built before it refuses the whole batch (an unknown ACK
    /// value is a fault there), never reads it as OK or as a failure.
    pub fn push_refused(&mut self, relay: u64) {
        self.write_acks();
        let mut record = [ACK; 10];
        record[1..9].copy_from_slice(&relay.to_be_bytes());
        record[9] = REFUSED;
        self.buf.extend_from_slice(&record);
    }

    pub fn push_pair(&mut self, record: PairRecord) {
        self.write_acks();
        let (tag, ids) = match record {
            PairRecord::Pair {
                token,
                exhibitor,
                emitter,
            } => {
                self.buf.extend_from_slice(&[PAIR]);
                self.buf.extend_from_slice(&token.to_be_bytes());
                self.buf.extend_from_slice(&exhibitor.to_be_bytes());
                self.buf.extend_from_slice(&emitter.to_be_bytes());
                return;
            }
            PairRecord::Paired { token, ok } => {
                self.buf.extend_from_slice(&[PAIRED]);
                self.buf.extend_from_slice(&token.to_be_bytes());
                self.buf.extend_from_slice(&[u8::from(ok)]);
                return;
            }
            PairRecord::Dismiss { exhibitor, emitter } => (DISMISS, (exhibitor, emitter)),
            PairRecord::Unpaired { exhibitor, emitter } => (UNPAIRED, (exhibitor, emitter)),
            PairRecord::Unpair { exhibitor, emitter } => (UNPAIR, (exhibitor, emitter)),
        };
        self.buf.extend_from_slice(&[tag]);
        self.buf.extend_from_slice(&ids.0.to_be_bytes());
        self.buf.extend_from_slice(&ids.1.to_be_bytes());
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len() + self.acks.map_or(0, |_| ACKS_LEN)
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.len() == HEADER
    }

    /// The finished bytes, and the relays they carry.
    pub fn finish(mut self) -> (Vec<u8>, Vec<u64>) {
        self.write_acks();
        // The writer's own allocation, handed over rather than copied.
        (Vec::from(self.buf), self.relays)
    }
}

/// Checks a whole batch and returns its sender and records; nothing is
/// returned from a batch with any fault in it.
pub fn parse(bytes: &[u8]) -> Result<(NodeId, Vec<Record<'_>>), BatchError> {
    parse_expecting(bytes, 0)
}

/// [`parse`], with room made for `expected` records first (at most what
/// the batch's bytes can hold): the loop passes the last batch's count, so
/// that a batch of hundreds of records is not copied by each doubling of
/// the list (about 70 instructions a delivery at 1:1 on the emitters'
/// node, CLUSTER.md "Numbers").
pub fn parse_expecting(
    bytes: &[u8],
    expected: usize,
) -> Result<(NodeId, Vec<Record<'_>>), BatchError> {
    if bytes.len() > 2 * FLUSH_AT {
        return Err(BatchError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER || bytes[0] != MAGIC || bytes[1] != VERSION {
        return Err(BatchError::BadHeader);
    }
    let from = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let mut records = Vec::with_capacity(expected.min((bytes.len() - HEADER) / MIN_RECORD));
    let mut rest = &bytes[HEADER..];
    while let Some((&tag, after)) = rest.split_first() {
        if let DISMISS | UNPAIRED | UNPAIR = tag {
            let (exhibitor, after) = take_u16(after)?;
            let (emitter, after) = take_u16(after)?;
            records.push(Record::Pair(match tag {
                DISMISS => PairRecord::Dismiss { exhibitor, emitter },
                UNPAIRED => PairRecord::Unpaired { exhibitor, emitter },
                _ => PairRecord::Unpair { exhibitor, emitter },
            }));
            rest = after;
            continue;
        }
        if tag == SAID {
            let (frame, after) = take_frame(after, &[Kind::Msg])?;
            if !is_room_id(frame.dest) {
                return Err(BatchError::NotARoom);
            }
            records.push(Record::Said { frame });
            rest = after;
            continue;
        }
        let (relay, after) = take_u64(after)?;
        match tag {
            PAIR => {
                let (exhibitor, after) = take_u16(after)?;
                let (emitter, after) = take_u16(after)?;
                records.push(Record::Pair(PairRecord::Pair {
                    token: relay,
                    exhibitor,
                    emitter,
                }));
                rest = after;
            }
            PAIRED => {
                let (&ok, after) = after.split_first().ok_or(BatchError::Short)?;
                if ok > 1 {
                    return Err(BatchError::Short);
                }
                records.push(Record::Pair(PairRecord::Paired {
                    token: relay,
                    ok: ok == 1,
                }));
                rest = after;
            }
            RELAY => {
                let (frame, after) = take_frame(after, &[Kind::Msg, Kind::Creq])?;
                records.push(Record::Relay { relay, frame });
                rest = after;
            }
            WAITED => {
                let (stored_ms, after) = take_u64(after)?;
                let (&[roles, len], after) =
                    after.split_first_chunk::<2>().ok_or(BatchError::Short)?;
                let named = after.get(..usize::from(len)).ok_or(BatchError::Short)?;
                let name = std::str::from_utf8(named).map_err(|_| BatchError::BadName)?;
                if !(name.is_empty() || follows_name_rule(name)) {
                    return Err(BatchError::BadName);
                }
                let (frame, after) = take_frame(&after[usize::from(len)..], &[Kind::Msg])?;
                records.push(Record::Waited {
                    relay,
                    stored_ms,
                    roles,
                    name: (!name.is_empty()).then_some(name),
                    frame,
                });
                rest = after;
            }
            QUEUED => {
                let (exhibitor, after) = take_u16(after)?;
                let (frame, after) = take_frame(after, &[Kind::Msg])?;
                if !is_exhibitor_id(exhibitor) || !is_room_id(frame.dest) {
                    return Err(BatchError::BadQueued);
                }
                records.push(Record::Queued {
                    relay,
                    exhibitor,
                    frame,
                });
                rest = after;
            }
            ACKS => {
                let (count, after) = after.split_first_chunk::<4>().ok_or(BatchError::Short)?;
                let count = u32::from_be_bytes(*count);
                let (&ok, after) = after.split_first().ok_or(BatchError::Short)?;
                let last = u64::from(count)
                    .checked_sub(1)
                    .and_then(|more| relay.checked_add(more));
                if last.is_none() || ok > 1 {
                    return Err(BatchError::BadAckRun);
                }
                records.push(Record::Acks {
                    first: relay,
                    count,
                    ok: ok == 1,
                });
                rest = after;
            }
            ACK => {
                let (&ok, after) = after.split_first().ok_or(BatchError::Short)?;
                records.push(match ok {
                    0 | 1 => Record::Ack { relay, ok: ok == 1 },
                    REFUSED => Record::Refused { relay },
                    _ => return Err(BatchError::Short),
                });
                rest = after;
            }
            other => return Err(BatchError::UnknownRecord(other)),
        }
    }
    Ok((from, records))
}

/// A frame length (u32) and a whole frame of one of `kinds`. Inlined: its
/// frame, returned through the stack, was copied back with loads the
/// stores just made could not forward (BENCHMARKS.md, "Stalls on the way
/// across").
#[inline(always)]
fn take_frame<'a>(
    bytes: &'a [u8],
    kinds: &[Kind],
) -> Result<(FrameView<'a>, &'a [u8]), BatchError> {
    let (len, after) = bytes.split_first_chunk::<4>().ok_or(BatchError::Short)?;
    let len = u32::from_be_bytes(*len) as usize;
    let framed = after.get(..len).ok_or(BatchError::Short)?;
    match FrameView::parse(framed) {
        Ok(Some((frame, used))) if used == len && kinds.contains(&frame.kind) => {
            Ok((frame, &after[len..]))
        }
        _ => Err(BatchError::BadFrame),
    }
}

fn take_u16(bytes: &[u8]) -> Result<(u16, &[u8]), BatchError> {
    let (head, rest) = bytes.split_first_chunk::<2>().ok_or(BatchError::Short)?;
    Ok((u16::from_be_bytes(*head), rest))
}

fn take_u64(bytes: &[u8]) -> Result<(u64, &[u8]), BatchError> {
    let (head, rest) = bytes.split_first_chunk::<8>().ok_or(BatchError::Short)?;
    Ok((u64::from_be_bytes(*head), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Frame;

    fn msg() -> Vec<u8> {
        Frame::msg(1, 4096, 7, bytes::Bytes::from_static(b"hi"))
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[test]
    fn room_made_ahead_changes_no_record_and_is_bounded_by_the_bytes() {
        let wire = msg();
        let (view, _) = FrameView::parse(&wire).unwrap().unwrap();
        let mut w = BatchWriter::with_capacity(42, 0, usize::MAX);
        assert!(w.relays.capacity() <= START_AT_MOST / MIN_RELAY);
        w.push_relay(3, &view);
        w.push_ack(9, false);
        w.push_pair(PairRecord::Dismiss {
            exhibitor: 4096,
            emitter: 1,
        });
        assert_eq!(w.relay_count(), 1);
        let (bytes, _) = w.finish();
        let plain = format!("{:?}", parse(&bytes).unwrap());
        for expected in [0, 1, 3, 4, 1000, usize::MAX] {
            let (from, records) = parse_expecting(&bytes, expected).unwrap();
            assert_eq!(format!("{:?}", (from, &records)), plain, "{expected}");
            // At most one record a pair notice's five bytes, whatever asked.
            let most = (bytes.len() - HEADER) / MIN_RECORD;
            assert!(records.capacity() >= expected.min(most), "{expected}");
            assert!(records.capacity() <= most.max(4), "{expected}");
        }
        assert!(parse_expecting(&bytes[..bytes.len() - 1], 1000).is_err());
    }

    #[test]
    fn a_batch_round_trips_relays_and_acks() {
        let wire = msg();
        let (view, _) = FrameView::parse(&wire).unwrap().unwrap();
        let mut w = BatchWriter::new(42);
        assert!(w.is_empty());
        w.push_relay(3, &view);
        w.push_ack(9, false);
        w.push_ack(10, true);
        let (bytes, relays) = w.finish();
        assert_eq!(relays, vec![3]);
        let (from, records) = parse(&bytes).unwrap();
        assert_eq!(from, 42);
        assert_eq!(records.len(), 3);
        match &records[0] {
            Record::Relay { relay: 3, frame } => assert_eq!(frame.to_frame().to_bytes()[..], wire),
            other => panic!("{other:?}"),
        }
        // Two answers that differ: two runs of one.
        assert!(matches!(
            records[1],
            Record::Acks {
                first: 9,
                count: 1,
                ok: false
            }
        ));
        assert!(matches!(
            records[2],
            Record::Acks {
                first: 10,
                count: 1,
                ok: true
            }
        ));
    }

    #[test]
    fn acks_in_a_row_alike_are_one_record_and_anything_between_starts_another() {
        let mut w = BatchWriter::new(7);
        for relay in 100..1100 {
            w.push_ack(relay, true);
        }
        w.push_ack(1100, false);
        w.push_ack(1101, false);
        w.push_ack(1103, false);
        w.push_refused(1104);
        w.push_ack(1105, false);
        w.push_pair(PairRecord::Dismiss {
            exhibitor: 4096,
            emitter: 1,
        });
        w.push_ack(1106, false);
        let (bytes, _) = w.finish();
        // 'E' 1 | incarnation | 10 | relay 100 | count 1000 | OK.
        let mut run = vec![ACKS];
        run.extend_from_slice(&100u64.to_be_bytes());
        run.extend_from_slice(&1000u32.to_be_bytes());
        run.push(1);
        assert_eq!(bytes[HEADER..HEADER + ACKS_LEN], run[..]);
        let records = format!("{:?}", parse(&bytes).unwrap().1);
        assert_eq!(
            records,
            "[Acks { first: 100, count: 1000, ok: true }, \
             Acks { first: 1100, count: 2, ok: false }, \
             Acks { first: 1103, count: 1, ok: false }, Refused { relay: 1104 }, \
             Acks { first: 1105, count: 1, ok: false }, \
             Pair(Dismiss { exhibitor: 4096, emitter: 1 }), \
             Acks { first: 1106, count: 1, ok: false }]"
        );
        // The last relay number ends a run; a run written whole stays so.
        let mut w = BatchWriter::new(7);
        w.push_ack(u64::MAX, true);
        w.push_ack(0, true);
        w.push_ack_run(1, 5, true);
        w.push_ack_run(6, 2, true);
        w.push_ack(8, true);
        w.push_single_ack(9, true);
        let records = format!("{:?}", parse(&w.finish().0).unwrap().1);
        assert_eq!(
            records,
            "[Acks { first: 18446744073709551615, count: 1, ok: true }, \
             Acks { first: 0, count: 1, ok: true }, Acks { first: 1, count: 5, ok: true }, \
             Acks { first: 6, count: 2, ok: true }, Acks { first: 8, count: 1, ok: true }, \
             Ack { relay: 9, ok: true }]"
        );
    }

    #[test]
    fn a_run_of_acks_that_is_empty_overflows_or_says_neither_is_refused() {
        let run = |first: u64, count: u32, ok: u8| {
            let mut bytes = BatchWriter::new(1).finish().0;
            bytes.push(ACKS);
            bytes.extend_from_slice(&first.to_be_bytes());
            bytes.extend_from_slice(&count.to_be_bytes());
            bytes.push(ok);
            bytes
        };
        assert!(parse(&run(u64::MAX - 9, 10, 1)).is_ok());
        assert!(parse(&run(5, 1, 0)).is_ok());
        for (first, count, ok) in [(5, 0, 1), (u64::MAX - 9, 11, 1), (5, 1, 2)] {
            assert_eq!(fault(&run(first, count, ok)), BatchError::BadAckRun);
        }
        let whole = run(5, 3, 1);
        for cut in HEADER + 1..whole.len() {
            assert_eq!(fault(&whole[..cut]), BatchError::Short, "{cut}");
        }
    }

    #[test]
    fn a_refused_ack_round_trips_as_value_2_beside_ok_and_erro() {
        let mut w = BatchWriter::new(7);
        w.push_ack(1, true);
        w.push_refused(2);
        w.push_ack(3, false);
        let (bytes, relays) = w.finish();
        assert!(relays.is_empty());
        // 'E' 1 | incarnation | ACKS | 2 | relay 2 | 2.
        let mut refused = vec![ACK];
        refused.extend_from_slice(&2u64.to_be_bytes());
        refused.push(2);
        let at = HEADER + ACKS_LEN;
        assert_eq!(bytes[at..at + 10], refused[..]);
        match &parse(&bytes).unwrap().1[..] {
            [
                Record::Acks {
                    first: 1,
                    count: 1,
                    ok: true,
                },
                Record::Refused { relay: 2 },
                Record::Acks {
                    first: 3,
                    count: 1,
                    ok: false,
                },
            ] => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(fault(&bytes[..at + 9]), BatchError::Short);
    }

    fn fault(bytes: &[u8]) -> BatchError {
        parse(bytes).expect_err("a faulty batch")
    }

    #[test]
    fn pair_records_round_trip_and_a_short_one_is_refused() {
        let records = [
            PairRecord::Pair {
                token: 9,
                exhibitor: 4096,
                emitter: 3,
            },
            PairRecord::Paired { token: 9, ok: true },
            PairRecord::Dismiss {
                exhibitor: 4096,
                emitter: 3,
            },
            PairRecord::Unpaired {
                exhibitor: 4097,
                emitter: 4,
            },
            PairRecord::Unpair {
                exhibitor: 4098,
                emitter: 5,
            },
        ];
        let mut w = BatchWriter::new(2);
        for record in records {
            w.push_pair(record);
        }
        let (bytes, relays) = w.finish();
        assert!(relays.is_empty());
        let (_, parsed) = parse(&bytes).unwrap();
        let parsed: Vec<PairRecord> = parsed
            .into_iter()
            .map(|r| match r {
                Record::Pair(p) => p,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(parsed, records);
        assert_eq!(fault(&bytes[..bytes.len() - 1]), BatchError::Short);
    }

    #[test]
    fn a_message_with_the_longest_text_is_relayed_whole() {
        let text = bytes::Bytes::from(vec![b'x'; crate::proto::MAX_TEXT_LEN]);
        let wire = Frame::msg(1, 0, 2, text).unwrap().to_bytes();
        let (view, _) = FrameView::parse(&wire).unwrap().unwrap();
        let mut w = BatchWriter::new(5);
        w.push_relay(1, &view);
        w.push_ack(2, true);
        let (bytes, _) = w.finish();
        let (_, records) = parse(&bytes).unwrap();
        match &records[0] {
            Record::Relay { frame, .. } => assert_eq!(frame.to_frame().to_bytes(), wire),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            records[1],
            Record::Acks {
                first: 2,
                count: 1,
                ok: true
            }
        ));
    }

    #[test]
    fn every_fault_refuses_the_whole_batch() {
        let wire = msg();
        let (view, _) = FrameView::parse(&wire).unwrap().unwrap();
        let mut w = BatchWriter::new(1);
        w.push_relay(1, &view);
        let (good, _) = w.finish();
        assert_eq!(fault(b"X\x01\0\0\0\0\0\0\0\x01"), BatchError::BadHeader);
        assert_eq!(fault(b"E\x01\0\0"), BatchError::BadHeader);
        let mut unknown = good.clone();
        unknown.push(11);
        unknown.extend_from_slice(&[0; 8]);
        assert_eq!(fault(&unknown), BatchError::UnknownRecord(11));
        assert_eq!(fault(&good[..good.len() - 1]), BatchError::Short);
        // A relayed OI is not something a node relays.
        let oi = Frame::bare(Kind::Oi, 0, 0, 1).to_bytes();
        let mut bad = BatchWriter::new(1).finish().0;
        bad.push(RELAY);
        bad.extend_from_slice(&5u64.to_be_bytes());
        bad.extend_from_slice(&(oi.len() as u32).to_be_bytes());
        bad.extend_from_slice(&oi);
        assert_eq!(fault(&bad), BatchError::BadFrame);
        let mut ack = BatchWriter::new(1).finish().0;
        ack.push(ACK);
        ack.extend_from_slice(&5u64.to_be_bytes());
        ack.push(3);
        assert_eq!(fault(&ack), BatchError::Short);
        assert!(matches!(
            fault(&vec![0; 2 * FLUSH_AT + 1]),
            BatchError::TooLarge(_)
        ));
    }

    #[test]
    fn a_waited_record_round_trips_and_a_bad_teller_or_frame_is_refused() {
        let wire = msg();
        let (view, _) = FrameView::parse(&wire).unwrap().unwrap();
        let mut w = BatchWriter::new(3);
        w.push_waited(7, 1_700_000_000_000, 15, Some("alice"), &view);
        w.push_waited(8, 1, 0, None, &view);
        let (bytes, relays) = w.finish();
        assert_eq!(relays, vec![7, 8]);
        let (_, records) = parse(&bytes).unwrap();
        match &records[..] {
            [
                Record::Waited {
                    relay: 7,
                    stored_ms: 1_700_000_000_000,
                    roles: 15,
                    name: Some("alice"),
                    frame,
                },
                Record::Waited {
                    relay: 8,
                    stored_ms: 1,
                    roles: 0,
                    name: None,
                    ..
                },
            ] => assert_eq!(frame.to_frame().to_bytes()[..], wire),
            other => panic!("{other:?}"),
        }
        assert_eq!(fault(&bytes[..bytes.len() - 1]), BatchError::Short);
        let waited = |name: &[u8], frame: &[u8]| {
            let mut bad = BatchWriter::new(1).finish().0;
            bad.push(WAITED);
            bad.extend_from_slice(&5u64.to_be_bytes());
            bad.extend_from_slice(&9u64.to_be_bytes());
            bad.extend_from_slice(&[7, name.len() as u8]);
            bad.extend_from_slice(name);
            bad.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            bad.extend_from_slice(frame);
            bad
        };
        assert!(parse(&waited(b"bob", &wire)).is_ok());
        for name in [
            &b"9lives"[..],
            b"al ice",
            b"\xff\xfe",
            b"abcdefghijklmnopqrstuvwxy",
        ] {
            assert_eq!(fault(&waited(name, &wire)), BatchError::BadName, "{name:?}");
        }
        // Only a MSG waits: a CREQ or an OI is not a waiting message.
        let creq = Frame::bare(Kind::Creq, 1, 4096, 2).to_bytes();
        assert_eq!(fault(&waited(b"bob", &creq)), BatchError::BadFrame);
        let oi = Frame::bare(Kind::Oi, 0, 0, 1).to_bytes();
        assert_eq!(fault(&waited(b"bob", &oi)), BatchError::BadFrame);
        assert_eq!(
            fault(&waited(b"bob", &wire[..wire.len() - 1])),
            BatchError::BadFrame
        );
    }

    #[test]
    fn a_queued_record_round_trips_and_a_bad_exhibitor_room_or_frame_is_refused() {
        let wire = Frame::msg(12, 16384, 3, bytes::Bytes::from_static(b"job"))
            .unwrap()
            .to_bytes();
        let (view, _) = FrameView::parse(&wire).unwrap().unwrap();
        let mut w = BatchWriter::new(4);
        w.push_queued(11, 4100, &view);
        let (bytes, relays) = w.finish();
        assert_eq!(relays, vec![11]);
        // 'E' 1 | incarnation | 9 | relay | exhibitor | length | the MSG.
        let mut expected = vec![b'E', 1, 0, 0, 0, 0, 0, 0, 0, 4, 9];
        expected.extend_from_slice(&11u64.to_be_bytes());
        expected.extend_from_slice(&4100u16.to_be_bytes());
        expected.extend_from_slice(&(wire.len() as u32).to_be_bytes());
        expected.extend_from_slice(&wire);
        assert_eq!(bytes, expected);
        match &parse(&bytes).unwrap().1[..] {
            [
                Record::Queued {
                    relay: 11,
                    exhibitor: 4100,
                    frame,
                },
            ] => assert_eq!(frame.to_frame().to_bytes()[..], wire),
            other => panic!("{other:?}"),
        }
        assert_eq!(fault(&bytes[..bytes.len() - 1]), BatchError::Short);
        let queued = |exhibitor: u16, frame: &[u8]| {
            let mut bad = BatchWriter::new(1).finish().0;
            bad.push(QUEUED);
            bad.extend_from_slice(&5u64.to_be_bytes());
            bad.extend_from_slice(&exhibitor.to_be_bytes());
            bad.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            bad.extend_from_slice(frame);
            bad
        };
        assert!(parse(&queued(4096, &wire)).is_ok());
        // An emitter's id, or the id 0, is not a member session.
        assert_eq!(fault(&queued(12, &wire)), BatchError::BadQueued);
        assert_eq!(fault(&queued(0, &wire)), BatchError::BadQueued);
        // A MSG to a client's id is not a queue message.
        let unicast = msg();
        assert_eq!(fault(&queued(4096, &unicast)), BatchError::BadQueued);
        // Only a whole MSG is queued.
        let creq = Frame::bare(Kind::Creq, 1, 16384, 2).to_bytes();
        assert_eq!(fault(&queued(4096, &creq)), BatchError::BadFrame);
        assert_eq!(
            fault(&queued(4096, &wire[..wire.len() - 1])),
            BatchError::BadFrame
        );
    }

    #[test]
    fn a_said_record_round_trips_and_one_not_to_a_room_or_not_a_msg_is_refused() {
        let wire = Frame::msg(3, 0x4000, 9, bytes::Bytes::from_static(b"hi"))
            .unwrap()
            .to_bytes();
        let (view, _) = FrameView::parse(&wire).unwrap().unwrap();
        let mut w = BatchWriter::new(4);
        w.push_said(&view);
        w.push_ack(2, true);
        let (bytes, relays) = w.finish();
        assert!(relays.is_empty(), "nothing answers a SAID record");
        let (_, records) = parse(&bytes).unwrap();
        match &records[..] {
            [
                Record::Said { frame },
                Record::Acks {
                    first: 2,
                    count: 1,
                    ok: true,
                },
            ] => {
                assert_eq!(frame.to_frame().to_bytes(), wire)
            }
            other => panic!("{other:?}"),
        }
        let said = |frame: &[u8]| {
            let mut bad = BatchWriter::new(1).finish().0;
            bad.push(SAID);
            bad.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            bad.extend_from_slice(frame);
            bad
        };
        assert!(parse(&said(&wire)).is_ok());
        let to_client = msg();
        assert_eq!(fault(&said(&to_client)), BatchError::NotARoom);
        let creq = Frame::bare(Kind::Creq, 1, 0x4000, 2).to_bytes();
        assert_eq!(fault(&said(&creq)), BatchError::BadFrame);
        assert_eq!(fault(&said(&wire[..wire.len() - 1])), BatchError::BadFrame);
        assert_eq!(fault(&said(&wire)[..13]), BatchError::Short);
    }
}
