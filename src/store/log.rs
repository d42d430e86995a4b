//! The history directory as a writer holds it: the lock, the recovery scan
//! at open, appending whole records to the last segment, rolling to a new
//! segment when one is full, and retention. Everything here runs on the
//! thread that owns the [`Log`] (the event loop in a server) and never calls
//! `fsync` after [`Log::open`]: the files that need one are handed out as
//! [`SegmentFile`]s, for the writer's sync thread. The file work that can
//! wait for the disk (making a segment's file, deleting retired ones) can
//! be done elsewhere too: [`Log::give_spare`] takes a segment file made
//! ahead by [`prepare_spare`], and [`Log::retire`] hands out what to delete.

use super::StoreError;
use super::format::{
    Cursor, Damage, Format, RecordView, SEGMENT_MAGIC, Step, batch_records, parse_segment_name,
    segment_name, unit_len,
};
use super::rooms::{ROOM_RECORD_DEST, RoomRecord};
use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name of the lock file in a history directory.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// The name of the next segment's file while it is made ahead of the roll
/// that needs it ([`prepare_spare`]); no segment name looks like it.
pub(crate) const SPARE_FILE: &str = "next-segment";

/// The largest segment [`Options::new`] picks.
const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest segment [`Options::new`] picks: about four of the longest
/// records.
const MIN_SEGMENT_BYTES: u64 = 256 * 1024;

/// How a log is opened and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Retention: once the segments hold more than this, the oldest are
    /// deleted (never the segment being written).
    pub max_bytes: u64,
    /// A segment is closed and a new one begun when the next record would
    /// take it past this; a record longer than this gets a segment alone.
    pub segment_bytes: u64,
    /// Truncate at corruption instead of refusing to open.
    pub repair: bool,
}

impl Options {
    /// Options for a log of at most `max_bytes`: segments of an eighth of
    /// that, kept between 256 KiB and 64 MiB, so retention frees space in
    /// steps small against the whole.
    pub fn new(max_bytes: u64) -> Options {
        Options {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            repair: false,
        }
    }
}

/// Something [`Log::open`] found and dealt with, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The last segment ended in the remains of an interrupted write; they
    /// were cut off.
    TornTail {
        file: PathBuf,
        offset: u64,
        dropped: u64,
    },
    /// Corruption cut off because repair was asked for.
    Repaired {
        file: PathBuf,
        offset: u64,
        dropped: u64,
        damage: Damage,
    },
    /// A file that is not a segment; left alone.
    Foreign { path: PathBuf },
    /// A segment deleted to bring the log under its size limit.
    Retired { file: PathBuf, bytes: u64 },
    /// The last segment holds records of an earlier format (1: no names;
    /// 2: no room records; 3: a checksum per record, no batches): it is
    /// left as it is and new records go to a new segment in the format
    /// written now.
    NewFormat {
        file: PathBuf,
        version: u8,
        next: PathBuf,
    },
    /// Retention stopped at a segment holding room records: the log is
    /// over its size limit by `over` bytes rather than lose a membership or
    /// a waiting message (HISTORY.md, "Rooms and waiting messages").
    KeptForRooms { file: PathBuf, over: u64 },
    /// A next segment made ahead ([`SPARE_FILE`]) held `bytes` past its
    /// magic: the records of a roll whose rename a crash undid, which no
    /// sync had covered. Deleted.
    SpareDropped { path: PathBuf, bytes: u64 },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::TornTail {
                file,
                offset,
                dropped,
            } => write!(
                f,
                "{}: torn tail at offset {offset} (an interrupted write): \
                 cut {dropped} bytes, holding no whole record",
                file.display()
            ),
            Notice::Repaired {
                file,
                offset,
                dropped,
                damage,
            } => write!(
                f,
                "{}: corrupt at offset {offset} ({damage}): repair cut {dropped} bytes",
                file.display()
            ),
            Notice::Foreign { path } => {
                write!(f, "{}: not a history segment; ignored", path.display())
            }
            Notice::Retired { file, bytes } => write!(
                f,
                "{}: deleted ({bytes} bytes) to keep the log under its size limit",
                file.display()
            ),
            Notice::NewFormat {
                file,
                version,
                next,
            } => write!(
                f,
                "{}: written by an earlier evchat (format {version}, {}): kept as it is; \
                 new records go to {} (format 4)",
                file.display(),
                match version {
                    1 => "without names",
                    2 => "without room records",
                    _ => "without batches",
                },
                next.display()
            ),
            Notice::SpareDropped { path, bytes } => write!(
                f,
                "{}: a next segment made ahead held {bytes} bytes of records never \
                 synced (a crash undid the roll that named it): deleted",
                path.display()
            ),
            Notice::KeptForRooms { file, over } => write!(
                f,
                "{}: holds room records, so it and later segments are kept: the log is \
                 {over} bytes over --history-max-bytes",
                file.display()
            ),
        }
    }
}

