//! Channel input is checked before it costs: a forged packet naming a sparse 1 GiB memfd,
//! a message over the receiver's limit, the channel's own sending end or a pipe where a
//! receiving end should be. The receiver is a real process whose peak memory is read from
//! `/proc/self/status` (`VmHWM`).

mod common;

procpool::enable_test_support!();

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use procpool::{Fd, Receiver, RecvError, Sender};

const MIB: u64 = 1 << 20;
const HANG: Duration = Duration::from_secs(25);

/// Sends `bytes` as one packet with `fds` attached, as any holder of the sending end
/// could (the layout of `channel/frame.rs` restated on purpose: a forgery made with the
/// encoder could forge only what the encoder makes).
fn send_raw(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE((raw.len() * 4) as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    // SAFETY: a msghdr over live buffers; the control buffer is sized by CMSG_SPACE.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN((raw.len() * 4) as u32) as _;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(c).cast(), raw.len());
        }
        libc::sendmsg(sock.as_raw_fd(), &msg, 0)
    };
    assert_eq!(
        n,
        bytes.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// A memfd packet's header: tag, descriptor count, payload length.
fn memfd_header(len: u64) -> Vec<u8> {
    let mut p = vec![0xC2, 0];
    p.extend_from_slice(&len.to_le_bytes());
    p
}

fn memfd(name: &str) -> OwnedFd {
    rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC).unwrap()
}

/// This process's peak resident memory.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// What the receivers of these tests take: not a bare `Vec<u8>` (whose fast path reads
/// the length first), so the payload is copied out whole, as for most types.
type Msg = (u8, Vec<u8>);

/// In its own process: receives `n` messages (errors as their sentences), with the
/// receiver limited to `limit` bytes, and reports its peak memory before and after.
fn receive((rx, n, limit): (Receiver<Msg>, usize, usize)) -> (Vec<String>, u64, u64) {
    rx.set_max_message(limit);
    let before = peak_rss();
    let got = (0..n)
        .map(|_| match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(v) => format!("ok: {} bytes", v.1.len()),
            Err(e) => e.to_string(),
        })
        .collect();
    (got, before, peak_rss())
}

#[test]
fn a_sparse_1_gib_memfd_costs_the_receiver_nothing() {
    common::watchdog(HANG, || {
        let (tx, rx) = procpool::channel::<Msg>().unwrap();
        let receiver = procpool::spawn(receive, (rx, 3, 1 << 30)).unwrap();
        // 10 bytes naming 1 GiB in a file that holds no page of it.
        let sparse = memfd("forged");
        rustix::fs::ftruncate(&sparse, (1 << 30) + 8).unwrap();
        send_raw(tx.as_fd(), &memfd_header(1 << 30), &[sparse.as_fd()]);
        // 24 MiB that is there: over a limit, it is refused before it is read.
        let (tx2, rx2) = procpool::channel::<Msg>().unwrap();
        let limited = procpool::spawn(receive, (rx2, 2, 4 << 20)).unwrap();
        tx2.send((7, vec![7; 24 << 20])).unwrap();
        tx2.send((8, vec![8; 10])).unwrap();
        // The channel goes on: a real message after the forged one.
        tx.send((1, vec![1; 3 << 20])).unwrap();
        tx.send((2, vec![2; 5])).unwrap();

        let (got, before, after) = receiver.join().unwrap();
        assert!(
            got[0].contains("sparse") && got[0].contains("nothing was read"),
            "{got:?}"
        );
        assert_eq!(got[1..], ["ok: 3145728 bytes", "ok: 5 bytes"], "{got:?}");
        // The peak grew by the 3 MiB message and its copy, never by the forged GiB.
        assert!(after < before + 32 * MIB, "peak {before} -> {after}");

        let (got, before, after) = limited.join().unwrap();
        assert!(
            got[0].contains("over this receiver's limit of 4194304 bytes"),
            "{got:?}"
        );
        assert_eq!(got[1], "ok: 10 bytes");
        assert!(after < before + 32 * MIB, "peak {before} -> {after}");
    });
}

#[test]
fn the_sending_end_is_not_a_receiver() {
    let (tx, rx) = procpool::channel::<u8>().unwrap();
    let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().unwrap();
    let e = Receiver::<u8>::try_from(dup(tx.as_fd())).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(
        e.to_string(),
        "expected the receiving end of a procpool channel, got its sending end"
    );
    let e = Sender::<u8>::try_from(dup(rx.as_fd())).unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected the sending end of a procpool channel, got its receiving end"
    );
    // Each end is shut in the direction it does not use: the receiving end cannot send.
    // SAFETY: a plain send on a socket we hold.
    let n = unsafe { libc::send(rx.as_fd().as_raw_fd(), [0xC1u8, 0, 5].as_ptr().cast(), 3, 0) };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPIPE)
    );
    // Both still work as themselves.
    tx.send(9).unwrap();
    assert_eq!(rx.recv().unwrap(), 9);
}

#[test]
fn a_socket_with_a_forged_mark_is_refused() {
    // A plain SOCK_SEQPACKET pair: no mark.
    let (a, b) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let e = Receiver::<u8>::try_from(a).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("got a SOCK_SEQPACKET socket that is not a procpool channel end"),
        "{e}"
    );
    // The channel's sending end, marked as a receiving end (`SO_RCVLOWAT`, restated):
    // its shut receive side gives it away.
    let (tx, _rx) = procpool::channel::<u8>().unwrap();
    let forged = tx.as_fd().try_clone_to_owned().unwrap();
    let mark: i32 = 0x5050_4352;
    // SAFETY: a plain setsockopt of an int on a socket we hold.
    let r = unsafe {
        libc::setsockopt(
            forged.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const mark).cast(),
            4,
        )
    };
    assert_eq!(r, 0);
    let e = Receiver::<u8>::try_from(forged).unwrap_err();
    assert!(e.to_string().contains("cannot receive"), "{e}");
    drop(b);
}

#[test]
fn a_pipe_where_a_receiver_should_be_is_named_a_pipe() {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh descriptors from pipe2, owned once each.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let e = Receiver::<u8>::try_from(r).unwrap_err();
    assert_eq!(
        e.to_string(),
        "expected the receiving end of a procpool channel, got a pipe"
    );

    // Inside a message: a sender of `Fd` values on a channel whose receiver expects
    // receiving ends (the same socket, seen with another type).
    let (tx, rx) = procpool::channel::<Receiver<u8>>().unwrap();
    let tx_fds = Sender::<Fd>::try_from(tx.as_fd().try_clone_to_owned().unwrap()).unwrap();
    tx_fds.send(Fd::from(w)).unwrap();
    let (inner_tx, _inner_rx) = procpool::channel::<u8>().unwrap();
    let tx_ends = Sender::<Sender<u8>>::try_from(tx.as_fd().try_clone_to_owned().unwrap()).unwrap();
    tx_ends.send(inner_tx).unwrap();
    let e = rx.recv().unwrap_err();
    assert!(
        matches!(&e, RecvError::Decode(m) if m.contains("descriptor slot 0: expected the receiving end of a procpool channel, got a pipe")),
        "{e}"
    );
    let e = rx.recv().unwrap_err();
    assert!(
        matches!(&e, RecvError::Decode(m) if m.contains("expected the receiving end of a procpool channel, got its sending end")),
        "{e}"
    );
}
