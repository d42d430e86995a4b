//! The history log's user-space cost per record: a turn's records built
//! into format 4 batches (`Batches::push`, as the writer appends each
//! accepted MSG, and `Batches::seal`, one checksum a batch, before its one
//! `write`), beside format 3's record each (`encode_unsealed` and
//! `seal_records`, a checksum a record: what the writer did before), with
//! no name, a short name and the longest, for a 32-byte text.
//! No file is written: the kernel's share is in BENCHMARKS.md ("Fourth
//! round"). Throughput is in records/s; the record's size on disk is in
//! each benchmark's name.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use evchat::testing::store_format::{Batches, RecordView, encode_unsealed, seal_records};
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
        let label = format!("v3_name{}_{size}B", name.len());
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
        let size = 10 + name.len() + text.len();
        let label = format!("v4_name{}_{size}B", name.len());
        let mut batches = Batches::new();
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                batches.clear(usize::MAX);
                for _ in 0..TURN {
                    batches.push(black_box(&record));
                }
                black_box(batches.seal());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode_and_seal);
criterion_main!(benches);
