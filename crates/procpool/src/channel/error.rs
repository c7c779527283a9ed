//! The errors of channel operations: one type per family of calls (`send`, `try_send`,
//! `send_timeout`; `recv`, `try_recv`, `recv_timeout`), the undelivered value handed back
//! inside a send error.

use std::fmt;
use std::io;

/// Why [`Sender::send`](super::Sender::send) did not deliver a value; the value is inside.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let (tx, rx) = procpool::channel::<String>()?;
/// drop(rx);
/// match tx.send("lost".to_string()) {
///     Err(procpool::SendError::Disconnected(v)) => assert_eq!(v, "lost"),
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[non_exhaustive]
pub enum SendError<T> {
    /// Every receiving end is gone (dropped, or its process ended): nobody will read.
    Disconnected(T),
    /// The value could not be encoded, or its encoding is larger than a message may be
    /// (1 GiB); `reason` says which.
    Encode {
        /// The value.
        value: T,
        /// What went wrong.
        reason: String,
    },
    /// The system refused: out of memory for a large message's memfd, or too many open
    /// descriptors.
    Io {
        /// The value.
        value: T,
        /// The system's error.
        error: io::Error,
    },
}

impl<T> SendError<T> {
    /// The value that was not sent.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let (tx, rx) = procpool::channel::<Vec<u8>>()?;
    /// drop(rx);
    /// let back: Vec<u8> = tx.send(vec![1, 2]).unwrap_err().into_inner();
    /// assert_eq!(back, [1, 2]);
    /// # Ok(()) }
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            SendError::Disconnected(v)
            | SendError::Encode { value: v, .. }
            | SendError::Io { value: v, .. } => v,
        }
    }

    /// Whether the error is [`SendError::Disconnected`].
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let (tx, rx) = procpool::channel::<u8>()?;
    /// drop(rx);
    /// assert!(tx.send(1).unwrap_err().is_disconnected());
    /// # Ok(()) }
    /// ```
    pub fn is_disconnected(&self) -> bool {
        matches!(self, SendError::Disconnected(_))
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected(_) => f.write_str(
                "sending on a channel whose receiving ends are all gone (dropped, or their processes ended)",
            ),
            SendError::Encode { reason, .. } => {
                write!(f, "a message could not be encoded for a channel: {reason}")
            }
            SendError::Io { error, .. } => write!(f, "a channel could not send a message: {error}"),
        }
    }
}

impl<T> std::error::Error for SendError<T> {}

/// Why [`Sender::try_send`](super::Sender::try_send) did not deliver a value; the value is
/// inside.
///
/// ```
/// use procpool::TrySendError;
///
/// # fn main() -> Result<(), procpool::Error> {
/// let (tx, _rx) = procpool::bounded::<Vec<u8>>(4096)?;
/// let mut sent = 0;
/// loop {
///     match tx.try_send(vec![0; 512]) {
///         Ok(()) => sent += 1,
///         Err(TrySendError::Full(v)) => break assert_eq!(v.len(), 512), // handed back
///         Err(e) => return Err(e.into()),
///     }
/// }
/// assert!(sent >= 1);
/// # Ok(()) }
/// ```
pub enum TrySendError<T> {
    /// The queue is full now: the receivers have not caught up.
    Full(T),
    /// It failed as [`send`](super::Sender::send) would have.
    Failed(SendError<T>),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let (tx, _rx) = procpool::bounded::<String>(4096)?;
    /// while tx.try_send("x".repeat(400)).is_ok() {}
    /// let back = tx.try_send("kept".into()).unwrap_err().into_inner();
    /// assert_eq!(back, "kept");
    /// # Ok(()) }
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) => v,
            TrySendError::Failed(e) => e.into_inner(),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("the channel is full"),
            TrySendError::Failed(e) => e.fmt(f),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// Why [`Sender::send_timeout`](super::Sender::send_timeout) did not deliver a value; the
/// value is inside.
///
/// ```
/// use std::time::Duration;
/// use procpool::SendTimeoutError;
///
/// # fn main() -> Result<(), procpool::Error> {
/// let (tx, _rx) = procpool::bounded::<Vec<u8>>(4096)?;
/// while tx.try_send(vec![0; 512]).is_ok() {}
/// match tx.send_timeout(vec![1; 512], Duration::from_millis(10)) {
///     Err(SendTimeoutError::Timeout(v)) => assert_eq!(v[0], 1), // still full: handed back
///     other => panic!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
pub enum SendTimeoutError<T> {
    /// The queue stayed full for the whole time.
    Timeout(T),
    /// It failed as [`send`](super::Sender::send) would have.
    Failed(SendError<T>),
}

