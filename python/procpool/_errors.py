"""Exceptions of procpool's pools (re-exported by :mod:`procpool`).

A task's own exception reaches the parent as that same exception, with the worker's
formatted traceback attached as its ``__cause__`` (a :class:`RemoteTraceback`), exactly as
:mod:`multiprocessing.pool` does. The classes below tell what went wrong *around* a task.
"""

from __future__ import annotations

import multiprocessing
import signal as _signal
from multiprocessing.pool import MaybeEncodingError, RemoteTraceback

__all__ = [
    "MaybeEncodingError",
    "MessageTooLarge",
    "PoolError",
    "RemoteTraceback",
    "TaskTimeoutError",
    "WorkerDied",
]


def _signal_name(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class WorkerDied(multiprocessing.ProcessError):
    """The worker running this task ended: killed by a signal, ``os._exit``, a crash in C
    code. The pool replaced the worker; the other tasks were not affected.

    >>> e = WorkerDied(1234, None, 9)
    >>> str(e)
    'the worker process 1234 running this task was killed by SIGKILL (signal 9)'
    >>> e.signal, e.exitcode
    (9, None)
    """

    def __init__(self, pid: int, exitcode: int | None = None, signal: int | None = None):
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        if signal is not None:
            how = f"was killed by {_signal_name(signal)} (signal {signal})"
        elif exitcode is not None:
            how = f"exited with code {exitcode}"
        else:
            how = "ended (its exit status is unknown: SIGCHLD is ignored in this process)"
        super().__init__(f"the worker process {pid} running this task {how}")

    def __reduce__(self):
        return (type(self), (self.pid, self.exitcode, self.signal))


class AgentLost(WorkerDied):
    """The MPI agent running this task (a rank of the job, on its host) was lost: its
    process ended or its host became unreachable, with its workers. The pool goes on with
    the agents left; with ``retries=`` the task runs again on one of them, as after a
    worker's death. A :class:`WorkerDied`, so code that handles deaths handles this too.

    >>> e = AgentLost(0, "MPI rank 2 (host node-a)")
    >>> e.agent
    'MPI rank 2 (host node-a)'
    >>> isinstance(e, WorkerDied)
    True
    """

    def __init__(self, pid: int, agent: str):
        self.pid = pid
        self.exitcode = None
        self.signal = None
        self.agent = agent
        multiprocessing.ProcessError.__init__(
            self,
            f"the agent running this task, {agent}, was lost (its process ended or its "
            "host became unreachable), with its workers",
        )

    def __reduce__(self):
        return (type(self), (self.pid, self.agent))


class TaskTimeoutError(multiprocessing.TimeoutError):
    """The task ran past its time limit; its worker was killed and replaced.

    >>> str(TaskTimeoutError(1234, 0.5))
    'the task ran past its time limit of 0.5 s; its worker process 1234 was killed'
    """

    def __init__(self, pid: int, timeout: float):
        self.pid = pid
        self.timeout = timeout
        super().__init__(
            f"the task ran past its time limit of {timeout:g} s; "
            f"its worker process {pid} was killed"
        )

    def __reduce__(self):
        return (type(self), (self.pid, self.timeout))


class PoolError(RuntimeError):
    """The pool cannot run work: no worker could start, or it was terminated."""


class MessageTooLarge(PoolError):
    """A task's pickled arguments or result are larger than the pool's
    ``max_message_size=``: that task fails, the pool goes on.

    >>> issubclass(MessageTooLarge, PoolError)
    True
    """


# -- the executor's kinds -------------------------------------------------------------
# On the ProcessPoolExecutor side a worker's death and a stopped executor are also
# ``concurrent.futures.process.BrokenProcessPool`` (so that code written for the stdlib
# executor still catches them), while still ``WorkerDied`` / ``PoolError``. The Pool's are
# not: ``multiprocessing.Pool`` has no such exception, and a RuntimeError base there
# would change what ``except RuntimeError`` catches in Pool users' code.


def _executor_kinds():
    """``(ExecutorWorkerDied, ExecutorPoolError, remote traceback class)``, made on first
    use: importing ``concurrent.futures.process`` would cost every program's first pool
    about 10 ms. ``procpool.executor`` makes them when it is imported: that module
    registers an exit handler, which Python refuses once it is shutting down, so a first
    import from an executor's results thread after Ctrl-C would fail there."""
    global _kinds
    if _kinds is None:
        from concurrent.futures.process import BrokenProcessPool

        try:
            from concurrent.futures.process import _RemoteTraceback
        except ImportError:  # pragma: no cover - the stdlib's private name moved
            _RemoteTraceback = RemoteTraceback

        class ExecutorWorkerDied(WorkerDied, BrokenProcessPool):
            """:class:`WorkerDied` as a ProcessPoolExecutor delivers it (also a
            ``BrokenProcessPool``)."""

        class ExecutorPoolError(PoolError, BrokenProcessPool):
            """:class:`PoolError` as a ProcessPoolExecutor delivers it (also a
            ``BrokenProcessPool``)."""

        for cls in (ExecutorWorkerDied, ExecutorPoolError):
            cls.__qualname__ = cls.__name__  # found by name (pickle), through __getattr__
        _kinds = (ExecutorWorkerDied, ExecutorPoolError, _RemoteTraceback)
    return _kinds


_kinds = None


def __getattr__(name):
    if name == "ExecutorWorkerDied":
        return _executor_kinds()[0]
    if name == "ExecutorPoolError":
        return _executor_kinds()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def for_executor(exc):
    """The exception a ProcessPoolExecutor's future gets for ``exc``: a worker's death or
    a stopped pool becomes its ``BrokenProcessPool`` kind, a remote traceback the
    ``concurrent.futures`` one; anything else is ``exc`` itself."""
    if type(exc) is WorkerDied:
        new = _executor_kinds()[0](exc.pid, exc.exitcode, exc.signal)
    elif type(exc) is PoolError:
        new = _executor_kinds()[1](*exc.args)
    else:
        new = exc
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        cause = _executor_kinds()[2](cause.tb)
    if new is not exc or cause is not exc.__cause__:
        new.__cause__ = cause
    return new
