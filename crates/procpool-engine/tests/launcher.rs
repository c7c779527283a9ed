//! The launcher seam: workers started by a front's own [`Launcher`] (here: this test
//! binary started again by `std::process::Command`, which then serves through
//! `serve_launched`) and checked by a chosen identity instead of the executable's
//! fingerprint. This binary has its own `main` (no test harness).

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use procpool_engine::{
    Engine, EngineConfig, Failure, HandshakeError, Job, Launcher, PoolError, Runner, TaskErrorKind,
};

/// Tells a started copy of this binary to serve, with this identity.
const MARK: &str = "LAUNCHER_TEST_IDENTITY";
const IDENTITY: u64 = 0x5eed_1234;

struct Upper;

impl Runner for Upper {
    fn run(&mut self, func: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        match func {
            b"upper" => {
                out.extend(payload.iter().map(u8::to_ascii_uppercase));
                Ok(())
            }
            b"sleep" => {
                std::thread::sleep(Duration::from_secs(30));
                Ok(())
            }
            _ => Err(Failure::Codec {
                message: "unknown function".into(),
            }),
        }
    }
}

/// Starts this binary again, in a session of its own, telling it which identity to
/// claim.
#[derive(Debug)]
struct Relaunch {
    claim: u64,
}

impl Launcher for Relaunch {
    fn launch(&self, stdin: BorrowedFd<'_>, env: &[(OsString, OsString)]) -> std::io::Result<u32> {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.env(MARK, self.claim.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(stdin.try_clone_to_owned()?));
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd.spawn()?.id())
    }
}

#[derive(Debug)]
struct Refuse;

impl Launcher for Refuse {
    fn launch(&self, _: BorrowedFd<'_>, _: &[(OsString, OsString)]) -> std::io::Result<u32> {
        Err(std::io::Error::other("no workers here"))
    }
}

fn config(launcher: Arc<dyn Launcher>) -> EngineConfig {
    EngineConfig {
        workers: 2,
        launcher: Some(launcher),
        identity: Some(IDENTITY),
        handshake_timeout: Duration::from_secs(20),
        ..EngineConfig::default()
    }
}

fn job(func: &str, payload: &[u8], index: u64) -> Job {
    Job::new(
        Arc::from(func.as_bytes()),
        Arc::new(payload.to_vec()),
        index,
    )
}

fn launched_workers_run_jobs_as_session_leaders() {
    let e = Engine::start(config(Arc::new(Relaunch { claim: IDENTITY }))).unwrap();
    let b = e.batch();
    b.submit((0..50).map(|i| job("upper", b"abc", i))).unwrap();
    let mut n = 0;
    while let Some(d) = b.recv() {
        assert_eq!(d.outcome.unwrap(), b"ABC");
        n += 1;
    }
    assert_eq!(n, 50);
    for pid in e.worker_pids() {
        // SAFETY: plain getsid call.
        assert_eq!(unsafe { libc::getsid(pid as i32) }, pid as i32);
    }
    e.join();
}

fn another_identity_is_refused() {
    let err = Engine::start(config(Arc::new(Relaunch { claim: 7 }))).unwrap_err();
    assert!(
        matches!(
            &err,
            PoolError::Handshake {
                reason: HandshakeError::BinaryMismatch { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

fn a_refusing_launcher_fails_the_start() {
    let err = Engine::start(config(Arc::new(Refuse))).unwrap_err();
    assert!(err.to_string().contains("no workers here"), "{err}");
}

fn a_killed_launched_worker_is_reported_and_replaced() {
    let e = Engine::start(config(Arc::new(Relaunch { claim: IDENTITY }))).unwrap();
    let b = e.batch();
    b.submit([job("sleep", b"", 0)]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let before = loop {
        let pids = e.worker_pids();
        if pids.len() == 2 || Instant::now() > deadline {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(300));
    for &pid in &before {
        // SAFETY: plain kill of our own worker.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let err = b.recv().unwrap().outcome.unwrap_err();
    assert!(
        matches!(err.kind(), TaskErrorKind::WorkerDied { death } if death.signal_name() == Some("SIGKILL")),
        "{err}"
    );
    let b = e.batch();
    b.submit([job("upper", b"x", 0)]).unwrap();
    assert_eq!(b.recv().unwrap().outcome.unwrap(), b"X");
    assert!(e.worker_pids().iter().all(|p| !before.contains(p)));
}

fn main() {
    if let Ok(claim) = std::env::var(MARK) {
        let claim = claim.parse().expect("an identity");
        std::process::exit(procpool_engine::serve_launched(claim, &mut Upper));
    }
    let tests: [(&str, fn()); 4] = [
        (
            "launched_workers_run_jobs_as_session_leaders",
            launched_workers_run_jobs_as_session_leaders,
        ),
        ("another_identity_is_refused", another_identity_is_refused),
        (
            "a_refusing_launcher_fails_the_start",
            a_refusing_launcher_fails_the_start,
        ),
        (
            "a_killed_launched_worker_is_reported_and_replaced",
            a_killed_launched_worker_is_reported_and_replaced,
        ),
    ];
    for (name, t) in tests {
        t();
        println!("test {name} ... ok");
    }
    println!("{} passed, 0 failed", tests.len());
}
