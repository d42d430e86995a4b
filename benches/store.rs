//! The history log's user-space cost per record: a turn's records encoded
//! (`encode_unsealed`, as the writer appends each accepted MSG) and sealed
//! (`seal_records`, their checksums, as the writer does before its one
//! `write`), with no name, a short name and the longest, for a 32-byte text.
//! No file is written: the kernel's share is in BENCHMARKS.md ("Fourth
//! round"). Throughput is in records/s; the record's size on disk is in
//! each benchmark's name.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use evchat::testing::store_format::{RecordView, encode_unsealed, seal_records};
use std::hint::black_box;

/// Records in a turn at 1:1 full speed (BENCHMARKS.md, "Fourth round").
const TURN: usize = 700;

fn encode_and_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("store_turn");
    group.throughput(Throughput::Elements(TURN as u64));
    let text = [b'x'; 32];
    let longest = "N".repeat(24);
    for name in ["", "alice", &longest] {
        let record = RecordView {
            time_ms: 1_764_596_702_123,
            origin: 1,
            dest: 4096,
            roles: 7,
            name,
            text: &text,
        };
        let size = 22 + name.len() + text.len();
        let label = format!("name{}_{size}B", name.len());
        // One buffer reused across iterations, as the writer keeps its own.
        let mut batch = Vec::with_capacity(size * TURN);
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                batch.clear();
                for _ in 0..TURN {
                    encode_unsealed(&mut batch, black_box(&record));
                }
                seal_records(&mut batch);
                black_box(&batch);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode_and_seal);
criterion_main!(benches);
