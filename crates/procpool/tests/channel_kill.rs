//! Channels between processes started by the test, killed for real with SIGKILL.

mod channel_common;

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::Duration;

use channel_common::{ROLE, inherited, kill, start, watchdog};
use procpool::{Receiver, RecvError, SendError, Sender};
use serde::{Deserialize, Serialize};

procpool::enable_test_support!();

/// A message whose contents check themselves.
#[derive(Debug, Serialize, Deserialize)]
struct Checked {
    seq: u64,
    data: Vec<u8>,
}

impl Checked {
    fn new(seq: u64) -> Self {
        // Small and large in turn: some inline, some through a memfd (up to 2 MiB).
        let len = match seq % 4 {
            0 => 8,
            1 => 60_000,
            2 => 300,
            _ => 100_000 + (seq as usize * 7919) % (2 << 20),
        };
        let data = (0..len).map(|i| (seq as usize + i) as u8).collect();
        Self { seq, data }
    }

    fn check(&self) {
        let want = Checked::new(self.seq);
        assert_eq!(self.data.len(), want.data.len(), "message {}", self.seq);
        assert!(
            self.data == want.data,
            "message {} has wrong bytes",
            self.seq
        );
    }
}

/// The children's side: does nothing when the test binary runs as usual.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "produce" => {
            let tx = Sender::<Checked>::try_from(inherited(0)).unwrap();
            for seq in 0.. {
                tx.send(Checked::new(seq)).unwrap();
            }
        }
        "hold" => {
            let rx = Receiver::<u64>::try_from(inherited(0)).unwrap();
            let ack = Sender::<u64>::try_from(inherited(1)).unwrap();
            let v = rx.recv().unwrap();
            ack.send(v).unwrap();
            std::thread::sleep(Duration::from_secs(600));
        }
        "consume" => {
            let rx = Receiver::<u64>::try_from(inherited(0)).unwrap();
            let back = Sender::<Vec<u64>>::try_from(inherited(1)).unwrap();
            let mine: Vec<u64> = rx.iter().collect();
            back.send(mine).unwrap();
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

#[test]
fn a_producer_killed_mid_send_leaves_whole_messages_then_the_end() {
    watchdog(120, "producer-killed test");
    for round in 0..6u64 {
        let (tx, rx) = procpool::channel::<Checked>().unwrap();
        let mut producer = start("child", "produce", &[tx.as_fd()]);
        drop(tx);
        // Read a varying number of messages, then kill it while it sends.
        let mut next = 0u64;
        for _ in 0..(5 + round * 7) {
            let m = rx.recv().unwrap();
            assert_eq!(m.seq, next);
            m.check();
            next += 1;
        }
        if round % 2 == 1 {
            // Let the queue fill: the producer is killed while it waits for room.
            std::thread::sleep(Duration::from_millis(100));
        }
        kill(&mut producer);
        loop {
            match rx.recv() {
                Ok(m) => {
                    assert_eq!(m.seq, next, "no message lost or split before the kill");
                    m.check();
                    next += 1;
                }
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    }
}

#[test]
fn a_killed_consumer_turns_sends_into_disconnected_errors() {
    watchdog(60, "consumer-killed test");
    let (tx, rx) = procpool::bounded::<u64>(8 * 1024).unwrap();
    let (ack_tx, ack_rx) = procpool::channel::<u64>().unwrap();
    let mut consumer = start("child", "hold", &[rx.as_fd(), ack_tx.as_fd()]);
    drop((rx, ack_tx));
    tx.send(0).unwrap();
    assert_eq!(
        ack_rx.recv().unwrap(),
        0,
        "the consumer took its one message"
    );
    // Fill the queue: the consumer holds its receiver but reads no more.
    let mut i = 1;
    while tx.try_send(i).is_ok() {
        i += 1;
    }
    let blocked = std::thread::spawn(move || tx.send(u64::MAX));
    std::thread::sleep(Duration::from_millis(100));
    kill(&mut consumer);
    match blocked.join().unwrap() {
        Err(SendError::Disconnected(v)) => assert_eq!(v, u64::MAX),
        other => panic!("{other:?}"),
    }
}

#[test]
fn consumer_processes_sharing_a_receiver_get_each_message_once() {
    watchdog(120, "shared-receiver test");
    const N: u64 = 30_000;
    let (tx, rx) = procpool::bounded::<u64>(32 * 1024).unwrap();
    let (back_tx, back_rx) = procpool::channel::<Vec<u64>>().unwrap();
    let mut children: Vec<_> = (0..3)
        .map(|_| start("child", "consume", &[rx.as_fd(), back_tx.as_fd()]))
        .collect();
    drop(rx);
    drop(back_tx);
    for i in 0..N {
        tx.send(i).unwrap();
    }
    drop(tx);
    let parts: Vec<Vec<u64>> = back_rx.iter().collect();
    assert_eq!(
        parts.len(),
        3,
        "each consumer reported, then the results channel ended"
    );
    let all: Vec<u64> = parts.concat();
    assert_eq!(all.len() as u64, N, "no message lost or duplicated");
    assert_eq!(all.iter().copied().collect::<HashSet<_>>().len() as u64, N);
    for c in &mut children {
        assert!(c.wait().unwrap().success());
    }
}
