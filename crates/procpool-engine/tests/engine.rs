//! The engine on its own, without the typed front: a byte-level runner in real worker
//! processes. This binary has its own `main` (no test harness) so that a worker started
//! from it can serve.

use std::sync::Arc;
use std::time::Duration;

use procpool_engine::{Engine, EngineConfig, Failure, Job, Runner, TaskErrorKind};

/// `func` names an operation; the payload is its input.
struct Bytes;

impl Runner for Bytes {
    fn run(&mut self, func: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        match func {
            b"reverse" => {
                out.extend(payload.iter().rev());
                Ok(())
            }
            b"panic" => panic!("asked to panic"),
            b"die" => std::process::abort(),
            b"sleep" => {
                std::thread::sleep(Duration::from_secs(30));
                Ok(())
            }
            other => Err(Failure::Codec {
                message: format!("unknown function {:?}", String::from_utf8_lossy(other)),
            }),
        }
    }
}

fn job(func: &str, payload: &[u8], index: u64) -> Job {
    Job::new(
        Arc::from(func.as_bytes()),
        Arc::new(payload.to_vec()),
        index,
    )
}

fn engine() -> Engine {
    Engine::start(EngineConfig {
        workers: 2,
        ..EngineConfig::default()
    })
    .expect("engine starts")
}

fn runs_jobs_in_workers() {
    let e = engine();
    let b = e.batch();
    b.submit((0..100u64).map(|i| job("reverse", &[i as u8, 1, 2], i)))
        .unwrap();
    let mut seen = 0;
    while let Some(d) = b.recv() {
        let i = d.index as u8;
        assert_eq!(d.outcome.unwrap(), vec![2, 1, i]);
        assert!(d.pid.is_some_and(|p| p != std::process::id()));
        seen += 1;
    }
    assert_eq!(seen, 100);
    e.join();
}

fn a_large_payload_crosses_the_data_region() {
    let e = engine();
    let b = e.batch();
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    b.submit([job("reverse", &big, 0)]).unwrap();
    let out = b.recv().unwrap().outcome.unwrap();
    assert!(out.iter().eq(big.iter().rev()));
}

fn failures_are_attributed() {
    let e = engine();
    let b = e.batch();
    b.submit([
        job("panic", b"", 0),
        job("die", b"", 1),
        job("nope", b"", 2),
    ])
    .unwrap();
    let mut kinds = Vec::new();
    while let Some(d) = b.recv() {
        kinds.push((d.index, d.outcome.unwrap_err().into_kind()));
    }
    kinds.sort_by_key(|(i, _)| *i);
    assert!(
        matches!(&kinds[0].1, TaskErrorKind::Panic { message, .. } if message == "asked to panic")
    );
    assert!(
        matches!(&kinds[1].1, TaskErrorKind::WorkerDied { death } if death.signal_name() == Some("SIGABRT"))
    );
    assert!(matches!(&kinds[2].1, TaskErrorKind::Codec { .. }));
    // The dead worker was replaced: the pool still runs jobs on two workers.
    let b = e.batch();
    b.submit([job("reverse", b"ab", 0)]).unwrap();
    assert_eq!(b.recv().unwrap().outcome.unwrap(), b"ba");
    assert_eq!(e.worker_pids().len(), 2);
}

fn a_timeout_kills_the_worker() {
    let e = engine();
    let b = e.batch();
    let mut j = job("sleep", b"", 0);
    j.timeout = Some(Duration::from_millis(200));
    b.submit([j]).unwrap();
    let err = b.recv().unwrap().outcome.unwrap_err();
    assert!(
        matches!(err.kind(), TaskErrorKind::TimedOut { ran, .. } if *ran >= Duration::from_millis(200))
    );
}

fn main() {
    procpool_engine::serve_if_worker(|| Bytes);
    let tests: [(&str, fn()); 4] = [
        ("runs_jobs_in_workers", runs_jobs_in_workers),
        (
            "a_large_payload_crosses_the_data_region",
            a_large_payload_crosses_the_data_region,
        ),
        ("failures_are_attributed", failures_are_attributed),
        ("a_timeout_kills_the_worker", a_timeout_kills_the_worker),
    ];
    for (name, t) in tests {
        t();
        println!("test {name} ... ok");
    }
    println!("{} passed, 0 failed", tests.len());
}
