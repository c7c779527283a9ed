//! The descriptor behind an end, and a sender's memfds kept for reuse.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::sys;

/// One descriptor of a channel's socket, shared by the clones of an end in this process.
#[derive(Debug)]
pub(crate) struct End {
    pub(crate) fd: OwnedFd,
    /// A sender's memfds of earlier large messages, to reuse once consumed.
    memfds: Mutex<Vec<OwnedFd>>,
    /// A receiver's largest accepted message (see `Receiver::set_max_message`).
    pub(crate) max_message: AtomicUsize,
}

impl End {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            fd,
            memfds: Mutex::new(Vec::new()),
            max_message: AtomicUsize::new(super::frame::MAX_MESSAGE),
        }
    }

    /// A memfd holding `payload`: one of ours that a receiver has consumed, or a new one
    /// (kept for reuse when the payload is at most [`REUSED_MAX`]).
    pub(crate) fn memfd_with(&self, parts: &[&[u8]]) -> io::Result<OwnedFd> {
        let reusable = parts.iter().map(|p| p.len()).sum::<usize>() <= REUSED_MAX;
        if reusable {
            let claimed = {
                let pool = self.memfds.lock().unwrap_or_else(|p| p.into_inner());
                // Claimed under the lock: another thread of ours will not pick it.
                pool.iter()
                    .find(|fd| sys::consumed(fd.as_fd()))
                    .map(|fd| (sys::claim(fd.as_fd()), fd.try_clone()))
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
            let mut pool = self.memfds.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() == POOLED {
                // The oldest is still unread (or its reader died): let it go.
                pool.remove(0);
            }
            pool.push(fd.try_clone()?);
        }
        Ok(fd)
    }
}

/// How many memfds a sender keeps for reuse, per process: more than a full queue holds
/// (about eight large messages), plus one being read and one being written, so that a
/// steady stream always finds one consumed.
const POOLED: usize = 12;
/// The largest payload whose memfd is kept for reuse: a sender keeps at most
/// `POOLED * REUSED_MAX` (24 MiB) of them.
const REUSED_MAX: usize = 2 << 20;
