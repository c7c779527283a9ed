//! The Linux calls under a channel: a `SOCK_SEQPACKET` socketpair, whole-message sends and
//! receives with descriptors, readiness waits, and the memfds of large messages.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use super::frame::MAX_PASSED;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::MemfdFlags;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// A connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets, both close-on-exec: the first
/// sends, the second receives. Each is shut down in the direction it does not use (the
/// sender cannot receive, the receiver cannot send: a try fails with `EPIPE`) and marked
/// with its role (see [`check_end`]).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (s, r) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::shutdown(&s, rustix::net::Shutdown::Read)?;
    rustix::net::shutdown(&r, rustix::net::Shutdown::Write)?;
    set_mark(s.as_fd(), SEND_MARK)?;
    set_mark(r.as_fd(), RECV_MARK)?;
    Ok((s, r))
}

/// Which end of a channel a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Sending,
    Receiving,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Sending => "sending",
            Role::Receiving => "receiving",
        }
    }
}

/// The marks of the two ends: their `SO_RCVLOWAT`, which a `SOCK_SEQPACKET` socket
/// otherwise ignores (it is read only by stream receives).
const SEND_MARK: i32 = 0x5050_4353;
const RECV_MARK: i32 = 0x5050_4352;

fn set_mark(fd: BorrowedFd<'_>, mark: i32) -> io::Result<()> {
    // SAFETY: a plain setsockopt of an int on a socket we hold.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const mark).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mark(fd: BorrowedFd<'_>) -> Option<i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: a plain getsockopt of an int into a local of that size.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    (r == 0).then_some(v)
}

/// Checks that `fd` is the `want` end of a procpool channel: a Unix `SOCK_SEQPACKET`
/// socket with that end's mark, whose state agrees. A sending end has its receiving side
/// shut down, which poll reports (`POLLRDHUP`) for as long as it lives; a receiving end
/// reports it only once every sender is gone (`POLLHUP` with it). The mark alone anyone
/// could set; the shutdown cannot be undone.
///
/// # Errors
/// What `fd` is instead, as a sentence: "expected the receiving end of a procpool
/// channel, got a pipe".
pub(crate) fn check_end(fd: BorrowedFd<'_>, want: Role) -> Result<(), String> {
    let wrong = |got: String| {
        format!(
            "expected the {} end of a procpool channel, got {got}",
            want.name()
        )
    };
    if !is_seqpacket(fd) {
        return Err(wrong(describe(fd)));
    }
    let role = match mark(fd) {
        Some(SEND_MARK) => Role::Sending,
        Some(RECV_MARK) => Role::Receiving,
        _ => {
            return Err(wrong(
                "a SOCK_SEQPACKET socket that is not a procpool channel end".into(),
            ));
        }
    };
    if role != want {
        return Err(wrong(format!("its {} end", role.name())));
    }
    let mut p = [PollFd::from_borrowed_fd(fd, PollFlags::RDHUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut p, Some(&zero)).map_err(|e| format!("poll of a channel end: {e}"))?;
    let rev = p[0].revents();
    let read_shut = rev.contains(PollFlags::RDHUP);
    let hung = rev.contains(PollFlags::HUP);
    match want {
        Role::Sending if !read_shut => Err(wrong(
            "a socket marked as one that can still receive (a receiving end with a forged mark)"
                .into(),
        )),
        Role::Receiving if read_shut && !hung => Err(wrong(
            "a socket that cannot receive (a sending end with a forged mark)".into(),
        )),
        _ => Ok(()),
    }
}

/// What kind of descriptor `fd` is, for errors: "a pipe", "a regular file"...
pub(crate) fn describe(fd: BorrowedFd<'_>) -> String {
    use rustix::fs::FileType;
    let Ok(st) = rustix::fs::fstat(fd) else {
        return "a descriptor that cannot be examined".into();
    };
    match FileType::from_raw_mode(st.st_mode) {
        FileType::Fifo => "a pipe".into(),
        FileType::Socket => match rustix::net::sockopt::socket_type(fd) {
            Ok(SocketType::STREAM) => "a stream socket".into(),
            Ok(SocketType::DGRAM) => "a datagram socket".into(),
            Ok(SocketType::SEQPACKET) => "a SOCK_SEQPACKET socket".into(),
            _ => "a socket of another type".into(),
        },
        FileType::RegularFile if rustix::fs::fcntl_get_seals(fd).is_ok() => "a memfd".into(),
        FileType::RegularFile => "a regular file".into(),
        FileType::Directory => "a directory".into(),
        FileType::CharacterDevice => "a character device".into(),
        FileType::BlockDevice => "a block device".into(),
        _ => "a descriptor of another kind (an eventfd, pidfd, epoll or the like)".into(),
    }
}

/// Whether `fd` is a Unix `SOCK_SEQPACKET` socket (what a channel end must be).
pub(crate) fn is_seqpacket(fd: BorrowedFd<'_>) -> bool {
    matches!(
        rustix::net::sockopt::socket_type(fd),
        Ok(t) if t == SocketType::SEQPACKET
    )
}

/// Sets the send buffer of `fd` so that the kernel's figure (which doubles what it is
/// given) is about `bytes`, beyond `wmem_max` when the process may (`SO_SNDBUFFORCE`).
pub(crate) fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let half = (bytes / 2).max(1);
    if rustix::net::sockopt::set_socket_send_buffer_size_force(fd, half).is_err() {
        rustix::net::sockopt::set_socket_send_buffer_size(fd, half)?;
    }
    Ok(())
}

