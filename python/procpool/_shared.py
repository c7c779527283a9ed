"""A read-only value shared with every task, mapped once per worker: :func:`shared`.

``procpool.shared(obj)`` pickles ``obj`` once (protocol 5, every buffer out of band) into
a sealed memfd: memory with no name in any file system, which nobody, its maker
included, can write or resize. The handle it returns is sent with a task as a few bytes
and the memfd's descriptor; a worker maps the memfd read-only, unpickles it the first time
a task reads ``handle.value``, and keeps it for later tasks. A NumPy array (or any object
whose buffers pickle out of band: ``bytes``, ``bytearray``, ``memoryview``, pandas'
columns...) is read in place from the mapping: no copy per worker, and the array is
read-only there (``flags.writeable`` is ``False``).

A worker keeps at most :data:`CACHE_ENTRIES` values and about :data:`CACHE_BYTES`
bytes of them; past that the least recently used goes (it is mapped again if it comes
back). Values held by a running task stay valid whatever the cache does.

Example::

    import numpy as np
    import procpool

    def row_sum(args):
        table, i = args
        return float(table.value[i].sum())    # read in place in the worker

    if __name__ == "__main__":
        table = procpool.shared(np.arange(1_000_000.0).reshape(1000, 1000))
        with procpool.Pool(2) as pool:
            sums = pool.map(row_sum, [(table, i) for i in range(1000)])
        assert sums[1] == float(np.arange(1000.0, 2000.0).sum())
"""

from __future__ import annotations

import collections
import fcntl
import io
import mmap
import os
import struct
import sys
import threading
import weakref

import cloudpickle

__all__ = ["shared", "SharedHandle", "CACHE_ENTRIES", "CACHE_BYTES"]

#: Most values a worker keeps decoded.
CACHE_ENTRIES = 32
#: About the most bytes of values a worker keeps mapped.
CACHE_BYTES = 1 << 30

_MAGIC = b"PPSHARE1"
_HEAD = struct.Struct("<8sQQ")  # magic, pickle length, buffer count
_BUF = struct.Struct("<QQ")  # offset, length
_ALIGN = 64
_NAME = "procpool-value-"

#: mmap keeps no duplicate of the descriptor where it can (Python 3.13+).
_NO_FD = {"trackfd": False} if sys.version_info >= (3, 13) else {}

_lock = threading.Lock()
#: id -> (value, size), most recent last.
_cache: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()
_cached_bytes = 0
#: Values pinned for the life of the worker (its initializer's arguments).
_pinned: dict = {}


class SharedHandle:
    """A handle to a value made by :func:`shared`: ``.value`` is the value (in the
    process that made it, the object itself; elsewhere, the copy decoded once from
    shared memory). Pickles as a few bytes and a descriptor, for procpool tasks only.

    Example::

        h = procpool.shared({"weights": [0.5, 0.25]})
        assert h.value["weights"][0] == 0.5
        assert h.nbytes > 0
    """

    __slots__ = ("_id", "_size", "_fd", "_obj", "_fin", "__weakref__")

    def __init__(self, id: int, size: int, fd: int, obj=None) -> None:
        self._id = id
        self._size = size
        self._fd = fd
        self._obj = obj
        self._fin = weakref.finalize(self, os.close, fd) if fd >= 0 else None

    @property
    def value(self):
        if self._obj is not None:
            return self._obj
        return _decoded(self._id, self._size, self._fd)

    @property
    def nbytes(self) -> int:
        """Size of the shared memory (the pickle and its buffers)."""
        return self._size

    def __reduce__(self):
        from . import _passfd

        if self._fd < 0:
            raise RuntimeError(
                "this shared value was received by this worker and cannot be sent on from "
                "here: make it with procpool.shared() in the process that starts the pool"
            )
        slot = _passfd.attach(self._fd, ("shared", self._id), "procpool.shared")
        return _rebuild, (slot, self._id, self._size)

    def __repr__(self) -> str:
        return f"<procpool.SharedHandle id={self._id:#x} nbytes={self._size}>"


