//! `procpool._core.Channel`: the Rust front's channel (`procpool::channel`) for Python's
//! `Queue`, `SimpleQueue`, `JoinableQueue` and `Pipe` (see `procpool/queues.py`).
//!
//! A message is one packet of the channel's own format: a pickle, as bytes, and the
//! descriptors of the values pickled inside it (channel ends, for a queue sent through a
//! queue). The channel guarantees the rest: a sender killed mid-send never leaves part of
//! a message, readers sharing the receiving end each take whole messages, none twice,
//! large messages travel in a memfd.

use std::fmt;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::time::{Duration, Instant};

use procpool::{Receiver, Sender};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Both ends of a channel, or one of them.
#[pyclass(module = "procpool._core")]
pub(crate) struct Channel {
    tx: Option<Sender<Vec<u8>>>,
    rx: Option<Receiver<Vec<u8>>>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

fn closed() -> PyErr {
    PyOSError::new_err("handle is closed")
}

fn borrowed(fd: i32) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!("not a descriptor: {fd}")));
    }
    // SAFETY: the caller passes a descriptor it holds open for the duration of the call;
    // it is duplicated at once.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?)
}

impl Channel {
    /// Sends `parts` as one message with `fds` attached, waiting for room at most
    /// `timeout` (`None`: as long as needed); `Ok(false)` when the queue stayed full.
    pub(crate) fn send_slices(
        &self,
        py: Python<'_>,
        slices: &[&[u8]],
        borrowed: &[BorrowedFd<'_>],
        timeout: Option<Duration>,
    ) -> PyResult<bool> {
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        // The common case, a queue with room, without letting the GIL go.
        match tx.send_parts(slices, borrowed, Some(Duration::ZERO)) {
            Ok(true) => return Ok(true),
            Ok(false) if timeout == Some(Duration::ZERO) => return Ok(false),
            Ok(false) => {}
            Err(e) => return send_error(e),
        }
        // Full: wait for room with the GIL let go, running the program's signal handlers
        // when a signal comes (Ctrl-C raises `KeyboardInterrupt` here, as in the stdlib).
        let deadline = timeout.map(|t| Instant::now() + t);
        let fd = tx.as_fd().as_raw_fd();
        loop {
            if !wait_ready(py, fd, false, deadline)? {
                return Ok(false);
            }
            match tx.send_parts(slices, borrowed, Some(Duration::ZERO)) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => return send_error(e),
            }
        }
    }

    /// The message of a `Queue` waiting in the socket now, if any: a `Queue` sends its
    /// socket messages with the ring position of their token in front (see `ring.rs`),
    /// and a void marker for a dead sender's token. Others (sent by other means) come
    /// untagged.
    pub(crate) fn recv_tagged_now<'py>(&self, py: Python<'py>) -> PyResult<Option<Tagged<'py>>> {
        let rx = self.rx.as_ref().ok_or_else(closed)?;
        let r = receive(py, rx, Some(Duration::ZERO), |py, p, fds| {
            let mut marker = [0u8; 1];
            if !p.is_empty() {
                p.read_at(0, &mut marker).map_err(recv_error)?;
            }
            let tag = || -> PyResult<u64> {
                let mut t = [0u8; 8];
                if p.len() < TAGGED_HEAD {
                    return Err(malformed(format!("a tagged message of {} bytes", p.len())));
                }
                p.read_at(1, &mut t).map_err(recv_error)?;
                Ok(u64::from_le_bytes(t))
            };
            Ok(match marker[0] {
                TAGGED => {
                    let t = tag()?;
                    let (pickle, bufs) = open_queue_message(py, &p, TAGGED_HEAD)?;
                    RawTagged::Msg(Some(t), pickle.unbind(), unbind(bufs), raw_fds(fds))
                }
                VOID => RawTagged::Void(tag()?),
                _ => {
                    let (pickle, bufs) = open_queue_message(py, &p, 0)?;
                    RawTagged::Msg(None, pickle.unbind(), unbind(bufs), raw_fds(fds))
                }
            })
        })?;
        Ok(r.map(|t| match t {
            RawTagged::Void(t) => Tagged::Void(t),
            RawTagged::Msg(tag, pickle, bufs, fds) => {
                let bufs = bufs.into_iter().map(|b| b.into_bound(py)).collect();
                Tagged::Msg(tag, (pickle.into_bound(py), bufs, fds))
            }
        }))
    }

    /// Whether every receiving end of the socket is closed (a send would fail).
    pub(crate) fn readers_gone(&self) -> bool {
        self.tx.as_ref().is_some_and(|tx| {
            poll_now(tx.as_fd().as_raw_fd(), libc::POLLOUT) & (libc::POLLHUP | libc::POLLERR) != 0
        })
    }

    /// Whether a message is waiting in the socket now (or every sender is gone).
    pub(crate) fn readable_now(&self) -> bool {
        self.rx
            .as_ref()
            .is_some_and(|rx| poll_now(rx.as_fd().as_raw_fd(), libc::POLLIN) & libc::POLLIN != 0)
    }
}

