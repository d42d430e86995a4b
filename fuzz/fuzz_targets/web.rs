//! Fuzz target for the web transport: one server-side `Connection`, driven
//! as the event loop drives it, over a fake socket that hands it the input
//! in chunks. The bytes go through sniffing, the HTTP request head, the
//! answer and, after an upgrade, WebSocket framing; whatever frames come out
//! are parsed in place and echoed back, as the router's answers would be.
//!
//! Input: byte 0 picks the read size (1 to 256 bytes per read), byte 1 the
//! write size the fake socket accepts per call (0: it takes nothing, so the
//! output cap is what bounds it); bit 0 of byte 2 puts a valid upgrade
//! request in front of the rest, so the fuzzer starts in WebSocket framing;
//! bit 1 serves TLS (a first byte of 0x16 then goes to a TLS session, with
//! a throwaway certificate made once), bit 2 refuses plain connections
//! (`--require-tls`), bit 3 hands the TLS handshake out as jobs, run here
//! between reads as the server's handshake workers run them.
//!
//! Checked on every step: no panic; the connection never holds more input
//! than a request head, a WebSocket frame or a protocol frame in progress
//! allow, nor more output than its cap; on a WebSocket every frame the
//! connection passes on is whole and re-encodes to the bytes it came in.
#![no_main]

use evchat::proto::{Encode, FrameView, MAX_FRAME_LEN};
use evchat::testing::{
    Accepts, Connection, Ending, HttpOutcome, PlainRefusal, ReadStatus, Stage, TransportStatus,
};
use evchat::testing::{MAX_HEAD_LEN, WebConfig};
use evchat::tls::{MAX_HANDSHAKE_JOB, TlsAcceptor};
use libfuzzer_sys::fuzz_target;
use std::io::{self, Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// A throwaway identity, made once per fuzzing process.
fn acceptor() -> TlsAcceptor {
    static ACCEPTOR: OnceLock<TlsAcceptor> = OnceLock::new();
    ACCEPTOR
        .get_or_init(|| {
            let now = SystemTime::now();
            let day = Duration::from_secs(86_400);
            let made =
                evchat::tls::generate::throwaway(&["localhost".into()], now - day, now + day)
                    .expect("a throwaway certificate");
            let dir = std::env::temp_dir().join(format!("evchat-fuzz-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cert.pem"), made.cert_pem).unwrap();
            std::fs::write(dir.join("key.pem"), made.key_pem).unwrap();
            TlsAcceptor::load(&dir.join("cert.pem"), &dir.join("key.pem")).expect("the pair loads")
        })
        .clone()
}

const MAX_OUTPUT: usize = 64 * 1024;
/// What a TLS session may hold encrypted beyond the plaintext output cap:
/// its high-water mark and a record's worth more, and its handshake.
const TLS_SLACK: usize = 64 * 1024;
const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: evchat\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A socket that yields `input` `read_size` bytes at a time, then "would
/// block" once and end of stream after that, and takes `write_size` bytes
/// per write.
struct FakeSocket {
    input: Vec<u8>,
    at: usize,
    read_size: usize,
    write_size: usize,
    blocked_once: bool,
}

impl Read for FakeSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.input.len() {
            if !self.blocked_once {
                self.blocked_once = true;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            return Ok(0);
        }
        let n = self
            .read_size
            .min(buf.len())
            .min(self.input.len() - self.at);
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for FakeSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.write_size == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(buf.len().min(self.write_size))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let [read_size, write_size, flags, rest @ ..] = data else {
        return;
    };
    let mut input = Vec::new();
    if flags & 1 == 1 {
        input.extend_from_slice(UPGRADE);
    }
    input.extend_from_slice(rest);
    let socket = FakeSocket {
        input,
        at: 0,
        read_size: *read_size as usize + 1,
        write_size: *write_size as usize * 64,
        blocked_once: false,
    };
    let accepts = Accepts {
        web: true,
        tls: (flags & 2 == 2).then(acceptor),
        plain_refused: flags & 4 == 4,
        handshake_jobs: flags & 8 == 8,
    };
    let mut conn = Connection::new(socket, MAX_OUTPUT, &accepts);
    let config = WebConfig::default();
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        if let Some(job) = conn.handshake_job() {
            assert!(
                job.len() <= MAX_HANDSHAKE_JOB,
                "a handshake job past its bound"
            );
            match conn.take_back_handshake(job.run()) {
                None => continue,
                Some(_) => break,
            }
        }
        let status = conn
            .read_once(&mut scratch)
            .expect("the fake socket never fails");
        match status {
            ReadStatus::Data(_) | ReadStatus::Handshake(_) => {}
            ReadStatus::WouldBlock => continue,
            ReadStatus::Closed | ReadStatus::Failed(_) | ReadStatus::Full => break,
        }
        match conn.stage() {
            Stage::Sniffing => continue,
            Stage::Http => match conn.serve_http(&config) {
                HttpOutcome::Incomplete => {
                    assert!(
                        conn.buffered_input() < MAX_HEAD_LEN + 256,
                        "head grew past its cap"
                    );
                    continue;
                }
                HttpOutcome::Upgraded(TransportStatus::Open) => {}
                _ => break,
            },
            Stage::PlainRefused => match conn.refuse_plain() {
                PlainRefusal::Incomplete => {
                    assert!(
                        conn.buffered_input() < MAX_HEAD_LEN + 256,
                        "refusal waits too long"
                    );
                    continue;
                }
                _ => break,
            },
            Stage::Binary | Stage::WebSocket => {}
        }
        if !route(&mut conn) {
            break;
        }
        assert!(conn.queued_output() <= MAX_OUTPUT, "output past its cap");
        assert!(
            conn.unsent_output() <= MAX_OUTPUT + TLS_SLACK,
            "TLS output past its bound"
        );
        let _ = conn.flush();
    }
    conn.close_transport(Ending::Normal, "done");
    assert!(conn.queued_output() <= MAX_OUTPUT, "output past its cap");
});

/// Parses the buffered frames in place, as the event loop does, and echoes
/// each back. Returns false once the stream is lost (unknown type).
fn route(conn: &mut Connection<FakeSocket>) -> bool {
    let websocket = conn.stage() == Stage::WebSocket;
    let input = conn.take_input();
    let mut consumed = 0;
    let mut lost = false;
    loop {
        match FrameView::parse(&input[consumed..]) {
            Ok(Some((frame, len))) => {
                let mut again = bytes::BytesMut::new();
                frame.encode_into(&mut again);
                assert_eq!(
                    &again[..],
                    &input[consumed..consumed + len],
                    "re-encoding differs"
                );
                consumed += len;
                conn.queue(&frame);
            }
            Ok(None) => break,
            Err(_) => {
                lost = true;
                break;
            }
        }
    }
    if websocket && !lost {
        assert_eq!(
            consumed,
            input.len(),
            "a WebSocket passed on part of a frame"
        );
    }
    if !lost {
        assert!(
            input.len() - consumed < MAX_FRAME_LEN,
            "input past one frame"
        );
    }
    conn.return_input(input, consumed);
    !lost
}
