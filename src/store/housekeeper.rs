//! The log's file work that can wait for the disk, on a thread of its own so
//! that the event loop never does: making the next segment's file ahead of
//! the roll that needs it (its magic, and its blocks reserved), and deleting
//! the segments retention retired. On ext4 both wait for the allocator's
//! block bitmaps; done on the loop, at `everysec`'s 1:1 rate they stopped it
//! for 13–16 ms two or three times a second (BENCHMARKS.md).
//!
//! The loop asks for the next segment's file once the active segment is
//! half full, and takes it with [`Housekeeper::take_spare`] (one atomic
//! load while none is ready); a roll with none ready makes its file itself,
//! as a log without a housekeeper always does. Only one file made ahead
//! exists at a time: it has one name ([`SPARE_FILE`]).

use super::log::{Notice, Retired, SPARE_FILE, delete_retired, prepare_spare};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use tracing::{debug, info, warn};

/// The thread, and what the loop shares with it.
pub(crate) struct Housekeeper {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    chores: Mutex<Chores>,
    wake: Condvar,
    /// A file made ahead waits in `chores.spare`: the loop's cheap look.
    spare_ready: AtomicBool,
}

#[derive(Default)]
struct Chores {
    /// The next segment's file, made ahead and not yet taken.
    spare: Option<File>,
    /// The loop wants a file made ahead.
    want_spare: bool,
    /// Segments to delete, oldest first.
    doomed: Vec<(PathBuf, u64)>,
    closing: bool,
}

impl Housekeeper {
    /// Starts the thread for the log in `dir`, whose segments are
    /// `segment_bytes` long.
    pub(crate) fn start(dir: PathBuf, segment_bytes: u64) -> std::io::Result<Housekeeper> {
        let shared = Arc::new(Shared {
            chores: Mutex::new(Chores::default()),
            wake: Condvar::new(),
            spare_ready: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("history-files".into())
                .spawn(move || run(&shared, &dir, segment_bytes))?
        };
        Ok(Housekeeper {
            shared,
            thread: Some(thread),
        })
    }

    /// The file made ahead, if one is ready.
    pub(crate) fn take_spare(&self) -> Option<File> {
        if !self.shared.spare_ready.load(Ordering::Acquire) {
            return None;
        }
        let mut chores = self.shared.lock();
        self.shared.spare_ready.store(false, Ordering::Release);
        // An ask made while this one was being made is answered by it: left
        // standing, it would have another made while the log holds this one.
        chores.want_spare = false;
        chores.spare.take()
    }

    /// Whether a file made ahead is ready to take.
    #[cfg(feature = "testing")]
    pub(crate) fn spare_ready(&self) -> bool {
        self.shared.spare_ready.load(Ordering::Acquire)
    }

    /// Asks for the next segment's file to be made ahead.
    pub(crate) fn want_spare(&self) {
        self.shared.lock().want_spare = true;
        self.shared.wake.notify_one();
    }

    /// Hands over what retention retired: its notices are told here, its
    /// segments deleted on the thread.
    pub(crate) fn retire(&self, retired: Retired) {
        for notice in retired.notices {
            info!("history: {notice}");
        }
        if retired.doomed.is_empty() {
            return;
        }
        self.shared.lock().doomed.extend(retired.doomed);
        self.shared.wake.notify_one();
    }
}

impl Housekeeper {
    /// Lets the thread delete what it was handed and delete a file made
    /// ahead that no roll took, and waits for it. The log's owner calls
    /// this while it still holds the directory's lock.
    pub(crate) fn close(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if thread.join().is_err() {
            warn!("the history housekeeping thread panicked");
        }
    }
}

impl Drop for Housekeeper {
    fn drop(&mut self) {
        self.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Chores> {
        // Plain values, each assigned whole: a poisoned lock is used as is.
        self.chores.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The thread: waits for chores and does them, never holding the lock
/// while it touches the disk.
fn run(shared: &Shared, dir: &std::path::Path, segment_bytes: u64) {
    loop {
        let (doomed, make_spare, closing) = {
            let mut chores = shared.lock();
            loop {
                let make = chores.want_spare && chores.spare.is_none();
                if chores.closing || make || !chores.doomed.is_empty() {
                    break;
                }
                chores = shared.wake.wait(chores).unwrap_or_else(|e| e.into_inner());
            }
            let make = chores.want_spare && chores.spare.is_none() && !chores.closing;
            if make {
                chores.want_spare = false;
            }
            (std::mem::take(&mut chores.doomed), make, chores.closing)
        };
        for (file, bytes) in doomed {
            match delete_retired(file, bytes) {
                Some(Ok(notice @ Notice::Retired { .. })) => debug!("history: {notice}"),
                Some(Ok(notice)) => info!("history: {notice}"),
                Some(Err(e)) => warn!("history: {e}"),
                None => {}
            }
        }
        if closing {
            // A file made ahead that no roll took: its name is free again
            // (one the log holds untaken goes with it; one a roll renamed
            // is a segment now, and no longer has this name).
            drop(shared.lock().spare.take());
            let _ = std::fs::remove_file(dir.join(SPARE_FILE));
            return;
        }
        if make_spare {
            match prepare_spare(dir, segment_bytes) {
                Ok(file) => {
                    let mut chores = shared.lock();
                    chores.spare = Some(file);
                    shared.spare_ready.store(true, Ordering::Release);
                }
                // The roll makes its own file, as before; another is asked
                // for after it.
                Err(e) => debug!("history: making the next segment ahead failed: {e}"),
            }
        }
    }
}