#[pymethods]
impl Channel {
    /// A new channel whose queue holds about `capacity` bytes (`None`: the system's
    /// default).
    #[new]
    #[pyo3(signature = (capacity=None))]
    fn new(capacity: Option<usize>) -> PyResult<Self> {
        let (tx, rx) = match capacity {
            None => procpool::channel::<Vec<u8>>()?,
            Some(c) => procpool::bounded::<Vec<u8>>(c)?,
        };
        Ok(Channel {
            tx: Some(tx),
            rx: Some(rx),
        })
    }

    /// The two ends of a duplex pipe: two channels, each end sending on one and
    /// receiving from the other, each queue holding about `capacity` bytes.
    #[staticmethod]
    fn duplex(capacity: usize) -> PyResult<(Channel, Channel)> {
        let (ab_tx, ab_rx) = procpool::bounded::<Vec<u8>>(capacity)?;
        let (ba_tx, ba_rx) = procpool::bounded::<Vec<u8>>(capacity)?;
        Ok((
            Channel {
                tx: Some(ab_tx),
                rx: Some(ba_rx),
            },
            Channel {
                tx: Some(ba_tx),
                rx: Some(ab_rx),
            },
        ))
    }

    /// The ends given by descriptors (duplicated; -1 for none), checked to be channel
    /// sockets.
    #[staticmethod]
    fn from_fds(send: i32, recv: i32) -> PyResult<Self> {
        let tx = if send >= 0 {
            Some(
                Sender::try_from(borrowed(send)?)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            )
        } else {
            None
        };
        let rx = if recv >= 0 {
            Some(
                Receiver::try_from(borrowed(recv)?)
                    .map_err(|e| PyValueError::new_err(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(Channel { tx, rx })
    }

    /// The sending end's descriptor (-1 when there is none).
    fn send_fd(&self) -> i32 {
        self.tx.as_ref().map_or(-1, |t| t.as_fd().as_raw_fd())
    }

    /// The receiving end's descriptor (-1 when there is none).
    fn recv_fd(&self) -> i32 {
        self.rx.as_ref().map_or(-1, |r| r.as_fd().as_raw_fd())
    }

    /// Bytes of messages the queue holds before senders wait.
    fn capacity(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::capacity)
    }

    /// Sends the bytes of `parts` (`bytes` objects), one after the other, as one
    /// message, with `fds` (duplicated by the kernel). `timeout`: `None` waits for room
    /// as long as needed, `0` not at all. `False` when the queue stayed full;
    /// `BrokenPipeError` when no receiving end is left.
    #[pyo3(signature = (parts, fds, timeout=None))]
    fn send(
        &self,
        py: Python<'_>,
        parts: Vec<Bound<'_, PyBytes>>,
        fds: Vec<i32>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        if fds.iter().any(|&f| f < 0) {
            return Err(PyValueError::new_err("a message's descriptor is negative"));
        }
        // `bytes` objects are immutable and held by `parts` for the whole call.
        let slices: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        // SAFETY: the descriptors are the caller's, open for the duration of the call.
        let borrowed: Vec<BorrowedFd<'_>> = fds
            .iter()
            .map(|&f| unsafe { BorrowedFd::borrow_raw(f) })
            .collect();
        let timeout = crate::args::duration(timeout, "timeout")?;
        self.send_slices(py, &slices, &borrowed, timeout)
    }

    /// Receives one message: `(bytes, [descriptor, ...])` (a `bytearray` when
    /// `writable`; the descriptors are the
    /// caller's to close), or `None` when none came within `timeout` (`None`: wait as
    /// long as needed, `0`: not at all). `EOFError` once the queue is empty and every
    /// sending end is closed. A large message is copied once, from shared memory
    /// straight into the new object.
    #[pyo3(signature = (timeout=None, writable=false))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        writable: bool,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Vec<i32>)>> {
        let rx = self.rx.as_ref().ok_or_else(closed)?;
        let timeout = crate::args::duration(timeout, "timeout")?;
        let r = receive(py, rx, timeout, |py, p, fds| {
            let data = fresh(py, p.len(), writable, |out| p.read_into(0, out))?;
            Ok((data.unbind(), raw_fds(fds)))
        })?;
        Ok(r.map(|(data, fds)| (data.into_bound(py), fds)))
    }

    /// Receives one message of a queue (see `procpool/queues.py`): `(pickle,
    /// [buffer, ...], [descriptor, ...])`, each out-of-band buffer copied once, from the
    /// message straight into its own `bytes` (read-only in the pickle) or `bytearray`
    /// (writable). `None`, `EOFError` and `timeout` as [`recv`](Self::recv).
    #[pyo3(signature = (timeout=None))]
    fn recv_message<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<QueueMessage<'py>>> {
        let rx = self.rx.as_ref().ok_or_else(closed)?;
        let timeout = crate::args::duration(timeout, "timeout")?;
        let r = receive(py, rx, timeout, |py, p, fds| {
            let (pickle, bufs) = open_queue_message(py, &p, 0)?;
            let bufs: Vec<Py<PyAny>> = bufs.into_iter().map(Bound::unbind).collect();
            Ok((pickle.unbind(), bufs, raw_fds(fds)))
        })?;
        Ok(r.map(|(pickle, bufs, fds)| {
            let bufs = bufs.into_iter().map(|b| b.into_bound(py)).collect();
            (pickle.into_bound(py), bufs, fds)
        }))
    }

    /// Waits until a message can be read (or every sender is gone): `True`, or `False`
    /// when `timeout` passed first.
    #[pyo3(signature = (timeout=None))]
    fn poll(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let rx = self.rx.as_ref().ok_or_else(closed)?;
        let timeout = crate::args::duration(timeout, "timeout")?;
        let fd = rx.as_fd().as_raw_fd();
        wait_ready(py, fd, true, timeout.map(|t| Instant::now() + t))
    }

    /// Closes the sending end here.
    fn close_send(&mut self) {
        self.tx = None;
    }

    /// Closes the receiving end here.
    fn close_recv(&mut self) {
        self.rx = None;
    }
}

/// A queue message as Python gets it: the pickle, its out-of-band buffers, descriptors.
pub(crate) type QueueMessage<'py> = (Bound<'py, PyAny>, Vec<Bound<'py, PyAny>>, Vec<i32>);

/// What a `Queue`'s socket holds first (see [`Channel::recv_tagged_now`]).
pub(crate) enum Tagged<'py> {
    /// A message, with the ring position of its token (`None`: sent untagged).
    Msg(Option<u64>, QueueMessage<'py>),
    /// The void marker of the token at this position: its message, if none came
    /// before this marker, never will.
    Void(u64),
}

/// [`Tagged`] without the GIL's lifetime.
enum RawTagged {
    Msg(Option<u64>, Py<PyAny>, Vec<Py<PyAny>>, Vec<i32>),
    Void(u64),
}

fn unbind(bufs: Vec<Bound<'_, PyAny>>) -> Vec<Py<PyAny>> {
    bufs.into_iter().map(Bound::unbind).collect()
}

/// The marker of a `Queue`'s socket message: then its token's ring position (u64 LE),
/// then the message as [`PLAIN`] or [`FRAMED`] says.
pub(crate) const TAGGED: u8 = 2;
/// The marker of a void marker: then the ring position of the token it voids (u64 LE).
pub(crate) const VOID: u8 = 3;
/// Bytes in front of a tagged message.
pub(crate) const TAGGED_HEAD: usize = 9;

fn raw_fds(fds: Vec<OwnedFd>) -> Vec<i32> {
    fds.into_iter().map(IntoRawFd::into_raw_fd).collect()
}

/// Receives one message and hands it to `f` with the GIL held: a message already
/// waiting is taken at once; otherwise the GIL is let go while the receiving end is
/// empty, and a signal that comes meanwhile runs the program's handlers (Ctrl-C raises
/// `KeyboardInterrupt` here, as in the stdlib's blocking calls).
fn receive<R>(
    py: Python<'_>,
    rx: &Receiver<Vec<u8>>,
    timeout: Option<Duration>,
    f: impl FnOnce(Python<'_>, procpool::Payload<'_>, Vec<OwnedFd>) -> PyResult<R>,
) -> PyResult<Option<R>> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let fd = rx.as_fd().as_raw_fd();
    let mut f = Some(f);
    loop {
        let r = rx.recv_with(Some(Duration::ZERO), |p, fds| {
            let f = f.take().expect("one message per receive");
            f(py, p, fds)
        });
        match r {
            Ok(Some(v)) => return v.map(Some),
            Ok(None) => {}
            Err(e) => return Err(recv_error(e)),
        }
        // Readers sharing the end may take the message that woke this one: wait again.
        if timeout == Some(Duration::ZERO) || !wait_ready(py, fd, true, deadline)? {
            return Ok(None);
        }
    }
}

