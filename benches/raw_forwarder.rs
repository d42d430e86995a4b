//! `raw_forwarder`: the machine's forwarding limit, measured beside the
//! servers (the `raw` target of `benches/relay.rs` and
//! `scripts/bench-compare.sh`).
//!
//! One thread, one mio (epoll) loop, no parsing, no ids, no acks: the bytes a
//! publisher sends are copied to every subscriber. What it does per message
//! is a floor under what any relay must do, so evchat/raw is the share of
//! the machine's forwarding limit evchat reaches.
//!
//! Roles without parsing messages: each connection first sends a 3-byte
//! hello, a role byte (`p` publisher, `s` subscriber) and the big-endian u16
//! size of its messages (all the same size), and gets one byte `+` back once
//! its role is in place, so a client knows a subscriber is registered before
//! any publisher sends. From then on a publisher's bytes are forwarded in
//! whole multiples of its message size (a partial message waits for its
//! rest, only so that two publishers' messages never interleave inside one
//! subscriber's stream); whatever a subscriber sends is read and discarded.
//!
//! A slow subscriber: what a write does not take is queued for it, and a
//! subscriber whose queue would pass 64 MiB is disconnected (as Redis drops
//! a pub/sub client past its output-buffer limit). Nothing else is dropped,
//! and publishers are never held back. The load generator's window keeps
//! every queue far below the limit.
//!
//! `cargo bench --bench raw_forwarder -- 127.0.0.1:PORT` (prints `listening on ADDR`).

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

const LISTENER: Token = Token(usize::MAX);
const READ_BUF: usize = 256 * 1024;
/// Room before each read for the cut message the last one left (< 64 KiB).
const HEAD_ROOM: usize = 1 << 16;
const MAX_QUEUE: usize = 64 << 20;
/// A queue's written front is cut away past this, so it never grows beyond
/// what is unsent plus this much.
const COMPACT_AT: usize = 1 << 20;

enum Role {
    /// Hello not complete yet: the bytes so far.
    New(Vec<u8>),
    Pub {
        size: usize,
        partial: Vec<u8>,
    },
    Sub {
        out: Vec<u8>,
        pos: usize,
    },
}

struct Client {
    sock: TcpStream,
    role: Role,
}

fn main() -> io::Result<()> {
    let Some(addr) = std::env::args().skip(1).find(|a| !a.starts_with('-')) else {
        // A bare `cargo bench` runs every bench: nothing to serve without an address.
        eprintln!("raw_forwarder: no ADDR given, nothing to do");
        return Ok(());
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut listener = TcpListener::bind(addr)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let mut clients: Slab<Client> = Slab::new();
    let mut subs: Vec<usize> = Vec::new();
    let mut dead: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; HEAD_ROOM + READ_BUF];
    let mut events = Events::with_capacity(1024);
    loop {
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut sock, _)) => {
                            sock.set_nodelay(true)?;
                            let entry = clients.vacant_entry();
                            poll.registry().register(
                                &mut sock,
                                Token(entry.key()),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            entry.insert(Client {
                                sock,
                                role: Role::New(Vec::with_capacity(3)),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            let key = event.token().0;
            if !clients.contains(key) {
                continue;
            }
            let c = &mut clients[key];
            if event.is_writable()
                && let Role::Sub { out, pos } = &mut c.role
                && flush(&mut c.sock, out, pos).is_err()
            {
                dead.push(key);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                read(key, &mut clients, &mut subs, &mut dead, &mut buf);
            }
            for key in dead.drain(..) {
                if clients.contains(key) {
                    let mut c = clients.remove(key);
                    let _ = poll.registry().deregister(&mut c.sock);
                    subs.retain(|&s| s != key);
                }
            }
        }
    }
}

/// Reads client `key` until drained, forwarding what a publisher sent.
fn read(
    key: usize,
    clients: &mut Slab<Client>,
    subs: &mut Vec<usize>,
    dead: &mut Vec<usize>,
    buf: &mut [u8],
) {
    loop {
        let n = match clients[key].sock.read(&mut buf[HEAD_ROOM..]) {
            Ok(0) => return dead.push(key),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return dead.push(key),
        };
        let (mut start, end) = (HEAD_ROOM, HEAD_ROOM + n);
        let client = &mut clients[key];
        if let Role::New(hello) = &mut client.role {
            let take = n.min(3 - hello.len());
            hello.extend_from_slice(&buf[start..start + take]);
            start += take;
            if hello.len() < 3 {
                continue;
            }
            let size = u16::from_be_bytes([hello[1], hello[2]]) as usize;
            client.role = match hello[0] {
                b'p' if size > 0 => Role::Pub {
                    size,
                    partial: Vec::with_capacity(size),
                },
                b's' => {
                    subs.push(key);
                    Role::Sub {
                        out: Vec::new(),
                        pos: 0,
                    }
                }
                _ => return dead.push(key),
            };
            // A fresh socket's buffer takes one byte.
            if client.sock.write(b"+").ok() != Some(1) {
                return dead.push(key);
            }
        }
        let Role::Pub { size, partial } = &mut clients[key].role else {
            continue; // a subscriber's bytes are discarded
        };
        // The rest of the last read's cut message goes just before this
        // read's bytes, so whole messages are one contiguous slice.
        let from = start - partial.len();
        buf[from..start].copy_from_slice(partial);
        let whole = (end - from) - (end - from) % *size;
        partial.clear();
        partial.extend_from_slice(&buf[from + whole..end]);
        forward(&buf[from..from + whole], clients, subs, dead);
    }
}

/// Copies `data` to every subscriber: straight to the socket when nothing is
/// queued for it, else behind what is.
fn forward(data: &[u8], clients: &mut Slab<Client>, subs: &[usize], dead: &mut Vec<usize>) {
    if data.is_empty() {
        return;
    }
    for &s in subs {
        let c = &mut clients[s];
        let Role::Sub { out, pos } = &mut c.role else {
            continue;
        };
        if out.len() - *pos + data.len() > MAX_QUEUE {
            dead.push(s);
            continue;
        }
        if out.is_empty() {
            let mut sent = 0;
            while sent < data.len() {
                match c.sock.write(&data[sent..]) {
                    Ok(0) => {
                        dead.push(s);
                        break;
                    }
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        dead.push(s);
                        break;
                    }
                }
            }
            out.extend_from_slice(&data[sent..]);
        } else {
            out.extend_from_slice(data);
        }
    }
}

/// Writes a subscriber's queue until it is empty or the socket is full.
fn flush(sock: &mut TcpStream, out: &mut Vec<u8>, pos: &mut usize) -> io::Result<()> {
    while *pos < out.len() {
        match sock.write(&out[*pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if *pos == out.len() {
        out.clear();
        *pos = 0;
    } else if *pos >= COMPACT_AT {
        out.drain(..*pos);
        *pos = 0;
    }
    Ok(())
}
