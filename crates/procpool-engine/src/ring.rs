//! The results ring: a single-producer, single-consumer byte ring in the control block,
//! through which a worker hands results to its parent without a system call.
//!
//! The worker appends each result the moment its job ends and publishes it by advancing
//! the write position; memory it wrote survives its death, so a crash in a later job
//! never loses an earlier result, and the parent reads whatever was published even from a
//! dead worker. The socket is only a doorbell: before the parent sleeps it raises a flag,
//! and a worker that publishes while the flag is up lowers it and sends one byte. A busy
//! parent is never woken; a sleeping one always is (both sides use sequentially consistent
//! operations on the flag and the position, so one of them sees the other's store).
//!
//! Layout (offsets in the control block): the positions are byte counts since the start,
//! never wrapped; an entry starts at `write % RING_LEN`, 8-aligned, with a `u32` length
//! and 4 unused bytes, then the entry's body (one encoded result). An entry that would
//! cross the end is preceded by a wrap mark (length `u32::MAX`) and starts at offset 0.
//! Results too large for the ring (over a quarter of it), or that find it full, go through
//! the socket instead; the parent empties the ring before each socket result, which keeps
//! the order.
//!
//! The parent trusts nothing it reads here: positions and lengths are checked, and each
//! body is copied out before it is parsed. The worker trusts the shared positions no more
//! than the parent does: it keeps its own record of what it published, and a position
//! moved by anyone else (a task forging an entry) stops it before it publishes again or
//! starts another job (see [`RingWriter::intact`]).

use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};

use crate::process::{CTL_RING_READ, CTL_RING_WRITE, CTL_SLEEPING, RING_LEN, RING_OFFSET};
use crate::sys::SharedRegion;
use crate::wire;

const WRAP: u32 = u32::MAX;
const HEAD: usize = 8;
/// No honest position gets near this (it would take centuries of results): a larger one
/// is a lie, refused before any arithmetic on it could overflow.
const MAX_POSITION: usize = 1 << 62;

/// Largest entry body the ring takes.
pub(crate) const MAX_ENTRY: usize = RING_LEN / 4;
/// Past this offset, an entry written while the ring is empty starts again at the
/// beginning: a parent that keeps up then touches (and keeps resident) this much of each
/// worker's ring plus one entry, not all of it. (At 512 KiB, an `imap` of 128 KiB chunks
/// kept about 0.8 MiB of each worker's ring resident in the parent.)
const EARLY_WRAP: usize = RING_LEN / 32;

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// The worker's side. It keeps its own record of the write position: only the worker
/// moves that word, and the parent's read position never passes it, so a word found
/// otherwise was written by a task (see [`intact`](Self::intact)).
#[derive(Debug)]
pub(crate) struct RingWriter {
    /// The write position as this worker last published it.
    written: u64,
}

impl RingWriter {
    /// Takes up the ring as it is now: call before any task code runs.
    pub(crate) fn new(ctl: &SharedRegion) -> Self {
        Self {
            written: ctl.word(CTL_RING_WRITE).load(Acquire),
        }
    }

    /// Checks that nobody but this writer moved the ring: the write position is the one
    /// it published last, and the parent read no further. Otherwise a task forged
    /// entries, which the parent may already have taken as results; the worker cannot
    /// undo that and must not publish after them.
    ///
    /// # Errors
    /// What was found, when the positions are not this writer's.
    pub(crate) fn intact(&self, ctl: &SharedRegion) -> Result<(), RingError> {
        let write = ctl.word(CTL_RING_WRITE).load(SeqCst);
        let read = ctl.word(CTL_RING_READ).load(Acquire);
        if write == self.written && read <= write {
            return Ok(());
        }
        Err(RingError(format!(
            "the results ring was written by someone else (a task?): write position {write}, \
             read position {read}, last published {}",
            self.written
        )))
    }

    /// Appends `body` and publishes it. Returns whether it fit, and whether the parent
    /// asked to be woken (the caller then sends a doorbell).
    ///
    /// # Errors
    /// When the ring was moved by someone else (see [`intact`](Self::intact)): nothing
    /// is published.
    pub(crate) fn push(
        &mut self,
        ctl: &SharedRegion,
        body: &[u8],
    ) -> Result<Option<bool>, RingError> {
        self.push_parts(ctl, &[body])
    }

