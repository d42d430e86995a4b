//! The durable history's own tests (the log, the writer, the reader and the
//! format, through `evchat::testing`), against real files: recovery of torn
//! and corrupt logs (every cut of the last record, a flipped bit, empty
//! segments, foreign files), retention, the directory lock, the writer and
//! its sync thread (on a full disk too) and the reader on a live log. The
//! helpers that build logs are shared with `history`. Every wait is bounded
//! by a deadline; none is a sleep.

use crate::util::*;
use evchat::proto::MAX_TEXT_LEN;
use evchat::store::rooms::RoomRecord;
use evchat::store::{Fsync, Item, Reader, StoreError};
use evchat::testing::store_format::{
    BATCH_HEADER_LEN, BATCH_RECORD_HEAD_LEN, SEGMENT_MAGIC, SEGMENT_MAGIC_V1, SEGMENT_MAGIC_V2,
    SEGMENT_MAGIC_V3, encode_record, encode_record_v1, encode_record_v3,
};
use evchat::testing::{Log, Notice, Opened, Options, Record, Ticket, Writer};
use proptest::prelude::*;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Instant;

/// The file of the segment whose first record is number `base`, in the
/// history directory `dir`.
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// A record from a sender with no name.
pub(crate) fn record(time_ms: u64, origin: u16, dest: u16, text: &[u8]) -> Record {
    Record {
        time_ms,
        origin,
        dest,
        roles: 0,
        name: String::new(),
        text: text.to_vec(),
    }
}

/// `n` distinct records; every third is addressed to exhibitor 4096.
pub(crate) fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let dest = if i % 3 == 2 { 4096 } else { 0 };
            let text = format!("message number {i}");
            record(
                1_000_000 + i as u64,
                1 + (i % 5) as u16,
                dest,
                text.as_bytes(),
            )
        })
        .collect()
}

pub(crate) fn encode(records: &[Record]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for r in records {
        encode_record(&mut bytes, r.view());
    }
    bytes
}

/// A record's size on disk as [`encode`] writes it, a batch of its own:
/// 16 bytes of batch header, 10 of record head, the sender's name and the
/// text.
pub(crate) fn encoded_len(r: &Record) -> u64 {
    (BATCH_HEADER_LEN + BATCH_RECORD_HEAD_LEN + r.name.len() + r.text.len()) as u64
}

/// A segment file's bytes: the header, then `records`.
pub(crate) fn segment_bytes(records: &[Record]) -> Vec<u8> {
    let mut bytes = SEGMENT_MAGIC.to_vec();
    bytes.extend(encode(records));
    bytes
}

/// `Log::open`, waiting out a lock held only by a process another test is
/// starting: between fork and exec a child holds copies of all of this
/// process's descriptors, the log's lock file among them, and the lock is
/// released only when the last copy closes (at the child's exec).
pub(crate) fn open_log(dir: &Path, options: Options) -> Result<Opened, StoreError> {
    open_log_with(dir, options, |_| {})
}

/// [`open_log`], handing each record recovered to `recovered`.
pub(crate) fn open_log_with(
    dir: &Path,
    options: Options,
    mut recovered: impl FnMut(evchat::testing::store_format::RecordView<'_>),
) -> Result<Opened, StoreError> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match Log::open(dir, options.clone(), &mut recovered) {
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => std::thread::yield_now(),
            result => return result,
        }
    }
}

pub(crate) fn big_log() -> Options {
    Options::new(1 << 30)
}

/// Opens `dir`, appends `records` and closes it again.
pub(crate) fn write_log(dir: &Path, records: &[Record]) {
    let mut opened = open_log(dir, big_log()).unwrap();
    opened.log.append(&encode(records)).unwrap();
}

/// Every record a fresh reader finds, with numbers; fails on a gap, an
/// incomplete tail or an error.
pub(crate) fn read_all(dir: &Path) -> Vec<(u64, Record)> {
    let mut reader = Reader::open(dir).unwrap();
    let mut found = Vec::new();
    while let Some(item) = reader.next_item().unwrap() {
        match item {
            Item::Record(entry) => found.push((entry.number, entry.record)),
            gap => panic!("unexpected {gap:?}"),
        }
    }
    assert_eq!(reader.incomplete_tail(), None);
    found
}

pub(crate) fn numbered(records: &[Record], first: u64) -> Vec<(u64, Record)> {
    (first..).zip(records.iter().cloned()).collect()
}

/// Where each record of a segment written by [`segment_bytes`] starts.
pub(crate) fn record_offsets(records: &[Record]) -> Vec<u64> {
    let mut at = SEGMENT_MAGIC.len() as u64;
    records
        .iter()
        .map(|r| {
            let start = at;
            at += encoded_len(r);
            start
        })
        .collect()
}

/// A writer whose settle notifications arrive on the returned channel.
pub(crate) fn start_writer(log: Log, mode: Fsync) -> (Writer, Receiver<()>) {
    let (tx, rx) = channel();
    let notify = Box::new(move || {
        let _ = tx.send(());
    });
    (Writer::start(log, mode, Some(notify)).unwrap(), rx)
}

/// Waits until `ticket` is settled; fails the test after [`TIMEOUT`].
pub(crate) fn wait_settled(writer: &Writer, settled: &Receiver<()>, ticket: Ticket) {
    let deadline = Instant::now() + TIMEOUT;
    while writer.settled() <= ticket {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "ticket {ticket} not settled in {TIMEOUT:?}"
        );
        let _ = settled.recv_timeout(left);
    }
}

/// Appends `records` to the writer's batch (nothing written yet); the
/// last one's ticket.
fn append_all(writer: &mut Writer, records: &[Record]) -> Ticket {
    let mut last = 0;
    for r in records {
        last = writer.append(&r.view());
    }
    last
}

/// Runs `evchat ARGS` to its end: exit code, stdout and stderr lines.
pub(crate) fn evchat(args: &[&str]) -> (i32, Vec<String>, Vec<String>) {
    let mut p = Proc::spawn("evchat", args);
    let status = p.wait();
    let out = p.stdout.rest();
    let err = p.stderr.rest();
    (status.code().expect("exit code"), out, err)
}

/// A record from a sender with a name and roles.
pub(crate) fn named(time_ms: u64, origin: u16, dest: u16, name: &str, text: &[u8]) -> Record {
    Record {
        roles: 7,
        name: name.to_string(),
        ..record(time_ms, origin, dest, text)
    }
}

/// A version 1 segment (the format before names were kept), as evchat
/// wrote it then: the magic, then `records` (their names and roles are not
/// written).
pub(crate) fn segment_bytes_v1(records: &[Record]) -> Vec<u8> {
    let mut bytes = SEGMENT_MAGIC_V1.to_vec();
    for r in records {
        encode_record_v1(&mut bytes, r.time_ms, r.origin, r.dest, &r.text);
    }
    bytes
}

// ---- names and the two formats -------------------------------------------

