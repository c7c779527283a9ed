//! Attacks on "a crash costs exactly one item in every chunk": deaths at the first, the
//! last and two items of one chunk, a time limit killing a worker mid-chunk, recycling,
//! results larger than the control block's 2 MiB items area, retries, and tasks that
//! forge the items word (the worker is not trusted). Each item appends `start i` when it
//! begins and `end i` as its last step; the checks: every item that ended is delivered
//! exactly once with its value, every index comes back exactly once, and an item that
//! never ran into a death runs to its end exactly once.

procpool::enable_test_support!();

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TempDir, append_line, watchdog};
use procpool::{Error, Pool, TaskErrorKind};

/// What an item does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Act {
    /// Returns `i * 2` (as `len` bytes when `len > 0`).
    Ok,
    /// Segfaults its worker.
    Segv,
    /// Segfaults its worker the first time only (a file marks the first run).
    SegvOnce,
    /// Sleeps far past any time limit.
    Hang,
    /// Records that the chunk's first `n` items finished with forged results, then aborts.
    ForgeAll,
    /// Records two finished items whose results stop the chunk after the first, then
    /// aborts.
    ForgeStop,
}

type Arg = (u64, Act, u32, String);

fn log(dir: &str, line: String) {
    append_line(&format!("{dir}/log"), &format!("{line}\n"));
}

fn segv() -> ! {
    let p = std::ptr::without_provenance_mut::<u8>(16);
    // SAFETY: not safe at all: the point is to crash this worker with SIGSEGV.
    unsafe { std::ptr::write_volatile(p, 1) };
    unreachable!()
}

fn item((i, act, len, dir): Arg) -> Vec<u8> {
    log(&dir, format!("start {i}"));
    match act {
        Act::Ok => {}
        Act::Segv => segv(),
        Act::SegvOnce => {
            let mark = format!("{dir}/once-{i}");
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&mark)
                .is_ok()
            {
                segv();
            }
        }
        Act::Hang => std::thread::sleep(Duration::from_secs(60)),
        Act::ForgeAll => {
            // "Every item of the chunk finished": one packed u64 per item... that is not
            // even the layout of these results.
            let forged = vec![1u8; 1 + 8 * 64];
            procpool_engine::items_finished(64, &forged, 0);
            std::process::abort();
        }
        Act::ForgeStop => {
            // Encoded layout: one item (an empty vector), then the mark that ends a
            // chunk a worker cut short, claimed as two finished items.
            let mut forged = vec![0u8];
            forged.extend_from_slice(&2u32.to_le_bytes());
            forged.extend_from_slice(&[0, 0]);
            forged.extend_from_slice(&u32::MAX.to_le_bytes());
            procpool_engine::items_finished(2, &forged, 0);
            std::process::abort();
        }
    }
    let v = if len == 0 {
        (i * 2).to_le_bytes().to_vec()
    } else {
        let mut v = vec![(i % 251) as u8; len as usize];
        v[..8].copy_from_slice(&(i * 2).to_le_bytes());
        v
    };
    log(&dir, format!("end {i}"));
    v
}

fn expected(i: u64, len: u32) -> Vec<u8> {
    if len == 0 {
        (i * 2).to_le_bytes().to_vec()
    } else {
        let mut v = vec![(i % 251) as u8; len as usize];
        v[..8].copy_from_slice(&(i * 2).to_le_bytes());
        v
    }
}

/// Counts of `start i` and `end i` lines.
fn runs(dir: &str) -> (HashMap<u64, usize>, HashMap<u64, usize>) {
    let mut starts = HashMap::new();
    let mut ends = HashMap::new();
    for l in std::fs::read_to_string(format!("{dir}/log"))
        .unwrap_or_default()
        .lines()
    {
        let (what, i) = l.split_once(' ').expect("a log line");
        let i: u64 = i.parse().expect("an index");
        match what {
            "start" => *starts.entry(i).or_default() += 1,
            "end" => *ends.entry(i).or_default() += 1,
            _ => panic!("log line {l:?}"),
        }
    }
    (starts, ends)
}

#[derive(Clone, Copy)]
enum Via {
    Imap,
    Unordered,
}

