//! `procpool._core.Ring`: the shared-memory path of a `Queue`'s small messages.
//!
//! A queue (`procpool/queues.py`) is a channel (a `SOCK_SEQPACKET` socket, see
//! `channel.rs`) plus this ring: a sealed memfd mapped by every process that holds the
//! queue, holding a FIFO of fixed slots. A small message (a pickle of at most
//! [`PAYLOAD`] bytes, no descriptor) is copied into a slot: no system call, no wake-up
//! unless a reader sleeps. Any other message goes through the socket as before, and a
//! *token* slot takes its place in the ring, so that the ring's order is the queue's
//! order: a reader that takes a token takes the socket's next message.
//!
//! # Guarantees, and how
//! - **Whole messages only.** A sender writes its slot, then publishes it by advancing
//!   `tail` (one atomic store). A sender killed before that store leaves nothing a
//!   reader can see; the next sender writes the same slot again.
//! - **No message taken twice, none split.** A reader copies the slot at `head`, then
//!   advances `head` by compare-and-swap: of the readers that copied it, exactly one
//!   wins; the others drop their copy and look again. A sender reuses a slot only once
//!   `head` has passed it, so a winner's copy is always the message whole. A reader killed
//!   at any point leaves `head` either before the slot (another reader takes it) or
//!   after it (a small message was its own, as a message a reader took from a socket;
//!   a token's message is not lost, see below).
//! - **Senders take turns** through a lock in the ring whose word names the holder by
//!   its process id and start time (`sync.rs`'s token). A sender that finds it held by a
//!   process that no longer runs takes it over: a sender killed anywhere never blocks
//!   the queue. Threads of one process take an in-process turn first (a word naming
//!   the thread by pid and tid: a forked child takes over a turn its parent's thread held).
//! - **Order with the socket.** The lock holder sends a socket message tagged with the
//!   ring position its token will take (a marker byte and that position in front of the
//!   queue's own bytes; see `Channel::recv_tagged_now`), then publishes the token. Readers
//!   read the socket in the tokens' order: a reader takes the **reader lock** (robust as
//!   the sender lock: pid and start time, taken over from a dead holder) before it takes a
//!   token, marks the token *owed* in the ring, and lets the lock go only once the token
//!   is served. Serving the token at `p` reads the socket's first message: tagged `p`,
//!   it is the token's; tagged lower, an orphan (its reader died before marking its token
//!   owed, or it was sent without a tag): returned, late but whole, and `p` stays owed,
//!   served by the next `get` before anything else; tagged higher, or no message at all:
//!   the token's message never came (its sender died before sending), the token is spent
//!   (a message tagged higher is returned, and its own token marked served *ahead*). A
//!   reader killed holding a token leaves it owed and the lock held: the next reader takes
//!   the lock over and serves it, in its place. A sender killed between `inflight` and
//!   its token leaves `inflight` set: the next lock holder publishes the token for it,
//!   then sends a *void* marker tagged with its position; the token's reader takes the
//!   message if it came before the marker, else finds the marker (or nothing) and spends
//!   the token; a later reader drops a stale marker. A reader that finds the ring empty
//!   and the socket not takes the reader lock and reads the message at once: an orphan,
//!   or the message of a send in flight (then in order: the ring is empty and its sender
//!   publishes nothing before its token; the token is marked served ahead). A `get`
//!   with `timeout=0` does so too. Small messages are taken without the reader lock.
//!   Limits: one token can be marked served ahead at a time (two would need a dead
//!   sender's message, an empty ring and a void marker that the full socket refused at
//!   once); a void marker not sent (the socket stayed full past the `put`'s timeout) lets
//!   the next socket message come one token early.
//! - **Back-pressure.** The ring holds [`SLOTS`] messages; a sender waits for room
//!   (so does one whose message goes through the socket: its token needs a slot), as
//!   long as `timeout` says; told `BrokenPipeError` when no process can read any more.
//! - **Waits.** A reader that finds the ring empty spins for up to [`SPIN`] (the sender is
//!   likely writing the next message: waking a sleeping process costs far more), then
//!   sleeps on a futex in the ring that senders bump when they see sleepers (the spin
//!   halves each time it finds nothing, down to [`MIN_SPIN`], and doubles back when it
//!   does: a slow stream costs no spinning). A process killed asleep leaves the count of
//!   sleepers too high; it is cleared after [`IDLE_WAKES`] wake-ups that found nobody.
//!   Every sleep is cut in slices, with the GIL let go: Ctrl-C interrupts it (the futex
//!   call returns on a signal and the program's handlers run), and a deadline is kept.
//!   A `put` with a timeout gives up on the sender lock too (after at least 1 ms), for a
//!   holder may wait for room in the socket.
//!
//! The mapping is never at risk from peers: the memfd is sealed against shrinking and
//! growing before it is shared, and checked so when received. A peer that scribbles
//! in it can garble messages (each slot's length is checked) but not fault a reader; a
//! ring that says it holds more messages than slots makes `put` and `get` raise `OSError`.
//!
//! Layout (offsets in bytes):
//!
//! ```text
//! 0     magic     u64
//! 64    tail      u64   messages published, ever
//! 128   head      u64   messages taken, ever
//! 192   owner     u64   sender lock: holder's token, 0 when free
//! 200   inflight  u32   1 while the holder sends on the socket before its token
//! 256   rseq      u32   futex word readers sleep on
//! 260   rsleep    u32   readers asleep
//! 320   wseq      u32   futex word senders waiting for room sleep on
//! 324   wsleep    u32   senders asleep
//! 384   rlock     u64   reader lock: holder's token, 0 when free
//! 392   owed      u64   1 + position of a token taken and not served yet, 0 when none
//! 400   ahead     u64   1 + position of a token whose message was read before it, or 0
//! 4096  slots     SLOTS × SLOT bytes: kind u32, len u32, payload
//! ```

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::sync::atomic::{Ordering::SeqCst, fence};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyBrokenPipeError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::channel::{Channel, QueueMessage, TAGGED, Tagged, VOID};
use crate::sync::{alive, futex_wait, token};

