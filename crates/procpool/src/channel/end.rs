//! The descriptor behind an end, and a sender's memfds kept for reuse.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use super::sys;

/// One descriptor of a channel's socket, shared by the clones of an end in this process.
#[derive(Debug)]
pub(crate) struct End {
    pub(crate) fd: OwnedFd,
    /// A sender's memfds of earlier large messages, to reuse once consumed.
    memfds: Mutex<Memfds>,
    /// A receiver's largest accepted message (see `Receiver::set_max_message`).
    pub(crate) max_message: AtomicUsize,
}

impl End {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            memfds: Mutex::new(Memfds {
                pool: Vec::new(),
                last: None,
            }),
            max_message: AtomicUsize::new(super::frame::MAX_MESSAGE),
        }
    }

    /// A memfd holding `parts`, one after the other: one of ours that a receiver has
    /// consumed, or a new one (kept for reuse when the payload is at most
    /// [`REUSED_MAX`]). `capacity` is the queue's, which bounds how many large messages
    /// can be in flight at once (see [`pooled`]).
    pub(crate) fn memfd_with(&self, parts: &[&[u8]], capacity: usize) -> io::Result<OwnedFd> {
        let reusable = parts.iter().map(|p| p.len()).sum::<usize>() <= REUSED_MAX;
        if reusable {
            let claimed = {
                let mut memfds = self.memfds.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let paused = memfds.last.is_some_and(|t| now - t >= PAUSE);
                memfds.last = Some(now);
                let pool = &mut memfds.pool;
                // Claimed under the lock: another thread of ours will not pick it.
                let found = pool.iter().position(|fd| sys::consumed(fd.as_fd()));
                let claimed = found.map(|i| {
                    let fd = &pool[i];
                    (sys::claim(fd.as_fd()), fd.try_clone())
                });
                if let Some(i) = found
                    && paused
                {
                    trim_idle(pool, i + 1);
                }
                claimed
            };
            if let Some((claim, fd)) = claimed {
                claim?;
                let fd = fd?;
                sys::write_message(fd.as_fd(), parts)?;
                return Ok(fd);
            }
        }
        let fd = sys::message_memfd()?;
        sys::write_message(fd.as_fd(), parts)?;
        if reusable {
            let mut memfds = self.memfds.lock().unwrap_or_else(|p| p.into_inner());
            memfds.last = Some(Instant::now());
            let pool = &mut memfds.pool;
            if pool.len() >= pooled(capacity) {
                // The oldest is still unread (or its reader died): let it go.
                pool.remove(0);
            }
            pool.push(fd.try_clone()?);
        }
        Ok(fd)
    }
}

/// A sender's memfds kept for reuse, and when it last took one.
#[derive(Debug)]
struct Memfds {
    pool: Vec<OwnedFd>,
    last: Option<Instant>,
}

/// Lets go of consumed memfds after position `from` beyond [`IDLE_KEPT`] of them: after a
/// burst that filled the queue and a pause, the pool does not keep every memfd of it.
fn trim_idle(pool: &mut Vec<OwnedFd>, from: usize) {
    let mut idle = 0;
    let mut i = from;
    while i < pool.len() {
        if sys::consumed(pool[i].as_fd()) {
            idle += 1;
            if idle > IDLE_KEPT {
                pool.remove(i);
                continue;
            }
        }
        i += 1;
    }
}

/// How many memfds a sender keeps for reuse, per process, for a queue of `capacity`
/// bytes: more than a full queue holds (each large message's packet takes
/// [`large_frame_len`](super::frame::large_frame_len) of it), plus a few being read and
/// written, so that a steady stream of large messages always finds one consumed instead
/// of allocating (and later freeing) a fresh memfd's pages for each message.
fn pooled(capacity: usize) -> usize {
    capacity / super::frame::large_frame_len(capacity) + 4
}

/// How many consumed memfds a sender keeps beyond the one it picks: the others are let
/// go at its first large message after a [`PAUSE`].
const IDLE_KEPT: usize = 8;
/// How long a sender goes without a large message before its idle memfds beyond
/// [`IDLE_KEPT`] are let go. Within a stream, a reader that catches up for a moment
/// (all memfds consumed) must not make the sender drop them and allocate them again.
const PAUSE: Duration = Duration::from_millis(500);
/// The largest payload whose memfd is kept for reuse.
const REUSED_MAX: usize = 2 << 20;
