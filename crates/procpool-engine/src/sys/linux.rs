//! Linux system calls used by the engine, each behind a small safe function.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::{MemfdFlags, Mode, OFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, PidfdFlags, Signal};

/// A connected pair of Unix stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Switches `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    rustix::io::ioctl_fionbio(fd, on)?;
    Ok(())
}

/// Sends `data` with descriptors attached (`SCM_RIGHTS`).
pub(crate) fn send_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if n == data.len() {
        Ok(())
    } else {
        Err(io::Error::other("short send of descriptors"))
    }
}

/// Receives exactly `buf.len()` bytes sent by [`send_fds`], and the descriptors with them.
pub(crate) fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Vec<OwnedFd>> {
    let mut fds = std::collections::VecDeque::new();
    if recv_into_fds(sock, buf, &mut fds)? != buf.len() {
        return Err(io::Error::other("short message with descriptors"));
    }
    Ok(fds.into())
}

/// Moves the socket a worker got as standard input to a new close-on-exec descriptor, and
/// puts `/dev/null` in its place, so that task code reading standard input reads nothing.
pub(crate) fn take_stdin() -> io::Result<OwnedFd> {
    // SAFETY: descriptor 0 is open (the parent gave it) and owned by nothing else yet; the
    // borrow ends before it is replaced below.
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    let sock = rustix::io::fcntl_dupfd_cloexec(stdin, 3)?;
    let null = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
    // SAFETY: as above; `ManuallyDrop` keeps descriptor 0 open (as /dev/null) afterwards.
    let mut zero = std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(0) });
    rustix::io::dup2(&null, &mut zero)?;
    Ok(sock)
}

/// A close-on-exec copy of `fd` numbered 3 or above.
pub(crate) fn dup_above_stdio(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 3)?)
}

/// Closes every descriptor from 3 up except `keep`: a worker holds nothing the parent
/// happened to leave inheritable (such as a pipe whose reader waits for end-of-file).
pub(crate) fn close_all_but(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<RawFd> = keep.to_vec();
    keep.sort_unstable();
    let mut first: libc::c_uint = 3;
    for k in keep {
        let k = k as libc::c_uint;
        if k > first {
            close_range(first, k - 1)?;
        }
        first = first.max(k + 1);
    }
    close_range(first, libc::c_uint::MAX)
}

