//! Fault injection: what a worker (or a program it starts) can reach.
//!
//! Inside a task, every descriptor but the standard streams is close-on-exec, none is a
//! named socket or a file another process could open by name, the worker does not hold
//! descriptors its parent leaked without close-on-exec, and the control block it shares
//! with its parent is a memfd sealed against resizing. In the parent, the pool's own
//! descriptors are close-on-exec too.
//!
//! The tests of this file compare descriptor tables, so they run one at a time.

procpool::enable_test_support!();

mod faults_common;

use std::collections::BTreeSet;
use std::time::Duration;

use faults_common::*;
use procpool::Pool;

/// One descriptor as seen from inside a process: number, link target, fdinfo flags.
type FdEntry = (i32, String, u32);

/// In a task: the worker's descriptor table.
fn fd_table(_: u64) -> Vec<FdEntry> {
    open_fds()
        .into_iter()
        // The descriptor that listed the directory is closed by now: no fdinfo.
        .filter_map(|(fd, link)| Some((fd, link, fdinfo_flags(fd)?)))
        .collect()
}

/// Whether descriptor `fd` of this process has FD_CLOEXEC; `None` if it is not open
/// (such as the descriptor that listed `/proc/self/fd`, closed since).
fn parent_cloexec(fd: i32) -> Option<bool> {
    // SAFETY: F_GETFD on a descriptor number; no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (flags >= 0).then_some(flags & libc::FD_CLOEXEC != 0)
}

/// Unix socket inodes that have a name (a path or an abstract name), from
/// `/proc/net/unix`.
fn named_unix_socket_inodes() -> BTreeSet<String> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode [Path]
            (cols.len() >= 8).then(|| cols[6].to_owned())
        })
        .collect()
}

fn socket_inode(link: &str) -> Option<String> {
    Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
}

/// Checks that a descriptor is nothing another process could open by name.
fn assert_unnamed(who: &str, fd: i32, link: &str, named: &BTreeSet<String>) {
    assert!(
        !link.starts_with("/dev/shm"),
        "{who}: fd {fd} is a file in /dev/shm: {link}"
    );
    if let Some(ino) = socket_inode(link) {
        assert!(!named.contains(&ino), "{who}: fd {fd} is a named socket");
    }
}

#[test]
fn security_worker_descriptors_are_close_on_exec_unnamed_and_few() {
    let _serial = serial();
    let _w = watchdog("worker fds", Duration::from_secs(60));
    // Descriptors this test process itself holds without close-on-exec (inherited from
    // whatever started it): see the next test for those.
    let leaked: Vec<i32> = open_fds()
        .into_iter()
        .map(|(fd, _)| fd)
        .filter(|&fd| fd > 2 && parent_cloexec(fd) == Some(false))
        .collect();
    let pool = Pool::builder().workers(2).build().unwrap();
    let table = pool.apply(fd_table, 0).unwrap();
    let named = named_unix_socket_inodes();
    eprintln!("worker descriptors: {table:?} (parent leaks {leaked:?})");
    let mut sockets = 0;
    let mut controls = 0;
    for (fd, link, flags) in &table {
        if *fd <= 2 || leaked.contains(fd) {
            continue;
        }
        assert!(
            flags & FDINFO_CLOEXEC != 0,
            "worker fd {fd} ({link}) lacks O_CLOEXEC: flags {flags:o}"
        );
        assert_unnamed("worker", *fd, link, &named);
        sockets += usize::from(link.starts_with("socket:"));
        controls += usize::from(link.starts_with("/memfd:procpool-control"));
        assert!(
            !link.starts_with("/memfd:") || link.starts_with("/memfd:procpool-"),
            "a memfd the worker did not make itself: {link}"
        );
    }
    assert_eq!(sockets, 1, "one socket, to the parent: {table:?}");
    assert!(controls >= 1, "the control block is a memfd: {table:?}");
}

fn pipe_fds_in_worker(ino: String) -> Vec<FdEntry> {
    let want = format!("pipe:[{ino}]");
    fd_table(0)
        .into_iter()
        .filter(|(_, link, _)| *link == want)
        .collect()
}

