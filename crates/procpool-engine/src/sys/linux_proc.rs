//! Linux: starting a worker in a session of its own, ending it together with every
//! process its tasks started, and learning how it ended.
//!
//! # Design: what dies with a worker
//!
//! A worker is started with `posix_spawn` as the leader of a new session
//! (`POSIX_SPAWN_SETSID`), so it leads its own process group too, with no controlling
//! terminal. Every process a task starts (`Command`, a plain `fork`) lands in that group
//! unless it deliberately leaves (its own `setsid` or `setpgid`). Hence:
//!
//! - **Parent-side kills** (time limit, cancel, terminate or drop of the pool, killing a
//!   one-off process) signal the whole group, and reaping a worker first signals
//!   whatever is left of its group (a task's background child outliving a worker that
//!   exited on its own). The group is signalled only while the worker is not yet reaped,
//!   so its pid, which names the group, cannot have been given to another process.
//! - **The parent's death**: a worker cannot run code after a SIGKILL, so its
//!   parent-death signal (`PR_SET_PDEATHSIG`) is not SIGKILL but [`death_signal`], whose
//!   handler (installed before any task runs) makes one async-signal-safe call,
//!   `kill(0, SIGKILL)`: the worker's whole group dies, the worker with it. A child
//!   subreaper was the other candidate, but it must itself stay alive to kill anything,
//!   which a SIGKILLed worker cannot.
//! - **Job control**: a process without a controlling terminal is never stopped by
//!   SIGTTOU/SIGTTIN (`stty tostop`, a task running `stty`), and a terminal's Ctrl-C or
//!   hang-up reaches only the terminal's own session: the parent's.
//!
//! A task that replaces the death signal's handler, or blocks it in every thread, gives
//! up that guarantee for its worker (its worker still dies when it next reads its
//! socket, which the parent's death closes).
//!
//! One gap: when the parent sets SIGCHLD to `SIG_IGN`, the kernel reaps a worker as it
//! dies, so the group is signalled after its leader's pid was freed. The pid could name
//! another group only if pid numbers wrapped around in between; this is accepted.
//!
//! `posix_spawn` also gives the worker an empty signal mask and the default action for
//! every signal, whatever the parent blocked or ignored (a parent ignoring SIGTERM must
//! not make its workers deaf to a time limit's SIGTERM).

use std::ffi::{CString, c_int};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use crate::error::Death;

/// The signal a worker gets when its parent dies (see the module docs).
pub(crate) fn death_signal() -> c_int {
    libc::SIGRTMAX()
}

/// Starts `exe` with `argv` and `envp` as the leader of a new session, with `stdin` as
/// its standard input, an empty signal mask and default signal actions; returns its pid.
/// The error keeps the OS error code (`ETXTBSY`, `ENOENT`, ...).
pub(crate) fn spawn_session_leader(
    exe: &CString,
    argv: &[CString],
    envp: &[CString],
    stdin: BorrowedFd<'_>,
) -> io::Result<u32> {
    let attr = SpawnAttr::new()?;
    let actions = FileActions::new()?;
    // dup2 clears close-on-exec on the copy; a descriptor below 3 was moved by the
    // caller, so the copy is never the source itself.
    // SAFETY: `actions` is initialized; plain integers.
    check(unsafe { libc::posix_spawn_file_actions_adddup2(actions.ptr(), stdin.as_raw_fd(), 0) })?;
    let mut argv_p: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv_p.push(std::ptr::null_mut());
    let mut envp_p: Vec<*mut libc::c_char> = envp.iter().map(|a| a.as_ptr().cast_mut()).collect();
    envp_p.push(std::ptr::null_mut());
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: NUL-terminated strings owned by the
    // caller, null-terminated pointer arrays, initialized attributes and file actions.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            exe.as_ptr(),
            actions.ptr(),
            attr.ptr(),
            argv_p.as_ptr(),
            envp_p.as_ptr(),
        )
    })?;
    Ok(pid as u32)
}

/// Spawn attributes: new session, empty mask, default actions.
struct SpawnAttr(Box<MaybeUninit<libc::posix_spawnattr_t>>);

impl SpawnAttr {
    fn new() -> io::Result<Self> {
        let mut a = Box::new(MaybeUninit::uninit());
        // SAFETY: initializes the attribute object in place.
        check(unsafe { libc::posix_spawnattr_init(a.as_mut_ptr()) })?;
        let attr = SpawnAttr(a);
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        let mut all = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: the sets are written by sigemptyset/sigfillset before being read; the
        // attribute object is initialized.
        unsafe {
            libc::sigemptyset(empty.as_mut_ptr());
            libc::sigfillset(all.as_mut_ptr());
            check(libc::posix_spawnattr_setsigmask(attr.ptr(), empty.as_ptr()))?;
            check(libc::posix_spawnattr_setsigdefault(
                attr.ptr(),
                all.as_ptr(),
            ))?;
            let flags = i32::from(libc::POSIX_SPAWN_SETSID)
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(
                attr.ptr(),
                flags as libc::c_short,
            ))?;
        }
        Ok(attr)
    }

    fn ptr(&self) -> *mut libc::posix_spawnattr_t {
        self.0.as_ptr().cast_mut()
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialized in `new` and destroyed once.
        unsafe { libc::posix_spawnattr_destroy(self.ptr()) };
    }
}

