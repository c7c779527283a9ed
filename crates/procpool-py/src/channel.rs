//! `procpool._core.Channel`: the Rust front's channel (`procpool::channel`) for Python's
//! `Queue`, `SimpleQueue`, `JoinableQueue` and `Pipe` (see `procpool/queues.py`).
//!
//! A message is one packet of the channel's own format: a pickle, as bytes, and the
//! descriptors of the values pickled inside it (channel ends, for a queue sent through a
//! queue). The channel guarantees the rest: a sender killed mid-send never leaves part of
//! a message, readers sharing the receiving end each take whole messages, none twice,
//! large messages travel in a memfd.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use procpool::{Receiver, Sender};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

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
        let tx = self.tx.as_ref().ok_or_else(closed)?;
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
        // The common case, a queue with room, without letting the GIL go.
        match tx.send_parts(&slices, &borrowed, Some(Duration::ZERO)) {
            Ok(true) => return Ok(true),
            Ok(false) if timeout == Some(Duration::ZERO) => return Ok(false),
            Ok(false) => {}
            Err(e) => return send_error(e),
        }
        let r = py.detach(|| tx.send_parts(&slices, &borrowed, timeout));
        match r {
            Ok(sent) => Ok(sent),
            Err(e) => send_error(e),
        }
    }

    /// Receives one message: `(bytes, [descriptor, ...])` (a `bytearray` when
    /// `writable`; the descriptors are the
    /// caller's to close), or `None` when none came within `timeout` (`None`: wait as
    /// long as needed, `0`: not at all). `EOFError` once the queue is empty and every
    /// sending end is closed.
    #[pyo3(signature = (timeout=None, writable=false))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        writable: bool,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Vec<i32>)>> {
        let rx = self.rx.as_ref().ok_or_else(closed)?;
        let timeout = crate::args::duration(timeout, "timeout")?;
        // A message already waiting is taken without letting the GIL go.
        let r = match rx.recv_with_fds(Some(Duration::ZERO)) {
            Ok(None) if timeout != Some(Duration::ZERO) => py.detach(|| rx.recv_with_fds(timeout)),
            other => other,
        };
        match r {
            Ok(Some((bytes, fds))) => {
                let fds = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
                let data = if writable {
                    PyByteArray::new(py, &bytes).into_any()
                } else {
                    PyBytes::new(py, &bytes).into_any()
                };
                Ok(Some((data, fds)))
            }
            Ok(None) => Ok(None),
            Err(procpool::RecvError::Disconnected) => Err(pyo3::exceptions::PyEOFError::new_err(
                "every sending end of the queue or pipe is closed and it is empty",
            )),
            Err(procpool::RecvError::Io(e)) => Err(e.into()),
            Err(e) => Err(PyOSError::new_err(format!(
                "a message could not be read: {e}"
            ))),
        }
    }

    /// Waits until a message can be read (or every sender is gone): `True`, or `False`
    /// when `timeout` passed first.
    #[pyo3(signature = (timeout=None))]
    fn poll(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let rx = self.rx.as_ref().ok_or_else(closed)?;
        let timeout = crate::args::duration(timeout, "timeout")?;
        let fd = rx.as_fd().as_raw_fd();
        py.detach(|| poll_in(fd, timeout)).map_err(Into::into)
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

/// Waits until `fd` is readable or hung up; `false` when `timeout` passed.
fn poll_in(fd: i32, timeout: Option<Duration>) -> std::io::Result<bool> {
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                left.as_millis().min(i32::MAX as u128) as i32
                    + i32::from(left.subsec_micros() % 1000 != 0)
            }
        };
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n > 0 {
            return Ok(true);
        }
        if n == 0 {
            if deadline.is_none_or(|d| std::time::Instant::now() >= d) {
                return Ok(false);
            }
            continue;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
