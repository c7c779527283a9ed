//! Byte messages with descriptors, for fronts that encode their values themselves (the
//! Python front's queues and pipes pickle them).
//!
//! On the wire such a message is exactly what a `Sender<Vec<u8>>` sends (the bytes'
//! encoding: a varint length, then the bytes; in the packet, or in a memfd when large),
//! with descriptors attached that the front's own encoding refers to. A
//! `Receiver<Vec<u8>>` reading one gets the bytes (and the descriptors are closed).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::ends::{IN, Outcome, Receiver, Sender, Wait};
use super::error::{RecvError, SendError};
use super::frame::{self, Body, INLINE_HEADER, INLINE_MAX, MAX_MESSAGE, MAX_PASSED, TAG_INLINE};
use super::sys::{self, Received};

/// A message's bytes and the descriptors that came with it.
pub type BytesAndFds = (Vec<u8>, Vec<OwnedFd>);

/// The bytes of a message received by [`Receiver::recv_with`], where they are: in the
/// packet, or in the shared memory of a large message. Copy them where they are needed
/// with [`read_at`](Self::read_at): a large message is copied once, straight from the
/// shared memory into the caller's buffer.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
/// tx.send(b"hello".to_vec()).unwrap();
/// let first = rx.recv_with(None, |p: procpool::Payload<'_>, _fds| {
///     let mut b = [0u8; 1];
///     p.read_at(0, &mut b).map(|()| b[0])
/// });
/// assert_eq!(first.unwrap().unwrap().unwrap(), b'h');
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Payload<'a> {
    place: Place<'a>,
}

#[derive(Debug)]
enum Place<'a> {
    Inline(&'a [u8]),
    Memfd {
        fd: &'a OwnedFd,
        at: u64,
        len: usize,
    },
}

impl Payload<'_> {
    /// The number of bytes in the message.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// tx.send(b"abc".to_vec()).unwrap();
    /// assert_eq!(rx.recv_with(None, |p, _| p.len()).unwrap(), Some(3));
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        match self.place {
            Place::Inline(b) => b.len(),
            Place::Memfd { len, .. } => len,
        }
    }

    /// Whether the message has no bytes.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// tx.send(Vec::new()).unwrap();
    /// assert_eq!(rx.recv_with(None, |p, _| p.is_empty()).unwrap(), Some(true));
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the message's bytes from offset `at` into `out`, filling it.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// tx.send(vec![7; 1 << 20]).unwrap(); // large: it travels in shared memory
    /// let tail = rx
    ///     .recv_with(None, |p, _| {
    ///         let mut out = [0u8; 4];
    ///         p.read_at(p.len() - 4, &mut out).map(|()| out)
    ///     })
    ///     .unwrap()
    ///     .unwrap()
    ///     .unwrap();
    /// assert_eq!(tail, [7; 4]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RecvError::Malformed`] when `at + out.len()` passes the end of the message, or
    /// when the shared memory of a large message was cut short by its sender meanwhile.
    pub fn read_at(&self, at: usize, out: &mut [u8]) -> Result<(), RecvError> {
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and `read_into` writes only
        // initialized bytes.
        let out = unsafe {
            std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<MaybeUninit<u8>>(), out.len())
        };
        self.read_into(at, out)
    }

    /// As [`read_at`](Self::read_at), into memory that need not be initialized (a
    /// buffer fresh from an allocator, not zeroed first): every byte of `out` is written
    /// when this returns `Ok`.
    ///
    /// ```
    /// # use std::mem::MaybeUninit;
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// tx.send(vec![5; 300_000]).unwrap();
    /// let v = rx
    ///     .recv_with(None, |p, _| {
    ///         let mut v: Vec<u8> = Vec::with_capacity(p.len());
    ///         p.read_into(0, &mut v.spare_capacity_mut()[..p.len()])?;
    ///         // SAFETY: `read_into` wrote all `p.len()` bytes.
    ///         unsafe { v.set_len(p.len()) };
    ///         Ok::<_, procpool::RecvError>(v)
    ///     })
    ///     .unwrap()
    ///     .unwrap()
    ///     .unwrap();
    /// assert_eq!(v, vec![5; 300_000]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`read_at`](Self::read_at).
    pub fn read_into(&self, at: usize, out: &mut [MaybeUninit<u8>]) -> Result<(), RecvError> {
        let end = at.checked_add(out.len()).filter(|&e| e <= self.len());
        let Some(end) = end else {
            return Err(RecvError::Malformed(format!(
                "a read of {} bytes at {at} passes the end of a message of {}",
                out.len(),
                self.len()
            )));
        };
        match self.place {
            Place::Inline(b) => {
                for (o, &x) in out.iter_mut().zip(&b[at..end]) {
                    o.write(x);
                }
                Ok(())
            }
            Place::Memfd { fd, at: start, .. } => {
                sys::read_exact_at(fd, start + at as u64, out).map_err(RecvError::Malformed)
            }
        }
    }
}

