//! `server --announce`: the UDP socket on the server's port number that
//! answers LAN discovery queries (PROTOCOL.md, "Discovery"), in the event
//! loop itself. It owns which queries are answered: well-formed ones
//! (`crate::discovery`), from a private, link-local or loopback IPv4
//! source with a port, within the rate limits. A flood costs the loop a
//! bounded number of datagrams a turn ([`DATAGRAMS_PER_TURN`]; the rest wait
//! for the next turn, after the connections had theirs) and at most
//! [`ANSWERS_PER_WINDOW`] answers a second, [`ANSWERS_PER_SOURCE`] to any
//! one source; its memory is fixed ([`SOURCES_PER_WINDOW`] sources a
//! window).

use crate::discovery::{Answer, QUERY_LEN, Query};
use mio::net::UdpSocket;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::warn;

/// Datagrams read in one turn before the loop serves its connections.
const DATAGRAMS_PER_TURN: usize = 64;
/// The rate limits' window.
const WINDOW: Duration = Duration::from_secs(1);
/// Answers a window, to everyone.
const ANSWERS_PER_WINDOW: u32 = 32;
/// Answers a window to one source address.
const ANSWERS_PER_SOURCE: u8 = 2;
/// Sources remembered a window; a new one past that is not answered until
/// the next window.
const SOURCES_PER_WINDOW: usize = 64;

/// What became of one datagram, as `evchat_discovery_queries_total`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heard {
    Answered,
    /// A query the limits did not let through.
    RateLimited,
    /// Not a query, or from a source that is not answered.
    Ignored,
}

impl Heard {
    pub(super) const LABELS: [&'static str; 3] = ["answered", "rate_limited", "ignored"];

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// The announcing socket and its limits.
pub(super) struct Announcer {
    pub(super) socket: UdpSocket,
    /// The answer, but for each query's nonce.
    answer: Answer,
    limits: Limits,
    /// Datagrams may be waiting: the last turn stopped reading before
    /// `WouldBlock`.
    pub(super) backlog: bool,
}

impl Announcer {
    /// Binds UDP on `addr` (the server's address and port).
    pub(super) fn bind(addr: SocketAddr, answer: Answer) -> io::Result<Announcer> {
        Ok(Announcer {
            socket: UdpSocket::bind(addr)?,
            answer,
            limits: Limits::default(),
            backlog: false,
        })
    }

    /// Reads up to [`DATAGRAMS_PER_TURN`] datagrams, answering those that
    /// qualify; `count` is told what became of each.
    pub(super) fn serve(&mut self, now: Instant, mut count: impl FnMut(Heard)) {
        // One byte more than a query: a longer datagram is cut to this
        // and then has the wrong length.
        let mut buf = [0u8; QUERY_LEN + 1];
        for _ in 0..DATAGRAMS_PER_TURN {
            let (len, source) = match self.socket.recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.backlog = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors of earlier answers surface here; the
                    // socket itself is fine.
                    warn!(error = %e, "discovery socket");
                    continue;
                }
            };
            let heard = self.heard(now, &buf[..len], source);
            count(heard);
        }
        self.backlog = true;
    }

    fn heard(&mut self, now: Instant, datagram: &[u8], source: SocketAddr) -> Heard {
        let Ok(query) = Query::decode(datagram) else {
            return Heard::Ignored;
        };
        if !answered_source(source) {
            return Heard::Ignored;
        }
        if !self.limits.allow(now, source.ip()) {
            return Heard::RateLimited;
        }
        let answer = Answer {
            nonce: query.nonce,
            ..self.answer.clone()
        };
        // A full send buffer drops the answer, as the network might.
        let _ = self.socket.send_to(&answer.encode(), source);
        Heard::Answered
    }
}

/// Whether a query from `source` is answered: IPv4 from a private
/// (RFC 1918), link-local or loopback address, with a port. Discovery is
/// for the LAN; these are the addresses a LAN has, and an answer never goes
/// to one beyond it.
fn answered_source(source: SocketAddr) -> bool {
    match source.ip() {
        IpAddr::V4(ip) => {
            source.port() != 0 && (ip.is_private() || ip.is_link_local() || ip.is_loopback())
        }
        IpAddr::V6(_) => false,
    }
}

/// Answers counted per window, in all and per source.
#[derive(Debug)]
struct Limits {
    window_start: Option<Instant>,
    total: u32,
    sources: Vec<(IpAddr, u8)>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            window_start: None,
            total: 0,
            sources: Vec::with_capacity(SOURCES_PER_WINDOW),
        }
    }
}

impl Limits {
    /// May `source` be answered now? Counts the answer if so.
    fn allow(&mut self, now: Instant, source: IpAddr) -> bool {
        if self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW)
        {
            self.window_start = Some(now);
            self.total = 0;
            self.sources.clear();
        }
        if self.total >= ANSWERS_PER_WINDOW {
            return false;
        }
        let at = match self.sources.iter().position(|(ip, _)| *ip == source) {
            Some(at) => at,
            None if self.sources.len() < SOURCES_PER_WINDOW => {
                self.sources.push((source, 0));
                self.sources.len() - 1
            }
            None => return false,
        };
        let count = &mut self.sources[at].1;
        if *count >= ANSWERS_PER_SOURCE {
            return false;
        }
        *count += 1;
        self.total += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn only_lan_sources_with_a_port_are_answered() {
        for ip in [
            v4(10, 1, 2, 3),
            v4(172, 16, 0, 1),
            v4(192, 168, 1, 9),
            v4(169, 254, 7, 7),
            v4(127, 0, 0, 1),
        ] {
            assert!(answered_source(SocketAddr::new(ip, 40000)), "{ip}");
            assert!(!answered_source(SocketAddr::new(ip, 0)), "{ip} port 0");
        }
        for ip in [v4(8, 8, 8, 8), v4(100, 64, 0, 1), v4(255, 255, 255, 255)] {
            assert!(!answered_source(SocketAddr::new(ip, 40000)), "{ip}");
        }
        assert!(!answered_source("[fe80::1]:40000".parse().unwrap()));
    }

    #[test]
    fn one_source_gets_two_answers_a_window() {
        let mut limits = Limits::default();
        let t0 = Instant::now();
        let a = v4(10, 0, 0, 1);
        assert!(limits.allow(t0, a));
        assert!(limits.allow(t0, a));
        assert!(!limits.allow(t0 + Duration::from_millis(999), a));
        assert!(limits.allow(t0 + WINDOW, a));
    }

    #[test]
    fn everyone_together_gets_32_answers_a_window() {
        let mut limits = Limits::default();
        let t0 = Instant::now();
        let allowed = (0..=255u8)
            .filter(|&n| limits.allow(t0, v4(10, 0, 0, n)))
            .count();
        assert_eq!(allowed, ANSWERS_PER_WINDOW as usize);
    }

    #[test]
    fn sources_past_the_table_wait_for_the_next_window() {
        let mut limits = Limits {
            total: 0,
            window_start: None,
            sources: Vec::new(),
        };
        let t0 = Instant::now();
        // Fill the table without reaching the total: one answer each, then
        // the total is lifted out of the way.
        for n in 0..SOURCES_PER_WINDOW as u8 {
            assert!(limits.allow(t0, v4(10, 0, 1, n)));
            limits.total = 0;
        }
        assert!(!limits.allow(t0, v4(10, 0, 2, 0)));
        assert_eq!(limits.sources.len(), SOURCES_PER_WINDOW);
        assert!(limits.allow(t0 + WINDOW, v4(10, 0, 2, 0)));
    }
}
