//! Attacks on "a crash costs one item in every chunk" over MPI (feature `mpi`): deaths at
//! the first and the last item of a chunk, two deaths in one chunk, a time limit killing
//! a worker mid-chunk, results larger than the 2 MiB items area, and a task forging its
//! items report with a stop mark (the worker is not trusted). Each item logs `start i`
//! and, as its last step, `end i`: every index comes back once, every item that ended is
//! delivered with its value, and an honest item not at fault runs exactly once. Like
//! `mpi_attack`, this test runs itself under `mpirun -n 3`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::mpi_job::{PER_AGENT, check_ok, main_with, run_job, show, verbose};
use common::{TempDir, append_line};
use procpool::{Error, Pool, TaskErrorKind};

const HARD_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    main_with(scenario, drive);
}

const NAMES: [&str; 6] = [
    "first_last",
    "two_in_one",
    "time_limit",
    "big_results",
    "forged_stop",
    "forged_stop_map",
];

fn drive() {
    common::mpi_job::drive("mpi chunk attack", &NAMES, |me: &Path, name| {
        let run = run_job(me, me, name, HARD_LIMIT);
        let s = show(name, &run);
        verbose(&s);
        check_ok(name, &run, &s);
        Some(run.took)
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Act {
    Ok,
    Segv,
    Hang,
    ForgeStop,
}

type Arg = (u64, Act, u32, String);

fn item((i, act, len, dir): Arg) -> Vec<u8> {
    append_line(&format!("{dir}/log"), &format!("start {i}\n"));
    match act {
        Act::Ok => {}
        Act::Segv => {
            let p = std::ptr::without_provenance_mut::<u8>(16);
            // SAFETY: not safe at all: the point is to crash this worker with SIGSEGV.
            unsafe { std::ptr::write_volatile(p, 1) };
        }
        Act::Hang => std::thread::sleep(Duration::from_secs(60)),
        Act::ForgeStop => {
            let mut forged = vec![0u8];
            forged.extend_from_slice(&2u32.to_le_bytes());
            forged.extend_from_slice(&[0, 0]);
            forged.extend_from_slice(&u32::MAX.to_le_bytes());
            procpool_engine::items_finished(2, &forged, 0);
            std::process::abort();
        }
    }
    append_line(&format!("{dir}/log"), &format!("end {i}\n"));
    expected(i, len)
}

fn expected(i: u64, len: u32) -> Vec<u8> {
    let mut v = (i * 2).to_le_bytes().to_vec();
    if len > 0 {
        v.resize(len as usize, (i % 251) as u8);
    }
    v
}

fn runs(dir: &str) -> (HashMap<u64, usize>, HashMap<u64, usize>) {
    let (mut starts, mut ends) = (HashMap::new(), HashMap::new());
    for l in std::fs::read_to_string(format!("{dir}/log"))
        .unwrap_or_default()
        .lines()
    {
        let (what, i) = l.split_once(' ').unwrap();
        let i: u64 = i.parse().unwrap();
        *if what == "start" {
            &mut starts
        } else {
            &mut ends
        }
        .entry(i)
        .or_default() += 1;
    }
    (starts, ends)
}

fn case(
    what: &str,
    n: u64,
    acts: &[(u64, Act)],
    len: u32,
    timeout: Option<Duration>,
    honest: bool,
) -> HashMap<u64, Result<Vec<u8>, Error>> {
    let tmp = TempDir::new("mpi-chunk-attack");
    let dir = tmp.path().to_str().unwrap().to_owned();
    let mut b = Pool::builder().mpi().workers(PER_AGENT).chunk_size(4);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    let pool = b.build().expect("an MPI pool");
    let acts: HashMap<u64, Act> = acts.iter().copied().collect();
    let input: Vec<Arg> = (0..n)
        .map(|i| {
            (
                i,
                acts.get(&i).copied().unwrap_or(Act::Ok),
                len,
                dir.clone(),
            )
        })
        .collect();
    let mut got = HashMap::new();
    for (i, r) in pool.imap_unordered(item, input) {
        assert!(got.insert(i as u64, r).is_none(), "{what}: {i} came twice");
    }
    assert_eq!(
        got.len() as u64,
        n,
        "{what}: {} of {n} indices came back",
        got.len()
    );
    let (starts, ends) = runs(&dir);
    for i in 0..n {
        let ended = ends.get(&i).copied().unwrap_or(0);
        if honest && ended > 0 {
            match &got[&i] {
                Ok(v) => assert!(*v == expected(i, len), "{what}: item {i}: a wrong value"),
                Err(e) => panic!("{what}: item {i} ran to its end, yet failed: {e}"),
            }
        }
        if honest && !acts.contains_key(&i) {
            let started = starts.get(&i).copied().unwrap_or(0);
            assert_eq!(
                (started, ended),
                (1, 1),
                "{what}: item {i} started {started} and ended {ended} times"
            );
        }
    }
    got
}

fn died(r: &Result<Vec<u8>, Error>) -> bool {
    matches!(r, Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::WorkerDied { .. }))
}

fn scenario(name: &str) {
    match name {
        "first_last" => {
            let got = case(
                "first and last",
                32,
                &[
                    (0, Act::Segv),
                    (11, Act::Segv),
                    (28, Act::Segv),
                    (31, Act::Segv),
                ],
                0,
                None,
                true,
            );
            for k in [0, 11, 28, 31] {
                assert!(died(&got[&k]), "item {k}: {:?}", got[&k]);
            }
        }
        "two_in_one" => {
            let got = case(
                "two in one chunk",
                32,
                &[
                    (5, Act::Segv),
                    (6, Act::Segv),
                    (17, Act::Segv),
                    (19, Act::Segv),
                ],
                0,
                None,
                true,
            );
            for k in [5, 6, 17, 19] {
                assert!(died(&got[&k]), "item {k}: {:?}", got[&k]);
            }
        }
        "time_limit" => {
            let got = case(
                "time limit",
                24,
                &[(6, Act::Hang), (13, Act::Hang)],
                0,
                Some(Duration::from_millis(1500)),
                true,
            );
            for k in [6, 13] {
                assert!(
                    matches!(&got[&k], Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::TimedOut { .. })),
                    "item {k}: {:?}",
                    got[&k]
                );
            }
        }
        "big_results" => {
            case(
                "1 MiB results",
                16,
                &[(3, Act::Segv), (10, Act::Segv)],
                1 << 20,
                None,
                true,
            );
        }
        "forged_stop" => {
            case("forged stop", 16, &[(6, Act::ForgeStop)], 0, None, false);
        }
        "forged_stop_map" => {
            let tmp = TempDir::new("mpi-chunk-attack-map");
            let dir = tmp.path().to_str().unwrap().to_owned();
            let pool = Pool::builder()
                .mpi()
                .workers(PER_AGENT)
                .chunk_size(4)
                .build()
                .unwrap();
            let input: Vec<Arg> = (0..16u64)
                .map(|i| {
                    let act = if i == 6 { Act::ForgeStop } else { Act::Ok };
                    (i, act, 0, dir.clone())
                })
                .collect();
            if let Ok(v) = pool.map(item, input) {
                panic!(
                    "map of 16 items with a forged report gave Ok with {} values",
                    v.len()
                );
            }
        }
        other => panic!("no scenario {other}"),
    }
}
