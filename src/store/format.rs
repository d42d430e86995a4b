//! The bytes of the history log (HISTORY.md draws them): segment file names,
//! the segment header, record encoding, and a [`Cursor`] that reads records
//! back one at a time and says exactly where and why it stops. No files are
//! opened here: the cursor reads through a [`Source`] (a file, or a byte
//! slice for tests and fuzzing), so recovery, the read-only reader and the
//! fuzz target all share one reading of the format.
//!
//! Four formats are read, each segment in the one its magic names:
//! version 4, written now, keeps version 3's records in **batches**, one
//! checksum and one time for the records of a loop turn ([`Batches`]
//! builds them); version 3 has version 2's layout and adds room records
//! (a destination of 65535, which no message has: [`super::rooms`] reads
//! them); version 2 keeps the sender's roles and name in each record;
//! version 1, written by evchat before names were kept, is read as records
//! with no name and roles 0 (not recorded).
//!
//! The cursor reads a segment in **units**: a record in versions 1 to 3, a
//! batch in version 4. A unit is whole or it is not; recovery keeps or cuts
//! units, never part of one.

// A record holds a MSG's text: its longest is the protocol's; and the
// sender's name, at most as long as the server ever sends one.
use crate::proto::MAX_TEXT_LEN;
use crate::proto::ext::MAX_SENT_NAME_LEN;
use std::fmt;
use std::io;
use std::os::unix::fs::FileExt;

/// The first 8 bytes of every segment written now: what it is and the
/// format version (the last byte).
pub const SEGMENT_MAGIC: [u8; 8] = *b"EVCHLOG4";
/// The magic of a version 3 segment (a checksum per record): read, never
/// written.
pub const SEGMENT_MAGIC_V3: [u8; 8] = *b"EVCHLOG3";
/// The magic of a version 2 segment (no room records): read, never written.
pub const SEGMENT_MAGIC_V2: [u8; 8] = *b"EVCHLOG2";
/// The magic of a version 1 segment: read, never written.
pub const SEGMENT_MAGIC_V1: [u8; 8] = *b"EVCHLOG1";
/// Bytes before a unit's body (a record's in versions 1 to 3, a batch's in
/// version 4): CRC32C (4) and body length (4).
pub const RECORD_HEADER_LEN: usize = 8;
/// A version 4 batch's header: CRC32C (4), length (4), time (8).
pub const BATCH_HEADER_LEN: usize = 16;
/// Bytes of a record in a batch before its name: length (4), origin (2),
/// destination (2), roles (1), name length (1).
pub const BATCH_RECORD_HEAD_LEN: usize = 10;
/// The shortest body a record in a batch claims: origin, destination,
/// roles, name length.
const BATCH_RECORD_MIN_BODY: usize = 6;
/// The longest body a record in a batch may claim: a room record keeping
/// a waiting message (as in version 3, less the time the batch holds).
const BATCH_RECORD_MAX_BODY: usize = MAX_BODY_LEN_V3 - 8;
/// The writer closes a batch once its records take this many bytes, so a
/// batch (and the torn-tail search, which tries every offset of the longest
/// one) stays bounded however long a turn is.
pub const BATCH_SPLIT: usize = 65_536;
/// The longest batch body (after its length field) there can be: its time,
/// records short of [`BATCH_SPLIT`], then one more of the longest.
pub const MAX_BATCH_BODY: usize = 8 + BATCH_SPLIT - 1 + 4 + BATCH_RECORD_MAX_BODY;
/// The shortest: its time and one record with no name and no text.
const MIN_BATCH_BODY: usize = 8 + 4 + BATCH_RECORD_MIN_BODY;
/// Body bytes before the name: time (8), origin (2), destination (2),
/// roles (1), name length (1).
pub const BODY_FIXED_LEN: usize = 14;
/// Body bytes before the text in a version 1 record: time, origin,
/// destination.
pub const BODY_FIXED_LEN_V1: usize = 12;
/// The longest sender's name a record keeps.
pub const MAX_NAME_LEN: usize = MAX_SENT_NAME_LEN;
/// The longest body a message record may claim (and any record of version
/// 2); a longer claim is damage.
pub const MAX_BODY_LEN: usize = BODY_FIXED_LEN + MAX_NAME_LEN + MAX_TEXT_LEN;
/// The longest body a version 3 record may claim: a room record keeping a
/// waiting message holds its text and up to 39 bytes more.
pub const MAX_BODY_LEN_V3: usize = MAX_BODY_LEN + super::rooms::MAX_WAITING_HEAD;
/// The longest body a version 1 record may claim.
pub const MAX_BODY_LEN_V1: usize = BODY_FIXED_LEN_V1 + MAX_TEXT_LEN;
/// The longest record on disk in versions 1 to 3 (header and longest
/// body). Written out: only scans sized by it use it, and any size finds
/// the same records.
pub const MAX_RECORD_LEN: usize = 65_620;
const _: () = assert!(MAX_RECORD_LEN == RECORD_HEADER_LEN + MAX_BODY_LEN_V3);
/// The longest unit on disk in any format: a version 4 batch.
pub const MAX_UNIT_LEN: usize = RECORD_HEADER_LEN + MAX_BATCH_BODY;
const _: () = assert!(MAX_UNIT_LEN > MAX_RECORD_LEN);
const _: () = assert!(MAX_BODY_LEN_V1 < MAX_BODY_LEN);
/// Digits in a segment name: enough for any u64, so names sort like numbers.
const NAME_DIGITS: usize = 20;
/// Bytes the cursor asks for at a time when it reads ahead.
const READ_AHEAD: usize = 262_144; // 256 KiB

/// The layout of a segment's records, as its magic names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `EVCHLOG1`: time, origin, destination, text.
    V1,
    /// `EVCHLOG2`: time, origin, destination, roles, name, text.
    V2,
    /// `EVCHLOG3`: version 2's layout; a record to 65535 is a room record.
    V3,
    /// `EVCHLOG4`: version 3's records, in checksummed batches.
    V4,
}

impl Format {
    /// The format a segment's first 8 bytes name; None for any other bytes.
    pub fn of_magic(magic: &[u8]) -> Option<Format> {
        if magic == SEGMENT_MAGIC {
            Some(Format::V4)
        } else if magic == SEGMENT_MAGIC_V3 {
            Some(Format::V3)
        } else if magic == SEGMENT_MAGIC_V2 {
            Some(Format::V2)
        } else if magic == SEGMENT_MAGIC_V1 {
            Some(Format::V1)
        } else {
            None
        }
    }

    /// The body lengths a unit of this format may claim.
    fn body_lens(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Format::V1 => BODY_FIXED_LEN_V1..=MAX_BODY_LEN_V1,
            Format::V2 => BODY_FIXED_LEN..=MAX_BODY_LEN,
            Format::V3 => BODY_FIXED_LEN..=MAX_BODY_LEN_V3,
            Format::V4 => MIN_BATCH_BODY..=MAX_BATCH_BODY,
        }
    }

    /// The longest unit of this format on disk.
    fn max_unit_len(self) -> usize {
        RECORD_HEADER_LEN + *self.body_lens().end()
    }

    /// The version's digit, as its magic ends.
    pub fn version(self) -> u8 {
        match self {
            Format::V1 => 1,
            Format::V2 => 2,
            Format::V3 => 3,
            Format::V4 => 4,
        }
    }
}

/// One message as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the server accepted the message: milliseconds since the Unix
    /// epoch, UTC.
    pub time_ms: u64,
    pub origin: u16,
    /// The destination id; 0 is everyone.
    pub dest: u16,
    /// The sender's roles byte (PROTOCOL.md, "Roles") when it sent; 0 in a
    /// version 1 record, which did not keep them.
    pub roles: u8,
    /// The sender's name when it sent; empty: none (a plain client), or a
    /// version 1 record, which did not keep names.
    pub name: String,
    pub text: Vec<u8>,
}

impl Record {
    /// The record as a view, for encoding.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            time_ms: self.time_ms,
            origin: self.origin,
            dest: self.dest,
            roles: self.roles,
            name: &self.name,
            text: &self.text,
        }
    }
}

/// A record read in place from the cursor's buffer, or one to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub time_ms: u64,
    pub origin: u16,
    pub dest: u16,
    pub roles: u8,
    /// At most [`MAX_NAME_LEN`] bytes of printable ASCII; empty: none.
    pub name: &'a str,
    pub text: &'a [u8],
}

impl RecordView<'_> {
    pub fn to_record(self) -> Record {
        Record {
            time_ms: self.time_ms,
            origin: self.origin,
            dest: self.dest,
            roles: self.roles,
            name: self.name.to_string(),
            text: self.text.to_vec(),
        }
    }

    /// The record's size on disk in a batch of version 4, the batch's
    /// header not counted (for the fuzz target's checks).
    #[cfg(feature = "testing")]
    pub fn encoded_len(&self) -> usize {
        BATCH_RECORD_HEAD_LEN + self.name.len() + self.text.len()
    }
}

/// Appends one batch holding one record to `out`, sealed, in the format
/// written now (tests and the fuzz target build logs with it; the writer
/// builds its batches with [`Batches`]). See [`encode_unsealed`] for what
/// the record must hold.
#[cfg(any(test, feature = "testing"))]
pub fn encode_record(out: &mut Vec<u8>, record: RecordView<'_>) {
    let mut batches = Batches::new();
    batches.push(&record);
    out.extend_from_slice(batches.seal());
}

/// Appends one version 3 record to `out`, sealed (a checksum of its own):
/// the tests and the fuzz target build logs of the earlier format with it.
#[cfg(any(test, feature = "testing"))]
pub fn encode_record_v3(out: &mut Vec<u8>, record: RecordView<'_>) {
    let start = out.len();
    encode_unsealed(out, &record);
    seal_records(&mut out[start..]);
}

