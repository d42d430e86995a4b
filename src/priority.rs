//! The scheduling priority of the threads that work beside the event loop
//! (the sign-in verifier, the TLS handshake workers): lower than the
//! loop's, so that a storm of slow work cannot take the loop's core from it.

/// Gives the calling thread a lower scheduling priority (nice 10) than the
/// event loop: a storm of password guesses then gets a smaller share of a
/// core it shares with the loop (about a tenth while both want it), not
/// half. A check takes milliseconds, so a share this size still answers an
/// honest sign-in on a busy machine within a second. On Linux the nice
/// value belongs to the thread; failing to lower it only costs that
/// protection.
pub(crate) fn lower_thread_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Puts the calling thread in the idle scheduling class (`SCHED_IDLE`): it
/// runs on CPU no ordinary thread wants, and an ordinary thread waking up
/// (the loop) takes the core from it at once. Nice 10 was not enough for
/// the TLS handshake workers: on a core shared with the loop, a flood of
/// ClientHellos took a third of it and the connected clients' throughput
/// fell to 0.6 of a quiet run; in this class it stays above 0.9
/// (BENCHMARKS.md, "A handshake flood, and handshakes at idle priority").
/// A handshake is about 0.1 ms of work, so one still completes within tens
/// of milliseconds on a core kept busy (the class keeps a minimal share).
/// If the kernel refuses the class, nice 19 is the next best thing.
pub(crate) fn idle_thread_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param
    // that the call only reads.
    let refused = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0;
    if refused {
        // SAFETY: as in lower_thread_priority.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's (nice, scheduling policy) from
    /// `/proc/thread-self/stat` (fields 19 and 41, counted after the
    /// command name, which may hold spaces).
    fn nice_and_policy() -> (i64, u32) {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc is mounted");
        let after_name = &stat[stat.rfind(')').expect("a command name") + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        // Field 3 (state) is the first after the name.
        (
            fields[19 - 3].parse().expect("nice"),
            fields[41 - 3].parse().expect("policy"),
        )
    }

    /// What `lower` leaves on a new thread, and that this thread kept its own.
    fn on_a_new_thread(lower: fn()) -> (i64, u32) {
        let before = nice_and_policy();
        let after = std::thread::spawn(move || {
            lower();
            nice_and_policy()
        })
        .join()
        .unwrap();
        assert_eq!(nice_and_policy(), before, "only the new thread changed");
        after
    }

    #[test]
    fn a_lowered_thread_runs_at_nice_10() {
        assert_eq!(
            on_a_new_thread(lower_thread_priority),
            (10, libc::SCHED_OTHER as u32)
        );
    }

    #[test]
    fn an_idle_thread_is_in_the_idle_class() {
        assert_eq!(
            on_a_new_thread(idle_thread_priority).1,
            libc::SCHED_IDLE as u32
        );
    }
}
