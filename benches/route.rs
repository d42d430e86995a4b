//! The server's work per message without sockets: frames decoded from a
//! connection's input bytes, routed by the [`Router`], and re-encoded into
//! each destination's output buffer — what one loop turn does between its
//! read and its write. Syscalls and wake-ups are left out on purpose; they
//! show in `benches/relay.rs`.
//!
//! - `unicast_1to1`: a window of 1024 MSGs (32 B) from one emitter to its
//!   exhibitor, then the exhibitor's 1024 OKs, each settling an OK to the
//!   emitter. One element = one message with its two acks.
//! - `broadcast_1to100`: 64 MSGs to 100 exhibitors, then every exhibitor's OKs.
//!   One element = one delivery with its ack.

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evchat::proto::{ClientId, Encode, Frame, FrameView, Kind, SERVER_ID};
use evchat::server::Limits;
use evchat::testing::{CloseReason, ConnId, Outbox, Router};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Per-connection output buffers, filled as the server's `Wire` fills them.
struct Outputs {
    buffers: Vec<BytesMut>,
}

impl Outbox for Outputs {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        frame.encode_into(&mut self.buffers[to]);
    }
    fn forward(&mut self, targets: &[ConnId], msg: &FrameView<'_>) {
        for &to in targets {
            msg.encode_into(&mut self.buffers[to]);
        }
    }
    fn close(&mut self, conn: ConnId, id: ClientId, reason: CloseReason) {
        panic!("connection {conn} (id {id}) closed: {reason}");
    }
    fn resume_input(&mut self, _conn: ConnId) {}
}

/// A router with one emitter (connection 0) and `exhibitors` exhibitors
/// (connections 1..), the emitter paired with the first exhibitor.
struct Rig {
    router: Router,
    out: Outputs,
    now: Instant,
    emitter_id: ClientId,
    exhibitor_ids: Vec<ClientId>,
}

impl Rig {
    fn new(exhibitors: usize) -> Rig {
        let limits = Limits {
            ack_timeout: Duration::from_secs(3600),
            max_inflight: 65535,
            ..Limits::default()
        };
        let mut rig = Rig {
            router: Router::new(limits),
            out: Outputs {
                buffers: vec![BytesMut::new(); exhibitors + 1],
            },
            now: Instant::now(),
            emitter_id: 0,
            exhibitor_ids: Vec::new(),
        };
        for conn in 1..=exhibitors {
            let id = rig.identify(conn, 0);
            rig.exhibitor_ids.push(id);
        }
        rig.emitter_id = rig.identify(0, rig.exhibitor_ids[0]);
        rig
    }

    fn identify(&mut self, conn: ConnId, origin: ClientId) -> ClientId {
        self.router.connected(conn, self.now);
        let oi = Frame::bare(Kind::Oi, origin, SERVER_ID, 0);
        self.router.on_frame(conn, oi, self.now, &mut self.out);
        let mut reply = self.out.buffers[conn].split();
        let ok = Frame::decode(&mut reply).unwrap().unwrap();
        assert_eq!(ok.kind, Kind::Ok, "OI refused");
        ok.dest
    }

    /// Feeds `input` to the router as connection `conn`'s bytes, parsed in
    /// place as the server does.
    fn feed(&mut self, conn: ConnId, input: &[u8]) {
        let mut consumed = 0;
        while let Some((frame, len)) = FrameView::parse(&input[consumed..]).unwrap() {
            consumed += len;
            self.router
                .on_frame_view(conn, &frame, self.now, &mut self.out);
        }
        assert_eq!(consumed, input.len(), "a partial frame was fed");
    }

    /// One round's input, prepared outside the timed loop: the emitter's
    /// `count` MSGs to `dest` and each exhibitor's OKs for what it receives.
    fn round(&self, dest: ClientId, count: usize) -> Round {
        let mut msgs = BytesMut::new();
        for seq in 1..=count as u16 {
            Frame::msg(self.emitter_id, dest, seq, vec![b'x'; 32])
                .unwrap()
                .encode_into(&mut msgs);
        }
        let targets = if dest == 0 {
            self.exhibitor_ids.len()
        } else {
            1
        };
        let acks = self.exhibitor_ids[..targets]
            .iter()
            .map(|&id| {
                let mut acks = BytesMut::new();
                for seq in 1..=count as u16 {
                    Frame::bare(Kind::Ok, id, self.emitter_id, seq).encode_into(&mut acks);
                }
                acks
            })
            .collect();
        Round { msgs, acks }
    }

    /// Routes one round; returns the bytes delivered to exhibitors and the
    /// bytes of replies to the emitter, then empties the outputs.
    fn run(&mut self, round: &Round) -> (usize, usize) {
        self.feed(0, &round.msgs);
        let mut delivered = 0;
        for (index, acks) in round.acks.iter().enumerate() {
            let conn = index + 1;
            delivered += self.out.buffers[conn].len();
            self.out.buffers[conn].clear();
            self.feed(conn, acks);
        }
        let replies = self.out.buffers[0].len();
        self.out.buffers[0].clear();
        (delivered, replies)
    }
}

struct Round {
    msgs: BytesMut,
    acks: Vec<BytesMut>,
}

fn unicast(c: &mut Criterion) {
    const WINDOW: usize = 1024;
    let mut rig = Rig::new(1);
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(WINDOW as u64));
    group.bench_function("unicast_1to1", |b| {
        let round = rig.round(rig.exhibitor_ids[0], WINDOW);
        b.iter(|| {
            let (delivered, replies) = black_box(rig.run(&round));
            assert_eq!((delivered, replies), (round.msgs.len(), WINDOW * 8));
        })
    });
    group.finish();
}

fn broadcast(c: &mut Criterion) {
    const EXHIBITORS: usize = 100;
    const BATCH: usize = 64;
    let mut rig = Rig::new(EXHIBITORS);
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements((BATCH * EXHIBITORS) as u64));
    group.bench_function("broadcast_1to100", |b| {
        let round = rig.round(0, BATCH);
        b.iter(|| {
            let (delivered, replies) = black_box(rig.run(&round));
            assert_eq!(
                (delivered, replies),
                (round.msgs.len() * EXHIBITORS, BATCH * 8)
            );
        })
    });
    group.finish();
}

criterion_group!(benches, unicast, broadcast);
criterion_main!(benches);