/// The send buffer of `fd` in bytes, as the kernel counts it.
pub(crate) fn send_buffer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::net::sockopt::socket_send_buffer_size(fd)?)
}

/// What a non-blocking send did.
pub(crate) enum Sent {
    /// The whole message is queued.
    Done,
    /// No room in the queue now.
    Full,
    /// Every receiving end is closed.
    Gone,
}

/// Sends `parts` as one message, with `fds` attached (`SCM_RIGHTS`), without blocking and
/// without `SIGPIPE`.
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    parts: &[io::IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<Sent> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PASSED + 1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("no room for the descriptors of a message"));
    }
    loop {
        let r = rustix::net::sendmsg(
            sock,
            parts,
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        );
        return match r {
            Ok(_) => Ok(Sent::Done),
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) | Err(Errno::NOBUFS) => Ok(Sent::Full),
            Err(Errno::PIPE | Errno::CONNRESET | Errno::CONNREFUSED | Errno::NOTCONN) => {
                Ok(Sent::Gone)
            }
            Err(e) => Err(e.into()),
        };
    }
}

/// What a non-blocking receive found.
#[derive(Debug)]
pub(crate) enum Received {
    /// A message of `len` bytes (the start of `buf`), with `truncated` set when it was
    /// longer than `buf` (the rest is lost), and the descriptors that came with it.
    Message {
        len: usize,
        truncated: bool,
        fds: Vec<OwnedFd>,
        fds_truncated: bool,
    },
    /// The queue is empty now.
    Empty,
    /// The queue is empty and every sending end is closed.
    Gone,
}

/// Receives one whole message into `buf`, waiting for one if `block` (until a message
/// or the end comes), else not; descriptors arrive close-on-exec.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], block: bool) -> io::Result<Received> {
    let flags = if block {
        RecvFlags::CMSG_CLOEXEC
    } else {
        RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC
    };
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PASSED + 1))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(sock, &mut [io::IoSliceMut::new(buf)], &mut control, flags);
        let msg = match r {
            Ok(m) => m,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Ok(Received::Empty),
            Err(Errno::CONNRESET | Errno::NOTCONN) => return Ok(Received::Gone),
            Err(e) => return Err(e.into()),
        };
        let fds: Vec<OwnedFd> = control
            .drain()
            .filter_map(|m| match m {
                RecvAncillaryMessage::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        if msg.bytes == 0 && fds.is_empty() && hung_up(sock) {
            return Ok(Received::Gone);
        }
        return Ok(Received::Message {
            len: msg.bytes.min(buf.len()),
            truncated: msg.flags.contains(rustix::net::ReturnFlags::TRUNC),
            fds,
            fds_truncated: msg.flags.contains(rustix::net::ReturnFlags::CTRUNC),
        });
    }
}