/// Messages the ring holds.
pub(crate) const SLOTS: u64 = 4096;
/// Bytes a slot takes.
const SLOT: usize = 256;
/// Bytes of a slot's header (kind, length).
const SLOT_HEAD: usize = 8;
/// Largest message a slot holds.
pub(crate) const PAYLOAD: usize = SLOT - SLOT_HEAD;
const SLOTS_AT: usize = 4096;
const SIZE: usize = SLOTS_AT + SLOTS as usize * SLOT;
const MAGIC: u64 = 0x7070_7269_6e67_0001;

const TAIL: usize = 64;
const HEAD: usize = 128;
const OWNER: usize = 192;
const INFLIGHT: usize = 200;
const RSEQ: usize = 256;
const RSLEEP: usize = 260;
const WSEQ: usize = 320;
const WSLEEP: usize = 324;
const RLOCK: usize = 384;
const OWED: usize = 392;
const AHEAD: usize = 400;

const KIND_DATA: u32 = 1;
const KIND_TOKEN: u32 = 2;

/// How long a reader that finds the ring empty (or a sender that finds it full) keeps
/// looking before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// The shortest spin of a reader whose spins found nothing.
const MIN_SPIN: Duration = Duration::from_micros(2);
/// Longest sleep between looks at Ctrl-C and a deadline.
const SLICE: Duration = Duration::from_millis(20);
/// The sleep of a reader with no deadline (a signal ends it early; a socket message left
/// without a token is looked for after it).
const READER_SLICE: Duration = Duration::from_millis(100);
/// Wake-ups in a row that found no sleeper before a ring clears its count of sleepers.
const IDLE_WAKES: u32 = 64;
/// A held lock (sender or reader) is looked at for a dead holder after this much waiting.
const CHECK_HOLDER_AFTER: Duration = Duration::from_millis(2);

/// `pickle.dumps`, looked up once.
static DUMPS: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

/// The ring of a queue.
#[pyclass(module = "procpool._core", frozen)]
#[derive(Debug)]
pub(crate) struct Ring {
    fd: OwnedFd,
    base: usize,
    /// Threads of this process take turns before taking the shared lock: 0, or the
    /// holding thread's `pid << 32 | tid` (a forked child, whose pid differs, takes
    /// over a turn its parent's thread held at the fork).
    local: AtomicU64,
    /// Wake-ups in a row that found no sleeper (see [`Ring::wake`]).
    idle_wakes: AtomicU32,
    /// How long this process's readers spin before sleeping, in ns (adapts; see `get`).
    spin_ns: AtomicU64,
    /// The reader lock's turn of this process's threads, as `local` for the sender lock.
    rlocal: AtomicU64,
}

// SAFETY: the mapping lives as long as the value; shared words are used atomically and
// slots through volatile copies only.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `map`, used by nothing else.
        unsafe { libc::munmap(self.base as *mut libc::c_void, SIZE) };
    }
}

fn map(fd: OwnedFd) -> PyResult<Ring> {
    // SAFETY: maps `SIZE` bytes of a memfd sealed at that size (checked by the callers),
    // shared and read-write; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(Ring {
        fd,
        base: p as usize,
        local: AtomicU64::new(0),
        idle_wakes: AtomicU32::new(0),
        spin_ns: AtomicU64::new(SPIN.as_nanos() as u64),
        rlocal: AtomicU64::new(0),
    })
}

/// What a reader took from the ring (a message's bytes on the stack: no allocation).
#[allow(clippy::large_enum_variant)]
enum Took {
    Data(usize, [u8; PAYLOAD]),
    /// A token at this ring position, taken with the reader lock held (and marked owed).
    Token(u64),
    /// A token is at the head: take the reader lock first.
    NeedLock,
    Empty,
}

