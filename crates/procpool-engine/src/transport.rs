//! Framed byte streams over a Unix socket: a reader that splits frames off a growing
//! buffer, and an output queue that sends many frames (and large payloads without
//! copying them) in one vectored system call.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::sys;
use crate::wire::{self, FRAME_HEADER, WireError};

/// The smallest read the reader asks the kernel for.
const READ_CHUNK: usize = 64 * 1024;

/// A reader's buffer larger than this is released once it is empty.
const KEEP_CAPACITY: usize = 16 << 20;

/// Payloads at least this large are queued by reference instead of copied.
pub(crate) const SHARE_THRESHOLD: usize = 16 * 1024;

/// Splits frames off bytes read from a socket. `buf[start..]` holds bytes not yet
/// handled; reads go straight into the vector's spare capacity.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    max_body: usize,
    /// How many bytes from the start of `buf`'s allocation are known initialized (at
    /// least `buf.len()`). `recvmsg` takes an initialized slice, so
    /// [`fill_with_fds`](Self::fill_with_fds) zeroes spare capacity once per allocation,
    /// not once per read.
    init: usize,
}

impl FrameReader {
    pub(crate) fn new(max_body: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_body,
            init: 0,
        }
    }

    /// The first complete frame's body and the bytes it spans, if one is buffered.
    pub(crate) fn frame(&self) -> Result<Option<(&[u8], usize)>, WireError> {
        wire::split_frame(&self.buf[self.start..], self.max_body)
    }

    /// The bytes buffered and not yet handled (the start of an incomplete frame, when
    /// [`frame`](Self::frame) gives none).
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Takes the first `n` bytes buffered (a frame just handled) as an owned vector,
    /// without copying them: only the bytes read past them move to a new buffer.
    pub(crate) fn take(&mut self, n: usize) -> Vec<u8> {
        let end = (self.start + n).min(self.buf.len());
        let tail = self.buf.split_off(end);
        let mut taken = std::mem::replace(&mut self.buf, tail);
        self.init = self.buf.len();
        taken.drain(..self.start);
        self.start = 0;
        taken
    }

    /// Drops `n` bytes (a frame just handled).
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.buf.len() {
            self.start = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                // A large result came through: do not hold its size for good.
                self.buf = Vec::new();
                self.init = 0;
            } else {
                self.buf.clear();
            }
        }
    }

    /// Reads once from `fd`. Returns the number of bytes read: 0 means end of stream.
    /// The buffer grows only as data arrives, so a bogus length costs nothing.
    ///
    /// # Errors
    /// The system call's error, or [`io::ErrorKind::OutOfMemory`] when the buffer could
    /// not grow for the frame being read (see [`frame_len`](Self::frame_len)).
    pub(crate) fn fill(&mut self, fd: BorrowedFd<'_>) -> io::Result<usize> {
        self.make_room()?;
        let n = sys::read_into(fd, &mut self.buf)?;
        self.init = self.init.max(self.buf.len());
        Ok(n)
    }

    /// Like [`fill`](Self::fill), also taking the descriptors that came with the bytes
    /// (close-on-exec), appended to `fds` in the order they were sent.
    ///
    /// # Errors
    /// As [`fill`](Self::fill), or when descriptors were lost.
    pub(crate) fn fill_with_fds(
        &mut self,
        fd: BorrowedFd<'_>,
        fds: &mut VecDeque<OwnedFd>,
    ) -> io::Result<usize> {
        self.make_room()?;
        let len = self.buf.len();
        let cap = self.buf.capacity();
        if self.init < cap {
            let from = self.init.max(len) - len;
            self.buf.spare_capacity_mut()[from..].fill(std::mem::MaybeUninit::new(0));
            self.init = cap;
        }
        // SAFETY: the `cap - len` bytes after `len` lie within the allocation and are
        // initialized (`init == cap`: zeroed above, or earlier in this allocation's life).
        let spare =
            unsafe { std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().add(len), cap - len) };
        let n = sys::recv_into_fds(fd, spare, fds)?;
        // SAFETY: the first `n` of those initialized bytes now hold what was received.
        unsafe { self.buf.set_len(len + n) };
        Ok(n)
    }

    /// The length of the frame being read, when its header is in.
    pub(crate) fn frame_len(&self) -> Option<usize> {
        self.frame_len_hint()
    }

    fn make_room(&mut self) -> io::Result<()> {
        let pending = self.buf.len() - self.start;
        let want = self.frame_len_hint().unwrap_or(0).max(pending + READ_CHUNK);
        let spare = self.buf.capacity() - self.buf.len();
        if self.start > 0 && (spare < READ_CHUNK || self.start >= pending) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Room for at most twice what is buffered (plus a chunk): a peer that announces a
        // huge frame must send the bytes before we allocate for them.
        let target = (2 * pending + READ_CHUNK).min(want);
        if self.buf.capacity() - self.start < target {
            // A new allocation: only what the vector holds is known initialized.
            self.init = self.buf.len();
            // Room for the whole frame is taken exactly: doubling past it would cost up
            // to twice a large result's size.
            let grown = if target == want {
                self.buf.try_reserve_exact(target - pending)
            } else {
                self.buf.try_reserve(target - pending)
            };
            grown.map_err(|e| io::Error::new(io::ErrorKind::OutOfMemory, e))?;
        }
        Ok(())
    }

    fn frame_len_hint(&self) -> Option<usize> {
        let h = self.buf.get(self.start..self.start + FRAME_HEADER)?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        (len <= self.max_body).then_some(FRAME_HEADER + len)
    }
}

