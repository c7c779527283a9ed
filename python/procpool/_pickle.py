"""How values cross the process boundary (private).

Pickle protocol 5. Functions, classes and values that the standard pickler cannot take by
reference (lambdas, closures, anything defined in ``__main__`` or a notebook) go by value
with cloudpickle; importable ones still go by reference. Buffers of at least
``OOB_MIN`` bytes (``bytearray``, ``memoryview``, NumPy arrays, and ``bytes`` items) travel
out of band: the Rust side places them after the pickle stream in the job's payload,
which the engine moves through the worker's shared-memory region when large.

The Rust side (``procpool._core``) frames a pickle and its buffers; this module makes and
reads the pickles.
"""

from __future__ import annotations

import io
import pickle
import traceback
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback
from pickle import PickleBuffer

import cloudpickle

#: Buffers at least this large go out of band.
OOB_MIN = 64 * 1024

#: Payload kinds (first byte of a job's payload).
CHUNK = 0
CALL = 1
INIT = 2

#: Result kinds (first byte of a job's result).
ALL_OK = 0
MIXED = 1


class _BigBytes:
    """A large ``bytes`` item, sent out of band and rebuilt as ``bytes``."""

    __slots__ = ("b",)

    def __init__(self, b: bytes) -> None:
        self.b = b

    def __reduce_ex__(self, protocol):
        return (bytes, (PickleBuffer(self.b),))


def _collector():
    bufs = []

    def cb(pb: PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes >= OOB_MIN:
            bufs.append(raw)
            return False
        return True

    return bufs, cb


def dumps(obj, by_value: bool = True):
    """``(pickle bytes, [out-of-band memoryviews])``; cloudpickle when ``by_value``."""
    bufs, cb = _collector()
    if by_value:
        f = io.BytesIO()
        cloudpickle.Pickler(f, protocol=5, buffer_callback=cb).dump(obj)
        return f.getvalue(), bufs
    return pickle.dumps(obj, protocol=5, buffer_callback=cb), bufs


def dumps_fast(obj):
    """The standard pickler first (fast, by reference), cloudpickle if it refuses."""
    try:
        return dumps(obj, by_value=False)
    except Exception:
        return dumps(obj, by_value=True)


def dumps_func(func) -> bytes:
    """A function's reference (by value when it cannot go by reference)."""
    if not callable(func):
        raise TypeError(f"{type(func).__name__!r} object is not callable")
    data, bufs = dumps(func)
    if bufs:  # a function holding large buffers: keep them in band
        data = cloudpickle.dumps(func, protocol=5)
    return data


def _wrap_big(item):
    if type(item) is bytes and len(item) >= OOB_MIN:
        return _BigBytes(item)
    if type(item) is tuple and any(type(x) is bytes and len(x) >= OOB_MIN for x in item):
        return tuple(_wrap_big(x) for x in item)
    return item


def dumps_items(items: list, big: bool):
    """Pickles a chunk of items: ``(pickle, buffers)``, or, when an item cannot be
    pickled, ``(None, its position in the chunk, the error)``. ``big``: some items are
    (or hold) large ``bytes``, to be sent out of band."""
    if big:
        items = [_wrap_big(x) for x in items]
    try:
        return dumps(items)
    except Exception as e:
        first = e
    for i, x in enumerate(items):
        try:
            dumps(x)
        except Exception as e:
            return None, i, e
    return None, 0, first


def split_items(data, bufs, fds=None) -> list:
    """The items of a chunk's pickle, each pickled alone as a chunk of one:
    ``[(pickle, buffers), ...]`` (to run them again one by one). ``fds``: the
    descriptors the chunk carried (see ``_passfd``)."""
    from . import _passfd

    with _passfd.receiving(fds or []):
        items = pickle.loads(data, buffers=bufs)
    return [dumps([_wrap_big(x)]) for x in items]


def dumps_plain(items: list):
    """Pickles a chunk of plain items (numbers, strings, small bytes, tuples of them)."""
    return pickle.dumps(items, protocol=5), ()


def dumps_call(args, kwds):
    """Pickles one call's arguments."""
    return dumps((tuple(_wrap_big(x) for x in args), kwds or {}))


def remote_error(e: BaseException) -> bytes:
    """A task's exception, with its formatted traceback, as bytes for the parent. An
    exception that cannot be pickled becomes a :class:`MaybeEncodingError` carrying its
    text (as the standard library does)."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    tb = '\n"""\n' + tb + '"""'
    e.__traceback__ = None
    try:
        return dumps_fast((e, tb))[0]
    except Exception as pe:
        return pickle.dumps((MaybeEncodingError(pe, e), tb), protocol=5)


def rebuild_error(blob: bytes) -> BaseException:
    """The exception a worker sent, with ``__cause__`` set to its remote traceback."""
    try:
        exc, tb = pickle.loads(blob)
    except Exception as e:
        err = MaybeEncodingError(e, "<an exception the parent cannot unpickle>")
        err.__cause__ = RemoteTraceback(f"the worker's exception could not be unpickled: {e!r}")
        return err
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


def encode_results(results: list, errors):
    """``(kind, pickle bytes, buffers)`` for the outcomes of a job's items. ``errors``
    maps an item's position to its :func:`remote_error` bytes."""
    if errors is None:
        try:
            return (ALL_OK,) + dumps_fast(results)
        except Exception:
            pass
    out = []
    for i, r in enumerate(results):
        if errors is not None and i in errors:
            out.append((False, errors[i]))
            continue
        try:
            dumps_fast(r)
            out.append((True, r))
        except Exception as e:
            out.append((False, pickle.dumps((MaybeEncodingError(e, r), ""), protocol=5)))
    return (MIXED,) + dumps_fast(out)


def decode_results(start: int, kind: int, data, bufs):
    """``(True, [value, ...])`` when every item of a job succeeded, else
    ``(False, [(index, ok, value), ...])``."""
    values = pickle.loads(data, buffers=bufs)
    if kind == ALL_OK:
        return True, values
    out = []
    for i, (ok, v) in enumerate(values):
        if ok:
            out.append((start + i, True, v))
        else:
            out.append((start + i, False, rebuild_error(v)))
    return False, out


def fill(mv: memoryview, bufs) -> None:
    """Copies out-of-band buffers one after the other into ``mv`` (memory the Rust side
    owns, released here)."""
    try:
        off = 0
        for b in bufs:
            n = b.nbytes
            mv[off : off + n] = b
            off += n
    finally:
        mv.release()