fn recv_error(e: procpool::RecvError) -> PyErr {
    match e {
        procpool::RecvError::Disconnected => pyo3::exceptions::PyEOFError::new_err(
            "every sending end of the queue or pipe is closed and it is empty",
        ),
        procpool::RecvError::Io(e) => e.into(),
        e => PyOSError::new_err(format!("a message could not be read: {e}")),
    }
}

/// A new `bytes` (or `bytearray` when `writable`) of `len` bytes, filled by `fill`
/// (which must write all of them), without zeroing it first.
fn fresh<'py>(
    py: Python<'py>,
    len: usize,
    writable: bool,
    fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> Result<(), procpool::RecvError>,
) -> PyResult<Bound<'py, PyAny>> {
    let n = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyValueError::new_err(format!("a message of {len} bytes is too large")))?;
    // SAFETY: a new object of `len` bytes whose buffer is ours until it is returned;
    // `fill` writes every byte before Python sees it (on an error it is dropped unseen).
    unsafe {
        let ptr = if writable {
            ffi::PyByteArray_FromStringAndSize(std::ptr::null(), n)
        } else {
            ffi::PyBytes_FromStringAndSize(std::ptr::null(), n)
        };
        let obj = Bound::from_owned_ptr_or_err(py, ptr)?;
        if len > 0 {
            let at = if writable {
                ffi::PyByteArray_AsString(obj.as_ptr())
            } else {
                ffi::PyBytes_AsString(obj.as_ptr())
            };
            if at.is_null() {
                return Err(PyErr::fetch(py));
            }
            let out = std::slice::from_raw_parts_mut(at.cast::<MaybeUninit<u8>>(), len);
            fill(out).map_err(recv_error)?;
        }
        Ok(obj)
    }
}

