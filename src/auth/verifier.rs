//! The verifier: one thread that checks presented secrets so that the
//! event loop never runs argon2 (tens of milliseconds a password). The
//! loop [`submit`](Verifier::submit)s a request with a tag of its choosing
//! and never blocks: at [`capacity`](Verifier::new) requests not yet
//! drained the answer is [`Busy`] ("busy, try later" to the client).
//! After each check the thread calls the notify callback the loop gave
//! (a closure waking its `mio::Waker`), and the loop takes the outcomes
//! with [`drain_results`](Verifier::drain_results). The accounts can be
//! replaced (a reload) while the thread runs: each check uses the accounts
//! current when it starts.

use super::accounts::{Accounts, Identity, Refusal};
use super::secret::Credential;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, channel, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
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

type Shared = Arc<Mutex<Arc<Accounts>>>;

/// The verifier thread and its queues. Dropping it lets the thread finish
/// the check in progress and joins it.
pub struct Verifier {
    jobs: Option<SyncSender<Request>>,
    results: Receiver<Outcome>,
    accounts: Shared,
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
    /// thread after each outcome is ready.
    pub fn new(
        accounts: Accounts,
        capacity: usize,
        notify: impl Fn() + Send + 'static,
    ) -> std::io::Result<Verifier> {
        let capacity = capacity.max(1);
        let (jobs, job_rx) = sync_channel::<Request>(capacity);
        let (result_tx, results) = channel();
        let accounts: Shared = Arc::new(Mutex::new(Arc::new(accounts)));
        let shared = Arc::clone(&accounts);
        let thread = std::thread::Builder::new()
            .name("evchat-verifier".to_string())
            .spawn(move || {
                crate::priority::lower_thread_priority();
                for request in job_rx {
                    let current =
                        Arc::clone(&shared.lock().unwrap_or_else(PoisonError::into_inner));
                    let result =
                        current.verify(&request.name, request.secret.as_bytes(), SystemTime::now());
                    drop(request.secret);
                    if result_tx
                        .send(Outcome {
                            tag: request.tag,
                            result,
                        })
                        .is_err()
                    {
                        return;
                    }
                    notify();
                }
            })?;
        Ok(Verifier {
            jobs: Some(jobs),
            results,
            accounts,
            pending: 0,
            capacity,
            thread: Some(thread),
        })
    }

    /// Queues a check; never blocks. [`Busy`] when `capacity` requests are
    /// queued, in progress or done but not drained.
    pub fn submit(&mut self, request: Request) -> Result<(), Busy> {
        if self.pending >= self.capacity {
            return Err(Busy);
        }
        let jobs = self.jobs.as_ref().ok_or(Busy)?;
        match jobs.try_send(request) {
            Ok(()) => {
                self.pending += 1;
                Ok(())
            }
            // Full cannot happen (pending bounds the queue); Disconnected
            // only if the thread has died, and then nothing is checked.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    /// The outcomes ready now, in the order they were submitted.
    pub fn drain_results(&mut self) -> impl Iterator<Item = Outcome> + '_ {
        std::iter::from_fn(move || {
            let outcome = self.results.try_recv().ok()?;
            self.pending -= 1;
            Some(outcome)
        })
    }

    /// Requests submitted and not yet drained.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The accounts checks use now.
    pub fn accounts(&self) -> Arc<Accounts> {
        Arc::clone(&self.accounts.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the accounts (a reload); checks that start from now on use
    /// the new ones. Returns the old ones, for the caller to see which
    /// sessions lost their account or roles.
    pub fn replace_accounts(&self, accounts: Accounts) -> Arc<Accounts> {
        let mut current = self.accounts.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *current, Arc::new(accounts))
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop.
        self.jobs = None;
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
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

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

    fn wait_for(verifier: &mut Verifier, notified: &Receiver<()>, n: usize) -> Vec<Outcome> {
        for _ in 0..n {
            notified.recv_timeout(WAIT).expect("a notification");
        }
        verifier.drain_results().collect()
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
        for _ in 0..2 {
            notified.recv_timeout(WAIT).expect("a notification");
        }
        assert_eq!(verifier.submit(request(4, "alice", b"pw")), Err(Busy));
        let tags: Vec<u64> = verifier.drain_results().map(|o| o.tag).collect();
        assert_eq!(tags, [1, 2]);
        verifier.submit(request(5, "alice", b"pw")).unwrap();
        let outcomes = wait_for(&mut verifier, &notified, 1);
        assert_eq!(outcomes[0].tag, 5);
        assert!(outcomes[0].result.is_ok());
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
