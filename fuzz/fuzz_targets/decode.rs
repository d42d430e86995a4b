//! Fuzz target for the codec: `Frame::decode`, `FrameView::parse`,
//! `Frame::frame_len`, and both types' `encode`.
//!
//! Input: the first two bytes (big-endian) pick a split point, taken modulo
//! the length of the rest plus one; the rest is a byte stream as a client
//! might send it. The stream is decoded three ways, which must agree exactly
//! (same frames, same error, same bytes left over):
//!
//! * whole: all bytes buffered at once, decoded until `Ok(None)` or `Err`;
//! * split: the bytes before the split point, decode, then the rest, decode;
//! * trickle: one byte at a time, decoding after each.
//!
//! An `Err` means the stream is lost (the server closes the connection), so
//! after one no further frame is decoded in any of the three.
//!
//! Every single decode step is also checked on its own: a decoded frame
//! re-encodes to exactly the bytes it consumed, `frame_len` and
//! `encoded_len` equal the bytes consumed, and the bytes after it are left
//! untouched; `Ok(None)` and `Err` leave the buffer untouched, and
//! `frame_len` agrees with them. `FrameView::parse` (the server's in-place
//! reading) must agree with `decode` at every step: same length, same frame,
//! same bytes when re-encoded, same error. Finally the frames must equal what an
//! independent reading of PROTOCOL.md's wire format gives.
//!
//! The extension's frames (HELLO, HELLOACK, WHO, KICK, and the rooms' JOIN,
//! LEAVE, ROOMS, ROOMACK, ROOMLIST, and the waiting messages' TELL and WAITING) are read by their own parser, `ExtFrame::parse`: the same stream is read with it too,
//! whole, split and trickled, and the three must agree; each frame it takes
//! re-encodes to the bytes it consumed, and an over-long L is refused as
//! soon as its 10 bytes are there, never later.
#![no_main]

use bytes::BytesMut;
use evchat::proto::ext::{self, ExtError, ExtFrame};
use evchat::proto::{
    Body, Encode, Frame, FrameView, HEADER_LEN, Header, Kind, MAX_FRAME_LEN, ProtoError,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Frame>,
    error: Option<ProtoError>,
    rest: Vec<u8>,
}

/// One decode call on `buf`, whose contents must be `expected`; checks
/// everything a single call promises.
fn step(buf: &mut BytesMut, expected: &[u8]) -> Result<Option<Frame>, ProtoError> {
    assert_eq!(&buf[..], expected, "buffer does not hold what was fed");
    let len = Frame::frame_len(expected);
    let parsed = FrameView::parse(expected);
    let result = Frame::decode(buf);
    match &result {
        Ok(Some(frame)) => {
            let consumed = expected.len() - buf.len();
            let (view, view_len) = parsed
                .expect("decode took a frame, parse errs")
                .expect("decode took a frame, parse waits");
            assert_eq!(
                view_len, consumed,
                "parse and decode take different lengths"
            );
            assert_eq!(
                &view.to_frame(),
                frame,
                "parse and decode read different frames"
            );
            assert_eq!(view.encoded_len(), consumed, "view encoded_len");
            let mut reencoded = BytesMut::from(&b"xy"[..]);
            view.encode_into(&mut reencoded);
            assert_eq!(
                &reencoded[2..],
                &expected[..consumed],
                "view re-encoding differs"
            );
            assert_eq!(view.text(), frame.text().map(|t| &t[..]));
            let _ = view.to_string();
            assert_eq!(len, Ok(Some(consumed)), "frame_len disagrees with decode");
            assert!((HEADER_LEN..=MAX_FRAME_LEN).contains(&consumed));
            assert_eq!(
                &buf[..],
                &expected[consumed..],
                "bytes after the frame changed"
            );
            assert_eq!(frame.encoded_len(), consumed, "encoded_len");
            let encoded = frame.to_bytes();
            assert_eq!(&encoded[..], &expected[..consumed], "re-encoding differs");
            let mut appended = BytesMut::from(&b"xy"[..]);
            frame.encode_into(&mut appended);
            assert_eq!(&appended[2..], &expected[..consumed], "encode appends");
            assert_eq!(Header::peek(expected), Some(frame.header()));
            let _ = frame.to_string();
        }
        Ok(None) => {
            assert_eq!(parsed, Ok(None), "decode waits, parse does not");
            assert_eq!(&buf[..], expected, "Ok(None) touched the buffer");
            match len {
                Ok(None) => assert!(expected.len() < HEADER_LEN + 2),
                Ok(Some(n)) => assert!(n > expected.len() && n <= MAX_FRAME_LEN),
                Err(e) => panic!("frame_len errs ({e}) where decode waits"),
            }
        }
        Err(e) => {
            assert_eq!(
                parsed.as_ref().map(|_| ()),
                Err(e),
                "parse disagrees on the error"
            );
            assert_eq!(&buf[..], expected, "Err touched the buffer");
            assert_eq!(len.as_ref(), Err(e), "frame_len disagrees with decode");
            assert_eq!(Some(e.header()), Header::peek(expected));
            assert!(Kind::from_u16(e.header().kind).is_none());
            let _ = e.to_string();
        }
    }
    result
}

/// Feeds `stream` in the chunks given by `cuts` (increasing offsets),
/// decoding as much as possible after each chunk, as the server does.
fn decode_in_chunks(stream: &[u8], cuts: impl IntoIterator<Item = usize>) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut error = None;
    let mut consumed = 0;
    let mut fed = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        let cut = cut.clamp(fed, stream.len());
        buf.extend_from_slice(&stream[fed..cut]);
        fed = cut;
        while error.is_none() {
            match step(&mut buf, &stream[consumed..fed]) {
                Ok(Some(frame)) => {
                    consumed += frame.encoded_len();
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => error = Some(e),
            }
        }
    }
    assert_eq!(fed, stream.len());
    Outcome {
        frames,
        error,
        rest: buf.to_vec(),
    }
}