#[test]
fn security_worker_does_not_hold_descriptors_the_parent_leaked_without_cloexec() {
    let _serial = serial();
    let _w = watchdog("leaked pipe", Duration::from_secs(60));
    // A pipe made the way C code often does it: without O_CLOEXEC.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let [r, w] = fds;
    let link = std::fs::read_link(format!("/proc/self/fd/{w}")).unwrap();
    let ino = socket_like_inode(&link.to_string_lossy());
    let pool = Pool::builder().workers(2).build().unwrap();
    let held = pool.apply(pipe_fds_in_worker, ino).unwrap();
    // The parent closes its write end: its reader must see end-of-file at once, which
    // it never would while a worker still holds a copy of the write end.
    // SAFETY: closing the descriptor we created above.
    unsafe { libc::close(w) };
    let mut pfd = libc::pollfd {
        fd: r,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, 1000) };
    // SAFETY: closing the read end we created.
    unsafe { libc::close(r) };
    assert!(
        held.is_empty() && ready == 1,
        "a worker holds the parent's pipe (made without O_CLOEXEC) open as {held:?} \
         (fd, link, flags); end-of-file seen by the reader within 1 s: {}",
        ready == 1
    );
    drop(pool);
}

fn socket_like_inode(link: &str) -> String {
    link.split_once('[')
        .and_then(|(_, r)| r.strip_suffix(']'))
        .expect("pipe:[inode]")
        .to_owned()
}

#[test]
fn security_parent_pool_descriptors_are_close_on_exec_and_unnamed() {
    let _serial = serial();
    let _w = watchdog("parent fds", Duration::from_secs(60));
    let before: BTreeSet<i32> = open_fds().into_iter().map(|(fd, _)| fd).collect();
    let pool = Pool::builder().workers(2).build().unwrap();
    assert_eq!(pool.map(|x: u64| x * 2, 0..100).unwrap().len(), 100);
    let named = named_unix_socket_inodes();
    let new: Vec<(i32, String)> = open_fds()
        .into_iter()
        .filter(|(fd, _)| !before.contains(fd))
        .collect();
    eprintln!("the pool's descriptors in the parent: {new:?}");
    assert!(
        new.len() >= 2,
        "a pool of two holds descriptors for its workers: {new:?}"
    );
    for (fd, link) in &new {
        let Some(cloexec) = parent_cloexec(*fd) else {
            continue; // closed since it was listed
        };
        assert!(cloexec, "parent fd {fd} ({link}) lacks FD_CLOEXEC");
        assert_unnamed("parent", *fd, link, &named);
    }
}

/// In a task: tries to resize each of the pool's memfds (the control block, and any
/// other shared region); for each, `(link, grow errno, shrink errno, seals)`.
fn resize_control(_: u64) -> Vec<(String, i32, i32, i32)> {
    open_fds()
        .into_iter()
        .filter(|(_, link)| link.starts_with("/memfd:procpool-"))
        .map(|(fd, link)| {
            let try_len = |len: i64| {
                // SAFETY: ftruncate on a descriptor this process holds.
                let rc = unsafe { libc::ftruncate(fd, len) };
                if rc == 0 {
                    0
                } else {
                    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
                }
            };
            let grow = try_len(1 << 30);
            let shrink = try_len(0);
            // SAFETY: F_GET_SEALS on a descriptor this process holds.
            let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
            (link, grow, shrink, seals)
        })
        .collect()
}

#[test]
fn security_control_memfd_is_sealed_against_resizing() {
    let _serial = serial();
    let _w = watchdog("sealed memfd", Duration::from_secs(60));
    let pool = Pool::builder().workers(2).build().unwrap();
    let regions = pool.apply(resize_control, 0).unwrap();
    eprintln!("shared regions: {regions:?}");
    assert!(
        regions
            .iter()
            .any(|(l, ..)| l.starts_with("/memfd:procpool-control")),
        "the control block: {regions:?}"
    );
    let want = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    for (link, grow, shrink, seals) in &regions {
        assert_eq!(*grow, libc::EPERM, "growing {link} must fail");
        assert_eq!(*shrink, libc::EPERM, "shrinking {link} must fail");
        assert_eq!(seals & want, want, "{link}: seals {seals:#x}");
    }
    // The pool still works (the worker is unharmed).
    assert_eq!(pool.apply(|x: u64| x + 1, 1).unwrap(), 2);
}
