//! Locks and wait words in shared memory, for `procpool.synchronize` (Python): robust
//! to the death of the process holding them.
//!
//! Every object lives in memory the caller gives as a writable buffer (a slice of a
//! memfd mapping shared between processes); the kernel's futexes on that memory put
//! waiters to sleep and wake them, across processes.
//!
//! A holder is named by a *token*: its process id and the low 32 bits of the process's
//! start time (`/proc/<pid>/stat`, field 22), so that a pid used again by another process
//! is not taken for the holder. A waiter sleeps in slices; after a slice with no wake-up it
//! looks whether the holder's process still exists (and is not a zombie). When it does not,
//! the waiter takes the lock over (a compare-and-swap from the dead token, so one waiter
//! only) and says so: [`RawMutex::holder_died`].
//!
//! Layout of a mutex (32 bytes, 8-aligned):
//!
//! ```text
//! 0   owner    u64  token of the holder, 0 when free
//! 8   thread   u64  the holder's thread (pthread_self), for RLock and ownership checks
//! 16  count    u32  recursion depth (RLock)
//! 20  seq      u32  futex word: bumped by each release that finds waiters
//! 24  waiters  u32  processes' threads sleeping on `seq`
//! 28  deaths   u32  take-overs from dead holders, ever
//! ```

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyAssertionError, PyValueError};
use pyo3::prelude::*;

use crate::py;

/// Longest sleep before a waiter looks at the holder again (and at Ctrl-C).
const MAX_SLICE: Duration = Duration::from_millis(100);
/// Looks at a held lock this many times before sleeping.
const SPINS: u32 = 200;
/// First sleep of a waiter.
const FIRST_SLICE: Duration = Duration::from_millis(5);

/// Bytes a mutex takes.
pub(crate) const MUTEX_SIZE: usize = 32;

// ---- who am I, is it alive -------------------------------------------------------------

/// A page the kernel zeroes in a forked child (`MADV_WIPEONFORK`): the cached token
/// lives there, so a process made by any kind of fork (the template's raw `clone`
/// included) computes its own.
fn token_cell() -> &'static AtomicU64 {
    static CELL: OnceLock<usize> = OnceLock::new();
    let addr = *CELL.get_or_init(|| {
        // SAFETY: an anonymous private mapping of one page; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(p != libc::MAP_FAILED, "cannot map one page");
        // SAFETY: advice on the page just mapped. Without WIPEONFORK (Linux < 4.14) the
        // token is checked against getpid() on each use instead (see `token`).
        let r = unsafe { libc::madvise(p, 4096, libc::MADV_WIPEONFORK) };
        let _ = WIPE_UNSUPPORTED.set(r != 0);
        p as usize
    });
    // SAFETY: the page is mapped for the life of the process, 8-aligned, and only ever
    // accessed atomically.
    unsafe { &*(addr as *const AtomicU64) }
}

/// This process's token: `pid << 32 | start time`.
pub(crate) fn token() -> u64 {
    let cell = token_cell();
    let t = cell.load(std::sync::atomic::Ordering::Relaxed);
    if t != 0 && !WIPE_UNSUPPORTED.get().copied().unwrap_or(false) {
        return t;
    }
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u32;
    if t != 0 && (t >> 32) as u32 == pid {
        return t;
    }
    let start = start_time(pid).unwrap_or(0);
    let t = (u64::from(pid) << 32) | u64::from(start);
    cell.store(t, std::sync::atomic::Ordering::Relaxed);
    t
}

/// Set when the kernel refused `MADV_WIPEONFORK`.
static WIPE_UNSUPPORTED: OnceLock<bool> = OnceLock::new();

/// The calling thread, as `threading.get_ident()` names it.
fn thread() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// `(state, start time)` of a process from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u8, u32)> {
    let s = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let close = s.iter().rposition(|&b| b == b')')?;
    let mut fields = s[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let state = *fields.next()?.first()?;
    // Field 3 is the state; the start time is field 22: 19 further on.
    let start = fields.nth(18)?;
    let start: u64 = std::str::from_utf8(start).ok()?.parse().ok()?;
    Some((state, start as u32))
}

fn start_time(pid: u32) -> Option<u32> {
    stat(pid).map(|(_, s)| s)
}

