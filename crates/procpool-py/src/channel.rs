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

use procpool::{Fd, Receiver, Sender};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A pickle's bytes, encoded as one byte string (not a sequence of bytes).
struct Bytes(Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// One message: a pickle and the descriptors its values refer to (by position).
#[derive(Serialize, Deserialize)]
struct Msg {
    data: Bytes,
    fds: Vec<Fd>,
}

/// Both ends of a channel, or one of them.
#[pyclass(module = "procpool._core")]
pub(crate) struct Channel {
    tx: Option<Sender<Msg>>,
    rx: Option<Receiver<Msg>>,
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
            None => procpool::channel::<Msg>()?,
            Some(c) => procpool::bounded::<Msg>(c)?,
        };
        Ok(Channel {
            tx: Some(tx),
            rx: Some(rx),
        })
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

    /// Sends `data` with `fds` (duplicated) as one message. `timeout`: `None` waits for
    /// room as long as needed, `0` not at all. `False` when the queue stayed full;
    /// `BrokenPipeError` when no receiving end is left.
    #[pyo3(signature = (data, fds, timeout=None))]
    fn send(
        &self,
        py: Python<'_>,
        data: &[u8],
        fds: Vec<i32>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        let fds = fds
            .into_iter()
            .map(|f| borrowed(f).map(Fd::from))
            .collect::<PyResult<Vec<Fd>>>()?;
        let msg = Msg {
            data: Bytes(data.to_vec()),
            fds,
        };
        let timeout = crate::args::duration(timeout, "timeout")?;
        let r = py.detach(|| match timeout {
            None => tx.send(msg).map_err(Some),
            Some(t) if t.is_zero() => match tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(procpool::TrySendError::Full(_)) => Err(None),
                Err(procpool::TrySendError::Failed(e)) => Err(Some(e)),
            },
            Some(t) => match tx.send_timeout(msg, t) {
                Ok(()) => Ok(()),
                Err(procpool::SendTimeoutError::Timeout(_)) => Err(None),
                Err(procpool::SendTimeoutError::Failed(e)) => Err(Some(e)),
            },
        });
        match r {
            Ok(()) => Ok(true),
            Err(None) => Ok(false),
            Err(Some(procpool::SendError::Disconnected(_))) => {
                Err(pyo3::exceptions::PyBrokenPipeError::new_err(
                    "every receiving end of the queue or pipe is closed (its readers are gone)",
                ))
            }
            Err(Some(procpool::SendError::Encode { reason, .. })) => Err(PyValueError::new_err(
                format!("the message cannot be sent: {reason}"),
            )),
            Err(Some(procpool::SendError::Io { error, .. })) => Err(error.into()),
            Err(Some(e)) => Err(PyOSError::new_err(e.to_string())),
        }
    }

    /// Receives one message: `(bytes, [descriptor, ...])` (the descriptors are the
    /// caller's to close), or `None` when none came within `timeout` (`None`: wait as
    /// long as needed, `0`: not at all). `EOFError` once the queue is empty and every
    /// sending end is closed.
    #[pyo3(signature = (timeout=None))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, Vec<i32>)>> {
        let rx = self.rx.as_ref().ok_or_else(closed)?;
        let timeout = crate::args::duration(timeout, "timeout")?;
        let r = py.detach(|| match timeout {
            None => rx.recv().map(Some),
            Some(t) if t.is_zero() => match rx.try_recv() {
                Ok(m) => Ok(Some(m)),
                Err(procpool::TryRecvError::Empty) => Ok(None),
                Err(procpool::TryRecvError::Failed(e)) => Err(e),
            },
            Some(t) => match rx.recv_timeout(t) {
                Ok(m) => Ok(Some(m)),
                Err(procpool::RecvTimeoutError::Timeout) => Ok(None),
                Err(procpool::RecvTimeoutError::Failed(e)) => Err(e),
            },
        });
        match r {
            Ok(Some(m)) => {
                let fds = m
                    .fds
                    .into_iter()
                    .map(|f| OwnedFd::from(f).into_raw_fd())
                    .collect();
                Ok(Some((PyBytes::new(py, &m.data.0), fds)))
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
