//! Descriptors, memfds and mappings are back where they started after 500 channels were
//! made, used (small and large messages, ends cloned, messages left in the queue) and
//! dropped; a sender reuses the memfd of its large messages. One test in its own binary, so no other test opens descriptors meanwhile.

mod channel_common;

use channel_common::{fd_counts, memfd_mappings};

procpool::enable_test_support!();

#[test]
fn five_hundred_channels_leave_no_descriptor_memfd_or_mapping() {
    let before = (fd_counts(), memfd_mappings());
    for i in 0..500usize {
        let (tx, rx) = if i % 2 == 0 {
            procpool::channel::<Vec<u8>>().unwrap()
        } else {
            procpool::bounded::<Vec<u8>>(64 * 1024).unwrap()
        };
        let tx2 = tx.clone();
        let rx2 = rx.clone();
        tx.send(vec![1; 10]).unwrap();
        tx2.send(vec![2; 200_000 + i]).unwrap();
        assert_eq!(rx.recv().unwrap().len(), 10);
        assert_eq!(rx2.recv().unwrap().len(), 200_000 + i);
        // Left in the queue when the ends go: a memfd in flight.
        tx.send(vec![3; 100_000]).unwrap();
        if i % 3 == 0 {
            drop(rx);
            drop(rx2);
            assert!(tx.send(vec![4; 100_000]).unwrap_err().is_disconnected());
        }
    }
    let after = (fd_counts(), memfd_mappings());
    assert_eq!(before, after, "((descriptors, memfds), memfd mappings)");

    // A sender reuses the memfd of a large message once it was read: one memfd, kept.
    let (tx, rx) = procpool::channel::<Vec<u8>>().unwrap();
    for i in 0..100 {
        tx.send(vec![i as u8; 300_000]).unwrap();
        assert_eq!(rx.recv().unwrap(), vec![i as u8; 300_000]);
    }
    assert_eq!(
        fd_counts().1,
        before.0.1 + 1,
        "one memfd, reused for every message"
    );
    drop((tx, rx));
    assert_eq!(fd_counts(), before.0);
}
