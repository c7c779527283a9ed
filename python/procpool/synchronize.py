"""Locks, semaphores, events, conditions and barriers shared by procpool processes.

The classes of :mod:`multiprocessing.synchronize`, with its API, in shared memory
(memfds) that procpool processes and pool workers receive with their arguments: pass a
``procpool.Lock`` to ``Pool.map``/``apply``/``imap``, in a pool's ``initargs`` or to a
``procpool.Process``, and every process uses the same lock. Waiting processes sleep on a
futex (no polling thread, no semaphore files).

Better than the standard library where a process dies:

* **A lock whose holder dies is not lost.** ``Lock`` and ``RLock`` record the process
  holding them. A process that waits for the lock looks, every few milliseconds of
  waiting, whether the holder still runs; when it has died (killed, crashed, exited
  without releasing), the waiter takes the lock over. ``acquire()`` then returns ``True``
  as usual, sets ``lock.holder_died`` (``True`` until that handle's next acquire) and
  ``lock.dead_holder_pid``, and issues a :class:`HolderDiedWarning`: the data the lock
  guarded may be half-updated. (With the warning turned into an error, ``acquire``
  raises it and leaves the lock free.) The standard library's lock stays taken forever.
* **Condition**: a waiter that is killed does not block ``notify`` (the standard
  library's ``notify`` waits for the woken process to acknowledge, forever if it died);
  it may make one later ``wait`` return early, as a spurious wake-up: use ``wait_for``.
  A process killed while holding the condition's lock is the lock's case above.
* **Barrier**: a party killed while it waits at the barrier breaks it: the others get
  :class:`threading.BrokenBarrierError` within about 0.1 s instead of waiting forever.
  (A party killed before it reaches the barrier cannot be told from a slow one: give a
  ``timeout``.)
* **BoundedSemaphore** is a resource limit: the permits a process holds when it dies
  go back to the semaphore (looked at by processes that have to wait). A plain
  ``Semaphore`` is a counter with no owners (one process may release what another
  acquired), so a dead process's permits stay taken, as in the standard library.

Example::

    import procpool

    def add(args):
        counter, lock = args
        for _ in range(1000):
            with lock:
                counter.value += 1

    if __name__ == "__main__":
        counter = procpool.RawValue("i", 0)
        lock = procpool.Lock()
        with procpool.Pool(4) as pool:
            pool.map(add, [(counter, lock)] * 4)
        assert counter.value == 4000
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import warnings
from threading import BrokenBarrierError

from . import _core, _heap

__all__ = [
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Condition",
    "Barrier",
    "BrokenBarrierError",
    "HolderDiedWarning",
]

_MUTEX = 32
_SLICE = 0.1
#: The largest value of a semaphore, as the standard library's (``SEM_VALUE_MAX``):
#: the count is a 32-bit word, which must never wrap to zero.
SEM_VALUE_MAX = 0x7FFFFFFF


class HolderDiedWarning(RuntimeWarning):
    """A lock was taken over from a process that died holding it: what it guarded may
    be half-updated. ``pid`` is the dead holder's process id."""

    def __init__(self, message: str, pid: int = 0) -> None:
        super().__init__(message)
        self.pid = pid


def _holder_died(lock, pid: int) -> None:
    warnings.warn(
        HolderDiedWarning(
            f"{type(lock).__name__} taken over from process {pid}, which died holding it: "
            "what it guarded may be half-updated",
            pid,
        ),
        stacklevel=3,
    )


def _words(block, fmt: str):
    return memoryview(block.view(ctypes.c_char * block.size)).cast("B").cast(fmt)


def _futex(block, offset: int):
    keep = block.view(ctypes.c_char * block.size)
    return _core.Futex(keep, block.address + offset)


def _owner_name(pid: int) -> str:
    if pid == 0:
        return "None"
    if pid == os.getpid():
        import multiprocessing

        return multiprocessing.current_process().name
    return f"pid {pid}"