struct Case {
    n: u64,
    acts: Vec<(u64, Act)>,
    len: u32,
    chunk: Option<usize>,
    retries: u32,
    timeout: Option<Duration>,
    recycle: Option<u64>,
    via: Via,
    /// Whether the tasks tell the truth about the items finished: a forged report may
    /// cost the chunk's other items (never an index, nor a hang).
    honest: bool,
}

impl Case {
    fn new(n: u64, acts: &[(u64, Act)]) -> Case {
        Case {
            n,
            acts: acts.to_vec(),
            len: 0,
            chunk: Some(4),
            retries: 0,
            timeout: None,
            recycle: None,
            via: Via::Imap,
            honest: true,
        }
    }

    /// Runs the case; returns each index's outcome and the run counts. Checks that every
    /// index came back exactly once and that every item that ended was delivered with its
    /// value, and that an item without an act ran to its end exactly once.
    fn run(self, what: &'static str) -> HashMap<u64, Result<Vec<u8>, Error>> {
        watchdog(Duration::from_secs(60), move || self.run_inner(what))
    }

    fn run_inner(self, what: &str) -> HashMap<u64, Result<Vec<u8>, Error>> {
        let tmp = TempDir::new("attack-chunks");
        let dir = tmp.path().to_str().unwrap().to_owned();
        let mut b = Pool::builder().workers(2).retries(self.retries);
        if let Some(c) = self.chunk {
            b = b.chunk_size(c);
        }
        if let Some(t) = self.timeout {
            b = b.timeout(t);
        }
        if let Some(r) = self.recycle {
            b = b.recycle_after(r);
        }
        let pool = b.build().expect("a pool");
        let acts: HashMap<u64, Act> = self.acts.iter().copied().collect();
        let input: Vec<Arg> = (0..self.n)
            .map(|i| {
                let act = acts.get(&i).copied().unwrap_or(Act::Ok);
                (i, act, self.len, dir.clone())
            })
            .collect();
        let mut got: HashMap<u64, Result<Vec<u8>, Error>> = HashMap::new();
        match self.via {
            Via::Imap => {
                for (i, r) in pool.imap(item, input).enumerate() {
                    assert!(got.insert(i as u64, r).is_none(), "{what}: {i} twice");
                }
            }
            Via::Unordered => {
                for (i, r) in pool.imap_unordered(item, input) {
                    assert!(got.insert(i as u64, r).is_none(), "{what}: {i} twice");
                }
            }
        }
        assert_eq!(
            got.len() as u64,
            self.n,
            "{what}: {} of {} indices came back",
            got.len(),
            self.n
        );
        let (starts, ends) = runs(&dir);
        for i in 0..self.n {
            let r = &got[&i];
            let ended = ends.get(&i).copied().unwrap_or(0);
            let started = starts.get(&i).copied().unwrap_or(0);
            if ended > 0 && self.honest {
                match r {
                    Ok(v) => assert!(
                        *v == expected(i, self.len),
                        "{what}: item {i} came back with a wrong value"
                    ),
                    Err(e) => panic!("{what}: item {i} ran to its end, yet failed: {e}"),
                }
            }
            if !acts.contains_key(&i) && self.honest {
                assert_eq!(
                    (started, ended),
                    (1, 1),
                    "{what}: item {i} (no fault of its own) started {started} and ended \
                     {ended} times; outcome {:?}",
                    r.as_ref().map(|v| v.len())
                );
            }
        }
        // The pool goes on.
        let again = pool
            .map(item, (0..3u64).map(|i| (i, Act::Ok, 0, dir.clone())))
            .expect("a map after the attack");
        assert_eq!(again, (0..3).map(|i| expected(i, 0)).collect::<Vec<_>>());
        got
    }
}

fn died(r: &Result<Vec<u8>, Error>) -> bool {
    matches!(r, Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::WorkerDied { .. }))
}

#[test]
fn the_first_item_of_each_chunk_dies() {
    let got = Case::new(24, &[(0, Act::Segv), (8, Act::Segv), (20, Act::Segv)]).run("first");
    for k in [0, 8, 20] {
        assert!(died(&got[&k]), "item {k}: {:?}", got[&k]);
    }
}

