//! The verifier: one thread that checks presented secrets so that the
//! event loop never runs argon2 (tens of milliseconds a password). The
//! loop [`submit`](Verifier::submit)s a request with a tag of its choosing
//! and never blocks: at [`capacity`](Verifier::new) requests not yet
//! drained the answer is [`Busy`] ("busy, try later" to the client).
//!
//! The hand-off is batched both ways, since a token check (one SHA-256)
//! costs far less than a thread wake-up: submitted requests wait in the
//! loop's own batch until [`hand_off`](Verifier::hand_off) (once a turn)
//! moves them all under one lock and wakes the thread only if it sleeps;
//! the thread takes every queued request at once, and after each check
//! calls the notify callback the loop gave (a closure waking its
//! `mio::Waker`) only when its outcome is the first the loop has not yet
//! taken. The loop takes all outcomes at once with
//! [`drain_results`](Verifier::drain_results). The accounts can be
//! replaced (a reload) while the thread runs: each check uses the accounts
//! current when it starts.

use super::accounts::{Accounts, Identity, Refusal};
use super::secret::Credential;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::SystemTime;

/// A sign-in to check.
#[derive(Debug)]
pub struct Request {
    /// The caller's own reference (e.g. its connection token and
    /// generation); handed back in the [`Outcome`].
    pub tag: u64,
    /// The account name as presented.
    pub name: String,
    /// The secret as presented; its `Debug` does not show it.
    pub secret: Credential,
}

/// A checked sign-in.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub tag: u64,
    pub result: Result<Identity, Refusal>,
}

/// The queue is full: the request was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("too many sign-ins are being checked; try later")]
pub struct Busy;

/// What the loop and the thread exchange, under one lock.
#[derive(Default)]
struct Exchange {
    /// Handed off and not yet taken by the thread.
    jobs: Vec<Request>,
    /// Checked and not yet drained by the loop.
    results: Vec<Outcome>,
    /// The thread waits on `work` (a hand-off must wake it).
    sleeping: bool,
    /// The verifier is being dropped: the thread ends after its check.
    closed: bool,
}

struct Shared {
    exchange: Mutex<Exchange>,
    work: Condvar,
    accounts: Mutex<Arc<Accounts>>,
}

impl Shared {
    fn exchange(&self) -> MutexGuard<'_, Exchange> {
        self.exchange.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn accounts(&self) -> MutexGuard<'_, Arc<Accounts>> {
        self.accounts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The verifier thread and its queues. Dropping it lets the thread finish
/// the check in progress and joins it.
pub struct Verifier {
    shared: Arc<Shared>,
    /// Submitted this turn, not yet handed off.
    batch: Vec<Request>,
    /// Outcomes taken from the thread and being drained; kept to reuse its
    /// allocation.
    taken: Vec<Outcome>,
    /// Submitted and not yet drained: what [`Busy`] is decided on, so that
    /// requests and outcomes together never exceed the capacity.
    pending: usize,
    capacity: usize,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("pending", &self.pending)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Starts the thread with these accounts, taking at most `capacity`
    /// (at least 1) requests not yet drained. `notify` is called on the
    /// thread when an outcome is ready and the loop has none waiting.
    pub fn new(
        accounts: Accounts,
        capacity: usize,
        notify: impl Fn() + Send + 'static,
    ) -> std::io::Result<Verifier> {
        let capacity = capacity.max(1);
        let shared = Arc::new(Shared {
            exchange: Mutex::new(Exchange::default()),
            work: Condvar::new(),
            accounts: Mutex::new(Arc::new(accounts)),
        });
        let on_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("evchat-verifier".to_string())
            .spawn(move || {
                crate::priority::lower_thread_priority();
                check_until_closed(&on_thread, &notify);
            })?;
        Ok(Verifier {
            shared,
            batch: Vec::new(),
            taken: Vec::new(),
            pending: 0,
            capacity,
            thread: Some(thread),
        })
    }

    /// Takes a check for the next [`hand_off`](Verifier::hand_off); never
    /// blocks. [`Busy`] when `capacity` requests are waiting, in progress
    /// or done but not drained.
    pub fn submit(&mut self, request: Request) -> Result<(), Busy> {
        if self.pending >= self.capacity {
            return Err(Busy);
        }
        self.batch.push(request);
        self.pending += 1;
        Ok(())
    }

