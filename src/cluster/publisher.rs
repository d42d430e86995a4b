//! The loop's own connection to Redis for `PUBLISH` (CLUSTER.md,
//! "Publishing from the loop"). Handed a batch, the command thread woke,
//! wrote it, slept for Redis's answer and woke again: at 1:1 across nodes
//! those hand-offs took a tenth of the core the nodes and Redis share. Here
//! the loop writes each batch on a non-blocking socket registered with its
//! own poll, and reads the answers when the poll says they came. The
//! command thread opens the connection (the connect and a password's AUTH
//! block) and hands it over; the loop only ever writes what the socket
//! takes and reads what is there.
//!
//! Redis answers each `PUBLISH` with the number of subscribers it reached,
//! in order. A batch that reached none, and every batch still unanswered
//! when the connection fails, comes back as [`Event::Unreachable`], as from
//! the command thread. Anything else on the connection (an error line,
//! another type, an answer nothing asked for) is a fault: the connection is
//! given up, with the same outcome for what it carried.

use super::{Event, NodeId};
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};

/// Bytes read at a time; answers are a few bytes each.
const READ_CHUNK: usize = 4096;
/// Digits and sign of a count; longer is not Redis.
const MAX_COUNT_LINE: usize = 24;
/// An error line is read whole up to this length, cut short past it.
const MAX_ERROR_LINE: usize = 512;

/// Why the publishing connection was given up.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("Redis closed the connection")]
    Closed,
    #[error("Redis refused a PUBLISH: {0}")]
    Refused(String),
    #[error("an answer that is not a count")]
    BadReply,
    #[error("an answer to no PUBLISH")]
    Unasked,
}

/// One answer at the start of `buf` and the bytes it takes: the count of
/// subscribers a `PUBLISH` reached (`Ok(None)`: not all of it has come).
/// Never reads past the answer.
pub fn parse_count(buf: &[u8]) -> Result<Option<(i64, usize)>, PublishError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let max = match kind {
        b':' => MAX_COUNT_LINE,
        b'-' => MAX_ERROR_LINE,
        _ => return Err(PublishError::BadReply),
    };
    let window = &buf[..buf.len().min(max + 2)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if buf.len() <= max + 1 {
            return Ok(None);
        }
        return Err(match kind {
            b'-' => PublishError::Refused(words(&buf[1..80])),
            _ => PublishError::BadReply,
        });
    };
    match buf.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(PublishError::BadReply),
    }
    let line = &buf[1..cr];
    match kind {
        b':' => {
            let count = std::str::from_utf8(line)
                .ok()
                .and_then(|digits| digits.parse::<i64>().ok())
                .filter(|&n| n >= 0)
                .ok_or(PublishError::BadReply)?;
            Ok(Some((count, cr + 2)))
        }
        _ => Err(PublishError::Refused(words(line))),
    }
}

