//! The durable message history: an append-only log of the messages the
//! server accepted, in a directory of checksummed segment files (the format
//! is drawn in HISTORY.md and lives in [`format`]).
//!
//! - `Log::open` takes the directory's lock, scans every segment, cuts a
//!   torn tail, refuses (or, asked to, repairs) corruption, hands each
//!   record it keeps to the caller (a server picks its replay from them),
//!   and says what it found.
//! - `Writer` writes the log from the event loop, to the kernel: one
//!   `write` per turn, and one more for each segment the turn's records
//!   fill. It syncs the log on a thread of its own (per [`Fsync`]), saying
//!   which records are settled. Disk errors turn history off until a write
//!   succeeds again; they never stop the loop. The file work that can wait
//!   for the disk (the next segment's file, deleting retired ones) is done
//!   by a housekeeping thread.
//! - [`Reader`] reads a log without the lock, safely while a server appends
//!   to it, and can follow it.
//!
//! Nothing here touches sockets or the protocol's rules.

// The log, the writer and the format are the server's business (and,
// through `crate::testing`, the tests'); a reader is all a tool needs.
pub(crate) mod format;
mod housekeeper;
pub(crate) mod log;
mod reader;
pub mod rooms;
pub(crate) mod writer;

pub use format::Damage;
pub(crate) use log::{LOCK_FILE, Log, Notice, Options};
pub use reader::{Entry, Item, Reader};
pub use writer::Fsync;
pub(crate) use writer::{Ticket, Writer};

use std::io;
use std::path::PathBuf;

/// Why a history directory cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{dir}: history directory in use by another server{holder} (lock file {LOCK_FILE})")]
    Locked { dir: PathBuf, holder: String },
    #[error(
        "{file}: corrupt at offset {offset}: {damage} (--history-repair cuts the segment there)"
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        damage: format::Damage,
    },
}

impl StoreError {
    fn io(path: impl Into<PathBuf>, op: &'static str) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, op, source }
    }
}
