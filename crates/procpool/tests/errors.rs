//! One error type for every fallible call: each source converts into `procpool::Error`
//! with `?` and stays matchable under its own variant; `Debug` of every public error
//! reads as its `Display`, so a `main` returning one prints a sentence.

mod common;

use std::process::Command;
use std::time::Duration;

use procpool::{
    Error, HandshakeError, PoolError, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    Shared, SharedArray, SharedError, SharedSlice, TaskError, TaskErrorKind, TryRecvError,
    TrySendError, WaitError,
};

procpool::enable_test_support!();

fn double(x: u64) -> u64 {
    x * 2
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn sum(t: (Shared<Vec<u64>>, SharedSlice<u64>, SharedArray<u64>)) -> u64 {
    let (v, s, a) = t;
    a.store(0, 1);
    v.iter().sum::<u64>() + s.iter().sum::<u64>()
}

/// Every fallible call of the crate, chained with `?` into one `Result<_, procpool::Error>`.
fn everything() -> Result<u64, Error> {
    let pool = procpool::Pool::builder().workers(1).build()?;
    let v = Shared::new(vec![1u64, 2])?;
    let s = SharedSlice::new(&[3u64, 4])?;
    let a = SharedArray::<u64>::new(1)?;
    let _ = SharedArray::from_slice(&[1u64])?;
    let total = pool.apply(sum, (v, s, a.clone()))?;
    let (tx, rx) = procpool::channel::<u64>()?;
    let (btx, brx) = procpool::bounded::<u64>(64 * 1024)?;
    tx.send(total)?;
    btx.try_send(1)?;
    btx.send_timeout(2, Duration::from_secs(5))?;
    let got = rx.recv()? + brx.try_recv()? + brx.recv_timeout(Duration::from_secs(5))?;
    let mut h = pool.spawn(double, 1)?;
    let d = h.join_timeout(Duration::from_secs(60))?;
    let d2 = pool.spawn(double, 2)?.join()?;
    let p = procpool::spawn(double, 3)?;
    let d3 = p.join()?;
    let mut p = procpool::spawn(double, 4)?;
    let d4 = p.join_timeout(Duration::from_secs(60))?;
    let m: Vec<u64> = pool.map(double, [1, 2])?;
    let i: u64 = pool.imap(double, [1]).map(|r| r.unwrap()).sum();
    Ok(got + d + d2 + d3 + d4 + m.iter().sum::<u64>() + i + a.load(0))
}

#[test]
fn every_fallible_call_converts_with_the_question_mark() {
    // 10 + 1 + 2 = 13 through channels, 2 + 4 + 6 + 8 doubled, 6 mapped, 2, and the store.
    assert_eq!(everything().unwrap(), 13 + 20 + 6 + 2 + 1);
}

#[test]
fn each_source_keeps_its_variant() {
    let (tx, rx) = procpool::channel::<String>().unwrap();
    // Nothing sent yet: try_recv and recv_timeout come back empty-handed.
    let r: Result<String, Error> = rx.try_recv().map_err(Error::from);
    assert!(
        matches!(r, Err(Error::TryRecv(TryRecvError::Empty))),
        "{r:?}"
    );
    let r: Result<String, Error> = rx
        .recv_timeout(Duration::from_millis(1))
        .map_err(Error::from);
    assert!(
        matches!(r, Err(Error::RecvTimeout(RecvTimeoutError::Timeout))),
        "{r:?}"
    );
    drop(tx);
    let r: Result<String, Error> = rx.recv().map_err(Error::from);
    assert!(
        matches!(r, Err(Error::Recv(RecvError::Disconnected))),
        "{r:?}"
    );

    let (tx, rx) = procpool::channel::<String>().unwrap();
    drop(rx);
    let e = Error::from(tx.send("lost".into()).unwrap_err());
    assert!(
        matches!(e, Error::Send(SendError::Disconnected(()))),
        "{e:?}"
    );
    let e = Error::from(tx.try_send("lost".into()).unwrap_err());
    assert!(
        matches!(
            e,
            Error::TrySend(TrySendError::Failed(SendError::Disconnected(())))
        ),
        "{e:?}"
    );
    let e = Error::from(tx.send_timeout("lost".into(), Duration::ZERO).unwrap_err());
    assert!(
        matches!(
            e,
            Error::SendTimeout(SendTimeoutError::Failed(SendError::Disconnected(())))
        ),
        "{e:?}"
    );

    // A value whose Serialize fails is a codec error of the shared data.
    #[derive(Debug)]
    struct Refuses;
    impl serde::Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("never serializes"))
        }
    }
    impl<'de> serde::Deserialize<'de> for Refuses {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Ok(Refuses)
        }
    }
    let e = Error::from(Shared::new(Refuses).unwrap_err());
    assert!(
        matches!(&e, Error::Shared(SharedError::Codec { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains("never serializes"), "{e}");

    let e = Error::from(std::io::Error::from_raw_os_error(libc::EMFILE));
    assert!(
        matches!(&e, Error::Io(io) if io.raw_os_error() == Some(libc::EMFILE)),
        "{e:?}"
    );
    assert_eq!(e.clone().to_string(), e.to_string());

    let pool = procpool::Pool::builder().workers(1).build().unwrap();
    let mut h = pool.spawn(nap, 2000).unwrap();
    let e = Error::from(h.join_timeout(Duration::from_millis(1)).unwrap_err());
    assert!(matches!(e, Error::WaitTimeout), "{e:?}");
    h.cancel();
    let e = Error::from(WaitError::Failed(Error::Pool(PoolError::Closed)));
    assert!(matches!(e, Error::Pool(PoolError::Closed)), "{e:?}");
    let e = procpool::Pool::builder().workers(0).build().unwrap_err();
    assert!(matches!(e, Error::Pool(PoolError::Config(_))), "{e:?}");
}

/// `Debug` of each public error is its `Display`: no struct dump, no escaped newlines.
#[test]
fn debug_reads_as_display() {
    fn same<E: std::fmt::Debug + std::fmt::Display>(e: E) {
        let (debug, display) = (format!("{e:?}"), e.to_string());
        assert_eq!(debug, display);
        assert!(!debug.contains(" { ") && !debug.contains("\\n"), "{debug}");
    }
    let panic = TaskErrorKind::Panic {
        message: "boom".into(),
        location: Some("src/main.rs:3:5".into()),
        backtrace: Some("   0: one\n   1: two\n".into()),
    };
    let task = TaskError::new(panic.clone(), 3, Some(77), 1);
    let debug = format!("{:?}", Error::Task(task.clone()));
    assert_eq!(
        debug,
        "task 3, run by process 77, panicked at src/main.rs:3:5: boom\n\
         stack backtrace of the worker:\n   0: one\n   1: two"
    );
    same(panic);
    same(task.clone());
    same(Error::Task(task));
    same(PoolError::Closed);
    same(Error::Pool(PoolError::Config(
        "workers must be at least 1".into(),
    )));
    same(HandshakeError::InitMissing);
    same(PoolError::Handshake {
        pid: Some(9),
        reason: HandshakeError::Exited(procpool::Death::Signal(9)),
    });
    same(WaitError::Timeout);
    same(Error::WaitTimeout);
    same(SharedError::Codec {
        message: "no".into(),
    });
    same(SendError::Disconnected(String::from("kept")));
    same(SendError::Encode {
        value: (),
        reason: "too big".into(),
    });
    same(TrySendError::Full(1u8));
    same(SendTimeoutError::Timeout(1u8));
    same(RecvError::Malformed("short".into()));
    same(TryRecvError::Empty);
    same(RecvTimeoutError::Timeout);
    same(Error::Io(std::io::Error::from_raw_os_error(libc::EMFILE)));
    // A send error whose value is not Debug is still an error (and Debug).
    struct Opaque;
    let e: Box<dyn std::error::Error> = Box::new(SendError::Disconnected(Opaque));
    assert!(e.to_string().contains("receiving ends are all gone"));
}

fn run_task_error(backtrace: bool) -> (Option<i32>, String) {
    let exe = common::fresh_example("task_error");
    let mut cmd = Command::new(exe);
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    if backtrace {
        cmd.env("RUST_BACKTRACE", "1");
    }
    let out = common::watchdog(Duration::from_secs(120), move || cmd.output().unwrap());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn main_returning_a_task_error_prints_its_sentence() {
    let (code, err) = run_task_error(false);
    assert_eq!(code, Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("Error: task 2, run by process ")
            && last.contains(", panicked at ")
            && last.ends_with(": item 2 is bad"),
        "{err}"
    );
    assert!(
        !err.contains("TaskError") && !err.contains("Panic {"),
        "{err}"
    );
}

#[test]
fn main_returning_a_task_error_prints_the_backtrace_as_lines() {
    let (code, err) = run_task_error(true);
    assert_eq!(code, Some(1), "{err}");
    let at = err.find("Error: task 2").unwrap_or_else(|| panic!("{err}"));
    let report = &err[at..];
    assert!(
        report.contains("\nstack backtrace of the worker:\n"),
        "{report}"
    );
    assert!(report.lines().count() > 3, "{report}");
    assert!(report.contains("task_error::check"), "{report}");
    assert!(
        !report.contains("\\n") && !report.contains("backtrace: Some"),
        "{report}"
    );
}
