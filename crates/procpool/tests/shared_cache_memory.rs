//! The cache of shared values in a worker is bounded by what the values hold there
//! (decoded), not by their encoding: 64 live values, each far larger decoded than
//! encoded, with the worker's resident memory read from `/proc/<pid>/status`.

mod common;

procpool::enable_test_support!();

use std::time::Duration;

use procpool::{Pool, Shared};
use serde::{Deserialize, Deserializer, Serialize};

const MIB: usize = 1 << 20;
/// The bound the workers of these tests are given (in their initializer).
const BOUND: usize = 48 * MIB;
/// A hard limit against hangs (the work takes a few seconds; far more on a loaded machine).
const HANG: Duration = Duration::from_secs(60);

fn set_bound(bytes: usize) {
    procpool::shared::set_cache_bytes(bytes);
}

fn pool() -> Pool {
    Pool::builder()
        .workers(1)
        .initializer(set_bound, BOUND)
        .build()
        .unwrap()
}

/// The worker's resident memory (`VmRSS`), read by the parent.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<usize>()
        .unwrap()
        * 1024
}

fn nothing(_: u8) -> (usize, usize) {
    procpool::shared::cached()
}

fn touch_table(t: Shared<Vec<u64>>) -> (usize, usize) {
    assert_eq!(t[t.len() - 1], 99);
    procpool::shared::cached()
}

/// Sends each of `values` (all kept alive here) to the one worker in turn; checks after
/// each that the worker's memory stays under its baseline plus the bound plus the value
/// in use, and that the cache's own count stays under the bound.
fn check<T: Clone>(
    pool: &Pool,
    values: &[T],
    each: usize,
    run: impl Fn(&Pool, T) -> (usize, usize),
) {
    let pid = pool.worker_pids()[0];
    let base = rss(pid);
    let mut peak = 0;
    for v in values {
        let (entries, bytes) = run(pool, v.clone());
        assert!(
            entries <= 64 && bytes <= BOUND + each,
            "cache says {bytes} bytes"
        );
        peak = peak.max(rss(pid));
    }
    let allowed = base + BOUND + 2 * each + 16 * MIB;
    eprintln!(
        "worker {pid}: baseline {} MiB, peak {} MiB, allowed {} MiB ({} values of {} MiB)",
        base / MIB,
        peak / MIB,
        allowed / MIB,
        values.len(),
        each / MIB
    );
    assert!(
        peak <= allowed,
        "the worker's resident memory reached {} MiB, over {} MiB",
        peak / MIB,
        allowed / MIB
    );
}

#[test]
fn sixty_four_tables_larger_decoded_than_encoded_stay_under_the_bound() {
    common::watchdog(HANG, || {
        // 512 Ki small numbers: 512 KiB encoded, 4 MiB decoded; 64 of them, all alive.
        let n = MIB / 2;
        let tables: Vec<Shared<Vec<u64>>> = (0..64)
            .map(|k| {
                Shared::new((0..n as u64).map(|i| (i + k) % 100).chain([99]).collect()).unwrap()
            })
            .collect();
        let pool = pool();
        pool.apply(nothing, 0).unwrap();
        check(&pool, &tables, 4 * MIB, |p, t| {
            p.apply(touch_table, t).unwrap()
        });
    });
}

/// A value of a few bytes encoded that holds `mib` MiB once decoded (the extreme of a
/// value whose encoding says nothing of its size). The parent's copy holds nothing.
#[derive(Clone, Debug)]
struct Held {
    mib: u32,
    bytes: Vec<u8>,
}

impl Serialize for Held {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.mib.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Held {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mib = u32::deserialize(d)?;
        Ok(Held {
            mib,
            bytes: vec![1u8; mib as usize * MIB],
        })
    }
}

fn touch_held(h: Shared<Held>) -> (usize, usize) {
    assert_eq!(h.bytes.len(), h.mib as usize * MIB);
    procpool::shared::cached()
}

#[test]
fn sixty_four_values_of_one_byte_that_hold_8_mib_each_stay_under_the_bound() {
    common::watchdog(HANG, || {
        let held: Vec<Shared<Held>> = (0..64)
            .map(|_| {
                Shared::new(Held {
                    mib: 8,
                    bytes: Vec::new(),
                })
                .unwrap()
            })
            .collect();
        assert_eq!(Shared::encoded_len(&held[0]), 1);
        let pool = pool();
        pool.apply(nothing, 0).unwrap();
        check(&pool, &held, 8 * MIB, |p, h| {
            p.apply(touch_held, h).unwrap()
        });
    });
}
