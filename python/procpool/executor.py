"""``procpool.ProcessPoolExecutor``: a :class:`concurrent.futures.Executor` on procpool's engine.

A drop-in replacement for :class:`concurrent.futures.ProcessPoolExecutor`, except that a
worker's death fails only the future of the call it was running (with
:class:`procpool.WorkerDied`) and the executor stays usable; the stdlib's breaks for good.

Example::

    import asyncio
    import procpool

    def cube(x):
        return x ** 3

    async def main(executor):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, cube, 3)

    if __name__ == "__main__":
        with procpool.ProcessPoolExecutor(max_workers=2) as ex:
            print(list(ex.map(cube, range(5))))       # [0, 1, 8, 27, 64]
            print(asyncio.run(main(ex)))               # 27
"""

import collections
import concurrent.futures
import multiprocessing
import threading
import time
import traceback
import weakref

from . import _core, _pickle
from ._args import _check_processes, _check_timeout, _mpi_workers, _start_engine
from ._errors import PoolError, _executor_kinds, for_executor
from .pool import _stopped_early

# Made now, not by the first failed future: a results thread settling futures after Ctrl-C
# runs while Python shuts down, when the import behind them is refused.
_executor_kinds()

__all__ = ["ProcessPoolExecutor"]

# Calls handed to the engine ahead of the workers, per worker. Later calls wait on the
# executor's side, where Future.cancel() and shutdown(cancel_futures=True) reach them.
_WINDOW_PER_WORKER = 4

_live_cores = weakref.WeakSet()
_global_shutdown = False


def _python_exit():
    """At interpreter exit, finish the work of executors never shut down (as the stdlib)."""
    global _global_shutdown
    _global_shutdown = True
    for core in list(_live_cores):
        core.shutdown(wait=True, cancel_futures=False)


try:  # runs before atexit handlers, while threads can still be joined
    threading._register_atexit(_python_exit)
except AttributeError:  # pragma: no cover - Python < 3.9
    import atexit

    atexit.register(_python_exit)


class _WorkItem:
    __slots__ = ("future", "fn", "args", "kwargs", "running")

    def __init__(self, future, fn, args, kwargs):
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.running = False


def _settle(future, ok, value):
    """Settles ``future`` (on a result thread). A done-callback that raises what
    ``concurrent.futures`` does not catch (``SystemExit``) is reported here, and the
    thread goes on delivering the other results."""
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(for_executor(value))
    except BaseException:
        if future.done():
            traceback.print_exc()
        else:
            raise


class _ExecutorCore:
    """The executor's state, shared with its result threads; holds no reference to the
    executor, so an abandoned executor can be collected (its work still finishes)."""

    def __init__(self, engine):
        self.engine = engine
        self.window = _WINDOW_PER_WORKER * engine.processes
        self.lock = threading.Lock()
        # Signalled when a call is handed to the engine or the stream closes: the result
        # thread reads the stream only while something is outstanding.
        self.wakeup = threading.Condition(self.lock)
        self.pending = collections.deque()  # _WorkItem, not yet handed to the engine
        self.inflight = {}  # stream tag -> Future
        self.stream = None
        self.thread = None
        self.maps = set()  # _MapDrain still running
        self.shut = False
        self.closed = False

    # -- called with self.lock held -------------------------------------------

    def pump_locked(self):
        """Hand pending calls to the engine up to the window; close when shut down.

        Returns the (future, exception) pairs to settle once the lock is released.
        """
        failures = []
        while self.pending and len(self.inflight) < self.window:
            item = self.pending.popleft()
            if not item.running:
                if not item.future.set_running_or_notify_cancel():
                    continue  # cancelled while waiting
                item.running = True
            try:
                tag = self.stream.submit(item.fn, item.args, item.kwargs)
            except Exception as exc:  # could not pickle: this call fails alone
                failures.append((item.future, exc))
            except BaseException as exc:
                if _pickle.in_result_thread():  # nobody to raise it to
                    failures.append((item.future, exc))
                else:  # Ctrl-C in the caller: the call waits for the next pump
                    self.pending.appendleft(item)
                    raise
            else:
                self.inflight[tag] = item.future
                self.wakeup.notify()
        if self.shut and not self.pending and not self.closed:
            self.closed = True
            if self.stream is not None:
                self.stream.close()
            self.engine.close()
            self.wakeup.notify_all()
        return failures

    # -- any thread -------------------------------------------------------------

    def submit(self, fn, args, kwargs):
        future = concurrent.futures.Future()
        with self.lock:
            if self.shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _global_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self.stream is None:
                self.stream = self.engine.stream(catch_all=True)
                self.thread = threading.Thread(
                    target=self.serve, name="procpool-executor-results", daemon=True
                )
                self.thread.start()
            self.pending.append(_WorkItem(future, fn, args, kwargs))
            failures = self.pump_locked()
            del fn, args, kwargs  # (held by the work item until it is handed over)
        for fut, exc in failures:
            fut.set_exception(exc)
        return future

    def serve(self):
        """Result thread: settle each future as its outcome arrives, refill the window."""
        _pickle.result_thread()
        stream = self.stream
        cause = None
        retries = [0]
        while True:
            with self.lock:
                while not self.inflight and not self.closed:
                    self.wakeup.wait()
            try:
                tag, ok, value = stream.next()
            except StopIteration:
                if _stopped_early(stream, retries):
                    continue
                break
            except Exception as exc:  # the engine failed: fail what is left, say why
                cause = exc
                break
            with self.lock:
                future = self.inflight.pop(tag, None)
                failures = self.pump_locked()
            if future is not None:
                _settle(future, ok, value)
            del future, value  # (not kept alive while the next outcome is awaited)
            for fut, exc in failures:
                fut.set_exception(exc)
        with self.lock:
            left = list(self.inflight.values())
            left += [i.future for i in self.pending if i.future.set_running_or_notify_cancel()]
            self.inflight.clear()
            self.pending.clear()
        for future in left:
            future.set_exception(
                for_executor(
                    PoolError(
                    "the executor's workers were stopped before this call finished"
                        if cause is None
                        else f"the executor stopped delivering results: {cause}"
                    )
                )
            )
        if self.closed:
            self.engine.join()

    def start_map(self, fn, items, chunksize, timeout):
        with self.lock:
            if self.shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _global_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            run = self.engine.run(
                fn, items, star=True, chunksize=chunksize, ordered=True, timeout=timeout,
                collect=True,
            )
            drain = _MapDrain(self, run, len(items))
            self.maps.add(drain)
        drain.start()
        return drain

    def shutdown(self, wait, cancel_futures):
        with self.lock:
            self.shut = True
            cancelled = []
            if cancel_futures:
                cancelled = [item.future for item in self.pending]
                self.pending.clear()
            maps = list(self.maps) if cancel_futures else []
            failures = self.pump_locked()
            thread = self.thread
            maps_to_wait = list(self.maps)
        for future in cancelled:
            future.cancel()
        for drain in maps:
            drain.run.cancel()
        for fut, exc in failures:
            fut.set_exception(exc)
        current = threading.current_thread()
        if wait and current is not thread and all(d.thread is not current for d in maps_to_wait):
            # (not from a done-callback on a result thread: it would wait for itself)
            if thread is not None:
                thread.join()
            for drain in maps_to_wait:
                drain.thread.join()
            self.engine.join()