#[test]
fn the_last_item_of_each_chunk_dies() {
    let got = Case::new(24, &[(3, Act::Segv), (11, Act::Segv), (23, Act::Segv)]).run("last");
    for k in [3, 11, 23] {
        assert!(died(&got[&k]), "item {k}: {:?}", got[&k]);
    }
}

#[test]
fn two_deaths_in_one_chunk_unordered() {
    let mut c = Case::new(
        24,
        &[
            (5, Act::Segv),
            (6, Act::Segv),
            (9, Act::Segv),
            (11, Act::Segv),
        ],
    );
    c.via = Via::Unordered;
    let got = c.run("two deaths");
    for k in [5, 6, 9, 11] {
        assert!(died(&got[&k]), "item {k}: {:?}", got[&k]);
    }
}

#[test]
fn deaths_in_default_chunking_with_retries() {
    let mut c = Case::new(
        400,
        &[
            (50, Act::SegvOnce),
            (51, Act::SegvOnce),
            (399, Act::SegvOnce),
        ],
    );
    c.chunk = None;
    c.retries = 1;
    let got = c.run("retries");
    for k in [50, 51, 399] {
        assert!(
            got[&k].is_ok(),
            "item {k} should succeed on its retry: {:?}",
            got[&k]
        );
    }
}

#[test]
fn a_time_limit_kills_a_worker_mid_chunk() {
    let mut c = Case::new(16, &[(6, Act::Hang), (13, Act::Hang)]);
    c.timeout = Some(Duration::from_millis(1500));
    let got = c.run("time limit");
    for k in [6, 13] {
        assert!(
            matches!(&got[&k], Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::TimedOut { .. })),
            "item {k}: {:?}",
            got[&k]
        );
    }
}

#[test]
fn a_death_mid_chunk_with_recycling() {
    let mut c = Case::new(40, &[(6, Act::Segv), (17, Act::Segv)]);
    c.recycle = Some(3);
    c.via = Via::Unordered;
    c.run("recycle_after");
}

#[test]
fn results_past_the_items_area_then_a_death() {
    // Three results of 1 MiB before the death: more than the 2 MiB the worker can record.
    let mut c = Case::new(12, &[(3, Act::Segv), (10, Act::Segv)]);
    c.len = 1 << 20;
    c.run("1 MiB results");
}

#[test]
fn huge_results_then_a_death() {
    // Each result alone is larger than the items area.
    let mut c = Case::new(8, &[(2, Act::Segv), (7, Act::Segv)]);
    c.len = 3 << 20;
    c.via = Via::Unordered;
    c.run("3 MiB results");
}

#[test]
fn a_task_forging_every_item_finished() {
    let mut c = Case::new(16, &[(5, Act::ForgeAll)]);
    c.honest = false;
    c.run("forged all");
}

#[test]
fn a_task_forging_a_stop_mark() {
    // Items 4..8 are a chunk; item 6 claims items 4 and 5 finished, the second cut short.
    let mut c = Case::new(16, &[(6, Act::ForgeStop)]);
    c.honest = false;
    c.run("forged stop");
}

#[test]
fn a_task_forging_a_stop_mark_unordered() {
    let mut c = Case::new(16, &[(6, Act::ForgeStop)]);
    c.via = Via::Unordered;
    c.honest = false;
    c.run("forged stop, unordered");
}

#[test]
fn map_never_returns_fewer_results_than_items() {
    watchdog(Duration::from_secs(60), || {
        let tmp = TempDir::new("attack-chunks-map");
        let dir = tmp.path().to_str().unwrap().to_owned();
        let pool = Pool::builder().workers(2).chunk_size(4).build().unwrap();
        let input: Vec<Arg> = (0..16u64)
            .map(|i| {
                let act = if i == 6 { Act::ForgeStop } else { Act::Ok };
                (i, act, 0, dir.clone())
            })
            .collect();
        match pool.map(item, input) {
            Ok(v) => panic!(
                "map of 16 items with a forged report gave Ok with {} values",
                v.len()
            ),
            Err(Error::Task(_)) => {}
            Err(e) => panic!("map: {e}"),
        }
    });
}
