//! The tarpit: a refused sign-in is answered no sooner than a delay after
//! its hello arrived, as login programs and sshd do, so that a client
//! guessing one connection after another gets one guess a delay however
//! fast it can send, and the server spends nothing on it meanwhile. A check
//! that took longer than the delay (a password under load) adds nothing
//! more. Pure logic: the caller passes the times and says what it holds (a
//! connection and the answer it is owed).
//!
//! Memory is bounded: at most `cap` answers are held; one more is to be
//! answered at once (a flood of hellos from connections closed right away
//! gets the undelayed answer, never unbounded memory).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Answers held until they are due.
#[derive(Debug)]
pub struct Tarpit<T> {
    delay: Duration,
    cap: usize,
    /// By (due, order held): answers due at the same instant keep their
    /// order.
    held: BTreeMap<(Instant, u64), T>,
    next_order: u64,
}

impl<T> Tarpit<T> {
    /// Holds answers for `delay`, at most `cap` of them at once.
    pub fn new(delay: Duration, cap: usize) -> Tarpit<T> {
        Tarpit {
            delay,
            cap,
            held: BTreeMap::new(),
            next_order: 0,
        }
    }

    /// Holds `answer` to a hello that arrived at `since` until `since` +
    /// the delay; gives it back to be sent at once when that has passed by
    /// `now`, or `cap` answers are held already.
    pub fn hold(&mut self, now: Instant, since: Instant, answer: T) -> Option<T> {
        let due = since + self.delay;
        if due <= now || self.held.len() >= self.cap {
            return Some(answer);
        }
        self.held.insert((due, self.next_order), answer);
        self.next_order += 1;
        None
    }

    /// When the earliest held answer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.held.first_key_value().map(|((due, _), _)| *due)
    }

    /// The answers due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(move || {
            if self.held.first_key_value()?.0.0 > now {
                return None;
            }
            self.held.pop_first().map(|(_, answer)| answer)
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
        assert_eq!(tarpit.hold(t0, t0, "a"), None);
        let t1 = t0 + SECOND / 2;
        assert_eq!(tarpit.hold(t1, t1, "b"), None);
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
        let now = Instant::now();
        assert_eq!(tarpit.hold(now, now, 7), Some(7));
        assert!(tarpit.is_empty());
    }

    #[test]
    fn the_delay_runs_from_the_hello_so_a_slow_check_waits_only_the_rest() {
        let t0 = Instant::now();
        let mut tarpit = Tarpit::new(SECOND, 8);
        // Checked for 0.75 s: held for the remaining quarter.
        assert_eq!(tarpit.hold(t0 + SECOND * 3 / 4, t0, "slow"), None);
        // Refused unchecked just after: due later, taken after it.
        let t1 = t0 + SECOND * 3 / 4;
        assert_eq!(tarpit.hold(t1, t1, "unchecked"), None);
        assert_eq!(tarpit.next_due(), Some(t0 + SECOND));
        assert_eq!(tarpit.take_due(t0 + SECOND).collect::<Vec<_>>(), ["slow"]);
        // Checked for longer than the delay: answered at once.
        assert_eq!(tarpit.hold(t0 + SECOND * 2, t0, "slower"), Some("slower"));
        assert_eq!(
            tarpit.take_due(t1 + SECOND).collect::<Vec<_>>(),
            ["unchecked"]
        );
    }

    #[test]
    fn past_the_cap_answers_at_once_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut tarpit = Tarpit::new(SECOND, 3);
        for n in 0..3 {
            assert_eq!(tarpit.hold(t0, t0, n), None);
        }
        assert_eq!(tarpit.hold(t0, t0, 3), Some(3));
        assert_eq!(tarpit.len(), 3);
        assert_eq!(tarpit.take_due(t0 + SECOND).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
