//! This node's subscription to its channels (CLUSTER.md), read straight off
//! its socket. The redis crate's reader zeroes its buffer before every read
//! and copies a message that spans reads piece by piece: about 200
//! instructions a delivery on the exhibitors' node at 1:1 (CLUSTER.md,
//! "Numbers"). Here one buffer, zeroed once, takes whole reads, and each
//! message's payload is copied out once. Only what a subscribed RESP2
//! connection is sent is understood (`+OK` to AUTH, the subscribe
//! confirmations, `message` pushes, an error line); anything else, or a
//! bulk string over [`MAX_BULK`], is an error, and the caller treats it as
//! a lost subscription (subscribed again, the table read again).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The largest bulk string taken: a batch is at most twice
/// `batch::FLUSH_AT` (a larger one is refused by its parser anyway), a
/// channel name or a change is far smaller.
pub const MAX_BULK: usize = 2 * super::batch::FLUSH_AT + 1024;
/// Digits and sign of a length or count line; longer is not Redis.
const MAX_LINE: usize = 24;
/// The buffer as first allocated; it grows for a larger message (to at
/// most [`MAX_BULK`] and its framing) and shrinks back once it is read.
const BUFFER: usize = 256 << 10;

/// One reply or push on a subscribed connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+OK` (to AUTH).
    Ok,
    /// `-…`: Redis refused a command.
    Error(&'a [u8]),
    /// A channel's subscription confirmed.
    Subscribed,
    /// A message published on `channel`.
    Message {
        channel: &'a [u8],
        payload: &'a [u8],
    },
}

/// Why bytes from Redis were not a reply this module understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("unexpected reply type {0:#04x}")]
    UnexpectedType(u8),
    #[error("bad length or count line")]
    BadLine,
    #[error("bulk string of {0} bytes over the limit")]
    TooLarge(usize),
    #[error("a push that is neither a message nor a subscribe confirmation")]
    UnexpectedPush,
}

/// The reply at the start of `buf` and the bytes it takes (`Ok(None)`:
/// not all of it has arrived). Never reads past the reply.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, ReplyError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    match kind {
        b'+' | b'-' => {
            let Some(end) = line_end(buf, 1, MAX_BULK)? else {
                return Ok(None);
            };
            let line = &buf[1..end];
            let reply = match kind {
                b'+' if line == b"OK" => Reply::Ok,
                b'+' => return Err(ReplyError::UnexpectedPush),
                _ => Reply::Error(line),
            };
            Ok(Some((reply, end + 2)))
        }
        b'*' => {
            let Some((count, mut at)) = number(buf, 1)? else {
                return Ok(None);
            };
            if count != 3 {
                return Err(ReplyError::UnexpectedPush);
            }
            let Some((kind, after)) = bulk(buf, at)? else {
                return Ok(None);
            };
            at = after;
            let Some((channel, after)) = bulk(buf, at)? else {
                return Ok(None);
            };
            at = after;
            match kind {
                b"message" => {
                    let Some((payload, after)) = bulk(buf, at)? else {
                        return Ok(None);
                    };
                    Ok(Some((Reply::Message { channel, payload }, after)))
                }
                b"subscribe" => {
                    if buf.get(at).is_some_and(|&b| b != b':') {
                        return Err(ReplyError::UnexpectedType(buf[at]));
                    }
                    let Some((_, after)) = number(buf, at + 1)? else {
                        return Ok(None);
                    };
                    Ok(Some((Reply::Subscribed, after)))
                }
                _ => Err(ReplyError::UnexpectedPush),
            }
        }
        other => Err(ReplyError::UnexpectedType(other)),
    }
}

/// Where the line from `from` ends (its `\r`), if it has arrived; a line
/// longer than `max` or a `\r` without `\n` is refused.
fn line_end(buf: &[u8], from: usize, max: usize) -> Result<Option<usize>, ReplyError> {
    let rest = buf.get(from..).unwrap_or_default();
    match rest.iter().take(max + 1).position(|&b| b == b'\r') {
        Some(at) => match rest.get(at + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some(from + at)),
            Some(_) => Err(ReplyError::BadLine),
        },
        None if rest.len() > max => Err(ReplyError::BadLine),
        None => Ok(None),
    }
}

/// A non-negative decimal line from `from`: its value and where the next
/// item starts.
fn number(buf: &[u8], from: usize) -> Result<Option<(usize, usize)>, ReplyError> {
    let Some(end) = line_end(buf, from, MAX_LINE)? else {
        return Ok(None);
    };
    let digits = &buf[from..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ReplyError::BadLine);
    }
    let value = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<usize>().ok())
        .ok_or(ReplyError::BadLine)?;
    Ok(Some((value, end + 2)))
}