#[test]
fn a_record_keeps_its_senders_name_and_roles_through_the_writer_and_a_reopen() {
    let dir = TempDir::new("named");
    let all = vec![
        named(1, 1, 0, "alice", b"hi all"),
        record(2, 2, 0, b"from a plain client"),
        named(3, 3, 4096, "Bob_the-2.0", b""),
        named(4, 1, 0, &"L".repeat(24), b"the longest name"),
    ];
    let opened = open_log(dir.path(), big_log()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    let last = append_all(&mut writer, &all);
    writer.write();
    wait_settled(&writer, &settled, last);
    drop(writer);
    // The bytes on disk are the format's, record after record.
    assert_eq!(
        fs::read(segment_path(dir.path(), 0)).unwrap(),
        segment_bytes(&all)
    );
    assert_eq!(read_all(dir.path()), numbered(&all, 0));
    let mut recovered = Vec::new();
    // Through the helper: a fork elsewhere in the test process can hold the
    // lock's descriptor for a moment after the writer let it go.
    let reopened = open_log_with(dir.path(), big_log(), |r| recovered.push(r.to_record())).unwrap();
    assert_eq!((reopened.records, reopened.notices), (4, vec![]));
    assert_eq!(recovered, all);
}

#[test]
fn an_old_format_log_still_reads_and_new_records_go_to_a_new_segment() {
    let dir = TempDir::new("old-format");
    let old = records(3);
    let old_bytes = segment_bytes_v1(&old);
    let first = segment_path(dir.path(), 0);
    fs::write(&first, &old_bytes).unwrap();
    // Read as records with no name and roles 0, by a reader and at open.
    assert_eq!(read_all(dir.path()), numbered(&old, 0));
    let mut recovered = Vec::new();
    let opened = Log::open(dir.path(), big_log(), |r| recovered.push(r.to_record())).unwrap();
    assert_eq!(recovered, old);
    assert_eq!(opened.records, 3);
    let next = segment_path(dir.path(), 3);
    let notice = Notice::NewFormat {
        file: first.clone(),
        version: 1,
        next: next.clone(),
    };
    assert_eq!(opened.notices, vec![notice.clone()]);
    assert_eq!(
        notice.to_string(),
        format!(
            "{}: written by an earlier evchat (format 1, without names): kept as it is; \
             new records go to {} (format 4)",
            first.display(),
            next.display()
        )
    );
    let new = [named(10, 1, 0, "alice", b"after the upgrade")];
    let mut log = opened.log;
    log.append(&encode(&new)).unwrap();
    drop(log);
    assert_eq!(
        fs::read(&first).unwrap(),
        old_bytes,
        "the old segment is kept as it was"
    );
    assert_eq!(fs::read(&next).unwrap(), segment_bytes(&new));
    let both: Vec<Record> = old.iter().chain(&new).cloned().collect();
    assert_eq!(read_all(dir.path()), numbered(&both, 0));
    // Once past it, a reopen has nothing to say.
    let reopened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!((reopened.records, reopened.notices), (4, vec![]));
}

#[test]
fn an_old_format_segment_with_no_record_is_rewritten_in_the_new_format() {
    let dir = TempDir::new("old-format-empty");
    let path = segment_path(dir.path(), 0);
    fs::write(&path, SEGMENT_MAGIC_V1).unwrap();
    let mut opened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!((opened.records, &opened.notices[..]), (0, &[][..]));
    assert_eq!(fs::read(&path).unwrap(), SEGMENT_MAGIC);
    let new = [named(1, 1, 0, "alice", b"first")];
    opened.log.append(&encode(&new)).unwrap();
    drop(opened);
    assert_eq!(fs::read(&path).unwrap(), segment_bytes(&new));
}

#[test]
fn an_old_format_torn_tail_is_cut_by_its_own_layout_then_rolled_past() {
    let dir = TempDir::new("old-format-torn");
    let old = records(3);
    let whole = segment_bytes_v1(&old);
    // Version 1 records are 20 bytes and the text.
    let last = whole.len() as u64 - (20 + old[2].text.len()) as u64;
    let path = segment_path(dir.path(), 0);
    fs::write(&path, &whole[..whole.len() - 1]).unwrap();
    let opened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!(
        opened.notices,
        vec![
            Notice::TornTail {
                file: path.clone(),
                offset: last,
                dropped: whole.len() as u64 - 1 - last,
            },
            Notice::NewFormat {
                file: path.clone(),
                version: 1,
                next: segment_path(dir.path(), 2),
            },
        ]
    );
    drop(opened);
    assert_eq!(read_all(dir.path()), numbered(&old[..2], 0));
}

/// A name field that a right checksum covers but that is not a name the
/// format keeps stops the open like any corruption, naming file, offset
/// and what is wrong, even in the last record of the last segment.
#[test]
fn a_bad_name_field_is_corruption_even_in_the_last_record() {
    let dir = TempDir::new("bad-name");
    let all = [
        named(1, 1, 0, "alice", b"hi"),
        named(2, 1, 0, "alice", b"hi"),
    ];
    let mut bytes = segment_bytes(&all);
    let bad = record_offsets(&all)[1];
    let name = bad as usize + BATCH_HEADER_LEN + BATCH_RECORD_HEAD_LEN;
    bytes[name] = b'\n';
    let crc = crc32c::crc32c(&bytes[bad as usize + 4..]);
    bytes[bad as usize..bad as usize + 4].copy_from_slice(&crc.to_be_bytes());
    let path = segment_path(dir.path(), 0);
    fs::write(&path, &bytes).unwrap();
    let e = open_log(dir.path(), big_log()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: corrupt at offset {bad}: the sender's name is not 0 to 24 printable ASCII \
             bytes inside the record (--history-repair cuts the segment there)",
            path.display()
        )
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "nothing is cut without --history-repair"
    );
}

// ---- recovery ----------------------------------------------------------

#[test]
fn a_log_reopens_with_every_record_and_numbers_go_on() {
    let dir = TempDir::new("reopen");
    let all = records(7);
    write_log(dir.path(), &all[..4]);
    let opened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!(opened.notices, vec![]);
    assert_eq!(opened.records, 4);
    assert_eq!(opened.log.next_record(), 4);
    drop(opened);
    write_log(dir.path(), &all[4..]);
    assert_eq!(read_all(dir.path()), numbered(&all, 0));
}

#[test]
fn a_torn_tail_is_cut_at_every_byte_of_the_last_record() {
    let dir = TempDir::new("torn-every-byte");
    let all = records(3);
    let whole = segment_bytes(&all);
    let last = record_offsets(&all)[2];
    let path = segment_path(dir.path(), 0);
    for cut in last + 1..whole.len() as u64 {
        fs::write(&path, &whole[..cut as usize]).unwrap();
        let opened = open_log(dir.path(), big_log()).unwrap();
        let torn = Notice::TornTail {
            file: path.clone(),
            offset: last,
            dropped: cut - last,
        };
        assert_eq!(opened.notices, vec![torn.clone()], "cut at {cut}");
        assert_eq!(opened.records, 2, "cut at {cut}");
        drop(opened);
        assert_eq!(fs::metadata(&path).unwrap().len(), last, "cut at {cut}");
        assert_eq!(read_all(dir.path()), numbered(&all[..2], 0), "cut at {cut}");
        // Reopening finds nothing more to cut, and appending carries on
        // where the last whole record ended.
        let reopened = open_log(dir.path(), big_log()).unwrap();
        assert_eq!(reopened.notices, vec![], "cut at {cut}");
        drop(reopened);
        write_log(dir.path(), &all[2..]);
        assert_eq!(read_all(dir.path()), numbered(&all, 0), "cut at {cut}");
    }
    // The warning names the file, the offset and the bytes dropped.
    let torn = Notice::TornTail {
        file: path.clone(),
        offset: last,
        dropped: 5,
    };
    assert_eq!(
        torn.to_string(),
        format!(
            "{}: torn tail at offset {last} (an interrupted write): cut 5 bytes, \
             holding no whole record",
            path.display()
        )
    );
}

/// Two turns written by the writer, each one batch of several records,
/// as the log holds them; and where the second batch starts.
fn two_turns_of_batches(dir: &Path) -> (Vec<Record>, u64) {
    let all: Vec<Record> = (0..7)
        .map(|i| {
            let time = if i < 4 { 5_000 } else { 6_000 };
            named(
                time,
                1 + i as u16,
                0,
                "alice",
                format!("turn text {i}").as_bytes(),
            )
        })
        .collect();
    let opened = open_log(dir, big_log()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::Always);
    append_all(&mut writer, &all[..4]);
    writer.write();
    let last = append_all(&mut writer, &all[4..]);
    writer.write();
    wait_settled(&writer, &settled, last);
    drop(writer);
    let first_batch: u64 = BATCH_HEADER_LEN as u64
        + all[..4]
            .iter()
            .map(|r| (BATCH_RECORD_HEAD_LEN + r.name.len() + r.text.len()) as u64)
            .sum::<u64>();
    (all, SEGMENT_MAGIC.len() as u64 + first_batch)
}

/// A crash that tears the last turn's batch anywhere loses that whole
/// turn and nothing before it: the server cuts the batch, keeps the turn
/// before, and appends after it.
#[test]
fn a_torn_batch_is_cut_at_every_byte_keeping_the_turns_before_it() {
    let dir = TempDir::new("torn-batch-every-byte");
    let (all, second) = two_turns_of_batches(dir.path());
    let path = segment_path(dir.path(), 0);
    let whole = fs::read(&path).unwrap();
    for cut in second + 1..whole.len() as u64 {
        fs::write(&path, &whole[..cut as usize]).unwrap();
        let opened = open_log(dir.path(), big_log()).unwrap();
        let torn = Notice::TornTail {
            file: path.clone(),
            offset: second,
            dropped: cut - second,
        };
        assert_eq!(opened.notices, vec![torn], "cut at {cut}");
        assert_eq!(opened.records, 4, "cut at {cut}");
        drop(opened);
        assert_eq!(fs::metadata(&path).unwrap().len(), second, "cut at {cut}");
        assert_eq!(read_all(dir.path()), numbered(&all[..4], 0), "cut at {cut}");
        write_log(dir.path(), &all[4..]);
        assert_eq!(read_all(dir.path()), numbered(&all, 0), "cut at {cut}");
    }
}

