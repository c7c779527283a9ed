//! `Receiver::recv_with` and the memfds of large messages: bytes copied straight from
//! where they are, in pieces; memfds reused across message sizes (smaller and larger than
//! what they last held), and idle ones let go.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::thread;
use std::time::Duration;

use procpool::RecvError;

procpool::enable_test_support!();

/// Sizes inline, in a reused memfd, and in a memfd of its own (above 2 MiB).
const SIZES: [usize; 9] = [
    1 << 20,
    100_000,
    2 << 20,
    70_000,
    1_500_000,
    3 << 20,
    65_600,
    10,
    300_000,
];

fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; size];
    for (k, b) in (i as u32).to_le_bytes().iter().enumerate().take(size) {
        v[k] = *b;
    }
    v
}

/// The inodes of the channel memfds open in this process (the sender's pool).
fn memfds() -> Vec<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let target = std::fs::read_link(&path).ok()?;
            if !target.to_string_lossy().contains("procpool-channel") {
                return None;
            }
            Some(std::fs::metadata(&path).ok()?.ino())
        })
        .collect()
}

fn memfds_open() -> usize {
    memfds().len()
}

#[test]
fn recv_with_reads_inline_and_shared_memory_messages_in_pieces() {
    let (tx, rx) = procpool::bounded::<Vec<u8>>(4 << 20).unwrap();
    for (i, &size) in [0, 5, 70_000, 1 << 20, 3 << 20].iter().enumerate() {
        let sent = payload(i, size);
        tx.send(sent.clone()).unwrap();
        let got = rx
            .recv_with(Some(Duration::from_secs(10)), |p, fds| {
                assert!(fds.is_empty());
                assert_eq!(p.len(), size);
                let mut out = vec![0u8; size];
                let half = size / 2;
                p.read_at(half, &mut out[half..])?;
                p.read_at(0, &mut out[..half])?;
                // Reading past the end is an error naming it, never a short read.
                let mut one = [0u8; 1];
                let past = p.read_at(size, &mut one);
                assert!(
                    matches!(past, Err(RecvError::Malformed(m)) if m.contains("passes the end"))
                );
                assert!(p.read_at(usize::MAX, &mut one).is_err());
                p.read_at(size, &mut [])?;
                Ok::<_, RecvError>(out)
            })
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, sent, "message {i} of {size} bytes");
    }
    // Nothing waiting: `None` after the timeout, as `recv_timeout`.
    let none = rx.recv_with(Some(Duration::from_millis(10)), |p, _| p.len());
    assert!(matches!(none, Ok(None)));
    drop(tx);
    assert!(matches!(
        rx.recv_with(None, |p, _| p.len()),
        Err(RecvError::Disconnected)
    ));
}

#[test]
fn memfds_are_reused_across_sizes_while_the_sender_runs_ahead_and_idle_ones_let_go() {
    let (tx, rx) = procpool::bounded::<Vec<u8>>(4 << 20).unwrap();
    let n = 240;
    let producer = thread::spawn(move || {
        for i in 0..n {
            tx.send(payload(i, SIZES[i % SIZES.len()])).unwrap();
        }
        tx
    });
    thread::sleep(Duration::from_millis(300)); // let the queue fill up
    let mut inodes = HashSet::new();
    for i in 0..n {
        let size = SIZES[i % SIZES.len()];
        let got = if i % 2 == 0 {
            rx.recv_timeout(Duration::from_secs(20)).unwrap()
        } else {
            rx.recv_with(Some(Duration::from_secs(20)), |p, fds| {
                let _ = fds;
                let mut out = vec![0u8; p.len()];
                p.read_at(0, &mut out).map(|()| out)
            })
            .unwrap()
            .unwrap()
            .unwrap()
        };
        assert_eq!(got.len(), size, "message {i}");
        assert!(
            got == payload(i, size),
            "message {i} of {size} bytes came back changed"
        );
        // The memfds open here are the sender's pool.
        inodes.extend(memfds());
    }
    let tx = producer.join().unwrap();
    // A steady stream of reused sizes makes no memfd per message (160 of the 240 fit
    // one): the pool holds at most a full queue's worth (64 frames of 64 KiB in 4 MiB)
    // plus four. The count also sees some of the 27 memfds of 3 MiB messages (never
    // reused) while they are being sent.
    assert!(
        inodes.len() <= 68 + 27,
        "{} memfds made for the stream",
        inodes.len()
    );
    // Every memfd is consumed now; the first large message after a pause (half a second)
    // lets idle ones beyond eight go.
    thread::sleep(Duration::from_millis(600));
    tx.send(payload(7, 1 << 20)).unwrap();
    assert_eq!(rx.recv().unwrap(), payload(7, 1 << 20));
    let left = memfds_open();
    assert!(left <= 10, "{left} memfds kept after a burst");
    drop((tx, rx));
    assert_eq!(memfds_open(), 0);
}