class _MapDrain:
    """Reads one map's run in a background thread, so that the work goes on whether or
    not the caller iterates (as the stdlib's futures do); the caller's iterator waits on
    it with the map's overall time limit."""

    def __init__(self, core, run, length):
        self.core = core
        self.run = run
        self.length = length
        self.cond = threading.Condition(threading.Lock())
        self.items = collections.deque()
        self.finished = False
        self.thread = threading.Thread(
            target=self._drain, name="procpool-executor-map", daemon=True
        )

    def start(self):
        self.thread.start()

    def _drain(self):
        _pickle.result_thread()
        error = None
        try:
            for outcome in self.run:
                with self.cond:
                    self.items.append(outcome)
                    self.cond.notify()
                del outcome  # (not kept alive while the next one is awaited)
        except Exception as exc:  # the engine failed mid-run
            error = exc
        with self.cond:
            if len(self.items) < self.length or error is not None:
                self.items.append(
                    (
                        -1,
                        False,
                        PoolError(
                            "the executor's workers were stopped before this map finished"
                            if error is None
                            else f"the executor stopped delivering results: {error}"
                        ),
                    )
                )
            self.finished = True
            self.cond.notify()
        with self.core.lock:
            self.core.maps.discard(self)

    def results(self, end_time):
        """The map's results in order; ``end_time`` (monotonic) bounds the whole iteration."""
        try:
            for _ in range(self.length):
                with self.cond:
                    while not self.items:
                        if end_time is None:
                            self.cond.wait()
                        else:
                            remaining = end_time - time.monotonic()
                            if remaining <= 0:
                                raise concurrent.futures.TimeoutError
                            self.cond.wait(remaining)
                    _, ok, value = self.items.popleft()
                if not ok:
                    raise for_executor(value)
                # The generator holds no reference to the value while the caller has it
                # (CPython issue 14406).
                box = [value]
                del value
                yield box.pop()
        finally:
            if not self.finished:
                self.run.cancel()


