//! The wire format, rule by rule: byte-literal encode/decode for all seven
//! frame types (including the examples), partial input, trailing
//! bytes, unknown types, arbitrary split points, and property-based
//! round-trips. Only `evchat::proto` is exercised; no sockets.

use bytes::BytesMut;
use evchat::proto::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Helpers

/// Asserts that `frame` encodes to exactly `wire` and that `wire` decodes to
/// exactly `frame`, consuming every byte.
fn assert_wire(frame: &Frame, wire: &[u8]) {
    let mut out = BytesMut::new();
    frame.encode_into(&mut out);
    assert_eq!(&out[..], wire, "encoding of {frame}");
    assert_eq!(&frame.to_bytes()[..], wire, "to_bytes of {frame}");
    assert_eq!(frame.encoded_len(), wire.len(), "encoded_len of {frame}");
    assert_eq!(
        Frame::frame_len(wire),
        Ok(Some(wire.len())),
        "frame_len of {frame}"
    );

    let mut buf = BytesMut::from(wire);
    assert_eq!(
        Frame::decode(&mut buf),
        Ok(Some(frame.clone())),
        "decoding {frame}"
    );
    assert!(buf.is_empty(), "decoding {frame} left {} bytes", buf.len());
}

/// Decodes every whole frame in `buf`, panicking on a decode error.
fn drain(buf: &mut BytesMut, into: &mut Vec<Frame>) {
    while let Some(frame) = Frame::decode(buf).expect("valid stream") {
        into.push(frame);
    }
}

/// Feeds `wire` to a decoder in the given chunks, decoding after each one,
/// and returns the frames plus whatever was left undecoded.
fn decode_in_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Frame>, BytesMut) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        drain(&mut buf, &mut frames);
    }
    (frames, buf)
}

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode_into(&mut out);
    }
    out
}

/// A MSG frame's wire form: header, then C, then the text.
fn msg_wire(origin: u16, dest: u16, seq: u16, text: &[u8]) -> Vec<u8> {
    let mut wire = Vec::with_capacity(10 + text.len());
    wire.extend_from_slice(&5u16.to_be_bytes()); // type: MSG
    wire.extend_from_slice(&origin.to_be_bytes()); // origin
    wire.extend_from_slice(&dest.to_be_bytes()); // destination
    wire.extend_from_slice(&seq.to_be_bytes()); // sequence number
    wire.extend_from_slice(&(text.len() as u16).to_be_bytes()); // C
    wire.extend_from_slice(text); // C bytes of text
    wire
}

/// One frame of each type, with their wire forms written out by hand.
fn mixed_stream() -> (Vec<Frame>, Vec<u8>) {
    let frames = vec![
        Frame::bare(Kind::Oi, 0, SERVER_ID, 0),
        Frame::bare(Kind::Ok, SERVER_ID, 4096, 0),
        Frame::msg(1, 0, 3, &b"hello"[..]).unwrap(),
        Frame::bare(Kind::Erro, SERVER_ID, 1, 4),
        Frame::msg(2, 4097, 9, &b""[..]).unwrap(),
        Frame::bare(Kind::Creq, 1, 4096, 5),
        Frame::clist(SERVER_ID, 4096, 5, vec![1, 2, 4096]).unwrap(),
        Frame::clist(SERVER_ID, 4096, 6, vec![]).unwrap(),
        Frame::bare(Kind::Flw, 1, SERVER_ID, 7),
    ];
    #[rustfmt::skip]
    let wire: Vec<u8> = vec![
        0x00, 0x03, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, // OI from 0 to server, seq 0
        0x00, 0x01, 0xff, 0xff, 0x10, 0x00, 0x00, 0x00, // OK from server to 4096, seq 0
        0x00, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03, // MSG from 1 to all, seq 3
        0x00, 0x05, b'h', b'e', b'l', b'l', b'o',       //   C = 5, "hello"
        0x00, 0x02, 0xff, 0xff, 0x00, 0x01, 0x00, 0x04, // ERRO from server to 1, seq 4
        0x00, 0x05, 0x00, 0x02, 0x10, 0x01, 0x00, 0x09, // MSG from 2 to 4097, seq 9
        0x00, 0x00,                                     //   C = 0
        0x00, 0x06, 0x00, 0x01, 0x10, 0x00, 0x00, 0x05, // CREQ from 1 to 4096, seq 5
        0x00, 0x07, 0xff, 0xff, 0x10, 0x00, 0x00, 0x05, // CLIST from server to 4096, seq 5
        0x00, 0x03, 0x00, 0x01, 0x00, 0x02, 0x10, 0x00, //   N = 3: 1, 2, 4096
        0x00, 0x07, 0xff, 0xff, 0x10, 0x00, 0x00, 0x06, // CLIST from server to 4096, seq 6
        0x00, 0x00,                                     //   N = 0
        0x00, 0x04, 0x00, 0x01, 0xff, 0xff, 0x00, 0x07, // FLW from 1 to server, seq 7
    ];
    (frames, wire)
}

