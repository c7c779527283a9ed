//! What crosses the process boundary: values that fail to serialize, large arguments
//! and results, and the pool's message size limit.

procpool::enable_test_support!();

use serde::{Deserialize, Serialize, Serializer};

use procpool::{Error, Pool, TaskError, TaskErrorKind};

fn pool() -> Pool {
    Pool::builder().workers(2).build().expect("start a pool")
}

fn double(x: u64) -> u64 {
    x * 2
}

fn task_error(r: Result<impl std::fmt::Debug, Error>) -> TaskError {
    match r {
        Err(Error::Task(t)) => t,
        other => panic!("expected a task error, got {other:?}"),
    }
}

/// Checks that `t` is a codec error; its message is checked apart, in
/// `codec_errors_carry_the_message_of_the_failing_serialize`.
fn assert_codec(t: &TaskError) {
    assert!(
        matches!(t.kind(), TaskErrorKind::Codec { .. }),
        "expected a codec error, got {t}"
    );
}

fn codec_message(t: &TaskError) -> &str {
    match t.kind() {
        TaskErrorKind::Codec { message } => message,
        other => panic!("expected a codec error, got {other:?} ({t})"),
    }
}

/// A value whose serialization always fails.
#[derive(Debug, Deserialize)]
struct Nope;

impl Serialize for Nope {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("nope, not serializable"))
    }
}

/// An argument that serializes unless it is `Bad`.
#[derive(Debug, Deserialize)]
enum Arg {
    Good(u64),
    Bad,
}

impl Serialize for Arg {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Arg::Good(v) => s.serialize_newtype_variant("Arg", 0, "Good", v),
            Arg::Bad => Err(serde::ser::Error::custom("bad argument refuses")),
        }
    }
}

fn unserializable_result(x: u64) -> Result<u64, Nope> {
    if x == 3 { Err(Nope) } else { Ok(x) }
}

fn take_arg(a: Arg) -> u64 {
    match a {
        Arg::Good(v) => v * 10,
        Arg::Bad => unreachable!("a Bad argument cannot arrive"),
    }
}

#[test]
fn a_result_that_cannot_be_serialized_is_a_codec_error() {
    let pool = pool();
    let before = pool.worker_pids();
    let t = task_error(pool.apply(|_: u64| Nope, 1));
    assert_codec(&t);
    // In a map, with its index; the other items are fine.
    let results: Vec<Result<Result<u64, Nope>, Error>> =
        pool.imap(unserializable_result, 0..8).collect();
    for (i, r) in results.into_iter().enumerate() {
        if i == 3 {
            let t = task_error(r);
            assert_codec(&t);
            assert_eq!(t.index(), 3);
        } else {
            assert_eq!(r.unwrap().unwrap(), i as u64);
        }
    }
    let t = task_error(pool.map(unserializable_result, 0..8));
    assert_eq!(t.index(), 3);
    assert_eq!(pool.worker_pids(), before, "a codec error costs no worker");
    assert_eq!(pool.apply(double, 4).unwrap(), 8);
}

#[test]
fn an_argument_that_cannot_be_serialized_is_a_codec_error() {
    let pool = pool();
    let t = task_error(pool.apply(take_arg, Arg::Bad));
    assert_codec(&t);
    let t = task_error(pool.spawn(take_arg, Arg::Bad));
    assert_codec(&t);

    let args = || (0..10).map(|i| if i == 6 { Arg::Bad } else { Arg::Good(i) });
    let t = task_error(pool.map(take_arg, args()));
    assert_codec(&t);
    assert_eq!(t.index(), 6);
    let t = task_error(pool.with_chunk_size(4).map(take_arg, args()));
    assert_eq!(t.index(), 6);
    // imap goes on past it.
    for (i, r) in pool.imap(take_arg, args()).enumerate() {
        if i == 6 {
            let t = task_error(r);
            assert_codec(&t);
            assert_eq!(t.index(), 6);
        } else {
            assert_eq!(r.unwrap(), i as u64 * 10, "item {i}");
        }
    }
    let mut n = 0;
    for (i, r) in pool.with_chunk_size(3).imap_unordered(take_arg, args()) {
        n += 1;
        if i == 6 {
            assert_codec(&task_error(r));
        } else {
            assert_eq!(r.unwrap(), i as u64 * 10, "item {i}");
        }
    }
    assert_eq!(n, 10);
    assert_eq!(pool.apply(take_arg, Arg::Good(2)).unwrap(), 20);
}

#[test]
fn a_one_off_with_an_unserializable_value() {
    let t = task_error(procpool::spawn(take_arg, Arg::Bad).map(|_| ()));
    assert_codec(&t);
    let p = procpool::spawn(|_: u64| Nope, 0).unwrap();
    assert_codec(&task_error(p.join()));
}

