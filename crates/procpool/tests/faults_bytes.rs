//! Fault injection: a worker that sends bad bytes.
//!
//! A task finds its worker's socket to the parent (the one socket in `/proc/self/fd`)
//! and writes into it: random garbage, a frame announcing 2 GiB, an empty frame, a
//! truncated frame followed by the worker's exit, a results frame for a job the worker
//! does not hold, a `Hello` out of place. Everything the parent reads from a worker is
//! untrusted: it must kill that worker, fail its task (with `Protocol`, or `WorkerDied`
//! when the worker exits before completing its frame), never panic, never hang, and go
//! on with a replacement.

procpool::enable_test_support!();

mod faults_common;

use std::time::Duration;

use faults_common::*;
use procpool::{Death, Error, Pool, TaskError, TaskErrorKind, WaitError};
use procpool_engine::wire::{self, Outcome, ResultFrame, Up};

/// What a task writes into its worker's socket.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Scribble {
    /// These bytes, then the task returns normally (a stray write by buggy code).
    Return(Vec<u8>),
    /// These bytes, then the task blocks: only the parent can end it.
    Block(Vec<u8>),
    /// These bytes, then the worker exits with code 3.
    Exit(Vec<u8>),
}

fn scribble((dir, s): (String, Scribble)) -> u64 {
    mark_started(&dir, "scribbler");
    let fd = worker_socket_fd();
    match s {
        Scribble::Return(b) => {
            write_all_fd(fd, &b);
            7
        }
        Scribble::Block(b) => {
            write_all_fd(fd, &b);
            sleep_forever()
        }
        Scribble::Exit(b) => {
            write_all_fd(fd, &b);
            // SAFETY: ends the worker at once, on purpose.
            unsafe { libc::_exit(3) }
        }
    }
}

fn pid_of(_: u64) -> u32 {
    my_pid()
}

/// Runs the scribbling task on a fresh pool; returns its error, after checking that
/// its worker is dead and that the pool goes on.
fn run_scribble(name: &str, s: Scribble) -> TaskError {
    let _w = watchdog(name, Duration::from_secs(60));
    let dir = Scratch::new(name);
    let pool = Pool::builder().workers(2).build().unwrap();
    let mut h = pool.spawn(scribble, (dir.arg(), s)).unwrap();
    let r = h.join_timeout(Duration::from_secs(10));
    let (pid, _) = read_start_marker(&dir.file("scribbler")).expect("the task started");
    let err = match r {
        Err(WaitError::Failed(Error::Task(t))) => t,
        Err(WaitError::Timeout) => panic!(
            "{name}: no answer 10 s after the worker wrote bad bytes (worker {pid} alive: {})",
            is_alive(pid)
        ),
        other => panic!("{name}: expected a task error, got {other:?}"),
    };
    assert_eq!(err.pid(), Some(pid), "{name}: {err}");
    wait_for("the bad worker to be gone", HANG, || {
        (!is_alive(pid)).then_some(())
    });
    wait_pool_size(&pool, 2, &[pid]);
    // The pool goes on: every worker answers.
    let pids: Vec<u32> = pool.with_chunk_size(1).map(pid_of, 0..20).unwrap();
    assert!(!pids.contains(&pid));
    assert_eq!(pool.apply(|x: u64| x + 1, 41).unwrap(), 42);
    eprintln!("{name}: {err}");
    err
}

fn assert_protocol(name: &str, err: &TaskError, needle: &str) {
    match err.kind() {
        TaskErrorKind::Protocol { message } => assert!(
            message.contains(needle),
            "{name}: the message should say {needle:?}: {message}"
        ),
        other => panic!("{name}: expected Protocol, got {other:?} ({err})"),
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn bytes_random_garbage_from_a_worker_fails_its_task_with_protocol() {
    // Garbage framed with its true length: the whole body arrives and must be refused.
    let mut framed = 4092u32.to_le_bytes().to_vec();
    framed.extend(random_bytes(1, 4092));
    let err = run_scribble("framed-garbage", Scribble::Block(framed));
    assert_protocol("framed-garbage", &err, "");
    // Raw garbage, as a stray write of buggy code would send, and the task goes on:
    // whatever its first four bytes announce, the parent must not wait forever.
    for seed in 1..=6u64 {
        let raw = random_bytes(seed, 4096);
        let name = format!(
            "raw-garbage-seed{seed}-len{:#x}-tag{}",
            u32::from_le_bytes(raw[..4].try_into().unwrap()),
            raw[4]
        );
        let err = run_scribble(&name, Scribble::Return(raw));
        assert_protocol(&name, &err, "");
    }
}

#[test]
fn bytes_length_field_0x7fff_ffff_is_refused_from_the_header_with_protocol() {
    let mut b = 0x7fff_ffffu32.to_le_bytes().to_vec();
    b.extend_from_slice(&[13, 1, 0, 0, 0]);
    b.extend(std::iter::repeat_n(0u8, 64));
    let err = run_scribble("huge-length", Scribble::Block(b));
    assert_protocol("huge-length", &err, "exceeds the limit");
}

#[test]
fn bytes_empty_frame_fails_its_task_with_protocol() {
    let err = run_scribble("empty-frame", Scribble::Block(vec![0, 0, 0, 0]));
    assert_protocol("empty-frame", &err, "empty frame");
}

#[test]
fn bytes_truncated_frame_then_worker_exit_fails_its_task_with_worker_died() {
    // A frame announcing 100 bytes, 10 of them sent, then the worker exits: what the
    // task's caller needs to know is that its worker died, and how.
    let mut b = 100u32.to_le_bytes().to_vec();
    b.extend_from_slice(&[13, 1, 0, 0, 0, 9, 9, 9, 9, 9]);
    let err = run_scribble("truncated", Scribble::Exit(b));
    assert_eq!(
        err.kind(),
        &TaskErrorKind::WorkerDied {
            death: Death::Exit(3)
        },
        "{err}"
    );
}

#[test]
fn bytes_result_for_a_job_the_worker_does_not_hold_fails_its_task_with_protocol() {
    let mut b = Vec::new();
    wire::encode_up(
        &mut b,
        &Up::Results(vec![ResultFrame {
            seq: 999_999,
            nanos: 1,
            outcome: Outcome::Ok(&[0, 14]),
        }]),
    );
    let err = run_scribble("foreign-result", Scribble::Block(b));
    assert_protocol("foreign-result", &err, "999999");
}

#[test]
fn bytes_hello_out_of_place_fails_its_task_with_protocol() {
    let mut b = Vec::new();
    wire::encode_up(
        &mut b,
        &Up::Hello {
            version: procpool_engine::PROTOCOL_VERSION,
            fingerprint: 0,
            pid: my_pid(),
        },
    );
    let err = run_scribble("hello", Scribble::Block(b));
    assert_protocol("hello", &err, "Hello");
}
