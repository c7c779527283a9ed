//! Agents on rank 0's host watch rank 0's process, so that the job ends when rank 0 leaves
//! without `MPI_Finalize` (`os._exit`, `std::process::exit` from an exit handler,
//! `libc::_exit`).
//!
//! Why: under ULFM (`mpirun --with-ft ulfm`) Open MPI reports a rank killed by a signal
//! (its next message fails with `MPIX_ERR_PROC_FAILED`), but not a rank that exits with a
//! code without finalizing; the agents would then wait for rank 0 for ever. Without ULFM
//! the launcher ends the job itself in both cases.
//!
//! How: rank 0 sends each agent who it is ([`Caller`]: boot id, pid namespace, pid and
//! start time) right after the agent's hello. An agent that shares rank 0's boot and pid
//! namespace (the same host, the same container) opens a pidfd on it, checks that it is
//! still the same process (its start time), and a thread waits on the pidfd; the agent's
//! loop ends the job when it fires. A pidfd fires only when the process has ended: no
//! false alarm under any load, and no reuse of the pid can fool it.
//!
//! Agents on other hosts cannot watch a process there; for them see the README's MPI
//! section (the limit, and the failure detector that closes it at a cost).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Who rank 0 is, as far as an agent on its host needs to find its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// `/proc/sys/kernel/random/boot_id`: the same for every process of one boot of one
    /// machine (host names can repeat across machines).
    pub(crate) boot_id: String,
    /// Device and inode of `/proc/self/ns/pid`: pids mean the same only in one namespace.
    pub(crate) pid_ns: (u64, u64),
    pub(crate) pid: u32,
    /// Start time (clock ticks since boot, `/proc/PID/stat` field 22).
    pub(crate) start: u64,
}

/// Set by the watching thread when rank 0's process has ended.
static GONE: AtomicBool = AtomicBool::new(false);

/// Whether rank 0's process was seen to end (only on its host, once [`watch`] started).
pub(crate) fn gone() -> bool {
    GONE.load(Ordering::Relaxed)
}

/// This process, as [`Caller`] (fields it cannot read are empty: then no agent matches).
pub(crate) fn me() -> Caller {
    let pid = std::process::id();
    Caller {
        boot_id: boot_id(),
        pid_ns: pid_ns(),
        pid,
        start: start_time(pid).unwrap_or(0),
    }
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn pid_ns() -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map_or((0, 0), |m| (m.dev(), m.ino()))
}

/// A process's start time (`/proc/PID/stat` field 22), `None` when it is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (the command) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// On an agent: starts watching rank 0's process when it runs in this machine's boot and
/// this pid namespace. `Ok(true)`: watched (or already gone: [`gone`] says so at once);
/// `Ok(false)`: another host (or namespace), nothing to watch; `Err`: on this host but
/// not watchable (no pidfd: Linux before 5.3), with why.
pub(crate) fn watch(c: &Caller) -> Result<bool, String> {
    watch_into(c, &GONE)
}

fn watch_into(c: &Caller, gone: &'static AtomicBool) -> Result<bool, String> {
    let here = me();
    if c.boot_id.is_empty() || c.boot_id != here.boot_id || c.pid_ns != here.pid_ns {
        return Ok(false);
    }
    let Ok(pid) = libc::pid_t::try_from(c.pid) else {
        return Ok(false);
    };
    // SAFETY: pidfd_open takes a pid and flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            gone.store(true, Ordering::Relaxed);
            return Ok(true);
        }
        return Err(format!("pidfd_open({pid}) failed: {e}"));
    }
    // SAFETY: a new descriptor owned here alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd names the process that had the pid when it was opened; the same start
    // time after opening means that process is rank 0 (a pid is not reused while its
    // process lives).
    if start_time(c.pid) != Some(c.start) {
        gone.store(true, Ordering::Relaxed);
        return Ok(true);
    }
    std::thread::Builder::new()
        .name("procpool-mpi-caller".into())
        .spawn(move || {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd, owned by this thread for the call.
                let n = unsafe { libc::poll(&mut p, 1, -1) };
                if n > 0 {
                    gone.store(true, Ordering::Relaxed);
                    return;
                }
                let e = std::io::Error::last_os_error();
                if n < 0 && e.kind() != std::io::ErrorKind::Interrupted {
                    return;
                }
            }
        })
        .map_err(|e| format!("cannot start the thread that watches rank 0: {e}"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn this_process_is_found_with_its_start_time() {
        let c = me();
        assert!(!c.boot_id.is_empty());
        assert_ne!(c.start, 0);
        assert_eq!(start_time(c.pid), Some(c.start));
    }

    #[test]
    fn another_boot_or_namespace_is_not_watched() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        let mut c = me();
        c.boot_id = "another machine".into();
        assert_eq!(watch_into(&c, &FLAG), Ok(false));
        let mut c = me();
        c.pid_ns.1 ^= 1;
        assert_eq!(watch_into(&c, &FLAG), Ok(false));
        assert!(!FLAG.load(Ordering::Relaxed));
    }

    #[test]
    fn a_process_that_ends_is_seen_gone() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut c = me();
        c.pid = child.id();
        c.start = start_time(c.pid).unwrap();
        assert_eq!(watch_into(&c, &FLAG), Ok(true));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!FLAG.load(Ordering::Relaxed), "alive, yet seen gone");
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !FLAG.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(FLAG.load(Ordering::Relaxed), "not seen gone within 10 s");
    }

    #[test]
    fn another_process_with_the_pid_is_not_taken_for_it() {
        // Same pid, another start time: the process sent about has ended (its pid was
        // reused), so it counts as gone at once.
        static FLAG: AtomicBool = AtomicBool::new(false);
        let mut c = me();
        c.start += 1;
        assert_eq!(watch_into(&c, &FLAG), Ok(true));
        assert!(FLAG.load(Ordering::Relaxed));
    }
}
