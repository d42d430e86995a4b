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

use bytes::BytesMut;
use evchat::web::{WebSocket, WsStatus};
use libfuzzer_sys::fuzz_target;

/// What each read said (a close code for a verdict), the protocol input and
/// the output at the end.
type Outcome = (Vec<Result<(), u16>>, BytesMut, BytesMut);

fn run(stream: &[u8], read_size: usize, max_output: usize, fast: bool) -> Outcome {
    let mut ws = WebSocket::new();
    let (mut frames, mut output) = (BytesMut::new(), BytesMut::new());
    let mut said = Vec::new();
    for bytes in stream.chunks(read_size) {
        let status = if fast {
            ws.feed(bytes, &mut frames, &mut output, max_output)
        } else {
            ws.feed_through_tungstenite(bytes, &mut frames, &mut output, max_output)
        };
        let verdict = match status {
            WsStatus::Open => Ok(()),
            WsStatus::Closed => Err(1000),
            WsStatus::Full => Err(0),
            WsStatus::Failed(failure) => Err(failure.close_code()),
        };
        said.push(verdict);
        if verdict.is_err() {
            break;
        }
    }
    (said, frames, output)
}

fuzz_target!(|data: &[u8]| {
    let [read_size, cap, stream @ ..] = data else {
        return;
    };
    let read_size = usize::from(*read_size) + 1;
    let max_output = [0, 40, 64 * 1024][usize::from(*cap) % 3];
    let fast = run(stream, read_size, max_output, true);
    let reference = run(stream, read_size, max_output, false);
    assert_eq!(fast, reference, "the fast path and tungstenite disagree");
});
