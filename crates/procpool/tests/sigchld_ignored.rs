//! A parent that sets SIGCHLD to `SIG_IGN` (the kernel then reaps its children itself
//! and drops their status): a worker's death still names its real cause where the
//! kernel keeps it (Linux 6.15 and later, on the process descriptor), and otherwise says
//! plainly that the cause is unknown, never a made-up exit code. (A test binary of its
//! own: it changes a process-wide disposition.)

procpool::enable_test_support!();

use procpool::{Death, Error, Pool, TaskErrorKind};

fn die(code: i32) -> u64 {
    if code < 0 {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain calls on this process with a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
        std::process::abort();
    }
    std::process::exit(code)
}

fn death(r: Result<u64, Error>) -> Death {
    match r {
        Err(Error::Task(t)) => match t.kind() {
            TaskErrorKind::WorkerDied { death } => {
                let text = t.to_string();
                assert!(!text.contains("code -1"), "{text}");
                *death
            }
            other => panic!("expected WorkerDied, got {other}"),
        },
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

#[test]
fn deaths_report_their_cause_or_say_it_is_unknown() {
    // SAFETY: sets a disposition before any pool exists.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let pool = Pool::builder().workers(1).build().unwrap();
    let aborted = death(pool.apply(die, -1));
    let exited = death(pool.apply(die, 3));
    let one_off = death(procpool::spawn(die, 5).unwrap().join());
    let all = [aborted, exited, one_off];
    eprintln!("deaths with SIGCHLD ignored: {all:?}");
    if all.contains(&Death::Unknown) {
        assert_eq!(all, [Death::Unknown; 3], "{all:?}");
        let text = Death::Unknown.to_string();
        assert!(text.contains("SIGCHLD"), "{text}");
    } else {
        assert_eq!(
            all,
            [Death::Signal(libc::SIGABRT), Death::Exit(3), Death::Exit(5)]
        );
    }
    assert_eq!(
        pool.apply(|x: u64| x + 1, 1).unwrap(),
        2,
        "the pool goes on"
    );
}
