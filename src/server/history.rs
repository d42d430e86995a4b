//! The event loop's side of the durable history (`--history`): opening the
//! log at start, appending each MSG the router accepts, writing each turn's
//! records at the end of the turn, and telling the router which replies
//! held for durability may go. The loop owns the store; the router sees
//! only record numbers, and at open the broadcasts the log recovered with
//! their senders' names (its replay window keeps what fits). The router
//! hands over each accepted MSG's sender, whose name and roles the record
//! keeps, and each change to the rooms and waiting messages, which become
//! room records; at open, what those records left is handed back to it
//! (`room_log.rs`). Without history none of this runs.

use super::metrics::Metrics;
use super::room_log::RoomLog;
use super::{Server, Wire};
use crate::proto::{BROADCAST, FrameView};
use crate::router::{RoomEvent, Router, Sender, TellLimits};
use crate::store::format::RecordView;
use crate::store::rooms::RoomRecord;
use crate::store::{Fsync, Log, Notice, Options, StoreError, Ticket, Writer};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// How the server keeps history (the `--history` flags).
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// The log's directory.
    pub dir: PathBuf,
    /// Past broadcasts each exhibitor is sent when it identifies.
    pub replay: usize,
    pub fsync: Fsync,
    /// Retention: the log's size limit in bytes.
    pub max_bytes: u64,
    /// Cut the log at corruption instead of refusing to start.
    pub repair: bool,
    /// What may wait for one offline name (`--tell-max`,
    /// `--tell-max-bytes`).
    pub tells: TellLimits,
}

impl HistoryConfig {
    /// The history's defaults, kept in `dir`: the one place they are
    /// written (the server's flags take theirs from here).
    pub fn new(dir: PathBuf) -> HistoryConfig {
        HistoryConfig {
            dir,
            replay: 50,
            fsync: Fsync::EverySec,
            max_bytes: 1 << 30,
            repair: false,
            tells: TellLimits::default(),
        }
    }
}

/// The open history, held by the loop's [`Wire`].
///
/// An emitter's reply to a MSG waits until the MSG's record is settled: the
/// router holds it until told. The loop writes each turn's records to the
/// log itself at the end of the turn, after the turn's output (deliveries,
/// and replies already settled) went out, and before any reply that waited
/// for them (as Redis writes its AOF before it replies): under `--fsync
/// everysec` and `no` that settles them, and those replies go out in the
/// same turn; an OK'd message then survives a crash of the server process.
/// Under `always` the replies wait for the sync thread's `fsync` and go out
/// in the turn after it wakes the loop; the loop never calls `fsync` and
/// never waits for that thread. A failed write settles its records too
/// (history is off until a write succeeds, and those OKs promise delivery
/// only).
pub(super) struct History {
    writer: Writer,
    /// What the router was last told is settled.
    told_durable: Ticket,
    /// This turn's wall-clock time in ms, read for its first record: the
    /// turn's messages arrived together, and a clock read per message cost
    /// a tenth of the loop's time at 1:1 on this kind of VM.
    turn_time_ms: Option<u64>,
}

impl Server {
    /// Opens (or creates) the history in `config.dir`, logs what recovery
    /// found (a torn tail cut, a repair, foreign files, retention), and
    /// keeps every accepted MSG there from now on. Called by
    /// [`Server::bind`].
    pub(super) fn open_history(&mut self, config: &HistoryConfig) -> Result<(), StoreError> {
        let mut options = Options::new(config.max_bytes);
        options.repair = config.repair;
        self.router
            .set_replay(config.replay, replay_max_bytes(self.config.max_queue));
        self.router
            .keep_room_messages(config.replay, replay_max_bytes(self.config.max_queue));
        self.router.keep_waiting(config.tells);
        let router = &mut self.router;
        let mut rooms = RoomLog::new(config.replay);
        let opened = Log::open(&config.dir, options, |record| {
            rooms.fold(&record);
            if !record.name.is_empty() {
                router.saw_name(record.name);
            }
            if record.dest == BROADCAST {
                let sender = Sender {
                    name: (!record.name.is_empty()).then_some(record.name),
                    roles: record.roles,
                };
                router.recall_broadcast(record.origin, sender, record.text);
            }
        })?;
        rooms.recall(&mut self.router, Instant::now());
        for notice in &opened.notices {
            match notice {
                Notice::Retired { .. } | Notice::NewFormat { .. } => info!("history: {notice}"),
                Notice::KeptForRooms { .. } => warn!("history: {notice}"),
                _ => warn!("history: {notice}"),
            }
        }
        let waker = self.waker.clone();
        let notify = Box::new(move || {
            // A failed wake only delays the held replies to the next turn.
            let _ = waker.wake();
        });
        let writer = Writer::start(opened.log, config.fsync, Some(notify)).map_err(|source| {
            StoreError::Io {
                path: config.dir.clone(),
                op: "start the history sync thread",
                source,
            }
        })?;
        info!(
            dir = %config.dir.display(),
            messages = opened.records,
            fsync = %config.fsync,
            replay = config.replay,
            "history on"
        );
        self.wire.history = Some(History {
            writer,
            told_durable: 0,
            turn_time_ms: None,
        });
        Ok(())
    }
}

/// The most output a replay takes (texts and framing, as the router counts
/// it): half an exhibitor's output cap, so that a replay leaves room for
/// live traffic and never gets a new exhibitor cut off as a slow consumer.
fn replay_max_bytes(max_queue: usize) -> usize {
    max_queue / 2
}