/// The marker of a queue message that is a pickle alone (`_PLAIN` in `queues.py`).
const PLAIN: u8 = 0;
/// The marker of a queue message with out-of-band buffers (`_FRAMED`): then the number
/// of buffers (u32 LE), the pickle's length and each buffer's (u64 LE; a buffer's top
/// bit set when it was read-only), the pickle, the buffers.
const FRAMED: u8 = 1;
/// The read-only flag of a buffer's length.
const READ_ONLY: u64 = 1 << 63;

fn malformed(what: String) -> PyErr {
    PyOSError::new_err(format!("a queue message could not be read: {what}"))
}

/// The pickle and out-of-band buffers of a queue message, each in its own object.
/// (The message starts at byte `base` of the payload.)
fn open_queue_message<'py>(
    py: Python<'py>,
    p: &procpool::Payload<'_>,
    base: usize,
) -> PyResult<(Bound<'py, PyAny>, Vec<Bound<'py, PyAny>>)> {
    let len = p.len().saturating_sub(base);
    let mut marker = [0u8; 1];
    p.read_at(base, &mut marker).map_err(recv_error)?;
    match marker[0] {
        PLAIN => {
            let pickle = fresh(py, len - 1, false, |out| p.read_into(base + 1, out))?;
            Ok((pickle, Vec::new()))
        }
        FRAMED => {
            let mut count = [0u8; 4];
            p.read_at(base + 1, &mut count).map_err(recv_error)?;
            let count = u32::from_le_bytes(count) as usize;
            let table = count
                .checked_add(1)
                .and_then(|k| k.checked_mul(8))
                .filter(|&t| t <= len.saturating_sub(5))
                .ok_or_else(|| {
                    malformed(format!("it says it has {count} buffers in {len} bytes"))
                })?;
            let mut raw = vec![0u8; table];
            p.read_at(base + 5, &mut raw).map_err(recv_error)?;
            let lens: Vec<u64> = raw
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            // The pickle's length carries no flag; a buffer's may.
            let total = lens[1..]
                .iter()
                .try_fold(5 + table as u64, |t, &l| t.checked_add(l & !READ_ONLY))
                .and_then(|t| t.checked_add(lens[0]));
            if total != Some(len as u64) {
                return Err(malformed(format!(
                    "its header's lengths do not add up to its {len} bytes"
                )));
            }
            let mut at = base + 5 + table;
            let pickle_len = lens[0] as usize;
            let pickle = fresh(py, pickle_len, false, |out| p.read_into(at, out))?;
            at += pickle_len;
            let mut bufs = Vec::with_capacity(count);
            for &l in &lens[1..] {
                let n = (l & !READ_ONLY) as usize;
                let writable = l & READ_ONLY == 0;
                bufs.push(fresh(py, n, writable, |out| p.read_into(at, out))?);
                at += n;
            }
            Ok((pickle, bufs))
        }
        m => Err(malformed(format!(
            "it starts with {m}, not a queue's marker"
        ))),
    }
}

