//! When the event loop keeps polling instead of sleeping. Under a steady
//! stream of input the next readiness usually comes a few microseconds
//! after a turn ends; sleeping in `epoll_wait` for it costs the peer that
//! sends it a wake-up (an inter-processor interrupt, and on a virtual
//! machine an exit to the host) and costs this thread a context switch.
//! So, right after a turn whose input came quickly, the loop polls without
//! blocking for up to the spin budget, and only then sleeps.
//!
//! An idle server never spins: the first input after a quiet spell found
//! the loop asleep for longer than the budget, so the turn after it sleeps
//! at once. Nor does a light load: the loop spins only while, over recent
//! turns, it spent at least as long working as waiting (time-weighted, so
//! many short turns cannot outvote one long wait). Time worked is wall
//! time: a loop that other processes preempt looks busier than it is, and
//! may spin on a shared core (it yields between polls; `--spin-us 0` turns
//! spinning off).

use std::time::{Duration, Instant};

/// Weight of the newest turn in the moving averages (1/8: the last dozen
/// turns or so decide).
const WEIGHT: f64 = 0.125;
/// The loop spins only while it works at least this share of the time:
/// then it spins at most as long as it works, while a light load (short
/// turns far apart) never pays for it.
const BUSY_ENOUGH: f64 = 0.5;
/// The largest budget (the server's `--spin-us` allows no more).
pub(super) const MAX_BUDGET: Duration = Duration::from_millis(10);

/// The spin policy: a budget (zero turns spinning off), how long recent
/// turns worked and lasted, and what the last poll saw.
#[derive(Debug)]
pub(super) struct Spin {
    budget: Duration,
    /// Moving averages, in seconds, of a turn's work and of its whole
    /// length (the poll's wait and the work after it).
    worked: f64,
    length: f64,
    /// How long the last poll waited (spinning and sleeping together).
    waited: Duration,
    /// The last poll found input within the budget.
    quick: bool,
    /// Until when the current poll may poll without blocking.
    until: Option<Instant>,
}

impl Spin {
    /// A policy with `budget`, at most [`MAX_BUDGET`].
    pub(super) fn new(budget: Duration) -> Spin {
        Spin {
            budget: budget.min(MAX_BUDGET),
            worked: 0.0,
            length: 0.0,
            waited: Duration::ZERO,
            quick: false,
            until: None,
        }
    }

    /// Starts a poll at `now`, after a turn that took `worked` since the
    /// last poll returned: decides how long it may spin.
    pub(super) fn start(&mut self, now: Instant, worked: Duration) {
        let window = self.window(worked);
        self.until = (!window.is_zero()).then(|| now + window);
    }

    /// Whether the poll should check for readiness again without blocking
    /// rather than sleep, at `now`, with `timeout` left until the next
    /// deadline: not once a deadline is due (the turn must serve it), nor
    /// past the poll's window.
    /// (The clock is read only if the poll has a window at all.)
    pub(super) fn keeps_spinning(
        &self,
        now: impl FnOnce() -> Instant,
        timeout: Option<Duration>,
    ) -> bool {
        self.until.is_some_and(|until| now() < until) && timeout != Some(Duration::ZERO)
    }

    /// When the current poll's spinning stops: at `now`, or sooner where
    /// its window closed.
    pub(super) fn until(&self, now: Instant) -> Instant {
        self.until.map_or(now, |until| until.min(now))
    }

    /// How long the next poll may poll without blocking before it sleeps,
    /// after a turn that took `worked` since the last poll returned.
    fn window(&mut self, worked: Duration) -> Duration {
        let worked = worked.as_secs_f64();
        let length = worked + self.waited.as_secs_f64();
        self.worked += (worked - self.worked) * WEIGHT;
        self.length += (length - self.length) * WEIGHT;
        if self.quick && self.worked >= self.length * BUSY_ENOUGH {
            self.budget
        } else {
            Duration::ZERO
        }
    }