impl Ring {
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is an 8-aligned offset inside the live mapping.
        unsafe { &*((self.base + off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: `off` is a 4-aligned offset inside the live mapping.
        unsafe { &*((self.base + off) as *const AtomicU32) }
    }

    fn slot(&self, pos: u64) -> *mut u8 {
        (self.base + SLOTS_AT + (pos % SLOTS) as usize * SLOT) as *mut u8
    }

    fn len(&self) -> u64 {
        let t = self.u64_at(TAIL).load(SeqCst);
        let h = self.u64_at(HEAD).load(SeqCst);
        t.wrapping_sub(h)
    }

    /// Takes the message at the head, if any; a token only when `locked` (the reader
    /// lock held: the token is then marked owed, see [`Ring::serve`]).
    fn take(&self, locked: bool) -> PyResult<Took> {
        let head = self.u64_at(HEAD);
        let tail = self.u64_at(TAIL);
        loop {
            let h = head.load(Acquire);
            let t = tail.load(Acquire);
            let n = t.wrapping_sub(h);
            if n == 0 {
                return Ok(Took::Empty);
            }
            if n > SLOTS {
                if head.load(SeqCst) != h {
                    // `h` was stale: other readers took more than a ring's worth
                    // between the two loads.
                    continue;
                }
                return Err(garbled());
            }
            let mut raw = [0u8; SLOT];
            // SAFETY: a slot inside the mapping, read with volatile reads (a sender may be
            // writing it again when another reader took it first: that copy is dropped
            // below, never used).
            unsafe { volatile_copy(self.slot(h), raw.as_mut_ptr(), SLOT) };
            let kind = u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
            if kind == KIND_TOKEN && !locked {
                return Ok(Took::NeedLock);
            }
            if head
                .compare_exchange(h, h.wrapping_add(1), SeqCst, Relaxed)
                .is_err()
            {
                continue;
            }
            self.wake_senders(n - 1);
            let len = u32::from_le_bytes(raw[4..8].try_into().expect("4 bytes")) as usize;
            return match kind {
                KIND_DATA if len <= PAYLOAD => {
                    let mut out = [0u8; PAYLOAD];
                    out[..len].copy_from_slice(&raw[SLOT_HEAD..SLOT_HEAD + len]);
                    Ok(Took::Data(len, out))
                }
                KIND_TOKEN => {
                    if locked {
                        self.u64_at(OWED).store(h.wrapping_add(1), SeqCst);
                    }
                    Ok(Took::Token(h))
                }
                _ => Err(PyOSError::new_err(format!(
                    "a queue message could not be read: a slot of its shared memory says kind {kind}, {len} bytes"
                ))),
            };
        }
    }

    /// Senders asleep for room are woken once a quarter of the ring is free.
    fn wake_senders(&self, left: u64) {
        if left <= SLOTS * 3 / 4 && self.u32_at(WSLEEP).load(SeqCst) > 0 {
            self.wake(WSEQ, WSLEEP, i32::MAX);
        }
    }

    /// Publishes a slot at the tail (the lock held, room checked).
    fn publish(&self, kind: u32, parts: &[&[u8]]) {
        let tail = self.u64_at(TAIL);
        let t = tail.load(Relaxed);
        let at = self.slot(t);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut raw = [0u8; SLOT];
        raw[0..4].copy_from_slice(&kind.to_le_bytes());
        raw[4..8].copy_from_slice(&(len as u32).to_le_bytes());
        let mut o = SLOT_HEAD;
        for p in parts {
            raw[o..o + p.len()].copy_from_slice(p);
            o += p.len();
        }
        // SAFETY: the slot at the tail is inside the mapping and free (`head` is past
        // its last message); readers that still copy it drop their copy.
        unsafe { volatile_write(raw.as_ptr(), at, o.next_multiple_of(8)) };
        tail.store(t.wrapping_add(1), SeqCst);
        if self.u32_at(RSLEEP).load(SeqCst) > 0 {
            self.wake(RSEQ, RSLEEP, 1);
        }
    }

    /// Bumps the futex word at `seq` and wakes `n` of its sleepers. A process killed
    /// asleep leaves the count of sleepers at `sleep` one too high, which would cost every
    /// later message a system call: after [`IDLE_WAKES`] wake-ups in a row that found
    /// nobody asleep, the count is cleared (a live sleeper it missed wakes at the end of
    /// its slice, and counts itself again).
    fn wake(&self, seq: usize, sleep: usize, n: i32) {
        self.u32_at(seq).fetch_add(1, SeqCst);
        // SAFETY: a live, 4-aligned u32 of the mapping; FUTEX_WAKE only reads the address.
        let woken = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.u32_at(seq).as_ptr(),
                libc::FUTEX_WAKE,
                n,
            )
        };
        if woken > 0 {
            self.idle_wakes.store(0, Relaxed);
        } else if self.idle_wakes.fetch_add(1, Relaxed) + 1 >= IDLE_WAKES {
            self.idle_wakes.store(0, Relaxed);
            self.u32_at(sleep).store(0, SeqCst);
        }
    }

    fn has_room(&self) -> bool {
        self.len() < SLOTS
    }

