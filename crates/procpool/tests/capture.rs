//! `capture!`: a task function with explicit captures, through every call and with a
//! call's settings; a captured `Shared` is a handle, its value read in the worker.

use std::path::Path;
use std::time::Duration;

use procpool::{Error, Pool, Shared, TaskErrorKind};

procpool::enable_test_support!();

#[test]
fn captures_travel_with_every_call() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let (factor, suffix) = (3u64, String::from("!"));
    let f = procpool::capture!([factor, suffix] |x: u64| format!("{}{suffix}", x * factor));
    assert_eq!(f.map(&pool, 0..4u64).unwrap(), ["0!", "3!", "6!", "9!"]);
    let got: Vec<String> = f.imap(&pool, [5u64]).map(Result::unwrap).collect();
    assert_eq!(got, ["15!"]);
    assert_eq!(f.imap_unordered(&pool, [1u64]).count(), 1);
    assert_eq!(f.apply(&pool, 2u64).unwrap(), "6!");
    assert_eq!(f.spawn(&pool, 4u64).unwrap().join().unwrap(), "12!");
    assert_eq!(f.spawn_process(1u64).unwrap().join().unwrap(), "3!");
    // Borrowed items, as with the pool's own calls.
    let dir = String::from("/data");
    let join = procpool::capture!([dir] |p: std::path::PathBuf| format!("{dir}/{}", p.display()));
    let paths = [Path::new("a"), Path::new("b")];
    assert_eq!(join.map(&pool, &paths).unwrap(), ["/data/a", "/data/b"]);
}

#[test]
fn a_call_with_settings_applies_them() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let ms = 5_000u64;
    let sleepy = procpool::capture!([ms] |x: u32| {
        std::thread::sleep(Duration::from_millis(ms));
        x
    });
    let r = sleepy.apply(pool.with_timeout(Duration::from_millis(200)), 1u32);
    match r {
        Err(Error::Task(t)) => assert!(matches!(t.kind(), TaskErrorKind::TimedOut { .. }), "{t}"),
        other => panic!("expected a time-out, got {other:?}"),
    }
}

#[test]
fn a_captured_shared_value_is_read_in_the_worker() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let table = Shared::new((0..1000u64).collect::<Vec<_>>()).unwrap();
    let lookup = procpool::capture!([table] |i: usize| table[i] * 2);
    assert_eq!(lookup.map(&pool, [1usize, 999]).unwrap(), [2, 1998]);
}
