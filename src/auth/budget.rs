//! The failure budget: how many refused sign-ins one source may have in a
//! window before its hellos are refused until the window ends. A source is
//! an IPv4 address, or an IPv6 /64 (one subscriber's usual allocation, so
//! that walking the addresses of one network buys no more guesses). Memory
//! is bounded: past the cap the source whose window started first is
//! forgotten. Pure logic: the caller passes the time.
//!
//! A success does not reset the count, so that an account holder cannot
//! interleave guesses at other accounts with sign-ins of their own.
//!
//! Checks in flight count against the budget too: a failure is known only
//! when the verifier answers, so without them a client sending many
//! guesses at once would have every one checked before the first failure
//! came back. A check is begun only while failures plus checks in flight
//! stay under the limit, and ended (a failure or not) when its answer
//! comes back.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Whom failures are counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Net([u8; 8]),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            // An IPv4 client seen through an IPv6 socket is that IPv4 address.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut net = [0u8; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    Source::V6Net(net)
                }
            },
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// When this source's window began (its first failure in it).
    since: Instant,
    failures: u32,
    /// Checks begun and not yet ended (not bound to the window: each ends
    /// when the verifier answers).
    in_flight: u32,
    /// Its key in `by_age`.
    order: u64,
}

/// Failures per source within a window.
#[derive(Debug)]
pub struct FailureBudget {
    limit: u32,
    window: Duration,
    cap: usize,
    entries: HashMap<Source, Entry>,
    /// (window start order) → source: the oldest is evicted first.
    by_age: BTreeMap<u64, Source>,
    next_order: u64,
}

impl FailureBudget {
    /// Allows `limit` failures per source per `window`, tracking at most
    /// `cap` sources (at least 1).
    pub fn new(limit: u32, window: Duration, cap: usize) -> FailureBudget {
        FailureBudget {
            limit,
            window,
            cap: cap.max(1),
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            next_order: 0,
        }
    }

    /// Whether a hello from `ip` may be checked at `now`; false once the
    /// source has had `limit` failures in its current window.
    pub fn allows(&self, ip: IpAddr, now: Instant) -> bool {
        match self.entries.get(&Source::from(ip)) {
            Some(e) if now.saturating_duration_since(e.since) < self.window => {
                e.failures < self.limit
            }
            _ => true,
        }
    }

    /// Failures of `e` in its current window (none once it has passed).
    fn live_failures(&self, e: &Entry, now: Instant) -> u32 {
        if now.saturating_duration_since(e.since) < self.window {
            e.failures
        } else {
            0
        }
    }

    /// Begins a check for a hello from `ip` at `now` if the source's
    /// failures plus its checks in flight are under the limit (true), so
    /// that guesses sent at once cannot outrun the budget; false otherwise,
    /// and nothing is counted. End it with [`end_check`](Self::end_check).
    pub fn begin_check(&mut self, ip: IpAddr, now: Instant) -> bool {
        let source = Source::from(ip);
        if let Some(e) = self.entries.get(&source) {
            if self.live_failures(e, now).saturating_add(e.in_flight) >= self.limit {
                return false;
            }
            if let Some(e) = self.entries.get_mut(&source) {
                e.in_flight += 1;
            }
            return true;
        }
        if self.limit == 0 {
            return false;
        }
        // No failures yet: the entry's window starts at its first failure
        // (`record_failure` renews a window that holds none).
        let entry = self.insert(source, now);
        entry.in_flight = 1;
        true
    }

    /// Ends a check begun with [`begin_check`](Self::begin_check), whatever
    /// its verdict (count a refusal with
    /// [`record_failure`](Self::record_failure) as well). A source
    /// forgotten meanwhile (evicted past the cap) has nothing to end.
    pub fn end_check(&mut self, ip: IpAddr) {
        if let Some(e) = self.entries.get_mut(&Source::from(ip)) {
            e.in_flight = e.in_flight.saturating_sub(1);
        }
    }