class _Mutex(_core.RawMutex):
    _recursive = False

    def __new__(cls, *, ctx=None, _block=None):
        block = _block if _block is not None else _heap.alloc(_MUTEX)
        keep = block.view(ctypes.c_char * _MUTEX)
        self = super().__new__(cls, keep, block.address, cls._recursive)
        self._block = block
        return self

    def __init__(self, *, ctx=None, _block=None) -> None:
        pass

    def __reduce__(self):
        return _rebuild, (type(self), self._block)


def _rebuild(cls, block):
    return cls(_block=block)


class Lock(_Mutex):
    """A non-recursive lock shared by processes, as :class:`multiprocessing.Lock`
    (``acquire(block=True, timeout=None)``, ``release()``, ``with``), robust to the
    death of its holder: see the module's docs.

    Example::

        lock = procpool.Lock()
        with lock:
            pass                      # one process at a time
        if lock.acquire(timeout=1.0):
            try:
                if lock.holder_died:  # the last holder was killed inside
                    print("checking what it guarded")
            finally:
                lock.release()
    """

    def __repr__(self) -> str:
        return f"<Lock(owner={_owner_name(self._owner_pid())})>"


class RLock(_Mutex):
    """A recursive lock shared by processes, as :class:`multiprocessing.RLock`: the
    thread holding it may acquire it again; each acquire needs its release. Robust to
    the death of its holder, as :class:`Lock`.

    Example::

        lock = procpool.RLock()
        with lock:
            with lock:
                pass
    """

    _recursive = True

    def __repr__(self) -> str:
        pid = self._owner_pid()
        if pid == 0:
            return "<RLock(None, 0)>"
        return f"<RLock({_owner_name(pid)}, {self._count() or 'unknown'})>"


class Semaphore:
    """A counter of permits shared by processes, as :class:`multiprocessing.Semaphore`:
    ``acquire(block=True, timeout=None)`` takes one (waiting while there is none),
    ``release()`` gives one; ``get_value()``. It has no owners, so the permits a killed
    process took stay taken (use :class:`BoundedSemaphore` for a resource limit that
    survives a holder's death).

    Example::

        sem = procpool.Semaphore(2)
        with sem:
            pass                      # at most two processes here
    """

    # Layout: count u32 (futex), waiters u32, bound u32, pad; then (bounded) the
    # holder table.
    def __init__(self, value: int = 1, *, ctx=None, _block=None, _bound: int = 0) -> None:
        if _block is None:
            if value < 0:
                raise ValueError("semaphore initial value must be >= 0")
            if value > SEM_VALUE_MAX:
                raise OverflowError(
                    f"semaphore initial value must be at most {SEM_VALUE_MAX}, not {value}"
                )
            _block = _heap.alloc(self._size(value if _bound else 0))
            _words(_block, "I")[2] = _bound
            _words(_block, "I")[0] = value
        self._setup(_block)

    @staticmethod
    def _size(bound: int) -> int:
        return 16

    def _setup(self, block) -> None:
        self._block = block
        self._count = _futex(block, 0)
        self._waiters = _futex(block, 4)
        self._bound = _words(block, "I")[2]

    def __reduce__(self):
        return _rebuild_sem, (type(self), self._block)

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        if self._count.try_dec():
            return True
        if not block:
            return self._recover() and self._count.try_dec()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        self._waiters.add(1)
        try:
            while True:
                if self._count.try_dec():
                    return True
                if deadline is None:
                    woke = self._count.wait(0, None)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    woke = self._count.wait(0, min(left, _SLICE))
                if not woke:
                    self._recover()
        finally:
            self._waiters.add(-1)

    def _recover(self) -> bool:
        """Gives back the permits of dead holders (bounded only): whether any came."""
        return False

    def release(self) -> None:
        if not self._count.inc_below(SEM_VALUE_MAX):
            raise ValueError("semaphore or lock released too many times")
        if self._waiters.load():
            self._count.wake(1)

    def get_value(self) -> int:
        return self._count.load()

    def _is_zero(self) -> bool:
        return self._count.load() == 0

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self.get_value()})>"


def _rebuild_sem(cls, block):
    s = cls.__new__(cls)
    s._setup(block)
    return s