/// A flipped bit anywhere in a batch with a whole batch after it is
/// corruption at that batch's start: the server refuses to start and names
/// it; `--history-repair` cuts there, keeping the batches before it whole
/// and none of the damaged batch's records.
#[test]
fn corruption_inside_a_batch_is_refused_at_the_batch_and_repair_cuts_there() {
    let dir = TempDir::new("corrupt-batch");
    let (all, second) = two_turns_of_batches(dir.path());
    let path = segment_path(dir.path(), 0);
    let whole = fs::read(&path).unwrap();
    // A third turn after the damage, so that the damage is not a torn tail.
    write_log(dir.path(), &all[..1]);
    let three = fs::read(&path).unwrap();
    for byte in [8, 12, 20, 30, second as usize - 1] {
        let mut bad = three.clone();
        bad[byte] ^= 0x04;
        fs::write(&path, &bad).unwrap();
        let e = open_log(dir.path(), big_log()).unwrap_err();
        assert!(
            matches!(e, StoreError::Corrupt { offset: 8, .. }),
            "byte {byte}: {e}"
        );
        assert_eq!(fs::read(&path).unwrap(), bad, "nothing cut without repair");
    }
    let mut bad = three.clone();
    bad[(second as usize + whole.len()) / 2] ^= 0x04;
    fs::write(&path, &bad).unwrap();
    let e = open_log(dir.path(), big_log()).unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt { offset, .. } if offset == second),
        "{e}"
    );
    let options = Options {
        repair: true,
        ..big_log()
    };
    let repaired = open_log(dir.path(), options).unwrap();
    assert_eq!(repaired.records, 4);
    assert!(
        matches!(&repaired.notices[..], [Notice::Repaired { offset, .. }] if *offset == second),
        "{:?}",
        repaired.notices
    );
    drop(repaired);
    assert_eq!(read_all(dir.path()), numbered(&all[..4], 0));
}

#[test]
fn damage_inside_the_last_record_is_cut_as_a_torn_tail() {
    let dir = TempDir::new("torn-damaged");
    let all = records(3);
    let mut bytes = segment_bytes(&all);
    let last = record_offsets(&all)[2];
    let end = bytes.len() as u64;
    bytes[end as usize - 3] ^= 0x10;
    fs::write(segment_path(dir.path(), 0), &bytes).unwrap();
    let opened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!(
        opened.notices,
        vec![Notice::TornTail {
            file: segment_path(dir.path(), 0),
            offset: last,
            dropped: end - last,
        }]
    );
}

#[test]
fn a_flipped_bit_in_the_middle_stops_the_open_naming_file_and_offset() {
    let dir = TempDir::new("flipped-bit");
    let all = records(5);
    let mut bytes = segment_bytes(&all);
    let offsets = record_offsets(&all);
    let bad = offsets[2];
    bytes[bad as usize + 25] ^= 0x04;
    let path = segment_path(dir.path(), 0);
    fs::write(&path, &bytes).unwrap();

    let err = open_log(dir.path(), big_log()).unwrap_err();
    let StoreError::Corrupt { file, offset, .. } = &err else {
        panic!("expected corruption, got {err}");
    };
    assert_eq!((file, *offset), (&path, bad));
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "{}: corrupt at offset {bad}: checksum mismatch (stored ",
            path.display()
        )),
        "{message}"
    );
    assert!(message.ends_with("(--history-repair cuts the segment there)"));
    assert_eq!(fs::read(&path).unwrap(), bytes, "nothing may be cut");

    // `evchat history` shows what comes before, then the same error.
    let (code, out, err_lines) = evchat(&["history", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(err_lines, vec![format!("evchat history: {message}")]);

    // Repair cuts there, deliberately, and says so.
    let mut repair = big_log();
    repair.repair = true;
    let opened = open_log(dir.path(), repair).unwrap();
    assert_eq!(opened.notices.len(), 1);
    let notice = opened.notices[0].to_string();
    assert!(
        notice.starts_with(&format!(
            "{}: corrupt at offset {bad} (checksum mismatch",
            path.display()
        )) && notice.ends_with(&format!("): repair cut {} bytes", bytes.len() as u64 - bad)),
        "{notice}"
    );
    assert_eq!(opened.records, 2);
    drop(opened);
    assert_eq!(read_all(dir.path()), numbered(&all[..2], 0));
}

#[test]
fn a_bad_length_in_the_middle_is_corruption_not_a_torn_tail() {
    // A length that claims more bytes than the file has would look like a
    // write cut short, but whole records follow it.
    let dir = TempDir::new("bad-length");
    let all = records(4);
    let mut bytes = segment_bytes(&all);
    let bad = record_offsets(&all)[1] as usize;
    bytes[bad + 6] = 0xff;
    fs::write(segment_path(dir.path(), 0), &bytes).unwrap();
    let err = open_log(dir.path(), big_log()).unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { offset, .. } if offset == bad as u64),
        "{err}"
    );
}

/// The sync thread syncs a full segment just after the next one starts, so a
/// power failure in that moment can tear the segment before the last: it is
/// cut like the last one's torn tail; the record numbers it lost are a gap.
#[test]
fn a_torn_tail_in_the_segment_before_the_last_is_cut() {
    let dir = TempDir::new("torn-sealed");
    let all = records(4);
    let first = segment_bytes(&all[..2]);
    let cut = first.len() - 4;
    fs::write(segment_path(dir.path(), 0), &first[..cut]).unwrap();
    fs::write(segment_path(dir.path(), 2), segment_bytes(&all[2..])).unwrap();
    let opened = open_log(dir.path(), big_log()).unwrap();
    let offset = record_offsets(&all)[1];
    assert_eq!(
        opened.notices,
        vec![Notice::TornTail {
            file: segment_path(dir.path(), 0),
            offset,
            dropped: cut as u64 - offset,
        }]
    );
    assert_eq!(opened.records, 3);
    assert_eq!(opened.log.next_record(), 4);
    drop(opened);
    assert_eq!(
        fs::metadata(segment_path(dir.path(), 0)).unwrap().len(),
        offset
    );
}

#[test]
fn a_short_segment_further_back_is_corruption_not_a_torn_tail() {
    let dir = TempDir::new("short-sealed");
    let all = records(5);
    let first = segment_bytes(&all[..2]);
    let cut = first.len() - 4;
    fs::write(segment_path(dir.path(), 0), &first[..cut]).unwrap();
    fs::write(segment_path(dir.path(), 2), segment_bytes(&all[2..4])).unwrap();
    fs::write(segment_path(dir.path(), 4), segment_bytes(&all[4..])).unwrap();
    let err = open_log(dir.path(), big_log()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: corrupt at offset {}: the segment ends inside a record \
             (--history-repair cuts the segment there)",
            segment_path(dir.path(), 0).display(),
            record_offsets(&all)[1]
        )
    );
}

#[test]
fn empty_segments_are_fine() {
    let dir = TempDir::new("empty-segments");
    let all = records(5);
    // A crash right after a new segment was created: it has no header yet.
    fs::write(segment_path(dir.path(), 0), segment_bytes(&all[..2])).unwrap();
    fs::write(segment_path(dir.path(), 2), b"").unwrap();
    let opened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!(opened.notices, vec![]);
    assert_eq!(opened.log.next_record(), 2);
    drop(opened);
    assert_eq!(
        fs::read(segment_path(dir.path(), 2)).unwrap(),
        SEGMENT_MAGIC
    );
    write_log(dir.path(), &all[2..3]);
    // A segment holding only its header, before another.
    fs::write(segment_path(dir.path(), 3), SEGMENT_MAGIC).unwrap();
    fs::write(segment_path(dir.path(), 7), segment_bytes(&all[3..])).unwrap();
    let opened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!((opened.notices.clone(), opened.records), (vec![], 5));
    drop(opened);
    let mut reader = Reader::open(dir.path()).unwrap();
    let mut items = Vec::new();
    while let Some(item) = reader.next_item().unwrap() {
        items.push(match item {
            Item::Record(entry) => format!("{}", entry.number),
            Item::Gap { from, to } => format!("gap {from}..{to}"),
        });
    }
    assert_eq!(items, ["0", "1", "2", "gap 3..7", "7", "8"]);
}