    /// Records one poll: it took `waited` and found no input if `empty`
    /// (its events were empty: a deadline's turn).
    pub(super) fn record(&mut self, waited: Duration, empty: bool) {
        self.waited = waited;
        self.quick = !empty && waited < self.budget;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = Duration::from_micros(50);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// `turns` turns that each waited `waited` for input, then worked
    /// `worked`; the window the last one gave.
    fn run(spin: &mut Spin, turns: usize, waited: u64, worked: u64) -> Duration {
        let mut window = Duration::ZERO;
        for _ in 0..turns {
            spin.record(us(waited), false);
            window = spin.window(us(worked));
        }
        window
    }

    /// A loop that has been busy three quarters of the time for a while,
    /// its input coming within the budget.
    fn busy() -> Spin {
        let mut spin = Spin::new(BUDGET);
        assert_eq!(run(&mut spin, 20, 20, 60), BUDGET);
        spin
    }

    #[test]
    fn a_new_loop_sleeps_at_once() {
        assert_eq!(Spin::new(BUDGET).window(us(1000)), Duration::ZERO);
    }

    #[test]
    fn a_loop_that_gets_busy_spins_once_it_works_half_the_time() {
        // After a light load (5 µs of work every 45 µs), turns that work
        // 60 µs of every 80: the averages cross one half on the 5th
        // (60 - 55·(7/8)^n against (80 - 35·(7/8)^n) / 2).
        let mut spin = Spin::new(BUDGET);
        assert_eq!(run(&mut spin, 40, 40, 5), Duration::ZERO);
        assert_eq!(run(&mut spin, 4, 20, 60), Duration::ZERO);
        assert_eq!(run(&mut spin, 1, 20, 60), BUDGET);
    }

    #[test]
    fn a_loop_busy_less_than_half_the_time_never_spins() {
        let mut spin = Spin::new(BUDGET);
        for _ in 0..1000 {
            assert_eq!(run(&mut spin, 1, 30, 29), Duration::ZERO);
        }
    }

    #[test]
    fn many_short_turns_do_not_outweigh_a_long_wait() {
        // Every 100 µs: a turn after 70 µs of waiting that works 10 µs,
        // then five that wait 3 µs and work 4 µs. Most turns are busy more
        // than half their length, but the loop works only 30% of the time.
        let mut spin = Spin::new(BUDGET);
        for _ in 0..200 {
            assert_eq!(run(&mut spin, 1, 70, 10), Duration::ZERO);
            assert_eq!(run(&mut spin, 5, 3, 4), Duration::ZERO);
        }
    }

    #[test]
    fn a_lighter_load_ends_the_spinning() {
        let mut spin = busy();
        // Short turns with longer waits (each still within the budget):
        // the averages fall below one half on the 6th.
        assert_eq!(run(&mut spin, 5, 40, 5), BUDGET);
        assert_eq!(run(&mut spin, 1, 40, 5), Duration::ZERO);
    }

    #[test]
    fn input_later_than_the_budget_ends_it_at_once() {
        let mut spin = busy();
        spin.record(BUDGET, false);
        assert_eq!(spin.window(us(1000)), Duration::ZERO);
        spin.record(Duration::from_secs(3), false);
        assert_eq!(spin.window(us(1000)), Duration::ZERO);
    }

    #[test]
    fn a_poll_that_found_nothing_ends_it_at_once() {
        // A deadline's turn: nothing arrived, however short the wait.
        let mut spin = busy();
        spin.record(us(1), true);
        assert_eq!(spin.window(us(1000)), Duration::ZERO);
    }

    #[test]
    fn a_poll_spins_within_its_window_and_while_no_deadline_is_due() {
        let mut spin = busy();
        let now = Instant::now();
        spin.start(now, us(60));
        assert!(spin.keeps_spinning(|| now, None));
        assert!(spin.keeps_spinning(|| now + us(49), Some(us(1000))));
        assert!(spin.keeps_spinning(|| now + us(49), Some(us(1))));
        assert!(!spin.keeps_spinning(|| now + BUDGET, None));
        assert!(!spin.keeps_spinning(|| now + us(100), None));
        // A deadline due (or connections with input left): serve it now.
        assert!(!spin.keeps_spinning(|| now, Some(Duration::ZERO)));
    }

    #[test]
    fn a_poll_of_a_loop_that_does_not_spin_sleeps_at_once() {
        let mut spin = Spin::new(BUDGET);
        let now = Instant::now();
        let no_clock = || -> Instant { panic!("no window, so no clock to read") };
        assert!(!spin.keeps_spinning(no_clock, None));
        spin.start(now, us(60));
        assert!(!spin.keeps_spinning(no_clock, None));
        // A busy loop whose last poll waited past the budget.
        let mut spin = busy();
        spin.record(BUDGET, false);
        spin.start(now, us(60));
        assert!(!spin.keeps_spinning(no_clock, None));
    }

    #[test]
    fn a_zero_budget_never_spins() {
        let mut spin = Spin::new(Duration::ZERO);
        assert_eq!(run(&mut spin, 100, 0, 60), Duration::ZERO);
        let now = Instant::now();
        spin.start(now, us(60));
        assert!(!spin.keeps_spinning(|| now, None));
    }

    #[test]
    fn the_budget_is_at_most_ten_milliseconds() {
        let mut spin = Spin::new(Duration::MAX);
        assert_eq!(run(&mut spin, 20, 20, 60), MAX_BUDGET);
        let now = Instant::now();
        spin.start(now, us(60));
        assert!(spin.keeps_spinning(|| now + MAX_BUDGET - us(1), None));
        assert!(!spin.keeps_spinning(|| now + MAX_BUDGET, None));
    }
}
