//! The books a client keeps on what it sent until the server answers: the
//! requests awaiting their OK or ERRO, by sequence number, and its own
//! goodbye (FLW) until answered. The thread that reads input waits on them
//! for the threads that read replies. The emitter and `evchat chat` both
//! keep theirs here.

use super::FAREWELL_TIMEOUT;
use super::wire::FrameWriter;
use crate::proto::{ClientId, Frame, Kind, SERVER_ID};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A client's books, shared by its threads; `T` is what it keeps of each
/// request, `S` whatever else it keeps under the same lock.
pub struct Replies<T, S = ()> {
    book: Mutex<Book<T, S>>,
    /// Wakes the threads waiting in [`Replies::wait_until`] after each
    /// [`Replies::update`].
    changed: Condvar,
}

/// What the lock of [`Replies`] guards.
pub struct Book<T, S> {
    /// Requests sent whose reply has not come, by sequence number.
    pending: BTreeMap<u16, T>,
    farewell: Farewell,
    /// What else the client keeps under this lock.
    pub client: S,
}

/// Where the client's own goodbye stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    NotSent,
    /// Sent with this sequence number; no answer yet.
    Sent(u16),
    /// The server answered it, or the connection ended after it was sent.
    Answered,
}

/// What a reply settled.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled<T> {
    /// A request, now answered.
    Request(T),
    /// The client's own FLW.
    Farewell,
    /// Nothing this client is waiting for.
    Unknown,
}

impl<T, S> Book<T, S> {
    /// Notes a request sent with `seq`, before its bytes leave, so that its
    /// reply always finds it.
    pub fn expect(&mut self, seq: u16, request: T) {
        self.pending.insert(seq, request);
    }

    /// Takes the reply with `seq` (OK or ERRO alike).
    pub fn settle(&mut self, seq: u16) -> Settled<T> {
        if self.farewell == Farewell::Sent(seq) {
            self.farewell = Farewell::Answered;
            return Settled::Farewell;
        }
        match self.pending.remove(&seq) {
            Some(request) => Settled::Request(request),
            None => Settled::Unknown,
        }
    }

    /// The request awaiting the reply numbered `seq`.
    pub fn get(&self, seq: u16) -> Option<&T> {
        self.pending.get(&seq)
    }

    /// Removes a request whose bytes never left (the write failed).
    pub fn forget(&mut self, seq: u16) -> Option<T> {
        self.pending.remove(&seq)
    }

    /// Every request still pending, oldest first, leaving none: their
    /// connection is gone and no reply will come.
    pub fn take_pending(&mut self) -> Vec<T> {
        std::mem::take(&mut self.pending).into_values().collect()
    }

    /// How many requests await their reply.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn farewell(&self) -> Farewell {
        self.farewell
    }

    /// Nothing more will come after the FLW sent: counts as its answer.
    pub fn farewell_answered(&mut self) {
        self.farewell = Farewell::Answered;
    }
}

impl<T, S> Replies<T, S> {
    pub fn new(client: S) -> Replies<T, S> {
        Replies {
            book: Mutex::new(Book {
                pending: BTreeMap::new(),
                farewell: Farewell::NotSent,
                client,
            }),
            changed: Condvar::new(),
        }
    }

    /// The books, to read or to change without waking anyone.
    pub fn lock(&self) -> MutexGuard<'_, Book<T, S>> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the books and wakes every thread waiting on them.
    pub fn update<R>(&self, change: impl FnOnce(&mut Book<T, S>) -> R) -> R {
        let result = change(&mut self.lock());
        self.changed.notify_all();
        result
    }

    /// Waits until `done` holds, at most `timeout`; the books, and whether
    /// `done` held.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Book<T, S>) -> bool,
    ) -> (MutexGuard<'_, Book<T, S>>, bool) {
        let (book, waited) = self
            .changed
            .wait_timeout_while(self.lock(), timeout, |book| !done(book))
            .unwrap_or_else(|e| e.into_inner());
        let reached = !waited.timed_out() || done(&book);
        (book, reached)
    }

    /// Sends a request through `writer`, noting it (as `request`) under the
    /// number it gets before its bytes leave.
    pub fn send(
        &self,
        writer: &FrameWriter,
        build: impl FnOnce(u16) -> Frame,
        request: T,
    ) -> io::Result<u16> {
        writer.send_numbered(build, |seq| self.update(|book| book.expect(seq, request)))
    }

    /// Sends FLW from `id` through `writer`, noting its number first.
    pub fn send_farewell(&self, writer: &FrameWriter, id: ClientId) -> io::Result<()> {
        writer
            .send_numbered(
                |seq| Frame::bare(Kind::Flw, id, SERVER_ID, seq),
                |seq| self.update(|book| book.farewell = Farewell::Sent(seq)),
            )
            .map(|_| ())
    }

    /// Waits at most [`FAREWELL_TIMEOUT`] for the answer to our FLW and for
    /// `also`; whether both came.
    pub fn wait_for_farewell(&self, mut also: impl FnMut(&S) -> bool) -> bool {
        self.wait_until(FAREWELL_TIMEOUT, |book| {
            book.farewell == Farewell::Answered && also(&book.client)
        })
        .1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_reply_settles_its_own_request_once() {
        let replies: Replies<&str> = Replies::new(());
        replies.update(|book| {
            book.expect(1, "first");
            book.expect(2, "second");
        });
        assert_eq!(replies.lock().pending(), 2);
        assert_eq!(replies.update(|b| b.settle(2)), Settled::Request("second"));
        assert_eq!(replies.update(|b| b.settle(2)), Settled::Unknown);
        assert_eq!(replies.update(|b| b.settle(7)), Settled::Unknown);
        assert_eq!(replies.lock().pending(), 1);
    }

    #[test]
    fn the_reply_to_the_farewell_is_not_a_request() {
        let replies: Replies<&str> = Replies::new(());
        let mut book = replies.lock();
        book.expect(3, "message");
        assert_eq!(book.farewell(), Farewell::NotSent);
        book.farewell = Farewell::Sent(4);
        assert_eq!(book.settle(4), Settled::Farewell);
        assert_eq!(book.farewell(), Farewell::Answered);
        assert_eq!(book.pending(), 1);
    }

    #[test]
    fn a_lost_connection_takes_every_pending_request_oldest_first() {
        let replies: Replies<&str> = Replies::new(());
        let mut book = replies.lock();
        book.expect(9, "b");
        book.expect(2, "a");
        book.expect(10, "c");
        assert_eq!(book.forget(10), Some("c"));
        assert_eq!(book.take_pending(), ["a", "b"]);
        assert_eq!(book.pending(), 0);
    }

    #[test]
    fn waiting_ends_when_another_thread_settles_or_says_whether_it_timed_out() {
        let replies: Arc<Replies<(), bool>> = Arc::new(Replies::new(false));
        replies.update(|book| book.expect(1, ()));
        // Not settled, and no time to wait: not reached.
        let (book, reached) = replies.wait_until(Duration::ZERO, |book| book.pending() == 0);
        assert!(!reached && book.pending() == 1);
        drop(book);
        let settler = {
            let replies = replies.clone();
            std::thread::spawn(move || {
                replies.update(|book| {
                    book.settle(1);
                    book.client = true;
                })
            })
        };
        // Woken by the other thread's update; the deadline is only a bound.
        let (book, reached) = replies.wait_until(Duration::from_secs(60), |book| {
            book.pending() == 0 && book.client
        });
        assert!(reached && book.client);
        drop(book);
        settler.join().unwrap();
    }
}
