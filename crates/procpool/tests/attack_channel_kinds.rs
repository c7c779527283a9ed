//! Attacks on "a channel end is what it says": every kind of descriptor a hostile or
//! careless caller can hand over where a receiving or a sending end is expected (a memfd,
//! an eventfd, a directory, /dev/null, a pipe's both ends, a stream socket, a datagram
//! socket, a bare SOCK_SEQPACKET pair, each end of a real channel the wrong way round) is
//! refused with an error, never a panic, a hang or an end that then misbehaves.

mod common;

procpool::enable_test_support!();

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use procpool::{Receiver, Sender};

fn own(fd: i32) -> OwnedFd {
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a descriptor just made by the caller for this test alone.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn socketpair(kind: i32) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fills a two-element array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            kind | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0);
    (own(fds[0]), own(fds[1]))
}

fn forgeries() -> Vec<(&'static str, OwnedFd)> {
    let mut out = Vec::new();
    // SAFETY: plain system calls making fresh descriptors.
    unsafe {
        out.push((
            "memfd",
            own(libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC)),
        ));
        out.push(("eventfd", own(libc::eventfd(0, libc::EFD_CLOEXEC))));
        out.push((
            "directory",
            own(libc::open(
                c"/".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY,
            )),
        ));
        out.push((
            "/dev/null",
            own(libc::open(c"/dev/null".as_ptr(), libc::O_RDWR)),
        ));
        let mut p = [0; 2];
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        out.push(("pipe read end", own(p[0])));
        out.push(("pipe write end", own(p[1])));
    }
    let (a, _b) = socketpair(libc::SOCK_STREAM);
    out.push(("stream socket", a));
    let (a, _b) = socketpair(libc::SOCK_DGRAM);
    out.push(("datagram socket", a));
    let (a, b) = socketpair(libc::SOCK_SEQPACKET);
    out.push(("bare seqpacket end", a));
    out.push(("bare seqpacket peer", b));
    out
}

#[test]
fn every_wrong_kind_is_refused_as_either_end() {
    common::watchdog(Duration::from_secs(20), || {
        for (what, fd) in forgeries() {
            let dup = fd.try_clone().unwrap();
            match Receiver::<u32>::try_from(fd) {
                Ok(_) => panic!("a {what} was taken as a receiving end"),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{what}: {e}"),
            }
            match Sender::<u32>::try_from(dup) {
                Ok(_) => panic!("a {what} was taken as a sending end"),
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{what}: {e}"),
            }
        }
        let (tx, rx) = procpool::channel::<u32>().unwrap();
        let e = Receiver::<u32>::try_from(tx.as_fd().try_clone_to_owned().unwrap()).unwrap_err();
        assert!(e.to_string().contains("sending end"), "{e}");
        let e = Sender::<u32>::try_from(rx.as_fd().try_clone_to_owned().unwrap()).unwrap_err();
        assert!(e.to_string().contains("receiving end"), "{e}");
        // The real ends still work after all that.
        tx.send(7).unwrap();
        assert_eq!(rx.recv().unwrap(), 7);
    });
}
