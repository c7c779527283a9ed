//! The bytes of one channel message, as one `SOCK_SEQPACKET` packet.
//!
//! ```text
//! inline:  [0xC1] [n: u8] [payload: the value's postcard encoding ...]   + n descriptors
//! memfd:   [0xC2] [n: u8] [len: u64 LE] [zero padding ...]   + a memfd, then n descriptors
//! the memfd: [state: u64 LE] [payload: len bytes] [...]
//! ```
//!
//! A payload up to the sender's inline limit travels in the packet. A larger one is
//! written to a memfd after a state word, and the packet carries its length. The receiver
//! copies the payload out (it never maps a peer's file, so a peer that changes or
//! truncates it cannot fault the receiver) and sets the state word to 0, which lets the
//! sender write a later message into the same memfd: its pages are allocated once, not
//! per message. The packet's padding makes it take room in the queue (see [`large_frame_len`]), so that the queue
//! bounds how many large messages wait, not only how many small ones. The `n`
//! descriptors are those of values in the message that hold one (channel ends,
//! [`Fd`](crate::Fd)), in the order of their slots; all travel by `SCM_RIGHTS`.
//!
//! Everything a packet says is checked before use, since the peer may be any process
//! holding the sending end: the tag, the header's length, the number of descriptors,
//! and the memfd (that it is one, and its size against the header). A failed check is a
//! [`RecvError::Malformed`](super::RecvError::Malformed) naming the problem; the packet
//! and its descriptors are dropped and the channel goes on.

use std::any::Any;
#[cfg(test)]
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;

use super::sys;
use crate::codec::Value;
use crate::codec::format::{self, Codec};
use crate::passfd;

/// The first byte of a packet that carries its payload.
pub(crate) const TAG_INLINE: u8 = 0xC1;
/// The first byte of a packet whose payload is in the memfd sent with it.
pub(crate) const TAG_MEMFD: u8 = 0xC2;
/// The header of an inline packet: tag and descriptor count.
pub(crate) const INLINE_HEADER: usize = 2;
/// The header of a memfd packet: tag, descriptor count and length.
pub(crate) const MEMFD_HEADER: usize = 10;
/// The most descriptors a message carries besides its memfd.
pub(crate) const MAX_PASSED: usize = 32;
/// The largest payload that ever travels inline, whatever the queue's capacity; a
/// receiver reads packets into a buffer of this size (plus the tag).
pub(crate) const INLINE_MAX: usize = 64 * 1024;
/// The largest message a channel carries (encoded), either way.
pub(crate) const MAX_MESSAGE: usize = procpool_engine::DEFAULT_MAX_MESSAGE;

/// The largest payload a sender puts inline, for a queue of `capacity` bytes: a quarter
/// of it, so that a few messages of the largest inline size fit.
pub(crate) fn inline_limit(capacity: usize) -> usize {
    (capacity / 4).clamp(64, INLINE_MAX)
}

/// The length of a memfd packet for a queue of `capacity` bytes: an eighth of it, so that
/// about eight large messages (and their memfds) wait in a full queue.
pub(crate) fn large_frame_len(capacity: usize) -> usize {
    (capacity / 8).clamp(MEMFD_HEADER, INLINE_MAX)
}

/// What a packet carries, once checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// The payload itself.
    Inline(&'a [u8]),
    /// The length of the payload in the memfd that came first with the packet.
    Memfd(usize),
}

/// Checks a packet of `packet` bytes that came with `fds` descriptors: what it carries,
/// and how many descriptors belong to values in it.
///
/// # Errors
/// What is wrong with it, as a sentence.
pub(crate) fn parse(packet: &[u8], fds: usize, limit: usize) -> Result<(Body<'_>, usize), String> {
    let Some((&tag, rest)) = packet.split_first() else {
        return Err("an empty message (no header)".into());
    };
    let Some((&n, rest)) = rest.split_first() else {
        return Err(format!(
            "a message of {} byte(s) is shorter than its header",
            packet.len()
        ));
    };
    let n = usize::from(n);
    if n > MAX_PASSED {
        return Err(format!(
            "a message says it carries {n} descriptors (a channel sends at most {MAX_PASSED})"
        ));
    }
    match tag {
        TAG_INLINE => {
            if fds != n {
                return Err(format!(
                    "an inline message came with {fds} descriptor(s), its header says {n}"
                ));
            }
            Ok((Body::Inline(rest), n))
        }
        TAG_MEMFD => {
            let Some(len) = rest.first_chunk::<8>() else {
                return Err(format!(
                    "a shared-memory message of {} bytes is shorter than its {MEMFD_HEADER}-byte header",
                    packet.len()
                ));
            };
            let len = u64::from_le_bytes(*len);
            if fds != n + 1 {
                return Err(format!(
                    "a shared-memory message came with {fds} descriptor(s), its header says a memfd and {n} more"
                ));
            }
            if len == 0 || len > MAX_MESSAGE as u64 {
                return Err(format!(
                    "a shared-memory message says it holds {len} bytes (accepted: 1 to {MAX_MESSAGE})"
                ));
            }
            if len > limit as u64 {
                return Err(format!(
                    "a message of {len} bytes is over this receiver's limit of {limit} bytes; \
                     nothing was read (raise the limit with Receiver::set_max_message)"
                ));
            }
            Ok((Body::Memfd(len as usize), n))
        }
        other => Err(format!(
            "a message starts with the unknown tag {other:#04x} (not one written by a procpool channel)"
        )),
    }
}