    /// [`push`](Self::push) of the entry made of `parts` one after the other, written
    /// straight into the ring (a result goes in behind its head without first being
    /// copied next to it).
    ///
    /// # Errors
    /// As [`push`](Self::push).
    pub(crate) fn push_parts(
        &mut self,
        ctl: &SharedRegion,
        parts: &[&[u8]],
    ) -> Result<Option<bool>, RingError> {
        self.intact(ctl)?;
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        if len > MAX_ENTRY {
            return Ok(None);
        }
        let write = self.written as usize;
        let read = ctl.word(CTL_RING_READ).load(Acquire) as usize;
        if write > MAX_POSITION {
            return Ok(None);
        }
        let Some(used) = write.checked_sub(read) else {
            return Ok(None);
        };
        let at = write % RING_LEN;
        let size = HEAD + align8(len);
        let waste = if at + size > RING_LEN || (used == 0 && at >= EARLY_WRAP && size <= at) {
            RING_LEN - at
        } else {
            0
        };
        if used + waste + size > RING_LEN {
            return Ok(None);
        }
        let mut pos = write;
        if waste > 0 {
            ctl.write(RING_OFFSET + at, &WRAP.to_le_bytes());
            pos += waste;
        }
        let at = pos % RING_LEN;
        ctl.write(RING_OFFSET + at, &(len as u32).to_le_bytes());
        let mut to = RING_OFFSET + at + HEAD;
        for part in parts {
            ctl.write(to, part);
            to += part.len();
        }
        self.written = (pos + size) as u64;
        ctl.word(CTL_RING_WRITE).store(self.written, SeqCst);
        Ok(Some(ctl.word(CTL_SLEEPING).swap(0, SeqCst) != 0))
    }
}

/// A successful result at least this large is taken from the ring by itself (see
/// [`RingReader::pop_result`]); a smaller one costs less to copy twice than to allocate
/// for.
const SPLIT_MIN: usize = 4096;

/// An entry [`RingReader::pop_result`] took.
#[derive(Debug)]
pub(crate) enum Popped {
    /// Its body is in the caller's buffer.
    Whole,
    /// A successful result, its bytes apart (`Err(len)`: they could not be allocated).
    Ok {
        seq: u64,
        nanos: u64,
        bytes: Result<Vec<u8>, usize>,
    },
}

/// What went wrong reading a ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RingError(pub(crate) String);

/// The parent's side.
pub(crate) struct RingReader<'a> {
    ctl: &'a SharedRegion,
}

impl<'a> RingReader<'a> {
    pub(crate) fn new(ctl: &'a SharedRegion) -> Self {
        Self { ctl }
    }

    /// Whether something was published that is not read yet.
    pub(crate) fn has_data(&self) -> bool {
        self.ctl.word(CTL_RING_WRITE).load(SeqCst) != self.ctl.word(CTL_RING_READ).load(Acquire)
    }

    /// Raises the wake-me flag before sleeping; returns whether data came in meanwhile
    /// (then the caller should not sleep).
    pub(crate) fn arm(&self) -> bool {
        self.ctl.word(CTL_SLEEPING).store(1, SeqCst);
        self.has_data()
    }

