//! The frames a session was sent that await its OK or ERRO, oldest first,
//! kept in runs. A broadcast or room of 100 with a window of 1,024 holds
//! about 100,000 deliveries, one written at each of 100 tails per message
//! and read back at each ack: a native profile put a third of the
//! server's cycles at 1:100 in cache misses there (BENCHMARKS.md, "TLS at
//! 1:100, round two"). Most of those deliveries are one emitter's
//! consecutive requests, numbered consecutively, sent in the same
//! millisecond: such a delivery extends the last entry's count instead of
//! taking an entry of its own, so a session's queue stays a few entries
//! long. Whoever reads the queue sees each delivery as before, in order,
//! with its own request, sequence number and deadline.

use super::deadline::Due;
use super::{Delivery, Purpose};
use std::collections::VecDeque;

/// A session's deliveries awaiting an ack, as runs of [`Delivery`] (see
/// [`Delivery::repeats`]).
#[derive(Debug, Default)]
pub(super) struct AwaitingAck {
    runs: VecDeque<Delivery>,
    /// Deliveries in all runs.
    len: usize,
}

impl AwaitingAck {
    /// Appends a delivery: it extends the last run when it is that run's
    /// emitter's next request, with the next sequence number and the
    /// same deadline.
    #[inline]
    pub(super) fn push(&mut self, seq: u16, due: Due, purpose: Purpose) {
        self.len += 1;
        if let Purpose::Request(next) = purpose
            && let Some(last) = self.runs.back_mut()
            && let Purpose::Request(first) = last.purpose
            && last.due == due
            && last.repeats < u16::MAX
            && first.request + u64::from(last.repeats) + 1 == next.request
            && last.seq.wrapping_add(last.repeats).wrapping_add(1) == seq
            && first.emitter == next.emitter
            && first.incarnation == next.incarnation
        {
            last.repeats += 1;
            return;
        }
        self.runs.push_back(Delivery {
            purpose,
            due,
            seq,
            repeats: 0,
        });
    }

    /// Takes the oldest delivery.
    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<Delivery> {
        let first = self.runs.front_mut()?;
        self.len -= 1;
        if first.repeats == 0 {
            return self.runs.pop_front();
        }
        let taken = Delivery {
            repeats: 0,
            ..*first
        };
        first.repeats -= 1;
        first.seq = first.seq.wrapping_add(1);
        if let Purpose::Request(request) = &mut first.purpose {
            request.request += 1;
        }
        Some(taken)
    }

    /// The oldest delivery's deadline.
    pub(super) fn front_due(&self) -> Option<Due> {
        self.runs.front().map(|d| d.due)
    }

    /// How many deliveries await an ack.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(any(test, feature = "testing"))]
    pub(super) fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Every delivery, oldest first, each as it was pushed.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn iter(&self) -> impl Iterator<Item = Delivery> + '_ {
        self.runs.iter().flat_map(|&run| unrun(run))
    }

    /// Every delivery, oldest first, each as it was pushed; the queue is
    /// consumed.
    pub(super) fn into_deliveries(self) -> impl Iterator<Item = Delivery> {
        self.runs.into_iter().flat_map(unrun)
    }
}