    /// Takes the sender lock: this process's turn, then the shared lock, waiting with the
    /// GIL let go; `None` when `deadline` passed first (though never before a millisecond
    /// of trying: another sender holds the lock a few microseconds as a rule, unless it
    /// waits for room in the socket).
    fn lock(&self, py: Python<'_>, deadline: Option<Instant>) -> PyResult<Option<Held<'_>>> {
        self.acquire(py, &self.local, OWNER, deadline)
    }

    /// Takes the reader lock (as [`Ring::lock`]); its holder reads the socket.
    fn rlock(&self, py: Python<'_>, deadline: Option<Instant>) -> PyResult<Option<Held<'_>>> {
        self.acquire(py, &self.rlocal, RLOCK, deadline)
    }

    /// Takes a lock of the ring: this process's turn in `local`, then the shared word at
    /// `off`, which names its holder by process id and start time (taken over from a
    /// holder that no longer runs).
    fn acquire<'a>(
        &'a self,
        py: Python<'_>,
        local: &'a AtomicU64,
        off: usize,
        deadline: Option<Instant>,
    ) -> PyResult<Option<Held<'a>>> {
        let give_up = deadline.map(|d| d.max(Instant::now() + Duration::from_millis(1)));
        let late = || give_up.is_some_and(|g| Instant::now() >= g);
        let mut nap = Duration::from_micros(20);
        let pid = std::process::id();
        // SAFETY: gettid has no preconditions.
        let mine = (u64::from(pid) << 32) | u64::from(unsafe { libc::gettid() } as u32);
        loop {
            match local.compare_exchange(0, mine, SeqCst, SeqCst) {
                Ok(_) => break,
                // Held by a thread of the process this one was forked from: that thread
                // does not exist here, and would never let it go.
                Err(o) if (o >> 32) as u32 != pid => {
                    if local.compare_exchange(o, mine, SeqCst, SeqCst).is_ok() {
                        break;
                    }
                }
                Err(_) => {
                    if late() {
                        return Ok(None);
                    }
                    // Another thread holds it (a sender may wait for room in the socket):
                    // wait with the GIL let go (the holder may need it to finish), Ctrl-C
                    // heard.
                    py.detach(|| std::thread::sleep(nap));
                    nap = (nap * 2).min(Duration::from_millis(1));
                    py.check_signals()?;
                }
            }
        }
        // From here on the turn is let go by `Turn`'s drop, then by `Held`'s.
        let turn = Turn(local);
        let mut nap = Duration::from_micros(20);
        let me = token();
        let owner = self.u64_at(off);
        let mut since = Instant::now();
        loop {
            match owner.compare_exchange(0, me, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(o) if since.elapsed() >= CHECK_HOLDER_AFTER && o != me && !alive(o) => {
                    if owner.compare_exchange(o, me, SeqCst, SeqCst).is_ok() {
                        break;
                    }
                }
                Err(o) => {
                    if late() {
                        return Ok(None);
                    }
                    if o == 0 || o == me {
                        // Let go meanwhile, or held by this process (another handle of
                        // the ring): look at the holder afresh later.
                        since = Instant::now();
                    }
                    py.detach(|| std::thread::sleep(nap));
                    nap = (nap * 2).min(Duration::from_millis(1));
                    py.check_signals()?;
                }
            }
        }
        std::mem::forget(turn);
        Ok(Some(Held {
            ring: self,
            local,
            off,
        }))
    }

