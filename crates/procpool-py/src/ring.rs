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
//!   after it (the message was its own, as a message a reader took from a socket).
//! - **Senders take turns** through a lock in the ring whose word names the holder by
//!   its process id and start time (`sync.rs`'s token). A sender that finds it held by a
//!   process that no longer runs takes it over: a sender killed anywhere never blocks
//!   the queue. Threads of one process take an in-process turn first (a word naming
//!   the thread by pid and tid: a forked child takes over a turn its parent's thread held).
//! - **Order with the socket.** The lock holder sends a socket message, then publishes its
//!   token. A sender killed between the two leaves an `inflight` mark; the sender that
//!   takes the lock over publishes the token for it (a token whose message never came
//!   is skipped: a reader finding the socket empty goes on). A socket message left
//!   without a token (its reader was killed after taking the token) is read by a reader
//!   that finds the ring empty, the socket not, and no send in flight, for
//!   [`STUCK_AFTER`] (ten times that with a send in flight): late, never lost. Order
//!   between one sender's messages can differ from `put`'s only after such a kill.
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
//! 4096  slots     SLOTS × SLOT bytes: kind u32, len u32, payload
//! ```

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::sync::atomic::{Ordering::SeqCst, fence};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyBrokenPipeError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::channel::{Channel, QueueMessage};
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

const KIND_DATA: u32 = 1;
const KIND_TOKEN: u32 = 2;

/// How long a reader that finds the ring empty (or a sender that finds it full) keeps
/// looking before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// The shortest spin of a reader whose spins found nothing.
const MIN_SPIN: Duration = Duration::from_micros(2);
/// Longest sleep between looks at Ctrl-C, dead lock holders and stuck socket messages.
const SLICE: Duration = Duration::from_millis(20);
/// The sleep of a reader with no deadline and nothing stuck (a signal ends it early).
const READER_SLICE: Duration = Duration::from_millis(100);
/// How long a socket message must wait with the ring empty and no send in flight before
/// a reader takes it without its token (see the module docs).
pub(crate) const STUCK_AFTER: Duration = Duration::from_millis(100);
/// Wake-ups in a row that found no sleeper before a ring clears its count of sleepers.
const IDLE_WAKES: u32 = 64;
/// A held sender lock is looked at for a dead holder after this much waiting.
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
    })
}

/// What a reader took from the ring (a message's bytes on the stack: no allocation).
#[allow(clippy::large_enum_variant)]
enum Took {
    Data(usize, [u8; PAYLOAD]),
    Token,
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

