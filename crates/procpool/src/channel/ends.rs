//! The two ends of a channel: [`Sender`] and [`Receiver`].

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::end::End;
use super::error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
use super::frame::{
    self, INLINE_HEADER, INLINE_MAX, MAX_MESSAGE, MAX_PASSED, MEMFD_HEADER, TAG_INLINE, TAG_MEMFD,
};
use super::iter::{Iter, TryIter};
use super::sys::{self, Received, Sent};
use crate::codec::format::{self, Codec};
use crate::codec::roundtrip::{self, Refusal};
use crate::codec::{self, Value};
use crate::passfd;

thread_local! {
    /// Where a thread encodes the messages it sends (kept between sends when small).
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Where a thread receives packets: room for the largest a channel sends.
    pub(super) static IN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The sending end of a channel. Cloning it gives another sender of the same channel;
/// the receivers see the channel disconnected once every sender in every process is gone.
///
/// A sender can be passed to a process as (part of) the argument of
/// [`procpool::spawn`](crate::spawn) or of a pool task; the process gets its own
/// descriptor of the same channel.
///
/// ```
/// fn produce((tx, n): (procpool::Sender<u32>, u32)) {
///     for i in 0..n {
///         tx.send(i).unwrap();
///     }
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let (tx, rx) = procpool::channel()?;
///     let p = procpool::spawn(produce, (tx.clone(), 3))?; // a clone goes to the process
///     drop(tx); // ours too, so that `rx` ends when the process's is gone
///     assert_eq!(rx.iter().collect::<Vec<u32>>(), [0, 1, 2]);
///     p.join()?;
///     Ok(())
/// }
/// ```
pub struct Sender<T> {
    pub(super) end: Arc<End>,
    /// Bytes the queue holds before senders wait (the socket's send buffer).
    pub(super) capacity: usize,
    _t: PhantomData<fn(T)>,
}

/// The receiving end of a channel. Cloning it gives another receiver of the same queue:
/// each message goes to exactly one of them, whole (a work queue with several consumers,
/// in threads or in processes).
///
/// A receiver can be passed to a process as (part of) the argument of
/// [`procpool::spawn`](crate::spawn) or of a pool task.
///
/// ```
/// fn consume(rx: procpool::Receiver<String>) -> usize {
///     rx.iter().map(|s| s.len()).sum() // until every sender is gone
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let (tx, rx) = procpool::channel::<String>()?;
///     let p = procpool::spawn(consume, rx)?;
///     tx.send("ab".into())?;
///     tx.send("cde".into())?;
///     drop(tx);
///     assert_eq!(p.join()?, 5);
///     Ok(())
/// }
/// ```
pub struct Receiver<T> {
    pub(super) end: Arc<End>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            end: Arc::clone(&self.end),
            capacity: self.capacity,
            _t: PhantomData,
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Self {
            end: Arc::clone(&self.end),
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("fd", &self.end.fd)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("fd", &self.end.fd)
            .finish()
    }
}

impl<T> AsFd for Sender<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.end.fd.as_fd()
    }
}

impl<T> AsFd for Receiver<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.end.fd.as_fd()
    }
}

/// How long a send or receive may wait.
#[derive(Clone, Copy)]
pub(super) enum Wait {
    Never,
    Until(Instant),
    Forever,
}

impl Wait {
    pub(super) fn after(d: Duration) -> Self {
        Instant::now()
            .checked_add(d)
            .map_or(Wait::Forever, Wait::Until)
    }
}

/// How a send ended, before it is put in the caller's error type.
enum SendFail<T> {
    Full(T),
    Failed(SendError<T>),
}

impl<T> Sender<T> {
    pub(crate) fn from_end(end: End, capacity: usize) -> Self {
        Self {
            end: Arc::new(end),
            capacity,
            _t: PhantomData,
        }
    }
}

