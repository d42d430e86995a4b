//! The tarpit: refused sign-ins are answered only after a delay, as login
//! programs and sshd do, so that a client guessing one connection after
//! another gets one guess a delay however fast it can send, and the server
//! spends nothing on it meanwhile. Pure logic: the caller passes the time
//! and says what it holds (a connection and the answer it is owed).
//!
//! Memory is bounded: at most `cap` answers are held; one more is to be
//! answered at once (a flood of hellos from connections closed right away
//! gets the undelayed answer, never unbounded memory).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Answers held until they are due, in the order they were held (one
/// delay for all, so the earliest held is the earliest due).
#[derive(Debug)]
pub struct Tarpit<T> {
    delay: Duration,
    cap: usize,
    held: VecDeque<(Instant, T)>,
}

impl<T> Tarpit<T> {
    /// Holds answers for `delay`, at most `cap` of them at once.
    pub fn new(delay: Duration, cap: usize) -> Tarpit<T> {
        Tarpit {
            delay,
            cap,
            held: VecDeque::new(),
        }
    }

    /// Holds `answer` until `now` + the delay; gives it back to be sent at
    /// once when there is no delay or `cap` answers are held already.
    pub fn hold(&mut self, now: Instant, answer: T) -> Option<T> {
        if self.delay.is_zero() || self.held.len() >= self.cap {
            return Some(answer);
        }
        self.held.push_back((now + self.delay, answer));
        None
    }

    /// When the earliest held answer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(due, _)| *due)
    }

    /// The answers due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || {
            if self.held.front()?.0 > now {
                return None;
            }
            self.held.pop_front().map(|(_, answer)| answer)
        })
    }

    /// Answers held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn an_answer_is_due_after_the_delay_not_before() {
        let t0 = Instant::now();
        let mut tarpit = Tarpit::new(SECOND, 8);
        assert_eq!(tarpit.hold(t0, "a"), None);
        assert_eq!(tarpit.hold(t0 + SECOND / 2, "b"), None);
        assert_eq!(tarpit.next_due(), Some(t0 + SECOND));
        assert_eq!(tarpit.take_due(t0 + SECOND / 2).count(), 0);
        assert_eq!(tarpit.take_due(t0 + SECOND).collect::<Vec<_>>(), ["a"]);
        assert_eq!(tarpit.next_due(), Some(t0 + SECOND * 3 / 2));
        assert_eq!(tarpit.take_due(t0 + SECOND * 2).collect::<Vec<_>>(), ["b"]);
        assert!(tarpit.is_empty());
        assert_eq!(tarpit.next_due(), None);
    }

    #[test]
    fn no_delay_answers_at_once() {
        let mut tarpit = Tarpit::new(Duration::ZERO, 8);
        assert_eq!(tarpit.hold(Instant::now(), 7), Some(7));
        assert!(tarpit.is_empty());
    }

    #[test]
    fn past_the_cap_answers_at_once_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut tarpit = Tarpit::new(SECOND, 3);
        for n in 0..3 {
            assert_eq!(tarpit.hold(t0, n), None);
        }
        assert_eq!(tarpit.hold(t0, 3), Some(3));
        assert_eq!(tarpit.len(), 3);
        assert_eq!(tarpit.take_due(t0 + SECOND).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