/// Appends one version 1 record to `out` (the format evchat wrote before
/// names were kept): the tests and the fuzz target build old logs with it.
#[cfg(any(test, feature = "testing"))]
pub fn encode_record_v1(out: &mut Vec<u8>, time_ms: u64, origin: u16, dest: u16, text: &[u8]) {
    assert!(text.len() <= MAX_TEXT_LEN, "record text over 65535 bytes");
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&((BODY_FIXED_LEN_V1 + text.len()) as u32).to_be_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&dest.to_be_bytes());
    out.extend_from_slice(text);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Appends one version 3 record to `out` with its checksum left zero, for
/// [`seal_records`] to fill in. The text must be at most [`MAX_TEXT_LEN`]
/// bytes, the name at most [`MAX_NAME_LEN`] of printable ASCII.
#[cfg(any(test, feature = "testing"))]
pub fn encode_unsealed(out: &mut Vec<u8>, record: &RecordView<'_>) {
    let &RecordView {
        time_ms,
        origin,
        dest,
        roles,
        name,
        text,
    } = record;
    assert!(text.len() <= MAX_TEXT_LEN, "record text over 65535 bytes");
    assert!(name.len() <= MAX_NAME_LEN, "record name over 24 bytes");
    let body_len = (BODY_FIXED_LEN + name.len() + text.len()) as u32;
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    out.extend_from_slice(&origin.to_be_bytes());
    out.extend_from_slice(&dest.to_be_bytes());
    out.extend_from_slice(&[roles, name.len() as u8]);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(text);
}

/// A turn's records as version 4 batches, built in place, ready for one
/// `write` (HISTORY.md, "Segment layout"): a batch holds records of one
/// time, at most [`BATCH_SPLIT`] bytes of them and one more; a record of
/// another time, or one past that bound, opens the next batch. Each batch's
/// length and checksum are filled in by [`Batches::seal`]: one CRC32C a
/// batch instead of one a record, and 12 bytes less a record (issue #26).
#[derive(Debug, Default)]
pub struct Batches {
    bytes: Vec<u8>,
    /// Where the open batch's header starts in `bytes`; None: none open.
    open: Option<usize>,
    /// The time of the open batch's records.
    open_time: u64,
    records: u64,
    /// Of `bytes`: batch headers, room records (their count and bytes) and
    /// message records' name bytes, so that the messages and their text
    /// bytes are counted once a turn (see [`Batches::messages`]) rather
    /// than once a message.
    batch_headers: usize,
    room_records: u64,
    room_bytes: usize,
    name_bytes: usize,
}

impl Batches {
    pub fn new() -> Batches {
        Batches::default()
    }

    /// Adds a message record. The text must be at most [`MAX_TEXT_LEN`]
    /// bytes, the name at most [`MAX_NAME_LEN`] of printable ASCII (a name
    /// that follows PROTOCOL.md's rule is).
    #[cfg(any(test, feature = "testing"))]
    pub fn push(&mut self, record: &RecordView<'_>) {
        assert!(
            record.text.len() <= MAX_TEXT_LEN,
            "record text over 65535 bytes"
        );
        assert!(keepable_name(record.name), "record name not keepable");
        self.push_kept(record);
    }

    /// [`Batches::push`] for a record the caller has checked (the writer,
    /// which cuts what the format cannot keep): inlined into it, so that a
    /// message's record is encoded with no call and no check made twice.
    #[inline(always)]
    pub(crate) fn push_kept(&mut self, record: &RecordView<'_>) {
        let &RecordView {
            time_ms,
            origin,
            dest,
            roles,
            name,
            text,
        } = record;
        debug_assert!(text.len() <= MAX_TEXT_LEN, "record text over 65535 bytes");
        debug_assert!(keepable_name(name), "record name not keepable");
        self.batch_for(time_ms);
        let name = name.as_bytes();
        let len = BATCH_RECORD_HEAD_LEN + name.len() + text.len();
        // length | origin | dest as one big-endian u64, roles | NL as a
        // u16: two stores, not four field copies each with its own check.
        let body_len = (len - 4) as u64;
        let head = (body_len << 32) | (u64::from(origin) << 16) | u64::from(dest);
        let tail = u16::from_be_bytes([roles, name.len() as u8]);
        // One capacity check for the whole record (a turn's buffer is kept
        // from turn to turn, so it rarely grows), then plain stores.
        self.bytes.reserve(len);
        let at = self.bytes.len();
        // SAFETY: `reserve` made room for `len` bytes past `at`; the head's
        // 10 bytes, the name and the text are exactly `len` bytes, written
        // before `set_len` exposes them; the sources are borrowed slices
        // that cannot overlap the buffer we own.
        unsafe {
            let out = self.bytes.as_mut_ptr().add(at);
            std::ptr::write_unaligned(out.cast::<[u8; 8]>(), head.to_be_bytes());
            std::ptr::write_unaligned(out.add(8).cast::<[u8; 2]>(), tail.to_be_bytes());
            // Most messages have no name: no copy, not even an empty one.
            if !name.is_empty() {
                std::ptr::copy_nonoverlapping(name.as_ptr(), out.add(10), name.len());
                self.name_bytes += name.len();
            }
            copy_text(text, out.add(10 + name.len()));
            self.bytes.set_len(at + len);
        }
        self.records += 1;
    }

    /// Adds a room record stamped `time_ms`.
    pub fn push_room(&mut self, time_ms: u64, record: &super::rooms::RoomRecord<'_>) {
        self.batch_for(time_ms);
        let at = self.bytes.len();
        record.encode_in_batch(&mut self.bytes);
        self.records += 1;
        self.room_records += 1;
        self.room_bytes += self.bytes.len() - at;
    }

    /// Makes sure the open batch can take a record stamped `time_ms`.
    #[inline(always)]
    fn batch_for(&mut self, time_ms: u64) {
        match self.open {
            Some(start)
                if self.open_time == time_ms
                    && self.bytes.len() - start < BATCH_HEADER_LEN + BATCH_SPLIT => {}
            _ => self.open_batch(time_ms),
        }
    }

    fn open_batch(&mut self, time_ms: u64) {
        self.close();
        self.open = Some(self.bytes.len());
        self.open_time = time_ms;
        let mut header = [0u8; BATCH_HEADER_LEN];
        header[8..16].copy_from_slice(&time_ms.to_be_bytes());
        self.bytes.extend_from_slice(&header);
        self.batch_headers += 1;
    }

    /// Writes the open batch's length: it takes no more records.
    fn close(&mut self) {
        if let Some(start) = self.open.take() {
            let len = (self.bytes.len() - start - RECORD_HEADER_LEN) as u32;
            self.bytes[start + 4..start + 8].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Closes the open batch and fills in every batch's checksum: the bytes
    /// to write, whole batches back to back.
    pub fn seal(&mut self) -> &[u8] {
        self.close();
        let mut at = 0;
        while at < self.bytes.len() {
            let end = at + unit_len(&self.bytes[at..]);
            let crc = checksum(&self.bytes[at + 4..end]);
            self.bytes[at..at + 4].copy_from_slice(&crc.to_be_bytes());
            at = end;
        }
        &self.bytes
    }

    /// Records added since the last [`Batches::clear`].
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether no record was added since the last [`Batches::clear`].
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// The message records added since the last [`Batches::clear`] and
    /// the bytes of their texts, worked out from what the buffer holds.
    pub fn messages(&self) -> (u64, u64) {
        let messages = self.records - self.room_records;
        let text = self.bytes.len()
            - self.batch_headers * BATCH_HEADER_LEN
            - self.room_bytes
            - messages as usize * BATCH_RECORD_HEAD_LEN
            - self.name_bytes;
        (messages, text as u64)
    }

    /// Forgets every batch; keeps the buffer for the next turn unless it
    /// grew past `keep` bytes.
    pub fn clear(&mut self, keep: usize) {
        if self.bytes.capacity() > keep {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
        self.open = None;
        self.records = 0;
        self.batch_headers = 0;
        self.room_records = 0;
        self.room_bytes = 0;
        self.name_bytes = 0;
    }

    /// The buffer's capacity.
    #[cfg(feature = "testing")]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }
}

/// Copies `text` to `out`. A chat line of 8 to 64 bytes goes as two
/// overlapping loads and stores of 8, 16 or 32 bytes, inline: a call to
/// `memcpy` and its size dispatch cost as much again as the copy at 1:1.
///
/// # Safety
/// `out` must be valid for `text.len()` bytes of writes and not overlap
/// `text`.
#[inline(always)]
unsafe fn copy_text(text: &[u8], out: *mut u8) {
    /// The first and the last `N` bytes of `text` (`N <= text.len() <= 2N`):
    /// every byte, the middle ones twice.
    #[inline(always)]
    unsafe fn ends<const N: usize>(text: &[u8], out: *mut u8) {
        let len = text.len();
        // SAFETY: N <= len, so both reads are inside `text` and both writes
        // inside the caller's `len` bytes.
        unsafe {
            let first = std::ptr::read_unaligned(text.as_ptr().cast::<[u8; N]>());
            let last = std::ptr::read_unaligned(text.as_ptr().add(len - N).cast::<[u8; N]>());
            std::ptr::write_unaligned(out.cast::<[u8; N]>(), first);
            std::ptr::write_unaligned(out.add(len - N).cast::<[u8; N]>(), last);
        }
    }
    // SAFETY: each arm's length range is what `ends` needs; the caller
    // vouches for `out`.
    unsafe {
        match text.len() {
            8..=16 => ends::<8>(text, out),
            17..=32 => ends::<16>(text, out),
            33..=64 => ends::<32>(text, out),
            len => std::ptr::copy_nonoverlapping(text.as_ptr(), out, len),
        }
    }
}

/// The length of the unit (a record of versions 1 to 3, a batch of version
/// 4) that starts `bytes`, from its length field.
pub(crate) fn unit_len(bytes: &[u8]) -> usize {
    RECORD_HEADER_LEN + u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize
}

/// The records in `batch`, a whole version 4 batch as [`Batches`] builds
/// it (only the writer's own batches are counted this way).
pub(crate) fn batch_records(batch: &[u8]) -> u64 {
    let mut at = BATCH_HEADER_LEN;
    let mut records = 0;
    while at + 4 <= batch.len() {
        at += 4 + u32::from_be_bytes(batch[at..at + 4].try_into().unwrap()) as usize;
        records += 1;
    }
    records
}

/// Whether every byte of a name is printable ASCII: what the format keeps
/// (the server's names are narrower: PROTOCOL.md's rule).
fn is_printable(name: &[u8]) -> bool {
    name.iter().all(|b| b.is_ascii_graphic())
}

/// Whether a record can keep `name` (empty: none).
pub fn keepable_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && is_printable(name.as_bytes())
}

/// Fills in the checksum of every version 3 record in `records` (whole
/// records, as [`encode_unsealed`] writes them, one after another): how
/// evchat sealed a turn's records before batches; the tests, the fuzz
/// target and the store bench build version 3 logs with it.
///
/// The `crc32` instruction takes three cycles before its result can feed
/// the next one, so the checksum of one short record is a chain that waits
/// on itself; records are independent, so this runs three of them side by
/// side, word by word. The values are the records' own CRC32C: the format
/// does not change.
#[cfg(any(test, feature = "testing"))]
pub fn seal_records(records: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU has SSE 4.2, the one feature the function
            // is compiled for (checked just above).
            unsafe { seal_records_sse42(records) };
            return;
        }
    }
    let mut at = 0;
    while at < records.len() {
        let len = unit_len(&records[at..]);
        let crc = crc32c::crc32c(&records[at + 4..at + len]);
        records[at..at + 4].copy_from_slice(&crc.to_be_bytes());
        at += len;
    }
}