    /// Reads the socket's first message for the token at ring position `p` (`None`: for
    /// no token, the ring empty), the reader lock held and, for a token, marked owed:
    /// the message, or `None` when the token has none (it is spent). The message's tag
    /// says whose it is: the token's own (taken; the token is served); an earlier
    /// token's, an orphan whose reader died (taken, late; the token stays owed, for the
    /// next call); a later token's (the token's message never came: taken, and that
    /// later token marked as served ahead). A void marker of the token says that its
    /// message never came; one of an earlier token is dropped.
    fn serve<'py>(
        &self,
        py: Python<'py>,
        ch: &Channel,
        p: Option<u64>,
    ) -> PyResult<Option<QueueMessage<'py>>> {
        let owed = self.u64_at(OWED);
        let ahead = self.u64_at(AHEAD);
        if let Some(p) = p
            && ahead.load(SeqCst) == p.wrapping_add(1)
        {
            // Its message was taken before the token came.
            ahead.store(0, SeqCst);
            owed.store(0, SeqCst);
            return Ok(None);
        }
        // Whether the token at `t` is yet to be taken (the reader lock is held: no
        // token is taken meanwhile).
        let to_come = |t: u64| self.u64_at(HEAD).load(SeqCst).wrapping_sub(t) as i64 <= 0;
        loop {
            let got = match ch.recv_tagged_now(py) {
                Ok(g) => g,
                Err(e) => {
                    // A malformed message (taken: most likely the token's own) or the
                    // end of the queue: the token is spent either way.
                    if p.is_some() {
                        owed.store(0, SeqCst);
                    }
                    return Err(e);
                }
            };
            match (got, p) {
                (None, Some(_)) => {
                    // Its sender died before sending (tokens come after their message).
                    owed.store(0, SeqCst);
                    return Ok(None);
                }
                (None, None) => return Ok(None),
                (Some(Tagged::Void(t)), Some(p)) if t == p => {
                    owed.store(0, SeqCst);
                    return Ok(None);
                }
                (Some(Tagged::Void(t)), p) => {
                    if to_come(t) && p.is_none_or(|p| t.wrapping_sub(p) as i64 > 0) {
                        ahead.store(t.wrapping_add(1), SeqCst);
                        owed.store(0, SeqCst);
                        return Ok(None);
                    }
                    // An earlier token's: stale.
                    continue;
                }
                (Some(Tagged::Msg(tag, m)), p) => {
                    match (tag, p) {
                        (Some(t), Some(p)) if t == p => owed.store(0, SeqCst),
                        (Some(t), Some(p)) if t.wrapping_sub(p) as i64 > 0 => {
                            owed.store(0, SeqCst);
                            ahead.store(t.wrapping_add(1), SeqCst);
                        }
                        (Some(t), None) if to_come(t) => ahead.store(t.wrapping_add(1), SeqCst),
                        // An orphan, or untagged: the token stays owed.
                        _ => {}
                    }
                    return Ok(Some(m));
                }
            }
        }
    }

    /// Waits for room in the ring (the lock not held): `false` when `deadline` passed.
    fn wait_room(&self, py: Python<'_>, ch: &Channel, deadline: Option<Instant>) -> PyResult<bool> {
        let roomy = py.detach(|| spin(SPIN, || self.has_room()));
        if roomy {
            return Ok(true);
        }
        let seq = self.u32_at(WSEQ);
        let sleepers = self.u32_at(WSLEEP);
        loop {
            if ch.readers_gone() {
                return Err(PyBrokenPipeError::new_err(
                    "every receiving end of the queue or pipe is closed (its readers are gone)",
                ));
            }
            let s = seq.load(SeqCst);
            sleepers.fetch_add(1, SeqCst);
            let room = self.has_room();
            let slice = match slice_to(deadline) {
                Some(sl) if !room => sl,
                _ => {
                    unsleep(sleepers);
                    return Ok(room);
                }
            };
            let seq_addr = seq as *const AtomicU32 as usize;
            py.detach(|| {
                // SAFETY: the word is in the mapping `self` keeps for the whole call.
                futex_wait(unsafe { &*(seq_addr as *const AtomicU32) }, s, slice)
            });
            unsleep(sleepers);
            py.check_signals()?;
        }
    }
}

impl Ring {
    fn put_slices(
        &self,
        py: Python<'_>,
        ch: &Channel,
        slices: &[&[u8]],
        fds: &[i32],
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let len: usize = slices.iter().map(|s| s.len()).sum();
        let small = fds.is_empty()
            && len <= PAYLOAD
            && slices
                .iter()
                .find(|p| !p.is_empty())
                .and_then(|p| p.first())
                == Some(&0);
        let deadline = deadline_of(timeout)?;
        loop {
            {
                let Some(held) = self.lock(py, deadline)? else {
                    return Ok(false);
                };
                if self.len() > SLOTS {
                    // With the lock held the tail stays put and the head never passes
                    // it: only a scribbled ring says so. Waiting for room would be
                    // forever.
                    return Err(garbled());
                }
                if self.has_room() && self.u32_at(INFLIGHT).load(SeqCst) != 0 {
                    // A sender died inside its socket send (a live holder clears the
                    // mark before letting the lock go): its message, tagged with the
                    // tail's position, may or may not have gone. Publish its token, then
                    // send the void marker of that position: the token's reader takes
                    // the message if it came before the marker, else skips the token.
                    let at = self.u64_at(TAIL).load(Relaxed);
                    self.publish(KIND_TOKEN, &[]);
                    self.u32_at(INFLIGHT).store(0, SeqCst);
                    let mut void = [VOID; 9];
                    void[1..].copy_from_slice(&at.to_le_bytes());
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    // Not sent (the socket stayed full): the token's reader finds the
                    // socket empty (skips it) or a later message (takes it early).
                    let _ = ch.send_slices(py, &[&void], &[], left)?;
                }
                if self.has_room() {
                    if small {
                        self.publish(KIND_DATA, slices);
                        return Ok(true);
                    }
                    // SAFETY: the descriptors are the caller's, open for the call.
                    let borrowed: Vec<BorrowedFd<'_>> = fds
                        .iter()
                        .map(|&f| unsafe { BorrowedFd::borrow_raw(f) })
                        .collect();
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    // The message goes tagged with its token's position (see `serve`).
                    let mut tag = [TAGGED; 9];
                    tag[1..].copy_from_slice(&self.u64_at(TAIL).load(Relaxed).to_le_bytes());
                    let mut tagged: Vec<&[u8]> = Vec::with_capacity(slices.len() + 1);
                    tagged.push(&tag);
                    tagged.extend_from_slice(slices);
                    self.u32_at(INFLIGHT).store(1, SeqCst);
                    let sent = ch.send_slices(py, &tagged, &borrowed, left);
                    if matches!(sent, Ok(true)) {
                        self.publish(KIND_TOKEN, &[]);
                    }
                    self.u32_at(INFLIGHT).store(0, SeqCst);
                    drop(held);
                    return sent;
                }
            }
            if timeout == Some(0.0) || !self.wait_room(py, ch, deadline)? {
                return Ok(false);
            }
        }
    }
}