fn close_range(first: libc::c_uint, last: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and touches no memory; the descriptors it
    // closes belong to nothing in this process yet (it runs before any user code).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The parent's process id, or 0 if there is none (we were reparented to init's
/// sub-reaper: the parent died).
pub(crate) fn parent_pid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// This process's id.
pub(crate) fn my_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// A process descriptor for `pid`.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("pid 0"))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends SIGKILL through a process descriptor. Killing a process that already exited
/// (but is not reaped) is not an error.
pub(crate) fn kill(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    signal(pidfd, Signal::KILL)
}

/// Sends SIGTERM through a process descriptor, as [`kill`] does SIGKILL.
pub(crate) fn terminate(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    signal(pidfd, Signal::TERM)
}

fn signal(pidfd: BorrowedFd<'_>, sig: Signal) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A non-blocking event descriptor used to wake a poll loop.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// Makes an eventfd readable.
pub(crate) fn wake(fd: BorrowedFd<'_>) {
    // Fails only when the counter would overflow, i.e. it is readable already.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets an eventfd.
pub(crate) fn drain(fd: BorrowedFd<'_>) {
    let mut b = [0u8; 8];
    let _ = rustix::io::read(fd, &mut b);
}

/// Sends as much of `bufs` as the socket takes now, without SIGPIPE.
pub(crate) fn send_vectored(fd: BorrowedFd<'_>, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let mut control = SendAncillaryBuffer::default();
    Ok(rustix::net::sendmsg(
        fd,
        bufs,
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Most descriptors one message carries (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 253;

/// Like [`send_vectored`], with `fds` (at most [`MAX_FDS_PER_MESSAGE`]) attached to the
/// first byte sent (`SCM_RIGHTS`).
pub(crate) fn send_vectored_fds(
    fd: BorrowedFd<'_>,
    bufs: &[io::IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    Ok(rustix::net::sendmsg(
        fd,
        bufs,
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// Receives bytes into `buf`, and the descriptors that came with them (close-on-exec,
/// appended to `fds` in order). Returns how many bytes arrived: 0 means end of stream.
///
/// # Errors
/// The system call's error, or an error when descriptors were lost because more came
/// than one message may carry.
pub(crate) fn recv_into_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut std::collections::VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        fd,
        &mut [io::IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::other(
            "descriptors sent with a message were lost (control data truncated)",
        ));
    }
    Ok(msg.bytes)
}

/// Reads into the spare capacity of `buf` (which must have some), extending it; blocks
/// on a blocking descriptor.
pub(crate) fn read_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    Ok(rustix::io::read(fd, rustix::buffer::spare_capacity(buf))?)
}

/// Makes the kernel buffers of a socket larger, so bulk data moves in fewer rounds.
pub(crate) fn grow_socket_buffers(fd: BorrowedFd<'_>, bytes: usize) {
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(fd, bytes);
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(fd, bytes);
}

/// Readiness wanted of, and reported for, one descriptor.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ready {
    pub(crate) read: bool,
    pub(crate) write: bool,
    pub(crate) hup: bool,
}

/// Waits until one of `fds` is ready or `timeout` passes; fills `out` (same length).
pub(crate) fn poll(
    fds: &[(BorrowedFd<'_>, Ready)],
    out: &mut Vec<Ready>,
    timeout: Option<Duration>,
) -> io::Result<()> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|(fd, want)| {
            let mut f = PollFlags::empty();
            if want.read {
                f |= PollFlags::IN;
            }
            if want.write {
                f |= PollFlags::OUT;
            }
            PollFd::from_borrowed_fd(*fd, f)
        })
        .collect();
    let ts = timeout.map(|d| Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    match rustix::event::poll(&mut pfds, ts.as_ref()) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    out.clear();
    out.extend(pfds.iter().map(|p| {
        let r = p.revents();
        Ready {
            read: r.intersects(PollFlags::IN),
            write: r.intersects(PollFlags::OUT),
            hup: r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
        }
    }));
    Ok(())
}

/// Whether `fd` has bytes to read now (a poll that does not wait).
pub(crate) fn readable_now(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut pfd, Some(&zero)), Ok(n) if n > 0)
}

/// Sleeps while `word` holds `expected`, at most `timeout` (`None`: no limit), on a word
/// that may be shared with other processes. Returns early, at once, when the word holds
/// something else; may also return for no reason (the caller checks what it waits for).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT (not private: the word may lie in memory shared with another
    // process) reads the 4 aligned bytes `word` refers to, which live while we sleep
    // (borrowed); the timeout is null or points at a timespec on our stack.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            tsp,
        );
    }
}

/// Wakes every thread, of any process, sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE only uses the address of `word` as a key; nothing is written.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Monotonic clock in nanoseconds, the same clock in every process of the machine.
pub(crate) fn monotonic_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A fingerprint of the running executable: its device, inode, size and modification
/// time. A worker started from another file (or a rebuilt one) has another fingerprint.
pub(crate) fn exe_fingerprint() -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self/exe")?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
    ] {
        for b in v.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(h)
}

/// Name of a signal, such as `SIGKILL`.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "an unnamed signal",
    }
}

/// A memfd of `len` zero bytes, sealed against resizing; `name` shows in
/// `/proc/<pid>/fd` as `/memfd:<name>`.
pub(crate) fn sealed_memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)?;
    Ok(fd)
}