/// Whether the process a token names still runs (a zombie, or another process with the
/// same pid, does not count).
pub(crate) fn alive(token: u64) -> bool {
    let pid = (token >> 32) as u32;
    if pid == 0 {
        return false;
    }
    match stat(pid) {
        None => false,
        Some((b'Z' | b'X' | b'x', _)) => false,
        Some((_, start)) => start == token as u32,
    }
}

// ---- futexes -------------------------------------------------------------------------

/// Sleeps while `*word == expected`, at most `timeout`. `true` if woken (or the word
/// changed, or a signal came), `false` on timeout.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, 4-aligned u32 in (shared) memory; the kernel reads it and
    // the timespec only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ETIMEDOUT)
}

/// Wakes at most `n` sleepers on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE only reads the address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

/// A deadline from `block`/`timeout` as the stdlib reads them: `None` waits forever.
fn deadline(timeout: Option<f64>) -> Option<Instant> {
    timeout.map(|t| {
        let t = if t.is_nan() || t < 0.0 {
            0.0
        } else {
            t.min(1e9)
        };
        Instant::now() + Duration::from_secs_f64(t)
    })
}

/// The next sleep: doubling slices up to [`MAX_SLICE`], never past the deadline.
/// `None` when the deadline has passed.
fn next_slice(slice: &mut Duration, deadline: Option<Instant>) -> Option<Duration> {
    let s = *slice;
    *slice = (*slice * 2).min(MAX_SLICE);
    match deadline {
        None => Some(s),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            (!left.is_zero()).then(|| s.min(left))
        }
    }
}

/// Shared memory at a given address, kept mapped by a Python object (a ctypes object
/// made with `from_buffer` over an `mmap`: while it lives, the mapping can be neither
/// closed nor resized).
struct Mem {
    _keep: Py<PyAny>,
    ptr: usize,
}

impl std::fmt::Debug for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mem({:#x})", self.ptr)
    }
}

