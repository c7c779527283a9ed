"""``procpool.Pool``: a drop-in replacement for :class:`multiprocessing.pool.Pool`.

The pool runs on procpool's engine: worker processes forked from a single-threaded
template process, batched dispatch, results through shared memory, and supervision that
turns a worker's death into the failure of that one task.

Example::

    import procpool

    def square(x):
        return x * x

    if __name__ == "__main__":
        with procpool.Pool(2) as pool:
            print(pool.map(square, range(10)))      # [0, 1, 4, ..., 81]
"""

import threading
import time
import warnings
import weakref

from . import _core, _pickle
from ._args import (
    _check_chunksize,
    _check_processes,
    _check_timeout,
    _mpi_workers,
    _start_engine,
    cpu_count,
)
from ._errors import PoolError
from .results import (
    ApplyResult,
    AsyncResult,
    IMapIterator,
    IMapUnorderedIterator,
    MapResult,
)

__all__ = [
    "Pool",
    "ApplyResult",
    "AsyncResult",
    "MapResult",
    "IMapIterator",
    "IMapUnorderedIterator",
    "cpu_count",
]

# The stdlib's state names, so that ``pool._state`` reads the same.
RUN = "RUN"
CLOSE = "CLOSE"
TERMINATE = "TERMINATE"

# How long ``terminate()`` waits for the killed workers to be reaped.
_TERMINATE_JOIN_SECONDS = 10.0


class _GuardedSource:
    """Iterates the caller's iterable for the engine; an exception it raises ends the
    input there and is kept, to be reported at that position (as the stdlib does)."""

    __slots__ = ("_iterable", "_it", "error", "count")

    def __init__(self, iterable):
        self._iterable = iterable
        self._it = None
        self.error = None
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.error is not None:
            raise StopIteration
        try:
            if self._it is None:
                self._it = iter(self._iterable)
                self._iterable = None
            item = next(self._it)
        except StopIteration:
            raise
        except Exception as exc:
            self.error = exc
            raise StopIteration from None
        self.count += 1
        return item


class _PlainSource:
    """Stands for an input that cannot raise while iterated (list, tuple, range)."""

    __slots__ = ("count",)
    error = None

    def __init__(self, sequence):
        self.count = len(sequence)


# ---------------------------------------------------------------------------
# Shared state: everything the background threads and the finalizer need, and no
# reference to the Pool itself (so that an abandoned pool can be collected).
# ---------------------------------------------------------------------------