/// Whether the peer of `sock` is gone (every descriptor of the other end closed).
fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut p = [PollFd::from_borrowed_fd(sock, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut p, Some(&zero)).is_ok() && p[0].revents().intersects(PollFlags::HUP)
}

/// Waits until `sock` is readable (`read`) or writable, or hung up, or `deadline` passes.
/// Returns `false` when the deadline passed.
pub(crate) fn wait(
    sock: BorrowedFd<'_>,
    read: bool,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    let flags = if read { PollFlags::IN } else { PollFlags::OUT };
    loop {
        let left = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return Ok(false);
                }
                Some(d - now)
            }
            None => None,
        };
        let ts = left.map(timespec);
        let mut p = [PollFd::from_borrowed_fd(sock, flags)];
        match rustix::event::poll(&mut p, ts.as_ref()) {
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

/// Where a message memfd's state word is, and its payload starts.
pub(crate) const PAYLOAD_AT: u64 = 8;
/// The state word of a memfd whose message is waiting or being read.
const IN_FLIGHT: u64 = 1;
/// The state word a receiver writes once it has copied the payload out: the sender may
/// write the next message into the memfd.
const CONSUMED: u64 = 0;

/// A new memfd for messages, close-on-exec.
pub(crate) fn message_memfd() -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        "procpool-channel",
        MemfdFlags::CLOEXEC,
    )?)
}

/// Whether a receiver has copied out the message last written to `fd`.
pub(crate) fn consumed(fd: BorrowedFd<'_>) -> bool {
    let mut word = [0u8; 8];
    matches!(pread_all(fd, &mut word, 0), Ok(())) && u64::from_le_bytes(word) == CONSUMED
}

/// Marks `fd` as holding a message ("in flight"): no thread will pick it for reuse.
pub(crate) fn claim(fd: BorrowedFd<'_>) -> io::Result<()> {
    pwrite_all(fd, &IN_FLIGHT.to_le_bytes(), 0)
}

/// Writes a message into `fd` (state word "in flight", then the payload: `parts` one
/// after the other), growing the file as needed (it never shrinks, so its pages are
/// reused).
pub(crate) fn write_message(fd: BorrowedFd<'_>, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let need = PAYLOAD_AT + len as u64;
    if (rustix::fs::fstat(fd)?.st_size as u64) < need {
        rustix::fs::ftruncate(fd, need)?;
    }
    pwrite_all(fd, &IN_FLIGHT.to_le_bytes(), 0)?;
    let mut at = PAYLOAD_AT;
    for part in parts {
        pwrite_all(fd, part, at)?;
        at += part.len() as u64;
    }
    Ok(())
}

/// Copies the `len`-byte payload out of a memfd received from a peer (after checking
/// that it is a memfd holding that much), then marks it consumed.
///
/// The payload is copied, never mapped: a peer that changes or truncates the file
/// meanwhile can garble the bytes (which the decoder checks) or make the read short (an
/// error), but cannot fault this process.
pub(crate) fn read_message(fd: &OwnedFd, len: usize) -> Result<Vec<u8>, String> {
    check_memfd(fd, len)?;
    let out = read_at(fd, PAYLOAD_AT, len)?;
    consume(fd);
    Ok(out)
}

/// As [`read_message`], for a payload that is the encoding of a `Vec<u8>` (a varint
/// length, then the bytes): the bytes, copied once, straight into their vector.
pub(crate) fn read_message_bytes(fd: &OwnedFd, len: usize) -> Result<Vec<u8>, String> {
    let (at, n) = open_message_bytes(fd, len)?;
    let out = read_at(fd, at, n)?;
    consume(fd);
    Ok(out)
}

