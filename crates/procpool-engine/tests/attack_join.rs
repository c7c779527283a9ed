//! A pool joined while a call that drains its input (a `map`, [`Feed::keep_open`]) still
//! has work to send: a chunk's worker died, and the items after the one it was running
//! are sent again only when the caller receives that chunk's end. The join must wait
//! for them; before, it stopped the workers as soon as nothing was queued or running,
//! and those items failed with `PoolError::Closed` without ever running.
//!
//! Own `main` (no harness): a worker started from this binary serves its runner.

use std::sync::Arc;
use std::time::{Duration, Instant};

use procpool_engine::{
    Engine, EngineConfig, Failure, Feed, ItemLog, Limits, Piece, PoolError, Pulled, Runner, Source,
    TaskErrorKind,
};

/// Each payload byte is an item; its result is the byte doubled (wrapping). Item 35
/// kills the worker.
struct Chunks;

impl Runner for Chunks {
    fn run(&mut self, _func: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        let log = ItemLog::current();
        log.finished(0, out, 0);
        for (i, &b) in payload.iter().enumerate() {
            if b == 35 {
                std::process::abort();
            }
            out.push(b.wrapping_mul(2));
            log.finished(i as u32 + 1, out, out.len() - 1);
        }
        Ok(())
    }
}

/// The items `0..n`, one byte each.
struct Items {
    next: u8,
    n: u8,
}

impl Source for Items {
    fn fill(&mut self, out: &mut Vec<u8>, limits: Limits) -> Pulled {
        let k = (self.n - self.next).min(limits.items.min(255) as u8);
        if k == 0 {
            return Pulled::End;
        }
        out.extend(self.next..self.next + k);
        self.next += k;
        Pulled::Items(u32::from(k))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.n - self.next);
        (left, Some(left))
    }

    fn split(&self, payload: &[u8], from: u32, count: u32) -> Option<Vec<u8>> {
        payload
            .get(from as usize..(from + count) as usize)
            .map(<[u8]>::to_vec)
    }
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn join_waits_for_items_sent_again_after_a_death() {
    let e = Engine::start(EngineConfig {
        workers: 2,
        ..EngineConfig::default()
    })
    .expect("engine starts");
    let mut feed = Feed::new(
        &e,
        Items { next: 0, n: 40 },
        Arc::from(&b"x"[..]),
        Some(10),
        None,
    );
    feed.keep_open();
    let mut pieces: Vec<Piece> = vec![feed.recv(0).expect("a first piece")];
    // Every job ran (the one of items 30-39 died at 35), and its end waits for us.
    wait_for("the death", || e.stats().workers_replaced >= 1);
    wait_for("the jobs", || {
        let s = e.stats();
        s.queued == 0 && s.in_flight == 0
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let joiner = std::thread::spawn(move || {
        e.join();
        let _ = tx.send(());
    });
    // Nothing is queued or running and the input has ended, yet items 36-39 are still
    // to be sent again by the receipt below: the join must not end now.
    let ended_early = rx.recv_timeout(Duration::from_millis(500)).is_ok();
    while let Some(p) = feed.recv(0) {
        pieces.push(p);
    }
    drop(feed);
    if !ended_early {
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the join ends once the call has received everything");
    }
    joiner.join().unwrap();
    let mut seen = vec![None; 40];
    for p in &pieces {
        for i in p.start..p.start + u64::from(p.count) {
            let ok = match &p.done.outcome {
                Ok(r) => {
                    assert_eq!(r[(i - p.start) as usize], (i as u8).wrapping_mul(2));
                    Ok(())
                }
                Err(e) => Err(e.kind().clone()),
            };
            assert!(seen[i as usize].replace(ok).is_none(), "item {i} twice");
        }
    }
    for (i, s) in seen.into_iter().enumerate() {
        match (i, s) {
            (35, Some(Err(TaskErrorKind::WorkerDied { .. }))) => {}
            (35, other) => panic!("item 35: {other:?}"),
            (_, Some(Ok(()))) => {}
            (i, Some(Err(TaskErrorKind::PoolBroken(PoolError::Closed)))) => {
                panic!(
                    "item {i} was refused: the join stopped the workers before it was sent again"
                )
            }
            (i, other) => panic!("item {i}: {other:?}"),
        }
    }
    assert!(
        !ended_early,
        "the join ended while items were still to be sent again"
    );
}

fn main() {
    procpool_engine::serve_if_worker(|| Chunks);
    let tests: [(&str, fn()); 1] = [(
        "join_waits_for_items_sent_again_after_a_death",
        join_waits_for_items_sent_again_after_a_death,
    )];
    for (name, t) in tests {
        t();
        println!("test {name} ... ok");
    }
    println!("{} passed, 0 failed", tests.len());
}
