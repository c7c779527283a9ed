"""Task functions the tests send to workers (importable, so they go by reference)."""

import ctypes
import os
import signal
import threading
import time
import zlib

INIT_VALUE = None


class CustomError(Exception):
    """An exception with two arguments and an extra attribute."""

    def __init__(self, code, text):
        super().__init__(code, text)
        self.code = code


def square(x):
    return x * x


def double(x):
    return x * 2


def add(a, b):
    return a + b


def add_kw(a, b=0, *, c=0):
    return a + b + c


def identity(x):
    return x


def describe(x):
    """A value depending on every part of `x`."""
    return (type(x).__name__, repr(x))


def fail_on(x, bad=3):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x * x


def fail_custom(code):
    raise CustomError(code, "custom failure")


def deep_raise(n):
    if n == 0:
        raise KeyError("deep")
    return deep_raise(n - 1)


def getpid(_=None):
    return os.getpid()


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def spin_forever(_=None):
    while True:
        pass


def busy_spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def exit_with(code):
    os._exit(code)


def kill_self(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault(_=None):
    ctypes.string_at(0)


def die_on(x, bad=5):
    """`os._exit(3)` on the bad item, else the square."""
    if x == bad:
        os._exit(3)
    return x * x


def hang_on(x, bad=5):
    if x == bad:
        spin_forever()
    return x * x


def make_lock(_=None):
    return threading.Lock()


def first_len(x):
    return len(x)


def init_global(value):
    global INIT_VALUE
    INIT_VALUE = value


def get_init(_=None):
    return INIT_VALUE, os.getpid()


def write_pid_and_sleep(path, seconds):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    time.sleep(seconds)
    return "finished"


def die_once(marker):
    """Dies the first time (creating `marker`), returns the pid the second time."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(7)
    return os.getpid()


def checksum(data):
    return len(data), zlib.crc32(data)


def array_summary(a):
    import numpy as np

    return a.shape, str(a.dtype), float(np.asarray(a, dtype=np.float64).sum())


def sleep_tag(pair):
    """`(seconds, tag)`: sleeps, then returns the tag."""
    time.sleep(pair[0])
    return pair[1]


def _rebuild_badly(how):
    """Rebuilds an :class:`AtUnpickle` argument: fails or kills the process, as told."""
    if how == "exit":
        os._exit(1)
    if how == "segv":
        ctypes.string_at(0)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    if how == "raise":
        raise ValueError("this argument cannot be rebuilt")
    if how == "sysexit":
        raise SystemExit(5)
    return how


class AtUnpickle:
    """An argument whose unpickling (in a worker) does ``how``: ``exit`` (``os._exit``),
    ``segv``, ``kill`` (SIGKILL), ``raise`` (``ValueError``) or ``sysexit``
    (``SystemExit``). Pickling it in the parent is harmless."""

    def __init__(self, how):
        self.how = how

    def __reduce__(self):
        return (_rebuild_badly, (self.how,))


class OnlyInWorker:
    """An argument that can be rebuilt only in a worker whose initializer ran
    (:func:`init_rebuild`): unpickling it anywhere else raises."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (_rebuild_in_worker, (self.value,))


_WORKER_READY = False


def init_rebuild():
    global _WORKER_READY
    _WORKER_READY = True


def _rebuild_in_worker(value):
    if not _WORKER_READY:
        raise RuntimeError("rebuilt outside an initialized worker")
    return value


def value_of(x):
    return x.value if isinstance(x, OnlyInWorker) else x


def value_after(x, seconds=5):
    """``x``'s value (see :class:`OnlyInWorker`) after ``seconds``."""
    time.sleep(seconds)
    return value_of(x)