    /// Takes the next published entry's body into `buf` (cleared first). `Ok(false)` when
    /// the ring is empty.
    pub(crate) fn pop(&self, buf: &mut Vec<u8>) -> Result<bool, RingError> {
        match self.peek(buf)? {
            Some(next) => {
                self.advance(next);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Copies the next published entry's body into `buf` (cleared first) without taking
    /// it: returns the read position past it, for [`advance`](Self::advance), or `None`
    /// when the ring is empty.
    pub(crate) fn peek(&self, buf: &mut Vec<u8>) -> Result<Option<u64>, RingError> {
        let Some((at, len, next)) = self.locate()? else {
            return Ok(None);
        };
        self.ctl.read_to_vec(at, len, buf);
        Ok(Some(next))
    }

    /// Takes the next published entry, a result as `wire::put_result` writes it: a
    /// successful result of [`SPLIT_MIN`] bytes or more comes as its bytes alone, copied
    /// once from the ring into a vector of their own (not into `buf` first, then out of
    /// it); any other entry's body is copied into `buf`.
    pub(crate) fn pop_result(&self, buf: &mut Vec<u8>) -> Result<Option<Popped>, RingError> {
        let Some((at, len, next)) = self.locate()? else {
            return Ok(None);
        };
        if len >= wire::OK_RESULT_HEAD + SPLIT_MIN {
            let mut head = [0u8; wire::OK_RESULT_HEAD];
            self.ctl.read(at, &mut head);
            if let Some((seq, nanos)) = wire::ok_result_head(&head, len) {
                let n = len - wire::OK_RESULT_HEAD;
                let bytes = match crate::bufs::take(n) {
                    Ok(mut bytes) => {
                        self.ctl
                            .read_to_vec(at + wire::OK_RESULT_HEAD, n, &mut bytes);
                        Ok(bytes)
                    }
                    Err(()) => Err(n),
                };
                self.advance(next);
                return Ok(Some(Popped::Ok { seq, nanos, bytes }));
            }
        }
        self.ctl.read_to_vec(at, len, buf);
        self.advance(next);
        Ok(Some(Popped::Whole))
    }

    /// Where the next published entry's body is in the control block, its length, and
    /// the read position past it; `None` when the ring is empty.
    fn locate(&self) -> Result<Option<(usize, usize, u64)>, RingError> {
        let write = self.ctl.word(CTL_RING_WRITE).load(Acquire) as usize;
        let mut read = self.ctl.word(CTL_RING_READ).load(Acquire) as usize;
        if write == read {
            return Ok(None);
        }
        let bad = |m: String| Err(RingError(m));
        if write > MAX_POSITION
            || write < read
            || write - read > RING_LEN
            || !read.is_multiple_of(8)
        {
            return bad(format!(
                "ring positions out of order: read {read}, write {write}"
            ));
        }
        let len = self.len_at(read);
        let len = if len == WRAP {
            read += RING_LEN - read % RING_LEN;
            if read > write {
                return bad("wrap mark past the write position".into());
            }
            self.len_at(read)
        } else {
            len
        } as usize;
        if len > MAX_ENTRY || read + HEAD + align8(len) > write {
            return bad(format!(
                "ring entry of {len} bytes runs past what was written"
            ));
        }
        let at = RING_OFFSET + read % RING_LEN + HEAD;
        Ok(Some((at, len, (read + HEAD + align8(len)) as u64)))
    }

    /// Takes the entries before `next` (a position [`peek`](Self::peek) returned).
    pub(crate) fn advance(&self, next: u64) {
        self.ctl.word(CTL_RING_READ).store(next, Release);
    }

    fn len_at(&self, pos: usize) -> u32 {
        let mut b = [0u8; 4];
        self.ctl.read(RING_OFFSET + pos % RING_LEN, &mut b);
        u32::from_le_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::CONTROL_LEN;

    #[test]
    fn a_ring_read_as_it_is_written_stays_near_its_start() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let (mut w, r) = (RingWriter::new(&ctl), RingReader::new(&ctl));
        let mut buf = Vec::new();
        for i in 0..2000u32 {
            let body = vec![i as u8; 3000 + (i as usize * 13) % 2000];
            w.push(&ctl, &body).unwrap().unwrap();
            assert!(r.pop(&mut buf).unwrap());
            assert_eq!(buf, body);
            let write = ctl.word(CTL_RING_WRITE).load(Acquire) as usize;
            assert!(
                write % RING_LEN <= EARLY_WRAP + HEAD + 5000,
                "entry {i} at {write}"
            );
        }
    }

    #[test]
    fn an_entry_in_parts_reads_back_whole_and_is_bounded_by_its_total() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let (mut w, r) = (RingWriter::new(&ctl), RingReader::new(&ctl));
        let mut buf = Vec::new();
        // Sizes that end off the 8-byte grid, across the wrap.
        for i in 0..3000usize {
            let head = vec![i as u8; 1 + i % 29];
            let body = vec![!(i as u8); (i * 977) % 9000];
            w.push_parts(&ctl, &[&head, &[], &body]).unwrap().unwrap();
            assert!(r.pop(&mut buf).unwrap());
            assert_eq!(buf, [head, body].concat(), "entry {i}");
        }
        // The bound is the parts' total, not any one part's size.
        let half = vec![1u8; MAX_ENTRY / 2 + 1];
        assert_eq!(w.push_parts(&ctl, &[&half, &half]), Ok(None));
        assert_eq!(
            w.push_parts(&ctl, &[&half[1..], &half[1..]]),
            Ok(Some(false))
        );
        assert!(r.pop(&mut buf).unwrap());
        assert_eq!(buf.len(), 2 * (MAX_ENTRY / 2));
    }

    #[test]
    fn entries_come_out_in_order_across_the_wrap() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let (mut w, r) = (RingWriter::new(&ctl), RingReader::new(&ctl));
        let mut buf = Vec::new();
        let mut next_in = 0u32;
        let mut next_out = 0u32;
        // Many rounds of entries of awkward sizes: the ring wraps several times.
        for round in 0..200 {
            while w
                .push(
                    &ctl,
                    &vec![next_in as u8; 1000 + (next_in as usize * 37) % 5000],
                )
                .unwrap()
                .is_some()
            {
                next_in += 1;
                if next_in.is_multiple_of(50) {
                    break;
                }
            }
            while r.pop(&mut buf).unwrap() {
                assert_eq!(
                    buf.len(),
                    1000 + (next_out as usize * 37) % 5000,
                    "round {round}"
                );
                assert!(buf.iter().all(|&b| b == next_out as u8));
                next_out += 1;
            }
        }
        assert_eq!(next_in, next_out);
        assert!(next_in > 1000);
    }

    #[test]
    fn a_full_ring_refuses_and_the_flag_asks_for_a_doorbell() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let (mut w, r) = (RingWriter::new(&ctl), RingReader::new(&ctl));
        assert_eq!(w.push(&ctl, &vec![0; MAX_ENTRY + 1]), Ok(None));
        assert!(!r.arm());
        assert_eq!(
            w.push(&ctl, b"x"),
            Ok(Some(true)),
            "the parent asked to be woken"
        );
        assert_eq!(w.push(&ctl, b"y"), Ok(Some(false)), "once");
        let mut n = 0;
        while w.push(&ctl, &[0; 4096]).unwrap().is_some() {
            n += 1;
        }
        assert!(n > 100);
    }

