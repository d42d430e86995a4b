//! Writing the log from the event loop, and syncing it on a thread of its
//! own: the design of Redis's AOF (write before replying, `fsync` in the
//! background).
//!
//! The loop [`Writer::append`]s each accepted message to a buffer (no system
//! call) and, at the end of its turn, [`Writer::write`]s the turn's records
//! to the log with one `write`, and one more for each segment they fill:
//! into the kernel's page cache, which a crash of the process does not
//! lose. Under [`Fsync::EverySec`] and [`Fsync::No`] that settles them at
//! once, so the replies waiting for them go out in the same turn.
//!
//! The sync thread only calls `fsync`, never `write`, and the loop never
//! waits for it. Under [`Fsync::Always`] it syncs after every turn that
//! wrote (group commit: one `fsync` covers every record written before it
//! began), then publishes how far records are settled and calls `notify` (a
//! server wakes its loop, where the replies wait). Under `everysec` it syncs
//! once a second if anything was written; under `no` never, except full
//! segments and at a clean close. A full segment is synced, then the
//! directory (for the next segment's name), by the thread as soon as the
//! loop rolls past it; under `always` no later record counts as synced
//! before both are.
//!
//! A write error (a full disk, `EFBIG`, an I/O error) loses the records of
//! that write (a record cut short is cut back off, see [`Log::append`]),
//! turns history off with one clear log line, and settles them anyway, so
//! that replies waiting for them are never held for ever. Each later turn
//! tries again; history comes back on, with a log line saying how many
//! records were not kept, as soon as a write succeeds. A failed `fsync` is
//! logged the same way by the thread (what it covered may not be on disk)
//! and settles what it covered too.
//!
//! A process that may hit the file-size limit (`RLIMIT_FSIZE`) must ignore
//! `SIGXFSZ`, whose default action ends the process; with it ignored the
//! write fails with `EFBIG` and is handled like a full disk.

use super::format::{Batches, RecordView, keepable_name};
use super::housekeeper::Housekeeper;
use super::log::{Log, SegmentFile, WriteError, sync_directory};
use super::rooms::{ROOM_RECORD_DEST, RoomRecord};
use crate::proto::MAX_TEXT_LEN;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{error, info};

/// The longest `everysec` lets written records wait for an `fsync`.
const EVERYSEC: Duration = Duration::from_secs(1);
/// The batch buffer kept from one turn to the next; the buffer of a larger
/// turn (a burst of long messages) is freed once written.
const BATCH_KEEP_BYTES: usize = 1_048_576; // 1 MiB

/// When records are synced to disk (the choices of Redis's `appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every turn that wrote, before its records are settled.
    Always,
    /// At most a second after a record is written.
    EverySec,
    /// Never by the writer: the operating system decides. Full segments
    /// and a clean close are still synced.
    No,
}

impl FromStr for Fsync {
    type Err = String;

    fn from_str(text: &str) -> Result<Fsync, String> {
        match text {
            "always" => Ok(Fsync::Always),
            "everysec" => Ok(Fsync::EverySec),
            "no" => Ok(Fsync::No),
            _ => Err(format!("'{text}' is not one of always, everysec, no")),
        }
    }
}

impl fmt::Display for Fsync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fsync::Always => "always",
            Fsync::EverySec => "everysec",
            Fsync::No => "no",
        })
    }
}

/// A record's place in the order of [`Writer::append`] calls, from 0. It is
/// settled once [`Writer::settled`] is above it.
pub type Ticket = u64;