impl<T: Value> Sender<T> {
    /// Sends `value`, waiting while the queue is full (back-pressure).
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<u64>()?;
    /// tx.send(7).unwrap();
    /// assert_eq!(rx.recv().unwrap(), 7);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SendError::Disconnected`] when every receiver is gone (also while waiting),
    /// [`SendError::Encode`] when the value cannot be encoded, [`SendError::Io`] when the
    /// system refuses; the value is handed back inside.
    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        match self.send_until(value, Wait::Forever) {
            Ok(()) => Ok(()),
            Err(SendFail::Failed(e)) => Err(e),
            Err(SendFail::Full(_)) => unreachable!("a send without a deadline waits for room"),
        }
    }

    /// Sends `value` if the queue has room now.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, _rx) = procpool::bounded::<Vec<u8>>(8 * 1024)?;
    /// let mut sent = 0;
    /// while tx.try_send(vec![0; 1000]).is_ok() {
    ///     sent += 1;
    /// }
    /// assert!(sent > 0);
    /// assert!(matches!(tx.try_send(vec![]), Err(procpool::TrySendError::Full(_))));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`TrySendError::Full`] when the queue is full, [`TrySendError::Failed`] as
    /// [`send`](Self::send).
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.send_until(value, Wait::Never).map_err(|e| match e {
            SendFail::Full(v) => TrySendError::Full(v),
            SendFail::Failed(e) => TrySendError::Failed(e),
        })
    }

    /// Sends `value`, waiting at most `timeout` for room in the queue.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<u8>()?;
    /// tx.send_timeout(1, Duration::from_millis(10)).unwrap();
    /// assert_eq!(rx.recv().unwrap(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] when the queue stayed full, or
    /// [`SendTimeoutError::Failed`] as [`send`](Self::send).
    pub fn send_timeout(&self, value: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.send_until(value, Wait::after(timeout))
            .map_err(|e| match e {
                SendFail::Full(v) => SendTimeoutError::Timeout(v),
                SendFail::Failed(e) => SendTimeoutError::Failed(e),
            })
    }

    /// How many bytes of messages the queue holds before senders wait, as the kernel
    /// counts them (see [`bounded`](crate::bounded)).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let (tx, _rx) = procpool::bounded::<u64>(64 * 1024)?;
    /// assert!(tx.capacity() >= 64 * 1024); // the kernel's figure, at least what was asked
    /// # Ok(()) }
    /// ```
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn send_until(&self, value: T, wait: Wait) -> Result<(), SendFail<T>> {
        let r = OUT.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => self.encode_and_send(&mut buf, &value, wait),
            Err(_) => self.encode_and_send(&mut Vec::new(), &value, wait),
        });
        match r {
            Ok(true) => Ok(()),
            Ok(false) => Err(SendFail::Full(value)),
            Err(Outcome::Gone) => Err(SendFail::Failed(SendError::Disconnected(value))),
            Err(Outcome::Encode(reason)) => {
                Err(SendFail::Failed(SendError::Encode { value, reason }))
            }
            Err(Outcome::Io(error)) => Err(SendFail::Failed(SendError::Io { value, error })),
        }
    }

    /// Encodes `value` into `buf` and sends it; `Ok(false)` when the queue stayed full.
    fn encode_and_send(&self, buf: &mut Vec<u8>, value: &T, wait: Wait) -> Result<bool, Outcome> {
        if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>()
            && bytes.len() > frame::inline_limit(self.capacity)
        {
            return self.send_bytes(bytes, wait);
        }
        buf.clear();
        buf.extend_from_slice(&[TAG_INLINE, 0]);
        let encoding = passfd::Encoding::begin();
        let r = format::encode(Codec::Postcard, buf, value);
        let passed = encoding.finish_vec();
        r.map_err(Outcome::Encode)?;
        if passed.len() > MAX_PASSED {
            return Err(Outcome::Encode(format!(
                "it holds {} descriptors (channel ends, Fd values); a message carries at most {MAX_PASSED}",
                passed.len()
            )));
        }
        buf[1] = passed.len() as u8;
        let size = buf.len() - INLINE_HEADER;
        if size > MAX_MESSAGE {
            shrink(buf);
            return Err(Outcome::Encode(format!(
                "its encoding takes {size} bytes, more than the {MAX_MESSAGE} a channel message may"
            )));
        }
        if passed.is_empty() {
            // A value holding descriptors decodes only where they arrive: its round trip
            // is not tried here.
            roundtrip::check::<T>(Codec::Postcard, &buf[INLINE_HEADER..]).map_err(|r| {
                Outcome::Encode(match r {
                    Refusal::Type(m) | Refusal::Value(m) => m,
                })
            })?;
        }
        if size <= frame::inline_limit(self.capacity) {
            let fds: Vec<BorrowedFd<'_>> = passed.iter().map(AsFd::as_fd).collect();
            return self.send_packet(&[io::IoSlice::new(buf)], &fds, wait);
        }
        let memfd = self
            .end
            .memfd_with(&[&buf[INLINE_HEADER..]], self.capacity)
            .map_err(Outcome::Io);
        shrink(buf);
        self.send_memfd(&memfd?, size, &passed, wait)
    }

    /// Sends a `Vec<u8>` above the inline limit: its encoding (a varint length, then the
    /// bytes) written to a memfd straight from the vector, without a copy in between.
    fn send_bytes(&self, bytes: &[u8], wait: Wait) -> Result<bool, Outcome> {
        let mut len = Vec::with_capacity(10);
        codec::put_varint(&mut len, bytes.len() as u64);
        let size = len.len() + bytes.len();
        if size > MAX_MESSAGE {
            return Err(Outcome::Encode(format!(
                "its encoding takes {size} bytes, more than the {MAX_MESSAGE} a channel message may"
            )));
        }
        let memfd = self
            .end
            .memfd_with(&[&len, bytes], self.capacity)
            .map_err(Outcome::Io)?;
        self.send_memfd(&memfd, size, &[], wait)
    }

    /// Sends the packet of a payload of `size` bytes in `memfd`, with `passed`.
    pub(super) fn send_memfd(
        &self,
        memfd: &OwnedFd,
        size: usize,
        passed: &[OwnedFd],
        wait: Wait,
    ) -> Result<bool, Outcome> {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(passed.len() + 1);
        fds.push(memfd.as_fd());
        fds.extend(passed.iter().map(AsFd::as_fd));
        let mut header = [0u8; MEMFD_HEADER];
        header[0] = TAG_MEMFD;
        header[1] = passed.len() as u8;
        header[2..].copy_from_slice(&(size as u64).to_le_bytes());
        let pad = vec![0u8; frame::large_frame_len(self.capacity) - MEMFD_HEADER];
        let parts = [io::IoSlice::new(&header), io::IoSlice::new(&pad)];
        let sent = self.send_packet(&parts, &fds, wait);
        if !matches!(sent, Ok(true)) {
            // Not sent (full, or no receiver): free for the next message.
            sys::consume(memfd);
        }
        sent
    }

    pub(super) fn send_packet(
        &self,
        parts: &[io::IoSlice<'_>],
        fds: &[BorrowedFd<'_>],
        wait: Wait,
    ) -> Result<bool, Outcome> {
        let sock = self.end.fd.as_fd();
        loop {
            match sys::send(sock, parts, fds).map_err(Outcome::Io)? {
                Sent::Done => return Ok(true),
                Sent::Gone => return Err(Outcome::Gone),
                Sent::Full => {}
            }
            let deadline = match wait {
                Wait::Never => return Ok(false),
                Wait::Until(d) => Some(d),
                Wait::Forever => None,
            };
            if !sys::wait(sock, false, deadline).map_err(Outcome::Io)? {
                return Ok(false);
            }
        }
    }
}

/// The largest send buffer a thread keeps between messages.
const KEPT_BUFFER: usize = 4 << 20;

/// A failed send, before the value is put back.
pub(super) enum Outcome {
    Gone,
    Encode(String),
    Io(io::Error),
}

/// Frees a thread's send buffer after a very large message (one of a few MiB is kept:
/// allocating it anew for each message costs a page fault per page).
fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > KEPT_BUFFER {
        *buf = Vec::new();
    }
}

