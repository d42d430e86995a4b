//! The writer thread, so that the event loop never waits on the disk.
//!
//! The loop [`Writer::append`]s records to a buffer of its own (no lock, no
//! system call) and [`Writer::submit`]s that buffer once per turn: a move
//! into a slot shared with the thread. The thread takes whatever the slot
//! holds (one turn's records, or several turns' if the disk was slow),
//! writes it with one `write`, syncs per [`Fsync`] and publishes how many
//! records are settled. Under [`Fsync::Always`] that is group commit: one
//! `fsync` for everything the loop handed over since the last one.
//!
//! Settled means written to the kernel (and synced, under `always`), or
//! given up on. A write error, a full disk, or a slot already holding more
//! than [`MAX_PENDING_BYTES`] (the thread far behind) loses those records,
//! turns history off with one clear log line, and settles them anyway, so
//! that replies waiting for them are never held for ever. History comes
//! back on, with a log line saying how many records were not kept, as soon
//! as a write succeeds again.
//!
//! A process that may hit the file-size limit (`RLIMIT_FSIZE`) must ignore
//! `SIGXFSZ`, whose default action ends the process; with it ignored the
//! write fails with `EFBIG` and is handled like a full disk.

use super::format::{MAX_TEXT_LEN, encode_record};
use super::log::{Log, Notice};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Encoded records the loop may have handed over but the thread not yet
/// taken; past this the loop drops new records instead of buffering more.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// The longest `everysec` lets written records wait for an `fsync`.
const EVERYSEC: Duration = Duration::from_secs(1);

/// When records are synced to disk (the choices of Redis's `appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// After every batch the loop hands over, before the batch is settled.
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

/// The loop's end of the writer thread.
pub struct Writer {
    shared: Arc<Shared>,
    /// Records appended since the last submit.
    local: Vec<u8>,
    local_records: u64,
    next_ticket: Ticket,
    /// Set while the loop is dropping records because the thread is behind.
    behind: bool,
    dropped_behind: u64,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    /// Every ticket below this is settled.
    settled: AtomicU64,
    /// False while writes fail.
    keeping: AtomicBool,
}

struct Slot {
    batch: Vec<u8>,
    /// Tickets below this were handed over (in `batch`, or dropped).
    handed_over: Ticket,
    closing: bool,
}

