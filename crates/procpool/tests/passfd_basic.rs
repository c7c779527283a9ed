//! Descriptors travel with tasks' arguments (`procpool::Fd`): to pool tasks (`apply`,
//! `spawn`, `map`, `imap`), to one-off processes, many to one job, and never to a task's
//! own child processes.

mod common;

procpool::enable_test_support!();

use std::io::{Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use procpool::{Error, Fd, Pool, TaskErrorKind};

fn dup(f: &impl AsFd) -> Fd {
    Fd::from(f.as_fd().try_clone_to_owned().unwrap())
}

/// Reads the whole file behind the descriptor, from its start, and returns it with
/// the file's inode.
fn read_all(fd: Fd) -> (u64, String) {
    let mut f = std::fs::File::from(OwnedFd::from(fd));
    let ino = f.metadata().unwrap().ino();
    let mut s = String::new();
    f.rewind().unwrap();
    f.read_to_string(&mut s).unwrap();
    (ino, s)
}

fn ino_of((fd, k): (Fd, u64)) -> (u64, u64) {
    let f = std::fs::File::from(OwnedFd::from(fd));
    (f.metadata().unwrap().ino(), k)
}

fn pool() -> Pool {
    Pool::builder().workers(2).build().unwrap()
}

#[test]
fn apply_and_spawn_get_the_file() {
    let f = common::unlinked_file(b"hello");
    let ino = f.metadata().unwrap().ino();
    let pool = pool();
    assert_eq!(
        pool.apply(read_all, dup(&f)).unwrap(),
        (ino, "hello".to_string())
    );
    let h = pool.spawn(read_all, dup(&f)).unwrap();
    assert_eq!(h.join().unwrap(), (ino, "hello".to_string()));
}

#[test]
fn a_one_off_process_gets_the_file() {
    let f = common::unlinked_file(b"one-off");
    let ino = f.metadata().unwrap().ino();
    let p = procpool::spawn(read_all, dup(&f)).unwrap();
    assert_eq!(p.join().unwrap(), (ino, "one-off".to_string()));
}

#[test]
fn map_and_imap_carry_one_descriptor_per_item_in_large_chunks() {
    let f = common::unlinked_file(b"x");
    let ino = f.metadata().unwrap().ino();
    let pool = pool();
    let pids = pool.worker_pids();
    // 600 descriptors to a chunk: more than one message may carry.
    let items: Vec<(Fd, u64)> = (0..1200).map(|k| (dup(&f), k)).collect();
    let out = pool.with_chunk_size(600).map(ino_of, items).unwrap();
    assert_eq!(out.len(), 1200);
    for (k, (i, kk)) in out.into_iter().enumerate() {
        assert_eq!((i, kk), (ino, k as u64));
    }
    let got: Vec<(u64, u64)> = pool
        .imap(ino_of, (0..300).map(|k| (dup(&f), k)))
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, (0..300).map(|k| (ino, k)).collect::<Vec<_>>());
    assert_eq!(pool.worker_pids(), pids, "a worker died on the way");
}

fn child_sees(fd: Fd) -> (bool, bool) {
    let n = fd.as_fd().as_raw_fd();
    let mine = std::path::Path::new(&format!("/proc/self/fd/{n}")).exists();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("test -e /proc/self/fd/{n}"))
        .status()
        .unwrap();
    (mine, status.success())
}

#[test]
fn a_tasks_own_child_does_not_inherit_the_descriptor() {
    let f = common::unlinked_file(b"");
    let pool = pool();
    let (mine, childs) = pool.apply(child_sees, dup(&f)).unwrap();
    assert!(mine, "the task has the descriptor");
    assert!(!childs, "the task's child process inherited it");
    let (mine, childs) = procpool::spawn(child_sees, dup(&f))
        .unwrap()
        .join()
        .unwrap();
    assert!(mine && !childs);
}

fn give_back(fd: Fd) -> Fd {
    fd
}

#[test]
fn a_descriptor_cannot_be_a_result_or_go_through_serde_json() {
    let f = common::unlinked_file(b"");
    let pool = pool();
    match pool.apply(give_back, dup(&f)) {
        Err(Error::Task(t)) => match t.kind() {
            TaskErrorKind::Codec { message } => {
                assert!(
                    message.contains("can only be sent to procpool processes"),
                    "{message}"
                )
            }
            other => panic!("unexpected error {other:?}"),
        },
        other => panic!("a descriptor came back as a result: {other:?}"),
    }
    let e = serde_json::to_string(&dup(&f)).unwrap_err().to_string();
    assert!(e.contains("can only be sent to procpool processes"), "{e}");
    let e = serde_json::from_str::<Fd>("3").unwrap_err().to_string();
    assert!(e.contains("no descriptors are being received here"), "{e}");
}

fn big((fd, bytes): (Fd, Vec<u8>)) -> (u64, usize) {
    (read_all(fd).0, bytes.len())
}

#[test]
fn a_large_argument_through_shared_memory_still_brings_its_descriptor() {
    let f = common::unlinked_file(b"big");
    let ino = f.metadata().unwrap().ino();
    let pool = pool();
    let arg = (dup(&f), vec![7u8; 4 << 20]);
    assert_eq!(pool.apply(big, arg).unwrap(), (ino, 4 << 20));
    let items: Vec<(Fd, Vec<u8>)> = (0..6).map(|_| (dup(&f), vec![1u8; 1 << 20])).collect();
    let out = pool.with_chunk_size(1).map(big, items).unwrap();
    assert!(out.iter().all(|&r| r == (ino, 1 << 20)));
}