/// CRC32C of `bytes`: the `crc32c` crate's value, computed inline with the
/// SSE 4.2 `crc32` instruction for a short input (a chat message's record
/// is a few dozen bytes, where the crate's set-up for long inputs costs
/// more than the checksum itself), by the crate otherwise.
pub fn checksum(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if bytes.len() <= SHORT_CHECKSUM_MAX && std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: as in `seal_records`.
            return !unsafe { crc_sse42(!0, bytes) };
        }
    }
    crc32c::crc32c(bytes)
}

/// The longest input the inline loops take on alone: past this the
/// crate's own three-way interleaved loop is faster.
#[cfg(target_arch = "x86_64")]
const SHORT_CHECKSUM_MAX: usize = 256;

/// [`seal_records`] with the `crc32` instruction: records three at a time,
/// their bodies' words in lockstep as far as the shortest goes, then each
/// one's rest on its own.
#[cfg(all(target_arch = "x86_64", any(test, feature = "testing")))]
#[target_feature(enable = "sse4.2")]
fn seal_records_sse42(records: &mut [u8]) {
    use std::arch::x86_64::_mm_crc32_u64;
    let mut at = 0;
    while at < records.len() {
        let mut spans = [(0, 0); 3];
        let mut n = 0;
        while n < 3 && at < records.len() {
            let len = unit_len(&records[at..]);
            spans[n] = (at, at + len);
            n += 1;
            at += len;
        }
        let bytes = &*records;
        let body = |(start, end): (usize, usize)| &bytes[(start + 4).min(end)..end];
        let bodies = [body(spans[0]), body(spans[1]), body(spans[2])];
        let mut crcs = [u64::from(!0u32); 3];
        let mut done = 0;
        if n == 3 {
            let mut words = 0;
            let lockstep = bodies[0]
                .chunks_exact(8)
                .zip(bodies[1].chunks_exact(8))
                .zip(bodies[2].chunks_exact(8));
            for ((a, b), c) in lockstep {
                let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap());
                crcs[0] = _mm_crc32_u64(crcs[0], word(a));
                crcs[1] = _mm_crc32_u64(crcs[1], word(b));
                crcs[2] = _mm_crc32_u64(crcs[2], word(c));
                words += 1;
            }
            done = 8 * words;
        }
        // A loop, not `array::from_fn`: its closure does not take this
        // function's target feature, and once the compiler stopped inlining
        // it (an unrelated change elsewhere in the crate) each record paid
        // a call and `crc_sse42` out of line: about 20 instructions a
        // message at 1:1 under callgrind.
        let mut sealed = [0u32; 3];
        for ((seal, body), crc) in sealed.iter_mut().zip(bodies).zip(crcs) {
            let rest = body.get(done..).unwrap_or_default();
            let crc = crc as u32;
            *seal = if rest.len() > SHORT_CHECKSUM_MAX {
                crc32c::crc32c_append(!crc, rest)
            } else {
                !crc_sse42(crc, rest)
            };
        }
        for (k, &(start, _)) in spans[..n].iter().enumerate() {
            records[start..start + 4].copy_from_slice(&sealed[k].to_be_bytes());
        }
    }
}

/// Runs `bytes` through the CRC32C register `crc` (neither end inverted)
/// with the `crc32` instruction: eight bytes at a time, then four, two and
/// one (bytes are read as little-endian words: the instruction's bit
/// order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc_sse42(crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64};
    let mut crc = u64::from(crc);
    let mut rest = bytes;
    while let Some((word, after)) = rest.split_first_chunk::<8>() {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(*word));
        rest = after;
    }
    let mut crc = crc as u32;
    if let Some((word, after)) = rest.split_first_chunk::<4>() {
        crc = _mm_crc32_u32(crc, u32::from_le_bytes(*word));
        rest = after;
    }
    // A record's body is 14 bytes and its name and text: an even tail is
    // as common as an odd one.
    if let Some((half, after)) = rest.split_first_chunk::<2>() {
        crc = _mm_crc32_u16(crc, u16::from_le_bytes(*half));
        rest = after;
    }
    if let Some(&byte) = rest.first() {
        crc = _mm_crc32_u8(crc, byte);
    }
    crc
}

/// The name of the segment whose first record is number `base`.
pub fn segment_name(base: u64) -> String {
    format!("{base:0NAME_DIGITS$}.log")
}

/// The base record number a segment file name stands for; None for any
/// other name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Bytes the cursor can read at any offset: a segment file, or a slice.
pub trait Source {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl Source for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match FileExt::read_at(self, &mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                },
            }
        }
        Ok(filled)
    }
}

impl Source for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// What is wrong at the place where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The segment does not start with a magic (`EVCHLOG4` to
    /// `EVCHLOG1`).
    BadMagic,
    /// The segment's magic names a format version this evchat does not
    /// read (one written by a later evchat): the version's ASCII digit.
    UnknownVersion(u8),
    /// A record claims a body length no record of its format can have.
    BadLength(u32),
    /// A whole record (its checksum right) whose sender's name is not at
    /// most [`MAX_NAME_LEN`] bytes of printable ASCII inside the body: no
    /// torn write leaves one, so it is corruption wherever it is.
    BadName,
    /// A whole record of version 3 whose fields no record has: a room
    /// record (to 65535) of no known kind or whose fields do not add up, or
    /// a message record with a text over 65535 bytes. No torn write leaves
    /// one: corruption wherever it is.
    BadRoomRecord,
    /// A whole batch of version 4 (its checksum right) whose records do
    /// not fill it exactly: a record's length out of range or running past
    /// the batch. No torn write leaves one: corruption wherever it is.
    BadBatch,
    /// The stored checksum is not the body's.
    BadChecksum { stored: u32, computed: u32 },
    /// The segment ends inside a record (or its header).
    Incomplete,
    /// The segment holds more records than fit before the next segment's
    /// first record number.
    Overlap { next_base: u64 },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::BadMagic => write!(f, "not an evchat history segment (bad magic)"),
            Damage::UnknownVersion(digit) => write!(
                f,
                "segment format version {} is newer than this evchat reads (1 to 4)",
                char::from(*digit)
            ),
            Damage::BadLength(len) => write!(
                f,
                "record length {len} is out of range (a batch: \
                 {MIN_BATCH_BODY}..={MAX_BATCH_BODY}; a record: \
                 {BODY_FIXED_LEN}..={MAX_BODY_LEN_V3} in a version 3 segment, \
                 ..={MAX_BODY_LEN} in a version 2 segment, \
                 {BODY_FIXED_LEN_V1}..={MAX_BODY_LEN_V1} in a version 1 segment)"
            ),
            Damage::BadName => write!(
                f,
                "the sender's name is not 0 to {MAX_NAME_LEN} printable ASCII bytes \
                 inside the record"
            ),
            Damage::BadRoomRecord => write!(
                f,
                "a room record of no known kind or with fields that do not add up, \
                 or a message record with a text over {MAX_TEXT_LEN} bytes"
            ),
            Damage::BadBatch => write!(
                f,
                "a batch whose records do not fill it exactly (a record's length out \
                 of range or running past the batch)"
            ),
            Damage::BadChecksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            Damage::Incomplete => write!(f, "the segment ends inside a record"),
            Damage::Overlap { next_base } => write!(
                f,
                "record overlaps the next segment, which starts at record {next_base}"
            ),
        }
    }
}

/// One step of a [`Cursor`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// A whole record with a good checksum, starting at `offset`, from
    /// `unit`.
    Record {
        offset: u64,
        record: RecordView<'a>,
        unit: Unit,
    },
    /// Every byte up to the end was read as whole records.
    End,
    /// The last segment's bytes from `offset` to the end are the remains of
    /// an interrupted write (see [`Cursor::next`] for the rule); they hold
    /// no whole record.
    TornTail { offset: u64, len: u64 },
    /// Damage at `offset` that is not a torn tail.
    Corrupt { offset: u64, damage: Damage },
}

