//! Channel ends as task arguments: to one-off processes (`procpool::spawn`) and pool
//! tasks, sent on through other channels, killed for real.

use std::collections::HashSet;
use std::time::Duration;

use procpool::{Pool, Receiver, RecvError, SendError, Sender};

procpool::enable_test_support!();

fn produce((tx, n): (Sender<u64>, u64)) -> u64 {
    for i in 0..n {
        tx.send(i).unwrap();
    }
    n
}

fn produce_forever(tx: Sender<Vec<u8>>) {
    for i in 0u64.. {
        let len = if i % 2 == 0 { 16 } else { 150_000 };
        tx.send(vec![i as u8; len]).unwrap();
    }
}

fn relay((from, to): (Receiver<Sender<u64>>, Sender<Sender<u64>>)) -> u32 {
    let mut n = 0;
    for end in from {
        to.send(end).unwrap();
        n += 1;
    }
    n
}

fn use_sender((ends, n): (Receiver<Sender<u64>>, u64)) -> u32 {
    let mut used = 0;
    for tx in ends {
        for i in 0..n {
            tx.send(i).unwrap();
        }
        used += 1;
    }
    used
}

fn take_some((rx, n): (Receiver<u64>, usize)) -> Vec<u64> {
    (0..n).map(|_| rx.recv().unwrap()).collect()
}

fn send_sizes(tx: Sender<Vec<u8>>) {
    for (k, n) in [1usize << 20, 64 << 20, 3 << 20, 1 << 20]
        .into_iter()
        .enumerate()
    {
        tx.send((0..n).map(|i| (i % 253) as u8 ^ k as u8).collect())
            .unwrap();
    }
}

fn hold(rx: Receiver<u64>) {
    let _ = rx.recv();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn a_spawned_producer_streams_and_its_end_ends_the_iteration() {
    let (tx, rx) = procpool::channel::<u64>().unwrap();
    let producer = procpool::spawn(produce, (tx, 1000)).unwrap();
    let got: Vec<u64> = rx.iter().collect();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    assert_eq!(producer.join().unwrap(), 1000);
}

#[test]
fn messages_of_1_and_64_mib_cross_processes_whole() {
    let (tx, rx) = procpool::channel::<Vec<u8>>().unwrap();
    let p = procpool::spawn(send_sizes, tx).unwrap();
    let sizes: Vec<usize> = rx
        .iter()
        .enumerate()
        .map(|(k, v)| {
            assert!(
                v.iter()
                    .enumerate()
                    .all(|(i, &b)| b == (i % 253) as u8 ^ k as u8)
            );
            v.len()
        })
        .collect();
    assert_eq!(sizes, [1 << 20, 64 << 20, 3 << 20, 1 << 20]);
    p.join().unwrap();
}

#[test]
fn an_end_passed_through_two_hops_of_processes_still_works() {
    let (data_tx, data_rx) = procpool::channel::<u64>().unwrap();
    let (hop1_tx, hop1_rx) = procpool::channel::<Sender<u64>>().unwrap();
    let (hop2_tx, hop2_rx) = procpool::channel::<Sender<u64>>().unwrap();
    let relay = procpool::spawn(relay, (hop1_rx, hop2_tx)).unwrap();
    let user = procpool::spawn(use_sender, (hop2_rx, 500)).unwrap();
    hop1_tx.send(data_tx).unwrap(); // the parent's descriptor goes with the message
    drop(hop1_tx);
    let got: Vec<u64> = data_rx.iter().collect();
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    assert_eq!(relay.join().unwrap(), 1);
    assert_eq!(user.join().unwrap(), 1);
}

#[test]
fn pool_tasks_produce_into_one_channel_and_their_ends_close_with_the_tasks() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let (tx, rx) = procpool::bounded::<u64>(16 * 1024).unwrap();
    let reader = std::thread::spawn(move || rx.iter().collect::<Vec<u64>>());
    let counts = pool
        .map(produce, (0..6).map(|_| (tx.clone(), 300u64)))
        .unwrap();
    assert_eq!(counts, [300; 6]);
    drop(tx);
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 1800, "every task's messages, then the end");
    assert_eq!(got.iter().sum::<u64>(), 6 * (0..300).sum::<u64>());
}

#[test]
fn pool_tasks_share_one_receiver_without_losing_or_repeating_a_message() {
    let pool = Pool::builder().workers(2).build().unwrap();
    let (tx, rx) = procpool::channel::<u64>().unwrap();
    let feeder = std::thread::spawn(move || {
        for i in 0..4000u64 {
            tx.send(i).unwrap();
        }
    });
    let parts = pool
        .map(take_some, (0..8).map(|_| (rx.clone(), 500usize)))
        .unwrap();
    feeder.join().unwrap();
    let all: HashSet<u64> = parts.concat().into_iter().collect();
    assert_eq!(all.len(), 4000);
    assert!(matches!(
        rx.try_recv(),
        Err(procpool::TryRecvError::Failed(RecvError::Disconnected))
    ));
}

#[test]
fn a_killed_spawned_producer_leaves_whole_messages_then_the_end() {
    let (tx, rx) = procpool::channel::<Vec<u8>>().unwrap();
    let mut p = procpool::spawn(produce_forever, tx).unwrap();
    for _ in 0..20 {
        rx.recv().unwrap();
    }
    p.kill();
    assert!(p.join().is_err());
    let mut n = 0;
    loop {
        match rx.recv() {
            Ok(v) => {
                assert!(v.len() == 16 || v.len() == 150_000);
                assert!(v.iter().all(|&b| b == v[0]));
                n += 1;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(n < 10_000, "the producer's sender was its only one");
}

#[test]
fn a_killed_spawned_consumer_makes_send_fail_as_disconnected() {
    let (tx, rx) = procpool::bounded::<u64>(8 * 1024).unwrap();
    let mut p = procpool::spawn(hold, rx).unwrap();
    tx.send(1).unwrap();
    while tx.try_send(2).is_ok() {}
    p.kill();
    assert!(p.join().is_err());
    match tx.send(3) {
        Err(SendError::Disconnected(3)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_end_serialized_outside_procpool_says_where_it_can_go() {
    let (tx, _rx) = procpool::channel::<u8>().unwrap();
    let e = serde_json::to_string(&tx).unwrap_err();
    assert!(
        e.to_string().contains("only be sent to procpool processes"),
        "{e}"
    );
    let (_, rx) = procpool::channel::<u8>().unwrap();
    let e = serde_json::from_str::<procpool::Receiver<u8>>("3").unwrap_err();
    assert!(e.to_string().contains("descriptor slot"), "{e}");
    drop(rx);
}
