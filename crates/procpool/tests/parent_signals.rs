//! Workers start with an empty signal mask and the default action for every signal,
//! whatever the parent blocked or ignored. (A test binary of its own: it changes the
//! process's signal dispositions.)

procpool::enable_test_support!();

use std::time::{Duration, Instant};

use procpool::{Error, Pool, TaskErrorKind};

/// Signals the parent blocks and ignores.
const SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGHUP];

/// In a worker: the signals among [`SIGNALS`] that are blocked, and those ignored.
fn blocked_and_ignored(_: ()) -> (Vec<i32>, Vec<i32>) {
    let mut blocked = Vec::new();
    let mut ignored = Vec::new();
    // SAFETY: the sets and sigaction are written by the calls before they are read.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
        if libc::sigismember(&set, libc::SIGPIPE) == 1 {
            blocked.push(libc::SIGPIPE);
        }
        for s in SIGNALS {
            if libc::sigismember(&set, s) == 1 {
                blocked.push(s);
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            libc::sigaction(s, std::ptr::null(), &mut sa);
            if sa.sa_sigaction == libc::SIG_IGN {
                ignored.push(s);
            }
        }
    }
    (blocked, ignored)
}

fn spin(_: ()) -> u64 {
    loop {
        std::hint::spin_loop();
    }
}

#[test]
fn workers_get_an_empty_signal_mask_and_default_actions() {
    // SAFETY: changes the dispositions and this thread's mask before any pool exists
    // (the other threads of the harness do not rely on these signals).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS.into_iter().chain([libc::SIGPIPE]) {
            libc::sigaddset(&mut set, s);
            if s != libc::SIGCHLD {
                libc::signal(s, libc::SIG_IGN);
            }
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let limit = Duration::from_millis(100);
    let grace = Duration::from_millis(1500);
    let pool = Pool::builder()
        .workers(1)
        .timeout(limit)
        .kill_grace(grace)
        .build()
        .unwrap();
    let (blocked, ignored) = pool.apply(blocked_and_ignored, ()).unwrap();
    assert!(
        blocked.is_empty(),
        "the worker inherited a mask blocking {blocked:?}"
    );
    assert!(
        ignored.is_empty(),
        "the worker inherited ignored signals {ignored:?}"
    );
    // A time limit's SIGTERM must arrive: the task ends at once, not after the grace.
    let t0 = Instant::now();
    let r = pool.apply(spin, ());
    let took = t0.elapsed();
    match r {
        Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::TimedOut { .. }) => {}
        other => panic!("expected a time-out, got {other:?}"),
    }
    assert!(
        took < limit + grace / 2,
        "the SIGTERM never reached the worker: the task took {took:?}"
    );
}