fn garbled() -> PyErr {
    PyOSError::new_err("a queue's shared memory is garbled (more messages than slots)")
}

/// A lock of the ring, held (the shared word at `off` and this process's turn).
struct Held<'a> {
    ring: &'a Ring,
    local: &'a AtomicU64,
    off: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.ring.u64_at(self.off).store(0, SeqCst);
        self.local.store(0, SeqCst);
    }
}

/// This process's turn, held while the shared lock is waited for.
struct Turn<'a>(&'a AtomicU64);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.store(0, SeqCst);
    }
}

/// Looks at `ready` for `limit` at most, giving the processor away now and then (on a
/// busy machine the process being waited for may need it): whether it became true.
fn spin(limit: Duration, ready: impl Fn() -> bool) -> bool {
    let end = Instant::now() + limit;
    let mut i = 0u32;
    loop {
        if ready() {
            return true;
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) {
            if Instant::now() >= end {
                return false;
            }
            if i.is_multiple_of(128) {
                std::thread::yield_now();
            }
        }
        std::hint::spin_loop();
    }
}

/// Takes one sleeper off a count (never below zero: [`Ring::wake`] may have cleared it).
fn unsleep(sleepers: &AtomicU32) {
    let _ = sleepers.fetch_update(SeqCst, SeqCst, |v| v.checked_sub(1));
}

/// The next sleep: at most [`SLICE`], never past `deadline`; `None` once it passed.
fn slice_to(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        None => Some(SLICE),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| left.min(SLICE))
        }
    }
}

/// Copies `n` bytes (a multiple of 8) from shared memory that a peer may write meanwhile.
///
/// # Safety
/// `from` and `to` valid for `n` bytes, 8-aligned.
unsafe fn volatile_copy(from: *const u8, to: *mut u8, n: usize) {
    for i in (0..n).step_by(8) {
        // SAFETY: in bounds and aligned, per the caller.
        unsafe {
            let w = std::ptr::read_volatile(from.add(i).cast::<u64>());
            std::ptr::write_unaligned(to.add(i).cast::<u64>(), w);
        }
    }
}

/// Writes `n` bytes (a multiple of 8) into shared memory that a peer may read meanwhile.
///
/// # Safety
/// `from` valid for `n` bytes, `to` for `n` bytes and 8-aligned.
unsafe fn volatile_write(from: *const u8, to: *mut u8, n: usize) {
    for i in (0..n).step_by(8) {
        // SAFETY: in bounds and aligned, per the caller.
        unsafe {
            let w = std::ptr::read_unaligned(from.add(i).cast::<u64>());
            std::ptr::write_volatile(to.add(i).cast::<u64>(), w);
        }
    }
}

fn deadline_of(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    Ok(crate::args::duration(timeout, "timeout")?.map(|t| Instant::now() + t))
}

#[pymethods]
impl Ring {
    /// A new, empty ring.
    #[new]
    fn new() -> PyResult<Self> {
        let fd = crate::counter::sealed_memfd(c"procpool-queue-ring", SIZE)?;
        let r = map(fd)?;
        r.u64_at(0).store(MAGIC, SeqCst);
        Ok(r)
    }