fn wait_for(timeout: Option<Duration>) -> Wait {
    match timeout {
        None => Wait::Forever,
        Some(d) if d.is_zero() => Wait::Never,
        Some(d) => Wait::after(d),
    }
}

impl Sender<Vec<u8>> {
    /// Sends the bytes of `parts`, one after the other, as one message, with `fds`
    /// attached (at most 32; the receiver gets its own descriptors of the same files).
    /// Waits for room in the queue at most `timeout` (`None`: as long as needed; zero:
    /// not at all). `Ok(false)` when there was no room in time.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// assert!(tx.send_parts(&[b"ab", b"cd"], &[], None).unwrap());
    /// assert_eq!(rx.recv().unwrap(), b"abcd");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SendError::Disconnected`] when every receiver is gone, [`SendError::Encode`]
    /// for a message too large or too many descriptors, [`SendError::Io`].
    pub fn send_parts(
        &self,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> Result<bool, SendError<()>> {
        let wait = wait_for(timeout);
        self.send_parts_with(parts, fds, wait).map_err(|e| match e {
            Outcome::Gone => SendError::Disconnected(()),
            Outcome::Encode(reason) => SendError::Encode { value: (), reason },
            Outcome::Io(error) => SendError::Io { value: (), error },
        })
    }

    fn send_parts_with(
        &self,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
        wait: Wait,
    ) -> Result<bool, Outcome> {
        if fds.len() > MAX_PASSED {
            return Err(Outcome::Encode(format!(
                "it holds {} descriptors; a message carries at most {MAX_PASSED}",
                fds.len()
            )));
        }
        let n: usize = parts.iter().map(|p| p.len()).sum();
        let mut len = Vec::with_capacity(10);
        crate::codec::put_varint(&mut len, n as u64);
        let size = len.len() + n;
        if size > MAX_MESSAGE {
            return Err(Outcome::Encode(format!(
                "its encoding takes {size} bytes, more than the {MAX_MESSAGE} a channel message may"
            )));
        }
        if size <= frame::inline_limit(self.capacity) {
            let head = [TAG_INLINE, fds.len() as u8];
            let mut slices = Vec::with_capacity(parts.len() + 2);
            slices.push(io::IoSlice::new(&head));
            slices.push(io::IoSlice::new(&len));
            slices.extend(parts.iter().map(|p| io::IoSlice::new(p)));
            return self.send_packet(&slices, fds, wait);
        }
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&len);
        all.extend_from_slice(parts);
        let memfd = self
            .end
            .memfd_with(&all, self.capacity)
            .map_err(Outcome::Io)?;
        let passed = fds
            .iter()
            .map(|f| f.try_clone_to_owned())
            .collect::<io::Result<Vec<OwnedFd>>>()
            .map_err(Outcome::Io)?;
        self.send_memfd(&memfd, size, &passed, wait)
    }
}

