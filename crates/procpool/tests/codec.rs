//! Encoding and decoding as part of each task: a value that fails to (de)serialize or
//! to fit fails its own item alone, under its own index; types the default codec cannot
//! carry are refused (never delivered wrong) and travel with MessagePack; items may be
//! borrowed.

procpool::enable_test_support!();

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use procpool::{Codec, Error, Pool, TaskError, TaskErrorKind};

const N: u64 = 100_000;
const BAD: u64 = 50_003;

fn pool() -> Pool {
    Pool::builder().workers(2).build().expect("start a pool")
}

fn task_error<T: std::fmt::Debug>(r: Result<T, Error>) -> TaskError {
    match r {
        Err(Error::Task(t)) => t,
        other => panic!("expected a task error, got {other:?}"),
    }
}

/// The indices and errors of the items that failed.
fn failures<T>(results: Vec<Result<T, Error>>) -> Vec<(usize, TaskError)> {
    results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.err().map(|e| (i, task_error::<()>(Err(e)))))
        .collect()
}

fn codec_message(t: &TaskError) -> &str {
    match t.kind() {
        TaskErrorKind::Codec { message } => message,
        other => panic!("expected a codec error, got {other:?} ({t})"),
    }
}

/// An argument whose `Deserialize` refuses [`BAD`] (in the worker).
#[derive(Debug, Serialize)]
struct Picky(u64);

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == BAD {
            return Err(D::Error::custom(format!("picky refuses {v}")));
        }
        Ok(Picky(v))
    }
}

/// A result whose `Serialize` panics on [`BAD`] (in the worker).
#[derive(Debug, Deserialize)]
struct Brittle(u64);

impl Serialize for Brittle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert!(self.0 != BAD, "brittle breaks on {}", self.0);
        s.serialize_u64(self.0)
    }
}

/// A result whose `Deserialize` refuses [`BAD`] (in the parent).
#[derive(Debug, Serialize)]
struct Fussy(u64);

impl<'de> Deserialize<'de> for Fussy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == BAD {
            return Err(D::Error::custom("fussy refuses it"));
        }
        Ok(Fussy(v))
    }
}

fn unpick(p: Picky) -> u64 {
    p.0
}

fn brittle(x: u64) -> Brittle {
    Brittle(x)
}

fn fussy(x: u64) -> Fussy {
    Fussy(x)
}

#[test]
fn an_argument_that_fails_to_deserialize_fails_its_item_alone() {
    let pool = pool();
    let results: Vec<_> = pool.imap(unpick, (0..N).map(Picky)).collect();
    let failed = failures(results);
    assert_eq!(failed.len(), 1, "{:?}", &failed[..failed.len().min(3)]);
    let (i, t) = &failed[0];
    assert_eq!((*i as u64, t.index()), (BAD, BAD));
    codec_message(t);
    let t = task_error(pool.map(unpick, (0..N).map(Picky)));
    assert_eq!(t.index(), BAD, "{t}");
}

#[test]
fn a_result_whose_serialize_panics_fails_its_item_alone() {
    let pool = pool();
    let results: Vec<_> = pool.imap(brittle, 0..N).collect();
    let failed = failures(results);
    assert_eq!(failed.len(), 1, "{:?}", &failed[..failed.len().min(3)]);
    let (i, t) = &failed[0];
    assert_eq!((*i as u64, t.index()), (BAD, BAD));
    match t.kind() {
        TaskErrorKind::Panic { message, .. } => assert!(message.contains("brittle"), "{t}"),
        other => panic!("expected a panic, got {other:?}"),
    }
    let t = task_error(pool.map(brittle, 0..N));
    assert_eq!(t.index(), BAD, "{t}");
}

#[test]
fn a_result_that_fails_to_decode_in_the_parent_fails_its_item_alone() {
    let pool = pool();
    let mut n = 0;
    for (i, r) in pool.imap_unordered(fussy, 0..N) {
        if i as u64 == BAD {
            let t = task_error(r);
            assert_eq!(t.index(), BAD);
            assert!(codec_message(&t).contains("fussy refuses it"), "{t}");
        } else {
            assert_eq!(r.unwrap().0, i as u64);
        }
        n += 1;
    }
    assert_eq!(n, N);
}

