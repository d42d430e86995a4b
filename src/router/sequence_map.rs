//! A map keyed by this router's own sequence numbers (the relays from other
//! nodes being delivered here, numbered as they arrive, and the relays it
//! sent, awaiting their ACK). No peer chooses these keys, so they need no
//! hash that resists flooding: on the two-node path SipHash on the first
//! took about a fifth of the exhibitors' node's instructions per delivery,
//! and a `BTreeMap` for the second about 430 a delivery on the emitters'
//! node (CLUSTER.md, "Numbers"); one multiplication does instead.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` from a sequence number to `V`, hashed by [`SequenceHasher`].
pub(super) type SequenceMap<V> = HashMap<u64, V, BuildHasherDefault<SequenceHasher>>;

/// Fibonacci hashing of a `u64`: consecutive numbers land in different
/// buckets (the low bits) and differ in the top bits hashbrown uses to
/// filter a group's slots.
#[derive(Default)]
pub(super) struct SequenceHasher(u64);

const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for SequenceHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(FIBONACCI);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(FIBONACCI);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_numbers_spread_over_buckets_and_tag_bits() {
        let build = BuildHasherDefault::<SequenceHasher>::default();
        let hashes: Vec<u64> = (1000..2024u64).map(|n| build.hash_one(n)).collect();
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 1023).collect();
        assert_eq!(buckets.len(), 1024, "a bucket each in a table of 1024");
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(tags.len() > 100, "only {} of 128 tags", tags.len());
    }
}