// ---------------------------------------------------------------------------
// The examples

#[test]
fn exhibitor_oi_is_answered_with_ok_assigning_4096() {
    #[rustfmt::skip]
    let oi = [
        0x00, 0x03, // type: OI
        0x00, 0x00, // origin: 0, "I am an exhibitor"
        0xff, 0xff, // destination: the server
        0x00, 0x00, // sequence number
    ];
    assert_wire(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0), &oi);

    #[rustfmt::skip]
    let ok = [
        0x00, 0x01, // type: OK
        0xff, 0xff, // origin: the server
        0x10, 0x00, // destination: the new exhibitor's id, 4096
        0x00, 0x00, // sequence number, echoed from the OI
    ];
    assert_wire(&Frame::bare(Kind::Ok, SERVER_ID, 4096, 0), &ok);
}

#[test]
fn emitter_oi_pairing_with_4096_is_answered_with_ok_assigning_1() {
    #[rustfmt::skip]
    let oi = [
        0x00, 0x03, // type: OI
        0x10, 0x00, // origin: 4096, the exhibitor to pair with
        0xff, 0xff, // destination: the server
        0x00, 0x00, // sequence number
    ];
    assert_wire(&Frame::bare(Kind::Oi, 4096, SERVER_ID, 0), &oi);

    #[rustfmt::skip]
    let ok = [
        0x00, 0x01, // type: OK
        0xff, 0xff, // origin: the server
        0x00, 0x01, // destination: the new emitter's id, 1
        0x00, 0x00, // sequence number, echoed from the OI
    ];
    assert_wire(&Frame::bare(Kind::Ok, SERVER_ID, 1, 0), &ok);
}

// ---------------------------------------------------------------------------
// One test per frame type

#[test]
fn ok_is_type_1_and_header_only() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x01, // type: OK
        0xff, 0xff, // origin: server
        0x00, 0x2a, // destination: 42
        0x12, 0x34, // sequence number
    ];
    assert_wire(&Frame::bare(Kind::Ok, SERVER_ID, 42, 0x1234), &wire);
}

#[test]
fn erro_is_type_2_and_header_only() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x02, // type: ERRO
        0xff, 0xff, // origin: server
        0x10, 0x05, // destination: 4101
        0xab, 0xcd, // sequence number
    ];
    assert_wire(&Frame::bare(Kind::Erro, SERVER_ID, 4101, 0xabcd), &wire);
}

#[test]
fn oi_is_type_3_and_header_only() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x03, // type: OI
        0x1f, 0xff, // origin: 8191, the last exhibitor id
        0xff, 0xff, // destination: server
        0x00, 0x07, // sequence number
    ];
    assert_wire(&Frame::bare(Kind::Oi, 8191, SERVER_ID, 7), &wire);
}

