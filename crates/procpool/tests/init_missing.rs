//! A program whose `main` forgets `procpool::init()`: its workers must refuse to serve and
//! say why, never start pools of their own (no fork bomb). This binary has no test
//! harness and deliberately neither `init()` nor `enable_test_support!()`.

use procpool::{Error, HandshakeError, PoolError};

fn main() {
    // A worker started from this binary runs this same `main` and reaches the pool below:
    // that is where it must refuse and exit.
    let started = std::time::Instant::now();
    let r = procpool::Pool::builder().workers(2).build();
    match r {
        Err(Error::Pool(PoolError::Handshake {
            reason: HandshakeError::InitMissing,
            ..
        })) => {}
        other => panic!("expected a handshake error naming the missing init(), got {other:?}"),
    }
    let msg = procpool::Pool::builder()
        .workers(1)
        .build()
        .unwrap_err()
        .to_string();
    assert!(msg.contains("procpool::init()"), "{msg}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    let e = procpool::spawn(|x: u32| x + 1, 1).map(|p| p.join());
    match e {
        Ok(Err(Error::Pool(PoolError::Handshake {
            reason: HandshakeError::InitMissing,
            ..
        }))) => {}
        other => panic!("a one-off process must refuse too, got {other:?}"),
    }
    println!("test workers_of_a_main_without_init_refuse ... ok");
    println!("1 passed, 0 failed");
}