    /// The ring held by descriptor `fd` (duplicated), checked to be a ring's sealed memfd.
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        let fd = crate::counter::sealed_dup(fd, SIZE, "a procpool queue's ring")?;
        let r = map(fd)?;
        if r.u64_at(0).load(SeqCst) != MAGIC {
            return Err(PyValueError::new_err(
                "the descriptor is not a procpool queue's ring (no ring in it)",
            ));
        }
        Ok(r)
    }

    /// Its descriptor.
    fn fileno(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Messages in the ring now (tokens of socket messages included).
    fn __len__(&self) -> usize {
        self.len().min(SLOTS) as usize
    }

    /// Puts one queue message (`parts`: `bytes` objects, one after the other; `fds`
    /// attached): in a slot when it is small and has no descriptor, else through the
    /// channel `ch` with a token in the ring. Waits for room at most `timeout` (`None`:
    /// as long as needed, 0: not at all); `False` when there was none.
    #[pyo3(signature = (ch, parts, fds, timeout=None))]
    fn put(
        &self,
        py: Python<'_>,
        ch: PyRef<'_, Channel>,
        parts: &Bound<'_, PyList>,
        fds: Vec<i32>,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let owned: Vec<Bound<'_, PyBytes>> = parts
            .iter()
            .map(|p| p.cast_into::<PyBytes>().map_err(PyErr::from))
            .collect::<PyResult<_>>()?;
        let slices: Vec<&[u8]> = owned.iter().map(|p| p.as_bytes()).collect();
        if fds.iter().any(|&f| f < 0) {
            return Err(PyValueError::new_err("a message's descriptor is negative"));
        }
        self.put_slices(py, &ch, &slices, &fds, timeout)
    }

    /// Puts a message that is a pickle alone (`put(ch, [b"\\0", pickle], (), None)`),
    /// waiting for room as long as needed.
    fn put_pickle(&self, py: Python<'_>, ch: PyRef<'_, Channel>, pickle: &[u8]) -> PyResult<()> {
        self.put_slices(py, &ch, &[&[0u8], pickle], &[], None)?;
        Ok(())
    }

    /// `Queue.put`'s common case in one call: when `obj` is an `int`, `float`, `bool`,
    /// `None` or a short `str` (exactly those types) and the count `count` is below
    /// `maxsize`, pickles it, counts it and puts it, waiting for room as long as needed:
    /// `True`. `False` (nothing done) for anything else.
    fn put_small(
        &self,
        py: Python<'_>,
        ch: PyRef<'_, Channel>,
        count: PyRef<'_, crate::counter::Counter>,
        maxsize: i64,
        obj: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let small = obj.is_exact_instance_of::<pyo3::types::PyInt>()
            || obj.is_none()
            || obj.is_exact_instance_of::<pyo3::types::PyFloat>()
            || obj.is_exact_instance_of::<pyo3::types::PyBool>()
            || (obj.is_exact_instance_of::<pyo3::types::PyString>() && obj.len()? < 200);
        if !small {
            return Ok(false);
        }
        let dumps = DUMPS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py.import("pickle")?.getattr("dumps")?.unbind())
        })?;
        let data = dumps.bind(py).call1((obj, 5))?;
        let data = data.cast_into::<PyBytes>().map_err(PyErr::from)?;
        if !count.add_one_below(maxsize) {
            return Ok(false);
        }
        match self.put_slices(py, &ch, &[&[0u8], data.as_bytes()], &[], None) {
            Ok(_) => Ok(true),
            Err(e) => {
                count.add_delta(-1);
                Err(e)
            }
        }
    }

    /// Takes one queue message: `(pickle, [buffer, ...], [descriptor, ...])` as
    /// `Channel.recv_message`, or `None` when none came within `timeout` (`None`: as long
    /// as needed, 0: not at all).
    #[pyo3(signature = (ch, timeout=None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        ch: PyRef<'_, Channel>,
        timeout: Option<f64>,
    ) -> PyResult<Option<QueueMessage<'py>>> {
        let deadline = deadline_of(timeout)?;
        let mut spun = false;
        // The reader lock, once taken (let go when the call returns, or after a token
        // turned out to have no message).
        let mut rl: Option<Held<'_>> = None;
        loop {
            if self.u64_at(OWED).load(SeqCst) != 0 {
                // A token taken and not served yet (its reader returned an orphan in its
                // place, or died): served first, in the ring's order.
                if rl.is_none() {
                    match self.rlock(py, deadline)? {
                        Some(g) => rl = Some(g),
                        None => return Ok(None),
                    }
                }
                let owed = self.u64_at(OWED).load(SeqCst);
                if owed != 0 {
                    if let Some(m) = self.serve(py, &ch, Some(owed.wrapping_sub(1)))? {
                        return Ok(Some(m));
                    }
                    rl = None;
                    continue;
                }
            }
            match self.take(rl.is_some())? {
                Took::Data(len, buf) => {
                    if len == 0 || buf[0] != 0 {
                        return Err(PyOSError::new_err(
                            "a queue message could not be read: a slot does not hold a pickle",
                        ));
                    }
                    let pickle = PyBytes::new(py, &buf[1..len]).into_any();
                    return Ok(Some((pickle, Vec::new(), Vec::new())));
                }
                Took::Token(p) => {
                    if let Some(m) = self.serve(py, &ch, Some(p))? {
                        return Ok(Some(m));
                    }
                    // Its message never came: the token is spent.
                    rl = None;
                    continue;
                }
                Took::NeedLock => {
                    match self.rlock(py, deadline)? {
                        Some(g) => rl = Some(g),
                        None => return Ok(None),
                    }
                    continue;
                }
                Took::Empty => {}
            }
            // The ring is empty: a socket message waiting now has no token to come in
            // front of it (an orphan whose reader died, a message whose sender died
            // before its token or is about to publish it, one sent by other means): the
            // reader lock's holder takes it (see `serve`).
            if ch.readable_now() {
                if rl.is_none() {
                    match self.rlock(py, deadline)? {
                        Some(g) => rl = Some(g),
                        None => return Ok(None),
                    }
                    continue;
                }
                if self.u64_at(OWED).load(SeqCst) == 0
                    && self.len() == 0
                    && let Some(m) = self.serve(py, &ch, None)?
                {
                    return Ok(Some(m));
                }
                rl = None;
                continue;
            }
            rl = None;
            if timeout == Some(0.0) {
                return Ok(None);
            }
            if !spun {
                spun = true;
                // The spin adapts to the stream: it halves after each spin in vain (a
                // slow sender: its messages would be waited for by sleeping anyway, and
                // spinning takes a processor it may need), and doubles after each
                // success, up to [`SPIN`].
                let limit = Duration::from_nanos(self.spin_ns.load(Relaxed));
                let got = py.detach(|| spin(limit, || self.len() != 0));
                let next = if got {
                    (limit * 2).clamp(MIN_SPIN * 2, SPIN)
                } else {
                    (limit / 2).max(MIN_SPIN)
                };
                self.spin_ns.store(next.as_nanos() as u64, Relaxed);
                if got {
                    continue;
                }
            }
            let seq = self.u32_at(RSEQ);
            let sleepers = self.u32_at(RSLEEP);
            let s = seq.load(SeqCst);
            sleepers.fetch_add(1, SeqCst);
            fence(SeqCst);
            if self.len() != 0 {
                unsleep(sleepers);
                continue;
            }
            let mut slice = match slice_to(deadline) {
                Some(sl) => sl,
                None => {
                    unsleep(sleepers);
                    return Ok(None);
                }
            };
            if deadline.is_none() {
                // Nothing to look at but Ctrl-C, which ends the sleep itself, and a
                // socket message without a token (no sender wakes this reader for it).
                slice = READER_SLICE;
            }
            let seq_addr = seq as *const AtomicU32 as usize;
            let woken = py.detach(|| {
                // SAFETY: the word is in the mapping `self` keeps for the whole call.
                futex_wait(unsafe { &*(seq_addr as *const AtomicU32) }, s, slice)
            });
            unsleep(sleepers);
            py.check_signals()?;
            // Woken by a sender: spin again before the next sleep; a slice that ran out
            // goes back to sleep at once.
            spun = !woken;
        }
    }

    /// For tests: takes the sender lock and never lets it go in this process, as a
    /// sender killed holding it would (with a socket send in flight when `inflight`).
    fn _hold_lock_forever(&self, py: Python<'_>, inflight: bool) -> PyResult<()> {
        let held = self.lock(py, None)?.expect("no deadline");
        if inflight {
            self.u32_at(INFLIGHT).store(1, SeqCst);
        }
        std::mem::forget(held);
        Ok(())
    }

    /// For tests: takes the message at the head and drops it, as a reader killed right
    /// after taking it would: `"data"`, `"token"` or `None` when the ring was empty.
    fn _take_and_drop(&self) -> PyResult<Option<&'static str>> {
        Ok(match self.take(true)? {
            Took::Data(..) => Some("data"),
            Took::Token(_) => {
                // Killed before it marked the token owed: its message is an orphan.
                self.u64_at(OWED).store(0, SeqCst);
                Some("token")
            }
            Took::NeedLock | Took::Empty => None,
        })
    }

    /// For tests: takes the reader lock and the message at the head, and never lets the
    /// lock go in this process, as a reader killed right after taking a token would:
    /// `"data"`, `"token"` or `None` when the ring was empty.
    fn _take_holding_reader_lock(&self, py: Python<'_>) -> PyResult<Option<&'static str>> {
        let held = self.rlock(py, None)?.expect("no deadline");
        let took = self.take(true)?;
        std::mem::forget(held);
        Ok(match took {
            Took::Data(..) => Some("data"),
            Took::Token(_) => Some("token"),
            Took::NeedLock | Took::Empty => None,
        })
    }

    /// For tests: takes the token at the head, as `get` does, then pauses `pause`
    /// seconds (the GIL let go) before reading its message, as a reader preempted there
    /// would. `None` when the head held no token (nothing is taken then).
    fn _get_token_slowly<'py>(
        &self,
        py: Python<'py>,
        ch: PyRef<'_, Channel>,
        pause: f64,
    ) -> PyResult<Option<QueueMessage<'py>>> {
        let _held = self.rlock(py, None)?.expect("no deadline");
        if !matches!(self.take(false)?, Took::NeedLock) {
            return Err(PyValueError::new_err("the head holds no token"));
        }
        let Took::Token(p) = self.take(true)? else {
            return Err(PyValueError::new_err("the token was taken meanwhile"));
        };
        py.detach(|| std::thread::sleep(Duration::from_secs_f64(pause)));
        self.serve(py, &ch, Some(p))
    }

    /// For tests: `(readers, senders)` the ring counts as asleep.
    fn _sleepers(&self) -> (u32, u32) {
        (
            self.u32_at(RSLEEP).load(SeqCst),
            self.u32_at(WSLEEP).load(SeqCst),
        )
    }

    /// Whether no message waits in the ring.
    fn empty(&self) -> bool {
        self.len() == 0
    }
}
