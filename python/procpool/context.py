"""``get_context`` and the other start-method shims of :mod:`multiprocessing`, for
programs ported to procpool.

procpool has one start method, its own (``"procpool"``: a fork of a clean template
interpreter, with the main module seen as ``spawn`` shows it). ``get_context(method)``
accepts the stdlib's names (``"fork"``, ``"spawn"``, ``"forkserver"``, or ``None``) so
that ported code runs unchanged, and returns an object with procpool's classes.

Example::

    >>> import procpool
    >>> ctx = procpool.get_context("spawn")
    >>> q = ctx.Queue()
    >>> q.put(1); q.get(timeout=1)
    1
"""

from __future__ import annotations

__all__ = [
    "get_context",
    "set_start_method",
    "get_start_method",
    "get_all_start_methods",
    "freeze_support",
    "ProcpoolContext",
]

_METHODS = ("procpool", "fork", "spawn", "forkserver")
_method = None


def _check_method(method):
    if method is not None and method not in _METHODS:
        raise ValueError(f"cannot find context for {method!r}")


class ProcpoolContext:
    """What :func:`get_context` returns: procpool's classes under the stdlib's names."""

    def __init__(self, method="procpool"):
        self._name = method

    def get_start_method(self, allow_none=False):
        """The name this context was asked for."""
        return self._name

    def cpu_count(self):
        """:func:`procpool.cpu_count`."""
        from .pool import cpu_count

        return cpu_count()

    def Process(self, *args, **kwargs):
        """:class:`procpool.Process`."""
        from .process import Process

        return Process(*args, **kwargs)

    def Queue(self, maxsize=0):
        """:class:`procpool.Queue`."""
        from .queues import Queue

        return Queue(maxsize)

    def JoinableQueue(self, maxsize=0):
        """:class:`procpool.JoinableQueue`."""
        from .queues import JoinableQueue

        return JoinableQueue(maxsize)

    def SimpleQueue(self):
        """:class:`procpool.SimpleQueue`."""
        from .queues import SimpleQueue

        return SimpleQueue()

    def Pipe(self, duplex=True):
        """:func:`procpool.Pipe`."""
        from .queues import Pipe

        return Pipe(duplex)

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):
        """:class:`procpool.Pool`."""
        from .pool import Pool

        return Pool(processes, initializer, initargs, maxtasksperchild)

    def current_process(self):
        from .process import current_process

        return current_process()

    def parent_process(self):
        from .process import parent_process

        return parent_process()

    def active_children(self):
        from .process import active_children

        return active_children()

    def freeze_support(self):
        """Does nothing (procpool's workers are never a frozen executable run again)."""

    def get_context(self, method=None):
        return get_context(method)

    def __getattr__(self, name):
        # Synchronization and shared values (procpool's where it has them).
        import procpool

        try:
            return getattr(procpool, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def get_context(method=None):
    """A context object with procpool's classes; ``method`` may be any of the stdlib's
    names (all mean procpool's own start), else ``ValueError``."""
    _check_method(method)
    return ProcpoolContext(method or get_start_method())


def set_start_method(method, force=False):
    """Records ``method`` (one of the stdlib's names) as :func:`get_start_method` will
    tell it; procpool starts processes its own way whatever it is. ``RuntimeError`` when
    already set and not ``force``, as the stdlib."""
    global _method
    _check_method(method)
    if _method is not None and not force:
        raise RuntimeError("context has already been set")
    _method = method


def get_start_method(allow_none=False):
    """The method set with :func:`set_start_method`, else ``"procpool"``."""
    if _method is None and allow_none:
        return None
    return _method or "procpool"


def get_all_start_methods():
    """The names :func:`get_context` accepts."""
    return list(_METHODS)


def freeze_support():
    """Does nothing: kept so that programs written for the stdlib run unchanged."""
