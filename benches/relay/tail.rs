//! The slowest deliveries of a run, kept one by one so that a bad tail can be
//! taken apart: when each was due, when it actually left the generator, when
//! it arrived, all on the system's monotonic clock (`CLOCK_MONOTONIC`, the
//! clock `perf sched record -k CLOCK_MONOTONIC` and bpftrace's `nsecs` stamp
//! events with), so each can be laid beside a scheduler trace of the same
//! run.
//!
//! A delivery's latency splits in two: `late`, how long after its due time
//! the generator wrote it (a stalled or preempted generator, or a full
//! window), and `flight`, from that write to its arrival (the server and the
//! kernel path, and the generator's own delay in reading it). Only paced
//! runs (`--rate`) have a due time apart from the send time; without one,
//! `late` is zero.
//!
//! The hot path pays one comparison per delivery (against the smallest
//! latency kept) and, with `--rate`, one store per message sent (its send
//! time, in a ring the size of the window).

/// One of the slowest deliveries, in nanoseconds on the generator's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slow {
    /// When the message was due (paced) or written (closed loop).
    pub due_ns: u64,
    /// When the generator wrote it.
    pub left_ns: u64,
    /// When the subscriber's read returned it.
    pub arrived_ns: u64,
}

impl Slow {
    pub fn latency_ns(&self) -> u64 {
        self.arrived_ns.saturating_sub(self.due_ns)
    }
}

/// The `capacity` slowest deliveries seen since the last reset.
pub struct Slowest {
    kept: Vec<Slow>,
    capacity: usize,
    /// What a delivery's latency must exceed to be kept, so that the hot
    /// path makes one comparison: 0 while there is room (every latency is at
    /// least 1), the smallest kept once full, `u64::MAX` with no capacity.
    floor: u64,
}

impl Slowest {
    pub fn new(capacity: usize) -> Slowest {
        let mut slowest = Slowest {
            kept: Vec::with_capacity(capacity),
            capacity,
            floor: 0,
        };
        slowest.reset();
        slowest
    }

    /// Whether a delivery of `latency_ns` would be kept: the caller looks up
    /// the rest of its figures only then.
    #[inline]
    pub fn wants(&self, latency_ns: u64) -> bool {
        latency_ns > self.floor
    }

    /// Keeps `slow`, dropping the fastest kept if full.
    pub fn offer(&mut self, slow: Slow) {
        if !self.wants(slow.latency_ns()) {
            return;
        }
        if self.kept.len() == self.capacity {
            let fastest = self
                .kept
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.latency_ns())
                .map(|(i, _)| i)
                .expect("full, capacity above 0");
            self.kept.swap_remove(fastest);
        }
        self.kept.push(slow);
        if self.kept.len() == self.capacity {
            self.floor = self
                .kept
                .iter()
                .map(Slow::latency_ns)
                .min()
                .expect("full, capacity above 0");
        }
    }

    pub fn reset(&mut self) {
        self.kept.clear();
        self.floor = if self.capacity == 0 { u64::MAX } else { 0 };
    }

    /// What is kept, in the order the messages were due.
    pub fn by_due_time(&self) -> Vec<Slow> {
        let mut all = self.kept.clone();
        all.sort_by_key(|s| s.due_ns);
        all
    }
}

/// Each publisher's send times, by sequence number, while its messages are
/// outstanding: the window bounds what is outstanding, so a ring of the
/// window's size (rounded up to a power of two) still holds the time of any
/// message a delivery can name.
pub struct SendTimes {
    ring: Vec<u64>,
    mask: u64,
}

impl SendTimes {
    pub fn new(window: u32) -> SendTimes {
        let len = (window as usize).next_power_of_two();
        SendTimes {
            ring: vec![0; len],
            mask: len as u64 - 1,
        }
    }

    #[inline]
    pub fn record(&mut self, seq: u64, at_ns: u64) {
        self.ring[(seq & self.mask) as usize] = at_ns;
    }

    pub fn get(&self, seq: u64) -> u64 {
        self.ring[(seq & self.mask) as usize]
    }
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: what the generator's clock base is
/// reported against.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct passed.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
