//! Helpers shared by the integration tests: temporary directories, waiting for a
//! condition, and looking at processes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A fresh directory under the system's temporary directory, removed on drop.
#[derive(Debug)]
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "procpool-test-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create the temporary directory");
        TempDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` inside the directory, as a `String` (to send to a task).
    pub(crate) fn file(&self, name: &str) -> String {
        self.path
            .join(name)
            .to_str()
            .expect("utf-8 path")
            .to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Polls `cond` until it holds; panics with `what` after `limit`.
pub(crate) fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the file at `path` exists and has content; returns the content.
pub(crate) fn wait_for_file(path: &str, limit: Duration) -> String {
    let mut content = String::new();
    wait_until(
        &format!("{path} is written"),
        limit,
        || match std::fs::read_to_string(path) {
            Ok(s) if s.ends_with('\n') => {
                content = s;
                true
            }
            _ => false,
        },
    );
    content
}

/// Writes `content` plus a newline to `path` atomically (through a rename), so that a
/// reader sees either nothing or everything.
pub(crate) fn write_file(path: &str, content: &str) {
    let tmp = format!("{path}.tmp{}", std::process::id());
    std::fs::write(&tmp, format!("{content}\n")).expect("write a marker file");
    std::fs::rename(&tmp, path).expect("rename a marker file");
}

/// Spins (with short sleeps) until `path` exists, for at most `limit`.
pub(crate) fn spin_until_exists(path: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Whether a process with this pid exists (a zombie counts as existing).
pub(crate) fn exists(pid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Sends SIGKILL to `pid`.
pub(crate) fn sigkill(pid: u32) {
    // SAFETY: plain kill(2) on a pid this test owns (a worker of its own pool).
    let r = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(
        r,
        0,
        "kill({pid}, SIGKILL): {}",
        std::io::Error::last_os_error()
    );
}

/// The parent pid and state of `pid` from `/proc/<pid>/stat`, if it exists.
pub(crate) fn stat(pid: u32) -> Option<(u32, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: parse after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((ppid, state))
}

/// The pids of every child process of this process (zombies included).
pub(crate) fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if stat(pid).is_some_and(|(ppid, _)| ppid == me) {
            out.push(pid);
        }
    }
    out
}

/// Runs `body` on a thread of its own; a hang past `limit` fails the test.
pub(crate) fn watchdog<T: Send + 'static>(
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)));
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("hung: no answer within {limit:?}"),
    }
}

pub(crate) fn now_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What a task reports: which worker ran it, and when (monotonic nanoseconds).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Trace {
    pub(crate) pid: u32,
    pub(crate) start: u64,
    pub(crate) end: u64,
}

/// How long a worker may sit idle while an item waits before a scheduling test calls it
/// a fault: scheduling itself takes well under a millisecond; the rest is slack for a
/// loaded two-core machine.
pub(crate) const IDLE_SLACK: Duration = Duration::from_millis(60);

/// Sleeps `ms` milliseconds (not at all for 0) and says where and when.
pub(crate) fn sleep_ms(ms: u64) -> Trace {
    let start = now_nanos();
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
    Trace {
        pid: std::process::id(),
        start,
        end: now_nanos(),
    }
}

/// Fails if a worker sat idle more than [`IDLE_SLACK`] while a submitted item had not
/// started (every item counts as submitted at `submitted`).
pub(crate) fn check_work_conserving(what: &str, traces: &[Trace], submitted: u64) {
    let slack = IDLE_SLACK.as_nanos() as u64;
    let mut by_pid: HashMap<u32, Vec<Trace>> = HashMap::new();
    for t in traces {
        by_pid.entry(t.pid).or_default().push(*t);
    }
    let last_start = traces.iter().map(|t| t.start).max().unwrap_or(0);
    for (pid, mut ts) in by_pid {
        ts.sort_by_key(|t| t.start);
        let mut free_since = submitted;
        for t in &ts {
            assert!(
                t.start <= free_since + slack,
                "{what}: worker {pid} sat idle {:.1} ms (from {:.1} ms) while items waited\n{}",
                (t.start - free_since) as f64 / 1e6,
                (free_since - submitted) as f64 / 1e6,
                timeline(traces, submitted)
            );
            free_since = free_since.max(t.end);
        }
        assert!(
            last_start <= free_since + slack,
            "{what}: worker {pid} was idle from {:.1} ms while an item waited until {:.1} ms\n{}",
            (free_since - submitted) as f64 / 1e6,
            (last_start - submitted) as f64 / 1e6,
            timeline(traces, submitted)
        );
    }
}

/// The timeline, with runs of short items on one worker merged into one line.
pub(crate) fn timeline(traces: &[Trace], t0: u64) -> String {
    let mut ts = traces.to_vec();
    ts.sort_by_key(|t| t.start);
    let mut lines: Vec<(u32, u64, u64, usize)> = Vec::new();
    for t in ts {
        match lines.iter_mut().rev().find(|l| l.0 == t.pid) {
            Some(l) if t.end - t.start < 2_000_000 && l.2 + 2_000_000 > t.start && l.3 > 0 => {
                l.2 = t.end;
                l.3 += 1;
            }
            _ => lines.push((
                t.pid,
                t.start,
                t.end,
                usize::from(t.end - t.start < 2_000_000),
            )),
        }
    }
    lines
        .iter()
        .take(80)
        .map(|(pid, s, e, n)| {
            format!(
                "  pid {pid} {:>8.1}..{:>8.1} ms ({} items)\n",
                s.saturating_sub(t0) as f64 / 1e6,
                e.saturating_sub(t0) as f64 / 1e6,
                (*n).max(1)
            )
        })
        .collect()
}

/// Maps the control block of the worker this task runs in, writable: what a buggy or
/// hostile task could do (it finds the memfd among its own descriptors).
pub(crate) fn control_block() -> &'static [std::sync::atomic::AtomicU64] {
    control_pages(1)
}

/// Maps the first `pages` pages of this worker's control block (the words, then the start
/// of the results ring), writable, as [`control_block`] does.
pub(crate) fn control_pages(pages: usize) -> &'static [std::sync::atomic::AtomicU64] {
    for entry in std::fs::read_dir("/proc/self/fd").expect("list my descriptors") {
        let entry = entry.expect("a descriptor");
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !link.to_string_lossy().contains("procpool-control") {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse().expect("an fd");
        let len = 4096 * pages;
        // SAFETY: maps pages of a memfd this process holds; never unmapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap the control block");
        // SAFETY: the pages are mapped, aligned, and only accessed through atomics.
        return unsafe { std::slice::from_raw_parts(p.cast(), len / 8) };
    }
    panic!("no control block among this worker's descriptors");
}

/// Appends `i` and a newline to the file at `path` (whole lines: O_APPEND).
pub(crate) fn append(path: &str, i: u64) {
    append_line(path, &format!("{i}\n"));
}

/// Appends `line` (which ends in a newline) to the file at `path`, in one write
/// (O_APPEND: lines of several processes do not mix).
pub(crate) fn append_line(path: &str, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("open the log");
    f.write_all(line.as_bytes()).expect("log");
}

#[cfg(feature = "mpi")]
pub(crate) mod mpi_job;

/// The binary of the procpool example `name` (built with `features`), built if this test
/// run did not build it.
pub(crate) fn example(name: &str, features: &[&str]) -> PathBuf {
    let exe = example_path(name);
    if !exe.exists() {
        build_example(name, features);
    }
    exe
}

/// The binary of the procpool example `name`, built every time (a no-op when fresh: a
/// stale binary would test old code).
pub(crate) fn fresh_example(name: &str) -> PathBuf {
    build_example(name, &[]);
    example_path(name)
}

fn example_path(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    deps.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name)
}

fn build_example(name: &str, features: &[&str]) {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-q", "-p", "procpool"]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let ok = cmd.args(["--example", name]).status().unwrap().success();
    assert!(ok, "building the {name} example failed");
}

/// A read-write file holding `contents`, unlinked at once (only its descriptor names it).
pub(crate) fn unlinked_file(contents: &[u8]) -> std::fs::File {
    use std::io::Write;
    let path = std::env::temp_dir().join(format!(
        "procpool-unlinked-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f.write_all(contents).unwrap();
    f
}

/// The descriptors of shared values' memfds this process has open.
pub(crate) fn shared_memfds() -> Vec<i32> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().contains("memfd:procpool-shared"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether `e` is the initializer's panic (the initializer panics with "initializer fails
/// on purpose"), possibly wrapped in `Broken` if `allow_broken`.
pub(crate) fn is_init_panic(e: &procpool::PoolError, allow_broken: bool) -> bool {
    use procpool::{HandshakeError, PoolError, TaskErrorKind};
    match e {
        PoolError::Broken { first, .. } if allow_broken => is_init_panic(first, false),
        PoolError::Handshake {
            reason: HandshakeError::Initializer(k),
            ..
        } => matches!(&**k, TaskErrorKind::Panic { message, .. }
            if message.contains("initializer fails on purpose")),
        _ => false,
    }
}

/// A thread that SIGKILLs the workers of `pool` in turn until stopped, sleeping
/// `pause(k)` before the `k`-th kill (irregular pauses land kills at every phase of the
/// pool's work).
pub(crate) struct Killer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Killer {
    pub(crate) fn start(
        pool: std::sync::Arc<procpool::Pool>,
        pause: impl Fn(u64) -> Duration + Send + 'static,
    ) -> Killer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut kills = 0;
            let mut k = 0u64;
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(pause(k));
                k += 1;
                let pids = pool.worker_pids();
                if let Some(&pid) = pids.get(k as usize % pids.len().max(1)) {
                    // SAFETY: kill(2) on a worker of this test's own pool; it may have
                    // ended meanwhile (then nothing is counted).
                    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                        kills += 1;
                    }
                }
            }
            kills
        });
        Killer { stop, thread }
    }

    /// Stops the thread; how many workers it killed.
    pub(crate) fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the killer thread")
    }
}

/// A `kB` figure of this process from `/proc/self/status`, by its key (`"VmHWM:"`, the
/// peak resident size; `"VmRSS:"`).
pub(crate) fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key} figure in /proc/self/status"))
}

/// A task: sleeps `ms` milliseconds (forever for `u64::MAX`) and returns `ms`.
pub(crate) fn nap(ms: u64) -> u64 {
    if ms == u64::MAX {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
    ms
}

/// Maps [`sleep_ms`] over `items` with chunk size 1, then with automatic chunks, and
/// checks each run with [`check_work_conserving`].
pub(crate) fn map_conserves_work_both_ways(pool: &procpool::Pool, what: &str, items: &[u64]) {
    for chunk in [Some(1usize), None] {
        let t0 = now_nanos();
        let traces = match chunk {
            Some(c) => pool.with_chunk_size(c).map(sleep_ms, items.to_vec()),
            None => pool.map(sleep_ms, items.to_vec()),
        }
        .expect("map");
        check_work_conserving(&format!("{what}, chunk {chunk:?}"), &traces, t0);
    }
}