#[test]
fn foreign_files_are_left_alone_with_a_warning() {
    let dir = TempDir::new("foreign");
    let all = records(2);
    write_log(dir.path(), &all);
    fs::write(dir.path().join("README.txt"), "notes").unwrap();
    fs::write(dir.path().join("00000000000000000000.log.bak"), "old").unwrap();
    fs::create_dir(dir.path().join("00000000000000000009.log")).unwrap();
    let opened = open_log(dir.path(), big_log()).unwrap();
    let foreign: Vec<String> = opened.notices.iter().map(|n| n.to_string()).collect();
    let path = |name: &str| dir.path().join(name).display().to_string();
    assert_eq!(
        foreign,
        [
            format!(
                "{}: not a history segment; ignored",
                path("00000000000000000000.log.bak")
            ),
            format!(
                "{}: not a history segment; ignored",
                path("00000000000000000009.log")
            ),
            format!("{}: not a history segment; ignored", path("README.txt")),
        ]
    );
    assert_eq!(opened.records, 2);
    drop(opened);
    assert_eq!(fs::read(dir.path().join("README.txt")).unwrap(), b"notes");
    let (code, out, err) = evchat(&["history", dir.path().to_str().unwrap()]);
    assert_eq!((code, out.len()), (0, 2));
    assert_eq!(
        err,
        foreign
            .iter()
            .map(|line| format!("evchat history: {line}"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_second_writer_on_the_same_directory_is_refused() {
    let dir = TempDir::new("lock");
    let first = open_log(dir.path(), big_log()).unwrap();
    let err = Log::open(dir.path(), big_log(), |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: history directory in use by another server (pid {}) (lock file LOCK)",
            dir.path().display(),
            std::process::id()
        )
    );
    // Readers never take the lock.
    assert_eq!(read_all(dir.path()), vec![]);
    drop(first);
    open_log(dir.path(), big_log()).expect("the lock goes with the log");
}

/// What to replay of them is the router's business (its one window): the
/// log hands over every record it kept.
#[test]
fn open_hands_over_every_record_it_recovers_oldest_first() {
    let dir = TempDir::new("recent");
    let all = records(10);
    write_log(dir.path(), &all);
    let mut recovered = Vec::new();
    let opened = Log::open(dir.path(), big_log(), |record| {
        recovered.push(record.to_record())
    });
    assert_eq!(opened.unwrap().records, 10);
    assert_eq!(recovered, all);
}

// ---- retention ---------------------------------------------------------

/// `n` records of one length (times from `first_time`, from `origin`),
/// and options that fit five of them to a segment.
fn five_to_a_segment(n: u64, first_time: u64, origin: u16) -> (Vec<Record>, Options) {
    let all: Vec<Record> = (0..n)
        .map(|i| {
            let text = format!("same length {i:02}");
            record(first_time + i, origin, 0, text.as_bytes())
        })
        .collect();
    let options = Options {
        segment_bytes: 8 + 5 * encoded_len(&all[0]),
        ..big_log()
    };
    (all, options)
}

#[test]
fn one_write_that_spans_segments_fills_each_to_its_size() {
    // Records of one length, five to a segment, twelve in one write.
    let dir = TempDir::new("fill-segments");
    let (all, options) = five_to_a_segment(12, 1_000, 1);
    let record_len = encoded_len(&all[0]);
    let opened = open_log(dir.path(), options).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    let last = append_all(&mut writer, &all);
    writer.write();
    wait_settled(&writer, &settled, last);
    drop(writer);
    let mut segments: Vec<(u64, u64)> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, entry.metadata().unwrap().len()))
        })
        .collect();
    segments.sort();
    assert_eq!(
        segments,
        [
            (0, 8 + 5 * record_len),
            (5, 8 + 5 * record_len),
            (10, 8 + 2 * record_len)
        ]
    );
    assert_eq!(read_all(dir.path()), numbered(&all, 0));
}

/// Each segment gets its disk blocks up front (`fallocate` keeping the
/// size: BENCHMARKS.md, "Ninth round"), at open and at each roll, while its
/// length stays what was written: readers and recovery see no zero tail.
#[test]
fn segments_reserve_their_blocks_but_keep_the_length_written() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("reserve-blocks");
    let all = records(40);
    let options = Options {
        segment_bytes: 1 << 20,
        ..big_log()
    };
    let mut opened = open_log(dir.path(), options.clone()).unwrap();
    let first = segment_path(dir.path(), 0);
    let meta = fs::metadata(&first).unwrap();
    assert_eq!(meta.len(), SEGMENT_MAGIC.len() as u64);
    // A file system without fallocate is written as before.
    let reserves = reserve_supported(dir.path());
    if reserves {
        assert!(meta.blocks() * 512 >= 1 << 20, "{} blocks", meta.blocks());
    }
    opened.log.append(&encode(&all)).unwrap();
    drop(opened);
    let written = SEGMENT_MAGIC.len() as u64 + all.iter().map(encoded_len).sum::<u64>();
    assert_eq!(fs::metadata(&first).unwrap().len(), written);
    let reopened = open_log(dir.path(), options).unwrap();
    assert_eq!(reopened.notices, vec![]);
    assert_eq!(reopened.records, all.len() as u64);
    assert_eq!(read_all(dir.path()), numbered(&all, 0));
}

/// Whether the file system under `dir` takes `fallocate` (probed on a
/// scratch file, removed after).
fn reserve_supported(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let probe = dir.join("probe.fallocate");
    let file = fs::File::create(&probe).unwrap();
    // SAFETY: a plain system call on a descriptor `file` keeps open.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, 4096) };
    drop(file);
    fs::remove_file(&probe).unwrap();
    rc == 0
}

