//! Channels between threads of one process: the API's contract without process deaths.

mod common;

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use procpool::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use serde::{Deserialize, Serialize};

procpool::enable_test_support!();

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Msg {
    id: u64,
    name: String,
    data: Vec<u32>,
}

#[test]
fn values_arrive_in_order_and_iteration_ends_with_the_last_sender() {
    let (tx, rx) = procpool::channel::<Msg>().unwrap();
    let mut handles = Vec::new();
    for t in 0..3u64 {
        let tx = tx.clone();
        handles.push(thread::spawn(move || {
            for i in 0..200 {
                let m = Msg {
                    id: t * 1000 + i,
                    name: format!("m{i}"),
                    data: vec![i as u32; (i % 7) as usize],
                };
                tx.send(m).unwrap();
            }
        }));
    }
    drop(tx);
    let mut last = [None::<u64>; 3];
    let mut n = 0;
    for m in rx {
        let t = (m.id / 1000) as usize;
        let i = m.id % 1000;
        assert!(last[t].is_none_or(|l| l < i), "per-sender order kept");
        last[t] = Some(i);
        assert_eq!(m.name, format!("m{i}"));
        assert_eq!(m.data.len(), (i % 7) as usize);
        n += 1;
    }
    assert_eq!(n, 600);
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn a_send_without_receivers_hands_the_value_back() {
    let (tx, rx) = procpool::channel::<String>().unwrap();
    let rx2 = rx.clone();
    drop(rx);
    tx.send("still one receiver".into()).unwrap();
    drop(rx2);
    let err = tx.send("lost".into()).unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(err.to_string().contains("receiving ends are all gone"));
    assert_eq!(err.into_inner(), "lost");
    match tx.try_send("x".into()) {
        Err(TrySendError::Failed(SendError::Disconnected(v))) => assert_eq!(v, "x"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_large_message_waiting_for_a_dropped_receiver_is_a_disconnect() {
    let (tx, rx) = procpool::channel::<Vec<u8>>().unwrap();
    drop(rx);
    let e = tx.send(vec![1; 1 << 20]).unwrap_err();
    assert!(e.is_disconnected());
    assert_eq!(e.into_inner().len(), 1 << 20);
}

#[test]
fn try_recv_and_recv_timeout_report_empty_then_disconnected() {
    let (tx, rx) = procpool::channel::<u8>().unwrap();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(20)),
        Err(RecvTimeoutError::Timeout)
    ));
    tx.send(9).unwrap();
    drop(tx);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 9);
    assert!(matches!(
        rx.try_recv(),
        Err(TryRecvError::Failed(RecvError::Disconnected))
    ));
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(5)),
        Err(RecvTimeoutError::Failed(RecvError::Disconnected))
    ));
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

#[test]
fn a_full_bounded_channel_blocks_the_sender_until_the_receiver_reads() {
    let (tx, rx) = procpool::bounded::<Vec<u8>>(16 * 1024).unwrap();
    assert!(tx.capacity() >= 16 * 1024, "{}", tx.capacity());
    let mut queued = 0;
    loop {
        match tx.try_send(vec![1; 512]) {
            Ok(()) => queued += 1,
            Err(TrySendError::Full(v)) => {
                assert_eq!(v.len(), 512);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(queued > 0);
    match tx.send_timeout(vec![2; 512], Duration::from_millis(50)) {
        Err(SendTimeoutError::Timeout(v)) => assert_eq!(v, vec![2; 512]),
        other => panic!("{other:?}"),
    }
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            tx.send(vec![3; 512]).unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    thread::sleep(Duration::from_millis(200));
    assert!(
        !done.load(Ordering::SeqCst),
        "send returned while the queue was full"
    );
    let mut got = 0;
    while let Ok(v) = rx.recv() {
        got += 1;
        if v[0] == 3 {
            break;
        }
    }
    sender.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert_eq!(got, queued + 1);
}

#[test]
fn large_messages_travel_whole() {
    let (tx, rx) = procpool::channel::<Vec<u8>>().unwrap();
    let sizes = [0usize, 1, 40_000, 53_249, 70_000, 1 << 20, 64 << 20];
    let t = thread::spawn(move || {
        for &n in &sizes {
            let v: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            tx.send(v).unwrap();
        }
    });
    for &n in &sizes {
        let v = rx.recv().unwrap();
        assert_eq!(v.len(), n);
        assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    }
    t.join().unwrap();
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
}

#[test]
fn receivers_shared_by_threads_get_each_message_once() {
    let (tx, rx) = procpool::bounded::<u64>(8 * 1024).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let rx = rx.clone();
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                let mut mine = Vec::new();
                for v in &rx {
                    mine.push(v);
                }
                seen.lock().unwrap().extend(mine);
            })
        })
        .collect();
    drop(rx);
    for i in 0..20_000u64 {
        tx.send(i).unwrap();
    }
    drop(tx);
    for c in consumers {
        c.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20_000);
    let unique: HashSet<_> = seen.iter().copied().collect();
    assert_eq!(unique.len(), 20_000);
}

