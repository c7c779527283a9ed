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

from ._pickle import CALL, CHUNK, INIT, SPLIT, encode_results, remote_error


def run(func, kind: int, star: bool, count: int, skip: int, data, bufs):
    """Runs one job; returns ``(result kind, pickle bytes, buffers)``, or, for a chunk,
    the list of its ``count`` arguments (after the ``skip`` first of the pickled list),
    for the caller to run.

    An ``INIT`` job (the pool's initializer) lets its exception through: the worker is
    of no use and the pool counts a failed start.
    """
    try:
        arg = pickle.loads(data, buffers=bufs)
    except (Exception, SystemExit) as e:
        if kind == INIT:
            raise
        if kind == CHUNK and count > 1:
            # One of the items cannot be rebuilt here (a class the worker cannot import,
            # a ``__reduce__`` that raises or exits, say): the parent sends the items
            # again one by one, so that only that one fails.
            return SPLIT, b"", []
        if isinstance(e, SystemExit):
            # Rebuilding the argument is not the task: it fails, the worker goes on.
            e = pickle.UnpicklingError(
                f"the argument could not be rebuilt in the worker: "
                f"it raised SystemExit({e.code!r})"
            )
        blob = remote_error(e)
        return encode_results([None] * count, {i: blob for i in range(count)})
    if kind == INIT:
        args, kwds = arg
        func(*args, **kwds)
        return encode_results([None], None)
    if kind == CALL:
        args, kwds = arg
        try:
            return encode_results([func(*args, **kwds)], None)
        except Exception as e:
            return encode_results([None], {0: remote_error(e)})
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
    """Every item of a job fails with ``e`` (its function could not be loaded here)."""
    blob = remote_error(e)
    return encode_results([None] * count, {i: blob for i in range(count)})