class _PoolCore:
    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.Lock()
        # Signalled when a call is submitted on the stream or the pool stops: the result
        # thread reads the stream only while something is outstanding.
        self.wakeup = threading.Condition(self.lock)
        self.state = RUN
        self.stream = None
        self.stream_thread = None
        self.stream_results = {}  # tag -> ApplyResult
        self.threads = set()  # map_async result threads
        self.runs = set()  # runs not yet finished
        self.sync_free = []  # streams for blocking apply() calls, idle
        self.sync_busy = set()  # ... and in use

    def open_stream(self):
        """Open the stream for independent calls and its result thread (lock held)."""
        stream = self.engine.stream()
        thread = threading.Thread(
            target=_serve_stream, args=(self, stream), name="procpool-results", daemon=True
        )
        self.stream = stream
        self.stream_thread = thread
        thread.start()
        return stream

    def take_sync_stream(self):
        with self.lock:
            if self.state != RUN:
                raise ValueError("Pool not running")
            stream = self.sync_free.pop() if self.sync_free else self.engine.stream()
            self.sync_busy.add(stream)
        return stream

    def give_back_sync_stream(self, stream):
        with self.lock:
            self.sync_busy.discard(stream)
            if self.state == RUN:
                self.sync_free.append(stream)
                return
        stream.close()

    def drop_sync_stream(self, stream):
        with self.lock:
            self.sync_busy.discard(stream)

    def start_run(self, func, items, *, star, chunksize, ordered, timeout, track):
        """Start a run; ``track`` keeps it for terminate() to cancel until end_run().

        map and map_async runs are tracked (they always end); an imap's is not, so that an
        iterator the caller abandons is not kept alive by the pool.
        """
        with self.lock:
            if self.state != RUN:
                raise ValueError("Pool not running")
            # A tracked run (a map) is drained within the call: the engine encodes ahead.
            # An imap's follows its consumer: a few chunks per worker in flight.
            run = self.engine.run(
                func,
                items,
                star=star,
                chunksize=chunksize,
                ordered=ordered,
                timeout=timeout,
                collect=track,
            )
            if track:
                self.runs.add(run)
        return run

    def end_run(self, run):
        with self.lock:
            self.runs.discard(run)

    def close(self):
        with self.lock:
            if self.state != RUN:
                return
            self.state = CLOSE
            stream = self.stream
            idle = self.sync_free
            self.sync_free = []
            self.wakeup.notify_all()
        if stream is not None:
            stream.close()
        for s in idle:
            s.close()
        self.engine.close()

    def terminate(self):
        with self.lock:
            self.state = TERMINATE
            stream = self.stream
            runs = list(self.runs)
            streams = self.sync_free + list(self.sync_busy)
            self.sync_free = []
            self.wakeup.notify_all()
        self.engine.terminate()
        if stream is not None:
            stream.cancel()
        for s in streams:
            s.cancel()
        for run in runs:
            run.cancel()
        self.engine.join(_TERMINATE_JOIN_SECONDS)
        # The result threads end at once now; wait for them, so that none is still inside
        # the engine when the interpreter shuts down.
        self.join_threads(_TERMINATE_JOIN_SECONDS)

    def join_threads(self, timeout=None):
        with self.lock:
            threads = list(self.threads)
            if self.stream_thread is not None:
                threads.append(self.stream_thread)
        current = threading.current_thread()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            if thread is not current:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _finalize_pool(core):
    """Run when a Pool is garbage collected or at interpreter exit: kill its workers."""
    if core.state != TERMINATE:
        try:
            core.terminate()
        except Exception:  # pragma: no cover - nothing to report to at that point
            pass


def _stopped_early(stream, retries):
    """Whether to read a closed stream again after its StopIteration.

    A stream closed while its reader found it momentarily empty may stop before the calls
    submitted just before the close came back; reading again waits for them. Bounded, so
    that a stream that truly ended with calls outstanding is not read forever.
    """
    if retries[0] >= 1000 or not stream.pending():
        return False
    retries[0] += 1
    time.sleep(0.001)
    return True


def _serve_stream(core, stream):
    """Result thread for apply_async: hands each outcome to its AsyncResult."""
    _pickle.result_thread()
    cause = None
    retries = [0]
    while True:
        with core.lock:
            while not core.stream_results and core.state == RUN:
                core.wakeup.wait()
        try:
            tag, ok, value = stream.next()
        except StopIteration:
            if core.state != TERMINATE and _stopped_early(stream, retries):
                continue
            break
        except Exception as exc:  # the engine failed: fail what is left, say why
            cause = exc
            break
        with core.lock:
            result = core.stream_results.pop(tag, None)
        if result is not None:
            result._set(ok, value)
        del result, value  # (not kept alive while the next outcome is awaited)
    with core.lock:
        left = list(core.stream_results.values())
        core.stream_results.clear()
    for result in left:
        err = PoolError(
            "the pool was terminated before this task finished"
            if cause is None
            else f"the pool stopped delivering results: {cause}"
        )
        result._set(False, err)


# Whether the engine drains an ordered run into a list itself (no tuple per item).
_ENGINE_COLLECTS = hasattr(getattr(_core, "Run", None), "collect")


def _collect(run, source, length):
    """Drain a map's run into (True, list) or (False, first exception by input position).

    The run is ordered when the engine collects (see _ENGINE_COLLECTS), else in any order.
    """
    err_index = None
    err = None
    if _ENGINE_COLLECTS:
        values, failures = run.collect()
        seen = len(values)
        if failures:
            err_index, err = failures[0]
    else:
        values = [None] * length
        seen = 0
        for index, ok, value in run:
            seen += 1
            if ok:
                values[index] = value
            elif err_index is None or index < err_index:
                err_index, err = index, value
    if source.error is not None and (err_index is None or source.count < err_index):
        err_index, err = source.count, source.error
    if err is not None:
        return False, err
    if seen != length:
        return False, PoolError(
            f"the pool was terminated before the map finished ({seen} of "
            f"{length} results came back)"
        )
    return True, values


