"""Argument checks shared by ``procpool.Pool`` and ``procpool.ProcessPoolExecutor``,
and the engine start both make."""

import math
import operator
import os

from . import _core


def cpu_count():
    """Return the number of CPUs this process may run on (at least 1).

    This is the default size of :class:`Pool` and :class:`ProcessPoolExecutor`. Unlike
    :func:`multiprocessing.cpu_count` it honours the CPU affinity mask (``taskset``,
    container CPU sets), as ``os.process_cpu_count()`` does on Python 3.13+.

    Example::

        >>> import procpool
        >>> procpool.cpu_count() >= 1
        True
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, n)





def _check_timeout(timeout, what="timeout"):
    """Return a per-task time limit in seconds as a float, or None for no limit."""
    if timeout is None:
        return None
    import numbers

    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(timeout).__name__}")
    value = float(timeout)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds or None, not {timeout!r}")
    if math.isinf(value):
        return None
    return value


def _check_retries(retries):
    if isinstance(retries, bool):
        raise TypeError("retries must be an int, not bool")
    try:
        value = operator.index(retries)
    except TypeError:
        raise TypeError(f"retries must be an int, not {type(retries).__name__}") from None
    if value < 0:
        raise ValueError(f"retries must be 0 or more, not {value}")
    return value


def _check_max_message_size(size):
    """The largest pickled task (arguments or result) a pool takes, in bytes, or None
    for the largest the engine can (``_core.MAX_MESSAGE_SIZE``, 4 GiB - 1 KiB)."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise TypeError("max_message_size must be an int (bytes) or None, not bool")
    try:
        value = operator.index(size)
    except TypeError:
        raise TypeError(
            f"max_message_size must be an int (bytes) or None, not {type(size).__name__}"
        ) from None
    if not 1 <= value <= _core.MAX_MESSAGE_SIZE:
        raise ValueError(
            f"max_message_size must be between 1 and {_core.MAX_MESSAGE_SIZE} bytes, "
            f"not {value}"
        )
    return value


def _start_engine(
    workers,
    initializer,
    initargs,
    maxtasksperchild,
    timeout,
    retries,
    max_message_size=None,
    mpi=None,
):
    """Checks ``timeout``, ``retries`` and ``max_message_size``, then starts the engine of
    a pool or executor (its other arguments already checked): ``(engine, timeout,
    retries)``. ``mpi``: see :func:`_mpi_workers`."""
    from ._bootstrap import check

    check()
    timeout = _check_timeout(timeout)
    retries = _check_retries(retries)
    max_message_size = _check_max_message_size(max_message_size)
    core, extra = _core, {}
    if mpi is not None:
        from .mpi import _engine_module

        core, workers, extra = _engine_module(), mpi, {"mpi": True}
    engine = core.Engine(
        workers,
        initializer=initializer,
        initargs=tuple(initargs),
        maxtasksperchild=maxtasksperchild,
        timeout=timeout,
        retries=retries,
        max_message_size=max_message_size,
        **extra,
    )
    return engine, timeout, retries


def _mpi_workers(mpi, processes):
    """For ``mpi=True`` under an MPI launcher, the workers per agent (0: the default);
    ``None`` for a local pool (``mpi`` false, or no launcher)."""
    if not mpi:
        return None
    from .mpi import launched

    if not launched():
        return None
    return 0 if processes is None else _check_processes(processes)


def _check_chunksize(chunksize):
    if chunksize is None:
        return None
    try:
        value = operator.index(chunksize)
    except TypeError:
        raise TypeError(
            f"chunksize must be an int or None, not {type(chunksize).__name__}"
        ) from None
    if value < 1:
        raise ValueError("Chunksize must be 1+, not {0:n}".format(value))
    return value


def _check_processes(processes):
    if processes is None:
        return cpu_count()
    try:
        value = operator.index(processes)
    except TypeError:
        raise TypeError(
            f"processes must be an int or None, not {type(processes).__name__}"
        ) from None
    if value < 1:
        raise ValueError("Number of processes must be at least 1")
    if value > _core.MAX_WORKERS:
        raise ValueError(
            f"Number of processes must be at most {_core.MAX_WORKERS} (each is a process)"
        )
    return value