#[test]
fn flw_is_type_4_and_header_only() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x04, // type: FLW
        0x0f, 0xff, // origin: 4095, the last emitter id
        0xff, 0xff, // destination: server
        0xff, 0xff, // sequence number: the largest
    ];
    assert_wire(&Frame::bare(Kind::Flw, 4095, SERVER_ID, u16::MAX), &wire);
}

#[test]
fn msg_is_type_5_with_length_prefixed_text() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x05, // type: MSG
        0x00, 0x01, // origin: emitter 1
        0x00, 0x00, // destination: 0, broadcast
        0x00, 0x02, // sequence number
        0x00, 0x0b, // C = 11
        b'h', b'e', b'l', b'l', b'o', b' ', b'w', b'o', b'r', b'l', b'd', // text
    ];
    let frame = Frame::msg(1, BROADCAST, 2, &b"hello world"[..]).unwrap();
    assert_wire(&frame, &wire);
}

#[test]
fn msg_with_empty_text_has_c_zero_and_nothing_after() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x05, // type: MSG
        0x00, 0x02, // origin: emitter 2
        0x10, 0x00, // destination: exhibitor 4096
        0x00, 0x00, // sequence number
        0x00, 0x00, // C = 0, no text follows
    ];
    assert_wire(&Frame::msg(2, 4096, 0, &b""[..]).unwrap(), &wire);
}

#[test]
fn msg_carries_non_ascii_bytes_unchanged() {
    let text = [0x00, 0xff, b'\n', 0x80, 0x00];
    let frame = Frame::msg(3, 0, 1, text.to_vec()).unwrap();
    assert_wire(&frame, &msg_wire(3, 0, 1, &text));
}

#[test]
fn msg_with_65535_bytes_of_text_is_the_longest_msg() {
    let text: Vec<u8> = (0..MAX_TEXT_LEN).map(|i| b'a' + (i % 26) as u8).collect();
    let wire = msg_wire(7, 4100, 0x0102, &text);
    assert_eq!(&wire[..10], b"\x00\x05\x00\x07\x10\x04\x01\x02\xff\xff"); // header, C = 65535
    assert_eq!(wire.len(), HEADER_LEN + 2 + 65535);
    assert_wire(&Frame::msg(7, 4100, 0x0102, text).unwrap(), &wire);
}

#[test]
fn creq_is_type_6_and_header_only() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x06, // type: CREQ
        0x00, 0x03, // origin: emitter 3
        0x10, 0x00, // destination: exhibitor 4096
        0x00, 0x10, // sequence number
    ];
    assert_wire(&Frame::bare(Kind::Creq, 3, 4096, 16), &wire);
}

#[test]
fn clist_is_type_7_with_count_prefixed_big_endian_ids() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x07, // type: CLIST
        0xff, 0xff, // origin: server
        0x10, 0x00, // destination: exhibitor 4096
        0x00, 0x10, // sequence number
        0x00, 0x04, // N = 4
        0x00, 0x01, // id 1
        0x0f, 0xff, // id 4095
        0x10, 0x00, // id 4096
        0x1f, 0xff, // id 8191
    ];
    let frame = Frame::clist(SERVER_ID, 4096, 16, vec![1, 4095, 4096, 8191]).unwrap();
    assert_wire(&frame, &wire);
}

#[test]
fn clist_with_no_ids_has_n_zero_and_nothing_after() {
    #[rustfmt::skip]
    let wire = [
        0x00, 0x07, // type: CLIST
        0xff, 0xff, // origin: server
        0x10, 0x01, // destination: exhibitor 4097
        0x00, 0x00, // sequence number
        0x00, 0x00, // N = 0, no ids follow
    ];
    assert_wire(&Frame::clist(SERVER_ID, 4097, 0, vec![]).unwrap(), &wire);
}

