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

use std::time::Duration;

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
}

impl Spin {
    pub(super) fn new(budget: Duration) -> Spin {
        Spin {
            budget,
            busy: 0.0,
            waited: Duration::ZERO,
            quick: false,
        }
    }

    /// How long the next poll may poll without blocking before it sleeps,
    /// after a turn that took `worked` since the last poll returned.
    pub(super) fn window(&mut self, worked: Duration) -> Duration {
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

    /// Records one poll: it took `waited` and `found` input or not.
    pub(super) fn record(&mut self, waited: Duration, found: bool) {
        self.waited = waited;
        self.quick = found && waited < self.budget;
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
            spin.record(us(waited), true);
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
        spin.record(BUDGET, true);
        assert_eq!(spin.window(us(1000)), Duration::ZERO);
        spin.record(Duration::from_secs(3), true);
        assert_eq!(spin.window(us(1000)), Duration::ZERO);
    }

    #[test]
    fn a_poll_that_found_nothing_ends_it_at_once() {
        // A deadline's turn: nothing arrived, however short the wait.
        let mut spin = busy();
        spin.record(us(1), false);
        assert_eq!(spin.window(us(1000)), Duration::ZERO);
    }

    #[test]
    fn a_zero_budget_never_spins() {
        let mut spin = Spin::new(Duration::ZERO);
        assert_eq!(run(&mut spin, 100, 0, 60), Duration::ZERO);
    }
}