/// What [`Log::open`] returns.
#[derive(Debug)]
pub struct Opened {
    pub log: Log,
    /// What the scan found and did, in order.
    pub notices: Vec<Notice>,
    /// Records the scan found (retention at open may have deleted some).
    pub records: u64,
}

#[derive(Debug)]
struct Segment {
    /// Number of its first record.
    base: u64,
    path: PathBuf,
    /// Bytes in it, header included.
    len: u64,
    /// It holds a room record: retention stops at it.
    rooms: bool,
}

/// A segment open for appending, shared with the thread that syncs it.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    path: PathBuf,
    file: File,
}

impl SegmentFile {
    /// Makes what was written to the segment durable (`fdatasync`).
    pub(crate) fn sync(&self) -> Result<(), WriteError> {
        self.file.sync_data().map_err(|source| WriteError {
            path: self.path.clone(),
            op: "fsync",
            source,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// An open history directory, locked against other writers.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    /// Held for the log's lifetime: the flock goes with the descriptor.
    _lock: File,
    options: Options,
    /// Full segments, oldest first.
    sealed: VecDeque<Segment>,
    /// The segment records are appended to.
    active: Segment,
    active_file: Arc<SegmentFile>,
    /// Full segments not yet handed out by [`Log::take_sealed`]: they and
    /// the directory (for the next segment's name) still need an `fsync`.
    sealed_unsynced: Vec<Arc<SegmentFile>>,
    /// Records in the active segment.
    active_records: u64,
    /// Bytes in every segment.
    total_bytes: u64,
    /// After a failed write: the length the active segment must be cut back
    /// to before anything else is appended to it (kept while cutting fails).
    cut_to: Option<u64>,
    /// The segment retention last stopped at for its room records (told
    /// once).
    kept_for_rooms: Option<u64>,
    /// The segment the last whole checkpoint of the rooms starts in (at the
    /// latest): the room records before it are no longer needed.
    checkpoint_base: Option<u64>,
    /// The next segment's file, made ahead ([`Log::give_spare`]).
    spare: Option<File>,
}

/// A write that failed: the file, what was being done, and the error.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub op: &'static str,
    pub source: io::Error,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.op, self.source)
    }
}

