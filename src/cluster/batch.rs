//! The bytes one node publishes to another in one turn (CLUSTER.md,
//! "Messages between nodes"): a header naming the sender's incarnation,
//! then relayed client frames and acknowledgements of relays. Pure bytes
//! both ways; a batch that does not parse is refused whole.
//!
//! ```text
//! 'E' 1 | sender incarnation u64 BE | record*
//! record = 1 | relay u64 BE | frame length u32 BE | frame   (RELAY: a MSG or CREQ)
//!        | 2 | relay u64 BE | ok u8 (1 OK, 0 ERRO)           (ACK)
//! ```

use super::NodeId;
use crate::proto::{Encode, FrameView, Kind};
use bytes::BytesMut;

const MAGIC: u8 = b'E';
const VERSION: u8 = 1;
const RELAY: u8 = 1;
const ACK: u8 = 2;
/// Header bytes: magic, version, incarnation.
const HEADER: usize = 2 + 8;
/// A batch grows to about this size before it is published early (and a
/// received one larger than twice this is refused unread).
pub const FLUSH_AT: usize = 1 << 20;

/// One record of a batch, borrowing from it.
#[derive(Debug)]
pub enum Record<'a> {
    /// A client's MSG or CREQ to deliver; `relay` names it in the ACK.
    Relay { relay: u64, frame: FrameView<'a> },
    /// The outcome of relay `relay` that this node sent the batch's sender.
    Ack { relay: u64, ok: bool },
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
}

/// A batch being written for one destination.
#[derive(Debug)]
pub struct BatchWriter {
    buf: BytesMut,
    /// The relays it carries, failed together if it cannot be delivered.
    relays: Vec<u64>,
}

impl BatchWriter {
    pub fn new(from: NodeId) -> BatchWriter {
        let mut buf = BytesMut::with_capacity(256);
        buf.extend_from_slice(&[MAGIC, VERSION]);
        buf.extend_from_slice(&from.to_be_bytes());
        BatchWriter {
            buf,
            relays: Vec::new(),
        }
    }

    pub fn push_relay(&mut self, relay: u64, frame: &FrameView<'_>) {
        self.buf.extend_from_slice(&[RELAY]);
        self.buf.extend_from_slice(&relay.to_be_bytes());
        // u32: a MSG with the longest text is 65,545 bytes.
        let len = frame.encoded_len() as u32;
        self.buf.extend_from_slice(&len.to_be_bytes());
        frame.encode_into(&mut self.buf);
        self.relays.push(relay);
    }

    pub fn push_ack(&mut self, relay: u64, ok: bool) {
        self.buf.extend_from_slice(&[ACK]);
        self.buf.extend_from_slice(&relay.to_be_bytes());
        self.buf.extend_from_slice(&[u8::from(ok)]);
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == HEADER
    }

    /// The finished bytes, and the relays they carry.
    pub fn finish(self) -> (Vec<u8>, Vec<u64>) {
        (self.buf.to_vec(), self.relays)
    }
}

/// Checks a whole batch and returns its sender and records; nothing is
/// returned from a batch with any fault in it.
pub fn parse(bytes: &[u8]) -> Result<(NodeId, Vec<Record<'_>>), BatchError> {
    if bytes.len() > 2 * FLUSH_AT {
        return Err(BatchError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER || bytes[0] != MAGIC || bytes[1] != VERSION {
        return Err(BatchError::BadHeader);
    }
    let from = u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let mut records = Vec::new();
    let mut rest = &bytes[HEADER..];
    while let Some((&tag, after)) = rest.split_first() {
        let (relay, after) = take_u64(after)?;
        match tag {
            RELAY => {
                let (len, after) = after.split_first_chunk::<4>().ok_or(BatchError::Short)?;
                let len = u32::from_be_bytes(*len) as usize;
                let framed = after.get(..len).ok_or(BatchError::Short)?;
                let frame = match FrameView::parse(framed) {
                    Ok(Some((frame, used)))
                        if used == len && matches!(frame.kind, Kind::Msg | Kind::Creq) =>
                    {
                        frame
                    }
                    _ => return Err(BatchError::BadFrame),
                };
                records.push(Record::Relay { relay, frame });
                rest = &after[len..];
            }
            ACK => {
                let (&ok, after) = after.split_first().ok_or(BatchError::Short)?;
                if ok > 1 {
                    return Err(BatchError::Short);
                }
                records.push(Record::Ack { relay, ok: ok == 1 });
                rest = after;
            }
            other => return Err(BatchError::UnknownRecord(other)),
        }
    }
    Ok((from, records))
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
        assert!(matches!(
            records[1],
            Record::Ack {
                relay: 9,
                ok: false
            }
        ));
        assert!(matches!(
            records[2],
            Record::Ack {
                relay: 10,
                ok: true
            }
        ));
    }

    fn fault(bytes: &[u8]) -> BatchError {
        parse(bytes).expect_err("a faulty batch")
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
        assert!(matches!(records[1], Record::Ack { relay: 2, ok: true }));
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
        unknown.push(7);
        unknown.extend_from_slice(&[0; 8]);
        assert_eq!(fault(&unknown), BatchError::UnknownRecord(7));
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
        ack.push(2);
        assert_eq!(fault(&ack), BatchError::Short);
        assert!(matches!(
            fault(&vec![0; 2 * FLUSH_AT + 1]),
            BatchError::TooLarge(_)
        ));
    }
}
