"""Task functions of the attack tests (importable, so they go by reference)."""

import ctypes
import os
import signal
import time


def _log(d, line):
    fd = os.open(os.path.join(d, "log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _die(how):
    if how == "exit":
        os._exit(3)
    if how == "segv":
        ctypes.string_at(0)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    raise AssertionError(how)


def logged(arg):
    """``(i, how, dir)``: logs ``start i``; dies as told (``how``), else logs ``end i``
    and returns ``i * 3``."""
    i, how, d = arg
    _log(d, f"start {i}")
    if how:
        _die(how)
    _log(d, f"end {i}")
    return i * 3


class DiesWhenPickled:
    """A result whose pickling (in the worker) kills the worker."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        _die(self.how)


def result_dies(arg):
    """``(i, how, dir)``: like :func:`logged`, but item with ``how`` returns a result
    whose pickling kills its worker (after logging ``end i``)."""
    i, how, d = arg
    _log(d, f"start {i}")
    _log(d, f"end {i}")
    if how:
        return DiesWhenPickled(how)
    return i * 3


def _rebuild_marking(d, i):
    _log(d, f"unpickled {i} {os.getpid()}")
    return i


class Marks:
    """An argument whose unpickling logs the pid of the process that unpickles it."""

    def __init__(self, d, i):
        self.d, self.i = d, i

    def __reduce__(self):
        return (_rebuild_marking, (self.d, self.i))


def marks_or_dies(arg):
    """``(marks, how)``: dies as told, else returns the mark's index."""
    m, how = arg
    if how:
        _die(how)
    return m


class Custom(BaseException):
    pass


def raises_base(arg):
    """``(i, kind, dir)``: logs like :func:`logged`; item with ``kind`` raises it."""
    i, kind, d = arg
    _log(d, f"start {i}")
    if kind == "sysexit":
        raise SystemExit(4)
    if kind == "kbint":
        raise KeyboardInterrupt
    if kind == "genexit":
        raise GeneratorExit
    if kind == "custom":
        raise Custom("custom")
    _log(d, f"end {i}")
    return i * 3
