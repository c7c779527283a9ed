//! Channels between processes: [`channel`] and [`bounded`] make a [`Sender`] and a
//! [`Receiver`] whose ends can be passed to processes and pool tasks.
//!
//! # Design
//! A channel is an `AF_UNIX` `SOCK_SEQPACKET` socketpair, close-on-exec: the sender holds
//! one socket, the receiver the other, and every clone of an end in any process holds a
//! descriptor of the same socket. Each message is one packet, sent by one `sendmsg`, so
//! the kernel queues and delivers whole messages only:
//!
//! - a sender killed in the middle of a send has either queued its message or not;
//!   receivers never see part of one;
//! - receivers sharing the receiving socket (clones, in threads or processes) each take
//!   whole messages, none twice: a queue with several consumers;
//! - when every descriptor of the sending socket is closed (by drops or by the death of
//!   the processes holding them) the receivers read the queue to its end, then
//!   [`RecvError::Disconnected`]; when every receiving descriptor is closed, a send fails
//!   with [`SendError::Disconnected`] (`MSG_NOSIGNAL`: no `SIGPIPE`).
//!
//! A payload above the inline limit (a quarter of the capacity, at most 64 KiB) goes
//! through shared memory: it is written to a memfd, which travels with its packet by
//! `SCM_RIGHTS` and is received close-on-exec. The receiver copies the payload out
//! (never mapping a peer's file, so a peer that changes or truncates it can garble bytes,
//! which the decoder checks, but never fault the receiver) and marks the memfd consumed;
//! the sending process then writes a later message into the same memfd, so its pages
//! are allocated once rather than per message (per sender, each process keeps as many
//! such memfds of up to 2 MiB as its queue can hold large messages, plus four, and lets
//! go of idle ones beyond eight at its first large message after half a second without one; larger messages get a memfd
//! of their own). A receiver
//! keeps a descriptor of each memfd it got only if it wants to: one that writes into a
//! memfd after reading it can garble a later message of the same channel (which its
//! reader's decoder checks), nothing else; any receiver of a channel could take those
//! messages anyway. Values are encoded with postcard, as pool arguments are.
//!
//! Values that hold a descriptor (channel ends, [`Fd`](crate::Fd)) travel inside
//! messages too, their descriptors with the packet (at most 32 per message): an end can
//! be passed on from process to process.
//!
//! # Capacity
//! The queue is bounded in bytes, by the kernel: the socket's send buffer (`SO_SNDBUF`),
//! which every message in the queue is charged to until a receiver takes it. A sender
//! waits (back-pressure) while it is full. Each message costs its packet plus the
//! kernel's bookkeeping (several hundred bytes), so a queue of `capacity` bytes holds
//! fewer small messages than `capacity / size` (the default queue, 208 KiB, holds about
//! 280 `u64` messages; one of 64 KiB, 29 messages of 1 KiB); a large message costs an
//! eighth of the capacity, at most 64 KiB (its packet is padded so), which bounds how many
//! large messages and their memory wait: about eight in a queue of up to 512 KiB, one per
//! 64 KiB of a larger one. An exact count of messages would need state shared by the
//! processes that a killed one could leave wrong; the kernel's count cannot be.
//!
//! # Fuzzing
//! `fuzzing::open_message` runs the receiver's checks on arbitrary bytes.

mod end;
mod ends;
mod error;
mod frame;
mod iter;
mod pass;
mod raw;
mod sys;

use std::io;
use std::os::fd::AsFd;

use end::End;
pub use ends::{Receiver, Sender};
pub use error::{
    RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError,
};
pub use iter::{IntoIter, Iter, TryIter};
pub use raw::{BytesAndFds, Payload};

use crate::codec::Value;

