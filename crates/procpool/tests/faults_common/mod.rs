//! Helpers shared by the fault-injection tests (`tests/faults_*.rs`).
//!
//! Each test file includes this module with `mod faults_common;`. Functions here run in
//! two places: in the test (the parent) and inside tasks (the workers, which re-execute
//! the same test binary). Markers are files in a per-test scratch directory: a task
//! writes one when it starts (with its pid and the monotonic clock, which all processes
//! of the machine share), and appends a line to a per-index run file each time it runs,
//! so the test can tell which task ran where, when, and how many times.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a test waits for something that should take milliseconds before calling it
/// a hang.
pub(crate) const HANG: Duration = Duration::from_secs(20);

/// A scratch directory for markers, removed on drop.
#[derive(Debug)]
pub(crate) struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A fresh empty directory named after the test.
    pub(crate) fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("procpool-faults-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        Self { path }
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory as a `String`, to pass to tasks.
    pub(crate) fn arg(&self) -> String {
        self.path.to_str().expect("utf-8 temp dir").to_owned()
    }

    /// A file in the directory.
    pub(crate) fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// How many times task `index` ran (lines in its run file).
    pub(crate) fn runs(&self, index: u64) -> usize {
        count_lines(&self.file(&format!("run-{index}")))
    }

    /// The start marker `name` once it exists: `(pid, monotonic nanos at start)`.
    pub(crate) fn wait_started(&self, name: &str) -> (u32, u64) {
        let path = self.file(name);
        wait_for(&format!("start marker {name}"), HANG, || {
            read_start_marker(&path)
        })
    }

    /// Names of files whose name starts with `prefix`.
    pub(crate) fn files_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(prefix) && !n.ends_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine.
pub(crate) fn mono_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's id.
pub(crate) fn my_pid() -> u32 {
    std::process::id()
}

/// Writes `contents` to `path` atomically (temporary file, then rename), so a reader
/// never sees half a marker.
pub(crate) fn write_marker(path: &Path, contents: &str) {
    let tmp = path.with_extension(format!("{}.tmp", my_pid()));
    fs::write(&tmp, contents).expect("write marker");
    fs::rename(&tmp, path).expect("rename marker");
}

/// In a task: records that it started, as `<dir>/<name>` holding `pid nanos`.
pub(crate) fn mark_started(dir: &str, name: &str) {
    let path = Path::new(dir).join(name);
    write_marker(&path, &format!("{} {}", my_pid(), mono_nanos()));
}

/// Reads a start marker: `(pid, monotonic nanos)`.
pub(crate) fn read_start_marker(path: &Path) -> Option<(u32, u64)> {
    let s = fs::read_to_string(path).ok()?;
    let mut it = s.split_whitespace();
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// In a task: appends a line (`pid`) to `<dir>/run-<index>`. Appends of a few bytes with
/// `O_APPEND` are atomic, so concurrent runs all count.
pub(crate) fn mark_run(dir: &str, index: u64) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(Path::new(dir).join(format!("run-{index}")))
        .expect("open run file");
    f.write_all(format!("{}\n", my_pid()).as_bytes())
        .expect("append run line");
}

/// Lines in a file (0 if it does not exist).
pub(crate) fn count_lines(path: &Path) -> usize {
    fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// Polls `f` every millisecond until it gives `Some`; panics after `timeout`.
pub(crate) fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `(state, ppid, pgrp)` of a process from `/proc/<pid>/stat`, if it exists.
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u32, u32)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether a process exists and is not a zombie.
pub(crate) fn is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((s, _, _)) if s != 'Z' && s != 'X')
}

/// Sends `sig` to `pid`.
pub(crate) fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we know; no memory is involved.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Children of `parent` (any state), from `/proc/*/stat`: `(pid, state)`.
pub(crate) fn children_of(parent: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((state, ppid, _)) = proc_stat(pid)
            && ppid == parent
        {
            out.push((pid, state));
        }
    }
    out
}