/// Checks a memfd received from a peer for a payload that is the encoding of a
/// `Vec<u8>` of `len` bytes in all (as [`read_message_bytes`] does), without reading the
/// bytes: where they start in the file, and how many there are.
pub(crate) fn open_message_bytes(fd: &OwnedFd, len: usize) -> Result<(u64, usize), String> {
    check_memfd(fd, len)?;
    let head = read_at(fd, PAYLOAD_AT, len.min(10))?;
    let Ok((n, rest)) = crate::codec::take_varint(&head, u64::MAX) else {
        return Err("a shared-memory message of bytes does not start with a valid length".into());
    };
    let k = head.len() - rest.len();
    if k as u64 + n != len as u64 {
        return Err(format!(
            "a shared-memory message of {len} bytes says its byte vector holds {n}"
        ));
    }
    Ok((PAYLOAD_AT + k as u64, n as usize))
}

/// Copies `out.len()` bytes at `at` out of `fd`, straight into `out` (all of it is
/// written when this returns `Ok`).
pub(crate) fn read_exact_at(
    fd: &OwnedFd,
    at: u64,
    out: &mut [MaybeUninit<u8>],
) -> Result<(), String> {
    let mut done = 0;
    while done < out.len() {
        match rustix::io::pread(fd, &mut out[done..], at + done as u64) {
            Ok(([], _)) => {
                return Err(format!(
                    "the memfd of a large message ended {} bytes short",
                    out.len() - done
                ));
            }
            Ok((got, _)) => done += got.len(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("reading a message memfd: {e}")),
        }
    }
    Ok(())
}

/// Checks that `fd` is a memfd holding a payload of `len` bytes in memory: a file that
/// only says it is that large (a sparse one, `ftruncate`d, costing its sender nothing)
/// is refused before this process allocates anything for it.
fn check_memfd(fd: &OwnedFd, len: usize) -> Result<(), String> {
    rustix::fs::fcntl_get_seals(fd.as_fd()).map_err(|_| {
        format!(
            "expected a memfd with a large message, got {}",
            describe(fd.as_fd())
        )
    })?;
    let st = rustix::fs::fstat(fd).map_err(|e| format!("fstat of a message memfd: {e}"))?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if size < PAYLOAD_AT + len as u64 {
        return Err(format!(
            "the memfd of a large message holds {size} bytes, too few for the {len} its header says"
        ));
    }
    // Blocks of 512 bytes, whatever the file system's block size (stat(2)).
    let stored = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
    if stored < len as u64 {
        return Err(format!(
            "the memfd of a large message says it holds {len} bytes but only {stored} of it are \
             in memory (a sparse file, not written by a procpool sender); nothing was read"
        ));
    }
    Ok(())
}

/// Copies `len` bytes at `at` out of `fd` into a new vector.
fn read_at(fd: &OwnedFd, at: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| format!("no memory for a message of {len} bytes"))?;
    while out.len() < len {
        let want = len - out.len();
        let spare = rustix::buffer::spare_capacity(&mut out);
        match rustix::io::pread(fd, spare, at + (len - want) as u64) {
            Ok(0) => {
                return Err(format!(
                    "the memfd of a large message ended after {} of its {len} bytes",
                    out.len()
                ));
            }
            Ok(_) => {}
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("reading a message memfd: {e}")),
        }
    }
    Ok(out)
}

/// Marks a memfd whose payload was copied out (or never sent) as reusable by its sender
/// (a read-only descriptor just stays unreused).
pub(crate) fn consume(fd: &OwnedFd) {
    let _ = pwrite_all(fd.as_fd(), &CONSUMED.to_le_bytes(), 0);
}

fn pread_all(fd: BorrowedFd<'_>, buf: &mut [u8], at: u64) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match rustix::io::pread(fd, &mut buf[off..], at + off as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => off += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], at: u64) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        match rustix::io::pwrite(fd, &data[off..], at + off as u64) {
            Ok(0) => return Err(io::Error::other("a memfd took no bytes")),
            Ok(n) => off += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
