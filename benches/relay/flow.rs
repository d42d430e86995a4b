//! What the protocol parsers report into: counters, the latency histogram and
//! each publisher's window.
//!
//! A message stays *outstanding* for its publisher until whatever settles it
//! on that target has happened:
//!
//! | target | settled by |
//! |--------|------------|
//! | evchat | the server's OK/ERRO to the emitter (sent only after the exhibitors acked) |
//! | redis | delivery to every subscriber, and PUBLISH's integer reply |
//! | nats, mqtt0, raw | delivery to every subscriber (no acknowledgement exists) |
//! | nats-verbose | delivery to every subscriber, and the `+OK` |
//! | mqtt1 | delivery to every subscriber (each PUBACKs it), and the broker's PUBACK |
//! | redis-streams | delivery (the entry in a consumer's XREAD reply) to every consumer, and XADD's reply |
//! | jetstream | delivery to every core subscriber of the subject, and the PubAck |
//! | `*-ws` | the same as the target's plain TCP twin |
//!
//! Deliveries are matched to messages through the payload head (publisher,
//! sequence), counted in a ring of per-message delivery counts; a publisher's
//! "done" mark advances over messages that reached every subscriber. The
//! window caps `sent − min(done, replied)`, so a subscriber never lags a
//! publisher by more than the window and no broker buffers without bound.

use crate::HEAD_LEN;
use crate::tail::{SendTimes, Slow, Slowest};
use hdrhistogram::Histogram;

/// Running totals; the report subtracts the snapshot taken at warm-up end.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Messages publishers put on the wire.
    pub sent: u64,
    /// Messages subscribers received (each subscriber of a broadcast counts).
    pub delivered: u64,
    /// Acknowledgements publishers received from the server.
    pub acked: u64,
    /// Of those, refusals (evchat ERRO, RESP error, MQTT failure).
    pub refused: u64,
    /// Deliveries whose head named no publisher or an unsent sequence.
    pub garbled: u64,
    /// Bytes read from and written to all sockets.
    pub wire_in: u64,
    pub wire_out: u64,
}

/// One publisher's window.
pub struct Flow {
    /// Index of its connection.
    pub conn: usize,
    /// Messages sent.
    pub sent: u64,
    /// Messages delivered to every subscriber, in order.
    pub done: u64,
    /// Acknowledgements from the server.
    pub replied: u64,
    /// Deliveries per message still in flight, indexed by `seq & mask`.
    ring: Vec<u32>,
    mask: u64,
    /// Queued for a pump this turn.
    pub dirty: bool,
    /// With `--rate`: when each outstanding message actually left, so a slow
    /// delivery can say how late the generator sent it.
    pub left: Option<SendTimes>,
}

/// Shared state every parser reports into.
pub struct Ctx {
    /// Nanoseconds since the clock base, read after each `read`.
    pub now_ns: u64,
    pub counters: Counters,
    /// Delivery latency in nanoseconds.
    pub hist: Histogram<u64>,
    /// The slowest deliveries, one by one (`--slowest`).
    pub slowest: Slowest,
    pub flows: Vec<Flow>,
    /// Publishers whose window opened this turn.
    pub dirty: Vec<usize>,
    /// Deliveries that settle one message (subscribers per publisher).
    pub fanout: u32,
    /// Whether deliveries settle messages (all targets but evchat).
    pub gate_delivery: bool,
    /// Whether server acknowledgements settle messages.
    pub gate_replies: bool,
    pub window: u64,
}

impl Ctx {
    pub fn new(
        publishers: &[usize],
        window: u32,
        fanout: u32,
        gate_delivery: bool,
        gate_replies: bool,
        paced: bool,
        slowest: usize,
    ) -> Ctx {
        let ring_len = (window as usize).next_power_of_two();
        let flows = publishers
            .iter()
            .map(|&conn| Flow {
                conn,
                sent: 0,
                done: 0,
                replied: 0,
                ring: if gate_delivery {
                    vec![0; ring_len]
                } else {
                    Vec::new()
                },
                mask: ring_len as u64 - 1,
                dirty: false,
                left: paced.then(|| SendTimes::new(window)),
            })
            .collect();
        Ctx {
            now_ns: 0,
            counters: Counters::default(),
            // 1 ns .. 100 s at 3 significant digits.
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds"),
            slowest: Slowest::new(slowest),
            flows,
            dirty: Vec::new(),
            fanout,
            gate_delivery,
            gate_replies,
            window: window as u64,
        }
    }

    /// Messages publisher `p` may still send before its window is full.
    pub fn room(&self, p: usize) -> u64 {
        let f = &self.flows[p];
        let mut settled = f.sent;
        if self.gate_delivery {
            settled = settled.min(f.done);
        }
        if self.gate_replies {
            settled = settled.min(f.replied);
        }
        self.window - (f.sent - settled)
    }

    fn mark(&mut self, p: usize) {
        let f = &mut self.flows[p];
        if !f.dirty {
            f.dirty = true;
            self.dirty.push(p);
        }
    }

    /// A subscriber received a payload (at least its head).
    #[inline]
    pub fn delivered(&mut self, payload: &[u8]) {
        self.counters.delivered += 1;
        let Some(head) = payload.get(..HEAD_LEN) else {
            self.counters.garbled += 1;
            return;
        };
        let sent_ns = u64::from_le_bytes(head[0..8].try_into().expect("8 bytes"));
        let p = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) as usize;
        let seq = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as u64;
        let latency = self.now_ns.saturating_sub(sent_ns).max(1);
        self.hist.saturating_record(latency);
        if self.slowest.wants(latency) {
            self.keep_slow(sent_ns, p, seq);
        }
        if !self.gate_delivery {
            return;
        }
        let Some(f) = self.flows.get_mut(p) else {
            self.counters.garbled += 1;
            return;
        };
        // The sequence carries the low 32 bits of `sent` at send time; only
        // messages in [done, sent) can still be counted.
        let offset = seq.wrapping_sub(f.done) & u64::from(u32::MAX);
        if offset >= f.sent - f.done {
            self.counters.garbled += 1;
            return;
        }
        let slot = ((f.done + offset) & f.mask) as usize;
        f.ring[slot] += 1;
        if offset == 0 && f.ring[slot] >= self.fanout {
            while f.done < f.sent {
                let slot = (f.done & f.mask) as usize;
                if f.ring[slot] < self.fanout {
                    break;
                }
                f.ring[slot] = 0;
                f.done += 1;
            }
            self.mark(p);
        }
    }

    /// Keeps a delivery among the slowest, with the time its message left
    /// (out of line: the hot path only compares against the floor).
    #[cold]
    #[inline(never)]
    fn keep_slow(&mut self, due_ns: u64, p: usize, seq: u64) {
        let left_ns = self
            .flows
            .get(p)
            .and_then(|f| f.left.as_ref())
            .map_or(due_ns, |left| left.get(seq).max(due_ns));
        self.slowest.offer(Slow {
            due_ns,
            left_ns,
            arrived_ns: self.now_ns,
        });
    }

    /// Publisher `p` received an acknowledgement (`ok` false: a refusal).
    #[inline]
    pub fn replied(&mut self, p: usize, ok: bool) {
        self.counters.acked += 1;
        if !ok {
            self.counters.refused += 1;
        }
        let f = &mut self.flows[p];
        if f.replied < f.sent {
            f.replied += 1;
        }
        if self.gate_replies {
            self.mark(p);
        }
    }
}