class ProcessPoolExecutor(concurrent.futures.Executor):
    """An executor that runs calls in worker processes; a drop-in replacement for
    :class:`concurrent.futures.ProcessPoolExecutor`.

    ``max_workers`` defaults to :func:`procpool.cpu_count`. ``initializer(*initargs)``
    runs once in each worker. ``max_tasks_per_child`` replaces a worker after that many
    calls. ``mp_context`` is accepted for compatibility and ignored: workers are always
    forked from procpool's template process.

    Beyond the stdlib (keyword-only): ``timeout`` is a per-call time limit in seconds (a
    call past it has its worker killed and its future fails with
    :class:`procpool.TaskTimeoutError`); ``retries`` re-runs a call whose worker died that
    many times before failing it with :class:`procpool.WorkerDied`; ``max_message_size``
    is the largest pickled call (arguments, or result) in bytes, 4 GiB - 1 KiB at most and
    by default (a larger one fails its future with :class:`procpool.MessageTooLarge`);
    ``mpi=True``, under ``mpirun``, runs the calls on the other ranks of the MPI job,
    ``max_workers`` on each (a local executor when not under ``mpirun``; see
    :mod:`procpool.mpi`).

    A worker's death fails only the future of the call it ran; the executor replaces the
    worker and stays usable. Up to ``4 × max_workers`` calls are handed to the workers
    ahead; later ones wait in the executor, where :meth:`concurrent.futures.Future.cancel`
    and ``shutdown(cancel_futures=True)`` reach them.

    Example::

        import concurrent.futures, procpool

        with procpool.ProcessPoolExecutor(max_workers=2, timeout=60) as ex:
            futures = [ex.submit(pow, 2, n) for n in range(4)]
            for f in concurrent.futures.as_completed(futures):
                print(f.result())
    """

    def __init__(
        self,
        max_workers=None,
        mp_context=None,
        initializer=None,
        initargs=(),
        max_tasks_per_child=None,
        *,
        timeout=None,
        retries=0,
        max_message_size=None,
        mpi=False,
    ):
        self._core = None
        if max_workers is not None:
            if isinstance(max_workers, int) and max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
        mpi = _mpi_workers(mpi, max_workers)
        max_workers = _check_processes(max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
            # As the stdlib (procpool's workers are forked from its template whatever
            # the context, but a program written for the stdlib must not depend on it).
            if mp_context is None:
                mp_context = multiprocessing.get_context("spawn")
            elif mp_context.get_start_method(allow_none=False) == "fork":
                raise ValueError(
                    "max_tasks_per_child is incompatible with the 'fork' multiprocessing "
                    "start method; supply a different mp_context."
                )
            max_tasks_per_child = int(max_tasks_per_child)
        engine, timeout, retries = _start_engine(
            max_workers,
            initializer,
            initargs,
            max_tasks_per_child,
            timeout,
            retries,
            max_message_size,
            mpi,
        )
        # Over MPI: the workers of every agent.
        self._max_workers = max_workers if mpi is None else engine.processes
        self._mp_context = mp_context
        self._timeout = timeout
        self._core = _ExecutorCore(engine)
        _live_cores.add(self._core)
        # An executor dropped without shutdown() finishes its work, then stops its workers.
        weakref.finalize(self, self._core.shutdown, False, False)

    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)`` and return a :class:`concurrent.futures.Future`.

        The future is marked running once the call is handed to the engine. An argument
        that cannot be pickled fails this future with the pickling error. Raises
        RuntimeError after :meth:`shutdown`.

        Example::

            with procpool.ProcessPoolExecutor(2) as ex:
                assert ex.submit(divmod, 7, 2).result(timeout=10) == (3, 1)
        """
        return self._core.submit(fn, args, kwargs)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Return an iterator of ``fn(*args)`` for ``args`` in ``zip(*iterables)``, in order.

        As the stdlib: the iterables are read at once and every call is scheduled
        before this returns; ``timeout`` bounds the whole iteration, measured from this
        call, and raises :class:`concurrent.futures.TimeoutError`; a failed call raises
        its exception at its position and ends the iteration. ``chunksize`` items travel
        per job. Leaving the iterator early cancels the calls it has not returned.

        Example::

            with procpool.ProcessPoolExecutor(2) as ex:
                assert list(ex.map(pow, [2, 3], [2, 2], timeout=60)) == [4, 9]
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else time.monotonic() + float(timeout)
        items = list(zip(*iterables))
        drain = self._core.start_map(fn, items, chunksize, None)
        return drain.results(end_time)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Accept no new calls; with ``wait`` return once every call has finished and the
        workers have exited. ``cancel_futures`` cancels calls not yet handed to a worker.

        Safe to call several times. Leaving a ``with`` block calls ``shutdown(wait=True)``.

        Example::

            ex = procpool.ProcessPoolExecutor(2)
            f = ex.submit(abs, -1)
            ex.shutdown()
            assert f.result() == 1
        """
        core = self._core
        if core is not None:
            core.shutdown(wait, cancel_futures)

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: the stdlib's workers get the terminal's SIGINT too and their calls
            # end at once; procpool's workers leave it to the caller, so the calls still
            # running are stopped here rather than waited for.
            core = self._core
            if core is not None:
                core.shutdown(False, True)
                core.engine.terminate()
            return False
        self.shutdown(wait=True)
        return False

    def __repr__(self):
        core = self._core
        state = "shutdown" if core is None or core.shut else "running"
        return f"<procpool.ProcessPoolExecutor {state} max_workers={self._max_workers}>"

    def __reduce__(self):
        raise NotImplementedError("executor objects cannot be passed between processes or pickled")