impl<T> SendTimeoutError<T> {
    /// The value that was not sent.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// let (tx, rx) = procpool::channel::<u32>()?;
    /// drop(rx);
    /// let e = tx.send_timeout(7, Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.into_inner(), 7);
    /// # Ok(()) }
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(v) => v,
            SendTimeoutError::Failed(e) => e.into_inner(),
        }
    }
}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => {
                f.write_str("timed out waiting for room in the channel")
            }
            SendTimeoutError::Failed(e) => e.fmt(f),
        }
    }
}

impl<T> std::error::Error for SendTimeoutError<T> {}

/// Why [`Receiver::recv`](super::Receiver::recv) returned no value.
///
/// Only [`Disconnected`](RecvError::Disconnected) is final; after the others the channel
/// goes on, and the next call reads the next message.
///
/// ```
/// use procpool::RecvError;
///
/// # fn main() -> Result<(), procpool::Error> {
/// let (tx, rx) = procpool::channel::<u32>()?;
/// tx.send(1)?;
/// drop(tx);
/// assert_eq!(rx.recv()?, 1); // what was queued is still read
/// assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
/// # Ok(()) }
/// ```
#[non_exhaustive]
pub enum RecvError {
    /// The queue is empty and every sending end is gone (dropped, or its process ended).
    Disconnected,
    /// A message broke the channel's format (a peer that is not a procpool channel, or a
    /// forged message): what was wrong. The message was dropped.
    Malformed(String),
    /// A well-formed message did not decode as the receiver's type (the codec's message):
    /// the two ends disagree on the type. The message was dropped.
    Decode(String),
    /// The system refused (too many open descriptors, out of address space for a large
    /// message).
    Io(io::Error),
}

impl fmt::Display for RecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvError::Disconnected => f.write_str(
                "receiving on an empty channel whose sending ends are all gone (dropped, or their processes ended)",
            ),
            RecvError::Malformed(m) => write!(f, "a malformed channel message was dropped: {m}"),
            RecvError::Decode(m) => write!(
                f,
                "a channel message did not decode as the receiver's type (do both ends have the same type?): {m}"
            ),
            RecvError::Io(e) => write!(f, "a channel could not receive a message: {e}"),
        }
    }
}

impl std::error::Error for RecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecvError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Receiver::try_recv`](super::Receiver::try_recv) returned no value.
///
/// ```
/// use procpool::TryRecvError;
///
/// # fn main() -> Result<(), procpool::Error> {
/// let (tx, rx) = procpool::channel::<u32>()?;
/// assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
/// tx.send(5)?;
/// assert_eq!(rx.try_recv()?, 5);
/// # Ok(()) }
/// ```
pub enum TryRecvError {
    /// No message is waiting now (but senders remain).
    Empty,
    /// It failed as [`recv`](super::Receiver::recv) would have.
    Failed(RecvError),
}

impl fmt::Display for TryRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryRecvError::Empty => f.write_str("the channel is empty"),
            TryRecvError::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TryRecvError {}

/// Why [`Receiver::recv_timeout`](super::Receiver::recv_timeout) returned no value.
///
/// ```
/// use std::time::Duration;
/// use procpool::RecvTimeoutError;
///
/// # fn main() -> Result<(), procpool::Error> {
/// let (_tx, rx) = procpool::channel::<u32>()?;
/// let r = rx.recv_timeout(Duration::from_millis(10));
/// assert!(matches!(r, Err(RecvTimeoutError::Timeout)));
/// # Ok(()) }
/// ```
pub enum RecvTimeoutError {
    /// No message came in time (but senders remain).
    Timeout,
    /// It failed as [`recv`](super::Receiver::recv) would have.
    Failed(RecvError),
}

impl fmt::Display for RecvTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecvTimeoutError::Timeout => f.write_str("timed out waiting on a channel"),
            RecvTimeoutError::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RecvTimeoutError {}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

crate::error::debug_as_display!(RecvError, TryRecvError, RecvTimeoutError);
