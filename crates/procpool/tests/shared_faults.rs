//! Shared values under faults, with real processes: a worker killed while holding one,
//! a task's own child process, a task that tries to write one.

mod common;

procpool::enable_test_support!();

use std::path::PathBuf;

use procpool::{Pool, Shared, SharedSlice};

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("procpool-shared-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// Dies (SIGKILL) the first time it runs (it leaves a mark), then reads the value.
fn die_once((s, mark): (Shared<Vec<u64>>, PathBuf)) -> u64 {
    if !mark.exists() {
        std::fs::write(&mark, b"").unwrap();
        // SAFETY: raising a signal in our own process.
        unsafe { libc::raise(libc::SIGKILL) };
    }
    s.iter().sum()
}

#[test]
fn a_task_retried_after_its_worker_was_killed_still_sees_the_value() {
    let s = Shared::new((1..=100u64).collect::<Vec<_>>()).unwrap();
    let mark = scratch("die-once");
    let pool = Pool::builder().workers(2).retries(1).build().unwrap();
    assert_eq!(
        pool.apply(die_once, (s.clone(), mark.clone())).unwrap(),
        5050
    );
    assert!(mark.exists(), "the first attempt ran and died");
    let _ = std::fs::remove_file(&mark);
    // And the pool goes on with it.
    let out = pool
        .map(die_once, (0..50).map(|_| (s.clone(), PathBuf::from("/"))))
        .unwrap();
    assert!(out.iter().all(|&v| v == 5050));
}

/// Whether a child process of the task has any of the task's shared memfds open.
fn child_inherits(s: Shared<Vec<u64>>) -> (usize, String) {
    let mine = common::shared_memfds();
    let list = mine
        .iter()
        .map(|n| format!("test -e /proc/self/fd/{n} && echo {n};"))
        .collect::<String>();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(list + "true")
        .output()
        .unwrap();
    assert_eq!(s.len(), 3);
    (
        mine.len(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_tasks_child_process_inherits_no_shared_memory() {
    let s = Shared::new(vec![1u64, 2, 3]).unwrap();
    let pool = Pool::builder().workers(1).build().unwrap();
    let (held, child) = pool.apply(child_inherits, s.clone()).unwrap();
    assert!(held >= 1, "the worker holds the value's memfd");
    assert_eq!(child, "", "the task's child inherited descriptors {child}");
    let (held, child) = procpool::spawn(child_inherits, s).unwrap().join().unwrap();
    assert!(held >= 1);
    assert_eq!(child, "");
}

/// Tries every way to write the value's memory; returns those that worked.
fn try_to_write((_s, bytes): (Shared<Vec<u64>>, SharedSlice<u8>)) -> Vec<String> {
    let mut worked = Vec::new();
    for fd in common::shared_memfds() {
        let byte = [0xffu8; 8];
        // SAFETY: plain system calls on a descriptor this process holds, with valid
        // buffers; a mapping that succeeds is written once and unmapped.
        unsafe {
            if libc::pwrite(fd, byte.as_ptr().cast(), 8, 0) >= 0 {
                worked.push(format!("pwrite on {fd}"));
            }
            let path = format!("/proc/self/fd/{fd}\0");
            let again = libc::open(path.as_ptr().cast(), libc::O_RDWR);
            if again >= 0 {
                if libc::write(again, byte.as_ptr().cast(), 8) >= 0 {
                    worked.push(format!("write on {fd} opened again"));
                }
                libc::close(again);
            }
            if libc::ftruncate(fd, 0) == 0 {
                worked.push(format!("ftruncate on {fd}"));
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            if p != libc::MAP_FAILED {
                *p.cast::<u8>() = 0xff;
                libc::munmap(p, 4096);
                worked.push(format!("writable mmap of {fd}"));
            }
        }
    }
    // The slice's own read-only mapping, made writable.
    let page = (bytes.as_ptr() as usize) & !4095;
    // SAFETY: mprotect of a page of our own mapping; a write is tried only if it worked.
    unsafe {
        if libc::mprotect(page as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE) == 0 {
            *(bytes.as_ptr() as *mut u8) = 0xff;
            worked.push("mprotect of the slice's mapping".into());
        }
    }
    assert!(
        common::shared_memfds().len() >= 2,
        "the task holds both values' memfds"
    );
    worked
}

fn sum((s, bytes): (Shared<Vec<u64>>, SharedSlice<u8>)) -> (u64, u64) {
    (s.iter().sum(), bytes.iter().map(|&b| u64::from(b)).sum())
}

#[test]
fn a_worker_cannot_write_a_shared_value_and_the_owner_is_unharmed() {
    let s = Shared::new((0..1000u64).collect::<Vec<_>>()).unwrap();
    let bytes = SharedSlice::new(&[1u8; 10_000]).unwrap();
    let pool = Pool::builder().workers(1).build().unwrap();
    let worked = pool
        .apply(try_to_write, (s.clone(), bytes.clone()))
        .unwrap();
    assert!(
        worked.is_empty(),
        "a worker wrote shared memory: {worked:?}"
    );
    assert_eq!(s.iter().sum::<u64>(), 499_500);
    assert!(bytes.iter().all(|&b| b == 1));
    // Another task, on the same worker (its cached mapping) and on a fresh process.
    assert_eq!(
        pool.apply(sum, (s.clone(), bytes.clone())).unwrap(),
        (499_500, 10_000)
    );
    let p = procpool::spawn(sum, (s, bytes)).unwrap();
    assert_eq!(p.join().unwrap(), (499_500, 10_000));
}