impl Log {
    /// Opens (creating if needed) the history in `dir`: locks it, scans
    /// every segment (HISTORY.md, "Recovery", says what counts as a torn
    /// tail), cuts a torn tail, refuses corruption unless
    /// `options.repair`, and applies retention. Each record kept is handed
    /// to `recovered` as the scan reads it, oldest first (those retention
    /// then deletes too): what to keep of them is the caller's business.
    /// A last segment in format version 1 is left as it is and new records
    /// go to a new segment ([`Notice::NewFormat`]): formats never share a
    /// segment.
    pub fn open(
        dir: &Path,
        options: Options,
        mut recovered: impl FnMut(RecordView<'_>),
    ) -> Result<Opened, StoreError> {
        // A file in the way would read as "create directory: File exists".
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::io(dir, "open as a directory")(io::Error::new(
                io::ErrorKind::NotADirectory,
                "it is a file, not a directory",
            )));
        }
        fs::create_dir_all(dir).map_err(StoreError::io(dir, "create directory"))?;
        let lock = lock(dir)?;
        let mut notices: Vec<Notice> = drop_spare(dir)?.into_iter().collect();
        let Listing {
            segments: found,
            foreign,
        } = list_segments(dir)?;
        notices.extend(foreign.into_iter().map(|path| Notice::Foreign { path }));
        let mut scanned = Vec::with_capacity(found.len());
        let mut records = 0;
        // Where the last whole checkpoint of the rooms began.
        let (mut begun, mut checkpoint_base) = (None, None);
        for (i, (base, path)) in found.iter().enumerate() {
            let next_base = found.get(i + 1).map(|(next, _)| *next);
            // The segment before the last is synced by the sync thread just
            // after the last one starts: a power failure in that moment can
            // tear it as it can the last.
            let may_tear = i + 2 >= found.len();
            let mut recovered = |record: RecordView<'_>| {
                match RoomRecord::read(&record) {
                    Some(RoomRecord::Checkpoint { end: false }) => begun = Some(*base),
                    Some(RoomRecord::Checkpoint { end: true }) => {
                        checkpoint_base = begun.take().or(checkpoint_base);
                    }
                    _ => {}
                }
                recovered(record);
            };
            let scan = scan_segment(path, *base, next_base, may_tear, &options, &mut recovered)?;
            notices.extend(scan.notice);
            records += scan.records;
            scanned.push((
                Segment {
                    base: *base,
                    path: path.clone(),
                    len: scan.len,
                    rooms: scan.rooms,
                },
                scan.records,
                scan.format,
            ));
        }
        let mut created = false;
        let (mut active, active_records, active_format) = match scanned.pop() {
            Some(last) => last,
            None => {
                created = true;
                let path = dir.join(segment_name(0));
                let segment = Segment {
                    base: 0,
                    path,
                    len: 0,
                    rooms: false,
                };
                (segment, 0, Format::V4)
            }
        };
        let mut active_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active.path)
            .map_err(StoreError::io(&active.path, "open for appending"))?;
        // A segment of an earlier version holding only its magic becomes a
        // version 4 one; holding records, it is rolled past below.
        if active_format != Format::V4 && active_records == 0 {
            active_file
                .set_len(0)
                .map_err(StoreError::io(&active.path, "truncate"))?;
            active.len = 0;
        }
        if active.len == 0 {
            active_file
                .write_all(&SEGMENT_MAGIC)
                .map_err(StoreError::io(&active.path, "write segment header"))?;
            active.len = SEGMENT_MAGIC.len() as u64;
        }
        if created {
            sync_directory(dir).map_err(StoreError::io(dir, "sync directory"))?;
        }
        reserve_blocks(&active_file, active.len, options.segment_bytes);
        let sealed: VecDeque<Segment> = scanned.into_iter().map(|(s, ..)| s).collect();
        let total_bytes = sealed.iter().map(|s| s.len).sum::<u64>() + active.len;
        let active_file = Arc::new(SegmentFile {
            path: active.path.clone(),
            file: active_file,
        });
        let mut log = Log {
            dir: dir.to_path_buf(),
            _lock: lock,
            options,
            sealed,
            active,
            active_file,
            sealed_unsynced: Vec::new(),
            active_records,
            total_bytes,
            cut_to: None,
            kept_for_rooms: None,
            checkpoint_base,
            spare: None,
        };
        if active_format != Format::V4 && active_records > 0 {
            // Records of two formats never share a segment. The sync
            // thread syncs the old segment and the directory as after any
            // roll, before a record of the new one counts as synced.
            let file = log.active.path.clone();
            log.roll().map_err(|e| StoreError::Io {
                path: e.path,
                op: e.op,
                source: e.source,
            })?;
            let next = log.active.path.clone();
            notices.push(Notice::NewFormat {
                file,
                version: active_format.version(),
                next,
            });
        }
        for retired in log.retain() {
            match retired {
                Ok(notice) => notices.push(notice),
                Err(e) => {
                    return Err(StoreError::Io {
                        path: e.path,
                        op: e.op,
                        source: e.source,
                    });
                }
            }
        }
        Ok(Opened {
            records,
            log,
            notices,
        })
    }

    /// Whether a segment holds room records that no checkpoint covers
    /// (older than the last checkpoint's, or any when there is none).
    pub(crate) fn needs_checkpoint(&self) -> bool {
        self.sealed
            .iter()
            .chain(std::iter::once(&self.active))
            .any(|s| s.rooms && self.checkpoint_base.is_none_or(|base| s.base < base))
    }

    /// The number the next appended record gets.
    pub fn next_record(&self) -> u64 {
        self.active.base + self.active_records
    }

    /// Bytes in every segment.
    #[cfg(feature = "testing")]
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The history directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being appended to.
    pub(crate) fn active_file(&self) -> &Arc<SegmentFile> {
        &self.active_file
    }

    /// The segments filled since the last call, oldest first. Nothing has
    /// synced them (or the directory since they were rolled past): that is
    /// the caller's job, so that appending never waits for the disk.
    pub(crate) fn take_sealed(&mut self) -> Vec<Arc<SegmentFile>> {
        std::mem::take(&mut self.sealed_unsynced)
    }

    /// Appends `batch`, whole version 4 batches as the format's
    /// `encode_record` and `Batches` write them, with one `write` per
    /// segment it touches, rolling to new
    /// segments as they fill (see `Log::take_sealed`). Nothing is synced.
    ///
    /// On an error every batch written whole stays, a partly written one
    /// is cut off (the segment ends at its last whole batch, so a reader
    /// that already saw a record never sees it vanish, and the next append
    /// follows a whole batch), and the rest is not written; the error says
    /// how many records were written.
    #[cfg(feature = "testing")]
    pub fn append(&mut self, batch: &[u8]) -> Result<(), (usize, WriteError)> {
        let (_, records) = whole_records_within(batch, batch.len());
        self.append_records(batch, records, false, false)
    }

    /// [`Log::append`] for batches the caller knows hold `records`
    /// records: when they fit in the active segment (every turn but the
    /// one that fills a segment) they are written without walking their
    /// records, a walk that otherwise costs per message. Segments roll at
    /// batch boundaries: a batch is never split.
    ///
    /// `rooms`: the batch holds a room record, so every segment it is
    /// written to is kept by retention until a checkpoint. `checkpoint`:
    /// the batch starts with a whole checkpoint of the rooms; once written,
    /// retention may take every segment before the one it starts in.
    pub(crate) fn append_records(
        &mut self,
        batch: &[u8],
        records: u64,
        rooms: bool,
        checkpoint: bool,
    ) -> Result<(), (usize, WriteError)> {
        let starts_in = self.active.base;
        self.append_run(batch, records, rooms)?;
        if checkpoint {
            self.checkpoint_base = Some(starts_in);
        }
        Ok(())
    }

    fn append_run(
        &mut self,
        batch: &[u8],
        records: u64,
        rooms: bool,
    ) -> Result<(), (usize, WriteError)> {
        debug_assert_eq!(whole_records_within(batch, batch.len()).1, records);
        if let Err(e) = self.finish_cut() {
            return Err((0, e));
        }
        let mut written = 0;
        let mut at = 0;
        while at < batch.len() {
            // The run of whole batches that fits in the active segment.
            let mut run_end = at;
            let mut run_records = 0;
            if at == 0 && self.active.len + batch.len() as u64 <= self.options.segment_bytes {
                run_end = batch.len();
                run_records = records;
            }
            while run_end < batch.len() {
                let len = unit_len(&batch[run_end..]);
                let fits =
                    self.active.len + (run_end - at + len) as u64 <= self.options.segment_bytes;
                let alone = self.active_records == 0 && run_records == 0;
                if !fits && !alone {
                    break;
                }
                run_records += batch_records(&batch[run_end..run_end + len]);
                run_end += len;
            }
            if run_records == 0 {
                self.roll().map_err(|e| (written, e))?;
                continue;
            }
            let run = &batch[at..run_end];
            self.active.rooms |= rooms;
            let (done, failed) = write_some(&self.active_file.file, run);
            // Keep the batches the write got out whole (a reader may have
            // seen them already); cut a partial one back.
            let (kept_bytes, kept_records) = match failed {
                None => (run.len(), run_records),
                Some(_) => whole_records_within(run, done),
            };
            self.active.len += kept_bytes as u64;
            self.total_bytes += kept_bytes as u64;
            self.active_records += kept_records;
            written += kept_records as usize;
            if let Some(source) = failed {
                let failure = WriteError {
                    path: self.active.path.clone(),
                    op: "write",
                    source,
                };
                self.cut_to = Some(self.active.len);
                let _ = self.finish_cut();
                return Err((written, failure));
            }
            at = run_end;
        }
        Ok(())
    }

    /// Deletes the oldest full segments while the log is over its limit:
    /// [`Log::retire`], then an unlink each, no `fsync` (the directory's
    /// next sync makes it durable; a segment deleted but still listed after
    /// a power failure is deleted again at the next open).
    pub fn retain(&mut self) -> Vec<Result<Notice, WriteError>> {
        let retired = self.retire();
        let mut done: Vec<_> = retired
            .doomed
            .into_iter()
            .filter_map(|(file, bytes)| delete_retired(file, bytes))
            .collect();
        done.extend(retired.notices.into_iter().map(Ok));
        done
    }

    /// Takes the oldest full segments out of the log while it is over its
    /// limit, for the caller to delete (an unlink can wait for the disk, so
    /// a server does it off its loop). The log counts them gone at once.
    /// Retention stops at the segment the last whole checkpoint of the
    /// rooms starts in, or, before any, at the first segment holding a
    /// room record (and says so once per segment): past it, a membership or
    /// a waiting message would be lost.
    pub(crate) fn retire(&mut self) -> Retired {
        let mut retired = Retired::default();
        while self.total_bytes > self.options.max_bytes {
            let Some(oldest) = self.sealed.front() else {
                break;
            };
            let needed = match self.checkpoint_base {
                Some(base) => oldest.base >= base,
                None => oldest.rooms,
            };
            if needed {
                if self.kept_for_rooms != Some(oldest.base) {
                    self.kept_for_rooms = Some(oldest.base);
                    retired.notices.push(Notice::KeptForRooms {
                        file: oldest.path.clone(),
                        over: self.total_bytes - self.options.max_bytes,
                    });
                }
                break;
            }
            let oldest = self.sealed.pop_front().expect("front checked");
            // A segment that cannot be deleted leaves the accounting anyway,
            // so that one stuck file does not make every batch retry it.
            self.total_bytes -= oldest.len;
            retired.doomed.push((oldest.path, oldest.len));
        }
        retired
    }

    /// The length at which a segment is closed.
    pub(crate) fn segment_bytes(&self) -> u64 {
        self.options.segment_bytes
    }

    /// Whether the active segment is half full or more: the time to have
    /// the next one made ahead.
    pub(crate) fn half_full(&self) -> bool {
        self.active.len.saturating_mul(2) >= self.options.segment_bytes
    }

    /// Whether the log holds no next segment made ahead.
    pub(crate) fn lacks_spare(&self) -> bool {
        self.spare.is_none()
    }

    /// Hands the log the next segment's file, made by [`prepare_spare`] in
    /// this log's directory: the next roll renames it into place instead
    /// of making one.
    pub(crate) fn give_spare(&mut self, file: File) {
        self.spare = Some(file);
    }

    /// Cuts the active segment back after a write that failed part way.
    fn finish_cut(&mut self) -> Result<(), WriteError> {
        let Some(len) = self.cut_to else {
            return Ok(());
        };
        self.active_file
            .file
            .set_len(len)
            .map_err(|source| WriteError {
                path: self.active.path.clone(),
                op: "truncate after a failed write",
                source,
            })?;
        self.cut_to = None;
        Ok(())
    }

    /// Seals the active segment and starts the next one. The full segment
    /// joins [`Log::take_sealed`]'s list unsynced: whoever syncs syncs it
    /// and then the directory. On an error nothing changes and no new file
    /// is left behind.
    fn roll(&mut self) -> Result<(), WriteError> {
        let base = self.next_record();
        let path = self.dir.join(segment_name(base));
        let fail = |op, source| WriteError {
            path: path.clone(),
            op,
            source,
        };
        let len = SEGMENT_MAGIC.len() as u64;
        let file = match self.spare.take() {
            // The file made ahead: its magic written and its blocks reserved
            // off this thread. Renamed, it is the new segment; if it cannot
            // be, it is made here as below.
            Some(spare) if fs::rename(self.dir.join(SPARE_FILE), &path).is_ok() => spare,
            taken => {
                if taken.is_some() {
                    // Left with its name, it would refuse every later file
                    // made ahead (`prepare_spare` never takes a name over).
                    let _ = fs::remove_file(self.dir.join(SPARE_FILE));
                }
                let file = create_segment(&path, false).map_err(|(op, e)| fail(op, e))?;
                reserve_blocks(&file, len, self.options.segment_bytes);
                file
            }
        };
        let new_file = Arc::new(SegmentFile {
            path: path.clone(),
            file,
        });
        let next = Segment {
            base,
            path,
            len,
            rooms: false,
        };
        let done = std::mem::replace(&mut self.active, next);
        self.sealed.push_back(done);
        let full = std::mem::replace(&mut self.active_file, new_file);
        self.sealed_unsynced.push(full);
        self.active_records = 0;
        self.total_bytes += len;
        Ok(())
    }
}