#[test]
fn a_malformed_packet_is_an_error_and_the_channel_goes_on() {
    let (tx, rx) = procpool::channel::<(u64, String)>().unwrap();
    let raw = |bytes: &[u8]| {
        // SAFETY: a plain send of a byte buffer on a socket we hold.
        let n = unsafe {
            libc::send(
                tx.as_fd().as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
            )
        };
        assert_eq!(n, bytes.len() as isize);
    };
    raw(&[0x00, 1, 2]);
    raw(&[0xC2, 0, 1, 0]);
    raw(&[0xC2, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
    raw(&[
        0xC1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ]);
    raw(&[]);
    raw(&[0xC1, 40, 1]);
    tx.send((5, "ok".into())).unwrap();
    let malformed = |what: &str| {
        let e = rx.recv().unwrap_err();
        assert!(
            matches!(&e, RecvError::Malformed(m) if m.contains(what)),
            "{e}"
        );
    };
    malformed("unknown tag 0x00");
    malformed("shorter");
    malformed("came with 0");
    let e = rx.recv().unwrap_err();
    assert!(matches!(&e, RecvError::Decode(_)), "{e}");
    malformed("empty");
    malformed("at most");
    assert_eq!(rx.recv().unwrap(), (5, "ok".to_string()));
}

#[test]
fn a_value_that_cannot_be_encoded_comes_back() {
    #[derive(Debug, Serialize, Deserialize)]
    struct Skips {
        #[serde(skip_serializing_if = "Option::is_none")]
        a: Option<u8>,
        b: u8,
    }
    let (tx, _rx) = procpool::channel::<Skips>().unwrap();
    match tx.send(Skips { a: None, b: 1 }) {
        Err(SendError::Encode { value, reason }) => {
            assert_eq!(value.b, 1);
            assert!(reason.contains("skip_serializing_if"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_descriptor_that_is_not_a_channel_is_refused() {
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let e = procpool::Receiver::<u8>::try_from(std::os::fd::OwnedFd::from(f)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected the receiving end of a procpool channel, got a regular file",
    );
}

#[test]
fn values_holding_descriptors_travel_inside_messages() {
    use std::io::{Read, Seek};
    let file = common::unlinked_file(b"through a channel");
    let (tx, rx) = procpool::channel::<(String, procpool::Fd)>().unwrap();
    let fd = procpool::Fd::from(std::os::fd::OwnedFd::from(file.try_clone().unwrap()));
    tx.send(("file".into(), fd)).unwrap();
    let (name, fd) = rx.recv().unwrap();
    assert_eq!(name, "file");
    let mut got = std::fs::File::from(std::os::fd::OwnedFd::from(fd));
    got.rewind().unwrap();
    let mut s = String::new();
    got.read_to_string(&mut s).unwrap();
    assert_eq!(s, "through a channel");

    let (ends_tx, _ends_rx) = procpool::channel::<Vec<procpool::Sender<u8>>>().unwrap();
    let (one, _r) = procpool::channel::<u8>().unwrap();
    match ends_tx.send(vec![one; 33]) {
        Err(SendError::Encode { value, reason }) => {
            assert_eq!(value.len(), 33);
            assert!(reason.contains("at most 32"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