impl Mem {
    /// `keep` must keep `size` bytes at `addr` mapped and writable for its life (the
    /// private callers in `procpool.synchronize` pass the ctypes object over them).
    fn new(keep: &Bound<'_, PyAny>, addr: usize, size: usize, align: usize) -> PyResult<Self> {
        let ctypes = keep.py().import("ctypes")?;
        let base: usize = ctypes.getattr("addressof")?.call1((keep,))?.extract()?;
        let len: usize = ctypes.getattr("sizeof")?.call1((keep,))?.extract()?;
        if addr < base || addr + size > base + len {
            return Err(PyValueError::new_err(format!(
                "{size} bytes at {addr:#x} are not inside the object given"
            )));
        }
        if !addr.is_multiple_of(align) {
            return Err(PyValueError::new_err(format!(
                "the memory must be {align}-aligned"
            )));
        }
        Ok(Mem {
            _keep: keep.clone().unbind(),
            ptr: addr,
        })
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: in bounds (the callers' offsets are within the size checked at creation), 8-aligned, and the buffer stays
        // exported (mapped) as long as `self`; shared words are only accessed atomically.
        unsafe { &*((self.ptr + off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as in `u64_at`, 4-aligned.
        unsafe { &*((self.ptr + off) as *const AtomicU32) }
    }
}

// ---- the mutex ------------------------------------------------------------------------

/// A robust mutex (`Lock`, or `RLock` when recursive) in shared memory; see the module
/// docs for its layout.
#[pyclass(module = "procpool._core", subclass, frozen)]
#[derive(Debug)]
pub(crate) struct RawMutex {
    mem: Mem,
    recursive: bool,
    /// Whether this handle's last acquire took the lock from a dead holder.
    died: AtomicU32,
    /// The dead holder's pid, if so.
    dead_pid: AtomicU32,
}

/// The parts of a mutex a waiter uses without the GIL.
struct MutexRef<'a> {
    owner: &'a AtomicU64,
    thread: &'a AtomicU64,
    count: &'a AtomicU32,
    seq: &'a AtomicU32,
    waiters: &'a AtomicU32,
    deaths: &'a AtomicU32,
}

/// What a blocking acquire ended with.
enum Got {
    Yes,
    /// Taken from a dead holder (its token).
    FromDead(u64),
    No,
}

impl MutexRef<'_> {
    fn take(&self, recursive: bool) {
        // Read by the holder itself (and, for a report only, by others): the owner word,
        // changed with full barriers, orders everything else.
        self.thread.store(thread(), Relaxed);
        if recursive {
            self.count.store(1, Relaxed);
        }
    }

    /// One try: free, or held by a dead process.
    fn try_once(&self, me: u64, check_dead: bool) -> Got {
        match self.owner.compare_exchange(0, me, SeqCst, SeqCst) {
            Ok(_) => Got::Yes,
            Err(o) if check_dead && o != me && !alive(o) => {
                if self.owner.compare_exchange(o, me, SeqCst, SeqCst).is_ok() {
                    self.deaths.fetch_add(1, SeqCst);
                    Got::FromDead(o)
                } else {
                    Got::No
                }
            }
            Err(_) => Got::No,
        }
    }

    /// Sleeps until the lock is taken or the deadline passes.
    fn wait(&self, me: u64, deadline: Instant) -> Got {
        self.waiters.fetch_add(1, SeqCst);
        let mut slice = FIRST_SLICE;
        let mut check_dead = false;
        let got = loop {
            let s = self.seq.load(SeqCst);
            match self.try_once(me, check_dead) {
                Got::No => {}
                g => break g,
            }
            let Some(sleep) = next_slice(&mut slice, Some(deadline)) else {
                break Got::No;
            };
            // After a slice with no wake-up, look at the holder on the next try.
            check_dead = !futex_wait(self.seq, s, sleep);
        };
        self.waiters.fetch_sub(1, SeqCst);
        if matches!(got, Got::No) {
            // A wake-up meant for this waiter may have come as it gave up: pass it on.
            self.wake_one();
        }
        got
    }

    fn wake_one(&self) {
        if self.waiters.load(SeqCst) > 0 && self.owner.load(SeqCst) == 0 {
            self.seq.fetch_add(1, SeqCst);
            futex_wake(self.seq, 1);
        }
    }
}

/// A raw pointer's worth of a mutex, to use without the GIL.
struct SendRef(usize);
// SAFETY: the address points into shared memory kept mapped by the `RawMutex` that the
// waiting call borrows for its whole duration.
unsafe impl Send for SendRef {}

impl RawMutex {
    fn r(&self) -> MutexRef<'_> {
        MutexRef {
            owner: self.mem.u64_at(0),
            thread: self.mem.u64_at(8),
            count: self.mem.u32_at(16),
            seq: self.mem.u32_at(20),
            waiters: self.mem.u32_at(24),
            deaths: self.mem.u32_at(28),
        }
    }

    fn mine(&self, me: u64) -> bool {
        let r = self.r();
        r.owner.load(SeqCst) == me && r.thread.load(SeqCst) == thread()
    }

    /// The acquire itself; `got` has run for what it returns.
    fn acquire_inner(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<Got> {
        let me = token();
        let r = self.r();
        if self.recursive && self.mine(me) {
            r.count.fetch_add(1, SeqCst);
            return Ok(Got::Yes);
        }
        let g = r.try_once(me, false);
        if !matches!(g, Got::No) {
            self.got(&g);
            return Ok(g);
        }
        if !block {
            let g = r.try_once(me, true);
            self.got(&g);
            return Ok(g);
        }
        // A holder on another core usually lets go within microseconds: spin a little
        // before going to sleep (and through the kernel).
        for _ in 0..SPINS {
            std::hint::spin_loop();
            if r.owner.load(SeqCst) == 0 {
                let g = r.try_once(me, false);
                if !matches!(g, Got::No) {
                    self.got(&g);
                    return Ok(g);
                }
            }
        }
        let deadline = deadline(timeout);
        loop {
            // Back to Python every MAX_SLICE at most, to run its signal handlers.
            let until = match deadline {
                Some(d) => d.min(Instant::now() + MAX_SLICE),
                None => Instant::now() + MAX_SLICE,
            };
            let p = SendRef(self as *const RawMutex as usize);
            let g = py.detach(move || {
                let p = p;
                // SAFETY: see `SendRef`: `self` outlives this call.
                let this = unsafe { &*(p.0 as *const RawMutex) };
                this.r().wait(me, until)
            });
            if !matches!(g, Got::No) {
                self.got(&g);
                return Ok(g);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Got::No);
            }
        }
    }

    fn got(&self, g: &Got) -> bool {
        let r = self.r();
        match g {
            Got::No => false,
            Got::Yes => {
                r.take(self.recursive);
                self.died.store(0, Relaxed);
                true
            }
            Got::FromDead(o) => {
                r.take(self.recursive);
                self.died.store(1, SeqCst);
                self.dead_pid.store((o >> 32) as u32, SeqCst);
                true
            }
        }
    }
}

#[pymethods]
impl RawMutex {
    /// A mutex over the 32 bytes at `addr` inside the ctypes object `keep` (zeroed
    /// when new).
    #[new]
    #[pyo3(signature = (keep, addr, recursive=false))]
    fn new(keep: &Bound<'_, PyAny>, addr: usize, recursive: bool) -> PyResult<Self> {
        Ok(RawMutex {
            mem: Mem::new(keep, addr, MUTEX_SIZE, 8)?,
            recursive,
            died: AtomicU32::new(0),
            dead_pid: AtomicU32::new(0),
        })
    }