    #[test]
    fn large_successful_results_are_taken_apart_and_the_rest_whole() {
        use crate::wire::{Failure, Outcome};
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let (mut w, r) = (RingWriter::new(&ctl), RingReader::new(&ctl));
        let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut entries = Vec::new();
        for (seq, o) in [
            (1, Outcome::Ok(&big[..])),
            (2, Outcome::Ok(&b"small"[..])),
            (
                3,
                Outcome::Err(Failure::Codec {
                    message: "x".repeat(5000),
                }),
            ),
        ] {
            let mut e = Vec::new();
            wire::put_result(&mut e, seq, 7, &o);
            w.push(&ctl, &e).unwrap().unwrap();
            entries.push(e);
        }
        // A success whose length field disagrees with its entry: read whole, refused later.
        let mut lie = entries[0].clone();
        lie[17..21].copy_from_slice(&9_000u32.to_le_bytes());
        w.push(&ctl, &lie).unwrap().unwrap();
        let mut buf = Vec::new();
        match r.pop_result(&mut buf).unwrap() {
            Some(Popped::Ok {
                seq: 1,
                nanos: 7,
                bytes: Ok(b),
            }) => assert_eq!(b, big),
            other => panic!("{other:?}"),
        }
        for e in &entries[1..] {
            assert!(matches!(r.pop_result(&mut buf), Ok(Some(Popped::Whole))));
            assert_eq!(&buf, e);
        }
        assert!(matches!(r.pop_result(&mut buf), Ok(Some(Popped::Whole))));
        assert_eq!(buf, lie);
        assert!(wire::decode_result(&buf).is_err());
        assert!(r.pop_result(&mut buf).unwrap().is_none());
    }