impl Writer {
    /// Starts the writer thread for `log`. `notify` is called on that
    /// thread each time [`Writer::settled`] moves (a server passes its
    /// poll's waker, when it holds replies for durability).
    pub fn start(
        log: Log,
        mode: Fsync,
        notify: Option<Box<dyn Fn() + Send>>,
    ) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                batch: Vec::new(),
                handed_over: 0,
                closing: false,
            }),
            wake: Condvar::new(),
            settled: AtomicU64::new(0),
            keeping: AtomicBool::new(true),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("history-writer".into())
                .spawn(move || {
                    WriterThread {
                        log,
                        mode,
                        shared,
                        notify,
                        failing: false,
                        not_kept: 0,
                        unsynced: false,
                        last_sync: Instant::now(),
                    }
                    .run()
                })?
        };
        Ok(Writer {
            shared,
            local: Vec::new(),
            local_records: 0,
            next_ticket: 0,
            behind: false,
            dropped_behind: 0,
            thread: Some(thread),
        })
    }

    /// Adds a record to this turn's batch. A text longer than
    /// [`MAX_TEXT_LEN`] (no MSG carries one) is cut to that length.
    pub fn append(&mut self, time_ms: u64, origin: u16, dest: u16, text: &[u8]) -> Ticket {
        let text = &text[..text.len().min(MAX_TEXT_LEN)];
        encode_record(&mut self.local, time_ms, origin, dest, text);
        self.local_records += 1;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Hands this turn's records to the thread. Never waits for the disk:
    /// the lock it takes is only ever held for a swap or a copy.
    pub fn submit(&mut self) {
        if self.local_records == 0 {
            return;
        }
        let mut slot = self.shared.lock();
        if !slot.batch.is_empty() && slot.batch.len() + self.local.len() > MAX_PENDING_BYTES {
            if !self.behind {
                self.behind = true;
                warn!(
                    "history off: the writer thread is {} bytes behind; \
                     messages are still relayed but not kept until it catches up",
                    slot.batch.len()
                );
            }
            self.dropped_behind += self.local_records;
            self.local.clear();
        } else {
            if slot.batch.is_empty() {
                std::mem::swap(&mut slot.batch, &mut self.local);
            } else {
                slot.batch.extend_from_slice(&self.local);
                self.local.clear();
            }
            if self.behind {
                self.behind = false;
                info!(
                    "history back on: the writer thread caught up; {} messages were not kept",
                    std::mem::take(&mut self.dropped_behind)
                );
            }
        }
        slot.handed_over = self.next_ticket;
        self.local_records = 0;
        drop(slot);
        self.shared.wake.notify_one();
    }

    /// Every ticket below this is settled: written (synced under
    /// [`Fsync::Always`]), or given up on.
    pub fn settled(&self) -> Ticket {
        self.shared.settled.load(Ordering::Acquire)
    }

    /// False while history is off because writes fail.
    pub fn is_keeping(&self) -> bool {
        self.shared.keeping.load(Ordering::Acquire) && !self.behind
    }

    /// Hands over what is left, lets the thread write and sync it, and
    /// waits for the thread to end (which releases the directory's lock).
    pub fn close(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.submit();
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if thread.join().is_err() {
            error!("the history writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot holds plain bytes; a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is used as it is.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct WriterThread {
    log: Log,
    mode: Fsync,
    shared: Arc<Shared>,
    notify: Option<Box<dyn Fn() + Send>>,
    /// History is off: the last write or sync failed.
    failing: bool,
    /// Records lost since history went off.
    not_kept: u64,
    /// Records written since the last sync.
    unsynced: bool,
    last_sync: Instant,
}

impl WriterThread {
    fn run(mut self) {
        let mut batch = Vec::new();
        let mut settled = 0;
        loop {
            let (handed_over, closing) = self.take(&mut batch, settled);
            let wrote = !batch.is_empty();
            let mut ok = true;
            if wrote {
                ok = self.write(&batch);
                batch.clear();
            }
            if self.mode != Fsync::Always {
                // Written is settled: the once-a-second sync below must not
                // hold up the replies waiting for this batch.
                self.publish(&mut settled, handed_over);
            }
            let sync_due = match self.mode {
                Fsync::Always => true,
                Fsync::EverySec => self.last_sync.elapsed() >= EVERYSEC,
                Fsync::No => false,
            };
            if self.unsynced && (sync_due || closing) {
                ok &= self.sync();
            }
            if wrote && ok {
                self.back_on();
            }
            self.publish(&mut settled, handed_over);
            if closing {
                return;
            }
        }
    }

    /// Says every record below `handed_over` is settled, if that is news.
    fn publish(&self, settled: &mut Ticket, handed_over: Ticket) {
        if handed_over != *settled {
            *settled = handed_over;
            self.shared.settled.store(handed_over, Ordering::Release);
            if let Some(notify) = &self.notify {
                notify();
            }
        }
    }

    /// Waits for work: records handed over, records dropped by the loop
    /// (to settle), closing, or an `everysec` sync falling due. Swaps the
    /// slot's batch into `batch`.
    fn take(&self, batch: &mut Vec<u8>, settled: Ticket) -> (Ticket, bool) {
        let mut slot = self.shared.lock();
        loop {
            if !slot.batch.is_empty() || slot.handed_over != settled || slot.closing {
                break;
            }
            if self.unsynced && self.mode == Fsync::EverySec {
                let left = EVERYSEC.saturating_sub(self.last_sync.elapsed());
                if left.is_zero() {
                    break;
                }
                slot = self
                    .shared
                    .wake
                    .wait_timeout(slot, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            } else {
                slot = self
                    .shared
                    .wake
                    .wait(slot)
                    .unwrap_or_else(|e| e.into_inner());
            }
        }
        std::mem::swap(batch, &mut slot.batch);
        (slot.handed_over, slot.closing)
    }

    /// Writes a batch; false if any of it could not be written.
    fn write(&mut self, batch: &[u8]) -> bool {
        let durable_names = self.mode != Fsync::No;
        let ok = match self.log.append(batch, durable_names) {
            Ok(()) => {
                self.unsynced = true;
                true
            }
            Err((written, e)) => {
                if written > 0 {
                    self.unsynced = true;
                }
                self.off(&e.to_string(), count_records(batch) - written as u64);
                false
            }
        };
        for retired in self.log.retain() {
            match retired {
                Ok(notice @ Notice::Retired { .. }) => debug!("history: {notice}"),
                Ok(notice) => info!("history: {notice}"),
                Err(e) => warn!("history: {e}"),
            }
        }
        ok
    }

    /// Syncs what was written; false if the sync failed.
    fn sync(&mut self) -> bool {
        self.unsynced = false;
        self.last_sync = Instant::now();
        match self.log.sync() {
            Ok(()) => true,
            Err(e) => {
                // What reached the disk is unknown; nothing is counted as
                // lost, but history is reported off until a write and its
                // sync succeed.
                self.off(&e.to_string(), 0);
                false
            }
        }
    }

    fn off(&mut self, error: &str, lost: u64) {
        self.not_kept += lost;
        if !self.failing {
            self.failing = true;
            self.shared.keeping.store(false, Ordering::Release);
            error!(
                "history off: {error}; messages are still relayed but not kept \
                 until a write succeeds again (tried again with each new message)"
            );
        }
    }

    fn back_on(&mut self) {
        if self.failing {
            self.failing = false;
            self.shared.keeping.store(true, Ordering::Release);
            info!(
                "history back on: writing to {} succeeds again; {} messages were not kept",
                self.log.active_path().display(),
                std::mem::take(&mut self.not_kept)
            );
        }
    }
}

/// Records in a batch of whole encoded records.
fn count_records(batch: &[u8]) -> u64 {
    let mut at = 0;
    let mut count = 0;
    while at + 8 <= batch.len() {
        let body = u32::from_be_bytes(batch[at + 4..at + 8].try_into().unwrap());
        at += 8 + body as usize;
        count += 1;
    }
    count
}