/// Creates a channel whose queue holds the system's default amount of bytes
/// (`net.core.wmem_default`, 208 KiB on most systems; see [`bounded`]).
///
/// ```
/// fn produce((tx, n): (procpool::Sender<u64>, u64)) {
///     for i in 0..n {
///         tx.send(i).unwrap();
///     }
/// }
///
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     procpool::init();
///     let (tx, rx) = procpool::channel::<u64>()?;
///     let producer = procpool::spawn(produce, (tx, 1000))?; // `tx` moves to the process
///     let sum: u64 = rx.iter().sum(); // ends when the producer's sender is gone
///     producer.join()?;
///     assert_eq!(sum, 499_500);
///     Ok(())
/// }
/// ```
///
/// Iteration ends when every sender is gone: a process that keeps a sender of its own
/// (here `tx`, had it been cloned and kept) waits forever, as with [`std::sync::mpsc`].
///
/// # Errors
/// When the system refuses a socket (too many open descriptors).
pub fn channel<T: Value>() -> io::Result<(Sender<T>, Receiver<T>)> {
    let (s, r) = sys::seqpacket_pair()?;
    let capacity = sys::send_buffer(s.as_fd())?;
    Ok((
        Sender::from_end(End::new(s), capacity),
        Receiver::from_end(End::new(r)),
    ))
}

/// Creates a channel whose queue holds about `capacity` bytes of messages before senders
/// wait. The kernel's figure, which [`Sender::capacity`] reports, is clamped to its
/// limits: at least about 4.5 KiB, and at most `net.core.wmem_max` (4 MiB here) unless
/// the process has `CAP_NET_ADMIN`. See [Channels](crate#channels) for what a message
/// costs.
///
/// ```
/// # fn main() -> std::io::Result<()> {
/// let (tx, rx) = procpool::bounded::<Vec<u8>>(64 * 1024)?;
/// let mut queued = 0;
/// while tx.try_send(vec![7; 1024]).is_ok() {
///     queued += 1;
/// }
/// assert!((10..64).contains(&queued)); // a message costs more than its bytes
/// rx.recv().unwrap();
/// # Ok(()) }
/// ```
///
/// # Errors
/// When the system refuses a socket.
pub fn bounded<T: Value>(capacity: usize) -> io::Result<(Sender<T>, Receiver<T>)> {
    let (s, r) = sys::seqpacket_pair()?;
    sys::set_send_buffer(s.as_fd(), capacity)?;
    let capacity = sys::send_buffer(s.as_fd())?;
    Ok((
        Sender::from_end(End::new(s), capacity),
        Receiver::from_end(End::new(r)),
    ))
}

/// Entry points for the fuzz targets (`fuzz/`). Not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use std::os::fd::OwnedFd;

    /// Runs a receiver's checks and decoding on `packet`, as if it came with a memfd
    /// holding exactly `attached` (state word and payload), if given, then `extra` more
    /// descriptors (a channel's receiving end, a sending end and `/dev/null` in turn). It decodes a `Vec<u8>` when
    /// `as_bytes` (read from a memfd on a path of its own), else a tuple that may hold a
    /// channel end: the value (as its `Debug` text), or the error as a sentence.
    ///
    /// # Errors
    /// The receiver's refusal.
    pub fn open_message(
        packet: &[u8],
        attached: Option<&[u8]>,
        extra: u8,
        as_bytes: bool,
    ) -> Result<String, String> {
        let mut fds: Vec<OwnedFd> = Vec::new();
        if let Some(data) = attached {
            let fd = memfd_holding(data).map_err(|e| format!("no memfd to fuzz with: {e}"))?;
            fds.push(fd);
        }
        for i in 0..extra.min(40) {
            let fd = match i % 3 {
                0 => super::sys::seqpacket_pair().map(|(_, r)| r),
                1 => super::sys::seqpacket_pair().map(|(s, _)| s),
                _ => std::fs::File::open("/dev/null").map(OwnedFd::from),
            }
            .map_err(|e| format!("no descriptor to fuzz with: {e}"))?;
            fds.push(fd);
        }
        type Fuzzed = (u64, String, Vec<u8>, Option<super::Receiver<u8>>);
        let r = if as_bytes {
            super::frame::open::<Vec<u8>>(packet, false, fds, false, 1 << 20)
                .map(|v| format!("{v:?}"))
        } else {
            super::frame::open::<Fuzzed>(packet, false, fds, false, 1 << 20)
                .map(|v| format!("{v:?}"))
        };
        r.map_err(|e| match e {
            Ok(m) | Err(m) => m,
        })
    }

    fn memfd_holding(data: &[u8]) -> std::io::Result<OwnedFd> {
        let fd = super::sys::message_memfd()?;
        rustix::io::write(&fd, data)?;
        Ok(fd)
    }
}
