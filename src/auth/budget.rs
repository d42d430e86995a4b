//! The failure budget: how many refused sign-ins one source may have in a
//! window before its hellos are refused until the window ends. A source is
//! an IPv4 address, or an IPv6 /64 (one subscriber's usual allocation, so
//! that walking the addresses of one network buys no more guesses). Memory
//! is bounded: past the cap the source whose window started first is
//! forgotten. Pure logic: the caller passes the time.
//!
//! A success does not reset the count, so that an account holder cannot
//! interleave guesses at other accounts with sign-ins of their own.

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

    /// When a refused source may try again (None if it is not refused).
    pub fn refused_until(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let e = self.entries.get(&Source::from(ip))?;
        (!self.allows(ip, now)).then_some(e.since + self.window)
    }

    /// Counts a refused sign-in from `ip` at `now`.
    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        let source = Source::from(ip);
        if let Some(e) = self.entries.get_mut(&source) {
            if now.saturating_duration_since(e.since) < self.window {
                e.failures = e.failures.saturating_add(1);
                return;
            }
            // The window has passed: a new one starts now.
            self.by_age.remove(&e.order);
            e.since = now;
            e.failures = 1;
            e.order = self.next_order;
            self.by_age.insert(e.order, source);
            self.next_order += 1;
            return;
        }
        while self.entries.len() >= self.cap {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let order = self.next_order;
        self.next_order += 1;
        self.by_age.insert(order, source);
        self.entries.insert(
            source,
            Entry {
                since: now,
                failures: 1,
                order,
            },
        );
    }

    /// Forgets the sources whose window has passed (call now and then: it
    /// only frees memory, decisions are the same without it).
    pub fn forget_expired(&mut self, now: Instant) {
        let window = self.window;
        let by_age = &mut self.by_age;
        self.entries.retain(|_, e| {
            let live = now.saturating_duration_since(e.since) < window;
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