    /// Takes the message at the head, if any.
    fn take(&self) -> PyResult<Took> {
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
            if head
                .compare_exchange(h, h.wrapping_add(1), SeqCst, Relaxed)
                .is_err()
            {
                continue;
            }
            self.wake_senders(n - 1);
            let kind = u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes"));
            let len = u32::from_le_bytes(raw[4..8].try_into().expect("4 bytes")) as usize;
            return match kind {
                KIND_DATA if len <= PAYLOAD => {
                    let mut out = [0u8; PAYLOAD];
                    out[..len].copy_from_slice(&raw[SLOT_HEAD..SLOT_HEAD + len]);
                    Ok(Took::Data(len, out))
                }
                KIND_TOKEN => Ok(Took::Token),
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

    /// Takes this process's lock, then the shared one, waiting with the GIL let go;
    /// `None` when `deadline` passed first (though never before a millisecond of trying:
    /// another sender holds the lock a few microseconds as a rule, unless it waits for
    /// room in the socket).
    fn lock(&self, py: Python<'_>, deadline: Option<Instant>) -> PyResult<Option<Held<'_>>> {
        let give_up = deadline.map(|d| d.max(Instant::now() + Duration::from_millis(1)));
        let late = || give_up.is_some_and(|g| Instant::now() >= g);
        let mut nap = Duration::from_micros(20);
        let pid = std::process::id();
        // SAFETY: gettid has no preconditions.
        let mine = (u64::from(pid) << 32) | u64::from(unsafe { libc::gettid() } as u32);
        loop {
            match self.local.compare_exchange(0, mine, SeqCst, SeqCst) {
                Ok(_) => break,
                // Held by a thread of the process this one was forked from: that thread
                // does not exist here, and would never let it go.
                Err(o) if (o >> 32) as u32 != pid => {
                    if self.local.compare_exchange(o, mine, SeqCst, SeqCst).is_ok() {
                        break;
                    }
                }
                Err(_) => {
                    if late() {
                        return Ok(None);
                    }
                    // Another thread sends (it may wait for room in the socket): wait with
                    // the GIL let go (the holder may need it to finish), Ctrl-C heard.
                    py.detach(|| std::thread::sleep(nap));
                    nap = (nap * 2).min(Duration::from_millis(1));
                    py.check_signals()?;
                }
            }
        }
        // From here on the turn is let go by `Turn`'s drop, then by `Held`'s.
        let turn = Turn(self);
        let mut nap = Duration::from_micros(20);
        let me = token();
        let owner = self.u64_at(OWNER);
        let mut since = Instant::now();
        loop {
            match owner.compare_exchange(0, me, SeqCst, SeqCst) {
                Ok(_) => break,
                Err(o) if since.elapsed() >= CHECK_HOLDER_AFTER && o != me && !alive(o) => {
                    if owner.compare_exchange(o, me, SeqCst, SeqCst).is_ok() {
                        // The dead holder may have sent a socket message without its
                        // token: publish one for it (skipped if none came).
                        if self.u32_at(INFLIGHT).swap(0, SeqCst) != 0 {
                            if !self.has_room() {
                                // Rare: the dead holder left it at that; the message,
                                // if any, is read as a stuck one.
                            } else {
                                self.publish(KIND_TOKEN, &[]);
                            }
                        }
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
        Ok(Some(Held { ring: self }))
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
                    self.u32_at(INFLIGHT).store(1, SeqCst);
                    let sent = ch.send_slices(py, slices, &borrowed, left);
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

/// The sender lock, held (the shared lock and this process's turn).
struct Held<'a> {
    ring: &'a Ring,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.ring.u64_at(OWNER).store(0, SeqCst);
        self.ring.local.store(0, SeqCst);
    }
}

/// This process's turn, held while the shared lock is waited for.
struct Turn<'a>(&'a Ring);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.local.store(0, SeqCst);
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
        // SAFETY: plain system calls; the descriptor is owned at once.
        let fd = unsafe {
            let raw = libc::memfd_create(
                c"procpool-queue-ring".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            );
            if raw < 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            OwnedFd::from_raw_fd(raw)
        };
        // SAFETY: sizing and sealing our own new memfd.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), SIZE as libc::off_t) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
            if libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        let r = map(fd)?;
        r.u64_at(0).store(MAGIC, SeqCst);
        Ok(r)
    }

    /// The ring held by descriptor `fd` (duplicated), checked to be a ring's sealed memfd.
    #[staticmethod]
    fn from_fd(fd: i32) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!("not a descriptor: {fd}")));
        }
        // SAFETY: the caller holds `fd` open for the call; it is duplicated at once.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        let st = rustix::fs::fstat(fd.as_fd()).map_err(std::io::Error::from)?;
        let seals = rustix::fs::fcntl_get_seals(fd.as_fd()).ok();
        let fixed = seals.is_some_and(|s| {
            s.contains(rustix::fs::SealFlags::SHRINK) && s.contains(rustix::fs::SealFlags::GROW)
        });
        if !fixed || st.st_size as usize != SIZE {
            return Err(PyValueError::new_err(
                "the descriptor is not a procpool queue's ring (a sealed memfd of its size)",
            ));
        }
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
        let mut stuck_since: Option<Instant> = None;
        let mut spun = false;
        loop {
            match self.take()? {
                Took::Data(len, buf) => {
                    if len == 0 || buf[0] != 0 {
                        return Err(PyOSError::new_err(
                            "a queue message could not be read: a slot does not hold a pickle",
                        ));
                    }
                    let pickle = PyBytes::new(py, &buf[1..len]).into_any();
                    return Ok(Some((pickle, Vec::new(), Vec::new())));
                }
                Took::Token => {
                    // Its message was sent before the token: there, unless another
                    // reader took it (then this token is spent).
                    if let Some(m) = ch.recv_message_now(py)? {
                        return Ok(Some(m));
                    }
                    continue;
                }
                Took::Empty => {}
            }
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
            // The ring stays empty: a socket message without a token (its reader was
            // killed, or it was sent by other means) is read once it has waited so.
            // A send in flight holds it back (its token is coming), unless that lasts ten
            // times as long (the sender waits for room in a socket full of such
            // messages, or was stopped).
            if ch.readable_now() {
                let first = *stuck_since.get_or_insert_with(Instant::now);
                let waited = first.elapsed();
                // A send in flight whose sender died (killed between its socket send
                // and its token) is none.
                let quiet = self.u32_at(INFLIGHT).load(SeqCst) == 0
                    || !alive(self.u64_at(OWNER).load(SeqCst));
                if (waited >= STUCK_AFTER && quiet || waited >= STUCK_AFTER * 10) && self.len() == 0
                {
                    if let Some(m) = ch.recv_message_now(py)? {
                        return Ok(Some(m));
                    }
                    stuck_since = None;
                }
            } else {
                stuck_since = None;
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
            if stuck_since.is_some() {
                slice = slice.min(STUCK_AFTER / 4);
            } else if deadline.is_none() {
                // Nothing to look at but Ctrl-C, which ends the sleep itself.
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
        Ok(match self.take()? {
            Took::Data(..) => Some("data"),
            Took::Token => Some("token"),
            Took::Empty => None,
        })
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