def _serve_map(core, run, source, length, result):
    """Result thread of one map_async: settles its MapResult once every task is done."""
    _pickle.result_thread()
    try:
        ok, value = _collect(run, source, length)
    except Exception as exc:  # the engine failed mid-run
        ok, value = False, exc
    core.end_run(run)
    result._set(ok, value)
    with core.lock:
        core.threads.discard(threading.current_thread())


# ---------------------------------------------------------------------------
# The pool
# ---------------------------------------------------------------------------


class Pool:
    """A pool of worker processes; a drop-in replacement for :class:`multiprocessing.Pool`.

    ``processes`` defaults to :func:`procpool.cpu_count`. ``initializer(*initargs)`` runs
    once in each worker when it starts. ``maxtasksperchild`` replaces a worker after that
    many tasks. ``context`` is accepted for compatibility and ignored: workers are always
    forked from procpool's template process.

    Beyond the stdlib (keyword-only):

    * ``timeout``: per-task time limit in seconds. A task past it has its worker killed
      and replaced and fails with :class:`procpool.TaskTimeoutError`. Every method also
      takes ``timeout=`` to set the limit for that call.
    * ``retries``: how many times a task whose worker died is run again on a fresh worker
      before it fails with :class:`procpool.WorkerDied`.
    * ``max_message_size``: the largest pickled task (its arguments, or its result) in
      bytes; a larger one fails with :class:`procpool.MessageTooLarge` saying so. Default and
      most: ``procpool._core.MAX_MESSAGE_SIZE`` (4 GiB - 1 KiB).
    * ``mpi``: under ``mpirun``, run the tasks on the other ranks of the MPI job, with
      ``processes`` workers on each (default: each host's cores shared among its ranks);
      a local pool when not under ``mpirun``. See :mod:`procpool.mpi`.

    A worker that dies (signal, ``os._exit``, a crash in C code) fails only the task it
    was running; the pool replaces it and goes on. ``chunksize=None`` (the default of every
    method, ``imap`` included) lets the engine size chunks from measured run times.

    Example::

        import procpool

        def inverse(x):
            return 1 / x

        if __name__ == "__main__":
            with procpool.Pool(2, timeout=30) as pool:
                print(pool.map(inverse, [1, 2, 4]))            # [1.0, 0.5, 0.25]
                print(pool.apply(pow, (3, 4)))                 # 81
                try:
                    pool.map(inverse, [1, 0, 2])
                except ZeroDivisionError as exc:
                    print("failed remotely:", exc.__cause__)   # the worker's traceback
    """

    def __init__(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        context=None,
        *,
        timeout=None,
        retries=0,
        max_message_size=None,
        mpi=False,
    ):
        self._core = None
        mpi = _mpi_workers(mpi, processes)
        processes = _check_processes(processes)
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
            maxtasksperchild = int(maxtasksperchild)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        engine, timeout, retries = _start_engine(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            timeout,
            retries,
            max_message_size,
            mpi,
        )
        self._ctx = context
        self._timeout = timeout
        self._retries = retries
        self._maxtasksperchild = maxtasksperchild
        self._core = _PoolCore(engine)
        self._finalizer = weakref.finalize(self, _finalize_pool, self._core)

    # -- introspection ------------------------------------------------------

    @property
    def _state(self):
        return self._core.state

    @property
    def _processes(self):
        return self._core.engine.processes

    def pids(self):
        """Return the pids of the current worker processes (a procpool extra).

        Example::

            with procpool.Pool(2) as pool:
                assert len(pool.pids()) == 2
        """
        return list(self._core.engine.pids())

    def __repr__(self):
        core = self._core
        state = core.state if core is not None else "INIT"
        size = core.engine.processes if core is not None else 0
        return f"<procpool.Pool state={state} pool_size={size}>"

    def __reduce__(self):
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn=warnings.warn):
        core = getattr(self, "_core", None)
        if core is not None and core.state == "RUN":
            _warn(f"unclosed running procpool pool {self!r}", ResourceWarning, source=self)

    def _check_running(self):
        if self._core.state != RUN:
            raise ValueError("Pool not running")

    # -- single calls -------------------------------------------------------

    def apply(self, func, args=(), kwds={}, *, timeout=None):
        """Call ``func(*args, **kwds)`` in a worker and return its result (blocking).

        ``timeout`` (a procpool extra) is the task's time limit, not a wait limit.

        Example::

            with procpool.Pool(2) as pool:
                assert pool.apply(divmod, (7, 2)) == (3, 1)
        """
        self._check_running()
        timeout = _check_timeout(timeout)
        core = self._core
        # The caller reads its own stream: no hand-over to the result thread.
        stream = core.take_sync_stream()
        try:
            stream.submit(func, tuple(args), dict(kwds), timeout=timeout)
        except BaseException:  # could not pickle: nothing was queued
            core.give_back_sync_stream(stream)
            raise
        try:
            _, ok, value = stream.next()
        except StopIteration:
            core.drop_sync_stream(stream)
            raise PoolError("the pool was terminated before this task finished") from None
        except BaseException:  # Ctrl-C: the call is left to finish, its result dropped
            core.drop_sync_stream(stream)
            raise
        core.give_back_sync_stream(stream)
        if ok:
            return value
        raise value

    def apply_async(
        self, func, args=(), kwds={}, callback=None, error_callback=None, *, timeout=None
    ):
        """Start ``func(*args, **kwds)`` in a worker and return an :class:`AsyncResult`.

        ``callback(result)`` or ``error_callback(exception)`` is called from the pool's
        result thread when the call completes; it should return quickly. An argument
        that cannot be pickled fails this call only (``get()`` raises the pickling error).

        Example::

            with procpool.Pool(2) as pool:
                r = pool.apply_async(sum, ([1, 2, 3],), callback=print)   # prints 6
                assert r.get(timeout=10) == 6
        """
        self._check_running()
        timeout = _check_timeout(timeout)
        result = ApplyResult(self, callback, error_callback)
        core = self._core
        failure = None
        with core.lock:
            if core.state != RUN:
                raise ValueError("Pool not running")
            stream = core.stream if core.stream is not None else core.open_stream()
            try:
                tag = stream.submit(func, tuple(args), dict(kwds), timeout=timeout)
            except Exception as exc:  # could not pickle: this call fails alone
                failure = exc
            else:
                core.stream_results[tag] = result
                core.wakeup.notify()
        if failure is not None:
            if error_callback is None:
                result._set(False, failure)
            else:  # callbacks run on a result thread, never in the caller
                threading.Thread(target=result._set, args=(False, failure), daemon=True).start()
        return result

    # -- maps ---------------------------------------------------------------

    def _run_source(self, func, iterable, star, chunksize, ordered, timeout, track=True):
        chunksize = _check_chunksize(chunksize)
        timeout = _check_timeout(timeout)
        if type(iterable) in (list, tuple, range):
            source = _PlainSource(iterable)
            items = iterable
        else:
            source = items = _GuardedSource(iterable)
        run = self._core.start_run(
            func,
            items,
            star=star,
            chunksize=chunksize,
            ordered=ordered,
            timeout=timeout,
            track=track,
        )
        return run, source

    def _map(self, func, iterable, star, chunksize, timeout):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        length = len(iterable)
        run, source = self._run_source(func, iterable, star, chunksize, _ENGINE_COLLECTS, timeout)
        try:
            ok, value = _collect(run, source, length)
        except BaseException:  # Ctrl-C: stop the run's tasks, then let it through
            run.cancel()
            raise
        finally:
            self._core.end_run(run)
        if ok:
            return value
        raise value

    def _map_async(self, func, iterable, star, chunksize, callback, error_callback, timeout):
        self._check_running()
        if not hasattr(iterable, "__len__"):
            iterable = list(iterable)
        length = len(iterable)
        if length == 0:  # as the stdlib: ready at once, and no callback is called
            chunksize = _check_chunksize(chunksize)
            result = MapResult(self, None, None)
            result._set(True, [])
            return result
        run, source = self._run_source(func, iterable, star, chunksize, _ENGINE_COLLECTS, timeout)
        result = MapResult(self, callback, error_callback)
        core = self._core
        thread = threading.Thread(
            target=_serve_map,
            args=(core, run, source, length, result),
            name="procpool-map-results",
            daemon=True,
        )
        with core.lock:
            core.threads.add(thread)
        thread.start()
        return result

    def map(self, func, iterable, chunksize=None, *, timeout=None):
        """Apply ``func`` to each item and return the list of results, in order.

        Blocks until every task has finished. If a task failed, raises the exception of
        the first failed item (by input position) with the remote traceback as its
        ``__cause__``. ``chunksize=None`` chunks automatically; an int is honoured.
        Ctrl-C cancels the run (its running tasks' workers are killed) and raises
        KeyboardInterrupt at once.

        Example::

            with procpool.Pool(2) as pool:
                assert pool.map(str, range(3)) == ["0", "1", "2"]
        """
        return self._map(func, iterable, False, chunksize, timeout)

    def starmap(self, func, iterable, chunksize=None, *, timeout=None):
        """Like :meth:`map`, but each item is unpacked as the arguments: ``func(*item)``.

        Example::

            with procpool.Pool(2) as pool:
                assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        """
        return self._map(func, iterable, True, chunksize, timeout)

    def map_async(
        self, func, iterable, chunksize=None, callback=None, error_callback=None, *, timeout=None
    ):
        """Non-blocking :meth:`map`: returns a :class:`MapResult`.

        ``callback(list)`` or ``error_callback(first exception)`` is called from a result
        thread once every task has finished.

        Example::

            with procpool.Pool(2) as pool:
                r = pool.map_async(len, ["a", "bb"])
                assert r.get(timeout=10) == [1, 2]
        """
        return self._map_async(func, iterable, False, chunksize, callback, error_callback, timeout)

    def starmap_async(
        self, func, iterable, chunksize=None, callback=None, error_callback=None, *, timeout=None
    ):
        """Non-blocking :meth:`starmap`: returns a :class:`MapResult`.

        Example::

            with procpool.Pool(2) as pool:
                assert pool.starmap_async(max, [(1, 2), (4, 3)]).get() == [2, 4]
        """
        return self._map_async(func, iterable, True, chunksize, callback, error_callback, timeout)

    def imap(self, func, iterable, chunksize=None, *, timeout=None):
        """Lazy :meth:`map`: an iterator of results in input order.

        The input is consumed as workers need it, so memory stays bounded however long it
        is: about one chunk of about 128 KiB per worker in flight, and a chunk ends there
        even before ``chunksize`` items (see the README's "``imap`` memory"). A failed
        task raises at its position; the next ``next()`` goes on after it. Unlike the
        stdlib, ``chunksize`` defaults to automatic chunking (pass 1 for one task per
        job).

        Example::

            with procpool.Pool(2) as pool:
                for square in pool.imap(abs, range(-3, 0)):
                    print(square)                             # 3, 2, 1
        """
        self._check_running()
        run, source = self._run_source(func, iterable, False, chunksize, True, timeout, False)
        return IMapIterator(self, run, source)

    def imap_unordered(self, func, iterable, chunksize=None, *, timeout=None):
        """Like :meth:`imap`, but results come as they finish.

        Example::

            with procpool.Pool(2) as pool:
                assert sorted(pool.imap_unordered(abs, [-2, -1])) == [1, 2]
        """
        self._check_running()
        run, source = self._run_source(func, iterable, False, chunksize, False, timeout, False)
        return IMapUnorderedIterator(self, run, source)

    # -- life cycle ---------------------------------------------------------

    def close(self):
        """Accept no new work; the work already given finishes. Then call :meth:`join`.

        Example::

            pool = procpool.Pool(2)
            r = pool.map_async(abs, [-1])
            pool.close()
            pool.join()
            assert r.get() == [1]
        """
        self._core.close()

    def terminate(self):
        """Stop now: kill the workers; unfinished tasks fail with :class:`procpool.PoolError`.

        Returns once the workers are gone. Leaving a ``with`` block calls it.

        Example::

            pool = procpool.Pool(2)
            pool.terminate()
            pool.join()
        """
        self._core.terminate()

    def join(self):
        """Wait until the work is done and every worker has exited.

        Call :meth:`close` or :meth:`terminate` first (ValueError otherwise, as the
        stdlib). Callbacks of finished results have run when it returns.

        Example::

            pool = procpool.Pool(2)
            pool.close()
            pool.join()
        """
        core = self._core
        if core.state == RUN:
            raise ValueError("Pool is still running")
        core.engine.join()
        core.join_threads()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()
