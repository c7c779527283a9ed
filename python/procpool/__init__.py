"""procpool for Python: process pools that survive their workers' crashes.

``procpool.Pool`` is a drop-in replacement for :class:`multiprocessing.Pool` and
``procpool.ProcessPoolExecutor`` for :class:`concurrent.futures.ProcessPoolExecutor`,
both on procpool's Rust engine. Beyond the stdlib:

* a worker that dies (signal, ``os._exit``, a segfault in C code) fails only its own task,
  with :class:`WorkerDied` naming the signal or exit code; the pool replaces it and goes on;
* ``timeout=`` per task kills the worker of a task past its limit
  (:class:`TaskTimeoutError`); ``retries=`` re-runs a task whose worker died;
* chunks are sized automatically; lambdas, closures and functions defined in ``__main__``
  are pickled by value (cloudpickle);
* Ctrl-C during ``map`` raises KeyboardInterrupt at once and leaves no worker behind.

Shared data and synchronization, as in :mod:`multiprocessing`, in shared memory that
pool workers receive with their task arguments or ``initargs``: ``Value``, ``Array``,
``RawValue``, ``RawArray`` (:mod:`procpool.sharedctypes`), ``Lock``, ``RLock``,
``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Condition``, ``Barrier``
(:mod:`procpool.synchronize`; a lock whose holder dies goes to the next acquirer, which is
told), and ``shared(obj)``: a read-only value decoded once per worker, NumPy arrays read
in place. They are imported on first use.

Example::

    import procpool

    def compute(n):
        return sum(i ** 0.5 for i in range(1, n + 1))

    if __name__ == "__main__":
        with procpool.Pool() as pool:                 # one worker per core
            print(pool.map(compute, [10_000_000] * 8))
"""

import multiprocessing as _multiprocessing

from ._errors import PoolError, TaskTimeoutError, WorkerDied
from .executor import ProcessPoolExecutor
from .pool import Pool, cpu_count

TimeoutError = _multiprocessing.TimeoutError
"""Raised by ``AsyncResult.get(timeout)`` and ``imap(...).next(timeout)`` when the wait
runs out: :class:`multiprocessing.TimeoutError` itself. :class:`TaskTimeoutError` is a
subclass of it."""


def _version():
    from . import _core

    version = getattr(_core, "__version__", None)
    if version:
        return version
    try:
        from importlib.metadata import PackageNotFoundError, version as _dist_version
    except ImportError:  # pragma: no cover - Python < 3.8
        return "unknown"
    try:
        return _dist_version("procpool")
    except PackageNotFoundError:
        return "unknown"


__version__ = _version()

#: Names of the shared-memory classes, loaded on first use (``procpool.Lock`` imports
#: ``procpool.synchronize``).
_LAZY = {
    "Lock": "synchronize",
    "RLock": "synchronize",
    "Semaphore": "synchronize",
    "BoundedSemaphore": "synchronize",
    "Event": "synchronize",
    "Condition": "synchronize",
    "Barrier": "synchronize",
    "BrokenBarrierError": "synchronize",
    "HolderDiedWarning": "synchronize",
    "Value": "sharedctypes",
    "Array": "sharedctypes",
    "RawValue": "sharedctypes",
    "RawArray": "sharedctypes",
    "shared": "_shared",
    "SharedHandle": "_shared",
}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'procpool' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value

__all__ = [
    "Pool",
    "ProcessPoolExecutor",
    "WorkerDied",
    "TaskTimeoutError",
    "PoolError",
    "TimeoutError",
    "cpu_count",
    "__version__",
    *_LAZY,
]