/// Allocates the disk blocks of a segment's unwritten part up front
/// (`fallocate` with `FALLOC_FL_KEEP_SIZE`), so that each turn's `write`
/// does not reserve them one page at a time: on ext4 that took about a
/// sixth of the `write`'s CPU in the loop's thread (BENCHMARKS.md, "Ninth
/// round"). The file's length does not change, so readers and recovery see
/// exactly what they saw before: no zero tail, no format change. A file
/// system without `fallocate`, or one short of space, is written as before
/// (a full disk then shows up as the write's error).
fn reserve_blocks(file: &File, from: u64, segment_bytes: u64) {
    use std::os::fd::AsRawFd;
    if segment_bytes <= from {
        return;
    }
    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(segment_bytes - from),
    ) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor the `File` owns and keeps
    // open for the call's duration; no memory is passed.
    let _ = unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
}

/// Makes a segment file at `path` holding only the magic; on an error no
/// file is left behind (or one that is empty or holds part of the magic: a
/// torn tail at offset 0 if it is ever the last segment at open). `new`:
/// fail if a file of that name exists, rather than take it over.
fn create_segment(path: &Path, new: bool) -> Result<File, (&'static str, io::Error)> {
    // A roll's segment: `create` rather than `create_new`, as a file of
    // this name can only be left by an earlier roll whose clean-up failed
    // too. A file made ahead: `create_new`, see `prepare_spare`.
    let mut file = OpenOptions::new()
        .create(!new)
        .create_new(new)
        .append(true)
        .open(path)
        .map_err(|e| ("create segment", e))?;
    let header = file
        .set_len(0)
        .and_then(|()| file.write_all(&SEGMENT_MAGIC));
    if let Err(e) = header {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(("write segment header", e));
    }
    Ok(file)
}

