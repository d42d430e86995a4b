//! Fuzz target for the server's WebSocket frame reader: the same client
//! bytes fed to `WebSocket::feed` (whole binary frames unmasked in place,
//! everything else through tungstenite) and to tungstenite alone must give
//! the same protocol input, the same answers (pongs, close) and the same
//! verdict at the same read.
//!
//! Input: byte 0 picks the read size (1 to 256 bytes), byte 1 the output cap
//! (0, 40 bytes or 64 KiB: a pong that does not fit is a client that does not
//! read), the rest is what the client sends after the upgrade.
#![no_main]

use evchat::testing::feed_in_reads;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [read_size, cap, stream @ ..] = data else {
        return;
    };
    let reads = [usize::from(*read_size) + 1];
    let max_output = [0, 40, 64 * 1024][usize::from(*cap) % 3];
    let fast = feed_in_reads(stream, &reads, max_output, true);
    let reference = feed_in_reads(stream, &reads, max_output, false);
    assert_eq!(fast, reference, "the fast path and tungstenite disagree");
});