    /// As `multiprocessing.Lock.acquire`; takes the lock over from a dead holder.
    #[pyo3(signature = (block=true, timeout=None))]
    fn acquire(slf: &Bound<'_, Self>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        let this = slf.get();
        let g = this.acquire_inner(slf.py(), block, timeout)?;
        if let Got::FromDead(o) = g {
            // Say so (a warning: `procpool.HolderDiedWarning`). A warning turned into an
            // error leaves the lock free, for the next acquirer.
            let warn = py::helper(slf.py(), "synchronize", "_holder_died")
                .and_then(|w| w.call1((slf, (o >> 32) as u32)));
            if let Err(e) = warn {
                let _ = this.release();
                return Err(e);
            }
        }
        Ok(!matches!(g, Got::No))
    }

    /// `acquire()`, for `with`.
    fn __enter__(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::acquire(slf, true, None)
    }

    /// `release()`, for `with`.
    fn __exit__(
        &self,
        _t: &Bound<'_, PyAny>,
        _v: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.release()
    }

    /// As `multiprocessing.Lock.release` (`RLock`: only by its holder).
    fn release(&self) -> PyResult<()> {
        let me = token();
        let r = self.r();
        if self.recursive {
            if !self.mine(me) {
                return Err(PyAssertionError::new_err(
                    "attempt to release recursive lock not owned by thread",
                ));
            }
            if r.count.fetch_sub(1, SeqCst) > 1 {
                return Ok(());
            }
        }
        let o = r.owner.load(SeqCst);
        if o == 0 {
            return Err(PyValueError::new_err(
                "semaphore or lock released too many times",
            ));
        }
        r.thread.store(0, Relaxed);
        if r.owner.compare_exchange(o, 0, SeqCst, SeqCst).is_err() {
            return Err(PyValueError::new_err(
                "semaphore or lock released too many times",
            ));
        }
        if r.waiters.load(SeqCst) > 0 {
            r.seq.fetch_add(1, SeqCst);
            futex_wake(r.seq, 1);
        }
        Ok(())
    }

    /// Whether the calling thread holds it.
    fn _is_mine(&self) -> bool {
        self.mine(token())
    }

    /// Recursion depth held by the calling thread (0 if it does not hold it).
    fn _count(&self) -> u32 {
        if !self.mine(token()) {
            return 0;
        }
        if self.recursive {
            self.r().count.load(SeqCst)
        } else {
            1
        }
    }

    /// Whether it is held (by anyone).
    fn _is_locked(&self) -> bool {
        self.r().owner.load(SeqCst) != 0
    }

    /// Pid of the process holding it, 0 if free.
    fn _owner_pid(&self) -> u32 {
        (self.r().owner.load(SeqCst) >> 32) as u32
    }

    /// Whether the calling thread's last successful acquire took the lock from a
    /// process that had died holding it.
    #[getter]
    fn holder_died(&self) -> bool {
        self.died.load(SeqCst) != 0
    }

    /// The pid of that dead holder (0 if the last acquire was an ordinary one).
    #[getter]
    fn dead_holder_pid(&self) -> u32 {
        if self.holder_died() {
            self.dead_pid.load(SeqCst)
        } else {
            0
        }
    }