/// A bulk string at `at`: its bytes and where the next item starts.
fn bulk(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ReplyError> {
    match buf.get(at) {
        None => return Ok(None),
        Some(b'$') => {}
        Some(&other) => return Err(ReplyError::UnexpectedType(other)),
    }
    let Some((len, start)) = number(buf, at + 1)? else {
        return Ok(None);
    };
    if len > MAX_BULK {
        return Err(ReplyError::TooLarge(len));
    }
    let end = start + len;
    match buf.get(end..end + 2) {
        None => Ok(None),
        Some(b"\r\n") => Ok(Some((&buf[start..end], end + 2))),
        Some(_) => Err(ReplyError::BadLine),
    }
}

/// Appends a command (an array of bulk strings) as Redis reads it.
pub(super) fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A connection subscribed to some channels.
pub struct Subscription {
    stream: TcpStream,
    /// Bytes read; `buf[start..filled]` is not parsed yet. Allocated and
    /// zeroed once (not per read).
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    /// Messages that came while the subscriptions were being confirmed:
    /// channel and payload, handed out first.
    early: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Subscription {
    /// Connects to the Redis at `host`:`port`, signs in if given
    /// credentials (`AUTH [user] password`), subscribes to `channels` and
    /// waits for every confirmation; every step within `timeout`.
    pub fn open(
        host: &str,
        port: u16,
        auth: Option<(Option<&str>, &str)>,
        channels: &[String],
        timeout: Duration,
    ) -> io::Result<Subscription> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address for the Redis host");
        let mut stream = None;
        for addr in (host, port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or(last)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut sub = Subscription {
            stream,
            buf: vec![0; BUFFER],
            start: 0,
            filled: 0,
            early: Vec::new(),
        };
        let mut out = Vec::new();
        if let Some((user, password)) = auth {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            args.extend(user.map(str::as_bytes));
            args.push(password.as_bytes());
            command(&mut out, &args);
        }
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(channels.iter().map(|c| c.as_bytes()));
        command(&mut out, &args);
        sub.stream.write_all(&out)?;
        let mut waiting = channels.len() + usize::from(auth.is_some());
        let mut early = Vec::new();
        // Up to the last confirmation only: what follows is the listener's.
        while waiting > 0 {
            let Some(reply) = sub.next_reply()? else {
                sub.fill()?;
                continue;
            };
            match reply {
                Reply::Ok | Reply::Subscribed => waiting -= 1,
                Reply::Error(text) => {
                    let text = String::from_utf8_lossy(text);
                    return Err(io::Error::other(format!("Redis refused: {text}")));
                }
                Reply::Message { channel, payload } => {
                    early.push((channel.to_vec(), payload.to_vec()));
                }
            }
        }
        sub.early = early;
        Ok(sub)
    }

    /// Reads no longer wait: [`Subscription::fill`] says `WouldBlock`
    /// when nothing has come (for a subscription read by the loop).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        self.stream.set_nonblocking(true)
    }

    /// The socket's descriptor, for the loop's poll.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.stream)
    }

    /// How long a read waits before [`Subscription::fill`] gives up with
    /// `WouldBlock` or `TimedOut` (so the caller can look up).
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.stream.set_read_timeout(Some(timeout))
    }

    /// The messages that came before every subscription was confirmed.
    pub fn take_early(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut self.early)
    }

    /// The next whole reply already read (None: read more first). Bytes
    /// that are no reply understood here are an `InvalidData` error.
    pub fn next_reply(&mut self) -> io::Result<Option<Reply<'_>>> {
        let unread = &self.buf[self.start..self.filled];
        match parse(unread) {
            Ok(Some((reply, used))) => {
                self.start += used;
                Ok(Some(reply))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// Reads what has arrived (blocking up to the read timeout): after
    /// [`Subscription::next_reply`] said None. The end of the stream is an error.
    pub fn fill(&mut self) -> io::Result<()> {
        if self.start == self.filled {
            (self.start, self.filled) = (0, 0);
            if self.buf.len() > BUFFER {
                self.buf.truncate(BUFFER);
                self.buf.shrink_to_fit();
            }
        } else if self.start > 0 {
            // What is left is part of one reply: moved to the front.
            self.buf.copy_within(self.start..self.filled, 0);
            (self.start, self.filled) = (0, self.filled - self.start);
        }
        if self.filled == self.buf.len() {
            // One reply larger than the buffer: it grows, within the bound
            // (the parser refuses a longer bulk string before this).
            let most = MAX_BULK + 1024;
            if self.buf.len() >= most {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    ReplyError::TooLarge(self.buf.len()),
                ));
            }
            self.buf.resize((self.buf.len() * 2).min(most), 0);
        }
        match self.stream.read(&mut self.buf[self.filled..])? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                self.filled += n;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n$10\r\nevchat:chg\r\n$4\r\n+5 3\r\n";
    const SUBSCRIBED: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$13\r\nevchat:node:3\r\n:2\r\n";

    #[test]
    fn messages_confirmations_and_answers_parse_to_their_exact_length() {
        let message = Reply::Message {
            channel: b"evchat:chg",
            payload: b"+5 3",
        };
        assert_eq!(parse(MESSAGE), Ok(Some((message, MESSAGE.len()))));
        assert_eq!(
            parse(SUBSCRIBED),
            Ok(Some((Reply::Subscribed, SUBSCRIBED.len())))
        );
        assert_eq!(parse(b"+OK\r\n"), Ok(Some((Reply::Ok, 5))));
        assert_eq!(
            parse(b"-WRONGPASS no\r\n"),
            Ok(Some((Reply::Error(b"WRONGPASS no"), 15)))
        );
        // A payload may hold any bytes, CR LF included.
        let binary = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$3\r\n\r\n\x00\r\n";
        let reply = Reply::Message {
            channel: b"c",
            payload: b"\r\n\x00",
        };
        assert_eq!(parse(binary), Ok(Some((reply, binary.len()))));
    }

    #[test]
    fn a_reply_cut_anywhere_waits_for_the_rest_and_the_next_is_not_read() {
        for whole in [MESSAGE, SUBSCRIBED, b"+OK\r\n", b"-ERR x\r\n"] {
            for cut in 0..whole.len() {
                assert_eq!(parse(&whole[..cut]), Ok(None), "{whole:?} cut at {cut}");
            }
            let mut two = whole.to_vec();
            two.extend_from_slice(MESSAGE);
            let (_, used) = parse(&two).unwrap().unwrap();
            assert_eq!(used, whole.len());
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let too_large = format!("*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n${}\r\n", MAX_BULK + 1);
        let long_line = format!("*3\r\n${}\r\n", "9".repeat(MAX_LINE + 1));
        let cases: [(&[u8], ReplyError); 11] = [
            (b":1\r\n", ReplyError::UnexpectedType(b':')),
            (b"$3\r\nabc\r\n", ReplyError::UnexpectedType(b'$')),
            (b"+PONG\r\n", ReplyError::UnexpectedPush),
            (b"*2\r\n$7\r\nmessage\r\n", ReplyError::UnexpectedPush),
            (
                b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n",
                ReplyError::UnexpectedPush,
            ),
            (b"*3\r\n:7\r\n", ReplyError::UnexpectedType(b':')),
            (b"*x\r\n", ReplyError::BadLine),
            (b"*3\rx", ReplyError::BadLine),
            (b"*3\r\n$7\r\nmessage\r\n$1\r\ncXX", ReplyError::BadLine),
            (too_large.as_bytes(), ReplyError::TooLarge(MAX_BULK + 1)),
            (long_line.as_bytes(), ReplyError::BadLine),
        ];
        for (bytes, error) in cases {
            assert_eq!(parse(bytes), Err(error), "{bytes:?}");
        }
        assert_eq!(
            parse(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n$1\r\n"),
            Err(ReplyError::UnexpectedType(b'$'))
        );
    }

    /// A stand-in Redis on loopback: reads what the subscriber writes
    /// (handed back through the join handle) and answers `script`.
    fn fake_redis(script: &'static [u8], expect: usize) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut heard = vec![0; expect];
            stream.read_exact(&mut heard).unwrap();
            stream.write_all(script).unwrap();
            // Held open until the subscriber has read it all and gone.
            let _ = stream.read(&mut [0; 1]);
            heard
        });
        (port, server)
    }

    #[test]
    fn a_subscription_signs_in_subscribes_and_refuses_what_redis_never_sends() {
        const SENT: &[u8] = b"*3\r\n$4\r\nAUTH\r\n$2\r\nme\r\n$2\r\npw\r\n\
            *3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$1\r\nb\r\n";
        let script = b"+OK\r\n*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
            *3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nearly\r\n\
            *3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n\
            *3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$4\r\nlate\r\n\
            :42\r\n";
        let (port, server) = fake_redis(script, SENT.len());
        let channels = ["a".to_string(), "b".to_string()];
        let timeout = Duration::from_secs(5);
        let mut sub = Subscription::open(
            "127.0.0.1",
            port,
            Some((Some("me"), "pw")),
            &channels,
            timeout,
        )
        .unwrap();
        assert_eq!(sub.take_early(), vec![(b"a".to_vec(), b"early".to_vec())]);
        let late = loop {
            if let Some(reply) = sub.next_reply().unwrap() {
                break format!("{reply:?}");
            }
            sub.fill().unwrap();
        };
        assert_eq!(
            late,
            format!(
                "{:?}",
                Reply::Message {
                    channel: b"b",
                    payload: b"late"
                }
            )
        );
        let refused = loop {
            match sub.next_reply() {
                Ok(Some(reply)) => panic!("{reply:?} parsed from an integer push"),
                Ok(None) => sub.fill().unwrap(),
                Err(e) => break e,
            }
        };
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData);
        drop(sub);
        assert_eq!(server.join().unwrap(), SENT);
    }

    #[test]
    fn a_refused_sign_in_fails_the_subscription_with_redis_s_words() {
        const SENT: &[u8] = b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n\
            *2\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n";
        let (port, server) = fake_redis(b"-WRONGPASS invalid password\r\n", SENT.len());
        let channels = ["a".to_string()];
        let timeout = Duration::from_secs(5);
        let error = Subscription::open("127.0.0.1", port, Some((None, "pw")), &channels, timeout)
            .err()
            .expect("refused");
        assert_eq!(
            error.to_string(),
            "Redis refused: WRONGPASS invalid password"
        );
        assert_eq!(server.join().unwrap(), SENT);
    }
}