/// A small shared-memory region backed by a sealed memfd: the parent creates it, the
/// worker maps the descriptor it inherits. Neither side can resize it.
#[derive(Debug)]
pub(crate) struct SharedRegion {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory accessed only through atomics.
unsafe impl Send for SharedRegion {}
// SAFETY: as above.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Creates a region of `len` bytes (zeroed), sealed against resizing; `name` shows in
    /// `/proc/<pid>/fd` as `/memfd:<name>`.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Self> {
        Self::map(sealed_memfd(name, len)?, len)
    }

    /// Maps a region received from the parent, after checking its size and seals.
    pub(crate) fn open(fd: OwnedFd, len: usize) -> io::Result<Self> {
        let st = rustix::fs::fstat(&fd)?;
        if st.st_size as u64 != len as u64 {
            return Err(io::Error::other("shared region has the wrong size"));
        }
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if !seals.contains(SealFlags::GROW | SealFlags::SHRINK) {
            return Err(io::Error::other("shared region is not sealed"));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of a memfd we hold; its size is sealed, so no
        // access within `len` can fault with SIGBUS.
        let p = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { fd, ptr, len })
    }

    /// The descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Copies `data` into the region at `offset`.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        let end = offset.checked_add(data.len()).expect("range overflows");
        assert!(end <= self.len, "write outside the shared region");
        // SAFETY: in bounds (checked above); the region's size is sealed so the pages
        // exist. The protocols over the region (data region, results ring) give each range
        // to one side at a time; a peer that breaks them only garbles bytes, which the
        // reader copies out before it checks them.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len());
        }
    }

    /// The address of byte `offset` of the region, for a writer that checks its own
    /// bounds (see `items`).
    ///
    /// # Panics
    /// If `offset` is past the region's end.
    pub(crate) fn at(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.len, "offset outside the shared region");
        // SAFETY: in bounds (checked above).
        unsafe { self.ptr.as_ptr().add(offset) }
    }

    /// Replaces the contents of `out` with the region's `len` bytes at `offset` (copied
    /// straight into the vector, without zero-filling it first).
    ///
    /// # Panics
    /// If the range is outside the region.
    pub(crate) fn read_to_vec(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        let end = offset.checked_add(len).expect("range overflows");
        assert!(end <= self.len, "read outside the shared region");
        out.clear();
        out.reserve(len);
        // SAFETY: the source is in bounds (checked above) with pages present (sealed
        // size); the vector has room for `len` bytes (reserved), which the copy
        // initializes before the length is set.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), len);
            out.set_len(len);
        }
    }

    /// Copies the region's bytes at `offset` into `out`.
    ///
    /// # Panics
    /// If the range is outside the region.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) {
        let end = offset.checked_add(out.len()).expect("range overflows");
        assert!(end <= self.len, "read outside the shared region");
        // SAFETY: in bounds (checked above), pages exist (sealed size); the bytes are
        // copied, so later changes by the peer cannot reach what the caller parses.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
    }

    /// The bytes at `offset..offset + len`, or `None` outside the region.
    ///
    /// # Safety
    /// No process may write the range while the returned slice lives (the protocol gives
    /// the range to the reader until it answers).
    pub(crate) unsafe fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let offset = usize::try_from(offset).ok()?;
        let len = usize::try_from(len).ok()?;
        if offset.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: in bounds (checked above); no writer while the slice lives (the
        // caller's promise).
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) })
    }

    /// The `i`th 64-bit word of the region.
    pub(crate) fn word(&self, i: usize) -> &AtomicU64 {
        assert!(
            (i + 1) * 8 <= self.len,
            "word {i} outside the shared region"
        );
        // SAFETY: in bounds (checked above), 8-aligned (mmap is page-aligned), and valid
        // for the lifetime of `self`; all accesses go through atomics.
        unsafe { &*self.ptr.as_ptr().add(i * 8).cast::<AtomicU64>() }
    }
}

impl SharedRegion {
    /// The low 32 bits of the `i`th 64-bit word of the region, as a word of its own (a
    /// futex word: see [`futex_wait`]).
    pub(crate) fn word32(&self, i: usize) -> &AtomicU32 {
        let w = self.word(i);
        let low = if cfg!(target_endian = "little") { 0 } else { 4 };
        // SAFETY: within the 8 bytes of word `i` (in bounds, checked by `word`), 4-aligned;
        // valid for the lifetime of `self`; all accesses go through atomics.
        unsafe {
            &*(w as *const AtomicU64)
                .cast::<u8>()
                .add(low)
                .cast::<AtomicU32>()
        }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `map`; no reference into it outlives
        // `self` (`word` borrows `self`).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
