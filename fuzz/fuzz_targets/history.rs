//! Fuzz target for the history log's reader: `store::testing::Cursor` on any
//! bytes a segment file might hold.
//!
//! Input: byte 0 bit 0 says whether the segment is the log's last (the only
//! place a torn tail may be); bytes 1-2 (big-endian) pick a small read-ahead
//! size; the rest is the segment file. The segment is read to its end twice,
//! with that read-ahead and with the default, and:
//!
//! * neither panics, and both give the same records and the same final step
//!   (the buffer's size never changes what is read);
//! * the cursor's buffer stays bounded (two of the longest records, or the
//!   read-ahead, whichever is more, with room for `Vec` growth);
//! * each record re-encodes to exactly the bytes it was read from (in
//!   version 4, as a record of a batch, its time the batch's), offsets
//!   follow each other with no gap, and the final step's offset is where the
//!   last record ended;
//! * a final step, asked for again, comes again unchanged;
//! * everything equals an independent reading of HISTORY.md's rules: the
//!   header and its format version (`EVCHLOG4` with its records in
//!   checksummed batches, each batch checked whole before its first record
//!   is handed out, `EVCHLOG3` with room records,
//!   `EVCHLOG2` with the sender's roles and name in each record, `EVCHLOG1`
//!   without), the records, and where and why reading stops (end, torn
//!   tail, or corruption with its kind: a bad name field, and in version 3
//!   a room record whose kind or fields are wrong, among them);
//! * in version 3, every room record (dest 65535) reads as a `RoomRecord`
//!   and re-encodes to its bytes.
#![no_main]

