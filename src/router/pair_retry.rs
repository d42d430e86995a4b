//! Pair notices sent again (CLUSTER.md, "Pairs across nodes"): a PAIR,
//! PAIRED, DISMISS, UNPAIRED or UNPAIR the engine could not carry (its
//! queue full, Redis unreachable, the batch reaching no subscriber) is
//! handed back here by the loop and sent again every [`RETRY_EVERY`] until
//! the engine carries it, it is moot (the other node reaped, this node
//! fenced, a PAIR's OI given up), or [`RETRY_FOR`] has passed since it
//! first failed. Every notice is idempotent at its receiver, so a copy that
//! did arrive after all does no harm.

use super::remote::{NodeRef, PairNotice};
use super::{Outbox, Router};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::warn;

/// How long after a failure a notice is sent again.
pub(super) const RETRY_EVERY: Duration = Duration::from_millis(100);

/// How long a notice is retried: past the bound for a dead node's
/// ids to be free (10 s), a node that could not be reached has been reaped,
/// or this one fenced, and the notice is moot either way.
pub(super) const RETRY_FOR: Duration = Duration::from_secs(10);

/// At most this many notices wait to be sent again; more are given up
/// with a warning (memory stays bounded while the engine is away).
pub(super) const MAX_RETRIES: usize = 4096;

/// The notices waiting to be sent again, and when each first failed.
#[derive(Debug, Default)]
pub(super) struct PairRetries {
    /// Due to go again at `.2`: node, notice.
    due: Vec<(NodeRef, PairNotice, Instant)>,
    /// When each notice first failed (kept across its resends, so that the
    /// bound counts from the first loss, not the last).
    since: HashMap<(NodeRef, PairNotice), Instant>,
}

impl PairRetries {
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.iter().map(|&(_, _, at)| at).min()
    }

    /// `node` is gone: nothing more is sent to it.
    pub(super) fn forget_node(&mut self, node: NodeRef) {
        self.due.retain(|&(n, _, _)| n != node);
        self.since.retain(|&(n, _), _| n != node);
    }

    pub(super) fn clear(&mut self) {
        self.due.clear();
        self.since.clear();
    }
}

impl Router {
    /// The engine could not carry these notices to `node`: each is sent
    /// again later, unless moot or retried for [`RETRY_FOR`] already.
    pub fn pair_notices_failed(&mut self, node: NodeRef, notices: &[PairNotice], now: Instant) {
        let retries = &mut self.remote.retries;
        // A notice past its bound keeps its entry a while longer, so that
        // its last resend failing again is given up, not started afresh;
        // a resend fails (or not) well within that.
        retries
            .since
            .retain(|_, &mut first| now.duration_since(first) < 2 * RETRY_FOR);
        for &notice in notices {
            let first = *retries.since.entry((node, notice)).or_insert(now);
            if now.duration_since(first) >= RETRY_FOR {
                warn!(node, ?notice, "pair notice given up after retrying");
                continue;
            }
            if retries.due.len() >= MAX_RETRIES || retries.since.len() > MAX_RETRIES {
                warn!(node, ?notice, "too many pair notices to retry: given up");
                retries.since.remove(&(node, notice));
                continue;
            }
            retries.due.push((node, notice, now + RETRY_EVERY));
        }
        if let Some(due) = self.remote.retries.next_due() {
            self.note_deadline(due);
        }
    }

    /// Sends again the notices due by `now` that still matter.
    pub(super) fn resend_pair_notices(&mut self, now: Instant, out: &mut impl Outbox) {
        if self.remote.retries.due.is_empty() {
            return;
        }
        let due = std::mem::take(&mut self.remote.retries.due);
        let (now_due, later): (Vec<_>, Vec<_>) = due.into_iter().partition(|&(_, _, at)| at <= now);
        self.remote.retries.due = later;
        for (node, notice, _) in now_due {
            if !self.remote.pair_notice_matters(&notice) {
                self.remote.retries.since.remove(&(node, notice));
                continue;
            }
            out.pair_notice(node, notice);
        }
    }
}