/// Makes the next segment's file ahead, as [`SPARE_FILE`] in `dir`: the
/// magic written and the blocks of a segment of `segment_bytes` reserved,
/// the work that can wait for the disk (on ext4 the allocator reads block
/// bitmaps: 13–16 ms stalls of a server's loop at a roll, BENCHMARKS.md),
/// so that a roll on the loop only renames it ([`Log::give_spare`]).
///
/// Never over a file of that name: one made ahead earlier and taken by the
/// log but not yet renamed by its roll is that roll's next segment, and
/// opening it again (then truncating it) would cut records the roll has
/// since written to it, or hand the log a second descriptor of a segment
/// already in use (found by `records_written_in_turns_by_the_writer_reopen_whole`).
pub(crate) fn prepare_spare(dir: &Path, segment_bytes: u64) -> io::Result<File> {
    let path = dir.join(SPARE_FILE);
    let file = create_segment(&path, true).map_err(|(_, e)| e)?;
    reserve_blocks(&file, SEGMENT_MAGIC.len() as u64, segment_bytes);
    Ok(file)
}

/// Deletes a next segment made ahead that no roll took (a server stopped,
/// or a crash); one holding more than its magic is told.
fn drop_spare(dir: &Path) -> Result<Option<Notice>, StoreError> {
    let path = dir.join(SPARE_FILE);
    let len = match fs::symlink_metadata(&path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, "look at the next segment")(e)),
    };
    fs::remove_file(&path).map_err(StoreError::io(&path, "delete the next segment"))?;
    let bytes = len.saturating_sub(SEGMENT_MAGIC.len() as u64);
    Ok((bytes > 0).then_some(Notice::SpareDropped { path, bytes }))
}