#[test]
fn clist_with_65535_ids_is_the_largest_frame() {
    let ids: Vec<ClientId> = (0..=u16::MAX - 1).collect();
    let frame = Frame::clist(SERVER_ID, 4096, 1, ids.clone()).unwrap();
    let mut wire = b"\x00\x07\xff\xff\x10\x00\x00\x01\xff\xff".to_vec(); // header, N = 65535
    for id in &ids {
        wire.extend_from_slice(&id.to_be_bytes());
    }
    assert_eq!(wire.len(), MAX_FRAME_LEN);
    assert_wire(&frame, &wire);
}

// ---------------------------------------------------------------------------
// Building frames

#[test]
fn msg_rejects_text_longer_than_65535_bytes() {
    assert!(Frame::msg(1, 0, 0, vec![b'x'; MAX_TEXT_LEN]).is_ok());
    assert_eq!(
        Frame::msg(1, 0, 0, vec![b'x'; MAX_TEXT_LEN + 1]),
        Err(EncodeError::TextTooLong(65536))
    );
}

#[test]
fn clist_rejects_more_than_65535_ids() {
    assert!(Frame::clist(SERVER_ID, 4096, 0, vec![1; 65535]).is_ok());
    assert_eq!(
        Frame::clist(SERVER_ID, 4096, 0, vec![1; 65536]),
        Err(EncodeError::TooManyClients(65536))
    );
}

#[test]
fn seq_counter_starts_at_zero_counts_up_and_wraps_after_65535() {
    let mut seq = SeqCounter::new();
    assert_eq!(seq, SeqCounter::default());
    assert_eq!(seq.peek(), 0);
    assert_eq!(seq.peek(), 0, "peek does not advance");
    assert_eq!(seq.next_seq(), 0);
    assert_eq!(seq.next_seq(), 1);
    assert_eq!(seq.peek(), 2);
    while seq.peek() != u16::MAX {
        seq.next_seq();
    }
    assert_eq!(seq.next_seq(), 65535);
    assert_eq!(seq.peek(), 0);
    assert_eq!(seq.next_seq(), 0);
    assert_eq!(seq.next_seq(), 1);
}

#[test]
fn id_ranges_are_broadcast_0_emitters_1_to_4095_exhibitors_4096_to_8191_server_65535() {
    assert_eq!(BROADCAST, 0);
    assert_eq!(SERVER_ID, 0xffff);
    for (id, emitter, exhibitor) in [
        (0, false, false),
        (1, true, false),
        (4095, true, false),
        (4096, false, true),
        (8191, false, true),
        (8192, false, false),
        (65535, false, false),
    ] {
        assert_eq!(is_emitter_id(id), emitter, "is_emitter_id({id})");
        assert_eq!(is_exhibitor_id(id), exhibitor, "is_exhibitor_id({id})");
    }
}

// ---------------------------------------------------------------------------
// Framing a byte stream

#[test]
fn decode_consumes_exactly_one_frame_and_leaves_trailing_bytes_untouched() {
    let (frames, wire) = mixed_stream();
    // Trailing bytes that would be an error or a partial frame if read: an
    // unknown type's header, then a lone byte.
    let trailer = b"\x00\x08\xde\xad\xbe\xef\x00\x01\x42";
    let mut offset = 0;
    for frame in &frames {
        let len = frame.encoded_len();
        let mut buf = BytesMut::from(&wire[offset..offset + len]);
        buf.extend_from_slice(trailer);
        assert_eq!(Frame::decode(&mut buf), Ok(Some(frame.clone())));
        assert_eq!(&buf[..], trailer, "after {frame}");
        // The trailer is now the head of the stream, and is rejected as such.
        assert!(matches!(
            Frame::decode(&mut buf),
            Err(ProtoError::UnknownType(_))
        ));
        offset += len;
    }
    assert_eq!(offset, wire.len());
}