class BoundedSemaphore(Semaphore):
    """A :class:`Semaphore` that refuses to be released above its initial value
    (``ValueError``), as :class:`multiprocessing.BoundedSemaphore`. It is a resource
    limit: the permits a process holds when it dies go back to it (each process's
    acquires minus releases are counted in shared memory, for up to 1024 processes
    at a time; a process that has to wait returns the permits of dead holders).

    Example::

        limit = procpool.BoundedSemaphore(4)
        with limit:
            pass                      # at most four holders; a dead one's permit returns
    """

    _TABLE = 1024

    def __init__(self, value: int = 1, *, ctx=None, _block=None) -> None:
        super().__init__(value, ctx=ctx, _block=_block, _bound=max(value, 0))

    @classmethod
    def _slots(cls, bound: int) -> int:
        return min(bound, cls._TABLE)

    @staticmethod
    def _size(bound: int) -> int:
        # Holder table: `slots` pairs (token u64, permits u64), guarded by a mutex.
        return 16 + _MUTEX + 16 * BoundedSemaphore._slots(bound)

    def _setup(self, block) -> None:
        super()._setup(block)
        self._guard = Lock(_block=_heap.Block(block.arena, block.offset + 16, _MUTEX))
        n = self._slots(self._bound)
        self._table = _words(block, "Q")[(16 + _MUTEX) // 8 : (16 + _MUTEX) // 8 + 2 * n]

    def _note(self, delta: int) -> None:
        """Counts a permit taken (+1) or given back (-1) by this process."""
        me = _core._token()
        t = self._table
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HolderDiedWarning)
            self._guard.acquire()
        try:
            free = -1
            for i in range(0, len(t), 2):
                if t[i] == me:
                    n = t[i + 1] + delta
                    if n <= 0:
                        t[i + 1] = 0
                        t[i] = 0
                    else:
                        t[i + 1] = n
                    return
                if free < 0 and t[i] == 0:
                    free = i
            if delta > 0 and free >= 0:
                t[free + 1] = delta
                t[free] = me
        finally:
            self._guard.release()

    def _recover(self) -> bool:
        t = self._table
        back = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HolderDiedWarning)
            self._guard.acquire()
        try:
            for i in range(0, len(t), 2):
                tok = t[i]
                if tok and not _core._alive(tok):
                    back += t[i + 1]
                    t[i + 1] = 0
                    t[i] = 0
            # Never above the bound (a permit another process gave back for it).
            for _ in range(back):
                if not self._count.inc_below(self._bound):
                    break
        finally:
            self._guard.release()
        if back:
            self._count.wake(-1)
        return back > 0

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        ok = super().acquire(block, timeout)
        if ok:
            self._note(1)
        return ok

    def release(self) -> None:
        if not self._count.inc_below(self._bound):
            raise ValueError("semaphore or lock released too many times")
        self._note(-1)
        if self._waiters.load():
            self._count.wake(1)

    def __repr__(self) -> str:
        return f"<BoundedSemaphore(value={self.get_value()}, maxvalue={self._bound})>"


class Event:
    """A flag processes can wait for, as :class:`multiprocessing.Event`: ``set()``,
    ``clear()``, ``is_set()``, ``wait(timeout=None)``.

    Example::

        ready = procpool.Event()
        ready.set()                   # in one process
        assert ready.wait(timeout=1)  # in another
    """

    def __init__(self, *, ctx=None, _block=None) -> None:
        self._setup(_block if _block is not None else _heap.alloc(8))

    def _setup(self, block) -> None:
        self._block = block
        self._flag = _futex(block, 0)
        self._waiters = _futex(block, 4)

    def __reduce__(self):
        return _rebuild_sem, (type(self), self._block)

    def is_set(self) -> bool:
        return self._flag.load() == 1

    def set(self) -> None:
        self._flag.store(1)
        if self._waiters.load():
            self._flag.wake(-1)

    def clear(self) -> None:
        self._flag.store(0)

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag.load():
            return True
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        self._waiters.add(1)
        try:
            while not self._flag.load():
                if deadline is None:
                    self._flag.wait(0, None)
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._flag.wait(0, min(left, _SLICE))
            return self._flag.load() == 1
        finally:
            self._waiters.add(-1)

    def __repr__(self) -> str:
        status = "set" if self.is_set() else "unset"
        return f"<{type(self).__qualname__} at {id(self):#x} {status}>"


