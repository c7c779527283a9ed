"""How values cross the process boundary (private).

Pickle protocol 5. Functions, classes and values that the standard pickler cannot take by
reference (lambdas, closures, anything defined in the REPL, ``-c`` or a notebook) go by
value with cloudpickle; importable ones, and those of a script's ``__main__`` (which
workers import as ``spawn`` does), go by reference. Buffers of at least
``OOB_MIN`` bytes (``bytearray``, ``memoryview``, NumPy arrays, and ``bytes`` items) travel
out of band: the Rust side places them after the pickle stream in the job's payload,
which the engine moves through the worker's shared-memory region when large.

The Rust side (``procpool._core``) frames a pickle and its buffers; this module makes and
reads the pickles.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
import traceback
import types
from collections import ChainMap
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback
from pickle import PickleBuffer

#: Buffers at least this large go out of band.
OOB_MIN = 64 * 1024

#: Payload kinds (first byte of a job's payload).
CHUNK = 0
CALL = 1
INIT = 2

#: Result kinds (first byte of a job's result).
ALL_OK = 0
MIXED = 1
#: The worker could not rebuild a chunk's argument: the parent sends its items again one
#: by one (pickled anew from the objects it holds), so that only the bad one fails.
SPLIT = 2


class _BigBytes:
    """A large ``bytes`` item, sent out of band and rebuilt as ``bytes``."""

    __slots__ = ("b",)

    def __init__(self, b: bytes) -> None:
        self.b = b

    def __reduce_ex__(self, protocol):
        return (bytes, (PickleBuffer(self.b),))


def _main_by_reference(obj) -> bool:
    """Whether ``obj``, a function or class of the caller's ``__main__``, can go by
    reference: the main module is importable in workers (a script or ``-m`` module,
    which they run again as ``__mp_main__``, as ``spawn`` does) and ``obj`` is found
    there under its own name. Lambdas, closures, the REPL, ``-c`` and notebooks go by
    value."""
    if getattr(obj, "__module__", None) != "__main__":
        return False
    from ._bootstrap import importable_main

    if not importable_main():
        return False
    target = sys.modules.get("__main__")
    for part in getattr(obj, "__qualname__", "<").split("."):
        target = getattr(target, part, None)
    return target is obj


def _collector():
    bufs = []

    def cb(pb: PickleBuffer) -> bool:
        raw = pb.raw()
        if raw.nbytes >= OOB_MIN:
            bufs.append(raw)
            return False
        return True

    return bufs, cb


def _refuse_file(obj):
    if obj is sys.__stdout__ or obj is sys.__stderr__ or obj is sys.__stdin__:
        return _CLOUD_TABLE[io.TextIOWrapper](obj)  # the receiver's own stream, by name
    # cloudpickle would send the file's contents as an io.StringIO.
    name = getattr(obj, "name", "?")
    raise TypeError(
        f"cannot pickle {type(obj).__name__!r} object (an open file, {name!r}): "
        "send its path or its contents instead"
    )


def _refuse_memoryview(obj):
    # cloudpickle would send the bytes it views, arriving as ``bytes``.
    raise TypeError(
        "cannot pickle 'memoryview' object: send bytes(view), or the bytearray or array it views"
    )


def _cloud():
    """``_Pickler``: cloudpickle, imported on first use (a program whose tasks all go
    by reference never imports it)."""
    global _Pickler
    if _Pickler is not None:
        return _Pickler
    import cloudpickle

    class _Pickler(cloudpickle.Pickler):
        """cloudpickle, less what it would rebuild as an object of another kind on the
        other side (an open file as an ``io.StringIO``, a memoryview as ``bytes``): those
        are refused as the standard pickler refuses them. Sockets, locks, generators and
        the like cloudpickle refuses already."""

        dispatch_table = ChainMap(
            {io.TextIOWrapper: _refuse_file, memoryview: _refuse_memoryview},
            cloudpickle.Pickler.dispatch_table,
        )

        def reducer_override(self, obj):
            # Functions and classes of an importable ``__main__`` go by reference (see
            # :func:`_main_by_reference`), as the stdlib sends them.
            if isinstance(obj, (type, types.FunctionType)) and _main_by_reference(obj):
                return NotImplemented
            return super().reducer_override(obj)

    _Pickler.__qualname__ = "_Pickler"
    return _Pickler


_Pickler = None


def dumps(obj, by_value: bool = True):
    """``(pickle bytes, [out-of-band memoryviews])``. ``by_value``: what the standard
    pickler cannot send by reference (a lambda, a closure, a function of a ``__main__``
    workers cannot import) goes by value with cloudpickle; the standard pickler is
    tried first (what it takes, cloudpickle would send the same way)."""
    bufs, cb = _collector()
    if not by_value:
        return pickle.dumps(obj, protocol=5, buffer_callback=cb), bufs
    try:
        f = io.BytesIO()
        _RefPickler(f, protocol=5, buffer_callback=cb).dump(obj)
        return f.getvalue(), bufs
    except Exception:
        pass
    bufs, cb = _collector()
    f = io.BytesIO()
    _cloud()(f, protocol=5, buffer_callback=cb).dump(obj)
    return f.getvalue(), bufs


def dumps_fast(obj):
    """The standard pickler first (fast, by reference), cloudpickle if it refuses."""
    try:
        return dumps(obj, by_value=False)
    except Exception:
        return dumps(obj, by_value=True)


def _importable_by_name(module) -> bool:
    """Whether a worker (same ``sys.path``) finds ``module`` by its name: not so for a
    module loaded from a file path through importlib, or made in memory."""
    name = getattr(module, "__name__", None)
    spec = getattr(module, "__spec__", None)
    if not name or name == "__main__":
        return False
    if spec is None:
        return name in sys.builtin_module_names
    if spec.origin in (None, "built-in", "frozen") or spec.parent:
        return True  # a builtin, or a package's submodule (found through the package)
    try:
        import importlib.machinery

        found = importlib.machinery.PathFinder.find_spec(name, sys.path)
    except (ImportError, ValueError):
        return False
    return found is not None and found.origin == spec.origin


def _by_value_if_unimportable(func) -> None:
    """Registers ``func``'s module with cloudpickle to go by value when a worker could
    not import it by name (CPython's ``register_pickle_by_value``)."""
    target = getattr(func, "__func__", func)  # a bound method's function
    name = getattr(target, "__module__", None)
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is None or name == "__main__" or _CHECKED.get(name) is module:
        return
    _CHECKED[name] = module
    if not _importable_by_name(module):
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
        _BY_VALUE.add(name)


#: Modules registered with cloudpickle to go by value, by name.
_BY_VALUE = set()
#: Modules already checked (the module object, for a name loaded again).
_CHECKED = {}


def dumps_func(func) -> bytes:
    """A function's reference (by value when it cannot go by reference: a lambda or
    closure, defined in a ``__main__`` workers cannot import, or from a module a worker
    cannot import by name)."""
    if not callable(func):
        raise TypeError(f"{type(func).__name__!r} object is not callable")
    _by_value_if_unimportable(func)
    try:
        # By reference when it can: the worker runs the module's own code (its source
        # lines in tracebacks), e.g. a bound classmethod cloudpickle would copy.
        f = io.BytesIO()
        _RefPickler(f, protocol=5).dump(func)
        return f.getvalue()
    except Exception:
        pass
    data, bufs = dumps(func)
    if bufs:  # a function holding large buffers: keep them in band
        f = io.BytesIO()
        _cloud()(f, protocol=5).dump(func)
        data = f.getvalue()
    return data


class _ByValue(Exception):
    pass


class _RefPickler(pickle.Pickler):
    """The standard pickler, refusing (``_ByValue``) any function or class a worker
    would not find by reference: one of a ``__main__`` workers cannot import, or of a
    module registered to go by value."""

    def reducer_override(self, obj):
        if isinstance(obj, (types.FunctionType, type)):
            module = getattr(obj, "__module__", None)
            if module is None or module in _BY_VALUE:
                raise _ByValue
            if module == "__main__" and not _main_by_reference(obj):
                raise _ByValue
        return NotImplemented


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


def dump_plain(items: list, file):
    """Pickles a chunk of plain items into ``file``, whose ``write`` is given each frame
    (about 64 KiB) as it is made: the whole pickle is never in memory apart from it."""
    pickle.Pickler(file, protocol=5).dump(items)


def dumps_call(args, kwds):
    """Pickles one call's arguments."""
    return dumps((tuple(_wrap_big(x) for x in args), kwds or {}))


def remote_error(e: BaseException, executor: bool = False) -> bytes:
    """A task's exception, with its formatted traceback, as bytes for the parent. An
    exception that cannot be pickled becomes a :class:`MaybeEncodingError` carrying its
    text (as :mod:`multiprocessing.pool` does), or, for an ``executor`` call, the pickling
    error itself (as :mod:`concurrent.futures` does)."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    tb = '\n"""\n' + tb + '"""'
    e.__traceback__ = None
    try:
        return dumps_fast((e, tb))[0]
    except Exception as pe:
        if executor:
            return remote_error(pe)
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


def encode_results(results: list, errors, executor: bool = False):
    """``(kind, pickle bytes, buffers)`` for the outcomes of a job's items. ``errors``
    maps an item's position to its :func:`remote_error` bytes. A result that cannot be
    pickled fails its item with a :class:`MaybeEncodingError` or, for an ``executor``
    call, with the pickling error itself (a ``SystemExit`` raised while pickling too)."""
    caught = BaseException if executor else Exception
    if errors is None:
        try:
            return (ALL_OK,) + dumps_fast(results)
        except caught:
            pass
    out = []
    for i, r in enumerate(results):
        if errors is not None and i in errors:
            out.append((False, errors[i]))
            continue
        try:
            dumps_fast(r)
            out.append((True, r))
        except caught as e:
            if executor:
                out.append((False, remote_error(e, executor=True)))
            else:
                out.append((False, pickle.dumps((MaybeEncodingError(e, r), ""), protocol=5)))
    return (MIXED,) + dumps_fast(out)


_thread_role = threading.local()


def result_thread() -> None:
    """Marks the calling thread as a result thread of a pool or executor: a
    ``KeyboardInterrupt`` or ``SystemExit`` raised while it reads a result (by the
    result's own unpickling code) fails that task, as there is no caller to raise it to.
    In any other thread it is the caller's and is raised."""
    _thread_role.result = True


def in_result_thread() -> bool:
    return getattr(_thread_role, "result", False)


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