const BIG: usize = 8 << 20;

fn transform(v: Vec<u8>) -> Vec<u8> {
    v.into_iter().rev().map(|b| b ^ 0x5a).collect()
}

fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn large_arguments_and_results_round_trip() {
    let pool = pool();
    let a = pattern(BIG, 1);
    let want = transform(a.clone());
    let got = pool.apply(transform, a).unwrap();
    assert_eq!(got.len(), BIG);
    assert!(got == want, "the 8 MiB result differs");
    // Several at once, through map.
    let inputs: Vec<Vec<u8>> = (0..3).map(|s| pattern(BIG, s + 2)).collect();
    let want: Vec<Vec<u8>> = inputs.iter().cloned().map(transform).collect();
    let got = pool.map(transform, inputs).unwrap();
    assert!(got == want, "the 8 MiB map results differ");
    // A one-off process too.
    let a = pattern(BIG, 9);
    let want = transform(a.clone());
    assert!(procpool::spawn(transform, a).unwrap().join().unwrap() == want);
}

const LIMIT: usize = 1 << 20;

fn make_bytes(n: usize) -> Vec<u8> {
    vec![7; n]
}

fn byte_len(v: Vec<u8>) -> usize {
    v.len()
}

fn assert_too_large(t: &TaskError) {
    match t.kind() {
        TaskErrorKind::TooLarge { size, limit } => {
            assert_eq!(*limit, LIMIT as u64, "{t}");
            assert!(*size > LIMIT as u64, "{t}");
        }
        other => panic!("expected TooLarge, got {other:?} ({t})"),
    }
}

#[test]
fn a_result_over_the_message_limit_is_too_large() {
    let pool = Pool::builder()
        .workers(2)
        .max_message_size(LIMIT)
        .build()
        .unwrap();
    let t = task_error(pool.apply(make_bytes, 2 * LIMIT));
    assert_too_large(&t);
    assert_eq!(pool.apply(make_bytes, 1000).unwrap().len(), 1000);
    let results: Vec<_> = pool
        .with_chunk_size(1)
        .imap(make_bytes, [10, 2 * LIMIT, 20])
        .collect();
    assert_eq!(results[0].as_ref().unwrap().len(), 10);
    let t = task_error(results[1].clone());
    assert_too_large(&t);
    assert_eq!(t.index(), 1);
    assert_eq!(results[2].as_ref().unwrap().len(), 20);
    assert_eq!(
        pool.map(double, 0..100).unwrap(),
        (0..100).map(double).collect::<Vec<_>>()
    );
}

#[test]
fn an_argument_over_the_message_limit_is_too_large() {
    let pool = Pool::builder()
        .workers(2)
        .max_message_size(LIMIT)
        .build()
        .unwrap();
    let t = task_error(pool.apply(byte_len, vec![1; 2 * LIMIT]));
    assert_too_large(&t);
    assert_eq!(pool.apply(byte_len, vec![1; 1000]).unwrap(), 1000);
    let inputs = vec![vec![1u8; 10], vec![2u8; 2 * LIMIT], vec![3u8; 30]];
    let results: Vec<_> = pool.with_chunk_size(1).imap(byte_len, inputs).collect();
    assert_eq!(results[0].as_ref().unwrap(), &10);
    let t = task_error(results[1].clone());
    assert_too_large(&t);
    assert_eq!(t.index(), 1);
    assert_eq!(results[2].as_ref().unwrap(), &30);
    assert_eq!(
        pool.map(double, 0..100).unwrap(),
        (0..100).map(double).collect::<Vec<_>>()
    );
}

#[test]
fn codec_errors_carry_the_message_of_the_failing_serialize() {
    let pool = pool();
    let mut failures = Vec::new();
    let mut check = |what: &str, t: TaskError, needle: &str| {
        let m = codec_message(&t).to_owned();
        if !m.contains(needle) {
            failures.push(format!("{what}: {m:?} does not mention {needle:?}"));
        }
    };
    check(
        "result in a pool",
        task_error(pool.apply(|_: u64| Nope, 1)),
        "nope, not serializable",
    );
    check(
        "argument in a pool",
        task_error(pool.apply(take_arg, Arg::Bad)),
        "bad argument refuses",
    );
    check(
        "argument in a map",
        task_error(pool.map(take_arg, [Arg::Good(1), Arg::Bad])),
        "bad argument refuses",
    );
    check(
        "result of a one-off",
        task_error(procpool::spawn(|_: u64| Nope, 0).unwrap().join()),
        "nope, not serializable",
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