_MASK = 0xFFFFFFFF


class _Gauge:
    __slots__ = ("get_value",)

    def __init__(self, fn) -> None:
        self.get_value = fn


class Condition:
    """A condition variable shared by processes, as :class:`multiprocessing.Condition`:
    ``wait(timeout)``, ``wait_for(predicate, timeout)``, ``notify(n=1)``,
    ``notify_all()``, used with its lock held (``with cond:``). ``lock`` is a
    :class:`Lock` or :class:`RLock` of procpool (default: a new ``RLock``).

    Example::

        box = procpool.Value("i", 1)
        cond = procpool.Condition()
        with cond:
            cond.wait_for(lambda: box.value > 0, timeout=5)
            cond.notify_all()
    """

    # Layout: wakeup sequence u32 (futex), entered u32, consumed u32, pad.
    def __init__(self, lock=None, *, ctx=None, _block=None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, _Mutex):
            raise TypeError(
                f"procpool.Condition needs a procpool Lock or RLock, not {type(lock).__name__}"
            )
        self._setup(lock, _block if _block is not None else _heap.alloc(16))

    def _setup(self, lock, block) -> None:
        self._lock = lock
        self._block = block
        self._seq = _futex(block, 0)
        self._st = _words(block, "I")
        self.acquire = lock.acquire
        self.release = lock.release

    def __reduce__(self):
        return _rebuild_cond, (self._lock, self._block)

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __repr__(self) -> str:
        st = self._st
        sleeping = (st[1] - self._seq.load()) & _MASK
        return f"<Condition({self._lock!r}, {sleeping})>"

    # The standard library's counters, by the same names, for code that inspects them
    # (CPython's tests do): waiters not yet notified; 0; notifications not yet taken.
    @property
    def _sleeping_count(self):
        return _Gauge(lambda: (self._st[1] - self._seq.load()) & _MASK)

    @property
    def _woken_count(self):
        return _Gauge(lambda: 0)

    @property
    def _wait_semaphore(self):
        return _Gauge(lambda: (self._seq.load() - self._st[2]) & _MASK)

    def _ticket(self, mine: int) -> bool:
        """Under the lock: takes a wake-up issued after this waiter entered."""
        wake = self._seq.load()
        if wake != mine and (wake - self._st[2]) & _MASK:
            self._st[2] = (self._st[2] + 1) & _MASK
            return True
        return False

    def wait(self, timeout: float | None = None) -> bool:
        assert self._lock._is_mine(), "must acquire() condition before using wait()"
        st = self._st
        st[1] = (st[1] + 1) & _MASK
        mine = val = self._seq.load()
        depth = self._lock._count()
        for _ in range(depth):
            self._lock.release()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        woken = False
        held = False
        try:
            while True:
                if deadline is None:
                    self._seq.wait(val, None)
                else:
                    left = deadline - time.monotonic()
                    if left > 0:
                        self._seq.wait(val, min(left, _SLICE))
                self._lock.acquire()
                held = True
                if self._ticket(mine):
                    woken = True
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    # Timed out: leave as if a wake-up came and was used (so that
                    # notify no longer counts this waiter).
                    self._seq.add(1)
                    st[2] = (st[2] + 1) & _MASK
                    return False
                val = self._seq.load()
                self._lock.release()
                held = False
        finally:
            if not held:
                self._lock.acquire()
            for _ in range(depth - 1):
                self._lock.acquire()
            del woken

    def wait_for(self, predicate, timeout: float | None = None):
        result = predicate()
        if result:
            return result
        if timeout is not None:
            endtime = time.monotonic() + timeout
        else:
            endtime = None
            waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        assert self._lock._is_mine(), "lock is not owned"
        sleeping = (self._st[1] - self._seq.load()) & _MASK
        k = min(n, sleeping)
        if k > 0:
            self._seq.add(k)
            self._seq.wake(-1)

    def notify_all(self) -> None:
        self.notify(_MASK)


def _rebuild_cond(lock, block):
    c = Condition.__new__(Condition)
    c._setup(lock, block)
    return c


