//! Reading a history directory without the lock: the records in order, on
//! a log no server holds or on one a server is appending to. It never
//! writes. On a live log the last segment may end in a record still being
//! written; the reader stops before it and, asked again, carries on from
//! there once it is whole (that is how `--follow` works). Segments that
//! retention deletes while they are read stay readable through the open
//! descriptor; records deleted before the reader reached them show up as an
//! [`Item::Gap`].

use super::StoreError;
use super::format::{Cursor, Record, Step};
use super::log::list_segments;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// A record with its number in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub number: u64,
    pub record: Record,
}

/// What [`Reader::next_item`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Record(Entry),
    /// Records `from..to` are not in the log any more (retention, or a
    /// repair cut them).
    Gap {
        from: u64,
        to: u64,
    },
}

/// Where reading stopped at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub file: PathBuf,
    pub offset: u64,
    /// Bytes after `offset` that are not (yet) a whole record.
    pub len: u64,
}

/// A read-only cursor over a whole history directory.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    foreign: Vec<PathBuf>,
    current: Option<Segment>,
    /// The base of the last segment read to its end.
    finished: Option<u64>,
    /// The number the next record should have.
    expected: Option<u64>,
    /// Set when the last [`Reader::next_item`] stopped before an incomplete tail.
    tail: Option<Tail>,
}

#[derive(Debug)]
struct Segment {
    base: u64,
    path: PathBuf,
    file: File,
    cursor: Cursor,
    records: u64,
    /// The file's length when last looked at.
    known_len: u64,
}

impl Reader {
    /// A reader at the start of the log in `dir`, which must exist.
    pub fn open(dir: &Path) -> Result<Reader, StoreError> {
        let foreign = list_segments(dir)?.foreign;
        Ok(Reader {
            dir: dir.to_path_buf(),
            foreign,
            current: None,
            finished: None,
            expected: None,
            tail: None,
        })
    }

    /// Entries of the directory that are not segments (ignored), as found
    /// by [`Reader::open`].
    pub fn foreign_files(&self) -> &[PathBuf] {
        &self.foreign
    }

    /// When the last [`Reader::next_item`] returned `None` because the last
    /// segment ends in bytes that are not a whole record: where they are.
    /// On a live log that is a write in progress; on a log no server holds,
    /// the remains of a crash (a server opening the log cuts them).
    pub fn incomplete_tail(&self) -> Option<&Tail> {
        self.tail.as_ref()
    }

    /// The next record, or `None` when there is none yet (call again to
    /// follow a live log). Corruption is an error naming file and offset.
    pub fn next_item(&mut self) -> Result<Option<Item>, StoreError> {
        loop {
            self.tail = None;
            if self.current.is_none() {
                match self.open_next()? {
                    Some(gap) => return Ok(Some(gap)),
                    None if self.current.is_none() => return Ok(None),
                    None => {}
                }
            }
            let segment = self.current.as_mut().expect("a segment is open");
            let step = read(segment, segment.known_len, true)?;
            if let Some(item) = self.take_record(step) {
                return Ok(Some(item));
            }
            // At the end of what was there when last looked: look again.
            let segment = self.current.as_mut().expect("a segment is open");
            let len = file_len(&segment.file, &segment.path)?;
            if len != segment.known_len {
                segment.known_len = len;
                continue;
            }
            // The end, or an incomplete tail. If a later segment exists
            // this one is complete (the writer finishes a segment before it
            // starts the next): read what was added since, then move on.
            let base = segment.base;
            if !self.later_segment_exists(base)? {
                return Ok(None);
            }
            let segment = self.current.as_mut().expect("a segment is open");
            segment.known_len = file_len(&segment.file, &segment.path)?;
            let step = read(segment, segment.known_len, false)?;
            if let Some(item) = self.take_record(step) {
                return Ok(Some(item));
            }
            let done = self.current.take().expect("a segment is open");
            self.finished = Some(done.base);
        }
    }

    /// Turns a step into a record to return; `None` at the end or an
    /// incomplete tail (noted in `self.tail`).
    fn take_record(&mut self, step: Stepped) -> Option<Item> {
        let segment = self.current.as_mut().expect("a segment is open");
        match step {
            Stepped::Record(record) => {
                let number = segment.base + segment.records;
                segment.records += 1;
                self.expected = Some(number + 1);
                Some(Item::Record(Entry { number, record }))
            }
            Stepped::End => None,
            Stepped::Torn { offset, len } => {
                self.tail = Some(Tail {
                    file: segment.path.clone(),
                    offset,
                    len,
                });
                None
            }
        }
    }

    /// Opens the first segment after the last one finished; a gap if
    /// records are missing before it.
    fn open_next(&mut self) -> Result<Option<Item>, StoreError> {
        loop {
            let segments = list_segments(&self.dir)?.segments;
            let Some((base, path)) = segments
                .into_iter()
                .find(|(base, _)| self.finished.is_none_or(|done| *base > done))
            else {
                return Ok(None);
            };
            let opened = File::open(&path).and_then(|file| {
                let len = file.metadata()?.len();
                Ok((file, len))
            });
            let (file, known_len) = match opened {
                Ok(opened) => opened,
                // Deleted by retention since the listing: list again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(&path, "open")(e)),
            };
            self.current = Some(Segment {
                base,
                path,
                file,
                cursor: Cursor::new(),
                records: 0,
                known_len,
            });
            let expected = self.expected.unwrap_or(base);
            self.expected = Some(base.max(expected));
            if base > expected {
                return Ok(Some(Item::Gap {
                    from: expected,
                    to: base,
                }));
            }
            return Ok(None);
        }
    }

    fn later_segment_exists(&self, base: u64) -> Result<bool, StoreError> {
        let segments = list_segments(&self.dir)?.segments;
        Ok(segments.iter().any(|(b, _)| *b > base))
    }
}

/// A cursor step without the borrow of the cursor's buffer.
enum Stepped {
    Record(Record),
    End,
    Torn { offset: u64, len: u64 },
}

fn read(segment: &mut Segment, end: u64, last: bool) -> Result<Stepped, StoreError> {
    let step = match segment.cursor.next(&segment.file, end, last) {
        Ok(step) => step,
        // The file became shorter than it was (a server undoing a failed
        // write, or cutting a torn tail at start): the cursor stays at
        // the last whole record and reads on once the file grows again.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            segment.known_len = segment.cursor.offset();
            return Ok(Stepped::End);
        }
        Err(e) => return Err(StoreError::io(&segment.path, "read")(e)),
    };
    Ok(match step {
        Step::Record { record, .. } => Stepped::Record(record.to_record()),
        Step::End => Stepped::End,
        Step::TornTail { offset, len } => Stepped::Torn { offset, len },
        Step::Corrupt { offset, damage } => {
            return Err(StoreError::Corrupt {
                file: segment.path.clone(),
                offset,
                damage,
            });
        }
    })
}

fn file_len(file: &File, path: &Path) -> Result<u64, StoreError> {
    Ok(file.metadata().map_err(StoreError::io(path, "stat"))?.len())
}