/// Open descriptors of this process: `(fd, link target)`.
pub(crate) fn open_fds() -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = fs::read_link(e.path()).ok()?;
            Some((fd, link.to_string_lossy().into_owned()))
        })
        .collect();
    v.sort();
    v
}

/// `flags:` of `/proc/self/fdinfo/<fd>` (octal open flags), if the descriptor is open.
pub(crate) fn fdinfo_flags(fd: i32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let line = s.lines().find(|l| l.starts_with("flags:"))?;
    u32::from_str_radix(line["flags:".len()..].trim(), 8).ok()
}

/// `O_CLOEXEC` as it shows in fdinfo flags.
pub(crate) const FDINFO_CLOEXEC: u32 = 0o2_000_000;

/// In a task: the worker's socket to its parent (the only socket it holds besides the
/// standard streams).
pub(crate) fn worker_socket_fd() -> i32 {
    let socks: Vec<i32> = open_fds()
        .into_iter()
        .filter(|(fd, link)| *fd > 2 && link.starts_with("socket:"))
        .map(|(fd, _)| fd)
        .collect();
    assert_eq!(
        socks.len(),
        1,
        "expected one socket in the worker: {socks:?}"
    );
    socks[0]
}

/// In a task: writes all of `bytes` to `fd`.
pub(crate) fn write_all_fd(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writing from a live slice to a descriptor this process holds.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("write to fd {fd}: {e}");
        }
        bytes = &bytes[n as usize..];
    }
}

/// In a task about to die on purpose by a signal: no core file, whatever the system's
/// core settings.
pub(crate) fn no_core_dump() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process, with a valid rlimit.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// In a task: blocks forever in a system call (until the process is killed).
pub(crate) fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Waits until the pool has `n` live workers, none of them in `gone`; returns their pids.
pub(crate) fn wait_pool_size(pool: &procpool::Pool, n: usize, gone: &[u32]) -> Vec<u32> {
    wait_for(&format!("the pool to have {n} live workers"), HANG, || {
        let pids = pool.worker_pids();
        let ok = pids.len() == n && pids.iter().all(|p| !gone.contains(p) && is_alive(*p));
        ok.then_some(pids)
    })
}

/// Ends the whole test process if a test is still running after `limit`: a hang is a
/// failure, never a stuck CI job. Disarmed on drop. Workers die with the process
/// (they are killed when their parent dies).
#[derive(Debug)]
pub(crate) struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Starts a [`Watchdog`] for the test `what`.
pub(crate) fn watchdog(what: &str, limit: Duration) -> Watchdog {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = done.clone();
    let what = what.to_owned();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if d.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !d.load(Ordering::SeqCst) {
            eprintln!("HANG: {what} still running after {limit:?}; ending the test process");
            std::process::exit(101);
        }
    });
    Watchdog { done }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

/// Serializes the tests of one file that look at process-wide state (descriptors,
/// children) or that time things.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process that is killed and reaped when dropped, together with the pids it
/// reported (workers of a helper parent), so nothing outlives a failed test.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    pub(crate) child: std::process::Child,
    pub(crate) also_kill: Vec<u32>,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let exe = std::env::current_exe().ok();
        for &pid in &self.also_kill {
            // Only a process still running our own executable: never a recycled pid.
            let theirs = fs::read_link(format!("/proc/{pid}/exe")).ok();
            if theirs.is_some() && theirs == exe {
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

static SIGINT_MARKER: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

extern "C" fn on_sigint(_sig: libc::c_int) {
    if let Some(p) = SIGINT_MARKER.get() {
        // SAFETY: async-signal-safe calls on a path that lives as long as the process.
        unsafe {
            let fd = libc::open(p.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
}

/// Makes a SIGINT reaching this process create the file `<dir>/sigint-<pid>` (so a test
/// can tell whether a worker received a Ctrl-C).
pub(crate) fn record_sigint_in(dir: &str) {
    let path = std::ffi::CString::new(format!("{dir}/sigint-{}", my_pid())).unwrap();
    let _ = SIGINT_MARKER.set(path);
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: a handler making only async-signal-safe calls.
    unsafe { libc::signal(libc::SIGINT, handler as libc::sighandler_t) };
}