/// What a record was read from: a record of its own before version 4, a
/// batch in version 4 (kept or cut whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Where it starts in the segment.
    pub offset: u64,
    /// The records it holds.
    pub records: u64,
}

/// Reads a segment's records in order through a bounded read-ahead buffer
/// (at most [`MAX_RECORD_LEN`] or its read-ahead size, whichever is more).
///
/// Once it returns anything but a record, it returns the same thing again
/// until [`Cursor::next`] is given a longer `end` (a live log grew).
#[derive(Debug)]
pub struct Cursor {
    /// Where the next record (or the segment header) starts.
    offset: u64,
    /// File bytes `[window_start, window_start + window.len())`.
    window: Vec<u8>,
    window_start: u64,
    read_ahead: usize,
    /// The segment's format, from its magic (read first).
    format: Format,
    /// The verified batch (version 4) whose records are being handed out.
    pending: Option<Pending>,
    /// The last unit read.
    unit: Unit,
}

/// The records of a verified batch still to hand out, as places in the
/// cursor's window.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Where the next record starts.
    next: usize,
    /// Where the batch ends.
    end: usize,
    time_ms: u64,
}

impl Default for Cursor {
    fn default() -> Cursor {
        Cursor::new()
    }
}

impl Cursor {
    /// A cursor at the start of a segment.
    pub fn new() -> Cursor {
        Cursor::with_read_ahead(READ_AHEAD)
    }

    /// A cursor that reads `read_ahead` bytes at a time (at least 1); small
    /// values let tests and the fuzzer exercise every buffer boundary.
    pub fn with_read_ahead(read_ahead: usize) -> Cursor {
        Cursor {
            offset: 0,
            window: Vec::new(),
            window_start: 0,
            read_ahead: read_ahead.max(1),
            format: Format::V4,
            pending: None,
            unit: Unit {
                offset: 0,
                records: 0,
            },
        }
    }

    /// Where the next unit starts (after the one the last record returned
    /// came from: a version 4 batch is verified whole before its first
    /// record is handed out); the length of the segment's valid part once
    /// reading has stopped.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The format of the segment, once its header was read.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes the read-ahead buffer holds on to (for the fuzz target's
    /// bound).
    #[cfg(feature = "testing")]
    pub fn buffer_capacity(&self) -> usize {
        self.window.capacity()
    }