fn send_error<T>(e: procpool::SendError<()>) -> PyResult<T> {
    match e {
        procpool::SendError::Disconnected(()) => Err(pyo3::exceptions::PyBrokenPipeError::new_err(
            "every receiving end of the queue or pipe is closed (its readers are gone)",
        )),
        procpool::SendError::Encode { reason, .. } => Err(PyValueError::new_err(format!(
            "the message cannot be sent: {reason}"
        ))),
        procpool::SendError::Io { error, .. } => Err(error.into()),
        e => Err(PyOSError::new_err(e.to_string())),
    }
}

/// Waits, with the GIL let go, until `fd` is readable (`read`) or writable, or hung up
/// (`true`), or `deadline` passes (`false`). A signal that interrupts the wait runs the
/// program's Python handlers; an exception they raise (`KeyboardInterrupt` for Ctrl-C)
/// ends the wait, otherwise it goes on.
pub(crate) fn wait_ready(
    py: Python<'_>,
    fd: i32,
    read: bool,
    deadline: Option<Instant>,
) -> PyResult<bool> {
    let events = if read { libc::POLLIN } else { libc::POLLOUT };
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                // Rounded up: a wait never ends before its deadline (a deadline already
                // passed still looks once).
                let left = d.saturating_duration_since(Instant::now());
                left.as_millis().min(i32::MAX as u128 - 1) as i32
                    + i32::from(left.subsec_micros() % 1000 != 0)
            }
        };
        let mut p = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        let r = py.detach(|| {
            // SAFETY: one valid pollfd, on the stack for the call.
            let n = unsafe { libc::poll(&mut p, 1, ms) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n)
            }
        });
        match r {
            Ok(0) if deadline.is_none_or(|d| Instant::now() >= d) => return Ok(false),
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => py.check_signals()?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The events `fd` has now among `events` (and the errors `poll` always reports), without
/// waiting; none when `poll` fails.
fn poll_now(fd: i32, events: i16) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n > 0 { p.revents } else { 0 }
}