    /// When a refused source may try again (None if it is not refused).
    pub fn refused_until(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let e = self.entries.get(&Source::from(ip))?;
        (!self.allows(ip, now)).then_some(e.since + self.window)
    }

    /// Counts a refused sign-in from `ip` at `now`.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        let source = Source::from(ip);
        if let Some(e) = self.entries.get_mut(&source) {
            if e.failures > 0 && now.saturating_duration_since(e.since) < self.window {
                e.failures = e.failures.saturating_add(1);
                return;
            }
            // The window has passed, or the entry held checks in flight
            // only: a new one starts now.
            self.by_age.remove(&e.order);
            e.since = now;
            e.failures = 1;
            e.order = self.next_order;
            self.by_age.insert(e.order, source);
            self.next_order += 1;
            return;
        }
        self.insert(source, now).failures = 1;
    }

    /// A new entry for `source` with no failures and no checks, its window
    /// starting at `now`; past the cap the oldest window is forgotten.
    fn insert(&mut self, source: Source, now: Instant) -> &mut Entry {
        while self.entries.len() >= self.cap {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let order = self.next_order;
        self.next_order += 1;
        self.by_age.insert(order, source);
        self.entries.entry(source).or_insert(Entry {
            since: now,
            failures: 0,
            in_flight: 0,
            order,
        })
    }

    /// Forgets the sources whose window has passed and that have no check
    /// in flight (call now and then: it only frees memory, decisions are
    /// the same without it).
    pub fn forget_expired(&mut self, now: Instant) {
        let window = self.window;
        let by_age = &mut self.by_age;
        self.entries.retain(|_, e| {
            let live = e.in_flight > 0 || now.saturating_duration_since(e.since) < window;
            if !live {
                by_age.remove(&e.order);
            }
            live
        });
    }

    /// How many sources are tracked.
    pub fn tracked(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const WINDOW: Duration = Duration::from_secs(60);

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    #[test]
    fn limit_failures_then_refused_until_the_window_passes() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(3, WINDOW, 100);
        for i in 0..3 {
            assert!(budget.allows(v4(1), t0), "failure {i}");
            budget.record_failure(v4(1), t0 + Duration::from_secs(i));
        }
        assert!(!budget.allows(v4(1), t0 + Duration::from_secs(3)));
        assert!(!budget.allows(v4(1), t0 + WINDOW - Duration::from_millis(1)));
        assert_eq!(
            budget.refused_until(v4(1), t0 + Duration::from_secs(3)),
            Some(t0 + WINDOW)
        );
        assert!(
            budget.allows(v4(2), t0),
            "another address has its own budget"
        );
        assert!(budget.allows(v4(1), t0 + WINDOW));
        assert_eq!(budget.refused_until(v4(1), t0 + WINDOW), None);
        // A failure after the window starts a new one, counting 1.
        budget.record_failure(v4(1), t0 + WINDOW);
        assert!(budget.allows(v4(1), t0 + WINDOW));
    }

    #[test]
    fn ipv6_is_counted_per_64() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(2, WINDOW, 100);
        budget.record_failure(v6("2001:db8:1:2::1"), t0);
        budget.record_failure(v6("2001:db8:1:2:ffff:ffff:ffff:ffff"), t0);
        assert!(!budget.allows(v6("2001:db8:1:2:abcd::9"), t0));
        assert!(
            budget.allows(v6("2001:db8:1:3::1"), t0),
            "the next /64 is another source"
        );
        assert_eq!(budget.tracked(), 1);
    }

    #[test]
    fn an_ipv4_mapped_address_is_its_ipv4_address() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(1, WINDOW, 100);
        budget.record_failure(v6("::ffff:192.0.2.7"), t0);
        assert!(!budget.allows(v4(7), t0));
        assert_eq!(Source::from(v4(7)), Source::V4([192, 0, 2, 7]));
    }

    #[test]
    fn memory_is_capped_by_evicting_the_oldest_window() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(1, WINDOW, 3);
        for i in 1..=3 {
            budget.record_failure(v4(i), t0 + Duration::from_secs(u64::from(i)));
        }
        assert!(!budget.allows(v4(1), t0 + Duration::from_secs(4)));
        budget.record_failure(v4(4), t0 + Duration::from_secs(4));
        assert_eq!(budget.tracked(), 3);
        assert!(
            budget.allows(v4(1), t0 + Duration::from_secs(5)),
            "1 was the oldest"
        );
        for i in 2..=4 {
            assert!(
                !budget.allows(v4(i), t0 + Duration::from_secs(5)),
                "{i} is kept"
            );
        }
    }

    #[test]
    fn a_renewed_window_counts_as_young_for_eviction() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(1, WINDOW, 2);
        budget.record_failure(v4(1), t0);
        budget.record_failure(v4(2), t0 + Duration::from_secs(1));
        // 1's window passes and a new failure renews it: 2 is now the oldest.
        budget.record_failure(v4(1), t0 + WINDOW);
        budget.record_failure(v4(3), t0 + WINDOW);
        assert!(!budget.allows(v4(1), t0 + WINDOW));
        assert!(!budget.allows(v4(3), t0 + WINDOW));
        assert!(budget.allows(v4(2), t0 + WINDOW));
    }

    #[test]
    fn checks_in_flight_count_against_the_budget() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(3, WINDOW, 100);
        // Five guesses at once: three are checked, two are not.
        let begun: Vec<bool> = (0..5).map(|_| budget.begin_check(v4(1), t0)).collect();
        assert_eq!(begun, [true, true, true, false, false]);
        assert!(budget.begin_check(v4(2), t0), "another address has its own");
        // A success gives its slot back, and one more may be checked.
        budget.end_check(v4(1));
        assert!(budget.begin_check(v4(1), t0));
        assert!(!budget.begin_check(v4(1), t0));
        // Failures take the place of the checks they end.
        for _ in 0..3 {
            budget.end_check(v4(1));
            budget.record_failure(v4(1), t0 + Duration::from_secs(1));
        }
        assert!(!budget.allows(v4(1), t0 + Duration::from_secs(2)));
        assert!(!budget.begin_check(v4(1), t0 + Duration::from_secs(2)));
        // The window runs from the first failure, not the first check.
        assert!(!budget.begin_check(v4(1), t0 + WINDOW));
        assert!(budget.begin_check(v4(1), t0 + WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn a_source_with_checks_in_flight_is_not_forgotten_as_expired() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(2, WINDOW, 10);
        assert!(budget.begin_check(v4(1), t0));
        assert!(budget.begin_check(v4(1), t0));
        budget.forget_expired(t0 + WINDOW * 2);
        assert_eq!(budget.tracked(), 1);
        assert!(!budget.begin_check(v4(1), t0 + WINDOW * 2));
        budget.end_check(v4(1));
        budget.end_check(v4(1));
        budget.forget_expired(t0 + WINDOW * 2);
        assert_eq!(budget.tracked(), 0);
        // Ending a check of a forgotten source changes nothing.
        budget.end_check(v4(1));
        assert_eq!(budget.tracked(), 0);
    }

    #[test]
    fn checks_in_flight_keep_the_table_within_its_cap() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(1, WINDOW, 3);
        for i in 1..=5 {
            assert!(budget.begin_check(v4(i), t0));
        }
        assert_eq!(budget.tracked(), 3);
        assert_eq!(budget.by_age.len(), 3);
    }

    #[test]
    fn forgetting_expired_sources_frees_them() {
        let t0 = Instant::now();
        let mut budget = FailureBudget::new(1, WINDOW, 10);
        budget.record_failure(v4(1), t0);
        budget.record_failure(v4(2), t0 + Duration::from_secs(30));
        budget.forget_expired(t0 + WINDOW);
        assert_eq!(budget.tracked(), 1);
        assert!(!budget.allows(v4(2), t0 + WINDOW));
        assert_eq!(budget.by_age.len(), 1);
    }
}
