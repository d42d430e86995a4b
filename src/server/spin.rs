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
//! at once. Spinning costs CPU only while input keeps arriving within the
//! budget of the previous poll, and at most one budget after it stops.

use std::time::{Duration, Instant};

/// Weight of the newest turn in the busy share (1/8: a handful of turns
/// decide, so one long turn among short ones does not start a spin).
const WEIGHT: f64 = 0.125;
/// The loop spins only while it is busy at least this share of the time:
/// then the spinning costs at most as much CPU again as the work itself,
/// while a light load (short turns far apart) never pays for it.
const BUSY_ENOUGH: f64 = 0.5;

/// The spin policy: a budget (zero turns spinning off), the share of time
/// recent turns spent working, and what the last poll saw.
#[derive(Debug)]
pub(super) struct Spin {
    budget: Duration,
    /// Moving average of worked / (worked + waited) over recent turns.
    busy: f64,
    /// How long the last poll waited (spinning and sleeping together).
    waited: Duration,
    /// The last poll found input within the budget.
    quick: bool,
    /// Until when the current poll may poll without blocking.
    until: Option<Instant>,
}

impl Spin {
    pub(super) fn new(budget: Duration) -> Spin {
        Spin {
            budget,
            busy: 0.0,
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
    pub(super) fn keeps_spinning(&self, now: Instant, timeout: Option<Duration>) -> bool {
        timeout != Some(Duration::ZERO) && self.until.is_some_and(|until| now < until)
    }

    /// How long the next poll may poll without blocking before it sleeps,
    /// after a turn that took `worked` since the last poll returned.
    fn window(&mut self, worked: Duration) -> Duration {
        let turn = worked + self.waited;
        if !turn.is_zero() {
            let share = worked.as_secs_f64() / turn.as_secs_f64();
            self.busy += (share - self.busy) * WEIGHT;
        }
        if self.quick && self.busy >= BUSY_ENOUGH {
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
    fn a_loop_busy_most_of_the_time_spins_after_a_few_turns() {
        // 3/4 busy: the average passes 1/2 on the 9th turn (1 - 7/8^9 > 2/3).
        let mut spin = Spin::new(BUDGET);
        assert_eq!(run(&mut spin, 8, 20, 60), Duration::ZERO);
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
    fn a_lighter_load_ends_the_spinning() {
        let mut spin = busy();
        // Short turns with longer waits (each still within the budget).
        assert_eq!(run(&mut spin, 3, 40, 5), BUDGET);
        assert_eq!(run(&mut spin, 10, 40, 5), Duration::ZERO);
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
        assert!(spin.keeps_spinning(now, None));
        assert!(spin.keeps_spinning(now + us(49), Some(us(1000))));
        assert!(spin.keeps_spinning(now + us(49), Some(us(1))));
        assert!(!spin.keeps_spinning(now + BUDGET, None));
        assert!(!spin.keeps_spinning(now + us(100), None));
        // A deadline due (or connections with input left): serve it now.
        assert!(!spin.keeps_spinning(now, Some(Duration::ZERO)));
    }

    #[test]
    fn a_poll_of_a_loop_that_does_not_spin_sleeps_at_once() {
        let mut spin = Spin::new(BUDGET);
        let now = Instant::now();
        assert!(!spin.keeps_spinning(now, None));
        spin.start(now, us(60));
        assert!(!spin.keeps_spinning(now, None));
        // A busy loop whose last poll waited past the budget.
        let mut spin = busy();
        spin.record(BUDGET, false);
        spin.start(now, us(60));
        assert!(!spin.keeps_spinning(now, None));
    }

    #[test]
    fn a_zero_budget_never_spins() {
        let mut spin = Spin::new(Duration::ZERO);
        assert_eq!(run(&mut spin, 100, 0, 60), Duration::ZERO);
    }
}