#[test]
fn a_deserialize_error_keeps_the_message_it_was_given() {
    let pool = pool();
    let t = task_error(pool.apply(unpick, Picky(BAD)));
    assert!(codec_message(&t).contains("picky refuses 50003"), "{t}");
    let t = task_error(pool.map(unpick, [Picky(1), Picky(BAD)]));
    assert_eq!(t.index(), 1);
    assert!(codec_message(&t).contains("picky refuses 50003"), "{t}");
}

// --- max_message_size is per item -------------------------------------------------

fn double(x: u64) -> u64 {
    x * 2
}

fn hundred_bytes(x: u64) -> Vec<u8> {
    vec![x as u8; 100]
}

fn bytes_of(n: usize) -> Vec<u8> {
    vec![n as u8; n]
}

fn len_of(v: Vec<u8>) -> usize {
    v.len()
}

fn assert_too_large(t: &TaskError, limit: usize) {
    match t.kind() {
        TaskErrorKind::TooLarge { size, limit: l } => {
            assert_eq!(*l, limit as u64, "{t}");
            assert!(*size > limit as u64, "{t}");
        }
        other => panic!("expected TooLarge, got {other:?} ({t})"),
    }
}

#[test]
fn the_message_limit_is_per_item_and_chunks_split_to_fit_it() {
    const LIMIT: usize = 4096;
    let pool = Pool::builder()
        .workers(2)
        .max_message_size(LIMIT)
        .build()
        .unwrap();
    let doubled = pool.map(double, 0..N).unwrap();
    assert!(doubled.iter().enumerate().all(|(i, &v)| v == 2 * i as u64));
    let results: Vec<_> = pool.imap(hundred_bytes, 0..10_000).collect();
    assert!(failures(results).is_empty());

    // One argument over the limit, among many small ones: that item alone.
    let inputs = (0..3000).map(|i| vec![1u8; if i == 2500 { 2 * LIMIT } else { 1000 }]);
    let results: Vec<_> = pool.imap(len_of, inputs).collect();
    let failed = failures(results);
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].0, failed[0].1.index()), (2500, 2500));
    assert_too_large(&failed[0].1, LIMIT);

    // One result over the limit, inside a chunk: that item alone.
    let sizes = (0..1000).map(|i| if i == 700 { 2 * LIMIT } else { 10 });
    let results: Vec<_> = pool.with_chunk_size(100).imap(bytes_of, sizes).collect();
    let failed = failures(results);
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].0, failed[0].1.index()), (700, 700));
    assert_too_large(&failed[0].1, LIMIT);
}

#[test]
fn a_chunk_whose_results_pass_the_transport_bound_is_finished_in_another_job() {
    const LIMIT: usize = 1 << 20;
    let pool = Pool::builder()
        .workers(2)
        .max_message_size(LIMIT)
        .build()
        .unwrap();
    // 100 results of 1,000,000 bytes in one chunk: 100 MB, over the 64 MiB bound.
    let got = pool
        .with_chunk_size(100)
        .map(|i: u64| vec![i as u8; 1_000_000], 0..100)
        .unwrap();
    assert_eq!(got.len(), 100);
    for (i, v) in got.iter().enumerate() {
        assert!(
            v.len() == 1_000_000 && v.iter().all(|&b| b == i as u8),
            "item {i}"
        );
    }
}

// --- types postcard cannot carry ------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Msg {
    #[serde(skip_serializing_if = "Option::is_none")]
    a: Option<u8>,
    b: u8,
    c: u8,
    d: Vec<u8>,
}

fn fields(m: Msg) -> (Option<u8>, u8, u8, Vec<u8>) {
    (m.a, m.b, m.c, m.d)
}