impl Receiver<Vec<u8>> {
    /// Receives one message's bytes and the descriptors that came with it (close-on-exec,
    /// in the order they were given), waiting at most `timeout` (`None`: as long as
    /// needed; zero: not at all). `Ok(None)` when none came in time.
    ///
    /// ```
    /// # use std::os::fd::AsFd;
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// let file = std::fs::File::open("/dev/null")?;
    /// tx.send_parts(&[b"x"], &[file.as_fd()], None).unwrap();
    /// let (bytes, fds) = rx.recv_with_fds(None).unwrap().unwrap();
    /// assert_eq!((bytes, fds.len()), (b"x".to_vec(), 1));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the queue is empty and every sender is gone,
    /// [`RecvError::Malformed`] for a packet that is not such a message (dropped; the
    /// next call reads the next one), [`RecvError::Io`].
    pub fn recv_with_fds(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<BytesAndFds>, RecvError> {
        let wait = wait_for(timeout);
        IN.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => self.recv_raw_into(&mut buf, wait),
            Err(_) => self.recv_raw_into(&mut Vec::new(), wait),
        })
    }

    /// Receives one message and hands its bytes, where they are, to `f` with the
    /// descriptors that came with it (close-on-exec, in the order they were given); `f`
    /// copies out what it needs (see [`Payload::read_at`]). Waits at most `timeout`
    /// (`None`: as long as needed; zero: not at all); `Ok(None)` when none came in time.
    /// This is [`recv_with_fds`](Self::recv_with_fds) without its copy into a vector: a
    /// large message goes from shared memory straight into the caller's buffers.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// tx.send_parts(&[b"head", &[1; 100_000]], &[], None).unwrap();
    /// let (head, fds) = rx
    ///     .recv_with(None, |p, fds| {
    ///         let mut head = [0u8; 4];
    ///         p.read_at(0, &mut head).map(|()| (head, fds.len()))
    ///     })
    ///     .unwrap()
    ///     .unwrap()
    ///     .unwrap();
    /// assert_eq!((&head, fds), (b"head", 0));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`recv_with_fds`](Self::recv_with_fds).
    pub fn recv_with<R>(
        &self,
        timeout: Option<Duration>,
        f: impl FnOnce(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Result<Option<R>, RecvError> {
        let wait = wait_for(timeout);
        let mut f = Some(f);
        let mut call = |p: Payload<'_>, fds: Vec<OwnedFd>| {
            let f = f.take().expect("a receive hands over one message");
            f(p, fds)
        };
        IN.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => self.recv_raw_with(&mut buf, wait, &mut call),
            Err(_) => self.recv_raw_with(&mut Vec::new(), wait, &mut call),
        })
    }

    fn recv_raw_into(
        &self,
        buf: &mut Vec<u8>,
        wait: Wait,
    ) -> Result<Option<BytesAndFds>, RecvError> {
        let mut copy = |p: Payload<'_>, fds: Vec<OwnedFd>| match p.place {
            Place::Inline(b) => Ok((b.to_vec(), fds)),
            Place::Memfd { fd, at, len } => {
                let mut out: Vec<u8> = Vec::new();
                out.try_reserve_exact(len).map_err(|_| {
                    RecvError::Malformed(format!("no memory for a message of {len} bytes"))
                })?;
                sys::read_exact_at(fd, at, &mut out.spare_capacity_mut()[..len])
                    .map_err(RecvError::Malformed)?;
                // SAFETY: `read_exact_at` wrote all `len` bytes.
                unsafe { out.set_len(len) };
                Ok((out, fds))
            }
        };
        self.recv_raw_with(buf, wait, &mut copy)?.transpose()
    }

    fn recv_raw_with<R>(
        &self,
        buf: &mut Vec<u8>,
        wait: Wait,
        f: &mut dyn FnMut(Payload<'_>, Vec<OwnedFd>) -> R,
    ) -> Result<Option<R>, RecvError> {
        if buf.len() < INLINE_MAX + INLINE_HEADER {
            buf.resize(INLINE_MAX + INLINE_HEADER, 0);
        }
        let sock = self.end.fd.as_fd();
        loop {
            let block = matches!(wait, Wait::Forever);
            match sys::recv(sock, buf, block).map_err(RecvError::Io)? {
                Received::Message {
                    len,
                    truncated,
                    fds,
                    fds_truncated,
                } => {
                    let limit = self.max_message();
                    return open_raw(&buf[..len], truncated, fds, fds_truncated, limit, f)
                        .map(Some);
                }
                Received::Gone => return Err(RecvError::Disconnected),
                Received::Empty => {}
            }
            let deadline = match wait {
                Wait::Never => return Ok(None),
                Wait::Until(d) => Some(d),
                Wait::Forever => None,
            };
            if !sys::wait(sock, true, deadline).map_err(RecvError::Io)? {
                return Ok(None);
            }
        }
    }
}

/// The bytes and descriptors of a packet, checked as [`frame::open`] checks them, handed
/// to `f` (a memfd is marked consumed after `f` returns).
fn open_raw<R>(
    packet: &[u8],
    truncated: bool,
    mut fds: Vec<OwnedFd>,
    fds_truncated: bool,
    limit: usize,
    f: &mut dyn FnMut(Payload<'_>, Vec<OwnedFd>) -> R,
) -> Result<R, RecvError> {
    if truncated || fds_truncated {
        return Err(RecvError::Malformed(
            "a message was longer, or came with more descriptors, than a channel sends; it was dropped"
                .into(),
        ));
    }
    let (body, _) = frame::parse(packet, fds.len(), limit).map_err(RecvError::Malformed)?;
    match body {
        Body::Inline(payload) => {
            let Ok((n, rest)) = crate::codec::take_varint(payload, MAX_MESSAGE as u64) else {
                return Err(RecvError::Malformed(
                    "a message of bytes does not start with a valid length".into(),
                ));
            };
            if n != rest.len() as u64 {
                return Err(RecvError::Malformed(format!(
                    "a message of {} bytes says its byte vector holds {n}",
                    payload.len()
                )));
            }
            let p = Payload {
                place: Place::Inline(rest),
            };
            Ok(f(p, fds))
        }
        Body::Memfd(len) => {
            let memfd = fds.remove(0);
            let (at, n) = sys::open_message_bytes(&memfd, len).map_err(RecvError::Malformed)?;
            let p = Payload {
                place: Place::Memfd {
                    fd: &memfd,
                    at,
                    len: n,
                },
            };
            let r = f(p, fds);
            sys::consume(&memfd);
            Ok(r)
        }
    }
}