/// The log, written by its owner's thread (the event loop), and the thread
/// that syncs it.
pub struct Writer {
    log: Log,
    mode: Fsync,
    /// Records appended since the last write, encoded in batches.
    batch: Batches,
    /// The batch holds a room record (its segments are kept by retention).
    batch_rooms: bool,
    /// The batch starts with a checkpoint of the rooms.
    batch_checkpoint: bool,
    /// A segment filled since [`Writer::take_rolled`] last looked.
    rolled: bool,
    next_ticket: Ticket,
    /// Tickets below this are written to the kernel, or given up on.
    written: Ticket,
    /// History is off: the last write failed.
    failing: bool,
    /// Records lost since history went off.
    not_kept: u64,
    /// Message records appended, and their text bytes, up to the last
    /// write (see [`Writer::appended`]).
    appended_before: (u64, u64),
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Makes segment files ahead and deletes retired ones, off this thread;
    /// closed after the last write, before the log (and its lock) goes.
    housekeeper: Housekeeper,
    /// The next segment's file is asked for (since the last roll). It is
    /// asked for once the active segment is half full, so that a log
    /// written slowly does not hold a second segment's blocks for long.
    spare_asked: bool,
}

struct Shared {
    state: Mutex<ToSync>,
    wake: Condvar,
    /// Under [`Fsync::Always`]: every ticket below this is synced, or given
    /// up on.
    synced: AtomicU64,
    /// How many full segments, then active segments, the thread has synced
    /// (tried to): what the tests see of each mode's promise.
    sealed_syncs: AtomicU64,
    active_syncs: AtomicU64,
    /// Sync rounds done and the time they took, in nanoseconds (the
    /// server's metrics).
    sync_rounds: AtomicU64,
    sync_nanos: AtomicU64,
}

/// What the sync thread has to cover, as of the loop's last write.
struct ToSync {
    /// Tickets below this are written (or given up on).
    written: Ticket,
    /// Full segments not yet synced, oldest first; the directory is synced
    /// after them.
    sealed: Vec<Arc<SegmentFile>>,
    /// The segment being written.
    active: Arc<SegmentFile>,
    closing: bool,
}