    /// Gives the thread every request submitted since the last hand-off,
    /// waking it only if it sleeps. Called once a turn.
    pub fn hand_off(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let wake = {
            let mut exchange = self.shared.exchange();
            exchange.jobs.append(&mut self.batch);
            exchange.sleeping
        };
        if wake {
            self.shared.work.notify_one();
        }
    }

    /// The outcomes ready now, in the order they were submitted.
    pub fn drain_results(&mut self) -> impl Iterator<Item = Outcome> + '_ {
        if self.taken.is_empty() {
            std::mem::swap(&mut self.taken, &mut self.shared.exchange().results);
        }
        self.pending -= self.taken.len();
        self.taken.drain(..)
    }

    /// Requests submitted and not yet drained.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The accounts checks use now.
    pub fn accounts(&self) -> Arc<Accounts> {
        Arc::clone(&self.shared.accounts())
    }

    /// Replaces the accounts (a reload); checks that start from now on use
    /// the new ones. Returns the old ones, for the caller to see which
    /// sessions lost their account or roles.
    pub fn replace_accounts(&self, accounts: Accounts) -> Arc<Accounts> {
        std::mem::replace(&mut *self.shared.accounts(), Arc::new(accounts))
    }
}

/// The thread's loop: sleeps until requests are handed off, takes them all,
/// checks each and publishes its outcome at once (a password's verdict
/// does not wait for the rest of the batch).
fn check_until_closed(shared: &Shared, notify: &dyn Fn()) {
    let mut jobs = Vec::new();
    loop {
        {
            let mut exchange = shared.exchange();
            while exchange.jobs.is_empty() && !exchange.closed {
                exchange.sleeping = true;
                exchange = shared
                    .work
                    .wait(exchange)
                    .unwrap_or_else(PoisonError::into_inner);
                exchange.sleeping = false;
            }
            if exchange.closed {
                return;
            }
            std::mem::swap(&mut jobs, &mut exchange.jobs);
        }
        for request in jobs.drain(..) {
            let current = Arc::clone(&shared.accounts());
            let result =
                current.verify(&request.name, request.secret.as_bytes(), SystemTime::now());
            drop(request.secret);
            let first = {
                let mut exchange = shared.exchange();
                if exchange.closed {
                    return;
                }
                exchange.results.push(Outcome {
                    tag: request.tag,
                    result,
                });
                exchange.results.len() == 1
            };
            // Outcomes already waiting mean the loop was woken and has not
            // drained yet: it will take this one with them.
            if first {
                notify();
            }
        }
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.shared.exchange().closed = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::accounts::{Account, Cause};
    use super::super::name::Name;
    use super::super::roles::Roles;
    use super::super::secret::Secret;
    use super::super::secret::tests::cheap;
    use super::*;
    use std::sync::mpsc::{Receiver, channel};
    use std::time::{Duration, Instant};

    /// Generous: a bound on a wait, never a measure of speed.
    const WAIT: Duration = Duration::from_secs(30);

    fn accounts_with(name: &str, secret: Secret) -> Accounts {
        let mut accounts = Accounts::default();
        accounts.upsert(Account {
            name: Name::new(name).unwrap(),
            roles: Roles::VIEW,
            secret,
            expires: None,
        });
        accounts
    }

    fn request(tag: u64, name: &str, secret: &[u8]) -> Request {
        Request {
            tag,
            name: name.to_string(),
            secret: Credential::new(secret.to_vec()),
        }
    }

    /// A verifier whose notifications arrive on a channel.
    fn started(accounts: Accounts, capacity: usize) -> (Verifier, Receiver<()>) {
        let (tx, rx) = channel();
        let verifier = Verifier::new(accounts, capacity, move || {
            let _ = tx.send(());
        })
        .unwrap();
        (verifier, rx)
    }

    /// Hands off what was submitted and collects `n` outcomes, each drain
    /// after a notification: a missed wake-up fails here.
    fn wait_for(verifier: &mut Verifier, notified: &Receiver<()>, n: usize) -> Vec<Outcome> {
        verifier.hand_off();
        let mut outcomes = Vec::new();
        while outcomes.len() < n {
            notified.recv_timeout(WAIT).expect("a notification");
            outcomes.extend(verifier.drain_results());
        }
        outcomes
    }

    /// Waits, without draining, until `n` outcomes are ready.
    fn wait_ready(verifier: &Verifier, n: usize) {
        let deadline = Instant::now() + WAIT;
        while verifier.shared.exchange().results.len() < n {
            assert!(Instant::now() < deadline, "{n} outcomes within {WAIT:?}");
            std::thread::yield_now();
        }
    }

    #[test]
    fn outcomes_come_back_with_their_tags_in_order() {
        let token = Credential::generate_token().unwrap();
        let (mut verifier, notified) = started(accounts_with("bot", Secret::for_token(&token)), 4);
        verifier
            .submit(request(7, "bot", token.as_bytes()))
            .unwrap();
        verifier.submit(request(8, "bot", b"evt_wrong")).unwrap();
        verifier
            .submit(request(9, "nobody", b"a password"))
            .unwrap();
        let outcomes = wait_for(&mut verifier, &notified, 3);
        let summary: Vec<_> = outcomes
            .iter()
            .map(|o| {
                (
                    o.tag,
                    o.result
                        .as_ref()
                        .map(|i| i.name.to_string())
                        .map_err(|r| r.cause),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (7, Ok("bot".to_string())),
                (8, Err(Cause::WrongSecret)),
                (9, Err(Cause::UnknownAccount)),
            ]
        );
        assert_eq!(verifier.pending(), 0);
    }

    #[test]
    fn a_full_queue_is_busy_and_never_blocks() {
        let password = Credential::new(b"pw".to_vec());
        let secret = Secret::for_password_with(&password, cheap()).unwrap();
        let (mut verifier, notified) = started(accounts_with("alice", secret), 2);
        verifier.submit(request(1, "alice", b"pw")).unwrap();
        verifier.submit(request(2, "alice", b"pw")).unwrap();
        assert_eq!(verifier.submit(request(3, "alice", b"pw")), Err(Busy));
        // Checked but not drained still counts.
        verifier.hand_off();
        wait_ready(&verifier, 2);
        assert_eq!(verifier.submit(request(4, "alice", b"pw")), Err(Busy));
        let tags: Vec<u64> = verifier.drain_results().map(|o| o.tag).collect();
        assert_eq!(tags, [1, 2]);
        verifier.submit(request(5, "alice", b"pw")).unwrap();
        let outcomes = wait_for(&mut verifier, &notified, 1);
        assert_eq!(outcomes[0].tag, 5);
        assert!(outcomes[0].result.is_ok());
    }

    #[test]
    fn a_batch_wakes_the_loop_once_until_it_drains() {
        let token = Credential::generate_token().unwrap();
        let (mut verifier, notified) = started(accounts_with("bot", Secret::for_token(&token)), 8);
        for tag in 0..5 {
            verifier
                .submit(request(tag, "bot", token.as_bytes()))
                .unwrap();
        }
        verifier.hand_off();
        wait_ready(&verifier, 5);
        assert_eq!(
            notified.try_iter().count(),
            1,
            "one wake-up for five outcomes"
        );
        let tags: Vec<u64> = verifier.drain_results().map(|o| o.tag).collect();
        assert_eq!(tags, [0, 1, 2, 3, 4]);
        assert_eq!(verifier.pending(), 0);
        // Drained: the next outcome wakes the loop again.
        verifier
            .submit(request(5, "bot", token.as_bytes()))
            .unwrap();
        assert_eq!(wait_for(&mut verifier, &notified, 1)[0].tag, 5);
    }

    #[test]
    fn replaced_accounts_apply_to_later_checks() {
        let token = Credential::generate_token().unwrap();
        let (mut verifier, notified) = started(accounts_with("bot", Secret::for_token(&token)), 4);
        verifier
            .submit(request(1, "bot", token.as_bytes()))
            .unwrap();
        assert!(wait_for(&mut verifier, &notified, 1)[0].result.is_ok());
        let old = verifier.replace_accounts(Accounts::default());
        assert_eq!(old.len(), 1);
        assert!(verifier.accounts().is_empty());
        verifier
            .submit(request(2, "bot", token.as_bytes()))
            .unwrap();
        let outcome = &wait_for(&mut verifier, &notified, 1)[0];
        assert_eq!(
            outcome.result.as_ref().unwrap_err().cause,
            Cause::UnknownAccount
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let r = request(1, "bot", b"evt_topsecret");
        assert!(!format!("{r:?}").contains("topsecret"));
    }
}