/// Segments [`Log::retire`] took out of the log.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    /// Each segment's file and bytes, oldest first, to delete.
    pub doomed: Vec<(PathBuf, u64)>,
    /// What retention has to say besides.
    pub notices: Vec<Notice>,
}

/// Deletes a segment retention took: what to tell of it (nothing when it
/// was gone already).
pub(crate) fn delete_retired(file: PathBuf, bytes: u64) -> Option<Result<Notice, WriteError>> {
    match fs::remove_file(&file) {
        Ok(()) => Some(Ok(Notice::Retired { file, bytes })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => Some(Err(WriteError {
            path: file,
            op: "delete old segment",
            source,
        })),
    }
}

/// Writes as much of `bytes` as the file takes: the count written, and the
/// error that stopped it short.
fn write_some(mut file: &File, bytes: &[u8]) -> (usize, Option<io::Error>) {
    let mut done = 0;
    while done < bytes.len() {
        match file.write(&bytes[done..]) {
            Ok(0) => return (done, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// The bytes of the whole batches in the first `done` bytes of `run`
/// (whole batches back to back), and the records they hold.
fn whole_records_within(run: &[u8], done: usize) -> (usize, u64) {
    let mut at = 0;
    let mut records = 0;
    while at < run.len() {
        let len = unit_len(&run[at..]);
        if at + len > done {
            break;
        }
        records += batch_records(&run[at..at + len]);
        at += len;
    }
    (at, records)
}

/// fsync on the directory: makes new and removed names durable.
pub(crate) fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the directory's lock: `flock` through std's `File::try_lock`, so
/// the kernel drops it when the process ends however it ends (no stale
/// lock after a crash), with no pid file to clean up. The holder's pid is
/// written in the file for the error message only.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StoreError::io(&path, "open lock file"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let holder = if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                format!(" (pid {pid})")
            } else {
                String::new()
            };
            return Err(StoreError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => return Err(StoreError::io(&path, "lock")(e)),
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(StoreError::io(&path, "write lock file"))?;
    Ok(file)
}

/// A history directory's entries.
pub(crate) struct Listing {
    /// Segments by base record number: regular files named as
    /// [`segment_name`] makes them.
    pub segments: Vec<(u64, PathBuf)>,
    /// Every other entry but the lock file and the next segment made ahead
    /// (foreign: left alone).
    pub foreign: Vec<PathBuf>,
}

pub(crate) fn list_segments(dir: &Path) -> Result<Listing, StoreError> {
    let mut segments = Vec::new();
    let mut foreign = Vec::new();
    let entries = fs::read_dir(dir).map_err(StoreError::io(dir, "read directory"))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io(dir, "read directory"))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            foreign.push(path);
            continue;
        };
        if name == LOCK_FILE || name == SPARE_FILE {
            continue;
        }
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        match parse_segment_name(name) {
            Some(base) if is_file => segments.push((base, path)),
            _ => foreign.push(path),
        }
    }
    segments.sort_unstable_by_key(|(base, _)| *base);
    foreign.sort();
    Ok(Listing { segments, foreign })
}

struct Scan {
    /// Bytes kept.
    len: u64,
    records: u64,
    /// The format its magic names (version 4 for a segment with none).
    format: Format,
    notice: Option<Notice>,
    /// It holds a room record.
    rooms: bool,
}

/// Reads one segment through, cutting a torn tail (where `may_tear`: the
/// last two segments) or, with repair, corruption; hands each record kept
/// to `recovered`.
fn scan_segment(
    path: &Path,
    base: u64,
    next_base: Option<u64>,
    may_tear: bool,
    options: &Options,
    recovered: &mut impl FnMut(RecordView<'_>),
) -> Result<Scan, StoreError> {
    let file = File::open(path).map_err(StoreError::io(path, "open"))?;
    let end = file.metadata().map_err(StoreError::io(path, "stat"))?.len();
    let room = next_base.map(|next| next - base);
    let mut cursor = Cursor::new();
    let mut records = 0;
    let mut rooms = false;
    let mut checked_unit = None;
    let (cut_at, notice) = loop {
        let step = cursor
            .next(&file, end, may_tear)
            .map_err(StoreError::io(path, "read"))?;
        match step {
            Step::Record { record, unit, .. } => {
                // Checked at a unit's first record, for all of it: a cut
                // (with repair) drops the whole batch, none of whose
                // records has been handed over yet.
                let first = checked_unit != Some(unit.offset);
                checked_unit = Some(unit.offset);
                if first && room.is_some_and(|room| records + unit.records > room) {
                    let damage = Damage::Overlap {
                        next_base: base + room.unwrap_or(records),
                    };
                    break corruption(path, unit.offset, end, damage, options)?;
                }
                records += 1;
                rooms |= record.dest == ROOM_RECORD_DEST;
                recovered(record);
            }
            Step::End => break (None, None),
            Step::TornTail { offset, len } => {
                let notice = Notice::TornTail {
                    file: path.to_path_buf(),
                    offset,
                    dropped: len,
                };
                break (Some(offset), Some(notice));
            }
            Step::Corrupt { offset, damage } => {
                break corruption(path, offset, end, damage, options)?;
            }
        }
    };
    let len = match cut_at {
        Some(offset) => {
            let cut = OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(offset).and_then(|()| f.sync_all()));
            cut.map_err(StoreError::io(path, "truncate"))?;
            offset
        }
        None => end,
    };
    // A segment cut back to nothing gets the magic written now.
    let format = if len == 0 {
        Format::V4
    } else {
        cursor.format()
    };
    Ok(Scan {
        len,
        records,
        format,
        notice,
        rooms,
    })
}

/// Corruption at `offset`: an error, or with repair the place to cut.
fn corruption(
    path: &Path,
    offset: u64,
    end: u64,
    damage: Damage,
    options: &Options,
) -> Result<(Option<u64>, Option<Notice>), StoreError> {
    if !options.repair {
        return Err(StoreError::Corrupt {
            file: path.to_path_buf(),
            offset,
            damage,
        });
    }
    let notice = Notice::Repaired {
        file: path.to_path_buf(),
        offset,
        dropped: end - offset,
        damage,
    };
    Ok((Some(offset), Some(notice)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file made ahead that the log holds and its roll has not renamed
    /// yet is never opened again for the next one: a second is refused
    /// while the first has the name, and the first keeps what was written.
    #[test]
    fn no_next_segment_is_made_over_one_not_yet_renamed() {
        let dir = std::env::temp_dir().join(format!("evchat-spare-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut first = prepare_spare(&dir, 1 << 20).unwrap();
        first.write_all(b"records").unwrap();
        let again = prepare_spare(&dir, 1 << 20).map(|_| ());
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        let mut held = SEGMENT_MAGIC.to_vec();
        held.extend_from_slice(b"records");
        assert_eq!(fs::read(dir.join(SPARE_FILE)).unwrap(), held);
        // Renamed by its roll, the name is free for the next.
        fs::rename(dir.join(SPARE_FILE), dir.join("taken")).unwrap();
        drop(prepare_spare(&dir, 1 << 20).unwrap());
        assert_eq!(fs::read(dir.join("taken")).unwrap(), held);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_write_cut_short_keeps_only_the_records_it_got_out_whole() {
        let mut run = Vec::new();
        for text in [&b"one"[..], b"two", b"three"] {
            let record = crate::store::format::Record {
                time_ms: 1,
                origin: 1,
                dest: 0,
                roles: 0,
                name: String::new(),
                text: text.to_vec(),
            };
            crate::store::format::encode_record(&mut run, record.view());
        }
        // One batch a record: 16 bytes of batch header, 10 of record head.
        let first = 16 + 10 + 3;
        let second = first + 16 + 10 + 3;
        assert_eq!(whole_records_within(&run, 0), (0, 0));
        assert_eq!(whole_records_within(&run, first - 1), (0, 0));
        assert_eq!(whole_records_within(&run, first), (first, 1));
        assert_eq!(whole_records_within(&run, second + 5), (second, 2));
        assert_eq!(whole_records_within(&run, run.len()), (run.len(), 3));
    }

    #[test]
    fn segments_are_an_eighth_of_the_history_within_256_kib_and_64_mib() {
        assert_eq!(Options::new(0).segment_bytes, 256 * 1024);
        assert_eq!(Options::new(8 * 1024 * 1024).segment_bytes, 1024 * 1024);
        assert_eq!(Options::new(u64::MAX).segment_bytes, 64 * 1024 * 1024);
    }
}