    /// The next step through a segment whose bytes in `source` end at
    /// `end`. `last` says whether a torn tail can be there: the log's last
    /// segment (and, when a server opens the log, the one before it, which
    /// a power failure just after a roll can tear).
    ///
    /// The first bad spot in such a segment is a torn tail when no whole
    /// record (a valid length and the right checksum) starts at any byte
    /// after it: what a write cut short leaves, whether its bytes are
    /// missing, zero or stale. Anything else is [`Step::Corrupt`]: a
    /// damaged header, a bad spot followed by good records, or any bad spot
    /// in any other segment. A whole record whose name field is wrong is
    /// [`Damage::BadName`], corruption wherever it is.
    ///
    /// In version 4 the unit is a batch: it is checked whole (its checksum,
    /// then every record's framing and fields) before its first record is
    /// returned, so a batch is kept or cut whole, never in part.
    pub fn next<S: Source + ?Sized>(
        &mut self,
        source: &S,
        end: u64,
        last: bool,
    ) -> io::Result<Step<'_>> {
        if self.pending.is_some() {
            return Ok(self.pending_record());
        }
        if self.offset == 0 {
            match self.check_header(source, end, last)? {
                Some(step) => return Ok(step),
                None => self.offset = SEGMENT_MAGIC.len() as u64,
            }
        }
        let at = self.offset;
        if at >= end {
            self.forget();
            return Ok(Step::End);
        }
        let left = end - at;
        if left < RECORD_HEADER_LEN as u64 {
            return self.bad(source, end, last, Damage::Incomplete);
        }
        let header = self.bytes(source, at, RECORD_HEADER_LEN, end)?;
        let stored = u32::from_be_bytes(header[0..4].try_into().unwrap());
        let body_len = u32::from_be_bytes(header[4..8].try_into().unwrap());
        if !self.format.body_lens().contains(&(body_len as usize)) {
            return self.bad(source, end, last, Damage::BadLength(body_len));
        }
        let record_len = RECORD_HEADER_LEN + body_len as usize;
        if record_len as u64 > left {
            return self.bad(source, end, last, Damage::Incomplete);
        }
        let format = self.format;
        let bytes = self.bytes(source, at, record_len, end)?;
        let computed = checksum(&bytes[4..]);
        if computed != stored {
            return self.bad(source, end, last, Damage::BadChecksum { stored, computed });
        }
        if format == Format::V4 {
            let start = (at - self.window_start) as usize;
            let batch = &self.window[start..start + record_len];
            return match check_batch(batch) {
                Ok((records, time_ms)) => {
                    self.offset = at + record_len as u64;
                    self.unit = Unit {
                        offset: at,
                        records,
                    };
                    self.pending = Some(Pending {
                        next: start + BATCH_HEADER_LEN,
                        end: start + record_len,
                        time_ms,
                    });
                    Ok(self.pending_record())
                }
                Err(damage) => {
                    self.forget();
                    Ok(Step::Corrupt { offset: at, damage })
                }
            };
        }
        if !name_field_ok(&bytes[RECORD_HEADER_LEN..], format) {
            self.forget();
            return Ok(Step::Corrupt {
                offset: at,
                damage: Damage::BadName,
            });
        }
        let start = (at - self.window_start) as usize;
        let body = &self.window[start + RECORD_HEADER_LEN..start + record_len];
        let record = view_body(body, format);
        if format == Format::V3 && !super::rooms::fields_ok(&record) {
            self.forget();
            return Ok(Step::Corrupt {
                offset: at,
                damage: Damage::BadRoomRecord,
            });
        }
        self.offset = at + record_len as u64;
        self.unit = Unit {
            offset: at,
            records: 1,
        };
        let start = (at - self.window_start) as usize;
        let body = &self.window[start + RECORD_HEADER_LEN..start + record_len];
        Ok(Step::Record {
            offset: at,
            record: view_body(body, format),
            unit: self.unit,
        })
    }

    /// The next record of the verified batch being handed out.
    fn pending_record(&mut self) -> Step<'_> {
        let pending = self.pending.as_mut().expect("a batch is being read");
        let at = pending.next;
        let len = 4 + u32::from_be_bytes(self.window[at..at + 4].try_into().unwrap()) as usize;
        pending.next += len;
        let time_ms = pending.time_ms;
        if pending.next >= pending.end {
            self.pending = None;
        }
        Step::Record {
            offset: self.window_start + at as u64,
            record: view_batch_record(time_ms, &self.window[at + 4..at + len]),
            unit: self.unit,
        }
    }

    /// Checks the segment header; None when it is there and right.
    fn check_header<S: Source + ?Sized>(
        &mut self,
        source: &S,
        end: u64,
        last: bool,
    ) -> io::Result<Option<Step<'static>>> {
        let magic_len = SEGMENT_MAGIC.len();
        if end == 0 {
            return Ok(Some(Step::End));
        }
        let have = end.min(magic_len as u64) as usize;
        let head = self.bytes(source, 0, have, end)?;
        if let Some(format) = Format::of_magic(head) {
            self.format = format;
            return Ok(None);
        }
        let head = head.to_vec();
        let head = &head[..];
        // A header cut short by a crash: what is there is a prefix of the
        // magic, or nothing was written over the allocated bytes.
        let torn = have < magic_len && (SEGMENT_MAGIC.starts_with(head) || is_zero(head));
        if last && (torn || self.all_zero(source, 0, end)?) {
            self.forget();
            return Ok(Some(Step::TornTail {
                offset: 0,
                len: end,
            }));
        }
        self.forget();
        let damage = if have < magic_len {
            Damage::Incomplete
        } else if head[..magic_len - 1] == SEGMENT_MAGIC[..magic_len - 1]
            && head[magic_len - 1].is_ascii_digit()
        {
            Damage::UnknownVersion(head[magic_len - 1])
        } else {
            Damage::BadMagic
        };
        Ok(Some(Step::Corrupt { offset: 0, damage }))
    }

    /// Classifies the bad spot at the cursor's offset (see [`Cursor::next`]).
    fn bad<S: Source + ?Sized>(
        &mut self,
        source: &S,
        end: u64,
        last: bool,
        damage: Damage,
    ) -> io::Result<Step<'static>> {
        let at = self.offset;
        let torn = last && !self.whole_record_within(source, at + 1, end)?;
        self.forget();
        if torn {
            return Ok(Step::TornTail {
                offset: at,
                len: end - at,
            });
        }
        Ok(Step::Corrupt { offset: at, damage })
    }

    /// Drops the read-ahead bytes once reading has stopped: a live log's
    /// tail may be rewritten (a failed write undone, then written again),
    /// so the next attempt must read it afresh.
    fn forget(&mut self) {
        self.pending = None;
        self.window.clear();
        self.window_start = 0;
    }

    /// Whether every byte in `[from, end)` is zero.
    fn all_zero<S: Source + ?Sized>(
        &mut self,
        source: &S,
        from: u64,
        end: u64,
    ) -> io::Result<bool> {
        let mut at = from;
        while at < end {
            let n = (end - at).min(self.read_ahead as u64) as usize;
            if !is_zero(self.bytes(source, at, n, end)?) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// Whether a whole unit (record, or version 4 batch) with a good
    /// checksum starts at any byte in `[from, end)`. Reads in blocks of two
    /// of the longest units, so memory stays bounded however long the
    /// range is.
    fn whole_record_within<S: Source + ?Sized>(
        &mut self,
        source: &S,
        from: u64,
        end: u64,
    ) -> io::Result<bool> {
        let format = self.format;
        let longest = format.max_unit_len();
        let mut block = from;
        while block < end {
            let n = (end - block).min(2 * longest as u64) as usize;
            let bytes = self.bytes(source, block, n, end)?;
            let starts = n.min(longest);
            if (0..starts).any(|i| whole_record_at(&bytes[i..], format)) {
                return Ok(true);
            }
            block += starts as u64;
        }
        Ok(false)
    }

    /// `n` bytes at `at` (all below `end`), from the window or read into it.
    fn bytes<S: Source + ?Sized>(
        &mut self,
        source: &S,
        at: u64,
        n: usize,
        end: u64,
    ) -> io::Result<&[u8]> {
        debug_assert!(at + n as u64 <= end);
        let window_end = self.window_start + self.window.len() as u64;
        if at < self.window_start || at + n as u64 > window_end {
            self.fill_window(source, at, n, end)?;
        }
        let start = (at - self.window_start) as usize;
        Ok(&self.window[start..start + n])
    }

    /// Reads the window afresh from `at`: `n` bytes, or the read-ahead if
    /// more, never past `end`.
    fn fill_window<S: Source + ?Sized>(
        &mut self,
        source: &S,
        at: u64,
        n: usize,
        end: u64,
    ) -> io::Result<()> {
        let want = n.max(self.read_ahead).min((end - at) as usize);
        self.window.clear();
        self.window.resize(want, 0);
        let got = source.read_at(&mut self.window, at)?;
        self.window.truncate(got);
        self.window_start = at;
        if got < n {
            // The file shrank under us (truncated by recovery or a failed
            // write being undone).
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the segment became shorter while it was read",
            ));
        }
        Ok(())
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Whether `bytes` begins with a whole unit of `format` (a record, a batch
/// in version 4) whose checksum is right.
fn whole_record_at(bytes: &[u8], format: Format) -> bool {
    if bytes.len() < RECORD_HEADER_LEN {
        return false;
    }
    let stored = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
    let body_len = u32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
    if !format.body_lens().contains(&body_len) {
        return false;
    }
    let record_len = RECORD_HEADER_LEN + body_len;
    record_len <= bytes.len() && checksum(&bytes[4..record_len]) == stored
}

/// Whether a body of `format` (its length in the format's range) holds a
/// name the format keeps: at most [`MAX_NAME_LEN`] bytes of printable
/// ASCII, inside the body. A version 1 body holds none.
fn name_field_ok(body: &[u8], format: Format) -> bool {
    match format {
        Format::V1 => true,
        Format::V2 | Format::V3 | Format::V4 => {
            let name_len = usize::from(body[13]);
            name_len <= MAX_NAME_LEN
                && BODY_FIXED_LEN + name_len <= body.len()
                && is_printable(&body[BODY_FIXED_LEN..BODY_FIXED_LEN + name_len])
        }
    }
}

/// Reads a body of `format` checked by [`name_field_ok`].
fn view_body(body: &[u8], format: Format) -> RecordView<'_> {
    let time_ms = u64::from_be_bytes(body[0..8].try_into().unwrap());
    let origin = u16::from_be_bytes(body[8..10].try_into().unwrap());
    let dest = u16::from_be_bytes(body[10..12].try_into().unwrap());
    let (roles, name, text) = match format {
        Format::V1 => (0, "", &body[BODY_FIXED_LEN_V1..]),
        Format::V2 | Format::V3 | Format::V4 => {
            let (name, text) = body[BODY_FIXED_LEN..].split_at(usize::from(body[13]));
            // Checked printable ASCII, so UTF-8.
            let name = std::str::from_utf8(name).unwrap_or_default();
            (body[12], name, text)
        }
    };
    RecordView {
        time_ms,
        origin,
        dest,
        roles,
        name,
        text,
    }
}

/// Checks a version 4 batch whose checksum is right: its records fill it
/// exactly, each name is one the format keeps, each record's fields are
/// some record's ([`super::rooms::fields_ok`]). Its record count and time,
/// or the damage.
fn check_batch(batch: &[u8]) -> Result<(u64, u64), Damage> {
    let time_ms = u64::from_be_bytes(batch[8..16].try_into().unwrap());
    let mut at = BATCH_HEADER_LEN;
    let mut records = 0;
    while at < batch.len() {
        let Some(head) = batch.get(at..at + 4) else {
            return Err(Damage::BadBatch);
        };
        let len = u32::from_be_bytes(head.try_into().unwrap()) as usize;
        let left = batch.len() - at - 4;
        if !(BATCH_RECORD_MIN_BODY..=BATCH_RECORD_MAX_BODY).contains(&len) || len > left {
            return Err(Damage::BadBatch);
        }
        let body = &batch[at + 4..at + 4 + len];
        let name_len = usize::from(body[5]);
        if name_len > MAX_NAME_LEN
            || BATCH_RECORD_MIN_BODY + name_len > len
            || !is_printable(&body[BATCH_RECORD_MIN_BODY..BATCH_RECORD_MIN_BODY + name_len])
        {
            return Err(Damage::BadName);
        }
        if !super::rooms::fields_ok(&view_batch_record(time_ms, body)) {
            return Err(Damage::BadRoomRecord);
        }
        records += 1;
        at += 4 + len;
    }
    Ok((records, time_ms))
}

/// Reads the body of a record in a batch (checked by [`check_batch`]).
fn view_batch_record(time_ms: u64, body: &[u8]) -> RecordView<'_> {
    let (name, text) = body[BATCH_RECORD_MIN_BODY..].split_at(usize::from(body[5]));
    RecordView {
        time_ms,
        origin: u16::from_be_bytes([body[0], body[1]]),
        dest: u16::from_be_bytes([body[2], body[3]]),
        roles: body[4],
        // Checked printable ASCII, so UTF-8.
        name: std::str::from_utf8(name).unwrap_or_default(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record from a sender with no name.
    fn plain(time_ms: u64, origin: u16, dest: u16, text: &[u8]) -> RecordView<'_> {
        RecordView {
            time_ms,
            origin,
            dest,
            roles: 0,
            name: "",
            text,
        }
    }

    /// The messages and their text bytes are worked out from the buffer
    /// (the server's metrics, counted once a write): names, room records
    /// and the headers of several batches are not text.
    #[test]
    fn batches_count_their_messages_and_text_bytes() {
        let mut batches = Batches::new();
        assert_eq!(batches.messages(), (0, 0));
        batches.push(&plain(1, 1, 0, b"hello"));
        batches.push(&RecordView {
            name: "alice",
            ..plain(1, 2, 4096, b"")
        });
        batches.push_room(
            1,
            &super::super::rooms::RoomRecord::Left {
                room: 3,
                member: "bob",
            },
        );
        batches.push(&plain(2, 1, 0, &[b'x'; 40])); // another time: a second batch
        assert_eq!(batches.messages(), (3, 45));
        batches.seal();
        assert_eq!(batches.messages(), (3, 45), "sealing adds no text");
        batches.clear(1 << 20);
        assert_eq!(batches.messages(), (0, 0));
        batches.push(&plain(3, 1, 0, b"again"));
        assert_eq!(batches.messages(), (1, 5));
    }

    fn segment(records: &[(u64, u16, u16, &[u8])]) -> Vec<u8> {
        let mut bytes = SEGMENT_MAGIC_V3.to_vec();
        for &(time, origin, dest, text) in records {
            encode_record_v3(&mut bytes, plain(time, origin, dest, text));
        }
        bytes
    }

    /// Reads a segment to its end: the records, then what stopped it.
    fn read_all(bytes: &[u8], last: bool, read_ahead: usize) -> (Vec<Record>, String) {
        let mut cursor = Cursor::with_read_ahead(read_ahead);
        let mut records = Vec::new();
        loop {
            match cursor.next(bytes, bytes.len() as u64, last).unwrap() {
                Step::Record { record, .. } => records.push(record.to_record()),
                other => return (records, format!("{other:?}")),
            }
        }
    }

    #[test]
    fn record_layout_is_crc_length_time_origin_dest_roles_name_text() {
        let mut bytes = Vec::new();
        let record = RecordView {
            name: "alice",
            roles: 7,
            ..plain(0x0102_0304_0506_0708, 1, 4096, b"hi")
        };
        encode_record_v3(&mut bytes, record);
        let crc = crc32c::crc32c(&bytes[4..]).to_be_bytes();
        #[rustfmt::skip]
        let want = [
            crc[0], crc[1], crc[2], crc[3], // CRC32C of everything after it
            0, 0, 0, 21,                    // body length: 14 + name + text
            1, 2, 3, 4, 5, 6, 7, 8,         // receive time, ms since the epoch
            0, 1,                           // origin
            0x10, 0x00,                     // destination
            7,                              // the sender's roles
            5, b'a', b'l', b'i', b'c', b'e', // the sender's name
            b'h', b'i',                     // text
        ];
        assert_eq!(bytes, want);
        let mut segment = SEGMENT_MAGIC_V3.to_vec();
        segment.extend_from_slice(&bytes);
        assert_eq!(
            read_all(&segment, false, 64),
            (vec![record.to_record()], "End".into())
        );
    }

    #[test]
    fn a_record_with_no_name_pays_one_byte_for_it() {
        let mut bytes = Vec::new();
        encode_record_v3(&mut bytes, plain(1, 1, 0, b"hi"));
        assert_eq!(bytes.len(), RECORD_HEADER_LEN + 12 + 2 + 2);
        assert_eq!(&bytes[20..], [0, 0, b'h', b'i'], "roles 0, no name, text");
    }

    #[test]
    fn a_version_1_segment_reads_as_records_with_no_name() {
        #[rustfmt::skip]
        let body = [
            0, 0, 0, 14,                    // body length: 12 + text
            1, 2, 3, 4, 5, 6, 7, 8,         // receive time
            0, 1,                           // origin
            0x10, 0x00,                     // destination
            b'h', b'i',                     // text
        ];
        let mut segment = b"EVCHLOG1".to_vec();
        segment.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        segment.extend_from_slice(&body);
        let mut built = SEGMENT_MAGIC_V1.to_vec();
        encode_record_v1(&mut built, 0x0102_0304_0506_0708, 1, 4096, b"hi");
        assert_eq!(built, segment, "the test encoder writes version 1's bytes");
        let want = plain(0x0102_0304_0506_0708, 1, 4096, b"hi").to_record();
        let mut cursor = Cursor::with_read_ahead(7);
        let end = segment.len() as u64;
        match cursor.next(&segment[..], end, true).unwrap() {
            Step::Record {
                offset: 8, record, ..
            } => assert_eq!(record.to_record(), want),
            other => panic!("{other:?}"),
        }
        assert_eq!(cursor.format(), Format::V1);
        // Version 1's lengths: 12 (no text) is whole, and the scan for a
        // torn tail finds version 1 records.
        assert_eq!(
            read_all(&segment, true, 64),
            (vec![want.clone()], "End".into())
        );
        let mut torn = segment.clone();
        torn.extend_from_slice(&segment[8..20]);
        let cut = segment.len();
        assert_eq!(
            read_all(&torn, true, 64).1,
            format!("TornTail {{ offset: {cut}, len: 12 }}")
        );
        let mut hidden = segment.clone();
        hidden.push(0xff);
        hidden.extend_from_slice(&segment[8..]);
        let end = read_all(&hidden, true, 64).1;
        assert!(
            end.starts_with(&format!("Corrupt {{ offset: {cut}, ")),
            "{end}"
        );
    }

    #[test]
    fn a_later_format_version_is_named_not_called_bad_magic() {
        let (_, end) = read_all(b"EVCHLOG5........", false, 64);
        assert_eq!(end, "Corrupt { offset: 0, damage: UnknownVersion(53) }");
        assert_eq!(
            Damage::UnknownVersion(b'5').to_string(),
            "segment format version 5 is newer than this evchat reads (1 to 4)"
        );
        let (_, end) = read_all(b"EVCHLOGx........", true, 64);
        assert_eq!(end, "Corrupt { offset: 0, damage: BadMagic }");
    }

    /// A record whose checksum is right but whose name field is wrong
    /// (longer than the body, longer than a name, not printable) is
    /// corruption even at the end of the last segment: no torn write
    /// leaves one.
    #[test]
    fn a_whole_record_with_a_bad_name_field_is_corruption_even_last() {
        // The name length field of the segment's first record.
        const NAME_AT: usize = SEGMENT_MAGIC_V3.len() + RECORD_HEADER_LEN + 13;
        let good = segment(&[(1, 1, 0, b"0123456789012345678901234567890123456789")]);
        type Damaging = fn(&mut Vec<u8>);
        let cases: [(&str, Damaging); 4] = [
            ("past the body", |b| b[NAME_AT] = 41),
            ("over 24", |b| b[NAME_AT] = 25),
            ("a control byte", |b| {
                b[NAME_AT] = 1;
                b[NAME_AT + 1] = 0x1b;
            }),
            ("a space", |b| {
                b[NAME_AT] = 2;
                b[NAME_AT + 1] = b'a';
                b[NAME_AT + 2] = b' ';
            }),
        ];
        for (what, damage) in cases {
            let mut bytes = good.clone();
            damage(&mut bytes);
            let body = SEGMENT_MAGIC_V3.len() + 4;
            let crc = crc32c::crc32c(&bytes[body..]);
            bytes[body - 4..body].copy_from_slice(&crc.to_be_bytes());
            for last in [true, false] {
                let (records, end) = read_all(&bytes, last, 16);
                assert!(records.is_empty(), "{what}");
                assert_eq!(end, "Corrupt { offset: 8, damage: BadName }", "{what}");
            }
        }
        // The longest name and a name that fills the body both read.
        let longest = "N".repeat(MAX_NAME_LEN);
        for text in [&b""[..], b"text"] {
            let mut bytes = SEGMENT_MAGIC_V3.to_vec();
            let record = RecordView {
                name: &longest,
                ..plain(1, 1, 0, text)
            };
            encode_record_v3(&mut bytes, record);
            assert_eq!(
                read_all(&bytes, true, 16),
                (vec![record.to_record()], "End".into())
            );
        }
    }

    #[test]
    fn the_checksum_is_crc32c_at_every_length_and_alignment() {
        // Bytes that are not a pattern the loop could get right by luck.
        let bytes: Vec<u8> = (0u32..700)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..8 {
            for end in start..bytes.len() {
                let slice = &bytes[start..end];
                assert_eq!(checksum(slice), crc32c::crc32c(slice), "{start}..{end}");
            }
        }
        // The check value of CRC-32C (iSCSI), as every table lists it.
        assert_eq!(checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn sealed_batches_hold_each_records_own_crc32c() {
        // Lengths around the lockstep's word boundaries, a long text past
        // the inline loops, and empty texts; batches of 1 to 8 records so
        // that groups of three and the ones left over are both sealed.
        let lens = [0, 1, 3, 4, 7, 8, 9, 20, 31, 32, 33, 300, 4, 0, 65_535, 12];
        for count in 1..=8 {
            for first in 0..lens.len() {
                let mut batch = Vec::new();
                let mut want = Vec::new();
                for k in 0..count {
                    let len = lens[(first + k) % lens.len()];
                    let text: Vec<u8> = (0..len).map(|i| (i * 7 + k) as u8).collect();
                    let start = batch.len();
                    encode_unsealed(&mut batch, &plain(k as u64, 1, 0, &text));
                    want.push(crc32c::crc32c(&batch[start + 4..]));
                }
                seal_records(&mut batch);
                let mut at = 0;
                for (k, &crc) in want.iter().enumerate() {
                    let stored = u32::from_be_bytes(batch[at..at + 4].try_into().unwrap());
                    assert_eq!(stored, crc, "record {k} of {count}, from {first}");
                    at += unit_len(&batch[at..]);
                }
                assert_eq!(at, batch.len());
            }
        }
    }

    #[test]
    fn segment_names_sort_like_their_numbers() {
        assert_eq!(segment_name(0), "00000000000000000000.log");
        assert_eq!(segment_name(u64::MAX), "18446744073709551615.log");
        assert_eq!(parse_segment_name("00000000000000000042.log"), Some(42));
        assert_eq!(
            parse_segment_name("18446744073709551615.log"),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_name("99999999999999999999.log"), None);
        assert_eq!(parse_segment_name("0000000000000000042.log"), None);
        assert_eq!(parse_segment_name("0000000000000000004a.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.log~"), None);
        assert_eq!(parse_segment_name("+0000000000000000042.log"), None);
    }

    #[test]
    fn records_read_back_at_every_read_ahead_size() {
        let bytes = segment(&[(1, 1, 0, b"a"), (2, 2, 4096, b""), (3, 3, 0, &[0xff; 300])]);
        for read_ahead in [1, 7, 8, 20, 64, 1 << 20] {
            let (records, end) = read_all(&bytes, false, read_ahead);
            assert_eq!(end, "End");
            assert_eq!(records.len(), 3);
            assert_eq!(records[1].dest, 4096);
            assert_eq!(records[2].text, vec![0xff; 300]);
        }
    }

    #[test]
    fn an_empty_segment_has_no_records() {
        assert_eq!(read_all(&[], false, 64), (vec![], "End".into()));
        assert_eq!(
            read_all(&SEGMENT_MAGIC_V3, false, 64),
            (vec![], "End".into())
        );
    }

    /// A live log's tail may be undone (a failed write cut back) and
    /// written again: what a cursor read of it before must not be reused.
    #[test]
    fn a_tail_rewritten_after_a_torn_read_is_read_afresh() {
        let undone = segment(&[(1, 1, 0, b"first"), (2, 2, 0, b"undone")]);
        let rewritten = segment(&[(1, 1, 0, b"first"), (3, 3, 0, b"second")]);
        assert_eq!(undone.len(), rewritten.len());
        let cut = &undone[..undone.len() - 3];
        let mut cursor = Cursor::with_read_ahead(1 << 20);
        let end = cut.len() as u64;
        assert!(matches!(
            cursor.next(cut, end, true).unwrap(),
            Step::Record { .. }
        ));
        let torn = format!("{:?}", cursor.next(cut, end, true).unwrap());
        assert!(torn.starts_with("TornTail"), "{torn}");
        let end = rewritten.len() as u64;
        match cursor.next(&rewritten[..], end, true).unwrap() {
            Step::Record { record, .. } => assert_eq!(record.to_record().text, b"second"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_cut_inside_the_last_record_is_a_torn_tail() {
        let bytes = segment(&[(1, 1, 0, b"first"), (2, 2, 0, b"second")]);
        let last_start = bytes.len() - (RECORD_HEADER_LEN + BODY_FIXED_LEN + 6);
        for cut in last_start + 1..bytes.len() {
            let (records, end) = read_all(&bytes[..cut], true, 16);
            assert_eq!(records.len(), 1, "cut at {cut}");
            let len = cut - last_start;
            assert_eq!(
                end,
                format!("TornTail {{ offset: {last_start}, len: {len} }}")
            );
            let (_, end) = read_all(&bytes[..cut], false, 16);
            assert!(end.starts_with("Corrupt"), "not last, cut at {cut}: {end}");
        }
    }

    #[test]
    fn a_cut_header_in_the_last_segment_is_torn_elsewhere_corrupt() {
        for cut in 1..SEGMENT_MAGIC_V3.len() {
            let (_, end) = read_all(&SEGMENT_MAGIC_V3[..cut], true, 64);
            assert_eq!(end, format!("TornTail {{ offset: 0, len: {cut} }}"));
            let (_, end) = read_all(&SEGMENT_MAGIC_V3[..cut], false, 64);
            assert_eq!(end, "Corrupt { offset: 0, damage: Incomplete }");
        }
        let (_, end) = read_all(b"NOTALOG1....", true, 64);
        assert_eq!(end, "Corrupt { offset: 0, damage: BadMagic }");
    }

    #[test]
    fn a_last_segment_of_zeros_is_torn_elsewhere_corrupt() {
        // Allocated but never written, header included.
        let zeros = [0u8; 100];
        let (_, end) = read_all(&zeros, true, 16);
        assert_eq!(end, "TornTail { offset: 0, len: 100 }");
        let (_, end) = read_all(&zeros, false, 16);
        assert_eq!(end, "Corrupt { offset: 0, damage: BadMagic }");
        // One byte written past the header's place is not a torn header.
        let mut written = zeros;
        written[99] = 1;
        let (_, end) = read_all(&written, true, 16);
        assert_eq!(end, "Corrupt { offset: 0, damage: BadMagic }");
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let mut bytes = segment(&[(1, 1, 0, b"kept")]);
        let at = bytes.len();
        bytes.extend_from_slice(&[0; 5000]);
        let (records, end) = read_all(&bytes, true, 512);
        assert_eq!(records.len(), 1);
        assert_eq!(end, format!("TornTail {{ offset: {at}, len: 5000 }}"));
    }

    #[test]
    fn a_flipped_bit_before_the_last_record_is_corruption_at_its_record() {
        let bytes = segment(&[(1, 1, 0, b"one"), (2, 2, 0, b"two"), (3, 3, 0, b"three")]);
        let second = SEGMENT_MAGIC_V3.len() + RECORD_HEADER_LEN + BODY_FIXED_LEN + 3;
        let third = second + RECORD_HEADER_LEN + BODY_FIXED_LEN + 3;
        for byte in second..third {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                let (records, end) = read_all(&damaged, true, 16);
                assert_eq!(records.len(), 1, "bit {bit} of byte {byte}");
                assert!(
                    end.starts_with(&format!("Corrupt {{ offset: {second}, ")),
                    "bit {bit} of byte {byte}: {end}"
                );
            }
        }
    }

    #[test]
    fn the_longest_text_reads_back_and_a_longer_claim_is_damage() {
        let longest = vec![b'x'; MAX_TEXT_LEN];
        let bytes = segment(&[(1, 1, 0, &longest[..]), (2, 2, 0, b"after")]);
        let (records, end) = read_all(&bytes, false, 64);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].text, longest);
        assert_eq!(end, "End");
        // The length field claims one byte more than the longest body.
        let mut claim = bytes.clone();
        let at = SEGMENT_MAGIC_V3.len() + 4;
        claim[at..at + 4].copy_from_slice(&(MAX_BODY_LEN_V3 as u32 + 1).to_be_bytes());
        let (records, end) = read_all(&claim, false, 64);
        assert!(records.is_empty());
        assert_eq!(
            end, "Corrupt { offset: 8, damage: BadLength(65613) }",
            "a claim past the longest record"
        );
    }

    #[test]
    fn a_slice_reads_fewer_bytes_only_at_its_end() {
        let mut buf = [0u8; 8];
        assert_eq!(b"abcdef"[..].read_at(&mut buf, 4).unwrap(), 2);
        assert_eq!(&buf[..2], b"ef");
        assert_eq!(b"abcdef"[..].read_at(&mut buf[..3], 1).unwrap(), 3);
        assert_eq!(&buf[..3], b"bcd");
        assert_eq!(b"abcdef"[..].read_at(&mut buf, 9).unwrap(), 0);
    }

    #[test]
    fn the_cursor_buffer_holds_what_it_read_ahead_and_no_more() {
        let bytes = segment(&[(1, 1, 0, &[b'a'; 300][..]), (2, 2, 0, b"b")]);
        let mut cursor = Cursor::with_read_ahead(64);
        let mut read = 0;
        while let Step::Record { .. } = cursor.next(&bytes[..], bytes.len() as u64, true).unwrap() {
            read += 1;
        }
        assert_eq!(read, 2);
        let capacity = cursor.buffer_capacity();
        assert!(
            (300..=2 * MAX_RECORD_LEN).contains(&capacity),
            "buffer holds {capacity} bytes"
        );
    }

    #[test]
    fn the_offset_is_where_the_next_record_starts_then_the_valid_length() {
        let bytes = segment(&[(1, 1, 0, b"one"), (2, 2, 0, b"two")]);
        let first = (SEGMENT_MAGIC_V3.len() + RECORD_HEADER_LEN + BODY_FIXED_LEN + 3) as u64;
        let mut torn = bytes.clone();
        torn.extend_from_slice(&[1, 2, 3]);
        let mut cursor = Cursor::with_read_ahead(16);
        let end = torn.len() as u64;
        assert!(matches!(
            cursor.next(&torn[..], end, true).unwrap(),
            Step::Record { .. }
        ));
        assert_eq!(cursor.offset(), first);
        assert!(matches!(
            cursor.next(&torn[..], end, true).unwrap(),
            Step::Record { .. }
        ));
        assert_eq!(cursor.offset(), bytes.len() as u64);
        assert!(matches!(
            cursor.next(&torn[..], end, true).unwrap(),
            Step::TornTail { .. }
        ));
        assert_eq!(cursor.offset(), bytes.len() as u64);
    }

    #[test]
    fn a_record_view_knows_its_size_in_a_batch() {
        let mut bytes = SEGMENT_MAGIC.to_vec();
        encode_record(&mut bytes, plain(7, 1, 4096, b"sized"));
        let mut cursor = Cursor::with_read_ahead(64);
        match cursor.next(&bytes[..], bytes.len() as u64, true).unwrap() {
            Step::Record { record, .. } => assert_eq!(
                record.encoded_len(),
                bytes.len() - SEGMENT_MAGIC.len() - BATCH_HEADER_LEN
            ),
            other => panic!("{other:?}"),
        }
    }

    /// A version 4 segment: `turns` of records, each turn's records built
    /// into batches as the writer builds them.
    fn batch_segment(turns: &[Vec<RecordView<'_>>]) -> Vec<u8> {
        let mut bytes = SEGMENT_MAGIC.to_vec();
        for turn in turns {
            let mut batches = Batches::new();
            for record in turn {
                batches.push(record);
            }
            bytes.extend_from_slice(batches.seal());
        }
        bytes
    }

    /// `push_kept` writes the record head as two stores and copies short
    /// texts by their two ends (`copy_text`): every length around those
    /// copies' edges (0..=130), with names of every kind of length, must
    /// come out byte for byte as the layout says, and read back.
    #[test]
    fn every_text_length_is_encoded_byte_for_byte_and_reads_back() {
        let text: Vec<u8> = (0..130u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for name in ["", "a", "alice", "abcdefghijklmnopqrstuvwx"] {
            for len in 0..=text.len() {
                let record = RecordView {
                    time_ms: 9,
                    origin: 0x0102,
                    dest: 0x0304,
                    roles: 0x05,
                    name,
                    text: &text[..len],
                };
                // A buffer already holding bytes, as a turn's is after its
                // first record: the copy must land after them.
                let mut batches = Batches::new();
                batches.push(&plain(9, 7, 8, b"first"));
                batches.push(&record);
                let sealed = batches.seal().to_vec();
                let at = BATCH_HEADER_LEN + BATCH_RECORD_HEAD_LEN + 5;
                let mut want = ((6 + name.len() + len) as u32).to_be_bytes().to_vec();
                want.extend_from_slice(&[1, 2, 3, 4, 5, name.len() as u8]);
                want.extend_from_slice(name.as_bytes());
                want.extend_from_slice(&text[..len]);
                assert_eq!(sealed[at..], want[..], "name {name:?}, text of {len} bytes");
                let mut segment = SEGMENT_MAGIC.to_vec();
                segment.extend_from_slice(&sealed);
                let (records, end) = read_all(&segment, true, 64);
                assert_eq!(end, "End");
                assert_eq!(records[1], record.to_record(), "name {name:?}, {len} bytes");
            }
        }
    }

    #[test]
    fn a_batch_is_crc_length_time_then_records_of_length_origin_dest_roles_name_text() {
        let named = RecordView {
            time_ms: 0x0102_0304_0506_0708,
            origin: 0x0a0b,
            dest: 0,
            roles: 0x21,
            name: "al",
            text: b"hi",
        };
        let bytes = batch_segment(&[vec![named, plain(0x0102_0304_0506_0708, 3, 4, b"")]]);
        let batch = &bytes[8..];
        #[rustfmt::skip]
        let body: &[u8] = &[
            0, 0, 0, 32,                      // length: the rest of the batch
            1, 2, 3, 4, 5, 6, 7, 8,           // time_ms, the batch's
            0, 0, 0, 10,                      // record length: 6 + NL + text
            0x0a, 0x0b, 0, 0, 0x21, 2,        // origin, dest, roles, NL
            b'a', b'l', b'h', b'i',           // name, text
            0, 0, 0, 6,                       // the second record: no name, no text
            0, 3, 0, 4, 0, 0,
        ];
        assert_eq!(&batch[4..], body);
        let crc = u32::from_be_bytes(batch[..4].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(body));
        let (records, end) = read_all(&bytes, true, 7);
        assert_eq!(end, "End");
        assert_eq!(records[0], named.to_record());
        assert_eq!(records[1].origin, 3);
    }

    /// The seventh round's figure: a 32-byte text from a client with no
    /// name takes 42 bytes and its share of a batch header (54 in version
    /// 3).
    #[test]
    fn a_record_of_32_bytes_of_text_takes_42_bytes_in_a_batch() {
        let text = [b'x'; 32];
        let turn: Vec<RecordView<'_>> = (0..100).map(|i| plain(5, i, 0, &text)).collect();
        let bytes = batch_segment(&[turn]);
        assert_eq!(bytes.len(), 8 + BATCH_HEADER_LEN + 100 * 42);
        let mut v3 = Vec::new();
        encode_record_v3(&mut v3, plain(5, 1, 0, &text));
        assert_eq!(v3.len(), 54);
    }

    /// A batch holds records of one time and at most [`BATCH_SPLIT`] bytes
    /// of them and one more: a turn past that, or a record of another
    /// time, opens the next batch. Each batch is one unit.
    #[test]
    fn batches_split_at_a_change_of_time_and_past_the_bound() {
        let text = vec![b'y'; 1000];
        let mut turn: Vec<RecordView<'_>> = (0..70).map(|i| plain(9, i, 0, &text)).collect();
        turn.push(plain(10, 70, 0, b"later"));
        let bytes = batch_segment(&[turn]);
        let mut cursor = Cursor::with_read_ahead(100);
        let mut units = Vec::new();
        let mut records = 0;
        while let Step::Record { unit, record, .. } =
            cursor.next(&bytes[..], bytes.len() as u64, true).unwrap()
        {
            assert_eq!(record.origin, records);
            records += 1;
            if units.last() != Some(&unit) {
                units.push(unit);
            }
        }
        assert_eq!(records, 71);
        // 1010 bytes a record: the 65th passes 65536 bytes.
        let counts: Vec<u64> = units.iter().map(|u| u.records).collect();
        assert_eq!(counts, [65, 5, 1]);
        assert_eq!(units[0].offset, 8);
        assert_eq!(units[1].offset, 8 + 16 + 65 * 1010);
    }

    /// The torn-tail rule applied to batches: a cut anywhere in the last
    /// batch keeps every batch before it and nothing of it, whatever the
    /// read-ahead.
    #[test]
    fn every_cut_inside_the_last_batch_keeps_the_batches_before_it_only() {
        let bytes = batch_segment(&[
            vec![plain(1, 1, 0, b"one"), plain(1, 2, 0, b"two")],
            vec![plain(2, 3, 0, b"three"), plain(2, 4, 0, b"four")],
        ]);
        let last = 8 + 16 + 2 * 10 + 6;
        for cut in last..bytes.len() {
            for read_ahead in [1, 13, 4096] {
                let (records, end) = read_all(&bytes[..cut], true, read_ahead);
                assert_eq!(records.len(), 2, "cut {cut}");
                let want = if cut == last {
                    "End".to_string()
                } else {
                    format!("TornTail {{ offset: {last}, len: {} }}", cut - last)
                };
                assert_eq!(end, want, "cut {cut}");
            }
        }
    }

    /// A flipped bit in a batch with a whole batch after it is corruption
    /// at the damaged batch, and none of its records is handed out; in the
    /// last batch it is a torn tail.
    #[test]
    fn a_flipped_bit_inside_a_batch_is_corruption_before_the_last_torn_in_it() {
        let bytes = batch_segment(&[
            vec![plain(1, 1, 0, b"one")],
            vec![plain(2, 2, 0, b"two"), plain(2, 3, 0, b"three")],
            vec![plain(3, 4, 0, b"four")],
        ]);
        let second = 8 + 16 + 13;
        let third = second + 16 + 13 + 15;
        for byte in second..third {
            let mut bad = bytes.clone();
            bad[byte] ^= 0x10;
            let (records, end) = read_all(&bad, true, 64);
            assert_eq!(records.len(), 1, "byte {byte}");
            assert!(
                end.starts_with(&format!("Corrupt {{ offset: {second},")),
                "{end}"
            );
        }
        for byte in third..bytes.len() {
            let mut bad = bytes.clone();
            bad[byte] ^= 0x10;
            let (records, end) = read_all(&bad, true, 64);
            assert_eq!(records.len(), 3, "byte {byte}");
            assert!(
                end.starts_with(&format!("TornTail {{ offset: {third},")),
                "{end}"
            );
        }
    }

    /// A batch whose checksum is right but whose records do not fill it
    /// (a length past its end, or short of it) is corruption even last: no
    /// torn write leaves one.
    #[test]
    fn a_whole_batch_whose_records_do_not_fill_it_is_corruption_even_last() {
        let good = batch_segment(&[vec![plain(1, 1, 0, b"abc"), plain(1, 2, 0, b"de")]]);
        for (at, value) in [(8 + 16 + 3, 10u8), (8 + 16 + 3, 200), (8 + 16 + 3, 5)] {
            let mut bad = good.clone();
            bad[at] = value;
            let crc = crc32c::crc32c(&bad[12..]);
            bad[8..12].copy_from_slice(&crc.to_be_bytes());
            let (records, end) = read_all(&bad, true, 64);
            assert!(records.is_empty());
            assert_eq!(end, "Corrupt { offset: 8, damage: BadBatch }");
        }
        let mut bad_name = good.clone();
        bad_name[8 + 16 + 9] = 25;
        let crc = crc32c::crc32c(&bad_name[12..]);
        bad_name[8..12].copy_from_slice(&crc.to_be_bytes());
        let (_, end) = read_all(&bad_name, true, 64);
        assert_eq!(end, "Corrupt { offset: 8, damage: BadName }");
    }

    /// A whole batch holding a room record of no known kind, or a message
    /// record whose text is over 65535 bytes, is corruption at the batch,
    /// even last, and none of its records is handed out.
    #[test]
    fn a_batch_with_a_record_no_record_has_is_corruption_even_last() {
        let long = vec![b'x'; MAX_TEXT_LEN + 1];
        for (origin, dest, text) in [
            (
                42u16,
                super::super::rooms::ROOM_RECORD_DEST,
                &b"\x40\x00"[..],
            ),
            (1, 0, &long[..]),
        ] {
            let mut batches = Batches::new();
            batches.push(&plain(1, 1, 0, b"fine"));
            let mut bytes = SEGMENT_MAGIC.to_vec();
            bytes.extend_from_slice(batches.seal());
            // A record no writer makes (`push` refuses it): what a damaged
            // log could hold, its batch's length and checksum made right.
            bytes.extend_from_slice(&((6 + text.len()) as u32).to_be_bytes());
            bytes.extend_from_slice(&origin.to_be_bytes());
            bytes.extend_from_slice(&dest.to_be_bytes());
            bytes.extend_from_slice(&[0, 0]);
            bytes.extend_from_slice(text);
            let len = (bytes.len() - 8 - RECORD_HEADER_LEN) as u32;
            bytes[12..16].copy_from_slice(&len.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[12..]);
            bytes[8..12].copy_from_slice(&crc.to_be_bytes());
            let (records, end) = read_all(&bytes, true, 64);
            assert!(records.is_empty());
            assert_eq!(end, "Corrupt { offset: 8, damage: BadRoomRecord }");
        }
    }

    /// Room records go into batches like messages and read back the same.
    #[test]
    fn room_records_read_back_from_a_batch() {
        use super::super::rooms::RoomRecord;
        let joined = RoomRecord::Joined {
            room: 16384,
            room_name: "ops",
            queue: true,
            online: true,
            member: "al",
        };
        let settled = RoomRecord::Settled { wait: 7 };
        let mut batches = Batches::new();
        batches.push_room(1, &joined);
        batches.push(&plain(1, 3, 16384, b"to the room"));
        batches.push_room(2, &settled);
        let mut bytes = SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(batches.seal());
        let (records, end) = read_all(&bytes, true, 64);
        assert_eq!(end, "End");
        assert_eq!(records.len(), 3);
        assert_eq!(RoomRecord::read(&records[0].view()), Some(joined));
        assert_eq!(records[1].text, b"to the room");
        assert_eq!(RoomRecord::read(&records[2].view()), Some(settled));
        assert_eq!(records[2].time_ms, 2);
    }

    #[test]
    fn a_whole_record_far_past_a_bad_one_makes_it_corruption() {
        // A bad record, 65,500 bytes of junk, then a whole record: found
        // across the scan's first block boundary, so not a torn tail.
        let mut bytes = segment(&[(1, 1, 0, b"bad")]);
        bytes[SEGMENT_MAGIC_V3.len()] ^= 1;
        bytes.resize(SEGMENT_MAGIC_V3.len() + 1 + 65_500, b'x');
        encode_record_v3(&mut bytes, plain(2, 2, 0, &[b'y'; 100]));
        let (records, end) = read_all(&bytes, true, 4096);
        assert!(records.is_empty());
        assert!(end.starts_with("Corrupt { offset: 8, "), "{end}");
    }

    #[test]
    fn a_damaged_last_record_that_hides_a_whole_record_is_corruption() {
        // The text of the record cut short holds a whole record: a torn
        // write cannot produce a good record after the tear.
        let mut inner = Vec::new();
        encode_record_v3(&mut inner, plain(9, 9, 0, b"inner"));
        let mut bytes = segment(&[(1, 1, 0, &[&inner[..], b"xx"].concat())]);
        bytes.truncate(bytes.len() - 1);
        let (records, end) = read_all(&bytes, true, 64);
        assert!(records.is_empty());
        assert_eq!(end, "Corrupt { offset: 8, damage: Incomplete }");
    }
}