/// Redis's words in an error line, for the log.
fn words(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

/// A batch written and not yet answered.
struct Awaited {
    to: NodeId,
    relays: Vec<u64>,
    batch: Vec<u8>,
}

/// The connection, what is still to be written on it, and the batches
/// awaiting Redis's answer, oldest first.
pub struct Publisher<S> {
    stream: S,
    out: Vec<u8>,
    input: Vec<u8>,
    awaiting: VecDeque<Awaited>,
}

impl<S: Read + Write> Publisher<S> {
    pub fn new(stream: S) -> Publisher<S> {
        Publisher {
            stream,
            out: Vec::new(),
            input: Vec::new(),
            awaiting: VecDeque::new(),
        }
    }

    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Whether bytes wait for the socket to take them (then the loop polls
    /// it for room as well as for answers).
    pub fn blocked(&self) -> bool {
        !self.out.is_empty()
    }

    /// Whether a batch written here awaits its answer: a script run on the
    /// command thread now could reach Redis before it.
    pub fn busy(&self) -> bool {
        !self.awaiting.is_empty()
    }

    /// Writes `PUBLISH` of `batch` to node `to` (as much as the socket
    /// takes now; the rest when it is writable again).
    pub fn publish(
        &mut self,
        to: NodeId,
        batch: Vec<u8>,
        relays: Vec<u64>,
    ) -> Result<(), PublishError> {
        super::redis::pack_publish(&mut self.out, to, &batch);
        self.awaiting.push_back(Awaited { to, relays, batch });
        self.flush()
    }

    /// Writes what waits, until it is all written or the socket is full.
    pub fn flush(&mut self) -> Result<(), PublishError> {
        let mut written = 0;
        while written < self.out.len() {
            match self.stream.write(&self.out[written..]) {
                Ok(0) => return Err(PublishError::Closed),
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.out.drain(..written);
        Ok(())
    }

    /// Reads every answer that has come; a batch that reached no
    /// subscriber goes into `events` as [`Event::Unreachable`].
    pub fn read(&mut self, events: &mut Vec<Event>) -> Result<(), PublishError> {
        let mut chunk = [0u8; READ_CHUNK];
        // The answers that came before an end or a failure still count.
        let ended = loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => break Some(PublishError::Closed),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Some(e.into()),
            }
        };
        let mut at = 0;
        while let Some((count, used)) = parse_count(&self.input[at..])? {
            at += used;
            let awaited = self.awaiting.pop_front().ok_or(PublishError::Unasked)?;
            if count == 0 {
                events.push(unreachable(awaited));
            }
        }
        self.input.drain(..at);
        ended.map_or(Ok(()), Err)
    }

    /// The connection is given up: every batch not yet answered fails.
    pub fn fail_all(&mut self, events: &mut Vec<Event>) {
        events.extend(self.awaiting.drain(..).map(unreachable));
        self.out.clear();
        self.input.clear();
    }
}

fn unreachable(awaited: Awaited) -> Event {
    Event::Unreachable {
        node: awaited.to,
        relays: awaited.relays,
        batch: awaited.batch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A stream whose reads come from `input` (then would block), and
    /// whose writes are kept, up to `room` bytes (then would block).
    struct Script {
        input: Cursor<Vec<u8>>,
        closed: bool,
        written: Vec<u8>,
        room: usize,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.input.read(buf)? {
                0 if self.closed => Ok(0),
                0 => Err(ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.written.len());
            if n == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn publisher(answers: &[u8], closed: bool, room: usize) -> Publisher<Script> {
        Publisher::new(Script {
            input: Cursor::new(answers.to_vec()),
            closed,
            written: Vec::new(),
            room,
        })
    }

    fn unreachable_to(events: &[Event]) -> Vec<(NodeId, Vec<u64>)> {
        events
            .iter()
            .map(|e| match e {
                Event::Unreachable { node, relays, .. } => (*node, relays.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn counts_parse_to_their_exact_length_and_a_cut_one_waits() {
        assert_eq!(parse_count(b":1\r\n:0\r\n").unwrap(), Some((1, 4)));
        assert_eq!(parse_count(b":12\r\n").unwrap(), Some((12, 5)));
        for cut in [&b""[..], b":", b":1", b":1\r", b"-ERR no"] {
            assert_eq!(parse_count(cut).unwrap(), None, "{cut:?}");
        }
    }

    #[test]
    fn anything_but_a_count_is_refused() {
        for bad in [
            &b"+OK\r\n"[..],
            b"$3\r\nabc\r\n",
            b"*1\r\n",
            b":-1\r\n",
            b":x\r\n",
            b":\r\n",
            b":1\rx",
            b":1111111111111111111111111111\r\n",
            b":1111111111111111111111111111",
        ] {
            assert!(parse_count(bad).is_err(), "{bad:?}");
        }
        match parse_count(b"-ERR unknown command\r\n") {
            Err(PublishError::Refused(words)) => assert_eq!(words, "ERR unknown command"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_answer_settles_the_oldest_batch_and_none_reached_fails_it() {
        let mut p = publisher(b":1\r\n:0\r", false, 1 << 20);
        p.publish(7, b"one".to_vec(), vec![1, 2]).unwrap();
        p.publish(8, b"two".to_vec(), vec![3]).unwrap();
        p.publish(7, b"three".to_vec(), vec![4]).unwrap();
        let written = String::from_utf8(p.stream.written.clone()).unwrap();
        assert_eq!(
            written,
            "*3\r\n$7\r\nPUBLISH\r\n$13\r\nevchat:node:7\r\n$3\r\none\r\n\
             *3\r\n$7\r\nPUBLISH\r\n$13\r\nevchat:node:8\r\n$3\r\ntwo\r\n\
             *3\r\n$7\r\nPUBLISH\r\n$13\r\nevchat:node:7\r\n$5\r\nthree\r\n"
        );
        let mut events = Vec::new();
        p.read(&mut events).unwrap();
        // The second answer is cut: only the first is taken.
        assert!(events.is_empty());
        assert!(p.busy());
        p.stream.input = Cursor::new(b"\n:1\r\n".to_vec());
        p.read(&mut events).unwrap();
        assert_eq!(unreachable_to(&events), [(8, vec![3])]);
        assert!(!p.busy());
    }

    #[test]
    fn what_the_socket_does_not_take_is_written_later() {
        let mut p = publisher(b"", false, 10);
        p.publish(7, b"one".to_vec(), vec![1]).unwrap();
        assert_eq!(p.stream.written.len(), 10);
        p.stream.room = 1 << 20;
        p.flush().unwrap();
        assert!(p.stream.written.ends_with(b"$3\r\none\r\n"));
        assert!(p.out.is_empty());
    }

    #[test]
    fn a_fault_fails_every_batch_unanswered() {
        for (answers, closed) in [
            (&b":1\r\n-ERR wrong\r\n"[..], false),
            (b":1\r\n+OK\r\n", false),
            (b":1\r\n", true),
        ] {
            let mut p = publisher(answers, closed, 1 << 20);
            p.publish(7, b"a".to_vec(), vec![1]).unwrap();
            p.publish(7, b"b".to_vec(), vec![2]).unwrap();
            p.publish(9, b"c".to_vec(), vec![3, 4]).unwrap();
            let mut events = Vec::new();
            assert!(p.read(&mut events).is_err(), "{answers:?}");
            p.fail_all(&mut events);
            assert_eq!(unreachable_to(&events), [(7, vec![2]), (9, vec![3, 4])]);
            assert!(!p.busy());
        }
    }

    #[test]
    fn an_answer_nothing_asked_for_is_a_fault() {
        let mut p = publisher(b":1\r\n", false, 1 << 20);
        assert!(matches!(
            p.read(&mut Vec::new()),
            Err(PublishError::Unasked)
        ));
    }
}