impl<T> Receiver<T> {
    pub(crate) fn from_end(end: End) -> Self {
        Self {
            end: Arc::new(end),
            _t: PhantomData,
        }
    }
}

impl<T> Receiver<T> {
    /// Sets the largest message this receiver accepts, in bytes of its encoding (default
    /// and most: 1 GiB, the largest a sender sends). A larger message, as its packet
    /// announces it, is refused before any memory is allocated for it:
    /// [`RecvError::Malformed`] says so, and the message is dropped. The setting holds for
    /// this receiver and its clones in this process; a receiver passed to another process
    /// starts there with the default.
    ///
    /// Whatever the limit, a large message is read only from a memfd that holds it in
    /// memory: a forged packet naming a sparse file is refused without reading it.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// rx.set_max_message(1 << 20);
    /// tx.send(vec![0; 4 << 20]).unwrap();
    /// tx.send(vec![1; 10]).unwrap();
    /// assert!(matches!(rx.recv(), Err(procpool::RecvError::Malformed(m)) if m.contains("limit")));
    /// assert_eq!(rx.recv().unwrap(), vec![1; 10]); // the channel goes on
    /// assert_eq!(rx.max_message(), 1 << 20);
    /// # Ok(()) }
    /// ```
    pub fn set_max_message(&self, bytes: usize) {
        self.end
            .max_message
            .store(bytes.min(MAX_MESSAGE), std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest message this receiver accepts (see
    /// [`set_max_message`](Self::set_max_message)).
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (_tx, rx) = procpool::channel::<u8>()?;
    /// assert_eq!(rx.max_message(), 1 << 30);
    /// # Ok(()) }
    /// ```
    pub fn max_message(&self) -> usize {
        self.end
            .max_message
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<T: Value> Receiver<T> {
    /// Waits for a message. With several receivers of one channel (clones, in this
    /// process or others), each message goes to exactly one of them.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<String>()?;
    /// std::thread::spawn(move || tx.send("hi".to_string()).unwrap());
    /// assert_eq!(rx.recv().unwrap(), "hi");
    /// assert!(matches!(rx.recv(), Err(procpool::RecvError::Disconnected)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RecvError::Disconnected`] once the queue is empty and every sender is gone;
    /// [`RecvError::Malformed`] or [`RecvError::Decode`] for a message that could not be
    /// read (it is dropped; the next call reads the next one); [`RecvError::Io`].
    pub fn recv(&self) -> Result<T, RecvError> {
        match self.recv_until(Wait::Forever) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => unreachable!("a receive without a deadline waits for a message"),
            Err(e) => Err(e),
        }
    }

    /// Takes a message if one is waiting.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<u8>()?;
    /// assert!(matches!(rx.try_recv(), Err(procpool::TryRecvError::Empty)));
    /// tx.send(3).unwrap();
    /// assert_eq!(rx.try_recv().unwrap(), 3);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`TryRecvError::Empty`] when none is waiting, [`TryRecvError::Failed`] as
    /// [`recv`](Self::recv).
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        match self.recv_until(Wait::Never) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(TryRecvError::Empty),
            Err(e) => Err(TryRecvError::Failed(e)),
        }
    }

    /// Waits at most `timeout` for a message.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn main() -> std::io::Result<()> {
    /// let (_tx, rx) = procpool::channel::<u8>()?;
    /// assert!(matches!(
    ///     rx.recv_timeout(Duration::from_millis(5)),
    ///     Err(procpool::RecvTimeoutError::Timeout)
    /// ));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] when none came in time, [`RecvTimeoutError::Failed`]
    /// as [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.recv_until(Wait::after(timeout)) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(RecvTimeoutError::Timeout),
            Err(e) => Err(RecvTimeoutError::Failed(e)),
        }
    }

