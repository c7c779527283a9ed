"""The results of ``procpool.Pool``'s calls: :class:`AsyncResult` (``apply_async``),
:class:`MapResult` (``map_async``, ``starmap_async``), :class:`IMapIterator` and
:class:`IMapUnorderedIterator` (``imap``, ``imap_unordered``). They behave as their
namesakes in :mod:`multiprocessing.pool` (and are importable from ``procpool.pool`` too).

Example::

    import procpool

    if __name__ == "__main__":
        with procpool.Pool(2) as pool:
            r = pool.apply_async(pow, (2, 5))
            assert r.get(timeout=10) == 32
"""

import builtins
import multiprocessing
import sys
import threading
import traceback
import types

from ._errors import PoolError

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "IMapUnorderedIterator",
]


def _report_callback_error(kind, callback):
    """Print a callback's exception to stderr; the result thread goes on."""
    print(
        f"Exception in {kind} {callback!r} of a procpool result:",
        file=sys.stderr,
    )
    traceback.print_exc()





class ApplyResult:
    """The result of :meth:`Pool.apply_async` (also exported as ``AsyncResult``).

    Behaves as :class:`multiprocessing.pool.AsyncResult`.

    Example::

        with procpool.Pool(2) as pool:
            r = pool.apply_async(pow, (2, 10))
            r.wait()
            assert r.ready() and r.successful()
            assert r.get(timeout=5) == 1024
    """

    def __init__(self, pool, callback, error_callback):
        self._pool = pool  # keeps the pool alive while the result is pending
        self._event = threading.Event()
        self._callback = callback
        self._error_callback = error_callback
        self._success = None
        self._value = None

    def ready(self):
        """Return whether the call has completed (successfully or not)."""
        return self._event.is_set()

    def successful(self):
        """Return whether the call completed without raising.

        Raises ValueError if the result is not ready yet, as the stdlib does.
        """
        if not self.ready():
            raise ValueError("{0!r} not ready".format(self))
        return self._success

    def wait(self, timeout=None):
        """Wait until the result is available or ``timeout`` seconds pass."""
        self._event.wait(timeout)

    def get(self, timeout=None):
        """Return the result when it arrives; re-raise the task's exception if it failed.

        Raises :class:`multiprocessing.TimeoutError` if the result is not ready within
        ``timeout`` seconds (the task goes on running). A failed task's exception has the
        remote traceback as its ``__cause__``; a task whose worker died raises
        :class:`procpool.WorkerDied`; one past its time limit :class:`procpool.TaskTimeoutError`.
        """
        self.wait(timeout)
        if not self.ready():
            raise multiprocessing.TimeoutError
        if self._success:
            return self._value
        raise self._value

    def _set(self, ok, value):
        self._success = ok
        self._value = value
        # Callbacks run on a result thread: whatever they raise (SystemExit included) is
        # reported there, and the thread goes on delivering the other results.
        if ok and self._callback is not None:
            try:
                self._callback(value)
            except BaseException:
                _report_callback_error("callback", self._callback)
        elif not ok and self._error_callback is not None:
            try:
                self._error_callback(value)
            except BaseException:
                _report_callback_error("error_callback", self._error_callback)
        self._event.set()
        self._pool = None

    def __repr__(self):
        state = "ready" if self.ready() else "pending"
        return f"<{type(self).__name__} {state} at {id(self):#x}>"

    __class_getitem__ = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of :meth:`Pool.map_async` and :meth:`Pool.starmap_async`.

    Ready once every task has finished; ``get()`` returns the list of results in input
    order, or raises the exception of the first failed task (by input position).

    Example::

        with procpool.Pool(2) as pool:
            r = pool.map_async(abs, [-1, -2, 3], callback=print)   # prints [1, 2, 3]
            assert r.get() == [1, 2, 3]
    """


class IMapIterator:
    """The iterator returned by :meth:`Pool.imap`: results in input order.

    A failed task raises its exception at its position; iterating again goes on with
    the next result, as :class:`multiprocessing.pool.IMapIterator` does.
    ``next(timeout)`` raises :class:`multiprocessing.TimeoutError` when the next result
    does not come within ``timeout`` seconds.

    Example::

        with procpool.Pool(2) as pool:
            it = pool.imap(abs, [-1, -2, -3])
            assert it.next(timeout=5) == 1
            assert list(it) == [2, 3]
    """

    _ordered = True

    def __init__(self, pool, run, source):
        self._pool = pool
        self._run = run
        self._source = source
        self._lock = threading.Lock()
        self._done = False
        self._seen = 0

    def __iter__(self):
        return self

    def next(self, timeout=None):
        """Return the next result; see the class documentation."""
        with self._lock:
            if self._done:
                raise StopIteration
            try:
                if timeout is None:
                    _, ok, value = next(self._run)
                else:
                    _, ok, value = self._run.next(max(0.0, float(timeout)))
            except StopIteration:
                self._finish()
                error = self._source.error
                if error is not None:
                    self._source.error = None
                    raise error from None
                if self._seen < self._source.count:
                    raise PoolError(
                        f"the pool was terminated before this iteration finished "
                        f"({self._seen} of {self._source.count} results came back)"
                    ) from None
                raise
            except builtins.TimeoutError:
                raise multiprocessing.TimeoutError from None
            self._seen += 1
        if ok:
            return value
        raise value

    __next__ = next

    def _finish(self):
        self._done = True
        self._pool = None

    def __repr__(self):
        return f"<{type(self).__name__} {'done' if self._done else 'running'} at {id(self):#x}>"


class IMapUnorderedIterator(IMapIterator):
    """The iterator returned by :meth:`Pool.imap_unordered`: results as they finish.

    Example::

        with procpool.Pool(2) as pool:
            assert sorted(pool.imap_unordered(abs, [-3, -1, -2])) == [1, 2, 3]
    """

    _ordered = False
