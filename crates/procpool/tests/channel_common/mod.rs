//! Helpers of the channel tests: child processes that re-run the test binary with
//! channel descriptors inherited at 3, 4, ..., a watchdog, and descriptor counts.

#![allow(dead_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The environment variable that names a child's role.
pub(crate) const ROLE: &str = "PROCPOOL_CHANNEL_TEST_ROLE";

/// Starts the test binary again as a child running the test `entry` in role `role`, with
/// `fds` at descriptors 3, 4, ... in it.
pub(crate) fn start(entry: &str, role: &str, fds: &[BorrowedFd<'_>]) -> Child {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .stdout(Stdio::null());
    // SAFETY: only dup2 and fcntl (async-signal-safe) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = Vec::with_capacity(8);
            for &fd in &raw {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                if libc::dup2(h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// The descriptor a child got at `3 + i`.
pub(crate) fn inherited(i: i32) -> OwnedFd {
    // SAFETY: `start` put a descriptor there for this child, which owns it from now on.
    unsafe { OwnedFd::from_raw_fd(3 + i) }
}

/// Kills the whole test process if it is still running after `secs`: a hang fails the
/// test with a message instead of blocking the suite.
pub(crate) fn watchdog(secs: u64, what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(secs));
        eprintln!("watchdog: {what} still not done after {secs} s");
        std::process::abort();
    });
}

/// Kills `child` with SIGKILL and reaps it.
pub(crate) fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The open descriptors of this process, and how many of them are memfds.
pub(crate) fn fd_counts() -> (usize, usize) {
    let mut all = 0;
    let mut memfds = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        all += 1;
        if std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("memfd:")) {
            memfds += 1;
        }
    }
    (all, memfds)
}

/// How many memfd mappings this process has.
pub(crate) fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:"))
        .count()
}
