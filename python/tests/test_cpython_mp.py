"""CPython's own multiprocessing tests as the oracle: the process, queue, pipe and
connection test classes of ``test/_test_multiprocessing.py`` (the interpreter's own copy)
run against procpool's ``Process``, ``Queue``, ``JoinableQueue`` and ``Pipe``.

The stdlib passes all of them. Those procpool does not pass are listed in
``EXPECTED_FAILURES`` with the reason; each is checked to still fail (so the list stays
honest), and any other failure fails the suite. Skipped when the interpreter has no
``test`` package.
"""

import os
import sys
import unittest

import pytest

T = pytest.importorskip("test._test_multiprocessing")

import procpool  # noqa: E402


class ProcpoolMixin(T.ProcessesMixin):
    """The stdlib's ``ProcessesMixin`` with procpool's classes."""

    Process = procpool.Process
    current_process = staticmethod(procpool.current_process)
    parent_process = staticmethod(procpool.parent_process)
    active_children = staticmethod(procpool.active_children)
    Pipe = staticmethod(procpool.Pipe)
    Queue = staticmethod(procpool.Queue)
    JoinableQueue = staticmethod(procpool.JoinableQueue)


# The classes run; each becomes a test case of this module (named as the stdlib names
# its own, so that children find them by reference).
TESTED = [
    "_TestProcess",
    "_TestSubclassingProcess",
    "_TestQueue",
    "_TestConnection",
    "_TestPoll",
    "_TestPicklingConnections",
]

#: ``"Class.test"``: why procpool fails it (each is run, and must fail).
EXPECTED_FAILURES = {
    "_TestQueue.test_queue_feeder_donot_stop_onexc": (
        "by design: put() pickles in the caller and raises for an object that cannot be "
        "pickled; the stdlib's feeder thread prints the error and drops the object"
    ),
}

#: ``"Class.test"``: why it is not run (it would wait minutes for what cannot come).
SKIPPED = {
    "_TestConnection.test_fd_transfer": (
        "a duplex Pipe end is two one-way channels, so the stdlib's reduction.send_handle "
        "on its fileno() (the receiving socket) does not reach the other end (it waits)"
    ),
    "_TestConnection.test_large_fd_transfer": "as test_fd_transfer",
    "_TestConnection.test_missing_fd_transfer": "as test_fd_transfer",
    "_TestProcess.test_parent_process": (
        "by design: a process's children die with it, so the grandchild cannot report "
        "its parent's death (the test then waits 300 s for its message)"
    ),
}

for _name in TESTED:
    _base = getattr(T, _name, None)
    if _base is None:
        continue
    _new = "WithProcpool" + _name[1:]
    _cls = type(_new, (_base, ProcpoolMixin, unittest.TestCase), {})
    _cls.__qualname__ = _new
    _cls.__module__ = __name__
    globals()[_new] = _cls
    for _key, _why in SKIPPED.items():
        _c, _t = _key.split(".")
        if _c == _name:
            setattr(_cls, _t, unittest.skip(_why)(getattr(_base, _t)))
    for _key, _why in EXPECTED_FAILURES.items():
        _c, _t = _key.split(".")
        if _c == _name:
            setattr(_cls, _t, unittest.expectedFailure(getattr(_base, _t)))
del _name, _base, _new


_OLD_METHOD = []


def setUpModule():
    import multiprocessing

    multiprocessing.process._cleanup()
    _OLD_METHOD.append(multiprocessing.get_start_method(allow_none=True))
    multiprocessing.set_start_method("spawn", force=True)


def tearDownModule():
    import multiprocessing.util

    # The other test files use the stdlib's default start method as their oracle.
    multiprocessing.set_start_method(_OLD_METHOD.pop(), force=True)
    multiprocessing.util._cleanup_tests()
