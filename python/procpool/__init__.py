"""procpool for Python: process pools that survive their workers' crashes, and the rest
of :mod:`multiprocessing` on the same engine.

``procpool.Pool`` is a drop-in replacement for :class:`multiprocessing.Pool` and
``procpool.ProcessPoolExecutor`` for :class:`concurrent.futures.ProcessPoolExecutor`,
both on procpool's Rust engine; ``Process``, ``Queue``, ``SimpleQueue``,
``JoinableQueue``, ``Pipe`` and ``get_context`` replace their :mod:`multiprocessing`
namesakes. Beyond the stdlib:

* a worker that dies (signal, ``os._exit``, a segfault in C code) fails only its own task,
  with :class:`WorkerDied` naming the signal or exit code; the pool replaces it and goes on;
* ``timeout=`` per task kills the worker of a task past its limit
  (:class:`TaskTimeoutError`); ``retries=`` re-runs a task whose worker died;
* chunks are sized automatically; functions and classes of the main module go by
  reference (as with ``spawn``), lambdas and closures by value (cloudpickle);
* a process's children die with it, and with the parent;
* a queue message is sent whole or not at all, even by a process killed mid-``put``;
* Ctrl-C during ``map`` raises KeyboardInterrupt at once and leaves no worker behind.

Shared data and synchronization, as in :mod:`multiprocessing`, in shared memory that
pool workers receive with their task arguments or ``initargs``: ``Value``, ``Array``,
``RawValue``, ``RawArray`` (:mod:`procpool.sharedctypes`), ``Lock``, ``RLock``,
``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Condition``, ``Barrier``
(:mod:`procpool.synchronize`; a lock whose holder dies goes to the next acquirer, which is
told), and ``shared(obj)``: a read-only value decoded once per worker, NumPy arrays read
in place.

``import procpool`` loads nothing else: each name is imported on first use.

Example::

    import procpool

    def compute(n):
        return sum(i ** 0.5 for i in range(1, n + 1))

    if __name__ == "__main__":
        with procpool.Pool() as pool:                 # one worker per core
            print(pool.map(compute, [10_000_000] * 8))
"""

# Where each public name lives: imported on first use (PEP 562), so that a program pays
# only for what it uses.
_LAZY = {
    "Pool": ".pool",
    "cpu_count": ".pool",
    "ProcessPoolExecutor": ".executor",
    "PoolError": "._errors",
    "MessageTooLarge": "._errors",
    "TaskTimeoutError": "._errors",
    "WorkerDied": "._errors",
    "AgentLost": "._errors",
    "Process": ".process",
    "current_process": ".process",
    "parent_process": ".process",
    "active_children": ".process",
    "Queue": ".queues",
    "SimpleQueue": ".queues",
    "JoinableQueue": ".queues",
    "Pipe": ".queues",
    "get_context": ".context",
    "set_start_method": ".context",
    "get_start_method": ".context",
    "get_all_start_methods": ".context",
    "freeze_support": ".context",
    "Lock": ".synchronize",
    "RLock": ".synchronize",
    "Semaphore": ".synchronize",
    "BoundedSemaphore": ".synchronize",
    "Event": ".synchronize",
    "Condition": ".synchronize",
    "Barrier": ".synchronize",
    "BrokenBarrierError": ".synchronize",
    "HolderDiedWarning": ".synchronize",
    "Value": ".sharedctypes",
    "Array": ".sharedctypes",
    "RawValue": ".sharedctypes",
    "RawArray": ".sharedctypes",
    "shared": "._shared",
    "SharedHandle": "._shared",
}

__all__ = sorted([*_LAZY, "TimeoutError", "__version__"])


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is not None:
        import importlib

        value = getattr(importlib.import_module(mod, __name__), name)
    elif name == "TimeoutError":
        # Raised by ``AsyncResult.get(timeout)`` and ``imap(...).next(timeout)`` when the
        # wait runs out: :class:`multiprocessing.TimeoutError` itself.
        # :class:`TaskTimeoutError` is a subclass of it.
        import multiprocessing

        value = multiprocessing.TimeoutError
    elif name == "__version__":
        value = _version()
    else:
        raise AttributeError(f"module 'procpool' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__


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
