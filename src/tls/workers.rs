//! The TLS handshake workers: a few threads (`server --tls-workers`) that
//! run the expensive steps of server handshakes (the certificate's
//! signature, the key exchange) so that the event loop does not. The loop
//! [`submit`](Workers::submit)s a job with a tag of its choosing and never
//! blocks: at [`capacity`](Workers::new) jobs submitted and not yet
//! drained, the job is handed back and the caller keeps it until
//! [`has_room`](Workers::has_room). After each result a worker calls the
//! notify callback the loop gave (a closure waking its `mio::Waker`), and
//! the loop takes the results with [`drain`](Workers::drain). A job that
//! panics comes back as [`Panicked`] and its worker goes on, so no caller
//! waits for a result that never comes. The pool is generic over the job
//! so that its tests can hand it jobs that panic; the server's jobs are
//! [`HandshakeJob`](super::HandshakeJob)s.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, channel, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// A job panicked on its worker; what it held is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the TLS handshake worker failed on this connection's handshake")]
pub struct Panicked;

/// A result as the loop drains it: the job's tag, and what the job came to.
pub type Done<R> = (u64, Result<R, Panicked>);

/// The worker threads and their two queues. Dropping it lets each thread
/// finish the job in progress and joins them.
pub struct Workers<J, R> {
    jobs: Option<SyncSender<(u64, J)>>,
    results: Receiver<Done<R>>,
    /// Submitted and not yet drained: what a refusal is decided on, so that
    /// jobs and results together never exceed the capacity.
    pending: usize,
    capacity: usize,
    threads: Vec<JoinHandle<()>>,
}

impl<J, R> std::fmt::Debug for Workers<J, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.threads.len())
            .field("pending", &self.pending)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<J: Send + 'static, R: Send + 'static> Workers<J, R> {
    /// Starts `threads` (at least 1) workers running `work`, taking at most
    /// `capacity` (at least 1) jobs not yet drained. `notify` is called on
    /// a worker after each result is ready. The workers run at a lower
    /// priority than the loop (the idle scheduling class).
    pub fn new(
        threads: usize,
        capacity: usize,
        work: fn(J) -> R,
        notify: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<Workers<J, R>> {
        let capacity = capacity.max(1);
        let (jobs, job_rx) = sync_channel::<(u64, J)>(capacity);
        let (result_tx, results) = channel();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let notify = Arc::new(notify);
        let mut pool = Workers {
            jobs: Some(jobs),
            results,
            pending: 0,
            capacity,
            threads: Vec::new(),
        };
        for n in 0..threads.max(1) {
            let job_rx = Arc::clone(&job_rx);
            let result_tx = result_tx.clone();
            let notify = Arc::clone(&notify);
            let thread = std::thread::Builder::new()
                .name(format!("evchat-tls-{n}"))
                .spawn(move || {
                    crate::priority::idle_thread_priority();
                    loop {
                        // The lock is held only while waiting for a job.
                        let next = job_rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        let Ok((tag, job)) = next else {
                            return;
                        };
                        let result = catch_unwind(AssertUnwindSafe(|| work(job)));
                        if result_tx.send((tag, result.map_err(|_| Panicked))).is_err() {
                            return;
                        }
                        notify();
                    }
                });
            match thread {
                Ok(thread) => pool.threads.push(thread),
                // Dropping the pool ends the threads already started.
                Err(e) => return Err(e),
            }
        }
        Ok(pool)
    }

    /// Queues a job; never blocks. The job comes back when `capacity` jobs
    /// are queued, in progress or done but not drained (or, should every
    /// worker be gone, always): the caller keeps it and tries again later.
    pub fn submit(&mut self, tag: u64, job: J) -> Result<(), J> {
        if !self.has_room() {
            return Err(job);
        }
        let Some(jobs) = self.jobs.as_ref() else {
            return Err(job);
        };
        match jobs.try_send((tag, job)) {
            Ok(()) => {
                self.pending += 1;
                Ok(())
            }
            Err(TrySendError::Full((_, job)) | TrySendError::Disconnected((_, job))) => Err(job),
        }
    }

    /// Whether a job submitted now would be taken.
    pub fn has_room(&self) -> bool {
        self.pending < self.capacity
    }

    /// The results ready now.
    pub fn drain(&mut self) -> impl Iterator<Item = Done<R>> + '_ {
        std::iter::from_fn(move || {
            let done = self.results.try_recv().ok()?;
            self.pending -= 1;
            Some(done)
        })
    }

    /// Jobs submitted and not yet drained.
    pub fn pending(&self) -> usize {
        self.pending
    }
}

impl<J, R> Drop for Workers<J, R> {
    fn drop(&mut self) {
        // Closing the queue ends each thread's loop.
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

    /// Generous: a bound on a wait, never a measure of speed.
    const WAIT: Duration = Duration::from_secs(30);

    /// Doubles its job; panics on 0.
    fn double_or_panic(n: u32) -> u32 {
        assert!(n != 0, "a job that panics");
        n * 2
    }

    fn started(threads: usize, capacity: usize) -> (Workers<u32, u32>, Receiver<()>) {
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let pool = Workers::new(threads, capacity, double_or_panic, move || {
            let _ = tx.lock().unwrap().send(());
        })
        .unwrap();
        (pool, rx)
    }

    fn wait_for(pool: &mut Workers<u32, u32>, notified: &Receiver<()>, n: usize) -> Vec<Done<u32>> {
        for _ in 0..n {
            notified.recv_timeout(WAIT).expect("a notification");
        }
        let mut done: Vec<_> = pool.drain().collect();
        done.sort_by_key(|(tag, _)| *tag);
        done
    }

    #[test]
    fn results_come_back_with_their_tags_from_every_worker() {
        let (mut pool, notified) = started(3, 8);
        for n in 1..=6 {
            pool.submit(u64::from(n) + 100, n).unwrap();
        }
        let done = wait_for(&mut pool, &notified, 6);
        let want: Vec<Done<u32>> = (1..=6).map(|n| (u64::from(n) + 100, Ok(n * 2))).collect();
        assert_eq!(done, want);
        assert_eq!(pool.pending(), 0);
    }

    #[test]
    fn a_full_pool_hands_the_job_back_and_never_blocks() {
        let (mut pool, notified) = started(1, 2);
        pool.submit(1, 10).unwrap();
        pool.submit(2, 20).unwrap();
        assert!(!pool.has_room());
        assert_eq!(pool.submit(3, 30), Err(30), "the job comes back whole");
        // Done but not drained still counts.
        for _ in 0..2 {
            notified.recv_timeout(WAIT).expect("a notification");
        }
        assert_eq!(pool.submit(4, 40), Err(40));
        let tags: Vec<u64> = pool.drain().map(|(tag, _)| tag).collect();
        assert_eq!(tags, [1, 2]);
        assert!(pool.has_room());
        pool.submit(5, 50).unwrap();
        assert_eq!(wait_for(&mut pool, &notified, 1), [(5, Ok(100))]);
    }

    /// A panicking job must not wedge whoever waits for it: it comes back
    /// as `Panicked`, and the worker (the only one) serves the next job.
    #[test]
    fn a_job_that_panics_comes_back_as_panicked_and_its_worker_goes_on() {
        let (mut pool, notified) = started(1, 4);
        pool.submit(1, 0).unwrap();
        pool.submit(2, 7).unwrap();
        let done = wait_for(&mut pool, &notified, 2);
        assert_eq!(done, [(1, Err(Panicked)), (2, Ok(14))]);
        assert_eq!(pool.pending(), 0);
    }
}
