//! `Shared`, `SharedSlice` and `SharedArray` with real processes: through
//! `procpool::spawn`, `apply`, `map` and `imap`; decoded once per worker; read in place.

procpool::enable_test_support!();

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use procpool::{Pool, Shared, SharedArray, SharedSlice};
use serde::{Deserialize, Deserializer, Serialize};

/// A table that counts, in each process, how many times one was decoded.
#[derive(Serialize, Debug, PartialEq)]
struct Table(HashMap<u64, u64>);

static DECODES: AtomicU64 = AtomicU64::new(0);

impl<'de> Deserialize<'de> for Table {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        DECODES.fetch_add(1, Ordering::SeqCst);
        HashMap::deserialize(d).map(Table)
    }
}

fn table() -> Shared<Table> {
    Shared::new(Table((0..1000).map(|k| (k, k * k)).collect())).unwrap()
}

/// Looks a key up; says how many tables this process decoded so far.
fn lookup((t, k): (Shared<Table>, u64)) -> (u64, u64) {
    (t.0[&(k % 1000)], DECODES.load(Ordering::SeqCst))
}

fn pool() -> Pool {
    Pool::builder().workers(2).build().unwrap()
}

#[test]
fn map_of_10k_tasks_decodes_the_table_once_per_worker() {
    let t = table();
    let pool = pool();
    let out = pool
        .map(lookup, (0..10_000u64).map(|k| (t.clone(), k)))
        .unwrap();
    for (k, (v, decodes)) in out.into_iter().enumerate() {
        let k = k as u64 % 1000;
        assert_eq!(v, k * k);
        assert_eq!(decodes, 1, "a worker decoded the table {decodes} times");
    }
    // The maker holds the value itself: it decodes one only to check, once per type
    // (the round-trip check of the codec), whatever the number of tables and tasks.
    assert!(DECODES.load(Ordering::SeqCst) <= 1);
}

#[test]
fn imap_apply_spawn_and_one_off_processes_see_it() {
    let t = table();
    let pool = pool();
    let got: Vec<u64> = pool
        .imap(lookup, (0..500u64).map(|k| (t.clone(), k)))
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(got, (0..500u64).map(|k| k * k).collect::<Vec<_>>());
    assert_eq!(pool.apply(lookup, (t.clone(), 12)).unwrap().0, 144);
    assert_eq!(
        pool.spawn(lookup, (t.clone(), 13))
            .unwrap()
            .join()
            .unwrap()
            .0,
        169
    );
    let p = procpool::spawn(lookup, (t.clone(), 14)).unwrap();
    assert_eq!(p.join().unwrap(), (196, 1));
    assert_eq!(t.0[&3], 9, "the maker reads its own value");
}

/// The address range of the mapping holding `p`, with its file name, from `/proc/self/maps`.
fn mapping_of(p: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .find(|l| {
            let range = l.split_whitespace().next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let a = usize::from_str_radix(a, 16).unwrap();
            let b = usize::from_str_radix(b, 16).unwrap();
            (a..b).contains(&p)
        })
        .map(str::to_string)
}

/// Sums a few elements and says what the slice's memory is.
fn sum_in_place((s, k): (SharedSlice<u64>, usize)) -> (u64, String) {
    let sum = s[k] + s[s.len() - 1 - k];
    (sum, mapping_of(s.as_ptr() as usize).unwrap_or_default())
}

#[test]
fn a_shared_slice_is_read_in_place_from_a_read_only_mapping() {
    let data: Vec<u64> = (0..100_000).collect();
    let s = SharedSlice::new(&data).unwrap();
    assert_eq!(&s[..], &data[..]);
    let pool = pool();
    let out = pool
        .map(sum_in_place, (0..1000).map(|k| (s.clone(), k)))
        .unwrap();
    for (sum, map) in out {
        assert_eq!(sum, 99_999);
        assert!(map.contains("memfd:procpool-shared-slice"), "{map}");
        let perms = map.split_whitespace().nth(1).unwrap();
        assert!(perms.starts_with("r-"), "the mapping is writable: {map}");
    }
    let empty = SharedSlice::<f64>::new(&[]).unwrap();
    assert!(
        pool.apply(|e: SharedSlice<f64>| e.is_empty(), empty)
            .unwrap()
    );
}

fn count((hits, k): (SharedArray<u64>, usize)) -> u64 {
    hits.fetch_add(k % 8, 1);
    let _ = hits.compare_exchange(8, 0, k as u64);
    hits.load(k % 8)
}

#[test]
fn tasks_write_a_shared_array_in_place() {
    let hits = SharedArray::<u64>::new(9).unwrap();
    let pool = pool();
    pool.map(count, (0..4000).map(|k| (hits.clone(), k)))
        .unwrap();
    let v = hits.to_vec();
    assert_eq!(&v[..8], &[500; 8]);
    assert_ne!(v[8], 0, "one compare_exchange won");
    let neg = SharedArray::<i32>::from_slice(&[-1, 5]).unwrap();
    let r = pool.apply(
        |a: SharedArray<i32>| {
            a.store(0, a.load(0) * 10);
            a.len()
        },
        neg.clone(),
    );
    assert_eq!(r.unwrap(), 2);
    assert_eq!(neg.to_vec(), vec![-10, 5]);
}

fn out_of_range(a: SharedArray<u32>) -> u32 {
    a.load(a.len())
}

#[test]
fn an_index_out_of_range_fails_the_task_alone() {
    let a = SharedArray::<u32>::new(4).unwrap();
    let pool = pool();
    let e = pool.apply(out_of_range, a.clone()).unwrap_err().to_string();
    assert!(
        e.contains("index 4 out of range for a shared array of 4 elements"),
        "{e}"
    );
    assert_eq!(pool.apply(|a: SharedArray<u32>| a.len(), a).unwrap(), 4);
}

#[test]
fn serde_json_of_a_shared_value_fails_clearly() {
    let t = table();
    let e = serde_json::to_string(&t).unwrap_err().to_string();
    assert!(e.contains("can only be sent to procpool processes"), "{e}");
    let s = SharedSlice::new(&[1u8]).unwrap();
    assert!(serde_json::to_string(&s).is_err());
    let bogus = r#"{"kind":1,"id":7,"len":3,"codec":1,"memfd":0,"watcher":1}"#;
    let e = serde_json::from_str::<Shared<Table>>(bogus)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no descriptors are being received here"), "{e}");
}

fn give_back(t: Shared<Table>) -> Shared<Table> {
    t
}

#[test]
fn a_shared_value_cannot_be_a_result() {
    let pool = pool();
    let e = pool.apply(give_back, table()).unwrap_err().to_string();
    assert!(e.contains("can only be sent to procpool processes"), "{e}");
}