#[derive(Debug)]
enum Seg {
    Bytes(Vec<u8>),
    Shared(Arc<Vec<u8>>),
}

impl Seg {
    fn as_slice(&self) -> &[u8] {
        match self {
            Seg::Bytes(v) => v,
            Seg::Shared(v) => v,
        }
    }
}

/// Some of an attachment's descriptors, to go in one message.
type FdBatch = (Arc<[OwnedFd]>, std::ops::Range<usize>);

/// Descriptors to send along with the byte at stream position `at`.
#[derive(Debug)]
struct Attached {
    at: u64,
    fds: Arc<[OwnedFd]>,
    /// How many of `fds` are sent already.
    sent: usize,
}

/// Bytes waiting to be sent, in order, and descriptors attached to some of them.
///
/// Descriptors ride with `SCM_RIGHTS` on the byte they were attached before: a send stops
/// short of that byte, and the next send starts with it and carries them (at most
/// [`MAX_FDS_PER_MESSAGE`](sys::MAX_FDS_PER_MESSAGE) per message, one byte per further
/// message), so a reader has them once it has read that byte.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    segs: VecDeque<Seg>,
    head_off: usize,
    cur: Vec<u8>,
    cur_off: usize,
    /// Bytes sent since the queue was made (the stream position of the next byte).
    sent: u64,
    attached: VecDeque<Attached>,
}