use evchat::store::rooms::RoomRecord;
use evchat::testing::store_format::{
    Batches, Cursor, Damage, Format, MAX_BATCH_BODY, MAX_UNIT_LEN, RECORD_HEADER_LEN, Record,
    SEGMENT_MAGIC, SEGMENT_MAGIC_V1, SEGMENT_MAGIC_V2, SEGMENT_MAGIC_V3, Step, encode_record_v1,
    encode_record_v3, seal_records,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Stop {
    End,
    Torn { offset: u64, len: u64 },
    Corrupt { offset: u64, damage: Damage },
}

#[derive(Debug, PartialEq)]
struct Reading {
    records: Vec<(u64, Record)>,
    stop: Stop,
}

fn read(segment: &[u8], last: bool, read_ahead: Option<usize>) -> Reading {
    let mut cursor = read_ahead.map_or_else(Cursor::new, Cursor::with_read_ahead);
    let end = segment.len() as u64;
    let bound = 2 * read_ahead
        .unwrap_or(0)
        .max(256 * 1024)
        .max(2 * MAX_UNIT_LEN);
    let mut records = Vec::new();
    let mut expected_offset = SEGMENT_MAGIC.len() as u64;
    // The format the magic names: records are re-encoded in it.
    let format = if segment.get(..8) == Some(&SEGMENT_MAGIC_V1[..]) {
        Format::V1
    } else if segment.get(..8) == Some(&SEGMENT_MAGIC_V2[..]) {
        Format::V2
    } else if segment.get(..8) == Some(&SEGMENT_MAGIC_V3[..]) {
        Format::V3
    } else {
        Format::V4
    };
    // In version 4: the batch being read.
    let mut batch_at = None;
    let stop = loop {
        let step = cursor.next(segment, end, last).expect("slices do not fail");
        let stop = match step {
            Step::Record {
                offset,
                record,
                unit,
            } => {
                let at = offset as usize;
                if format == Format::V4 {
                    if batch_at != Some(unit.offset) {
                        // A new batch: right after the last, its time the
                        // record's, its records as many as it says.
                        assert_eq!(
                            unit.offset, expected_offset,
                            "batches must follow each other"
                        );
                        batch_at = Some(unit.offset);
                        expected_offset = unit.offset + 16;
                        let u = unit.offset as usize;
                        assert_eq!(&segment[u + 8..u + 16], &record.time_ms.to_be_bytes());
                    }
                    assert_eq!(offset, expected_offset, "records must follow each other");
                    let mut one = Batches::new();
                    if record.dest == 0xffff {
                        let room =
                            RoomRecord::read(&record).expect("a room record the cursor took");
                        one.push_room(record.time_ms, &room);
                    } else {
                        one.push(&record);
                    }
                    let encoded = &one.seal()[16..];
                    assert_eq!(encoded.len(), record.encoded_len());
                    assert_eq!(&segment[at..at + encoded.len()], encoded, "re-encoding");
                    expected_offset = offset + encoded.len() as u64;
                    records.push((offset, record.to_record()));
                    let u = unit.offset as usize;
                    let unit_len = RECORD_HEADER_LEN
                        + u32::from_be_bytes(segment[u + 4..u + 8].try_into().unwrap()) as usize;
                    assert_eq!(cursor.offset(), unit.offset + unit_len as u64);
                    assert_eq!(cursor.format(), format);
                    continue;
                }
                assert_eq!(unit.offset, offset, "a record of its own before version 4");
                assert_eq!(unit.records, 1);
                assert_eq!(offset, expected_offset, "records must follow each other");
                let mut encoded = Vec::new();
                match format {
                    Format::V3 if record.dest == 0xffff => {
                        let room =
                            RoomRecord::read(&record).expect("a room record the cursor took");
                        room.encode_unsealed(record.time_ms, &mut encoded);
                        seal_records(&mut encoded);
                    }
                    Format::V2 | Format::V3 | Format::V4 => {
                        encode_record_v3(&mut encoded, record);
                    }
                    Format::V1 => {
                        assert_eq!((record.roles, record.name), (0, ""));
                        let (time, origin, dest) = (record.time_ms, record.origin, record.dest);
                        encode_record_v1(&mut encoded, time, origin, dest, record.text);
                    }
                }
                assert_eq!(
                    &segment[at..at + encoded.len()],
                    &encoded[..],
                    "re-encoding"
                );
                expected_offset = offset + encoded.len() as u64;
                records.push((offset, record.to_record()));
                assert_eq!(cursor.offset(), expected_offset);
                assert_eq!(cursor.format(), format);
                assert!(
                    cursor.buffer_capacity() <= bound,
                    "buffer grew past its bound"
                );
                continue;
            }
            Step::End => Stop::End,
            Step::TornTail { offset, len } => Stop::Torn { offset, len },
            Step::Corrupt { offset, damage } => Stop::Corrupt { offset, damage },
        };
        // Asked again, a final step is the same.
        let again = match cursor.next(segment, end, last).expect("slices do not fail") {
            Step::Record { .. } => panic!("a record after {stop:?}"),
            Step::End => Stop::End,
            Step::TornTail { offset, len } => Stop::Torn { offset, len },
            Step::Corrupt { offset, damage } => Stop::Corrupt { offset, damage },
        };
        assert_eq!(again, stop, "a final step must repeat");
        assert!(
            cursor.buffer_capacity() <= bound,
            "buffer grew past its bound"
        );
        break stop;
    };
    match &stop {
        Stop::End if !segment.is_empty() => assert_eq!(expected_offset, end),
        Stop::Torn { offset, len } => assert_eq!(offset + len, end),
        Stop::Corrupt { offset, .. } if *offset > 0 => assert_eq!(*offset, expected_offset),
        _ => {}
    }
    Reading { records, stop }
}

/// HISTORY.md read directly, as a second opinion.
fn reference(segment: &[u8], last: bool) -> Reading {
    let end = segment.len() as u64;
    let u32_at = |i: usize| u32::from_be_bytes(segment[i..i + 4].try_into().unwrap());
    // Versions 2 and 3: 14 fixed body bytes, a name of up to 24 (and in 3,
    // up to 39 bytes of a waiting message's fields); version 1: 12.
    let version_1 = segment.get(..8) == Some(&SEGMENT_MAGIC_V1[..]);
    let version_2 = !version_1;
    let version_4 = segment.get(..8) == Some(&SEGMENT_MAGIC[..]);
    let version_3 = version_4 || segment.get(..8) == Some(&SEGMENT_MAGIC_V3[..]);
    // Version 4's unit is a batch: its time, up to 64 KiB of records and
    // one more of the longest (a record: 4 + 6 + 24 + 65535 + 39).
    assert_eq!(MAX_BATCH_BODY, 8 + 65_535 + 4 + 6 + 24 + 65_535 + 39);
    let (fixed, longest) = if version_4 {
        (8 + 4 + 6, MAX_BATCH_BODY)
    } else if version_3 {
        (14, 14 + 24 + 65_535 + 39)
    } else if version_2 {
        (14, 14 + 24 + 65_535)
    } else {
        (12, 12 + 65_535)
    };
    let whole_record_at = |i: usize| -> bool {
        if segment.len() - i < RECORD_HEADER_LEN {
            return false;
        }
        let body = u32_at(i + 4) as usize;
        (fixed..=longest).contains(&body)
            && i + RECORD_HEADER_LEN + body <= segment.len()
            && crc32c::crc32c(&segment[i + 4..i + RECORD_HEADER_LEN + body]) == u32_at(i)
    };
    let zero = segment.iter().all(|&b| b == 0);
    let mut records = Vec::new();
    if segment.is_empty() {
        return Reading {
            records,
            stop: Stop::End,
        };
    }
    if segment.len() < 8
        || segment[..8] != SEGMENT_MAGIC
            && segment[..8] != SEGMENT_MAGIC_V3
            && segment[..8] != SEGMENT_MAGIC_V2
            && segment[..8] != SEGMENT_MAGIC_V1
    {
        let short = segment.len() < 8;
        let stop = if last && (zero || short && SEGMENT_MAGIC.starts_with(segment)) {
            Stop::Torn {
                offset: 0,
                len: end,
            }
        } else if short {
            Stop::Corrupt {
                offset: 0,
                damage: Damage::Incomplete,
            }
        } else if segment.starts_with(b"EVCHLOG") && segment[7].is_ascii_digit() {
            Stop::Corrupt {
                offset: 0,
                damage: Damage::UnknownVersion(segment[7]),
            }
        } else {
            Stop::Corrupt {
                offset: 0,
                damage: Damage::BadMagic,
            }
        };
        return Reading { records, stop };
    }
    let mut at = 8;
    loop {
        if at == segment.len() {
            return Reading {
                records,
                stop: Stop::End,
            };
        }
        if version_4 && whole_record_at(at) {
            let body = u32_at(at + 4) as usize;
            match batch_records(at, &segment[at..at + RECORD_HEADER_LEN + body]) {
                Ok(mut batch) => records.append(&mut batch),
                Err(damage) => {
                    let stop = Stop::Corrupt {
                        offset: at as u64,
                        damage,
                    };
                    return Reading { records, stop };
                }
            }
            at += RECORD_HEADER_LEN + body;
            continue;
        }
        if whole_record_at(at) {
            let body = u32_at(at + 4) as usize;
            let b = &segment[at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + body];
            let (roles, name, text) = if version_2 {
                let name_len = b[13] as usize;
                let name = b.get(14..14 + name_len);
                match name {
                    Some(name)
                        if name_len <= 24 && name.iter().all(|c| (0x21..=0x7e).contains(c)) =>
                    {
                        (
                            b[12],
                            String::from_utf8(name.to_vec()).unwrap(),
                            &b[14 + name_len..],
                        )
                    }
                    // A right checksum over a wrong name: corruption, last or not.
                    _ => {
                        let stop = Stop::Corrupt {
                            offset: at as u64,
                            damage: Damage::BadName,
                        };
                        return Reading { records, stop };
                    }
                }
            } else {
                (0, String::new(), &b[12..])
            };
            let dest = u16::from_be_bytes([b[10], b[11]]);
            let kind = u16::from_be_bytes([b[8], b[9]]);
            if version_3 && !room_fields_ok(dest, kind, roles, &name, text) {
                let stop = Stop::Corrupt {
                    offset: at as u64,
                    damage: Damage::BadRoomRecord,
                };
                return Reading { records, stop };
            }
            records.push((
                at as u64,
                Record {
                    time_ms: u64::from_be_bytes(b[0..8].try_into().unwrap()),
                    origin: u16::from_be_bytes([b[8], b[9]]),
                    dest: u16::from_be_bytes([b[10], b[11]]),
                    roles,
                    name,
                    text: text.to_vec(),
                },
            ));
            at += RECORD_HEADER_LEN + body;
            continue;
        }
        let damage = if segment.len() - at < RECORD_HEADER_LEN {
            Damage::Incomplete
        } else {
            let body = u32_at(at + 4);
            if !(fixed..=longest).contains(&(body as usize)) {
                Damage::BadLength(body)
            } else if at + RECORD_HEADER_LEN + body as usize > segment.len() {
                Damage::Incomplete
            } else {
                let stored = u32_at(at);
                let computed =
                    crc32c::crc32c(&segment[at + 4..at + RECORD_HEADER_LEN + body as usize]);
                Damage::BadChecksum { stored, computed }
            }
        };
        let torn = last && !(at + 1..segment.len()).any(whole_record_at);
        let stop = if torn {
            Stop::Torn {
                offset: at as u64,
                len: end - at as u64,
            }
        } else {
            Stop::Corrupt {
                offset: at as u64,
                damage,
            }
        };
        return Reading { records, stop };
    }
}

/// A whole version 4 batch at `at` (its checksum right), read directly:
/// its records with their offsets, or why it is corrupt.
fn batch_records(at: usize, batch: &[u8]) -> Result<Vec<(u64, Record)>, Damage> {
    let time_ms = u64::from_be_bytes(batch[8..16].try_into().unwrap());
    let mut records = Vec::new();
    let mut i = 16;
    while i < batch.len() {
        if batch.len() - i < 4 {
            return Err(Damage::BadBatch);
        }
        let len = u32::from_be_bytes(batch[i..i + 4].try_into().unwrap()) as usize;
        if !(6..=6 + 24 + 65_535 + 39).contains(&len) || len > batch.len() - i - 4 {
            return Err(Damage::BadBatch);
        }
        let b = &batch[i + 4..i + 4 + len];
        let name_len = b[5] as usize;
        let name = match b.get(6..6 + name_len) {
            Some(name) if name_len <= 24 && name.iter().all(|c| (0x21..=0x7e).contains(c)) => {
                String::from_utf8(name.to_vec()).unwrap()
            }
            _ => return Err(Damage::BadName),
        };
        let text = &b[6 + name_len..];
        let (origin, dest) = (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        );
        if !room_fields_ok(dest, origin, b[4], &name, text) {
            return Err(Damage::BadRoomRecord);
        }
        records.push((
            (at + i) as u64,
            Record {
                time_ms,
                origin,
                dest,
                roles: b[4],
                name,
                text: text.to_vec(),
            },
        ));
        i += 4 + len;
    }
    Ok(records)
}

fuzz_target!(|data: &[u8]| {
    let (last, read_ahead, segment) = match data {
        [flags, a, b, rest @ ..] => (
            flags & 1 == 1,
            1 + (u16::from_be_bytes([*a, *b]) as usize % 4096),
            rest,
        ),
        _ => return,
    };
    let small = read(segment, last, Some(read_ahead));
    let default = read(segment, last, None);
    assert_eq!(small, default, "the read-ahead size changed what was read");
    assert_eq!(
        small,
        reference(segment, last),
        "the cursor disagrees with HISTORY.md"
    );
});

/// HISTORY.md's table of room records, read directly: whether a version 3
/// record's fields are ones some record has.
fn room_fields_ok(dest: u16, kind: u16, roles: u8, name: &str, text: &[u8]) -> bool {
    let printable = |b: &[u8]| b.iter().all(|c| (0x21..=0x7e).contains(c));
    if dest != 0xffff {
        return text.len() <= 65_535;
    }
    match kind {
        1 => {
            !name.is_empty()
                && roles & !3 == 0
                && text.len() > 2
                && text.len() <= 2 + 24
                && printable(&text[2..])
        }
        2..=4 => !name.is_empty() && roles == 0 && text.len() == 2,
        5 => {
            if text.len() < 15 {
                return false;
            }
            let nl = text[14] as usize;
            let room = u16::from_be_bytes([text[12], text[13]]);
            nl <= 24
                && text.len() >= 15 + nl
                && printable(&text[15..15 + nl])
                && text.len() - 15 - nl <= 65_535
                && (room == 0) != (nl == 0)
        }
        6 => name.is_empty() && roles == 0 && text.len() == 8,
        7 => name.is_empty() && roles == 0 && (text == [0] || text == [1]),
        8 => text.len() >= 4 && text.len() - 4 <= 65_535,
        9 => !name.is_empty() && roles == 0 && text.len() == 6,
        _ => false,
    }
}
