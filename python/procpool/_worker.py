"""The worker side (private): runs a job's items in a worker process.

Called by ``procpool._core`` for each job, with the function already unpickled (and
cached by its bytes). Each item's exception is caught and reported for that item alone.
"""

from __future__ import annotations

import pickle
import sys

from ._pickle import CALL, INIT, encode_results, remote_error


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


def run(func, kind: int, star: bool, count: int, data, bufs, fds=None):
    """Runs one job; returns ``(result kind, pickle bytes, buffers)``. ``fds``: the
    descriptors that came with the job (borrowed; see ``_passfd``).

    An ``INIT`` job (the pool's initializer) lets its exception through: the worker is
    of no use and the pool counts a failed start.
    """
    try:
        arg = _loads(kind, data, bufs, fds)
    except Exception as e:
        if kind == INIT:
            raise
        # The argument cannot be rebuilt here (a class the worker cannot import, say):
        # every item of the job fails with that error.
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
    results = []
    errors = None
    append = results.append
    if star:
        for i, x in enumerate(arg):
            try:
                append(func(*x))
            except Exception as e:
                if errors is None:
                    errors = {}
                errors[i] = remote_error(e)
                append(None)
    else:
        try:
            # The fast path: no item fails.
            for x in arg:
                append(func(x))
        except Exception as e:
            errors = {len(results): remote_error(e)}
            append(None)
            for i in range(len(results), len(arg)):
                try:
                    append(func(arg[i]))
                except Exception as e:
                    errors[i] = remote_error(e)
                    append(None)
    return encode_results(results, errors)


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