/// The deliveries one run stands for.
fn unrun(run: Delivery) -> impl Iterator<Item = Delivery> {
    (0..=run.repeats).map(move |i| {
        let mut purpose = run.purpose;
        if let Purpose::Request(request) = &mut purpose {
            request.request += u64::from(i);
        }
        Delivery {
            purpose,
            due: run.due,
            seq: run.seq.wrapping_add(i),
            repeats: 0,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::RequestRef;
    use super::*;
    use std::time::{Duration, Instant};

    fn dues() -> (Due, Due) {
        let start = Instant::now();
        let mut timeline = super::super::Timeline::new(Duration::from_secs(10));
        let a = timeline.after(start).due;
        let b = timeline.after(start + Duration::from_millis(5)).due;
        assert_ne!(a, b);
        (a, b)
    }

    fn request(emitter: usize, request: u64) -> Purpose {
        Purpose::Request(RequestRef::new(emitter, 7, request))
    }

    /// What a delivery is to its readers: the run count aside.
    fn seen(d: Delivery) -> (String, Due, u16) {
        (format!("{:?}", d.purpose), d.due, d.seq)
    }

    /// Pushes `pushed` and checks that every reader sees each as pushed,
    /// and that the queue holds `runs` entries.
    fn check(pushed: &[(u16, Due, Purpose)], runs: usize) -> AwaitingAck {
        let mut queue = AwaitingAck::default();
        for &(seq, due, purpose) in pushed {
            queue.push(seq, due, purpose);
        }
        assert_eq!(queue.runs.len(), runs, "{:?}", queue.runs);
        assert_eq!(queue.len(), pushed.len());
        let want: Vec<_> = pushed
            .iter()
            .map(|&(seq, due, purpose)| {
                seen(Delivery {
                    purpose,
                    due,
                    seq,
                    repeats: 0,
                })
            })
            .collect();
        assert_eq!(queue.iter().map(seen).collect::<Vec<_>>(), want);
        let mut popped = AwaitingAck::default();
        for &(seq, due, purpose) in pushed {
            popped.push(seq, due, purpose);
        }
        let mut got = Vec::new();
        while let Some(d) = popped.pop_front() {
            assert_eq!(d.repeats, 0);
            got.push(seen(d));
            assert_eq!(popped.len(), pushed.len() - got.len());
        }
        assert!(popped.is_empty());
        assert_eq!(got, want);
        queue
    }

    #[test]
    fn one_emitters_consecutive_requests_in_one_millisecond_make_one_run() {
        let (due, _) = dues();
        let pushed: Vec<_> = (0..1000)
            .map(|i| (40 + i, due, request(3, 9 + u64::from(i))))
            .collect();
        check(&pushed, 1);
    }

    #[test]
    fn an_ack_mid_run_takes_the_oldest_and_leaves_the_rest() {
        let (due, _) = dues();
        let mut queue = AwaitingAck::default();
        for i in 0..5 {
            queue.push(10 + i, due, request(3, 100 + u64::from(i)));
        }
        let first = queue.pop_front().unwrap();
        assert_eq!(seen(first), (format!("{:?}", request(3, 100)), due, 10));
        assert_eq!(queue.len(), 4);
        assert_eq!(queue.front_due(), Some(due));
        // The run extends after an ack as before it.
        queue.push(15, due, request(3, 105));
        assert_eq!(queue.runs.len(), 1);
        let rest: Vec<_> = queue.iter().map(|d| d.seq).collect();
        assert_eq!(rest, vec![11, 12, 13, 14, 15]);
    }

    #[test]
    fn a_new_deadline_starts_a_new_run() {
        let (early, late) = dues();
        let pushed = [
            (1, early, request(3, 0)),
            (2, early, request(3, 1)),
            (3, late, request(3, 2)),
            (4, late, request(3, 3)),
        ];
        let mut queue = check(&pushed, 2);
        queue.pop_front();
        assert_eq!(queue.front_due(), Some(early));
        queue.pop_front();
        assert_eq!(queue.front_due(), Some(late));
    }

    #[test]
    fn a_gap_in_requests_or_sequence_numbers_or_another_emitter_starts_a_new_run() {
        let (due, _) = dues();
        check(&[(1, due, request(3, 0)), (2, due, request(3, 2))], 2);
        check(&[(1, due, request(3, 0)), (3, due, request(3, 1))], 2);
        check(&[(1, due, request(3, 0)), (2, due, request(4, 1))], 2);
        let other_incarnation = Purpose::Request(RequestRef::new(3, 8, 1));
        check(&[(1, due, request(3, 0)), (2, due, other_incarnation)], 2);
    }

    #[test]
    fn sequence_numbers_wrap_inside_a_run() {
        let (due, _) = dues();
        check(
            &[
                (u16::MAX - 1, due, request(3, 0)),
                (u16::MAX, due, request(3, 1)),
                (0, due, request(3, 2)),
            ],
            1,
        );
    }

    #[test]
    fn a_delivery_of_another_purpose_between_requests_breaks_the_run() {
        let (due, _) = dues();
        let queued = Purpose::Queued {
            room: 9000,
            slot: 1,
            ticket: 2,
        };
        for between in [Purpose::Farewell, Purpose::Replay, Purpose::Who, queued] {
            check(
                &[
                    (1, due, request(3, 0)),
                    (2, due, between),
                    (3, due, request(3, 1)),
                ],
                3,
            );
        }
        // Nor do those purposes make runs among themselves.
        check(&[(1, due, Purpose::Replay), (2, due, Purpose::Replay)], 2);
    }

    #[test]
    fn a_full_run_starts_another() {
        let (due, _) = dues();
        let pushed: Vec<_> = (0..=u64::from(u16::MAX) + 1)
            .map(|i| (i as u16, due, request(3, i)))
            .collect();
        check(&pushed, 2);
    }
}