impl OutQueue {
    /// The buffer to append small frames to.
    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.cur
    }

    /// Appends a large payload without copying it.
    pub(crate) fn push_shared(&mut self, payload: Arc<Vec<u8>>) {
        self.seal_cur();
        self.segs.push_back(Seg::Shared(payload));
    }

    /// Appends an owned buffer without copying it.
    pub(crate) fn push_owned(&mut self, payload: Vec<u8>) {
        self.seal_cur();
        self.segs.push_back(Seg::Bytes(payload));
    }

    /// Attaches `fds` to the next byte queued: they are sent with it.
    pub(crate) fn attach_fds(&mut self, fds: Arc<[OwnedFd]>) {
        if fds.is_empty() {
            return;
        }
        let at = self.sent + self.queued_bytes() as u64;
        self.attached.push_back(Attached { at, fds, sent: 0 });
    }

    /// Bytes queued and not yet sent.
    fn queued_bytes(&self) -> usize {
        let segs: usize = self.segs.iter().map(|s| s.as_slice().len()).sum();
        segs - self.head_off + (self.cur.len() - self.cur_off)
    }

    fn seal_cur(&mut self) {
        if self.cur.len() > self.cur_off {
            let mut data = std::mem::take(&mut self.cur);
            data.drain(..self.cur_off);
            self.segs.push_back(Seg::Bytes(data));
        } else {
            self.cur.clear();
        }
        self.cur_off = 0;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.segs.is_empty() && self.cur.len() == self.cur_off
    }

    /// Sends what the socket takes. On a non-blocking socket returns `Ok(())` when the
    /// socket is full; on a blocking one, returns once everything is sent.
    pub(crate) fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        while !self.is_empty() {
            let (limit, fds) = self.next_attachment();
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(self.segs.len().min(64) + 1);
            let mut room = limit;
            for (i, s) in self.segs.iter().take(64).enumerate() {
                let off = if i == 0 { self.head_off } else { 0 };
                let part = &s.as_slice()[off..];
                let part = &part[..part.len().min(room)];
                room -= part.len();
                iov.push(IoSlice::new(part));
                if room == 0 {
                    break;
                }
            }
            if room > 0 && self.segs.len() < 64 && self.cur.len() > self.cur_off {
                let part = &self.cur[self.cur_off..];
                iov.push(IoSlice::new(&part[..part.len().min(room)]));
            }
            let sent = match &fds {
                Some((f, range)) => {
                    let borrowed: Vec<BorrowedFd<'_>> =
                        f[range.clone()].iter().map(|x| x.as_fd()).collect();
                    sys::send_vectored_fds(fd, &iov, &borrowed)
                }
                None => sys::send_vectored(fd, &iov),
            };
            match sent {
                Ok(n) => {
                    if let Some((_, range)) = &fds
                        && n > 0
                    {
                        self.fds_sent(range.len());
                    }
                    self.advance(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.cur.clear();
        self.cur_off = 0;
        Ok(())
    }

    /// How many bytes the next send may take, and the descriptors it carries: a send
    /// stops short of the next attachment, and one that starts on it carries (some of)
    /// its descriptors.
    fn next_attachment(&self) -> (usize, Option<FdBatch>) {
        let Some(a) = self.attached.front() else {
            return (usize::MAX, None);
        };
        if a.at > self.sent {
            return ((a.at - self.sent) as usize, None);
        }
        let left = a.fds.len() - a.sent;
        let n = left.min(sys::MAX_FDS_PER_MESSAGE);
        // More to send after these: this message carries one byte, the next the rest.
        // Otherwise it stops short of the next attachment.
        let limit = if left > n {
            1
        } else {
            self.attached
                .get(1)
                .map_or(usize::MAX, |b| (b.at - self.sent).max(1) as usize)
        };
        (limit, Some((a.fds.clone(), a.sent..a.sent + n)))
    }

    fn fds_sent(&mut self, n: usize) {
        let Some(a) = self.attached.front_mut() else {
            return;
        };
        a.sent += n;
        if a.sent >= a.fds.len() {
            self.attached.pop_front();
        } else {
            // The rest rides on the next byte.
            a.at += 1;
        }
    }

    fn advance(&mut self, mut n: usize) {
        self.sent += n as u64;
        while n > 0 {
            if let Some(front) = self.segs.front() {
                let rem = front.as_slice().len() - self.head_off;
                if n >= rem {
                    n -= rem;
                    self.segs.pop_front();
                    self.head_off = 0;
                } else {
                    self.head_off += n;
                    n = 0;
                }
            } else {
                self.cur_off += n;
                n = 0;
            }
        }
        if self.cur_off == self.cur.len() {
            self.cur.clear();
            self.cur_off = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn frames_cross_a_socket_in_pieces() {
        let (a, b) = sys::socketpair().unwrap();
        let mut q = OutQueue::default();
        let big = Arc::new(vec![7u8; 300_000]);
        let at = wire::begin_frame(q.buf(), 3);
        wire::end_frame(q.buf(), at);
        q.buf().extend_from_slice(&(big.len() as u32).to_le_bytes());
        q.push_shared(big.clone());
        let writer = std::thread::spawn(move || {
            q.flush(a.as_fd()).unwrap();
            a
        });
        let mut r = FrameReader::new(1 << 20);
        let mut got = Vec::new();
        while got.len() < 2 {
            if let Some((body, used)) = r.frame().unwrap() {
                got.push(body.len());
                r.consume(used);
                continue;
            }
            assert!(r.fill(b.as_fd()).unwrap() > 0);
        }
        assert_eq!(got, vec![1, 300_000]);
        drop(writer.join().unwrap());
    }

    #[test]
    fn a_large_frame_does_not_keep_its_buffer() {
        let (a, b) = sys::socketpair().unwrap();
        let mut q = OutQueue::default();
        let big = Arc::new(vec![7u8; KEEP_CAPACITY + 1]);
        q.buf().extend_from_slice(&(big.len() as u32).to_le_bytes());
        q.push_shared(big);
        let writer = std::thread::spawn(move || {
            q.flush(a.as_fd()).unwrap();
            a
        });
        let mut r = FrameReader::new(64 << 20);
        loop {
            if let Some((body, used)) = r.frame().unwrap() {
                assert_eq!(body.len(), KEEP_CAPACITY + 1);
                assert!(r.buf.capacity() > KEEP_CAPACITY);
                r.consume(used);
                break;
            }
            assert!(r.fill(b.as_fd()).unwrap() > 0);
        }
        assert_eq!(r.buf.capacity(), 0, "the buffer of a large frame was kept");
        drop(writer.join().unwrap());
    }
}

#[cfg(test)]
mod fd_tests {
    use super::*;
    use std::os::fd::AsFd;

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn descriptors_arrive_with_the_frame_they_were_attached_to() {
        let (a, b) = sys::socketpair().unwrap();
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for round in 0..40usize {
            let n = [0, 1, 3, 300, 600][round % 5];
            let fds: Vec<OwnedFd> = (0..n).map(|_| devnull()).collect();
            if n > 0 {
                q.attach_fds(fds.into());
            }
            let at = wire::begin_frame(q.buf(), 3);
            q.buf().extend_from_slice(&(round as u32).to_le_bytes());
            q.buf().extend_from_slice(&[0u8; 8]);
            wire::end_frame(q.buf(), at);
            if round % 7 == 0 {
                q.buf().extend_from_slice(&100_000u32.to_le_bytes());
                q.push_shared(Arc::new(vec![4u8; 100_000]));
            }
            expect.push(n);
        }
        let writer = std::thread::spawn(move || {
            q.flush(a.as_fd()).unwrap();
            a
        });
        let mut r = FrameReader::new(1 << 20);
        let mut fds = VecDeque::new();
        let mut got = Vec::new();
        let mut taken = 0usize;
        while got.len() < expect.len() {
            if let Some((body, used)) = r.frame().unwrap() {
                if body.first() == Some(&3) {
                    let n = expect[got.len()];
                    assert!(
                        fds.len() >= n,
                        "frame {}: {} of {n} arrived",
                        got.len(),
                        fds.len()
                    );
                    fds.drain(..n);
                    taken += n;
                    got.push(n);
                }
                r.consume(used);
                continue;
            }
            assert!(r.fill_with_fds(b.as_fd(), &mut fds).unwrap() > 0);
        }
        assert!(fds.is_empty());
        assert_eq!(taken, expect.iter().sum::<usize>());
        drop(writer.join().unwrap());
    }

    #[test]
    fn bytes_read_with_descriptors_are_the_bytes_sent() {
        // Frames large and small, so the buffer grows, is reused and is released: what
        // `fill_with_fds` zeroes beforehand must never show through.
        let (a, b) = sys::socketpair().unwrap();
        let mut q = OutQueue::default();
        let sizes = [10usize, 700_000, 3, KEEP_CAPACITY + 5, 65_536, 1];
        for (k, &n) in sizes.iter().enumerate() {
            q.attach_fds(vec![devnull()].into());
            let body: Vec<u8> = (0..n).map(|i| (i * 7 + k + 1) as u8 | 1).collect();
            q.buf().extend_from_slice(&(n as u32).to_le_bytes());
            q.push_shared(Arc::new(body));
        }
        let writer = std::thread::spawn(move || {
            q.flush(a.as_fd()).unwrap();
            a
        });
        let mut r = FrameReader::new(64 << 20);
        let mut fds = VecDeque::new();
        let mut k = 0;
        while k < sizes.len() {
            if let Some((body, used)) = r.frame().unwrap() {
                let want: Vec<u8> = (0..sizes[k]).map(|i| (i * 7 + k + 1) as u8 | 1).collect();
                assert!(body == want.as_slice(), "frame {k} differs");
                r.consume(used);
                k += 1;
                continue;
            }
            assert!(r.fill_with_fds(b.as_fd(), &mut fds).unwrap() > 0);
        }
        assert_eq!(fds.len(), sizes.len());
        drop(writer.join().unwrap());
    }
}
