//! The names the server knows (PROTOCOL.md, "Waiting messages"): which
//! offline names a TELL may be stored for. With accounts (`--auth`), the
//! accounts' names as the loop hands them over at load and at each reload:
//! the router never reads the accounts themselves. Without, every name a
//! session signed in with since the server started and every sender name
//! its history's log holds, at most `--tell-names` of them, the one seen
//! longest ago forgotten first. A room's members and names with messages
//! waiting are known as well; the rooms and the waiting messages answer
//! for those, not this.

use super::Router;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The accounts' names, or the names seen, by lower-case key.
#[derive(Debug, Default)]
pub(super) struct KnownNames {
    /// With accounts: every account's name. While set, names seen count
    /// for nothing (a session's name is an account's anyway, and a name
    /// whose account is gone must not be written to).
    accounts: Option<HashSet<Box<str>>>,
    /// Without accounts: each name seen, with when it was last seen.
    seen: HashMap<Box<str>, u64>,
    /// The same names by when they were last seen, oldest first: the one
    /// dropped when a new name would pass `max_seen`.
    by_stamp: BTreeMap<u64, Box<str>>,
    next_stamp: u64,
    /// How many names seen are kept: 0 (keep none) until the server keeps
    /// history, as only then is a TELL to an offline name stored.
    max_seen: usize,
}

impl KnownNames {
    /// `key` (lower case) is known.
    pub(super) fn contains(&self, key: &str) -> bool {
        match &self.accounts {
            Some(accounts) => accounts.contains(key),
            None => self.seen.contains_key(key),
        }
    }

    /// A session signed in with, or the log holds, the name `key`.
    fn saw(&mut self, key: &str) {
        if self.accounts.is_some() || self.max_seen == 0 {
            return;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(last) = self.seen.get_mut(key) {
            let key = self.by_stamp.remove(last).expect("seen names are stamped");
            *last = stamp;
            self.by_stamp.insert(stamp, key);
            return;
        }
        if self.seen.len() == self.max_seen
            && let Some((_, oldest)) = self.by_stamp.pop_first()
        {
            self.seen.remove(&oldest);
        }
        let key: Box<str> = key.into();
        self.seen.insert(key.clone(), stamp);
        self.by_stamp.insert(stamp, key);
    }
}

impl Router {
    /// The accounts' names (`--auth`), at start and after each reload: from
    /// now on a TELL may be stored for these (and a room's members) only.
    pub fn know_account_names<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let keys = names.into_iter().map(|n| n.to_ascii_lowercase().into());
        self.known.accounts = Some(keys.collect());
        self.known.seen.clear();
        self.known.by_stamp.clear();
    }

    /// Without accounts, with history: keep up to `max` names seen.
    pub(super) fn keep_names_seen(&mut self, max: usize) {
        self.known.max_seen = max;
    }

    /// A name the history's log holds (a sender's): known, as if seen
    /// since the start. Nothing with accounts, or before
    /// [`Router::keep_waiting`].
    pub fn saw_name(&mut self, name: &str) {
        if self.known.accounts.is_none() && self.known.max_seen > 0 {
            self.known.saw(&name.to_ascii_lowercase());
        }
    }

    /// The name `key` (lower case) is known: a TELL to it offline may be
    /// stored.
    pub(super) fn knows_name(&self, key: &str) -> bool {
        self.known.contains(key) || self.rooms.knows_name(key) || self.waiting.has_letters_for(key)
    }
}

#[cfg(test)]
mod tests {
    use super::KnownNames;

    fn seen(max: usize) -> KnownNames {
        KnownNames {
            max_seen: max,
            ..KnownNames::default()
        }
    }

    #[test]
    fn the_name_seen_longest_ago_is_forgotten_first() {
        let mut names = seen(2);
        names.saw("alice");
        names.saw("bob");
        names.saw("alice");
        names.saw("carol");
        assert!(names.contains("alice"));
        assert!(!names.contains("bob"));
        assert!(names.contains("carol"));
        assert_eq!(names.seen.len(), 2);
        assert_eq!(names.by_stamp.len(), 2);
    }

    #[test]
    fn nothing_is_kept_before_a_bound_is_set() {
        let mut names = seen(0);
        names.saw("alice");
        assert!(!names.contains("alice"));
        assert!(names.seen.is_empty());
    }

    #[test]
    fn with_accounts_only_the_accounts_count() {
        let mut names = seen(8);
        names.saw("alice");
        names.accounts = Some(["bob".into()].into_iter().collect());
        names.saw("carol");
        assert!(!names.contains("alice"));
        assert!(names.contains("bob"));
        assert!(!names.contains("carol"));
    }
}