/// PROTOCOL.md's wire format read directly, as a second opinion.
fn reference(stream: &[u8]) -> Outcome {
    let u16_at = |i: usize| u16::from_be_bytes([stream[i], stream[i + 1]]);
    let mut frames = Vec::new();
    let mut at = 0;
    let mut error = None;
    while stream.len() - at >= 8 {
        let header = Header {
            kind: u16_at(at),
            origin: u16_at(at + 2),
            dest: u16_at(at + 4),
            seq: u16_at(at + 6),
        };
        let Some(kind) = Kind::from_u16(header.kind) else {
            error = Some(ProtoError::UnknownType(header));
            break;
        };
        let body_at = at + 8;
        let (body, end) = match kind {
            Kind::Msg | Kind::Clist => {
                if stream.len() - body_at < 2 {
                    break;
                }
                let count = u16_at(body_at) as usize;
                let size = if kind == Kind::Msg { count } else { 2 * count };
                let end = body_at + 2 + size;
                if end > stream.len() {
                    break;
                }
                let bytes = &stream[body_at + 2..end];
                let body = if kind == Kind::Msg {
                    Body::Text(bytes.to_vec().into())
                } else {
                    Body::Clients(
                        bytes
                            .chunks(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect(),
                    )
                };
                (body, end)
            }
            _ => (Body::Empty, body_at),
        };
        frames.push(Frame {
            kind,
            origin: header.origin,
            dest: header.dest,
            seq: header.seq,
            body,
        });
        at = end;
    }
    Outcome {
        frames,
        error,
        rest: stream[at..].to_vec(),
    }
}

#[derive(Debug, PartialEq)]
struct ExtOutcome {
    frames: Vec<ExtFrame>,
    error: Option<ExtError>,
    rest: Vec<u8>,
}

/// One `ExtFrame::parse` call on what is buffered; checks what it promises.
fn ext_step(buffered: &[u8]) -> Result<Option<(ExtFrame, usize)>, ExtError> {
    let result = ExtFrame::parse(buffered);
    let announced = (buffered.len() >= HEADER_LEN + 2)
        .then(|| HEADER_LEN + 2 + u16::from_be_bytes([buffered[8], buffered[9]]) as usize);
    match &result {
        Ok(Some((frame, len))) => {
            assert_eq!(Some(*len), announced, "a frame is its announced length");
            assert!(*len <= ext::MAX_EXT_FRAME_LEN);
            assert_eq!(
                &frame.to_bytes()[..],
                &buffered[..*len],
                "ext re-encoding differs"
            );
            assert_eq!(frame.encoded_len(), *len);
            assert_eq!(Header::peek(buffered), Some(frame.header()));
            let shown = format!("{frame} {frame:?}");
            assert!(!shown.is_empty());
        }
        Ok(None) => {
            // Waiting is only for bytes that cannot be judged yet.
            if let Some(n) = announced {
                assert!(n > buffered.len() && n <= ext::MAX_EXT_FRAME_LEN);
            }
        }
        Err(e) => {
            assert_eq!(Some(e.header()), Header::peek(buffered));
            if let ExtError::NotExtension(h) = e {
                assert!(!ext::is_ext_kind(h.kind));
            }
        }
    }
    result
}

fn ext_in_chunks(stream: &[u8], cuts: impl IntoIterator<Item = usize>) -> ExtOutcome {
    let mut frames = Vec::new();
    let mut error = None;
    let mut consumed = 0;
    let mut fed = 0;
    for cut in cuts.into_iter().chain([stream.len()]) {
        fed = cut.clamp(fed, stream.len());
        while error.is_none() {
            match ext_step(&stream[consumed..fed]) {
                Ok(Some((frame, len))) => {
                    consumed += len;
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(e) => error = Some(e),
            }
        }
    }
    ExtOutcome {
        frames,
        error,
        rest: stream[consumed..].to_vec(),
    }
}

fuzz_target!(|data: &[u8]| {
    let (selector, stream) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) as usize, rest),
        _ => (0, data),
    };
    let split = selector % (stream.len() + 1);

    let whole = decode_in_chunks(stream, []);
    let two_parts = decode_in_chunks(stream, [split]);
    assert_eq!(whole, two_parts, "split at {split} changes the result");
    let trickled = decode_in_chunks(stream, 1..stream.len());
    assert_eq!(whole, trickled, "byte-at-a-time feeding changes the result");
    assert_eq!(
        whole,
        reference(stream),
        "decode disagrees with PROTOCOL.md"
    );

    let ext_whole = ext_in_chunks(stream, []);
    assert_eq!(
        ext_whole,
        ext_in_chunks(stream, [split]),
        "ext: split at {split}"
    );
    assert_eq!(
        ext_whole,
        ext_in_chunks(stream, 1..stream.len()),
        "ext: trickled"
    );
    // An over-long L is refused from the first 10 bytes alone.
    if let Some(ExtError::Malformed(h)) = &ext_whole.error {
        let at = stream.len() - ext_whole.rest.len();
        let l = u16::from_be_bytes([stream[at + 8], stream[at + 9]]) as usize;
        let first_ten = ExtFrame::parse(&stream[at..at + HEADER_LEN + 2]);
        if first_ten != Ok(None) {
            assert_eq!(first_ten, Err(ExtError::Malformed(*h)));
        } else {
            assert!(
                l <= ext::max_body(h.kind),
                "an over-long L waited for its body"
            );
        }
    }
});
