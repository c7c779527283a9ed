"""Tasks for test_imap_bound.py (imported by the workers)."""

import os
import signal
import time

#: Byte 4 of an item set to this makes the task SIGKILL its own worker.
KILL = 1


def item(i, kill=False, size=1024):
    """Item ``i``: ``size`` bytes, its index in the first four, ``KILL`` in the fifth
    if it kills its worker."""
    return i.to_bytes(4, "little") + bytes([KILL if kill else 0]) + bytes(size - 5)


def index(x):
    return int.from_bytes(x[:4], "little")


def echo_or_die(x):
    """Returns ``x``; a marked item SIGKILLs its worker first."""
    if x[4] == KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def slow_echo(x):
    """Returns ``x`` after 50 µs (so that a kill from outside lands inside a chunk)."""
    time.sleep(0.00005)
    return x
