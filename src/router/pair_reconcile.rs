//! Pairs across nodes made good from the id replica (CLUSTER.md, "Pair
//! notices lost silently"): a DISMISS, UNPAIRED or UNPAIR lost without a
//! word (a partition between two nodes that keep their leases) carries no
//! acknowledgement of its own, but the id it is about is released in the
//! engine, and every node hears that on the change channel (or reads it
//! in the id table again after a lost subscription). So:
//! - an emitter here whose exhibitor's id its node no longer holds is
//!   unpaired at once (all UNPAIRED would do);
//! - an exhibitor here whose emitter's id its node no longer holds is
//!   dismissed (FLW, rule 6, as DISMISS does) unless a DISMISS or UNPAIR
//!   settles the pair within [`NOTICE_GRACE`]. The emitter's node releases
//!   the id just before it sends the notice, and only the notice says
//!   whether the emitter left (FLW) or its OI was given up (the exhibitor
//!   stays), so the release alone waits for it a while.

use super::remote::NodeRef;
use super::{ConnId, Router};
use crate::proto::{ClientId, is_exhibitor_id};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::warn;

/// How long an exhibitor whose emitter's id was freed waits for the
/// DISMISS or UNPAIR that follows the release on the same connection to
/// Redis (normally within the same turn): past this it is taken as lost.
/// Within the 10 s a DISMISS the engine refused is retried for, so such a
/// retry may come after the grace; it then finds the pair settled.
pub(super) const NOTICE_GRACE: Duration = Duration::from_secs(2);

/// Exhibitors here whose emitter's id its node released, awaiting the
/// notice that says why.
#[derive(Debug, Default)]
pub(super) struct Orphans {
    /// By the exhibitor's connection (so at most one each: bounded by the
    /// sessions): the emitter's node and id, and when the exhibitor is
    /// dismissed if no notice has settled the pair by then.
    due: HashMap<ConnId, (NodeRef, ClientId, Instant)>,
}

impl Orphans {
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.due.values().map(|&(_, _, at)| at).min()
    }

    /// The pair of the exhibitor `conn` was settled (a notice came, it was
    /// paired again, or it is gone): nothing waits for it.
    pub(super) fn settled(&mut self, conn: ConnId) {
        self.due.remove(&conn);
    }

    pub(super) fn clear(&mut self) {
        self.due.clear();
    }
}

impl Router {
    /// `node` no longer holds `id` (the engine freed it, or the id table
    /// read again lacks it): a pair across nodes whose other half `id` was
    /// is reconciled.
    pub(super) fn pair_half_freed(&mut self, id: ClientId, node: NodeRef, now: Instant) {
        let remote = &mut self.remote;
        if is_exhibitor_id(id) {
            if !remote.paired_out.is_empty() {
                remote.paired_out.retain(|_, half| *half != (node, id));
            }
            return;
        }
        let Some(&(holder, exhibitor)) = remote.paired_in.get(&id) else {
            return;
        };
        if holder == node {
            let at = now + NOTICE_GRACE;
            remote.orphans.due.insert(exhibitor, (node, id, at));
            self.note_deadline(at);
        }
    }

    /// Exhibitors whose emitter's id was freed and whose pair no notice
    /// settled within the grace are dismissed, as a DISMISS would.
    pub(super) fn dismiss_orphans(&mut self, now: Instant, out: &mut impl super::Outbox) {
        let orphans = &mut self.remote.orphans.due;
        if orphans.is_empty() {
            return;
        }
        let mut due: Vec<ConnId> = orphans
            .iter()
            .filter(|&(_, &(_, _, at))| at <= now)
            .map(|(&conn, _)| conn)
            .collect();
        due.sort_unstable();
        for conn in due {
            let Some((node, emitter, _)) = self.remote.orphans.due.remove(&conn) else {
                continue;
            };
            if self.remote.paired_in_by_exhibitor.get(&conn) != Some(&(node, emitter)) {
                continue;
            }
            self.remote.paired_in_by_exhibitor.remove(&conn);
            self.remote.paired_in.remove(&emitter);
            warn!(
                conn,
                emitter,
                node,
                "no DISMISS for an emitter whose id is freed: its exhibitor is dismissed"
            );
            if self.session(conn).is_some_and(|s| !s.leaving) {
                self.dismiss(conn, now, out);
            }
        }
    }
}