#[test]
fn msg_text_that_looks_like_frames_is_not_parsed_as_frames() {
    // The text is itself a complete OK header and a CLIST length; only C says
    // where the text ends.
    let text = b"\x00\x01\xff\xff\x00\x01\x00\x00\x00\x07";
    let mut buf = BytesMut::from(&msg_wire(1, 0, 0, text)[..]);
    buf.extend_from_slice(b"\x00\x04"); // start of a following frame
    let frame = Frame::decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.text().map(|t| &t[..]), Some(&text[..]));
    assert_eq!(&buf[..], b"\x00\x04");
}

#[test]
fn every_proper_prefix_of_a_frame_is_incomplete_and_left_untouched() {
    let (frames, _) = mixed_stream();
    let long = Frame::msg(1, 4096, 9, vec![b'z'; 300]).unwrap();
    let big_list = Frame::clist(SERVER_ID, 4096, 9, (1..=200).collect()).unwrap();
    for frame in frames.iter().chain([&long, &big_list]) {
        let wire = frame.to_bytes();
        for end in 0..wire.len() {
            let prefix = &wire[..end];
            let mut buf = BytesMut::from(prefix);
            assert_eq!(
                Frame::decode(&mut buf),
                Ok(None),
                "{end}-byte prefix of {frame}"
            );
            assert_eq!(
                &buf[..],
                prefix,
                "{end}-byte prefix of {frame} was consumed"
            );
        }
    }
}

#[test]
fn unknown_type_is_an_error_carrying_the_header_and_consuming_nothing() {
    for kind in [0u16, 8, 0xffff] {
        let mut wire = kind.to_be_bytes().to_vec(); // type
        wire.extend_from_slice(&[0x12, 0x34]); // origin
        wire.extend_from_slice(&[0xab, 0xcd]); // destination
        wire.extend_from_slice(&[0x00, 0x63]); // sequence number
        let header = Header {
            kind,
            origin: 0x1234,
            dest: 0xabcd,
            seq: 99,
        };
        // Header alone, and header followed by what might be a body.
        for extra in [&b""[..], &b"\x00\x02hi"[..]] {
            let mut bytes = wire.clone();
            bytes.extend_from_slice(extra);
            let mut buf = BytesMut::from(&bytes[..]);
            let err = Frame::decode(&mut buf).unwrap_err();
            assert_eq!(err, ProtoError::UnknownType(header), "type {kind}");
            assert_eq!(err.header(), header);
            assert_eq!(&buf[..], &bytes[..], "type {kind}: buffer changed");
            assert_eq!(
                Frame::frame_len(&bytes),
                Err(ProtoError::UnknownType(header))
            );
        }
    }
}

#[test]
fn a_stream_split_at_every_point_decodes_to_the_same_frames() {
    let (frames, wire) = mixed_stream();
    assert_eq!(&encode_all(&frames)[..], &wire[..], "hand-written stream");
    for split in 0..=wire.len() {
        let (decoded, rest) = decode_in_chunks([&wire[..split], &wire[split..]]);
        assert_eq!(decoded, frames, "split at {split}");
        assert!(rest.is_empty(), "split at {split}");
    }
}

#[test]
fn a_stream_fed_byte_by_byte_decodes_to_the_same_frames() {
    let (frames, wire) = mixed_stream();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    let mut ends = Vec::new();
    for (i, byte) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        let before = decoded.len();
        drain(&mut buf, &mut decoded);
        if decoded.len() > before {
            ends.push(i + 1);
        }
    }
    assert_eq!(decoded, frames);
    assert!(buf.is_empty());
    // Each frame came out exactly when its last byte arrived, not before or later.
    let expected_ends: Vec<usize> = frames
        .iter()
        .scan(0, |end, f| {
            *end += f.encoded_len();
            Some(*end)
        })
        .collect();
    assert_eq!(ends, expected_ends);
}

// ---------------------------------------------------------------------------
// Properties