class Barrier:
    """A barrier for ``parties`` processes (or threads), as
    :class:`multiprocessing.Barrier`: ``wait(timeout=None)`` returns a distinct index in
    ``range(parties)`` once all have arrived (running ``action`` first, in one of them);
    ``abort()``, ``reset()``, ``parties``, ``n_waiting``, ``broken``;
    :class:`threading.BrokenBarrierError` when it breaks. A party killed while waiting
    breaks it (see the module's docs).

    Example::

        barrier = procpool.Barrier(1, timeout=30)
        assert barrier.wait() == 0   # with 4 parties, each of four processes waits
    """

    # Layout: seq u32 (futex) | pad | gen, count, broken, outcomes[8] (i64) | mutex |
    # tokens[parties] (u64).
    _HEAD = 8 + 8 * 11

    def __init__(self, parties: int, action=None, timeout=None, *, ctx=None) -> None:
        if parties < 1:
            raise ValueError("parties must be > 0")
        block = _heap.alloc(self._HEAD + _MUTEX + 8 * parties)
        self._setup(parties, action, timeout, block)

    def _setup(self, parties, action, timeout, block) -> None:
        self._parties = parties
        self._action = action
        self._timeout = timeout
        self._block = block
        self._seq = _futex(block, 0)
        words = _words(block, "q")
        self._st = words[1:12]
        self._guard = Lock(_block=_heap.Block(block.arena, block.offset + self._HEAD, _MUTEX))
        start = (self._HEAD + _MUTEX) // 8
        self._tokens = _words(block, "Q")[start : start + parties]

    def __reduce__(self):
        return _rebuild_barrier, (self._parties, self._action, self._timeout, self._block)

    def _lock(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HolderDiedWarning)
            self._guard.acquire()
        if self._guard.holder_died:
            # A party died inside the barrier's bookkeeping: it is broken.
            self._st[2] = 1

    def _bump(self) -> None:
        self._seq.add(1)
        self._seq.wake(-1)

    def _break(self) -> None:
        self._st[2] = 1
        self._bump()

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            timeout = self._timeout
        st = self._st
        self._lock()
        try:
            if st[2]:
                raise BrokenBarrierError
            gen = st[0]
            index = st[1]
            st[1] = index + 1
            self._tokens[index] = _core._token()
            if index + 1 == self._parties:
                try:
                    if self._action:
                        self._action()
                except BaseException:
                    self._break()
                    raise
                st[3 + gen % 8] = 1
                st[1] = 0
                st[0] = gen + 1
                self._bump()
                return index
            val = self._seq.load()
        finally:
            self._guard.release()
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if deadline is None:
                woke = self._seq.wait(val, None)
            else:
                left = deadline - time.monotonic()
                woke = left > 0 and self._seq.wait(val, min(left, _SLICE))
            self._lock()
            try:
                if st[0] != gen:
                    if st[3 + gen % 8] == 1:
                        return index
                    raise BrokenBarrierError
                if st[2]:
                    raise BrokenBarrierError
                if deadline is not None and time.monotonic() >= deadline:
                    self._break()
                    raise BrokenBarrierError
                if not woke and any(
                    t and not _core._alive(t) for t in self._tokens[: st[1]]
                ):
                    self._break()
                    raise BrokenBarrierError
                val = self._seq.load()
            finally:
                self._guard.release()

    def reset(self) -> None:
        st = self._st
        self._lock()
        try:
            if st[1] > 0 or st[2]:
                gen = st[0]
                st[3 + gen % 8] = 0
                st[0] = gen + 1
            st[1] = 0
            st[2] = 0
            self._bump()
        finally:
            self._guard.release()

    def abort(self) -> None:
        self._lock()
        try:
            self._break()
        finally:
            self._guard.release()

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        return int(self._st[1]) if not self._st[2] else 0

    @property
    def broken(self) -> bool:
        return bool(self._st[2])

    def __repr__(self) -> str:
        return (
            f"<Barrier(parties={self._parties}, n_waiting={self.n_waiting}, "
            f"broken={self.broken})>"
        )


def _rebuild_barrier(parties, action, timeout, block):
    b = Barrier.__new__(Barrier)
    b._setup(parties, action, timeout, block)
    return b


del threading