    #[test]
    fn positions_moved_by_someone_else_stop_the_writer() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let (mut w, r) = (RingWriter::new(&ctl), RingReader::new(&ctl));
        let mut buf = Vec::new();
        w.push(&ctl, b"mine").unwrap().unwrap();
        assert!(w.intact(&ctl).is_ok());
        // A forged entry, well formed, published after the writer's own.
        let write = ctl.word(CTL_RING_WRITE).load(SeqCst);
        ctl.write(RING_OFFSET + write as usize, &2u32.to_le_bytes());
        ctl.word(CTL_RING_WRITE).store(write + 16, SeqCst);
        assert!(w.intact(&ctl).is_err());
        assert!(w.push(&ctl, b"late").is_err(), "nothing published after it");
        assert_eq!(ctl.word(CTL_RING_WRITE).load(SeqCst), write + 16);
        // The forger puts the position back after the parent read past it.
        assert!(r.pop(&mut buf).unwrap() && r.pop(&mut buf).unwrap());
        ctl.word(CTL_RING_WRITE).store(write, SeqCst);
        assert!(
            w.intact(&ctl).is_err(),
            "the parent read past what was published"
        );
        // Put back before the parent read it: nothing happened that the parent saw.
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let mut w = RingWriter::new(&ctl);
        ctl.word(CTL_RING_WRITE).store(64, SeqCst);
        ctl.word(CTL_RING_WRITE).store(0, SeqCst);
        assert_eq!(w.push(&ctl, b"x"), Ok(Some(false)));
    }

    #[test]
    fn lies_in_the_ring_are_errors() {
        let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
        let r = RingReader::new(&ctl);
        let mut buf = Vec::new();
        // A length larger than what was published.
        ctl.write(RING_OFFSET, &5000u32.to_le_bytes());
        ctl.word(CTL_RING_WRITE).store(16, SeqCst);
        assert!(r.pop(&mut buf).is_err());
        // A write position far ahead of the read position.
        ctl.word(CTL_RING_WRITE).store(u64::MAX, SeqCst);
        assert!(r.pop(&mut buf).is_err());
        // Both near the end of u64: refused, no overflow.
        ctl.word(CTL_RING_READ).store(u64::MAX - 7, SeqCst);
        ctl.word(CTL_RING_WRITE).store(u64::MAX - 3, SeqCst);
        assert!(r.pop(&mut buf).is_err());
        ctl.word(CTL_RING_READ).store(!7, SeqCst);
        ctl.word(CTL_RING_WRITE).store(u64::MAX, SeqCst);
        assert!(r.pop(&mut buf).is_err());
        assert!(
            !matches!(RingWriter::new(&ctl).push(&ctl, b"x"), Ok(Some(_))),
            "the writer refuses too"
        );
    }

    proptest::proptest! {
        /// Whatever a worker writes to its positions and ring bytes, reading it never
        /// panics, never reads past what was published, and never loops.
        #[test]
        fn any_scribble_on_the_ring_is_read_or_refused(
            read in proptest::prop_oneof![0u64..64, (u64::MAX - 64)..=u64::MAX, proptest::num::u64::ANY],
            ahead in proptest::prop_oneof![0u64..4096, proptest::num::u64::ANY],
            lens in proptest::collection::vec(proptest::num::u32::ANY, 1..8),
        ) {
            let ctl = SharedRegion::create("test", CONTROL_LEN).unwrap();
            for (k, len) in lens.iter().enumerate() {
                let at = (read as usize).wrapping_add(k * 64) % RING_LEN;
                ctl.write(RING_OFFSET + (at & !7), &len.to_le_bytes());
            }
            ctl.word(CTL_RING_READ).store(read, SeqCst);
            ctl.word(CTL_RING_WRITE).store(read.wrapping_add(ahead), SeqCst);
            let r = RingReader::new(&ctl);
            let mut buf = Vec::new();
            for _ in 0..16 {
                match r.pop(&mut buf) {
                    Ok(true) => proptest::prop_assert!(buf.len() <= MAX_ENTRY),
                    Ok(false) | Err(_) => break,
                }
            }
        }
    }
}
