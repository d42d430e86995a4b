//! Codec throughput: encoding and decoding MSG frames at three payload sizes.
//!
//! Each iteration handles a batch of frames back to back (1000 for the small
//! sizes, fewer for 32 KiB so a batch stays near 1 MiB), the way a connection
//! buffer holds them, so per-frame overhead shows against per-byte cost.
//! Throughput is reported both in frames/s and bytes/s of wire data.

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use evchat::proto::{Encode, Frame};
use std::hint::black_box;

/// Payload sizes (bytes of MSG text) and their labels.
const SIZES: [(&str, usize); 3] = [("32B", 32), ("1KiB", 1024), ("32KiB", 32 * 1024)];
/// Frames per batch for small payloads.
const MAX_FRAMES: usize = 1000;
/// Cap on a batch's wire size, so large payloads don't make 32 MB batches.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// A MSG frame with `size` bytes of text, and how many of them make a batch.
fn msg_batch(size: usize) -> (Frame, usize) {
    let frame = Frame::msg(1, 4096, 42, vec![b'x'; size]).expect("size fits a MSG");
    let count = (MAX_BATCH_BYTES / frame.encoded_len()).clamp(1, MAX_FRAMES);
    (frame, count)
}

fn throughput(frame: &Frame, count: usize) -> Throughput {
    Throughput::ElementsAndBytes {
        elements: count as u64,
        bytes: (frame.encoded_len() * count) as u64,
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode_msg");
    for (label, size) in SIZES {
        let (frame, count) = msg_batch(size);
        group.throughput(throughput(&frame, count));
        // One buffer reused across iterations: measures encoding, not allocation.
        let mut out = BytesMut::with_capacity(frame.encoded_len() * count);
        group.bench_with_input(BenchmarkId::from_parameter(label), &frame, |b, frame| {
            b.iter(|| {
                out.clear();
                for _ in 0..count {
                    black_box(frame).encode_into(&mut out);
                }
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_msg");
    for (label, size) in SIZES {
        let (frame, count) = msg_batch(size);
        let mut wire = BytesMut::with_capacity(frame.encoded_len() * count);
        for _ in 0..count {
            frame.encode_into(&mut wire);
        }
        group.throughput(throughput(&frame, count));
        // Decoding consumes its buffer, so each iteration gets a fresh copy,
        // made outside the timed routine.
        group.bench_with_input(BenchmarkId::from_parameter(label), &wire, |b, wire| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| {
                    let mut decoded = 0;
                    while let Some(frame) = Frame::decode(&mut buf).expect("valid stream") {
                        black_box(&frame);
                        decoded += 1;
                    }
                    assert_eq!(decoded, count);
                    buf
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