impl History {
    /// Appends an accepted MSG from `sender`; returns the number its reply
    /// waits for.
    // Inlined into `Wire::keep`, its one caller: a call per message, with
    // six registers saved and restored, was a sixth of its cost.
    #[inline(always)]
    pub(super) fn append(&mut self, msg: &FrameView<'_>, sender: Sender<'_>) -> Ticket {
        let time_ms = self.turn_time_ms();
        self.writer.append(&RecordView {
            time_ms,
            origin: msg.origin,
            dest: msg.dest,
            roles: sender.roles,
            name: sender.name.unwrap_or_default(),
            text: msg.text().unwrap_or_default(),
        })
    }

    /// This turn's wall-clock time, read once a turn.
    // Inlined, the clock read left out of line: as a call per message it
    // cost 13 instructions a message at 1:1 for a load and a branch.
    #[inline(always)]
    fn turn_time_ms(&mut self) -> u64 {
        match self.turn_time_ms {
            Some(time_ms) => time_ms,
            None => self.read_turn_time_ms(),
        }
    }

    /// The turn's first record: reads the clock.
    #[cold]
    #[inline(never)]
    fn read_turn_time_ms(&mut self) -> u64 {
        *self.turn_time_ms.insert(wall_clock_ms())
    }

    /// Appends the room record for `event`; returns the number a reply
    /// waiting for it waits for.
    pub(super) fn append_room(&mut self, event: &RoomEvent<'_>) -> Ticket {
        let mut time_ms = self.turn_time_ms();
        let record = match *event {
            RoomEvent::Joined {
                room,
                room_name,
                queue,
                online,
                member,
            } => RoomRecord::Joined {
                room,
                room_name,
                queue,
                online,
                member,
            },
            RoomEvent::Left { room, member } => RoomRecord::Left { room, member },
            RoomEvent::Online { room, member } => RoomRecord::Online { room, member },
            RoomEvent::Offline { room, member } => RoomRecord::Offline { room, member },
            RoomEvent::Waiting {
                wait,
                origin,
                seq,
                room,
                to,
                sender,
                text,
                stored_ms,
            } => {
                time_ms = stored_ms.unwrap_or(time_ms);
                RoomRecord::Waiting {
                    wait,
                    origin,
                    seq,
                    room,
                    to,
                    sender: sender.name.unwrap_or_default(),
                    roles: sender.roles,
                    text,
                }
            }
            RoomEvent::Settled { wait } => RoomRecord::Settled { wait },
            RoomEvent::Kept {
                room,
                origin,
                sender,
                text,
            } => RoomRecord::Kept {
                room,
                origin,
                sender: sender.name.unwrap_or_default(),
                roles: sender.roles,
                text,
            },
            RoomEvent::Seen {
                room,
                member,
                count,
            } => RoomRecord::Seen {
                room,
                member,
                count,
            },
        };
        self.writer.append_room(time_ms, &record)
    }

    /// After a segment filled, when there is room state or the log holds
    /// room records no checkpoint covers: writes a checkpoint, the whole
    /// room state as `router` holds it between two CHECKPOINT records, so
    /// that retention may take every segment before it (HISTORY.md,
    /// "Rooms and waiting messages"). Written at once, ahead of the next
    /// turn's records.
    ///
    /// The loop asks [`History::rolled`] each turn and calls this only
    /// then, out of line: a turn without a roll pays one load and a branch.
    #[inline(never)]
    pub(super) fn checkpoint_after_roll(&mut self, router: &Router) {
        if !self.writer.take_rolled()
            || !(router.has_room_state() || self.writer.needs_checkpoint())
        {
            return;
        }
        let time_ms = self.turn_time_ms();
        self.writer
            .append_room(time_ms, &RoomRecord::Checkpoint { end: false });
        router.room_snapshot(&mut |event| {
            self.append_room(event);
        });
        self.writer
            .append_room(time_ms, &RoomRecord::Checkpoint { end: true });
        self.writer.write();
        // A roll the checkpoint itself made calls for no other: one larger
        // than a segment would otherwise be written again every turn.
        self.writer.take_rolled();
        self.turn_time_ms = None;
    }

    /// Whether a segment filled since the last checkpoint check.
    #[inline]
    pub(super) fn rolled(&self) -> bool {
        self.writer.rolled()
    }

    /// The sync thread's rounds so far and the time they took.
    pub(super) fn sync_totals(&self) -> (u64, Duration) {
        self.writer.sync_totals()
    }

    /// The MSGs appended so far and their text bytes.
    pub(super) fn appended(&self) -> (u64, u64) {
        self.writer.appended()
    }

    /// End of a loop turn, after its output is flushed (the replies that
    /// wait for these records are still held by the router): writes the
    /// turn's records; returns how far records are settled, when that moved.
    pub(super) fn end_turn(&mut self, metrics: &mut Metrics) -> Option<Ticket> {
        // Timed only in a turn that appended: an idle turn reads no clock.
        if self.turn_time_ms.take().is_some() {
            let start = Instant::now();
            self.writer.write();
            metrics.history_write_nanos += start.elapsed().as_nanos() as u64;
        } else {
            self.writer.write();
        }
        let settled = self.writer.settled();
        (settled > self.told_durable).then(|| {
            self.told_durable = settled;
            settled
        })
    }
}

/// Milliseconds since the Unix epoch, now.
pub(super) fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Wire {
    /// See [`crate::router::Outbox::room_event`].
    pub(super) fn keep_room_event(&mut self, event: &RoomEvent<'_>) -> Option<Ticket> {
        Some(self.history.as_mut()?.append_room(event))
    }

    /// See [`crate::router::Outbox::accepted`].
    #[inline]
    pub(super) fn keep<'s>(
        &mut self,
        msg: &FrameView<'_>,
        sender: impl FnOnce() -> Sender<'s>,
    ) -> Option<Ticket> {
        // Counted by the writer, a write at a time (`History::appended`).
        let history = self.history.as_mut()?;
        Some(history.append(msg, sender()))
    }
}