def shared(obj) -> SharedHandle:
    """Puts ``obj`` in sealed shared memory, once; returns a :class:`SharedHandle` to
    pass to tasks (as an argument or in ``initargs``) instead of ``obj``. Raises what
    pickling raises if ``obj`` cannot be pickled, and ``OSError`` if the system refuses
    the memory.

    Example::

        import numpy as np
        h = procpool.shared(np.ones(4))
        assert h.value.sum() == 4.0
    """
    bufs = []

    def keep(pb):
        bufs.append(pb.raw())
        return False

    f = io.BytesIO()
    cloudpickle.Pickler(f, protocol=5, buffer_callback=keep).dump(obj)
    data = f.getvalue()
    table_at = _HEAD.size
    at = table_at + _BUF.size * len(bufs) + len(data)
    spans = []
    for b in bufs:
        at = (at + _ALIGN - 1) // _ALIGN * _ALIGN
        spans.append((at, b.nbytes))
        at += b.nbytes
    size = max(at, 1)
    from . import _heap

    id = _heap._new_id()
    fd = os.memfd_create(f"{_NAME}{id:016x}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        head = _HEAD.pack(_MAGIC, len(data), len(bufs)) + b"".join(
            _BUF.pack(o, n) for o, n in spans
        )
        _pwrite_all(fd, head + data, 0)
        for (o, _n), b in zip(spans, bufs):
            _pwrite_all(fd, b, o)
        fcntl.fcntl(
            fd,
            fcntl.F_ADD_SEALS,
            fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL,
        )
    except BaseException:
        os.close(fd)
        raise
    return SharedHandle(id, size, fd, obj)


def _pwrite_all(fd: int, data, offset: int) -> None:
    mv = memoryview(data).cast("B")
    while mv:
        n = os.pwrite(fd, mv, offset)
        mv = mv[n:]
        offset += n


def _rebuild(slot: int, id: int, size: int) -> SharedHandle:
    with _lock:
        value = _pinned.get(id)
        if value is None and id in _cache:
            _cache.move_to_end(id)
            value = _cache[id][0]
    if value is not None:
        # Decoded here already: no descriptor needed.
        return SharedHandle(id, size, -1, value)
    from . import _passfd

    fd = _passfd.received(slot)
    return SharedHandle(id, size, fd)


def _decode(fd: int, size: int):
    mm = mmap.mmap(fd, size, prot=mmap.PROT_READ, **_NO_FD)
    view = memoryview(mm)
    magic, plen, nbufs = _HEAD.unpack_from(view, 0)
    if magic != _MAGIC:
        raise ValueError("not a procpool shared value (bad header)")
    at = _HEAD.size
    spans = [_BUF.unpack_from(view, at + i * _BUF.size) for i in range(nbufs)]
    at += nbufs * _BUF.size
    data = view[at : at + plen]
    buffers = [view[o : o + n] for o, n in spans]
    import pickle

    return pickle.loads(data, buffers=buffers)


def _decoded(id: int, size: int, fd: int):
    global _cached_bytes
    with _lock:
        hit = _pinned.get(id)
        if hit is not None:
            return hit
        hit = _cache.get(id)
        if hit is not None:
            _cache.move_to_end(id)
            return hit[0]
    if fd < 0:
        raise RuntimeError("a procpool shared value left this worker's cache meanwhile")
    value = _decode(fd, size)
    with _lock:
        _cache[id] = (value, size)
        _cached_bytes += size
        while len(_cache) > 1 and (len(_cache) > CACHE_ENTRIES or _cached_bytes > CACHE_BYTES):
            _, (_, n) = _cache.popitem(last=False)
            _cached_bytes -= n
    return value


def adopt(fd: int, id: int) -> None:
    """In a new worker: decodes a value of its initializer's arguments, for its life."""
    _pinned[id] = _decode(fd, os.fstat(fd).st_size)
