"""Descriptors that travel with a task's arguments (private).

Some values stand for an open file: the shared memory of a :class:`procpool.Value`, a
lock or a :func:`procpool.shared` value. Bytes alone cannot carry them to another process;
the descriptor goes with the job (``SCM_RIGHTS``, the engine's ``Job::fds``). While a job's
arguments are pickled, :func:`begin` opens a list; a value's ``__reduce__`` calls
:func:`attach`, which puts a duplicate of its descriptor in the list and returns its
*slot*, written into the pickle. The Rust side takes the list with :func:`end` and sends
it with the job. In the worker, the job's descriptors are made visible with
:func:`receiving` while the arguments are unpickled, and a value's rebuild function reads
its slot with :func:`received`.

Outside such a pickling (``pickle.dumps`` by hand, a task's result), :func:`attach` raises
``RuntimeError``, as the standard library does for its own shared objects.
"""

from __future__ import annotations

import os
import threading

from . import _core

#: Most descriptors one job may carry (the engine's limit).
MAX_JOB_FDS = _core.MAX_JOB_FDS

_tls = threading.local()

#: Descriptors a worker received at its start for its pool's initializer (``initargs``).
_init_fds: list = []


class _Encoding:
    __slots__ = ("fds", "keys", "remote")

    def __init__(self, remote: bool) -> None:
        self.fds: list = []
        self.keys: dict = {}
        self.remote = remote


def begin(remote: bool = False):
    """Starts collecting descriptors on this thread; returns what :func:`end` needs.
    ``remote``: the job goes to another host (an MPI pool with agents), see
    :func:`host_bound`."""
    prev = getattr(_tls, "enc", None)
    _tls.enc = _Encoding(remote)
    return prev


def end(prev) -> list:
    """Stops collecting; returns the descriptors attached since :func:`begin` (owned by
    the caller: duplicates, to send then close)."""
    enc = getattr(_tls, "enc", None)
    _tls.enc = prev
    return enc.fds if enc is not None else []


def discard(fds) -> None:
    """Closes descriptors collected for a job that will not be sent."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def active() -> bool:
    """Whether a job's arguments are being pickled on this thread."""
    return getattr(_tls, "enc", None) is not None


def host_bound(fd: int) -> None:
    """Called while a value that refers to a descriptor of this process *by number*
    (a procpool ``Queue``, ``SimpleQueue`` or ``Pipe`` end: see ``_passfd_msg``) is
    pickled. For a job that goes to another host (:func:`begin` with ``remote``) that
    reference would name a descriptor of some other process there; the descriptor is
    then attached to the job, so that the pool refuses the job as it refuses every job
    that carries descriptors (shared memory, locks) to another host."""
    enc = getattr(_tls, "enc", None)
    if enc is not None and enc.remote:
        attach(fd, ("host-bound", fd), "procpool Queue")


def attach(fd: int, key, what: str) -> int:
    """The slot of ``fd`` in the job being pickled (the same slot for the same ``key``
    within one job). ``what`` names the value in the error raised outside a job."""
    enc = getattr(_tls, "enc", None)
    if enc is None:
        from . import _passfd_msg

        if getattr(_passfd_msg._local, "out", None) is not None:
            # Pickled into a Process's arguments or a queue message: the descriptor goes
            # with that message (borrowed until it is sent).
            return _passfd_msg.attach(fd)[1]
        raise RuntimeError(
            f"{what} objects can only be sent to procpool processes: as (part of) the "
            "arguments of a task (Pool.map, apply, imap..., ProcessPoolExecutor.submit), "
            "in a Pool's initargs, or as a procpool.Process's arguments; not pickled "
            "otherwise (a task's result, pickle.dumps, a multiprocessing queue)"
        )
    slot = enc.keys.get(key)
    if slot is not None:
        return slot
    if len(enc.fds) >= MAX_JOB_FDS:
        raise ValueError(
            f"a job would carry more than {MAX_JOB_FDS} descriptors (shared values, "
            "locks): send fewer distinct ones per task or use a smaller chunksize"
        )
    enc.fds.append(os.dup(fd))
    slot = len(enc.fds) - 1
    enc.keys[key] = slot
    return slot


class receiving:
    """Context manager: ``fds`` (borrowed: the caller closes them) are the descriptors of
    the job whose arguments are unpickled inside it."""

    __slots__ = ("fds", "prev")

    def __init__(self, fds) -> None:
        self.fds = fds

    def __enter__(self):
        self.prev = getattr(_tls, "dec", None)
        _tls.dec = self.fds
        return self

    def __exit__(self, *exc) -> None:
        _tls.dec = self.prev


def received(slot: int) -> int:
    """A duplicate (owned by the caller) of the descriptor in ``slot`` of the job being
    unpickled."""
    fds = getattr(_tls, "dec", None)
    if fds is None:
        from . import _passfd_msg

        if getattr(_passfd_msg._local, "inp", None) is not None:
            # Unpickled from a Process's arguments or a queue message.
            return _passfd_msg.take(("slot", slot))
        raise RuntimeError(
            "a procpool shared value arrived outside a procpool task's arguments: it "
            "cannot be rebuilt here"
        )
    if not 0 <= slot < len(fds):
        raise RuntimeError(
            f"a shared value refers to descriptor slot {slot}, but the job carried "
            f"{len(fds)} descriptors"
        )
    return os.dup(fds[slot])


def adopt_init_fds(fds) -> None:
    """In a new worker, before its loop closes every inherited descriptor: maps the
    shared memory its initializer's arguments refer to (found by the memfd's name), so
    that they are rebuilt from the mappings, and closes ``fds``."""
    if not fds:
        return
    from . import _heap

    for fd in fds:
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
            tail = name.partition(_heap.NAME)[2].split(" ")[0]
            if tail:
                _heap.adopt(fd, int(tail, 16)).forget_fd()
            elif _SHARED_NAME in name:
                from . import _shared

                _shared.adopt(fd, int(name.partition(_SHARED_NAME)[2].split(" ")[0], 16))
        finally:
            os.close(fd)


_SHARED_NAME = "procpool-value-"


def take_init_fds() -> list:
    """The descriptors this worker got for its initializer (once; the caller closes
    them)."""
    global _init_fds
    fds, _init_fds = _init_fds, []
    return fds
