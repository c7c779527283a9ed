//! Byte messages with descriptors, for fronts that encode their values themselves (the
//! Python front's queues and pipes pickle them).
//!
//! On the wire such a message is exactly what a `Sender<Vec<u8>>` sends (the bytes'
//! encoding: a varint length, then the bytes; in the packet, or in a memfd when large),
//! with descriptors attached that the front's own encoding refers to. A
//! `Receiver<Vec<u8>>` reading one gets the bytes (and the descriptors are closed).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use super::ends::{IN, Outcome, Receiver, Sender, Wait};
use super::error::{RecvError, SendError};
use super::frame::{self, Body, INLINE_HEADER, INLINE_MAX, MAX_MESSAGE, MAX_PASSED, TAG_INLINE};
use super::sys::{self, Received};

/// A message's bytes and the descriptors that came with it.
pub type BytesAndFds = (Vec<u8>, Vec<OwnedFd>);

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
        let memfd = self.end.memfd_with(&all).map_err(Outcome::Io)?;
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

    fn recv_raw_into(
        &self,
        buf: &mut Vec<u8>,
        wait: Wait,
    ) -> Result<Option<BytesAndFds>, RecvError> {
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
                    return open_raw(&buf[..len], truncated, fds, fds_truncated, limit).map(Some);
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

/// The bytes and descriptors of a packet, checked as [`frame::open`] checks them.
fn open_raw(
    packet: &[u8],
    truncated: bool,
    mut fds: Vec<OwnedFd>,
    fds_truncated: bool,
    limit: usize,
) -> Result<BytesAndFds, RecvError> {
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
            Ok((rest.to_vec(), fds))
        }
        Body::Memfd(len) => {
            let memfd = fds.remove(0);
            let bytes = sys::read_message_bytes(&memfd, len).map_err(RecvError::Malformed)?;
            Ok((bytes, fds))
        }
    }
}