    /// An iterator that waits for messages and ends when every sender is gone (or at the
    /// first message that cannot be read: use [`recv`](Self::recv) in a loop to see and
    /// skip those).
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<u32>()?;
    /// for i in 0..3 {
    ///     tx.send(i).unwrap();
    /// }
    /// drop(tx);
    /// assert_eq!(rx.iter().sum::<u32>(), 3);
    /// # Ok(()) }
    /// ```
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { rx: self }
    }

    /// An iterator over the messages waiting now; it never blocks.
    ///
    /// ```
    /// # fn main() -> std::io::Result<()> {
    /// let (tx, rx) = procpool::channel::<u32>()?;
    /// tx.send(1).unwrap();
    /// tx.send(2).unwrap();
    /// assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2]);
    /// # Ok(()) }
    /// ```
    pub fn try_iter(&self) -> TryIter<'_, T> {
        TryIter { rx: self }
    }

    /// `Ok(None)` when the wait ended without a message.
    fn recv_until(&self, wait: Wait) -> Result<Option<T>, RecvError> {
        IN.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => self.recv_into(&mut buf, wait),
            Err(_) => self.recv_into(&mut Vec::new(), wait),
        })
    }

    fn recv_into(&self, buf: &mut Vec<u8>, wait: Wait) -> Result<Option<T>, RecvError> {
        if buf.len() < INLINE_MAX + INLINE_HEADER {
            buf.resize(INLINE_MAX + INLINE_HEADER, 0);
        }
        let sock = self.end.fd.as_fd();
        loop {
            // Without a deadline, the kernel waits: one call per message, no poll.
            let block = matches!(wait, Wait::Forever);
            match sys::recv(sock, buf, block).map_err(RecvError::Io)? {
                Received::Message {
                    len,
                    truncated,
                    fds,
                    fds_truncated,
                } => {
                    let limit = self.max_message();
                    return frame::open::<T>(&buf[..len], truncated, fds, fds_truncated, limit)
                        .map(Some)
                        .map_err(|e| match e {
                            Ok(m) => RecvError::Malformed(m),
                            Err(m) => RecvError::Decode(m),
                        });
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
