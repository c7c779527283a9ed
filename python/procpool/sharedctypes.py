"""ctypes objects in shared memory, as :mod:`multiprocessing.sharedctypes`.

``Value``/``Array`` (with a lock) and ``RawValue``/``RawArray`` (without) make ctypes
objects in memory shared with the procpool processes and pool workers they are sent to
(as task arguments, ``initargs`` or ``Process`` arguments): a write in one process is
seen by all. Type codes are those of :mod:`array` (``'i'``, ``'d'``, ``'c'``...), or a
ctypes type. A NumPy view works in place: ``np.frombuffer(arr.get_obj(), dtype=...)``.

Differences from the standard library:

* they can be sent to pool workers as task arguments (the standard library raises
  ``RuntimeError``: "should only be shared between processes through inheritance");
* the default lock is a procpool ``RLock``, robust to its holder's death
  (see :mod:`procpool.synchronize`);
* ``RawValue``/``RawArray`` return instances of a subclass of the ctypes type asked for
  (``isinstance`` holds; ``type(x) is ctypes.c_int`` does not): the subclass is what
  makes them travel by reference instead of by copy.

Example::

    import procpool

    def work(i, total):
        with total.get_lock():
            total.value += i

    if __name__ == "__main__":
        total = procpool.Value("q", 0)
        with procpool.Pool(2) as pool:
            pool.starmap(work, [(i, total) for i in range(100)])
        assert total.value == sum(range(100))
"""

from __future__ import annotations

import ctypes

from . import _heap
from .synchronize import RLock

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized"]

typecode_to_type = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}

_shared_types: dict = {}


def _shared_type(type_):
    """A subclass of ``type_`` whose instances pickle as a reference to their shared
    memory."""
    t = _shared_types.get(type_)
    if t is None:
        ns = {"__reduce__": _reduce_raw, "__module__": __name__, "__slots__": ()}
        if issubclass(type_, ctypes._SimpleCData):
            ns["__repr__"] = _repr_simple
        t = type(type_.__name__, (type_,), ns)
        t.__qualname__ = type_.__qualname__
        _shared_types[type_] = t
    return t


def _repr_simple(obj) -> str:
    return f"{type(obj).__name__}({obj.value!r})"


def _describe(type_):
    """What rebuilds a ctypes type: itself, or (element, length) for an array type."""
    if issubclass(type_, ctypes.Array):
        return (_describe(type_._type_), type_._length_)
    return type_


def _undescribe(desc):
    if isinstance(desc, tuple):
        return _undescribe(desc[0]) * desc[1]
    return desc


def _base_type(obj):
    t = type(obj)
    return t.__mro__[1] if t in _shared_types.values() else t


def _reduce_raw(obj):
    return _rebuild_raw, (_describe(_base_type(obj)), obj._procpool_block)


def _rebuild_raw(desc, block):
    return _view(_undescribe(desc), block)


def _view(type_, block):
    obj = block.view(_shared_type(type_))
    obj._procpool_block = block
    return obj


def _new(type_):
    return _view(type_, _heap.alloc(ctypes.sizeof(type_)))


def RawValue(typecode_or_type, *args):
    """A ctypes object in shared memory, without a lock.

    Example::

        flag = procpool.RawValue("i", 0)
        flag.value = 1
    """
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    obj = _new(type_)
    obj.__init__(*args)
    return obj


def RawArray(typecode_or_type, size_or_initializer):
    """A ctypes array in shared memory, without a lock.

    Example::

        buf = procpool.RawArray("d", 1000)
        buf[0] = 1.5
    """
    type_ = typecode_to_type.get(typecode_or_type, typecode_or_type)
    if isinstance(size_or_initializer, int):
        return _new(type_ * size_or_initializer)
    init = size_or_initializer
    obj = _new(type_ * len(init))
    obj.__init__(*init)
    return obj


def _lock_for(lock):
    if lock in (True, None):
        return RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


def Value(typecode_or_type, *args, lock=True, ctx=None):
    """A ctypes object in shared memory with a lock (``lock=True``: a new
    :class:`procpool.RLock`; ``lock=False``: none, the raw object is returned; or the
    lock to use). ``.value`` takes the lock; ``get_lock()``, ``get_obj()``.

    Example::

        counter = procpool.Value("i", 0)
        with counter.get_lock():
            counter.value += 1
    """
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock))


def Array(typecode_or_type, size_or_initializer, *, lock=True, ctx=None):
    """A ctypes array in shared memory with a lock (as :func:`Value`); indexing and
    slicing take the lock; an array of ``'c'`` has ``.value`` and ``.raw``.

    Example::

        arr = procpool.Array("d", [0.0] * 10)
        arr[2:4] = [1.0, 2.0]
        import numpy as np
        view = np.frombuffer(arr.get_obj())     # no copy
    """
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock))


def copy(obj):
    """A copy of the ctypes object ``obj`` (shared or not) in new shared memory, without
    a lock, as :func:`multiprocessing.sharedctypes.copy`.

    Example::

        a = procpool.RawArray("i", [1, 2, 3])
        b = procpool.sharedctypes.copy(a)
        b[0] = 9
        assert (a[0], b[0]) == (1, 9)
    """
    if isinstance(obj, SynchronizedBase):
        raise TypeError("copy() takes a ctypes object; use get_obj() of a synchronized one")
    new = _new(_base_type(obj))
    ctypes.memmove(ctypes.addressof(new), ctypes.addressof(obj), ctypes.sizeof(new))
    return new


def synchronized(obj, lock=None, ctx=None):
    """Wraps a shared ctypes object with a lock (a new ``RLock`` when ``None``)."""
    if isinstance(obj, SynchronizedBase):
        raise TypeError("object already synchronized")
    if lock is None:
        lock = RLock()
    if isinstance(obj, ctypes._SimpleCData):
        return Synchronized(obj, lock)
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    raise TypeError(f"cannot synchronize {type(obj).__name__} objects")


class SynchronizedBase:
    """A shared ctypes object and its lock."""

    def __init__(self, obj, lock) -> None:
        self._obj = obj
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release
        # No-argument calls are the cheapest: `__enter__` takes the lock.
        self._enter = getattr(lock, "__enter__", lock.acquire)

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *args):
        return self._lock.__exit__(*args)

    def __reduce__(self):
        return synchronized, (self._obj, self._lock)

    def get_obj(self):
        return self._obj

    def get_lock(self):
        return self._lock

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj}>"


def _locked_property(name: str) -> property:
    """A property that reads and writes the wrapped object's attribute ``name`` under
    the wrapper's lock (the stdlib builds its own the same way)."""

    def get(self):
        self._enter()
        try:
            return getattr(self._obj, name)
        finally:
            self.release()

    def set(self, v) -> None:
        self._enter()
        try:
            setattr(self._obj, name, v)
        finally:
            self.release()

    return property(get, set)


class Synchronized(SynchronizedBase):
    value = _locked_property("value")


class SynchronizedArray(SynchronizedBase):
    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i):
        self._enter()
        try:
            return self._obj[i]
        finally:
            self.release()

    def __setitem__(self, i, value) -> None:
        self._enter()
        try:
            self._obj[i] = value
        finally:
            self.release()

    def __getslice__(self, start, stop):
        return self[start:stop]

    def __setslice__(self, start, stop, values) -> None:
        self[start:stop] = values


class SynchronizedString(SynchronizedArray):
    value = _locked_property("value")
    raw = _locked_property("raw")
