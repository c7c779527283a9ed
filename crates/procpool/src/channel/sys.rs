//! The Linux calls under a channel: a `SOCK_SEQPACKET` socketpair, whole-message sends and
//! receives with an optional descriptor, readiness waits, and sealed memfds.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use super::frame::MAX_PASSED;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

/// A connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets, both close-on-exec: the first
/// sends, the second receives.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
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

/// Receives one whole message into `buf`, without blocking; descriptors arrive
/// close-on-exec.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PASSED + 1))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = rustix::net::recvmsg(
            sock,
            &mut [io::IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
        );
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

/// A memfd holding exactly `data`, sealed against every change (write, grow, shrink).
pub(crate) fn sealed_memfd_with(data: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "procpool-channel",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    rustix::fs::ftruncate(&fd, data.len() as u64)?;
    let mut off = 0;
    while off < data.len() {
        match rustix::io::pwrite(&fd, &data[off..], off as u64) {
            Ok(0) => return Err(io::Error::other("a memfd took no bytes")),
            Ok(n) => off += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// A read-only mapping of a memfd received from a peer, after checking that it holds
/// exactly `len` bytes and that nobody can change it any more.
#[derive(Debug)]
pub(crate) struct SealedMap {
    ptr: NonNull<u8>,
    len: usize,
}

impl SealedMap {
    /// Maps `fd`; refuses (with the reason) a descriptor that is not a memfd of `len`
    /// bytes sealed against writing, growing and shrinking.
    pub(crate) fn open(fd: &OwnedFd, len: usize) -> Result<Self, String> {
        let seals = rustix::fs::fcntl_get_seals(fd.as_fd()).map_err(|e| {
            format!("the descriptor sent with a large message is not a memfd ({e})")
        })?;
        let need = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK;
        if !seals.contains(need) {
            return Err(
                "the memfd sent with a large message is not sealed against writing and resizing"
                    .into(),
            );
        }
        let st = rustix::fs::fstat(fd).map_err(|e| format!("fstat of a message memfd: {e}"))?;
        if st.st_size < 0 || st.st_size as u64 != len as u64 {
            return Err(format!(
                "the memfd of a large message holds {} bytes, its header says {len}",
                st.st_size
            ));
        }
        if len == 0 {
            return Ok(Self {
                ptr: NonNull::dangling(),
                len,
            });
        }
        // SAFETY: a fresh read-only shared mapping of a memfd sealed against shrinking
        // (checked above) of exactly `len` bytes: no access within `len` can fault, and
        // with the write seal no process can change the bytes while they are mapped.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| format!("mapping a message memfd of {len} bytes: {e}"))?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or("mmap gave a null pointer")?;
        Ok(Self { ptr, len })
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes mapped in `open` (or none, dangling but aligned,
        // for zero); sealed, so they never change while mapped.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SealedMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `open`; `bytes` borrows `self`, so no slice into
            // it outlives this.
            let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}