/// The writer hands each turn's batch over with its record count, and a
/// batch that fits the active segment is written without its records
/// being walked: the counts of those turns must still number the segments
/// that come after them.
#[test]
fn turns_that_fit_their_segment_still_number_the_next_ones() {
    let dir = TempDir::new("turns-fit");
    let (all, options) = five_to_a_segment(13, 2_000, 2);
    let opened = open_log(dir.path(), options.clone()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    // Turns of 2, 2 (fit), 3 (fills the first segment, rolls), 1, 4 (fits,
    // then fills the second), 1.
    let mut from = 0;
    let mut last = 0;
    for turn in [2, 2, 3, 1, 4, 1] {
        last = append_all(&mut writer, &all[from..from + turn]);
        writer.write();
        from += turn;
    }
    wait_settled(&writer, &settled, last);
    drop(writer);
    let bases: Vec<u64> = segment_files(dir.path())
        .into_iter()
        .map(|(base, _, _)| base)
        .collect();
    assert_eq!(bases, [0, 5, 10]);
    assert_eq!(read_all(dir.path()), numbered(&all, 0));
    let reopened = open_log(dir.path(), options).unwrap();
    assert_eq!(reopened.records, all.len() as u64);
    assert_eq!(reopened.notices, vec![]);
}

/// The next segment's file is made ahead, off the writing thread (its
/// blocks reserved: on ext4 that can wait for the disk), once the active
/// segment is half full, and the roll that needs it only renames it into
/// place. None is made before, and none is left once the writer is closed.
#[test]
fn a_roll_renames_the_next_segment_made_ahead_once_the_last_was_half_full() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new("made-ahead");
    let (all, options) = five_to_a_segment(12, 3_000, 3);
    let opened = open_log(dir.path(), options.clone()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    let spare = dir.path().join("next-segment");
    // Two of five: not yet half full, nothing asked.
    append_all(&mut writer, &all[..2]);
    writer.write();
    assert!(!writer.spare_ready() && !spare.exists(), "made too soon");
    append_all(&mut writer, &all[2..3]);
    writer.write();
    wait_until("a next segment made ahead", || writer.spare_ready());
    let made = fs::metadata(&spare).unwrap();
    assert_eq!(fs::read(&spare).unwrap(), SEGMENT_MAGIC);
    if reserve_supported(dir.path()) {
        assert!(
            made.blocks() * 512 >= options.segment_bytes,
            "{} blocks",
            made.blocks()
        );
    }
    // Two more fill segment 0; the sixth starts segment 5.
    append_all(&mut writer, &all[3..6]);
    writer.write();
    let rolled = fs::metadata(segment_path(dir.path(), 5)).unwrap();
    assert_eq!(rolled.ino(), made.ino(), "segment 5 is the file made ahead");
    assert!(!spare.exists(), "renamed");
    // Three in segment 5: half full, the next one is made.
    append_all(&mut writer, &all[6..8]);
    writer.write();
    wait_until("a second next segment made ahead", || writer.spare_ready());
    let second = fs::metadata(&spare).unwrap();
    assert_ne!(second.ino(), made.ino());
    // Two more fill segment 5; the last two start segment 10.
    let last = append_all(&mut writer, &all[8..]);
    writer.write();
    let rolled = fs::metadata(segment_path(dir.path(), 10)).unwrap();
    assert_eq!(rolled.ino(), second.ino(), "segment 10 is the second one");
    wait_settled(&writer, &settled, last);
    drop(writer);
    assert!(!spare.exists(), "a closed writer leaves no next segment");
    assert_eq!(read_all(dir.path()), numbered(&all, 0));
    let reopened = open_log(dir.path(), options).unwrap();
    assert_eq!((reopened.records, reopened.notices), (12, vec![]));
}

/// A next segment made ahead that no roll took is deleted when the log is
/// opened: silently when it holds only the magic (a server killed), told
/// when it holds more (a crash undid a roll's rename, and with it records
/// no sync had covered). Readers never list it.
#[test]
fn a_next_segment_left_behind_is_deleted_at_open_and_told_if_it_held_records() {
    let dir = TempDir::new("left-behind");
    let all = records(3);
    write_log(dir.path(), &all);
    let spare = dir.path().join("next-segment");
    fs::write(&spare, SEGMENT_MAGIC).unwrap();
    let (code, out, err) = evchat(&["history", dir.path().to_str().unwrap()]);
    assert_eq!((code, out.len(), err), (0, 3, Vec::<String>::new()));
    let opened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!((opened.records, &opened.notices[..]), (3, &[][..]));
    assert!(!spare.exists(), "deleted at open");
    drop(opened);

    let mut held = SEGMENT_MAGIC.to_vec();
    held.extend_from_slice(&encode(&records(2)));
    fs::write(&spare, &held).unwrap();
    let opened = open_log(dir.path(), big_log()).unwrap();
    let bytes = (held.len() - SEGMENT_MAGIC.len()) as u64;
    assert_eq!(
        opened.notices,
        vec![Notice::SpareDropped {
            path: spare.clone(),
            bytes
        }]
    );
    assert_eq!(
        opened.notices[0].to_string(),
        format!(
            "{}: a next segment made ahead held {bytes} bytes of records never synced \
             (a crash undid the roll that named it): deleted",
            spare.display()
        )
    );
    assert!(!spare.exists(), "deleted at open");
    assert_eq!(opened.records, 3);
}

#[test]
fn retention_skips_a_segment_already_gone_and_reports_one_it_cannot_delete() {
    let dir = TempDir::new("retention-errors");
    // Ten segments of five records each.
    let text = [b'r'; 50];
    let record_len = (BATCH_HEADER_LEN + BATCH_RECORD_HEAD_LEN + text.len()) as u64;
    let segment_bytes = SEGMENT_MAGIC.len() as u64 + 5 * record_len;
    let options = Options {
        max_bytes: 2 * segment_bytes,
        segment_bytes,
        ..big_log()
    };
    let mut log = open_log(dir.path(), options).unwrap().log;
    let mut batch = Vec::new();
    for i in 0..50 {
        encode_record(&mut batch, record(i, 1, 0, &text).view());
    }
    log.append(&batch).unwrap();
    // Someone removed the oldest segment; a directory took the next one's
    // name, so it cannot be deleted as a file.
    let segment = |base: u64| segment_path(dir.path(), base);
    fs::remove_file(segment(0)).unwrap();
    fs::remove_file(segment(5)).unwrap();
    fs::create_dir(segment(5)).unwrap();
    let done: Vec<String> = log
        .retain()
        .into_iter()
        .map(|result| match result {
            Ok(notice) => format!("ok {notice}"),
            Err(error) => format!("error {error}"),
        })
        .collect();
    assert!(
        !done.iter().any(|d| d.contains(&format!("{:020}.log", 0))),
        "{done:#?}"
    );
    let refused: Vec<&String> = done.iter().filter(|d| d.starts_with("error ")).collect();
    assert_eq!(refused.len(), 1, "{done:#?}");
    assert!(refused[0].contains(&format!("{:020}.log", 5)), "{done:#?}");
    assert!(refused[0].contains("delete old segment"), "{done:#?}");
    // Down to the limit exactly: the last two segments stay.
    assert_eq!(log.total_bytes(), 2 * segment_bytes);
    assert!(segment(40).is_file() && segment(45).is_file());
}

#[test]
fn a_lock_held_before_its_pid_is_written_names_no_pid() {
    // Held, but the holder has not written its pid yet (or wrote junk).
    // A directory for each: a child another test forks while the first
    // lock is held shares its open file until it execs, and would keep
    // that lock past the drop below.
    for (n, content) in ["", "not a pid\n"].into_iter().enumerate() {
        let dir = TempDir::new(&format!("lock-no-pid-{n}"));
        fs::create_dir_all(dir.path()).unwrap();
        let lock = fs::File::create(dir.path().join("LOCK")).unwrap();
        fs::write(dir.path().join("LOCK"), content).unwrap();
        lock.try_lock().unwrap();
        match Log::open(dir.path(), big_log(), |_| {}) {
            Err(StoreError::Locked { holder, .. }) => assert_eq!(holder, "", "{content:?}"),
            Err(other) => panic!("{content:?}: {other}"),
            Ok(_) => panic!("{content:?}: opened a locked log"),
        }
        drop(lock);
    }
}

#[test]
fn a_segment_holding_records_numbered_past_the_next_one_is_corruption() {
    // Segment 3 holds three records (3, 4, 5), but the next one starts at 5.
    let dir = TempDir::new("overlap");
    fs::create_dir_all(dir.path()).unwrap();
    let all = records(7);
    let write = |base: usize, records: &[Record]| {
        let path = dir.path().join(format!("{base:020}.log"));
        fs::write(path, segment_bytes(records)).unwrap();
    };
    write(0, &all[..3]);
    write(3, &all[3..6]);
    write(5, &all[6..]);
    let third = (SEGMENT_MAGIC.len() + encode(&all[3..5]).len()) as u64;
    match Log::open(dir.path(), big_log(), |_| {}) {
        Err(StoreError::Corrupt { offset, damage, .. }) => {
            assert_eq!(offset, third);
            assert_eq!(
                damage.to_string(),
                "record overlaps the next segment, which starts at record 5"
            );
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("an overlapping segment was opened"),
    }
    // With repair, the overlap is cut: 0 to 4, then 5 from the next segment.
    let repaired = Log::open(
        dir.path(),
        Options {
            repair: true,
            ..big_log()
        },
        |_| {},
    )
    .unwrap();
    drop(repaired);
    assert_eq!(
        read_all(dir.path()),
        numbered(&[&all[..5], &all[6..]].concat(), 0)
    );
}

#[test]
fn retention_deletes_the_oldest_segments_past_the_size_limit() {
    let dir = TempDir::new("retention");
    let options = Options {
        max_bytes: 4096,
        segment_bytes: 1024,
        ..big_log()
    };
    let opened = open_log(dir.path(), options.clone()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    let all = records(300);
    let mut last = 0;
    for chunk in all.chunks(7) {
        last = append_all(&mut writer, chunk);
        writer.write();
    }
    wait_settled(&writer, &settled, last);
    drop(writer);

    let mut sizes = Vec::new();
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if let Some(base) = name.strip_suffix(".log") {
            bases.push(base.parse::<u64>().unwrap());
            sizes.push(entry.metadata().unwrap().len());
        }
    }
    bases.sort();
    assert!(sizes.iter().sum::<u64>() <= options.max_bytes, "{sizes:?}");
    assert!(
        sizes.iter().all(|&s| s <= options.segment_bytes),
        "{sizes:?}"
    );
    assert!(bases[0] > 0, "the oldest segment should be gone: {bases:?}");
    let kept = read_all(dir.path());
    assert_eq!(kept, numbered(&all[bases[0] as usize..], bases[0]));

    // A lower limit at open applies at once, and says what it deleted.
    let smaller = Options {
        max_bytes: 2048,
        ..options
    };
    let opened = open_log(dir.path(), smaller).unwrap();
    assert!(!opened.notices.is_empty());
    for notice in &opened.notices {
        assert!(matches!(notice, Notice::Retired { .. }), "{notice}");
    }
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum();
    assert!(on_disk > 0 && on_disk <= 2048, "{on_disk} bytes kept");
    assert_eq!(opened.log.total_bytes(), on_disk);
}

/// Retention never takes a membership or a waiting message with it
/// (HISTORY.md, "Rooms and waiting messages"): it stops at the first
/// segment holding a room record, and the open says so.
#[test]
fn retention_stops_at_a_segment_holding_room_records_and_says_so() {
    let dir = TempDir::new("retention-rooms");
    let options = Options {
        max_bytes: 4096,
        segment_bytes: 1024,
        ..big_log()
    };
    let opened = open_log(dir.path(), options.clone()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    let all = records(300);
    append_all(&mut writer, &all[..3]);
    writer.append_room(
        5,
        &RoomRecord::Waiting {
            wait: 1,
            origin: 1,
            seq: 4,
            room: 0,
            to: "bob",
            sender: "alice",
            roles: 7,
            text: b"waits",
        },
    );
    let mut last = 0;
    for chunk in all[3..].chunks(7) {
        last = append_all(&mut writer, chunk);
        writer.write();
    }
    wait_settled(&writer, &settled, last);
    drop(writer);
    let files = segment_files(dir.path());
    assert_eq!(
        files[0].0, 0,
        "the room record's segment is kept: {files:?}"
    );
    let on_disk: u64 = files.iter().map(|f| f.2).sum();
    assert!(on_disk > options.max_bytes, "{on_disk} bytes");
    let mut waiting = Vec::new();
    let reopened = open_log_with(dir.path(), options.clone(), |r| {
        if let Some(RoomRecord::Waiting { text, .. }) = RoomRecord::read(&r) {
            waiting.push(text.to_vec());
        }
    })
    .unwrap();
    assert_eq!(waiting, vec![b"waits".to_vec()]);
    assert_eq!(
        reopened.notices,
        vec![Notice::KeptForRooms {
            file: segment_path(dir.path(), 0),
            over: on_disk - options.max_bytes,
        }]
    );
}

/// A log whose last segment is version 2 (before room records) or 3 (a
/// checksum a record, before batches) is read, and new records go to a new
/// version 4 segment: a directory of mixed versions reads in order.
#[test]
fn a_version_2_or_3_last_segment_is_kept_and_new_records_go_to_a_version_4_one() {
    for (version, magic, what) in [
        (2, SEGMENT_MAGIC_V2, "without room records"),
        (3, SEGMENT_MAGIC_V3, "without batches"),
    ] {
        let dir = TempDir::new(&format!("format-{version}"));
        let all = records(5);
        let old = &all[..2];
        let mut bytes = magic.to_vec();
        for r in old {
            encode_record_v3(&mut bytes, r.view());
        }
        let first = segment_path(dir.path(), 0);
        fs::write(&first, &bytes).unwrap();
        let mut opened = open_log(dir.path(), big_log()).unwrap();
        let next = segment_path(dir.path(), 2);
        let notice = Notice::NewFormat {
            file: first.clone(),
            version,
            next: next.clone(),
        };
        assert_eq!(opened.notices, vec![notice.clone()]);
        assert_eq!(
            notice.to_string(),
            format!(
                "{}: written by an earlier evchat (format {version}, {what}): kept as it is; \
                 new records go to {} (format 4)",
                first.display(),
                next.display()
            )
        );
        opened.log.append(&encode(&all[2..])).unwrap();
        drop(opened);
        assert_eq!(fs::read(&first).unwrap(), bytes);
        assert_eq!(&fs::read(&next).unwrap()[..8], SEGMENT_MAGIC);
        assert_eq!(read_all(dir.path()), numbered(&all, 0));
        let reopened = open_log(dir.path(), big_log()).unwrap();
        assert_eq!((reopened.records, reopened.notices), (5, vec![]));
    }
}

#[test]
fn a_reader_behind_retention_reports_the_gap_and_reads_on() {
    let dir = TempDir::new("retention-gap");
    // One record per segment.
    let options = Options {
        max_bytes: 400,
        segment_bytes: 1,
        ..big_log()
    };
    let all = records(14);
    let mut opened = open_log(dir.path(), options).unwrap();
    opened.log.append(&encode(&all[..3])).unwrap();
    let mut reader = Reader::open(dir.path()).unwrap();
    let Some(Item::Record(first)) = reader.next_item().unwrap() else {
        panic!("expected the first record");
    };
    assert_eq!(first.record, all[0]);
    opened.log.append(&encode(&all[3..])).unwrap();
    assert!(opened.log.retain().into_iter().all(|r| r.is_ok()));
    assert!(
        !segment_path(dir.path(), 0).exists(),
        "retention should delete segment 0"
    );
    let oldest_kept = (0..14)
        .find(|&b| segment_path(dir.path(), b).exists())
        .unwrap();
    assert!(oldest_kept > 1);
    let mut rest = Vec::new();
    while let Some(item) = reader.next_item().unwrap() {
        rest.push(item);
    }
    assert_eq!(
        rest[0],
        Item::Gap {
            from: 1,
            to: oldest_kept
        }
    );
    let numbers: Vec<u64> = rest[1..]
        .iter()
        .map(|item| match item {
            Item::Record(entry) => entry.number,
            gap => panic!("unexpected {gap:?}"),
        })
        .collect();
    assert_eq!(numbers, (oldest_kept..14).collect::<Vec<_>>());
}

// ---- the writer and its sync thread ------------------------------------

#[test]
fn always_settles_a_batch_once_it_is_written_and_synced() {
    let dir = TempDir::new("always");
    let opened = open_log(dir.path(), big_log()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::Always);
    let all = records(50);
    for (turn, chunk) in all.chunks(10).enumerate() {
        let last = append_all(&mut writer, chunk);
        assert_eq!(last, turn as u64 * 10 + 9);
        writer.write();
        wait_settled(&writer, &settled, last);
        // Settled under `always` means on disk: a reader sees all of it.
        assert_eq!(read_all(dir.path()).len(), (turn + 1) * 10);
    }
    assert!(writer.is_keeping());
    drop(writer);
    let reopened = open_log(dir.path(), big_log()).unwrap();
    assert_eq!((reopened.notices.clone(), reopened.records), (vec![], 50));
}

#[test]
fn everysec_and_no_keep_every_record_across_a_clean_close() {
    for mode in [Fsync::EverySec, Fsync::No] {
        let dir = TempDir::new(&format!("close-{mode}"));
        let opened = open_log(dir.path(), big_log()).unwrap();
        let (mut writer, settled) = start_writer(opened.log, mode);
        let all = records(40);
        let mut last = 0;
        for r in &all {
            last = append_all(&mut writer, std::slice::from_ref(r));
            writer.write();
        }
        wait_settled(&writer, &settled, last);
        drop(writer);
        assert_eq!(read_all(dir.path()), numbered(&all, 0), "{mode}");
    }
}

#[test]
fn everysec_and_no_settle_records_when_the_write_returns() {
    // The loop writes before it replies: once `write` returns the records
    // are in the segment and settled, with no thread to wait for.
    for mode in [Fsync::EverySec, Fsync::No] {
        let dir = TempDir::new(&format!("settle-{mode}"));
        let opened = open_log(dir.path(), big_log()).unwrap();
        let (mut writer, settled) = start_writer(opened.log, mode);
        let all = records(12);
        for (turn, chunk) in all.chunks(4).enumerate() {
            let last = append_all(&mut writer, chunk);
            assert_eq!(
                writer.settled(),
                last + 1 - 4,
                "{mode}: not before the write"
            );
            writer.write();
            assert_eq!(writer.settled(), last + 1, "{mode}");
            let upto = (turn + 1) * 4;
            assert_eq!(read_all(dir.path()), numbered(&all[..upto], 0), "{mode}");
            // The thread had no part in it: it never said anything moved.
            assert!(settled.try_recv().is_err(), "{mode}");
        }
        drop(writer);
        assert_eq!(read_all(dir.path()), numbered(&all, 0), "{mode}");
    }
}

/// Waits until the writer's sync thread has synced at least `sealed` full
/// segments and `active` active ones; fails the test after [`TIMEOUT`].
fn wait_syncs(writer: &Writer, sealed: u64, active: u64) -> (u64, u64) {
    let mut syncs = writer.syncs();
    let what = format!("syncs of {sealed} full and {active} active segments");
    wait_until(&what, || {
        syncs = writer.syncs();
        syncs.0 >= sealed && syncs.1 >= active
    });
    syncs
}

#[test]
fn dropping_the_writer_writes_what_the_last_turn_left() {
    let dir = TempDir::new("drop-writes");
    let opened = open_log(dir.path(), big_log()).unwrap();
    let (mut writer, _) = start_writer(opened.log, Fsync::No);
    let all = records(3);
    append_all(&mut writer, &all);
    drop(writer);
    assert_eq!(read_all(dir.path()), numbered(&all, 0));
}

#[test]
fn under_no_a_roll_syncs_the_full_segment_but_never_the_active_one() {
    let dir = TempDir::new("no-sync");
    let options = Options {
        segment_bytes: 256,
        ..big_log()
    };
    let opened = open_log(dir.path(), options).unwrap();
    let (mut writer, _) = start_writer(opened.log, Fsync::No);
    for r in &records(3) {
        writer.append(&record(r.time_ms, r.origin, r.dest, &[b'x'; 100]).view());
        writer.write();
    }
    assert!(segment_files(dir.path()).len() > 1, "no roll");
    let (_, active) = wait_syncs(&writer, 1, 0);
    assert_eq!(active, 0, "the active segment was synced under no");
}

#[test]
fn under_everysec_a_write_is_synced_without_a_roll_or_a_close() {
    let dir = TempDir::new("everysec-sync");
    let opened = open_log(dir.path(), big_log()).unwrap();
    let (mut writer, _) = start_writer(opened.log, Fsync::EverySec);
    writer.append(&record(1, 1, 0, b"synced within a second").view());
    writer.write();
    assert_eq!(wait_syncs(&writer, 0, 1), (0, 1));
}

#[test]
fn a_batch_buffer_over_a_mebibyte_is_freed_a_smaller_one_kept() {
    let dir = TempDir::new("batch-keep");
    let opened = open_log(dir.path(), big_log()).unwrap();
    let (mut writer, _) = start_writer(opened.log, Fsync::No);
    let text = vec![b'x'; MAX_TEXT_LEN];
    for _ in 0..20 {
        writer.append(&record(1, 1, 0, &text).view());
    }
    assert!(writer.batch_capacity() > 1 << 20);
    writer.write();
    assert_eq!(writer.batch_capacity(), 0, "a burst's buffer is freed");
    writer.append(&record(2, 1, 0, &text).view());
    let small = writer.batch_capacity();
    writer.write();
    assert_eq!(writer.batch_capacity(), small, "a usual buffer is kept");
}

#[test]
fn fsync_modes_read_as_the_server_flag_spells_them() {
    assert_eq!("always".parse(), Ok(Fsync::Always));
    assert_eq!("everysec".parse(), Ok(Fsync::EverySec));
    assert_eq!("no".parse(), Ok(Fsync::No));
    assert_eq!(
        "sometimes".parse::<Fsync>(),
        Err("'sometimes' is not one of always, everysec, no".to_string())
    );
    assert_eq!(Fsync::EverySec.to_string(), "everysec");
}

/// A child process killed if the test fails before reaping it.
/// The file-size limit the full-disk child runs under.
pub(crate) const FULL_DISK_LIMIT: u64 = 16 * 1024;
const FULL_DISK_ENV: &str = "EVCHAT_TEST_FULL_DISK_DIR";

/// Runs the ignored test `name` of this test binary in a child process, so
/// that the file-size limit (`RLIMIT_FSIZE`, the whole process's) binds it
/// alone: `dir` in [`FULL_DISK_ENV`], `SIGXFSZ` ignored (past the limit a
/// write fails with EFBIG instead of the signal ending the process), the
/// limit at `limit` bytes. Checks that the child test passed; returns its
/// stderr lines.
fn run_child_test(name: &str, dir: &Path, limit: u64) -> Vec<String> {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FULL_DISK_ENV, dir)
        .stdin(Stdio::null());
    // SAFETY: setrlimit and signal are async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            set_file_size_limit(Some(limit))?;
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = Proc::spawn_command(command, "child test");
    // Both end when the child exits (bounded by the harness's timeout).
    let (out, err) = (child.stdout.rest(), child.stderr.rest());
    let status = child.wait();
    assert!(
        status.success(),
        "child failed: {status}\n{out:#?}\n{err:#?}"
    );
    assert!(
        out.iter()
            .any(|l| l.contains(&format!("test {name} ... ok"))),
        "the child test did not run: {out:#?}"
    );
    err
}

/// Sets this process's file-size limit (`None`: as high as allowed).
fn set_file_size_limit(bytes: Option<u64>) -> std::io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit.rlim_cur = bytes.unwrap_or(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn a_full_disk_turns_history_off_and_back_on_without_stalling() {
    let dir = TempDir::new("full-disk");
    let err = run_child_test("store::full_disk_child", dir.path(), FULL_DISK_LIMIT);
    let off = err
        .iter()
        .filter(|l| l.contains("history off: "))
        .collect::<Vec<_>>();
    assert_eq!(off.len(), 1, "one report when history goes off: {err:#?}");
    assert!(
        off[0].contains("File too large")
            && off[0].contains("messages are still relayed but not kept until a write succeeds"),
        "{}",
        off[0]
    );
    let on = err
        .iter()
        .filter(|l| l.contains("history back on: "))
        .collect::<Vec<_>>();
    assert_eq!(on.len(), 1, "{err:#?}");
    // Of the first burst of 20, those past the limit; then each of the ten
    // tried while it was off.
    let whole = (FULL_DISK_LIMIT - SEGMENT_MAGIC.len() as u64)
        / ((BATCH_HEADER_LEN + BATCH_RECORD_HEAD_LEN) as u64 + 1000);
    let not_kept = 20 - whole + 10;
    assert!(
        on[0].contains(&format!("; {not_kept} messages were not kept")),
        "{}",
        on[0]
    );
}

#[test]
fn a_roll_that_cannot_write_the_new_segment_leaves_no_file_behind() {
    let dir = TempDir::new("roll-fails");
    run_child_test("store::roll_failure_child", dir.path(), libc::RLIM_INFINITY);
}

#[test]
fn a_batch_cut_short_in_its_second_segment_counts_the_records_written() {
    let dir = TempDir::new("append-cut");
    run_child_test("store::append_cut_child", dir.path(), libc::RLIM_INFINITY);
}

/// Runs only as the child of the test above.
#[test]
#[ignore = "run by a_batch_cut_short_in_its_second_segment_counts_the_records_written"]
fn append_cut_child() {
    let dir = PathBuf::from(std::env::var_os(FULL_DISK_ENV).expect("run by its parent test"));
    let options = Options {
        segment_bytes: 256,
        ..big_log()
    };
    let mut opened = open_log(&dir, options).unwrap();
    // The first record fits the first segment; the second is longer than a
    // segment, so it gets the next one alone, and the file-size limit cuts
    // its write short.
    let small = record(1, 1, 0, b"fits");
    let long = record(2, 1, 0, &[b'x'; 3000]);
    set_file_size_limit(Some(1000)).unwrap();
    let (written, error) = opened
        .log
        .append(&encode(&[small.clone(), long]))
        .expect_err("the second segment's write is cut short");
    set_file_size_limit(None).unwrap();
    assert_eq!(written, 1, "{error}");
    assert!(error.to_string().contains("File too large"), "{error}");
    drop(opened);
    assert_eq!(read_all(&dir), [(0, small)]);
}

/// Runs only as the child of the test above.
#[test]
#[ignore = "run by a_roll_that_cannot_write_the_new_segment_leaves_no_file_behind"]
fn roll_failure_child() {
    let dir = PathBuf::from(std::env::var_os(FULL_DISK_ENV).expect("run by its parent test"));
    // One record per segment: every record after the first rolls.
    let options = Options {
        segment_bytes: 1,
        ..big_log()
    };
    let opened = open_log(&dir, options).unwrap();
    let (mut writer, _) = start_writer(opened.log, Fsync::No);
    writer.append(&record(1, 1, 0, b"first").view());
    writer.write();
    // Too small for a segment's header: the roll creates the next segment,
    // cannot write its magic, and must take the file away again.
    set_file_size_limit(Some(4)).unwrap();
    let ticket = writer.append(&record(2, 1, 0, b"second").view());
    writer.write();
    assert!(!writer.is_keeping());
    assert_eq!(writer.settled(), ticket + 1, "given up on, and settled");
    let names = |dir: &Path| -> Vec<u64> { segment_files(dir).iter().map(|s| s.0).collect() };
    assert_eq!(
        names(&dir),
        [0],
        "no segment left behind by the failed roll"
    );
    set_file_size_limit(None).unwrap();
    writer.append(&record(3, 1, 0, b"third").view());
    writer.write();
    assert!(writer.is_keeping());
    drop(writer);
    assert_eq!(names(&dir), [0, 1]);
    assert_eq!(
        read_all(&dir),
        [
            (0, record(1, 1, 0, b"first")),
            (1, record(3, 1, 0, b"third"))
        ]
    );
}

/// Runs only as the child of the first test above, under its file-size
/// limit.
#[test]
#[ignore = "run by a_full_disk_turns_history_off_and_back_on_without_stalling"]
fn full_disk_child() {
    let dir = PathBuf::from(std::env::var_os(FULL_DISK_ENV).expect("run by its parent test"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let opened = open_log(&dir, big_log()).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::Always);
    let text = [b'x'; 1000];
    // One batch across the limit: the records it got out whole stay, the
    // one cut short is cut off.
    let mut last = 0;
    for i in 0..20 {
        last = writer.append(&record(i, 1, 0, &text).view());
    }
    writer.write();
    wait_settled(&writer, &settled, last);
    assert!(!writer.is_keeping());
    let whole = (FULL_DISK_LIMIT - SEGMENT_MAGIC.len() as u64)
        / ((BATCH_HEADER_LEN + BATCH_RECORD_HEAD_LEN) as u64 + 1000);
    assert_eq!(read_all(&dir).len() as u64, whole);
    // Each new message tries again, fails, and is settled all the same.
    for i in 20..30 {
        let ticket = writer.append(&record(i, 1, 0, &text).view());
        writer.write();
        wait_settled(&writer, &settled, ticket);
        assert!(!writer.is_keeping());
    }
    let kept = whole;
    // Room again: the next write succeeds and history is back on.
    set_file_size_limit(None).unwrap();
    let ticket = writer.append(&record(99, 2, 0, b"after").view());
    writer.write();
    wait_settled(&writer, &settled, ticket);
    assert!(writer.is_keeping());
    drop(writer);
    // The failed writes left no partial record behind.
    let opened = open_log(&dir, big_log()).unwrap();
    assert_eq!(opened.notices, vec![]);
    assert_eq!(opened.records, kept + 1);
    drop(opened);
    let found = read_all(&dir);
    assert_eq!(found.last().unwrap().1, record(99, 2, 0, b"after"));
    assert!(found[..kept as usize].iter().all(|(_, r)| r.text == text));
}

// ---- reading a live log --------------------------------------------------

#[test]
fn a_reader_follows_a_live_log_across_segments_and_partial_writes() {
    let dir = TempDir::new("live");
    let options = Options {
        max_bytes: 1 << 30,
        segment_bytes: 8 * 1024,
        ..big_log()
    };
    let opened = open_log(dir.path(), options).unwrap();
    let (mut writer, settled) = start_writer(opened.log, Fsync::No);
    let all = records(3000);
    let mut rng = Rng(0x5eed);
    let mut reader = Reader::open(dir.path()).unwrap();
    let mut found = Vec::new();
    let mut sent = 0;
    let deadline = Instant::now() + TIMEOUT;
    while found.len() < all.len() {
        assert!(Instant::now() < deadline, "read {} records", found.len());
        if sent < all.len() {
            let n = (1 + rng.next() % 40) as usize;
            append_all(&mut writer, &all[sent..(sent + n).min(all.len())]);
            sent = (sent + n).min(all.len());
            writer.write();
        } else {
            wait_settled(&writer, &settled, all.len() as u64 - 1);
        }
        while let Some(item) = reader.next_item().unwrap() {
            let Item::Record(entry) = item else {
                panic!("unexpected {item:?}");
            };
            found.push((entry.number, entry.record));
        }
    }
    assert_eq!(found, numbered(&all, 0));
    assert!(
        fs::read_dir(dir.path()).unwrap().count() > 10,
        "too few segments"
    );
    drop(writer);
}

#[test]
fn a_reader_waits_at_a_record_still_being_written() {
    let dir = TempDir::new("partial");
    let all = records(2);
    let mut opened = open_log(dir.path(), big_log()).unwrap();
    opened.log.append(&encode(&all[..1])).unwrap();
    let mut reader = Reader::open(dir.path()).unwrap();
    assert!(matches!(reader.next_item().unwrap(), Some(Item::Record(_))));
    assert_eq!(reader.next_item().unwrap(), None);
    assert_eq!(reader.incomplete_tail(), None);

    let second = encode(&all[1..]);
    let offset = record_offsets(&all)[1];
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(segment_path(dir.path(), 0))
        .unwrap();
    for split in [3, 20] {
        file.write_all(&second[..split]).unwrap();
        assert_eq!(reader.next_item().unwrap(), None);
        let tail = reader.incomplete_tail().expect("an incomplete tail");
        assert_eq!((tail.offset, tail.len), (offset, split as u64));
        // The write undone: the file ends at the last whole record again,
        // shorter than the reader last saw it. That is no error.
        file.set_len(offset).unwrap();
        assert_eq!(reader.next_item().unwrap(), None);
        assert_eq!(reader.incomplete_tail(), None);
    }
    file.write_all(&second).unwrap();
    let Some(Item::Record(entry)) = reader.next_item().unwrap() else {
        panic!("expected the completed record");
    };
    assert_eq!((entry.number, entry.record), (1, all[1].clone()));
}

#[test]
fn a_reader_of_a_directory_without_segments_waits_for_the_first() {
    let dir = TempDir::new("no-segments");
    let mut reader = Reader::open(dir.path()).unwrap();
    assert_eq!(reader.next_item().unwrap(), None);
    assert_eq!(reader.next_item().unwrap(), None);
    let all = records(2);
    write_log(dir.path(), &all);
    let mut found = Vec::new();
    while let Some(Item::Record(entry)) = reader.next_item().unwrap() {
        found.push((entry.number, entry.record));
    }
    assert_eq!(found, numbered(&all, 0));
}

// ---- properties ------------------------------------------------------------

/// Segment files in `dir` by base, with their lengths.
fn segment_files(dir: &Path) -> Vec<(u64, PathBuf, u64)> {
    let mut found: Vec<(u64, PathBuf, u64)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().ok()?;
            let base = name.strip_suffix(".log")?.parse().ok()?;
            Some((base, entry.path(), entry.metadata().unwrap().len()))
        })
        .collect();
    found.sort();
    found
}

fn arbitrary_records() -> impl Strategy<Value = Vec<Record>> {
    proptest::collection::vec(
        (
            any::<u64>(),
            any::<u16>(),
            // Any destination a message has: 65535 marks a room record
            // (HISTORY.md), which no accepted MSG is.
            0..u16::MAX,
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(time_ms, origin, dest, text)| Record {
                time_ms,
                origin,
                dest,
                roles: origin as u8,
                // Named and unnamed senders, names of every length.
                name: "n".repeat(usize::from(origin % 25)),
                text,
            }),
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever the segment size and however the records are batched, a
    /// reopened log holds them all, numbered in order, in segments no
    /// longer than the bound (or holding one record alone).
    #[test]
    fn records_survive_rolls_and_reopening(
        all in arbitrary_records(),
        segment_bytes in 1u64..3000,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let dir = TempDir::new("prop-roll");
        let options = Options { segment_bytes, ..big_log() };
        let mut opened = open_log(dir.path(), options.clone()).unwrap();
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(all.len())).collect();
        bounds.push(all.len());
        bounds.sort();
        let mut from = 0;
        for to in bounds {
            opened.log.append(&encode(&all[from..to])).unwrap();
            from = to;
        }
        drop(opened);
        let reopened = open_log(dir.path(), options).unwrap();
        prop_assert_eq!(reopened.notices.clone(), vec![]);
        prop_assert_eq!(reopened.records, all.len() as u64);
        drop(reopened);
        prop_assert_eq!(read_all(dir.path()), numbered(&all, 0));
        let longest = all.iter().map(encoded_len).max().unwrap();
        for (_, path, len) in segment_files(dir.path()) {
            prop_assert!(len <= segment_bytes.max(8 + longest), "{}: {len}", path.display());
        }
    }

    /// The writer seals each turn's records together (their checksums
    /// three at a time): whatever the records and however they fall into
    /// turns, a reopened log finds every checksum right.
    #[test]
    fn records_written_in_turns_by_the_writer_reopen_whole(
        all in arbitrary_records(),
        segment_bytes in 1u64..3000,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
    ) {
        let dir = TempDir::new("prop-turns");
        let options = Options { segment_bytes, ..big_log() };
        let opened = open_log(dir.path(), options.clone()).unwrap();
        let (mut writer, settled) = start_writer(opened.log, Fsync::No);
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(all.len())).collect();
        bounds.push(all.len());
        bounds.sort();
        let mut from = 0;
        let mut last = 0;
        for to in bounds {
            if to > from {
                last = append_all(&mut writer, &all[from..to]);
                writer.write();
            }
            from = to;
        }
        wait_settled(&writer, &settled, last);
        drop(writer);
        let reopened = open_log(dir.path(), options).unwrap();
        prop_assert_eq!(reopened.notices.clone(), vec![]);
        prop_assert_eq!(reopened.records, all.len() as u64);
        drop(reopened);
        prop_assert_eq!(read_all(dir.path()), numbered(&all, 0));
    }

    /// Cut anywhere in the last segment: reopening keeps exactly the whole
    /// records before the cut and reports the rest as a torn tail.
    #[test]
    fn any_cut_of_the_last_segment_keeps_the_whole_records_before_it(
        all in arbitrary_records(),
        segment_bytes in 200u64..2000,
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = TempDir::new("prop-cut");
        let options = Options { segment_bytes, ..big_log() };
        let mut opened = open_log(dir.path(), options.clone()).unwrap();
        opened.log.append(&encode(&all)).unwrap();
        drop(opened);
        let segments = segment_files(dir.path());
        let (last_base, last_path, last_len) = segments.last().unwrap().clone();
        let cut_at = cut.index(last_len as usize + 1) as u64;
        fs::OpenOptions::new().write(true).open(&last_path).unwrap().set_len(cut_at).unwrap();
        // The whole records of the last segment that end by the cut.
        let mut end = SEGMENT_MAGIC.len() as u64;
        let mut kept = last_base as usize;
        while kept < all.len() && end + encoded_len(&all[kept]) <= cut_at {
            end += encoded_len(&all[kept]);
            kept += 1;
        }
        let reopened = open_log(dir.path(), options).unwrap();
        let torn_from = if cut_at < SEGMENT_MAGIC.len() as u64 { 0 } else { end };
        let expected = if cut_at == torn_from {
            vec![]
        } else {
            vec![Notice::TornTail {
                file: last_path.clone(),
                offset: torn_from,
                dropped: cut_at - torn_from,
            }]
        };
        prop_assert_eq!(reopened.notices.clone(), expected);
        drop(reopened);
        prop_assert_eq!(read_all(dir.path()), numbered(&all[..kept], 0));
    }
}