/// Decodes a value from the packet `packet` and the descriptors that came with it.
/// `truncated` says the packet was longer than the receive buffer, `fds_truncated` that
/// descriptors were lost for lack of room; `limit` is the receiver's largest message.
///
/// # Errors
/// `Err(Ok(m))` for a malformed packet (`m` says why), `Err(Err(m))` for a well-formed
/// one whose payload does not decode as a `T` (the codec's message).
pub(crate) fn open<T: Value>(
    packet: &[u8],
    truncated: bool,
    mut fds: Vec<OwnedFd>,
    fds_truncated: bool,
    limit: usize,
) -> Result<T, Result<String, String>> {
    if truncated {
        return Err(Ok(format!(
            "a message was longer than the largest packet a channel sends ({} bytes); it was cut and dropped",
            INLINE_MAX + INLINE_HEADER
        )));
    }
    if fds_truncated {
        return Err(Ok(
            "a message came with more descriptors than a channel sends; they were dropped".into(),
        ));
    }
    let (body, _) = parse(packet, fds.len(), limit).map_err(Ok)?;
    if let Body::Memfd(len) = body
        && let Some(v) = bytes_from_memfd::<T>(&fds[0], len)
    {
        return v.map_err(Ok);
    }
    let copied;
    let payload = match body {
        Body::Inline(payload) => payload,
        Body::Memfd(len) => {
            let memfd = fds.remove(0);
            copied = sys::read_message(&memfd, len).map_err(Ok)?;
            &copied[..]
        }
    };
    let mut slots: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    // Descriptors no value took are closed with `slots`.
    passfd::decoding(&mut slots, || format::decode::<T>(Codec::Postcard, payload)).map_err(Err)
}

/// For `T = Vec<u8>`: the bytes of a memfd payload read straight into their vector (one
/// copy instead of two); `None` for other types.
fn bytes_from_memfd<T: Value>(memfd: &OwnedFd, len: usize) -> Option<Result<T, String>> {
    let mut slot: Option<T> = None;
    let out = (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>()?;
    match sys::read_message_bytes(memfd, len) {
        Ok(v) => *out = Some(v),
        Err(e) => return Some(Err(e)),
    }
    slot.map(Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked() {
        assert!(parse(&[], 0, MAX_MESSAGE).unwrap_err().contains("empty"));
        assert!(
            parse(&[TAG_INLINE], 0, MAX_MESSAGE)
                .unwrap_err()
                .contains("shorter")
        );
        assert!(
            parse(&[7, 0, 1], 0, MAX_MESSAGE)
                .unwrap_err()
                .contains("unknown tag 0x07")
        );
        assert_eq!(
            parse(&[TAG_INLINE, 0, 1, 2], 0, MAX_MESSAGE),
            Ok((Body::Inline(&[1, 2]), 0))
        );
        assert_eq!(
            parse(&[TAG_INLINE, 2, 1], 2, MAX_MESSAGE),
            Ok((Body::Inline(&[1]), 2))
        );
        assert!(
            parse(&[TAG_INLINE, 0], 1, MAX_MESSAGE)
                .unwrap_err()
                .contains("1 descriptor")
        );
        assert!(
            parse(&[TAG_INLINE, 200], 200, MAX_MESSAGE)
                .unwrap_err()
                .contains("at most")
        );
        let mut m = vec![TAG_MEMFD, 0];
        m.extend_from_slice(&5u64.to_le_bytes());
        assert_eq!(parse(&m, 1, MAX_MESSAGE), Ok((Body::Memfd(5), 0)));
        assert!(parse(&m, 1, 4).unwrap_err().contains("limit of 4 bytes"));
        assert!(
            parse(&m, 0, MAX_MESSAGE)
                .unwrap_err()
                .contains("came with 0")
        );
        assert!(
            parse(&m[..4], 1, MAX_MESSAGE)
                .unwrap_err()
                .contains("shorter")
        );
        m[2..10].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&m, 1, MAX_MESSAGE).unwrap_err().contains("accepted"));
    }

    #[test]
    fn limits_follow_the_capacity() {
        assert_eq!(inline_limit(212_992), 53_248);
        assert_eq!(inline_limit(1 << 30), INLINE_MAX);
        assert_eq!(inline_limit(0), 64);
        assert!(large_frame_len(0) >= MEMFD_HEADER);
    }

    #[test]
    fn a_memfd_is_read_only_when_it_holds_what_the_header_says() {
        let fd = sys::message_memfd().unwrap();
        sys::write_message(fd.as_fd(), &[b"ab", b"c"]).unwrap();
        assert!(!sys::consumed(fd.as_fd()));
        assert!(
            sys::read_message(&fd, 4)
                .unwrap_err()
                .contains("holds 11 bytes")
        );
        assert_eq!(sys::read_message(&fd, 3).unwrap(), b"abc");
        assert!(sys::consumed(fd.as_fd()), "reading marks it for reuse");
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(
            sys::read_message(&OwnedFd::from(file), 1)
                .unwrap_err()
                .contains("expected a memfd with a large message, got a regular file")
        );
    }
}