/// Spawn file actions.
struct FileActions(Box<MaybeUninit<libc::posix_spawn_file_actions_t>>);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut a = Box::new(MaybeUninit::uninit());
        // SAFETY: initializes the object in place.
        check(unsafe { libc::posix_spawn_file_actions_init(a.as_mut_ptr()) })?;
        Ok(FileActions(a))
    }

    fn ptr(&self) -> *mut libc::posix_spawn_file_actions_t {
        self.0.as_ptr().cast_mut()
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialized in `new` and destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(self.ptr()) };
    }
}

/// posix_spawn's functions return the error number instead of setting errno.
fn check(rc: c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Sends SIGKILL to the process group `pgid` (a worker's, named by its pid). A group
/// that no longer exists is not an error.
pub(crate) fn kill_group(pgid: u32) {
    if let Some(p) = Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(p, Signal::KILL);
    }
}

extern "C" fn on_parent_death(_sig: c_int) {
    // SAFETY: kill(2) is async-signal-safe; 0 names this process's own group.
    unsafe { libc::kill(0, libc::SIGKILL) };
}

/// In a worker: when the parent dies, kill this process and its whole process group.
pub(crate) fn kill_my_group_with_parent() -> io::Result<()> {
    let sig = death_signal();
    let handler = on_parent_death as extern "C" fn(c_int);
    // SAFETY: a zeroed sigaction is valid; its mask is filled before use. The handler
    // makes one async-signal-safe call.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as libc::sighandler_t;
        libc::sigfillset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In a worker: takes the parent's command name (`/proc/<parent>/comm`), so `ps` and
/// `pgrep` show workers under the program's name instead of `exe`; see [`worker_name`].
pub(crate) fn take_parent_name(parent: u32) {
    let Ok(name) = std::fs::read(format!("/proc/{parent}/comm")) else {
        return;
    };
    let name = name.strip_suffix(b"\n").unwrap_or(&name);
    if let Ok(c) = CString::new(worker_name(name)) {
        let _ = rustix::thread::set_name(&c);
    }
}

/// A worker's command name (at most 15 bytes, the kernel's limit) from its program's:
/// the program's name, then `-worker` or `-w` where it fits, so `pgrep prog` finds the
/// program and its workers and `ps` tells them apart.
pub(crate) fn worker_name(program: &[u8]) -> Vec<u8> {
    const MAX: usize = 15;
    let mut name = program[..program.len().min(MAX)].to_vec();
    for mark in [&b"-worker"[..], b"-w"] {
        if name.len() + mark.len() <= MAX {
            name.extend_from_slice(mark);
            break;
        }
    }
    name
}

/// Waits for the worker behind `pidfd` to end, kills what is left of its process group
/// (`pid`), then reaps it. When the kernel already reaped it (the parent sets SIGCHLD
/// to `SIG_IGN`), the status comes from the pidfd where the kernel keeps it (Linux 6.15
/// and later), else it is [`Death::Unknown`].
pub(crate) fn reap_with_group(pidfd: BorrowedFd<'_>, pid: u32) -> io::Result<Death> {
    // Ended but not reaped: its pid, and so its group's id, is still ours.
    match wait(pidfd, WaitIdOptions::EXITED | WaitIdOptions::NOWAIT) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            kill_group(pid);
            return Ok(exit_info(pidfd).unwrap_or(Death::Unknown));
        }
        Err(e) => return Err(e),
    }
    kill_group(pid);
    match wait(pidfd, WaitIdOptions::EXITED) {
        Ok(d) => Ok(d),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            Ok(exit_info(pidfd).unwrap_or(Death::Unknown))
        }
        Err(e) => Err(e),
    }
}

fn wait(pidfd: BorrowedFd<'_>, opts: WaitIdOptions) -> io::Result<Death> {
    loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd), opts) {
            Ok(Some(s)) => {
                if let Some(sig) = s.terminating_signal() {
                    return Ok(Death::Signal(sig));
                }
                if let Some(c) = s.exit_status() {
                    return Ok(Death::Exit(c));
                }
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The first 64 bytes of `struct pidfd_info` of `<linux/pidfd.h>` (the kernel takes any
/// size from its first version's 64 bytes on; `exit_code` fills the last field of those
/// since Linux 6.15).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    ids: [u32; 11],
    exit_code: i32,
}

/// `PIDFD_INFO_EXIT`: ask for the exit status.
const PIDFD_INFO_EXIT: u64 = 1 << 3;
/// `PIDFD_GET_INFO`: `_IOWR(0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;

/// The wait status the kernel keeps on a pidfd after its process was reaped (Linux 6.15
/// and later); `None` on older kernels.
fn exit_info(pidfd: BorrowedFd<'_>) -> Option<Death> {
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: the ioctl writes at most `size_of::<PidfdInfo>()` bytes (encoded in the
    // request) into the struct we own.
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
    if rc != 0 || info.mask & PIDFD_INFO_EXIT == 0 {
        return None;
    }
    let status = info.exit_code;
    Some(if libc::WIFSIGNALED(status) {
        Death::Signal(libc::WTERMSIG(status))
    } else {
        Death::Exit(libc::WEXITSTATUS(status))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_carry_a_mark_where_it_fits() {
        assert_eq!(worker_name(b"compute"), b"compute-worker");
        assert_eq!(worker_name(b"thirteen-char"), b"thirteen-char-w");
        assert_eq!(worker_name(b"fourteen-chars"), b"fourteen-chars");
        assert_eq!(worker_name(b"a-very-long-program"), b"a-very-long-pro");
    }

    #[test]
    fn pidfd_info_has_the_kernels_size() {
        assert_eq!(size_of::<PidfdInfo>(), 64);
        assert_eq!(PIDFD_GET_INFO, 0xC040_FF0B);
    }
}
