"""Shared memory for ``Value``, ``Array`` and the locks (private).

Memory comes from *arenas*: memfds (memory with no name in any file system) mapped
read-write and shared. Small objects are cut from 64 KiB arenas one after the other;
an object of 16 KiB or more gets an arena of its own. An arena lives while any object
cut from it lives (each ctypes object over it keeps its mapping), and while it is the
arena new objects are cut from; then its mapping and descriptor are closed. Memory is
never handed out twice, so a process that still holds an object (a worker, say) never
sees it reused for another.

An object is sent to another procpool process as ``(arena id, arena size, offset)`` and
its arena's descriptor (see ``_passfd``); the receiver maps each arena once and keeps the
mapping while objects of it live, plus the last :data:`KEEP` arenas it received (so that a
value sent with each of many tasks is not mapped again for each).
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import threading
import sys
import weakref

#: mmap keeps no duplicate of the descriptor where it can (Python 3.13+).
_NO_FD = {"trackfd": False} if sys.version_info >= (3, 13) else {}

#: Size of an arena for small objects.
ARENA_SIZE = 64 * 1024
#: Objects at least this large get an arena of their own.
LARGE = 16 * 1024
#: Alignment of every object.
ALIGN = 16
#: Arenas a receiving process keeps mapped after their last object is gone.
KEEP = 16
#: Name of an arena's memfd, followed by its id in hex (a worker reads it back from
#: the descriptors its initializer's arguments arrived with).
NAME = "procpool-arena-"


class Arena:
    """One memfd and its mapping. Objects hold it through ``Block``."""

    __slots__ = ("id", "size", "fd", "mm", "base", "_fin", "__weakref__")

    def __init__(self, size: int, fd: int | None = None, id: int | None = None) -> None:
        if fd is None:
            id = _new_id()
            fd = os.memfd_create(f"{NAME}{id:016x}", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                os.close(fd)
                raise
        self.id = id
        self.size = size
        self.fd = fd
        try:
            self.mm = mmap.mmap(fd, size, **_NO_FD)
        except BaseException:
            os.close(fd)
            raise
        self.base = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        self._fin = weakref.finalize(self, os.close, fd)

    def forget_fd(self) -> None:
        """Closes the descriptor now and keeps the mapping only."""
        if self._fin.detach() is not None:
            os.close(self.fd)
        self.fd = -1

    def __reduce__(self):
        from . import _passfd

        if self.fd < 0:
            raise RuntimeError(
                "this shared memory came to this worker in its pool's initargs and cannot "
                "be sent on from here: pass it to the inner pool as a task argument instead"
            )

        slot = _passfd.attach(self.fd, ("arena", self.id), "procpool shared memory")
        return _rebuild_arena, (slot, self.id, self.size)


def _new_id() -> int:
    """A new arena id: random per process (a process forked without ``os.fork``, as the
    template forks workers, reseeds on its first id), then counting."""
    global _count, _seed, _seed_pid
    with _id_lock:
        pid = os.getpid()
        if pid != _seed_pid:
            _seed, _seed_pid, _count = int.from_bytes(os.urandom(8), "little"), pid, 0
        _count += 1
        return _seed ^ _count


_seed = 0
_seed_pid = 0
_count = 0
_lock = threading.Lock()
_id_lock = threading.Lock()
_current: Arena | None = None
_used = 0
#: Arenas mapped here, by id (made here or received).
_arenas: "weakref.WeakValueDictionary[int, Arena]" = weakref.WeakValueDictionary()
#: The last arenas received, kept mapped.
_recent: "collections.OrderedDict[int, Arena]" = collections.OrderedDict()


def _after_fork() -> None:
    # A forked child must not cut objects from its parent's arena: both would hand out
    # the same memory.
    global _current, _used, _lock, _id_lock, _seed_pid
    _current = None
    _used = 0
    _lock = threading.Lock()
    _id_lock = threading.Lock()
    _seed_pid = 0


os.register_at_fork(after_in_child=_after_fork)


class Block:
    """``size`` bytes at ``offset`` of ``arena``."""

    __slots__ = ("arena", "offset", "size")

    def __init__(self, arena: Arena, offset: int, size: int) -> None:
        self.arena = arena
        self.offset = offset
        self.size = size

    @property
    def address(self) -> int:
        return self.arena.base + self.offset

    def view(self, ctype):
        """A ctypes object of type ``ctype`` over this block."""
        return ctype.from_buffer(self.arena.mm, self.offset)

    def __reduce__(self):
        return Block, (self.arena, self.offset, self.size)


def alloc(size: int) -> Block:
    """A new block of ``size`` bytes, zeroed, in shared memory."""
    global _current, _used
    size = max(size, 1)
    if size >= LARGE:
        total = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        return Block(_register(Arena(total)), 0, size)
    pid = os.getpid()
    with _lock:
        if _current is None or _used + size > _current.size or _owner != pid:
            _set_current(_register(Arena(ARENA_SIZE)), pid)
        off = _used
        _used = (_used + size + ALIGN - 1) // ALIGN * ALIGN
        return Block(_current, off, size)


_owner = 0


def _set_current(arena: Arena, pid: int) -> None:
    global _current, _used, _owner
    _current, _used, _owner = arena, 0, pid


def _register(arena: Arena) -> Arena:
    _arenas[arena.id] = arena
    return arena


def _rebuild_arena(slot: int, id: int, size: int) -> Arena:
    from . import _passfd

    a = _arenas.get(id)
    if a is None:
        fd = _passfd.received(slot)
        a = _register(Arena(size, fd, id))
    with _lock:
        _recent[id] = a
        _recent.move_to_end(id)
        while len(_recent) > KEEP:
            _recent.popitem(last=False)
    return a


def adopt(fd: int, id: int) -> Arena:
    """Maps an arena this worker got at its start (for its initializer) and keeps it for
    the life of the process; ``fd`` is closed by the engine soon after."""
    a = _arenas.get(id)
    if a is None:
        a = _register(Arena(os.fstat(fd).st_size, os.dup(fd), id))
    _adopted.append(a)
    return a


#: Arenas adopted at the worker's start.
_adopted: list = []


def arena_of(obj) -> Block | None:
    """The block of a ctypes object made by :func:`procpool.RawValue` or
    :func:`procpool.RawArray` (``None`` for any other object)."""
    return getattr(obj, "_procpool_block", None)
