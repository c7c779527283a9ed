"""Descriptors inside pickles (private).

A procpool ``Queue``, ``Pipe`` end or shared counter holds descriptors. When one is
pickled for a procpool channel message or a ``Process``, its descriptors travel with the
bytes (``SCM_RIGHTS``): :func:`attach` gives each a slot in the message, and the
receiving side, while it unpickles, takes the descriptor of each slot (:func:`take`).
Pickled anywhere else (a ``Pool`` task's argument, ``initargs``), a value names the
descriptor in its own process instead, and the receiver copies it from there with
``pidfd_getfd`` (:func:`fetch`), which needs that process alive and of the same user.
"""

from __future__ import annotations

import os
import threading

class _Local(threading.local):
    # Defaults: a lookup with nothing set is a plain attribute read, not an exception.
    out = None
    inp = None


_local = _Local()


class sending:
    """While pickling one message: the descriptors attached, in slot order."""

    def __enter__(self):
        self._outer = getattr(_local, "out", None)
        self.fds = _local.out = []
        return self.fds

    def __exit__(self, *exc):
        _local.out = self._outer
        return False


class receiving:
    """While unpickling one message that came with ``fds`` (owned here): descriptors
    no value took are closed at the end."""

    def __init__(self, fds):
        self.fds = list(fds)

    def __enter__(self):
        self._outer = getattr(_local, "inp", None)
        _local.inp = self.fds
        return self

    def __exit__(self, *exc):
        _local.inp = self._outer
        for fd in self.fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        return False


def attach(fd: int):
    """``("slot", n)`` when a message is being pickled, else ``("pid", pid, fd)``."""
    out = getattr(_local, "out", None)
    if out is None:
        from . import _passfd

        # A task's arguments for an MPI pool: refused there (the pid means nothing on
        # another host).
        _passfd.host_bound(fd)
        return ("pid", os.getpid(), fd)
    out.append(fd)
    return ("slot", len(out) - 1)


def take(ref) -> int:
    """The descriptor ``ref`` (from :func:`attach`) names here, owned by the caller."""
    if ref[0] == "slot":
        inp = getattr(_local, "inp", None)
        n = ref[1]
        if inp is None or n >= len(inp) or inp[n] is None:
            raise RuntimeError(
                "a procpool queue or pipe was unpickled outside the message that carried it"
            )
        fd, inp[n] = inp[n], None
        return fd
    _, pid, fd = ref
    if pid == os.getpid():
        return os.dup(fd)
    from . import _core

    try:
        return _core._pidfd_getfd(pid, fd)
    except OSError as e:
        raise RuntimeError(
            f"cannot copy descriptor {fd} of process {pid} (the process that pickled this "
            f"procpool queue or pipe must still run and hold it): {e}"
        ) from e