    /// How many times, ever, the lock was taken from a dead holder (any process).
    #[getter]
    fn _deaths(&self) -> u32 {
        self.r().deaths.load(SeqCst)
    }
}

// ---- counters and wait words ----------------------------------------------------------

/// A 32-bit word in shared memory that threads of any process can sleep on (a futex):
/// the building block of `Semaphore`, `Event`, `Condition` and `Barrier`.
#[pyclass(module = "procpool._core", frozen)]
#[derive(Debug)]
pub(crate) struct Futex {
    mem: Mem,
}

struct SendWord(usize);
// SAFETY: the word lives in memory the `Futex` keeps mapped while the call runs.
unsafe impl Send for SendWord {}

#[pymethods]
impl Futex {
    /// The word at `addr` inside the ctypes object `keep` (4-aligned).
    #[new]
    fn new(keep: &Bound<'_, PyAny>, addr: usize) -> PyResult<Self> {
        Ok(Futex {
            mem: Mem::new(keep, addr, 4, 4)?,
        })
    }

    /// The word's value.
    fn load(&self) -> u32 {
        self.mem.u32_at(0).load(SeqCst)
    }

    /// Sets the word.
    fn store(&self, v: u32) {
        self.mem.u32_at(0).store(v, SeqCst)
    }

    /// Adds `n` (wrapping); returns the value before.
    fn add(&self, n: i64) -> u32 {
        self.mem.u32_at(0).fetch_add(n as u32, SeqCst)
    }

    /// Subtracts one if the word is above zero: whether it did.
    fn try_dec(&self) -> bool {
        self.mem
            .u32_at(0)
            .fetch_update(SeqCst, SeqCst, |v| v.checked_sub(1))
            .is_ok()
    }

    /// Adds one unless the word is `limit` already: whether it did.
    fn inc_below(&self, limit: u32) -> bool {
        self.mem
            .u32_at(0)
            .fetch_update(SeqCst, SeqCst, |v| (v < limit).then_some(v + 1))
            .is_ok()
    }

    /// Sleeps while the word is `expected`, at most `timeout` seconds (one slice of
    /// at most 0.1 s if `None`), the GIL released: `False` on timeout, `True` otherwise
    /// (woken, the word changed, or a signal came). The caller loops.
    #[pyo3(signature = (expected, timeout=None))]
    fn wait(&self, py: Python<'_>, expected: u32, timeout: Option<f64>) -> PyResult<bool> {
        let t = match timeout {
            Some(t) if t.is_finite() && t > 0.0 => Duration::from_secs_f64(t.min(1e6)),
            Some(_) => return Ok(false),
            None => MAX_SLICE,
        };
        let w = SendWord(self.mem.ptr);
        let woke = py.detach(move || {
            let w = w;
            // SAFETY: see `SendWord`.
            let word = unsafe { &*(w.0 as *const AtomicU32) };
            futex_wait(word, expected, t)
        });
        py.check_signals()?;
        Ok(woke)
    }

    /// Wakes at most `n` sleepers (all when `n` is negative).
    #[pyo3(signature = (n=-1))]
    fn wake(&self, n: i64) {
        let n = if n < 0 {
            i32::MAX
        } else {
            n.min(i32::MAX as i64) as i32
        };
        futex_wake(self.mem.u32_at(0), n);
    }
}

/// This process's token (see the module docs).
#[pyfunction]
pub(crate) fn _token() -> u64 {
    token()
}

/// Whether the process a token names still runs.
#[pyfunction]
pub(crate) fn _alive(token: u64) -> bool {
    alive(token)
}

/// Adds this module's classes and functions to `_core`.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RawMutex>()?;
    m.add_class::<Futex>()?;
    m.add_function(wrap_pyfunction!(_token, m)?)?;
    m.add_function(wrap_pyfunction!(_alive, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_or_zombie_child_is_not() {
        assert!(alive(token()));
        assert_eq!((token() >> 32) as u32, std::process::id());
        assert!(!alive(0));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap_or(0);
        let t = (u64::from(pid) << 32) | u64::from(start);
        // Exited, not yet reaped: a zombie is not alive.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!alive(t));
        child.wait().unwrap();
        assert!(!alive(t));
        // The same pid with another start time is another process.
        let me = token();
        assert!(!alive(me ^ 1));
    }

    #[test]
    fn stat_reads_names_with_spaces_and_parentheses() {
        // Our own name is plain; the parser looks for the last ')' whatever the name.
        let (state, start) = stat(std::process::id()).unwrap();
        assert!(state.is_ascii_uppercase());
        assert_eq!(start, token() as u32);
    }
}