impl Writer {
    /// Starts the sync thread for `log`. `notify` is called on that thread
    /// each time [`Writer::settled`] moves under [`Fsync::Always`] (a server
    /// passes its poll's waker: its replies wait for that).
    pub fn start(
        log: Log,
        mode: Fsync,
        notify: Option<Box<dyn Fn() + Send>>,
    ) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared::new(log.active_file().clone()));
        let housekeeper = Housekeeper::start(log.dir().to_path_buf(), log.segment_bytes())?;
        let thread = {
            let shared = shared.clone();
            let dir = log.dir().to_path_buf();
            std::thread::Builder::new()
                .name("history-sync".into())
                .spawn(move || {
                    SyncThread {
                        dir,
                        mode,
                        shared,
                        notify,
                        failing: false,
                        synced_written: 0,
                        last_sync: Instant::now(),
                    }
                    .run()
                })?
        };
        Ok(Writer {
            log,
            mode,
            batch: Batches::new(),
            batch_rooms: false,
            batch_checkpoint: false,
            rolled: false,
            next_ticket: 0,
            written: 0,
            failing: false,
            not_kept: 0,
            appended_before: (0, 0),
            shared,
            thread: Some(thread),
            housekeeper,
            spare_asked: false,
        })
    }

    /// Adds a record to this turn's batch. A text longer than
    /// [`MAX_TEXT_LEN`] (no MSG carries one) is cut to that length; a name
    /// the format cannot keep (no session has one) is kept as none.
    // Inlined into the server's one caller: a call per message, with the
    // record spilled to the stack for it, cost more than the body.
    #[inline(always)]
    pub fn append(&mut self, record: &RecordView<'_>) -> Ticket {
        debug_assert_ne!(
            record.dest, ROOM_RECORD_DEST,
            "a message record to 65535 would read as a room record"
        );
        if record.text.len() <= MAX_TEXT_LEN && keepable_name(record.name) {
            self.batch.push_kept(record);
        } else {
            debug_assert!(
                keepable_name(record.name),
                "a session name the log cannot keep"
            );
            let text = &record.text[..record.text.len().min(MAX_TEXT_LEN)];
            let name = if keepable_name(record.name) {
                record.name
            } else {
                ""
            };
            let kept = RecordView {
                text,
                name,
                ..*record
            };
            self.batch.push_kept(&kept);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Adds a room record (rooms, memberships, waiting messages) stamped
    /// `time_ms` to this turn's batch.
    pub fn append_room(&mut self, time_ms: u64, record: &RoomRecord<'_>) -> Ticket {
        if *record == (RoomRecord::Checkpoint { end: false }) {
            debug_assert!(self.batch.is_empty(), "a checkpoint starts its batch");
            self.batch_checkpoint = self.batch.is_empty();
        }
        self.batch.push_room(time_ms, record);
        self.batch_rooms = true;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Writes the records appended since the last call to the log (to the
    /// kernel, not synced), then tells the sync thread. Never waits for the
    /// thread; the lock it takes is only ever held for a few assignments.
    pub fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if self.log.lacks_spare()
            && let Some(spare) = self.housekeeper.take_spare()
        {
            self.log.give_spare(spare);
        }
        let records = self.batch.records();
        // The turn's batches' lengths and checksums, one CRC32C a batch.
        let bytes = self.batch.seal();
        match self
            .log
            .append_records(bytes, records, self.batch_rooms, self.batch_checkpoint)
        {
            Ok(()) => self.back_on(),
            Err((written, e)) => self.off(&e, records - written as u64),
        }
        // Retention's accounting here; its unlinks on the housekeeper.
        self.housekeeper.retire(self.log.retire());
        self.appended_before = self.appended();
        self.batch.clear(BATCH_KEEP_BYTES);
        self.batch_rooms = false;
        self.batch_checkpoint = false;
        self.written = self.next_ticket;
        let sealed = self.log.take_sealed();
        let rolled = !sealed.is_empty();
        self.rolled |= rolled;
        if rolled {
            self.spare_asked = false;
        }
        if !self.spare_asked && self.log.lacks_spare() && self.log.half_full() {
            self.spare_asked = true;
            self.housekeeper.want_spare();
        }
        let mut state = self.shared.lock();
        state.written = self.written;
        if rolled {
            state.sealed.extend(sealed);
            state.active = self.log.active_file().clone();
        }
        drop(state);
        // `everysec` needs no wake-up: the thread looks once a second.
        if rolled || self.mode == Fsync::Always {
            self.shared.wake.notify_one();
        }
    }

    /// The message records appended so far (room records not counted),
    /// and the bytes of their texts: the server's metrics, counted once a
    /// write from the batch rather than once a message.
    pub fn appended(&self) -> (u64, u64) {
        let (messages, text) = self.batch.messages();
        (
            self.appended_before.0 + messages,
            self.appended_before.1 + text,
        )
    }

    /// Whether a segment filled since [`Writer::take_rolled`] last looked.
    #[inline]
    pub fn rolled(&self) -> bool {
        self.rolled
    }

    /// Whether a segment filled since the last call: the server then
    /// writes a checkpoint of the rooms, so that retention can take the
    /// segments before it.
    pub fn take_rolled(&mut self) -> bool {
        std::mem::take(&mut self.rolled)
    }

    /// Whether the log holds room records that no checkpoint covers.
    pub fn needs_checkpoint(&self) -> bool {
        self.log.needs_checkpoint()
    }

    /// Every ticket below this is settled: written, and synced under
    /// [`Fsync::Always`]; or given up on.
    pub fn settled(&self) -> Ticket {
        match self.mode {
            Fsync::Always => self.shared.synced.load(Ordering::Acquire),
            Fsync::EverySec | Fsync::No => self.written,
        }
    }

    /// False while history is off because writes fail.
    #[cfg(feature = "testing")]
    pub fn is_keeping(&self) -> bool {
        !self.failing
    }

    /// Whether a next segment's file made ahead is ready for the next
    /// write to take (the housekeeper's).
    #[cfg(feature = "testing")]
    pub fn spare_ready(&self) -> bool {
        self.housekeeper.spare_ready()
    }

    /// How many full segments and how many active segments the sync
    /// thread has synced so far.
    #[cfg(feature = "testing")]
    pub fn syncs(&self) -> (u64, u64) {
        // The active count is added first: whoever sees a full segment's
        // sync sees the active sync of the same round too.
        let sealed = self.shared.sealed_syncs.load(Ordering::Acquire);
        (sealed, self.shared.active_syncs.load(Ordering::Acquire))
    }

    /// How many sync rounds (`fsync` of what was written) the thread has
    /// done, and the time they took.
    pub fn sync_totals(&self) -> (u64, Duration) {
        let nanos = self.shared.sync_nanos.load(Ordering::Relaxed);
        let rounds = self.shared.sync_rounds.load(Ordering::Relaxed);
        (rounds, Duration::from_nanos(nanos))
    }

    /// The capacity of the batch buffer kept between turns.
    #[cfg(feature = "testing")]
    pub fn batch_capacity(&self) -> usize {
        self.batch.capacity()
    }

    fn finish(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.write();
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if thread.join().is_err() {
            error!("the history sync thread panicked");
        }
        self.housekeeper.close();
    }

    fn off(&mut self, error: &WriteError, lost: u64) {
        self.not_kept += lost;
        if !self.failing {
            self.failing = true;
            error!(
                "history off: {error}; messages are still relayed but not kept \
                 until a write succeeds again (tried again with each new message)"
            );
        }
    }

    fn back_on(&mut self) {
        if self.failing {
            self.failing = false;
            info!(
                "history back on: writing to {} succeeds again; {} messages were not kept",
                self.log.active_file().path().display(),
                std::mem::take(&mut self.not_kept)
            );
        }
    }
}

/// Dropping the writer writes what is left, lets the thread sync
/// everything, and waits for it to end; the log (and the directory's lock)
/// goes after that.
impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Shared {
    /// Nothing written or synced yet; `active` is the segment being written.
    fn new(active: Arc<SegmentFile>) -> Shared {
        Shared {
            state: Mutex::new(ToSync {
                written: 0,
                sealed: Vec::new(),
                active,
                closing: false,
            }),
            wake: Condvar::new(),
            synced: AtomicU64::new(0),
            sealed_syncs: AtomicU64::new(0),
            active_syncs: AtomicU64::new(0),
            sync_rounds: AtomicU64::new(0),
            sync_nanos: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ToSync> {
        // The state is plain values, each assigned whole; a panic elsewhere
        // cannot leave it inconsistent, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct SyncThread {
    dir: PathBuf,
    mode: Fsync,
    shared: Arc<Shared>,
    notify: Option<Box<dyn Fn() + Send>>,
    /// The last sync failed (reported once until one succeeds).
    failing: bool,
    /// The loop's `written` when the active segment was last synced.
    synced_written: Ticket,
    last_sync: Instant,
}

/// One round of the sync thread's work, taken from [`ToSync`].
struct Round {
    written: Ticket,
    sealed: Vec<Arc<SegmentFile>>,
    /// The active segment, when it is to be synced this round.
    active: Option<Arc<SegmentFile>>,
    closing: bool,
}

impl SyncThread {
    fn run(mut self) {
        loop {
            let round = self.wait();
            let result = self.sync(&round);
            self.report(result);
            if round.active.is_some() {
                self.synced_written = round.written;
                self.last_sync = Instant::now();
                if self.mode == Fsync::Always || round.closing {
                    self.shared.synced.store(round.written, Ordering::Release);
                    if let Some(notify) = &self.notify {
                        notify();
                    }
                }
            }
            if round.closing {
                return;
            }
        }
    }

    /// Waits until there is something to sync (or closing), and takes it.
    fn wait(&self) -> Round {
        let mut state = self.shared.lock();
        loop {
            let unsynced = state.written != self.synced_written;
            let active_due = state.closing
                || unsynced
                    && match self.mode {
                        Fsync::Always => true,
                        Fsync::EverySec => self.last_sync.elapsed() >= EVERYSEC,
                        Fsync::No => false,
                    };
            if active_due || !state.sealed.is_empty() {
                return Round {
                    written: state.written,
                    sealed: std::mem::take(&mut state.sealed),
                    active: active_due.then(|| state.active.clone()),
                    closing: state.closing,
                };
            }
            state = if self.mode == Fsync::EverySec {
                // Also when nothing is written yet: the loop does not wake
                // this thread under `everysec`.
                let left = EVERYSEC.saturating_sub(self.last_sync.elapsed());
                let wait = if unsynced { left } else { EVERYSEC };
                self.shared
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            } else {
                self.shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner())
            };
        }
    }

    /// Syncs the full segments, the directory after them, then the active
    /// segment; the first error, after trying them all.
    fn sync(&self, round: &Round) -> Result<(), WriteError> {
        let start = Instant::now();
        let mut result = Ok(());
        for segment in &round.sealed {
            result = result.and(segment.sync());
        }
        if !round.sealed.is_empty() {
            let dir = sync_directory(&self.dir).map_err(|source| WriteError {
                path: self.dir.clone(),
                op: "sync directory",
                source,
            });
            result = result.and(dir);
        }
        if let Some(active) = &round.active {
            result = result.and(active.sync());
        }
        let shared = &self.shared;
        shared
            .active_syncs
            .fetch_add(u64::from(round.active.is_some()), Ordering::Release);
        let sealed = round.sealed.len() as u64;
        shared.sealed_syncs.fetch_add(sealed, Ordering::Release);
        let nanos = start.elapsed().as_nanos() as u64;
        shared.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
        shared.sync_rounds.fetch_add(1, Ordering::Relaxed);
        result
    }

    fn report(&mut self, result: Result<(), WriteError>) {
        match result {
            Err(e) if !self.failing => {
                self.failing = true;
                error!(
                    "history: {e}; what was written since the last sync may not be on disk \
                     (messages are still relayed; an OK waiting for the sync is sent anyway, \
                     promising delivery only); tried again at each sync"
                );
            }
            Ok(()) if self.failing => {
                self.failing = false;
                info!("history: syncing succeeds again");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::captured_log::capture;

    /// A failed sync is said once, however often it fails; the first sync
    /// that succeeds after it says so, once.
    #[test]
    fn a_failing_sync_is_reported_once_and_its_recovery_once() {
        let dir = std::env::temp_dir();
        let log = Log::open(
            &dir.join(format!("evchat-writer-report-{}", std::process::id())),
            super::super::Options::new(1 << 20),
            |_| {},
        )
        .unwrap()
        .log;
        let mut thread = SyncThread {
            dir: log.dir().to_path_buf(),
            mode: Fsync::Always,
            shared: Arc::new(Shared::new(log.active_file().clone())),
            notify: None,
            failing: false,
            synced_written: 0,
            last_sync: Instant::now(),
        };
        let failure = || {
            Err(WriteError {
                path: "seg.log".into(),
                op: "sync",
                source: std::io::Error::from_raw_os_error(libc::EIO),
            })
        };
        let ((), log_text) = capture(|| {
            thread.report(Ok(()));
            thread.report(failure());
            thread.report(failure());
            thread.report(Ok(()));
            thread.report(Ok(()));
        });
        let lines: Vec<String> = log_text.text().lines().map(String::from).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].starts_with("ERROR evchat::store::writer: history: seg.log: sync: ")
                && lines[0].contains("may not be on disk"),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1],
            " INFO evchat::store::writer: history: syncing succeeds again"
        );
        assert!(!thread.failing);
        let dir = log.dir().to_path_buf();
        drop(log);
        let _ = std::fs::remove_dir_all(dir);
    }
}