fn any_frame() -> impl Strategy<Value = Frame> {
    let header = (any::<u16>(), any::<u16>(), any::<u16>());
    let bare_kind =
        prop::sample::select(vec![Kind::Ok, Kind::Erro, Kind::Oi, Kind::Flw, Kind::Creq]);
    prop_oneof![
        (bare_kind, header).prop_map(|(kind, (o, d, s))| Frame::bare(kind, o, d, s)),
        (header, prop::collection::vec(any::<u8>(), 0..4096))
            .prop_map(|((o, d, s), text)| Frame::msg(o, d, s, text).unwrap()),
        (header, prop::collection::vec(any::<u16>(), 0..400))
            .prop_map(|((o, d, s), ids)| Frame::clist(o, d, s, ids).unwrap()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_frame_round_trips_and_decode_consumes_exactly_encoded_len(
        frame in any_frame(),
        trailer in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut buf = BytesMut::new();
        frame.encode_into(&mut buf);
        prop_assert_eq!(buf.len(), frame.encoded_len());
        prop_assert_eq!(Frame::frame_len(&buf), Ok(Some(frame.encoded_len())));
        buf.extend_from_slice(&trailer);
        prop_assert_eq!(Frame::decode(&mut buf), Ok(Some(frame)));
        prop_assert_eq!(&buf[..], &trailer[..]);
    }

    #[test]
    fn any_frames_split_into_any_chunks_decode_to_the_same_list(
        frames in prop::collection::vec(any_frame(), 0..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let wire = encode_all(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        cuts.push(0);
        cuts.push(wire.len());
        cuts.sort_unstable();
        let chunks = cuts.windows(2).map(|w| &wire[w[0]..w[1]]);
        let (decoded, rest) = decode_in_chunks(chunks);
        prop_assert_eq!(decoded, frames);
        prop_assert!(rest.is_empty());
    }
}

// ---------------------------------------------------------------------------
// Frames read in place: what the server routes

/// Regression (mutation testing: no codec test read a `FrameView`, so its
/// length, text, owned copy and re-encoding could all be wrong unnoticed).
/// Each frame of the mixed stream, read in place, says exactly what the
/// decoded frame says and re-encodes to exactly the bytes it came in.
#[test]
fn a_frame_read_in_place_agrees_with_the_decoded_frame_byte_for_byte() {
    let (frames, wire) = mixed_stream();
    let mut at = 0;
    for frame in &frames {
        let (view, len) = FrameView::parse(&wire[at..])
            .expect("a known type")
            .expect("a whole frame");
        assert_eq!(len, frame.encoded_len(), "{frame}");
        assert_eq!(view.encoded_len(), len, "{frame}");
        assert_eq!(view.to_frame(), *frame);
        assert_eq!(view.text(), frame.text().map(|t| &t[..]), "{frame}");
        assert_eq!(
            view.clients().collect::<Vec<_>>(),
            match &frame.body {
                Body::Clients(ids) => ids.clone(),
                _ => vec![],
            }
        );
        let mut again = BytesMut::from(&b"xy"[..]);
        view.encode_into(&mut again);
        assert_eq!(&again[2..], &wire[at..at + len], "{frame}");
        assert_eq!(view.to_string(), frame.to_string());
        at += len;
    }
    assert_eq!(at, wire.len());
}

/// What the server's log lines show of a frame: never the text itself.
#[test]
fn frames_display_their_type_ids_sequence_and_body_size() {
    let shown: Vec<String> = mixed_stream().0.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        shown,
        [
            "OI(origin 0, dest 65535, seq 0)",
            "OK(origin 65535, dest 4096, seq 0)",
            "MSG(origin 1, dest 0, seq 3) 5 bytes",
            "ERRO(origin 65535, dest 1, seq 4)",
            "MSG(origin 2, dest 4097, seq 9) 0 bytes",
            "CREQ(origin 1, dest 4096, seq 5)",
            "CLIST(origin 65535, dest 4096, seq 5) 3 ids",
            "CLIST(origin 65535, dest 4096, seq 6) 0 ids",
            "FLW(origin 1, dest 65535, seq 7)",
        ]
    );
}
