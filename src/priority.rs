//! The scheduling priority of the threads that work beside the event loop
//! (the sign-in verifier, the TLS handshake workers): lower than the
//! loop's, so that a storm of slow work takes only the CPU the loop leaves.

/// Gives the calling thread a lower scheduling priority (nice 10) than the
/// event loop: a storm of password guesses or TLS handshakes then takes
/// only the CPU the loop leaves, instead of half a core it shares with it.
/// On Linux the nice value belongs to the thread; failing to lower it only
/// costs that protection.
pub(crate) fn lower_thread_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