fn make_msg(c: u8) -> Msg {
    Msg {
        a: None,
        b: 0,
        c,
        d: vec![1, 7],
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum Loose {
    Num(u64),
    Text(String),
}

fn describe(l: Loose) -> String {
    format!("{l:?}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Inner {
    x: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Flat {
    #[serde(flatten)]
    inner: Inner,
    y: u8,
}

fn flat_sum(f: Flat) -> u8 {
    f.inner.x + f.y
}

fn msg() -> Msg {
    make_msg(5)
}

#[test]
fn a_type_postcard_cannot_carry_is_refused_never_delivered_wrong() {
    let pool = pool();
    let t = task_error(pool.apply(fields, msg()));
    let m = codec_message(&t);
    assert!(
        m.contains("Msg") && m.contains("skip_serializing_if"),
        "{m}"
    );
    assert!(m.contains("MessagePack"), "{m}");
    // The same as a result, refused in the worker.
    let t = task_error(pool.apply(make_msg, 5));
    assert!(codec_message(&t).contains("Msg"), "{t}");
    // A type whose first values pass (the field is there) and later ones skip it: each
    // value that leaves the field out is refused, the others arrive intact.
    let mixed = (0..400u32).map(|i| Msg {
        a: (i < 300).then_some(1),
        ..make_msg(i as u8)
    });
    let results: Vec<_> = pool.imap(fields, mixed).collect();
    for (i, r) in results.into_iter().enumerate() {
        if i < 300 {
            assert_eq!(r.unwrap(), (Some(1), 0, i as u8, vec![1, 7]));
        } else {
            let t = task_error(r);
            assert_eq!(t.index(), i as u64);
            assert!(codec_message(&t).contains("field `a` of `Msg`"), "{t}");
        }
    }
    // An untagged enum.
    let t = task_error(pool.apply(describe, Loose::Num(3)));
    assert!(codec_message(&t).contains("MessagePack"), "{t}");
    // A flattened struct.
    let t = task_error(pool.apply(
        flat_sum,
        Flat {
            inner: Inner { x: 1 },
            y: 2,
        },
    ));
    let m = codec_message(&t);
    assert!(m.contains("Flat") && m.contains("flatten"), "{m}");
    let mp = pool.with_codec(Codec::MessagePack);
    assert_eq!(
        mp.apply(
            flat_sum,
            Flat {
                inner: Inner { x: 1 },
                y: 2
            }
        )
        .unwrap(),
        3
    );
}

#[test]
fn messagepack_carries_them_per_call_and_per_pool() {
    let pool = pool();
    let mp = pool.with_codec(Codec::MessagePack);
    assert_eq!(mp.apply(fields, msg()).unwrap(), (None, 0, 5, vec![1, 7]));
    assert_eq!(mp.apply(make_msg, 9).unwrap(), make_msg(9));
    assert_eq!(
        mp.apply(describe, Loose::Text("x".into())).unwrap(),
        "Text(\"x\")"
    );
    let got = mp.map(make_msg, 0..=255u8).unwrap();
    assert_eq!(got[200], make_msg(200));
    let pool = Pool::builder()
        .workers(2)
        .codec(Codec::MessagePack)
        .build()
        .unwrap();
    let msgs: Vec<Msg> = (0..5000u32).map(|i| make_msg(i as u8)).collect();
    let got = pool.map(fields, &msgs).unwrap();
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, f)| f.2 == i as u8 && f.0.is_none())
    );
    // Per-item failures work the same way with MessagePack, message included.
    let t = task_error(pool.map(unpick, (0..N).map(Picky)));
    assert_eq!(t.index(), BAD, "{t}");
    assert!(codec_message(&t).contains("picky refuses 50003"), "{t}");
    // Numbers and bytes still take their fast paths, whatever the codec.
    assert_eq!(pool.map(double, 0..N).unwrap()[7], 14);
    assert_eq!(pool.apply(len_of, vec![3u8; 1 << 20]).unwrap(), 1 << 20);
}

// --- borrowed items --------------------------------------------------------------------

fn strlen(s: String) -> usize {
    s.len()
}

#[test]
fn items_may_be_borrowed() {
    let pool = pool();
    let ids: Vec<u64> = (0..1000).collect();
    let doubled = pool.map(double, &ids).unwrap();
    assert_eq!(doubled[999], 1998);
    let names = vec!["a".to_string(), "bcd".to_string()];
    assert_eq!(pool.map(strlen, &names).unwrap(), [1, 3]);
    let firsts: Vec<_> = pool.imap(strlen, names.iter()).collect();
    assert_eq!(firsts.len(), 2);
    assert_eq!(pool.imap_unordered(double, &ids).count(), 1000);
    assert_eq!(pool.apply(strlen, &names[1]).unwrap(), 3);
    assert_eq!(pool.spawn(strlen, &names[0]).unwrap().join().unwrap(), 1);
    let p = procpool::spawn(strlen, &names[1]).unwrap();
    assert_eq!(p.join().unwrap(), 3);
    assert_eq!(names.len(), 2, "the inputs are still ours");
}
