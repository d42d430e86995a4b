//! Acknowledgement deadlines in 32 bits. Every frame the server sends that
//! awaits an OK keeps its deadline in its target's `awaiting_ack` queue (a
//! run of them, `router/awaiting.rs`, shares one): a room or broadcast of
//! 100 with a window of 1,024 kept 100,000 of them live, and a 16-byte
//! `Instant` in each made a third of the entry
//! (BENCHMARKS.md, "Tenth round"). Here a deadline is a count of
//! milliseconds on the router's [`Timeline`], modulo 2^32, rounded up so
//! that none fires early. It is compared with the present by its wrapping
//! difference, which holds while no deadline lies more than 2^31 ms (24
//! days) from the present: a wait longer than [`MAX_WAIT`] is cut to it.
//! The router still reads no clock: the timeline starts at the first `now`
//! it is given.

use std::time::{Duration, Instant};

/// The longest wait a deadline is set for (about 12.4 days): half the
/// range the wrapping comparison allows, so that a deadline overdue by as
/// long again is still seen as passed.
pub(super) const MAX_WAIT: Duration = Duration::from_millis(1 << 30);

/// A deadline: milliseconds on the router's timeline, modulo 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Due(u32);

/// A deadline both ways: the instant the loop is woken for, and the 32-bit
/// [`Due`] a delivery keeps. `at` is exactly when `due` falls.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    pub(super) at: Instant,
    pub(super) due: Due,
}

/// The router's millisecond count, from the first `now` it was given, and
/// the one wait acknowledgement deadlines are set for.
#[derive(Debug)]
pub(super) struct Timeline {
    epoch: Option<Instant>,
    /// The wait (the ack timeout, at most [`MAX_WAIT`]).
    wait: Duration,
    /// The last deadline set, with the `now` it was set for: a turn's
    /// deliveries share one `now`, so most need no arithmetic.
    last: Option<(Instant, Deadline)>,
}

impl Timeline {
    /// A timeline whose deadlines fall `wait` after the `now` they are
    /// set at (a longer wait than [`MAX_WAIT`] counts as that).
    pub(super) fn new(wait: Duration) -> Timeline {
        Timeline {
            epoch: None,
            wait: wait.min(MAX_WAIT),
            last: None,
        }
    }

    /// The deadline the wait after `now`, rounded up to the next
    /// millisecond.
    #[inline]
    pub(super) fn after(&mut self, now: Instant) -> Deadline {
        match self.last {
            Some((then, deadline)) if then == now => deadline,
            _ => self.set(now),
        }
    }

    #[inline(never)]
    fn set(&mut self, now: Instant) -> Deadline {
        let epoch = *self.epoch.get_or_insert(now);
        let span = now.saturating_duration_since(epoch) + self.wait;
        let ms =
            span.as_millis() as u64 + u64::from(!span.subsec_nanos().is_multiple_of(1_000_000));
        let deadline = Deadline {
            at: epoch + Duration::from_millis(ms),
            due: Due(ms as u32),
        };
        self.last = Some((now, deadline));
        deadline
    }

    /// When `due` falls, seen from `now` (a deadline already passed gives
    /// an instant at or before `now`).
    pub(super) fn instant(&self, due: Due, now: Instant) -> Instant {
        let Some(epoch) = self.epoch else {
            return now; // no deadline was ever set
        };
        let past = now.saturating_duration_since(epoch).as_millis() as u64;
        let ahead = i64::from(due.0.wrapping_sub(past as u32) as i32);
        epoch + Duration::from_millis(past.saturating_add_signed(ahead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_falls_at_or_just_after_the_wait_never_before() {
        let start = Instant::now();
        for (offset_us, wait_us) in [(0, 10_000_000), (1_500, 500_000), (999, 1), (7, 0)] {
            let wait = Duration::from_micros(wait_us);
            let mut timeline = Timeline::new(wait);
            timeline.after(start);
            let now = start + Duration::from_micros(offset_us);
            let deadline = timeline.after(now);
            assert!(deadline.at >= now + wait, "not early");
            assert!(
                deadline.at < now + wait + Duration::from_millis(2),
                "late by < 2 ms"
            );
            assert_eq!(timeline.instant(deadline.due, now), deadline.at);
        }
    }

    #[test]
    fn a_passed_deadline_is_seen_as_passed_and_a_far_wait_is_cut() {
        let start = Instant::now();
        let mut timeline = Timeline::new(Duration::from_secs(10));
        let deadline = timeline.after(start);
        let later = start + Duration::from_secs(11);
        assert!(timeline.instant(deadline.due, later) <= later);
        let mut timeline = Timeline::new(Duration::from_secs(100 * 86_400));
        let far = timeline.after(start);
        assert_eq!(far.at, start + MAX_WAIT);
        assert!(timeline.instant(far.due, start) > start + Duration::from_secs(86_400));
    }

    #[test]
    fn deadlines_are_read_across_the_wrap_of_32_bits() {
        let start = Instant::now();
        let mut timeline = Timeline::new(Duration::from_secs(10));
        timeline.after(start);
        // 50 days on, the millisecond count has wrapped past 2^32.
        let now = start + Duration::from_secs(50 * 86_400);
        let deadline = timeline.after(now);
        assert_eq!(deadline.at, now + Duration::from_secs(10));
        assert_eq!(timeline.instant(deadline.due, now), deadline.at);
        let past = now + Duration::from_secs(20);
        assert_eq!(timeline.instant(deadline.due, past), deadline.at);
    }
}
