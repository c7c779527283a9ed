"""The worker side (private): runs a job's items in a worker process.

Called by ``procpool._core`` for each job, with the function already unpickled (and
cached by its bytes). A chunk's items are run by ``procpool._core`` itself, one by one,
each item's outcome recorded as it finishes (so that a worker dying inside a chunk costs
the parent that item alone); this module unpickles them and makes the records that are
pickles. Each item's exception is caught and reported for that item alone.
"""

from __future__ import annotations

import pickle
import sys

from . import _bootstrap
from ._pickle import CALL, CHUNK, INIT, SPLIT, encode_results, remote_error


def load_func(data):
    """Unpickles a job's function (starting a pool or process meanwhile is refused: see
    ``_bootstrap``)."""
    _bootstrap.inheriting = True
    try:
        return pickle.loads(data)
    finally:
        _bootstrap.inheriting = False


def _loads(kind: int, data, bufs, fds):
    if kind == INIT:
        from . import _passfd

        fds = _passfd.take_init_fds()
        try:
            with _passfd.receiving(fds):
                return pickle.loads(data, buffers=bufs)
        finally:
            _passfd.discard(fds)
    if fds is None:
        return pickle.loads(data, buffers=bufs)
    from . import _passfd

    with _passfd.receiving(fds):
        return pickle.loads(data, buffers=bufs)


def run(
    func, kind: int, star: bool, count: int, data, bufs, catch_all: bool = False, fds=None,
    skip: int = 0,
):
    """Runs one job; returns ``(result kind, pickle bytes, buffers)``, or, for a chunk,
    the list of its ``count`` arguments (after the ``skip`` first of the pickled list),
    for the caller to run. ``fds``: the descriptors that came with the job (borrowed;
    see ``_passfd``).

    An ``INIT`` job (the pool's initializer) lets its exception through: the worker is
    of no use and the pool counts a failed start. ``catch_all`` (an executor's call): a
    ``SystemExit`` or ``KeyboardInterrupt`` the call raises is its outcome, as
    :mod:`concurrent.futures` delivers it; otherwise it ends the worker.
    """
    if _bootstrap.main_error is not None and kind != INIT:
        return fail_all(_bootstrap.main_error, count)
    _bootstrap.inheriting = True
    try:
        arg = _loads(kind, data, bufs, fds)
    except (Exception, SystemExit) as e:
        if kind == INIT:
            raise
        if kind == CHUNK and count > 1:
            # One of the items cannot be rebuilt here (a class the worker cannot import,
            # a ``__reduce__`` that raises or exits, say): the parent sends the items
            # again one by one, so that only that one fails.
            return SPLIT, b"", []
        if isinstance(e, SystemExit):
            # As in the stdlib, a ``SystemExit`` while an argument is rebuilt ends the
            # worker: the engine fails this one item with the worker's exit code
            # (``WorkerDied``; on an executor also a ``BrokenProcessPool``).
            raise
        blob = remote_error(e)
        return encode_results([None] * count, {i: blob for i in range(count)})
    finally:
        _bootstrap.inheriting = False
    if kind == INIT:
        args, kwds = arg
        func(*args, **kwds)
        return encode_results([None], None)
    if kind == CALL:
        args, kwds = arg
        try:
            result = func(*args, **kwds)
        except Exception as e:
            return encode_results([None], {0: remote_error(e, catch_all)})
        except BaseException as e:
            if not catch_all:
                raise
            return encode_results([None], {0: remote_error(e, catch_all)})
        return encode_results([result], None, catch_all)
    if type(arg) is not list or len(arg) < skip + count:
        e = pickle.UnpicklingError(
            f"a chunk of {count} items after {skip} held "
            f"{len(arg) if type(arg) is list else type(arg).__name__}"
        )
        blob = remote_error(e)
        return encode_results([None] * count, {i: blob for i in range(count)})
    return arg[skip : skip + count] if len(arg) != count else arg


def item_value(r):
    """The ``(kind, pickle, buffers)`` of one item's result (a one-item list)."""
    return encode_results([r], None)


def item_error(e: Exception):
    """The ``(kind, pickle, buffers)`` of one item's failure."""
    return encode_results([None], {0: remote_error(e)})


def flush() -> None:
    """Flushes the standard streams (before the worker exits)."""
    for f in (sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except Exception:
            pass


def fail_all(e: BaseException, count: int):
    """Every item of a job fails with ``e`` (its function could not be loaded here), or
    with the exception the caller's main module raised here, if it did."""
    if _bootstrap.main_error is not None:
        e = _bootstrap.main_error
    blob = remote_error(e)
    return encode_results([None] * count, {i: blob for i in range(count)})
